//! Ops that move, cut, join or resize tensors, and the shape arithmetic exporters write with
//! them (`Shape → Gather → Concat → Reshape`): small integer values are tracked through these,
//! symbolic where they are sizes.

use onnx_protobuf::NodeProto;

use super::{broadcast, norm_axes, norm_axis, Attrs, Facts, InferCx, Op, Source};
use crate::graph::sym::{product, Expr};

/// Slice bounds: attributes before opset 10, inputs from then on.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSpec {
    pub starts: Source,
    pub ends: Source,
    pub axes: Source,
    pub steps: Source,
}

impl SliceSpec {
    pub(super) fn parse(n: &NodeProto, opset: i64) -> SliceSpec {
        let a = Attrs(n);
        let attr = |name: &str| a.ints(name).map(Source::Attr).unwrap_or(Source::None);
        if opset < 10 {
            SliceSpec {
                starts: attr("starts"),
                ends: attr("ends"),
                axes: attr("axes"),
                steps: Source::None,
            }
        } else {
            SliceSpec {
                starts: Source::Input(1),
                ends: Source::Input(2),
                axes: Source::Input(3),
                steps: Source::Input(4),
            }
        }
    }

    /// Normalized (axis, start, end, step) per sliced axis, for an input of rank `rank`. Bounds
    /// may be symbolic (`x[:, :seq_len]`); steps must be known.
    pub fn ranges(&self, ins: &[Facts], rank: usize) -> Option<Vec<(usize, Expr, Expr, i64)>> {
        let starts = self.starts.resolve_exprs(ins)??;
        let ends = self.ends.resolve_exprs(ins)??;
        if starts.len() != ends.len() {
            return None;
        }
        let axes = match self.axes.resolve(ins)? {
            Some(a) => a,
            None => (0..i64::try_from(starts.len()).ok()?).collect(),
        };
        let steps = self
            .steps
            .resolve(ins)?
            .unwrap_or_else(|| vec![1; starts.len()]);
        norm_axes(&axes, rank)?; // in range and distinct
        if axes.len() != starts.len() || steps.len() != starts.len() || steps.contains(&0) {
            return None;
        }
        axes.iter()
            .zip(starts.into_iter().zip(ends.into_iter().zip(steps)))
            .map(|(&ax, (s, (e, st)))| Some((norm_axis(ax, rank)?, s, e, st)))
            .collect()
    }
}

/// Bounds at or past this are "to the end" on a symbolic axis (exporters write 2^31 - 1,
/// 2^63 - 1 or 10^9 for it); no real axis is that long.
const OPEN_END: i64 = 1_000_000_000;

/// Length of `start..end` by `step` on an axis of size `d`, with ONNX's clamping. With a
/// symbolic size or bounds, the forms exporters write: positive steps with bounds inside the
/// axis, counted from either end or open, and a full reversal.
fn slice_len(d: &Expr, start: &Expr, end: &Expr, step: i64) -> Option<Expr> {
    if let (Some(n), Some(start), Some(end)) = (d.as_int(), start.as_int(), end.as_int()) {
        let fix = |v: i64, lo: i64, hi: i64| {
            let v = if v < 0 { v.saturating_add(n) } else { v };
            v.clamp(lo, hi)
        };
        let len = if step > 0 {
            let (b, e) = (fix(start, 0, n), fix(end, 0, n));
            if e > b {
                e.checked_sub(b)?
                    .checked_add(step.checked_sub(1)?)?
                    .checked_div(step)?
            } else {
                0
            }
        } else {
            let (b, e) = (
                fix(start, -1, n.checked_sub(1)?),
                fix(end, -1, n.checked_sub(1)?),
            );
            if b > e {
                b.checked_sub(e)?
                    .checked_sub(step)?
                    .checked_sub(1)?
                    .checked_div(step.checked_neg()?)?
            } else {
                0
            }
        };
        return Some(Expr::int(len));
    }
    let bound = |v: &Expr| -> Option<Expr> {
        match v.as_int() {
            Some(x) if x >= OPEN_END => Some(d.clone()),
            Some(x) if x < 0 => d.add_int(x),
            _ => Some(v.clone()),
        }
    };
    if step > 0 {
        bound(end)?.checked_sub(&bound(start)?)?.ceil_div(step)
    } else if step == -1
        && start.as_int() == Some(-1)
        && end.as_int().is_some_and(|e| e <= -OPEN_END)
    {
        Some(d.clone())
    } else {
        None
    }
}

/// `Resize` / `Upsample`: where scales and sizes come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resize {
    pub scales_input: Option<usize>,
    pub scales_attr: Option<Vec<f32>>,
    pub sizes_input: Option<usize>,
    pub axes: Option<Vec<i64>>,
}

impl Resize {
    pub(super) fn parse(n: &NodeProto, opset: i64) -> Resize {
        let a = Attrs(n);
        let upsample = n.op_type == "Upsample";
        let (scales_input, sizes_input) = match (upsample, opset) {
            (true, v) if v < 9 => (None, None),
            (true, _) | (false, 10) => (Some(1), None),
            (false, _) => (Some(2), Some(3)),
        };
        Resize {
            scales_input,
            scales_attr: a.floats("scales"),
            sizes_input,
            axes: a.ints("axes"),
        }
    }

    fn infer(&self, ins: &[Facts]) -> Option<Vec<Expr>> {
        let x = ins.first()?.shape.as_ref()?;
        let axes: Vec<usize> = match &self.axes {
            Some(a) => a
                .iter()
                .map(|&v| norm_axis(v, x.len()))
                .collect::<Option<_>>()?,
            None => (0..x.len()).collect(),
        };
        let mut out = x.clone();
        let input = |i: Option<usize>| i.and_then(|i| ins.get(i)).filter(|f| f.present);
        if let Some(sizes) = input(self.sizes_input)
            .and_then(|f| f.value.clone())
            .filter(|v| !v.is_empty())
        {
            if sizes.len() != axes.len() {
                return None;
            }
            for (&a, s) in axes.iter().zip(sizes) {
                *out.get_mut(a)? = s;
            }
            return Some(out);
        }
        let scales: Vec<f64> = match (
            input(self.scales_input).and_then(|f| f.floats.clone()),
            &self.scales_attr,
        ) {
            (Some(s), _) if !s.is_empty() => s,
            (_, Some(s)) => s.iter().map(|&v| f64::from(v)).collect(),
            _ => return None,
        };
        if scales.len() != axes.len() {
            return None;
        }
        for (&a, s) in axes.iter().zip(scales) {
            let d = out.get_mut(a)?;
            *d = scaled(d, s)?;
        }
        Some(out)
    }
}

/// `floor(d · s)`, exact for scales that are small fractions (2, 0.5, 1.5).
fn scaled(d: &Expr, s: f64) -> Option<Expr> {
    if !(s.is_finite() && s > 0.0) {
        return None;
    }
    if let Some(n) = d.as_int() {
        return Some(Expr::int((n as f64 * s).floor() as i64));
    }
    (1..=16i64).find_map(|q| {
        let p = s * q as f64;
        let pr = p.round();
        ((p - pr).abs() < 1e-6).then(|| d.mul_int(pr as i64)?.floor_div(q))?
    })
}

fn shape_of(ins: &[Facts], i: usize) -> Option<&Vec<Expr>> {
    ins.get(i)
        .filter(|f| f.present)
        .and_then(|f| f.shape.as_ref())
}

fn value_of(ins: &[Facts], i: usize) -> Option<&Vec<Expr>> {
    ins.get(i)
        .filter(|f| f.present)
        .and_then(|f| f.value.as_ref())
}

/// Output facts of a layout op; unknown outputs are left default.
pub(super) fn infer(op: &Op, ins: &[Facts], cx: &mut InferCx, outs: usize) -> Vec<Facts> {
    let xv = value_of(ins, 0).cloned();
    let f = match op {
        Op::Reshape { allowzero } => {
            reshape(ins, *allowzero, cx).map(|s| Facts::shaped(s).with_value(xv))
        }
        Op::Flatten { axis } => flatten(ins, *axis),
        Op::Transpose { perm } => transpose(ins, perm.as_deref()),
        Op::Squeeze(axes) => squeeze(ins, axes).map(|f| f.with_value(xv)),
        Op::Unsqueeze(axes) => unsqueeze(ins, axes).map(|f| f.with_value(xv)),
        Op::Concat { axis } => concat(ins, *axis, cx),
        Op::Split { axis, sizes } => return split(ins, *axis, sizes, outs).unwrap_or_default(),
        Op::Slice(spec) => slice(ins, spec),
        Op::Gather { axis } => gather(ins, *axis),
        Op::Shape { start, end } => shape(ins, *start, *end),
        Op::Size => shape_of(ins, 0)
            .and_then(product)
            .map(|p| Facts::shaped(vec![]).with_value(Some(vec![p]))),
        Op::ConstantOfShape(fill) => value_of(ins, 0).map(|v| {
            let n = product(v.iter()).and_then(|p| p.as_usize());
            let value = fill.zip(n).map(|(f, n)| vec![Expr::int(f); n]);
            Facts::shaped(v.clone()).with_value(value)
        }),
        Op::Expand => shape_of(ins, 0)
            .zip(value_of(ins, 1))
            .and_then(|(x, t)| broadcast(x, t, cx))
            .map(Facts::shaped),
        Op::Tile => tile(ins),
        // An unknown length is still a 1-D tensor.
        Op::Range => Some(range(ins).unwrap_or_else(|| Facts::shaped(vec![cx.fresh()]))),
        Op::Pad { pads, .. } => pad(ins, pads),
        Op::Resize(r) => r.infer(ins).map(Facts::shaped),
        _ => return vec![],
    };
    vec![f.unwrap_or_default()]
}

fn flatten(ins: &[Facts], axis: i64) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    let a = norm_axis(axis, x.len().checked_add(1)?)?;
    Some(Facts::shaped(vec![
        product(x.get(..a)?)?,
        product(x.get(a..)?)?,
    ]))
}

fn transpose(ins: &[Facts], perm: Option<&[i64]>) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    let perm: Vec<usize> = match perm {
        Some(p) => p
            .iter()
            .map(|&v| usize::try_from(v).ok())
            .collect::<Option<_>>()?,
        None => (0..x.len()).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..x.len()).collect::<Vec<_>>() {
        return None;
    }
    Some(Facts::shaped(
        perm.iter()
            .map(|&p| x.get(p).cloned())
            .collect::<Option<_>>()?,
    ))
}

fn squeeze(ins: &[Facts], axes: &Source) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    let out: Vec<Expr> = match axes.resolve(ins)? {
        Some(a) => {
            let a = norm_axes(&a, x.len())?;
            x.iter()
                .enumerate()
                .filter(|(i, _)| !a.contains(i))
                .map(|(_, d)| d.clone())
                .collect()
        }
        // Without axes every size-1 axis goes: only decidable with every size known.
        None if x.iter().all(Expr::is_known) => x
            .iter()
            .filter(|d| d.as_int() != Some(1))
            .cloned()
            .collect(),
        None => return None,
    };
    Some(Facts::shaped(out))
}

fn unsqueeze(ins: &[Facts], axes: &Source) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    let a = axes.resolve(ins)??;
    let rank = x.len().checked_add(a.len())?;
    let a = norm_axes(&a, rank)?;
    let mut rest = x.iter();
    let out = (0..rank)
        .map(|i| {
            if a.contains(&i) {
                Some(Expr::int(1))
            } else {
                rest.next().cloned()
            }
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Facts::shaped(out))
}

fn slice(ins: &[Facts], spec: &SliceSpec) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    let ranges = spec.ranges(ins, x.len())?;
    let mut out = x.clone();
    for (a, s, e, st) in &ranges {
        let d = out.get_mut(*a)?;
        *d = slice_len(d, s, e, *st)?;
    }
    // Values of a 1-D shape tensor, contiguous slices.
    let value = match (value_of(ins, 0), ranges.as_slice()) {
        (Some(v), [(0, s, e, 1)]) => (|| {
            let n = i64::try_from(v.len()).ok()?;
            let fix = |b: i64| {
                usize::try_from(if b < 0 { b.saturating_add(n) } else { b }.clamp(0, n)).ok()
            };
            let (b, e) = (fix(s.as_int()?)?, fix(e.as_int()?)?);
            v.get(b..e.max(b)).map(<[Expr]>::to_vec)
        })(),
        _ => None,
    };
    Some(Facts::shaped(out).with_value(value))
}

fn gather(ins: &[Facts], axis: i64) -> Option<Facts> {
    let (x, idx) = (shape_of(ins, 0)?, shape_of(ins, 1)?);
    let a = norm_axis(axis, x.len())?;
    let mut out = x.get(..a)?.to_vec();
    out.extend(idx.iter().cloned());
    out.extend(x.get(a.checked_add(1)?..)?.iter().cloned());
    let value = match (value_of(ins, 0), ins.get(1).and_then(Facts::int_values)) {
        (Some(data), Some(ind)) if x.len() == 1 => ind
            .iter()
            .map(|&i| {
                let n = i64::try_from(data.len()).ok()?;
                data.get(usize::try_from(if i < 0 { i.checked_add(n)? } else { i }).ok()?)
                    .cloned()
            })
            .collect(),
        _ => None,
    };
    Some(Facts::shaped(out).with_value(value))
}

fn shape(ins: &[Facts], start: i64, end: Option<i64>) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    let r = i64::try_from(x.len()).ok()?;
    let clamp = |v: i64| {
        if v < 0 {
            v.saturating_add(r).max(0)
        } else {
            v.min(r)
        }
    };
    let b = usize::try_from(clamp(start)).ok()?;
    let e = usize::try_from(end.map_or(r, clamp)).ok()?.max(b);
    let v = x.get(b..e)?.to_vec();
    Some(Facts::shaped(vec![Expr::int(i64::try_from(v.len()).ok()?)]).with_value(Some(v)))
}

fn tile(ins: &[Facts]) -> Option<Facts> {
    let (x, r) = (shape_of(ins, 0)?, value_of(ins, 1)?);
    if r.len() != x.len() {
        return None;
    }
    Some(Facts::shaped(
        x.iter()
            .zip(r)
            .map(|(d, k)| d.checked_mul(k))
            .collect::<Option<_>>()?,
    ))
}

fn range(ins: &[Facts]) -> Option<Facts> {
    let v = |i: usize| {
        value_of(ins, i)
            .and_then(|v| v.first())
            .and_then(Expr::as_int)
    };
    let (s, l, d) = (v(0)?, v(1)?, v(2)?);
    if d == 0 {
        return None;
    }
    // max(ceil((limit - start) / delta), 0)
    let len = (l.checked_sub(s)?.checked_add(d)?.checked_sub(d.signum())?)
        .checked_div(d)?
        .max(0);
    Some(Facts::shaped(vec![Expr::int(len)]))
}

fn pad(ins: &[Facts], pads: &Source) -> Option<Facts> {
    let x = shape_of(ins, 0)?;
    if ins.get(3).is_some_and(|f| f.present) {
        return None; // `axes` (opset 18): rarely used, left unknown
    }
    let p = pads.resolve(ins)??;
    if p.len() != x.len().checked_mul(2)? {
        return None;
    }
    let out = x
        .iter()
        .enumerate()
        .map(|(i, d)| d.add_int(p.get(i)?.checked_add(*p.get(i.checked_add(x.len())?)?)?))
        .collect::<Option<Vec<_>>>()?;
    Some(Facts::shaped(out))
}

fn reshape(ins: &[Facts], allowzero: bool, cx: &mut InferCx) -> Option<Vec<Expr>> {
    let x = shape_of(ins, 0)?;
    let target = match value_of(ins, 1) {
        Some(t) => t.clone(),
        None => {
            // Target unknown but its length is: the rank, with sizes nothing determines.
            let len = shape_of(ins, 1)?.first()?.as_usize()?;
            return Some((0..len).map(|_| cx.fresh()).collect());
        }
    };
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, d) in target.iter().enumerate() {
        match d.as_int() {
            Some(0) if !allowzero => out.push(x.get(i)?.clone()),
            Some(-1) => {
                if infer_at.replace(i).is_some() {
                    return None;
                }
                out.push(Expr::int(1));
            }
            Some(v) if v < 0 => return None,
            _ => out.push(d.clone()),
        }
    }
    if let Some(i) = infer_at {
        let known = product(out.iter())?;
        let total = product(x.iter())?;
        let v = match (total.as_int(), known.as_int()) {
            (Some(t), Some(k)) if k > 0 && t.checked_rem(k) == Some(0) => {
                Expr::int(t.checked_div(k).unwrap_or(0))
            }
            (Some(_), Some(_)) => return None,
            _ => total.div_exact(&known).unwrap_or_else(|| cx.fresh()),
        };
        *out.get_mut(i)? = v;
    }
    if let (Some(t), Some(o)) = (
        product(x.iter()).and_then(|p| p.as_int()),
        product(out.iter()).and_then(|p| p.as_int()),
    ) {
        if t != o {
            return None;
        }
    }
    Some(out)
}

fn concat(ins: &[Facts], axis: i64, cx: &mut InferCx) -> Option<Facts> {
    let first = shape_of(ins, 0)?;
    let rank = first.len();
    let a = norm_axis(axis, rank)?;
    let mut out = first.clone();
    let mut values: Option<Vec<Expr>> = Some(Vec::new());
    for (i, f) in ins.iter().enumerate().filter(|(_, f)| f.present) {
        let s = f.shape.as_ref()?;
        if s.len() != rank {
            return None;
        }
        if i > 0 {
            let d = out.get_mut(a)?;
            *d = d.checked_add(s.get(a)?)?;
            for (j, (o, x)) in out.iter().zip(s).enumerate() {
                if j != a && o != x {
                    cx.equalities.push((o.clone(), x.clone()));
                }
            }
        }
        values = match (values, &f.value) {
            (Some(mut v), Some(c)) => {
                v.extend(c.iter().cloned());
                Some(v)
            }
            _ => None,
        };
    }
    Some(Facts::shaped(out).with_value(values.filter(|_| rank == 1)))
}

fn split(ins: &[Facts], axis: i64, sizes: &Source, outs: usize) -> Option<Vec<Facts>> {
    let x = shape_of(ins, 0)?;
    let a = norm_axis(axis, x.len())?;
    let d = x.get(a)?;
    let k = i64::try_from(outs).ok()?;
    let sizes: Vec<Expr> = match sizes.resolve(ins)? {
        Some(v) if !v.is_empty() => v.into_iter().map(Expr::int).collect(),
        _ => match d.as_int() {
            Some(n) => {
                let per = n.checked_add(k.checked_sub(1)?)?.checked_div(k)?;
                (0..k)
                    .map(|i| Expr::int(per.min(n.saturating_sub(per.saturating_mul(i))).max(0)))
                    .collect()
            }
            None => vec![d.div_exact(&Expr::int(k))?; outs],
        },
    };
    if sizes.len() != outs {
        return None;
    }
    Some(
        sizes
            .into_iter()
            .map(|s| {
                let mut sh = x.clone();
                if let Some(slot) = sh.get_mut(a) {
                    *slot = s;
                }
                Facts::shaped(sh)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(v: i64) -> Expr {
        Expr::int(v)
    }

    fn val(v: Vec<Expr>) -> Facts {
        Facts::shaped(vec![i(v.len() as i64)]).with_value(Some(v))
    }

    #[test]
    fn shape_arithmetic_stays_symbolic() {
        let mut cx = InferCx::default();
        let (n, h, w) = (Expr::sym("N"), Expr::sym("H"), Expr::sym("W"));
        let x = Facts::shaped(vec![n.clone(), i(32), h.clone(), w.clone()]);
        // Shape -> Reshape [0, 0, -1]: [N, 32, H*W]
        let shape = infer(
            &Op::Shape {
                start: 0,
                end: None,
            },
            std::slice::from_ref(&x),
            &mut cx,
            1,
        )
        .remove(0);
        assert_eq!(
            shape.value,
            Some(vec![n.clone(), i(32), h.clone(), w.clone()])
        );
        let r = reshape(&[x.clone(), val(vec![i(0), i(0), i(-1)])], false, &mut cx).unwrap();
        assert_eq!(r, vec![n.clone(), i(32), product([&h, &w]).unwrap()]);
        // Flatten at 1 before a dense layer: [N, 32*H*W]
        let f = infer(
            &Op::Flatten { axis: 1 },
            std::slice::from_ref(&x),
            &mut cx,
            1,
        )
        .remove(0);
        assert_eq!(f.shape.unwrap()[1].to_string(), "32*H*W");
        // Resize by 2 and Slice 1:-1 on a symbolic axis
        let rs = Resize {
            scales_input: Some(2),
            scales_attr: None,
            sizes_input: Some(3),
            axes: None,
        };
        let scales = Facts {
            present: true,
            shape: Some(vec![i(4)]),
            value: None,
            floats: Some(vec![1.0, 1.0, 2.0, 2.0]),
        };
        let up = rs.infer(&[x.clone(), Facts::default(), scales]).unwrap();
        assert_eq!(up[2], h.mul_int(2).unwrap());
        assert_eq!(slice_len(&h, &i(1), &i(-1), 1), h.add_int(-2));
        assert_eq!(slice_len(&h, &i(0), &i(1_000_000_000), 1), Some(h.clone()));
        assert_eq!(
            slice_len(&i(512), &i(0), &Expr::sym("S"), 1),
            Some(Expr::sym("S"))
        );
        assert_eq!(slice_len(&i(10), &i(-3), &i(i64::MAX), 1), Some(i(3)));
        assert_eq!(slice_len(&i(10), &i(-1), &i(i64::MIN), -1), Some(i(10)));
    }
}
