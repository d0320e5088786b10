//! Throughput of encoding and decoding (elements per second).
//! `cargo bench -p nnc-codec --bench codec`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nnc_codec::{decode, encode, EncoderConfig, Limits, Tensor, TensorData};
use rand::{Rng, SeedableRng};

/// A Laplacian weight matrix (scale typical of trained convolution weights).
fn laplacian(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = (0..rows * cols)
        .map(|_| {
            let a: f32 = rng.gen_range(1e-7f32..1.0);
            let b: f32 = rng.gen_range(1e-7f32..1.0);
            0.01 * (a.ln() - b.ln())
        })
        .collect();
    Tensor {
        name: "w".into(),
        shape: vec![rows, cols],
        data: TensorData::F32(data),
    }
}

#[path = "../tests/common/mod.rs"]
mod common;

fn conformance_input(name: &str) -> Vec<Tensor> {
    common::load_npz(&common::conformance_dir().join(format!("{name}.input.npz")))
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

fn bench(c: &mut Criterion) {
    let big = vec![laplacian(1024, 2048, 1)];
    let n = 1024 * 2048;
    let configs: Vec<(&str, EncoderConfig)> = vec![
        ("defaults", EncoderConfig::default()),
        (
            "sampled_param_opt",
            EncoderConfig {
                param_opt_bins: Some(2000),
                ..Default::default()
            },
        ),
        (
            "no_dq",
            EncoderConfig {
                use_dq: false,
                ..Default::default()
            },
        ),
        (
            "scan2_entry_points",
            EncoderConfig {
                scan_order: nnc_codec::ScanOrder::Blocks16,
                param_opt_bins: Some(2000),
                ..Default::default()
            },
        ),
    ];
    let mut g = c.benchmark_group("laplacian_2M");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    for (label, cfg) in &configs {
        g.bench_with_input(BenchmarkId::new("encode", label), cfg, |b, cfg| {
            b.iter(|| encode(&big, cfg).expect("encode"))
        });
        let bs = encode(&big, cfg).expect("encode");
        g.bench_with_input(BenchmarkId::new("decode", label), &bs, |b, bs| {
            b.iter(|| decode(bs, &Limits::default()).expect("decode"))
        });
    }
    g.finish();

    let wide = conformance_input("wide__q38_dq");
    let nw: usize = wide.iter().map(|t| t.data.len()).sum();
    let mut g = c.benchmark_group("conformance_wide");
    g.sample_size(10);
    g.throughput(Throughput::Elements(nw as u64));
    let cfg = EncoderConfig::default();
    g.bench_function("encode", |b| {
        b.iter(|| encode(&wide, &cfg).expect("encode"))
    });
    let bs = encode(&wide, &cfg).expect("encode");
    g.bench_function("decode", |b| {
        b.iter(|| decode(&bs, &Limits::default()).expect("decode"))
    });
    g.finish();
}

/// The arithmetic decoder alone: one million context coded bins over eight contexts of
/// different skew (the cost per bin that bounds level decoding).
fn engine(c: &mut Criterion) {
    use nnc_codec::unstable::{BinDecoder, BinEncoder, ContextModel};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let n = 1_000_000usize;
    let bins: Vec<u32> = (0..n)
        .map(|i| u32::from(rng.gen_bool(0.2 + 0.08 * (i % 8) as f64)))
        .collect();
    let mut ctx = [ContextModel::new(0); 8];
    let mut enc = BinEncoder::new(Vec::new());
    for (i, &b) in bins.iter().enumerate() {
        enc.encode_bin(b, &mut ctx[i % 8]);
    }
    let bytes = enc.finish();
    let mut g = c.benchmark_group("cabac_engine");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("decode_bins", |b| {
        b.iter(|| {
            let mut ctx = [ContextModel::new(0); 8];
            let mut d = BinDecoder::new(&bytes);
            let mut ones = 0u32;
            for i in 0..n {
                ones += d.decode_bin(&mut ctx[i % 8]);
            }
            ones
        })
    });
    g.bench_function("encode_bins", |b| {
        b.iter(|| {
            let mut ctx = [ContextModel::new(0); 8];
            let mut e = BinEncoder::new(Vec::with_capacity(bytes.len()));
            for (i, &bin) in bins.iter().enumerate() {
                e.encode_bin(bin, &mut ctx[i % 8]);
            }
            e.finish().len()
        })
    });
    g.finish();
}

/// Parameter optimisation over one million bins of 40 contexts: the scalar definition (nine
/// candidates updated per bin, as the reference does) against the recorded runs with the
/// vector kernel (where the CPU has AVX-512BW; otherwise the same scalar code).
fn param_opt(c: &mut Criterion) {
    use nnc_codec::unstable::{ContextOptimizer, ParamOptimizer};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let n = 1_000_000usize;
    let ops: Vec<(usize, u32)> = (0..n)
        .map(|_| {
            let ctx = (rng.gen::<f64>().powi(2) * 40.0) as usize;
            (ctx, u32::from(rng.gen_bool(0.1 + 0.02 * ctx as f64)))
        })
        .collect();
    let mut g = c.benchmark_group("param_opt");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("scalar_per_bin", |b| {
        b.iter(|| {
            let mut o = vec![ContextOptimizer::default(); 40];
            for &(ctx, bin) in &ops {
                o[ctx].code(bin);
            }
            o.iter().map(|x| u32::from(x.best())).sum::<u32>()
        })
    });
    g.bench_function("recorded_runs", |b| {
        b.iter(|| {
            let mut o = ParamOptimizer::new(40);
            for &(ctx, bin) in &ops {
                o.push(ctx, bin);
            }
            (0..40).map(|i| u32::from(o.best(i))).sum::<u32>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench, engine, param_opt);
criterion_main!(benches);
