//! The PostgreSQL store, for a team: several `slipway` processes (on one machine or many)
//! sharing one database.
//!
//! Same contract as the SQLite store, with PostgreSQL's tools for the cross-process parts:
//! - **Writes** go through one writer task per process that group-commits queued records
//!   (as in SQLite). Every write transaction first takes a transaction-scoped advisory lock
//!   (`pg_advisory_xact_lock`), the PostgreSQL counterpart of SQLite's `BEGIN IMMEDIATE`:
//!   writers of all processes are serialized, so the audit head read inside the
//!   transaction is the real head and the chain stays linear, journal `seq` values are
//!   handed out in commit order (a `logs -f` reader polling `seq > n` never skips one), and
//!   the lease compare-and-swap cannot interleave with another process's.
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
use slipway_engine::audit::{AuditEntry, GENESIS};
use slipway_engine::event::{Control, EngineEvent, Notice, RunState, StepStatus};
use slipway_engine::store::{
    ApprovalRecord, JournalRecord, LeaseOutcome, LeaseRecord, LeaseRequest, NewRun, RunClaim,
    RunRecord, StepRecord, Store, StoreError,
};
use slipway_engine::{BoxFuture, StepOutput};
use slipway_model::text::mask_url;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
// Dynamic SQL here only ever joins fixed column lists and `$n` placeholders; values are
// always bound, never interpolated.
use sqlx::{AssertSqlSafe, Connection, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

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
/// Advisory lock keys (two-int4 form, a key space apart from the claims' bigint keys):
/// `SLIP` in ASCII, then which lock.
const LOCK_CLASS: i32 = 0x534c_4950;
const WRITE_LOCK: i32 = 1;
const SCHEMA_LOCK: i32 = 2;

enum Write {
    Commit(Vec<JournalRecord>),
    CreateRun(Box<(NewRun, JournalRecord)>),
    Pseudonym(String),
    Erase(String),
    Acquire(LeaseRequest),
    Release {
        environment: String,
        holder: Option<String>,
    },
}

enum Reply {
    Done,
    Id(String),
    Erased(bool),
    Acquired(LeaseOutcome),
    Released(Option<LeaseRecord>),
}

type Pending = (Write, oneshot::Sender<Result<Reply, StoreError>>);

/// The PostgreSQL store. See the module doc for its concurrency contract.
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
        let mut conn = connect(&opts, &location, password.as_deref()).await?;
        migrate(&mut conn, &location, password.as_deref()).await?;
        let _ = conn.close().await;
        let read = pool(&opts, 4);
        let write = pool(&opts, 1);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(write, rx));
        Ok(Self {
            location,
            opts: Box::new(opts),
            read,
            writer: tx,
        })
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

    /// The read pool, for the records kept beside the journal (`access`).
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
    if current == JOURNAL_FORMAT {
        tx.commit().await.map_err(err)?;
        return Ok(());
    }
    if current == 0 {
        sqlx::raw_sql(PG_SCHEMA)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    let from = current.max(PG_FIRST_FORMAT);
    for (i, sql) in PG_MIGRATIONS
        .iter()
        .enumerate()
        .skip((from - PG_FIRST_FORMAT) as usize)
    {
        if PG_FIRST_FORMAT + i as u32 + 1 == LIVE_RUN_FORMAT {
            abort_live_duplicates(&mut tx).await?;
        }
        sqlx::raw_sql(AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('journal_format', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(JOURNAL_FORMAT.to_string())
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(())
}

/// Before the one-live-run index exists: abort, journaled and audited in the migration's
/// transaction, the older live runs that share a digest and environment.
async fn abort_live_duplicates(tx: &mut PgConnection) -> Result<(), StoreError> {
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as(AssertSqlSafe(LIVE_DUPLICATES))
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err)?;
    let records = crate::duplicate_aborts(&rows, slipway_stdx::now());
    if records.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err)?;
    let head = match head {
        Some(h) => Some(h),
        None => meta_head(tx).await?,
    };
    let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_owned()));
    let mut staged = Staged {
        journal: Vec::new(),
        audit: Vec::new(),
    };
    for r in &records {
        apply_record(tx, r, &mut staged, &mut seq, &mut prev).await?;
    }
    flush(tx, &staged).await?;
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('audit_head', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(format!("{seq}:{prev}"))
    .execute(&mut *tx)
    .await
    .map_err(query_err)?;
    Ok(())
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

/// The writer task: drains the queue into one transaction at a time.
async fn writer(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
        match apply_all(&pool, &writes).await {
            Ok(replies) => {
                for ((_, tx), r) in batch.into_iter().zip(replies) {
                    let _ = tx.send(Ok(r));
                }
            }
            Err(_) if batch.len() > 1 => {
                // One write spoiled the group: retry each alone so only it fails.
                for (w, tx) in batch {
                    let r = apply_all(&pool, &[&w])
                        .await
                        // apply_all returns one reply per write; exactly one here.
                        .map(|mut v| v.pop().unwrap_or(Reply::Done));
                    let _ = tx.send(r);
                }
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
            }
        }
    }
    pool.close().await;
}

type Tx = Transaction<'static, Postgres>;

struct Staged {
    journal: Vec<(String, String, String, &'static str, String)>,
    audit: Vec<AuditEntry>,
}

async fn apply_all(pool: &PgPool, writes: &[&Write]) -> Result<Vec<Reply>, StoreError> {
    let mut tx = pool.begin().await.map_err(query_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err)?;
    // An empty audit table with a recorded head continues from that head, as in SQLite.
    let head = match head {
        Some(h) => Some(h),
        None => meta_head(&mut tx).await?,
    };
    let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_owned()));
    let mut staged = Staged {
        journal: Vec::new(),
        audit: Vec::new(),
    };
    let mut replies = Vec::with_capacity(writes.len());
    for w in writes {
        let reply = match w {
            Write::Commit(records) => {
                for r in records {
                    apply_record(&mut tx, r, &mut staged, &mut seq, &mut prev).await?;
                }
                Reply::Done
            }
            Write::CreateRun(b) => {
                let (run, first) = &**b;
                sqlx::query(
                    "INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at, workdir)
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $9, $10)",
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
                apply_record(&mut tx, first, &mut staged, &mut seq, &mut prev).await?;
                Reply::Done
            }
            Write::Pseudonym(name) => {
                let found: Option<String> =
                    sqlx::query_scalar("SELECT id FROM identities WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(query_err)?;
                match found {
                    Some(id) => Reply::Id(id),
                    None => {
                        let id = pseudonym_id(name);
                        sqlx::query(
                            "INSERT INTO identities (id, name, created_at) VALUES ($1, $2, $3)",
                        )
                        .bind(&id)
                        .bind(name)
                        .bind(slipway_stdx::now().to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(query_err)?;
                        Reply::Id(id)
                    }
                }
            }
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
        };
        replies.push(reply);
    }
    flush(&mut tx, &staged).await?;
    if !staged.audit.is_empty() {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('audit_head', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(format!("{seq}:{prev}"))
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
    }
    tx.commit().await.map_err(query_err)?;
    Ok(replies)
}

async fn meta_head(tx: &mut PgConnection) -> Result<Option<(i64, String)>, StoreError> {
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err)?;
    Ok(v.and_then(|v| parse_head(&v)))
}

fn parse_head(v: &str) -> Option<(i64, String)> {
    let (seq, hash) = v.split_once(':')?;
    Some((seq.parse().ok()?, hash.to_owned()))
}

/// Apply one record's effects now (state rows) and stage its journal and audit rows.
async fn apply_record(
    tx: &mut PgConnection,
    r: &JournalRecord,
    staged: &mut Staged,
    seq: &mut i64,
    prev: &mut String,
) -> Result<(), StoreError> {
    let data = serde_json::to_string(&r.event).map_err(|e| StoreError::Query(e.to_string()))?;
    let at = r.at.to_string();
    match &r.event {
        EngineEvent::StateChanged { from, to, .. } => {
            let clear = to.is_terminal()
                || matches!(to, RunState::Paused | RunState::Aborted)
                || *from == RunState::Paused;
            // A finished run becoming live again (rolled back by hand) may meet the
            // one-live-run rule: its environment names the conflict.
            let environment: String = if from.is_terminal() && !to.is_terminal() {
                sqlx::query_scalar("SELECT environment FROM runs WHERE id = $1")
                    .bind(&r.run_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_err)?
                    .unwrap_or_default()
            } else {
                String::new()
            };
            sqlx::query(
                "UPDATE runs SET state = $1, updated_at = $2, control = CASE WHEN $3 THEN NULL ELSE control END WHERE id = $4",
            )
            .bind(to.as_str())
            .bind(&at)
            .bind(clear)
            .bind(&r.run_id)
            .execute(&mut *tx)
            .await
            .map_err(run_insert_err(&r.digest, &environment))?;
        }
        EngineEvent::ControlRequested { control } => {
            sqlx::query("UPDATE runs SET control = $1, updated_at = $2 WHERE id = $3")
                .bind(control.as_str())
                .bind(&at)
                .bind(&r.run_id)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?;
        }
        EngineEvent::Approved {
            approver,
            digest,
            groups,
        } => {
            sqlx::query(
                "INSERT INTO approvals (run_id, approver, digest, groups, at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&r.run_id)
            .bind(approver)
            .bind(digest)
            .bind(groups.join(","))
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        }
        _ => {}
    }
    if let Some((step, key, status)) = r.event.step_effect() {
        let attempts = match &r.event {
            EngineEvent::StepStarted { attempt, .. } => Some(i64::from(*attempt)),
            _ => None,
        };
        let output = match &r.event {
            EngineEvent::StepSucceeded { output, .. } | EngineEvent::StepFailed { output, .. } => {
                output.as_ref().and_then(|o| serde_json::to_string(o).ok())
            }
            _ => None,
        };
        sqlx::query(
            "INSERT INTO steps (run_id, step_id, key, status, attempts, output, updated_at)
             VALUES ($1, $2, $3, $4, COALESCE($5, 0), $6, $7)
             ON CONFLICT (run_id, step_id) DO UPDATE SET
               status = excluded.status,
               attempts = COALESCE($5, steps.attempts),
               output = COALESCE(excluded.output, steps.output),
               updated_at = excluded.updated_at",
        )
        .bind(&r.run_id)
        .bind(step)
        .bind(key)
        .bind(status.as_str())
        .bind(attempts)
        .bind(output)
        .bind(&at)
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
    }
    let mut entry = AuditEntry {
        seq: *seq + 1,
        at: at.clone(),
        actor: r.actor.clone(),
        action: r.event.name().to_owned(),
        run_id: r.run_id.clone(),
        digest: r.digest.clone(),
        outcome: r.event.outcome(),
        detail: data.clone(),
        prev_hash: prev.clone(),
        hash: String::new(),
    };
    entry.hash = entry.compute_hash();
    *seq = entry.seq;
    prev.clone_from(&entry.hash);
    staged.audit.push(entry);
    staged
        .journal
        .push((r.run_id.clone(), at, r.actor.clone(), r.event.name(), data));
    Ok(())
}

/// `($1, $2, …), ($k, …)`: `rows` groups of `cols` numbered placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Insert the staged journal and audit rows, many rows per statement (in staging order,
/// so journal seq follows the audit chain's order).
async fn flush(tx: &mut PgConnection, staged: &Staged) -> Result<(), StoreError> {
    for chunk in staged.journal.chunks(500) {
        let sql = format!(
            "INSERT INTO journal (run_id, at, actor, event, data) VALUES {}",
            placeholders(chunk.len(), 5)
        );
        let mut qy = sqlx::query(AssertSqlSafe(sql));
        for (run, at, actor, event, data) in chunk {
            qy = qy.bind(run).bind(at).bind(actor).bind(*event).bind(data);
        }
        qy.execute(&mut *tx).await.map_err(query_err)?;
    }
    for chunk in staged.audit.chunks(500) {
        let sql = format!(
            "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash) VALUES {}",
            placeholders(chunk.len(), 10)
        );
        let mut qy = sqlx::query(AssertSqlSafe(sql));
        for e in chunk {
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
                .bind(&e.hash);
        }
        qy.execute(&mut *tx).await.map_err(query_err)?;
    }
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

async fn current_lease(tx: &mut Tx, environment: &str) -> Result<Option<LeaseRecord>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {LEASE_COLS} FROM leases WHERE environment = $1"
    )))
    .bind(environment)
    .fetch_optional(&mut **tx)
    .await
    .map_err(lease_err)?;
    row.as_ref().map(lease_from_row).transpose()
}

/// The compare-and-swap of a lease; the write lock held by the transaction makes the
/// read and the write one step for every process.
async fn acquire(tx: &mut Tx, req: &LeaseRequest) -> Result<LeaseOutcome, StoreError> {
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
    .execute(&mut **tx)
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
    tx: &mut Tx,
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
        .execute(&mut **tx)
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
            self.send(Write::Commit(records)).await?;
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
            let rows = sqlx::query(
                "SELECT step_id, key, status, attempts, output, updated_at FROM steps WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            rows.iter()
                .map(|r| {
                    let status: String = r.try_get("status").map_err(query_err)?;
                    let output: Option<String> = r.try_get("output").map_err(query_err)?;
                    Ok(StepRecord {
                        step_id: r.try_get("step_id").map_err(query_err)?,
                        key: r.try_get("key").map_err(query_err)?,
                        status: StepStatus::parse(&status).ok_or_else(|| {
                            StoreError::Query(format!("unknown step status `{status}`"))
                        })?,
                        attempts: u32::try_from(
                            r.try_get::<i64, _>("attempts").map_err(query_err)?,
                        )
                        .unwrap_or(0),
                        output: output.and_then(|o| serde_json::from_str::<StepOutput>(&o).ok()),
                        updated_at: ts(&r.try_get::<String, _>("updated_at").map_err(query_err)?),
                    })
                })
                .collect()
        })
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
        after_seq: i64,
    ) -> BoxFuture<'a, Result<Vec<Notice>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, run_id, at, actor, data FROM journal WHERE run_id = $1 AND seq > $2 ORDER BY seq",
            )
            .bind(run_id)
            .bind(after_seq)
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            rows.iter()
                .map(|r| {
                    let data: String = r.try_get("data").map_err(query_err)?;
                    Ok(Notice {
                        seq: r.try_get("seq").map_err(query_err)?,
                        run_id: r.try_get("run_id").map_err(query_err)?,
                        at: ts(&r.try_get::<String, _>("at").map_err(query_err)?),
                        actor: r.try_get("actor").map_err(query_err)?,
                        event: serde_json::from_str(&data)
                            .map_err(|e| StoreError::Query(format!("read a journal event: {e}")))?,
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
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT approver, digest, groups, at FROM approvals WHERE run_id = $1 ORDER BY id",
            )
            .bind(run_id)
            .fetch_all(&self.read)
            .await
            .map_err(query_err)?;
            Ok(rows
                .into_iter()
                .map(|(approver, digest, groups, at)| ApprovalRecord {
                    approver,
                    digest,
                    groups: groups
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    at: ts(&at),
                })
                .collect())
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
                "SELECT seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash FROM audit ORDER BY seq",
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_row() {
        assert_eq!(placeholders(2, 2), "($1, $2), ($3, $4)");
    }

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
