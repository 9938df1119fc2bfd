//! Retention and archive records in the store file: the retention policy per record kind,
//! what an archive would take (closed runs with their journal, steps and approvals, and a
//! prefix of the audit chain), the prune that removes them in one transaction, and the
//! checkpoints that let the live chain verify on its own after its start was archived.
//!
//! Like the access tables, these tables are created with `CREATE TABLE IF NOT EXISTS`
//! outside the journal's versioned schema: an older slipway ignores them. Policy (which
//! kinds, what defaults, what a bundle contains) lives in `slipway-govern`; this module
//! only reads and writes rows, always with bound values.
//!
//! The audit chain leaves only as a *prefix*: entries 1..=N move into the bundle and the
//! checkpoint keeps (N, hash of N), so the first live entry still links to something
//! recorded. The prefix stops before the first entry that is too young or that belongs to
//! a run staying live, so no live run ever loses part of its chain.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_engine::StoreError;
use slipway_engine::audit::{AuditEntry, GENESIS};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
use sqlx::{Connection, Row};

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS archive_checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    start_seq INTEGER NOT NULL,
    start_hash TEXT NOT NULL,
    end_seq INTEGER NOT NULL,
    end_hash TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    bundle_name TEXT NOT NULL,
    before TEXT NOT NULL,
    runs TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retention_policy (
    kind TEXT PRIMARY KEY,
    live_days INTEGER NOT NULL,
    keep_days INTEGER NOT NULL,
    set_by TEXT NOT NULL,
    set_at TEXT NOT NULL
);
"#;

/// Run states after which nothing more happens to a run: only these are ever archived.
pub const CLOSED_STATES: &[&str] = &["succeeded", "failed", "rolled_back", "aborted"];

/// Where an archive left the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// The chain position the bundle starts after (0 for the first archive).
    pub start_seq: i64,
    /// Hash at `start_seq` ([`GENESIS`] for the first archive).
    pub start_hash: String,
    /// The last chain position in the bundle; the first live entry links to it.
    pub end_seq: i64,
    /// Hash at `end_seq`.
    pub end_hash: String,
    /// sha256 of the bundle file.
    pub bundle_sha256: String,
    /// The bundle's file name, for messages.
    pub bundle_name: String,
    /// The `--before` date of the archive.
    pub before: String,
    /// Ids of the runs moved out.
    pub runs: Vec<String>,
    /// When the prune committed.
    pub created_at: String,
}

/// A stored retention rule for one record kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// Record kind (`runs`, `journal`, `approvals`, `checks`, `audit`).
    pub kind: String,
    /// Days a record stays in the live store at least.
    pub live_days: u32,
    /// Days a record is kept in all (live, then archived) before it may be destroyed.
    pub keep_days: u32,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: String,
}

/// Everything one archive would move out, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Run rows (every column, `plan_json` included), oldest first.
    pub runs: Vec<serde_json::Value>,
    /// Journal rows of those runs, by seq.
    pub journal: Vec<serde_json::Value>,
    /// Step rows of those runs.
    pub steps: Vec<serde_json::Value>,
    /// Approval rows of those runs.
    pub approvals: Vec<serde_json::Value>,
    /// The audit chain prefix moving out, by seq.
    pub audit: Vec<AuditEntry>,
    /// Where the live chain starts now: the latest checkpoint, or (0, genesis).
    pub start: (i64, String),
}

impl Selection {
    /// Ids of the selected runs.
    pub fn run_ids(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter_map(|r| r.get("id").and_then(|v| v.as_str()).map(str::to_owned))
            .collect()
    }

    /// The chain position the bundle ends at.
    pub fn end(&self) -> (i64, String) {
        self.audit
            .last()
            .map_or_else(|| self.start.clone(), |e| (e.seq, e.hash.clone()))
    }

    /// Whether there is nothing to move.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.audit.is_empty()
    }
}

/// The retention and archive tables of a store file.
#[derive(Debug, Clone)]
pub struct ArchiveDb {
    pool: SqlitePool,
}

fn q(e: sqlx::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

fn ts(s: &str) -> Timestamp {
    // Times in the store were written by `Timestamp::to_string`; one that does not parse
    // (hand-edited) reads as "now or later", so it is never archived by mistake.
    Timestamp::from_str(s).unwrap_or(Timestamp::MAX)
}

fn row_json(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Query(format!("read a row as JSON: {e}")))
}

const RUN_JSON: &str = "json_object('id', id, 'digest', digest, 'release', release, 'version', version, 'environment', environment, 'author', author, 'state', state, 'control', control, 'override_reason', override_reason, 'plan_json', plan_json, 'workdir', workdir, 'created_at', created_at, 'updated_at', updated_at)";
const JOURNAL_JSON: &str = "json_object('seq', seq, 'run_id', run_id, 'at', at, 'actor', actor, 'event', event, 'data', data)";
const STEP_JSON: &str = "json_object('run_id', run_id, 'step_id', step_id, 'key', key, 'status', status, 'attempts', attempts, 'output', output, 'updated_at', updated_at)";
const APPROVAL_JSON: &str = "json_object('id', id, 'run_id', run_id, 'approver', approver, 'digest', digest, 'groups', groups, 'at', at)";

impl ArchiveDb {
    /// Open (creating the tables if needed) the archive tables of the store at `path`.
    /// The store itself must exist (open it with `SqliteStore::open` first).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = format!("sqlite://{}", path.display());
        let unavailable = |e: sqlx::Error| StoreError::Unavailable {
            location: location.clone(),
            message: e.to_string(),
        };
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = crate::sqlite::pool_options(1)
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        sqlx::raw_sql(TABLES)
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        Ok(Self { pool })
    }

    /// The stored retention rules (kinds never set are absent: the caller's defaults hold).
    pub async fn policy(&self) -> Result<Vec<PolicyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, live_days, keep_days, set_by, set_at FROM retention_policy ORDER BY kind",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        rows.iter()
            .map(|r| {
                Ok(PolicyRow {
                    kind: r.try_get("kind").map_err(q)?,
                    live_days: u32::try_from(r.try_get::<i64, _>("live_days").map_err(q)?)
                        .unwrap_or(0),
                    keep_days: u32::try_from(r.try_get::<i64, _>("keep_days").map_err(q)?)
                        .unwrap_or(0),
                    set_by: r.try_get("set_by").map_err(q)?,
                    set_at: r.try_get("set_at").map_err(q)?,
                })
            })
            .collect()
    }

    /// Set the rule of one kind.
    pub async fn set_policy(&self, row: &PolicyRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO retention_policy (kind, live_days, keep_days, set_by, set_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(kind) DO UPDATE SET live_days = excluded.live_days, keep_days = excluded.keep_days,
               set_by = excluded.set_by, set_at = excluded.set_at",
        )
        .bind(&row.kind)
        .bind(i64::from(row.live_days))
        .bind(i64::from(row.keep_days))
        .bind(&row.set_by)
        .bind(&row.set_at)
        .execute(&self.pool)
        .await
        .map_err(q)?;
        Ok(())
    }

    /// Every checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, start_seq, start_hash, end_seq, end_hash, bundle_sha256, bundle_name, before, runs, created_at
             FROM archive_checkpoints ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        rows.iter()
            .map(|r| {
                let runs: String = r.try_get("runs").map_err(q)?;
                Ok(Checkpoint {
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
                })
            })
            .collect()
    }

    /// Where the live chain starts: the end of the latest checkpoint, or (0, genesis).
    pub async fn live_start(&self) -> Result<(i64, String), StoreError> {
        Ok(self.checkpoints().await?.last().map_or_else(
            || (0, GENESIS.to_owned()),
            |c| (c.end_seq, c.end_hash.clone()),
        ))
    }

    /// What an archive would move: closed runs last changed before `runs_before`, with
    /// their rows, and the audit prefix of entries older than `audit_before` that belong
    /// to no run staying live. Read in one snapshot.
    pub async fn select(
        &self,
        runs_before: Timestamp,
        audit_before: Timestamp,
    ) -> Result<Selection, StoreError> {
        let start = self.live_start().await?;
        let mut conn = self.pool.acquire().await.map_err(q)?;
        let mut tx = conn.begin().await.map_err(q)?;
        let all: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, state, updated_at FROM runs ORDER BY created_at, id")
                .fetch_all(&mut *tx)
                .await
                .map_err(q)?;
        let chosen: Vec<String> = all
            .iter()
            .filter(|(_, state, updated)| {
                CLOSED_STATES.contains(&state.as_str()) && ts(updated) < runs_before
            })
            .map(|(id, _, _)| id.clone())
            .collect();
        let staying: HashSet<&str> = all
            .iter()
            .map(|(id, _, _)| id.as_str())
            .filter(|id| !chosen.iter().any(|c| c == id))
            .collect();
        let mut sel = Selection {
            start,
            ..Selection::default()
        };
        for id in &chosen {
            for (sql, into) in [
                (
                    format!("SELECT {RUN_JSON} FROM runs WHERE id = ?1"),
                    &mut sel.runs,
                ),
                (
                    format!("SELECT {JOURNAL_JSON} FROM journal WHERE run_id = ?1 ORDER BY seq"),
                    &mut sel.journal,
                ),
                (
                    format!("SELECT {STEP_JSON} FROM steps WHERE run_id = ?1 ORDER BY step_id"),
                    &mut sel.steps,
                ),
                (
                    format!("SELECT {APPROVAL_JSON} FROM approvals WHERE run_id = ?1 ORDER BY id"),
                    &mut sel.approvals,
                ),
            ] {
                // The SQL joins fixed column lists; the run id is bound.
                let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(q)?;
                for r in rows {
                    into.push(row_json(&r)?);
                }
            }
        }
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash FROM audit ORDER BY seq",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(q)?;
        for r in &rows {
            let e = AuditEntry {
                seq: r.try_get("seq").map_err(q)?,
                at: r.try_get("at").map_err(q)?,
                actor: r.try_get("actor").map_err(q)?,
                action: r.try_get("action").map_err(q)?,
                run_id: r.try_get("run_id").map_err(q)?,
                digest: r.try_get("digest").map_err(q)?,
                outcome: r.try_get("outcome").map_err(q)?,
                detail: r.try_get("detail").map_err(q)?,
                prev_hash: r.try_get("prev_hash").map_err(q)?,
                hash: r.try_get("hash").map_err(q)?,
            };
            if ts(&e.at) >= audit_before || staying.contains(e.run_id.as_str()) {
                break;
            }
            sel.audit.push(e);
        }
        tx.commit().await.map_err(q)?;
        Ok(sel)
    }

    /// Remove what `sel` selected and record the checkpoint, in one transaction. Refused
    /// (nothing removed) when the store moved since the selection: another archive ran,
    /// the chain at the checkpoint changed, or a selected run is gone or not closed.
    pub async fn prune(
        &self,
        sel: &Selection,
        bundle_sha256: &str,
        bundle_name: &str,
        before: &str,
        now: Timestamp,
    ) -> Result<Checkpoint, StoreError> {
        let moved = |what: String| {
            StoreError::Query(format!(
                "prune the archived records: {what}; nothing was removed, run `slipway archive` again"
            ))
        };
        let mut conn = self.pool.acquire().await.map_err(q)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(q)?;
        let latest: Option<(i64, String)> = sqlx::query_as(
            "SELECT end_seq, end_hash FROM archive_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(q)?;
        let latest = latest.unwrap_or((0, GENESIS.to_owned()));
        if latest != sel.start {
            return Err(moved("another archive ran meanwhile".into()));
        }
        let (end_seq, end_hash) = sel.end();
        if end_seq > sel.start.0 {
            let h: Option<String> = sqlx::query_scalar("SELECT hash FROM audit WHERE seq = ?1")
                .bind(end_seq)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q)?;
            if h.as_deref() != Some(end_hash.as_str()) {
                return Err(moved(format!("audit entry {end_seq} changed")));
            }
        }
        let ids = sel.run_ids();
        for id in &ids {
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q)?;
            if !state.is_some_and(|s| CLOSED_STATES.contains(&s.as_str())) {
                return Err(moved(format!("run {id} is gone or no longer closed")));
            }
            for sql in [
                "DELETE FROM journal WHERE run_id = ?1",
                "DELETE FROM steps WHERE run_id = ?1",
                "DELETE FROM approvals WHERE run_id = ?1",
                "DELETE FROM runs WHERE id = ?1",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q)?;
            }
        }
        sqlx::query("DELETE FROM audit WHERE seq <= ?1")
            .bind(end_seq)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
        let runs = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
        let id = sqlx::query(
            "INSERT INTO archive_checkpoints (start_seq, start_hash, end_seq, end_hash, bundle_sha256, bundle_name, before, runs, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(sel.start.0)
        .bind(&sel.start.1)
        .bind(end_seq)
        .bind(&end_hash)
        .bind(bundle_sha256)
        .bind(bundle_name)
        .bind(before)
        .bind(&runs)
        .bind(now.to_string())
        .execute(&mut *tx)
        .await
        .map_err(q)?
        .last_insert_rowid();
        tx.commit().await.map_err(q)?;
        Ok(Checkpoint {
            id,
            start_seq: sel.start.0,
            start_hash: sel.start.1.clone(),
            end_seq,
            end_hash,
            bundle_sha256: bundle_sha256.to_owned(),
            bundle_name: bundle_name.to_owned(),
            before: before.to_owned(),
            runs: ids,
            created_at: now.to_string(),
        })
    }
}
