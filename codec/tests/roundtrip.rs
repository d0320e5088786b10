//! Property tests of the public API: random tensors and settings; decoding an encoded stream
//! gives exactly the encoder's own reconstruction ([`nnc_codec::reconstruct`]), within the
//! quantizer's error bound, with names, shapes and element types preserved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nnc_codec::{
    decode, decode_stream, encode, encode_with_topology, reconstruct, topology_compression_format,
    topology_storage_format, units, CodebookMode, EncoderConfig, Limits, NnrUnitType, ScanOrder,
    Tensor, TensorData, TensorKind, TensorOverride, Topology,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_tensors(seed: u64, count: usize) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let ndim = rng.gen_range(0..=4);
            let shape: Vec<usize> = (0..ndim)
                .map(|d| {
                    if d == 0 {
                        rng.gen_range(1..50)
                    } else {
                        rng.gen_range(1..7)
                    }
                })
                .collect();
            let n: usize = shape.iter().product();
            let sparsity: f64 = rng.gen_range(0.0..0.95);
            let scale: f32 = 10f32.powf(rng.gen_range(-3.0..0.5));
            let data = if rng.gen_bool(0.15) {
                TensorData::I32((0..n).map(|_| rng.gen_range(-5000..5000)).collect())
            } else {
                TensorData::F32(
                    (0..n)
                        .map(|_| {
                            if rng.gen_bool(sparsity) {
                                0.0
                            } else {
                                // Laplacian-like: difference of exponentials.
                                let a: f32 = rng.gen_range(1e-6f32..1.0);
                                let b: f32 = rng.gen_range(1e-6f32..1.0);
                                scale * (a.ln() - b.ln())
                            }
                        })
                        .collect(),
                )
            };
            Tensor {
                name: format!("t{i}.{}", if ndim > 1 { "weight" } else { "bias" }),
                shape,
                data,
            }
        })
        .collect()
}

fn config() -> impl Strategy<Value = EncoderConfig> {
    (
        -60i32..-10,
        1u8..=4,
        any::<bool>(),
        0u8..=2,
        prop_oneof![Just(None), (4u32..=12).prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
        0u8..=4,
        prop_oneof![Just(None), (-90i32..-30).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(|(qp, d, dq, cb, bw, rs, po, so, nw, par)| EncoderConfig {
            qp: qp * i32::from(d) / 2,
            qp_density: d,
            use_dq: dq,
            codebook_mode: CodebookMode::try_from(cb).expect("0..=2"),
            int_quant_bw: bw,
            row_skipping: rs,
            param_opt: po,
            nonweight_qp: nw,
            scan_order: ScanOrder::try_from(so).expect("0..=4"),
            parallel: par,
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn decode_of_encode_is_the_reconstruction(seed in any::<u64>(), n in 1usize..6, cfg in config()) {
        let tensors = random_tensors(seed, n);
        let bs = encode(&tensors, &cfg).unwrap();
        let dec = decode(&bs, &Limits::default()).unwrap();
        let rec = reconstruct(&tensors, &cfg).unwrap();
        prop_assert_eq!(dec.len(), tensors.len());
        for ((d, r), t) in dec.iter().zip(&rec).zip(&tensors) {
            prop_assert_eq!(&d.name, &t.name);
            let want_shape = if t.shape.is_empty() { vec![1] } else { t.shape.clone() };
            prop_assert_eq!(&d.shape, &want_shape);
            match (&d.data, &r.data, &t.data) {
                (TensorData::F32(a), TensorData::F32(b), TensorData::F32(_)) => {
                    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    prop_assert!(same, "{} differs from its reconstruction", d.name);
                }
                (TensorData::I32(a), TensorData::I32(_), TensorData::I32(o)) => prop_assert_eq!(a, o),
                _ => prop_assert!(false, "element type changed"),
            }
        }
        let listed = units(&bs).unwrap();
        prop_assert_eq!(listed.iter().filter(|u| u.unit_type == NnrUnitType::Ndu).count(), n);
    }
}

#[test]
fn uniform_error_is_bounded_by_half_a_step() {
    let tensors = random_tensors(11, 8);
    for dq in [false, true] {
        let cfg = EncoderConfig {
            use_dq: dq,
            ..Default::default()
        };
        let dec = decode(&encode(&tensors, &cfg).unwrap(), &Limits::default()).unwrap();
        for (d, t) in dec.iter().zip(&tensors) {
            if let (TensorData::F32(a), TensorData::F32(o)) = (&d.data, &t.data) {
                let qp = if TensorKind::of_shape(&t.shape) == TensorKind::Weight {
                    cfg.qp
                } else {
                    -75
                };
                let step = nnc_codec::quant::step_size(qp, 2) as f64;
                let mse: f64 = a
                    .iter()
                    .zip(o)
                    .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                    .sum::<f64>()
                    / a.len() as f64;
                if dq {
                    assert!(mse <= step * step, "{}: mse {mse} step {step}", t.name);
                } else {
                    for (x, y) in a.iter().zip(o) {
                        assert!((f64::from(*x) - f64::from(*y)).abs() <= step / 2.0 + 1e-9);
                    }
                }
            }
        }
    }
}

#[test]
fn overrides_topology_and_raw_tensors() {
    let tensors = random_tensors(5, 4);
    let mut cfg = EncoderConfig::default();
    let raw_name = tensors
        .iter()
        .find(|t| matches!(t.data, TensorData::F32(_)))
        .map(|t| t.name.clone())
        .unwrap();
    cfg.overrides.insert(
        raw_name.clone(),
        TensorOverride {
            raw: true,
            ..Default::default()
        },
    );
    let q_name = tensors[0].name.clone();
    if q_name != raw_name {
        cfg.overrides.insert(
            q_name.clone(),
            TensorOverride {
                qp: Some(-20),
                use_dq: Some(false),
                ..Default::default()
            },
        );
    }
    let graph: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 13) as u8).collect();
    let topo = Topology {
        storage_format: topology_storage_format::NNR_TPL_ONNX,
        compression_format: topology_compression_format::NNR_DFL,
        data: graph.clone(),
    };
    let bs = encode_with_topology(&tensors, &cfg, Some(&topo)).unwrap();
    let d = decode_stream(&bs, &Limits::default()).unwrap();
    assert_eq!(d.topology.as_ref(), Some(&topo));
    let raw = d.tensors.iter().find(|t| t.name == raw_name).unwrap();
    let orig = tensors.iter().find(|t| t.name == raw_name).unwrap();
    assert_eq!(raw.data, orig.data, "raw tensors are lossless");
    let u = units(&bs).unwrap();
    assert_eq!(u[2].unit_type, NnrUnitType::Tpl);
    assert!(u[2].size < 1000, "topology is deflated");
    if q_name != raw_name {
        let info = u
            .iter()
            .filter_map(|x| x.ndu.as_ref())
            .find(|n| n.name == q_name)
            .unwrap();
        if matches!(tensors[0].data, TensorData::F32(_)) {
            assert_eq!(info.qp, Some(-20));
            assert!(!info.dq);
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let t = Tensor {
        name: "x".into(),
        shape: vec![2, 3],
        data: TensorData::F32(vec![0.0; 5]),
    };
    assert!(encode(&[t], &EncoderConfig::default()).is_err());
    let t = Tensor {
        name: "x".into(),
        shape: vec![2],
        data: TensorData::F32(vec![f32::NAN, 1.0]),
    };
    assert!(encode(&[t], &EncoderConfig::default()).is_err());
    // QPs too far apart for the signalled offsets.
    let a = Tensor {
        name: "a".into(),
        shape: vec![1, 2],
        data: TensorData::F32(vec![1.0, 1.0]),
    };
    let b = Tensor {
        name: "b".into(),
        ..a.clone()
    };
    let mut cfg = EncoderConfig::default();
    cfg.overrides.insert(
        "a".into(),
        TensorOverride {
            qp: Some(300),
            ..Default::default()
        },
    );
    cfg.overrides.insert(
        "b".into(),
        TensorOverride {
            qp: Some(-300),
            ..Default::default()
        },
    );
    assert!(encode(&[a.clone(), b], &cfg).is_err());
    // A single far QP moves the base QP instead.
    let d = decode(
        &encode(std::slice::from_ref(&a), &cfg).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(d[0].data, TensorData::F32(vec![0.0, 0.0]));
    // Several tensors around a moved base QP (coded again after the first attempt at 0).
    let c = Tensor {
        name: "c".into(),
        data: TensorData::F32(vec![1e22, -3e22]),
        ..a.clone()
    };
    cfg.overrides.insert(
        "c".into(),
        TensorOverride {
            qp: Some(280),
            ..Default::default()
        },
    );
    let tensors = [a, c];
    let bs = encode(&tensors, &cfg).unwrap();
    let qps: Vec<Option<i32>> = units(&bs)
        .unwrap()
        .iter()
        .filter_map(|u| u.ndu.as_ref().map(|n| n.qp))
        .collect();
    assert_eq!(qps, [Some(300), Some(280)]);
    let d = decode(&bs, &Limits::default()).unwrap();
    assert_eq!(d, reconstruct(&tensors, &cfg).unwrap());
    assert_ne!(d[1].data, TensorData::F32(vec![0.0, 0.0]));
}

#[test]
fn empty_and_scalar_tensors() {
    let tensors = vec![
        Tensor {
            name: "empty".into(),
            shape: vec![0, 5],
            data: TensorData::F32(vec![]),
        },
        Tensor {
            name: "scalar".into(),
            shape: vec![],
            data: TensorData::F32(vec![0.5]),
        },
        Tensor {
            name: "iscalar".into(),
            shape: vec![],
            data: TensorData::I32(vec![-7]),
        },
        Tensor {
            name: "col".into(),
            shape: vec![7, 1],
            data: TensorData::F32(vec![0.25; 7]),
        },
    ];
    for cb in [
        CodebookMode::Uniform,
        CodebookMode::Codebook,
        CodebookMode::Smaller,
    ] {
        for so in [ScanOrder::Raster, ScanOrder::Blocks32] {
            let cfg = EncoderConfig {
                codebook_mode: cb,
                scan_order: so,
                row_skipping: true,
                ..Default::default()
            };
            let d = decode(&encode(&tensors, &cfg).unwrap(), &Limits::default()).unwrap();
            assert_eq!(d[0].shape, vec![0, 5]);
            assert_eq!(d[1].shape, vec![1]);
            assert_eq!(d[2].data, TensorData::I32(vec![-7]));
            assert_eq!(d[3].shape, vec![7, 1]);
            assert_eq!(d, reconstruct(&tensors, &cfg).unwrap());
        }
    }
}

/// A tensor big enough for the concurrent first pass of parameter optimisation (a second
/// thread runs the candidates) codes exactly as on one thread, also with block-row resets.
#[test]
fn big_tensor_codes_the_same_on_one_thread() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let w: Vec<f32> = (0..1200 * 1000)
        .map(|_| {
            let a: f32 = rng.gen_range(1e-7f32..1.0);
            let b: f32 = rng.gen_range(1e-7f32..1.0);
            0.02 * (a.ln() - b.ln())
        })
        .collect();
    let tensors = [Tensor {
        name: "big".into(),
        shape: vec![1200, 1000],
        data: TensorData::F32(w),
    }];
    for scan_order in [ScanOrder::Raster, ScanOrder::Blocks64] {
        let threads = EncoderConfig {
            scan_order,
            ..Default::default()
        };
        let one = EncoderConfig {
            parallel: false,
            ..threads.clone()
        };
        assert_eq!(
            encode(&tensors, &threads).unwrap(),
            encode(&tensors, &one).unwrap(),
            "{scan_order:?}"
        );
    }
}

/// QPs that do not fit beside `mps_quantization_parameter` 0 move it to the middle of their
/// range; every tensor is then coded again against it, and decodes to its reconstruction.
#[test]
fn spread_qps_move_the_base_qp() {
    let tensors = random_tensors(11, 4)
        .into_iter()
        .filter(|t| matches!(t.data, TensorData::F32(_)))
        .collect::<Vec<_>>();
    assert!(tensors.len() >= 2);
    let mut cfg = EncoderConfig::default();
    for (t, qp) in tensors.iter().zip([150, 50, 120, 60]) {
        let ov = TensorOverride {
            qp: Some(qp),
            ..Default::default()
        };
        cfg.overrides.insert(t.name.clone(), ov);
    }
    let bs = encode(&tensors, &cfg).unwrap();
    let qps: Vec<Option<i32>> = units(&bs)
        .unwrap()
        .iter()
        .filter_map(|u| u.ndu.as_ref().map(|n| n.qp))
        .collect();
    let want: Vec<Option<i32>> = [150, 50, 120, 60]
        .into_iter()
        .take(tensors.len())
        .map(Some)
        .collect();
    assert_eq!(qps, want);
    let dec = decode(&bs, &Limits::default()).unwrap();
    assert_eq!(dec, reconstruct(&tensors, &cfg).unwrap());
}
