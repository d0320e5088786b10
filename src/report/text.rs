//! The compress report as facts (a label and a value), shared by the text rendering and the
//! HTML page's details table, and the text rendering itself: lines of at most 80 columns, the
//! values in one column, long values wrapped under it.

use std::fmt::Write;

use super::{CompressReport, Quantization};
use crate::inspect::{bytes_h, si};

/// Width of the text rendering.
pub const COLUMNS: usize = 80;
const KEY_W: usize = 34;

/// One line of the report: what, and its value (a number with its unit, or a sentence).
#[derive(Debug, Clone)]
pub struct Fact {
    pub key: String,
    pub value: String,
}

fn fact(key: impl Into<String>, value: impl Into<String>) -> Fact {
    Fact {
        key: key.into(),
        value: value.into(),
    }
}

/// Every fact of the report, in reading order.
pub fn facts(r: &CompressReport) -> Vec<Fact> {
    let mut v = Vec::new();
    size_facts(r, &mut v);
    quality_facts(r, &mut v);
    comparison_facts(r, &mut v);
    tail_facts(r, &mut v);
    v
}

/// Parameters, sizes, compression ratios and MACs.
fn size_facts(r: &CompressReport, v: &mut Vec<Fact>) {
    v.extend([
        fact("parameters", r.parameters.to_string()),
        fact(
            "parameters after prune+simplify",
            r.parameters_after.to_string(),
        ),
        fact("pruned", format!("{:.1}%", r.pruned_fraction * 100.0)),
        fact("ONNX size", bytes_h(r.onnx_bytes)),
    ]);
    if let Some(z) = r.onnx_zstd_bytes {
        v.push(fact("ONNX size, zstd -19", bytes_h(z)));
    }
    v.push(fact(
        "simplified ONNX size",
        bytes_h(r.simplified_onnx_bytes),
    ));
    v.push(fact("NNC bitstream size", bytes_h(r.bitstream_bytes)));
    v.push(fact("  of which parameters", bytes_h(r.parameter_bytes)));
    v.push(fact(
        "compression vs ONNX",
        format!("{:.1}x", r.compression_ratio_vs_onnx),
    ));
    if let Some(z) = r.compression_ratio_vs_zstd {
        v.push(fact("compression vs zstd -19", format!("{z:.1}x")));
    }
    let macs = |m: Option<u64>| m.map_or("-".into(), |m| si(m as f64).trim().to_string());
    v.push(fact(
        "MACs before / after",
        format!("{} / {}", macs(r.macs), macs(r.macs_after)),
    ));
}

/// The metric, fidelity, quantization and rate control, and the worst tensor.
fn quality_facts(r: &CompressReport, v: &mut Vec<Fact>) {
    if let Some(m) = &r.metric {
        let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3} %"));
        v.push(fact(format!("{m} before"), pct(r.metric_before)));
        v.push(fact(format!("{m} after"), pct(r.metric_after)));
        if let Some(x) = r.over_budget() {
            v.push(fact(
                "WARNING: over the budget",
                format!("by {x:.2} points on the calibration data"),
            ));
        }
    }
    let f = &r.fidelity;
    v.push(fact(
        format!("fidelity, {} samples", f.samples),
        format!("{} on {} data: {}", f.output, f.data.name(), f.summary()),
    ));
    if let Some(e) = &r.verification_failed {
        v.push(fact("WARNING (kept with --force)", e.clone()));
    }
    v.push(fact("quantization", quantization(r)));
    if let Some(rc) = r.rate_control() {
        if let Some(h) = &rc.held_out {
            let mut s = format!(
                "{} samples: drop {:.2}{}, SNR {:.1} dB",
                rc.check_samples,
                h.drop,
                h.expected_drop
                    .map_or(String::new(), |e| format!(" (expected {e:.2})")),
                h.snr_db()
            );
            if rc.check.tightened > 0 {
                let _ = write!(s, "; tightened {} time(s) to hold", rc.check.tightened);
            }
            v.push(fact("  held out", s));
        }
        for w in &rc.warnings {
            v.push(fact("  note", w.clone()));
        }
    }
    if let Some(w) = r.worst_tensors.first() {
        v.push(fact(
            "largest relative error",
            format!(
                "{} ({:.4}, QP {})",
                w.name,
                w.rel_error,
                w.qp.map_or("-".into(), |q| q.to_string())
            ),
        ));
    }
}

/// Latency, and the best single QPs (ours and the reference's) at the same budget.
fn comparison_facts(r: &CompressReport, v: &mut Vec<Fact>) {
    if let Some(l) = &r.latency {
        v.push(fact(
            "latency original (ORT, median)",
            format!("{:.3} ms", l.original_ms),
        ));
        v.push(fact(
            "latency compressed (ORT, median)",
            format!("{:.3} ms", l.compressed_ms),
        ));
        v.push(fact("latency ratio", latency_ratio(l)));
    }
    if let Some(s) = &r.best_single_qp {
        v.push(fact(
            "best single QP, same budget",
            format!(
                "QP {} -> {} ({:.3} %)",
                s.qp,
                bytes_h(s.bitstream_bytes),
                s.metric
            ),
        ));
    }
    if let Some(s) = &r.best_single_qp_reference {
        v.push(fact(
            "reference (NNCodec) best single QP",
            format!(
                "QP {} -> {} ({:.3} %) on the original model; ours {:.3}x its size",
                s.qp,
                bytes_h(s.bitstream_bytes),
                s.metric,
                r.bitstream_bytes as f64 / s.bitstream_bytes.max(1) as f64
            ),
        ));
    }
}

/// The per-class summary, then time and memory.
fn tail_facts(r: &CompressReport, v: &mut Vec<Fact>) {
    if let Some(b) = &r.breakdown {
        let mut s = format!("{:.2} % of predictions changed", b.flip_rate);
        match (b.worst_class, b.worst_class_drop) {
            (Some(c), Some(d)) if d > 0.0 => {
                let _ = write!(s, "; class {c} lost most ({d:.2} points)");
            }
            (Some(_), Some(_)) => s.push_str("; no class lost accuracy"),
            _ => {}
        }
        v.push(fact("per class", s));
    }
    v.push(fact(
        "time, peak memory",
        format!(
            "{:.1} s, {}",
            r.seconds,
            r.peak_rss_bytes.map_or("-".into(), bytes_h)
        ),
    ));
}

/// The latency ratio with its spread and whether it is stable.
pub fn latency_ratio(l: &super::LatencyReport) -> String {
    let ci = match (l.ratio_median_low, l.ratio_median_high) {
        (Some(a), Some(b)) => format!(", median within {a:.3}..{b:.3} (95 %)"),
        _ => String::new(),
    };
    format!(
        "{:.3} (single runs p10..p90 {:.3}..{:.3}{ci}), {} interleaved pairs: {}",
        l.ratio,
        l.ratio_p10,
        l.ratio_p90,
        l.runs,
        if l.stable() {
            "stable"
        } else {
            "indicative (median not pinned to ±3 %)"
        }
    )
}

fn quantization(r: &CompressReport) -> String {
    match &r.quantization {
        Quantization::Uniform { qp, nonweight_qp } => {
            format!("one QP per kind (weights {qp}, others {nonweight_qp})")
        }
        Quantization::Rule {
            anchor,
            qp_min,
            qp_max,
            row_scaled,
        } => format!(
            "per-tensor rule, weights at QP {qp_min}..{qp_max} (level {:+.2}), {row_scaled} with \
             row scales apart; parameters {} vs {} for the reference encoder at its settings",
            anchor.level,
            bytes_h(anchor.bytes),
            bytes_h(anchor.reference_bytes)
        ),
        Quantization::RateControl(rc) => format!(
            "rate control: {} tensors at QP {}..{} ({} probed), {} evaluations; {} on {} search \
             samples: drop {:.2}{}, SNR {:.1} dB",
            rc.qps.len(),
            rc.qps.values().min().copied().unwrap_or(0),
            rc.qps.values().max().copied().unwrap_or(0),
            rc.sensitivities.probed,
            rc.steps.len(),
            rc.metric.name(),
            rc.search_samples,
            rc.search.drop,
            rc.search
                .expected_drop
                .map_or(String::new(), |e| format!(" (expected {e:.2})")),
            rc.search.snr_db()
        ),
    }
}

/// Words of `s` in lines of at most `width` characters (a longer word gets a line of its own).
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in s.split_whitespace() {
        let Some(cur) = lines.last_mut() else { break };
        let n = cur.chars().count();
        if n > 0 && n + 1 + w.chars().count() > width {
            lines.push(w.to_string());
        } else {
            if n > 0 {
                cur.push(' ');
            }
            cur.push_str(w);
        }
    }
    lines
}

/// Label and value lines, the values aligned in one column and wrapped to [`COLUMNS`].
pub fn render(title: &str, facts: &[Fact]) -> String {
    let mut o = String::new();
    for l in wrap(title, COLUMNS) {
        let _ = writeln!(o, "{l}");
    }
    let vw = COLUMNS - KEY_W - 1;
    for f in facts {
        let key: String = f.key.chars().take(KEY_W).collect();
        for (i, line) in wrap(&f.value, vw).iter().enumerate() {
            let k = if i == 0 { key.as_str() } else { "" };
            // Short values right-aligned in their column, as numbers read best.
            if line.chars().count() <= 14 && i == 0 {
                let _ = writeln!(o, "{k:<KEY_W$} {line:>14}");
            } else {
                let _ = writeln!(o, "{k:<KEY_W$} {line}");
            }
        }
    }
    o
}

pub fn compress(r: &CompressReport) -> String {
    render(&format!("{} -> {}", r.input, r.output), &facts(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_wrap_under_their_column_within_80_columns() {
        let long = "a sentence long enough to need three lines in the value column of a report \
                    with eighty columns and some more words to be sure";
        let t = render("title", &[fact("key", long), fact("n", "12")]);
        for l in t.lines() {
            assert!(l.chars().count() <= COLUMNS, "{l:?}");
        }
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines.len() >= 5, "{t}");
        assert!(lines[2].starts_with(&" ".repeat(KEY_W + 1)));
        assert_eq!(
            t.split_whitespace().skip(2).take(5).collect::<Vec<_>>(),
            long.split_whitespace().take(5).collect::<Vec<_>>()
        );
        assert!(lines.last().unwrap().ends_with(" 12"));
    }
}
