//! Bitstream level: tensors ↔ NNR units. The public encoder (reference decisions), decoder
//! (bounded by [`Limits`]) and unit listing.

use crate::cabac::{BinDecoder, BinEncoder, ByteCounter};
use crate::coding::{self, LayerParams};
use crate::error::{Error, Result};
use crate::hls::{
    self, topology_compression_format, topology_storage_format, CodebookSyntax, LayerParameterSet,
    ModelParameterSet, NduContext, NduHeader, NnrUnitType, NodeId, OpaqueUnit, PayloadType,
    StartUnit, TopologyElemRef, UnitHeader,
};
use crate::quant::{self, codebook};
use crate::{EncoderConfig, Tensor, TensorData, TensorKind};
use rayon::prelude::*;

/// Bounds on what a decoder accepts; checked before any allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest number of elements of one tensor.
    pub max_tensor_elements: u64,
    /// Largest number of elements of all tensors together.
    pub max_total_elements: u64,
    /// Most dimensions of one tensor.
    pub max_dimensions: usize,
    /// Most NNR units in a bitstream.
    pub max_units: usize,
    /// Largest (inflated) topology or quantization payload.
    pub max_topology_bytes: usize,
    /// Largest ratio of declared elements to payload bytes of an NDU (`None`: unlimited).
    /// CABAC codes zero runs at about 0.01 bit per element and row skipping a whole zero row
    /// in one bin, so a pruned layer legitimately reaches ~10^5..10^6 elements per byte; the
    /// default (2^20) only stops absurd declarations.
    pub max_elements_per_payload_byte: Option<u64>,
    /// Decode independent tensors (and block rows with entry points) on several threads.
    pub parallel: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tensor_elements: 1 << 30,
            max_total_elements: 1 << 32,
            max_dimensions: 16,
            max_units: 1 << 20,
            max_topology_bytes: 1 << 30,
            max_elements_per_payload_byte: Some(1 << 20),
            parallel: true,
        }
    }
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

/// Everything a bitstream decodes to.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedStream {
    /// Tensors in NDU order.
    pub tensors: Vec<crate::Tensor>,
    /// Topology of the last NNR_TPL unit, if any.
    pub topology: Option<Topology>,
}

/// Tensor-level facts of one NNR_NDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NduInfo {
    /// `topology_elem_id` (or `#index` for indexed references).
    pub name: String,
    /// `tensor_dimensions`.
    pub shape: Vec<u64>,
    /// Payload type.
    pub payload_type: PayloadType,
    /// Quantization parameter (NNR_PT_FLOAT).
    pub qp: Option<i32>,
    /// `dq_flag`.
    pub dq: bool,
    /// Codebook size when a codebook is present.
    pub codebook_size: Option<usize>,
    /// `scan_order`.
    pub scan_order: u8,
    /// Number of entry points.
    pub entry_points: usize,
}

/// One unit of a bitstream, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    /// `nnr_unit_type`.
    pub unit_type: NnrUnitType,
    /// Byte offset in the bitstream.
    pub offset: usize,
    /// `nnr_unit_size`.
    pub size: usize,
    /// For NDUs: the tensor.
    pub ndu: Option<NduInfo>,
    /// For NNR_TPL / NNR_QNT: storage and compression format.
    pub formats: Option<(u8, u8)>,
}

/// Stream-wide state while walking units.
#[derive(Default)]
struct StreamState {
    profile: u8,
    mps: Option<ModelParameterSet>,
    lps: Option<LayerParameterSet>,
}

impl StreamState {
    fn ndu_context(&self) -> NduContext {
        NduContext {
            profile: self.profile,
            topology_indexed: self
                .mps
                .as_ref()
                .is_some_and(|m| m.topology_indexed_reference_flag),
            parent_signalling: self
                .mps
                .as_ref()
                .is_some_and(|m| m.parent_signalling_enabled_flag),
        }
    }

    /// (qp_density, base QP) from the LPS if present, else the MPS.
    fn qp_base(&self) -> Option<(u8, i32)> {
        if let Some(l) = self.lps.as_ref().filter(|l| l.has_qp()) {
            return Some((l.qp_density, l.quantization_parameter));
        }
        self.mps
            .as_ref()
            .filter(|m| m.has_qp())
            .map(|m| (m.qp_density, m.quantization_parameter))
    }
}

fn elem_name(t: &TopologyElemRef) -> String {
    match t {
        TopologyElemRef::Id(s) => s.clone(),
        TopologyElemRef::Index(i) => format!("#{i}"),
    }
}

/// Reads `iae_v(n)`: n bypass bins, two's complement.
fn read_iae(dec: &mut BinDecoder<'_>, n: u32) -> i32 {
    let p = dec.decode_bins_ep(n);
    ((p << (32 - n)) as i32) >> (32 - n)
}

struct NduJob<'a> {
    header: NduHeader,
    payload: &'a [u8],
    num: usize,
    dims: Vec<usize>,
    qp_base: Option<(u8, i32)>,
    profile: u8,
}

/// Walks all units. `on_ndu` receives each NDU header with its payload bytes.
fn walk<'a>(
    data: &'a [u8],
    limits: &Limits,
    mut on_unit: impl FnMut(
        &hls::RawUnit<'a>,
        &StreamState,
        Option<&NduHeader>,
        &'a [u8],
        Option<Topology>,
    ) -> Result<()>,
) -> Result<()> {
    let mut st = StreamState::default();
    let mut off = 0usize;
    let mut count = 0usize;
    while off < data.len() {
        count += 1;
        if count > limits.max_units {
            return Err(Error::Limit("number of NNR units".into()));
        }
        let (unit, mut r) = hls::split_unit(&data[off..], off)?;
        if count == 1 && unit.header.unit_type != NnrUnitType::Str {
            return Err(Error::invalid("nnr_unit_type", "first unit is not NNR_STR"));
        }
        let mut hdr = None;
        let mut payload: &[u8] = &[];
        let mut topo = None;
        match unit.header.unit_type {
            NnrUnitType::Str => {
                st.profile = StartUnit::parse(&mut r)?.general_profile_idc;
                if st.profile > 1 {
                    return Err(Error::Unsupported(format!(
                        "general_profile_idc {}",
                        st.profile
                    )));
                }
            }
            NnrUnitType::Mps => st.mps = Some(ModelParameterSet::parse(&mut r, st.profile)?),
            NnrUnitType::Lps => st.lps = Some(LayerParameterSet::parse(&mut r)?),
            NnrUnitType::Tpl | NnrUnitType::Qnt => {
                let o = OpaqueUnit::parse(&mut r, limits.max_topology_bytes)?;
                if unit.header.unit_type == NnrUnitType::Tpl {
                    topo = Some(Topology {
                        storage_format: o.storage_format,
                        compression_format: o.compression_format,
                        data: o.data,
                    });
                }
            }
            NnrUnitType::Ndu => {
                if st.mps.is_none() {
                    return Err(Error::invalid("nnr_unit_type", "NNR_NDU before NNR_MPS"));
                }
                let h = NduHeader::parse(&mut r, &st.ndu_context(), limits.max_dimensions)?;
                payload = r.rest();
                hdr = Some(h);
            }
            NnrUnitType::Agg => {
                return Err(Error::Unsupported("NNR_AGG units".into()));
            }
        }
        on_unit(&unit, &st, hdr.as_ref(), payload, topo)?;
        off += unit.bytes.len();
    }
    if count == 0 {
        return Err(Error::Truncated("NNR_STR"));
    }
    Ok(())
}

/// Lists the units of a bitstream (types, sizes, tensor names, shapes, QPs).
pub fn units(data: &[u8]) -> Result<Vec<UnitInfo>> {
    let mut out = Vec::new();
    walk(data, &Limits::default(), |u, st, h, payload, topo| {
        let mut info = UnitInfo {
            unit_type: u.header.unit_type,
            offset: u.offset,
            size: u.bytes.len(),
            ndu: None,
            formats: topo.map(|t| (t.storage_format, t.compression_format)),
        };
        if let Some(h) = h {
            let mut qp = None;
            if h.payload_type == PayloadType::Float {
                if let Some((d, base)) = st.qp_base() {
                    let mut dec = BinDecoder::new(payload);
                    qp = Some(read_iae(&mut dec, 6 + u32::from(d)).saturating_add(base));
                }
            }
            info.ndu = Some(NduInfo {
                name: elem_name(&h.topology_elem),
                shape: h.tensor_dimensions.clone().unwrap_or_default(),
                payload_type: h.payload_type,
                qp,
                dq: h.dq_flag,
                codebook_size: h.codebook.as_ref().map(|c| c.values.len()),
                scan_order: h.scan_order,
                entry_points: h.entry_points.len(),
            });
        }
        out.push(info);
        Ok(())
    })?;
    Ok(out)
}

/// Decodes all tensors of a bitstream.
pub fn decode(data: &[u8], limits: &Limits) -> Result<Vec<Tensor>> {
    Ok(decode_stream(data, limits)?.tensors)
}

/// Decodes tensors and topology of a bitstream.
pub fn decode_stream(data: &[u8], limits: &Limits) -> Result<DecodedStream> {
    let mut jobs: Vec<NduJob<'_>> = Vec::new();
    let mut topology = None;
    let mut total: u64 = 0;
    walk(data, limits, |_, st, h, payload, topo| {
        if let Some(t) = topo {
            topology = Some(t);
        }
        let Some(h) = h else { return Ok(()) };
        let dims = h
            .tensor_dimensions
            .as_ref()
            .ok_or_else(|| Error::Unsupported("tensor dimensions signalled out of band".into()))?;
        let mut num: u64 = 1;
        for &d in dims {
            num = num
                .checked_mul(d)
                .ok_or_else(|| Error::Limit("tensor size overflows".into()))?;
        }
        if num > limits.max_tensor_elements {
            return Err(Error::Limit(format!("tensor of {num} elements")));
        }
        total = total.saturating_add(num);
        if total > limits.max_total_elements {
            return Err(Error::Limit(format!("{total} elements in total")));
        }
        if let Some(r) = limits.max_elements_per_payload_byte {
            if num > r.saturating_mul(payload.len() as u64 + 1) {
                return Err(Error::Limit(format!(
                    "{num} elements declared for {} payload bytes",
                    payload.len()
                )));
            }
        }
        let dims = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| Error::Limit("dimension".into())))
            .collect::<Result<Vec<usize>>>()?;
        jobs.push(NduJob {
            header: h.clone(),
            payload,
            num: num as usize,
            dims,
            qp_base: st.qp_base(),
            profile: st.profile,
        });
        Ok(())
    })?;
    let parallel = limits.parallel;
    let tensors: Result<Vec<Tensor>> = if parallel {
        jobs.par_iter().map(|j| decode_ndu(j, parallel)).collect()
    } else {
        jobs.iter().map(|j| decode_ndu(j, false)).collect()
    };
    Ok(DecodedStream {
        tensors: tensors?,
        topology,
    })
}

fn layer_params(h: &NduHeader, dims: &[usize], num: usize, profile: u8, dq: bool) -> LayerParams {
    // Saturating: with a zero dimension elsewhere the declared size can be 0 while the
    // product of the other dimensions overflows.
    let width: usize = if dims.len() > 1 {
        dims[1..].iter().fold(1usize, |a, &d| a.saturating_mul(d))
    } else {
        1
    };
    let (cb_size, cb_zero) = match (&h.codebook, profile) {
        (Some(c), 1) => (c.values.len() as u32, c.zero_offset),
        _ => (0, 0),
    };
    LayerParams {
        width,
        num,
        dq,
        scan_order: if dims.len() > 1 { h.scan_order } else { 0 },
        profile,
        parent_node_id_present: h.parent_node_id_present_flag,
        cb_size,
        cb_zero,
        g: u32::from(h.cabac_unary_length_minus1.unwrap_or(9)) + 1,
    }
}

fn decode_ndu(j: &NduJob<'_>, parallel: bool) -> Result<Tensor> {
    let h = &j.header;
    let name = elem_name(&h.topology_elem);
    let shape = j.dims.clone();
    if h.payload_type == PayloadType::RawFloat {
        let n = j
            .num
            .checked_mul(4)
            .ok_or_else(|| Error::Limit("raw tensor size".into()))?;
        let b = j
            .payload
            .get(..n)
            .ok_or(Error::Truncated("raw_float32_parameter"))?;
        let v = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Ok(Tensor {
            name,
            shape,
            data: TensorData::F32(v),
        });
    }
    let mut dec = BinDecoder::new(j.payload);
    let float = h.payload_type == PayloadType::Float;
    let mut qp = 0;
    let mut density = 0;
    if float {
        let (d, base) = j.qp_base.ok_or_else(|| {
            Error::invalid("mps_quantization_method_flags", "no QP for NNR_PT_FLOAT")
        })?;
        density = d;
        qp = read_iae(&mut dec, 6 + u32::from(d)).saturating_add(base);
    }
    let dq = float && h.dq_flag;
    let p = layer_params(h, &j.dims, j.num, j.profile, dq);
    let mut levels = vec![0i32; j.num];
    coding::decode_layer(
        j.payload,
        &mut dec,
        &p,
        &h.entry_points,
        parallel,
        &mut levels,
    )?;
    let data = if float {
        TensorData::F32(reconstruct_levels(
            &levels,
            qp,
            density,
            h.codebook.as_ref(),
        )?)
    } else {
        TensorData::I32(levels)
    };
    Ok(Tensor { name, shape, data })
}

// ---------------------------------------------------------------------------------------------
// Encoder

/// What the encoder decided for one tensor.
struct Coded {
    payload_type: PayloadType,
    qp: i32,
    dq: bool,
    levels: Vec<i32>,
    codebook: Option<CodebookSyntax>,
}

fn cabac_params(
    width: usize,
    num: usize,
    dq: bool,
    scan_order: u8,
    cb: Option<&CodebookSyntax>,
    g: u32,
) -> LayerParams {
    LayerParams {
        width,
        num,
        dq,
        scan_order,
        profile: 1,
        parent_node_id_present: false,
        cb_size: cb.map_or(0, |c| c.values.len() as u32),
        cb_zero: cb.map_or(0, |c| c.zero_offset),
        g,
    }
}

/// Size in bytes of a CABAC stream coding `levels` (no QP prefix), as the reference measures
/// candidates in codebook decisions.
fn trial_bytes(levels: &[i32], p: &LayerParams, param_opt: Option<u32>) -> Result<usize> {
    let mut enc = BinEncoder::new(ByteCounter::default());
    coding::encode_layer(&mut enc, levels, p, false, param_opt)?;
    Ok(enc.finish().0)
}

fn param_opt_bins(cfg: &EncoderConfig) -> Option<u32> {
    cfg.param_opt
        .then_some(cfg.param_opt_bins.unwrap_or(u32::MAX))
}

fn all_zero(w: &[f32]) -> bool {
    w.iter().all(|&x| x == 0.0)
}

fn quantize_tensor(t: &Tensor, w: &[f32], cfg: &EncoderConfig) -> Result<Coded> {
    if w.iter().any(|x| !x.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "tensor {}: NaN or infinite values",
            t.name
        )));
    }
    let ov = cfg.overrides.get(&t.name).copied().unwrap_or_default();
    let kind = ov.kind.unwrap_or_else(|| TensorKind::of_shape(&t.shape));
    let d = cfg.qp_density;
    let (mut qp, dq) = cfg.tensor_qp(&t.name, &t.shape);
    let width = row_width(&t.shape);
    let so = effective_scan_order(&t.shape, cfg.scan_order);
    let bw = cfg.int_quant_bw.filter(|&b| b > 0);
    // Integer alignment derives the QP from the data, unless the tensor's QP is overridden.
    if let (Some(bw), None) = (bw, ov.qp) {
        let tb = if bw > 7 || kind == TensorKind::Weight {
            bw
        } else {
            8
        };
        qp = if all_zero(w) {
            0
        } else {
            quant::int_aligned_qp(w, d, tb)
        };
    }
    let clip_bw = bw.map(|b| {
        if b > 7 || kind == TensorKind::Weight {
            b
        } else {
            8
        }
    });
    let g_trial = u32::from(cfg.cabac_unary_length_minus1);
    if cfg.codebook_mode == 0 || w.is_empty() {
        let (mut levels, qp) = quant::quantize(w, width, qp, d, dq, so);
        if let Some(b) = clip_bw {
            quant::clip_levels(&mut levels, w, b);
        }
        return Ok(Coded {
            payload_type: PayloadType::Float,
            qp,
            dq,
            levels,
            codebook: None,
        });
    }
    // Codebook: uniform levels without DQ (QP lowered to match DQ's resolution).
    let qp_off = if dq { 1 << d } else { 0 };
    let (mut levels, cb_qp) = quant::quantize(w, width, qp.saturating_sub(qp_off), d, false, so);
    if let Some(b) = clip_bw.filter(|_| !all_zero(w)) {
        quant::clip_levels(&mut levels, w, b);
    }
    let (values, idx) = codebook::derive(&levels);
    // Offset choice: cheapest stream of `index - offset` (profile 0, no codebook limits).
    let probe = LayerParams {
        profile: 0,
        ..cabac_params(width, idx.len(), false, 0, None, g_trial)
    };
    let mut best: Option<(usize, usize)> = None;
    let mut shifted = vec![0i32; idx.len()];
    for off in offset_candidates(&values, idx.len()) {
        for (s, &i) in shifted.iter_mut().zip(&idx) {
            *s = i - off as i32;
        }
        let n = trial_bytes(&shifted, &probe, Some(u32::MAX))?;
        if best.is_none_or(|(b, _)| n < b) {
            best = Some((n, off));
        }
    }
    let off = best.map_or(0, |b| b.1);
    let cb_levels: Vec<i32> = idx.iter().map(|&i| i - off as i32).collect();
    let egk = codebook::best_egk(&values, off);
    let cb = CodebookSyntax {
        egk,
        zero_offset: off as u32,
        values,
    };
    if cfg.codebook_mode == 2 {
        // Keep the codebook only if it beats uniform levels (with DQ if enabled), counting
        // the codebook syntax in bits against stream bytes, as the reference does.
        let (mut uni, uqp) = if dq {
            quant::quantize(w, width, qp, d, true, so)
        } else {
            (levels.clone(), cb_qp)
        };
        if let Some(b) = clip_bw.filter(|_| !all_zero(w)) {
            quant::clip_levels(&mut uni, w, b);
        }
        let pu = cabac_params(width, uni.len(), dq, so, None, g_trial);
        let bytes_uni = trial_bytes(&uni, &pu, param_opt_bins(cfg))?;
        let pc = cabac_params(width, uni.len(), false, so, None, g_trial);
        let bytes_cb = trial_bytes(&cb_levels, &pc, param_opt_bins(cfg))?
            + codebook::syntax_bits(&cb.values, off, egk);
        if bytes_cb >= bytes_uni {
            return Ok(Coded {
                payload_type: PayloadType::Float,
                qp: uqp,
                dq,
                levels: uni,
                codebook: None,
            });
        }
    }
    Ok(Coded {
        payload_type: PayloadType::Float,
        qp: cb_qp,
        dq: false,
        levels: cb_levels,
        codebook: Some(cb),
    })
}

/// Work budget (codebook entries × elements) of the exhaustive `CbZeroOffset` search.
const OFFSET_SEARCH_BUDGET: usize = 1 << 26;

/// `CbZeroOffset` candidates: all of them (as the reference) unless that exceeds the budget;
/// then a window around the entry closest to zero, where the optimum lies for weight-like data.
fn offset_candidates(values: &[i32], n: usize) -> std::ops::Range<usize> {
    let k = values.len();
    if k.saturating_mul(n.max(1)) <= OFFSET_SEARCH_BUDGET {
        return 0..k;
    }
    let window = (OFFSET_SEARCH_BUDGET / n.max(1)).max(1);
    let center = values.partition_point(|&v| v < 0);
    let lo = center
        .saturating_sub(window / 2)
        .min(k.saturating_sub(window));
    lo..(lo + window).min(k)
}

fn row_width(shape: &[usize]) -> usize {
    if shape.len() > 1 {
        shape[1..].iter().fold(1usize, |a, &d| a.saturating_mul(d))
    } else {
        1
    }
}

/// Block scans only where there are several rows and columns (else entry points are moot).
fn effective_scan_order(shape: &[usize], so: u8) -> u8 {
    if shape.len() > 1 && shape[0] > 1 && row_width(shape) > 1 {
        so
    } else {
        0
    }
}

/// Largest dimension the encoder writes (decoders read `ue(7)` values up to about 2^62).
const MAX_DIMENSION: u64 = 1 << 48;

/// Checks that a caller's tensor is codable: shape matches the data, name has no NUL.
fn validate_tensor(t: &Tensor) -> Result<usize> {
    let num = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::InvalidInput(format!("tensor {}: shape overflows", t.name)))?;
    if num != t.data.len() {
        return Err(Error::InvalidInput(format!(
            "tensor {}: shape {:?} does not match {} elements",
            t.name,
            t.shape,
            t.data.len()
        )));
    }
    if t.name.contains('\0') {
        return Err(Error::InvalidInput("tensor name contains NUL".into()));
    }
    if t.shape.iter().any(|&d| d as u64 > MAX_DIMENSION) {
        return Err(Error::InvalidInput(format!(
            "tensor {}: dimension above 2^48",
            t.name
        )));
    }
    Ok(num)
}

/// A tensor after quantization, before entropy coding.
enum Prepared {
    /// A finished NNR_PT_RAW_FLOAT unit.
    Raw(Vec<u8>),
    /// Levels to code with CABAC, and the dimensions to signal.
    Coded(Vec<usize>, Coded),
}

fn prepare_ndu(t: &Tensor, index: usize, cfg: &EncoderConfig) -> Result<Prepared> {
    validate_tensor(t)?;
    // Scalars are carried as one-element vectors, as the reference does.
    let dims: Vec<usize> = if t.shape.is_empty() {
        vec![1]
    } else {
        t.shape.clone()
    };
    let ov = cfg.overrides.get(&t.name).copied().unwrap_or_default();
    let coded = match &t.data {
        TensorData::I32(v) => Coded {
            payload_type: PayloadType::Int,
            qp: 0,
            dq: false,
            levels: v.clone(),
            codebook: None,
        },
        TensorData::F32(w) if ov.raw => {
            let header = base_header(t, index, &dims, PayloadType::RawFloat, false, None, cfg, 0);
            let mut wr = hls::begin_unit(&ndu_unit_header());
            header.write(&mut wr, &ndu_ctx());
            let raw: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            return Ok(Prepared::Raw(hls::finish_unit(wr, &raw)?));
        }
        TensorData::F32(w) => quantize_tensor(t, w, cfg)?,
    };
    Ok(Prepared::Coded(dims, coded))
}

fn write_ndu(
    t: &Tensor,
    index: usize,
    prepared: Prepared,
    cfg: &EncoderConfig,
    base_qp: i32,
) -> Result<Vec<u8>> {
    let (dims, coded) = match prepared {
        Prepared::Raw(u) => return Ok(u),
        Prepared::Coded(d, c) => (d, c),
    };
    let density = cfg.qp_density;
    let num = coded.levels.len();
    let so = effective_scan_order(&dims, cfg.scan_order);
    let g = u32::from(cfg.cabac_unary_length_minus1) + 1;
    let width = row_width(&dims);
    let p = cabac_params(width, num, coded.dq, so, coded.codebook.as_ref(), g);
    let qbits = 6 + u32::from(density);
    let mut enc = BinEncoder::new(Vec::new());
    if coded.payload_type == PayloadType::Float {
        let rel = i64::from(coded.qp) - i64::from(base_qp);
        let lim = 1i64 << (qbits - 1);
        if !(-lim..lim).contains(&rel) {
            return Err(Error::InvalidInput(format!(
                "tensor {}: QP {} too far from the others for qp_density {density}",
                t.name, coded.qp
            )));
        }
        enc.encode_bins_ep((rel as u32) & ((1u32 << qbits) - 1), qbits);
    }
    coding::encode_layer(
        &mut enc,
        &coded.levels,
        &p,
        cfg.row_skipping,
        param_opt_bins(cfg),
    )?;
    let payload = enc.finish();
    let mut header = base_header(
        t,
        index,
        &dims,
        coded.payload_type,
        coded.dq,
        coded.codebook.clone(),
        cfg,
        so,
    );
    if so > 0 {
        let float = coded.payload_type == PayloadType::Float;
        header.entry_points = coding::create_entry_points(
            &payload,
            |d| {
                if float {
                    d.decode_bins_ep(qbits);
                }
                Ok(())
            },
            &p,
        )?;
    }
    let mut wr = hls::begin_unit(&ndu_unit_header());
    header.write(&mut wr, &ndu_ctx());
    hls::finish_unit(wr, &payload)
}

fn ndu_unit_header() -> UnitHeader {
    UnitHeader {
        unit_type: NnrUnitType::Ndu,
        independently_decodable: true,
        partial_data_counter: None,
    }
}

fn ndu_ctx() -> NduContext {
    NduContext {
        profile: 1,
        topology_indexed: false,
        parent_signalling: false,
    }
}

#[allow(clippy::too_many_arguments)]
fn base_header(
    t: &Tensor,
    index: usize,
    dims: &[usize],
    payload_type: PayloadType,
    dq: bool,
    codebook: Option<CodebookSyntax>,
    cfg: &EncoderConfig,
    scan_order: u8,
) -> NduHeader {
    NduHeader {
        payload_type,
        decompressed_data_format: None,
        topology_elem: TopologyElemRef::Id(t.name.clone()),
        node_id: Some(NodeId {
            device_id: 0,
            parameter_id: index as u64,
            put_node_depth: 0,
        }),
        parent_node_id_present_flag: false,
        codebook,
        dq_flag: dq,
        input_parameters_present_flag: true,
        compressed_parameter_types: 0,
        tensor_dimensions: Some(dims.iter().map(|&d| d as u64).collect()),
        cabac_unary_length_minus1: Some(cfg.cabac_unary_length_minus1),
        first_tensor_dimension_shift: 0,
        scan_order: if dims.len() > 1 { scan_order } else { 0 },
        entry_points: Vec::new(),
    }
}

/// The reconstruction [`decode`] will produce for `encode(tensors, cfg)`, computed without
/// entropy coding (the reference's `quantize_only`). Useful for rate control and tests.
pub fn reconstruct(tensors: &[Tensor], cfg: &EncoderConfig) -> Result<Vec<Tensor>> {
    tensors
        .iter()
        .map(|t| {
            validate_tensor(t)?;
            let ov = cfg.overrides.get(&t.name).copied().unwrap_or_default();
            let shape = if t.shape.is_empty() {
                vec![1]
            } else {
                t.shape.clone()
            };
            let data = match &t.data {
                TensorData::I32(v) => TensorData::I32(v.clone()),
                TensorData::F32(w) if ov.raw => TensorData::F32(w.clone()),
                TensorData::F32(w) => {
                    let c = quantize_tensor(t, w, cfg)?;
                    let so = effective_scan_order(&shape, cfg.scan_order);
                    let g = u32::from(cfg.cabac_unary_length_minus1) + 1;
                    let p = cabac_params(row_width(&shape), w.len(), c.dq, so, None, g);
                    let levels = coding::decoded_levels(&c.levels, &p, cfg.row_skipping)?;
                    TensorData::F32(reconstruct_levels(
                        &levels,
                        c.qp,
                        cfg.qp_density,
                        c.codebook.as_ref(),
                    )?)
                }
            };
            Ok(Tensor {
                name: t.name.clone(),
                shape,
                data,
            })
        })
        .collect()
}

/// Float reconstruction of levels (uniform: `step * level` in float32; codebook:
/// `codebook[level + CbZeroOffset] * step` in double, then float32).
fn reconstruct_levels(
    levels: &[i32],
    qp: i32,
    density: u8,
    cb: Option<&CodebookSyntax>,
) -> Result<Vec<f32>> {
    match cb {
        Some(cb) => {
            let step = quant::step_size_f64(qp, density);
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
        None => Ok(quant::dequantize(levels, quant::step_size(qp, density))),
    }
}

/// `mps_quantization_parameter`: 0 as the reference writes it, unless some tensor's QP does
/// not fit the `iae_v(6 + qp_density)` offset; then the middle of the QP range.
fn base_qp(prepared: &[Prepared], density: u8) -> Result<i32> {
    let qps: Vec<i32> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::Coded(_, c) if c.payload_type == PayloadType::Float => Some(c.qp),
            _ => None,
        })
        .collect();
    let (Some(&lo), Some(&hi)) = (qps.iter().min(), qps.iter().max()) else {
        return Ok(0);
    };
    let lim = 1i64 << (5 + u32::from(density));
    let fits = |b: i64| i64::from(lo) - b >= -lim && i64::from(hi) - b < lim;
    if fits(0) {
        return Ok(0);
    }
    let mid = ((i64::from(lo) + i64::from(hi)) / 2).clamp(-4096, 4095);
    if fits(mid) {
        Ok(mid as i32)
    } else {
        Err(Error::InvalidInput(format!(
            "QPs {lo}..={hi} span too much for qp_density {density}"
        )))
    }
}

/// Encodes tensors into an NNC bitstream the way the reference's `nnc.compress` does.
pub fn encode(tensors: &[Tensor], cfg: &EncoderConfig) -> Result<Vec<u8>> {
    encode_with_topology(tensors, cfg, None)
}

/// Like [`encode`], carrying `topology` in an NNR_TPL unit (without one, an empty
/// NNR_TPL_UNREC topology unit is written, as the reference does).
pub fn encode_with_topology(
    tensors: &[Tensor],
    cfg: &EncoderConfig,
    topology: Option<&Topology>,
) -> Result<Vec<u8>> {
    if cfg.qp_density > 7 {
        return Err(Error::InvalidInput("qp_density above 7".into()));
    }
    if cfg.codebook_mode > 2 {
        return Err(Error::InvalidInput("codebook_mode above 2".into()));
    }
    if cfg.int_quant_bw.is_some_and(|b| b > 32) {
        return Err(Error::InvalidInput("int_quant_bw above 32".into()));
    }
    if cfg.scan_order > 4 {
        return Err(Error::InvalidInput("scan_order above 4".into()));
    }
    let prepared: Result<Vec<Prepared>> = if cfg.parallel {
        tensors
            .par_iter()
            .enumerate()
            .map(|(i, t)| prepare_ndu(t, i, cfg))
            .collect()
    } else {
        tensors
            .iter()
            .enumerate()
            .map(|(i, t)| prepare_ndu(t, i, cfg))
            .collect()
    };
    let prepared = prepared?;
    let base_qp = base_qp(&prepared, cfg.qp_density)?;
    let mut out = StartUnit {
        general_profile_idc: 1,
    }
    .write()?;
    let mps = ModelParameterSet {
        topology_carriage_flag: true,
        quantization_method_flags: 1,
        qp_density: cfg.qp_density,
        quantization_parameter: base_qp,
        ..Default::default()
    };
    out.extend(mps.write(1)?);
    let tpl = match topology {
        Some(t) => OpaqueUnit {
            storage_format: t.storage_format,
            compression_format: t.compression_format,
            data: t.data.clone(),
        },
        None => OpaqueUnit {
            storage_format: topology_storage_format::NNR_TPL_UNREC,
            compression_format: topology_compression_format::NNR_PT_RAW,
            data: vec![0],
        },
    };
    out.extend(tpl.write(NnrUnitType::Tpl)?);
    let jobs: Vec<(usize, Prepared)> = prepared.into_iter().enumerate().collect();
    let ndus: Result<Vec<Vec<u8>>> = if cfg.parallel {
        jobs.into_par_iter()
            .map(|(i, p)| write_ndu(&tensors[i], i, p, cfg, base_qp))
            .collect()
    } else {
        jobs.into_iter()
            .map(|(i, p)| write_ndu(&tensors[i], i, p, cfg, base_qp))
            .collect()
    };
    for n in ndus? {
        out.extend(n);
    }
    Ok(out)
}
