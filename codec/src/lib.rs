//! `nnc-codec`: ISO/IEC 15938-17 (MPEG-7 part 17, Neural Network Coding) bitstreams, bit-exact
//! with the reference implementation NNCodec 2.1.3 (decoder conformance on all 33 reference
//! vectors; the encoder reproduces the reference's streams byte for byte at its settings).
//!
//! * [`encode`] / [`encode_with_topology`] turn named tensors into an NNC bitstream (NNR_STR,
//!   NNR_MPS, NNR_TPL, one NNR_NDU per tensor) with the reference encoder's decisions and
//!   defaults ([`EncoderConfig::default`]); [`reconstruct`] gives the decoder's result without
//!   coding.
//! * [`decode`] / [`decode_stream`] / [`decode_stream_with`] reconstruct the tensors (and the topology); [`units`] lists
//!   the units. Decoding is bounded by [`Limits`] and never panics on malformed input.
//! * [`quant`]: the normative step size and the check that levels fit 32 bits.
//!
//! Internal modules (not public; `--features unstable` re-exports the engine pieces that the
//! benches time, in the module `unstable`):
//! * `bits`: `u(n)`, `i(n)`, `ue(k)`, `ie(k)`, `flt(32)`, `st(v)`, byte alignment.
//! * `cabac`: the arithmetic coding engine (`BinEncoder` over a `ByteSink`, a byte counting
//!   sink for trial encodes, `BinDecoder`), `ContextModel` with its two-rate probability
//!   estimation, the parameter optimiser, entry points.
//! * `coding`: context selection, level binarization, DQ states, row skipping, codebook
//!   limits, scan orders, per-context initialisation signalling, parallel block-row decoding.
//! * `quant`: step sizes, uniform and dependent (trellis) quantization, codebooks, integer
//!   aligned QPs, reconstruction.
//! * `hls`: NNR units and their headers/payloads (STR, MPS, LPS, TPL, QNT, NDU; AGG is
//!   recognised but not supported), performance maps.
//! * `encode`, `decode`, `limits`, `config`: the public encoder, decoder, decoder limits and
//!   encoder settings.
//!
//! Not supported (typed errors): NNR_PT_BLOCK and decomposed tensors, tensors split over
//! several topology elements, out-of-band tensor dimensions, temporal context modelling and
//! history dependent significance (incremental updates), NNR_AGG. Scalars are carried as
//! one-element vectors (as the reference does), so they decode with shape `[1]`.

// Exceptions: the AVX-512 kernels of the parameter optimiser and of the DQ trellis, selected
// at run time and tested to decide exactly as the scalar code (fallback and test oracle).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod bits;
mod cabac;
mod coding;
mod config;
mod decode;
mod encode;
mod error;
mod hls;
mod limits;
pub mod quant;

pub use config::{CodebookMode, EncoderConfig, ScanOrder, TensorKind, TensorOverride};
pub use decode::{
    decode, decode_stream, decode_stream_with, units, DecodedStream, NduInfo, UnitInfo,
};
pub use encode::{encode, encode_with_topology, reconstruct};
pub use error::{Error, Result};
pub use hls::{topology_compression_format, topology_storage_format, NnrUnitType, PayloadType};
pub use limits::Limits;

/// This crate's version (it enters `nnzip batch` work keys: a new encoder redoes the fleet).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Engine internals for benchmarks and experiments; no stability promise.
#[cfg(feature = "unstable")]
pub mod unstable {
    pub use crate::cabac::{
        BinDecoder, BinEncoder, ByteCounter, ByteSink, ContextModel, ContextOptimizer, EntryPoint,
        ParamOptimizer,
    };
}

/// Element data of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 32-bit floats (quantized on encoding).
    F32(Vec<f32>),
    /// 32-bit integers (coded losslessly as NNR_PT_INT).
    I32(Vec<i32>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named tensor (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Name; carried as `topology_elem_id`.
    pub name: String,
    /// Dimensions, first one the "rows" (output channels).
    pub shape: Vec<usize>,
    /// Elements.
    pub data: TensorData,
}

/// Topology carried in an NNR_TPL unit (opaque to this crate, e.g. an ONNX graph).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `topology_storage_format` (e.g. [`topology_storage_format::NNR_TPL_ONNX`]).
    pub storage_format: u8,
    /// `topology_compression_format` ([`topology_compression_format::NNR_DFL`] deflates).
    pub compression_format: u8,
    /// Uncompressed topology bytes.
    pub data: Vec<u8>,
}
