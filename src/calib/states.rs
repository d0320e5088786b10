//! Rectifier states on calibration data: for each `Relu` (and `Clip` from 0, e.g. ReLU6) and each
//! of its channels, how often the pre-activation is OFF (at or below the lower bound), in the
//! linear range, or saturated (at or above the upper bound). From these come each neuron's
//! entropy (NEPENTHE) and the zero-entropy layers the simplify stage collapses.

use serde::{Deserialize, Serialize};

use super::capture::{capture, Source};
use super::{CalibError, Calibration};
use crate::graph::editor::{Editor, NodeId};
use crate::graph::groups::label;
use crate::graph::ops::{Binary, Op};
use crate::runtime::Runtime;

/// State counts of one rectifier's channels over the calibration data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeuronStates {
    /// The rectifier node and its label.
    pub node: NodeId,
    pub name: String,
    /// Its input, the pre-activation.
    pub tensor: String,
    /// Channel axis of that tensor.
    pub axis: usize,
    pub lo: f32,
    pub hi: f32,
    /// Per channel: observations at or below `lo`, strictly inside, at or above `hi`.
    pub off: Vec<u64>,
    pub linear: Vec<u64>,
    pub saturated: Vec<u64>,
    /// Observations per channel (samples × positions).
    pub observations: u64,
}

impl NeuronStates {
    pub fn channels(&self) -> usize {
        self.off.len()
    }

    /// Fraction of observations in which channel `c` is ON (not OFF).
    pub fn on_fraction(&self, c: usize) -> f64 {
        if self.observations == 0 {
            return 0.0;
        }
        1.0 - self.off[c] as f64 / self.observations as f64
    }

    /// Binary entropy of channel `c`'s ON/OFF state, in bits.
    pub fn entropy(&self, c: usize) -> f64 {
        let p = self.on_fraction(c);
        if p <= 0.0 || p >= 1.0 {
            0.0
        } else {
            -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())
        }
    }

    pub fn mean_entropy(&self) -> f64 {
        let n = self.channels().max(1);
        (0..self.channels()).map(|c| self.entropy(c)).sum::<f64>() / n as f64
    }

    /// OFF on every observation: the channel's output is the constant `lo`.
    pub fn always_off(&self, c: usize) -> bool {
        self.observations > 0 && self.off[c] == self.observations
    }

    /// Inside the linear range on every observation: the rectifier is the identity for it.
    pub fn always_linear(&self, c: usize) -> bool {
        self.observations > 0 && self.linear[c] == self.observations
    }
}

/// Rectifier nodes of the main graph: (node, input tensor, lower bound, upper bound). Only
/// rectifiers clamping at 0 (ReLU, ReLU6 as `Clip`).
pub fn rectifiers(ed: &Editor) -> Vec<(NodeId, String, f32, f32)> {
    let a = ed.analysis();
    let mut out = Vec::new();
    for &id in a.order() {
        let (Some(n), Some(op)) = (ed.node(id), a.valid_op(id)) else {
            continue;
        };
        let Some(x) = n.input.first() else { continue };
        // Clip-11 and newer keep bounds in inputs.
        let bound = |i: usize| -> Option<f32> {
            let name = n.input.get(i).filter(|s| !s.is_empty())?;
            ed.constant(name)
                .ok()
                .flatten()?
                .to_f32()
                .ok()?
                .first()
                .copied()
        };
        if let Some((lo, hi)) = op.rectifier((bound(1), bound(2))) {
            if lo == 0.0 {
                out.push((id, x.clone(), lo, hi));
            }
        }
    }
    out
}

/// Channel axis of a pre-activation: the last for token-major tensors coming from `MatMul`,
/// else 1 (NCHW feature maps and [N, F] features).
fn channel_axis(ed: &Editor, tensor: &str, rank: usize) -> usize {
    if rank <= 2 {
        return rank.saturating_sub(1).min(1);
    }
    let a = ed.analysis();
    let mut t = tensor.to_string();
    for _ in 0..3 {
        let Some(p) = a.producer(&t) else { break };
        match a.valid_op(p) {
            Some(Op::MatMul) => return rank - 1,
            Some(Op::Binary(Binary::Add)) => match ed
                .node(p)
                .and_then(|n| n.input.iter().find(|i| !a.is_const(i)))
            {
                Some(i) => t = i.clone(),
                None => break,
            },
            _ => break,
        }
    }
    1
}

/// Counts rectifier states over the calibration data, one batch at a time.
pub fn rectifier_states(
    rt: &Runtime,
    ed: &Editor,
    calib: &Calibration,
) -> Result<Vec<NeuronStates>, CalibError> {
    let rects = rectifiers(ed);
    if rects.is_empty() {
        return Ok(Vec::new());
    }
    let pre: Vec<String> = rects.iter().map(|r| r.1.clone()).collect();
    let mut states: Vec<Option<NeuronStates>> = vec![None; rects.len()];
    let source = Source::Calibration {
        data: calib,
        limit: None,
    };
    capture(rt, ed.model(), &pre, source, &mut |batch| {
        for ((node, x, lo, hi), (t, slot)) in rects
            .iter()
            .zip(batch.tensors.iter().zip(states.iter_mut()))
        {
            let Some(t) = t else { continue };
            let v = t.to_f32()?;
            let rank = t.dims.len();
            let axis = channel_axis(ed, x, rank);
            let c = t.dims.get(axis).copied().unwrap_or(1).max(1);
            let inner: usize = t.dims.get(axis + 1..).map_or(1, |d| d.iter().product());
            let st = slot.get_or_insert_with(|| NeuronStates {
                node: *node,
                name: label(ed, *node),
                tensor: x.clone(),
                axis,
                lo: *lo,
                hi: *hi,
                off: vec![0; c],
                linear: vec![0; c],
                saturated: vec![0; c],
                observations: 0,
            });
            if st.off.len() != c {
                continue;
            }
            for (i, &val) in v.iter().enumerate() {
                let ch = (i / inner.max(1)) % c;
                let counter = if val <= *lo {
                    &mut st.off
                } else if val >= *hi {
                    &mut st.saturated
                } else {
                    &mut st.linear
                };
                if let Some(k) = counter.get_mut(ch) {
                    *k += 1;
                }
            }
            st.observations += (v.len() / c) as u64;
        }
        Ok(())
    })?;
    Ok(states.into_iter().flatten().collect())
}
