//! The audit chain detects rows edited, deleted, inserted or reordered with the backend's
//! own CLI (sqlite3, psql), and names the first bad entry — on both backends.

use slipway_engine::audit::{self, ChainBreak};
use slipway_engine::event::EngineEvent;
use slipway_engine::store::{NewRun, Store};

use crate::common::{Backend, Fresh, on_disk, populated_on, record};

async fn verify_after(b: Backend, sql: &str) -> Result<audit::Verified, ChainBreak> {
    let (fresh, store) = populated_on(b, 9).await;
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
    fresh.sql(sql);
    let store = fresh.open().await.unwrap();
    let head = store.audit_head().await.unwrap();
    audit::verify(
        &store.audit_entries().await.unwrap(),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    )
}

async fn untouched_chain_verifies(b: Backend) {
    let v = verify_after(b, "SELECT 1").await.unwrap();
    assert_eq!(v.entries, 10);
}

async fn edited_entry_is_named(b: Backend) {
    let r = verify_after(
        b,
        "UPDATE audit SET actor = 'op-someone-else' WHERE seq = 4",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Edited { seq: 4 }));
}

async fn edited_outcome_is_named(b: Backend) {
    let r = verify_after(b, "UPDATE audit SET outcome = 'failed' WHERE seq = 7").await;
    assert_eq!(r, Err(ChainBreak::Edited { seq: 7 }));
}

async fn deleted_entry_is_named(b: Backend) {
    let r = verify_after(b, "DELETE FROM audit WHERE seq = 5").await;
    assert_eq!(r, Err(ChainBreak::Deleted { seq: 5, after: 4 }));
}

async fn deleted_tail_is_named(b: Backend) {
    let r = verify_after(b, "DELETE FROM audit WHERE seq = 10").await;
    assert_eq!(r, Err(ChainBreak::Deleted { seq: 10, after: 9 }));
}

async fn inserted_entry_is_named(b: Backend) {
    let r = verify_after(
        b,
        "INSERT INTO audit SELECT 11, at, actor, action, run_id, digest, outcome, detail, hash, 'forged', hv FROM audit WHERE seq = 10",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Inserted { seq: 11 }));
}

async fn inserted_entry_in_the_middle_is_named(b: Backend) {
    // Make room at 6 by shifting the tail up, then slip a copy of entry 5 in.
    let r = verify_after(
        b,
        "UPDATE audit SET seq = seq + 100 WHERE seq >= 6; UPDATE audit SET seq = seq - 99 WHERE seq >= 106;
         INSERT INTO audit SELECT 6, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv FROM audit WHERE seq = 5;
         UPDATE meta SET value = '11:' || (SELECT hash FROM audit WHERE seq = 11) WHERE key = 'audit_head';",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Inserted { seq: 6 }));
}

async fn reordered_entries_are_named(b: Backend) {
    let r = verify_after(
        b,
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -3;",
    )
    .await;
    assert_eq!(r, Err(ChainBreak::Reordered { seq: 3 }));
}

async fn export_verifies_standalone_and_detects_edits(b: Backend) {
    let (_f, store) = populated_on(b, 4).await;
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

/// `verify_store` reads the chain in chunks of 1,024 rows, two queries at once, and hashes
/// each batch on every core: one byte flipped in an entry in the middle of the fourth chunk
/// (the second read of the second batch) is still named, and the same chain untouched
/// verifies whole across every chunk.
async fn flipped_byte_mid_chunk_is_found_by_the_parallel_verifier(b: Backend) {
    let fresh = Fresh::new(b);
    let store = fresh.open().await.unwrap();
    store
        .create_run(
            NewRun {
                id: "r1".into(),
                plan_json: "{}".into(),
                digest: "d1".into(),
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: "staging".into(),
                author: "op-test".into(),
                override_reason: None,
                created_at: crate::common::at(0),
                workdir: "/tmp".into(),
            },
            record(
                "r1",
                0,
                EngineEvent::RunCreated {
                    release: "shop".into(),
                    version: "1.0.0".into(),
                    environment: "staging".into(),
                    digest: "d1".into(),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                },
            ),
        )
        .await
        .unwrap();
    for c in 0..10 {
        let batch = (0..500)
            .map(|i| {
                let n = c * 500 + i;
                record(
                    "r1",
                    n + 1,
                    EngineEvent::StepStarted {
                        step: format!("svc/s{n}"),
                        key: format!("k{n}"),
                        attempt: 1,
                    },
                )
            })
            .collect();
        store.commit(batch).await.unwrap();
    }
    let whole = audit::verify_store(&store).await.unwrap();
    assert_eq!(
        whole.result.map(|v| (v.entries, v.head_seq)),
        Ok((5001, 5001))
    );
    drop(store);
    fresh.sql(
        r#"UPDATE audit SET detail = replace(detail, '"attempt":1', '"attempt":7') WHERE seq = 3500"#,
    );
    let store = fresh.open().await.unwrap();
    let r = audit::verify_store(&store).await.unwrap().result;
    assert_eq!(r, Err(ChainBreak::Edited { seq: 3500 }));
}

on_disk!(
    flipped_byte_mid_chunk_is_found_by_the_parallel_verifier,
    untouched_chain_verifies,
    edited_entry_is_named,
    edited_outcome_is_named,
    deleted_entry_is_named,
    deleted_tail_is_named,
    inserted_entry_is_named,
    inserted_entry_in_the_middle_is_named,
    reordered_entries_are_named,
    export_verifies_standalone_and_detects_edits
);
