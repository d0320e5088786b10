//! Linear layers as matrices, for the passes that fit weights to data: a `Conv` (group 1, 1-D or
//! 2-D), a `Gemm` or a `MatMul` with a constant weight reads its input as rows of features
//! (im2col patches for a convolution, one row per output position) and its weight as a matrix
//! `W [rows, features]`, one row per output channel, feature `c · k + p` for input channel `c`
//! at kernel position `p` of `k`. Depthwise convolutions are per-channel layers (one feature
//! block per output channel). Fitting then is least squares on these rows.

use faer::Mat;

use crate::graph::editor::{Editor, NodeId};
use crate::graph::ops::{AutoPad, Binary, Op, Window};
use crate::graph::sym::Expr;
use crate::passes::PassError;
use crate::tensor::{DType, Tensor};

/// How a layer's weight tensor maps to `W [rows, features]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[rows, channels, k...]`: Conv, Gemm with `transB`.
    RowsFirst,
    /// `[features, rows]`: MatMul, Gemm without `transB`.
    FeaturesFirst,
}

/// Where a layer's bias lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bias {
    /// Input 2 of the node (Conv `B`, Gemm `C`), present or not (then it can be added).
    Input { present: Option<String> },
    /// A per-channel constant added right after it (`MatMul` then `Add`), read by nothing else.
    AddAfter { add: NodeId, constant: String },
    /// No place for one.
    None,
}

/// A convolution's window at concrete sizes (1-D convolutions as height 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pad: [usize; 2],
    pub input: [usize; 2],
    pub output: [usize; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Conv { depthwise: bool },
    Gemm,
    MatMul,
}

/// A layer fitting can change.
#[derive(Debug, Clone)]
pub struct DenseLayer {
    pub node: NodeId,
    pub label: String,
    pub kind: Kind,
    pub weight: String,
    pub dims: Vec<usize>,
    pub layout: Layout,
    pub input: String,
    pub output: String,
    pub bias: Bias,
    /// Output channels.
    pub rows: usize,
    /// Input channels (of a depthwise convolution: its channels).
    pub channels: usize,
    /// Kernel positions per channel (1 for dense layers).
    pub kk: usize,
    /// Gemm's `alpha` and `beta` (1 elsewhere): the stored weight is `W / alpha`.
    pub alpha: f64,
    pub beta: f64,
    window: Option<Window>,
}

impl DenseLayer {
    pub fn features(&self) -> usize {
        self.channels.saturating_mul(self.kk)
    }

    pub fn depthwise(&self) -> bool {
        self.kind == Kind::Conv { depthwise: true }
    }
}

fn used_once(ed: &Editor, name: &str) -> bool {
    crate::graph::edit::use_count(ed.model().graph(), name) == 1
        && !ed.analysis().is_graph_output(name)
}

/// The bias `Add` after a MatMul: its other input a per-channel constant used only there.
fn add_after(ed: &Editor, out: &str, rows: usize) -> Bias {
    let a = ed.analysis();
    let cons = a.consumers(out);
    let [(add, _)] = cons.as_slice() else {
        return Bias::None;
    };
    if !matches!(a.valid_op(*add), Some(Op::Binary(Binary::Add))) {
        return Bias::None;
    }
    let Some(n) = ed.node(*add) else {
        return Bias::None;
    };
    let Some(c) = n.input.iter().find(|x| x.as_str() != out) else {
        return Bias::None;
    };
    let per_channel = a
        .concrete(c)
        .is_some_and(|d| d.iter().product::<usize>() == rows && d.last() == Some(&rows));
    if a.is_const(c) && per_channel && used_once(ed, c) && !a.is_graph_output(out) {
        Bias::AddAfter {
            add: *add,
            constant: c.clone(),
        }
    } else {
        Bias::None
    }
}

/// The node as a dense layer, when fitting can change it: a float32 constant weight read only
/// by this node.
pub fn dense_layer(ed: &Editor, id: NodeId) -> Option<DenseLayer> {
    let a = ed.analysis();
    let n = ed.node(id)?;
    let (input, weight) = (n.input.first()?.clone(), n.input.get(1)?.clone());
    let output = n.output.first()?.clone();
    if !a.is_const(&weight) || !used_once(ed, &weight) || a.is_const(&input) {
        return None;
    }
    let t = ed.constant(&weight).ok()??;
    if t.dtype != DType::F32 {
        return None;
    }
    let dims = t.dims.clone();
    let bias_input = || Bias::Input {
        present: n
            .input
            .get(2)
            .filter(|b| !b.is_empty())
            .filter(|b| a.is_const(b) && used_once(ed, b))
            .cloned(),
    };
    let mut l = DenseLayer {
        node: id,
        label: crate::graph::groups::label(ed, id),
        kind: Kind::Gemm,
        weight,
        dims: dims.clone(),
        layout: Layout::RowsFirst,
        input,
        output: output.clone(),
        bias: Bias::None,
        rows: 0,
        channels: 0,
        kk: 1,
        alpha: 1.0,
        beta: 1.0,
        window: None,
    };
    match a.valid_op(id)? {
        Op::Conv(w) => {
            let depthwise = crate::graph::groups::is_depthwise(ed, id);
            if (w.group != 1 && !depthwise) || !(3..=4).contains(&dims.len()) {
                return None;
            }
            l.kind = Kind::Conv { depthwise };
            l.rows = *dims.first()?;
            l.channels = if depthwise { l.rows } else { *dims.get(1)? };
            l.kk = dims.get(2..)?.iter().product();
            l.bias = bias_input();
            if n.input.get(2).is_some_and(|b| !b.is_empty())
                && l.bias == (Bias::Input { present: None })
            {
                return None; // a bias shared or computed: leave the layer alone
            }
            l.window = Some(w.clone());
        }
        Op::Gemm {
            trans_a: false,
            trans_b,
            alpha,
            beta,
        } => {
            if dims.len() != 2 || *alpha == 0.0 {
                return None;
            }
            l.layout = if *trans_b {
                Layout::RowsFirst
            } else {
                Layout::FeaturesFirst
            };
            let (r, c) = (dims[0], dims[1]);
            (l.rows, l.channels) = if *trans_b { (r, c) } else { (c, r) };
            (l.alpha, l.beta) = (f64::from(*alpha), f64::from(*beta));
            l.bias = bias_input();
            let bias_ok = match &l.bias {
                Bias::Input { present: Some(b) } => a.concrete(b).is_some_and(|d| {
                    d.iter().product::<usize>() == l.rows && d.last() == Some(&l.rows)
                }),
                _ => n.input.get(2).is_none_or(|b| b.is_empty()),
            };
            if !bias_ok {
                return None;
            }
            if l.beta == 0.0 {
                l.bias = Bias::None;
            }
        }
        Op::MatMul => {
            if dims.len() != 2 {
                return None;
            }
            l.kind = Kind::MatMul;
            l.layout = Layout::FeaturesFirst;
            (l.channels, l.rows) = (dims[0], dims[1]);
            l.bias = add_after(ed, &output, l.rows);
        }
        _ => return None,
    }
    (l.rows > 0 && l.channels > 0).then_some(l)
}

/// Every layer of the main graph fitting can change, in graph order.
pub fn dense_layers(ed: &Editor) -> Vec<DenseLayer> {
    let order = ed.analysis().order().to_vec();
    order
        .into_iter()
        .filter_map(|id| dense_layer(ed, id))
        .collect()
}

/// `W [rows, features]` and the bias (zeros where there is none), as the layer computes them
/// (Gemm's `alpha` and `beta` applied).
pub fn read_matrix(ed: &Editor, l: &DenseLayer) -> Result<(Mat<f64>, Vec<f64>), PassError> {
    let v = constant_f32(ed, &l.weight)?;
    let f = l.features();
    let per_row = if l.depthwise() { l.kk } else { f };
    let w = Mat::from_fn(l.rows, per_row, |r, j| {
        let i = match l.layout {
            Layout::RowsFirst => r * per_row + j,
            Layout::FeaturesFirst => j * l.rows + r,
        };
        f64::from(v.get(i).copied().unwrap_or(0.0)) * l.alpha
    });
    let b = match &l.bias {
        Bias::Input { present: Some(b) } | Bias::AddAfter { constant: b, .. } => {
            constant_f32(ed, b)?
                .iter()
                .map(|x| f64::from(*x) * l.beta)
                .collect()
        }
        _ => vec![0.0; l.rows],
    };
    Ok((w, b))
}

fn constant_f32(ed: &Editor, name: &str) -> Result<Vec<f32>, PassError> {
    let t = ed.constant(name)?.ok_or_else(|| PassError::Invalid {
        pass: "recover",
        reason: format!("{name} is not a constant"),
    })?;
    Ok(t.to_f32()?)
}

/// Writes `W` and, where the layer has a place for one, the bias back (adding a Conv or Gemm
/// bias input that was absent).
pub fn write_matrix(
    ed: &mut Editor,
    l: &DenseLayer,
    w: &Mat<f64>,
    bias: Option<&[f64]>,
) -> Result<(), PassError> {
    let per_row = w.ncols();
    let mut v = vec![0.0f32; l.rows * per_row];
    for r in 0..l.rows {
        for j in 0..per_row {
            let i = match l.layout {
                Layout::RowsFirst => r * per_row + j,
                Layout::FeaturesFirst => j * l.rows + r,
            };
            if let Some(slot) = v.get_mut(i) {
                *slot = (w[(r, j)] / l.alpha) as f32;
            }
        }
    }
    ed.write_constant(&l.weight, &Tensor::from_f32(l.dims.clone(), &v)?)?;
    let Some(b) = bias else { return Ok(()) };
    let scaled: Vec<f32> = b.iter().map(|x| (x / l.beta) as f32).collect();
    match &l.bias {
        Bias::Input {
            present: Some(name),
        }
        | Bias::AddAfter { constant: name, .. } => {
            let dims = ed
                .constant(name)?
                .map(|t| t.dims)
                .unwrap_or_else(|| vec![l.rows]);
            ed.write_constant(name, &Tensor::from_f32(dims, &scaled)?)?;
        }
        Bias::Input { present: None } => {
            let t = Tensor::from_f32(vec![l.rows], &scaled)?;
            ed.set_input_constant(l.node, 2, &t, &format!("{}.bias", l.label))?;
        }
        Bias::None => {}
    }
    Ok(())
}

impl DenseLayer {
    /// The window at the sizes of an input `[N, C, spatial...]`.
    pub fn geometry(&self, input: &[usize]) -> Option<Geometry> {
        let w = self.window.as_ref()?;
        let sp = input.len().checked_sub(2)?;
        let kdims = self.dims.get(2..)?;
        if sp != kdims.len() || !(1..=2).contains(&sp) {
            return None;
        }
        let kexpr: Vec<Expr> = kdims.iter().map(|&k| Expr::int(k as i64)).collect();
        let mut g = Geometry {
            kernel: [1; 2],
            stride: [1; 2],
            dilation: [1; 2],
            pad: [0; 2],
            input: [1; 2],
            output: [1; 2],
        };
        for i in 0..sp {
            let ax = w.axis(i, sp, Some(&kexpr))?;
            let (k, s, d) = (
                usize::try_from(ax.kernel.as_int()?).ok()?,
                usize::try_from(ax.stride).ok()?,
                usize::try_from(ax.dilation).ok()?,
            );
            let x = *input.get(2 + i)?;
            let eff = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let out = match w.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => x.div_ceil(s),
                AutoPad::Valid => x.checked_sub(eff)? / s + 1,
                AutoPad::NotSet => {
                    let span = x
                        .checked_add(usize::try_from(ax.pad_begin.checked_add(ax.pad_end)?).ok()?)?
                        .checked_sub(eff)?;
                    span / s + 1
                }
            };
            let (pb, _) = w.applied_pads(&Expr::int(x as i64), &Expr::int(out as i64), &ax)?;
            // 1-D convolutions sit on the second axis, height 1.
            let j = if sp == 1 { 1 } else { i };
            g.kernel[j] = k;
            g.stride[j] = s;
            g.dilation[j] = d;
            g.pad[j] = usize::try_from(pb.as_int()?).ok()?;
            g.input[j] = x;
            g.output[j] = out;
        }
        Some(g)
    }
}

/// One row of a layer's input: a sample and, for a convolution, an output position (for a
/// MatMul over `[.., T, C]`, `pos` is the index among the leading positions).
#[derive(Debug, Clone, Copy)]
pub struct RowAt {
    pub sample: usize,
    pub pos: usize,
}

/// How many rows an input tensor offers: per sample, positions.
pub fn positions(l: &DenseLayer, dims: &[usize]) -> Option<(usize, usize)> {
    match l.kind {
        Kind::Conv { .. } => {
            let g = l.geometry(dims)?;
            Some((*dims.first()?, g.output[0].checked_mul(g.output[1])?))
        }
        Kind::Gemm => match dims {
            [n, c] if *c == l.channels => Some((*n, 1)),
            _ => None,
        },
        Kind::MatMul => {
            let (&c, lead) = dims.split_last()?;
            if c != l.channels || lead.is_empty() {
                return None;
            }
            let n = *lead.first()?;
            Some((n, lead.get(1..)?.iter().product()))
        }
    }
}

/// The input value under kernel tap (`ky`, `kx`) of channel `c` for the output position of
/// row `at` (of `c_all` input channels); 0 in the padding.
fn conv_tap(
    g: &Geometry,
    x: &[f32],
    at: &RowAt,
    c_all: usize,
    c: usize,
    ky: usize,
    kx: usize,
) -> f32 {
    let (oy, ox) = (at.pos / g.output[1].max(1), at.pos % g.output[1].max(1));
    let iy = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0]);
    let ix = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.pad[1]);
    match (iy, ix) {
        (Some(iy), Some(ix)) if iy < g.input[0] && ix < g.input[1] => {
            let base = (at.sample * c_all + c) * g.input[0] * g.input[1];
            x.get(base + iy * g.input[1] + ix).copied().unwrap_or(0.0)
        }
        _ => 0.0,
    }
}

/// The input rows at `rows` for the features of channels `chans` (a convolution: every kernel
/// position of each), plus a column of ones when `intercept`; `x` is the input tensor's values.
pub fn gather_rows(
    l: &DenseLayer,
    dims: &[usize],
    x: &[f32],
    rows: &[RowAt],
    chans: &[usize],
    intercept: bool,
) -> Mat<f64> {
    let kk = l.kk;
    let cols = chans.len() * kk + usize::from(intercept);
    let mut m = Mat::<f64>::zeros(rows.len(), cols);
    match (l.kind, l.geometry(dims)) {
        (Kind::Conv { .. }, Some(g)) => {
            let c_all = dims.get(1).copied().unwrap_or(0);
            for (r, at) in rows.iter().enumerate() {
                for (ci, &c) in chans.iter().enumerate() {
                    let taps =
                        (0..g.kernel[0]).flat_map(|ky| (0..g.kernel[1]).map(move |kx| (ky, kx)));
                    for (t, (ky, kx)) in taps.enumerate() {
                        m[(r, ci * kk + t)] = f64::from(conv_tap(&g, x, at, c_all, c, ky, kx));
                    }
                }
            }
        }
        _ => {
            let per_sample = dims.iter().skip(1).product::<usize>();
            let c_all = l.channels;
            for (r, at) in rows.iter().enumerate() {
                let base = at.sample * per_sample + at.pos * c_all;
                for (ci, &c) in chans.iter().enumerate() {
                    m[(r, ci)] = f64::from(x.get(base + c).copied().unwrap_or(0.0));
                }
            }
        }
    }
    if intercept {
        for r in 0..rows.len() {
            m[(r, cols - 1)] = 1.0;
        }
    }
    m
}
