//! `nnzip prune` through the binary: JSON report and errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use nnzip::onnx::Model;
use nnzip::passes::prune::{census, prunable_weights};

/// Zeros and elements of the prunable weights.
fn count(m: &Model) -> (usize, usize) {
    let c = census(m, &prunable_weights(m)).unwrap();
    (c.zeros, c.params)
}

fn prunable_names(m: &Model) -> Vec<String> {
    prunable_weights(m).into_iter().map(|w| w.name).collect()
}

#[test]
fn cli_prune_json_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.onnx");
    let o = nnzip(&[
        "prune",
        fixture("resnet.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--method",
        "structured",
        "--sparsity",
        "0.25",
        "--round-to",
        "4",
        "--calib",
        fixture("mnist_test.npz").to_str().unwrap(),
        "--calib-samples",
        "100",
        // Without re-fitting (tests/recover.rs covers it), so the fidelity warning shows.
        "--no-recover",
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = Model::load(&out).unwrap();
    let (z, total) = count(&m);
    assert!((j["sparsity"].as_f64().unwrap() - z as f64 / total as f64).abs() < 1e-12);
    assert!(j["layers"].as_array().unwrap().len() == prunable_names(&m).len());
    assert_eq!(j["groups"].as_array().unwrap().len(), 6);
    assert_eq!(j["metric"]["samples"], 100);
    // A quarter of the channels without re-fitting moves the outputs far: written, with a warning
    // and the measured fidelity.
    let cos = j["fidelity"]["cosine"].as_f64().unwrap();
    assert!(cos < 0.9, "cosine {cos}");
    assert_eq!(j["fidelity"]["samples"], 100);
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: the pruned model's outputs"));
    assert!(j["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("model output"));
    // Search with the text report.
    let o = nnzip(&[
        "prune",
        fixture("mlp.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--global",
        "--calib",
        fixture("mnist_test_flat.npz").to_str().unwrap(),
        "--calib-samples",
        "300",
        "--max-drop",
        "1",
        "--steps",
        "3",
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["search"]["steps"].as_array().unwrap().len(), 4);
    let (z, total) = count(&Model::load(&out).unwrap());
    assert!((j["sparsity"].as_f64().unwrap() - z as f64 / total as f64).abs() < 1e-12);
    assert!(
        j["metric"]["before"].as_f64().unwrap() - j["metric"]["after"].as_f64().unwrap() <= 1.0
    );
    // Usage errors exit 2, bad input 3.
    let m = fixture("cnn.onnx");
    let base = ["prune", m.to_str().unwrap(), "-o", out.to_str().unwrap()];
    for extra in [
        vec!["--max-drop", "1"],
        vec!["--method", "entropy"],
        vec!["--sparsity", "1.5"],
        vec!["--method", "bogus"],
        vec!["--n-m", "5:4", "--method", "nm"],
    ] {
        let o = nnzip(&[&base[..], &extra[..]].concat());
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
    }
    let o = nnzip(
        &[
            &base[..],
            &["--calib", fixture("mnist_test_flat.npz").to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(3));
}
