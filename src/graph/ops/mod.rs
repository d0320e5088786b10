//! What nnzip knows about ONNX operators, in one place. Each node is parsed once into an [`Op`]:
//! its family, with attributes read for the model's opset, validated (kernel sizes and strides
//! positive, pads non-negative, ...) and kept raw where they need a rank to normalize (axes).
//! An [`Op`] is then asked for its output shapes ([`Op::infer`]), its cost ([`Op::macs`]) and,
//! for rectifiers, its activation range ([`Op::rectifier`]); channel analysis matches on the
//! parsed families. Nodes of other domains, and ONNX ops nnzip does not model, are
//! [`Op::Other`]: their outputs are unknown, never guessed.

mod layout;
mod math;
mod window;

use onnx_protobuf::{AttributeProto, NodeProto};
use thiserror::Error;

pub use layout::{Resize, SliceSpec};
pub use math::{Binary, Reduce, Unary};
pub use window::{AutoPad, AxisWindow, ConvTranspose, Pool, PoolKind, Window};

use super::sym::Expr;

/// Integer tensors up to this many elements have their values tracked (shape arithmetic).
pub const MAX_VALUE: usize = 64;

/// Why a node could not be parsed: its attributes are outside what ONNX allows.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{op}: {reason}")]
pub struct OpError {
    pub op: String,
    pub reason: String,
}

fn invalid(op: &str, reason: impl Into<String>) -> OpError {
    OpError {
        op: op.to_string(),
        reason: reason.into(),
    }
}

/// Where an op finds a list of axes (or sizes): an attribute in older opsets, an input later.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    None,
    Attr(Vec<i64>),
    Input(usize),
}

impl Source {
    /// The values as sizes (symbolic where the input's values are).
    pub fn resolve_exprs(&self, ins: &[Facts]) -> Option<Option<Vec<Expr>>> {
        match self {
            Source::Input(i) => match ins.get(*i) {
                Some(f) if f.present => Some(Some(f.value.clone()?)),
                _ => Some(None),
            },
            other => Some(
                other
                    .resolve(ins)?
                    .map(|v| v.into_iter().map(Expr::int).collect()),
            ),
        }
    }

    /// The values, from the attribute or the tracked value of the input.
    pub fn resolve(&self, ins: &[Facts]) -> Option<Option<Vec<i64>>> {
        match self {
            Source::None => Some(None),
            Source::Attr(v) => Some(Some(v.clone())),
            Source::Input(i) => match ins.get(*i) {
                Some(f) if f.present => Some(Some(f.int_values()?)),
                _ => Some(None),
            },
        }
    }
}

/// An ONNX node's family and validated attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `Constant`: the driver reads its value from the model.
    Constant,
    Unary(Unary),
    Binary(Binary),
    Conv(Window),
    ConvTranspose(ConvTranspose),
    Pool(Pool),
    GlobalPool(PoolKind),
    Gemm {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    },
    MatMul,
    BatchNorm {
        epsilon: f32,
        training: bool,
    },
    InstanceNorm {
        epsilon: f32,
    },
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    Softmax {
        axis: i64,
        /// Before opset 13 the input is coerced to 2-D at `axis` and normalized over all of it.
        coerced: bool,
    },
    Reshape {
        allowzero: bool,
    },
    Flatten {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Squeeze(Source),
    Unsqueeze(Source),
    Concat {
        axis: i64,
    },
    Split {
        axis: i64,
        sizes: Source,
    },
    Slice(SliceSpec),
    Gather {
        axis: i64,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Size,
    /// The fill value when it is an integer (shape arithmetic), else `None`.
    ConstantOfShape(Option<i64>),
    Expand,
    Tile,
    Range,
    Pad {
        pads: Source,
        /// Zero (`constant` with no value input) is the only mode whose borders are plain zeros.
        mode: String,
    },
    Resize(Resize),
    Reduce(Reduce),
    ArgReduce {
        axis: i64,
        keepdims: bool,
    },
    Clip {
        /// Bounds as attributes (before opset 11); later they are inputs 1 and 2.
        min: Option<f32>,
        max: Option<f32>,
    },
    Recurrent {
        hidden: Option<i64>,
        layout: i64,
        gates: i64,
    },
    /// `If`, `Loop`, `Scan`: control flow over subgraphs.
    Control(String),
    /// Another domain's op, or one nnzip does not model.
    Other {
        op_type: String,
        domain: String,
    },
}

/// What shape inference knows about one tensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The input slot is used (an empty name means an optional input left out).
    pub present: bool,
    pub shape: Option<Vec<Expr>>,
    /// Elements of a small integer tensor (row-major), symbolic where they are sizes.
    pub value: Option<Vec<Expr>>,
    /// Elements of a small float tensor (scales of `Resize`, bounds of `Clip`).
    pub floats: Option<Vec<f64>>,
}

impl Facts {
    pub fn shaped(shape: Vec<Expr>) -> Facts {
        Facts {
            present: true,
            shape: Some(shape),
            ..Default::default()
        }
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// Tracked integer values, when all are known.
    pub fn int_values(&self) -> Option<Vec<i64>> {
        self.value.as_ref()?.iter().map(Expr::as_int).collect()
    }

    fn with_value(mut self, v: Option<Vec<Expr>>) -> Facts {
        self.value = v.filter(|v| v.len() <= MAX_VALUE);
        self
    }
}

/// State shared by one inference run: fresh names for sizes nothing determines, and sizes the
/// model requires to be equal (broadcasts of two different symbolic sizes).
#[derive(Debug, Default)]
pub struct InferCx {
    next: u32,
    pub equalities: Vec<(Expr, Expr)>,
    /// Known sizes that came out impossible (a window larger than its padded input): the model
    /// does not run at these input sizes.
    pub impossible: usize,
}

impl InferCx {
    /// An opaque size, equal only to itself.
    pub fn fresh(&mut self) -> Expr {
        self.next = self.next.saturating_add(1);
        Expr::sym(&format!("?{}", self.next))
    }
}

/// An axis in `-rank..rank` as an index.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis.checked_add(r)? } else { axis };
    (0..r).contains(&a).then(|| usize::try_from(a).ok())?
}

/// Every axis normalized, `None` if one is out of range or repeated.
pub fn norm_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    let mut out: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Option<_>>()?;
    out.sort_unstable();
    let n = out.len();
    out.dedup();
    (out.len() == n).then_some(out)
}

/// Attribute reading with ONNX's defaults.
struct Attrs<'a>(&'a NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }
    /// Where the op's `axes` are: input `input` from opset `since`, the attribute before.
    fn axes(&self, opset: i64, since: i64, input: usize) -> Source {
        if opset >= since {
            Source::Input(input)
        } else {
            self.ints("axes").map(Source::Attr).unwrap_or(Source::None)
        }
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn flag(&self, name: &str) -> bool {
        self.int(name, 0) != 0
    }
}

/// The integer fill value of `ConstantOfShape` (its `value` tensor; 0.0 by default, a float).
fn constant_fill(n: &NodeProto) -> Option<i64> {
    let t = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
    let t = crate::onnx::decode_tensor_with(t, None).ok()?;
    if t.dtype.is_float() || t.numel() != 1 {
        return None;
    }
    t.to_i64_lossy()?.first().copied()
}

/// Whether a node belongs to the default ONNX domain.
pub fn is_onnx_domain(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

impl Op {
    /// Parses a node of a model whose default-domain opset is `opset`.
    pub fn parse(n: &NodeProto, opset: i64) -> Result<Op, OpError> {
        let op = n.op_type.as_str();
        if !is_onnx_domain(n) {
            return Ok(Op::Other {
                op_type: n.op_type.clone(),
                domain: n.domain.clone(),
            });
        }
        let a = Attrs(n);
        let axes_from = |since: i64, input: usize| a.axes(opset, since, input);
        Ok(match op {
            "Constant" => Op::Constant,
            "Conv" => Op::Conv(Window::parse(n, op)?),
            "ConvTranspose" => Op::ConvTranspose(ConvTranspose::parse(n)?),
            "MaxPool" | "AveragePool" | "LpPool" => Op::Pool(Pool::parse(n, op)?),
            "GlobalAveragePool" => Op::GlobalPool(PoolKind::Average),
            "GlobalMaxPool" => Op::GlobalPool(PoolKind::Max),
            "GlobalLpPool" => Op::GlobalPool(PoolKind::Lp),
            "Gemm" => Op::Gemm {
                trans_a: a.flag("transA"),
                trans_b: a.flag("transB"),
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
            },
            "MatMul" => Op::MatMul,
            "BatchNormalization" => Op::BatchNorm {
                epsilon: a.float("epsilon", 1e-5),
                training: a.flag("training_mode") || n.output.iter().skip(1).any(|o| !o.is_empty()),
            },
            "InstanceNormalization" => Op::InstanceNorm {
                epsilon: a.float("epsilon", 1e-5),
            },
            "LayerNormalization" => Op::LayerNorm {
                axis: a.int("axis", -1),
                epsilon: a.float("epsilon", 1e-5),
            },
            "Softmax" | "LogSoftmax" | "Hardmax" => Op::Softmax {
                axis: a.int("axis", if opset >= 13 { -1 } else { 1 }),
                coerced: opset < 13,
            },
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
            | "ReduceL2" | "ReduceSumSquare" | "ReduceLogSum" | "ReduceLogSumExp" => {
                let since = if op == "ReduceSum" { 13 } else { 18 };
                Op::Reduce(Reduce {
                    axes: axes_from(since, 1),
                    keepdims: a.int("keepdims", 1) != 0,
                    noop_with_empty_axes: a.flag("noop_with_empty_axes"),
                })
            }
            "ArgMax" | "ArgMin" => Op::ArgReduce {
                axis: a.int("axis", 0),
                keepdims: a.int("keepdims", 1) != 0,
            },
            "Clip" => {
                let (min, max) = if opset < 11 {
                    (
                        Some(a.float("min", f32::MIN)),
                        Some(a.float("max", f32::MAX)),
                    )
                } else {
                    (None, None)
                };
                Op::Clip { min, max }
            }
            "LSTM" | "GRU" | "RNN" => Op::Recurrent {
                hidden: a.get("hidden_size").map(|x| x.i),
                layout: a.int("layout", 0),
                gates: match op {
                    "LSTM" => 4,
                    "GRU" => 3,
                    _ => 1,
                },
            },
            "If" | "Loop" | "Scan" => Op::Control(op.to_string()),
            _ => match (
                Op::parse_layout(n, opset)?,
                Unary::parse(op, &a),
                Binary::parse(op),
            ) {
                (Some(l), _, _) => l,
                (_, Some(u), _) => Op::Unary(u),
                (_, _, Some(b)) => Op::Binary(b),
                _ => Op::Other {
                    op_type: n.op_type.clone(),
                    domain: String::new(),
                },
            },
        })
    }

    /// The reshaping, slicing, concatenating, shape-arithmetic and resizing ops (`layout.rs`);
    /// `None` for any other op.
    fn parse_layout(n: &NodeProto, opset: i64) -> Result<Option<Op>, OpError> {
        let op = n.op_type.as_str();
        let a = Attrs(n);
        let axes_from = |since: i64, input: usize| a.axes(opset, since, input);
        Ok(Some(match op {
            "Reshape" => Op::Reshape {
                allowzero: a.flag("allowzero"),
            },
            "Flatten" => Op::Flatten {
                axis: a.int("axis", 1),
            },
            "Transpose" => Op::Transpose {
                perm: a.ints("perm"),
            },
            "Squeeze" => Op::Squeeze(axes_from(13, 1)),
            "Unsqueeze" => Op::Unsqueeze(axes_from(13, 1)),
            "Concat" => Op::Concat {
                axis: a
                    .get("axis")
                    .map(|x| x.i)
                    .ok_or_else(|| invalid(op, "no axis"))?,
            },
            "Split" => Op::Split {
                axis: a.int("axis", 0),
                sizes: if opset >= 13 {
                    Source::Input(1)
                } else {
                    a.ints("split").map(Source::Attr).unwrap_or(Source::None)
                },
            },
            "Slice" => Op::Slice(SliceSpec::parse(n, opset)),
            "Gather" => Op::Gather {
                axis: a.int("axis", 0),
            },
            "Shape" => Op::Shape {
                start: a.int("start", 0),
                end: a.get("end").map(|x| x.i),
            },
            "Size" => Op::Size,
            "ConstantOfShape" => Op::ConstantOfShape(constant_fill(n)),
            "Expand" => Op::Expand,
            "Tile" => Op::Tile,
            "Range" => Op::Range,
            "Pad" => Op::Pad {
                pads: if opset >= 11 {
                    Source::Input(1)
                } else {
                    a.ints("pads").map(Source::Attr).unwrap_or(Source::None)
                },
                mode: a.string("mode").unwrap_or_else(|| "constant".into()),
            },
            "Resize" | "Upsample" => Op::Resize(Resize::parse(n, opset)),
            _ => return Ok(None),
        }))
    }

    /// Output facts from input facts (one entry per node input, `present: false` for an
    /// omitted optional input). Unknown outputs are `Facts::default()`.
    pub fn infer(&self, n: &NodeProto, ins: &[Facts], cx: &mut InferCx) -> Vec<Facts> {
        let outs = n.output.len();
        let mut r = match self {
            Op::Conv(w) => vec![w.infer_conv(ins, cx)],
            Op::ConvTranspose(t) => vec![t.infer(ins, cx)],
            Op::Pool(p) => {
                let f = p.infer(ins, cx);
                vec![f.clone(), f]
            }
            Op::GlobalPool(_) => vec![window::infer_global(ins)],
            Op::Gemm {
                trans_a, trans_b, ..
            } => vec![math::infer_gemm(ins, *trans_a, *trans_b)],
            Op::MatMul => vec![math::infer_matmul(ins, cx)],
            Op::Unary(u) => vec![math::infer_unary(u, ins)],
            Op::Binary(b) => vec![math::infer_binary(b, ins, cx)],
            Op::Clip { .. }
            | Op::BatchNorm { .. }
            | Op::InstanceNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Softmax { .. } => {
                vec![Facts::shaped(
                    ins.first()
                        .and_then(|f| f.shape.clone())
                        .unwrap_or_default(),
                )
                .keep_if(ins.first().is_some_and(|f| f.shape.is_some()))]
            }
            Op::Reduce(r) => vec![math::infer_reduce(r, ins)],
            Op::ArgReduce { axis, keepdims } => vec![math::infer_arg(*axis, *keepdims, ins)],
            Op::Recurrent {
                hidden,
                layout,
                gates: _,
            } => math::infer_recurrent(*hidden, *layout, ins),
            Op::Constant | Op::Control(_) | Op::Other { .. } => vec![],
            _ => layout::infer(self, ins, cx, outs),
        };
        r.resize(outs, Facts::default());
        for f in &mut r {
            f.present = true;
        }
        r
    }

    /// Multiply-accumulates of the node, from its input and output shapes; `None` for ops that
    /// are not counted (element-wise work is small next to these) or whose shapes are unknown.
    pub fn macs(&self, ins: &[Facts], outs: &[Facts]) -> Option<Expr> {
        let shape = |f: Option<&Facts>| f.and_then(|f| f.shape.clone());
        let prod = |v: &[Expr]| super::sym::product(v);
        match self {
            Op::Conv(_) => {
                // out elements × (Cin/group × kernel) — W is [M, C/group, k...]
                let (w, o) = (shape(ins.get(1))?, shape(outs.first())?);
                prod(&o)?.checked_mul(&prod(w.get(1..)?)?)
            }
            Op::ConvTranspose(_) => {
                // every input element meets (M/group × kernel) weights — W is [C, M/group, k...]
                let (x, w) = (shape(ins.first())?, shape(ins.get(1))?);
                prod(&x)?.checked_mul(&prod(w.get(1..)?)?)
            }
            Op::Gemm { trans_a, .. } => {
                let (a, o) = (shape(ins.first())?, shape(outs.first())?);
                let k = a.get(if *trans_a { 0 } else { 1 })?;
                prod(&o)?.checked_mul(k)
            }
            Op::MatMul => {
                let (a, o) = (shape(ins.first())?, shape(outs.first())?);
                prod(&o)?.checked_mul(a.last()?)
            }
            Op::Recurrent { .. } => math::recurrent_macs(ins, outs),
            _ => None,
        }
    }

    /// Counted by [`Op::macs`].
    pub fn is_compute(&self) -> bool {
        matches!(
            self,
            Op::Conv(_)
                | Op::ConvTranspose(_)
                | Op::Gemm { .. }
                | Op::MatMul
                | Op::Recurrent { .. }
        )
    }

    /// For a rectifier, the range its output is clamped to: `Relu` [0, ∞), `Clip` [lo, hi]
    /// (bounds from attributes, or the given constant inputs). `None` otherwise.
    pub fn rectifier(&self, bounds: (Option<f32>, Option<f32>)) -> Option<(f32, f32)> {
        match self {
            Op::Unary(Unary::Relu) => Some((0.0, f32::INFINITY)),
            Op::Clip { min, max } => {
                let lo = min.or(bounds.0).unwrap_or(f32::NEG_INFINITY);
                let hi = max.or(bounds.1).unwrap_or(f32::INFINITY);
                (lo.is_finite() && lo < hi).then_some((lo, hi))
            }
            _ => None,
        }
    }

    /// Computed element by element with the input's shape, each channel on its own.
    pub fn is_channelwise_unary(&self) -> bool {
        matches!(self, Op::Unary(u) if u.channelwise()) || matches!(self, Op::Clip { .. })
    }
}

impl Facts {
    fn keep_if(self, known: bool) -> Facts {
        if known {
            self
        } else {
            Facts::default()
        }
    }
}

/// NumPy broadcasting of two shapes. Two different symbolic sizes are required equal (recorded
/// in `cx`); the known one, or the smaller expression, stands for both.
pub fn broadcast(a: &[Expr], b: &[Expr], cx: &mut InferCx) -> Option<Vec<Expr>> {
    let n = a.len().max(b.len());
    let one = Expr::int(1);
    let at = |v: &[Expr], i: usize| -> Expr {
        // Right-aligned: axis i of the result is axis i - (n - len) of v, or 1 before it.
        i.checked_sub(n.saturating_sub(v.len()))
            .and_then(|j| v.get(j).cloned())
            .unwrap_or_else(|| Expr::int(1))
    };
    (0..n)
        .map(|i| {
            let (x, y) = (at(a, i), at(b, i));
            if x == y || y == one {
                Some(x)
            } else if x == one {
                Some(y)
            } else if x.is_known() && y.is_known() {
                None
            } else {
                cx.equalities.push((x.clone(), y.clone()));
                Some(match (x.is_known(), y.is_known()) {
                    (true, _) => x,
                    (_, true) => y,
                    _ => std::cmp::min(x, y),
                })
            }
        })
        .collect()
}
