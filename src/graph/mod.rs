//! Graph analysis over ONNX models.

pub mod edit;
pub mod groups;
pub mod index;
pub mod shapes;
