//! `nnzip inspect`: what a model is made of, and what it costs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::graph::infer::{declared, infer, InputDims};
use crate::graph::ops::InferCx;
use crate::graph::sym::Expr;
use crate::onnx::weights::visit_graphs;
use crate::onnx::{Dim, Model, OnnxError};
use crate::runtime::inputs::InputError;
use crate::tensor::DType;

/// Why a model could not be described.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// A given input size names no input of the model, or contradicts its fixed dims.
    #[error(transparent)]
    Input(#[from] InputError),
}

impl InspectError {
    pub fn class(&self) -> crate::errors::ErrorClass {
        match self {
            InspectError::Onnx(e) => e.class(),
            InspectError::Input(e) => e.class(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct IoDesc {
    pub name: String,
    pub dtype: String,
    /// Dimensions as numbers or symbolic names (`"?"` when unknown); `null` when the rank is unknown.
    pub shape: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize)]
pub struct TensorDesc {
    pub name: String,
    /// `""` for the main graph, else the subgraph path.
    pub scope: String,
    /// initializer, external, Constant.value, Constant.value_floats, ...
    pub storage: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub elements: u64,
    pub bytes: u64,
    pub zero_fraction: f64,
    /// Counted in `parameters` (every numeric weight except int64 shape/index data).
    pub is_parameter: bool,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub file_bytes: u64,
    pub external_data_bytes: u64,
    pub ir_version: i64,
    pub producer: String,
    pub opsets: BTreeMap<String, i64>,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    /// Node count per op type, subgraphs included.
    pub ops: BTreeMap<String, usize>,
    pub nodes: usize,
    pub subgraphs: usize,
    pub tensors: Vec<TensorDesc>,
    /// Elements of all parameter tensors, wherever stored.
    pub parameters: u64,
    /// Bytes of all parameter tensors.
    pub weight_bytes: u64,
    /// Fraction of parameter elements that are zero.
    pub zero_fraction: f64,
    /// Multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul and recurrent layers in the
    /// main graph, for the input shapes in `mac_input_shapes`; `null` when they depend on a
    /// symbolic size (then `macs_formula` has them) or no such node has known shapes.
    pub macs: Option<u64>,
    /// The same as an expression in the inputs' symbolic sizes (`154425600*batch`).
    pub macs_formula: Option<String>,
    pub macs_by_op: BTreeMap<String, u64>,
    /// Main-graph compute nodes whose shapes could not be inferred (not counted in `macs`).
    pub macs_unknown: Vec<String>,
    /// Per input, the sizes MACs are counted at: numbers, or symbolic names.
    pub mac_input_shapes: BTreeMap<String, Vec<serde_json::Value>>,
}

fn io_desc(v: &crate::onnx::ValueInfo) -> IoDesc {
    IoDesc {
        name: v.name.clone(),
        dtype: v.dtype.name(),
        shape: v.dims.as_ref().map(|d| {
            d.iter()
                .map(|x| match x {
                    Dim::Fixed(n) => serde_json::Value::from(*n),
                    Dim::Symbolic(s) => serde_json::Value::from(s.clone()),
                    Dim::Unknown => serde_json::Value::from("?"),
                })
                .collect()
        }),
    }
}

/// MACs of a model's main graph at some input sizes.
#[derive(Debug, Clone, Default)]
pub struct MacCount {
    /// Sum over the counted nodes; `None` when no compute node has known shapes.
    pub total: Option<Expr>,
    pub by_op: BTreeMap<String, Expr>,
    /// Compute nodes whose shapes could not be inferred (not in `total`).
    pub unknown: Vec<String>,
}

impl MacCount {
    /// The total as a number, when it does not depend on a symbolic size.
    pub fn value(&self) -> Option<u64> {
        self.total
            .as_ref()?
            .as_int()
            .and_then(|v| u64::try_from(v).ok())
    }
}

/// Counts multiply-accumulates with `dims` in place of declared input dims.
pub fn count_macs(model: &Model, dims: &InputDims) -> MacCount {
    let info = infer(model, dims);
    let mut out = MacCount::default();
    for (i, n) in model.graph().node.iter().enumerate() {
        let Some(Ok(op)) = info.ops.get(i) else {
            continue;
        };
        if !op.is_compute() {
            continue;
        }
        match op.macs(&info.inputs_of(n), &info.outputs_of(n)) {
            Some(m) => {
                let e = out
                    .by_op
                    .entry(n.op_type.clone())
                    .or_insert_with(|| Expr::int(0));
                *e = e.checked_add(&m).unwrap_or_else(|| e.clone());
                out.total = Some(match &out.total {
                    Some(t) => t.checked_add(&m).unwrap_or_else(|| t.clone()),
                    None => m,
                });
            }
            None => out.unknown.push(if n.name.is_empty() {
                format!("{}#{i}", n.op_type)
            } else {
                n.name.clone()
            }),
        }
    }
    out
}

/// Input sizes for MAC counts "per inference": `--shape` values, then declared dims with a
/// symbolic first (batch) dimension taken as 1; other symbolic sizes stay symbolic.
pub fn mac_dims(model: &Model, given: &[(String, Vec<usize>)]) -> Result<InputDims, InputError> {
    crate::runtime::inputs::check_given(&model.inputs(), given)?;
    let mut cx = InferCx::default();
    let mut out = InputDims::new();
    for vi in model.inputs() {
        if let Some((_, g)) = given.iter().find(|(n, _)| n == &vi.name) {
            out.insert(
                vi.name.clone(),
                crate::graph::sym::known(g).unwrap_or_default(),
            );
            continue;
        }
        let Some(mut d) = declared(&vi, &mut cx, true) else {
            continue;
        };
        if let Some(first) = d.first_mut().filter(|x| !x.is_known()) {
            *first = Expr::int(1);
        }
        out.insert(vi.name.clone(), d);
    }
    Ok(out)
}

fn dims_json(d: &[Expr]) -> Vec<serde_json::Value> {
    d.iter()
        .map(|x| match x.as_int() {
            Some(v) => serde_json::Value::from(v),
            None => serde_json::Value::from(x.to_string()),
        })
        .collect()
}

/// Every weight described, and the parameters' element count, bytes and zeros.
fn tensor_descs(model: &Model) -> Result<(Vec<TensorDesc>, u64, u64, u64), OnnxError> {
    let mut tensors = Vec::new();
    let (mut parameters, mut weight_bytes, mut zeros) = (0u64, 0u64, 0u64);
    for w in model.weights() {
        let t = model.read(&w.id)?;
        let elements = t.numel() as u64;
        let z = t.count_zeros() as u64;
        let is_parameter = t.dtype != DType::I64;
        if is_parameter {
            parameters += elements;
            weight_bytes += t.bytes().len() as u64;
            zeros += z;
        }
        tensors.push(TensorDesc {
            name: w.name.clone(),
            scope: w.scope.clone(),
            storage: w.storage.to_string(),
            dtype: t.dtype.name(),
            shape: t.dims.clone(),
            elements,
            bytes: t.bytes().len() as u64,
            zero_fraction: if elements == 0 {
                0.0
            } else {
                z as f64 / elements as f64
            },
            is_parameter,
        });
    }
    Ok((tensors, parameters, weight_bytes, zeros))
}

/// Domain (`ai.onnx` for the default) to opset version.
fn opsets(model: &Model) -> BTreeMap<String, i64> {
    model
        .proto
        .opset_import
        .iter()
        .map(|o| {
            (
                if o.domain.is_empty() {
                    "ai.onnx".to_string()
                } else {
                    o.domain.clone()
                },
                o.version,
            )
        })
        .collect()
}

/// Builds the report. `given` resolves symbolic input dims (others default to batch 1); inputs
/// whose shapes stay unresolved leave their MACs unknown. A `given` size for an input the model
/// does not have, or against its fixed dims, is refused.
pub fn inspect(
    model: &Model,
    path: &Path,
    given: &[(String, Vec<usize>)],
) -> Result<InspectReport, InspectError> {
    let dims = mac_dims(model, given)?;
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let external_data_bytes = crate::onnx::external_files(model).values().sum();
    let mut ops = BTreeMap::new();
    let mut nodes = 0;
    let mut subgraphs = 0;
    visit_graphs(model.graph(), &mut |p, _, g| {
        if !p.is_empty() {
            subgraphs += 1;
        }
        for n in &g.node {
            *ops.entry(n.op_type.clone()).or_insert(0) += 1;
            nodes += 1;
        }
    });
    let (tensors, parameters, weight_bytes, zeros) = tensor_descs(model)?;
    let count = count_macs(model, &dims);
    let macs_by_op = count
        .by_op
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), u64::try_from(v.as_int()?).ok()?)))
        .collect();
    let mac_input_shapes = dims
        .iter()
        .map(|(k, v)| (k.clone(), dims_json(v)))
        .collect();
    Ok(InspectReport {
        path: path.display().to_string(),
        file_bytes,
        external_data_bytes,
        ir_version: model.proto.ir_version,
        producer: format!(
            "{} {}",
            model.proto.producer_name, model.proto.producer_version
        )
        .trim()
        .to_string(),
        opsets: opsets(model),
        inputs: model.inputs().iter().map(io_desc).collect(),
        outputs: model.outputs().iter().map(io_desc).collect(),
        ops,
        nodes,
        subgraphs,
        tensors,
        parameters,
        weight_bytes,
        zero_fraction: if parameters == 0 {
            0.0
        } else {
            zeros as f64 / parameters as f64
        },
        macs: count.value(),
        macs_formula: count.total.as_ref().map(Expr::to_string),
        macs_by_op,
        macs_unknown: count.unknown,
        mac_input_shapes,
    })
}

/// Human units: 1234567 -> "1.23 M".
pub fn si(v: f64) -> String {
    let (d, u) = if v >= 1e9 {
        (1e9, " G")
    } else if v >= 1e6 {
        (1e6, " M")
    } else if v >= 1e3 {
        (1e3, " k")
    } else {
        (1.0, " ")
    };
    format!("{:.3}{u}", v / d).replace(".000 ", " ")
}

pub fn bytes_h(b: u64) -> String {
    let b = b as f64;
    if b >= 1048576.0 {
        format!("{:.2} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

impl InspectReport {
    /// The human-readable table: the model's summary, its MACs, then the largest weights.
    pub fn to_text(&self, max_rows: usize) -> String {
        let mut o = String::new();
        self.summary_text(&mut o);
        self.macs_text(&mut o);
        o.push('\n');
        self.weights_text(&mut o, max_rows);
        o
    }

    /// File, format, interface, node and parameter counts.
    fn summary_text(&self, o: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            o,
            "model      {}  ({}{})",
            self.path,
            bytes_h(self.file_bytes),
            if self.external_data_bytes > 0 {
                format!(" + {} external data", bytes_h(self.external_data_bytes))
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "format     IR {}, opsets {}{}",
            self.ir_version,
            self.opsets
                .iter()
                .map(|(d, v)| format!("{d} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            if self.producer.is_empty() {
                String::new()
            } else {
                format!(", by {}", self.producer)
            }
        );
        for i in &self.inputs {
            let _ = writeln!(
                o,
                "input      {}: {} {}",
                i.name,
                i.dtype,
                shape_text(&i.shape)
            );
        }
        for i in &self.outputs {
            let _ = writeln!(
                o,
                "output     {}: {} {}",
                i.name,
                i.dtype,
                shape_text(&i.shape)
            );
        }
        let _ = writeln!(
            o,
            "nodes      {}{}: {}",
            self.nodes,
            if self.subgraphs > 0 {
                format!(" (in {} subgraphs too)", self.subgraphs)
            } else {
                String::new()
            },
            {
                let mut v: Vec<_> = self.ops.iter().collect();
                v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                v.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(
            o,
            "parameters {} ({} elements, {}), {:.1}% zeros",
            si(self.parameters as f64).trim(),
            self.parameters,
            bytes_h(self.weight_bytes),
            self.zero_fraction * 100.0
        );
    }

    /// The MAC count (a number, a formula at symbolic sizes, or unknown) and what it misses.
    fn macs_text(&self, o: &mut String) {
        use std::fmt::Write;
        let at = self
            .mac_input_shapes
            .iter()
            .map(|(k, v)| {
                let d: Vec<String> = v
                    .iter()
                    .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string))
                    .collect();
                format!("{k}={}", d.join("x"))
            })
            .collect::<Vec<_>>()
            .join(" ");
        match (self.macs, &self.macs_formula) {
            (Some(m), _) => {
                let by_op = self
                    .macs_by_op
                    .iter()
                    .map(|(k, v)| format!("{k} {}", si(*v as f64).trim()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    o,
                    "MACs       {} per inference at {at} ({by_op})",
                    si(m as f64).trim()
                );
            }
            (None, Some(f)) => {
                let _ = writeln!(o, "MACs       {f} per inference at {at} (symbolic sizes; --shape NAME=DIMS gives a number)");
            }
            (None, None) => {
                let _ = writeln!(
                    o,
                    "MACs       unknown (shapes could not be inferred; try --shape NAME=DIMS)"
                );
            }
        }
        if !self.macs_unknown.is_empty() {
            let _ = writeln!(
                o,
                "           not counted (shapes unknown): {}",
                self.macs_unknown.join(", ")
            );
        }
    }

    /// The `max_rows` largest weights, names cut from the left to fit.
    fn weights_text(&self, o: &mut String, max_rows: usize) {
        use std::fmt::Write;
        let name_w = self
            .tensors
            .iter()
            .map(|t| t.name.len() + t.scope.len() + 1)
            .max()
            .unwrap_or(4)
            .clamp(4, 48);
        let _ = writeln!(
            o,
            "{:<name_w$}  {:<21}  {:<8}  {:<18}  {:>10}  {:>7}",
            "weight", "stored as", "dtype", "shape", "bytes", "zeros"
        );
        let mut rows: Vec<&TensorDesc> = self.tensors.iter().collect();
        rows.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        for t in rows.iter().take(max_rows) {
            let name = if t.scope.is_empty() {
                t.name.clone()
            } else {
                format!("{}/{}", t.scope, t.name)
            };
            let chars: Vec<char> = name.chars().collect();
            let name = if chars.len() > name_w {
                format!(
                    "…{}",
                    chars[chars.len() - (name_w - 1)..]
                        .iter()
                        .collect::<String>()
                )
            } else {
                name
            };
            let _ = writeln!(
                o,
                "{:<name_w$}  {:<21}  {:<8}  {:<18}  {:>10}  {:>6.1}%",
                name,
                t.storage,
                t.dtype,
                format!("{:?}", t.shape),
                t.bytes,
                t.zero_fraction * 100.0
            );
        }
        if rows.len() > max_rows {
            let _ = writeln!(o, "… {} more (use --all or --json)", rows.len() - max_rows);
        }
    }
}

/// A declared shape: `[batch, 3, 224, 224]`, or its absence.
fn shape_text(s: &Option<Vec<serde_json::Value>>) -> String {
    match s {
        Some(v) => format!(
            "[{}]",
            v.iter()
                .map(|x| x
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "(unknown rank)".into(),
    }
}
