//! The audit chain detects rows edited, deleted, inserted or reordered with the backend's
//! own CLI (sqlite3, psql), and names the first bad entry — on both backends.

use slipway_engine::audit::{self, ChainBreak};
use slipway_engine::store::Store;

use crate::common::{Backend, large_chain, on_disk, populated_on};

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

/// `verify_store` reads the chain in ranges of 1,024 seqs, several at once, each hashed
/// where it is read: one byte flipped in an entry in the middle of the fourth range is
/// still named, and the same chain untouched verifies whole across every range.
async fn flipped_byte_mid_chunk_is_found_by_the_parallel_verifier(b: Backend) {
    let (fresh, store) = large_chain(b).await;
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

/// `text` with the middle byte's lowest bit flipped (ASCII stays ASCII), as an SQL literal.
fn flipped_literal(text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    literal(&String::from_utf8(b).unwrap())
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One byte changed in any hashed column of one entry in the middle of a large chain —
/// at a chunk's start, its end, mid-chunk, in the first and second read of a batch — is
/// found by the chunked, parallel verifier and named; each edit undone, the chain
/// verifies whole again (so every case starts from a good chain). The scheme column too:
/// an entry claiming the other scheme hashes differently.
async fn one_byte_in_any_covered_field_is_named(b: Backend) {
    let (fresh, store) = large_chain(b).await;
    let whole = audit::verify_store(&store).await.unwrap();
    assert_eq!(
        whole.result.map(|v| (v.entries, v.head_seq)),
        Ok((5001, 5001))
    );
    let entries = store.audit_entries().await.unwrap();
    drop(store);
    let columns = [
        "at",
        "actor",
        "action",
        "run_id",
        "digest",
        "outcome",
        "detail",
        "prev_hash",
        "hash",
    ];
    let seqs = [1024_i64, 1025, 2048, 2049, 3500, 4097, 2600, 1800, 3001];
    for (col, seq) in columns.iter().zip(seqs) {
        let e = &entries[usize::try_from(seq - 1).unwrap()];
        assert_eq!(e.seq, seq);
        let value = match *col {
            "at" => &e.at,
            "actor" => &e.actor,
            "action" => &e.action,
            "run_id" => &e.run_id,
            "digest" => &e.digest,
            "outcome" => &e.outcome,
            "detail" => &e.detail,
            "prev_hash" => &e.prev_hash,
            _ => &e.hash,
        };
        assert!(!value.is_empty(), "{col} of entry {seq} is empty");
        fresh.sql(&format!(
            "UPDATE audit SET {col} = {} WHERE seq = {seq}",
            flipped_literal(value)
        ));
        let store = fresh.open().await.unwrap();
        let r = audit::verify_store(&store).await.unwrap().result;
        assert_eq!(r, Err(ChainBreak::Edited { seq }), "{col} of entry {seq}");
        drop(store);
        fresh.sql(&format!(
            "UPDATE audit SET {col} = {} WHERE seq = {seq}",
            literal(value)
        ));
        let store = fresh.open().await.unwrap();
        let r = audit::verify_store(&store).await.unwrap().result;
        assert_eq!(
            r.map(|v| v.entries),
            Ok(5001),
            "{col} of entry {seq} undone"
        );
    }
    fresh.sql("UPDATE audit SET hv = 1 WHERE seq = 2222");
    let store = fresh.open().await.unwrap();
    let r = audit::verify_store(&store).await.unwrap().result;
    assert_eq!(
        r,
        Err(ChainBreak::Edited { seq: 2222 }),
        "scheme of entry 2222"
    );
}

/// A row deleted from, or two rows swapped in, the middle of a large chain are found by
/// the chunked verifier and named.
async fn deleted_or_swapped_row_mid_chain_is_named(b: Backend) {
    let (fresh, store) = large_chain(b).await;
    drop(store);
    fresh.sql(
        "UPDATE audit SET seq = -1 WHERE seq = 2000; UPDATE audit SET seq = 2000 WHERE seq = 3333; UPDATE audit SET seq = 3333 WHERE seq = -1;",
    );
    let store = fresh.open().await.unwrap();
    let r = audit::verify_store(&store).await.unwrap().result;
    assert_eq!(r, Err(ChainBreak::Reordered { seq: 2000 }));
    drop(store);
    fresh.sql(
        "UPDATE audit SET seq = -1 WHERE seq = 2000; UPDATE audit SET seq = 2000 WHERE seq = 3333; UPDATE audit SET seq = 3333 WHERE seq = -1;",
    );
    let store = fresh.open().await.unwrap();
    let r = audit::verify_store(&store).await.unwrap().result;
    assert_eq!(r.map(|v| v.entries), Ok(5001), "swap undone");
    drop(store);
    fresh.sql("DELETE FROM audit WHERE seq = 3072");
    let store = fresh.open().await.unwrap();
    let r = audit::verify_store(&store).await.unwrap().result;
    assert_eq!(
        r,
        Err(ChainBreak::Deleted {
            seq: 3072,
            after: 3071
        })
    );
}

on_disk!(
    one_byte_in_any_covered_field_is_named,
    deleted_or_swapped_row_mid_chain_is_named,
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
