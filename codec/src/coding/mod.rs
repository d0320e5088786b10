//! Coding of one tensor's quantized levels with DeepCABAC (ISO/IEC 15938-17 clause 9.3):
//! context selection (the reference's "ContextModeler"), binarization of levels (`sig_flag`,
//! `sign_flag`, `abs_level_greater_x` flags, `abs_level_greater_x2` Exp-Golomb remainder),
//! dependent quantization states, row skipping, codebook-limited levels, block scan orders with
//! entry points, and the per-context initialisation signalling ("parameter optimisation").

pub mod scan;

use crate::cabac::{
    BinDecoder, BinEncoder, ByteSink, ContextModel, EntryPoint, ParamOptimizer, RecordBins,
};
use crate::error::{Error, Result};
use crate::ScanOrder;
use scan::ScanGeometry;

/// Dependent quantization state transition table: `next = DQ_TRANS[state][level & 1]`.
pub const DQ_TRANS: [[u32; 2]; 8] = [
    [0, 2],
    [7, 5],
    [1, 3],
    [6, 4],
    [2, 0],
    [5, 7],
    [3, 1],
    [4, 6],
];

/// The state after `n` transitions with even levels (a skipped row advances DQ by its width).
pub fn dq_advance_zeros(state: u32, n: usize) -> u32 {
    // Even-parity transitions fix 0 and 5, cycle 1→7→4→2 and swap 3↔6: period 4.
    let mut s = state & 7;
    for _ in 0..(n % 4) {
        s = DQ_TRANS[s as usize][0];
    }
    s
}

/// Context index layout for `g` greater-than flags (`cabac_unary_length_minus1 + 1`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx {
    g: usize,
}

const CTX_SIG: usize = 0;
const CTX_SIGN: usize = 48;
const CTX_GTX: usize = 53;

impl Ctx {
    pub(crate) fn new(g: u32) -> Self {
        Ctx { g: g as usize }
    }
    #[inline(always)]
    fn rem(&self) -> usize {
        CTX_GTX + 4 * self.g
    }
    #[inline(always)]
    fn param_opt(&self) -> usize {
        self.rem() + 32 + 2
    }
    #[inline(always)]
    fn row_skip(&self) -> usize {
        self.rem() + 32 + 4
    }
    pub(crate) fn count(&self) -> usize {
        self.rem() + 32 + 5
    }
    #[inline(always)]
    fn sig(state: u32, neighbor: i32) -> usize {
        CTX_SIG + 3 * state as usize + Self::neighbor_class(neighbor)
    }
    #[inline(always)]
    fn sign(neighbor: i32) -> usize {
        CTX_SIGN + Self::neighbor_class(neighbor)
    }
    #[inline(always)]
    fn gtx(positive: bool, j: usize) -> usize {
        CTX_GTX + (j << 1) + usize::from(!positive)
    }
    #[inline(always)]
    fn neighbor_class(n: i32) -> usize {
        // 0 for zero, 1 for negative, 2 for positive.
        usize::from(n != 0) + usize::from(n > 0)
    }
}

/// Everything that shapes the CABAC coding of one tensor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerParams {
    /// Elements per row: product of all dimensions but the first (`layerWidth`).
    pub width: usize,
    /// Number of elements.
    pub num: usize,
    /// `dq_flag`.
    pub dq: bool,
    /// `scan_order`.
    pub scan_order: ScanOrder,
    /// `general_profile_idc`.
    pub profile: u8,
    /// `parent_node_id_present_flag` (signals `hist_dep_sig_prob_enabled_flag`).
    pub parent_node_id_present: bool,
    /// Codebook size (0 without codebook).
    pub cb_size: u32,
    /// `CbZeroOffset`.
    pub cb_zero: u32,
    /// Number of greater-than flags, `cabac_unary_length_minus1 + 1`.
    pub g: u32,
}

impl LayerParams {
    fn row_skip_possible(&self) -> bool {
        self.profile == 1 && self.width > 1 && self.num > self.width && self.cb_size != 1
    }

    /// The scan actually used: raster whenever the tensor is a single row or column.
    pub(crate) fn geometry(&self) -> ScanGeometry {
        let so = if self.width <= 1 || self.num == self.width {
            ScanOrder::Raster
        } else {
            self.scan_order
        };
        ScanGeometry::new(self.num, self.width.max(1), so)
    }

    fn max_abs(&self, negative: bool) -> i64 {
        if self.profile == 1 && self.cb_size > 0 {
            if negative {
                i64::from(self.cb_zero)
            } else {
                i64::from(self.cb_size) - i64::from(self.cb_zero) - 1
            }
        } else {
            -1
        }
    }

    fn sign_implied(&self) -> bool {
        self.profile == 1
            && self.cb_size > 0
            && (self.cb_zero == 0 || self.cb_zero == self.cb_size - 1)
    }

    /// Contexts whose initialisation index is signalled, in signalling order, and whether it
    /// is actually present (`xShiftParameterIds`).
    fn signalled_inits(&self) -> Vec<(usize, bool)> {
        let c = Ctx::new(self.g);
        let cb = self.cb_size;
        let mut v = Vec::with_capacity(3 + 24 + 2 * c.g + 31);
        for i in 0..(if self.dq { 24 } else { 3 }) {
            v.push((CTX_SIG + i, cb != 1));
        }
        let sign_present = !(cb > 0 && (self.cb_zero == 0 || self.cb_zero == cb - 1)) && cb != 1;
        for a in 0..3 {
            v.push((CTX_SIGN + a, sign_present));
        }
        let max_abs: i64 = if cb > 0 {
            i64::from(self.cb_zero.max(cb - 1 - self.cb_zero))
        } else {
            -1
        };
        for a in 0..2 * c.g {
            v.push((CTX_GTX + a, max_abs == -1 || (a as i64) < max_abs * 2));
        }
        let mut level = c.g as i64 - 1;
        for a in 0..31 {
            level += 1i64 << a;
            v.push((c.rem() + a, max_abs == -1 || level < max_abs));
        }
        v
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.g == 0 || self.g > 256 {
            return Err(Error::invalid("cabac_unary_length_minus1", "out of range"));
        }
        if self.cb_size > 0 && self.cb_zero >= self.cb_size {
            return Err(Error::invalid("CbZeroOffset", "outside the codebook"));
        }
        Ok(())
    }
}

/// Destination of context coded and bypass bins: the real encoder or the optimiser pass.
trait BinSink {
    fn bin(&mut self, bin: u32, ctx: usize);
    fn ep(&mut self, v: u32, n: u32);
}

/// Owns the encoder and the contexts during the pass, so that their state stays in registers
/// (behind references held in a struct, every context store forced the coder's state back
/// to memory and the next bin to load it again).
struct RealSink<S: ByteSink> {
    enc: BinEncoder<S>,
    ctx: Vec<ContextModel>,
}

impl<S: ByteSink> BinSink for RealSink<S> {
    #[inline(always)]
    fn bin(&mut self, bin: u32, ctx: usize) {
        self.enc.encode_bin(bin, &mut self.ctx[ctx]);
    }
    #[inline(always)]
    fn ep(&mut self, v: u32, n: u32) {
        self.enc.encode_bins_ep(v, n);
    }
}

struct OptSink<R: RecordBins> {
    opt: R,
    /// Bins still to evaluate per context (sampled parameter optimisation); `None`: all.
    budget: Option<Vec<u32>>,
}

impl<R: RecordBins> BinSink for OptSink<R> {
    #[inline(always)]
    fn bin(&mut self, bin: u32, ctx: usize) {
        match self.budget.as_mut().map(|b| b.get_mut(ctx)) {
            None => self.opt.push(ctx, bin),
            Some(Some(b)) if *b > 0 => {
                *b -= 1;
                self.opt.push(ctx, bin);
            }
            Some(_) => {}
        }
    }
    #[inline(always)]
    fn ep(&mut self, _v: u32, _n: u32) {}
}

/// [`code_level`] without codebook limits (the common case, with fewer live values in the
/// hot loop): `sig_flag`, `sign_flag`, `min(|v| - 1, g)` greater-than flags equal to one, a
/// terminating zero below `g`, else the Exp-Golomb remainder.
#[inline(always)]
fn code_level_plain<B: BinSink>(s: &mut B, c: Ctx, value: i32, state: u32, nb: i32) {
    let sig = u32::from(value != 0);
    s.bin(sig, Ctx::sig(state, nb));
    if sig == 0 {
        return;
    }
    let negative = value < 0;
    s.bin(u32::from(negative), Ctx::sign(nb));
    let gtx = CTX_GTX + usize::from(negative);
    let rem = value.unsigned_abs() - 1;
    let ones = rem.min(c.g as u32) as usize;
    for j in 0..ones {
        s.bin(1, gtx + 2 * j);
    }
    if ones < c.g {
        s.bin(0, gtx + 2 * ones);
    } else {
        code_remainder(s, c, rem - c.g as u32, u32::MAX);
    }
}

/// Binarization of one level (clause 9.3.3): `sig_flag`, `sign_flag`, greater-than flags and the
/// Exp-Golomb remainder with context coded prefix. `max_abs` limits levels of codebook indices.
#[inline(always)]
fn code_level<B: BinSink, const CB: bool>(
    s: &mut B,
    c: Ctx,
    p: &LayerParams,
    value: i32,
    state: u32,
    nb: i32,
) {
    if CB && p.cb_size == 1 && p.profile == 1 {
        return;
    }
    let sig = u32::from(value != 0);
    s.bin(sig, Ctx::sig(state, nb));
    if sig == 0 {
        return;
    }
    let negative = value < 0;
    let max_abs = if CB { p.max_abs(negative) } else { -1 };
    if !CB || !(p.cb_size > 0 && (p.cb_zero == 0 || p.cb_zero == p.cb_size - 1)) || p.profile == 0 {
        s.bin(u32::from(negative), Ctx::sign(nb));
    }
    if max_abs == 1 {
        return;
    }
    let positive = value > 0;
    let mut rem = value.unsigned_abs() - 1;
    let mut gr = u32::from(rem != 0);
    if max_abs == -1 || max_abs > 1 {
        s.bin(gr, Ctx::gtx(positive, 0));
        let mut n: usize = 1;
        while gr != 0 && n < c.g && (max_abs == -1 || max_abs > n as i64 + 1) {
            rem -= 1;
            gr = u32::from(rem != 0);
            s.bin(gr, Ctx::gtx(positive, n));
            n += 1;
        }
        if max_abs != -1 && max_abs == n as i64 + 1 {
            gr = 0;
        }
        if gr != 0 && (max_abs == -1 || max_abs > n as i64 + 1) {
            rem -= 1;
            let rem_max = if max_abs == -1 {
                u32::MAX
            } else {
                (max_abs - (n as i64 + 1)) as u32
            };
            code_remainder(s, c, rem, rem_max);
        }
    }
}

/// Exp-Golomb style remainder: unary context coded group index, then bypass bits.
#[inline(always)]
fn code_remainder<B: BinSink>(s: &mut B, c: Ctx, value: u32, rem_max: u32) {
    let mut log2: u32 = 0;
    let mut base: u64 = 0;
    let mut ctx = c.rem();
    let unbounded = rem_max == u32::MAX;
    let value = u64::from(value);
    let rmax = u64::from(rem_max);
    if rmax > base || unbounded {
        if value > 0 {
            s.bin(1, ctx);
            base += 1 << log2;
            ctx += 1;
            log2 += 1;
        } else {
            s.bin(0, ctx);
            return;
        }
        while value > base + (1u64 << log2) - 1 && (unbounded || rmax >= base + (1u64 << log2)) {
            s.bin(1, ctx);
            base += 1 << log2;
            ctx += 1;
            log2 += 1;
        }
        if unbounded || rmax >= base + (1u64 << log2) {
            s.bin(0, ctx);
        }
        s.ep((value - base) as u32, log2);
    }
}

/// The level actually coded for a DQ level stored in "doubled" form (reconstruction index).
#[inline(always)]
fn dq_coded_value(stored: i32, state: u32) -> i32 {
    if stored == 0 {
        return 0;
    }
    let odd = (state & 1) as i32;
    let v = if stored < 0 {
        stored.wrapping_sub(odd)
    } else {
        stored.wrapping_add(odd)
    };
    v >> 1
}

/// Replays the DQ state machine over the scan exactly as [`encode_layer`] does (a skipped row
/// segment advances the state by the full row width, as the reference does even in block
/// scans) and maps every element through `f(stored_or_coded, state) -> (output, coded)`.
fn dq_replay(
    values: &[i32],
    p: &LayerParams,
    row_skip_enabled: bool,
    mut f: impl FnMut(i32, u32) -> (i32, i32),
) -> Result<Vec<i32>> {
    let geo = p.geometry();
    let skip = (p.row_skip_possible() && row_skip_enabled).then(|| zero_rows(values, p.width));
    let mut out = values.to_vec();
    let mut state = 0u32;
    for br in 0..geo.num_block_rows() {
        for seg in geo.segments(br) {
            if skip.as_ref().is_some_and(|s| s[seg.row]) {
                state = dq_advance_zeros(state, p.width);
                continue;
            }
            for x in seg.x0..seg.x1 {
                let pos = seg.row * geo.width + x;
                let (o, coded) = f(values[pos], state);
                out[pos] = o;
                state = DQ_TRANS[state as usize][(coded & 1) as usize];
            }
        }
    }
    Ok(out)
}

/// The levels (reconstruction indices) a decoder obtains from levels stored by the quantizer.
/// They differ from the input only where the reference's row-skip state quirk applies
/// (DQ with block scans and row skipping).
pub(crate) fn decoded_levels(
    stored: &[i32],
    p: &LayerParams,
    row_skip_enabled: bool,
) -> Result<Vec<i32>> {
    if !p.dq {
        return Ok(stored.to_vec());
    }
    dq_replay(stored, p, row_skip_enabled, |v, state| {
        let c = dq_coded_value(v, state);
        (dq_index(c, state), c)
    })
}

/// Reconstruction index of coded level `c` in `state`.
#[inline(always)]
fn dq_index(c: i32, state: u32) -> i32 {
    if c == 0 {
        return 0;
    }
    let odd = (state & 1) as i32;
    let d = c.wrapping_mul(2);
    if c < 0 {
        d.wrapping_add(odd)
    } else {
        d.wrapping_sub(odd)
    }
}

/// Rows that are entirely zero (candidates for row skipping).
pub(crate) fn zero_rows(values: &[i32], width: usize) -> Vec<bool> {
    if width == 0 {
        return Vec::new();
    }
    values
        .chunks(width)
        .map(|r| r.iter().all(|&v| v == 0))
        .collect()
}

/// One pass over the tensor in scan order, coding every non-skipped level into `sink`.
/// `real` selects the encoder's behaviour (coded value, neighbour resets at entry points);
/// otherwise the optimiser's (stored value, no neighbour reset). The pass ends after the row
/// segment in which `max_levels` levels were reached (sampled parameter optimisation).
#[allow(clippy::too_many_arguments)]
fn level_pass<B: BinSink>(
    sink: &mut B,
    c: Ctx,
    p: &LayerParams,
    geo: &ScanGeometry,
    values: &[i32],
    skip_rows: Option<&[bool]>,
    real: bool,
    max_levels: usize,
    at_block_row_end: impl FnMut(&mut B),
) {
    if p.cb_size == 0 {
        level_pass_impl::<B, false>(
            sink,
            c,
            p,
            geo,
            values,
            skip_rows,
            real,
            max_levels,
            at_block_row_end,
        )
    } else {
        level_pass_impl::<B, true>(
            sink,
            c,
            p,
            geo,
            values,
            skip_rows,
            real,
            max_levels,
            at_block_row_end,
        )
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn level_pass_impl<B: BinSink, const CB: bool>(
    sink: &mut B,
    c: Ctx,
    p: &LayerParams,
    geo: &ScanGeometry,
    values: &[i32],
    skip_rows: Option<&[bool]>,
    real: bool,
    max_levels: usize,
    mut at_block_row_end: impl FnMut(&mut B),
) {
    let mut state: u32 = 0;
    let mut nb: i32 = 0;
    let mut coded_levels = 0usize;
    let nbr = geo.num_block_rows();
    for br in 0..nbr {
        for seg in geo.segments(br) {
            if coded_levels >= max_levels {
                return;
            }
            if let Some(sk) = skip_rows {
                if sk.get(seg.row).copied().unwrap_or(false) {
                    if p.dq {
                        state = dq_advance_zeros(state, p.width);
                    }
                    continue;
                }
            }
            let base = seg.row * geo.width;
            coded_levels += seg.x1 - seg.x0;
            for &stored in &values[base + seg.x0..base + seg.x1] {
                let value = if p.dq {
                    dq_coded_value(stored, state)
                } else {
                    stored
                };
                let coded = if real { value } else { stored };
                if CB {
                    code_level::<B, true>(sink, c, p, coded, state, nb);
                } else {
                    code_level_plain(sink, c, coded, state, nb);
                }
                nb = coded;
                if p.dq {
                    state = DQ_TRANS[state as usize][(value & 1) as usize];
                }
            }
        }
        if br + 1 < nbr {
            at_block_row_end(sink);
            if real {
                nb = 0;
            }
        }
    }
}

/// Sampled parameter optimisation looks at no more than this many levels per bin of budget.
const SAMPLED_LEVELS_PER_BIN: usize = 16;

/// With `concurrent`, tensors of at least this many levels record the optimiser's first pass
/// on one thread while a second one runs the candidates (same decisions, less wall time).
const CONCURRENT_FIRST_PASS_LEVELS: usize = 1 << 20;

/// The optimiser's first pass over the tensor: every context's bins under the nine candidate
/// initialisations (looking at the first `bins` bins of each context; `u32::MAX` = all).
fn first_pass(
    c: Ctx,
    p: &LayerParams,
    geo: &ScanGeometry,
    values: &[i32],
    skip: Option<&[bool]>,
    bins: u32,
    concurrent: bool,
) -> ParamOptimizer {
    // The first pass ignores codebook limits (the reference codes it without them).
    let p_opt = LayerParams {
        cb_size: 0,
        cb_zero: 0,
        ..*p
    };
    fn run<R: RecordBins>(
        sink: &mut OptSink<R>,
        (c, p, geo, values, skip): (Ctx, &LayerParams, &ScanGeometry, &[i32], Option<&[bool]>),
        max_levels: usize,
    ) {
        let reset = |s: &mut OptSink<R>| s.opt.reset();
        level_pass(sink, c, p, geo, values, skip, false, max_levels, reset);
    }
    let args = (c, &p_opt, geo, values, skip);
    if bins == u32::MAX && concurrent && values.len() >= CONCURRENT_FIRST_PASS_LEVELS {
        return ParamOptimizer::record_concurrently(c.count(), |rec| {
            run(
                &mut OptSink {
                    opt: rec,
                    budget: None,
                },
                args,
                usize::MAX,
            )
        });
    }
    let mut sink = OptSink {
        opt: ParamOptimizer::for_levels(c.count(), values.len()),
        budget: (bins != u32::MAX).then(|| vec![bins; c.count()]),
    };
    // A context sees at most `bins` bins; once the most frequent ones have had theirs, the
    // rest of the tensor adds little to the choice.
    let max_levels = if bins == u32::MAX {
        usize::MAX
    } else {
        (bins as usize).saturating_mul(SAMPLED_LEVELS_PER_BIN)
    };
    run(&mut sink, args, max_levels);
    sink.opt
}

/// Encodes one tensor's levels into `enc` (the reference's `encodeLayer`): optional row skip
/// flags, context initialisation signalling (chosen by a first pass when `param_opt` is
/// `Some(n)`, looking at the first `n` bins of every context; `u32::MAX` = all, as the
/// reference), levels. `concurrent` lets a big tensor's first pass use a second thread.
pub(crate) fn encode_layer<S: ByteSink>(
    enc: &mut BinEncoder<S>,
    values: &[i32],
    p: &LayerParams,
    row_skip_enabled: bool,
    param_opt: Option<u32>,
    concurrent: bool,
) -> Result<()> {
    p.validate()?;
    if values.len() != p.num {
        return Err(Error::InvalidInput(
            "level count does not match shape".into(),
        ));
    }
    let c = Ctx::new(p.g);
    let mut ctx = vec![ContextModel::new(0); c.count()];
    let mut skip: Option<Vec<bool>> = None;
    if p.row_skip_possible() {
        if p.parent_node_id_present {
            // hist_dep_sig_prob_enabled_flag: history-dependent probabilities are not used.
            enc.encode_bin_ep(0);
        }
        enc.encode_bin_ep(u32::from(row_skip_enabled));
        if row_skip_enabled {
            let rows = zero_rows(values, p.width);
            for &r in &rows {
                enc.encode_bin(u32::from(r), &mut ctx[c.row_skip()]);
            }
            skip = Some(rows);
        }
    }
    let geo = p.geometry();
    let mut opt = match param_opt.filter(|_| p.cb_size != 1 || p.profile == 0) {
        Some(bins) => first_pass(c, p, &geo, values, skip.as_deref(), bins, concurrent),
        None => ParamOptimizer::new(c.count()),
    };
    let po = c.param_opt();
    for (i, present) in p.signalled_inits() {
        let mut best = 0u8;
        if present {
            best = opt.best(i);
            enc.encode_bin(u32::from(best != 0), &mut ctx[po]);
            if best != 0 {
                enc.encode_bins_ep(u32::from(best - 1), 3);
            }
        }
        ctx[i].init(best);
    }
    if geo.num_block_rows() > 1 {
        enc.entry_point_start();
    }
    let mut sink = RealSink {
        enc: std::mem::replace(enc, BinEncoder::new(S::default())),
        ctx,
    };
    level_pass(
        &mut sink,
        c,
        p,
        &geo,
        values,
        skip.as_deref(),
        true,
        usize::MAX,
        |s: &mut RealSink<S>| {
            for m in s.ctx.iter_mut() {
                m.reset();
            }
            s.enc.entry_point_start();
        },
    );
    *enc = sink.enc;
    Ok(())
}

/// Decoder state shared by all block rows of a tensor after its prefix was read.
struct LayerPrefix {
    ctx: Vec<ContextModel>,
    skip: Option<Vec<bool>>,
}

fn decode_prefix(dec: &mut BinDecoder<'_>, p: &LayerParams) -> Result<LayerPrefix> {
    p.validate()?;
    let c = Ctx::new(p.g);
    let mut ctx = vec![ContextModel::new(0); c.count()];
    let mut skip = None;
    if p.row_skip_possible() {
        if p.parent_node_id_present && dec.decode_bin_ep() == 1 {
            return Err(Error::Unsupported(
                "hist_dep_sig_prob_enabled_flag (history dependent significance)".into(),
            ));
        }
        if dec.decode_bin_ep() == 1 {
            let rows = p.num / p.width;
            let mut v = Vec::with_capacity(rows);
            for _ in 0..rows {
                v.push(dec.decode_bin(&mut ctx[c.row_skip()]) == 1);
            }
            skip = Some(v);
        }
    }
    let po = c.param_opt();
    for (i, present) in p.signalled_inits() {
        let mut idx = 0u8;
        if present && dec.decode_bin(&mut ctx[po]) == 1 {
            idx = 1 + dec.decode_bins_ep(3) as u8;
        }
        ctx[i].init(idx);
    }
    Ok(LayerPrefix { ctx, skip })
}

/// Decodes one level without codebook limits (the common case, kept branch-light).
#[inline(always)]
fn decode_level_plain(
    dec: &mut BinDecoder<'_>,
    ctx: &mut [ContextModel],
    c: Ctx,
    state: u32,
    nb: i32,
) -> Result<i32> {
    if dec.decode_bin(&mut ctx[Ctx::sig(state, nb)]) == 0 {
        return Ok(0);
    }
    let negative = dec.decode_bin(&mut ctx[Ctx::sign(nb)]) == 1;
    let gtx = CTX_GTX + usize::from(negative);
    let mut v: i64 = 1;
    let mut j = 0usize;
    loop {
        let gr = dec.decode_bin(&mut ctx[gtx + 2 * j]);
        v += i64::from(gr);
        if gr == 0 {
            break;
        }
        j += 1;
        if j == c.g {
            // All greater-than flags set: Exp-Golomb remainder.
            let mut rem_bits: u32 = 0;
            let mut k = 0usize;
            loop {
                let b = dec.decode_bin(&mut ctx[c.rem() + k]);
                if b == 0 {
                    break;
                }
                v += 1i64 << rem_bits;
                rem_bits += 1;
                if k >= 30 {
                    break;
                }
                k += 1;
            }
            v += i64::from(dec.decode_bins_ep(rem_bits));
            break;
        }
    }
    let v = if negative { -v } else { v };
    i32::try_from(v).map_err(|_| Error::invalid("abs_level", "level exceeds 32 bits"))
}

/// Decodes one level (the reference's `decodeWeightVal`).
#[inline(always)]
fn decode_level(
    dec: &mut BinDecoder<'_>,
    ctx: &mut [ContextModel],
    c: Ctx,
    p: &LayerParams,
    state: u32,
    nb: i32,
) -> Result<i32> {
    if p.profile == 1 && p.cb_size == 1 {
        return Ok(0);
    }
    if dec.decode_bin(&mut ctx[Ctx::sig(state, nb)]) == 0 {
        return Ok(0);
    }
    let mut v: i64 = 1;
    let negative = if p.sign_implied() {
        p.cb_zero != 0
    } else {
        dec.decode_bin(&mut ctx[Ctx::sign(nb)]) == 1
    };
    let max_abs = p.max_abs(negative);
    if max_abs > 1 || max_abs == -1 {
        let mut j = 0usize;
        let mut gr;
        loop {
            gr = dec.decode_bin(&mut ctx[Ctx::gtx(!negative, j)]);
            v += i64::from(gr);
            if !(gr == 1 && j + 1 < c.g && (max_abs > v || max_abs == -1)) {
                break;
            }
            j += 1;
        }
        if gr == 1 && (max_abs > v || max_abs == -1) {
            let mut rem_bits: u32 = 0;
            let mut j = 0usize;
            loop {
                gr = dec.decode_bin(&mut ctx[c.rem() + j]);
                if gr == 1 && (max_abs > v || max_abs == -1) {
                    v += 1i64 << rem_bits;
                    rem_bits += 1;
                }
                if !(gr == 1 && j < 30 && (max_abs >= v + (1i64 << rem_bits) || max_abs == -1)) {
                    break;
                }
                j += 1;
            }
            v += i64::from(dec.decode_bins_ep(rem_bits));
        }
    }
    let v = if negative { -v } else { v };
    i32::try_from(v).map_err(|_| Error::invalid("abs_level", "level exceeds 32 bits"))
}

/// Decodes the block rows `rows` of a tensor into `out` (which covers exactly those rows),
/// starting in DQ state `state`. Contexts are reset at every block row start after the first
/// one of the range (entry point semantics).
#[allow(clippy::too_many_arguments)]
fn decode_block_rows(
    dec: &mut BinDecoder<'_>,
    ctx: &mut [ContextModel],
    p: &LayerParams,
    geo: &ScanGeometry,
    skip: Option<&[bool]>,
    rows: std::ops::Range<usize>,
    state: u32,
    out: &mut [i32],
    on_block_row_start: impl FnMut(&BinDecoder<'_>, u32),
) -> Result<u32> {
    // Monomorphised for the two switches that matter in the inner loop.
    match (p.dq, p.cb_size == 0) {
        (true, true) => decode_rows_impl::<true, true>(
            dec,
            ctx,
            p,
            geo,
            skip,
            rows,
            state,
            out,
            on_block_row_start,
        ),
        (false, true) => decode_rows_impl::<false, true>(
            dec,
            ctx,
            p,
            geo,
            skip,
            rows,
            state,
            out,
            on_block_row_start,
        ),
        (true, false) => decode_rows_impl::<true, false>(
            dec,
            ctx,
            p,
            geo,
            skip,
            rows,
            state,
            out,
            on_block_row_start,
        ),
        (false, false) => decode_rows_impl::<false, false>(
            dec,
            ctx,
            p,
            geo,
            skip,
            rows,
            state,
            out,
            on_block_row_start,
        ),
    }
}

/// Bytes the decoder's window may pass the end of a payload before the levels are refused as
/// truncated (valid streams stay inside; see `BinDecoder::past_end`).
const PAYLOAD_SLACK: u64 = 8;

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decode_rows_impl<const DQ: bool, const PLAIN: bool>(
    dec_state: &mut BinDecoder<'_>,
    ctx: &mut [ContextModel],
    p: &LayerParams,
    geo: &ScanGeometry,
    skip: Option<&[bool]>,
    rows: std::ops::Range<usize>,
    mut state: u32,
    out: &mut [i32],
    mut on_block_row_start: impl FnMut(&BinDecoder<'_>, u32),
) -> Result<u32> {
    // A local copy stays in registers (the caller's would be written back after every bin).
    let mut local = dec_state.clone();
    let dec = &mut local;
    let c = Ctx::new(p.g);
    let mut nb: i32 = 0;
    let row0 = rows.start * geo.block_height();
    for br in rows.clone() {
        if br != rows.start {
            for m in ctx.iter_mut() {
                m.reset();
            }
            nb = 0;
            dec.entry_point_start();
            on_block_row_start(dec, state);
        }
        for seg in geo.segments(br) {
            if let Some(sk) = skip {
                if sk.get(seg.row).copied().unwrap_or(false) {
                    if DQ {
                        state = dq_advance_zeros(state, p.width);
                    }
                    continue;
                }
            }
            let base = (seg.row - row0) * geo.width;
            // Checked per 64 levels: per level it cost 6% of the decoding time.
            for chunk in out[base + seg.x0..base + seg.x1].chunks_mut(64) {
                if dec.past_end(PAYLOAD_SLACK) {
                    return Err(Error::Truncated("NNR_NDU payload (levels)"));
                }
                for o in chunk {
                    let mut v = if PLAIN {
                        decode_level_plain(dec, ctx, c, state, nb)?
                    } else {
                        decode_level(dec, ctx, c, p, state, nb)?
                    };
                    nb = v;
                    if DQ {
                        let next = DQ_TRANS[state as usize][(v & 1) as usize];
                        if v != 0 {
                            let odd = (state & 1) as i32;
                            v = v
                                .checked_mul(2)
                                .and_then(|d| d.checked_add(if d < 0 { odd } else { -odd }))
                                .ok_or_else(|| {
                                    Error::invalid("abs_level", "level exceeds 32 bits")
                                })?;
                        }
                        state = next;
                    }
                    *o = v;
                }
            }
        }
    }
    *dec_state = local;
    Ok(state)
}

/// Decodes one tensor's levels (the reference's `decodeLayer`). With entry points (deltas as
/// transmitted in `cabac_entry_point_list`) and `parallel`, block rows are decoded concurrently.
pub(crate) fn decode_layer(
    data: &[u8],
    dec: &mut BinDecoder<'_>,
    p: &LayerParams,
    entry_points: &[EntryPoint],
    parallel: bool,
    out: &mut [i32],
) -> Result<()> {
    if out.len() != p.num {
        return Err(Error::InvalidInput(
            "output size does not match shape".into(),
        ));
    }
    let prefix = decode_prefix(dec, p)?;
    let geo = p.geometry();
    let nbr = geo.num_block_rows();
    let mut ctx = prefix.ctx;
    let skip = prefix.skip.as_deref();
    if nbr > 1 {
        dec.entry_point_start();
    }
    if parallel && nbr > 1 && entry_points.len() + 1 == nbr {
        use rayon::prelude::*;
        let first = dec.entry_point(0);
        let mut starts = Vec::with_capacity(nbr);
        starts.push(first);
        let mut off = first.bit_offset;
        for ep in entry_points {
            off = off.saturating_add(ep.bit_offset);
            starts.push(EntryPoint {
                bit_offset: off,
                value: ep.value,
                dq_state: ep.dq_state & 7,
            });
        }
        let rows_per = geo.block_height() * geo.width;
        let base_ctx = ctx;
        let jobs: Vec<(usize, &mut [i32])> = out.chunks_mut(rows_per).enumerate().collect();
        jobs.into_par_iter()
            .try_for_each(|(br, chunk)| -> Result<()> {
                let mut d = BinDecoder::new(data);
                d.seek(&starts[br]);
                let mut cx = base_ctx.clone();
                for m in cx.iter_mut() {
                    m.reset();
                }
                decode_block_rows(
                    &mut d,
                    &mut cx,
                    p,
                    &geo,
                    skip,
                    br..br + 1,
                    starts[br].dq_state,
                    chunk,
                    |_, _| {},
                )
                .map(|_| ())
            })?;
        return Ok(());
    }
    decode_block_rows(dec, &mut ctx, p, &geo, skip, 0..nbr, 0, out, |_, _| {})?;
    Ok(())
}

/// Entry points of an encoded tensor, as deltas ready for `cabac_entry_point_list`: the
/// stream is decoded once and the decoder position recorded at every block row start.
pub(crate) fn create_entry_points(
    data: &[u8],
    skip_bins: impl FnOnce(&mut BinDecoder<'_>) -> Result<()>,
    p: &LayerParams,
) -> Result<Vec<EntryPoint>> {
    let geo = p.geometry();
    let nbr = geo.num_block_rows();
    if nbr <= 1 {
        return Ok(Vec::new());
    }
    let mut dec = BinDecoder::new(data);
    skip_bins(&mut dec)?;
    let prefix = decode_prefix(&mut dec, p)?;
    let mut ctx = prefix.ctx;
    dec.entry_point_start();
    let mut last = dec.entry_point(0).bit_offset;
    let mut eps = Vec::with_capacity(nbr - 1);
    let mut out = vec![0i32; p.num];
    decode_block_rows(
        &mut dec,
        &mut ctx,
        p,
        &geo,
        prefix.skip.as_deref(),
        0..nbr,
        0,
        &mut out,
        |d, state| {
            let mut ep = d.entry_point(state);
            let abs = ep.bit_offset;
            ep.bit_offset = abs.wrapping_sub(last);
            last = abs;
            eps.push(ep);
        },
    )?;
    Ok(eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cabac::{BinDecoder, BinEncoder};
    use proptest::prelude::*;

    /// Random coded values turned into the stored (reconstruction index) form the encoder takes.
    fn stored_from_coded(coded: &[i32], p: &LayerParams, row_skip: bool) -> Vec<i32> {
        if !p.dq {
            return coded.to_vec();
        }
        dq_replay(coded, p, row_skip, |c, state| (dq_index(c, state), c)).unwrap()
    }

    fn params() -> impl Strategy<Value = (LayerParams, bool, bool, u64)> {
        (
            1usize..40,
            1usize..40,
            any::<bool>(),
            0u8..=4,
            0u32..6,
            1u32..12,
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(h, w, dq, so, cb, g, rs, po, seed)| {
                let cb_size = if cb == 0 { 0 } else { cb * 3 - 2 };
                let p = LayerParams {
                    width: w,
                    num: h * w,
                    dq: dq && cb_size == 0,
                    scan_order: ScanOrder::try_from(so).unwrap(),
                    profile: 1,
                    parent_node_id_present: false,
                    cb_size,
                    cb_zero: if cb_size > 0 {
                        (seed % u64::from(cb_size)) as u32
                    } else {
                        0
                    },
                    g,
                };
                (p, rs, po, seed)
            })
    }

    fn random_coded(p: &LayerParams, seed: u64) -> Vec<i32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let sparsity: f64 = rng.gen_range(0.0..1.0);
        let zero_row_p: f64 = rng.gen_range(0.0..0.5);
        let mut v = vec![0i32; p.num];
        for row in v.chunks_mut(p.width) {
            if rng.gen_bool(zero_row_p) {
                continue;
            }
            for x in row.iter_mut() {
                if rng.gen_bool(sparsity) {
                    continue;
                }
                *x = if p.cb_size > 0 {
                    rng.gen_range(-(p.cb_zero as i32)..=(p.cb_size - 1 - p.cb_zero) as i32)
                } else if rng.gen_bool(0.05) {
                    rng.gen_range(-(1 << 20)..(1 << 20))
                } else {
                    rng.gen_range(-20..=20)
                };
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn levels_round_trip((p, row_skip, param_opt, seed) in params()) {
            let coded = random_coded(&p, seed);
            let stored = stored_from_coded(&coded, &p, row_skip);
            prop_assert_eq!(decoded_levels(&stored, &p, row_skip).unwrap(), stored.clone());
            let mut enc = BinEncoder::new(Vec::new());
            let po = param_opt.then_some(u32::MAX);
            encode_layer(&mut enc, &stored, &p, row_skip, po, false).unwrap();
            let bytes = enc.finish();
            let eps = create_entry_points(&bytes, |_| Ok(()), &p).unwrap();
            prop_assert_eq!(eps.len() + 1, p.geometry().num_block_rows().max(1));
            for parallel in [false, true] {
                let mut dec = BinDecoder::new(&bytes);
                let mut out = vec![0i32; p.num];
                decode_layer(&bytes, &mut dec, &p, &eps, parallel, &mut out).unwrap();
                prop_assert_eq!(&out, &stored);
                if !parallel {
                    // Valid streams keep the window well inside PAYLOAD_SLACK.
                    prop_assert!(!dec.past_end(2));
                    prop_assert_eq!(dec.decode_bin_trm(), 1);
                }
            }
        }
    }

    #[test]
    fn dq_skip_advance_matches_transitions() {
        for s in 0..8u32 {
            for n in 0..20usize {
                let mut t = s;
                for _ in 0..n {
                    t = DQ_TRANS[t as usize][0];
                }
                assert_eq!(dq_advance_zeros(s, n), t);
            }
        }
    }
}
