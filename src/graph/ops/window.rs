//! Sliding windows: `Conv`, `ConvTranspose`, pooling. Attributes are validated when parsed
//! (kernel, strides and dilations positive, pads non-negative, a known `auto_pad`), so the size
//! arithmetic below only meets ONNX-valid values.

use onnx_protobuf::NodeProto;

use super::{invalid, Attrs, Facts, InferCx, OpError};
use crate::graph::sym::Expr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// One spatial axis of a window.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWindow {
    pub kernel: Expr,
    pub stride: i64,
    pub dilation: i64,
    pub pad_begin: i64,
    pub pad_end: i64,
}

impl AxisWindow {
    /// `dilation (kernel - 1) + 1`.
    pub fn effective(&self) -> Option<Expr> {
        self.kernel.add_int(-1)?.mul_int(self.dilation)?.add_int(1)
    }
}

/// Window attributes shared by `Conv` and pooling.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `kernel_shape`; for `Conv` it may be left to the weight's shape.
    pub kernel: Option<Vec<i64>>,
    pub strides: Option<Vec<i64>>,
    pub dilations: Option<Vec<i64>>,
    /// Begin pads of every spatial axis, then end pads.
    pub pads: Option<Vec<i64>>,
    pub auto_pad: AutoPad,
    pub group: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average,
    Lp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub kind: PoolKind,
    pub window: Window,
    pub ceil_mode: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConvTranspose {
    pub window: Window,
    pub output_padding: Option<Vec<i64>>,
    pub output_shape: Option<Vec<i64>>,
}

fn positive(op: &str, name: &str, v: &Option<Vec<i64>>) -> Result<(), OpError> {
    match v {
        Some(v) if v.iter().any(|&x| x < 1) => {
            Err(invalid(op, format!("{name} {v:?} must be positive")))
        }
        _ => Ok(()),
    }
}

impl Window {
    pub fn parse(n: &NodeProto, op: &str) -> Result<Window, OpError> {
        let a = Attrs(n);
        let auto_pad = match a.string("auto_pad").as_deref() {
            None | Some("") | Some("NOTSET") => AutoPad::NotSet,
            Some("SAME_UPPER") => AutoPad::SameUpper,
            Some("SAME_LOWER") => AutoPad::SameLower,
            Some("VALID") => AutoPad::Valid,
            Some(other) => return Err(invalid(op, format!("unknown auto_pad '{other}'"))),
        };
        let w = Window {
            kernel: a.ints("kernel_shape"),
            strides: a.ints("strides"),
            dilations: a.ints("dilations"),
            pads: a.ints("pads"),
            auto_pad,
            group: a.int("group", 1),
        };
        positive(op, "kernel_shape", &w.kernel)?;
        positive(op, "strides", &w.strides)?;
        positive(op, "dilations", &w.dilations)?;
        if let Some(p) = &w.pads {
            if p.iter().any(|&x| x < 0) || p.len() % 2 != 0 {
                return Err(invalid(
                    op,
                    format!("pads {p:?} must be non-negative, begin and end per axis"),
                ));
            }
        }
        if w.group < 1 {
            return Err(invalid(op, format!("group {} must be positive", w.group)));
        }
        Ok(w)
    }

    /// Kernel size, stride, dilation, begin and end pad of spatial axis `i` of `sp`; the kernel
    /// from `weight_kernel` when the attribute is absent. `None` when the attributes do not
    /// cover `sp` axes.
    pub fn axis(&self, i: usize, sp: usize, weight_kernel: Option<&[Expr]>) -> Option<AxisWindow> {
        let get = |v: &Option<Vec<i64>>, j: usize, d: i64| -> Option<i64> {
            match v {
                Some(v) if v.len() == sp || Some(v.len()) == sp.checked_mul(2) => v.get(j).copied(),
                Some(_) => None,
                None => Some(d),
            }
        };
        let k = match &self.kernel {
            Some(k) if k.len() == sp => Expr::int(*k.get(i)?),
            Some(_) => return None,
            None => weight_kernel?.get(i)?.clone(),
        };
        Some(AxisWindow {
            kernel: k,
            stride: get(&self.strides, i, 1)?,
            dilation: get(&self.dilations, i, 1)?,
            pad_begin: get(&self.pads, i, 0)?,
            pad_end: get(&self.pads, i.checked_add(sp)?, 0)?,
        })
    }

    /// Output spatial size of one axis (ONNX's formulas; `ceil` for pooling's `ceil_mode`).
    fn out_size(&self, input: &Expr, w: &AxisWindow, ceil: bool) -> Option<Expr> {
        let s = w.stride;
        match self.auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => input.ceil_div(s),
            AutoPad::Valid => input.checked_sub(&w.effective()?)?.floor_div(s)?.add_int(1),
            AutoPad::NotSet => {
                let span = input
                    .add_int(w.pad_begin.checked_add(w.pad_end)?)?
                    .checked_sub(&w.effective()?)?;
                let q = if ceil {
                    span.ceil_div(s)?
                } else {
                    span.floor_div(s)?
                };
                q.add_int(1)
            }
        }
    }

    /// Begin and end pads actually applied on an axis, `auto_pad` included (needs the sizes for
    /// `SAME_*`).
    pub fn applied_pads(
        &self,
        input: &Expr,
        output: &Expr,
        w: &AxisWindow,
    ) -> Option<(Expr, Expr)> {
        match self.auto_pad {
            AutoPad::NotSet => Some((Expr::int(w.pad_begin), Expr::int(w.pad_end))),
            AutoPad::Valid => Some((Expr::int(0), Expr::int(0))),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let total = output
                    .add_int(-1)?
                    .mul_int(w.stride)?
                    .checked_add(&w.effective()?)?
                    .checked_sub(input)?;
                let t = total.as_int()?.max(0);
                let small = t.checked_div(2)?;
                let big = t.checked_sub(small)?;
                Some(if self.auto_pad == AutoPad::SameUpper {
                    (Expr::int(small), Expr::int(big))
                } else {
                    (Expr::int(big), Expr::int(small))
                })
            }
        }
    }

    /// `[N, C, spatial...]` → output spatial sizes.
    fn spatial_out(
        &self,
        x: &[Expr],
        weight_kernel: Option<&[Expr]>,
        ceil: bool,
        cx: &mut InferCx,
    ) -> Option<Vec<Expr>> {
        let sp = x.len().checked_sub(2)?;
        if sp == 0 {
            return None;
        }
        (0..sp)
            .map(|i| {
                let w = self.axis(i, sp, weight_kernel)?;
                let o = self.out_size(x.get(i.checked_add(2)?)?, &w, ceil)?;
                // A window that does not fit: the model is invalid at these sizes.
                match o.as_int() {
                    Some(v) if v < 1 => {
                        cx.impossible = cx.impossible.saturating_add(1);
                        None
                    }
                    _ => Some(o),
                }
            })
            .collect()
    }

    pub(super) fn infer_conv(&self, ins: &[Facts], cx: &mut InferCx) -> Facts {
        let (Some(x), Some(w)) = (
            ins.first().and_then(|f| f.shape.as_ref()),
            ins.get(1).and_then(|f| f.shape.as_ref()),
        ) else {
            return Facts::default();
        };
        if x.len() < 3 || w.len() != x.len() {
            return Facts::default();
        }
        let (Some(n), Some(m)) = (x.first(), w.first()) else {
            return Facts::default();
        };
        let Some(sp) = self.spatial_out(x, w.get(2..), false, cx) else {
            return Facts::default();
        };
        let mut out = vec![n.clone(), m.clone()];
        out.extend(sp);
        Facts::shaped(out)
    }

    /// Whether the window only adds zeros beyond the borders (no padding at all).
    pub fn unpadded(&self) -> bool {
        self.auto_pad == AutoPad::Valid
            || (self.auto_pad == AutoPad::NotSet
                && self.pads.as_ref().is_none_or(|p| p.iter().all(|&x| x == 0)))
    }
}

impl Pool {
    pub fn parse(n: &NodeProto, op: &str) -> Result<Pool, OpError> {
        let window = Window::parse(n, op)?;
        if window.kernel.is_none() {
            return Err(invalid(op, "no kernel_shape"));
        }
        Ok(Pool {
            kind: match op {
                "MaxPool" => PoolKind::Max,
                "AveragePool" => PoolKind::Average,
                _ => PoolKind::Lp,
            },
            window,
            ceil_mode: Attrs(n).flag("ceil_mode"),
        })
    }

    pub(super) fn infer(&self, ins: &[Facts], cx: &mut InferCx) -> Facts {
        let Some(x) = ins.first().and_then(|f| f.shape.as_ref()) else {
            return Facts::default();
        };
        let Some(sp) = self.window.spatial_out(x, None, self.ceil_mode, cx) else {
            return Facts::default();
        };
        let mut out: Vec<Expr> = x.iter().take(2).cloned().collect();
        out.extend(sp);
        Facts::shaped(out)
    }
}

impl ConvTranspose {
    pub fn parse(n: &NodeProto) -> Result<ConvTranspose, OpError> {
        let window = Window::parse(n, "ConvTranspose")?;
        let a = Attrs(n);
        let t = ConvTranspose {
            window,
            output_padding: a.ints("output_padding"),
            output_shape: a.ints("output_shape"),
        };
        if t.output_padding
            .as_ref()
            .is_some_and(|p| p.iter().any(|&x| x < 0))
            || t.output_shape
                .as_ref()
                .is_some_and(|p| p.iter().any(|&x| x < 1))
        {
            return Err(invalid(
                "ConvTranspose",
                "negative output_padding or output_shape",
            ));
        }
        Ok(t)
    }

    pub(super) fn infer(&self, ins: &[Facts], _cx: &mut InferCx) -> Facts {
        let (Some(x), Some(w)) = (
            ins.first().and_then(|f| f.shape.as_ref()),
            ins.get(1).and_then(|f| f.shape.as_ref()),
        ) else {
            return Facts::default();
        };
        let Some(sp) = x
            .len()
            .checked_sub(2)
            .filter(|&s| s > 0 && w.len() == x.len())
        else {
            return Facts::default();
        };
        let (Some(n), Some(m)) = (
            x.first(),
            w.get(1).and_then(|m| m.mul_int(self.window.group)),
        ) else {
            return Facts::default();
        };
        let mut out = vec![n.clone(), m];
        if let Some(os) = &self.output_shape {
            let Some(tail) = os.len().checked_sub(sp).and_then(|s| os.get(s..)) else {
                return Facts::default();
            };
            out.extend(tail.iter().map(|&d| Expr::int(d)));
            return Facts::shaped(out);
        }
        for i in 0..sp {
            let size = (|| {
                let aw = self.window.axis(i, sp, w.get(2..))?;
                let (k, s, d, pb, pe) =
                    (aw.kernel, aw.stride, aw.dilation, aw.pad_begin, aw.pad_end);
                let input = x.get(i.checked_add(2)?)?;
                if matches!(
                    self.window.auto_pad,
                    AutoPad::SameUpper | AutoPad::SameLower
                ) {
                    return input.mul_int(s);
                }
                let opad = match &self.output_padding {
                    Some(p) => *p.get(i)?,
                    None => 0,
                };
                // s (in - 1) + opad + (k - 1) d + 1 - pads
                input
                    .add_int(-1)?
                    .mul_int(s)?
                    .add_int(opad)?
                    .checked_add(&k.add_int(-1)?.mul_int(d)?)?
                    .add_int(1i64.checked_sub(pb)?.checked_sub(pe)?)
            })();
            match size {
                Some(v) if v.as_int().is_none_or(|x| x > 0) => out.push(v),
                _ => return Facts::default(),
            }
        }
        Facts::shaped(out)
    }
}

pub(super) fn infer_global(ins: &[Facts]) -> Facts {
    let Some(x) = ins.first().and_then(|f| f.shape.as_ref()) else {
        return Facts::default();
    };
    if x.len() < 2 {
        return Facts::default();
    }
    Facts::shaped(
        x.iter()
            .enumerate()
            .map(|(i, d)| if i < 2 { d.clone() } else { Expr::int(1) })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dims: &[Expr]) -> Facts {
        Facts::shaped(dims.to_vec())
    }

    fn conv(attrs: &[(&str, Vec<i64>)]) -> Window {
        Window {
            kernel: attrs.iter().find(|a| a.0 == "k").map(|a| a.1.clone()),
            strides: attrs.iter().find(|a| a.0 == "s").map(|a| a.1.clone()),
            dilations: None,
            pads: attrs.iter().find(|a| a.0 == "p").map(|a| a.1.clone()),
            auto_pad: AutoPad::NotSet,
            group: 1,
        }
    }

    #[test]
    fn windows_match_onnx_formulas() {
        let i = |v: i64| Expr::int(v);
        let mut cx = InferCx::default();
        let x = facts(&[i(1), i(3), i(28), i(28)]);
        let w = facts(&[i(8), i(3), i(3), i(3)]);
        let c = conv(&[("p", vec![1, 1, 1, 1]), ("s", vec![2, 2])]);
        assert_eq!(
            c.infer_conv(&[x.clone(), w.clone()], &mut cx).shape,
            Some(vec![i(1), i(8), i(14), i(14)])
        );
        // symbolic: k3 p1 s1 keeps H
        let hx = facts(&[Expr::sym("N"), i(3), Expr::sym("H"), Expr::sym("W")]);
        let same = conv(&[("p", vec![1, 1, 1, 1])]).infer_conv(&[hx, w.clone()], &mut cx);
        assert_eq!(same.shape.unwrap()[2], Expr::sym("H"));
        // pooling, floor and ceil
        let p = Pool {
            kind: PoolKind::Max,
            window: conv(&[("k", vec![2]), ("s", vec![2])]),
            ceil_mode: false,
        };
        let x7 = facts(&[i(1), i(1), i(7)]);
        assert_eq!(
            p.infer(std::slice::from_ref(&x7), &mut cx).shape.unwrap()[2],
            i(3)
        );
        let pc = Pool {
            ceil_mode: true,
            ..p
        };
        assert_eq!(pc.infer(&[x7], &mut cx).shape.unwrap()[2], i(4));
        // a kernel larger than the padded input is invalid
        let big = conv(&[]).infer_conv(&[facts(&[i(1), i(3), i(2), i(2)]), w], &mut cx);
        assert_eq!(big.shape, None);
    }
}
