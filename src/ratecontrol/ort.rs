//! The real [`Evaluator`]: one ONNX Runtime session on the model with its weights made
//! overridable initializers (graph inputs with defaults), so an evaluation feeds the quantized
//! weights by name instead of building, saving and loading a model each time.

use std::collections::HashMap;
use std::time::Instant;

use onnx_protobuf::{tensor_shape_proto, type_proto, TypeProto, ValueInfoProto};

use super::{normal_tail, Evaluator, Outcome, RateError, Set};
use crate::calib::{concat0, evaluate, Calibration, Metric};
use crate::container::ROW_SCALE_SUFFIX;
use crate::onnx::weights::WeightSlot;
use crate::onnx::{Model, WeightStorage};
use crate::runtime::{f32_value, value_of, Runtime, Session, SessionOptions};
use crate::tensor::{DType, Tensor};

/// One sample set and what the original gives on it.
struct SetData {
    calib: Calibration,
    reference: Tensor,
    metric_reference: f64,
    /// Per sample: top-1 margin of the original (top-1 metrics).
    margins: Option<Vec<f64>>,
}

/// A weight the evaluator can override: its name in the model, dims, and the row scales the
/// container factored out of it (the value fed is the scales times the reconstruction).
struct Slot {
    name: String,
    dims: Vec<usize>,
    scales: Option<Vec<f32>>,
}

pub struct OrtEvaluator {
    session: Session,
    output: String,
    metric: Metric,
    sets: HashMap<Set, SetData>,
    slots: Vec<Option<Slot>>,
}

/// How the calibration data is split: (search, check) sample counts; nothing is held out of
/// fewer than 8 samples, or with a share of 0.
pub fn split(samples: usize, holdout: f64) -> (usize, usize) {
    if samples < 8 || holdout.is_nan() || holdout <= 0.0 {
        return (samples, 0);
    }
    let check = ((samples as f64 * holdout).round() as usize).clamp(2, samples / 2);
    (samples - check, check)
}

fn float_input(name: &str, dims: &[usize]) -> ValueInfoProto {
    let mut shape = onnx_protobuf::TensorShapeProto::new();
    for &d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(d as i64));
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = DType::F32.onnx_code();
    tt.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

/// `model` with the main-graph float weights among `names` as overridable initializers
/// (`Constant` nodes become initializers); returns the weights made so.
fn overridable(model: &Model, names: &[&str]) -> Result<(Model, Vec<bool>), RateError> {
    let mut m = model.clone();
    let weights = m.weights();
    let mut done = vec![false; names.len()];
    let mut constants = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let Some(w) = weights
            .iter()
            .find(|w| w.scope.is_empty() && w.name == *name && w.dtype == DType::F32)
        else {
            continue;
        };
        match (&w.id.slot, w.storage) {
            (WeightSlot::Initializer(_), _) => {}
            (WeightSlot::Constant { node, .. }, WeightStorage::ConstantTensor) => {
                constants.push((*node, m.read(&w.id)?))
            }
            _ => continue,
        }
        m.graph_mut().input.push(float_input(name, &w.dims));
        done[k] = true;
    }
    // Constants become initializers of the same name; highest node first keeps indices valid.
    constants.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (node, t) in constants {
        let g = m.graph_mut();
        let name = g.node.get(node).and_then(|n| n.output.first()).cloned();
        if let Some(name) = name {
            g.node.remove(node);
            g.initializer.push(crate::onnx::tensor_proto(&name, &t));
        }
    }
    Ok((m, done))
}

impl OrtEvaluator {
    /// An evaluator for `tensors` (the container's codec tensors of `model`). The probes run on
    /// as many search samples (2 to 16) as take about `probe_seconds` each.
    pub fn new(
        rt: &Runtime,
        model: &Model,
        tensors: &[nnc_codec::Tensor],
        calib: &Calibration,
        holdout: f64,
        probe_seconds: f64,
    ) -> Result<OrtEvaluator, RateError> {
        let scales: HashMap<&str, &[f32]> = tensors
            .iter()
            .filter_map(|t| {
                let base = t.name.strip_suffix(ROW_SCALE_SUFFIX)?;
                match &t.data {
                    nnc_codec::TensorData::F32(v) => Some((base, v.as_slice())),
                    _ => None,
                }
            })
            .collect();
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let (probe_model, ok) = overridable(model, &names)?;
        let slots = tensors
            .iter()
            .zip(ok)
            .map(|(t, ok)| {
                ok.then(|| Slot {
                    name: t.name.clone(),
                    dims: t.shape.clone(),
                    scales: scales.get(t.name.as_str()).map(|s| s.to_vec()),
                })
            })
            .collect();
        let session = Session::from_model(rt, &probe_model, &SessionOptions::default())?;
        drop(probe_model);
        let output = session
            .outputs
            .iter()
            .find(|o| o.dtype.is_float())
            .or_else(|| session.outputs.first())
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let (ns, nc) = split(calib.samples, holdout);
        let search = calib.part(0, ns)?;
        let check = calib.part(ns, ns + nc)?;
        let mut e = OrtEvaluator {
            session,
            output,
            metric: Metric::Cosine,
            sets: HashMap::new(),
            slots,
        };
        let t0 = Instant::now();
        let r = e.run(&search, &[])?;
        let per_sample = t0.elapsed().as_secs_f64() / ns.max(1) as f64;
        let p = ((probe_seconds / per_sample.max(1e-6)) as usize).clamp(2, 16);
        let probe = calib.part(0, p.min(ns.max(1)))?;
        e.metric = Metric::for_data(&search, &r);
        for (set, c) in [
            (Set::Search, search),
            (Set::Check, check),
            (Set::Probe, probe),
        ] {
            let reference = if set == Set::Search {
                r.clone()
            } else if c.samples == 0 {
                Tensor::from_f32(vec![0], &[])?
            } else {
                e.run(&c, &[])?
            };
            let metric_reference = if c.samples == 0 {
                0.0
            } else {
                evaluate(e.metric, &c, &reference, &reference)?
            };
            let margins = matches!(e.metric, Metric::Accuracy | Metric::Agreement)
                .then(|| margins(&reference))
                .flatten();
            e.sets.insert(
                set,
                SetData {
                    calib: c,
                    reference,
                    metric_reference,
                    margins,
                },
            );
        }
        Ok(e)
    }

    /// The main output over all samples of `c` with `overrides` fed.
    fn run(
        &mut self,
        c: &Calibration,
        overrides: &[(String, ort::value::DynValue)],
    ) -> Result<Tensor, RateError> {
        // Small batches: the search evaluates many times, and 64 images at once would hold
        // gigabytes of activations.
        let step = c.batch().min(8);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < c.samples {
            let end = (start + step).min(c.samples);
            let inputs = c.slice(start, end)?;
            let values: Vec<(String, ort::value::DynValue)> = inputs
                .iter()
                .map(|(n, t)| Ok((n.clone(), value_of(t)?)))
                .collect::<Result<_, RateError>>()?;
            let feed: Vec<(&str, &ort::value::DynValue)> = values
                .iter()
                .chain(overrides)
                .map(|(n, v)| (n.as_str(), v))
                .collect();
            let out = self.session.run_feed(&feed)?;
            let t = out
                .into_iter()
                .find(|(n, _)| *n == self.output)
                .map(|(_, t)| t)
                .ok_or(RateError::Calib(crate::calib::CalibError::Empty {
                    path: c.path.clone(),
                }))?;
            parts.push(t);
            start = end;
        }
        Ok(concat0(&parts)?)
    }
}

/// Expected top-1 drop in points of outputs `c` against `r` (rows of classes), `m` the
/// original's margins. Two parts, the larger counts:
///
/// * the samples at hand: each flips when the difference of its top two scores' errors, taken
///   as N(0, 2e²) with e its error RMS, passes its margin;
/// * the samples not at hand: a calibration set of a dozen pages has no page near the decision
///   boundary, unseen inputs do. Taking the margins' density near 0 as 1/(2 × median margin) (a
///   uniform lower half) and integrating the flip probability over it gives e/(2√π × median).
///   It is a prior, weighted 16/(16 + n) against what n samples show: on PP-LCNet with 12
///   search pages it predicts the 4-point drop seen on 400 held-out pages where the samples
///   alone say 0.2; with 750 MNIST samples the samples speak for themselves.
pub fn expected_drop(r: &[f32], c: &[f32], m: &[f64]) -> f64 {
    let width = (r.len() / m.len().max(1)).max(1);
    let mut flips = 0.0;
    let mut err = 0.0;
    for ((a, b), &margin) in r.chunks(width).zip(c.chunks(width)).zip(m) {
        let e2: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            / width as f64;
        let sd = (2.0 * e2).sqrt();
        flips += if sd == 0.0 {
            0.0
        } else {
            normal_tail(margin / sd)
        };
        err += e2.sqrt();
    }
    let n = m.len().max(1) as f64;
    let mut sorted = m.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let unseen = if median > 0.0 {
        (err / n) / (2.0 * std::f64::consts::PI.sqrt() * median) * PRIOR / (PRIOR + n)
    } else {
        0.0
    };
    100.0 * (flips / n).max(unseen.min(1.0))
}

/// Weight of the margin-density prior, in samples.
const PRIOR: f64 = 16.0;

/// Standard error (points) of the mean per-sample cosine similarity of `c` against `r`.
fn cosine_se(r: &[f32], c: &[f32], samples: usize) -> Option<f64> {
    let per = r.len().checked_div(samples)?;
    if samples < 2 || per == 0 {
        return None;
    }
    let cos: Vec<f64> = r
        .chunks(per)
        .zip(c.chunks(per))
        .map(|(a, b)| {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let na = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if na == 0.0 && nb == 0.0 {
                1.0
            } else if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot / (na * nb)
            }
        })
        .collect();
    let n = cos.len() as f64;
    let mean = cos.iter().sum::<f64>() / n;
    let var = cos.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some(100.0 * (var / n).sqrt())
}

/// Standard error (points) of a top-1 drop: 100·√k/N for k samples whose prediction changed.
fn changed_se(r: &[f32], c: &[f32], samples: usize) -> Option<f64> {
    let per = r.len().checked_div(samples)?;
    if per < 2 {
        return None;
    }
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0
    };
    let k = r
        .chunks(per)
        .zip(c.chunks(per))
        .filter(|(a, b)| argmax(a) != argmax(b))
        .count();
    Some(100.0 * (k as f64).sqrt() / samples as f64)
}

/// Top-1 margin (largest minus second largest score) of every row of a `[N, C]` output.
pub fn margins(reference: &Tensor) -> Option<Vec<f64>> {
    if reference.dims.len() != 2 || reference.dims[1] < 2 {
        return None;
    }
    let v = reference.to_f32().ok()?;
    Some(
        v.chunks(reference.dims[1])
            .map(|r| {
                let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
                for &x in r {
                    let x = f64::from(x);
                    if x > a {
                        b = a;
                        a = x;
                    } else if x > b {
                        b = x;
                    }
                }
                a - b
            })
            .collect(),
    )
}

impl Evaluator for OrtEvaluator {
    fn metric(&self) -> Metric {
        self.metric
    }

    fn samples(&self, set: Set) -> usize {
        self.sets.get(&set).map_or(0, |s| s.calib.samples)
    }

    fn evaluate(&mut self, values: &[(usize, &[f32])], set: Set) -> Result<Outcome, RateError> {
        let mut overrides = Vec::with_capacity(values.len());
        for &(i, v) in values {
            let Some(Some(slot)) = self.slots.get(i) else {
                continue;
            };
            let value = match &slot.scales {
                Some(k) => {
                    let mut w = v.to_vec();
                    let width = w.len() / k.len().max(1);
                    for (row, s) in w.chunks_mut(width.max(1)).zip(k) {
                        row.iter_mut().for_each(|x| *x *= s);
                    }
                    f32_value(&slot.dims, &w)?
                }
                None => f32_value(&slot.dims, v)?,
            };
            overrides.push((slot.name.clone(), value));
        }
        let calib = match self.sets.get(&set) {
            Some(s) => s.calib.clone(),
            None => return Err(RateError::Cancelled),
        };
        let out = self.run(&calib, &overrides)?;
        let s = &self.sets[&set];
        let metric = evaluate(self.metric, &s.calib, &s.reference, &out)?;
        let (r, c) = (s.reference.to_f32()?, out.to_f32()?);
        Ok(outcome(
            self.metric,
            s.calib.samples,
            &r,
            &c,
            (s.metric_reference, metric),
            s.margins.as_deref(),
        ))
    }
}

/// What a changed model's outputs `c` say against the original's `r` on `samples` samples:
/// `metrics` is (the original's metric, this one's), `margins` the original's top-1 margins
/// (top-1 metrics). Shared by rate control and the pruning search, which hold a budget the same
/// way.
pub fn outcome(
    metric: Metric,
    samples: usize,
    r: &[f32],
    c: &[f32],
    metrics: (f64, f64),
    margins: Option<&[f64]>,
) -> Outcome {
    let signal: f64 = r.iter().map(|x| f64::from(*x).powi(2)).sum();
    let noise: f64 = r
        .iter()
        .zip(c)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let drop_se = match metric {
        Metric::Cosine => cosine_se(r, c, samples),
        _ => changed_se(r, c, samples),
    };
    Outcome {
        metric: metrics.1,
        drop: metrics.0 - metrics.1,
        expected_drop: margins.map(|m| expected_drop(r, c, m)),
        drop_se,
        noise: if signal > 0.0 { noise / signal } else { noise },
        samples,
    }
}
