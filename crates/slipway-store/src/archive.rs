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
use slipway_engine::store::{GovernanceRecord, RecordKey, Store};
use slipway_engine::{RunState, StoreError};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
use sqlx::{Connection, Row};

use crate::AnyStore;
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

/// The retention and archive records of a store, on either backend: the records are read
/// and written through the [`Store`] contract; the selection and the prune, which must
/// see and change runs, the chain and the records in one transaction, are the only SQL
/// here, one dialect per backend with the logic between them shared.
#[derive(Debug, Clone)]
pub struct ArchiveDb {
    store: AnyStore,
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

/// A run row as JSON (every column), in SQLite's and PostgreSQL's words: the same keys.
const RUN_JSON: &str = "json_object('id', id, 'digest', digest, 'release', release, 'version', version, 'environment', environment, 'author', author, 'state', state, 'control', control, 'override_reason', override_reason, 'plan_json', plan_json, 'workdir', workdir, 'created_at', created_at, 'updated_at', updated_at)";
const PG_RUN_JSON: &str = "json_build_object('id', id, 'digest', digest, 'release', release, 'version', version, 'environment', environment, 'author', author, 'state', state, 'control', control, 'override_reason', override_reason, 'plan_json', plan_json, 'workdir', workdir, 'created_at', created_at, 'updated_at', updated_at)::text";
const AUDIT_COLS: &str =
    "seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv";

fn audit_entry<R: Row>(r: &R, hv: i64) -> Result<AuditEntry, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AuditEntry {
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
        v: u8::try_from(hv).unwrap_or(0),
    })
}

/// Which runs an archive takes: closed ones last changed before `runs_before` (`all`: id,
/// state, updated_at of every run, oldest first). Returns the chosen ids in that order
/// and the ids staying live.
fn choose(
    all: &[(String, String, String)],
    runs_before: Timestamp,
) -> (Vec<String>, HashSet<String>) {
    let chosen: Vec<String> = all
        .iter()
        .filter(|(_, state, updated)| {
            CLOSED_STATES.contains(&state.as_str()) && ts(updated) < runs_before
        })
        .map(|(id, _, _)| id.clone())
        .collect();
    let staying = all
        .iter()
        .map(|(id, _, _)| id.clone())
        .filter(|id| !chosen.contains(id))
        .collect();
    (chosen, staying)
}

/// The selection from one snapshot's reads: the chosen runs' rows (JSON, in `chosen`
/// order), their journal, steps and approvals folded from their chain entries, and the
/// audit prefix older than `audit_before` that stops before any entry of a run staying.
fn assemble(
    start: (i64, String),
    chosen: &[String],
    staying: &HashSet<String>,
    run_rows: Vec<String>,
    audit: Vec<AuditEntry>,
    audit_before: Timestamp,
) -> Result<Selection, StoreError> {
    let mut sel = Selection {
        start,
        ..Selection::default()
    };
    for r in run_rows {
        sel.runs.push(row_json(&r)?);
    }
    for id in chosen {
        let mut events = Vec::new();
        for e in audit.iter().filter(|e| &e.run_id == id) {
            sel.journal
                .push(serde_json::json!({"seq": e.seq, "run_id": id, "at": e.at,
                "actor": e.actor, "event": e.action, "data": e.detail}));
            events.push((e.at.clone(), chain::event(&e.detail)?));
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
    for e in audit {
        if ts(&e.at) >= audit_before || staying.contains(&e.run_id) {
            break;
        }
        sel.audit.push(e);
    }
    Ok(sel)
}

/// What the prune writes once its checks passed and the rows are deleted: the checkpoint,
/// the summaries and the carried-forward records, all committed to by one `archived`
/// entry appended after `head`.
struct PruneWrite {
    checkpoint: Checkpoint,
    staged: Vec<Staged>,
    app: Appender,
    seq: i64,
}

#[expect(clippy::too_many_arguments, reason = "what one archive records")]
fn prune_write(
    sel: &Selection,
    summaries: &[RunSummary],
    carried: Vec<(String, String, String)>,
    id: i64,
    head: Option<(i64, String)>,
    bundle: (&str, &str),
    before: &str,
    now: Timestamp,
    actor: &str,
) -> Result<PruneWrite, StoreError> {
    let (bundle_sha256, bundle_name) = bundle;
    let ids = sel.run_ids();
    let (end_seq, end_hash) = sel.end();
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
    let mut app = Appender::new(head);
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
    Ok(PruneWrite {
        checkpoint: cp,
        staged,
        app,
        seq,
    })
}

fn moved(what: &str) -> StoreError {
    StoreError::Query(format!(
        "prune the archived records: {what}; nothing was removed, run `slipway archive` again"
    ))
}

/// Test hook: die as a crash would with the summaries written and the records deleted but
/// not committed; the tests show neither backend keeps any of it.
fn fault_inside_prune() {
    if std::env::var("SLIPWAY_FAULT").as_deref() == Ok("archive-inside-prune") {
        std::process::abort();
    }
}

impl ArchiveDb {
    /// Open the archive records of the SQLite store at `path` (opened, created or migrated
    /// first).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: AnyStore::Sqlite(crate::SqliteStore::open(path).await?),
        })
    }

    /// The archive records of whichever store this is.
    pub fn for_store(store: &AnyStore) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// A one-connection pool on the SQLite file, for the selection's snapshot and the
    /// prune's `BEGIN IMMEDIATE` transaction. An in-memory store has no file to archive.
    async fn sqlite_pool(store: &crate::SqliteStore) -> Result<SqlitePool, StoreError> {
        if store.is_memory() {
            return Err(StoreError::Query(
                "archive an in-memory store: it lives in one process and has no file to move records out of; archive a file or PostgreSQL store".into(),
            ));
        }
        let path = store.path();
        let location = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        crate::sqlite::pool_options(1)
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Unavailable {
                location,
                message: e.to_string(),
            })
    }

    async fn kind<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, StoreError> {
        self.store
            .records(Some(kind))
            .await?
            .iter()
            .map(|r| parse::<T>(kind, &r.key, &r.data))
            .collect()
    }

    /// The stored retention rules (kinds never set are absent: the caller's defaults hold).
    pub async fn policy(&self) -> Result<Vec<PolicyRow>, StoreError> {
        let mut rows: Vec<PolicyRow> = self.kind(RETENTION).await?;
        rows.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(rows)
    }

    /// Set the rule of one kind, committed to by a chain entry (`retention_set`) naming the
    /// rule and, as its actor, the pseudonym of `row.set_by`.
    pub async fn set_policy(&self, row: &PolicyRow) -> Result<(), StoreError> {
        let who = row.set_by.strip_prefix("user:").unwrap_or(&row.set_by);
        let actor = self.store.pseudonym(who).await?;
        self.store
            .append_governance(vec![GovernanceRecord {
                kind: RETENTION.to_owned(),
                key: RecordKey::Given(row.kind.clone()),
                data: Some(to_json(row)?),
                action: "retention_set".to_owned(),
                summary: serde_json::json!({"kind": row.kind, "live_days": row.live_days,
                    "keep_days": row.keep_days}),
                actor,
                at: row.set_at.parse().unwrap_or_else(|_| slipway_stdx::now()),
                if_seq: None,
            }])
            .await?;
        Ok(())
    }

    /// Every archived run's summary, oldest first.
    pub async fn summaries(&self) -> Result<Vec<RunSummary>, StoreError> {
        let mut rows: Vec<RunSummary> = self.kind(SUMMARY).await?;
        rows.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(rows)
    }

    /// Every checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut rows: Vec<Checkpoint> = self.kind(CHECKPOINT).await?;
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
        match &self.store {
            AnyStore::Sqlite(s) => {
                let pool = Self::sqlite_pool(s).await?;
                let mut conn = pool.acquire().await.map_err(q)?;
                // A deferred transaction's first read fixes the WAL snapshot.
                let mut tx = conn.begin().await.map_err(q)?;
                let all: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT id, state, updated_at FROM runs ORDER BY created_at, id",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(q)?;
                let (chosen, staying) = choose(&all, runs_before);
                let mut rows = Vec::with_capacity(chosen.len());
                for id in &chosen {
                    // The SQL joins a fixed column list; the run id is bound.
                    let r: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT {RUN_JSON} FROM runs WHERE id = ?1"
                    )))
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(q)?;
                    rows.extend(r);
                }
                let audit = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLS} FROM audit ORDER BY seq"
                )))
                .fetch_all(&mut *tx)
                .await
                .map_err(q)?
                .iter()
                .map(|r| audit_entry(r, r.try_get::<i64, _>("hv").unwrap_or(0)))
                .collect::<Result<Vec<_>, _>>()?;
                tx.commit().await.map_err(q)?;
                // Closing waits for every connection to come back.
                drop(conn);
                pool.close().await;
                assemble(start, &chosen, &staying, rows, audit, audit_before)
            }
            AnyStore::Postgres(p) => {
                let mut tx = p.pool().begin().await.map_err(q)?;
                // One snapshot for every read below (read committed takes one per
                // statement).
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await
                    .map_err(q)?;
                let all: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT id, state, updated_at FROM runs ORDER BY created_at COLLATE \"C\", id COLLATE \"C\"",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(q)?;
                let (chosen, staying) = choose(&all, runs_before);
                let mut rows = Vec::with_capacity(chosen.len());
                for id in &chosen {
                    let r: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT {PG_RUN_JSON} FROM runs WHERE id = $1"
                    )))
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(q)?;
                    rows.extend(r);
                }
                let audit = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLS} FROM audit ORDER BY seq"
                )))
                .fetch_all(&mut *tx)
                .await
                .map_err(q)?
                .iter()
                .map(|r| audit_entry(r, i64::from(r.try_get::<i32, _>("hv").unwrap_or(0))))
                .collect::<Result<Vec<_>, _>>()?;
                tx.commit().await.map_err(q)?;
                assemble(start, &chosen, &staying, rows, audit, audit_before)
            }
        }
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
        let (end_seq, end_hash) = sel.end();
        let bundle = (bundle_sha256, bundle_name);
        match &self.store {
            AnyStore::Sqlite(s) => {
                let pool = Self::sqlite_pool(s).await?;
                let mut conn = pool.acquire().await.map_err(q)?;
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(q)?;
                let latest: Option<String> = sqlx::query_scalar(
                    "SELECT data FROM records WHERE kind = 'archive_checkpoint' ORDER BY CAST(key AS INTEGER) DESC LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await
                .map_err(q)?;
                if start_of(latest.as_deref())? != sel.start {
                    return Err(moved("another archive ran meanwhile"));
                }
                if end_seq > sel.start.0 {
                    let h: Option<String> =
                        sqlx::query_scalar("SELECT hash FROM audit WHERE seq = ?1")
                            .bind(end_seq)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(q)?;
                    if h.as_deref() != Some(end_hash.as_str()) {
                        return Err(moved(&format!("audit entry {end_seq} changed")));
                    }
                }
                for id in &ids {
                    let state: Option<String> =
                        sqlx::query_scalar("SELECT state FROM runs WHERE id = ?1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(q)?;
                    if !state.is_some_and(|s| CLOSED_STATES.contains(&s.as_str())) {
                        return Err(moved(&format!("run {id} is gone or no longer closed")));
                    }
                    sqlx::query("DELETE FROM runs WHERE id = ?1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(q)?;
                }
                // Records whose last entry leaves with the prefix are carried forward.
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
                let head = crate::sqlite::read_head(&mut tx).await?;
                let w = prune_write(
                    sel, summaries, carried, id, head, bundle, before, now, actor,
                )?;
                for s in &w.staged {
                    crate::sqlite::put_record(&mut tx, s, w.seq).await?;
                }
                crate::sqlite::flush(&mut tx, &w.app).await?;
                fault_inside_prune();
                tx.commit().await.map_err(q)?;
                drop(conn);
                pool.close().await;
                Ok(w.checkpoint)
            }
            AnyStore::Postgres(p) => {
                let mut tx = p.pool().begin().await.map_err(q)?;
                // The writers' advisory lock: no journal commit, governance write or other
                // prune interleaves, and the head read after it is the head.
                let head = crate::postgres::lock_and_head(&mut tx).await?;
                let latest: Option<String> = sqlx::query_scalar(
                    "SELECT data FROM records WHERE kind = 'archive_checkpoint' AND key ~ '^[0-9]{1,18}$'
                     ORDER BY key::bigint DESC LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await
                .map_err(q)?;
                if start_of(latest.as_deref())? != sel.start {
                    return Err(moved("another archive ran meanwhile"));
                }
                if end_seq > sel.start.0 {
                    let h: Option<String> =
                        sqlx::query_scalar("SELECT hash FROM audit WHERE seq = $1")
                            .bind(end_seq)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(q)?;
                    if h.as_deref() != Some(end_hash.as_str()) {
                        return Err(moved(&format!("audit entry {end_seq} changed")));
                    }
                }
                for id in &ids {
                    let state: Option<String> =
                        sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 FOR UPDATE")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(q)?;
                    if !state.is_some_and(|s| CLOSED_STATES.contains(&s.as_str())) {
                        return Err(moved(&format!("run {id} is gone or no longer closed")));
                    }
                    sqlx::query("DELETE FROM runs WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(q)?;
                }
                let carried: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT kind, key, data FROM records WHERE seq <= $1
                     ORDER BY kind COLLATE \"C\", key COLLATE \"C\"",
                )
                .bind(end_seq)
                .fetch_all(&mut *tx)
                .await
                .map_err(q)?;
                sqlx::query("DELETE FROM audit WHERE seq <= $1")
                    .bind(end_seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(q)?;
                let id: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(max(key::bigint), 0) + 1 FROM records
                     WHERE kind = 'archive_checkpoint' AND key ~ '^[0-9]{1,18}$'",
                )
                .fetch_one(&mut *tx)
                .await
                .map_err(q)?;
                let w = prune_write(
                    sel, summaries, carried, id, head, bundle, before, now, actor,
                )?;
                for s in &w.staged {
                    crate::postgres::put_record(&mut tx, s, w.seq).await?;
                }
                crate::postgres::flush_entries(&mut tx, &w.app).await?;
                fault_inside_prune();
                tx.commit().await.map_err(q)?;
                Ok(w.checkpoint)
            }
        }
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
