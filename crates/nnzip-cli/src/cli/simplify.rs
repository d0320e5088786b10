use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nnzip::fidelity::FidelityError;
use nnzip::onnx::SaveOptions;
use nnzip::pipeline::{simplify_file, PipelineError, SimplifyJob};
use nnzip::runtime::Runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The (pruned) ONNX model.
    pub model: PathBuf,
    /// Where to write the simplified model.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Calibration data (one array per input, named after it, leading sample axis; optional
    /// `labels`): enables the zero-entropy collapse and verifies on these samples.
    #[arg(long, value_name = "FILE.npz")]
    pub calib: Option<PathBuf>,
    /// Concrete shape for an input with symbolic dims (repeatable). Default: symbolic batch = 1.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = super::shape_arg)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Write tensors of at least this many bytes to an external-data file beside the output.
    #[arg(long, value_name = "BYTES")]
    pub external_data: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the result even if its outputs collapse against the input's (cosine under 0.9,
    /// constant, non-finite).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args, ort_lib: Option<&Path>) -> Result<()> {
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    let job = SimplifyJob {
        model: &a.model,
        calib: a.calib.as_deref(),
        shapes: &a.shapes,
        force: a.force,
    };
    let out = simplify_file(rt, &job).map_err(|e| {
        let what = format!("cannot simplify {}", a.model.display());
        let collapsed = matches!(e, PipelineError::Fidelity(FidelityError::Collapsed { .. }));
        anyhow::Error::new(e).context(if collapsed {
            format!("{what}: nothing was written; pass --force to write it anyway")
        } else {
            what
        })
    })?;
    if let Some(e) = &out.forced {
        eprintln!("warning: writing anyway (--force): {e}");
    }
    let opts = SaveOptions {
        external_threshold: a.external_data,
        ..Default::default()
    };
    out.model
        .save(&a.output, &opts)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    if a.json {
        super::print_json(&out.report)
    } else {
        print!("{}", nnzip::report::saved::simplify_text(&out.report));
        Ok(())
    }
}
