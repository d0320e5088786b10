//! The `nnzip` binary end to end: JSON contracts, exit codes, error messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Output;

use common::*;
use nnzip::onnx::proto::{tensor_shape_proto, type_proto};
use nnzip::onnx::Model;

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn inspect_json_counts_what_the_model_holds() {
    for (name, _) in TRAINED {
        let p = fixture(name);
        let v = json(&nnzip(&["inspect", p.to_str().unwrap(), "--json"]));
        let model = Model::load(&p).unwrap();
        let (mut params, mut bytes, mut zeros) = (0u64, 0u64, 0u64);
        for w in model.weights() {
            let t = model.read(&w.id).unwrap();
            if t.dtype != nnzip::tensor::DType::I64 {
                params += t.numel() as u64;
                bytes += t.bytes().len() as u64;
                zeros += t.count_zeros() as u64;
            }
        }
        assert_eq!(v["parameters"].as_u64(), Some(params), "{name}");
        assert_eq!(v["weight_bytes"].as_u64(), Some(bytes), "{name}");
        assert_eq!(
            v["zero_fraction"].as_f64().unwrap(),
            zeros as f64 / params as f64
        );
        let ops = v["ops"].as_object().unwrap();
        let total: u64 = ops.values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(total as usize, model.graph().node.len(), "{name}");
        assert_eq!(
            v["tensors"].as_array().unwrap().len(),
            model.weights().len()
        );
        assert!(v["macs"].as_u64().unwrap() > 0, "{name}: no MACs");
        assert!(
            v["macs_unknown"].as_array().unwrap().is_empty(),
            "{name}: {}",
            v["macs_unknown"]
        );
    }
}

#[test]
fn inspect_macs_match_hand_counts() {
    // cnn: 3x [Conv3x3 pad1 + MaxPool2] with 16, 32, 64 channels on 28x28, then Gemm 576->64->10.
    let v = json(&nnzip(&[
        "inspect",
        fixture("cnn.onnx").to_str().unwrap(),
        "--json",
    ]));
    let conv = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9;
    let gemm = 576 * 64 + 64 * 10;
    assert_eq!(v["macs_by_op"]["Conv"].as_u64(), Some(conv));
    assert_eq!(v["macs_by_op"]["Gemm"].as_u64(), Some(gemm));
    assert_eq!(v["macs"].as_u64(), Some(conv + gemm));
    // A larger batch scales MACs linearly.
    let v4 = json(&nnzip(&[
        "inspect",
        fixture("cnn.onnx").to_str().unwrap(),
        "--json",
        "--shape",
        "input=4x1x28x28",
    ]));
    assert_eq!(v4["macs"].as_u64(), Some(4 * (conv + gemm)));
}

#[test]
fn inspect_text_lists_subgraph_weights() {
    let out = nnzip(&["inspect", fixture("if_subgraph.onnx").to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("then_branch") && text.contains("else_branch"),
        "{text}"
    );
}

#[test]
fn bench_against_itself_gives_a_ratio_near_one() {
    let p = fixture("cnn.onnx");
    let p = p.to_str().unwrap();
    let v = json(&nnzip(&[
        "bench",
        p,
        "--vs",
        p,
        "--runs",
        "300",
        "--warmup",
        "20",
        "--threads",
        "1",
        "--json",
        "-q",
    ]));
    for side in ["model", "vs"] {
        for k in ["median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms"] {
            assert!(v[side][k].as_f64().unwrap() > 0.0, "{side}.{k}");
        }
        assert_eq!(v[side]["runs"].as_u64(), Some(300));
        assert!(v[side]["min_ms"].as_f64() <= v[side]["median_ms"].as_f64());
        assert!(v[side]["median_ms"].as_f64() <= v[side]["p90_ms"].as_f64());
        assert!(v[side]["p90_ms"].as_f64() <= v[side]["p99_ms"].as_f64());
    }
    let r = v["ratio_median"].as_f64().unwrap();
    // Same model, interleaved: only noise separates them. A shared 2-core machine is noisy,
    // so the band is wide; a broken pairing or a one-sided warm-up lands far outside it.
    assert!((0.7..1.43).contains(&r), "ratio {r}");
    assert!(v["ratio_p10"].as_f64().unwrap() <= v["ratio_p90"].as_f64().unwrap());
}

#[test]
fn bench_with_inputs_from_npz() {
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = held_out_batch("mnist_test_flat.npz", 3);
    let f = dir.path().join("in.npz");
    nnzip::npz::write_npz(&f, &[("input".to_string(), x)]).unwrap();
    let v = json(&nnzip(&[
        "bench",
        fixture("mlp.onnx").to_str().unwrap(),
        "--inputs",
        f.to_str().unwrap(),
        "--runs",
        "5",
        "--json",
        "-q",
    ]));
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([3, 784]));
}

#[test]
fn bench_names_unresolved_symbolic_dims() {
    let mut m = tiny_linear();
    let x = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(type_proto::Value::TensorType(t)) = x.type_.as_mut().unwrap().value.as_mut() {
        t.shape.as_mut().unwrap().dim[1].value = Some(
            tensor_shape_proto::dimension::Value::DimParam("features".into()),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sym.onnx");
    write_proto(&p, &m);
    let out = nnzip(&["bench", p.to_str().unwrap(), "--runs", "3", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("features") && err.contains("--shape x="),
        "{err}"
    );
    // Given, it runs.
    let v = json(&nnzip(&[
        "bench",
        p.to_str().unwrap(),
        "--runs",
        "3",
        "-q",
        "--json",
        "--shape",
        "x=1x4",
    ]));
    assert_eq!(v["model"]["runs"].as_u64(), Some(3));
}

/// The library says what is wrong in its own terms; every command adds the flag that fixes it.
#[test]
fn every_command_adds_the_flag_to_a_library_error() {
    let cnn = fixture("cnn.onnx");
    let cnn = cnn.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let (nnc, simple, pruned) = (out("o.nnc"), out("s.onnx"), out("p.onnx"));
    let wrong_input = ["--shape", "nope=1x1x28x28", "-q"];
    let runs: Vec<Vec<&str>> = vec![
        vec!["bench", cnn, "--runs", "1"],
        vec!["compress", cnn, "-o", &nnc, "--runs", "0"],
        vec!["simplify", cnn, "-o", &simple],
        vec!["prune", cnn, "--sparsity", "0.3", "-o", &pruned],
    ];
    for mut args in runs {
        args.extend(wrong_input);
        let o = nnzip(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let (message, hint) = err.split_once("hint: ").unwrap_or((&err, ""));
        assert!(
            message.contains("'nope'") && !message.contains("--"),
            "{args:?}: {err}"
        );
        assert!(
            hint.starts_with("check --shape NAME=DIMS"),
            "{args:?}: {err}"
        );
    }
    let o = nnzip(&["bench", cnn, "--runs", "0", "-q"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hint: pass --runs 1 or more"), "{err}");
}

#[test]
fn errors_map_to_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\xff\xff\xff\xff not protobuf").unwrap();
    let out = nnzip(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid ONNX model"));
    let out = nnzip(&["inspect", dir.path().join("missing.onnx").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let out = nnzip(&[
        "bench",
        fixture("cnn.onnx").to_str().unwrap(),
        "--ort-lib",
        "/nonexistent/lib.so",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/setup-ort.sh"));
    let out = nnzip(&[
        "bench",
        fixture("cnn.onnx").to_str().unwrap(),
        "--ep",
        "cuda",
        "--runs",
        "1",
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'cuda' is not available"));
    let out = nnzip(&["bench", "--runs", "x", "m.onnx"]);
    assert_eq!(out.status.code(), Some(2));
}
