//! The archive selection and prune on a real SQLite store: only closed runs leave (never a
//! running, paused or waiting one), the audit prefix stops before the first entry of a run
//! that stays, the prune is refused when the store moved since the selection, and after it
//! the chain verifies from the checkpoint and keeps growing from its head.

use slipway_engine::audit;
use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::store::{NewRun, Store};
use slipway_store::SqliteStore;
use slipway_store::archive::ArchiveDb;

use crate::common::{at, record};

async fn run(store: &SqliteStore, id: &str, secs: i64, states: &[RunState]) {
    store
        .create_run(
            NewRun {
                id: id.into(),
                plan_json: "{}".into(),
                digest: "d1".into(),
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: "staging".into(),
                author: "op-test".into(),
                override_reason: None,
                created_at: at(secs),
                workdir: "/tmp".into(),
            },
            record(
                id,
                secs,
                EngineEvent::RunCreated {
                    release: "shop".into(),
                    version: "1.0.0".into(),
                    environment: "staging".into(),
                    digest: "d1".into(),
                    override_freeze: None,
                },
            ),
        )
        .await
        .unwrap();
    let mut from = RunState::Pending;
    for (i, to) in states.iter().enumerate() {
        store
            .commit(vec![record(
                id,
                secs + i as i64 + 1,
                EngineEvent::StateChanged {
                    from,
                    to: *to,
                    reason: None,
                },
            )])
            .await
            .unwrap();
        from = *to;
    }
}

fn verify_live(
    entries: &[audit::AuditEntry],
    start: &(i64, String),
    head: &Option<(i64, String)>,
) -> Result<audit::Verified, audit::ChainBreak> {
    audit::verify_from(
        entries,
        (start.0, start.1.as_str()),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    )
}

#[tokio::test]
async fn only_closed_runs_leave_and_the_chain_verifies_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let store = SqliteStore::open(&db).await.unwrap();
    run(
        &store,
        "done-1",
        0,
        &[RunState::Running, RunState::Succeeded],
    )
    .await;
    run(&store, "failed", 10, &[RunState::Running, RunState::Failed]).await;
    run(&store, "running", 20, &[RunState::Running]).await;
    run(&store, "paused", 30, &[RunState::Running, RunState::Paused]).await;
    run(
        &store,
        "rolled",
        40,
        &[RunState::Running, RunState::RolledBack],
    )
    .await;

    let a = ArchiveDb::open(&db).await.unwrap();
    let far = at(1_000_000);
    let sel = a.select(far, far).await.unwrap();
    assert_eq!(sel.run_ids(), ["done-1", "failed", "rolled"]);
    // The prefix stops before the running run's first entry (seq 7).
    assert_eq!(sel.audit.len(), 6, "{:?}", sel.audit);
    assert_eq!(sel.end().0, 6);

    // Something moved since the selection (another writer edited the prefix's last
    // entry): refused, nothing removed.
    crate::common::sqlite3(&db, "UPDATE audit SET hash = 'x' || hash WHERE seq = 6");
    let e = a
        .prune(&sel, "digest", "b.tar.zst", "2030-01-01", at(100))
        .await;
    assert!(e.is_err(), "{e:?}");
    crate::common::sqlite3(&db, "UPDATE audit SET hash = substr(hash, 2) WHERE seq = 6");
    assert_eq!(store.runs(10).await.unwrap().len(), 5);

    let cp = a
        .prune(&sel, "digest", "b.tar.zst", "2030-01-01", at(100))
        .await
        .unwrap();
    assert_eq!((cp.start_seq, cp.end_seq), (0, 6));
    let mut live: Vec<String> = store
        .runs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    live.sort();
    assert_eq!(live, ["paused", "running"]);
    assert!(store.journal("done-1", 0).await.unwrap().is_empty());

    let start = store.audit_start().await.unwrap();
    assert_eq!(start, (6, sel.audit[5].hash.clone()));
    let entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap();
    assert_eq!(entries.first().map(|e| e.seq), Some(7));
    verify_live(&entries, &start, &head).unwrap();
    // From genesis the live rows alone do not verify: the checkpoint is what makes them.
    assert!(audit::verify(&entries, head.as_ref().map(|(s, h)| (*s, h.as_str()))).is_err());
    // Archived + live verify as one chain.
    let mut all = sel.audit.clone();
    all.extend(entries);
    audit::verify(&all, head.as_ref().map(|(s, h)| (*s, h.as_str()))).unwrap();

    // Close everything, archive the rest: the whole chain leaves, and the next entry still
    // links to the head rather than starting again from genesis.
    store
        .commit(vec![record(
            "running",
            200,
            EngineEvent::StateChanged {
                from: RunState::Running,
                to: RunState::Succeeded,
                reason: None,
            },
        )])
        .await
        .unwrap();
    store
        .commit(vec![record(
            "paused",
            201,
            EngineEvent::StateChanged {
                from: RunState::Paused,
                to: RunState::Aborted,
                reason: None,
            },
        )])
        .await
        .unwrap();
    let sel2 = a.select(far, far).await.unwrap();
    assert_eq!(sel2.start, start);
    a.prune(&sel2, "digest2", "c.tar.zst", "2030-01-01", at(300))
        .await
        .unwrap();
    assert!(store.audit_entries().await.unwrap().is_empty());
    run(&store, "next", 400, &[RunState::Running]).await;
    let entries = store.audit_entries().await.unwrap();
    let start = store.audit_start().await.unwrap();
    assert_eq!(entries[0].seq, start.0 + 1);
    assert_eq!(entries[0].prev_hash, start.1);
    verify_live(&entries, &start, &store.audit_head().await.unwrap()).unwrap();
}
