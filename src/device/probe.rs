//! What a device is: architecture, OS, glibc, board, cores, governor, temperature (one POSIX sh
//! script, run the same way on `local` and over ssh), and what its nnzip sees of ONNX Runtime
//! (version, library sha256, execution providers), asked of nnzip on the device itself.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::transport::Connection;
use super::DeviceError;
use crate::runtime::Runtime;

/// Prints `key=value` lines; every read may fail (containers, phones, odd boards) and then
/// leaves the value empty.
const SYSTEM_SCRIPT: &str = r#"
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
( [ -r /etc/os-release ] && . /etc/os-release && echo "os=$PRETTY_NAME" ) || echo "os=$(uname -s)"
g=$(getconf GNU_LIBC_VERSION 2>/dev/null); echo "glibc=${g#glibc }"
m=$(tr -d '\000' < /proc/device-tree/model 2>/dev/null)
[ -z "$m" ] && command -v getprop >/dev/null 2>&1 && m="$(getprop ro.product.manufacturer) $(getprop ro.product.model)"
[ -z "$m" ] && m=$(cat /sys/devices/virtual/dmi/id/product_name 2>/dev/null)
echo "board=$m"
echo "cpu=$(grep -m1 -E '^(model name|Hardware|Model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)"
echo "cores=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"
echo "taskset=$(command -v taskset 2>/dev/null)"
echo "nnzip=$(command -v nnzip 2>/dev/null)"
"#;

/// Temperature (highest thermal zone, milli-degrees), current CPU frequencies (kHz) and the
/// Raspberry Pi firmware's throttling bits, where the device has them.
pub const THERMAL_SCRIPT: &str = r#"
t=
for z in /sys/class/thermal/thermal_zone*/temp; do
  v=$(cat "$z" 2>/dev/null) || continue
  if [ -z "$t" ] || [ "$v" -gt "$t" ] 2>/dev/null; then t=$v; fi
done
echo "temp_mc=$t"
echo "freq_khz=$(cat /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq 2>/dev/null | tr '\n' ' ')"
command -v vcgencmd >/dev/null 2>&1 && echo "throttled=$(vcgencmd get_throttled 2>/dev/null | cut -d= -f2)"
true
"#;

/// What nnzip on a device sees of its ONNX Runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeFacts {
    pub nnzip_version: String,
    pub ort_version: String,
    pub ort_library: String,
    pub ort_sha256: String,
    pub providers: Vec<String>,
}

/// One reading of the device's temperature and clocks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ThermalReading {
    pub temp_c: Option<f64>,
    /// Current frequency per CPU (MHz).
    pub freq_mhz: Vec<f64>,
    /// `vcgencmd get_throttled` (Raspberry Pi), e.g. `0x50005`.
    pub throttled_raw: Option<String>,
}

impl ThermalReading {
    pub fn parse(kv: &BTreeMap<String, String>) -> ThermalReading {
        ThermalReading {
            temp_c: kv
                .get("temp_mc")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|mc| mc / 1000.0),
            freq_mhz: kv
                .get("freq_khz")
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|f| f.parse::<f64>().ok())
                        .map(|k| k / 1000.0)
                        .collect()
                })
                .unwrap_or_default(),
            throttled_raw: kv.get("throttled").filter(|v| !v.is_empty()).cloned(),
        }
    }

    /// The Pi firmware's bits: 0 under-voltage, 1 frequency capped, 2 throttled, 3 soft
    /// temperature limit (now); 16–19 the same since boot.
    pub fn throttle_bits(&self) -> Option<u32> {
        let raw = self.throttled_raw.as_deref()?;
        u32::from_str_radix(raw.trim().trim_start_matches("0x"), 16).ok()
    }
}

/// A device as probed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFacts {
    pub name: String,
    pub arch: String,
    pub os: String,
    pub kernel: String,
    /// `None` where the C library is not glibc (musl, Android's bionic).
    pub glibc: Option<String>,
    /// Board or product (`Raspberry Pi 4 Model B Rev 1.4`, a phone's model, a PC's DMI name).
    pub model: String,
    pub cpu: String,
    pub cores: Option<usize>,
    pub governor: Option<String>,
    pub thermal: ThermalReading,
    pub taskset: bool,
    /// nnzip on the device's `PATH`, if any.
    pub nnzip_on_path: Option<String>,
    /// What nnzip on the device reports (missing when it could not be run).
    pub runtime: Option<RuntimeFacts>,
}

/// `key=value` lines to a map (later keys win).
pub fn key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn some(v: Option<&String>) -> Option<String> {
    v.filter(|s| !s.is_empty()).cloned()
}

/// Runs the system and thermal scripts on the device.
pub fn system_facts(conn: &mut Connection) -> Result<DeviceFacts, DeviceError> {
    let script = format!("{SYSTEM_SCRIPT}\n{THERMAL_SCRIPT}");
    let timeout = conn.spec.connect_timeout + std::time::Duration::from_secs(20);
    let out = conn.run(&script, None, timeout, "probe")?;
    let kv = key_values(&out.stdout_text());
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    Ok(DeviceFacts {
        name: conn.name().to_string(),
        arch: get("arch"),
        os: get("os"),
        kernel: get("kernel"),
        glibc: some(kv.get("glibc")),
        model: get("board"),
        cpu: get("cpu"),
        cores: kv.get("cores").and_then(|c| c.parse().ok()),
        governor: some(kv.get("governor")),
        thermal: ThermalReading::parse(&kv),
        taskset: kv.get("taskset").is_some_and(|t| !t.is_empty()),
        nnzip_on_path: some(kv.get("nnzip")),
        runtime: None,
    })
}

/// Reads the device's temperature and clocks.
pub fn thermal(conn: &mut Connection) -> Result<ThermalReading, DeviceError> {
    let timeout = conn.spec.connect_timeout + std::time::Duration::from_secs(10);
    let out = conn.run(THERMAL_SCRIPT, None, timeout, "read temperature")?;
    Ok(ThermalReading::parse(&key_values(&out.stdout_text())))
}

/// The ONNX Runtime this process loaded, as `device probe local` reports it.
pub fn runtime_facts(rt: &Runtime) -> RuntimeFacts {
    RuntimeFacts {
        nnzip_version: env!("CARGO_PKG_VERSION").to_string(),
        ort_version: ort_version(&rt.lib),
        ort_library: rt.lib.display().to_string(),
        ort_sha256: super::transport::sha256_file(&rt.lib).unwrap_or_default(),
        providers: rt
            .available_providers()
            .into_iter()
            .map(str::to_string)
            .collect(),
    }
}

/// The loaded library's version: from its build string (`git-branch=rel-1.31.1`), else from
/// its file name (`libonnxruntime.so.1.31.1`).
fn ort_version(lib: &Path) -> String {
    let info = ort::info();
    if let Some(v) = info
        .split([',', ' '])
        .find_map(|w| w.trim().strip_prefix("git-branch=rel-"))
    {
        return v.to_string();
    }
    lib.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once(".so."))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Refuses a device nnzip cannot measure on, before anything is sent: 32-bit CPUs and old or
/// absent glibc need a library the user supplies (there is no PyPI wheel for them).
pub fn check_supported(facts: &DeviceFacts, user_ort: bool) -> Result<(), DeviceError> {
    let refuse = |reason: String| {
        Err(DeviceError::Unsupported {
            device: facts.name.clone(),
            reason,
        })
    };
    let arch = facts.arch.as_str();
    let is_32 =
        arch.starts_with("armv") || arch == "arm" || arch.starts_with("i686") || arch == "i386";
    if is_32 && !user_ort {
        return refuse(format!(
            "{arch} is a 32-bit CPU; ONNX Runtime publishes no 32-bit ARM library. Install a \
             64-bit OS (Raspberry Pi OS 64-bit reports aarch64), or build ONNX Runtime and nnzip \
             for it and set `ort` and `nnzip` in the devices file"
        ));
    }
    if !user_ort {
        match facts.glibc.as_deref().map(glibc_at_least_2_28) {
            Some(true) => {}
            Some(false) => {
                return refuse(format!(
                    "glibc {} is older than 2.28, the oldest the ONNX Runtime wheels \
                     (manylinux_2_28) run on; set `ort` to a library built for it",
                    facts.glibc.as_deref().unwrap_or("")
                ))
            }
            None => {
                return refuse(
                    "no glibc (musl or Android's bionic); the ONNX Runtime wheels and nnzip's \
                     builds need glibc: use a glibc userland (e.g. a Debian chroot under \
                     Termux) or set `ort` and `nnzip` to builds for this C library"
                        .into(),
                )
            }
        }
    }
    Ok(())
}

fn glibc_at_least_2_28(v: &str) -> bool {
    let mut it = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (maj, min) >= (2, 28)
}

/// Refuses a provider the device's library lacks.
pub fn check_provider(facts: &DeviceFacts, ep: &str) -> Result<(), DeviceError> {
    let ep = ep.to_ascii_lowercase();
    if ep.is_empty() || ep == "cpu" {
        return Ok(());
    }
    match &facts.runtime {
        Some(r) if !r.providers.contains(&ep) => Err(DeviceError::MissingProvider {
            device: facts.name.clone(),
            ep,
            available: r.providers.join(", "),
            library: r.ort_library.clone(),
        }),
        _ => Ok(()),
    }
}

impl DeviceFacts {
    /// Text for `nnzip device probe`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(o, "device     {}", self.name);
        let _ = writeln!(o, "arch       {}", self.arch);
        let _ = writeln!(o, "os         {} (kernel {})", self.os, self.kernel);
        let _ = writeln!(o, "glibc      {}", opt(&self.glibc));
        let _ = writeln!(o, "board      {}", self.model);
        let _ = writeln!(o, "cpu        {}", self.cpu);
        let _ = writeln!(
            o,
            "cores      {}",
            self.cores
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        );
        let _ = writeln!(o, "governor   {}", opt(&self.governor));
        let t = &self.thermal;
        let _ = writeln!(
            o,
            "thermal    {} {}{}",
            t.temp_c
                .map(|c| format!("{c:.1} °C"))
                .unwrap_or_else(|| "no sensor".into()),
            freq_text(&t.freq_mhz),
            t.throttled_raw
                .as_ref()
                .map(|r| format!(", throttled={r}"))
                .unwrap_or_default()
        );
        let _ = writeln!(o, "taskset    {}", if self.taskset { "yes" } else { "no" });
        match &self.runtime {
            Some(r) => {
                let _ = writeln!(o, "nnzip      {}", r.nnzip_version);
                let _ = writeln!(o, "ORT        {} ({})", r.ort_version, r.ort_library);
                let _ = writeln!(o, "ORT sha256 {}", r.ort_sha256);
                let _ = writeln!(o, "EPs        {}", r.providers.join(", "));
            }
            None => {
                let _ = writeln!(o, "nnzip      not run on the device");
            }
        }
        o
    }
}

/// `1800 MHz` or `600–1800 MHz` over the CPUs.
pub fn freq_text(f: &[f64]) -> String {
    let lo = f.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = f.iter().copied().fold(0.0, f64::max);
    if f.is_empty() {
        String::new()
    } else if (hi - lo).abs() < 1.0 {
        format!("@ {hi:.0} MHz")
    } else {
        format!("@ {lo:.0}–{hi:.0} MHz")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(arch: &str, glibc: Option<&str>) -> DeviceFacts {
        DeviceFacts {
            name: "d".into(),
            arch: arch.into(),
            os: String::new(),
            kernel: String::new(),
            glibc: glibc.map(str::to_string),
            model: String::new(),
            cpu: String::new(),
            cores: None,
            governor: None,
            thermal: ThermalReading::default(),
            taskset: false,
            nnzip_on_path: None,
            runtime: None,
        }
    }

    #[test]
    fn refusals_name_the_reason() {
        assert!(check_supported(&facts("aarch64", Some("2.36")), false).is_ok());
        let e = check_supported(&facts("armv7l", Some("2.36")), false).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
        assert!(check_supported(&facts("armv7l", Some("2.36")), true).is_ok());
        let e = check_supported(&facts("aarch64", Some("2.27")), false).unwrap_err();
        assert!(e.to_string().contains("2.28"), "{e}");
        assert!(check_supported(&facts("aarch64", Some("2.28")), false).is_ok());
        assert!(check_supported(&facts("aarch64", None), false).is_err());
    }

    #[test]
    fn the_local_scripts_read_this_machine() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{SYSTEM_SCRIPT}\n{THERMAL_SCRIPT}"))
            .output()
            .unwrap();
        let kv = key_values(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(kv["arch"], std::env::consts::ARCH);
        assert!(kv["cores"].parse::<usize>().unwrap() >= 1);
        let t = ThermalReading::parse(&kv);
        assert!(t.temp_c.is_none_or(|c| (-40.0..150.0).contains(&c)));
    }

    #[test]
    fn throttle_bits_parse() {
        let t = ThermalReading {
            throttled_raw: Some("0x50005".into()),
            ..Default::default()
        };
        assert_eq!(t.throttle_bits(), Some(0x50005));
    }
}
