//! Element-wise ops, reductions and matrix products.

use super::{broadcast, norm_axes, norm_axis, Attrs, Facts, InferCx, Source};
use crate::graph::sym::{product, Expr};

/// Shape-preserving element-wise ops of one tensor input (other inputs, if any, are scalars or
/// quantization parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    HardSigmoid { alpha: f32, beta: f32 },
    HardSwish,
    Tanh,
    Other(UnaryKind),
}

/// The rest, by what channel analysis needs to know of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryKind {
    /// Each element on its own (activations, `Identity`, `Cast`, `Dropout`, math functions).
    Pointwise,
    /// Value-changing per element but also used on shape tensors: values pass through.
    PassValues,
    /// Shape-preserving but not per channel (normalizations across an axis, quantization with
    /// per-axis parameters, cumulative sums).
    Mixing,
}

impl Unary {
    pub(super) fn parse(op: &str, a: &Attrs<'_>) -> Option<Unary> {
        use UnaryKind::*;
        Some(match op {
            "Relu" => Unary::Relu,
            "LeakyRelu" => Unary::LeakyRelu(a.float("alpha", 0.01)),
            "Sigmoid" => Unary::Sigmoid,
            "HardSigmoid" => Unary::HardSigmoid {
                alpha: a.float("alpha", 0.2),
                beta: a.float("beta", 0.5),
            },
            "HardSwish" => Unary::HardSwish,
            "Tanh" => Unary::Tanh,
            "Identity" | "Cast" | "Dropout" | "CastLike" => Unary::Other(PassValues),
            "Erf" | "Gelu" | "Sqrt" | "Exp" | "Log" | "Neg" | "Abs" | "Softplus" | "Softsign"
            | "Elu" | "Selu" | "Celu" | "Mish" | "ThresholdedRelu" | "Reciprocal" | "Floor"
            | "Ceil" | "Round" | "Sign" | "Sin" | "Cos" | "Tan" | "Asin" | "Acos" | "Atan"
            | "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" | "Not" | "IsNaN" | "IsInf"
            | "Shrink" => Unary::Other(Pointwise),
            "LpNormalization"
            | "MeanVarianceNormalization"
            | "GroupNormalization"
            | "QuantizeLinear"
            | "DequantizeLinear"
            | "CumSum"
            | "Trilu"
            | "ScatterND"
            | "ScatterElements"
            | "ReverseSequence" => Unary::Other(Mixing),
            _ => return None,
        })
    }

    /// Each channel computed on its own, so channels pass through unchanged in number.
    pub fn channelwise(&self) -> bool {
        !matches!(self, Unary::Other(UnaryKind::Mixing))
    }

    /// `act(0) == 0`: a channel that is zero stays zero through it.
    pub fn keeps_zero(&self) -> bool {
        matches!(
            self,
            Unary::Relu | Unary::LeakyRelu(_) | Unary::HardSwish | Unary::Tanh
        )
    }
}

/// Broadcasting element-wise ops of several inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Equal,
    /// `Where(cond, x, y)`.
    Where,
    /// `Pow`, `Max`, `Min`, `Sum`, `Mean`, `PRelu`, other comparisons, logic, `Mod`.
    Other,
}

impl Binary {
    pub(super) fn parse(op: &str) -> Option<Binary> {
        Some(match op {
            "Add" => Binary::Add,
            "Sub" => Binary::Sub,
            "Mul" => Binary::Mul,
            "Div" => Binary::Div,
            "Equal" => Binary::Equal,
            "Where" => Binary::Where,
            "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu" | "Less" | "LessOrEqual"
            | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Mod" | "BitShift"
            | "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" => Binary::Other,
            _ => return None,
        })
    }

    fn apply(self, a: &Expr, b: &Expr) -> Option<Expr> {
        match self {
            Binary::Add => a.checked_add(b),
            Binary::Sub => a.checked_sub(b),
            Binary::Mul => a.checked_mul(b),
            // Shape arithmetic divides non-negative sizes: truncation is floor.
            Binary::Div => match b.as_int() {
                Some(k) if k > 0 => a.as_int().map_or_else(
                    || a.div_exact(b).or_else(|| a.floor_div(k)),
                    |x| x.checked_div(k).map(Expr::int),
                ),
                _ => a.div_exact(b),
            },
            // Sizes are never negative: a size compared with -1 (exporters' "infer this" mark)
            // is known unequal.
            Binary::Equal => match (a.as_int(), b.as_int()) {
                _ if a == b => Some(Expr::int(1)),
                (Some(_), Some(_)) => Some(Expr::int(0)),
                (Some(x), None) | (None, Some(x)) if x < 0 => Some(Expr::int(0)),
                _ => None,
            },
            Binary::Where | Binary::Other => None,
        }
    }
}

pub(super) fn infer_unary(u: &Unary, ins: &[Facts]) -> Facts {
    let Some(x) = ins.first() else {
        return Facts::default();
    };
    let f = Facts {
        present: true,
        shape: x.shape.clone(),
        value: None,
        floats: None,
    };
    if matches!(u, Unary::Other(UnaryKind::PassValues)) {
        f.with_value(x.value.clone())
    } else {
        f
    }
}

pub(super) fn infer_binary(b: &Binary, ins: &[Facts], cx: &mut InferCx) -> Facts {
    let mut shape: Option<Vec<Expr>> = None;
    for f in ins.iter().filter(|f| f.present) {
        shape = match (shape, &f.shape) {
            (None, Some(s)) => Some(s.clone()),
            (Some(a), Some(s)) => match broadcast(&a, s, cx) {
                Some(v) => Some(v),
                None => return Facts::default(),
            },
            _ => return Facts::default(),
        };
    }
    let Some(shape) = shape else {
        return Facts::default();
    };
    // Integer shape arithmetic on 1-D or scalar values.
    let vals: Vec<Option<&Vec<Expr>>> = ins.iter().map(|f| f.value.as_ref()).collect();
    let value = match (b, vals.as_slice()) {
        (Binary::Where, [Some(c), Some(x), Some(y)]) => where_values(c, x, y),
        (_, [Some(a), Some(v)]) => elementwise_values(*b, a, v),
        _ => None,
    };
    Facts::shaped(shape).with_value(value)
}

fn elementwise_values(b: Binary, a: &[Expr], v: &[Expr]) -> Option<Vec<Expr>> {
    let len = a.len().max(v.len());
    if !((a.len() == 1 || a.len() == len) && (v.len() == 1 || v.len() == len)) {
        return None;
    }
    (0..len)
        .map(|i| {
            let x = if a.len() == 1 { a.first() } else { a.get(i) };
            let y = if v.len() == 1 { v.first() } else { v.get(i) };
            b.apply(x?, y?)
        })
        .collect()
}

fn where_values(c: &[Expr], x: &[Expr], y: &[Expr]) -> Option<Vec<Expr>> {
    let len = c.len().max(x.len()).max(y.len());
    let at = |v: &[Expr], i: usize| {
        if v.len() == 1 {
            v.first().cloned()
        } else {
            v.get(i).cloned()
        }
    };
    (0..len)
        .map(|i| match at(c, i)?.as_int()? {
            0 => at(y, i),
            _ => at(x, i),
        })
        .collect()
}

pub(super) fn infer_gemm(ins: &[Facts], trans_a: bool, trans_b: bool) -> Facts {
    let (Some(a), Some(b)) = (
        ins.first().and_then(|f| f.shape.as_ref()),
        ins.get(1).and_then(|f| f.shape.as_ref()),
    ) else {
        return Facts::default();
    };
    let (Some(m), Some(n)) = (
        a.get(usize::from(trans_a)).filter(|_| a.len() == 2),
        b.get(usize::from(!trans_b)).filter(|_| b.len() == 2),
    ) else {
        return Facts::default();
    };
    Facts::shaped(vec![m.clone(), n.clone()])
}

/// `MatMul`, NumPy semantics (1-D operands promoted and squeezed).
pub fn matmul_shape(a: &[Expr], b: &[Expr], cx: &mut InferCx) -> Option<Vec<Expr>> {
    let one = Expr::int(1);
    let a2: Vec<Expr> = if a.len() == 1 {
        vec![one.clone(), a.first()?.clone()]
    } else {
        a.to_vec()
    };
    let b2: Vec<Expr> = if b.len() == 1 {
        vec![b.first()?.clone(), one]
    } else {
        b.to_vec()
    };
    let (ra, rb) = (a2.len().checked_sub(2)?, b2.len().checked_sub(2)?);
    let (m, k1) = (a2.get(ra)?, a2.get(ra.checked_add(1)?)?);
    let (k2, n) = (b2.get(rb)?, b2.get(rb.checked_add(1)?)?);
    if k1 != k2 {
        if k1.is_known() && k2.is_known() {
            return None;
        }
        cx.equalities.push((k1.clone(), k2.clone()));
    }
    let mut out = broadcast(a2.get(..ra)?, b2.get(..rb)?, cx)?;
    if a.len() > 1 {
        out.push(m.clone());
    }
    if b.len() > 1 {
        out.push(n.clone());
    }
    Some(out)
}

pub(super) fn infer_matmul(ins: &[Facts], cx: &mut InferCx) -> Facts {
    match (
        ins.first().and_then(|f| f.shape.as_ref()),
        ins.get(1).and_then(|f| f.shape.as_ref()),
    ) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => matmul_shape(a, b, cx)
            .map(Facts::shaped)
            .unwrap_or_default(),
        _ => Facts::default(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reduce {
    pub axes: Source,
    pub keepdims: bool,
    pub noop_with_empty_axes: bool,
}

impl Reduce {
    /// The reduced axes for an input of rank `rank`.
    pub fn axes(&self, ins: &[Facts], rank: usize) -> Option<Vec<usize>> {
        match self.axes.resolve(ins)? {
            Some(v) if !v.is_empty() => norm_axes(&v, rank),
            _ if self.noop_with_empty_axes => Some(Vec::new()),
            _ => Some((0..rank).collect()),
        }
    }
}

fn reduced(x: &[Expr], axes: &[usize], keep: bool) -> Vec<Expr> {
    x.iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keep) {
            (true, true) => Some(Expr::int(1)),
            (true, false) => None,
            (false, _) => Some(d.clone()),
        })
        .collect()
}

pub(super) fn infer_reduce(r: &Reduce, ins: &[Facts]) -> Facts {
    let Some(x) = ins.first().and_then(|f| f.shape.as_ref()) else {
        return Facts::default();
    };
    match r.axes(ins, x.len()) {
        Some(axes) => Facts::shaped(reduced(x, &axes, r.keepdims)),
        None => Facts::default(),
    }
}

pub(super) fn infer_arg(axis: i64, keep: bool, ins: &[Facts]) -> Facts {
    let Some(x) = ins.first().and_then(|f| f.shape.as_ref()) else {
        return Facts::default();
    };
    match norm_axis(axis, x.len()) {
        Some(a) => Facts::shaped(reduced(x, &[a], keep)),
        None => Facts::default(),
    }
}

/// `LSTM`/`GRU`/`RNN`: `Y` [seq, dirs, batch, hidden] (layout 0) or [batch, seq, dirs, hidden],
/// and the final states [dirs, batch, hidden] (or [batch, dirs, hidden]).
pub(super) fn infer_recurrent(hidden: Option<i64>, layout: i64, ins: &[Facts]) -> Vec<Facts> {
    let (Some(x), Some(w)) = (
        ins.first().and_then(|f| f.shape.as_ref()),
        ins.get(1).and_then(|f| f.shape.as_ref()),
    ) else {
        return vec![];
    };
    let (Some(dirs), Some(h)) = (w.first(), hidden.map(Expr::int)) else {
        return vec![];
    };
    if x.len() != 3 {
        return vec![];
    }
    let (seq, batch) = if layout == 0 {
        (x.first(), x.get(1))
    } else {
        (x.get(1), x.first())
    };
    let (Some(seq), Some(batch)) = (seq.cloned(), batch.cloned()) else {
        return vec![];
    };
    let (d, hh) = (dirs.clone(), h);
    let (y, state) = if layout == 0 {
        (
            vec![seq, d.clone(), batch.clone(), hh.clone()],
            vec![d, batch, hh],
        )
    } else {
        (
            vec![batch.clone(), seq, d.clone(), hh.clone()],
            vec![batch, d, hh],
        )
    };
    vec![
        Facts::shaped(y),
        Facts::shaped(state.clone()),
        Facts::shaped(state),
    ]
}

/// Per time step, batch and direction: gates × hidden × (input + hidden).
pub(super) fn recurrent_macs(ins: &[Facts], outs: &[Facts]) -> Option<Expr> {
    let w = ins.get(1)?.shape.as_ref()?; // [dirs, gates*hidden, input]
    let r = ins.get(2)?.shape.as_ref()?; // [dirs, gates*hidden, hidden]
    let y = outs.first()?.shape.as_ref()?; // [seq, dirs, batch, hidden] or [batch, seq, dirs, hidden]
    let per = product(w.iter())?.checked_add(&product(r.iter())?)?;
    let steps_batch = product(y.iter())?
        .div_exact(y.last()?)?
        .div_exact(w.first()?)?;
    per.checked_mul(&steps_batch)
}
