//! ONNX model I/O: loading (memory-mapped), validation of hostile input, external data, atomic
//! saving, and one view over every weight wherever the model keeps it (see [`weights`]).
//!
//! Invariants:
//! - a loaded [`Model`] has been checked: every tensor's data matches its type and shape, every
//!   external-data reference stays inside the model's folder and inside its file;
//! - saving never references the source model's data files: the output is self-contained;
//! - unknown protobuf fields, metadata and doc strings are kept (rust-protobuf keeps unknown
//!   fields in `special_fields` and writes them back).

pub mod external;
pub mod weights;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use onnx_protobuf as proto;
use onnx_protobuf::{GraphProto, Message, ModelProto, TensorProto, ValueInfoProto};
use thiserror::Error;

use crate::tensor::{DType, Tensor, TensorError};
pub use external::{ExternalStore, SaveOptions};
pub use weights::{WeightId, WeightInfo, WeightStorage};

/// Protobuf cannot serialize a message of 2 GiB or more; saving moves tensors out before that.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid ONNX model (protobuf parse failed: {reason})")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} is a directory, not an ONNX model file")]
    IsDirectory { path: PathBuf },
    #[error("{path} is an NNC bitstream, not an ONNX model: `nnzip codec info` describes it, `nnzip decompress` rebuilds the model")]
    IsBitstream { path: PathBuf },
    #[error("{path} is not an ONNX model: it has no graph")]
    NoGraph { path: PathBuf },
    #[error("tensor '{name}': {source}")]
    Tensor {
        name: String,
        #[source]
        source: TensorError,
    },
    #[error("tensor '{name}' has a negative dimension {dim}")]
    NegativeDim { name: String, dim: i64 },
    #[error("tensor '{name}': {count} values stored for a shape of {expected} elements")]
    ValueCount {
        name: String,
        count: usize,
        expected: usize,
    },
    #[error("tensor '{name}' of type {dtype} cannot be read as numbers")]
    UnsupportedType { name: String, dtype: DType },
    #[error("tensor '{name}': external data {reason}")]
    External { name: String, reason: String },
    #[error("tensor '{name}': external data location '{location}' is not allowed: {reason}")]
    ExternalPath {
        name: String,
        location: String,
        reason: String,
    },
    #[error("no weight {0:?} in this model")]
    NoSuchWeight(WeightId),
    #[error("'{0}' is not a constant of the main graph")]
    NotConstant(String),
    /// A weight address taken before a structural edit: it now names another tensor, or none.
    #[error("weight '{0}' was addressed before the graph changed (a bug in the caller)")]
    StaleWeight(String),
    #[error("weight '{name}' stored as {storage} cannot hold a {dtype} tensor of shape {dims:?}")]
    IncompatibleWrite {
        name: String,
        storage: WeightStorage,
        dtype: DType,
        dims: Vec<usize>,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the model: {0}")]
    Serialize(String),
}

impl OnnxError {
    /// What kind of failure this is (for exit codes): writing is a write failure, the rest is
    /// about the model given.
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            OnnxError::Write { .. } => C::Write,
            OnnxError::Io { .. }
            | OnnxError::Parse { .. }
            | OnnxError::IsDirectory { .. }
            | OnnxError::IsBitstream { .. }
            | OnnxError::NoGraph { .. }
            | OnnxError::Tensor { .. }
            | OnnxError::NegativeDim { .. }
            | OnnxError::ValueCount { .. }
            | OnnxError::UnsupportedType { .. }
            | OnnxError::External { .. }
            | OnnxError::ExternalPath { .. }
            | OnnxError::NoSuchWeight(_)
            | OnnxError::NotConstant(_)
            | OnnxError::IncompatibleWrite { .. }
            | OnnxError::Serialize(_) => C::BadInput,
            OnnxError::StaleWeight(_) => C::Other,
        }
    }
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Name, element type and shape of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: DType,
    /// `None` when the model gives no shape at all (rank unknown).
    pub dims: Option<Vec<Dim>>,
}

impl ValueInfo {
    pub fn from_proto(v: &ValueInfoProto) -> ValueInfo {
        use onnx_protobuf::tensor_shape_proto::dimension::Value as DV;
        use onnx_protobuf::type_proto::Value as TV;
        let (dtype, dims) = match v.type_.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TV::TensorType(t)) => {
                let dims = t.shape.as_ref().map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DV::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                            Some(DV::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                            _ => Dim::Unknown,
                        })
                        .collect()
                });
                (DType::from_onnx(t.elem_type), dims)
            }
            _ => (DType::Other(0), None),
        };
        ValueInfo {
            name: v.name.clone(),
            dtype,
            dims,
        }
    }
}

/// A loaded, validated ONNX model. Cloning is cheap for external data (shared maps).
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: ModelProto,
    /// Where the model came from: the base of its relative external-data locations.
    pub path: Option<PathBuf>,
    external: ExternalStore,
}

impl Model {
    /// Loads and validates a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, OnnxError> {
        let path = path.as_ref();
        let io = |source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            return Err(OnnxError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let file = File::open(path).map_err(io)?;
        // Read through a buffer rather than a mapping: the mapped pages would count as this
        // process's memory next to the parsed copy, doubling the peak for large models.
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        let proto = ModelProto::parse_from_reader(&mut reader).map_err(|e| {
            // A bitstream nnzip wrote is a common mix-up: say what it is.
            if is_bitstream(&file) {
                OnnxError::IsBitstream {
                    path: path.to_path_buf(),
                }
            } else {
                OnnxError::Parse {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })?;
        drop(reader);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Model::from_proto_in(proto, Some(path.to_path_buf()), &base)
    }

    /// Parses a model from bytes; it may not use external data.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, OnnxError> {
        let path = PathBuf::from("<memory>");
        let proto = ModelProto::parse_from_bytes(bytes).map_err(|e| OnnxError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Model::from_proto_in(proto, None, Path::new(""))
    }

    /// Wraps a model built in memory (tests, passes); external data is resolved against `base`.
    pub fn from_proto_in(
        proto: ModelProto,
        path: Option<PathBuf>,
        base: &Path,
    ) -> Result<Model, OnnxError> {
        if proto.graph.is_none() {
            return Err(OnnxError::NoGraph {
                path: path.unwrap_or_default(),
            });
        }
        let mut external = ExternalStore::new(base);
        if let Some(g) = proto.graph.as_ref() {
            external::open_all(&mut external, g)?;
        }
        let model = Model {
            proto,
            path,
            external,
        };
        // Check every weight once now, so later stages never meet a malformed tensor.
        for w in model.weights() {
            model.check(&w.id)?;
        }
        Ok(model)
    }

    /// Wraps a proto without validating it (the container fills stripped weights first, then
    /// validates through [`Model::from_proto_in`]). External data cannot be resolved.
    pub(crate) fn unchecked(proto: ModelProto) -> Model {
        Model {
            proto,
            path: None,
            external: ExternalStore::new(Path::new("")),
        }
    }

    pub fn graph(&self) -> &GraphProto {
        // from_proto_in refuses models without a graph
        self.proto
            .graph
            .as_ref()
            .unwrap_or_else(|| GraphProto::default_instance())
    }

    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.mut_or_insert_default()
    }

    /// The model's opset for the default ONNX domain.
    pub fn opset(&self) -> Option<i64> {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
    }

    /// Graph inputs that are real inputs (IR < 4 models also list initializers as inputs).
    pub fn inputs(&self) -> Vec<ValueInfo> {
        let g = self.graph();
        let inits: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        g.input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(ValueInfo::from_proto)
            .collect()
    }

    pub fn outputs(&self) -> Vec<ValueInfo> {
        self.graph()
            .output
            .iter()
            .map(ValueInfo::from_proto)
            .collect()
    }

    /// Decodes a tensor proto of this model into a dense tensor (external data included).
    pub fn decode_tensor(&self, tp: &TensorProto) -> Result<Tensor, OnnxError> {
        decode_tensor_with(tp, Some(&self.external))
    }

    /// Serializes the model to `path` atomically, with external data as `opts` says.
    pub fn save(&self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<(), OnnxError> {
        external::save(self, path.as_ref(), opts)
    }

    /// The model as protobuf bytes with every tensor inline (for ONNX Runtime sessions in memory).
    pub fn to_bytes(&self) -> Result<Vec<u8>, OnnxError> {
        let proto = external::inline_all(self)?;
        proto
            .write_to_bytes()
            .map_err(|e| OnnxError::Serialize(e.to_string()))
    }

    pub(crate) fn external_store(&self) -> &ExternalStore {
        &self.external
    }
}

/// Shape of a tensor proto, refusing negative dimensions.
pub fn proto_dims(tp: &TensorProto) -> Result<Vec<usize>, OnnxError> {
    tp.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| OnnxError::NegativeDim {
                name: tp.name.clone(),
                dim: d,
            })
        })
        .collect()
}

/// Decodes a tensor proto; `store` resolves external data (None: external data is an error).
pub fn decode_tensor_with(
    tp: &TensorProto,
    store: Option<&ExternalStore>,
) -> Result<Tensor, OnnxError> {
    let dims = proto_dims(tp)?;
    let dtype = DType::from_onnx(tp.data_type);
    let name = tp.name.clone();
    let terr = |source| OnnxError::Tensor {
        name: tp.name.clone(),
        source,
    };
    let n = crate::tensor::numel(&dims).map_err(terr)?;
    if tp.data_location.value() == 1 {
        let store = store.ok_or_else(|| OnnxError::External {
            name: name.clone(),
            reason: "cannot be resolved for a model held in memory".into(),
        })?;
        let bytes = store.read(tp)?;
        return Tensor::from_bytes(dtype, dims, bytes).map_err(terr);
    }
    if dtype.size().is_none() {
        return Err(OnnxError::UnsupportedType { name, dtype });
    }
    if !tp.raw_data.is_empty() || n == 0 {
        return Tensor::from_bytes(dtype, dims, tp.raw_data.clone()).map_err(terr);
    }
    // Typed fields: check the count before converting, so a short field never becomes a large
    // allocation.
    let count = |c: usize| {
        if c == n {
            Ok(())
        } else {
            Err(OnnxError::ValueCount {
                name: name.clone(),
                count: c,
                expected: n,
            })
        }
    };
    // Which typed field holds which element type is protobuf's; the bytes are tensor's.
    use crate::tensor::le_bytes;
    let bytes: Vec<u8> = match dtype {
        DType::F32 => {
            count(tp.float_data.len())?;
            le_bytes(&tp.float_data)
        }
        DType::Other(14) => {
            // complex64: two floats an element
            count(tp.float_data.len() / 2)?;
            le_bytes(&tp.float_data)
        }
        DType::F64 => {
            count(tp.double_data.len())?;
            le_bytes(&tp.double_data)
        }
        DType::Other(15) => {
            count(tp.double_data.len() / 2)?;
            le_bytes(&tp.double_data)
        }
        DType::I64 => {
            count(tp.int64_data.len())?;
            le_bytes(&tp.int64_data)
        }
        DType::U32 => {
            count(tp.uint64_data.len())?;
            le_bytes(&tp.uint64_data.iter().map(|&v| v as u32).collect::<Vec<_>>())
        }
        DType::U64 => {
            count(tp.uint64_data.len())?;
            le_bytes(&tp.uint64_data)
        }
        DType::I32 => {
            count(tp.int32_data.len())?;
            le_bytes(&tp.int32_data)
        }
        // 16- and 8-bit types travel in int32_data, one element per value (the low bits).
        DType::I16 | DType::U16 | DType::F16 | DType::Bf16 => {
            count(tp.int32_data.len())?;
            le_bytes(&tp.int32_data.iter().map(|&v| v as u16).collect::<Vec<_>>())
        }
        DType::I8 | DType::U8 | DType::Bool | DType::Other(17..=20) => {
            count(tp.int32_data.len())?;
            tp.int32_data.iter().map(|&v| v as u8).collect()
        }
        _ => return Err(OnnxError::UnsupportedType { name, dtype }),
    };
    Tensor::from_bytes(dtype, dims, bytes).map_err(terr)
}

/// Checks `tp` as [`decode_tensor_with`] does, without copying inline raw data.
pub(crate) fn check_tensor_with(
    tp: &TensorProto,
    store: Option<&ExternalStore>,
) -> Result<(), OnnxError> {
    if tp.data_location.value() == 1 || tp.raw_data.is_empty() {
        return decode_tensor_with(tp, store).map(drop);
    }
    let dims = proto_dims(tp)?;
    let dtype = DType::from_onnx(tp.data_type);
    if dtype.size().is_none() {
        return Err(OnnxError::UnsupportedType {
            name: tp.name.clone(),
            dtype,
        });
    }
    crate::tensor::check_len(dtype, &dims, tp.raw_data.len()).map_err(|source| OnnxError::Tensor {
        name: tp.name.clone(),
        source,
    })
}

/// Whether `file` holds NNC units (a bitstream given where a model was expected).
fn is_bitstream(file: &File) -> bool {
    // SAFETY: read-only and dropped before returning; nnzip never writes to its input files
    // (outputs go to a temp file, then rename).
    let Ok(map) = (unsafe { memmap2::Mmap::map(file) }) else {
        return false;
    };
    nnc_codec::units(&map).is_ok_and(|u| !u.is_empty())
}

/// Replaces a tensor proto's data with `t` as `raw_data`, keeping its name, doc string, metadata
/// and unknown fields.
pub fn store_tensor(tp: &mut TensorProto, t: &Tensor) {
    tp.dims = t.dims.iter().map(|&d| d as i64).collect();
    tp.data_type = t.dtype.onnx_code();
    tp.float_data.clear();
    tp.int32_data.clear();
    tp.int64_data.clear();
    tp.double_data.clear();
    tp.uint64_data.clear();
    tp.string_data.clear();
    tp.external_data.clear();
    tp.data_location = protobuf::EnumOrUnknown::from_i32(0);
    tp.raw_data = t.bytes().to_vec();
}

/// Builds a tensor proto from a dense tensor (raw_data form).
pub fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut tp = TensorProto::new();
    tp.name = name.to_string();
    store_tensor(&mut tp, t);
    tp
}

/// Groups tensors by data file for reporting (`location` → bytes).
pub fn external_files(model: &Model) -> HashMap<String, u64> {
    model.external.file_sizes()
}
