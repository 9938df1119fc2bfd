//! Errors of this crate. Messages are lowercase fragments that read after "failed to …",
//! name the file, version or database (URL masked) and say what to do.

use std::path::PathBuf;

/// Everything that can go wrong in migrations, dry runs, backups, rehearsals and checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL is not `postgres://…`, `postgresql://…` or `sqlite://PATH`.
    #[error(
        "parse database url `{url}`: {reason} (use postgres://user@host:port/db or sqlite://PATH)"
    )]
    BadUrl { url: String, reason: String },
    /// Connecting failed or timed out.
    #[error("connect to `{url}`: {reason}")]
    Connect { url: String, reason: String },
    /// A query failed (PostgreSQL's errors worded by `migrate::db_error`: never the line
    /// of PostgreSQL's own source that sqlx's `Display` appends).
    #[error("{what} on `{url}`: {}", crate::migrate::db_error(source, None))]
    Query {
        what: String,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// Reading or writing a file failed.
    #[error("{what} `{path}`: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The migration directory is malformed (bad name, duplicate version, undo without apply).
    #[error("read migrations in `{dir}`: {reason}")]
    BadMigrations { dir: PathBuf, reason: String },
    /// An applied migration's file has changed since it was applied.
    #[error(
        "apply migrations: V{version} (`{file}`) changed after it was applied: checksum in the database {recorded}, file now {current}; restore the file as applied and add a new migration for the change"
    )]
    ChecksumMismatch {
        version: i64,
        file: PathBuf,
        recorded: String,
        current: String,
    },
    /// Pending migrations have lower versions than applied ones.
    #[error(
        "apply migrations: {versions:?} are pending but older than the latest applied V{latest}; renumber them above V{latest} or allow out-of-order"
    )]
    OutOfOrder { versions: Vec<i64>, latest: i64 },
    /// A migration script failed; its transaction was rolled back.
    #[error(
        "apply V{version} (`{file}`): {reason}; the migration was rolled back and nothing after it ran"
    )]
    MigrationFailed {
        version: i64,
        file: PathBuf,
        reason: String,
    },
    /// A part of a migration applied in parts failed; the parts before it are committed.
    #[error(
        "apply V{version} (`{file}`): part {part} of {total} (from line {line}, run {how}) failed: {reason}; the parts before it are committed and recorded, so `status` shows V{version} in progress: fix the cause and run apply again to continue with part {part}"
    )]
    PartFailed {
        version: i64,
        file: PathBuf,
        part: usize,
        total: usize,
        line: usize,
        how: &'static str,
        reason: String,
    },
    /// A migration interrupted between parts changed before it was resumed.
    #[error(
        "apply V{version} (`{file}`): it was interrupted after part {done} of {total} and the file changed since (checksum then {recorded}, now {current}); restore the file as it was to finish it, then add a new migration for the change"
    )]
    ResumeChanged {
        version: i64,
        file: PathBuf,
        done: i64,
        total: i64,
        recorded: String,
        current: String,
    },
    /// An undo script failed; its transaction was rolled back.
    #[error(
        "undo V{version} (`{file}`): {reason}; the undo was rolled back and nothing after it ran"
    )]
    UndoFailed {
        version: i64,
        file: PathBuf,
        reason: String,
    },
    /// Undo was asked for a migration that has no `U` script.
    #[error(
        "undo to V{to}: V{versions:?} have no U{{n}}__*.sql script (roll-forward-only); nothing was undone"
    )]
    Irreversible { to: i64, versions: Vec<i64> },
    /// Undo was asked for an applied migration whose file is gone.
    #[error("undo to V{to}: applied V{version} has no file in `{dir}`; restore its V and U files")]
    UndoMissing { to: i64, version: i64, dir: PathBuf },
    /// An external tool (`pg_dump`, `pg_restore`) failed or is missing.
    #[error("run `{tool}`: {reason}")]
    Tool { tool: String, reason: String },
    /// A backup file does not match its digest.
    #[error(
        "restore backup `{path}`: its sha256 is {actual}, expected {expected}; the file was altered or truncated, use another backup"
    )]
    BackupDigest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// The request does not make sense (a malformed digest, a PostgreSQL dump restored into
    /// SQLite, a checksum without columns).
    #[error("{0}")]
    Unsupported(String),
    /// Another migrator holds the database's migration lock.
    #[error("{0}")]
    Locked(String),
    /// The rehearsal did not reach the previous version in time.
    #[error("rehearse rollback: {0}")]
    Rehearsal(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
