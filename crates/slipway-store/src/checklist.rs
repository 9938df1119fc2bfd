//! Acknowledgements of spec checklist items: who confirmed, for which release version and
//! environment, that an item without a check holds. In the store file beside the runs, in a
//! `CREATE TABLE IF NOT EXISTS` table like the access tables (an older slipway ignores it).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_engine::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS checklist_acks (
    release TEXT NOT NULL,
    version TEXT NOT NULL,
    environment TEXT NOT NULL,
    item TEXT NOT NULL,
    acknowledged_by TEXT NOT NULL,
    note TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (release, version, environment, item)
);
"#;

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The checklist item id.
    pub item: String,
    /// Who (`user:NAME`).
    pub acknowledged_by: String,
    /// What they said.
    pub note: String,
    /// When.
    pub at: String,
}

/// The checklist table of a store file (open the run store first).
#[derive(Debug, Clone)]
pub struct ChecklistDb {
    pool: SqlitePool,
}

fn q(e: sqlx::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

impl ChecklistDb {
    /// Open (creating the table if needed).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = crate::sqlite::pool_options(1)
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Unavailable {
                location: format!("sqlite://{}", path.display()),
                message: e.to_string(),
            })?;
        sqlx::raw_sql(TABLES).execute(&pool).await.map_err(q)?;
        Ok(Self { pool })
    }

    /// Record (or replace) an acknowledgement.
    pub async fn acknowledge(
        &self,
        release: &str,
        version: &str,
        environment: &str,
        ack: &Ack,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checklist_acks (release, version, environment, item, acknowledged_by, note, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (release, version, environment, item) DO UPDATE SET
               acknowledged_by = excluded.acknowledged_by, note = excluded.note, at = excluded.at",
        )
        .bind(release)
        .bind(version)
        .bind(environment)
        .bind(&ack.item)
        .bind(&ack.acknowledged_by)
        .bind(&ack.note)
        .bind(&ack.at)
        .execute(&self.pool)
        .await
        .map_err(q)?;
        Ok(())
    }

    /// The acknowledgements of one release version in one environment.
    pub async fn acks(
        &self,
        release: &str,
        version: &str,
        environment: &str,
    ) -> Result<Vec<Ack>, StoreError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT item, acknowledged_by, note, at FROM checklist_acks
             WHERE release = ?1 AND version = ?2 AND environment = ?3 ORDER BY item",
        )
        .bind(release)
        .bind(version)
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        Ok(rows
            .into_iter()
            .map(|(item, acknowledged_by, note, at)| Ack {
                item,
                acknowledged_by,
                note,
                at,
            })
            .collect())
    }

    /// Close the pool (before its runtime is dropped).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
