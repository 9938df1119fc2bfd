//! Dry run on a clone: clone the database, apply the pending migrations, run their undo
//! scripts newest first, compare the schema after undo with the one before, drop the clone.
//!
//! The clone never disturbs the source: production has application sessions connected at
//! every moment, and a dry run must neither wait for them to leave nor end them.
//! PostgreSQL therefore clones by `pg_dump` of the source (one consistent snapshot under
//! ACCESS SHARE locks, so the application's reads and writes go on) restored into a fresh
//! scratch database — on the source's server, or on a separate server (`clone_server`) so
//! the restore's load lands elsewhere. Never `CREATE DATABASE … TEMPLATE source`, which
//! PostgreSQL refuses while anyone else is connected to the source, and never
//! `pg_terminate_backend`. SQLite clones with `VACUUM INTO`, an online, transactionally
//! consistent copy made by the source connection (sqlx does not expose the C backup API;
//! `VACUUM INTO` gives the same guarantee and also compacts the copy). The clone is
//! dropped on every path, success or failure.
//!
//! The report names the exact migration set it tried ([`MigrationSet::digest`]), so a
//! recorded dry run proves something about these files and no others.

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

/// Counter for unique clone and dump names within this process.
static N: AtomicU32 = AtomicU32::new(0);

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
    /// How the clone was made: `pg_dump + pg_restore` (PostgreSQL) or `VACUUM INTO`
    /// (SQLite); the source's sessions are never waited for or ended.
    pub clone_method: String,
    /// The server the clone lived on, when not the source's own (masked).
    pub clone_server: Option<String>,
    /// `sha256:<hex>` of the migration set tried ([`MigrationSet::digest`]).
    pub migration_set: String,
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

/// Where the clone of a dry run lives.
#[derive(Debug, Clone, Default)]
pub struct DryRunOptions {
    /// PostgreSQL: a server URL to create the scratch database on instead of the source's
    /// own server (`postgres://user@host:port/postgres`, the database being the one to
    /// connect to for `CREATE DATABASE`).
    pub clone_server: Option<String>,
}

/// Dry-run the pending migrations of `dir` against a clone of `url` on its own server.
pub async fn dry_run(url: &str, dir: &std::path::Path) -> Result<DryRunReport> {
    dry_run_with(url, dir, &DryRunOptions::default()).await
}

/// [`dry_run`] with options.
pub async fn dry_run_with(
    url: &str,
    dir: &std::path::Path,
    options: &DryRunOptions,
) -> Result<DryRunReport> {
    let target = Target::parse(url)?;
    let set = MigrationSet::load(dir)?;
    let server = options
        .clone_server
        .as_deref()
        .map(Target::parse)
        .transpose()?;
    let start = Instant::now();
    let clone = make_clone(&target, server.as_ref()).await?;
    let clone_ms = millis(start.elapsed());
    let mut report = DryRunReport {
        database: target.display(),
        clone: clone_name(&clone),
        clone_ms,
        clone_method: match target {
            Target::Postgres { .. } => "pg_dump + pg_restore into a scratch database",
            Target::Sqlite { .. } => "VACUUM INTO a scratch file",
        }
        .to_owned(),
        clone_server: server.as_ref().map(Target::display),
        migration_set: set.digest(),
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
    match drop_clone(&target, &clone, server.as_ref()).await {
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

/// Make the clone: SQLite with `VACUUM INTO`; PostgreSQL by dumping the source and
/// restoring into a fresh database (see the module doc). `clone_server` names another
/// PostgreSQL server (its URL's database is the maintenance database to connect to).
pub(crate) async fn make_clone(target: &Target, clone_server: Option<&Target>) -> Result<Target> {
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
            Ok(clone)
        }
        Target::Postgres { opts, .. } => {
            let source_db = opts.get_database().unwrap_or_default().to_owned();
            let admin = admin_for(target, clone_server)?;
            let clone = admin.with_database(&fresh_name(&source_db, ""));
            let name = clone_name(&clone);
            create_scratch(target, &admin, &name).await?;
            // From here on the scratch database exists: drop it when the copy fails.
            if let Err(e) = copy_into(target, &clone).await {
                let _ = drop_database(&admin, &name).await;
                return Err(e);
            }
            Ok(clone)
        }
    }
}

/// Where scratch databases are created and dropped: the clone server's URL as given, or on
/// the source's own server its maintenance database.
fn admin_for(source: &Target, clone_server: Option<&Target>) -> Result<Target> {
    match (source, clone_server) {
        (_, None) => {
            let db = match source {
                Target::Postgres { opts, .. } => opts.get_database().unwrap_or_default(),
                Target::Sqlite { .. } => "",
            };
            Ok(admin_target(source, db))
        }
        (Target::Postgres { .. }, Some(server @ Target::Postgres { .. })) => Ok(server.clone()),
        (_, Some(server)) => Err(Error::Unsupported(format!(
            "clone `{}` onto `{}`: a clone server is a PostgreSQL server for a PostgreSQL source",
            source.display(),
            server.display()
        ))),
    }
}

/// `CREATE DATABASE scratch TEMPLATE template0` with the source's encoding and locale.
/// `template0` accepts no connections, so nobody can block the create, and it is the
/// template `pg_restore` expects (no local additions of `template1`).
async fn create_scratch(source: &Target, admin: &Target, name: &str) -> Result<()> {
    let mut src = source.connect(false).await?;
    let props = match &mut src {
        Conn::Pg(c) => sqlx::query(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
             FROM pg_database WHERE datname = current_database()",
        )
        .fetch_one(&mut *c)
        .await
        .and_then(|r| {
            Ok((
                r.try_get::<String, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<String, _>(2)?,
            ))
        }),
        Conn::Sqlite(_) => Err(sqlx::Error::Protocol("not PostgreSQL".into())),
    };
    src.close().await;
    let (encoding, collate, ctype) = props.map_err(|source_err| Error::Query {
        what: "read the source database's encoding and locale".into(),
        url: source.display(),
        source: source_err,
    })?;
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(name),
        quote_literal(&encoding),
        quote_literal(&collate),
        quote_literal(&ctype)
    );
    let mut conn = admin.connect(false).await?;
    let r = conn.exec(&sql).await;
    conn.close().await;
    r.map(|_| ()).map_err(|source| Error::Query {
        what: "create the scratch database".into(),
        url: admin.display(),
        source,
    })
}

/// `pg_dump --format=custom` of the source (one consistent snapshot, only ACCESS SHARE
/// locks: writers go on), `pg_restore` into the scratch database. Owners and grants are
/// left out: the scratch database may live on a server without the source's roles.
async fn copy_into(source: &Target, clone: &Target) -> Result<()> {
    let (Target::Postgres { url: from, .. }, Target::Postgres { url: to, .. }) = (source, clone)
    else {
        return Err(Error::Unsupported(
            "copy a PostgreSQL database into a non-PostgreSQL clone".into(),
        ));
    };
    let dump = std::env::temp_dir().join(format!(
        "slipway-dryrun-{}-{}.dump",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut cmd = crate::backup::pg_command("pg_dump", from);
    cmd.args(["--format=custom", "--no-owner", "--no-acl", "--file"])
        .arg(&dump);
    let dumped = crate::backup::run_tool("pg_dump", cmd, from).await;
    let restored = match dumped {
        Ok(()) => {
            let mut cmd = crate::backup::pg_command("pg_restore", to);
            cmd.args([
                "--exit-on-error",
                "--single-transaction",
                "--no-owner",
                "--no-acl",
            ])
            .arg(&dump);
            crate::backup::run_tool("pg_restore", cmd, to).await
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&dump);
    restored
}

pub(crate) async fn drop_clone(
    source: &Target,
    clone: &Target,
    clone_server: Option<&Target>,
) -> Result<()> {
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
        Target::Postgres { .. } => {
            let admin = admin_for(source, clone_server)?;
            drop_database(&admin, &clone_name(clone)).await
        }
    }
}

/// Drop a scratch database. FORCE (PostgreSQL 13+) ends sessions a failed step may have
/// left on it — only ever on the scratch database, never on the source.
async fn drop_database(admin: &Target, name: &str) -> Result<()> {
    let mut conn = admin.connect(false).await?;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    let r = conn.exec(&sql).await;
    conn.close().await;
    r.map(|_| ()).map_err(|source| Error::Query {
        what: "drop the clone".into(),
        url: admin.display(),
        source,
    })
}
