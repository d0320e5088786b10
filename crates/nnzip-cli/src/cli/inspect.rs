use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print JSON (keys: parameters, weight_bytes, ops, tensors, macs, ...; see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Concrete shape for an input with symbolic dims, for the MAC estimate (repeatable).
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = super::shape_arg)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// List every weight tensor in the table (default: the 25 largest).
    #[arg(long)]
    pub all: bool,
}

pub fn run(a: Args) -> Result<()> {
    let model = nnzip::onnx::Model::load(&a.model)
        .with_context(|| format!("cannot load {}", a.model.display()))?;
    let report = nnzip::inspect::inspect(&model, &a.model, &a.shapes)
        .with_context(|| format!("cannot inspect {}", a.model.display()))?;
    if a.json {
        super::print_json(&report)
    } else {
        print!("{}", report.to_text(if a.all { usize::MAX } else { 25 }));
        Ok(())
    }
}
