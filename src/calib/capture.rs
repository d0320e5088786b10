//! The one way nnzip looks inside a running model: a copy of it with chosen inner tensors as
//! extra outputs, run batch by batch on calibration data or on planned seeded inputs, each
//! batch handed to a visitor and then dropped, so memory stays one batch of activations.
//! Dead-channel removal, rectifier statistics and entropy pruning all observe through it.

use super::{CalibError, Calibration};
use crate::onnx::Model;
use crate::runtime::inputs::InputPlan;
use crate::runtime::{Runtime, Session, SessionOptions};
use crate::tensor::Tensor;

/// What to run the model on.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Calibration samples, in batches the model accepts; at most `limit` samples.
    Calibration {
        data: &'a Calibration,
        limit: Option<usize>,
    },
    /// One batch per seed of seeded inputs following `plan`.
    Random {
        plan: &'a InputPlan,
        seeds: &'a [u64],
    },
}

/// One observed batch: the requested tensors, in request order (`None` when the model did not
/// produce one, e.g. a tensor inside a branch not taken).
pub struct Batch {
    pub tensors: Vec<Option<Tensor>>,
    /// The model's own outputs.
    pub outputs: Vec<(String, Tensor)>,
}

/// Runs `model` with `tensors` exposed over `source`, calling `visit` once per batch.
pub fn capture(
    rt: &Runtime,
    model: &Model,
    tensors: &[String],
    source: Source<'_>,
    visit: &mut dyn FnMut(Batch) -> Result<(), CalibError>,
) -> Result<(), CalibError> {
    capture_many(
        rt,
        &[(model, tensors)],
        source,
        &mut |mut b| match b.pop() {
            Some(one) => visit(one),
            None => Ok(()),
        },
    )
}

/// [`capture`] over several models in lockstep: each batch of `source` runs through every
/// model, and `visit` sees their batches together, in the order given. Reconstruction pairs a
/// pruned model's layer inputs with the original's on the same samples this way, so neither
/// model's activations are ever held beyond one batch.
pub fn capture_many(
    rt: &Runtime,
    models: &[(&Model, &[String])],
    source: Source<'_>,
    visit: &mut dyn FnMut(Vec<Batch>) -> Result<(), CalibError>,
) -> Result<(), CalibError> {
    // One intra-op thread keeps observation deterministic and leaves the other core to the
    // pipeline's own work.
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let mut probes = Vec::with_capacity(models.len());
    for (model, tensors) in models {
        let own: Vec<String> = model
            .graph()
            .output
            .iter()
            .map(|o| o.name.clone())
            .collect();
        let mut probe = (*model).clone();
        crate::graph::edit::expose_float_outputs(&mut probe, tensors);
        probes.push((Session::from_model(rt, &probe, &opts)?, own, *tensors));
    }
    let mut run = |inputs: &[(String, Tensor)]| -> Result<(), CalibError> {
        let mut batches = Vec::with_capacity(probes.len());
        for (session, own, tensors) in probes.iter_mut() {
            let mut outs = session.run(inputs)?;
            let tensors = tensors
                .iter()
                .map(|t| {
                    outs.iter()
                        .position(|(n, _)| n == t)
                        .map(|i| outs.swap_remove(i).1)
                })
                .collect();
            outs.retain(|(n, _)| own.contains(n));
            batches.push(Batch {
                tensors,
                outputs: outs,
            });
        }
        visit(batches)
    };
    match source {
        Source::Calibration { data, limit } => {
            let total = limit.map_or(data.samples, |l| l.min(data.samples));
            let step = data.batch();
            let mut start = 0;
            while start < total {
                let end = start.saturating_add(step).min(total);
                run(&data.slice(start, end)?)?;
                start = end;
            }
        }
        Source::Random { plan, seeds } => {
            for &seed in seeds {
                let x = plan
                    .random(seed)
                    .map_err(|e| CalibError::Inputs(e.to_string()))?;
                run(&x)?;
            }
        }
    }
    Ok(())
}

/// [`capture`] collecting every batch of the requested tensors, concatenated along the sample
/// axis. For small probes (a few seeded samples); statistics over calibration data should
/// visit batches instead.
pub fn collect(
    rt: &Runtime,
    model: &Model,
    tensors: &[String],
    source: Source<'_>,
) -> Result<Vec<Option<Tensor>>, CalibError> {
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); tensors.len()];
    capture(rt, model, tensors, source, &mut |b| {
        for (acc, t) in parts.iter_mut().zip(b.tensors) {
            acc.extend(t);
        }
        Ok(())
    })?;
    parts
        .into_iter()
        .map(|p| {
            if p.is_empty() {
                Ok(None)
            } else {
                super::concat0(&p).map(Some).map_err(CalibError::from)
            }
        })
        .collect()
}
