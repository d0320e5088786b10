//! Physically removes dead channels: output channels whose incoming weights are all zero in every
//! layer of their channel group. Such a channel's value does not depend on the input (its bias,
//! through the per-channel ops of the group), so each consumer gets that constant contribution
//! added to its bias, and the channel leaves every coupled tensor.
//!
//! Where a consumer `Conv` pads with zeros, the contribution shrinks near the borders: the pass
//! then adds an exact per-position bias map after the convolution instead of approximating.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::graph::edit::{add_initializer, fresh_name, node as mk_node, set_node_constant};
use crate::graph::groups::{channel_groups, ChannelGroup, ParamRole};
use crate::graph::index::GraphIndex;
use crate::graph::shapes::{attr_f, attr_i, attr_ints, attr_s, infer, Shapes};
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};
use crate::runtime::inputs::random_inputs;
use crate::runtime::{Session, SessionOptions};
use crate::tensor::Tensor;

pub struct RemoveDeadChannels {
    /// Concrete input shapes (symbolic batch = 1 when empty).
    pub shapes: Vec<(String, Vec<usize>)>,
}

/// One group's removal, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub group: String,
    pub channels_before: usize,
    pub removed: usize,
    pub consumers_rebiased: usize,
    pub bias_maps: usize,
}

fn input_shapes(
    model: &Model,
    given: &[(String, Vec<usize>)],
) -> Result<HashMap<String, Vec<usize>>, PassError> {
    crate::inspect::mac_shapes(model, given).map_err(|e| PassError::Invalid {
        pass: "remove_dead_channels",
        reason: format!("{e} (needed for shape inference)"),
    })
}

/// Dead channels of a prunable group: every source's weight slice is zero.
fn dead_channels(
    model: &Model,
    ix: &GraphIndex,
    g: &ChannelGroup,
) -> Result<Vec<usize>, PassError> {
    let mut weights = Vec::new();
    for p in g
        .params
        .iter()
        .filter(|p| p.role == ParamRole::SourceWeight)
    {
        let Some(t) = ix.constant(model, &p.name)? else {
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
                Some(r) => r
                    .into_iter()
                    .all(|i| t.axis_offsets(pl.axis, i).iter().all(|&o| v[o] == 0.0)),
                None => true,
            })
        })
        .collect())
}

/// Runs the model on two seeded random samples with the given tensors as extra outputs.
fn probe(
    model: &Model,
    ctx: &PassContext<'_>,
    inputs: &HashMap<String, Vec<usize>>,
    tensors: &[String],
) -> Result<Vec<HashMap<String, Tensor>>, PassError> {
    let rt = ctx.runtime.ok_or(PassError::Invalid {
        pass: "remove_dead_channels",
        reason: "needs ONNX Runtime".into(),
    })?;
    let mut m = model.clone();
    crate::graph::edit::expose_float_outputs(&mut m, tensors);
    let mut s = Session::from_model(
        rt,
        &m,
        &SessionOptions {
            intra_threads: Some(1),
            ..Default::default()
        },
    )?;
    let ins = model.inputs();
    let shapes: Vec<Vec<usize>> = ins
        .iter()
        .map(|v| inputs.get(&v.name).cloned().unwrap_or_default())
        .collect();
    let mut runs = Vec::new();
    for seed in [11u64, 12] {
        let x = random_inputs(&ins, &shapes, seed).map_err(|e| PassError::Invalid {
            pass: "remove_dead_channels",
            reason: e.to_string(),
        })?;
        runs.push(s.run(&x)?.into_iter().collect());
    }
    Ok(runs)
}

/// Values of the given indices along `axis` of `t`, as [index][position].
fn gather_axis(t: &Tensor, axis: usize, idx: &[usize]) -> Result<Vec<Vec<f32>>, PassError> {
    let v = t.to_f32()?;
    Ok(idx
        .iter()
        .map(|&i| t.axis_offsets(axis, i).iter().map(|&o| v[o]).collect())
        .collect())
}

/// Per-position contribution of constant input maps through a Conv: out[m][y][x].
#[allow(clippy::too_many_arguments)]
fn conv_contribution(
    maps: &[Vec<f32>],
    chans: &[usize],
    w: &Tensor,
    in_hw: (usize, usize),
    out_hw: (usize, usize),
    strides: (usize, usize),
    pads: (usize, usize),
    dil: (usize, usize),
) -> Result<Vec<f64>, PassError> {
    let wv = w.to_f32()?;
    let (m, cin, kh, kw) = (w.dims[0], w.dims[1], w.dims[2], w.dims[3]);
    let (h, wd) = in_hw;
    let (ho, wo) = out_hw;
    let mut out = vec![0.0f64; m * ho * wo];
    for (map, &c) in maps.iter().zip(chans) {
        for mo in 0..m {
            for ky in 0..kh {
                for kx in 0..kw {
                    let wt = wv[((mo * cin + c) * kh + ky) * kw + kx] as f64;
                    if wt == 0.0 {
                        continue;
                    }
                    for y in 0..ho {
                        let iy = (y * strides.0 + ky * dil.0) as isize - pads.0 as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for x in 0..wo {
                            let ixx = (x * strides.1 + kx * dil.1) as isize - pads.1 as isize;
                            if ixx < 0 || ixx >= wd as isize {
                                continue;
                            }
                            out[(mo * ho + y) * wo + x] +=
                                wt * map[iy as usize * wd + ixx as usize] as f64;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

impl RemoveDeadChannels {
    /// Removes the dead channels of one group; `None` when it cannot be done exactly.
    fn remove_group(
        &self,
        model: &mut Model,
        ctx: &PassContext<'_>,
        inputs: &HashMap<String, Vec<usize>>,
        shapes: &Shapes,
        g: &ChannelGroup,
        mut dead: Vec<usize>,
    ) -> Result<Result<Removal, String>, PassError> {
        if dead.len() == g.channels {
            // Keep one channel: layers with zero channels are not valid ONNX.
            dead.remove(0);
        }
        if dead.is_empty() {
            return Ok(Err("nothing to remove".into()));
        }
        let ix = GraphIndex::new(model);
        let gp = model.graph();
        // Consumer input tensors and where the channels sit there.
        let mut feeds: Vec<(usize, String, crate::graph::groups::Placement)> = Vec::new();
        for &ci in &g.consumers {
            let inp = gp.node[ci].input[0].clone();
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
        let runs = probe(model, ctx, inputs, &tensors)?;
        // Bias updates per consumer, computed on the unmodified weights.
        enum Update {
            Bias {
                node: usize,
                add: Vec<f64>,
            },
            Map {
                node: usize,
                map: Vec<f64>,
                dims: Vec<usize>,
            },
        }
        let mut updates = Vec::new();
        for (ci, tensor, pl) in &feeds {
            let n = &gp.node[*ci];
            let (Some(a), Some(b)) = (runs[0].get(tensor), runs[1].get(tensor)) else {
                return Ok(Err(format!("probe missed {tensor}")));
            };
            let idx: Vec<usize> = dead.iter().filter_map(|&c| pl.range(c)).flatten().collect();
            if idx.is_empty() {
                continue;
            }
            let (va, vb) = (
                gather_axis(a, pl.axis, &idx)?,
                gather_axis(b, pl.axis, &idx)?,
            );
            if va != vb {
                return Ok(Err(format!(
                    "channels entering {} depend on the input",
                    n.op_type
                )));
            }
            if va.iter().flatten().all(|&x| x == 0.0) {
                continue; // contributes nothing
            }
            let w_name = &n.input[1];
            let Some(w) = ix.constant(model, w_name)? else {
                return Ok(Err("consumer weight not constant".into()));
            };
            let wv = w.to_f32()?;
            match n.op_type.as_str() {
                "Gemm" | "MatMul" => {
                    // Each removed feature must be the same on every row/token.
                    if va.iter().any(|pos| pos.iter().any(|&x| x != pos[0])) {
                        return Ok(Err("removed features vary across positions".into()));
                    }
                    let trans_b = n.op_type == "Gemm" && attr_i(n, "transB", 0) != 0;
                    let alpha = if n.op_type == "Gemm" {
                        attr_f(n, "alpha", 1.0) as f64
                    } else {
                        1.0
                    };
                    let cols = if trans_b { w.dims[0] } else { w.dims[1] };
                    let mut add = vec![0.0f64; cols];
                    for (k, &i) in idx.iter().enumerate() {
                        let val = va[k][0] as f64;
                        for (j, a) in add.iter_mut().enumerate() {
                            let wij = if trans_b {
                                wv[j * w.dims[1] + i]
                            } else {
                                wv[i * w.dims[1] + j]
                            };
                            *a += alpha * val * wij as f64;
                        }
                    }
                    updates.push(Update::Bias { node: *ci, add });
                }
                "Conv" => {
                    let (Some(xs), Some(ys)) = (shapes.get(tensor), shapes.get(&n.output[0]))
                    else {
                        return Ok(Err("conv shapes unknown".into()));
                    };
                    if xs.len() != 4 || w.dims.len() != 4 {
                        return Ok(Err("only 2-D convolutions are rebiased".into()));
                    }
                    let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
                    let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
                    let ap = attr_s(n, "auto_pad").unwrap_or_default();
                    let pads = match ap.as_str() {
                        "" | "NOTSET" => attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]),
                        "VALID" => vec![0; 4],
                        _ => {
                            let mut p = vec![0i64; 4];
                            for d in 0..2 {
                                let eff = (w.dims[2 + d] as i64 - 1) * dil[d] + 1;
                                let total = ((ys[2 + d] as i64 - 1) * strides[d] + eff
                                    - xs[2 + d] as i64)
                                    .max(0);
                                p[d] = if ap == "SAME_UPPER" {
                                    total / 2
                                } else {
                                    total - total / 2
                                };
                            }
                            p
                        }
                    };
                    // channel maps of sample 0, one per removed input channel
                    let maps: Vec<Vec<f32>> = va.clone();
                    let out = conv_contribution(
                        &maps,
                        &idx,
                        &w,
                        (xs[2], xs[3]),
                        (ys[2], ys[3]),
                        (strides[0] as usize, strides[1] as usize),
                        (pads[0] as usize, pads[1] as usize),
                        (dil[0] as usize, dil[1] as usize),
                    )?;
                    let (m, hw) = (w.dims[0], ys[2] * ys[3]);
                    let uniform = (0..m).all(|mo| {
                        out[mo * hw..(mo + 1) * hw]
                            .iter()
                            .all(|&x| x == out[mo * hw])
                    });
                    if uniform {
                        updates.push(Update::Bias {
                            node: *ci,
                            add: (0..m).map(|mo| out[mo * hw]).collect(),
                        });
                    } else {
                        updates.push(Update::Map {
                            node: *ci,
                            map: out,
                            dims: vec![1, m, ys[2], ys[3]],
                        });
                    }
                }
                other => {
                    return Ok(Err(format!(
                        "{other} consumers cannot take a constant input"
                    )))
                }
            }
        }
        // Removal sets per coupled constant.
        let mut cut: HashMap<(String, usize), BTreeSet<usize>> = HashMap::new();
        for p in &g.params {
            let e = cut.entry((p.name.clone(), p.place.axis)).or_default();
            for &c in &dead {
                if let Some(r) = p.place.range(c) {
                    e.extend(r);
                }
            }
        }
        let mut rebiased = 0;
        let mut maps = 0;
        // Highest node first: inserted nodes then never shift a pending update's index.
        updates.sort_by_key(|u| {
            std::cmp::Reverse(match u {
                Update::Bias { node, .. } | Update::Map { node, .. } => *node,
            })
        });
        for u in updates {
            match u {
                Update::Bias { node, add } => {
                    rebiased += 1;
                    add_bias(model, node, &add)?;
                }
                Update::Map { node, map, dims } => {
                    maps += 1;
                    let out = model.graph().node[node].output[0].clone();
                    let pre = fresh_name(model.graph(), &format!("{out}.pre_bias_map"));
                    let t =
                        Tensor::from_f32(dims, &map.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
                    let cname = add_initializer(model, &format!("{out}.bias_map"), &t);
                    let g = model.graph_mut();
                    g.node[node].output[0] = pre.clone();
                    let add = mk_node(
                        "Add",
                        &format!("{out}.bias_map_add"),
                        &[&pre, &cname],
                        &[&out],
                    );
                    g.node.insert(node + 1, add);
                }
            }
        }
        // Node indices may have shifted (bias-map Adds): resolve constants by name again.
        let ix = GraphIndex::new(model);
        for ((name, axis), idx) in &cut {
            let Some(id) = ix.constants.get(name).cloned() else {
                continue;
            };
            let t = model.read(&id)?;
            if *axis >= t.dims.len() {
                continue;
            }
            let nt = t.remove_indices(*axis, idx)?;
            model.write(&id, &nt)?;
        }
        // Depthwise convolutions keep one group per remaining channel.
        let dw: BTreeSet<usize> = g
            .params
            .iter()
            .filter(|p| p.role == ParamRole::Depthwise)
            .map(|p| p.node)
            .collect();
        for ni in dw {
            let n = &model.graph().node[ni];
            let (Some(w), group) = (n.input.get(1).cloned(), attr_i(n, "group", 1)) else {
                continue;
            };
            // Rows per group (the channel multiplier) stay; the group count follows the rows.
            let old_rows = g
                .params
                .iter()
                .find(|p| p.node == ni && p.name == w)
                .map(|p| p.place.count * p.place.block);
            let Some(t) = ix.constant(model, &w)? else {
                continue;
            };
            if let (Some(old), Some(&now)) = (old_rows, t.dims.first()) {
                let mult = (old as i64 / group.max(1)).max(1);
                let ng = now as i64 / mult;
                if let Some(a) = model.graph_mut().node[ni]
                    .attribute
                    .iter_mut()
                    .find(|a| a.name == "group")
                {
                    a.i = ng;
                }
            }
        }
        // Shape constants on the way: flatten-like Reshapes and Split sizes.
        self.fix_shape_constants(model, g, &dead)?;
        let changed: HashSet<String> = g.activations.iter().map(|(t, _)| t.clone()).collect();
        crate::graph::edit::forget_shapes(model, &changed);
        Ok(Ok(Removal {
            group: g.name.clone(),
            channels_before: g.channels,
            removed: dead.len(),
            consumers_rebiased: rebiased,
            bias_maps: maps,
        }))
    }

    fn fix_shape_constants(
        &self,
        model: &mut Model,
        g: &ChannelGroup,
        dead: &[usize],
    ) -> Result<(), PassError> {
        let gp = model.graph().clone();
        let ix = GraphIndex::new(model);
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
        for (ni, n) in gp.node.iter().enumerate() {
            if !g.path.contains(&ni) {
                continue;
            }
            match n.op_type.as_str() {
                "Reshape" => {
                    let (Some(x), Some(y), Some(sname)) =
                        (n.input.first(), n.output.first(), n.input.get(1))
                    else {
                        continue;
                    };
                    let removed_out = removed_in(y);
                    if removed_out == 0 || removed_in(x) == 0 {
                        continue;
                    }
                    let Some(st) = ix.constant(model, sname)? else {
                        continue;
                    };
                    let Some(mut shape) = st.to_i64_lossy() else {
                        continue;
                    };
                    let Some((_, pl)) = g.activations.iter().find(|(t, _)| t == y) else {
                        continue;
                    };
                    if let Some(v) = shape.get_mut(pl.axis) {
                        if *v > 0 {
                            *v -= removed_out as i64;
                            let nt = Tensor::from_i64(vec![shape.len()], &shape)?;
                            let id = ix.constants.get(sname).cloned();
                            set_node_constant(
                                model,
                                ni,
                                1,
                                &nt,
                                &format!("{y}.shape"),
                                id.as_ref(),
                            )?;
                        }
                    }
                }
                "Split" => {
                    let sizes: Vec<i64> = match attr_ints(n, "split") {
                        Some(s) => s,
                        None => match n.input.get(1).filter(|s| !s.is_empty()) {
                            Some(s) => {
                                match ix.constant(model, s)?.and_then(|t| t.to_i64_lossy()) {
                                    Some(v) => v,
                                    None => continue,
                                }
                            }
                            None => continue, // equal split: recomputed by the runtime
                        },
                    };
                    let new: Vec<i64> = n
                        .output
                        .iter()
                        .zip(&sizes)
                        .map(|(o, &s)| s - removed_in(o) as i64)
                        .collect();
                    if new == sizes {
                        continue;
                    }
                    if attr_ints(n, "split").is_some() {
                        if let Some(a) = model.graph_mut().node[ni]
                            .attribute
                            .iter_mut()
                            .find(|a| a.name == "split")
                        {
                            a.ints = new;
                        }
                    } else if let Some(s) = n.input.get(1) {
                        let id = ix.constants.get(s).cloned();
                        let nt = Tensor::from_i64(vec![new.len()], &new)?;
                        set_node_constant(
                            model,
                            ni,
                            1,
                            &nt,
                            &format!("{}.split", n.output[0]),
                            id.as_ref(),
                        )?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Adds `add` to the bias of a Conv/Gemm (input 2) or after a MatMul (its bias `Add`, or a new one).
fn add_bias(model: &mut Model, node: usize, add: &[f64]) -> Result<(), PassError> {
    let ix = GraphIndex::new(model);
    let n = model.graph().node[node].clone();
    let m = add.len();
    let label = crate::graph::index::node_label(&n, node);
    if n.op_type == "MatMul" {
        let out = n.output[0].clone();
        // An existing bias Add with a constant [m] operand takes it.
        let cons = ix.consumers_of(&out);
        if cons.len() == 1 && !ix.graph_outputs.contains(&out) {
            let (ai, k) = cons[0];
            let a = &model.graph().node[ai];
            if a.op_type == "Add" {
                let other = &a.input[1 - k];
                if let Some(t) = ix.constant(model, other)? {
                    if let (Ok(v), true) = (
                        t.to_f32(),
                        t.dims.iter().product::<usize>() == m && t.dims.last() == Some(&m),
                    ) {
                        let nv: Vec<f32> = v
                            .iter()
                            .zip(add)
                            .map(|(x, y)| (*x as f64 + y) as f32)
                            .collect();
                        let id = ix.constants.get(other).cloned();
                        set_node_constant(
                            model,
                            ai,
                            1 - k,
                            &Tensor::from_f32(t.dims.clone(), &nv)?,
                            &format!("{label}.bias"),
                            id.as_ref(),
                        )?;
                        return Ok(());
                    }
                }
            }
        }
        let pre = fresh_name(model.graph(), &format!("{out}.pre_bias"));
        let bias: Vec<f32> = add.iter().map(|&x| x as f32).collect();
        let cname = add_initializer(
            model,
            &format!("{label}.bias"),
            &Tensor::from_f32(vec![m], &bias)?,
        );
        let g = model.graph_mut();
        g.node[node].output[0] = pre.clone();
        g.node.insert(
            node + 1,
            mk_node(
                "Add",
                &format!("{label}.bias_add"),
                &[&pre, &cname],
                &[&out],
            ),
        );
        return Ok(());
    }
    // Conv / Gemm: input 2, broadcast to [m].
    let beta = if n.op_type == "Gemm" {
        attr_f(&n, "beta", 1.0) as f64
    } else {
        1.0
    };
    let cur: Vec<f64> = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => match ix.constant(model, b)?.and_then(|t| t.to_f32().ok()) {
            Some(v) if v.len() == m => v.iter().map(|&x| x as f64 * beta).collect(),
            Some(v) if v.len() == 1 => vec![v[0] as f64 * beta; m],
            _ => {
                return Err(PassError::Invalid {
                    pass: "remove_dead_channels",
                    reason: format!("{label}: bias is not per channel"),
                })
            }
        },
        None => vec![0.0; m],
    };
    let nb: Vec<f32> = cur.iter().zip(add).map(|(x, y)| (x + y) as f32).collect();
    let id = n.input.get(2).and_then(|b| ix.constants.get(b).cloned());
    set_node_constant(
        model,
        node,
        2,
        &Tensor::from_f32(vec![m], &nb)?,
        &format!("{label}.bias"),
        id.as_ref(),
    )?;
    if n.op_type == "Gemm" {
        model.graph_mut().node[node]
            .attribute
            .retain(|a| a.name != "beta");
    }
    Ok(())
}

impl Pass for RemoveDeadChannels {
    fn name(&self) -> &'static str {
        "remove_dead_channels"
    }

    fn preserves(&self) -> Preserves {
        Preserves::Outputs
    }

    fn run(&self, model: &mut Model, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let inputs = input_shapes(model, &self.shapes)?;
        let mut removals = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut tried: HashSet<String> = HashSet::new();
        // One group at a time: each removal changes shapes and indices for the next analysis.
        loop {
            let shapes = infer(model, &inputs);
            let ix = GraphIndex::new(model);
            let groups = channel_groups(model, &ix, &shapes);
            let mut next = None;
            for g in groups
                .into_iter()
                .filter(|g| g.prunable() && !tried.contains(&g.name))
            {
                let dead = dead_channels(model, &ix, &g)?;
                if !(dead.is_empty() || dead.len() == 1 && g.channels == 1) {
                    next = Some((g, dead));
                    break;
                }
            }
            let Some((g, dead)) = next else { break };
            tried.insert(g.name.clone());
            match self.remove_group(model, ctx, &inputs, &shapes, &g, dead)? {
                Ok(r) => removals.push(r),
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
            changed: removed > 0,
            details: serde_json::json!({ "removals": removals, "skipped": skipped, "channels_removed": removed }),
            notes,
        })
    }
}
