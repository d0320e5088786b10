//! What kind of failure an error is, so the command line maps it to an exit code without
//! knowing every library error type.

/// The class of a failure (docs/cli.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A mistake in how the job was asked for (exit 2).
    Usage,
    /// An input is missing, malformed or unsupported (exit 3).
    BadInput,
    /// ONNX Runtime is missing or failed (exit 4).
    Runtime,
    /// An output could not be written (exit 5).
    Write,
    /// The result failed verification; nothing was written (exit 6).
    Verification,
    /// A network, device or storage failure that may pass: retrying is safe (exit 75,
    /// EX_TEMPFAIL).
    Transient,
    /// A device answered but refused the login (exit 7).
    Refused,
    /// Stopped by Ctrl-C (exit 130).
    Interrupted,
    /// Anything else (exit 1).
    Other,
}

impl ErrorClass {
    /// A short stable name (for JSON records of failures).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Usage => "usage",
            ErrorClass::BadInput => "bad_input",
            ErrorClass::Runtime => "runtime",
            ErrorClass::Write => "write",
            ErrorClass::Verification => "verification",
            ErrorClass::Transient => "transient",
            ErrorClass::Refused => "refused",
            ErrorClass::Interrupted => "interrupted",
            ErrorClass::Other => "other",
        }
    }
}
