//! Physically removes dead channels: output channels whose incoming weights are all zero in every
//! layer of their channel group. Such a channel's value does not depend on the input (its bias,
//! through the per-channel ops of the group), so each consumer gets that constant contribution,
//! and the channel leaves every coupled tensor.
//!
//! The contribution must stay exact at every input size the model accepts:
//! - into a dense layer, or a convolution that does not pad: a bias;
//! - into a padded convolution, where the contribution shrinks near the borders: with static
//!   sizes an exact per-position bias map; with symbolic sizes a one-channel convolution of a
//!   map of ones with the dead channels' summed kernel, which is exact at any size (zero padding
//!   of a constant map is what a convolution of ones computes);
//! - a channel whose value already varies near the borders (a padded depthwise convolution on
//!   its way) with symbolic sizes: kept, with the reason.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::calib::capture::{capture, Source};
use crate::graph::edit::node as mk_node;
use crate::graph::editor::{Editor, NodeId};
use crate::graph::groups::{
    channel_groups, label, reshape_target_element, ChannelGroup, ParamRole, Placement,
    TargetElement,
};
use crate::graph::ops::{Binary, Op, Window};
use crate::passes::{Pass, PassContext, PassDetails, PassError, PassReport, Preserves};
use crate::tensor::Tensor;

pub struct RemoveDeadChannels;

const PASS: &str = "remove_dead_channels";

/// One group's removal, for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removal {
    pub group: String,
    pub channels_before: usize,
    pub removed: usize,
    pub consumers_rebiased: usize,
    pub bias_maps: usize,
    /// Padded convolutions given a one-channel border convolution (symbolic sizes).
    pub border_convolutions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadDetails {
    pub removals: Vec<Removal>,
    pub skipped: Vec<String>,
    pub channels_removed: usize,
}

/// Dead channels of a prunable group: every source's weight slice is zero.
fn dead_channels(ed: &Editor, g: &ChannelGroup) -> Result<Vec<usize>, PassError> {
    let mut weights = Vec::new();
    for p in g
        .params
        .iter()
        .filter(|p| p.role == ParamRole::SourceWeight)
    {
        let Some(t) = ed.constant(&p.name)? else {
            return Ok(vec![]);
        };
        let Ok(v) = t.to_f32() else { return Ok(vec![]) };
        weights.push((p.place, t, v));
    }
    if weights.len() != g.sources.len() {
        return Ok(vec![]);
    }
    Ok((0..g.channels)
        .filter(|&c| {
            weights.iter().all(|(pl, t, v)| match pl.range(c) {
                Some(r) => r.into_iter().all(|i| {
                    t.axis_offsets(pl.axis, i)
                        .iter()
                        .all(|&o| v.get(o) == Some(&0.0))
                }),
                None => true,
            })
        })
        .collect())
}

/// Values of the given indices along `axis` of `t`, as [index][position].
fn gather_axis(t: &Tensor, axis: usize, idx: &[usize]) -> Result<Vec<Vec<f32>>, PassError> {
    let v = t.to_f32()?;
    Ok(idx
        .iter()
        .map(|&i| {
            t.axis_offsets(axis, i)
                .iter()
                .map(|&o| v.get(o).copied().unwrap_or(f32::NAN))
                .collect()
        })
        .collect())
}

/// What a consumer gets for the dead channels it loses.
enum Update {
    /// Added to its bias (Conv/Gemm input 2, or after a MatMul).
    Bias { node: NodeId, add: Vec<f64> },
    /// An exact per-position map added after it (static sizes).
    Map {
        node: NodeId,
        map: Vec<f64>,
        dims: Vec<usize>,
    },
    /// A one-channel convolution of ones with this kernel [M, 1, k...] added after it.
    Border { node: NodeId, kernel: Tensor },
}

/// 2-D convolution geometry of a consumer at concrete sizes.
struct Geometry {
    in_hw: (usize, usize),
    out_hw: (usize, usize),
    strides: (usize, usize),
    pads: (usize, usize),
    dil: (usize, usize),
}

fn geometry(w: &Window, wdims: &[usize], xs: &[usize], ys: &[usize]) -> Option<Geometry> {
    let (&[_, _, h, wd], &[_, _, ho, wo]) = (xs, ys) else {
        return None;
    };
    let e = |v: usize| crate::graph::sym::Expr::int(i64::try_from(v).unwrap_or(i64::MAX));
    let mut pads = [0usize; 2];
    let mut strides = [1usize; 2];
    let mut dil = [1usize; 2];
    for i in 0..2 {
        let aw = w.axis(i, 2, crate::graph::sym::known(wdims.get(2..)?).as_deref())?;
        let (input, output) = (e(*[h, wd].get(i)?), e(*[ho, wo].get(i)?));
        let (b, _) = w.applied_pads(&input, &output, &aw)?;
        *pads.get_mut(i)? = b.as_usize()?;
        *strides.get_mut(i)? = usize::try_from(aw.stride).ok()?;
        *dil.get_mut(i)? = usize::try_from(aw.dilation).ok()?;
    }
    Some(Geometry {
        in_hw: (h, wd),
        out_hw: (ho, wo),
        strides: (strides[0], strides[1]),
        pads: (pads[0], pads[1]),
        dil: (dil[0], dil[1]),
    })
}

/// Per-position contribution of constant input maps through a 2-D Conv: out[m][y][x].
fn conv_contribution(
    maps: &[Vec<f32>],
    chans: &[usize],
    w: &Tensor,
    g: &Geometry,
) -> Result<Vec<f64>, PassError> {
    let wv = w.to_f32()?;
    let &[m, cin, kh, kw] = w.dims.as_slice() else {
        return Err(PassError::Invalid {
            pass: PASS,
            reason: "not a 2-D convolution weight".into(),
        });
    };
    let ((h, wd), (ho, wo)) = (g.in_hw, g.out_hw);
    let mut out = vec![0.0f64; m * ho * wo];
    for (map, &c) in maps.iter().zip(chans) {
        for mo in 0..m {
            for ky in 0..kh {
                for kx in 0..kw {
                    let wt = f64::from(wv[((mo * cin + c) * kh + ky) * kw + kx]);
                    if wt == 0.0 {
                        continue;
                    }
                    for y in 0..ho {
                        let iy = (y * g.strides.0 + ky * g.dil.0) as isize - g.pads.0 as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for x in 0..wo {
                            let ixx = (x * g.strides.1 + kx * g.dil.1) as isize - g.pads.1 as isize;
                            if ixx < 0 || ixx >= wd as isize {
                                continue;
                            }
                            out[(mo * ho + y) * wo + x] +=
                                wt * f64::from(map[iy as usize * wd + ixx as usize]);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `Σ_d v_d · W[:, d]` over the dead input channels `idx` (values `v`), as a [M, 1, k...] kernel.
fn summed_kernel(w: &Tensor, idx: &[usize], v: &[f32]) -> Result<Tensor, PassError> {
    let wv = w.to_f32()?;
    let (m, cin) = (
        w.dims.first().copied().unwrap_or(0),
        w.dims.get(1).copied().unwrap_or(0),
    );
    let taps: usize = w.dims.get(2..).map_or(1, |d| d.iter().product());
    let mut k = vec![0.0f64; m * taps];
    for (&c, &val) in idx.iter().zip(v) {
        for mo in 0..m {
            for t in 0..taps {
                k[mo * taps + t] += f64::from(val) * f64::from(wv[(mo * cin + c) * taps + t]);
            }
        }
    }
    let mut dims = vec![m, 1];
    dims.extend(w.dims.get(2..).unwrap_or_default());
    Ok(Tensor::from_f32(
        dims,
        &k.iter().map(|&x| x as f32).collect::<Vec<_>>(),
    )?)
}

/// The consumer update for dead channels `idx` whose values at this consumer's input are `va`
/// ([channel][position], the same on two seeded inputs). `Err` when it cannot be exact.
fn consumer_update(
    ed: &Editor,
    ci: NodeId,
    tensor: &str,
    observed: &[usize],
    idx: &[usize],
    va: &[Vec<f32>],
) -> Result<Result<Option<Update>, String>, PassError> {
    if va.iter().flatten().all(|&x| x == 0.0) {
        return Ok(Ok(None)); // contributes nothing
    }
    let a = ed.analysis();
    let Some(n) = ed.node(ci) else {
        return Ok(Err("consumer gone".into()));
    };
    let Some(w) = n
        .input
        .get(1)
        .map(|x| ed.constant(x))
        .transpose()?
        .flatten()
    else {
        return Ok(Err("consumer weight not constant".into()));
    };
    let uniform = va.iter().all(|pos| pos.iter().all(|&x| x == pos[0]));
    let values: Vec<f32> = va
        .iter()
        .map(|p| p.first().copied().unwrap_or(0.0))
        .collect();
    let seen = Seen {
        idx,
        va,
        values: &values,
        uniform,
    };
    match a.valid_op(ci) {
        Some(Op::Gemm { trans_b, alpha, .. }) => {
            dense_update(ci, &w, *trans_b, f64::from(*alpha), &seen)
        }
        Some(Op::MatMul) => dense_update(ci, &w, false, 1.0, &seen),
        Some(Op::Conv(win)) => {
            let out0 = n.output.first().cloned().unwrap_or_default();
            conv_update(ed, ci, win, &w, (tensor, &out0), observed, &seen)
        }
        _ => Ok(Err(format!(
            "{} consumers cannot take a constant input",
            n.op_type
        ))),
    }
}

/// The removed channels' values as a consumer sees them.
struct Seen<'a> {
    idx: &'a [usize],
    /// [channel][position].
    va: &'a [Vec<f32>],
    /// Each channel's first value.
    values: &'a [f32],
    /// Every channel the same at every position.
    uniform: bool,
}

/// A `Gemm`/`MatMul` consumer: the removed features' contribution as a bias.
fn dense_update(
    ci: NodeId,
    w: &Tensor,
    trans_b: bool,
    alpha: f64,
    seen: &Seen,
) -> Result<Result<Option<Update>, String>, PassError> {
    // Each removed feature must be the same on every row/token.
    if !seen.uniform {
        return Ok(Err("removed features vary across positions".into()));
    }
    let (rows, cols) = (
        w.dims.first().copied().unwrap_or(0),
        w.dims.get(1).copied().unwrap_or(0),
    );
    let wv = w.to_f32()?;
    let out = if trans_b { rows } else { cols };
    let mut add = vec![0.0f64; out];
    for (&i, &val) in seen.idx.iter().zip(seen.values) {
        for (j, s) in add.iter_mut().enumerate() {
            let wij = if trans_b {
                wv[j * cols + i]
            } else {
                wv[i * cols + j]
            };
            *s += alpha * f64::from(val) * f64::from(wij);
        }
    }
    Ok(Ok(Some(Update::Bias { node: ci, add })))
}

/// A 2-D `Conv` consumer reading `tensor` into `out0`: a bias when the contribution is flat,
/// a map at fixed spatial sizes, else a border correction (or a refusal).
fn conv_update(
    ed: &Editor,
    ci: NodeId,
    win: &Window,
    w: &Tensor,
    (tensor, out0): (&str, &str),
    observed: &[usize],
    seen: &Seen,
) -> Result<Result<Option<Update>, String>, PassError> {
    if w.dims.len() != 4 {
        return Ok(Err("only 2-D convolutions take a constant input".into()));
    }
    let a = ed.analysis();
    // Fixed spatial sizes allow a map (the batch, symbolic or not, broadcasts).
    let spatial = |t: &str| {
        let d = a.shape(t)?;
        crate::graph::sym::concrete(d.get(2..)?)?;
        Some(
            d.iter()
                .map(|x| x.as_usize().unwrap_or(1))
                .collect::<Vec<_>>(),
        )
    };
    let (idx, values) = (seen.idx, seen.values);
    match spatial(tensor).zip(spatial(out0)) {
        Some((_, ys)) => {
            let Some(g) = geometry(win, &w.dims, observed, &ys) else {
                return Ok(Err("convolution geometry unknown".into()));
            };
            let out = conv_contribution(seen.va, idx, w, &g)?;
            let hw = g.out_hw.0 * g.out_hw.1;
            let m = w.dims[0];
            let flat = (0..m).all(|mo| {
                out[mo * hw..(mo + 1) * hw]
                    .iter()
                    .all(|&x| x == out[mo * hw])
            });
            Ok(Ok(Some(if flat {
                Update::Bias {
                    node: ci,
                    add: (0..m).map(|mo| out[mo * hw]).collect(),
                }
            } else {
                Update::Map {
                    node: ci,
                    map: out,
                    dims: vec![1, m, g.out_hw.0, g.out_hw.1],
                }
            })))
        }
        None if !seen.uniform => Ok(Err(
            "the removed channels vary near the borders and the input size is symbolic".into(),
        )),
        None if win.unpadded() => {
            let k = summed_kernel(w, idx, values)?;
            let kv = k.to_f32()?;
            let m = w.dims[0];
            let taps = kv.len() / m.max(1);
            let add = (0..m)
                .map(|mo| {
                    kv[mo * taps..(mo + 1) * taps]
                        .iter()
                        .map(|&x| f64::from(x))
                        .sum()
                })
                .collect();
            Ok(Ok(Some(Update::Bias { node: ci, add })))
        }
        None => Ok(Ok(Some(Update::Border {
            node: ci,
            kernel: summed_kernel(w, idx, values)?,
        }))),
    }
}

/// A group's removal, computed from the unchanged model.
struct Plan {
    updates: Vec<Update>,
    cut: HashMap<(String, usize), BTreeSet<usize>>,
}

/// Observes the tensors feeding the group's consumers and derives each consumer's update.
fn plan_group(
    ed: &Editor,
    ctx: &PassContext<'_>,
    g: &ChannelGroup,
    dead: &[usize],
) -> Result<Result<Plan, String>, PassError> {
    // Consumer input tensors and where the channels sit there.
    let mut feeds: Vec<(NodeId, String, Placement)> = Vec::new();
    for &ci in &g.consumers {
        let Some(inp) = ed.node(ci).and_then(|n| n.input.first()).cloned() else {
            continue;
        };
        for (t, pl) in g.activations.iter().filter(|(t, _)| *t == inp) {
            feeds.push((ci, t.clone(), *pl));
        }
    }
    let tensors: Vec<String> = feeds
        .iter()
        .map(|f| f.1.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rt = ctx.runtime(PASS)?;
    let plan = ctx.inputs(PASS)?;
    let mut runs: Vec<HashMap<String, Tensor>> = Vec::new();
    capture(
        rt,
        ed.model(),
        &tensors,
        Source::Random {
            plan,
            seeds: &[11, 12],
        },
        &mut |b| {
            runs.push(
                tensors
                    .iter()
                    .cloned()
                    .zip(b.tensors)
                    .filter_map(|(n, t)| Some((n, t?)))
                    .collect(),
            );
            Ok(())
        },
    )?;
    let mut updates = Vec::new();
    for (ci, tensor, pl) in &feeds {
        let (Some(ta), Some(tb)) = (
            runs.first().and_then(|r| r.get(tensor)),
            runs.get(1).and_then(|r| r.get(tensor)),
        ) else {
            return Ok(Err(format!("probe missed {tensor}")));
        };
        let idx: Vec<usize> = dead.iter().filter_map(|&c| pl.range(c)).flatten().collect();
        if idx.is_empty() {
            continue;
        }
        let (va, vb) = (
            gather_axis(ta, pl.axis, &idx)?,
            gather_axis(tb, pl.axis, &idx)?,
        );
        if va != vb {
            let op = ed.node(*ci).map(|n| n.op_type.clone()).unwrap_or_default();
            return Ok(Err(format!("channels entering {op} depend on the input")));
        }
        match consumer_update(ed, *ci, tensor, &ta.dims, &idx, &va)? {
            Ok(Some(u)) => updates.push(u),
            Ok(None) => {}
            Err(why) => return Ok(Err(why)),
        }
    }
    // Removal sets per coupled constant.
    let mut cut: HashMap<(String, usize), BTreeSet<usize>> = HashMap::new();
    for p in &g.params {
        let e = cut.entry((p.name.clone(), p.place.axis)).or_default();
        for &c in dead {
            e.extend(p.place.range(c).into_iter().flatten());
        }
    }
    Ok(Ok(Plan { updates, cut }))
}

/// Adds `add` to the bias of a Conv/Gemm (input 2) or after a MatMul (its bias `Add`, or a new one).
fn add_bias(ed: &mut Editor, node: NodeId, add: &[f64]) -> Result<(), PassError> {
    let Some(n) = ed.node(node).cloned() else {
        return Ok(());
    };
    let m = add.len();
    let l = label(ed, node);
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    if matches!(ed.analysis().valid_op(node), Some(Op::MatMul)) {
        let out = n.output.first().cloned().unwrap_or_default();
        // An existing bias Add with a constant [m] operand takes it.
        let a = ed.analysis();
        let cons = a.consumers(&out);
        if let ([(ai, k)], false) = (cons.as_slice(), a.is_graph_output(&out)) {
            let (ai, k) = (*ai, *k);
            if matches!(a.valid_op(ai), Some(Op::Binary(Binary::Add))) {
                let other = ed
                    .node(ai)
                    .and_then(|x| x.input.get(1 - k.min(1)))
                    .cloned()
                    .unwrap_or_default();
                if let Some(t) = ed.constant(&other)? {
                    if let (Ok(v), true) = (t.to_f32(), t.numel() == m && t.dims.last() == Some(&m))
                    {
                        let nv: Vec<f32> = v
                            .iter()
                            .zip(add)
                            .map(|(x, y)| (f64::from(*x) + y) as f32)
                            .collect();
                        ed.set_input_constant(
                            ai,
                            1 - k.min(1),
                            &Tensor::from_f32(t.dims.clone(), &nv)?,
                            &format!("{l}.bias"),
                        )?;
                        return Ok(());
                    }
                }
            }
        }
        let pre = ed.fresh_name(&format!("{out}.pre_bias"));
        let cname = ed.add_constant(
            &format!("{l}.bias"),
            &Tensor::from_f32(vec![m], &to_f32(add))?,
        );
        if let Some(o) = ed.node_mut(node).and_then(|x| x.output.first_mut()) {
            *o = pre.clone();
        }
        ed.insert_after(
            node,
            mk_node("Add", &format!("{l}.bias_add"), &[&pre, &cname], &[&out]),
        );
        return Ok(());
    }
    // Conv / Gemm: input 2, broadcast to [m].
    let beta = match ed.analysis().valid_op(node) {
        Some(Op::Gemm { beta, .. }) => f64::from(*beta),
        _ => 1.0,
    };
    let cur: Vec<f64> = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => match ed.constant(b)?.and_then(|t| t.to_f32().ok()) {
            Some(v) if v.len() == m => v.iter().map(|&x| f64::from(x) * beta).collect(),
            Some(v) if v.len() == 1 => vec![f64::from(v[0]) * beta; m],
            _ => {
                return Err(PassError::Invalid {
                    pass: PASS,
                    reason: format!("{l}: bias is not per channel"),
                })
            }
        },
        None => vec![0.0; m],
    };
    let nb: Vec<f64> = cur.iter().zip(add).map(|(x, y)| x + y).collect();
    ed.set_input_constant(
        node,
        2,
        &Tensor::from_f32(vec![m], &to_f32(&nb))?,
        &format!("{l}.bias"),
    )?;
    ed.remove_attr(node, "beta");
    Ok(())
}

/// Renames a node's output to a fresh `.pre_*` name and returns (fresh, original).
fn detach_output(ed: &mut Editor, node: NodeId, what: &str) -> Option<(String, String)> {
    let out = ed.node(node)?.output.first()?.clone();
    let pre = ed.fresh_name(&format!("{out}.pre_{what}"));
    *ed.node_mut(node)?.output.first_mut()? = pre.clone();
    Some((pre, out))
}

/// After `node`: out = pre + Conv(ones like the node's input with one channel, kernel).
fn add_border_conv(ed: &mut Editor, node: NodeId, kernel: &Tensor) -> Result<(), PassError> {
    let Some(n) = ed.node(node).cloned() else {
        return Ok(());
    };
    let x = n.input.first().cloned().unwrap_or_default();
    let rank = kernel.dims.len();
    let l = label(ed, node);
    let Some((pre, out)) = detach_output(ed, node, "border") else {
        return Ok(());
    };
    let spatial: Vec<i64> = (2..i64::try_from(rank).unwrap_or(4)).collect();
    let c = |ed: &mut Editor, base: &str, t: Tensor| ed.add_constant(&format!("{l}.{base}"), &t);
    let i0 = c(ed, "border_n", Tensor::from_i64(vec![1], &[0])?);
    let isp = c(
        ed,
        "border_hw",
        Tensor::from_i64(vec![spatial.len()], &spatial)?,
    );
    let one = c(ed, "border_one", Tensor::from_i64(vec![1], &[1])?);
    let k = c(ed, "border_kernel", kernel.clone());
    let name = |ed: &Editor, s: &str| ed.fresh_name(&format!("{out}.border_{s}"));
    let (shape, nn, hw, dims, ones, corr) = (
        name(ed, "shape"),
        name(ed, "n"),
        name(ed, "hw"),
        name(ed, "dims"),
        name(ed, "ones"),
        name(ed, "conv"),
    );
    let mut gather_n = mk_node(
        "Gather",
        &format!("{l}.border_gather_n"),
        &[&shape, &i0],
        &[&nn],
    );
    let mut gather_hw = mk_node(
        "Gather",
        &format!("{l}.border_gather_hw"),
        &[&shape, &isp],
        &[&hw],
    );
    for g in [&mut gather_n, &mut gather_hw] {
        g.attribute.push(int_attr("axis", 0));
    }
    let mut concat = mk_node(
        "Concat",
        &format!("{l}.border_dims"),
        &[&nn, &one, &hw],
        &[&dims],
    );
    concat.attribute.push(int_attr("axis", 0));
    let mut cos = mk_node(
        "ConstantOfShape",
        &format!("{l}.border_ones"),
        &[&dims],
        &[&ones],
    );
    let mut value = onnx_protobuf::AttributeProto::new();
    value.name = "value".into();
    value.type_ =
        protobuf::EnumOrUnknown::new(onnx_protobuf::attribute_proto::AttributeType::TENSOR);
    value.t = Some(crate::onnx::tensor_proto(
        "",
        &Tensor::from_f32(vec![1], &[1.0])?,
    ))
    .into();
    cos.attribute.push(value);
    let mut conv = mk_node("Conv", &format!("{l}.border_conv"), &[&ones, &k], &[&corr]);
    conv.attribute = n
        .attribute
        .iter()
        .filter(|a| a.name != "group")
        .cloned()
        .collect();
    let add = mk_node("Add", &format!("{l}.border_add"), &[&pre, &corr], &[&out]);
    let mut anchor = node;
    for step in [
        mk_node("Shape", &format!("{l}.border_shape"), &[&x], &[&shape]),
        gather_n,
        gather_hw,
        concat,
        cos,
        conv,
        add,
    ] {
        anchor = ed.insert_after(anchor, step).ok_or(PassError::Invalid {
            pass: PASS,
            reason: "lost the consumer".into(),
        })?;
    }
    Ok(())
}

fn int_attr(name: &str, v: i64) -> onnx_protobuf::AttributeProto {
    let mut a = onnx_protobuf::AttributeProto::new();
    a.name = name.into();
    a.type_ = protobuf::EnumOrUnknown::new(onnx_protobuf::attribute_proto::AttributeType::INT);
    a.i = v;
    a
}

/// Applies a plan: consumer updates, then the cuts, depthwise groups and shape constants.
fn apply(
    ed: &mut Editor,
    g: &ChannelGroup,
    dead: &[usize],
    plan: Plan,
) -> Result<Removal, PassError> {
    let (mut rebiased, mut maps, mut borders) = (0, 0, 0);
    for u in plan.updates {
        match u {
            Update::Bias { node, add } => {
                rebiased += 1;
                add_bias(ed, node, &add)?;
            }
            Update::Map { node, map, dims } => {
                maps += 1;
                let t = Tensor::from_f32(dims, &map.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
                let Some((pre, out)) = detach_output(ed, node, "bias_map") else {
                    continue;
                };
                let cname = ed.add_constant(&format!("{out}.bias_map"), &t);
                ed.insert_after(
                    node,
                    mk_node(
                        "Add",
                        &format!("{out}.bias_map_add"),
                        &[&pre, &cname],
                        &[&out],
                    ),
                );
            }
            Update::Border { node, kernel } => {
                borders += 1;
                add_border_conv(ed, node, &kernel)?;
            }
        }
    }
    for ((name, axis), idx) in &plan.cut {
        let Some(t) = ed.constant(name)? else {
            continue;
        };
        if *axis >= t.dims.len() {
            continue;
        }
        let nt = t.remove_indices(*axis, idx)?;
        ed.write_constant(name, &nt)?;
        fix_reshaped_constant(ed, name, nt.numel())?;
    }
    // Depthwise convolutions keep one group per remaining channel: rows per group (the channel
    // multiplier) stay, the group count follows the rows.
    let dw: BTreeSet<NodeId> = g
        .params
        .iter()
        .filter(|p| p.role == ParamRole::Depthwise)
        .map(|p| p.node)
        .collect();
    for ni in dw {
        let Some(n) = ed.node(ni) else { continue };
        let (Some(w), Some(Op::Conv(win))) = (n.input.get(1).cloned(), ed.analysis().valid_op(ni))
        else {
            continue;
        };
        let group = win.group;
        let old_rows = g
            .params
            .iter()
            .find(|p| p.node == ni && p.name == w)
            .map(|p| p.place.count * p.place.block);
        let Some(t) = ed.constant(&w)? else { continue };
        if let (Some(old), Some(&now)) = (old_rows, t.dims.first()) {
            let mult = (old as i64 / group.max(1)).max(1);
            ed.set_attr_int(ni, "group", now as i64 / mult);
        }
    }
    fix_shape_constants(ed, g, dead)?;
    let changed: HashSet<String> = g.activations.iter().map(|(t, _)| t.clone()).collect();
    ed.forget_shapes(&changed);
    Ok(Removal {
        group: g.name.clone(),
        channels_before: g.channels,
        removed: dead.len(),
        consumers_rebiased: rebiased,
        bias_maps: maps,
        border_convolutions: borders,
    })
}

/// A per-channel constant that reaches its reader through shape-only ops (exporters write a
/// bias `[C]` reshaped to `[1, C, 1, 1]`): every `Reshape` on the way gets the new channel count
/// `len` in its target, else the runtime refuses the old count. Targets that follow by
/// themselves (`-1`, `0`) stay; one with more than one non-unit element is not a per-channel
/// layout and is left for the verification to catch.
fn fix_reshaped_constant(ed: &mut Editor, name: &str, len: usize) -> Result<(), PassError> {
    let mut frontier = vec![name.to_string()];
    let mut rewritten = HashSet::new();
    // Bounded like `stored_const`, which found these chains.
    for _ in 0..4 {
        let mut next = Vec::new();
        for x in &frontier {
            for (ni, slot) in ed.analysis().consumers(x) {
                let Some(n) = ed.node(ni).cloned() else {
                    continue;
                };
                // `Identity` is one of the pass-through unary ops; the parse checks its domain.
                let op = ed.analysis().valid_op(ni);
                let shape_only = (n.op_type == "Identity" && matches!(op, Some(Op::Unary(_))))
                    || matches!(
                        op,
                        Some(
                            Op::Reshape { .. }
                                | Op::Unsqueeze(_)
                                | Op::Squeeze(_)
                                | Op::Flatten { .. }
                        )
                    );
                let Some(y) = n.output.first().filter(|_| shape_only && slot == 0) else {
                    continue;
                };
                next.push(y.clone());
                if n.op_type != "Reshape" {
                    continue;
                }
                let Some(target) = n.input.get(1) else {
                    continue;
                };
                let Some(t) = ed.constant(target)? else {
                    continue;
                };
                let Some(mut v) = t.to_i64_lossy() else {
                    continue;
                };
                if v.iter().any(|&e| e <= 0) {
                    continue;
                }
                let mut wide = v.iter_mut().filter(|e| **e != 1);
                if let (Some(e), None) = (wide.next(), wide.next()) {
                    if *e == len as i64 {
                        continue;
                    }
                    *e = len as i64;
                    let nt = Tensor::from_i64(t.dims.clone(), &v)?;
                    ed.set_input_constant(ni, 1, &nt, &format!("{y}.shape"))?;
                    rewritten.insert(y.clone());
                }
            }
        }
        frontier = next;
    }
    if !rewritten.is_empty() {
        ed.forget_shapes(&rewritten);
    }
    Ok(())
}

/// Shape constants on the group's path: flatten-like `Reshape` targets and `Split` sizes.
fn fix_shape_constants(ed: &mut Editor, g: &ChannelGroup, dead: &[usize]) -> Result<(), PassError> {
    let removed_in = |tensor: &str| -> usize {
        g.activations
            .iter()
            .filter(|(t, _)| t == tensor)
            .map(|(_, pl)| {
                dead.iter()
                    .filter_map(|&c| pl.range(c))
                    .map(|r| r.len())
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    };
    let mut fixed = HashSet::new();
    for &ni in &g.path {
        let Some(n) = ed.node(ni).cloned() else {
            continue;
        };
        let op = ed.analysis().valid_op(ni).cloned();
        match op {
            Some(Op::Reshape { .. }) => {
                let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else {
                    continue;
                };
                let removed_out = removed_in(y);
                let Some((_, pl)) = g.activations.iter().find(|(t, _)| t == y) else {
                    continue;
                };
                if removed_out == 0 || removed_in(x) == 0 {
                    continue;
                }
                // The analysis checked that the count is reachable; where it follows the
                // channels by itself there is nothing to write.
                let Ok(TargetElement::Constant {
                    tensor,
                    index,
                    reader,
                    slot,
                }) = reshape_target_element(ed, ni, pl.axis)
                else {
                    continue;
                };
                // Several reshapes may share one target (Q, K and V split by the same shape).
                if !fixed.insert((reader, slot, index)) {
                    continue;
                }
                let Some(t) = ed.constant(&tensor)? else {
                    continue;
                };
                let Some(mut v) = t.to_i64_lossy() else {
                    continue;
                };
                if let Some(e) = v.get_mut(index).filter(|e| **e > 0) {
                    *e -= removed_out as i64;
                    let nt = Tensor::from_i64(t.dims.clone(), &v)?;
                    ed.set_input_constant(reader, slot, &nt, &format!("{y}.shape"))?;
                }
            }
            Some(Op::Split { sizes, .. }) => {
                let current: Vec<i64> = match &sizes {
                    crate::graph::ops::Source::Attr(s) => s.clone(),
                    crate::graph::ops::Source::Input(i) => {
                        match n.input.get(*i).filter(|s| !s.is_empty()) {
                            Some(s) => match ed.constant(s)?.and_then(|t| t.to_i64_lossy()) {
                                Some(v) => v,
                                None => continue,
                            },
                            None => continue, // equal split: recomputed by the runtime
                        }
                    }
                    crate::graph::ops::Source::None => continue,
                };
                let new: Vec<i64> = n
                    .output
                    .iter()
                    .zip(&current)
                    .map(|(o, &s)| s - removed_in(o) as i64)
                    .collect();
                if new == current {
                    continue;
                }
                match sizes {
                    crate::graph::ops::Source::Attr(_) => ed.set_attr_ints(ni, "split", new),
                    crate::graph::ops::Source::Input(i) => {
                        let nt = Tensor::from_i64(vec![new.len()], &new)?;
                        let base =
                            format!("{}.split", n.output.first().cloned().unwrap_or_default());
                        ed.set_input_constant(ni, i, &nt, &base)?;
                    }
                    crate::graph::ops::Source::None => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl Pass for RemoveDeadChannels {
    fn name(&self) -> &'static str {
        PASS
    }

    fn preserves(&self) -> Preserves {
        Preserves::Outputs
    }

    fn run(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let mut removals = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut tried: HashSet<String> = HashSet::new();
        // One group at a time: each removal changes shapes for the next analysis.
        loop {
            let mut next = None;
            for g in channel_groups(ed)
                .into_iter()
                .filter(|g| g.prunable() && !tried.contains(&g.name))
            {
                let mut dead = dead_channels(ed, &g)?;
                if dead.len() == g.channels {
                    // Keep one channel: layers with zero channels are not valid ONNX.
                    dead.remove(0);
                }
                if !dead.is_empty() {
                    next = Some((g, dead));
                    break;
                }
            }
            let Some((g, dead)) = next else { break };
            tried.insert(g.name.clone());
            match plan_group(ed, ctx, &g, &dead)? {
                Ok(plan) => removals.push(apply(ed, &g, &dead, plan)?),
                Err(why) => skipped.push(format!("{}: {why}", g.name)),
            }
        }
        let removed: usize = removals.iter().map(|r| r.removed).sum();
        let mut notes = Vec::new();
        if removed > 0 {
            notes.push(format!(
                "removed {removed} dead channel(s) in {} group(s)",
                removals.len()
            ));
        }
        notes.extend(skipped.iter().map(|s| format!("kept dead channels of {s}")));
        Ok(PassReport {
            pass: self.name().into(),
            preserves: self.preserves(),
            changed: removed > 0,
            details: PassDetails::DeadChannels(DeadDetails {
                removals,
                skipped,
                channels_removed: removed,
            }),
            notes,
        })
    }
}
