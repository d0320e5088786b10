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
    // One byte per state and element: previous state (3 bits) and candidate slot (3 bits).
    let mut dec = vec![0u8; n * 8];
    let mut cost = [0.5 * f64::MAX; 8];
    cost[0] = 0.0;
    for (k, row) in dec.chunks_exact_mut(8).enumerate() {
        let value = f64::from(weights[pos_of(k)]);
        let sign = if value < 0.0 { -1.0 } else { 1.0 };
        let org = qscale * value * sign;
        let mq = min_index(org);
        // Squared error of the candidate with residue r (mod 4) among mq..mq+4, and of zero.
        let cand = |r: i64| {
            let d = org - (mq + ((r - mq) & 3)) as f64;
            d * d
        };
        let dist = [cand(0), cand(1), cand(2), cand(3), org * org];
        let mut next = [0f64; 8];
        for s in 0..8 {
            let [(p0, q0), (p1, q1), (p2, q2)] = CON[s];
            let mut best = cost[p0 as usize] + dist[q0 as usize];
            let mut choice = (p0 << 3) | q0;
            let c1 = cost[p1 as usize] + dist[q1 as usize];
            if c1 < best {
                best = c1;
                choice = (p1 << 3) | q1;
            }
            let c2 = cost[p2 as usize] + dist[q2 as usize];
            if c2 < best {
                best = c2;
                choice = (p2 << 3) | q2;
            }
            next[s] = best;
            row[s] = choice;
        }
        cost = next;
    }
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
        let choice = dec[k * 8 + state];
        let prev = (choice >> 3) as usize;
        let slot = choice & 7;
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

    /// Reconstruction indices must be consistent with the state machine: replaying the states
    /// along the scan, each index belongs to the quantizer of its state.
    #[test]
    fn indices_follow_state_machine_and_are_close() {
        let w: Vec<f32> = (0..500)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let geo = ScanGeometry::new(w.len(), 25, 0).unwrap();
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
