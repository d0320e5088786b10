//! Pruning on the ONNX graph itself: unstructured magnitude pruning, N:M patterns, structured
//! channel pruning over the coupled groups of `graph::groups`, entropy-guided budgets (NEPENTHE),
//! and a bisection driver that searches the pruning amount under a metric-drop tolerance.
//!
//! Every method is a `Pass` (`Preserves::Interface`): it zeroes weights in place, wherever they are
//! stored (initializers or `Constant` nodes, subgraphs for the unstructured methods), and keeps
//! every shape. Structured pruning only zeroes channels consistently across their group; the
//! simplify stage removes them physically.

pub mod alloc;
pub mod entropy;
pub mod layers;
pub mod lsq;
pub mod magnitude;
pub mod nm;
pub mod obs;
pub mod planned;
pub mod recover;
pub mod search;
pub mod stats;
pub mod structured;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Pass, PassDetails, PassError, PassReport, Preserves};
use crate::graph::editor::Editor;
use crate::graph::index::node_label;
use crate::graph::ops::Op;
use crate::onnx::weights::{visit_graphs, WeightId};
use crate::onnx::Model;
use crate::tensor::{DType, Tensor};

pub use entropy::EntropyPrune;
pub use magnitude::MagnitudePrune;
pub use nm::NmPrune;
pub use search::{search_amount, SearchOptions, SearchReport, SearchStep};
pub use structured::{Norm, StructuredPrune};

/// Which layers a pruning pass may touch. A pattern matches a weight name, a node name or an op
/// type: with `*`/`?` it is a glob over the whole string, otherwise a substring (op types must
/// match exactly). Empty `include` means everything; `exclude` wins.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Glob with `*` (any run) and `?` (one character) over the whole string.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Filter {
    fn hit(pattern: &str, names: &[&str], op: &str) -> bool {
        if pattern == op {
            return true;
        }
        let glob = pattern.contains('*') || pattern.contains('?');
        names.iter().any(|n| {
            if glob {
                glob_match(pattern, n)
            } else {
                n.contains(pattern)
            }
        })
    }

    /// Whether a layer with these names (weight, node) and op type is selected.
    pub fn allows(&self, names: &[&str], op: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| Self::hit(p, names, op)))
            && !self.exclude.iter().any(|p| Self::hit(p, names, op))
    }
}

/// A prunable weight: the weight operand of a `Conv`, `ConvTranspose`, `Gemm` or `MatMul`,
/// in the main graph or a subgraph.
#[derive(Debug, Clone)]
pub struct PrunableWeight {
    pub id: WeightId,
    /// Name qualified by scope (`scope/name` inside subgraphs).
    pub name: String,
    /// The tensor's name in its own graph (what `id` must still address when written).
    pub tensor: String,
    /// The node using it (label) and its op type.
    pub node: String,
    pub op: String,
    pub dims: Vec<usize>,
    /// The axis the layer sums over (input channels / features): the N:M groups run along it.
    pub reduce_axis: usize,
    /// The axis of its output channels.
    pub out_axis: usize,
    pub dtype: DType,
    /// The node using it sits in an If/Loop/Scan body (the weight may be an outer constant).
    pub in_subgraph: bool,
}

impl PrunableWeight {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Every prunable weight of the model, each once (a weight shared by several nodes is listed
/// with its first user).
pub fn prunable_weights(model: &Model) -> Vec<PrunableWeight> {
    let all = model.weights();
    // Per graph path: constant name -> weight.
    let mut by_graph: HashMap<Vec<crate::onnx::weights::GraphStep>, HashMap<&str, usize>> =
        HashMap::new();
    for (i, w) in all.iter().enumerate() {
        by_graph
            .entry(w.id.graph.clone())
            .or_default()
            .insert(w.name.as_str(), i);
    }
    let mut out = Vec::new();
    let mut seen: HashSet<WeightId> = HashSet::new();
    let opset = model.opset().unwrap_or(1);
    visit_graphs(model.graph(), &mut |path, _scope, g| {
        // Names resolve in this graph first, then in the enclosing ones (outer-scope constants).
        let resolve = |name: &str| -> Option<usize> {
            (0..=path.len())
                .rev()
                .find_map(|l| by_graph.get(&path[..l])?.get(name).copied())
        };
        for (ni, n) in g.node.iter().enumerate() {
            let op = n.op_type.as_str();
            let rank_of = |i: usize| all[i].dims.len();
            let parsed = Op::parse(n, opset);
            let (wi, reduce, outa) = match &parsed {
                Ok(Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. }) => {
                    let Some(wi) = n.input.get(1).and_then(|x| resolve(x)) else {
                        continue;
                    };
                    if rank_of(wi) < 2 {
                        continue;
                    }
                    match &parsed {
                        Ok(Op::Conv(_)) => (wi, 1, 0),
                        Ok(Op::ConvTranspose(_)) => (wi, 0, 1),
                        Ok(Op::Gemm { trans_b: true, .. }) => (wi, 1, 0),
                        _ => (wi, 0, 1),
                    }
                }
                Ok(Op::MatMul) => {
                    if let Some(wi) = n.input.get(1).and_then(|x| resolve(x)) {
                        let r = rank_of(wi);
                        if r < 2 {
                            continue;
                        }
                        (wi, r - 2, r - 1)
                    } else if let Some(wi) = n.input.first().and_then(|x| resolve(x)) {
                        let r = rank_of(wi);
                        if r < 2 {
                            continue;
                        }
                        (wi, r - 1, r - 2)
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            let w = &all[wi];
            if !w.dtype.is_float() || !seen.insert(w.id.clone()) {
                continue;
            }
            out.push(PrunableWeight {
                id: w.id.clone(),
                name: w.qualified_name(),
                tensor: w.name.clone(),
                node: node_label(n, ni),
                op: op.to_string(),
                dims: w.dims.clone(),
                reduce_axis: reduce,
                out_axis: outa,
                dtype: w.dtype,
                in_subgraph: !path.is_empty(),
            });
        }
    });
    out
}

/// Zero count and size of each prunable weight, and the overall fraction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Census {
    pub zeros: usize,
    pub params: usize,
    pub sparsity: f64,
    #[serde(skip)]
    pub per_weight: Vec<(usize, usize)>,
}

pub fn census(model: &Model, weights: &[PrunableWeight]) -> Result<Census, PassError> {
    let mut per_weight = Vec::with_capacity(weights.len());
    for w in weights {
        let t = model.read(&w.id)?;
        per_weight.push((t.count_zeros(), t.numel()));
    }
    let zeros = per_weight.iter().map(|p| p.0).sum();
    let params = per_weight.iter().map(|p| p.1).sum();
    Ok(Census {
        zeros,
        params,
        sparsity: ratio(zeros, params),
        per_weight,
    })
}

pub(crate) fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// One prunable weight in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerReport {
    pub name: String,
    pub node: String,
    pub op: String,
    pub params: usize,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    /// Output channels and how many were zeroed (structured and entropy methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels_removed: Option<usize>,
    /// Mean ON/OFF entropy (bits) of the rectifier after this layer on the calibration data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy_after: Option<f64>,
}

/// A layer or group left alone, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// What a pruning pass did (the `details` of its `PassReport`, and the CLI's report).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneOutcome {
    pub method: String,
    /// Overall fraction of zero weights among the prunable tensors, before and after.
    pub sparsity_before: f64,
    pub sparsity: f64,
    pub prunable_params: usize,
    pub zeros: usize,
    pub layers: Vec<LayerReport>,
    pub skipped: Vec<Skipped>,
    /// Structured pruning: the channels removed per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<structured::GroupReport>,
    /// Entropy pruning: each rectified layer's entropy account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entropy: Vec<entropy::LayerEntropy>,
    /// Structured pruning with a plan: scores, allocation, MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<planned::PlanReport>,
    /// Reconstruction after pruning: the layers re-fitted on the calibration data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover: Option<recover::RecoverReport>,
    /// Whether any weight changed.
    #[serde(skip)]
    pub changed: bool,
}

impl PruneOutcome {
    /// Builds the per-layer table from censuses taken before and after the pass.
    pub fn from_census(
        method: &str,
        weights: &[PrunableWeight],
        before: &Census,
        after: &Census,
    ) -> PruneOutcome {
        let layers = weights
            .iter()
            .zip(before.per_weight.iter().zip(&after.per_weight))
            .map(|(w, (b, a))| LayerReport {
                name: w.name.clone(),
                node: w.node.clone(),
                op: w.op.clone(),
                params: a.1,
                sparsity_before: ratio(b.0, b.1),
                sparsity_after: ratio(a.0, a.1),
                channels: None,
                channels_removed: None,
                entropy_before: None,
                entropy_after: None,
            })
            .collect();
        PruneOutcome {
            method: method.to_string(),
            sparsity_before: before.sparsity,
            sparsity: after.sparsity,
            prunable_params: after.params,
            zeros: after.zeros,
            layers,
            skipped: Vec::new(),
            groups: Vec::new(),
            entropy: Vec::new(),
            plan: None,
            recover: None,
            changed: after.zeros != before.zeros,
        }
    }

    pub fn into_report(self, pass: &str) -> PassReport {
        let notes = self
            .skipped
            .iter()
            .map(|s| format!("left alone: {}: {}", s.name, s.reason))
            .collect();
        PassReport {
            pass: pass.to_string(),
            preserves: Preserves::Interface,
            changed: self.changed,
            details: PassDetails::Prune(Box::new(self)),
            notes,
        }
    }
}

/// Reads a float weight as f32 values (F32 only: other float types are left alone).
pub(crate) fn read_f32(ed: &Editor, id: &WeightId) -> Result<Option<Vec<f32>>, PassError> {
    let t = ed.model().read(id)?;
    if t.dtype != DType::F32 {
        return Ok(None);
    }
    Ok(Some(t.to_f32()?))
}

pub(crate) fn write_f32(ed: &mut Editor, w: &PrunableWeight, v: &[f32]) -> Result<(), PassError> {
    let t = Tensor::from_f32(w.dims.clone(), v)?;
    ed.write_weight(&w.id, &w.tensor, &t)?;
    Ok(())
}

/// Zeroes the `k` smallest-magnitude entries among `values` (already-zero entries count first;
/// ties broken by position), in place across several tensors. Returns how many it zeroed anew.
pub(crate) fn zero_smallest(tensors: &mut [&mut Vec<f32>], k: usize) -> usize {
    let total: usize = tensors.iter().map(|t| t.len()).sum();
    if k == 0 || total == 0 {
        return 0;
    }
    let k = k.min(total);
    let mut mags: Vec<f32> = tensors
        .iter()
        .flat_map(|t| t.iter().map(|v| v.abs()))
        .collect();
    // NaNs sort last: they are never pruned before numbers.
    let (_, kth, _) = mags.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
    let threshold = *kth;
    let below = tensors
        .iter()
        .flat_map(|t| t.iter())
        .filter(|v| v.abs().total_cmp(&threshold).is_lt())
        .count();
    let mut ties = k - below;
    let mut newly = 0;
    for t in tensors.iter_mut() {
        for v in t.iter_mut() {
            let a = v.abs();
            let take = match a.total_cmp(&threshold) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal if ties > 0 => {
                    ties -= 1;
                    true
                }
                _ => false,
            };
            if take {
                if *v != 0.0 {
                    newly += 1;
                }
                *v = 0.0;
            }
        }
    }
    newly
}

pub(crate) fn check_fraction(pass: &'static str, what: &str, f: f64) -> Result<(), PassError> {
    if !(0.0..=1.0).contains(&f) || f.is_nan() {
        return Err(PassError::Invalid {
            pass,
            reason: format!("{what} must be in [0, 1], got {f}"),
        });
    }
    Ok(())
}

/// A pruning method by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Magnitude,
    Structured,
    Nm,
    Entropy,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "magnitude" | "unstructured" => Method::Magnitude,
            "structured" => Method::Structured,
            "nm" | "n:m" => Method::Nm,
            "entropy" => Method::Entropy,
            _ => return None,
        })
    }

    /// The amount used without `--sparsity`: a fixed run's amount, and a search's upper bound.
    pub fn default_amount(self, searching: bool) -> f64 {
        match (self, searching) {
            (Method::Structured, false) => 0.25,
            (Method::Structured, true) => 0.9,
            (_, false) => 0.5,
            (_, true) => 0.95,
        }
    }

    pub fn needs_calibration(self) -> bool {
        self == Method::Entropy
    }

    /// Whether an amount can be searched (N:M has a fixed pattern).
    pub fn searchable(self) -> bool {
        self != Method::Nm
    }
}

/// Everything but the amount: builds the pass for an amount (the search varies it).
#[derive(Debug, Clone)]
pub struct PruneConfig {
    pub method: Method,
    pub global: bool,
    pub norm: Norm,
    pub n: usize,
    pub m: usize,
    pub round_to: usize,
    pub filter: Filter,
    /// Entropy method: prune-then-measure rounds, and the ON fraction under which a neuron is
    /// removed as dead.
    pub rounds: usize,
    pub collapse: f64,
    /// Entropy method: tolerance (points) for silencing whole layers; None: never.
    pub layer_drop: Option<f64>,
    /// Re-fit the layers after structured pruning on the calibration data; unstructured
    /// (per layer, not `global`) and N:M: prune with OBS weight updates (None: neither).
    pub recover: Option<recover::RecoverOptions>,
    /// Structured: channel score and allocation over the groups (None: the weight norm above,
    /// uniform or `global`); `by_macs`: the amount is the fraction of MACs to remove.
    pub score: Option<alloc::Score>,
    pub allocation: Option<alloc::Allocation>,
    pub by_macs: bool,
}

impl PruneConfig {
    pub fn new(method: Method) -> PruneConfig {
        PruneConfig {
            method,
            global: false,
            norm: Norm::L1,
            n: 2,
            m: 4,
            round_to: 1,
            filter: Filter::default(),
            rounds: 4,
            collapse: 0.01,
            layer_drop: None,
            recover: None,
            score: None,
            allocation: None,
            by_macs: false,
        }
    }

    /// The planned structured pass, when scores, allocation or a MAC budget ask for one.
    fn planned(&self, amount: f64) -> Option<planned::PlannedPrune> {
        if self.score.is_none() && self.allocation.is_none() && !self.by_macs {
            return None;
        }
        let score = self.score.unwrap_or(match self.norm {
            Norm::L1 => alloc::Score::L1,
            Norm::L2 => alloc::Score::L2,
        });
        let allocation = self.allocation.unwrap_or(if self.global {
            alloc::Allocation::Global
        } else {
            alloc::Allocation::Uniform
        });
        let mut p = planned::PlannedPrune::new(amount, self.by_macs, score, allocation);
        p.round_to = self.round_to;
        p.filter = self.filter.clone();
        Some(p)
    }

    /// The pass pruning `amount` (sparsity, or channel fraction for structured; N:M ignores it).
    pub fn pass(&self, amount: f64) -> Box<dyn Pass> {
        let obs = |pattern| {
            let opts = self.recover?;
            let p: Box<dyn Pass> = Box::new(obs::ObsPrune::new(pattern, self.filter.clone(), opts));
            Some(p)
        };
        match self.method {
            Method::Magnitude if !self.global => {
                if let Some(p) = obs(obs::Pattern::Unstructured(amount)) {
                    return p;
                }
                Box::new(MagnitudePrune {
                    sparsity: amount,
                    global: false,
                    filter: self.filter.clone(),
                })
            }
            Method::Nm => match obs(obs::Pattern::Nm {
                n: self.n,
                m: self.m,
            }) {
                Some(p) => p,
                None => Box::new(NmPrune {
                    n: self.n,
                    m: self.m,
                    filter: self.filter.clone(),
                }),
            },
            Method::Magnitude => Box::new(MagnitudePrune {
                sparsity: amount,
                global: self.global,
                filter: self.filter.clone(),
            }),
            Method::Structured => {
                let p: Box<dyn Pass> = match self.planned(amount) {
                    Some(p) => Box::new(p),
                    None => Box::new(StructuredPrune {
                        fraction: amount,
                        global: self.global,
                        norm: self.norm,
                        round_to: self.round_to,
                        filter: self.filter.clone(),
                    }),
                };
                match self.recover {
                    Some(opts) => Box::new(recover::Recovered { prune: p, opts }),
                    None => p,
                }
            }
            Method::Entropy => Box::new(EntropyPrune {
                sparsity: amount,
                rounds: self.rounds,
                collapse: self.collapse,
                layer_drop: self.layer_drop,
                filter: self.filter.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_substrings() {
        assert!(glob_match("conv*", "conv1.weight"));
        assert!(glob_match("*.weight", "fc1.weight"));
        assert!(glob_match("c?nv1*", "conv1.weight"));
        assert!(!glob_match("conv", "conv1"));
        let f = Filter {
            include: vec!["conv".into()],
            exclude: vec!["conv1".into()],
        };
        assert!(f.allows(&["conv2.weight"], "Conv"));
        assert!(!f.allows(&["conv1.weight"], "Conv"));
        assert!(!f.allows(&["fc1.weight"], "Gemm"));
        let ops = Filter {
            include: vec!["Gemm".into()],
            exclude: vec![],
        };
        assert!(ops.allows(&["fc1.weight"], "Gemm"));
        assert!(!ops.allows(&["conv1.weight"], "Conv"));
    }

    #[test]
    fn zero_smallest_counts_ties_and_existing_zeros() {
        let mut a = vec![0.0, 1.0, -1.0, 3.0];
        let mut b = vec![1.0, -0.5, 2.0];
        let n = zero_smallest(&mut [&mut a, &mut b], 4);
        let zeros = a.iter().chain(&b).filter(|v| **v == 0.0).count();
        assert_eq!(zeros, 4);
        assert_eq!(n, 3);
        assert_eq!(b[1], 0.0);
        assert_eq!(a[3], 3.0);
    }
}
