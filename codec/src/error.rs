//! Typed errors of the codec. Every malformed or unsupported input ends up here, never in a panic.

/// Errors of encoding and decoding.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bitstream ended inside a syntax element or unit.
    #[error("bitstream truncated while reading {0}")]
    Truncated(&'static str),
    /// A syntax element holds a value the standard (or this decoder) does not allow.
    #[error("invalid value of {element}: {detail}")]
    Invalid {
        /// Syntax element name, as in ISO/IEC 15938-17.
        element: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A feature of the standard that this implementation does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A declared size exceeds the caller's [`crate::Limits`].
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The caller's tensors or configuration are unusable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An encoder setting outside its range (e.g. `codebook_mode` 3).
    #[error("invalid setting {name}: {value}")]
    Setting {
        /// The setting, as NNCodec names it.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// Topology payload could not be (de)compressed.
    #[error("deflate: {0}")]
    Deflate(String),
}

impl Error {
    pub(crate) fn invalid(element: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            element,
            detail: detail.into(),
        }
    }

    pub(crate) fn setting(name: &'static str, value: impl std::fmt::Display) -> Self {
        Error::Setting {
            name,
            value: value.to_string(),
        }
    }
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;
