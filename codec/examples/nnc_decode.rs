//! Decodes an NNC bitstream into an `.npz` (float32 / int32):
//! `cargo run -p nnc-codec --release --example nnc_decode -- IN.nnc OUT.npz`

use nnc_codec::{decode, Limits, TensorData};
use npyz::WriterBuilder;

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
    let mut npz = npyz::npz::NpzWriter::create(&args[1]).expect("create");
    for t in &tensors {
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let opts = Default::default();
        match &t.data {
            TensorData::F32(v) => {
                let mut w = npz
                    .array::<f32>(&t.name, opts)
                    .expect("array")
                    .default_dtype()
                    .shape(&shape)
                    .begin_nd()
                    .expect("begin");
                w.extend(v.iter().copied()).expect("write");
                w.finish().expect("finish");
            }
            TensorData::I32(v) => {
                let mut w = npz
                    .array::<i32>(&t.name, opts)
                    .expect("array")
                    .default_dtype()
                    .shape(&shape)
                    .begin_nd()
                    .expect("begin");
                w.extend(v.iter().copied()).expect("write");
                w.finish().expect("finish");
            }
        }
    }
    let n: usize = tensors.iter().map(|t| t.data.len()).sum();
    println!("{} tensors, {n} values in {dt:.3} s", tensors.len());
}
