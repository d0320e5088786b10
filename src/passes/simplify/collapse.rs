//! Zero-entropy layers (needs calibration data). A rectifier channel that is OFF on every
//! calibration observation outputs a constant: its incoming weights are zeroed so
//! [`super::dead::RemoveDeadChannels`] removes it. A rectifier whose channels are all in their
//! linear range on every observation is the identity there: it goes, and where the merge is exact
//! its two linear neighbours become one (Gemm∘Gemm, MatMul∘MatMul, a 1×1 convolution on either
//! side). Exact only on inputs like the calibration data, which the report says.

use serde::{Deserialize, Serialize};

use crate::calib::states::{rectifier_states, NeuronStates};
use crate::graph::editor::{Editor, NodeId};
use crate::graph::groups::label;
use crate::graph::ops::{Binary, Op, Window};
use crate::passes::{Pass, PassContext, PassDetails, PassError, PassReport, Preserves};
use crate::tensor::Tensor;

pub struct CollapseZeroEntropy;

const PASS: &str = "collapse_zero_entropy";

/// One rectifier layer's statistics, for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerStates {
    pub layer: String,
    pub channels: usize,
    pub mean_entropy: f64,
    pub always_off: usize,
    pub always_linear: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollapseDetails {
    pub layers: Vec<LayerStates>,
    pub channels_made_constant: usize,
    pub collapsed: Vec<String>,
}

/// A dense layer as `y = x·W + b` with W [K, N].
struct Dense {
    node: NodeId,
    w: Vec<f64>,
    k: usize,
    n: usize,
    b: Vec<f64>,
    /// For MatMul: the bias `Add` node and which input is the constant.
    bias_add: Option<(NodeId, usize)>,
}

/// A constant's dims and values.
type Shaped = (Vec<usize>, Vec<f64>);

fn consts_f64(ed: &Editor, name: &str) -> Result<Option<Shaped>, PassError> {
    Ok(ed.constant(name)?.and_then(|t| {
        t.to_f32()
            .ok()
            .map(|v| (t.dims.clone(), v.iter().map(|&x| f64::from(x)).collect()))
    }))
}

/// Reads Gemm or MatMul(+Add) at `node` as a dense layer.
fn dense(ed: &Editor, node: NodeId) -> Result<Option<Dense>, PassError> {
    let a = ed.analysis();
    let Some(n) = ed.node(node) else {
        return Ok(None);
    };
    let Some((wd, wv)) = n
        .input
        .get(1)
        .map(|w| consts_f64(ed, w))
        .transpose()?
        .flatten()
    else {
        return Ok(None);
    };
    let &[r, c] = wd.as_slice() else {
        return Ok(None);
    };
    match a.valid_op(node) {
        Some(Op::Gemm {
            trans_a: false,
            trans_b,
            alpha,
            beta,
        }) => {
            let (alpha, beta) = (f64::from(*alpha), f64::from(*beta));
            let (k, nn) = if *trans_b { (c, r) } else { (r, c) };
            let mut w = vec![0.0; k * nn];
            for i in 0..k {
                for j in 0..nn {
                    w[i * nn + j] = alpha
                        * if *trans_b {
                            wv[j * k + i]
                        } else {
                            wv[i * nn + j]
                        };
                }
            }
            let b = match n.input.get(2).filter(|s| !s.is_empty()) {
                Some(bn) => match consts_f64(ed, bn)? {
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
        Some(Op::MatMul) => {
            let out = n.output.first().cloned().unwrap_or_default();
            let mut b = vec![0.0; c];
            let mut bias_add = None;
            if let ([(ai, kk)], false) = (a.consumers(&out).as_slice(), a.is_graph_output(&out)) {
                if matches!(a.valid_op(*ai), Some(Op::Binary(Binary::Add))) {
                    let other = 1 - (*kk).min(1);
                    let bname = ed
                        .node(*ai)
                        .and_then(|x| x.input.get(other))
                        .cloned()
                        .unwrap_or_default();
                    if let Some((bd, bv)) = consts_f64(ed, &bname)? {
                        if bv.len() == c && bd.last() == Some(&c) {
                            b = bv;
                            bias_add = Some((*ai, other));
                        }
                    }
                }
            }
            Ok(Some(Dense {
                node,
                w: wv,
                k: r,
                n: c,
                b,
                bias_add,
            }))
        }
        _ => Ok(None),
    }
}

/// The tensor a dense layer finally produces (after its bias Add, if any).
fn dense_out(ed: &Editor, d: &Dense) -> String {
    let node = d.bias_add.map_or(d.node, |(ai, _)| ai);
    ed.node(node)
        .and_then(|n| n.output.first().cloned())
        .unwrap_or_default()
}

fn f32_tensor(dims: Vec<usize>, v: &[f64]) -> Result<Tensor, PassError> {
    Ok(Tensor::from_f32(
        dims,
        &v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
    )?)
}

/// Merges `p` then `q` (the activation between them is gone) into `q`: W = Wp·Wq, b = bp·Wq + bq.
fn merge_dense(ed: &mut Editor, p: &Dense, q: &Dense) -> Result<bool, PassError> {
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
    let (wt, bt) = (f32_tensor(vec![k, n], &w)?, f32_tensor(vec![n], &b)?);
    let x = ed
        .node(p.node)
        .and_then(|n| n.input.first().cloned())
        .unwrap_or_default();
    let l = label(ed, q.node);
    let is_gemm = matches!(ed.analysis().valid_op(q.node), Some(Op::Gemm { .. }));
    match (is_gemm, q.bias_add) {
        (true, _) => {
            ed.set_input_constant(q.node, 2, &bt, &format!("{l}.merged_bias"))?;
            for attr in ["alpha", "beta", "transB"] {
                ed.remove_attr(q.node, attr);
            }
        }
        (false, Some((ai, kk))) => {
            ed.set_input_constant(ai, kk, &bt, &format!("{l}.merged_bias"))?
        }
        (false, None) if b.iter().all(|&v| v == 0.0) => {}
        (false, None) => return Ok(false),
    }
    ed.set_input_constant(q.node, 1, &wt, &format!("{l}.merged_weight"))?;
    ed.set_input(q.node, 0, &x);
    Ok(true)
}

/// 1×1 convolution, stride 1, no padding, one group: a dense layer over channels.
fn is_pointwise(w: &Window, wd: &[usize]) -> bool {
    matches!(wd, [_, _, 1, 1])
        && w.group == 1
        && w.strides.as_ref().is_none_or(|s| s.iter().all(|&x| x == 1))
        && w.unpadded()
}

/// A merged convolution: weight, its dims, bias, and whose geometry it keeps.
type MergedConv = (Vec<f64>, Vec<usize>, Vec<f64>, NodeId);

/// Merges Conv `pi` then Conv `qi` when one of them is pointwise.
fn merge_conv(ed: &mut Editor, pi: NodeId, qi: NodeId) -> Result<bool, PassError> {
    let a = ed.analysis();
    let (Some(Op::Conv(pwin)), Some(Op::Conv(qwin))) =
        (a.valid_op(pi).cloned(), a.valid_op(qi).cloned())
    else {
        return Ok(false);
    };
    let (Some(p), Some(q)) = (ed.node(pi).cloned(), ed.node(qi).cloned()) else {
        return Ok(false);
    };
    let weight = |n: &onnx_protobuf::NodeProto| {
        n.input
            .get(1)
            .map(|w| consts_f64(ed, w))
            .transpose()
            .map(Option::flatten)
    };
    let (Some((pd, pw)), Some((qd, qw))) = (weight(&p)?, weight(&q)?) else {
        return Ok(false);
    };
    if pd.len() != 4 || qd.len() != 4 || pwin.group != 1 || qwin.group != 1 {
        return Ok(false);
    }
    let bias = |n: &onnx_protobuf::NodeProto, m: usize| -> Result<Option<Vec<f64>>, PassError> {
        Ok(match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => consts_f64(ed, b)?.map(|(_, v)| v).filter(|v| v.len() == m),
            None => Some(vec![0.0; m]),
        })
    };
    let (Some(pb), Some(qb)) = (bias(&p, pd[0])?, bias(&q, qd[0])?) else {
        return Ok(false);
    };
    let (h, c, m) = (pd[0], pd[1], qd[0]);
    if qd[1] != h {
        return Ok(false);
    }
    let merged: Option<MergedConv> = if is_pointwise(&qwin, &qd) {
        let (w, b) = pointwise_after(&pd, &pw, &pb, &qw, &qb, m);
        Some((w, vec![m, c, pd[2], pd[3]], b, pi)) // the merged conv keeps p's geometry
    } else if is_pointwise(&pwin, &pd) && (qwin.unpadded() || pb.iter().all(|&x| x == 0.0)) {
        // p's bias spreads through q's taps, which padding would cut at the borders: only
        // exact without padding or with a zero bias.
        let (w, b) = pointwise_before(&pd, &pw, &pb, &qd, &qw, &qb);
        Some((w, vec![m, c, qd[2], qd[3]], b, qi))
    } else {
        None
    };
    let Some((w, wdims, b, geometry_from)) = merged else {
        return Ok(false);
    };
    if w.len() > pw.len() + qw.len() {
        return Ok(false);
    }
    let l = label(ed, qi);
    // The merged layer: q's node with the geometry of whichever conv had the kernel.
    let attrs = ed
        .node(geometry_from)
        .map(|n| n.attribute.clone())
        .unwrap_or_default();
    let x = p.input.first().cloned().unwrap_or_default();
    ed.set_input_constant(
        qi,
        1,
        &f32_tensor(wdims, &w)?,
        &format!("{l}.merged_weight"),
    )?;
    ed.set_input_constant(
        qi,
        2,
        &f32_tensor(vec![m], &b)?,
        &format!("{l}.merged_bias"),
    )?;
    if let Some(n) = ed.node_mut(qi) {
        n.attribute = attrs;
    }
    ed.set_input(qi, 0, &x);
    Ok(true)
}

/// Conv P `[h, c, kh, kw]` then pointwise Q `[m, h]`: W[m,c,:,:] = Σ_j Q[m,j] P[j,c,:,:],
/// b = Q·pb + qb.
fn pointwise_after(
    pd: &[usize],
    pw: &[f64],
    pb: &[f64],
    qw: &[f64],
    qb: &[f64],
    m: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (h, c) = (pd[0], pd[1]);
    let taps = pd[2] * pd[3];
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
    let b = (0..m)
        .map(|mo| qb[mo] + (0..h).map(|j| qw[mo * h + j] * pb[j]).sum::<f64>())
        .collect();
    (w, b)
}

/// Pointwise P `[h, c]` then Conv Q `[m, h, kh, kw]`: W[m,c,:,:] = Σ_j Q[m,j,:,:] P[j,c], and
/// p's bias summed over q's taps.
fn pointwise_before(
    pd: &[usize],
    pw: &[f64],
    pb: &[f64],
    qd: &[usize],
    qw: &[f64],
    qb: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (h, c, m) = (pd[0], pd[1], qd[0]);
    let taps = qd[2] * qd[3];
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
    let b = (0..m)
        .map(|mo| {
            qb[mo]
                + (0..h)
                    .map(|j| pb[j] * (0..taps).map(|t| qw[(mo * h + j) * taps + t]).sum::<f64>())
                    .sum::<f64>()
        })
        .collect();
    (w, b)
}

/// Zeroes the incoming weights of always-OFF channels of a rectifier fed directly by a layer
/// (the only producer of its input): the channel's output stays the constant OFF value.
fn zero_off_channels(ed: &mut Editor, st: &NeuronStates) -> Result<usize, PassError> {
    let off: Vec<usize> = (0..st.channels()).filter(|&c| st.always_off(c)).collect();
    if off.is_empty() || st.lo != 0.0 {
        return Ok(0);
    }
    let a = ed.analysis();
    let Some(pi) = a.producer(&st.tensor) else {
        return Ok(0);
    };
    if a.consumers(&st.tensor).len() != 1 {
        return Ok(0);
    }
    let axis = match a.valid_op(pi) {
        Some(Op::Conv(w)) if w.group == 1 => 0,
        Some(Op::Gemm {
            trans_a: false,
            trans_b,
            ..
        }) => usize::from(!*trans_b),
        _ => return Ok(0),
    };
    let Some(p) = ed.node(pi).cloned() else {
        return Ok(0);
    };
    let Some(w) = ed.input_constant(pi, 1)? else {
        return Ok(0);
    };
    let Ok(mut wv) = w.to_f32() else { return Ok(0) };
    if w.dims.get(axis) != Some(&st.channels()) {
        return Ok(0);
    }
    for &c in &off {
        for o in w.axis_offsets(axis, c) {
            if let Some(x) = wv.get_mut(o) {
                *x = 0.0;
            }
        }
    }
    let l = label(ed, pi);
    ed.set_input_constant(
        pi,
        1,
        &Tensor::from_f32(w.dims.clone(), &wv)?,
        &format!("{l}.weight"),
    )?;
    if let Some(bn) = p.input.get(2).filter(|s| !s.is_empty()) {
        if let Some(bt) = ed.constant(bn)? {
            if let Ok(mut bv) = bt.to_f32() {
                if bv.len() == st.channels() {
                    for &c in &off {
                        bv[c] = 0.0;
                    }
                    ed.set_input_constant(
                        pi,
                        2,
                        &Tensor::from_f32(bt.dims.clone(), &bv)?,
                        &format!("{l}.bias"),
                    )?;
                }
            }
        }
    }
    Ok(off.len())
}

/// Removes a rectifier that is linear on every observation, merging its neighbours if exact.
fn collapse_linear(ed: &mut Editor, st: &NeuronStates) -> Result<Option<String>, PassError> {
    if !(0..st.channels()).all(|c| st.always_linear(c)) {
        return Ok(None);
    }
    let r = st.node;
    let out = ed
        .node(r)
        .and_then(|n| n.output.first().cloned())
        .unwrap_or_default();
    // Neighbours as they are before the bypass; the chain is private when the rectifier is
    // its input's only reader.
    let (producer, next, single_use) = {
        let a = ed.analysis();
        let cons = a.consumers(&out);
        (
            a.producer(&st.tensor),
            (cons.len() == 1)
                .then(|| cons.first().map(|c| c.0))
                .flatten(),
            a.consumers(&st.tensor).len() == 1,
        )
    };
    let l = label(ed, r);
    if !ed.bypass(r) {
        return Ok(None);
    }
    ed.remove_node(r);
    let removed = Some(format!("{l}: removed"));
    let (Some(pi), Some(qi)) = (producer, next) else {
        return Ok(removed);
    };
    // For a MatMul with a bias Add, the rectifier's input is the Add's output.
    let pnode = {
        let a = ed.analysis();
        match a.valid_op(pi) {
            Some(Op::Binary(Binary::Add)) => {
                match ed
                    .node(pi)
                    .and_then(|n| n.input.iter().find_map(|i| a.producer(i)))
                {
                    Some(mm) if matches!(a.valid_op(mm), Some(Op::MatMul)) => mm,
                    _ => return Ok(removed),
                }
            }
            _ => pi,
        }
    };
    let kinds = (
        ed.analysis().valid_op(pnode).cloned(),
        ed.analysis().valid_op(qi).cloned(),
    );
    let merged = match kinds {
        (Some(Op::Gemm { .. } | Op::MatMul), Some(Op::Gemm { .. } | Op::MatMul)) => {
            match (dense(ed, pnode)?, dense(ed, qi)?) {
                (Some(p), Some(q)) if dense_out(ed, &p) == st.tensor && single_use => {
                    merge_dense(ed, &p, &q)?
                }
                _ => false,
            }
        }
        (Some(Op::Conv(_)), Some(Op::Conv(_))) if single_use => merge_conv(ed, pnode, qi)?,
        _ => false,
    };
    Ok(Some(if merged {
        format!(
            "{l}: removed; {} merged into {}",
            label(ed, pnode),
            label(ed, qi)
        )
    } else {
        format!("{l}: removed")
    }))
}

impl Pass for CollapseZeroEntropy {
    fn name(&self) -> &'static str {
        PASS
    }

    fn preserves(&self) -> Preserves {
        Preserves::OutputsOnCalibration
    }

    fn run(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let calib = ctx
            .calib
            .ok_or(PassError::NeedsCalibration { pass: PASS })?;
        let rt = ctx.runtime(PASS)?;
        let states = rectifier_states(rt, ed, calib)?;
        let layers = states
            .iter()
            .map(|st| LayerStates {
                layer: st.name.clone(),
                channels: st.channels(),
                mean_entropy: st.mean_entropy(),
                always_off: (0..st.channels()).filter(|&c| st.always_off(c)).count(),
                always_linear: (0..st.channels()).filter(|&c| st.always_linear(c)).count(),
            })
            .collect();
        // Collapsing a layer changes node wiring, so OFF channels go first (weights only).
        let mut zeroed = 0;
        for st in &states {
            zeroed += zero_off_channels(ed, st)?;
        }
        let mut collapsed = Vec::new();
        for st in &states {
            collapsed.extend(collapse_linear(ed, st)?);
        }
        let mut notes = Vec::new();
        if zeroed > 0 {
            notes.push(format!("{zeroed} always-OFF channel(s) made constant"));
        }
        notes.extend(collapsed.iter().cloned());
        let changed = zeroed > 0 || !collapsed.is_empty();
        if changed {
            notes.push(format!(
                "exact on inputs like the calibration data ({} samples), not on arbitrary inputs",
                calib.samples
            ));
        }
        Ok(PassReport {
            pass: self.name().into(),
            preserves: self.preserves(),
            changed,
            details: PassDetails::Collapse(CollapseDetails {
                layers,
                channels_made_constant: zeroed,
                collapsed,
            }),
            notes,
        })
    }
}
