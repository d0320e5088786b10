//! Measuring on devices: `bench --device` and the per-device columns of `compress --device`.
//!
//! The device runs `nnzip bench --json` itself (its own nnzip, or one pushed from here), so
//! the timing loop never crosses the network: only files go out and one JSON document comes
//! back per round. Rounds are spread by a cool-down, each framed by a thermal reading.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{DeviceSpec, Locate};
use super::probe::{self, DeviceFacts, ThermalReading};
use super::transport::{interrupted, sh_quote, Connection, Transfer};
use super::DeviceError;
use crate::onnx::Model;

/// What to run: the options of `nnzip bench`, passed through to nnzip on the device.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub model: PathBuf,
    pub vs: Option<PathBuf>,
    pub warmup: usize,
    pub runs: usize,
    /// Time budget per round in seconds instead of a run count.
    pub time: Option<f64>,
    /// Overrides the device's `threads`.
    pub threads: Option<usize>,
    /// `disable`, `basic`, `extended` or `all`.
    pub opt_level: String,
    /// Overrides the device's `ep` (`None`: the device's, else CPU).
    pub ep: Option<String>,
    /// Options of `ep` when it is given here; otherwise the device's `ep_options` go with the
    /// device's `ep`.
    pub ep_options: Vec<(String, String)>,
    pub shapes: Vec<(String, Vec<usize>)>,
    pub inputs: Option<PathBuf>,
    pub seed: u64,
    pub placement: bool,
    pub strict_ep: bool,
}

impl BenchSpec {
    pub fn new(model: &Path, vs: Option<&Path>) -> BenchSpec {
        BenchSpec {
            model: model.to_path_buf(),
            vs: vs.map(Path::to_path_buf),
            warmup: 10,
            runs: 100,
            time: None,
            threads: None,
            opt_level: "all".into(),
            ep: None,
            ep_options: Vec::new(),
            shapes: Vec::new(),
            inputs: None,
            seed: 0,
            placement: false,
            strict_ep: false,
        }
    }
}

/// How often to measure: `count` rounds, `cooldown` apart.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    pub count: usize,
    pub cooldown: Duration,
}

impl Default for Rounds {
    fn default() -> Self {
        Rounds {
            count: 1,
            cooldown: Duration::ZERO,
        }
    }
}

/// Builds nnzip can push to a device that has none: this machine's own for its architecture,
/// and `DIST/<arch>/nnzip` with `DIST/<arch>/libonnxruntime.so*` (what
/// `scripts/build-device.sh ARCH` makes) for others.
#[derive(Debug, Clone, Default)]
pub struct Builds {
    pub host_nnzip: Option<PathBuf>,
    pub host_ort: Option<PathBuf>,
    pub dist: Vec<PathBuf>,
}

impl Builds {
    /// The running binary, the ONNX Runtime library it would load, `$NNZIP_DEVICE_DIST` and
    /// `dist/` of the repository.
    pub fn from_host(ort_lib: Option<&Path>) -> Builds {
        let mut dist: Vec<PathBuf> = std::env::var_os("NNZIP_DEVICE_DIST")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        dist.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist"));
        Builds {
            host_nnzip: std::env::current_exe().ok(),
            host_ort: crate::runtime::locate_library(ort_lib).ok().map(|(p, _)| p),
            dist,
        }
    }

    /// nnzip and ONNX Runtime for `arch` (as `uname -m` says it).
    pub fn for_arch(&self, arch: &str) -> Option<(PathBuf, PathBuf)> {
        if arch == std::env::consts::ARCH {
            if let (Some(n), Some(o)) = (&self.host_nnzip, &self.host_ort) {
                return Some((n.clone(), o.clone()));
            }
        }
        self.dist.iter().find_map(|d| {
            let d = d.join(arch);
            let n = d.join("nnzip");
            let lib = std::fs::read_dir(&d).ok()?.find_map(|e| {
                let p = e.ok()?.path();
                let name = p.file_name()?.to_str()?.to_string();
                name.starts_with("libonnxruntime.so").then_some(p)
            })?;
            n.is_file().then_some((n, lib))
        })
    }
}

/// Temperature and clocks around a measurement, and what they say about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ThermalSummary {
    pub before: ThermalReading,
    pub after: ThermalReading,
    /// The firmware reported throttling, or the CPU clock dropped by more than 10%.
    pub throttled: bool,
    pub warnings: Vec<String>,
}

/// One round of `--rounds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: usize,
    pub model_median_ms: Option<f64>,
    pub vs_median_ms: Option<f64>,
    pub ratio_median: Option<f64>,
    pub ratio_p10: Option<f64>,
    pub ratio_p90: Option<f64>,
    pub thermal: ThermalSummary,
}

/// The device as the report names it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub transport: String,
    pub arch: String,
    pub model: String,
    pub cpu: String,
    pub cores: Option<usize>,
    pub os: String,
    pub glibc: Option<String>,
    pub governor: Option<String>,
    pub ort_version: Option<String>,
    pub ort_library: Option<String>,
    pub ort_sha256: Option<String>,
    pub providers: Vec<String>,
    /// The nnzip that ran on the device (its path there).
    pub nnzip: Option<String>,
    pub nnzip_pushed: bool,
    pub taskset: Option<String>,
}

/// One device's `bench` result: the JSON `nnzip bench` prints (of the median round), plus the
/// device, its thermal state, every round, what was sent, and whether it all ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceBench {
    #[serde(flatten)]
    pub report: serde_json::Map<String, Value>,
    pub device: DeviceInfo,
    pub thermal: ThermalSummary,
    pub rounds: Vec<RoundSummary>,
    /// Median decode time of the `.nnc` on the device (compress only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    pub transfer: Transfer,
    /// False when a round or step failed or was interrupted; `error` says why.
    pub complete: bool,
    pub error: Option<String>,
}

impl DeviceBench {
    fn empty(name: &str) -> DeviceBench {
        DeviceBench {
            report: serde_json::Map::new(),
            device: DeviceInfo {
                name: name.to_string(),
                ..Default::default()
            },
            thermal: ThermalSummary::default(),
            rounds: Vec::new(),
            decode_ms: None,
            transfer: Transfer::default(),
            complete: false,
            error: None,
        }
    }

    fn num(&self, path: &[&str]) -> Option<f64> {
        let mut v = self.report.get(*path.first()?)?;
        for k in &path[1..] {
            v = v.get(k)?;
        }
        v.as_f64()
    }

    pub fn model_median_ms(&self) -> Option<f64> {
        self.num(&["model", "median_ms"])
    }

    pub fn vs_median_ms(&self) -> Option<f64> {
        self.num(&["vs", "median_ms"])
    }

    pub fn ratio_median(&self) -> Option<f64> {
        self.num(&["ratio_median"])
    }
}

/// A device connected, probed and ready to run nnzip.
struct Target {
    conn: Connection,
    facts: DeviceFacts,
    nnzip: String,
    pushed: bool,
    ort: Option<String>,
}

fn remote_path(conn: &Connection, p: &str) -> String {
    match p.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", conn.home),
        None => p.to_string(),
    }
}

/// Which nnzip runs on the device, pushing one when needed (`local` runs this very binary).
fn resolve_nnzip(
    conn: &mut Connection,
    facts: &DeviceFacts,
    builds: &Builds,
) -> Result<(String, bool), DeviceError> {
    let missing = |reason: String| DeviceError::NnzipMissing {
        device: facts.name.clone(),
        reason,
    };
    if let Locate::Path(p) = &conn.spec.nnzip {
        let p = remote_path(conn, p);
        let out = conn.run(
            &format!("[ -x {} ]", sh_quote(&p)),
            None,
            conn.spec.connect_timeout,
            "look for nnzip",
        )?;
        return if out.success() {
            Ok((p, false))
        } else {
            Err(missing(format!("{p} is not an executable file there")))
        };
    }
    if conn.spec.is_local() {
        let exe = builds
            .host_nnzip
            .as_ref()
            .ok_or_else(|| missing("the running nnzip's path is unknown".into()))?;
        return Ok((exe.display().to_string(), false));
    }
    if let Some(p) = &facts.nnzip_on_path {
        return Ok((p.clone(), false));
    }
    let (bin, _) = builds.for_arch(&facts.arch).ok_or_else(|| {
        missing(format!(
            "none on its PATH, and no nnzip build for {arch} here to push \
             (`bash scripts/build-device.sh {arch}` makes one in dist/{arch}/)",
            arch = facts.arch
        ))
    })?;
    let pushed = conn.push(&[&bin])?;
    Ok((pushed.into_iter().next().unwrap_or_default(), true))
}

/// The library nnzip on the device is told to load, if any (else it searches its own).
fn resolve_ort(
    conn: &mut Connection,
    facts: &DeviceFacts,
    builds: &Builds,
    pushed_nnzip: bool,
) -> Result<Option<String>, DeviceError> {
    match &conn.spec.ort {
        Locate::Path(p) => Ok(Some(remote_path(conn, p))),
        Locate::Auto if conn.spec.is_local() => {
            Ok(builds.host_ort.as_ref().map(|p| p.display().to_string()))
        }
        // A pushed nnzip has no ONNX Runtime of its own beside it: push the matching one.
        Locate::Auto if pushed_nnzip => match builds.for_arch(&facts.arch) {
            Some((_, lib)) => Ok(Some(conn.push_named(&lib)?)),
            None => Ok(None),
        },
        Locate::Auto => Ok(None),
    }
}

/// `nnzip [--ort-lib L] -q ARGS...`, quoted, under `taskset -c` when the device pins CPUs.
fn nnzip_command(t: &Target, args: &[String]) -> String {
    let mut words: Vec<String> = Vec::new();
    if let (Some(cpus), true) = (&t.conn.spec.cpus, t.facts.taskset) {
        words.extend(["taskset".into(), "-c".into(), cpus.clone()]);
    }
    words.push(t.nnzip.clone());
    if let Some(o) = &t.ort {
        words.extend(["--ort-lib".into(), o.clone()]);
    }
    words.push("-q".into());
    words.extend(args.iter().cloned());
    words
        .iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs nnzip on the device (guarded, in the work folder) and returns its stdout.
fn run_nnzip(
    t: &mut Target,
    args: &[String],
    timeout: Duration,
    step: &str,
) -> Result<Vec<u8>, DeviceError> {
    let workdir = match &t.conn.spec.workdir {
        Some(w) => remote_path(&t.conn, w),
        None => t.conn.cache_dir(),
    };
    let cmd = nnzip_command(t, args);
    let out = t.conn.run_guarded(Some(&workdir), &cmd, timeout, step)?;
    if out.success() {
        return Ok(out.stdout);
    }
    let stderr = out.stderr.trim().to_string();
    let device = t.facts.name.clone();
    Err(match out.code {
        Some(126 | 127) => DeviceError::NnzipMissing {
            device,
            reason: format!("{} cannot be run: {stderr}", t.nnzip),
        },
        _ if stderr.contains("GLIBC_") => DeviceError::Unsupported {
            device,
            reason: format!(
                "{} needs a newer glibc than the device has: {stderr}",
                t.nnzip
            ),
        },
        code => DeviceError::Remote {
            device,
            step: step.to_string(),
            code: code.unwrap_or(-1),
            stderr,
        },
    })
}

fn connect(spec: &DeviceSpec, builds: &Builds, ep: Option<&str>) -> Result<Target, DeviceError> {
    let mut conn = Connection::open(spec)?;
    let mut facts = probe::system_facts(&mut conn)?;
    probe::check_supported(&facts, matches!(spec.ort, Locate::Path(_)))?;
    let (nnzip, pushed) = resolve_nnzip(&mut conn, &facts, builds)?;
    let ort = resolve_ort(&mut conn, &facts, builds, pushed)?;
    let mut t = Target {
        conn,
        facts: facts.clone(),
        nnzip,
        pushed,
        ort,
    };
    // Loading ONNX Runtime under an emulator or on a slow board takes a while.
    let timeout = spec.connect_timeout + Duration::from_secs(120);
    let args: Vec<String> = ["device", "probe", "local", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = run_nnzip(&mut t, &args, timeout, "nnzip device probe local")?;
    let remote: DeviceFacts = serde_json::from_slice(&out).map_err(|e| DeviceError::BadOutput {
        device: spec.name.clone(),
        reason: format!("device probe: {e}"),
    })?;
    facts.runtime = remote.runtime;
    if let Some(ep) = ep {
        probe::check_provider(&facts, ep)?;
    }
    t.facts = facts;
    Ok(t)
}

/// Probes a device: the system facts and what nnzip there reports of its ONNX Runtime.
pub fn probe_device(spec: &DeviceSpec, builds: &Builds) -> Result<DeviceFacts, DeviceError> {
    Ok(connect(spec, builds, None)?.facts)
}

fn info_of(t: &Target) -> DeviceInfo {
    let f = &t.facts;
    let r = f.runtime.as_ref();
    DeviceInfo {
        name: f.name.clone(),
        transport: if t.conn.spec.is_local() {
            "local"
        } else {
            "ssh"
        }
        .into(),
        arch: f.arch.clone(),
        model: f.model.clone(),
        cpu: f.cpu.clone(),
        cores: f.cores,
        os: f.os.clone(),
        glibc: f.glibc.clone(),
        governor: f.governor.clone(),
        ort_version: r.map(|r| r.ort_version.clone()),
        ort_library: r.map(|r| r.ort_library.clone()),
        ort_sha256: r.map(|r| r.ort_sha256.clone()),
        providers: r.map(|r| r.providers.clone()).unwrap_or_default(),
        nnzip: Some(t.nnzip.clone()),
        nnzip_pushed: t.pushed,
        taskset: t.conn.spec.cpus.clone().filter(|_| t.facts.taskset),
    }
}

/// The `nnzip bench` arguments for the device, with the device's copies of the files.
fn bench_args(t: &Target, spec: &BenchSpec, files: &Files) -> Vec<String> {
    let mut a: Vec<String> = vec!["bench".into(), files.model.clone()];
    if let Some(v) = &files.vs {
        a.extend(["--vs".into(), v.clone()]);
    }
    a.extend([
        "--json".into(),
        "--warmup".into(),
        spec.warmup.to_string(),
        "--runs".into(),
        spec.runs.to_string(),
        "--opt-level".into(),
        spec.opt_level.clone(),
        "--seed".into(),
        spec.seed.to_string(),
    ]);
    if let Some(s) = spec.time {
        a.extend(["--time".into(), s.to_string()]);
    }
    if let Some(n) = spec.threads.or(t.conn.spec.threads) {
        a.extend(["--threads".into(), n.to_string()]);
    }
    if let Some((ep, options)) = effective_ep(spec, &t.conn.spec) {
        a.extend(["--ep".into(), ep]);
        for (k, v) in options {
            a.extend(["--ep-option".into(), format!("{k}={v}")]);
        }
    }
    for (name, dims) in &spec.shapes {
        let d = dims.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        a.extend(["--shape".into(), format!("{name}={}", d.join("x"))]);
    }
    if let Some(i) = &files.inputs {
        a.extend(["--inputs".into(), i.clone()]);
    }
    if spec.placement {
        a.push("--placement".into());
    }
    if spec.strict_ep {
        a.push("--strict-ep".into());
    }
    a
}

/// The provider a bench asks for and its options: the bench's own, else the device's.
fn effective_ep(spec: &BenchSpec, dev: &DeviceSpec) -> Option<(String, Vec<(String, String)>)> {
    match spec.ep.clone().filter(|e| !e.eq_ignore_ascii_case("cpu")) {
        Some(e) => Some((e, spec.ep_options.clone())),
        None => dev.ep.clone().map(|e| (e, dev.ep_options.clone())),
    }
}

/// The device's paths of the files a bench needs.
struct Files {
    model: String,
    vs: Option<String>,
    inputs: Option<String>,
    nnc: Option<String>,
}

/// Checks the models here (a broken file is refused before anything is sent) and pushes them. A
/// model with external data files goes as one inline copy written here (the device's cache is
/// one file per content hash); one over protobuf's 2 GiB limit cannot, and is refused.
fn push_files(t: &mut Target, spec: &BenchSpec, nnc: Option<&Path>) -> Result<Files, DeviceError> {
    let tmp = tempfile::tempdir().map_err(|source| DeviceError::LocalFile {
        path: std::env::temp_dir(),
        source,
    })?;
    let mut sent: Vec<PathBuf> = Vec::new();
    for (i, m) in std::iter::once(&spec.model)
        .chain(spec.vs.iter())
        .enumerate()
    {
        let model = Model::load(m)?;
        if crate::onnx::external_files(&model).is_empty() {
            sent.push(m.clone());
            continue;
        }
        if crate::modelfile::inline_size(&model) > INLINE_LIMIT {
            return Err(DeviceError::Unsupported {
                device: t.facts.name.clone(),
                reason: format!(
                    "{} keeps over 2 GiB in external data files, which --device cannot send \
                     as one file yet",
                    m.display()
                ),
            });
        }
        let inline = tmp.path().join(format!("model{i}.onnx"));
        let opts = crate::onnx::SaveOptions {
            auto_external_above: u64::MAX,
            ..Default::default()
        };
        model.save(&inline, &opts)?;
        sent.push(inline);
    }
    let mut list: Vec<&Path> = sent.iter().map(PathBuf::as_path).collect();
    list.extend(spec.inputs.as_deref());
    list.extend(nnc);
    let mut remote = t.conn.push(&list)?.into_iter();
    Ok(Files {
        model: remote.next().unwrap_or_default(),
        vs: spec.vs.as_ref().and_then(|_| remote.next()),
        inputs: spec.inputs.as_ref().and_then(|_| remote.next()),
        nnc: nnc.and_then(|_| remote.next()),
    })
}

/// Protobuf's 2 GiB limit less headroom for the graph.
const INLINE_LIMIT: u64 = (2u64 << 30) - (64 << 20);

/// A model the device's runtime refuses says so with its IR version and opset.
fn explain_refusal(t: &Target, spec: &BenchSpec, e: DeviceError) -> DeviceError {
    let DeviceError::Remote {
        code: 3 | 4,
        stderr,
        ..
    } = &e
    else {
        return e;
    };
    let low = stderr.to_ascii_lowercase();
    if !(low.contains("ir version") || low.contains("opset")) {
        return e;
    }
    let (model, ir, opset) = [Some(&spec.model), spec.vs.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| Model::load(p).ok().map(|m| (p, m)))
        .map(|(p, m)| {
            (
                p.display().to_string(),
                m.proto.ir_version,
                m.opset().unwrap_or(0),
            )
        })
        .max_by_key(|(_, ir, op)| (*ir, *op))
        .unwrap_or_default();
    DeviceError::ModelRefused {
        device: t.facts.name.clone(),
        ort_version: t
            .facts
            .runtime
            .as_ref()
            .map(|r| r.ort_version.clone())
            .unwrap_or_default(),
        model,
        ir,
        opset,
        reason: stderr.lines().last().unwrap_or("").trim().to_string(),
    }
}

fn summarize_thermal(
    before: ThermalReading,
    after: ThermalReading,
    governor: Option<&str>,
) -> ThermalSummary {
    let mut warnings = Vec::new();
    let mut throttled = false;
    if let Some(bits) = after.throttle_bits() {
        let now = bits & 0xf;
        let since_before = (bits >> 16) & !(before.throttle_bits().unwrap_or(0) >> 16) & 0xf;
        if now != 0 || since_before != 0 {
            throttled = true;
            warnings.push(format!(
                "the firmware reports throttling (get_throttled={}: under-voltage 0x1, \
                 frequency capped 0x2, throttled 0x4, soft temperature limit 0x8)",
                after.throttled_raw.as_deref().unwrap_or("")
            ));
        }
    }
    let top = |r: &ThermalReading| r.freq_mhz.iter().copied().fold(0.0, f64::max);
    let (f0, f1) = (top(&before), top(&after));
    if f0 > 0.0 && f1 > 0.0 && (f1 - f0).abs() / f0 > 0.10 {
        if f1 < f0 {
            throttled = true;
        }
        warnings.push(format!(
            "the CPU clock moved from {f0:.0} to {f1:.0} MHz during the measurement"
        ));
    }
    if let Some(g) = governor.filter(|g| *g != "performance") {
        warnings.push(format!(
            "CPU governor '{g}': clocks follow load; `performance` gives steadier numbers"
        ));
    }
    if after.temp_c.is_some_and(|t| t >= 80.0) {
        warnings.push(format!(
            "{:.0} °C after the run: close to the usual throttling point",
            after.temp_c.unwrap_or(0.0)
        ));
    }
    ThermalSummary {
        before,
        after,
        throttled,
        warnings,
    }
}

/// Sleeps, waking for Ctrl-C.
fn cool_down(d: Duration) {
    let end = Instant::now() + d;
    while !interrupted() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// One round: thermal reading, `nnzip bench --json` on the device, thermal reading.
fn round(
    t: &mut Target,
    spec: &BenchSpec,
    files: &Files,
) -> Result<(serde_json::Map<String, Value>, ThermalSummary), DeviceError> {
    let before = probe::thermal(&mut t.conn)?;
    let args = bench_args(t, spec, files);
    let timeout = t.conn.spec.timeout.max(Duration::from_secs_f64(
        spec.time.unwrap_or(0.0).max(0.0) * 2.0 + 60.0,
    ));
    let out =
        run_nnzip(t, &args, timeout, "nnzip bench").map_err(|e| explain_refusal(t, spec, e))?;
    let after = probe::thermal(&mut t.conn)?;
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_slice(&out).map_err(|e| DeviceError::BadOutput {
            device: t.facts.name.clone(),
            reason: format!("bench JSON: {e}"),
        })?;
    // Name the files as the user did, not by their cache names.
    for (key, p) in [("model", Some(&spec.model)), ("vs", spec.vs.as_ref())] {
        if let (Some(Value::Object(m)), Some(p)) = (v.get_mut(key), p) {
            m.insert("path".into(), Value::String(p.display().to_string()));
        }
    }
    let gov = t.facts.governor.clone();
    Ok((v, summarize_thermal(before, after, gov.as_deref())))
}

fn round_summary(i: usize, v: &serde_json::Map<String, Value>, th: ThermalSummary) -> RoundSummary {
    let num = |a: &str, b: Option<&str>| {
        let x = v.get(a)?;
        match b {
            Some(b) => x.get(b)?.as_f64(),
            None => x.as_f64(),
        }
    };
    RoundSummary {
        round: i + 1,
        model_median_ms: num("model", Some("median_ms")),
        vs_median_ms: num("vs", Some("median_ms")),
        ratio_median: num("ratio_median", None),
        ratio_p10: num("ratio_p10", None),
        ratio_p90: num("ratio_p90", None),
        thermal: th,
    }
}

/// Measures on one device; never fails as a whole: what was measured stays, `error` says what
/// stopped it.
fn measure(
    dev: &DeviceSpec,
    builds: &Builds,
    spec: &BenchSpec,
    rounds: &Rounds,
    nnc: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> (DeviceBench, Option<DeviceError>) {
    let mut entry = DeviceBench::empty(&dev.name);
    progress(&format!("{}: connecting", dev.name));
    let ep = effective_ep(spec, dev).map(|(e, _)| e);
    let mut t = match connect(dev, builds, ep.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            entry.error = Some(e.to_string());
            return (entry, Some(e));
        }
    };
    entry.device = info_of(&t);
    let r = measure_rounds(&mut t, &mut entry, spec, rounds, nnc, progress);
    entry.transfer = t.conn.transfer;
    match r {
        Ok(()) => {
            entry.complete = true;
            (entry, None)
        }
        Err(e) => {
            entry.error = Some(e.to_string());
            (entry, Some(e))
        }
    }
}

fn measure_rounds(
    t: &mut Target,
    entry: &mut DeviceBench,
    spec: &BenchSpec,
    rounds: &Rounds,
    nnc: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), DeviceError> {
    let name = t.facts.name.clone();
    progress(&format!("{name}: sending files"));
    let files = push_files(t, spec, nnc)?;
    let mut reports = Vec::new();
    for i in 0..rounds.count.max(1) {
        if i > 0 {
            progress(&format!("{name}: cooling down {:?}", rounds.cooldown));
            cool_down(rounds.cooldown);
        }
        if interrupted() {
            return Err(DeviceError::Interrupted { device: name });
        }
        progress(&format!("{name}: round {}/{}", i + 1, rounds.count.max(1)));
        let (v, th) = round(t, spec, &files)?;
        entry.rounds.push(round_summary(i, &v, th));
        reports.push(v);
        // Keep the entry whole after every round: an interrupt later leaves these.
        set_representative(entry, &reports);
        progress(&format!("{name}: round {} done", i + 1));
    }
    if let Some(n) = &files.nnc {
        progress(&format!("{name}: timing the decode"));
        let args: Vec<String> = ["device", "decode-time", n.as_str(), "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = run_nnzip(t, &args, t.conn.spec.timeout, "nnzip device decode-time")?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| DeviceError::BadOutput {
            device: name.clone(),
            reason: format!("decode-time JSON: {e}"),
        })?;
        entry.decode_ms = v.get("decode_ms").and_then(Value::as_f64);
    }
    Ok(())
}

/// The entry's bench fields come from the median round (by ratio, else by median latency);
/// its thermal summary spans all rounds.
fn set_representative(entry: &mut DeviceBench, reports: &[serde_json::Map<String, Value>]) {
    let key = |r: &RoundSummary| r.ratio_median.or(r.model_median_ms).unwrap_or(f64::NAN);
    let mut order: Vec<usize> = (0..entry.rounds.len()).collect();
    order.sort_by(|&a, &b| key(&entry.rounds[a]).total_cmp(&key(&entry.rounds[b])));
    if let Some(&mid) = order.get(order.len() / 2) {
        if let Some(r) = reports.get(mid) {
            entry.report = r.clone();
        }
    }
    let (Some(first), Some(last)) = (entry.rounds.first(), entry.rounds.last()) else {
        return;
    };
    let mut th = ThermalSummary {
        before: first.thermal.before.clone(),
        after: last.thermal.after.clone(),
        throttled: entry.rounds.iter().any(|r| r.thermal.throttled),
        warnings: Vec::new(),
    };
    for w in entry.rounds.iter().flat_map(|r| &r.thermal.warnings) {
        if !th.warnings.contains(w) {
            th.warnings.push(w.clone());
        }
    }
    entry.thermal = th;
}

/// `bench --device`: each device in turn (never two at once: they would disturb each other when
/// `local` is among them). Returns every device's entry and the first error; after Ctrl-C the
/// remaining devices are skipped.
pub fn bench_devices(
    devices: &[DeviceSpec],
    builds: &Builds,
    spec: &BenchSpec,
    rounds: &Rounds,
    progress: &mut dyn FnMut(&str),
) -> (Vec<DeviceBench>, Option<DeviceError>) {
    let mut out = Vec::new();
    let mut first = None;
    for d in devices {
        if interrupted() {
            let mut e = DeviceBench::empty(&d.name);
            e.error = Some("skipped after Ctrl-C".into());
            out.push(e);
            continue;
        }
        let (entry, err) = measure(d, builds, spec, rounds, None, progress);
        out.push(entry);
        if first.is_none() {
            first = err;
        }
    }
    (out, first)
}

/// One device's columns of the compress report (Table 2.1 of the thesis): latency of the
/// original and the compressed model, interleaved on the device, and the time nnzip there
/// takes to decode the bitstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceColumn {
    pub name: String,
    pub arch: String,
    pub ort_version: Option<String>,
    pub latency_ms_original: Option<f64>,
    pub latency_ms_compressed: Option<f64>,
    /// `latency_ms_compressed / latency_ms_original` (medians).
    pub ratio: Option<f64>,
    pub decode_ms: Option<f64>,
    pub complete: bool,
    pub error: Option<String>,
}

impl From<&DeviceBench> for DeviceColumn {
    fn from(b: &DeviceBench) -> DeviceColumn {
        DeviceColumn {
            name: b.device.name.clone(),
            arch: b.device.arch.clone(),
            ort_version: b.device.ort_version.clone(),
            latency_ms_original: b.model_median_ms(),
            latency_ms_compressed: b.vs_median_ms(),
            ratio: b.ratio_median(),
            decode_ms: b.decode_ms,
            complete: b.complete,
            error: b.error.clone(),
        }
    }
}

/// Measures `original` against `compressed` (an ONNX file, e.g. the decoded bitstream) on each
/// device, and the decode of `nnc` there when given. `spec` gives runs, warm-up and shapes; its
/// `model`/`vs` are replaced. For the compress pipeline and report: call after the bitstream is
/// written, put the columns under the report's `devices` key.
pub fn compress_columns(
    devices: &[DeviceSpec],
    builds: &Builds,
    original: &Path,
    compressed: &Path,
    nnc: Option<&Path>,
    spec: &BenchSpec,
    progress: &mut dyn FnMut(&str),
) -> (Vec<DeviceColumn>, Option<DeviceError>) {
    let spec = BenchSpec {
        model: original.to_path_buf(),
        vs: Some(compressed.to_path_buf()),
        placement: false,
        ..spec.clone()
    };
    let mut cols = Vec::new();
    let mut first = None;
    for d in devices {
        if interrupted() {
            break;
        }
        let (entry, err) = measure(d, builds, &spec, &Rounds::default(), nnc, progress);
        cols.push(DeviceColumn::from(&entry));
        if first.is_none() {
            first = err;
        }
    }
    (cols, first)
}

/// [`compress_columns`] from the files `compress` wrote: decodes `nnc` (with `graph` for a
/// parameters-only stream) here into a temporary ONNX file and measures it against `original`.
pub fn compress_columns_for_output(
    devices: &[DeviceSpec],
    builds: &Builds,
    original: &Path,
    nnc: &Path,
    graph: Option<&Path>,
    spec: &BenchSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<DeviceColumn>, Option<DeviceError>), DeviceError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| DeviceError::LocalFile {
            path: p.to_path_buf(),
            source,
        })
    };
    let bytes = read(nnc)?;
    let g = graph.map(read).transpose()?;
    let model = crate::container::decompress(&bytes, g.as_deref(), &Default::default())?;
    let dir = tempfile::tempdir().map_err(|source| DeviceError::LocalFile {
        path: std::env::temp_dir(),
        source,
    })?;
    let onnx = dir.path().join("compressed.onnx");
    model.save(&onnx, &Default::default())?;
    // A parameters-only stream cannot be decoded alone on the device: no decode timing then.
    let nnc_for_device = graph.is_none().then_some(nnc);
    Ok(compress_columns(
        devices,
        builds,
        original,
        &onnx,
        nnc_for_device,
        spec,
        progress,
    ))
}

/// Decode timing of an NNC file, what `nnzip device decode-time` reports on the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeTiming {
    pub path: String,
    pub bytes: u64,
    pub runs: usize,
    pub decode_ms: f64,
    pub min_ms: f64,
}

/// Decodes `path` (bitstream to model, in memory) `runs` times; median and minimum.
pub fn decode_time(path: &Path, runs: usize) -> Result<DecodeTiming, DeviceError> {
    let bytes = std::fs::read(path).map_err(|source| DeviceError::LocalFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut ms = Vec::new();
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let m = crate::container::decompress(&bytes, None, &Default::default())?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(m);
    }
    ms.sort_by(f64::total_cmp);
    Ok(DecodeTiming {
        path: path.display().to_string(),
        bytes: bytes.len() as u64,
        runs: ms.len(),
        decode_ms: crate::bench::percentile(&ms, 0.5),
        min_ms: ms.first().copied().unwrap_or(f64::NAN),
    })
}

/// The text table of `bench --device`.
pub fn devices_table(rows: &[DeviceBench]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<12} {:<8} {:>7} {:>10} {:>10} {:>22}  throttled",
        "device", "ORT", "threads", "A ms", "B ms", "ratio (p10–p90)"
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    for r in rows {
        let threads = r
            .report
            .get("intra_threads")
            .and_then(Value::as_u64)
            .map(|t| t.to_string())
            .unwrap_or_else(|| "default".into());
        let ratio = match (
            r.ratio_median(),
            r.num(&["ratio_p10"]),
            r.num(&["ratio_p90"]),
        ) {
            (Some(m), Some(lo), Some(hi)) => format!("{m:.3} ({lo:.3}–{hi:.3})"),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "{:<12} {:<8} {:>7} {:>10} {:>10} {:>22}  {}",
            r.device.name,
            r.device.ort_version.as_deref().unwrap_or("-"),
            threads,
            f(r.model_median_ms()),
            f(r.vs_median_ms()),
            ratio,
            if r.thermal.throttled { "yes" } else { "no" }
        );
    }
    for r in rows {
        if r.rounds.len() > 1 {
            let per: Vec<String> = r
                .rounds
                .iter()
                .map(|x| f(x.ratio_median.or(x.model_median_ms)))
                .collect();
            let _ = writeln!(o, "{}: per round {}", r.device.name, per.join(" "));
        }
        for w in &r.thermal.warnings {
            let _ = writeln!(o, "warning: {}: {w}", r.device.name);
        }
        if let Some(e) = &r.error {
            let _ = writeln!(o, "incomplete: {}: {e}", r.device.name);
        }
    }
    o
}

/// The text lines of `compress --device`.
pub fn columns_table(cols: &[DeviceColumn]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>16} {:>7} {:>10}",
        "device", "original ms", "compressed ms", "ratio", "decode ms"
    );
    for c in cols {
        let _ = writeln!(
            o,
            "{:<12} {:>14} {:>16} {:>7} {:>10}{}",
            c.name,
            f(c.latency_ms_original),
            f(c.latency_ms_compressed),
            f(c.ratio),
            f(c.decode_ms),
            c.error
                .as_ref()
                .map(|e| format!("  incomplete: {e}"))
                .unwrap_or_default()
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_clock_drops_are_flagged() {
        let r = |t: f64, f: f64, raw: Option<&str>| ThermalReading {
            temp_c: Some(t),
            freq_mhz: vec![f],
            throttled_raw: raw.map(str::to_string),
        };
        let calm = summarize_thermal(
            r(50.0, 1800.0, Some("0x0")),
            r(52.0, 1800.0, Some("0x0")),
            Some("performance"),
        );
        assert!(!calm.throttled && calm.warnings.is_empty(), "{calm:?}");
        let hot = summarize_thermal(
            r(70.0, 1800.0, Some("0x0")),
            r(82.0, 1500.0, Some("0x20002")),
            Some("ondemand"),
        );
        assert!(hot.throttled);
        assert_eq!(hot.warnings.len(), 4, "{:?}", hot.warnings);
        // Throttling that happened before the run (bit 18 already set) is not this run's.
        let old = summarize_thermal(
            r(50.0, 1800.0, Some("0x40000")),
            r(50.0, 1800.0, Some("0x40000")),
            None,
        );
        assert!(!old.throttled);
    }
}
