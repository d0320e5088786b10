//! DeepCABAC binary arithmetic coding engine (ISO/IEC 15938-17 clause 9.3): context models with
//! two-rate probability estimation, the 9-bit range coder (`BinEncoder` / `BinDecoder`), and the
//! encoder-side estimator used to choose per-context initialisations ("parameter optimisation").

mod optimizer;
mod tables;

#[cfg(feature = "unstable")]
pub use optimizer::ContextOptimizer;
pub use optimizer::ParamOptimizer;
pub(crate) use optimizer::RecordBins;

pub(crate) use tables::{INIT_SETS, RANGE_TAB_LPS, UPDATE_STEP};

use std::sync::OnceLock;

/// One adaptive binary context: two probability estimators of different window sizes whose sum
/// (`s0 * 16 + s1`, kept as `st`) is the probability state in the log domain.
///
/// The update and the range lookup are table driven with precomputed row offsets, so coding a
/// bin costs a few loads instead of multiplies and variable shifts (decoding is bin-serial).
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextModel {
    /// Slow estimator.
    s1: i16,
    /// Offset of this context's rows in [`NEXT_S0`], `(shift0 - 4) * 512`, and the
    /// initialisation set (for [`ContextModel::reset`]) in bits 12..16.
    r0: u16,
    /// The state's row of [`RLPS_FULL`] (`|column| * 256` of the LPS range table, from
    /// `(st >> 7) & 63`), the MPS in bit 15.
    row: u16,
    /// Fast estimator (8 bits in the reference).
    s0: i8,
    /// Offset of this context's rows in [`DELTA_S1`]: `(shift1 - 4) * 64`.
    r1: u8,
}

/// The fast estimator's update (clause 9.3.2.2, with the reference's 8-bit wrap) as a table:
/// `NEXT_S0[(shift0 - 4) * 512 + bin * 256 + s0 as u8]` is the new `s0`.
const NEXT_S0: [i8; 2048] = {
    let mut t = [0i8; 2048];
    let mut sh = 0;
    while sh < 4 {
        let mut bin = 0;
        while bin < 2 {
            let sign: i32 = if bin == 1 { 1 } else { -1 };
            let mut u = 0;
            while u < 256 {
                let s0 = u as u8 as i8 as i32;
                let i = (16 + ((sign * s0) >> 3)) & 31;
                let n0 = s0 + sign * ((UPDATE_STEP[i as usize] as i32) >> (sh + 4));
                t[sh * 512 + bin * 256 + u] = n0 as i8;
                u += 1;
            }
            bin += 1;
        }
        sh += 1;
    }
    t
};

/// The slow estimator's signed step: `DELTA_S1[(shift1 - 4) * 64 + bin * 32 + i]` with
/// `i = (16 + (±s1 >> 7)) & 31` (the sign of the bin applied to `s1`). Padded to 256 entries.
const DELTA_S1: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut sh = 0;
    while sh < 3 {
        let mut i = 0;
        while i < 32 {
            let d = UPDATE_STEP[i] >> (sh + 4);
            t[sh * 64 + i] = -d;
            t[sh * 64 + 32 + i] = d;
            i += 1;
        }
        sh += 1;
    }
    t
};

/// `RANGE_TAB_LPS` padded so that every index `(range & 0xe0) + |state >> 7|` (at most 256) is
/// inside; the pad repeats the smallest sub-range.
const RLPS: [u8; 264] = {
    let mut t = [2u8; 264];
    let mut i = 0;
    while i < 256 {
        t[i] = RANGE_TAB_LPS[i];
        i += 1;
    }
    t
};

/// Columns of the LPS range table (`|st >> 7|`, states keep `st >> 7` within −32..=31).
const COLUMNS: usize = 33;

/// The LPS range table by column and every range value, each entry with the renormalisation
/// shift after an LPS: `[col * 256 + (range & 255)]` for ranges 256..=511 is the flat
/// `RLPS[((range >> 5) & 7) * 32 + col]`. Indexing by the whole range takes the shift and mask
/// of `range >> 5` off the bin-to-bin dependency chain.
static RLPS_FULL: [(u8, u8); COLUMNS * 256] = {
    let mut t = [(0u8, 0u8); COLUMNS * 256];
    let mut col = 0;
    while col < COLUMNS {
        let mut r = 0;
        while r < 256 {
            let l = RLPS[(((256 + r) >> 5) & 7) * 32 + col];
            t[col * 256 + r] = (l, (l as u32).leading_zeros() as u8 - 23);
            r += 1;
        }
        col += 1;
    }
    t
};

/// [`ContextModel::row`] of `q = (st >> 7) & 63`: the column `|st >> 7|` times 256, and the
/// MPS (1 exactly when `q` < 32) in bit 15.
const Q_ROW: [u16; 64] = {
    let mut t = [0u16; 64];
    let mut q = 0;
    while q < 64 {
        t[q] = if q < 32 {
            ((q as u16) << 8) | (1 << 15)
        } else {
            ((64 - q) as u16) << 8
        };
        q += 1;
    }
    t
};

impl ContextModel {
    /// A context initialised with set `idx` (0..9) of the selectable initialisations.
    pub fn new(idx: u8) -> Self {
        let mut c = ContextModel::default();
        c.init(idx);
        c
    }

    /// (Re)initialises with set `idx` and remembers it for [`ContextModel::reset`].
    #[inline]
    pub fn init(&mut self, idx: u8) {
        let idx = idx.min(8);
        let set = INIT_SETS[usize::from(idx)];
        self.r0 = (set[0] as u16 * 512) | (u16::from(idx) << 12);
        self.r1 = (set[1] as u8 - 4) * 64;
        self.reset();
    }

    /// Back to the initial state of the remembered set (entry points, clause 9.3.2.3).
    #[inline]
    pub fn reset(&mut self) {
        let set = INIT_SETS[usize::from(self.r0 >> 12).min(8)];
        self.s0 = set[3] as i8;
        self.s1 = set[2] - 16 * set[3];
        self.set_state(set[2]);
    }

    #[inline(always)]
    fn set_state(&mut self, st: i16) {
        self.row = Q_ROW[((st >> 7) & 63) as usize];
    }

    /// Probability update after coding `bin`.
    #[inline(always)]
    pub fn update(&mut self, bin: u32) {
        let b = (bin & 1) as usize;
        let i0 = (usize::from(self.r0) + (b << 8) + usize::from(self.s0 as u8)) & 2047;
        let s0 = NEXT_S0[i0];
        let s1 = i32::from(self.s1);
        let t = if b == 1 { s1 } else { -s1 };
        let i1 = (usize::from(self.r1) + (b << 5) + ((16 + (t >> 7)) & 31) as usize) & 255;
        let s1 = s1 + i32::from(DELTA_S1[i1]);
        self.s0 = s0;
        self.s1 = s1 as i16;
        self.set_state((16 * i32::from(s0) + s1) as i16);
    }

    #[cfg(test)]
    /// Sub-range of the least probable symbol for the current `range` (256..=510).
    #[inline(always)]
    pub fn rlps(&self, range: u32) -> u32 {
        self.rlps_shift(range).0
    }

    /// The LPS sub-range and the renormalisation shift after coding an LPS with it.
    #[inline(always)]
    pub fn rlps_shift(&self, range: u32) -> (u32, u32) {
        let i = usize::from(self.row & 0x7fff) + (range & 255) as usize;
        let (r, n) = RLPS_FULL.get(i).copied().unwrap_or((2, 7));
        (u32::from(r), u32::from(n))
    }

    /// The most probable symbol.
    #[inline(always)]
    pub fn mps(&self) -> u32 {
        u32::from(self.row >> 15)
    }
}

/// Table of estimated bit costs (1/32768 bit) of bins 0 and 1 per probability state bucket
/// `512 + (s0_plus_s1 >> 3)`. The LPS cost is linear in the log-domain state; the value is
/// derived here rather than tabulated (it reproduces the reference encoder's estimates).
fn est_bits_table() -> &'static [[u32; 2]; 1024] {
    static T: OnceLock<Box<[[u32; 2]; 1024]>> = OnceLock::new();
    T.get_or_init(|| {
        // Log2 of the LPS probability falls by this much per bucket away from one half.
        const SLOPE: f64 = 0.012_231_413_2;
        let mut t = Box::new([[0u32; 2]; 1024]);
        for (k, e) in t.iter_mut().enumerate() {
            let n = if k < 512 { (512 - k).min(511) } else { k - 512 };
            let x = n as f64 + 0.5;
            let lps_bits = 1.0 + x * SLOPE;
            let p_lps = (-lps_bits).exp2();
            let lps = (32768.0 * lps_bits).round_ties_even() as u32;
            let mps = (-(1.0 - p_lps).log2() * 32768.0).round_ties_even() as u32;
            *e = if k < 512 { [mps, lps] } else { [lps, mps] };
        }
        t
    })
}

/// Where a [`BinEncoder`] puts its bytes.
pub trait ByteSink: Default {
    /// Appends one byte.
    fn push(&mut self, b: u8);
}

impl ByteSink for Vec<u8> {
    #[inline]
    fn push(&mut self, b: u8) {
        Vec::push(self, b);
    }
}

/// Counts bytes without storing them: the size of a coding pass without its memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteCounter(pub usize);

impl ByteSink for ByteCounter {
    #[inline]
    fn push(&mut self, _b: u8) {
        self.0 += 1;
    }
}

/// Arithmetic encoder (clause 9.3.4.3 in encoder form). Generic over the byte sink.
#[derive(Debug, Clone)]
pub struct BinEncoder<S: ByteSink> {
    sink: S,
    low: u32,
    range: u32,
    buffered_byte: u32,
    num_buffered: u32,
    bits_left: i32,
}

impl<S: ByteSink> BinEncoder<S> {
    /// Starts a CABAC stream.
    pub fn new(sink: S) -> Self {
        BinEncoder {
            sink,
            low: 0,
            range: 510,
            buffered_byte: 0,
            num_buffered: 0,
            bits_left: 23,
        }
    }

    /// Sets the range to 256 at the start of a block row (entry point).
    pub fn entry_point_start(&mut self) {
        self.range = 256;
    }

    /// Codes `bin` with context `ctx` and adapts it.
    #[inline(always)]
    pub fn encode_bin(&mut self, bin: u32, ctx: &mut ContextModel) {
        let (rlps, n_lps) = ctx.rlps_shift(self.range);
        let rmps = self.range - rlps;
        // Branch-free MPS/LPS selection, as in the decoder.
        let n_mps = u32::from(rmps < 256);
        let mask = u32::from(bin != ctx.mps()).wrapping_neg();
        self.low = self.low.wrapping_add(rmps & mask);
        let range = rmps ^ ((rmps ^ rlps) & mask);
        let n = n_mps ^ ((n_mps ^ n_lps) & mask);
        self.range = range << n;
        self.low = self.low.wrapping_shl(n);
        self.bits_left -= n as i32;
        if self.bits_left < 12 {
            self.write_out();
        }
        ctx.update(bin);
    }

    /// Codes one equiprobable (bypass) bin.
    #[inline]
    pub fn encode_bin_ep(&mut self, bin: u32) {
        self.low = self.low.wrapping_shl(1);
        if bin != 0 {
            self.low = self.low.wrapping_add(self.range);
        }
        self.bits_left -= 1;
        if self.bits_left < 12 {
            self.write_out();
        }
    }

    /// Codes the `n` low bits of `v` as bypass bins, most significant first.
    #[inline]
    pub fn encode_bins_ep(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.encode_bin_ep((v >> i) & 1);
        }
    }

    fn write_out(&mut self) {
        let lead = self.low >> (24 - self.bits_left);
        self.bits_left += 8;
        self.low &= 0xffff_ffffu32 >> self.bits_left;
        if lead == 0xff {
            self.num_buffered += 1;
        } else if self.num_buffered > 0 {
            let carry = lead >> 8;
            let byte = self.buffered_byte + carry;
            self.buffered_byte = lead & 0xff;
            self.sink.push(byte as u8);
            let fill = ((0xff + carry) & 0xff) as u8;
            while self.num_buffered > 1 {
                self.sink.push(fill);
                self.num_buffered -= 1;
            }
        } else {
            self.num_buffered = 1;
            self.buffered_byte = lead;
        }
    }

    /// Codes the terminating bin 1 and flushes (`terminate_cabac_encoding`); returns the sink.
    pub fn finish(mut self) -> S {
        // Terminating bin equal to one.
        self.range -= 2;
        self.low = self.low.wrapping_add(self.range);
        self.low = self.low.wrapping_shl(7);
        self.range = 2 << 7;
        self.bits_left -= 7;
        if self.bits_left < 12 {
            self.write_out();
        }
        if (u64::from(self.low) >> (32 - self.bits_left)) != 0 {
            self.sink.push((self.buffered_byte + 1) as u8);
            while self.num_buffered > 1 {
                self.sink.push(0x00);
                self.num_buffered -= 1;
            }
            self.low = self.low.wrapping_sub(1u32 << (32 - self.bits_left));
        } else {
            if self.num_buffered > 0 {
                self.sink.push(self.buffered_byte as u8);
            }
            while self.num_buffered > 1 {
                self.sink.push(0xff);
                self.num_buffered -= 1;
            }
        }
        // Stop bit, then the remaining bits left aligned.
        self.low >>= 8;
        self.low = (self.low << 1) + 1;
        self.bits_left -= 1;
        let nbits = (24 - self.bits_left).max(0) as u32;
        self.low = self.low.wrapping_shl(32 - nbits);
        let mut i = 0u32;
        while i < nbits {
            self.sink.push(((self.low >> (24 - i)) & 0xff) as u8);
            i += 8;
        }
        self.sink
    }
}

/// A position in a CABAC stream from which decoding can restart (clause 9.3.2.4):
/// the bit offset, the 8 most significant bits of the decoder value, and the DQ state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryPoint {
    /// Bit offset as the decoder counts it.
    pub bit_offset: u64,
    /// `value >> 7` at that position (8 bits).
    pub value: u32,
    /// Dependent quantization state (0..8).
    pub dq_state: u32,
}

/// Arithmetic decoder (clause 9.3.4.3). Reading past the end yields zero bytes; callers bound
/// the number of decoded bins by the declared tensor size, so this always terminates.
///
/// The clause's decoder keeps a 16-bit `ivlOffset` window (the 9-bit range scale times 2^7)
/// and reads one byte whenever 8 bits have been shifted out. Here the window sits in bits
/// 55..40 of a 64-bit register with up to 39 further stream bits below it, refilled four bytes
/// at a time: the window's bits, and so every decision, are the clause's (its not yet read
/// low bits never reach a comparison), with a refill test per bin instead of a byte read per
/// eight shifts. [`BinDecoder::entry_point`] converts back to the clause's bit count.
#[derive(Debug, Clone)]
pub struct BinDecoder<'a> {
    data: &'a [u8],
    /// Bytes loaded into `value` (may exceed the data length: the rest reads as zeros).
    pos: usize,
    range: u32,
    /// The window (`ivlOffset`) in bits 55..40, then `avail` stream bits.
    value: u64,
    /// Stream bits loaded below the window; at least 8 before every bin.
    avail: u32,
}

/// Position of the window's least significant bit in [`BinDecoder::value`].
const WIN: u32 = 40;

impl<'a> BinDecoder<'a> {
    /// Starts decoding at the first byte of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        let mut d = BinDecoder {
            data,
            pos: 0,
            range: 510,
            value: 0,
            avail: 0,
        };
        d.load(0, WIN + 15);
        d
    }

    /// Puts stream bits from bit `from` on at `value` bit `at` and downwards, up to a byte
    /// boundary of the stream below the window, then refills.
    fn load(&mut self, from: u64, at: u32) {
        let mut bit = from;
        let mut p = i64::from(at);
        while !(bit.is_multiple_of(8) && p < i64::from(WIN)) {
            let byte = usize::try_from(bit >> 3).unwrap_or(usize::MAX);
            let b = (self.byte(byte) >> (7 - (bit & 7))) & 1;
            self.value |= u64::from(b) << p;
            bit += 1;
            p -= 1;
        }
        self.pos = usize::try_from(bit >> 3).unwrap_or(usize::MAX);
        self.avail = (i64::from(WIN) - 1 - p) as u32;
        if self.avail < 8 {
            self.refill();
        }
    }

    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        self.data.get(i).copied().unwrap_or(0)
    }

    /// Loads four more bytes below the remaining stream bits.
    #[inline(always)]
    fn refill(&mut self) {
        let w = match self.data.get(self.pos..self.pos.saturating_add(4)) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => u32::from_be_bytes(std::array::from_fn(|k| self.byte(self.pos + k))),
        };
        self.value |= u64::from(w) << (WIN - self.avail - 32);
        self.pos = self.pos.saturating_add(4);
        self.avail += 32;
    }

    /// Shifts `n` (<= 8) decoded bits out of the window.
    #[inline(always)]
    fn shift(&mut self, n: u32) {
        self.value <<= n;
        self.avail -= n;
        if self.avail < 8 {
            self.refill();
        }
    }

    /// Stream bits up to the end of the window (shifted out ones included).
    fn window_end(&self) -> u64 {
        (self.pos as u64 * 8).saturating_sub(u64::from(self.avail))
    }

    /// True if the clause's decoder would have read beyond the end of the data.
    #[cfg(test)]
    pub fn overrun(&self) -> bool {
        self.window_end() / 8 > self.data.len() as u64
    }

    /// True once the window has moved more than `slack` bytes past the end of the data. A
    /// valid stream never does (the encoder's flush leaves the window's last bits inside it),
    /// while garbage decodes on zeros: checked per row, it bounds the bypass and remainder bins
    /// a short hostile payload can make the decoder run through.
    #[inline]
    pub fn past_end(&self, slack: u64) -> bool {
        self.window_end()
            > (self.data.len() as u64)
                .saturating_add(slack)
                .saturating_mul(8)
    }

    /// Sets the range to 256 at the start of a block row.
    pub fn entry_point_start(&mut self) {
        self.range = 256;
    }

    /// Decodes one bin with context `ctx` and adapts it.
    #[inline(always)]
    pub fn decode_bin(&mut self, ctx: &mut ContextModel) -> u32 {
        let (rlps, n_lps) = ctx.rlps_shift(self.range);
        let rmps = self.range - rlps;
        // Both outcomes' next range and shift are ready before the comparison, which then only
        // selects (branch-free: the outcome is unpredictable for many contexts).
        let n_mps = u32::from(rmps < 256);
        let scaled = u64::from(rmps) << (WIN + 7);
        let lps = u32::from(self.value >= scaled);
        let mask = lps.wrapping_neg();
        let bin = ctx.mps() ^ lps;
        self.value -= scaled & u64::from(lps).wrapping_neg();
        let range = rmps ^ ((rmps ^ rlps) & mask);
        let n = n_mps ^ ((n_mps ^ n_lps) & mask);
        self.range = range << n;
        self.shift(n);
        ctx.update(bin);
        bin
    }

    /// Decodes one bypass bin.
    #[inline]
    pub fn decode_bin_ep(&mut self) -> u32 {
        self.shift(1);
        let sr = u64::from(self.range) << (WIN + 7);
        if self.value >= sr {
            self.value -= sr;
            1
        } else {
            0
        }
    }

    /// Decodes `n` (<= 32) bypass bins, most significant first.
    #[inline]
    pub fn decode_bins_ep(&mut self, n: u32) -> u32 {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.decode_bin_ep();
        }
        v
    }

    /// The current position as an entry point: the clause's bit offset is the number of bits
    /// shifted out of the window.
    pub fn entry_point(&self, dq_state: u32) -> EntryPoint {
        EntryPoint {
            bit_offset: self.window_end().saturating_sub(16),
            value: ((self.value >> (WIN + 7)) & 255) as u32,
            dq_state,
        }
    }

    /// Restarts decoding at `ep` with range 256: the window's bits 14..7 are the entry point's
    /// value, its low 7 bits and the rest the stream's from bit `bit_offset + 9` on.
    pub fn seek(&mut self, ep: &EntryPoint) {
        self.range = 256;
        self.value = u64::from(ep.value & 255) << (WIN + 7);
        self.load(ep.bit_offset.saturating_add(9), WIN + 6);
    }

    /// Decodes the terminating bin (`decode_terminate`).
    #[cfg(test)]
    pub fn decode_bin_trm(&mut self) -> u32 {
        self.range -= 2;
        let sr = u64::from(self.range) << (WIN + 7);
        if self.value >= sr {
            1
        } else {
            if self.range < 256 {
                self.range += self.range;
                self.shift(1);
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn encoder_decoder_round_trip_with_counting_sink() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for trial in 0..50 {
            let n = rng.gen_range(0..5000);
            let p: f64 = rng.gen_range(0.01..0.99);
            let ops: Vec<(u8, u32, usize)> = (0..n)
                .map(|_| {
                    let kind = rng.gen_range(0..10u8);
                    let bin = u32::from(rng.gen_bool(p));
                    (kind, bin, rng.gen_range(0..4))
                })
                .collect();
            let init = (trial % 9) as u8;
            let mut ctx = [ContextModel::new(init); 4];
            let mut enc = BinEncoder::new(Vec::new());
            let mut cnt_ctx = [ContextModel::new(init); 4];
            let mut cnt = BinEncoder::new(ByteCounter::default());
            for &(k, b, c) in &ops {
                if k == 0 {
                    enc.encode_bins_ep(b * 5 + 2, 3);
                    cnt.encode_bins_ep(b * 5 + 2, 3);
                } else {
                    enc.encode_bin(b, &mut ctx[c]);
                    cnt.encode_bin(b, &mut cnt_ctx[c]);
                }
            }
            let bytes = enc.finish();
            assert_eq!(cnt.finish().0, bytes.len());
            let mut ctx = [ContextModel::new(init); 4];
            let mut dec = BinDecoder::new(&bytes);
            for &(k, b, c) in &ops {
                if k == 0 {
                    assert_eq!(dec.decode_bins_ep(3), b * 5 + 2);
                } else {
                    assert_eq!(dec.decode_bin(&mut ctx[c]), b);
                }
            }
            assert_eq!(dec.decode_bin_trm(), 1);
            assert!(!dec.overrun());
        }
    }

    /// The clause's decoder as written there: a 16-bit window refilled one byte at a time.
    struct ClauseDecoder<'a> {
        data: &'a [u8],
        pos: usize,
        range: u32,
        value: u32,
        bits_needed: i32,
    }

    impl<'a> ClauseDecoder<'a> {
        fn new(data: &'a [u8]) -> Self {
            let mut d = ClauseDecoder {
                data,
                pos: 0,
                range: 510,
                value: 0,
                bits_needed: -8,
            };
            d.value = (d.next() << 8) | d.next();
            d
        }
        fn next(&mut self) -> u32 {
            let b = self.data.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            u32::from(b)
        }
        fn bin(&mut self, ctx: &mut ContextModel) -> u32 {
            let (rlps, _) = ctx.rlps_shift(self.range);
            let mut bin = ctx.mps();
            self.range -= rlps;
            let scaled = self.range << 7;
            if self.value < scaled {
                if scaled < (256 << 7) {
                    self.range = scaled >> 6;
                    self.value <<= 1;
                    self.bits_needed += 1;
                    if self.bits_needed == 0 {
                        self.bits_needed = -8;
                        self.value += self.next();
                    }
                }
            } else {
                bin ^= 1;
                let n = (rlps.leading_zeros() - 23) as i32;
                self.value = (self.value - scaled) << n;
                self.range = rlps << n;
                self.bits_needed += n;
                if self.bits_needed >= 0 {
                    self.value += self.next() << self.bits_needed;
                    self.bits_needed -= 8;
                }
            }
            ctx.update(bin);
            bin
        }
        fn ep(&mut self) -> u32 {
            self.value <<= 1;
            self.bits_needed += 1;
            if self.bits_needed >= 0 {
                self.bits_needed = -8;
                self.value += self.next();
            }
            let sr = self.range << 7;
            if self.value >= sr {
                self.value -= sr;
                1
            } else {
                0
            }
        }
        fn entry_point(&self) -> (u64, u32) {
            let off = self.pos as i64 * 8 - 8 + i64::from(self.bits_needed);
            (off as u64, (self.value >> 7) & 255)
        }
        fn seek(&mut self, ep: &EntryPoint) {
            self.range = 256;
            let t = ep.bit_offset + 9;
            let (byte_off, bit_off) = ((t >> 3) as usize, (t & 7) as i32);
            if bit_off != 0 {
                self.pos = byte_off + 1;
                self.bits_needed = bit_off - 9;
            } else {
                self.pos = byte_off;
                self.bits_needed = -1;
            }
            let prev = u32::from(self.data.get(self.pos - 1).copied().unwrap_or(0));
            self.value = ((ep.value & 255) << 7) + ((prev << (8 + self.bits_needed)) & 127);
        }
    }

    /// The 64-bit window decides every bin as the clause's decoder does, reports the same
    /// entry points and restarts from them identically, past the end of the data too.
    #[test]
    fn decoder_matches_the_clause_decoder() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for trial in 0..200 {
            let len = rng.gen_range(0..300);
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let mut ctx_a = [ContextModel::new((trial % 9) as u8); 3];
            let mut ctx_b = ctx_a;
            let mut a = BinDecoder::new(&data);
            let mut b = ClauseDecoder::new(&data);
            let mut marks = Vec::new();
            for step in 0..rng.gen_range(0..3000) {
                match rng.gen_range(0..20) {
                    0..=2 => assert_eq!(a.decode_bin_ep(), b.ep(), "trial {trial} step {step}"),
                    3 => {
                        let ep = a.entry_point(0);
                        assert_eq!((ep.bit_offset, ep.value), b.entry_point());
                        marks.push(ep);
                    }
                    4 if !marks.is_empty() => {
                        let ep = marks[rng.gen_range(0..marks.len())];
                        a.seek(&ep);
                        b.seek(&ep);
                    }
                    k => {
                        let c = (k % 3) as usize;
                        let x = a.decode_bin(&mut ctx_a[c]);
                        assert_eq!(x, b.bin(&mut ctx_b[c]), "trial {trial} step {step}");
                    }
                }
            }
            assert_eq!(a.overrun(), b.pos > data.len());
        }
    }

    #[test]
    fn estimated_bits_are_consistent() {
        let t = est_bits_table();
        for (k, e) in t.iter().enumerate() {
            // Costs of the two bins describe probabilities summing to about one.
            let p: f64 = e.iter().map(|&b| (-(b as f64) / 32768.0).exp2()).sum();
            assert!((p - 1.0).abs() < 1e-4, "bucket {k}: {p}");
        }
        assert_eq!(t[0], t[1]);
        assert_eq!(t[100][0], t[924][1]);
    }
}
