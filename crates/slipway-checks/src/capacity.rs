//! Capacity: declared resources per instance × instances (replicas plus the canary's
//! surge) against what this machine — or a target host, from a report its shell prints
//! ([`host_report_command`]) — has free: `MemAvailable` from /proc/meminfo, CPU as
//! cores minus the 1-minute load average, disk from statvfs of the deploy directory, and
//! ports by trying to bind them. Over 80 % of what is free warns; more than free fails.

use std::path::Path;
use std::time::Instant;

use crate::{Outcome, Verdict};

/// Share of the free amount above which a demand warns.
pub const WARN_SHARE: f64 = 0.8;

/// What one service needs in total.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Demand {
    /// Service name.
    pub service: String,
    /// Instances at the peak: replicas plus canary surge.
    pub instances: u32,
    /// CPU cores per instance.
    pub cpu: Option<f64>,
    /// Memory bytes per instance.
    pub memory: Option<u64>,
    /// Disk bytes per instance.
    pub disk: Option<u64>,
    /// TCP ports it will listen on (must be free now).
    pub ports: Vec<u16>,
}

/// What the machine has free.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Free {
    /// Cores not busy (cores minus load average, at least 0).
    pub cpu: f64,
    /// Cores in all.
    pub cores: f64,
    /// `MemAvailable` bytes.
    pub memory: u64,
    /// Bytes available to unprivileged users on the deploy directory's filesystem.
    pub disk: u64,
}

/// Why the machine could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// A /proc file could not be read or parsed.
    #[error("read {file}: {message}")]
    Proc {
        /// The file.
        file: &'static str,
        /// Why.
        message: String,
    },
    /// statvfs failed.
    #[error("measure free disk on {path}: {message}; point the check at an existing directory")]
    Disk {
        /// The directory.
        path: String,
        /// Why.
        message: String,
    },
}

pub use slipway_model::text::parse_size;

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1_048_576.0)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn parse_meminfo(meminfo: &str) -> Result<u64, CapacityError> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(CapacityError::Proc {
            file: "/proc/meminfo",
            message: "no MemAvailable line".into(),
        })
}

/// The 1-minute load average of /proc/loadavg.
fn parse_loadavg(loadavg: &str) -> Result<f64, CapacityError> {
    loadavg
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or(CapacityError::Proc {
            file: "/proc/loadavg",
            message: "no 1-minute load average".into(),
        })
}

/// Measure this machine; `dir` is where the release will be written.
pub fn measure(dir: &Path) -> Result<Free, CapacityError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| CapacityError::Proc {
        file: "/proc/meminfo",
        message: e.to_string(),
    })?;
    let memory = parse_meminfo(&meminfo)?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").map_err(|e| CapacityError::Proc {
        file: "/proc/loadavg",
        message: e.to_string(),
    })?;
    let load = parse_loadavg(&loadavg)?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| CapacityError::Disk {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    #[expect(
        clippy::useless_conversion,
        reason = "the field types differ between libc targets"
    )]
    let disk = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    Ok(Free {
        cpu: (cores - load).max(0.0),
        cores,
        memory,
        disk,
    })
}

/// Separates the sections of a host report.
const SECTION: &str = "@@slipway-capacity@@";

/// The POSIX shell command whose output [`parse_host_report`] reads: what a target host
/// has free, measured on the host itself (/proc/meminfo, /proc/loadavg, its cores, and
/// `df -Pk` of `dir`, where the release is written there). Only reads; needs `cat`,
/// `getconf` (or `nproc`) and `df`.
pub fn host_report_command(dir: &str) -> String {
    let q = format!("'{}'", dir.replace('\'', r"'\''"));
    format!(
        "cat /proc/meminfo; echo {SECTION}; cat /proc/loadavg; echo {SECTION}; \
         getconf _NPROCESSORS_ONLN 2>/dev/null || nproc; echo {SECTION}; df -Pk {q}"
    )
}

/// What a host has free, from the output of [`host_report_command`] run there.
pub fn parse_host_report(text: &str, dir: &str) -> Result<Free, CapacityError> {
    let parts: Vec<&str> = text.split(SECTION).collect();
    let [meminfo, loadavg, cores, df] = parts.as_slice() else {
        return Err(CapacityError::Proc {
            file: "host report",
            message: format!("{} section(s) instead of 4", parts.len()),
        });
    };
    let memory = parse_meminfo(meminfo)?;
    let load = parse_loadavg(loadavg)?;
    let cores: f64 = cores
        .trim()
        .lines()
        .next()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .map(f64::from)
        .ok_or(CapacityError::Proc {
            file: "getconf _NPROCESSORS_ONLN",
            message: format!("not a number of cores: `{}`", cores.trim()),
        })?;
    // `df -P`: a header, then `Filesystem 1024-blocks Used Available Capacity Mounted-on`
    // (a long device name never wraps under -P).
    let disk = df
        .lines()
        .filter(|l| !l.trim().is_empty())
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
        .ok_or_else(|| CapacityError::Disk {
            path: dir.to_owned(),
            message: format!("`df -Pk` gave no usable line: `{}`", df.trim()),
        })?;
    Ok(Free {
        cpu: (cores - load).max(0.0),
        cores,
        memory,
        disk,
    })
}

fn judge(demand: f64, free: f64) -> Outcome {
    if demand > free {
        Outcome::Fail
    } else if demand > free * WARN_SHARE {
        Outcome::Warn
    } else {
        Outcome::Pass
    }
}

/// Judge every demand against `free`: one row per resource kind with a total, plus one
/// per port.
pub fn check(demands: &[Demand], free: &Free) -> Vec<Verdict> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let who = |f: &dyn Fn(&Demand) -> Option<String>| {
        demands.iter().filter_map(f).collect::<Vec<_>>().join(" + ")
    };
    let cpu: f64 = demands
        .iter()
        .map(|d| d.cpu.unwrap_or(0.0) * f64::from(d.instances))
        .sum();
    if demands.iter().any(|d| d.cpu.is_some()) {
        let o = judge(cpu, free.cpu);
        let mut v = Verdict::new(
            "capacity.cpu",
            who(&|d| d.cpu.map(|c| format!("{} {}x{c}", d.service, d.instances))),
            o,
            format!("needs {cpu:.2} cores"),
            format!("<= {:.2} free of {:.0} cores", free.cpu, free.cores),
            started,
        );
        if o != Outcome::Pass {
            v = v.hint("free CPU (load average is high) or lower replicas / cpu per instance");
        }
        rows.push(v);
    }
    let mem: u64 = demands
        .iter()
        .map(|d| d.memory.unwrap_or(0) * u64::from(d.instances))
        .sum();
    if demands.iter().any(|d| d.memory.is_some()) {
        let o = judge(mem as f64, free.memory as f64);
        let mut v = Verdict::new(
            "capacity.memory",
            who(&|d| {
                d.memory
                    .map(|m| format!("{} {}x{}", d.service, d.instances, mib(m)))
            }),
            o,
            format!("needs {}", mib(mem)),
            format!("<= {} available", mib(free.memory)),
            started,
        );
        if o != Outcome::Pass {
            v = v.hint("free memory on the target or lower replicas / memory per instance (canary surge counts)");
        }
        rows.push(v);
    }
    let disk: u64 = demands
        .iter()
        .map(|d| d.disk.unwrap_or(0) * u64::from(d.instances))
        .sum();
    if demands.iter().any(|d| d.disk.is_some()) {
        let o = judge(disk as f64, free.disk as f64);
        let mut v = Verdict::new(
            "capacity.disk",
            who(&|d| {
                d.disk
                    .map(|m| format!("{} {}x{}", d.service, d.instances, mib(m)))
            }),
            o,
            format!("needs {}", mib(disk)),
            format!("<= {} available", mib(free.disk)),
            started,
        );
        if o != Outcome::Pass {
            v = v.hint("free disk space where the release is written");
        }
        rows.push(v);
    }
    for d in demands {
        for p in &d.ports {
            let t = Instant::now();
            let v = match std::net::TcpListener::bind(("0.0.0.0", *p)) {
                Ok(_) => Verdict::new("capacity.port", format!("{} :{p}", d.service), Outcome::Pass, "free", "free", t),
                Err(e) => Verdict::new("capacity.port", format!("{} :{p}", d.service), Outcome::Fail, format!("in use ({e})"), "free", t)
                    .hint(format!("another process listens on {p}: stop it or move the service (`ss -ltnp 'sport = :{p}'`)")),
            };
            rows.push(v);
        }
    }
    rows
}
