//! Migrations with statements that cannot run in a transaction, on real PostgreSQL (and
//! SQLite's VACUUM): applied in parts, progress recorded, an interruption detected by
//! `status` and resumed by the next `apply` — an INVALID index left by a concurrent build
//! whose connection died is dropped and built again, a build that finished is not repeated,
//! a changed file is refused, an unnamed concurrent index is refused before anything runs.

use std::time::Duration;

use slipway_migrate::{Error, apply, migrate::State, status, undo};
use sqlx::Connection;

use crate::common::{eventually, exec, migrations, pg, query_text, sqlite};

const V1: &str = "CREATE TABLE orders (id integer PRIMARY KEY, status text, total integer);\n\
                  INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 500) g;\n";
/// Three parts: a transactional one (two statements), the concurrent build, a backfill.
const V2: &str = "CREATE TABLE order_log (n integer);\n\
                  INSERT INTO order_log VALUES (1);\n\
                  CREATE INDEX CONCURRENTLY orders_status_idx ON orders (status);\n\
                  UPDATE orders SET total = id * 2;\n";
const U2: &str = "DROP INDEX CONCURRENTLY IF EXISTS orders_status_idx;\n\
                  DROP TABLE IF EXISTS order_log;\n";

async fn index_valid(url: &str, name: &str) -> Option<String> {
    query_text(
        url,
        &format!("SELECT indisvalid::text FROM pg_index WHERE indexrelid = to_regclass('{name}')"),
    )
    .await
    .into_iter()
    .next()
    .flatten()
}

#[tokio::test]
async fn a_concurrent_index_and_the_not_valid_then_validate_pattern_apply() {
    let url = pg().new_db("concurrent").await;
    let dir = migrations(&[
        ("V1__orders.sql", V1),
        ("V2__index.sql", V2),
        ("U2__index.sql", U2),
        (
            "V3__fk.sql",
            "CREATE TABLE customers (id integer PRIMARY KEY);\n\
             INSERT INTO customers VALUES (1);\n\
             ALTER TABLE orders ADD COLUMN customer_id integer;\n\
             UPDATE orders SET customer_id = 1;\n\
             ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;\n\
             ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk;\n\
             CREATE TYPE order_state AS ENUM ('new');\n",
        ),
        ("V4__enum.sql", "ALTER TYPE order_state ADD VALUE 'paid';\n"),
    ]);
    let r = apply(&url, dir.path(), "ci").await.unwrap();
    assert_eq!(
        r.applied.iter().map(|s| s.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        index_valid(&url, "orders_status_idx").await.as_deref(),
        Some("true")
    );
    assert_eq!(
        query_text(
            &url,
            "SELECT count(*)::text FROM orders WHERE total = id * 2"
        )
        .await,
        [Some("500".to_owned())]
    );
    assert_eq!(
        query_text(
            &url,
            "SELECT convalidated::text FROM pg_constraint WHERE conname = 'orders_customer_fk'"
        )
        .await,
        [Some("true".to_owned())]
    );
    let st = status(&url, dir.path()).await.unwrap();
    assert_eq!(st.applied, [1, 2, 3, 4]);
    assert!(st.in_progress.is_empty() && st.pending.is_empty());
    // Finished migrations leave no progress behind.
    assert_eq!(
        query_text(&url, "SELECT count(*)::text FROM slipway_schema_progress").await,
        [Some("0".to_owned())]
    );
    // Undo runs the U script in parts too (DROP INDEX CONCURRENTLY outside a transaction).
    let u = undo(&url, dir.path(), 1).await;
    assert!(
        matches!(&u, Err(Error::Irreversible { versions, .. }) if *versions == [3, 4]),
        "{u:?}"
    );
}

#[tokio::test]
async fn a_concurrent_build_whose_connection_died_is_seen_in_progress_and_rebuilt() {
    let url = pg().new_db("interrupted").await;
    let only_v1 = migrations(&[("V1__orders.sql", V1)]);
    apply(&url, only_v1.path(), "ci").await.unwrap();
    let dir = migrations(&[
        ("V1__orders.sql", V1),
        ("V2__index.sql", V2),
        ("U2__index.sql", U2),
    ]);

    // A writer holds a transaction open on orders: the concurrent build creates its
    // (INVALID) index, then waits for it.
    let mut writer = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO orders (id, status) VALUES (100000, 'held')")
        .execute(&mut writer)
        .await
        .unwrap();
    let applying = tokio::spawn({
        let (url, path) = (url.clone(), dir.path().to_owned());
        async move { apply(&url, &path, "ci").await }
    });
    assert!(
        eventually(Duration::from_secs(10), async || {
            index_valid(&url, "orders_status_idx").await.as_deref() == Some("false")
                && !query_text(
                    &url,
                    "SELECT pid::text FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'",
                )
                .await
                .is_empty()
        })
        .await,
        "the concurrent build never started waiting"
    );
    // The connection dies mid-build (what the server does when the client is gone).
    exec(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%'",
    )
    .await;
    let err = applying.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PartFailed {
                version: 2,
                part: 2,
                total: 3,
                ..
            }
        ),
        "{err}"
    );
    sqlx::raw_sql("COMMIT").execute(&mut writer).await.unwrap();
    writer.close().await.unwrap();

    let st = status(&url, dir.path()).await.unwrap();
    assert_eq!(st.in_progress, [2]);
    assert!(st.pending.contains(&2));
    let e = st.entries.iter().find(|e| e.version == 2).unwrap();
    assert_eq!(e.state, State::InProgress);
    let p = e.progress.as_ref().unwrap();
    assert_eq!((p.done, p.total), (1, 3), "the first part is committed");
    assert_eq!(
        index_valid(&url, "orders_status_idx").await.as_deref(),
        Some("false")
    );

    // The next apply continues: the first part is not run again, the INVALID index is
    // rebuilt, the backfill runs.
    let r = apply(&url, dir.path(), "ci").await.unwrap();
    assert_eq!(r.applied.len(), 1);
    let notes = r.applied[0].notes.join("\n");
    assert!(notes.contains("resumed after part 1 of 3"), "{notes}");
    assert!(notes.contains("INVALID"), "{notes}");
    assert_eq!(
        index_valid(&url, "orders_status_idx").await.as_deref(),
        Some("true")
    );
    assert_eq!(
        query_text(&url, "SELECT count(*)::text FROM order_log").await,
        [Some("1".to_owned())]
    );
    assert_eq!(
        query_text(
            &url,
            "SELECT count(*)::text FROM orders WHERE total = id * 2"
        )
        .await,
        [Some("501".to_owned())]
    );
    let st = status(&url, dir.path()).await.unwrap();
    assert_eq!(st.applied, [1, 2]);
    assert!(st.in_progress.is_empty());

    // A version in progress is undone like an applied one; here it is applied.
    let u = undo(&url, dir.path(), 1).await.unwrap();
    assert_eq!(u.undone.len(), 1);
    assert_eq!(index_valid(&url, "orders_status_idx").await, None);
}

#[tokio::test]
async fn a_build_finished_before_the_crash_is_not_repeated_and_a_changed_file_is_refused() {
    let url = pg().new_db("resume").await;
    let only_v1 = migrations(&[("V1__orders.sql", V1)]);
    apply(&url, only_v1.path(), "ci").await.unwrap();
    let dir = migrations(&[("V1__orders.sql", V1), ("V2__index.sql", V2)]);
    let checksum = status(&url, dir.path()).await.unwrap().entries[1]
        .file_checksum
        .clone()
        .unwrap();
    // What a crash right after the concurrent build (before its progress was written)
    // leaves: part 1 recorded, the index built and valid.
    exec(
        &url,
        &format!(
            "CREATE TABLE slipway_schema_progress (version BIGINT PRIMARY KEY, checksum TEXT NOT NULL, done BIGINT NOT NULL, total BIGINT NOT NULL, applied_by TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL);
             INSERT INTO slipway_schema_progress VALUES (2, '{checksum}', 1, 3, 'ci', 'then', 'then');
             CREATE TABLE order_log (n integer);
             INSERT INTO order_log VALUES (1);
             CREATE INDEX orders_status_idx ON orders (status);"
        ),
    )
    .await;
    let oid_before = query_text(&url, "SELECT 'orders_status_idx'::regclass::oid::text").await;

    // Edited while in progress: refused, nothing run.
    std::fs::write(dir.path().join("V2__index.sql"), format!("{V2}-- edited\n")).unwrap();
    let err = apply(&url, dir.path(), "ci").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ResumeChanged {
                version: 2,
                done: 1,
                total: 3,
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(dir.path().join("V2__index.sql"), V2).unwrap();

    let r = apply(&url, dir.path(), "ci").await.unwrap();
    let notes = r.applied[0].notes.join("\n");
    assert!(notes.contains("built before the interruption"), "{notes}");
    assert_eq!(
        query_text(&url, "SELECT 'orders_status_idx'::regclass::oid::text").await,
        oid_before,
        "the index was not built again"
    );
    assert_eq!(status(&url, dir.path()).await.unwrap().applied, [1, 2]);
}

#[tokio::test]
async fn an_unnamed_concurrent_index_is_refused_before_anything_runs() {
    let url = pg().new_db("unnamed").await;
    let dir = migrations(&[
        ("V1__orders.sql", V1),
        (
            "V2__index.sql",
            "ALTER TABLE orders ADD COLUMN note text;\nCREATE INDEX CONCURRENTLY ON orders (status);\n",
        ),
    ]);
    let err = apply(&url, dir.path(), "ci").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("line 2") && text.contains("name it"),
        "{text}"
    );
    assert!(
        query_text(
            &url,
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'note'"
        )
        .await
        .is_empty(),
        "V2's first statement must not have run"
    );
    assert_eq!(status(&url, dir.path()).await.unwrap().applied, [1]);
}

#[tokio::test]
async fn sqlite_vacuum_runs_outside_the_transaction() {
    let (_guard, url) = sqlite();
    let dir = migrations(&[(
        "V1__vacuum.sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY);\nINSERT INTO t VALUES (1), (2);\nVACUUM;\nDELETE FROM t WHERE id = 2;\n",
    )]);
    let r = apply(&url, dir.path(), "ci").await.unwrap();
    assert_eq!(r.applied.len(), 1);
    assert_eq!(
        query_text(&url, "SELECT group_concat(id) FROM t").await,
        [Some("1".to_owned())]
    );
    assert_eq!(status(&url, dir.path()).await.unwrap().applied, [1]);
}
