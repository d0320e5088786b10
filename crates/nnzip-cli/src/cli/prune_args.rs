//! Pruning options of `nnzip compress` (a subset of `nnzip prune`'s, same meaning).

use anyhow::{bail, Result};
use nnzip::passes::prune::structured::Norm;
use nnzip::passes::prune::{Method, PruneConfig};
use nnzip::pipeline::PruneSpec;

#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Prune first: magnitude, structured, nm or entropy (as `nnzip prune --method`).
    #[arg(long = "prune", value_name = "METHOD")]
    pub method: Option<String>,
    /// Amount: fraction of weights (magnitude, entropy) or of each group's channels (structured).
    /// Without it, and with --max-drop, the largest amount within half the budget is searched.
    #[arg(long, value_name = "F", requires = "method")]
    pub sparsity: Option<f64>,
    /// Rank weights or channels across all layers instead of per layer.
    #[arg(long, requires = "method")]
    pub global: bool,
    /// Channel ranking norm for structured pruning: l1 or l2.
    #[arg(long, default_value = "l1", requires = "method")]
    pub norm: String,
    /// Keep channel counts multiples of K (structured).
    #[arg(long, default_value_t = 1, value_name = "K", requires = "method")]
    pub round_to: usize,
}

impl PruneArgs {
    /// The pruning step; without `--sparsity` and with `--max-drop`, the amount is searched.
    pub fn spec(
        &self,
        has_calib: bool,
        _shapes: &[(String, Vec<usize>)],
    ) -> Result<Option<PruneSpec>> {
        let Some(m) = &self.method else {
            return Ok(None);
        };
        let Some(method) = Method::parse(m) else {
            bail!(super::prune::UsageError(format!(
                "'{m}' is not one of magnitude, structured, nm, entropy"
            )))
        };
        if method.needs_calibration() && !has_calib {
            bail!(super::prune::UsageError(format!(
                "--prune {m} needs calibration data (--calib FILE.npz)"
            )));
        }
        if let Some(f) = self.sparsity {
            if !(0.0..=1.0).contains(&f) {
                bail!(super::prune::UsageError(format!(
                    "--sparsity must be in [0, 1], got {f}"
                )));
            }
        }
        let mut cfg = PruneConfig::new(method);
        cfg.global = self.global;
        cfg.norm = match self.norm.as_str() {
            "l1" | "L1" => Norm::L1,
            "l2" | "L2" => Norm::L2,
            other => bail!(super::prune::UsageError(format!(
                "--norm '{other}' is not l1 or l2"
            ))),
        };
        cfg.round_to = self.round_to.max(1);
        Ok(Some(PruneSpec {
            amount: self.sparsity,
            default_amount: method.default_amount(false),
            make: Box::new(move |f| cfg.pass(f)),
        }))
    }
}
