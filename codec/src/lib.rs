//! `nnc-codec`: ISO/IEC 15938-17 (MPEG-7 part 17, Neural Network Coding) bitstreams, bit-exact
//! with the reference implementation NNCodec 2.1.3 (decoder conformance on all 33 reference
//! vectors; the encoder reproduces the reference's streams byte for byte at its settings).
//!
//! * [`encode`] / [`encode_with_topology`] turn named tensors into an NNC bitstream (NNR_STR,
//!   NNR_MPS, NNR_TPL, one NNR_NDU per tensor) with the reference encoder's decisions and
//!   defaults ([`EncoderConfig::default`]); [`reconstruct`] gives the decoder's result without
//!   coding.
//! * [`decode`] / [`decode_stream`] reconstruct the tensors (and the topology); [`units`] lists
//!   the units. Decoding is bounded by [`Limits`] and never panics on malformed input.
//!
//! Module map:
//! * [`bits`]: `u(n)`, `i(n)`, `ue(k)`, `ie(k)`, `flt(32)`, `st(v)`, byte alignment.
//! * [`cabac`]: the arithmetic coding engine (`BinEncoder` over a [`cabac::ByteSink`], a byte
//!   counting sink for trial encodes, `BinDecoder`), `ContextModel` with its two-rate
//!   probability estimation, the parameter optimiser's estimator, entry points.
//! * [`coding`]: context selection, level binarization, DQ states, row skipping, codebook
//!   limits, scan orders ([`coding::scan`]), per-context initialisation signalling, parallel
//!   block-row decoding.
//! * [`quant`]: step sizes, uniform and dependent (trellis) quantization, codebooks, integer
//!   aligned QPs, reconstruction.
//! * [`hls`]: NNR units and their headers/payloads (STR, MPS, LPS, TPL, QNT, NDU; AGG is
//!   recognised but not supported), performance maps ([`hls::perf`]).
//! * `stream` (re-exported items): the public encoder, decoder, limits and unit listing.
//!
//! Not supported (typed errors): NNR_PT_BLOCK and decomposed tensors, tensors split over
//! several topology elements, out-of-band tensor dimensions, temporal context modelling and
//! history dependent significance (incremental updates), NNR_AGG. Scalars are carried as
//! one-element vectors (as the reference does), so they decode with shape `[1]`.

// Exceptions: the AVX-512 kernels of the parameter optimiser and of the DQ trellis, selected
// at run time and tested to decide exactly as the scalar code (fallback and test oracle).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bits;
pub mod cabac;
pub mod coding;
mod error;
pub mod hls;
pub mod quant;
mod stream;

pub use error::{Error, Result};
pub use hls::{topology_compression_format, topology_storage_format, NnrUnitType, PayloadType};
pub use stream::{
    decode, decode_stream, encode, encode_with_topology, reconstruct, units, DecodedStream, Limits,
    NduInfo, Topology, UnitInfo,
};

use std::collections::HashMap;

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

/// Whether a tensor is quantized with the weight QP or the non-weight QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Weights: quantized with [`EncoderConfig::qp`].
    Weight,
    /// Biases, normalisation parameters, other vectors: [`EncoderConfig::nonweight_qp`].
    NonWeight,
}

impl TensorKind {
    /// The reference's rule (NNCodec `NNRModel`): a tensor with more than one dimension is a
    /// weight, anything else (vectors, scalars) is not.
    pub fn of_shape(shape: &[usize]) -> Self {
        if shape.len() > 1 {
            TensorKind::Weight
        } else {
            TensorKind::NonWeight
        }
    }
}

/// Per-tensor settings that override [`EncoderConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TensorOverride {
    /// QP for this tensor (the reference's `qp_per_tensor`).
    pub qp: Option<i32>,
    /// Dependent quantization on or off.
    pub use_dq: Option<bool>,
    /// Weight or non-weight, instead of [`TensorKind::of_shape`].
    pub kind: Option<TensorKind>,
    /// Store the tensor uncompressed (NNR_PT_RAW_FLOAT; float tensors only).
    pub raw: bool,
}

/// Encoder settings. `Default` gives the reference's `nnc.compress` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// QP of weights (`qp`, default −38).
    pub qp: i32,
    /// `qp_density` (default 2): 2^d QP steps per doubling of the step size.
    pub qp_density: u8,
    /// Dependent (trellis coded) quantization (`use_dq`, default on).
    pub use_dq: bool,
    /// 0 uniform, 1 codebook, 2 whichever is smaller per tensor (`codebook_mode`).
    pub codebook_mode: u8,
    /// Integer aligned quantization to this many bits (`int_quant_bw`), `None` off.
    pub int_quant_bw: Option<u32>,
    /// Signal all-zero rows with one flag each (`row_skipping`).
    pub row_skipping: bool,
    /// Choose per-context initialisations by a first pass (`param_opt`, default on).
    pub param_opt: bool,
    /// Parameter optimisation on only the first this many bins of each context: much faster
    /// encoding at a size cost of a fraction of a percent, but no longer the reference's exact
    /// decisions. `None` (default) evaluates all bins, as the reference.
    pub param_opt_bins: Option<u32>,
    /// QP of non-weights (`nonweight_qp`, default −75); `None` means `qp − 2^(d+1)`.
    pub nonweight_qp: Option<i32>,
    /// `scan_order` for tensors with more than one row (0 = raster, as the reference; 1..=4
    /// code blocks of 8..64 and add entry points so block rows decode in parallel).
    pub scan_order: u8,
    /// `cabac_unary_length_minus1` (default 10).
    pub cabac_unary_length_minus1: u8,
    /// Per-tensor overrides by name.
    pub overrides: HashMap<String, TensorOverride>,
    /// Encode tensors on several threads (rayon).
    pub parallel: bool,
}

impl EncoderConfig {
    /// The QP non-weight tensors get without a per-tensor override: `nonweight_qp`, or
    /// `qp − 2^(d+1)` where it is unset or 0 (as the reference).
    pub fn effective_nonweight_qp(&self) -> i32 {
        match self.nonweight_qp {
            Some(q) if q != 0 => q,
            _ => self.qp.saturating_sub(2 << self.qp_density),
        }
    }

    /// The QP and dependent-quantization switch tensor `name` of shape `shape` gets, before any
    /// integer alignment (`int_quant_bw`) or overflow adjustment: its override, else `qp` for
    /// weights and the non-weight QP for the rest.
    pub fn tensor_qp(&self, name: &str, shape: &[usize]) -> (i32, bool) {
        let ov = self.overrides.get(name).copied().unwrap_or_default();
        let kind = ov.kind.unwrap_or_else(|| TensorKind::of_shape(shape));
        let qp = ov.qp.unwrap_or(if kind == TensorKind::Weight {
            self.qp
        } else {
            self.effective_nonweight_qp()
        });
        (qp, ov.use_dq.unwrap_or(self.use_dq))
    }

    /// The defaults with sampled parameter optimisation (first 2000 bins per context): about
    /// twice as fast to encode, streams within 0.1% of the reference's size on the
    /// conformance set, identical reconstruction. Suited to rate-control trial encodes.
    pub fn fast() -> Self {
        EncoderConfig {
            param_opt_bins: Some(2000),
            ..Default::default()
        }
    }
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            qp: -38,
            qp_density: 2,
            use_dq: true,
            codebook_mode: 0,
            int_quant_bw: None,
            row_skipping: false,
            param_opt: true,
            param_opt_bins: None,
            nonweight_qp: Some(-75),
            scan_order: 0,
            cabac_unary_length_minus1: 10,
            overrides: HashMap::new(),
            parallel: true,
        }
    }
}
