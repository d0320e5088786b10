//! Encoder settings: [`EncoderConfig`] (the reference's `nnc.compress` arguments), per-tensor
//! overrides, and the enumerated settings [`CodebookMode`] and [`ScanOrder`].

use crate::error::{Error, Result};
use std::collections::HashMap;

/// `codebook_mode` of NNCodec's `nnc.compress`: how float tensors are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CodebookMode {
    /// 0: uniform levels (the reference's default).
    #[default]
    Uniform,
    /// 1: a codebook of the distinct uniform levels, coded as indices (`codebook_present_flag`).
    Codebook,
    /// 2: per tensor whichever of the two codes smaller.
    Smaller,
}

impl CodebookMode {
    /// The reference's number for the mode.
    pub fn code(self) -> u8 {
        match self {
            CodebookMode::Uniform => 0,
            CodebookMode::Codebook => 1,
            CodebookMode::Smaller => 2,
        }
    }
}

impl TryFrom<u8> for CodebookMode {
    type Error = Error;

    fn try_from(v: u8) -> Result<Self> {
        Ok(match v {
            0 => CodebookMode::Uniform,
            1 => CodebookMode::Codebook,
            2 => CodebookMode::Smaller,
            _ => return Err(Error::setting("codebook_mode", v)),
        })
    }
}

/// `scan_order` (NNR_NDU header): the order in which a tensor with several rows is coded.
/// Block scans code blocks of 8×8 to 64×64 elements, block row by block row, and signal an
/// entry point per block row (`cabac_entry_point_list`) so that block rows decode in parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScanOrder {
    /// 0: row by row (the reference's default; no entry points).
    #[default]
    Raster,
    /// 1: blocks of 8×8.
    Blocks8,
    /// 2: blocks of 16×16.
    Blocks16,
    /// 3: blocks of 32×32.
    Blocks32,
    /// 4: blocks of 64×64.
    Blocks64,
}

impl ScanOrder {
    /// The value of the `scan_order` syntax element.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Side of a square block, `None` for raster scan.
    pub fn block_size(self) -> Option<usize> {
        match self {
            ScanOrder::Raster => None,
            b => Some(4usize << b.code()),
        }
    }
}

impl TryFrom<u8> for ScanOrder {
    type Error = Error;

    fn try_from(v: u8) -> Result<Self> {
        Ok(match v {
            0 => ScanOrder::Raster,
            1 => ScanOrder::Blocks8,
            2 => ScanOrder::Blocks16,
            3 => ScanOrder::Blocks32,
            4 => ScanOrder::Blocks64,
            _ => return Err(Error::setting("scan_order", v)),
        })
    }
}

macro_rules! numbered {
    ($t:ty, $name:literal) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.code())
            }
        }

        /// Parses the reference's number (as command lines give it).
        impl std::str::FromStr for $t {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                let v: u8 = s.trim().parse().map_err(|_| Error::setting($name, s))?;
                Self::try_from(v)
            }
        }
    };
}

numbered!(CodebookMode, "codebook_mode");
numbered!(ScanOrder, "scan_order");

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
    /// `codebook_mode` (default [`CodebookMode::Uniform`]).
    pub codebook_mode: CodebookMode,
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
    /// `scan_order` of tensors with more than one row ([`ScanOrder::Raster`] as the reference;
    /// block scans add entry points so that block rows decode in parallel).
    pub scan_order: ScanOrder,
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
            codebook_mode: CodebookMode::Uniform,
            int_quant_bw: None,
            row_skipping: false,
            param_opt: true,
            param_opt_bins: None,
            nonweight_qp: Some(-75),
            scan_order: ScanOrder::Raster,
            cabac_unary_length_minus1: 10,
            overrides: HashMap::new(),
            parallel: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_settings_round_trip_and_refuse_bad_values() {
        for v in 0..=2u8 {
            let m = CodebookMode::try_from(v).unwrap();
            assert_eq!(m.code(), v);
            assert_eq!(m.to_string().parse::<CodebookMode>().unwrap(), m);
        }
        for v in 0..=4u8 {
            let s = ScanOrder::try_from(v).unwrap();
            assert_eq!(s.code(), v);
            assert_eq!(s.to_string().parse::<ScanOrder>().unwrap(), s);
        }
        assert_eq!(ScanOrder::Raster.block_size(), None);
        assert_eq!(ScanOrder::Blocks8.block_size(), Some(8));
        assert_eq!(ScanOrder::Blocks64.block_size(), Some(64));
        assert_eq!(
            CodebookMode::try_from(3),
            Err(Error::setting("codebook_mode", 3))
        );
        assert_eq!(ScanOrder::try_from(5), Err(Error::setting("scan_order", 5)));
        assert_eq!(
            "x".parse::<ScanOrder>(),
            Err(Error::setting("scan_order", "x"))
        );
        assert_eq!(
            "-1".parse::<CodebookMode>(),
            Err(Error::setting("codebook_mode", "-1"))
        );
    }
}
