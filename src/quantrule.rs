//! The default quantization without calibration data: one step size per tensor from the
//! tensor's own statistics, bounded against its scale, at a global level anchored so the
//! parameters take no more bytes than the reference encoder gives the same model.
//!
//! The rule, per quantized float tensor t with RMS σ_t and N_t values, at global level L:
//!
//! * weights: Δ_t = 2^L · min(Δ_u, 2^M · σ_t · √N_t), and never above σ_t/4;
//! * non-weights (biases, normalization vectors): the reference's non-weight step, or σ_t/4096
//!   where that is finer.
//!
//! Δ_u is the reference's step (QP −38 unless `--qp`). The second term is where the analysis of
//! relative output noise leads: for `y = W x`, noise of variance δ² on W gives output noise of
//! relative power δ²/σ_W² whatever the layer's size, and minimizing Σ δ_t²/σ_t² for a total of
//! Σ N_t·log2(σ_t/Δ_t) bits gives Δ_t ∝ σ_t·√N_t. The reference's single step coincides with
//! that only where σ_t ∝ 1/√N_t. Used alone the size term lost to the single step on PP-LCNet
//! (its layers differ in how much of their noise reaches the output); M puts the two terms level
//! at the element-weighted mean of log2(Δ_u / σ_t√N_t), so the size term only refines: small
//! tensors and tensors of small scale, cheap to code finely and, on the real models measured,
//! those whose errors reach the output most (a 144-weight depthwise layer of PP-LCNet cost 12 dB
//! of output SNR on its own at the reference's step). The σ_t/4 cap keeps every tensor's
//! relative error bounded (under 15% with dependent quantization), so nothing is quantized away
//! (a BatchNormalization folded into a layer can leave weights of max |w| 2.4e-4, all zero at
//! Δ_u = 0.0015).
//!
//! L is the finest level at which the parameter bytes stay within the budget (the bytes the
//! reference spends on the model at its settings): a rate model per tensor (one trial encode, and
//! how many values each step size leaves non-zero) predicts the bytes at any level, and a final
//! encode checks it. Tensors of equal rule steps are dithered over one QP, so the bytes move
//! smoothly with L.

use std::collections::HashMap;

use nnc_codec::{EncoderConfig, TensorData, TensorKind};
use serde::{Deserialize, Serialize};

/// Parameters of the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Exponent of the tensor size in the size term (½ from the derivation above).
    pub size_exponent: f64,
    /// log2 of the size term's margin over the level where it matches Δ_u on average.
    pub size_margin: f64,
    /// Largest step of a weight tensor as a multiple of its RMS.
    pub max_rel_step: f64,
    /// Largest step of a non-weight tensor as a multiple of its RMS.
    pub nonweight_rel_step: f64,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            size_exponent: 0.5,
            size_margin: 0.0,
            max_rel_step: 0.25,
            nonweight_rel_step: 1.0 / 4096.0,
        }
    }
}

/// What the rule needs of one quantized tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorStat {
    pub name: String,
    pub numel: usize,
    pub rms: f64,
    pub weight: bool,
}

impl TensorStat {
    /// Statistics of a codec tensor, `None` for integer tensors.
    pub fn of(t: &nnc_codec::Tensor, cfg: &EncoderConfig) -> Option<TensorStat> {
        let TensorData::F32(v) = &t.data else {
            return None;
        };
        let ss: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let kind = cfg
            .overrides
            .get(&t.name)
            .and_then(|o| o.kind)
            .unwrap_or_else(|| TensorKind::of_shape(&t.shape));
        Some(TensorStat {
            name: t.name.clone(),
            numel: v.len(),
            rms: (ss / v.len().max(1) as f64).sqrt(),
            weight: kind == TensorKind::Weight,
        })
    }
}

/// The QP grid position of `step`, continuous: step sizes are `(2^d + r)·2^(o − d)` for
/// QP = 2^d·o + r, linear within each doubling, so QP q has index exactly q.
pub fn qp_index(step: f64, density: u8) -> f64 {
    let k = f64::from(1u32 << density.min(7));
    let o = step.log2().floor();
    let m = step / 2f64.powf(o);
    k * o + k * (m - 1.0)
}

/// The QP whose step is the largest on the QP grid not above `step`.
pub fn qp_at_most(step: f64, density: u8) -> i32 {
    // A hair of tolerance: a step computed as exactly a grid step must land on it.
    (qp_index(step, density) + 1e-9)
        .floor()
        .clamp(-4096.0, 4095.0) as i32
}

/// QPs per doubling of the step.
fn per_doubling(density: u8) -> f64 {
    f64::from(1u32 << density.min(7))
}

/// The rule applied to a set of tensors: per weight tensor its QP at level 0 (before flooring)
/// and its dither, per non-weight its fixed QP.
#[derive(Debug, Clone)]
pub struct Planner {
    pub rule: Rule,
    pub stats: Vec<TensorStat>,
    /// log2 of the step at level 0 (weights), or the fixed QP (non-weights).
    x0: Vec<f64>,
    dither: Vec<f64>,
    rates: Vec<Option<TensorRate>>,
    density: u8,
    base: EncoderConfig,
}

impl Planner {
    /// Plans `tensors` (the container's, with its overrides in `base`): every float tensor the
    /// codec quantizes and the container left open (not raw, no QP fixed).
    pub fn new(rule: Rule, tensors: &[nnc_codec::Tensor], base: &EncoderConfig) -> Planner {
        let d = base.qp_density;
        let open = |t: &&nnc_codec::Tensor| {
            base.overrides
                .get(&t.name)
                .is_none_or(|o| !o.raw && o.qp.is_none())
        };
        let stats: Vec<TensorStat> = tensors
            .iter()
            .filter(open)
            .filter_map(|t| TensorStat::of(t, base))
            .collect();
        let uniform = nnc_codec::quant::step_size_f64(base.qp, d);
        let size_term = |s: &TensorStat| s.rms * (s.numel.max(1) as f64).powf(rule.size_exponent);
        // M: the element-weighted mean of log2(Δ_u / size term), plus the margin.
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for s in stats.iter().filter(|s| s.weight && s.rms > 0.0) {
            num += s.numel as f64 * (uniform / size_term(s)).log2();
            den += s.numel as f64;
        }
        let m = if den > 0.0 { num / den } else { 0.0 } + rule.size_margin;
        let nw = base.effective_nonweight_qp();
        let nw_step = nnc_codec::quant::step_size_f64(nw, d);
        let x0 = stats
            .iter()
            .map(|s| {
                if s.rms <= 0.0 || !s.rms.is_finite() {
                    // All zeros: any step reconstructs it exactly.
                    return f64::from(nw);
                }
                if !s.weight {
                    return f64::from(qp_at_most(nw_step.min(rule.nonweight_rel_step * s.rms), d));
                }
                uniform.min(2f64.powf(m) * size_term(s)).log2()
            })
            .collect();
        // Dither: weights sorted by size spread over one QP by their cumulative share of
        // elements, so that lowering the level refines tensors one at a time.
        let mut order: Vec<usize> = (0..stats.len()).filter(|&i| stats[i].weight).collect();
        order.sort_by_key(|&i| (stats[i].numel, i));
        let total: f64 = order
            .iter()
            .map(|&i| stats[i].numel as f64)
            .sum::<f64>()
            .max(1.0);
        let mut dither = vec![0.0; stats.len()];
        let mut acc = 0.0;
        for &i in &order {
            let n = stats[i].numel as f64;
            dither[i] = (acc + n / 2.0) / total;
            acc += n;
        }
        Planner {
            rule,
            rates: vec![None; stats.len()],
            stats,
            x0,
            dither,
            density: d,
            base: base.clone(),
        }
    }

    /// Tensor i's QP at `level`.
    pub fn qp(&self, i: usize, level: f64) -> i32 {
        let s = &self.stats[i];
        if !s.weight || s.rms <= 0.0 || !s.rms.is_finite() {
            return self.x0[i] as i32;
        }
        let d = self.density;
        let cap = qp_at_most(self.rule.max_rel_step * s.rms, d);
        let x = qp_index(2f64.powf(self.x0[i] + level), d) + 1e-9;
        ((x + self.dither[i]).floor() as i64)
            .min(i64::from(cap))
            .clamp(-4096, 4095) as i32
    }

    /// The encoder settings at `level`.
    pub fn config(&self, level: f64) -> EncoderConfig {
        let mut cfg = self.base.clone();
        for (i, s) in self.stats.iter().enumerate() {
            cfg.overrides.entry(s.name.clone()).or_default().qp = Some(self.qp(i, level));
        }
        cfg
    }

    /// Records a trial encode at `level`: per NDU name, its bytes; `tensors` give each
    /// tensor's values for the rate model's slopes.
    pub fn calibrate(
        &mut self,
        tensors: &[nnc_codec::Tensor],
        level: f64,
        sizes: &HashMap<String, u64>,
    ) {
        let by_name: HashMap<&str, &nnc_codec::Tensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for i in 0..self.stats.len() {
            let name = self.stats[i].name.as_str();
            let (Some(t), Some(&b)) = (by_name.get(name), sizes.get(name)) else {
                continue;
            };
            if let TensorData::F32(v) = &t.data {
                self.rates[i] = Some(TensorRate::new(v, self.qp(i, level), b, self.density));
            }
        }
    }

    /// Calibrates from sizes known for the same values at another QP (the reference encode of
    /// the model before simplification); returns the names calibrated so.
    pub fn calibrate_known(
        &mut self,
        tensors: &[nnc_codec::Tensor],
        known: &HashMap<String, KnownRate>,
    ) -> std::collections::HashSet<String> {
        let by_name: HashMap<&str, &nnc_codec::Tensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut done = std::collections::HashSet::new();
        for i in 0..self.stats.len() {
            let name = self.stats[i].name.as_str();
            let (Some(t), Some(k)) = (by_name.get(name), known.get(name)) else {
                continue;
            };
            if let TensorData::F32(v) = &t.data {
                if k.print.matches(&ValuePrint::of(v)) {
                    self.rates[i] = Some(TensorRate::new(v, k.qp, k.bytes, self.density));
                    done.insert(name.to_string());
                }
            }
        }
        done
    }

    /// Predicted parameter bytes at `level` (tensors without a trial count as unchanged).
    pub fn predict(&self, level: f64) -> f64 {
        (0..self.stats.len())
            .filter_map(|i| {
                self.rates[i]
                    .as_ref()
                    .map(|r| r.bytes_at(self.qp(i, level)))
            })
            .sum()
    }

    /// The finest level (to 1/64 of a doubling) whose predicted bytes, plus `fixed`, stay
    /// within `budget`; searched on [-8, 8] doublings around the rule.
    pub fn level_for(&self, budget: f64, fixed: f64) -> f64 {
        let fits = |l: f64| self.predict(l) + fixed <= budget;
        let (mut lo, mut hi) = (-8.0f64, 8.0f64);
        if fits(lo) {
            return lo;
        }
        if !fits(hi) {
            return hi;
        }
        while hi - lo > 1.0 / 64.0 {
            let mid = (lo + hi) / 2.0;
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

/// Bytes of one tensor at any QP: a trial's bytes at one QP, and about 2^-d bit more per
/// value that stays significant for each QP step finer (one bit per doubling of precision).
#[derive(Debug, Clone)]
pub(crate) struct TensorRate {
    qp: i32,
    bytes: f64,
    /// Histogram of log2|w| in QP units: `counts[j]` values with QP index `lo + j`.
    lo: i32,
    counts: Vec<u64>,
    density: u8,
}

impl TensorRate {
    pub(crate) fn new(v: &[f32], qp: i32, bytes: u64, density: u8) -> TensorRate {
        let k = per_doubling(density);
        // A value is significant at a QP when it is at least half the step.
        let idx = |x: f32| (k * (2.0 * f64::from(x.abs())).log2()).floor() as i64;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for &x in v.iter().filter(|x| **x != 0.0 && x.is_finite()) {
            let j = idx(x);
            lo = lo.min(j);
            hi = hi.max(j);
        }
        let (lo, hi) = if lo > hi {
            (0, 0)
        } else {
            (lo.max(-4096), hi.min(4096).max(lo.max(-4096)))
        };
        let mut counts = vec![0u64; (hi - lo + 1) as usize];
        for &x in v.iter().filter(|x| **x != 0.0 && x.is_finite()) {
            let j = (idx(x).clamp(lo, hi) - lo) as usize;
            counts[j] += 1;
        }
        TensorRate {
            qp,
            bytes: bytes as f64,
            lo: lo as i32,
            counts,
            density,
        }
    }

    /// Values significant at `qp`: those whose step index is at least `qp`.
    fn significant(&self, qp: i32) -> u64 {
        let from = (i64::from(qp) - i64::from(self.lo)).max(0) as usize;
        self.counts.iter().skip(from).sum()
    }

    pub(crate) fn bytes_at(&self, qp: i32) -> f64 {
        let per_step = 1.0 / (8.0 * per_doubling(self.density));
        let mut b = self.bytes;
        if qp < self.qp {
            for q in qp..self.qp {
                b += per_step * self.significant(q) as f64;
            }
        } else {
            for q in self.qp..qp {
                b -= per_step * self.significant(q + 1) as f64;
            }
        }
        b.max(1.0)
    }
}

/// A cheap summary of a tensor's values, to recognise the same values (up to float rounding)
/// in another encode.
#[derive(Debug, Clone, Copy)]
pub struct ValuePrint {
    numel: usize,
    sum: f64,
    sumsq: f64,
}

impl ValuePrint {
    pub fn of(v: &[f32]) -> ValuePrint {
        let (mut sum, mut sumsq) = (0.0f64, 0.0f64);
        for &x in v {
            sum += f64::from(x);
            sumsq += f64::from(x) * f64::from(x);
        }
        ValuePrint {
            numel: v.len(),
            sum,
            sumsq,
        }
    }

    pub fn matches(&self, o: &ValuePrint) -> bool {
        let close = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-5 * scale;
        self.numel == o.numel
            && close(self.sumsq, o.sumsq, self.sumsq.max(f64::MIN_POSITIVE))
            && close(self.sum, o.sum, (self.sumsq * self.numel as f64).sqrt())
    }
}

/// One tensor's bytes in an encode at a known QP.
#[derive(Debug, Clone, Copy)]
pub struct KnownRate {
    pub qp: i32,
    pub bytes: u64,
    pub print: ValuePrint,
}

/// How the level was chosen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anchor {
    /// Bytes the reference encoder spends on the model's parameters at its settings (NDUs).
    pub reference_bytes: u64,
    pub level: f64,
    /// Our parameter bytes at `level`.
    pub bytes: u64,
    /// Encodes at each level tried: (level, predicted, actual bytes).
    pub trials: Vec<(f64, u64, u64)>,
}

/// Relative reconstruction error of one tensor: ‖ŵ − w‖ / ‖w‖, and how much of it became 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorError {
    pub name: String,
    pub qp: Option<i32>,
    pub numel: usize,
    pub rel_error: f64,
    /// Fraction of values that are zero after reconstruction but were not before.
    pub zeroed: f64,
}

impl TensorError {
    pub fn of(name: &str, qp: Option<i32>, original: &[f32], rec: &[f32]) -> TensorError {
        let (mut e, mut s, mut z) = (0.0f64, 0.0f64, 0usize);
        for (&a, &b) in original.iter().zip(rec) {
            let (a, b) = (f64::from(a), f64::from(b));
            e += (a - b) * (a - b);
            s += a * a;
            z += usize::from(b == 0.0 && a != 0.0);
        }
        TensorError {
            name: name.to_string(),
            qp,
            numel: original.len(),
            rel_error: if s > 0.0 { (e / s).sqrt() } else { e.sqrt() },
            zeroed: z as f64 / original.len().max(1) as f64,
        }
    }
}

/// Per-NDU bytes of a bitstream, by tensor name.
pub fn ndu_sizes(bytes: &[u8]) -> Result<HashMap<String, u64>, nnc_codec::Error> {
    Ok(nnc_codec::units(bytes)?
        .into_iter()
        .filter_map(|u| u.ndu.map(|n| (n.name, u.size as u64)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: Vec<usize>, scale: f32) -> nnc_codec::Tensor {
        let n: usize = shape.iter().product();
        // Deterministic, roughly Laplacian values.
        let v = (0..n)
            .map(|i| {
                let u = ((i * 7919 + 13) % 1000) as f32 / 1000.0 + 0.0005;
                let s = if i % 2 == 0 { 1.0 } else { -1.0 };
                s * scale * -(u.ln())
            })
            .collect();
        nnc_codec::Tensor {
            name: name.into(),
            shape,
            data: TensorData::F32(v),
        }
    }

    #[test]
    fn qp_index_inverts_the_step_grid() {
        for qp in [-75, -38, -37, -1, 0, 5] {
            let s = nnc_codec::quant::step_size_f64(qp, 2);
            assert!((qp_index(s, 2) - f64::from(qp)).abs() < 1e-9, "{qp}");
            assert_eq!(qp_at_most(s, 2), qp);
            assert_eq!(qp_at_most(s * 0.999, 2), qp - 1);
        }
    }

    #[test]
    fn steps_follow_scale_and_size_and_are_capped() {
        let cfg = EncoderConfig::default();
        let ts = vec![
            tensor("big", vec![256, 256], 0.01),
            tensor("small", vec![8, 9], 0.02),
            tensor("bias", vec![256], 1.0),
        ];
        let p = Planner::new(Rule::default(), &ts, &cfg);
        let step = |i: usize, l: f64| nnc_codec::quant::step_size_f64(p.qp(i, l), 2);
        // Never coarser than the reference's step at level 0; the small tensor finer.
        assert!(
            p.qp(0, 0.0) <= cfg.qp && p.qp(1, 0.0) < cfg.qp,
            "{} {}",
            p.qp(0, 0.0),
            p.qp(1, 0.0)
        );
        // The bias at the reference's non-weight step, whatever the level.
        assert_eq!(p.qp(2, 5.0), -75);
        // Coarse levels stop at a quarter of the RMS.
        assert!(step(0, 20.0) <= 0.25 * p.stats[0].rms);
        // One doubling of the level doubles the steps (within the dither's one QP).
        assert!((p.qp(0, 1.0) - p.qp(0, 0.0) - 4).abs() <= 1);
    }

    #[test]
    fn rate_model_follows_the_encoder_and_the_level_meets_the_budget() {
        let cfg = EncoderConfig::default();
        let ts: Vec<nnc_codec::Tensor> = (0..6)
            .map(|i| {
                tensor(
                    &format!("w{i}"),
                    vec![64, 32 << (i % 3)],
                    0.02 * (i + 1) as f32,
                )
            })
            .collect();
        let mut p = Planner::new(Rule::default(), &ts, &cfg);
        let sizes = |c: &EncoderConfig| ndu_sizes(&nnc_codec::encode(&ts, c).unwrap()).unwrap();
        p.calibrate(&ts, 0.0, &sizes(&p.config(0.0)));
        let actual = |l: f64| sizes(&p.config(l)).values().sum::<u64>() as f64;
        for l in [-1.0, 1.0] {
            let (pred, act) = (p.predict(l), actual(l));
            assert!(
                (pred / act - 1.0).abs() < 0.08,
                "level {l}: {pred} vs {act}"
            );
        }
        let budget = actual(0.5);
        let l = p.level_for(budget, 0.0);
        assert!((l - 0.5).abs() < 0.3, "{l}");
    }
}
