use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nnzip::container::ContainerOptions;
use nnzip::pipeline::{compress_file, write_bytes, CompressOptions};
use nnzip::runtime::Runtime;

use super::codec::CodecSettings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// The NNC bitstream to write.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub prune: super::prune_args::PruneArgs,
    /// Skip the simplify stage.
    #[arg(long)]
    pub no_simplify: bool,
    #[command(flatten)]
    pub codec: CodecSettings,
    /// Calibration data: one array per model input (named after it, leading sample axis),
    /// optional `labels`. Used by --max-drop, data-aware pruning and the metric columns.
    #[arg(long, value_name = "FILE.npz")]
    pub calib: Option<PathBuf>,
    /// Rate control: per-tensor QPs giving the smallest bitstream whose metric (top-1 accuracy
    /// with labels, else top-1 agreement, else output cosine, in percent) drops by at most X points.
    #[arg(long, value_name = "X")]
    pub max_drop: Option<f64>,
    /// Also report the best single QP within the same budget (the reference's knob).
    #[arg(long)]
    pub compare_single_qp: bool,
    /// Write a parameters-only bitstream the reference NNCodec decodes, and the graph beside it
    /// as OUT.onnx-graph (`OUT.nnc.onnx`); `nnzip decompress` accepts the pair.
    #[arg(long)]
    pub reference_compatible: bool,
    /// Concrete shape for an input with symbolic dims (repeatable). Default: symbolic batch = 1.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = super::shape_arg)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Timed runs per model for the latency columns (0 skips timing).
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as HTML with plots.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub devices: super::device::DeviceArgs,
}

/// The graph file written beside a reference-compatible bitstream.
pub fn graph_path(nnc: &Path) -> PathBuf {
    let mut s = nnc.as_os_str().to_owned();
    s.push(".onnx");
    PathBuf::from(s)
}

pub fn run(a: Args, ort_lib: Option<&Path>, quiet: bool) -> Result<()> {
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    let opts = CompressOptions {
        container: ContainerOptions {
            codec: a.codec.config(),
            ..Default::default()
        },
        prune: a.prune.spec(a.calib.is_some(), &a.shapes)?,
        simplify: !a.no_simplify,
        calib: a.calib.clone(),
        max_drop: a.max_drop,
        reference_compatible: a.reference_compatible,
        shapes: a.shapes.clone(),
        bench_runs: a.runs,
        compare_single_qp: a.compare_single_qp,
    };
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    let out = compress_file(
        rt,
        &a.model,
        &a.output.display().to_string(),
        &opts,
        &mut |m| bar.set_message(m.to_string()),
    )
    .with_context(|| format!("cannot compress {}", a.model.display()))?;
    bar.finish_and_clear();
    if let Some(g) = &out.graph {
        let gp = graph_path(&a.output);
        write_bytes(&gp, g).with_context(|| format!("cannot write {}", gp.display()))?;
    }
    write_bytes(&a.output, &out.bitstream)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    if let Some(h) = &a.html {
        let html = out.report.to_html();
        write_bytes(h, html.as_bytes()).with_context(|| format!("cannot write {}", h.display()))?;
    }
    let written = super::device::Written {
        model: &a.model,
        nnc: &a.output,
        graph: a.reference_compatible.then(|| graph_path(&a.output)),
        shapes: &a.shapes,
        runs: a.runs,
    };
    let cols = super::device::compress_columns(&a.devices, ort_lib, quiet, written)?;
    super::device::print_compress(&out.report, &out.report.to_text(), cols, a.json)
}
