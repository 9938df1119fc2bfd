//! The SQLite file store's committer writes a transaction's entries as multi-row INSERTs
//! (chunks of 64, 16, 4 and 1 rows; in a chunk a row's `prev_hash` is bound as the row
//! before's `hash`, and an actor, run and digest common to every row are bound once):
//! whatever the mix of groups, runs and actors in one transaction, every entry is stored
//! with its own fields, in queue order, and the chain verifies.
//!
//! The test holds the store's write lock (its own `BEGIN IMMEDIATE`) while it queues the
//! commits: once the committer has taken the first into a transaction (which then waits
//! for the lock), everything queued after it is taken into the next transaction together.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slipway_engine::Store;
use slipway_engine::event::EngineEvent;
use slipway_engine::store::JournalRecord;
use slipway_store::AnyStore;

use crate::common::{Backend, at, populated_on};

type Commit<'a> = Pin<Box<dyn Future<Output = Result<(), slipway_engine::StoreError>> + Send + 'a>>;

fn started(run: &str, actor: &str, step: &str) -> JournalRecord {
    JournalRecord {
        run_id: run.into(),
        digest: format!("d-{run}"),
        at: at(10),
        actor: actor.into(),
        event: EngineEvent::StepStarted {
            step: step.into(),
            key: format!("k-{step}"),
            attempt: 1,
        },
    }
}

/// Poll `f` once (it queues its records on the first poll); it must be waiting then.
fn queue(f: &mut Commit<'_>) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(f.as_mut().poll(&mut cx), Poll::Pending),
        "a commit returned while the test held the store's write lock"
    );
}

fn sqlite(store: &AnyStore) -> &slipway_store::SqliteStore {
    match store {
        AnyStore::Sqlite(s) => s,
        _ => panic!("an SQLite store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_every_chunk_size_and_shape_keep_their_fields_and_chain() {
    let (fresh, store) = populated_on(Backend::Sqlite, 1).await;
    let db = fresh.url.strip_prefix("sqlite://").unwrap().to_owned();
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.busy_timeout(Duration::from_secs(30)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut first = store.commit(vec![started("r1", "op-test", "svc/first")]);
    queue(&mut first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlite(&store).appends_waiting() > 0 {
        assert!(
            Instant::now() < deadline,
            "the committer took no group in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // 87 entries behind it, in groups of 1 to 5 records: a chunk of 64 whose runs and
    // actors differ from row to row, then 16 and 4 rows of one run and actor, then 3
    // single rows of three runs.
    let mut expected: Vec<(String, String, String)> = Vec::new();
    for i in 0..87 {
        let (run, actor) = match i {
            0..64 => (["r1", "r2", "r3"][i % 3], ["op-a", "op-b"][i % 2]),
            64..84 => ("r2", "op-c"),
            _ => (["r1", "r2", "r3"][i - 84], "op-a"),
        };
        expected.push((run.to_owned(), actor.to_owned(), format!("svc/e{i}")));
    }
    let mut groups: Vec<Vec<JournalRecord>> = Vec::new();
    let mut i = 0;
    while i < expected.len() {
        let n = (groups.len() % 5 + 1).min(expected.len() - i);
        groups.push(
            expected[i..i + n]
                .iter()
                .map(|(run, actor, step)| started(run, actor, step))
                .collect(),
        );
        i += n;
    }
    let mut queued: Vec<Commit<'_>> = Vec::new();
    for g in groups {
        let mut f = store.commit(g);
        queue(&mut f);
        queued.push(f);
    }
    assert_eq!(
        sqlite(&store).appends_waiting(),
        queued.len(),
        "every group queued behind the transaction in progress"
    );
    lock.execute_batch("COMMIT").unwrap();
    first.await.unwrap();
    for f in queued {
        f.await.unwrap();
    }

    // In queue order after the first, each entry with its own run, actor, digest and
    // event; the chain (every hash over the stored fields, every link) verifies.
    let entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    slipway_engine::audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    let firsts = entries
        .iter()
        .position(|e| e.detail.contains("\"svc/first\""))
        .unwrap();
    let after: Vec<(String, String, String, String)> = entries[firsts + 1..]
        .iter()
        .map(|e| {
            (
                e.run_id.clone(),
                e.actor.clone(),
                e.digest.clone(),
                e.detail.clone(),
            )
        })
        .collect();
    assert_eq!(after.len(), expected.len());
    for (got, (run, actor, step)) in after.iter().zip(&expected) {
        assert_eq!((&got.0, &got.1), (run, actor), "{step}");
        assert_eq!(got.2, format!("d-{run}"), "{step}");
        assert!(got.3.contains(&format!("\"{step}\"")), "{step}: {}", got.3);
    }
}
