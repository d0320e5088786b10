//! The whole job: import → optional prune → simplify → quantization plan → NNC encode, then
//! decode what was written and check it against the original on ONNX Runtime.
//!
//! Each stage is a function returning a typed result; [`compress_file`] runs them in order and
//! assembles the report. Memory stays near the model's size: the model is taken apart for coding
//! without a copy of its graph, the decoded model reaches ONNX Runtime through a mapped file, and
//! at most two sessions exist at once (only while timing, interleaved).

pub mod prune;
pub mod simplify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nnc_codec::EncoderConfig;
use thiserror::Error;

use crate::bench::{bench_subjects, BenchError, BenchOptions, Subject};
use crate::calib::{evaluate, CalibError, Calibration, Metric};
use crate::container::{
    assemble, encode_prepared, encode_reference_compatible, into_prepared, reference_options,
    ContainerError, ContainerOptions, ContainerStats, Prepared,
};
use crate::errors::ErrorClass;
use crate::fidelity::{Fidelity, FidelityError, Guard, Probe, Suspect};
use crate::onnx::{Model, OnnxError, ValueInfo};
use crate::passes::simplify::{simplify, ModelStats, SimplifyReport};
use crate::passes::{Pass, PassContext, PassDetails, PassError};
use crate::progress::Progress;
use crate::quantrule::{ndu_sizes, Anchor, KnownRate, Planner, Rule, TensorError, ValuePrint};
use crate::ratecontrol::ort::OrtEvaluator;
use crate::ratecontrol::{
    best_single_qp, trial_sizes, RateControl, RateError, RateOptions, RatePlan,
};
use crate::report::{CompressReport, LatencyReport, SingleQp, Stage, StageTime};
pub use crate::report::{PruneResult, Quantization};
use crate::rowscale::RowPrints;
use crate::runtime::{peak_rss_bytes, Runtime, RuntimeError, Session, SessionOptions};
pub use prune::{prune_file, PruneJob, PruneOutput};
pub use simplify::{simplify_file, SimplifyJob, SimplifyOutput};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Codec(#[from] nnc_codec::Error),
    #[error(transparent)]
    Rate(#[from] RateError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Fidelity(#[from] FidelityError),
    #[error("a metric-drop budget needs calibration data")]
    MaxDropNeedsCalib,
    #[error("simplification changed the outputs by {diff:.3e}, more than the {tolerance:.1e} allowed (largest output {scale:.3e}; the input's own float rounding under ONNX Runtime's optimizations {floor:.1e}); nothing was written")]
    SimplifyMismatch {
        diff: f64,
        scale: f64,
        floor: f64,
        tolerance: f64,
    },
    #[error("interrupted")]
    Cancelled,
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PipelineError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::MaxDropNeedsCalib => ErrorClass::Usage,
            PipelineError::Io { .. } => ErrorClass::Write,
            PipelineError::Onnx(e) => e.class(),
            PipelineError::Container(e) => e.class(),
            PipelineError::Codec(_) => ErrorClass::BadInput,
            PipelineError::Calib(e) => e.class(),
            PipelineError::Pass(e) => e.class(),
            // The model was loaded and checked before: ONNX Runtime failing on it is exit 4.
            PipelineError::Runtime(_) | PipelineError::Bench(_) => ErrorClass::Runtime,
            PipelineError::Fidelity(f) => f.class(),
            PipelineError::SimplifyMismatch { .. } => ErrorClass::Verification,
            PipelineError::Rate(r) => r.class(),
            PipelineError::Cancelled => ErrorClass::Interrupted,
        }
    }
}

/// How to prune inside the pipeline: a pass per amount, and the amount (searched when `None`).
pub struct PruneSpec {
    pub make: Box<dyn Fn(f64) -> Box<dyn Pass>>,
    /// Fixed amount; `None` searches it (needs `max_drop` and calibration data), else the
    /// method's default.
    pub amount: Option<f64>,
    pub default_amount: f64,
}

/// Share of `--max-drop` that a searched pruning amount may spend; quantization gets the rest.
pub const PRUNE_BUDGET_SHARE: f64 = 0.5;

/// How weights are quantized when there is no metric budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantizer {
    /// Per-tensor steps from each tensor's statistics, anchored to the reference's bytes.
    Rule,
    /// The reference's rule: every weight at the weight QP, every other tensor at the
    /// non-weight QP.
    Uniform,
}

/// Latency columns: interleaved timing of original and result, bounded in time.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// At most this many timed runs per model (0: no latency columns).
    pub max_runs: usize,
    /// Time budget for the timed runs (at least 5 runs each).
    pub time: Duration,
    pub warmup: usize,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            max_runs: 500,
            time: Duration::from_secs(3),
            warmup: 3,
        }
    }
}

pub struct CompressOptions {
    pub container: ContainerOptions,
    pub prune: Option<PruneSpec>,
    pub simplify: bool,
    pub calib: Option<PathBuf>,
    pub max_drop: Option<f64>,
    pub reference_compatible: bool,
    pub quantizer: Quantizer,
    pub shapes: Vec<(String, Vec<usize>)>,
    pub latency: LatencyOptions,
    /// Also find the best single QP within `max_drop` (the reference's one knob) for comparison.
    pub compare_single_qp: bool,
    /// Also report `zstd -19` of the ONNX file (slow on large models: a minute for 66 MB).
    pub zstd_baseline: bool,
    /// Keep a result that failed verification (the report says so).
    pub force: bool,
    pub guard: Guard,
    /// Rate control's search (time budget, hold-out share); `max_drop` comes from above.
    pub rate: RateOptions,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            container: ContainerOptions::default(),
            prune: None,
            simplify: true,
            calib: None,
            max_drop: None,
            reference_compatible: false,
            quantizer: Quantizer::Rule,
            shapes: Vec::new(),
            latency: LatencyOptions::default(),
            compare_single_qp: false,
            zstd_baseline: false,
            force: false,
            guard: Guard::default(),
            rate: RateOptions::new(1.0),
        }
    }
}

pub struct CompressOutput {
    pub bitstream: Vec<u8>,
    /// With `reference_compatible`: the graph to store beside the bitstream.
    pub graph: Option<Vec<u8>>,
    pub report: CompressReport,
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `zstd -19` size of a file.
pub fn zstd_size(p: &Path) -> Result<u64, PipelineError> {
    let io = |source| PipelineError::Io {
        path: p.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(p).map_err(io)?;
    Ok(zstd::bulk::compress(&bytes, 19).map_err(io)?.len() as u64)
}

/// Stage timings, as the report lists them.
struct Clock {
    start: Instant,
    stage: Option<(String, Instant)>,
    done: Vec<StageTime>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            stage: None,
            done: Vec::new(),
        }
    }

    fn stage(&mut self, name: &str, progress: &mut dyn Progress) -> Result<(), PipelineError> {
        self.finish();
        if progress.cancelled() {
            return Err(PipelineError::Cancelled);
        }
        progress.stage(name);
        self.stage = Some((name.to_string(), Instant::now()));
        Ok(())
    }

    fn finish(&mut self) {
        if let Some((name, t)) = self.stage.take() {
            self.done.push(StageTime {
                stage: name,
                seconds: t.elapsed().as_secs_f64(),
                peak_rss_bytes: peak_rss_bytes(),
            });
        }
    }
}

/// What the original model gives on the data the result is checked on.
struct Original {
    probe: Probe,
    /// With calibration data: the metric, and its value for the original.
    metric: Option<(Metric, f64)>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
}

fn run_original(
    rt: &Runtime,
    model: &Model,
    calib: Option<&Calibration>,
    shapes: &[(String, Vec<usize>)],
) -> Result<Original, PipelineError> {
    let probe = Probe::new(rt, model, calib, shapes)?;
    let metric = match calib {
        Some(c) => {
            let r = probe.reference();
            let m = Metric::for_data(c, r);
            Some((m, evaluate(m, c, r, r)?))
        }
        None => None,
    };
    Ok(Original {
        probe,
        metric,
        inputs: model.inputs(),
        outputs: model.outputs(),
    })
}

fn prune_stage(
    model: Model,
    spec: &PruneSpec,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    max_drop: Option<f64>,
) -> Result<(Model, PruneResult), PipelineError> {
    match (spec.amount, max_drop, calib) {
        (None, Some(x), Some(c)) => {
            let so = crate::passes::prune::search::SearchOptions {
                max_drop: x * PRUNE_BUDGET_SHARE,
                max_amount: 0.95,
                steps: 6,
                z: 1.0,
                holdout: crate::ratecontrol::HOLDOUT,
            };
            let (m, pass, search) = crate::passes::prune::search::search_amount(
                &model,
                rt,
                c,
                &so,
                &*spec.make,
                &mut |_| {},
            )?;
            Ok((
                m,
                PruneResult {
                    pass,
                    search: Some(search),
                },
            ))
        }
        (amount, _, _) => {
            let ctx = PassContext {
                calib,
                runtime: Some(rt),
                inputs: None,
            };
            let mut ed = crate::graph::editor::Editor::new(model, Default::default());
            let pass = (spec.make)(amount.unwrap_or(spec.default_amount)).run(&mut ed, &ctx)?;
            Ok((ed.into_model(), PruneResult { pass, search: None }))
        }
    }
}

/// What the reference encoder does with the model before simplification: its parameter bytes
/// (NDUs, the budget of the default rule) and each tensor's bytes at its QP (which calibrate the
/// rate model wherever simplification left a tensor's values as they were).
struct ReferenceSizes {
    bytes: u64,
    tensors: HashMap<String, KnownRate>,
}

/// The reference encoder on `model` at `opts`' settings, with the sampled parameter
/// optimisation (a few bytes per megabyte over the exact one; the budget keeps a margin of
/// that order).
fn reference_sizes(
    model: &mut Model,
    opts: &ContainerOptions,
) -> Result<ReferenceSizes, PipelineError> {
    use rayon::prelude::*;
    let mut o = reference_options(opts);
    o.row_prints = None;
    o.codec.overrides.clear();
    o.codec.param_opt_bins = o
        .codec
        .param_opt_bins
        .or(EncoderConfig::fast().param_opt_bins);
    o.codec.parallel = false;
    // Tensor by tensor (both cores, one tensor each): the model plus two tensors in memory
    // rather than every tensor's float copy at once. Large float initializers leave the model
    // for their encode and come back after it, so their values are in memory once (as the
    // model's bytes or as the encoder's floats), not twice.
    let weights = model.weights();
    let names = crate::container::weight_names(model);
    let taken: Vec<Option<crate::tensor::Tensor>> = weights
        .iter()
        .map(|w| {
            let large = w.dtype == crate::tensor::DType::F32 && w.numel() >= TAKE_ABOVE;
            large.then(|| model.take_raw(&w.id)).flatten()
        })
        .collect();
    let m: &Model = model;
    type Sizes = Result<(Vec<(String, KnownRate)>, Option<crate::tensor::Tensor>), PipelineError>;
    let per: Vec<Sizes> = weights
        .par_iter()
        .zip(names.into_par_iter())
        .zip(taken.into_par_iter())
        .map(|((w, name), t)| match t {
            Some(t) => {
                let (c, cfg, back) = crate::container::weight_tensors_taken(m, t, w, name, &o)?;
                let known = known_rates(&c, &cfg)?;
                Ok((known, Some(crate::container::give_back(back, c)?)))
            }
            None => {
                let (c, cfg) = crate::container::weight_tensors(m, w, name, &o)?;
                Ok((known_rates(&c, &cfg)?, None))
            }
        })
        .collect();
    let mut tensors: HashMap<String, KnownRate> = HashMap::new();
    let mut failed = None;
    // Every value a finished encode took goes back, even when another failed (a failed job's
    // value is lost with it; compress then stops with that error).
    for (w, r) in weights.iter().zip(per) {
        match r {
            Ok((known, back)) => {
                if let Some(t) = back {
                    model.restore_raw(&w.id, t);
                }
                tensors.extend(known);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let parameter_bytes: u64 = tensors.values().map(|k| k.bytes).sum();
    Ok(ReferenceSizes {
        bytes: parameter_bytes - parameter_bytes / 2000,
        tensors,
    })
}

/// Float initializers of at least this many values are taken out of the model for the
/// reference-size encode (smaller ones are copied: taking them saves little).
const TAKE_ABOVE: usize = 1 << 18;

/// Each coded tensor's bytes at the reference's settings, with its QP and value print.
fn known_rates(
    tensors: &[nnc_codec::Tensor],
    cfg: &EncoderConfig,
) -> Result<Vec<(String, KnownRate)>, PipelineError> {
    let sizes = ndu_sizes(&nnc_codec::encode(tensors, cfg)?)?;
    Ok(tensors
        .iter()
        .filter_map(|t| {
            let bytes = *sizes.get(&t.name)?;
            let print = match &t.data {
                nnc_codec::TensorData::F32(v) => ValuePrint::of(v),
                nnc_codec::TensorData::I32(_) => ValuePrint::of(&[]),
            };
            let qp = cfg.tensor_qp(&t.name, &t.shape).0;
            Some((t.name.clone(), KnownRate { qp, bytes, print }))
        })
        .collect())
}

/// The default rule's encoder settings for `p`, the finest within the reference's bytes: the
/// rate model is calibrated from the reference encode where values are unchanged and from one
/// trial encode of the other tensors; each encode then corrects it (at most four).
fn rule_encode(
    p: &Prepared,
    reference: &ReferenceSizes,
    progress: &mut dyn Progress,
) -> Result<(Vec<u8>, ContainerStats, Quantization), PipelineError> {
    let budget = reference.bytes;
    let mut planner = Planner::new(Rule::default(), &p.tensors, &p.config);
    let known = planner.calibrate_known(&p.tensors, &reference.tensors);
    let fast = |mut c: EncoderConfig| {
        // Sampled parameter optimisation: half the time, sizes within 0.02% of the exact one.
        c.param_opt_bins = c.param_opt_bins.or(EncoderConfig::fast().param_opt_bins);
        c
    };
    // The rest (tensors simplification changed, and the ones the rule does not plan: raw,
    // integer, row scales) in one trial encode.
    let rest: Vec<nnc_codec::Tensor> = p
        .tensors
        .iter()
        .filter(|t| !known.contains(&t.name))
        .cloned()
        .collect();
    progress.step(0, 4, "trial encode");
    let sizes = if rest.is_empty() {
        HashMap::new()
    } else {
        ndu_sizes(&nnc_codec::encode(&rest, &fast(planner.config(0.0)))?)?
    };
    drop(rest);
    planner.calibrate(&p.tensors, 0.0, &sizes);
    let planned: std::collections::HashSet<&str> =
        planner.stats.iter().map(|s| s.name.as_str()).collect();
    let fixed: u64 = sizes
        .iter()
        .filter(|(k, _)| !planned.contains(k.as_str()))
        .map(|(_, v)| v)
        .sum();
    // The rate model's error on the last encode corrects the next target; a level seen over
    // budget bounds the next from below.
    let mut ratio = 1.0f64;
    let mut over = f64::NEG_INFINITY;
    let mut trials = Vec::new();
    // An encode over budget keeps its level, not its bytes (a large model's bitstream would sit
    // beside the next encode); should no encode fit, the best is encoded again at the end.
    let mut best: Option<(Option<Vec<u8>>, ContainerStats, f64)> = None;
    for attempt in 0..4u64 {
        if progress.cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let level = planner
            .level_for(budget as f64 / ratio, fixed as f64)
            .max(over + 1.0 / 64.0);
        progress.step(attempt + 1, 4, "encoding");
        let (bytes, stats) = encode_prepared(p, &fast(planner.config(level)))?;
        let predicted = planner.predict(level) + fixed as f64;
        let actual = stats.parameter_bytes;
        trials.push((level, predicted as u64, actual));
        ratio = actual as f64 / predicted.max(1.0);
        let fits = actual <= budget;
        if !fits {
            over = over.max(level);
        }
        let better = match &best {
            None => true,
            Some((_, s, _)) if s.parameter_bytes <= budget => fits && actual > s.parameter_bytes,
            Some((_, s, _)) => fits || actual < s.parameter_bytes,
        };
        if better {
            best = Some((fits.then_some(bytes), stats, level));
        }
        if fits && actual as f64 >= 0.995 * budget as f64 {
            break;
        }
    }
    let (bytes, stats, level) = match best {
        Some((Some(bytes), stats, level)) => (bytes, stats, level),
        Some((None, _, level)) => {
            let (bytes, stats) = encode_prepared(p, &fast(planner.config(level)))?;
            (bytes, stats, level)
        }
        None => return Err(PipelineError::Cancelled),
    };
    let qps: Vec<i32> = (0..planner.stats.len())
        .filter(|&i| planner.stats[i].weight)
        .map(|i| planner.qp(i, level))
        .collect();
    let q = Quantization::Rule {
        anchor: Anchor {
            reference_bytes: budget,
            level,
            bytes: stats.parameter_bytes,
            trials,
        },
        qp_min: qps.iter().copied().min().unwrap_or(0),
        qp_max: qps.iter().copied().max().unwrap_or(0),
        row_scaled: stats.row_scaled,
    };
    Ok((bytes, stats, q))
}

/// Rate control on `model` (simplified) within `max_drop` points.
fn rate_control(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
    container: &ContainerOptions,
    max_drop: f64,
    opts: &RateOptions,
    progress: &mut dyn Progress,
) -> Result<RatePlan, PipelineError> {
    let p = into_prepared(model.clone(), container)?;
    let weights = p
        .tensors
        .iter()
        .filter(|t| t.shape.len() > 1)
        .count()
        .max(1);
    let probes = weights.min(opts.max_probes) as f64;
    // A third of the time for the probes.
    let per_probe = opts.time_budget.as_secs_f64() / 3.0 / probes;
    let eval = OrtEvaluator::new(rt, model, &p.tensors, calib, opts.holdout, per_probe)?;
    let o = RateOptions {
        max_drop,
        ..opts.clone()
    };
    let rc = RateControl::new(&p.tensors, &p.config, o, eval);
    let tensors = &p.tensors;
    Ok(rc.run(&mut |c| trial_sizes(tensors, c), progress)?)
}

/// Relative reconstruction errors of every quantized tensor, worst first.
/// Decodes `bitstream` and measures each quantized tensor's error against what was encoded
/// (largest relative error first). Each encoded tensor is dropped once its decoded one is
/// compared, so the two sets are not in memory whole at the same time.
fn decode_checked(
    bitstream: &[u8],
    encoded: Vec<nnc_codec::Tensor>,
    config: &EncoderConfig,
    units: &[nnc_codec::UnitInfo],
) -> Result<(nnc_codec::DecodedStream, Vec<TensorError>), PipelineError> {
    let qps: HashMap<&str, i32> = units
        .iter()
        .filter_map(|u| u.ndu.as_ref())
        .filter_map(|n| Some((n.name.as_str(), n.qp?)))
        .collect();
    let encoded: std::sync::Mutex<HashMap<String, nnc_codec::Tensor>> = std::sync::Mutex::new(
        encoded
            .into_iter()
            .filter(|t| !config.overrides.get(&t.name).is_some_and(|o| o.raw))
            .map(|t| (t.name.clone(), t))
            .collect(),
    );
    let (pairs, topology) = nnc_codec::decode_stream_with(bitstream, &Default::default(), |d| {
        let original = encoded.lock().ok().and_then(|mut m| m.remove(&d.name));
        let error = match (original.as_ref().map(|t| &t.data), &d.data) {
            (Some(nnc_codec::TensorData::F32(a)), nnc_codec::TensorData::F32(b)) => Some(
                TensorError::of(&d.name, qps.get(d.name.as_str()).copied(), a, b),
            ),
            _ => None,
        };
        (d, error)
    })?;
    let (tensors, errors): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let mut errors: Vec<TensorError> = errors.into_iter().flatten().collect();
    errors.sort_by(|a, b| b.rel_error.total_cmp(&a.rel_error));
    Ok((nnc_codec::DecodedStream { tensors, topology }, errors))
}

/// Suspects for a collapse: tensors quantized away, then the largest relative errors.
fn suspects(errors: &[TensorError]) -> Vec<Suspect> {
    errors
        .iter()
        .take(5)
        .map(|e| Suspect {
            tensor: e.name.clone(),
            detail: if e.zeroed > 0.999 {
                format!("quantized to all zeros at QP {}", e.qp.unwrap_or(0))
            } else {
                format!(
                    "relative error {:.3}, {:.0}% of values zeroed",
                    e.rel_error,
                    100.0 * e.zeroed
                )
            },
        })
        .collect()
}

/// The decoded model on the probe data (through a mapped temp file), and the temp file for
/// timing.
fn check_decoded(
    rt: &Runtime,
    model: Model,
    original: &Original,
    dir: &Path,
) -> Result<(Fidelity, PathBuf), PipelineError> {
    let path = crate::modelfile::write_mapped(&model, dir)?;
    drop(model);
    let mut s = Session::from_file_io(
        rt,
        &path,
        original.inputs.clone(),
        original.outputs.clone(),
        &SessionOptions::default(),
    )?;
    let f = original.probe.compare_session(&mut s)?;
    Ok((f, path))
}

fn latency_stage(
    rt: &Runtime,
    input: &Path,
    decoded: &Path,
    original: &Original,
    shapes: &[(String, Vec<usize>)],
    opts: &LatencyOptions,
) -> Result<LatencyReport, PipelineError> {
    let bo = BenchOptions {
        runs: opts.max_runs,
        max_runs: Some(opts.max_runs),
        time_budget: Some(opts.time),
        warmup: opts.warmup,
        shapes: shapes.to_vec(),
        ..Default::default()
    };
    // The probe's first sample: the model runs on it, with or without `--shape`.
    let inputs = original.probe.first_sample()?;
    let a = Subject {
        path: input,
        inputs: original.inputs.clone(),
        outputs: original.outputs.clone(),
    };
    let b = Subject {
        path: decoded,
        inputs: original.inputs.clone(),
        outputs: original.outputs.clone(),
    };
    let r = bench_subjects(rt, &a, Some(&b), &inputs, &bo, &mut |_, _| {})?;
    let spread = |m: &crate::bench::ModelStats| {
        let mut v = m.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| {
            (
                crate::bench::percentile(&v, 0.1),
                crate::bench::percentile(&v, 0.9),
            )
        })
    };
    let (o, c) = (spread(&r.model), r.vs.as_ref().and_then(spread));
    let ci =
        r.vs.as_ref()
            .and_then(|v| median_interval(&r.model.samples_ms, &v.samples_ms));
    Ok(LatencyReport {
        original_ms: r.model.median_ms,
        compressed_ms: r.vs.as_ref().map_or(f64::NAN, |v| v.median_ms),
        original_p10_ms: o.map(|x| x.0),
        original_p90_ms: o.map(|x| x.1),
        compressed_p10_ms: c.map(|x| x.0),
        compressed_p90_ms: c.map(|x| x.1),
        ratio: r.ratio_median.unwrap_or(f64::NAN),
        ratio_p10: r.ratio_p10.unwrap_or(f64::NAN),
        ratio_p90: r.ratio_p90.unwrap_or(f64::NAN),
        ratio_median_low: ci.map(|x| x.0),
        ratio_median_high: ci.map(|x| x.1),
        runs: r.model.runs,
        warmup: opts.warmup,
        time_budget_s: opts.time.as_secs_f64(),
        protocol: "both models in one process, interleaved A B / B A with alternating order \
                   (as nnzip bench --vs), on the first verification input, ONNX Runtime defaults"
            .into(),
    })
}

/// A distribution-free 95 % interval of the median per-pair ratio `b / a` of interleaved runs:
/// the order statistics n/2 ∓ 0.98·√n of the sorted ratios. `None` under 10 pairs.
fn median_interval(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| y / x).collect();
    if r.len() < 10 {
        return None;
    }
    r.sort_by(f64::total_cmp);
    let n = r.len() as f64;
    let h = 0.98 * n.sqrt();
    let lo = ((n / 2.0 - h).floor().max(0.0)) as usize;
    let hi = ((n / 2.0 + h).ceil() as usize).min(r.len() - 1);
    Some((r[lo], r[hi]))
}

/// Runs the whole job on `input`.
pub fn compress_file(
    rt: &'static Runtime,
    input: &Path,
    output_label: &str,
    opts: &CompressOptions,
    progress: &mut dyn Progress,
) -> Result<CompressOutput, PipelineError> {
    let mut clock = Clock::new();
    clock.stage("loading", progress)?;
    let original = Model::load(input)?;
    let onnx_bytes = file_len(input) + crate::onnx::external_files(&original).values().sum::<u64>();
    let before = ModelStats::of(&original, &opts.shapes)?;
    let calib = match &opts.calib {
        Some(p) => Some(Calibration::load(p, &original)?),
        None => None,
    };
    if opts.max_drop.is_some() && calib.is_none() {
        return Err(PipelineError::MaxDropNeedsCalib);
    }
    clock.stage("running the original", progress)?;
    let orig = run_original(rt, &original, calib.as_ref(), &opts.shapes)?;
    // The reference tool's best single QP needs the untouched model; otherwise it moves on.
    let kept_original = opts.compare_single_qp.then(|| original.clone());
    let mut model = original;
    let prune = match &opts.prune {
        Some(spec) => {
            clock.stage("pruning", progress)?;
            let (m, r) = prune_stage(model, spec, rt, calib.as_ref(), opts.max_drop)?;
            model = m;
            Some(r)
        }
        None => None,
    };
    let rule =
        opts.max_drop.is_none() && opts.quantizer == Quantizer::Rule && !opts.reference_compatible;
    let mut container = opts.container.clone();
    let mut reference = None;
    if rule {
        clock.stage("reference size", progress)?;
        reference = Some(reference_sizes(&mut model, &container)?);
    }
    // Folded rows are coded with their scales apart wherever QPs are chosen per tensor.
    if opts.simplify && !opts.reference_compatible && (rule || opts.max_drop.is_some()) {
        container.row_prints = Some(Arc::new(RowPrints::of(&model)));
    }
    let simplify_report: Option<SimplifyReport> = if opts.simplify {
        clock.stage("simplifying", progress)?;
        let r = simplify(&mut model, rt, calib.as_ref(), &opts.shapes)?;
        if !r.verification.within_tolerance {
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
    let after = ModelStats::of(&model, &opts.shapes)?;
    let mut rate = None;
    let (mut single, mut single_reference) = (None, None);
    if let (Some(max_drop), Some(c), Some((metric, v0))) = (opts.max_drop, &calib, orig.metric) {
        clock.stage("rate control", progress)?;
        // Pruning already spent part of the budget; quantization gets the rest.
        let v_pruned = {
            let out = crate::calib::run_model(rt, &model, c)?;
            let t = crate::calib::into_metric_output(out).ok_or(CalibError::Empty {
                path: c.path.clone(),
            })?;
            evaluate(metric, c, orig.probe.reference(), &t)?
        };
        let left = (max_drop - (v0 - v_pruned)).max(0.0);
        let plan = rate_control(rt, &model, c, &container, left, &opts.rate, progress)?;
        container.codec = plan.config.clone();
        if opts.compare_single_qp {
            clock.stage("best single QP", progress)?;
            single = best_single_qp(rt, &model, c, &opts.container, left)?;
            if let Some(o) = &kept_original {
                clock.stage("best single QP of the reference", progress)?;
                let ro = reference_options(&opts.container);
                single_reference =
                    best_single_qp(rt, o, c, &ro, max_drop)?.map(|(qp, bytes, metric)| SingleQp {
                        qp,
                        bitstream_bytes: bytes,
                        metric,
                    });
            }
        }
        rate = Some(plan);
    }
    let best_single_qp = match single {
        Some((qp, _, m)) => {
            let mut o = opts.container.clone();
            o.codec.qp = qp;
            let bytes = crate::container::compress(&model, &o)?.0.len() as u64;
            Some(SingleQp {
                qp,
                bitstream_bytes: bytes,
                metric: m,
            })
        }
        None => None,
    };
    drop(kept_original);
    clock.stage("encoding", progress)?;
    let prepared = if opts.reference_compatible {
        into_prepared(model, &reference_options(&container))?
    } else {
        let mut p = into_prepared(model, &container)?;
        if rate.is_some() {
            // The plan's QPs over the container's own overrides.
            p.config = container.codec.clone();
        }
        p
    };
    let (bitstream, graph, stats, quantization) = if opts.reference_compatible {
        let (b, g, s) = encode_reference_compatible(&prepared, &prepared.config)?;
        let q = match rate {
            Some(r) => Quantization::RateControl(Box::new(r)),
            None => Quantization::Uniform {
                qp: container.codec.qp,
                nonweight_qp: container.codec.effective_nonweight_qp(),
            },
        };
        (b, Some(g), s, q)
    } else if let Some(r) = &reference {
        let (b, s, q) = rule_encode(&prepared, r, progress)?;
        (b, None, s, q)
    } else {
        let (b, s) = encode_prepared(&prepared, &prepared.config)?;
        let q = match rate {
            Some(r) => Quantization::RateControl(Box::new(r)),
            None => Quantization::Uniform {
                qp: container.codec.qp,
                nonweight_qp: container.codec.effective_nonweight_qp(),
            },
        };
        (b, None, s, q)
    };
    clock.stage("verifying the bitstream", progress)?;
    let units = nnc_codec::units(&bitstream)?;
    let tensors: Vec<crate::report::TensorRate> = units
        .iter()
        .filter_map(|u| {
            let n = u.ndu.as_ref()?;
            Some(crate::report::TensorRate {
                name: n.name.clone(),
                qp: n.qp,
                elements: n.shape.iter().product(),
                bytes: u.size as u64,
            })
        })
        .collect();
    let (decoded, errors) = decode_checked(&bitstream, prepared.tensors, &prepared.config, &units)?;
    let model = assemble(decoded, graph.as_deref())?;
    drop(prepared.topology);
    let dir = tempfile::tempdir().map_err(|source| PipelineError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let (metric_after, breakdown) = match (&calib, orig.metric) {
        (Some(c), Some((metric, _))) => {
            let out = crate::calib::run_model(rt, &model, c)?;
            let t = crate::calib::into_metric_output(out).ok_or(CalibError::Empty {
                path: c.path.clone(),
            })?;
            let b = crate::calib::breakdown::breakdown(
                orig.probe.reference(),
                &t,
                c.labels.as_deref(),
                0.1,
            );
            (Some(evaluate(metric, c, orig.probe.reference(), &t)?), b)
        }
        _ => (None, None),
    };
    let (fidelity, decoded_path) = check_decoded(rt, model, &orig, dir.path())?;
    let verdict = opts.guard.check(fidelity.clone(), suspects(&errors));
    let failed = match verdict {
        Ok(_) => None,
        Err(e) if opts.force => Some(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let latency = if opts.latency.max_runs > 0 {
        clock.stage("timing on ONNX Runtime", progress)?;
        Some(latency_stage(
            rt,
            input,
            &decoded_path,
            &orig,
            &opts.shapes,
            &opts.latency,
        )?)
    } else {
        None
    };
    drop(dir);
    let onnx_zstd_bytes = if opts.zstd_baseline {
        clock.stage("zstd -19 baseline", progress)?;
        Some(zstd_size(input)?)
    } else {
        None
    };
    clock.finish();
    let stages = stage_sizes(onnx_bytes, onnx_zstd_bytes, &before, &after, &stats);
    let pruned_fraction = if opts.simplify {
        1.0 - after.parameters as f64 / before.parameters.max(1) as f64
    } else {
        prune
            .as_ref()
            .and_then(|p| match &p.pass.details {
                PassDetails::Prune(o) => Some(o.sparsity),
                _ => None,
            })
            .unwrap_or(0.0)
    };
    let c = &container.codec;
    let report = CompressReport {
        input: input.display().to_string(),
        output: output_label.to_string(),
        parameters: before.parameters,
        parameters_after: after.parameters,
        pruned_fraction,
        onnx_bytes,
        onnx_zstd_bytes,
        simplified_onnx_bytes: after.onnx_bytes,
        bitstream_bytes: stats.bitstream_bytes,
        parameter_bytes: stats.parameter_bytes,
        topology_bytes: stats.topology_bytes,
        compression_ratio_vs_onnx: onnx_bytes as f64 / stats.bitstream_bytes.max(1) as f64,
        compression_ratio_vs_zstd: onnx_zstd_bytes
            .map(|z| z as f64 / stats.bitstream_bytes.max(1) as f64),
        macs: before.macs,
        macs_after: after.macs,
        metric: orig.metric.map(|(m, _)| m.name().to_string()),
        metric_before: orig.metric.map(|(_, v)| v),
        metric_after,
        latency_ms_original: latency.as_ref().map(|l| l.original_ms),
        latency_ms_compressed: latency.as_ref().map(|l| l.compressed_ms),
        latency_ratio: latency.as_ref().map(|l| l.ratio),
        latency,
        fidelity,
        verification_failed: failed,
        worst_tensors: errors.into_iter().take(8).collect(),
        quantization,
        stages,
        prune,
        simplify: simplify_report,
        best_single_qp,
        best_single_qp_reference: single_reference,
        codec: serde_json::json!({
            "qp": c.qp, "qp_density": c.qp_density, "use_dq": c.use_dq, "codebook_mode": c.codebook_mode.code(),
            "int_quant_bw": c.int_quant_bw, "row_skipping": c.row_skipping, "param_opt": c.param_opt,
            "nonweight_qp": c.nonweight_qp,
        }),
        reference_compatible: opts.reference_compatible,
        timings: clock.done,
        seconds: clock.start.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        tensors,
        breakdown,
        devices: Vec::new(),
    };
    Ok(CompressOutput {
        bitstream,
        graph,
        report,
    })
}

fn stage_sizes(
    onnx_bytes: u64,
    zstd: Option<u64>,
    before: &ModelStats,
    after: &ModelStats,
    stats: &ContainerStats,
) -> Vec<Stage> {
    let mut v = vec![Stage {
        name: "ONNX".into(),
        bytes: onnx_bytes,
        parameters: Some(before.parameters),
    }];
    if let Some(z) = zstd {
        v.push(Stage {
            name: "zstd -19".into(),
            bytes: z,
            parameters: None,
        });
    }
    v.push(Stage {
        name: "pruned+simplified ONNX".into(),
        bytes: after.onnx_bytes,
        parameters: Some(after.parameters),
    });
    v.push(Stage {
        name: "NNC bitstream".into(),
        bytes: stats.bitstream_bytes,
        parameters: Some(after.parameters),
    });
    v
}

/// Writes bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    crate::fsutil::write_atomic(path, |w| w.write_all(bytes)).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })
}
