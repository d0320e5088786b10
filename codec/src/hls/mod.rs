//! High level syntax: NNR units (ISO/IEC 15938-17 clause 7): `nnr_unit_size`, `nnr_unit_header`
//! and the headers/payloads of NNR_STR, NNR_MPS, NNR_LPS, NNR_TPL, NNR_QNT and NNR_NDU.
//! Every parser has a writer; `tests` checks each writer against its reader.

pub mod perf;

use crate::bits::{BitReader, BitWriter};
use crate::cabac::EntryPoint;
use crate::error::{Error, Result};
use crate::ScanOrder;
use perf::PerformanceMaps;

/// `nnr_unit_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NnrUnitType {
    /// Start unit.
    Str = 0,
    /// Model parameter set.
    Mps = 1,
    /// Layer parameter set.
    Lps = 2,
    /// Topology.
    Tpl = 3,
    /// Quantization information.
    Qnt = 4,
    /// Compressed data unit (one tensor).
    Ndu = 5,
    /// Aggregate unit.
    Agg = 6,
}

impl NnrUnitType {
    /// From the 6-bit code.
    pub fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            0 => NnrUnitType::Str,
            1 => NnrUnitType::Mps,
            2 => NnrUnitType::Lps,
            3 => NnrUnitType::Tpl,
            4 => NnrUnitType::Qnt,
            5 => NnrUnitType::Ndu,
            6 => NnrUnitType::Agg,
            _ => return Err(Error::invalid("nnr_unit_type", format!("{c}"))),
        })
    }

    /// Name as in the standard.
    pub fn name(self) -> &'static str {
        match self {
            NnrUnitType::Str => "NNR_STR",
            NnrUnitType::Mps => "NNR_MPS",
            NnrUnitType::Lps => "NNR_LPS",
            NnrUnitType::Tpl => "NNR_TPL",
            NnrUnitType::Qnt => "NNR_QNT",
            NnrUnitType::Ndu => "NNR_NDU",
            NnrUnitType::Agg => "NNR_AGG",
        }
    }
}

/// `nnr_compressed_data_unit_payload_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadType {
    /// NNR_PT_INT: integer levels, reconstructed as int32 without scaling.
    Int = 0,
    /// NNR_PT_FLOAT: quantized float tensor (uniform or codebook).
    Float = 1,
    /// NNR_PT_RAW_FLOAT: uncompressed float32.
    RawFloat = 2,
    /// NNR_PT_BLOCK: several tensors of a block (not supported).
    Block = 3,
}

impl PayloadType {
    fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            0 => PayloadType::Int,
            1 => PayloadType::Float,
            2 => PayloadType::RawFloat,
            3 => PayloadType::Block,
            _ => {
                return Err(Error::invalid(
                    "nnr_compressed_data_unit_payload_type",
                    format!("{c}"),
                ))
            }
        })
    }
}

/// `topology_storage_format` values.
pub mod topology_storage_format {
    /// Unrecognised / not carried.
    pub const NNR_TPL_UNREC: u8 = 0;
    /// NNEF.
    pub const NNR_TPL_NNEF: u8 = 1;
    /// ONNX.
    pub const NNR_TPL_ONNX: u8 = 2;
    /// PyTorch.
    pub const NNR_TPL_PYT: u8 = 3;
    /// TensorFlow.
    pub const NNR_TPL_TEF: u8 = 4;
    /// Pruning topology container.
    pub const NNR_TPL_PRUN: u8 = 5;
    /// Reference list.
    pub const NNR_TPL_REFLIST: u8 = 6;
}

/// `topology_compression_format` values.
pub mod topology_compression_format {
    /// Uncompressed.
    pub const NNR_PT_RAW: u8 = 0;
    /// Deflate (RFC 1951).
    pub const NNR_DFL: u8 = 1;
}

/// Common `nnr_unit_header` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitHeader {
    /// `nnr_unit_type`.
    pub unit_type: NnrUnitType,
    /// `independently_decodable_flag`.
    pub independently_decodable: bool,
    /// `partial_data_counter` when present.
    pub partial_data_counter: Option<u8>,
}

/// One NNR unit split from a bitstream: header fields and its bytes (size field included).
#[derive(Debug, Clone, Copy)]
pub struct RawUnit<'a> {
    /// Common header.
    pub header: UnitHeader,
    /// All bytes of the unit.
    pub bytes: &'a [u8],
    /// Offset of the unit in the bitstream.
    pub offset: usize,
}

/// Reads `nnr_unit_size()` and the common header at the start of `data`; returns the unit and
/// a reader positioned after the common header.
pub fn split_unit(data: &[u8], offset: usize) -> Result<(RawUnit<'_>, BitReader<'_>)> {
    let mut r = BitReader::new(data);
    let long = r.flag("nnr_unit_size_flag")?;
    let size = r.u(if long { 31 } else { 15 }, "nnr_unit_size")? as usize;
    let min = if long { 5 } else { 3 };
    if size < min {
        return Err(Error::invalid("nnr_unit_size", format!("{size}")));
    }
    if size > data.len() {
        return Err(Error::Truncated("nnr_unit"));
    }
    let bytes = &data[..size];
    let mut r = BitReader::new(bytes);
    r.u(if long { 32 } else { 16 }, "nnr_unit_size")?;
    let unit_type = NnrUnitType::from_code(r.u(6, "nnr_unit_type")? as u8)?;
    let independently_decodable = r.flag("independently_decodable_flag")?;
    let partial_data_counter = if r.flag("partial_data_counter_present_flag")? {
        Some(r.u(8, "partial_data_counter")? as u8)
    } else {
        None
    };
    Ok((
        RawUnit {
            header: UnitHeader {
                unit_type,
                independently_decodable,
                partial_data_counter,
            },
            bytes,
            offset,
        },
        r,
    ))
}

/// Starts a unit: reserves the long size field, writes the common header.
pub fn begin_unit(h: &UnitHeader) -> BitWriter {
    let mut w = BitWriter::new();
    w.u(32, 0);
    w.u(6, h.unit_type as u64);
    w.flag(h.independently_decodable);
    w.flag(h.partial_data_counter.is_some());
    if let Some(c) = h.partial_data_counter {
        w.u(8, u64::from(c));
    }
    w
}

/// Finishes a unit started with [`begin_unit`] (plus `extra` payload bytes): fills in
/// `nnr_unit_size`, using the 15-bit form when the unit is small enough.
pub fn finish_unit(w: BitWriter, extra: &[u8]) -> Result<Vec<u8>> {
    let mut b = w.into_bytes();
    b.extend_from_slice(extra);
    if b.len() - 2 < 32768 {
        let n = b.len() - 2;
        b.drain(..2);
        b[0] = (n >> 8) as u8;
        b[1] = n as u8;
    } else {
        let n = b.len();
        if n >= 1 << 31 {
            return Err(Error::InvalidInput("NNR unit larger than 2 GiB".into()));
        }
        b[..4].copy_from_slice(&(n as u32 | 0x8000_0000).to_be_bytes());
    }
    Ok(b)
}

/// NNR_STR header: `general_profile_idc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartUnit {
    /// `general_profile_idc`.
    pub general_profile_idc: u8,
}

impl StartUnit {
    /// Parses the unit body.
    pub fn parse(r: &mut BitReader<'_>) -> Result<Self> {
        Ok(StartUnit {
            general_profile_idc: r.u(8, "general_profile_idc")? as u8,
        })
    }

    /// Serialises the whole unit.
    pub fn write(&self) -> Result<Vec<u8>> {
        let mut w = begin_unit(&UnitHeader {
            unit_type: NnrUnitType::Str,
            independently_decodable: true,
            partial_data_counter: None,
        });
        w.u(8, u64::from(self.general_profile_idc));
        finish_unit(w, &[])
    }
}

/// NNR_MPS payload (`nnr_model_parameter_set_unit_payload`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelParameterSet {
    /// `topology_carriage_flag`.
    pub topology_carriage_flag: bool,
    /// `mps_quantization_method_flags` (bit 0 NNR_QSU, bit 1 NNR_QCB).
    pub quantization_method_flags: u8,
    /// `mps_topology_indexed_reference_flag`.
    pub topology_indexed_reference_flag: bool,
    /// `base_model_id` (profile 1).
    pub base_model_id: Option<String>,
    /// `validation_set_performance_present_flag` (profile 1).
    pub validation_set_performance_present_flag: bool,
    /// `metric_type_performance_map_valid_flag` (profile 1).
    pub metric_type_performance_map_valid_flag: bool,
    /// `mps_parent_signalling_enabled_flag` (profile 1).
    pub parent_signalling_enabled_flag: bool,
    /// `nnr_pre_flag` (profile 1, with parent signalling).
    pub nnr_pre_flag: bool,
    /// `performance_metric_type`.
    pub performance_metric_type: Option<String>,
    /// `mps_qp_density`.
    pub qp_density: u8,
    /// `mps_quantization_parameter`.
    pub quantization_parameter: i32,
    /// Sparsification, pruning, unification and decomposition performance maps.
    pub perf: PerformanceMaps,
    /// `validation_set_performance`.
    pub validation_set_performance: Option<f32>,
}

impl ModelParameterSet {
    /// True when `qp_density` and the base QP are present.
    pub fn has_qp(&self) -> bool {
        self.quantization_method_flags & 3 != 0
    }

    /// Parses the payload (profile from the start unit).
    pub fn parse(r: &mut BitReader<'_>, profile: u8) -> Result<Self> {
        let mut m = ModelParameterSet {
            topology_carriage_flag: r.flag("topology_carriage_flag")?,
            ..Default::default()
        };
        let spars = r.flag("mps_sparsification_flag")?;
        let prun = r.flag("mps_pruning_flag")?;
        let unif = r.flag("mps_unification_flag")?;
        let decomp = r.flag("mps_decomposition_performance_map_flag")?;
        m.quantization_method_flags = r.u(3, "mps_quantization_method_flags")? as u8;
        m.topology_indexed_reference_flag = r.flag("mps_topology_indexed_reference_flag")?;
        if profile == 1 {
            let base = r.flag("base_model_id_present_flag")?;
            m.validation_set_performance_present_flag =
                r.flag("validation_set_performance_present_flag")?;
            m.metric_type_performance_map_valid_flag =
                r.flag("metric_type_performance_map_valid_flag")?;
            m.parent_signalling_enabled_flag = r.flag("mps_parent_signalling_enabled_flag")?;
            let b = r.flag("nnr_pre_flag")?;
            if m.parent_signalling_enabled_flag {
                m.nnr_pre_flag = b;
            }
            r.u(2, "nnr_reserved_zero_2bits")?;
            if base {
                m.base_model_id = Some(r.st("base_model_id")?);
            }
            if m.validation_set_performance_present_flag || m.metric_type_performance_map_valid_flag
            {
                m.performance_metric_type = Some(r.st("performance_metric_type")?);
            }
        } else {
            r.u(7, "nnr_reserved_zero_7bits")?;
        }
        if m.has_qp() {
            m.qp_density = r.u(3, "mps_qp_density")? as u8;
            m.quantization_parameter = r.i(13, "mps_quantization_parameter")? as i32;
        }
        m.perf = PerformanceMaps::parse(r, spars, prun, unif, decomp)?;
        if profile == 1 && m.validation_set_performance_present_flag {
            m.validation_set_performance = Some(r.flt32("validation_set_performance")?);
        }
        r.byte_alignment()?;
        Ok(m)
    }

    /// Serialises the whole unit.
    pub fn write(&self, profile: u8) -> Result<Vec<u8>> {
        let mut w = begin_unit(&UnitHeader {
            unit_type: NnrUnitType::Mps,
            independently_decodable: true,
            partial_data_counter: None,
        });
        w.flag(self.topology_carriage_flag);
        w.flag(self.perf.sparsification.is_some());
        w.flag(self.perf.pruning.is_some());
        w.flag(self.perf.unification.is_some());
        w.flag(self.perf.decomposition.is_some());
        w.u(3, u64::from(self.quantization_method_flags));
        w.flag(self.topology_indexed_reference_flag);
        if profile == 1 {
            w.flag(self.base_model_id.is_some());
            w.flag(self.validation_set_performance_present_flag);
            w.flag(self.metric_type_performance_map_valid_flag);
            w.flag(self.parent_signalling_enabled_flag);
            w.flag(self.parent_signalling_enabled_flag && self.nnr_pre_flag);
            w.u(2, 0);
            if let Some(b) = &self.base_model_id {
                w.st(b);
            }
            if self.validation_set_performance_present_flag
                || self.metric_type_performance_map_valid_flag
            {
                w.st(self.performance_metric_type.as_deref().unwrap_or(""));
            }
        } else {
            w.u(7, 0);
        }
        if self.has_qp() {
            w.u(3, u64::from(self.qp_density));
            w.i(13, i64::from(self.quantization_parameter));
        }
        self.perf.write(&mut w);
        if profile == 1 && self.validation_set_performance_present_flag {
            w.flt32(self.validation_set_performance.unwrap_or(0.0));
        }
        w.byte_alignment();
        finish_unit(w, &[])
    }
}

/// NNR_LPS (`nnr_layer_parameter_set_unit_header` and payload).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerParameterSet {
    /// `lps_self_contained_flag`.
    pub self_contained_flag: bool,
    /// `lps_quantization_method_flags`.
    pub quantization_method_flags: u8,
    /// `lps_qp_density`.
    pub qp_density: u8,
    /// `lps_quantization_parameter`.
    pub quantization_parameter: i32,
    /// Performance maps (no decomposition map in an LPS).
    pub perf: PerformanceMaps,
}

impl LayerParameterSet {
    /// True when QP fields are present.
    pub fn has_qp(&self) -> bool {
        self.quantization_method_flags & 3 != 0
    }

    /// Parses header and payload.
    pub fn parse(r: &mut BitReader<'_>) -> Result<Self> {
        let self_contained_flag = r.flag("lps_self_contained_flag")?;
        r.u(7, "nnr_reserved_zero_7bits")?;
        r.u(1, "nnr_reserved_zero_1_bits")?;
        let spars = r.flag("lps_sparsification_flag")?;
        let prun = r.flag("lps_pruning_flag")?;
        let unif = r.flag("lps_unification_flag")?;
        let qmf = r.u(3, "lps_quantization_method_flags")? as u8;
        r.u(1, "nnr_reserved_zero_1bit")?;
        let mut l = LayerParameterSet {
            self_contained_flag,
            quantization_method_flags: qmf,
            ..Default::default()
        };
        if l.has_qp() {
            l.qp_density = r.u(3, "lps_qp_density")? as u8;
            l.quantization_parameter = r.i(13, "lps_quantization_parameter")? as i32;
        }
        l.perf = PerformanceMaps::parse(r, spars, prun, unif, false)?;
        r.byte_alignment()?;
        Ok(l)
    }

    #[cfg(test)]
    /// Serialises the whole unit.
    pub fn write(&self) -> Result<Vec<u8>> {
        let mut w = begin_unit(&UnitHeader {
            unit_type: NnrUnitType::Lps,
            independently_decodable: true,
            partial_data_counter: None,
        });
        w.flag(self.self_contained_flag);
        w.u(7, 0);
        w.u(1, 0);
        w.flag(self.perf.sparsification.is_some());
        w.flag(self.perf.pruning.is_some());
        w.flag(self.perf.unification.is_some());
        w.u(3, u64::from(self.quantization_method_flags));
        w.u(1, 0);
        if self.has_qp() {
            w.u(3, u64::from(self.qp_density));
            w.i(13, i64::from(self.quantization_parameter));
        }
        let mut perf = self.perf.clone();
        perf.decomposition = None;
        perf.write(&mut w);
        w.byte_alignment();
        finish_unit(w, &[])
    }
}

/// NNR_TPL and NNR_QNT: a format pair and opaque data (the rest of the unit). With
/// compression format NNR_DFL the data is deflate compressed in the bitstream; this struct
/// holds it decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueUnit {
    /// `topology_storage_format` / `quantization_storage_format`.
    pub storage_format: u8,
    /// `topology_compression_format` / `quantization_compression_format`.
    pub compression_format: u8,
    /// Uncompressed payload.
    pub data: Vec<u8>,
}

impl OpaqueUnit {
    /// Parses header and payload, inflating at most `max_bytes`.
    pub fn parse(r: &mut BitReader<'_>, max_bytes: usize) -> Result<Self> {
        let storage_format = r.u(8, "storage_format")? as u8;
        let compression_format = r.u(8, "compression_format")? as u8;
        let raw = r.rest();
        let data = match compression_format {
            topology_compression_format::NNR_PT_RAW => {
                if raw.len() > max_bytes {
                    return Err(Error::Limit("topology/quantization payload".into()));
                }
                raw.to_vec()
            }
            topology_compression_format::NNR_DFL => inflate(raw, max_bytes)?,
            c => {
                return Err(Error::Unsupported(format!(
                    "topology/quantization compression format {c}"
                )))
            }
        };
        Ok(OpaqueUnit {
            storage_format,
            compression_format,
            data,
        })
    }

    /// Serialises the whole unit (`unit_type` NNR_TPL or NNR_QNT).
    pub fn write(&self, unit_type: NnrUnitType) -> Result<Vec<u8>> {
        let mut w = begin_unit(&UnitHeader {
            unit_type,
            independently_decodable: true,
            partial_data_counter: None,
        });
        w.u(8, u64::from(self.storage_format));
        w.u(8, u64::from(self.compression_format));
        let payload = match self.compression_format {
            topology_compression_format::NNR_PT_RAW => self.data.clone(),
            topology_compression_format::NNR_DFL => deflate(&self.data)?,
            c => {
                return Err(Error::Unsupported(format!(
                    "topology/quantization compression format {c}"
                )))
            }
        };
        finish_unit(w, &payload)
    }
}

fn deflate(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data)
        .map_err(|e| Error::Deflate(e.to_string()))?;
    e.finish().map_err(|e| Error::Deflate(e.to_string()))
}

fn inflate(data: &[u8], max_bytes: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let d = flate2::read::DeflateDecoder::new(data);
    let mut out = Vec::new();
    let limit = max_bytes as u64 + 1;
    d.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Error::Deflate(e.to_string()))?;
    if out.len() > max_bytes {
        return Err(Error::Limit(
            "inflated topology/quantization payload".into(),
        ));
    }
    Ok(out)
}

/// How an NDU names its tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyElemRef {
    /// `topology_elem_id`.
    Id(String),
    /// `topology_elem_id_index`.
    Index(u64),
}

/// `node_id_present_flag` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeId {
    /// `device_id`.
    pub device_id: u64,
    /// `parameter_id`.
    pub parameter_id: u64,
    /// `put_node_depth`.
    pub put_node_depth: u64,
}

/// Codebook syntax of an NDU header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodebookSyntax {
    /// `codebook_egk`.
    pub egk: u32,
    /// `CbZeroOffset`.
    pub zero_offset: u32,
    /// Codebook values.
    pub values: Vec<i32>,
}

/// NNR_NDU header (`nnr_compressed_data_unit_header`) for single-tensor payloads.
#[derive(Debug, Clone, PartialEq)]
pub struct NduHeader {
    /// `nnr_compressed_data_unit_payload_type`.
    pub payload_type: PayloadType,
    /// `nnr_decompressed_data_format` when present.
    pub decompressed_data_format: Option<u8>,
    /// Tensor reference.
    pub topology_elem: TopologyElemRef,
    /// Node identification (profile 1).
    pub node_id: Option<NodeId>,
    /// `parent_node_id_present_flag` (profile 1 with parent signalling).
    pub parent_node_id_present_flag: bool,
    /// Codebook when `codebook_present_flag`.
    pub codebook: Option<CodebookSyntax>,
    /// `dq_flag`.
    pub dq_flag: bool,
    /// `input_parameters_present_flag`.
    pub input_parameters_present_flag: bool,
    /// `compressed_parameter_types`.
    pub compressed_parameter_types: u8,
    /// `tensor_dimensions` when `tensor_dimensions_flag`.
    pub tensor_dimensions: Option<Vec<u64>>,
    /// `cabac_unary_length_minus1` when `cabac_unary_length_flag`.
    pub cabac_unary_length_minus1: Option<u8>,
    /// `first_tensor_dimension_shift` (profile 1, more than one dimension).
    pub first_tensor_dimension_shift: u64,
    /// `scan_order`.
    pub scan_order: ScanOrder,
    /// `cabac_entry_point_list`, with `bit_offset` as the delta to the previous entry point.
    pub entry_points: Vec<EntryPoint>,
}

/// Stream-level values an NDU header depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NduContext {
    /// `general_profile_idc`.
    pub profile: u8,
    /// `mps_topology_indexed_reference_flag`.
    pub topology_indexed: bool,
    /// `mps_parent_signalling_enabled_flag`.
    pub parent_signalling: bool,
}

/// `numBlockRowsMinus1` for a first dimension and scan order.
pub fn num_block_rows_minus1(dim0: u64, scan_order: ScanOrder) -> u64 {
    match scan_order.block_size() {
        None => 0,
        Some(b) => (dim0.saturating_add(b as u64 - 1) / b as u64).saturating_sub(1),
    }
}

impl NduHeader {
    /// Parses the header after the common unit header, leaving `r` at the payload.
    pub fn parse(r: &mut BitReader<'_>, c: &NduContext, max_dims: usize) -> Result<Self> {
        let payload_type = PayloadType::from_code(r.u(5, "payload_type")? as u8)?;
        let multiple = r.flag("nnr_multiple_topology_elements_present_flag")?;
        let ddf_present = r.flag("nnr_decompressed_data_format_present_flag")?;
        let input_parameters_present_flag = r.flag("input_parameters_present_flag")?;
        if multiple || payload_type == PayloadType::Block {
            return Err(Error::Unsupported(
                "NDUs with several topology elements (NNR_PT_BLOCK / tensor split)".into(),
            ));
        }
        let topology_elem = if c.topology_indexed {
            TopologyElemRef::Index(r.ue(7, "topology_elem_id_index")?)
        } else {
            TopologyElemRef::Id(r.st("topology_elem_id")?)
        };
        let mut node_id = None;
        let mut parent_node_id_present_flag = false;
        if c.profile == 1 {
            if r.flag("node_id_present_flag")? {
                node_id = Some(NodeId {
                    device_id: r.ue(1, "device_id")?,
                    parameter_id: r.ue(5, "parameter_id")?,
                    put_node_depth: r.ue(4, "put_node_depth")?,
                });
            }
            if c.parent_signalling {
                parent_node_id_present_flag = r.flag("parent_node_id_present_flag")?;
                if parent_node_id_present_flag {
                    let ty = r.u(2, "parent_node_id_type")?;
                    let tcm = r.flag("temporal_context_modeling_flag")?;
                    if tcm {
                        return Err(Error::Unsupported(
                            "temporal_context_modeling_flag (needs a base model)".into(),
                        ));
                    }
                    match ty {
                        0 => {
                            r.ue(1, "parent_device_id")?;
                            if node_id.is_none() {
                                r.ue(5, "parameter_id")?;
                                r.ue(4, "put_node_depth")?;
                            }
                        }
                        1 => {
                            r.u(64, "parent_node_payload_sha256")?;
                            r.u(64, "parent_node_payload_sha256")?;
                            r.u(64, "parent_node_payload_sha256")?;
                            r.u(64, "parent_node_payload_sha256")?;
                        }
                        2 => {
                            for _ in 0..8 {
                                r.u(64, "parent_node_payload_sha512")?;
                            }
                        }
                        t => return Err(Error::invalid("parent_node_id_type", format!("{t}"))),
                    }
                }
            }
        }
        let mut codebook = None;
        if payload_type == PayloadType::Float && r.flag("codebook_present_flag")? {
            codebook = Some(parse_codebook(r)?);
        }
        let dq_flag = if payload_type != PayloadType::RawFloat {
            r.flag("dq_flag")?
        } else {
            false
        };
        let decompressed_data_format = if ddf_present {
            Some(r.u(7, "nnr_decompressed_data_format")? as u8)
        } else {
            None
        };
        let mut tensor_dimensions = None;
        let mut cabac_unary_length_minus1 = None;
        let mut compressed_parameter_types = 0u8;
        if input_parameters_present_flag {
            let dims_flag = r.flag("tensor_dimensions_flag")?;
            let cul_flag = r.flag("cabac_unary_length_flag")?;
            compressed_parameter_types = r.u(4, "compressed_parameter_types")? as u8;
            if compressed_parameter_types & 1 != 0 {
                return Err(Error::Unsupported("decomposed tensors (NNR_CPT_DC)".into()));
            }
            if dims_flag {
                let count = r.ue(1, "count_tensor_dimensions")?;
                if count as usize > max_dims {
                    return Err(Error::Limit(format!("count_tensor_dimensions {count}")));
                }
                let mut d = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    d.push(r.ue(7, "tensor_dimensions")?);
                }
                tensor_dimensions = Some(d);
            }
            if cul_flag {
                cabac_unary_length_minus1 = Some(r.u(8, "cabac_unary_length_minus1")? as u8);
            }
        }
        let mut first_tensor_dimension_shift = 0;
        let mut scan_order = ScanOrder::Raster;
        let mut entry_points = Vec::new();
        let dims = tensor_dimensions.as_deref().unwrap_or(&[]);
        if dims.len() > 1 {
            if c.profile == 1 {
                first_tensor_dimension_shift = r.ue(1, "first_tensor_dimension_shift")?;
            }
            let so = r.u(4, "scan_order")? as u8;
            scan_order = ScanOrder::try_from(so)
                .map_err(|_| Error::invalid("scan_order", format!("{so}")))?;
            if scan_order != ScanOrder::Raster {
                let n = num_block_rows_minus1(dims[0], scan_order);
                // Each entry takes at least 9 bits: bound the list by the unit size.
                if n > (r.rest().len() as u64 + 16) * 8 {
                    return Err(Error::Truncated("cabac_entry_point_list"));
                }
                let mut prev = 0u64;
                for j in 0..n {
                    let value = r.u(8, "cabac_entry_point_value")? as u32;
                    let dq_state = if dq_flag {
                        r.u(3, "cabac_entry_point_dq_state")? as u32
                    } else {
                        0
                    };
                    let off = if j == 0 {
                        r.ue(11, "cabac_entry_point_offset")?
                    } else {
                        let d = r.ie(7, "cabac_entry_point_offset")?;
                        (prev as i64)
                            .checked_add(d)
                            .filter(|v| *v >= 0)
                            .ok_or_else(|| Error::invalid("cabac_entry_point_offset", "negative"))?
                            as u64
                    };
                    prev = off;
                    entry_points.push(EntryPoint {
                        bit_offset: off,
                        value,
                        dq_state,
                    });
                }
            }
        }
        r.byte_alignment()?;
        Ok(NduHeader {
            payload_type,
            decompressed_data_format,
            topology_elem,
            node_id,
            parent_node_id_present_flag,
            codebook,
            dq_flag,
            input_parameters_present_flag,
            compressed_parameter_types,
            tensor_dimensions,
            cabac_unary_length_minus1,
            first_tensor_dimension_shift,
            scan_order,
            entry_points,
        })
    }

    /// Writes the header (after the common unit header).
    pub fn write(&self, w: &mut BitWriter, c: &NduContext) {
        w.u(5, self.payload_type as u64);
        w.flag(false);
        w.flag(self.decompressed_data_format.is_some());
        w.flag(self.input_parameters_present_flag);
        match &self.topology_elem {
            TopologyElemRef::Id(s) => w.st(s),
            TopologyElemRef::Index(i) => w.ue(7, *i),
        }
        if c.profile == 1 {
            w.flag(self.node_id.is_some());
            if let Some(n) = &self.node_id {
                w.ue(1, n.device_id);
                w.ue(5, n.parameter_id);
                w.ue(4, n.put_node_depth);
            }
            if c.parent_signalling {
                w.flag(false);
            }
        }
        if self.payload_type == PayloadType::Float {
            w.flag(self.codebook.is_some());
            if let Some(cb) = &self.codebook {
                write_codebook(w, cb);
            }
        }
        if self.payload_type != PayloadType::RawFloat {
            w.flag(self.dq_flag);
        }
        if let Some(f) = self.decompressed_data_format {
            w.u(7, u64::from(f));
        }
        if self.input_parameters_present_flag {
            w.flag(self.tensor_dimensions.is_some());
            w.flag(self.cabac_unary_length_minus1.is_some());
            w.u(4, u64::from(self.compressed_parameter_types));
            if let Some(d) = &self.tensor_dimensions {
                w.ue(1, d.len() as u64);
                for &x in d {
                    w.ue(7, x);
                }
            }
            if let Some(c) = self.cabac_unary_length_minus1 {
                w.u(8, u64::from(c));
            }
        }
        let dims = self.tensor_dimensions.as_deref().unwrap_or(&[]);
        if dims.len() > 1 {
            if c.profile == 1 {
                w.ue(1, self.first_tensor_dimension_shift);
            }
            w.u(4, u64::from(self.scan_order.code()));
            if self.scan_order != ScanOrder::Raster {
                let mut prev = 0u64;
                for (j, ep) in self.entry_points.iter().enumerate() {
                    w.u(8, u64::from(ep.value & 255));
                    if self.dq_flag {
                        w.u(3, u64::from(ep.dq_state & 7));
                    }
                    if j == 0 {
                        w.ue(11, ep.bit_offset);
                    } else {
                        w.ie(7, ep.bit_offset as i64 - prev as i64);
                    }
                    prev = ep.bit_offset;
                }
            }
        }
        w.byte_alignment();
    }
}

fn parse_codebook(r: &mut BitReader<'_>) -> Result<CodebookSyntax> {
    let egk = r.u(4, "codebook_egk")? as u32;
    let size = r.ue(2, "codebook_size")?;
    if size > (1 << 24) || size as usize > r.rest().len() * 8 + 64 {
        return Err(Error::Limit(format!("codebook_size {size}")));
    }
    let center = r.ie(2, "codebook_center_offset")?;
    let zero = (size >> 1) as i64 + center;
    if size == 0 || zero < 0 || zero >= size as i64 {
        return Err(Error::invalid("CbZeroOffset", format!("{zero} of {size}")));
    }
    let zero = zero as usize;
    let mut values = vec![0i64; size as usize];
    let z = r.ie(7, "codebook_zero_value")?;
    values[zero] = z;
    let mut prev = z;
    for j in (0..zero).rev() {
        let d = r.ue(egk, "codebook_delta_left")? as i64;
        prev = prev.saturating_sub(d).saturating_sub(1);
        values[j] = prev;
    }
    prev = z;
    for v in values.iter_mut().skip(zero + 1) {
        let d = r.ue(egk, "codebook_delta_right")? as i64;
        prev = prev.saturating_add(d).saturating_add(1);
        *v = prev;
    }
    let values = values
        .into_iter()
        .map(|v| i32::try_from(v).map_err(|_| Error::invalid("codebook", "value exceeds 32 bits")))
        .collect::<Result<Vec<i32>>>()?;
    Ok(CodebookSyntax {
        egk,
        zero_offset: zero as u32,
        values,
    })
}

fn write_codebook(w: &mut BitWriter, cb: &CodebookSyntax) {
    w.u(4, u64::from(cb.egk));
    w.ue(2, cb.values.len() as u64);
    let center = i64::from(cb.zero_offset) - (cb.values.len() as i64 >> 1);
    w.ie(2, center);
    crate::quant::codebook::write_entries(w, &cb.values, cb.zero_offset as usize, cb.egk);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndu_header_round_trip() {
        let c = NduContext {
            profile: 1,
            topology_indexed: false,
            parent_signalling: false,
        };
        let h = NduHeader {
            payload_type: PayloadType::Float,
            decompressed_data_format: Some(1),
            topology_elem: TopologyElemRef::Id("layer.weight".into()),
            node_id: Some(NodeId {
                device_id: 0,
                parameter_id: 7,
                put_node_depth: 0,
            }),
            parent_node_id_present_flag: false,
            codebook: Some(CodebookSyntax {
                egk: 1,
                zero_offset: 2,
                values: vec![-9, -3, 0, 1, 40],
            }),
            dq_flag: true,
            input_parameters_present_flag: true,
            compressed_parameter_types: 0,
            tensor_dimensions: Some(vec![40, 3, 3, 3]),
            cabac_unary_length_minus1: Some(10),
            first_tensor_dimension_shift: 0,
            scan_order: ScanOrder::Blocks8,
            entry_points: (0..4)
                .map(|i| EntryPoint {
                    bit_offset: 1000 + 37 * i,
                    value: 200 - i as u32,
                    dq_state: i as u32,
                })
                .collect(),
        };
        let mut w = begin_unit(&UnitHeader {
            unit_type: NnrUnitType::Ndu,
            independently_decodable: true,
            partial_data_counter: None,
        });
        h.write(&mut w, &c);
        let bytes = finish_unit(w, &[1, 2, 3]).unwrap();
        let (u, mut r) = split_unit(&bytes, 0).unwrap();
        assert_eq!(u.header.unit_type, NnrUnitType::Ndu);
        assert_eq!(u.bytes.len(), bytes.len());
        let back = NduHeader::parse(&mut r, &c, 8).unwrap();
        assert_eq!(back, h);
        assert_eq!(r.rest(), &[1, 2, 3]);
    }

    #[test]
    fn parameter_sets_and_opaque_units_round_trip() {
        let m = ModelParameterSet {
            topology_carriage_flag: true,
            quantization_method_flags: 1,
            qp_density: 3,
            quantization_parameter: -1234,
            base_model_id: Some("base".into()),
            ..Default::default()
        };
        for profile in [0u8, 1] {
            let b = m.write(profile).unwrap();
            let (_, mut r) = split_unit(&b, 0).unwrap();
            let mut back = ModelParameterSet::parse(&mut r, profile).unwrap();
            if profile == 0 {
                back.base_model_id = m.base_model_id.clone();
            }
            assert_eq!(back, m);
        }
        let l = LayerParameterSet {
            self_contained_flag: true,
            quantization_method_flags: 2,
            qp_density: 1,
            quantization_parameter: 77,
            perf: PerformanceMaps::default(),
        };
        let b = l.write().unwrap();
        let (_, mut r) = split_unit(&b, 0).unwrap();
        assert_eq!(LayerParameterSet::parse(&mut r).unwrap(), l);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for cf in [0u8, 1] {
            let t = OpaqueUnit {
                storage_format: topology_storage_format::NNR_TPL_ONNX,
                compression_format: cf,
                data: big.clone(),
            };
            let b = t.write(NnrUnitType::Tpl).unwrap();
            let (u, mut r) = split_unit(&b, 0).unwrap();
            assert_eq!(u.header.unit_type, NnrUnitType::Tpl);
            assert_eq!(OpaqueUnit::parse(&mut r, 1 << 20).unwrap(), t);
            let (_, mut r) = split_unit(&b, 0).unwrap();
            assert!(OpaqueUnit::parse(&mut r, 1000).is_err());
        }
    }
}
