//! The engine over each real store (SQLite, PostgreSQL), with a fake clock: gates
//! (windows, freezes, approvals bound to the digest) and durable progress.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use slipway_engine::noop::NoopTarget;
use slipway_engine::{DriveOptions, DriveOutcome, Engine, EngineError, FakeClock, RunState};
use slipway_model::plan::{Facts, Plan, plan};
use slipway_model::spec::ReleaseSpec;

use crate::common::{Backend, Fresh, on_both, on_disk, req};

fn make_plan(env_extra: &str, version: &str) -> Plan {
    let yaml = format!(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: {{ name: g, version: {version}, type: patch }}\n\
         services:\n  app:\n    steps:\n      - {{ name: one, run: 'true' }}\n      - {{ name: two, run: 'true' }}\n\
         environments:\n  prod:\n    target: {{ exec: {{}} }}\n{env_extra}"
    );
    let spec: ReleaseSpec = serde_saphyr::from_str(&yaml).unwrap();
    plan(&spec, "prod", &Facts::default()).unwrap()
}

async fn setup(b: Backend, now: &str) -> (Fresh, Engine, Arc<FakeClock>) {
    let dir = Fresh::new(b);
    let store = dir.open().await.unwrap();
    let clock = Arc::new(FakeClock::new(now.parse::<Timestamp>().unwrap()));
    let engine = Engine::new(Arc::new(store), Arc::new(NoopTarget), clock.clone())
        .with_poll(Duration::from_secs(60));
    (dir, engine, clock)
}

const NO_WAIT: DriveOptions = DriveOptions { no_wait: true };

async fn a_future_window_blocks_with_no_wait_and_is_waited_for_otherwise(b: Backend) {
    // Window opens daily at 09:00 UTC for 1h; it is 07:30.
    let p = make_plan(
        "    windows: [ { cron: '0 9 * * *', timezone: UTC, duration: 1h } ]\n",
        "1.0.0",
    );
    let (_d, engine, clock) = setup(b, "2026-03-02T07:30:00Z").await;
    let run = engine.create_run(req(p, "op-a")).await.unwrap();
    let out = engine.drive(&run.id, "op-a", NO_WAIT).await.unwrap();
    let DriveOutcome::Blocked { gate, opens_at, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(gate, "windows");
    assert_eq!(opens_at.unwrap().to_string(), "2026-03-02T09:00:00Z");
    let stored = engine.store().run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::WaitingForWindow);
    // Waiting: the fake clock advances as the engine sleeps, until the window opens.
    let out = engine
        .drive(&run.id, "op-a", DriveOptions::default())
        .await
        .unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    let now = slipway_engine::Clock::now(clock.as_ref());
    assert!(now >= "2026-03-02T09:00:00Z".parse::<Timestamp>().unwrap());
    assert!(now < "2026-03-02T10:00:00Z".parse::<Timestamp>().unwrap());
}

async fn inside_an_open_window_the_run_proceeds(b: Backend) {
    let p = make_plan(
        "    windows: [ { cron: '0 9 * * *', timezone: Europe/Berlin, duration: 6h } ]\n",
        "1.0.0",
    );
    let (_d, engine, _) = setup(b, "2026-03-02T10:00:00Z").await;
    let run = engine.create_run(req(p, "op-a")).await.unwrap();
    let out = engine.drive(&run.id, "op-a", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
}

async fn a_freeze_refuses_unless_overridden_and_then_needs_a_second_person(b: Backend) {
    let p = make_plan(
        "    freezes: [ { from: 2026-12-20, to: 2027-01-04, reason: holiday freeze } ]\n",
        "1.0.0",
    );
    let (_d, engine, _) = setup(b, "2026-12-24T12:00:00Z").await;
    let err = engine.create_run(req(p.clone(), "op-a")).await.unwrap_err();
    assert!(matches!(err, EngineError::Frozen { .. }), "{err}");
    assert!(err.to_string().contains("--override-freeze"), "{err}");
    let mut r = req(p, "op-a");
    r.override_freeze = Some("payment outage fix".into());
    let run = engine.create_run(r).await.unwrap();
    let out = engine.drive(&run.id, "op-a", NO_WAIT).await.unwrap();
    assert!(
        matches!(out, DriveOutcome::Blocked { ref gate, .. } if gate == "approvals"),
        "{out:?}"
    );
    let err = engine
        .approve(&run.id, "op-a", vec![], None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::SelfApproval { .. }), "{err}");
    engine.approve(&run.id, "op-b", vec![], None).await.unwrap();
    let out = engine.drive(&run.id, "op-a", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    // The refusal and the override are both in the audit chain.
    let entries = engine.store().audit_entries().await.unwrap();
    assert!(entries.iter().any(|e| e.action == "deploy_refused"));
    assert!(
        entries
            .iter()
            .any(|e| e.detail.contains("payment outage fix"))
    );
}

async fn approvals_count_distinct_non_authors_of_the_same_digest(b: Backend) {
    let gates = "    approvals: { required: 2, four_eyes: true }\n";
    let old = make_plan(gates, "1.0.0");
    let new = make_plan(gates, "1.0.1");
    assert_ne!(old.digest, new.digest);
    let (_d, engine, _) = setup(b, "2026-03-02T10:00:00Z").await;
    let run = engine.create_run(req(new, "op-author")).await.unwrap();
    // The author cannot approve.
    assert!(matches!(
        engine.approve(&run.id, "op-author", vec![], None).await,
        Err(EngineError::SelfApproval { .. })
    ));
    // An approval of the old plan's digest is refused.
    let err = engine
        .approve(&run.id, "op-b", vec![], Some(&old.digest))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::DigestMismatch { .. }), "{err}");
    // One approver, twice, is still one.
    engine
        .approve(&run.id, "op-b", vec![], Some(&run.digest))
        .await
        .unwrap();
    engine.approve(&run.id, "op-b", vec![], None).await.unwrap();
    let out = engine.drive(&run.id, "op-author", NO_WAIT).await.unwrap();
    let DriveOutcome::Blocked { gate, detail, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(gate, "approvals");
    assert!(detail.contains("1 of 2"), "{detail}");
    // The second distinct approver lets it through.
    engine.approve(&run.id, "op-c", vec![], None).await.unwrap();
    let out = engine.drive(&run.id, "op-author", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
}

async fn an_approval_of_another_run_of_an_older_plan_does_not_count(b: Backend) {
    let gates = "    approvals: { required: 1 }\n";
    let (_d, engine, _) = setup(b, "2026-03-02T10:00:00Z").await;
    let old_run = engine
        .create_run(req(make_plan(gates, "1.0.0"), "op-a"))
        .await
        .unwrap();
    engine
        .approve(&old_run.id, "op-b", vec![], None)
        .await
        .unwrap();
    let new_run = engine
        .create_run(req(make_plan(gates, "1.0.1"), "op-a"))
        .await
        .unwrap();
    let out = engine.drive(&new_run.id, "op-a", NO_WAIT).await.unwrap();
    assert!(matches!(out, DriveOutcome::Blocked { .. }), "{out:?}");
}

async fn deploying_the_same_plan_again_continues_the_unfinished_run(b: Backend) {
    let gates = "    approvals: { required: 1 }\n";
    let (_d, engine, _) = setup(b, "2026-03-02T10:00:00Z").await;
    let p = make_plan(gates, "1.0.0");
    let (first, continued) = engine
        .create_or_continue(req(p.clone(), "op-a"))
        .await
        .unwrap();
    assert!(!continued);
    engine.drive(&first.id, "op-a", NO_WAIT).await.unwrap();
    let (again, continued) = engine.create_or_continue(req(p, "op-a")).await.unwrap();
    assert!(continued);
    assert_eq!(again.id, first.id);
}

/// A waived compatibility finding is journaled (and so audited) when the run starts, once,
/// even when the process died between creating the run and journaling the waiver.
async fn waivers_are_journaled_once_even_after_a_crash_right_after_creation(b: Backend) {
    use slipway_engine::Store as _;
    use slipway_engine::event::EngineEvent;
    use slipway_engine::store::{JournalRecord, NewRun};
    let waived = |mut p: Plan| {
        p.waivers = vec![slipway_model::compat::AppliedWaiver {
            finding: "migration:db:V7__drop_total.sql".into(),
            message: "contracts the schema".into(),
            reason: "nothing reads total since 2.1".into(),
            by: "alice".into(),
        }];
        p.digest = slipway_model::plan::digest_of(&p);
        p
    };
    let count = |journal: &[slipway_engine::Notice]| {
        journal
            .iter()
            .filter(|n| matches!(n.event, EngineEvent::WaiverApplied { .. }))
            .count()
    };
    let fresh = Fresh::new(b);
    let store = Arc::new(fresh.open().await.unwrap());
    let clock = Arc::new(FakeClock::new(
        "2026-03-02T10:00:00Z".parse::<Timestamp>().unwrap(),
    ));
    let engine = Engine::new(store.clone(), Arc::new(NoopTarget), clock.clone());

    // The normal path: journaled at creation, not again by the drive.
    let run = engine
        .create_run(req(waived(make_plan("", "1.0.0")), "op-a"))
        .await
        .unwrap();
    engine.drive(&run.id, "op-a", NO_WAIT).await.unwrap();
    assert_eq!(count(&store.journal(&run.id, 0).await.unwrap()), 1);

    // A run as a crash right after its first commit leaves it: no waiver yet.
    let p = waived(make_plan("", "1.0.1"));
    let now = "2026-03-02T10:00:00Z".parse::<Timestamp>().unwrap();
    store
        .create_run(
            NewRun {
                id: "r-crashed".into(),
                plan_json: serde_json::to_string(&p).unwrap(),
                digest: p.digest.clone(),
                release: "g".into(),
                version: "1.0.1".into(),
                environment: "prod".into(),
                author: "op-a".into(),
                override_reason: None,
                created_at: now,
                workdir: "/tmp".into(),
            },
            JournalRecord {
                run_id: "r-crashed".into(),
                digest: p.digest.clone(),
                at: now,
                actor: "op-a".into(),
                event: EngineEvent::RunCreated {
                    release: "g".into(),
                    version: "1.0.1".into(),
                    environment: "prod".into(),
                    digest: p.digest.clone(),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(count(&store.journal("r-crashed", 0).await.unwrap()), 0);
    let out = engine.drive("r-crashed", "op-a", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    let journal = store.journal("r-crashed", 0).await.unwrap();
    assert_eq!(count(&journal), 1);
    // Before any step ran.
    let waiver = journal
        .iter()
        .position(|n| matches!(n.event, EngineEvent::WaiverApplied { .. }))
        .unwrap();
    let first_step = journal
        .iter()
        .position(|n| matches!(n.event, EngineEvent::StepStarted { .. }))
        .unwrap();
    assert!(waiver < first_step);
}

/// A drive in the process that created the run takes the plan `create_run` kept only
/// while the stored plan is the text it wrote: a plan changed in the store since is the
/// one driven (as a drive from another process would), and a drive of another run than
/// the last created reads its own.
async fn a_drive_reads_the_stored_plan_when_it_is_not_the_one_created(b: Backend) {
    let (d, engine, _) = setup(b, "2026-03-02T10:00:00Z").await;
    let edited = engine
        .create_run(req(make_plan("", "1.0.0"), "op-a"))
        .await
        .unwrap();
    d.sql(&format!(
        "UPDATE runs SET plan_json = replace(plan_json, 'two', 'zwei') WHERE id = '{}'",
        edited.id
    ));
    let out = engine.drive(&edited.id, "op-a", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    let steps = |run: String| {
        let engine = engine.clone();
        async move {
            engine
                .store()
                .steps(&run)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.step_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(steps(edited.id.clone()).await, ["app/one", "app/zwei"]);
    // Two runs created, the first driven: its plan is the stored one, not the second's.
    let first = engine
        .create_run(req(make_plan("", "1.0.1"), "op-a"))
        .await
        .unwrap();
    let yaml = "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: h, version: 1.0.0, type: patch }\n\
         services:\n  other:\n    steps:\n      - { name: only, run: 'true' }\n\
         environments:\n  prod:\n    target: { exec: {} }\n";
    let spec: ReleaseSpec = serde_saphyr::from_str(yaml).unwrap();
    let second = engine
        .create_run(req(plan(&spec, "prod", &Facts::default()).unwrap(), "op-a"))
        .await
        .unwrap();
    let out = engine.drive(&first.id, "op-a", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    assert_eq!(steps(first.id.clone()).await, ["app/one", "app/two"]);
    let out = engine.drive(&second.id, "op-a", NO_WAIT).await.unwrap();
    assert_eq!(out, DriveOutcome::Finished(RunState::Succeeded));
    assert_eq!(steps(second.id.clone()).await, ["other/only"]);
}

on_disk!(a_drive_reads_the_stored_plan_when_it_is_not_the_one_created);

on_both!(
    a_future_window_blocks_with_no_wait_and_is_waited_for_otherwise,
    inside_an_open_window_the_run_proceeds,
    a_freeze_refuses_unless_overridden_and_then_needs_a_second_person,
    approvals_count_distinct_non_authors_of_the_same_digest,
    an_approval_of_another_run_of_an_older_plan_does_not_count,
    deploying_the_same_plan_again_continues_the_unfinished_run,
    waivers_are_journaled_once_even_after_a_crash_right_after_creation
);
