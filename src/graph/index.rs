//! An index over a model's main graph: who produces and who consumes each tensor, and which
//! tensors are constants (initializers or `Constant` outputs), so passes can walk the graph by
//! name without scanning it.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::NodeProto;

use crate::onnx::weights::{is_constant_node, WeightId, WeightSlot};
use crate::onnx::{Model, OnnxError};
use crate::tensor::Tensor;

/// Producer and consumer maps of the main graph (node indices into `graph.node`).
#[derive(Debug, Clone, Default)]
pub struct GraphIndex {
    pub producer: HashMap<String, usize>,
    pub consumers: HashMap<String, Vec<(usize, usize)>>,
    /// Constant tensors of the main graph and where their data lives.
    pub constants: HashMap<String, WeightId>,
    pub graph_outputs: HashSet<String>,
    pub graph_inputs: HashSet<String>,
}

impl GraphIndex {
    pub fn new(model: &Model) -> GraphIndex {
        let g = model.graph();
        let mut ix = GraphIndex::default();
        for (i, t) in g.initializer.iter().enumerate() {
            ix.constants.insert(
                t.name.clone(),
                WeightId {
                    graph: vec![],
                    slot: WeightSlot::Initializer(i),
                },
            );
        }
        for (ni, n) in g.node.iter().enumerate() {
            for (k, inp) in n.input.iter().enumerate() {
                if !inp.is_empty() {
                    ix.consumers.entry(inp.clone()).or_default().push((ni, k));
                }
            }
            for o in &n.output {
                if !o.is_empty() {
                    ix.producer.insert(o.clone(), ni);
                }
            }
            if let Some(id) = GraphIndex::constant_slot_of(n, ni) {
                if let Some(o) = n.output.first() {
                    ix.constants.insert(o.clone(), id);
                }
            }
        }
        ix.graph_outputs = g.output.iter().map(|o| o.name.clone()).collect();
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        ix.graph_inputs = g
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        ix
    }

    /// Where a `Constant` node at `node` of the main graph keeps its value.
    pub fn constant_slot_of(n: &NodeProto, node: usize) -> Option<WeightId> {
        if !is_constant_node(n) {
            return None;
        }
        let attr = n.attribute.iter().position(|a| {
            matches!(
                a.name.as_str(),
                "value" | "value_float" | "value_floats" | "value_int" | "value_ints"
            )
        })?;
        Some(WeightId {
            graph: vec![],
            slot: WeightSlot::Constant { node, attr },
        })
    }

    /// [`GraphIndex::constant_slot_of`] by position in `model`'s main graph.
    pub fn constant_slot(model: &Model, node: usize) -> Option<WeightId> {
        GraphIndex::constant_slot_of(model.graph().node.get(node)?, node)
    }

    pub fn is_const(&self, name: &str) -> bool {
        self.constants.contains_key(name)
    }

    /// A constant's value, if `name` is one.
    pub fn constant(&self, model: &Model, name: &str) -> Result<Option<Tensor>, OnnxError> {
        match self.constants.get(name) {
            Some(id) => model.read(id).map(Some),
            None => Ok(None),
        }
    }

    pub fn consumers_of(&self, name: &str) -> &[(usize, usize)] {
        self.consumers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A node's label for reports: its name, or `op#index`.
pub fn node_label(n: &NodeProto, index: usize) -> String {
    if n.name.is_empty() {
        format!("{}#{index}", n.op_type)
    } else {
        n.name.clone()
    }
}
