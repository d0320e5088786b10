//! Structured pruning with a plan: channels ranked by a [`Score`], counts per group from an
//! [`Allocation`], to a fraction of channels or to a MAC budget (`--target-macs`). The zeroing
//! is the same as [`super::StructuredPrune`]'s (`zero_channels` over `graph::groups`), so
//! simplification removes the channels and reconstruction can follow.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::alloc::{
    allocate_measured, consumer_moments, group_scores, level_counts, lowest, measure_sensitivity,
    normalise, threshold_counts, Allocation, MacModel, Score,
};
use super::structured::{
    rounded_removal, selected_groups, source_weight_names, zero_channels, GroupReport,
};
use super::{census, check_fraction, prunable_weights, Filter, PruneOutcome};
use crate::graph::editor::Editor;
use crate::graph::groups::ChannelGroup;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};

#[derive(Debug, Clone)]
pub struct PlannedPrune {
    /// Fraction of channels (uniform: of each group; else of all selected channels), or with
    /// `by_macs` the fraction of the model's MACs to remove.
    pub amount: f64,
    pub by_macs: bool,
    pub score: Score,
    pub allocation: Allocation,
    pub round_to: usize,
    pub filter: Filter,
    /// Fractions each group's damage is measured at (measured allocation).
    pub levels: Vec<f64>,
    /// Calibration samples for scores and measurements.
    pub samples: usize,
}

/// The plan's account: how the budget was spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanReport {
    pub score: Score,
    pub allocation: Allocation,
    /// MACs per inference at the calibration sizes, before and as planned (the model's own
    /// count after simplification is in the simplify report).
    pub macs_before: f64,
    pub macs_planned: f64,
    /// With `--target-macs`: the fraction of the MACs asked to be left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_macs: Option<f64>,
    /// Per group: fraction removed.
    pub fractions: Vec<(String, f64)>,
    pub seconds: f64,
}

impl PlanReport {
    /// Why the plan leaves more MACs than `--target-macs` asked, when it does: every group at
    /// its deepest level, or (with `--round-to`) no rounded count left to take.
    pub fn shortfall(&self) -> Option<String> {
        let target = self.target_macs?;
        let left = self.macs_planned / self.macs_before.max(1.0);
        let limit = match self.allocation {
            Allocation::Measured => "at most 3/4 of each group, in steps of --round-to",
            _ => "each group keeps at least one channel, or a multiple of --round-to",
        };
        (left > target + 1e-6).then(|| {
            format!(
                "the plan leaves {:.1}% of the MACs, more than the target's {:.1}%: the groups \
                 cannot be pruned further ({limit})",
                100.0 * left,
                100.0 * target
            )
        })
    }
}

impl PlannedPrune {
    pub fn new(amount: f64, by_macs: bool, score: Score, allocation: Allocation) -> PlannedPrune {
        PlannedPrune {
            amount,
            by_macs,
            score,
            allocation,
            round_to: 1,
            filter: Filter::default(),
            levels: vec![0.125, 0.25, 0.375, 0.5, 0.625, 0.75],
            samples: 32,
        }
    }

    fn needs_data(&self) -> bool {
        self.score.needs_data() || self.allocation == Allocation::Measured
    }

    /// Removal counts per group.
    fn counts(
        &self,
        ed: &Editor,
        ctx: &PassContext<'_>,
        groups: &[&ChannelGroup],
        scores: &[Vec<f64>],
        macs: &MacModel,
    ) -> Result<Vec<usize>, PassError> {
        let kept_of = |counts: &[usize]| -> Vec<f64> {
            groups
                .iter()
                .zip(counts)
                .map(|(g, &c)| 1.0 - c as f64 / g.channels.max(1) as f64)
                .collect()
        };
        let uniform = |f: f64| -> Vec<usize> {
            groups
                .iter()
                .map(|g| {
                    rounded_removal(
                        g.channels,
                        (f * g.channels as f64 + 1e-9).floor() as usize,
                        self.round_to.max(1),
                    )
                })
                .collect()
        };
        let target = 1.0 - self.amount;
        let macs_of = |c: &[usize]| macs.after(&kept_of(c)) / macs.total.max(1.0);
        // The largest `x` in [0, hi] whose counts stay within the MAC target (bisection).
        let fit = |hi: f64, f: &dyn Fn(f64) -> Vec<usize>| -> Vec<usize> {
            let (mut lo, mut up) = (0.0, hi);
            for _ in 0..40 {
                let mid = 0.5 * (lo + up);
                if macs_of(&f(mid)) <= target {
                    up = mid;
                } else {
                    lo = mid;
                }
            }
            f(up)
        };
        let total: usize = groups.iter().map(|g| g.channels).sum();
        Ok(match self.allocation {
            Allocation::Uniform if self.by_macs => fit(0.99, &uniform),
            Allocation::Uniform => uniform(self.amount),
            Allocation::Global | Allocation::Standardized => {
                let normed: Vec<Vec<f64>> = scores
                    .iter()
                    .map(|s| normalise(s, self.allocation == Allocation::Standardized))
                    .collect();
                let counts =
                    |x: f64| threshold_counts(&normed, (x * total as f64).round() as usize);
                if self.by_macs {
                    fit(1.0, &counts)
                } else {
                    counts(self.amount)
                }
            }
            Allocation::Measured => {
                let (calib, rt) = data(ctx)?;
                let k = self.round_to.max(1);
                let options: Vec<Vec<usize>> = groups
                    .iter()
                    .map(|g| level_counts(g.channels, &self.levels, k))
                    .collect();
                let damage = measure_sensitivity(
                    ed,
                    rt,
                    &calib.take(self.samples)?,
                    groups,
                    scores,
                    &options,
                )?;
                // Without a MAC target: the MACs one fraction everywhere would leave.
                let goal = if self.by_macs {
                    target
                } else {
                    macs_of(&uniform(self.amount))
                };
                let channels: Vec<usize> = groups.iter().map(|g| g.channels).collect();
                allocate_measured(macs, &damage, &options, &channels, goal)
            }
        })
    }

    pub fn prune(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PruneOutcome, PassError> {
        let t0 = std::time::Instant::now();
        check_fraction("structured", "amount", self.amount)?;
        let weights = prunable_weights(ed.model());
        let before = census(ed.model(), &weights)?;
        let (groups, skipped) = selected_groups(ed, &self.filter, &weights);
        let refs: Vec<&ChannelGroup> = groups.iter().collect();
        let moments = if self.score.needs_data() {
            let (calib, rt) = data(ctx)?;
            consumer_moments(ed, rt, calib, &refs, self.samples)?
        } else {
            HashMap::new()
        };
        let scores: Vec<Vec<f64>> = refs
            .iter()
            .map(|g| group_scores(ed, g, self.score, &moments))
            .collect::<Result<_, _>>()?;
        let dims = mac_dims(ed, ctx);
        let macs = MacModel::new(ed, &refs, &dims);
        let counts = self.counts(ed, ctx, &refs, &scores, &macs)?;
        let mut reports = Vec::new();
        let mut kept = Vec::new();
        for ((g, s), &c) in refs.iter().zip(&scores).zip(&counts) {
            let chans = lowest(s, c);
            zero_channels(ed, g, &chans)?;
            kept.push(1.0 - chans.len() as f64 / g.channels.max(1) as f64);
            reports.push(GroupReport {
                name: g.name.clone(),
                channels: g.channels,
                removed: chans,
                sources: source_weight_names(g)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            });
        }
        let after = census(ed.model(), &weights)?;
        let mut out = PruneOutcome::from_census("structured", &weights, &before, &after);
        let by_weight: HashMap<&str, (usize, usize)> = reports
            .iter()
            .flat_map(|r| {
                r.sources
                    .iter()
                    .map(move |s| (s.as_str(), (r.channels, r.removed.len())))
            })
            .collect();
        for l in &mut out.layers {
            if let Some(&(c, r)) = by_weight.get(l.name.as_str()) {
                (l.channels, l.channels_removed) = (Some(c), Some(r));
            }
        }
        out.skipped = skipped;
        out.changed = reports.iter().any(|r| !r.removed.is_empty());
        out.plan = Some(PlanReport {
            score: self.score,
            allocation: self.allocation,
            macs_before: macs.total,
            macs_planned: macs.after(&kept),
            target_macs: self.by_macs.then_some(1.0 - self.amount),
            fractions: reports
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        r.removed.len() as f64 / r.channels.max(1) as f64,
                    )
                })
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
        out.groups = reports;
        Ok(out)
    }
}

fn data<'a>(
    ctx: &PassContext<'a>,
) -> Result<
    (
        &'a crate::calib::Calibration,
        &'static crate::runtime::Runtime,
    ),
    PassError,
> {
    match (ctx.calib, ctx.runtime) {
        (Some(c), Some(rt)) => Ok((c, rt)),
        _ => Err(PassError::NeedsCalibration {
            pass: "structured (data scores or measured allocation)",
        }),
    }
}

/// Input sizes for MAC counts: the calibration data's, else the planned inputs', else the
/// declared ones.
fn mac_dims(ed: &Editor, ctx: &PassContext<'_>) -> crate::graph::infer::InputDims {
    let shapes: Vec<(String, Vec<usize>)> = match (ctx.calib, ctx.inputs) {
        (Some(c), _) => c
            .slice(0, 1)
            .map(|v| v.into_iter().map(|(k, t)| (k, t.dims)).collect())
            .unwrap_or_default(),
        (None, Some(p)) => p.shapes(),
        _ => Vec::new(),
    };
    crate::inspect::mac_dims(ed.model(), &shapes).unwrap_or_default()
}

impl Pass for PlannedPrune {
    fn name(&self) -> &'static str {
        "structured-prune"
    }
    fn preserves(&self) -> Preserves {
        Preserves::Interface
    }
    fn run(&self, ed: &mut Editor, ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        if self.needs_data() && ctx.calib.is_none() {
            return Err(PassError::NeedsCalibration {
                pass: "structured (data scores or measured allocation)",
            });
        }
        Ok(self.prune(ed, ctx)?.into_report(self.name()))
    }
}
