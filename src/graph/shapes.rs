//! Static shape inference over a model's main graph, for the ops deployed CNNs, MLPs and
//! transformers use. Symbolic dimensions must be resolved first (inputs get concrete shapes);
//! small integer tensors (shape arithmetic: `Shape → Gather → Concat → Reshape`) are folded along
//! the way. Ops it does not know leave their outputs unknown, never wrong: the MAC estimate and the
//! passes treat unknown as "cannot tell".

use std::collections::HashMap;

use onnx_protobuf::{AttributeProto, NodeProto};

use crate::onnx::weights::is_constant_node;
use crate::onnx::Model;

/// Integer constants above this many elements are not tracked (they are data, not shapes).
const MAX_CONST: usize = 64;

/// Inferred shapes and folded small integer constants, by tensor name.
#[derive(Debug, Default, Clone)]
pub struct Shapes {
    pub shapes: HashMap<String, Vec<usize>>,
    pub consts: HashMap<String, Vec<i64>>,
}

impl Shapes {
    pub fn get(&self, name: &str) -> Option<&Vec<usize>> {
        self.shapes.get(name)
    }
}

pub fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}

pub fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}

pub fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

pub fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// NumPy broadcasting of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Output spatial size of a sliding window (Conv and pooling), per ONNX's formulas.
#[allow(clippy::too_many_arguments)]
fn window_out(
    input: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pad_b: usize,
    pad_e: usize,
    auto_pad: &str,
    ceil: bool,
) -> Option<usize> {
    let stride = stride.max(1);
    let eff = dil.max(1) * (k.max(1) - 1) + 1;
    match auto_pad {
        "SAME_UPPER" | "SAME_LOWER" => Some(input.div_ceil(stride)),
        "VALID" => (input >= eff).then(|| (input - eff) / stride + 1),
        _ => {
            let total = input + pad_b + pad_e;
            if total < eff {
                return None;
            }
            let span = total - eff;
            Some(if ceil {
                span.div_ceil(stride) + 1
            } else {
                span / stride + 1
            })
        }
    }
}

fn elementwise_unary(op: &str) -> bool {
    // Shape-preserving: the channel-wise activations, plus ops that normalize or quantize.
    crate::graph::groups::passthrough_unary(op)
        || matches!(
            op,
            "PRelu"
                | "Softmax"
                | "LogSoftmax"
                | "CastLike"
                | "BatchNormalization"
                | "LayerNormalization"
                | "InstanceNormalization"
                | "LpNormalization"
                | "Not"
                | "IsNaN"
                | "Shrink"
                | "QuantizeLinear"
                | "DequantizeLinear"
        )
}

fn broadcasting(op: &str) -> bool {
    matches!(
        op,
        "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Pow"
            | "Max"
            | "Min"
            | "Sum"
            | "Mean"
            | "Equal"
            | "Less"
            | "LessOrEqual"
            | "Greater"
            | "GreaterOrEqual"
            | "Where"
            | "And"
            | "Or"
            | "Xor"
            | "Mod"
            | "BitShift"
    )
}

/// Infers shapes for the main graph given concrete input shapes.
pub fn infer(model: &Model, inputs: &HashMap<String, Vec<usize>>) -> Shapes {
    let g = model.graph();
    let mut s = Shapes::default();
    // Declared shapes first (fully fixed only), then what we know better overrides them.
    for vi in g
        .value_info
        .iter()
        .chain(g.output.iter())
        .chain(g.input.iter())
    {
        let v = crate::onnx::ValueInfo::from_proto(vi);
        if let Some(d) = v.dims {
            let fixed: Option<Vec<usize>> = d
                .iter()
                .map(|x| {
                    if let crate::onnx::Dim::Fixed(n) = x {
                        Some(*n)
                    } else {
                        None
                    }
                })
                .collect();
            if let Some(f) = fixed {
                s.shapes.insert(v.name, f);
            }
        }
    }
    for (k, v) in inputs {
        s.shapes.insert(k.clone(), v.clone());
    }
    for t in &g.initializer {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        if let Ok(tensor) = model.decode_tensor(t) {
            if tensor.numel() <= MAX_CONST {
                if let Some(v) = tensor.to_i64_lossy() {
                    s.consts.insert(t.name.clone(), v);
                }
            }
        }
        s.shapes.insert(t.name.clone(), dims);
    }
    for n in &g.node {
        infer_node(model, n, &mut s);
    }
    s
}

fn infer_node(model: &Model, n: &NodeProto, s: &mut Shapes) {
    let op = n.op_type.as_str();
    // Snapshot the inputs so the outputs can be written while reading them.
    let in_shapes: Vec<Option<Vec<usize>>> = n
        .input
        .iter()
        .map(|x| {
            if x.is_empty() {
                None
            } else {
                s.shapes.get(x).cloned()
            }
        })
        .collect();
    let in_consts: Vec<Option<Vec<i64>>> = n
        .input
        .iter()
        .map(|x| {
            if x.is_empty() {
                None
            } else {
                s.consts.get(x).cloned()
            }
        })
        .collect();
    let inp = |i: usize| in_shapes.get(i).cloned().flatten();
    let cst = |i: usize| in_consts.get(i).cloned().flatten();
    let out0 = n.output.first().cloned().unwrap_or_default();
    let set = |s: &mut Shapes, name: &str, shape: Vec<usize>| {
        s.shapes.insert(name.to_string(), shape);
    };
    if is_constant_node(n) {
        for a in &n.attribute {
            match a.name.as_str() {
                "value" => {
                    if let Some(t) = a.t.as_ref() {
                        set(
                            s,
                            &out0,
                            t.dims.iter().map(|&d| d.max(0) as usize).collect(),
                        );
                        if let Ok(tensor) = model.decode_tensor(t) {
                            if tensor.numel() <= MAX_CONST {
                                if let Some(v) = tensor.to_i64_lossy() {
                                    s.consts.insert(out0.clone(), v);
                                }
                            }
                        }
                    }
                }
                "value_ints" => {
                    set(s, &out0, vec![a.ints.len()]);
                    if a.ints.len() <= MAX_CONST {
                        s.consts.insert(out0.clone(), a.ints.clone());
                    }
                }
                "value_int" => {
                    set(s, &out0, vec![]);
                    s.consts.insert(out0.clone(), vec![a.i]);
                }
                "value_floats" => set(s, &out0, vec![a.floats.len()]),
                "value_float" => set(s, &out0, vec![]),
                _ => {}
            }
        }
        return;
    }
    let Some(x) = inp(0) else {
        if op == "ConstantOfShape" {
            if let Some(c) = cst(0) {
                set(s, &out0, c.iter().map(|&d| d.max(0) as usize).collect());
            }
        }
        return;
    };
    let rank = x.len();
    match op {
        _ if elementwise_unary(op) => {
            set(s, &out0, x.clone());
            if matches!(op, "Identity" | "Cast") {
                if let Some(c) = cst(0) {
                    s.consts.insert(out0.clone(), c);
                }
            }
        }
        _ if broadcasting(op) => {
            let mut shape = Some(x.clone());
            for i in 1..n.input.len() {
                shape = match (shape, inp(i)) {
                    (Some(a), Some(b)) => broadcast(&a, &b),
                    _ => None,
                };
            }
            if let Some(sh) = shape {
                set(s, &out0, sh);
            }
            // Integer shape arithmetic.
            if let (Some(a), Some(b)) = (cst(0), cst(1)) {
                let f: Option<fn(i64, i64) -> Option<i64>> = match op {
                    "Add" => Some(|a, b| a.checked_add(b)),
                    "Sub" => Some(|a, b| a.checked_sub(b)),
                    "Mul" => Some(|a, b| a.checked_mul(b)),
                    "Div" => Some(|a, b| a.checked_div(b)),
                    _ => None,
                };
                if let Some(f) = f {
                    let len = a.len().max(b.len());
                    if (a.len() == 1 || a.len() == len) && (b.len() == 1 || b.len() == len) {
                        let v: Option<Vec<i64>> = (0..len)
                            .map(|i| {
                                f(
                                    a[if a.len() == 1 { 0 } else { i }],
                                    b[if b.len() == 1 { 0 } else { i }],
                                )
                            })
                            .collect();
                        if let Some(v) = v {
                            s.consts.insert(out0.clone(), v);
                        }
                    }
                }
            }
        }
        "Conv" | "ConvInteger" | "QLinearConv" => {
            let wi = if op == "QLinearConv" { 3 } else { 1 };
            let Some(w) = inp(wi) else { return };
            if rank < 3 || w.len() != rank {
                return;
            }
            let sp = rank - 2;
            let k = attr_ints(n, "kernel_shape")
                .map(|v| v.iter().map(|&x| x as usize).collect())
                .unwrap_or_else(|| w[2..].to_vec());
            let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1; sp]);
            let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1; sp]);
            let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * sp]);
            let ap = attr_s(n, "auto_pad").unwrap_or_default();
            let mut out = vec![x[0], w[0]];
            for i in 0..sp {
                let (Some(&kk), Some(&st), Some(&dl), Some(&pb), Some(&pe)) = (
                    k.get(i),
                    strides.get(i),
                    dil.get(i),
                    pads.get(i),
                    pads.get(i + sp),
                ) else {
                    return;
                };
                match window_out(
                    x[2 + i],
                    kk,
                    st as usize,
                    dl as usize,
                    pb as usize,
                    pe as usize,
                    &ap,
                    false,
                ) {
                    Some(o) => out.push(o),
                    None => return,
                }
            }
            set(s, &out0, out);
        }
        "ConvTranspose" => {
            let Some(w) = inp(1) else { return };
            if rank < 3 || w.len() != rank {
                return;
            }
            let sp = rank - 2;
            let group = attr_i(n, "group", 1).max(1) as usize;
            let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1; sp]);
            let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1; sp]);
            let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * sp]);
            let opad = attr_ints(n, "output_padding").unwrap_or_else(|| vec![0; sp]);
            let mut out = vec![x[0], w[1] * group];
            if let Some(os) = attr_ints(n, "output_shape") {
                out.extend(os.iter().rev().take(sp).rev().map(|&d| d.max(0) as usize));
            } else {
                for i in 0..sp {
                    let k = w[2 + i] as i64;
                    let v = strides.get(i).copied().unwrap_or(1) * (x[2 + i] as i64 - 1)
                        + opad.get(i).copied().unwrap_or(0)
                        + (k - 1) * dil.get(i).copied().unwrap_or(1)
                        + 1
                        - pads.get(i).copied().unwrap_or(0)
                        - pads.get(i + sp).copied().unwrap_or(0);
                    if v <= 0 {
                        return;
                    }
                    out.push(v as usize);
                }
            }
            set(s, &out0, out);
        }
        "MaxPool" | "AveragePool" | "LpPool" => {
            if rank < 3 {
                return;
            }
            let sp = rank - 2;
            let Some(k) = attr_ints(n, "kernel_shape") else {
                return;
            };
            let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1; sp]);
            let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1; sp]);
            let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * sp]);
            let ap = attr_s(n, "auto_pad").unwrap_or_default();
            let ceil = attr_i(n, "ceil_mode", 0) != 0;
            let mut out = vec![x[0], x[1]];
            for i in 0..sp {
                let (Some(&kk), Some(&st), Some(&dl), Some(&pb), Some(&pe)) = (
                    k.get(i),
                    strides.get(i),
                    dil.get(i),
                    pads.get(i),
                    pads.get(i + sp),
                ) else {
                    return;
                };
                match window_out(
                    x[2 + i],
                    kk as usize,
                    st as usize,
                    dl as usize,
                    pb as usize,
                    pe as usize,
                    &ap,
                    ceil,
                ) {
                    Some(o) => out.push(o),
                    None => return,
                }
            }
            set(s, &out0, out.clone());
            if let Some(idx) = n.output.get(1) {
                set(s, idx, out);
            }
        }
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
            let mut out = x.clone();
            for d in out.iter_mut().skip(2) {
                *d = 1;
            }
            set(s, &out0, out);
        }
        "Gemm" => {
            let Some(b) = inp(1) else { return };
            if x.len() != 2 || b.len() != 2 {
                return;
            }
            let m = if attr_i(n, "transA", 0) != 0 {
                x[1]
            } else {
                x[0]
            };
            let nn = if attr_i(n, "transB", 0) != 0 {
                b[0]
            } else {
                b[1]
            };
            set(s, &out0, vec![m, nn]);
        }
        "MatMul" | "MatMulInteger" => {
            let Some(b) = inp(1) else { return };
            if let Some(o) = matmul_shape(&x, &b) {
                set(s, &out0, o);
            }
        }
        "Flatten" => {
            let Some(axis) = norm_axis(attr_i(n, "axis", 1), rank + 1) else {
                return;
            };
            let a: usize = x[..axis].iter().product();
            let b: usize = x[axis..].iter().product();
            set(s, &out0, vec![a, b]);
        }
        "Reshape" => {
            let Some(target) = cst(1) else { return };
            let allowzero = attr_i(n, "allowzero", 0) != 0;
            let total: usize = x.iter().product();
            let mut out = Vec::with_capacity(target.len());
            let mut infer_at = None;
            for (i, &d) in target.iter().enumerate() {
                match d {
                    0 if !allowzero => match x.get(i) {
                        Some(&v) => out.push(v),
                        None => return,
                    },
                    -1 => {
                        if infer_at.is_some() {
                            return;
                        }
                        infer_at = Some(i);
                        out.push(1);
                    }
                    d if d >= 0 => out.push(d as usize),
                    _ => return,
                }
            }
            if let Some(i) = infer_at {
                let known: usize = out.iter().product();
                if known == 0 || !total.is_multiple_of(known) {
                    return;
                }
                out[i] = total / known;
            }
            if out.iter().product::<usize>() == total {
                if let Some(c) = cst(0) {
                    s.consts.insert(out0.clone(), c);
                }
                set(s, &out0, out);
            }
        }
        "Transpose" => {
            let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
            let out: Option<Vec<usize>> =
                perm.iter().map(|&p| x.get(p as usize).copied()).collect();
            if let Some(o) = out {
                set(s, &out0, o);
            }
        }
        "Shape" => {
            let r = rank as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let start = clamp(attr_i(n, "start", 0)) as usize;
            let end = attr(n, "end")
                .map(|a| clamp(a.i) as usize)
                .unwrap_or(rank)
                .max(start);
            let v: Vec<i64> = x[start..end].iter().map(|&d| d as i64).collect();
            set(s, &out0, vec![v.len()]);
            s.consts.insert(out0.clone(), v);
        }
        "Size" => {
            set(s, &out0, vec![]);
            s.consts
                .insert(out0.clone(), vec![x.iter().product::<usize>() as i64]);
        }
        "Gather" => {
            let Some(idx) = inp(1) else { return };
            let Some(axis) = norm_axis(attr_i(n, "axis", 0), rank) else {
                return;
            };
            let mut out = x[..axis].to_vec();
            out.extend(idx.iter().copied());
            out.extend(x[axis + 1..].iter().copied());
            set(s, &out0, out);
            if let (Some(data), Some(ind)) = (cst(0), cst(1)) {
                if rank == 1 {
                    let v: Option<Vec<i64>> = ind
                        .iter()
                        .map(|&i| {
                            let i = if i < 0 { i + data.len() as i64 } else { i };
                            data.get(usize::try_from(i).ok()?).copied()
                        })
                        .collect();
                    if let Some(v) = v {
                        s.consts.insert(out0.clone(), v);
                    }
                }
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let axes = attr_ints(n, "axes").or_else(|| cst(1));
            let out = if op == "Unsqueeze" {
                let Some(axes) = axes else { return };
                let r = rank + axes.len();
                let mut ax: Vec<usize> = match axes
                    .iter()
                    .map(|&a| norm_axis(a, r))
                    .collect::<Option<Vec<_>>>()
                {
                    Some(a) => a,
                    None => return,
                };
                ax.sort_unstable();
                let mut out = x.clone();
                for a in ax {
                    if a > out.len() {
                        return;
                    }
                    out.insert(a, 1);
                }
                out
            } else {
                match axes {
                    Some(axes) => {
                        let ax: Vec<usize> = match axes
                            .iter()
                            .map(|&a| norm_axis(a, rank))
                            .collect::<Option<Vec<_>>>()
                        {
                            Some(a) => a,
                            None => return,
                        };
                        x.iter()
                            .enumerate()
                            .filter(|(i, _)| !ax.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                    None => x.iter().copied().filter(|&d| d != 1).collect(),
                }
            };
            if let Some(c) = cst(0) {
                s.consts.insert(out0.clone(), c);
            }
            set(s, &out0, out);
        }
        "Concat" => {
            let Some(axis) = norm_axis(attr_i(n, "axis", 0), rank) else {
                return;
            };
            let mut out = x.clone();
            let mut vals: Option<Vec<i64>> = Some(Vec::new());
            for i in 0..n.input.len() {
                let Some(sh) = inp(i) else { return };
                if sh.len() != rank {
                    return;
                }
                if i > 0 {
                    out[axis] += sh[axis];
                }
                vals = match (vals, cst(i)) {
                    (Some(mut v), Some(c)) => {
                        v.extend(c);
                        Some(v)
                    }
                    _ => None,
                };
            }
            set(s, &out0, out);
            if let Some(v) = vals.filter(|_| rank == 1) {
                s.consts.insert(out0.clone(), v);
            }
        }
        "Split" => {
            let Some(axis) = norm_axis(attr_i(n, "axis", 0), rank) else {
                return;
            };
            let k = n.output.len();
            let sizes: Vec<usize> = match attr_ints(n, "split").or_else(|| cst(1)) {
                Some(v) => v.iter().map(|&d| d.max(0) as usize).collect(),
                None => {
                    let per = x[axis].div_ceil(k.max(1));
                    (0..k)
                        .map(|i| per.min(x[axis].saturating_sub(per * i)))
                        .collect()
                }
            };
            for (o, sz) in n.output.iter().zip(sizes) {
                let mut sh = x.clone();
                sh[axis] = sz;
                set(s, o, sh);
            }
        }
        "Slice" => {
            let (Some(starts), Some(ends)) = (
                attr_ints(n, "starts").or_else(|| cst(1)),
                attr_ints(n, "ends").or_else(|| cst(2)),
            ) else {
                return;
            };
            let axes = attr_ints(n, "axes")
                .or_else(|| cst(3))
                .unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = cst(4).unwrap_or_else(|| vec![1; starts.len()]);
            let mut out = x.clone();
            let mut ranges = Vec::new();
            for i in 0..starts.len() {
                let (Some(&st), Some(&en), Some(&ax), Some(&step)) =
                    (starts.get(i), ends.get(i), axes.get(i), steps.get(i))
                else {
                    return;
                };
                let Some(a) = norm_axis(ax, rank) else { return };
                if step == 0 {
                    return;
                }
                let d = x[a] as i64;
                let fix = |v: i64, lo: i64, hi: i64| {
                    let v = if v < 0 { v + d } else { v };
                    v.clamp(lo, hi)
                };
                let len = if step > 0 {
                    let (b, e) = (fix(st, 0, d), fix(en, 0, d));
                    if e > b {
                        (e - b + step - 1) / step
                    } else {
                        0
                    }
                } else {
                    let (b, e) = (fix(st, -1, d - 1), fix(en, -1, d - 1));
                    if b > e {
                        (b - e - step - 1) / (-step)
                    } else {
                        0
                    }
                };
                out[a] = len as usize;
                ranges.push((a, st, en, step));
            }
            if let Some(c) = cst(0) {
                if rank == 1 && ranges.len() == 1 && ranges[0].3 == 1 {
                    let d = c.len() as i64;
                    let f = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d) as usize;
                    let (b, e) = (f(ranges[0].1), f(ranges[0].2));
                    if b <= e {
                        s.consts.insert(out0.clone(), c[b..e].to_vec());
                    }
                }
            }
            set(s, &out0, out);
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceSumSquare" | "ReduceLogSumExp" | "ArgMax" | "ArgMin" => {
            let keep = attr_i(n, "keepdims", 1) != 0;
            let axes: Vec<usize> = if op.starts_with("Arg") {
                match norm_axis(attr_i(n, "axis", 0), rank) {
                    Some(a) => vec![a],
                    None => return,
                }
            } else {
                match attr_ints(n, "axes").or_else(|| cst(1)) {
                    Some(v) if !v.is_empty() => match v
                        .iter()
                        .map(|&a| norm_axis(a, rank))
                        .collect::<Option<Vec<_>>>()
                    {
                        Some(a) => a,
                        None => return,
                    },
                    _ if attr_i(n, "noop_with_empty_axes", 0) != 0 => vec![],
                    _ => (0..rank).collect(),
                }
            };
            let out: Vec<usize> = x
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| {
                    if axes.contains(&i) {
                        keep.then_some(1)
                    } else {
                        Some(d)
                    }
                })
                .collect();
            set(s, &out0, out);
        }
        "Expand" => {
            let Some(c) = cst(1) else { return };
            let target: Vec<usize> = c.iter().map(|&d| d.max(0) as usize).collect();
            if let Some(o) = broadcast(&x, &target) {
                set(s, &out0, o);
            }
        }
        "Tile" => {
            let Some(r) = cst(1) else { return };
            if r.len() != rank {
                return;
            }
            set(
                s,
                &out0,
                x.iter()
                    .zip(r)
                    .map(|(&d, r)| d * r.max(0) as usize)
                    .collect(),
            );
        }
        "Pad" => {
            let pads = attr_ints(n, "pads").or_else(|| cst(1));
            let Some(p) = pads else { return };
            if n.input.get(3).is_some_and(|a| !a.is_empty()) || p.len() != 2 * rank {
                return;
            }
            let out: Option<Vec<usize>> = (0..rank)
                .map(|i| usize::try_from(x[i] as i64 + p[i] + p[i + rank]).ok())
                .collect();
            if let Some(o) = out {
                set(s, &out0, o);
            }
        }
        "ConstantOfShape" => {
            if let Some(c) = cst(0) {
                set(s, &out0, c.iter().map(|&d| d.max(0) as usize).collect());
            }
        }
        "Resize" | "Upsample" => {
            let sizes = cst(3);
            if let Some(sz) = sizes.filter(|v| v.len() == rank) {
                set(s, &out0, sz.iter().map(|&d| d.max(0) as usize).collect());
            }
        }
        "TopK" => {}
        _ => {}
    }
}

/// Output shape of `MatMul`, NumPy semantics (1-D operands promoted and squeezed).
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k1) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k1 != k2 {
        return None;
    }
    let mut out = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_and_pool_windows() {
        // 28x28, k3, pad 1, stride 1 -> 28; stride 2 -> 14
        assert_eq!(window_out(28, 3, 1, 1, 1, 1, "", false), Some(28));
        assert_eq!(window_out(28, 3, 2, 1, 1, 1, "", false), Some(14));
        assert_eq!(window_out(7, 2, 2, 1, 0, 0, "", false), Some(3));
        assert_eq!(window_out(7, 2, 2, 1, 0, 0, "", true), Some(4));
        assert_eq!(window_out(7, 3, 2, 1, 0, 0, "SAME_UPPER", false), Some(4));
    }

    #[test]
    fn matmul_and_broadcast() {
        assert_eq!(matmul_shape(&[2, 5, 3], &[3, 4]), Some(vec![2, 5, 4]));
        assert_eq!(matmul_shape(&[3], &[3, 4]), Some(vec![4]));
        assert_eq!(matmul_shape(&[2, 3], &[4, 4]), None);
        assert_eq!(broadcast(&[1, 3, 1], &[2, 1, 5]), Some(vec![2, 3, 5]));
        assert_eq!(broadcast(&[3], &[4]), None);
    }
}
