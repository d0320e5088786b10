//! Makes calibration data for an image model from the MNIST held-out fixture: digits scaled
//! (nearest neighbour) to the model's input size, grey in every channel, no labels (so the
//! metric is top-1 agreement with the original model). For benchmarks on real models that ship
//! without data. Usage: make_calib MODEL.onnx OUT.npz [N] [NAME=DIMS]
//!
//! For a text model (int64 inputs) it writes seeded random token sequences instead: `[CLS]`,
//! tokens drawn from the vocabulary (the row count of the largest embedding table), `[SEP]`, of
//! the length given by `NAME=1xS` (default 16), attention masks of ones, token types of zeros.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nnzip::tensor::{DType, Tensor};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = nnzip::onnx::Model::load(&args[1]).expect("model");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
    if model.inputs().iter().all(|i| i.dtype == DType::I64) {
        return tokens(&model, &args, n);
    }
    let given: Vec<(String, Vec<usize>)> = args
        .get(4)
        .map(|s| vec![nnzip::runtime::inputs::parse_shape_arg(s).unwrap()])
        .unwrap_or_default();
    let vi = &model.inputs()[0];
    let dims = nnzip::runtime::inputs::resolve_shapes(std::slice::from_ref(vi), &given)
        .unwrap()
        .remove(0);
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mnist_test.npz");
    let arrays = nnzip::npz::read_npz(&root).unwrap();
    let x = arrays
        .iter()
        .find(|(k, _)| k == "input")
        .unwrap()
        .1
        .to_f32()
        .unwrap();
    let mut out = Vec::with_capacity(n * c * h * w);
    for s in 0..n {
        let img = &x[s * 784..(s + 1) * 784];
        for _ in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    // centre the digit in a square of the shorter side, white paper, dark ink
                    let side = h.min(w);
                    let (oy, ox) = ((h - side) / 2, (w - side) / 2);
                    let v = if y >= oy && y < oy + side && xx >= ox && xx < ox + side {
                        img[((y - oy) * 28 / side) * 28 + (xx - ox) * 28 / side]
                    } else {
                        0.0
                    };
                    out.push((1.0 - v - 0.5) / 0.5);
                }
            }
        }
    }
    let t = nnzip::tensor::Tensor::from_f32(vec![n, c, h, w], &out).unwrap();
    nnzip::npz::write_npz(std::path::Path::new(&args[2]), &[(vi.name.clone(), t)]).unwrap();
    eprintln!("{n} samples of {c}x{h}x{w} -> {}", args[2]);
}

/// Random token sequences for a BERT-like model (see the module comment).
fn tokens(model: &nnzip::onnx::Model, args: &[String], n: usize) {
    let len = args
        .get(4)
        .and_then(|s| nnzip::runtime::inputs::parse_shape_arg(s).ok())
        .and_then(|(_, d)| d.get(1).copied())
        .unwrap_or(16)
        .max(2);
    let vocab = model
        .weights()
        .iter()
        .filter(|w| w.dims.len() == 2 && w.dtype == DType::F32)
        .max_by_key(|w| w.dims[0] * w.dims[1])
        .map_or(30522, |w| w.dims[0]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut arrays = Vec::new();
    for vi in model.inputs() {
        let name = vi.name.to_lowercase();
        let v: Vec<i64> = (0..n * len)
            .map(|i| {
                let p = i % len;
                if name.contains("mask") {
                    1
                } else if name.contains("type") {
                    0
                } else if p == 0 {
                    101
                } else if p == len - 1 {
                    102
                } else {
                    rng.gen_range(1000..vocab as i64)
                }
            })
            .collect();
        arrays.push((vi.name.clone(), Tensor::from_i64(vec![n, len], &v).unwrap()));
    }
    nnzip::npz::write_npz(std::path::Path::new(&args[2]), &arrays).unwrap();
    eprintln!(
        "{n} token sequences of {len} (vocabulary {vocab}) -> {}",
        args[2]
    );
}
