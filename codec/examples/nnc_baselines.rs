//! Baselines for the benchmark docs, in bits per weight on the same tensors:
//! NNC at defaults; a zero-order adaptive ANS coder (constriction) of the same quantized levels;
//! zstd -19 of the raw float32 tensors and of the levels.
//! `cargo run -p nnc-codec --release --features baselines --example nnc_baselines [-- IN.npz]`
//! (without an npz: the synthetic ResNet-18-like model of `nnc_speed`).
// Developer tools: a bad argument or file ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use constriction::stream::model::DefaultContiguousCategoricalEntropyModel;
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::{Decode, Encode};
use nnc_codec::{encode, quant, reconstruct, EncoderConfig, Tensor, TensorData, TensorKind};

#[path = "nnc_speed.rs"]
#[allow(dead_code)]
mod speed;

use speed::common;

fn load(path: &str) -> Vec<Tensor> {
    common::load_npz(std::path::Path::new(path))
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

const BLOCK: usize = 4096;

/// Zero-order adaptive ANS: the model of each block of 4096 levels is the Laplace-smoothed
/// histogram of all earlier levels over the tensor's range [min, max] (sent as 8 bytes).
/// Blocks are encoded last to first so the decoder reads them in order. Returns bytes.
fn adaptive_ans_bytes(levels: &[i32]) -> usize {
    let (Some(&lo), Some(&hi)) = (levels.iter().min(), levels.iter().max()) else {
        return 8;
    };
    let k = (hi - lo + 1) as usize;
    let blocks: Vec<&[i32]> = levels.chunks(BLOCK).collect();
    let mut counts = vec![1f64; k];
    let mut models = Vec::with_capacity(blocks.len());
    for b in &blocks {
        let total: f64 = counts.iter().sum();
        let probs: Vec<f64> = counts.iter().map(|c| c / total).collect();
        models.push(
            DefaultContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast(
                &probs, None,
            )
            .expect("model"),
        );
        for &v in b.iter() {
            counts[(v - lo) as usize] += 1.0;
        }
    }
    let mut coder = DefaultAnsCoder::new();
    for (b, m) in blocks.iter().zip(&models).rev() {
        for &v in b.iter().rev() {
            coder.encode_symbol((v - lo) as usize, m).expect("encode");
        }
    }
    let words = coder.into_compressed().expect("compressed");
    // Check that it decodes (the baseline must be a real code).
    let mut dec = DefaultAnsCoder::from_compressed(words.clone()).expect("decoder");
    for (b, m) in blocks.iter().zip(&models) {
        for &v in b.iter() {
            let s = dec.decode_symbol(m).expect("decode");
            assert_eq!(s as i32 + lo, v);
        }
    }
    words.len() * 4 + 8
}

fn main() {
    let tensors = match std::env::args().nth(1) {
        Some(p) => load(&p),
        None => speed::resnet18_like(1),
    };
    let cfg = EncoderConfig::default();
    let n: usize = tensors.iter().map(|t| t.data.len()).sum();
    let nnc = encode(&tensors, &cfg).expect("encode");
    let rec = reconstruct(&tensors, &cfg).expect("reconstruct");
    let mut ans = 0usize;
    let mut raw = Vec::new();
    let mut lv = Vec::new();
    for (t, r) in tensors.iter().zip(&rec) {
        match (&t.data, &r.data) {
            (TensorData::F32(w), TensorData::F32(q)) => {
                let qp = if TensorKind::of_shape(&t.shape) == TensorKind::Weight {
                    cfg.qp
                } else {
                    -75
                };
                let step = quant::step_size(qp, cfg.qp_density);
                let levels: Vec<i32> = q.iter().map(|&x| (x / step).round() as i32).collect();
                ans += adaptive_ans_bytes(&levels);
                raw.extend(w.iter().flat_map(|x| x.to_le_bytes()));
                lv.extend(levels.iter().flat_map(|x| x.to_le_bytes()));
            }
            (TensorData::I32(v), _) => {
                ans += adaptive_ans_bytes(v);
                raw.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                lv.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            }
            _ => unreachable!("element types are preserved"),
        }
    }
    let zraw = zstd::bulk::compress(&raw, 19).expect("zstd").len();
    let zlv = zstd::bulk::compress(&lv, 19).expect("zstd").len();
    let bpw = |b: usize| b as f64 * 8.0 / n as f64;
    println!("{n} weights in {} tensors", tensors.len());
    println!(
        "  NNC (defaults, DeepCABAC)            {:>10} B  {:.3} bits/weight",
        nnc.len(),
        bpw(nnc.len())
    );
    println!(
        "  same levels, zero-order adaptive ANS {:>10} B  {:.3} bits/weight",
        ans,
        bpw(ans)
    );
    println!(
        "  same levels as int32, zstd -19       {:>10} B  {:.3} bits/weight",
        zlv,
        bpw(zlv)
    );
    println!(
        "  raw float32, zstd -19 (lossless)     {:>10} B  {:.3} bits/weight",
        zraw,
        bpw(zraw)
    );
}
