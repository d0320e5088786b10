//! The simplify stage: a pruned model becomes a physically smaller one with the same outputs.
//!
//! Passes, in order: [`cleanup::Cleanup`] (identities), [`fold_bn::FoldBatchNorm`],
//! [`collapse::CollapseZeroEntropy`] (only with calibration data), [`dead::RemoveDeadChannels`],
//! and [`cleanup::Cleanup`] again. [`simplify`] runs them and verifies the result on ONNX Runtime.

pub mod cleanup;
pub mod collapse;
pub mod dead;
pub mod fold_bn;

use serde::Serialize;

use super::{run_passes, Pass, PassContext, PassError, PassReport};
use crate::calib::{run_model, Calibration};
use crate::onnx::Model;
use crate::runtime::inputs::random_inputs;
use crate::runtime::{Runtime, Session, SessionOptions};

/// The pass list for a configuration.
pub fn passes(with_calibration: bool, shapes: &[(String, Vec<usize>)]) -> Vec<Box<dyn Pass>> {
    let mut v: Vec<Box<dyn Pass>> =
        vec![Box::new(cleanup::Cleanup), Box::new(fold_bn::FoldBatchNorm)];
    if with_calibration {
        v.push(Box::new(collapse::CollapseZeroEntropy));
    }
    v.push(Box::new(dead::RemoveDeadChannels {
        shapes: shapes.to_vec(),
    }));
    if with_calibration {
        // Once a layer's always-OFF channels are gone its other channels may all be always ON:
        // a second look drops that rectifier and merges the layer.
        v.push(Box::new(collapse::CollapseZeroEntropy));
        v.push(Box::new(dead::RemoveDeadChannels {
            shapes: shapes.to_vec(),
        }));
    }
    v.push(Box::new(cleanup::Cleanup));
    v
}

/// Size and cost of a model at one point of the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub parameters: u64,
    pub nodes: usize,
    pub onnx_bytes: u64,
    pub macs: Option<u64>,
}

impl ModelStats {
    pub fn of(model: &Model, shapes: &[(String, Vec<usize>)]) -> Result<ModelStats, PassError> {
        let mut parameters = 0u64;
        for w in model.weights() {
            if w.dtype != crate::tensor::DType::I64 {
                parameters += w.numel() as u64;
            }
        }
        let macs = match crate::inspect::mac_shapes(model, shapes) {
            Ok(inputs) => {
                let s = crate::graph::shapes::infer(model, &inputs);
                let v: Vec<Option<u64>> = model
                    .graph()
                    .node
                    .iter()
                    .filter(|n| crate::inspect::is_compute_op(&n.op_type))
                    .map(|n| crate::inspect::node_macs(n, &s))
                    .collect();
                v.iter()
                    .all(Option::is_some)
                    .then(|| v.iter().flatten().sum())
            }
            Err(_) => None,
        };
        Ok(ModelStats {
            parameters,
            nodes: model.graph().node.len(),
            // The serialized size, without serializing (a copy of the whole model).
            onnx_bytes: crate::modelfile::inline_size(model),
            macs,
        })
    }
}

/// How the simplified model was checked against the input model.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// "calibration" (the --calib samples) or "random" (seeded N(0,1) inputs).
    pub data: String,
    pub samples: usize,
    pub max_abs_diff: f64,
    /// Largest magnitude among the reference outputs, for scale.
    pub max_abs_output: f64,
    /// max_abs_diff <= 1e-4 * max(1, max_abs_output)
    pub within_tolerance: bool,
    /// Set when zero-entropy collapse ran: equality holds on data like the calibration set only.
    pub exact_only_on_calibration_like_inputs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimplifyReport {
    pub before: ModelStats,
    pub after: ModelStats,
    pub channels_removed: u64,
    pub batchnorms_folded: u64,
    pub layers_collapsed: Vec<String>,
    pub passes: Vec<PassReport>,
    pub verification: Verification,
}

/// Relative tolerance of the equivalence check.
pub const TOLERANCE: f64 = 1e-4;

/// Runs the simplify passes on `model` in place and verifies the result.
pub fn simplify(
    model: &mut Model,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    shapes: &[(String, Vec<usize>)],
) -> Result<SimplifyReport, PassError> {
    let before = ModelStats::of(model, shapes)?;
    let original = model.clone();
    let ctx = PassContext {
        calib,
        runtime: Some(rt),
    };
    let reports = run_passes(&passes(calib.is_some(), shapes), model, &ctx)?;
    let after = ModelStats::of(model, shapes)?;
    let verification = verify(&original, model, rt, calib, shapes)?;
    let num = |p: &str, k: &str| -> u64 {
        reports
            .iter()
            .filter(|r| r.pass == p)
            .map(|r| r.details[k].as_u64().unwrap_or(0))
            .sum()
    };
    let folded: u64 = reports
        .iter()
        .filter(|r| r.pass == "fold_batchnorm")
        .map(|r| r.details["folded"].as_array().map_or(0, |a| a.len() as u64))
        .sum();
    let layers_collapsed = reports
        .iter()
        .filter(|r| r.pass == "collapse_zero_entropy")
        .flat_map(|r| {
            r.details["collapsed"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Ok(SimplifyReport {
        before,
        after,
        channels_removed: num("remove_dead_channels", "channels_removed"),
        batchnorms_folded: folded,
        layers_collapsed,
        passes: reports,
        verification,
    })
}

/// Compares two models' outputs on the calibration data, or on seeded random inputs.
pub fn verify(
    a: &Model,
    b: &Model,
    rt: &'static Runtime,
    calib: Option<&Calibration>,
    shapes: &[(String, Vec<usize>)],
) -> Result<Verification, PassError> {
    let (ra, rb, data, samples) = match calib {
        Some(c) => (
            run_model(rt, a, c)?,
            run_model(rt, b, c)?,
            "calibration",
            c.samples,
        ),
        None => {
            let ins = a.inputs();
            let sh = crate::runtime::inputs::resolve_shapes(&ins, shapes).map_err(|e| {
                PassError::Invalid {
                    pass: "verify",
                    reason: e.to_string(),
                }
            })?;
            let opts = SessionOptions::default();
            let (mut sa, mut sb) = (
                Session::from_model(rt, a, &opts)?,
                Session::from_model(rt, b, &opts)?,
            );
            let mut oa = Vec::new();
            let mut ob = Vec::new();
            for seed in 0..4u64 {
                let x = random_inputs(&ins, &sh, seed).map_err(|e| PassError::Invalid {
                    pass: "verify",
                    reason: e.to_string(),
                })?;
                oa.extend(sa.run(&x)?);
                ob.extend(sb.run(&x)?);
            }
            (oa, ob, "random", 4)
        }
    };
    let (d, m) = crate::calib::max_abs_diff(&ra, &rb);
    Ok(Verification {
        data: data.into(),
        samples,
        max_abs_diff: d,
        max_abs_output: m,
        within_tolerance: d <= TOLERANCE * m.max(1.0),
        exact_only_on_calibration_like_inputs: calib.is_some(),
    })
}
