//! Calibration data and the metrics computed on it.
//!
//! The format, the same in every command (`--calib FILE.npz`): one array per model input, named
//! after the input, with a leading sample axis; optionally `labels`, one class id per sample.
//! An array of the input's rank is read as samples along its batch axis; an array of one more
//! dimension as samples each of the input's full shape. nnzip feeds batches the model accepts:
//! many samples at once where the batch dimension is symbolic, one by one where it is fixed.

pub mod states;

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::npz::{read_npz, NpzError};
use crate::onnx::{Dim, Model, OnnxError};
use crate::runtime::{Runtime, RuntimeError, Session, SessionOptions};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum CalibError {
    #[error(transparent)]
    Npz(#[from] NpzError),
    #[error(
        "{path}: no array named '{input}' for the model input of that name (arrays: {arrays})"
    )]
    MissingInput {
        path: PathBuf,
        input: String,
        arrays: String,
    },
    #[error(
        "{path}: array '{input}' has shape {got:?}, which does not fit the model input {expected}"
    )]
    BadShape {
        path: PathBuf,
        input: String,
        got: Vec<usize>,
        expected: String,
    },
    #[error("{path}: arrays disagree on the number of samples ({a} vs {b})")]
    SampleCount { path: PathBuf, a: usize, b: usize },
    #[error("{path}: 'labels' must be integers, one per sample")]
    BadLabels { path: PathBuf },
    #[error("{path}: no samples")]
    Empty { path: PathBuf },
    #[error("the model's first output has shape {0:?}; top-1 metrics need [N, classes]")]
    NotClassifier(Vec<usize>),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Calibration samples for one model.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Per model input: samples stacked along axis 0, each sample with the input's shape minus
    /// the batch axis (`per_sample_batch` false) or with it (true, batch fixed to 1).
    pub inputs: Vec<(String, Tensor)>,
    /// Per input: samples are whole input values (an array of one more dimension whose
    /// second axis is not a batch of one, e.g. a recurrent state [N, 2, 1, 128] for an input
    /// [2, batch, 128], or a scalar per sample): fed one at a time, without the sample axis.
    pub whole: Vec<bool>,
    pub labels: Option<Vec<i64>>,
    pub samples: usize,
    /// The model's batch axis is symbolic: samples can be fed many at once.
    pub batchable: bool,
    pub path: PathBuf,
}

impl Calibration {
    /// Loads `path` for `model`'s inputs.
    pub fn load(path: &Path, model: &Model) -> Result<Calibration, CalibError> {
        let arrays = read_npz(path)?;
        Calibration::from_arrays(path, arrays, model)
    }

    pub fn from_arrays(
        path: &Path,
        arrays: Vec<(String, Tensor)>,
        model: &Model,
    ) -> Result<Calibration, CalibError> {
        let mut inputs = Vec::new();
        let mut whole = Vec::new();
        let mut samples: Option<usize> = None;
        let mut batchable = true;
        for vi in model.inputs() {
            let (_, t) = arrays.iter().find(|(n, _)| n == &vi.name).ok_or_else(|| {
                CalibError::MissingInput {
                    path: path.to_path_buf(),
                    input: vi.name.clone(),
                    arrays: arrays
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
            let dims = vi.dims.clone().unwrap_or_default();
            let fits = |d: &[usize]| {
                d.len() == dims.len()
                    && d.iter()
                        .zip(&dims)
                        .all(|(a, b)| !matches!(b, Dim::Fixed(n) if n != a))
            };
            let bad = || CalibError::BadShape {
                path: path.to_path_buf(),
                input: vi.name.clone(),
                got: t.dims.clone(),
                expected: format!(
                    "[{}]",
                    dims.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            if t.dims.is_empty() {
                return Err(bad());
            }
            let n = t.dims[0];
            let one_more = t.dims.len() == dims.len() + 1 && fits(&t.dims[1..]);
            // Whole values per sample: a scalar input, or an input whose first axis is not a
            // batch of one in the array.
            let is_whole = one_more && t.dims.get(1).is_none_or(|&b| b != 1) && {
                // A symbolic first dimension is the batch: several rows per sample are rows.
                !matches!(dims.first(), Some(Dim::Symbolic(_)) | Some(Dim::Unknown))
                    || t.dims.len() == 1
            };
            whole.push(is_whole);
            // [N, input shape...] (one more axis) or [N, input shape without batch...]
            let (tensor, fixed_batch) = if is_whole {
                (t.clone(), true)
            } else if one_more {
                let b = t.dims[1];
                if b != 1 {
                    // Samples of several batch rows each: flatten into rows.
                    let mut d = t.dims[1..].to_vec();
                    d[0] = n * b;
                    (
                        Tensor::from_bytes(t.dtype, d, t.bytes().to_vec())?,
                        matches!(dims.first(), Some(Dim::Fixed(_))),
                    )
                } else {
                    let mut d = t.dims[1..].to_vec();
                    d[0] = n;
                    (
                        Tensor::from_bytes(t.dtype, d, t.bytes().to_vec())?,
                        matches!(dims.first(), Some(Dim::Fixed(_))),
                    )
                }
            } else if t.dims.len() == dims.len()
                && (dims.is_empty() || fits(&[&[1], &t.dims[1..]].concat()))
            {
                (t.clone(), matches!(dims.first(), Some(Dim::Fixed(_))))
            } else {
                return Err(bad());
            };
            if fixed_batch {
                batchable = false;
            }
            let rows = tensor.dims[0];
            if let Some(s) = samples {
                if s != rows {
                    return Err(CalibError::SampleCount {
                        path: path.to_path_buf(),
                        a: s,
                        b: rows,
                    });
                }
            }
            samples = Some(rows);
            inputs.push((vi.name.clone(), tensor));
        }
        let samples = samples.unwrap_or(0);
        if samples == 0 {
            return Err(CalibError::Empty {
                path: path.to_path_buf(),
            });
        }
        let labels = match arrays.iter().find(|(n, _)| n == "labels") {
            None => None,
            Some((_, t)) => {
                let v = t.to_i64_lossy().ok_or_else(|| CalibError::BadLabels {
                    path: path.to_path_buf(),
                })?;
                if v.len() != samples {
                    return Err(CalibError::BadLabels {
                        path: path.to_path_buf(),
                    });
                }
                Some(v)
            }
        };
        Ok(Calibration {
            inputs,
            whole,
            labels,
            samples,
            batchable,
            path: path.to_path_buf(),
        })
    }

    /// Rows `start..end` of every input (one sample of whole-value inputs: `start`).
    pub fn slice(&self, start: usize, end: usize) -> Result<Vec<(String, Tensor)>, TensorError> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, (n, t))| {
                let per = t.bytes().len() / t.dims.first().copied().unwrap_or(1).max(1);
                let whole = self.whole.get(i).copied().unwrap_or(false);
                let (d, end) = if whole {
                    (t.dims[1..].to_vec(), start + 1)
                } else {
                    let mut d = t.dims.clone();
                    d[0] = end - start;
                    (d, end)
                };
                Ok((
                    n.clone(),
                    Tensor::from_bytes(t.dtype, d, t.bytes()[start * per..end * per].to_vec())?,
                ))
            })
            .collect()
    }

    /// Samples per run: up to [`BATCH`] where the batch axis is symbolic, fewer for large
    /// samples (16 MB of input per run: activations grow with it, 16 images of 640×640 at once
    /// held 3.5 GB), one where the batch is fixed.
    pub fn batch(&self) -> usize {
        if !self.batchable {
            return 1;
        }
        let per: usize = self
            .inputs
            .iter()
            .map(|(_, t)| t.bytes().len() / t.dims.first().copied().unwrap_or(1).max(1))
            .sum();
        ((16usize << 20) / per.max(1)).clamp(1, BATCH)
    }

    /// Keeps the first `n` samples (for faster searches).
    pub fn take(&self, n: usize) -> Result<Calibration, TensorError> {
        self.part(0, n.min(self.samples))
    }

    /// Samples `start..end` as a set of their own (`end` is capped at the sample count).
    pub fn part(&self, start: usize, end: usize) -> Result<Calibration, TensorError> {
        let end = end.min(self.samples);
        let start = start.min(end);
        let inputs = self
            .inputs
            .iter()
            .map(|(name, t)| {
                let per = t.bytes().len() / t.dims.first().copied().unwrap_or(1).max(1);
                let mut d = t.dims.clone();
                if let Some(x) = d.first_mut() {
                    *x = end - start;
                }
                Ok((
                    name.clone(),
                    Tensor::from_bytes(t.dtype, d, t.bytes()[start * per..end * per].to_vec())?,
                ))
            })
            .collect::<Result<_, TensorError>>()?;
        Ok(Calibration {
            inputs,
            whole: self.whole.clone(),
            labels: self.labels.as_ref().map(|l| l[start..end].to_vec()),
            samples: end - start,
            batchable: self.batchable,
            path: self.path.clone(),
        })
    }
}

/// Concatenates tensors along axis 0.
pub fn concat0(parts: &[Tensor]) -> Result<Tensor, TensorError> {
    let Some(first) = parts.first() else {
        return Tensor::from_f32(vec![0], &[]);
    };
    let mut dims = first.dims.clone();
    if dims.is_empty() {
        dims = vec![parts.len()];
    } else {
        dims[0] = parts
            .iter()
            .map(|p| p.dims.first().copied().unwrap_or(1))
            .sum();
    }
    let bytes: Vec<u8> = parts
        .iter()
        .flat_map(|p| p.bytes().iter().copied())
        .collect();
    Tensor::from_bytes(first.dtype, dims, bytes)
}

/// Rows per batch when the batch axis is symbolic.
pub const BATCH: usize = 64;

/// Runs `session` over all samples; returns each output concatenated along the sample axis.
pub fn run_all(
    session: &mut Session,
    calib: &Calibration,
) -> Result<Vec<(String, Tensor)>, CalibError> {
    let step = calib.batch();
    let mut parts: Vec<(String, Vec<Tensor>)> = Vec::new();
    let mut start = 0;
    while start < calib.samples {
        let end = (start + step).min(calib.samples);
        let out = session.run(&calib.slice(start, end)?)?;
        if parts.is_empty() {
            parts = out.iter().map(|(n, _)| (n.clone(), Vec::new())).collect();
        }
        for ((_, acc), (_, t)) in parts.iter_mut().zip(out) {
            acc.push(t);
        }
        start = end;
    }
    parts
        .into_iter()
        .map(|(n, ts)| Ok((n, concat0(&ts)?)))
        .collect()
}

/// Runs a model (in memory) over the calibration data.
pub fn run_model(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
) -> Result<Vec<(String, Tensor)>, CalibError> {
    let opts = SessionOptions::default();
    let mut s = Session::from_model(rt, model, &opts)?;
    run_all(&mut s, calib)
}

/// The output the metric judges: the first floating-point output (a model may return token ids
/// or masks before its scores), else the first output. Owned variant: [`into_metric_output`].
pub fn metric_output(outs: &[(String, Tensor)]) -> Option<&Tensor> {
    outs.iter()
        .map(|(_, t)| t)
        .find(|t| is_float(t))
        .or_else(|| outs.first().map(|(_, t)| t))
}

/// [`metric_output`], taking the outputs.
pub fn into_metric_output(outs: Vec<(String, Tensor)>) -> Option<Tensor> {
    let i = outs.iter().position(|(_, t)| is_float(t)).unwrap_or(0);
    outs.into_iter().nth(i).map(|(_, t)| t)
}

fn is_float(t: &Tensor) -> bool {
    use crate::tensor::DType;
    matches!(t.dtype, DType::F32 | DType::F16 | DType::F64 | DType::Bf16)
}

/// Which number judges a compressed model against the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Top-1 accuracy against the labels, in percent.
    Accuracy,
    /// Top-1 agreement with the original model's predictions, in percent.
    Agreement,
    /// Cosine similarity of the outputs with the original's, in percent (mean over samples).
    Cosine,
}

impl Metric {
    /// The metric the data allows: accuracy with labels, agreement for classifier outputs,
    /// cosine otherwise.
    pub fn for_data(calib: &Calibration, reference: &Tensor) -> Metric {
        if calib.labels.is_some() && reference.dims.len() == 2 {
            Metric::Accuracy
        } else if reference.dims.len() == 2 && reference.dims[1] > 1 {
            Metric::Agreement
        } else {
            Metric::Cosine
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "top-1 accuracy",
            Metric::Agreement => "top-1 agreement",
            Metric::Cosine => "output cosine similarity",
        }
    }
}

fn argmax_rows(t: &Tensor) -> Result<Vec<usize>, CalibError> {
    let v = t.to_f32()?;
    if t.dims.len() != 2 || t.dims[1] == 0 {
        return Err(CalibError::NotClassifier(t.dims.clone()));
    }
    let c = t.dims[1];
    Ok(v.chunks_exact(c)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0
        })
        .collect())
}

/// The metric of `candidate` (first model output over all samples), in percent.
pub fn evaluate(
    metric: Metric,
    calib: &Calibration,
    reference: &Tensor,
    candidate: &Tensor,
) -> Result<f64, CalibError> {
    Ok(match metric {
        Metric::Accuracy => {
            let pred = argmax_rows(candidate)?;
            let labels = calib.labels.as_deref().unwrap_or(&[]);
            let hits = pred
                .iter()
                .zip(labels)
                .filter(|(p, l)| **p as i64 == **l)
                .count();
            100.0 * hits as f64 / pred.len().max(1) as f64
        }
        Metric::Agreement => {
            let (a, b) = (argmax_rows(reference)?, argmax_rows(candidate)?);
            100.0 * a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
        }
        Metric::Cosine => {
            let (a, b) = (as_f32(reference)?, as_f32(candidate)?);
            let n = calib.samples.max(1);
            let per = a.len() / n;
            let mut sum = 0.0f64;
            for i in 0..n {
                let (x, y) = (&a[i * per..(i + 1) * per], &b[i * per..(i + 1) * per]);
                let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
                let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
                let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
                sum += if nx == 0.0 && ny == 0.0 {
                    1.0
                } else if nx == 0.0 || ny == 0.0 {
                    0.0
                } else {
                    dot / (nx * ny)
                };
            }
            100.0 * sum / n as f64
        }
    })
}

fn as_f32(t: &Tensor) -> Result<Vec<f32>, CalibError> {
    match t.dtype {
        DType::F32 => Ok(t.to_f32()?),
        _ => Err(CalibError::Tensor(TensorError::WrongType {
            expected: DType::F32,
            found: t.dtype,
        })),
    }
}

/// Largest absolute difference between two output sets, and the largest absolute value of the
/// reference (for relative tolerances).
pub fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, f64) {
    let mut d = 0.0f64;
    let mut m = 0.0f64;
    for ((_, x), (_, y)) in a.iter().zip(b) {
        if let (Ok(x), Ok(y)) = (x.to_f32(), y.to_f32()) {
            for (p, q) in x.iter().zip(&y) {
                d = d.max((*p as f64 - *q as f64).abs());
                m = m.max((*p as f64).abs());
            }
        }
    }
    (d, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{tensor_shape_proto, type_proto, ModelProto, TypeProto, ValueInfoProto};

    fn input(name: &str, elem: i32, dims: &[Option<i64>]) -> ValueInfoProto {
        let mut shape = onnx_protobuf::TensorShapeProto::new();
        for d in dims {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                None => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            });
            shape.dim.push(dim);
        }
        let mut tt = type_proto::Tensor::new();
        tt.elem_type = elem;
        tt.shape = Some(shape).into();
        let mut tp = TypeProto::new();
        tp.value = Some(type_proto::Value::TensorType(tt));
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v.type_ = Some(tp).into();
        v
    }

    /// Silero's layout: a state [2, batch, 128] given per sample as [N, 2, 1, 128], and a scalar
    /// sample rate as [N]: each sample is fed whole.
    #[test]
    fn whole_values_per_sample_are_fed_one_at_a_time() {
        let mut proto = ModelProto::new();
        let g = proto.graph.mut_or_insert_default();
        g.input.push(input("state", 1, &[Some(2), None, Some(4)]));
        g.input.push(input("sr", 7, &[]));
        let model = Model::from_proto_in(proto, None, Path::new("")).unwrap();
        let state: Vec<f32> = (0..3 * 8).map(|i| i as f32).collect();
        let arrays = vec![
            (
                "state".to_string(),
                Tensor::from_f32(vec![3, 2, 1, 4], &state).unwrap(),
            ),
            (
                "sr".to_string(),
                Tensor::from_i64(vec![3], &[16000, 16000, 8000]).unwrap(),
            ),
        ];
        let c = Calibration::from_arrays(Path::new("x.npz"), arrays, &model).unwrap();
        assert_eq!((c.samples, c.batchable), (3, false));
        let s = c.slice(2, 3).unwrap();
        assert_eq!(s[0].1.dims, vec![2, 1, 4]);
        assert_eq!(s[0].1.to_f32().unwrap()[0], 16.0);
        assert_eq!(
            (s[1].1.dims.clone(), s[1].1.to_i64().unwrap()),
            (vec![], vec![8000])
        );
        let p = c.part(1, 3).unwrap();
        assert_eq!(p.samples, 2);
        assert_eq!(p.slice(0, 1).unwrap()[1].1.to_i64().unwrap(), vec![16000]);
    }
}
