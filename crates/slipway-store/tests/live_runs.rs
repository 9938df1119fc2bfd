//! One live run per plan digest and environment, enforced by each store: a second live
//! run is refused whoever creates it, two engines racing to create one make one, and the
//! format 5 migration resolves the duplicates an older build let in (migrating on to format
//! 6, whose evidence must then verify) — on both backends.

use std::sync::Arc;

use slipway_engine::audit;
use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::noop::NoopTarget;
use slipway_engine::store::{JournalRecord, NewRun, Store, StoreError};
use slipway_engine::{Engine, FakeClock, NewRunRequest};
use slipway_model::plan::{Facts, Plan, plan};
use slipway_model::spec::ReleaseSpec;
use slipway_store::schema::{JOURNAL_FORMAT, MIGRATION_ACTOR, MIGRATIONS, PG_SCHEMA};

use crate::common::{Backend, Fresh, at, on_both, on_disk};

fn new_run(id: &str, digest: &str, environment: &str, secs: i64) -> (NewRun, JournalRecord) {
    (
        NewRun {
            id: id.into(),
            plan_json: "{}".into(),
            digest: digest.into(),
            release: "shop".into(),
            version: "1.0.0".into(),
            environment: environment.into(),
            author: "op-test".into(),
            override_reason: None,
            created_at: at(secs),
            workdir: "/tmp".into(),
        },
        JournalRecord {
            run_id: id.into(),
            digest: digest.into(),
            at: at(secs),
            actor: "op-test".into(),
            event: EngineEvent::RunCreated {
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: environment.into(),
                digest: digest.into(),
                override_freeze: None,
                plan_sha256: None,
                workdir: None,
            },
        },
    )
}

fn state_change(id: &str, digest: &str, secs: i64, from: RunState, to: RunState) -> JournalRecord {
    JournalRecord {
        run_id: id.into(),
        digest: digest.into(),
        at: at(secs),
        actor: "op-test".into(),
        event: EngineEvent::StateChanged {
            from,
            to,
            reason: None,
        },
    }
}

async fn a_second_live_run_of_a_plan_is_refused_by_the_store(b: Backend) {
    let fresh = Fresh::new(b);
    let store = fresh.open().await.unwrap();
    let (r, f) = new_run("r1", "dA", "prod", 0);
    store.create_run(r, f).await.unwrap();
    let (r, f) = new_run("r2", "dA", "prod", 1);
    let err = store.create_run(r, f).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::LiveRunExists { digest, environment } if digest == "dA" && environment == "prod"),
        "{err:?}"
    );
    // Nothing of the refused run was written.
    assert!(store.run("r2").await.unwrap().is_none());
    assert!(store.journal("r2", 0).await.unwrap().is_empty());
    // The same plan in another environment, and another plan, are other runs.
    let (r, f) = new_run("r3", "dA", "staging", 2);
    store.create_run(r, f).await.unwrap();
    let (r, f) = new_run("r4", "dB", "prod", 3);
    store.create_run(r, f).await.unwrap();
    // Once the first run ended, the plan may run again.
    store
        .commit(vec![state_change(
            "r1",
            "dA",
            4,
            RunState::Pending,
            RunState::Succeeded,
        )])
        .await
        .unwrap();
    let (r, f) = new_run("r5", "dA", "prod", 5);
    store.create_run(r, f).await.unwrap();
    // A finished run made live again (rolled back by hand) beside a live one of its plan
    // is refused too, and the refused commit changed nothing.
    let err = store
        .commit(vec![state_change(
            "r1",
            "dA",
            6,
            RunState::Succeeded,
            RunState::RollingBack,
        )])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::LiveRunExists { environment, .. } if environment == "prod"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("one plan has at most one live run"),
        "{err}"
    );
    assert_eq!(
        store.run("r1").await.unwrap().unwrap().state,
        RunState::Succeeded
    );
    let verified = audit::verify_store(&store).await.unwrap();
    assert!(verified.result.is_ok(), "{:?}", verified.result);
}

fn make_plan(version: &str) -> Plan {
    let yaml = format!(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: {{ name: race, version: {version}, type: patch }}\n\
         services:\n  app:\n    steps:\n      - {{ name: one, run: 'true' }}\n\
         environments:\n  prod:\n    target: {{ exec: {{}} }}\n"
    );
    let spec: ReleaseSpec = serde_saphyr::from_str(&yaml).unwrap();
    plan(&spec, "prod", &Facts::default()).unwrap()
}

/// Two engines with stores of their own (two processes) create-or-continue one plan at
/// the same moment, many times: every time one creates the run and the other continues it.
async fn two_engines_racing_to_create_a_run_of_one_plan_make_one(b: Backend) {
    let fresh = Fresh::new(b);
    let clock = Arc::new(FakeClock::new(at(0)));
    let engine = |store| Engine::new(Arc::new(store), Arc::new(NoopTarget), clock.clone());
    let (e1, e2) = (
        engine(fresh.open().await.unwrap()),
        engine(fresh.open().await.unwrap()),
    );
    for i in 0..12 {
        let p = make_plan(&format!("1.0.{i}"));
        let req = NewRunRequest {
            plan: p,
            author: "op-a".into(),
            override_freeze: None,
            workdir: "/tmp".into(),
        };
        let (a, b) = tokio::join!(
            e1.create_or_continue(req.clone()),
            e2.create_or_continue(req)
        );
        let ((ra, ca), (rb, cb)) = (a.unwrap(), b.unwrap());
        assert_eq!(ra.id, rb.id, "round {i}: two runs of one plan");
        assert!(
            ca != cb,
            "round {i}: exactly one created the run ({ca}, {cb})"
        );
    }
    let runs = e1.store().runs(100).await.unwrap();
    assert_eq!(runs.len(), 12);
}

/// A store an older build wrote, with two live runs of one plan in one environment (the
/// race this format closes): the migration keeps the newest — the run `deploy` continued
/// — and aborts the older one, journaled and in the audit chain, before the index exists.
async fn migrating_live_duplicates_keeps_the_newest_and_aborts_the_others(b: Backend) {
    let fresh = Fresh::new(b);
    // A format 4 store as an older build wrote it: its schema, the runs with duplicates
    // (three live runs of digest dA in prod), their journal and their chain (scheme 1).
    let schema = match b {
        Backend::Sqlite => MIGRATIONS[..4].concat(),
        Backend::Postgres => PG_SCHEMA.to_owned(),
        Backend::Memory => unreachable!("on_disk! only"),
    };
    let mut sql = schema;
    let mut prev = audit::GENESIS.to_owned();
    for (seq, (id, env)) in [
        ("r-old", "prod"),
        ("r-mid", "prod"),
        ("r-new", "prod"),
        ("r-elsewhere", "staging"),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, f) = new_run(id, "dA", env, seq as i64);
        let detail = serde_json::to_string(&f.event).unwrap();
        let mut e = audit::AuditEntry {
            seq: seq as i64 + 1,
            at: f.at.to_string(),
            actor: f.actor.clone(),
            action: "run_created".into(),
            run_id: id.into(),
            digest: "dA".into(),
            outcome: "ok".into(),
            detail: detail.clone(),
            prev_hash: prev.clone(),
            hash: String::new(),
            v: 1,
        };
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        sql.push_str(&format!(
            "INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at, workdir)
             VALUES ('{id}', 'dA', 'shop', '1.0.0', '{env}', 'op-test', 'pending', NULL, '{{}}', '{at}', '{at}', '/tmp');
             INSERT INTO journal (run_id, at, actor, event, data) VALUES ('{id}', '{at}', 'op-test', 'run_created', '{detail}');
             INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash)
             VALUES ({}, '{at}', 'op-test', 'run_created', '{id}', 'dA', 'ok', '{detail}', '{}', '{}');",
            e.seq, e.prev_hash, e.hash,
            at = e.at,
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO meta (key, value) VALUES ('journal_format', '4'), ('audit_head', '4:{prev}');"
    ));
    fresh.sql(&sql);
    let store = fresh.open().await.unwrap();
    let state = |id: &'static str| {
        let store = &store;
        async move { store.run(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state("r-new").await, RunState::Pending);
    assert_eq!(state("r-elsewhere").await, RunState::Pending);
    for old in ["r-old", "r-mid"] {
        assert_eq!(state(old).await, RunState::Aborted, "{old}");
        let journal = store.journal(old, 0).await.unwrap();
        let last = journal.last().unwrap();
        assert_eq!(last.actor, MIGRATION_ACTOR);
        let EngineEvent::StateChanged { from, to, reason } = &last.event else {
            panic!("{:?}", last.event)
        };
        assert_eq!((*from, *to), (RunState::Pending, RunState::Aborted));
        assert!(
            reason.as_deref().unwrap().contains("run r-new"),
            "{reason:?}"
        );
    }
    let verified = audit::verify_store(&store).await.unwrap();
    assert!(verified.result.is_ok(), "{:?}", verified.result);
    assert_eq!(
        fresh
            .sql("SELECT value FROM meta WHERE key = 'journal_format'")
            .trim(),
        JOURNAL_FORMAT.to_string()
    );
    // And the rule holds from now on.
    let (r, f) = new_run("r-again", "dA", "prod", 9);
    assert!(matches!(
        store.create_run(r, f).await,
        Err(StoreError::LiveRunExists { .. })
    ));
}

on_both!(
    a_second_live_run_of_a_plan_is_refused_by_the_store,
    two_engines_racing_to_create_a_run_of_one_plan_make_one,
);
on_disk!(migrating_live_duplicates_keeps_the_newest_and_aborts_the_others);
