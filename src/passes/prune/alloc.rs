//! How many channels each group loses: channel scores that can use the calibration data
//! (Wanda-style `|W|·‖X‖`, FLAP's fluctuation `‖W‖²·Var[X]`) and allocators over the groups:
//! one fraction everywhere, one global ranking of mean-normalised scores, FLAP's standardised
//! scores under one threshold, or a *measured* allocation, where each group's damage at several
//! levels is measured on the calibration data (KL divergence of the outputs, one group pruned at a
//! time) and a greedy choice under the MAC budget takes the cheapest damage per MAC saved.
//! MACs come from the graph's own count (`graph::ops`), per node, scaled by the fractions of
//! channels each node keeps on its input and output.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::layers::{dense_layer, positions, DenseLayer};
use super::structured::{channel_scores, zero_channels, Norm};
use crate::calib::capture::{capture, Source};
use crate::calib::{CalibError, Calibration};
use crate::graph::editor::{Editor, NodeId};
use crate::graph::groups::{ChannelGroup, ParamRole};
use crate::passes::PassError;
use crate::runtime::Runtime;

/// How channels are ranked within a group (lowest pruned first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Weight norms of the coupled slices (no data).
    L1,
    L2,
    /// Σ over consumer features of ‖W_{:,f}‖ · ‖x_f‖ (Wanda, Sun et al. 2023, per channel).
    Wanda,
    /// Σ over consumer features of ‖W_{:,f}‖² · Var(x_f) (FLAP, An et al. 2024): what the
    /// channel's fluctuation adds to the consumers' outputs, the part a bias cannot restore.
    Flap,
}

impl Score {
    pub fn parse(s: &str) -> Option<Score> {
        Some(match s.to_ascii_lowercase().as_str() {
            "l1" => Score::L1,
            "l2" => Score::L2,
            "wanda" => Score::Wanda,
            "flap" => Score::Flap,
            _ => return None,
        })
    }

    pub fn needs_data(self) -> bool {
        matches!(self, Score::Wanda | Score::Flap)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// The same fraction of every group.
    Uniform,
    /// One ranking over all groups of scores divided by their group's mean.
    Global,
    /// One threshold over scores standardised per group (FLAP).
    Standardized,
    /// Damage measured per group and level, greedy under the MAC budget.
    Measured,
}

impl Allocation {
    pub fn parse(s: &str) -> Option<Allocation> {
        Some(match s.to_ascii_lowercase().as_str() {
            "uniform" => Allocation::Uniform,
            "global" => Allocation::Global,
            "standardized" | "standardised" | "flap" => Allocation::Standardized,
            "measured" => Allocation::Measured,
            _ => return None,
        })
    }
}

/// Per-feature first and second moments of a layer's input (im2col features for a
/// convolution), over sampled rows.
#[derive(Debug, Clone, Default)]
pub struct InputMoments {
    pub sum: Vec<f64>,
    pub sq: Vec<f64>,
    pub rows: f64,
}

impl InputMoments {
    fn var(&self, f: usize) -> f64 {
        let n = self.rows.max(1.0);
        let m = self.sum.get(f).copied().unwrap_or(0.0) / n;
        (self.sq.get(f).copied().unwrap_or(0.0) / n - m * m).max(0.0)
    }

    fn mean_sq(&self, f: usize) -> f64 {
        self.sq.get(f).copied().unwrap_or(0.0) / self.rows.max(1.0)
    }

    /// Mean of feature `f` (bias compensation).
    pub fn mean(&self, f: usize) -> f64 {
        self.sum.get(f).copied().unwrap_or(0.0) / self.rows.max(1.0)
    }
}

/// Input moments of every consumer of `groups` on the original model, one capture.
pub fn consumer_moments(
    ed: &Editor,
    rt: &Runtime,
    calib: &Calibration,
    groups: &[&ChannelGroup],
    samples: usize,
) -> Result<HashMap<NodeId, (DenseLayer, InputMoments)>, PassError> {
    let mut layers: Vec<DenseLayer> = Vec::new();
    for g in groups {
        for &c in &g.consumers {
            if layers.iter().all(|l| l.node != c) {
                if let Some(l) = dense_layer(ed, c) {
                    layers.push(l);
                }
            }
        }
    }
    let inputs: Vec<String> = layers.iter().map(|l| l.input.clone()).collect();
    let mut moments = vec![InputMoments::default(); layers.len()];
    let source = Source::Calibration {
        data: calib,
        limit: Some(samples),
    };
    capture(rt, ed.model(), &inputs, source, &mut |b| {
        for ((l, m), t) in layers.iter().zip(moments.iter_mut()).zip(b.tensors) {
            let Some(t) = t else { continue };
            let Some((ns, per_pos)) = positions(l, &t.dims) else {
                continue;
            };
            let v = t.to_f32()?;
            // Every position: moments are cheap, per feature.
            let step = (ns * per_pos / 4096).max(1);
            let rows: Vec<_> = (0..ns * per_pos)
                .step_by(step)
                .map(|i| super::layers::RowAt {
                    sample: i / per_pos.max(1),
                    pos: i % per_pos.max(1),
                })
                .collect();
            let chans: Vec<usize> = (0..l.channels).collect();
            let x = super::layers::gather_rows(l, &t.dims, &v, &rows, &chans, false);
            if m.sum.len() != x.ncols() {
                (m.sum, m.sq) = (vec![0.0; x.ncols()], vec![0.0; x.ncols()]);
            }
            for j in 0..x.ncols() {
                for r in 0..x.nrows() {
                    let a = x[(r, j)];
                    m.sum[j] += a;
                    m.sq[j] += a * a;
                }
            }
            m.rows += x.nrows() as f64;
        }
        Ok::<(), CalibError>(())
    })?;
    Ok(layers
        .into_iter()
        .zip(moments)
        .map(|(l, m)| (l.node, (l, m)))
        .collect())
}

/// Per-channel scores of a group; data scores from the consumers' input moments.
pub fn group_scores(
    ed: &Editor,
    g: &ChannelGroup,
    score: Score,
    moments: &HashMap<NodeId, (DenseLayer, InputMoments)>,
) -> Result<Vec<f64>, PassError> {
    match score {
        Score::L1 => return channel_scores(ed, g, Norm::L1),
        Score::L2 => return channel_scores(ed, g, Norm::L2),
        _ => {}
    }
    let mut s = vec![0.0f64; g.channels];
    for p in g
        .params
        .iter()
        .filter(|p| p.role == ParamRole::ConsumerWeight)
    {
        let Some((l, m)) = moments.get(&p.node) else {
            continue;
        };
        let (w, _) = super::layers::read_matrix(ed, l)?;
        for (c, sc) in s.iter_mut().enumerate() {
            let Some(r) = p.place.range(c) else { continue };
            // Channel `c` covers input channels `r` of the consumer, each `kk` features.
            for ic in r {
                for f in ic * l.kk..(ic + 1) * l.kk {
                    if f >= w.ncols() {
                        continue;
                    }
                    let col: f64 = (0..w.nrows()).map(|o| w[(o, f)] * w[(o, f)]).sum();
                    *sc += match score {
                        Score::Wanda => col.sqrt() * m.mean_sq(f).sqrt(),
                        _ => col * m.var(f),
                    };
                }
            }
        }
    }
    Ok(s)
}

/// One node's MACs and the groups whose kept fractions scale them.
#[derive(Debug, Clone)]
struct MacTerm {
    macs: f64,
    /// Groups on the input, with their channel counts as weights.
    ins: Vec<(usize, f64)>,
    out: Option<usize>,
}

/// MACs per node and which channel fractions scale them.
#[derive(Debug, Clone, Default)]
pub struct MacModel {
    pub total: f64,
    terms: Vec<MacTerm>,
}

impl MacModel {
    /// Per-node MACs at the calibration data's sizes, against the groups' channels.
    pub fn new(
        ed: &Editor,
        groups: &[&ChannelGroup],
        dims: &crate::graph::infer::InputDims,
    ) -> MacModel {
        let info = crate::graph::infer::infer(ed.model(), dims);
        let a = ed.analysis();
        let mut out_of: HashMap<NodeId, usize> = HashMap::new();
        let mut in_of: HashMap<NodeId, Vec<(usize, f64)>> = HashMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for &s in &g.sources {
                out_of.insert(s, gi);
            }
            // Depthwise convolutions, pooling, activations: scale with the group once.
            for &p in &g.path {
                out_of.entry(p).or_insert(gi);
            }
            for &c in &g.consumers {
                in_of.entry(c).or_default().push((gi, g.channels as f64));
            }
        }
        let mut m = MacModel::default();
        for (i, n) in ed.model().graph().node.iter().enumerate() {
            let Some(Ok(op)) = info.ops.get(i) else {
                continue;
            };
            let Some(macs) = op
                .macs(&info.inputs_of(n), &info.outputs_of(n))
                .and_then(|e| e.as_int())
            else {
                continue;
            };
            let id = a.order().get(i).copied();
            let ins = id
                .and_then(|id| in_of.get(&id).cloned())
                .unwrap_or_default();
            let out = id.and_then(|id| out_of.get(&id).copied());
            m.total += macs as f64;
            m.terms.push(MacTerm {
                macs: macs as f64,
                ins,
                out,
            });
        }
        m
    }

    /// MACs with `kept[g]` of group `g`'s channels kept.
    pub fn after(&self, kept: &[f64]) -> f64 {
        self.terms
            .iter()
            .map(|MacTerm { macs, ins, out }| {
                let kin = if ins.is_empty() {
                    1.0
                } else {
                    let w: f64 = ins.iter().map(|x| x.1).sum();
                    ins.iter()
                        .map(|(g, c)| kept.get(*g).copied().unwrap_or(1.0) * c)
                        .sum::<f64>()
                        / w.max(1.0)
                };
                let kout = out.and_then(|g| kept.get(g).copied()).unwrap_or(1.0);
                macs * kin * kout
            })
            .sum()
    }
}

/// Channels to remove per group, lowest scores first, for each group's count.
pub fn lowest(scores: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(count.min(scores.len().saturating_sub(1)));
    order.sort_unstable();
    order
}

/// Removal counts per group from one threshold over `norm`alised scores (global ranking):
/// the `take` lowest channels over all groups, every group keeping one.
pub fn threshold_counts(normed: &[Vec<f64>], take: usize) -> Vec<usize> {
    let mut all: Vec<(f64, usize)> = normed
        .iter()
        .enumerate()
        .flat_map(|(g, s)| s.iter().map(move |&v| (v, g)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut counts = vec![0usize; normed.len()];
    let mut taken = 0;
    for (_, g) in all {
        if taken >= take {
            break;
        }
        if counts[g] + 1 < normed[g].len() {
            counts[g] += 1;
            taken += 1;
        }
    }
    counts
}

/// Scores divided by the group's mean (global), or standardised per group (FLAP).
pub fn normalise(scores: &[f64], standardise: bool) -> Vec<f64> {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().sum::<f64>() / n;
    if standardise {
        let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        scores
            .iter()
            .map(|s| if sd > 0.0 { (s - mean) / sd } else { 0.0 })
            .collect()
    } else {
        scores
            .iter()
            .map(|s| if mean > 0.0 { s / mean } else { 0.0 })
            .collect()
    }
}

/// KL divergence (or relative squared error for outputs that are not class scores) of a
/// candidate's metric output against the reference, mean over samples.
pub fn output_damage(reference: &crate::tensor::Tensor, candidate: &crate::tensor::Tensor) -> f64 {
    let (Ok(p), Ok(q)) = (reference.to_f32(), candidate.to_f32()) else {
        return f64::INFINITY;
    };
    if p.len() != q.len() || p.is_empty() {
        return f64::INFINITY;
    }
    let classes = reference.dims.last().copied().unwrap_or(1);
    if reference.dims.len() == 2 && classes > 1 {
        let soft = |r: &[f32]| -> Vec<f64> {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f64> = r.iter().map(|&x| f64::from(x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect()
        };
        let rows = p.len() / classes;
        let mut kl = 0.0;
        for (a, b) in p.chunks_exact(classes).zip(q.chunks_exact(classes)) {
            let (pa, pb) = (soft(a), soft(b));
            kl += pa
                .iter()
                .zip(&pb)
                .map(|(x, y)| {
                    if *x > 0.0 {
                        x * (x / y.max(1e-12)).ln()
                    } else {
                        0.0
                    }
                })
                .sum::<f64>();
        }
        kl / rows.max(1) as f64
    } else {
        let num: f64 = p
            .iter()
            .zip(&q)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let den: f64 = p.iter().map(|a| f64::from(*a).powi(2)).sum();
        num / den.max(1e-30)
    }
}

/// The removal counts a group of `channels` is measured and allocated at: each of `levels`
/// (fractions), the kept count rounded up to a multiple of `round_to`, ascending, without repeats
/// or zero. The allocator chooses among exactly the counts that will be applied, so a plan with
/// `--round-to` still meets its MAC budget and its damage is the one that was measured.
pub fn level_counts(channels: usize, levels: &[f64], round_to: usize) -> Vec<usize> {
    let mut out: Vec<usize> = levels
        .iter()
        .map(|&f| {
            let want = (f * channels as f64).round() as usize;
            super::structured::rounded_removal(channels, want, round_to.max(1))
        })
        .filter(|&c| c > 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Damage of each group pruned alone at each of its removal `counts` (lowest scores first),
/// measured on `calib`.
pub fn measure_sensitivity(
    ed: &Editor,
    rt: &Runtime,
    calib: &Calibration,
    groups: &[&ChannelGroup],
    scores: &[Vec<f64>],
    counts: &[Vec<usize>],
) -> Result<Vec<Vec<f64>>, PassError> {
    let first = |m: &crate::onnx::Model| -> Result<crate::tensor::Tensor, PassError> {
        crate::calib::into_metric_output(crate::calib::run_model(rt, m, calib)?).ok_or(
            PassError::Invalid {
                pass: "allocate",
                reason: "the model has no output".into(),
            },
        )
    };
    let reference = first(ed.model())?;
    let mut out = Vec::with_capacity(groups.len());
    for ((g, s), cs) in groups.iter().zip(scores).zip(counts) {
        let mut row = Vec::with_capacity(cs.len());
        for &c in cs {
            let chans = lowest(s, c);
            let mut probe = Editor::new(ed.model().clone(), ed.inputs().clone());
            zero_channels(&mut probe, g, &chans)?;
            row.push(output_damage(&reference, &first(probe.model())?));
        }
        out.push(row);
    }
    Ok(out)
}

/// Greedy measured allocation: starting from nothing removed, repeatedly moves the group whose
/// next count costs the least damage per MAC saved, until the MACs are at most `target` (a
/// fraction of the original's). `counts[g]` are group `g`'s candidate removal counts
/// (ascending, as [`level_counts`] gives them) of its `channels[g]`, `damage[g]` their measured
/// damage. Returns each group's removal count.
pub fn allocate_measured(
    macs: &MacModel,
    damage: &[Vec<f64>],
    counts: &[Vec<usize>],
    channels: &[usize],
    target: f64,
) -> Vec<usize> {
    let mut level = vec![0usize; damage.len()];
    let removed = |lv: &[usize]| -> Vec<usize> {
        lv.iter()
            .zip(counts)
            .map(|(&l, cs)| if l == 0 { 0 } else { cs[l - 1] })
            .collect()
    };
    let kept = |lv: &[usize]| -> Vec<f64> {
        removed(lv)
            .iter()
            .zip(channels)
            .map(|(&r, &c)| 1.0 - r as f64 / c.max(1) as f64)
            .collect()
    };
    let goal = target * macs.total;
    loop {
        let now = macs.after(&kept(&level));
        if now <= goal {
            break;
        }
        let mut best: Option<(f64, usize)> = None;
        for g in 0..damage.len() {
            let l = level[g];
            if l >= damage[g].len().min(counts[g].len()) {
                continue;
            }
            let cost = damage[g][l] - if l == 0 { 0.0 } else { damage[g][l - 1] };
            let mut next = level.clone();
            next[g] += 1;
            let saved = now - macs.after(&kept(&next));
            if saved <= 0.0 {
                continue;
            }
            let ratio = cost.max(0.0) / saved;
            if best.is_none_or(|b| ratio < b.0) {
                best = Some((ratio, g));
            }
        }
        let Some((_, g)) = best else { break };
        level[g] += 1;
    }
    removed(&level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts_keep_multiples_of_the_rounding() {
        let levels = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75];
        assert_eq!(level_counts(64, &levels, 1), vec![8, 16, 24, 32, 40, 48]);
        // Kept 56 and 40 round up to 64 and 48: those levels merge with their neighbours.
        assert_eq!(level_counts(64, &levels, 16), vec![16, 32, 48]);
        // Nothing fits a 16-wide block below 16 channels.
        assert!(level_counts(16, &levels, 16).is_empty());
        // A group that is not a multiple keeps a multiple once pruned: 24, 16 and 8 of 30.
        assert_eq!(level_counts(30, &levels, 8), vec![6, 14, 22]);
        for c in level_counts(100, &levels, 8) {
            assert_eq!((100 - c) % 8, 0);
        }
    }

    /// Two groups feeding one node each: the allocator takes the cheaper damage per MAC and
    /// stops once the budget holds, choosing only among the counts offered.
    #[test]
    fn measured_allocation_chooses_only_offered_counts_under_the_budget() {
        let macs = MacModel {
            total: 200.0,
            terms: vec![
                MacTerm {
                    macs: 100.0,
                    ins: Vec::new(),
                    out: Some(0),
                },
                MacTerm {
                    macs: 100.0,
                    ins: Vec::new(),
                    out: Some(1),
                },
            ],
        };
        let counts = vec![vec![16, 32, 48], vec![8, 16, 24, 32, 40, 48]];
        let channels = [64, 64];
        // Group 0 is cheap to prune, group 1 costly.
        let damage = vec![vec![0.01, 0.02, 0.03], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]];
        let got = allocate_measured(&macs, &damage, &counts, &channels, 0.7);
        assert_eq!(got[0], 48, "{got:?}");
        // 48/64 of group 0 removes 75 MACs of 100: 125 left of 200 ≤ 140, group 1 untouched.
        assert_eq!(got[1], 0, "{got:?}");
        // At 0.5: group 0 leaves 25, so group 1 must leave at most 75, its first count that
        // does is 16 (48 of 64 kept).
        let tight = allocate_measured(&macs, &damage, &counts, &channels, 0.5);
        assert_eq!(tight, vec![48, 16]);
    }
}
