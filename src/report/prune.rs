//! The report of `nnzip prune`: what was pruned (the pass's outcome), the metric, the amount
//! search, the held-out evaluation and breakdown, simplification and fidelity.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fidelity::Fidelity;
use crate::passes::prune::{PruneOutcome, SearchReport};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricReport {
    pub name: String,
    pub samples: usize,
    pub before: f64,
    pub after: f64,
}

/// The metric and breakdown on one data set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub data: PathBuf,
    #[serde(flatten)]
    pub metric: MetricReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(skip)]
    pub breakdown: Option<crate::calib::breakdown::Breakdown>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    pub input: PathBuf,
    pub output: PathBuf,
    #[serde(flatten)]
    pub outcome: PruneOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalReport>,
    /// Beyond the average, on the --eval data (else the calibration data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<crate::calib::breakdown::Breakdown>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simplify: Option<crate::passes::simplify::SimplifyReport>,
    /// The result's main output against the input's.
    pub fidelity: Fidelity,
}

fn breakdown_text(o: &mut String, b: &crate::calib::breakdown::Breakdown) {
    use std::fmt::Write;
    if !b.per_class.is_empty() {
        let per: Vec<String> = b
            .per_class
            .iter()
            .map(|c| format!("{}: {:.1}->{:.1}", c.class, c.before, c.after))
            .collect();
        let _ = writeln!(o, "per-class accuracy: {}", per.join(", "));
    }
    if let (Some(c), Some(d)) = (b.worst_class, b.worst_class_drop) {
        let _ = writeln!(o, "worst class: {c} (drop {d:+.2} points)");
    }
    let lc = &b.least_confident;
    let _ = writeln!(
        o,
        "prediction flips {:.2}%, mean entropy {:.3} -> {:.3} bits, least confident {:.0}% ({} samples): {:.1} -> {:.1}",
        b.flip_rate,
        b.entropy_before,
        b.entropy_after,
        100.0 * lc.fraction,
        lc.samples,
        lc.before,
        lc.after
    );
}

/// The prune report as text: the layer table, notes, search, metrics, then what followed the
/// pruning (plan, reconstruction, simplification).
pub fn text(r: &PruneReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} -> {} ({})",
        r.input.display(),
        r.output.display(),
        r.outcome.method
    );
    layers_text(&mut o, &r.outcome);
    notes_text(&mut o, &r.outcome);
    if let Some(s) = &r.search {
        search_text(&mut o, s);
    }
    metrics_text(&mut o, r);
    followups_text(&mut o, r);
    o
}

fn pct(f: f64) -> String {
    format!("{:.1}%", 100.0 * f)
}

/// One row a pruned layer, and the overall sparsity.
fn layers_text(o: &mut String, outcome: &PruneOutcome) {
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "{:<32} {:<13} {:>9} {:>8} {:>8} {:>9} {:>13}",
        "layer", "op", "params", "before", "after", "channels", "entropy"
    );
    for l in &outcome.layers {
        let ch = match (l.channels, l.channels_removed) {
            (Some(c), Some(x)) => format!("-{x}/{c}"),
            _ => String::new(),
        };
        let h = match (l.entropy_before, l.entropy_after) {
            (Some(b), Some(a)) => format!("{b:.3}->{a:.3}"),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<32} {:<13} {:>9} {:>8} {:>8} {:>9} {:>13}",
            l.name,
            l.op,
            l.params,
            pct(l.sparsity_before),
            pct(l.sparsity_after),
            ch,
            h
        );
    }
    let _ = writeln!(
        o,
        "sparsity {} -> {} of {} prunable weights",
        pct(outcome.sparsity_before),
        pct(outcome.sparsity),
        outcome.prunable_params
    );
}

/// Layers left at zero entropy (for `simplify --calib`) and layers left alone, with why.
fn notes_text(o: &mut String, outcome: &PruneOutcome) {
    use std::fmt::Write;
    for l in outcome.entropy.iter().filter(|l| l.zero_entropy) {
        let how = match (l.removed, l.linearized) {
            (true, 0) => " after silencing every neuron".to_string(),
            (true, n) => format!(
                " after settling: {n} neuron(s) made always ON, {} constant",
                l.neurons - n
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{}: zero entropy on the calibration data{how} (simplify --calib collapses it)",
            l.layer
        );
    }
    for s in &outcome.skipped {
        let _ = writeln!(o, "left alone: {}: {}", s.name, s.reason);
    }
}

fn search_text(o: &mut String, s: &SearchReport) {
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "search ({}, {} samples, baseline {:.2}, max drop {}):",
        s.metric_name, s.samples, s.baseline, s.max_drop
    );
    for st in &s.steps {
        let _ = writeln!(
            o,
            "  amount {:.4}  {:.2}  drop {:+.2} ± {:.2}{}  SNR {:.1} dB  {}",
            st.amount,
            st.metric,
            st.drop,
            st.stderr,
            st.expected_drop
                .map(|e| format!(" (expected {e:.2})"))
                .unwrap_or_default(),
            st.snr_db,
            if st.accepted { "accepted" } else { "rejected" }
        );
    }
    if let Some(b) = s.held_out_baseline {
        let _ = writeln!(
            o,
            "held out ({} samples, baseline {b:.2}):",
            s.held_out_samples
        );
    }
    for h in &s.held_out {
        let _ = writeln!(
            o,
            "  amount {:.4}  {:.2}  drop {:+.2}{}  SNR {:.1} dB  {}",
            h.amount,
            h.metric,
            h.drop,
            h.stderr.map(|e| format!(" ± {e:.2}")).unwrap_or_default(),
            h.snr_db,
            if h.holds {
                "holds"
            } else {
                "breaks the budget"
            }
        );
    }
    let _ = writeln!(o, "chosen amount {:.4}", s.amount);
    for w in &s.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
}

/// The metric on the calibration data, on the held-out data, and the breakdown.
fn metrics_text(o: &mut String, r: &PruneReport) {
    use std::fmt::Write;
    if let Some(m) = &r.metric {
        let _ = writeln!(
            o,
            "{} on {} samples: {:.2} -> {:.2}",
            m.name, m.samples, m.before, m.after
        );
    }
    if let Some(e) = &r.eval {
        let _ = writeln!(
            o,
            "{} on {} ({} samples): {:.2} -> {:.2}",
            e.metric.name,
            e.data.display(),
            e.metric.samples,
            e.metric.before,
            e.metric.after
        );
    }
    if let Some(b) = &r.breakdown {
        breakdown_text(o, b);
    }
}

/// The planned allocation, the reconstruction and the simplification, where they ran.
fn followups_text(o: &mut String, r: &PruneReport) {
    use std::fmt::Write;
    if let Some(p) = &r.outcome.plan {
        let _ = writeln!(
            o,
            "plan ({:?} scores, {:?} allocation): MACs {:.4e} -> {:.4e} ({:.1}% removed)",
            p.score,
            p.allocation,
            p.macs_before,
            p.macs_planned,
            100.0 * (1.0 - p.macs_planned / p.macs_before.max(1.0))
        );
        if let Some(why) = p.shortfall() {
            let _ = writeln!(o, "  short of the target: {why}");
        }
    }
    if let Some(rc) = &r.outcome.recover {
        let worst = rc
            .layers
            .iter()
            .map(|l| l.error_after)
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            o,
            "reconstruction: {} layers re-fitted in {} waves on {} samples, {:.1} s (largest relative layer error left {:.3})",
            rc.layers.len(),
            rc.waves,
            rc.samples,
            rc.seconds,
            worst
        );
    }
    if let Some(s) = &r.simplify {
        let _ = writeln!(
            o,
            "simplified: parameters {} -> {}, MACs {} -> {}, {} channels removed (max |difference| {:.2e})",
            s.before.parameters,
            s.after.parameters,
            s.before.macs.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
            s.after.macs.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
            s.channels_removed,
            s.verification.max_abs_diff
        );
    }
}

impl PruneReport {
    pub fn to_text(&self) -> String {
        text(self)
    }
}
