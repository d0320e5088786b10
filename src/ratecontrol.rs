//! Rate control to an accuracy budget: per-tensor quantization so that the metric on the
//! calibration data drops by at most `max_drop` points while the bitstream is as small as possible.
//!
//! Method (Lagrangian bit allocation):
//! 1. Candidates per quantized float tensor: every QP of a grid (weights: around the weight QP;
//!    biases and other vectors: from the non-weight QP up), with dependent quantization on and
//!    off. For each, the bytes the tensor codes to alone and its weight error.
//! 2. Distortion: the change of the model's output on a calibration subset when only that tensor
//!    is quantized, measured at five noise levels and interpolated per unit of weight error for
//!    the other candidates (output error from small weight noise is close to proportional to its
//!    energy). For top-1 metrics each sample's error counts in units of its margin (top score
//!    minus runner-up), since that is what flips a prediction. Distortions of small,
//!    independent perturbations add up, which makes the allocation separable.
//! 3. For a multiplier λ, each tensor independently takes the candidate minimizing
//!    `bytes + λ·distortion`; λ is bisected (on a log scale) for the smallest bitstream whose
//!    real metric — the whole model quantized, decoded and run on all calibration samples —
//!    drops by at most `max_drop`.
//!    There is one bisection per proxy: margin-weighted and plain output error.
//! 4. The single-QP line (every weight at one QP) is evaluated too. The best point of each line
//!    starts a greedy pass on the real metric that coarsens single tensors one step while the
//!    budget holds; the smaller result wins, so it is never larger than the best single QP of
//!    the grid. Last, exchanges (one tensor a step coarser, another a step finer, where the pair
//!    saves bytes) move bits between tensors of similar sensitivity.
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

impl RateError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            RateError::Calib(CalibError::Runtime(_)) => C::Runtime,
            RateError::Calib(_) | RateError::Container(_) | RateError::Codec(_) => C::BadInput,
            RateError::Onnx(_) | RateError::Tensor(_) => C::BadInput,
            RateError::Infeasible { .. } => C::Other,
        }
    }
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
    /// QP chosen per quantized tensor (weights and the non-weight tensors).
    pub qps: HashMap<String, i32>,
    /// Tensors coded with uniform instead of dependent quantization.
    pub uniform: Vec<String>,
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
    crate::calib::metric_output(out).ok_or(RateError::Calib(CalibError::Empty {
        path: Default::default(),
    }))
}

/// Weighted mean squared difference of two outputs, `weights` one per sample (row).
fn weighted_mse(a: &Tensor, b: &Tensor, weights: &[f64]) -> Result<f64, RateError> {
    let (x, y) = (a.to_f32()?, b.to_f32()?);
    let rows = weights.len().max(1);
    let per = (x.len() / rows).max(1);
    Ok(x.iter()
        .zip(&y)
        .enumerate()
        .map(|(i, (p, q))| {
            let w = weights.get(i / per).copied().unwrap_or(1.0);
            w * (*p as f64 - *q as f64).powi(2)
        })
        .sum::<f64>()
        / x.len().max(1) as f64)
}

/// Per-sample weights of the distortion proxy. For top-1 metrics a sample flips when the error
/// reaches its margin (top score minus runner-up), so errors count in units of the margin:
/// weight 1/(margin² + ε²), ε a tenth of the median margin. Otherwise (cosine) all 1.
fn sample_weights(metric: Metric, reference: &Tensor) -> Result<Vec<f64>, RateError> {
    let v = reference.to_f32()?;
    let rows = reference.dims.first().copied().unwrap_or(1).max(1);
    let per = v.len() / rows;
    if metric == Metric::Cosine || per < 2 {
        return Ok(vec![1.0; rows]);
    }
    let margins: Vec<f64> = v
        .chunks(per)
        .map(|r| {
            let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
            for &x in r {
                let x = x as f64;
                if x > a {
                    b = a;
                    a = x;
                } else if x > b {
                    b = x;
                }
            }
            (a - b).abs()
        })
        .collect();
    let mut sorted = margins.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let eps = (0.1 * sorted.get(sorted.len() / 2).copied().unwrap_or(1.0)).max(1e-6);
    Ok(margins.iter().map(|m| 1.0 / (m * m + eps * eps)).collect())
}

/// Size in bytes of one tensor coded alone with `cfg`.
fn tensor_bytes(t: &nnc_codec::Tensor, cfg: &EncoderConfig) -> Result<u64, RateError> {
    let mut c = cfg.clone();
    c.parallel = false;
    Ok(nnc_codec::encode(std::slice::from_ref(t), &c)?.len() as u64)
}

/// `cfg` with tensor `name` at `qp`, dependent quantization on or off.
fn with_override(cfg: &EncoderConfig, name: &str, qp: i32, dq: bool) -> EncoderConfig {
    let mut c = cfg.clone();
    let prev = c.overrides.get(name).copied().unwrap_or_default();
    c.overrides.insert(
        name.to_string(),
        TensorOverride {
            qp: Some(qp),
            use_dq: Some(dq),
            ..prev
        },
    );
    c
}

/// One quantizer setting of one tensor: its size alone, its weight error, and the estimated
/// output distortion.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    qp: i32,
    dq: bool,
    bytes: u64,
    weight_sse: f64,
    /// Margin-weighted (top-1 metrics) and plain output distortion estimates.
    distortion: f64,
    distortion_plain: f64,
}

/// Piecewise-linear interpolation of `(x, y)` probes (sorted by x) at `x`, constant beyond the
/// ends; 0 with no probe (a tensor quantized without error at every probe).
fn interpolate(p: &[(f64, f64)], x: f64) -> f64 {
    match (p.first(), p.last()) {
        (Some(f), _) if x <= f.0 => f.1,
        (_, Some(l)) if x >= l.0 => l.1,
        _ => p
            .windows(2)
            .find(|w| x >= w[0].0 && x <= w[1].0)
            .map(|w| {
                let span = w[1].0 - w[0].0;
                if span <= 0.0 {
                    w[0].1
                } else {
                    w[0].1 + (w[1].1 - w[0].1) * (x - w[0].0) / span
                }
            })
            .unwrap_or(0.0),
    }
}

/// The QP grid of non-weight tensors: half-doublings from the non-weight QP (fine: they are
/// few values and often sensitive) up to sixteen doublings coarser.
pub fn nonweight_grid(cfg: &EncoderConfig) -> Vec<i32> {
    let base = cfg.effective_nonweight_qp();
    let step = ((1i32 << cfg.qp_density) / 2).max(1);
    (0..33).map(|i| base + i * step).collect()
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
    // Three sensitivity runs per tensor: a calibration subset of around 16 GMAC each.
    let macs = crate::passes::simplify::ModelStats::of(model, &[])
        .ok()
        .and_then(|m| m.macs)
        .unwrap_or(0)
        .max(1);
    let sub_n = ((1.6e10 / macs as f64) as usize).clamp(16, 512);
    let sub = calib.take(sub_n)?;
    let sub_ref = first_output(&run_model(rt, model, &sub)?)?.clone();
    let sample_w = sample_weights(metric, &sub_ref)?;

    let (tensors, base_cfg, _, _) = prepare(model, opts)?;
    let grid = qp_grid(&base_cfg);
    let other_grid = nonweight_grid(&base_cfg);
    // Every float tensor the codec quantizes is allocated: weights on the weight grid, biases and
    // other vectors on a grid from the non-weight QP (the reference keeps those at −75).
    // Each entry: the tensor, its values and where the model keeps it; `table` and `kinds`
    // below are parallel to this list.
    let by_name: HashMap<String, crate::onnx::WeightId> = model
        .weights()
        .iter()
        .map(|w| (w.qualified_name(), w.id.clone()))
        .collect();
    let alloc: Vec<(&nnc_codec::Tensor, &[f32], &crate::onnx::WeightId)> = tensors
        .iter()
        .filter(|t| !base_cfg.overrides.get(&t.name).is_some_and(|o| o.raw))
        .filter_map(|t| match &t.data {
            TensorData::F32(v) => Some((t, v.as_slice(), by_name.get(&t.name)?)),
            _ => None,
        })
        .collect();
    // Rate and distortion tables.
    let mut table: Vec<Vec<Candidate>> = Vec::with_capacity(alloc.len());
    let mut kinds: Vec<bool> = Vec::with_capacity(alloc.len());
    for (ti, &(t, orig, id)) in alloc.iter().enumerate() {
        progress(&format!(
            "sensitivity {}/{}: {}",
            ti + 1,
            alloc.len(),
            t.name
        ));
        let kind = base_cfg
            .overrides
            .get(&t.name)
            .and_then(|o| o.kind)
            .unwrap_or_else(|| TensorKind::of_shape(&t.shape));
        let qps = if kind == TensorKind::Weight {
            &grid
        } else {
            &other_grid
        };
        kinds.push(kind == TensorKind::Weight);
        // Probe points: five noise levels of dependent quantization, fine to coarse (the first
        // half of the row). Only their reconstructions are kept.
        let n = qps.len();
        let probe_at = [n / 8, n / 4, n / 2, 5 * n / 8, 3 * n / 4];
        let mut row = Vec::with_capacity(2 * n);
        let mut recs: Vec<(usize, Vec<f32>)> = Vec::with_capacity(probe_at.len());
        for dq in [true, false] {
            for &qp in qps {
                let c = with_override(&base_cfg, &t.name, qp, dq);
                let bytes = tensor_bytes(t, &c)?;
                let rec = nnc_codec::reconstruct(std::slice::from_ref(t), &c)?;
                let TensorData::F32(v) = &rec[0].data else {
                    continue;
                };
                let sse: f64 = v
                    .iter()
                    .zip(orig)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum();
                row.push(Candidate {
                    qp,
                    dq,
                    bytes,
                    weight_sse: sse,
                    distortion: 0.0,
                    distortion_plain: 0.0,
                });
                if dq && probe_at.contains(&(row.len() - 1)) {
                    recs.push((row.len() - 1, v.clone()));
                }
            }
        }
        // The model's output error per unit of weight error, measured at the probes and
        // interpolated in log weight error for every candidate: output distortion from small
        // weight noise is close to proportional to its energy, and the probes follow where it
        // is not.
        let mut probes: Vec<(f64, f64)> = Vec::new();
        let mut probes_plain: Vec<(f64, f64)> = Vec::new();
        for (k, v) in &recs {
            let Some(c) = row.get(*k) else {
                continue;
            };
            if c.weight_sse <= 0.0 {
                continue;
            }
            let mut m = model.clone();
            m.write(id, &Tensor::from_f32(t.shape.clone(), v)?)?;
            let out = run_model(rt, &m, &sub)?;
            let o = first_output(&out)?;
            let d = weighted_mse(&sub_ref, o, &sample_w)?;
            probes.push((c.weight_sse.ln(), d / c.weight_sse));
            let d = weighted_mse(&sub_ref, o, &[])?;
            probes_plain.push((c.weight_sse.ln(), d / c.weight_sse));
        }
        probes.sort_by(|a, b| a.0.total_cmp(&b.0));
        probes_plain.sort_by(|a, b| a.0.total_cmp(&b.0));
        for c in &mut row {
            if c.weight_sse > 0.0 {
                c.distortion = c.weight_sse * interpolate(&probes, c.weight_sse.ln());
                c.distortion_plain = c.weight_sse * interpolate(&probes_plain, c.weight_sse.ln());
            }
        }
        table.push(row);
    }
    let choose = |lambda: f64, weighted: bool| -> Vec<usize> {
        let d = |c: &Candidate| {
            if weighted {
                c.distortion
            } else {
                c.distortion_plain
            }
        };
        table
            .iter()
            .map(|row| {
                (0..row.len())
                    .min_by(|&a, &b| {
                        let ca = row[a].bytes as f64 + lambda * d(&row[a]);
                        let cb = row[b].bytes as f64 + lambda * d(&row[b]);
                        ca.total_cmp(&cb)
                    })
                    .unwrap_or(0)
            })
            .collect()
    };
    let config_for = |picks: &[usize]| -> EncoderConfig {
        let mut c = base_cfg.clone();
        for ((&(t, _, _), &k), row) in alloc.iter().zip(picks).zip(&table) {
            if let Some(cand) = row.get(k) {
                c.overrides.insert(
                    t.name.clone(),
                    TensorOverride {
                        qp: Some(cand.qp),
                        use_dq: Some(cand.dq),
                        ..c.overrides.get(&t.name).copied().unwrap_or_default()
                    },
                );
            }
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
            ..opts.clone()
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
    // The finest point: the first (finest, dependent-quantization) candidate of every row.
    let finest = vec![0usize; table.len()];
    let (v_fine, _) = evaluate_cfg(&config_for(&finest), f64::INFINITY, &mut steps)?;
    if metric_reference - v_fine > max_drop {
        return Err(RateError::Infeasible {
            qp: grid[0],
            drop: metric_reference - v_fine,
            max: max_drop,
        });
    }
    // One bisection per distortion proxy (margin-weighted, plain): on a budget of a few flipped
    // predictions neither predicts the real metric reliably, and each start is refined below.
    let proxies: &[bool] = if sample_w.iter().all(|w| *w == 1.0) {
        &[false]
    } else {
        &[true, false]
    };
    let mut starts: Vec<(Vec<usize>, f64, u64)> = Vec::new();
    for &weighted in proxies {
        let (mut lo, mut hi) = (-2.0f64, 14.0f64); // log10 λ
        let mut best: Option<(Vec<usize>, f64, u64)> = None;
        for it in 0..12 {
            let mid = (lo + hi) / 2.0;
            let lambda = 10f64.powf(mid);
            let picks = choose(lambda, weighted);
            progress(&format!("rate search step {}: λ=1e{mid:.2}", it + 1));
            let (v, bytes) = evaluate_cfg(&config_for(&picks), lambda, &mut steps)?;
            if metric_reference - v <= max_drop {
                if best.as_ref().is_none_or(|b| bytes < b.2) {
                    best = Some((picks, v, bytes));
                }
                hi = mid; // try coarser
            } else {
                lo = mid;
            }
        }
        starts.extend(best);
    }
    // The single-QP line too (the reference's one knob, every tensor of a kind at one setting):
    // the λ search follows a proxy and can land above it on a coarse, noisy metric. Both starts
    // are refined below and the smaller result wins, so rate control is never worse than the
    // best single QP of the grid.
    let at =
        |row: &[Candidate], qp: i32, dq: bool| row.iter().position(|c| c.qp == qp && c.dq == dq);
    let mut best_single: Option<(Vec<usize>, f64, u64)> = None;
    for (qi, &qp) in grid.iter().enumerate() {
        let picks: Option<Vec<usize>> = table
            .iter()
            .zip(&kinds)
            .map(|(row, &weight)| {
                if weight {
                    at(row, qp, base_cfg.use_dq)
                } else {
                    row.first().and_then(|c| at(row, c.qp, base_cfg.use_dq))
                }
            })
            .collect();
        let Some(picks) = picks else {
            continue;
        };
        progress(&format!("single QP {}/{}", qi + 1, grid.len()));
        let (v, bytes) = evaluate_cfg(&config_for(&picks), f64::NAN, &mut steps)?;
        if metric_reference - v <= max_drop && best_single.as_ref().is_none_or(|b| bytes < b.2) {
            best_single = Some((picks, v, bytes));
        }
    }
    // Greedy refinement on the real metric: coarsen one tensor a step (same quantizer) at a
    // time, largest saving first, keeping each move that stays within budget. The proxy
    // distortion picked the region; this spends what is left of the budget. Bounded: each try
    // is a full evaluation on the calibration data.
    let coarser = |row: &[Candidate], k: usize| -> Option<usize> {
        let c = row.get(k)?;
        row.iter()
            .enumerate()
            .filter(|(_, x)| x.dq == c.dq && x.qp > c.qp)
            .min_by_key(|(_, x)| x.qp)
            .map(|(i, _)| i)
    };
    let max_evals = (4 * table.len()).min(96);
    let refine = |start: (Vec<usize>, f64, u64),
                  steps: &mut Vec<SearchStep>,
                  progress: &mut dyn FnMut(&str)|
     -> Result<(Vec<usize>, f64, u64), RateError> {
        let (mut picks, mut v, mut bytes) = start;
        let mut evals = 0;
        let mut improved = true;
        while improved && evals < max_evals {
            improved = false;
            let mut order: Vec<(usize, usize, u64)> = (0..table.len())
                .filter_map(|t| {
                    let next = coarser(&table[t], picks[t])?;
                    let saving = table[t][picks[t]]
                        .bytes
                        .saturating_sub(table[t][next].bytes);
                    Some((t, next, saving))
                })
                .filter(|x| x.2 > 0)
                .collect();
            order.sort_by_key(|x| std::cmp::Reverse(x.2));
            for (t, next, _) in order {
                if evals >= max_evals {
                    break;
                }
                let mut trial = picks.clone();
                trial[t] = next;
                progress(&format!("refining {}/{}", evals + 1, max_evals));
                let (tv, tb) = evaluate_cfg(&config_for(&trial), f64::NAN, steps)?;
                evals += 1;
                if metric_reference - tv <= max_drop && tb < bytes {
                    picks = trial;
                    v = tv;
                    bytes = tb;
                    improved = true;
                }
            }
        }
        Ok((picks, v, bytes))
    };
    let mut results = Vec::new();
    starts.extend(best_single);
    for start in starts {
        results.push(refine(start, &mut steps, &mut *progress)?);
    }
    let (picks, v, bytes) = match results.into_iter().min_by_key(|r| r.2) {
        Some(r) => r,
        None => {
            // Only the finest point is within budget.
            let first = steps
                .first()
                .map(|s| (s.metric, s.bytes))
                .unwrap_or((v_fine, 0));
            (finest, first.0, first.1)
        }
    };
    // Exchanges on the winner: one tensor a step coarser and another a step finer, where the
    // pair saves bytes, largest saving first; a greedy pass follows each accepted exchange. This
    // moves bits between tensors of similar sensitivity, which single steps cannot.
    let finer = |row: &[Candidate], k: usize| -> Option<usize> {
        let c = row.get(k)?;
        row.iter()
            .enumerate()
            .filter(|(_, x)| x.dq == c.dq && x.qp < c.qp)
            .max_by_key(|(_, x)| x.qp)
            .map(|(i, _)| i)
    };
    let (mut picks, mut v, mut bytes) = (picks, v, bytes);
    let mut swaps = 0;
    let max_swaps = (2 * table.len()).min(48);
    'exchange: while swaps < max_swaps {
        let mut pairs: Vec<(usize, usize, usize, usize, i64)> = Vec::new();
        for t in 0..table.len() {
            let Some(nt) = coarser(&table[t], picks[t]) else {
                continue;
            };
            let gain = table[t][picks[t]].bytes as i64 - table[t][nt].bytes as i64;
            for u in (0..table.len()).filter(|&u| u != t) {
                let Some(nu) = finer(&table[u], picks[u]) else {
                    continue;
                };
                let cost = table[u][nu].bytes as i64 - table[u][picks[u]].bytes as i64;
                if gain > cost {
                    pairs.push((t, nt, u, nu, gain - cost));
                }
            }
        }
        pairs.sort_by_key(|p| std::cmp::Reverse(p.4));
        for (t, nt, u, nu, _) in pairs {
            if swaps >= max_swaps {
                break 'exchange;
            }
            let mut trial = picks.clone();
            trial[t] = nt;
            trial[u] = nu;
            progress(&format!("exchanging {}/{}", swaps + 1, max_swaps));
            let (tv, tb) = evaluate_cfg(&config_for(&trial), f64::NAN, &mut steps)?;
            swaps += 1;
            if metric_reference - tv <= max_drop && tb < bytes {
                (picks, v, bytes) = refine((trial, tv, tb), &mut steps, &mut *progress)?;
                continue 'exchange;
            }
        }
        break;
    }
    let config = config_for(&picks);
    let chosen: Vec<(&str, Candidate)> = alloc
        .iter()
        .zip(&picks)
        .zip(&table)
        .filter_map(|((&(t, _, _), &k), row)| row.get(k).map(|c| (t.name.as_str(), *c)))
        .collect();
    let qps = chosen.iter().map(|(n, c)| (n.to_string(), c.qp)).collect();
    let uniform = chosen
        .iter()
        .filter(|(_, c)| !c.dq)
        .map(|(n, _)| n.to_string())
        .collect();
    Ok(RatePlan {
        metric,
        metric_reference,
        metric_after: v,
        bytes,
        qps,
        uniform,
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
