//! `nnzip calib`: a folder of PNGs (one sub-folder per class) becomes exactly the arrays the
//! model's preprocessing gives, labels from the folder names; sentences become WordPiece ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;
use nnzip::onnx::proto::{GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto};

/// `x [N, 3, 4, 5]` → GlobalAveragePool: an image model with a fixed 4×5 input.
fn image_model(dir: &std::path::Path) -> std::path::PathBuf {
    let mut g = GraphProto::new();
    g.name = "img".into();
    g.input.push(value_info("x", &[1, 3, 4, 5]));
    g.output.push(value_info("y", &[1, 3, 1, 1]));
    let mut n = NodeProto::new();
    n.op_type = "GlobalAveragePool".into();
    n.input = vec!["x".into()];
    n.output = vec!["y".into()];
    g.node = vec![n];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    let p = dir.join("img.onnx");
    std::fs::write(&p, m.write_to_bytes().unwrap()).unwrap();
    p
}

fn pixel(i: u32, x: u32, y: u32) -> [u8; 3] {
    [
        ((i * 53 + x * 17 + y * 31) % 256) as u8,
        ((i * 29 + x * 7 + y * 101) % 256) as u8,
        ((i * 11 + x * 131 + y * 3) % 256) as u8,
    ]
}

#[test]
fn a_folder_of_pngs_round_trips_into_the_expected_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let model = image_model(dir.path());
    let images = dir.path().join("images");
    // Two classes, sub-folders in name order: cat = 0, dog = 1; files in name order.
    let files = [
        ("cat", "a.png", 0),
        ("cat", "b.png", 1),
        ("dog", "c.png", 2),
    ];
    for (class, file, i) in files {
        std::fs::create_dir_all(images.join(class)).unwrap();
        let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb(pixel(i, x, y)));
        img.save(images.join(class).join(file)).unwrap();
    }
    let out = dir.path().join("calib.npz");
    let o = Command::new(env!("CARGO_BIN_EXE_nnzip"))
        .args([
            "calib",
            model.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ])
        .args([
            "-o",
            out.to_str().unwrap(),
            "--bgr",
            "--mean",
            "0.5,0.4,0.3",
        ])
        .args(["--std", "0.25", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["samples"], 3);
    assert_eq!(report["classes"], serde_json::json!(["cat", "dog"]));
    let arrays = nnzip::npz::read_npz(&out).unwrap();
    let x = &arrays.iter().find(|(n, _)| n == "x").unwrap().1;
    assert_eq!(x.dims, vec![3, 3, 4, 5]);
    let v = x.to_f32().unwrap();
    let (mean, std) = ([0.5f32, 0.4, 0.3], 0.25f32);
    for i in 0..3u32 {
        for (c, m) in mean.iter().enumerate() {
            for y in 0..4u32 {
                for xx in 0..5u32 {
                    // BGR: model channel c is the image's channel 2 - c.
                    let p = f32::from(pixel(i, xx, y)[2 - c]);
                    let want = (p / 255.0 - m) / std;
                    let at = ((i as usize * 3 + c) * 4 + y as usize) * 5 + xx as usize;
                    assert_eq!(v[at], want, "sample {i} channel {c} at ({xx}, {y})");
                }
            }
        }
    }
    let labels = arrays
        .iter()
        .find(|(n, _)| n == "labels")
        .unwrap()
        .1
        .to_i64()
        .unwrap();
    assert_eq!(labels, vec![0, 0, 1]);
    // The written file is calibration data for the model.
    let m = nnzip::onnx::Model::load(&model).unwrap();
    let c = nnzip::calib::Calibration::load(&out, &m).unwrap();
    assert_eq!(c.samples, 3);
}

#[test]
fn sentences_become_wordpiece_ids_for_a_token_model() {
    let dir = tempfile::tempdir().unwrap();
    // input_ids, attention_mask [N, 8] int64 → Cast → output.
    let mut g = GraphProto::new();
    g.name = "tok".into();
    for name in ["input_ids", "attention_mask"] {
        let mut v = value_info(name, &[1, 8]);
        if let Some(nnzip::onnx::proto::type_proto::Value::TensorType(t)) =
            v.type_.as_mut().unwrap().value.as_mut()
        {
            t.elem_type = 7;
        }
        g.input.push(v);
    }
    g.output.push(value_info("y", &[1, 8]));
    let mut n = NodeProto::new();
    n.op_type = "Cast".into();
    n.input = vec!["input_ids".into()];
    n.output = vec!["y".into()];
    let mut to = nnzip::onnx::proto::AttributeProto::new();
    to.name = "to".into();
    to.i = 1;
    to.type_ =
        protobuf::EnumOrUnknown::new(nnzip::onnx::proto::attribute_proto::AttributeType::INT);
    n.attribute.push(to);
    g.node = vec![n];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    let model = dir.path().join("tok.onnx");
    std::fs::write(&model, m.write_to_bytes().unwrap()).unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(
        &tok,
        r###"{"model": {"type": "WordPiece", "unk_token": "[UNK]",
             "vocab": {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "hello": 7592,
                       "world": 2088, "!": 999, "un": 4895, "##known": 8400}},
           "normalizer": {"type": "BertNormalizer", "lowercase": true}}"###,
    )
    .unwrap();
    let text = dir.path().join("s.txt");
    std::fs::write(&text, "Hello, World!\n\nunknown zzz\n").unwrap();
    let out = dir.path().join("c.npz");
    let o = Command::new(env!("CARGO_BIN_EXE_nnzip"))
        .args([
            "calib",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args([
            "--text",
            text.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arrays = nnzip::npz::read_npz(&out).unwrap();
    let get = |k: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .to_i64()
            .unwrap()
    };
    assert_eq!(
        get("input_ids"),
        vec![101, 7592, 100, 2088, 999, 102, 0, 0, 101, 4895, 8400, 100, 102, 0, 0, 0]
    );
    assert_eq!(
        get("attention_mask"),
        vec![1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    );
}
