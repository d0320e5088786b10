//! The devices file: `[[device]]` entries in TOML. Unknown keys are errors (a typo must not
//! silently measure with defaults), and `local`, this machine, is always a device.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::DeviceError;

/// The file name looked for in the working directory, then in the user's config folder
/// (`$XDG_CONFIG_HOME/nnzip/devices.toml`, else `~/.config/nnzip/devices.toml`).
pub const DEFAULT_FILE: &str = "nnzip-devices.toml";

/// The name of this machine as a device.
pub const LOCAL: &str = "local";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    device: Vec<Entry>,
}

/// `cpus` as `"0-3,6"` or `[0, 1, 2, 3, 6]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Cpus {
    List(Vec<u32>),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    ssh: Option<String>,
    port: Option<u16>,
    identity: Option<PathBuf>,
    #[serde(default)]
    ssh_options: Vec<String>,
    threads: Option<usize>,
    cpus: Option<Cpus>,
    ep: Option<String>,
    #[serde(default)]
    ep_options: std::collections::BTreeMap<String, String>,
    workdir: Option<String>,
    nnzip: Option<String>,
    ort: Option<String>,
    connect_timeout: Option<f64>,
    timeout: Option<f64>,
}

/// Where a program comes from on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    /// Found on the device (`PATH` for nnzip, its own search for ONNX Runtime), else pushed from
    /// this machine when a build for the device's architecture is at hand.
    Auto,
    /// This path on the device.
    Path(String),
}

/// One device, resolved from the file (defaults filled in).
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    /// `user@host` (or a `Host` alias of `~/.ssh/config`); `None` for `local`.
    pub ssh: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    /// Extra `-o` options for ssh, as `Key=Value`.
    pub ssh_options: Vec<String>,
    pub threads: Option<usize>,
    /// CPU affinity as a `taskset -c` list (`0-3,6`).
    pub cpus: Option<String>,
    pub ep: Option<String>,
    pub ep_options: Vec<(String, String)>,
    /// Folder the remote commands run in (default: the cache folder `~/.cache/nnzip`).
    pub workdir: Option<String>,
    pub nnzip: Locate,
    pub ort: Locate,
    /// ssh's `ConnectTimeout` and the limit on starting the connection.
    pub connect_timeout: Duration,
    /// Limit on one measurement step (one bench round, one decode timing).
    pub timeout: Duration,
}

impl DeviceSpec {
    /// This machine with no settings.
    pub fn local() -> DeviceSpec {
        DeviceSpec {
            name: LOCAL.into(),
            ssh: None,
            port: None,
            identity: None,
            ssh_options: Vec::new(),
            threads: None,
            cpus: None,
            ep: None,
            ep_options: Vec::new(),
            workdir: None,
            nnzip: Locate::Auto,
            ort: Locate::Auto,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(900),
        }
    }

    pub fn is_local(&self) -> bool {
        self.ssh.is_none()
    }
}

/// The devices of one file, `local` always among them.
#[derive(Debug, Clone)]
pub struct Devices {
    /// The file they came from; `None` when no file was found (only `local` then).
    pub file: Option<PathBuf>,
    pub devices: Vec<DeviceSpec>,
    /// Where a file was looked for, for the "no such device" message.
    pub searched: Vec<PathBuf>,
}

impl Devices {
    /// Reads `explicit` (an error when missing), else the first default location that exists.
    pub fn load(explicit: Option<&Path>) -> Result<Devices, DeviceError> {
        if let Some(p) = explicit {
            return Devices::from_file(p, vec![p.to_path_buf()]);
        }
        let searched = default_locations();
        match searched.iter().find(|p| p.is_file()) {
            Some(p) => Devices::from_file(&p.clone(), searched),
            None => Ok(Devices {
                file: None,
                devices: vec![DeviceSpec::local()],
                searched,
            }),
        }
    }

    fn from_file(path: &Path, searched: Vec<PathBuf>) -> Result<Devices, DeviceError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeviceError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        let devices = parse(&text).map_err(|reason| DeviceError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Devices {
            file: Some(path.to_path_buf()),
            devices,
            searched,
        })
    }

    /// The device called `name`.
    pub fn get(&self, name: &str) -> Result<&DeviceSpec, DeviceError> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| DeviceError::UnknownDevice {
                name: name.to_string(),
                known: self
                    .devices
                    .iter()
                    .map(|d| d.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                file: match &self.file {
                    Some(f) => f.display().to_string(),
                    None => format!(
                        "no devices file found (looked for {})",
                        self.searched
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            })
    }
}

fn default_locations() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(DEFAULT_FILE)];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config {
        v.push(c.join("nnzip").join("devices.toml"));
    }
    v
}

/// Parses a devices file; the error is a sentence naming the entry and key at fault.
pub fn parse(text: &str) -> Result<Vec<DeviceSpec>, String> {
    let shape: FileShape = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = vec![DeviceSpec::local()];
    for e in shape.device {
        let d = resolve(e)?;
        match out.iter_mut().find(|o| o.name == d.name) {
            // The file may give `local` settings (threads, cpus, ...), once.
            Some(o) if o.name == LOCAL && o.threads.is_none() && o.cpus.is_none() => *o = d,
            Some(_) => return Err(format!("device '{}' is defined twice", d.name)),
            None => out.push(d),
        }
    }
    Ok(out)
}

fn seconds(name: &str, key: &str, v: Option<f64>, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e7 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "device '{name}': {key} = {s} is not a positive number of seconds"
        )),
    }
}

fn resolve(e: Entry) -> Result<DeviceSpec, String> {
    let name = e.name.trim().to_string();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("device name '{}' must be one word", e.name));
    }
    if name == LOCAL && e.ssh.is_some() {
        return Err("device 'local' is this machine; it takes no `ssh`".into());
    }
    if name != LOCAL && e.ssh.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return Err(format!(
            "device '{name}' needs `ssh = \"user@host\"` (only 'local' runs without ssh)"
        ));
    }
    if let Some(s) = &e.ssh {
        // ssh would read a leading '-' as an option.
        if s.starts_with('-') || s.contains(char::is_whitespace) {
            return Err(format!("device '{name}': ssh = '{s}' is not a user@host"));
        }
    }
    for o in &e.ssh_options {
        if !o.contains('=') || o.starts_with('-') {
            return Err(format!(
                "device '{name}': ssh_options entry '{o}' is not `Key=Value`"
            ));
        }
    }
    if e.threads == Some(0) {
        return Err(format!("device '{name}': threads must be at least 1"));
    }
    let cpus = match e.cpus {
        None => None,
        Some(c) => Some(cpu_list(&c).map_err(|r| format!("device '{name}': cpus {r}"))?),
    };
    let locate = |v: Option<String>| match v {
        None => Locate::Auto,
        Some(s) if s == "auto" => Locate::Auto,
        Some(s) => Locate::Path(s),
    };
    let local = DeviceSpec::local();
    Ok(DeviceSpec {
        connect_timeout: seconds(
            &name,
            "connect_timeout",
            e.connect_timeout,
            local.connect_timeout,
        )?,
        timeout: seconds(&name, "timeout", e.timeout, local.timeout)?,
        name,
        ssh: e.ssh,
        port: e.port,
        identity: e.identity,
        ssh_options: e.ssh_options,
        threads: e.threads,
        cpus,
        ep: e.ep,
        ep_options: e.ep_options.into_iter().collect(),
        workdir: e.workdir,
        nnzip: locate(e.nnzip),
        ort: locate(e.ort),
    })
}

/// Normalises `cpus` to a `taskset -c` list, checking its syntax.
fn cpu_list(c: &Cpus) -> Result<String, String> {
    match c {
        Cpus::List(v) if v.is_empty() => Err("is empty".into()),
        Cpus::List(v) => Ok(v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        Cpus::Text(s) => {
            let ok = !s.is_empty()
                && s.split(',').all(|part| {
                    let mut ends = part.splitn(2, '-');
                    let lo = ends.next().and_then(|x| x.trim().parse::<u32>().ok());
                    match (lo, ends.next()) {
                        (Some(_), None) => true,
                        (Some(a), Some(b)) => b.trim().parse::<u32>().is_ok_and(|b| b >= a),
                        _ => false,
                    }
                });
            if ok {
                Ok(s.replace(' ', ""))
            } else {
                Err(format!("'{s}' is not a CPU list such as \"0-3,6\""))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_always_there_and_entries_resolve() {
        let d = parse(
            r#"
            [[device]]
            name = "pi4"
            ssh = "pi@raspberrypi.local"
            port = 2222
            ssh_options = ["StrictHostKeyChecking=accept-new"]
            threads = 4
            cpus = "2-3"
            nnzip = "/usr/local/bin/nnzip"
            timeout = 60
            "#,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert!(d[0].is_local());
        let pi = &d[1];
        assert_eq!(pi.ssh.as_deref(), Some("pi@raspberrypi.local"));
        assert_eq!(pi.port, Some(2222));
        assert_eq!(pi.cpus.as_deref(), Some("2-3"));
        assert_eq!(pi.nnzip, Locate::Path("/usr/local/bin/nnzip".into()));
        assert_eq!(pi.ort, Locate::Auto);
        assert_eq!(pi.timeout, Duration::from_secs(60));
        assert_eq!(parse("").unwrap().len(), 1);
    }

    #[test]
    fn mistakes_are_errors_that_name_them() {
        let unknown = parse("[[device]]\nname = \"a\"\nssh = \"u@h\"\nthread = 2\n").unwrap_err();
        assert!(unknown.contains("thread"), "{unknown}");
        let no_ssh = parse("[[device]]\nname = \"a\"\n").unwrap_err();
        assert!(no_ssh.contains("needs `ssh"), "{no_ssh}");
        let twice =
            parse("[[device]]\nname=\"a\"\nssh=\"u@h\"\n[[device]]\nname=\"a\"\nssh=\"u@h\"\n");
        assert!(twice.unwrap_err().contains("twice"));
        let cpus = parse("[[device]]\nname=\"a\"\nssh=\"u@h\"\ncpus=\"3-1\"\n").unwrap_err();
        assert!(cpus.contains("CPU list"), "{cpus}");
        assert!(parse("[[device]]\nname=\"local\"\nssh=\"u@h\"\n").is_err());
        assert!(parse("[[device]]\nname=\"a\"\nssh=\"-oProxyCommand=x\"\n").is_err());
        let top = parse("[devices]\nname=\"a\"\n").unwrap_err();
        assert!(top.contains("devices"), "{top}");
    }

    #[test]
    fn local_takes_settings_and_cpu_lists_normalise() {
        let d = parse("[[device]]\nname=\"local\"\nthreads=1\ncpus=[0,1]\n").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].threads, Some(1));
        assert_eq!(d[0].cpus.as_deref(), Some("0,1"));
    }
}
