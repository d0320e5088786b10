//! Folds `BatchNormalization` into the `Conv`, `ConvTranspose` or `Gemm` before it.

use serde::{Deserialize, Serialize};

use crate::graph::editor::{Editor, NodeId};
use crate::graph::groups::label;
use crate::graph::ops::Op;
use crate::onnx::proto::NodeProto;
use crate::passes::{Pass, PassContext, PassDetails, PassError, PassReport, Preserves};
use crate::tensor::Tensor;

/// `y = γ (x - μ) / √(σ² + ε) + β` after a linear layer becomes that layer's weights and bias:
/// `W' = W · s`, `b' = (b - μ) · s + β` with `s = γ / √(σ² + ε)` per output channel.
pub struct FoldBatchNorm;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoldDetails {
    pub folded: Vec<String>,
}

/// The new weight and bias of one fold, computed before anything is written.
struct Fold {
    bn: NodeId,
    layer: NodeId,
    weight: Tensor,
    bias: Tensor,
    gemm: bool,
}

fn f32s(ed: &Editor, name: &str) -> Result<Option<Vec<f32>>, PassError> {
    Ok(ed.constant(name)?.and_then(|t| t.to_f32().ok()))
}

/// Scale, bias, mean and variance of a BatchNormalization node: constants of one length.
fn bn_params(ed: &Editor, n: &NodeProto) -> Result<Option<[Vec<f32>; 4]>, PassError> {
    let mut params = Vec::with_capacity(4);
    for k in 1..=4 {
        match n.input.get(k) {
            Some(name) => params.push(f32s(ed, name)?),
            None => return Ok(None),
        }
    }
    let Ok([Some(gamma), Some(beta), Some(mean), Some(var)]) = <[_; 4]>::try_from(params) else {
        return Ok(None);
    };
    let c = gamma.len();
    if beta.len() != c || mean.len() != c || var.len() != c {
        return Ok(None);
    }
    Ok(Some([gamma, beta, mean, var]))
}

/// The bias of the layer before a BatchNormalization, per channel (none is zero, a scalar is
/// spread); `None` when it is not a constant of 1 or `c` values.
fn layer_bias(ed: &Editor, p: &NodeProto, c: usize) -> Result<Option<Vec<f64>>, PassError> {
    let Some(b) = p.input.get(2).filter(|b| !b.is_empty()) else {
        return Ok(Some(vec![0.0f64; c]));
    };
    let Some(bv) = f32s(ed, b)? else {
        return Ok(None);
    };
    Ok(match bv.as_slice() {
        [one] => Some(vec![f64::from(*one); c]),
        v if v.len() == c => Some(v.iter().map(|&x| f64::from(x)).collect()),
        _ => None,
    })
}

/// The fold of BatchNormalization `bn` into its producer, when it is exact and possible.
fn plan(ed: &Editor, bn: NodeId) -> Result<Option<Fold>, PassError> {
    let a = ed.analysis();
    let (
        Some(n),
        Some(Op::BatchNorm {
            epsilon,
            training: false,
        }),
    ) = (ed.node(bn), a.valid_op(bn))
    else {
        return Ok(None);
    };
    let Some(x) = n.input.first() else {
        return Ok(None);
    };
    let Some(layer) = a.producer(x) else {
        return Ok(None);
    };
    if a.consumers(x).len() != 1 || a.is_graph_output(x) {
        return Ok(None);
    }
    let Some(p) = ed.node(layer) else {
        return Ok(None);
    };
    // Output-channel axis of the weight, and Gemm's scalars.
    let (axis, alpha, beta_g, gemm) = match a.valid_op(layer) {
        Some(Op::Conv(_)) => (0, 1.0, 1.0, false),
        Some(Op::ConvTranspose(t)) if t.window.group == 1 => (1, 1.0, 1.0, false),
        Some(Op::Gemm {
            trans_b,
            alpha,
            beta,
            ..
        }) => (
            usize::from(!*trans_b),
            f64::from(*alpha),
            f64::from(*beta),
            true,
        ),
        _ => return Ok(None),
    };
    let Some([gamma, beta, mean, var]) = bn_params(ed, n)? else {
        return Ok(None);
    };
    let c = gamma.len();
    let eps = f64::from(*epsilon);
    let s: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(&g, &v)| f64::from(g) / (f64::from(v) + eps).sqrt())
        .collect();
    let Some(w) = ed.input_constant(layer, 1)? else {
        return Ok(None);
    };
    let Ok(mut wv) = w.to_f32() else {
        return Ok(None);
    };
    if w.dims.get(axis) != Some(&c) {
        return Ok(None);
    }
    let Some(bias) = layer_bias(ed, p, c)? else {
        return Ok(None);
    };
    for (ch, sc) in s.iter().enumerate() {
        for o in w.axis_offsets(axis, ch) {
            if let Some(x) = wv.get_mut(o) {
                *x = (f64::from(*x) * sc * alpha) as f32;
            }
        }
    }
    let nb: Vec<f32> = (0..c)
        .map(|ch| {
            let (b, m, sc, be) = (bias[ch], f64::from(mean[ch]), s[ch], f64::from(beta[ch]));
            ((beta_g * b - m) * sc + be) as f32
        })
        .collect();
    Ok(Some(Fold {
        bn,
        layer,
        weight: Tensor::from_f32(w.dims.clone(), &wv)?,
        bias: Tensor::from_f32(vec![c], &nb)?,
        gemm,
    }))
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold_batchnorm"
    }

    fn preserves(&self) -> Preserves {
        Preserves::Outputs
    }

    fn run(&self, ed: &mut Editor, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let bns: Vec<NodeId> = {
            let a = ed.analysis();
            a.order()
                .iter()
                .copied()
                .filter(|&id| matches!(a.valid_op(id), Some(Op::BatchNorm { .. })))
                .collect()
        };
        let mut folded = Vec::new();
        for bn in bns {
            let Some(f) = plan(ed, bn)? else { continue };
            let l = label(ed, f.layer);
            ed.set_input_constant(f.layer, 1, &f.weight, &format!("{l}.weight_bn"))?;
            ed.set_input_constant(f.layer, 2, &f.bias, &format!("{l}.bias_bn"))?;
            if f.gemm {
                ed.remove_attr(f.layer, "alpha");
                ed.remove_attr(f.layer, "beta");
            }
            let bl = label(ed, f.bn);
            if !ed.bypass(f.bn) {
                // BN's output is a graph output: let the layer produce it directly.
                let out = ed
                    .node(f.bn)
                    .and_then(|n| n.output.first().cloned())
                    .unwrap_or_default();
                if let Some(n) = ed.node_mut(f.layer) {
                    if let Some(o) = n.output.first_mut() {
                        *o = out;
                    }
                }
                ed.remove_node(f.bn);
            }
            folded.push(bl);
        }
        Ok(PassReport {
            pass: self.name().into(),
            preserves: self.preserves(),
            changed: !folded.is_empty(),
            notes: if folded.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "folded {} BatchNormalization node(s)",
                    folded.len()
                )]
            },
            details: PassDetails::FoldBatchNorm(FoldDetails { folded }),
        })
    }
}
