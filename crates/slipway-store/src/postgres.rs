//! The PostgreSQL store, for a team: several `slipway` processes (on one machine or many)
//! sharing one database.
//!
//! Same contract as the SQLite store, with PostgreSQL's tools for the cross-process parts:
//! - **Writes** go through one writer per process that group-commits queued records
//!   (as in SQLite), on a thread, runtime and connection of its own (so an answer from
//!   PostgreSQL is read when it arrives, not after the engine's ready tasks); callers make
//!   their entries' text (`chain::Ready`) before they queue. Appends are serialized through the row of
//!   `meta` that records the chain head, so the chain stays linear and journal (= audit)
//!   `seq` values are handed out in commit order (a `logs -f` reader polling `seq > n`
//!   never skips one). The writer keeps the head its last commit left: a group of
//!   chain-only records (step events) is one autocommit statement, a compare-and-set of
//!   that head in `meta` whose row lock orders concurrent writers, with the audit rows
//!   inserted only if it swapped (`commit_fast`). Any other group, or a lost
//!   compare-and-set, takes the ordinary path: a transaction that first takes a
//!   transaction-scoped advisory lock (`pg_advisory_xact_lock`, the counterpart of
//!   SQLite's `BEGIN IMMEDIATE`: the lease compare-and-swap cannot interleave with another
//!   process's) and locks the head row `FOR UPDATE` (no compare-and-set lands meanwhile),
//!   then reads the head — one round trip for the three, the head read after both locks
//!   are held, with its own snapshot; a group's journal records become one statement —
//!   the audit rows, new runs and every run's collapsed state change as `UNNEST` arrays
//!   in data-modifying CTEs — so a group costs four round trips (begin, locks + head,
//!   write, commit) however many records it holds. Records that need reads of their own
//!   (leases, governance records, pseudonyms) run their statements before that one.
//! - **Run claims** are session advisory locks held on a dedicated connection
//!   (`pg_try_advisory_lock` on a 64-bit hash of the run id). Why not a row with an expiry
//!   renewed by a heartbeat: a claim must end the moment its process exits, and `Drop`
//!   cannot await a `DELETE`; a session lock ends with the session, whether the process
//!   exited, crashed or was killed. A dead *host* (no FIN ever arrives) is covered by TCP
//!   keepalives set on that session: the server drops it, and the claim, within about
//!   [`CLAIM_LEASE`]. No transaction stays open while a run is driven (which would hold
//!   back vacuum for the whole database).
//! - **Schema**: created or migrated on open inside one transaction under another advisory
//!   lock, so concurrent first opens are safe; a newer journal format is refused.
//!
//! The URL's password is only ever in the connect options: [`PgStore::location`] and every
//! error carry the masked URL.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use slipway_engine::BoxFuture;
use slipway_engine::audit::AuditEntry;
use slipway_engine::event::{Control, EngineEvent, Notice, RunState};
use slipway_engine::evidence::sha256_hex;
use slipway_engine::store::{
    Anchor, ApprovalRecord, AuditBounds, GovernanceRecord, JournalRecord, LeaseOutcome,
    LeaseRecord, LeaseRequest, NewRun, RecordKey, RunClaim, RunEvidence, RunRecord, StepRecord,
    Store, StoreError, StoredRecord,
};
use slipway_model::text::mask_url;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
// Dynamic SQL here only ever joins fixed column lists and `$n` placeholders; values are
// always bound, never interpolated.
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::chain::{self, Appender, Ready, RunUpdates, Staged};
use crate::schema::{
    JOURNAL_FORMAT, LIVE_DUPLICATES, LIVE_RUN_FORMAT, LIVE_RUN_INDEX_NAME, PG_FIRST_FORMAT,
    PG_MIGRATIONS, PG_SCHEMA,
};
use crate::sqlite::sha2_free::pseudonym_id;

/// Largest number of queued writes merged into one transaction.
const MAX_GROUP: usize = 512;
/// How long connecting may take before the store is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// About how long after its host vanished a claim is given up by the server (TCP
/// keepalive idle + interval × count on the claim's session).
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Tries of a busy claim, 50 ms apart (see `claim`).
const CLAIM_RETRIES: u32 = 20;

/// Whether a session holds the run's claim ([`Store::claim`]'s advisory lock, exclusive),
/// read from `pg_locks` on a pooled connection: asking takes no lock and opens no
/// session, so a reader never holds up a driver claiming at that instant, nor sees another
/// reader as a driver (taking and dropping the claim did both, and each probe cost a new
/// session: `status` under 50 clients answered in a second). A bigint key shows as its
/// high and low 32 bits in `classid`/`objid`, `objsubid` 1.
const DRIVEN_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks l, \
     (SELECT ('x' || substr(md5('slipway-run:' || $1), 1, 16))::bit(64)::bigint AS k) key \
     WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' \
     AND l.objsubid = 1 \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND l.classid = ((key.k >> 32) & 4294967295)::oid \
     AND l.objid = (key.k & 4294967295)::oid)";
/// Advisory lock keys (two-int4 form, a key space apart from the claims' bigint keys):
/// `SLIP` in ASCII, then which lock.
const LOCK_CLASS: i32 = 0x534c_4950;
const WRITE_LOCK: i32 = 1;
const SCHEMA_LOCK: i32 = 2;

enum Write {
    /// Records whose entry text the caller made (`chain::Ready`): the writer, which every
    /// commit of the process waits on in turn, only numbers, hashes and writes them.
    Commit(Vec<Ready>),
    CreateRun(Box<(NewRun, JournalRecord)>),
    Pseudonym(String),
    Erase(String),
    Acquire(LeaseRequest),
    Release {
        environment: String,
        holder: Option<String>,
    },
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
    Acquired(LeaseOutcome),
    Released(Option<LeaseRecord>),
    Records(Vec<StoredRecord>),
    Added(bool),
}

type Pending = (Write, oneshot::Sender<Result<Reply, StoreError>>);

/// The PostgreSQL store. See the module doc for its concurrency contract. Clones share
/// the pools and the writer task.
#[derive(Clone)]
pub struct PgStore {
    /// The URL with its password masked.
    location: String,
    /// For the claims' own sessions (boxed: it is large and rarely used).
    opts: Box<PgConnectOptions>,
    read: PgPool,
    writer: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish()
    }
}

fn query_err(e: sqlx::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

/// Explain a connection or open failure with the masked URL and what to do about it.
fn unavailable(location: &str, password: Option<&str>, e: &sqlx::Error) -> StoreError {
    let code = e
        .as_database_error()
        .and_then(|d| d.code().map(|c| c.into_owned()));
    let fix = match code.as_deref() {
        Some("28P01" | "28000") => {
            "authentication failed; fix: correct the user and password in the store URL (postgres://USER:PASSWORD@HOST:PORT/DB)"
        }
        Some("3D000") => {
            "the database does not exist; fix: create it (`createdb NAME` or `CREATE DATABASE`) or name another one in the URL"
        }
        Some("42501") => {
            "permission denied; fix: grant the store's user CREATE and USAGE on the database's public schema"
        }
        _ => match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                "the server cannot be reached; fix: start PostgreSQL or correct the host and port in the store URL"
            }
            sqlx::Error::Configuration(_) => {
                "the URL is not a valid PostgreSQL URL; fix: use postgres://USER:PASSWORD@HOST:PORT/DB"
            }
            _ => "fix: check the server's log",
        },
    };
    StoreError::Unavailable {
        location: location.to_owned(),
        message: scrub(&format!("{e}; {fix}"), password),
    }
}

/// Remove the password from a message, as written in the URL or decoded, in case a
/// driver ever echoed it.
fn scrub(message: &str, password: Option<&str>) -> String {
    match password.filter(|p| !p.is_empty()) {
        Some(p) => message
            .replace(p, "***")
            .replace(&slipway_model::text::percent_decode(p), "***"),
        None => message.to_owned(),
    }
}

/// The password of a URL as written (percent-encoded or not), for [`scrub`].
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let userinfo = rest[..end].rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_owned())
}

impl PgStore {
    /// Connect, then create the schema in a fresh database, migrate an older journal
    /// format, or refuse a newer one or a database that is not a slipway store.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let location = mask_url(url);
        let password = url_password(url);
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(&location, password.as_deref(), &e))?
            .application_name("slipway");
        let read = pool(&opts, 4);
        // The first reader's connection is made while the writer migrates, not when the
        // first read (a run being driven) needs it.
        let warm = {
            let read = read.clone();
            tokio::spawn(async move {
                let _ = read.acquire().await;
            })
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (opened_tx, opened) = oneshot::channel();
        let args = (opts.clone(), location.clone(), password);
        // The writer runs on a thread of its own, with its own runtime and connection (the
        // one that migrates): were it a task among the engine's, each commit's reply would
        // wait behind whichever of hundreds of ready engine tasks the workers run first,
        // and the next group with it (group commit throughput is this one task's latency).
        // The commit path's waits are I/O on this one connection; the thread wakes when
        // PostgreSQL answers, as SQLite's committer thread does when its fsync returns.
        std::thread::Builder::new()
            .name("slipway-pg-writer".into())
            .spawn(move || {
                let (opts, location, password) = args;
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = opened_tx.send(Err(StoreError::Unavailable {
                            location,
                            message: format!("start the writer's runtime: {e}"),
                        }));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut conn = match connect(&opts, &location, password.as_deref()).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    if let Err(e) = migrate(&mut conn, &location, password.as_deref()).await {
                        let _ = conn.close().await;
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                    writer_session(&mut conn).await;
                    if opened_tx.send(Ok(())).is_err() {
                        // Whoever opened the store stopped waiting for it.
                        let _ = conn.close().await;
                        return;
                    }
                    // The writer goes on with the connection that migrated.
                    writer(conn, opts, location, password, rx).await;
                });
            })
            .map_err(|e| StoreError::Unavailable {
                location: location.clone(),
                message: format!("start the writer thread: {e}"),
            })?;
        let opened = opened.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                location: location.clone(),
                message: "the writer thread stopped while opening the store".into(),
            })
        });
        if let Err(e) = opened {
            warm.abort();
            return Err(e);
        }
        Ok(Self {
            location,
            opts: Box::new(opts),
            read,
            writer: tx,
        })
    }

    /// Whether the database at `url` holds a slipway store (its `meta` table), without
    /// creating anything.
    pub async fn has_schema(url: &str) -> Result<bool, StoreError> {
        let location = mask_url(url);
        let password = url_password(url);
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(&location, password.as_deref(), &e))?
            .application_name("slipway");
        let mut conn = connect(&opts, &location, password.as_deref()).await?;
        let has: bool = sqlx::query_scalar("SELECT to_regclass('meta') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| unavailable(&location, password.as_deref(), &e))?;
        let _ = conn.close().await;
        Ok(has)
    }

    async fn send(&self, w: Write) -> Result<Reply, StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable {
            location: self.location.clone(),
            message: "the writer task stopped (an earlier write failed fatally)".into(),
        };
        self.writer.send((w, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The reading pool, for the archive's snapshot reads and its prune (which takes the
    /// write lock itself, as the writer task does).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.read
    }

    /// Close the pools (the writer task ends when the store is dropped).
    pub async fn close(&self) {
        self.read.close().await;
    }
}

async fn connect(
    opts: &PgConnectOptions,
    location: &str,
    password: Option<&str>,
) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(opts)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unavailable(location, password, &e)),
        Err(_) => Err(StoreError::Unavailable {
            location: location.to_owned(),
            message: format!(
                "no answer within {}s; fix: check that PostgreSQL runs and that host and port in the store URL are right",
                CONNECT_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// Settings of a writer's session. `default_toast_compression = lz4`: a run's plan (a few
/// hundred KB of JSON for 500 services) is compressed when its row is written, and pglz,
/// the server's default, took longer than the rest of that transaction; lz4 takes a
/// fraction of that (and reads back on any server that wrote it). A server built without
/// lz4 refuses the setting and keeps pglz: nothing else changes.
async fn writer_session(conn: &mut PgConnection) {
    let _ = sqlx::raw_sql("SET default_toast_compression = lz4")
        .execute(&mut *conn)
        .await;
}

/// Pool options without the idle/lifetime maintenance task (see `sqlite::pool_options`).
fn pool(opts: &PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(opts.clone())
}

/// Read the journal format and bring the schema to the current one, or refuse.
async fn migrate(
    conn: &mut PgConnection,
    loc: &str,
    password: Option<&str>,
) -> Result<(), StoreError> {
    let err = |e: sqlx::Error| unavailable(loc, password, &e);
    let mut tx = conn.begin().await.map_err(err)?;
    // Two processes opening a fresh database at once: the second waits here, then finds
    // the schema current (PostgreSQL's CREATE TABLE would otherwise race on the catalog).
    schema_lock(&mut tx).await.map_err(err)?;
    let has = |name: &'static str| {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(name)
    };
    let has_meta = has("meta").fetch_one(&mut *tx).await.map_err(err)?;
    let current: u32 = if !has_meta {
        for t in ["runs", "journal", "audit"] {
            if has(t).fetch_one(&mut *tx).await.map_err(err)? {
                return Err(StoreError::Incompatible(format!(
                    "open {loc}: the database has a `{t}` table but no `meta` table, so it is not a slipway store; point --store at an empty database"
                )));
            }
        }
        0
    } else {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'journal_format'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
        let v = v.ok_or_else(|| {
            StoreError::Incompatible(format!(
                "open {loc}: the meta table names no journal_format; the database is damaged or not a slipway store"
            ))
        })?;
        v.parse().map_err(|_| {
            StoreError::Incompatible(format!(
                "open {loc}: journal_format `{v}` is not a number; the database is damaged"
            ))
        })?
    };
    if current > JOURNAL_FORMAT {
        return Err(StoreError::Incompatible(format!(
            "open {loc}: the journal was written by a newer slipway (journal format {current}; this build reads up to {JOURNAL_FORMAT}); upgrade slipway to read it"
        )));
    }
    if current != 0 && current < PG_FIRST_FORMAT {
        return Err(StoreError::Incompatible(format!(
            "open {loc}: journal format {current} is older than any PostgreSQL store (oldest {PG_FIRST_FORMAT}); the database is damaged or not a slipway store"
        )));
    }
    sqlx::raw_sql(crate::schema::BUNDLES_PG)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    if current == JOURNAL_FORMAT {
        sqlx::raw_sql(crate::schema::RUNS_LATEST_INDEX)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        return Ok(());
    }
    if current == 0 {
        sqlx::raw_sql(PG_SCHEMA)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    let mut legacy = if current == 0 {
        crate::legacy::Legacy::default()
    } else {
        crate::legacy::read_pg(&mut tx).await?
    };
    // Runs the format 5 clean-up aborts: their rows change now (the index needs it), their
    // chain entries are appended after all the SQL, when scheme 2's column exists.
    let mut aborted = Vec::new();
    let from = current.max(PG_FIRST_FORMAT);
    for (i, sql) in PG_MIGRATIONS
        .iter()
        .enumerate()
        .skip((from - PG_FIRST_FORMAT) as usize)
    {
        if PG_FIRST_FORMAT + i as u32 + 1 == LIVE_RUN_FORMAT {
            aborted = abort_live_duplicates(&mut tx).await?;
        }
        sqlx::raw_sql(AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    if current != 0 && current < 6 {
        let mut app = Appender::new(read_head(&mut tx).await?);
        for r in &aborted {
            app.push(r)?;
        }
        let uses = std::mem::take(&mut legacy.token_uses);
        let records = legacy.into_records(slipway_stdx::now());
        write_governance(&mut tx, &mut app, &records).await?;
        crate::legacy::finish_pg(&mut tx, &uses).await?;
        let mut batch = Batch::default();
        flush(&mut tx, &app, &mut batch).await?;
    }
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('journal_format', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(JOURNAL_FORMAT.to_string())
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    sqlx::raw_sql(crate::schema::RUNS_LATEST_INDEX)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(())
}

/// Before the one-live-run index exists: abort the older live runs that share a digest and
/// environment (their rows now); returns the journal records the caller appends to the
/// chain in the same transaction.
async fn abort_live_duplicates(tx: &mut PgConnection) -> Result<Vec<JournalRecord>, StoreError> {
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as(AssertSqlSafe(LIVE_DUPLICATES))
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err)?;
    let records = crate::duplicate_aborts(&rows, slipway_stdx::now());
    for r in &records {
        // Aborted: the pending control request is cleared, as the writer does.
        sqlx::query(
            "UPDATE runs SET state = 'aborted', updated_at = $1, control = NULL WHERE id = $2",
        )
        .bind(r.at.to_string())
        .bind(&r.run_id)
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
    }
    Ok(records)
}

/// A statement's error, as [`StoreError::LiveRunExists`] when it broke the one-live-run
/// rule (the `runs_one_live` index).
fn run_insert_err(digest: &str, environment: &str) -> impl Fn(sqlx::Error) -> StoreError {
    let (digest, environment) = (digest.to_owned(), environment.to_owned());
    move |e| {
        let live = e.as_database_error().is_some_and(|d| {
            d.is_unique_violation() && d.constraint() == Some(LIVE_RUN_INDEX_NAME)
        });
        if live {
            StoreError::LiveRunExists {
                digest: digest.clone(),
                environment: environment.clone(),
            }
        } else {
            query_err(e)
        }
    }
}

/// Take the schema lock for the rest of the transaction: everything that creates tables
/// (the journal schema, the access tables) does it under this lock.
pub(crate) async fn schema_lock(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The writer task: drains the queue into one transaction at a time, on a connection of
/// its own (no pool: a pool pings a connection on every acquire, a round trip per commit).
/// A connection that failed is dropped and the next group opens another.
async fn writer(
    first: PgConnection,
    opts: PgConnectOptions,
    location: String,
    password: Option<String>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut conn = Some(first);
    // The chain's head as this writer's last commit left it: a group of chain-only records
    // goes after it in one autocommit statement that compare-and-sets the head in `meta`
    // (`commit_fast`); another process's append (or an archive) costs a fall-back to the
    // transaction that reads the head.
    let mut head: Option<(i64, String)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&opts, &location, password.as_deref()).await {
                Ok(mut c) => {
                    writer_session(&mut c).await;
                    conn.insert(c)
                }
                Err(e) => {
                    let message = match e {
                        StoreError::Unavailable { message, .. } => message,
                        other => other.to_string(),
                    };
                    for (_, tx) in batch {
                        let _ = tx.send(Err(StoreError::Unavailable {
                            location: location.clone(),
                            message: message.clone(),
                        }));
                    }
                    continue;
                }
            },
        };
        let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
        if let Some(h) = head.take()
            && let Some(records) = chain::chain_only(writes.iter().map(|w| match w {
                Write::Commit(r) => Some(r.as_slice()),
                _ => None,
            }))
        {
            match commit_fast(c, &h, &records).await {
                Ok(Some(new_head)) => {
                    head = Some(new_head);
                    for (_, tx) in batch {
                        let _ = tx.send(Ok(Reply::Done));
                    }
                    continue;
                }
                // Another writer moved the head: nothing was written; read it below.
                Ok(None) => {}
                // Nothing was written (`commit_fast` asked); the ordinary path reports an
                // error that persists.
                Err(_) => {}
            }
        }
        match apply_all(c, &writes).await {
            Ok((replies, new_head)) => {
                head = Some(new_head);
                for ((_, tx), r) in batch.into_iter().zip(replies) {
                    let _ = tx.send(Ok(r));
                }
            }
            Err(_) if batch.len() > 1 => {
                // One write spoiled the group: retry each alone so only it fails.
                for (w, tx) in batch {
                    let r = match conn.as_mut() {
                        Some(c) => apply_all(c, &[&w])
                            .await
                            // apply_all returns one reply per write; exactly one here.
                            .map(|(mut v, _)| v.pop().unwrap_or(Reply::Done)),
                        None => Err(StoreError::Query("the write failed".into())),
                    };
                    let _ = tx.send(r);
                }
                conn = None;
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
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// The one autocommit statement of a chain-only group after the head the writer kept: a
/// compare-and-set of the head in `meta` (every chain writer records the head there in
/// the transaction that appends), and the audit rows inserted only if it swapped. The
/// row lock the swap takes orders appends as the advisory lock does: a concurrent
/// writer's swap waits for this commit and then finds the head moved; the ordinary path
/// locks the same row (`lock_and_head`) before it reads the head.
const FAST_SQL: &str = "WITH h AS (
    UPDATE meta SET value = $12 WHERE key = 'audit_head' AND value = $13 RETURNING 1
), a AS (
    INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv)
    SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::int[])
    WHERE EXISTS (SELECT 1 FROM h)
)
SELECT count(*) FROM h";

/// Append chain-only records after `head` in one round trip ([`FAST_SQL`]). Returns the
/// new head, or `None` when another writer had moved the head (nothing written). After an
/// error the head in `meta` says whether the statement committed all the same (the answer
/// lost on the way back): then it counts as done, never appended twice.
async fn commit_fast(
    conn: &mut PgConnection,
    head: &(i64, String),
    records: &[&Ready],
) -> Result<Option<(i64, String)>, StoreError> {
    let mut app = Appender::new(Some(head.clone()));
    for r in records {
        app.push_ready(r);
    }
    let (seq, prev) = app.head();
    let new_head = format!("{seq}:{prev}");
    let e = &app.entries;
    let col = |f: fn(&AuditEntry) -> &str| e.iter().map(f).collect::<Vec<&str>>();
    let swapped: Result<i64, sqlx::Error> = sqlx::query_scalar(FAST_SQL)
        .bind(e.iter().map(|e| e.seq).collect::<Vec<i64>>())
        .bind(col(|e| &e.at))
        .bind(col(|e| &e.actor))
        .bind(col(|e| &e.action))
        .bind(col(|e| &e.run_id))
        .bind(col(|e| &e.digest))
        .bind(col(|e| &e.outcome))
        .bind(col(|e| &e.detail))
        .bind(col(|e| &e.prev_hash))
        .bind(col(|e| &e.hash))
        .bind(e.iter().map(|e| i32::from(e.v)).collect::<Vec<i32>>())
        .bind(&new_head)
        .bind(format!("{}:{}", head.0, head.1))
        .fetch_one(&mut *conn)
        .await;
    match swapped {
        Ok(n) => Ok((n == 1).then(|| (seq, prev.to_owned()))),
        Err(err) => {
            let now: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                    .fetch_optional(&mut *conn)
                    .await
                    .ok()
                    .flatten();
            if now.as_deref() == Some(new_head.as_str()) {
                Ok(Some((seq, prev.to_owned())))
            } else {
                Err(query_err(err))
            }
        }
    }
}

/// The run rows a group creates, with the group's own later state changes folded in (a
/// CTE cannot update a row another CTE of the same statement inserts).
#[derive(Default)]
struct Batch {
    runs: Vec<(NewRun, chain::RunUpdate)>,
    updates: RunUpdates,
}

/// The head after the advisory write lock is held: statements of one simple query, so
/// one round trip. The head row of `meta` is locked (`FOR UPDATE`) before the chain is
/// read: writers appending through `commit_fast` take no advisory lock, only that row's,
/// so one in flight commits first and none starts until this transaction ends; the chain
/// read then gets a snapshot taken after both locks were granted (read committed: one per
/// statement), never one from before another writer committed.
pub(crate) async fn lock_and_head(
    tx: &mut PgConnection,
) -> Result<Option<(i64, String)>, StoreError> {
    use sqlx::Executor as _;
    // `ORDER BY audit.seq`: the bare name would sort by the text alias (9 after 10).
    let sql = format!(
        "SELECT pg_advisory_xact_lock({LOCK_CLASS}, {WRITE_LOCK}); \
         SELECT 'meta' AS src, value AS seq, '' AS hash FROM meta WHERE key = 'audit_head' FOR UPDATE; \
         SELECT 'chain' AS src, seq::text AS seq, hash FROM audit ORDER BY audit.seq DESC LIMIT 1"
    );
    let rows = tx
        .fetch_all(sqlx::raw_sql(AssertSqlSafe(sql)))
        .await
        .map_err(query_err)?;
    let mut chain = None;
    let mut meta = None;
    for r in &rows {
        let Ok(src) = r.try_get::<String, _>("src") else {
            continue;
        };
        let seq: String = r.try_get("seq").map_err(query_err)?;
        if src == "chain" {
            let hash: String = r.try_get("hash").map_err(query_err)?;
            chain = seq.parse().ok().map(|s| (s, hash));
        } else {
            meta = parse_head(&seq);
        }
    }
    // After `slipway archive` moved the whole chain out, the table is empty but the chain
    // goes on from the recorded head.
    Ok(chain.or(meta))
}

/// The head inside a transaction that already holds the write lock (the migration's).
async fn read_head(tx: &mut PgConnection) -> Result<Option<(i64, String)>, StoreError> {
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
    Ok(v.and_then(|v| parse_head(&v)))
}

/// Apply a group of writes in one transaction; returns one reply per write and the
/// chain's head after it (read under the locks, so the true head either way).
async fn apply_all(
    conn: &mut PgConnection,
    writes: &[&Write],
) -> Result<(Vec<Reply>, (i64, String)), StoreError> {
    let mut tx = conn.begin().await.map_err(query_err)?;
    let mut app = Appender::new(lock_and_head(&mut tx).await?);
    let mut batch = Batch::default();
    let mut replies = Vec::with_capacity(writes.len());
    for w in writes {
        let reply = match w {
            Write::Commit(records) => {
                for r in records {
                    app.push_ready(r);
                    batch.updates.apply(&r.record);
                }
                Reply::Done
            }
            Write::CreateRun(b) => {
                let (run, first) = &**b;
                let first = chain::covered_first(run, first)?;
                app.push(&first)?;
                let mut u = RunUpdates::default();
                u.apply(&first);
                // Later records of this run in the group fold into its row (below).
                batch
                    .runs
                    .push((run.clone(), u.by_run.remove(&run.id).unwrap_or_default()));
                Reply::Done
            }
            Write::Pseudonym(name) => Reply::Id(pseudonym_in(&mut tx, name).await?),
            Write::Erase(name) => {
                let n = sqlx::query("UPDATE identities SET name = NULL WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err)?
                    .rows_affected();
                Reply::Erased(n > 0)
            }
            Write::Acquire(req) => Reply::Acquired(acquire(&mut tx, req).await?),
            Write::Release {
                environment,
                holder,
            } => Reply::Released(release(&mut tx, environment, holder.as_deref()).await?),
            Write::Governance(recs) => {
                Reply::Records(write_governance(&mut tx, &mut app, recs).await?)
            }
            Write::Anchor(a) => {
                let n = sqlx::query(
                    "INSERT INTO audit_anchors (seq, hash, payload, signature) VALUES ($1, $2, $3, $4)
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
            Write::Bundle(digest, data, at) => {
                let n = sqlx::query(
                    "INSERT INTO bundles (digest, size, data, created_at) VALUES ($1, $2, $3, $4)
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
                    "INSERT INTO token_use (id, last_used_at) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET last_used_at = excluded.last_used_at",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?;
                Reply::Done
            }
        };
        replies.push(reply);
    }
    flush(&mut tx, &app, &mut batch).await?;
    tx.commit().await.map_err(query_err)?;
    let (seq, prev) = app.head();
    Ok((replies, (seq, prev.to_owned())))
}

/// The pseudonymous id of `name`, created on first use, inside `tx`.
async fn pseudonym_in(tx: &mut PgConnection, name: &str) -> Result<String, StoreError> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM identities WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err)?;
    if let Some(id) = found {
        return Ok(id);
    }
    let id = pseudonym_id(name);
    sqlx::query("INSERT INTO identities (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(name)
        .bind(slipway_stdx::now().to_string())
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
    Ok(id)
}

/// Write governance records and their chain entries (one entry per record) inside `tx`.
async fn write_governance(
    tx: &mut PgConnection,
    app: &mut Appender,
    recs: &[GovernanceRecord],
) -> Result<Vec<StoredRecord>, StoreError> {
    let mut out = Vec::with_capacity(recs.len());
    for rec in recs {
        let key = match &rec.key {
            RecordKey::Given(k) => k.clone(),
            RecordKey::Next => {
                // Only keys of digits count: a cast of another key would fail the query.
                let n: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(max(key::bigint), 0) + 1 FROM records WHERE kind = $1 AND key ~ '^[0-9]{1,18}$'",
                )
                .bind(&rec.kind)
                .fetch_one(&mut *tx)
                .await
                .map_err(query_err)?;
                n.to_string()
            }
        };
        let current: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM records WHERE kind = $1 AND key = $2")
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

/// Write (or, with no data, delete) one staged record version committed to by entry `seq`,
/// inside `tx`.
pub(crate) async fn put_record(
    tx: &mut PgConnection,
    staged: &Staged,
    seq: i64,
) -> Result<(), StoreError> {
    match &staged.data {
        Some(data) => sqlx::query(
            "INSERT INTO records (kind, key, data, nonce, seq) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, nonce = excluded.nonce, seq = excluded.seq",
        )
        .bind(&staged.kind)
        .bind(&staged.key)
        .bind(data)
        .bind(&staged.nonce)
        .bind(seq),
        None => sqlx::query("DELETE FROM records WHERE kind = $1 AND key = $2")
            .bind(&staged.kind)
            .bind(&staged.key),
    }
    .execute(&mut *tx)
    .await
    .map_err(query_err)?;
    Ok(())
}

/// Write the appended chain entries and the new head inside `tx` (no run rows: the
/// archive's prune writes only governance entries).
pub(crate) async fn flush_entries(tx: &mut PgConnection, app: &Appender) -> Result<(), StoreError> {
    flush(tx, app, &mut Batch::default()).await
}

fn parse_head(v: &str) -> Option<(i64, String)> {
    let (seq, hash) = v.split_once(':')?;
    Some((seq.parse().ok()?, hash.to_owned()))
}

/// The one statement that writes a group's journal records: the audit rows, the runs it
/// creates (with their later changes in the group folded in), the collapsed state changes
/// of other runs and the new head, as `UNNEST` arrays in data-modifying CTEs.
const GROUP_SQL: &str = "WITH a AS (
    INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv)
    SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::int[])
), r AS (
    INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason,
                      plan_json, created_at, updated_at, workdir, control)
    SELECT * FROM UNNEST($12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                         $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
                         $22::text[], $23::text[], $24::text[])
), u AS (
    UPDATE runs SET state = COALESCE(x.state, runs.state),
                    updated_at = COALESCE(x.updated_at, runs.updated_at),
                    control = CASE WHEN x.set_control THEN x.control ELSE runs.control END
    FROM UNNEST($25::text[], $26::text[], $27::text[], $28::bool[], $29::text[])
         AS x(id, state, updated_at, set_control, control)
    WHERE runs.id = x.id
)
INSERT INTO meta (key, value) VALUES ('audit_head', $30)
ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Write the group's audit rows and run changes in one round trip.
async fn flush(tx: &mut PgConnection, app: &Appender, batch: &mut Batch) -> Result<(), StoreError> {
    if app.entries.is_empty() && batch.runs.is_empty() && batch.updates.by_run.is_empty() {
        return Ok(());
    }
    let created: std::collections::HashSet<String> =
        batch.runs.iter().map(|(r, _)| r.id.clone()).collect();
    // Fold the group's later changes of a created run into its row.
    for (run, u) in &mut batch.runs {
        if let Some(later) = batch.updates.by_run.remove(&run.id) {
            u.state = later.state.or(u.state);
            u.updated_at = later.updated_at.or(u.updated_at.take());
            if later.control.is_some() {
                u.control = later.control;
            }
        }
    }
    let e = &app.entries;
    let col = |f: fn(&AuditEntry) -> String| e.iter().map(f).collect::<Vec<String>>();
    let runs = &batch.runs;
    let rcol = |f: &dyn Fn(&(NewRun, chain::RunUpdate)) -> String| {
        runs.iter().map(f).collect::<Vec<String>>()
    };
    let ropt = |f: &dyn Fn(&(NewRun, chain::RunUpdate)) -> Option<String>| {
        runs.iter().map(f).collect::<Vec<Option<String>>>()
    };
    let updates: Vec<(&String, &chain::RunUpdate)> = batch
        .updates
        .by_run
        .iter()
        .filter(|(id, _)| !created.contains(*id))
        .collect();
    // What a violation of the one-live-run rule would be about: a run this group creates,
    // or a finished one it makes live again (rolled back by hand).
    let mut live = batch
        .runs
        .first()
        .map(|(r, _)| (r.digest.clone(), r.environment.clone()));
    if live.is_none()
        && let Some((id, _)) = updates.iter().find(|(_, u)| u.revived)
    {
        live = sqlx::query_as("SELECT digest, environment FROM runs WHERE id = $1")
            .bind(*id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err)?;
    }
    let (seq, prev) = app.head();
    sqlx::query(GROUP_SQL)
        .bind(e.iter().map(|e| e.seq).collect::<Vec<i64>>())
        .bind(col(|e| e.at.clone()))
        .bind(col(|e| e.actor.clone()))
        .bind(col(|e| e.action.clone()))
        .bind(col(|e| e.run_id.clone()))
        .bind(col(|e| e.digest.clone()))
        .bind(col(|e| e.outcome.clone()))
        .bind(col(|e| e.detail.clone()))
        .bind(col(|e| e.prev_hash.clone()))
        .bind(col(|e| e.hash.clone()))
        .bind(e.iter().map(|e| i32::from(e.v)).collect::<Vec<i32>>())
        .bind(rcol(&|(r, _)| r.id.clone()))
        .bind(rcol(&|(r, _)| r.digest.clone()))
        .bind(rcol(&|(r, _)| r.release.clone()))
        .bind(rcol(&|(r, _)| r.version.clone()))
        .bind(rcol(&|(r, _)| r.environment.clone()))
        .bind(rcol(&|(r, _)| r.author.clone()))
        .bind(rcol(&|(_, u)| {
            u.state.unwrap_or(RunState::Pending).as_str().to_owned()
        }))
        .bind(ropt(&|(r, _)| r.override_reason.clone()))
        .bind(rcol(&|(r, _)| r.plan_json.clone()))
        .bind(rcol(&|(r, _)| r.created_at.to_string()))
        .bind(rcol(&|(r, u)| {
            u.updated_at
                .clone()
                .unwrap_or_else(|| r.created_at.to_string())
        }))
        .bind(rcol(&|(r, _)| r.workdir.clone()))
        .bind(ropt(&|(_, u)| {
            u.control.flatten().map(|c| c.as_str().to_owned())
        }))
        .bind(
            updates
                .iter()
                .map(|(id, _)| (*id).clone())
                .collect::<Vec<String>>(),
        )
        .bind(
            updates
                .iter()
                .map(|(_, u)| u.state.map(|s| s.as_str().to_owned()))
                .collect::<Vec<Option<String>>>(),
        )
        .bind(
            updates
                .iter()
                .map(|(_, u)| u.updated_at.clone())
                .collect::<Vec<Option<String>>>(),
        )
        .bind(
            updates
                .iter()
                .map(|(_, u)| u.control.is_some())
                .collect::<Vec<bool>>(),
        )
        .bind(
            updates
                .iter()
                .map(|(_, u)| u.control.flatten().map(|c| c.as_str().to_owned()))
                .collect::<Vec<Option<String>>>(),
        )
        .bind(format!("{seq}:{prev}"))
        .execute(&mut *tx)
        .await
        .map_err(|e| match &live {
            // The group is retried write by write after a failure, so a violation then
            // names the one run that broke the rule.
            Some((digest, environment)) => run_insert_err(digest, environment)(e),
            None => query_err(e),
        })?;
    Ok(())
}

const LEASE_COLS: &str = "environment, holder, release, acquired_at, expires_ms";

fn lease_err(e: sqlx::Error) -> StoreError {
    StoreError::Query(format!("use the lease table: {e}"))
}

fn from_millis(ms: i64) -> Timestamp {
    // As in SQLite: a hand-edited value out of range reads as long expired.
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn lease_from_row(r: &PgRow) -> Result<LeaseRecord, StoreError> {
    let acquired: String = r.try_get("acquired_at").map_err(lease_err)?;
    Ok(LeaseRecord {
        environment: r.try_get("environment").map_err(lease_err)?,
        holder: r.try_get("holder").map_err(lease_err)?,
        release: r.try_get("release").map_err(lease_err)?,
        acquired_at: ts(&acquired),
        expires_at: from_millis(r.try_get("expires_ms").map_err(lease_err)?),
    })
}

async fn current_lease(
    tx: &mut PgConnection,
    environment: &str,
) -> Result<Option<LeaseRecord>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {LEASE_COLS} FROM leases WHERE environment = $1"
    )))
    .bind(environment)
    .fetch_optional(&mut *tx)
    .await
    .map_err(lease_err)?;
    row.as_ref().map(lease_from_row).transpose()
}

/// The compare-and-swap of a lease; the write lock held by the transaction makes the
/// read and the write one step for every process.
async fn acquire(tx: &mut PgConnection, req: &LeaseRequest) -> Result<LeaseOutcome, StoreError> {
    let ttl = i64::try_from(req.ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let now = req.now.as_millisecond();
    let expires = now.saturating_add(ttl);
    let (acquired_at, reclaimed) = match current_lease(tx, &req.environment).await? {
        Some(l) if l.holder == req.holder => (l.acquired_at, None),
        Some(l) if l.expires_at.as_millisecond() > now => return Ok(LeaseOutcome::Held(l)),
        Some(l) => (req.now, Some(l)),
        None => (req.now, None),
    };
    sqlx::query(
        "INSERT INTO leases (environment, holder, release, acquired_at, expires_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (environment) DO UPDATE SET holder = excluded.holder,
            release = excluded.release, acquired_at = excluded.acquired_at,
            expires_ms = excluded.expires_ms",
    )
    .bind(&req.environment)
    .bind(&req.holder)
    .bind(&req.release)
    .bind(acquired_at.to_string())
    .bind(expires)
    .execute(&mut *tx)
    .await
    .map_err(lease_err)?;
    Ok(LeaseOutcome::Granted {
        lease: LeaseRecord {
            environment: req.environment.clone(),
            holder: req.holder.clone(),
            release: req.release.clone(),
            acquired_at,
            expires_at: from_millis(expires),
        },
        reclaimed,
    })
}

async fn release(
    tx: &mut PgConnection,
    environment: &str,
    holder: Option<&str>,
) -> Result<Option<LeaseRecord>, StoreError> {
    let Some(lease) = current_lease(tx, environment).await? else {
        return Ok(None);
    };
    if holder.is_some_and(|h| h != lease.holder) {
        return Ok(None);
    }
    sqlx::query("DELETE FROM leases WHERE environment = $1 AND holder = $2")
        .bind(environment)
        .bind(&lease.holder)
        .execute(&mut *tx)
        .await
        .map_err(lease_err)?;
    Ok(Some(lease))
}

fn ts(s: &str) -> Timestamp {
    // Every stored time was written by `Timestamp::to_string`; a hand-edited one that
    // does not parse reads as the epoch rather than failing a status display.
    Timestamp::from_str(s).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn run_from_row(r: &PgRow) -> Result<RunRecord, StoreError> {
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

/// A claimed run: the session holding the advisory lock. Dropping it closes the socket,
/// and the server ends the session and its lock at once.
struct PgClaim {
    _conn: Mutex<PgConnection>,
}

impl RunClaim for PgClaim {}

impl Store for PgStore {
    fn location(&self) -> String {
        self.location.clone()
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
            // The entries' text is made here, on the caller's task (as in SQLite).
            let ready = records
                .into_iter()
                .map(Ready::new)
                .collect::<Result<Vec<_>, _>>()?;
            self.send(Write::Commit(ready)).await?;
            Ok(())
        })
    }

    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!("SELECT {RUN_COLS}, plan_json FROM runs WHERE id = $1");
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
            // Byte order (`C`), as SQLite compares the RFC 3339 text, whatever the
            // database's collation.
            let sql = format!(
                "SELECT {RUN_COLS}, '' AS plan_json FROM runs
                 ORDER BY created_at COLLATE \"C\" DESC, id COLLATE \"C\" DESC LIMIT $1"
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
            // Byte order (`C`) for the newest, as `runs` orders and SQLite compares.
            let sql = format!(
                "SELECT {RUN_COLS}, plan_json FROM runs
                 WHERE (release, environment, created_at) IN (
                     SELECT release, environment, MAX(created_at COLLATE \"C\") FROM runs
                     GROUP BY release, environment
                     UNION
                     SELECT release, environment, MAX(created_at COLLATE \"C\") FROM runs
                     WHERE state = 'succeeded' GROUP BY release, environment)
                 ORDER BY created_at COLLATE \"C\" DESC, id COLLATE \"C\" DESC"
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
                "SELECT {RUN_COLS}, plan_json FROM runs WHERE digest = $1 AND environment = $2
                 AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'aborted')
                 ORDER BY created_at COLLATE \"C\" DESC LIMIT 1"
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
                sqlx::query_scalar("SELECT control FROM runs WHERE id = $1")
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
                "SELECT at, detail FROM audit WHERE run_id = $1 AND action IN ({}) ORDER BY seq",
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
                "SELECT seq, run_id, at, actor, detail FROM audit WHERE run_id = $1 AND seq > $2 ORDER BY seq",
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
                    "SELECT at, detail FROM audit WHERE run_id = $1 AND action = 'approved' ORDER BY seq",
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
                sqlx::query_scalar("SELECT name FROM identities WHERE id = $1")
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
            rows.iter()
                .map(|r| {
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
                        v: r.try_get::<i32, _>("hv")
                            .ok()
                            .and_then(|v| u8::try_from(v).ok())
                            .unwrap_or(0),
                    })
                })
                .collect()
        })
    }

    fn audit_head(&self) -> BoxFuture<'_, Result<Option<(i64, String)>, StoreError>> {
        Box::pin(async move {
            let v: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                    .fetch_optional(&self.read)
                    .await
                    .map_err(query_err)?;
            Ok(v.and_then(|v| parse_head(&v)))
        })
    }

    fn claim<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn RunClaim>, StoreError>> {
        Box::pin(async move {
            let mut conn = connect(&self.opts, &self.location, None).await?;
            // The server cuts a session whose peer stopped answering after idle +
            // interval × count seconds (about CLAIM_LEASE); an idle-session timeout
            // configured on the server must not end a claim that is simply waiting.
            sqlx::raw_sql(
                "SET tcp_keepalives_idle = 15; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; SET idle_session_timeout = 0",
            )
            .execute(&mut conn)
            .await
            .map_err(query_err)?;
            // A dropped claim's session ends a moment after its socket closes (the server
            // notices the EOF, then releases the lock), and a process often drops a
            // claim and claims again at once (`driven` then `drive`): a busy lock is
            // retried for a short while before it counts as another holder's.
            let mut got = false;
            for attempt in 0..CLAIM_RETRIES {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // A 64-bit key from the run id's md5: collisions are negligible.
                got = sqlx::query_scalar(
                    "SELECT pg_try_advisory_lock(('x' || substr(md5('slipway-run:' || $1), 1, 16))::bit(64)::bigint)",
                )
                .bind(run_id)
                .fetch_one(&mut conn)
                .await
                .map_err(query_err)?;
                if got {
                    break;
                }
            }
            if got {
                Ok(Box::new(PgClaim {
                    _conn: Mutex::new(conn),
                }) as Box<dyn RunClaim>)
            } else {
                let _ = conn.close().await;
                Err(StoreError::Claimed(run_id.to_owned()))
            }
        })
    }

    fn driven<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            sqlx::query_scalar(DRIVEN_SQL)
                .bind(run_id)
                .fetch_one(&self.read)
                .await
                .map_err(query_err)
        })
    }

    fn acquire_lease(&self, req: LeaseRequest) -> BoxFuture<'_, Result<LeaseOutcome, StoreError>> {
        Box::pin(async move {
            match self.send(Write::Acquire(req)).await? {
                Reply::Acquired(o) => Ok(o),
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
            let w = Write::Release {
                environment: environment.to_owned(),
                holder: holder.map(str::to_owned),
            };
            match self.send(w).await? {
                Reply::Released(l) => Ok(l),
                _ => Err(StoreError::Query("the writer answered out of turn".into())),
            }
        })
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {LEASE_COLS} FROM leases ORDER BY environment COLLATE \"C\""
            )))
            .fetch_all(&self.read)
            .await
            .map_err(lease_err)?;
            rows.iter().map(lease_from_row).collect()
        })
    }

    fn audit_start(&self) -> BoxFuture<'_, Result<(i64, String), StoreError>> {
        Box::pin(async move {
            let data: Option<String> = sqlx::query_scalar(
                "SELECT data FROM records WHERE kind = 'archive_checkpoint' AND key ~ '^[0-9]{1,18}$'
                 ORDER BY key::bigint DESC LIMIT 1",
            )
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)?;
            crate::archive::start_of(data.as_deref())
        })
    }

    fn audit_bounds(&self) -> BoxFuture<'_, Result<AuditBounds, StoreError>> {
        Box::pin(async move {
            let (min, max): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT min(seq), max(seq) FROM audit")
                    .fetch_one(&self.read)
                    .await
                    .map_err(query_err)?;
            Ok(AuditBounds { min, max })
        })
    }

    fn audit_framed(&self, after: i64, upto: i64) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let text: Option<String> = sqlx::query_scalar(FRAMED_SQL)
                .bind(after)
                .bind(upto)
                .fetch_one(&self.read)
                .await
                .map_err(query_err)?;
            Ok(text.map(String::into_bytes).unwrap_or_default())
        })
    }

    fn run_evidence(&self) -> BoxFuture<'_, Result<Vec<RunEvidence>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, digest, release, version, environment, author, state, control, override_reason, created_at, updated_at, workdir, plan_json FROM runs",
            )
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            rows.iter()
                .map(|r| {
                    let s = |c: &str| -> Result<String, StoreError> {
                        r.try_get::<String, _>(c).map_err(query_err)
                    };
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
                })
                .collect()
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
                    "SELECT kind, key, data, nonce, seq FROM records WHERE kind = $1
                     ORDER BY kind COLLATE \"C\", key COLLATE \"C\"",
                )
                .bind(k)
                .fetch_all(&self.read)
                .await,
                None => sqlx::query_as(
                    "SELECT kind, key, data, nonce, seq FROM records ORDER BY kind COLLATE \"C\", key COLLATE \"C\"",
                )
                .fetch_all(&self.read)
                .await,
            }
            .map_err(query_err)?;
            Ok(rows.into_iter().map(crate::sqlite::stored).collect())
        })
    }

    fn record<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>, StoreError>> {
        Box::pin(async move {
            let row: Option<(String, String, String, String, i64)> = sqlx::query_as(
                "SELECT kind, key, data, nonce, seq FROM records WHERE kind = $1 AND key = $2",
            )
            .bind(kind)
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)?;
            Ok(row.map(crate::sqlite::stored))
        })
    }

    fn anchors(&self) -> BoxFuture<'_, Result<Vec<Anchor>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
                "SELECT seq, hash, payload, signature FROM audit_anchors ORDER BY seq, hash COLLATE \"C\"",
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

/// One framed chunk of the chain, built by PostgreSQL in one aggregate (see
/// `sqlite::FRAMED_SQL`); `octet_length` counts bytes of the UTF-8 text.
const FRAMED_SQL: &str = "SELECT string_agg(concat(seq, ':', hv, ':',
    octet_length(at), ':', at, octet_length(actor), ':', actor, octet_length(action), ':', action,
    octet_length(run_id), ':', run_id, octet_length(digest), ':', digest,
    octet_length(outcome), ':', outcome, octet_length(detail), ':', detail,
    octet_length(prev_hash), ':', prev_hash, octet_length(hash), ':', hash), '' ORDER BY seq)
    FROM audit WHERE seq > $1 AND seq <= $2";

impl PgStore {
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
        sqlx::query_scalar("SELECT data FROM bundles WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.read)
            .await
            .map_err(query_err)
    }

    /// See [`crate::AnyStore::token_last_used`].
    pub async fn token_last_used(&self, id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT last_used_at FROM token_use WHERE id = $1")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_url_is_refused_without_its_password() {
        for url in [
            "postgres://app:s3cr%40t@db:notaport/shop",
            "postgres://app:s3cr%40t@db:5432/shop?sslmode=bogus",
        ] {
            let e = PgConnectOptions::from_str(url).unwrap_err();
            let msg = unavailable(&mask_url(url), url_password(url).as_deref(), &e).to_string();
            assert!(!msg.contains("s3cr"), "{msg}");
            assert!(msg.contains("postgres://app:***@db:"), "{msg}");
        }
    }

    #[test]
    fn passwords_are_found_and_scrubbed() {
        let url = "postgres://app:s3cr%40t@db:5432/shop";
        let pw = url_password(url);
        assert_eq!(pw.as_deref(), Some("s3cr%40t"));
        assert_eq!(scrub("bad s3cr%40t here", pw.as_deref()), "bad *** here");
        assert_eq!(scrub("bad s3cr@t here", pw.as_deref()), "bad *** here");
        assert_eq!(url_password("postgres://app@db/shop"), None);
    }
}
