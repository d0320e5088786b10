//! Data-aware stopping: the pruning amount is found by bisection on [0, max] so that the metric on
//! the calibration data drops by at most `max_drop` points (the loss-tolerance threshold search of
//! "thresholding worsening tolerance"). Each candidate is pruned from the original model and run
//! in ONNX Runtime; the largest accepted amount wins.

use serde::{Deserialize, Serialize};

use crate::calib::{argmax_rows, evaluate, run_model, Calibration, Metric};
use crate::graph::editor::Editor;
use crate::graph::infer::InputDims;
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassError, PassReport};
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy)]
pub struct SearchOptions {
    /// Largest tolerated metric drop, in points (percent).
    pub max_drop: f64,
    /// Upper end of the searched amount (sparsity or channel fraction).
    pub max_amount: f64,
    /// Bisection steps after the first probe at `max_amount`.
    pub steps: usize,
    /// Safety in standard errors: a candidate is accepted when its drop plus `z` standard errors
    /// of that drop stays within `max_drop` (top-1 metrics; the error comes from the samples
    /// whose outcome changed). 0 accepts on the measured drop alone; 1 guards the tolerance on
    /// unseen data of the same kind.
    pub z: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchStep {
    pub amount: f64,
    /// The metric of the pruned candidate, in percent.
    pub metric: f64,
    pub drop: f64,
    /// Standard error of `drop`, in points (0 for the cosine metric).
    pub stderr: f64,
    pub accepted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    pub metric: Metric,
    pub metric_name: String,
    /// The unpruned model's metric on the calibration data.
    pub baseline: f64,
    pub max_drop: f64,
    pub samples: usize,
    pub steps: Vec<SearchStep>,
    /// The chosen amount and its metric.
    pub amount: f64,
    pub final_metric: f64,
}

fn first_output(
    outs: Vec<(String, crate::tensor::Tensor)>,
) -> Result<crate::tensor::Tensor, PassError> {
    crate::calib::into_metric_output(outs).ok_or_else(|| PassError::Invalid {
        pass: "search",
        reason: "the model has no output".into(),
    })
}

/// Standard error (points) of a top-1 drop measured on the same samples: with `k` samples whose
/// outcome changed out of `n`, the paired difference has variance about k / n².
fn drop_stderr(
    metric: Metric,
    calib: &Calibration,
    reference: &crate::tensor::Tensor,
    candidate: &crate::tensor::Tensor,
) -> f64 {
    let (Some(a), Some(b)) = (argmax_rows(reference).ok(), argmax_rows(candidate).ok()) else {
        return 0.0;
    };
    let n = a.len().max(1) as f64;
    let changed = match (metric, calib.labels.as_deref()) {
        (Metric::Accuracy, Some(labels)) => a
            .iter()
            .zip(&b)
            .zip(labels)
            .filter(|((x, y), l)| (**x as i64 == **l) != (**y as i64 == **l))
            .count(),
        (Metric::Agreement, _) => a.iter().zip(&b).filter(|(x, y)| x != y).count(),
        _ => return 0.0,
    };
    100.0 * (changed as f64).sqrt() / n
}

/// Searches the largest amount whose pruned model stays within `opts.max_drop` of the original
/// on `calib`. `make(amount)` builds the pass for an amount. Returns the pruned model, the pass
/// report at the chosen amount, and the search report. `progress` sees every step.
pub fn search_amount(
    model: &Model,
    rt: &'static Runtime,
    calib: &Calibration,
    opts: &SearchOptions,
    make: &dyn Fn(f64) -> Box<dyn Pass>,
    progress: &mut dyn FnMut(&SearchStep),
) -> Result<(Model, PassReport, SearchReport), PassError> {
    if opts.max_drop.is_nan() || opts.max_drop < 0.0 || !(0.0..=1.0).contains(&opts.max_amount) {
        return Err(PassError::Invalid {
            pass: "search",
            reason: format!(
                "max drop must be >= 0 and the amount bound in [0, 1] (got {} and {})",
                opts.max_drop, opts.max_amount
            ),
        });
    }
    let reference = first_output(run_model(rt, model, calib)?)?;
    let metric = Metric::for_data(calib, &reference);
    let baseline = evaluate(metric, calib, &reference, &reference)?;
    let ctx = PassContext {
        calib: Some(calib),
        runtime: Some(rt),
        inputs: None,
    };
    let mut steps = Vec::new();
    let mut try_amount = |amount: f64,
                          steps: &mut Vec<SearchStep>|
     -> Result<(Model, PassReport, f64, bool), PassError> {
        let mut ed = Editor::new(model.clone(), InputDims::new());
        let report = make(amount).run(&mut ed, &ctx)?;
        let m = ed.into_model();
        let out = first_output(run_model(rt, &m, calib)?)?;
        let value = evaluate(metric, calib, &reference, &out)?;
        let drop = baseline - value;
        let stderr = drop_stderr(metric, calib, &reference, &out);
        let accepted = drop + opts.z * stderr <= opts.max_drop;
        let step = SearchStep {
            amount,
            metric: value,
            drop,
            stderr,
            accepted,
        };
        progress(&step);
        steps.push(step);
        Ok((m, report, value, accepted))
    };
    let mut best = try_amount(opts.max_amount, &mut steps)?;
    let mut best_amount = opts.max_amount;
    if !best.3 {
        let (mut lo, mut hi) = (0.0f64, opts.max_amount);
        let mut found: Option<((Model, PassReport, f64, bool), f64)> = None;
        for _ in 0..opts.steps {
            let mid = (lo + hi) / 2.0;
            let r = try_amount(mid, &mut steps)?;
            if r.3 {
                lo = mid;
                found = Some((r, mid));
            } else {
                hi = mid;
            }
        }
        match found {
            Some((r, a)) => {
                best = r;
                best_amount = a;
            }
            None => {
                // Nothing tolerated: the amount-0 pass (the model as it is, reported).
                best = try_amount(0.0, &mut steps)?;
                best_amount = 0.0;
            }
        }
    }
    let (m, report, value, _) = best;
    Ok((
        m,
        report,
        SearchReport {
            metric,
            metric_name: metric.name().to_string(),
            baseline,
            max_drop: opts.max_drop,
            samples: calib.samples,
            steps,
            amount: best_amount,
            final_metric: value,
        },
    ))
}
