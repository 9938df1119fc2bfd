//! Rollback rehearsal, database part only (the redeploy callback is `NoRedeploy` or a
//! recording stub): RTO measured, RPO zero with undo scripts and non-zero when restoring a
//! backup taken before the writes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use slipway_migrate::{
    Objectives, Redeploy, RehearsalConfig, RollbackMethod, apply, rehearse, status,
};

use crate::common::{both, migrations};

struct CountingRedeploy(AtomicU32);

impl Redeploy for CountingRedeploy {
    async fn redeploy_previous(&self) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn config(
    url: &str,
    dir: &std::path::Path,
    store: &std::path::Path,
    rollback: RollbackMethod,
) -> RehearsalConfig {
    RehearsalConfig {
        url: url.to_owned(),
        dir: dir.to_owned(),
        store_dir: store.to_owned(),
        who: "rehearsal".into(),
        rollback,
        marker_interval: Duration::from_millis(10),
        soak_markers: 5,
        objectives: Some(Objectives {
            rto: Duration::from_secs(60),
            rpo_rows: 0,
        }),
        restore_from: None,
    }
}

#[tokio::test]
async fn rehearsal_measures_rto_and_rpo() {
    for (_guard, url) in both("rehearse").await {
        for rollback in [RollbackMethod::Undo, RollbackMethod::RestoreBackup] {
            let dir = migrations(&[
                (
                    "V1__customers.sql",
                    "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT);",
                ),
                ("U1__customers.sql", "DROP TABLE customers;"),
            ]);
            apply(&url, dir.path(), "ci").await.unwrap();
            std::fs::write(
                dir.path().join("V2__orders.sql"),
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER);\nALTER TABLE customers ADD COLUMN email TEXT;",
            )
            .unwrap();
            std::fs::write(
                dir.path().join("U2__orders.sql"),
                "DROP TABLE orders;\nALTER TABLE customers DROP COLUMN email;",
            )
            .unwrap();
            let store = tempfile::tempdir().unwrap();
            let redeploy = CountingRedeploy(AtomicU32::new(0));
            let r = rehearse(&config(&url, dir.path(), store.path(), rollback), &redeploy)
                .await
                .unwrap();
            eprintln!(
                "{url} {rollback:?}: rto {} ms (db {} ms), rpo {} rows / {} ms, {} markers, {} write errors",
                r.rto_ms,
                r.rollback_ms,
                r.markers_lost,
                r.rpo_ms,
                r.markers_written,
                r.marker_write_errors
            );
            assert_eq!(
                redeploy.0.load(Ordering::SeqCst),
                1,
                "the engine's redeploy ran once"
            );
            assert_eq!((r.previous_version, r.new_version), (Some(1), Some(2)));
            assert!(r.rto_ms >= r.rollback_ms && r.rto_ms > 0, "{r:#?}");
            assert!(r.markers_written >= 6, "{r:#?}");
            // Back on V1 either way.
            assert_eq!(
                status(&url, dir.path()).await.unwrap().latest_applied,
                Some(1)
            );
            match rollback {
                RollbackMethod::Undo => {
                    assert_eq!(r.markers_lost, 0, "undo keeps every row: {r:#?}");
                    assert_eq!(r.rpo_ms, 0);
                    assert!(r.schema_restored, "{r:#?}");
                    assert_eq!(r.objectives_met, Some(true));
                }
                RollbackMethod::RestoreBackup => {
                    // At least the soak markers were written after the backup and are lost.
                    assert!(r.markers_lost >= 5, "{r:#?}");
                    assert!(r.rpo_ms > 0);
                    assert_eq!(
                        r.objectives_met,
                        Some(false),
                        "RPO objective of 0 rows missed"
                    );
                    if url.starts_with("sqlite") {
                        assert!(r.schema_restored, "the file is replaced: {r:#?}");
                    } else {
                        // pg_restore --clean only recreates what the dump has: the table
                        // added after the backup stays, and the rehearsal says so.
                        assert!(
                            r.schema_differences.iter().any(|d| d.contains("orders")),
                            "{r:#?}"
                        );
                        crate::common::exec(&url, "DROP TABLE orders;").await;
                    }
                }
            }
        }
    }
}
