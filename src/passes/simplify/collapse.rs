//! Zero-entropy layers (needs calibration data). A rectifier channel that is OFF on every
//! calibration observation outputs a constant: its incoming weights are zeroed so
//! [`super::dead::RemoveDeadChannels`] removes it. A rectifier whose channels are all in their
//! linear range on every observation is the identity there: it goes, and where the merge is exact
//! its two linear neighbours become one (Gemm∘Gemm, MatMul∘MatMul, a 1×1 convolution on either
//! side). Exact only on inputs like the calibration data, which the report says.

use crate::calib::states::{rectifier_states, NeuronStates};
use crate::graph::edit::{bypass, set_node_constant};
use crate::graph::index::{node_label, GraphIndex};
use crate::graph::shapes::{attr_f, attr_i, attr_ints, attr_s};
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};
use crate::tensor::Tensor;

pub struct CollapseZeroEntropy;

/// A dense layer as `y = x·W + b` with W [K, N].
struct Dense {
    node: usize,
    w: Vec<f64>,
    k: usize,
    n: usize,
    b: Vec<f64>,
    /// For MatMul: the bias `Add` node and which input is the constant.
    bias_add: Option<(usize, usize)>,
}

/// A constant's dims and values.
type Shaped = (Vec<usize>, Vec<f64>);

fn consts_f64(model: &Model, ix: &GraphIndex, name: &str) -> Result<Option<Shaped>, PassError> {
    Ok(match ix.constant(model, name)? {
        Some(t) => t
            .to_f32()
            .ok()
            .map(|v| (t.dims.clone(), v.iter().map(|&x| x as f64).collect())),
        None => None,
    })
}

/// Reads Gemm or MatMul(+Add) at `node` as a dense layer.
fn dense(model: &Model, ix: &GraphIndex, node: usize) -> Result<Option<Dense>, PassError> {
    let n = &model.graph().node[node];
    let Some(wn) = n.input.get(1) else {
        return Ok(None);
    };
    let Some((wd, wv)) = consts_f64(model, ix, wn)? else {
        return Ok(None);
    };
    if wd.len() != 2 {
        return Ok(None);
    }
    match n.op_type.as_str() {
        "Gemm" => {
            if attr_i(n, "transA", 0) != 0 {
                return Ok(None);
            }
            let (alpha, beta) = (
                attr_f(n, "alpha", 1.0) as f64,
                attr_f(n, "beta", 1.0) as f64,
            );
            let tb = attr_i(n, "transB", 0) != 0;
            let (k, nn) = if tb { (wd[1], wd[0]) } else { (wd[0], wd[1]) };
            let mut w = vec![0.0; k * nn];
            for i in 0..k {
                for j in 0..nn {
                    w[i * nn + j] = alpha * if tb { wv[j * k + i] } else { wv[i * nn + j] };
                }
            }
            let b = match n.input.get(2).filter(|s| !s.is_empty()) {
                Some(bn) => match consts_f64(model, ix, bn)? {
                    Some((_, v)) if v.len() == nn => v.iter().map(|x| x * beta).collect(),
                    Some((_, v)) if v.len() == 1 => vec![v[0] * beta; nn],
                    _ => return Ok(None),
                },
                None => vec![0.0; nn],
            };
            Ok(Some(Dense {
                node,
                w,
                k,
                n: nn,
                b,
                bias_add: None,
            }))
        }
        "MatMul" => {
            let (k, nn) = (wd[0], wd[1]);
            let out = &n.output[0];
            let mut b = vec![0.0; nn];
            let mut bias_add = None;
            let cons = ix.consumers_of(out);
            if cons.len() == 1 && !ix.graph_outputs.contains(out) {
                let (ai, kk) = cons[0];
                let a = &model.graph().node[ai];
                if a.op_type == "Add" {
                    if let Some((bd, bv)) = consts_f64(model, ix, &a.input[1 - kk])? {
                        if bv.len() == nn && bd.last() == Some(&nn) {
                            b = bv;
                            bias_add = Some((ai, 1 - kk));
                        }
                    }
                }
            }
            Ok(Some(Dense {
                node,
                w: wv,
                k,
                n: nn,
                b,
                bias_add,
            }))
        }
        _ => Ok(None),
    }
}

/// The tensor a dense layer finally produces (after its bias Add, if any).
fn dense_out(model: &Model, d: &Dense) -> String {
    match d.bias_add {
        Some((ai, _)) => model.graph().node[ai].output[0].clone(),
        None => model.graph().node[d.node].output[0].clone(),
    }
}

/// Merges `p` then `q` (the activation between them is gone) into `q`: W = Wp·Wq, b = bp·Wq + bq.
fn merge_dense(model: &mut Model, p: &Dense, q: &Dense) -> Result<bool, PassError> {
    if p.n != q.k || p.k * q.n > p.k * p.n + q.k * q.n {
        return Ok(false); // not a chain, or the product would be bigger than the pair
    }
    let (k, h, n) = (p.k, p.n, q.n);
    let mut w = vec![0.0f64; k * n];
    for i in 0..k {
        for l in 0..h {
            let a = p.w[i * h + l];
            if a == 0.0 {
                continue;
            }
            for j in 0..n {
                w[i * n + j] += a * q.w[l * n + j];
            }
        }
    }
    let b: Vec<f64> = (0..n)
        .map(|j| q.b[j] + (0..h).map(|l| p.b[l] * q.w[l * n + j]).sum::<f64>())
        .collect();
    let wt = Tensor::from_f32(vec![k, n], &w.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
    let bt = Tensor::from_f32(vec![n], &b.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
    let x = model.graph().node[p.node].input[0].clone();
    let label = node_label(&model.graph().node[q.node], q.node);
    let ix = GraphIndex::new(model);
    let qn = model.graph().node[q.node].clone();
    let wid = ix.constants.get(&qn.input[1]).cloned();
    set_node_constant(
        model,
        q.node,
        1,
        &wt,
        &format!("{label}.merged_weight"),
        wid.as_ref(),
    )?;
    match qn.op_type.as_str() {
        "Gemm" => {
            let bid = qn
                .input
                .get(2)
                .filter(|s| !s.is_empty())
                .and_then(|s| ix.constants.get(s).cloned());
            set_node_constant(
                model,
                q.node,
                2,
                &bt,
                &format!("{label}.merged_bias"),
                bid.as_ref(),
            )?;
            let node = &mut model.graph_mut().node[q.node];
            node.attribute
                .retain(|a| !matches!(a.name.as_str(), "alpha" | "beta" | "transB"));
        }
        _ => match q.bias_add {
            Some((ai, kk)) => {
                let bname = model.graph().node[ai].input[kk].clone();
                let bid = ix.constants.get(&bname).cloned();
                set_node_constant(
                    model,
                    ai,
                    kk,
                    &bt,
                    &format!("{label}.merged_bias"),
                    bid.as_ref(),
                )?;
            }
            None if b.iter().all(|&v| v == 0.0) => {}
            None => return Ok(false),
        },
    }
    model.graph_mut().node[q.node].input[0] = x;
    Ok(true)
}

/// 1×1 convolution, stride 1, no padding, one group: a dense layer over channels.
fn is_pointwise(n: &onnx_protobuf::NodeProto, wd: &[usize]) -> bool {
    n.op_type == "Conv"
        && wd.len() == 4
        && wd[2] == 1
        && wd[3] == 1
        && attr_i(n, "group", 1) == 1
        && attr_ints(n, "strides").is_none_or(|s| s.iter().all(|&x| x == 1))
        && attr_ints(n, "pads").is_none_or(|s| s.iter().all(|&x| x == 0))
        && attr_s(n, "auto_pad").is_none_or(|s| s.is_empty() || s == "NOTSET" || s == "VALID")
}

/// Merges Conv `p` then Conv `q` when one of them is pointwise.
fn merge_conv(model: &mut Model, ix: &GraphIndex, pi: usize, qi: usize) -> Result<bool, PassError> {
    let g = model.graph();
    let (p, q) = (g.node[pi].clone(), g.node[qi].clone());
    let (Some((pd, pw)), Some((qd, qw))) = (
        consts_f64(model, ix, &p.input[1])?,
        consts_f64(model, ix, &q.input[1])?,
    ) else {
        return Ok(false);
    };
    if pd.len() != 4 || qd.len() != 4 || attr_i(&p, "group", 1) != 1 || attr_i(&q, "group", 1) != 1
    {
        return Ok(false);
    }
    let bias = |n: &onnx_protobuf::NodeProto, m: usize| -> Result<Option<Vec<f64>>, PassError> {
        Ok(match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => consts_f64(model, ix, b)?
                .map(|(_, v)| v)
                .filter(|v| v.len() == m),
            None => Some(vec![0.0; m]),
        })
    };
    let (Some(pb), Some(qb)) = (bias(&p, pd[0])?, bias(&q, qd[0])?) else {
        return Ok(false);
    };
    let (h, c, kh, kw) = (pd[0], pd[1], pd[2], pd[3]);
    let m = qd[0];
    if qd[1] != h {
        return Ok(false);
    }
    let (w, wdims, b, node_from) = if is_pointwise(&q, &qd) {
        // W[m,c,:,:] = Σ_j Q[m,j] P[j,c,:,:]; b = Q·pb + qb
        let taps = kh * kw;
        let mut w = vec![0.0; m * c * taps];
        for mo in 0..m {
            for j in 0..h {
                let a = qw[mo * h + j];
                if a == 0.0 {
                    continue;
                }
                for ci in 0..c {
                    for t in 0..taps {
                        w[(mo * c + ci) * taps + t] += a * pw[(j * c + ci) * taps + t];
                    }
                }
            }
        }
        let b: Vec<f64> = (0..m)
            .map(|mo| qb[mo] + (0..h).map(|j| qw[mo * h + j] * pb[j]).sum::<f64>())
            .collect();
        (w, vec![m, c, kh, kw], b, &p) // the merged conv keeps p's geometry
    } else if is_pointwise(&p, &pd) {
        // W[m,c,:,:] = Σ_j Q[m,j,:,:] P[j,c]; p's bias spreads through q's taps, which padding
        // would cut at the borders: only exact without padding or with a zero bias.
        let padded = attr_ints(&q, "pads").is_some_and(|s| s.iter().any(|&x| x != 0))
            || attr_s(&q, "auto_pad").is_some_and(|s| s.starts_with("SAME"));
        if padded && pb.iter().any(|&x| x != 0.0) {
            return Ok(false);
        }
        let (qkh, qkw) = (qd[2], qd[3]);
        let taps = qkh * qkw;
        let mut w = vec![0.0; m * c * taps];
        for mo in 0..m {
            for j in 0..h {
                for t in 0..taps {
                    let a = qw[(mo * h + j) * taps + t];
                    if a == 0.0 {
                        continue;
                    }
                    for ci in 0..c {
                        w[(mo * c + ci) * taps + t] += a * pw[j * c + ci];
                    }
                }
            }
        }
        let b: Vec<f64> = (0..m)
            .map(|mo| {
                qb[mo]
                    + (0..h)
                        .map(|j| {
                            pb[j] * (0..taps).map(|t| qw[(mo * h + j) * taps + t]).sum::<f64>()
                        })
                        .sum::<f64>()
            })
            .collect();
        (w, vec![m, c, qkh, qkw], b, &q)
    } else {
        return Ok(false);
    };
    if w.len() > pw.len() + qw.len() {
        return Ok(false);
    }
    let label = node_label(&q, qi);
    let wt = Tensor::from_f32(wdims, &w.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
    let bt = Tensor::from_f32(vec![m], &b.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
    // The merged layer: q's node with the geometry of whichever conv had the kernel.
    let attrs = node_from.attribute.clone();
    let x = p.input[0].clone();
    let wid = ix.constants.get(&q.input[1]).cloned();
    set_node_constant(
        model,
        qi,
        1,
        &wt,
        &format!("{label}.merged_weight"),
        wid.as_ref(),
    )?;
    let bid = q
        .input
        .get(2)
        .filter(|s| !s.is_empty())
        .and_then(|s| ix.constants.get(s).cloned());
    set_node_constant(
        model,
        qi,
        2,
        &bt,
        &format!("{label}.merged_bias"),
        bid.as_ref(),
    )?;
    let n = &mut model.graph_mut().node[qi];
    n.attribute = attrs;
    n.input[0] = x;
    Ok(true)
}

impl CollapseZeroEntropy {
    /// Zeroes the incoming weights of always-OFF channels of a rectifier fed directly by a
    /// layer (the only producer of its input): the channel's output stays the constant OFF value.
    fn zero_off_channels(&self, model: &mut Model, st: &NeuronStates) -> Result<usize, PassError> {
        let off: Vec<usize> = (0..st.channels()).filter(|&c| st.always_off(c)).collect();
        if off.is_empty() || st.lo != 0.0 {
            return Ok(0);
        }
        let ix = GraphIndex::new(model);
        let Some(&pi) = ix.producer.get(&st.tensor) else {
            return Ok(0);
        };
        if ix.consumers_of(&st.tensor).len() != 1 {
            return Ok(0);
        }
        let p = model.graph().node[pi].clone();
        let axis = match p.op_type.as_str() {
            "Conv" if attr_i(&p, "group", 1) == 1 => 0,
            "Gemm" if attr_i(&p, "transA", 0) == 0 => {
                if attr_i(&p, "transB", 0) != 0 {
                    0
                } else {
                    1
                }
            }
            _ => return Ok(0),
        };
        let Some(wid) = ix.constants.get(&p.input[1]).cloned() else {
            return Ok(0);
        };
        let w = model.read(&wid)?;
        let Ok(mut wv) = w.to_f32() else { return Ok(0) };
        if w.dims.get(axis) != Some(&st.channels()) {
            return Ok(0);
        }
        for &c in &off {
            for o in w.axis_offsets(axis, c) {
                wv[o] = 0.0;
            }
        }
        let label = node_label(&p, pi);
        set_node_constant(
            model,
            pi,
            1,
            &Tensor::from_f32(w.dims.clone(), &wv)?,
            &format!("{label}.weight"),
            Some(&wid),
        )?;
        if let Some(bn) = p.input.get(2).filter(|s| !s.is_empty()) {
            if let Some(bt) = ix.constant(model, bn)? {
                if let Ok(mut bv) = bt.to_f32() {
                    if bv.len() == st.channels() {
                        for &c in &off {
                            bv[c] = 0.0;
                        }
                        let bid = ix.constants.get(bn).cloned();
                        set_node_constant(
                            model,
                            pi,
                            2,
                            &Tensor::from_f32(bt.dims.clone(), &bv)?,
                            &format!("{label}.bias"),
                            bid.as_ref(),
                        )?;
                    }
                }
            }
        }
        Ok(off.len())
    }

    /// Removes a rectifier that is linear on every observation, merging its neighbours if exact.
    fn collapse_linear(
        &self,
        model: &mut Model,
        st: &NeuronStates,
    ) -> Result<Option<String>, PassError> {
        if !(0..st.channels()).all(|c| st.always_linear(c)) {
            return Ok(None);
        }
        let ix = GraphIndex::new(model);
        let r = st.node;
        let rn = model.graph().node[r].clone();
        let out = rn.output[0].clone();
        if !bypass(model, r) {
            return Ok(None);
        }
        let label = node_label(&rn, r);
        // Merge the linear op before with the one after, when the chain is private.
        let cons = ix.consumers_of(&out);
        let Some(&pi) = ix.producer.get(&st.tensor) else {
            return Ok(Some(format!("{label}: removed")));
        };
        if cons.len() != 1 {
            return Ok(Some(format!("{label}: removed")));
        }
        let qi = cons[0].0;
        let pop = model.graph().node[pi].op_type.clone();
        // For a MatMul with a bias Add, the rectifier's input is the Add's output.
        let pnode = if pop == "Add" {
            match model.graph().node[pi]
                .input
                .iter()
                .find_map(|i| ix.producer.get(i))
            {
                Some(&mm) if model.graph().node[mm].op_type == "MatMul" => mm,
                _ => return Ok(Some(format!("{label}: removed"))),
            }
        } else {
            pi
        };
        let merged = match (
            model.graph().node[pnode].op_type.as_str(),
            model.graph().node[qi].op_type.as_str(),
        ) {
            ("Gemm" | "MatMul", "Gemm" | "MatMul") => {
                let (Some(p), Some(q)) = (dense(model, &ix, pnode)?, dense(model, &ix, qi)?) else {
                    return Ok(Some(format!("{label}: removed")));
                };
                if dense_out(model, &p) != st.tensor || ix.consumers_of(&st.tensor).len() != 1 {
                    false
                } else {
                    merge_dense(model, &p, &q)?
                }
            }
            ("Conv", "Conv") if ix.consumers_of(&st.tensor).len() == 1 => {
                merge_conv(model, &ix, pnode, qi)?
            }
            _ => false,
        };
        let qlabel = node_label(&model.graph().node[qi], qi);
        Ok(Some(if merged {
            format!(
                "{label}: removed; {} merged into {qlabel}",
                node_label(&model.graph().node[pnode], pnode)
            )
        } else {
            format!("{label}: removed")
        }))
    }
}

impl Pass for CollapseZeroEntropy {
    fn name(&self) -> &'static str {
        "collapse_zero_entropy"
    }

    fn preserves(&self) -> Preserves {
        Preserves::OutputsOnCalibration
    }

    fn run(&self, model: &mut Model, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let calib = ctx.calib.ok_or(PassError::NeedsCalibration {
            pass: "collapse_zero_entropy",
        })?;
        let rt = ctx.runtime.ok_or(PassError::Invalid {
            pass: "collapse_zero_entropy",
            reason: "needs ONNX Runtime".into(),
        })?;
        let states = rectifier_states(rt, model, calib)?;
        let mut layers = Vec::new();
        let mut zeroed = 0;
        let mut collapsed = Vec::new();
        for st in &states {
            let off = (0..st.channels()).filter(|&c| st.always_off(c)).count();
            let lin = (0..st.channels()).filter(|&c| st.always_linear(c)).count();
            layers.push(serde_json::json!({
                "layer": st.name, "channels": st.channels(), "mean_entropy": st.mean_entropy(),
                "always_off": off, "always_linear": lin,
            }));
        }
        // Collapsing a layer changes node wiring, so OFF channels go first (weights only).
        for st in &states {
            zeroed += self.zero_off_channels(model, st)?;
        }
        for st in &states {
            if let Some(msg) = self.collapse_linear(model, st)? {
                collapsed.push(msg);
            }
        }
        let mut notes = Vec::new();
        if zeroed > 0 {
            notes.push(format!("{zeroed} always-OFF channel(s) made constant"));
        }
        notes.extend(collapsed.iter().cloned());
        if zeroed > 0 || !collapsed.is_empty() {
            notes.push(format!(
                "exact on inputs like the calibration data ({} samples), not on arbitrary inputs",
                calib.samples
            ));
        }
        Ok(PassReport {
            pass: self.name().into(),
            changed: zeroed > 0 || !collapsed.is_empty(),
            details: serde_json::json!({ "layers": layers, "channels_made_constant": zeroed, "collapsed": collapsed }),
            notes,
        })
    }
}
