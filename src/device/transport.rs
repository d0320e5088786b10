//! Commands and files to a device over the system's OpenSSH client, so `~/.ssh/config`, agents,
//! jump hosts and `known_hosts` work as they do for the user.
//!
//! One master connection per device and run (`ControlMaster`), every command multiplexed over
//! it. Files are streamed over the channel into a content-addressed cache on the device
//! (`~/.cache/nnzip/<sha256>`): `cat` into a temp name, checked, then renamed, because scp and
//! sftp are missing on many images and a dropped upload must never leave a truncated file under
//! its final name. Every step has a deadline. Remote commands are guarded by a watcher that
//! ends them when their ssh channel closes, so Ctrl-C on this side or a lost connection does not
//! leave a benchmark burning the device's CPU.
//!
//! `local` is the same interface without ssh: `sh -c` here, files used where they are.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::config::DeviceSpec;
use super::DeviceError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks every running device step to stop (called from the CLI's Ctrl-C handler). Steps end
/// their remote processes and return [`DeviceError::Interrupted`].
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Quotes a word for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// What one command gave back.
#[derive(Debug)]
pub struct Output {
    /// Exit code; `None` when ended by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Bytes and files sent to a device, for the report (a cached file costs nothing).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub bytes_sent: u64,
    pub files_sent: usize,
    pub files_cached: usize,
}

enum Kind {
    Local,
    Ssh {
        /// Keeps the control socket's folder alive.
        _dir: tempfile::TempDir,
        control: PathBuf,
        master: Child,
    },
}

/// A live connection to one device.
pub struct Connection {
    pub spec: DeviceSpec,
    kind: Kind,
    /// The device's `$HOME`, read once.
    pub home: String,
    pub transfer: Transfer,
}

/// How long ssh waits for a lost peer: three missed keep-alives five seconds apart.
const KEEPALIVE: [&str; 4] = ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"];

impl Connection {
    /// Opens the device's master connection (nothing for `local`) and reads its `$HOME`.
    pub fn open(spec: &DeviceSpec) -> Result<Connection, DeviceError> {
        let kind = match &spec.ssh {
            None => Kind::Local,
            Some(dest) => open_master(spec, dest)?,
        };
        let mut c = Connection {
            spec: spec.clone(),
            kind,
            home: String::new(),
            transfer: Transfer::default(),
        };
        let out = c.run(
            "printf %s \"$HOME\"",
            None,
            spec.connect_timeout,
            "read $HOME",
        )?;
        c.home = out.stdout_text().trim().to_string();
        if c.home.is_empty() {
            c.home = "/tmp".into();
        }
        Ok(c)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The content-addressed cache folder on the device.
    pub fn cache_dir(&self) -> String {
        format!("{}/.cache/nnzip", self.home)
    }

    /// Runs a POSIX sh script on the device, its stdin kept open (the watcher's lifeline) or
    /// fed from `input`. A non-zero exit is returned, not an error: callers judge it.
    pub fn run(
        &mut self,
        script: &str,
        input: Option<&Path>,
        timeout: Duration,
        step: &str,
    ) -> Result<Output, DeviceError> {
        // ssh would open a fresh connection when the master is gone; a lost master is a lost
        // connection.
        if let Kind::Ssh { master, .. } = &mut self.kind {
            if !matches!(master.try_wait(), Ok(None)) {
                return Err(self.lost(step, "the master connection has ended"));
            }
        }
        let mut cmd = match &self.kind {
            Kind::Local => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(script);
                c
            }
            Kind::Ssh { control, .. } => {
                let mut c = self.ssh_command(control);
                // The login shell may not be POSIX (fish, csh): run sh explicitly.
                c.arg("--").arg(format!("exec sh -c {}", sh_quote(script)));
                c
            }
        };
        // Own process group: a terminal's Ctrl-C reaches nnzip, which ends the step itself.
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| DeviceError::Spawn {
            program: if self.spec.is_local() { "sh" } else { "ssh" }.into(),
            source,
        })?;
        let (out, sent) =
            supervise(child, input, timeout).map_err(|e| self.fail(e, step, timeout))?;
        if !self.spec.is_local() && out.code == Some(255) {
            // ssh's own failure (the remote scripts never exit 255).
            return Err(self.lost(step, &out.stderr));
        }
        self.transfer.bytes_sent += sent;
        Ok(out)
    }

    /// A guarded long-running command: a simple command (words already quoted) run in the
    /// background on the device and killed when the ssh channel's stdin closes, i.e. when this
    /// side ends the step or the connection is lost.
    pub fn run_guarded(
        &mut self,
        workdir: Option<&str>,
        command: &str,
        timeout: Duration,
        step: &str,
    ) -> Result<Output, DeviceError> {
        let cd = match workdir {
            Some(w) => format!("mkdir -p {w} && cd {w} || exit 1\n", w = sh_quote(w)),
            None => String::new(),
        };
        // Background jobs get /dev/null as stdin, so the watcher reads the channel through a
        // duplicate (fd 3) that the command itself does not hold.
        let script = format!(
            "{cd}exec 3<&0\n{command} </dev/null 3<&- &\np=$!\n\
             (cat <&3 >/dev/null 2>&1; kill -TERM $p 2>/dev/null) >/dev/null 2>&1 &\n\
             w=$!\nexec 3<&-\nwait $p\nrc=$?\nkill $w 2>/dev/null\nexit $rc"
        );
        self.run(&script, None, timeout, step)
    }

    fn ssh_command(&self, control: &Path) -> Command {
        let mut c = Command::new("ssh");
        c.args(base_args(&self.spec))
            .arg("-S")
            .arg(control)
            .args(["-o", "ControlMaster=no"])
            .arg(self.spec.ssh.as_deref().unwrap_or_default());
        c
    }

    /// Sends `files` to the device cache unless already there; returns their paths on the
    /// device, in order. `local` uses the files where they are.
    pub fn push(&mut self, files: &[&Path]) -> Result<Vec<String>, DeviceError> {
        if self.spec.is_local() {
            return files
                .iter()
                .map(|f| {
                    std::path::absolute(f)
                        .map(|p| p.display().to_string())
                        .map_err(|source| DeviceError::LocalFile {
                            path: f.to_path_buf(),
                            source,
                        })
                })
                .collect();
        }
        let mut named = Vec::new();
        for f in files {
            let io = |source| DeviceError::LocalFile {
                path: f.to_path_buf(),
                source,
            };
            let sha = sha256_file(f).map_err(io)?;
            let len = std::fs::metadata(f).map_err(io)?.len();
            named.push((f.to_path_buf(), sha, len));
        }
        let dir = self.cache_dir();
        let check = named
            .iter()
            .map(|(_, s, _)| format!("[ -f {d}/{s} ] && echo {s};", d = sh_quote(&dir)))
            .collect::<String>();
        let have = self
            .run(
                &format!("{check} true"),
                None,
                self.spec.connect_timeout,
                "check the cache",
            )?
            .stdout_text();
        let mut out = Vec::new();
        let mut sent: Vec<&str> = Vec::new();
        for (path, sha, len) in &named {
            if sent.contains(&sha.as_str()) {
                // The same file twice (a model against itself) goes once.
            } else if have.lines().any(|l| l.trim() == sha) {
                self.transfer.files_cached += 1;
            } else {
                self.upload(path, sha, *len, &dir)?;
                self.transfer.files_sent += 1;
            }
            sent.push(sha);
            out.push(format!("{dir}/{sha}"));
        }
        Ok(out)
    }

    /// [`Connection::push`] of one file, returned under its own file name (a link in
    /// `~/.cache/nnzip/by-name/<sha256>/`): a library's name carries its version.
    pub fn push_named(&mut self, file: &Path) -> Result<String, DeviceError> {
        let cached = self.push(&[file])?.into_iter().next().unwrap_or_default();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.spec.is_local() || name.is_empty() {
            return Ok(cached);
        }
        let sha = cached.rsplit('/').next().unwrap_or_default().to_string();
        let dir = format!("{}/by-name/{sha}", self.cache_dir());
        let link = format!("{dir}/{name}");
        let script = format!(
            "mkdir -p {d} && ln -sfn {c} {l}",
            d = sh_quote(&dir),
            c = sh_quote(&cached),
            l = sh_quote(&link)
        );
        let out = self.run(&script, None, self.spec.connect_timeout, "name the library")?;
        if !out.success() {
            return Err(DeviceError::Upload {
                device: self.spec.name.clone(),
                path: file.to_path_buf(),
                reason: out.stderr.trim().to_string(),
            });
        }
        Ok(link)
    }

    fn upload(&mut self, path: &Path, sha: &str, len: u64, dir: &str) -> Result<(), DeviceError> {
        let d = sh_quote(dir);
        // Checked before the rename: a cut connection ends `cat` with a short file.
        let script = format!(
            "set -e; mkdir -p {d}; t={d}/.{sha}.tmp.$$; trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; \
             [ \"$(wc -c < \"$t\")\" -eq {len} ] || {{ echo short upload >&2; exit 3; }}; \
             if command -v sha256sum >/dev/null 2>&1; then \
             [ \"$(sha256sum < \"$t\" | cut -d' ' -f1)\" = {sha} ] || {{ echo sha256 mismatch >&2; exit 3; }}; fi; \
             chmod 0755 \"$t\"; mv -f \"$t\" {d}/{sha}; trap - EXIT"
        );
        // Generous for slow links: 256 KiB/s on top of the connect time.
        let timeout = self.spec.connect_timeout + Duration::from_secs(30 + len / (256 * 1024));
        let step = format!("send {}", path.display());
        let out = self.run(&script, Some(path), timeout, &step)?;
        if !out.success() {
            return Err(DeviceError::Upload {
                device: self.spec.name.clone(),
                path: path.to_path_buf(),
                reason: out.stderr.trim().to_string(),
            });
        }
        Ok(())
    }

    fn lost(&self, step: &str, stderr: &str) -> DeviceError {
        DeviceError::ConnectionLost {
            device: self.spec.name.clone(),
            step: step.to_string(),
            reason: last_line(stderr),
        }
    }

    fn fail(&self, e: Supervised, step: &str, timeout: Duration) -> DeviceError {
        match e {
            Supervised::Timeout => DeviceError::Timeout {
                device: self.spec.name.clone(),
                step: step.to_string(),
                after: timeout,
            },
            Supervised::Interrupted => DeviceError::Interrupted {
                device: self.spec.name.clone(),
            },
            Supervised::Io(source) => DeviceError::Spawn {
                program: "ssh".into(),
                source,
            },
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Kind::Ssh { master, .. } = &mut self.kind {
            // The mux sessions die with the master; their watchers end the remote commands.
            let _ = master.kill();
            let _ = master.wait();
        }
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn base_args(spec: &DeviceSpec) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={}", spec.connect_timeout.as_secs().max(1)),
    ];
    v.extend(KEEPALIVE.iter().map(|s| s.to_string()));
    if let Some(p) = spec.port {
        v.push("-p".into());
        v.push(p.to_string());
    }
    if let Some(i) = &spec.identity {
        v.push("-i".into());
        v.push(expand_home(i).display().to_string());
        v.push("-o".into());
        v.push("IdentitiesOnly=yes".into());
    }
    for o in &spec.ssh_options {
        v.push("-o".into());
        v.push(o.clone());
    }
    v
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(h)) => PathBuf::from(h).join(rest),
        _ => p.to_path_buf(),
    }
}

fn open_master(spec: &DeviceSpec, dest: &str) -> Result<Kind, DeviceError> {
    // Unix socket paths are short (108 bytes): a fresh folder under /tmp.
    let dir = tempfile::Builder::new()
        .prefix("nnzip-ssh-")
        .tempdir_in("/tmp")
        .map_err(|source| DeviceError::LocalFile {
            path: "/tmp".into(),
            source,
        })?;
    let control = dir.path().join("c");
    let mut master = Command::new("ssh")
        .args(base_args(spec))
        .args([
            "-M",
            "-N",
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=no",
        ])
        .arg("-S")
        .arg(&control)
        .arg(dest)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DeviceError::Spawn {
            program: "ssh".into(),
            source,
        })?;
    // ssh's ConnectTimeout covers the TCP connect and the handshake; the rest (auth, the
    // socket appearing) gets a few seconds more.
    let deadline = Instant::now() + spec.connect_timeout + Duration::from_secs(5);
    loop {
        if let Ok(Some(_)) = master.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = master.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(classify_connect_failure(&spec.name, dest, &err));
        }
        if control.exists() && check_master(spec, &control, dest) {
            return Ok(Kind::Ssh {
                _dir: dir,
                control,
                master,
            });
        }
        if interrupted() || Instant::now() > deadline {
            let _ = master.kill();
            let _ = master.wait();
            return Err(if interrupted() {
                DeviceError::Interrupted {
                    device: spec.name.clone(),
                }
            } else {
                DeviceError::Unreachable {
                    device: spec.name.clone(),
                    dest: dest.to_string(),
                    reason: format!(
                        "no ssh session within {:.0} s",
                        (spec.connect_timeout + Duration::from_secs(5)).as_secs_f64()
                    ),
                }
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_master(spec: &DeviceSpec, control: &Path, dest: &str) -> bool {
    Command::new("ssh")
        .args(base_args(spec))
        .arg("-S")
        .arg(control)
        .args(["-O", "check", dest])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Tells a refused login from a host that cannot be reached, from ssh's own words.
fn classify_connect_failure(device: &str, dest: &str, stderr: &str) -> DeviceError {
    let reason = last_line(stderr);
    let has = |s: &str| stderr.contains(s);
    if has("Permission denied") || has("Too many authentication failures") {
        DeviceError::AuthFailed {
            device: device.into(),
            dest: dest.into(),
            reason,
        }
    } else if has("Host key verification failed") || has("HOST IDENTIFICATION HAS CHANGED") {
        DeviceError::HostKey {
            device: device.into(),
            dest: dest.into(),
            reason,
        }
    } else {
        DeviceError::Unreachable {
            device: device.into(),
            dest: dest.into(),
            reason: if reason.is_empty() {
                "ssh exited without saying why".into()
            } else {
                reason
            },
        }
    }
}

enum Supervised {
    Timeout,
    Interrupted,
    Io(std::io::Error),
}

/// Waits for `child` within `timeout`, feeding `input` to its stdin (else holding stdin open
/// until it exits) and collecting its output. On timeout or interrupt the child is killed,
/// which closes the channel and so ends the remote side too. Returns the bytes fed.
fn supervise(
    mut child: Child,
    input: Option<&Path>,
    timeout: Duration,
) -> Result<(Output, u64), Supervised> {
    let deadline = Instant::now() + timeout;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let mut stdin = child.stdin.take();
    let feeder = match input {
        Some(p) => {
            let mut f = std::fs::File::open(p).map_err(Supervised::Io)?;
            let mut w = stdin.take();
            Some(std::thread::spawn(move || {
                let mut sent = 0u64;
                if let Some(w) = w.as_mut() {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = f.read(&mut buf) {
                        if n == 0 || w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                    }
                }
                // Dropping `w` closes the pipe: the remote `cat` sees the end.
                sent
            }))
        }
        None => None,
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(Supervised::Io(e)),
        }
        let stop = if interrupted() {
            Some(Supervised::Interrupted)
        } else if Instant::now() > deadline {
            Some(Supervised::Timeout)
        } else {
            None
        };
        if let Some(why) = stop {
            drop(stdin.take());
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(stdin);
    let sent = feeder.map(|t| t.join().unwrap_or(0)).unwrap_or(0);
    let stdout = out_t.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok((
        Output {
            code: status.code(),
            stdout,
            stderr,
        },
        sent,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for w in ["plain", "with space", "it's", "$HOME", "a\"b", ""] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(w)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), w);
        }
    }

    #[test]
    fn local_steps_time_out_and_the_guard_ends_the_command() {
        let mut c = Connection::open(&DeviceSpec::local()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ran-to-end");
        let cmd = format!(
            "sh -c {}",
            sh_quote(&format!("sleep 2; touch {}", flag.display()))
        );
        let t0 = Instant::now();
        let e = c
            .run_guarded(None, &cmd, Duration::from_millis(300), "sleep")
            .unwrap_err();
        assert!(matches!(e, DeviceError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!flag.exists(), "the guarded command outlived its step");
        let ok = c
            .run_guarded(None, "sh -c 'exit 7'", Duration::from_secs(5), "exit")
            .unwrap();
        assert_eq!(ok.code, Some(7));
    }
}
