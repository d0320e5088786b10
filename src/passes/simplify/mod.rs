//! The simplify stage: a pruned model becomes a physically smaller one with the same outputs.
//!
//! Passes, in order: [`cleanup::Cleanup`] (identities), [`fold_bn::FoldBatchNorm`],
//! [`collapse::CollapseZeroEntropy`] (only with calibration data), [`dead::RemoveDeadChannels`],
//! and [`cleanup::Cleanup`] again. [`simplify`] runs them on the model's declared (possibly
//! symbolic) sizes, so the result is exact at every size the input model accepts, and verifies
//! it on ONNX Runtime, at two input sizes where the model's sizes are symbolic.

pub mod cleanup;
pub mod collapse;
pub mod dead;
pub mod fold_bn;

use serde::{Deserialize, Serialize};

use super::{
    run_passes, weakest, Pass, PassContext, PassDetails, PassError, PassReport, Preserves,
};
use crate::calib::Calibration;
use crate::graph::editor::Editor;
use crate::graph::infer::InputDims;
use crate::onnx::Model;
use crate::runtime::inputs::InputPlan;
use crate::runtime::{OptLevel, Runtime, Session, SessionOptions};

/// The pass list for a configuration.
pub fn passes(with_calibration: bool) -> Vec<Box<dyn Pass>> {
    let mut v: Vec<Box<dyn Pass>> =
        vec![Box::new(cleanup::Cleanup), Box::new(fold_bn::FoldBatchNorm)];
    if with_calibration {
        v.push(Box::new(collapse::CollapseZeroEntropy));
    }
    v.push(Box::new(dead::RemoveDeadChannels));
    if with_calibration {
        // Once a layer's always-OFF channels are gone its other channels may all be always ON:
        // a second look drops that rectifier and merges the layer.
        v.push(Box::new(collapse::CollapseZeroEntropy));
        v.push(Box::new(dead::RemoveDeadChannels));
    }
    v.push(Box::new(cleanup::Cleanup));
    v
}

/// Size and cost of a model at one point of the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStats {
    pub parameters: u64,
    pub nodes: usize,
    pub onnx_bytes: u64,
    /// MACs per inference at the given sizes (batch 1), when they are numbers.
    pub macs: Option<u64>,
    /// MACs as an expression of the symbolic sizes left (`None` when unknown).
    pub macs_formula: Option<String>,
}

impl ModelStats {
    pub fn of(model: &Model, shapes: &[(String, Vec<usize>)]) -> Result<ModelStats, PassError> {
        let parameters = model
            .weights()
            .iter()
            .filter(|w| w.dtype != crate::tensor::DType::I64)
            .map(|w| w.numel() as u64)
            .sum();
        // The first look at a job's model: sizes that do not fit it are refused here.
        let dims = crate::inspect::mac_dims(model, shapes)?;
        let count = crate::inspect::count_macs(model, &dims);
        Ok(ModelStats {
            parameters,
            nodes: model.graph().node.len(),
            // The serialized size, without serializing (a copy of the whole model).
            onnx_bytes: crate::modelfile::inline_size(model),
            macs: count.unknown.is_empty().then(|| count.value()).flatten(),
            macs_formula: count.total.as_ref().map(ToString::to_string),
        })
    }
}

/// How the simplified model was checked against the input model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    /// "calibration" (the --calib samples) or "random" (seeded inputs).
    pub data: String,
    pub samples: usize,
    /// The input sizes checked (one entry per size for seeded inputs).
    pub sizes: Vec<String>,
    pub max_abs_diff: f64,
    /// Largest magnitude among the reference outputs, for scale.
    pub max_abs_output: f64,
    /// Float rounding of the input model itself: the largest difference between its outputs with
    /// ONNX Runtime's graph optimizations off and on (which fold and fuse as simplify does).
    /// Reports saved before it was measured read as 0.
    #[serde(default)]
    pub noise_floor: f64,
    /// The accepted difference: max([`TOLERANCE`] × max(1, max_abs_output),
    /// [`FLOOR_MARGIN`] × noise_floor).
    #[serde(default)]
    pub tolerance: f64,
    /// max_abs_diff <= tolerance
    pub within_tolerance: bool,
    /// Set when a pass decided on calibration data (zero-entropy collapse): equality holds on
    /// data like the calibration set only.
    pub exact_only_on_calibration_like_inputs: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimplifyReport {
    pub before: ModelStats,
    pub after: ModelStats,
    pub channels_removed: u64,
    pub batchnorms_folded: u64,
    pub layers_collapsed: Vec<String>,
    pub passes: Vec<PassReport>,
    pub verification: Verification,
}

/// Relative tolerance of the equivalence check, against the output's scale (at least 1).
pub const TOLERANCE: f64 = 1e-4;

/// An exact rewrite may move the outputs by this many times what ONNX Runtime's own rewrites of
/// the input move them: re-fitted weights (reconstruction) make a model's outputs more
/// sensitive to the order of float operations than its output scale says (PP-LCNet after OBS:
/// 1.2e-4 from ONNX Runtime's fusions alone, at outputs of at most 0.93).
pub const FLOOR_MARGIN: f64 = 4.0;

/// Concrete inputs the model runs on: the calibration data's sizes, else `--shape` values and
/// sizes nnzip finds the model runs at (tried on ONNX Runtime). Up to `n` different ones.
pub fn input_plans(
    rt: &Runtime,
    model: &Model,
    shapes: &[(String, Vec<usize>)],
    calib: Option<&Calibration>,
    n: usize,
) -> Result<Vec<InputPlan>, PassError> {
    let given: Vec<(String, Vec<usize>)> = match calib {
        Some(c) => c
            .slice(0, 1.min(c.samples))?
            .into_iter()
            .map(|(k, t)| (k, t.dims))
            .collect(),
        None => shapes.to_vec(),
    };
    let mut session_ok = |p: &InputPlan| -> bool {
        let Ok(x) = p.random(0) else { return false };
        Session::from_model(rt, model, &SessionOptions::default())
            .and_then(|mut s| s.run(&x))
            .is_ok()
    };
    crate::runtime::inputs::plans(model, &given, &mut session_ok, n).map_err(|e| {
        PassError::Inputs {
            pass: "simplify",
            input: e,
        }
    })
}

/// Runs the simplify passes on `model` in place and verifies the result. On an error `model` is
/// left empty (the passes own it while they run; every caller gives up on an error).
pub fn simplify(
    model: &mut Model,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    shapes: &[(String, Vec<usize>)],
) -> Result<SimplifyReport, PassError> {
    let plans = input_plans(rt, model, shapes, calib, 2)?;
    // MACs at the sizes checked (the given ones, or those nnzip found the model runs at).
    let at = plans.first().map(InputPlan::shapes).unwrap_or_default();
    let before = ModelStats::of(model, &at)?;
    // The original's outputs first: then the passes can own the model rather than a copy of
    // it, and only one model and one ONNX Runtime session are in memory at a time.
    let reference = outputs_on(model, rt, calib, &plans, OptLevel::All)?;
    let floor = noise_floor(model, rt, calib, &plans, &reference)?;
    let original = std::mem::replace(model, Model::unchecked(Default::default()));
    // Declared sizes, not the planned ones: what the passes do must hold at every size.
    let mut ed = Editor::new(original, InputDims::new());
    let ctx = PassContext {
        calib,
        runtime: Some(rt),
        inputs: plans.first(),
    };
    let reports = run_passes(&passes(calib.is_some()), &mut ed, &ctx)?;
    *model = ed.into_model();
    // The input ran on these plans: a failure now is the passes' doing.
    let candidate =
        outputs_on(model, rt, calib, &plans, OptLevel::All).map_err(|e| PassError::Broke {
            pass: "simplify",
            reason: e.to_string(),
        })?;
    let verification = compare(&reference, &candidate, floor, weakest(&reports));
    let after = ModelStats::of(model, &at)?;
    let (mut channels_removed, mut batchnorms_folded, mut layers_collapsed) =
        (0u64, 0u64, Vec::new());
    for r in &reports {
        match &r.details {
            PassDetails::DeadChannels(d) => channels_removed += d.channels_removed as u64,
            PassDetails::FoldBatchNorm(f) => batchnorms_folded += f.folded.len() as u64,
            PassDetails::Collapse(c) => layers_collapsed.extend(c.collapsed.iter().cloned()),
            _ => {}
        }
    }
    Ok(SimplifyReport {
        before,
        after,
        channels_removed,
        batchnorms_folded,
        layers_collapsed,
        passes: reports,
        verification,
    })
}

/// Compares two models' outputs on the calibration data, or on seeded inputs at each plan's
/// sizes. `preserves` is the weakest guarantee of the passes that ran.
pub fn verify(
    a: &Model,
    b: &Model,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    plans: &[InputPlan],
    preserves: Preserves,
) -> Result<Verification, PassError> {
    let ra = outputs_on(a, rt, calib, plans, OptLevel::All)?;
    let floor = noise_floor(a, rt, calib, plans, &ra)?;
    let rb = outputs_on(b, rt, calib, plans, OptLevel::All)?;
    Ok(compare(&ra, &rb, floor, preserves))
}

/// The largest difference of `model`'s outputs between ONNX Runtime without graph
/// optimizations and `reference` (with them).
fn noise_floor(
    model: &Model,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    plans: &[InputPlan],
    reference: &Outputs,
) -> Result<f64, PassError> {
    let plain = outputs_on(model, rt, calib, plans, OptLevel::Disable)?;
    Ok(crate::calib::max_abs_diff(&reference.values, &plain.values).0)
}

/// A model's outputs on the verification data, and what that data was.
struct Outputs {
    values: Vec<(String, crate::tensor::Tensor)>,
    data: &'static str,
    samples: usize,
    sizes: Vec<String>,
}

/// `model`'s outputs on the calibration data, or on four seeded inputs at each plan's sizes.
fn outputs_on(
    model: &Model,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    plans: &[InputPlan],
    opt_level: OptLevel,
) -> Result<Outputs, PassError> {
    let opts = SessionOptions {
        opt_level,
        ..Default::default()
    };
    if let Some(c) = calib {
        let mut s = Session::from_model(rt, model, &opts)?;
        return Ok(Outputs {
            values: crate::calib::run_all(&mut s, c)?,
            data: "calibration",
            samples: c.samples,
            sizes: vec![],
        });
    }
    let mut s = Session::from_model(rt, model, &opts)?;
    let (mut values, mut sizes) = (Vec::new(), Vec::new());
    for p in plans {
        for seed in 0..4u64 {
            let x = p.random(seed).map_err(|e| PassError::Inputs {
                pass: "verify",
                input: e,
            })?;
            values.extend(s.run(&x)?);
        }
        sizes.push(
            p.inputs
                .iter()
                .map(|i| {
                    let dims: Vec<String> = i.shape.iter().map(|d| d.to_string()).collect();
                    format!("{}={}", i.name, dims.join("x"))
                })
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    Ok(Outputs {
        values,
        data: "random",
        samples: 4 * plans.len(),
        sizes,
    })
}

fn compare(a: &Outputs, b: &Outputs, floor: f64, preserves: Preserves) -> Verification {
    let (d, m) = crate::calib::max_abs_diff(&a.values, &b.values);
    let tolerance = (TOLERANCE * m.max(1.0)).max(FLOOR_MARGIN * floor);
    Verification {
        data: a.data.into(),
        samples: a.samples,
        sizes: a.sizes.clone(),
        max_abs_diff: d,
        max_abs_output: m,
        noise_floor: floor,
        tolerance,
        within_tolerance: d <= tolerance,
        exact_only_on_calibration_like_inputs: preserves != Preserves::Outputs,
    }
}
