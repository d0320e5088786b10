use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nnzip::onnx::SaveOptions;
use nnzip::pipeline::{prune_file, PipelineError, PruneJob};

use nnzip::passes::prune::{Filter, Method, Norm, PruneConfig, SearchOptions, SearchStep};
use nnzip::runtime::Runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model to prune.
    pub model: PathBuf,
    /// Where to write the pruned model (same shapes, pruned weights zeroed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// magnitude (or unstructured), structured, nm or entropy.
    #[arg(long, default_value = "magnitude", value_parser = parse_method)]
    pub method: Method,
    /// Fraction of weights to zero (structured: of channels). With --max-drop, the search's upper
    /// bound. Default 0.5 (structured 0.25); searching 0.95 (structured 0.9).
    #[arg(long, value_name = "F")]
    pub sparsity: Option<f64>,
    /// Rank over all selected layers at once instead of each layer alone.
    #[arg(long)]
    pub global: bool,
    /// Channel norm for structured pruning: l1 or l2.
    #[arg(long, default_value = "l1", value_parser = parse_norm)]
    pub norm: Norm,
    /// N:M pattern for --method nm (N kept of every M along the reduction axis).
    #[arg(long = "n-m", default_value = "2:4", value_name = "N:M", value_parser = parse_nm)]
    pub n_m: (usize, usize),
    /// Structured: keep channel counts multiples of K.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub round_to: usize,
    /// Calibration data (one array per input, named after it, leading sample axis; optional
    /// `labels`). Reports the metric before and after; needed by --max-drop and entropy.
    #[arg(long, value_name = "FILE.npz")]
    pub calib: Option<PathBuf>,
    /// Held-out data (same format as --calib) to report the metric and the breakdown on (per
    /// class accuracy, prediction flips, entropy, least-confident samples) instead of the
    /// calibration data.
    #[arg(long, value_name = "FILE.npz")]
    pub eval: Option<PathBuf>,
    /// Use only the first N calibration samples (faster searches).
    #[arg(long, value_name = "N")]
    pub calib_samples: Option<usize>,
    /// Search the largest amount whose metric drops by at most X points (bisection).
    #[arg(long, value_name = "X")]
    pub max_drop: Option<f64>,
    /// Bisection steps after probing the upper bound.
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Accept a candidate when its drop plus Z standard errors stays within --max-drop (top-1
    /// metrics); 0 trusts the measured drop alone.
    #[arg(long, default_value_t = 1.0, value_name = "Z")]
    pub confidence_z: f64,
    /// Only layers whose weight name, node name (substring or glob) or op type matches (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave out layers matching (repeatable; wins over --include).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Entropy method: prune-then-measure rounds.
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Entropy method: neurons ON in at most this fraction of the data are removed as dead.
    #[arg(long, default_value_t = 0.01, value_name = "F")]
    pub collapse: f64,
    /// Concrete shape for an input with symbolic dims (repeatable). Default: symbolic batch = 1.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = super::shape_arg)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Print JSON (sparsity, layers, skipped, search, metric; see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Structured: how channels are ranked: l1, l2 (weight norms, as --norm), wanda
    /// (|W|·‖X‖ on the calibration data) or flap (‖W‖²·Var(X)).
    #[arg(long, value_parser = parse_score)]
    pub score: Option<nnzip::passes::prune::alloc::Score>,
    /// Structured: how the amount is spread over the groups: uniform (default), global (as
    /// --global), standardized (FLAP: one threshold over per-group standardised scores) or
    /// measured (each group's damage measured on the calibration data at several levels, then
    /// the cheapest damage per MAC saved first).
    #[arg(long, value_parser = parse_allocation)]
    pub allocate: Option<nnzip::passes::prune::alloc::Allocation>,
    /// Structured: prune to this fraction of the original MACs (e.g. 0.65 removes 35%) instead
    /// of a channel fraction; with --max-drop, the smallest fraction the search may reach.
    #[arg(long, value_name = "F", conflicts_with = "sparsity")]
    pub target_macs: Option<f64>,
    /// Re-fit the layers after structured pruning: each layer whose input changed is fitted by
    /// least squares so that, on the calibration data, its output from the pruned model's input
    /// matches the original model's (sequentially, in graph order). Unstructured (per layer)
    /// and N:M: prune with OBS weight updates (SparseGPT). On by default with --calib.
    #[arg(long, overrides_with = "no_recover")]
    pub recover: bool,
    /// Prune without reconstruction (the weights as the pruning left them).
    #[arg(long)]
    pub no_recover: bool,
    /// Also simplify: remove the pruned channels physically (as `nnzip simplify`), verified on
    /// ONNX Runtime.
    #[arg(long)]
    pub simplify: bool,
    /// Write the result even if its outputs collapse against the input's (cosine under 0.9,
    /// constant, non-finite).
    #[arg(long)]
    pub force: bool,
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s).ok_or_else(|| {
        format!("'{s}' is not one of magnitude (unstructured), structured, nm, entropy")
    })
}

fn parse_score(s: &str) -> Result<nnzip::passes::prune::alloc::Score, String> {
    nnzip::passes::prune::alloc::Score::parse(s)
        .ok_or_else(|| format!("'{s}' is not one of l1, l2, wanda, flap"))
}

fn parse_allocation(s: &str) -> Result<nnzip::passes::prune::alloc::Allocation, String> {
    nnzip::passes::prune::alloc::Allocation::parse(s)
        .ok_or_else(|| format!("'{s}' is not one of uniform, global, standardized, measured"))
}

fn parse_norm(s: &str) -> Result<Norm, String> {
    match s {
        "l1" | "L1" => Ok(Norm::L1),
        "l2" | "L2" => Ok(Norm::L2),
        _ => Err(format!("'{s}' is not l1 or l2")),
    }
}

fn parse_nm(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not N:M with 0 < N <= M (e.g. 2:4)");
    let (n, m) = s.split_once(':').ok_or_else(bad)?;
    let (n, m): (usize, usize) = (
        n.trim().parse().map_err(|_| bad())?,
        m.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || m == 0 || n > m {
        return Err(bad());
    }
    Ok((n, m))
}

pub fn run(a: Args, ort_lib: Option<&Path>, quiet: bool) -> Result<()> {
    check_flags(&a)?;
    let rt = Runtime::get(ort_lib).context("cannot start ONNX Runtime")?;
    let cfg = config(&a);
    let searching = a.max_drop.is_some();
    let amount = match a.target_macs {
        Some(f) => 1.0 - f,
        None => a
            .sparsity
            .unwrap_or_else(|| a.method.default_amount(searching)),
    };

    let search = a.max_drop.map(|x| SearchOptions {
        max_drop: x,
        max_amount: amount,
        steps: a.steps,
        z: a.confidence_z.max(0.0),
        holdout: nnzip::ratecontrol::HOLDOUT,
    });
    let bar = search_bar(quiet || search.is_none(), a.steps);
    let job = PruneJob {
        model: &a.model,
        output: &a.output,
        config: cfg,
        amount,
        calib: a.calib.as_deref(),
        calib_samples: a.calib_samples,
        eval: a.eval.as_deref(),
        search,
        simplify: a.simplify,
        shapes: &a.shapes,
        force: a.force,
    };
    let mut on_step = |s: &SearchStep| {
        bar.set_message(format!(
            "amount {:.3}: {:.2} ({})",
            s.amount,
            s.metric,
            if s.accepted { "ok" } else { "too far" }
        ));
        bar.inc(1);
    };
    let out = prune_file(rt, &job, &mut on_step);
    bar.finish_and_clear();
    let out = out.map_err(|e| {
        let collapsed = matches!(
            e,
            PipelineError::Fidelity(nnzip::fidelity::FidelityError::Collapsed { .. })
        );
        let what = format!("cannot prune {}", a.model.display());
        anyhow::Error::new(e).context(if collapsed {
            format!("{what}: nothing was written; pass --force to write it anyway")
        } else {
            what
        })
    })?;
    if let Some(why) = &out.forced {
        eprintln!("warning: writing anyway (--force): {why}");
    }
    // The text report carries it; with --json, stderr is where a person sees it.
    if let Some(why) = out.report.outcome.plan.as_ref().and_then(|p| p.shortfall()) {
        if a.json {
            eprintln!("warning: {why}");
        }
    }
    let fidelity = &out.report.fidelity;
    let warn_below = nnzip::fidelity::Guard::default().min_cosine;
    if fidelity.verifiable() && fidelity.cosine < warn_below {
        // Pruning is meant to change the outputs (re-fitting or fine-tuning follows), so a low
        // cosine only warns.
        eprintln!(
            "warning: the pruned model's outputs moved far from the original's ({}): re-fit \
             with --calib, lower --sparsity, or fine-tune before use",
            fidelity.summary()
        );
    }
    out.model
        .save(&a.output, &SaveOptions::default())
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    if a.json {
        super::print_json(&out.report)
    } else {
        print!("{}", out.report.to_text());
        Ok(())
    }
}

/// The flag combinations clap cannot check: values in range, and what needs `--calib`.
fn check_flags(a: &Args) -> Result<()> {
    for (what, f) in [("--sparsity", a.sparsity), ("--collapse", Some(a.collapse))] {
        if let Some(f) = f {
            if !(0.0..=1.0).contains(&f) {
                bail!(UsageError(format!("{what} must be in [0, 1], got {f}")));
            }
        }
    }
    if a.max_drop.is_some_and(|x| x.is_nan() || x < 0.0) {
        bail!(UsageError("--max-drop must be >= 0 (points)".into()));
    }
    if a.calib_samples == Some(0) {
        bail!(UsageError("--calib-samples must be at least 1".into()));
    }
    if a.max_drop.is_some() && a.calib.is_none() {
        bail!(UsageError(
            "--max-drop needs calibration data (--calib FILE.npz)".into()
        ));
    }
    if a.method.needs_calibration() && a.calib.is_none() {
        bail!(UsageError(
            "--method entropy needs calibration data (--calib FILE.npz)".into()
        ));
    }
    if a.max_drop.is_some() && !a.method.searchable() {
        bail!(UsageError(
            "--max-drop searches an amount; --method nm has a fixed pattern (use --include/--exclude)"
                .into()
        ));
    }
    if let Some(f) = a.target_macs {
        if !(0.0..=1.0).contains(&f) || a.method != Method::Structured {
            bail!(UsageError(
                "--target-macs F (in [0, 1]) is for --method structured".into()
            ));
        }
    }
    let wants_data = a.score.is_some_and(|s| s.needs_data())
        || a.allocate == Some(nnzip::passes::prune::alloc::Allocation::Measured);
    if wants_data && a.calib.is_none() {
        bail!(UsageError(
            "--score wanda/flap and --allocate measured need calibration data (--calib FILE.npz)"
                .into()
        ));
    }
    if a.recover && a.calib.is_none() {
        bail!(UsageError(
            "--recover fits layers on calibration data (--calib FILE.npz)".into()
        ));
    }
    if a.eval.is_some() && a.calib.is_none() {
        bail!(UsageError(
            "--eval compares on ONNX Runtime; give --calib too".into()
        ));
    }
    Ok(())
}

/// The pruning configuration the flags ask for.
fn config(a: &Args) -> PruneConfig {
    let mut cfg = PruneConfig::new(a.method);
    cfg.global = a.global;
    cfg.norm = a.norm;
    (cfg.n, cfg.m) = a.n_m;
    cfg.round_to = a.round_to.max(1);
    cfg.filter = Filter {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
    };
    cfg.rounds = a.rounds;
    cfg.collapse = a.collapse;
    // Entropy: whole layers may go silent within the same tolerance as the search.
    cfg.layer_drop = a.max_drop;
    cfg.score = a.score;
    cfg.allocation = a.allocate;
    cfg.by_macs = a.target_macs.is_some();
    if a.calib.is_some() && !a.no_recover {
        cfg.recover = Some(nnzip::passes::prune::recover::RecoverOptions::default());
    }
    cfg
}

/// The search's progress bar (hidden when quiet or not searching).
fn search_bar(hidden: bool, steps: usize) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new((steps + 1) as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message("searching");
    b
}

/// A command-line mistake found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
