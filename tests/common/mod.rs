//! Shared helpers of the integration tests: fixture paths, small models built in memory, ORT runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use nnzip::onnx::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use nnzip::onnx::Model;
use nnzip::runtime::{Runtime, Session, SessionOptions};
use nnzip::tensor::Tensor;

/// The repository (tests of the CLI package run from crates/nnzip-cli).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("fixtures").is_dir())
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

/// The `nnzip` binary. Cargo names it only when it builds the command's own tests, so the
/// root package's tests, which include this file too, never call the helpers below.
pub fn nnzip_bin() -> &'static str {
    match option_env!("CARGO_BIN_EXE_nnzip") {
        Some(p) => p,
        None => panic!("only the nnzip-cli package's tests run the binary"),
    }
}

/// Runs `nnzip` with `args` (stdin empty) and waits for it.
pub fn nnzip(args: &[&str]) -> std::process::Output {
    nnzip_env(args, &[] as &[(&str, &str)])
}

/// [`nnzip`] with extra environment variables.
pub fn nnzip_env<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(K, V)],
) -> std::process::Output {
    std::process::Command::new(nnzip_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run nnzip")
}

/// The trained fixture models (name, held-out data file).
pub const TRAINED: &[(&str, &str)] = &[
    ("cnn.onnx", "mnist_test.npz"),
    ("resnet.onnx", "mnist_test.npz"),
    ("mobilenet.onnx", "mnist_test.npz"),
    ("mlp.onnx", "mnist_test_flat.npz"),
    ("transformer.onnx", "mnist_test.npz"),
];

pub fn runtime() -> &'static Runtime {
    Runtime::get(None).expect("ONNX Runtime library (run scripts/setup-ort.sh)")
}

/// The first `n` samples of a calibration-format file, as a batch for input `input`.
pub fn held_out_batch(file: &str, n: usize) -> (Tensor, Vec<i64>) {
    let arrays = nnzip::npz::read_npz(&fixture(file)).unwrap();
    let x = arrays.iter().find(|(k, _)| k == "input").unwrap().1.clone();
    let labels = arrays
        .iter()
        .find(|(k, _)| k == "labels")
        .unwrap()
        .1
        .to_i64()
        .unwrap();
    let per: usize = x.dims[1..].iter().product();
    let mut dims = x.dims.clone();
    dims[0] = n;
    let v = x.to_f32().unwrap();
    (
        Tensor::from_f32(dims, &v[..n * per]).unwrap(),
        labels[..n].to_vec(),
    )
}

/// Runs a model file through ORT (CPU, no graph optimization, 1 thread: deterministic).
pub fn run_file(path: &Path, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let model = Model::load(path).unwrap();
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let mut s = Session::from_file(runtime(), path, &model, &opts).unwrap();
    s.run(inputs).unwrap()
}

pub fn run_model(model: &Model, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let mut s = Session::from_model(runtime(), model, &opts).unwrap();
    s.run(inputs).unwrap()
}

/// A float32 graph input/output with fixed dims.
pub fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for &d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(d));
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = 1;
    tt.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let t = Tensor::from_f32(dims.iter().map(|&d| d as usize).collect(), values).unwrap();
    nnzip::onnx::tensor_proto(name, &t)
}

/// `y = x @ W + b` with x [1,4], W [4,3], b [3], weights as initializers.
pub fn tiny_linear() -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "tiny".into();
    g.input.push(value_info("x", &[1, 4]));
    g.output.push(value_info("y", &[1, 3]));
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    g.initializer.push(f32_tensor("W", &[4, 3], &w));
    g.initializer.push(f32_tensor("b", &[3], &[0.5, -0.5, 1.0]));
    let mut mm = NodeProto::new();
    mm.op_type = "MatMul".into();
    mm.input = vec!["x".into(), "W".into()];
    mm.output = vec!["xw".into()];
    let mut add = NodeProto::new();
    add.op_type = "Add".into();
    add.input = vec!["xw".into(), "b".into()];
    add.output = vec!["y".into()];
    g.node = vec![mm, add];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    m
}

pub fn write_proto(path: &Path, m: &ModelProto) {
    use nnzip::onnx::proto::Message;
    std::fs::write(path, m.write_to_bytes().unwrap()).unwrap();
}

pub fn assert_bit_identical(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dims, tb.dims, "{na}");
        assert_eq!(ta.bytes(), tb.bytes(), "output {na} differs");
    }
}

/// An [`Editor`](nnzip::graph::editor::Editor) over a copy of `model`, written back into it when
/// dropped: `pass.run(&mut ed(&mut m), &ctx)` edits `m`.
pub fn ed(model: &mut Model) -> Ed<'_> {
    let e = nnzip::graph::editor::Editor::new(model.clone(), Default::default());
    Ed { model, ed: Some(e) }
}

pub struct Ed<'a> {
    model: &'a mut Model,
    ed: Option<nnzip::graph::editor::Editor>,
}

impl std::ops::Deref for Ed<'_> {
    type Target = nnzip::graph::editor::Editor;
    fn deref(&self) -> &Self::Target {
        self.ed.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Ed<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.ed.as_mut().unwrap()
    }
}

impl Drop for Ed<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.ed.take() {
            *self.model = e.into_model();
        }
    }
}

/// The channel groups of a model at its declared sizes.
pub fn groups_of(model: &Model) -> Vec<nnzip::graph::groups::ChannelGroup> {
    let e = nnzip::graph::editor::Editor::new(model.clone(), Default::default());
    nnzip::graph::groups::channel_groups(&e)
}

/// Seeded inputs the model runs on (sizes planned as nnzip plans them, checked on ORT).
pub fn planned_inputs(model: &Model, seed: u64) -> Vec<(String, Tensor)> {
    let mut ok = |p: &nnzip::runtime::inputs::InputPlan| {
        let x = p.random(0).unwrap();
        Session::from_model(runtime(), model, &SessionOptions::default())
            .and_then(|mut s| s.run(&x))
            .is_ok()
    };
    nnzip::runtime::inputs::plan(model, &[], &mut ok)
        .unwrap()
        .random(seed)
        .unwrap()
}
