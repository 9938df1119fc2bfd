//! Detection benchmark (issues 4a and 20): 1,000 req/s through the built-in proxy, a
//! canary at 10% that starts answering every request with 500 at time T. Measures the time
//! from T until the canary receives no more traffic, and how many of its 5xx reached
//! clients: the failure's (from T until the stop: what the detector decides) and, beside
//! them, all of the canary's, with the baseline noise of its healthy stretch before T that
//! no detector can prevent (the figure before 2026-12-06 counted only this total, so a
//! round's two or three noise errors read as slow detection). Then HEALTHY rounds where stable and canary both fail a realistic BASELINE
//! fraction of requests independently (seeded, as real errors arrive): every one must
//! promote (a rollback there is a false rollback; a pause, an analysis left without one
//! conclusive measurement, is counted apart).
//!
//! Usage: `cargo run --release -p slipway-providers --example detection -- [ROUNDS] [RATE]
//! [HEALTHY] [BASELINE]` (defaults 5, 1000, 0, 0.01; needs the demo-app binary: `cargo
//! build --release -p demo-app`). One JSON line per round, then a summary.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program: prints its results, panics on setup failure"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_model::spec::{
    AnalysisStep, AnalysisTemplate, CanaryStep, Metric, OnFailure, Probe, RunSpec, Scalar,
};
use slipway_providers::builtin::BuiltinRouter;
use slipway_providers::process::{ProcessTarget, ServiceProcess};
use slipway_providers::traffic::Traffic;
use slipway_proxy::{Pools, Proxy, ProxyConfig, Version};
use slipway_rollout::{Canary, Instances, NoInterventions, Outcome, Role, World, run_canary};

fn target(dir: &std::path::Path, bin: &str, args: &str) -> ProcessTarget {
    let svc = ServiceProcess {
        run: RunSpec {
            image: None,
            command: format!(
                "{bin} --port {{{{ port }}}} --version {{{{ version }}}} --threads 1 {args}"
            ),
            replicas: 2,
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
        },
        readiness: Some(Probe {
            http: Some("/ready".into()),
            ..Probe::default()
        }),
        env: BTreeMap::new(),
        workdir: std::env::temp_dir(),
    };
    let mut t = ProcessTarget::new(dir, BTreeMap::from([("api".to_owned(), svc)]));
    t.stop_grace = Duration::from_secs(2);
    t
}

struct Round {
    detect_ms: f64,
    /// Every canary 5xx clients received in the round, the baseline noise before T included.
    errors_to_clients: u64,
    /// The failure's 5xx that reached clients: from T (its first) until the stop.
    failure_errors_to_clients: u64,
    canary_requests_after_stop: u64,
    /// How the canary ended: "rolled back: reason" or "promoted".
    outcome: String,
    canary_requests: u64,
    canary_errors: u64,
}

/// One canary: failing every request after `fail_after` of its own, or healthy at the
/// `baseline` error rate (then the round ends when the canary is promoted or rolled back).
async fn round(bin: &str, rate: u32, fail_after: Option<u64>, baseline: f64) -> Round {
    let dir = tempfile::tempdir().unwrap();
    // Independent errors at the baseline rate, seeded per instance by its port.
    let noise = if baseline > 0.0 {
        format!("--error-rate {baseline} --error-seed {{{{ port }}}}")
    } else {
        String::new()
    };
    let stable_t = target(dir.path(), bin, &noise);
    let stable = stable_t
        .start("api", "1.0.0", 2, Role::Stable)
        .await
        .unwrap();
    let proxy = Arc::new(
        Proxy::start(ProxyConfig {
            pools: Pools {
                stable: stable.iter().map(|i| i.addr).collect(),
                canary: vec![],
            },
            ..ProxyConfig::default()
        })
        .await
        .unwrap(),
    );
    let traffic = Traffic::start(proxy.local_addr(), "/", rate, 32);
    let router = BuiltinRouter::new(proxy.clone());
    // Each canary instance serves `fail_after` good requests, then only 500s: T is when the
    // first 500 leaves the canary, observed on the proxy's own counters.
    let canary_args = match fail_after {
        Some(n) => format!("--fail-after {n} {noise}"),
        None => noise.clone(),
    };
    let canary_t = target(dir.path(), bin, &canary_args);
    let templates = BTreeMap::from([(
        "fast".to_owned(),
        AnalysisTemplate {
            // A realistic interval analysis (a measurement a second, at least 50 canary
            // responses each), judged by a binomial test at 95 % (a 1 % baseline is not
            // a rate above 5 %; a raw ratio on windows this short failed now and then). A
            // hard failure is the guard's to catch, on every response in the proxy.
            interval: Some("1s".into()),
            min_samples: Some(50),
            failure_limit: Some(0),
            inconclusive_limit: Some(50),
            consecutive_error_limit: None,
            metrics: vec![Metric {
                name: "error-rate".into(),
                provider: "builtin".into(),
                query: None,
                max: Some(Scalar("0.05".into())),
                min: None,
                compare: None,
                confidence: None,
            }],
            on_failure: OnFailure::Rollback,
        },
    )]);
    let steps = vec![
        CanaryStep {
            set_weight: Some(10),
            ..CanaryStep::default()
        },
        CanaryStep {
            analysis: Some(AnalysisStep {
                template: "fast".into(),
                duration: Some(if fail_after.is_some() { "60s" } else { "3s" }.into()),
            }),
            ..CanaryStep::default()
        },
    ];
    // Watch the proxy: when does the canary start failing, and when does it stop
    // receiving requests? T is the first 5xx of the run of errors that lasts until the
    // stop: with a baseline error rate an isolated 5xx of the healthy stretch is not the
    // failure, so every success the canary answers after a 5xx starts the clock again.
    let watch = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut t: Option<Instant> = None;
            let mut successes = 0;
            let mut errors_seen = 0;
            // The canary's error count just before T: the noise of its healthy stretch.
            let mut errors_before_t = 0;
            loop {
                let snap = proxy.snapshot();
                let c = snap.version(Version::Canary);
                let ok = c.requests.saturating_sub(c.errors());
                if ok > successes {
                    successes = ok;
                    errors_seen = c.errors();
                    t = None;
                }
                if t.is_none() && c.errors() > errors_seen {
                    t = Some(Instant::now());
                    errors_before_t = errors_seen;
                }
                if let Some(t0) = t
                    && proxy.weight() == 0
                    && proxy.in_flight(Version::Canary) == 0
                {
                    let requests_at_stop = c.requests;
                    // The proxy counts what it answered, so these are responses clients got.
                    let failure_errors = c.errors() - errors_before_t;
                    return (t0, Instant::now(), requests_at_stop, failure_errors);
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    let world = World {
        instances: &canary_t,
        router: &router,
        metrics: &router,
        external: None,
        interventions: &NoInterventions,
        drain_timeout: Duration::from_secs(5),
    };
    let outcome = run_canary(
        Canary {
            service: "api",
            version: "2.0.0",
            replicas: 2,
            stable: stable.clone(),
            steps: &steps,
            background: None,
            templates: &templates,
            start_step: 0,
            resume: None,
            environment: "test",
            soak: None,
            promotion: Default::default(),
        },
        &world,
        &mut |_| {},
    )
    .await
    .unwrap();
    let outcome = match &outcome {
        Outcome::RolledBack { reason, .. } => format!("rolled back: {reason}"),
        Outcome::Promoted { instances } => {
            canary_t.stop_instances(instances).await;
            "promoted".to_owned()
        }
        Outcome::Paused { reason } => {
            // A pause leaves the canary's instances up, waiting for a human: stop them, or
            // they outlive the round (and the benchmark).
            // (Stable and canary share the state dir: only the candidate's.)
            let mut canary_left = canary_t.running("api").alive;
            canary_left.retain(|i| i.version == "2.0.0");
            canary_t.stop_instances(&canary_left).await;
            format!("paused: {reason}")
        }
    };
    let canary = proxy.snapshot().version(Version::Canary).clone();
    let (detect_ms, after, failure_errors) =
        if fail_after.is_some() && outcome.starts_with("rolled back") {
            let (t0, stopped, requests_at_stop, failure_errors) = watch.await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = proxy.snapshot().version(Version::Canary).requests - requests_at_stop;
            (
                stopped.duration_since(t0).as_secs_f64() * 1000.0,
                after,
                failure_errors,
            )
        } else {
            watch.abort();
            (0.0, 0, 0)
        };
    let stats = traffic.stop().await;
    stable_t.stop_instances(&stable).await;
    Round {
        detect_ms,
        errors_to_clients: stats.canary_errors,
        failure_errors_to_clients: failure_errors,
        canary_requests_after_stop: after,
        outcome,
        canary_requests: canary.requests,
        canary_errors: canary.errors(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let rate: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let healthy: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let baseline: f64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0.01);
    let bin = std::env::var("DEMO_APP_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("demo-app")
            .display()
            .to_string()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "rate {rate} req/s, canary at 10%, every response judged by the proxy's guard, interval analysis every 1 s; baseline error rate {baseline} on stable and canary"
    );
    println!(
        "| round | T → canary gets no traffic | the failure's 5xx that reached clients (from T) | all canary 5xx clients got (with the baseline's) | canary requests after stop | stopped by |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    let mut all = Vec::new();
    for i in 0..rounds {
        // ~2 s of healthy canary traffic before it breaks (50 req/s per canary instance),
        // shifted by a different odd amount each round so T falls at a different phase of
        // the analysis interval (an aligned T would flatter the result).
        let fail_after = u64::from(rate) / 10 + 3 + 7 * i as u64;
        let r = rt.block_on(round(&bin, rate, Some(fail_after), baseline));
        let by = if r.outcome.contains("canary guard") {
            "guard"
        } else if r.outcome.starts_with("rolled back") {
            "interval analysis"
        } else {
            "not stopped"
        };
        println!(
            "| {} | {:.0} ms | {} | {} | {} | {by} |",
            i + 1,
            r.detect_ms,
            r.failure_errors_to_clients,
            r.errors_to_clients,
            r.canary_requests_after_stop
        );
        println!(
            "{}",
            serde_json::json!({"kind": "failing", "round": i + 1, "detect_ms": r.detect_ms,
                "errors_to_clients": r.errors_to_clients,
                "failure_errors_to_clients": r.failure_errors_to_clients,
                "canary_requests_after_stop": r.canary_requests_after_stop,
                "stopped_by": by, "outcome": r.outcome})
        );
        all.push(r);
    }
    if !all.is_empty() {
        let mut d: Vec<f64> = all.iter().map(|r| r.detect_ms).collect();
        d.sort_by(f64::total_cmp);
        let mut f: Vec<u64> = all.iter().map(|r| r.failure_errors_to_clients).collect();
        f.sort_unstable();
        let mut e: Vec<u64> = all.iter().map(|r| r.errors_to_clients).collect();
        e.sort_unstable();
        println!(
            "median {:.0} ms (max {:.0} ms); median {} of the failure's 5xx to clients (max {}); with the baseline's, median {} (max {})",
            d[d.len() / 2],
            d[d.len() - 1],
            f[f.len() / 2],
            f[f.len() - 1],
            e[e.len() / 2],
            e[e.len() - 1]
        );
    }
    if healthy > 0 {
        // A pause (an analysis without one conclusive measurement, e.g. a starved load
        // generator) is not a rollback: no user was sent back; it is counted on its own.
        let (mut false_rollbacks, mut paused, mut judged, mut errors) = (0, 0, 0, 0);
        for i in 0..healthy {
            let r = rt.block_on(round(&bin, rate, None, baseline));
            judged += r.canary_requests;
            errors += r.canary_errors;
            if r.outcome.starts_with("rolled back") {
                false_rollbacks += 1;
            } else if r.outcome != "promoted" {
                paused += 1;
            }
            println!(
                "{}",
                serde_json::json!({"kind": "healthy", "round": i + 1,
                    "canary_requests": r.canary_requests, "canary_errors": r.canary_errors,
                    "outcome": r.outcome})
            );
        }
        println!();
        println!(
            "healthy canaries at a {baseline} baseline error rate (stable too), 3 s of analysis each"
        );
        println!();
        println!(
            "| rounds | canary responses judged | of which errors | false rollbacks | paused (inconclusive) |"
        );
        println!("|---:|---:|---:|---:|---:|");
        println!("| {healthy} | {judged} | {errors} | {false_rollbacks} | {paused} |");
    }
}
