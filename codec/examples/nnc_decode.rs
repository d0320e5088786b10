//! Decodes an NNC bitstream into an `.npz` (float32 / int32):
//! `cargo run -p nnc-codec --release --example nnc_decode -- IN.nnc OUT.npz`
// Developer tools: a bad argument or file ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nnc_codec::{decode, Limits};

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        eprintln!("usage: nnc_decode IN.nnc OUT.npz");
        std::process::exit(2);
    }
    let data = std::fs::read(&args[0]).expect("read");
    let t0 = std::time::Instant::now();
    let tensors = decode(&data, &Limits::default()).expect("decode");
    let dt = t0.elapsed().as_secs_f64();
    common::write_npz(std::path::Path::new(&args[1]), &tensors);
    let n: usize = tensors.iter().map(|t| t.data.len()).sum();
    println!("{} tensors, {n} values in {dt:.3} s", tensors.len());
}
