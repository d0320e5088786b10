//! The compression report in the shape of Table 2.1 of Tartaglione's HDR thesis (pruning ratio,
//! simplified topology size, compressed bitstream size, inference time), as text, JSON and HTML
//! with plots (plotters, SVG).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fidelity::Fidelity;
use crate::inspect::{bytes_h, si};
use crate::passes::prune::search::SearchReport;
use crate::passes::simplify::SimplifyReport;
use crate::passes::PassReport;
use crate::quantrule::Anchor;
use crate::quantrule::TensorError;
use crate::ratecontrol::RatePlan;

/// The pruning stage's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneResult {
    pub pass: PassReport,
    pub search: Option<SearchReport>,
}

/// How the quantization was chosen.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Quantization {
    /// One QP per kind of tensor (the reference's rule).
    Uniform { qp: i32, nonweight_qp: i32 },
    /// The per-tensor default rule ([`crate::quantrule`]).
    Rule {
        anchor: Anchor,
        /// QP range of the weight tensors.
        qp_min: i32,
        qp_max: i32,
        /// Weights coded with their row scales apart ([`crate::rowscale`]).
        row_scaled: usize,
    },
    /// Rate control to a metric budget.
    RateControl(Box<RatePlan>),
}

/// One stage of the pipeline, for the size-per-stage view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub bytes: u64,
    pub parameters: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressReport {
    pub input: String,
    pub output: String,
    /// Parameters of the input model.
    pub parameters: u64,
    /// Parameters after pruning and simplification.
    pub parameters_after: u64,
    /// Fraction of the input's parameters removed (pruned to zero and physically removed by
    /// simplification), or zeroed by pruning when not simplified.
    pub pruned_fraction: f64,
    pub onnx_bytes: u64,
    /// `zstd -19` of the input ONNX file: what a general-purpose compressor gets (with
    /// `--zstd`; it takes a minute on a 66 MB model).
    pub onnx_zstd_bytes: Option<u64>,
    /// The model after pruning and simplification, as ONNX.
    pub simplified_onnx_bytes: u64,
    pub bitstream_bytes: u64,
    /// Bytes of the NDUs (the parameters), part of `bitstream_bytes`.
    pub parameter_bytes: u64,
    /// Bytes of the NNR_TPL unit (the graph), part of `bitstream_bytes`.
    pub topology_bytes: u64,
    pub compression_ratio_vs_onnx: f64,
    pub compression_ratio_vs_zstd: Option<f64>,
    pub macs: Option<u64>,
    pub macs_after: Option<u64>,
    /// `top-1 accuracy`, `top-1 agreement` or `output cosine similarity` (percent), with --calib.
    pub metric: Option<String>,
    pub metric_before: Option<f64>,
    pub metric_after: Option<f64>,
    pub latency_ms_original: Option<f64>,
    pub latency_ms_compressed: Option<f64>,
    /// compressed / original median latency, measured interleaved in one process.
    pub latency_ratio: Option<f64>,
    /// How the latency was measured.
    pub latency: Option<LatencyReport>,
    /// The decoded model against the original, on the calibration data or random inputs.
    pub fidelity: Fidelity,
    /// Set when the result failed verification and was kept anyway (`--force`).
    pub verification_failed: Option<String>,
    /// The quantized tensors with the largest relative reconstruction errors.
    pub worst_tensors: Vec<TensorError>,
    pub quantization: Quantization,
    pub stages: Vec<Stage>,
    pub prune: Option<PruneResult>,
    pub simplify: Option<SimplifyReport>,
    /// One QP for every weight of the model as compressed (after pruning and simplification,
    /// same container): the smallest such bitstream within the budget left to quantization.
    pub best_single_qp: Option<SingleQp>,
    /// The reference tool at its best: NNCodec's one knob on the original model, its
    /// parameters-only bitstream, the smallest within the whole budget (`--compare-single-qp`).
    pub best_single_qp_reference: Option<SingleQp>,
    pub codec: serde_json::Value,
    pub reference_compatible: bool,
    /// Wall time per stage.
    pub timings: Vec<StageTime>,
    /// Wall time of the whole job.
    pub seconds: f64,
    /// Peak resident memory of the process (bytes).
    pub peak_rss_bytes: Option<u64>,
}

/// Wall time of one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    /// Peak resident memory of the process at the end of the stage (bytes).
    pub peak_rss_bytes: Option<u64>,
}

/// The latency columns and how they were measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyReport {
    pub original_ms: f64,
    pub compressed_ms: f64,
    /// Median of compressed / original.
    pub ratio: f64,
    /// 10th and 90th percentile of the per-pair ratios.
    pub ratio_p10: f64,
    pub ratio_p90: f64,
    pub runs: usize,
    pub warmup: usize,
    pub time_budget_s: f64,
    pub protocol: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SingleQp {
    pub qp: i32,
    pub bitstream_bytes: u64,
    pub metric: f64,
}

impl CompressReport {
    /// The rate-control plan, when rate control chose the quantization.
    pub fn rate_control(&self) -> Option<&crate::ratecontrol::RatePlan> {
        match &self.quantization {
            Quantization::RateControl(r) => Some(r),
            _ => None,
        }
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let opt = |v: Option<f64>, unit: &str| {
            v.map(|x| format!("{x:.3}{unit}"))
                .unwrap_or_else(|| "-".into())
        };
        let row = |o: &mut String, k: &str, v: String| {
            let _ = writeln!(o, "{k:<34} {v:>14}");
        };
        let _ = writeln!(o, "{} -> {}", self.input, self.output);
        row(&mut o, "parameters", self.parameters.to_string());
        row(
            &mut o,
            "parameters after prune+simplify",
            self.parameters_after.to_string(),
        );
        row(
            &mut o,
            "pruned",
            format!("{:.1}%", self.pruned_fraction * 100.0),
        );
        row(&mut o, "ONNX size", bytes_h(self.onnx_bytes));
        if let Some(z) = self.onnx_zstd_bytes {
            row(&mut o, "ONNX size, zstd -19", bytes_h(z));
        }
        row(
            &mut o,
            "simplified ONNX size",
            bytes_h(self.simplified_onnx_bytes),
        );
        row(&mut o, "NNC bitstream size", bytes_h(self.bitstream_bytes));
        row(
            &mut o,
            "  of which parameters",
            bytes_h(self.parameter_bytes),
        );
        row(
            &mut o,
            "compression vs ONNX",
            format!("{:.1}x", self.compression_ratio_vs_onnx),
        );
        if let Some(r) = self.compression_ratio_vs_zstd {
            row(&mut o, "compression vs zstd -19", format!("{r:.1}x"));
        }
        if let (Some(a), Some(b)) = (self.macs, self.macs_after) {
            row(
                &mut o,
                "MACs before / after",
                format!("{} / {}", si(a as f64).trim(), si(b as f64).trim()),
            );
        }
        if let Some(m) = &self.metric {
            row(
                &mut o,
                &format!("{m} before"),
                opt(self.metric_before, " %"),
            );
            row(&mut o, &format!("{m} after"), opt(self.metric_after, " %"));
        }
        let f = &self.fidelity;
        let _ = writeln!(
            o,
            "fidelity on {} {} sample(s) ({}): {}",
            f.samples,
            f.data.name(),
            f.output,
            f.summary()
        );
        if let Some(e) = &self.verification_failed {
            let _ = writeln!(o, "WARNING (kept with --force): {e}");
        }
        match &self.quantization {
            Quantization::Uniform { qp, nonweight_qp } => {
                let _ = writeln!(
                    o,
                    "quantization: one QP per kind (weights {qp}, others {nonweight_qp})"
                );
            }
            Quantization::Rule {
                anchor,
                qp_min,
                qp_max,
                row_scaled,
            } => {
                let _ = writeln!(
                    o,
                    "quantization: per-tensor rule, weights at QP {qp_min}..{qp_max} (level {:+.2}), {row_scaled} with row scales apart; parameters {} vs {} for the reference encoder at its settings",
                    anchor.level,
                    bytes_h(anchor.bytes),
                    bytes_h(anchor.reference_bytes)
                );
            }
            Quantization::RateControl(r) => {
                let _ = writeln!(
                    o,
                    "rate control: {} tensors at QP {}..{} ({} probed), {} evaluations; {} on {} search samples: drop {:.2}{}, SNR {:.1} dB",
                    r.qps.len(),
                    r.qps.values().min().copied().unwrap_or(0),
                    r.qps.values().max().copied().unwrap_or(0),
                    r.sensitivities.probed,
                    r.steps.len(),
                    r.metric.name(),
                    r.search_samples,
                    r.search.drop,
                    r.search
                        .expected_drop
                        .map_or(String::new(), |e| format!(" (expected {e:.2})")),
                    r.search.snr_db()
                );
                if let Some(h) = &r.held_out {
                    let _ = writeln!(
                        o,
                        "  held out ({} samples): drop {:.2}{}, SNR {:.1} dB{}",
                        r.check_samples,
                        h.drop,
                        h.expected_drop
                            .map_or(String::new(), |e| format!(" (expected {e:.2})")),
                        h.snr_db(),
                        if r.check.tightened > 0 {
                            format!("; tightened {} time(s) to hold there", r.check.tightened)
                        } else {
                            String::new()
                        }
                    );
                }
                for w in &r.warnings {
                    let _ = writeln!(o, "  note: {w}");
                }
            }
        }
        if let Some(w) = self.worst_tensors.first() {
            let _ = writeln!(
                o,
                "largest relative error: {} ({:.4}, QP {})",
                w.name,
                w.rel_error,
                w.qp.map_or("-".into(), |q| q.to_string())
            );
        }
        if let Some(l) = &self.latency {
            row(
                &mut o,
                "latency original (ORT, median)",
                format!("{:.3} ms", l.original_ms),
            );
            row(
                &mut o,
                "latency compressed (ORT, median)",
                format!("{:.3} ms", l.compressed_ms),
            );
            let _ = writeln!(
                o,
                "  ratio {:.3} (p10..p90 {:.2}..{:.2}), {} interleaved runs each in {:.0} s: indicative",
                l.ratio, l.ratio_p10, l.ratio_p90, l.runs, l.time_budget_s
            );
        }
        if let Some(s) = &self.best_single_qp {
            let _ = writeln!(
                o,
                "best single QP within the same budget: QP {} -> {} ({:.3} %)",
                s.qp,
                bytes_h(s.bitstream_bytes),
                s.metric
            );
        }
        if let Some(s) = &self.best_single_qp_reference {
            let _ = writeln!(
                o,
                "reference (NNCodec, original model) at its best single QP: QP {} -> {} ({:.3} %); ours {:.3}x its size",
                s.qp,
                bytes_h(s.bitstream_bytes),
                s.metric,
                self.bitstream_bytes as f64 / s.bitstream_bytes.max(1) as f64
            );
        }
        let _ = writeln!(
            o,
            "time {:.1} s, peak memory {}",
            self.seconds,
            self.peak_rss_bytes.map_or("-".into(), bytes_h)
        );
        o
    }

    /// A standalone HTML page: the table and three SVG plots.
    pub fn to_html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut rows = String::new();
        for line in self.to_text().lines().skip(1) {
            let (k, v) = line.split_at(line.len().min(34));
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td></tr>\n",
                esc(k.trim()),
                esc(v.trim())
            ));
        }
        let stages: Vec<(String, f64)> = self
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.bytes as f64 / 1024.0))
            .collect();
        let mut plots = vec![bar_chart("Size per stage (KiB)", &stages)];
        if let (Some(a), Some(b)) = (self.latency_ms_original, self.latency_ms_compressed) {
            plots.push(bar_chart(
                "ONNX Runtime latency (ms, median)",
                &[("original".into(), a), ("compressed".into(), b)],
            ));
        }
        if let Some(r) = self.rate_control() {
            let pts: Vec<(f64, f64, bool)> = r
                .steps
                .iter()
                .map(|s| (s.bytes as f64 / 1024.0, s.metric, s.accepted))
                .collect();
            plots.push(scatter("Rate search: payload (KiB) vs metric (%)", &pts));
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>nnzip report</title>\
             <style>body{{font-family:sans-serif;margin:2em}}td{{padding:2px 12px}}tr:nth-child(odd){{background:#f4f4f4}}</style>\
             </head><body><h1>nnzip compression report</h1><p>{}</p><table>{rows}</table>{}</body></html>\n",
            esc(&format!("{} → {}", self.input, self.output)),
            plots.join("\n")
        )
    }
}

fn bar_chart(title: &str, data: &[(String, f64)]) -> String {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (640, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let max = data.iter().map(|d| d.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
        let n = data.len() as i32;
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((0..n.max(1)).into_segmented(), 0f64..max);
        if let Ok(mut c) = chart {
            let labels: Vec<String> = data.iter().map(|d| d.0.clone()).collect();
            let _ = c
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => {
                        labels.get(*i as usize).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                })
                .draw();
            let _ = c.draw_series(
                Histogram::vertical(&c)
                    .style(RGBColor(70, 110, 180).filled())
                    .margin(20)
                    .data(data.iter().enumerate().map(|(i, d)| (i as i32, d.1))),
            );
        }
        let _ = root.present();
    }
    s
}

fn scatter(title: &str, pts: &[(f64, f64, bool)]) -> String {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (640, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (x0, x1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (y0, y1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        let pad = |a: f64, b: f64| ((b - a).abs() * 0.1).max(0.5);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x0 - pad(x0, x1))..(x1 + pad(x0, x1)),
                (y0 - pad(y0, y1))..(y1 + pad(y0, y1)),
            );
        if let Ok(mut c) = chart {
            let _ = c.configure_mesh().draw();
            let _ = c.draw_series(pts.iter().map(|&(x, y, ok)| {
                Circle::new((x, y), 4, if ok { GREEN.filled() } else { RED.filled() })
            }));
        }
        let _ = root.present();
    }
    s
}
