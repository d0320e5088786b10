//! Pruning options shared by `nnzip compress` (and the same flags as `nnzip prune`).

use anyhow::{bail, Result};
use nnzip::passes::Pass;

#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Prune first: magnitude, structured, nm or entropy (see `nnzip prune`).
    #[arg(long = "prune", value_name = "METHOD")]
    pub method: Option<String>,
    /// Target sparsity (fraction of weights, or of channels for structured).
    #[arg(long, value_name = "F")]
    pub sparsity: Option<f64>,
}

impl PruneArgs {
    pub fn pass(&self, _has_calib: bool) -> Result<Option<Box<dyn Pass>>> {
        match &self.method {
            None => Ok(None),
            Some(m) => bail!("pruning method '{m}' is not available in this build yet"),
        }
    }
}
