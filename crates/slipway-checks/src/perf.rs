//! Performance regression: a paced load generator drives the same request mix at the
//! baseline and the candidate side by side (concurrently, so both see the same machine
//! load), then compares throughput and p50/p95/p99, and tests the latency distributions
//! with a one-sided Mann-Whitney U (`slipway_model::analysis::compare`) against the
//! baseline stretched by the declared tolerance. Both distributions are in the report.
//!
//! Latencies are kept in arrival order and never sorted before the test samples them:
//! the test draws a uniform reservoir sample of each side
//! (`slipway_model::analysis::reservoir`), and the report says how many of how many it
//! judged ([`Report::sampled`]). Percentiles are read from a sorted copy.
//!
//! The same comparison runs across a deploy ([`crate::perf_baseline`]): the running
//! version measured before any change is kept as the run's baseline and the new version
//! is judged against it after the last wave.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use slipway_model::analysis::{Phase, Sampled, compare};
use slipway_model::spec::{Comparison, Metric};
use tokio::net::TcpStream;

use crate::{Outcome, Verdict};

/// How the load is shaped.
#[derive(Debug, Clone)]
pub struct Load {
    /// Paths requested round-robin (the request mix), e.g. `["/", "/version"]`.
    pub paths: Vec<String>,
    /// Requests per second to each side.
    pub rate: u32,
    /// Connections per side.
    pub workers: u32,
    /// How long.
    pub duration: Duration,
}

/// What a regression is.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Relative slowdown (or throughput loss) allowed, e.g. 0.2 = 20 %.
    pub ratio: f64,
    /// Absolute latency difference that never counts (timer and scheduler noise), ms.
    pub slack_ms: f64,
    /// Confidence of the Mann-Whitney test.
    pub confidence: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            slack_ms: 5.0,
            confidence: 0.99,
        }
    }
}

/// One side's measurements.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Distribution {
    /// Successful (2xx-4xx) requests.
    pub ok: u64,
    /// Failed requests (5xx, connection errors).
    pub failed: u64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latencies of successful requests, ms, in the order they completed (kept out of
    /// reports; a stored baseline carries them separately).
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    /// p50, p95, p99 in ms.
    pub p50: f64,
    /// p95, ms.
    pub p95: f64,
    /// p99, ms.
    pub p99: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank; the index is within bounds because q <= 1.
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Drive `load` at `addr` (`host:port`) and measure.
pub async fn drive(addr: &str, load: &Load) -> Distribution {
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = load.workers.max(1);
    let period = Duration::from_secs_f64(f64::from(workers) / f64::from(load.rate.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (lat, failed, addr) = (lat.clone(), failed.clone(), addr.to_owned());
        let paths = load.paths.clone();
        let end = start + load.duration;
        tasks.spawn(async move {
            let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
            let mut next = start + period.mul_f64(f64::from(w) / f64::from(workers));
            let mut k = w as usize;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                next += period;
                let path = paths
                    .get(k % paths.len().max(1))
                    .map_or("/", String::as_str);
                k += 1;
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    sender = connect(&addr).await;
                }
                let Some(s) = sender.as_mut() else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let t = Instant::now();
                let req = hyper::Request::get(path)
                    .header(hyper::header::HOST, addr.as_str())
                    .body(Empty::new());
                let ok = match req {
                    Ok(req) => match s.send_request(req).await {
                        Ok(resp) => {
                            let st = resp.status().as_u16();
                            resp.into_body().collect().await.is_ok() && st < 500
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if ok {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if let Ok(mut v) = lat.lock() {
                        v.push(ms);
                    }
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64().max(1e-3);
    let v = lat.lock().map(|v| v.clone()).unwrap_or_default();
    distribution(v, failed.load(Ordering::Relaxed), elapsed)
}

/// A side's figures from its latencies (kept in their order: see the module doc).
pub fn distribution(latencies_ms: Vec<f64>, failed: u64, seconds: f64) -> Distribution {
    let mut sorted = latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Distribution {
        ok: latencies_ms.len() as u64,
        failed,
        throughput: latencies_ms.len() as f64 / seconds,
        p50: percentile(&sorted, 0.50),
        p95: percentile(&sorted, 0.95),
        p99: percentile(&sorted, 0.99),
        latencies_ms,
    }
}

async fn connect(addr: &str) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// The report of a comparison: the rows and both distributions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Verdict rows (throughput, p50, p95, p99, distribution test).
    pub rows: Vec<Verdict>,
    /// The baseline's measurements.
    pub baseline: Distribution,
    /// The candidate's measurements.
    pub candidate: Distribution,
    /// Which samples the distribution test judged (none when it could not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
}

/// Load baseline and candidate side by side and compare.
pub async fn compare_side_by_side(
    baseline: &str,
    candidate: &str,
    load: &Load,
    tol: Tolerance,
) -> Report {
    let started = Instant::now();
    let (b, c) = tokio::join!(drive(baseline, load), drive(candidate, load));
    let target = format!("{candidate} vs {baseline}");
    let (rows, sampled) = judge(&b, &c, &target, tol, started);
    Report {
        rows,
        baseline: b,
        candidate: c,
        sampled,
    }
}

/// Samples beyond a quantile that a percentile row needs before it is judged on its own.
/// With fewer, the percentile is one or two order statistics and swings with noise: at
/// 10 beyond it, a 20 % tolerance is rarely crossed by chance.
pub const MIN_TAIL_SAMPLES: u64 = 10;

/// Samples per side needed to judge quantile `q` (0.5 → 20, 0.95 → 200, 0.99 → 1000).
pub fn samples_to_judge(q: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "q is one of 0.5/0.95/0.99, so the value is a small positive whole number"
    )]
    let n = (MIN_TAIL_SAMPLES as f64 / (1.0 - q)).round() as u64;
    n
}

/// Judge a candidate's measurements against a baseline's (taken side by side or earlier
/// with the same load): throughput, p50/p95/p99 (each only with enough samples beyond it,
/// see [`MIN_TAIL_SAMPLES`]) and the one-sided distribution test over a uniform sample of
/// each side; also which samples that test judged.
pub fn judge(
    b: &Distribution,
    c: &Distribution,
    target: &str,
    tol: Tolerance,
    started: Instant,
) -> (Vec<Verdict>, Option<Sampled>) {
    let mut rows = Vec::new();
    let min_tp = b.throughput * (1.0 - tol.ratio);
    let tp_ok = c.throughput >= min_tp && c.failed <= b.failed.max(1) * 2;
    let mut v = Verdict::new(
        "perf.throughput",
        target,
        if tp_ok { Outcome::Pass } else { Outcome::Fail },
        format!(
            "{:.1} req/s ({} failed) vs {:.1} req/s ({} failed)",
            c.throughput, c.failed, b.throughput, b.failed
        ),
        format!(">= {min_tp:.1} req/s"),
        started,
    );
    if !tp_ok {
        v = v.hint("the candidate serves fewer requests (or fails more) than the baseline under the same load");
    }
    rows.push(v);
    let per_side = b.ok.min(c.ok);
    for (name, q, cv, bv) in [
        ("p50", 0.50, c.p50, b.p50),
        ("p95", 0.95, c.p95, b.p95),
        ("p99", 0.99, c.p99, b.p99),
    ] {
        let limit = bv * (1.0 + tol.ratio) + tol.slack_ms;
        let needed = samples_to_judge(q);
        if per_side < needed && cv.is_finite() && bv.is_finite() {
            // A p99 of 200 requests is their second slowest: one stray GC pause or
            // scheduler hiccup on either side decides it. Such a row is shown, not
            // judged; the distribution test below uses every sample and still judges.
            rows.push(Verdict::new(
                format!("perf.{name}"),
                target,
                Outcome::Pass,
                format!("{cv:.1} ms vs {bv:.1} ms (not judged)"),
                format!(
                    "not judged: {per_side} samples per side, {needed} needed for {MIN_TAIL_SAMPLES} beyond the {name} (raise rate x duration to judge it)"
                ),
                started,
            ));
            continue;
        }
        // NaN (no samples) never passes.
        let o = if cv.is_finite() && bv.is_finite() && cv <= limit {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        let mut v = Verdict::new(
            format!("perf.{name}"),
            target,
            o,
            format!("{cv:.1} ms vs {bv:.1} ms"),
            format!("<= {limit:.1} ms"),
            started,
        );
        if o == Outcome::Fail {
            v = v.hint(format!(
                "the candidate's {name} latency regressed beyond the tolerance"
            ));
        }
        rows.push(v);
    }
    // One-sided test: is the candidate slower than the baseline stretched by tolerance?
    let stretched: Vec<f64> = b
        .latencies_ms
        .iter()
        .map(|x| x * (1.0 + tol.ratio) + tol.slack_ms)
        .collect();
    let metric = Metric {
        name: "latency-vs-baseline".into(),
        provider: "builtin".into(),
        query: None,
        max: None,
        min: None,
        compare: Some(Comparison::MannWhitney),
        confidence: Some(tol.confidence),
    };
    let r = compare(&metric, &c.latencies_ms, &stretched);
    let o = match r.phase {
        Phase::Successful => Outcome::Pass,
        Phase::Failed => Outcome::Fail,
        // Too few samples is never a pass.
        _ => Outcome::Warn,
    };
    let mut v = Verdict::new(
        "perf.distribution",
        target,
        o,
        format!(
            "p = {} ({})",
            r.value.map_or("n/a".into(), |p| format!("{p:.4}")),
            r.sampled.as_ref().map_or_else(
                || format!("{} vs {} samples", c.ok, b.ok),
                |s| s
                    .describe()
                    .replace("canary", "candidate")
                    .replace("stable", "baseline")
            )
        ),
        format!(
            "not slower than baseline +{:.0}% +{} ms at {:.0}% confidence",
            tol.ratio * 100.0,
            tol.slack_ms,
            tol.confidence * 100.0
        ),
        started,
    );
    if o != Outcome::Pass {
        v = v.hint(r.detail);
    }
    rows.push(v);
    (rows, r.sampled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(latencies: Vec<f64>, secs: f64) -> Distribution {
        distribution(latencies, 0, secs)
    }

    /// `n` latencies spread evenly over 10–14 ms, in an order unrelated to their size.
    fn steady(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 10.0 + ((i * 7919) % n) as f64 * 4.0 / n as f64)
            .collect()
    }

    fn verdict<'a>(rows: &'a [Verdict], check: &str) -> &'a Verdict {
        rows.iter().find(|r| r.check == check).unwrap()
    }

    #[test]
    fn samples_needed_per_quantile() {
        assert_eq!(samples_to_judge(0.50), 20);
        assert_eq!(samples_to_judge(0.95), 200);
        assert_eq!(samples_to_judge(0.99), 1000);
    }

    #[test]
    fn two_stray_slow_requests_in_a_small_sample_do_not_fail_an_equal_candidate() {
        let b = dist(steady(180), 3.0);
        let mut slow = steady(180);
        // The two slowest of 180 decide its p99 (nearest rank 179 of 180).
        slow[3] = 90.0;
        slow[97] = 80.0;
        let c = dist(slow, 3.0);
        assert!(c.p99 > b.p99 * 1.2 + 5.0, "the p99 alone would fail it");
        let (rows, _) = judge(&b, &c, "t", Tolerance::default(), Instant::now());
        let p99 = verdict(&rows, "perf.p99");
        assert_eq!(p99.verdict, Outcome::Pass);
        assert!(p99.expected.contains("not judged"), "{}", p99.expected);
        assert_eq!(crate::worst(&rows), Outcome::Pass, "{rows:#?}");
    }

    #[test]
    fn a_tail_regression_with_enough_samples_fails_on_the_p99() {
        let b = dist(steady(2000), 20.0);
        let mut slow = steady(2000);
        // 2 % of requests now take 60 ms: the p99 moves, the median does not.
        for x in slow.iter_mut().step_by(50) {
            *x = 60.0;
        }
        let c = dist(slow, 20.0);
        let (rows, _) = judge(&b, &c, "t", Tolerance::default(), Instant::now());
        assert_eq!(verdict(&rows, "perf.p50").verdict, Outcome::Pass);
        assert_eq!(verdict(&rows, "perf.p99").verdict, Outcome::Fail);
        assert_eq!(crate::worst(&rows), Outcome::Fail);
    }

    #[test]
    fn a_uniformly_slower_small_sample_still_fails() {
        let b = dist(steady(180), 3.0);
        let c = dist(steady(180).into_iter().map(|x| x + 40.0).collect(), 3.0);
        let (rows, _) = judge(&b, &c, "t", Tolerance::default(), Instant::now());
        assert_eq!(verdict(&rows, "perf.p50").verdict, Outcome::Fail);
        assert_eq!(verdict(&rows, "perf.distribution").verdict, Outcome::Fail);
        assert_eq!(crate::worst(&rows), Outcome::Fail);
    }

    #[test]
    fn a_slower_half_is_judged_even_in_sorted_order() {
        // The case: half the candidate's requests 4x slower. Sorted and cut to the
        // fastest 1,500 of each side, the test saw two equal distributions (p = 1).
        // (100-140 ms, so the 5 ms slack does not hide the change.)
        let ms100 = || {
            steady(3000)
                .into_iter()
                .map(|x| x * 10.0)
                .collect::<Vec<_>>()
        };
        let b = dist(ms100(), 30.0);
        let mut slow = ms100();
        for x in slow.iter_mut().skip(1).step_by(2) {
            *x *= 4.0;
        }
        slow.sort_by(f64::total_cmp);
        let c = dist(slow, 30.0);
        let (rows, sampled) = judge(&b, &c, "t", Tolerance::default(), Instant::now());
        let d = verdict(&rows, "perf.distribution");
        assert_eq!(d.verdict, Outcome::Fail, "{d:#?}");
        let s = sampled.unwrap();
        assert_eq!((s.n_canary, s.used_canary), (3000, 1500));
        assert!(
            d.measured.contains("1500 of 3000 candidate"),
            "{}",
            d.measured
        );
    }

    #[test]
    fn equal_distributions_of_different_sizes_pass() {
        // 2,000 vs 3,000 requests from one distribution: not slower, even sorted (as
        // baselines stored by earlier versions are) — the fastest 1,500 of each were.
        let sorted = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v
        };
        let ms100 = |n| steady(n).into_iter().map(|x| x * 10.0).collect::<Vec<_>>();
        let b = dist(sorted(ms100(3000)), 30.0);
        let c = dist(sorted(ms100(2000)), 20.0);
        // No tolerance: any systematic cut would show.
        let exact = Tolerance {
            ratio: 0.0,
            slack_ms: 0.0,
            confidence: 0.99,
        };
        let (rows, _) = judge(&b, &c, "t", exact, Instant::now());
        assert_eq!(verdict(&rows, "perf.distribution").verdict, Outcome::Pass);
    }
}
