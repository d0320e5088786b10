//! The protobuf-level edits behind [`super::editor::Editor`]: renaming uses of a tensor (in
//! subgraphs too), fresh names, removing what nothing uses, exposing inner tensors as outputs.

use std::collections::HashSet;

use onnx_protobuf::{GraphProto, NodeProto};

use crate::onnx::weights::visit_graphs;
use crate::onnx::Model;

/// Every tensor name used as a node input anywhere (subgraphs included: they may capture outer
/// names).
pub fn used_names(g: &GraphProto) -> HashSet<String> {
    let mut used = HashSet::new();
    visit_graphs(g, &mut |_, _, sg| {
        for n in &sg.node {
            used.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
        }
        used.extend(sg.output.iter().map(|o| o.name.clone()));
    });
    used
}

/// Replaces every use of `old` as a node input with `new` (in subgraphs too).
pub fn replace_uses(g: &mut GraphProto, old: &str, new: &str) {
    fn walk(g: &mut GraphProto, old: &str, new: &str) {
        for n in &mut g.node {
            for i in &mut n.input {
                if i == old {
                    *i = new.to_string();
                }
            }
            for a in &mut n.attribute {
                if let Some(sg) = a.g.as_mut() {
                    walk(sg, old, new);
                }
                for sg in &mut a.graphs {
                    walk(sg, old, new);
                }
            }
        }
    }
    walk(g, old, new);
}

/// A name not used by any tensor or initializer of the model, starting from `base`.
pub fn fresh_name(g: &GraphProto, base: &str) -> String {
    let mut taken: HashSet<String> = used_names(g);
    for n in &g.node {
        taken.extend(n.output.iter().cloned());
    }
    taken.extend(g.initializer.iter().map(|t| t.name.clone()));
    taken.extend(g.input.iter().map(|t| t.name.clone()));
    if !taken.contains(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| base.to_string())
}

/// How many node inputs (anywhere) use `name`.
pub fn use_count(g: &GraphProto, name: &str) -> usize {
    let mut n = 0usize;
    visit_graphs(g, &mut |_, _, sg| {
        let here = sg
            .node
            .iter()
            .flat_map(|x| x.input.iter())
            .filter(|i| *i == name)
            .count();
        n = n.saturating_add(here);
    });
    n
}

/// Removes nodes whose outputs nothing uses (and that are not graph outputs), repeatedly, then
/// initializers nothing uses. Returns how many nodes and initializers went.
pub fn remove_unused(model: &mut Model) -> (usize, usize) {
    let mut removed_nodes = 0usize;
    loop {
        let g = model.graph();
        let used = used_names(g);
        let keep: Vec<bool> = g
            .node
            .iter()
            .map(|n| n.output.iter().any(|o| !o.is_empty() && used.contains(o)))
            .collect();
        let dead = keep.iter().filter(|k| !**k).count();
        if dead == 0 {
            break;
        }
        removed_nodes = removed_nodes.saturating_add(dead);
        let nodes = std::mem::take(&mut model.graph_mut().node);
        model.graph_mut().node = nodes
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(n, _)| n)
            .collect();
    }
    let used = used_names(model.graph());
    let inputs: HashSet<String> = model.graph().input.iter().map(|i| i.name.clone()).collect();
    let before = model.graph().initializer.len();
    model
        .graph_mut()
        .initializer
        .retain(|t| used.contains(&t.name) || inputs.contains(&t.name));
    let removed_inits = before.saturating_sub(model.graph().initializer.len());
    // value_info entries for tensors that no longer exist
    let mut live: HashSet<String> = used_names(model.graph());
    for n in &model.graph().node {
        live.extend(n.output.iter().cloned());
    }
    model
        .graph_mut()
        .value_info
        .retain(|v| live.contains(&v.name));
    (removed_nodes, removed_inits)
}

/// Drops value_info for these tensors (their shapes changed; ONNX Runtime re-infers them).
pub fn forget_shapes(model: &mut Model, names: &HashSet<String>) {
    model
        .graph_mut()
        .value_info
        .retain(|v| !names.contains(&v.name));
}

/// Exposes inner float tensors as extra graph outputs (for probing activations with ONNX Runtime).
pub fn expose_float_outputs(model: &mut Model, names: &[String]) {
    use onnx_protobuf::{type_proto, TypeProto, ValueInfoProto};
    for name in names {
        if model.graph().output.iter().any(|o| &o.name == name) {
            continue;
        }
        let mut tt = type_proto::Tensor::new();
        tt.elem_type = crate::tensor::DType::F32.onnx_code();
        let mut tp = TypeProto::new();
        tp.value = Some(type_proto::Value::TensorType(tt));
        let mut vi = ValueInfoProto::new();
        vi.name = name.clone();
        vi.type_ = Some(tp).into();
        model.graph_mut().output.push(vi);
    }
}

/// A node with the given op, inputs and outputs (default domain).
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}
