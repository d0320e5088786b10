//! Folds `BatchNormalization` into the `Conv`, `ConvTranspose` or `Gemm` before it.

use crate::graph::edit::{bypass, set_node_constant};
use crate::graph::index::{node_label, GraphIndex};
use crate::graph::shapes::{attr_f, attr_i};
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};
use crate::tensor::Tensor;

/// `y = γ (x - μ) / √(σ² + ε) + β` after a linear layer becomes that layer's weights and bias:
/// `W' = W · s`, `b' = (b - μ) · s + β` with `s = γ / √(σ² + ε)` per output channel.
pub struct FoldBatchNorm;

fn f32s(ix: &GraphIndex, model: &Model, name: &str) -> Result<Option<Vec<f32>>, PassError> {
    Ok(match ix.constant(model, name)? {
        Some(t) => t.to_f32().ok(),
        None => None,
    })
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold_batchnorm"
    }

    fn preserves(&self) -> Preserves {
        Preserves::Outputs
    }

    fn run(&self, model: &mut Model, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let mut folded = Vec::new();
        let n_nodes = model.graph().node.len();
        for bi in 0..n_nodes {
            // Before the clone below (the whole graph with its weights): most nodes are not BNs.
            if model
                .graph()
                .node
                .get(bi)
                .is_none_or(|n| n.op_type != "BatchNormalization")
            {
                continue;
            }
            let ix = GraphIndex::new(model);
            let g = model.graph().clone();
            let bn = &g.node[bi];
            if bn.op_type != "BatchNormalization"
                || bn.output.len() > 1
                || attr_i(bn, "training_mode", 0) != 0
            {
                continue;
            }
            let Some(x) = bn.input.first() else { continue };
            let Some(&pi) = ix.producer.get(x) else {
                continue;
            };
            let prod = &g.node[pi];
            let op = prod.op_type.clone();
            let op = op.as_str();
            if !matches!(op, "Conv" | "ConvTranspose" | "Gemm")
                || ix.consumers_of(x).len() != 1
                || ix.graph_outputs.contains(x)
            {
                continue;
            }
            if op == "ConvTranspose" && attr_i(prod, "group", 1) != 1 {
                continue;
            }
            let mut params = Vec::with_capacity(4);
            for k in 1..=4 {
                match bn.input.get(k) {
                    Some(n) => params.push(f32s(&ix, model, n)?),
                    None => params.push(None),
                }
            }
            let [Some(gamma), Some(beta), Some(mean), Some(var)] =
                [&params[0], &params[1], &params[2], &params[3]]
            else {
                continue;
            };
            let eps = attr_f(bn, "epsilon", 1e-5) as f64;
            let c = gamma.len();
            if beta.len() != c || mean.len() != c || var.len() != c {
                continue;
            }
            let s: Vec<f64> = (0..c)
                .map(|i| gamma[i] as f64 / (var[i] as f64 + eps).sqrt())
                .collect();
            let Some(wname) = prod.input.get(1).cloned() else {
                continue;
            };
            let Some(wid) = ix.constants.get(&wname).cloned() else {
                continue;
            };
            let w = model.read(&wid)?;
            let Ok(mut wv) = w.to_f32() else { continue };
            // Output-channel axis of the weight, and Gemm's scalars.
            let (axis, alpha, beta_g) = match op {
                "Conv" => (0, 1.0, 1.0),
                "ConvTranspose" => (1, 1.0, 1.0),
                _ => {
                    if attr_i(prod, "transA", 0) != 0 && w.dims.len() != 2 {
                        continue;
                    }
                    let a = if attr_i(prod, "transB", 0) != 0 { 0 } else { 1 };
                    (
                        a,
                        attr_f(prod, "alpha", 1.0) as f64,
                        attr_f(prod, "beta", 1.0) as f64,
                    )
                }
            };
            if w.dims.get(axis) != Some(&c) {
                continue;
            }
            let bias_name = prod.input.get(2).filter(|b| !b.is_empty()).cloned();
            let mut bias = vec![0.0f64; c];
            if let Some(b) = &bias_name {
                let Some(bv) = f32s(&ix, model, b)? else {
                    continue;
                };
                match bv.len() {
                    1 => bias.iter_mut().for_each(|x| *x = bv[0] as f64),
                    n if n == c => bias = bv.iter().map(|&x| x as f64).collect(),
                    _ => continue,
                }
            }
            for (ch, sc) in s.iter().enumerate() {
                for o in w.axis_offsets(axis, ch) {
                    wv[o] = (wv[o] as f64 * sc * alpha) as f32;
                }
            }
            let nb: Vec<f32> = (0..c)
                .map(|ch| ((beta_g * bias[ch] - mean[ch] as f64) * s[ch] + beta[ch] as f64) as f32)
                .collect();
            let label = node_label(prod, pi);
            set_node_constant(
                model,
                pi,
                1,
                &Tensor::from_f32(w.dims.clone(), &wv)?,
                &format!("{label}.weight_bn"),
                Some(&wid),
            )?;
            let bid = bias_name
                .as_ref()
                .and_then(|b| ix.constants.get(b).cloned());
            set_node_constant(
                model,
                pi,
                2,
                &Tensor::from_f32(vec![c], &nb)?,
                &format!("{label}.bias_bn"),
                bid.as_ref(),
            )?;
            if op == "Gemm" {
                let n = &mut model.graph_mut().node[pi];
                n.attribute
                    .retain(|a| a.name != "alpha" && a.name != "beta");
            }
            let bn_out = model.graph().node[bi].output[0].clone();
            if bypass(model, bi) {
                folded.push(node_label(&model.graph().node[bi], bi));
            } else {
                // BN's output is a graph output: let the layer produce it directly.
                let g = model.graph_mut();
                g.node[pi].output[0] = bn_out;
                g.node[bi].output[0] = String::new();
                folded.push(label);
            }
        }
        Ok(PassReport {
            pass: self.name().into(),
            changed: !folded.is_empty(),
            details: serde_json::json!({ "folded": folded }),
            notes: if folded.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "folded {} BatchNormalization node(s)",
                    folded.len()
                )]
            },
        })
    }
}
