//! The SQLite file store's pipelined appends (issue 20 part 2): a group queued while an
//! earlier one is being committed chains onto it, so when that commit fails the groups
//! behind it fail too — with the error, to every caller — and none of them is committed
//! after it; and no caller hears "committed" before its records are.
//!
//! The failure is real: a trigger the test creates refuses one record. The test holds the
//! store's write lock (its own `BEGIN IMMEDIATE` on the file) while it queues the commits:
//! it waits until the committer has taken the first into a transaction (which then waits
//! for the lock) before it queues the others, so they are behind that transaction,
//! whatever the load.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slipway_engine::Store;
use slipway_engine::audit::{AuditEntry, HASH_V2};
use slipway_engine::event::EngineEvent;

use slipway_store::AnyStore;

use crate::common::{Backend, Fresh, populated_on, record};

fn started(step: &str, secs: i64) -> slipway_engine::store::JournalRecord {
    record(
        "r1",
        secs,
        EngineEvent::StepStarted {
            step: step.into(),
            key: format!("k-{step}"),
            attempt: 1,
        },
    )
}

/// Poll `f` once (it queues its records on the first poll); it must be waiting then.
fn queue<T>(f: &mut Pin<Box<dyn Future<Output = T> + Send + '_>>) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(f.as_mut().poll(&mut cx), Poll::Pending),
        "a commit returned while the test held the store's write lock"
    );
}

fn db_path(fresh: &Fresh) -> &str {
    fresh.url.strip_prefix("sqlite://").unwrap()
}

/// Wait until the committer has taken every queued group into its transaction (which
/// then waits for the test's lock): what is queued next is behind that transaction.
async fn all_taken(store: &AnyStore) {
    let AnyStore::Sqlite(s) = store else {
        panic!("an SQLite store")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.appends_waiting() > 0 {
        assert!(
            Instant::now() < deadline,
            "the committer took no group in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn waiting(store: &AnyStore) -> usize {
    match store {
        AnyStore::Sqlite(s) => s.appends_waiting(),
        _ => panic!("an SQLite store"),
    }
}

/// The audit chain verified whole against its head; then run r1's step ids as the store
/// reads them back, and the chain's entries.
async fn verified_steps(store: &AnyStore) -> (Vec<String>, Vec<AuditEntry>) {
    let entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    slipway_engine::audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    let steps = store
        .steps("r1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.step_id)
        .collect();
    (steps, entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_the_commits_queued_behind_it() {
    // One run and a first step event: the chain's head is known, so what follows is
    // queued onto it by its callers.
    let (fresh, store) = populated_on(Backend::Sqlite, 1).await;
    let lock = rusqlite::Connection::open(db_path(&fresh)).unwrap();
    lock.busy_timeout(Duration::from_secs(30)).unwrap();
    lock.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON audit WHEN NEW.detail LIKE '%svc/poison%'
         BEGIN SELECT RAISE(ABORT, 'the test refuses svc/poison'); END;",
    )
    .unwrap();
    // The poisoned commit first, in a transaction of its own that waits for the lock;
    // then two queued behind it.
    let mut poisoned = store.commit(vec![started("svc/poison", 10)]);
    queue(&mut poisoned);
    all_taken(&store).await;
    let mut behind = store.commit(vec![started("svc/b", 11)]);
    queue(&mut behind);
    let mut behind2 = store.commit(vec![started("svc/c", 12), started("svc/d", 12)]);
    queue(&mut behind2);
    assert_eq!(
        waiting(&store),
        2,
        "both queued behind the transaction in progress"
    );
    lock.execute_batch("COMMIT").unwrap();

    let e = poisoned.await.unwrap_err().to_string();
    assert!(e.contains("the test refuses svc/poison"), "{e}");
    for (name, f) in [("svc/b", behind), ("svc/c, svc/d", behind2)] {
        let e = f
            .await
            .expect_err(&format!(
                "{name} was committed after the commit it follows failed"
            ))
            .to_string();
        assert!(e.contains("the test refuses svc/poison"), "{name}: {e}");
    }
    let (steps, _) = verified_steps(&store).await;
    assert_eq!(
        steps,
        ["svc/s0"],
        "nothing queued behind the failure is in the chain"
    );

    // The store goes on: the next commit goes the ordinary way (re-reading the head), the
    // one after it is queued again, and the chain verifies.
    lock.execute_batch("DROP TRIGGER refuse_poison").unwrap();
    store.commit(vec![started("svc/e", 13)]).await.unwrap();
    store.commit(vec![started("svc/f", 14)]).await.unwrap();
    let (steps, _) = verified_steps(&store).await;
    assert_eq!(steps, ["svc/e", "svc/f", "svc/s0"]);
}

/// Commits queued while another process's append moved the head are not lost: nothing of
/// theirs is written after the moved head, they go the ordinary way once the head is
/// re-read, and the chain stays one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_queued_while_another_process_appends_are_redone_after_it() {
    let (fresh, store) = populated_on(Backend::Sqlite, 1).await;
    let other = rusqlite::Connection::open(db_path(&fresh)).unwrap();
    other.busy_timeout(Duration::from_secs(30)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut a = store.commit(vec![started("svc/a", 10)]);
    queue(&mut a);
    all_taken(&store).await;
    let mut b = store.commit(vec![started("svc/b", 11)]);
    queue(&mut b);
    assert_eq!(
        waiting(&store),
        1,
        "queued behind the transaction in progress"
    );
    // Another process appends an entry while they wait: what the store's writer would
    // (the head in `meta` moves in the same transaction).
    let head: String = other
        .query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let (seq, prev) = head.split_once(':').unwrap();
    let event = EngineEvent::StepStarted {
        step: "svc/o".into(),
        key: "k-svc/o".into(),
        attempt: 1,
    };
    let mut e = AuditEntry {
        seq: seq.parse::<i64>().unwrap() + 1,
        at: "2027-01-15T08:00:12Z".into(),
        actor: "op-other".into(),
        action: event.name().into(),
        run_id: "r1".into(),
        digest: "d1".into(),
        outcome: event.outcome(),
        detail: serde_json::to_string(&event).unwrap(),
        prev_hash: prev.into(),
        hash: String::new(),
        v: HASH_V2,
    };
    e.hash = e.compute_hash();
    other
        .execute(
            "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 2)",
            rusqlite::params![e.seq, e.at, e.actor, e.action, e.run_id, e.digest, e.outcome, e.detail, e.prev_hash, e.hash],
        )
        .unwrap();
    other
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'audit_head'",
            [format!("{}:{}", e.seq, e.hash)],
        )
        .unwrap();
    other.execute_batch("COMMIT").unwrap();
    a.await.unwrap();
    b.await.unwrap();
    store.commit(vec![started("svc/z", 13)]).await.unwrap();
    let (steps, entries) = verified_steps(&store).await;
    assert_eq!(steps, ["svc/a", "svc/b", "svc/o", "svc/s0", "svc/z"]);
    // The other process's entry stayed where it was written: right after the first
    // step event, before anything queued behind it.
    let o = entries.iter().position(|x| x.actor == "op-other").unwrap();
    let s0 = entries
        .iter()
        .position(|x| x.detail.contains("svc/s0"))
        .unwrap();
    assert_eq!(o, s0 + 1);
}
