use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nnzip::calib::Calibration;
use nnzip::onnx::{Model, SaveOptions};
use nnzip::passes::simplify::simplify;
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
    let mut model =
        Model::load(&a.model).with_context(|| format!("cannot load {}", a.model.display()))?;
    let input = model.clone();
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    let calib = match &a.calib {
        Some(p) => Some(
            Calibration::load(p, &model)
                .with_context(|| format!("cannot use calibration data {}", p.display()))?,
        ),
        None => None,
    };
    let report =
        simplify(&mut model, rt, calib.as_ref(), &a.shapes).context("simplification failed")?;
    if !report.verification.within_tolerance && !a.force {
        bail!(nnzip::pipeline::PipelineError::SimplifyMismatch {
            diff: report.verification.max_abs_diff,
            scale: report.verification.max_abs_output,
        });
    }
    let changed: Vec<String> = report
        .passes
        .iter()
        .filter(|p| p.changed)
        .map(|p| p.pass.clone())
        .collect();
    super::guard(
        rt,
        &input,
        &model,
        calib.as_ref(),
        &a.shapes,
        (&nnzip::fidelity::Guard::default(), a.force),
        &|| {
            changed
                .iter()
                .map(|p| nnzip::fidelity::Suspect {
                    tensor: format!("pass {p}"),
                    detail: "changed the model".into(),
                })
                .collect()
        },
    )?;
    drop(input);
    let opts = SaveOptions {
        external_threshold: a.external_data,
        ..Default::default()
    };
    model
        .save(&a.output, &opts)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    if a.json {
        super::print_json(&report)
    } else {
        print!("{}", nnzip::report::saved::simplify_text(&report));
        Ok(())
    }
}
