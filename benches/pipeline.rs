//! The pipeline's stages on the bundled fixtures: loading, symbolic shape inference, channel
//! analysis, the ORT-free simplify passes, and the container's encode and decode.
//! `cargo bench --bench pipeline` (the codec's own benches are in codec/benches).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nnzip::container::{compress, decompress, ContainerOptions};
use nnzip::graph::editor::Editor;
use nnzip::onnx::Model;
use nnzip::passes::simplify::{cleanup::Cleanup, fold_bn::FoldBatchNorm};
use nnzip::passes::{Pass, PassContext};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

const MODELS: &[&str] = &[
    "cnn.onnx",
    "resnet.onnx",
    "mobilenet.onnx",
    "transformer.onnx",
];

fn stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(20);
    for name in MODELS {
        let path = fixture(name);
        let model = Model::load(&path).unwrap();
        g.bench_with_input(BenchmarkId::new("load", name), &path, |b, p| {
            b.iter(|| Model::load(p).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("shape_inference", name), &model, |b, m| {
            b.iter(|| nnzip::graph::infer::infer(m, &Default::default()))
        });
        g.bench_with_input(
            BenchmarkId::new("channel_analysis", name),
            &model,
            |b, m| {
                let ed = Editor::new(m.clone(), Default::default());
                b.iter(|| nnzip::graph::groups::channel_groups(&ed))
            },
        );
        g.bench_with_input(BenchmarkId::new("cleanup_fold_bn", name), &model, |b, m| {
            b.iter(|| {
                let mut ed = Editor::new(m.clone(), Default::default());
                let ctx = PassContext::default();
                Cleanup.run(&mut ed, &ctx).unwrap();
                FoldBatchNorm.run(&mut ed, &ctx).unwrap();
                ed.into_model()
            })
        });
        let opts = ContainerOptions::default();
        g.bench_with_input(
            BenchmarkId::new("container_encode", name),
            &model,
            |b, m| b.iter(|| compress(m, &opts).unwrap()),
        );
        let (bytes, _) = compress(&model, &opts).unwrap();
        g.bench_with_input(
            BenchmarkId::new("container_decode", name),
            &bytes,
            |b, s| b.iter(|| decompress(s, None, &Default::default()).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
