//! nnzip: make deployed ONNX neural networks small and fast, and prove it.
//!
//! The data flows one way: [`onnx`] (load, weights view, save) → graph analysis and passes →
//! container → the `nnc-codec` crate; [`runtime`] (ONNX Runtime) serves measurement.
//! See `docs/ARCHITECTURE.md`.

pub mod batch;
pub mod bench;
pub mod calib;
pub mod container;
pub mod device;
pub mod errors;
pub mod fidelity;
pub mod fsutil;
pub mod graph;
pub mod inspect;
pub mod jsonf64;
pub mod modelfile;
pub mod npz;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod progress;
pub mod quantrule;
pub mod ratecontrol;
pub mod report;
pub mod rowscale;
pub mod runtime;
pub mod tensor;
