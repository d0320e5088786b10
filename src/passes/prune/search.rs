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
    /// Share of the calibration samples held out to check the choice, split as rate control
    /// splits them ([`crate::ratecontrol::ort::split`]; none under 8 samples).
    pub holdout: f64,
}

/// How many times a choice the held-out samples refuse is shrunk (by [`TIGHTEN`]) before the
/// search gives up on pruning: rate control's rule.
const MAX_TIGHTEN: usize = 4;
const TIGHTEN: f64 = 0.7;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchStep {
    pub amount: f64,
    /// The metric of the pruned candidate on the fitting samples, in percent.
    pub metric: f64,
    pub drop: f64,
    /// Standard error of `drop`, in points (0 for the cosine metric).
    pub stderr: f64,
    /// Top-1 metrics: the drop expected from each sample's margin (rate control's continuous
    /// measure, which sees a budget used up before whole samples flip).
    pub expected_drop: Option<f64>,
    /// Output SNR against the original, dB.
    #[serde(default, deserialize_with = "crate::jsonf64::or_nan")]
    pub snr_db: f64,
    pub accepted: bool,
}

/// A candidate on the held-out samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldOutCheck {
    pub amount: f64,
    pub metric: f64,
    pub drop: f64,
    pub stderr: Option<f64>,
    pub expected_drop: Option<f64>,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub snr_db: f64,
    pub holds: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    pub metric: Metric,
    pub metric_name: String,
    /// The unpruned model's metric on the fitting samples.
    pub baseline: f64,
    pub max_drop: f64,
    /// Fitting samples: reconstruction and the search use these.
    pub samples: usize,
    pub steps: Vec<SearchStep>,
    /// Samples held out of the fitting (0: too few calibration samples to hold any out).
    // Absent from reports saved before the hold-out.
    #[serde(default)]
    pub held_out_samples: usize,
    /// The unpruned model's metric on the held-out samples.
    pub held_out_baseline: Option<f64>,
    /// The search's choice and every smaller one tried on the held-out samples; the last is the
    /// chosen amount's.
    #[serde(default)]
    pub held_out: Vec<HeldOutCheck>,
    /// Times the choice was shrunk because the held-out samples broke the budget.
    #[serde(default)]
    pub tightened: usize,
    /// The chosen amount and its metric on the fitting samples.
    pub amount: f64,
    pub final_metric: f64,
    /// Where the figures cannot be trusted (too few samples, a budget they cannot resolve).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One part of the calibration data with the original's outputs on it.
struct Part {
    calib: Calibration,
    reference: crate::tensor::Tensor,
    baseline: f64,
    margins: Option<Vec<f64>>,
}

impl Part {
    fn new(
        rt: &'static Runtime,
        model: &Model,
        calib: Calibration,
        metric: Option<Metric>,
    ) -> Result<(Part, Metric), PassError> {
        let reference = first_output(run_model(rt, model, &calib)?)?;
        let metric = metric.unwrap_or_else(|| Metric::for_data(&calib, &reference));
        let baseline = evaluate(metric, &calib, &reference, &reference)?;
        let margins = matches!(metric, Metric::Accuracy | Metric::Agreement)
            .then(|| crate::ratecontrol::ort::margins(&reference))
            .flatten();
        let part = Part {
            calib,
            reference,
            baseline,
            margins,
        };
        Ok((part, metric))
    }

    fn measure(
        &self,
        rt: &'static Runtime,
        m: &Model,
        metric: Metric,
    ) -> Result<Measured, PassError> {
        let out = first_output(run_model(rt, m, &self.calib)?)?;
        let value = evaluate(metric, &self.calib, &self.reference, &out)?;
        let o = crate::ratecontrol::ort::outcome(
            metric,
            self.calib.samples,
            &self.reference.to_f32()?,
            &out.to_f32()?,
            (self.baseline, value),
            self.margins.as_deref(),
        );
        let stderr = drop_stderr(metric, &self.calib, &self.reference, &out);
        Ok(Measured { o, stderr })
    }
}

struct Measured {
    o: crate::ratecontrol::Outcome,
    /// This search's own standard error of the drop (labels counted where there are some).
    stderr: f64,
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

/// Searches the largest amount whose pruned model stays within `opts.max_drop` of the original:
/// bisection on the fitting part of `calib` (which reconstruction fits on too), then the choice
/// checked on the held-out part and shrunk while that breaks the budget. `make(amount)` builds
/// the pass for an amount. Returns the pruned model, the pass report at the chosen amount, and
/// the search report. `progress` sees every step.
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
    let (nf, nc) = crate::ratecontrol::ort::split(calib.samples, opts.holdout);
    let (fit, metric) = Part::new(rt, model, calib.part(0, nf)?, None)?;
    let check = match nc {
        0 => None,
        _ => Some(Part::new(rt, model, calib.part(nf, nf + nc)?, Some(metric))?.0),
    };
    let ctx = PassContext {
        calib: Some(&fit.calib),
        runtime: Some(rt),
        inputs: None,
    };
    let mut steps = Vec::new();
    let mut try_amount = |amount: f64, steps: &mut Vec<SearchStep>| -> Result<Tried, PassError> {
        let mut ed = Editor::new(model.clone(), InputDims::new());
        let report = make(amount).run(&mut ed, &ctx)?;
        let m = ed.into_model();
        let Measured { o, stderr } = fit.measure(rt, &m, metric)?;
        // The search's own z-guard, and rate control's: where the samples cannot resolve the
        // budget, the expected drop must stay within it too.
        let accepted = o.drop + opts.z * stderr <= opts.max_drop && o.within(opts.max_drop);
        let step = SearchStep {
            amount,
            metric: o.metric,
            drop: o.drop,
            stderr,
            expected_drop: o.expected_drop,
            snr_db: o.snr_db(),
            accepted,
        };
        progress(&step);
        steps.push(step);
        Ok((m, report, o.metric, accepted))
    };
    let (best, best_amount) = bisect(&mut try_amount, opts, &mut steps)?;
    let (best, best_amount, held_out, tightened) = match &check {
        Some(check) => hold_out(
            &mut try_amount,
            check,
            rt,
            metric,
            opts,
            (best, best_amount),
            &mut steps,
        )?,
        None => (best, best_amount, Vec::new(), 0),
    };
    let warnings = search_warnings(&fit, check.as_ref(), opts, tightened);
    let (m, report, value, _) = best;
    Ok((
        m,
        report,
        SearchReport {
            metric,
            metric_name: metric.name().to_string(),
            baseline: fit.baseline,
            max_drop: opts.max_drop,
            samples: fit.calib.samples,
            steps,
            held_out_samples: nc,
            held_out_baseline: check.as_ref().map(|c| c.baseline),
            held_out,
            tightened,
            amount: best_amount,
            final_metric: value,
            warnings,
        },
    ))
}

/// One amount tried: the pruned model, its report, its metric on the fitting part, accepted.
type Tried = (Model, PassReport, f64, bool);

/// Tries one amount and records its step.
type TryAmount<'a> = dyn FnMut(f64, &mut Vec<SearchStep>) -> Result<Tried, PassError> + 'a;

/// The largest accepted amount: the bound itself, else bisection below it, else 0 (the model
/// as it is, reported).
fn bisect(
    try_amount: &mut TryAmount,
    opts: &SearchOptions,
    steps: &mut Vec<SearchStep>,
) -> Result<(Tried, f64), PassError> {
    let first = try_amount(opts.max_amount, steps)?;
    if first.3 {
        return Ok((first, opts.max_amount));
    }
    let (mut lo, mut hi) = (0.0f64, opts.max_amount);
    let mut found: Option<(Tried, f64)> = None;
    for _ in 0..opts.steps {
        let mid = (lo + hi) / 2.0;
        let r = try_amount(mid, steps)?;
        if r.3 {
            lo = mid;
            found = Some((r, mid));
        } else {
            hi = mid;
        }
    }
    match found {
        Some(f) => Ok(f),
        None => Ok((try_amount(0.0, steps)?, 0.0)),
    }
}

/// Checks the choice on the held-out part, shrinking it while it breaks the budget there (at
/// most `MAX_TIGHTEN` times, then 0). Returns the choice, the checks and how often it shrank.
fn hold_out(
    try_amount: &mut TryAmount,
    check: &Part,
    rt: &'static Runtime,
    metric: Metric,
    opts: &SearchOptions,
    (mut best, mut best_amount): (Tried, f64),
    steps: &mut Vec<SearchStep>,
) -> Result<(Tried, f64, Vec<HeldOutCheck>, usize), PassError> {
    let mut held_out = Vec::new();
    let mut tightened = 0;
    loop {
        let Measured { o, .. } = check.measure(rt, &best.0, metric)?;
        let holds = o.holds(opts.max_drop);
        held_out.push(HeldOutCheck {
            amount: best_amount,
            metric: o.metric,
            drop: o.drop,
            stderr: o.drop_se,
            expected_drop: o.expected_drop,
            snr_db: o.snr_db(),
            holds,
        });
        if holds || best_amount == 0.0 {
            return Ok((best, best_amount, held_out, tightened));
        }
        tightened += 1;
        best_amount = if tightened > MAX_TIGHTEN {
            0.0
        } else {
            best_amount * TIGHTEN
        };
        best = try_amount(best_amount, steps)?;
    }
}

/// What the sample counts say about the figures.
fn search_warnings(
    fit: &Part,
    check: Option<&Part>,
    opts: &SearchOptions,
    tightened: usize,
) -> Vec<String> {
    let mut w = Vec::new();
    let point = |n: usize| 100.0 / n.max(1) as f64;
    let top1 = fit.margins.is_some();
    if top1 && point(fit.calib.samples) > opts.max_drop / 2.0 {
        w.push(format!(
            "{} fitting samples cannot resolve a budget of {} points (one sample is {:.1} points): the budget was held by the expected drop (from each sample's margin)",
            fit.calib.samples,
            opts.max_drop,
            point(fit.calib.samples)
        ));
    }
    match check {
        None => w.push(
            "fewer than 8 calibration samples: nothing was held out, the choice is checked only on the data it was fitted on".into(),
        ),
        Some(c) if top1 && point(c.calib.samples) > opts.max_drop => w.push(format!(
            "{} held-out samples cannot resolve a budget of {} points (one sample is {:.1} points): give more calibration samples",
            c.calib.samples,
            opts.max_drop,
            point(c.calib.samples)
        )),
        Some(_) => {}
    }
    if tightened > MAX_TIGHTEN {
        w.push(format!(
            "the held-out samples broke the budget after shrinking the choice {MAX_TIGHTEN} times: no pruning"
        ));
    }
    w
}
