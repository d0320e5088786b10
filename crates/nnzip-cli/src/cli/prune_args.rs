//! Pruning options of `nnzip compress` (a subset of `nnzip prune`'s, same meaning); mapped to
//! the pipeline by `nnzip::batch::options::ItemOptions`.

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
