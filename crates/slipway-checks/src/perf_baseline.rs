//! Pre/post performance comparison across a deploy. Before the deploy changes anything,
//! the declared request mix is driven at the running version and the measurement is kept
//! with the run (`<run dir>/perf-baseline.json`, latencies included); after the last wave
//! the same mix (rate, workers, duration and paths as stored, not as re-read from a spec
//! that may have changed) is driven at the new version and judged against the stored
//! baseline by [`crate::perf::judge`]. The verdict, with both distributions, is written
//! beside it as `perf-verify.json`.
//!
//! Files are one JSON object per run keyed by check name, so several perf checks share them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_model::spec::PerfCheck;

use crate::perf::{Distribution, Load, Tolerance, drive, judge};
use crate::{Outcome, Verdict};

/// File of a run's baselines.
pub const BASELINE_FILE: &str = "perf-baseline.json";
/// File of a run's verifications.
pub const VERIFY_FILE: &str = "perf-verify.json";

/// Fewer successful samples than this is not a baseline anyone should trust.
pub const MIN_SAMPLES: u64 = 20;

/// A perf check resolved to what the load generator needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Setup {
    /// `host:port` driven.
    pub addr: String,
    /// Paths requested round-robin.
    pub paths: Vec<String>,
    /// Requests per second.
    pub rate: u32,
    /// Connections.
    pub workers: u32,
    /// Length of one measurement, ms.
    pub duration_ms: u64,
    /// Allowed slowdown, fraction (0.2 = 20 %).
    pub tolerance: f64,
    /// Latency difference that never counts, ms.
    pub slack_ms: f64,
    /// Confidence of the distribution test.
    pub confidence: f64,
}

impl Setup {
    /// Defaults filled in and the URL reduced to `host:port`.
    pub fn from_spec(p: &PerfCheck) -> Result<Self, String> {
        let rest = p
            .url
            .strip_prefix("http://")
            .unwrap_or(&p.url)
            .split('/')
            .next()
            .unwrap_or_default();
        if p.url.starts_with("https://")
            || !rest
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(format!(
                "perf url `{}` is not host:port or http://host:port (https is not driven)",
                p.url
            ));
        }
        let duration = match &p.duration {
            Some(d) => d.get().map_err(|e| format!("perf duration `{d}`: {e}"))?,
            None => Duration::from_secs(5),
        };
        Ok(Self {
            addr: rest.to_owned(),
            paths: if p.paths.is_empty() {
                vec!["/".into()]
            } else {
                p.paths.clone()
            },
            rate: p.rate.unwrap_or(50).max(1),
            workers: p.workers.unwrap_or(4).max(1),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            tolerance: p.tolerance.unwrap_or(20.0) / 100.0,
            slack_ms: p.slack_ms.unwrap_or(5.0),
            confidence: p.confidence.unwrap_or(0.99),
        })
    }

    fn load(&self) -> Load {
        Load {
            paths: self.paths.clone(),
            rate: self.rate,
            workers: self.workers,
            duration: Duration::from_millis(self.duration_ms),
        }
    }

    fn tolerance(&self) -> Tolerance {
        Tolerance {
            ratio: self.tolerance,
            slack_ms: self.slack_ms,
            confidence: self.confidence,
        }
    }

    /// What the verify step expects, in words.
    pub fn expected(&self) -> String {
        format!(
            "throughput >= {:.0}% of baseline, p50/p95/p99 <= baseline +{:.0}% +{} ms, not slower at {:.0}% confidence (Mann-Whitney)",
            (1.0 - self.tolerance) * 100.0,
            self.tolerance * 100.0,
            self.slack_ms,
            self.confidence * 100.0
        )
    }
}

/// The measurement of the running version kept before a deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// How it was measured (the verify step repeats exactly this).
    pub setup: Setup,
    /// When, RFC 3339.
    pub taken_at: String,
    /// Throughput and percentiles.
    pub distribution: Distribution,
    /// Every successful request's latency, ms, in completion order (baselines written
    /// before that are sorted; the test's uniform reservoir sample does not depend on the
    /// order): the distribution test needs them.
    pub latencies_ms: Vec<f64>,
}

/// The verdict of a post-deploy comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    /// How both sides were measured.
    pub setup: Setup,
    /// When the baseline was taken.
    pub baseline_taken_at: String,
    /// When the new version was measured.
    pub taken_at: String,
    /// The worst row.
    pub verdict: Outcome,
    /// Throughput, p50, p95, p99 and distribution rows.
    pub rows: Vec<Verdict>,
    /// The running version before the deploy.
    pub baseline: Distribution,
    /// The new version.
    pub candidate: Distribution,
    /// Which samples the distribution test judged: method, cap, how many of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<slipway_model::analysis::Sampled>,
}

/// One line summary of a distribution: `50.0 req/s, p50 1.2 / p95 2.0 / p99 3.1 ms (250 ok, 0 failed)`.
pub fn summary(d: &Distribution) -> String {
    format!(
        "{:.1} req/s, p50 {:.1} / p95 {:.1} / p99 {:.1} ms ({} ok, {} failed)",
        d.throughput, d.p50, d.p95, d.p99, d.ok, d.failed
    )
}

fn now() -> String {
    slipway_stdx::now().to_string()
}

/// Measure the running version. `Err` (with a hint) when it could not be measured well
/// enough to be a baseline: a deploy must not be judged against nothing.
pub async fn take(setup: &Setup) -> Result<Baseline, String> {
    let d = drive(&setup.addr, &setup.load()).await;
    if d.ok < MIN_SAMPLES || d.failed > d.ok / 10 {
        return Err(format!(
            "the running version at {} answered {} request(s) ok and {} failed (at least {MIN_SAMPLES} ok and under 10% failed needed for a baseline); start the current version first, or drop the perf check for a first install",
            setup.addr, d.ok, d.failed
        ));
    }
    Ok(Baseline {
        setup: setup.clone(),
        taken_at: now(),
        latencies_ms: d.latencies_ms.clone(),
        distribution: d,
    })
}

/// Measure the new version with the baseline's own setup and judge it.
pub async fn verify(baseline: &Baseline) -> Verification {
    let started = Instant::now();
    let setup = &baseline.setup;
    let c = drive(&setup.addr, &setup.load()).await;
    let mut b = baseline.distribution.clone();
    b.latencies_ms.clone_from(&baseline.latencies_ms);
    let target = format!("{} after vs before the deploy", setup.addr);
    let (rows, sampled) = judge(&b, &c, &target, setup.tolerance(), started);
    Verification {
        sampled,
        setup: setup.clone(),
        baseline_taken_at: baseline.taken_at.clone(),
        taken_at: now(),
        verdict: crate::worst(&rows),
        rows,
        baseline: b,
        candidate: c,
    }
}

fn read_map<T: for<'de> Deserialize<'de>>(file: &Path) -> Result<BTreeMap<String, T>, String> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a perf record: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

fn write_entry<T: Serialize + for<'de> Deserialize<'de>>(
    file: &Path,
    name: &str,
    value: T,
) -> Result<PathBuf, String> {
    let mut map: BTreeMap<String, T> = read_map(file)?;
    map.insert(name.to_owned(), value);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_vec_pretty(&map).map_err(|e| format!("encode: {e}"))?;
    // Written beside and renamed: a crash never leaves half a baseline to judge against.
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(file.to_owned())
}

/// Keep `baseline` as check `name`'s baseline in `run_dir`.
pub fn save_baseline(run_dir: &Path, name: &str, baseline: &Baseline) -> Result<PathBuf, String> {
    write_entry(&run_dir.join(BASELINE_FILE), name, baseline.clone())
}

/// Check `name`'s baseline kept in `run_dir`, if any.
pub fn load_baseline(run_dir: &Path, name: &str) -> Result<Option<Baseline>, String> {
    Ok(read_map::<Baseline>(&run_dir.join(BASELINE_FILE))?.remove(name))
}

/// Every baseline kept in `run_dir`.
pub fn baselines(run_dir: &Path) -> Result<BTreeMap<String, Baseline>, String> {
    read_map(&run_dir.join(BASELINE_FILE))
}

/// Keep a verification beside the baseline.
pub fn save_verification(run_dir: &Path, name: &str, v: &Verification) -> Result<PathBuf, String> {
    write_entry(&run_dir.join(VERIFY_FILE), name, v.clone())
}

/// Every verification kept in `run_dir`.
pub fn verifications(run_dir: &Path) -> Result<BTreeMap<String, Verification>, String> {
    read_map(&run_dir.join(VERIFY_FILE))
}

/// Rows for a report: the verification's rows, or (no verification yet) one row per
/// baseline saying what was kept.
pub fn report_rows(name: &str, b: Option<&Baseline>, v: Option<&Verification>) -> Vec<Verdict> {
    if let Some(v) = v {
        return v.rows.clone();
    }
    b.map(|b| Verdict {
        check: format!("perf.{name}.baseline"),
        target: b.setup.addr.clone(),
        verdict: Outcome::Pass,
        measured: summary(&b.distribution),
        expected: "a baseline of the running version".into(),
        duration_ms: b.setup.duration_ms,
        hint: None,
        host: None,
    })
    .into_iter()
    .collect()
}
