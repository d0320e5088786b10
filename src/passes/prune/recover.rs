//! Layer-wise reconstruction after pruning, without retraining (ThiNet, He et al. 2017; the
//! least-squares form of OBS/ZipLM): every linear layer whose input the pruning changed is
//! re-fitted, in graph order, so that on the calibration data its output from the *pruned*
//! model's input matches the *original* model's output of that layer:
//! `W' = argmin ‖X'W'ᵀ + b' − (X W ᵀ + b)‖² + λ‖W' − W‖²` over the surviving input features
//! (im2col patches for convolutions, spatially subsampled), with an intercept column for the
//! bias (which subsumes FLAP's bias compensation `b += W_S·E[x_S]`). Depthwise convolutions are
//! re-fitted channel by channel from their own patches.
//!
//! Sequential: a layer is fitted on inputs produced by the layers already re-fitted, so errors
//! do not accumulate unchecked. Layers that do not depend on each other form one *wave*, fitted
//! from one lockstep run of the original and the current model (`calib::capture::capture_many`):
//! the normal equations are accumulated batch by batch in float64, never the activations.

use std::collections::{HashMap, HashSet};

use faer::Mat;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::layers::{
    dense_layers, gather_rows, positions, read_matrix, write_matrix, Bias, DenseLayer, RowAt,
};
use super::lsq::{ridge, Normal};
use crate::calib::capture::{capture_many, Batch, Source};
use crate::calib::{CalibError, Calibration};
use crate::graph::editor::{Editor, NodeId};
use crate::graph::index::GraphIndex;
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassDetails, PassError, PassReport, Preserves};
use crate::runtime::Runtime;

/// How reconstruction samples and regularises.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RecoverOptions {
    /// Ridge strength relative to the mean diagonal of `XᵀX`, towards the current weights.
    pub damp: f64,
    /// Rows (positions) per layer to fit on, spread over the samples; bounds `XᵀX`'s cost.
    pub rows: usize,
    /// Calibration samples used (all when `None`).
    pub samples: Option<usize>,
    pub seed: u64,
}

impl Default for RecoverOptions {
    fn default() -> Self {
        RecoverOptions {
            damp: 1e-3,
            rows: 8192,
            samples: None,
            seed: 0x5eed,
        }
    }
}

/// One re-fitted layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerFit {
    pub layer: String,
    pub op: String,
    /// Input features (im2col) the layer has, and the ones left after pruning.
    pub features: usize,
    pub kept: usize,
    /// Rows the fit saw.
    pub rows: usize,
    /// ‖Y' − Y‖² / ‖Y‖² of the layer's output against the original's, on the fitted rows,
    /// before and after the re-fit.
    pub error_before: f64,
    pub error_after: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoverReport {
    pub layers: Vec<LayerFit>,
    pub waves: usize,
    pub samples: usize,
    pub seconds: f64,
}

/// A layer being fitted: what survives, the original map to match, the statistics so far.
struct Fit {
    layer: DenseLayer,
    /// Output rows still alive and input channels still read.
    rows: Vec<usize>,
    chans: Vec<usize>,
    intercept: bool,
    /// Original `W [rows, features]` and bias, and the current ones.
    w_orig: Mat<f64>,
    b_orig: Vec<f64>,
    w_cur: Mat<f64>,
    b_cur: Vec<f64>,
    /// One system for a dense layer, one per alive row for a depthwise convolution.
    normals: Vec<Normal>,
    seen: usize,
}

fn nonzero_col(w: &Mat<f64>, cols: std::ops::Range<usize>) -> bool {
    cols.into_iter()
        .any(|j| j < w.ncols() && (0..w.nrows()).any(|r| w[(r, j)] != 0.0))
}

impl Fit {
    fn new(ed: &Editor, orig: &Editor, layer: DenseLayer) -> Result<Option<Fit>, PassError> {
        let (w_cur, b_cur) = read_matrix(ed, &layer)?;
        let (w_orig, b_orig) = read_matrix(orig, &layer)?;
        if w_orig.nrows() != w_cur.nrows() || w_orig.ncols() != w_cur.ncols() {
            return Ok(None);
        }
        let rows: Vec<usize> = (0..layer.rows)
            .filter(|&r| (0..w_cur.ncols()).any(|j| w_cur[(r, j)] != 0.0))
            .collect();
        let kk = layer.kk;
        let chans: Vec<usize> = if layer.depthwise() {
            Vec::new()
        } else {
            (0..layer.channels)
                .filter(|&c| nonzero_col(&w_cur, c * kk..(c + 1) * kk))
                .collect()
        };
        if rows.is_empty() || (!layer.depthwise() && chans.is_empty()) {
            return Ok(None);
        }
        let intercept = layer.bias != Bias::None;
        let normals = if layer.depthwise() {
            rows.iter()
                .map(|_| Normal::new(kk + usize::from(intercept), 1))
                .collect()
        } else {
            vec![Normal::new(
                chans.len() * kk + usize::from(intercept),
                rows.len(),
            )]
        };
        Ok(Some(Fit {
            layer,
            rows,
            chans,
            intercept,
            w_orig,
            b_orig,
            w_cur,
            b_cur,
            normals,
            seen: 0,
        }))
    }

    /// Input channel of depthwise row `r`.
    fn dw_channel(&self, r: usize) -> usize {
        let mult = (self.layer.rows / self.layer.channels.max(1)).max(1);
        r / mult
    }

    /// Adds one batch: `xo` the original model's input of the layer, `xp` the current one's.
    fn add(
        &mut self,
        xo: &crate::tensor::Tensor,
        xp: &crate::tensor::Tensor,
        picks: &[RowAt],
    ) -> Result<(), PassError> {
        if xo.dims != xp.dims || picks.is_empty() {
            return Ok(());
        }
        let (vo, vp) = (xo.to_f32()?, xp.to_f32()?);
        let l = &self.layer;
        if l.depthwise() {
            for (k, &r) in self.rows.iter().enumerate() {
                let c = [self.dw_channel(r)];
                let xo_r = gather_rows(l, &xo.dims, &vo, picks, &c, false);
                let xp_r = gather_rows(l, &xp.dims, &vp, picks, &c, self.intercept);
                let w = self.w_orig.row(r).transpose().to_owned();
                let mut y = &xo_r * Mat::from_fn(w.nrows(), 1, |i, _| w[i]);
                for i in 0..y.nrows() {
                    y[(i, 0)] += self.b_orig.get(r).copied().unwrap_or(0.0);
                }
                if let Some(n) = self.normals.get_mut(k) {
                    n.add(&xp_r, &y);
                }
            }
        } else {
            let all: Vec<usize> = (0..l.channels).collect();
            let xo_r = gather_rows(l, &xo.dims, &vo, picks, &all, false);
            let xp_r = gather_rows(l, &xp.dims, &vp, picks, &self.chans, self.intercept);
            let w = Mat::from_fn(self.w_orig.ncols(), self.rows.len(), |j, i| {
                self.w_orig[(self.rows[i], j)]
            });
            let mut y = &xo_r * &w;
            for (i, &r) in self.rows.iter().enumerate() {
                let b = self.b_orig.get(r).copied().unwrap_or(0.0);
                for p in 0..y.nrows() {
                    y[(p, i)] += b;
                }
            }
            if let Some(n) = self.normals.first_mut() {
                n.add(&xp_r, &y);
            }
        }
        self.seen += picks.len();
        Ok(())
    }

    /// The current weights of system `k` as `[features (+1), outputs]`.
    fn current(&self, k: usize) -> Mat<f64> {
        let kk = self.layer.kk;
        let bias = |r: usize| self.b_cur.get(r).copied().unwrap_or(0.0);
        if self.layer.depthwise() {
            let r = self.rows.get(k).copied().unwrap_or(0);
            Mat::from_fn(kk + usize::from(self.intercept), 1, |j, _| {
                if j < kk {
                    self.w_cur[(r, j)]
                } else {
                    bias(r)
                }
            })
        } else {
            let f = self.chans.len() * kk;
            Mat::from_fn(f + usize::from(self.intercept), self.rows.len(), |j, i| {
                let r = self.rows[i];
                if j < f {
                    self.w_cur[(r, self.chans[j / kk] * kk + j % kk)]
                } else {
                    bias(r)
                }
            })
        }
    }

    /// Solves, writes the new weights into `w_cur`/`b_cur`; returns (error before, after).
    fn solve(&mut self, damp: f64) -> (f64, f64) {
        let kk = self.layer.kk;
        let (mut before, mut after, mut energy) = (0.0, 0.0, 0.0);
        for k in 0..self.normals.len() {
            let b0 = self.current(k);
            let n = &self.normals[k];
            let e0 = n.residual(&b0);
            let Some(b) = ridge(n, &b0, damp) else {
                before += e0;
                after += e0;
                energy += n.energy();
                continue;
            };
            let e1 = n.residual(&b);
            energy += n.energy();
            before += e0;
            // A fit that is worse on its own rows (ill-conditioned) is not taken.
            if e1 > e0 {
                after += e0;
                continue;
            }
            after += e1;
            if self.layer.depthwise() {
                let r = self.rows[k];
                for j in 0..kk {
                    self.w_cur[(r, j)] = b[(j, 0)];
                }
                if self.intercept {
                    self.b_cur[r] = b[(kk, 0)];
                }
            } else {
                let f = self.chans.len() * kk;
                for (i, &r) in self.rows.iter().enumerate() {
                    for j in 0..f {
                        self.w_cur[(r, self.chans[j / kk] * kk + j % kk)] = b[(j, i)];
                    }
                    if self.intercept {
                        self.b_cur[r] = b[(f, i)];
                    }
                }
            }
        }
        let e = energy.max(f64::MIN_POSITIVE);
        (before / e, after / e)
    }
}

/// Nodes whose constant inputs differ from the original's (what the pruning touched).
fn changed_nodes(ed: &Editor, original: &Model) -> Result<Vec<NodeId>, PassError> {
    let ix = GraphIndex::new(original);
    let a = ed.analysis();
    let mut out = Vec::new();
    for &id in a.order() {
        let Some(n) = ed.node(id) else { continue };
        for x in n.input.iter().filter(|x| a.is_const(x)) {
            let (now, then) = (ed.constant(x)?, ix.constant(original, x)?);
            let differs = match (now, then) {
                (Some(p), Some(q)) => p.bytes() != q.bytes() || p.dims != q.dims,
                _ => true,
            };
            if differs {
                out.push(id);
                break;
            }
        }
    }
    Ok(out)
}

/// Tensors downstream of the outputs of `from` (their outputs included).
pub(super) fn downstream(ed: &Editor, from: &[NodeId]) -> HashSet<String> {
    let a = ed.analysis();
    let mut seen = HashSet::new();
    let mut work: Vec<String> = from
        .iter()
        .filter_map(|&id| ed.node(id))
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    while let Some(t) = work.pop() {
        if t.is_empty() || !seen.insert(t.clone()) {
            continue;
        }
        for (c, _) in a.consumers(&t) {
            if let Some(n) = ed.node(c) {
                work.extend(n.output.iter().cloned());
            }
        }
    }
    seen
}

/// Which positions of a batch to fit on: up to `per_sample` per sample, seeded; positions a
/// row mask excludes (padding tokens) are never taken.
pub(super) fn pick_rows(
    samples: usize,
    per_pos: usize,
    per_sample: usize,
    mask: Option<&[bool]>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<RowAt> {
    let mut out = Vec::new();
    for s in 0..samples {
        let mut ps: Vec<usize> = (0..per_pos)
            .filter(|p| mask.is_none_or(|m| m.get(s * per_pos + p).copied().unwrap_or(true)))
            .collect();
        if ps.len() > per_sample {
            ps.shuffle(rng);
            ps.truncate(per_sample);
            ps.sort_unstable();
        }
        out.extend(ps.into_iter().map(|pos| RowAt { sample: s, pos }));
    }
    out
}

/// A padding mask for token inputs: the values of an integer model input named like an
/// attention mask, per (sample, position), when the layer's rows are exactly those.
pub(super) fn row_mask(
    calib: &Calibration,
    start: usize,
    end: usize,
    samples: usize,
    per_pos: usize,
) -> Option<Vec<bool>> {
    let inputs = calib.slice(start, end).ok()?;
    let (_, t) = inputs
        .iter()
        .find(|(n, t)| n.to_ascii_lowercase().contains("mask") && !t.dtype.is_float())?;
    let v = t.to_i64_lossy()?;
    (v.len() == samples * per_pos).then(|| v.iter().map(|&x| x != 0).collect())
}

/// Re-fits every layer downstream of what the pruning changed in `ed` (whose graph must be
/// `original`'s with other weights), sequentially, on `calib`.
pub fn reconstruct(
    ed: &mut Editor,
    original: &Model,
    rt: &Runtime,
    calib: &Calibration,
    opts: &RecoverOptions,
) -> Result<RecoverReport, PassError> {
    let t0 = std::time::Instant::now();
    let same_graph = ed.model().graph().node.len() == original.graph().node.len()
        && ed
            .model()
            .graph()
            .node
            .iter()
            .zip(&original.graph().node)
            .all(|(a, b)| a.op_type == b.op_type && a.output == b.output);
    if !same_graph {
        return Err(PassError::Invalid {
            pass: "recover",
            reason: "the pruned model's graph differs from the original's".into(),
        });
    }
    let orig = Editor::new(original.clone(), ed.inputs().clone());
    let changed = changed_nodes(ed, original)?;
    let reach = downstream(ed, &changed);
    let changed: HashSet<NodeId> = changed.into_iter().collect();
    let mut todo: Vec<DenseLayer> = dense_layers(ed)
        .into_iter()
        .filter(|l| reach.contains(&l.input) || changed.contains(&l.node))
        .collect();
    // What each layer's output reaches, to find layers that do not depend on each other.
    let after: HashMap<NodeId, HashSet<String>> = todo
        .iter()
        .map(|l| (l.node, downstream(ed, &[l.node])))
        .collect();
    let samples = opts.samples.map_or(calib.samples, |s| s.min(calib.samples));
    let mut report = RecoverReport {
        samples,
        ..Default::default()
    };
    while !todo.is_empty() {
        let wave = next_wave(&mut todo, &after);
        if wave.is_empty() {
            break; // a cycle: cannot happen in a valid graph
        }
        report.waves += 1;
        fit_wave(ed, &orig, rt, calib, samples, wave, opts, &mut report)?;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Takes out of `todo` the layers no other layer of `todo` feeds (`after`: what each layer's
/// output reaches); they can be fitted from one run.
pub(super) fn next_wave(
    todo: &mut Vec<DenseLayer>,
    after: &HashMap<NodeId, HashSet<String>>,
) -> Vec<DenseLayer> {
    let (wave, rest): (Vec<DenseLayer>, Vec<DenseLayer>) = todo.iter().cloned().partition(|l| {
        !todo
            .iter()
            .any(|m| m.node != l.node && after.get(&m.node).is_some_and(|d| d.contains(&l.input)))
    });
    *todo = rest;
    wave
}

/// `model` computing only `tensors`: its outputs replaced by them, the nodes they do not need
/// removed.
pub(super) fn prefix(model: &Model, tensors: &[String]) -> Model {
    let mut m = model.clone();
    m.graph_mut().output.clear();
    crate::graph::edit::expose_float_outputs(&mut m, tensors);
    let mut e = Editor::new(m, Default::default());
    e.sweep();
    e.into_model()
}

#[allow(clippy::too_many_arguments)]
fn fit_wave(
    ed: &mut Editor,
    orig: &Editor,
    rt: &Runtime,
    calib: &Calibration,
    samples: usize,
    wave: Vec<DenseLayer>,
    opts: &RecoverOptions,
    report: &mut RecoverReport,
) -> Result<(), PassError> {
    let mut fits = Vec::new();
    for l in wave {
        if let Some(f) = Fit::new(ed, orig, l)? {
            fits.push(f);
        }
    }
    if fits.is_empty() {
        return Ok(());
    }
    let inputs: Vec<String> = fits.iter().map(|f| f.layer.input.clone()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ report.waves as u64);
    let mut start = 0usize;
    // Rows per layer: a few per unknown (features), within the budget; H costs rows × K².
    let per_sample = |features: usize| {
        (3 * features)
            .clamp(1024, opts.rows.max(1))
            .div_ceil(samples.max(1))
            .max(1)
    };
    let mut visit = |b: Vec<Batch>| -> Result<(), CalibError> {
        let [bo, bp] = b.as_slice() else {
            return Ok(());
        };
        let mut n = 0;
        for (k, f) in fits.iter_mut().enumerate() {
            let (Some(Some(xo)), Some(Some(xp))) = (bo.tensors.get(k), bp.tensors.get(k)) else {
                continue;
            };
            let Some((ns, per_pos)) = positions(&f.layer, &xo.dims) else {
                continue;
            };
            n = ns;
            let mask = match f.layer.kind {
                super::layers::Kind::MatMul => row_mask(calib, start, start + ns, ns, per_pos),
                _ => None,
            };
            let k = f.normals.first().map_or(1, |n| n.h.nrows());
            let picks = pick_rows(ns, per_pos, per_sample(k), mask.as_deref(), &mut rng);
            f.add(xo, xp, &picks)
                .map_err(|e| CalibError::Inputs(e.to_string()))?;
        }
        start += n.max(1);
        Ok(())
    };
    let source = Source::Calibration {
        data: calib,
        limit: Some(samples),
    };
    // Only what the wave reads: early waves run a prefix of the network.
    let (po, pp) = (prefix(orig.model(), &inputs), prefix(ed.model(), &inputs));
    capture_many(rt, &[(&po, &inputs), (&pp, &inputs)], source, &mut visit)?;
    for mut f in fits {
        if f.seen == 0 {
            continue;
        }
        let (before, after) = f.solve(opts.damp);
        write_matrix(
            ed,
            &f.layer,
            &f.w_cur,
            f.intercept.then_some(f.b_cur.as_slice()),
        )?;
        report.layers.push(LayerFit {
            layer: f.layer.label.clone(),
            op: ed
                .node(f.layer.node)
                .map(|n| n.op_type.clone())
                .unwrap_or_default(),
            features: f.layer.features(),
            kept: if f.layer.depthwise() {
                f.layer.features()
            } else {
                f.chans.len() * f.layer.kk
            },
            rows: f.seen,
            error_before: before,
            error_after: after,
        });
    }
    Ok(())
}

/// A pruning pass followed by reconstruction on the calibration data (when the context has
/// calibration data and ONNX Runtime; without them, the pruning alone).
pub struct Recovered {
    pub prune: Box<dyn Pass>,
    pub opts: RecoverOptions,
}

impl Pass for Recovered {
    fn name(&self) -> &'static str {
        self.prune.name()
    }

    fn preserves(&self) -> Preserves {
        Preserves::Interface
    }

    fn run(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let original = ed.model().clone();
        let mut report = self.prune.run(ed, ctx)?;
        let (Some(calib), Some(rt)) = (ctx.calib, ctx.runtime) else {
            return Ok(report);
        };
        let PassDetails::Prune(outcome) = &mut report.details else {
            return Ok(report);
        };
        if !outcome.changed {
            return Ok(report);
        }
        let r = reconstruct(ed, &original, rt, calib, &self.opts)?;
        report.notes.push(format!(
            "reconstruction: {} layers re-fitted in {} waves on {} samples ({:.1} s)",
            r.layers.len(),
            r.waves,
            r.samples,
            r.seconds
        ));
        outcome.recover = Some(r);
        Ok(report)
    }
}
