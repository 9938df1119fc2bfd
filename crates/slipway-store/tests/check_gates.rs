//! Declared checks as gates, through the engine over each real store (SQLite, PostgreSQL)
//! with a fake check runner: a failing `pre` check fails the run before any step starts; a failing
//! `post` check rolls back the steps that ran; without a runner checks are journaled as
//! skipped, never as passed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use slipway_engine::event::Notice;
use slipway_engine::noop::NoopTarget;
use slipway_engine::{
    BoxFuture, CheckRunner, CheckVerdict, DriveOptions, DriveOutcome, Engine, EngineEvent,
    NewRunRequest, RunState, StepStatus, SystemClock,
};
use slipway_model::plan::{Facts, Plan, plan};
use slipway_model::spec::{Check, ReleaseSpec};

use crate::common::{Backend, Fresh, on_both};

/// Passes or fails each check by name, and remembers the order checks were asked in.
struct FakeRunner {
    verdicts: BTreeMap<&'static str, bool>,
    asked: Mutex<Vec<String>>,
}

impl CheckRunner for FakeRunner {
    fn run<'a>(
        &'a self,
        _plan: &'a Plan,
        name: &'a str,
        check: &'a Check,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(name.to_owned());
            let passed = *self
                .verdicts
                .get(name)
                .ok_or_else(|| format!("no verdict for {name}"))?;
            Ok(CheckVerdict {
                passed,
                measured: if passed { "open" } else { "refused" }.into(),
                expected: "a TCP connection".into(),
                detail: check.tcp.clone().unwrap_or_default(),
            })
        })
    }
}

fn make_plan() -> Plan {
    let yaml = "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: c, version: 1.0.0, type: patch }\n\
         services:\n  app:\n    steps:\n      - { name: one, run: 'true', undo: 'true' }\n      - { name: two, run: 'true', undo: 'true' }\n\
         checks:\n  db: { phase: pre, tcp: '127.0.0.1:1' }\n  cache: { phase: pre, tcp: '127.0.0.1:2' }\n  health: { phase: post, tcp: '127.0.0.1:3' }\n  ping: { phase: smoke, tcp: '127.0.0.1:4' }\n\
         environments:\n  prod:\n    target: { exec: {} }\n    checks: [db, cache, health, ping]\n";
    let spec: ReleaseSpec = serde_saphyr::from_str(yaml).unwrap();
    plan(&spec, "prod", &Facts::default()).unwrap()
}

async fn run_with(
    b: Backend,
    runner: Option<Arc<FakeRunner>>,
) -> (Fresh, Engine, String, DriveOutcome) {
    let dir = Fresh::new(b);
    let store = dir.open().await.unwrap();
    let mut engine = Engine::new(Arc::new(store), Arc::new(NoopTarget), Arc::new(SystemClock));
    if let Some(r) = runner {
        engine = engine.with_checks(r);
    }
    let run = engine
        .create_run(NewRunRequest {
            plan: make_plan(),
            author: "op-a".into(),
            override_freeze: None,
            workdir: "/tmp".into(),
        })
        .await
        .unwrap();
    let out = engine
        .drive(&run.id, "op-a", DriveOptions::default())
        .await
        .unwrap();
    (dir, engine, run.id, out)
}

async fn journal(engine: &Engine, run: &str) -> Vec<Notice> {
    engine.store().journal(run, 0).await.unwrap()
}

fn runner(verdicts: &[(&'static str, bool)]) -> Arc<FakeRunner> {
    Arc::new(FakeRunner {
        verdicts: verdicts.iter().copied().collect(),
        asked: Mutex::new(Vec::new()),
    })
}

async fn a_failing_pre_check_fails_the_run_before_any_step(b: Backend) {
    let r = runner(&[
        ("db", false),
        ("cache", true),
        ("health", true),
        ("ping", true),
    ]);
    let (_d, engine, run, out) = run_with(b, Some(r.clone())).await;
    assert_eq!(out, DriveOutcome::Finished(RunState::Failed));
    assert!(engine.store().steps(&run).await.unwrap().is_empty());
    // Every pre check ran (one report with all problems), the post check never did.
    assert_eq!(*r.asked.lock().unwrap(), vec!["cache", "db"]);
    let j = journal(&engine, &run).await;
    assert!(j.iter().any(|n| matches!(
        &n.event,
        EngineEvent::CheckRan { name, passed: false, measured, .. } if name == "db" && measured == "refused"
    )));
    let reason = j
        .iter()
        .find_map(|n| match &n.event {
            EngineEvent::StateChanged {
                to: RunState::Failed,
                reason,
                ..
            } => reason.clone(),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.contains("pre check(s) failed") && reason.contains("`db`"),
        "{reason}"
    );
    assert!(
        !j.iter()
            .any(|n| matches!(n.event, EngineEvent::StepStarted { .. }))
    );
}

async fn a_failing_post_check_rolls_back_the_steps_that_ran(b: Backend) {
    let r = runner(&[
        ("db", true),
        ("cache", true),
        ("health", false),
        ("ping", true),
    ]);
    let (_d, engine, run, out) = run_with(b, Some(r.clone())).await;
    assert_eq!(out, DriveOutcome::Finished(RunState::RolledBack));
    let steps = engine.store().steps(&run).await.unwrap();
    assert_eq!(steps.len(), 2);
    assert!(
        steps.iter().all(|s| s.status == StepStatus::Undone),
        "{steps:?}"
    );
    let j = journal(&engine, &run).await;
    let pos = |f: &dyn Fn(&EngineEvent) -> bool| j.iter().position(|n| f(&n.event)).unwrap();
    let post = pos(
        &|e| matches!(e, EngineEvent::CheckRan { name, passed: false, .. } if name == "health"),
    );
    let last_step = j
        .iter()
        .rposition(|n| matches!(n.event, EngineEvent::StepSucceeded { .. }))
        .unwrap();
    let first_undo = pos(&|e| matches!(e, EngineEvent::UndoStarted { .. }));
    assert!(
        last_step < post && post < first_undo,
        "post check after the steps, before the undo"
    );
}

async fn passing_checks_let_the_run_succeed_and_are_journaled(b: Backend) {
    let r = runner(&[
        ("db", true),
        ("cache", true),
        ("health", true),
        ("ping", true),
    ]);
    let (_d, engine, run, out) = run_with(b, Some(r)).await;
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    let j = journal(&engine, &run).await;
    let ran: Vec<&str> = j
        .iter()
        .filter_map(|n| match &n.event {
            EngineEvent::CheckRan {
                name, passed: true, ..
            } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // pre in name order, then smoke after the (only) wave, then post.
    assert_eq!(ran, vec!["cache", "db", "ping", "health"]);
}

async fn without_a_runner_checks_are_journaled_as_skipped_never_as_passed(b: Backend) {
    let (_d, engine, run, out) = run_with(b, None).await;
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    let j = journal(&engine, &run).await;
    let skipped = j
        .iter()
        .filter(|n| matches!(n.event, EngineEvent::CheckSkipped { .. }))
        .count();
    assert_eq!(skipped, 4);
    assert!(!j.iter().any(|n| matches!(
        &n.event,
        EngineEvent::CheckRan { .. } | EngineEvent::GatePassed { .. }
    )));
    let entries = engine.store().audit_entries().await.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.action == "check_skipped" && e.outcome == "skipped")
    );
}

on_both!(
    a_failing_pre_check_fails_the_run_before_any_step,
    a_failing_post_check_rolls_back_the_steps_that_ran,
    passing_checks_let_the_run_succeed_and_are_journaled,
    without_a_runner_checks_are_journaled_as_skipped_never_as_passed
);
