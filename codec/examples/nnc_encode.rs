//! Encodes the tensors of an `.npz` (float32 / int32) into an NNC bitstream.
//! `cargo run -p nnc-codec --release --example nnc_encode -- IN.npz OUT.nnc [--qp N]
//!  [--qp-density N] [--no-dq] [--codebook N] [--bitdepth N] [--row-skipping] [--nonweight-qp N]
//!  [--no-param-opt] [--fast] [--scan-order N] [--raw NAME]...`
// Developer tools: a bad argument or file ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nnc_codec::{encode, EncoderConfig, Tensor, TensorOverride};

#[path = "../tests/common/mod.rs"]
mod common;

/// The npz's tensors in archive order (float64 narrowed to float32 where exact).
fn load(path: &str) -> Vec<Tensor> {
    common::load_npz(std::path::Path::new(path))
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: nnc_encode IN.npz OUT.nnc [options]");
        std::process::exit(2);
    }
    let mut cfg = EncoderConfig::default();
    let mut i = 2;
    let num = |s: &String| -> i64 { s.parse().expect("number") };
    while i < args.len() {
        match args[i].as_str() {
            "--qp" => {
                cfg.qp = num(&args[i + 1]) as i32;
                i += 1;
            }
            "--qp-density" => {
                cfg.qp_density = num(&args[i + 1]) as u8;
                i += 1;
            }
            "--no-dq" => cfg.use_dq = false,
            "--codebook" => {
                cfg.codebook_mode = args[i + 1].parse().expect("codebook mode 0..=2");
                i += 1;
            }
            "--bitdepth" => {
                cfg.int_quant_bw = Some(num(&args[i + 1]) as u32);
                i += 1;
            }
            "--row-skipping" => cfg.row_skipping = true,
            "--no-param-opt" => cfg.param_opt = false,
            "--fast" => cfg.param_opt_bins = Some(2000),
            "--nonweight-qp" => {
                cfg.nonweight_qp = Some(num(&args[i + 1]) as i32);
                i += 1;
            }
            "--scan-order" => {
                cfg.scan_order = args[i + 1].parse().expect("scan order 0..=4");
                i += 1;
            }
            "--raw" => {
                cfg.overrides.insert(
                    args[i + 1].clone(),
                    TensorOverride {
                        raw: true,
                        ..Default::default()
                    },
                );
                i += 1;
            }
            o => panic!("unknown option {o}"),
        }
        i += 1;
    }
    let tensors = load(&args[0]);
    let n: usize = tensors.iter().map(|t| t.data.len()).sum();
    let t0 = std::time::Instant::now();
    let bs = encode(&tensors, &cfg).expect("encode");
    let dt = t0.elapsed().as_secs_f64();
    std::fs::write(&args[1], &bs).expect("write");
    println!(
        "{n} values -> {} bytes ({:.3} bits/value) in {dt:.3} s",
        bs.len(),
        bs.len() as f64 * 8.0 / n as f64
    );
}
