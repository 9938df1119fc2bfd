//! The audit chain detects rows edited, deleted, inserted or reordered with the sqlite3
//! CLI, and names the first bad entry.

use slipway_engine::audit::{self, ChainBreak};
use slipway_engine::store::Store;
use slipway_store::SqliteStore;

use crate::common::{populated, sqlite3};

async fn verify_after(sql: &str) -> Result<audit::Verified, ChainBreak> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let store = populated(&db, 9).await;
    let before = audit::verify(
        &store.audit_entries().await.unwrap(),
        store
            .audit_head()
            .await
            .unwrap()
            .as_ref()
            .map(|(s, h)| (*s, h.as_str())),
    );
    assert_eq!(before.as_ref().map(|v| v.head_seq), Ok(10), "{before:?}");
    drop(store);
    sqlite3(&db, sql);
    let store = SqliteStore::open(&db).await.unwrap();
    let head = store.audit_head().await.unwrap();
    audit::verify(
        &store.audit_entries().await.unwrap(),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    )
}

#[tokio::test]
async fn untouched_chain_verifies() {
    let v = verify_after("SELECT 1").await.unwrap();
    assert_eq!(v.entries, 10);
}

#[tokio::test]
async fn edited_entry_is_named() {
    let r = verify_after("UPDATE audit SET actor = 'op-someone-else' WHERE seq = 4").await;
    assert_eq!(r, Err(ChainBreak::Edited { seq: 4 }));
}

#[tokio::test]
async fn edited_outcome_is_named() {
    let r = verify_after("UPDATE audit SET outcome = 'failed' WHERE seq = 7").await;
    assert_eq!(r, Err(ChainBreak::Edited { seq: 7 }));
}

#[tokio::test]
async fn deleted_entry_is_named() {
    let r = verify_after("DELETE FROM audit WHERE seq = 5").await;
    assert_eq!(r, Err(ChainBreak::Deleted { seq: 5, after: 4 }));
}

#[tokio::test]
async fn deleted_tail_is_named() {
    let r = verify_after("DELETE FROM audit WHERE seq = 10").await;
    assert_eq!(r, Err(ChainBreak::Deleted { seq: 10, after: 9 }));
}

#[tokio::test]
async fn inserted_entry_is_named() {
    let r = verify_after(
        "INSERT INTO audit SELECT 11, at, actor, action, run_id, digest, outcome, detail, hash, 'forged' FROM audit WHERE seq = 10",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Inserted { seq: 11 }));
}

#[tokio::test]
async fn inserted_entry_in_the_middle_is_named() {
    // Make room at 6 by shifting the tail up, then slip a copy of entry 5 in.
    let r = verify_after(
        "UPDATE audit SET seq = seq + 100 WHERE seq >= 6; UPDATE audit SET seq = seq - 99 WHERE seq >= 106;
         INSERT INTO audit SELECT 6, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash FROM audit WHERE seq = 5;
         UPDATE meta SET value = '11:' || (SELECT hash FROM audit WHERE seq = 11) WHERE key = 'audit_head';",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Inserted { seq: 6 }));
}

#[tokio::test]
async fn reordered_entries_are_named() {
    let r = verify_after(
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -3;",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Reordered { seq: 3 }));
}

#[tokio::test]
async fn export_verifies_standalone_and_detects_edits() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(&dir.path().join("s.db"), 4).await;
    let entries = store.audit_entries().await.unwrap();
    let text = audit::export_jsonl(&entries);
    let v = audit::verify_export(&text).unwrap().unwrap();
    assert_eq!(v.head_seq, 5);
    assert_eq!(text.lines().count(), 6);
    let edited = text.replacen("op-test", "op-evil", 1);
    assert!(matches!(
        audit::verify_export(&edited).unwrap(),
        Err(ChainBreak::Edited { .. })
    ));
    // Dropping the last line is caught by the header's head.
    let cut: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    assert_eq!(
        audit::verify_export(&cut).unwrap(),
        Err(ChainBreak::Deleted { seq: 5, after: 4 })
    );
}
