//! Graph analysis and editing over ONNX models: symbolic sizes ([`sym`]), what nnzip knows of
//! each operator ([`ops`]), shape inference ([`infer`]), the [`editor::Editor`] every pass edits
//! through, and channel dependency groups ([`groups`]).

pub mod edit;
pub mod editor;
pub mod groups;
pub mod index;
pub mod infer;
pub mod ops;
pub mod sym;
