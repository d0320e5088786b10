//! Rate control to a metric budget: per-tensor QPs so that the metric on unseen inputs like the
//! calibration data drops by at most `max_drop` points while the payload is as small as possible.
//!
//! [`RateControl`] runs four stages, each a method with its own typed result:
//!
//! 1. [`RateControl::rates`]: each weight's bytes at any QP from one trial encode and how many
//!    of its values each step leaves significant ([`crate::quantrule`]'s rate model), and its
//!    weight error at every QP of its grid (uniform rounding, scaled to dependent quantization
//!    by one exact reconstruction). No per-candidate encodes.
//! 2. [`RateControl::sensitivities`]: one probe per tensor that matters for the payload (the
//!    largest, up to `probe_share` of the weight bytes): only that tensor quantized, a step
//!    coarser than the default rule, on a few samples; its output noise per unit of weight
//!    error is its sensitivity. Smaller tensors keep the default rule's step.
//! 3. [`RateControl::search`]: for a target output noise, a Lagrangian multiplier picks every
//!    probed tensor's QP (fewest bytes for the noise the sensitivities predict); the target is
//!    bracketed and bisected on the real metric of the whole quantized model on the search part
//!    of the calibration data. A point is accepted when the measured drop *and*, for top-1
//!    metrics, the expected drop stay within the budget: the expected drop counts each sample
//!    by the chance that its output error exceeds its top-1 margin, a continuous measure that
//!    sees a budget being used up before whole samples flip (with 16 samples one flip is 6
//!    points).
//! 4. [`RateControl::check`]: the choice on the held-out part of the calibration data; when it
//!    breaks the budget there (beyond its own sampling error), the search target is tightened
//!    and checked again.
//!
//! The evaluations are behind [`Evaluator`], so every stage runs in tests against a synthetic
//! model without ONNX Runtime; [`ort::OrtEvaluator`] is the real one.

pub mod ort;
mod single;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nnc_codec::{EncoderConfig, TensorData, TensorOverride};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::calib::{CalibError, Metric};
use crate::container::ContainerError;
use crate::progress::Progress;
use crate::quantrule::{ndu_sizes, Planner, Rule, TensorRate};

pub use single::{best_single_qp, qp_grid, quantized_model};

#[derive(Debug, Error)]
pub enum RateError {
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Codec(#[from] nnc_codec::Error),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Tensor(#[from] crate::tensor::TensorError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("even the finest quantization tried drops the metric by {drop:.2} points, more than the allowed {max:.2}")]
    Infeasible { drop: f64, max: f64 },
    #[error("interrupted")]
    Cancelled,
}

impl RateError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            RateError::Calib(e) => e.class(),
            RateError::Container(e) => e.class(),
            RateError::Onnx(e) => e.class(),
            RateError::Tensor(e) => e.class(),
            RateError::Runtime(_) => C::Runtime,
            RateError::Codec(_) => C::BadInput,
            RateError::Infeasible { .. } => C::Other,
            RateError::Cancelled => C::Interrupted,
        }
    }
}

/// Default share of the calibration samples held out to check a choice (rate control and the
/// pruning search).
pub const HOLDOUT: f64 = 0.25;

/// How the search runs.
#[derive(Debug, Clone)]
pub struct RateOptions {
    pub max_drop: f64,
    /// Share of the calibration samples held out to check the choice (none under 8 samples).
    pub holdout: f64,
    /// Wall time for the whole search; probes and bisection steps stop when it is spent.
    pub time_budget: Duration,
    /// Share of the weight payload whose tensors get a probe (largest first).
    pub probe_share: f64,
    pub max_probes: usize,
    /// Whole-model evaluations of the search at most.
    pub max_evaluations: usize,
}

impl RateOptions {
    pub fn new(max_drop: f64) -> RateOptions {
        RateOptions {
            max_drop,
            holdout: HOLDOUT,
            time_budget: Duration::from_secs(240),
            probe_share: 0.95,
            max_probes: 96,
            max_evaluations: 20,
        }
    }
}

/// Sample sets of the calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Set {
    /// Where the search measures.
    Search,
    /// Held out: where the choice is checked.
    Check,
    /// A few search samples for the per-tensor probes.
    Probe,
}

/// What one evaluation of a quantized model says, against the original on the same set.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Outcome {
    /// The metric, percent.
    pub metric: f64,
    /// The original's metric minus this one, points.
    pub drop: f64,
    /// Top-1 metrics: expected drop in points, each sample counted by the probability that its
    /// output error (Gaussian, of the measured RMS) exceeds its top-1 margin.
    pub expected_drop: Option<f64>,
    /// Standard error of the drop over the samples (the search holds the drop plus one standard
    /// error within the budget, as unseen samples vary as much): cosine, from the per-sample
    /// values; top-1, 100·√k/N for k changed predictions.
    pub drop_se: Option<f64>,
    /// Output noise power over the original's: Σ error² / Σ original².
    pub noise: f64,
    /// Samples measured.
    pub samples: usize,
}

impl Outcome {
    pub fn snr_db(&self) -> f64 {
        -10.0 * self.noise.max(1e-30).log10()
    }

    /// One sample is worth at most half the budget: the samples resolve it.
    fn resolves(&self, max_drop: f64) -> bool {
        100.0 / self.samples.max(1) as f64 <= max_drop / 2.0
    }

    /// Accepted by the search: top-1 metrics, the measured drop and, where the samples cannot
    /// resolve the budget (one sample is worth more than half of it), the expected drop within
    /// it; cosine, the drop plus one standard
    /// error over the samples.
    pub fn within(&self, max_drop: f64) -> bool {
        let x = max_drop + 1e-9;
        match self.expected_drop {
            // The expected drop never reaches 0 exactly: a thousandth of a point is nothing.
            Some(e) if !self.resolves(max_drop) => self.drop <= x && e <= max_drop + 1e-3,
            Some(_) => self.drop <= x,
            None => self.drop + self.drop_se.unwrap_or(0.0) <= x,
        }
    }

    /// Holds on the held-out samples: as [`Outcome::within`], except that a resolved top-1
    /// drop may exceed the budget by its own standard error (a check of a few hundred samples
    /// is that uncertain).
    pub fn holds(&self, max_drop: f64) -> bool {
        match self.expected_drop {
            Some(_) if self.resolves(max_drop) => {
                self.drop <= max_drop + self.drop_se.unwrap_or(0.0) + 1e-9
            }
            Some(_) => self.within(max_drop),
            None => self.drop <= max_drop + 1e-9,
        }
    }
}

/// The model's output with some weights replaced by quantized values.
pub trait Evaluator {
    fn metric(&self) -> Metric;
    /// Samples in a set (0: the set is empty).
    fn samples(&self, set: Set) -> usize;
    /// The model with `values` (by index into the tensor list the evaluator was made for, the
    /// weight's reconstructed values) in place of those weights, the others exact, on `set`.
    fn evaluate(&mut self, values: &[(usize, &[f32])], set: Set) -> Result<Outcome, RateError>;
}

/// One whole-model evaluation of the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchStep {
    /// Target output noise of the allocation (sum of the predicted per-tensor noises).
    pub target_noise: f64,
    /// Predicted payload bytes.
    pub bytes: u64,
    pub set: Set,
    pub metric: f64,
    pub drop: f64,
    pub expected_drop: Option<f64>,
    pub drop_se: Option<f64>,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub snr_db: f64,
    pub accepted: bool,
}

/// Stage 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateStage {
    pub tensors: usize,
    pub trial_encodes: usize,
    pub seconds: f64,
}

/// Stage 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensitivityStage {
    pub probed: usize,
    /// Share of the weight payload the probed tensors hold.
    pub payload_share: f64,
    pub probe_samples: usize,
    pub seconds: f64,
}

/// Stage 3.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchStage {
    pub evaluations: usize,
    pub seconds: f64,
}

/// Stage 4.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckStage {
    /// The chosen point on the held-out samples (`None` without a hold-out).
    pub held_out: Option<Outcome>,
    /// Times the target was tightened because the held-out samples broke the budget.
    pub tightened: usize,
    pub seconds: f64,
}

/// The result: the encoder settings and how they were found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatePlan {
    pub metric: Metric,
    pub max_drop: f64,
    pub search_samples: usize,
    pub check_samples: usize,
    /// Points one sample is worth on the search set (100 / samples).
    pub points_per_sample: f64,
    /// Notes on what the data can and cannot resolve.
    pub warnings: Vec<String>,
    /// The chosen point on the search samples.
    pub search: Outcome,
    /// ... and on the held-out ones.
    pub held_out: Option<Outcome>,
    /// Predicted payload bytes of the chosen point (the encode has the exact ones).
    pub bytes: u64,
    /// QP chosen per allocated tensor.
    pub qps: HashMap<String, i32>,
    pub steps: Vec<SearchStep>,
    pub rates: RateStage,
    pub sensitivities: SensitivityStage,
    pub search_stage: SearchStage,
    pub check: CheckStage,
    #[serde(skip)]
    pub config: EncoderConfig,
}

/// The trial encode rate control is given: per-NDU bytes of a configuration.
pub type TrialEncode<'a> =
    dyn FnMut(&EncoderConfig) -> Result<HashMap<String, u64>, RateError> + 'a;

/// QPs tried per tensor around the default rule's: four doublings finer to six coarser.
const FINER: i32 = 16;
const COARSER: i32 = 24;

/// One allocated tensor: its grid of QPs with predicted bytes and weight error, and its
/// sensitivity once probed.
#[derive(Debug, Clone)]
struct Tensor {
    /// Index into the tensor list.
    index: usize,
    name: String,
    qp0: i32,
    /// (qp, bytes, weight squared error), finest first.
    grid: Vec<(i32, f64, f64)>,
    /// Output noise per unit of weight squared error; `None`: not probed (stays at `qp0`).
    sensitivity: Option<f64>,
}

impl Tensor {
    fn at(&self, qp: i32) -> Option<&(i32, f64, f64)> {
        self.grid.iter().find(|c| c.0 == qp)
    }
}

/// Rate control over the codec tensors of one model.
pub struct RateControl<'a, E: Evaluator> {
    tensors: &'a [nnc_codec::Tensor],
    base: EncoderConfig,
    opts: RateOptions,
    eval: E,
    planner: Planner,
    alloc: Vec<Tensor>,
    /// Bytes of the NDUs not allocated (non-weights, raw, integer tensors).
    fixed_bytes: f64,
    steps: Vec<SearchStep>,
    /// The last reconstruction of each tensor, by QP (evaluations change few tensors).
    cache: HashMap<usize, (i32, Vec<f32>)>,
    start: Instant,
}

impl<'a, E: Evaluator> RateControl<'a, E> {
    /// `tensors` and `base` as the container prepared them; `eval` knows the same tensor list.
    pub fn new(
        tensors: &'a [nnc_codec::Tensor],
        base: &EncoderConfig,
        opts: RateOptions,
        eval: E,
    ) -> Self {
        RateControl {
            tensors,
            base: base.clone(),
            planner: Planner::new(Rule::default(), tensors, base),
            opts,
            eval,
            alloc: Vec::new(),
            fixed_bytes: 0.0,
            steps: Vec::new(),
            cache: HashMap::new(),
            start: Instant::now(),
        }
    }

    fn over_time(&self, share: f64) -> bool {
        self.start.elapsed().as_secs_f64() > share * self.opts.time_budget.as_secs_f64()
    }

    /// Stage 1: bytes and weight error of every weight at every QP of its grid, from one trial
    /// encode (`encode` gives per-NDU bytes of a configuration).
    pub fn rates(&mut self, encode: &mut TrialEncode<'_>) -> Result<RateStage, RateError> {
        let t0 = Instant::now();
        let cfg0 = self.planner.config(0.0);
        let sizes = encode(&cfg0)?;
        let by_name: HashMap<&str, usize> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let d = self.base.qp_density;
        let mut alloc = Vec::new();
        let mut fixed = 0.0;
        let planned: HashMap<&str, usize> = self
            .planner
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        for t in self.tensors {
            let bytes = sizes.get(&t.name).copied().unwrap_or(0) as f64;
            let Some(&pi) = planned.get(t.name.as_str()) else {
                fixed += bytes;
                continue;
            };
            let (TensorData::F32(v), true) = (&t.data, self.planner.stats[pi].weight) else {
                fixed += bytes;
                continue;
            };
            let qp0 = self.planner.qp(pi, 0.0);
            let rate = TensorRate::new(v, qp0, bytes as u64, d);
            let grid = (qp0 - FINER..=qp0 + COARSER)
                .map(|q| (q, rate.bytes_at(q), rounding_sse(v, q, d)))
                .collect();
            alloc.push(Tensor {
                index: by_name.get(t.name.as_str()).copied().unwrap_or(0),
                name: t.name.clone(),
                qp0,
                grid,
                sensitivity: None,
            });
        }
        self.alloc = alloc;
        self.fixed_bytes = fixed;
        Ok(RateStage {
            tensors: self.alloc.len(),
            trial_encodes: 1,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Reconstruction of tensor `index` at `qp` (dependent quantization as configured).
    fn reconstruct(&mut self, index: usize, qp: i32) -> Result<&[f32], RateError> {
        let fresh = self.cache.get(&index).is_none_or(|(q, _)| *q != qp);
        if fresh {
            let t = &self.tensors[index];
            let mut cfg = self.base.clone();
            let o = cfg.overrides.entry(t.name.clone()).or_default();
            *o = TensorOverride { qp: Some(qp), ..*o };
            let rec = nnc_codec::reconstruct(std::slice::from_ref(t), &cfg)?;
            let v = match rec.into_iter().next().map(|r| r.data) {
                Some(TensorData::F32(v)) => v,
                _ => Vec::new(),
            };
            self.cache.insert(index, (qp, v));
        }
        Ok(self
            .cache
            .get(&index)
            .map_or(&[][..], |(_, v)| v.as_slice()))
    }

    /// Stage 2: one probe per tensor of the largest payload share.
    pub fn sensitivities(
        &mut self,
        progress: &mut dyn Progress,
    ) -> Result<SensitivityStage, RateError> {
        let t0 = Instant::now();
        let mut order: Vec<usize> = (0..self.alloc.len()).collect();
        let bytes0 = |t: &Tensor| t.at(t.qp0).map_or(0.0, |c| c.1);
        order.sort_by(|&a, &b| bytes0(&self.alloc[b]).total_cmp(&bytes0(&self.alloc[a])));
        let total: f64 = self.alloc.iter().map(bytes0).sum::<f64>().max(1.0);
        let mut covered = 0.0;
        let mut probed = 0;
        for (n, &ai) in order.iter().enumerate() {
            if covered >= self.opts.probe_share * total
                || probed >= self.opts.max_probes
                || self.over_time(0.4)
            {
                break;
            }
            if progress.cancelled() {
                return Err(RateError::Cancelled);
            }
            progress.step(n as u64, order.len() as u64, &self.alloc[ai].name);
            let (index, qp) = (self.alloc[ai].index, self.alloc[ai].qp0 + 4);
            let rec = self.reconstruct(index, qp)?.to_vec();
            let TensorData::F32(orig) = &self.tensors[index].data else {
                continue;
            };
            let sse: f64 = orig
                .iter()
                .zip(&rec)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            let out = self.eval.evaluate(&[(index, &rec)], Set::Probe)?;
            let t = &mut self.alloc[ai];
            // The grid's rounding errors, scaled to what dependent quantization gives here.
            if let Some(c) = t.at(qp).copied() {
                if c.2 > 0.0 && sse > 0.0 {
                    let k = sse / c.2;
                    for g in &mut t.grid {
                        g.2 *= k;
                    }
                }
            }
            t.sensitivity = Some(if sse > 0.0 { out.noise / sse } else { 0.0 });
            covered += bytes0(t);
            probed += 1;
        }
        Ok(SensitivityStage {
            probed,
            payload_share: covered / total,
            probe_samples: self.eval.samples(Set::Probe),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Per allocated tensor, the QP for multiplier `lambda`: fewest bytes + λ·predicted noise.
    fn choose(&self, lambda: f64) -> Vec<i32> {
        self.alloc
            .iter()
            .map(|t| match t.sensitivity {
                None => t.qp0,
                Some(s) => t
                    .grid
                    .iter()
                    .min_by(|a, b| (a.1 + lambda * s * a.2).total_cmp(&(b.1 + lambda * s * b.2)))
                    .map_or(t.qp0, |c| c.0),
            })
            .collect()
    }

    fn predicted(&self, qps: &[i32]) -> (f64, f64) {
        let (mut bytes, mut noise) = (self.fixed_bytes, 0.0);
        for (t, &q) in self.alloc.iter().zip(qps) {
            if let Some(c) = t.at(q) {
                bytes += c.1;
                noise += t.sensitivity.unwrap_or(0.0) * c.2;
            }
        }
        (bytes, noise)
    }

    /// The allocation whose predicted noise is at most `target` with the fewest bytes
    /// (bisection of the multiplier in log space).
    fn allocate(&self, target: f64) -> Vec<i32> {
        let (mut lo, mut hi) = (-12.0f64, 24.0f64);
        let mut best = self.choose(10f64.powf(hi));
        for _ in 0..48 {
            let mid = (lo + hi) / 2.0;
            let qps = self.choose(10f64.powf(mid));
            if self.predicted(&qps).1 <= target {
                best = qps;
                hi = mid;
            } else {
                lo = mid;
            }
        }
        best
    }

    /// The encoder settings for per-tensor QPs.
    fn config(&self, qps: &[i32]) -> EncoderConfig {
        let mut cfg = self.planner.config(0.0);
        for (t, &q) in self.alloc.iter().zip(qps) {
            cfg.overrides.entry(t.name.clone()).or_default().qp = Some(q);
        }
        cfg
    }

    /// The whole model at `qps` on `set`.
    fn measure(&mut self, qps: &[i32], target: f64, set: Set) -> Result<Outcome, RateError> {
        let pairs: Vec<(usize, i32)> = self
            .alloc
            .iter()
            .zip(qps)
            .map(|(t, &q)| (t.index, q))
            .collect();
        // Tensors the rule plans but rate control does not move (non-weights) count as well.
        let fixed: Vec<(usize, i32)> = (0..self.planner.stats.len())
            .filter(|&i| !self.planner.stats[i].weight)
            .filter_map(|i| {
                let name = &self.planner.stats[i].name;
                let idx = self.tensors.iter().position(|t| &t.name == name)?;
                Some((idx, self.planner.qp(i, 0.0)))
            })
            .collect();
        for &(i, q) in pairs.iter().chain(&fixed) {
            self.reconstruct(i, q)?;
        }
        let values: Vec<(usize, &[f32])> = pairs
            .iter()
            .chain(&fixed)
            .filter_map(|&(i, _)| self.cache.get(&i).map(|(_, v)| (i, v.as_slice())))
            .collect();
        let out = self.eval.evaluate(&values, set)?;
        let accepted = out.within(self.opts.max_drop);
        self.steps.push(SearchStep {
            target_noise: target,
            bytes: self.predicted(qps).0 as u64,
            set,
            metric: out.metric,
            drop: out.drop,
            expected_drop: out.expected_drop,
            drop_se: out.drop_se,
            snr_db: out.snr_db(),
            accepted,
        });
        Ok(out)
    }

    /// Stage 3: bracket and bisect the target noise on the real metric. Returns the accepted
    /// target with the fewest predicted bytes and its outcome.
    pub fn search(
        &mut self,
        progress: &mut dyn Progress,
    ) -> Result<(SearchStage, f64, Outcome), RateError> {
        let t0 = Instant::now();
        let evals0 = self.steps.len();
        let rule: Vec<i32> = self.alloc.iter().map(|t| t.qp0).collect();
        let mut target = self.predicted(&rule).1.max(1e-12);
        let mut ok: Option<(f64, Outcome)> = None;
        let mut bad: Option<f64> = None;
        let mut n = 0;
        // Bracket: ×10 steps from the default rule's noise.
        loop {
            if progress.cancelled() {
                return Err(RateError::Cancelled);
            }
            progress.step(n, self.opts.max_evaluations as u64, "bracketing");
            let qps = self.allocate(target);
            let out = self.measure(&qps, target, Set::Search)?;
            n += 1;
            if out.within(self.opts.max_drop) {
                ok = Some((target, out));
                if bad.is_some() {
                    break;
                }
                target *= 10.0;
            } else {
                bad = Some(target);
                if ok.is_some() {
                    break;
                }
                target /= 10.0;
            }
            if n as usize >= self.opts.max_evaluations / 2 || !(1e-14..=1e3).contains(&target) {
                break;
            }
        }
        let Some((mut good, mut good_out)) = ok else {
            let finest = self.steps.last().map_or(0.0, |s| s.drop);
            return Err(RateError::Infeasible {
                drop: finest,
                max: self.opts.max_drop,
            });
        };
        // Bisect in log space between the accepted and the rejected target.
        if let Some(mut b) = bad.filter(|b| *b > good) {
            while (n as usize) < self.opts.max_evaluations
                && b / good > 1.08
                && !self.over_time(0.9)
            {
                if progress.cancelled() {
                    return Err(RateError::Cancelled);
                }
                progress.step(n, self.opts.max_evaluations as u64, "bisecting");
                let mid = (good * b).sqrt();
                let qps = self.allocate(mid);
                let out = self.measure(&qps, mid, Set::Search)?;
                n += 1;
                if out.within(self.opts.max_drop) {
                    (good, good_out) = (mid, out);
                } else {
                    b = mid;
                }
            }
        }
        Ok((
            SearchStage {
                evaluations: self.steps.len() - evals0,
                seconds: t0.elapsed().as_secs_f64(),
            },
            good,
            good_out,
        ))
    }

    /// Stage 4: the chosen target on the held-out samples; tightened (by 0.7) while it breaks
    /// the budget there, at most four times. Returns the final target and outcomes.
    pub fn check(
        &mut self,
        target: f64,
        search: Outcome,
    ) -> Result<(CheckStage, f64, Outcome), RateError> {
        let t0 = Instant::now();
        if self.eval.samples(Set::Check) == 0 {
            return Ok((
                CheckStage {
                    held_out: None,
                    tightened: 0,
                    seconds: 0.0,
                },
                target,
                search,
            ));
        }
        let (mut target, mut search) = (target, search);
        let mut tightened = 0;
        loop {
            let qps = self.allocate(target);
            let held = self.measure(&qps, target, Set::Check)?;
            if held.holds(self.opts.max_drop) || tightened >= 4 {
                return Ok((
                    CheckStage {
                        held_out: Some(held),
                        tightened,
                        seconds: t0.elapsed().as_secs_f64(),
                    },
                    target,
                    search,
                ));
            }
            tightened += 1;
            target *= 0.7;
            let qps = self.allocate(target);
            search = self.measure(&qps, target, Set::Search)?;
        }
    }

    /// All stages; `encode` gives per-NDU bytes of a configuration (the trial encode).
    pub fn run(
        mut self,
        encode: &mut TrialEncode<'_>,
        progress: &mut dyn Progress,
    ) -> Result<RatePlan, RateError> {
        progress.stage("rate control: rates");
        let rates = self.rates(encode)?;
        progress.stage("rate control: sensitivities");
        let sens = self.sensitivities(progress)?;
        progress.stage("rate control: search");
        let (search_stage, target, search) = self.search(progress)?;
        progress.stage("rate control: held-out check");
        let (check, target, search) = self.check(target, search)?;
        let qps = self.allocate(target);
        let (bytes, _) = self.predicted(&qps);
        let config = self.config(&qps);
        let (ns, nc) = (
            self.eval.samples(Set::Search),
            self.eval.samples(Set::Check),
        );
        let pps = 100.0 / ns.max(1) as f64;
        let mut warnings = Vec::new();
        let top1 = matches!(self.eval.metric(), Metric::Accuracy | Metric::Agreement);
        if top1 && pps > self.opts.max_drop {
            warnings.push(format!(
                "{ns} search samples cannot resolve a budget of {} points (one sample is {pps:.1} points): the budget was held by the expected drop (from each sample's margin, and a margin density for unseen inputs)",
                self.opts.max_drop
            ));
        }
        if nc == 0 {
            warnings.push("fewer than 8 calibration samples: nothing was held out to check the choice on unseen inputs".into());
        }
        if check
            .held_out
            .is_some_and(|h| !h.within(self.opts.max_drop))
        {
            warnings.push("the held-out samples still break the budget after tightening four times: the calibration set is too small or unlike them".into());
        }
        Ok(RatePlan {
            metric: self.eval.metric(),
            max_drop: self.opts.max_drop,
            search_samples: ns,
            check_samples: nc,
            points_per_sample: pps,
            warnings,
            search,
            held_out: check.held_out,
            bytes: bytes as u64,
            qps: self
                .alloc
                .iter()
                .zip(&qps)
                .map(|(t, &q)| (t.name.clone(), q))
                .collect(),
            steps: self.steps,
            rates,
            sensitivities: sens,
            search_stage,
            check,
            config,
        })
    }
}

/// Squared error of rounding `v` to multiples of the step of `qp` (uniform quantization).
fn rounding_sse(v: &[f32], qp: i32, density: u8) -> f64 {
    let step = nnc_codec::quant::step_size_f64(qp, density);
    v.iter()
        .map(|&x| {
            let x = f64::from(x);
            let e = x - (x / step).round() * step;
            e * e
        })
        .sum()
}

/// Per-NDU bytes of an encode of `tensors` at `cfg` with the sampled parameter optimisation
/// (the trial encode of [`RateControl::rates`]).
pub fn trial_sizes(
    tensors: &[nnc_codec::Tensor],
    cfg: &EncoderConfig,
) -> Result<HashMap<String, u64>, RateError> {
    let mut c = cfg.clone();
    c.param_opt_bins = c.param_opt_bins.or(EncoderConfig::fast().param_opt_bins);
    Ok(ndu_sizes(&nnc_codec::encode(tensors, &c)?)?)
}

/// The standard normal tail P(Z > x).
pub(crate) fn normal_tail(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26 for erfc (error below 1.5e-7).
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-z * z).exp();
    if z >= 0.0 {
        erfc / 2.0
    } else {
        1.0 - erfc / 2.0
    }
}

#[cfg(test)]
mod tests;
