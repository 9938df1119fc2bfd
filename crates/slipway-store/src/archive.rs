//! Retention and archive records: the retention policy per record kind, what an archive
//! would take (closed runs with their journal, steps and approvals, and a prefix of the
//! audit chain), the prune that removes them in one transaction, and the checkpoints that
//! let the live chain verify on its own after its start was archived.
//!
//! Retention rules, checkpoints and run summaries are governance records (kinds
//! `retention`, `archive_checkpoint`, `run_summary`), so each is committed to by a chain
//! entry. Policy (which kinds, what defaults, what a bundle contains) lives in
//! `slipway-govern`; this module only reads and writes records, always with bound values.
//!
//! The audit chain leaves only as a *prefix*: entries 1..=N move into the bundle and the
//! checkpoint keeps (N, hash of N), so the first live entry still links to something
//! recorded. The prefix stops before the first entry that is too young or that belongs to
//! a run staying live, so no live run ever loses part of its chain.
//!
//! Every archived run leaves a [`RunSummary`] behind, written by the same transaction that
//! prunes it: exactly the facts the delivery reports count (release, environment, outcome,
//! start and end), no journal, no approver, no output. The prune refuses a selection whose
//! summaries do not match its runs one for one, so no run can leave the live store without
//! its summary, nor a summary appear for a run that stayed.
//!
//! The prune's transaction appends one `archived` chain entry that commits to the new
//! checkpoint and summaries, names the archived runs (so `audit verify` expects their rows
//! gone) and carries forward every live record whose last entry moves into the bundle
//! (re-committed, so the live chain alone still vouches for every live row).

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_engine::audit::{AuditEntry, GENESIS};
use slipway_engine::store::{GovernanceRecord, RecordKey};
use slipway_engine::{RunState, StoreError};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
use sqlx::{Connection, Row};

use crate::chain::{self, Appender, Staged};

/// Record kind of a retention rule (key: the record kind it governs).
pub const RETENTION: &str = "retention";
/// Record kind of an archive checkpoint (key: its id).
pub const CHECKPOINT: &str = "archive_checkpoint";
/// Record kind of an archived run's summary (key: the run id).
pub const SUMMARY: &str = "run_summary";

/// Where the live chain starts, from the latest checkpoint record's data (none: genesis).
pub(crate) fn start_of(data: Option<&str>) -> Result<(i64, String), StoreError> {
    match data {
        None => Ok((0, GENESIS.to_owned())),
        Some(d) => {
            let c: Checkpoint = serde_json::from_str(d).map_err(|e| {
                StoreError::Query(format!(
                    "read the latest archive checkpoint: {e}; `slipway audit verify` names what was changed"
                ))
            })?;
            Ok((c.end_seq, c.end_hash))
        }
    }
}

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

/// The retention and archive records of a store file.
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

fn parse<T: serde::de::DeserializeOwned>(
    kind: &str,
    key: &str,
    data: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(data).map_err(|e| {
        StoreError::Query(format!(
            "read {kind} record `{key}`: {e}; `slipway audit verify` names what was changed"
        ))
    })
}

const RUN_JSON: &str = "json_object('id', id, 'digest', digest, 'release', release, 'version', version, 'environment', environment, 'author', author, 'state', state, 'control', control, 'override_reason', override_reason, 'plan_json', plan_json, 'workdir', workdir, 'created_at', created_at, 'updated_at', updated_at)";

impl ArchiveDb {
    /// Open the archive records of the store at `path` (opened, created or migrated first).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        drop(crate::SqliteStore::open(path).await?);
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
        Ok(Self { pool })
    }

    async fn kind(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as("SELECT key, data FROM records WHERE kind = ?1")
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .map_err(q)
    }

    /// The stored retention rules (kinds never set are absent: the caller's defaults hold).
    pub async fn policy(&self) -> Result<Vec<PolicyRow>, StoreError> {
        let mut rows = self
            .kind(RETENTION)
            .await?
            .iter()
            .map(|(k, d)| parse::<PolicyRow>(RETENTION, k, d))
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(rows)
    }

    /// Set the rule of one kind, committed to by a chain entry (`retention_set`) naming the
    /// rule and, as its actor, the pseudonym of `row.set_by`.
    pub async fn set_policy(&self, row: &PolicyRow) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(q)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(q)?;
        let who = row.set_by.strip_prefix("user:").unwrap_or(&row.set_by);
        let actor = crate::sqlite::pseudonym_in(&mut tx, who).await?;
        let mut app = Appender::new(crate::sqlite::read_head(&mut tx).await?);
        let rec = GovernanceRecord {
            kind: RETENTION.to_owned(),
            key: RecordKey::Given(row.kind.clone()),
            data: Some(serde_json::to_value(row).map_err(|e| StoreError::Query(e.to_string()))?),
            action: "retention_set".to_owned(),
            summary: serde_json::json!({"kind": row.kind, "live_days": row.live_days,
                "keep_days": row.keep_days}),
            actor,
            at: row.set_at.parse().unwrap_or_else(|_| slipway_stdx::now()),
            if_seq: None,
        };
        crate::sqlite::write_governance(&mut tx, &mut app, &[rec]).await?;
        crate::sqlite::flush(&mut tx, &app).await?;
        tx.commit().await.map_err(q)?;
        Ok(())
    }

    /// Every archived run's summary, oldest first.
    pub async fn summaries(&self) -> Result<Vec<RunSummary>, StoreError> {
        let mut rows = self
            .kind(SUMMARY)
            .await?
            .iter()
            .map(|(k, d)| parse::<RunSummary>(SUMMARY, k, d))
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(rows)
    }

    /// Every checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut rows = self
            .kind(CHECKPOINT)
            .await?
            .iter()
            .map(|(k, d)| parse::<Checkpoint>(CHECKPOINT, k, d))
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|c| c.id);
        Ok(rows)
    }

    /// Where the live chain starts: the end of the latest checkpoint, or (0, genesis).
    pub async fn live_start(&self) -> Result<(i64, String), StoreError> {
        Ok(self.checkpoints().await?.last().map_or_else(
            || (0, GENESIS.to_owned()),
            |c| (c.end_seq, c.end_hash.clone()),
        ))
    }

    /// What an archive would move: closed runs last changed before `runs_before`, with
    /// their rows (journal, steps and approvals as read from their chain entries), and the
    /// audit prefix of entries older than `audit_before` that belong to no run staying
    /// live. Read in one snapshot.
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
            // The SQL joins a fixed column list; the run id is bound.
            let run: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {RUN_JSON} FROM runs WHERE id = ?1"
            )))
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(q)?;
            for r in run {
                sel.runs.push(row_json(&r)?);
            }
            let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
                "SELECT seq, at, actor, action, detail FROM audit WHERE run_id = ?1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(q)?;
            let mut events = Vec::with_capacity(rows.len());
            for (seq, at, actor, action, detail) in rows {
                sel.journal
                    .push(serde_json::json!({"seq": seq, "run_id": id, "at": at,
                    "actor": actor, "event": action, "data": detail}));
                events.push((at, chain::event(&detail)?));
            }
            for s in chain::fold_steps(&events) {
                sel.steps
                    .push(serde_json::json!({"run_id": id, "step_id": s.step_id,
                    "key": s.key, "status": s.status.as_str(), "attempts": s.attempts,
                    "output": s.output.as_ref().and_then(|o| serde_json::to_string(o).ok()),
                    "updated_at": s.updated_at.to_string()}));
            }
            for (i, a) in chain::fold_approvals(&events).into_iter().enumerate() {
                sel.approvals
                    .push(serde_json::json!({"id": i + 1, "run_id": id,
                    "approver": a.approver, "digest": a.digest,
                    "groups": serde_json::to_string(&a.groups).unwrap_or_default(),
                    "at": a.at.to_string()}));
            }
        }
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv FROM audit ORDER BY seq",
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
                v: r.try_get::<i64, _>("hv")
                    .ok()
                    .and_then(|v| u8::try_from(v).ok())
                    .unwrap_or(0),
            };
            if ts(&e.at) >= audit_before || staying.contains(e.run_id.as_str()) {
                break;
            }
            sel.audit.push(e);
        }
        tx.commit().await.map_err(q)?;
        Ok(sel)
    }

    /// Remove what `sel` selected, record the checkpoint and the runs' `summaries`, and
    /// append the `archived` chain entry (by `actor`, a pseudonym) committing to them, in
    /// one transaction. Refused (nothing removed) when the summaries are not exactly one
    /// per selected run, or when the store moved since the selection: another archive ran,
    /// the chain at the checkpoint changed, or a selected run is gone or not closed.
    #[expect(clippy::too_many_arguments, reason = "what one archive records")]
    pub async fn prune(
        &self,
        sel: &Selection,
        summaries: &[RunSummary],
        bundle_sha256: &str,
        bundle_name: &str,
        before: &str,
        now: Timestamp,
        actor: &str,
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
        let latest: Option<String> = sqlx::query_scalar(
            "SELECT data FROM records WHERE kind = 'archive_checkpoint' ORDER BY CAST(key AS INTEGER) DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(q)?;
        if start_of(latest.as_deref())? != sel.start {
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
            sqlx::query("DELETE FROM runs WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q)?;
        }
        // Records whose last entry leaves with the prefix are carried forward below.
        let carried: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT kind, key, data FROM records WHERE seq <= ?1 ORDER BY kind, key",
        )
        .bind(end_seq)
        .fetch_all(&mut *tx)
        .await
        .map_err(q)?;
        sqlx::query("DELETE FROM audit WHERE seq <= ?1")
            .bind(end_seq)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
        let id: i64 = sqlx::query_scalar(
            "SELECT COALESCE(max(CAST(key AS INTEGER)), 0) + 1 FROM records WHERE kind = 'archive_checkpoint'",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(q)?;
        let cp = Checkpoint {
            id,
            start_seq: sel.start.0,
            start_hash: sel.start.1.clone(),
            end_seq,
            end_hash,
            bundle_sha256: bundle_sha256.to_owned(),
            bundle_name: bundle_name.to_owned(),
            before: before.to_owned(),
            runs: ids.clone(),
            created_at: now.to_string(),
        };
        let mut staged = vec![stage(CHECKPOINT, id.to_string(), to_json(&cp)?)?];
        for r in summaries {
            let mut r = r.clone();
            r.checkpoint_id = id;
            staged.push(stage(SUMMARY, r.run_id.clone(), to_json(&r)?)?);
        }
        for (kind, key, data) in carried {
            let v: serde_json::Value = serde_json::from_str(&data).map_err(|e| {
                StoreError::Query(format!(
                    "carry {kind} record `{key}` forward: {e}; `slipway audit verify` names what was changed"
                ))
            })?;
            staged.push(stage(&kind, key, v)?);
        }
        let mut app = Appender::new(crate::sqlite::read_head(&mut tx).await?);
        let seq = chain::push_governance(
            &mut app,
            "archived",
            actor,
            now,
            &serde_json::json!({"bundle": bundle_name, "sha256": bundle_sha256,
                "runs": ids.len(), "run_ids": ids, "chain_start": sel.start.0,
                "chain_end": end_seq, "before": before, "checkpoint": id}),
            staged.iter().map(Staged::reference).collect(),
        )?;
        for s in &staged {
            crate::sqlite::put_record(&mut tx, s, seq).await?;
        }
        crate::sqlite::flush(&mut tx, &app).await?;
        if std::env::var("SLIPWAY_FAULT").as_deref() == Ok("archive-inside-prune") {
            // Test hook: die as a crash would with the summaries written and the records
            // deleted but not committed; the tests show SQLite keeps neither.
            std::process::abort();
        }
        tx.commit().await.map_err(q)?;
        Ok(cp)
    }
}

/// A record version staged by the prune (given key, fresh nonce).
fn stage(kind: &str, key: String, data: serde_json::Value) -> Result<Staged, StoreError> {
    Staged::new(
        &GovernanceRecord {
            kind: kind.to_owned(),
            key: RecordKey::Given(key.clone()),
            data: Some(data),
            action: String::new(),
            summary: serde_json::Value::Null,
            actor: String::new(),
            at: Timestamp::UNIX_EPOCH,
            if_seq: None,
        },
        key,
    )
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Query(e.to_string()))
}
