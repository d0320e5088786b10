//! Shape inference over a model's main graph, symbolic where the model is: an input declared
//! `[batch, 3, height, width]` gives every later tensor sizes in `batch`, `height` and `width`
//! (see [`crate::graph::sym`]). Small integer tensors (shape arithmetic) carry their values.
//! Ops nnzip does not model leave their outputs unknown, never wrong; declared `value_info`
//! fills in what inference cannot tell.

use std::collections::HashMap;

use onnx_protobuf::ValueInfoProto;

use super::ops::{Facts, InferCx, Op, OpError, MAX_VALUE};
use super::sym::Expr;
use crate::onnx::{Dim, Model, ValueInfo};
use crate::tensor::{DType, Tensor};

/// Sizes to use for graph inputs instead of their declared dims (concrete from `--shape` or
/// calibration data, or symbolic).
pub type InputDims = HashMap<String, Vec<Expr>>;

/// Concrete input dims as [`InputDims`].
pub fn concrete_inputs(given: &[(String, Vec<usize>)]) -> InputDims {
    given
        .iter()
        .filter_map(|(n, d)| Some((n.clone(), super::sym::known(d)?)))
        .collect()
}

/// What inference found: facts per tensor name, the parsed op of every node, and the sizes the
/// model requires equal.
#[derive(Debug, Default, Clone)]
pub struct ShapeInfo {
    pub facts: HashMap<String, Facts>,
    /// Parallel to the main graph's nodes.
    pub ops: Vec<Result<Op, OpError>>,
    pub equalities: Vec<(Expr, Expr)>,
    /// Known sizes inference found impossible (see [`InferCx::impossible`]).
    pub impossible: usize,
}

impl ShapeInfo {
    /// Whether the model can run at the sizes inferred: no required equality of known sizes
    /// fails and no window is larger than its input.
    pub fn consistent(&self) -> bool {
        self.impossible == 0
            && self
                .equalities
                .iter()
                .all(|(a, b)| a == b || !(a.is_known() && b.is_known()))
    }

    /// The (possibly symbolic) shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[Expr]> {
        self.facts.get(name)?.shape.as_deref()
    }

    /// The shape when every size is known.
    pub fn concrete(&self, name: &str) -> Option<Vec<usize>> {
        super::sym::concrete(self.shape(name)?)
    }

    pub fn rank(&self, name: &str) -> Option<usize> {
        self.shape(name).map(<[Expr]>::len)
    }

    /// Facts of a tensor, default (unknown) for names never seen.
    pub fn facts(&self, name: &str) -> Facts {
        if name.is_empty() {
            return Facts::default();
        }
        self.facts.get(name).cloned().unwrap_or(Facts {
            present: true,
            ..Default::default()
        })
    }

    /// Facts of a node's inputs, in order.
    pub fn inputs_of(&self, n: &onnx_protobuf::NodeProto) -> Vec<Facts> {
        n.input.iter().map(|x| self.facts(x)).collect()
    }

    /// Facts of a node's outputs, in order.
    pub fn outputs_of(&self, n: &onnx_protobuf::NodeProto) -> Vec<Facts> {
        n.output.iter().map(|x| self.facts(x)).collect()
    }
}

/// Declared dims as sizes: fixed values, named parameters, and for unnamed ones a fresh size,
/// named `input[axis]` for graph inputs (so messages can say which).
pub fn declared(vi: &ValueInfo, cx: &mut InferCx, is_input: bool) -> Option<Vec<Expr>> {
    vi.dims.as_ref().map(|d| {
        d.iter()
            .enumerate()
            .map(|(axis, x)| match x {
                Dim::Fixed(n) => i64::try_from(*n)
                    .map(Expr::int)
                    .unwrap_or_else(|_| cx.fresh()),
                // Some exporters name every unknown size "?": that does not make them equal.
                Dim::Symbolic(s) if s != "?" => Expr::sym(s),
                _ if is_input => Expr::sym(&format!("{}[{axis}]", vi.name)),
                _ => cx.fresh(),
            })
            .collect()
    })
}

/// Facts of a constant tensor: its shape, and its values when small.
pub fn constant_facts(t: &Tensor) -> Facts {
    let mut f = match super::sym::known(&t.dims) {
        Some(s) => Facts::shaped(s),
        None => return Facts::default(),
    };
    if t.numel() <= MAX_VALUE {
        if matches!(
            t.dtype,
            DType::I64 | DType::I32 | DType::I8 | DType::U8 | DType::Bool
        ) {
            f.value = t
                .to_i64_lossy()
                .map(|v| v.into_iter().map(Expr::int).collect());
        } else if t.dtype.is_float() {
            f.floats = t
                .to_f32()
                .ok()
                .map(|v| v.into_iter().map(f64::from).collect());
        }
    }
    f
}

/// Infers facts for every tensor of the main graph, with `inputs` overriding declared dims.
pub fn infer(model: &Model, inputs: &InputDims) -> ShapeInfo {
    let g = model.graph();
    let opset = model.opset().unwrap_or(1);
    let mut cx = InferCx::default();
    let mut info = ShapeInfo::default();
    let declared_of =
        |vi: &ValueInfoProto, cx: &mut InferCx| declared(&ValueInfo::from_proto(vi), cx, false);
    // value_info and outputs: only a fallback where inference cannot tell.
    let mut fallback: HashMap<String, Vec<Expr>> = HashMap::new();
    for vi in g.value_info.iter().chain(g.output.iter()) {
        if let Some(d) = declared_of(vi, &mut cx) {
            fallback.insert(vi.name.clone(), d);
        }
    }
    for vi in model.inputs() {
        let shape = inputs
            .get(&vi.name)
            .cloned()
            .or_else(|| declared(&vi, &mut cx, true));
        info.facts.insert(
            vi.name.clone(),
            Facts {
                present: true,
                shape,
                ..Default::default()
            },
        );
    }
    for t in &g.initializer {
        let f = match model.decode_tensor(t) {
            Ok(tensor) => constant_facts(&tensor),
            Err(_) => Facts::default(),
        };
        info.facts
            .insert(t.name.clone(), Facts { present: true, ..f });
    }
    for (ni, n) in g.node.iter().enumerate() {
        let op = Op::parse(n, opset);
        let outs = match &op {
            Ok(Op::Constant) => constant_node_facts(model, ni),
            Ok(o) => o.infer(n, &info.inputs_of(n), &mut cx),
            Err(_) => Vec::new(),
        };
        for (i, name) in n.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let mut f = outs.get(i).cloned().unwrap_or_default();
            f.present = true;
            if f.shape.is_none() {
                f.shape = fallback.get(name).cloned();
            }
            info.facts.insert(name.clone(), f);
        }
        info.ops.push(op);
    }
    info.equalities = cx.equalities;
    info.impossible = cx.impossible;
    info
}

fn constant_node_facts(model: &Model, node: usize) -> Vec<Facts> {
    let ix = crate::graph::index::GraphIndex::constant_slot(model, node);
    match ix.and_then(|id| model.read(&id).ok()) {
        Some(t) => vec![constant_facts(&t)],
        None => vec![],
    }
}
