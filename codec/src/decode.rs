//! The decoder: NNR units → tensors (and topology), bounded by [`Limits`] and never panicking
//! on malformed input; and the unit listing.

use crate::cabac::BinDecoder;
use crate::coding::{self, LayerParams};
use crate::error::{Error, Result};
use crate::hls::{
    self, LayerParameterSet, ModelParameterSet, NduContext, NduHeader, NnrUnitType, OpaqueUnit,
    PayloadType, StartUnit, TopologyElemRef,
};
use crate::quant;
use crate::{Limits, ScanOrder, Tensor, TensorData, Topology};
use rayon::prelude::*;

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
    pub scan_order: ScanOrder,
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
    let (tensors, topology) = decode_stream_with(data, limits, |t| t)?;
    Ok(DecodedStream { tensors, topology })
}

/// Decodes the tensors of a bitstream, handing each to `f` as soon as it is decoded (on the
/// thread that decoded it), and its topology. The caller can compare or convert tensors while
/// the others decode, without every decoded tensor and its counterpart in memory at once.
pub fn decode_stream_with<T: Send>(
    data: &[u8],
    limits: &Limits,
    f: impl Fn(Tensor) -> T + Sync,
) -> Result<(Vec<T>, Option<Topology>)> {
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
    let tensors: Result<Vec<T>> = if parallel {
        jobs.par_iter()
            .map(|j| decode_ndu(j, parallel).map(&f))
            .collect()
    } else {
        jobs.iter().map(|j| decode_ndu(j, false).map(&f)).collect()
    };
    Ok((tensors?, topology))
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
        scan_order: if dims.len() > 1 {
            h.scan_order
        } else {
            ScanOrder::Raster
        },
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
        TensorData::F32(quant::reconstruct_owned(
            levels,
            qp,
            density,
            h.codebook.as_ref(),
        )?)
    } else {
        TensorData::I32(levels)
    };
    Ok(Tensor { name, shape, data })
}
