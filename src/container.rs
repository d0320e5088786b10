//! ONNX model ↔ one self-contained NNC bitstream: NNR_STR, NNR_MPS with the topology carried, an
//! NNR_TPL unit holding the model's graph without its weight data (ONNX, deflated), then one
//! NNR_NDU per weight tensor named by its topology element id (the weight's qualified name).
//!
//! What goes where:
//! - float32 weights: quantized NDUs (weights with the weight QP, vectors and scalars with the
//!   non-weight QP, as the reference decides), tiny ones raw (NNR_PT_RAW_FLOAT, lossless);
//! - int32 tensors, and int64 tensors whose values fit in 32 bits: integer NDUs (lossless; the
//!   graph keeps the original element type);
//! - everything else (other element types, int64 beyond 32 bits) stays inside the graph, as is.

use std::collections::HashMap;

use nnc_codec::{topology_compression_format, topology_storage_format, EncoderConfig, Limits};
use onnx_protobuf::{Message, ModelProto};
use serde::Serialize;
use thiserror::Error;

use crate::onnx::weights::{graph_at_mut, WeightSlot, WeightStorage};
use crate::onnx::{Model, OnnxError};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error(transparent)]
    Codec(#[from] nnc_codec::Error),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("the bitstream carries no ONNX topology (NNR_TPL): decode it with `nnzip codec decode`, or pass the graph file written beside it by --reference-compatible")]
    NoTopology,
    #[error("the topology unit is not an ONNX graph (topology_storage_format {0})")]
    NotOnnx(u8),
    #[error("the ONNX graph in the bitstream is corrupt: {0}")]
    BadTopology(String),
    #[error("tensor '{0}' in the bitstream has no place in the graph")]
    UnknownTensor(String),
    #[error("tensor '{name}' has shape {got:?} in the bitstream but {expected:?} in the graph")]
    ShapeMismatch {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("weight '{0}' of the graph is missing from the bitstream")]
    MissingTensor(String),
}

/// How weights become NDUs.
#[derive(Debug, Clone)]
pub struct ContainerOptions {
    pub codec: EncoderConfig,
    /// Float tensors with fewer elements than this are stored raw (lossless).
    pub raw_below: usize,
    /// Raw-float NDUs allowed (not in reference-compatible streams, which NNCodec 2.1.3 cannot
    /// read after one); float tensors that cannot be quantized then stay in the graph.
    pub raw_allowed: bool,
}

impl Default for ContainerOptions {
    fn default() -> Self {
        ContainerOptions {
            codec: EncoderConfig::default(),
            raw_below: 16,
            raw_allowed: true,
        }
    }
}

/// What went into the bitstream.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ContainerStats {
    pub bitstream_bytes: u64,
    /// Deflated size of the graph in the NNR_TPL unit (approximate: deflated separately).
    pub topology_bytes: u64,
    pub ndus: usize,
    pub quantized_elements: u64,
    pub raw_elements: u64,
    pub integer_elements: u64,
    /// Weights left inside the graph (types NNC does not carry).
    pub kept_in_graph: usize,
}

/// One weight's plan. Float tensors carry their values, converted once.
enum Plan {
    Quantized(Vec<f32>),
    Raw(Vec<f32>),
    Integer,
    Keep,
}

fn plan(t: &Tensor, name: &str, opts: &ContainerOptions) -> Result<Plan, ContainerError> {
    Ok(match t.dtype {
        DType::F32 => {
            let v = t.to_f32()?;
            let c = &opts.codec;
            let (qp, dq) = c.tensor_qp(name, &t.dims);
            // Tiny tensors are mostly structural scalars (a 1.0 subtracted from an attention
            // mask, sqrt(d)); values beyond 32-bit levels at the tensor's QP (sentinels like
            // -3.4e38) would force a QP at which every other value is lost. Both stay exact:
            // raw, or inside the graph where raw NDUs are not allowed.
            let exact = t.numel() < opts.raw_below
                || !(c.int_quant_bw.is_some()
                    || nnc_codec::quant::levels_fit(&v, qp, c.qp_density, dq));
            match (exact, opts.raw_allowed) {
                (false, _) => Plan::Quantized(v),
                (true, true) => Plan::Raw(v),
                (true, false) => Plan::Keep,
            }
        }
        DType::I32 => Plan::Integer,
        DType::I64 => match t.to_i64() {
            Ok(v) if v.iter().all(|&x| i32::try_from(x).is_ok()) => Plan::Integer,
            _ => Plan::Keep,
        },
        _ => Plan::Keep,
    })
}

/// Unique NDU names: the weight's qualified name, suffixed on a clash.
fn ndu_names(model: &Model) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    model
        .weights()
        .iter()
        .map(|w| {
            let base = w.qualified_name();
            let k = seen.entry(base.clone()).or_insert(0);
            *k += 1;
            if *k == 1 {
                base
            } else {
                format!("{base}#{k}")
            }
        })
        .collect()
}

/// Clears a weight's data in the topology copy (the NDU carries it).
fn strip(proto: &mut ModelProto, w: &crate::onnx::WeightInfo) {
    let Some(g) = proto
        .graph
        .as_mut()
        .and_then(|g| graph_at_mut(g, &w.id.graph))
    else {
        return;
    };
    let tp = match w.id.slot {
        WeightSlot::Initializer(i) => g.initializer.get_mut(i),
        WeightSlot::Constant { node, attr } => {
            let Some(a) = g.node.get_mut(node).and_then(|n| n.attribute.get_mut(attr)) else {
                return;
            };
            match w.storage {
                WeightStorage::ConstantFloats => {
                    a.floats.clear();
                    return;
                }
                WeightStorage::ConstantInts => {
                    a.ints.clear();
                    return;
                }
                WeightStorage::ConstantFloat => {
                    a.f = 0.0;
                    return;
                }
                WeightStorage::ConstantInt => {
                    a.i = 0;
                    return;
                }
                _ => a.t.as_mut(),
            }
        }
    };
    if let Some(tp) = tp {
        tp.raw_data.clear();
        tp.float_data.clear();
        tp.int32_data.clear();
        tp.int64_data.clear();
        tp.double_data.clear();
        tp.uint64_data.clear();
        tp.external_data.clear();
        tp.data_location = protobuf::EnumOrUnknown::from_i32(0);
    }
}

/// The codec tensors, overrides and stripped graph for a model.
pub fn prepare(
    model: &Model,
    opts: &ContainerOptions,
) -> Result<
    (
        Vec<nnc_codec::Tensor>,
        EncoderConfig,
        ModelProto,
        ContainerStats,
    ),
    ContainerError,
> {
    let mut proto = model.proto.clone();
    let mut cfg = opts.codec.clone();
    let mut tensors = Vec::new();
    let mut stats = ContainerStats::default();
    let names = ndu_names(model);
    for (w, name) in model.weights().iter().zip(names) {
        let t = model.read(&w.id)?;
        // NDUs need at least one dimension: scalars travel as [1].
        let shape = if t.dims.is_empty() {
            vec![1]
        } else {
            t.dims.clone()
        };
        let data = match plan(&t, &name, opts)? {
            Plan::Keep => {
                stats.kept_in_graph += 1;
                continue;
            }
            Plan::Quantized(v) => {
                stats.quantized_elements += t.numel() as u64;
                nnc_codec::TensorData::F32(v)
            }
            Plan::Raw(v) => {
                stats.raw_elements += t.numel() as u64;
                let o = cfg.overrides.entry(name.clone()).or_default();
                o.raw = true;
                nnc_codec::TensorData::F32(v)
            }
            Plan::Integer => {
                stats.integer_elements += t.numel() as u64;
                let v: Vec<i32> = match t.dtype {
                    DType::I32 => t.to_i32()?,
                    _ => t.to_i64()?.iter().map(|&x| x as i32).collect(),
                };
                nnc_codec::TensorData::I32(v)
            }
        };
        strip(&mut proto, w);
        tensors.push(nnc_codec::Tensor { name, shape, data });
    }
    stats.ndus = tensors.len();
    Ok((tensors, cfg, proto, stats))
}

/// Encodes a model into one self-contained NNC bitstream.
pub fn compress(
    model: &Model,
    opts: &ContainerOptions,
) -> Result<(Vec<u8>, ContainerStats), ContainerError> {
    let (tensors, cfg, proto, mut stats) = prepare(model, opts)?;
    let topo_bytes = proto
        .write_to_bytes()
        .map_err(|e| ContainerError::BadTopology(e.to_string()))?;
    let topo = nnc_codec::Topology {
        storage_format: topology_storage_format::NNR_TPL_ONNX,
        compression_format: topology_compression_format::NNR_DFL,
        data: topo_bytes,
    };
    let bytes = nnc_codec::encode_with_topology(&tensors, &cfg, Some(&topo))?;
    stats.bitstream_bytes = bytes.len() as u64;
    stats.topology_bytes = nnc_codec::units(&bytes)?
        .iter()
        .filter(|u| u.unit_type == nnc_codec::NnrUnitType::Tpl)
        .map(|u| u.size as u64)
        .sum();
    Ok((bytes, stats))
}

/// A parameters-only bitstream the reference decoder reads, and the stripped graph to keep
/// beside it (`--reference-compatible`).
pub fn compress_reference_compatible(
    model: &Model,
    opts: &ContainerOptions,
) -> Result<(Vec<u8>, Vec<u8>, ContainerStats), ContainerError> {
    // NNCodec 2.1.3 miscounts the bytes of a raw-float NDU and fails on any unit after one:
    // tiny tensors stay in the graph instead (quantizing them, as the reference would, breaks
    // models that rely on exact scalars, e.g. BERT's `1.0 - mask` times -3.4e38).
    let opts = &ContainerOptions {
        raw_allowed: false,
        ..opts.clone()
    };
    let (tensors, cfg, proto, mut stats) = prepare(model, opts)?;
    let graph = proto
        .write_to_bytes()
        .map_err(|e| ContainerError::BadTopology(e.to_string()))?;
    let bytes = nnc_codec::encode(&tensors, &cfg)?;
    stats.bitstream_bytes = bytes.len() as u64;
    stats.topology_bytes = graph.len() as u64;
    Ok((bytes, graph, stats))
}

/// Rebuilds the model from a bitstream (and, for parameters-only bitstreams, the graph file).
pub fn decompress(
    bytes: &[u8],
    graph: Option<&[u8]>,
    limits: &Limits,
) -> Result<Model, ContainerError> {
    let decoded = nnc_codec::decode_stream(bytes, limits)?;
    let topo_bytes: Vec<u8> = match (&decoded.topology, graph) {
        (Some(t), _) if t.storage_format == topology_storage_format::NNR_TPL_ONNX => t.data.clone(),
        (Some(t), None) if t.storage_format != topology_storage_format::NNR_TPL_UNREC => {
            return Err(ContainerError::NotOnnx(t.storage_format))
        }
        (_, Some(g)) => g.to_vec(),
        (_, None) => return Err(ContainerError::NoTopology),
    };
    let proto = ModelProto::parse_from_bytes(&topo_bytes)
        .map_err(|e| ContainerError::BadTopology(e.to_string()))?;
    if proto.graph.is_none() {
        return Err(ContainerError::BadTopology("no graph".into()));
    }
    let mut model = Model::unchecked(proto);
    let names = ndu_names(&model);
    let weights = model.weights();
    let by_name: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut filled = vec![false; weights.len()];
    for t in decoded.tensors {
        let &i = by_name
            .get(t.name.as_str())
            .ok_or_else(|| ContainerError::UnknownTensor(t.name.clone()))?;
        let w = &weights[i];
        // value_floats / value_ints were emptied in the graph: their length is the NDU's.
        let list = matches!(
            w.storage,
            WeightStorage::ConstantFloats | WeightStorage::ConstantInts
        );
        let expected = if list && t.shape.len() == 1 {
            t.shape.clone()
        } else if w.dims.is_empty() {
            vec![1]
        } else {
            w.dims.clone()
        };
        if t.shape != expected {
            return Err(ContainerError::ShapeMismatch {
                name: t.name,
                got: t.shape,
                expected,
            });
        }
        let dims = if list {
            t.shape.clone()
        } else {
            w.dims.clone()
        };
        let tensor = match (&t.data, w.dtype) {
            (nnc_codec::TensorData::F32(v), DType::F32) => Tensor::from_f32(dims, v)?,
            (nnc_codec::TensorData::I32(v), DType::I64) => {
                Tensor::from_i64(dims, &v.iter().map(|&x| x as i64).collect::<Vec<_>>())?
            }
            (nnc_codec::TensorData::I32(v), DType::I32) => Tensor::from_i32(dims, v)?,
            _ => {
                return Err(ContainerError::UnknownTensor(format!(
                    "{} (element type differs from the graph's)",
                    t.name
                )))
            }
        };
        model.write(&w.id, &tensor)?;
        filled[i] = true;
    }
    // Every weight the encoder would have moved out must have come back.
    for (i, w) in weights.iter().enumerate() {
        if filled[i] {
            continue;
        }
        let stripped = match w.storage {
            WeightStorage::ConstantFloats | WeightStorage::ConstantInts => w.numel() == 0,
            _ => model.tensor_proto(&w.id).is_some_and(|tp| {
                tp.raw_data.is_empty()
                    && tp.float_data.is_empty()
                    && tp.int32_data.is_empty()
                    && tp.int64_data.is_empty()
                    && tp.double_data.is_empty()
                    && tp.uint64_data.is_empty()
                    && tp.data_location.value() == 0
                    && w.numel() > 0
            }),
        };
        if stripped && matches!(w.dtype, DType::F32 | DType::I32 | DType::I64) {
            return Err(ContainerError::MissingTensor(names[i].clone()));
        }
    }
    let proto = model.proto;
    Ok(Model::from_proto_in(proto, None, std::path::Path::new(""))?)
}
