//! A fleet item's `compress` options: the manifest's `options` object (and the defaults file
//! under it) by `compress`'s long flag names in snake_case, and the one mapping from them to
//! [`CompressOptions`]. `nnzip compress` builds the same struct from its flags, so a flag and its
//! manifest key cannot drift apart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::container::ContainerOptions;
use crate::passes::prune::structured::Norm;
use crate::passes::prune::{Method, PruneConfig};
use crate::pipeline::{CompressOptions, LatencyOptions, PruneSpec, Quantizer};
use crate::ratecontrol::RateOptions;

/// `compress`'s options. Every field has `compress`'s default, so `{}` is `compress MODEL -o
/// OUT` and two manifests that spell a default out or leave it away get the same work key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemOptions {
    /// `--prune METHOD`: magnitude, structured, nm or entropy.
    pub prune: Option<String>,
    pub sparsity: Option<f64>,
    pub global: bool,
    pub norm: String,
    pub round_to: usize,
    pub no_simplify: bool,
    pub qp: i32,
    pub qp_density: u8,
    pub no_dq: bool,
    /// Codebook mode 0, 1 or 2.
    pub codebook: u8,
    pub bitdepth: Option<u32>,
    pub row_skipping: bool,
    pub no_param_opt: bool,
    pub fast: bool,
    pub nonweight_qp: i32,
    /// Calibration data: a path (relative to the manifest's folder) or an object-store URI.
    pub calib: Option<String>,
    pub max_drop: Option<f64>,
    pub search_time: f64,
    pub holdout: f64,
    pub compare_single_qp: bool,
    pub reference_compatible: bool,
    /// `--shape NAME=DIMS` as a map: `{"x": [1, 3, 224, 224]}`.
    pub shape: BTreeMap<String, Vec<usize>>,
    pub uniform: bool,
    pub force: bool,
    pub zstd: bool,
    pub runs: usize,
    pub latency_time: f64,
    /// `--html`: also write `report.html` beside `report.json` (the place is the fleet's).
    pub html: bool,
    /// Also write `model.onnx`, the model decoded from the bitstream (what `nnzip decompress`
    /// gives), for pipelines that ship ONNX.
    pub decompressed: bool,
    /// `--device NAME` (repeatable): latency columns measured on devices of the devices file.
    pub device: Vec<String>,
    /// `--devices FILE`: the devices file.
    pub devices: Option<String>,
    pub rounds: usize,
    pub cooldown: f64,
}

impl Default for ItemOptions {
    fn default() -> Self {
        ItemOptions {
            prune: None,
            sparsity: None,
            global: false,
            norm: "l1".into(),
            round_to: 1,
            no_simplify: false,
            qp: -38,
            qp_density: 2,
            no_dq: false,
            codebook: 0,
            bitdepth: None,
            row_skipping: false,
            no_param_opt: false,
            fast: false,
            nonweight_qp: -75,
            calib: None,
            max_drop: None,
            search_time: 240.0,
            holdout: 0.25,
            compare_single_qp: false,
            reference_compatible: false,
            shape: BTreeMap::new(),
            uniform: false,
            force: false,
            zstd: false,
            runs: 50,
            latency_time: 3.0,
            html: false,
            decompressed: false,
            device: Vec::new(),
            devices: None,
            rounds: 1,
            cooldown: 0.0,
        }
    }
}

/// An option value `compress` refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

impl ItemOptions {
    /// The options as [`CompressOptions`]; `calib` is the local file of the calibration data
    /// (the caller resolves paths and URIs).
    pub fn to_compress_options(
        &self,
        calib: Option<PathBuf>,
    ) -> Result<CompressOptions, OptionError> {
        let shapes: Vec<(String, Vec<usize>)> = self
            .shape
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let prune = self.prune_spec(calib.is_some())?;
        if self.fast && self.no_param_opt {
            return Err(OptionError(
                "fast and no_param_opt exclude each other".into(),
            ));
        }
        let codebook_mode = nnc_codec::CodebookMode::try_from(self.codebook).map_err(|_| {
            OptionError(format!("codebook must be 0, 1 or 2, got {}", self.codebook))
        })?;
        let codec = nnc_codec::EncoderConfig {
            qp: self.qp,
            qp_density: self.qp_density,
            use_dq: !self.no_dq,
            codebook_mode,
            int_quant_bw: self.bitdepth,
            row_skipping: self.row_skipping,
            param_opt: !self.no_param_opt,
            param_opt_bins: self
                .fast
                .then_some(nnc_codec::EncoderConfig::fast().param_opt_bins)
                .flatten(),
            nonweight_qp: Some(self.nonweight_qp),
            ..nnc_codec::EncoderConfig::default()
        };
        let seconds =
            |x: f64| Duration::from_secs_f64(if x.is_finite() { x.max(0.0) } else { 0.0 });
        Ok(CompressOptions {
            container: ContainerOptions {
                codec,
                ..Default::default()
            },
            prune,
            simplify: !self.no_simplify,
            calib,
            max_drop: self.max_drop,
            reference_compatible: self.reference_compatible,
            quantizer: if self.uniform {
                Quantizer::Uniform
            } else {
                Quantizer::Rule
            },
            shapes,
            latency: LatencyOptions {
                max_runs: self.runs,
                time: seconds(self.latency_time),
                ..LatencyOptions::default()
            },
            compare_single_qp: self.compare_single_qp,
            zstd_baseline: self.zstd,
            force: self.force,
            rate: RateOptions {
                time_budget: seconds(self.search_time.max(1.0)),
                holdout: self.holdout.clamp(0.0, 0.5),
                ..RateOptions::new(self.max_drop.unwrap_or(1.0))
            },
            ..CompressOptions::default()
        })
    }

    /// The pruning step; without `sparsity` and with `max_drop`, the amount is searched.
    fn prune_spec(&self, has_calib: bool) -> Result<Option<PruneSpec>, OptionError> {
        let Some(m) = &self.prune else {
            return Ok(None);
        };
        let Some(method) = Method::parse(m) else {
            return Err(OptionError(format!(
                "prune '{m}' is not one of magnitude, structured, nm, entropy"
            )));
        };
        if method.needs_calibration() && !has_calib {
            return Err(OptionError(format!(
                "prune {m} needs calibration data (calib)"
            )));
        }
        if let Some(f) = self.sparsity {
            if !(0.0..=1.0).contains(&f) {
                return Err(OptionError(format!("sparsity must be in [0, 1], got {f}")));
            }
        }
        let mut cfg = PruneConfig::new(method);
        cfg.global = self.global;
        cfg.norm = match self.norm.as_str() {
            "l1" | "L1" => Norm::L1,
            "l2" | "L2" => Norm::L2,
            other => return Err(OptionError(format!("norm '{other}' is not l1 or l2"))),
        };
        cfg.round_to = self.round_to.max(1);
        Ok(Some(PruneSpec {
            amount: self.sparsity,
            default_amount: method.default_amount(false),
            make: Box::new(move |f| cfg.pass(f)),
        }))
    }

    /// The options as they enter the work key: every field spelled out, keys sorted, the
    /// calibration data's location left out (its bytes enter the key instead, so moving the
    /// file does not redo the item), and so is the devices file's location.
    pub fn canonical_json(&self) -> String {
        let mut v = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        v.remove("calib");
        v.insert(
            "calib".into(),
            serde_json::Value::Bool(self.calib.is_some()),
        );
        v.remove("devices");
        // serde_json's map is ordered by key: the text is canonical.
        serde_json::Value::Object(v).to_string()
    }

    /// Whether latency is measured anywhere (the item's ONNX Runtime threads matter then).
    pub fn times_latency(&self) -> bool {
        self.runs > 0 || !self.device.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_spelled_out_defaults_have_one_canonical_form() {
        let a: ItemOptions = serde_json::from_str("{}").unwrap();
        let b: ItemOptions =
            serde_json::from_str(r#"{"qp": -38, "runs": 50, "norm": "l1"}"#).unwrap();
        assert_eq!(a.canonical_json(), b.canonical_json());
        let c: ItemOptions = serde_json::from_str(r#"{"qp": -30}"#).unwrap();
        assert_ne!(a.canonical_json(), c.canonical_json());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_str::<ItemOptions>(r#"{"max-drop": 1}"#).unwrap_err();
        assert!(e.to_string().contains("max-drop"), "{e}");
    }

    #[test]
    fn the_mapping_carries_every_setting() {
        let o: ItemOptions = serde_json::from_str(
            r#"{"qp": -30, "no_dq": true, "codebook": 2, "fast": true, "uniform": true,
                "runs": 0, "no_simplify": true, "prune": "magnitude", "sparsity": 0.5,
                "shape": {"x": [1, 4]}, "max_drop": 2.0, "holdout": 0.9}"#,
        )
        .unwrap();
        let c = o.to_compress_options(Some("c.npz".into())).unwrap();
        assert_eq!(c.container.codec.qp, -30);
        assert!(!c.container.codec.use_dq);
        assert_eq!(c.container.codec.codebook_mode.code(), 2);
        assert!(c.container.codec.param_opt_bins.is_some());
        assert_eq!(c.quantizer, Quantizer::Uniform);
        assert_eq!(c.latency.max_runs, 0);
        assert!(!c.simplify);
        assert_eq!(c.prune.as_ref().and_then(|p| p.amount), Some(0.5));
        assert_eq!(c.shapes, vec![("x".to_string(), vec![1, 4])]);
        assert_eq!(c.max_drop, Some(2.0));
        assert_eq!(c.rate.holdout, 0.5);
        let bad: ItemOptions = serde_json::from_str(r#"{"prune": "random"}"#).unwrap();
        assert!(bad.to_compress_options(None).is_err());
        let bad: ItemOptions = serde_json::from_str(r#"{"codebook": 7}"#).unwrap();
        assert!(bad.to_compress_options(None).is_err());
    }
}
