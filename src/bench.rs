//! `nnzip bench`: inference latency on ONNX Runtime, alone or side by side with a second model
//! (interleaved in one process, so the machine's noise hits both alike).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::npz::NpzError;
use crate::onnx::{Model, OnnxError};
use crate::runtime::inputs::{random_inputs, resolve_shapes, InputError};
use crate::runtime::{peak_rss_bytes, rss_bytes, Runtime, RuntimeError, Session, SessionOptions};
use crate::tensor::Tensor;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Npz(#[from] NpzError),
    #[error("the model to compare, {other}, has inputs {theirs}, but {model} has {ours}: they cannot be fed the same data")]
    InputsDiffer {
        model: String,
        other: String,
        ours: String,
        theirs: String,
    },
    #[error("the number of timed runs must be at least 1")]
    NoRuns,
}

impl BenchError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            BenchError::Onnx(e) => e.class(),
            BenchError::Npz(e) => e.class(),
            BenchError::Runtime(
                e @ (RuntimeError::MissingInput(_) | RuntimeError::UnknownProvider(_)),
            ) => e.class(),
            BenchError::Runtime(_) => C::Runtime,
            BenchError::Input(_) | BenchError::InputsDiffer { .. } | BenchError::NoRuns => C::Usage,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub warmup: usize,
    pub runs: usize,
    /// When set, timed runs continue until this much time has passed (at least `min_runs`).
    pub time_budget: Option<Duration>,
    pub min_runs: usize,
    /// With a time budget: stop after this many runs even if time is left.
    pub max_runs: Option<usize>,
    pub session: SessionOptions,
    pub shapes: Vec<(String, Vec<usize>)>,
    pub inputs: Option<PathBuf>,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 10,
            runs: 100,
            time_budget: None,
            min_runs: 5,
            max_runs: None,
            session: SessionOptions::default(),
            shapes: Vec::new(),
            inputs: None,
            seed: 0,
        }
    }
}

/// Latency statistics of one model, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStats {
    pub path: String,
    pub runs: usize,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub min_ms: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub median_ms: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub mean_ms: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub p90_ms: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub p99_ms: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub max_ms: f64,
    pub session_create_ms: f64,
    /// Resident memory added by creating the session and running it (bytes).
    pub rss_delta_bytes: Option<i64>,
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: ModelStats,
    pub vs: Option<ModelStats>,
    /// median(vs) / median(model).
    pub ratio_median: Option<f64>,
    /// 10th and 90th percentiles of the per-pair ratios vs/model of interleaved runs.
    pub ratio_p10: Option<f64>,
    pub ratio_p90: Option<f64>,
    pub warmup: usize,
    pub intra_threads: Option<usize>,
    pub provider: String,
    pub opt_level: String,
    pub inputs: Vec<InputDesc>,
    pub ort_library: String,
    /// Peak resident memory of the whole process (bytes).
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputDesc {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(path: &Path, samples: Vec<f64>, session_ms: f64, rss: Option<i64>) -> ModelStats {
    let mut s = samples.clone();
    s.sort_by(f64::total_cmp);
    let mean = if s.is_empty() {
        f64::NAN
    } else {
        s.iter().sum::<f64>() / s.len() as f64
    };
    ModelStats {
        path: path.display().to_string(),
        runs: s.len(),
        min_ms: s.first().copied().unwrap_or(f64::NAN),
        median_ms: percentile(&s, 0.5),
        mean_ms: mean,
        p90_ms: percentile(&s, 0.9),
        p99_ms: percentile(&s, 0.99),
        max_ms: s.last().copied().unwrap_or(f64::NAN),
        session_create_ms: session_ms,
        rss_delta_bytes: rss,
        samples_ms: samples,
    }
}

/// Inputs for a bench: from `--inputs FILE.npz` (arrays by input name, used as given) or seeded
/// random data of the resolved shapes.
pub fn bench_inputs(
    model: &Model,
    opts: &BenchOptions,
) -> Result<Vec<(String, Tensor)>, BenchError> {
    let ins = model.inputs();
    if let Some(p) = &opts.inputs {
        let arrays = crate::npz::read_npz(p)?;
        return ins
            .iter()
            .map(|vi| {
                arrays
                    .iter()
                    .find(|(n, _)| n == &vi.name)
                    .cloned()
                    .ok_or_else(|| {
                        BenchError::Runtime(RuntimeError::MissingInput(format!(
                            "{} (not in {})",
                            vi.name,
                            p.display()
                        )))
                    })
            })
            .collect();
    }
    let shapes = resolve_shapes(&ins, &opts.shapes)?;
    Ok(random_inputs(&ins, &shapes, opts.seed)?)
}

struct Contender {
    path: PathBuf,
    session: Session,
    values: Vec<(String, ort::value::DynValue)>,
    session_ms: f64,
    rss_before: Option<u64>,
    samples: Vec<f64>,
}

impl Contender {
    fn new(
        rt: &Runtime,
        subject: &Subject<'_>,
        inputs: &[(String, Tensor)],
        opts: &SessionOptions,
    ) -> Result<Contender, BenchError> {
        let path = subject.path;
        let rss_before = rss_bytes();
        let t0 = Instant::now();
        let session = Session::from_file_io(
            rt,
            path,
            subject.inputs.clone(),
            subject.outputs.clone(),
            opts,
        )?;
        let session_ms = t0.elapsed().as_secs_f64() * 1e3;
        let values = session.prepare(inputs)?;
        Ok(Contender {
            path: path.to_path_buf(),
            session,
            values,
            session_ms,
            rss_before,
            samples: Vec::new(),
        })
    }

    fn run_once(&mut self) -> Result<f64, BenchError> {
        let t0 = Instant::now();
        self.session.run_discard(&self.values)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn finish(self, rss_after: Option<u64>) -> ModelStats {
        let rss = match (self.rss_before, rss_after) {
            (Some(a), Some(b)) => Some(b as i64 - a as i64),
            _ => None,
        };
        stats(&self.path, self.samples, self.session_ms, rss)
    }
}

/// A model file to time, with its interface (so the file need not be loaded here).
pub struct Subject<'a> {
    pub path: &'a Path,
    pub inputs: Vec<crate::onnx::ValueInfo>,
    pub outputs: Vec<crate::onnx::ValueInfo>,
}

impl<'a> Subject<'a> {
    pub fn of(path: &'a Path, model: &Model) -> Subject<'a> {
        Subject {
            path,
            inputs: model.inputs(),
            outputs: model.outputs(),
        }
    }
}

/// Benchmarks `path`, and `vs` interleaved with it when given. `progress` is told (done, total).
pub fn bench(
    rt: &Runtime,
    path: &Path,
    vs: Option<&Path>,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BenchReport, BenchError> {
    if opts.runs == 0 && opts.time_budget.is_none() {
        return Err(BenchError::NoRuns);
    }
    let model = Model::load(path)?;
    let inputs = bench_inputs(&model, opts)?;
    let a = Subject::of(path, &model);
    let b = match vs {
        Some(p) => {
            let other = Model::load(p)?;
            let names = |m: &Model| {
                let mut v: Vec<String> = m.inputs().into_iter().map(|i| i.name).collect();
                v.sort();
                v
            };
            if names(&model) != names(&other) {
                return Err(BenchError::InputsDiffer {
                    model: path.display().to_string(),
                    other: p.display().to_string(),
                    ours: names(&model).join(", "),
                    theirs: names(&other).join(", "),
                });
            }
            Some(Subject::of(p, &other))
        }
        None => None,
    };
    drop(model);
    bench_subjects(rt, &a, b.as_ref(), &inputs, opts, progress)
}

/// A session for `subject`, warmed up.
fn warmed(
    rt: &Runtime,
    subject: &Subject<'_>,
    inputs: &[(String, Tensor)],
    opts: &BenchOptions,
) -> Result<Contender, BenchError> {
    let mut c = Contender::new(rt, subject, inputs, &opts.session)?;
    for _ in 0..opts.warmup {
        c.run_once()?;
    }
    Ok(c)
}

/// The timed runs: `runs` of them, or as many as the time budget allows (between the least
/// and the most asked for); with a second model, one run of each a round.
fn interleave(
    a: &mut Contender,
    mut b: Option<&mut Contender>,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), BenchError> {
    let start = Instant::now();
    let total = opts.runs.max(opts.min_runs);
    let mut i = 0usize;
    loop {
        let more = match opts.time_budget {
            Some(t) => {
                (start.elapsed() < t || i < opts.min_runs)
                    && opts.max_runs.is_none_or(|m| i < m.max(opts.min_runs))
            }
            None => i < opts.runs,
        };
        if !more {
            break;
        }
        // Alternate the order within each pair so neither model always runs on a warm cache.
        match b.as_deref_mut() {
            Some(b) if i % 2 == 1 => {
                let tb = b.run_once()?;
                let ta = a.run_once()?;
                b.samples.push(tb);
                a.samples.push(ta);
            }
            Some(b) => {
                let ta = a.run_once()?;
                let tb = b.run_once()?;
                a.samples.push(ta);
                b.samples.push(tb);
            }
            None => {
                let ta = a.run_once()?;
                a.samples.push(ta);
            }
        }
        i += 1;
        progress(i, if opts.time_budget.is_some() { 0 } else { total });
    }
    Ok(())
}

/// Benchmarks model files on `inputs`, interleaved when there are two.
pub fn bench_subjects(
    rt: &Runtime,
    subject: &Subject<'_>,
    vs: Option<&Subject<'_>>,
    inputs: &[(String, Tensor)],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BenchReport, BenchError> {
    if opts.runs == 0 && opts.time_budget.is_none() {
        return Err(BenchError::NoRuns);
    }
    let mut a = warmed(rt, subject, inputs, opts)?;
    let rss_a = rss_bytes();
    let mut b = vs.map(|v| warmed(rt, v, inputs, opts)).transpose()?;
    let rss_b = rss_bytes();
    interleave(&mut a, b.as_mut(), opts, progress)?;
    let pairs: Option<Vec<f64>> = b.as_ref().map(|b| {
        let mut r: Vec<f64> = a
            .samples
            .iter()
            .zip(&b.samples)
            .map(|(x, y)| y / x)
            .collect();
        r.sort_by(f64::total_cmp);
        r
    });
    let ma = a.finish(rss_a);
    let mb = b.map(|b| b.finish(rss_b));
    let ratio_median = mb.as_ref().map(|m| m.median_ms / ma.median_ms);
    Ok(BenchReport {
        ratio_p10: pairs.as_ref().map(|r| percentile(r, 0.1)),
        ratio_p90: pairs.as_ref().map(|r| percentile(r, 0.9)),
        model: ma,
        vs: mb,
        ratio_median,
        warmup: opts.warmup,
        intra_threads: opts.session.intra_threads,
        provider: if opts.session.provider.is_empty() {
            "cpu".into()
        } else {
            opts.session.provider.clone()
        },
        opt_level: format!("{:?}", opts.session.opt_level).to_lowercase(),
        inputs: inputs
            .iter()
            .map(|(n, t)| InputDesc {
                name: n.clone(),
                dtype: t.dtype.name(),
                shape: t.dims.clone(),
            })
            .collect(),
        ort_library: rt.lib.display().to_string(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let row = |o: &mut String, label: &str, m: &ModelStats| {
            let _ = writeln!(
                o,
                "{label:<6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6} {:>10.1}  {}",
                m.min_ms,
                m.median_ms,
                m.mean_ms,
                m.p90_ms,
                m.p99_ms,
                m.runs,
                m.session_create_ms,
                m.path
            );
        };
        let _ = writeln!(
            o,
            "ONNX Runtime ({}), provider {}, threads {}, optimization {}, inputs {}",
            self.ort_library,
            self.provider,
            self.intra_threads
                .map(|t| t.to_string())
                .unwrap_or_else(|| "default".into()),
            self.opt_level,
            self.inputs
                .iter()
                .map(|i| format!(
                    "{}={}:{}",
                    i.name,
                    i.dtype,
                    i.shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("x")
                ))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            o,
            "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10}  model",
            "", "min ms", "median", "mean", "p90", "p99", "runs", "session ms"
        );
        row(&mut o, "model", &self.model);
        if let Some(v) = &self.vs {
            row(&mut o, "vs", v);
        }
        if let (Some(r), Some(lo), Some(hi)) = (self.ratio_median, self.ratio_p10, self.ratio_p90) {
            let _ = writeln!(
                o,
                "ratio  vs/model median latency {r:.3} (per-pair p10 {lo:.3}, p90 {hi:.3})"
            );
        }
        if let Some(p) = self.peak_rss_bytes {
            let _ = writeln!(o, "peak RSS {}", crate::inspect::bytes_h(p));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.9), 90.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
