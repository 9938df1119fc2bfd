//! Status, apply and undo against the history table `slipway_schema_history`.
//!
//! Each migration runs in its own transaction together with its history row, so a failed
//! script leaves the database as it was (PostgreSQL and SQLite both have transactional DDL).
//! Scripts must therefore not contain `BEGIN`/`COMMIT`. A failed attempt is recorded with
//! `success = false` after the rollback, for the audit trail; it counts as pending.
//!
//! **Statements that cannot run in a transaction.** A migration holding `CREATE INDEX
//! CONCURRENTLY`, `DROP INDEX CONCURRENTLY`, `REINDEX … CONCURRENTLY`, `VACUUM`, `ALTER
//! TYPE … ADD VALUE` (refused in a transaction block, or unusable in the one that added
//! it) or `VALIDATE CONSTRAINT` (which must not run while the stronger lock of an earlier
//! `ADD CONSTRAINT … NOT VALID` is held) is applied in **parts**
//! (`slipway_package::compat::locks::transaction_need`): consecutive ordinary statements
//! share a transaction, `VALIDATE CONSTRAINT` gets one of its own, the others run alone in
//! autocommit. Progress is a row of `slipway_schema_progress` (version, checksum, parts
//! done of parts in all), written before the first part and advanced with each: in the
//! same transaction as a transactional part, right after an autocommit one. A crash
//! between parts leaves the row, so `status` shows the version `in-progress` (part k of n)
//! and the next `apply` continues at the first part not recorded as done — the file must be
//! unchanged (its checksum is in the row). The part that was running when the crash came is
//! checked before it runs again: an INVALID index left by an interrupted concurrent build is
//! dropped (`DROP INDEX CONCURRENTLY`) and built again, a build that finished is not
//! repeated, an index already dropped or an enum label already added is skipped. The last
//! part's completion writes the history row and deletes the progress row in one
//! transaction. A concurrent index must have a name (an unnamed one could not be found
//! again); such a migration is refused before anything runs. Undo runs a `U` script in the
//! same parts, without progress: undo scripts with such statements must be re-runnable
//! (`IF EXISTS`). A version in progress is undone like an applied one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, Row};

use slipway_package::compat::locks::{self, Resumable, TxNeed};

use crate::clock::now_rfc3339;
use crate::error::{Error, Result};
use crate::files::{Migration, MigrationSet};
use crate::target::{Conn, Target, on_conn};

/// Name of the history table in the target database.
pub const HISTORY_TABLE: &str = "slipway_schema_history";

/// Name of the table recording how far a migration applied in parts got.
pub const PROGRESS_TABLE: &str = "slipway_schema_progress";

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
    /// Applied in parts and interrupted (or failed) after some of them: `apply` continues
    /// it. Also pending.
    InProgress,
}

/// How far a migration applied in parts got (a row of `slipway_schema_progress`).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Parts done (committed).
    pub done: i64,
    /// Parts in all.
    pub total: i64,
    /// Checksum of the file the parts came from.
    pub checksum: String,
    pub applied_by: String,
    pub started_at: String,
    pub updated_at: String,
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
    /// For a migration applied in parts and not finished: how far it got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
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
    /// Versions applied in parts and not finished (they are also pending).
    pub in_progress: Vec<i64>,
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
    /// What happened beyond running the script: parts resumed, an INVALID index rebuilt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
    let read = async {
        let history = read_history(&mut conn, &target).await?;
        let progress = read_progress(&mut conn, &target).await?;
        Ok::<_, Error>((history, progress))
    }
    .await;
    conn.close().await;
    let (history, progress) = read?;
    Ok(compute_status_with(
        &target.display(),
        &set,
        &history,
        &progress,
    ))
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
    let progress = read_progress(conn, target).await?;
    let st = compute_status_with(&target.display(), set, &history, &progress);
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
    let progress = read_progress(conn, target).await?;
    let st = compute_status_with(&target.display(), set, &history, &progress);
    let mut todo: Vec<&Migration> = Vec::new();
    let mut irreversible = Vec::new();
    // A version in progress has parts committed: it is undone like an applied one.
    for v in st
        .applied
        .iter()
        .chain(&st.checksum_mismatch)
        .chain(&st.missing)
        .chain(&st.in_progress)
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

/// Apply one migration and record it: in one transaction, or in parts when it has
/// statements that cannot share the migration's transaction (see the module docs).
pub(crate) async fn apply_one(
    conn: &mut Conn,
    target: &Target,
    m: &Migration,
    who: &str,
) -> Result<StepResult> {
    let parts = parts(&m.apply.sql);
    if parts.iter().any(|p| p.need != TxNeed::Shared) {
        return apply_in_parts(conn, target, m, who, &parts).await;
    }
    apply_whole(conn, target, m, who).await
}

/// Apply one migration and record it, in one transaction.
async fn apply_whole(
    conn: &mut Conn,
    target: &Target,
    m: &Migration,
    who: &str,
) -> Result<StepResult> {
    let start = Instant::now();
    let sql = m.apply.sql.clone();
    let result: Result<u64, Failed> = on_conn!(conn, c => async {
        let mut tx = c.begin().await?;
        let rows = run_script(&mut *tx, sql).await.map_err(Failed::Script)?;
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
            notes: Vec::new(),
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
                reason: e.describe(&m.apply.sql),
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
    let parts = parts(&undo.sql);
    let split = parts.iter().any(|p| p.need != TxNeed::Shared);
    // Without progress rows: an undo interrupted between parts is run again whole, which
    // is why such undo scripts must be re-runnable (the module docs say so).
    let mut rows = 0;
    if split {
        for p in &parts {
            let r = match p.need {
                TxNeed::Outside => conn.exec(&p.sql).await,
                _ => on_conn!(conn, c => async {
                    let mut tx = c.begin().await?;
                    let rows = run_script(&mut *tx, p.sql.clone()).await?;
                    tx.commit().await?;
                    Ok(rows)
                }.await),
            };
            match r {
                Ok(n) => rows += n,
                Err(e) => {
                    return Err(Error::UndoFailed {
                        version: m.version,
                        file: undo.path.clone(),
                        reason: format!(
                            "the statement at line {} ({}); the parts before it are committed, so undo is partial: make the script re-runnable (IF EXISTS) and run undo again",
                            p.line,
                            db_error(&e, None)
                        ),
                    });
                }
            }
        }
    }
    let sql = if split {
        String::new()
    } else {
        undo.sql.clone()
    };
    let progress = progress_exists(conn).await;
    let result: Result<u64, Failed> = on_conn!(conn, c => async {
        let mut tx = c.begin().await?;
        let rows = if sql.is_empty() {
            0
        } else {
            run_script(&mut *tx, sql).await.map_err(Failed::Script)?
        };
        sqlx::query("DELETE FROM slipway_schema_history WHERE version = $1")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        if progress {
            sqlx::query("DELETE FROM slipway_schema_progress WHERE version = $1")
                .bind(m.version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows)
    }.await);
    match result {
        Ok(n) => Ok(StepResult {
            version: m.version,
            description: m.description.clone(),
            duration_ms: millis(start.elapsed()),
            rows_affected: rows + n,
            notes: Vec::new(),
        }),
        Err(e) => Err(Error::UndoFailed {
            version: m.version,
            file: undo.path.clone(),
            reason: e.describe(&undo.sql),
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

/// Why applying or undoing a migration in one transaction failed: its script, or the
/// bookkeeping around it (the transaction, the history row).
enum Failed {
    Script(sqlx::Error),
    Other(sqlx::Error),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Self::Other(e)
    }
}

impl Failed {
    /// The reason as a user reads it; a position is the script's own (`script` is the
    /// file's text, sent as it is).
    fn describe(&self, script: &str) -> String {
        match self {
            Self::Script(e) => db_error(e, Some(script)),
            Self::Other(e) => db_error(e, None),
        }
    }
}

/// A database error as a user reads it. For PostgreSQL: the message, the SQLSTATE, where
/// in the script it happened when `script` is the text that was sent (PostgreSQL's
/// `position`, a 1-based character offset, as line and column of the file), its detail
/// and hint — never the "at line N" sqlx's `Display` appends, which is a line of
/// PostgreSQL's own C source. Other databases: their message as sqlx words it.
pub(crate) fn db_error(e: &sqlx::Error, script: Option<&str>) -> String {
    let Some(pg) = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
    else {
        return e.to_string();
    };
    let mut s = format!("{} (SQLSTATE {})", pg.message(), pg.code());
    if let (Some(script), Some(sqlx::postgres::PgErrorPosition::Original(p))) =
        (script, pg.position())
        && let Some((line, col)) = line_col(script, p)
    {
        s.push_str(&format!(" at line {line}, column {col} of the file"));
    }
    if let Some(d) = pg.detail() {
        s.push_str(&format!("; detail: {d}"));
    }
    if let Some(h) = pg.hint() {
        s.push_str(&format!("; hint: {h}"));
    }
    s
}

/// Line and column (both 1-based, columns in characters) of the `pos`-th character
/// (1-based) of `text`; `None` past its end.
fn line_col(text: &str, pos: usize) -> Option<(usize, usize)> {
    let (mut line, mut col) = (1, 1);
    for (i, c) in text.chars().enumerate() {
        if i + 1 == pos {
            return Some((line, col));
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    None
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
            // Released when the connection closes. A migrator that dies mid-statement must
            // not leave its backend working on: PostgreSQL 14+ checks the client is still
            // there every second and aborts the statement when it is gone (for a concurrent
            // index build that leaves the INVALID index the next apply rebuilds). Older
            // servers refuse the setting; they notice only when they next write to us.
            let _ = sqlx::raw_sql("SET client_connection_check_interval = '1s'")
                .execute(&mut *c)
                .await;
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
    compute_status_with(database, set, history, &BTreeMap::new())
}

/// [`compute_status`] with the progress of migrations applied in parts.
pub(crate) fn compute_status_with(
    database: &str,
    set: &MigrationSet,
    history: &[HistoryRow],
    progress: &BTreeMap<i64, Progress>,
) -> Status {
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
        in_progress: Vec::new(),
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
            (Some(_), None) if progress.contains_key(&v) => State::InProgress,
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
            State::InProgress => {
                st.in_progress.push(v);
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
            progress: progress.get(&v).filter(|_| applied.is_none()).cloned(),
            file_checksum: m.map(|m| m.apply.checksum.clone()),
            file: m.map(|m| m.apply.path.clone()),
        });
    }
    st
}

/// One part of a migration as apply runs it: consecutive statements sharing a transaction,
/// or one statement needing a transaction of its own or none.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    need: TxNeed,
    /// 1-based line of its first statement.
    line: usize,
    sql: String,
}

/// The parts of a script (see the module docs).
pub(crate) fn parts(sql: &str) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    for (line, stmt) in slipway_package::compat::sql::statements(sql) {
        let need = locks::transaction_need(&stmt);
        match out.last_mut() {
            Some(p) if need == TxNeed::Shared && p.need == TxNeed::Shared => {
                p.sql.push_str(";\n");
                p.sql.push_str(&stmt);
            }
            _ => out.push(Part {
                need,
                line,
                sql: stmt,
            }),
        }
    }
    out
}

fn progress_ddl(pg: bool) -> &'static str {
    if pg {
        "CREATE TABLE IF NOT EXISTS slipway_schema_progress (version BIGINT PRIMARY KEY, \
         checksum TEXT NOT NULL, done BIGINT NOT NULL, total BIGINT NOT NULL, \
         applied_by TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    } else {
        "CREATE TABLE IF NOT EXISTS slipway_schema_progress (version INTEGER PRIMARY KEY, \
         checksum TEXT NOT NULL, done INTEGER NOT NULL, total INTEGER NOT NULL, \
         applied_by TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    }
}

const UPSERT_PROGRESS: &str = "INSERT INTO slipway_schema_progress \
    (version, checksum, done, total, applied_by, started_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $6) \
    ON CONFLICT (version) DO UPDATE SET checksum = excluded.checksum, done = excluded.done, \
    total = excluded.total, applied_by = excluded.applied_by, updated_at = excluded.updated_at";

/// Whether the progress table exists (only databases that had a migration applied in
/// parts have it).
async fn progress_exists(conn: &mut Conn) -> bool {
    let sql = if conn.is_pg() {
        "SELECT to_regclass('slipway_schema_progress') IS NOT NULL"
    } else {
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'slipway_schema_progress'"
    };
    on_conn!(conn, c => sqlx::query_scalar::<_, bool>(sql).fetch_one(&mut *c).await)
        .unwrap_or(false)
}

/// Every progress row; none when the table does not exist.
pub(crate) async fn read_progress(
    conn: &mut Conn,
    target: &Target,
) -> Result<BTreeMap<i64, Progress>> {
    if !progress_exists(conn).await {
        return Ok(BTreeMap::new());
    }
    let q = |source| Error::Query {
        what: "read the progress table".into(),
        url: target.display(),
        source,
    };
    let sql = "SELECT version, checksum, done, total, applied_by, started_at, updated_at \
               FROM slipway_schema_progress ORDER BY version";
    on_conn!(conn, c => {
        let rows = sqlx::query(sql).fetch_all(&mut *c).await.map_err(q)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    Progress {
                        checksum: r.try_get(1)?,
                        done: r.try_get(2)?,
                        total: r.try_get(3)?,
                        applied_by: r.try_get(4)?,
                        started_at: r.try_get(5)?,
                        updated_at: r.try_get(6)?,
                    },
                ))
            })
            .collect::<Result<BTreeMap<_, _>, sqlx::Error>>()
            .map_err(q)
    })
}

/// Before an autocommit part runs: whether to run it, and what was found. Only
/// PostgreSQL statements are checked (SQLite's `VACUUM` is simply run again).
async fn prepare_outside(
    conn: &mut Conn,
    target: &Target,
    part: &Part,
    resuming: bool,
    notes: &mut Vec<String>,
) -> Result<bool> {
    let Conn::Pg(c) = conn else {
        return Ok(true);
    };
    let q = |what: &str| {
        let what = what.to_owned();
        let url = target.display();
        move |source| Error::Query { what, url, source }
    };
    match locks::resumable(&part.sql) {
        Resumable::CreateIndexConcurrently { name: Some(name) } => {
            let valid: Option<bool> = sqlx::query_scalar(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            )
            .bind(&name)
            .fetch_optional(&mut *c)
            .await
            .map_err(q("look for the index"))?;
            match valid {
                Some(false) => {
                    // What an interrupted CREATE INDEX CONCURRENTLY leaves: an index that
                    // is maintained on every write but never used. It must go before the
                    // build runs again (IF NOT EXISTS would keep it as it is).
                    sqlx::raw_sql(AssertSqlSafe(format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {name}"
                    )))
                    .execute(&mut *c)
                    .await
                    .map_err(q("drop the INVALID index"))?;
                    notes.push(format!(
                        "index {name} was INVALID (an interrupted concurrent build): dropped and built again (line {})",
                        part.line
                    ));
                    Ok(true)
                }
                Some(true) if resuming => {
                    notes.push(format!(
                        "index {name} was built before the interruption (line {}): not built again",
                        part.line
                    ));
                    Ok(false)
                }
                _ => Ok(true),
            }
        }
        Resumable::DropIndexConcurrently { name } if resuming => {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&name)
                .fetch_one(&mut *c)
                .await
                .map_err(q("look for the index"))?;
            if !exists {
                notes.push(format!(
                    "index {name} was dropped before the interruption (line {})",
                    part.line
                ));
            }
            Ok(exists)
        }
        Resumable::AddEnumValue { type_name, label } if resuming => {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_enum WHERE enumtypid = to_regtype($1) AND enumlabel = $2)",
            )
            .bind(&type_name)
            .bind(&label)
            .fetch_one(&mut *c)
            .await
            .map_err(q("look for the enum value"))?;
            if exists {
                notes.push(format!(
                    "value '{label}' of {type_name} was added before the interruption (line {})",
                    part.line
                ));
            }
            Ok(!exists)
        }
        _ => Ok(true),
    }
}

/// Apply one migration part by part, recording progress (see the module docs).
async fn apply_in_parts(
    conn: &mut Conn,
    target: &Target,
    m: &Migration,
    who: &str,
    parts: &[Part],
) -> Result<StepResult> {
    let start = Instant::now();
    let total = i64::try_from(parts.len()).unwrap_or(i64::MAX);
    let query = |what: &'static str| {
        let url = target.display();
        move |source| Error::Query {
            what: what.into(),
            url,
            source,
        }
    };
    // A concurrent index without a name could not be found again after a crash.
    if let Some(p) = parts.iter().find(|p| {
        matches!(
            locks::resumable(&p.sql),
            Resumable::CreateIndexConcurrently { name: None }
        )
    }) {
        return Err(Error::Unsupported(format!(
            "apply V{} (`{}`): the CREATE INDEX CONCURRENTLY at line {} has no index name; name it (CREATE INDEX CONCURRENTLY orders_status_idx ON …) so an interrupted build can be found and rebuilt. Nothing was applied",
            m.version,
            m.apply.path.display(),
            p.line
        )));
    }
    conn.exec(progress_ddl(conn.is_pg()))
        .await
        .map_err(query("create the progress table"))?;
    let progress = read_progress(conn, target).await?.remove(&m.version);
    let mut notes = Vec::new();
    let done = match &progress {
        Some(p) if p.checksum != m.apply.checksum || p.total != total => {
            return Err(Error::ResumeChanged {
                version: m.version,
                file: m.apply.path.clone(),
                done: p.done,
                total: p.total,
                recorded: p.checksum.clone(),
                current: m.apply.checksum.clone(),
            });
        }
        Some(p) => {
            notes.push(format!(
                "resumed after part {} of {total} (started {} by {})",
                p.done, p.started_at, p.applied_by
            ));
            usize::try_from(p.done).unwrap_or(0)
        }
        None => {
            let now = now_rfc3339();
            on_conn!(conn, c => sqlx::query(UPSERT_PROGRESS)
                .bind(m.version)
                .bind(&m.apply.checksum)
                .bind(0_i64)
                .bind(total)
                .bind(who)
                .bind(&now)
                .execute(&mut *c)
                .await
                .map(|_| ()))
            .map_err(query("record the migration's progress"))?;
            0
        }
    };
    let mut rows = 0;
    for (k, part) in parts.iter().enumerate().skip(done) {
        let now_done = i64::try_from(k + 1).unwrap_or(i64::MAX);
        let result: Result<u64, sqlx::Error> = match part.need {
            TxNeed::Outside => {
                let resuming = progress.is_some() && k == done;
                let run = prepare_outside(conn, target, part, resuming, &mut notes).await?;
                let r = if run {
                    conn.exec(&part.sql).await
                } else {
                    Ok(0)
                };
                match r {
                    Ok(n) => on_conn!(conn, c => sqlx::query(UPSERT_PROGRESS)
                        .bind(m.version)
                        .bind(&m.apply.checksum)
                        .bind(now_done)
                        .bind(total)
                        .bind(who)
                        .bind(now_rfc3339())
                        .execute(&mut *c)
                        .await
                        .map(|_| n)),
                    Err(e) => Err(e),
                }
            }
            TxNeed::Shared | TxNeed::Own => on_conn!(conn, c => async {
                let mut tx = c.begin().await?;
                let n = run_script(&mut *tx, part.sql.clone()).await?;
                sqlx::query(UPSERT_PROGRESS)
                    .bind(m.version)
                    .bind(&m.apply.checksum)
                    .bind(now_done)
                    .bind(total)
                    .bind(who)
                    .bind(now_rfc3339())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n)
            }
            .await),
        };
        match result {
            Ok(n) => rows += n,
            Err(e) => {
                // The failed attempt is in the history for the audit trail; the progress
                // row says where the next apply continues.
                let ms = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
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
                return Err(Error::PartFailed {
                    version: m.version,
                    file: m.apply.path.clone(),
                    part: k + 1,
                    total: parts.len(),
                    line: part.line,
                    how: part.need.as_str(),
                    // A part is the file's statements re-joined, so a position in it is
                    // not one in the file: the part's first line is named instead.
                    reason: db_error(&e, None),
                });
            }
        }
    }
    let ms = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
    on_conn!(conn, c => async {
        let mut tx = c.begin().await?;
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
        sqlx::query("DELETE FROM slipway_schema_progress WHERE version = $1")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await)
    .map_err(query("record the applied migration"))?;
    Ok(StepResult {
        version: m.version,
        description: m.description.clone(),
        duration_ms: millis(start.elapsed()),
        rows_affected: rows,
        notes,
    })
}
