//! Symbolic sizes: integer polynomials over named symbols (an input's `batch`, `height`, or an
//! opaque unknown) and floor divisions by constants, kept in a canonical form so that two sizes
//! computed the same way compare equal (`(H + 2 - 3) / 1 + 1` is `H`).
//!
//! This is what lets shape inference, channel analysis and MAC counting run on models whose
//! spatial or sequence sizes are symbolic: channel counts stay concrete (they come from weights),
//! and whatever depends on the input size stays an expression until someone gives a value.
//! Arithmetic is checked: an overflow gives `None`, which callers treat as "unknown".

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// A symbolic integer size.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Expr {
    /// Terms sorted by monomial, no zero coefficients, no repeated monomials.
    terms: Vec<(Mono, i64)>,
}

/// A product of atoms with positive exponents, sorted by atom; empty is the constant 1.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Mono(Vec<(Atom, u32)>);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Atom {
    /// A named size: an input dimension's parameter, or an opaque unknown (`?...`).
    Sym(Arc<str>),
    /// `floor(num / den)` with `den > 1` and `num` not a constant.
    FloorDiv(Box<Expr>, i64),
}

impl Mono {
    fn one() -> Mono {
        Mono(Vec::new())
    }

    fn mul(&self, other: &Mono) -> Option<Mono> {
        let mut out = self.0.clone();
        for (a, e) in &other.0 {
            match out.iter_mut().find(|(b, _)| b == a) {
                Some((_, f)) => *f = f.checked_add(*e)?,
                None => out.push((a.clone(), *e)),
            }
        }
        out.sort();
        Some(Mono(out))
    }

    /// `self / d` when `d` divides it.
    fn div(&self, d: &Mono) -> Option<Mono> {
        let mut out = self.0.clone();
        for (a, e) in &d.0 {
            let i = out.iter().position(|(b, _)| b == a)?;
            let slot = out.get_mut(i)?;
            let f = slot.1.checked_sub(*e)?;
            if f == 0 {
                out.remove(i);
            } else {
                slot.1 = f;
            }
        }
        Some(Mono(out))
    }
}

impl Expr {
    /// The constant `v`.
    pub fn int(v: i64) -> Expr {
        Expr::from_terms(vec![(Mono::one(), v)])
    }

    /// The named size `name`.
    pub fn sym(name: &str) -> Expr {
        Expr::atom(Atom::Sym(Arc::from(name)))
    }

    fn atom(a: Atom) -> Expr {
        Expr {
            terms: vec![(Mono(vec![(a, 1)]), 1)],
        }
    }

    /// Canonical form: terms merged, sorted, zero coefficients dropped. `None` on overflow.
    fn normalize(mut terms: Vec<(Mono, i64)>) -> Option<Expr> {
        terms.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Mono, i64)> = Vec::with_capacity(terms.len());
        for (m, c) in terms {
            match out.last_mut() {
                Some((lm, lc)) if *lm == m => *lc = lc.checked_add(c)?,
                _ => out.push((m, c)),
            }
        }
        out.retain(|(_, c)| *c != 0);
        Some(Expr { terms: out })
    }

    fn from_terms(terms: Vec<(Mono, i64)>) -> Expr {
        // Single-term construction cannot overflow.
        Expr::normalize(terms).unwrap_or(Expr { terms: Vec::new() })
    }

    /// The value, when the size does not depend on any symbol.
    pub fn as_int(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [(m, c)] if m.0.is_empty() => Some(*c),
            _ => None,
        }
    }

    /// The value as a `usize`, when known and non-negative.
    pub fn as_usize(&self) -> Option<usize> {
        self.as_int().and_then(|v| usize::try_from(v).ok())
    }

    pub fn is_known(&self) -> bool {
        self.as_int().is_some()
    }

    pub fn checked_add(&self, o: &Expr) -> Option<Expr> {
        Expr::normalize(self.terms.iter().chain(&o.terms).cloned().collect())
    }

    pub fn checked_neg(&self) -> Option<Expr> {
        Some(Expr {
            terms: self
                .terms
                .iter()
                .map(|(m, c)| Some((m.clone(), c.checked_neg()?)))
                .collect::<Option<_>>()?,
        })
    }

    pub fn checked_sub(&self, o: &Expr) -> Option<Expr> {
        self.checked_add(&o.checked_neg()?)
    }

    pub fn checked_mul(&self, o: &Expr) -> Option<Expr> {
        let mut terms = Vec::with_capacity(self.terms.len().saturating_mul(o.terms.len()));
        for (ma, ca) in &self.terms {
            for (mb, cb) in &o.terms {
                terms.push((ma.mul(mb)?, ca.checked_mul(*cb)?));
            }
        }
        Expr::normalize(terms)
    }

    pub fn add_int(&self, v: i64) -> Option<Expr> {
        self.checked_add(&Expr::int(v))
    }

    pub fn mul_int(&self, v: i64) -> Option<Expr> {
        self.checked_mul(&Expr::int(v))
    }

    /// `floor(self / k)` for `k > 0`, simplified where exact: the part of the polynomial that
    /// `k` divides leaves the floor (it is an integer), as does the constant's quotient.
    pub fn floor_div(&self, k: i64) -> Option<Expr> {
        if k <= 0 {
            return None;
        }
        if k == 1 {
            return Some(self.clone());
        }
        let (mut whole, mut rest) = (Vec::new(), Vec::new());
        let mut constant = 0i64;
        for (m, c) in &self.terms {
            if m.0.is_empty() {
                constant = *c;
            } else if c.checked_rem(k)? == 0 {
                whole.push((m.clone(), c.checked_div(k)?));
            } else {
                rest.push((m.clone(), *c));
            }
        }
        // floor((X + r)/k) = floor((X + r mod k)/k) + r div k, for integer X.
        whole.push((Mono::one(), constant.div_euclid(k)));
        let r = constant.rem_euclid(k);
        let whole = Expr::normalize(whole)?;
        if rest.is_empty() {
            // 0 <= r < k: floor(r / k) = 0.
            return Some(whole);
        }
        // floor((floor(x / a) + r) / k) = floor((x + r a) / (a k)), for integer x.
        if let [(m, 1)] = rest.as_slice() {
            if let [(Atom::FloorDiv(x, a), 1)] = m.0.as_slice() {
                let inner = x
                    .add_int(r.checked_mul(*a)?)?
                    .floor_div(a.checked_mul(k)?)?;
                return whole.checked_add(&inner);
            }
        }
        rest.push((Mono::one(), r));
        let rest = Expr::normalize(rest)?;
        whole.checked_add(&Expr::atom(Atom::FloorDiv(Box::new(rest), k)))
    }

    /// `ceil(self / k)` for `k > 0`.
    pub fn ceil_div(&self, k: i64) -> Option<Expr> {
        self.add_int(k.checked_sub(1)?)?.floor_div(k)
    }

    /// `self / d` when it is exact as polynomials: `d` a nonzero constant or one term dividing
    /// every term of `self` (`H*W*C / C = H*W`), or `self == d`.
    pub fn div_exact(&self, d: &Expr) -> Option<Expr> {
        if self == d && !d.terms.is_empty() {
            return Some(Expr::int(1));
        }
        let [(dm, dc)] = d.terms.as_slice() else {
            return None;
        };
        let terms = self
            .terms
            .iter()
            .map(|(m, c)| {
                (c.checked_rem(*dc)? == 0).then(|| Some((m.div(dm)?, c.checked_div(*dc)?)))?
            })
            .collect::<Option<Vec<_>>>()?;
        Expr::normalize(terms)
    }

    /// The value under an assignment of symbols (`None` when a symbol has none, on overflow or
    /// division by zero).
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut sum = 0i64;
        for (m, c) in &self.terms {
            let mut p = *c;
            for (a, e) in &m.0 {
                let v = match a {
                    Atom::Sym(s) => env(s)?,
                    Atom::FloorDiv(x, k) => x.eval(env)?.checked_div_euclid(*k)?,
                };
                p = p.checked_mul(v.checked_pow(*e)?)?;
            }
            sum = sum.checked_add(p)?;
        }
        Some(sum)
    }

    /// Every named symbol the size depends on.
    pub fn symbols(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_symbols(&mut out);
        out
    }

    fn collect_symbols(&self, out: &mut BTreeSet<String>) {
        for (m, _) in &self.terms {
            for (a, _) in &m.0 {
                match a {
                    Atom::Sym(s) => {
                        out.insert(s.to_string());
                    }
                    Atom::FloorDiv(x, _) => x.collect_symbols(out),
                }
            }
        }
    }
}

/// The product of sizes (`None` on overflow).
pub fn product<'a>(dims: impl IntoIterator<Item = &'a Expr>) -> Option<Expr> {
    dims.into_iter()
        .try_fold(Expr::int(1), |acc, d| acc.checked_mul(d))
}

/// Sizes as concrete values, when all are known and non-negative.
pub fn concrete(dims: &[Expr]) -> Option<Vec<usize>> {
    dims.iter().map(Expr::as_usize).collect()
}

/// Concrete sizes as expressions.
pub fn known(dims: &[usize]) -> Option<Vec<Expr>> {
    dims.iter()
        .map(|&d| i64::try_from(d).ok().map(Expr::int))
        .collect()
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Sym(s) => f.write_str(s),
            Atom::FloorDiv(x, k) => write!(f, "floor(({x})/{k})"),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Highest degree first reads naturally: `2*H*W + H + 1`.
        let mut terms: Vec<&(Mono, i64)> = self.terms.iter().collect();
        terms.sort_by_key(|(m, _)| std::cmp::Reverse(m.0.iter().map(|(_, e)| *e).sum::<u32>()));
        for (i, (m, c)) in terms.iter().enumerate() {
            let (sign, mag) = (*c < 0, c.unsigned_abs());
            match (i, sign) {
                (0, true) => f.write_str("-")?,
                (0, false) => {}
                (_, true) => f.write_str(" - ")?,
                (_, false) => f.write_str(" + ")?,
            }
            let factors: Vec<String> =
                m.0.iter()
                    .map(|(a, e)| {
                        if *e == 1 {
                            a.to_string()
                        } else {
                            format!("{a}^{e}")
                        }
                    })
                    .collect();
            match (mag, factors.is_empty()) {
                (_, true) => write!(f, "{mag}")?,
                (1, false) => f.write_str(&factors.join("*"))?,
                _ => write!(f, "{mag}*{}", factors.join("*"))?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h() -> Expr {
        Expr::sym("H")
    }

    #[test]
    fn convolution_arithmetic_simplifies() {
        // k3 p1 s1: (H + 2 - 3)/1 + 1 = H
        let same = h().add_int(2 - 3).unwrap().floor_div(1).unwrap().add_int(1);
        assert_eq!(same, Some(h()));
        // k3 p1 s2 twice: floor((floor((H - 1)/2) + 1 - 1)/2) + 1 = floor((H - 1)/4) + 1
        let once = h()
            .add_int(-1)
            .unwrap()
            .floor_div(2)
            .unwrap()
            .add_int(1)
            .unwrap();
        let twice = once
            .add_int(-1)
            .unwrap()
            .floor_div(2)
            .unwrap()
            .add_int(1)
            .unwrap();
        let direct = h()
            .add_int(-1)
            .unwrap()
            .floor_div(4)
            .unwrap()
            .add_int(1)
            .unwrap();
        assert_eq!(twice, direct);
        assert_eq!(twice.to_string(), "floor((H + 3)/4)");
        // (2H + 1) / 2 = H
        assert_eq!(
            h().mul_int(2).unwrap().add_int(1).unwrap().floor_div(2),
            Some(h())
        );
    }

    #[test]
    fn products_cancel_exactly() {
        let (c, w) = (Expr::int(32), Expr::sym("W"));
        let total = product([&c, &h(), &w]).unwrap();
        assert_eq!(total.div_exact(&c), product([&h(), &w]));
        assert_eq!(
            total.div_exact(&product([&c, &h()]).unwrap()),
            Some(w.clone())
        );
        assert_eq!(h().div_exact(&w), None);
        assert_eq!(Expr::int(7).div_exact(&Expr::int(2)), None);
        assert_eq!(total.to_string(), "32*H*W");
    }

    #[test]
    fn overflow_is_none() {
        let big = Expr::int(i64::MAX);
        assert_eq!(big.add_int(1), None);
        assert_eq!(big.mul_int(2), None);
        assert_eq!(h().floor_div(0), None);
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            (-20i64..20).prop_map(Expr::int),
            Just(Expr::sym("a")),
            Just(Expr::sym("b")),
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone())
                    .prop_filter_map("overflow", |(x, y)| x.checked_add(&y)),
                (inner.clone(), inner.clone())
                    .prop_filter_map("overflow", |(x, y)| x.checked_sub(&y)),
                (inner.clone(), inner.clone())
                    .prop_filter_map("overflow", |(x, y)| x.checked_mul(&y)),
                (inner.clone(), 1i64..6).prop_filter_map("overflow", |(x, k)| x.floor_div(k)),
                (inner, 1i64..6).prop_filter_map("overflow", |(x, k)| x.ceil_div(k)),
            ]
        })
    }

    proptest! {
        /// Simplification never changes a value: every operation commutes with evaluation.
        #[test]
        fn operations_commute_with_evaluation(x in arb_expr(), y in arb_expr(), a in -30i64..30, b in -30i64..30, k in 1i64..7) {
            let env = |s: &str| match s { "a" => Some(a), "b" => Some(b), _ => None };
            let (Some(vx), Some(vy)) = (x.eval(&env), y.eval(&env)) else { return Ok(()) };
            if let (Some(s), Some(v)) = (x.checked_add(&y), vx.checked_add(vy)) {
                prop_assert_eq!(s.eval(&env), Some(v));
            }
            if let (Some(p), Some(v)) = (x.checked_mul(&y), vx.checked_mul(vy)) {
                prop_assert_eq!(p.eval(&env), Some(v));
            }
            prop_assert_eq!(x.floor_div(k).unwrap().eval(&env), Some(vx.div_euclid(k)));
            prop_assert_eq!(x.ceil_div(k).unwrap().eval(&env), Some((vx + k - 1).div_euclid(k)));
            if let (Some(q), Some(qv)) = (x.div_exact(&y), x.div_exact(&y).and_then(|q| q.eval(&env))) {
                let _ = q;
                prop_assert_eq!(qv.checked_mul(vy), Some(vx));
            }
            // Canonical: an expression equals itself rebuilt through addition of zero.
            prop_assert_eq!(x.add_int(0).unwrap(), x.clone());
        }
    }
}
