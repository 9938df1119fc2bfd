//! Store implementations of `slipway_engine::Store`: the embedded default, SQLite in WAL
//! mode (one writer task per process with group commit, `busy_timeout` for the other
//! processes: a `slipway approve` beside a running `slipway deploy`), and PostgreSQL for a
//! team sharing one database ([`postgres`]).
//!
//! Selecting a store: [`resolve`] takes `--store` / `SLIPWAY_STORE` (`sqlite://PATH` or
//! `postgres://USER:PASSWORD@HOST:PORT/DB`) or defaults to `.slipway/slipway.db` under the
//! current directory; [`open`] gives an [`AnyStore`].

pub mod access;
mod append;
pub mod archive;
mod audit_read;
mod chain;
pub mod checklist;
mod leases;
mod legacy;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use std::path::{Path, PathBuf};

pub use postgres::PgStore;
use slipway_engine::audit::AuditEntry;
use slipway_engine::event::{Control, Notice};
use slipway_engine::store::{
    Anchor, ApprovalRecord, AuditBounds, GovernanceRecord, JournalRecord, LeaseOutcome,
    LeaseRecord, LeaseRequest, NewRun, RunClaim, RunEvidence, RunRecord, StepRecord, Store,
    StoredRecord,
};
use slipway_engine::{BoxFuture, StoreError};
pub use sqlite::SqliteStore;

/// The journal records aborting the older of live runs that share a digest and
/// environment (`rows`: id, digest, environment, state as [`schema::LIVE_DUPLICATES`]
/// lists them, newest first per pair): what the format 5 migration commits before the
/// store starts enforcing one live run per plan and environment. The newest of each pair
/// is kept, because it is the run `deploy` continued until now.
pub(crate) fn duplicate_aborts(
    rows: &[(String, String, String, String)],
    at: jiff::Timestamp,
) -> Vec<JournalRecord> {
    use slipway_engine::event::{EngineEvent, RunState};
    let mut out = Vec::new();
    let mut kept: Option<(&str, &str, &str)> = None;
    for (id, digest, environment, state) in rows {
        match kept {
            Some((d, e, keeper)) if d == digest && e == environment => {
                // A state this build cannot name is still live (the query said so).
                let from = RunState::parse(state).unwrap_or(RunState::Pending);
                out.push(JournalRecord {
                    run_id: id.clone(),
                    digest: digest.clone(),
                    at,
                    actor: schema::MIGRATION_ACTOR.to_owned(),
                    event: EngineEvent::StateChanged {
                        from,
                        to: RunState::Aborted,
                        reason: Some(format!(
                            "aborted by the journal format 5 migration: run {keeper} of the same plan is live in `{environment}` too, and a plan now has at most one live run per environment (the newer one is kept); steps this run completed stay as they are"
                        )),
                    },
                });
            }
            _ => kept = Some((digest, environment, id)),
        }
    }
    out
}

/// The default store file, relative to the current directory.
pub const DEFAULT_PATH: &str = ".slipway/slipway.db";

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (which may hold a password: `Debug` and
    /// [`StoreLocation::display`] mask it).
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Self::Postgres(u) => f
                .debug_tuple("Postgres")
                .field(&slipway_model::text::mask_url(u))
                .finish(),
        }
    }
}

impl StoreLocation {
    /// The location for messages, password masked.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite://{}", p.display()),
            Self::Postgres(u) => slipway_model::text::mask_url(u),
        }
    }
}

/// Resolve `--store` (or `SLIPWAY_STORE`, given as `url`) against `cwd`.
///
/// Accepted: `sqlite://PATH` and `sqlite:PATH` (relative paths are relative to `cwd`;
/// `sqlite:///abs` is absolute), `postgres://…` and `postgresql://…` (a libpq-style URL).
/// None: `cwd/.slipway/slipway.db`.
pub fn resolve(url: Option<&str>, cwd: &Path) -> Result<StoreLocation, StoreError> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(StoreLocation::Sqlite(cwd.join(DEFAULT_PATH)));
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreLocation::Postgres(url.to_owned()));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Unavailable {
            location: slipway_model::text::mask_url(url),
            message: "unsupported store URL; use sqlite://PATH (e.g. sqlite://.slipway/slipway.db) or postgres://USER:PASSWORD@HOST:PORT/DB"
                .into(),
        })?;
    if path.is_empty() {
        return Err(StoreError::Unavailable {
            location: url.to_owned(),
            message: "the URL names no file; use sqlite://PATH".into(),
        });
    }
    Ok(StoreLocation::Sqlite(cwd.join(path)))
}

/// Open the store at a location.
pub async fn open(loc: &StoreLocation) -> Result<AnyStore, StoreError> {
    match loc {
        StoreLocation::Sqlite(p) => SqliteStore::open(p).await.map(AnyStore::Sqlite),
        StoreLocation::Postgres(u) => PgStore::open(u).await.map(AnyStore::Postgres),
    }
}

/// Open the store at a location only if one is there: an SQLite file that exists, a
/// PostgreSQL database that holds slipway's schema. For commands that only read, so a
/// mistyped `--store` is an error naming the path instead of a new, empty store that
/// answers "no runs". An existing store of an older format is still migrated on open.
pub async fn open_existing(loc: &StoreLocation) -> Result<AnyStore, StoreError> {
    let missing = |what: &str, fix: &str| StoreError::Unavailable {
        location: loc.display(),
        message: format!(
            "{what}, and a command that only reads never creates one; {fix} — a deploy creates the store"
        ),
    };
    if !exists(loc).await? {
        return Err(match loc {
            StoreLocation::Sqlite(_) => missing(
                "there is no store file there",
                &format!(
                    "check the path (--store or SLIPWAY_STORE; the default is {DEFAULT_PATH} under the directory you deploy from)"
                ),
            ),
            StoreLocation::Postgres(_) => missing(
                "the database holds no slipway store",
                "check the database name in the URL (--store or SLIPWAY_STORE)",
            ),
        });
    }
    open(loc).await
}

/// Whether a store is at a location, creating nothing: the SQLite file exists, or the
/// PostgreSQL database holds slipway's schema (an unreachable server is an error).
pub async fn exists(loc: &StoreLocation) -> Result<bool, StoreError> {
    match loc {
        StoreLocation::Sqlite(p) => Ok(p.is_file()),
        StoreLocation::Postgres(u) => PgStore::has_schema(u).await,
    }
}

/// Either store, chosen at run time by the URL; the engine sees only [`Store`]. Cloning
/// is cheap: the clones share the pools and the writer task.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded store.
    Sqlite(SqliteStore),
    /// The shared store.
    Postgres(PgStore),
}

impl AnyStore {
    /// The SQLite file, when the store is one (not in memory; the records kept beside the journal —
    /// access grants, retention and archives, checklists — exist only there).
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(s) if s.is_memory() => None,
            Self::Sqlite(s) => Some(s.path()),
            Self::Postgres(_) => None,
        }
    }

    /// Record that API token `id` was used at `at` (kept beside the chain, not in it: a
    /// last use changes on every request and decides nothing).
    pub async fn token_used(&self, id: &str, at: jiff::Timestamp) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.token_used(id, at).await,
            Self::Postgres(s) => s.token_used(id, at).await,
        }
    }

    /// Keep a release bundle under its SHA-256 (hex), which the caller computed from
    /// `data`; `false` when the store had it already (uploads are idempotent).
    pub async fn put_bundle(&self, digest: &str, data: Vec<u8>) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(s) => s.put_bundle(digest, data).await,
            Self::Postgres(s) => s.put_bundle(digest, data).await,
        }
    }

    /// The bundle named `digest`, once its bytes hash to that digest: a row changed in the
    /// database is refused, never handed to a planner.
    pub async fn bundle(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let data = match self {
            Self::Sqlite(s) => s.bundle(digest).await?,
            Self::Postgres(s) => s.bundle(digest).await?,
        };
        let Some(data) = data else { return Ok(None) };
        let actual = slipway_engine::evidence::sha256_hex(&data);
        if actual != digest {
            return Err(StoreError::Query(format!(
                "bundle {digest} in {} has sha256 {actual}: the stored bundle was changed; upload it again",
                self.location()
            )));
        }
        Ok(Some(data))
    }

    /// When API token `id` was last used (RFC 3339), if ever.
    pub async fn token_last_used(&self, id: &str) -> Result<Option<String>, StoreError> {
        match self {
            Self::Sqlite(s) => s.token_last_used(id).await,
            Self::Postgres(s) => s.token_last_used(id).await,
        }
    }
}

/// Forward a `Store` method to whichever store this is.
macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn location(&self) -> String {
        both!(self, s => s.location())
    }
    fn create_run<'a>(
        &'a self,
        run: NewRun,
        first: JournalRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        both!(self, s => s.create_run(run, first))
    }
    fn commit(&self, records: Vec<JournalRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        both!(self, s => s.commit(records))
    }
    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        both!(self, s => s.run(id))
    }
    fn runs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        both!(self, s => s.runs(limit))
    }
    fn latest_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        both!(self, s => s.latest_runs())
    }
    fn active_run<'a>(
        &'a self,
        digest: &'a str,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        both!(self, s => s.active_run(digest, environment))
    }
    fn control<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Control>, StoreError>> {
        both!(self, s => s.control(run_id))
    }
    fn steps<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, StoreError>> {
        both!(self, s => s.steps(run_id))
    }
    fn journal<'a>(
        &'a self,
        run_id: &'a str,
        after_seq: i64,
    ) -> BoxFuture<'a, Result<Vec<Notice>, StoreError>> {
        both!(self, s => s.journal(run_id, after_seq))
    }
    fn approvals<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, StoreError>> {
        both!(self, s => s.approvals(run_id))
    }
    fn pseudonym<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, StoreError>> {
        both!(self, s => s.pseudonym(name))
    }
    fn identity<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        both!(self, s => s.identity(id))
    }
    fn erase_identity<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        both!(self, s => s.erase_identity(name))
    }
    fn audit_entries(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        both!(self, s => s.audit_entries())
    }
    fn audit_head(&self) -> BoxFuture<'_, Result<Option<(i64, String)>, StoreError>> {
        both!(self, s => s.audit_head())
    }
    fn audit_start(&self) -> BoxFuture<'_, Result<(i64, String), StoreError>> {
        both!(self, s => s.audit_start())
    }
    fn claim<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn RunClaim>, StoreError>> {
        both!(self, s => s.claim(run_id))
    }
    fn driven<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        both!(self, s => s.driven(run_id))
    }
    fn acquire_lease(&self, req: LeaseRequest) -> BoxFuture<'_, Result<LeaseOutcome, StoreError>> {
        both!(self, s => s.acquire_lease(req))
    }
    fn release_lease<'a>(
        &'a self,
        environment: &'a str,
        holder: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<LeaseRecord>, StoreError>> {
        both!(self, s => s.release_lease(environment, holder))
    }
    fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>> {
        both!(self, s => s.leases())
    }
    fn audit_bounds(&self) -> BoxFuture<'_, Result<AuditBounds, StoreError>> {
        both!(self, s => s.audit_bounds())
    }
    fn audit_framed(&self, after: i64, upto: i64) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        both!(self, s => s.audit_framed(after, upto))
    }
    fn audit_segment<'a>(
        &'a self,
        after: i64,
        upto: i64,
        keep_seqs: &'a [i64],
    ) -> BoxFuture<'a, Result<slipway_engine::audit::Segment, StoreError>> {
        both!(self, s => s.audit_segment(after, upto, keep_seqs))
    }
    fn run_evidence(&self) -> BoxFuture<'_, Result<Vec<RunEvidence>, StoreError>> {
        both!(self, s => s.run_evidence())
    }
    fn append_governance(
        &self,
        records: Vec<GovernanceRecord>,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StoreError>> {
        both!(self, s => s.append_governance(records))
    }
    fn records<'a>(
        &'a self,
        kind: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredRecord>, StoreError>> {
        both!(self, s => s.records(kind))
    }
    fn record<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>, StoreError>> {
        both!(self, s => s.record(kind, key))
    }
    fn anchors(&self) -> BoxFuture<'_, Result<Vec<Anchor>, StoreError>> {
        both!(self, s => s.anchors())
    }
    fn add_anchor(&self, anchor: Anchor) -> BoxFuture<'_, Result<bool, StoreError>> {
        both!(self, s => s.add_anchor(anchor))
    }
}
