//! `nnzip codec`: the command line over the NNC codec, checked against the reference vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use common::nnzip;

fn conformance(name: &str) -> PathBuf {
    common::fixture("conformance/nnc").join(name)
}

/// The command-line flags of a vector's manifest settings.
fn flags(settings: &serde_json::Value) -> Vec<String> {
    let mut f = Vec::new();
    let o = settings.as_object().unwrap();
    if let Some(q) = o.get("qp") {
        f.push(format!("--qp={q}"));
    }
    if let Some(d) = o.get("qp_density") {
        f.push(format!("--qp-density={d}"));
    }
    if o.get("use_dq") == Some(&serde_json::Value::Bool(false)) {
        f.push("--no-dq".into());
    }
    if let Some(c) = o.get("codebook_mode") {
        f.push(format!("--codebook={c}"));
    }
    if let Some(b) = o.get("int_quant_bw").and_then(|b| b.as_u64()) {
        f.push(format!("--bitdepth={b}"));
    }
    if o.get("row_skipping") == Some(&serde_json::Value::Bool(true)) {
        f.push("--row-skipping".into());
    }
    if o.get("param_opt") == Some(&serde_json::Value::Bool(false)) {
        f.push("--no-param-opt".into());
    }
    if let Some(q) = o.get("nonweight_qp") {
        f.push(format!("--nonweight-qp={q}"));
    }
    f
}

#[test]
fn encode_decode_info_through_the_cli() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(conformance("manifest.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A spread of settings: DQ, no DQ, codebook, bit depth, row skipping, no param opt, and the
    // sampled parameter optimisation (`--fast`: other context initialisations, same levels).
    for (name, extra) in [
        ("small__q38_dq", None),
        ("rows__q32_nodq", None),
        ("wide__cb_q34", None),
        ("sparse__bw8", None),
        ("rows__q20_dq_rows", None),
        ("small__q30_noparamopt", None),
        ("int__q38_dq", None),
        ("wide__q38_dq", Some("--fast")),
    ] {
        let v = manifest["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        let out = dir.path().join(format!("{name}.nnc"));
        let input = conformance(&format!("{name}.input.npz"));
        let mut args = vec![
            "codec".to_string(),
            "encode".into(),
            input.to_str().unwrap().into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ];
        args.extend(flags(&v["encoder_settings"]));
        args.extend(extra.map(String::from));
        let r = nnzip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let ours = std::fs::read(&out).unwrap();
        let reference = v["bitstream_bytes"].as_u64().unwrap() as f64;
        assert!(
            ours.len() as f64 <= reference * 1.01,
            "{name}: {} vs {reference}",
            ours.len()
        );
        // Decoding our stream gives what the reference decodes from its own (same decisions).
        let dec = dir.path().join(format!("{name}.npz"));
        let r = nnzip(&[
            "codec",
            "decode",
            out.to_str().unwrap(),
            "-o",
            dec.to_str().unwrap(),
        ]);
        assert!(r.status.success());
        let ours = nnzip::npz::read_npz(&dec).unwrap();
        let theirs = nnzip::npz::read_npz(&conformance(&format!("{name}.decoded.npz"))).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.dims, b.1.dims, "{name}/{}", a.0);
            // The reference returns float64 for codebook tensors; compare as float32.
            let bv: Vec<f32> = match b.1.dtype {
                nnzip::tensor::DType::F64 => {
                    b.1.bytes()
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                        .collect()
                }
                nnzip::tensor::DType::F32 => b.1.to_f32().unwrap(),
                _ => b.1.to_i32().unwrap().iter().map(|&x| x as f32).collect(),
            };
            let av: Vec<f32> = match a.1.dtype {
                nnzip::tensor::DType::F32 => a.1.to_f32().unwrap(),
                _ => a.1.to_i32().unwrap().iter().map(|&x| x as f32).collect(),
            };
            assert!(
                av.iter().zip(&bv).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}/{}",
                a.0
            );
        }
        let r = nnzip(&["codec", "info", out.to_str().unwrap(), "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let ndus: Vec<_> = info
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["type"] == "Ndu")
            .collect();
        assert_eq!(ndus.len(), theirs.len());
    }
}

#[test]
fn corrupt_bitstreams_exit_with_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(conformance("small__q38_dq.nnc")).unwrap();
    let cut = dir.path().join("cut.nnc");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("x.npz");
    let r = nnzip(&[
        "codec",
        "decode",
        cut.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        r.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists(), "nothing half-written");
}
