//! Least squares for layer reconstruction, in float64 with faer: normal equations accumulated
//! batch by batch (`H = XᵀX`, `C = XᵀY`, `Σy²`, never the rows themselves), a ridge solve pulled
//! towards the current weights, and the residual of any weights from the same statistics.

use faer::linalg::matmul::matmul;
use faer::prelude::Solve;
use faer::{Accum, Mat, Par, Side};

/// Normal equations of `min ‖Y − X·B‖²` over the rows seen so far (`B [features, outputs]`).
#[derive(Debug, Clone)]
pub struct Normal {
    pub h: Mat<f64>,
    pub c: Mat<f64>,
    /// Σ y² per output.
    pub yy: Vec<f64>,
    pub rows: usize,
}

impl Normal {
    pub fn new(features: usize, outputs: usize) -> Normal {
        Normal {
            h: Mat::zeros(features, features),
            c: Mat::zeros(features, outputs),
            yy: vec![0.0; outputs],
            rows: 0,
        }
    }

    /// Adds rows `x [n, features]` with targets `y [n, outputs]`.
    pub fn add(&mut self, x: &Mat<f64>, y: &Mat<f64>) {
        if x.nrows() == 0 || x.ncols() != self.h.nrows() || y.nrows() != x.nrows() {
            return;
        }
        matmul(&mut self.h, Accum::Add, x.transpose(), x, 1.0, Par::Seq);
        matmul(&mut self.c, Accum::Add, x.transpose(), y, 1.0, Par::Seq);
        for j in 0..y.ncols().min(self.yy.len()) {
            self.yy[j] += y.col(j).squared_norm_l2();
        }
        self.rows += x.nrows();
    }

    /// Σ‖y − x·b‖² over the rows seen: `Σy² − 2 tr(BᵀC) + tr(BᵀHB)`.
    pub fn residual(&self, b: &Mat<f64>) -> f64 {
        let hb = &self.h * b;
        let mut r: f64 = self.yy.iter().sum();
        for j in 0..b.ncols() {
            for i in 0..b.nrows() {
                r += b[(i, j)] * (hb[(i, j)] - 2.0 * self.c[(i, j)]);
            }
        }
        r.max(0.0)
    }

    pub fn energy(&self) -> f64 {
        self.yy.iter().sum()
    }
}

/// `argmin ‖Y − XB‖² + λ‖B − B₀‖²` with `λ = damp · mean(diag H)`: the least-squares fit,
/// pulled towards `b0` where the data leave directions undetermined (fewer rows than
/// features, constant or collinear inputs). Damping grows tenfold until `H + λI` factorises;
/// `None` if it never does (non-finite statistics).
pub fn ridge(n: &Normal, b0: &Mat<f64>, damp: f64) -> Option<Mat<f64>> {
    let k = n.h.nrows();
    if k == 0 || b0.nrows() != k || b0.ncols() != n.c.ncols() {
        return None;
    }
    let mean_diag = (0..k).map(|i| n.h[(i, i)]).sum::<f64>() / k as f64;
    if !mean_diag.is_finite() {
        return None;
    }
    let scale = if mean_diag > 0.0 { mean_diag } else { 1.0 };
    let mut d = damp.max(0.0);
    for _ in 0..8 {
        let lambda = d * scale;
        let mut a = n.h.clone();
        for i in 0..k {
            a[(i, i)] += lambda;
        }
        let rhs = &n.c + b0 * faer::Scale(lambda);
        if let Ok(llt) = a.llt(Side::Lower) {
            let b = llt.solve(&rhs);
            if b.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                return Some(b);
            }
        }
        d = if d == 0.0 { 1e-10 } else { d * 10.0 };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_an_exact_linear_map() {
        // y = x·B with B known; 40 rows of 5 features.
        let b = Mat::from_fn(5, 3, |i, j| (i as f64 - 2.0) * 0.5 + j as f64);
        let x = Mat::from_fn(40, 5, |r, i| {
            ((r * 7 + i * 13) % 11) as f64 - 5.0 + (r * i) as f64 * 0.01
        });
        let y = &x * &b;
        let mut n = Normal::new(5, 3);
        n.add(&x, &y);
        let got = ridge(&n, &Mat::zeros(5, 3), 0.0).unwrap();
        for i in 0..5 {
            for j in 0..3 {
                assert!((got[(i, j)] - b[(i, j)]).abs() < 1e-9, "{i},{j}");
            }
        }
        assert!(n.residual(&got) < 1e-12 * n.energy());
    }
}
