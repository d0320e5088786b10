//! `--device` end to end over a real OpenSSH server on loopback: the test starts Debian's
//! sshd as its own child (throwaway host and user keys, a free port, its own config), and the
//! "device" is this machine running the nnzip cargo built. Also placement with the OpenVINO
//! provider of the PyPI `onnxruntime-openvino` wheel (installed by scripts/test.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::nnzip;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixture;
use serde_json::Value;

const NNZIP: &str = env!("CARGO_BIN_EXE_nnzip");

/// sshd on 127.0.0.1, killed on drop. `home` is the HOME its sessions get, so the device
/// cache starts empty for every test.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(path)
        .status()
        .expect("ssh-keygen (Debian openssh-client)");
    assert!(ok.success());
}

impl Sshd {
    fn start() -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "sshd missing: scripts/test.sh installs Debian's openssh-server"
        );
        // sshd's privilege separation needs this folder (root-owned, not group-writable).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        keygen(&d.join("other_key"));
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir(d.join("home")).unwrap();
        let port = free_port();
        let user = whoami();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n\
                 AllowUsers {user}\nLogLevel ERROR\nMaxStartups 50\nSetEnv HOME={d}/home\n",
                d = d.display()
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { child, port, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `[[device]]` entry reaching this sshd; `extra` adds or overrides keys.
    fn entry(&self, name: &str, extra: &str) -> String {
        format!(
            "[[device]]\nname = \"{name}\"\nssh = \"{user}@127.0.0.1\"\nport = {port}\n\
             ssh_options = [\"UserKnownHostsFile={kh}\", \"StrictHostKeyChecking=yes\"]\n\
             connect_timeout = 5\ntimeout = 120\n{extra}\n",
            user = whoami(),
            port = self.port,
            kh = self.path("known_hosts").display(),
        )
    }

    /// Writes a devices file: `pi` uses nnzip and ONNX Runtime where they are on this
    /// machine; `auto` finds neither there, so both are pushed into the cache.
    fn devices_file(&self, more: &str) -> PathBuf {
        let key = format!("identity = \"{}\"", self.path("user_key").display());
        let text = format!(
            "{}{}{more}",
            self.entry(
                "pi",
                &format!(
                    "{key}\nnnzip = \"{NNZIP}\"\nort = \"{}\"\nthreads = 1",
                    ort_lib().display()
                )
            ),
            self.entry("auto", &format!("{key}\nthreads = 1")),
        );
        let p = self.path("devices.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Ends the live ssh sessions (sshd's per-connection children) but not the listener.
    fn drop_connections(&self) {
        for pid in children_of(self.child.id()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Field 4, after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(p);
        }
    }
    v
}

/// Processes whose command line mentions `needle` (the device's cache folder, say).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            v.push(cmd);
        }
    }
    v
}

/// Waits up to two seconds for the device's processes to end.
fn assert_device_idle(sshd: &Sshd) {
    let needle = format!("{}/.cache/nnzip", sshd.path("home").display());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running on the device: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ort_lib() -> PathBuf {
    let (p, _) = nnzip::runtime::locate_library(None).expect("scripts/setup-ort.sh");
    p
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn probe_over_ssh_reports_this_machine_and_its_runtime() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let v = json(&nnzip(&[
        "device",
        "probe",
        "pi",
        "--devices",
        s(&file),
        "--json",
    ]));
    let local = json(&nnzip(&["device", "probe", "local", "--json"]));
    assert_eq!(v["name"], "pi");
    for k in ["arch", "glibc", "cores", "kernel", "os"] {
        assert_eq!(v[k], local[k], "{k}");
    }
    assert_eq!(v["arch"], std::env::consts::ARCH);
    let rt = &v["runtime"];
    assert_eq!(rt["ort_version"], "1.31.1");
    assert_eq!(rt["ort_sha256"], local["runtime"]["ort_sha256"]);
    assert_eq!(rt["ort_sha256"].as_str().unwrap().len(), 64);
    assert!(rt["providers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "cpu"));
}

/// Runs nnzip bench --device; returns the device entries.
fn bench_on(file: &Path, device: &str, a: &Path, b: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "bench",
        s(a),
        "--vs",
        s(b),
        "--device",
        device,
        "--devices",
        s(file),
        "--json",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    let v = json(&nnzip(&args));
    assert_eq!(v["complete"], true);
    v["devices"].as_array().unwrap().clone()
}

#[test]
fn bench_over_ssh_a_model_against_itself_and_a_pruned_one() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let dir = tempfile::tempdir().unwrap();
    let cnn = fixture("cnn.onnx");
    // Itself: the ratio is near 1.
    let rows = bench_on(
        &file,
        "pi",
        &cnn,
        &cnn,
        &["--runs", "300", "--warmup", "20"],
    );
    let r = &rows[0];
    assert_eq!(r["device"]["name"], "pi");
    assert_eq!(r["device"]["transport"], "ssh");
    assert_eq!(r["device"]["ort_version"], "1.31.1");
    assert_eq!(r["intra_threads"], 1);
    assert_eq!(r["model"]["path"], s(&cnn));
    assert_eq!(r["model"]["runs"], 300);
    let ratio = r["ratio_median"].as_f64().unwrap();
    assert!((0.8..1.25).contains(&ratio), "self ratio {ratio}");
    assert!(r["thermal"]["before"].is_object() && r["thermal"]["after"].is_object());
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    // Structured pruning, then simplify, makes it smaller and faster: on the device as here.
    let pruned = dir.path().join("pruned.onnx");
    let out = nnzip(&[
        "prune",
        s(&cnn),
        "-o",
        s(&pruned),
        "--method",
        "structured",
        "--sparsity",
        "0.75",
        "--simplify",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = bench_on(
        &file,
        "local",
        &cnn,
        &pruned,
        &["--runs", "200", "--device", "pi"],
    );
    assert_eq!(rows.len(), 2);
    let (here, there) = (&rows[0], &rows[1]);
    assert_eq!(here["device"]["transport"], "local");
    let (rl, rd) = (
        here["ratio_median"].as_f64().unwrap(),
        there["ratio_median"].as_f64().unwrap(),
    );
    assert!(
        rl < 0.9 && rd < 0.9,
        "pruned/original: local {rl}, over ssh {rd}"
    );
}

#[test]
fn the_cache_sends_a_model_once() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let mlp = fixture("mlp.onnx");
    let run = |dev: &str| {
        let rows = bench_on(&file, dev, &mlp, &mlp, &["--runs", "5", "--warmup", "1"]);
        rows[0]["transfer"].clone()
    };
    // `auto`: nnzip and ONNX Runtime are pushed too (the device's PATH has no nnzip).
    let first = run("auto");
    let model_len = std::fs::metadata(&mlp).unwrap().len();
    let bin_len = std::fs::metadata(NNZIP).unwrap().len();
    let lib_len = std::fs::metadata(ort_lib()).unwrap().len();
    assert_eq!(first["files_sent"], 3, "{first}");
    assert_eq!(
        first["bytes_sent"].as_u64().unwrap(),
        model_len + bin_len + lib_len,
        "the model is sent once although it is both A and B"
    );
    let second = run("auto");
    assert_eq!(second["bytes_sent"], 0, "{second}");
    assert_eq!(second["files_sent"], 0);
    assert_eq!(second["files_cached"], 3);
    let cache = sshd.path("home/.cache/nnzip");
    let sha = nnzip::device::transport::sha256_file(&mlp).unwrap();
    assert_eq!(
        std::fs::read(cache.join(&sha)).unwrap(),
        std::fs::read(&mlp).unwrap()
    );
    // No temp files left behind.
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn compress_fills_the_per_device_columns() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let dir = tempfile::tempdir().unwrap();
    let out_nnc = dir.path().join("cnn.nnc");
    let html = dir.path().join("cnn.html");
    let out = nnzip(&[
        "compress",
        s(&fixture("cnn.onnx")),
        "-o",
        s(&out_nnc),
        "--runs",
        "20",
        "--device",
        "pi",
        "--device",
        "local",
        "--devices",
        s(&file),
        "--json",
        "--html",
        s(&html),
    ]);
    let v = json(&out);
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    for d in devs {
        let o = d["latency_ms_original"].as_f64().unwrap();
        let c = d["latency_ms_compressed"].as_f64().unwrap();
        let r = d["ratio"].as_f64().unwrap();
        assert!(o > 0.0 && c > 0.0 && (r - c / o).abs() < 1e-9, "{d}");
        assert!(d["decode_ms"].as_f64().unwrap() > 0.0, "{d}");
        assert_eq!(d["complete"], true);
    }
    assert_eq!(devs[0]["name"], "pi");
    assert!(v["bitstream_bytes"].as_u64().unwrap() > 0);
    // The page has them: Table 2.1 columns and bars of the latency plot, with their values.
    let page = std::fs::read_to_string(&html).unwrap();
    for (i, d) in devs.iter().enumerate() {
        let name = d["name"].as_str().unwrap();
        assert!(
            page.contains(&format!("<th>{name}: original ms</th>")),
            "{name}"
        );
        assert!(page.contains(&format!(
            "data-field=\"/devices/{i}/latency_ms_compressed\">{:.3}<",
            d["latency_ms_compressed"].as_f64().unwrap()
        )));
        assert!(page.contains(&format!(">{name} (")), "{name}: no bars");
    }
}

/// Runs nnzip and returns (exit code, stderr, seconds taken).
fn fails(args: &[&str]) -> (i32, String, f64) {
    let t0 = Instant::now();
    let out = nnzip(args);
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed().as_secs_f64(),
    )
}

#[test]
fn device_errors_are_clear_and_quick() {
    let sshd = Sshd::start();
    // A port that accepts connections but never speaks SSH, and one nobody listens on.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    let closed = free_port();
    let key = format!("identity = \"{}\"", sshd.path("user_key").display());
    let other = format!("identity = \"{}\"", sshd.path("other_key").display());
    let text = [
        sshd.entry("wrongkey", &other),
        sshd.entry("nonnzip", &format!("{key}\nnnzip = \"/nonexistent/nnzip\"")),
        sshd.entry(
            "pi",
            &format!(
                "{key}\nnnzip = \"{NNZIP}\"\nort = \"{}\"",
                ort_lib().display()
            ),
        ),
        format!(
            "[[device]]\nname=\"mute\"\nssh=\"u@127.0.0.1\"\nport={mute_port}\nconnect_timeout=1\n\
             [[device]]\nname=\"closed\"\nssh=\"u@127.0.0.1\"\nport={closed}\nconnect_timeout=1\n"
        ),
    ]
    .concat();
    let file = sshd.path("errors.toml");
    std::fs::write(&file, text).unwrap();
    let cnn = fixture("cnn.onnx");
    let bench = |dev: &str, model: &Path| {
        fails(&[
            "bench",
            s(model),
            "--device",
            dev,
            "--devices",
            s(&file),
            "--runs",
            "3",
        ])
    };
    let (code, err, t) = bench("closed", &cnn);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(t < 10.0, "{t} s");
    let (code, err, t) = bench("mute", &cnn);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(t < 12.0, "a silent host took {t} s");
    let (code, err, t) = bench("wrongkey", &cnn);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("refused the login"), "{err}");
    assert!(t < 10.0);
    let (code, err, _) = bench("nonnzip", &cnn);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("no nnzip") && err.contains("/nonexistent/nnzip"),
        "{err}"
    );
    let (code, err, _) = bench("nowhere", &cnn);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no device 'nowhere'"), "{err}");
    // A provider the device's ONNX Runtime lacks is refused before anything runs.
    let (code, err, _) = fails(&[
        "bench",
        s(&cnn),
        "--device",
        "pi",
        "--devices",
        s(&file),
        "--ep",
        "openvino",
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("execution provider 'openvino' is not in its ONNX Runtime"),
        "{err}"
    );
    // A model newer than the device's ONNX Runtime: refused there, said so here.
    let dir = tempfile::tempdir().unwrap();
    let future = dir.path().join("future.onnx");
    let mut m = nnzip::onnx::Model::load(&cnn).unwrap();
    m.proto.ir_version = 99;
    m.save(&future, &Default::default()).unwrap();
    let (code, err, _) = bench("pi", &future);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("refuses") && err.contains("IR version 99"),
        "{err}"
    );
    drop(mute);
}

#[test]
fn a_dropped_connection_keeps_the_rounds_so_far() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let cnn = fixture("cnn.onnx");
    let mut child = Command::new(NNZIP)
        .args([
            "bench",
            s(&cnn),
            "--vs",
            s(&cnn),
            "--device",
            "pi",
            "--devices",
            s(&file),
            "--json",
            // A time budget, not a run count: on a quiet machine 3000 runs ended round 2
            // before the connection dropped.
            "--time",
            "2",
            "--rounds",
            "3",
            "--cooldown",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        // In the middle of round 2's timing loop.
        if line.contains("round 2/3") {
            std::thread::sleep(Duration::from_millis(300));
            sshd.drop_connections();
        }
    }
    let out = child.wait_with_output().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(75), "{log}");
    assert!(log.contains("connection lost"), "{log}");
    assert!(secs < 30.0, "{secs} s");
    let v: Value = serde_json::from_slice(&out.stdout).expect("results so far");
    assert_eq!(v["complete"], false);
    let d = &v["devices"][0];
    assert_eq!(d["complete"], false);
    assert_eq!(d["rounds"].as_array().unwrap().len(), 1);
    assert!(d["ratio_median"].as_f64().is_some(), "round 1 is kept: {d}");
    assert_device_idle(&sshd);
}

#[test]
fn ctrl_c_ends_the_remote_bench_and_prints_what_was_measured() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let cnn = fixture("cnn.onnx");
    // `auto` runs nnzip from the device's cache, so its processes name the cache folder.
    let mut child = Command::new(NNZIP)
        .args([
            "bench",
            s(&cnn),
            "--device",
            "auto",
            "--devices",
            s(&file),
            "--json",
            "--runs",
            "100000",
            "--rounds",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if line.contains("round 1/2") {
            std::thread::sleep(Duration::from_millis(500));
            let needle = format!("{}/.cache/nnzip", sshd.path("home").display());
            assert!(
                processes_mentioning(&needle)
                    .iter()
                    .any(|c| c.contains(" bench ")),
                "the bench runs on the device"
            );
            let ok = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{log}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("results so far");
    assert_eq!(v["complete"], false);
    assert!(v["devices"][0]["error"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert_device_idle(&sshd);
}

/// The OpenVINO build of ONNX Runtime from the PyPI wheel, put in `.venv-openvino/` by
/// scripts/test.sh; `None` (a skip, printed) outside CI when it is missing.
fn openvino_lib() -> Option<PathBuf> {
    let root = common::repo();
    let root = root.as_path();
    let found = std::env::var_os("NNZIP_OPENVINO_ORT")
        .map(PathBuf::from)
        .or_else(|| {
            let glob = root.join(".venv-openvino/lib");
            std::fs::read_dir(glob).ok()?.flatten().find_map(|py| {
                let capi = py.path().join("site-packages/onnxruntime/capi");
                std::fs::read_dir(&capi).ok()?.flatten().find_map(|f| {
                    let n = f.file_name().to_string_lossy().into_owned();
                    n.starts_with("libonnxruntime.so.").then(|| f.path())
                })
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the OpenVINO wheel: scripts/test.sh installs it"
        );
        eprintln!("skipped: no .venv-openvino (bash scripts/test.sh installs it)");
    }
    found
}

/// MatMul → Relu → Hardmax → MatMul → Relu: OpenVINO's EP leaves Hardmax to the CPU, so
/// the graph runs in three partitions (OpenVINO, CPU, OpenVINO).
fn hardmax_sandwich(path: &Path) {
    use nnzip::onnx::proto::NodeProto;
    let mut m = common::tiny_linear();
    let g = m.graph.as_mut().unwrap();
    g.initializer.clear();
    let w1: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let w2: Vec<f32> = (0..32).map(|i| (i as f32 * 0.71).cos()).collect();
    g.initializer.push(common::f32_tensor("W1", &[4, 8], &w1));
    g.initializer.push(common::f32_tensor("W2", &[8, 4], &w2));
    g.output[0] = common::value_info("y", &[1, 4]);
    let node = |name: &str, op: &str, ins: &[&str], out: &str| {
        let mut n = NodeProto::new();
        n.name = name.into();
        n.op_type = op.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        n
    };
    g.node = vec![
        node("mm1", "MatMul", &["x", "W1"], "a"),
        node("relu1", "Relu", &["a"], "b"),
        node("hardmax", "Hardmax", &["b"], "c"),
        node("mm2", "MatMul", &["c", "W2"], "d"),
        node("relu2", "Relu", &["d"], "y"),
    ];
    common::write_proto(path, &m);
}

#[test]
fn openvino_placement_counts_what_the_profile_says() {
    let Some(lib) = openvino_lib() else { return };
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    let model = dir.path().join("sandwich.onnx");
    hardmax_sandwich(&model);
    let v = json(&nnzip(&[
        "--ort-lib",
        s(&lib),
        "bench",
        s(&model),
        "--ep",
        "openvino",
        "--placement",
        "--profile",
        s(&profile),
        "--runs",
        "3",
        "--json",
    ]));
    let p = &v["placement"];
    assert_eq!(p["requested"], "openvino");
    // Count the first run's kernels per provider in the profile itself.
    let events: Vec<Value> = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    let run0 = events
        .iter()
        .find(|e| e["name"] == "model_run")
        .map(|e| (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap()))
        .unwrap();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in &events {
        let name = e["name"].as_str().unwrap_or("");
        let ts = e["ts"].as_f64().unwrap_or(0.0);
        if e["cat"] == "Node"
            && name.ends_with("_kernel_time")
            && ts >= run0.0
            && ts <= run0.0 + run0.1
        {
            *counts
                .entry(e["args"]["provider"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let ours: std::collections::BTreeMap<String, usize> = p["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kernels"].as_u64().unwrap() > 0)
        .map(|r| {
            (
                r["provider"].as_str().unwrap().to_string(),
                r["kernels"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(ours, counts);
    assert!(
        counts.contains_key("OpenVINOExecutionProvider"),
        "OpenVINO took nothing: {counts:?}"
    );
    let nodes: u64 = p["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["nodes"].as_u64().unwrap())
        .sum();
    let model_nodes = nnzip::onnx::Model::load(&model).unwrap().graph().node.len();
    assert_eq!(nodes as usize, model_nodes);
    assert_eq!(p["model_nodes"].as_u64().unwrap() as usize, model_nodes);
    assert_eq!(counts["CPUExecutionProvider"], 1);
    assert_eq!(counts["OpenVINOExecutionProvider"], 2);
    assert_eq!(p["partitions"], 3);
    assert_eq!(p["fallback_ops"]["Hardmax"], 1);
    assert_eq!(p["summary"], "OpenVINO (4), CPU (1) | Total (5)");
    let ov = &p["providers"][0];
    assert_eq!(ov["provider"], "OpenVINOExecutionProvider");
    assert_eq!(ov["mac_share"], 1.0, "both MatMuls ran on OpenVINO");
    // --strict-ep refuses exactly when something fell back.
    let strict = nnzip(&[
        "--ort-lib",
        s(&lib),
        "bench",
        s(&model),
        "--ep",
        "openvino",
        "--strict-ep",
        "--runs",
        "1",
    ]);
    assert_eq!(strict.status.code(), Some(4));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains("1 of 5 nodes fell back") && err.contains("Hardmax"),
        "{err}"
    );
    let whole = nnzip(&[
        "--ort-lib",
        s(&lib),
        "bench",
        s(&fixture("cnn.onnx")),
        "--ep",
        "openvino",
        "--strict-ep",
        "--runs",
        "1",
    ]);
    assert!(whole.status.success(), "cnn runs wholly on OpenVINO");
}

#[test]
fn provider_options_reach_onnx_runtime_here_and_on_a_device() {
    let Some(lib) = openvino_lib() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sandwich.onnx");
    hardmax_sandwich(&model);
    let bench = |option: &str| {
        nnzip(&[
            "--ort-lib",
            s(&lib),
            "bench",
            s(&model),
            "--ep",
            "openvino",
            "--ep-option",
            option,
            "--runs",
            "2",
            "--json",
            "-q",
        ])
    };
    let ok = bench("device_type=CPU");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // OpenVINO refuses a device it does not have: the option was passed, not dropped.
    let bad = bench("device_type=NO_SUCH_DEVICE");
    assert_eq!(bad.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NO_SUCH_DEVICE"));
    // The devices file's ep_options go with the device's ep to nnzip on the device.
    let sshd = Sshd::start();
    let key = format!("identity = \"{}\"", sshd.path("user_key").display());
    let entry = |name: &str, device_type: &str| {
        sshd.entry(
            name,
            &format!(
                "{key}\nnnzip = \"{NNZIP}\"\nort = \"{}\"\nthreads = 1\nep = \"openvino\"\n\
                 ep_options = {{ device_type = \"{device_type}\" }}",
                lib.display()
            ),
        )
    };
    let file = sshd.path("devices-ov.toml");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            entry("ov", "CPU"),
            entry("ov-bad", "NO_SUCH_DEVICE")
        ),
    )
    .unwrap();
    let rows = bench_on(&file, "ov", &model, &model, &["--runs", "3"]);
    assert_eq!(rows.len(), 1);
    let out = nnzip(&[
        "bench",
        s(&model),
        "--device",
        "ov-bad",
        "--devices",
        s(&file),
        "--runs",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_DEVICE"));
}

#[test]
fn a_model_with_external_data_goes_to_the_device_inline() {
    let sshd = Sshd::start();
    let file = sshd.devices_file("");
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("cnn_ext.onnx");
    let opts = nnzip::onnx::SaveOptions {
        external_threshold: Some(1024),
        ..Default::default()
    };
    let m = nnzip::onnx::Model::load(fixture("cnn.onnx")).unwrap();
    m.save(&ext, &opts).unwrap();
    let reloaded = nnzip::onnx::Model::load(&ext).unwrap();
    assert!(!nnzip::onnx::external_files(&reloaded).is_empty());
    let rows = bench_on(&file, "pi", &ext, &fixture("cnn.onnx"), &["--runs", "5"]);
    assert_eq!(rows.len(), 1);
    let r = rows[0]["ratio_median"].as_f64().unwrap();
    assert!(
        r > 0.5 && r < 2.0,
        "the same weights inline or not: ratio {r}"
    );
}
