//! Reconstruction after pruning: exact recovery of known weights on a constructed layer, the
//! output error on a trained fixture with and without re-fitting, statistics correction of
//! channel means, and `nnzip calib` turning a folder of PNGs into the expected arrays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nnzip::calib::Calibration;
use nnzip::graph::editor::Editor;
use nnzip::graph::groups::channel_groups;
use nnzip::onnx::proto::{GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto};
use nnzip::onnx::Model;
use nnzip::passes::prune::recover::{reconstruct, RecoverOptions};
use nnzip::passes::prune::stats::{correct_statistics, ChannelMoments};
use nnzip::passes::prune::structured::zero_channels;
use nnzip::passes::prune::*;
use nnzip::passes::PassContext;
use nnzip::tensor::Tensor;

/// `h = x·A` (A [6, 6]) then `y = h·B + c` (B [6, 3]), where column 5 of A is the sum of
/// columns 0 and 1: h5 = h0 + h1 exactly, so once h5 is pruned, B's rows 0 and 1 absorb row 5.
fn redundant_mlp() -> (Model, Vec<f32>) {
    let mut a: Vec<f32> = (0..36).map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.5).collect();
    for r in 0..6 {
        a[r * 6 + 5] = a[r * 6] + a[r * 6 + 1];
    }
    let b: Vec<f32> = (0..18).map(|i| ((i * 5) % 7) as f32 * 0.2 - 0.6).collect();
    let mut g = GraphProto::new();
    g.name = "redundant".into();
    g.input.push(batched("x", 6));
    g.output.push(batched("y", 3));
    g.initializer.push(f32_tensor("A", &[6, 6], &a));
    g.initializer.push(f32_tensor("B", &[6, 3], &b));
    g.initializer.push(f32_tensor("c", &[3], &[0.1, -0.2, 0.3]));
    let node = |op: &str, ins: &[&str], out: &str| {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = out.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        n
    };
    g.node = vec![
        node("MatMul", &["x", "A"], "h"),
        node("MatMul", &["h", "B"], "hb"),
        node("Add", &["hb", "c"], "y"),
    ];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    (Model::from_bytes(&m.write_to_bytes().unwrap()).unwrap(), b)
}

/// A float input or output `[batch, features]` with a symbolic batch.
fn batched(name: &str, features: i64) -> nnzip::onnx::proto::ValueInfoProto {
    use nnzip::onnx::proto::{tensor_shape_proto, type_proto};
    let mut v = value_info(name, &[1, features]);
    if let Some(type_proto::Value::TensorType(t)) = v.type_.as_mut().unwrap().value.as_mut() {
        t.shape.as_mut().unwrap().dim[0].value = Some(
            tensor_shape_proto::dimension::Value::DimParam("batch".into()),
        );
    }
    v
}

fn calib_of(model: &Model, name: &str, x: Tensor) -> Calibration {
    Calibration::from_arrays(
        std::path::Path::new("mem.npz"),
        vec![(name.into(), x)],
        model,
    )
    .unwrap()
}

#[test]
fn reconstruction_recovers_known_weights_exactly() {
    let (orig, b) = redundant_mlp();
    // 64 samples of 6 features, seeded, full rank.
    let xs: Vec<f32> = (0..64 * 6)
        .map(|i| (((i * 2654435761usize) >> 7) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Tensor::from_f32(vec![64, 6], &xs).unwrap();
    let calib = calib_of(&orig, "x", x.clone());
    let mut ed = Editor::new(orig.clone(), Default::default());
    let groups = channel_groups(&ed);
    let g = groups
        .iter()
        .find(|g| g.channels == 6 && g.prunable())
        .expect("the hidden layer's group");
    zero_channels(&mut ed, g, &[5]).unwrap();
    let opts = RecoverOptions {
        damp: 1e-12,
        ..Default::default()
    };
    let r = reconstruct(&mut ed, &orig, runtime(), &calib, &opts).unwrap();
    let fitted = ed.constant("B").unwrap().unwrap().to_f32().unwrap();
    let mut expect = b.clone();
    for j in 0..3 {
        expect[j] += b[15 + j];
        expect[3 + j] += b[15 + j];
        expect[15 + j] = 0.0;
    }
    for (i, (got, want)) in fitted.iter().zip(&expect).enumerate() {
        assert!((got - want).abs() < 1e-4, "B[{i}] = {got}, expected {want}");
    }
    let bias = ed.constant("c").unwrap().unwrap().to_f32().unwrap();
    for (got, want) in bias.iter().zip([0.1, -0.2, 0.3]) {
        assert!((got - want).abs() < 1e-4);
    }
    let fit = r.layers.iter().find(|l| l.layer == "hb").unwrap();
    assert!(
        fit.error_before > 1e-2,
        "pruning h5 alone costs {}",
        fit.error_before
    );
    assert!(fit.error_after < 1e-9, "left {}", fit.error_after);
    let m = ed.into_model();
    let feed = vec![("x".to_string(), x)];
    let (a, p) = (run_model(&orig, &feed), run_model(&m, &feed));
    let (d, _) = nnzip::calib::max_abs_diff(&a, &p);
    assert!(d < 1e-4, "outputs differ by {d}");
}

fn logits_mse(a: &Model, b: &Model, c: &Calibration) -> f64 {
    let out = |m: &Model| {
        nnzip::calib::into_metric_output(nnzip::calib::run_model(runtime(), m, c).unwrap())
            .unwrap()
            .to_f32()
            .unwrap()
    };
    let (x, y) = (out(a), out(b));
    x.iter()
        .zip(&y)
        .map(|(p, q)| f64::from(p - q).powi(2))
        .sum::<f64>()
        / x.len() as f64
}

/// On the trained mobilenet fixture (depthwise-separable, ReLU6), half of every group's
/// channels: re-fitting on 256 calibration images cuts the held-out logit error by a measured
/// factor of 6.5 and brings accuracy back from chance.
#[test]
fn reconstruction_cuts_the_error_of_structured_pruning_on_a_fixture() {
    let orig = Model::load(fixture("mobilenet.onnx")).unwrap();
    let all = Calibration::load(&fixture("mnist_test.npz"), &orig).unwrap();
    let (calib, held) = (all.part(0, 256).unwrap(), all.part(256, 768).unwrap());
    let ctx = PassContext {
        calib: Some(&calib),
        runtime: Some(runtime()),
        inputs: None,
    };
    let mut cfg = PruneConfig::new(Method::Structured);
    let mut plain = orig.clone();
    cfg.pass(0.5)
        .run(&mut common::ed(&mut plain), &ctx)
        .unwrap();
    cfg.recover = Some(RecoverOptions::default());
    let mut fitted = orig.clone();
    let rep = cfg
        .pass(0.5)
        .run(&mut common::ed(&mut fitted), &ctx)
        .unwrap();
    let nnzip::passes::PassDetails::Prune(o) = &rep.details else {
        panic!()
    };
    let r = o.recover.as_ref().unwrap();
    assert!(r.layers.len() >= 5, "{} layers re-fitted", r.layers.len());
    assert!(r.layers.iter().all(|l| l.error_after <= l.error_before));
    let (e_plain, e_fit) = (
        logits_mse(&orig, &plain, &held),
        logits_mse(&orig, &fitted, &held),
    );
    eprintln!("held-out logit MSE: pruned {e_plain:.4}, pruned + re-fitted {e_fit:.4}");
    assert!(
        e_fit * 4.0 < e_plain,
        "re-fitting: {e_fit} vs pruned alone {e_plain}"
    );
    let acc = |m: &Model| {
        let out =
            nnzip::calib::into_metric_output(nnzip::calib::run_model(runtime(), m, &held).unwrap())
                .unwrap();
        nnzip::calib::evaluate(nnzip::calib::Metric::Accuracy, &held, &out, &out).unwrap()
    };
    let (a0, a1, a2) = (acc(&orig), acc(&plain), acc(&fitted));
    eprintln!("held-out accuracy: original {a0:.1}, pruned {a1:.1}, re-fitted {a2:.1}");
    // Measured: 97.9 -> 11.1 without and 91.8 with re-fitting (MSE 28.1 vs 4.35).
    assert!(a2 > a1 + 50.0 && a0 - a2 < 10.0, "{a0} {a1} {a2}");
}

/// Statistics correction brings every output channel of the corrected layers back to the
/// original's mean on the calibration data (and leaves a pruned model's outputs closer).
#[test]
fn statistics_correction_restores_channel_means() {
    let orig = Model::load(fixture("cnn.onnx")).unwrap();
    let calib = Calibration::load(&fixture("mnist_test.npz"), &orig)
        .unwrap()
        .take(200)
        .unwrap();
    let mut ed = Editor::new(orig.clone(), Default::default());
    StructuredPrune {
        fraction: 0.5,
        global: false,
        norm: Norm::L1,
        round_to: 1,
        filter: Filter::default(),
    }
    .prune(&mut ed)
    .unwrap();
    // The layers after the pruned ones: conv2, conv3 and the dense layers.
    let a = ed.analysis();
    let layers: Vec<_> = a
        .order()
        .iter()
        .copied()
        .filter(|&id| {
            let n = ed.node(id).unwrap();
            matches!(n.op_type.as_str(), "Conv" | "Gemm") && !n.input[1].starts_with("conv1")
        })
        .collect();
    let outs: Vec<String> = layers
        .iter()
        .map(|&id| ed.node(id).unwrap().output[0].clone())
        .collect();
    let means = |m: &Model| -> Vec<ChannelMoments> {
        let mut ms = vec![ChannelMoments::default(); outs.len()];
        let src = nnzip::calib::capture::Source::Calibration {
            data: &calib,
            limit: None,
        };
        nnzip::calib::capture::capture(runtime(), m, &outs, src, &mut |b| {
            for (m, t) in ms.iter_mut().zip(b.tensors) {
                let t = t.unwrap();
                m.add(&t, 1).unwrap();
            }
            Ok(())
        })
        .unwrap();
        ms
    };
    let gap = |x: &[ChannelMoments], y: &[ChannelMoments]| -> f64 {
        x.iter()
            .zip(y)
            .flat_map(|(p, q)| {
                (0..p.sum.len()).map(move |c| (p.mean(c) - q.mean(c)).abs() / p.std(c).max(1e-6))
            })
            .fold(0.0, f64::max)
    };
    let m0 = means(&orig);
    let before = gap(&m0, &means(ed.model()));
    // One layer at a time, in graph order: each is measured with its predecessors corrected.
    for &id in &layers {
        let fixes = correct_statistics(&mut ed, &orig, runtime(), &calib, &[id], true).unwrap();
        assert_eq!(fixes.len(), 1);
    }
    let after = gap(&m0, &means(ed.model()));
    eprintln!("largest channel mean shift (in original stds): {before:.3} -> {after:.2e}");
    assert!(before > 0.1, "pruning moved the means by {before}");
    assert!(after < 1e-3, "{after} vs {before}");
}

/// Measured allocation with `--round-to 16` on the mobilenet fixture: the allocator chooses among
/// counts that keep multiples of 16, so every group keeps a multiple of 16 (or all it had) and
/// the plan still meets its MAC budget. Rounding after the choice, as before, kept more channels
/// than the allocator had counted: 0.58 of the MACs left for a budget of 0.5.
#[test]
fn measured_allocation_with_rounding_meets_the_mac_budget() {
    let orig = Model::load(fixture("mobilenet.onnx")).unwrap();
    let calib = Calibration::load(&fixture("mnist_test.npz"), &orig)
        .unwrap()
        .take(32)
        .unwrap();
    let ctx = PassContext {
        calib: Some(&calib),
        runtime: Some(runtime()),
        inputs: None,
    };
    let mut cfg = PruneConfig::new(Method::Structured);
    cfg.by_macs = true;
    cfg.round_to = 16;
    cfg.allocation = Some(nnzip::passes::prune::alloc::Allocation::Measured);
    let mut m = orig.clone();
    let r = cfg.pass(0.5).run(&mut common::ed(&mut m), &ctx).unwrap();
    let nnzip::passes::PassDetails::Prune(o) = &r.details else {
        panic!()
    };
    let plan = o.plan.as_ref().unwrap();
    let left = plan.macs_planned / plan.macs_before;
    eprintln!("MACs left {left:.4}");
    assert!(left <= 0.5 + 1e-9, "planned {left} of the MACs, budget 0.5");
    assert!(left > 0.4, "overshot the budget: {left}");
    assert!(o.groups.iter().any(|g| !g.removed.is_empty()));
    for g in &o.groups {
        let kept = g.channels - g.removed.len();
        assert!(
            g.removed.is_empty() || kept % 16 == 0,
            "{}: keeps {kept} of {}",
            g.name,
            g.channels
        );
    }
}

/// The real models of fixtures/gen/real-data.sh (not in CI: `cargo test --release --test recover
/// -- --ignored --nocapture`), structured pruning with measured allocation on the 64 calibration
/// samples, held-out accuracy on the 400 others. PP-LCNet meets issue 13's target, at half the
/// MACs and, with channel counts in multiples of 8 (the rounding that lets latency follow MACs),
/// at 0.6 of them. The PP-OCR classifier does not (docs/benchmarks.md §6): at 0.9 of its MACs,
/// rounded, it is checked to be re-fitted better than pruned alone, and its numbers are printed.
#[test]
#[ignore]
fn real_models_keep_held_out_accuracy_after_structured_pruning() {
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap());
    let (models, data) = (
        home.join(".cache/nnzip-real-models"),
        home.join(".cache/nnzip-real-data"),
    );
    // name, MAC fraction kept, round-to, whether the 1-point target must hold
    for (name, keep, round_to, target) in [
        ("orientation_lcnet", 0.5, 1, true),
        ("orientation_lcnet", 0.6, 8, true),
        ("ppocr_cls", 0.9, 8, false),
    ] {
        let path = models.join(format!("{name}.onnx"));
        if !path.exists() {
            eprintln!("{name}: missing (run fixtures/gen/real-data.sh)");
            continue;
        }
        let orig = Model::load(&path).unwrap();
        let calib = Calibration::load(&data.join(format!("{name}.calib.npz")), &orig).unwrap();
        let held = Calibration::load(&data.join(format!("{name}.heldout.npz")), &orig).unwrap();
        let ctx = PassContext {
            calib: Some(&calib),
            runtime: Some(runtime()),
            inputs: None,
        };
        let prune = |recover: bool| -> (Model, f64) {
            let mut cfg = PruneConfig::new(Method::Structured);
            cfg.by_macs = true;
            cfg.round_to = round_to;
            cfg.allocation = Some(nnzip::passes::prune::alloc::Allocation::Measured);
            cfg.recover = recover.then(RecoverOptions::default);
            let mut m = orig.clone();
            let r = cfg
                .pass(1.0 - keep)
                .run(&mut common::ed(&mut m), &ctx)
                .unwrap();
            let nnzip::passes::PassDetails::Prune(o) = &r.details else {
                panic!()
            };
            let plan = o.plan.as_ref().unwrap();
            (m, 1.0 - plan.macs_planned / plan.macs_before)
        };
        let acc = |m: &Model| {
            let out = nnzip::calib::into_metric_output(
                nnzip::calib::run_model(runtime(), m, &held).unwrap(),
            )
            .unwrap();
            nnzip::calib::evaluate(nnzip::calib::Metric::Accuracy, &held, &out, &out).unwrap()
        };
        let (fitted, removed) = prune(true);
        let (plain, _) = prune(false);
        let (a0, a1, a2) = (acc(&orig), acc(&fitted), acc(&plain));
        eprintln!(
            "{name} at {keep} of the MACs, round-to {round_to}: {:.1}% removed, held-out \
             accuracy {a0:.2} -> {a1:.2} re-fitted ({a2:.2} pruned alone)",
            100.0 * removed
        );
        assert!(a1 > a2, "{name}: re-fitted {a1} vs pruned alone {a2}");
        if target {
            assert!(removed >= 0.35, "{name}: {removed}");
            assert!(a0 - a1 <= 1.0, "{name}: {a0} -> {a1}");
        }
    }
}

/// Unstructured 50% and 70% on the trained mobilenet fixture: SparseGPT's column pass with OBS
/// updates (on 256 calibration images) against magnitude pruning, on 512 held-out images.
#[test]
fn obs_pruning_beats_magnitude_on_a_fixture() {
    let orig = Model::load(fixture("mobilenet.onnx")).unwrap();
    let all = Calibration::load(&fixture("mnist_test.npz"), &orig).unwrap();
    let (calib, held) = (all.part(0, 256).unwrap(), all.part(256, 768).unwrap());
    let ctx = PassContext {
        calib: Some(&calib),
        runtime: Some(runtime()),
        inputs: None,
    };
    let acc = |m: &Model| {
        let out =
            nnzip::calib::into_metric_output(nnzip::calib::run_model(runtime(), m, &held).unwrap())
                .unwrap();
        nnzip::calib::evaluate(nnzip::calib::Metric::Accuracy, &held, &out, &out).unwrap()
    };
    for sparsity in [0.5, 0.7] {
        let mut cfg = PruneConfig::new(Method::Magnitude);
        let mut plain = orig.clone();
        cfg.pass(sparsity)
            .run(&mut common::ed(&mut plain), &ctx)
            .unwrap();
        cfg.recover = Some(RecoverOptions::default());
        let mut obs = orig.clone();
        let rep = cfg
            .pass(sparsity)
            .run(&mut common::ed(&mut obs), &ctx)
            .unwrap();
        let nnzip::passes::PassDetails::Prune(o) = &rep.details else {
            panic!()
        };
        assert_eq!(o.method, "sparsegpt");
        let r = o.recover.as_ref().unwrap();
        for l in &r.layers {
            eprintln!(
                "DBG {} {} f{} rows{} {:.4} {:.4}",
                l.layer, l.op, l.features, l.rows, l.error_before, l.error_after
            );
        }
        for l in &o.layers {
            eprintln!("DBG2 {} {} {:.3}", l.name, l.params, l.sparsity_after);
        }
        assert!(r.layers.len() >= 5, "{} layers", r.layers.len());
        assert!(r.layers.iter().all(|l| l.error_after.is_finite()));
        // Every prunable tensor at the requested sparsity, OBS or (depthwise) magnitude.
        for l in &o.layers {
            let want = (sparsity * l.params as f64).round() / l.params as f64;
            assert!(
                (l.sparsity_after - want).abs() < 1e-9,
                "{}: {} (wanted {want})",
                l.name,
                l.sparsity_after
            );
        }
        let (e_plain, e_obs) = (
            logits_mse(&orig, &plain, &held),
            logits_mse(&orig, &obs, &held),
        );
        let (a0, a1, a2) = (acc(&orig), acc(&plain), acc(&obs));
        eprintln!(
            "{sparsity}: held-out logit MSE magnitude {e_plain:.4}, OBS {e_obs:.4}; \
             accuracy original {a0:.1}, magnitude {a1:.1}, OBS {a2:.1}"
        );
        // Measured: at 50% MSE 22.9 -> 3.09 and accuracy 25.4 -> 94.3 (original 97.9); at 70%
        // MSE 29.3 -> 10.2 and accuracy 20.1 -> 74.2.
        let (factor, gain) = if sparsity == 0.5 {
            (5.0, 60.0)
        } else {
            (2.0, 40.0)
        };
        assert!(
            e_obs * factor < e_plain,
            "{sparsity}: OBS {e_obs} vs {e_plain}"
        );
        assert!(
            a2 > a1 + gain,
            "{sparsity}: accuracy OBS {a2} vs magnitude {a1}"
        );
    }
}
