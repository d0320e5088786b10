//! `batch status` and `batch report`: what the output tree holds, item by item. Both read the
//! per-item records by id (one folder, one record), so a retried or duplicated run cannot add
//! rows; the rows are plain typed structs for any rendering (text, CSV, JSON, HTML).

use serde::Serialize;
use serde_json::Value;

use super::key::{unreadable_key, work_key};
use super::manifest::Item;
use super::state::{Claim, ItemError, Record, Status, CLAIM, RECORD};
use super::store::{fetch, resolve, Out, StoreConfig, StoreError};
use crate::errors::ErrorClass;

/// Where one manifest item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Recorded done with the current key.
    Done,
    /// Recorded failed with the current key.
    Failed,
    /// A live claim and no current record: a runner is on it.
    Running,
    /// A record with another key: the model, options, calibration data or versions changed.
    Stale,
    /// Nothing yet.
    Pending,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemStatus {
    pub id: String,
    pub state: ItemState,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_key: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusCounts {
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    pub running: usize,
    pub stale: usize,
    pub pending: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub counts: StatusCounts,
    pub items: Vec<ItemStatus>,
    /// Item folders in the tree that the manifest does not name.
    pub unlisted: Vec<String>,
}

fn read_record(out: &Out, id: &str) -> Result<Option<Record>, StoreError> {
    Ok(out
        .read(&format!("{id}/{RECORD}"))?
        .and_then(|(b, _)| serde_json::from_slice::<Record>(&b).ok()))
}

/// The state of each manifest item against the tree (keys recomputed from the inputs).
pub fn status(
    out: &Out,
    items: &[Item],
    base: &std::path::Path,
    config: &StoreConfig,
) -> Result<FleetStatus, StoreError> {
    let mut counts = StatusCounts {
        total: items.len(),
        ..Default::default()
    };
    let mut v = Vec::new();
    for item in items {
        let canonical = item.options.canonical_json();
        let model = fetch(&item.model, base, config, "cannot read the model");
        let calib = item
            .options
            .calib
            .as_ref()
            .map(|c| fetch(c, base, config, "cannot read the calibration data"));
        let key = match (model, calib.transpose()) {
            (Ok(m), Ok(c)) => {
                work_key(&m.sha256, &canonical, c.as_ref().map(|c| c.sha256.as_str()))
            }
            (Err(e), _) | (_, Err(e)) if e.input_class() == ErrorClass::Transient => return Err(e),
            _ => unreadable_key(
                &resolve(&item.model, base),
                &canonical,
                item.options
                    .calib
                    .as_deref()
                    .map(|c| resolve(c, base))
                    .as_deref(),
            ),
        };
        let record = read_record(out, &item.id)?;
        let state = match &record {
            Some(r) if r.key == key && r.status == Status::Done => ItemState::Done,
            Some(r) if r.key == key => ItemState::Failed,
            _ => {
                let live = out
                    .read(&format!("{}/{CLAIM}", item.id))?
                    .and_then(|(b, _)| serde_json::from_slice::<Claim>(&b).ok())
                    .is_some_and(|c| !c.stale(super::state::now_unix()));
                match (&record, live) {
                    (_, true) => ItemState::Running,
                    (Some(_), false) => ItemState::Stale,
                    (None, false) => ItemState::Pending,
                }
            }
        };
        match state {
            ItemState::Done => counts.done += 1,
            ItemState::Failed => counts.failed += 1,
            ItemState::Running => counts.running += 1,
            ItemState::Stale => counts.stale += 1,
            ItemState::Pending => counts.pending += 1,
        }
        v.push(ItemStatus {
            id: item.id.clone(),
            state,
            recorded_key: record.map(|r| r.key).filter(|k| *k != key),
            key,
        });
    }
    let listed: std::collections::HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let unlisted = out
        .ids()?
        .into_iter()
        .filter(|id| !listed.contains(id.as_str()))
        .collect();
    Ok(FleetStatus {
        counts,
        items: v,
        unlisted,
    })
}

/// Latency of one device (`local` is this machine's timing in the compress report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceLatency {
    pub device: String,
    pub original_ms: Option<f64>,
    pub compressed_ms: Option<f64>,
    pub ratio: Option<f64>,
}

/// One model of the fleet report (Table 2.1's columns).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRow {
    pub id: String,
    pub status: Status,
    pub model: String,
    pub parameters: Option<u64>,
    pub parameters_after: Option<u64>,
    pub pruned_fraction: Option<f64>,
    pub onnx_bytes: Option<u64>,
    pub simplified_onnx_bytes: Option<u64>,
    pub bitstream_bytes: Option<u64>,
    /// ONNX bytes / bitstream bytes.
    pub ratio: Option<f64>,
    pub metric: Option<String>,
    pub metric_before: Option<f64>,
    pub metric_after: Option<f64>,
    pub latency: Vec<DeviceLatency>,
    /// Wall time of the item.
    pub seconds: f64,
    pub error: Option<ItemError>,
}

impl FleetRow {
    pub fn metric_drop(&self) -> Option<f64> {
        Some(self.metric_before? - self.metric_after?)
    }

    fn of(r: &Record) -> FleetRow {
        let rep = r.report.as_ref();
        let u = |k: &str| rep.and_then(|v| v.get(k)).and_then(Value::as_u64);
        let f = |k: &str| rep.and_then(|v| v.get(k)).and_then(Value::as_f64);
        let mut latency = Vec::new();
        if f("latency_ms_original").is_some() {
            latency.push(DeviceLatency {
                device: "local".into(),
                original_ms: f("latency_ms_original"),
                compressed_ms: f("latency_ms_compressed"),
                ratio: f("latency_ratio"),
            });
        }
        if let Some(Value::Array(cols)) = rep.and_then(|v| v.get("devices")) {
            for c in cols {
                let g = |k: &str| c.get(k).and_then(Value::as_f64);
                latency.push(DeviceLatency {
                    device: c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    original_ms: g("latency_ms_original"),
                    compressed_ms: g("latency_ms_compressed"),
                    ratio: g("ratio"),
                });
            }
        }
        FleetRow {
            id: r.id.clone(),
            status: r.status,
            model: r.model.clone(),
            parameters: u("parameters"),
            parameters_after: u("parameters_after"),
            pruned_fraction: f("pruned_fraction"),
            onnx_bytes: u("onnx_bytes"),
            simplified_onnx_bytes: u("simplified_onnx_bytes"),
            bitstream_bytes: u("bitstream_bytes"),
            ratio: f("compression_ratio_vs_onnx"),
            metric: rep
                .and_then(|v| v.get("metric"))
                .and_then(Value::as_str)
                .map(str::to_string),
            metric_before: f("metric_before"),
            metric_after: f("metric_after"),
            latency,
            seconds: r.seconds,
            error: r.error.clone(),
        }
    }
}

/// Sums over the done items.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetTotals {
    pub items: usize,
    pub done: usize,
    pub failed: usize,
    pub parameters: u64,
    pub onnx_bytes: u64,
    pub simplified_onnx_bytes: u64,
    pub bitstream_bytes: u64,
    /// Total ONNX bytes / total bitstream bytes.
    pub ratio: Option<f64>,
    /// Sum of the items' wall times (machine time, not the fleet's elapsed time).
    pub item_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub rows: Vec<FleetRow>,
    pub totals: FleetTotals,
    /// Ids of the slowest done items, slowest first (at most 3).
    pub slowest: Vec<String>,
    /// Ids of the done items with the largest metric drop (at most 3), else the smallest
    /// ratio when no item has a metric.
    pub worst: Vec<String>,
}

/// The report over the tree's records, one row per id, sorted by id; `only` keeps the ids a
/// manifest names.
pub fn report(out: &Out, only: Option<&[Item]>) -> Result<FleetReport, StoreError> {
    let ids: Vec<String> = match only {
        Some(items) => {
            let mut v: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
            v.sort();
            v
        }
        None => out.ids()?,
    };
    let mut rows = Vec::new();
    for id in ids {
        if let Some(r) = read_record(out, &id)? {
            rows.push(FleetRow::of(&r));
        }
    }
    Ok(summarize(rows))
}

/// Totals, slowest and worst of the rows.
pub fn summarize(rows: Vec<FleetRow>) -> FleetReport {
    let mut t = FleetTotals {
        items: rows.len(),
        ..Default::default()
    };
    for r in &rows {
        t.item_seconds += r.seconds;
        match r.status {
            Status::Failed => t.failed += 1,
            Status::Done => {
                t.done += 1;
                t.parameters += r.parameters.unwrap_or(0);
                t.onnx_bytes += r.onnx_bytes.unwrap_or(0);
                t.simplified_onnx_bytes += r.simplified_onnx_bytes.unwrap_or(0);
                t.bitstream_bytes += r.bitstream_bytes.unwrap_or(0);
            }
        }
    }
    t.ratio = (t.bitstream_bytes > 0).then(|| t.onnx_bytes as f64 / t.bitstream_bytes as f64);
    let done: Vec<&FleetRow> = rows.iter().filter(|r| r.status == Status::Done).collect();
    let mut by_time = done.clone();
    by_time.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let slowest = by_time.iter().take(3).map(|r| r.id.clone()).collect();
    let mut by_drop: Vec<&FleetRow> = done
        .iter()
        .copied()
        .filter(|r| r.metric_drop().is_some())
        .collect();
    let worst = if by_drop.is_empty() {
        let mut by_ratio = done.clone();
        by_ratio.sort_by(|a, b| {
            a.ratio
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.ratio.unwrap_or(f64::INFINITY))
        });
        by_ratio.iter().take(3).map(|r| r.id.clone()).collect()
    } else {
        by_drop.sort_by(|a, b| {
            b.metric_drop()
                .unwrap_or(0.0)
                .total_cmp(&a.metric_drop().unwrap_or(0.0))
        });
        by_drop.iter().take(3).map(|r| r.id.clone()).collect()
    };
    FleetReport {
        rows,
        totals: t,
        slowest,
        worst,
    }
}
