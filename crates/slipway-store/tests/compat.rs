//! Journal format compatibility: an older format is migrated, a newer one and an
//! unmigratable older one are refused with a clear message, never misread.

use slipway_engine::store::{Store, StoreError};
use slipway_store::SqliteStore;
use slipway_store::schema::{JOURNAL_FORMAT, MIGRATIONS};

use crate::common::sqlite3;

fn v1_store(db: &std::path::Path) {
    sqlite3(db, MIGRATIONS[0]);
    sqlite3(
        db,
        "INSERT INTO meta VALUES ('journal_format', '1');
         INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at)
         VALUES ('old-run', 'd0', 'shop', '0.9.0', 'staging', 'op-x', 'succeeded', NULL, '{}', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');",
    );
}

#[tokio::test]
async fn format_1_is_migrated_and_its_runs_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    v1_store(&db);
    let store = SqliteStore::open(&db).await.unwrap();
    let run = store.run("old-run").await.unwrap().unwrap();
    assert_eq!(run.version, "0.9.0");
    assert_eq!(run.control, None);
    // The identity table of format 2 exists now.
    let id = store.pseudonym("alice").await.unwrap();
    assert_eq!(store.identity(&id).await.unwrap().as_deref(), Some("alice"));
    drop(store);
    let v = sqlite3(&db, "SELECT value FROM meta WHERE key = 'journal_format'");
    assert_eq!(v.trim(), JOURNAL_FORMAT.to_string());
}

#[tokio::test]
async fn format_2_is_migrated_with_an_empty_lease_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v2.db");
    v1_store(&db);
    sqlite3(&db, MIGRATIONS[1]);
    sqlite3(
        &db,
        "UPDATE meta SET value = '2' WHERE key = 'journal_format';
         UPDATE runs SET workdir = '/srv/shop', control = 'pause' WHERE id = 'old-run';",
    );
    let store = SqliteStore::open(&db).await.unwrap();
    let run = store.run("old-run").await.unwrap().unwrap();
    assert_eq!(run.workdir, "/srv/shop");
    assert!(store.leases().await.unwrap().is_empty());
    let req = slipway_engine::store::LeaseRequest {
        environment: "staging".into(),
        holder: "new-run".into(),
        release: "shop 1.0.0".into(),
        now: jiff::Timestamp::UNIX_EPOCH,
        ttl: std::time::Duration::from_secs(5),
    };
    assert!(matches!(
        store.acquire_lease(req).await.unwrap(),
        slipway_engine::store::LeaseOutcome::Granted { .. }
    ));
    drop(store);
    let v = sqlite3(&db, "SELECT value FROM meta WHERE key = 'journal_format'");
    assert_eq!(v.trim(), JOURNAL_FORMAT.to_string());
}

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    drop(SqliteStore::open(&db).await.unwrap());
    sqlite3(
        &db,
        "UPDATE meta SET value = '99' WHERE key = 'journal_format'",
    );
    let err = SqliteStore::open(&db).await.unwrap_err();
    assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("written by a newer slipway"), "{msg}");
    assert!(msg.contains("journal format 99"), "{msg}");
}

#[tokio::test]
async fn an_unmigratable_older_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ancient.db");
    sqlite3(
        &db,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('journal_format', '0');",
    );
    let msg = SqliteStore::open(&db).await.unwrap_err().to_string();
    assert!(msg.contains("older than this build can migrate"), "{msg}");
}

#[tokio::test]
async fn a_foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("other.db");
    sqlite3(&db, "CREATE TABLE users (id INTEGER)");
    let msg = SqliteStore::open(&db).await.unwrap_err().to_string();
    assert!(msg.contains("not a slipway store"), "{msg}");
}

#[test]
fn store_urls_resolve() {
    use slipway_store::{StoreLocation, resolve};
    let cwd = std::path::Path::new("/w");
    assert_eq!(
        resolve(None, cwd).unwrap(),
        StoreLocation::Sqlite("/w/.slipway/slipway.db".into())
    );
    assert_eq!(
        resolve(Some("sqlite://x/y.db"), cwd).unwrap(),
        StoreLocation::Sqlite("/w/x/y.db".into())
    );
    assert_eq!(
        resolve(Some("sqlite:///abs/y.db"), cwd).unwrap(),
        StoreLocation::Sqlite("/abs/y.db".into())
    );
    assert_eq!(
        resolve(Some("postgres://u:pw@h:5432/db"), cwd).unwrap(),
        StoreLocation::Postgres("postgres://u:pw@h:5432/db".into())
    );
    assert_eq!(
        resolve(Some("postgresql://h/db"), cwd).unwrap(),
        StoreLocation::Postgres("postgresql://h/db".into())
    );
    // The password never reaches a debug print or a message.
    let loc = resolve(Some("postgres://u:pw@h/db"), cwd).unwrap();
    assert_eq!(loc.display(), "postgres://u:***@h/db");
    assert!(!format!("{loc:?}").contains("pw"), "{loc:?}");
    let msg = resolve(Some("mysql://u:pw@h/db"), cwd)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("use sqlite://PATH"), "{msg}");
    assert!(
        msg.contains("postgres://USER:PASSWORD@HOST:PORT/DB"),
        "{msg}"
    );
    assert!(!msg.contains(":pw@"), "{msg}");
}
