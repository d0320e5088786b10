use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nnzip::batch::options::ItemOptions;
use nnzip::pipeline::{compress_file, write_bytes};
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
    /// Rate control: wall-time budget of the search in seconds (probes and bisection stop when
    /// it is spent).
    #[arg(long, default_value_t = 240.0, value_name = "SECONDS")]
    pub search_time: f64,
    /// Rate control: share of the calibration samples held out to check the choice (none
    /// under 8 samples).
    #[arg(long, default_value_t = 0.25, value_name = "F")]
    pub holdout: f64,
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
    /// One QP for every weight (--qp) and every other tensor (--nonweight-qp), as the
    /// reference encoder, instead of per-tensor steps from each tensor's statistics.
    #[arg(long)]
    pub uniform: bool,
    /// Write the result even if it fails verification (the report says so).
    #[arg(long)]
    pub force: bool,
    /// Also compress the ONNX file with zstd -19 for the report (about a minute per 66 MB).
    #[arg(long)]
    pub zstd: bool,
    /// At most this many timed runs per model for the latency columns (0 skips timing).
    #[arg(long, default_value_t = 500)]
    pub runs: usize,
    /// Time budget of the latency columns in seconds (interleaved runs of both models).
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub latency_time: f64,
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

/// The flags as a fleet item's options: the one mapping to `CompressOptions` is the library's
/// (`nnzip::batch::options`), shared with `nnzip batch` manifests.
pub fn item_options(a: &Args) -> ItemOptions {
    let c = &a.codec;
    ItemOptions {
        prune: a.prune.method.clone(),
        sparsity: a.prune.sparsity,
        global: a.prune.global,
        norm: a.prune.norm.clone(),
        round_to: a.prune.round_to,
        no_simplify: a.no_simplify,
        qp: c.qp,
        qp_density: c.qp_density,
        no_dq: c.no_dq,
        codebook: c.codebook.code(),
        bitdepth: c.bitdepth,
        row_skipping: c.row_skipping,
        no_param_opt: c.no_param_opt,
        fast: c.fast,
        nonweight_qp: c.nonweight_qp,
        calib: a.calib.as_ref().map(|p| p.display().to_string()),
        max_drop: a.max_drop,
        search_time: a.search_time,
        holdout: a.holdout,
        compare_single_qp: a.compare_single_qp,
        reference_compatible: a.reference_compatible,
        shape: a.shapes.iter().cloned().collect(),
        uniform: a.uniform,
        force: a.force,
        zstd: a.zstd,
        runs: a.runs,
        latency_time: a.latency_time,
        html: a.html.is_some(),
        decompressed: false,
        device: a.devices.device.clone(),
        devices: a
            .devices
            .file
            .devices
            .as_ref()
            .map(|p| p.display().to_string()),
        rounds: a.devices.rounds,
        cooldown: a.devices.cooldown,
    }
}

pub fn run(a: Args, ort_lib: Option<&Path>, quiet: bool) -> Result<()> {
    // Every output is checked before the work starts, so a bad path costs nothing.
    let mut outputs = vec![a.output.clone()];
    outputs.extend(a.reference_compatible.then(|| graph_path(&a.output)));
    outputs.extend(a.html.clone());
    for p in &outputs {
        nnzip::fsutil::check_writable(p)
            .map_err(super::FileError::Write)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    let opts = item_options(&a).to_compress_options(a.calib.clone())?;
    let mut progress = super::progress::CliProgress::new(quiet);
    let out = compress_file(
        rt,
        &a.model,
        &a.output.display().to_string(),
        &opts,
        &mut progress,
    );
    progress.finish();
    let out = out.map_err(|e| {
        let what = format!("cannot compress {}", a.model.display());
        let hint = super::collapse_hint(&e);
        anyhow::Error::new(e).context(match hint {
            Some(h) => format!("{what}: {h}"),
            None => what,
        })
    })?;
    if let Some(e) = &out.report.verification_failed {
        eprintln!("warning: writing anyway (--force): {e}");
    }
    write_outputs(&a, &out)?;
    let written = super::device::Written {
        model: &a.model,
        nnc: &a.output,
        graph: a.reference_compatible.then(|| graph_path(&a.output)),
        shapes: &a.shapes,
        runs: a.runs,
    };
    let cols = super::device::compress_columns(&a.devices, ort_lib, quiet, written)?;
    let mut report = out.report;
    let err = cols.and_then(|(c, e)| {
        report.devices = c;
        e
    });
    // The page again with the devices' measurements, which it shows.
    if let (Some(h), false) = (&a.html, report.devices.is_empty()) {
        write_bytes(h, report.to_html().as_bytes())
            .with_context(|| format!("cannot write {}", h.display()))?;
    }
    super::device::print_compress(&report, a.json, err)
}

/// Writes the report page, the graph (parameters-only streams) and the bitstream, each atomically;
/// if one fails, the ones already written are removed, so a failed run leaves no half result.
fn write_outputs(a: &Args, out: &nnzip::pipeline::CompressOutput) -> Result<()> {
    let html = a.html.as_ref().map(|h| (h.clone(), out.report.to_html()));
    let mut files: Vec<(PathBuf, &[u8])> = Vec::new();
    if let Some((h, page)) = &html {
        files.push((h.clone(), page.as_bytes()));
    }
    if let Some(g) = &out.graph {
        files.push((graph_path(&a.output), g));
    }
    files.push((a.output.clone(), &out.bitstream));
    let mut done: Vec<&Path> = Vec::new();
    for (path, bytes) in &files {
        if let Err(e) = write_bytes(path, bytes) {
            for p in done {
                let _ = std::fs::remove_file(p);
            }
            return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
        }
        done.push(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of `compress` that a manifest can carry is an `options` key (snake case); the
    /// rest are named here with the reason.
    #[test]
    fn every_compress_flag_is_a_manifest_option() {
        // The item's output folder holds the bitstream and the record; `--json` is the record.
        let not_in_manifests = ["output", "json", "ort_lib", "quiet", "help", "version"];
        let keys = match serde_json::to_value(super::ItemOptions::default()) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("{other:?}"),
        };
        let cmd = crate::cli::Cli::command();
        let compress = cmd.find_subcommand("compress").expect("compress");
        let mut checked = 0;
        for arg in compress.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let key = long.replace('-', "_");
            if not_in_manifests.contains(&key.as_str()) {
                continue;
            }
            assert!(
                keys.contains_key(&key),
                "--{long} has no manifest key '{key}'"
            );
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} flags checked");
        let line = format!(
            "{{\"id\": \"a\", \"model\": \"m.onnx\", \"options\": {}}}",
            serde_json::Value::Object(keys)
        );
        nnzip::batch::manifest::parse("test", &line, &Default::default()).expect("all keys parse");
    }
}
