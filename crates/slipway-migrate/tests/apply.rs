//! status / apply / undo on both backends: order, checksum refusal, failed migration rolls
//! back, out-of-order and missing versions, irreversible migrations.

use slipway_migrate::{Error, apply, migrate::State, status, undo};

use crate::common::{both, migrations, query_text};

const V1: &str = "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);";
const U1: &str = "DROP TABLE customers;";
const V2: &str = "INSERT INTO customers (id, name) VALUES (1, 'a'), (2, 'b');";
const U2: &str = "DELETE FROM customers WHERE id IN (1, 2);";

#[tokio::test]
async fn apply_records_history_then_undo_reverses() {
    for (_guard, url) in both("apply").await {
        let dir = migrations(&[
            ("V1__customers.sql", V1),
            ("U1__customers.sql", U1),
            ("V2__seed.sql", V2),
            ("U2__seed.sql", U2),
            ("README.md", "not a migration"),
        ]);
        let st = status(&url, dir.path()).await.unwrap();
        assert_eq!(st.pending, vec![1, 2], "{url}");
        assert!(st.applied.is_empty());

        let report = apply(&url, dir.path(), "alice").await.unwrap();
        let versions: Vec<i64> = report.applied.iter().map(|s| s.version).collect();
        assert_eq!(versions, vec![1, 2]);
        assert_eq!(report.applied[1].rows_affected, 2, "{url}");
        assert_eq!(report.latest_applied, Some(2));

        let st = status(&url, dir.path()).await.unwrap();
        assert_eq!(st.applied, vec![1, 2]);
        assert!(st.pending.is_empty() && st.is_clean());
        let h = st.entries[0].history.as_ref().unwrap();
        assert_eq!(h.applied_by, "alice");
        assert_eq!(h.checksum.len(), 64);

        // Applying again does nothing.
        assert!(
            apply(&url, dir.path(), "alice")
                .await
                .unwrap()
                .applied
                .is_empty()
        );

        let u = undo(&url, dir.path(), 0).await.unwrap();
        let undone: Vec<i64> = u.undone.iter().map(|s| s.version).collect();
        assert_eq!(undone, vec![2, 1], "newest first");
        assert_eq!(u.latest_applied, None);
        assert_eq!(status(&url, dir.path()).await.unwrap().pending, vec![1, 2]);
    }
}

#[tokio::test]
async fn changed_file_is_refused_with_both_checksums() {
    for (_guard, url) in both("checksum").await {
        let dir = migrations(&[("V1__customers.sql", V1)]);
        apply(&url, dir.path(), "ci").await.unwrap();
        let recorded = status(&url, dir.path()).await.unwrap().entries[0]
            .history
            .clone()
            .unwrap()
            .checksum;
        std::fs::write(
            dir.path().join("V1__customers.sql"),
            format!("{V1}\n-- edited"),
        )
        .unwrap();
        std::fs::write(dir.path().join("V2__seed.sql"), V2).unwrap();
        let err = apply(&url, dir.path(), "ci").await.unwrap_err();
        let Error::ChecksumMismatch {
            version,
            recorded: r,
            current,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(*version, 1);
        assert_eq!(*r, recorded);
        assert_ne!(*current, recorded);
        let msg = err.to_string();
        assert!(
            msg.contains(&recorded) && msg.contains(current.as_str()),
            "{msg}"
        );
        // Nothing after the refusal ran.
        let st = status(&url, dir.path()).await.unwrap();
        assert_eq!(st.checksum_mismatch, vec![1]);
        assert_eq!(st.pending, vec![2]);
    }
}

#[tokio::test]
async fn failed_migration_leaves_no_partial_change() {
    for (_guard, url) in both("failed").await {
        let dir = migrations(&[
            ("V1__customers.sql", V1),
            // DDL and data, then an error: everything of V2 must be rolled back.
            (
                "V2__broken.sql",
                "CREATE TABLE orders (id INTEGER PRIMARY KEY);\n\
                 INSERT INTO customers (id, name) VALUES (10, 'x');\n\
                 INSERT INTO customers (id, name) VALUES (10, 'duplicate key');",
            ),
            ("V3__after.sql", "CREATE TABLE after_broken (id INTEGER);"),
        ]);
        let err = apply(&url, dir.path(), "ci").await.unwrap_err();
        assert!(
            matches!(err, Error::MigrationFailed { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("V2__broken.sql"), "{err}");

        let tables = query_text(
            &url,
            if url.starts_with("postgres") {
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
            } else {
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY 1"
            },
        )
        .await;
        let tables: Vec<String> = tables.into_iter().flatten().collect();
        assert_eq!(tables, vec!["customers", "slipway_schema_history"], "{url}");
        let rows = query_text(&url, "SELECT CAST(count(*) AS TEXT) FROM customers").await;
        assert_eq!(rows, vec![Some("0".to_owned())]);

        let st = status(&url, dir.path()).await.unwrap();
        assert_eq!(st.applied, vec![1]);
        assert_eq!(st.pending, vec![2, 3]);
        assert_eq!(st.failed, vec![2], "the failed attempt is recorded");
    }
}

#[tokio::test]
async fn out_of_order_missing_and_irreversible_are_reported() {
    for (_guard, url) in both("order").await {
        let dir = migrations(&[
            ("V1__customers.sql", V1),
            ("U1__customers.sql", U1),
            ("V3__three.sql", "CREATE TABLE three (id INTEGER);"),
        ]);
        apply(&url, dir.path(), "ci").await.unwrap();
        std::fs::write(
            dir.path().join("V2__late.sql"),
            "CREATE TABLE late (id INTEGER);",
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("V3__three.sql")).unwrap();
        let st = status(&url, dir.path()).await.unwrap();
        assert_eq!(st.out_of_order, vec![2]);
        assert_eq!(st.missing, vec![3]);
        assert_eq!(st.roll_forward_only, vec![2]);
        assert_eq!(
            st.entries.iter().find(|e| e.version == 3).unwrap().state,
            State::Missing
        );
        let err = apply(&url, dir.path(), "ci").await.unwrap_err();
        assert!(
            matches!(err, Error::OutOfOrder { ref versions, latest: 3 } if versions == &[2]),
            "{err}"
        );

        // Undo past V3, whose file is gone, is refused before anything changes.
        let err = undo(&url, dir.path(), 0).await.unwrap_err();
        assert!(
            matches!(err, Error::UndoMissing { version: 3, .. }),
            "{err}"
        );
        assert_eq!(status(&url, dir.path()).await.unwrap().missing, vec![3]);
    }
}

#[tokio::test]
async fn undo_refuses_roll_forward_only_migrations() {
    for (_guard, url) in both("irrev").await {
        let dir = migrations(&[
            ("V1__customers.sql", V1),
            ("U1__customers.sql", U1),
            ("V2__seed.sql", V2),
        ]);
        let report = apply(&url, dir.path(), "ci").await.unwrap();
        assert_eq!(report.roll_forward_only, vec![2]);
        let err = undo(&url, dir.path(), 0).await.unwrap_err();
        assert!(
            matches!(err, Error::Irreversible { ref versions, .. } if versions == &[2]),
            "{err}"
        );
        assert_eq!(
            status(&url, dir.path()).await.unwrap().applied,
            vec![1, 2],
            "nothing undone"
        );
    }
}
