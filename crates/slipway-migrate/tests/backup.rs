//! Backup + restore round trip on both backends (real pg_dump/pg_restore), content
//! addressing, and refusal of a tampered backup.

use slipway_migrate::{Error, backup, backup::load, restore};

use crate::common::{both, exec, query_text};

const ROWS: &str = "SELECT CAST(id AS TEXT) || ':' || name FROM items ORDER BY id";

#[tokio::test]
async fn backup_restore_round_trip() {
    for (_guard, url) in both("backup").await {
        let store = tempfile::tempdir().unwrap();
        exec(
            &url,
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
             CREATE INDEX items_name ON items (name);\n\
             INSERT INTO items (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        )
        .await;
        let original = query_text(&url, ROWS).await;
        assert_eq!(original.len(), 3);

        let b = backup(&url, store.path()).await.unwrap();
        let hex = b.digest.strip_prefix("sha256:").unwrap();
        assert_eq!(
            b.path,
            store.path().join("sha256").join(hex),
            "content-addressed"
        );
        assert!(b.size > 0 && b.path.exists());
        assert_eq!(load(store.path(), &b.digest).unwrap().digest, b.digest);

        // Lose data and schema, then restore.
        exec(&url, "DELETE FROM items WHERE id = 2;\nUPDATE items SET name = 'changed';\nDROP INDEX items_name;").await;
        assert_ne!(query_text(&url, ROWS).await, original);
        restore(&b, &url).await.unwrap();
        assert_eq!(query_text(&url, ROWS).await, original, "{url}");
        let index = if url.starts_with("postgres") {
            "SELECT indexname::text FROM pg_indexes WHERE indexname = 'items_name'"
        } else {
            "SELECT name FROM sqlite_schema WHERE name = 'items_name'"
        };
        assert_eq!(query_text(&url, index).await.len(), 1, "index restored");

        // A tampered backup is refused, naming both digests.
        let mut bytes = std::fs::read(&b.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&b.path, bytes).unwrap();
        let err = restore(&b, &url).await.unwrap_err();
        assert!(matches!(err, Error::BackupDigest { .. }), "{err}");
        assert!(err.to_string().contains(&b.digest), "{err}");
    }
}
