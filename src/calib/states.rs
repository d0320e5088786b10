//! Rectifier states on calibration data: for each `Relu` (and `Clip` from 0, e.g. ReLU6) and each
//! of its channels, how often the pre-activation is OFF (at or below the lower bound), in the
//! linear range, or saturated (at or above the upper bound). From these come each neuron's
//! entropy (NEPENTHE) and the zero-entropy layers the simplify stage collapses.

use serde::Serialize;

use super::{CalibError, Calibration};
use crate::graph::index::{node_label, GraphIndex};
use crate::graph::shapes::attr_f;
use crate::onnx::Model;
use crate::runtime::{Runtime, Session, SessionOptions};

/// State counts of one rectifier's channels over the calibration data.
#[derive(Debug, Clone, Serialize)]
pub struct NeuronStates {
    /// The rectifier node (index in the main graph) and its label.
    pub node: usize,
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

/// Rectifier nodes of the main graph: (node, input tensor, lower bound, upper bound).
pub fn rectifiers(model: &Model, ix: &GraphIndex) -> Vec<(usize, String, f32, f32)> {
    let g = model.graph();
    let mut out = Vec::new();
    for (ni, n) in g.node.iter().enumerate() {
        let Some(x) = n.input.first() else { continue };
        match n.op_type.as_str() {
            "Relu" => out.push((ni, x.clone(), 0.0, f32::INFINITY)),
            "Clip" => {
                // Clip-6 and older keep bounds in attributes, newer in inputs.
                let bound = |i: usize, attr: &str, default: f32| -> Option<f32> {
                    match n.input.get(i).filter(|s| !s.is_empty()) {
                        Some(name) => ix
                            .constant(model, name)
                            .ok()
                            .flatten()?
                            .to_f32()
                            .ok()?
                            .first()
                            .copied(),
                        None => Some(attr_f(n, attr, default)),
                    }
                };
                let (Some(lo), Some(hi)) = (
                    bound(1, "min", f32::NEG_INFINITY),
                    bound(2, "max", f32::INFINITY),
                ) else {
                    continue;
                };
                if lo == 0.0 {
                    out.push((ni, x.clone(), lo, hi));
                }
            }
            _ => {}
        }
    }
    out
}

/// Channel axis of a pre-activation: the last for token-major tensors coming from `MatMul`,
/// else 1 (NCHW feature maps and [N, F] features).
fn channel_axis(model: &Model, ix: &GraphIndex, tensor: &str, rank: usize) -> usize {
    if rank <= 2 {
        return rank.saturating_sub(1).min(1);
    }
    let g = model.graph();
    let mut t = tensor.to_string();
    for _ in 0..3 {
        let Some(&p) = ix.producer.get(&t) else { break };
        match g.node[p].op_type.as_str() {
            "MatMul" => return rank - 1,
            "Add" => match g.node[p].input.iter().find(|i| !ix.is_const(i)) {
                Some(i) => t = i.clone(),
                None => break,
            },
            _ => break,
        }
    }
    1
}

/// Counts rectifier states over the calibration data.
pub fn rectifier_states(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
) -> Result<Vec<NeuronStates>, CalibError> {
    let ix = GraphIndex::new(model);
    let rects = rectifiers(model, &ix);
    if rects.is_empty() {
        return Ok(Vec::new());
    }
    // A copy of the model that also outputs every pre-activation.
    let mut probe = model.clone();
    let pre: Vec<String> = rects.iter().map(|r| r.1.clone()).collect();
    crate::graph::edit::expose_float_outputs(&mut probe, &pre);
    let mut session = Session::from_model(rt, &probe, &SessionOptions::default())?;
    let step = calib.batch();
    let g = model.graph();
    let mut states: Vec<Option<NeuronStates>> = vec![None; rects.len()];
    let mut start = 0;
    while start < calib.samples {
        let end = (start + step).min(calib.samples);
        let outs = session.run(&calib.slice(start, end)?)?;
        for (ri, (node, x, lo, hi)) in rects.iter().enumerate() {
            let Some((_, t)) = outs.iter().find(|(n, _)| n == x) else {
                continue;
            };
            let v = t.to_f32()?;
            let rank = t.dims.len();
            let axis = channel_axis(model, &ix, x, rank);
            let c = t.dims.get(axis).copied().unwrap_or(1).max(1);
            let inner: usize = t.dims[axis + 1..].iter().product();
            let st = states[ri].get_or_insert_with(|| NeuronStates {
                node: *node,
                name: node_label(&g.node[*node], *node),
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
                if val <= *lo {
                    st.off[ch] += 1;
                } else if val >= *hi {
                    st.saturated[ch] += 1;
                } else {
                    st.linear[ch] += 1;
                }
            }
            st.observations += (v.len() / c) as u64;
        }
        start = end;
    }
    Ok(states.into_iter().flatten().collect())
}
