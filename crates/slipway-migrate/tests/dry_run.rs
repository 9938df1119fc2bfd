//! Dry runs on clones: undo that restores the schema, undo that does not (with the
//! differences), blocking sessions on PostgreSQL, and the clone is always dropped.

use slipway_migrate::{Error, apply, dry_run, status};
use sqlx::Connection;

use crate::common::{both, migrations, pg, query_text};

const BASE: &[(&str, &str)] = &[
    (
        "V1__customers.sql",
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
    ),
    ("U1__customers.sql", "DROP TABLE customers;"),
];

/// Clones of this test's database that still exist (a leaked clone would show here).
async fn leftover_clones(url: &str) -> Vec<String> {
    if url.starts_with("postgres") {
        let db = url.rsplit('/').next().unwrap();
        query_text(
            &pg().url("postgres"),
            &format!("SELECT datname::text FROM pg_database WHERE datname LIKE '{db}_dryrun%'"),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    } else {
        let dir = crate::common::path_of(url).parent().unwrap();
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("dryrun"))
            .collect()
    }
}

#[tokio::test]
async fn reversible_migrations_restore_the_schema_and_leave_the_source_alone() {
    for (_guard, url) in both("dry_ok").await {
        let dir = migrations(BASE);
        apply(&url, dir.path(), "ci").await.unwrap();
        crate::common::exec(
            &url,
            "INSERT INTO customers (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        )
        .await;
        for (name, sql) in [
            (
                "V2__email.sql",
                "ALTER TABLE customers ADD COLUMN email TEXT DEFAULT 'none' NOT NULL;\nCREATE UNIQUE INDEX customers_name ON customers (name);",
            ),
            (
                "U2__email.sql",
                "DROP INDEX customers_name;\nALTER TABLE customers DROP COLUMN email;",
            ),
            (
                "V3__orders.sql",
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL REFERENCES customers (id), total NUMERIC(10, 2) CHECK (total >= 0));\nUPDATE customers SET name = name || '!';",
            ),
            (
                "U3__orders.sql",
                "DROP TABLE orders;\nUPDATE customers SET name = rtrim(name, '!');",
            ),
        ] {
            std::fs::write(dir.path().join(name), sql).unwrap();
        }
        let r = dry_run(&url, dir.path(), false).await.unwrap();
        assert!(r.passed(), "{url}: {r:#?}");
        assert!(r.undo_restores_schema && r.schema_differences.is_empty());
        assert_eq!(
            r.steps.iter().map(|s| s.version).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(r.steps[1].rows_affected, 3, "UPDATE of 3 rows: {r:#?}");
        assert!(r.steps.iter().all(|s| s.undo_ms.is_some()));
        assert!(r.clone_dropped, "{r:#?}");
        assert!(leftover_clones(&url).await.is_empty());
        // The source was not touched.
        assert_eq!(status(&url, dir.path()).await.unwrap().pending, vec![2, 3]);
    }
}

#[tokio::test]
async fn undo_that_does_not_restore_is_reported_with_differences() {
    for (_guard, url) in both("dry_bad").await {
        let dir = migrations(BASE);
        apply(&url, dir.path(), "ci").await.unwrap();
        for (name, sql) in [
            (
                "V2__email.sql",
                "ALTER TABLE customers ADD COLUMN email TEXT;\nCREATE INDEX customers_email ON customers (email);\nCREATE TABLE audit (id INTEGER);",
            ),
            // Forgets the column and the audit table.
            ("U2__email.sql", "DROP INDEX customers_email;"),
            ("V3__no_undo.sql", "CREATE TABLE forever (id INTEGER);"),
        ] {
            std::fs::write(dir.path().join(name), sql).unwrap();
        }
        let r = dry_run(&url, dir.path(), false).await.unwrap();
        assert!(!r.passed());
        assert!(!r.undo_restores_schema);
        // V3 has no undo, so nothing older was undone either.
        assert_eq!(r.roll_forward_only, vec![3]);
        assert!(r.undo_error.as_deref().unwrap().contains("V3"), "{r:#?}");
        let diffs = r.schema_differences.join("\n");
        assert!(
            diffs.contains("forever") && diffs.contains("left over"),
            "{url}: {diffs}"
        );

        // Now with V3 removed: U2 runs but leaves the column and the audit table.
        std::fs::remove_file(dir.path().join("V3__no_undo.sql")).unwrap();
        let r = dry_run(&url, dir.path(), false).await.unwrap();
        assert!(r.undo_error.is_none() && r.apply_error.is_none(), "{r:#?}");
        assert!(!r.undo_restores_schema);
        let diffs = r.schema_differences.join("\n");
        assert!(
            diffs.contains("email: left over after undo"),
            "{url}: {diffs}"
        );
        assert!(
            diffs.contains("audit: left over after undo"),
            "{url}: {diffs}"
        );
        assert!(
            !diffs.contains("customers_email"),
            "the index was undone: {diffs}"
        );
        assert!(r.clone_dropped);
        assert!(leftover_clones(&url).await.is_empty());
    }
}

#[tokio::test]
async fn failing_migration_is_reported_and_the_clone_dropped() {
    for (_guard, url) in both("dry_fail").await {
        let dir = migrations(BASE);
        crate::common::exec(&url, "CREATE TABLE keep (id INTEGER);").await;
        std::fs::write(
            dir.path().join("V2__broken.sql"),
            "ALTER TABLE no_such_table ADD COLUMN x INTEGER;",
        )
        .unwrap();
        let r = dry_run(&url, dir.path(), false).await.unwrap();
        assert!(r.apply_error.as_deref().unwrap().contains("V2"), "{r:#?}");
        assert_eq!(r.steps.len(), 1);
        // V1 was applied and undone on the clone, so the schema is back to empty.
        assert!(r.undo_restores_schema, "{r:#?}");
        assert!(r.clone_dropped);
        assert!(leftover_clones(&url).await.is_empty());
    }
}

#[tokio::test]
async fn postgres_clone_blocked_by_sessions_unless_terminating_is_allowed() {
    let url = pg().new_db("dry_block").await;
    let dir = migrations(BASE);
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let err = dry_run(&url, dir.path(), false).await.unwrap_err();
    assert!(matches!(err, Error::CloneBlocked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("pid ") && msg.contains("allow_terminate"),
        "{msg}"
    );
    sqlx::query("SELECT 1")
        .execute(&mut holder)
        .await
        .expect("not terminated when not allowed");

    let r = dry_run(&url, dir.path(), true).await.unwrap();
    assert_eq!(r.terminated_sessions.len(), 1, "{r:#?}");
    assert!(r.passed(), "{r:#?}");
    assert!(
        sqlx::query("SELECT 1").execute(&mut holder).await.is_err(),
        "the session was terminated"
    );
}
