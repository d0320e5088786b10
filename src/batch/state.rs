//! An item's state in the output tree, `OUT/<id>/`:
//! - `report.json`, the [`Record`], written last: with the item's current key and `done` it
//!   means the outputs beside it are complete; `failed` records why the item failed;
//! - `.claim`, the [`Claim`] of the runner working on it, with a lease it renews; an expired
//!   lease, or a dead process on the same host, makes the claim stale and anyone may take it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const RECORD: &str = "report.json";
pub const CLAIM: &str = ".claim";
pub const BITSTREAM: &str = "model.nnc";
pub const GRAPH: &str = "model.nnc.onnx";
pub const HTML: &str = "report.html";
pub const ONNX: &str = "model.onnx";

/// The record format's version.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// `bad_input`, `runtime`, `usage`, `verification`, `write`, `other`.
    pub class: String,
    pub message: String,
}

/// `OUT/<id>/report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub nnzip_batch: u32,
    pub id: String,
    pub key: String,
    pub status: Status,
    pub model: String,
    /// sha256 of the model's bytes (absent when it could not be read).
    pub model_sha256: Option<String>,
    pub model_bytes: Option<u64>,
    /// The item's options with every default spelled out.
    pub options: serde_json::Value,
    pub versions: String,
    /// Wall time of the item, seconds.
    pub seconds: f64,
    /// Unix time the record was written.
    pub finished_unix: u64,
    /// The files written beside the record.
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
    /// `nnzip compress --json`'s report (with `devices` columns when measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// Who holds a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// Random per run, so a reused pid is not mistaken for the same runner.
    pub run: String,
}

/// `OUT/<id>/.claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: Owner,
    pub key: String,
    /// Unix time after which the claim is stale unless renewed.
    pub expires_unix: u64,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl Owner {
    /// This process, with a fresh run id.
    pub fn me() -> Owner {
        use rand::Rng;
        let run: u64 = rand::thread_rng().gen();
        Owner {
            host: host_name(),
            pid: std::process::id(),
            run: format!("{run:016x}"),
        }
    }

    /// Whether the owner is known to be gone: a process of this host that no longer exists.
    fn gone(&self) -> bool {
        if self.host != host_name() || !cfg!(target_os = "linux") {
            return false;
        }
        !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl Claim {
    pub fn new(owner: &Owner, key: &str, lease: Duration) -> Claim {
        Claim {
            owner: owner.clone(),
            key: key.to_string(),
            expires_unix: now_unix() + lease.as_secs().max(1),
        }
    }

    /// Whether anyone may take the claim over.
    pub fn stale(&self, now: u64) -> bool {
        self.expires_unix < now || self.owner.gone()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_go_stale_by_lease_or_by_a_dead_owner() {
        let me = Owner::me();
        let c = Claim::new(&me, "k", Duration::from_secs(60));
        assert!(!c.stale(now_unix()));
        assert!(c.stale(now_unix() + 61));
        let dead = Owner {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        let d = Claim::new(&dead, "k", Duration::from_secs(60));
        assert_eq!(d.stale(now_unix()), cfg!(target_os = "linux"));
        let elsewhere = Owner {
            host: "another-host".into(),
            ..dead
        };
        assert!(!Claim::new(&elsewhere, "k", Duration::from_secs(60)).stale(now_unix()));
        let back: Claim = serde_json::from_slice(&c.to_bytes()).unwrap();
        assert_eq!(back, c);
    }
}
