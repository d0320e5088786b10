//! Graph passes: values in a list, each stating what it preserves. The pipeline is a
//! configuration: a `Vec<Box<dyn Pass>>` run in order over one [`Editor`], the only way a pass
//! changes a graph.

pub mod prune;
pub mod simplify;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::calib::{CalibError, Calibration};
use crate::graph::editor::Editor;
use crate::onnx::OnnxError;
use crate::runtime::inputs::InputPlan;
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
    #[error("{pass} needs calibration data")]
    NeedsCalibration { pass: &'static str },
    #[error("{pass} needs concrete input sizes to run the model: {reason}")]
    NeedsInputs { pass: &'static str, reason: String },
    /// Input sizes given for the job that do not fit the model: an input it does not have, or
    /// a size against its rank or fixed dims.
    #[error(transparent)]
    Sizes(#[from] crate::runtime::inputs::InputError),
    /// The passes left a model ONNX Runtime cannot run (a rewrite nnzip got wrong): nothing of
    /// it may be written.
    #[error("{pass}: the rewritten model does not run in ONNX Runtime, so it was not kept (the input model runs; please report this): {reason}")]
    Broke { pass: &'static str, reason: String },
    /// The sizes to run the model at could not be planned (the input error says why).
    #[error("{pass} needs concrete input sizes to run the model: {input}")]
    Inputs {
        pass: &'static str,
        input: crate::runtime::inputs::InputError,
    },
}

impl PassError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            PassError::Onnx(e) => e.class(),
            PassError::Tensor(e) => e.class(),
            PassError::Calib(e) => e.class(),
            PassError::Runtime(_) => C::Runtime,
            PassError::Broke { .. } => C::Verification,
            PassError::Invalid { .. }
            | PassError::NeedsCalibration { .. }
            | PassError::NeedsInputs { .. }
            | PassError::Inputs { .. }
            | PassError::Sizes(_) => C::Usage,
        }
    }
}

/// What a pass keeps equal between the model before and after it, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Default)]
pub struct PassContext<'a> {
    pub calib: Option<&'a Calibration>,
    pub runtime: Option<&'static Runtime>,
    /// Concrete inputs the model runs on, for passes that probe values with ONNX Runtime.
    pub inputs: Option<&'a InputPlan>,
}

impl PassContext<'_> {
    pub fn runtime(&self, pass: &'static str) -> Result<&'static Runtime, PassError> {
        self.runtime.ok_or(PassError::Invalid {
            pass,
            reason: "needs ONNX Runtime".into(),
        })
    }

    pub fn inputs(&self, pass: &'static str) -> Result<&InputPlan, PassError> {
        self.inputs.ok_or(PassError::NeedsInputs {
            pass,
            reason: "no input sizes were given".into(),
        })
    }
}

/// What one pass did, by pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PassDetails {
    Cleanup(simplify::cleanup::CleanupDetails),
    FoldBatchNorm(simplify::fold_bn::FoldDetails),
    Collapse(simplify::collapse::CollapseDetails),
    DeadChannels(simplify::dead::DeadDetails),
    Prune(Box<prune::PruneOutcome>),
}

/// One pass's account of what it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassReport {
    pub pass: String,
    pub preserves: Preserves,
    pub changed: bool,
    pub details: PassDetails,
    /// Human-readable lines.
    pub notes: Vec<String>,
}

pub trait Pass {
    fn name(&self) -> &'static str;
    fn preserves(&self) -> Preserves;
    fn run(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PassReport, PassError>;
}

/// Runs passes in order, collecting their reports.
pub fn run_passes(
    passes: &[Box<dyn Pass>],
    ed: &mut Editor,
    ctx: &PassContext<'_>,
) -> Result<Vec<PassReport>, PassError> {
    passes.iter().map(|p| p.run(ed, ctx)).collect()
}

/// The weakest guarantee among the passes that changed something (`Outputs` when none did):
/// what a check of the result may expect.
pub fn weakest(reports: &[PassReport]) -> Preserves {
    reports
        .iter()
        .filter(|r| r.changed)
        .map(|r| r.preserves)
        .max()
        .unwrap_or(Preserves::Outputs)
}
