//! The typed reports of `compress` (in the shape of Table 2.1 of Tartaglione's HDR thesis:
//! pruning ratio, simplified topology size, compressed bitstream size, inference time), of
//! `simplify` and of `bench`, each rendered as text, JSON and a self-contained HTML page
//! ([`html`], plots in [`svg`]); [`saved`] reads a saved JSON report back for `nnzip report`.

pub mod html;
pub mod prune;
pub mod saved;
pub mod svg;
mod text;

use serde::{Deserialize, Serialize};

use crate::device::remote::DeviceColumn;

use crate::fidelity::Fidelity;
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
    /// Every coded tensor of the bitstream: its QP and bytes (bits per weight).
    #[serde(default)]
    pub tensors: Vec<TensorRate>,
    /// Per-class accuracy of the result against the original, when the outputs are class
    /// scores (with labels: against them; else against the original's predictions).
    #[serde(default)]
    pub breakdown: Option<crate::calib::breakdown::Breakdown>,
    /// The latency per device (`--device`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceColumn>,
}

/// One coded tensor (an NDU of the bitstream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorRate {
    pub name: String,
    /// Quantization parameter; `None` for tensors coded without quantization.
    pub qp: Option<i32>,
    pub elements: u64,
    /// Bytes of its NDU.
    pub bytes: u64,
}

impl TensorRate {
    pub fn bits_per_element(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elements.max(1) as f64
    }
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
    /// Median latency (ms).
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub original_ms: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub compressed_ms: f64,
    /// 10th and 90th percentiles of each model's latency (ms).
    #[serde(default)]
    pub original_p10_ms: Option<f64>,
    #[serde(default)]
    pub original_p90_ms: Option<f64>,
    #[serde(default)]
    pub compressed_p10_ms: Option<f64>,
    #[serde(default)]
    pub compressed_p90_ms: Option<f64>,
    /// Median of compressed / original.
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub ratio: f64,
    /// 10th and 90th percentile of the per-pair ratios.
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub ratio_p10: f64,
    #[serde(deserialize_with = "crate::jsonf64::or_nan")]
    pub ratio_p90: f64,
    /// 95 % interval of the median per-pair ratio (from 10 pairs): how well the runs pin the
    /// ratio down, where p10–p90 says how much single runs vary.
    #[serde(default)]
    pub ratio_median_low: Option<f64>,
    #[serde(default)]
    pub ratio_median_high: Option<f64>,
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

impl LatencyReport {
    /// Whether the ratio is pinned down: the 95 % interval of the median per-pair ratio within
    /// ±3 % of the ratio (reports without the interval: the p10–p90 spread within ±5 %).
    pub fn stable(&self) -> bool {
        let within = |a: f64, b: f64, k: f64| {
            a.is_finite() && b.is_finite() && (b - a) <= 2.0 * k * self.ratio
        };
        match (self.ratio_median_low, self.ratio_median_high) {
            (Some(a), Some(b)) => within(a, b, 0.03),
            _ => within(self.ratio_p10, self.ratio_p90, 0.05),
        }
    }
}

impl CompressReport {
    /// The rate-control plan, when rate control chose the quantization.
    pub fn rate_control(&self) -> Option<&crate::ratecontrol::RatePlan> {
        match &self.quantization {
            Quantization::RateControl(r) => Some(r),
            _ => None,
        }
    }

    /// Points of the metric lost beyond the rate-control budget on the calibration data, when
    /// the result lost more than the budget (the search holds it on its samples, or by the
    /// expected drop where they are too few to resolve it).
    pub fn over_budget(&self) -> Option<f64> {
        let rc = self.rate_control()?;
        let lost = self.metric_before? - self.metric_after?;
        (lost > rc.max_drop + 1e-9).then_some(lost - rc.max_drop)
    }

    /// The text rendering (lines of at most 80 columns, no colour).
    pub fn to_text(&self) -> String {
        text::compress(self)
    }

    /// The self-contained HTML page.
    pub fn to_html(&self) -> String {
        html::compress(self)
    }
}
