//! `verify_store` on an SQLite file whose reader threads' reads fail (pages of the audit
//! table corrupted in place under their open connections): an error naming the store,
//! never a pass or a tamper verdict, never a hang; the pages back, the same store handle
//! (the threads reopen a connection after a failed read) verifies the chain whole again.
//! The reader itself, on one thread so the reopened connection is known, is tested in
//! `src/audit_read.rs`.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::Duration;

use slipway_engine::audit::{self, StoreVerification};
use slipway_engine::store::StoreError;

use crate::common::{Backend, large_chain, sqlite3};

/// The page size and the leaf pages of the audit table but its first and last (which
/// the bounds query reads), in key order.
fn middle_leaves(db: &Path) -> (u64, Vec<u64>) {
    let size: u64 = sqlite3(db, "PRAGMA page_size").trim().parse().unwrap();
    let pages: Vec<u64> = sqlite3(
        db,
        "SELECT pageno FROM dbstat WHERE name = 'audit' AND pagetype = 'leaf' ORDER BY path",
    )
    .lines()
    .map(|l| l.trim().parse().unwrap())
    .collect();
    assert!(pages.len() > 4, "{pages:?}");
    (size, pages[1..pages.len() - 1].to_vec())
}

/// Set the first byte (the b-tree page type) of each page to the matching one of
/// `bytes`, in place (the file's size unchanged); what each held.
fn set_page_type(db: &Path, size: u64, pages: &[u64], bytes: &[u8]) -> Vec<u8> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .unwrap();
    let mut was = Vec::new();
    for (p, b) in pages.iter().zip(bytes) {
        let mut old = [0u8];
        f.seek(SeekFrom::Start((p - 1) * size)).unwrap();
        f.read_exact(&mut old).unwrap();
        was.push(old[0]);
        f.seek(SeekFrom::Start((p - 1) * size)).unwrap();
        f.write_all(&[*b]).unwrap();
    }
    f.sync_all().unwrap();
    was
}

async fn verify(store: &slipway_store::AnyStore) -> Result<StoreVerification, StoreError> {
    tokio::time::timeout(Duration::from_secs(120), audit::verify_store(store))
        .await
        .expect("verify answers, never hangs, when a read fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_fails_under_verify_names_the_store_and_the_next_verify_passes() {
    let (fresh, store) = large_chain(Backend::Sqlite).await;
    let db = Path::new(fresh.url.strip_prefix("sqlite://").unwrap()).to_owned();
    // Every page in the file, none in the WAL: the pages changed below are those read.
    assert_eq!(
        sqlite3(&db, "PRAGMA wal_checkpoint(TRUNCATE)").trim(),
        "0|0|0"
    );
    let whole = verify(&store).await.unwrap().result.map(|v| v.entries);
    assert_eq!(whole, Ok(5001));

    let (size, pages) = middle_leaves(&db);
    let was = set_page_type(&db, size, &pages, &vec![0xff; pages.len()]);
    match verify(&store).await {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains(&db.display().to_string()), "{e}");
            assert!(e.contains("malformed"), "{e}");
        }
        Ok(v) => panic!("unreadable pages gave a verdict: {:?}", v.result),
    }

    set_page_type(&db, size, &pages, &was);
    for _ in 0..3 {
        let again = verify(&store).await.unwrap().result.map(|v| v.entries);
        assert_eq!(again, Ok(5001));
    }
    fresh.sql("UPDATE audit SET actor = 'op-someone-else' WHERE seq = 2500");
    let edited = verify(&store).await.unwrap().result;
    assert_eq!(edited, Err(audit::ChainBreak::Edited { seq: 2500 }));
}
