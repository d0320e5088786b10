//! Models whose weights live in `If`/`Loop` subgraphs go through the whole job with no flags:
//! compress, decompress, and run in ONNX Runtime with the outputs of the original.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use nnzip::onnx::Model;
use nnzip::tensor::Tensor;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

#[test]
fn models_with_weights_in_subgraphs_compress_with_no_flags_and_run() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["if_rate.onnx", "if_subgraph.onnx", "loop_subgraph.onnx"] {
        let nnc = dir.path().join(format!("{name}.nnc"));
        let back = dir.path().join(format!("{name}.back.onnx"));
        let src = fixture(name);
        let out = nnzip(&[
            "compress",
            src.to_str().unwrap(),
            "-o",
            nnc.to_str().unwrap(),
            "-q",
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = nnzip(&[
            "decompress",
            nnc.to_str().unwrap(),
            "-o",
            back.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (orig, restored) = (Model::load(&src).unwrap(), Model::load(&back).unwrap());
        // Every weight came back, inside the same subgraphs.
        let scopes = |m: &Model| {
            m.weights()
                .iter()
                .map(|w| w.qualified_name())
                .collect::<Vec<_>>()
        };
        assert_eq!(scopes(&orig), scopes(&restored), "{name}");
        // Both branches of the input-dependent If run: positive and negative sums.
        for sign in [1.0f32, -1.0] {
            let x: Vec<f32> = (0..3 * 16)
                .map(|i| sign * (0.5 + (i as f32 * 0.37).sin().abs()))
                .collect();
            let mut feed = vec![(
                "input".to_string(),
                Tensor::from_f32(vec![3, 16], &x).unwrap(),
            )];
            if name == "if_rate.onnx" {
                feed.push((
                    "rate".to_string(),
                    Tensor::from_i64(vec![], &[16000]).unwrap(),
                ));
            }
            let (a, b) = (run_model(&orig, &feed), run_model(&restored, &feed));
            let c = cosine(&a[0].1.to_f32().unwrap(), &b[0].1.to_f32().unwrap());
            assert!(c > 0.999, "{name} sign {sign}: cosine {c}");
        }
    }
}
