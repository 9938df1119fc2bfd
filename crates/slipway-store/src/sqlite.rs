//! The embedded SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit returns only after the WAL is
//! fsynced. Per process, one writer task owns the write connection (a file store's
//! chain-only records, step events and the like, take the pipeline of `crate::append`,
//! which it drains before each of its own transactions); callers send it their journal
//! records and wait for their own commit. While a transaction is being fsynced, the
//! records of other callers queue up and go into the *next* transaction together (group
//! commit): each caller still returns only after its own records are durable, so the
//! journal-before-effect rule holds exactly as with one commit per event, while the fsync
//! cost is shared by everything that arrived meanwhile. Other processes write through
//! their own writer; `BEGIN IMMEDIATE` plus `busy_timeout` serialize them, and the audit
//! head is re-read inside every transaction or compared-and-set, so the chain stays linear.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use sha2_free::pseudonym_id;
use slipway_engine::BoxFuture;
use slipway_engine::audit::{AuditEntry, HASH_V2, Segment};
use slipway_engine::event::{Control, EngineEvent, Notice, RunState};
use slipway_engine::evidence::sha256_hex;
use slipway_engine::store::{
    Anchor, ApprovalRecord, AuditBounds, GovernanceRecord, JournalRecord, LeaseOutcome,
    LeaseRecord, LeaseRequest, NewRun, RecordKey, RunClaim, RunEvidence, RunRecord, StepRecord,
    Store, StoreError, StoredRecord,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
// Dynamic SQL here only ever joins fixed column lists and `?` placeholders; values are
// always bound, never interpolated.
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::append::{Group, Outcome, Pipeline, head_text};
use crate::audit_read::AuditReader;
use crate::chain::{self, Appender, Ready, Staged};
use crate::leases::{LeaseOp, LeaseReply};
use crate::schema::{
    JOURNAL_FORMAT, LIVE_DUPLICATES, LIVE_RUN_FORMAT, MIGRATIONS, OLDEST_MIGRATABLE,
};

/// Largest number of queued writes merged into one transaction.
const MAX_GROUP: usize = 512;

/// How often a busy run lock is tried again, 20 ms apart, before it counts as another
/// driver's (a probe holds it for microseconds; a driver for the whole drive).
const CLAIM_RETRIES: u32 = 5;

enum Write {
    Commit(Vec<Ready>),
    CreateRun(Box<(NewRun, JournalRecord)>),
    Pseudonym(String),
    Erase(String),
    Lease(LeaseOp),
    Governance(Vec<GovernanceRecord>),
    Anchor(Anchor),
    TokenUsed(String, String),
    /// A bundle's digest, bytes and when it arrived.
    Bundle(String, Vec<u8>, String),
}

enum Reply {
    Done,
    Id(String),
    Erased(bool),
    Lease(LeaseReply),
    Records(Vec<StoredRecord>),
    Added(bool),
}

type Pending = (Write, oneshot::Sender<Result<Reply, StoreError>>);

/// The SQLite store. See the module doc for its durability contract. Clones share the
/// pool and the writer task.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// The name of an in-memory store ([`SqliteStore::in_memory`]); `None` for a file.
    memory: Option<String>,
    read: SqlitePool,
    /// The audit chain's fast reader (file stores only).
    audit_reader: Option<AuditReader>,
    writer: mpsc::UnboundedSender<Pending>,
    /// Where chain-only commits go without the writer task (file stores; `crate::append`).
    pipeline: Option<Arc<Pipeline>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("memory", &self.memory)
            .finish()
    }
}

fn q(location: &Path) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable {
        location: format!("sqlite://{}", location.display()),
        message: e.to_string(),
    }
}

fn query_err(e: sqlx::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

impl SqliteStore {
    /// Open (creating if needed) the store file, migrating an older journal format or
    /// refusing one this build cannot read.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable {
                location: format!("sqlite://{}", path.display()),
                message: format!("create directory {}: {e}", dir.display()),
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        // Two processes opening a brand-new store at once can meet SQLITE_BUSY while one of
        // them switches the file to WAL (the busy handler does not cover that); the open is
        // idempotent, so retry it for a bounded while instead of failing a deploy.
        let mut attempt = 0u32;
        let conn = loop {
            attempt += 1;
            let opened = async {
                let mut conn = SqliteConnection::connect_with(&opts)
                    .await
                    .map_err(q(path))?;
                migrate(&mut conn, path).await?;
                Ok::<_, StoreError>(conn)
            }
            .await;
            match opened {
                Ok(conn) => break conn,
                Err(e) if attempt < 50 && is_busy(&e) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 20))
                        .await;
                }
                Err(e) => return Err(e),
            }
        };
        let read = pool_options(4)
            .connect_with(opts.clone().read_only(true))
            .await
            .map_err(q(path))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let pipeline = Pipeline::start(path)?;
        tokio::spawn(writer(conn, Some(Arc::clone(&pipeline)), rx));
        Ok(Self {
            path: path.to_owned(),
            memory: None,
            read,
            audit_reader: Some(AuditReader::new(path)),
            writer: tx,
            pipeline: Some(pipeline),
        })
    }

    /// A store that lives in this process's memory, named `name`: every handle opened with
    /// the same name in this process sees the same store until the process ends, as handles
    /// on one file do. For fast engine and contract tests — the same schema, SQL, writer and
    /// audit chain as the file store, only no disk (so no fsync) and no other process.
    ///
    /// Archiving needs a file to archive from, so it refuses an in-memory store by name;
    /// [`crate::AnyStore::sqlite_path`] is `None` here. A run claim is held by this
    /// process's handles only.
    pub async fn in_memory(name: &str) -> Result<Self, StoreError> {
        let path = PathBuf::from(format!("file:slipway-memory-{name}"));
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .in_memory(true)
            .shared_cache(true)
            .busy_timeout(Duration::from_secs(30));
        let conn = {
            // The first handle of a name creates the schema; the keeper connection keeps the
            // database alive while no handle is open (SQLite frees an in-memory database
            // with its last connection), so dropping a store and opening it again finds it
            // as a restarted process finds its file.
            let mut kept = memory_keepers().lock().await;
            if !kept.contains_key(name) {
                let keeper = SqliteConnection::connect_with(&opts)
                    .await
                    .map_err(q(&path))?;
                kept.insert(name.to_owned(), keeper);
            }
            let mut conn = SqliteConnection::connect_with(&opts)
                .await
                .map_err(q(&path))?;
            migrate(&mut conn, &path).await?;
            conn
        };
        let read = pool_options(4).connect_with(opts).await.map_err(q(&path))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(conn, None, rx));
        Ok(Self {
            path,
            memory: Some(name.to_owned()),
            read,
            audit_reader: None,
            writer: tx,
            pipeline: None,
        })
    }

    /// How many groups of chain-only records (step events and the like) wait behind the
    /// commit in progress, not yet taken into a transaction: the depth of the append
    /// pipeline (`crate::append`); 0 for an in-memory store, which has none.
    pub fn appends_waiting(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |p| p.waiting())
    }

    /// Whether this is an in-memory store ([`SqliteStore::in_memory`]).
    pub fn is_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn send(&self, w: Write) -> Result<Reply, StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable {
            location: self.location(),
            message: "the writer task stopped (an earlier write failed fatally)".into(),
        };
        self.writer.send((w, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn is_busy(e: &StoreError) -> bool {
    let m = e.to_string();
    m.contains("database is locked") || m.contains("(code: 5)") || m.contains("(code: 6)")
}

/// Read the journal format and bring the schema to the current one, or refuse.
async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let loc = format!("sqlite://{}", path.display());
    // Read the version and migrate under one write lock: two processes opening a fresh
    // store at the same moment must not both create the schema (busy_timeout makes the
    // second wait, then it finds the schema current).
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(q(path))?;
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type='table'")
        .fetch_one(&mut *tx)
        .await
        .map_err(q(path))?;
    let has_meta: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'")
            .fetch_one(&mut *tx)
            .await
            .map_err(q(path))?;
    let fresh = tables == 0;
    let current: u32 = if fresh {
        0
    } else if has_meta == 0 {
        return Err(StoreError::Incompatible(format!(
            "open {loc}: the file is an SQLite database but not a slipway store (no meta table); point --store at another file"
        )));
    } else {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key='journal_format'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(q(path))?;
        let v = v.ok_or_else(|| {
            StoreError::Incompatible(format!(
                "open {loc}: the meta table names no journal_format; the file is damaged or not a slipway store"
            ))
        })?;
        v.parse().map_err(|_| {
            StoreError::Incompatible(format!(
                "open {loc}: journal_format `{v}` is not a number; the file is damaged"
            ))
        })?
    };
    if current > JOURNAL_FORMAT {
        return Err(StoreError::Incompatible(format!(
            "open {loc}: the journal was written by a newer slipway (journal format {current}; this build reads up to {JOURNAL_FORMAT}); upgrade slipway to read it"
        )));
    }
    if !fresh && current < OLDEST_MIGRATABLE {
        return Err(StoreError::Incompatible(format!(
            "open {loc}: journal format {current} is older than this build can migrate (oldest {OLDEST_MIGRATABLE}); export it with the slipway that wrote it (`slipway audit export`) and start a new store"
        )));
    }
    sqlx::raw_sql(crate::schema::BUNDLES_SQLITE)
        .execute(&mut *tx)
        .await
        .map_err(q(path))?;
    if current == JOURNAL_FORMAT {
        sqlx::raw_sql(crate::schema::RUNS_LATEST_INDEX)
            .execute(&mut *tx)
            .await
            .map_err(q(path))?;
        tx.commit().await.map_err(q(path))?;
        return Ok(());
    }
    // The legacy governance tables are read before format 6's SQL, which the baseline
    // import then follows.
    let mut legacy = if fresh {
        crate::legacy::Legacy::default()
    } else {
        crate::legacy::read_sqlite(&mut tx).await?
    };
    // Runs the format 5 clean-up aborts: their rows change now (the index needs it), their
    // chain entries are appended after all the SQL, when scheme 2's column exists.
    let mut aborted = Vec::new();
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(JOURNAL_FORMAT as usize)
        .skip(current as usize)
    {
        if i as u32 + 1 == LIVE_RUN_FORMAT {
            aborted = abort_live_duplicates(&mut tx).await?;
        }
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(q(path))?;
    }
    if !fresh && current < 6 {
        let mut app = Appender::new(read_head(&mut tx).await?);
        for r in &aborted {
            app.push(r)?;
        }
        let uses = std::mem::take(&mut legacy.token_uses);
        let records = legacy.into_records(slipway_stdx::now());
        write_governance(&mut tx, &mut app, &records).await?;
        crate::legacy::finish_sqlite(&mut tx, &uses).await?;
        flush(&mut tx, &app).await?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('journal_format', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(JOURNAL_FORMAT.to_string())
        .execute(&mut *tx)
        .await
        .map_err(q(path))?;
    sqlx::raw_sql(crate::schema::RUNS_LATEST_INDEX)
        .execute(&mut *tx)
        .await
        .map_err(q(path))?;
    tx.commit().await.map_err(q(path))?;
    Ok(())
}

/// Before the one-live-run index exists: abort the older live runs that share a digest and
/// environment (their rows now); returns the journal records the caller appends to the
/// chain in the same transaction.
async fn abort_live_duplicates(
    tx: &mut SqliteConnection,
) -> Result<Vec<JournalRecord>, StoreError> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(LIVE_DUPLICATES)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_err)?;
    let records = crate::duplicate_aborts(&rows, slipway_stdx::now());
    for r in &records {
        apply_record(tx, r).await?;
    }
    Ok(records)
}

/// Whether a failed statement broke the one-live-run rule.
fn live_run_violation(e: &sqlx::Error) -> bool {
    // SQLite names the columns of the violated unique index, not the index.
    e.as_database_error().is_some_and(|d| {
        d.is_unique_violation() && d.message().contains("runs.digest, runs.environment")
    })
}

/// A statement's error, as [`StoreError::LiveRunExists`] when it broke that rule.
fn run_insert_err(digest: &str, environment: &str) -> impl Fn(sqlx::Error) -> StoreError {
    let (digest, environment) = (digest.to_owned(), environment.to_owned());
    move |e| {
        if live_run_violation(&e) {
            StoreError::LiveRunExists {
                digest: digest.clone(),
                environment: environment.clone(),
            }
        } else {
            query_err(e)
        }
    }
}

/// The writer task: drains the queue into one transaction at a time. `pipe`: where a file
/// store's callers append chain-only records themselves (`crate::append`); every write
/// that comes here waits until the groups queued there before it are finished, and the
/// fast path reopens after the head this writer leaves. In memory (`None`) chain-only
/// groups go through `commit_fast` here.
async fn writer(
    mut conn: SqliteConnection,
    pipe: Option<Arc<Pipeline>>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    // In memory, the chain's head as this writer's last commit left it: the
    // compare-and-set of `commit_fast` checks it against `meta` inside the transaction,
    // so another handle's append (or an archive) only costs a fall-back to the path that
    // reads the head.
    let mut head: Option<(i64, String)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let kept = match &pipe {
            Some(p) => p.drain().await,
            None => head.take(),
        };
        if pipe.is_none()
            && let Some(h) = kept.clone()
            && is_chain_only(&batch)
        {
            let (group, callers) = into_group(h, batch);
            match commit_fast(&mut conn, &group).await {
                Ok(true) => {
                    head = Some(group.new_head());
                    for (_, tx) in callers {
                        let _ = tx.send(Ok(Reply::Done));
                    }
                    continue;
                }
                // Another writer moved the head: nothing was written; read it below.
                Ok(false) => {}
                Err(_) => {
                    // Whatever failed (the lock, the commit) left nothing committed once
                    // rolled back (SQLite rolls back a failed COMMIT's transaction itself,
                    // or it stays open until this); the batch then goes the ordinary way,
                    // which reports an error that persists.
                    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
                }
            }
            batch = from_group(group, callers);
        }
        let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
        let new_head = match apply_all(&mut conn, &writes).await {
            Ok((replies, new_head)) => {
                // A group that appended nothing left the head where it was. The fast path
                // reopens before anyone hears back, so a caller's next commit takes it.
                let new_head = new_head.or(kept);
                match &pipe {
                    Some(p) => p.reopen(new_head),
                    None => head = new_head,
                }
                for ((_, tx), r) in batch.into_iter().zip(replies) {
                    let _ = tx.send(Ok(r));
                }
                continue;
            }
            Err(_) if batch.len() > 1 => {
                // One write spoiled the group: retry each alone so only it fails.
                for (w, tx) in batch {
                    let r = apply_all(&mut conn, &[&w]).await.map(|(mut v, _)| {
                        // apply_all returns one reply per write; exactly one here.
                        v.pop().unwrap_or(Reply::Done)
                    });
                    let _ = tx.send(r);
                }
                None
            }
            Err(e) => {
                // A batch of one: its caller gets the error as it is (a typed
                // `LiveRunExists` must reach the engine as such).
                let mut e = Some(e);
                for (_, tx) in batch {
                    let err = e
                        .take()
                        .unwrap_or_else(|| StoreError::Query("the write failed".into()));
                    let _ = tx.send(Err(err));
                }
                None
            }
        };
        // After a failure the next write re-reads the head.
        if pipe.is_none() {
            head = new_head;
        }
    }
}

/// Whether every write of `batch` is a journal commit that touches only the chain: such a
/// group may go after a writer's kept head.
fn is_chain_only(batch: &[Pending]) -> bool {
    batch.iter().all(|(w, _)| match w {
        Write::Commit(rs) => rs.iter().all(|r| chain::chain_only_event(&r.record.event)),
        _ => false,
    })
}

/// A caller of a group: how many of its records it holds, and where its answer goes.
type Caller = (usize, oneshot::Sender<Result<Reply, StoreError>>);

/// The records of a chain-only batch as one group after `head`, and who sent them.
fn into_group(head: (i64, String), batch: Vec<Pending>) -> (Group, Vec<Caller>) {
    let mut readies = Vec::new();
    let mut callers = Vec::with_capacity(batch.len());
    for (w, tx) in batch {
        if let Write::Commit(rs) = w {
            callers.push((rs.len(), tx));
            readies.extend(rs);
        }
    }
    (Group::new(head, readies), callers)
}

/// The batch back from a group that was not committed, for the ordinary path.
fn from_group(group: Group, callers: Vec<Caller>) -> Vec<Pending> {
    let mut readies = group.readies.into_iter();
    callers
        .into_iter()
        .map(|(n, tx)| (Write::Commit(readies.by_ref().take(n).collect()), tx))
        .collect()
}

/// Append a chain-only group after the head this writer last committed, in ONE call
/// through sqlx's worker (in-memory stores; a file store's callers use `crate::append`):
/// `BEGIN IMMEDIATE`, a compare-and-set of the head in `meta` (every chain writer,
/// archive included, records the head there in the transaction that appends), the
/// inserts — each guarded by the head now being the new one, so a lost compare-and-set
/// inserts nothing — the head read back, `COMMIT`. `Ok(false)` when another writer had
/// moved the head (nothing written).
async fn commit_fast(conn: &mut SqliteConnection, group: &Group) -> Result<bool, StoreError> {
    let new_head = head_text(&group.new_head());
    let old_head = head_text(&group.old);
    let mut sql = String::from(
        "BEGIN IMMEDIATE; UPDATE meta SET value = ? WHERE key = 'audit_head' AND value = ?;",
    );
    // 11 columns per row, 80 rows a statement, as `flush`.
    let n = group.readies.len();
    let chunks: Vec<std::ops::Range<usize>> =
        (0..n).step_by(80).map(|s| s..(s + 80).min(n)).collect();
    for chunk in &chunks {
        sql.push_str(
            " INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv) SELECT * FROM (VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "));
        sql.push_str(") WHERE (SELECT value FROM meta WHERE key = 'audit_head') = ?;");
    }
    sql.push_str(" SELECT value FROM meta WHERE key = 'audit_head'; COMMIT");
    let mut qy = sqlx::query(AssertSqlSafe(sql))
        .bind(&new_head)
        .bind(&old_head);
    for chunk in chunks {
        for i in chunk {
            let r = &group.readies[i];
            let (seq, prev, hash) = group.link(i);
            qy = qy
                .bind(seq)
                .bind(&r.text.at)
                .bind(&r.record.actor)
                .bind(r.record.event.name())
                .bind(&r.record.run_id)
                .bind(&r.record.digest)
                .bind(&r.text.outcome)
                .bind(&r.text.detail)
                .bind(prev)
                .bind(hash)
                .bind(i64::from(HASH_V2));
        }
        qy = qy.bind(&new_head);
    }
    let rows = qy.fetch_all(&mut *conn).await.map_err(query_err)?;
    let now: Option<String> = match rows.first() {
        Some(r) => r.try_get(0).map_err(query_err)?,
        None => None,
    };
    Ok(now.as_deref() == Some(new_head.as_str()))
}

/// The head the chain continues from, read inside the writing transaction: the last entry,
/// or — after `slipway archive` moved the whole chain out — the head recorded in `meta`
/// (the archive's checkpoint), never genesis again.
pub(crate) async fn read_head(
    tx: &mut SqliteConnection,
) -> Result<Option<(i64, String)>, StoreError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err)?;
    if head.is_some() {
        return Ok(head);
    }
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err)?;
    Ok(v.and_then(|v| {
        let (seq, hash) = v.split_once(':')?;
        Some((seq.parse().ok()?, hash.to_owned()))
    }))
}

/// Apply a group of writes in one transaction; returns one reply per write and the head
/// the chain has after it, when this transaction appended (it then wrote that head to
/// `meta` too, which `commit_fast` relies on).
async fn apply_all(
    conn: &mut SqliteConnection,
    writes: &[&Write],
) -> Result<(Vec<Reply>, Option<(i64, String)>), StoreError> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(query_err)?;
    let mut app = Appender::new(read_head(&mut tx).await?);
    let mut replies = Vec::with_capacity(writes.len());
    for w in writes {
        let reply = match w {
            Write::Commit(records) => {
                for r in records {
                    apply_record(&mut tx, &r.record).await?;
                    app.push_ready(r);
                }
                Reply::Done
            }
            Write::CreateRun(b) => {
                let (run, first) = &**b;
                let first = chain::covered_first(run, first)?;
                sqlx::query(
                    "INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at, workdir)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9, ?9, ?10)",
                )
                .bind(&run.id)
                .bind(&run.digest)
                .bind(&run.release)
                .bind(&run.version)
                .bind(&run.environment)
                .bind(&run.author)
                .bind(&run.override_reason)
                .bind(&run.plan_json)
                .bind(run.created_at.to_string())
                .bind(&run.workdir)
                .execute(&mut *tx)
                .await
                .map_err(run_insert_err(&run.digest, &run.environment))?;
                apply_record(&mut tx, &first).await?;
                app.push(&first)?;
                Reply::Done
            }
            Write::Pseudonym(name) => Reply::Id(pseudonym_in(&mut tx, name).await?),
            Write::Erase(name) => {
                let n = sqlx::query("UPDATE identities SET name = NULL WHERE name = ?1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err)?
                    .rows_affected();
                Reply::Erased(n > 0)
            }
            Write::Lease(op) => Reply::Lease(crate::leases::apply(&mut tx, op).await?),
            Write::Governance(recs) => {
                Reply::Records(write_governance(&mut tx, &mut app, recs).await?)
            }
            Write::Bundle(digest, data, at) => {
                let n = sqlx::query(
                    "INSERT INTO bundles (digest, size, data, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (digest) DO NOTHING",
                )
                .bind(digest)
                .bind(i64::try_from(data.len()).unwrap_or(i64::MAX))
                .bind(data)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?
                .rows_affected();
                Reply::Added(n > 0)
            }
            Write::TokenUsed(id, at) => {
                sqlx::query(
                    "INSERT INTO token_use (id, last_used_at) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET last_used_at = excluded.last_used_at",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?;
                Reply::Done
            }
            Write::Anchor(a) => {
                let n = sqlx::query(
                    "INSERT INTO audit_anchors (seq, hash, payload, signature) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (seq, hash) DO NOTHING",
                )
                .bind(a.seq)
                .bind(&a.hash)
                .bind(&a.payload)
                .bind(&a.signature)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?
                .rows_affected();
                Reply::Added(n > 0)
            }
        };
        replies.push(reply);
    }
    flush(&mut tx, &app).await?;
    tx.commit().await.map_err(query_err)?;
    let head = (!app.entries.is_empty()).then(|| {
        let (seq, hash) = app.head();
        (seq, hash.to_owned())
    });
    Ok((replies, head))
}

/// The pseudonymous id of `name`, created on first use, inside `tx`.
pub(crate) async fn pseudonym_in(
    tx: &mut SqliteConnection,
    name: &str,
) -> Result<String, StoreError> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM identities WHERE name = ?1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err)?;
    if let Some(id) = found {
        return Ok(id);
    }
    let id = pseudonym_id(name);
    sqlx::query("INSERT INTO identities (id, name, created_at) VALUES (?1, ?2, ?3)")
        .bind(&id)
        .bind(name)
        .bind(slipway_stdx::now().to_string())
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
    Ok(id)
}

/// Apply one record's effect on its run row (the state, the pending control request).
async fn apply_record(tx: &mut SqliteConnection, r: &JournalRecord) -> Result<(), StoreError> {
    let at = r.at.to_string();
    match &r.event {
        EngineEvent::StateChanged { from, to, .. } => {
            let clear = to.is_terminal()
                || matches!(to, RunState::Paused | RunState::Aborted)
                || *from == RunState::Paused;
            // A finished run becoming live again (rolled back by hand) may meet the
            // one-live-run rule: its environment names the conflict.
            let environment: String = if from.is_terminal() && !to.is_terminal() {
                sqlx::query_scalar("SELECT environment FROM runs WHERE id = ?1")
                    .bind(&r.run_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_err)?
                    .unwrap_or_default()
            } else {
                String::new()
            };
            sqlx::query(
                "UPDATE runs SET state = ?1, updated_at = ?2, control = CASE WHEN ?3 THEN NULL ELSE control END WHERE id = ?4",
            )
            .bind(to.as_str())
            .bind(&at)
            .bind(clear)
            .bind(&r.run_id)
            .execute(&mut *tx)
            .await
            .map_err(run_insert_err(&r.digest, &environment))?;
        }
        EngineEvent::ControlRequested { control, .. } => {
            sqlx::query("UPDATE runs SET control = ?1, updated_at = ?2 WHERE id = ?3")
                .bind(control.as_str())
                .bind(&at)
                .bind(&r.run_id)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?;
        }
        _ => {}
    }
    Ok(())
}

/// Write governance records and their chain entries (one entry per record) inside `tx`.
pub(crate) async fn write_governance(
    tx: &mut SqliteConnection,
    app: &mut Appender,
    recs: &[GovernanceRecord],
) -> Result<Vec<StoredRecord>, StoreError> {
    let mut out = Vec::with_capacity(recs.len());
    for rec in recs {
        let key = match &rec.key {
            RecordKey::Given(k) => k.clone(),
            RecordKey::Next => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(max(CAST(key AS INTEGER)), 0) + 1 FROM records WHERE kind = ?1",
                )
                .bind(&rec.kind)
                .fetch_one(&mut *tx)
                .await
                .map_err(query_err)?;
                n.to_string()
            }
        };
        let current: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM records WHERE kind = ?1 AND key = ?2")
                .bind(&rec.kind)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err)?;
        if let Some(want) = rec.if_seq
            && current.unwrap_or(0) != want
        {
            return Err(StoreError::Conflict(format!(
                "write {} record `{key}`: it changed meanwhile; read it again and retry",
                rec.kind
            )));
        }
        let staged = Staged::new(rec, key)?;
        let seq = chain::push_governance(
            app,
            &rec.action,
            &rec.actor,
            rec.at,
            &rec.summary,
            vec![staged.reference()],
        )?;
        put_record(tx, &staged, seq).await?;
        if let Some(data) = staged.data {
            out.push(StoredRecord {
                kind: staged.kind,
                key: staged.key,
                data,
                nonce: staged.nonce,
                seq,
            });
        }
    }
    Ok(out)
}

/// Store (or, without data, delete) a staged record version written by entry `seq`.
pub(crate) async fn put_record(
    tx: &mut SqliteConnection,
    staged: &Staged,
    seq: i64,
) -> Result<(), StoreError> {
    match &staged.data {
        Some(data) => sqlx::query(
            "INSERT INTO records (kind, key, data, nonce, seq) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, nonce = excluded.nonce, seq = excluded.seq",
        )
        .bind(&staged.kind)
        .bind(&staged.key)
        .bind(data)
        .bind(&staged.nonce)
        .bind(seq),
        None => sqlx::query("DELETE FROM records WHERE kind = ?1 AND key = ?2")
            .bind(&staged.kind)
            .bind(&staged.key),
    }
    .execute(&mut *tx)
    .await
    .map_err(query_err)?;
    Ok(())
}

/// Insert the appended entries, many rows per statement, and record the new head — the
/// head's upsert rides in the last insert's call (sqlx runs the statements of one call in
/// its worker thread in one go, binding `?`s in order), so a commit makes one round trip
/// through the driver's worker fewer: those hand-offs, not the fsync, bound a sequential
/// service's steps per second (BENCHMARKS.md, durable engine).
pub(crate) async fn flush(tx: &mut SqliteConnection, app: &Appender) -> Result<(), StoreError> {
    // 11 columns per row; 80 rows keeps a statement under SQLite's 999 binds on old builds
    // as well.
    let chunks: Vec<&[AuditEntry]> = app.entries.chunks(80).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut sql = String::from(
            "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "));
        let last = i + 1 == chunks.len();
        if last {
            sql.push_str(
                "; INSERT INTO meta (key, value) VALUES ('audit_head', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            );
        }
        let mut qy = sqlx::query(AssertSqlSafe(sql));
        for e in *chunk {
            qy = qy
                .bind(e.seq)
                .bind(&e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.run_id)
                .bind(&e.digest)
                .bind(&e.outcome)
                .bind(&e.detail)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(i64::from(e.v));
        }
        if last {
            let (seq, prev) = app.head();
            qy = qy.bind(format!("{seq}:{prev}"));
        }
        qy.execute(&mut *tx).await.map_err(query_err)?;
    }
    Ok(())
}

/// One framed chunk of the chain, built by SQLite itself: one aggregate row for many
/// entries (reading row by row costs microseconds each through the driver), each entry
/// framed as `slipway_engine::audit::parse_framed` reads it. A range of the rowid (`seq`
/// is the INTEGER PRIMARY KEY) is scanned in seq order, so no ordered subquery is needed
/// (its row copies cost a fifth of the read); were the order ever different, the
/// verifier's walk would stop at the first seq out of place and the exact classifier,
/// which reads `ORDER BY seq`, would decide.
pub(crate) const FRAMED_SQL: &str = "SELECT CAST(group_concat(concat(seq, ':', hv, ':',
    octet_length(at), ':', at, octet_length(actor), ':', actor, octet_length(action), ':', action,
    octet_length(run_id), ':', run_id, octet_length(digest), ':', digest,
    octet_length(outcome), ':', outcome, octet_length(detail), ':', detail,
    octet_length(prev_hash), ':', prev_hash, octet_length(hash), ':', hash), '') AS BLOB)
    FROM audit WHERE seq > ?1 AND seq <= ?2";

pub(crate) mod sha2_free {
    //! Pseudonymous ids without a dependency on a hash crate: they need to be unique and
    //! unguessable from the name alone, not cryptographic.
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};

    use super::{AtomicU64, Ordering};

    static N: AtomicU64 = AtomicU64::new(0);

    /// `op-` and 16 hex digits from a randomly keyed hash (SipHash with a per-process
    /// random key), so the id cannot be recomputed from the name once the mapping is erased.
    pub fn pseudonym_id(name: &str) -> String {
        let mut h = RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u64(N.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        format!("op-{:016x}", h.finish())
    }
}

fn ts(s: &str) -> Timestamp {
    // Every stored time was written by `Timestamp::to_string`; a hand-edited one that
    // does not parse reads as the epoch rather than failing a status display.
    Timestamp::from_str(s).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn run_from_row(r: &SqliteRow) -> Result<RunRecord, StoreError> {
    let state: String = r.try_get("state").map_err(query_err)?;
    let control: Option<String> = r.try_get("control").map_err(query_err)?;
    Ok(RunRecord {
        id: r.try_get("id").map_err(query_err)?,
        digest: r.try_get("digest").map_err(query_err)?,
        release: r.try_get("release").map_err(query_err)?,
        version: r.try_get("version").map_err(query_err)?,
        environment: r.try_get("environment").map_err(query_err)?,
        author: r.try_get("author").map_err(query_err)?,
        state: RunState::parse(&state).ok_or_else(|| {
            StoreError::Query(format!("unknown run state `{state}` in the store"))
        })?,
        control: control.as_deref().and_then(Control::parse),
        override_reason: r.try_get("override_reason").map_err(query_err)?,
        created_at: ts(&r.try_get::<String, _>("created_at").map_err(query_err)?),
        updated_at: ts(&r.try_get::<String, _>("updated_at").map_err(query_err)?),
        plan_json: r.try_get("plan_json").map_err(query_err)?,
        workdir: r.try_get("workdir").map_err(query_err)?,
    })
}

const RUN_COLS: &str = "id, digest, release, version, environment, author, state, control, override_reason, created_at, updated_at, workdir";

/// The connections keeping each in-memory store alive, by name.
fn memory_keepers() -> &'static tokio::sync::Mutex<HashMap<String, SqliteConnection>> {
    static KEEPERS: OnceLock<tokio::sync::Mutex<HashMap<String, SqliteConnection>>> =
        OnceLock::new();
    KEEPERS.get_or_init(Default::default)
}

/// The runs claimed in in-memory stores, as `(store name, run id)`.
fn memory_claims() -> &'static std::sync::Mutex<HashSet<(String, String)>> {
    static CLAIMS: OnceLock<std::sync::Mutex<HashSet<(String, String)>>> = OnceLock::new();
    CLAIMS.get_or_init(Default::default)
}

/// A run claimed in an in-memory store; dropping it releases the claim.
struct MemoryClaim {
    key: (String, String),
}

impl RunClaim for MemoryClaim {}

impl Drop for MemoryClaim {
    fn drop(&mut self) {
        // A poisoned set still holds the right entries: the guard is only ever held for an
        // insert or a remove, neither of which can leave it half done.
        let mut claims = memory_claims()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        claims.remove(&self.key);
    }
}

/// Held lock file of a claimed run.
struct FileClaim {
    _file: File,
}

impl RunClaim for FileClaim {}

impl Store for SqliteStore {
    fn location(&self) -> String {
        if let Some(name) = &self.memory {
            return format!("memory://{name}");
        }
        format!("sqlite://{}", self.path.display())
    }

    fn create_run<'a>(
        &'a self,
        run: NewRun,
        first: JournalRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.send(Write::CreateRun(Box::new((run, first)))).await?;
            Ok(())
        })
    }

    fn commit(&self, records: Vec<JournalRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // The entries' text is made here, on the caller's task: what every commit of
            // the process waits on in turn only hashes and writes.
            let mut ready = records
                .into_iter()
                .map(Ready::new)
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(pipe) = &self.pipeline
                && ready
                    .iter()
                    .all(|r| chain::chain_only_event(&r.record.event))
            {
                match pipe.enqueue(ready) {
                    Ok(answer) => match answer.await {
                        Ok(Outcome::Committed(group)) => {
                            // Its memory is freed here, on this task.
                            drop(group);
                            return Ok(());
                        }
                        Ok(Outcome::Failed(e)) => return Err(e),
                        // The head had moved: the writer task commits them.
                        Ok(Outcome::Redo(r)) => ready = r,
                        Err(_) => {
                            return Err(StoreError::Unavailable {
                                location: self.location(),
                                message: "the committer thread stopped".into(),
                            });
                        }
                    },
                    Err(r) => ready = r,
                }
            }
            self.send(Write::Commit(ready)).await?;
            Ok(())
        })
    }

    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!("SELECT {RUN_COLS}, plan_json FROM runs WHERE id = ?1");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&self.read)
                .await
                .map_err(query_err)?;
            row.as_ref().map(run_from_row).transpose()
        })
    }

    fn runs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {RUN_COLS}, '' AS plan_json FROM runs ORDER BY created_at DESC, id DESC LIMIT ?1"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await
                .map_err(query_err)?;
            rows.iter().map(run_from_row).collect()
        })
    }

    fn latest_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move {
            // Both maxima per pair come from `runs_latest` alone; only the rows picked
            // are read whole (their plans).
            let sql = format!(
                "SELECT {RUN_COLS}, plan_json FROM runs
                 WHERE (release, environment, created_at) IN (
                     SELECT release, environment, MAX(created_at) FROM runs
                     GROUP BY release, environment
                     UNION
                     SELECT release, environment, MAX(created_at) FROM runs
                     WHERE state = 'succeeded' GROUP BY release, environment)
                 ORDER BY created_at DESC, id DESC"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(&self.read)
                .await
                .map_err(query_err)?;
            rows.iter().map(run_from_row).collect()
        })
    }

    fn active_run<'a>(
        &'a self,
        digest: &'a str,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {RUN_COLS}, plan_json FROM runs WHERE digest = ?1 AND environment = ?2
                 AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'aborted')
                 ORDER BY created_at DESC LIMIT 1"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(digest)
                .bind(environment)
                .fetch_optional(&self.read)
                .await
                .map_err(query_err)?;
            row.as_ref().map(run_from_row).transpose()
        })
    }

    fn control<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Control>, StoreError>> {
        Box::pin(async move {
            let c: Option<Option<String>> =
                sqlx::query_scalar("SELECT control FROM runs WHERE id = ?1")
                    .bind(run_id)
                    .fetch_optional(&self.read)
                    .await
                    .map_err(query_err)?;
            Ok(c.flatten().as_deref().and_then(Control::parse))
        })
    }

    fn steps<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT at, detail FROM audit WHERE run_id = ?1 AND action IN ({}) ORDER BY seq",
                chain::STEP_ACTIONS
            );
            let events = self.events(&sql, run_id).await?;
            Ok(chain::fold_steps(&events))
        })
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
        after_seq: i64,
    ) -> BoxFuture<'a, Result<Vec<Notice>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
                "SELECT seq, run_id, at, actor, detail FROM audit WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
            )
            .bind(run_id)
            .bind(after_seq)
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            rows.into_iter()
                .map(|(seq, run_id, at, actor, detail)| {
                    Ok(Notice {
                        seq,
                        run_id,
                        at: ts(&at),
                        actor,
                        event: chain::event(&detail)?,
                    })
                })
                .collect()
        })
    }

    fn approvals<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, StoreError>> {
        Box::pin(async move {
            let events = self
                .events(
                    "SELECT at, detail FROM audit WHERE run_id = ?1 AND action = 'approved' ORDER BY seq",
                    run_id,
                )
                .await?;
            Ok(chain::fold_approvals(&events))
        })
    }

    fn pseudonym<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            match self.send(Write::Pseudonym(name.to_owned())).await? {
                Reply::Id(id) => Ok(id),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }

    fn identity<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let n: Option<Option<String>> =
                sqlx::query_scalar("SELECT name FROM identities WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await
                    .map_err(query_err)?;
            Ok(n.flatten())
        })
    }

    fn erase_identity<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.send(Write::Erase(name.to_owned())).await? {
                Reply::Erased(b) => Ok(b),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }

    fn audit_entries(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv FROM audit ORDER BY seq",
            )
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            rows.iter().map(entry_from_row).collect()
        })
    }

    fn audit_head(&self) -> BoxFuture<'_, Result<Option<(i64, String)>, StoreError>> {
        Box::pin(async move {
            let v: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                    .fetch_optional(&self.read)
                    .await
                    .map_err(query_err)?;
            Ok(v.and_then(|v| {
                let (seq, hash) = v.split_once(':')?;
                Some((seq.parse().ok()?, hash.to_owned()))
            }))
        })
    }

    fn audit_start(&self) -> BoxFuture<'_, Result<(i64, String), StoreError>> {
        Box::pin(async move {
            let data: Option<String> = sqlx::query_scalar(
                "SELECT data FROM records WHERE kind = 'archive_checkpoint' ORDER BY CAST(key AS INTEGER) DESC LIMIT 1",
            )
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)?;
            crate::archive::start_of(data.as_deref())
        })
    }

    fn claim<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn RunClaim>, StoreError>> {
        Box::pin(async move {
            if let Some(name) = &self.memory {
                let key = (name.clone(), run_id.to_owned());
                let mut claims = memory_claims()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !claims.insert(key.clone()) {
                    return Err(StoreError::Claimed(run_id.to_owned()));
                }
                return Ok(Box::new(MemoryClaim { key }) as Box<dyn RunClaim>);
            }
            let dir = self.path.with_extension("locks");
            let unavailable = |e: std::io::Error| StoreError::Unavailable {
                location: self.location(),
                message: format!("create the run lock in {}: {e}", dir.display()),
            };
            std::fs::create_dir_all(&dir).map_err(unavailable)?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{run_id}.lock")))
                .map_err(unavailable)?;
            // An OS file lock dies with its process, so a SIGKILLed driver never leaves
            // a run claimed. A probe (`status` asking whether anything drives the run)
            // holds the lock for an instant: a busy lock is tried again for a short while
            // before it counts as another driver's, as on PostgreSQL.
            let mut attempt = 0;
            loop {
                match file.try_lock() {
                    Ok(()) => break Ok(Box::new(FileClaim { _file: file }) as Box<dyn RunClaim>),
                    Err(std::fs::TryLockError::WouldBlock) if attempt < CLAIM_RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        break Err(StoreError::Claimed(run_id.to_owned()));
                    }
                    Err(std::fs::TryLockError::Error(e)) => break Err(unavailable(e)),
                }
            }
        })
    }

    fn driven<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            if let Some(name) = &self.memory {
                let claims = memory_claims()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                return Ok(claims.contains(&(name.clone(), run_id.to_owned())));
            }
            let path = self
                .path
                .with_extension("locks")
                .join(format!("{run_id}.lock"));
            let unavailable = |e: std::io::Error| StoreError::Unavailable {
                location: self.location(),
                message: format!("read the run lock {}: {e}", path.display()),
            };
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                // Never claimed here.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(unavailable(e)),
            };
            // A driver holds the exclusive lock; a reader asks with a shared one, which
            // other readers' do not exclude (so a reader never takes another for a
            // driver) and which is let go as the file closes here. A driver claiming in
            // that instant retries, as it does when a claim is busy.
            match file.try_lock_shared() {
                Ok(()) => Ok(false),
                Err(std::fs::TryLockError::WouldBlock) => Ok(true),
                Err(std::fs::TryLockError::Error(e)) => Err(unavailable(e)),
            }
        })
    }

    fn acquire_lease(&self, req: LeaseRequest) -> BoxFuture<'_, Result<LeaseOutcome, StoreError>> {
        Box::pin(async move {
            match self.send(Write::Lease(LeaseOp::Acquire(req))).await? {
                Reply::Lease(LeaseReply::Acquired(o)) => Ok(o),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }

    fn release_lease<'a>(
        &'a self,
        environment: &'a str,
        holder: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<LeaseRecord>, StoreError>> {
        Box::pin(async move {
            let op = LeaseOp::Release {
                environment: environment.to_owned(),
                holder: holder.map(str::to_owned),
            };
            match self.send(Write::Lease(op)).await? {
                Reply::Lease(LeaseReply::Released(l)) => Ok(l),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>> {
        Box::pin(crate::leases::all(&self.read))
    }

    fn audit_bounds(&self) -> BoxFuture<'_, Result<AuditBounds, StoreError>> {
        Box::pin(async move {
            // Two subqueries: SQLite answers a lone min() or max() of the key from the
            // b-tree's ends, but `min(seq), max(seq)` together scans every row (a
            // twentieth of a 1M-entry verification, before the reads start).
            let (min, max): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT (SELECT min(seq) FROM audit), (SELECT max(seq) FROM audit)")
                    .fetch_one(&self.read)
                    .await
                    .map_err(query_err)?;
            Ok(AuditBounds { min, max })
        })
    }

    fn audit_framed(&self, after: i64, upto: i64) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let blob: Option<Vec<u8>> = sqlx::query_scalar(FRAMED_SQL)
                .bind(after)
                .bind(upto)
                .fetch_one(&self.read)
                .await
                .map_err(query_err)?;
            Ok(blob.unwrap_or_default())
        })
    }

    fn audit_segment<'a>(
        &'a self,
        after: i64,
        upto: i64,
        keep_seqs: &'a [i64],
    ) -> BoxFuture<'a, Result<Segment, StoreError>> {
        Box::pin(async move {
            if let Some(reader) = &self.audit_reader {
                return reader.segment(after, upto, keep_seqs.to_vec()).await;
            }
            let buf = self.audit_framed(after, upto).await?;
            let keep = keep_seqs.to_vec();
            tokio::task::spawn_blocking(move || Segment::of_framed(&buf, &keep))
                .await
                .map_err(|e| {
                    StoreError::Query(format!(
                        "verify audit entries {}..={upto}: the hashing task failed: {e}",
                        after.saturating_add(1)
                    ))
                })
        })
    }

    fn run_evidence(&self) -> BoxFuture<'_, Result<Vec<RunEvidence>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!("SELECT {EVIDENCE_COLS} FROM runs")))
                .fetch_all(&self.read)
                .await
                .map_err(query_err)?;
            rows.iter().map(evidence_from_row).collect()
        })
    }

    fn append_governance(
        &self,
        records: Vec<GovernanceRecord>,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StoreError>> {
        Box::pin(async move {
            match self.send(Write::Governance(records)).await? {
                Reply::Records(r) => Ok(r),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }

    fn records<'a>(
        &'a self,
        kind: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredRecord>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String, String, String, i64)> = match kind {
                Some(k) => sqlx::query_as(
                    "SELECT kind, key, data, nonce, seq FROM records WHERE kind = ?1 ORDER BY kind, key",
                )
                .bind(k)
                .fetch_all(&self.read)
                .await,
                None => sqlx::query_as(
                    "SELECT kind, key, data, nonce, seq FROM records ORDER BY kind, key",
                )
                .fetch_all(&self.read)
                .await,
            }
            .map_err(query_err)?;
            Ok(rows.into_iter().map(stored).collect())
        })
    }

    fn record<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>, StoreError>> {
        Box::pin(async move {
            let row: Option<(String, String, String, String, i64)> = sqlx::query_as(
                "SELECT kind, key, data, nonce, seq FROM records WHERE kind = ?1 AND key = ?2",
            )
            .bind(kind)
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)?;
            Ok(row.map(stored))
        })
    }

    fn anchors(&self) -> BoxFuture<'_, Result<Vec<Anchor>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
                "SELECT seq, hash, payload, signature FROM audit_anchors ORDER BY seq, hash",
            )
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            Ok(rows
                .into_iter()
                .map(|(seq, hash, payload, signature)| Anchor {
                    seq,
                    hash,
                    payload,
                    signature,
                })
                .collect())
        })
    }

    fn add_anchor(&self, anchor: Anchor) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.send(Write::Anchor(anchor)).await? {
                Reply::Added(b) => Ok(b),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }
}

impl SqliteStore {
    /// See [`crate::AnyStore::token_used`].
    pub async fn token_used(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        self.send(Write::TokenUsed(id.to_owned(), at.to_string()))
            .await
            .map(|_| ())
    }

    /// See [`crate::AnyStore::put_bundle`].
    pub async fn put_bundle(&self, digest: &str, data: Vec<u8>) -> Result<bool, StoreError> {
        let at = slipway_stdx::now().to_string();
        match self
            .send(Write::Bundle(digest.to_owned(), data, at))
            .await?
        {
            Reply::Added(b) => Ok(b),
            _ => Err(StoreError::Query("the writer answered out of turn".into())),
        }
    }

    /// See [`crate::AnyStore::bundle`].
    pub async fn bundle(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT data FROM bundles WHERE digest = ?1")
            .bind(digest)
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)
    }

    /// See [`crate::AnyStore::token_last_used`].
    pub async fn token_last_used(&self, id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT last_used_at FROM token_use WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)
    }

    /// `(at, event)` of the audit rows `sql` selects for one run.
    async fn events(
        &self,
        sql: &str,
        run_id: &str,
    ) -> Result<Vec<(String, EngineEvent)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(sql.to_owned()))
            .bind(run_id)
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
        rows.into_iter()
            .map(|(at, detail)| Ok((at, chain::event(&detail)?)))
            .collect()
    }
}

pub(crate) fn stored(
    (kind, key, data, nonce, seq): (String, String, String, String, i64),
) -> StoredRecord {
    StoredRecord {
        kind,
        key,
        data,
        nonce,
        seq,
    }
}

/// The columns `run_evidence` reads.
pub(crate) const EVIDENCE_COLS: &str = "id, digest, release, version, environment, author, state, control, override_reason, created_at, updated_at, workdir, plan_json";

/// A `runs` row as text, however it was edited (a column a reader would refuse still
/// compares), with its plan's digest.
fn evidence_from_row(r: &SqliteRow) -> Result<RunEvidence, StoreError> {
    let s =
        |c: &str| -> Result<String, StoreError> { r.try_get::<String, _>(c).map_err(query_err) };
    let o = |c: &str| -> Result<Option<String>, StoreError> {
        r.try_get::<Option<String>, _>(c).map_err(query_err)
    };
    Ok(RunEvidence {
        id: s("id")?,
        digest: s("digest")?,
        release: s("release")?,
        version: s("version")?,
        environment: s("environment")?,
        author: s("author")?,
        state: s("state")?,
        control: o("control")?,
        override_reason: o("override_reason")?,
        created_at: s("created_at")?,
        updated_at: s("updated_at")?,
        workdir: s("workdir")?,
        plan_sha256: sha256_hex(s("plan_json")?.as_bytes()),
    })
}

/// An audit row; an `hv` that is not a small number reads as scheme 0 (hashed as scheme 1,
/// so only a genuine scheme-1 entry can still match).
fn entry_from_row(r: &SqliteRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: r.try_get("seq").map_err(query_err)?,
        at: r.try_get("at").map_err(query_err)?,
        actor: r.try_get("actor").map_err(query_err)?,
        action: r.try_get("action").map_err(query_err)?,
        run_id: r.try_get("run_id").map_err(query_err)?,
        digest: r.try_get("digest").map_err(query_err)?,
        outcome: r.try_get("outcome").map_err(query_err)?,
        detail: r.try_get("detail").map_err(query_err)?,
        prev_hash: r.try_get("prev_hash").map_err(query_err)?,
        hash: r.try_get("hash").map_err(query_err)?,
        v: r.try_get::<i64, _>("hv")
            .ok()
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(0),
    })
}

/// Pool options for every SQLite pool of the store: `max` connections and no background
/// maintenance task. sqlx 0.9.0's maintenance task (spawned when an idle timeout or max
/// lifetime is set, both on by default) can spin a tokio worker at 100% CPU for ever after
/// a race in `PoolInner::release` underflows its idle count (launchbadge/sqlx#3645, fixed
/// upstream by #4289, not in 0.9.0) — seen here as `slipway` commands that never exited.
/// Reaping idle connections buys nothing for a local file, so the task is simply not started.
pub(crate) fn pool_options(max: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
}
