//! Does a changed model still compute what the original did? Every command that writes a
//! changed model (`compress`, `simplify`, `prune`) runs it next to the original on the same
//! inputs (the calibration data, else seeded random inputs of the model's shapes) and compares
//! the main output: cosine similarity, SNR, top-1 agreement where the output has a class axis.
//! A collapse (cosine under the guard's floor, a constant output where the original varies,
//! non-finite values) is an error that names the likely culprits, so nothing broken is written
//! silently.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::calib::{concat0, metric_output, run_all, CalibError, Calibration};
use crate::graph::ops::{norm_axis, Op};
use crate::onnx::Model;
use crate::runtime::inputs::{plan, InputError, InputPlan};
use crate::runtime::{Runtime, RuntimeError, Session, SessionOptions};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum FidelityError {
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("the model has no output to compare")]
    NoOutput,
    #[error("the candidate's output '{output}' has shape {got:?}, the original's {expected:?}")]
    ShapeChanged {
        output: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{}", collapse_message(.reason, .fidelity, .suspects))]
    Collapsed {
        reason: String,
        fidelity: Box<Fidelity>,
        suspects: Vec<Suspect>,
    },
}

impl FidelityError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            FidelityError::Collapsed { .. } => C::Verification,
            FidelityError::Calib(e) => e.class(),
            FidelityError::Runtime(_) => C::Runtime,
            FidelityError::Tensor(e) => e.class(),
            FidelityError::Input(_) => C::Usage,
            FidelityError::NoOutput | FidelityError::ShapeChanged { .. } => C::Other,
        }
    }
}

fn collapse_message(reason: &str, f: &Fidelity, suspects: &[Suspect]) -> String {
    let mut s = format!(
        "the result failed verification: {reason} (output '{}' on {} {} sample(s): {})",
        f.output,
        f.samples,
        f.data.name(),
        f.summary()
    );
    if !suspects.is_empty() {
        s.push_str("; most affected: ");
        let list: Vec<String> = suspects
            .iter()
            .map(|x| format!("{} ({})", x.tensor, x.detail))
            .collect();
        s.push_str(&list.join(", "));
    }
    s
}

/// A tensor (or layer) that likely caused a collapse, with what happened to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suspect {
    pub tensor: String,
    pub detail: String,
}

/// Which inputs the comparison ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeData {
    Calibration,
    Random,
}

impl ProbeData {
    pub fn name(self) -> &'static str {
        match self {
            ProbeData::Calibration => "calibration",
            ProbeData::Random => "random",
        }
    }
}

/// How close a candidate's main output is to the original's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fidelity {
    pub data: ProbeData,
    pub samples: usize,
    /// The compared output (the first floating-point output).
    pub output: String,
    /// Mean over samples of the per-sample cosine similarity (over the whole output when a
    /// sample holds a single value).
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub cosine: f64,
    /// 10·log10(Σ reference² / Σ error²) over all samples; `None` when the outputs are equal.
    pub snr_db: Option<f64>,
    /// Percent of positions whose argmax along the class axis agrees, when there is one.
    pub top1_agreement: Option<f64>,
    pub reference_constant: bool,
    pub candidate_constant: bool,
    /// Variation of the candidate's output across samples relative to the original's (1: as
    /// much; 0: it no longer depends on the input); `None` with a single sample.
    pub input_dependence: Option<f64>,
    /// Non-finite values in the candidate's output where the original's are finite.
    pub non_finite: u64,
    /// Values where the original's output is not finite itself (left out of the comparison;
    /// random inputs can be outside what a model handles, e.g. attention masks other than 0/1).
    pub reference_non_finite: u64,
}

impl Fidelity {
    /// False when the original's output had no finite value to compare with.
    pub fn verifiable(&self) -> bool {
        self.cosine.is_finite()
    }

    /// One line: cosine, SNR, agreement.
    pub fn summary(&self) -> String {
        if !self.verifiable() {
            return "not comparable (the original's output is not finite on these inputs)".into();
        }
        let snr = match self.snr_db {
            Some(s) => format!("{s:.1} dB"),
            None => "exact".into(),
        };
        let mut s = format!("cosine {:.4}, SNR {snr}", self.cosine);
        if let Some(a) = self.top1_agreement {
            s.push_str(&format!(", top-1 agreement {a:.1}%"));
        }
        s
    }
}

/// When a result counts as collapsed.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub min_cosine: f64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { min_cosine: 0.9 }
    }
}

impl Guard {
    /// Why `f` is a collapse, if it is one.
    pub fn collapse(&self, f: &Fidelity) -> Option<String> {
        if !f.verifiable() {
            return None;
        }
        if f.non_finite > 0 {
            return Some(format!("{} non-finite output value(s)", f.non_finite));
        }
        if f.candidate_constant && !f.reference_constant {
            return Some("the output is constant where the original's varies".into());
        }
        if f.input_dependence.is_some_and(|d| d < 1e-6) {
            return Some("the output no longer depends on the input".into());
        }
        (f.cosine < self.min_cosine).then(|| {
            format!(
                "output cosine similarity {:.4} is below {}",
                f.cosine, self.min_cosine
            )
        })
    }

    /// `Ok(f)` unless `f` is a collapse; `suspects` go into the error.
    pub fn check(&self, f: Fidelity, suspects: Vec<Suspect>) -> Result<Fidelity, FidelityError> {
        match self.collapse(&f) {
            Some(reason) => Err(FidelityError::Collapsed {
                reason,
                fidelity: Box::new(f),
                suspects,
            }),
            None => Ok(f),
        }
    }
}

/// Checks `candidate` against `original` on the calibration data or seeded random inputs:
/// the one verification `compress`, `simplify` and `prune` share. `suspects` names what to
/// blame if it collapsed (computed only then).
pub fn verify(
    rt: &Runtime,
    original: &Model,
    candidate: &Model,
    calib: Option<&Calibration>,
    shapes: &[(String, Vec<usize>)],
    guard: &Guard,
    suspects: &dyn Fn() -> Vec<Suspect>,
) -> Result<Fidelity, FidelityError> {
    let probe = Probe::new(rt, original, calib, shapes)?;
    let f = probe.compare_model(rt, candidate)?;
    match guard.collapse(&f) {
        Some(_) => guard.check(f, suspects()),
        None => Ok(f),
    }
}

/// Seeded random inputs used when there is no calibration data.
pub const RANDOM_SAMPLES: u64 = 4;

enum Feeds {
    Calibration(Calibration),
    Random(Vec<Vec<(String, Tensor)>>),
}

/// Seeded inputs for a model without calibration data: at the `shapes` given, and for symbolic
/// dims they leave open at a size the model runs at (the input planner's, tried on `session`),
/// so no `--shape` is needed where any size will do. Integer inputs follow what the graph does
/// with them (a sample rate compared with a constant gets that constant).
fn random_feeds(
    session: &mut Session,
    model: &Model,
    shapes: &[(String, Vec<usize>)],
) -> Result<Vec<Vec<(String, Tensor)>>, FidelityError> {
    let mut runs = |p: &InputPlan| p.random(0).is_ok_and(|x| session.run(&x).is_ok());
    let plan = plan(model, shapes, &mut runs)?;
    (0..RANDOM_SAMPLES)
        .map(|seed| plan.random(seed).map_err(FidelityError::from))
        .collect()
}

/// The inputs both models run on, and the original's main output on them.
pub struct Probe {
    feeds: Feeds,
    pub data: ProbeData,
    pub samples: usize,
    pub output: String,
    reference: Tensor,
    class_axis: Option<usize>,
}

impl Probe {
    /// Runs `original` on the calibration data, or on seeded random inputs of its shapes.
    pub fn new(
        rt: &Runtime,
        original: &Model,
        calib: Option<&Calibration>,
        shapes: &[(String, Vec<usize>)],
    ) -> Result<Probe, FidelityError> {
        let mut session = Session::from_model(rt, original, &SessionOptions::default())?;
        let feeds = match calib {
            Some(c) => Feeds::Calibration(c.clone()),
            None => Feeds::Random(random_feeds(&mut session, original, shapes)?),
        };
        Probe::with_session(&mut session, original, feeds)
    }

    /// The first sample the probe ran the model on (a single-sample batch of calibration data,
    /// or the first seeded input): inputs the model is known to run on.
    pub fn first_sample(&self) -> Result<Vec<(String, Tensor)>, FidelityError> {
        match &self.feeds {
            Feeds::Calibration(c) => Ok(c.slice(0, 1.min(c.samples))?),
            Feeds::Random(v) => v.first().cloned().ok_or(FidelityError::NoOutput),
        }
    }

    fn with_session(
        session: &mut Session,
        original: &Model,
        feeds: Feeds,
    ) -> Result<Probe, FidelityError> {
        let (data, samples) = match &feeds {
            Feeds::Calibration(c) => (ProbeData::Calibration, c.samples),
            Feeds::Random(v) => (ProbeData::Random, v.len()),
        };
        let (output, reference) = main_output(session, &feeds)?;
        let class_axis = class_axis(original, &output, reference.dims.len());
        Ok(Probe {
            feeds,
            data,
            samples,
            output,
            reference,
            class_axis,
        })
    }

    /// The original's main output over all samples.
    pub fn reference(&self) -> &Tensor {
        &self.reference
    }

    /// Compares `candidate` (a model in memory) with the original.
    pub fn compare_model(
        &self,
        rt: &Runtime,
        candidate: &Model,
    ) -> Result<Fidelity, FidelityError> {
        let mut s = Session::from_model(rt, candidate, &SessionOptions::default())?;
        self.compare_session(&mut s)
    }

    /// Compares the model behind `session` with the original.
    pub fn compare_session(&self, session: &mut Session) -> Result<Fidelity, FidelityError> {
        let out = run_named(session, &self.feeds, &self.output)?;
        self.compare(&out)
    }

    /// Compares a candidate's main output (all samples) with the original's.
    pub fn compare(&self, candidate: &Tensor) -> Result<Fidelity, FidelityError> {
        if candidate.dims != self.reference.dims {
            return Err(FidelityError::ShapeChanged {
                output: self.output.clone(),
                got: candidate.dims.clone(),
                expected: self.reference.dims.clone(),
            });
        }
        let (mut r, mut c) = (as_f64(&self.reference)?, as_f64(candidate)?);
        let non_finite = r
            .iter()
            .zip(&c)
            .filter(|(a, b)| a.is_finite() && !b.is_finite())
            .count() as u64;
        // Positions where the original itself is not finite say nothing about the candidate.
        let mut reference_non_finite = 0u64;
        for (a, b) in r.iter_mut().zip(c.iter_mut()) {
            if !a.is_finite() {
                reference_non_finite += 1;
                (*a, *b) = (0.0, 0.0);
            }
        }
        let all_bad = reference_non_finite as usize == r.len() && !r.is_empty();
        let (cosine, snr_db) = if all_bad {
            (f64::NAN, None)
        } else if non_finite > 0 {
            (0.0, Some(f64::MIN))
        } else {
            (mean_cosine(&r, &c, self.samples), snr_db(&r, &c))
        };
        Ok(Fidelity {
            data: self.data,
            samples: self.samples,
            output: self.output.clone(),
            cosine,
            snr_db,
            top1_agreement: self
                .class_axis
                .map(|a| agreement(&r, &c, &self.reference.dims, a)),
            reference_constant: is_constant(&r),
            candidate_constant: is_constant(&c),
            input_dependence: input_dependence(&r, &c, self.samples),
            non_finite,
            reference_non_finite,
        })
    }
}

/// The first floating-point output over all feeds: (name, values concatenated along axis 0).
fn main_output(session: &mut Session, feeds: &Feeds) -> Result<(String, Tensor), FidelityError> {
    let name = session
        .outputs
        .iter()
        .find(|o| o.dtype.is_float())
        .or_else(|| session.outputs.first())
        .map(|o| o.name.clone())
        .ok_or(FidelityError::NoOutput)?;
    let t = run_named(session, feeds, &name)?;
    Ok((name, t))
}

fn run_named(session: &mut Session, feeds: &Feeds, name: &str) -> Result<Tensor, FidelityError> {
    let pick = |outs: Vec<(String, Tensor)>| -> Result<Tensor, FidelityError> {
        match outs.iter().position(|(n, _)| n == name) {
            Some(i) => Ok(outs
                .into_iter()
                .nth(i)
                .map(|(_, t)| t)
                .ok_or(FidelityError::NoOutput)?),
            None => metric_output(&outs).cloned().ok_or(FidelityError::NoOutput),
        }
    };
    match feeds {
        Feeds::Calibration(c) => pick(run_all(session, c)?),
        Feeds::Random(v) => {
            let mut parts = Vec::with_capacity(v.len());
            for x in v {
                parts.push(pick(session.run(x)?)?);
            }
            Ok(concat0(&parts)?)
        }
    }
}

/// The axis of `output` whose argmax is a prediction: the axis of the Softmax/LogSoftmax that
/// produces it, else axis 1 of a `[N, C]` output with C > 1.
fn class_axis(model: &Model, output: &str, rank: usize) -> Option<usize> {
    let node = model
        .graph()
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == output));
    let softmax = node
        .filter(|n| matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax"))
        .and_then(|n| Op::parse(n, model.opset().unwrap_or(13)).ok());
    if let Some(Op::Softmax { axis, coerced }) = softmax {
        let a = norm_axis(axis, rank)?;
        // Before opset 13 a non-last axis means a flattened distribution: not a class axis.
        let last = rank.checked_sub(1)?;
        return (a >= 1 && (!coerced || a == last)).then_some(a);
    }
    (rank == 2).then_some(1)
}

fn as_f64(t: &Tensor) -> Result<Vec<f64>, TensorError> {
    Ok(match t.dtype {
        DType::F32 => t.to_f32()?.into_iter().map(f64::from).collect(),
        _ => match t.to_i64_lossy() {
            Some(v) => v.into_iter().map(|x| x as f64).collect(),
            None => t.to_f32()?.into_iter().map(f64::from).collect(),
        },
    })
}

fn cosine(x: &[f64], y: &[f64]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    let nx = x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let ny = y.iter().map(|a| a * a).sum::<f64>().sqrt();
    match (nx == 0.0, ny == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => dot / (nx * ny),
    }
}

/// Mean per-sample cosine; over everything at once when samples hold one value each (the
/// cosine of two single numbers is only their sign agreement).
fn mean_cosine(r: &[f64], c: &[f64], samples: usize) -> f64 {
    let per = r.len().checked_div(samples).unwrap_or(0);
    if per < 2 || per * samples != r.len() {
        return cosine(r, c);
    }
    let sum: f64 = r
        .chunks(per)
        .zip(c.chunks(per))
        .map(|(a, b)| cosine(a, b))
        .sum();
    sum / samples as f64
}

/// Across-sample variance of the candidate over the original's (`None` below two samples or
/// when the original does not vary across samples either).
fn input_dependence(r: &[f64], c: &[f64], samples: usize) -> Option<f64> {
    let per = r.len().checked_div(samples)?;
    if samples < 2 || per == 0 || per * samples != r.len() {
        return None;
    }
    let var = |v: &[f64]| -> f64 {
        (0..per)
            .map(|p| {
                let mean = (0..samples).map(|s| v[s * per + p]).sum::<f64>() / samples as f64;
                (0..samples)
                    .map(|s| (v[s * per + p] - mean).powi(2))
                    .sum::<f64>()
            })
            .sum()
    };
    let vr = var(r);
    (vr > 0.0).then(|| var(c) / vr)
}

fn snr_db(r: &[f64], c: &[f64]) -> Option<f64> {
    let signal: f64 = r.iter().map(|a| a * a).sum();
    let noise: f64 = r.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
    if noise == 0.0 {
        return None;
    }
    Some(10.0 * (signal.max(f64::MIN_POSITIVE) / noise).log10())
}

fn is_constant(v: &[f64]) -> bool {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    v.is_empty() || hi - lo <= 1e-7 * hi.abs().max(lo.abs()).max(1e-30)
}

/// Percent of positions whose argmax along `axis` agrees.
fn agreement(r: &[f64], c: &[f64], dims: &[usize], axis: usize) -> f64 {
    let classes = dims.get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = dims.iter().skip(axis + 1).product();
    let outer = r.len() / (classes * inner).max(1);
    let argmax = |v: &[f64], o: usize, i: usize| {
        (0..classes)
            .map(|k| v[(o * classes + k) * inner + i])
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (k, x)| if x > b.1 { (k, x) } else { b },
            )
            .0
    };
    let mut same = 0usize;
    for o in 0..outer {
        for i in 0..inner {
            same += usize::from(argmax(r, o, i) == argmax(c, o, i));
        }
    }
    100.0 * same as f64 / (outer * inner).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_equal_noisy_and_constant_outputs() {
        let r = [1.0, -2.0, 3.0, 0.5, 2.0, -1.0];
        assert_eq!(mean_cosine(&r, &r, 2), 1.0);
        assert_eq!(snr_db(&r, &r), None);
        let noisy: Vec<f64> = r.iter().map(|x| x + 0.1).collect();
        let s = snr_db(&r, &noisy).unwrap();
        // Σr² = 19.25, Σe² = 0.06
        assert!((s - 10.0 * (19.25f64 / 0.06).log10()).abs() < 1e-9, "{s}");
        assert!(is_constant(&[0.0; 6]) && !is_constant(&r));
        // Two samples of three classes: argmax 2 and 1 in both.
        assert_eq!(agreement(&r, &noisy, &[2, 3], 1), 100.0);
        let flipped = [1.0, -2.0, 0.0, 0.5, 2.0, -1.0];
        assert_eq!(agreement(&r, &flipped, &[2, 3], 1), 50.0);
    }

    /// The class axis is the Softmax's, read as ONNX reads it for the model's opset; a node of
    /// another domain that is named Softmax says nothing.
    #[test]
    fn class_axis_follows_the_softmax() {
        use crate::onnx::proto::{ModelProto, NodeProto, OperatorSetIdProto};
        let model = |opset: i64, axis: Option<i64>, domain: &str| {
            let mut n = NodeProto::new();
            n.op_type = "Softmax".into();
            n.domain = domain.into();
            n.input = vec!["x".into()];
            n.output = vec!["y".into()];
            if let Some(v) = axis {
                let mut a = crate::onnx::proto::AttributeProto::new();
                a.name = "axis".into();
                a.i = v;
                n.attribute.push(a);
            }
            let mut m = ModelProto::new();
            let mut o = OperatorSetIdProto::new();
            o.version = opset;
            m.opset_import.push(o);
            m.graph.mut_or_insert_default().node.push(n);
            Model::unchecked(m)
        };
        // Opset 13: default -1, any axis but the batch one.
        assert_eq!(class_axis(&model(13, None, ""), "y", 3), Some(2));
        assert_eq!(class_axis(&model(13, Some(1), ""), "y", 3), Some(1));
        assert_eq!(class_axis(&model(13, Some(-3), ""), "y", 3), None);
        // Before 13: default 1, coerced to 2-D there, so only the last axis is a class axis.
        assert_eq!(class_axis(&model(11, None, ""), "y", 2), Some(1));
        assert_eq!(class_axis(&model(11, None, ""), "y", 3), None);
        // Another domain's Softmax: a rank-2 output's axis 1, as for any other producer.
        assert_eq!(class_axis(&model(13, None, "com.example"), "y", 3), None);
        assert_eq!(
            class_axis(&model(13, Some(0), "com.example"), "y", 2),
            Some(1)
        );
    }

    #[test]
    fn guard_flags_collapse() {
        let f = |cosine, constant| Fidelity {
            data: ProbeData::Random,
            samples: 4,
            output: "y".into(),
            cosine,
            snr_db: Some(3.0),
            top1_agreement: None,
            reference_constant: false,
            candidate_constant: constant,
            input_dependence: None,
            non_finite: 0,
            reference_non_finite: 0,
        };
        let g = Guard::default();
        assert!(g.collapse(&f(0.95, false)).is_none());
        assert!(g.collapse(&f(0.5, false)).is_some());
        assert!(g.collapse(&f(1.0, true)).unwrap().contains("constant"));
        let e = g
            .check(
                f(0.2, false),
                vec![Suspect {
                    tensor: "conv.w".into(),
                    detail: "quantized to all zeros".into(),
                }],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv.w") && e.contains("0.2000"), "{e}");
    }
}
