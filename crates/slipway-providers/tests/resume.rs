//! The orchestrator dies mid-canary and a new one resumes the run: the interrupted step is
//! observed first, the canary continues at its recorded step and weight (Argo Rollouts'
//! behaviour) with the same instances rather than a duplicate or a fresh start from 0 %,
//! and the run ends with exactly the replicas it asked for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_engine::{
    DriveOptions, DriveOutcome, Engine, EngineEvent, NewRunRequest, RunState, Store, SystemClock,
};
use slipway_model::plan::{Facts, plan};
use slipway_providers::builtin::BuiltinRouter;
use slipway_providers::deploy::{CompositeTarget, DeployTarget};
use slipway_providers::process::{ProcessTarget, ServiceProcess};
use slipway_providers::traffic::Traffic;
use slipway_proxy::{Pools, Proxy, ProxyConfig};
use slipway_rollout::{Instances, Role, RolloutEvent};

use crate::canary::demo_app_bin;

fn spec() -> String {
    format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: patch }}
services:
  api:
    run: {{ command: \"{} --port {{{{ port }}}} --version {{{{ version }}}} --threads 1\", replicas: 2 }}
    readiness: {{ http: /ready }}
environments:
  demo:
    target: {{ process: {{}} }}
    deployed: {{ api: 1.0.0 }}
    strategy:
      canary:
        steps:
          - set_weight: 20
          - analysis: {{ template: t, duration: 2s }}
analysis_templates:
  t:
    interval: 250ms
    min_samples: 5
    inconclusive_limit: 20
    metrics: [ {{ name: error-rate, max: 0.05 }} ]
",
        demo_app_bin().display()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_killed_mid_canary_continues_at_its_recorded_step_and_weight() {
    let dir = tempfile::tempdir().unwrap();
    // The instances run in `dir`: killed however the test ends (dropped before `dir`).
    let _instances = slipway_testkit::SweepCwd::new(dir.path());
    let loaded = slipway_model::validate::load("resume.yaml", &spec()).unwrap();
    let p = plan(&loaded.spec, "demo", &Facts::default()).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        slipway_store::SqliteStore::open(&dir.path().join("s.db"))
            .await
            .unwrap(),
    );

    // Production as it was: api 1.0.0 behind its proxy, with users.
    let stable = processes(dir.path(), &p)
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
    let traffic = Traffic::start(proxy.local_addr(), "/", 300, 8);
    let routers = || BTreeMap::from([("api".to_owned(), BuiltinRouter::new(proxy.clone()))]);

    // First orchestrator: dies as soon as the canary is up and taking traffic.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let target = Arc::new(CompositeTarget {
        exec: None,
        config: None,
        deploy: Some(Arc::new(
            DeployTarget::new(
                p.clone(),
                processes(dir.path(), &p),
                routers(),
                dir.path().join("diag"),
            )
            .with_events(tx),
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
            workdir: dir.path().display().to_string(),
        })
        .await
        .unwrap();
    let id = run.id.clone();
    let driving =
        tokio::spawn(async move { engine.drive(&id, "alice", DriveOptions::default()).await });
    let mut first_canary = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(ev)) => match ev.event {
                RolloutEvent::CanaryStarted { instances } => first_canary = instances,
                RolloutEvent::WeightSet { weight: 20, .. } => break,
                _ => {}
            },
            _ => continue,
        }
    }
    assert_eq!(first_canary.len(), 2, "the canary never started");
    // It dies once the weight is recorded (the step's progress is journaled by the step's
    // own task, which dies with the driver: a weight set and not yet journaled is lost
    // with it, as with a SIGKILL). The analysis after it lasts 2 s, so it is still at
    // this step when killed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.journal(&run.id, 0).await.unwrap().iter().any(|r| {
        matches!(&r.event, EngineEvent::StepProgress { detail, .. } if detail["event"] == "weight_set" && detail["weight"] == 20)
    }) {
        assert!(Instant::now() < deadline, "the weight was never journaled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    driving.abort();
    let _ = driving.await;
    let survey = processes(dir.path(), &p).running("api");
    assert_eq!(
        survey.alive.len(),
        4,
        "stable and canary both survive the orchestrator"
    );

    // Second orchestrator, fresh objects over the same store and instance directory.
    let target = Arc::new(CompositeTarget {
        exec: None,
        config: None,
        deploy: Some(Arc::new(DeployTarget::new(
            p.clone(),
            processes(dir.path(), &p),
            routers(),
            dir.path().join("diag"),
        ))),
        migrate: None,
        artifact: None,
    });
    let engine = Engine::new(store.clone(), target, Arc::new(SystemClock));
    let outcome = engine
        .drive(&run.id, "alice", DriveOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome, DriveOutcome::Finished(RunState::Succeeded));

    // The interrupted step was observed before anything was re-applied.
    let journal = store.journal(&run.id, 0).await.unwrap();
    assert!(
        journal.iter().any(
            |r| matches!(&r.event, EngineEvent::StepObserved { step, .. } if step == "api/deploy")
        ),
        "no observation of the interrupted step"
    );
    // The canary continued where it was: at its step, at 20 %, with its own instances
    // (never a second canary, never back to 0 %), and those were promoted.
    let progress: Vec<&serde_json::Value> = journal
        .iter()
        .filter_map(|r| match &r.event {
            EngineEvent::StepProgress { detail, .. } => Some(detail),
            _ => None,
        })
        .collect();
    let resumed = progress
        .iter()
        .find(|d| d["event"] == "canary_resumed")
        .expect("the canary was continued");
    assert_eq!(resumed["weight"], 20, "{resumed}");
    assert_eq!(
        progress
            .iter()
            .filter(|d| d["event"] == "canary_started")
            .count(),
        1,
        "one canary for the whole run"
    );
    let at = progress
        .iter()
        .position(|d| d["event"] == "canary_resumed")
        .unwrap();
    assert!(
        !progress[at..]
            .iter()
            .any(|d| d["event"] == "weight_set" && d["weight"].as_u64() < Some(20)),
        "the weight never went back below where it was"
    );
    let after = processes(dir.path(), &p).running("api");
    assert_eq!(after.alive.len(), 2, "{:?}", after.alive);
    assert!(after.alive.iter().all(|i| i.version == "2.0.0"));
    let mut serving: Vec<u32> = after.alive.iter().map(|a| a.pid).collect();
    let mut first: Vec<u32> = first_canary.iter().map(|i| i.pid).collect();
    serving.sort_unstable();
    first.sort_unstable();
    assert_eq!(serving, first, "the first canary itself was promoted");
    let stats = traffic.stop().await;
    assert!(stats.ok > 0);
    let t = processes(dir.path(), &p);
    t.stop_instances(&after.alive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_canary_pauses_the_run_and_a_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    // The instances run in `dir`: killed however the test ends (dropped before `dir`).
    let _instances = slipway_testkit::SweepCwd::new(dir.path());
    let loaded = slipway_model::validate::load("resume.yaml", &spec()).unwrap();
    let p = plan(&loaded.spec, "demo", &Facts::default()).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        slipway_store::SqliteStore::open(&dir.path().join("s.db"))
            .await
            .unwrap(),
    );
    let stable = processes(dir.path(), &p)
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
    let engine = || {
        let target = Arc::new(CompositeTarget {
            exec: None,
            config: None,
            deploy: Some(Arc::new(DeployTarget::new(
                p.clone(),
                processes(dir.path(), &p),
                BTreeMap::from([("api".to_owned(), BuiltinRouter::new(proxy.clone()))]),
                dir.path().join("diag"),
            ))),
            migrate: None,
            artifact: None,
        });
        Engine::new(store.clone(), target, Arc::new(SystemClock))
    };
    // A trickle of users: the 20% canary never gets min_samples in a window.
    let trickle = Traffic::start(proxy.local_addr(), "/", 4, 1);
    let run = engine()
        .create_run(NewRunRequest {
            plan: p.clone(),
            author: "alice".into(),
            override_freeze: None,
            workdir: dir.path().display().to_string(),
        })
        .await
        .unwrap();
    let outcome = engine()
        .drive(&run.id, "alice", DriveOptions::default())
        .await
        .unwrap();
    let _ = trickle.stop().await;
    assert_eq!(
        outcome,
        DriveOutcome::Paused,
        "inconclusive must pause, not roll back"
    );
    let r = store.run(&run.id).await.unwrap().unwrap();
    assert_eq!(r.state, RunState::Paused);
    let both = processes(dir.path(), &p).running("api");
    assert_eq!(
        both.alive.len(),
        4,
        "stable and canary both keep running while paused"
    );

    // Real traffic arrives; a human resumes: the step is observed, a fresh canary judged.
    let traffic = Traffic::start(proxy.local_addr(), "/", 300, 8);
    let outcome = engine()
        .drive(&run.id, "alice", DriveOptions::default())
        .await
        .unwrap();
    let _ = traffic.stop().await;
    assert_eq!(outcome, DriveOutcome::Finished(RunState::Succeeded));
    let after = processes(dir.path(), &p).running("api");
    assert_eq!(after.alive.len(), 2, "{:?}", after.alive);
    assert!(after.alive.iter().all(|i| i.version == "2.0.0"));
    let journal = store.journal(&run.id, 0).await.unwrap();
    assert!(journal.iter().any(|r| matches!(&r.event,
        EngineEvent::StateChanged { to: RunState::Paused, reason: Some(why), .. } if why.contains("insufficient data"))));
    processes(dir.path(), &p).stop_instances(&after.alive).await;
}
