//! Detection benchmark (issue 4a): 1,000 req/s through the built-in proxy, a canary at
//! 10% that starts answering every request with 500 at time T. Measures the time from T
//! until the canary receives no more traffic, and how many of its 5xx reached clients.
//!
//! Usage: `cargo run --release -p slipway-providers --example detection -- [ROUNDS] [RATE]`
//! (needs the demo-app binary: `cargo build --release -p demo-app`).
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
    errors_to_clients: u64,
    canary_requests_after_stop: u64,
}

async fn round(bin: &str, rate: u32, fail_after: u64) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let stable_t = target(dir.path(), bin, "");
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
    let canary_t = target(dir.path(), bin, &format!("--fail-after {fail_after}"));
    let templates = BTreeMap::from([(
        "fast".to_owned(),
        AnalysisTemplate {
            interval: Some("100ms".into()),
            min_samples: Some(5),
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
                duration: Some("60s".into()),
            }),
            ..CanaryStep::default()
        },
    ];
    // Watch the proxy: when does the canary's first 5xx happen, and when does the canary
    // stop receiving requests?
    let watch = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut t: Option<Instant> = None;
            loop {
                let snap = proxy.snapshot();
                let c = snap.version(Version::Canary);
                if t.is_none() && c.errors() > 0 {
                    t = Some(Instant::now());
                }
                if let Some(t0) = t
                    && proxy.weight() == 0
                    && proxy.in_flight(Version::Canary) == 0
                {
                    let requests_at_stop = c.requests;
                    return (t0, Instant::now(), requests_at_stop);
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
        },
        &world,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let (t0, stopped, requests_at_stop) = watch.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = proxy.snapshot().version(Version::Canary).requests - requests_at_stop;
    let stats = traffic.stop().await;
    stable_t.stop_instances(&stable).await;
    Round {
        detect_ms: stopped.duration_since(t0).as_secs_f64() * 1000.0,
        errors_to_clients: stats.canary_errors,
        canary_requests_after_stop: after,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let rate: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
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
        "rate {rate} req/s, canary at 10%, analysis every 100 ms, rollback on the first failed measurement"
    );
    println!(
        "| round | T → canary gets no traffic | canary 5xx that reached clients | canary requests after stop |"
    );
    println!("|---:|---:|---:|---:|");
    let mut all = Vec::new();
    for i in 0..rounds {
        // ~2 s of healthy canary traffic before it breaks (50 req/s per canary instance),
        // shifted by a different odd amount each round so T falls at a different phase of
        // the 100 ms analysis interval (an aligned T would flatter the result).
        let fail_after = u64::from(rate) / 10 + 3 + 7 * i as u64;
        let r = rt.block_on(round(&bin, rate, fail_after));
        println!(
            "| {} | {:.0} ms | {} | {} |",
            i + 1,
            r.detect_ms,
            r.errors_to_clients,
            r.canary_requests_after_stop
        );
        all.push(r);
    }
    let mut d: Vec<f64> = all.iter().map(|r| r.detect_ms).collect();
    d.sort_by(f64::total_cmp);
    let mut e: Vec<u64> = all.iter().map(|r| r.errors_to_clients).collect();
    e.sort_unstable();
    println!(
        "median {:.0} ms (max {:.0} ms); median {} errors to clients (max {})",
        d[d.len() / 2],
        d[d.len() - 1],
        e[e.len() / 2],
        e[e.len() - 1]
    );
}
