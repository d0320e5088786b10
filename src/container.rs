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
use std::sync::Arc;

use onnx_protobuf::{GraphProto, Message, ModelProto, TensorProto};
use serde::Serialize;
use thiserror::Error;

use crate::onnx::weights::{graph_at_mut, WeightSlot, WeightStorage};
use crate::onnx::{Model, OnnxError};
use crate::rowscale::RowPrints;
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error(transparent)]
    Codec(#[from] nnc_codec::Error),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("the bitstream carries no ONNX topology (NNR_TPL): it holds plain tensors, or its graph is a file of its own (a reference-compatible pair)")]
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

impl ContainerError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            ContainerError::Onnx(e) => e.class(),
            ContainerError::Codec(_)
            | ContainerError::Tensor(_)
            | ContainerError::NoTopology
            | ContainerError::NotOnnx(_)
            | ContainerError::BadTopology(_)
            | ContainerError::UnknownTensor(_)
            | ContainerError::ShapeMismatch { .. }
            | ContainerError::MissingTensor(_) => C::BadInput,
        }
    }
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
    /// Fingerprints of the weights before simplification: weights that are their rows
    /// rescaled (folded BatchNormalization) are coded unscaled, with the scales apart
    /// ([`crate::rowscale`]).
    pub row_prints: Option<Arc<RowPrints>>,
}

impl Default for ContainerOptions {
    fn default() -> Self {
        ContainerOptions {
            codec: EncoderConfig::default(),
            raw_below: 16,
            raw_allowed: true,
            row_prints: None,
        }
    }
}

/// What went into the bitstream.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ContainerStats {
    pub bitstream_bytes: u64,
    /// Deflated size of the graph in the NNR_TPL unit (approximate: deflated separately).
    pub topology_bytes: u64,
    /// Bytes of the NDUs (the parameters), without the graph and the stream headers.
    pub parameter_bytes: u64,
    pub ndus: usize,
    pub quantized_elements: u64,
    pub raw_elements: u64,
    pub integer_elements: u64,
    /// Weights left inside the graph (types NNC does not carry).
    pub kept_in_graph: usize,
    /// Weights coded with their row scales apart.
    pub row_scaled: usize,
}

/// Suffix of the NDU holding a weight's row scales, and of the graph value they produce.
pub const ROW_SCALE_SUFFIX: &str = ".nnzip_row_scale";
const SCALED_SUFFIX: &str = ".nnzip_scaled";
const ROW_SCALE_NODE: &str = "nnzip_row_scale/";

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

/// Clears a weight's data in the topology (the NDU carries it).
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
        clear_data(tp);
    }
}

fn clear_data(tp: &mut TensorProto) {
    tp.raw_data = Vec::new();
    tp.float_data = Vec::new();
    tp.int32_data = Vec::new();
    tp.int64_data = Vec::new();
    tp.double_data = Vec::new();
    tp.uint64_data = Vec::new();
    tp.external_data.clear();
    tp.data_location = protobuf::EnumOrUnknown::from_i32(0);
}

/// A model taken apart for coding: the codec tensors, the encoder settings with the
/// container's per-tensor overrides, and the graph without the weights the NDUs carry.
pub struct Prepared {
    pub tensors: Vec<nnc_codec::Tensor>,
    pub config: EncoderConfig,
    pub topology: ModelProto,
    pub stats: ContainerStats,
}

/// Takes `model` apart without copying its graph: each weight's data leaves the graph as it
/// is converted, so the peak is the model plus one tensor's floats.
pub fn into_prepared(model: Model, opts: &ContainerOptions) -> Result<Prepared, ContainerError> {
    let weights = model.weights();
    let names = ndu_names(&model);
    let mut acc = Accumulated::new(opts, &model);
    let mut model = model;
    for (w, name) in weights.iter().zip(names) {
        // Inline bytes leave the graph rather than being copied: the largest tensor would
        // otherwise be in memory three times (graph, copy, floats) while it is converted.
        let (t, taken) = match model.take_raw(&w.id) {
            Some(t) => (t, true),
            None => (model.read(&w.id)?, false),
        };
        match acc.add(t, w, name, opts)? {
            Some(kept) if taken => model.restore_raw(&w.id, kept),
            Some(_) => {}
            None => strip(&mut model.proto, w),
        }
    }
    let mut topology = model.proto;
    if let Some(g) = topology.graph.as_mut() {
        for (name, kshape) in &acc.scaled {
            add_row_scale(g, name, kshape);
        }
    }
    acc.stats.ndus = acc.tensors.len();
    Ok(Prepared {
        tensors: acc.tensors,
        config: acc.cfg,
        topology,
        stats: acc.stats,
    })
}

/// The codec tensors and settings of a model, leaving the model as it is (sizes, rate
/// control): the model plus its float values in memory, no copy of the graph.
pub fn codec_tensors(
    model: &Model,
    opts: &ContainerOptions,
) -> Result<(Vec<nnc_codec::Tensor>, EncoderConfig, ContainerStats), ContainerError> {
    let mut acc = Accumulated::new(opts, model);
    for (w, name) in model.weights().iter().zip(ndu_names(model)) {
        acc.add(model.read(&w.id)?, w, name, opts)?;
    }
    acc.stats.ndus = acc.tensors.len();
    Ok((acc.tensors, acc.cfg, acc.stats))
}

/// The NDU names of a model's weights, in [`Model::weights`] order.
pub fn weight_names(model: &Model) -> Vec<String> {
    ndu_names(model)
}

/// The codec tensors of one weight (none when the graph keeps it; two with row scales apart)
/// and the overrides they need.
pub fn weight_tensors(
    model: &Model,
    w: &crate::onnx::WeightInfo,
    name: String,
    opts: &ContainerOptions,
) -> Result<(Vec<nnc_codec::Tensor>, EncoderConfig), ContainerError> {
    let mut acc = Accumulated::new(opts, model);
    acc.add(model.read(&w.id)?, w, name, opts)?;
    Ok((acc.tensors, acc.cfg))
}

/// How a value taken out of the model ([`Model::take_raw`](crate::onnx::Model::take_raw))
/// goes back after its encode: as the graph kept it, or rebuilt from its codec tensor.
pub enum TakenBack {
    Kept(Tensor),
    Coded {
        name: String,
        dtype: DType,
        dims: Vec<usize>,
    },
}

/// [`weight_tensors`] of a value `t` the caller took out of the model, and how to give it
/// back ([`give_back`]) once its codec tensors are no longer needed. Until then its values are
/// in memory once, as the codec tensor's floats: the model's bytes are rebuilt only after the
/// encode. `opts` must not code rows with their scales apart (the codec tensor would hold
/// other values).
pub fn weight_tensors_taken(
    model: &Model,
    t: Tensor,
    w: &crate::onnx::WeightInfo,
    name: String,
    opts: &ContainerOptions,
) -> Result<(Vec<nnc_codec::Tensor>, EncoderConfig, TakenBack), ContainerError> {
    debug_assert!(opts.row_prints.is_none());
    let (dtype, dims) = (t.dtype, t.dims.clone());
    let mut acc = Accumulated::new(opts, model);
    let back = match acc.add(t, w, name.clone(), opts)? {
        Some(kept) => TakenBack::Kept(kept),
        None => TakenBack::Coded { name, dtype, dims },
    };
    Ok((acc.tensors, acc.cfg, back))
}

/// The value [`weight_tensors_taken`] took, unchanged, from `tensors` (its codec tensors).
pub fn give_back(
    back: TakenBack,
    tensors: Vec<nnc_codec::Tensor>,
) -> Result<Tensor, ContainerError> {
    let (name, dtype, dims) = match back {
        TakenBack::Kept(t) => return Ok(t),
        TakenBack::Coded { name, dtype, dims } => (name, dtype, dims),
    };
    let values = tensors
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| match c.data {
            nnc_codec::TensorData::F32(v) if dtype == DType::F32 => Some(v),
            _ => None,
        })
        .ok_or_else(|| ContainerError::UnknownTensor(format!("{name} (not a float weight)")))?;
    Ok(Tensor::from_bytes(
        dtype,
        dims,
        crate::tensor::le_bytes(&values),
    )?)
}

/// The codec tensors as the weights are visited.
struct Accumulated {
    cfg: EncoderConfig,
    tensors: Vec<nnc_codec::Tensor>,
    stats: ContainerStats,
    /// Weights coded with their row scales apart: name, shape of the scales.
    scaled: Vec<(String, Vec<usize>)>,
    outputs: Vec<String>,
}

impl Accumulated {
    fn new(opts: &ContainerOptions, model: &Model) -> Accumulated {
        Accumulated {
            cfg: opts.codec.clone(),
            tensors: Vec::new(),
            stats: ContainerStats::default(),
            scaled: Vec::new(),
            outputs: model
                .graph()
                .output
                .iter()
                .map(|o| o.name.clone())
                .collect(),
        }
    }

    /// Adds weight `w` (its value `t`); gives `t` back when no NDU carries it (the graph keeps
    /// it).
    fn add(
        &mut self,
        t: Tensor,
        w: &crate::onnx::WeightInfo,
        name: String,
        opts: &ContainerOptions,
    ) -> Result<Option<Tensor>, ContainerError> {
        // NDUs need at least one dimension: scalars travel as [1].
        let shape = if t.dims.is_empty() {
            vec![1]
        } else {
            t.dims.clone()
        };
        let (numel, dims) = (t.numel() as u64, t.dims.clone());
        let data = match plan(&t, &name, opts)? {
            Plan::Keep => {
                self.stats.kept_in_graph += 1;
                return Ok(Some(t));
            }
            Plan::Quantized(mut v) => {
                // The float copy replaces the tensor's bytes (the largest tensor is most of the
                // peak memory of `compress`).
                drop(t);
                self.stats.quantized_elements += numel;
                let k = opts
                    .row_prints
                    .as_ref()
                    .filter(|_| w.scope.is_empty() && !self.outputs.contains(&w.name))
                    .and_then(|p| p.scales(&name, &dims, &v));
                if let Some(k) = k {
                    unscale_rows(&mut v, &k);
                    self.add_scales(&w.name, k, shape.len());
                }
                nnc_codec::TensorData::F32(v)
            }
            Plan::Raw(v) => {
                drop(t);
                self.stats.raw_elements += numel;
                self.cfg.overrides.entry(name.clone()).or_default().raw = true;
                nnc_codec::TensorData::F32(v)
            }
            Plan::Integer => {
                self.stats.integer_elements += numel;
                let v: Vec<i32> = match t.dtype {
                    DType::I32 => t.to_i32()?,
                    _ => t.to_i64()?.iter().map(|&x| x as i32).collect(),
                };
                nnc_codec::TensorData::I32(v)
            }
        };
        self.tensors.push(nnc_codec::Tensor { name, shape, data });
        Ok(None)
    }

    /// The row scales of weight `name` as their own NDU.
    fn add_scales(&mut self, name: &str, k: Vec<f32>, rank: usize) {
        let kname = format!("{name}{ROW_SCALE_SUFFIX}");
        let mut kshape = vec![1; rank.max(1)];
        kshape[0] = k.len();
        // Stored exactly: a row's activation reaches its BatchNormalization with its mean still
        // in it (the folded bias removes it), so a relative error e in a scale shifts that channel
        // by e times its mean, which on PP-LCNet's first depthwise layer costs 12 dB of output
        // SNR at e = 1e-4. Four bytes per row.
        let o = self.cfg.overrides.entry(kname.clone()).or_default();
        o.kind = Some(nnc_codec::TensorKind::NonWeight);
        o.raw = true;
        self.tensors.push(nnc_codec::Tensor {
            name: kname,
            shape: kshape.clone(),
            data: nnc_codec::TensorData::F32(k),
        });
        self.stats.row_scaled += 1;
        self.scaled.push((name.to_string(), kshape));
    }
}

fn unscale_rows(v: &mut [f32], k: &[f32]) {
    let width = v.len() / k.len().max(1);
    for (row, &s) in v.chunks_mut(width.max(1)).zip(k) {
        for x in row {
            *x /= s;
        }
    }
}

/// In the stored graph: `name` now holds the unscaled rows; `name · name.nnzip_row_scale`
/// takes its place for every consumer.
fn add_row_scale(g: &mut GraphProto, name: &str, kshape: &[usize]) {
    let kname = format!("{name}{ROW_SCALE_SUFFIX}");
    let scaled = format!("{name}{SCALED_SUFFIX}");
    crate::graph::edit::replace_uses(g, name, &scaled);
    let mut k = TensorProto::new();
    k.name = kname.clone();
    k.data_type = DType::F32.onnx_code();
    k.dims = kshape.iter().map(|&d| d as i64).collect();
    g.initializer.push(k);
    let mut mul = onnx_protobuf::NodeProto::new();
    mul.op_type = "Mul".into();
    mul.name = format!("{ROW_SCALE_NODE}{name}");
    mul.input = vec![name.to_string(), kname];
    mul.output = vec![scaled];
    // After the Constant producing `name`, if any (nodes are in topological order).
    let at = g
        .node
        .iter()
        .position(|n| n.output.iter().any(|o| o == name))
        .map_or(0, |i| i + 1);
    g.node.insert(at, mul);
}

/// Writes a decoded weight into its slot, moving its bytes (no copy of the largest tensors).
fn put(model: &mut Model, w: &crate::onnx::WeightInfo, t: Tensor) -> Result<(), ContainerError> {
    let tensor_slot = matches!(
        w.storage,
        WeightStorage::Initializer | WeightStorage::ConstantTensor | WeightStorage::External
    );
    let tp = tensor_slot
        .then(|| {
            let g = graph_at_mut(model.graph_mut(), &w.id.graph)?;
            match w.id.slot {
                WeightSlot::Initializer(i) => g.initializer.get_mut(i),
                WeightSlot::Constant { node, attr } => {
                    g.node.get_mut(node)?.attribute.get_mut(attr)?.t.as_mut()
                }
            }
        })
        .flatten();
    match tp {
        Some(tp) => {
            tp.dims = t.dims.iter().map(|&d| d as i64).collect();
            tp.data_type = t.dtype.onnx_code();
            clear_data(tp);
            tp.raw_data = t.into_bytes();
        }
        None => model.write(&w.id, &t)?,
    }
    Ok(())
}

/// Undoes [`add_row_scale`] on a decoded graph: the weights get their scales back and the
/// `Mul` nodes go.
fn fold_row_scales(model: &mut Model) -> Result<(), ContainerError> {
    let muls: Vec<(String, String, String)> = model
        .graph()
        .node
        .iter()
        .filter(|n| n.op_type == "Mul" && n.name.starts_with(ROW_SCALE_NODE))
        .filter_map(|n| match (n.input.as_slice(), n.output.first()) {
            ([w, k], Some(o)) => Some((w.clone(), k.clone(), o.clone())),
            _ => None,
        })
        .collect();
    for (w, k, out) in muls {
        let find = |m: &Model, n: &str| {
            m.weights()
                .into_iter()
                .find(|x| x.scope.is_empty() && x.name == n)
        };
        let (Some(wi), Some(ki)) = (find(model, &w), find(model, &k)) else {
            return Err(ContainerError::BadTopology(format!(
                "row scales of '{w}' not found"
            )));
        };
        let (mut v, s) = (model.read(&wi.id)?.to_f32()?, model.read(&ki.id)?.to_f32()?);
        if s.is_empty() || v.len() % s.len() != 0 {
            return Err(ContainerError::BadTopology(format!(
                "row scales of '{w}' do not fit it"
            )));
        }
        let width = v.len() / s.len();
        for (row, &f) in v.chunks_mut(width.max(1)).zip(&s) {
            for x in row {
                *x *= f;
            }
        }
        model.write(&wi.id, &Tensor::from_f32(wi.dims.clone(), &v)?)?;
        let g = model.graph_mut();
        g.node
            .retain(|n| !(n.op_type == "Mul" && n.output.first() == Some(&out)));
        g.initializer.retain(|t| t.name != k);
        crate::graph::edit::replace_uses(g, &out, &w);
    }
    Ok(())
}

/// The codec tensors and settings for a model, without its graph (rate control, sizes).
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
    let p = into_prepared(model.clone(), opts)?;
    Ok((p.tensors, p.config, p.topology, p.stats))
}

/// Sum of the NDU sizes of a bitstream.
pub fn parameter_bytes(bytes: &[u8]) -> Result<u64, ContainerError> {
    Ok(nnc_codec::units(bytes)?
        .iter()
        .filter(|u| u.unit_type == nnc_codec::NnrUnitType::Ndu)
        .map(|u| u.size as u64)
        .sum())
}

/// Encodes prepared tensors with `cfg` into one self-contained bitstream (graph in NNR_TPL).
pub fn encode_prepared(
    p: &Prepared,
    cfg: &EncoderConfig,
) -> Result<(Vec<u8>, ContainerStats), ContainerError> {
    let topo_bytes = p
        .topology
        .write_to_bytes()
        .map_err(|e| ContainerError::BadTopology(e.to_string()))?;
    let topo = nnc_codec::Topology {
        storage_format: topology_storage_format::NNR_TPL_ONNX,
        compression_format: topology_compression_format::NNR_DFL,
        data: topo_bytes,
    };
    let bytes = nnc_codec::encode_with_topology(&p.tensors, cfg, Some(&topo))?;
    let mut stats = p.stats.clone();
    stats.bitstream_bytes = bytes.len() as u64;
    let units = nnc_codec::units(&bytes)?;
    let size = |t: nnc_codec::NnrUnitType| -> u64 {
        units
            .iter()
            .filter(|u| u.unit_type == t)
            .map(|u| u.size as u64)
            .sum()
    };
    stats.topology_bytes = size(nnc_codec::NnrUnitType::Tpl);
    stats.parameter_bytes = size(nnc_codec::NnrUnitType::Ndu);
    Ok((bytes, stats))
}

/// Encodes a model into one self-contained NNC bitstream.
pub fn compress(
    model: &Model,
    opts: &ContainerOptions,
) -> Result<(Vec<u8>, ContainerStats), ContainerError> {
    let p = into_prepared(model.clone(), opts)?;
    encode_prepared(&p, &p.config)
}

/// A parameters-only bitstream the reference decoder reads, and the stripped graph to keep
/// beside it (`--reference-compatible`).
pub fn compress_reference_compatible(
    model: &Model,
    opts: &ContainerOptions,
) -> Result<(Vec<u8>, Vec<u8>, ContainerStats), ContainerError> {
    let p = into_prepared(model.clone(), &reference_options(opts))?;
    encode_reference_compatible(&p, &p.config)
}

/// `opts` as reference-compatible streams need them. NNCodec 2.1.3 miscounts the bytes of a
/// raw-float NDU and fails on any unit after one: tiny tensors stay in the graph instead
/// (quantizing them, as the reference would, breaks models that rely on exact scalars, e.g.
/// BERT's `1.0 - mask` times -3.4e38).
pub fn reference_options(opts: &ContainerOptions) -> ContainerOptions {
    ContainerOptions {
        raw_allowed: false,
        ..opts.clone()
    }
}

/// The parameters-only bitstream of prepared tensors, and the graph to keep beside it.
pub fn encode_reference_compatible(
    p: &Prepared,
    cfg: &EncoderConfig,
) -> Result<(Vec<u8>, Vec<u8>, ContainerStats), ContainerError> {
    let graph = p
        .topology
        .write_to_bytes()
        .map_err(|e| ContainerError::BadTopology(e.to_string()))?;
    let bytes = nnc_codec::encode(&p.tensors, cfg)?;
    let mut stats = p.stats.clone();
    stats.bitstream_bytes = bytes.len() as u64;
    stats.topology_bytes = graph.len() as u64;
    stats.parameter_bytes = parameter_bytes(&bytes)?;
    Ok((bytes, graph, stats))
}

/// Rebuilds the model from a bitstream (and, for parameters-only bitstreams, the graph file).
pub fn decompress(
    bytes: &[u8],
    graph: Option<&[u8]>,
    limits: &Limits,
) -> Result<Model, ContainerError> {
    assemble(nnc_codec::decode_stream(bytes, limits)?, graph)
}

/// The model from a decoded stream (and, for parameters-only streams, the graph file). The
/// tensors are moved into the graph one at a time.
pub fn assemble(
    decoded: nnc_codec::DecodedStream,
    graph: Option<&[u8]>,
) -> Result<Model, ContainerError> {
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
        let tensor = match (t.data, w.dtype) {
            (nnc_codec::TensorData::F32(v), DType::F32) => Tensor::from_f32(dims, &v)?,
            (nnc_codec::TensorData::I32(v), DType::I64) => {
                Tensor::from_i64(dims, &v.iter().map(|&x| x as i64).collect::<Vec<_>>())?
            }
            (nnc_codec::TensorData::I32(v), DType::I32) => Tensor::from_i32(dims, &v)?,
            _ => {
                return Err(ContainerError::UnknownTensor(format!(
                    "{} (element type differs from the graph's)",
                    t.name
                )))
            }
        };
        put(&mut model, w, tensor)?;
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
    fold_row_scales(&mut model)?;
    let proto = model.proto;
    Ok(Model::from_proto_in(proto, None, std::path::Path::new(""))?)
}
