//! The in-memory store's own promises (its behaviour as a store is the contract tests',
//! which run on it as `::memory`): a name is one store for the whole process, dropping
//! every handle keeps it, other names are other stores, and nothing reaches the disk.

use slipway_engine::store::{Store, StoreError};
use slipway_store::{AnyStore, SqliteStore};

use crate::common::populated_on;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_one_store_for_the_process_even_after_every_handle_is_dropped() {
    let (fresh, first) = populated_on(crate::common::Backend::Memory, 3).await;
    let name = fresh.url.strip_prefix("memory://").unwrap().to_owned();
    assert_eq!(first.location(), fresh.url);
    assert_eq!(
        first.sqlite_path(),
        None,
        "no file beside an in-memory store"
    );
    let before = first.journal("r1", 0).await.unwrap().len();
    assert_eq!(before, 4, "the run's creation and three steps");
    drop(first);

    let again = AnyStore::Sqlite(SqliteStore::in_memory(&name).await.unwrap());
    assert_eq!(again.journal("r1", 0).await.unwrap().len(), before);
    assert!(again.run("r1").await.unwrap().is_some());

    let other = SqliteStore::in_memory(&format!("{name}-other"))
        .await
        .unwrap();
    assert!(
        other.run("r1").await.unwrap().is_none(),
        "another name is another store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_excludes_every_other_handle_until_it_is_dropped() {
    let (fresh, a) = populated_on(crate::common::Backend::Memory, 0).await;
    let b = fresh.open().await.unwrap();
    let held = a.claim("r1").await.unwrap();
    assert!(matches!(b.claim("r1").await, Err(StoreError::Claimed(_))));
    assert!(matches!(a.claim("r1").await, Err(StoreError::Claimed(_))));
    drop(held);
    let _taken = b.claim("r1").await.unwrap();
}
