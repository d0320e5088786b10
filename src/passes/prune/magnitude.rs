//! Unstructured magnitude pruning: the smallest weights by absolute value become zero, to a target
//! sparsity per layer or over all selected layers at once (global).

use super::{
    census, check_fraction, prunable_weights, read_f32, write_f32, zero_smallest, Filter,
    PruneOutcome, Skipped,
};
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};

#[derive(Debug, Clone)]
pub struct MagnitudePrune {
    /// Target fraction of zeros in each selected tensor (or over all of them with `global`).
    pub sparsity: f64,
    pub global: bool,
    pub filter: Filter,
}

impl MagnitudePrune {
    pub fn prune(&self, model: &mut Model) -> Result<PruneOutcome, PassError> {
        check_fraction("magnitude", "sparsity", self.sparsity)?;
        let weights = prunable_weights(model);
        let before = census(model, &weights)?;
        let mut skipped = Vec::new();
        let mut chosen = Vec::new();
        for w in &weights {
            if !self.filter.allows(&[&w.name, &w.node], &w.op) {
                continue;
            }
            match read_f32(model, &w.id)? {
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
            write_f32(model, &w.id, &w.dims, v)?;
        }
        let after = census(model, &weights)?;
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
    fn run(&self, model: &mut Model, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        self.prune(model)?.into_report(self.name())
    }
}
