//! The engine's rollback over each real store, with a scripted target: steps still
//! `started` are observed and undone when they completed, and undos interrupted by a crash
//! (`undo_started`) are observed before they run again — never run twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use slipway_engine::event::{EngineEvent, RecoveryDecision, RunState, StepStatus};
use slipway_engine::store::Store;
use slipway_engine::{
    Applied, BoxFuture, Engine, FakeClock, NewRunRequest, Observation, StepContext, StepOutput,
    Target, TargetError,
};
use slipway_model::plan::{Facts, Plan, StepAction, plan};
use slipway_model::spec::ReleaseSpec;

use crate::common::{Backend, Fresh, at, on_both};

/// What the scripted target answers per step id.
#[derive(Clone, Copy)]
enum Answer {
    Done,
    NotDone,
    Unknown,
}

#[derive(Default)]
struct Scripted {
    observe: BTreeMap<String, Answer>,
    observe_undo: BTreeMap<String, Answer>,
    /// Undos run, in order.
    undone: Mutex<Vec<String>>,
}

fn answer(a: Option<&Answer>) -> Result<Observation, TargetError> {
    match a {
        Some(Answer::Done) => Ok(Observation::Done {
            evidence: "scripted: done".into(),
        }),
        Some(Answer::NotDone) | None => Ok(Observation::NotDone {
            evidence: "scripted: not done".into(),
        }),
        Some(Answer::Unknown) => Err(TargetError::Io("scripted: cannot tell".into())),
    }
}

impl Target for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn apply<'a>(
        &'a self,
        _: &'a StepContext,
        _: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async { panic!("a rollback applies nothing") })
    }
    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        _: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move { answer(self.observe.get(&ctx.step_id)) })
    }
    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        _: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async move {
            self.undone.lock().unwrap().push(ctx.step_id.clone());
            Ok(Some(StepOutput::default()))
        })
    }
    fn observe_undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        _: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move { answer(self.observe_undo.get(&ctx.step_id)) })
    }
}

fn make_plan() -> Plan {
    let yaml = "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: rb, version: 1.0.0, type: patch }\n\
         services:\n  app:\n    steps:\n      - { name: one, run: 'true', undo: 'true' }\n      - { name: two, run: 'true', undo: 'true' }\n      - { name: three, run: 'true', undo: 'true' }\n\
         environments:\n  prod:\n    target: { exec: {} }\n";
    let spec: ReleaseSpec = serde_saphyr::from_str(yaml).unwrap();
    plan(&spec, "prod", &Facts::default()).unwrap()
}

/// A run whose steps stand as `setup` says (the journal a crash left), rolled back by
/// hand through an engine over `target`; returns the store, the run id and the outcome.
async fn rolled_back(
    b: Backend,
    target: Arc<Scripted>,
    setup: &[(&str, &[&str])],
) -> (Fresh, Arc<slipway_store::AnyStore>, String, RunState) {
    let fresh = Fresh::new(b);
    let store = Arc::new(fresh.open().await.unwrap());
    let clock = Arc::new(FakeClock::new(at(0)));
    let engine = Engine::new(store.clone(), target, clock);
    let p = make_plan();
    let run = engine
        .create_run(NewRunRequest {
            plan: p.clone(),
            author: "op-a".into(),
            override_freeze: None,
            workdir: "/tmp".into(),
        })
        .await
        .unwrap();
    let key = |id: &str| {
        p.steps
            .iter()
            .find(|s| s.id == id)
            .unwrap()
            .idempotency_key
            .clone()
    };
    let mut events = vec![EngineEvent::StateChanged {
        from: RunState::Pending,
        to: RunState::Running,
        reason: None,
    }];
    for (step, what) in setup {
        for w in *what {
            let (step, key) = ((*step).to_owned(), key(step));
            events.push(match *w {
                "started" => EngineEvent::StepStarted {
                    step,
                    key,
                    attempt: 1,
                },
                "succeeded" => EngineEvent::StepSucceeded {
                    step,
                    key,
                    completion: slipway_engine::event::StepCompletion::Applied,
                    output: None,
                },
                "undo_started" => EngineEvent::UndoStarted { step, key },
                other => panic!("{other}"),
            });
        }
    }
    store
        .commit(
            events
                .into_iter()
                .map(|event| slipway_engine::store::JournalRecord {
                    run_id: run.id.clone(),
                    digest: run.digest.clone(),
                    at: at(1),
                    actor: "op-a".into(),
                    event,
                })
                .collect(),
        )
        .await
        .unwrap();
    let end = engine
        .rollback_run(&run.id, "op-a", "the test says so")
        .await
        .unwrap();
    (fresh, store, run.id, end)
}

async fn statuses(store: &dyn Store, run: &str) -> BTreeMap<String, StepStatus> {
    store
        .steps(run)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.step_id, s.status))
        .collect()
}

async fn decisions(store: &dyn Store, run: &str) -> Vec<(String, RecoveryDecision)> {
    store
        .journal(run, 0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| match n.event {
            EngineEvent::StepObserved { step, decision, .. } => Some((step, decision)),
            _ => None,
        })
        .collect()
}

/// `app/two` was in flight when the run stopped; the target shows it completed: it is
/// journaled succeeded (observed) and undone with the rest, before the run is rolled back.
async fn a_step_in_flight_that_completed_is_undone(b: Backend) {
    let target = Arc::new(Scripted {
        observe: BTreeMap::from([("app/two".into(), Answer::Done)]),
        ..Scripted::default()
    });
    let (_f, store, run, end) = rolled_back(
        b,
        target.clone(),
        &[
            ("app/one", &["started", "succeeded"]),
            ("app/two", &["started"]),
        ],
    )
    .await;
    assert_eq!(end, RunState::RolledBack);
    assert_eq!(*target.undone.lock().unwrap(), ["app/two", "app/one"]);
    let st = statuses(store.as_ref(), &run).await;
    assert_eq!(st["app/one"], StepStatus::Undone);
    assert_eq!(st["app/two"], StepStatus::Undone);
    assert!(!st.contains_key("app/three"));
    assert_eq!(
        decisions(store.as_ref(), &run).await,
        [("app/two".to_owned(), RecoveryDecision::Complete)]
    );
}

/// The step in flight did not complete: it is recorded failed (abandoned), never applied
/// again nor undone; nothing is left `started`.
async fn a_step_in_flight_that_did_not_complete_is_abandoned(b: Backend) {
    let target = Arc::new(Scripted::default());
    let (_f, store, run, end) = rolled_back(
        b,
        target.clone(),
        &[
            ("app/one", &["started", "succeeded"]),
            ("app/two", &["started"]),
        ],
    )
    .await;
    assert_eq!(end, RunState::RolledBack);
    assert_eq!(*target.undone.lock().unwrap(), ["app/one"]);
    let st = statuses(store.as_ref(), &run).await;
    assert_eq!(st["app/two"], StepStatus::Failed);
    assert_eq!(
        decisions(store.as_ref(), &run).await,
        [("app/two".to_owned(), RecoveryDecision::Abandon)]
    );
}

/// A step in flight whose outcome nobody can tell: the rollback does not call the run
/// rolled back (it ends failed, naming the step) and undoes the rest.
async fn a_step_in_flight_that_cannot_be_observed_fails_the_rollback(b: Backend) {
    let target = Arc::new(Scripted {
        observe: BTreeMap::from([("app/two".into(), Answer::Unknown)]),
        ..Scripted::default()
    });
    let (_f, store, run, end) = rolled_back(
        b,
        target.clone(),
        &[
            ("app/one", &["started", "succeeded"]),
            ("app/two", &["started"]),
        ],
    )
    .await;
    assert_eq!(end, RunState::Failed);
    assert_eq!(*target.undone.lock().unwrap(), ["app/one"]);
    let st = statuses(store.as_ref(), &run).await;
    assert_eq!(st["app/two"], StepStatus::Failed);
    let reason = store
        .journal(&run, 0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| match n.event {
            EngineEvent::StateChanged {
                to: RunState::Failed,
                reason,
                ..
            } => reason,
            _ => None,
        })
        .next_back()
        .unwrap();
    assert!(
        reason.contains("app/two") && reason.contains("cannot tell"),
        "{reason}"
    );
}

/// Undos interrupted by a crash: the one the target shows complete is journaled undone
/// without running again; the one not complete runs again (once), with no second
/// `undo_started`; one nobody can tell about is recorded failed, not run.
async fn interrupted_undos_are_observed_before_they_run_again(b: Backend) {
    let target = Arc::new(Scripted {
        observe_undo: BTreeMap::from([
            ("app/three".into(), Answer::Done),
            ("app/two".into(), Answer::NotDone),
            ("app/one".into(), Answer::Unknown),
        ]),
        ..Scripted::default()
    });
    let all: &[&str] = &["started", "succeeded", "undo_started"];
    let (_f, store, run, end) = rolled_back(
        b,
        target.clone(),
        &[("app/one", all), ("app/two", all), ("app/three", all)],
    )
    .await;
    assert_eq!(*target.undone.lock().unwrap(), ["app/two"]);
    let st = statuses(store.as_ref(), &run).await;
    assert_eq!(st["app/three"], StepStatus::Undone);
    assert_eq!(st["app/two"], StepStatus::Undone);
    assert_eq!(st["app/one"], StepStatus::UndoFailed);
    assert_eq!(end, RunState::Failed);
    assert_eq!(
        decisions(store.as_ref(), &run).await,
        [
            ("app/three".to_owned(), RecoveryDecision::UndoComplete),
            ("app/two".to_owned(), RecoveryDecision::UndoAgain),
        ]
    );
    let undo_starts = store
        .journal(&run, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| matches!(n.event, EngineEvent::UndoStarted { .. }))
        .count();
    assert_eq!(undo_starts, 3, "only the three from before the crash");
}

on_both!(
    a_step_in_flight_that_completed_is_undone,
    a_step_in_flight_that_did_not_complete_is_abandoned,
    a_step_in_flight_that_cannot_be_observed_fails_the_rollback,
    interrupted_undos_are_observed_before_they_run_again
);
