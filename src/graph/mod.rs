//! Graph analysis over ONNX models.

pub mod shapes;
