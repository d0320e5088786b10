//! Per-channel statistics correction: after pruning, each output channel of a layer is
//! re-matched to the original model's mean and standard deviation on the calibration data,
//! `y'' = a (y' − μ') + μ` with `a = σ / σ'`, folded into the layer's weights (`W ← a W`) and
//! bias (`b ← a (b − μ') + μ`). The cheap correction where a least-squares fit is not possible
//! or not wanted; with `scale: false` only the means (bias correction).

use serde::{Deserialize, Serialize};

use super::layers::{dense_layer, read_matrix, write_matrix, Bias, Kind};
use crate::calib::capture::{capture_many, Source};
use crate::calib::{CalibError, Calibration};
use crate::graph::editor::{Editor, NodeId};
use crate::onnx::Model;
use crate::passes::PassError;
use crate::runtime::Runtime;

/// One corrected layer: the largest mean shift it had, relative to the channels' spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsFix {
    pub layer: String,
    pub channels: usize,
    pub max_mean_shift: f64,
}

/// Running per-channel sums of a tensor with channels on `axis`.
#[derive(Debug, Clone, Default)]
pub struct ChannelMoments {
    pub sum: Vec<f64>,
    pub sq: Vec<f64>,
    pub count: f64,
}

impl ChannelMoments {
    pub fn add(
        &mut self,
        t: &crate::tensor::Tensor,
        axis: usize,
    ) -> Result<(), crate::tensor::TensorError> {
        let v = t.to_f32()?;
        let ch = t.dims.get(axis).copied().unwrap_or(1).max(1);
        let inner: usize = t
            .dims
            .get(axis + 1..)
            .map_or(1, |d| d.iter().product())
            .max(1);
        if self.sum.len() != ch {
            (self.sum, self.sq, self.count) = (vec![0.0; ch], vec![0.0; ch], 0.0);
        }
        for (i, x) in v.iter().enumerate() {
            let c = (i / inner) % ch;
            let x = f64::from(*x);
            self.sum[c] += x;
            self.sq[c] += x * x;
        }
        self.count += (v.len() / ch) as f64;
        Ok(())
    }

    pub fn mean(&self, c: usize) -> f64 {
        self.sum.get(c).copied().unwrap_or(0.0) / self.count.max(1.0)
    }

    pub fn std(&self, c: usize) -> f64 {
        let m = self.mean(c);
        (self.sq.get(c).copied().unwrap_or(0.0) / self.count.max(1.0) - m * m)
            .max(0.0)
            .sqrt()
    }
}

/// Re-matches the output channels of `layers` (Conv, Gemm, MatMul with a bias place) to the
/// original model's on `calib`; layers without a place for a bias are left alone.
pub fn correct_statistics(
    ed: &mut Editor,
    original: &Model,
    rt: &Runtime,
    calib: &Calibration,
    layers: &[NodeId],
    scale: bool,
) -> Result<Vec<StatsFix>, PassError> {
    let ls: Vec<_> = layers
        .iter()
        .filter_map(|&id| dense_layer(ed, id))
        .filter(|l| l.bias != Bias::None)
        .collect();
    // The output with the bias added (after a MatMul's bias Add).
    let outs: Vec<String> = ls
        .iter()
        .map(|l| match &l.bias {
            Bias::AddAfter { add, .. } => ed
                .node(*add)
                .and_then(|n| n.output.first().cloned())
                .unwrap_or_else(|| l.output.clone()),
            _ => l.output.clone(),
        })
        .collect();
    let mut moments = vec![(ChannelMoments::default(), ChannelMoments::default()); ls.len()];
    let source = Source::Calibration {
        data: calib,
        limit: None,
    };
    capture_many(
        rt,
        &[(original, &outs), (ed.model(), &outs)],
        source,
        &mut |b| {
            let [bo, bp] = b.as_slice() else {
                return Ok(());
            };
            for (k, (l, m)) in ls.iter().zip(moments.iter_mut()).enumerate() {
                let axis = match l.kind {
                    Kind::Conv { .. } => 1,
                    _ => bo
                        .tensors
                        .get(k)
                        .and_then(|t| t.as_ref())
                        .map_or(1, |t| t.dims.len().saturating_sub(1)),
                };
                if let (Some(Some(o)), Some(Some(p))) = (bo.tensors.get(k), bp.tensors.get(k)) {
                    m.0.add(o, axis).map_err(CalibError::from)?;
                    m.1.add(p, axis).map_err(CalibError::from)?;
                }
            }
            Ok(())
        },
    )?;
    let mut fixes = Vec::new();
    for (l, (mo, mp)) in ls.iter().zip(&moments) {
        if mo.sum.len() != l.rows || mp.sum.len() != l.rows {
            continue;
        }
        let (mut w, mut b) = read_matrix(ed, l)?;
        let mut shift = 0.0f64;
        for r in 0..l.rows {
            let (so, sp) = (mo.std(r), mp.std(r));
            // A channel the pruning made constant keeps its scale (nothing to stretch).
            let a = if scale && sp > 1e-12 * so.max(1.0) {
                so / sp
            } else {
                1.0
            };
            shift = shift.max((mo.mean(r) - mp.mean(r)).abs() / so.max(1e-12));
            for j in 0..w.ncols() {
                w[(r, j)] *= a;
            }
            b[r] = a * (b[r] - mp.mean(r)) + mo.mean(r);
        }
        write_matrix(ed, l, &w, Some(&b))?;
        fixes.push(StatsFix {
            layer: l.label.clone(),
            channels: l.rows,
            max_mean_shift: shift,
        });
    }
    Ok(fixes)
}
