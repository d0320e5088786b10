//! Latency where the model will run: target devices reached over the system's OpenSSH client,
//! measured by nnzip itself on the device, so warm-up, interleaved A/B, percentiles, session
//! creation and peak RSS are the same code everywhere ([`crate::bench`]).
//!
//! - [`config`]: the devices file (`nnzip-devices.toml`); `local` is always a device.
//! - [`transport`]: one multiplexed ssh connection per device, files into the device's
//!   content-addressed cache, a deadline on every step, remote processes ended on Ctrl-C or a
//!   lost connection.
//! - [`probe`]: what a device is and what its ONNX Runtime can do; refusals before any work.
//! - [`remote`]: `bench --device` (rounds, cool-down, thermal readings) and the per-device
//!   columns of `compress --device` ([`remote::compress_columns`]), which the compress report's
//!   page plots.

pub mod config;
pub mod probe;
pub mod remote;
pub mod transport;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use config::{DeviceSpec, Devices};
pub use remote::{
    bench_devices, compress_columns, compress_columns_for_output, decode_time, BenchSpec, Builds,
    DeviceBench, DeviceColumn, Rounds,
};

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot read the devices file {path}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("devices file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("no device '{name}' (known: {known}; {file})")]
    UnknownDevice {
        name: String,
        known: String,
        file: String,
    },
    #[error("device '{device}' ({dest}) cannot be reached: {reason}")]
    Unreachable {
        device: String,
        dest: String,
        reason: String,
    },
    #[error("device '{device}' ({dest}) refused the login: {reason} (check `identity`, the ssh agent and authorized_keys)")]
    AuthFailed {
        device: String,
        dest: String,
        reason: String,
    },
    #[error("device '{device}' ({dest}): host key not verified: {reason} (add it to known_hosts, e.g. by one interactive `ssh`)")]
    HostKey {
        device: String,
        dest: String,
        reason: String,
    },
    #[error("device '{device}': connection lost during '{step}': {reason}")]
    ConnectionLost {
        device: String,
        step: String,
        reason: String,
    },
    #[error("device '{device}': '{step}' did not finish within {after:?}; it was ended")]
    Timeout {
        device: String,
        step: String,
        after: Duration,
    },
    #[error("device '{device}': interrupted; the remote processes were ended")]
    Interrupted { device: String },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    LocalFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("device '{device}': sending {path} failed: {reason}")]
    Upload {
        device: String,
        path: PathBuf,
        reason: String,
    },
    #[error("device '{device}': {reason}")]
    Unsupported { device: String, reason: String },
    #[error("device '{device}': no nnzip to run: {reason}")]
    NnzipMissing { device: String, reason: String },
    #[error("device '{device}': execution provider '{ep}' is not in its ONNX Runtime {library} (it has: {available})")]
    MissingProvider {
        device: String,
        ep: String,
        available: String,
        library: String,
    },
    #[error("device '{device}': its ONNX Runtime {ort_version} refuses {model} (IR version {ir}, opset {opset}): {reason}")]
    ModelRefused {
        device: String,
        ort_version: String,
        model: String,
        ir: i64,
        opset: i64,
        reason: String,
    },
    #[error("device '{device}': `{step}` failed (exit {code}): {stderr}")]
    Remote {
        device: String,
        step: String,
        code: i32,
        stderr: String,
    },
    #[error("device '{device}': unexpected output from nnzip on the device: {reason}")]
    BadOutput { device: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
}

impl DeviceError {
    /// What kind of failure this is (for exit codes): unreachable devices are transient (75), a
    /// refused login is its own class (7).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        use DeviceError as E;
        match self {
            E::ConfigRead { .. } => C::BadInput,
            E::Config { .. } | E::UnknownDevice { .. } | E::Usage(_) => C::Usage,
            E::Unreachable { .. } | E::ConnectionLost { .. } | E::Timeout { .. } => C::Transient,
            E::AuthFailed { .. } | E::HostKey { .. } => C::Refused,
            E::Interrupted { .. } => C::Interrupted,
            E::LocalFile { .. } | E::ModelRefused { .. } | E::Onnx(_) | E::Container(_) => {
                C::BadInput
            }
            E::Unsupported { .. }
            | E::NnzipMissing { .. }
            | E::MissingProvider { .. }
            | E::BadOutput { .. } => C::Runtime,
            // nnzip on the device exits with the codes of docs/cli.md.
            E::Remote { code, .. } => match code {
                2 => C::Usage,
                3 => C::BadInput,
                4 => C::Runtime,
                5 => C::Write,
                6 => C::Verification,
                7 => C::Refused,
                75 => C::Transient,
                130 => C::Interrupted,
                _ => C::Other,
            },
            E::Spawn { .. } | E::Upload { .. } => C::Other,
        }
    }
}
