//! One view over every weight of a model, wherever it is stored: graph initializers, `Constant`
//! nodes (`value`, `value_float(s)`, `value_int(s)`), and the same inside the subgraphs of
//! `If`/`Loop`/`Scan` (any graph-valued attribute), to any depth. A changed tensor is written back
//! into the slot it came from.

use onnx_protobuf::{GraphProto, NodeProto, TensorProto};

use super::{decode_tensor_with, store_tensor, Model, OnnxError};
use crate::tensor::{DType, Tensor};

/// One step down into a subgraph: `graph[node].attribute[attr]` (`.g`, or `.graphs[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GraphStep {
    pub node: usize,
    pub attr: usize,
    pub graph: Option<usize>,
}

/// Where in its graph a weight sits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightSlot {
    Initializer(usize),
    Constant { node: usize, attr: usize },
}

/// Address of a weight for as long as the graph's node and initializer lists are unchanged
/// (positions); [`crate::graph::editor::Editor::write_weight`] checks it still names its weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId {
    pub graph: Vec<GraphStep>,
    pub slot: WeightSlot,
}

/// How a weight is stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    Initializer,
    /// An initializer whose bytes live in an external-data file.
    External,
    ConstantTensor,
    ConstantFloats,
    ConstantFloat,
    ConstantInts,
    ConstantInt,
}

impl std::fmt::Display for WeightStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightStorage::Initializer => "initializer",
            WeightStorage::External => "external",
            WeightStorage::ConstantTensor => "Constant.value",
            WeightStorage::ConstantFloats => "Constant.value_floats",
            WeightStorage::ConstantFloat => "Constant.value_float",
            WeightStorage::ConstantInts => "Constant.value_ints",
            WeightStorage::ConstantInt => "Constant.value_int",
        })
    }
}

/// A weight's address and description.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightInfo {
    pub id: WeightId,
    /// The tensor's name in the graph (initializer name, or the Constant node's output).
    pub name: String,
    /// `""` for the main graph, else the path of subgraphs, e.g. `if_node/then_branch`.
    pub scope: String,
    pub storage: WeightStorage,
    pub dtype: DType,
    pub dims: Vec<usize>,
}

impl WeightInfo {
    /// Name qualified by scope, unique within a model.
    pub fn qualified_name(&self) -> String {
        if self.scope.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.scope, self.name)
        }
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

pub(crate) fn is_constant_node(n: &NodeProto) -> bool {
    n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx")
}

fn subgraph<'a>(g: &'a GraphProto, s: &GraphStep) -> Option<&'a GraphProto> {
    let a = g.node.get(s.node)?.attribute.get(s.attr)?;
    match s.graph {
        None => a.g.as_ref(),
        Some(i) => a.graphs.get(i),
    }
}

fn subgraph_mut<'a>(g: &'a mut GraphProto, s: &GraphStep) -> Option<&'a mut GraphProto> {
    let a = g.node.get_mut(s.node)?.attribute.get_mut(s.attr)?;
    match s.graph {
        None => a.g.as_mut(),
        Some(i) => a.graphs.get_mut(i),
    }
}

/// The graph at `path` below `root`.
pub fn graph_at<'a>(root: &'a GraphProto, path: &[GraphStep]) -> Option<&'a GraphProto> {
    path.iter().try_fold(root, subgraph)
}

pub fn graph_at_mut<'a>(
    root: &'a mut GraphProto,
    path: &[GraphStep],
) -> Option<&'a mut GraphProto> {
    path.iter().try_fold(root, subgraph_mut)
}

/// Calls `f` for the main graph and every subgraph, depth first, with its path and scope name.
pub fn visit_graphs<'a>(
    root: &'a GraphProto,
    f: &mut dyn FnMut(&[GraphStep], &str, &'a GraphProto),
) {
    fn walk<'a>(
        g: &'a GraphProto,
        path: &mut Vec<GraphStep>,
        scope: &str,
        f: &mut dyn FnMut(&[GraphStep], &str, &'a GraphProto),
    ) {
        f(path, scope, g);
        for (ni, n) in g.node.iter().enumerate() {
            let label = if n.name.is_empty() {
                format!("{}#{ni}", n.op_type)
            } else {
                n.name.clone()
            };
            for (ai, a) in n.attribute.iter().enumerate() {
                let mut sub = |gi: Option<usize>, sg: &'a GraphProto| {
                    let s = match gi {
                        None => format!("{label}/{}", a.name),
                        Some(i) => format!("{label}/{}[{i}]", a.name),
                    };
                    let s = if scope.is_empty() {
                        s
                    } else {
                        format!("{scope}/{s}")
                    };
                    path.push(GraphStep {
                        node: ni,
                        attr: ai,
                        graph: gi,
                    });
                    walk(sg, path, &s, f);
                    path.pop();
                };
                if let Some(sg) = a.g.as_ref() {
                    sub(None, sg);
                }
                for (gi, sg) in a.graphs.iter().enumerate() {
                    sub(Some(gi), sg);
                }
            }
        }
    }
    walk(root, &mut Vec::new(), "", f);
}

fn dims_of(tp: &TensorProto) -> Vec<usize> {
    tp.dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect()
}

impl Model {
    /// Every weight in the model, main graph first, then subgraphs depth first.
    pub fn weights(&self) -> Vec<WeightInfo> {
        let mut out = Vec::new();
        visit_graphs(self.graph(), &mut |path, scope, g| {
            for (i, t) in g.initializer.iter().enumerate() {
                out.push(WeightInfo {
                    id: WeightId {
                        graph: path.to_vec(),
                        slot: WeightSlot::Initializer(i),
                    },
                    name: t.name.clone(),
                    scope: scope.to_string(),
                    storage: if t.data_location.value() == 1 {
                        WeightStorage::External
                    } else {
                        WeightStorage::Initializer
                    },
                    dtype: DType::from_onnx(t.data_type),
                    dims: dims_of(t),
                });
            }
            for (ni, n) in g.node.iter().enumerate() {
                if !is_constant_node(n) {
                    continue;
                }
                let name = n.output.first().cloned().unwrap_or_default();
                for (ai, a) in n.attribute.iter().enumerate() {
                    let (storage, dtype, dims) = match a.name.as_str() {
                        "value" => match a.t.as_ref() {
                            Some(t) => (
                                if t.data_location.value() == 1 {
                                    WeightStorage::External
                                } else {
                                    WeightStorage::ConstantTensor
                                },
                                DType::from_onnx(t.data_type),
                                dims_of(t),
                            ),
                            None => continue,
                        },
                        "value_floats" => (
                            WeightStorage::ConstantFloats,
                            DType::F32,
                            vec![a.floats.len()],
                        ),
                        "value_float" => (WeightStorage::ConstantFloat, DType::F32, vec![]),
                        "value_ints" => {
                            (WeightStorage::ConstantInts, DType::I64, vec![a.ints.len()])
                        }
                        "value_int" => (WeightStorage::ConstantInt, DType::I64, vec![]),
                        _ => continue,
                    };
                    if dtype == DType::Str {
                        continue;
                    }
                    out.push(WeightInfo {
                        id: WeightId {
                            graph: path.to_vec(),
                            slot: WeightSlot::Constant { node: ni, attr: ai },
                        },
                        name: name.clone(),
                        scope: scope.to_string(),
                        storage,
                        dtype,
                        dims,
                    });
                }
            }
        });
        out
    }

    /// The first weight with this name, main graph first; `scope/name` selects a subgraph's.
    pub fn find_weight(&self, name: &str) -> Option<WeightInfo> {
        let all = self.weights();
        all.iter()
            .find(|w| w.scope.is_empty() && w.name == name)
            .or_else(|| all.iter().find(|w| w.qualified_name() == name))
            .cloned()
    }

    /// The tensor proto behind a weight, where it is one (initializers and `Constant.value`).
    pub fn tensor_proto(&self, id: &WeightId) -> Option<&TensorProto> {
        let g = graph_at(self.graph(), &id.graph)?;
        match id.slot {
            WeightSlot::Initializer(i) => g.initializer.get(i),
            WeightSlot::Constant { node, attr } => {
                g.node.get(node)?.attribute.get(attr)?.t.as_ref()
            }
        }
    }

    /// Checks weight `id` as [`Model::read`] would decode it; initializers' inline data is not
    /// copied.
    pub fn check(&self, id: &WeightId) -> Result<(), OnnxError> {
        if let WeightSlot::Initializer(i) = id.slot {
            let g = graph_at(self.graph(), &id.graph)
                .ok_or_else(|| OnnxError::NoSuchWeight(id.clone()))?;
            let tp = g
                .initializer
                .get(i)
                .ok_or_else(|| OnnxError::NoSuchWeight(id.clone()))?;
            return super::check_tensor_with(tp, Some(self.external_store()));
        }
        self.read(id).map(drop)
    }

    /// The name of the tensor `id` addresses now (initializer name, or the Constant node's
    /// output), to check an id against the weight it was taken for.
    pub fn name_at(&self, id: &WeightId) -> Option<&str> {
        let g = graph_at(self.graph(), &id.graph)?;
        match id.slot {
            WeightSlot::Initializer(i) => g.initializer.get(i).map(|t| t.name.as_str()),
            WeightSlot::Constant { node, .. } => g
                .node
                .get(node)
                .filter(|n| is_constant_node(n))
                .and_then(|n| n.output.first())
                .map(String::as_str),
        }
    }

    /// An inline initializer's little-endian bytes, borrowed (checked against its type and
    /// dims); `None` for other weights, which [`Model::read`] decodes.
    pub fn raw_bytes(&self, id: &WeightId) -> Option<&[u8]> {
        let WeightSlot::Initializer(i) = id.slot else {
            return None;
        };
        let tp = graph_at(self.graph(), &id.graph)?.initializer.get(i)?;
        if tp.data_location.value() == 1 || tp.raw_data.is_empty() {
            return None;
        }
        let dims = super::proto_dims(tp).ok()?;
        crate::tensor::check_len(DType::from_onnx(tp.data_type), &dims, tp.raw_data.len()).ok()?;
        Some(&tp.raw_data)
    }

    /// Moves an inline initializer's data out of the model (the proto keeps its name, type and
    /// dims), for a stage that converts the values anyway and gives them back with
    /// [`Model::restore_raw`]; `None` for other weights. Until then the model lacks the data.
    pub fn take_raw(&mut self, id: &WeightId) -> Option<Tensor> {
        let WeightSlot::Initializer(i) = id.slot else {
            return None;
        };
        let tp = graph_at_mut(self.graph_mut(), &id.graph)?
            .initializer
            .get_mut(i)?;
        if tp.data_location.value() == 1 || tp.raw_data.is_empty() {
            return None;
        }
        let dims = super::proto_dims(tp).ok()?;
        let dtype = DType::from_onnx(tp.data_type);
        // Checked first: the bytes are only moved once they are known to make a tensor.
        crate::tensor::check_len(dtype, &dims, tp.raw_data.len()).ok()?;
        Tensor::from_bytes(dtype, dims, std::mem::take(&mut tp.raw_data)).ok()
    }

    /// Gives back data [`Model::take_raw`] took.
    pub fn restore_raw(&mut self, id: &WeightId, t: Tensor) {
        if let WeightSlot::Initializer(i) = id.slot {
            if let Some(tp) =
                graph_at_mut(self.graph_mut(), &id.graph).and_then(|g| g.initializer.get_mut(i))
            {
                tp.raw_data = t.into_bytes();
            }
        }
    }

    /// Reads a weight as a dense tensor.
    pub fn read(&self, id: &WeightId) -> Result<Tensor, OnnxError> {
        let missing = || OnnxError::NoSuchWeight(id.clone());
        let g = graph_at(self.graph(), &id.graph).ok_or_else(missing)?;
        let terr = |name: &str| {
            let name = name.to_string();
            move |source| OnnxError::Tensor { name, source }
        };
        match id.slot {
            WeightSlot::Initializer(i) => decode_tensor_with(
                g.initializer.get(i).ok_or_else(missing)?,
                Some(self.external_store()),
            ),
            WeightSlot::Constant { node, attr } => {
                let n = g.node.get(node).ok_or_else(missing)?;
                let a = n.attribute.get(attr).ok_or_else(missing)?;
                let name = n.output.first().map(String::as_str).unwrap_or("");
                match a.name.as_str() {
                    "value" => {
                        let t = a.t.as_ref().ok_or_else(missing)?;
                        let mut t = t.clone();
                        if t.name.is_empty() {
                            t.name = name.to_string();
                        }
                        decode_tensor_with(&t, Some(self.external_store()))
                    }
                    "value_floats" => {
                        Tensor::from_f32(vec![a.floats.len()], &a.floats).map_err(terr(name))
                    }
                    "value_float" => Tensor::from_f32(vec![], &[a.f]).map_err(terr(name)),
                    "value_ints" => {
                        Tensor::from_i64(vec![a.ints.len()], &a.ints).map_err(terr(name))
                    }
                    "value_int" => Tensor::from_i64(vec![], &[a.i]).map_err(terr(name)),
                    _ => Err(missing()),
                }
            }
        }
    }

    /// Writes a weight back where it came from. Tensor-valued slots take any type and shape;
    /// `value_float(s)`/`value_int(s)` keep their type and rank (scalar or 1-D).
    pub fn write(&mut self, id: &WeightId, t: &Tensor) -> Result<(), OnnxError> {
        let missing = || OnnxError::NoSuchWeight(id.clone());
        let g = graph_at_mut(self.graph_mut(), &id.graph).ok_or_else(missing)?;
        // The slot alone says how the weight is stored: no walk over the other weights.
        let (name, a) = match id.slot {
            WeightSlot::Initializer(i) => {
                store_tensor(g.initializer.get_mut(i).ok_or_else(missing)?, t);
                return Ok(());
            }
            WeightSlot::Constant { node, attr } => {
                let n = g.node.get_mut(node).ok_or_else(missing)?;
                let name = n.output.first().cloned().unwrap_or_default();
                (name, n.attribute.get_mut(attr).ok_or_else(missing)?)
            }
        };
        let storage = match a.name.as_str() {
            "value" => WeightStorage::ConstantTensor,
            "value_floats" => WeightStorage::ConstantFloats,
            "value_float" => WeightStorage::ConstantFloat,
            "value_ints" => WeightStorage::ConstantInts,
            "value_int" => WeightStorage::ConstantInt,
            _ => return Err(missing()),
        };
        let incompatible = || OnnxError::IncompatibleWrite {
            name: name.clone(),
            storage,
            dtype: t.dtype,
            dims: t.dims.clone(),
        };
        match storage {
            WeightStorage::ConstantTensor => store_tensor(a.t.as_mut().ok_or_else(missing)?, t),
            WeightStorage::ConstantFloats if t.dims.len() == 1 => {
                a.floats = t.to_f32().map_err(|_| incompatible())?
            }
            WeightStorage::ConstantFloat if t.dims.is_empty() => {
                a.f = t
                    .to_f32()
                    .map_err(|_| incompatible())?
                    .first()
                    .copied()
                    .ok_or_else(incompatible)?
            }
            WeightStorage::ConstantInts if t.dims.len() == 1 => {
                a.ints = t.to_i64().map_err(|_| incompatible())?
            }
            WeightStorage::ConstantInt if t.dims.is_empty() => {
                a.i = t
                    .to_i64()
                    .map_err(|_| incompatible())?
                    .first()
                    .copied()
                    .ok_or_else(incompatible)?
            }
            _ => return Err(incompatible()),
        }
        Ok(())
    }
}
