//! Dry runs on clones: undo that restores the schema, undo that does not (with the
//! differences), a connected application session on PostgreSQL that survives, and the
//! clone is always dropped.

use slipway_migrate::{DryRunOptions, apply, dry_run, dry_run_with, status};
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
        let r = dry_run(&url, dir.path()).await.unwrap();
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
        let r = dry_run(&url, dir.path()).await.unwrap();
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
        let r = dry_run(&url, dir.path()).await.unwrap();
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
        let r = dry_run(&url, dir.path()).await.unwrap();
        assert!(r.apply_error.as_deref().unwrap().contains("V2"), "{r:#?}");
        assert_eq!(r.steps.len(), 1);
        // V1 was applied and undone on the clone, so the schema is back to empty.
        assert!(r.undo_restores_schema, "{r:#?}");
        assert!(r.clone_dropped);
        assert!(leftover_clones(&url).await.is_empty());
    }
}

/// Production always has application sessions: the dry run must clone around them, not
/// wait for them, not end them. The application here holds a session in the middle of a
/// transaction (a row inserted, not committed) through the whole dry run; it must still
/// be the same backend afterwards and commit. A clone by `CREATE DATABASE … TEMPLATE
/// source` fails this test (PostgreSQL refuses while anyone is connected to the source),
/// and so does terminating the session.
#[tokio::test]
async fn postgres_dry_run_clones_around_a_connected_application_session() {
    let url = pg().new_db("dry_live").await;
    let dir = migrations(BASE);
    apply(&url, dir.path(), "ci").await.unwrap();
    crate::common::exec(&url, "INSERT INTO customers (id, name) VALUES (1, 'a');").await;
    std::fs::write(
        dir.path().join("V2__email.sql"),
        "ALTER TABLE customers ADD COLUMN email TEXT;",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("U2__email.sql"),
        "ALTER TABLE customers DROP COLUMN email;",
    )
    .unwrap();

    let mut app = sqlx::PgConnection::connect(&url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut app)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut app).await.unwrap();
    sqlx::query("INSERT INTO customers (id, name) VALUES (2, 'in flight')")
        .execute(&mut app)
        .await
        .unwrap();

    let r = dry_run(&url, dir.path()).await.unwrap();
    assert!(r.passed(), "{r:#?}");
    assert_eq!(
        r.steps.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![2]
    );
    assert!(r.clone_method.contains("pg_dump"), "{r:#?}");
    assert_eq!(
        r.migration_set,
        slipway_migrate::MigrationSet::load(dir.path())
            .unwrap()
            .digest()
    );
    assert!(r.clone_dropped && leftover_clones(&url).await.is_empty());

    // The application's session is the same backend, its transaction still open: it
    // commits, and its row is there.
    let still: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut app)
        .await
        .expect("the application's session survived the dry run");
    assert_eq!(still, pid);
    sqlx::query("COMMIT").execute(&mut app).await.unwrap();
    let names = query_text(&url, "SELECT name FROM customers ORDER BY id").await;
    assert_eq!(
        names,
        vec![Some("a".to_owned()), Some("in flight".to_owned())]
    );
    // The source was not migrated.
    assert_eq!(status(&url, dir.path()).await.unwrap().pending, vec![2]);
}

/// The scratch database may live on another server (here: named by a different
/// maintenance database URL of the harness's server, which is all a second server changes
/// for this code: where CREATE/DROP DATABASE and the restore go).
#[tokio::test]
async fn postgres_dry_run_on_a_named_clone_server() {
    let url = pg().new_db("dry_server").await;
    let dir = migrations(BASE);
    let _app = sqlx::PgConnection::connect(&url).await.unwrap();
    let r = dry_run_with(
        &url,
        dir.path(),
        &DryRunOptions {
            clone_server: Some(pg().url("template1")),
        },
    )
    .await
    .unwrap();
    assert!(r.passed(), "{r:#?}");
    assert!(
        r.clone_server.as_deref().unwrap().ends_with("/template1"),
        "{r:#?}"
    );
    assert!(r.clone_dropped && leftover_clones(&url).await.is_empty());
}
