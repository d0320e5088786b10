//! Graph passes: values in a list, each stating what it preserves. The pipeline is a
//! configuration: a `Vec<Box<dyn Pass>>` run in order over one model.

pub mod prune;
pub mod simplify;

use serde::Serialize;
use thiserror::Error;

use crate::calib::{CalibError, Calibration};
use crate::onnx::{Model, OnnxError};
use crate::runtime::{Runtime, RuntimeError};
use crate::tensor::TensorError;

#[derive(Debug, Error)]
pub enum PassError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{pass}: {reason}")]
    Invalid { pass: &'static str, reason: String },
    #[error("{pass} needs calibration data (--calib FILE.npz)")]
    NeedsCalibration { pass: &'static str },
}

/// What a pass keeps equal between the model before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preserves {
    /// The outputs on every input, up to float rounding.
    Outputs,
    /// The outputs on inputs like the calibration data (decisions were taken on it).
    OutputsOnCalibration,
    /// Not the outputs: the pass changes the function (pruning); it keeps the graph's interface.
    Interface,
}

/// What a pass may use besides the model.
pub struct PassContext<'a> {
    pub calib: Option<&'a Calibration>,
    pub runtime: Option<&'static Runtime>,
}

/// One pass's account of what it did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PassReport {
    pub pass: String,
    pub changed: bool,
    /// Pass-specific details for the report (JSON).
    pub details: serde_json::Value,
    /// Human-readable lines.
    pub notes: Vec<String>,
}

pub trait Pass {
    fn name(&self) -> &'static str;
    fn preserves(&self) -> Preserves;
    fn run(&self, model: &mut Model, ctx: &PassContext<'_>) -> Result<PassReport, PassError>;
}

/// Runs passes in order, collecting their reports.
pub fn run_passes(
    passes: &[Box<dyn Pass>],
    model: &mut Model,
    ctx: &PassContext<'_>,
) -> Result<Vec<PassReport>, PassError> {
    passes.iter().map(|p| p.run(model, ctx)).collect()
}
