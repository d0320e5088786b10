//! The whole job: import → optional prune → simplify → NNC encode, then decode and measure.
//! The bitstream is verified by decoding it back into the model whose metric and latency the
//! report gives.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::bench::{bench, BenchError, BenchOptions};
use crate::calib::{evaluate, run_model, CalibError, Calibration, Metric};
use crate::container::{
    compress, compress_reference_compatible, decompress, ContainerError, ContainerOptions,
};
use crate::onnx::{Model, OnnxError, SaveOptions};
use crate::passes::simplify::{simplify, ModelStats};
use crate::passes::{Pass, PassContext, PassError};
use crate::ratecontrol::{allocate, best_single_qp, RateError};
use crate::report::{CompressReport, SingleQp, Stage};
use crate::runtime::Runtime;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Rate(#[from] RateError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("--max-drop needs calibration data (--calib FILE.npz)")]
    MaxDropNeedsCalib,
    #[error("simplification changed the outputs by {diff:.3e} (largest output {scale:.3e}); refusing to continue")]
    SimplifyMismatch { diff: f64, scale: f64 },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to prune inside the pipeline: a pass per amount, and the amount (searched when `None`).
pub struct PruneSpec {
    pub make: Box<dyn Fn(f64) -> Box<dyn Pass>>,
    /// Fixed amount; `None` searches it (needs `max_drop` and calibration data), else the
    /// method's default.
    pub amount: Option<f64>,
    pub default_amount: f64,
}

/// Share of `--max-drop` that a searched pruning amount may spend; quantization gets the rest.
pub const PRUNE_BUDGET_SHARE: f64 = 0.5;

pub struct CompressOptions {
    pub container: ContainerOptions,
    pub prune: Option<PruneSpec>,
    pub simplify: bool,
    pub calib: Option<PathBuf>,
    pub max_drop: Option<f64>,
    pub reference_compatible: bool,
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Timed runs per model for the latency columns (0: no latency).
    pub bench_runs: usize,
    /// Also find the best single QP within `max_drop` (the reference's one knob) for comparison.
    pub compare_single_qp: bool,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            container: ContainerOptions::default(),
            prune: None,
            simplify: true,
            calib: None,
            max_drop: None,
            reference_compatible: false,
            shapes: Vec::new(),
            bench_runs: 50,
            compare_single_qp: false,
        }
    }
}

pub struct CompressOutput {
    pub bitstream: Vec<u8>,
    /// With `reference_compatible`: the graph to store beside the bitstream.
    pub graph: Option<Vec<u8>>,
    pub report: CompressReport,
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `zstd -19` size of a file.
pub fn zstd_size(p: &Path) -> Result<u64, PipelineError> {
    let io = |source| PipelineError::Io {
        path: p.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(p).map_err(io)?;
    Ok(zstd::bulk::compress(&bytes, 19).map_err(io)?.len() as u64)
}

/// Metric of `model` on the calibration data, against labels or the reference outputs.
fn metric_of(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
    reference: &crate::tensor::Tensor,
    metric: Metric,
) -> Result<f64, PipelineError> {
    let out = run_model(rt, model, calib)?;
    let t = crate::calib::metric_output(&out).ok_or(CalibError::Empty {
        path: calib.path.clone(),
    })?;
    Ok(evaluate(metric, calib, reference, t)?)
}

pub fn compress_file(
    rt: &'static Runtime,
    input: &Path,
    output_label: &str,
    opts: &CompressOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<CompressOutput, PipelineError> {
    progress("loading");
    let original = Model::load(input)?;
    let mut model = original.clone();
    let onnx_bytes = file_len(input) + crate::onnx::external_files(&original).values().sum::<u64>();
    let onnx_zstd_bytes = zstd_size(input)?;
    let before = ModelStats::of(&original, &opts.shapes)?;
    let calib = match &opts.calib {
        Some(p) => Some(Calibration::load(p, &original)?),
        None => None,
    };
    if opts.max_drop.is_some() && calib.is_none() {
        return Err(PipelineError::MaxDropNeedsCalib);
    }
    // Reference outputs and metric of the original.
    let mut metric_info = None;
    if let Some(c) = &calib {
        progress("measuring the original");
        let out = run_model(rt, &original, c)?;
        let reference = crate::calib::into_metric_output(out).ok_or(CalibError::Empty {
            path: c.path.clone(),
        })?;
        let metric = Metric::for_data(c, &reference);
        let v = evaluate(metric, c, &reference, &reference)?;
        metric_info = Some((metric, reference, v));
    }
    let ctx = PassContext {
        calib: calib.as_ref(),
        runtime: Some(rt),
        inputs: None,
    };
    let prune = match &opts.prune {
        Some(p) => match (p.amount, opts.max_drop, &calib) {
            (None, Some(x), Some(c)) => {
                progress("searching the pruning amount");
                let so = crate::passes::prune::search::SearchOptions {
                    max_drop: x * PRUNE_BUDGET_SHARE,
                    max_amount: 0.95,
                    steps: 6,
                    z: 1.0,
                };
                let (m, r, sr) = crate::passes::prune::search::search_amount(
                    &model,
                    rt,
                    c,
                    &so,
                    &*p.make,
                    &mut |_| {},
                )?;
                model = m;
                Some(serde_json::json!({ "pass": r, "search": sr }))
            }
            (amount, _, _) => {
                progress("pruning");
                let pass = (p.make)(amount.unwrap_or(p.default_amount));
                let mut ed = crate::graph::editor::Editor::new(model, Default::default());
                let r = pass.run(&mut ed, &ctx)?;
                model = ed.into_model();
                Some(serde_json::to_value(r).unwrap_or_default())
            }
        },
        None => None,
    };
    let simplify_report = if opts.simplify {
        progress("simplifying");
        let r = simplify(&mut model, rt, calib.as_ref(), &opts.shapes)?;
        if !r.verification.within_tolerance {
            return Err(PipelineError::SimplifyMismatch {
                diff: r.verification.max_abs_diff,
                scale: r.verification.max_abs_output,
            });
        }
        Some(r)
    } else {
        None
    };
    let after = ModelStats::of(&model, &opts.shapes)?;
    let mut container = opts.container.clone();
    let mut rate = None;
    let mut single = None;
    let mut single_reference = None;
    if let (Some(max_drop), Some(c), Some((metric, reference, v0))) =
        (opts.max_drop, &calib, &metric_info)
    {
        // Pruning already spent part of the budget; quantization gets the rest.
        let v_pruned = metric_of(rt, &model, c, reference, *metric)?;
        let budget = (max_drop - (v0 - v_pruned)).max(0.0);
        progress("rate control");
        let plan = allocate(rt, &model, c, &container, budget, progress)?;
        container.codec = plan.config.clone();
        rate = Some(plan);
        if opts.compare_single_qp {
            progress("best single QP");
            single =
                best_single_qp(rt, &model, c, &opts.container, budget)?.map(|(qp, _, m)| (qp, m));
            // The reference tool itself: the original model (it cannot prune or simplify), the
            // parameters-only stream of `--reference-compatible`, whole budget.
            progress("best single QP of the reference");
            let ro = ContainerOptions {
                raw_allowed: false,
                ..opts.container.clone()
            };
            single_reference =
                best_single_qp(rt, &original, c, &ro, max_drop)?.map(|(qp, bytes, metric)| {
                    SingleQp {
                        qp,
                        bitstream_bytes: bytes,
                        metric,
                    }
                });
        }
    }
    progress("encoding");
    let (bitstream, graph, stats) = if opts.reference_compatible {
        let (b, g, s) = compress_reference_compatible(&model, &container)?;
        (b, Some(g), s)
    } else {
        let (b, s) = compress(&model, &container)?;
        (b, None, s)
    };
    let best_single_qp = match single {
        Some((qp, m)) => {
            let mut o = opts.container.clone();
            o.codec.qp = qp;
            let bytes = compress(&model, &o)?.0.len() as u64;
            Some(SingleQp {
                qp,
                bitstream_bytes: bytes,
                metric: m,
            })
        }
        None => None,
    };
    progress("verifying the bitstream");
    let decoded = decompress(&bitstream, graph.as_deref(), &Default::default())?;
    let (metric, metric_before, metric_after) = match (&calib, &metric_info) {
        (Some(c), Some((metric, reference, v0))) => (
            Some(metric.name().to_string()),
            Some(*v0),
            Some(metric_of(rt, &decoded, c, reference, *metric)?),
        ),
        _ => (None, None, None),
    };
    let (mut lat_o, mut lat_c, mut ratio) = (None, None, None);
    if opts.bench_runs > 0 {
        progress("timing on ONNX Runtime");
        let dir = tempfile::tempdir().map_err(|source| PipelineError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let tmp = dir.path().join("decompressed.onnx");
        decoded.save(&tmp, &SaveOptions::default())?;
        let bo = BenchOptions {
            runs: opts.bench_runs,
            warmup: 5,
            shapes: opts.shapes.clone(),
            ..Default::default()
        };
        let r = bench(rt, input, Some(&tmp), &bo, &mut |_, _| {})?;
        lat_o = Some(r.model.median_ms);
        lat_c = r.vs.as_ref().map(|v| v.median_ms);
        ratio = r.ratio_median;
    }
    let simplified_onnx_bytes = model.to_bytes()?.len() as u64;
    let stages = vec![
        Stage {
            name: "ONNX".into(),
            bytes: onnx_bytes,
            parameters: Some(before.parameters),
        },
        Stage {
            name: "zstd -19".into(),
            bytes: onnx_zstd_bytes,
            parameters: None,
        },
        Stage {
            name: "pruned+simplified ONNX".into(),
            bytes: simplified_onnx_bytes,
            parameters: Some(after.parameters),
        },
        Stage {
            name: "NNC bitstream".into(),
            bytes: stats.bitstream_bytes,
            parameters: Some(after.parameters),
        },
    ];
    let pruned_fraction = if opts.simplify {
        1.0 - after.parameters as f64 / before.parameters.max(1) as f64
    } else {
        zero_fraction(&model)
    };
    let c = &container.codec;
    let report = CompressReport {
        input: input.display().to_string(),
        output: output_label.to_string(),
        parameters: before.parameters,
        parameters_after: after.parameters,
        pruned_fraction,
        onnx_bytes,
        onnx_zstd_bytes,
        simplified_onnx_bytes,
        bitstream_bytes: stats.bitstream_bytes,
        topology_bytes: stats.topology_bytes,
        compression_ratio_vs_onnx: onnx_bytes as f64 / stats.bitstream_bytes.max(1) as f64,
        compression_ratio_vs_zstd: onnx_zstd_bytes as f64 / stats.bitstream_bytes.max(1) as f64,
        macs: before.macs,
        macs_after: after.macs,
        metric,
        metric_before,
        metric_after,
        latency_ms_original: lat_o,
        latency_ms_compressed: lat_c,
        latency_ratio: ratio,
        stages,
        prune,
        simplify: simplify_report,
        rate_control: rate,
        best_single_qp,
        best_single_qp_reference: single_reference,
        codec: serde_json::json!({
            "qp": c.qp, "qp_density": c.qp_density, "use_dq": c.use_dq, "codebook_mode": c.codebook_mode.code(),
            "int_quant_bw": c.int_quant_bw, "row_skipping": c.row_skipping, "param_opt": c.param_opt,
            "nonweight_qp": c.nonweight_qp, "per_tensor_overrides": c.overrides.len(),
        }),
        reference_compatible: opts.reference_compatible,
    };
    Ok(CompressOutput {
        bitstream,
        graph,
        report,
    })
}

/// Fraction of zeros among prunable weights (Conv/Gemm/MatMul weights of rank ≥ 2).
fn zero_fraction(model: &Model) -> f64 {
    let (mut z, mut n) = (0usize, 0usize);
    for w in model.weights() {
        if w.dims.len() >= 2 && w.dtype == crate::tensor::DType::F32 {
            if let Ok(t) = model.read(&w.id) {
                z += t.count_zeros();
                n += t.numel();
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        z as f64 / n as f64
    }
}

/// Writes bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    crate::fsutil::write_atomic(path, |w| w.write_all(bytes)).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })
}
