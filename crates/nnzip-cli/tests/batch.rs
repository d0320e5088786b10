//! `nnzip batch` end to end on the committed fixtures: concurrent shards with one SIGKILLed
//! mid-item and rerun, failures recorded, resumption by key, `--shard auto` from the
//! schedulers' environments, status and report by id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{nnzip, nnzip_env};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NNZIP: &str = env!("CARGO_BIN_EXE_nnzip");

/// The six fixture models of the fleet.
const MODELS: [&str; 6] = [
    "cnn",
    "mlp",
    "mobilenet",
    "resnet",
    "transformer",
    "dynamic_attention",
];

/// Options that keep each item well under a second in a debug build: no latency timing.
const FAST: &str = r#"{"runs": 0}"#;

/// `FAST` for a model, with the sequence length the dynamic one needs.
fn fast(id: &str) -> String {
    if id == "dynamic_attention" {
        r#"{"runs": 0, "shape": {"input": [1, 8, 32], "mask": [1, 1, 1, 8]}}"#.into()
    } else {
        FAST.into()
    }
}

/// A manifest of the six fixtures, a corrupt model and a missing one.
fn manifest(dir: &Path, options: &dyn Fn(&str) -> String) -> PathBuf {
    let corrupt = dir.join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07not a protobuf at all\xff\xff").unwrap();
    let mut text = String::new();
    for m in MODELS {
        let path = common::fixture(&format!("{m}.onnx"));
        text.push_str(&format!(
            "{{\"id\": \"{m}\", \"model\": \"{}\", \"options\": {}}}\n",
            path.display(),
            options(m)
        ));
    }
    text.push_str(&format!(
        "{{\"id\": \"corrupt\", \"model\": \"corrupt.onnx\", \"options\": {FAST}}}\n"
    ));
    text.push_str(&format!(
        "{{\"id\": \"missing\", \"model\": \"no/such/model.onnx\", \"options\": {FAST}}}\n"
    ));
    let p = dir.join("fleet.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

/// JSON events of a run's stdout.
fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ids_of(evs: &[serde_json::Value], kind: &str) -> Vec<String> {
    evs.iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn run_args<'a>(manifest: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "batch",
        "run",
        manifest,
        "--out",
        out,
        "--log-format",
        "json",
    ];
    v.extend_from_slice(extra);
    v
}

/// Every file under `dir` (relative names).
fn files(dir: &Path) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            for f in files(&e.path()) {
                v.insert(format!("{}/{f}", e.file_name().to_string_lossy()));
            }
        } else {
            v.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    v
}

fn record(out: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join(id).join("report.json")).unwrap()).unwrap()
}

#[test]
fn concurrent_shards_with_one_killed_give_the_single_process_result() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &fast);
    let m = m.to_str().unwrap();

    // The reference: one process, the whole fleet.
    let single = dir.path().join("single");
    let o = nnzip(&run_args(m, single.to_str().unwrap(), &[]));
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let evs = events(&o.stdout);
    let done: BTreeSet<String> = ids_of(&evs, "done").into_iter().collect();
    assert_eq!(done, MODELS.iter().map(|s| s.to_string()).collect());
    let failed: BTreeSet<String> = ids_of(&evs, "fail").into_iter().collect();
    assert_eq!(failed, ["corrupt", "missing"].map(String::from).into());
    for id in ["corrupt", "missing"] {
        let r = record(&single, id);
        assert_eq!(r["status"], "failed");
        assert_eq!(r["error"]["class"], "bad_input", "{r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }

    // Three shards at once; the one with the most real models is killed mid-item.
    let sharded = dir.path().join("sharded");
    let out = sharded.to_str().unwrap();
    let shard_of = |id: &str| {
        (0..3u64)
            .find(|&i| nnzip::batch::shard::Shard { index: i, count: 3 }.contains(id))
            .unwrap()
    };
    let mut per_shard = [0usize; 3];
    for id in MODELS {
        per_shard[shard_of(id) as usize] += 1;
    }
    let victim = (0..3).max_by_key(|&i| per_shard[i]).unwrap();
    let mut children = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let child = Command::new(NNZIP)
            .args(run_args(m, out, &["--shard", &shard]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        children.push(child);
    }
    let mut all_events = Vec::new();
    // Read the victim's events until it starts a real model, then SIGKILL it.
    let mut victim_child = children.remove(victim);
    let mut started = None;
    {
        let stdout = victim_child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(l)) = lines.next() {
            let e: serde_json::Value = serde_json::from_str(&l).unwrap();
            all_events.push(e.clone());
            if e["event"] == "start" && MODELS.contains(&e["id"].as_str().unwrap()) {
                started = Some(e["id"].as_str().unwrap().to_string());
                victim_child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    let started = started.expect("the victim started a model");
    victim_child.wait().unwrap();
    for c in children {
        let o = c.wait_with_output().unwrap();
        all_events.extend(events(&o.stdout));
    }
    // The killed item is unfinished: no record, maybe a claim and temp files.
    assert!(!sharded.join(&started).join("report.json").exists());
    let shard = format!("{victim}/3");
    let o = nnzip(&run_args(m, out, &["--shard", &shard]));
    assert!(
        matches!(o.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    all_events.extend(events(&o.stdout));

    // Every model done exactly once over all processes, the killed one included.
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for id in ids_of(&all_events, "done") {
        *count.entry(id).or_default() += 1;
    }
    assert_eq!(
        count,
        MODELS.iter().map(|m| (m.to_string(), 1)).collect(),
        "{all_events:#?}"
    );
    // Byte-identical bitstreams, nothing half-written, no claim left.
    for id in MODELS {
        let a = std::fs::read(single.join(id).join("model.nnc")).unwrap();
        let b = std::fs::read(sharded.join(id).join("model.nnc")).unwrap();
        assert!(a == b, "{id}: the sharded bitstream differs");
        assert_eq!(record(&single, id)["key"], record(&sharded, id)["key"]);
    }
    let left: Vec<String> = files(&sharded)
        .into_iter()
        .filter(|f| f.contains(".nnzip-") || f.ends_with(".claim") || f.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // The report: one row per id, six done and two failed.
    let o = nnzip(&["batch", "report", out, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = r["rows"].as_array().unwrap();
    let ids: BTreeSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(rows.len(), 8);
    assert_eq!(ids.len(), 8);
    assert_eq!(r["totals"]["done"], 6);
    assert_eq!(r["totals"]["failed"], 2);
    for row in rows.iter().filter(|r| r["status"] == "done") {
        assert!(row["bitstream_bytes"].as_u64().unwrap() > 0);
        assert!(row["ratio"].as_f64().unwrap() > 1.0, "{row}");
        assert!(row["parameters"].as_u64().unwrap() > 0);
    }
    let total: u64 = rows
        .iter()
        .filter_map(|r| r["bitstream_bytes"].as_u64())
        .sum();
    assert_eq!(r["totals"]["bitstream_bytes"].as_u64().unwrap(), total);
    let csv = dir.path().join("fleet.csv");
    let o = nnzip(&["batch", "report", out, "--csv", csv.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 9);
}

#[test]
fn a_rerun_skips_finished_items_and_a_changed_option_redoes_only_its_item() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &fast);
    let out = dir.path().join("out");
    let (ms, os) = (m.to_str().unwrap(), out.to_str().unwrap());
    let o = nnzip(&run_args(ms, os, &["--jobs", "2"]));
    assert_eq!(o.status.code(), Some(3));
    let first = events(&o.stdout);
    let run = first.iter().find(|e| e["event"] == "run").unwrap();
    assert_eq!(run["jobs"], 2);
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(run["intra_threads"].as_u64().unwrap() * 2 <= cores.max(2));

    // Unchanged: nothing is done again; the failures stay failures (exit 3).
    let o = nnzip(&run_args(ms, os, &[]));
    assert_eq!(o.status.code(), Some(3));
    let evs = events(&o.stdout);
    assert!(ids_of(&evs, "done").is_empty(), "{evs:?}");
    assert_eq!(ids_of(&evs, "skip").len(), 8);
    let st = nnzip(&["batch", "status", os, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["counts"]["done"], 6);
    assert_eq!(st["counts"]["failed"], 2);
    assert_eq!(st["counts"]["pending"], 0);

    // One item's options change: status calls it stale, the rerun redoes only it.
    let changed = |id: &str| {
        if id == "mlp" {
            r#"{"runs": 0, "qp": -32, "decompressed": true, "html": true}"#.to_string()
        } else {
            fast(id)
        }
    };
    let m2 = manifest(dir.path(), &changed);
    let st = nnzip(&[
        "batch",
        "status",
        os,
        "--manifest",
        m2.to_str().unwrap(),
        "--json",
    ]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["counts"]["stale"], 1, "{st}");
    let before = std::fs::read(out.join("mlp/model.nnc")).unwrap();
    let o = nnzip(&run_args(m2.to_str().unwrap(), os, &[]));
    assert_eq!(o.status.code(), Some(3));
    let evs = events(&o.stdout);
    assert_eq!(ids_of(&evs, "done"), vec!["mlp".to_string()]);
    let after = std::fs::read(out.join("mlp/model.nnc")).unwrap();
    assert!(after.len() < before.len(), "a coarser QP codes smaller");
    assert_eq!(record(&out, "mlp")["options"]["qp"], -32);
    // The optional outputs: the decoded model (as `nnzip decompress` gives it) and the page.
    let decoded = nnzip::onnx::Model::load(out.join("mlp/model.onnx")).unwrap();
    let original = nnzip::onnx::Model::load(common::fixture("mlp.onnx")).unwrap();
    assert_eq!(decoded.weights().len(), original.weights().len());
    let page = std::fs::read_to_string(out.join("mlp/report.html")).unwrap();
    assert!(page.contains("<svg"), "a report page with its plots");
    assert!(!out.join("cnn/model.onnx").exists(), "only where asked");

    // --retry-failed tries the failures again (they fail again: still exit 3).
    let o = nnzip(&run_args(m2.to_str().unwrap(), os, &["--retry-failed"]));
    assert_eq!(o.status.code(), Some(3));
    let evs = events(&o.stdout);
    let f: BTreeSet<String> = ids_of(&evs, "fail").into_iter().collect();
    assert_eq!(f, ["corrupt", "missing"].map(String::from).into());
}

/// A manifest of missing models: each item fails at once, which is all the shard tests need.
fn cheap_manifest(dir: &Path, n: usize) -> PathBuf {
    let text: String = (0..n)
        .map(|i| format!("{{\"id\": \"m{i}\", \"model\": \"absent/m{i}.onnx\"}}\n"))
        .collect();
    let p = dir.join("cheap.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn shard_ids(m: &Path, out: &Path, env: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args = run_args(
        m.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--shard", "auto"],
    );
    args.extend_from_slice(extra);
    let o = nnzip_env(&args, env);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ids_of(&events(&o.stdout), "fail")
}

#[test]
fn shard_auto_reads_kubernetes_and_slurm() {
    let dir = tempfile::tempdir().unwrap();
    let m = cheap_manifest(dir.path(), 24);
    let all: BTreeSet<String> = (0..24).map(|i| format!("m{i}")).collect();
    let union_of = |shards: Vec<Vec<String>>| {
        let n: usize = shards.iter().map(Vec::len).sum();
        let u: BTreeSet<String> = shards.into_iter().flatten().collect();
        assert_eq!(n, u.len(), "shards overlap");
        u
    };
    // Kubernetes Indexed Job: the index from the pod, the count from NNZIP_SHARD_COUNT or
    // --shard-count.
    let k8s: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let i = i.to_string();
            let out = dir.path().join(format!("k8s-{i}"));
            shard_ids(
                &m,
                &out,
                &[("JOB_COMPLETION_INDEX", &i), ("NNZIP_SHARD_COUNT", "3")],
                &[],
            )
        })
        .collect();
    assert!(k8s.iter().all(|s| !s.is_empty()));
    assert_eq!(union_of(k8s), all);
    let flag: Vec<Vec<String>> = (0..4)
        .map(|i| {
            let i = i.to_string();
            let out = dir.path().join(format!("k8s-flag-{i}"));
            shard_ids(
                &m,
                &out,
                &[("JOB_COMPLETION_INDEX", &i)],
                &["--shard-count", "4"],
            )
        })
        .collect();
    assert_eq!(union_of(flag), all);
    // Slurm: --array=1-3 (ids from 1).
    let slurm: Vec<Vec<String>> = (1..=3)
        .map(|i| {
            let i = i.to_string();
            let out = dir.path().join(format!("slurm-{i}"));
            shard_ids(
                &m,
                &out,
                &[
                    ("SLURM_ARRAY_TASK_ID", &i),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_MAX", "3"),
                    ("SLURM_ARRAY_TASK_COUNT", "3"),
                ],
                &[],
            )
        })
        .collect();
    assert_eq!(union_of(slurm), all);
    // A non-contiguous array (--array=1,3,5) and a missing count are refused (exit 2).
    let out = dir.path().join("refused");
    let (ms, os) = (m.to_str().unwrap(), out.to_str().unwrap());
    let o = nnzip_env(
        &run_args(ms, os, &["--shard", "auto"]),
        &[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not contiguous"));
    let o = nnzip_env(
        &run_args(ms, os, &["--shard", "auto"]),
        &[("JOB_COMPLETION_INDEX", "0")],
    );
    assert_eq!(o.status.code(), Some(2));
    // The library says the count is missing; the command says which flag gives it.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hint: pass --shard-count N"), "{err}");
}

#[test]
fn manifest_mistakes_name_their_line_and_plan_writes_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bad.jsonl");
    std::fs::write(
        &m,
        "{\"id\": \"a\", \"model\": \"a.onnx\"}\n{\"id\": \"b\", \"model\": \"b.onnx\", \"options\": {\"max_dorp\": 1}}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = nnzip(&[
        "batch",
        "run",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2") && err.contains("max_dorp"), "{err}");

    // An output that cannot be a folder (under a regular file) is refused before any work.
    let good = cheap_manifest(dir.path(), 2);
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let o = nnzip(&[
        "batch",
        "run",
        good.to_str().unwrap(),
        "--out",
        blocker.join("out").to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(events(&o.stdout).is_empty(), "no item was started");
    // No ONNX Runtime: exit 4 before any item, and nothing recorded as failed.
    let fresh = dir.path().join("out-no-ort");
    let o = nnzip(&[
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
        "batch",
        "run",
        good.to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(ids_of(&events(&o.stdout), "fail").is_empty());

    let defaults = dir.path().join("defaults.toml");
    std::fs::write(
        &defaults,
        "runs = 0\nqp = -36\n[shape]\ninput = [1, 1, 28, 28]\n",
    )
    .unwrap();
    let pattern = common::fixture("*.onnx").display().to_string();
    let o = nnzip(&[
        "batch",
        "plan",
        &pattern,
        "--defaults",
        defaults.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n = std::fs::read_dir(common::repo().join("fixtures"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "onnx")
        })
        .count();
    assert_eq!(lines.len(), n);
    let cnn = lines.iter().find(|l| l["id"] == "cnn").unwrap();
    assert_eq!(cnn["options"]["qp"], -36);
    assert_eq!(cnn["options"]["shape"]["input"][3], 28);
    assert!(Path::new(cnn["model"].as_str().unwrap()).is_absolute());
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "rnus = 0\n").unwrap();
    let o = nnzip(&[
        "batch",
        "plan",
        &pattern,
        "--defaults",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rnus"));
}
