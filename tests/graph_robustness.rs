//! The graph side on hostile models: fixtures with mutated attributes, op types, ranks, input
//! dims and value_info go through inspect, symbolic shape inference, MAC counting, channel
//! analysis and the passes that need no ONNX Runtime. Errors are fine; a panic fails the test.
//! (`fuzz/` runs the same over arbitrary bytes with cargo-fuzz.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nnzip::graph::editor::Editor;
use nnzip::onnx::proto::tensor_shape_proto::dimension::Value as DimValue;
use nnzip::onnx::proto::{type_proto, AttributeProto, ModelProto};
use nnzip::onnx::Model;
use nnzip::passes::prune::{Filter, MagnitudePrune, Norm, StructuredPrune};
use nnzip::passes::simplify::{cleanup::Cleanup, fold_bn::FoldBatchNorm};
use nnzip::passes::{Pass, PassContext};
use proptest::prelude::*;

const FIXTURES: &[&str] = &[
    "cnn.onnx",
    "resnet.onnx",
    "mobilenet.onnx",
    "transformer.onnx",
    "mlp.onnx",
    "constant_weights.onnx",
    "if_subgraph.onnx",
    "if_rate.onnx",
    "loop_subgraph.onnx",
];

/// Values that break arithmetic: negative, zero, huge, off by one.
const NASTY: &[i64] = &[-1, -7, 0, 1, 2, 3, 1 << 31, i64::MAX, i64::MIN, 1 << 62];

const OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Reshape",
    "Flatten",
    "Concat",
    "Split",
    "Slice",
    "Transpose",
    "BatchNormalization",
    "MaxPool",
    "Resize",
    "Gather",
    "Squeeze",
    "Unsqueeze",
    "Add",
    "LSTM",
    "Pad",
    "ReduceMean",
    "Softmax",
    "ConvTranspose",
    "Expand",
    "Tile",
    "Range",
    "If",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Set (or add) an integer-list attribute on node `node % n`.
    Ints {
        node: usize,
        name: usize,
        values: Vec<usize>,
    },
    /// Set an integer attribute.
    Int {
        node: usize,
        name: usize,
        value: usize,
    },
    /// Change a node's op type.
    Op { node: usize, op: usize },
    /// Drop inputs after the first `keep`.
    Truncate { node: usize, keep: usize },
    /// Set an input or value_info dim to a nasty value, or a symbol.
    Dim {
        which: usize,
        axis: usize,
        value: usize,
        symbolic: bool,
    },
    /// Drop or duplicate an axis of an input or value_info.
    Rank { which: usize, drop: bool },
}

const ATTRS: &[&str] = &[
    "axis",
    "axes",
    "perm",
    "pads",
    "strides",
    "kernel_shape",
    "dilations",
    "group",
    "split",
    "transA",
    "transB",
    "keepdims",
    "starts",
    "ends",
    "hidden_size",
    "output_padding",
    "allowzero",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = 0usize..1000;
    prop_oneof![
        (
            idx.clone(),
            0..ATTRS.len(),
            prop::collection::vec(0..NASTY.len(), 0..6)
        )
            .prop_map(|(node, name, values)| Mutation::Ints { node, name, values }),
        (idx.clone(), 0..ATTRS.len(), 0..NASTY.len())
            .prop_map(|(node, name, value)| Mutation::Int { node, name, value }),
        (idx.clone(), 0..OPS.len()).prop_map(|(node, op)| Mutation::Op { node, op }),
        (idx.clone(), 0usize..3).prop_map(|(node, keep)| Mutation::Truncate { node, keep }),
        (idx.clone(), 0usize..6, 0..NASTY.len(), any::<bool>()).prop_map(
            |(which, axis, value, symbolic)| Mutation::Dim {
                which,
                axis,
                value,
                symbolic
            }
        ),
        (idx, any::<bool>()).prop_map(|(which, drop)| Mutation::Rank { which, drop }),
    ]
}

fn set_attr(
    n: &mut nnzip::onnx::proto::NodeProto,
    name: &str,
    f: impl FnOnce(&mut AttributeProto),
) {
    match n.attribute.iter_mut().find(|a| a.name == name) {
        Some(a) => f(a),
        None => {
            let mut a = AttributeProto::new();
            a.name = name.into();
            f(&mut a);
            n.attribute.push(a);
        }
    }
}

fn apply(p: &mut ModelProto, m: &Mutation) {
    let g = p.graph.as_mut().unwrap();
    let nodes = g.node.len().max(1);
    match m {
        Mutation::Ints { node, name, values } => {
            if let Some(n) = g.node.get_mut(node % nodes) {
                set_attr(n, ATTRS[*name], |a| {
                    a.ints = values.iter().map(|&v| NASTY[v]).collect()
                });
            }
        }
        Mutation::Int { node, name, value } => {
            if let Some(n) = g.node.get_mut(node % nodes) {
                set_attr(n, ATTRS[*name], |a| a.i = NASTY[*value]);
            }
        }
        Mutation::Op { node, op } => {
            if let Some(n) = g.node.get_mut(node % nodes) {
                n.op_type = OPS[*op].into();
            }
        }
        Mutation::Truncate { node, keep } => {
            if let Some(n) = g.node.get_mut(node % nodes) {
                n.input.truncate(*keep);
            }
        }
        Mutation::Dim {
            which,
            axis,
            value,
            symbolic,
        } => {
            if let Some(d) = shape_of(g, *which).and_then(|s| s.dim.get_mut(axis % 4)) {
                d.value = Some(if *symbolic {
                    DimValue::DimParam(format!("s{axis}"))
                } else {
                    DimValue::DimValue(NASTY[*value])
                });
            }
        }
        Mutation::Rank { which, drop } => {
            if let Some(s) = shape_of(g, *which) {
                if *drop {
                    s.dim.pop();
                } else if let Some(d) = s.dim.first().cloned() {
                    s.dim.push(d);
                }
            }
        }
    }
}

/// The shape of the `which`-th graph input or value_info (modulo their count).
fn shape_of(
    g: &mut nnzip::onnx::proto::GraphProto,
    which: usize,
) -> Option<&mut nnzip::onnx::proto::TensorShapeProto> {
    let infos: Vec<_> = g.input.iter_mut().chain(g.value_info.iter_mut()).collect();
    let count = infos.len().max(1);
    let vi = infos.into_iter().nth(which % count)?;
    match vi.type_.as_mut()?.value.as_mut()? {
        type_proto::Value::TensorType(t) => t.shape.as_mut(),
        _ => None,
    }
}

/// Everything that reads a model without running it.
fn exercise(model: Model) {
    let _ = nnzip::inspect::inspect(&model, std::path::Path::new("mutated.onnx"), &[]);
    let dims = nnzip::inspect::mac_dims(&model, &[]).unwrap_or_default();
    let _ = nnzip::inspect::count_macs(&model, &dims);
    let mut ed = Editor::new(model, Default::default());
    let _ = nnzip::graph::groups::channel_groups(&ed);
    let ctx = PassContext::default();
    let _ = Cleanup.run(&mut ed, &ctx);
    let _ = FoldBatchNorm.run(&mut ed, &ctx);
    let structured = StructuredPrune {
        fraction: 0.5,
        global: false,
        norm: Norm::L2,
        round_to: 4,
        filter: Filter::default(),
    };
    let _ = structured.prune(&mut ed);
    let magnitude = MagnitudePrune {
        sparsity: 0.3,
        global: false,
        filter: Filter::default(),
    };
    let _ = magnitude.prune(&mut ed);
    let _ = nnzip::graph::groups::channel_groups(&ed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(f in 0..FIXTURES.len(), muts in prop::collection::vec(mutation(), 1..6)) {
        let base = Model::load(fixture(FIXTURES[f])).unwrap();
        let mut p = base.proto.clone();
        for m in &muts {
            apply(&mut p, m);
        }
        if let Ok(m) = Model::from_proto_in(p, None, std::path::Path::new("")) {
            exercise(m);
        }
    }
}

#[test]
fn the_unmutated_fixtures_go_through_everything() {
    for f in FIXTURES {
        exercise(Model::load(fixture(f)).unwrap());
    }
}
