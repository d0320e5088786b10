//! Graph analysis over ONNX models.

pub mod groups;
pub mod index;
pub mod shapes;
