//! clap-derive arguments, one module per command. Commands print human text by default and JSON
//! with `--json`; errors go to stderr with their cause chain.

mod batch;
mod bench;
mod calib;
mod codec;
mod compress;
mod decompress;
mod device;
mod inspect;
mod progress;
mod prune;
mod prune_args;
mod simplify;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Exit codes (also in docs/cli.md).
pub mod code {
    /// Anything not covered below.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap uses 2 too).
    pub const USAGE: u8 = 2;
    /// An input file is missing, unreadable, malformed, hostile or unsupported.
    pub const BAD_INPUT: u8 = 3;
    /// ONNX Runtime is missing, cannot load, or failed.
    pub const RUNTIME: u8 = 4;
    /// An output could not be written.
    pub const WRITE: u8 = 5;
    /// A device could not be reached, its connection was lost or a step timed out.
    pub const DEVICE_TRANSIENT: u8 = 75;
    /// A device refused the ssh login (key or host key).
    pub const DEVICE_REFUSED: u8 = 7;
    /// Ctrl-C during a device measurement (results so far were printed).
    pub const INTERRUPTED: u8 = 130;
    /// The result failed verification; nothing was written.
    pub const VERIFICATION: u8 = 6;
}

/// What to do about a verification failure (the library's error says what happened).
pub fn hint(e: &nnzip::pipeline::PipelineError) -> Option<&'static str> {
    use nnzip::fidelity::FidelityError;
    use nnzip::pipeline::PipelineError as P;
    match e {
        P::Fidelity(FidelityError::Collapsed { .. }) => Some(
            "nothing was written. Use finer quantization (a lower --qp; without --uniform the \
             steps follow each tensor's scale), give calibration data and a budget (--calib \
             FILE.npz --max-drop X), skip simplification (--no-simplify), or pass --force to \
             write it anyway",
        ),
        _ => None,
    }
}

/// The shared verification of a written model against its input (exit 6 on a collapse unless
/// `force`, which only warns).
pub fn guard(
    rt: &nnzip::runtime::Runtime,
    input: &nnzip::onnx::Model,
    output: &nnzip::onnx::Model,
    calib: Option<&nnzip::calib::Calibration>,
    shapes: &[(String, Vec<usize>)],
    (g, force): (&nnzip::fidelity::Guard, bool),
    suspects: &dyn Fn() -> Vec<nnzip::fidelity::Suspect>,
) -> Result<nnzip::fidelity::Fidelity> {
    use anyhow::Context;
    let e = match nnzip::fidelity::verify(rt, input, output, calib, shapes, g, suspects) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let what = match &e {
        nnzip::fidelity::FidelityError::Collapsed { .. } if force => {
            eprintln!("warning: writing anyway (--force): {e}");
            if let nnzip::fidelity::FidelityError::Collapsed { fidelity, .. } = e {
                return Ok(*fidelity);
            }
            "cannot verify the result against the input"
        }
        nnzip::fidelity::FidelityError::Collapsed { .. } => {
            "nothing was written; pass --force to write it anyway"
        }
        _ => "cannot verify the result against the input",
    };
    Err(anyhow::Error::new(e)).context(what)
}

/// The exit code of a failure class.
pub fn class_code(c: nnzip::errors::ErrorClass) -> u8 {
    use nnzip::errors::ErrorClass as C;
    match c {
        C::Usage => code::USAGE,
        C::BadInput => code::BAD_INPUT,
        C::Runtime => code::RUNTIME,
        C::Write => code::WRITE,
        C::Verification => code::VERIFICATION,
        C::Transient => code::DEVICE_TRANSIENT,
        C::Other => code::FAILURE,
    }
}

#[derive(Debug, Parser)]
#[command(name = "nnzip", version, about = "Make deployed ONNX neural networks small and fast, and prove it.", long_about = None)]
pub struct Cli {
    /// Path to the ONNX Runtime shared library (libonnxruntime.so) or its folder. Default: $ORT_DYLIB_PATH,
    /// then .ort/ (filled by scripts/setup-ort.sh), then an installed Python onnxruntime.
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// No progress output on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe a model: inputs, outputs, ops, every weight tensor, parameters and MACs.
    Inspect(inspect::Args),
    /// Measure inference latency on ONNX Runtime, optionally against a second model.
    Bench(bench::Args),
    /// Remove dead channels, fold BatchNorm, collapse zero-entropy layers; outputs stay equal.
    Simplify(simplify::Args),
    /// Prune a model in place: magnitude, N:M, structured channels, entropy-guided; optional
    /// search of the amount under a metric-drop tolerance on calibration data.
    Prune(prune::Args),
    /// Build a calibration .npz from your own inputs: images, sentences, .npy files.
    Calib(calib::Args),
    /// ISO/IEC 15938-17 (NNC) bitstreams of plain tensors: encode, decode, info.
    Codec(codec::Args),
    /// The whole job: prune, simplify and NNC-encode a model; report bytes, metric and latency.
    Compress(compress::Args),
    /// Rebuild a runnable ONNX model from an NNC bitstream.
    Decompress(decompress::Args),
    /// Target devices of the devices file: probe them.
    Device(device::Args),
    /// Fleets: many models from a manifest, resumable and sharded (docs/batch.md).
    Batch(batch::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a, cli.ort_lib.as_deref(), cli.quiet),
        Command::Simplify(a) => simplify::run(a, cli.ort_lib.as_deref()),
        Command::Prune(a) => prune::run(a, cli.ort_lib.as_deref(), cli.quiet),
        Command::Calib(a) => calib::run(a),
        Command::Codec(a) => codec::run(a),
        Command::Compress(a) => compress::run(a, cli.ort_lib.as_deref(), cli.quiet),
        Command::Decompress(a) => decompress::run(a),
        Command::Device(a) => device::run(a, cli.ort_lib.as_deref()),
        Command::Batch(a) => batch::run(a, cli.ort_lib.as_deref(), cli.quiet),
    }
}

/// Parses `NAME=1x3x224x224` for clap.
pub fn shape_arg(s: &str) -> std::result::Result<(String, Vec<usize>), String> {
    nnzip::runtime::inputs::parse_shape_arg(s).map_err(|e| e.to_string())
}

/// Maps an error chain to an exit code by the first typed error found in it.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use nnzip::bench::BenchError;
    use nnzip::npz::NpzError;
    use nnzip::onnx::OnnxError;
    use nnzip::runtime::inputs::InputError;
    use nnzip::runtime::RuntimeError;
    for cause in e.chain() {
        if let Some(x) = cause.downcast_ref::<batch::Exit>() {
            return x.code;
        }
        if let Some(b) = cause.downcast_ref::<nnzip::batch::BatchError>() {
            return class_code(b.class());
        }
        if let Some(s) = cause.downcast_ref::<nnzip::batch::store::StoreError>() {
            return class_code(s.input_class());
        }
        if cause
            .downcast_ref::<nnzip::batch::options::OptionError>()
            .is_some()
        {
            return code::USAGE;
        }
        if let Some(c) = device::exit_code(cause) {
            return c;
        }
        if let Some(f) = cause.downcast_ref::<nnzip::fidelity::FidelityError>() {
            return class_code(f.class());
        }
        if let Some(p) = cause.downcast_ref::<nnzip::pipeline::PipelineError>() {
            return class_code(p.class());
        }
        if cause.downcast_ref::<codec::WriteFailed>().is_some() {
            return code::WRITE;
        }
        if cause.downcast_ref::<nnc_codec::Error>().is_some()
            || cause
                .downcast_ref::<nnzip::container::ContainerError>()
                .is_some()
        {
            return code::BAD_INPUT;
        }
        if cause.downcast_ref::<prune::UsageError>().is_some() {
            return code::USAGE;
        }
        if let Some(p) = cause.downcast_ref::<nnzip::passes::PassError>() {
            use nnzip::calib::CalibError as C;
            use nnzip::passes::PassError as P;
            return match p {
                P::Onnx(OnnxError::Write { .. }) => code::WRITE,
                P::Onnx(_) | P::Tensor(_) => code::BAD_INPUT,
                P::Calib(C::Runtime(_)) | P::Runtime(_) => code::RUNTIME,
                P::Calib(_) => code::BAD_INPUT,
                P::Invalid { .. } | P::NeedsCalibration { .. } | P::NeedsInputs { .. } => {
                    code::USAGE
                }
            };
        }
        if let Some(b) = cause.downcast_ref::<nnzip::calib::build::BuildError>() {
            return match b {
                nnzip::calib::build::BuildError::Npz(NpzError::Write { .. }) => code::WRITE,
                _ => code::BAD_INPUT,
            };
        }
        if let Some(c) = cause.downcast_ref::<nnzip::calib::CalibError>() {
            return match c {
                nnzip::calib::CalibError::Runtime(_) => code::RUNTIME,
                _ => code::BAD_INPUT,
            };
        }
        if let Some(o) = cause.downcast_ref::<OnnxError>() {
            return match o {
                OnnxError::Write { .. } => code::WRITE,
                _ => code::BAD_INPUT,
            };
        }
        if let Some(n) = cause.downcast_ref::<NpzError>() {
            return match n {
                NpzError::Write { .. } => code::WRITE,
                _ => code::BAD_INPUT,
            };
        }
        if cause.downcast_ref::<InputError>().is_some() {
            return code::USAGE;
        }
        if let Some(r) = cause.downcast_ref::<RuntimeError>() {
            return match r {
                RuntimeError::Onnx(_) | RuntimeError::Tensor(_) => code::BAD_INPUT,
                RuntimeError::UnknownProvider(_) | RuntimeError::MissingInput(_) => code::USAGE,
                _ => code::RUNTIME,
            };
        }
        if let Some(b) = cause.downcast_ref::<BenchError>() {
            return match b {
                BenchError::Onnx(_) | BenchError::Npz(_) => code::BAD_INPUT,
                BenchError::Runtime(
                    RuntimeError::MissingInput(_) | RuntimeError::UnknownProvider(_),
                ) => code::USAGE,
                BenchError::Runtime(_) => code::RUNTIME,
                BenchError::Input(_) | BenchError::InputsDiffer { .. } | BenchError::NoRuns => {
                    code::USAGE
                }
            };
        }
    }
    code::FAILURE
}

/// Prints JSON to stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
