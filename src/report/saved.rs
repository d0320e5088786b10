//! A saved JSON report read back for `nnzip report`: which command wrote it (told by its fields)
//! and its renderings, so pipelines can archive the JSON and render it later.

use std::fmt::Write;

use serde::Serialize;
use thiserror::Error;

use super::html::{page, table, thousands, Cell};
use super::prune::PruneReport;
use super::svg::{esc, Bar, Bars, Row};
use super::CompressReport;
use crate::bench::{BenchReport, ModelStats};
use crate::errors::ErrorClass;
use crate::inspect::{bytes_h, si};
use crate::passes::simplify::SimplifyReport;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot read the report")]
    Read(#[source] std::io::Error),
    #[error("not JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not a report of nnzip compress, prune, simplify or bench (the JSON of `--json`)")]
    Unknown,
    #[error("a {kind} report with a field that does not read back: {source}")]
    Shape {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl ReportError {
    pub fn class(&self) -> ErrorClass {
        ErrorClass::BadInput
    }
}

/// A report of one of the commands.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Saved {
    Compress(Box<CompressReport>),
    Prune(Box<PruneReport>),
    Simplify(Box<SimplifyReport>),
    Bench(Box<BenchReport>),
}

fn typed<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    kind: &'static str,
) -> Result<T, ReportError> {
    serde_json::from_value(v).map_err(|source| ReportError::Shape { kind, source })
}

impl Saved {
    /// Reads a report from its JSON (as `--json` prints it).
    pub fn from_json(s: &str) -> Result<Saved, ReportError> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(ReportError::Json)?;
        let has = |k: &str| v.get(k).is_some();
        if has("bitstream_bytes") && has("stages") {
            Ok(Saved::Compress(typed(v, "compress")?))
        } else if has("sparsity") && has("layers") {
            Ok(Saved::Prune(typed(v, "prune")?))
        } else if has("passes") && has("verification") {
            Ok(Saved::Simplify(typed(v, "simplify")?))
        } else if has("model") && has("ort_library") {
            Ok(Saved::Bench(typed(v, "bench")?))
        } else {
            Err(ReportError::Unknown)
        }
    }

    /// The command that wrote it.
    pub fn kind(&self) -> &'static str {
        match self {
            Saved::Compress(_) => "compress",
            Saved::Prune(_) => "prune",
            Saved::Simplify(_) => "simplify",
            Saved::Bench(_) => "bench",
        }
    }

    pub fn to_text(&self) -> String {
        match self {
            Saved::Compress(r) => r.to_text(),
            Saved::Prune(r) => r.to_text(),
            Saved::Simplify(r) => simplify_text(r),
            Saved::Bench(r) => r.to_text(),
        }
    }

    pub fn to_html(&self) -> String {
        match self {
            Saved::Compress(r) => r.to_html(),
            Saved::Prune(r) => prune_html(r),
            Saved::Simplify(r) => simplify_html(r),
            Saved::Bench(r) => bench_html(r),
        }
    }
}

/// The prune report's page: the outcome, the metric, sparsity and channels per layer.
pub fn prune_html(r: &PruneReport) -> String {
    let o = &r.outcome;
    let mut rows = vec![
        vec![Cell::text("method"), Cell::text(&o.method), Cell::text("")],
        vec![
            Cell::text("sparsity (% of prunable weights)"),
            Cell::num(
                format!("{:.2}", o.sparsity_before * 100.0),
                "/sparsity_before",
            )
            .scaled(100.0),
            Cell::num(format!("{:.2}", o.sparsity * 100.0), "/sparsity").scaled(100.0),
        ],
    ];
    if let Some(m) = &r.metric {
        rows.push(vec![
            Cell::text(format!("{} on {} samples (%)", m.name, m.samples)),
            Cell::num(format!("{:.3}", m.before), "/metric/before"),
            Cell::num(format!("{:.3}", m.after), "/metric/after"),
        ]);
    }
    let bar = |v: f64, t: String| {
        Some(Bar {
            value: v,
            text: t,
            whisker: None,
        })
    };
    let mut plots = vec![Bars {
        title: "Sparsity per layer".into(),
        axis: "zero weights (%)".into(),
        series: vec!["before".into(), "after".into()],
        rows: o
            .layers
            .iter()
            .map(|l| Row {
                label: l.name.clone(),
                bars: vec![
                    bar(
                        l.sparsity_before * 100.0,
                        format!("{:.1} %", l.sparsity_before * 100.0),
                    ),
                    bar(
                        l.sparsity_after * 100.0,
                        format!("{:.1} %", l.sparsity_after * 100.0),
                    ),
                ],
            })
            .collect(),
        whisker_label: None,
    }
    .svg()];
    if o.groups.iter().any(|g| !g.removed.is_empty()) {
        plots.push(
            Bars {
                title: "Channels removed per layer".into(),
                axis: "channels".into(),
                series: vec!["kept".into(), "removed".into()],
                rows: o
                    .groups
                    .iter()
                    .map(|g| {
                        let k = g.removed.len().min(g.channels);
                        Row {
                            label: g.name.clone(),
                            bars: vec![
                                bar(
                                    (g.channels - k) as f64,
                                    format!("{} of {}", g.channels - k, g.channels),
                                ),
                                bar(k as f64, format!("{k} of {}", g.channels)),
                            ],
                        }
                    })
                    .collect(),
                whisker_label: None,
            }
            .svg(),
        );
    }
    let notes: String = r
        .to_text()
        .lines()
        .map(|l| format!("<li>{}</li>", esc(l.trim())))
        .collect();
    page(
        "nnzip prune report",
        &format!(
            "<h1>nnzip prune: {}</h1>\n{}\n{}\n<h2>Details</h2><ul>{notes}</ul>",
            esc(&r.input.display().to_string()),
            table("t21", &["", "before", "after"], &rows),
            plots.join("\n")
        ),
    )
}

fn size_rows(r: &SimplifyReport) -> Vec<Row> {
    let bar = |v: f64, t: String| {
        Some(Bar {
            value: v,
            text: t,
            whisker: None,
        })
    };
    let (b, a) = (&r.before, &r.after);
    vec![
        Row {
            label: "ONNX size (KiB)".into(),
            bars: vec![
                bar(b.onnx_bytes as f64 / 1024.0, bytes_h(b.onnx_bytes)),
                bar(a.onnx_bytes as f64 / 1024.0, bytes_h(a.onnx_bytes)),
            ],
        },
        Row {
            label: "parameters (thousands)".into(),
            bars: vec![
                bar(b.parameters as f64 / 1e3, thousands(b.parameters)),
                bar(a.parameters as f64 / 1e3, thousands(a.parameters)),
            ],
        },
    ]
}

/// The simplify report's page.
pub fn simplify_html(r: &SimplifyReport) -> String {
    let macs = |m: Option<u64>, f: &str| match m {
        Some(v) => Cell::num(thousands(v), f),
        None => Cell::text("-"),
    };
    let rows = vec![
        vec![
            Cell::text("parameters"),
            Cell::num(thousands(r.before.parameters), "/before/parameters"),
            Cell::num(thousands(r.after.parameters), "/after/parameters"),
        ],
        vec![
            Cell::text("ONNX bytes"),
            Cell::num(thousands(r.before.onnx_bytes), "/before/onnx_bytes"),
            Cell::num(thousands(r.after.onnx_bytes), "/after/onnx_bytes"),
        ],
        vec![
            Cell::text("MACs"),
            macs(r.before.macs, "/before/macs"),
            macs(r.after.macs, "/after/macs"),
        ],
        vec![
            Cell::text("nodes"),
            Cell::num(r.before.nodes.to_string(), "/before/nodes"),
            Cell::num(r.after.nodes.to_string(), "/after/nodes"),
        ],
    ];
    let plot = Bars {
        title: "Model before and after simplification".into(),
        axis: "KiB; thousands of parameters".into(),
        series: vec!["before".into(), "after".into()],
        rows: size_rows(r),
        whisker_label: None,
    }
    .svg();
    let mut notes = String::new();
    for line in simplify_text(r).lines().skip(5) {
        let _ = write!(notes, "<li>{}</li>", esc(line.trim()));
    }
    page(
        "nnzip simplify report",
        &format!(
            "<h1>nnzip simplify</h1>\n<p class=\"headline\">{} channels removed, {} \
             BatchNormalization folded, {} layers collapsed.</p>\n{}\n{plot}\n<ul>{notes}</ul>",
            r.channels_removed,
            r.batchnorms_folded,
            r.layers_collapsed.len(),
            table("t21", &["", "before", "after"], &rows)
        ),
    )
}

fn stats_row(m: &ModelStats, at: &str) -> Vec<Cell> {
    let c = |v: f64, k: &str| Cell::num(format!("{v:.3}"), &format!("{at}/{k}"));
    vec![
        Cell::text(&m.path),
        c(m.min_ms, "min_ms"),
        c(m.median_ms, "median_ms"),
        c(m.mean_ms, "mean_ms"),
        c(m.p90_ms, "p90_ms"),
        c(m.p99_ms, "p99_ms"),
        Cell::num(m.runs.to_string(), &format!("{at}/runs")),
    ]
}

/// The bench report's page.
pub fn bench_html(r: &BenchReport) -> String {
    let mut rows = vec![stats_row(&r.model, "/model")];
    let mut bars = vec![Row {
        label: r.model.path.clone(),
        bars: vec![Some(Bar {
            value: r.model.median_ms,
            text: format!("{:.3} ms", r.model.median_ms),
            whisker: Some((r.model.min_ms, r.model.p90_ms)),
        })],
    }];
    if let Some(v) = &r.vs {
        rows.push(stats_row(v, "/vs"));
        bars.push(Row {
            label: v.path.clone(),
            bars: vec![Some(Bar {
                value: v.median_ms,
                text: format!("{:.3} ms", v.median_ms),
                whisker: Some((v.min_ms, v.p90_ms)),
            })],
        });
    }
    let plot = Bars {
        title: "Latency per model".into(),
        axis: "median latency per inference (ms)".into(),
        series: vec!["median".into()],
        rows: bars,
        whisker_label: Some("min–p90 of the runs".into()),
    }
    .svg();
    let ratio = match (r.ratio_median, r.ratio_p10, r.ratio_p90) {
        (Some(m), Some(a), Some(b)) => format!(
            "<p class=\"headline\">--vs / model: <b data-field=\"/ratio_median\">{m:.3}</b> \
             (p10–p90 <b data-field=\"/ratio_p10\">{a:.3}</b>–<b data-field=\"/ratio_p90\">{b:.3}</b>) \
             over interleaved pairs.</p>"
        ),
        _ => String::new(),
    };
    page(
        "nnzip bench report",
        &format!(
            "<h1>nnzip bench</h1>\n{ratio}\n{}\n{plot}\n<p class=\"note\">{}</p>",
            table(
                "t21",
                &[
                    "model",
                    "min ms",
                    "median ms",
                    "mean ms",
                    "p90 ms",
                    "p99 ms",
                    "runs"
                ],
                &rows
            ),
            esc(r.to_text().lines().next().unwrap_or_default())
        ),
    )
}

/// The simplify report as text.
pub fn simplify_text(r: &SimplifyReport) -> String {
    let mut o = String::new();
    let macs = |m: Option<u64>| {
        m.map(|v| si(v as f64).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(o, "{:<12} {:>14} {:>14}", "", "before", "after");
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>14}",
        "parameters", r.before.parameters, r.after.parameters
    );
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>14}",
        "ONNX size",
        bytes_h(r.before.onnx_bytes),
        bytes_h(r.after.onnx_bytes)
    );
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>14}",
        "MACs",
        macs(r.before.macs),
        macs(r.after.macs)
    );
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>14}",
        "nodes", r.before.nodes, r.after.nodes
    );
    let _ = writeln!(
        o,
        "channels removed {}, BatchNormalization folded {}",
        r.channels_removed, r.batchnorms_folded
    );
    for l in &r.layers_collapsed {
        let _ = writeln!(o, "collapsed: {l}");
    }
    for p in &r.passes {
        for n in &p.notes {
            let _ = writeln!(o, "  {}: {n}", p.pass);
        }
    }
    let v = &r.verification;
    let _ = writeln!(
        o,
        "verified on {} {} sample(s): max |difference| {:.3e} (largest output {:.3e}, tolerance {:.1e}){}",
        v.samples,
        v.data,
        v.max_abs_diff,
        v.max_abs_output,
        v.tolerance,
        if v.exact_only_on_calibration_like_inputs {
            "; zero-entropy decisions hold on calibration-like inputs"
        } else {
            ""
        }
    );
    o
}
