//! The format-6 migration of governance tables written by older builds: access grants,
//! tokens and reviews, checklist acknowledgements, retention rules, archive checkpoints and
//! run summaries move into `records`, and one chain entry per record
//! (`evidence_baseline`) commits to each as it was at the upgrade. From then on an edit of
//! any of them is caught; an edit made before the upgrade cannot be, and the baseline
//! entries say when coverage began. Tokens' last uses move to `token_use`.

use jiff::Timestamp;
use serde_json::json;
use slipway_engine::store::{GovernanceRecord, RecordKey, StoreError};
use sqlx::Row;

use crate::access::{GRANT, GrantData, ItemData, REVIEW, ReviewData, TOKEN, TokenData};
use crate::archive::{CHECKPOINT, Checkpoint, PolicyRow, RETENTION, RunSummary, SUMMARY};
use crate::checklist::{ACK, Ack, AckData, ack_key};

/// The tables older builds created for governance records (dropped by the migration).
pub(crate) const TABLES: &[&str] = &[
    "access_grants",
    "access_tokens",
    "access_reviews",
    "access_review_items",
    "checklist_acks",
    "retention_policy",
    "archive_checkpoints",
    "run_summaries",
];

/// What an older store held, as records to write.
#[derive(Debug, Default)]
pub(crate) struct Legacy {
    records: Vec<(&'static str, String, serde_json::Value)>,
    /// (token id, last use).
    pub token_uses: Vec<(String, String)>,
}

fn q(e: sqlx::Error) -> StoreError {
    StoreError::Query(format!(
        "migrate the governance tables to journal format 6: {e}"
    ))
}

fn value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Query(e.to_string()))
}

impl Legacy {
    /// The records, each committed to by its own `evidence_baseline` entry.
    pub fn into_records(self, at: Timestamp) -> Vec<GovernanceRecord> {
        self.records
            .into_iter()
            .map(|(kind, key, data)| GovernanceRecord {
                kind: kind.to_owned(),
                key: RecordKey::Given(key),
                data: Some(data),
                action: "evidence_baseline".to_owned(),
                summary: json!({"journal_format": crate::schema::JOURNAL_FORMAT,
                    "note": "committed at the upgrade; changes made before it cannot be detected"}),
                actor: "slipway".to_owned(),
                at,
                if_seq: None,
            })
            .collect()
    }
}

/// Read every legacy table the store has; `$tx` is a connection of either backend and
/// `$has` the names of the tables that exist.
macro_rules! read_legacy {
    ($tx:expr, $has:expr) => {{
        let has = $has;
        let mut out = Legacy::default();
        if has.contains(&"access_grants") {
            let rows = sqlx::query(
                "SELECT id, subject, role, environment, granted_by, granted_at, revoked_at, revoked_by FROM access_grants",
            )
            .fetch_all(&mut *$tx)
            .await
            .map_err(q)?;
            for r in rows {
                let id: i64 = r.try_get("id").map_err(q)?;
                let d = GrantData {
                    subject: r.try_get("subject").map_err(q)?,
                    role: r.try_get("role").map_err(q)?,
                    environment: r.try_get("environment").map_err(q)?,
                    granted_by: r.try_get("granted_by").map_err(q)?,
                    granted_at: r.try_get("granted_at").map_err(q)?,
                    revoked_at: r.try_get("revoked_at").map_err(q)?,
                    revoked_by: r.try_get("revoked_by").map_err(q)?,
                };
                out.records.push((GRANT, id.to_string(), value(&d)?));
            }
        }
        if has.contains(&"access_tokens") {
            let rows = sqlx::query(
                "SELECT id, subject, salt, hash, created_at, last_used_at, revoked_at FROM access_tokens",
            )
            .fetch_all(&mut *$tx)
            .await
            .map_err(q)?;
            for r in rows {
                let id: String = r.try_get("id").map_err(q)?;
                let used: Option<String> = r.try_get("last_used_at").map_err(q)?;
                if let Some(u) = used {
                    out.token_uses.push((id.clone(), u));
                }
                let d = TokenData {
                    subject: r.try_get("subject").map_err(q)?,
                    salt: r.try_get("salt").map_err(q)?,
                    hash: r.try_get("hash").map_err(q)?,
                    created_at: r.try_get("created_at").map_err(q)?,
                    revoked_at: r.try_get("revoked_at").map_err(q)?,
                };
                out.records.push((TOKEN, id, value(&d)?));
            }
        }
        if has.contains(&"access_reviews") {
            let rows = sqlx::query("SELECT id, opened_by, opened_at, closed_at FROM access_reviews")
                .fetch_all(&mut *$tx)
                .await
                .map_err(q)?;
            let items = if has.contains(&"access_review_items") {
                sqlx::query(
                    "SELECT review_id, grant_id, decision, reviewer, decided_at FROM access_review_items ORDER BY grant_id",
                )
                .fetch_all(&mut *$tx)
                .await
                .map_err(q)?
            } else {
                Vec::new()
            };
            for r in rows {
                let id: String = r.try_get("id").map_err(q)?;
                let mut list = Vec::new();
                for i in &items {
                    let rid: String = i.try_get("review_id").map_err(q)?;
                    if rid == id {
                        list.push(ItemData {
                            grant_id: i.try_get("grant_id").map_err(q)?,
                            decision: i.try_get("decision").map_err(q)?,
                            reviewer: i.try_get("reviewer").map_err(q)?,
                            decided_at: i.try_get("decided_at").map_err(q)?,
                        });
                    }
                }
                let d = ReviewData {
                    opened_by: r.try_get("opened_by").map_err(q)?,
                    opened_at: r.try_get("opened_at").map_err(q)?,
                    closed_at: r.try_get("closed_at").map_err(q)?,
                    items: list,
                };
                out.records.push((REVIEW, id, value(&d)?));
            }
        }
        if has.contains(&"checklist_acks") {
            let rows = sqlx::query(
                "SELECT release, version, environment, item, acknowledged_by, note, at FROM checklist_acks",
            )
            .fetch_all(&mut *$tx)
            .await
            .map_err(q)?;
            for r in rows {
                let d = AckData {
                    release: r.try_get("release").map_err(q)?,
                    version: r.try_get("version").map_err(q)?,
                    environment: r.try_get("environment").map_err(q)?,
                    ack: Ack {
                        item: r.try_get("item").map_err(q)?,
                        acknowledged_by: r.try_get("acknowledged_by").map_err(q)?,
                        note: r.try_get("note").map_err(q)?,
                        at: r.try_get("at").map_err(q)?,
                    },
                };
                let key = ack_key(&d.release, &d.version, &d.environment, &d.ack.item);
                out.records.push((ACK, key, value(&d)?));
            }
        }
        if has.contains(&"retention_policy") {
            let rows = sqlx::query("SELECT kind, live_days, keep_days, set_by, set_at FROM retention_policy")
                .fetch_all(&mut *$tx)
                .await
                .map_err(q)?;
            for r in rows {
                let d = PolicyRow {
                    kind: r.try_get("kind").map_err(q)?,
                    live_days: u32::try_from(r.try_get::<i64, _>("live_days").map_err(q)?).unwrap_or(0),
                    keep_days: u32::try_from(r.try_get::<i64, _>("keep_days").map_err(q)?).unwrap_or(0),
                    set_by: r.try_get("set_by").map_err(q)?,
                    set_at: r.try_get("set_at").map_err(q)?,
                };
                out.records.push((RETENTION, d.kind.clone(), value(&d)?));
            }
        }
        if has.contains(&"archive_checkpoints") {
            let rows = sqlx::query(
                "SELECT id, start_seq, start_hash, end_seq, end_hash, bundle_sha256, bundle_name, before, runs, created_at FROM archive_checkpoints",
            )
            .fetch_all(&mut *$tx)
            .await
            .map_err(q)?;
            for r in rows {
                let runs: String = r.try_get("runs").map_err(q)?;
                let c = Checkpoint {
                    id: r.try_get("id").map_err(q)?,
                    start_seq: r.try_get("start_seq").map_err(q)?,
                    start_hash: r.try_get("start_hash").map_err(q)?,
                    end_seq: r.try_get("end_seq").map_err(q)?,
                    end_hash: r.try_get("end_hash").map_err(q)?,
                    bundle_sha256: r.try_get("bundle_sha256").map_err(q)?,
                    bundle_name: r.try_get("bundle_name").map_err(q)?,
                    before: r.try_get("before").map_err(q)?,
                    runs: serde_json::from_str(&runs).unwrap_or_default(),
                    created_at: r.try_get("created_at").map_err(q)?,
                };
                out.records.push((CHECKPOINT, c.id.to_string(), value(&c)?));
            }
        }
        if has.contains(&"run_summaries") {
            let rows = sqlx::query(
                "SELECT run_id, checkpoint_id, release, version, release_type, environment, production, services, state, created_at, started_at, finished_at, workdir, tag, keep_until FROM run_summaries",
            )
            .fetch_all(&mut *$tx)
            .await
            .map_err(q)?;
            for r in rows {
                let services: String = r.try_get("services").map_err(q)?;
                let state: String = r.try_get("state").map_err(q)?;
                let t = |c: &str| -> Result<Option<Timestamp>, StoreError> {
                    let v: Option<String> = r.try_get(c).map_err(q)?;
                    Ok(v.and_then(|v| v.parse().ok()))
                };
                let s = RunSummary {
                    run_id: r.try_get("run_id").map_err(q)?,
                    checkpoint_id: r.try_get("checkpoint_id").map_err(q)?,
                    release: r.try_get("release").map_err(q)?,
                    version: r.try_get("version").map_err(q)?,
                    release_type: r.try_get("release_type").map_err(q)?,
                    environment: r.try_get("environment").map_err(q)?,
                    production: r.try_get::<i64, _>("production").map_err(q)? != 0,
                    services: serde_json::from_str(&services).unwrap_or_default(),
                    state: slipway_engine::RunState::parse(&state).ok_or_else(|| {
                        StoreError::Query(format!("migrate run_summaries: state `{state}` is not a run state"))
                    })?,
                    created_at: t("created_at")?.unwrap_or_default(),
                    started_at: t("started_at")?.unwrap_or_default(),
                    finished_at: t("finished_at")?,
                    workdir: r.try_get("workdir").map_err(q)?,
                    tag: r.try_get("tag").map_err(q)?,
                    keep_until: t("keep_until")?,
                };
                out.records.push((SUMMARY, s.run_id.clone(), value(&s)?));
            }
        }
        Ok::<Legacy, StoreError>(out)
    }};
}

/// Read the legacy tables of an SQLite store inside its migration transaction.
pub(crate) async fn read_sqlite(tx: &mut sqlx::SqliteConnection) -> Result<Legacy, StoreError> {
    let mut has = Vec::new();
    for t in TABLES {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        )
        .bind(*t)
        .fetch_one(&mut *tx)
        .await
        .map_err(q)?;
        if n > 0 {
            has.push(*t);
        }
    }
    read_legacy!(tx, has)
}

/// Drop the legacy tables of an SQLite store and keep its tokens' last uses.
pub(crate) async fn finish_sqlite(
    tx: &mut sqlx::SqliteConnection,
    token_uses: &[(String, String)],
) -> Result<(), StoreError> {
    for (id, at) in token_uses {
        sqlx::query("INSERT INTO token_use (id, last_used_at) VALUES (?1, ?2)")
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
    }
    for t in TABLES {
        // The names are this module's constants, never input.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(&mut *tx)
            .await
            .map_err(q)?;
    }
    Ok(())
}

/// Read the legacy tables of a PostgreSQL store inside its migration transaction.
pub(crate) async fn read_pg(tx: &mut sqlx::PgConnection) -> Result<Legacy, StoreError> {
    let mut has = Vec::new();
    for t in TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(*t)
            .fetch_one(&mut *tx)
            .await
            .map_err(q)?;
        if exists {
            has.push(*t);
        }
    }
    read_legacy!(tx, has)
}

/// Drop the legacy tables of a PostgreSQL store and keep its tokens' last uses.
pub(crate) async fn finish_pg(
    tx: &mut sqlx::PgConnection,
    token_uses: &[(String, String)],
) -> Result<(), StoreError> {
    for (id, at) in token_uses {
        sqlx::query("INSERT INTO token_use (id, last_used_at) VALUES ($1, $2)")
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
    }
    for t in TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(&mut *tx)
            .await
            .map_err(q)?;
    }
    Ok(())
}
