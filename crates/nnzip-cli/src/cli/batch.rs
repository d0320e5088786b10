//! `nnzip batch`: plan a manifest, run a fleet (sharded, resumable), its status and report.
//! The work is in `nnzip::batch`; this module parses flags, shows progress and events, renders
//! the fleet report (text, CSV, JSON, a plain HTML table) and maps outcomes to exit codes.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nnzip::batch::aggregate::{FleetReport, FleetRow, FleetStatus, ItemState};
use nnzip::batch::manifest::{self, Item};
use nnzip::batch::runner::{self, Event, RunOptions};
use nnzip::batch::shard::Shard;
use nnzip::batch::store::{self, Out, StoreConfig};
use nnzip::runtime::Runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a manifest (JSON Lines) for the model files matching the patterns.
    Plan(PlanArgs),
    /// Compress the manifest's models (this shard's) into OUT/ID/; reruns skip finished items.
    Run(RunArgs),
    /// Done / failed / running / stale / pending counts of a fleet against its manifest.
    Status(StatusArgs),
    /// One row per model from the per-item reports, fleet totals, slowest and worst items.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Model files or glob patterns (`models/**/*.onnx`; quote them to let nnzip expand).
    #[arg(required = true, value_name = "GLOB")]
    pub patterns: Vec<String>,
    /// Options to write into every line (TOML, as `batch run --defaults`).
    #[arg(long, value_name = "FILE")]
    pub defaults: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The manifest (JSON Lines; a path or, with object storage, a URI).
    pub manifest: String,
    /// Output folder or URI (s3://bucket/prefix, gs://, az://, file://).
    #[arg(long, value_name = "DIR_OR_URI")]
    pub out: String,
    /// Options under every line's own (TOML).
    #[arg(long, value_name = "FILE")]
    pub defaults: Option<PathBuf>,
    /// Items at once on this machine; ONNX Runtime gets cores / J threads per item.
    #[arg(long, default_value_t = 1, value_name = "J")]
    pub jobs: usize,
    /// This process's shard: I/N (0-based), or `auto` from JOB_COMPLETION_INDEX (Kubernetes)
    /// or SLURM_ARRAY_TASK_ID (Slurm).
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// Shard count for `--shard auto` under Kubernetes (default: $NNZIP_SHARD_COUNT).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<u64>,
    /// Redo items recorded as failed (by default a failed item with an unchanged key is kept).
    #[arg(long)]
    pub retry_failed: bool,
    /// Events: `text` (a progress bar on a terminal, lines otherwise) or `json` (JSON lines
    /// on stdout: run, start, skip, wait, done, fail, end).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// A claim not renewed for this long counts as abandoned (seconds).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub lease: u64,
    /// How long one object-store request is retried before the run stops with exit 75.
    #[arg(long, default_value_t = 180.0, value_name = "SECONDS")]
    pub store_retry: f64,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The fleet's output folder or URI.
    pub out: String,
    /// The manifest (default: OUT/manifest.jsonl, which `batch run` writes).
    #[arg(long)]
    pub manifest: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub defaults: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The fleet's output folder or URI.
    pub out: String,
    /// Only the manifest's items (default: every item folder in OUT).
    #[arg(long)]
    pub manifest: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub defaults: Option<PathBuf>,
    /// Print JSON (rows, totals, slowest, worst).
    #[arg(long)]
    pub json: bool,
    /// Also write the rows as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also write the report as an HTML table.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// An outcome with its own exit code (some items failed, a transient failure).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub class: nnzip::errors::ErrorClass,
    pub message: String,
}

pub fn run(a: Args, ort_lib: Option<&Path>, quiet: bool) -> Result<()> {
    match a.command {
        Command::Plan(p) => plan(p),
        Command::Run(r) => run_fleet(r, ort_lib, quiet),
        Command::Status(s) => status(s),
        Command::Report(r) => report(r),
    }
}

fn defaults(p: Option<&Path>) -> Result<serde_json::Map<String, serde_json::Value>> {
    match p {
        Some(p) => Ok(manifest::load_defaults(p)?),
        None => Ok(Default::default()),
    }
}

/// The manifest's items and the folder relative paths are taken against.
fn load_manifest(
    location: &str,
    defaults_file: Option<&Path>,
    config: &StoreConfig,
) -> Result<(Vec<Item>, PathBuf)> {
    let d = defaults(defaults_file)?;
    let input = store::fetch(location, Path::new("."), config, "cannot read the manifest")?;
    let text = std::fs::read_to_string(&input.path)
        .with_context(|| format!("cannot read the manifest {location}"))?;
    let items = manifest::parse(location, &text, &d)?;
    let base = if store::is_uri(location) {
        PathBuf::from(".")
    } else {
        runner::base_of(Path::new(location.trim_start_matches("file://")))
    };
    Ok((items, base))
}

fn plan(a: PlanArgs) -> Result<()> {
    let d = defaults(a.defaults.as_deref())?;
    let mut paths = Vec::new();
    for pat in &a.patterns {
        let before = paths.len();
        if Path::new(pat).is_file() {
            paths.push(PathBuf::from(pat));
        } else {
            let g = glob::glob(pat).map_err(|e| {
                super::prune::UsageError(format!("'{pat}' is not a glob pattern: {e}"))
            })?;
            for p in g.filter_map(|p| p.ok()).filter(|p| p.is_file()) {
                paths.push(p);
            }
        }
        if paths.len() == before {
            bail!(super::prune::UsageError(format!("'{pat}' matches no file")));
        }
    }
    let mut seen = HashSet::new();
    paths.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    let mut taken = HashSet::new();
    let mut out = std::io::stdout().lock();
    for p in paths {
        let abs =
            std::fs::canonicalize(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let line = serde_json::json!({
            "id": manifest::id_for(&p, &mut taken),
            "model": abs.display().to_string(),
            "options": d,
        });
        // Validated as `batch run` will read it.
        manifest::parse("the plan", &line.to_string(), &Default::default())?;
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn shard_of(a: &RunArgs) -> Result<Shard> {
    Ok(match a.shard.as_deref() {
        None => Shard::ALL,
        Some("auto") => Shard::auto(&|k| std::env::var(k).ok(), a.shard_count)?,
        Some(s) => Shard::parse(s)?,
    })
}

/// Shows events: JSON lines on stdout, or a bar (terminal) / lines (logs) on stderr.
struct View {
    json: bool,
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
    out: Mutex<std::io::Stdout>,
}

impl View {
    fn new(json: bool, quiet: bool) -> View {
        let bar = (!json && !quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed:>4} batch {bar:25} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        View {
            json,
            quiet,
            bar,
            out: Mutex::new(std::io::stdout()),
        }
    }

    fn show(&self, e: &Event) {
        if self.json {
            if let Ok(s) = serde_json::to_string(e) {
                let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(o, "{s}");
                let _ = o.flush();
            }
            return;
        }
        if let Some(b) = &self.bar {
            match e {
                Event::Run { items, .. } => b.set_length(*items as u64),
                Event::Start { id, .. } => b.set_message(id.clone()),
                Event::Done { .. } | Event::Skip { .. } | Event::Fail { .. } => b.inc(1),
                Event::End { .. } => b.finish_and_clear(),
                Event::Wait { .. } => {}
            }
            if let Event::Fail { id, message, .. } = e {
                b.println(format!("failed: {id}: {message}"));
            }
            return;
        }
        if self.quiet {
            return;
        }
        let line = match e {
            Event::Run {
                shard,
                items,
                jobs,
                intra_threads,
            } => format!(
                "shard {shard}: {items} items, {jobs} at a time, {intra_threads} ONNX Runtime threads each"
            ),
            Event::Start { id, .. } => format!("start {id}"),
            Event::Skip { id, reason, .. } => format!("skip {id} ({reason} before)"),
            Event::Wait { id, owner, .. } => format!("wait {id} (claimed by {owner})"),
            Event::Done {
                id,
                seconds,
                bytes,
                ratio,
                ..
            } => format!("done {id}: {bytes} bytes, ratio {ratio:.2}, {seconds:.1} s"),
            Event::Fail {
                id, class, message, ..
            } => format!("failed {id} ({class}): {message}"),
            Event::End {
                done,
                skipped,
                failed,
                seconds,
            } => format!("{done} done, {skipped} skipped, {failed} failed in {seconds:.1} s"),
        };
        eprintln!("nnzip batch: {line}");
    }
}

fn run_fleet(a: RunArgs, ort_lib: Option<&Path>, quiet: bool) -> Result<()> {
    let config = StoreConfig {
        retry_timeout: Duration::from_secs_f64(a.store_retry.clamp(0.1, 3600.0)),
    };
    let shard = shard_of(&a)?;
    let (items, base) = load_manifest(&a.manifest, a.defaults.as_deref(), &config)?;
    let out = Out::open(&a.out, &config)?;
    out.check_writable()
        .map_err(|e| {
            let c = e.output_class();
            nnzip::batch::BatchError::Store(e, c)
        })
        .with_context(|| format!("cannot write the fleet's outputs to {}", a.out))?;
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    // The resolved manifest beside the outputs, for `batch status` and `batch report`
    // (every shard writes the same bytes).
    let resolved: String = items
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.model = store::resolve(&i.model, &base);
            i.options.calib = i.options.calib.map(|c| store::resolve(&c, &base));
            i.options.devices = i.options.devices.map(|d| store::resolve(&d, &base));
            manifest::line_of(&i) + "\n"
        })
        .collect();
    out.write("manifest.jsonl", resolved.into_bytes())
        .map_err(|e| {
            let c = e.output_class();
            nnzip::batch::BatchError::Store(e, c)
        })?;
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after the current steps (Ctrl-C again to quit now)");
    });
    let view = View::new(a.log_format == "json", quiet);
    let opts = RunOptions {
        shard,
        jobs: a.jobs.max(1),
        retry_failed: a.retry_failed,
        lease: Duration::from_secs(a.lease.max(1)),
        base,
        store: config,
        ort_lib: ort_lib.map(Path::to_path_buf),
    };
    let summary = runner::run(rt, &out, items, &opts, &|e| view.show(e), &cancel);
    let summary =
        match summary {
            Ok(s) => s,
            Err(nnzip::batch::BatchError::Cancelled) => {
                return Err(Exit {
                    class: nnzip::errors::ErrorClass::Interrupted,
                    message: "interrupted; a rerun resumes".into(),
                }
                .into())
            }
            Err(e) => return Err(anyhow::Error::new(e).context(
                "the fleet run stopped; a rerun resumes where it stopped (finished items are kept)",
            )),
        };
    if summary.transient > 0 {
        return Err(Exit {
            class: nnzip::errors::ErrorClass::Transient,
            message: format!(
                "{} of {} items failed in a way that may pass; rerun to retry them",
                summary.transient, summary.items
            ),
        }
        .into());
    }
    if summary.failed > 0 {
        return Err(Exit {
            class: nnzip::errors::ErrorClass::BadInput,
            message: format!(
                "{} of {} items failed (recorded in OUT/<id>/report.json; --retry-failed redoes them)",
                summary.failed, summary.items
            ),
        }
        .into());
    }
    Ok(())
}

fn manifest_or_default(
    out_location: &str,
    manifest: Option<&str>,
    defaults_file: Option<&Path>,
    config: &StoreConfig,
) -> Result<(Vec<Item>, PathBuf)> {
    match manifest {
        Some(m) => load_manifest(m, defaults_file, config),
        None => {
            let out = Out::open(out_location, config)?;
            let Some((bytes, _)) = out.read("manifest.jsonl")? else {
                bail!(super::prune::UsageError(format!(
                    "{out_location}/manifest.jsonl does not exist (no batch run wrote it): pass --manifest"
                )));
            };
            let text = String::from_utf8_lossy(&bytes);
            let items = manifest::parse(
                &format!("{out_location}/manifest.jsonl"),
                &text,
                &defaults(defaults_file)?,
            )?;
            Ok((items, PathBuf::from(".")))
        }
    }
}

fn status(a: StatusArgs) -> Result<()> {
    let config = StoreConfig::default();
    let (items, base) = manifest_or_default(
        &a.out,
        a.manifest.as_deref(),
        a.defaults.as_deref(),
        &config,
    )?;
    let out = Out::open(&a.out, &config)?;
    let s = nnzip::batch::aggregate::status(&out, &items, &base, &config)?;
    if a.json {
        return super::print_json(&s);
    }
    print!("{}", status_text(&s));
    Ok(())
}

fn status_text(s: &FleetStatus) -> String {
    let c = &s.counts;
    let mut t = format!(
        "{} items: {} done, {} failed, {} running, {} stale, {} pending\n",
        c.total, c.done, c.failed, c.running, c.stale, c.pending
    );
    for i in s.items.iter().filter(|i| i.state != ItemState::Done) {
        let state = serde_json::to_value(i.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        t.push_str(&format!("  {:<8} {}\n", state, i.id));
    }
    if !s.unlisted.is_empty() {
        t.push_str(&format!("not in the manifest: {}\n", s.unlisted.join(", ")));
    }
    t
}

fn report(a: ReportArgs) -> Result<()> {
    let config = StoreConfig::default();
    let out = Out::open(&a.out, &config)?;
    let items = match &a.manifest {
        Some(m) => Some(load_manifest(m, a.defaults.as_deref(), &config)?.0),
        None => None,
    };
    let r = nnzip::batch::aggregate::report(&out, items.as_deref())?;
    if let Some(p) = &a.csv {
        nnzip::pipeline::write_bytes(p, to_csv(&r).as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.html {
        nnzip::pipeline::write_bytes(p, to_html(&r).as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if a.json {
        return super::print_json(&r);
    }
    print!("{}", to_text(&r));
    Ok(())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn fixed(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_default()
}

/// The columns of every rendering: header and cells of a row.
const COLUMNS: [&str; 14] = [
    "id",
    "status",
    "parameters",
    "pruned",
    "onnx_bytes",
    "simplified_bytes",
    "bitstream_bytes",
    "ratio",
    "metric",
    "metric_before",
    "metric_after",
    "latency_ms_original",
    "latency_ms_compressed",
    "seconds",
];

fn cells(r: &FleetRow) -> Vec<String> {
    let lat = |f: fn(&nnzip::batch::aggregate::DeviceLatency) -> Option<f64>| {
        r.latency
            .iter()
            .map(|l| format!("{}:{}", l.device, fixed(f(l), 3)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    vec![
        r.id.clone(),
        match r.status {
            nnzip::batch::state::Status::Done => "done".into(),
            nnzip::batch::state::Status::Failed => format!(
                "failed ({})",
                r.error.as_ref().map(|e| e.class.as_str()).unwrap_or("?")
            ),
        },
        opt(r.parameters),
        fixed(r.pruned_fraction, 3),
        opt(r.onnx_bytes),
        opt(r.simplified_onnx_bytes),
        opt(r.bitstream_bytes),
        fixed(r.ratio, 2),
        r.metric.clone().unwrap_or_default(),
        fixed(r.metric_before, 2),
        fixed(r.metric_after, 2),
        lat(|l| l.original_ms),
        lat(|l| l.compressed_ms),
        format!("{:.1}", r.seconds),
    ]
}

fn to_text(r: &FleetReport) -> String {
    let rows: Vec<Vec<String>> = r.rows.iter().map(cells).collect();
    let mut width: Vec<usize> = COLUMNS.iter().map(|c| c.len()).collect();
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cs: Vec<String>| {
        cs.iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut t = line(COLUMNS.iter().map(|c| c.to_string()).collect());
    for row in rows {
        t.push_str(&line(row));
    }
    let s = &r.totals;
    t.push_str(&format!(
        "\n{} items: {} done, {} failed; {} parameters, ONNX {} bytes -> simplified {} -> bitstream {} (ratio {}); {:.1} s of item time\n",
        s.items, s.done, s.failed, s.parameters, s.onnx_bytes, s.simplified_onnx_bytes,
        s.bitstream_bytes, fixed(s.ratio, 2), s.item_seconds
    ));
    if !r.slowest.is_empty() {
        t.push_str(&format!("slowest: {}\n", r.slowest.join(", ")));
    }
    if !r.worst.is_empty() {
        t.push_str(&format!("worst: {}\n", r.worst.join(", ")));
    }
    for row in r.rows.iter().filter(|r| r.error.is_some()) {
        if let Some(e) = &row.error {
            t.push_str(&format!("failed {} ({}): {}\n", row.id, e.class, e.message));
        }
    }
    t
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn to_csv(r: &FleetReport) -> String {
    let mut t = COLUMNS.join(",") + "\n";
    for row in &r.rows {
        t.push_str(
            &cells(row)
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        t.push('\n');
    }
    t
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn to_html(r: &FleetReport) -> String {
    let mut t = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>nnzip fleet report</title>\
         <style>body{font-family:sans-serif}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}\
         td:first-child,th:first-child{text-align:left}</style></head><body>\n\
         <h1>nnzip fleet report</h1>\n<table>\n<tr>",
    );
    for c in COLUMNS {
        t.push_str(&format!("<th>{}</th>", html_escape(c)));
    }
    t.push_str("</tr>\n");
    for row in &r.rows {
        t.push_str("<tr>");
        for c in cells(row) {
            t.push_str(&format!("<td>{}</td>", html_escape(&c)));
        }
        t.push_str("</tr>\n");
    }
    t.push_str("</table>\n<pre>");
    t.push_str(&html_escape(
        to_text(r).split("\n\n").nth(1).unwrap_or_default(),
    ));
    t.push_str("</pre>\n</body></html>\n");
    t
}
