//! Execution-provider placement: which provider ran which node, read from ONNX Runtime's own
//! profile (one `*_kernel_time` event per node and run, with `args.provider`, `args.op_name`
//! and `dur`), so the numbers are what the runtime did, not a guess from op lists.
//!
//! Providers that compile subgraphs (OpenVINO, TensorRT) show one kernel per compiled
//! partition; the model's nodes inside it are those that ran on no other provider. Nodes are
//! matched to kernels by name; ONNX Runtime's fusions on the CPU keep the name of the node
//! they start from, so a fused-away node on the CPU is counted as the requested provider's
//! only when that provider ran something (documented in docs/cli.md).

use std::collections::{BTreeMap, BTreeSet};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::{Runtime, RuntimeError, Session, SessionOptions};
use crate::onnx::Model;
use crate::tensor::Tensor;

#[derive(Debug, Error)]
pub enum PlacementError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot read ONNX Runtime's profile {path}: {reason}")]
    Profile { path: PathBuf, reason: String },
    #[error(
        "strict placement: {fell_back} of {total} nodes fell back from {ep} to the CPU ({ops})"
    )]
    Fallback {
        ep: String,
        fell_back: usize,
        total: usize,
        ops: String,
    },
}

impl PlacementError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            PlacementError::Runtime(RuntimeError::UnknownProvider(_)) => C::Usage,
            PlacementError::Runtime(_)
            | PlacementError::Profile { .. }
            | PlacementError::Fallback { .. } => C::Runtime,
        }
    }
}

/// One kernel as the profile shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    pub op: String,
    pub provider: String,
    /// Mean duration per run (ms).
    pub ms: f64,
}

/// What one provider ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderShare {
    /// ONNX Runtime's name, `CPUExecutionProvider`, `OpenVINOExecutionProvider`, ...
    pub provider: String,
    /// Kernels in the profile (a compiled partition is one).
    pub kernels: usize,
    /// Nodes of the model it ran.
    pub nodes: usize,
    pub macs: u64,
    pub mac_share: f64,
    /// Time in its kernels per run (ms) and share of all kernel time.
    pub ms: f64,
    pub time_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// The provider asked for (`cpu` when none).
    pub requested: String,
    pub runs: usize,
    pub providers: Vec<ProviderShare>,
    /// Maximal stretches of kernels on one provider, in execution order.
    pub partitions: usize,
    pub model_nodes: usize,
    /// Op types (with counts) of the model's nodes that ran on the CPU although another
    /// provider was asked for.
    pub fallback_ops: BTreeMap<String, usize>,
    pub fallback_nodes: Vec<String>,
    /// `OpenVINO (20), CPU (3) | Total (23)`.
    pub summary: String,
    pub kernels: Vec<Kernel>,
    /// Where the profile was kept, when asked to.
    pub profile: Option<String>,
}

/// `CPUExecutionProvider` → `CPU`.
fn short(p: &str) -> &str {
    p.strip_suffix("ExecutionProvider").unwrap_or(p)
}

/// Kernel events of one run (the first `model_run`), in execution order. Each gives
/// (name, op, provider, dur µs); durations are averaged over all runs by name.
pub fn parse_profile(text: &str) -> Result<(Vec<Kernel>, usize), String> {
    let events: Vec<Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let runs: Vec<(f64, f64)> = events
        .iter()
        .filter(|e| e["cat"] == "Session" && e["name"] == "model_run")
        .filter_map(|e| Some((e["ts"].as_f64()?, e["dur"].as_f64()?)))
        .collect();
    let mut order: Vec<(f64, String, String, String)> = Vec::new();
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for e in events.iter().filter(|e| e["cat"] == "Node") {
        let Some(name) = e["name"]
            .as_str()
            .and_then(|n| n.strip_suffix("_kernel_time"))
        else {
            continue;
        };
        let ts = e["ts"].as_f64().unwrap_or(0.0);
        *total.entry(name.to_string()).or_default() += e["dur"].as_f64().unwrap_or(0.0);
        let in_first = runs.first().is_none_or(|(t0, d)| ts >= *t0 && ts <= t0 + d);
        if in_first && !order.iter().any(|(_, n, _, _)| n == name) {
            let arg = |k: &str| e["args"][k].as_str().unwrap_or("").to_string();
            order.push((ts, name.to_string(), arg("op_name"), arg("provider")));
        }
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n_runs = runs.len().max(1);
    let kernels = order
        .into_iter()
        .map(|(_, name, op, provider)| Kernel {
            ms: total.get(&name).copied().unwrap_or(0.0) / n_runs as f64 / 1e3,
            name,
            op,
            provider,
        })
        .collect();
    Ok((kernels, n_runs))
}

/// MACs of each main-graph node by name (nodes with unknown shapes count 0).
fn node_macs(model: &Model, shapes: &[(String, Vec<usize>)]) -> Vec<(String, String, u64)> {
    let dims = crate::inspect::mac_dims(model, shapes).unwrap_or_default();
    let info = crate::graph::infer::infer(model, &dims);
    model
        .graph()
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let macs = match info.ops.get(i) {
                Some(Ok(op)) if op.is_compute() => op
                    .macs(&info.inputs_of(n), &info.outputs_of(n))
                    .and_then(|m| m.as_int())
                    .and_then(|m| u64::try_from(m).ok())
                    .unwrap_or(0),
                _ => 0,
            };
            (n.name.clone(), n.op_type.clone(), macs)
        })
        .collect()
}

/// Placement from parsed kernels: each model node goes to the provider of the kernel of its
/// name, else to the requested provider if that ran anything (compiled partitions), else to
/// the CPU (fused away there).
pub fn place(
    model: &Model,
    shapes: &[(String, Vec<usize>)],
    requested: &str,
    kernels: Vec<Kernel>,
    runs: usize,
) -> Placement {
    let cpu = "CPUExecutionProvider".to_string();
    let by_name: BTreeMap<&str, &str> = kernels
        .iter()
        .map(|k| (k.name.as_str(), k.provider.as_str()))
        .collect();
    let other: Option<String> = kernels
        .iter()
        .map(|k| k.provider.clone())
        .find(|p| *p != cpu);
    let mut rows: BTreeMap<String, ProviderShare> = BTreeMap::new();
    fn row<'a>(rows: &'a mut BTreeMap<String, ProviderShare>, p: &str) -> &'a mut ProviderShare {
        rows.entry(p.to_string()).or_insert_with(|| ProviderShare {
            provider: p.to_string(),
            kernels: 0,
            nodes: 0,
            macs: 0,
            mac_share: 0.0,
            ms: 0.0,
            time_share: 0.0,
        })
    }
    for k in &kernels {
        let r = row(&mut rows, &k.provider);
        r.kernels += 1;
        r.ms += k.ms;
    }
    let mut fallback_ops = BTreeMap::new();
    let mut fallback_nodes = Vec::new();
    let nodes = node_macs(model, shapes);
    let asked_other = !requested.is_empty() && !requested.eq_ignore_ascii_case("cpu");
    for (name, op, macs) in &nodes {
        let p = match by_name.get(name.as_str()) {
            Some(p) => p.to_string(),
            None => other.clone().unwrap_or_else(|| cpu.clone()),
        };
        if asked_other && p == cpu {
            *fallback_ops.entry(op.clone()).or_insert(0usize) += 1;
            fallback_nodes.push(name.clone());
        }
        let r = row(&mut rows, &p);
        r.nodes += 1;
        r.macs += macs;
    }
    let all_macs: u64 = rows.values().map(|r| r.macs).sum();
    let all_ms: f64 = rows.values().map(|r| r.ms).sum();
    let mut providers: Vec<ProviderShare> = rows.into_values().collect();
    for r in &mut providers {
        r.mac_share = r.macs as f64 / all_macs.max(1) as f64;
        r.time_share = if all_ms > 0.0 { r.ms / all_ms } else { 0.0 };
    }
    // The requested provider first, the CPU last.
    providers.sort_by_key(|r| (r.provider == cpu, std::cmp::Reverse(r.nodes)));
    let partitions = kernels
        .windows(2)
        .filter(|w| w[0].provider != w[1].provider)
        .count()
        + usize::from(!kernels.is_empty());
    let summary = format!(
        "{} | Total ({})",
        providers
            .iter()
            .map(|r| format!("{} ({})", short(&r.provider), r.nodes))
            .collect::<Vec<_>>()
            .join(", "),
        nodes.len()
    );
    Placement {
        requested: if requested.is_empty() {
            "cpu".into()
        } else {
            requested.to_ascii_lowercase()
        },
        runs,
        providers,
        partitions,
        model_nodes: nodes.len(),
        fallback_ops,
        fallback_nodes,
        summary,
        kernels,
        profile: None,
    }
}

/// Runs `path` `runs` times with ONNX Runtime's profiler on and reads the placement from the
/// profile; `keep` copies the profile there. `strict` refuses any fallback to the CPU.
#[allow(clippy::too_many_arguments)]
pub fn placement(
    rt: &Runtime,
    path: &Path,
    model: &Model,
    inputs: &[(String, Tensor)],
    opts: &SessionOptions,
    shapes: &[(String, Vec<usize>)],
    runs: usize,
    keep: Option<&Path>,
) -> Result<Placement, PlacementError> {
    let dir = tempfile::tempdir().map_err(|e| PlacementError::Profile {
        path: std::env::temp_dir(),
        reason: e.to_string(),
    })?;
    let prefix = dir.path().join("profile");
    let mut builder = Session::builder(rt, opts)?
        .with_profiling(&prefix)
        .map_err(|e| RuntimeError::Ort(e.to_string()))?;
    let inner = builder.commit_from_file(path).map_err(RuntimeError::from)?;
    let mut s = Session {
        inner,
        inputs: model.inputs(),
        outputs: model.outputs(),
        _file: None,
    };
    let values = s.prepare(inputs)?;
    for _ in 0..runs.max(1) {
        s.run_discard(&values)?;
    }
    let file = PathBuf::from(s.inner.end_profiling().map_err(RuntimeError::from)?);
    let bad = |reason: String| PlacementError::Profile {
        path: file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
    let (kernels, n) = parse_profile(&text).map_err(bad)?;
    let mut p = place(model, shapes, &opts.provider, kernels, n);
    if let Some(k) = keep {
        crate::fsutil::write_atomic(k, |w| std::io::Write::write_all(w, text.as_bytes()))
            .map_err(|e| bad(format!("cannot keep it at {}: {e}", k.display())))?;
        p.profile = Some(k.display().to_string());
    }
    Ok(p)
}

impl Placement {
    /// `--strict-ep`: an error naming what fell back.
    pub fn check_strict(&self) -> Result<(), PlacementError> {
        if self.fallback_nodes.is_empty() {
            return Ok(());
        }
        Err(PlacementError::Fallback {
            ep: self.requested.clone(),
            fell_back: self.fallback_nodes.len(),
            total: self.model_nodes,
            ops: self
                .fallback_ops
                .iter()
                .map(|(o, n)| format!("{o} ×{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "placement ({} requested, {} partitions): {}",
            self.requested, self.partitions, self.summary
        );
        for r in &self.providers {
            let _ = writeln!(
                o,
                "  {:<28} {:>4} nodes {:>4} kernels  {:>5.1}% of MACs  {:>5.1}% of kernel time",
                r.provider,
                r.nodes,
                r.kernels,
                r.mac_share * 100.0,
                r.time_share * 100.0
            );
        }
        if !self.fallback_ops.is_empty() {
            let ops: BTreeSet<String> = self
                .fallback_ops
                .iter()
                .map(|(op, n)| format!("{op} ×{n}"))
                .collect();
            let _ = writeln!(
                o,
                "  fell back to CPU: {}",
                ops.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"[
      {"cat":"Session","name":"model_run","ts":100,"dur":50,"args":{}},
      {"cat":"Node","name":"a_kernel_time","ts":101,"dur":10,"args":{"op_name":"Conv","provider":"OpenVINOExecutionProvider"}},
      {"cat":"Node","name":"b_kernel_time","ts":120,"dur":4,"args":{"op_name":"Mod","provider":"CPUExecutionProvider"}},
      {"cat":"Node","name":"c_kernel_time","ts":130,"dur":6,"args":{"op_name":"Relu","provider":"OpenVINOExecutionProvider"}},
      {"cat":"Session","name":"model_run","ts":200,"dur":50,"args":{}},
      {"cat":"Node","name":"a_kernel_time","ts":201,"dur":30,"args":{"op_name":"Conv","provider":"OpenVINOExecutionProvider"}},
      {"cat":"Node","name":"b_kernel_time","ts":220,"dur":4,"args":{"op_name":"Mod","provider":"CPUExecutionProvider"}},
      {"cat":"Node","name":"c_kernel_time","ts":230,"dur":6,"args":{"op_name":"Relu","provider":"OpenVINOExecutionProvider"}}
    ]"#;

    #[test]
    fn profile_kernels_come_in_execution_order_averaged_over_runs() {
        let (k, runs) = parse_profile(PROFILE).unwrap();
        assert_eq!(runs, 2);
        let names: Vec<&str> = k.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!((k[0].ms - 0.020).abs() < 1e-12);
        assert!(parse_profile("not json").is_err());
    }
}
