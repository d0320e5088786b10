use std::path::PathBuf;

use anyhow::{Context, Result};
use nnzip::onnx::SaveOptions;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The NNC bitstream (from `nnzip compress`).
    pub input: PathBuf,
    /// The ONNX model to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The graph of a parameters-only (--reference-compatible) bitstream; default: INPUT.onnx
    /// beside it, when the bitstream carries no topology.
    #[arg(long, value_name = "GRAPH.onnx")]
    pub graph: Option<PathBuf>,
    /// Write tensors of at least this many bytes to an external-data file beside the output
    /// (default: only when the model would pass protobuf's 2 GiB limit).
    #[arg(long, value_name = "BYTES")]
    pub external_data: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let bytes = std::fs::read(&a.input)
        .map_err(super::FileError::Read)
        .with_context(|| format!("cannot read {}", a.input.display()))?;
    let beside = super::compress::graph_path(&a.input);
    let graph_file = a
        .graph
        .clone()
        .or_else(|| beside.is_file().then_some(beside));
    let graph = match &graph_file {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(super::FileError::Read)
                .with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let model = nnzip::container::decompress(&bytes, graph.as_deref(), &Default::default())
        .with_context(|| format!("cannot decompress {}", a.input.display()))?;
    drop(bytes);
    let saved = match a.external_data {
        Some(t) => model.save(
            &a.output,
            &SaveOptions {
                external_threshold: Some(t),
                ..Default::default()
            },
        ),
        None => nnzip::modelfile::save_inline(&model, &a.output),
    };
    saved.with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "{} -> {} ({} weights)",
        a.input.display(),
        a.output.display(),
        model.weights().len()
    );
    Ok(())
}
