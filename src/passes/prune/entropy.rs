//! Entropy-guided pruning (NEPENTHE, Liao et al. 2024). On the calibration data every rectified
//! neuron is ON or OFF; its ON/OFF entropy H says how much it still switches. A layer whose
//! neurons all have zero entropy is linear or constant on that data and the simplify stage can
//! collapse it, so pruning goes preferentially to layers whose entropy is already low:
//!
//! - irrelevance I_l = (1/N_l) Σ_i H_{l,i} · ‖θ_{l,i}‖₁ / ‖θ_l‖₀ (θ_{l,i}: neuron i's weights),
//! - relevance R_l = (Σ_j I_j) / I_l, and 0 where I_l = 0 (already zero entropy: left for the
//!   simplify stage to remove whole),
//! - each round prunes its share of the remaining budget by magnitude, split over the layers in
//!   proportion to R_l times their non-zero weights, then measures the states again.
//!
//! Without retraining (nnzip never trains) magnitude pruning alone rarely silences a neuron, so
//! the last step prunes what entropy says is dead: neurons ON on at most `collapse` of the
//! observations are zeroed as whole channels of their coupled group (exactly OFF afterwards).
//! With a tolerance (`layer_drop`), whole layers are then brought to zero entropy, lowest
//! entropy first, while the metric on the calibration data stays within it: each is *settled*
//! (every neuron fixed in its majority state: mostly-OFF neurons become constants, mostly-ON
//! ones become ON everywhere on the data by a bias offset that their consumers absorb exactly,
//! so the rectifier is the identity there and simplify merges the layer into the next), or,
//! where that is not possible or costs too much, *silenced* (every neuron a constant; a
//! residual branch reduces to its skip connection).
//! "Layer" here is a channel group with at least one rectifier (Relu, Clip from 0) on its path.

use serde::Serialize;

use super::structured::zero_channels;

use super::{census, check_fraction, prunable_weights, ratio, Filter, PruneOutcome, Skipped};
use crate::calib::capture::{capture, Source};
use crate::calib::states::{rectifier_states, NeuronStates};
use crate::calib::{evaluate, run_model, Calibration, Metric};
use crate::graph::editor::Editor;
use crate::graph::groups::{channel_groups, ChannelGroup, CoupledParam, ParamRole};
use crate::graph::ops::Op;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};
use crate::runtime::Runtime;
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct EntropyPrune {
    /// Target fraction of zeros over the weights of the rectified layers.
    pub sparsity: f64,
    /// Rounds of prune-then-measure.
    pub rounds: usize,
    /// Neurons ON on at most this fraction of observations are removed at the end (0: never).
    pub collapse: f64,
    /// Whole layers, lowest entropy first, are silenced (every neuron OFF: zero entropy, for the
    /// simplify stage to remove) while the metric on the calibration data stays within this
    /// many points of the unpruned model's (None: never).
    pub layer_drop: Option<f64>,
    pub filter: Filter,
}

/// One rectified layer's entropy account.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LayerEntropy {
    pub layer: String,
    pub rectifiers: Vec<String>,
    pub neurons: usize,
    pub entropy_before: f64,
    pub entropy_after: f64,
    /// Neurons with zero entropy after pruning, and whether that is all of them.
    pub zero_entropy_neurons: usize,
    pub zero_entropy: bool,
    pub sparsity_after: f64,
    /// Neurons made constant: dead ones (ON at most `collapse` of the time) and, for a settled
    /// or silenced layer, its majority-OFF ones.
    pub collapsed: usize,
    /// Neurons made ON on all of the calibration data (the layer was settled): their rectifier
    /// is the identity there, so the simplify stage can drop it and merge the layer.
    #[serde(default)]
    pub linearized: usize,
    /// The whole layer reached zero entropy (settled or silenced) within `layer_drop`.
    pub removed: bool,
}

struct Layer {
    group: ChannelGroup,
    /// Indices into the states list.
    rects: Vec<usize>,
    /// Its source weights (constants of the main graph) and their channel placements.
    sources: Vec<(String, crate::graph::groups::Placement)>,
}

/// Per-neuron entropy of a layer: the mean over its rectifiers.
fn neuron_entropy(states: &[NeuronStates], rects: &[usize], c: usize) -> f64 {
    let hs: Vec<f64> = rects
        .iter()
        .filter_map(|&r| states.get(r))
        .filter(|s| c < s.channels())
        .map(|s| s.entropy(c))
        .collect();
    hs.iter().sum::<f64>() / hs.len().max(1) as f64
}

fn on_fraction(states: &[NeuronStates], rects: &[usize], c: usize) -> f64 {
    rects
        .iter()
        .filter_map(|&r| states.get(r))
        .filter(|s| c < s.channels())
        .map(|s| s.on_fraction(c))
        .fold(0.0, f64::max)
}

fn mean_entropy(states: &[NeuronStates], l: &Layer) -> f64 {
    let n = l.group.channels.max(1);
    (0..l.group.channels)
        .map(|c| neuron_entropy(states, &l.rects, c))
        .sum::<f64>()
        / n as f64
}

/// Per neuron L1 norm and the layer's non-zero count, over its source weights.
fn layer_norms(ed: &Editor, l: &Layer) -> Result<(Vec<f64>, usize, usize), PassError> {
    let mut l1 = vec![0.0f64; l.group.channels];
    let (mut nnz, mut total) = (0, 0);
    for (name, place) in &l.sources {
        let t = read_const(ed, name)?;
        let v = t.to_f32()?;
        super::structured::for_each_channel_elem(&t.dims, place, |c, e| {
            if let (Some(a), Some(x)) = (l1.get_mut(c), v.get(e)) {
                *a += x.abs() as f64;
            }
        });
        nnz += v.iter().filter(|x| **x != 0.0).count();
        total += v.len();
    }
    Ok((l1, nnz, total))
}

/// A constant of the main graph, which pruning found there.
fn read_const(ed: &Editor, name: &str) -> Result<Tensor, PassError> {
    ed.constant(name)?.ok_or_else(|| PassError::Invalid {
        pass: "entropy",
        reason: format!("{name} is not a constant"),
    })
}

/// Per-channel (minimum, mean) of `tensor` (channels on `axis`) over the first `samples`
/// calibration samples, accumulated batch by batch.
fn probe_stats(
    ed: &Editor,
    rt: &Runtime,
    calib: &Calibration,
    tensor: &str,
    axis: usize,
    samples: usize,
) -> Result<Vec<(f64, f64)>, PassError> {
    let (mut sum, mut min, mut count): (Vec<f64>, Vec<f64>, usize) = (Vec::new(), Vec::new(), 0);
    let source = Source::Calibration {
        data: calib,
        limit: Some(samples),
    };
    capture(rt, ed.model(), &[tensor.to_string()], source, &mut |b| {
        let Some(Some(t)) = b.tensors.into_iter().next() else {
            return Err(crate::calib::CalibError::Inputs(format!(
                "cannot observe {tensor}"
            )));
        };
        let v = t.to_f32()?;
        let ch = t.dims.get(axis).copied().unwrap_or(1).max(1);
        if sum.is_empty() {
            (sum, min) = (vec![0.0; ch], vec![f64::INFINITY; ch]);
        }
        let inner: usize = t.dims.get(axis + 1..).map_or(1, |d| d.iter().product());
        for (i, x) in v.iter().enumerate() {
            let c = (i / inner.max(1)) % ch;
            if let (Some(s), Some(m)) = (sum.get_mut(c), min.get_mut(c)) {
                *s += f64::from(*x);
                *m = m.min(f64::from(*x));
            }
        }
        count += v.len() / ch;
        Ok(())
    })?;
    let per = count.max(1) as f64;
    Ok(min
        .into_iter()
        .zip(sum)
        .map(|(m, s)| (m, s / per))
        .collect())
}

fn probe_means(
    ed: &Editor,
    rt: &Runtime,
    calib: &Calibration,
    tensor: &str,
    axis: usize,
    samples: usize,
) -> Result<Vec<f64>, PassError> {
    Ok(probe_stats(ed, rt, calib, tensor, axis, samples)?
        .into_iter()
        .map(|x| x.1)
        .collect())
}

/// The last additive per-channel parameter before the layer's rectifier (BatchNormalization
/// bias, else the layer's own bias): moving it shifts the pre-activation channel by channel.
fn shift_param(ed: &Editor, l: &Layer, st: &NeuronStates) -> Option<CoupledParam> {
    let bn_beta = l.group.params.iter().find(|p| {
        p.role == ParamRole::PerChannel
            && matches!(ed.analysis().valid_op(p.node), Some(Op::BatchNorm { .. }))
            && ed.node(p.node).is_some_and(|n| {
                n.input.get(2) == Some(&p.name) && n.output.first() == Some(&st.tensor)
            })
    });
    bn_beta
        .or_else(|| {
            l.group
                .params
                .iter()
                .find(|p| p.role == ParamRole::SourceBias)
        })
        .cloned()
}

/// The layer's single rectifier and its output tensor, where it has exactly one of each and
/// one source op.
fn single_rectifier<'s>(
    ed: &Editor,
    l: &Layer,
    states: &'s [NeuronStates],
) -> Option<(&'s NeuronStates, String)> {
    let (Some(&r), 1, 1) = (l.rects.first(), l.rects.len(), l.group.sources.len()) else {
        return None;
    };
    let st = states.get(r)?;
    let out = ed.node(st.node)?.output.first()?.clone();
    Some((st, out))
}

/// Makes the neurons of a layer selected by `mask` output their mean on the calibration data,
/// a constant: their source weights become zero (the simplify stage then removes the channels
/// and folds the constants into the consumers' biases) and the layer's shift parameter (see
/// [`shift_param`]) is set so the pre-activation is that mean. Each is then always ON
/// (mean > 0) or always OFF: zero entropy. Returns false where the layer has no such parameter
/// or the check fails (the caller discards the candidate model).
fn silence_to_mean(
    ed: &mut Editor,
    l: &Layer,
    states: &[NeuronStates],
    rt: &Runtime,
    calib: &Calibration,
    mask: &[bool],
) -> Result<bool, PassError> {
    let Some((st, rect_out)) = single_rectifier(ed, l, states) else {
        return Ok(false);
    };
    let Some(shift) = shift_param(ed, l, st) else {
        return Ok(false);
    };
    if !mask.iter().any(|&m| m) {
        return Ok(true);
    }
    let means = probe_means(ed, rt, calib, &rect_out, st.axis, calib.samples)?;
    if means.len() != l.group.channels || mask.len() != l.group.channels {
        return Ok(false);
    }
    let on = |c: usize| mask.get(c).copied().unwrap_or(false);
    for (name, place) in &l.sources {
        let t = read_const(ed, name)?;
        let mut v = t.to_f32()?;
        super::structured::for_each_channel_elem(&t.dims, place, |c, e| {
            if let (true, Some(x)) = (on(c), v.get_mut(e)) {
                *x = 0.0;
            }
        });
        ed.write_constant(name, &Tensor::from_f32(t.dims.clone(), &v)?)?;
    }
    // The pre-activation is now a constant per silenced channel: measure it, then move it to
    // the mean.
    let now = probe_means(ed, rt, calib, &st.tensor, st.axis, 1)?;
    let Some(t) = ed.constant(&shift.name)? else {
        return Ok(false);
    };
    let mut v = t.to_f32()?;
    super::structured::for_each_channel_elem(&t.dims, &shift.place, |c, e| {
        if let (true, Some(x), Some(m), Some(k)) = (on(c), v.get_mut(e), means.get(c), now.get(c)) {
            *x += (*m - *k) as f32;
        }
    });
    ed.write_constant(&shift.name, &Tensor::from_f32(t.dims.clone(), &v)?)?;
    let check = probe_means(ed, rt, calib, &st.tensor, st.axis, 1)?;
    Ok(check
        .iter()
        .zip(&means)
        .enumerate()
        .all(|(c, (a, b))| !on(c) || (a - b).abs() <= 1e-3 * b.abs().max(1.0)))
}

/// How a consumer of a rectifier's output absorbs a constant per-channel offset `δ` added to
/// its input, exactly: by subtracting its linear image from the consumer's bias.
enum Absorb {
    /// Gemm(A = the activation, B constant, C constant of N elements): C[o] -= α/β Σ_c B[c,o] δ_c.
    Gemm {
        b: String,
        c: String,
        trans_b: bool,
        scale: f32,
    },
    /// Conv without padding and with one group: bias[o] -= Σ_c δ_c Σ_s W[o,c,s]. With padding
    /// the offset is missing at the borders, so that case is refused.
    Conv { w: String, bias: String },
}

fn absorbers(ed: &Editor, tensor: &str) -> Option<Vec<Absorb>> {
    let a = ed.analysis();
    if a.is_graph_output(tensor) {
        return None;
    }
    let mut out = Vec::new();
    for (ni, k) in a.consumers(tensor) {
        let n = ed.node(ni)?;
        if k != 0 {
            return None;
        }
        let constant = |i: usize| n.input.get(i).filter(|x| a.is_const(x)).cloned();
        match a.valid_op(ni)? {
            Op::Gemm {
                trans_a: false,
                trans_b,
                alpha,
                beta,
            } => {
                if *beta == 0.0 {
                    return None;
                }
                out.push(Absorb::Gemm {
                    b: constant(1)?,
                    c: constant(2)?,
                    trans_b: *trans_b,
                    scale: alpha / beta,
                });
            }
            Op::Conv(w) if w.group == 1 && w.unpadded() => out.push(Absorb::Conv {
                w: constant(1)?,
                bias: constant(2)?,
            }),
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Subtracts the consumers' image of `delta` (one offset per input channel) from their biases.
fn absorb(ed: &mut Editor, plan: &[Absorb], delta: &[f64]) -> Result<bool, PassError> {
    let k = delta.len();
    for a in plan {
        match a {
            Absorb::Gemm {
                b,
                c,
                trans_b,
                scale,
            } => {
                let bt = read_const(ed, b)?;
                let bv = bt.to_f32()?;
                let ct = read_const(ed, c)?;
                let mut cv = ct.to_f32()?;
                let (rows, cols) = match bt.dims.as_slice() {
                    [r, c] => (*r, *c),
                    _ => return Ok(false),
                };
                let (kk, n) = if *trans_b { (cols, rows) } else { (rows, cols) };
                if kk != k || cv.len() != n {
                    return Ok(false);
                }
                for (o, y) in cv.iter_mut().enumerate() {
                    let mut s = 0.0f64;
                    for (ch, d) in delta.iter().enumerate() {
                        let w = if *trans_b {
                            bv[o * k + ch]
                        } else {
                            bv[ch * n + o]
                        };
                        s += w as f64 * d;
                    }
                    *y -= (*scale as f64 * s) as f32;
                }
                ed.write_constant(c, &Tensor::from_f32(ct.dims.clone(), &cv)?)?;
            }
            Absorb::Conv { w, bias } => {
                let wt = read_const(ed, w)?;
                let wv = wt.to_f32()?;
                let bt = read_const(ed, bias)?;
                let mut bv = bt.to_f32()?;
                let (Some(&o_n), Some(&c_n)) = (wt.dims.first(), wt.dims.get(1)) else {
                    return Ok(false);
                };
                if c_n != k || bv.len() != o_n || o_n * c_n == 0 {
                    return Ok(false);
                }
                let sp = wv.len() / (o_n * c_n);
                for (o, y) in bv.iter_mut().enumerate() {
                    let mut s = 0.0f64;
                    for (ch, d) in delta.iter().enumerate() {
                        let base = (o * c_n + ch) * sp;
                        let sum: f64 = wv[base..base + sp].iter().map(|x| *x as f64).sum();
                        s += sum * d;
                    }
                    *y -= s as f32;
                }
                ed.write_constant(bias, &Tensor::from_f32(bt.dims.clone(), &bv)?)?;
            }
        }
    }
    Ok(true)
}

/// Settles every neuron of a layer in its majority state on the calibration data, the endgame
/// NEPENTHE reaches by fine-tuning, done here without training: a neuron ON on less than half
/// the observations is silenced to its mean (as [`silence_to_mean`]); one ON on at least half
/// keeps its weights and is made ON everywhere on the data by raising its bias past the lowest
/// pre-activation seen, the consumers' biases absorbing that offset exactly. Its rectifier is
/// then the identity on the data, so the layer has zero entropy and the simplify stage can drop
/// the rectifier and merge the layer into its consumer. The function changes only where a
/// neuron used to be OFF, so this costs far less accuracy than silencing the layer.
/// Returns the number of neurons made linear, or None where the layer cannot be settled.
fn settle_layer(
    ed: &mut Editor,
    l: &Layer,
    states: &[NeuronStates],
    rt: &Runtime,
    calib: &Calibration,
) -> Result<Option<usize>, PassError> {
    let Some((st, rect_out)) = single_rectifier(ed, l, states) else {
        return Ok(None);
    };
    // A saturating rectifier (Relu6) is not the identity above its ceiling.
    if st.lo != 0.0 || st.hi.is_finite() {
        return Ok(None);
    }
    let Some(plan) = absorbers(ed, &rect_out) else {
        return Ok(None);
    };
    let Some(shift) = shift_param(ed, l, st) else {
        return Ok(None);
    };
    if !ed.analysis().is_const(&shift.name) {
        return Ok(None);
    }
    let n = l.group.channels;
    let on: Vec<bool> = (0..n).map(|c| st.on_fraction(c) >= 0.5).collect();
    let off: Vec<bool> = on.iter().map(|x| !x).collect();
    if !silence_to_mean(ed, l, states, rt, calib, &off)? {
        return Ok(None);
    }
    let pre = probe_stats(ed, rt, calib, &st.tensor, st.axis, calib.samples)?;
    if pre.len() != n {
        return Ok(None);
    }
    // 10% past the lowest value seen, so inputs like the calibration data stay ON too.
    let delta: Vec<f64> = (0..n)
        .map(|c| match (on[c], pre[c].0) {
            (true, m) if m <= 0.0 => 1.1 * -m + 1e-3,
            _ => 0.0,
        })
        .collect();
    if delta.iter().any(|d| *d > 0.0) {
        if !absorb(ed, &plan, &delta)? {
            return Ok(None);
        }
        let t = read_const(ed, &shift.name)?;
        let mut v = t.to_f32()?;
        super::structured::for_each_channel_elem(&t.dims, &shift.place, |c, e| {
            if let (Some(x), Some(d)) = (v.get_mut(e), delta.get(c)) {
                *x += *d as f32;
            }
        });
        ed.write_constant(&shift.name, &Tensor::from_f32(t.dims.clone(), &v)?)?;
    }
    Ok(Some(on.iter().filter(|x| **x).count()))
}

impl EntropyPrune {
    fn layers(
        &self,
        ed: &Editor,
        states: &[NeuronStates],
    ) -> Result<(Vec<Layer>, Vec<Skipped>), PassError> {
        let groups = channel_groups(ed);
        let mut layers = Vec::new();
        let mut skipped = Vec::new();
        for gr in groups {
            let rects: Vec<usize> = states
                .iter()
                .enumerate()
                .filter(|(_, s)| gr.path.contains(&s.node) && s.channels() == gr.channels)
                .map(|(i, _)| i)
                .collect();
            let names: Vec<&str> = gr
                .params
                .iter()
                .filter(|p| p.role == ParamRole::SourceWeight)
                .map(|p| p.name.as_str())
                .collect();
            let selected = gr.sources.iter().all(|&s| {
                let mut all = names.clone();
                let n = ed.node(s);
                all.push(n.map_or("", |n| n.name.as_str()));
                self.filter
                    .allows(&all, n.map_or("", |n| n.op_type.as_str()))
            });
            if !selected {
                continue;
            }
            if rects.is_empty() {
                skipped.push(Skipped {
                    name: gr.name.clone(),
                    reason: "no rectifier (Relu, Clip from 0) after it: its entropy is undefined"
                        .into(),
                });
                continue;
            }
            let mut sources = Vec::new();
            for p in gr
                .params
                .iter()
                .filter(|p| p.role == ParamRole::SourceWeight)
            {
                if ed
                    .constant(&p.name)?
                    .is_some_and(|t| t.dtype == crate::tensor::DType::F32)
                {
                    sources.push((p.name.clone(), p.place));
                }
            }
            if sources.is_empty() {
                continue;
            }
            layers.push(Layer {
                group: gr,
                rects,
                sources,
            });
        }
        Ok((layers, skipped))
    }

    pub fn prune(
        &self,
        ed: &mut Editor,
        ctx: &PassContext<'_>,
    ) -> Result<(PruneOutcome, Vec<LayerEntropy>), PassError> {
        check_fraction("entropy", "sparsity", self.sparsity)?;
        check_fraction("entropy", "collapse", self.collapse)?;
        let (Some(calib), Some(rt)) = (ctx.calib, ctx.runtime) else {
            return Err(PassError::NeedsCalibration { pass: "entropy" });
        };
        let weights = prunable_weights(ed.model());
        let before = census(ed.model(), &weights)?;
        // The unpruned model's outputs: the reference of the layer-removal tolerance.
        let reference = match self.layer_drop {
            Some(_) => Some(metric_of(rt, calib, ed.model(), None)?),
            None => None,
        };
        let states0 = rectifier_states(rt, ed, calib)?;
        let (layers, skipped) = self.layers(ed, &states0)?;
        let h0: Vec<f64> = layers.iter().map(|l| mean_entropy(&states0, l)).collect();
        self.prune_by_relevance(ed, rt, calib, &layers, states0)?;
        let mut account = vec![LayerAccount::default(); layers.len()];
        if self.collapse > 0.0 {
            self.zero_dead_neurons(ed, rt, calib, &layers, &mut account)?;
        }
        if let (Some(tol), Some((ref_out, base))) = (self.layer_drop, reference.as_ref()) {
            let budget = Tolerance {
                reference: ref_out,
                base: *base,
                tol,
            };
            remove_layers(ed, rt, calib, &layers, &h0, &budget, &mut account)?;
        }
        let st = rectifier_states(rt, ed, calib)?;
        let after = census(ed.model(), &weights)?;
        let mut out = PruneOutcome::from_census("entropy", &weights, &before, &after);
        let report = entropy_report(ed, &layers, &st, &h0, &account)?;
        annotate_layers(&mut out, &layers, &report);
        out.skipped = skipped;
        out.entropy = report.clone();
        Ok((out, report))
    }

    /// The NEPENTHE rounds: each prunes its share of what is left of the budget by magnitude,
    /// split over the layers by relevance, then measures the neuron states again.
    fn prune_by_relevance(
        &self,
        ed: &mut Editor,
        rt: &Runtime,
        calib: &Calibration,
        layers: &[Layer],
        mut states: Vec<NeuronStates>,
    ) -> Result<(), PassError> {
        let total: usize = layers
            .iter()
            .map(|l| layer_norms(ed, l).map(|x| x.2))
            .sum::<Result<usize, _>>()?;
        let target = (self.sparsity * total as f64).round() as usize;
        let rounds = self.rounds.max(1);
        for round in 0..rounds {
            if round > 0 {
                states = rectifier_states(rt, ed, calib)?;
            }
            let norms: Vec<(Vec<f64>, usize, usize)> = layers
                .iter()
                .map(|l| layer_norms(ed, l))
                .collect::<Result<_, _>>()?;
            let zeros: usize = norms.iter().map(|n| n.2 - n.1).sum();
            if zeros >= target {
                break;
            }
            let this_round = (target - zeros).div_ceil(rounds - round);
            let weight = round_weights(layers, &norms, &states);
            let wsum: f64 = weight.iter().sum();
            if wsum <= 0.0 {
                break; // every layer is at zero entropy already
            }
            for (li, l) in layers.iter().enumerate() {
                let (_, nnz, tot) = norms[li];
                let share = ((this_round as f64) * weight[li] / wsum).round() as usize;
                // Keep at least one weight per layer.
                let share = share.min(nnz.saturating_sub(1));
                zero_smallest_of_layer(ed, l, (tot - nnz) + share)?;
            }
        }
        Ok(())
    }

    /// Zeroes, as whole channels, the neurons the data says are dead (ON on at most `collapse`
    /// of the observations), never a whole layer: that collapse is the simplify stage's.
    fn zero_dead_neurons(
        &self,
        ed: &mut Editor,
        rt: &Runtime,
        calib: &Calibration,
        layers: &[Layer],
        account: &mut [LayerAccount],
    ) -> Result<(), PassError> {
        let st = rectifier_states(rt, ed, calib)?;
        for (l, acc) in layers.iter().zip(account.iter_mut()) {
            if !l.group.prunable() {
                continue;
            }
            let dead: Vec<usize> = (0..l.group.channels)
                .filter(|&c| {
                    on_fraction(&st, &l.rects, c) <= self.collapse
                        && neuron_entropy(&st, &l.rects, c) > 0.0
                })
                .collect();
            if dead.len() < l.group.channels {
                zero_channels(ed, &l.group, &dead)?;
                acc.collapsed = dead.len();
            }
        }
        Ok(())
    }
}

/// What the last two steps did to a layer.
#[derive(Debug, Clone, Copy, Default)]
struct LayerAccount {
    /// Neurons made constant (dead ones zeroed, or settled/silenced).
    collapsed: usize,
    /// Neurons settled ON everywhere on the data.
    linearized: usize,
    /// Settled or silenced as a whole.
    removed: bool,
}

/// The metric budget of whole-layer removal: the unpruned model's output and metric.
struct Tolerance<'a> {
    reference: &'a Tensor,
    base: f64,
    tol: f64,
}

impl Tolerance<'_> {
    fn holds(&self, rt: &Runtime, calib: &Calibration, ed: &Editor) -> Result<bool, PassError> {
        let (_, v) = metric_of(rt, calib, ed.model(), Some(self.reference))?;
        Ok(self.base - v <= self.tol)
    }
}

/// The model's main output on the calibration data and its metric against `reference` (itself
/// when `None`).
fn metric_of(
    rt: &Runtime,
    calib: &Calibration,
    m: &crate::onnx::Model,
    reference: Option<&Tensor>,
) -> Result<(Tensor, f64), PassError> {
    let out = crate::calib::into_metric_output(run_model(rt, m, calib)?).ok_or_else(|| {
        PassError::Invalid {
            pass: "entropy",
            reason: "the model has no output".into(),
        }
    })?;
    let r = reference.unwrap_or(&out);
    let v = evaluate(Metric::for_data(calib, r), calib, r, &out)?;
    Ok((out, v))
}

/// Each layer's share of a round: relevance R_l (from irrelevance I_l) times its non-zero weights.
fn round_weights(
    layers: &[Layer],
    norms: &[(Vec<f64>, usize, usize)],
    states: &[NeuronStates],
) -> Vec<f64> {
    let irr: Vec<f64> = layers
        .iter()
        .zip(norms)
        .map(|(l, (l1, nnz, _))| {
            let n = l.group.channels.max(1) as f64;
            let s: f64 = (0..l.group.channels)
                .map(|c| neuron_entropy(states, &l.rects, c) * l1[c])
                .sum();
            if *nnz == 0 {
                0.0
            } else {
                s / n / *nnz as f64
            }
        })
        .collect();
    let sum_i: f64 = irr.iter().sum();
    irr.iter()
        .zip(norms)
        .map(|(&i, n)| {
            let r = if i > 0.0 { sum_i / i } else { 0.0 };
            r * n.1 as f64
        })
        .collect()
}

/// Zeroes the `k` smallest-magnitude weights over a layer's source weights together.
fn zero_smallest_of_layer(ed: &mut Editor, l: &Layer, k: usize) -> Result<(), PassError> {
    let mut vals: Vec<(usize, Vec<f32>, Vec<usize>)> = Vec::new();
    for (si, (name, _)) in l.sources.iter().enumerate() {
        let t = read_const(ed, name)?;
        let dims = t.dims.clone();
        vals.push((si, t.to_f32()?, dims));
    }
    let mut refs: Vec<&mut Vec<f32>> = vals.iter_mut().map(|v| &mut v.1).collect();
    super::zero_smallest(&mut refs, k);
    for (si, v, dims) in &vals {
        ed.write_constant(&l.sources[*si].0, &Tensor::from_f32(dims.clone(), v)?)?;
    }
    Ok(())
}

/// Brings whole layers to zero entropy, the lowest-entropy first, while the metric stays within
/// the tolerance: settled where it can be (it keeps the majority-ON neurons' information), else
/// silenced; a layer that costs too much either way is left as it was.
fn remove_layers(
    ed: &mut Editor,
    rt: &Runtime,
    calib: &Calibration,
    layers: &[Layer],
    h0: &[f64],
    budget: &Tolerance,
    account: &mut [LayerAccount],
) -> Result<(), PassError> {
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by(|&a, &b| h0[a].total_cmp(&h0[b]));
    for li in order {
        let (l, acc) = (&layers[li], &mut account[li]);
        if !l.group.prunable() {
            continue;
        }
        let now = rectifier_states(rt, ed, calib)?;
        let snap = ed.snapshot();
        if let Some(n_on) = settle_layer(ed, l, &now, rt, calib)? {
            if budget.holds(rt, calib, ed)? {
                *acc = LayerAccount {
                    collapsed: l.group.channels - n_on,
                    linearized: n_on,
                    removed: true,
                };
                continue;
            }
        }
        ed.restore(snap);
        let snap = ed.snapshot();
        let all = vec![true; l.group.channels];
        if silence_to_mean(ed, l, &now, rt, calib, &all)? && budget.holds(rt, calib, ed)? {
            acc.collapsed = l.group.channels;
            acc.removed = true;
            continue;
        }
        ed.restore(snap);
    }
    Ok(())
}

/// Every layer's entropy before and after, with what the steps did to it.
fn entropy_report(
    ed: &Editor,
    layers: &[Layer],
    st: &[NeuronStates],
    h0: &[f64],
    account: &[LayerAccount],
) -> Result<Vec<LayerEntropy>, PassError> {
    let mut report = Vec::new();
    for ((l, h_before), acc) in layers.iter().zip(h0).zip(account) {
        let zero_n = (0..l.group.channels)
            .filter(|&c| neuron_entropy(st, &l.rects, c) == 0.0)
            .count();
        let (_, nnz, tot) = layer_norms(ed, l)?;
        report.push(LayerEntropy {
            layer: l.group.name.clone(),
            rectifiers: l
                .rects
                .iter()
                .filter_map(|&r| st.get(r).map(|s| s.name.clone()))
                .collect(),
            neurons: l.group.channels,
            entropy_before: *h_before,
            entropy_after: mean_entropy(st, l),
            zero_entropy_neurons: zero_n,
            zero_entropy: zero_n == l.group.channels,
            sparsity_after: ratio(tot - nnz, tot),
            collapsed: acc.collapsed,
            linearized: acc.linearized,
            removed: acc.removed,
        });
    }
    Ok(report)
}

/// Copies each layer's entropy account onto the per-weight rows of its source weights.
fn annotate_layers(out: &mut PruneOutcome, layers: &[Layer], report: &[LayerEntropy]) {
    for (l, e) in layers.iter().zip(report) {
        let names: Vec<&str> = l
            .group
            .params
            .iter()
            .filter(|p| p.role == ParamRole::SourceWeight)
            .map(|p| p.name.as_str())
            .collect();
        for lr in out
            .layers
            .iter_mut()
            .filter(|x| names.contains(&x.name.as_str()))
        {
            lr.entropy_before = Some(e.entropy_before);
            lr.entropy_after = Some(e.entropy_after);
            lr.channels = Some(l.group.channels);
            lr.channels_removed = Some(e.collapsed);
        }
    }
}

impl Pass for EntropyPrune {
    fn name(&self) -> &'static str {
        "entropy-prune"
    }
    fn preserves(&self) -> Preserves {
        Preserves::Interface
    }
    fn run(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        Ok(self.prune(ed, ctx)?.0.into_report(self.name()))
    }
}
