//! What only the PostgreSQL store has to prove: several store handles (separate pools and
//! writers, as separate `slipway` processes have) on one database keep one linear audit
//! chain, give a lease to exactly one taker and a run claim to one holder until it is
//! released or its session dies; and opening fails with clear, password-free messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_engine::audit;
use slipway_engine::event::EngineEvent;
use slipway_engine::store::{LeaseOutcome, LeaseRequest, Store, StoreError};
use slipway_store::PgStore;

use crate::common::{Backend, Fresh, at, populated_on, record};
use crate::pg::{PASSWORD, db_name, free_port, pg};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_from_four_handles_keep_one_linear_chain() {
    let (fresh, first) = populated_on(Backend::Postgres, 0).await;
    let mut handles = vec![Arc::new(first)];
    for _ in 0..3 {
        handles.push(Arc::new(fresh.open().await.unwrap()));
    }
    let mut tasks = Vec::new();
    for i in 0..400i64 {
        let s = handles[(i % 4) as usize].clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![
                record(
                    "r1",
                    i,
                    EngineEvent::StepStarted {
                        step: format!("svc/{i}"),
                        key: format!("k{i}"),
                        attempt: 1,
                    },
                ),
                record(
                    "r1",
                    i,
                    EngineEvent::StepProgress {
                        step: format!("svc/{i}"),
                        key: format!("k{i}"),
                        detail: serde_json::json!({ "halfway": i }),
                    },
                ),
            ])
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Read back through yet another handle.
    let reader = fresh.open().await.unwrap();
    let entries = reader.audit_entries().await.unwrap();
    let head = reader.audit_head().await.unwrap().unwrap();
    let v = audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    assert_eq!(v.entries, 801);
    assert_eq!(reader.steps("r1").await.unwrap().len(), 400);
    // Journal seq follows commit order: each step's progress comes right after its start
    // (the two were committed together), never interleaved with another handle's batch.
    let journal = reader.journal("r1", 0).await.unwrap();
    assert_eq!(journal.len(), 801);
    for pair in journal[1..].chunks(2) {
        let (EngineEvent::StepStarted { step: a, .. }, EngineEvent::StepProgress { step: b, .. }) =
            (&pair[0].event, &pair[1].event)
        else {
            panic!(
                "interleaved batches: {:?}",
                pair.iter().map(|n| n.seq).collect::<Vec<_>>()
            )
        };
        assert_eq!(a, b);
    }
    // And the audit chain lists the same events in the same order as the journal.
    for (n, e) in journal.iter().zip(&entries) {
        assert_eq!(e.action, n.event.name());
    }
}

fn req(holder: &str) -> LeaseRequest {
    LeaseRequest {
        environment: "prod".into(),
        holder: holder.into(),
        release: format!("shop {holder}"),
        now: at(0),
        ttl: Duration::from_secs(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_takers_on_four_handles_get_exactly_one_lease() {
    for round in 0..5 {
        let fresh = Fresh::new(Backend::Postgres);
        let mut handles = Vec::new();
        for _ in 0..4 {
            let h = Arc::new(fresh.open().await.unwrap());
            // Warm each handle's writer connection, so the takers below meet in the
            // database rather than queueing behind a connect.
            h.leases().await.unwrap();
            h.pseudonym("warm-up").await.unwrap();
            handles.push(h);
        }
        let start = Arc::new(tokio::sync::Barrier::new(32));
        let mut tasks = Vec::new();
        for i in 0..32 {
            let s = handles[i % 4].clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                s.acquire_lease(req(&format!("run-{i}"))).await.unwrap()
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let LeaseOutcome::Granted { lease, .. } = t.await.unwrap() {
                winners.push(lease.holder);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let leases = handles[3].leases().await.unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].holder, winners[0]);
    }
}

/// Poll until `f` holds or 10 s pass.
async fn eventually<F: AsyncFnMut() -> bool>(mut f: F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_excludes_other_handles_until_released_or_its_session_dies() {
    let (fresh, a) = populated_on(Backend::Postgres, 0).await;
    let b = fresh.open().await.unwrap();
    let claim = a.claim("r1").await.unwrap();
    assert!(matches!(b.claim("r1").await, Err(StoreError::Claimed(_))));
    // Another run is not affected.
    drop(b.claim("r2").await.unwrap());
    drop(claim);
    let claim = b.claim("r1").await.unwrap();
    assert!(matches!(a.claim("r1").await, Err(StoreError::Claimed(_))));
    // The holder's host dies (no goodbye): the server ends its session, as keepalives do
    // for a vanished peer, and the run can be taken over.
    let db = db_name(&fresh.url);
    let killed = pg().psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND d.datname = '{db}'"
        ),
    );
    assert_eq!(
        killed.trim(),
        "1",
        "the claim is one advisory lock of one session"
    );
    assert!(
        eventually(async || a.claim("r1").await.is_ok()).await,
        "the dead holder's claim was not taken over"
    );
    std::mem::forget(claim);
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_the_fix_and_no_password() {
    let url = format!(
        "postgres://app:{PASSWORD}@127.0.0.1:{}/slipway",
        free_port()
    );
    let err = PgStore::open(&url).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains("postgres://app:***@127.0.0.1:"), "{msg}");
    assert!(msg.contains("start PostgreSQL"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
}

#[tokio::test]
async fn a_wrong_password_is_named_with_the_fix_and_no_password() {
    let good = pg().new_db("wrongpw");
    let bad = good.replace(PASSWORD, "not-the-password");
    let msg = PgStore::open(&bad).await.unwrap_err().to_string();
    assert!(msg.contains("postgres://postgres:***@127.0.0.1:"), "{msg}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains("correct the user and password"), "{msg}");
    assert!(!msg.contains("not-the-password"), "{msg}");
    // A missing database is named too.
    let missing = good.replace(db_name(&good), "no_such_db");
    let msg = PgStore::open(&missing).await.unwrap_err().to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("createdb"),
        "{msg}"
    );
    assert!(!msg.contains(PASSWORD), "{msg}");
}

#[tokio::test]
async fn a_newer_journal_format_is_refused_and_a_foreign_database_too() {
    let fresh = Fresh::new(Backend::Postgres);
    drop(fresh.open().await.unwrap());
    fresh.sql("UPDATE meta SET value = '99' WHERE key = 'journal_format'");
    let err = fresh.open().await.unwrap_err();
    assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("written by a newer slipway"), "{msg}");
    assert!(msg.contains("journal format 99"), "{msg}");
    assert!(msg.contains("postgres://postgres:***@"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");

    let other = Fresh::new(Backend::Postgres);
    other.sql("CREATE TABLE runs (id INTEGER)");
    let msg = other.open().await.unwrap_err().to_string();
    assert!(msg.contains("not a slipway store"), "{msg}");
    // Nothing was created beside the foreign table.
    assert_eq!(other.sql("SELECT to_regclass('meta') IS NULL").trim(), "t");
}

#[tokio::test]
async fn the_location_masks_the_password() {
    let fresh = Fresh::new(Backend::Postgres);
    let store = fresh.open().await.unwrap();
    let loc = store.location();
    assert!(
        loc.starts_with("postgres://postgres:***@127.0.0.1:"),
        "{loc}"
    );
    assert!(!format!("{store:?}").contains(PASSWORD));
}
