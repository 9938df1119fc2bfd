//! Dry run on a clone: clone the database, apply the pending migrations, run their undo
//! scripts newest first, compare the schema after undo with the one before, drop the clone.
//!
//! PostgreSQL clones with `CREATE DATABASE clone TEMPLATE src`, which PostgreSQL refuses
//! while any other session is connected to the source: we terminate them only when the caller
//! allows it (`allow_terminate`), otherwise we fail naming them. SQLite clones with
//! `VACUUM INTO`, an online, transactionally consistent copy made by the source connection
//! (sqlx does not expose the C backup API; `VACUUM INTO` gives the same guarantee and also
//! compacts the copy). The clone is dropped on every path, success or failure.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::files::MigrationSet;
use crate::migrate::{self, compute_status, ensure_history, read_history};
use crate::schema::snapshot;
use crate::target::{Conn, Target, quote_ident, quote_literal};

/// How long terminated sessions may take to disappear.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);
/// How long sessions on the source may take to go away by themselves.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// One pending migration in a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunStep {
    pub version: i64,
    pub description: String,
    pub reversible: bool,
    pub apply_ms: u64,
    pub rows_affected: u64,
    /// `None` when the undo did not run (no `U` script, or an earlier step failed).
    pub undo_ms: Option<u64>,
    pub undo_rows_affected: Option<u64>,
}

/// What a dry run found.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    /// The source database (URL masked).
    pub database: String,
    /// Name of the clone (database name or file), dropped at the end.
    pub clone: String,
    pub clone_ms: u64,
    /// Sessions terminated on the source to allow the clone (PostgreSQL).
    pub terminated_sessions: Vec<String>,
    pub steps: Vec<DryRunStep>,
    pub apply_ms: u64,
    pub undo_ms: u64,
    /// The first failing migration, if any (nothing after it ran).
    pub apply_error: Option<String>,
    /// The first failing undo script, if any.
    pub undo_error: Option<String>,
    /// Pending versions that cannot be undone: no `U` script or their undo failed.
    pub roll_forward_only: Vec<i64>,
    /// The schema after undo equals the schema before apply.
    pub undo_restores_schema: bool,
    /// What differs after undo (empty when restored).
    pub schema_differences: Vec<String>,
    pub clone_dropped: bool,
    pub drop_error: Option<String>,
}

impl DryRunReport {
    /// Every migration applied and undo restored the schema exactly.
    pub fn passed(&self) -> bool {
        self.apply_error.is_none() && self.undo_error.is_none() && self.undo_restores_schema
    }
}

/// Dry-run the pending migrations of `dir` against a clone of `url`.
pub async fn dry_run(
    url: &str,
    dir: &std::path::Path,
    allow_terminate: bool,
) -> Result<DryRunReport> {
    let target = Target::parse(url)?;
    let set = MigrationSet::load(dir)?;
    let start = Instant::now();
    let (clone, terminated) = make_clone(&target, allow_terminate).await?;
    let clone_ms = millis(start.elapsed());
    let mut report = DryRunReport {
        database: target.display(),
        clone: clone_name(&clone),
        clone_ms,
        terminated_sessions: terminated,
        steps: Vec::new(),
        apply_ms: 0,
        undo_ms: 0,
        apply_error: None,
        undo_error: None,
        roll_forward_only: Vec::new(),
        undo_restores_schema: false,
        schema_differences: Vec::new(),
        clone_dropped: false,
        drop_error: None,
    };
    let outcome = run_on_clone(&clone, &set, &mut report).await;
    match drop_clone(&target, &clone).await {
        Ok(()) => report.clone_dropped = true,
        Err(e) => report.drop_error = Some(e.to_string()),
    }
    outcome.map(|()| report)
}

async fn run_on_clone(clone: &Target, set: &MigrationSet, report: &mut DryRunReport) -> Result<()> {
    let mut conn = clone.connect(false).await?;
    let result = async {
        let before = snapshot(&mut conn, clone).await?;
        let history = read_history(&mut conn, clone).await?;
        let st = compute_status(&report.database, set, &history);
        if let Some(e) = st
            .entries
            .iter()
            .find(|e| e.state == migrate::State::ChecksumMismatch)
        {
            report.apply_error = Some(format!(
                "V{} changed after it was applied: checksum in the database {}, file now {}",
                e.version,
                e.history
                    .as_ref()
                    .map(|h| h.checksum.as_str())
                    .unwrap_or_default(),
                e.file_checksum.as_deref().unwrap_or_default()
            ));
            report.undo_restores_schema = true;
            return Ok(());
        }
        ensure_history(&mut conn, clone).await?;
        let t = Instant::now();
        let mut applied = Vec::new();
        for m in set
            .migrations
            .iter()
            .filter(|m| st.pending.contains(&m.version))
        {
            match migrate::apply_one(&mut conn, clone, m, "slipway dry-run").await {
                Ok(step) => {
                    report.steps.push(DryRunStep {
                        version: m.version,
                        description: m.description.clone(),
                        reversible: m.reversible(),
                        apply_ms: step.duration_ms,
                        rows_affected: step.rows_affected,
                        undo_ms: None,
                        undo_rows_affected: None,
                    });
                    applied.push(m);
                }
                Err(e) => {
                    report.apply_error = Some(e.to_string());
                    break;
                }
            }
        }
        report.apply_ms = millis(t.elapsed());
        let t = Instant::now();
        // Undo newest first; a version without a U script blocks undoing anything older,
        // because older undo scripts expect the schema as it was right after them.
        for (i, m) in applied.iter().enumerate().rev() {
            if !m.reversible() {
                report.undo_error = Some(format!(
                    "V{} has no U{}__*.sql script; older versions were not undone",
                    m.version, m.version
                ));
                break;
            }
            match migrate::undo_one(&mut conn, m).await {
                Ok(step) => {
                    report.steps[i].undo_ms = Some(step.duration_ms);
                    report.steps[i].undo_rows_affected = Some(step.rows_affected);
                }
                Err(e) => {
                    report.undo_error = Some(e.to_string());
                    report.roll_forward_only.push(m.version);
                    break;
                }
            }
        }
        report.undo_ms = millis(t.elapsed());
        for m in set
            .migrations
            .iter()
            .filter(|m| st.pending.contains(&m.version) && !m.reversible())
        {
            report.roll_forward_only.push(m.version);
        }
        report.roll_forward_only.sort_unstable();
        report.roll_forward_only.dedup();
        let after = snapshot(&mut conn, clone).await?;
        report.schema_differences = before.diff(&after);
        report.undo_restores_schema = report.schema_differences.is_empty();
        Ok(())
    }
    .await;
    conn.close().await;
    result
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn clone_name(t: &Target) -> String {
    match t {
        Target::Postgres { opts, .. } => opts.get_database().unwrap_or_default().to_owned(),
        Target::Sqlite { path } => path.display().to_string(),
    }
}

/// A unique clone name: source name (shortened to fit PostgreSQL's 63-byte identifiers),
/// process id and a counter.
fn fresh_name(source: &str, ext: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut base: String = source
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    base.truncate(30);
    format!(
        "{base}_dryrun_{}_{}{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The maintenance database we connect to in order to create and drop clones.
fn admin_target(target: &Target, source_db: &str) -> Target {
    target.with_database(if source_db == "postgres" {
        "template1"
    } else {
        "postgres"
    })
}

pub(crate) async fn make_clone(
    target: &Target,
    allow_terminate: bool,
) -> Result<(Target, Vec<String>)> {
    match target {
        Target::Sqlite { path } => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let clone = target.with_database(&fresh_name(&stem, ".db"));
            let Target::Sqlite { path: clone_path } = &clone else {
                return Err(Error::Unsupported(
                    "clone an SQLite file to a non-file target".into(),
                ));
            };
            let mut conn = target.connect(false).await?;
            // VACUUM INTO is an online, consistent copy (see the module doc).
            let sql = format!(
                "VACUUM INTO {}",
                quote_literal(&clone_path.to_string_lossy())
            );
            let r = conn.exec(&sql).await;
            conn.close().await;
            r.map_err(|source| Error::Query {
                what: "clone with VACUUM INTO".into(),
                url: target.display(),
                source,
            })?;
            Ok((clone, Vec::new()))
        }
        Target::Postgres { opts, .. } => {
            let source_db = opts.get_database().unwrap_or_default().to_owned();
            let clone = target.with_database(&fresh_name(&source_db, ""));
            let admin = admin_target(target, &source_db);
            let mut conn = admin.connect(false).await?;
            let r = pg_clone(
                &mut conn,
                &admin,
                &source_db,
                &clone_name(&clone),
                allow_terminate,
            )
            .await;
            conn.close().await;
            r.map(|terminated| (clone, terminated))
        }
    }
}

async fn pg_clone(
    conn: &mut Conn,
    admin: &Target,
    source: &str,
    clone: &str,
    allow_terminate: bool,
) -> Result<Vec<String>> {
    let Conn::Pg(c) = conn else {
        return Err(Error::Unsupported(
            "clone a PostgreSQL database over a non-PostgreSQL connection".into(),
        ));
    };
    let q = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Query {
            what,
            url: admin.display(),
            source,
        }
    };
    // A session that has just disconnected stays in pg_stat_activity until its backend
    // exits; give such sessions a moment (PostgreSQL itself waits 5 s in CREATE DATABASE).
    let settle = Instant::now() + SETTLE_WAIT;
    let sessions = loop {
        let sessions = pg_sessions(c, source)
            .await
            .map_err(q("list sessions on the source"))?;
        if sessions.is_empty() || allow_terminate || Instant::now() >= settle {
            break sessions;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut terminated = Vec::new();
    if !sessions.is_empty() {
        if !allow_terminate {
            return Err(Error::CloneBlocked {
                database: source.to_owned(),
                sessions: sessions.join("; "),
            });
        }
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(source)
            .execute(&mut *c)
            .await
            .map_err(q("terminate sessions on the source"))?;
        terminated = sessions;
        let deadline = Instant::now() + TERMINATE_WAIT;
        loop {
            let left = pg_sessions(c, source)
                .await
                .map_err(q("list sessions on the source"))?;
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::CloneBlocked {
                    database: source.to_owned(),
                    sessions: left.join("; "),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE {}",
        quote_ident(clone),
        quote_ident(source)
    );
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *c)
        .await
    {
        Ok(_) => Ok(terminated),
        // Someone connected between our check and the CREATE: name them.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {
            let left = pg_sessions(c, source)
                .await
                .map_err(q("list sessions on the source"))?;
            Err(Error::CloneBlocked {
                database: source.to_owned(),
                sessions: left.join("; "),
            })
        }
        Err(e) => Err(q("create the clone")(e)),
    }
}

/// Other sessions connected to `db`, described for humans.
async fn pg_sessions(c: &mut sqlx::PgConnection, db: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), \
         coalesce(client_addr::text, 'local socket'), coalesce(state, '') \
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() ORDER BY pid",
    )
    .bind(db)
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| {
            let pid: i32 = r.try_get(0)?;
            let user: String = r.try_get(1)?;
            let app: String = r.try_get(2)?;
            let addr: String = r.try_get(3)?;
            let state: String = r.try_get(4)?;
            Ok(format!(
                "pid {pid} user {user} app `{app}` from {addr} ({state})"
            ))
        })
        .collect()
}

pub(crate) async fn drop_clone(source: &Target, clone: &Target) -> Result<()> {
    match clone {
        Target::Sqlite { path } => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let p = PathBuf::from(p);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Io {
                            what: "remove the clone".into(),
                            path: p,
                            source,
                        });
                    }
                }
            }
            Ok(())
        }
        Target::Postgres { opts, .. } => {
            let source_db = match source {
                Target::Postgres { opts, .. } => opts.get_database().unwrap_or_default().to_owned(),
                Target::Sqlite { .. } => String::new(),
            };
            let admin = admin_target(source, &source_db);
            let mut conn = admin.connect(false).await?;
            // FORCE (PostgreSQL 13+) ends sessions a failed step may have left on the clone.
            let sql = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(opts.get_database().unwrap_or_default())
            );
            let r = conn.exec(&sql).await;
            conn.close().await;
            r.map(|_| ()).map_err(|source| Error::Query {
                what: "drop the clone".into(),
                url: admin.display(),
                source,
            })
        }
    }
}
