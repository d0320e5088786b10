//! Robustness of the decoder: mutated and random inputs end in `Ok` or a typed error, never a
//! panic, hang or unbounded allocation. A quick seeded run is part of the suite; the long run
//! (`cargo test -p nnc-codec --release --test robustness -- --ignored`, duration from
//! `NNC_FUZZ_SECS`, default 300) is the in-process stand-in for cargo-fuzz on stable Rust.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nnc_codec::{
    decode_stream, encode, encode_with_topology, units, CodebookMode, EncoderConfig, Error, Limits,
    ScanOrder, Tensor, TensorData, Topology,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

/// Seed corpus: every conformance stream plus streams using block scans with entry points,
/// row skipping, codebooks, raw tensors and a deflated topology.
fn corpus() -> Vec<Vec<u8>> {
    let mut c: Vec<Vec<u8>> = common::manifest()
        .iter()
        .map(|v| {
            std::fs::read(common::conformance_dir().join(format!("{}.nnc", v.name))).expect("nnc")
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let w: Vec<f32> = (0..40 * 24)
        .map(|i| {
            if i % 7 == 0 {
                0.0
            } else {
                rng.gen_range(-0.2..0.2)
            }
        })
        .collect();
    let tensors = vec![
        Tensor {
            name: "w".into(),
            shape: vec![40, 24],
            data: TensorData::F32(w.clone()),
        },
        Tensor {
            name: "i".into(),
            shape: vec![10, 3],
            data: TensorData::I32((0..30).collect()),
        },
        Tensor {
            name: "b".into(),
            shape: vec![24],
            data: TensorData::F32(w[..24].to_vec()),
        },
    ];
    for (so, rs, cb) in [(1u8, true, 0u8), (2, false, 1), (4, true, 2), (3, true, 0)] {
        let cfg = EncoderConfig {
            scan_order: ScanOrder::try_from(so).expect("scan order"),
            row_skipping: rs,
            codebook_mode: CodebookMode::try_from(cb).expect("codebook mode"),
            ..Default::default()
        };
        let topo = Topology {
            storage_format: 2,
            compression_format: 1,
            data: b"graph".repeat(50),
        };
        c.push(encode_with_topology(&tensors, &cfg, Some(&topo)).expect("encode"));
    }
    c
}

fn mutate(rng: &mut ChaCha8Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..7) {
            0 | 1 => {
                for _ in 0..rng.gen_range(1..8) {
                    if !b.is_empty() {
                        let i = rng.gen_range(0..b.len());
                        b[i] ^= 1 << rng.gen_range(0..8);
                    }
                }
            }
            2 => {
                let n = rng.gen_range(0..=b.len());
                b.truncate(n);
            }
            3 => {
                if !b.is_empty() {
                    let i = rng.gen_range(0..b.len());
                    let n = rng.gen_range(1..16).min(b.len() - i);
                    for x in &mut b[i..i + n] {
                        *x = rng.gen();
                    }
                }
            }
            4 => {
                let i = rng.gen_range(0..=b.len());
                let extra: Vec<u8> = (0..rng.gen_range(1..8)).map(|_| rng.gen()).collect();
                b.splice(i..i, extra);
            }
            5 => {
                if !b.is_empty() {
                    let i = rng.gen_range(0..b.len());
                    let n = rng.gen_range(1..8).min(b.len() - i);
                    b.drain(i..i + n);
                }
            }
            _ => {
                // Header-sensitive bytes: the first bytes of a unit (sizes, types, flags).
                let i = rng.gen_range(0..b.len().clamp(1, 64));
                if i < b.len() {
                    b[i] = rng.gen();
                }
            }
        }
    }
    b
}

/// Small limits keep each attempt fast; the decoder must honour them.
fn limits(parallel: bool) -> Limits {
    Limits {
        max_tensor_elements: 1 << 22,
        max_total_elements: 1 << 23,
        parallel,
        ..Default::default()
    }
}

fn check(input: &[u8], parallel: bool) {
    match decode_stream(input, &limits(parallel)) {
        Ok(d) => {
            let n: usize = d.tensors.iter().map(|t| t.data.len()).sum();
            assert!(n as u64 <= 1 << 23);
        }
        Err(e) => {
            // Every failure is typed; formatting it must work too.
            let _ = e.to_string();
        }
    }
    let _ = units(input);
}

fn run(seed: u64, deadline: Option<Instant>, iterations: usize) -> usize {
    let corpus = corpus();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut n = 0;
    loop {
        if let Some(d) = deadline {
            if Instant::now() >= d {
                break;
            }
        } else if n >= iterations {
            break;
        }
        let input = if rng.gen_bool(0.05) {
            (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect()
        } else {
            let src = &corpus[rng.gen_range(0..corpus.len())];
            mutate(&mut rng, src)
        };
        let parallel = rng.gen_bool(0.5);
        let r = std::panic::catch_unwind(|| check(&input, parallel));
        if r.is_err() {
            let path = std::env::temp_dir().join(format!("nnc-crash-{seed}-{n}.nnc"));
            let _ = std::fs::write(&path, &input);
            panic!("decoder panicked; input saved to {}", path.display());
        }
        n += 1;
    }
    n
}

#[test]
fn thousands_of_mutations_do_not_panic() {
    let n = run(1, None, 3000);
    assert_eq!(n, 3000);
}

#[test]
fn declared_sizes_are_checked_before_allocation() {
    let t = Tensor {
        name: "big".into(),
        shape: vec![64, 64],
        data: TensorData::F32(vec![0.0; 4096]),
    };
    let bs = encode(&[t], &EncoderConfig::default()).expect("encode");
    let tight = Limits {
        max_tensor_elements: 4095,
        ..Default::default()
    };
    assert!(matches!(decode_stream(&bs, &tight), Err(Error::Limit(_))));
    let ratio = Limits {
        max_elements_per_payload_byte: Some(1),
        ..Default::default()
    };
    assert!(matches!(decode_stream(&bs, &ratio), Err(Error::Limit(_))));
    assert!(decode_stream(&bs, &Limits::default()).is_ok());
    // Truncation anywhere is an error or a shorter stream, never a panic.
    for n in 0..bs.len() {
        let _ = decode_stream(&bs[..n], &Limits::default());
    }
}

/// Inputs that once made the decoder panic (found by the fuzz loop), kept as regressions.
#[test]
fn former_crashes_are_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("tests/data") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "nnc") {
            let b = std::fs::read(&p).expect("read");
            check(&b, false);
            check(&b, true);
            n += 1;
        }
    }
    assert!(n > 0);
    // Overflowing shapes from callers are errors; empty ones with huge dimensions are fine.
    let t = Tensor {
        name: "x".into(),
        shape: vec![usize::MAX, 3],
        data: TensorData::F32(vec![]),
    };
    assert!(encode(std::slice::from_ref(&t), &EncoderConfig::default()).is_err());
    assert!(nnc_codec::reconstruct(&[t], &EncoderConfig::default()).is_err());
    let t = Tensor {
        name: "x".into(),
        shape: vec![0, usize::MAX, 3],
        data: TensorData::F32(vec![]),
    };
    assert!(encode(std::slice::from_ref(&t), &EncoderConfig::default()).is_err());
    let t = Tensor {
        name: "x".into(),
        shape: vec![0, 1 << 40, 3],
        data: TensorData::F32(vec![]),
    };
    let bs = encode(std::slice::from_ref(&t), &EncoderConfig::default()).expect("encode");
    assert_eq!(
        decode_stream(&bs, &Limits::default())
            .expect("decode")
            .tensors,
        vec![t]
    );
}

#[test]
fn pruned_zero_layers_pass_default_limits() {
    // A fully pruned layer with row skipping is tiny but legitimate.
    let t = Tensor {
        name: "pruned".into(),
        shape: vec![1024, 1024],
        data: TensorData::F32(vec![0.0; 1 << 20]),
    };
    let cfg = EncoderConfig {
        row_skipping: true,
        ..Default::default()
    };
    let bs = encode(std::slice::from_ref(&t), &cfg).expect("encode");
    assert!(bs.len() < 400, "{} bytes", bs.len());
    let d = decode_stream(&bs, &Limits::default()).expect("decode");
    assert_eq!(d.tensors[0], t);
}

#[test]
#[ignore]
fn fuzz_for_a_while() {
    let secs: u64 = std::env::var("NNC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("NNC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let t0 = Instant::now();
    let n = run(seed, Some(t0 + Duration::from_secs(secs)), 0);
    eprintln!(
        "fuzzed {n} inputs in {:.0} s without a panic",
        t0.elapsed().as_secs_f64()
    );
}

/// Found by cargo-fuzz (a timeout): a 2.6 kB stream declaring 892,913 levels whose bins, read
/// past the end of the payload, run into long remainders. Before the payload check it decoded
/// (to garbage) after some 60 M bins; now the levels are refused once the decoder has left the
/// payload.
#[test]
fn levels_past_the_payload_are_truncated() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let b = std::fs::read(dir.join("fuzz-timeout-garbage-remainders.nnc")).expect("read");
    for parallel in [false, true] {
        assert!(matches!(
            decode_stream(&b, &limits(parallel)),
            Err(Error::Truncated(_))
        ));
    }
    assert_eq!(units(&b).expect("headers parse").len(), 5);
}
