//! Structured pruning: whole channels of each coupled group (`graph::groups`) ranked by the L1 or
//! L2 norm of their slices, summed over the group's weights (sources, depthwise filters and
//! consumers). A pruned channel is zeroed in every coupled tensor, so it is exactly zero all the
//! way to its consumers and the simplify stage can cut it out; shapes stay as they are.
//!
//! Zeroed: source weights and biases, depthwise weights, consumer input slices, per-channel
//! parameters on the way. Kept: BatchNormalization running mean and variance (the variance must
//! stay positive; a zero scale and bias already make the output 0) and constants of `Div`/`Pow`
//! (a zero would divide by zero).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{census, check_fraction, prunable_weights, Filter, PruneOutcome, Skipped};
use crate::graph::editor::Editor;
use crate::graph::groups::{
    channel_groups, label, ChannelGroup, CoupledParam, ParamRole, Placement,
};
use crate::graph::ops::{Binary, Op};
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};
use crate::tensor::{DType, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    L1,
    L2,
}

#[derive(Debug, Clone)]
pub struct StructuredPrune {
    /// Fraction of each group's channels to remove (of all selected channels with `global`).
    pub fraction: f64,
    pub global: bool,
    pub norm: Norm,
    /// Keep channel counts multiples of this (1: no rounding).
    pub round_to: usize,
    pub filter: Filter,
}

/// One group in the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub channels: usize,
    pub removed: Vec<usize>,
    pub sources: Vec<String>,
}

/// Index along `place.axis` -> channel.
fn channel_map(dims: &[usize], place: &Placement) -> Vec<Option<usize>> {
    let len = dims.get(place.axis).copied().unwrap_or(0);
    let mut map = vec![None; len];
    for c in place.first..place.first + place.count {
        if let Some(r) = place.range(c) {
            for j in r {
                if let Some(m) = map.get_mut(j) {
                    *m = Some(c);
                }
            }
        }
    }
    map
}

/// Calls `f(channel, element index)` for every element of a tensor that belongs to a channel.
pub(crate) fn for_each_channel_elem(
    dims: &[usize],
    place: &Placement,
    mut f: impl FnMut(usize, usize),
) {
    if place.axis >= dims.len() {
        return;
    }
    let map = channel_map(dims, place);
    let len = map.len();
    if len == 0 {
        return;
    }
    let inner: usize = dims[place.axis + 1..].iter().product();
    let total: usize = dims.iter().product();
    for e in 0..total {
        if let Some(c) = map[(e / inner.max(1)) % len] {
            f(c, e);
        }
    }
}

fn read_param(ed: &Editor, p: &CoupledParam) -> Result<Option<(Tensor, Vec<f32>)>, PassError> {
    let Some(t) = ed.constant(&p.name)? else {
        return Ok(None);
    };
    if t.dtype != DType::F32 || t.dims.len() <= p.place.axis {
        return Ok(None);
    }
    let v = t.to_f32()?;
    Ok(Some((t, v)))
}

/// Per-channel importance of a group: the norm of each channel's slice in every coupled weight
/// (source, depthwise, consumer), summed over those weights.
pub fn channel_scores(
    ed: &Editor,
    group: &ChannelGroup,
    norm: Norm,
) -> Result<Vec<f64>, PassError> {
    let mut scores = vec![0.0f64; group.channels];
    for p in &group.params {
        if !matches!(
            p.role,
            ParamRole::SourceWeight | ParamRole::Depthwise | ParamRole::ConsumerWeight
        ) {
            continue;
        }
        let Some((t, v)) = read_param(ed, p)? else {
            continue;
        };
        let mut acc = vec![0.0f64; group.channels];
        for_each_channel_elem(&t.dims, &p.place, |c, e| {
            let x = v[e] as f64;
            if let Some(a) = acc.get_mut(c) {
                *a += match norm {
                    Norm::L1 => x.abs(),
                    Norm::L2 => x * x,
                };
            }
        });
        for (s, a) in scores.iter_mut().zip(acc) {
            *s += match norm {
                Norm::L1 => a,
                Norm::L2 => a.sqrt(),
            };
        }
    }
    Ok(scores)
}

/// Whether structured pruning leaves this coupled parameter as it is.
pub fn keeps_param(ed: &Editor, p: &CoupledParam) -> bool {
    let (Some(n), Some(op)) = (ed.node(p.node), ed.analysis().valid_op(p.node)) else {
        return true;
    };
    match op {
        Op::BatchNorm { .. } => n
            .input
            .iter()
            .position(|x| x == &p.name)
            .is_some_and(|k| k >= 3),
        Op::Binary(Binary::Div) => true,
        // `Pow` is one of the other binary ops; the parse has checked its domain.
        Op::Binary(_) => n.op_type == "Pow",
        _ => false,
    }
}

/// Zeroes `channels` of `group` in every coupled tensor (but those `keeps_param` spares).
pub fn zero_channels(
    ed: &mut Editor,
    group: &ChannelGroup,
    channels: &[usize],
) -> Result<(), PassError> {
    if channels.is_empty() {
        return Ok(());
    }
    let mut dead = vec![false; group.channels];
    for &c in channels {
        if let Some(d) = dead.get_mut(c) {
            *d = true;
        }
    }
    for p in &group.params {
        if keeps_param(ed, p) {
            continue;
        }
        let Some((t, mut v)) = read_param(ed, p)? else {
            continue;
        };
        for_each_channel_elem(&t.dims, &p.place, |c, e| {
            if dead.get(c).copied().unwrap_or(false) {
                v[e] = 0.0;
            }
        });
        ed.write_constant(&p.name, &Tensor::from_f32(t.dims.clone(), &v)?)?;
    }
    Ok(())
}

/// Channels kept after removing `removed` of `channels`, rounded up to a multiple of `k`.
pub(crate) fn rounded_removal(channels: usize, removed: usize, k: usize) -> usize {
    let removed = removed.min(channels.saturating_sub(1));
    let kept = channels - removed;
    if k <= 1 {
        return removed;
    }
    let kept = kept.div_ceil(k) * k;
    channels.saturating_sub(kept.min(channels))
}

pub(crate) fn source_weight_names(g: &ChannelGroup) -> Vec<&str> {
    g.params
        .iter()
        .filter(|p| p.role == ParamRole::SourceWeight)
        .map(|p| p.name.as_str())
        .collect()
}

/// The prunable groups whose sources `filter` selects, and what was left alone (blocked
/// groups, layers inside subgraphs) with the reason.
pub(crate) fn selected_groups(
    ed: &Editor,
    filter: &Filter,
    weights: &[super::PrunableWeight],
) -> (Vec<ChannelGroup>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut out = Vec::new();
    for gr in channel_groups(ed) {
        let names = source_weight_names(&gr);
        let selected = gr.sources.iter().all(|&s| {
            let l = label(ed, s);
            let mut all: Vec<&str> = names.clone();
            all.push(&l);
            filter.allows(&all, ed.node(s).map_or("", |n| n.op_type.as_str()))
        });
        if !selected {
            continue;
        }
        if !gr.prunable() {
            skipped.push(Skipped {
                name: gr.name.clone(),
                reason: gr.blocked.join("; "),
            });
            continue;
        }
        out.push(gr);
    }
    // The channel analysis covers the main graph; layers inside If/Loop/Scan bodies stay.
    for w in weights.iter().filter(|w| w.in_subgraph) {
        if filter.allows(&[&w.name, &w.node], &w.op) {
            skipped.push(Skipped {
                name: w.name.clone(),
                reason: "inside a subgraph: structured pruning covers the main graph".into(),
            });
        }
    }
    (out, skipped)
}

impl StructuredPrune {
    pub fn prune(&self, ed: &mut Editor) -> Result<(PruneOutcome, Vec<GroupReport>), PassError> {
        check_fraction("structured", "fraction", self.fraction)?;
        let weights = prunable_weights(ed.model());
        let before = census(ed.model(), &weights)?;
        let (groups, mut skipped) = selected_groups(ed, &self.filter, &weights);
        // (group, scores) of the selected, prunable groups
        let mut chosen: Vec<(&ChannelGroup, Vec<f64>)> = Vec::new();
        for gr in &groups {
            chosen.push((gr, channel_scores(ed, gr, self.norm)?));
        }
        let k = self.round_to.max(1);
        let mut plans: Vec<Vec<usize>> = Vec::with_capacity(chosen.len());
        if self.global {
            // Scores normalized by each group's mean, so layers of different scale compare.
            let mut all: Vec<(f64, usize, usize)> = Vec::new();
            for (gi, (_, s)) in chosen.iter().enumerate() {
                let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
                for (c, &v) in s.iter().enumerate() {
                    let n = if mean > 0.0 { v / mean } else { 0.0 };
                    all.push((n, gi, c));
                }
            }
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let target = (self.fraction * all.len() as f64).round() as usize;
            let mut per: Vec<Vec<usize>> = vec![Vec::new(); chosen.len()];
            let mut taken = 0;
            for &(_, gi, c) in &all {
                if taken >= target {
                    break;
                }
                // Every group keeps at least one channel.
                if per[gi].len() + 1 < chosen[gi].0.channels {
                    per[gi].push(c);
                    taken += 1;
                }
            }
            for (gi, mut p) in per.into_iter().enumerate() {
                let r = rounded_removal(chosen[gi].0.channels, p.len(), k);
                // `p` is in ascending score order: keep the lowest `r`.
                p.truncate(r);
                plans.push(p);
            }
        } else {
            for (gr, s) in &chosen {
                let want = (self.fraction * gr.channels as f64 + 1e-9).floor() as usize;
                let r = rounded_removal(gr.channels, want, k);
                let mut order: Vec<usize> = (0..s.len()).collect();
                order.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                order.truncate(r);
                plans.push(order);
            }
        }
        let mut reports = Vec::new();
        let mut removed_by_weight: HashMap<String, (usize, usize)> = HashMap::new();
        let jobs: Vec<(ChannelGroup, Vec<usize>)> = chosen
            .iter()
            .zip(plans)
            .map(|((gr, _), mut p)| {
                p.sort_unstable();
                ((*gr).clone(), p)
            })
            .collect();
        for (gr, p) in &jobs {
            for name in source_weight_names(gr) {
                removed_by_weight.insert(name.to_string(), (gr.channels, p.len()));
            }
            reports.push(GroupReport {
                name: gr.name.clone(),
                channels: gr.channels,
                removed: p.clone(),
                sources: source_weight_names(gr)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            });
        }
        for (gr, p) in &jobs {
            zero_channels(ed, gr, p)?;
        }
        let after = census(ed.model(), &weights)?;
        let mut out = PruneOutcome::from_census("structured", &weights, &before, &after);
        for l in &mut out.layers {
            if let Some(&(c, r)) = removed_by_weight.get(&l.name) {
                l.channels = Some(c);
                l.channels_removed = Some(r);
            }
        }
        out.skipped.append(&mut skipped);
        out.changed = jobs.iter().any(|(_, p)| !p.is_empty());
        out.groups = reports.clone();
        Ok((out, reports))
    }
}

impl Pass for StructuredPrune {
    fn name(&self) -> &'static str {
        "structured-prune"
    }
    fn preserves(&self) -> Preserves {
        Preserves::Interface
    }
    fn run(&self, ed: &mut Editor, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        Ok(self.prune(ed)?.0.into_report(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::rounded_removal;

    #[test]
    fn rounding_keeps_multiples() {
        assert_eq!(rounded_removal(64, 20, 8), 16); // keeps 48
        assert_eq!(rounded_removal(64, 20, 1), 20);
        assert_eq!(rounded_removal(10, 10, 1), 9); // never all
        assert_eq!(rounded_removal(10, 3, 4), 2); // keeps 8
        assert_eq!(rounded_removal(6, 1, 4), 0); // 5 -> 8 > 6: nothing
    }
}
