//! Channel dependency analysis: for every prunable weight (the output channels of `Conv`,
//! `ConvTranspose`, `Gemm`, and `MatMul` with a constant operand), the group of tensors whose
//! channels must be removed together.
//!
//! Each such layer is a *source* of a channel space. Its channels are traced forward through the
//! graph: through normalizations and element-wise activations (their per-channel parameters are
//! *coupled*), pooling, `Flatten`/`Reshape` into a dense layer (a channel becomes a block of
//! features), `Transpose`, `Concat` and `Split` (index remapping), depthwise convolutions (whose
//! channels follow their input), up to the *consumers* that contract them away (`Conv`, `Gemm`,
//! `MatMul` input channels). Where the traced channels meet other channels in an element-wise op
//! (residual `Add`, gating `Mul`), the sources are *joined*: they must drop the same channels.
//! Anything the analysis cannot follow blocks the group, with the reason, and it is left alone.

use std::collections::{BTreeSet, HashMap, HashSet};

use onnx_protobuf::NodeProto;

use super::index::{node_label, GraphIndex};
use super::shapes::{attr_i, attr_ints, Shapes};
use crate::onnx::Model;

/// Where (part of) a channel space sits in one dimension of a tensor: channel `c` in
/// `first..first + count` covers indices `offset + (c - first) * block ..+ block` of `axis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub axis: usize,
    pub offset: usize,
    pub block: usize,
    pub first: usize,
    pub count: usize,
}

impl Placement {
    fn whole(axis: usize, channels: usize) -> Placement {
        Placement {
            axis,
            offset: 0,
            block: 1,
            first: 0,
            count: channels,
        }
    }

    /// The index range of channel `c` in this tensor's `axis`, if `c` is present.
    pub fn range(&self, c: usize) -> Option<std::ops::Range<usize>> {
        (c >= self.first && c < self.first + self.count).then(|| {
            let s = self.offset + (c - self.first) * self.block;
            s..s + self.block
        })
    }
}

/// What a coupled constant is to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamRole {
    /// A source's weight, along its output-channel axis.
    SourceWeight,
    /// A source's bias (Conv `B`, Gemm `C`).
    SourceBias,
    /// A per-channel parameter on the way: BatchNormalization, PRelu slope, an element-wise
    /// constant (e.g. a MatMul's bias `Add`).
    PerChannel,
    /// A depthwise convolution's weight or bias, whose channels follow the group.
    Depthwise,
    /// A consumer's weight, along its input-channel axis.
    ConsumerWeight,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoupledParam {
    /// Constant tensor name in the main graph.
    pub name: String,
    pub place: Placement,
    pub role: ParamRole,
    /// The node that uses it.
    pub node: usize,
}

/// A set of channels that must be removed together.
#[derive(Debug, Clone)]
pub struct ChannelGroup {
    pub channels: usize,
    /// The nodes whose output channels form this space (joined sources).
    pub sources: Vec<usize>,
    pub params: Vec<CoupledParam>,
    /// Non-constant tensors carrying the channels, and where.
    pub activations: Vec<(String, Placement)>,
    /// Nodes where the channels are contracted away.
    pub consumers: Vec<usize>,
    /// Nodes the channels flow through on the way (normalizations, activations, pools, ...).
    pub path: Vec<usize>,
    /// Why the group cannot be pruned; empty when it can.
    pub blocked: Vec<String>,
    /// Human-readable name: the first source's label.
    pub name: String,
}

impl ChannelGroup {
    pub fn prunable(&self) -> bool {
        self.blocked.is_empty()
    }
}

/// What one source's trace found.
#[derive(Debug, Default)]
struct Trace {
    params: BTreeSet<CoupledParam>,
    activations: BTreeSet<(String, Placement)>,
    consumers: BTreeSet<usize>,
    path: BTreeSet<usize>,
    blocked: Vec<String>,
}

/// Ops whose output has the input's shape and is computed element by element, each channel
/// on its own.
pub fn passthrough_unary(op: &str) -> bool {
    matches!(
        op,
        "Relu"
            | "LeakyRelu"
            | "Sigmoid"
            | "HardSigmoid"
            | "HardSwish"
            | "Tanh"
            | "Clip"
            | "Erf"
            | "Gelu"
            | "Sqrt"
            | "Exp"
            | "Log"
            | "Neg"
            | "Abs"
            | "Identity"
            | "Cast"
            | "Dropout"
            | "Softplus"
            | "Softsign"
            | "Elu"
            | "Selu"
            | "Celu"
            | "Mish"
            | "ThresholdedRelu"
            | "Reciprocal"
            | "Floor"
            | "Ceil"
            | "Round"
            | "Sign"
            | "Sin"
            | "Cos"
    )
}

fn elementwise_nary(op: &str) -> bool {
    matches!(
        op,
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Sum" | "Mean" | "Pow" | "PRelu"
    )
}

fn is_pool(op: &str) -> bool {
    matches!(
        op,
        "MaxPool"
            | "AveragePool"
            | "LpPool"
            | "GlobalAveragePool"
            | "GlobalMaxPool"
            | "GlobalLpPool"
    )
}

/// Is this Conv depthwise (each group one input channel)?
pub fn is_depthwise(n: &NodeProto, shapes: &Shapes) -> bool {
    let group = attr_i(n, "group", 1);
    let cin = n
        .input
        .first()
        .and_then(|x| shapes.get(x))
        .and_then(|s| s.get(1))
        .copied();
    let w = n.input.get(1).and_then(|x| shapes.get(x));
    group > 1 && cin == Some(group as usize) && w.is_some_and(|w| w.get(1) == Some(&1))
}

/// Output channel count and weight placement of a source node, or why it is not one.
fn source_info(
    model: &Model,
    ix: &GraphIndex,
    shapes: &Shapes,
    ni: usize,
) -> Option<Result<(usize, Vec<CoupledParam>), String>> {
    let n = &model.graph().node[ni];
    let dims = |name: &str| shapes.get(name).cloned();
    let p = |name: &str, axis: usize, c: usize, role| CoupledParam {
        name: name.to_string(),
        place: Placement::whole(axis, c),
        role,
        node: ni,
    };
    let w = n.input.get(1)?;
    match n.op_type.as_str() {
        "Conv" => {
            if !ix.is_const(w) {
                return Some(Err("its weight is not a constant".into()));
            }
            if is_depthwise(n, shapes) {
                return None; // follows its input's channels
            }
            let wd = dims(w)?;
            if attr_i(n, "group", 1) != 1 {
                return Some(Err("grouped convolution".into()));
            }
            let c = *wd.first()?;
            let mut ps = vec![p(w, 0, c, ParamRole::SourceWeight)];
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                ps.push(p(b, 0, c, ParamRole::SourceBias));
            }
            Some(Ok((c, ps)))
        }
        "ConvTranspose" => {
            if !ix.is_const(w) {
                return Some(Err("its weight is not a constant".into()));
            }
            if attr_i(n, "group", 1) != 1 {
                return Some(Err("grouped transposed convolution".into()));
            }
            let c = *dims(w)?.get(1)?;
            let mut ps = vec![p(w, 1, c, ParamRole::SourceWeight)];
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                ps.push(p(b, 0, c, ParamRole::SourceBias));
            }
            Some(Ok((c, ps)))
        }
        "Gemm" => {
            if !ix.is_const(w) {
                return Some(Err("its weight is not a constant".into()));
            }
            let wd = dims(w)?;
            if wd.len() != 2 {
                return None;
            }
            let axis = if attr_i(n, "transB", 0) != 0 { 0 } else { 1 };
            let c = wd[axis];
            let mut ps = vec![p(w, axis, c, ParamRole::SourceWeight)];
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                let bd = dims(b)?;
                match bd.last() {
                    Some(&l) if l == c && bd.iter().rev().skip(1).all(|&d| d == 1) => {
                        ps.push(p(b, bd.len() - 1, c, ParamRole::SourceBias))
                    }
                    Some(&1) | None => {}
                    _ => return Some(Err("its bias is not per output channel".into())),
                }
            }
            Some(Ok((c, ps)))
        }
        "MatMul" => {
            if !ix.is_const(w) {
                return None; // activations times activations: not a layer
            }
            let wd = dims(w)?;
            if wd.len() != 2 {
                return Some(Err("its weight is not a matrix".into()));
            }
            Some(Ok((wd[1], vec![p(w, 1, wd[1], ParamRole::SourceWeight)])))
        }
        _ => None,
    }
}

/// A constant seen through shape-only ops (`Reshape`, `Unsqueeze`, `Squeeze`, `Flatten`,
/// `Identity` with constant shape inputs), as exporters often write a bias: the name of the
/// stored constant, which holds the same values in the same order.
pub fn stored_const(model: &Model, ix: &GraphIndex, name: &str) -> Option<String> {
    let g = model.graph();
    let mut cur = name;
    for _ in 0..4 {
        if ix.is_const(cur) {
            return Some(cur.to_string());
        }
        let n = g.node.get(*ix.producer.get(cur)?)?;
        if !matches!(
            n.op_type.as_str(),
            "Reshape" | "Unsqueeze" | "Squeeze" | "Flatten" | "Identity"
        ) || n
            .input
            .iter()
            .skip(1)
            .any(|x| !x.is_empty() && !ix.is_const(x))
        {
            return None;
        }
        cur = n.input.first()?;
    }
    None
}

struct Tracer<'a> {
    model: &'a Model,
    ix: &'a GraphIndex,
    shapes: &'a Shapes,
    /// node -> (source, input index, placement) of traced channels arriving there.
    arrivals: HashMap<usize, Vec<(usize, usize, Placement)>>,
    /// Sources whose channels a Reshape splits into (heads, head size): traced again per head.
    head_split: HashMap<usize, (usize, usize)>,
}

impl Tracer<'_> {
    fn trace(&mut self, src: usize, out: &str, channels: usize) -> Trace {
        self.trace_blocks(src, out, channels, 1)
    }

    /// Traces `channels` channels of `block` consecutive output features each (attention heads).
    fn trace_blocks(&mut self, src: usize, out: &str, channels: usize, block: usize) -> Trace {
        let mut t = Trace::default();
        let g = self.model.graph();
        let mut work = vec![(
            out.to_string(),
            Placement {
                block,
                ..Placement::whole(1, channels)
            },
        )];
        // The source's output axis: 1 for Conv/Gemm, last for MatMul.
        if g.node[src].op_type == "MatMul" {
            match self.shapes.get(out) {
                Some(s) if !s.is_empty() => work[0].1.axis = s.len() - 1,
                _ => {
                    t.blocked.push(format!("shape of {out} unknown"));
                    return t;
                }
            }
        }
        let mut seen = HashSet::new();
        while let Some((tensor, place)) = work.pop() {
            if !seen.insert((tensor.clone(), place)) {
                continue;
            }
            if t.blocked.len() > 8 {
                break;
            }
            t.activations.insert((tensor.clone(), place));
            if self.ix.graph_outputs.contains(&tensor) {
                t.blocked
                    .push(format!("its channels reach the model output {tensor}"));
                continue;
            }
            for &(ci, k) in self.ix.consumers_of(&tensor) {
                if let Err(reason) = self.step(src, ci, k, &tensor, place, &mut t, &mut work) {
                    t.blocked.push(format!(
                        "{} ({}): {reason}",
                        node_label(&g.node[ci], ci),
                        g.node[ci].op_type
                    ));
                }
            }
        }
        t
    }

    /// Follows the channels at input `k` of node `ci`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        src: usize,
        ci: usize,
        k: usize,
        tensor: &str,
        place: Placement,
        t: &mut Trace,
        work: &mut Vec<(String, Placement)>,
    ) -> Result<(), String> {
        let g = self.model.graph();
        let n = &g.node[ci];
        let op = n.op_type.as_str();
        let shape = |name: &str| {
            self.shapes
                .get(name)
                .cloned()
                .ok_or_else(|| format!("shape of {name} unknown"))
        };
        let rank = shape(tensor)?.len();
        let out0 = n.output.first().cloned().unwrap_or_default();
        let mut forward = |t: &mut Trace, p: Placement| {
            t.path.insert(ci);
            work.push((out0.clone(), p));
        };
        match op {
            _ if passthrough_unary(op) => {
                if op == "Clip"
                    && n.input
                        .iter()
                        .skip(1)
                        .any(|x| !x.is_empty() && !self.ix.is_const(x))
                {
                    return Err("clip bounds are not constants".into());
                }
                forward(t, place);
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = attr_i(n, "axis", -1);
                let a = if axis < 0 { axis + rank as i64 } else { axis } as usize;
                if a == place.axis {
                    return Err("normalizes across the channels".into());
                }
                forward(t, place);
            }
            "LayerNormalization" => {
                let axis = attr_i(n, "axis", -1);
                let a = if axis < 0 { axis + rank as i64 } else { axis } as usize;
                if k != 0 || place.axis >= a {
                    return Err("normalizes across the channels".into());
                }
                forward(t, place);
            }
            "BatchNormalization" | "InstanceNormalization" => {
                if k != 0 || place.axis != 1 {
                    return Err("channels not on axis 1".into());
                }
                let last = if op == "BatchNormalization" { 4 } else { 2 };
                for pi in 1..=last {
                    let name = n.input.get(pi).ok_or("missing parameter")?;
                    if !self.ix.is_const(name) {
                        return Err(format!("parameter {name} is not a constant"));
                    }
                    t.params.insert(CoupledParam {
                        name: name.clone(),
                        place: Placement { axis: 0, ..place },
                        role: ParamRole::PerChannel,
                        node: ci,
                    });
                }
                forward(t, place);
            }
            _ if is_pool(op) => {
                if place.axis != 1 {
                    return Err("channels not on axis 1".into());
                }
                forward(t, place);
            }
            _ if elementwise_nary(op) => {
                let out_shape = shape(&out0)?;
                let out_rank = out_shape.len();
                // The channel axis counted from the right is what broadcasting aligns.
                let from_right = rank - place.axis;
                let out_place = Placement {
                    axis: out_rank - from_right,
                    ..place
                };
                for (j, other) in n.input.iter().enumerate() {
                    if j == k || other.is_empty() {
                        continue;
                    }
                    if self.ix.is_const(other) {
                        let os = shape(other)?;
                        if os.len() >= from_right {
                            let a = os.len() - from_right;
                            match os[a] {
                                1 => {}
                                d if d == out_shape[out_place.axis] => {
                                    t.params.insert(CoupledParam {
                                        name: other.clone(),
                                        place: Placement { axis: a, ..place },
                                        role: ParamRole::PerChannel,
                                        node: ci,
                                    });
                                }
                                _ => {
                                    return Err(format!(
                                        "constant {other} does not broadcast per channel"
                                    ))
                                }
                            }
                        }
                    } else if let Some(stored) = stored_const(self.model, self.ix, other) {
                        let os = shape(other)?;
                        if os.len() >= from_right {
                            let a = os.len() - from_right;
                            let d = os[a];
                            let per_channel = d == out_shape[out_place.axis]
                                && os.iter().enumerate().all(|(i, &x)| i == a || x == 1);
                            if d != 1 && !per_channel {
                                return Err(format!(
                                    "constant {other} does not broadcast per channel"
                                ));
                            }
                            if d != 1 {
                                // Same values in the same order: the channel axis of the stored
                                // tensor is its only non-unit one.
                                let ss = shape(&stored)?;
                                let sa = ss
                                    .iter()
                                    .position(|&x| x == d)
                                    .filter(|_| ss.iter().filter(|&&x| x != 1).count() == 1)
                                    .ok_or_else(|| {
                                        format!("constant {stored} does not broadcast per channel")
                                    })?;
                                t.params.insert(CoupledParam {
                                    name: stored,
                                    place: Placement { axis: sa, ..place },
                                    role: ParamRole::PerChannel,
                                    node: ci,
                                });
                            }
                        }
                    }
                }
                if shape(tensor)?.get(place.axis) != out_shape.get(out_place.axis) {
                    return Err("broadcasts the channel axis".into());
                }
                self.arrivals
                    .entry(ci)
                    .or_default()
                    .push((src, k, out_place));
                forward(t, out_place);
            }
            "Concat" => {
                let axis = attr_i(n, "axis", 0);
                let a = if axis < 0 { axis + rank as i64 } else { axis } as usize;
                if a == place.axis {
                    let mut off = 0;
                    for prev in n.input.iter().take(k) {
                        off += *shape(prev)?.get(a).ok_or("rank mismatch")?;
                    }
                    forward(
                        t,
                        Placement {
                            offset: place.offset + off,
                            ..place
                        },
                    );
                } else {
                    // Concatenated along another axis: every input must carry the same channels.
                    self.arrivals.entry(ci).or_default().push((src, k, place));
                    forward(t, place);
                }
            }
            "Split" => {
                let axis = attr_i(n, "axis", 0);
                let a = if axis < 0 { axis + rank as i64 } else { axis } as usize;
                if a != place.axis {
                    for o in &n.output {
                        t.path.insert(ci);
                        work.push((o.clone(), place));
                    }
                    return Ok(());
                }
                let mut start = 0;
                for o in &n.output {
                    let size = *shape(o)?.get(a).ok_or("rank mismatch")?;
                    let end = start + size;
                    // Channels of this space inside [start, end).
                    let mut first = None;
                    let mut count = 0;
                    for c in place.first..place.first + place.count {
                        let r = place.range(c).ok_or("bad placement")?;
                        if r.start >= start && r.end <= end {
                            first.get_or_insert(c);
                            count += 1;
                        } else if r.start < end && r.end > start {
                            return Err("splits a channel's block".into());
                        }
                    }
                    if let Some(f) = first {
                        let r0 = place.range(f).ok_or("bad placement")?;
                        t.path.insert(ci);
                        work.push((
                            o.clone(),
                            Placement {
                                offset: r0.start - start,
                                first: f,
                                count,
                                ..place
                            },
                        ));
                    }
                    start = end;
                }
            }
            "Transpose" => {
                let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
                let a = perm
                    .iter()
                    .position(|&p| p as usize == place.axis)
                    .ok_or("bad perm")?;
                forward(t, Placement { axis: a, ..place });
            }
            "Flatten" | "Reshape" => {
                if k != 0 {
                    return Err("channels used as a shape".into());
                }
                let (ins, outs) = (shape(tensor)?, shape(&out0)?);
                let a = place.axis;
                if ins[..=a] == outs[..=a.min(outs.len().saturating_sub(1))]
                    && outs.len() > a
                    && outs[a] == ins[a]
                {
                    // Only dimensions after the channels change: their placement holds.
                    forward(t, place);
                } else if outs.len() == a + 1
                    && ins[..a] == outs[..a]
                    && outs[a] == ins[a..].iter().product::<usize>()
                {
                    // Channels merged with every following dimension (Flatten before a dense layer).
                    let inner: usize = ins[a + 1..].iter().product();
                    forward(
                        t,
                        Placement {
                            offset: place.offset * inner,
                            block: place.block * inner,
                            ..place
                        },
                    );
                } else if outs.len() == ins.len() + 1
                    && ins[..a] == outs[..a]
                    && ins[a + 1..] == outs[a + 2..]
                    && outs[a] * outs[a + 1] == ins[a]
                {
                    // The channel axis split in two, e.g. [.., H*D] -> [.., H, D] (heads).
                    let (heads, size) = (outs[a], outs[a + 1]);
                    if size > 0
                        && place.block.is_multiple_of(size)
                        && place.offset.is_multiple_of(size)
                    {
                        forward(
                            t,
                            Placement {
                                offset: place.offset / size,
                                block: place.block / size,
                                ..place
                            },
                        );
                    } else {
                        if place.block == 1 && place.offset == 0 && place.count == ins[a] {
                            self.head_split.insert(src, (heads, size));
                        }
                        return Err(format!(
                            "splits the channel axis into {heads} heads of {size}"
                        ));
                    }
                } else {
                    return Err("reshapes the channel axis (e.g. into attention heads)".into());
                }
            }
            "Squeeze" | "Unsqueeze" | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
                if k != 0 {
                    return Err("channels used as axes".into());
                }
                let (ins, outs) = (shape(tensor)?, shape(&out0)?);
                let a = place.axis;
                // The channel axis keeps its size; find it by the dims around it.
                let before: usize = ins[..a].iter().product();
                let mut acc = 1usize;
                let mut found = None;
                for (j, &d) in outs.iter().enumerate() {
                    if acc == before && d == ins[a] && (found.is_none()) {
                        let after_in: usize = ins[a + 1..].iter().product();
                        let after_out: usize = outs[j + 1..].iter().product();
                        if op.starts_with("Reduce") || after_in == after_out {
                            found = Some(j);
                        }
                    }
                    acc *= d;
                }
                if op.starts_with("Reduce") {
                    let axes = attr_ints(n, "axes").or_else(|| {
                        self.shapes
                            .consts
                            .get(n.input.get(1).map(String::as_str).unwrap_or(""))
                            .cloned()
                    });
                    let reduces_channels = match axes {
                        Some(ax) => ax
                            .iter()
                            .any(|&x| (if x < 0 { x + rank as i64 } else { x }) as usize == a),
                        None => true,
                    };
                    if reduces_channels {
                        return Err("reduces across the channels".into());
                    }
                }
                let j = found.ok_or("cannot follow the channel axis")?;
                forward(t, Placement { axis: j, ..place });
            }
            "Conv" if k == 0 => {
                if place.axis != 1 {
                    return Err("channels not on axis 1".into());
                }
                let w = n.input.get(1).ok_or("no weight")?;
                if !self.ix.is_const(w) {
                    return Err("its weight is not a constant".into());
                }
                if is_depthwise(n, self.shapes) {
                    let mult = shape(w)?[0] / shape(tensor)?[1].max(1);
                    let dp = Placement {
                        axis: 0,
                        offset: place.offset * mult,
                        block: place.block * mult,
                        ..place
                    };
                    t.params.insert(CoupledParam {
                        name: w.clone(),
                        place: dp,
                        role: ParamRole::Depthwise,
                        node: ci,
                    });
                    if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                        t.params.insert(CoupledParam {
                            name: b.clone(),
                            place: dp,
                            role: ParamRole::Depthwise,
                            node: ci,
                        });
                    }
                    forward(
                        t,
                        Placement {
                            offset: place.offset * mult,
                            block: place.block * mult,
                            ..place
                        },
                    );
                } else if attr_i(n, "group", 1) == 1 {
                    t.params.insert(CoupledParam {
                        name: w.clone(),
                        place: Placement { axis: 1, ..place },
                        role: ParamRole::ConsumerWeight,
                        node: ci,
                    });
                    t.consumers.insert(ci);
                } else {
                    return Err("grouped convolution".into());
                }
            }
            "ConvTranspose" if k == 0 => {
                let w = n.input.get(1).ok_or("no weight")?;
                if place.axis != 1 || attr_i(n, "group", 1) != 1 || !self.ix.is_const(w) {
                    return Err("unsupported transposed convolution input".into());
                }
                t.params.insert(CoupledParam {
                    name: w.clone(),
                    place: Placement { axis: 0, ..place },
                    role: ParamRole::ConsumerWeight,
                    node: ci,
                });
                t.consumers.insert(ci);
            }
            "Gemm" if k == 0 => {
                let w = n.input.get(1).ok_or("no weight")?;
                let ta = attr_i(n, "transA", 0) != 0;
                if (ta && place.axis != 0) || (!ta && place.axis != 1) || !self.ix.is_const(w) {
                    return Err(
                        "channels are not the contracted features of a constant weight".into(),
                    );
                }
                let axis = if attr_i(n, "transB", 0) != 0 { 1 } else { 0 };
                t.params.insert(CoupledParam {
                    name: w.clone(),
                    place: Placement { axis, ..place },
                    role: ParamRole::ConsumerWeight,
                    node: ci,
                });
                t.consumers.insert(ci);
            }
            "MatMul" if k == 1 || n.input.get(1).is_some_and(|w| !self.ix.is_const(w)) => {
                // Activations times activations (attention): channels on a batch axis of both
                // operands pass through; both must carry the same ones (a join).
                let other = n.input.get(1 - k).ok_or("missing operand")?;
                if self.ix.is_const(other) || place.axis + 2 >= rank {
                    return Err(
                        "channels meet a non-constant matrix product (e.g. attention)".into(),
                    );
                }
                let os = shape(other)?;
                let from_right = rank - place.axis;
                if os.len() < from_right || os[os.len() - from_right] != shape(tensor)?[place.axis]
                {
                    return Err("broadcasts the channel axis".into());
                }
                let out_rank = shape(&out0)?.len();
                let out_place = Placement {
                    axis: out_rank - from_right,
                    ..place
                };
                self.arrivals
                    .entry(ci)
                    .or_default()
                    .push((src, k, out_place));
                forward(t, out_place);
            }
            "MatMul" if k == 0 => {
                let w = n.input.get(1).ok_or("no weight")?;
                if !self.ix.is_const(w) || shape(w)?.len() != 2 || place.axis + 1 != rank {
                    return Err(
                        "channels meet a non-constant matrix product (e.g. attention)".into(),
                    );
                }
                t.params.insert(CoupledParam {
                    name: w.clone(),
                    place: Placement { axis: 0, ..place },
                    role: ParamRole::ConsumerWeight,
                    node: ci,
                });
                t.consumers.insert(ci);
            }
            _ => {
                return Err(format!(
                    "nnzip cannot follow channels through {op} input {k}"
                ))
            }
        }
        Ok(())
    }
}

/// Offset, block, first channel and count of a placement (the axis may differ per input).
type PlaceKey = (usize, usize, usize, usize);

/// Union-find over source indices.
fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Analyses the main graph: every prunable layer's channel group, prunable or not.
pub fn channel_groups(model: &Model, ix: &GraphIndex, shapes: &Shapes) -> Vec<ChannelGroup> {
    let g = model.graph();
    let mut tracer = Tracer {
        model,
        ix,
        shapes,
        arrivals: HashMap::new(),
        head_split: HashMap::new(),
    };
    // (node, channels, trace) per source
    let mut sources: Vec<(usize, usize, Trace)> = Vec::new();
    for (ni, n) in g.node.iter().enumerate() {
        let Some(info) = source_info(model, ix, shapes, ni) else {
            continue;
        };
        let out = n.output.first().cloned().unwrap_or_default();
        match info {
            Ok((c, ps)) => {
                let mut t = tracer.trace(ni, &out, c);
                let mut c = c;
                let mut ps = ps;
                // Split into heads and stopped only there: prune whole heads instead.
                if let Some(&(heads, size)) = tracer.head_split.get(&ni) {
                    if !t.blocked.is_empty()
                        && t.blocked.iter().all(|b| b.contains(" heads of "))
                        && heads * size == c
                    {
                        for v in tracer.arrivals.values_mut() {
                            v.retain(|a| a.0 != ni);
                        }
                        t = tracer.trace_blocks(ni, &out, heads, size);
                        c = heads;
                        for p in &mut ps {
                            p.place.block = size;
                            p.place.count = heads;
                        }
                    }
                }
                t.params.extend(ps);
                sources.push((ni, c, t));
            }
            Err(reason) => {
                let t = Trace {
                    blocked: vec![reason],
                    ..Default::default()
                };
                let c = shapes
                    .get(&out)
                    .and_then(|s| s.get(1))
                    .copied()
                    .unwrap_or(0);
                sources.push((ni, c, t));
            }
        }
    }
    let pos: HashMap<usize, usize> = sources.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let mut parent: Vec<usize> = (0..sources.len()).collect();
    let mut extra_block: HashMap<usize, Vec<String>> = HashMap::new();
    // Joins: at an element-wise node every non-constant input must carry the same channels.
    let mut join_nodes: Vec<_> = tracer.arrivals.keys().copied().collect();
    join_nodes.sort_unstable();
    for ni in join_nodes {
        let arr = &tracer.arrivals[&ni];
        let n = &g.node[ni];
        let live: Vec<usize> = n
            .input
            .iter()
            .enumerate()
            .filter(|(_, x)| !x.is_empty() && stored_const(model, ix, x).is_none())
            .map(|(j, _)| j)
            .collect();
        // placement -> per input, the sources arriving with it
        let mut by_place: HashMap<PlaceKey, HashMap<usize, Vec<usize>>> = HashMap::new();
        for &(s, k, p) in arr {
            by_place
                .entry((p.offset, p.block, p.first, p.count))
                .or_default()
                .entry(k)
                .or_default()
                .push(s);
        }
        for inputs in by_place.values() {
            let all: Vec<usize> = inputs.values().flatten().copied().collect();
            if live.iter().all(|j| inputs.contains_key(j)) {
                for w in all.windows(2) {
                    let (a, b) = (find(&mut parent, pos[&w[0]]), find(&mut parent, pos[&w[1]]));
                    parent[a] = b;
                }
            } else {
                for s in all {
                    extra_block.entry(s).or_default().push(format!(
                        "{} ({}): joined with a tensor whose channels nnzip cannot trace",
                        node_label(n, ni),
                        n.op_type
                    ));
                }
            }
        }
    }
    // Assemble the groups.
    let mut groups: HashMap<usize, ChannelGroup> = HashMap::new();
    for (i, (ni, c, t)) in sources.iter().enumerate() {
        let root = find(&mut parent, i);
        let gr = groups.entry(root).or_insert_with(|| ChannelGroup {
            channels: *c,
            sources: vec![],
            params: vec![],
            activations: vec![],
            consumers: vec![],
            path: vec![],
            blocked: vec![],
            name: node_label(&g.node[*ni], *ni),
        });
        if gr.channels != *c {
            gr.blocked.push(format!(
                "joined layers disagree on the channel count ({} vs {c})",
                gr.channels
            ));
        }
        gr.sources.push(*ni);
        gr.params.extend(t.params.iter().cloned());
        gr.activations.extend(t.activations.iter().cloned());
        gr.consumers.extend(t.consumers.iter().copied());
        gr.path.extend(t.path.iter().copied());
        gr.blocked.extend(t.blocked.iter().cloned());
        if let Some(b) = extra_block.get(ni) {
            gr.blocked.extend(b.iter().cloned());
        }
    }
    let mut out: Vec<ChannelGroup> = groups.into_values().collect();
    for gr in &mut out {
        gr.sources.sort_unstable();
        gr.params.sort();
        gr.params.dedup();
        gr.activations.sort();
        gr.activations.dedup();
        gr.consumers.sort_unstable();
        gr.consumers.dedup();
        gr.path.sort_unstable();
        gr.path.dedup();
        gr.blocked.sort();
        gr.blocked.dedup();
        if gr.consumers.is_empty() && gr.blocked.is_empty() {
            gr.blocked.push("its channels reach no consumer".into());
        }
    }
    out.sort_by_key(|g| g.sources[0]);
    out
}
