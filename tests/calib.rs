//! Calibration data: loading in both layouts, metrics, rectifier states.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nnzip::calib::{evaluate, run_model, states::rectifier_states, Calibration, Metric};
use nnzip::onnx::Model;

fn accuracy_from_fixtures_json(name: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("fixtures.json")).unwrap()).unwrap();
    let key = name.trim_end_matches(".onnx");
    let m = &v["models"][key];
    m["accuracy_ort_heldout"]
        .as_f64()
        .or_else(|| m["accuracy"].as_f64())
        .expect("accuracy in fixtures.json")
}

#[test]
fn held_out_accuracy_matches_the_generator() {
    for (name, data) in TRAINED {
        let model = Model::load(fixture(name)).unwrap();
        let calib = Calibration::load(&fixture(data), &model).unwrap();
        assert_eq!(calib.samples, 1000);
        assert!(calib.batchable);
        let out = run_model(runtime(), &model, &calib).unwrap();
        let logits = &out[0].1;
        assert_eq!(logits.dims, vec![1000, 10]);
        assert_eq!(Metric::for_data(&calib, logits), Metric::Accuracy);
        let acc = evaluate(Metric::Accuracy, &calib, logits, logits).unwrap();
        let expected = 100.0 * accuracy_from_fixtures_json(name);
        assert!(
            (acc - expected).abs() < 0.051,
            "{name}: {acc} vs {expected}"
        );
        // Against itself, agreement and cosine are perfect.
        assert_eq!(
            evaluate(Metric::Agreement, &calib, logits, logits).unwrap(),
            100.0
        );
        assert!((evaluate(Metric::Cosine, &calib, logits, logits).unwrap() - 100.0).abs() < 1e-9);
    }
}

#[test]
fn both_layouts_are_accepted_and_fixed_batches_run_one_by_one() {
    let model = Model::load(fixture("cnn.onnx")).unwrap();
    let (x, labels) = held_out_batch("mnist_test.npz", 10);
    // [N, 1, 1, 28, 28]: each sample with the input's full shape.
    let mut d = vec![10, 1];
    d.extend_from_slice(&x.dims[1..]);
    let x5 = nnzip::tensor::Tensor::from_bytes(x.dtype, d, x.bytes().to_vec()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.npz");
    let l = nnzip::tensor::Tensor::from_i64(vec![10], &labels).unwrap();
    nnzip::npz::write_npz(&p, &[("input".into(), x5), ("labels".into(), l)]).unwrap();
    let calib = Calibration::load(&p, &model).unwrap();
    assert_eq!(calib.samples, 10);
    let a = run_model(runtime(), &model, &calib).unwrap();
    assert_eq!(a[0].1.dims, vec![10, 10]);
    // A wrong shape is refused with the input named.
    let bad =
        nnzip::tensor::Tensor::from_f32(vec![10, 3, 28, 28], &vec![0.0; 10 * 3 * 784]).unwrap();
    nnzip::npz::write_npz(&p, &[("input".into(), bad)]).unwrap();
    let e = Calibration::load(&p, &model).unwrap_err().to_string();
    assert!(e.contains("'input'"), "{e}");
    // A model with a fixed batch of 1 gets its samples one at a time.
    let dir2 = tempfile::tempdir().unwrap();
    let mp = dir2.path().join("tiny.onnx");
    write_proto(&mp, &tiny_linear());
    let tiny = Model::load(&mp).unwrap();
    let xs =
        nnzip::tensor::Tensor::from_f32(vec![5, 4], &(0..20).map(|i| i as f32).collect::<Vec<_>>())
            .unwrap();
    nnzip::npz::write_npz(&p, &[("x".into(), xs.clone())]).unwrap();
    let calib = Calibration::load(&p, &tiny).unwrap();
    assert!(!calib.batchable);
    let out = run_model(runtime(), &tiny, &calib).unwrap();
    assert_eq!(out[0].1.dims, vec![5, 3]);
    let row2 = run_model(runtime(), &tiny, &calib.take(5).unwrap()).unwrap()[0]
        .1
        .to_f32()
        .unwrap();
    let direct = run_model_rows(&tiny, &xs, 2);
    assert_eq!(&row2[6..9], &direct[..]);
}

fn run_model_rows(model: &Model, xs: &nnzip::tensor::Tensor, row: usize) -> Vec<f32> {
    let v = xs.to_f32().unwrap();
    let x = nnzip::tensor::Tensor::from_f32(vec![1, 4], &v[row * 4..row * 4 + 4]).unwrap();
    run_model_io(model, vec![("x".into(), x)])[0]
        .1
        .to_f32()
        .unwrap()
}

fn run_model_io(
    model: &Model,
    inputs: Vec<(String, nnzip::tensor::Tensor)>,
) -> Vec<(String, nnzip::tensor::Tensor)> {
    common::run_model(model, &inputs)
}

#[test]
fn rectifier_states_count_every_observation() {
    let model = Model::load(fixture("cnn.onnx")).unwrap();
    let calib = Calibration::load(&fixture("mnist_test.npz"), &model)
        .unwrap()
        .take(50)
        .unwrap();
    let states = rectifier_states(
        runtime(),
        &nnzip::graph::editor::Editor::new(model.clone(), Default::default()),
        &calib,
    )
    .unwrap();
    assert_eq!(states.len(), 4, "cnn has four Relu");
    // conv1's Relu sees 28x28 positions per sample, 16 channels.
    let s0 = &states[0];
    assert_eq!(s0.channels(), 16);
    assert_eq!(s0.observations, 50 * 28 * 28);
    for c in 0..s0.channels() {
        assert_eq!(s0.off[c] + s0.linear[c] + s0.saturated[c], s0.observations);
        let h = s0.entropy(c);
        assert!((0.0..=1.0).contains(&h));
    }
    // The head's hidden layer: [N, 64], one observation per sample.
    let last = states.last().unwrap();
    assert_eq!(last.channels(), 64);
    assert_eq!(last.observations, 50);
}

/// A streaming model's layout (Silero VAD): audio `x: [batch, 4]`, a recurrent state with the
/// batch on axis 1 `s: [2, batch, 3]`, and a scalar `sr`. Each sample is a whole (x, s, sr).
fn streaming_model() -> Model {
    use nnzip::onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    let mut g = GraphProto::new();
    g.name = "streaming".into();
    g.input = vec![value_info("x", &[-1, 4]), value_info("s", &[2, -1, 3])];
    let mut sr = value_info("sr", &[]);
    if let Some(nnzip::onnx::proto::type_proto::Value::TensorType(t)) =
        sr.type_.as_mut().unwrap().value.as_mut()
    {
        t.elem_type = 7; // INT64
    }
    g.input.push(sr);
    // Batch dims named alike: one symbol for the batch in both tensors.
    for vi in g.input.iter_mut().take(2) {
        let Some(nnzip::onnx::proto::type_proto::Value::TensorType(t)) =
            vi.type_.as_mut().unwrap().value.as_mut()
        else {
            unreachable!()
        };
        for d in t.shape.as_mut().unwrap().dim.iter_mut() {
            if matches!(
                d.value,
                Some(nnzip::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(-1))
            ) {
                d.value = Some(
                    nnzip::onnx::proto::tensor_shape_proto::dimension::Value::DimParam(
                        "batch".into(),
                    ),
                );
            }
        }
    }
    for (i, o) in [("x", "y"), ("s", "t"), ("sr", "r")] {
        let mut n = NodeProto::new();
        n.op_type = "Identity".into();
        n.input = vec![i.into()];
        n.output = vec![o.into()];
        g.node.push(n);
    }
    g.output = vec![
        value_info("y", &[-1, 4]),
        value_info("t", &[2, -1, 3]),
        value_info("r", &[]),
    ];
    if let Some(nnzip::onnx::proto::type_proto::Value::TensorType(t)) =
        g.output[2].type_.as_mut().unwrap().value.as_mut()
    {
        t.elem_type = 7; // INT64
    }
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    Model::from_proto_in(m, None, std::path::Path::new("")).unwrap()
}

#[test]
fn states_with_the_batch_on_another_axis_and_scalar_inputs_load_as_samples() {
    use nnzip::tensor::Tensor;
    let model = streaming_model();
    let n = 5;
    let x: Vec<f32> = (0..n * 4).map(|i| i as f32).collect();
    let s: Vec<f32> = (0..n * 6).map(|i| 100.0 + i as f32).collect();
    let sr: Vec<i64> = (0..n as i64).map(|i| 16000 + i).collect();
    let arrays = vec![
        ("x".to_string(), Tensor::from_f32(vec![n, 4], &x).unwrap()),
        (
            "s".to_string(),
            Tensor::from_f32(vec![n, 2, 1, 3], &s).unwrap(),
        ),
        ("sr".to_string(), Tensor::from_i64(vec![n], &sr).unwrap()),
    ];
    let c =
        Calibration::from_arrays(std::path::Path::new("streaming.npz"), arrays, &model).unwrap();
    assert_eq!(c.samples, n);
    assert!(!c.batchable, "a scalar input has no batch axis");
    // Sample 3 is fed as the model's own shapes.
    let one = c.slice(3, 4).unwrap();
    assert_eq!(one[0].1.dims, vec![1, 4]);
    assert_eq!(one[1].1.dims, vec![2, 1, 3]);
    assert_eq!(one[1].1.to_f32().unwrap(), s[18..24].to_vec());
    assert_eq!(one[2].1.dims, Vec::<usize>::new());
    assert_eq!(one[2].1.to_i64().unwrap(), vec![16003]);
    // ONNX Runtime runs every sample; the identities give the samples back in order.
    let out = run_model(runtime(), &model, &c).unwrap();
    assert_eq!(out[0].1.to_f32().unwrap(), x);
    assert_eq!(out[1].1.to_f32().unwrap(), s);
    // The same state given along its batch axis ([2, N, 3]) is the same samples.
    let mut s_axis1 = vec![0.0f32; n * 6];
    for i in 0..n {
        for a in 0..2 {
            for k in 0..3 {
                s_axis1[(a * n + i) * 3 + k] = s[(i * 2 + a) * 3 + k];
            }
        }
    }
    let arrays = vec![
        ("x".to_string(), Tensor::from_f32(vec![n, 4], &x).unwrap()),
        (
            "s".to_string(),
            Tensor::from_f32(vec![2, n, 3], &s_axis1).unwrap(),
        ),
        ("sr".to_string(), Tensor::from_i64(vec![n], &sr).unwrap()),
    ];
    let c2 =
        Calibration::from_arrays(std::path::Path::new("streaming.npz"), arrays, &model).unwrap();
    assert_eq!(c2.slice(3, 4).unwrap(), one);
}

#[test]
fn calibration_arrays_of_the_wrong_type_or_length_name_the_file_and_the_array() {
    use nnzip::tensor::{DType, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(fixture("cnn.onnx")).unwrap();
    let p = dir.path().join("doubles.npz");
    let x = Tensor::from_bytes(DType::F64, vec![2, 1, 28, 28], vec![0u8; 2 * 784 * 8]).unwrap();
    nnzip::npz::write_npz(&p, &[("input".into(), x)]).unwrap();
    let e = Calibration::load(&p, &model).unwrap_err().to_string();
    assert!(
        e.contains("doubles.npz")
            && e.contains("'input'")
            && e.contains("float64")
            && e.contains("float32"),
        "{e}"
    );
    // Two inputs disagreeing on the sample count: both arrays named.
    let model = streaming_model();
    let p = dir.path().join("lengths.npz");
    let arrays = [
        (
            "x".to_string(),
            Tensor::from_f32(vec![3, 4], &[0.0; 12]).unwrap(),
        ),
        (
            "s".to_string(),
            Tensor::from_f32(vec![2, 2, 1, 3], &[0.0; 12]).unwrap(),
        ),
        (
            "sr".to_string(),
            Tensor::from_i64(vec![3], &[16000; 3]).unwrap(),
        ),
    ];
    nnzip::npz::write_npz(&p, &arrays).unwrap();
    let e = Calibration::load(&p, &model).unwrap_err().to_string();
    assert!(
        e.contains("lengths.npz")
            && e.contains("'x'")
            && e.contains("'s'")
            && e.contains('3')
            && e.contains('2'),
        "{e}"
    );
}
