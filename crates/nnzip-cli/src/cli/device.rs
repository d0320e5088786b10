//! `nnzip device probe|decode-time`, and the `--device` side of `bench` and `compress`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nnzip::device::{self, BenchSpec, Builds, DeviceError, DeviceSpec, Devices, Rounds};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Arch, OS, glibc, board, cores, governor, temperature, ONNX Runtime version and library
    /// sha256, execution providers of a device (`local` is this machine).
    Probe {
        name: String,
        #[command(flatten)]
        file: DevicesFile,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Decode an NNC file in memory N times and print the median (what `compress --device`
    /// runs on the device).
    #[command(hide = true)]
    DecodeTime {
        nnc: PathBuf,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct DevicesFile {
    /// The devices file (default: ./nnzip-devices.toml, then ~/.config/nnzip/devices.toml).
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
}

/// `--device NAME...` and friends, shared by `bench` and `compress`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Measure on this device of the devices file (repeatable; `local` is this machine).
    #[arg(long = "device", value_name = "NAME")]
    pub device: Vec<String>,
    #[command(flatten)]
    pub file: DevicesFile,
    /// Rounds per device, spread by --cooldown; the report gives each round's ratio.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub rounds: usize,
    /// Seconds of rest before each round after the first.
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub cooldown: f64,
}

impl DeviceArgs {
    pub fn any(&self) -> bool {
        !self.device.is_empty()
    }

    fn specs(&self) -> Result<Vec<DeviceSpec>> {
        let all = Devices::load(self.file.devices.as_deref())?;
        let mut v = Vec::new();
        for n in &self.device {
            v.push(all.get(n)?.clone());
        }
        Ok(v)
    }

    fn rounds(&self) -> Result<Rounds> {
        if self.rounds == 0 || !(self.cooldown >= 0.0 && self.cooldown.is_finite()) {
            return Err(DeviceError::Usage(
                "--rounds must be at least 1 and --cooldown a number of seconds".into(),
            )
            .into());
        }
        Ok(Rounds {
            count: self.rounds,
            cooldown: Duration::from_secs_f64(self.cooldown),
        })
    }
}

/// Ctrl-C ends the device steps (and their remote processes) instead of this process, so the
/// results so far can be printed.
fn on_ctrl_c() {
    let _ = ctrlc::set_handler(device::transport::interrupt);
}

pub fn run(a: Args, ort_lib: Option<&Path>) -> Result<()> {
    match a.command {
        Command::Probe { name, file, json } => {
            let all = Devices::load(file.devices.as_deref())?;
            let spec = all.get(&name)?.clone();
            on_ctrl_c();
            let facts = if spec.is_local() {
                // In-process: this is also what answers another nnzip probing this machine.
                let own = match &spec.ort {
                    device::config::Locate::Path(p) => Some(PathBuf::from(p)),
                    device::config::Locate::Auto => None,
                };
                local_facts(ort_lib.or(own.as_deref()))?
            } else {
                device::remote::probe_device(&spec, &Builds::from_host(ort_lib))?
            };
            if json {
                super::print_json(&facts)
            } else {
                print!("{}", facts.to_text());
                Ok(())
            }
        }
        Command::DecodeTime { nnc, runs, json } => {
            let t = device::decode_time(&nnc, runs)
                .with_context(|| format!("cannot decode {}", nnc.display()))?;
            if json {
                super::print_json(&t)
            } else {
                println!(
                    "{:.3} ms (median of {}), {} bytes",
                    t.decode_ms, t.runs, t.bytes
                );
                Ok(())
            }
        }
    }
}

/// This machine: the system script run here, and the ONNX Runtime this process loads.
fn local_facts(ort_lib: Option<&Path>) -> Result<device::probe::DeviceFacts> {
    let mut conn = device::transport::Connection::open(&DeviceSpec::local())?;
    let mut facts = device::probe::system_facts(&mut conn)?;
    let rt = nnzip::runtime::Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    facts.runtime = Some(device::probe::runtime_facts(rt));
    Ok(facts)
}

/// `bench --device`: one JSON document `{"devices": [...], "complete": bool}` or a table;
/// results are printed even when a device failed, then the first failure decides the exit code.
pub fn bench(
    spec: BenchSpec,
    args: &DeviceArgs,
    ort_lib: Option<&Path>,
    quiet: bool,
    json: bool,
) -> Result<()> {
    let devices = args.specs()?;
    let rounds = args.rounds()?;
    on_ctrl_c();
    let builds = Builds::from_host(ort_lib);
    let (rows, err) = device::bench_devices(&devices, &builds, &spec, &rounds, &mut |m| {
        if !quiet {
            eprintln!("{m}");
        }
    });
    let complete = rows.iter().all(|r| r.complete);
    if json {
        super::print_json(&serde_json::json!({ "devices": rows, "complete": complete }))?;
    } else {
        print!("{}", device::remote::devices_table(&rows));
    }
    match err {
        Some(e) => Err(e).context("measurement on a device did not complete"),
        None => Ok(()),
    }
}

/// What `compress` wrote, for its `--device` columns.
pub struct Written<'a> {
    pub model: &'a Path,
    pub nnc: &'a Path,
    /// The graph beside a parameters-only (`--reference-compatible`) bitstream.
    pub graph: Option<PathBuf>,
    pub shapes: &'a [(String, Vec<usize>)],
    pub runs: usize,
}

/// The per-device columns for `compress --device`, measured from the files it wrote (call
/// after writing them). `None` without `--device`.
pub fn compress_columns(
    args: &DeviceArgs,
    ort_lib: Option<&Path>,
    quiet: bool,
    w: Written<'_>,
) -> Result<Option<(Vec<device::DeviceColumn>, Option<DeviceError>)>> {
    if !args.any() {
        return Ok(None);
    }
    let devices = args.specs()?;
    on_ctrl_c();
    let spec = BenchSpec {
        runs: w.runs.max(1),
        warmup: 5,
        shapes: w.shapes.to_vec(),
        ..BenchSpec::new(w.model, None)
    };
    let cols = device::compress_columns_for_output(
        &devices,
        &Builds::from_host(ort_lib),
        w.model,
        w.nnc,
        w.graph.as_deref(),
        &spec,
        &mut |m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    Ok(Some(cols))
}

/// Prints the compress report (its `devices` columns with it), then fails if a device did.
pub fn print_compress(
    report: &nnzip::report::CompressReport,
    json: bool,
    err: Option<DeviceError>,
) -> Result<()> {
    if json {
        super::print_json(report)?;
    } else {
        print!("{}", report.to_text());
        if !report.devices.is_empty() {
            print!("{}", device::remote::columns_table(&report.devices));
        }
    }
    match err {
        Some(e) => Err(e).context("measurement on a device did not complete"),
        None => Ok(()),
    }
}

/// `--placement` / `--strict-ep` here: the model profiled with the bench's session options
/// (before timing, so a refused fallback costs no timing runs).
pub fn local_placement(
    rt: &'static nnzip::runtime::Runtime,
    path: &Path,
    strict: bool,
    keep_profile: Option<&Path>,
    opts: &nnzip::bench::BenchOptions,
) -> Result<nnzip::runtime::placement::Placement> {
    let model = nnzip::onnx::Model::load(path)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let inputs = nnzip::bench::bench_inputs(&model, opts)?;
    let p = nnzip::runtime::placement::placement(
        rt,
        path,
        &model,
        &inputs,
        &opts.session,
        &opts.shapes,
        3,
        keep_profile,
    )
    .with_context(|| format!("placement of {} failed", path.display()))?;
    if strict {
        p.check_strict()?;
    }
    Ok(p)
}

/// Prints a bench report, with its placement under `placement` in JSON.
pub fn print_bench(
    report: &nnzip::bench::BenchReport,
    placement: Option<&nnzip::runtime::placement::Placement>,
    json: bool,
) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(report)?;
        if let (Some(p), Some(m)) = (placement, v.as_object_mut()) {
            m.insert("placement".into(), serde_json::to_value(p)?);
        }
        super::print_json(&v)
    } else {
        print!("{}", report.to_text());
        if let Some(p) = placement {
            print!("{}", p.to_text());
        }
        Ok(())
    }
}
