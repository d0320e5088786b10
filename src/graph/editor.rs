//! The one way passes change a graph. An [`Editor`] owns the model and hands out an
//! [`Analysis`] (who produces and consumes each tensor, which tensors are constants, parsed ops,
//! symbolic shapes) computed on demand. Every mutation takes `&mut self` and drops the analysis,
//! so a pass cannot hold an analysis across an edit: the borrow checker makes a stale index
//! impossible rather than a comment. Nodes are addressed by [`NodeId`]s that survive inserts and
//! removals of other nodes; tensors and constants by name. The protobuf stays the storage, so
//! whatever nnzip does not model (attributes, metadata, doc strings) is carried as it is.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

use onnx_protobuf::{AttributeProto, NodeProto};

use super::index::GraphIndex;
use super::infer::{infer, InputDims, ShapeInfo};
use super::ops::{Op, OpError};
use super::sym::Expr;
use crate::onnx::{tensor_proto, Model, OnnxError};
use crate::tensor::Tensor;

/// A node of the main graph, stable while the editor lives.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(u32);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}", self.0)
    }
}

pub struct Editor {
    model: Model,
    /// Parallel to the main graph's nodes.
    ids: Vec<NodeId>,
    next: u32,
    inputs: InputDims,
    analysis: OnceCell<Analysis>,
}

/// An editor's state, see [`Editor::snapshot`].
pub struct Snapshot {
    model: Model,
    ids: Vec<NodeId>,
    next: u32,
}

/// The graph as it is now: valid until the next edit (which needs `&mut Editor`).
pub struct Analysis {
    index: GraphIndex,
    shapes: ShapeInfo,
    ids: Vec<NodeId>,
    pos: HashMap<NodeId, usize>,
}

impl Analysis {
    pub fn shapes(&self) -> &ShapeInfo {
        &self.shapes
    }

    pub fn shape(&self, tensor: &str) -> Option<&[Expr]> {
        self.shapes.shape(tensor)
    }

    pub fn concrete(&self, tensor: &str) -> Option<Vec<usize>> {
        self.shapes.concrete(tensor)
    }

    pub fn rank(&self, tensor: &str) -> Option<usize> {
        self.shapes.rank(tensor)
    }

    pub fn producer(&self, tensor: &str) -> Option<NodeId> {
        self.index
            .producer
            .get(tensor)
            .and_then(|&p| self.ids.get(p).copied())
    }

    /// The nodes reading `tensor`, with the input slot.
    pub fn consumers(&self, tensor: &str) -> Vec<(NodeId, usize)> {
        self.index
            .consumers_of(tensor)
            .iter()
            .filter_map(|&(p, k)| Some((*self.ids.get(p)?, k)))
            .collect()
    }

    pub fn is_const(&self, tensor: &str) -> bool {
        self.index.is_const(tensor)
    }

    pub fn is_graph_output(&self, tensor: &str) -> bool {
        self.index.graph_outputs.contains(tensor)
    }

    pub fn is_graph_input(&self, tensor: &str) -> bool {
        self.index.graph_inputs.contains(tensor)
    }

    /// The parsed op of a node (`Err` when its attributes are invalid).
    pub fn op(&self, id: NodeId) -> Option<&Result<Op, OpError>> {
        self.shapes.ops.get(*self.pos.get(&id)?)
    }

    /// The parsed op, when valid.
    pub fn valid_op(&self, id: NodeId) -> Option<&Op> {
        self.op(id)?.as_ref().ok()
    }

    /// Node ids in graph order.
    pub fn order(&self) -> &[NodeId] {
        &self.ids
    }

    /// Position in the graph (topological order).
    pub fn position(&self, id: NodeId) -> Option<usize> {
        self.pos.get(&id).copied()
    }
}

impl Editor {
    /// Edits `model`, inferring shapes with `inputs` in place of declared input dims.
    pub fn new(model: Model, inputs: InputDims) -> Editor {
        let n = model.graph().node.len();
        let ids = (0..n)
            .map(|i| NodeId(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        Editor {
            model,
            ids,
            next: u32::try_from(n).unwrap_or(u32::MAX),
            inputs,
            analysis: OnceCell::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn into_model(self) -> Model {
        self.model
    }

    pub fn inputs(&self) -> &InputDims {
        &self.inputs
    }

    /// The current analysis, computed on first use after an edit.
    pub fn analysis(&self) -> &Analysis {
        self.analysis.get_or_init(|| Analysis {
            index: GraphIndex::new(&self.model),
            shapes: infer(&self.model, &self.inputs),
            ids: self.ids.clone(),
            pos: self
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, i))
                .collect(),
        })
    }

    fn changed(&mut self) {
        self.analysis = OnceCell::new();
    }

    fn pos(&self, id: NodeId) -> Option<usize> {
        match self.analysis.get() {
            Some(a) => a.position(id),
            None => self.ids.iter().position(|x| *x == id),
        }
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeProto> {
        self.model.graph().node.get(self.pos(id)?)
    }

    /// The node to change in place (inputs, outputs, attributes).
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut NodeProto> {
        let p = self.pos(id)?;
        self.changed();
        self.model.graph_mut().node.get_mut(p)
    }

    /// Sets input `k` of a node, padding with empty (omitted) inputs.
    pub fn set_input(&mut self, id: NodeId, k: usize, name: &str) -> bool {
        let Some(n) = self.node_mut(id) else {
            return false;
        };
        while n.input.len() <= k {
            n.input.push(String::new());
        }
        if let Some(slot) = n.input.get_mut(k) {
            *slot = name.to_string();
        }
        true
    }

    /// Sets an integer attribute (added when absent).
    pub fn set_attr_int(&mut self, id: NodeId, name: &str, v: i64) {
        self.set_attr(
            id,
            name,
            |a| a.i = v,
            onnx_protobuf::attribute_proto::AttributeType::INT,
        );
    }

    pub fn set_attr_ints(&mut self, id: NodeId, name: &str, v: Vec<i64>) {
        self.set_attr(
            id,
            name,
            |a| a.ints = v,
            onnx_protobuf::attribute_proto::AttributeType::INTS,
        );
    }

    fn set_attr(
        &mut self,
        id: NodeId,
        name: &str,
        f: impl FnOnce(&mut AttributeProto),
        ty: onnx_protobuf::attribute_proto::AttributeType,
    ) {
        let Some(n) = self.node_mut(id) else { return };
        match n.attribute.iter_mut().find(|a| a.name == name) {
            Some(a) => f(a),
            None => {
                let mut a = AttributeProto::new();
                a.name = name.to_string();
                a.type_ = protobuf::EnumOrUnknown::new(ty);
                f(&mut a);
                n.attribute.push(a);
            }
        }
    }

    pub fn remove_attr(&mut self, id: NodeId, name: &str) {
        if let Some(n) = self.node_mut(id) {
            n.attribute.retain(|a| a.name != name);
        }
    }

    fn new_id(&mut self) -> NodeId {
        let id = NodeId(self.next);
        self.next = self.next.saturating_add(1);
        id
    }

    /// Inserts `n` right after `anchor` (so its inputs may be the anchor's outputs).
    pub fn insert_after(&mut self, anchor: NodeId, n: NodeProto) -> Option<NodeId> {
        let p = self.pos(anchor)?.checked_add(1)?;
        Some(self.insert_at(p, n))
    }

    /// Inserts `n` right before `anchor` (so the anchor may read its outputs).
    pub fn insert_before(&mut self, anchor: NodeId, n: NodeProto) -> Option<NodeId> {
        let p = self.pos(anchor)?;
        Some(self.insert_at(p, n))
    }

    fn insert_at(&mut self, p: usize, n: NodeProto) -> NodeId {
        let id = self.new_id();
        let p = p.min(self.ids.len());
        self.ids.insert(p, id);
        self.model.graph_mut().node.insert(p, n);
        self.changed();
        id
    }

    /// Removes a node; what read its outputs must have been rewired first.
    pub fn remove_node(&mut self, id: NodeId) -> bool {
        let Some(p) = self.pos(id) else {
            return false;
        };
        self.ids.remove(p);
        self.model.graph_mut().node.remove(p);
        self.changed();
        true
    }

    /// A name no tensor, node output or initializer of the model uses, from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        super::edit::fresh_name(self.model.graph(), base)
    }

    /// Replaces every use of `old` as a node input with `new` (in subgraphs too).
    pub fn replace_uses(&mut self, old: &str, new: &str) {
        super::edit::replace_uses(self.model.graph_mut(), old, new);
        self.changed();
    }

    /// Bypasses a single-input node: its readers read its input instead. Refused (false) when
    /// its output is a graph output.
    pub fn bypass(&mut self, id: NodeId) -> bool {
        let Some(n) = self.node(id) else {
            return false;
        };
        let (Some(input), Some(output)) = (n.input.first().cloned(), n.output.first().cloned())
        else {
            return false;
        };
        if self.model.graph().output.iter().any(|o| o.name == output) {
            return false;
        }
        self.replace_uses(&output, &input);
        true
    }

    /// A constant's value, if `tensor` is one.
    pub fn constant(&self, tensor: &str) -> Result<Option<Tensor>, OnnxError> {
        self.analysis().index.constant(&self.model, tensor)
    }

    /// The value of input `k` of a node, if that input is a constant.
    pub fn input_constant(&self, id: NodeId, k: usize) -> Result<Option<Tensor>, OnnxError> {
        match self.node(id).and_then(|n| n.input.get(k)) {
            Some(name) => self.constant(name),
            None => Ok(None),
        }
    }

    /// Writes a constant in place: every reader sees the new value.
    pub fn write_constant(&mut self, tensor: &str, t: &Tensor) -> Result<(), OnnxError> {
        let id = self.analysis().index.constants.get(tensor).cloned();
        match id {
            Some(id) => self.write_weight(&id, tensor, t),
            None => Err(OnnxError::NotConstant(tensor.to_string())),
        }
    }

    /// Writes weight `name` (its name in its own graph) at `id`, anywhere in the model
    /// (subgraphs too). Ids are positions: one taken before a structural edit may address
    /// another tensor now, so the write is refused ([`OnnxError::StaleWeight`]) unless `id`
    /// still names `name`. Weight writes are not structural: ids stay valid across them. The
    /// analysis survives when only values of a float or large tensor changed, which no shape
    /// depends on.
    pub fn write_weight(
        &mut self,
        id: &crate::onnx::weights::WeightId,
        name: &str,
        t: &Tensor,
    ) -> Result<(), OnnxError> {
        if self.model.name_at(id) != Some(name) {
            return Err(OnnxError::StaleWeight(name.to_string()));
        }
        let before = self.model.read(id).map(|old| old.dims).ok();
        self.model.write(id, t)?;
        let keeps_shapes = before.as_deref() == Some(t.dims.as_slice())
            && (t.dtype.is_float() || t.numel() > super::ops::MAX_VALUE);
        if !keeps_shapes {
            self.changed();
        }
        Ok(())
    }

    /// The whole state, to return to with [`Editor::restore`] (trying a change and keeping it
    /// only if it measures well).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            model: self.model.clone(),
            ids: self.ids.clone(),
            next: self.next,
        }
    }

    pub fn restore(&mut self, s: Snapshot) {
        self.model = s.model;
        self.ids = s.ids;
        self.next = s.next;
        self.changed();
    }

    /// Adds an initializer under a fresh name from `base`; returns the name.
    pub fn add_constant(&mut self, base: &str, t: &Tensor) -> String {
        let name = self.fresh_name(base);
        self.model
            .graph_mut()
            .initializer
            .push(tensor_proto(&name, t));
        self.changed();
        name
    }

    /// Gives input `k` of `node` the value `t`: in place when nothing else reads that constant,
    /// else as a new initializer only this node reads. Adds the input when missing.
    pub fn set_input_constant(
        &mut self,
        node: NodeId,
        k: usize,
        t: &Tensor,
        base: &str,
    ) -> Result<(), OnnxError> {
        let current = self
            .node(node)
            .and_then(|n| n.input.get(k))
            .filter(|s| !s.is_empty())
            .cloned();
        if let Some(name) = &current {
            let a = self.analysis();
            let sole = a.is_const(name)
                && !a.is_graph_output(name)
                && super::edit::use_count(self.model.graph(), name) == 1;
            if sole {
                return self.write_constant(name, t);
            }
        }
        let name = self.add_constant(base, t);
        self.set_input(node, k, &name);
        Ok(())
    }

    /// Removes what nothing uses (nodes not feeding a graph output, then initializers and stale
    /// value_info). Returns (nodes, initializers) removed.
    pub fn sweep(&mut self) -> (usize, usize) {
        let mut removed = 0usize;
        loop {
            let used = super::edit::used_names(self.model.graph());
            let dead: Vec<NodeId> = self
                .model
                .graph()
                .node
                .iter()
                .zip(&self.ids)
                .filter(|(n, _)| !n.output.iter().any(|o| !o.is_empty() && used.contains(o)))
                .map(|(_, id)| *id)
                .collect();
            if dead.is_empty() {
                break;
            }
            for id in dead {
                if self.remove_node(id) {
                    removed = removed.saturating_add(1);
                }
            }
        }
        let (_, inits) = super::edit::remove_unused(&mut self.model);
        self.changed();
        (removed, inits)
    }

    /// Drops declared shapes of these tensors (their sizes changed; ONNX Runtime re-infers).
    pub fn forget_shapes(&mut self, names: &HashSet<String>) {
        super::edit::forget_shapes(&mut self.model, names);
        self.changed();
    }
}
