//! Calibration data and the metrics computed on it.
//!
//! The format, the same in every command (`--calib FILE.npz`): one array per model input, named
//! after the input, with a leading sample axis; optionally `labels`, one class id per sample.
//! An array of the input's rank is read as samples along its batch axis; an array of one more
//! dimension as samples each of the input's full shape. nnzip feeds batches the model accepts:
//! many samples at once where the batch dimension is symbolic, one by one where it is fixed.

pub mod breakdown;
pub mod build;
pub mod capture;
pub mod states;
pub mod wordpiece;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::npz::{read_npz, NpzError};
use crate::onnx::{Dim, Model, OnnxError, ValueInfo};
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
    #[error("{path}: array '{first}' holds {a} samples but '{second}' holds {b}")]
    SampleCount {
        path: PathBuf,
        first: String,
        second: String,
        a: usize,
        b: usize,
    },
    #[error("{path}: array '{input}' is {got}, but the model input of that name takes {expected}")]
    BadType {
        path: PathBuf,
        input: String,
        got: DType,
        expected: DType,
    },
    #[error("{path}: 'labels' must be integers, one per sample")]
    BadLabels { path: PathBuf },
    #[error("{path}: no samples")]
    Empty { path: PathBuf },
    #[error("the model's first output has shape {0:?}; top-1 metrics need [N, classes]")]
    NotClassifier(Vec<usize>),
    #[error("inputs for the model: {0}")]
    Inputs(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl CalibError {
    /// What kind of failure this is (for exit codes): ONNX Runtime failing is exit 4, the rest
    /// is about the calibration data or the model given.
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            CalibError::Runtime(_) => C::Runtime,
            CalibError::Npz(_)
            | CalibError::MissingInput { .. }
            | CalibError::BadShape { .. }
            | CalibError::SampleCount { .. }
            | CalibError::BadType { .. }
            | CalibError::BadLabels { .. }
            | CalibError::Empty { .. }
            | CalibError::NotClassifier(_)
            | CalibError::Inputs(_)
            | CalibError::Onnx(_)
            | CalibError::Tensor(_) => C::BadInput,
        }
    }
}

/// Calibration samples for one model.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Per model input: samples stacked on a leading axis, each of the input's full shape with
    /// a batch of one (`[N, 1, 3, 224, 224]` for `x: [batch, 3, 224, 224]`, `[N]` for a scalar).
    inputs: Vec<(String, Tensor)>,
    /// Per input, the axis a batch of samples is concatenated along (`None`: the input has no
    /// batch axis, so samples are fed one at a time).
    batch_axis: Vec<Option<usize>>,
    pub labels: Option<Vec<i64>>,
    pub samples: usize,
    /// Every input has a symbolic batch axis: samples can be fed many at once.
    pub batchable: bool,
    pub path: PathBuf,
}

/// The batch axis of each model input: where a symbol that is some input's first dimension
/// sits (a recurrent state carries the batch on axis 1), else axis 0 when the input's first
/// dimension is symbolic or 1, else none.
fn batch_axes(model: &Model) -> Vec<(Option<usize>, bool)> {
    let ins = model.inputs();
    let batch_syms: Vec<String> = ins
        .iter()
        .filter_map(|vi| match vi.dims.as_ref()?.first()? {
            Dim::Symbolic(s) if s != "?" => Some(s.clone()),
            _ => None,
        })
        .collect();
    ins.iter()
        .map(|vi| {
            let dims = vi.dims.clone().unwrap_or_default();
            let named = dims
                .iter()
                .position(|d| matches!(d, Dim::Symbolic(s) if batch_syms.contains(s)));
            match (named, dims.first()) {
                (Some(a), _) => (Some(a), true),
                (None, Some(Dim::Symbolic(_) | Dim::Unknown)) => (Some(0), true),
                (None, Some(Dim::Fixed(1))) => (Some(0), false),
                _ => (None, false),
            }
        })
        .collect()
}

impl Calibration {
    /// Loads `path` for `model`'s inputs.
    pub fn load(path: &Path, model: &Model) -> Result<Calibration, CalibError> {
        let arrays = read_npz(path)?;
        Calibration::from_arrays(path, arrays, model)
    }

    /// Arrays of one more dimension than their input hold samples of the input's full shape
    /// (`state: [N, 2, 1, 128]` for `[2, batch, 128]`, `sr: [N]` for a scalar); arrays of the
    /// input's rank hold samples along its batch axis.
    pub fn from_arrays(
        path: &Path,
        arrays: Vec<(String, Tensor)>,
        model: &Model,
    ) -> Result<Calibration, CalibError> {
        let mut inputs = Vec::new();
        let mut axes = Vec::new();
        let mut samples: Option<(usize, String)> = None;
        let mut batchable = true;
        for (vi, (axis, symbolic)) in model.inputs().into_iter().zip(batch_axes(model)) {
            let stacked = stacked_input(path, &arrays, &vi, axis)?;
            if !symbolic {
                batchable = false;
            }
            let rows = stacked.dims.first().copied().unwrap_or(0);
            if let Some((s, first)) = samples.as_ref().filter(|(s, _)| *s != rows) {
                return Err(CalibError::SampleCount {
                    path: path.to_path_buf(),
                    first: first.clone(),
                    second: vi.name.clone(),
                    a: *s,
                    b: rows,
                });
            }
            samples.get_or_insert((rows, vi.name.clone()));
            inputs.push((vi.name.clone(), stacked));
            axes.push(axis);
        }
        let samples = samples.map_or(0, |s| s.0);
        if samples == 0 {
            return Err(CalibError::Empty {
                path: path.to_path_buf(),
            });
        }
        let labels = labels(path, &arrays, samples)?;
        Ok(Calibration {
            inputs,
            batch_axis: axes,
            labels,
            samples,
            batchable,
            path: path.to_path_buf(),
        })
    }

    /// Samples `start..end` as the model's inputs: concatenated along each input's batch axis
    /// (callers ask for more than one only when `batchable`).
    pub fn slice(&self, start: usize, end: usize) -> Result<Vec<(String, Tensor)>, TensorError> {
        self.inputs
            .iter()
            .zip(&self.batch_axis)
            .map(|((n, t), axis)| Ok((n.clone(), unstack(t, start, end, axis.unwrap_or(0))?)))
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
        self.part(0, n)
    }

    /// Samples `start..end` as a calibration set of their own (held-out splits).
    pub fn part(&self, start: usize, end: usize) -> Result<Calibration, TensorError> {
        let end = end.min(self.samples);
        let start = start.min(end);
        Ok(Calibration {
            inputs: self
                .inputs
                .iter()
                .map(|(k, t)| Ok((k.clone(), rows(t, start, end)?)))
                .collect::<Result<_, TensorError>>()?,
            batch_axis: self.batch_axis.clone(),
            labels: self.labels.as_ref().map(|l| l[start..end].to_vec()),
            samples: end - start,
            batchable: self.batchable,
            path: self.path.clone(),
        })
    }
}

/// Rows `start..end` along axis 0 of a stacked tensor.
fn rows(t: &Tensor, start: usize, end: usize) -> Result<Tensor, TensorError> {
    let per = t.bytes().len() / t.dims.first().copied().unwrap_or(1).max(1);
    let mut d = t.dims.clone();
    if let Some(first) = d.first_mut() {
        *first = end - start;
    }
    Tensor::from_bytes(t.dtype, d, t.bytes()[start * per..end * per].to_vec())
}

/// `[.., N at axis a, ..]` as stacked samples `[N, .., 1 at axis a, ..]`.
fn stack_along(t: &Tensor, a: usize) -> Result<Tensor, TensorError> {
    let n = t.dims[a];
    let outer: usize = t.dims[..a].iter().product();
    let inner: usize = t.dims[a + 1..].iter().product::<usize>() * t.dtype.size().unwrap_or(1);
    let b = t.bytes();
    let mut out = Vec::with_capacity(b.len());
    for i in 0..n {
        for o in 0..outer {
            let at = (o * n + i) * inner;
            out.extend_from_slice(&b[at..at + inner]);
        }
    }
    let mut d = vec![n];
    d.extend(
        t.dims
            .iter()
            .enumerate()
            .map(|(k, &x)| if k == a { 1 } else { x }),
    );
    Tensor::from_bytes(t.dtype, d, out)
}

/// Stacked samples `start..end` concatenated along axis `a` of the sample shape.
fn unstack(t: &Tensor, start: usize, end: usize, a: usize) -> Result<Tensor, TensorError> {
    let r = rows(t, start, end)?;
    let k = end - start;
    let sample = &t.dims[1..];
    if k == 1 || sample.is_empty() {
        // One sample is the input as it is (its batch axis, if any, is already 1).
        return Tensor::from_bytes(t.dtype, sample.to_vec(), r.into_bytes());
    }
    let outer: usize = sample[..a].iter().product();
    let inner: usize = sample[a + 1..].iter().product::<usize>() * t.dtype.size().unwrap_or(1);
    let b = r.bytes();
    let mut out = vec![0u8; b.len()];
    for i in 0..k {
        for o in 0..outer {
            let src = (i * outer + o) * inner;
            let dst = (o * k + i) * inner;
            out[dst..dst + inner].copy_from_slice(&b[src..src + inner]);
        }
    }
    let mut d = sample.to_vec();
    d[a] = k;
    Tensor::from_bytes(t.dtype, d, out)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// The class each row of a `[N, C]` output predicts (the first of equal maxima).
pub(crate) fn argmax_rows(t: &Tensor) -> Result<Vec<usize>, CalibError> {
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

/// The array for input `vi` as samples stacked on a leading axis, its type and shape checked
/// against the input: one more dimension than the input's (samples of its full shape), or the
/// input's rank with samples along its batch `axis`.
fn stacked_input(
    path: &Path,
    arrays: &[(String, Tensor)],
    vi: &ValueInfo,
    axis: Option<usize>,
) -> Result<Tensor, CalibError> {
    let (_, t) =
        arrays
            .iter()
            .find(|(n, _)| n == &vi.name)
            .ok_or_else(|| CalibError::MissingInput {
                path: path.to_path_buf(),
                input: vi.name.clone(),
                arrays: arrays
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    if t.dtype != vi.dtype && vi.dtype != DType::Other(0) {
        return Err(CalibError::BadType {
            path: path.to_path_buf(),
            input: vi.name.clone(),
            got: t.dtype,
            expected: vi.dtype,
        });
    }
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
    let stacked = if t.dims.len() == dims.len() + 1 && fits(&t.dims[1..]) {
        match axis {
            // Samples of several batch rows each: every row is a sample.
            Some(0) if t.dims.get(1).is_some_and(|&b| b != 1) => {
                let (n, b) = (t.dims[0], t.dims[1]);
                let mut d = t.dims.clone();
                d[0] = n * b;
                d[1] = 1;
                Tensor::from_bytes(t.dtype, d, t.bytes().to_vec())?
            }
            Some(a) if t.dims.get(a + 1) != Some(&1) => return Err(bad()),
            _ => t.clone(),
        }
    } else if t.dims.len() == dims.len() && axis.is_some() {
        let a = axis.unwrap_or(0);
        let mut probe = t.dims.clone();
        probe[a] = 1;
        if !fits(&probe) {
            return Err(bad());
        }
        stack_along(t, a)?
    } else {
        return Err(bad());
    };
    Ok(stacked)
}

/// The optional `labels` array: one integer class a sample.
fn labels(
    path: &Path,
    arrays: &[(String, Tensor)],
    samples: usize,
) -> Result<Option<Vec<i64>>, CalibError> {
    Ok(match arrays.iter().find(|(n, _)| n == "labels") {
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
    })
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
