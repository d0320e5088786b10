//! Graph analysis and editing over ONNX models: symbolic sizes ([`sym`]), what nnzip knows of
//! each operator ([`ops`]), shape inference ([`infer`]), the [`editor::Editor`] every pass edits
//! through, and channel dependency groups ([`groups`]).
//!
//! Everything here reads models nnzip did not write: no indexing that can panic, no unchecked
//! arithmetic on sizes taken from them.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

pub mod edit;
pub mod editor;
pub mod groups;
pub mod index;
pub mod infer;
pub mod ops;
pub mod sym;
