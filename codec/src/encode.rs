//! The encoder: tensors → NNR units with the reference encoder's decisions (NNCodec 2.1.3
//! `nnc.compress`), and the reconstruction it implies.

use crate::cabac::{BinEncoder, ByteCounter};
use crate::coding::{self, LayerParams};
use crate::error::{Error, Result};
use crate::hls::{
    self, topology_compression_format, topology_storage_format, CodebookSyntax, ModelParameterSet,
    NduContext, NduHeader, NnrUnitType, NodeId, OpaqueUnit, PayloadType, StartUnit,
    TopologyElemRef, UnitHeader,
};
use crate::quant::{self, codebook};
use crate::{CodebookMode, EncoderConfig, ScanOrder, Tensor, TensorData, TensorKind, Topology};
use rayon::prelude::*;

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
    scan_order: ScanOrder,
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
    coding::encode_layer(&mut enc, levels, p, false, param_opt, false)?;
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
    if cfg.codebook_mode == CodebookMode::Uniform || w.is_empty() {
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
    let q = Quantizing {
        qp,
        dq,
        width,
        scan_order: so,
        clip_bw,
        g_trial,
    };
    quantize_codebook(w, &q, cfg)
}

/// What [`quantize_tensor`] decided before choosing between uniform levels and a codebook.
struct Quantizing {
    qp: i32,
    dq: bool,
    width: usize,
    scan_order: ScanOrder,
    clip_bw: Option<u32>,
    g_trial: u32,
}

/// `CodebookMode::Codebook` or `Smaller`: the codebook of the uniform levels, with
/// its cheapest `CbZeroOffset`; under `Smaller`, uniform levels instead when they code smaller.
fn quantize_codebook(w: &[f32], q: &Quantizing, cfg: &EncoderConfig) -> Result<Coded> {
    let Quantizing {
        qp,
        dq,
        width,
        scan_order: so,
        clip_bw,
        g_trial,
    } = *q;
    let d = cfg.qp_density;
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
        ..cabac_params(width, idx.len(), false, ScanOrder::Raster, None, g_trial)
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
    if cfg.codebook_mode == CodebookMode::Smaller {
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
fn effective_scan_order(shape: &[usize], so: ScanOrder) -> ScanOrder {
    if shape.len() > 1 && shape[0] > 1 && row_width(shape) > 1 {
        so
    } else {
        ScanOrder::Raster
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
            let header = base_header(
                t,
                index,
                &dims,
                PayloadType::RawFloat,
                false,
                None,
                cfg,
                ScanOrder::Raster,
            );
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
    prepared: &Prepared,
    cfg: &EncoderConfig,
    base_qp: i32,
) -> Result<Vec<u8>> {
    let (dims, coded) = match prepared {
        Prepared::Raw(u) => return Ok(u.clone()),
        Prepared::Coded(d, c) => (d, c),
    };
    let density = cfg.qp_density;
    let num = coded.levels.len();
    let so = effective_scan_order(dims, cfg.scan_order);
    let g = u32::from(cfg.cabac_unary_length_minus1) + 1;
    let width = row_width(dims);
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
        cfg.parallel,
    )?;
    let payload = enc.finish();
    let mut header = base_header(
        t,
        index,
        dims,
        coded.payload_type,
        coded.dq,
        coded.codebook.clone(),
        cfg,
        so,
    );
    if so != ScanOrder::Raster {
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
    scan_order: ScanOrder,
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
        scan_order: if dims.len() > 1 {
            scan_order
        } else {
            ScanOrder::Raster
        },
        entry_points: Vec::new(),
    }
}

/// The reconstruction [`crate::decode`] will produce for `encode(tensors, cfg)`, computed without
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
                    TensorData::F32(quant::reconstruct(
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

/// The QP a float tensor's NDU signals relative to `mps_quantization_parameter`.
fn float_qp(p: &Prepared) -> Option<i32> {
    match p {
        Prepared::Coded(_, c) if c.payload_type == PayloadType::Float => Some(c.qp),
        _ => None,
    }
}

/// `mps_quantization_parameter`: 0 as the reference writes it, unless some tensor's QP does
/// not fit the `iae_v(6 + qp_density)` offset; then the middle of the QP range.
fn base_qp(qps: &[Option<i32>], density: u8) -> Result<i32> {
    let qps = qps.iter().flatten();
    let (Some(&lo), Some(&hi)) = (qps.clone().min(), qps.max()) else {
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
        return Err(Error::setting("qp_density", cfg.qp_density));
    }
    if let Some(b) = cfg.int_quant_bw.filter(|&b| b > 32) {
        return Err(Error::setting("int_quant_bw", b));
    }
    // Each tensor is quantized and coded in one job, against the base QP 0 the reference
    // writes unless some QP does not fit next to it; only then are the tensors quantized and
    // coded again. A job keeps its NDU and QP, not its levels: all of a model's levels would
    // sit beside the floats until the last tensor is coded. (One job per tensor lets a big
    // tensor's coding start without waiting for the others' quantization.)
    // A tensor's float QP, and its NDU coded against base QP 0 (an error there may be cured
    // by another base).
    type Job = (Option<i32>, Result<Vec<u8>>);
    let job = |(i, t): (usize, &Tensor)| -> Result<Job> {
        let p = prepare_ndu(t, i, cfg)?;
        let ndu = write_ndu(t, i, &p, cfg, 0);
        Ok((float_qp(&p), ndu))
    };
    let jobs: Result<Vec<Job>> = if cfg.parallel {
        tensors.par_iter().enumerate().map(job).collect()
    } else {
        tensors.iter().enumerate().map(job).collect()
    };
    let (qps, ndus): (Vec<Option<i32>>, Vec<Result<Vec<u8>>>) = jobs?.into_iter().unzip();
    let base_qp = base_qp(&qps, cfg.qp_density)?;
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
    let ndus: Vec<Vec<u8>> = if base_qp == 0 {
        ndus.into_iter().collect::<Result<_>>()?
    } else {
        drop(ndus);
        let rewrite = |(i, t): (usize, &Tensor)| {
            let p = prepare_ndu(t, i, cfg)?;
            write_ndu(t, i, &p, cfg, base_qp)
        };
        if cfg.parallel {
            tensors
                .par_iter()
                .enumerate()
                .map(rewrite)
                .collect::<Result<_>>()?
        } else {
            tensors
                .iter()
                .enumerate()
                .map(rewrite)
                .collect::<Result<_>>()?
        }
    };
    // Exactly sized: a doubling buffer would hold up to twice the stream beside the NDUs.
    out.reserve_exact(ndus.iter().map(Vec::len).sum());
    for n in ndus {
        out.extend(n);
    }
    Ok(out)
}
