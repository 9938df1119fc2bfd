//! Which events share a commit (issue 20 part 2): within one service, the transaction that
//! records a step's success also records the next step's start, so a sequential service
//! costs one fsync per step; and both are durable before the next step's effect begins.
//! The store is wrapped to record each `commit` call (one call is one transaction), the
//! target reads the real store's step states at the moment of each effect.

use std::sync::{Arc, Mutex};

use slipway_engine::event::EngineEvent;
use slipway_engine::store::JournalRecord;
use slipway_engine::store_wrap::{Wrap, Wrapped};
use slipway_engine::target::{Applied, StepContext, StepOutput, TargetError};
use slipway_engine::{
    DriveOptions, DriveOutcome, Engine, RunState, StepStatus, Store, StoreError, SystemClock,
};
use slipway_model::plan::{Facts, plan};
use slipway_model::spec::ReleaseSpec;
use slipway_store::AnyStore;

use crate::common::{ApplyOnly, Backend, Effect, Fresh, on_both, req};

type Fut<'a, T> = slipway_engine::BoxFuture<'a, Result<T, StoreError>>;

/// The real store, with the events of every `commit` call kept in call order.
struct Recording {
    inner: AnyStore,
    commits: Mutex<Vec<Vec<EngineEvent>>>,
}

impl Wrap for Recording {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }
    fn commit(&self, records: Vec<JournalRecord>) -> Fut<'_, ()> {
        let events = records.iter().map(|r| r.event.clone()).collect();
        Box::pin(async move {
            self.inner.commit(records).await?;
            self.commits.lock().unwrap().push(events);
            Ok(())
        })
    }
}

/// Per effect: the step applied and the run's (step, status) as durable at that moment.
type Seen = Vec<(String, Vec<(String, StepStatus)>)>;

/// Applies every step without effect, after writing down the store's durable step states
/// as its effect would see them: (step applied, [(step, status)] of the run).
struct Probe {
    store: Arc<Wrapped<Recording>>,
    seen: Mutex<Seen>,
}

impl Effect for Probe {
    fn kind(&self) -> &'static str {
        "probe"
    }
    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
    ) -> slipway_engine::BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let steps = self.store.steps(&ctx.run_id).await.unwrap();
            let states = steps.into_iter().map(|r| (r.step_id, r.status)).collect();
            self.seen
                .lock()
                .unwrap()
                .push((ctx.step_id.clone(), states));
            Ok(Applied::Ran {
                output: StepOutput::default(),
            })
        })
    }
}

fn started(e: &EngineEvent) -> Option<&str> {
    match e {
        EngineEvent::StepStarted { step, .. } => Some(step),
        _ => None,
    }
}

fn succeeded(e: &EngineEvent) -> Option<&str> {
    match e {
        EngineEvent::StepSucceeded { step, .. } => Some(step),
        _ => None,
    }
}

/// Drive a plan of services `svc0`, `svc1`, … of `shape[s]` steps each at `parallelism`;
/// the recorded commits and what each effect saw.
async fn drive(b: Backend, shape: &[usize], parallelism: usize) -> (Vec<Vec<EngineEvent>>, Seen) {
    let mut yaml = String::from(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: c, version: 1.0.0, type: patch }\nservices:\n",
    );
    for (s, steps) in shape.iter().enumerate() {
        yaml.push_str(&format!("  svc{s}:\n    steps:\n"));
        for i in 0..*steps {
            yaml.push_str(&format!("      - {{ name: s{i}, run: 'true' }}\n"));
        }
    }
    yaml.push_str(&format!(
        "environments:\n  dev:\n    target: {{ exec: {{ parallelism: {parallelism} }} }}\n"
    ));
    let spec: ReleaseSpec = serde_saphyr::from_str(&yaml).unwrap();
    let p = plan(&spec, "dev", &Facts::default()).unwrap();
    let fresh = Fresh::new(b);
    let store = Arc::new(Wrapped(Recording {
        inner: fresh.open().await.unwrap(),
        commits: Mutex::new(Vec::new()),
    }));
    let probe = Arc::new(ApplyOnly(Probe {
        store: store.clone(),
        seen: Mutex::new(Vec::new()),
    }));
    let engine = Engine::new(store.clone(), probe.clone(), Arc::new(SystemClock));
    let run = engine.create_run(req(p, "op-a")).await.unwrap();
    let out = engine
        .drive(&run.id, "op-a", DriveOptions::default())
        .await
        .unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    let commits = store.0.commits.lock().unwrap().clone();
    let seen = probe.0.seen.lock().unwrap().clone();
    (commits, seen)
}

/// The plan's step id of step `i` of service `s`.
fn id_of(commits: &[Vec<EngineEvent>], s: usize, i: usize) -> String {
    let want = format!("svc{s}");
    commits
        .iter()
        .flatten()
        .filter_map(started)
        .find(|id| id.contains(&want) && id.ends_with(&format!("s{i}")))
        .unwrap_or_else(|| panic!("no start of step {i} of {want}"))
        .to_owned()
}

async fn a_steps_success_and_the_next_start_share_a_commit(b: Backend) {
    let (commits, seen) = drive(b, &[5], 4).await;
    for i in 1..5 {
        let (prev, next) = (id_of(&commits, 0, i - 1), id_of(&commits, 0, i));
        let shared = commits
            .iter()
            .find(|c| c.iter().any(|e| started(e) == Some(&*next)));
        let shared = shared.unwrap();
        assert!(
            shared.iter().any(|e| succeeded(e) == Some(&*prev)),
            "{prev} succeeded in another commit than {next} started: {commits:#?}"
        );
        // Both were durable before the effect of the next step began.
        let (_, states) = seen.iter().find(|(s, _)| *s == next).unwrap();
        let status = |id: &str| states.iter().find(|(s, _)| s == id).map(|(_, st)| *st);
        assert_eq!(status(&prev), Some(StepStatus::Succeeded), "{states:?}");
        assert_eq!(status(&next), Some(StepStatus::Started), "{states:?}");
    }
    // One commit per step (its start, carrying the previous success), plus the last
    // success: 6 commits carry the 10 step events, not 10.
    let step_commits = commits
        .iter()
        .filter(|c| {
            c.iter()
                .any(|e| started(e).is_some() || succeeded(e).is_some())
        })
        .count();
    assert_eq!(step_commits, 6, "{commits:#?}");
}

async fn parallel_services_each_chain_their_own_steps(b: Backend) {
    let (commits, _) = drive(b, &[3, 3, 3], 3).await;
    for s in 0..3 {
        for i in 1..3 {
            let (prev, next) = (id_of(&commits, s, i - 1), id_of(&commits, s, i));
            let c = commits
                .iter()
                .find(|c| c.iter().any(|e| started(e) == Some(&*next)))
                .unwrap();
            assert!(
                c.iter().any(|e| succeeded(e) == Some(&*prev)),
                "{prev} / {next}: {commits:#?}"
            );
            // Never another service's step in the commit of this start.
            assert!(
                c.iter()
                    .filter_map(|e| started(e).or_else(|| succeeded(e)))
                    .all(|id| id.contains(&format!("svc{s}"))),
                "{c:#?}"
            );
        }
    }
}

/// A service's last success (no next step of its own to carry it) rides with the next
/// service's first start instead of a commit of its own, and at full parallelism a
/// service's success still rides with its own next start. Parallelism 1, `svc0` of one
/// step then `svc1` of two: one commit per step, plus the last success.
async fn a_last_success_rides_with_the_next_services_start(b: Backend) {
    let (commits, seen) = drive(b, &[1, 2], 1).await;
    let (a, b0, b1) = (
        id_of(&commits, 0, 0),
        id_of(&commits, 1, 0),
        id_of(&commits, 1, 1),
    );
    let commit_of = |start: &str| {
        commits
            .iter()
            .find(|c| c.iter().any(|e| started(e) == Some(start)))
            .unwrap()
    };
    for (prev, next) in [(&a, &b0), (&b0, &b1)] {
        assert!(
            commit_of(next)
                .iter()
                .any(|e| succeeded(e) == Some(&**prev)),
            "{prev} succeeded in another commit than {next} started: {commits:#?}"
        );
        // Both durable before the next step's effect began.
        let (_, states) = seen.iter().find(|(s, _)| s == next).unwrap();
        let status = |id: &str| states.iter().find(|(s, _)| s == id).map(|(_, st)| *st);
        assert_eq!(status(prev), Some(StepStatus::Succeeded), "{states:?}");
    }
    let step_commits = commits
        .iter()
        .filter(|c| {
            c.iter()
                .any(|e| started(e).is_some() || succeeded(e).is_some())
        })
        .count();
    assert_eq!(step_commits, 4, "{commits:#?}");
}

on_both!(
    a_steps_success_and_the_next_start_share_a_commit,
    parallel_services_each_chain_their_own_steps,
    a_last_success_rides_with_the_next_services_start
);
