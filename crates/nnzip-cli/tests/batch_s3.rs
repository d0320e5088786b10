//! `nnzip batch` against `s3://` on a local S3-compatible server (moto, from the venv that
//! scripts/setup-fleet.sh makes; started here on a loopback port): the fleet matches a local
//! run byte for byte, a rerun resumes, a live claim of another runner is waited for and a stale
//! one taken over by conditional writes, and a server that stops answering mid-run ends the run
//! with exit 75, after which a rerun completes. Needs the cargo feature `s3`.
#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{nnzip, nnzip_env};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NNZIP: &str = env!("CARGO_BIN_EXE_nnzip");

const MODELS: [&str; 6] = [
    "cnn",
    "mlp",
    "mobilenet",
    "resnet",
    "transformer",
    "dynamic_attention",
];

fn options(id: &str) -> &'static str {
    if id == "dynamic_attention" {
        r#"{"runs": 0, "shape": {"input": [1, 8, 32], "mask": [1, 1, 1, 8]}}"#
    } else {
        r#"{"runs": 0}"#
    }
}

/// The venv's python (scripts/setup-fleet.sh installs it when missing).
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

/// A moto server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs a boto3 snippet with `s3` (a client of this server) bound; returns its stdout.
    fn py(&self, code: &str) -> String {
        let script = format!(
            "import boto3, sys, json\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', \
             region_name='us-east-1', aws_access_key_id='testing', \
             aws_secret_access_key='testing')\n{code}\n",
            self.port
        );
        let o = Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    fn put(&self, key: &str, file: &Path) {
        self.py(&format!(
            "s3.upload_file({:?}, 'fleet', {key:?})",
            file.display().to_string()
        ));
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let hex = self.py(&format!(
            "try:\n  print(s3.get_object(Bucket='fleet', Key={key:?})['Body'].read().hex())\n\
             except s3.exceptions.NoSuchKey:\n  print('none')"
        ));
        let hex = hex.trim();
        (hex != "none").then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        })
    }

    fn keys(&self, prefix: &str) -> BTreeSet<String> {
        let out = self.py(&format!(
            "p = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket='fleet', Prefix={prefix:?}):\n  \
             for o in page.get('Contents', []): print(o['Key'])"
        ));
        out.lines().map(str::to_string).collect()
    }

    fn signal(&self, sig: &str) {
        let s = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ids_of(evs: &[serde_json::Value], kind: &str) -> BTreeSet<String> {
    evs.iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Uploads the fixtures and a manifest naming them (and a missing object) to the bucket; writes
/// the same manifest with local paths to `dir` for the reference run.
fn stage(moto: &Moto, dir: &Path) -> PathBuf {
    moto.py("s3.create_bucket(Bucket='fleet')");
    let (mut remote, mut local) = (String::new(), String::new());
    for m in MODELS {
        let f = common::fixture(&format!("{m}.onnx"));
        moto.put(&format!("models/{m}.onnx"), &f);
        remote.push_str(&format!(
            "{{\"id\": \"{m}\", \"model\": \"s3://fleet/models/{m}.onnx\", \"options\": {}}}\n",
            options(m)
        ));
        local.push_str(&format!(
            "{{\"id\": \"{m}\", \"model\": \"{}\", \"options\": {}}}\n",
            f.display(),
            options(m)
        ));
    }
    remote.push_str("{\"id\": \"missing\", \"model\": \"s3://fleet/models/none.onnx\"}\n");
    let r = dir.join("remote.jsonl");
    std::fs::write(&r, remote).unwrap();
    moto.put("fleet.jsonl", &r);
    let l = dir.join("local.jsonl");
    std::fs::write(&l, local).unwrap();
    l
}

fn run(manifest: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "batch",
        "run",
        manifest,
        "--out",
        out,
        "--log-format",
        "json",
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn an_s3_fleet_resumes_waits_for_claims_and_survives_a_stopped_server() {
    let moto = Moto::start();
    let env = moto.env();
    let dir = tempfile::tempdir().unwrap();
    let local_manifest = stage(&moto, dir.path());
    let reference = dir.path().join("reference");
    let o = nnzip(&strs(&run(
        local_manifest.to_str().unwrap(),
        reference.to_str().unwrap(),
        &[],
    )));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The fleet from the bucket into the bucket: the models done, the missing one failed.
    let args = run("s3://fleet/fleet.jsonl", "s3://fleet/out", &[]);
    let o = nnzip_env(&strs(&args), &env);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let evs = events(&o.stdout);
    let all: BTreeSet<String> = MODELS.iter().map(|s| s.to_string()).collect();
    assert_eq!(ids_of(&evs, "done"), all);
    assert_eq!(ids_of(&evs, "fail"), ["missing".to_string()].into());
    for m in MODELS {
        let local = std::fs::read(reference.join(m).join("model.nnc")).unwrap();
        assert!(
            moto.get(&format!("out/{m}/model.nnc")).unwrap() == local,
            "{m}: the bitstream in the bucket differs from the local run's"
        );
    }
    let r: serde_json::Value =
        serde_json::from_slice(&moto.get("out/missing/report.json").unwrap()).unwrap();
    assert_eq!(r["error"]["class"], "bad_input", "{r}");
    assert!(moto.keys("out/").iter().all(|k| !k.ends_with(".claim")));

    // Resumption: nothing is done again.
    let o = nnzip_env(&strs(&args), &env);
    assert_eq!(o.status.code(), Some(3));
    let evs = events(&o.stdout);
    assert!(ids_of(&evs, "done").is_empty());
    assert_eq!(ids_of(&evs, "skip").len(), 7);

    // A claim of another live runner (another host): create-if-absent is refused, the run
    // waits; once the claim's lease is over, it is replaced (If-Match) and the item redone.
    let o = nnzip_env(
        &[
            "batch",
            "run",
            "s3://fleet/fleet.jsonl",
            "--out",
            "s3://fleet/claimed",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(3));
    moto.py("s3.delete_object(Bucket='fleet', Key='claimed/cnn/report.json')");
    let claim = |expires: u64| {
        format!(
            "s3.put_object(Bucket='fleet', Key='claimed/cnn/.claim', Body=json.dumps({{'owner': \
             {{'host': 'another-node', 'pid': 1, 'run': 'x'}}, 'key': 'k', 'expires_unix': \
             {expires}}}).encode())"
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    moto.py(&claim(now + 3600));
    let mut child = Command::new(NNZIP)
        .args(strs(&run(
            "s3://fleet/fleet.jsonl",
            "s3://fleet/claimed",
            &[],
        )))
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let e: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
        seen.push(e.clone());
        if e["event"] == "wait" {
            assert_eq!(e["id"], "cnn");
            assert!(e["owner"].as_str().unwrap().contains("another-node"));
            break;
        }
    }
    assert!(seen.iter().any(|e| e["event"] == "wait"), "{seen:?}");
    moto.py(&claim(now - 10));
    for l in lines {
        seen.push(serde_json::from_str(&l.unwrap()).unwrap());
    }
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert_eq!(
        ids_of(&seen, "done"),
        ["cnn".to_string()].into(),
        "{seen:?}"
    );
    assert_eq!(
        moto.get("claimed/cnn/model.nnc").unwrap(),
        std::fs::read(reference.join("cnn/model.nnc")).unwrap()
    );
    assert!(moto.get("claimed/cnn/.claim").is_none());

    // The server stops answering after the first item: exit 75; after it resumes, a rerun
    // does the rest and skips what was done.
    let mut child = Command::new(NNZIP)
        .args(strs(&run(
            "s3://fleet/fleet.jsonl",
            "s3://fleet/stopped",
            &["--store-retry", "2"],
        )))
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for l in lines.by_ref() {
        let e: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
        first.push(e.clone());
        if e["event"] == "done" {
            moto.signal("-STOP");
            break;
        }
    }
    first.extend(lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()));
    let o = child.wait_with_output().unwrap();
    moto.signal("-CONT");
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let done_before = ids_of(&first, "done");
    assert!(
        !done_before.is_empty() && done_before.len() < MODELS.len(),
        "{first:?}"
    );
    let o = nnzip_env(
        &strs(&run("s3://fleet/fleet.jsonl", "s3://fleet/stopped", &[])),
        &env,
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let evs = events(&o.stdout);
    let done_after = ids_of(&evs, "done");
    assert!(done_before.is_disjoint(&done_after));
    let union: BTreeSet<String> = done_before.union(&done_after).cloned().collect();
    assert_eq!(union, all);
    for m in MODELS {
        assert_eq!(
            moto.get(&format!("stopped/{m}/model.nnc")).unwrap(),
            std::fs::read(reference.join(m).join("model.nnc")).unwrap()
        );
    }

    // The report from the bucket: one row per id.
    let o = nnzip_env(&["batch", "report", "s3://fleet/out", "--json"], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["rows"].as_array().unwrap().len(), 7);
    assert_eq!(r["totals"]["done"], 6);
}
