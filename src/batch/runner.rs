//! `nnzip batch run`: the items of one shard, `jobs` at a time, each compressed into
//! `OUT/<id>/` with its record written last.
//!
//! Per item: fetch and hash the inputs, compute the key, skip when the record has that key,
//! claim the item (exclusive create; a stale claim is replaced), compress while a heartbeat
//! renews the lease, write the outputs, then the record, then drop the claim. A permanent
//! failure is recorded and the run goes on; a storage failure that may pass stops the run
//! (exit 75: a rerun resumes where it stopped). An item another live runner holds is put back
//! and waited for, so a shard that ends well has every one of its items finished.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::key::{unreadable_key, versions, work_key};
use super::manifest::Item;
use super::shard::Shard;
use super::state::{
    now_unix, Claim, ItemError, Owner, Record, Status, BITSTREAM, CLAIM, GRAPH, HTML, ONNX, RECORD,
};
use super::store::{fetch, resolve, Input, Out, StoreConfig, StoreError};
use super::BatchError;
use crate::errors::ErrorClass;
use crate::progress::Progress;
use crate::runtime::Runtime;

/// How to run a shard.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub shard: Shard,
    /// Items at once (each with cores / jobs ONNX Runtime threads).
    pub jobs: usize,
    /// Redo items recorded as failed with the same key.
    pub retry_failed: bool,
    /// A claim not renewed for this long is stale.
    pub lease: Duration,
    /// Relative model and calibration paths are taken against this folder (the manifest's).
    pub base: PathBuf,
    pub store: StoreConfig,
    /// The ONNX Runtime library for devices' `--device local` builds (as `--ort-lib`).
    pub ort_lib: Option<PathBuf>,
}

/// One line of `--log-format json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The run begins: its shard and how many of the manifest's items fall in it.
    Run {
        shard: String,
        items: usize,
        jobs: usize,
        intra_threads: usize,
    },
    Start {
        id: String,
        key: String,
    },
    Skip {
        id: String,
        key: String,
        /// `done`, `failed` (recorded earlier; `--retry-failed` redoes it).
        reason: String,
    },
    /// Another live runner holds the item; it is retried later.
    Wait {
        id: String,
        key: String,
        owner: String,
    },
    Done {
        id: String,
        key: String,
        seconds: f64,
        bytes: u64,
        ratio: f64,
        metric_drop: Option<f64>,
    },
    Fail {
        id: String,
        key: Option<String>,
        class: String,
        message: String,
        seconds: f64,
    },
    /// The run ends.
    End {
        done: usize,
        skipped: usize,
        failed: usize,
        seconds: f64,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Items of the shard.
    pub items: usize,
    pub done: usize,
    /// Finished before (or by another runner while this one waited).
    pub skipped: usize,
    /// Failed now, or recorded failed before with the same key.
    pub failed: usize,
    /// Failed in a way that may pass (not recorded; a rerun tries them again).
    pub transient: usize,
    /// Items not finished because the run stopped.
    pub unfinished: usize,
}

/// How one item ended.
enum Outcome {
    Done,
    Skipped,
    Failed,
    /// Failed in a way that may pass (a device unreachable): not recorded.
    Transient,
    /// Another runner holds it: try again after `Instant`.
    Busy(Instant),
}

/// Where a run stands, shared by its workers.
struct Shared<'a> {
    queue: Mutex<VecDeque<(Item, Instant)>>,
    stop: AtomicBool,
    fatal: Mutex<Option<BatchError>>,
    summary: Mutex<Summary>,
    in_flight: Mutex<usize>,
    cancel: &'a AtomicBool,
}

/// Runs the shard's items of `items` into `out`. `sink` receives the events; `cancel` stops the
/// run after the current step of each item (Ctrl-C).
pub fn run(
    rt: &'static Runtime,
    out: &Out,
    items: Vec<Item>,
    opts: &RunOptions,
    sink: &(dyn Fn(&Event) + Sync),
    cancel: &AtomicBool,
) -> Result<Summary, BatchError> {
    let start = Instant::now();
    out.check_writable()
        .map_err(|e| BatchError::Store(e, ErrorClass::Write))?;
    let mine: Vec<Item> = items
        .into_iter()
        .filter(|i| opts.shard.contains(&i.id))
        .collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let jobs = opts.jobs.clamp(1, cores.max(1));
    let intra = (cores / jobs).max(1);
    crate::runtime::set_default_intra_threads(intra);
    sink(&Event::Run {
        shard: opts.shard.to_string(),
        items: mine.len(),
        jobs,
        intra_threads: intra,
    });
    let now = Instant::now();
    let shared = Shared {
        summary: Mutex::new(Summary {
            items: mine.len(),
            ..Summary::default()
        }),
        queue: Mutex::new(mine.into_iter().map(|i| (i, now)).collect()),
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
        in_flight: Mutex::new(0),
        cancel,
    };
    let owner = Owner::me();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| worker(rt, out, opts, &owner, &shared, sink));
        }
    });
    let mut summary = lock(&shared.summary).clone();
    summary.unfinished = lock(&shared.queue).len();
    sink(&Event::End {
        done: summary.done,
        skipped: summary.skipped,
        failed: summary.failed,
        seconds: start.elapsed().as_secs_f64(),
    });
    if let Some(e) = lock(&shared.fatal).take() {
        return Err(e);
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(BatchError::Cancelled);
    }
    Ok(summary)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(
    rt: &'static Runtime,
    out: &Out,
    opts: &RunOptions,
    owner: &Owner,
    shared: &Shared<'_>,
    sink: &(dyn Fn(&Event) + Sync),
) {
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.cancel.load(Ordering::SeqCst) {
            return;
        }
        // The first item that is due; wait while only busy ones remain.
        let next = {
            let mut q = lock(&shared.queue);
            let now = Instant::now();
            match q.iter().position(|(_, due)| *due <= now) {
                Some(i) => {
                    *lock(&shared.in_flight) += 1;
                    q.remove(i)
                }
                None if q.is_empty() => return,
                None => None,
            }
        };
        let Some((item, _)) = next else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let r = process(rt, out, &item, opts, owner, shared, sink);
        *lock(&shared.in_flight) -= 1;
        let mut sum = lock(&shared.summary);
        match r {
            Ok(Outcome::Done) => sum.done += 1,
            Ok(Outcome::Skipped) => sum.skipped += 1,
            Ok(Outcome::Failed) => sum.failed += 1,
            Ok(Outcome::Transient) => sum.transient += 1,
            Ok(Outcome::Busy(due)) => lock(&shared.queue).push_back((item, due)),
            Err(e) => {
                lock(&shared.queue).push_back((item, Instant::now()));
                let mut f = lock(&shared.fatal);
                if f.is_none() {
                    *f = Some(e);
                }
                shared.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A storage error stops the run when it may pass or concerns the outputs; a missing or
/// unreadable input only fails its item.
fn input_or_stop(e: StoreError) -> Result<ItemError, BatchError> {
    match e.input_class() {
        ErrorClass::Transient => Err(BatchError::Store(e, ErrorClass::Transient)),
        c => Ok(ItemError {
            class: c.name().into(),
            message: e.to_string(),
        }),
    }
}

fn out_err(e: StoreError) -> BatchError {
    let c = e.output_class();
    BatchError::Store(e, c)
}

struct Inputs {
    model: Input,
    calib: Option<Input>,
    key: String,
}

/// One item: its key, skipped when recorded under that key, claimed, compressed under a
/// heartbeat, recorded last.
fn process(
    rt: &'static Runtime,
    out: &Out,
    item: &Item,
    opts: &RunOptions,
    owner: &Owner,
    shared: &Shared<'_>,
    sink: &(dyn Fn(&Event) + Sync),
) -> Result<Outcome, BatchError> {
    let t0 = Instant::now();
    let canonical = item.options.canonical_json();
    let inputs = match fetch_inputs(item, opts, &canonical) {
        Ok(i) => Ok(i),
        Err(e) => Err(input_or_stop(e)?),
    };
    let key = item_key(item, opts, &canonical, &inputs);
    if let Some(done) = recorded(out, item, &key, opts, sink)? {
        return Ok(done);
    }
    if let Some(busy) = claim(out, item, &key, owner, opts, sink)? {
        return Ok(busy);
    }
    out.clean_item(&item.id);
    let model = inputs
        .as_ref()
        .ok()
        .map(|i| (i.model.sha256.clone(), i.model.bytes));
    sink(&Event::Start {
        id: item.id.clone(),
        key: key.clone(),
    });
    let result = match inputs {
        Ok(i) => with_heartbeat(
            out,
            &item_path(item, CLAIM),
            owner,
            &key,
            opts.lease,
            || compress_item(rt, out, item, opts, &i, shared),
        ),
        Err(e) => Ok(Err(e)),
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            // The claim stays until its lease ends when the store is failing; a rerun on
            // the same host takes it over at once.
            let _ = out.delete(&item_path(item, CLAIM));
            return Err(e);
        }
    };
    finish(
        out,
        item,
        key,
        model,
        result,
        t0.elapsed().as_secs_f64(),
        sink,
    )
}

fn item_path(item: &Item, file: &str) -> String {
    format!("{}/{file}", item.id)
}

/// The work key. An item whose inputs cannot be read gets a key from their locations, so a
/// rerun skips it until they appear (then the key is their bytes').
fn item_key(
    item: &Item,
    opts: &RunOptions,
    canonical: &str,
    inputs: &Result<Inputs, ItemError>,
) -> String {
    match inputs {
        Ok(i) => i.key.clone(),
        Err(_) => unreadable_key(
            &resolve(&item.model, &opts.base),
            canonical,
            item.options
                .calib
                .as_deref()
                .map(|c| resolve(c, &opts.base))
                .as_deref(),
        ),
    }
}

/// The outcome of an item already recorded under `key` (done, or failed unless
/// `--retry-failed`), announced as a skip; `None` when it is to be done.
fn recorded(
    out: &Out,
    item: &Item,
    key: &str,
    opts: &RunOptions,
    sink: &(dyn Fn(&Event) + Sync),
) -> Result<Option<Outcome>, BatchError> {
    let Some((bytes, _)) = out.read(&item_path(item, RECORD)).map_err(out_err)? else {
        return Ok(None);
    };
    let Ok(r) = serde_json::from_slice::<Record>(&bytes) else {
        return Ok(None);
    };
    if r.key != key || (r.status != Status::Done && opts.retry_failed) {
        return Ok(None);
    }
    let (reason, outcome) = match r.status {
        Status::Done => ("done", Outcome::Skipped),
        Status::Failed => ("failed", Outcome::Failed),
    };
    sink(&Event::Skip {
        id: item.id.clone(),
        key: key.to_string(),
        reason: reason.into(),
    });
    Ok(Some(outcome))
}

/// Claims the item: created exclusively, or a stale claim replaced by exactly its version.
/// `Some(Busy)` when another runner holds it.
fn claim(
    out: &Out,
    item: &Item,
    key: &str,
    owner: &Owner,
    opts: &RunOptions,
    sink: &(dyn Fn(&Event) + Sync),
) -> Result<Option<Outcome>, BatchError> {
    let path = item_path(item, CLAIM);
    let claim = Claim::new(owner, key, opts.lease);
    let busy = || Some(Outcome::Busy(Instant::now() + Duration::from_secs(1)));
    if out.create_new(&path, &claim.to_bytes()).map_err(out_err)? {
        return Ok(None);
    }
    let taken = match out.read(&path).map_err(out_err)? {
        None => out.create_new(&path, &claim.to_bytes()).map_err(out_err)?,
        Some((bytes, version)) => match serde_json::from_slice::<Claim>(&bytes) {
            Ok(c) if !c.stale(now_unix()) => {
                sink(&Event::Wait {
                    id: item.id.clone(),
                    key: key.to_string(),
                    owner: format!("{} pid {}", c.owner.host, c.owner.pid),
                });
                return Ok(busy());
            }
            // Stale, or unreadable (not written by a runner of this format).
            _ => out
                .replace(&path, &version, &claim.to_bytes())
                .map_err(out_err)?,
        },
    };
    Ok(if taken { None } else { busy() })
}

/// Records the item's result (the record last, then the claim goes) and announces it. A
/// transient failure is not recorded: a rerun tries again (the run exits 75).
fn finish(
    out: &Out,
    item: &Item,
    key: String,
    model: Option<(String, u64)>,
    result: Result<Finished, ItemError>,
    seconds: f64,
    sink: &(dyn Fn(&Event) + Sync),
) -> Result<Outcome, BatchError> {
    let (status, error, report, files, event) = match result {
        Ok(done) => {
            let ev = Event::Done {
                id: item.id.clone(),
                key: key.clone(),
                seconds,
                bytes: done.bytes,
                ratio: done.ratio,
                metric_drop: done.metric_drop,
            };
            (Status::Done, None, Some(done.report), done.files, ev)
        }
        Err(e) if e.class == ErrorClass::Transient.name() => {
            out.delete(&item_path(item, CLAIM)).map_err(out_err)?;
            sink(&Event::Fail {
                id: item.id.clone(),
                key: Some(key),
                class: e.class,
                message: e.message,
                seconds,
            });
            return Ok(Outcome::Transient);
        }
        Err(e) => {
            let ev = Event::Fail {
                id: item.id.clone(),
                key: Some(key.clone()),
                class: e.class.clone(),
                message: e.message.clone(),
                seconds,
            };
            (Status::Failed, Some(e), None, Vec::new(), ev)
        }
    };
    let (model_sha256, model_bytes) = model.unzip();
    let record = Record {
        nnzip_batch: super::state::FORMAT,
        id: item.id.clone(),
        key,
        status,
        model: item.model.clone(),
        model_sha256,
        model_bytes,
        options: serde_json::to_value(&item.options).unwrap_or_default(),
        versions: versions(),
        seconds,
        finished_unix: now_unix(),
        files,
        error,
        report,
    };
    let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
    out.write(&item_path(item, RECORD), bytes)
        .map_err(out_err)?;
    out.delete(&item_path(item, CLAIM)).map_err(out_err)?;
    sink(&event);
    Ok(match status {
        Status::Done => Outcome::Done,
        Status::Failed => Outcome::Failed,
    })
}

fn fetch_inputs(item: &Item, opts: &RunOptions, canonical: &str) -> Result<Inputs, StoreError> {
    let model = fetch(
        &item.model,
        &opts.base,
        &opts.store,
        "cannot read the model",
    )?;
    let calib = match &item.options.calib {
        Some(c) => Some(fetch(
            c,
            &opts.base,
            &opts.store,
            "cannot read the calibration data",
        )?),
        None => None,
    };
    let key = work_key(
        &model.sha256,
        canonical,
        calib.as_ref().map(|c| c.sha256.as_str()),
    );
    Ok(Inputs { model, calib, key })
}

/// Runs `f` while a thread renews the claim every third of the lease.
fn with_heartbeat<T>(
    out: &Out,
    claim_rel: &str,
    owner: &Owner,
    key: &str,
    lease: Duration,
    f: impl FnOnce() -> T,
) -> T {
    let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    std::thread::scope(|s| {
        let d = done.clone();
        s.spawn(move || {
            let (m, cv) = &*d;
            let mut finished = lock(m);
            // Checked before each wait: `f` may have finished before this thread first ran.
            while !*finished {
                let (g, t) = cv
                    .wait_timeout(finished, (lease / 3).max(Duration::from_millis(200)))
                    .unwrap_or_else(|p| p.into_inner());
                finished = g;
                if t.timed_out() && !*finished {
                    // A failed renewal is retried at the next beat; the lease covers two.
                    let c = Claim::new(owner, key, lease);
                    let _ = out.write(claim_rel, c.to_bytes());
                }
            }
        });
        let r = f();
        let (m, cv) = &*done;
        *lock(m) = true;
        cv.notify_all();
        r
    })
}

/// What a finished item gives its record and event.
struct Finished {
    report: serde_json::Value,
    files: Vec<String>,
    bytes: u64,
    ratio: f64,
    metric_drop: Option<f64>,
}

/// Stops the compress job when the run stops.
struct ItemProgress<'a> {
    shared: &'a Shared<'a>,
}

impl Progress for ItemProgress<'_> {
    fn stage(&mut self, _name: &str) {}
    fn step(&mut self, _done: u64, _total: u64, _note: &str) {}
    fn cancelled(&self) -> bool {
        self.shared.cancel.load(Ordering::SeqCst) || self.shared.stop.load(Ordering::SeqCst)
    }
}

/// Compresses one item and writes its outputs (not the record). `Ok(Err(_))` is the item's
/// own failure; `Err(_)` stops the run.
fn compress_item(
    rt: &'static Runtime,
    out: &Out,
    item: &Item,
    opts: &RunOptions,
    inputs: &Inputs,
    shared: &Shared<'_>,
) -> Result<Result<Finished, ItemError>, BatchError> {
    let fail = |class: ErrorClass, message: String| {
        Ok(Err(ItemError {
            class: class.name().into(),
            message,
        }))
    };
    let copts = match item
        .options
        .to_compress_options(inputs.calib.as_ref().map(|c| c.path.clone()))
    {
        Ok(o) => o,
        Err(e) => return fail(ErrorClass::Usage, e.to_string()),
    };
    let label = format!("{}/{}/{BITSTREAM}", out.display(), item.id);
    let mut progress = ItemProgress { shared };
    let mut output =
        match crate::pipeline::compress_file(rt, &inputs.model.path, &label, &copts, &mut progress)
        {
            Ok(o) => o,
            Err(crate::pipeline::PipelineError::Cancelled) => return Err(BatchError::Cancelled),
            Err(e) => return fail(e.class(), error_chain(&e)),
        };
    output.report.input = item.model.clone();
    let mut report = serde_json::to_value(&output.report).unwrap_or_default();
    if !item.options.device.is_empty() {
        match device_columns(item, opts, inputs, &output) {
            Ok(cols) => {
                if let serde_json::Value::Object(m) = &mut report {
                    m.insert("devices".into(), cols);
                }
            }
            Err((class, message)) => return fail(class, message),
        }
    }
    let rel = |f: &str| format!("{}/{f}", item.id);
    let mut files = Vec::new();
    let graph = output.graph.take();
    if let Some(g) = &graph {
        out.write(&rel(GRAPH), g.clone()).map_err(out_err)?;
        files.push(GRAPH.to_string());
    }
    if item.options.decompressed {
        let decoded =
            crate::container::decompress(&output.bitstream, graph.as_deref(), &Default::default())
                .and_then(|m| Ok(m.to_bytes()?));
        match decoded {
            Ok(b) => {
                out.write(&rel(ONNX), b).map_err(out_err)?;
                files.push(ONNX.to_string());
            }
            Err(e) => return fail(e.class(), e.to_string()),
        }
    }
    if item.options.html {
        out.write(&rel(HTML), output.report.to_html().into_bytes())
            .map_err(out_err)?;
        files.push(HTML.to_string());
    }
    let r = &output.report;
    let finished = Finished {
        bytes: r.bitstream_bytes,
        ratio: r.compression_ratio_vs_onnx,
        metric_drop: match (r.metric_before, r.metric_after) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        },
        report,
        files: Vec::new(),
    };
    out.write(&rel(BITSTREAM), output.bitstream)
        .map_err(out_err)?;
    files.insert(0, BITSTREAM.to_string());
    Ok(Ok(Finished { files, ..finished }))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `compress --device` columns for an item: the bitstream and graph decoded here, measured on
/// each device against the model.
fn device_columns(
    item: &Item,
    opts: &RunOptions,
    inputs: &Inputs,
    output: &crate::pipeline::CompressOutput,
) -> Result<serde_json::Value, (ErrorClass, String)> {
    use crate::device::{Builds, Devices};
    let local = |e: std::io::Error| (ErrorClass::Write, format!("temp files: {e}"));
    let devices_file = item.options.devices.as_ref().map(|d| opts.base.join(d));
    let all = Devices::load(devices_file.as_deref()).map_err(device_err)?;
    let specs = item
        .options
        .device
        .iter()
        .map(|n| all.get(n).cloned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(device_err)?;
    let dir = tempfile::tempdir().map_err(local)?;
    let nnc = dir.path().join(BITSTREAM);
    std::fs::write(&nnc, &output.bitstream).map_err(local)?;
    let graph = match &output.graph {
        Some(g) => {
            let p = dir.path().join(GRAPH);
            std::fs::write(&p, g).map_err(local)?;
            Some(p)
        }
        None => None,
    };
    let spec = crate::device::BenchSpec {
        runs: item.options.runs.max(1),
        warmup: 5,
        shapes: item
            .options
            .shape
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..crate::device::BenchSpec::new(&inputs.model.path, None)
    };
    let (cols, err) = crate::device::compress_columns_for_output(
        &specs,
        &Builds::from_host(opts.ort_lib.as_deref()),
        &inputs.model.path,
        &nnc,
        graph.as_deref(),
        &spec,
        &mut |_| {},
    )
    .map_err(device_err)?;
    if let Some(e) = err {
        return Err(device_err(e));
    }
    Ok(serde_json::to_value(cols).unwrap_or_default())
}

fn device_err(e: crate::device::DeviceError) -> (ErrorClass, String) {
    (e.class(), error_chain(&e))
}

/// The manifest's folder, for relative paths.
pub fn base_of(manifest: &Path) -> PathBuf {
    match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
