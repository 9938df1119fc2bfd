//! Status, apply and undo against the history table `slipway_schema_history`.
//!
//! Each migration runs in its own transaction together with its history row, so a failed
//! script leaves the database as it was (PostgreSQL and SQLite both have transactional DDL).
//! Scripts must therefore not contain `BEGIN`/`COMMIT` or statements that refuse to run in a
//! transaction (PostgreSQL `CREATE INDEX CONCURRENTLY`). A failed attempt is recorded with
//! `success = false` after the rollback, for the audit trail; it counts as pending.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::clock::now_rfc3339;
use crate::error::{Error, Result};
use crate::files::{Migration, MigrationSet};
use crate::target::{Conn, Target, on_conn};

/// Name of the history table in the target database.
pub const HISTORY_TABLE: &str = "slipway_schema_history";

/// Advisory lock key for PostgreSQL ("slip" in ASCII): one migrator per database at a time.
const PG_LOCK_KEY: i64 = 0x736c_6970;
/// How long we wait for another migrator to finish.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// One row of the history table.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub version: i64,
    pub description: String,
    pub checksum: String,
    pub applied_by: String,
    pub applied_at: String,
    pub duration_ms: i64,
    pub success: bool,
}

/// State of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Applied and the file is unchanged.
    Applied,
    /// Not applied yet (or the last attempt failed).
    Pending,
    /// Pending, but older than the latest applied version.
    OutOfOrder,
    /// Applied, but the file changed since.
    ChecksumMismatch,
    /// Applied, but the file is gone.
    Missing,
}

/// One version in a [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub version: i64,
    pub description: String,
    pub state: State,
    /// A `U` script exists.
    pub reversible: bool,
    /// The history row, if any (also for a failed attempt).
    pub history: Option<HistoryRow>,
    /// Checksum of the file now.
    pub file_checksum: Option<String>,
    pub file: Option<PathBuf>,
}

/// What [`status`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The database (URL masked).
    pub database: String,
    pub entries: Vec<Entry>,
    pub latest_applied: Option<i64>,
    pub applied: Vec<i64>,
    pub pending: Vec<i64>,
    pub out_of_order: Vec<i64>,
    pub missing: Vec<i64>,
    pub checksum_mismatch: Vec<i64>,
    /// Versions whose last attempt failed (they are also pending).
    pub failed: Vec<i64>,
    /// Versions without a `U` script: roll-forward-only.
    pub roll_forward_only: Vec<i64>,
}

impl Status {
    /// Nothing is wrong (no mismatch, missing or out-of-order versions).
    pub fn is_clean(&self) -> bool {
        self.checksum_mismatch.is_empty() && self.missing.is_empty() && self.out_of_order.is_empty()
    }
}

/// Options for [`apply_with`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Recorded as `applied_by`.
    pub who: String,
    /// Apply pending versions older than the latest applied one instead of refusing.
    pub allow_out_of_order: bool,
}

/// One applied (or undone) migration.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub version: i64,
    pub description: String,
    pub duration_ms: u64,
    pub rows_affected: u64,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub database: String,
    pub applied: Vec<StepResult>,
    /// Applied versions whose files are gone (reported, not fatal).
    pub missing: Vec<i64>,
    /// Applied in this run and without a `U` script.
    pub roll_forward_only: Vec<i64>,
    pub latest_applied: Option<i64>,
}

/// What [`undo`] did.
#[derive(Debug, Clone, Serialize)]
pub struct UndoReport {
    pub database: String,
    pub undone: Vec<StepResult>,
    pub latest_applied: Option<i64>,
}

/// Compare the directory with the history table. Does not write anything.
pub async fn status(url: &str, dir: &Path) -> Result<Status> {
    let target = Target::parse(url)?;
    let set = MigrationSet::load(dir)?;
    // A SQLite file that does not exist yet simply has nothing applied; status never creates it.
    if let Target::Sqlite { path } = &target
        && !path.exists()
    {
        return Ok(compute_status(&target.display(), &set, &[]));
    }
    let mut conn = target.connect(false).await?;
    let history = read_history(&mut conn, &target).await;
    conn.close().await;
    Ok(compute_status(&target.display(), &set, &history?))
}

/// Apply all pending migrations in order, recording `who`. Refuses changed files and
/// out-of-order versions.
pub async fn apply(url: &str, dir: &Path, who: &str) -> Result<ApplyReport> {
    apply_with(
        url,
        dir,
        &ApplyOptions {
            who: who.to_owned(),
            allow_out_of_order: false,
        },
    )
    .await
}

/// [`apply`] with options.
pub async fn apply_with(url: &str, dir: &Path, opts: &ApplyOptions) -> Result<ApplyReport> {
    let target = Target::parse(url)?;
    let set = MigrationSet::load(dir)?;
    let mut conn = target.connect(true).await?;
    let result = async {
        lock(&mut conn, &target).await?;
        apply_on(&mut conn, &target, &set, opts).await
    }
    .await;
    conn.close().await;
    result
}

/// Undo applied migrations above `to_version`, newest first, with their `U` scripts.
/// Refuses before changing anything if one of them has no `U` script or no file.
pub async fn undo(url: &str, dir: &Path, to_version: i64) -> Result<UndoReport> {
    let target = Target::parse(url)?;
    let set = MigrationSet::load(dir)?;
    let mut conn = target.connect(false).await?;
    let result = async {
        lock(&mut conn, &target).await?;
        undo_on(&mut conn, &target, &set, to_version).await
    }
    .await;
    conn.close().await;
    result
}

pub(crate) async fn apply_on(
    conn: &mut Conn,
    target: &Target,
    set: &MigrationSet,
    opts: &ApplyOptions,
) -> Result<ApplyReport> {
    ensure_history(conn, target).await?;
    let history = read_history(conn, target).await?;
    let st = compute_status(&target.display(), set, &history);
    if let Some(e) = st
        .entries
        .iter()
        .find(|e| e.state == State::ChecksumMismatch)
    {
        return Err(mismatch_error(e));
    }
    if !st.out_of_order.is_empty() && !opts.allow_out_of_order {
        return Err(Error::OutOfOrder {
            versions: st.out_of_order.clone(),
            latest: st.latest_applied.unwrap_or_default(),
        });
    }
    let mut report = ApplyReport {
        database: target.display(),
        applied: Vec::new(),
        missing: st.missing.clone(),
        roll_forward_only: Vec::new(),
        latest_applied: st.latest_applied,
    };
    for m in &set.migrations {
        if !st.pending.contains(&m.version) {
            continue;
        }
        let step = apply_one(conn, target, m, &opts.who).await?;
        if !m.reversible() {
            report.roll_forward_only.push(m.version);
        }
        report.latest_applied = Some(
            report
                .latest_applied
                .map_or(m.version, |l| l.max(m.version)),
        );
        report.applied.push(step);
    }
    Ok(report)
}

pub(crate) async fn undo_on(
    conn: &mut Conn,
    target: &Target,
    set: &MigrationSet,
    to_version: i64,
) -> Result<UndoReport> {
    let history = read_history(conn, target).await?;
    let st = compute_status(&target.display(), set, &history);
    let mut todo: Vec<&Migration> = Vec::new();
    let mut irreversible = Vec::new();
    for v in st
        .applied
        .iter()
        .chain(&st.checksum_mismatch)
        .chain(&st.missing)
    {
        if *v <= to_version {
            continue;
        }
        match set.get(*v) {
            None => {
                return Err(Error::UndoMissing {
                    to: to_version,
                    version: *v,
                    dir: set.dir.clone(),
                });
            }
            Some(m) if m.undo.is_none() => irreversible.push(*v),
            Some(m) => todo.push(m),
        }
    }
    if let Some(e) = st
        .entries
        .iter()
        .find(|e| e.state == State::ChecksumMismatch && e.version > to_version)
    {
        return Err(mismatch_error(e));
    }
    if !irreversible.is_empty() {
        irreversible.sort_unstable();
        return Err(Error::Irreversible {
            to: to_version,
            versions: irreversible,
        });
    }
    todo.sort_by_key(|m| std::cmp::Reverse(m.version));
    let mut undone = Vec::new();
    for m in todo {
        undone.push(undo_one(conn, m).await?);
    }
    let history = read_history(conn, target).await?;
    Ok(UndoReport {
        database: target.display(),
        undone,
        latest_applied: history
            .iter()
            .filter(|h| h.success)
            .map(|h| h.version)
            .max(),
    })
}

fn mismatch_error(e: &Entry) -> Error {
    Error::ChecksumMismatch {
        version: e.version,
        file: e.file.clone().unwrap_or_default(),
        recorded: e
            .history
            .as_ref()
            .map(|h| h.checksum.clone())
            .unwrap_or_default(),
        current: e.file_checksum.clone().unwrap_or_default(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

const UPSERT: &str = "INSERT INTO slipway_schema_history \
    (version, description, checksum, applied_by, applied_at, duration_ms, success) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (version) DO UPDATE SET description = excluded.description, \
    checksum = excluded.checksum, applied_by = excluded.applied_by, \
    applied_at = excluded.applied_at, duration_ms = excluded.duration_ms, \
    success = excluded.success";

/// Apply one migration and record it, in one transaction.
pub(crate) async fn apply_one(
    conn: &mut Conn,
    target: &Target,
    m: &Migration,
    who: &str,
) -> Result<StepResult> {
    let start = Instant::now();
    let sql = m.apply.sql.clone();
    let result: Result<u64, sqlx::Error> = on_conn!(conn, c => async {
        let mut tx = c.begin().await?;
        let rows = run_script(&mut *tx, sql).await?;
        let ms = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
        sqlx::query(UPSERT)
            .bind(m.version)
            .bind(&m.description)
            .bind(&m.apply.checksum)
            .bind(who)
            .bind(now_rfc3339())
            .bind(ms)
            .bind(true)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }.await);
    let elapsed = start.elapsed();
    match result {
        Ok(rows_affected) => Ok(StepResult {
            version: m.version,
            description: m.description.clone(),
            duration_ms: millis(elapsed),
            rows_affected,
        }),
        Err(e) => {
            // The transaction was dropped, so it is rolled back before the next statement on
            // this connection. Record the failed attempt for the audit trail; if even that
            // fails, the original error is what matters.
            let ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
            let _ = on_conn!(conn, c => sqlx::query(UPSERT)
                .bind(m.version)
                .bind(&m.description)
                .bind(&m.apply.checksum)
                .bind(who)
                .bind(now_rfc3339())
                .bind(ms)
                .bind(false)
                .execute(&mut *c)
                .await
                .map(|_| ()));
            let _ = target;
            Err(Error::MigrationFailed {
                version: m.version,
                file: m.apply.path.clone(),
                reason: e.to_string(),
            })
        }
    }
}

/// Run one undo script and delete the history row, in one transaction.
pub(crate) async fn undo_one(conn: &mut Conn, m: &Migration) -> Result<StepResult> {
    let Some(undo) = &m.undo else {
        return Err(Error::Irreversible {
            to: m.version - 1,
            versions: vec![m.version],
        });
    };
    let start = Instant::now();
    let sql = undo.sql.clone();
    let result: Result<u64, sqlx::Error> = on_conn!(conn, c => async {
        let mut tx = c.begin().await?;
        let rows = run_script(&mut *tx, sql).await?;
        sqlx::query("DELETE FROM slipway_schema_history WHERE version = $1")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }.await);
    match result {
        Ok(rows_affected) => Ok(StepResult {
            version: m.version,
            description: m.description.clone(),
            duration_ms: millis(start.elapsed()),
            rows_affected,
        }),
        Err(e) => Err(Error::UndoFailed {
            version: m.version,
            file: undo.path.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Run a script and count the rows its statements changed.
trait RunScript {
    async fn run(&mut self, sql: String) -> Result<u64, sqlx::Error>;
}

impl RunScript for sqlx::PgConnection {
    async fn run(&mut self, sql: String) -> Result<u64, sqlx::Error> {
        Ok(sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(self)
            .await?
            .rows_affected())
    }
}

impl RunScript for sqlx::SqliteConnection {
    async fn run(&mut self, sql: String) -> Result<u64, sqlx::Error> {
        // SQLite's per-statement change count is not reset by DDL (a CREATE TABLE reports the
        // count of the previous INSERT), so summing it over a script over-counts; the
        // connection's running total is exact.
        let before: i64 = sqlx::query_scalar("SELECT total_changes()")
            .fetch_one(&mut *self)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *self)
            .await?;
        let after: i64 = sqlx::query_scalar("SELECT total_changes()")
            .fetch_one(&mut *self)
            .await?;
        Ok(u64::try_from(after - before).unwrap_or(0))
    }
}

async fn run_script<C: RunScript>(c: &mut C, sql: String) -> Result<u64, sqlx::Error> {
    c.run(sql).await
}

/// Take the PostgreSQL advisory lock so two migrators never interleave. SQLite serializes
/// writers by itself and the history primary key refuses a double apply.
async fn lock(conn: &mut Conn, target: &Target) -> Result<()> {
    let Conn::Pg(c) = conn else {
        return Ok(());
    };
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PG_LOCK_KEY)
            .fetch_one(&mut *c)
            .await
            .map_err(|source| Error::Query {
                what: "take the migration lock".into(),
                url: target.display(),
                source,
            })?;
        if got {
            // Released when the connection closes.
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Locked(format!(
                "take the migration lock on `{}` within {LOCK_WAIT:?}: another migrator is running",
                target.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn ensure_history(conn: &mut Conn, target: &Target) -> Result<()> {
    let ddl = if conn.is_pg() {
        "CREATE TABLE IF NOT EXISTS slipway_schema_history (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, checksum TEXT NOT NULL, applied_by TEXT NOT NULL, \
         applied_at TEXT NOT NULL, duration_ms BIGINT NOT NULL, success BOOLEAN NOT NULL)"
    } else {
        "CREATE TABLE IF NOT EXISTS slipway_schema_history (version INTEGER PRIMARY KEY, \
         description TEXT NOT NULL, checksum TEXT NOT NULL, applied_by TEXT NOT NULL, \
         applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, success BOOLEAN NOT NULL)"
    };
    conn.exec(ddl)
        .await
        .map(|_| ())
        .map_err(|source| Error::Query {
            what: "create the history table".into(),
            url: target.display(),
            source,
        })
}

/// All history rows; none when the table does not exist yet.
pub(crate) async fn read_history(conn: &mut Conn, target: &Target) -> Result<Vec<HistoryRow>> {
    let q = |source| Error::Query {
        what: "read the history table".into(),
        url: target.display(),
        source,
    };
    let exists: bool = on_conn!(conn, c => {
        let sql = if matches!(target, Target::Postgres { .. }) {
            "SELECT to_regclass('slipway_schema_history') IS NOT NULL"
        } else {
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'slipway_schema_history'"
        };
        sqlx::query_scalar(sql).fetch_one(&mut *c).await.map_err(q)?
    });
    if !exists {
        return Ok(Vec::new());
    }
    let sql = "SELECT version, description, checksum, applied_by, applied_at, duration_ms, success \
               FROM slipway_schema_history ORDER BY version";
    on_conn!(conn, c => {
        let rows = sqlx::query(sql).fetch_all(&mut *c).await.map_err(q)?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    version: r.try_get(0)?,
                    description: r.try_get(1)?,
                    checksum: r.try_get(2)?,
                    applied_by: r.try_get(3)?,
                    applied_at: r.try_get(4)?,
                    duration_ms: r.try_get(5)?,
                    success: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(q)
    })
}

pub(crate) fn compute_status(database: &str, set: &MigrationSet, history: &[HistoryRow]) -> Status {
    let by_version: BTreeMap<i64, &HistoryRow> = history.iter().map(|h| (h.version, h)).collect();
    let latest_applied = history
        .iter()
        .filter(|h| h.success)
        .map(|h| h.version)
        .max();
    let mut st = Status {
        database: database.to_owned(),
        entries: Vec::new(),
        latest_applied,
        applied: Vec::new(),
        pending: Vec::new(),
        out_of_order: Vec::new(),
        missing: Vec::new(),
        checksum_mismatch: Vec::new(),
        failed: Vec::new(),
        roll_forward_only: set.irreversible(),
    };
    let mut versions: Vec<i64> = set.migrations.iter().map(|m| m.version).collect();
    versions.extend(history.iter().filter(|h| h.success).map(|h| h.version));
    versions.sort_unstable();
    versions.dedup();
    for v in versions {
        let m = set.get(v);
        let h = by_version.get(&v).copied();
        let applied = h.filter(|h| h.success);
        let state = match (m, applied) {
            (Some(m), Some(h)) if h.checksum != m.apply.checksum => State::ChecksumMismatch,
            (Some(_), Some(_)) => State::Applied,
            (None, _) => State::Missing,
            (Some(_), None) if latest_applied.is_some_and(|l| v < l) => State::OutOfOrder,
            (Some(_), None) => State::Pending,
        };
        if h.is_some_and(|h| !h.success) {
            st.failed.push(v);
        }
        match state {
            State::Applied => st.applied.push(v),
            State::Pending => st.pending.push(v),
            State::OutOfOrder => {
                st.out_of_order.push(v);
                st.pending.push(v);
            }
            State::ChecksumMismatch => st.checksum_mismatch.push(v),
            State::Missing => st.missing.push(v),
        }
        st.entries.push(Entry {
            version: v,
            description: m
                .map(|m| m.description.clone())
                .or_else(|| h.map(|h| h.description.clone()))
                .unwrap_or_default(),
            state,
            reversible: m.is_some_and(Migration::reversible),
            history: h.cloned(),
            file_checksum: m.map(|m| m.apply.checksum.clone()),
            file: m.map(|m| m.apply.path.clone()),
        });
    }
    st
}
