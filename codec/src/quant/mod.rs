//! Quantization and reconstruction (ISO/IEC 15938-17 clause 8): step size from
//! `quantization_parameter` and `qp_density`, uniform (URQ) and dependent (trellis coded, 8 state)
//! quantization as the reference encoder performs them, codebook derivation, and the integer
//! aligned step sizes of the reference's `int_quant_bw` mode.
//!
//! Public: [`step_size`] / [`step_size_f64`] (the decoder's step size) and [`levels_fit`]; the
//! quantizers themselves are internal to the encoder.

pub(crate) mod codebook;
pub(crate) mod trellis;

use crate::coding::scan::ScanGeometry;
use crate::error::{Error, Result};
use crate::hls::CodebookSyntax;
use crate::ScanOrder;

/// Quantization step size as the decoder derives it (float32, exact power-of-two multiple):
/// `(2^d + (qp & (2^d - 1))) * 2^((qp >> d) - d)`.
pub fn step_size(qp: i32, qp_density: u8) -> f32 {
    step_size_f64(qp, qp_density) as f32
}

/// The same step size in double precision (codebook reconstruction uses it).
pub fn step_size_f64(qp: i32, qp_density: u8) -> f64 {
    let d = i32::from(qp_density.min(7));
    let k = 1i32 << d;
    let mul = k + (qp & (k - 1));
    let shift = qp >> d;
    f64::from(mul) * 2f64.powi(shift - d)
}

/// Reconstruction of uniform levels: `step * level` in float32 (the reference's `dequantLayer`).
pub(crate) fn dequantize(levels: &[i32], step: f32) -> Vec<f32> {
    levels.iter().map(|&l| step * l as f32).collect()
}

/// True if rounding `w / step` overflows the 32-bit level range for some weight.
fn overflows(weights: &[f32], step: f32, dq: bool) -> bool {
    let scale = 1.0f32 / step;
    let (hi, lo) = if dq {
        (f64::from(i32::MAX - 2), -f64::from(i32::MAX - 1))
    } else {
        (f64::from(i32::MAX), f64::from(i32::MIN))
    };
    weights.iter().any(|&w| {
        let s = f64::from((w * scale).round());
        !(lo..=hi).contains(&s)
    })
}

/// True if `weights` quantize at `qp` without overflowing 32-bit levels, i.e. without the
/// encoder raising the QP for the whole tensor (which a tensor holding a sentinel such as
/// −3.4e38 next to ordinary values would need, losing every ordinary value).
pub fn levels_fit(weights: &[f32], qp: i32, qp_density: u8, dq: bool) -> bool {
    !overflows(weights, step_size(qp, qp_density), dq)
}

/// Smallest QP whose levels fit 32 bits, as the reference recomputes it after an overflow.
fn overflow_free_qp(weights: &[f32], qp_density: u8) -> i32 {
    let k = f64::from(1u32 << qp_density);
    let max_abs = weights.iter().fold(0f32, |m, &w| m.max(w.abs()));
    let min_step = f64::from(max_abs) / f64::from((1u32 << 31) - 3);
    let base = (min_step.log2().floor() * k) as f32;
    let new_qp = f64::from(base) + ((min_step * k) / 2f64.powf(f64::from(base) / k) - k);
    (new_qp as f32).ceil() as i32
}

/// Quantizes `weights` (row-major, rows of `width`) with QP `qp`. Returns the levels in the
/// reference's stored form (for DQ: reconstruction indices, i.e. multiples of the step) and the
/// QP actually used (raised when levels would overflow 32 bits).
pub(crate) fn quantize(
    weights: &[f32],
    width: usize,
    qp: i32,
    qp_density: u8,
    dq: bool,
    scan_order: ScanOrder,
) -> (Vec<i32>, i32) {
    let mut qp = qp;
    let mut step = step_size(qp, qp_density);
    if overflows(weights, step, dq) {
        qp = overflow_free_qp(weights, qp_density);
        step = step_size(qp, qp_density);
    }
    let so = if width <= 1 || weights.len() == width {
        ScanOrder::Raster
    } else {
        scan_order
    };
    let levels = if dq {
        trellis::quantize_dq(weights, &ScanGeometry::new(weights.len(), width, so), step)
    } else {
        let scale = 1.0f32 / step;
        weights
            .iter()
            .map(|&w| (scale * w).round() as i32)
            .collect()
    };
    (levels, qp)
}

/// Float reconstruction of decoded levels, as the decoder performs it (uniform: `step * level`
/// in float32; codebook: `codebook[level + CbZeroOffset] * step` in double, then float32).
pub(crate) fn reconstruct(
    levels: &[i32],
    qp: i32,
    density: u8,
    cb: Option<&CodebookSyntax>,
) -> Result<Vec<f32>> {
    match cb {
        Some(cb) => {
            let step = step_size_f64(qp, density);
            levels
                .iter()
                .map(|&l| {
                    let i = i64::from(l) + i64::from(cb.zero_offset);
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| cb.values.get(i))
                        .map(|&c| (f64::from(c) * step) as f32)
                        .ok_or_else(|| Error::invalid("codebook index", format!("{i}")))
                })
                .collect()
        }
        None => Ok(dequantize(levels, step_size(qp, density))),
    }
}

/// [`reconstruct`] of levels the caller gives up: the uniform case reuses their buffer (the
/// decoder's largest allocation would otherwise be needed twice over).
pub(crate) fn reconstruct_owned(
    levels: Vec<i32>,
    qp: i32,
    density: u8,
    cb: Option<&CodebookSyntax>,
) -> Result<Vec<f32>> {
    if cb.is_some() {
        return reconstruct(&levels, qp, density, cb);
    }
    let step = step_size(qp, density);
    // Same layout in and out: `collect` writes the floats over the levels in place.
    Ok(levels.into_iter().map(|l| step * l as f32).collect())
}

/// Step size the reference derives for integer aligned quantization to `bw` bits: the 99.95th
/// percentile of magnitudes maps to the largest level. Returns the QP (`get_qp_from_stepsize`,
/// rounded half to even, clipped to the signalled range).
pub(crate) fn int_aligned_qp(weights: &[f32], qp_density: u8, bw: u32) -> i32 {
    let unsigned = !weights.iter().any(|&w| w < 0.0);
    let denom = if unsigned {
        (2f64).powi(bw as i32) - 1.0
    } else {
        (2f64).powi(bw as i32 - 1) - 1.0
    };
    let mut mags: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
    mags.sort_by(f32::total_cmp);
    let pct = percentile_linear(&mags, 99.95);
    let mut step = pct / denom;
    if step == 0.0 {
        step = f64::from(mags.last().copied().unwrap_or(0.0)) / denom;
    }
    let k = f64::from(1u32 << qp_density);
    let base = step.log2().floor() * k;
    let qp = base + ((step * k) / 2f64.powf(base / k) - k);
    let max_qp = f64::from(1u32 << (6 + u32::from(qp_density) - 1));
    let qp = if qp.is_nan() {
        0.0
    } else {
        qp.clamp(-max_qp, max_qp - 1.0)
    };
    qp.round_ties_even() as i32
}

/// NumPy's default ("linear") percentile of sorted data.
fn percentile_linear(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let idx = (n - 1) as f64 * q / 100.0;
    let lo = idx.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let t = idx - lo as f64;
    let a = f64::from(sorted[lo]);
    let b = f64::from(sorted[hi]);
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Clips levels to the signed or unsigned `bw` bit range (integer aligned mode).
pub(crate) fn clip_levels(levels: &mut [i32], weights: &[f32], bw: u32) {
    let unsigned = !weights.iter().any(|&w| w < 0.0);
    let (lo, hi) = if unsigned {
        (0i64, (1i64 << bw) - 1)
    } else {
        (-(1i64 << (bw - 1)), (1i64 << (bw - 1)) - 1)
    };
    for l in levels {
        *l = i64::from(*l).clamp(lo, hi) as i32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_sizes() {
        assert_eq!(step_size(0, 2), 1.0);
        assert_eq!(step_size(-4, 2), 0.5);
        assert_eq!(step_size(-38, 2), 6.0 * 2f32.powi(-12) * 1.0);
        assert_eq!(step_size(1, 2), 1.25);
        assert_eq!(step_size(-1, 3), 15.0 / 16.0);
    }

    #[test]
    fn int_aligned_qp_maps_percentile_to_top_level() {
        let w: Vec<f32> = (0..10000).map(|i| (i as f32 / 10000.0) - 0.5).collect();
        let qp = int_aligned_qp(&w, 2, 8);
        let s = step_size(qp, 2);
        let top = 0.5 / s;
        assert!((100.0..160.0).contains(&top), "{top}");
    }
}
