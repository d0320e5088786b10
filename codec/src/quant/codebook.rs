//! Codebook quantization (`codebook_present_flag`, clause 8.3.3): the distinct uniform levels of a
//! tensor form a sorted codebook; levels are coded as indices relative to `CbZeroOffset`, and
//! the codebook itself as `codebook_zero_value` plus Exp-Golomb coded gaps (`codebook_egk`).

use crate::bits::BitWriter;

/// Sorted distinct values of `levels` and each level's index into them.
pub fn derive(levels: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let mut values: Vec<i32> = levels.to_vec();
    values.sort_unstable();
    values.dedup();
    let idx = levels
        .iter()
        .map(|l| values.binary_search(l).map(|i| i as i32).unwrap_or(0))
        .collect();
    (values, idx)
}

/// Writes the `codebook()` syntax (without `codebook_egk` and `codebook_size`).
pub fn write_entries(w: &mut BitWriter, values: &[i32], zero_offset: usize, egk: u32) {
    let Some(&zero) = values.get(zero_offset) else {
        return;
    };
    w.ie(7, i64::from(zero));
    let mut prev = i64::from(zero);
    for j in (0..zero_offset).rev() {
        let v = i64::from(values[j]);
        w.ue(egk, (prev - v - 1) as u64);
        prev = v;
    }
    prev = i64::from(zero);
    for &v in &values[zero_offset + 1..] {
        let v = i64::from(v);
        w.ue(egk, (v - prev - 1) as u64);
        prev = v;
    }
}

/// Bits of the codebook entries at order `egk`.
pub fn entry_bits(values: &[i32], zero_offset: usize, egk: u32) -> usize {
    let mut w = BitWriter::new();
    write_entries(&mut w, values, zero_offset, egk);
    w.bit_len()
}

/// Bits of the whole `codebook()` syntax: `codebook_egk`, `codebook_size`,
/// `codebook_center_offset` and the entries (the reference's cost of signalling a codebook).
pub fn syntax_bits(values: &[i32], zero_offset: usize, egk: u32) -> usize {
    let mut w = BitWriter::new();
    w.u(4, u64::from(egk));
    w.ue(2, values.len() as u64);
    w.ie(2, zero_offset as i64 - (values.len() as i64 >> 1));
    write_entries(&mut w, values, zero_offset, egk);
    w.bit_len()
}

/// The cheapest `codebook_egk` (first of equals).
pub fn best_egk(values: &[i32], zero_offset: usize) -> u32 {
    (0..16u32)
        .min_by_key(|&k| (entry_bits(values, zero_offset, k), k))
        .unwrap_or(0)
}
