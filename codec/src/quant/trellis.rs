//! Dependent quantization (trellis coded quantization with the 8 state machine of clause 8.3.2):
//! a Viterbi search over the states minimising squared error in scan order, as the reference
//! encoder does with its default `lambda_scale` of 0 (distortion only).
//!
//! Levels come out in "reconstruction index" form: weight ≈ index × step, where index is
//! `2·level − sgn(level)·(state & 1)`.

use crate::coding::scan::ScanGeometry;
use crate::coding::DQ_TRANS;

/// Candidate slot of a branch: 0..4 are the four nearest non-zero indices by `index & 3`,
/// 4 is zero.
const ZERO_SLOT: u8 = 4;

/// Incoming branches per state: (previous state, candidate slot). Built from the transition
/// table: state `s` uses quantizer `s & 1`; parity 0 takes indices ≡ 0 (Q0) or ≡ 3 (Q1) mod 4
/// or zero, parity 1 takes indices ≡ 2 (Q0) or ≡ 1 (Q1) mod 4. Branches are listed in order of
/// the previous state, which decides ties.
const CON: [[(u8, u8); 3]; 8] = {
    let mut out = [[(0u8, 0u8); 3]; 8];
    let mut fill = [0usize; 8];
    let mut prev = 0;
    while prev < 8 {
        let q = (prev & 1) as u8;
        let c0 = DQ_TRANS[prev][0] as usize;
        let c1 = DQ_TRANS[prev][1] as usize;
        out[c0][fill[c0]] = (prev as u8, 3 * q);
        fill[c0] += 1;
        out[c0][fill[c0]] = (prev as u8, ZERO_SLOT);
        fill[c0] += 1;
        out[c1][fill[c1]] = (prev as u8, 2 - q);
        fill[c1] += 1;
        prev += 1;
    }
    out
};

#[inline(always)]
fn min_index(org: f64) -> i64 {
    (org as i32 as i64 - 1).max(1)
}

/// The Viterbi forward pass: for every element (its five candidate distortions) and state, the
/// cheapest incoming branch, as its index into `CON[state]` in bits `2·state..2·state+2` of the
/// element's `dec` word (2 bytes per element: the largest tensors' decisions were 8 bytes per
/// weight, twice the weights themselves); returns the final costs.
fn forward(dists: impl Iterator<Item = [f64; 5]>, dec: &mut [u16]) -> [f64; 8] {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has the features `forward_avx512` is compiled for.
        #[allow(unsafe_code)]
        return unsafe { simd::forward_avx512(dists, dec) };
    }
    forward_scalar(dists, dec)
}

fn forward_scalar(dists: impl Iterator<Item = [f64; 5]>, dec: &mut [u16]) -> [f64; 8] {
    let mut cost = [0.5 * f64::MAX; 8];
    cost[0] = 0.0;
    for (dist, word) in dists.zip(dec.iter_mut()) {
        let mut next = [0f64; 8];
        let mut packed = 0u16;
        for s in 0..8 {
            let [(p0, q0), (p1, q1), (p2, q2)] = CON[s];
            let mut best = cost[p0 as usize] + dist[q0 as usize];
            let mut branch = 0u16;
            let c1 = cost[p1 as usize] + dist[q1 as usize];
            if c1 < best {
                best = c1;
                branch = 1;
            }
            let c2 = cost[p2 as usize] + dist[q2 as usize];
            if c2 < best {
                best = c2;
                branch = 2;
            }
            next[s] = best;
            packed |= branch << (2 * s);
        }
        *word = packed;
        cost = next;
    }
    cost
}

/// Eight one-byte branch indices (0..=2, state s in byte s) as 2-bit fields of one word.
#[inline(always)]
fn pack_branches(bytes: u64) -> u16 {
    // Pairs of bytes, then pairs of nibbles, then pairs of bytes again.
    let x = (bytes | (bytes >> 6)) & 0x000F_000F_000F_000F;
    let x = (x | (x >> 12)) & 0x0000_00FF_0000_00FF;
    ((x | (x >> 24)) & 0xFFFF) as u16
}

/// The forward pass with the eight states in the lanes of one AVX-512 register: the same
/// additions and comparisons in the same order, so the same decisions.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use super::CON;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_avx512(
        dists: impl Iterator<Item = [f64; 5]>,
        dec: &mut [u16],
    ) -> [f64; 8] {
        // Per branch i, lane s: previous state, candidate slot, and the byte to record.
        let lanes = |f: fn((u8, u8)) -> u8| -> [[i64; 8]; 3] {
            std::array::from_fn(|i| std::array::from_fn(|s| i64::from(f(CON[s][i]))))
        };
        let prev = lanes(|(p, _)| p);
        let slot = lanes(|(_, q)| q);
        let mut init = [0.5 * f64::MAX; 8];
        init[0] = 0.0;
        let mut out = [0f64; 8];
        // SAFETY: every load and store below is from or to an 8-lane array of 64-bit values
        // (64 bytes), or of 8 bytes.
        unsafe {
            let p: [__m512i; 3] =
                std::array::from_fn(|i| _mm512_loadu_si512(prev[i].as_ptr().cast()));
            let q: [__m512i; 3] =
                std::array::from_fn(|i| _mm512_loadu_si512(slot[i].as_ptr().cast()));
            let ch: [__m512i; 3] = std::array::from_fn(|i| _mm512_set1_epi64(i as i64));
            let mut cost = _mm512_loadu_pd(init.as_ptr());
            for (dist, word) in dists.zip(dec.iter_mut()) {
                let d = [dist[0], dist[1], dist[2], dist[3], dist[4], 0.0, 0.0, 0.0];
                let d = _mm512_loadu_pd(d.as_ptr());
                let branch = |i: usize| {
                    _mm512_add_pd(
                        _mm512_permutexvar_pd(p[i], cost),
                        _mm512_permutexvar_pd(q[i], d),
                    )
                };
                let mut best = branch(0);
                let mut pick = ch[0];
                for (i, &chi) in ch.iter().enumerate().skip(1) {
                    let c = branch(i);
                    let m = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(c, best);
                    best = _mm512_mask_blend_pd(m, best, c);
                    pick = _mm512_mask_blend_epi64(m, pick, chi);
                }
                let mut bytes = 0u64;
                _mm_storel_epi64((&raw mut bytes).cast(), _mm512_cvtepi64_epi8(pick));
                *word = super::pack_branches(u64::from_le(bytes));
                cost = best;
            }
            _mm512_storeu_pd(out.as_mut_ptr(), cost);
        }
        out
    }
}

/// Quantizes `weights` with dependent quantization along the scan of `geo`.
pub fn quantize_dq(weights: &[f32], geo: &ScanGeometry, step: f32) -> Vec<i32> {
    let n = weights.len();
    let mut out = vec![0i32; n];
    if n == 0 {
        return out;
    }
    let raster = geo.num_block_rows() <= 1;
    // Block scans need the position of every scan index for the backward pass.
    let order: Vec<u32> = if raster {
        Vec::new()
    } else {
        geo.positions().map(|p| p as u32).collect()
    };
    let pos_of = |k: usize| if raster { k } else { order[k] as usize };
    let qscale = 1.0f64 / f64::from(step);
    let mut dec = vec![0u16; n];
    let dists = (0..n).map(|k| {
        let value = f64::from(weights[pos_of(k)]);
        let sign = if value < 0.0 { -1.0 } else { 1.0 };
        let org = qscale * value * sign;
        let mq = min_index(org);
        // Squared error of the candidate with residue r (mod 4) among mq..mq+4, and of zero.
        let cand = |r: i64| {
            let d = org - (mq + ((r - mq) & 3)) as f64;
            d * d
        };
        [cand(0), cand(1), cand(2), cand(3), org * org]
    });
    let cost = forward(dists, &mut dec);
    let mut state = 0usize;
    let mut min = cost[0];
    for (s, &c) in cost.iter().enumerate().skip(1) {
        if c < min {
            min = c;
            state = s;
        }
    }
    for k in (0..n).rev() {
        let pos = pos_of(k);
        let branch = usize::from((dec[k] >> (2 * state)) & 3);
        let (prev, slot) = CON[state][branch];
        let prev = usize::from(prev);
        let level = if slot == ZERO_SLOT {
            0
        } else {
            let value = f64::from(weights[pos]);
            let neg = value < 0.0;
            let org = qscale * value * if neg { -1.0 } else { 1.0 };
            let mq = min_index(org);
            // The candidate index in mq..mq+4 whose residue mod 4 is `slot`.
            let q = mq + ((i64::from(slot) - mq).rem_euclid(4));
            // Computed wide and truncated to 32 bits, as the reference's int arithmetic wraps
            // for levels at the very edge of the range.
            let lv = (q + 1) >> 1;
            let lv = if neg { -lv } else { lv };
            let odd = (prev & 1) as i64;
            let d = lv * 2;
            (if d < 0 { d + odd } else { d - odd }) as i32
        };
        out[pos] = level;
        state = prev;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coding::DQ_TRANS;

    /// The vector forward pass (where the CPU has it) makes exactly the scalar decisions,
    /// ties included (integer-valued distortions tie often).
    #[test]
    fn forward_pass_matches_the_scalar_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for trial in 0..40 {
            let n = rng.gen_range(1..3000);
            let dists: Vec<[f64; 5]> = (0..n)
                .map(|_| {
                    if trial % 2 == 0 {
                        std::array::from_fn(|_| f64::from(rng.gen_range(0..4u8)))
                    } else {
                        std::array::from_fn(|_| rng.gen_range(0.0..9.0))
                    }
                })
                .collect();
            let mut a = vec![0u16; n];
            let mut b = vec![0u16; n];
            let ca = forward(dists.iter().copied(), &mut a);
            let cb = forward_scalar(dists.iter().copied(), &mut b);
            assert_eq!(a, b, "trial {trial}");
            assert_eq!(ca.map(f64::to_bits), cb.map(f64::to_bits), "trial {trial}");
        }
    }

    /// Every combination of eight branch indices packs into its 2-bit fields.
    #[test]
    fn branches_pack_into_two_bit_fields() {
        for code in 0..3u32.pow(8) {
            let branch: [u64; 8] =
                std::array::from_fn(|s| u64::from(code / 3u32.pow(s as u32) % 3));
            let bytes = (0..8).fold(0u64, |a, s| a | branch[s] << (8 * s));
            let want = (0..8).fold(0u16, |a, s| a | (branch[s] as u16) << (2 * s));
            assert_eq!(pack_branches(bytes), want, "{branch:?}");
        }
    }

    /// Reconstruction indices must be consistent with the state machine: replaying the states
    /// along the scan, each index belongs to the quantizer of its state.
    #[test]
    fn indices_follow_state_machine_and_are_close() {
        let w: Vec<f32> = (0..500)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let geo = ScanGeometry::new(w.len(), 25, crate::ScanOrder::Raster);
        let step = 0.01f32;
        let q = quantize_dq(&w, &geo, step);
        let mut state = 0u32;
        let mut err = 0f64;
        for (i, &ix) in q.iter().enumerate() {
            if ix != 0 {
                // Q0 (even states) reconstructs even indices, Q1 odd ones.
                assert_eq!((ix.unsigned_abs() & 1), state & 1, "element {i}");
            }
            let level = if ix == 0 {
                0
            } else {
                (ix + ix.signum() * (state & 1) as i32) / 2
            };
            state = DQ_TRANS[state as usize][(level & 1) as usize];
            err += (f64::from(w[i]) - f64::from(ix) * 0.01).powi(2);
        }
        assert!(err / (w.len() as f64) < 1e-4);
    }
}
