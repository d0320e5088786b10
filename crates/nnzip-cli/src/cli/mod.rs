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
mod report;
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

/// What to do about a collapsed `compress` result (the library's error says what happened).
pub fn collapse_hint(e: &nnzip::pipeline::PipelineError) -> Option<&'static str> {
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

/// The flag that gives what a library error says is missing. The library speaks of inputs,
/// sizes and runs; only the command knows its flags, so every command's failure passes here
/// (`main` prints the hint under the error). The first error of the chain with a hint decides.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(hint_of)
}

/// The hint of one error of the chain, looking through the typed wrappers (their
/// `#[error(transparent)]` variants hide the inner error from the chain).
fn hint_of(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    use nnzip::bench::BenchError as B;
    use nnzip::fidelity::FidelityError as F;
    use nnzip::passes::PassError as Pa;
    use nnzip::pipeline::PipelineError as P;
    use nnzip::runtime::placement::PlacementError as Pl;
    if let Some(e) = cause.downcast_ref::<P>() {
        return match e {
            P::Pass(e) => hint_of(e),
            P::Bench(e) => hint_of(e),
            P::Runtime(e) => hint_of(e),
            P::Fidelity(e) => hint_of(e),
            P::Calib(e) => hint_of(e),
            P::Rate(e) => hint_of(e),
            _ => None,
        };
    }
    if let Some(nnzip::inspect::InspectError::Input(e)) = cause.downcast_ref() {
        return input_hint(e);
    }
    if let Some(e) = cause.downcast_ref::<F>() {
        return match e {
            F::Input(e) => hint_of(e),
            F::Runtime(e) => hint_of(e),
            F::Calib(e) => hint_of(e),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<B>() {
        return match e {
            B::Input(e) => hint_of(e),
            B::Runtime(e) => hint_of(e),
            B::InputsDiffer { .. } => Some("--vs takes a model with the same inputs".into()),
            B::NoRuns => Some("pass --runs 1 or more".into()),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<Pa>() {
        return match e {
            Pa::Runtime(e) => hint_of(e),
            Pa::Calib(e) => hint_of(e),
            Pa::Inputs { input, .. } | Pa::Sizes(input) => input_hint(input),
            Pa::NeedsInputs { .. } => Some(SIZES.into()),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<Pl>() {
        return match e {
            Pl::Runtime(e) => hint_of(e),
            Pl::Fallback { .. } => {
                Some("--strict-ep refuses any fallback; without it the run goes on".into())
            }
            Pl::Profile { .. } => None,
        };
    }
    if let Some(nnzip::calib::CalibError::Runtime(e)) = cause.downcast_ref() {
        return hint_of(e);
    }
    if let Some(nnzip::ratecontrol::RateError::Runtime(e)) = cause.downcast_ref() {
        return hint_of(e);
    }
    if let Some(nnzip::container::ContainerError::NoTopology) = cause.downcast_ref() {
        return Some(
            "decode plain tensors with `nnzip codec decode`; for a reference-compatible pair \
             give the graph file written beside it (--graph FILE)"
                .into(),
        );
    }
    if let Some(nnzip::runtime::RuntimeError::LibraryNotFound { .. }) = cause.downcast_ref() {
        return Some("pass --ort-lib PATH (the library or its folder)".into());
    }
    if let Some(nnzip::batch::BatchError::Shard(e)) = cause.downcast_ref() {
        return shard_hint(e);
    }
    cause
        .downcast_ref::<nnzip::runtime::inputs::InputError>()
        .and_then(input_hint)
}

/// Where the flags to give sizes or data are.
const SIZES: &str = "pass --shape NAME=DIMS for each input with open sizes, or calibration data \
                     with --calib FILE.npz";

fn input_hint(e: &nnzip::runtime::inputs::InputError) -> Option<String> {
    use nnzip::runtime::inputs::InputError as I;
    match e {
        I::UnresolvedDims { input, example, .. } => Some(format!("pass --shape {input}={example}")),
        I::BadShapeArg(_) | I::UnknownInput { .. } | I::ShapeConflict { .. } => Some(
            "check --shape NAME=DIMS against the model's inputs (`nnzip inspect` lists them)"
                .into(),
        ),
        I::UnknownRank(name) => Some(format!(
            "pass --shape {name}=DIMS, or data for it (--calib FILE.npz; bench: --inputs FILE.npz)"
        )),
        I::NoRunnableSize { .. } => Some(SIZES.into()),
        I::UnsupportedType { .. } | I::Tensor(_) => None,
    }
}

fn shard_hint(e: &nnzip::batch::shard::ShardError) -> Option<String> {
    use nnzip::batch::shard::ShardError as S;
    match e {
        S::NotIndexOfCount(_) => Some("pass --shard I/N with 0 <= I < N, or --shard auto".into()),
        S::CountMissing => Some("pass --shard-count N".into()),
        S::CountDiffers { .. } => Some("drop --shard-count or make it the array's size".into()),
        S::NoScheduler => Some("--shard auto is for scheduled jobs; pass --shard I/N".into()),
        S::NotInteger { .. } | S::SlurmMissing(_) | S::NotContiguous { .. } => None,
    }
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
        C::Refused => code::DEVICE_REFUSED,
        C::Interrupted => code::INTERRUPTED,
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

    /// Also show ONNX Runtime's own log (warnings and errors; by default it is silent, and its
    /// failures reach you as nnzip's errors). The ORT_LOG environment variable, if set, wins.
    #[arg(long, short, global = true)]
    pub verbose: bool,

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
    /// Render a saved JSON report again: text, or an HTML page with --html.
    Report(report::Args),
    /// Fleets: many models from a manifest, resumable and sharded (docs/batch.md).
    Batch(batch::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    if std::env::var_os("ORT_LOG").is_none() {
        // ONNX Runtime reads its log level from ORT_LOG when the environment is created; nothing
        // else runs yet, so setting it here is safe. Its errors come back as nnzip's own (with
        // ONNX Runtime's message), and size probes fail on purpose, so by default it stays quiet.
        std::env::set_var("ORT_LOG", if cli.verbose { "warning" } else { "fatal" });
    }
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
        Command::Report(a) => report::run(a),
        Command::Batch(a) => batch::run(a, cli.ort_lib.as_deref(), cli.quiet),
    }
}

/// Parses `NAME=1x3x224x224` for clap.
pub fn shape_arg(s: &str) -> std::result::Result<(String, Vec<usize>), String> {
    nnzip::runtime::inputs::parse_shape_arg(s).map_err(|e| e.to_string())
}

/// Maps an error chain to an exit code by the first typed error found in it.
/// A file the command itself reads or checks failed: reading is bad input (exit 3), writing a
/// write failure (exit 5).
#[derive(Debug)]
pub enum FileError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Read(e) | FileError::Write(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FileError {}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(class_of)
        .map_or(code::FAILURE, class_code)
}

/// The class of one error of the chain, if it is one of the typed errors (the outermost typed
/// error decides: it knows what its causes meant to it).
fn class_of(cause: &(dyn std::error::Error + 'static)) -> Option<nnzip::errors::ErrorClass> {
    use nnzip::errors::ErrorClass as C;
    macro_rules! classify {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = cause.downcast_ref::<$t>() {
                return Some(e.class());
            })*
        };
    }
    if let Some(x) = cause.downcast_ref::<batch::Exit>() {
        return Some(x.class);
    }
    if let Some(s) = cause.downcast_ref::<nnzip::batch::store::StoreError>() {
        return Some(s.input_class());
    }
    if cause
        .downcast_ref::<nnzip::batch::options::OptionError>()
        .is_some()
    {
        return Some(C::Usage);
    }
    classify!(
        nnzip::batch::BatchError,
        nnzip::pipeline::PipelineError,
        nnzip::device::DeviceError,
        nnzip::runtime::placement::PlacementError,
        nnzip::fidelity::FidelityError,
        nnzip::ratecontrol::RateError,
        nnzip::passes::PassError,
        nnzip::bench::BenchError,
        nnzip::calib::build::BuildError,
        nnzip::calib::CalibError,
        nnzip::container::ContainerError,
        nnzip::npz::NpzError,
        nnzip::onnx::OnnxError,
        nnzip::runtime::inputs::InputError,
        nnzip::runtime::RuntimeError,
        nnzip::tensor::TensorError,
        nnzip::report::saved::ReportError,
        nnzip::inspect::InspectError,
    );
    if let Some(f) = cause.downcast_ref::<FileError>() {
        return Some(match f {
            FileError::Read(_) => C::BadInput,
            FileError::Write(_) => C::Write,
        });
    }
    if cause.downcast_ref::<prune::UsageError>().is_some() {
        return Some(C::Usage);
    }
    // The codec crate knows nothing of exit codes; its errors are all about the bitstream read.
    cause
        .downcast_ref::<nnc_codec::Error>()
        .map(|_| C::BadInput)
}

/// Prints JSON to stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnzip::errors::ErrorClass as C;

    /// Every class; the match makes a new class a compile error here until it is listed.
    fn all_classes() -> Vec<C> {
        let all = [
            C::Usage,
            C::BadInput,
            C::Runtime,
            C::Write,
            C::Verification,
            C::Transient,
            C::Refused,
            C::Interrupted,
            C::Other,
        ];
        for c in all {
            match c {
                C::Usage
                | C::BadInput
                | C::Runtime
                | C::Write
                | C::Verification
                | C::Transient
                | C::Refused
                | C::Interrupted
                | C::Other => {}
            }
        }
        all.to_vec()
    }

    #[test]
    fn exit_codes_are_the_documented_table() {
        let doc = include_str!("../../../../docs/cli.md");
        let table = doc
            .split("## Exit codes")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .unwrap();
        let documented: std::collections::BTreeSet<u8> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect();
        let mut produced: std::collections::BTreeSet<u8> =
            all_classes().into_iter().map(class_code).collect();
        produced.insert(0);
        assert_eq!(documented, produced);
    }

    #[test]
    fn the_outermost_typed_error_decides() {
        use nnzip::onnx::OnnxError;
        let inner = OnnxError::Serialize("x".into());
        let e = anyhow::Error::new(nnzip::passes::PassError::Onnx(inner)).context("while pruning");
        assert_eq!(exit_code(&e), code::BAD_INPUT);
        let e = anyhow::Error::new(nnzip::pipeline::PipelineError::MaxDropNeedsCalib);
        assert_eq!(exit_code(&e), code::USAGE);
        let e = anyhow::Error::new(nnzip::pipeline::PipelineError::Cancelled);
        assert_eq!(exit_code(&e), code::INTERRUPTED);
        let e = anyhow::anyhow!("untyped");
        assert_eq!(exit_code(&e), code::FAILURE);
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(FileError::Write(io)).context("cannot write x");
        assert_eq!(exit_code(&e), code::WRITE);
    }
}
