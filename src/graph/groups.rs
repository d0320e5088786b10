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
//!
//! Sizes may be symbolic (an input of `[N, 3, H, W]`): channel counts come from weights and are
//! always concrete; where a channel would span a symbolic number of features (a `Flatten` of
//! symbolic spatial dims), the group is blocked with a message naming the sizes to fix.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::editor::{Analysis, Editor, NodeId};
use super::ops::{norm_axis, Binary, Op};
use super::sym::{product, Expr};
use crate::onnx::proto::NodeProto;

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
        let i = c.checked_sub(self.first).filter(|&i| i < self.count)?;
        let s = self.offset.checked_add(i.checked_mul(self.block)?)?;
        Some(s..s.checked_add(self.block)?)
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
    pub node: NodeId,
}

/// A set of channels that must be removed together.
#[derive(Debug, Clone)]
pub struct ChannelGroup {
    pub channels: usize,
    /// The nodes whose output channels form this space (joined sources).
    pub sources: Vec<NodeId>,
    pub params: Vec<CoupledParam>,
    /// Non-constant tensors carrying the channels, and where.
    pub activations: Vec<(String, Placement)>,
    /// Nodes where the channels are contracted away.
    pub consumers: Vec<NodeId>,
    /// Nodes the channels flow through on the way (normalizations, activations, pools, ...).
    pub path: Vec<NodeId>,
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
    consumers: BTreeSet<NodeId>,
    path: BTreeSet<NodeId>,
    blocked: Vec<String>,
}

/// A node's label for reports: its name, or `op#id`.
pub fn label(ed: &Editor, id: NodeId) -> String {
    match ed.node(id) {
        Some(n) if !n.name.is_empty() => n.name.clone(),
        Some(n) => format!("{}#{id}", n.op_type),
        None => id.to_string(),
    }
}

/// Is this Conv depthwise (each group one input channel)?
pub fn is_depthwise(ed: &Editor, id: NodeId) -> bool {
    let (Some(Op::Conv(w)), Some(n)) = (ed.analysis().valid_op(id), ed.node(id)) else {
        return false;
    };
    let a = ed.analysis();
    let cin = n
        .input
        .first()
        .and_then(|x| a.shape(x))
        .and_then(|s| s.get(1))
        .and_then(Expr::as_int);
    let wd = n
        .input
        .get(1)
        .and_then(|x| a.shape(x))
        .and_then(|s| s.get(1))
        .and_then(Expr::as_int);
    w.group > 1 && cin == Some(w.group) && wd == Some(1)
}

/// A constant seen through shape-only ops (`Reshape`, `Unsqueeze`, `Squeeze`, `Flatten`,
/// `Identity` with constant shape inputs), as exporters often write a bias: the name of the
/// stored constant, which holds the same values in the same order.
pub fn stored_const(ed: &Editor, name: &str) -> Option<String> {
    let a = ed.analysis();
    let mut cur = name.to_string();
    for _ in 0..4 {
        if a.is_const(&cur) {
            return Some(cur);
        }
        let p = a.producer(&cur)?;
        let n = ed.node(p)?;
        // `Identity` is one of the pass-through unary ops; the parse has checked its domain.
        let op = a.valid_op(p)?;
        let shape_only = (n.op_type == "Identity" && matches!(op, Op::Unary(_)))
            || matches!(
                op,
                Op::Reshape { .. } | Op::Unsqueeze(_) | Op::Squeeze(_) | Op::Flatten { .. }
            );
        if !shape_only
            || n.input
                .iter()
                .skip(1)
                .any(|x| !x.is_empty() && !a.is_const(x))
        {
            return None;
        }
        cur = n.input.first()?.clone();
    }
    None
}

/// Output channel count and weight placement of a source node, `None` when it is not one,
/// `Err` when it is one that cannot be pruned.
fn source_info(ed: &Editor, id: NodeId) -> Option<Result<(usize, Vec<CoupledParam>), String>> {
    let a = ed.analysis();
    let n = ed.node(id)?;
    let w = n.input.get(1)?;
    let dims = |name: &str| a.concrete(name);
    let p = |name: &str, axis: usize, c: usize, role| CoupledParam {
        name: name.to_string(),
        place: Placement::whole(axis, c),
        role,
        node: id,
    };
    let bias = n.input.get(2).filter(|b| !b.is_empty());
    let not_const = || Some(Err("its weight is not a constant".into()));
    match a.valid_op(id)? {
        Op::Conv(win) => {
            if !a.is_const(w) {
                return not_const();
            }
            if is_depthwise(ed, id) {
                return None; // follows its input's channels
            }
            if win.group != 1 {
                return Some(Err("grouped convolution".into()));
            }
            let c = *dims(w)?.first()?;
            let mut ps = vec![p(w, 0, c, ParamRole::SourceWeight)];
            ps.extend(bias.map(|b| p(b, 0, c, ParamRole::SourceBias)));
            Some(Ok((c, ps)))
        }
        Op::ConvTranspose(t) => {
            if !a.is_const(w) {
                return not_const();
            }
            if t.window.group != 1 {
                return Some(Err("grouped transposed convolution".into()));
            }
            let c = *dims(w)?.get(1)?;
            let mut ps = vec![p(w, 1, c, ParamRole::SourceWeight)];
            ps.extend(bias.map(|b| p(b, 0, c, ParamRole::SourceBias)));
            Some(Ok((c, ps)))
        }
        Op::Gemm { trans_b, .. } => {
            if !a.is_const(w) {
                return not_const();
            }
            let wd = dims(w)?;
            if wd.len() != 2 {
                return None;
            }
            let axis = if *trans_b { 0 } else { 1 };
            let c = *wd.get(axis)?;
            let mut ps = vec![p(w, axis, c, ParamRole::SourceWeight)];
            if let Some(b) = bias {
                let bd = dims(b)?;
                match bd.last() {
                    Some(&l) if l == c && bd.iter().rev().skip(1).all(|&d| d == 1) => {
                        ps.push(p(b, bd.len().saturating_sub(1), c, ParamRole::SourceBias))
                    }
                    Some(&1) | None => {}
                    _ => return Some(Err("its bias is not per output channel".into())),
                }
            }
            Some(Ok((c, ps)))
        }
        Op::MatMul => {
            if !a.is_const(w) {
                return None; // activations times activations: not a layer
            }
            let wd = dims(w)?;
            match wd.as_slice() {
                [_, c] => Some(Ok((*c, vec![p(w, 1, *c, ParamRole::SourceWeight)]))),
                _ => Some(Err("its weight is not a matrix".into())),
            }
        }
        _ => None,
    }
}

/// One step's outcome: where the channels go next, or why they cannot be followed.
type Step = Result<(), String>;

struct Tracer<'a> {
    ed: &'a Editor,
    a: &'a Analysis,
    /// node -> (source, input index, placement) of traced channels arriving there.
    arrivals: HashMap<NodeId, Vec<(NodeId, usize, Placement)>>,
    /// Sources whose channels a Reshape splits into (heads, head size): traced again per head.
    head_split: HashMap<NodeId, (usize, usize)>,
}

/// The state of one trace: what it found and what is left to follow.
struct Walk {
    src: NodeId,
    t: Trace,
    work: Vec<(String, Placement)>,
}

impl Walk {
    fn forward(&mut self, via: NodeId, out: &str, p: Placement) {
        self.t.path.insert(via);
        self.work.push((out.to_string(), p));
    }

    fn couple(&mut self, name: &str, place: Placement, role: ParamRole, node: NodeId) {
        self.t.params.insert(CoupledParam {
            name: name.to_string(),
            place,
            role,
            node,
        });
    }
}

fn known(d: &Expr, what: &str) -> Result<usize, String> {
    d.as_usize().ok_or_else(|| {
        let syms: Vec<String> = d.symbols().into_iter().collect();
        format!(
            "{what} depends on the input size ({d}); give the input a concrete size (symbols: {})",
            syms.join(", ")
        )
    })
}

impl Tracer<'_> {
    fn shape(&self, name: &str) -> Result<Vec<Expr>, String> {
        self.a
            .shape(name)
            .map(<[Expr]>::to_vec)
            .ok_or_else(|| format!("shape of {name} unknown"))
    }

    fn trace(&mut self, src: NodeId, out: &str, channels: usize, block: usize) -> Trace {
        let mut w = Walk {
            src,
            t: Trace::default(),
            work: vec![(
                out.to_string(),
                Placement {
                    block,
                    ..Placement::whole(1, channels)
                },
            )],
        };
        // The source's output axis: 1 for Conv/Gemm, last for MatMul.
        if matches!(self.a.valid_op(src), Some(Op::MatMul)) {
            match self.a.rank(out) {
                Some(r) if r > 0 => {
                    if let Some(first) = w.work.first_mut() {
                        first.1.axis = r.saturating_sub(1);
                    }
                }
                _ => {
                    w.t.blocked.push(format!("shape of {out} unknown"));
                    return w.t;
                }
            }
        }
        let mut seen = HashSet::new();
        while let Some((tensor, place)) = w.work.pop() {
            if !seen.insert((tensor.clone(), place)) {
                continue;
            }
            if w.t.blocked.len() > 8 {
                break;
            }
            w.t.activations.insert((tensor.clone(), place));
            if self.a.is_graph_output(&tensor) {
                w.t.blocked
                    .push(format!("its channels reach the model output {tensor}"));
                continue;
            }
            for (ci, k) in self.a.consumers(&tensor) {
                if let Err(reason) = self.step(&mut w, ci, k, &tensor, place) {
                    let op = self
                        .ed
                        .node(ci)
                        .map(|n| n.op_type.clone())
                        .unwrap_or_default();
                    w.t.blocked
                        .push(format!("{} ({op}): {reason}", label(self.ed, ci)));
                }
            }
        }
        w.t
    }

    /// Follows the channels at input `k` of node `ci`.
    fn step(&mut self, w: &mut Walk, ci: NodeId, k: usize, tensor: &str, place: Placement) -> Step {
        let n = self.ed.node(ci).ok_or("node gone")?;
        let op = match self.a.op(ci) {
            Some(Ok(op)) => op,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("node gone".into()),
        };
        let rank = self.shape(tensor)?.len();
        let out0 = n.output.first().cloned().unwrap_or_default();
        if let Some(p) = self.passed_through(n, op, k, rank, place)? {
            w.forward(ci, &out0, p);
            return Ok(());
        }
        match op {
            Op::ConvTranspose(_) | Op::Gemm { .. } if k == 0 => {
                self.couple_consumer_weight(w, ci, n, op, place)?
            }
            Op::BatchNorm { .. } | Op::InstanceNorm { .. } => {
                self.step_norm(w, ci, k, place, &out0, matches!(op, Op::BatchNorm { .. }))?
            }
            Op::Binary(b) if *b != Binary::Equal && *b != Binary::Where => {
                self.step_elementwise(w, ci, k, tensor, place, &out0)?
            }
            Op::Concat { axis } => self.step_concat(
                w,
                ci,
                k,
                place,
                &out0,
                norm_axis(*axis, rank).ok_or("bad axis")?,
            )?,
            Op::Split { axis, .. } => {
                self.step_split(w, ci, place, norm_axis(*axis, rank).ok_or("bad axis")?)?
            }
            Op::Flatten { .. } | Op::Reshape { .. } => {
                if k != 0 {
                    return Err("channels used as a shape".into());
                }
                if matches!(op, Op::Reshape { .. }) {
                    // The count the target gives the channel axis must follow the channels.
                    reshape_target_element(self.ed, ci, place.axis)?;
                }
                self.step_reshape(w, ci, tensor, place, &out0)?
            }
            // Reading the sizes is not using the channels: what is built from them follows the
            // pruned sizes at run time. Constants that spell a channel count out are checked
            // where they are used (reshape targets).
            Op::Shape { .. } | Op::Size => {}
            Op::Squeeze(_) | Op::Unsqueeze(_) | Op::Reduce(_) => {
                if k != 0 {
                    return Err("channels used as axes".into());
                }
                self.step_axes(w, ci, op, tensor, place, &out0)?
            }
            Op::Conv(_) if k == 0 => self.step_conv(w, ci, tensor, place, &out0)?,
            Op::MatMul => self.step_matmul(w, ci, k, tensor, place, &out0)?,
            _ => {
                return Err(format!(
                    "nnzip cannot follow channels through {} input {k}",
                    n.op_type
                ))
            }
        }
        Ok(())
    }

    /// Where the channels are in the output of an op that carries them through unchanged
    /// (element-wise activations, normalizations and pooling that keep them apart,
    /// transposes); `None` for any other op.
    fn passed_through(
        &self,
        n: &NodeProto,
        op: &Op,
        k: usize,
        rank: usize,
        place: Placement,
    ) -> Result<Option<Placement>, String> {
        Ok(match op {
            _ if op.is_channelwise_unary() => {
                if matches!(op, Op::Clip { .. })
                    && n.input
                        .iter()
                        .skip(1)
                        .any(|x| !x.is_empty() && !self.a.is_const(x))
                {
                    return Err("clip bounds are not constants".into());
                }
                Some(place)
            }
            Op::Softmax { axis, coerced } => {
                let a = norm_axis(*axis, rank).ok_or("bad axis")?;
                if a == place.axis || (*coerced && place.axis > a) {
                    return Err("normalizes across the channels".into());
                }
                Some(place)
            }
            Op::LayerNorm { axis, .. } => {
                let a = norm_axis(*axis, rank).ok_or("bad axis")?;
                if k != 0 || place.axis >= a {
                    return Err("normalizes across the channels".into());
                }
                Some(place)
            }
            Op::Pool(_) | Op::GlobalPool(_) => {
                if place.axis != 1 {
                    return Err("channels not on axis 1".into());
                }
                Some(place)
            }
            Op::Transpose { perm } => {
                let perm: Vec<i64> = perm
                    .clone()
                    .unwrap_or_else(|| (0..rank as i64).rev().collect());
                let a = perm
                    .iter()
                    .position(|&p| usize::try_from(p).ok() == Some(place.axis))
                    .ok_or("bad perm")?;
                Some(Placement { axis: a, ..place })
            }
            _ => None,
        })
    }

    /// A convolution-transpose or Gemm input 0: the channels are contracted with a constant
    /// weight, whose matching slices are coupled to the group.
    fn couple_consumer_weight(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        n: &NodeProto,
        op: &Op,
        place: Placement,
    ) -> Result<(), String> {
        match op {
            Op::ConvTranspose(t) => {
                let wt = n.input.get(1).ok_or("no weight")?;
                if place.axis != 1 || t.window.group != 1 || !self.a.is_const(wt) {
                    return Err("unsupported transposed convolution input".into());
                }
                w.couple(
                    wt,
                    Placement { axis: 0, ..place },
                    ParamRole::ConsumerWeight,
                    ci,
                );
                w.t.consumers.insert(ci);
            }
            Op::Gemm {
                trans_a, trans_b, ..
            } => {
                let wt = n.input.get(1).ok_or("no weight")?;
                if (*trans_a && place.axis != 0)
                    || (!*trans_a && place.axis != 1)
                    || !self.a.is_const(wt)
                {
                    return Err(
                        "channels are not the contracted features of a constant weight".into(),
                    );
                }
                let axis = if *trans_b { 1 } else { 0 };
                w.couple(
                    wt,
                    Placement { axis, ..place },
                    ParamRole::ConsumerWeight,
                    ci,
                );
                w.t.consumers.insert(ci);
            }
            _ => {
                return Err(format!(
                    "nnzip cannot follow channels through {}",
                    n.op_type
                ))
            }
        }
        Ok(())
    }

    fn step_norm(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        k: usize,
        place: Placement,
        out0: &str,
        batch: bool,
    ) -> Step {
        if k != 0 || place.axis != 1 {
            return Err("channels not on axis 1".into());
        }
        let n = self.ed.node(ci).ok_or("node gone")?;
        let last = if batch { 4 } else { 2 };
        for pi in 1..=last {
            let name = n.input.get(pi).ok_or("missing parameter")?;
            if !self.a.is_const(name) {
                return Err(format!("parameter {name} is not a constant"));
            }
            w.couple(
                name,
                Placement { axis: 0, ..place },
                ParamRole::PerChannel,
                ci,
            );
        }
        w.forward(ci, out0, place);
        Ok(())
    }

    /// Residual `Add`, gating `Mul`, bias `Add`: constants broadcast per channel are coupled,
    /// other tensors must carry the same channels (a join, resolved after all traces).
    fn step_elementwise(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        k: usize,
        tensor: &str,
        place: Placement,
        out0: &str,
    ) -> Step {
        let n = self.ed.node(ci).ok_or("node gone")?;
        let out_shape = self.shape(out0)?;
        let rank = self.shape(tensor)?.len();
        // The channel axis counted from the right is what broadcasting aligns.
        let from_right = rank.checked_sub(place.axis).ok_or("bad placement")?;
        let out_place = Placement {
            axis: out_shape
                .len()
                .checked_sub(from_right)
                .ok_or("rank mismatch")?,
            ..place
        };
        let channel_size = out_shape
            .get(out_place.axis)
            .cloned()
            .ok_or("rank mismatch")?;
        for (j, other) in n.input.iter().enumerate() {
            if j == k || other.is_empty() {
                continue;
            }
            let stored = if self.a.is_const(other) {
                Some(other.clone())
            } else {
                stored_const(self.ed, other)
            };
            let Some(stored) = stored else { continue };
            let os = self.shape(other)?;
            let Some(a) = os.len().checked_sub(from_right) else {
                continue; // broadcast from a lower rank: one value for all channels
            };
            let d = os.get(a).cloned().ok_or("rank mismatch")?;
            if d.as_int() == Some(1) {
                continue;
            }
            let per_channel = d == channel_size
                && os
                    .iter()
                    .enumerate()
                    .all(|(i, x)| i == a || x.as_int() == Some(1));
            if !per_channel {
                return Err(format!("constant {other} does not broadcast per channel"));
            }
            // The stored tensor holds the same values in the same order: its channel axis is
            // its only non-unit one.
            let sa = if stored == *other {
                a
            } else {
                let ss = self.shape(&stored)?;
                ss.iter()
                    .position(|x| *x == d)
                    .filter(|_| ss.iter().filter(|x| x.as_int() != Some(1)).count() == 1)
                    .ok_or_else(|| format!("constant {stored} does not broadcast per channel"))?
            };
            w.couple(
                &stored,
                Placement { axis: sa, ..place },
                ParamRole::PerChannel,
                ci,
            );
        }
        if self.shape(tensor)?.get(place.axis) != Some(&channel_size) {
            return Err("broadcasts the channel axis".into());
        }
        self.arrivals
            .entry(ci)
            .or_default()
            .push((w.src, k, out_place));
        w.forward(ci, out0, out_place);
        Ok(())
    }

    fn step_concat(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        k: usize,
        place: Placement,
        out0: &str,
        a: usize,
    ) -> Step {
        if a == place.axis {
            let n = self.ed.node(ci).ok_or("node gone")?;
            let mut off = 0usize;
            for prev in n.input.iter().take(k) {
                let d = self.shape(prev)?.get(a).cloned().ok_or("rank mismatch")?;
                off = off
                    .checked_add(known(&d, "a concatenated size")?)
                    .ok_or("overflow")?;
            }
            let offset = place.offset.checked_add(off).ok_or("overflow")?;
            w.forward(ci, out0, Placement { offset, ..place });
        } else {
            // Concatenated along another axis: every input must carry the same channels.
            self.arrivals.entry(ci).or_default().push((w.src, k, place));
            w.forward(ci, out0, place);
        }
        Ok(())
    }

    fn step_split(&mut self, w: &mut Walk, ci: NodeId, place: Placement, a: usize) -> Step {
        let outs = self.ed.node(ci).ok_or("node gone")?.output.clone();
        if a != place.axis {
            for o in &outs {
                w.forward(ci, o, place);
            }
            return Ok(());
        }
        let mut start = 0usize;
        for o in &outs {
            let size = known(
                self.shape(o)?.get(a).ok_or("rank mismatch")?,
                "a split size",
            )?;
            let end = start.checked_add(size).ok_or("overflow")?;
            // Channels of this space inside [start, end).
            let mut first = None;
            let mut count = 0usize;
            for c in place.first..place.first.saturating_add(place.count) {
                let r = place.range(c).ok_or("bad placement")?;
                if r.start >= start && r.end <= end {
                    first.get_or_insert(c);
                    count = count.saturating_add(1);
                } else if r.start < end && r.end > start {
                    return Err("splits a channel's block".into());
                }
            }
            if let Some(f) = first {
                let r0 = place.range(f).ok_or("bad placement")?;
                w.forward(
                    ci,
                    o,
                    Placement {
                        offset: r0.start.saturating_sub(start),
                        first: f,
                        count,
                        ..place
                    },
                );
            }
            start = end;
        }
        Ok(())
    }

    fn step_reshape(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        tensor: &str,
        place: Placement,
        out0: &str,
    ) -> Step {
        let (ins, outs) = (self.shape(tensor)?, self.shape(out0)?);
        let a = place.axis;
        // Axes are bounded by ranks: these cannot overflow.
        let (a1, a2, ins1) = (
            a.saturating_add(1),
            a.saturating_add(2),
            ins.len().saturating_add(1),
        );
        let get = |v: &[Expr], r: std::ops::Range<usize>| v.get(r).map(<[Expr]>::to_vec);
        let (Some(in_a), Some(before)) = (ins.get(a), ins.get(..a)) else {
            return Err("rank mismatch".into());
        };
        if outs.len() > a && outs.get(..=a) == ins.get(..=a) {
            // Only dimensions after the channels change: their placement holds.
            w.forward(ci, out0, place);
        } else if outs.len() == a1
            && outs.get(..a) == Some(before)
            && product(ins.get(a..).unwrap_or_default()).as_ref() == outs.get(a)
        {
            // Channels merged with every following dimension (Flatten before a dense layer).
            let inner = known(
                &product(ins.get(a1..).unwrap_or_default()).ok_or("overflow")?,
                "the features per channel",
            )?;
            let m = |x: usize| x.checked_mul(inner).ok_or("overflow");
            w.forward(
                ci,
                out0,
                Placement {
                    offset: m(place.offset)?,
                    block: m(place.block)?,
                    ..place
                },
            );
        } else if outs.len() == ins1
            && outs.get(..a) == Some(before)
            && get(&ins, a1..ins.len()) == get(&outs, a2..outs.len())
            && outs
                .get(a)
                .zip(outs.get(a1))
                .and_then(|(h, d)| h.checked_mul(d))
                .as_ref()
                == Some(in_a)
        {
            // The channel axis split in two, e.g. [.., H*D] -> [.., H, D] (heads).
            let heads = known(outs.get(a).ok_or("rank")?, "the head count")?;
            let size = known(outs.get(a1).ok_or("rank")?, "the head size")?;
            if size > 0 && place.block.is_multiple_of(size) && place.offset.is_multiple_of(size) {
                w.forward(
                    ci,
                    out0,
                    Placement {
                        offset: place.offset.checked_div(size).ok_or("head size 0")?,
                        block: place.block.checked_div(size).ok_or("head size 0")?,
                        ..place
                    },
                );
            } else {
                if place.block == 1 && place.offset == 0 && in_a.as_usize() == Some(place.count) {
                    self.head_split.insert(w.src, (heads, size));
                }
                return Err(format!(
                    "splits the channel axis into {heads} heads of {size}"
                ));
            }
        } else {
            return Err("reshapes the channel axis (e.g. into attention heads)".into());
        }
        Ok(())
    }

    fn step_axes(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        op: &Op,
        tensor: &str,
        place: Placement,
        out0: &str,
    ) -> Step {
        let (ins, outs) = (self.shape(tensor)?, self.shape(out0)?);
        let a = place.axis;
        let facts = self
            .a
            .shapes()
            .inputs_of(self.ed.node(ci).ok_or("node gone")?);
        if let Op::Reduce(r) = op {
            let axes = r.axes(&facts, ins.len()).ok_or("reduced axes unknown")?;
            if axes.contains(&a) {
                return Err("reduces across the channels".into());
            }
        }
        // The channel axis keeps its size; find it by the dims around it.
        let before = product(ins.get(..a).unwrap_or_default());
        let after_in = product(ins.get(a.saturating_add(1)..).unwrap_or_default());
        let c = ins.get(a).ok_or("rank mismatch")?;
        let reduce = matches!(op, Op::Reduce(_));
        let found = (0..outs.len()).find(|&j| {
            outs.get(j) == Some(c)
                && product(outs.get(..j).unwrap_or_default()) == before
                && (reduce
                    || product(outs.get(j.saturating_add(1)..).unwrap_or_default()) == after_in)
        });
        let j = found.ok_or("cannot follow the channel axis")?;
        w.forward(ci, out0, Placement { axis: j, ..place });
        Ok(())
    }

    fn step_conv(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        tensor: &str,
        place: Placement,
        out0: &str,
    ) -> Step {
        if place.axis != 1 {
            return Err("channels not on axis 1".into());
        }
        let n = self.ed.node(ci).ok_or("node gone")?;
        let wt = n.input.get(1).ok_or("no weight")?.clone();
        if !self.a.is_const(&wt) {
            return Err("its weight is not a constant".into());
        }
        let group = match self.a.valid_op(ci) {
            Some(Op::Conv(win)) => win.group,
            _ => 1,
        };
        if is_depthwise(self.ed, ci) {
            let rows = self
                .a
                .concrete(&wt)
                .and_then(|s| s.first().copied())
                .ok_or("weight shape unknown")?;
            let cin = known(
                self.shape(tensor)?.get(1).ok_or("rank")?,
                "the channel count",
            )?
            .max(1);
            let mult = rows.checked_div(cin).ok_or("no channels")?;
            let dp = Placement {
                axis: 0,
                offset: place.offset.checked_mul(mult).ok_or("overflow")?,
                block: place.block.checked_mul(mult).ok_or("overflow")?,
                ..place
            };
            w.couple(&wt, dp, ParamRole::Depthwise, ci);
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                w.couple(b, dp, ParamRole::Depthwise, ci);
            }
            w.forward(ci, out0, Placement { axis: 1, ..dp });
        } else if group == 1 {
            w.couple(
                &wt,
                Placement { axis: 1, ..place },
                ParamRole::ConsumerWeight,
                ci,
            );
            w.t.consumers.insert(ci);
        } else {
            return Err("grouped convolution".into());
        }
        Ok(())
    }

    fn step_matmul(
        &mut self,
        w: &mut Walk,
        ci: NodeId,
        k: usize,
        tensor: &str,
        place: Placement,
        out0: &str,
    ) -> Step {
        let n = self.ed.node(ci).ok_or("node gone")?;
        let rank = self.shape(tensor)?.len();
        let weight = n.input.get(1).filter(|x| self.a.is_const(x)).cloned();
        match (k, weight) {
            (0, Some(wt)) => {
                if self.a.rank(&wt) != Some(2) || place.axis.saturating_add(1) != rank {
                    return Err(
                        "channels meet a non-constant matrix product (e.g. attention)".into(),
                    );
                }
                w.couple(
                    &wt,
                    Placement { axis: 0, ..place },
                    ParamRole::ConsumerWeight,
                    ci,
                );
                w.t.consumers.insert(ci);
            }
            _ => {
                // Activations times activations (attention): channels on a batch axis of both
                // operands pass through; both must carry the same ones (a join).
                let other = n.input.get(usize::from(k == 0)).ok_or("missing operand")?;
                if self.a.is_const(other) || place.axis.saturating_add(2) >= rank {
                    return Err(
                        "channels meet a non-constant matrix product (e.g. attention)".into(),
                    );
                }
                let os = self.shape(other)?;
                let from_right = rank.checked_sub(place.axis).ok_or("bad placement")?;
                let here = self.shape(tensor)?.get(place.axis).cloned();
                let there = os
                    .len()
                    .checked_sub(from_right)
                    .and_then(|i| os.get(i))
                    .cloned();
                if there.is_none() || there != here {
                    return Err("broadcasts the channel axis".into());
                }
                let out_rank = self.shape(out0)?.len();
                let out_place = Placement {
                    axis: out_rank.checked_sub(from_right).ok_or("rank")?,
                    ..place
                };
                self.arrivals
                    .entry(ci)
                    .or_default()
                    .push((w.src, k, out_place));
                w.forward(ci, out0, out_place);
            }
        }
        Ok(())
    }
}

/// Where element `axis` of a `Reshape`'s target shape comes from, when that element is the
/// channel count the target gives the channels' axis.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetElement {
    /// Copied (0), inferred (-1) or computed at run time: it follows the channels by itself.
    Follows,
    /// Element `index` of constant `tensor`, which node `reader` reads at input `slot`.
    Constant {
        tensor: String,
        index: usize,
        reader: NodeId,
        slot: usize,
    },
}

/// Finds where a reshape's target spells out the count at `axis`: the target itself, or a
/// constant piece of the `Concat` that builds it (through `Unsqueeze`, `Cast`, `Identity`), as
/// exporters write `Concat(Shape(x)[:-1], [heads], [size])`. `Err` when it is a constant nnzip
/// cannot reach.
pub fn reshape_target_element(
    ed: &Editor,
    reshape: NodeId,
    axis: usize,
) -> Result<TargetElement, String> {
    let a = ed.analysis();
    let target = ed
        .node(reshape)
        .and_then(|n| n.input.get(1))
        .cloned()
        .ok_or("no target")?;
    let facts = a.shapes().facts(&target);
    let count = facts
        .value
        .as_ref()
        .and_then(|v| v.get(axis))
        .and_then(Expr::as_int);
    if count.is_none_or(|c| c <= 0) {
        return Ok(TargetElement::Follows);
    }
    let (mut tensor, mut index, mut reader, mut slot) = (target, axis, reshape, 1usize);
    for _ in 0..6 {
        if a.is_const(&tensor) {
            return Ok(TargetElement::Constant {
                tensor,
                index,
                reader,
                slot,
            });
        }
        let p = a
            .producer(&tensor)
            .ok_or("the target shape has no producer")?;
        let n = ed.node(p).ok_or("node gone")?;
        match a.valid_op(p) {
            Some(Op::Concat { .. }) => {
                let mut offset = 0usize;
                let mut found = None;
                for (i, x) in n.input.iter().enumerate() {
                    let len = a.shapes().facts(x).value.map(|v| v.len()).ok_or("a piece of the target shape is unknown")?;
                    if index < offset.saturating_add(len) {
                        found = Some((i, x.clone(), index.saturating_sub(offset)));
                        break;
                    }
                    offset = offset.saturating_add(len);
                }
                let (i, x, j) = found.ok_or("the target shape is shorter than the channels' rank")?;
                (tensor, index, reader, slot) = (x, j, p, i);
            }
            Some(Op::Unsqueeze(_) | Op::Squeeze(_) | Op::Reshape { .. } | Op::Unary(_)) if n.op_type != "Relu" => {
                let x = n.input.first().cloned().ok_or("no input")?;
                (tensor, reader, slot) = (x, p, 0);
            }
            _ => {
                return Err(format!(
                    "the channel count in the target shape of this reshape is computed by {}, which nnzip cannot update",
                    n.op_type
                ))
            }
        }
    }
    Err("the channel count in the target shape is out of nnzip's reach".into())
}

/// Offset, block, first channel and count of a placement (the axis may differ per input).
type PlaceKey = (usize, usize, usize, usize);

/// Union-find over source indices.
fn find(parent: &mut [usize], mut x: usize) -> usize {
    while let Some(&p) = parent.get(x) {
        if p == x {
            break;
        }
        let gp = parent.get(p).copied().unwrap_or(p);
        if let Some(slot) = parent.get_mut(x) {
            *slot = gp;
        }
        x = gp;
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if let Some(slot) = parent.get_mut(ra) {
        *slot = rb;
    }
}

/// Analyses the main graph: every prunable layer's channel group, prunable or not.
pub fn channel_groups(ed: &Editor) -> Vec<ChannelGroup> {
    let a = ed.analysis();
    let mut tracer = Tracer {
        ed,
        a,
        arrivals: HashMap::new(),
        head_split: HashMap::new(),
    };
    let sources = trace_sources(&mut tracer);
    let pos: HashMap<NodeId, usize> = sources.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let mut parent: Vec<usize> = (0..sources.len()).collect();
    let mut extra_block: HashMap<NodeId, Vec<String>> = HashMap::new();
    let mut join_nodes: Vec<NodeId> = tracer.arrivals.keys().copied().collect();
    join_nodes.sort_unstable_by_key(|id| a.position(*id));
    for ni in join_nodes {
        join_at(&tracer, ni, &pos, &mut parent, &mut extra_block);
    }
    assemble(ed, sources, &mut parent, &extra_block)
}

/// (node, channels, trace) of every source in graph order; one that cannot be pruned is
/// blocked with its reason.
fn trace_sources(tracer: &mut Tracer<'_>) -> Vec<(NodeId, usize, Trace)> {
    let (ed, a) = (tracer.ed, tracer.a);
    let mut sources = Vec::new();
    for &id in a.order() {
        let Some(info) = source_info(ed, id) else {
            continue;
        };
        let out = ed
            .node(id)
            .and_then(|n| n.output.first().cloned())
            .unwrap_or_default();
        match info {
            Ok((c, ps)) => {
                let (c, t) = trace_source(tracer, id, &out, c, ps);
                sources.push((id, c, t));
            }
            Err(reason) => {
                let c = a
                    .shape(&out)
                    .and_then(|s| s.get(1))
                    .and_then(Expr::as_usize)
                    .unwrap_or(0);
                sources.push((
                    id,
                    c,
                    Trace {
                        blocked: vec![reason],
                        ..Default::default()
                    },
                ));
            }
        }
    }
    sources
}

/// Traces one source's `c` channels. Where a Reshape splits them into heads and only that
/// stops the trace, traces whole heads instead (the channels become the heads).
fn trace_source(
    tracer: &mut Tracer<'_>,
    id: NodeId,
    out: &str,
    mut c: usize,
    mut ps: Vec<CoupledParam>,
) -> (usize, Trace) {
    let mut t = tracer.trace(id, out, c, 1);
    if let Some(&(heads, size)) = tracer.head_split.get(&id) {
        if !t.blocked.is_empty()
            && t.blocked.iter().all(|b| b.contains(" heads of "))
            && heads.checked_mul(size) == Some(c)
        {
            for v in tracer.arrivals.values_mut() {
                v.retain(|x| x.0 != id);
            }
            t = tracer.trace(id, out, heads, size);
            c = heads;
            for p in &mut ps {
                p.place.block = size;
                p.place.count = heads;
            }
        }
    }
    t.params.extend(ps);
    (c, t)
}

/// A join: at an element-wise node every input that carries channels must carry the same
/// ones. Sources arriving together at the same placement on all of them become one group;
/// where one input's channels are untraced, the sources that arrive are blocked.
fn join_at(
    tracer: &Tracer<'_>,
    ni: NodeId,
    pos: &HashMap<NodeId, usize>,
    parent: &mut [usize],
    extra_block: &mut HashMap<NodeId, Vec<String>>,
) {
    let ed = tracer.ed;
    let (Some(arr), Some(n)) = (tracer.arrivals.get(&ni), ed.node(ni)) else {
        return;
    };
    let live = channel_inputs(tracer, n, arr);
    // placement -> per input, the sources arriving with it
    let mut by_place: HashMap<PlaceKey, HashMap<usize, Vec<NodeId>>> = HashMap::new();
    for &(s, k, p) in arr {
        by_place
            .entry((p.offset, p.block, p.first, p.count))
            .or_default()
            .entry(k)
            .or_default()
            .push(s);
    }
    for inputs in by_place.values() {
        let all: Vec<NodeId> = inputs.values().flatten().copied().collect();
        if live.iter().all(|j| inputs.contains_key(j)) {
            for pair in all.windows(2) {
                if let (Some(&x), Some(&y)) = (
                    pair.first().and_then(|s| pos.get(s)),
                    pair.get(1).and_then(|s| pos.get(s)),
                ) {
                    union(parent, x, y);
                }
            }
        } else {
            for s in all {
                extra_block.entry(s).or_default().push(format!(
                    "{} ({}): joined with a tensor whose channels nnzip cannot trace",
                    label(ed, ni),
                    n.op_type
                ));
            }
        }
    }
}

/// The inputs of join node `n` that carry channels: not constants, and not broadcast along
/// the channel axis (an attention mask of one row for all heads).
fn channel_inputs(
    tracer: &Tracer<'_>,
    n: &NodeProto,
    arr: &[(NodeId, usize, Placement)],
) -> Vec<usize> {
    let (ed, a) = (tracer.ed, tracer.a);
    let out_axis = arr.first().map(|x| x.2.axis);
    let out_rank = n.output.first().and_then(|o| a.rank(o));
    let broadcast = |x: &str| -> bool {
        let (Some(axis), Some(rank), Some(s)) = (out_axis, out_rank, a.shape(x)) else {
            return false;
        };
        let from_right = rank.saturating_sub(axis);
        match s.len().checked_sub(from_right) {
            None => true,
            Some(i) => s.get(i).and_then(Expr::as_int) == Some(1),
        }
    };
    n.input
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.is_empty() && stored_const(ed, x).is_none() && !broadcast(x))
        .map(|(j, _)| j)
        .collect()
}

fn assemble(
    ed: &Editor,
    sources: Vec<(NodeId, usize, Trace)>,
    parent: &mut [usize],
    extra_block: &HashMap<NodeId, Vec<String>>,
) -> Vec<ChannelGroup> {
    let a = ed.analysis();
    let mut groups: HashMap<usize, ChannelGroup> = HashMap::new();
    for (i, (ni, c, t)) in sources.into_iter().enumerate() {
        let root = find(parent, i);
        let gr = groups.entry(root).or_insert_with(|| ChannelGroup {
            channels: c,
            sources: vec![],
            params: vec![],
            activations: vec![],
            consumers: vec![],
            path: vec![],
            blocked: vec![],
            name: label(ed, ni),
        });
        if gr.channels != c {
            gr.blocked.push(format!(
                "joined layers disagree on the channel count ({} vs {c})",
                gr.channels
            ));
        }
        gr.sources.push(ni);
        gr.params.extend(t.params);
        gr.activations.extend(t.activations);
        gr.consumers.extend(t.consumers);
        gr.path.extend(t.path);
        gr.blocked.extend(t.blocked);
        gr.blocked
            .extend(extra_block.get(&ni).into_iter().flatten().cloned());
    }
    let order = |id: &NodeId| a.position(*id);
    let mut out: Vec<ChannelGroup> = groups.into_values().collect();
    for gr in &mut out {
        gr.sources.sort_by_key(order);
        gr.params.sort();
        gr.params.dedup();
        gr.activations.sort();
        gr.activations.dedup();
        gr.consumers.sort_by_key(order);
        gr.consumers.dedup();
        gr.path.sort_by_key(order);
        gr.path.dedup();
        gr.blocked.sort();
        gr.blocked.dedup();
        if gr.consumers.is_empty() && gr.blocked.is_empty() {
            gr.blocked.push("its channels reach no consumer".into());
        }
    }
    out.sort_by_key(|g| g.sources.first().and_then(order));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_that_depends_on_the_input_names_its_symbols_not_a_flag() {
        let e = known(&Expr::sym("H"), "the kernel's height").unwrap_err();
        assert!(e.contains("(symbols: H)") && !e.contains("--"), "{e}");
        assert_eq!(known(&Expr::int(3), "x"), Ok(3));
    }
}
