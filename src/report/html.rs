//! The reports as self-contained HTML pages: inline CSS and SVG, no script, nothing fetched, so a
//! page works from a file or an attachment. [`page`] and [`table`] are the building blocks (the
//! fleet report renders its rows with them); [`compress`] is the compress report's page.
//!
//! Every number a table shows from the JSON carries `data-field` (a JSON pointer into the
//! report) and, when shown scaled, `data-scale`, so a test can check each against the JSON to
//! the last digit shown.

use std::fmt::Write;

use super::svg::{esc, Bar, Bars, Points, Row, Scatter};
use super::text::{facts, latency_ratio};
use super::CompressReport;
use crate::ratecontrol::Set;

/// The pages' style sheet.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:980px;\
color:#222;padding:0 1em}h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;\
margin-top:1.6em}.headline{font-size:1.1em;line-height:1.6}.headline b{white-space:nowrap}\
table{border-collapse:collapse;margin:.6em 0}table.t21{font-size:.9em}th,td{padding:3px 8px;text-align:left;\
vertical-align:top;border-bottom:1px solid #e2e2e2}th{background:#f0f2f5}td.n{text-align:right;\
font-variant-numeric:tabular-nums;white-space:nowrap}.note{color:#555;font-size:.92em}\
.wide{overflow-x:auto}svg.plot{display:block;margin:1em 0;max-width:100%;height:auto}.warn{color:#a40000}";

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

/// One table cell: its text, and for numbers from the JSON where it comes from.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub text: String,
    /// JSON pointer of the number shown (first number of `text`), e.g. `/bitstream_bytes`.
    pub field: Option<String>,
    /// The JSON value times this is what is shown (100 for a fraction shown in percent).
    pub scale: Option<f64>,
    /// Right-aligned, as numbers.
    pub numeric: bool,
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell {
            text: s.into(),
            ..Cell::default()
        }
    }

    /// A number from the JSON at `field`.
    pub fn num(s: impl Into<String>, field: &str) -> Cell {
        Cell {
            text: s.into(),
            field: Some(field.into()),
            numeric: true,
            scale: None,
        }
    }

    /// Shown as the JSON value times `k`.
    pub fn scaled(mut self, k: f64) -> Cell {
        self.scale = Some(k);
        self
    }

    fn html(&self, tag: &str) -> String {
        let mut a = String::new();
        if self.numeric {
            a.push_str(" class=\"n\"");
        }
        if let Some(f) = &self.field {
            let _ = write!(a, " data-field=\"{}\"", esc(f));
        }
        if let Some(k) = self.scale {
            let _ = write!(a, " data-scale=\"{k}\"");
        }
        format!("<{tag}{a}>{}</{tag}>", esc(&self.text))
    }
}

/// A table: a header row, then one row per entry; each cell whole (never split).
pub fn table(class: &str, headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut o = format!("<table class=\"{}\"><thead><tr>", esc(class));
    for h in headers {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>\n");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            o.push_str(&c.html("td"));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody></table>");
    o
}

/// One column of [`rows_table`]: its header, where its value is in a row's JSON, how to show it.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    pub header: &'a str,
    /// JSON pointer inside one row, e.g. `/latency_ms_original`.
    pub pointer: &'a str,
    /// Decimals of a number (`None`: whole numbers with thousands separators, others rounded).
    pub decimals: Option<usize>,
}

/// A table of typed rows (anything that serializes, e.g. the fleet report's), one row per
/// element, one cell per column; numbers tagged `data-field` = `{at}/{index}{pointer}`, so a
/// page test checks them against the JSON the rows sit at (`at`, e.g. `/rows`).
pub fn rows_table<T: serde::Serialize>(
    class: &str,
    at: &str,
    columns: &[Column<'_>],
    rows: &[T],
) -> String {
    let headers: Vec<&str> = columns.iter().map(|c| c.header).collect();
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
            columns
                .iter()
                .map(|c| {
                    let field = format!("{at}/{i}{}", c.pointer);
                    match v.pointer(c.pointer) {
                        Some(serde_json::Value::Number(n)) => match (c.decimals, n.as_u64()) {
                            (None, Some(u)) => Cell::num(thousands(u), &field),
                            (d, _) => Cell::num(
                                format!("{:.*}", d.unwrap_or(0), n.as_f64().unwrap_or(f64::NAN)),
                                &field,
                            ),
                        },
                        Some(serde_json::Value::String(t)) => Cell::text(t.clone()),
                        Some(serde_json::Value::Bool(b)) => {
                            Cell::text(if *b { "yes" } else { "no" })
                        }
                        Some(serde_json::Value::Null) | None => Cell::text("-"),
                        Some(other) => Cell::text(other.to_string()),
                    }
                })
                .collect()
        })
        .collect();
    table(class, &headers, &cells)
}

/// Thousands separated, as the page shows byte counts.
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut o = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(ch);
    }
    o
}

fn span(text: String, field: &str) -> String {
    format!("<b data-field=\"{field}\">{}</b>", esc(&text))
}

fn headline(r: &CompressReport) -> String {
    let mut h = format!(
        "{} → {} bytes, {} smaller",
        span(thousands(r.onnx_bytes), "/onnx_bytes"),
        span(thousands(r.bitstream_bytes), "/bitstream_bytes"),
        span(
            format!("{:.1}×", r.compression_ratio_vs_onnx),
            "/compression_ratio_vs_onnx"
        ),
    );
    if let (Some(m), Some(a), Some(b)) = (&r.metric, r.metric_before, r.metric_after) {
        let _ = write!(
            h,
            "; {} {} → {} %",
            esc(m),
            span(format!("{a:.2}"), "/metric_before"),
            span(format!("{b:.2}"), "/metric_after")
        );
        if let Some(rc) = r.rate_control() {
            let _ = write!(
                h,
                " (budget: at most {} points lost",
                span(format!("{:.2}", rc.max_drop), "/quantization/max_drop")
            );
            match r.over_budget() {
                Some(x) => {
                    let _ = write!(
                        h,
                        "; <span class=\"warn\">over it by {x:.2} points on these samples</span>)"
                    );
                }
                None => h.push(')'),
            }
        }
    }
    if let Some(l) = &r.latency {
        let _ = write!(
            h,
            "; latency ×{} (p10–p90 {}–{}, {} interleaved pairs{})",
            span(format!("{:.3}", l.ratio), "/latency/ratio"),
            span(format!("{:.3}", l.ratio_p10), "/latency/ratio_p10"),
            span(format!("{:.3}", l.ratio_p90), "/latency/ratio_p90"),
            span(l.runs.to_string(), "/latency/runs"),
            if l.stable() { "" } else { ", indicative" }
        );
    }
    format!("<p class=\"headline\">{h}.</p>")
}

/// Table 2.1 of the thesis: one row, the model.
fn table21(r: &CompressReport) -> String {
    let ms = |v: Option<f64>, f: &str| match v {
        Some(x) if x.is_finite() => Cell::num(format!("{x:.3}"), f),
        _ => Cell::text("-"),
    };
    let mut headers = vec![
        "model",
        "pruned %",
        "parameters after",
        "simplified ONNX bytes",
        "NNC bitstream bytes",
        "vs ONNX",
        "MACs before → after",
    ];
    let macs = |m: Option<u64>| m.map_or("-".into(), thousands);
    let name = std::path::Path::new(&r.input)
        .file_name()
        .map_or(r.input.clone(), |n| n.to_string_lossy().into_owned());
    let mut row = vec![
        Cell::text(name),
        Cell::num(
            format!("{:.1}", r.pruned_fraction * 100.0),
            "/pruned_fraction",
        )
        .scaled(100.0),
        Cell::num(thousands(r.parameters_after), "/parameters_after"),
        Cell::num(thousands(r.simplified_onnx_bytes), "/simplified_onnx_bytes"),
        Cell::num(thousands(r.bitstream_bytes), "/bitstream_bytes"),
        Cell::num(
            format!("{:.2}×", r.compression_ratio_vs_onnx),
            "/compression_ratio_vs_onnx",
        ),
        Cell {
            text: format!("{} → {}", macs(r.macs), macs(r.macs_after)),
            field: r.macs.map(|_| "/macs".into()),
            numeric: true,
            scale: None,
        },
    ];
    let mut names = Vec::new();
    if let Some(l) = &r.latency {
        names.push("local: original ms".to_string());
        names.push("local: compressed ms".to_string());
        row.push(ms(Some(l.original_ms), "/latency/original_ms"));
        row.push(ms(Some(l.compressed_ms), "/latency/compressed_ms"));
    }
    for (i, d) in r.devices.iter().enumerate() {
        names.push(format!("{}: original ms", d.name));
        names.push(format!("{}: compressed ms", d.name));
        row.push(ms(
            d.latency_ms_original,
            &format!("/devices/{i}/latency_ms_original"),
        ));
        row.push(ms(
            d.latency_ms_compressed,
            &format!("/devices/{i}/latency_ms_compressed"),
        ));
    }
    headers.extend(names.iter().map(String::as_str));
    format!(
        "<div class=\"wide\">{}</div>",
        table("t21", &headers, &[row])
    )
}

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn size_plot(r: &CompressReport) -> String {
    Bars {
        title: "Size per stage".into(),
        axis: "size (KiB)".into(),
        series: vec!["bytes of the stage's file".into()],
        rows: r
            .stages
            .iter()
            .map(|s| Row {
                label: s.name.clone(),
                bars: vec![Some(Bar {
                    value: kib(s.bytes),
                    text: format!("{:.1} KiB", kib(s.bytes)),
                    whisker: None,
                })],
            })
            .collect(),
        whisker_label: None,
    }
    .svg()
}

fn latency_plot(r: &CompressReport) -> Option<String> {
    let mut rows = Vec::new();
    let bar = |v: Option<f64>, w: Option<(f64, f64)>| {
        v.filter(|x| x.is_finite()).map(|x| Bar {
            value: x,
            text: format!("{x:.3} ms"),
            whisker: w,
        })
    };
    if let Some(l) = &r.latency {
        let w = |a: Option<f64>, b: Option<f64>| a.zip(b);
        rows.push(Row {
            label: "local (ONNX Runtime)".into(),
            bars: vec![
                bar(Some(l.original_ms), w(l.original_p10_ms, l.original_p90_ms)),
                bar(
                    Some(l.compressed_ms),
                    w(l.compressed_p10_ms, l.compressed_p90_ms),
                ),
            ],
        });
    }
    for d in &r.devices {
        rows.push(Row {
            label: format!("{} ({})", d.name, d.arch),
            bars: vec![
                bar(d.latency_ms_original, None),
                bar(d.latency_ms_compressed, None),
            ],
        });
    }
    (!rows.is_empty()).then(|| {
        Bars {
            title: "Latency per device".into(),
            axis: "median latency per inference (ms)".into(),
            series: vec!["original".into(), "compressed".into()],
            rows,
            whisker_label: Some("p10–p90 of the runs".into()),
        }
        .svg()
    })
}

fn rate_plot(r: &CompressReport) -> Option<String> {
    let rc = r.rate_control()?;
    let pts = |set: Set, ok: bool| -> Vec<(f64, f64)> {
        rc.steps
            .iter()
            .filter(|s| s.set == set && s.accepted == ok)
            .map(|s| (kib(s.bytes), s.metric))
            .collect()
    };
    let mut classes = vec![
        Points {
            name: "within the budget".into(),
            colour: "#2e9e5b",
            points: pts(Set::Search, true),
        },
        Points {
            name: "over the budget".into(),
            colour: "#d9534f",
            points: pts(Set::Search, false),
        },
    ];
    let check: Vec<(f64, f64)> = rc
        .steps
        .iter()
        .filter(|s| s.set == Set::Check)
        .map(|s| (kib(s.bytes), s.metric))
        .collect();
    if !check.is_empty() {
        classes.push(Points {
            name: "held-out check".into(),
            colour: "#3b6fb6",
            points: check,
        });
    }
    let baseline = rc.search.metric + rc.search.drop;
    Some(
        Scatter {
            title: "Rate search: payload against the metric".into(),
            x_axis: "predicted payload (KiB)".into(),
            y_axis: format!("{} on the search samples (%)", rc.metric.name()),
            classes,
            lines: vec![(
                format!(
                    "budget: {:.2} − {:.2} = {:.2} %",
                    baseline,
                    rc.max_drop,
                    baseline - rc.max_drop
                ),
                baseline - rc.max_drop,
            )],
            chosen: Some((
                format!(
                    "chosen: {:.1} KiB, {:.2} %",
                    kib(rc.bytes),
                    rc.search.metric
                ),
                (kib(rc.bytes), rc.search.metric),
            )),
        }
        .svg(),
    )
}

fn tensor_plot(r: &CompressReport) -> Option<String> {
    // The weights rate control spent bits on; else every quantized tensor of some size (biases
    // and normalization vectors take a fine step and few bytes).
    let chosen = |t: &&super::TensorRate| match r.rate_control() {
        Some(rc) => rc.qps.contains_key(&t.name),
        None => t.qp.is_some() && t.elements >= 256,
    };
    let mut t: Vec<_> = r.tensors.iter().filter(chosen).collect();
    if t.is_empty() {
        return None;
    }
    // The tensors that cost most first; the long tail of small ones adds nothing to read.
    t.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let shown = t.len().min(24);
    let rows = t[..shown]
        .iter()
        .map(|t| Row {
            label: t.name.clone(),
            bars: vec![Some(Bar {
                value: t.bits_per_element(),
                text: format!(
                    "{:.2} b/w, QP {}, {}",
                    t.bits_per_element(),
                    t.qp.unwrap_or(0),
                    crate::inspect::bytes_h(t.bytes)
                ),
                whisker: None,
            })],
        })
        .collect();
    let more = if shown < t.len() {
        format!(" (largest {shown} of {})", t.len())
    } else {
        String::new()
    };
    Some(
        Bars {
            title: format!("Bits per weight and QP per tensor{more}"),
            axis: "bits per weight (NDU bytes × 8 / elements)".into(),
            series: vec!["bits per weight (label: QP, NDU size)".into()],
            rows,
            whisker_label: None,
        }
        .svg(),
    )
}

fn channels_plot(r: &CompressReport) -> Option<String> {
    let mut rows: Vec<(String, usize, usize)> = Vec::new();
    for p in r.simplify.iter().flat_map(|s| &s.passes) {
        if let crate::passes::PassDetails::DeadChannels(d) = &p.details {
            for x in &d.removals {
                rows.push((x.group.clone(), x.channels_before, x.removed));
            }
        }
    }
    if rows.is_empty() {
        if let Some(crate::passes::PassDetails::Prune(o)) =
            r.prune.as_ref().map(|p| &p.pass.details)
        {
            for g in &o.groups {
                rows.push((g.name.clone(), g.channels, g.removed.len()));
            }
        }
    }
    if rows.iter().all(|r| r.2 == 0) {
        return None;
    }
    let bar = |v: usize, total: usize| {
        Some(Bar {
            value: v as f64,
            text: format!("{v} of {total}"),
            whisker: None,
        })
    };
    Some(
        Bars {
            title: "Channels removed per layer".into(),
            axis: "channels".into(),
            series: vec!["kept".into(), "removed".into()],
            rows: rows
                .into_iter()
                .map(|(g, n, k)| Row {
                    label: g,
                    bars: vec![bar(n - k.min(n), n), bar(k, n)],
                })
                .collect(),
            whisker_label: None,
        }
        .svg(),
    )
}

fn class_plot(r: &CompressReport) -> Option<String> {
    let b = r.breakdown.as_ref()?;
    if b.per_class.is_empty() {
        return None;
    }
    Some(
        Bars {
            title: format!(
                "Accuracy change per class ({:.2} % of predictions flipped)",
                b.flip_rate
            ),
            axis: "accuracy after − before (points)".into(),
            series: vec!["change against the labels".into()],
            rows: b
                .per_class
                .iter()
                .map(|c| Row {
                    label: format!("class {} ({} samples)", c.class, c.samples),
                    bars: vec![Some(Bar {
                        value: c.after - c.before,
                        text: format!(
                            "{:+.2} ({:.2} → {:.2} %)",
                            c.after - c.before,
                            c.before,
                            c.after
                        ),
                        whisker: None,
                    })],
                })
                .collect(),
            whisker_label: None,
        }
        .svg(),
    )
}

fn measured(r: &CompressReport) -> String {
    let Some(l) = &r.latency else {
        return "<p class=\"note\">Latency not measured (<code>--runs 0</code>).</p>".into();
    };
    format!(
        "<p class=\"note\">How the latency was measured: {} {} runs of each model after {} \
         warm-up runs, within {:.0} s. Ratio {}. For a controlled measurement use \
         <code>nnzip bench ORIGINAL --vs DECOMPRESSED --threads 1</code>.</p>",
        esc(&l.protocol),
        l.runs,
        l.warmup,
        l.time_budget_s,
        esc(&latency_ratio(l))
    )
}

/// The compress report's page.
pub fn compress(r: &CompressReport) -> String {
    let mut b = format!("<h1>nnzip: {}</h1>\n{}\n", esc(&r.input), headline(r));
    if let Some(e) = &r.verification_failed {
        let _ = writeln!(b, "<p class=\"warn\">Kept with --force: {}</p>", esc(e));
    }
    let _ = writeln!(b, "<h2>Table 2.1</h2>\n{}\n{}", table21(r), measured(r));
    b.push_str("<h2>Plots</h2>\n");
    let plots = [
        Some(size_plot(r)),
        latency_plot(r),
        rate_plot(r),
        tensor_plot(r),
        channels_plot(r),
        class_plot(r),
    ];
    for p in plots.into_iter().flatten() {
        b.push_str(&p);
        b.push('\n');
    }
    let rows: Vec<Vec<Cell>> = facts(r)
        .into_iter()
        .map(|f| vec![Cell::text(f.key.trim()), Cell::text(f.value)])
        .collect();
    let _ = write!(
        b,
        "<h2>Details</h2>\n{}\n<p class=\"note\">{} → {}; the whole report as JSON: \
         <code>nnzip compress … --json</code>, rendered again with <code>nnzip report</code>.</p>",
        table("details", &["", ""], &rows),
        esc(&r.input),
        esc(&r.output)
    );
    page(&format!("nnzip report: {}", r.input), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(319635), "319,635");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn typed_rows_render_with_their_json_pointers() {
        #[derive(serde::Serialize)]
        struct Fleet {
            model: String,
            bytes: u64,
            ratio: Option<f64>,
        }
        let rows = [
            Fleet {
                model: "a.onnx".into(),
                bytes: 123456,
                ratio: Some(0.51234),
            },
            Fleet {
                model: "b.onnx".into(),
                bytes: 7,
                ratio: None,
            },
        ];
        let cols = [
            Column {
                header: "model",
                pointer: "/model",
                decimals: None,
            },
            Column {
                header: "bytes",
                pointer: "/bytes",
                decimals: None,
            },
            Column {
                header: "ratio",
                pointer: "/ratio",
                decimals: Some(3),
            },
        ];
        let t = rows_table("fleet", "/rows", &cols, &rows);
        assert!(t.contains("<td>a.onnx</td>"));
        assert!(t.contains("<td class=\"n\" data-field=\"/rows/0/bytes\">123,456</td>"));
        assert!(t.contains("<td class=\"n\" data-field=\"/rows/0/ratio\">0.512</td>"));
        assert!(t.contains("<td class=\"n\" data-field=\"/rows/1/bytes\">7</td><td>-</td>"));
    }

    #[test]
    fn table_cells_are_whole_and_escaped() {
        let t = table(
            "x",
            &["a", "b"],
            &[vec![
                Cell::text("rate control: 19 tensors, QP -27..-11 <x>"),
                Cell::num("1,024", "/n"),
            ]],
        );
        assert!(t.contains("<td>rate control: 19 tensors, QP -27..-11 &lt;x&gt;</td>"));
        assert!(t.contains("<td class=\"n\" data-field=\"/n\">1,024</td>"));
    }
}
