//! The `deploy/` templates run for real where this machine can: the Dask driver on a
//! `dask.distributed.LocalCluster` with two worker processes (from the venv that
//! scripts/setup-fleet.sh makes), the Slurm array script with `SLURM_*` set as Slurm sets them
//! (and `scontrol` replaced by a recorder), and the Kubernetes and Argo manifests parsed with
//! their exit-code rules checked against nnzip's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const NNZIP: &str = env!("CARGO_BIN_EXE_nnzip");

const MODELS: [&str; 6] = [
    "cnn",
    "mlp",
    "mobilenet",
    "resnet",
    "transformer",
    "dynamic_attention",
];

fn python() -> PathBuf {
    let py = common::repo().join(".venv-fleet/bin/python");
    if !py.exists() {
        let o = Command::new("bash")
            .arg(common::repo().join("scripts/setup-fleet.sh"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    py
}

fn manifest(dir: &Path) -> PathBuf {
    let text: String = MODELS
        .iter()
        .map(|m| {
            let shape = if *m == "dynamic_attention" {
                r#", "shape": {"input": [1, 8, 32], "mask": [1, 1, 1, 8]}"#
            } else {
                ""
            };
            format!(
                "{{\"id\": \"{m}\", \"model\": \"{}\", \"options\": {{\"runs\": 0{shape}}}}}\n",
                common::fixture(&format!("{m}.onnx")).display()
            )
        })
        .collect();
    let p = dir.join("fleet.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_dask_driver_runs_the_fleet_on_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let out = dir.path().join("out");
    let o = Command::new(python())
        .arg(common::repo().join("deploy/dask/nnzip_dask.py"))
        .args([m.to_str().unwrap(), out.to_str().unwrap()])
        .args(["--shards", "4", "--local-workers", "2", "--nnzip", NNZIP])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shards = r["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    assert!(shards.iter().all(|s| s["code"] == 0), "{r}");
    // Two worker processes of the cluster ran shards.
    assert_eq!(r["workers"].as_array().unwrap().len(), 2, "{r}");
    let done: Vec<String> = shards
        .iter()
        .flat_map(|s| s["events"].as_array().unwrap().iter())
        .filter(|e| e["event"] == "done")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = done.iter().collect();
    assert_eq!(done.len(), 6, "each model once: {done:?}");
    assert_eq!(unique.len(), 6);
    let rows = r["report"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(r["report"]["totals"]["done"], 6);
    for row in rows {
        assert!(row["ratio"].as_f64().unwrap() > 1.0, "{row}");
    }
}

fn executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_slurm_script_runs_its_shard_and_requeues_only_transient_failures() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let out = dir.path().join("out");
    let script = common::repo().join("deploy/slurm/nnzip-fleet.sbatch");
    let requeued = dir.path().join("requeued");
    let scontrol = dir.path().join("scontrol");
    std::fs::write(
        &scontrol,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", requeued.display()),
    )
    .unwrap();
    executable(&scontrol);
    let run = |task: &str, nnzip: &str| {
        Command::new("bash")
            .arg(&script)
            .args([m.to_str().unwrap(), out.to_str().unwrap()])
            .env("NNZIP", nnzip)
            .env("SCONTROL", &scontrol)
            .env("SLURM_ARRAY_JOB_ID", "4242")
            .env("SLURM_ARRAY_TASK_ID", task)
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_MAX", "2")
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .output()
            .unwrap()
    };
    let mut done = Vec::new();
    for task in ["1", "2"] {
        let o = run(task, NNZIP);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            if e["event"] == "done" {
                done.push(e["id"].as_str().unwrap().to_string());
            }
        }
    }
    done.sort();
    let mut all: Vec<String> = MODELS.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(done, all);
    assert!(!requeued.exists(), "nothing to requeue");
    // A transient failure (exit 75) requeues this task; exit 3 does not.
    for (code, requeue) in [(75, true), (3, false)] {
        let fake = dir.path().join(format!("nnzip-{code}"));
        std::fs::write(&fake, format!("#!/bin/sh\nexit {code}\n")).unwrap();
        executable(&fake);
        let _ = std::fs::remove_file(&requeued);
        let o = run("2", fake.to_str().unwrap());
        assert_eq!(o.status.code(), Some(code));
        assert_eq!(requeued.exists(), requeue, "exit {code}");
        if requeue {
            assert_eq!(
                std::fs::read_to_string(&requeued).unwrap().trim(),
                "requeue 4242_2"
            );
        }
    }
}

#[test]
fn the_kubernetes_and_argo_manifests_parse_and_follow_the_exit_codes() {
    let check = r#"
import sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
rules = {r["action"]: r for r in job["spec"]["podFailurePolicy"]["rules"]}
codes = lambda a: sorted(rules[a]["onExitCodes"]["values"])
assert codes("FailIndex") == [3], codes("FailIndex")
assert codes("FailJob") == [2, 4, 5], codes("FailJob")
assert codes("Count") == [75], codes("Count")
env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
assert int(env["NNZIP_SHARD_COUNT"]) == job["spec"]["completions"]
assert "--shard auto" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
wf = yaml.safe_load(open(sys.argv[2]))
t = {x["name"]: x for x in wf["spec"]["templates"]}
assert "75" in t["shard"]["retryStrategy"]["expression"]
step = t["fleet"]["steps"][0][0]
assert step["withSequence"]["count"] == "{{workflow.parameters.shards}}"
assert "batch report" in t["report"]["container"]["args"][0]
print("ok")
"#;
    let deploy = common::repo().join("deploy");
    let o = Command::new(python())
        .args(["-c", check])
        .arg(deploy.join("kubernetes/nnzip-fleet-job.yaml"))
        .arg(deploy.join("argo/nnzip-fleet-workflow.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
}
