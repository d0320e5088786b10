//! The simplify stage: outputs stay equal to the pruned model's while channels physically leave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use nnzip::calib::Calibration;
use nnzip::graph::groups::{ChannelGroup, ParamRole};
use nnzip::onnx::Model;
use nnzip::passes::simplify::{simplify, ModelStats};
use nnzip::tensor::Tensor;
use rand::{seq::SliceRandom, SeedableRng};

fn groups(model: &Model) -> Vec<ChannelGroup> {
    groups_of(model)
}

/// Zeroes channels of a group in every coupled tensor the way structured pruning does (BN
/// mean/var kept); `keep_bias` leaves biases and BN shifts so the dead channels are nonzero
/// constants.
fn zero_channels(model: &mut Model, g: &ChannelGroup, chans: &BTreeSet<usize>, keep_bias: bool) {
    let mut e = ed(model);
    for p in &g.params {
        let node = e.node(p.node).unwrap().clone();
        // Not among the inputs: a constant seen through a Reshape (an exporter's bias).
        let k = node.input.iter().position(|i| i == &p.name);
        let k = k.unwrap_or(usize::MAX);
        let is_bn = node.op_type == "BatchNormalization";
        if is_bn && k >= 3 {
            continue; // running mean / variance
        }
        if keep_bias
            && (p.role == ParamRole::SourceBias
                || (is_bn && k == 2)
                || p.role == ParamRole::ConsumerWeight)
        {
            continue;
        }
        if keep_bias && p.role == ParamRole::PerChannel && !is_bn {
            continue;
        }
        let t = e.constant(&p.name).unwrap().unwrap();
        let mut v = t.to_f32().unwrap();
        for &c in chans {
            if let Some(r) = p.place.range(c) {
                for i in r {
                    for o in t.axis_offsets(p.place.axis, i) {
                        v[o] = 0.0;
                    }
                }
            }
        }
        e.write_constant(&p.name, &Tensor::from_f32(t.dims.clone(), &v).unwrap())
            .unwrap();
    }
}

fn prune_randomly(model: &mut Model, fraction: f64, seed: u64) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut total = 0;
    for g in groups(model).into_iter().filter(|g| g.prunable()) {
        let n = ((g.channels as f64) * fraction).round() as usize;
        let n = n.min(g.channels - 1);
        let mut idx: Vec<usize> = (0..g.channels).collect();
        idx.shuffle(&mut rng);
        let chosen: BTreeSet<usize> = idx.into_iter().take(n).collect();
        total += chosen.len();
        zero_channels(model, &g, &chosen, false);
    }
    total
}

#[test]
fn simplified_models_match_the_pruned_ones_on_every_fixture() {
    for (name, data) in TRAINED {
        for (fi, fraction) in [0.25, 0.5, 0.75].into_iter().enumerate() {
            let mut pruned = Model::load(fixture(name)).unwrap();
            let zeroed = prune_randomly(&mut pruned, fraction, 7 + fi as u64);
            let calib = Calibration::load(&fixture(data), &pruned)
                .unwrap()
                .take(64)
                .unwrap();
            let mut s = pruned.clone();
            let r = simplify(&mut s, runtime(), None, &[]).unwrap();
            assert!(
                r.verification.within_tolerance,
                "{name} {fraction}: {:?}",
                r.verification
            );
            // Every zeroed channel left the graph.
            assert_eq!(r.channels_removed as usize, zeroed, "{name} {fraction}");
            assert!(r.after.parameters < r.before.parameters);
            assert!(
                r.after.macs.unwrap() < r.before.macs.unwrap(),
                "{name} {fraction}"
            );
            // Independently of the report: same outputs on held-out data, fewer weights.
            let a = nnzip::calib::run_model(runtime(), &pruned, &calib).unwrap();
            let b = nnzip::calib::run_model(runtime(), &s, &calib).unwrap();
            let (d, m) = nnzip::calib::max_abs_diff(&a, &b);
            assert!(d <= 1e-4 * m.max(1.0), "{name} {fraction}: {d} vs {m}");
            // The saved model loads and runs from disk too.
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join(name);
            s.save(&out, &Default::default()).unwrap();
            let x = vec![("input".to_string(), held_out_batch(data, 4).0)];
            let (d2, _) = nnzip::calib::max_abs_diff(&run_model(&pruned, &x), &run_file(&out, &x));
            assert!(d2 <= 1e-4 * m.max(1.0));
        }
    }
}

#[test]
fn parameter_count_drops_by_exactly_the_removed_slices() {
    let mut pruned = Model::load(fixture("cnn.onnx")).unwrap();
    prune_randomly(&mut pruned, 0.5, 3);
    // Fold BN alone first: the structure whose slices the dead-channel pass removes.
    let mut folded = pruned.clone();
    let ctx = nnzip::passes::PassContext {
        calib: None,
        runtime: Some(runtime()),
        inputs: None,
    };
    nnzip::passes::run_passes(
        &[
            Box::new(nnzip::passes::simplify::cleanup::Cleanup),
            Box::new(nnzip::passes::simplify::fold_bn::FoldBatchNorm),
            Box::new(nnzip::passes::simplify::cleanup::Cleanup),
        ],
        &mut ed(&mut folded),
        &ctx,
    )
    .unwrap();
    let e = nnzip::graph::editor::Editor::new(folded.clone(), Default::default());
    // Per tensor and axis, the indices that go; slices of two groups may cross in one tensor
    // (a conv's output and input channels), so count what remains.
    let mut cut: std::collections::HashMap<
        String,
        std::collections::HashMap<usize, BTreeSet<usize>>,
    > = Default::default();
    for g in groups(&folded).into_iter().filter(|g| g.prunable()) {
        let w = g
            .params
            .iter()
            .find(|p| p.role == ParamRole::SourceWeight)
            .unwrap();
        let t = e.constant(&w.name).unwrap().unwrap();
        let v = t.to_f32().unwrap();
        for c in 0..g.channels {
            if t.axis_offsets(w.place.axis, c).iter().all(|&o| v[o] == 0.0) {
                for p in &g.params {
                    cut.entry(p.name.clone())
                        .or_default()
                        .entry(p.place.axis)
                        .or_default()
                        .extend(p.place.range(c).unwrap());
                }
            }
        }
    }
    let mut expected_removed = 0usize;
    for (name, axes) in &cut {
        let t = e.constant(name).unwrap().unwrap();
        let kept: usize = t
            .dims
            .iter()
            .enumerate()
            .map(|(a, &d)| d - axes.get(&a).map_or(0, |s| s.len()))
            .product();
        expected_removed += t.numel() - kept;
    }
    let mut s = pruned.clone();
    let r = simplify(&mut s, runtime(), None, &[]).unwrap();
    let base = ModelStats::of(&folded, &[]).unwrap().parameters;
    assert_eq!(
        r.after.parameters as usize,
        base as usize - expected_removed
    );
}

#[test]
fn constant_channels_into_padded_convs_get_exact_bias_maps() {
    // Dead channels with a nonzero constant (bias and BN shift kept) feeding 3x3 padded convs:
    // the constant's contribution shrinks at the borders, so a per-position map is needed.
    let mut pruned = Model::load(fixture("cnn.onnx")).unwrap();
    let g = groups(&pruned)
        .into_iter()
        .find(|g| g.name == "conv1")
        .unwrap();
    zero_channels(&mut pruned, &g, &[1, 4, 9].into_iter().collect(), true);
    let mut s = pruned.clone();
    let calib = Calibration::load(&fixture("mnist_test.npz"), &pruned)
        .unwrap()
        .take(32)
        .unwrap();
    let r = simplify(&mut s, runtime(), Some(&calib), &[]).unwrap();
    assert!(r.verification.within_tolerance, "{:?}", r.verification);
    let maps: u64 = r
        .passes
        .iter()
        .filter(|p| p.pass == "remove_dead_channels")
        .map(|p| match &p.details {
            nnzip::passes::PassDetails::DeadChannels(d) => {
                d.removals.iter().map(|x| x.bias_maps as u64).sum::<u64>()
            }
            _ => 0,
        })
        .sum();
    assert!(maps >= 1, "no bias map: {:?}", r.passes);
    assert!(s
        .graph()
        .node
        .iter()
        .any(|n| n.name.ends_with(".bias_map_add")));
}

#[test]
fn zero_entropy_collapse_removes_always_off_channels_and_merges_linear_layers() {
    // Make fc1's rectifier always ON on the data (a large bias), and three channels always OFF.
    let mut m = Model::load(fixture("cnn.onnx")).unwrap();
    let fc1 = m.find_weight("fc1.bias").unwrap();
    let b = m.read(&fc1.id).unwrap();
    let mut v = vec![1000.0f32; b.numel()];
    for c in [0, 5, 7] {
        v[c] = -1000.0;
    }
    m.write(&fc1.id, &Tensor::from_f32(b.dims.clone(), &v).unwrap())
        .unwrap();
    let calib = Calibration::load(&fixture("mnist_test.npz"), &m)
        .unwrap()
        .take(200)
        .unwrap();
    let mut s = m.clone();
    let r = simplify(&mut s, runtime(), Some(&calib), &[]).unwrap();
    assert!(r.verification.within_tolerance, "{:?}", r.verification);
    assert!(r.verification.exact_only_on_calibration_like_inputs);
    // fc1's three OFF channels went; with the others linear (+1000 offsets) the Relu is
    // not all-linear, so it stays.
    assert!(r.channels_removed >= 3);
    // Now all ON: the Relu goes and fc1 merges into fc2 (576 -> 10 directly).
    let mut m2 = Model::load(fixture("cnn.onnx")).unwrap();
    m2.write(
        &fc1.id,
        &Tensor::from_f32(b.dims.clone(), &vec![1000.0; b.numel()]).unwrap(),
    )
    .unwrap();
    let mut s2 = m2.clone();
    let r2 = simplify(&mut s2, runtime(), Some(&calib), &[]).unwrap();
    assert!(r2.verification.within_tolerance, "{:?}", r2.verification);
    assert!(
        r2.layers_collapsed.iter().any(|l| l.contains("merged")),
        "{:?}",
        r2.layers_collapsed
    );
    assert_eq!(
        s2.graph()
            .node
            .iter()
            .filter(|n| n.op_type == "Gemm")
            .count(),
        1
    );
    assert_eq!(
        s2.graph()
            .node
            .iter()
            .filter(|n| n.op_type == "Relu")
            .count(),
        3
    );
    assert!(r2.after.parameters < r2.before.parameters);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Each case builds ORT sessions: few cases, but random channel patterns and fixtures.
        #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any pattern of zeroed channel groups simplifies to a model with the same outputs,
        /// and each pass on its own keeps them too.
        #[test]
        fn simplification_preserves_outputs(fixture_i in 0usize..3, fraction in 0.05f64..0.9, seed in 0u64..1000) {
            let name = ["cnn.onnx", "resnet.onnx", "mobilenet.onnx"][fixture_i];
            let mut pruned = Model::load(fixture(name)).unwrap();
            prune_randomly(&mut pruned, fraction, seed);
            let x = vec![("input".to_string(), held_out_batch("mnist_test.npz", 8).0)];
            let reference = run_model(&pruned, &x);
            let plan = nnzip::passes::simplify::input_plans(runtime(), &pruned, &[], None, 1).unwrap();
            let ctx = nnzip::passes::PassContext { calib: None, runtime: Some(runtime()), inputs: plan.first() };
            let mut m = pruned.clone();
            for pass in nnzip::passes::simplify::passes(false) {
                pass.run(&mut ed(&mut m), &ctx).unwrap();
                let (d, s) = nnzip::calib::max_abs_diff(&reference, &run_model(&m, &x));
                prop_assert!(d <= 1e-4 * s.max(1.0), "{} after {}: {}", name, pass.name(), d);
            }
        }
    }
}

/// `model` with its input's spatial dims made symbolic (`h`, `w`): the residual CNN ends in a
/// global average pool, so it runs at any size.
fn with_symbolic_spatial(model: &Model) -> Model {
    use nnzip::onnx::proto::tensor_shape_proto::dimension::Value;
    let mut p = model.proto.clone();
    let g = p.graph.as_mut().unwrap();
    let shape = g.input[0].type_.as_mut().unwrap();
    let Some(nnzip::onnx::proto::type_proto::Value::TensorType(t)) = shape.value.as_mut() else {
        panic!("not a tensor input")
    };
    let dims = &mut t.shape.as_mut().unwrap().dim;
    dims[2].value = Some(Value::DimParam("h".into()));
    dims[3].value = Some(Value::DimParam("w".into()));
    Model::from_proto_in(p, None, std::path::Path::new("")).unwrap()
}

/// MNIST digits placed on a larger canvas (`h` x `w`), so both sizes see real images.
fn digits_at(h: usize, w: usize, n: usize) -> Vec<(String, Tensor)> {
    let (x, _) = held_out_batch("mnist_test.npz", n);
    let v = x.to_f32().unwrap();
    let mut out = vec![0.0f32; n * h * w];
    for s in 0..n {
        for y in 0..28.min(h) {
            for xx in 0..28.min(w) {
                out[(s * h + y + (h - 28.min(h)) / 2) * w + xx + (w - 28.min(w)) / 2] =
                    v[(s * 28 + y) * 28 + xx];
            }
        }
    }
    vec![(
        "input".into(),
        Tensor::from_f32(vec![n, 1, h, w], &out).unwrap(),
    )]
}

#[test]
fn a_symbolic_size_model_stays_exact_at_every_size() {
    // Dead channels with nonzero constants (biases kept) feed padded 3x3 convolutions: their
    // contribution shrinks at the borders by an amount that depends on the input size, which
    // the model leaves open. The simplified model must match at sizes it was never run at.
    let mut pruned = with_symbolic_spatial(&Model::load(fixture("resnet.onnx")).unwrap());
    let g = groups(&pruned)
        .into_iter()
        .find(|g| g.prunable() && g.channels >= 8)
        .unwrap();
    zero_channels(&mut pruned, &g, &[0, 3, 5].into_iter().collect(), true);
    let mut s = pruned.clone();
    let r = simplify(&mut s, runtime(), None, &[]).unwrap();
    assert!(r.verification.within_tolerance, "{:?}", r.verification);
    // nnzip checked two sizes of its own choosing.
    assert_eq!(r.verification.sizes.len(), 2, "{:?}", r.verification);
    assert!(r.channels_removed >= 3, "{:?}", r.passes);
    let borders: usize = r
        .passes
        .iter()
        .map(|p| match &p.details {
            nnzip::passes::PassDetails::DeadChannels(d) => {
                d.removals.iter().map(|x| x.border_convolutions).sum()
            }
            _ => 0,
        })
        .sum();
    assert!(borders >= 1, "no border convolution: {:?}", r.passes);
    // The graph still says h and w, and no bias map of a fixed size was written.
    assert!(s.inputs()[0].dims.as_ref().unwrap()[2] == nnzip::onnx::Dim::Symbolic("h".into()));
    assert!(!s
        .graph()
        .node
        .iter()
        .any(|n| n.name.ends_with(".bias_map_add")));
    for (h, w) in [(28, 28), (37, 52), (64, 30)] {
        let x = digits_at(h, w, 6);
        let (a, b) = (run_model(&pruned, &x), run_model(&s, &x));
        let (d, m) = nnzip::calib::max_abs_diff(&a, &b);
        assert!(d <= 1e-4 * m.max(1.0), "{h}x{w}: {d} vs {m}");
        // Removing the channels without their border correction would not match: the test
        // can tell the difference.
        assert!(m > 0.1, "{h}x{w}: outputs too small to compare ({m})");
    }
}

/// Sequence inputs for the attention fixture: `n` tokens, the last `masked` masked out.
fn tokens(n: usize, masked: usize, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..2 * n * 32)
        .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0))
        .collect();
    let mask: Vec<f32> = (0..2 * n)
        .map(|i| if i % n >= n - masked { -1e4 } else { 0.0 })
        .collect();
    vec![
        (
            "input".into(),
            Tensor::from_f32(vec![2, n, 32], &x).unwrap(),
        ),
        (
            "mask".into(),
            Tensor::from_f32(vec![2, 1, 1, n], &mask).unwrap(),
        ),
    ]
}

#[test]
fn attention_heads_split_by_a_computed_target_are_pruned_and_removed() {
    use nnzip::passes::prune::{Filter, Norm, StructuredPrune};
    let orig = Model::load(fixture("dynamic_attention.onnx")).unwrap();
    let gs = groups(&orig);
    let heads = gs
        .iter()
        .find(|g| g.channels == 4 && g.sources.len() == 3)
        .expect("a head group");
    assert!(heads.prunable(), "{:?}", heads.blocked);
    assert!(
        gs.iter().any(|g| g.channels == 64 && g.prunable()),
        "the feed-forward group"
    );
    let mut pruned = orig.clone();
    let (out, reports) = StructuredPrune {
        fraction: 0.5,
        global: false,
        norm: Norm::L2,
        round_to: 1,
        filter: Filter::default(),
    }
    .prune(&mut ed(&mut pruned))
    .unwrap();
    assert!(out.changed);
    assert!(
        reports
            .iter()
            .any(|r| r.channels == 4 && r.removed.len() == 2),
        "{reports:?}"
    );
    let mut s = pruned.clone();
    let r = simplify(&mut s, runtime(), None, &[]).unwrap();
    assert!(r.verification.within_tolerance, "{:?}", r.verification);
    assert!(r.after.parameters < r.before.parameters);
    // The target's head count now says 2, and the model still takes any sequence length.
    let e = nnzip::graph::editor::Editor::new(s.clone(), Default::default());
    let (Some(n), _) = (
        e.analysis()
            .order()
            .iter()
            .find_map(|&id| e.node(id).filter(|n| n.name == "heads.shape")),
        (),
    ) else {
        panic!("the target's Concat is gone")
    };
    let count = e.constant(&n.input[1]).unwrap().unwrap().to_i64().unwrap();
    assert_eq!(count, vec![2]);
    for (len, masked) in [(6, 2), (11, 0), (3, 1)] {
        let x = tokens(len, masked, len as u64);
        let (a, b) = (run_model(&pruned, &x), run_model(&s, &x));
        let (d, m) = nnzip::calib::max_abs_diff(&a, &b);
        assert!(d <= 1e-4 * m.max(1.0), "length {len}: {d} vs {m}");
    }
}

/// A node of the SE test model.
fn se_node(op: &str, inputs: &[&str], output: &str) -> nnzip::onnx::proto::NodeProto {
    let mut n = nnzip::onnx::proto::NodeProto::new();
    n.op_type = op.into();
    n.name = output.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n
}

/// A `Constant` node holding `t`, as Paddle's exporter writes biases and shapes.
fn constant_node(output: &str, t: &Tensor) -> nnzip::onnx::proto::NodeProto {
    let mut n = se_node("Constant", &[], output);
    let mut a = nnzip::onnx::proto::AttributeProto::new();
    a.name = "value".into();
    a.type_ =
        protobuf::EnumOrUnknown::new(nnzip::onnx::proto::attribute_proto::AttributeType::TENSOR);
    a.t = Some(nnzip::onnx::tensor_proto(output, t)).into();
    n.attribute.push(a);
    n
}

/// conv 3x3 -> ReLU -> squeeze-excitation (global pool, 1x1 conv + bias, ReLU, 1x1 conv + bias,
/// sigmoid, scale) -> 1x1 conv. Both SE convolutions take their bias as `Add(Reshape(b, s))`
/// with `b: [C]` and `s = [1, C, 1, 1]`, as the PP-OCR classifier does (one bias an initializer,
/// one a `Constant` node).
fn se_model() -> Model {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut w = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rand::Rng::gen_range(&mut rng, -0.5..0.5))
            .collect()
    };
    let mut g = nnzip::onnx::proto::GraphProto::new();
    g.name = "se".into();
    g.input.push(value_info("input", &[1, 4, 6, 6]));
    g.output.push(value_info("y", &[1, 3, 6, 6]));
    g.initializer.push(f32_tensor("w1", &[8, 4, 3, 3], &w(288)));
    g.initializer.push(f32_tensor("b1", &[8], &w(8)));
    g.initializer
        .push(f32_tensor("se1_w", &[4, 8, 1, 1], &w(32)));
    g.initializer.push(f32_tensor("se1_b", &[4], &w(4)));
    g.initializer
        .push(f32_tensor("se2_w", &[8, 4, 1, 1], &w(32)));
    g.initializer.push(f32_tensor("w3", &[3, 8, 1, 1], &w(24)));
    let se2_b = Tensor::from_f32(vec![8], &w(8)).unwrap();
    let shape = |c: i64| Tensor::from_i64(vec![4], &[1, c, 1, 1]).unwrap();
    let mut conv1 = se_node("Conv", &["input", "w1", "b1"], "c1");
    conv1.attribute.push(ints_attr("pads", &[1, 1, 1, 1]));
    g.node = vec![
        conv1,
        se_node("Relu", &["c1"], "h"),
        se_node("GlobalAveragePool", &["h"], "s"),
        se_node("Conv", &["s", "se1_w"], "q1"),
        constant_node("se1_shape", &shape(4)),
        se_node("Reshape", &["se1_b", "se1_shape"], "se1_bias"),
        se_node("Add", &["q1", "se1_bias"], "q1b"),
        se_node("Relu", &["q1b"], "r1"),
        se_node("Conv", &["r1", "se2_w"], "q2"),
        constant_node("se2_b", &se2_b),
        constant_node("se2_shape", &shape(8)),
        se_node("Reshape", &["se2_b", "se2_shape"], "se2_bias"),
        se_node("Add", &["q2", "se2_bias"], "q2b"),
        se_node("Sigmoid", &["q2b"], "gate"),
        se_node("Mul", &["h", "gate"], "hs"),
        se_node("Conv", &["hs", "w3"], "y"),
    ];
    let mut m = nnzip::onnx::proto::ModelProto::new();
    m.ir_version = 8;
    let mut op = nnzip::onnx::proto::OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    let mut bytes = Vec::new();
    protobuf::Message::write_to_vec(&m, &mut bytes).unwrap();
    Model::from_bytes(&bytes).unwrap()
}

fn ints_attr(name: &str, v: &[i64]) -> nnzip::onnx::proto::AttributeProto {
    let mut a = nnzip::onnx::proto::AttributeProto::new();
    a.name = name.into();
    a.type_ =
        protobuf::EnumOrUnknown::new(nnzip::onnx::proto::attribute_proto::AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

#[test]
fn squeeze_excitation_biases_reshaped_on_their_way_follow_the_removed_channels() {
    let orig = se_model();
    let gs = groups(&orig);
    // Both SE channel groups prune, their reshaped biases among the coupled tensors.
    for c in [4, 8] {
        let g = gs.iter().find(|g| g.channels == c).expect("an SE group");
        assert!(g.prunable(), "{c}: {:?}", g.blocked);
    }
    let mut pruned = orig.clone();
    let mut total = 0;
    for (c, chans) in [(4, [1, 3]), (8, [0, 5])] {
        let g = groups(&pruned)
            .into_iter()
            .find(|g| g.channels == c)
            .unwrap();
        zero_channels(&mut pruned, &g, &chans.into_iter().collect(), false);
        total += chans.len();
    }
    let mut s = pruned.clone();
    let r = simplify(&mut s, runtime(), None, &[]).unwrap();
    assert!(r.verification.within_tolerance, "{:?}", r.verification);
    assert_eq!(r.channels_removed as usize, total, "{:?}", r.passes);
    // The targets now say the new counts.
    let e = nnzip::graph::editor::Editor::new(s.clone(), Default::default());
    let mut counts: Vec<i64> = e
        .analysis()
        .order()
        .iter()
        .filter_map(|&id| e.node(id).filter(|n| n.op_type == "Reshape").cloned())
        .map(|n| e.constant(&n.input[1]).unwrap().unwrap().to_i64().unwrap()[1])
        .collect();
    counts.sort();
    assert_eq!(counts, vec![2, 6]);
    // Saved and run from disk, on inputs of its own: the pruned model's outputs.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("se.onnx");
    s.save(&out, &Default::default()).unwrap();
    for seed in 0..3 {
        let x = planned_inputs(&pruned, seed);
        let (d, m) = nnzip::calib::max_abs_diff(&run_model(&pruned, &x), &run_file(&out, &x));
        assert!(m > 0.1 && d <= 1e-5 * m, "seed {seed}: {d} vs {m}");
    }
}

/// `Conv(x, w, 1e4) -> [Relu ->] BatchNormalization(mean 1e4)`: the outputs are O(1) but pass
/// through 1e4, where a float32 step is 1e-3. With the BN right after the convolution ONNX
/// Runtime folds it (the cancellation becomes exact); behind a ReLU (the identity here: the
/// convolution stays near 1e4) it cannot.
fn cancelling_model(relu: bool) -> Model {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let w: Vec<f32> = (0..6)
        .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0))
        .collect();
    let mut g = nnzip::onnx::proto::GraphProto::new();
    g.name = "cancel".into();
    g.input.push(value_info("input", &[1, 2, 4, 4]));
    g.output.push(value_info("y", &[1, 3, 4, 4]));
    g.initializer.push(f32_tensor("w", &[3, 2, 1, 1], &w));
    g.initializer.push(f32_tensor("b", &[3], &[1e4; 3]));
    g.initializer.push(f32_tensor("gamma", &[3], &[1.0; 3]));
    g.initializer.push(f32_tensor("beta", &[3], &[0.0; 3]));
    g.initializer.push(f32_tensor("mean", &[3], &[1e4; 3]));
    g.initializer.push(f32_tensor("var", &[3], &[1.0; 3]));
    let bn_in = if relu { "r" } else { "c" };
    g.node = vec![se_node("Conv", &["input", "w", "b"], "c")];
    if relu {
        g.node.push(se_node("Relu", &["c"], "r"));
    }
    g.node.push(se_node(
        "BatchNormalization",
        &[bn_in, "gamma", "beta", "mean", "var"],
        "y",
    ));
    let mut m = nnzip::onnx::proto::ModelProto::new();
    m.ir_version = 8;
    let mut op = nnzip::onnx::proto::OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    let mut bytes = Vec::new();
    protobuf::Message::write_to_vec(&m, &mut bytes).unwrap();
    Model::from_bytes(&bytes).unwrap()
}

#[test]
fn the_check_allows_the_input_models_own_float_rounding_and_no_more() {
    use nnzip::passes::simplify::{input_plans, verify, FLOOR_MARGIN, TOLERANCE};
    use nnzip::passes::Preserves;
    let a = cancelling_model(false);
    let plans = input_plans(runtime(), &a, &[], None, 1).unwrap();
    // The same function, computed with the cancellation left to float32: an exact rewrite of a
    // model whose outputs are sensitive to the order of float operations (as re-fitted ones
    // are).
    let b = cancelling_model(true);
    let v = verify(&a, &b, runtime(), None, &plans, Preserves::Outputs).unwrap();
    assert!(
        v.max_abs_diff > TOLERANCE * v.max_abs_output.max(1.0),
        "a scale-only check would refuse it: {v:?}"
    );
    eprintln!(
        "exact rewrite: diff {:.2e}, floor {:.2e}, tolerance {:.2e}",
        v.max_abs_diff, v.noise_floor, v.tolerance
    );
    assert!(v.noise_floor > 0.0 && v.within_tolerance, "{v:?}");
    assert_eq!(v.tolerance, FLOOR_MARGIN * v.noise_floor);
    // A real mismatch: one channel's bias off by 0.05, far beyond the rounding.
    let mut wrong = b.clone();
    {
        let mut e = ed(&mut wrong);
        let t = Tensor::from_f32(vec![3], &[1e4, 1e4 + 0.05, 1e4]).unwrap();
        e.write_constant("b", &t).unwrap();
    }
    let v = verify(&a, &wrong, runtime(), None, &plans, Preserves::Outputs).unwrap();
    assert!(!v.within_tolerance && v.max_abs_diff > 0.04, "{v:?}");
    // And where the input has no such rounding, the scale-relative bound alone applies.
    let v = verify(&b, &b, runtime(), None, &plans, Preserves::Outputs).unwrap();
    assert_eq!((v.noise_floor, v.max_abs_diff), (0.0, 0.0));
}
