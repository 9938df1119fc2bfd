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
//!
//! Every archived run leaves a [`RunSummary`] behind (table `run_summaries`, journal format
//! 4), written by the same transaction that prunes it: exactly the facts the delivery
//! reports count (release, environment, outcome, start and end), no journal, no approver,
//! no output. The prune refuses a selection whose summaries do not match its runs one for
//! one, so no run can leave the live store without its summary, nor a summary appear for
//! a run that stayed.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_engine::audit::{AuditEntry, GENESIS};
use slipway_engine::{RunState, StoreError};
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

/// What the reports keep of an archived run: the figures' inputs, nothing more. Derived
/// from the run's plan and journal by `slipway-govern` before the prune; the records
/// themselves are in the bundle of checkpoint `checkpoint_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// The checkpoint (and so the bundle) holding the run's records (0 before the prune).
    pub checkpoint_id: i64,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Release type (`unknown` when the plan was unreadable).
    pub release_type: String,
    /// Environment.
    pub environment: String,
    /// Whether the environment is a production one.
    pub production: bool,
    /// Services the plan deployed.
    pub services: Vec<String>,
    /// Final state (always a closed one).
    pub state: RunState,
    /// When the run was created.
    pub created_at: Timestamp,
    /// When it started applying steps (its creation when it never did).
    pub started_at: Timestamp,
    /// When it reached its final state.
    pub finished_at: Option<Timestamp>,
    /// The spec's directory (where the lead time's git facts are read).
    pub workdir: String,
    /// The release's git tag, resolved (`v1.2.0`), when the spec names one.
    pub tag: Option<String>,
    /// Until when the run's records must be kept (the `runs` kind's keep period); the
    /// summary is kept as long as the bundle it points to.
    pub keep_until: Option<Timestamp>,
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

async fn insert_summary(
    tx: &mut sqlx::SqliteConnection,
    r: &RunSummary,
    checkpoint_id: i64,
) -> Result<(), StoreError> {
    let services = serde_json::to_string(&r.services).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO run_summaries (run_id, checkpoint_id, release, version, release_type, environment, production,
            services, state, created_at, started_at, finished_at, workdir, tag, keep_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .bind(&r.run_id)
    .bind(checkpoint_id)
    .bind(&r.release)
    .bind(&r.version)
    .bind(&r.release_type)
    .bind(&r.environment)
    .bind(i64::from(r.production))
    .bind(services)
    .bind(r.state.as_str())
    .bind(r.created_at.to_string())
    .bind(r.started_at.to_string())
    .bind(r.finished_at.map(|t| t.to_string()))
    .bind(&r.workdir)
    .bind(&r.tag)
    .bind(r.keep_until.map(|t| t.to_string()))
    .execute(tx)
    .await
    .map_err(|e| StoreError::Query(format!("record the summary of run {}: {e}", r.run_id)))?;
    Ok(())
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

    /// Every archived run's summary, oldest first.
    pub async fn summaries(&self) -> Result<Vec<RunSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, checkpoint_id, release, version, release_type, environment, production, services,
                    state, created_at, started_at, finished_at, workdir, tag, keep_until
             FROM run_summaries ORDER BY created_at, run_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q)?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state").map_err(q)?;
                let services: String = r.try_get("services").map_err(q)?;
                let when = |col: &str| -> Result<Option<Timestamp>, StoreError> {
                    let v: Option<String> = r.try_get(col).map_err(q)?;
                    v.map(|s| {
                        Timestamp::from_str(&s).map_err(|e| {
                            StoreError::Query(format!("run_summaries.{col} `{s}`: {e}"))
                        })
                    })
                    .transpose()
                };
                let run_id: String = r.try_get("run_id").map_err(q)?;
                let required = |col: &str| -> Result<Timestamp, StoreError> {
                    when(col)?.ok_or_else(|| {
                        StoreError::Query(format!("run_summaries.{col} of {run_id} is empty"))
                    })
                };
                Ok(RunSummary {
                    checkpoint_id: r.try_get("checkpoint_id").map_err(q)?,
                    release: r.try_get("release").map_err(q)?,
                    version: r.try_get("version").map_err(q)?,
                    release_type: r.try_get("release_type").map_err(q)?,
                    environment: r.try_get("environment").map_err(q)?,
                    production: r.try_get::<i64, _>("production").map_err(q)? != 0,
                    services: serde_json::from_str(&services).map_err(|e| {
                        StoreError::Query(format!("run_summaries.services of {run_id}: {e}"))
                    })?,
                    state: RunState::parse(&state).ok_or_else(|| {
                        StoreError::Query(format!(
                            "run_summaries.state `{state}` of {run_id} is not a run state"
                        ))
                    })?,
                    created_at: required("created_at")?,
                    started_at: required("started_at")?,
                    finished_at: when("finished_at")?,
                    workdir: r.try_get("workdir").map_err(q)?,
                    tag: r.try_get("tag").map_err(q)?,
                    keep_until: when("keep_until")?,
                    run_id,
                })
            })
            .collect()
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

    /// Remove what `sel` selected, record the checkpoint and the runs' `summaries`, in one
    /// transaction. Refused (nothing removed) when the summaries are not exactly one per
    /// selected run, or when the store moved since the selection: another archive ran, the
    /// chain at the checkpoint changed, or a selected run is gone or not closed.
    pub async fn prune(
        &self,
        sel: &Selection,
        summaries: &[RunSummary],
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
        let ids = sel.run_ids();
        let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut have: Vec<&str> = summaries.iter().map(|s| s.run_id.as_str()).collect();
        want.sort_unstable();
        have.sort_unstable();
        if want != have {
            return Err(StoreError::Query(format!(
                "prune the archived records: the run summaries ({}) do not match the selected runs ({}); nothing was removed",
                have.join(", "),
                want.join(", ")
            )));
        }
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
        for r in summaries {
            insert_summary(&mut tx, r, id).await?;
        }
        if std::env::var("SLIPWAY_FAULT").as_deref() == Ok("archive-inside-prune") {
            // Test hook: die as a crash would with the summaries written and the records
            // deleted but not committed; the tests show SQLite keeps neither.
            std::process::abort();
        }
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
