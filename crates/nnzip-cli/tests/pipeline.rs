//! `nnzip compress` / `decompress`: the whole job through the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use nnzip::calib::{evaluate, run_model, Calibration, Metric};
use nnzip::onnx::Model;

fn ok(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn held_out_accuracy(model: &Model, data: &str) -> f64 {
    let calib = Calibration::load(&fixture(data), model).unwrap();
    let out = run_model(runtime(), model, &calib).unwrap();
    evaluate(Metric::Accuracy, &calib, &out[0].1, &out[0].1).unwrap()
}

#[test]
fn compress_with_an_accuracy_budget_on_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in TRAINED {
        let src = fixture(name);
        let nnc = dir.path().join(format!("{name}.nnc"));
        let html = dir.path().join(format!("{name}.html"));
        let r = ok(&nnzip(&[
            "compress",
            src.to_str().unwrap(),
            "-o",
            nnc.to_str().unwrap(),
            "--calib",
            fixture(data).to_str().unwrap(),
            "--max-drop",
            "1",
            "--runs",
            "5",
            "--json",
            "--html",
            html.to_str().unwrap(),
            "-q",
        ]));
        for k in [
            "onnx_bytes",
            "bitstream_bytes",
            "parameters",
            "pruned_fraction",
            "metric_before",
            "metric_after",
            "latency_ms_original",
            "latency_ms_compressed",
        ] {
            assert!(!r[k].is_null(), "{name}: {k} missing");
        }
        assert_eq!(
            r["bitstream_bytes"].as_u64().unwrap(),
            std::fs::metadata(&nnc).unwrap().len()
        );
        // A sixth of the ONNX file or less (the budget is held on a quarter of the samples
        // set aside, which costs a little against a search that sees them all).
        assert!(
            r["bitstream_bytes"].as_u64().unwrap() * 6 < r["onnx_bytes"].as_u64().unwrap(),
            "{name}: {r}"
        );
        // Decompress and measure independently on the held-out labels.
        let onnx = dir.path().join(format!("{name}.d.onnx"));
        let d = nnzip(&[
            "decompress",
            nnc.to_str().unwrap(),
            "-o",
            onnx.to_str().unwrap(),
        ]);
        assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
        let before = held_out_accuracy(&Model::load(&src).unwrap(), data);
        let after = held_out_accuracy(&Model::load(&onnx).unwrap(), data);
        assert!(before - after <= 1.0 + 1e-9, "{name}: {before} -> {after}");
        assert!(
            (r["metric_after"].as_f64().unwrap() - after).abs() < 1e-9,
            "{name}: report and measurement disagree"
        );
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(
            page.contains("<svg") && page.contains("Rate search"),
            "{name}: plots missing"
        );
    }
}

#[test]
fn same_input_same_bytes_and_reference_compatible_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("resnet.onnx");
    let (a, b) = (dir.path().join("a.nnc"), dir.path().join("b.nnc"));
    for p in [&a, &b] {
        let o = nnzip(&[
            "compress",
            src.to_str().unwrap(),
            "-o",
            p.to_str().unwrap(),
            "--runs",
            "0",
            "-q",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "not deterministic"
    );
    // Parameters-only bitstream + graph beside it; decompress finds the pair.
    let rc = dir.path().join("rc.nnc");
    let o = nnzip(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        rc.to_str().unwrap(),
        "--runs",
        "0",
        "--reference-compatible",
        "-q",
    ]);
    assert!(o.status.success());
    assert!(dir.path().join("rc.nnc.onnx").is_file());
    let units: Vec<_> = nnc_codec::units(&std::fs::read(&rc).unwrap()).unwrap();
    assert!(
        units.iter().all(|u| u.formats.is_none_or(|(s, _)| s == 0)),
        "no ONNX topology in a reference-compatible stream"
    );
    let out = dir.path().join("rc.onnx");
    let d = nnzip(&[
        "decompress",
        rc.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let x = vec![("input".to_string(), held_out_batch("mnist_test.npz", 4).0)];
    let (diff, m) = nnzip::calib::max_abs_diff(&run_file(&src, &x), &run_file(&out, &x));
    assert!(diff < 0.05 * m.max(1.0));
}

#[test]
fn truncated_bitstreams_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let nnc = dir.path().join("m.nnc");
    let o = nnzip(&[
        "compress",
        fixture("mlp.onnx").to_str().unwrap(),
        "-o",
        nnc.to_str().unwrap(),
        "--runs",
        "0",
        "-q",
    ]);
    assert!(o.status.success());
    let bytes = std::fs::read(&nnc).unwrap();
    let cut = dir.path().join("cut.nnc");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = dir.path().join("out.onnx");
    let d = nnzip(&[
        "decompress",
        cut.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        d.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&d.stderr)
    );
    assert!(!out.exists());
    // --max-drop without data is a usage error.
    let e = nnzip(&[
        "compress",
        fixture("mlp.onnx").to_str().unwrap(),
        "-o",
        nnc.to_str().unwrap(),
        "--max-drop",
        "1",
        "-q",
    ]);
    assert_eq!(e.status.code(), Some(2));
}

/// The target of the pipeline: within the same accuracy budget, our bitstream is at most 0.85×
/// the reference tool's at its best single QP (NNCodec's one knob, on the original model, its
/// parameters-only stream). The reported reference point is checked by re-running it.
#[test]
fn rate_control_beats_the_reference_at_its_best_single_qp() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("cnn.onnx");
    let calib = fixture("mnist_test.npz");
    let out = dir.path().join("cnn.nnc");
    let r = ok(&nnzip(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--max-drop",
        "1",
        "--compare-single-qp",
        "--runs",
        "0",
        "--json",
        "-q",
    ]));
    let s = &r["best_single_qp_reference"];
    let before = r["metric_before"].as_f64().unwrap();
    assert!(before - s["metric"].as_f64().unwrap() <= 1.0 + 1e-9, "{s}");
    // The same point through the reference-compatible path: same bytes, same metric.
    let qp = s["qp"].as_i64().unwrap().to_string();
    let again = ok(&nnzip(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        dir.path().join("ref.nnc").to_str().unwrap(),
        "--no-simplify",
        "--reference-compatible",
        "--qp",
        &qp,
        "--calib",
        calib.to_str().unwrap(),
        "--runs",
        "0",
        "--json",
        "-q",
    ]));
    assert_eq!(again["bitstream_bytes"], s["bitstream_bytes"]);
    assert!((again["metric_after"].as_f64().unwrap() - s["metric"].as_f64().unwrap()).abs() < 1e-9);
    let ours = r["bitstream_bytes"].as_u64().unwrap() as f64;
    let theirs = s["bitstream_bytes"].as_u64().unwrap() as f64;
    assert!(ours <= 0.85 * theirs, "{ours} vs {theirs}");
    assert!(before - r["metric_after"].as_f64().unwrap() <= 1.0 + 1e-9);
}
