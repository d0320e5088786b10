//! What the default quantization keeps, and what the verification refuses: a BatchNormalization
//! of tiny scale folded into the convolution before it (as in PP-OCRv4's detector, where the
//! reference's fixed step quantizes such a tensor to all zeros).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use nnc_codec::{EncoderConfig, TensorData};
use nnzip::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use nnzip::quantrule::{Planner, Rule, TensorError};
use rand::{Rng, SeedableRng};

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.ints = v.to_vec();
    a.type_ = protobuf::EnumOrUnknown::from_i32(7);
    a
}

/// x [1,3,8,8] → Conv 3×3 (16 filters) → BN with scale `gamma` → Relu → Conv 1×1 (4) → y.
fn conv_bn(gamma: f32) -> ModelProto {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut normal = |n: usize, s: f32| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * s)
            .collect()
    };
    let mut g = GraphProto::new();
    g.input.push(value_info("x", &[1, 3, 8, 8]));
    g.output.push(value_info("y", &[1, 4, 8, 8]));
    g.initializer
        .push(f32_tensor("w1", &[16, 3, 3, 3], &normal(16 * 27, 0.5)));
    g.initializer.push(f32_tensor("gamma", &[16], &[gamma; 16]));
    g.initializer.push(f32_tensor("beta", &[16], &[0.0; 16]));
    g.initializer
        .push(f32_tensor("mean", &[16], &normal(16, gamma * 0.1)));
    g.initializer.push(f32_tensor("var", &[16], &[1.0; 16]));
    g.initializer
        .push(f32_tensor("w2", &[4, 16, 1, 1], &normal(64, 0.5)));
    let mut c1 = node("Conv", &["x", "w1"], "c1");
    c1.attribute.push(ints("pads", &[1, 1, 1, 1]));
    g.node = vec![
        c1,
        node(
            "BatchNormalization",
            &["c1", "gamma", "beta", "mean", "var"],
            "b1",
        ),
        node("Relu", &["b1"], "r1"),
        node("Conv", &["r1", "w2"], "y"),
    ];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    m
}

/// The rule on its own: a folded weight of RMS 1e-4 (the reference's step is 1.4e-3) keeps
/// its values, with a relative error well under the cap's bound, at every level.
#[test]
fn the_rule_never_zeroes_a_tensor_of_tiny_scale() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let v: Vec<f32> = (0..16 * 27)
        .map(|_| (rng.gen::<f32>() - 0.5) * 3.5e-4)
        .collect();
    let tiny = nnc_codec::Tensor {
        name: "w".into(),
        shape: vec![16, 3, 3, 3],
        data: TensorData::F32(v.clone()),
    };
    let cfg = EncoderConfig::default();
    let planner = Planner::new(Rule::default(), std::slice::from_ref(&tiny), &cfg);
    for level in [0.0, 4.0, 20.0] {
        let c = planner.config(level);
        let rec = nnc_codec::reconstruct(std::slice::from_ref(&tiny), &c).unwrap();
        let TensorData::F32(r) = &rec[0].data else {
            unreachable!()
        };
        let e = TensorError::of("w", None, &v, r);
        assert!(
            e.rel_error < 0.15 && e.zeroed < 0.15,
            "level {level}: {e:?}"
        );
    }
    // The reference's step zeroes it.
    let rec = nnc_codec::reconstruct(std::slice::from_ref(&tiny), &cfg).unwrap();
    let TensorData::F32(r) = &rec[0].data else {
        unreachable!()
    };
    assert!(r.iter().all(|x| *x == 0.0));
}

/// Through the command: the default keeps the folded model faithful; one QP for every weight
/// (the reference's rule) zeroes the folded layer, and the verification refuses the result
/// with exit code 6, names the tensor and writes nothing (unless --force).
#[test]
fn default_keeps_a_folded_tiny_layer_and_the_guard_refuses_a_collapse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_proto(&src, &conv_bn(2e-4));
    let out = dir.path().join("m.nnc");
    let o = nnzip(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--runs",
        "0",
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        r["fidelity"]["cosine"].as_f64().unwrap() > 0.999,
        "{}",
        r["fidelity"]
    );
    for t in r["worst_tensors"].as_array().unwrap() {
        assert!(t["rel_error"].as_f64().unwrap() < 0.1, "{t}");
    }
    let bad = dir.path().join("bad.nnc");
    let o = nnzip(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
        "--uniform",
        "--runs",
        "0",
        "-q",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains("w1") && err.contains("all zeros"), "{err}");
    assert!(!bad.exists());
    let o = nnzip(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
        "--uniform",
        "--force",
        "--runs",
        "0",
        "-q",
    ]);
    assert!(o.status.success() && bad.exists());
}

/// prune refuses a result whose output collapses against its input.
#[test]
fn prune_refuses_a_collapse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.onnx");
    write_proto(&src, &conv_bn(1.0));
    let out = dir.path().join("p.onnx");
    let o = nnzip(&[
        "prune",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--method",
        "magnitude",
        "--sparsity",
        "1",
        "-q",
    ]);
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
}
