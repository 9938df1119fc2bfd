//! Smoke tests against an isolated candidate, through the engine and the deploy target
//! with real demo-app processes, the built-in proxy and real users: the plan's
//! `phase: smoke` checks run against each canary instance's own address (`{base}`) before
//! the router is given it. A candidate that answers 500 fails the smoke check, is rolled
//! back and stopped, and not one user request reaches it; a healthy one passes and is
//! promoted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use slipway_engine::{
    DriveOptions, DriveOutcome, Engine, EngineEvent, NewRunRequest, RunState, Store, SystemClock,
};
use slipway_model::plan::{Facts, plan};
use slipway_providers::builtin::BuiltinRouter;
use slipway_providers::deploy::{CompositeTarget, DeployTarget};
use slipway_providers::process::{ProcessTarget, ServiceProcess};
use slipway_providers::smoke_gate::SmokeGate;
use slipway_providers::traffic::Traffic;
use slipway_proxy::{Pools, Proxy, ProxyConfig, Version};
use slipway_rollout::{Instances, Role, RolloutEvent};

use crate::canary::demo_app_bin;

/// The service's start script: version 2.0.0 answers every `/` with 500 while
/// `<dir>/broken` exists (a broken release), any other version is healthy.
fn write_app(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("app.sh");
    std::fs::write(
        &p,
        format!(
            "extra=''\n[ \"$2\" = 2.0.0 ] && [ -e '{d}/broken' ] && extra='--error-rate 1.0'\nexec '{bin}' --port \"$1\" --version \"$2\" --threads 1 $extra\n",
            d = dir.display(),
            bin = demo_app_bin().display()
        ),
    )
    .unwrap();
    p
}

fn spec(app: &std::path::Path) -> String {
    format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: patch }}
services:
  api:
    run: {{ command: \"sh {} {{{{ port }}}} {{{{ version }}}}\", replicas: 2 }}
    readiness: {{ http: /ready }}
checks:
  root: {{ phase: smoke, http: {{ url: \"http://{{base}}/\", status: 200 }}, timeout: 2s }}
  version: {{ phase: smoke, http: {{ url: \"http://{{base}}/version\", contains: \"2.0.0\" }}, timeout: 2s }}
environments:
  demo:
    target: {{ process: {{}} }}
    deployed: {{ api: 1.0.0 }}
    checks: [root, version]
    strategy:
      canary:
        steps:
          - set_weight: 50
          - pause: 1s
",
        app.display()
    )
}

fn processes(dir: &std::path::Path, p: &slipway_model::plan::Plan) -> ProcessTarget {
    let services = p
        .services
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                ServiceProcess {
                    run: s.run.clone().unwrap(),
                    readiness: s.readiness.clone(),
                    env: BTreeMap::new(),
                    workdir: dir.to_path_buf(),
                },
            )
        })
        .collect();
    let mut t = ProcessTarget::new(dir.join("instances"), services);
    t.stop_grace = Duration::from_secs(3);
    t
}

struct Deployed {
    outcome: DriveOutcome,
    journal: Vec<EngineEvent>,
    events: Vec<RolloutEvent>,
    users: slipway_providers::traffic::TrafficStats,
    canary_requests: u64,
    canary_pids: Vec<u32>,
    stable_pids: Vec<u32>,
}

async fn deploy(dir: &std::path::Path, broken: bool) -> Deployed {
    let app = write_app(dir);
    if broken {
        std::fs::write(dir.join("broken"), "").unwrap();
    }
    let loaded = slipway_model::validate::load("smoke.yaml", &spec(&app)).unwrap();
    let p = plan(&loaded.spec, "demo", &Facts::default()).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        slipway_store::SqliteStore::open(&dir.join("s.db"))
            .await
            .unwrap(),
    );
    let stable = processes(dir, &p)
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
    let users = Traffic::start(proxy.local_addr(), "/", 50, 2);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = SmokeGate::from_plan(&p).expect("the plan declares smoke checks");
    let target = Arc::new(CompositeTarget {
        config: None,
        exec: None,
        deploy: Some(Arc::new(
            DeployTarget::new(
                p.clone(),
                processes(dir, &p),
                BTreeMap::from([("api".to_owned(), BuiltinRouter::new(proxy.clone()))]),
                dir.join("diag"),
            )
            .with_events(tx)
            .with_pre_traffic(Arc::new(gate)),
        )),
        migrate: None,
        artifact: None,
    });
    let engine = Engine::new(store.clone(), target, Arc::new(SystemClock));
    let run = engine
        .create_run(NewRunRequest {
            plan: p.clone(),
            author: "alice".into(),
            override_freeze: None,
            workdir: dir.display().to_string(),
        })
        .await
        .unwrap();
    let outcome = engine
        .drive(&run.id, "alice", DriveOptions::default())
        .await
        .unwrap();
    let users = users.stop().await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    let canary_pids = events
        .iter()
        .find_map(|e| match e {
            RolloutEvent::CanaryStarted { instances } => {
                Some(instances.iter().map(|i| i.pid).collect())
            }
            _ => None,
        })
        .unwrap_or_default();
    let journal = store
        .journal(&run.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect();
    Deployed {
        outcome,
        journal,
        events,
        users,
        canary_requests: proxy.snapshot().version(Version::Canary).requests,
        canary_pids,
        stable_pids: stable.iter().map(|i| i.pid).collect(),
    }
}

fn alive(pid: u32) -> bool {
    slipway_providers::process::proc_start_ticks(pid).is_some()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn stop_all(dir: &std::path::Path) {
    let t = ProcessTarget::new(dir.join("instances"), BTreeMap::new());
    let left = t.running("api");
    t.stop_instances(&left.alive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_failing_its_smoke_test_never_gets_traffic_and_the_run_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = deploy(dir.path(), true).await;
    let stable_alive = d.stable_pids.iter().all(|p| alive(*p));
    stop_all(dir.path()).await;
    assert_eq!(d.outcome, DriveOutcome::Finished(RunState::RolledBack));
    // The smoke verdict came first and failed, naming the check and what it measured.
    let smoke = d
        .events
        .iter()
        .find_map(|e| match e {
            RolloutEvent::PreTrafficChecked { passed, detail } => Some((*passed, detail.clone())),
            _ => None,
        })
        .expect("the smoke checks ran");
    assert!(!smoke.0, "{}", smoke.1);
    assert!(
        smoke.1.contains("`root`") && smoke.1.contains("HTTP 500"),
        "{}",
        smoke.1
    );
    // No weight above 0 was ever set, the proxy never sent the candidate a request, and
    // users saw no error.
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, RolloutEvent::WeightSet { weight, .. } if *weight > 0)),
        "{:?}",
        d.events
    );
    assert_eq!(
        d.canary_requests, 0,
        "the proxy routed requests to the candidate"
    );
    assert_eq!(d.users.canary, 0, "{:?}", d.users);
    assert_eq!(d.users.server_errors, 0, "{:?}", d.users);
    assert!(d.users.ok > 0, "{:?}", d.users);
    // The run's failure names the smoke check; the candidate is stopped, stable serves.
    let failed = d
        .journal
        .iter()
        .find_map(|e| match e {
            EngineEvent::StepFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .expect("the deploy step failed");
    assert!(
        failed.contains("smoke check(s) failed against the isolated candidate")
            && failed.contains("`root`"),
        "{failed}"
    );
    assert_eq!(d.canary_pids.len(), 2);
    assert!(
        d.canary_pids.iter().all(|p| !alive(*p)),
        "candidate stopped"
    );
    assert!(stable_alive, "stable keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_passing_its_smoke_test_gets_traffic_and_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let d = deploy(dir.path(), false).await;
    stop_all(dir.path()).await;
    assert_eq!(
        d.outcome,
        DriveOutcome::Finished(RunState::Succeeded),
        "{:?}",
        d.journal
    );
    // Smoke passed before the first weight change.
    let smoke_at = d
        .events
        .iter()
        .position(|e| matches!(e, RolloutEvent::PreTrafficChecked { passed: true, .. }))
        .expect("smoke passed");
    let first_weight = d
        .events
        .iter()
        .position(|e| matches!(e, RolloutEvent::WeightSet { weight, .. } if *weight > 0))
        .expect("the canary got weight");
    assert!(smoke_at < first_weight, "{:?}", d.events);
    // 2 instances x 2 checks.
    let RolloutEvent::PreTrafficChecked { detail, .. } = &d.events[smoke_at] else {
        unreachable!()
    };
    assert!(detail.starts_with("4 smoke check(s) passed"), "{detail}");
    assert!(d.canary_requests > 0 && d.users.canary > 0, "{:?}", d.users);
}
