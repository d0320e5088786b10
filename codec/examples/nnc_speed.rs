//! Encode/decode speed on a synthetic ResNet-18-like model (11.7 M Laplacian weights in 62
//! tensors of ResNet-18's shapes):
//! `cargo run -p nnc-codec --release --example nnc_speed [-- SCAN_ORDER [PARAM_OPT_BINS]] [OUT.npz]`
//!
//! An argument ending in `.npz` also writes the model there (and its bitstream beside it as
//! `.nnc`), so the reference can be timed on the same tensors (`scripts/reference-speed.py`).
// Developer tools: a bad argument or file ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nnc_codec::{decode, encode, EncoderConfig, Limits, ScanOrder, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use std::time::Instant;

// Public for `nnc_baselines`, which includes this file as a module.
#[path = "../tests/common/mod.rs"]
pub mod common;

/// ResNet-18 convolution / linear weight shapes plus BatchNorm-like vectors.
/// Synthetic model used by the speed example and the baselines.
pub fn resnet18_like(seed: u64) -> Vec<Tensor> {
    let mut shapes: Vec<Vec<usize>> = vec![vec![64, 3, 7, 7]];
    let stages = [(64, 64), (64, 128), (128, 256), (256, 512)];
    for (si, &(cin, cout)) in stages.iter().enumerate() {
        for b in 0..2 {
            let c_in = if b == 0 { cin } else { cout };
            shapes.push(vec![cout, c_in, 3, 3]);
            shapes.push(vec![cout]);
            shapes.push(vec![cout, cout, 3, 3]);
            shapes.push(vec![cout]);
            if b == 0 && si > 0 {
                shapes.push(vec![cout, cin, 1, 1]);
            }
        }
    }
    shapes.push(vec![1000, 512]);
    shapes.push(vec![1000]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            let scale = if shape.len() > 1 { 0.02 } else { 0.1 };
            let data = (0..n)
                .map(|_| {
                    let a: f32 = rng.gen_range(1e-7f32..1.0);
                    let b: f32 = rng.gen_range(1e-7f32..1.0);
                    scale * (a.ln() - b.ln()) / 2.0
                })
                .collect();
            Tensor {
                name: format!("layer{i}"),
                shape,
                data: TensorData::F32(data),
            }
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let npz = args.iter().find(|a| a.ends_with(".npz")).cloned();
    let mut nums = args.iter().filter(|a| !a.ends_with(".npz"));
    let so: ScanOrder = nums.next().and_then(|s| s.parse().ok()).unwrap_or_default();
    let bins: Option<u32> = nums.next().and_then(|s| s.parse().ok());
    let tensors = resnet18_like(1);
    let n: usize = tensors.iter().map(|t| t.data.len()).sum();
    let cfg = EncoderConfig {
        scan_order: so,
        param_opt_bins: bins,
        ..Default::default()
    };
    let t0 = Instant::now();
    let bs = encode(&tensors, &cfg).expect("encode");
    let te = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let d = decode(&bs, &Limits::default()).expect("decode");
    let td = t0.elapsed().as_secs_f64();
    assert_eq!(d.len(), tensors.len());
    if let Some(path) = npz {
        common::write_npz(std::path::Path::new(&path), &tensors);
        std::fs::write(format!("{}.nnc", path.trim_end_matches(".npz")), &bs).expect("write nnc");
    }
    println!(
        "{n} weights, scan_order {so}, param_opt_bins {bins:?}: {} bytes, {:.4} bits/weight; encode {:.2} s ({:.2} M/s); decode {:.3} s ({:.1} M/s); {} threads",
        bs.len(),
        bs.len() as f64 * 8.0 / n as f64,
        te,
        n as f64 / te / 1e6,
        td,
        n as f64 / td / 1e6,
        rayon::current_num_threads()
    );
}
