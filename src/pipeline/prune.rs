//! `nnzip prune`'s job: load, prune (a fixed amount, or the largest amount within a metric
//! budget on calibration data), compare on held-out data, simplify if asked, and verify the
//! result against the input. The command line maps flags to a [`PruneJob`] and writes the model.

use std::path::{Path, PathBuf};

use super::PipelineError;
use crate::calib::{evaluate, into_metric_output, run_model, CalibError, Calibration, Metric};
use crate::fidelity::{Fidelity, FidelityError, Guard, Suspect};
use crate::onnx::Model;
use crate::passes::prune::{search_amount, LayerReport, PruneConfig, SearchOptions, SearchStep};
use crate::passes::simplify::simplify;
use crate::passes::{PassContext, PassDetails, PassError};
use crate::report::prune::{EvalReport, MetricReport, PruneReport};
use crate::runtime::Runtime;

/// What to prune and how; paths are the user's files.
pub struct PruneJob<'a> {
    pub model: &'a Path,
    /// Where the result will be written (for the report).
    pub output: &'a Path,
    pub config: PruneConfig,
    /// The amount, or with `search` the largest amount tried.
    pub amount: f64,
    pub calib: Option<&'a Path>,
    /// Use only the first N calibration samples.
    pub calib_samples: Option<usize>,
    /// Held-out data to compare original and result on.
    pub eval: Option<&'a Path>,
    /// Search the amount within a metric budget (needs `calib`).
    pub search: Option<SearchOptions>,
    pub simplify: bool,
    pub shapes: &'a [(String, Vec<usize>)],
    /// Keep a result that fails verification (reported in `forced`).
    pub force: bool,
}

impl PruneJob<'_> {
    /// The model, with the sizes checked against it: they are used last (verification), and a
    /// wrong one must not wait for the pruning.
    fn load(&self) -> Result<Model, PipelineError> {
        let model = Model::load(self.model)?;
        crate::runtime::inputs::check_given(&model.inputs(), self.shapes)
            .map_err(PassError::from)?;
        Ok(model)
    }
}

/// The pruned (and maybe simplified) model and its report.
pub struct PruneOutput {
    pub model: Model,
    pub report: PruneReport,
    /// Why the result failed verification, when `force` kept it anyway.
    pub forced: Option<String>,
}

/// Runs the job. Pruning is meant to change the outputs, so verification refuses only a broken
/// result (non-finite, constant or input-independent main output); how far it moved is in the
/// report's `fidelity`.
pub fn prune_file(
    rt: &'static Runtime,
    job: &PruneJob,
    on_step: &mut dyn FnMut(&SearchStep),
) -> Result<PruneOutput, PipelineError> {
    let model = job.load()?;
    let calib = match job.calib {
        Some(p) => {
            let c = Calibration::load(p, &model)?;
            Some(match job.calib_samples {
                Some(n) => c.take(n).map_err(CalibError::from)?,
                None => c,
            })
        }
        None => None,
    };
    let (mut pruned, details, search) = match (&job.search, calib.as_ref()) {
        (Some(opts), Some(c)) => {
            let make = |f| job.config.pass(f);
            let (m, r, s) = search_amount(&model, rt, c, opts, &make, on_step)?;
            (m, r.details, Some(s))
        }
        _ => {
            let ctx = PassContext {
                calib: calib.as_ref(),
                runtime: calib.as_ref().map(|_| rt),
                inputs: None,
            };
            let mut ed = crate::graph::editor::Editor::new(model.clone(), Default::default());
            let r = job.config.pass(job.amount).run(&mut ed, &ctx)?;
            (ed.into_model(), r.details, None)
        }
    };
    let eval = match job.eval {
        Some(p) => Some(evaluate_on(
            rt,
            &model,
            &pruned,
            &Calibration::load(p, &model)?,
        )?),
        None => None,
    };
    let mut on_calib = match (&calib, &eval) {
        (Some(c), None) => Some(evaluate_on(rt, &model, &pruned, c)?),
        _ => None,
    };
    // Without held-out data, the breakdown is the calibration data's.
    let breakdown = match &eval {
        Some(e) => e.breakdown.clone(),
        None => on_calib.as_mut().and_then(|e| e.breakdown.take()),
    };
    let metric = match (&search, calib.as_ref()) {
        (None, Some(c)) => Some(match on_calib {
            Some(e) => e.metric,
            None => evaluate_on(rt, &model, &pruned, c)?.metric,
        }),
        (None, None) => None,
        (Some(s), _) => Some(MetricReport {
            name: s.metric.name().to_string(),
            samples: s.samples,
            before: s.baseline,
            after: s.final_metric,
        }),
    };
    let simplified = if job.simplify {
        let r = simplify(&mut pruned, rt, calib.as_ref(), job.shapes)?;
        if !r.verification.within_tolerance && !job.force {
            return Err(PipelineError::SimplifyMismatch {
                diff: r.verification.max_abs_diff,
                scale: r.verification.max_abs_output,
                floor: r.verification.noise_floor,
                tolerance: r.verification.tolerance,
            });
        }
        Some(r)
    } else {
        None
    };
    let PassDetails::Prune(outcome) = details else {
        return Err(PipelineError::Pass(PassError::Invalid {
            pass: "prune",
            reason: "the pruning pass reported something else".into(),
        }));
    };
    let (fidelity, forced) = verify(rt, &model, &pruned, calib.as_ref(), job, &outcome.layers)?;
    let report = PruneReport {
        input: job.model.to_path_buf(),
        output: PathBuf::from(job.output),
        outcome: *outcome,
        metric,
        search,
        eval,
        breakdown,
        simplify: simplified,
        fidelity,
    };
    Ok(PruneOutput {
        model: pruned,
        report,
        forced,
    })
}

/// The result against the input; a collapse is an error unless `force`, which keeps the result
/// and says why it failed.
fn verify(
    rt: &Runtime,
    model: &Model,
    pruned: &Model,
    calib: Option<&Calibration>,
    job: &PruneJob,
    layers: &[LayerReport],
) -> Result<(Fidelity, Option<String>), PipelineError> {
    let broken_only = Guard {
        min_cosine: f64::NEG_INFINITY,
    };
    let suspects = || {
        let mut by_sparsity: Vec<&LayerReport> = layers.iter().collect();
        by_sparsity.sort_by(|x, y| y.sparsity_after.total_cmp(&x.sparsity_after));
        by_sparsity
            .iter()
            .take(5)
            .map(|l| Suspect {
                tensor: l.name.clone(),
                detail: format!("{:.0}% zeros", 100.0 * l.sparsity_after),
            })
            .collect()
    };
    match crate::fidelity::verify(
        rt,
        model,
        pruned,
        calib,
        job.shapes,
        &broken_only,
        &suspects,
    ) {
        Ok(f) => Ok((f, None)),
        Err(e @ FidelityError::Collapsed { .. }) if job.force => {
            let why = e.to_string();
            match e {
                FidelityError::Collapsed { fidelity, .. } => Ok((*fidelity, Some(why))),
                other => Err(other.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Original against result on `c`: the metric before and after, and the breakdown.
fn evaluate_on(
    rt: &'static Runtime,
    orig: &Model,
    pruned: &Model,
    c: &Calibration,
) -> Result<EvalReport, PipelineError> {
    let first = |m: &Model| -> Result<crate::tensor::Tensor, PipelineError> {
        into_metric_output(run_model(rt, m, c)?).ok_or_else(|| {
            PipelineError::Calib(CalibError::Empty {
                path: c.path.clone(),
            })
        })
    };
    let reference = first(orig)?;
    let out = first(pruned)?;
    let metric = Metric::for_data(c, &reference);
    Ok(EvalReport {
        data: c.path.clone(),
        metric: MetricReport {
            name: metric.name().to_string(),
            samples: c.samples,
            before: evaluate(metric, c, &reference, &reference)?,
            after: evaluate(metric, c, &reference, &out)?,
        },
        breakdown: crate::calib::breakdown::breakdown(&reference, &out, c.labels.as_deref(), 0.1),
    })
}
