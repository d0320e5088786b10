//! N:M semi-structured pruning: in every run of M consecutive weights along the reduction axis
//! (input channels of a convolution, input features of a dense layer), only the N largest by
//! magnitude stay (2:4 is what sparse tensor cores accelerate).

use super::{census, prunable_weights, read_f32, write_f32, Filter, PruneOutcome, Skipped};
use crate::graph::editor::Editor;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};

#[derive(Debug, Clone)]
pub struct NmPrune {
    pub n: usize,
    pub m: usize,
    pub filter: Filter,
}

/// Keeps the `n` largest of every `m` consecutive entries along `axis` of a tensor of `dims`.
pub fn apply_nm(v: &mut [f32], dims: &[usize], axis: usize, n: usize, m: usize) {
    let len = dims.get(axis).copied().unwrap_or(1);
    let inner: usize = dims.get(axis + 1..).map_or(1, |d| d.iter().product());
    let outer: usize = dims[..axis.min(dims.len())].iter().product();
    let mut idx: Vec<usize> = Vec::with_capacity(m);
    for o in 0..outer {
        for i in 0..inner {
            for start in (0..len).step_by(m.max(1)) {
                idx.clear();
                idx.extend((start..(start + m).min(len)).map(|a| (o * len + a) * inner + i));
                // Largest first, earlier position first among equals: deterministic.
                idx.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()).then(a.cmp(&b)));
                for &j in idx.iter().skip(n) {
                    v[j] = 0.0;
                }
            }
        }
    }
}

impl NmPrune {
    pub fn prune(&self, ed: &mut Editor) -> Result<PruneOutcome, PassError> {
        if self.m == 0 || self.n > self.m {
            return Err(PassError::Invalid {
                pass: "nm",
                reason: format!("{}:{} is not an N:M pattern with N <= M", self.n, self.m),
            });
        }
        let weights = prunable_weights(ed.model());
        let before = census(ed.model(), &weights)?;
        let mut skipped = Vec::new();
        for w in &weights {
            if !self.filter.allows(&[&w.name, &w.node], &w.op) {
                continue;
            }
            let len = w.dims[w.reduce_axis];
            if len % self.m != 0 {
                skipped.push(Skipped {
                    name: w.name.clone(),
                    reason: format!("its reduction axis ({len}) is not a multiple of {}", self.m),
                });
                continue;
            }
            let Some(mut v) = read_f32(ed, &w.id)? else {
                skipped.push(Skipped {
                    name: w.name.clone(),
                    reason: format!("{} weights are not pruned (float32 only)", w.dtype.name()),
                });
                continue;
            };
            apply_nm(&mut v, &w.dims, w.reduce_axis, self.n, self.m);
            write_f32(ed, w, &v)?;
        }
        let after = census(ed.model(), &weights)?;
        let mut out = PruneOutcome::from_census(
            &format!("nm {}:{}", self.n, self.m),
            &weights,
            &before,
            &after,
        );
        out.skipped = skipped;
        Ok(out)
    }
}

impl Pass for NmPrune {
    fn name(&self) -> &'static str {
        "nm-prune"
    }
    fn preserves(&self) -> Preserves {
        Preserves::Interface
    }
    fn run(&self, ed: &mut Editor, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        Ok(self.prune(ed)?.into_report(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::apply_nm;

    #[test]
    fn two_of_four_along_axis_one() {
        // [2, 4, 1]: rows are outputs, axis 1 is the reduction.
        let mut v = vec![1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3];
        apply_nm(&mut v, &[2, 4, 1], 1, 2, 4);
        assert_eq!(v, vec![0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 0.3]);
        // Along axis 0 of [4, 2]: columns are the runs.
        let mut w = vec![1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0];
        apply_nm(&mut w, &[4, 2], 0, 2, 4);
        assert_eq!(w, vec![0.0, 8.0, 0.0, 7.0, 3.0, 0.0, 4.0, 0.0]);
    }
}
