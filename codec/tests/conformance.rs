//! Decoder conformance: every NNCodec 2.1.3 vector decodes bit-exactly to its `decoded.npz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nnc_codec::{decode, Limits, TensorData};

#[test]
fn decoder_matches_reference_on_all_vectors() {
    let vectors = manifest();
    assert_eq!(vectors.len(), 33);
    let mut failures = Vec::new();
    for v in &vectors {
        let dir = conformance_dir();
        let bs = std::fs::read(dir.join(format!("{}.nnc", v.name))).expect("nnc");
        assert_eq!(bs.len(), v.bitstream_bytes);
        let expected = load_npz(&dir.join(format!("{}.decoded.npz", v.name)));
        let got = match decode(&bs, &Limits::default()) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: decode error {e}", v.name));
                continue;
            }
        };
        if got.len() != expected.len() {
            failures.push(format!(
                "{}: {} tensors vs {}",
                v.name,
                got.len(),
                expected.len()
            ));
            continue;
        }
        for (g, (e, kind)) in got.iter().zip(&expected) {
            let int_ok = matches!(g.data, TensorData::I32(_)) == (*kind == Kind::I32);
            if !int_ok {
                failures.push(format!("{}: {} element type", v.name, e.name));
            }
            if let Err(m) = same_tensor(g, e) {
                failures.push(format!("{}: {m}", v.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The helpers' npz writer (used by the examples) against their reader: the decoded tensors
/// of a vector round-trip bit for bit.
#[test]
fn npz_helpers_round_trip() {
    let v = &manifest()[0];
    let bs = std::fs::read(conformance_dir().join(format!("{}.nnc", v.name))).expect("nnc");
    let tensors = decode(&bs, &Limits::default()).expect("decode");
    let dir = std::env::temp_dir().join(format!("nnc-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("t.npz");
    write_npz(&path, &tensors);
    let back = load_npz(&path);
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert_eq!(back.len(), tensors.len());
    for (t, (b, _)) in tensors.iter().zip(&back) {
        same_tensor(t, b).expect("same tensor");
    }
}
