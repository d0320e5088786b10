//! Rate control to an accuracy budget: per-tensor quantization so that the metric on the
//! calibration data drops by at most `max_drop` points while the bitstream is as small as possible.
//!
//! Method (Lagrangian bit allocation):
//! 1. For every quantized weight tensor and every QP of a grid, the bytes it codes to (encoded
//!    alone) and its distortion: the mean squared change of the model's output on a calibration
//!    subset when only that tensor is quantized. Output distortions of small, independent
//!    perturbations add up, which makes the allocation separable.
//! 2. For a multiplier λ, each tensor independently takes the QP minimizing `bytes + λ·distortion`.
//! 3. λ is bisected (on a log scale) for the smallest bitstream whose real metric — the whole model
//!    quantized, decoded and run on all calibration samples — drops by at most `max_drop`.
//! 4. A greedy pass on the real metric coarsens single tensors one step while the budget holds.
//!
//! Spending bits where the model is sensitive beats one QP everywhere; the baseline with the
//! reference's single-QP knob ([`best_single_qp`]) is measured the same way for comparison.

use std::collections::HashMap;

use nnc_codec::{EncoderConfig, TensorData, TensorKind, TensorOverride};
use serde::Serialize;
use thiserror::Error;

use crate::calib::{evaluate, run_model, CalibError, Calibration, Metric};
use crate::container::{prepare, ContainerError, ContainerOptions};
use crate::onnx::Model;
use crate::runtime::Runtime;
use crate::tensor::Tensor;

#[derive(Debug, Error)]
pub enum RateError {
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Codec(#[from] nnc_codec::Error),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Tensor(#[from] crate::tensor::TensorError),
    #[error("even the finest quantization tried (QP {qp}) drops the metric by {drop:.2} points, more than the allowed {max:.2}")]
    Infeasible { qp: i32, drop: f64, max: f64 },
}

/// One evaluated configuration of the search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchStep {
    pub lambda: f64,
    pub bytes: u64,
    pub metric: f64,
    pub accepted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RatePlan {
    pub metric: Metric,
    /// The metric of the input model (before quantization), percent.
    pub metric_reference: f64,
    /// The chosen configuration's metric, percent.
    pub metric_after: f64,
    /// Bytes of the chosen payload (NDUs, without the graph).
    pub bytes: u64,
    /// QP chosen per quantized tensor.
    pub qps: HashMap<String, i32>,
    pub steps: Vec<SearchStep>,
    #[serde(skip)]
    pub config: EncoderConfig,
}

/// The QP grid tried per tensor, finest first.
pub fn qp_grid(cfg: &EncoderConfig) -> Vec<i32> {
    // One step-size doubling is 2^qp_density QP; quarter-doublings between, from two doublings
    // finer than `qp` to six coarser.
    let step = ((1i32 << cfg.qp_density) / 4).max(1);
    let lo = cfg.qp - 8 * step;
    (0..33).map(|i| lo + i * step).collect()
}

/// Model with the quantized reconstruction of `cfg` in place of its weights.
pub fn quantized_model(model: &Model, opts: &ContainerOptions) -> Result<Model, RateError> {
    let (tensors, cfg, _, _) = prepare(model, opts)?;
    let rec = nnc_codec::reconstruct(&tensors, &cfg)?;
    let mut m = model.clone();
    let names: HashMap<String, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let weights = m.weights();
    for w in &weights {
        let Some(&i) = names.get(&w.qualified_name()) else {
            continue;
        };
        if let TensorData::F32(v) = &rec[i].data {
            m.write(&w.id, &Tensor::from_f32(w.dims.clone(), v)?)?;
        }
    }
    Ok(m)
}

fn first_output(out: &[(String, Tensor)]) -> Result<&Tensor, RateError> {
    out.first()
        .map(|(_, t)| t)
        .ok_or(RateError::Calib(CalibError::Empty {
            path: Default::default(),
        }))
}

fn mse(a: &Tensor, b: &Tensor) -> Result<f64, RateError> {
    let (x, y) = (a.to_f32()?, b.to_f32()?);
    Ok(x.iter()
        .zip(&y)
        .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
        .sum::<f64>()
        / x.len().max(1) as f64)
}

/// Size in bytes of one tensor coded alone at `qp`.
fn tensor_bytes(t: &nnc_codec::Tensor, cfg: &EncoderConfig, qp: i32) -> Result<u64, RateError> {
    let mut c = cfg.clone();
    c.overrides.insert(
        t.name.clone(),
        TensorOverride {
            qp: Some(qp),
            ..Default::default()
        },
    );
    c.parallel = false;
    Ok(nnc_codec::encode(std::slice::from_ref(t), &c)?.len() as u64)
}

/// Searches per-tensor QPs for the smallest payload within `max_drop` points of the metric.
pub fn allocate(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
    opts: &ContainerOptions,
    max_drop: f64,
    progress: &mut dyn FnMut(&str),
) -> Result<RatePlan, RateError> {
    let reference_out = run_model(rt, model, calib)?;
    let reference = first_output(&reference_out)?.clone();
    let metric = Metric::for_data(calib, &reference);
    let metric_reference = evaluate(metric, calib, &reference, &reference)?;
    // Sensitivity runs are many (tensors × QPs): keep each one around 4 GMAC of work.
    let macs = crate::passes::simplify::ModelStats::of(model, &[])
        .ok()
        .and_then(|m| m.macs)
        .unwrap_or(0)
        .max(1);
    let sub_n = ((4e9 / macs as f64) as usize).clamp(16, 256);
    let sub = calib.take(sub_n)?;
    let sub_ref = first_output(&run_model(rt, model, &sub)?)?.clone();

    let (tensors, base_cfg, _, _) = prepare(model, opts)?;
    let grid = qp_grid(&base_cfg);
    // Weights that are quantized with the weight QP are allocated; the rest keep their settings.
    let alloc: Vec<&nnc_codec::Tensor> = tensors
        .iter()
        .filter(|t| {
            matches!(t.data, TensorData::F32(_))
                && TensorKind::of_shape(&t.shape) == TensorKind::Weight
                && !base_cfg.overrides.get(&t.name).is_some_and(|o| o.raw)
        })
        .collect();
    let weights = model.weights();
    let by_name: HashMap<String, crate::onnx::WeightId> = weights
        .iter()
        .map(|w| (w.qualified_name(), w.id.clone()))
        .collect();
    // Rate and distortion tables.
    let mut table: Vec<Vec<(u64, f64)>> = Vec::with_capacity(alloc.len());
    for (ti, t) in alloc.iter().enumerate() {
        progress(&format!(
            "sensitivity {}/{}: {}",
            ti + 1,
            alloc.len(),
            t.name
        ));
        let Some(id) = by_name.get(&t.name) else {
            continue;
        };
        let mut row = Vec::with_capacity(grid.len());
        for &qp in &grid {
            let bytes = tensor_bytes(t, &base_cfg, qp)?;
            let mut c = base_cfg.clone();
            c.overrides.insert(
                t.name.clone(),
                TensorOverride {
                    qp: Some(qp),
                    ..Default::default()
                },
            );
            let rec = nnc_codec::reconstruct(std::slice::from_ref(*t), &c)?;
            let TensorData::F32(v) = &rec[0].data else {
                continue;
            };
            let mut m = model.clone();
            m.write(id, &Tensor::from_f32(t.shape.clone(), v)?)?;
            let out = run_model(rt, &m, &sub)?;
            row.push((bytes, mse(&sub_ref, first_output(&out)?)?));
        }
        table.push(row);
    }
    let choose = |lambda: f64| -> Vec<usize> {
        table
            .iter()
            .map(|row| {
                (0..row.len())
                    .min_by(|&a, &b| {
                        let ca = row[a].0 as f64 + lambda * row[a].1;
                        let cb = row[b].0 as f64 + lambda * row[b].1;
                        ca.total_cmp(&cb)
                    })
                    .unwrap_or(0)
            })
            .collect()
    };
    let config_for = |picks: &[usize]| -> EncoderConfig {
        let mut c = base_cfg.clone();
        for (t, &k) in alloc.iter().zip(picks) {
            c.overrides.insert(
                t.name.clone(),
                TensorOverride {
                    qp: Some(grid[k]),
                    ..c.overrides.get(&t.name).copied().unwrap_or_default()
                },
            );
        }
        c
    };
    let mut steps = Vec::new();
    let evaluate_cfg = |c: &EncoderConfig,
                        lambda: f64,
                        steps: &mut Vec<SearchStep>|
     -> Result<(f64, u64), RateError> {
        let o = ContainerOptions {
            codec: c.clone(),
            raw_below: opts.raw_below,
        };
        let m = quantized_model(model, &o)?;
        let out = run_model(rt, &m, calib)?;
        let v = evaluate(metric, calib, &reference, first_output(&out)?)?;
        let (ts, cc, _, _) = prepare(model, &o)?;
        let bytes = nnc_codec::encode(&ts, &cc)?.len() as u64;
        let accepted = metric_reference - v <= max_drop;
        steps.push(SearchStep {
            lambda,
            bytes,
            metric: v,
            accepted,
        });
        Ok((v, bytes))
    };
    // λ spans bytes per unit of output MSE; bisect its logarithm.
    let (mut lo, mut hi) = (-2.0f64, 14.0f64); // log10 λ
    let finest = vec![0usize; table.len()];
    let (v_fine, _) = evaluate_cfg(&config_for(&finest), f64::INFINITY, &mut steps)?;
    if metric_reference - v_fine > max_drop {
        return Err(RateError::Infeasible {
            qp: grid[0],
            drop: metric_reference - v_fine,
            max: max_drop,
        });
    }
    let mut best: Option<(Vec<usize>, f64, u64, f64)> = None;
    for it in 0..12 {
        let mid = (lo + hi) / 2.0;
        let lambda = 10f64.powf(mid);
        let picks = choose(lambda);
        progress(&format!("rate search step {}: λ=1e{mid:.2}", it + 1));
        let (v, bytes) = evaluate_cfg(&config_for(&picks), lambda, &mut steps)?;
        if metric_reference - v <= max_drop {
            if best.as_ref().is_none_or(|b| bytes < b.2) {
                best = Some((picks, v, bytes, lambda));
            }
            hi = mid; // try coarser
        } else {
            lo = mid;
        }
    }
    let (mut picks, mut v, mut bytes, _) = match best {
        Some(b) => b,
        None => {
            let last = steps
                .first()
                .map(|s| (s.metric, s.bytes))
                .unwrap_or((v_fine, 0));
            (finest, last.0, last.1, f64::INFINITY)
        }
    };
    // Greedy refinement on the real metric: coarsen one tensor a step at a time, largest saving
    // first, keeping each move that stays within budget. The proxy distortion picked the region;
    // this spends what is left of the budget.
    let mut evals = 0;
    let max_evals = 4 * table.len();
    let mut improved = true;
    while improved && evals < max_evals {
        improved = false;
        let mut order: Vec<usize> = (0..table.len())
            .filter(|&t| picks[t] + 1 < table[t].len())
            .collect();
        order.sort_by_key(|&t| {
            std::cmp::Reverse(
                table[t][picks[t]]
                    .0
                    .saturating_sub(table[t][picks[t] + 1].0),
            )
        });
        for t in order {
            if evals >= max_evals {
                break;
            }
            let mut trial = picks.clone();
            trial[t] += 1;
            progress(&format!("refining {}/{}", evals + 1, max_evals));
            let (tv, tb) = evaluate_cfg(&config_for(&trial), f64::NAN, &mut steps)?;
            evals += 1;
            if metric_reference - tv <= max_drop && tb < bytes {
                picks = trial;
                v = tv;
                bytes = tb;
                improved = true;
            }
        }
    }
    let config = config_for(&picks);
    let qps = alloc
        .iter()
        .zip(&picks)
        .map(|(t, &k)| (t.name.clone(), grid[k]))
        .collect();
    Ok(RatePlan {
        metric,
        metric_reference,
        metric_after: v,
        bytes,
        qps,
        steps,
        config,
    })
}

/// The single QP (the reference's one knob) giving the smallest bitstream whose metric drop stays
/// within `max_drop`, over the whole QP grid: (qp, bytes, metric).
pub fn best_single_qp(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
    opts: &ContainerOptions,
    max_drop: f64,
) -> Result<Option<(i32, u64, f64)>, RateError> {
    let reference_out = run_model(rt, model, calib)?;
    let reference = first_output(&reference_out)?.clone();
    let metric = Metric::for_data(calib, &reference);
    let metric_reference = evaluate(metric, calib, &reference, &reference)?;
    // Every QP of the grid: the metric is not monotonic in QP, so no early stop.
    let mut best: Option<(i32, u64, f64)> = None;
    for qp in qp_grid(&opts.codec) {
        let mut o = opts.clone();
        o.codec.qp = qp;
        let m = quantized_model(model, &o)?;
        let v = evaluate(
            metric,
            calib,
            &reference,
            first_output(&run_model(rt, &m, calib)?)?,
        )?;
        if metric_reference - v > max_drop {
            continue;
        }
        let (ts, cc, _, _) = prepare(model, &o)?;
        let bytes = nnc_codec::encode(&ts, &cc)?.len() as u64;
        if best.is_none_or(|b| bytes < b.1) {
            best = Some((qp, bytes, v));
        }
    }
    Ok(best)
}
