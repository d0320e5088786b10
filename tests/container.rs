//! The NNC container: an ONNX model in one self-contained bitstream and back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nnzip::calib::{evaluate, run_model, Calibration, Metric};
use nnzip::container::{compress, compress_reference_compatible, decompress, ContainerOptions};
use nnzip::onnx::Model;

#[test]
fn every_fixture_survives_compress_and_decompress() {
    for (name, data) in TRAINED {
        let model = Model::load(fixture(name)).unwrap();
        let (bytes, stats) = compress(&model, &ContainerOptions::default()).unwrap();
        assert!(
            stats.bitstream_bytes < std::fs::metadata(fixture(name)).unwrap().len() / 3,
            "{name}: {stats:?}"
        );
        let back = decompress(&bytes, None, &Default::default()).unwrap();
        // Same graph, same weights up to quantization; accuracy within a point at default QP.
        assert_eq!(back.graph().node.len(), model.graph().node.len());
        let calib = Calibration::load(&fixture(data), &model).unwrap();
        let a = run_model(runtime(), &model, &calib).unwrap();
        let b = run_model(runtime(), &back, &calib).unwrap();
        let acc_a = evaluate(Metric::Accuracy, &calib, &a[0].1, &a[0].1).unwrap();
        let acc_b = evaluate(Metric::Accuracy, &calib, &a[0].1, &b[0].1).unwrap();
        assert!(acc_a - acc_b <= 1.0, "{name}: {acc_a} -> {acc_b}");
        // Deterministic: the same input gives the same bytes.
        assert_eq!(
            compress(&model, &ContainerOptions::default()).unwrap().0,
            bytes,
            "{name}"
        );
    }
}

#[test]
fn constant_and_subgraph_weights_come_back() {
    for f in [
        "constant_weights.onnx",
        "if_subgraph.onnx",
        "loop_subgraph.onnx",
    ] {
        let model = Model::load(fixture(f)).unwrap();
        let (bytes, _) = compress(&model, &ContainerOptions::default()).unwrap();
        let back = decompress(&bytes, None, &Default::default()).unwrap();
        let (wa, wb) = (model.weights(), back.weights());
        assert_eq!(wa.len(), wb.len(), "{f}");
        for (x, y) in wa.iter().zip(&wb) {
            assert_eq!(x.storage, y.storage, "{f} {}", x.name);
            let (tx, ty) = (model.read(&x.id).unwrap(), back.read(&y.id).unwrap());
            assert_eq!(tx.dims, ty.dims, "{f} {}", x.name);
            assert_eq!(tx.dtype, ty.dtype, "{f} {}", x.name);
            if tx.dtype != nnzip::tensor::DType::F32 || tx.numel() < 16 {
                assert_eq!(
                    tx, ty,
                    "{f} {}: integer and tiny tensors are lossless",
                    x.name
                );
            }
        }
    }
}

#[test]
fn reference_compatible_pair_decodes() {
    let model = Model::load(fixture("mlp.onnx")).unwrap();
    let (bytes, graph, _) =
        compress_reference_compatible(&model, &ContainerOptions::default()).unwrap();
    assert!(
        decompress(&bytes, None, &Default::default()).is_err(),
        "no topology: needs the graph"
    );
    let back = decompress(&bytes, Some(&graph), &Default::default()).unwrap();
    let x = vec![(
        "input".to_string(),
        held_out_batch("mnist_test_flat.npz", 8).0,
    )];
    let (d, m) = nnzip::calib::max_abs_diff(
        &common::run_model(&model, &x),
        &common::run_model(&back, &x),
    );
    assert!(d < 0.05 * m, "{d} vs {m}");
    // NNCodec 2.1.3 cannot read past a raw-float NDU: none in a reference-compatible stream.
    let units = nnc_codec::units(&bytes).unwrap();
    assert!(units
        .iter()
        .filter_map(|u| u.ndu.as_ref())
        .all(|n| format!("{:?}", n.payload_type) != "RawFloat"));
    // The plain codec decoder reads it as tensors: all weights but the tiny ones, which stay
    // exact inside the graph.
    let t = nnc_codec::decode(&bytes, &Default::default()).unwrap();
    let tiny = model
        .weights()
        .iter()
        .filter(|w| w.dims.iter().product::<usize>() < 16)
        .count();
    assert!(tiny > 0);
    assert_eq!(t.len() + tiny, model.weights().len());
}

#[test]
fn truncated_and_corrupt_bitstreams_are_refused() {
    let model = Model::load(fixture("cnn.onnx")).unwrap();
    let (bytes, _) = compress(&model, &ContainerOptions::default()).unwrap();
    for cut in [1, 10, bytes.len() / 3, bytes.len() - 1] {
        assert!(
            decompress(&bytes[..cut], None, &Default::default()).is_err(),
            "cut {cut}"
        );
    }
    let mut bad = bytes.clone();
    for i in (0..bad.len()).step_by(97) {
        bad[i] ^= 0x5a;
    }
    let _ = decompress(&bad, None, &Default::default()); // an error or a model, never a panic
}

/// A float tensor holding a sentinel far beyond 32-bit levels (the −3.4e38 of attention masks in
/// exported transformers) next to ordinary values: quantizing it would need a QP at which the
/// ordinary values vanish and which no common QP range can hold. It is stored exactly: raw in
/// our streams, inside the graph in reference-compatible ones.
#[test]
fn tensors_with_sentinel_values_are_stored_exactly() {
    let mut model = Model::load(fixture("mlp.onnx")).unwrap();
    let (_, plain) = compress(&model, &ContainerOptions::default()).unwrap();
    let (_, _, plain_ref) =
        compress_reference_compatible(&model, &ContainerOptions::default()).unwrap();
    let values: Vec<f32> = (0..64)
        .map(|i| {
            if i == 3 {
                f32::MIN
            } else {
                i as f32 * 0.01 - 0.3
            }
        })
        .collect();
    let mask = nnzip::tensor::Tensor::from_f32(vec![64], &values).unwrap();
    model
        .graph_mut()
        .initializer
        .push(nnzip::onnx::tensor_proto("mask_bias", &mask));
    let find = |m: &Model| {
        let w = m.weights();
        let w = w.iter().find(|w| w.name == "mask_bias").unwrap();
        m.read(&w.id).unwrap()
    };
    let (bytes, stats) = compress(&model, &ContainerOptions::default()).unwrap();
    assert_eq!(stats.raw_elements, plain.raw_elements + 64, "{stats:?}");
    let back = decompress(&bytes, None, &Default::default()).unwrap();
    assert_eq!(find(&back), mask);
    let (bytes, graph, stats) =
        compress_reference_compatible(&model, &ContainerOptions::default()).unwrap();
    assert_eq!(
        stats.kept_in_graph,
        plain_ref.kept_in_graph + 1,
        "{stats:?}"
    );
    let back = decompress(&bytes, Some(&graph), &Default::default()).unwrap();
    assert_eq!(find(&back), mask);
}
