//! `nnzip simplify`'s job: load, simplify (checked on ONNX Runtime at the sizes it planned), and
//! verify the result against the input. The command line maps flags to a [`SimplifyJob`] and
//! writes the model.

use std::path::Path;

use super::PipelineError;
use crate::calib::Calibration;
use crate::fidelity::{FidelityError, Guard, Suspect};
use crate::onnx::Model;
use crate::passes::simplify::{simplify, SimplifyReport};
use crate::runtime::Runtime;

/// What to simplify and how; paths are the user's files.
pub struct SimplifyJob<'a> {
    pub model: &'a Path,
    /// Calibration data: enables the zero-entropy collapse and verifies on these samples.
    pub calib: Option<&'a Path>,
    /// Sizes for inputs with symbolic dimensions.
    pub shapes: &'a [(String, Vec<usize>)],
    /// Keep a result that fails verification (reported in `forced`).
    pub force: bool,
}

/// The simplified model and its report.
pub struct SimplifyOutput {
    pub model: Model,
    pub report: SimplifyReport,
    /// Why the result failed verification, when `force` kept it anyway.
    pub forced: Option<String>,
}

/// Runs the job. Simplification keeps the outputs, so a result whose outputs differ beyond
/// float rounding is refused ([`PipelineError::SimplifyMismatch`]), and so is one that collapsed
/// against the input (the default [`Guard`]); `force` keeps either.
pub fn simplify_file(
    rt: &'static Runtime,
    job: &SimplifyJob,
) -> Result<SimplifyOutput, PipelineError> {
    let input = Model::load(job.model)?;
    // Before the calibration data is read: a wrong size is the first thing to hear of.
    crate::runtime::inputs::check_given(&input.inputs(), job.shapes)
        .map_err(crate::passes::PassError::from)?;
    let calib = job
        .calib
        .map(|p| Calibration::load(p, &input))
        .transpose()?;
    let mut model = input.clone();
    let report = simplify(&mut model, rt, calib.as_ref(), job.shapes)?;
    if !report.verification.within_tolerance && !job.force {
        return Err(PipelineError::SimplifyMismatch {
            diff: report.verification.max_abs_diff,
            scale: report.verification.max_abs_output,
            floor: report.verification.noise_floor,
            tolerance: report.verification.tolerance,
        });
    }
    let suspects = || {
        report
            .passes
            .iter()
            .filter(|p| p.changed)
            .map(|p| Suspect {
                tensor: format!("pass {}", p.pass),
                detail: "changed the model".into(),
            })
            .collect()
    };
    let forced = match crate::fidelity::verify(
        rt,
        &input,
        &model,
        calib.as_ref(),
        job.shapes,
        &Guard::default(),
        &suspects,
    ) {
        Ok(_) => None,
        Err(e @ FidelityError::Collapsed { .. }) if job.force => Some(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    Ok(SimplifyOutput {
        model,
        report,
        forced,
    })
}
