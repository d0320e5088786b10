use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nnzip::bench::BenchOptions;
use nnzip::runtime::{OptLevel, Runtime, SessionOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model to time.
    pub model: PathBuf,
    /// A second model run interleaved with the first in the same process; reports vs/model ratios.
    #[arg(long, value_name = "OTHER")]
    pub vs: Option<PathBuf>,
    /// Untimed runs before timing, per model.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Timed runs per model.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Time budget in seconds instead of a run count (runs until it is spent, at least 5 runs).
    #[arg(long, value_name = "SECONDS")]
    pub time: Option<f64>,
    /// Intra-op threads (default: ONNX Runtime's choice, one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Graph optimization level: disable, basic, extended, all.
    #[arg(long, default_value = "all", value_parser = parse_level)]
    pub opt_level: OptLevel,
    /// Execution provider: cpu, cuda, tensorrt, openvino, xnnpack (must be in the loaded library).
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    /// An option of the --ep provider, passed to ONNX Runtime as given (repeatable), e.g.
    /// `--ep openvino --ep-option device_type=CPU`.
    #[arg(long = "ep-option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub ep_options: Vec<(String, String)>,
    /// Concrete shape for an input with symbolic dims (repeatable). Default: symbolic batch = 1.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = super::shape_arg)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Feed these arrays (one per input, named after it, used as given) instead of random data.
    #[arg(long, value_name = "FILE.npz")]
    pub inputs: Option<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON: {"model": {...}, "vs": {...}, "ratio_median": ...}.
    #[arg(long)]
    pub json: bool,
    /// Also report which execution provider ran which nodes, from ONNX Runtime's profile.
    #[arg(long)]
    pub placement: bool,
    /// Refuse (exit 4) when any node falls back from --ep to the CPU.
    #[arg(long)]
    pub strict_ep: bool,
    /// With --placement: keep ONNX Runtime's profile JSON here.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub devices: super::device::DeviceArgs,
}

fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_level(s: &str) -> Result<OptLevel, String> {
    OptLevel::parse(s).ok_or_else(|| format!("'{s}' is not one of disable, basic, extended, all"))
}

pub fn run(a: Args, ort_lib: Option<&Path>, quiet: bool) -> Result<()> {
    if a.devices.any() {
        return super::device::bench(device_spec(&a), &a.devices, ort_lib, quiet, a.json);
    }
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    let opts = BenchOptions {
        warmup: a.warmup,
        runs: a.runs,
        time_budget: a.time.map(Duration::from_secs_f64),
        session: SessionOptions {
            intra_threads: a.threads,
            opt_level: a.opt_level,
            provider: a.ep.clone(),
            provider_options: a.ep_options.clone(),
        },
        shapes: a.shapes.clone(),
        inputs: a.inputs.clone(),
        seed: a.seed,
        ..BenchOptions::default()
    };
    let placement = (a.placement || a.strict_ep)
        .then(|| {
            super::device::local_placement(rt, &a.model, a.strict_ep, a.profile.as_deref(), &opts)
        })
        .transpose()?;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let total = if a.time.is_some() { 0 } else { a.runs as u64 };
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} runs")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message("timing");
        b
    };
    let report = nnzip::bench::bench(rt, &a.model, a.vs.as_deref(), &opts, &mut |done, _| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("benchmark of {} failed", a.model.display()))?;
    bar.finish_and_clear();
    super::device::print_bench(&report, placement.as_ref(), a.json)
}

/// The same bench, run by nnzip on each `--device`.
fn device_spec(a: &Args) -> nnzip::device::BenchSpec {
    nnzip::device::BenchSpec {
        warmup: a.warmup,
        runs: a.runs,
        time: a.time,
        threads: a.threads,
        opt_level: format!("{:?}", a.opt_level).to_lowercase(),
        ep: Some(a.ep.clone()).filter(|e| !e.eq_ignore_ascii_case("cpu")),
        ep_options: a.ep_options.clone(),
        shapes: a.shapes.clone(),
        inputs: a.inputs.clone(),
        seed: a.seed,
        placement: a.placement,
        strict_ep: a.strict_ep,
        ..nnzip::device::BenchSpec::new(&a.model, a.vs.as_deref())
    }
}
