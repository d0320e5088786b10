//! Unstructured magnitude pruning: the smallest weights by absolute value become zero, to a target
//! sparsity per layer or over all selected layers at once (global).

use super::{
    census, check_fraction, prunable_weights, read_f32, write_f32, zero_smallest, Filter,
    PruneOutcome, Skipped,
};
use crate::graph::editor::Editor;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};

#[derive(Debug, Clone)]
pub struct MagnitudePrune {
    /// Target fraction of zeros in each selected tensor (or over all of them with `global`).
    pub sparsity: f64,
    pub global: bool,
    pub filter: Filter,
}

impl MagnitudePrune {
    pub fn prune(&self, ed: &mut Editor) -> Result<PruneOutcome, PassError> {
        check_fraction("magnitude", "sparsity", self.sparsity)?;
        let weights = prunable_weights(ed.model());
        let before = census(ed.model(), &weights)?;
        let mut skipped = Vec::new();
        let mut chosen = Vec::new();
        for w in &weights {
            if !self.filter.allows(&[&w.name, &w.node], &w.op) {
                continue;
            }
            match read_f32(ed, &w.id)? {
                Some(v) => chosen.push((w, v)),
                None => skipped.push(Skipped {
                    name: w.name.clone(),
                    reason: format!("{} weights are not pruned (float32 only)", w.dtype.name()),
                }),
            }
        }
        let target = |n: usize| (self.sparsity * n as f64).round() as usize;
        if self.global {
            let n: usize = chosen.iter().map(|c| c.1.len()).sum();
            let mut refs: Vec<&mut Vec<f32>> = chosen.iter_mut().map(|c| &mut c.1).collect();
            zero_smallest(&mut refs, target(n));
        } else {
            for (_, v) in chosen.iter_mut() {
                let k = target(v.len());
                zero_smallest(&mut [v], k);
            }
        }
        for (w, v) in &chosen {
            write_f32(ed, w, v)?;
        }
        let after = census(ed.model(), &weights)?;
        let mut out = PruneOutcome::from_census("magnitude", &weights, &before, &after);
        out.skipped = skipped;
        Ok(out)
    }
}

impl Pass for MagnitudePrune {
    fn name(&self) -> &'static str {
        "magnitude-prune"
    }
    fn preserves(&self) -> Preserves {
        Preserves::Interface
    }
    fn run(&self, ed: &mut Editor, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        Ok(self.prune(ed)?.into_report(self.name()))
    }
}
