//! The SQLite file store's pipelined appends of chain-only records (step events and the
//! like): callers number and hash their entries onto the head the last queued group will
//! leave, and one committer thread writes the queued groups through a rusqlite connection
//! of its own, so hashing and queueing group N+1 overlap group N's fsync.
//!
//! What overlaps what. SQLite runs one transaction at a time on a connection, and the
//! statements of a transaction (binds, inserts, the B-tree work) must run inside it; so
//! the committer's transaction is serial. Everything else is not: each caller makes its
//! entries' text on its own task (`chain::Ready`: event JSON, time, canonical bytes), then
//! under a short lock hashes them onto the head the previous group will leave (known
//! before that group's fsync: hashes do not depend on the commit) and queues them. While
//! the committer is in one `COMMIT`'s fsync, every caller that arrives queues behind it;
//! the committer then takes *all* queued groups into one transaction (they chain one onto
//! the next): the group commit. The committer answers each caller itself once its
//! `COMMIT` returned (WAL, `synchronous=FULL`), so a caller — the engine, before a step's
//! effect — still returns only once its records are durable.
//!
//! Failures. A group can only be committed after the one it chains onto: if a commit
//! fails, every group already queued behind it fails too with the same error (never
//! committed after a failed one), and the fast path closes (`State::head` is `None`) until
//! the writer task, which then gets every commit, has drained this queue (a barrier) and
//! re-read the head in its own transaction. When another process (or an archive) moved the
//! head, the compare-and-set of the head in `meta` writes nothing; those groups and the
//! ones behind them go back to the writer task, which commits them the ordinary way.
//!
//! Why rusqlite and not sqlx here: sqlx binds every value into an argument list of its own
//! (a copy and an allocation each) and hands the call to its worker thread; here the
//! statements are prepared once per connection and kept, and the entries go in as
//! multi-row INSERTs (up to 64 rows: SQLite's per-statement work, its cursors and
//! halting, is paid once per chunk, not per entry), their values bound straight from the
//! callers' text. Within a chunk a row's `prev_hash` is the row before's `hash`
//! parameter, and the actor, run and digest, when every row of the chunk has the same,
//! are bound once: each text bound is a copy SQLite makes. The committed groups go back
//! to their callers, whose tasks free them (not this serial thread). `BEGIN IMMEDIATE` and the busy
//! timeout serialize this connection with other processes as the sqlx one is, and the
//! writer task uses its sqlx connection only after a barrier, so the two never overlap.
//! In-memory stores (shared cache) keep the writer's sqlx path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Statement};
use slipway_engine::audit::{HASH_V2, hash_v2_hex};
use slipway_engine::store::StoreError;
use tokio::sync::oneshot;

use crate::chain::Ready;

const SWAP_SQL: &str = "UPDATE meta SET value = ?1 WHERE key = 'audit_head' AND value = ?2";

/// Rows of one multi-row INSERT, largest first: a transaction's entries go in as many of
/// the largest as fit, then the smaller ones (at most 3 of each smaller size).
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Most entries the committer puts in one transaction.
const MAX_ENTRIES: usize = 4096;

/// What a caller whose group was not committed gets: its records back to be committed the
/// ordinary way (the head had moved), or the error.
pub(crate) enum Outcome {
    /// Committed; the group comes back so that its caller, not the serial committer,
    /// frees its memory.
    Committed(Group),
    Redo(Vec<Ready>),
    Failed(StoreError),
}

/// A group of chain-only records numbered and hashed after a head: what one caller
/// queues (the committer commits several at once).
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// The head the group continues (seq, hash).
    pub old: (i64, String),
    /// The records, in chain order.
    pub readies: Vec<Ready>,
    /// `hashes[i]` is record i's entry hash; entry i links to `hashes[i - 1]`, the first
    /// to `old`'s hash.
    pub hashes: Vec<String>,
}

impl Group {
    /// Number and hash `readies` after `old`: the only serial work of an entry (its text
    /// was made by its caller).
    pub fn new(old: (i64, String), readies: Vec<Ready>) -> Self {
        let mut hashes: Vec<String> = Vec::with_capacity(readies.len());
        for r in &readies {
            let prev = hashes.last().unwrap_or(&old.1);
            let h = hash_v2_hex(prev, &r.text.canonical);
            hashes.push(h);
        }
        Self {
            old,
            readies,
            hashes,
        }
    }

    /// The head after the group.
    pub fn new_head(&self) -> (i64, String) {
        match self.hashes.last() {
            Some(h) => (self.old.0 + self.hashes.len() as i64, h.clone()),
            None => self.old.clone(),
        }
    }

    /// Whether the group starts at the head `before` leaves (groups queued one after
    /// another do).
    pub fn continues(&self, before: &Self) -> bool {
        self.old.0 == before.old.0 + before.hashes.len() as i64
            && self.old.1 == *before.hashes.last().unwrap_or(&before.old.1)
    }

    /// Entry `i`'s (seq, prev_hash, hash).
    pub fn link(&self, i: usize) -> (i64, &str, &str) {
        let prev = if i == 0 {
            &self.old.1
        } else {
            &self.hashes[i - 1]
        };
        (self.old.0 + 1 + i as i64, prev, &self.hashes[i])
    }
}

/// `seq:hash`, as `meta` records a head.
pub(crate) fn head_text(h: &(i64, String)) -> String {
    format!("{}:{}", h.0, h.1)
}

enum Job {
    Group(Group, oneshot::Sender<Outcome>),
    /// Answered once every job queued before it is finished (`true` when all of them
    /// were committed); clears a failure.
    Barrier(oneshot::Sender<bool>),
}

/// Shared by a store's handles, its writer task and its committer thread.
#[derive(Debug)]
pub(crate) struct Pipeline {
    state: Mutex<State>,
    /// The committer's queue; it ends when this goes (with the last handle on the store).
    jobs: Sender<Job>,
    /// Groups queued and not yet taken into a transaction.
    waiting: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct State {
    /// The head the last queued group leaves, when callers may queue onto it; `None`: the
    /// writer task takes every commit (the head is unknown, a commit failed, or the
    /// writer is using its own connection).
    head: Option<(i64, String)>,
}

impl Pipeline {
    /// Start the committer thread for the store file at `path`.
    pub fn start(path: &Path) -> Result<Arc<Self>, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let pipe = Arc::new(Self {
            state: Mutex::new(State::default()),
            jobs: tx,
            waiting: Arc::clone(&waiting),
        });
        let committer = Committer {
            path: path.to_owned(),
            pipe: Arc::downgrade(&pipe),
            waiting,
            broken: None,
            spare: Vec::new(),
        };
        std::thread::Builder::new()
            .name("slipway-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StoreError::Unavailable {
                location: format!("sqlite://{}", path.display()),
                message: format!("start the committer thread: {e}"),
            })?;
        Ok(pipe)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the head half-written (it is one
        // assignment), so the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a job for the committer; gives it back when the committer is gone.
    fn send(&self, job: Job) -> Result<(), Job> {
        self.jobs.send(job).map_err(|e| e.0)
    }

    /// Queue `readies` onto the head if callers may (the caller then awaits the answer);
    /// gives them back when the writer task must take them.
    pub fn enqueue(&self, readies: Vec<Ready>) -> Result<oneshot::Receiver<Outcome>, Vec<Ready>> {
        let mut st = self.state();
        let Some(head) = st.head.take() else {
            return Err(readies);
        };
        let group = Group::new(head, readies);
        let new_head = group.new_head();
        let (tx, rx) = oneshot::channel();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        match self.send(Job::Group(group, tx)) {
            Ok(()) => {
                st.head = Some(new_head);
                Ok(rx)
            }
            // The committer is gone: the writer task answers (the fast path stays shut).
            Err(job) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(match job {
                    Job::Group(g, _) => g.readies,
                    Job::Barrier(_) => Vec::new(),
                })
            }
        }
    }

    /// How many groups are queued and not yet taken into a transaction: the pipeline's
    /// depth behind the commit in progress.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Close the fast path and wait until every group queued so far is committed or
    /// refused: the writer task then owns the chain until [`Pipeline::reopen`]. Returns
    /// the head the queue left when every group in it was committed (`None` when one was
    /// not, or the head was unknown).
    pub async fn drain(&self) -> Option<(i64, String)> {
        let head = self.state().head.take();
        let (tx, rx) = oneshot::channel();
        if self.send(Job::Barrier(tx)).is_err() {
            return None;
        }
        match rx.await {
            Ok(true) => head,
            _ => None,
        }
    }

    /// Let callers queue again after `head` (the writer task's last commit).
    pub fn reopen(&self, head: Option<(i64, String)>) {
        self.state().head = head;
    }

    fn close(&self) {
        self.state().head = None;
    }
}

/// Why the groups queued behind a failed one are not committed.
enum Broken {
    /// The head had moved: nothing was written; they are redone the ordinary way.
    Moved,
    /// The commit failed with this error.
    Failed(String),
}

struct Committer {
    path: PathBuf,
    pipe: Weak<Pipeline>,
    waiting: Arc<AtomicUsize>,
    /// Groups queued behind a commit that failed are refused until a barrier.
    broken: Option<Broken>,
    /// The last batch's vector, emptied, for the next: a batch takes up to a few hundred
    /// groups, and a vector grown afresh each time cost this serial thread page faults
    /// (fresh memory the kernel zeroes) in the profile of the group-commit benchmark.
    spare: Vec<(Group, oneshot::Sender<Outcome>)>,
}

/// What the committer took from its queue in one go: consecutive groups, and the barrier
/// that ended the take, if one did.
struct Batch {
    groups: Vec<(Group, oneshot::Sender<Outcome>)>,
    barrier: Option<oneshot::Sender<bool>>,
}

impl Committer {
    /// Commit batches through one connection, and its prepared statements, for as long as
    /// it works; after an error the next batch opens another (the failed one is dropped
    /// with its transaction, which rolls it back).
    fn run(mut self, rx: Receiver<Job>) {
        loop {
            let Some(batch) = self.take(&rx) else {
                return;
            };
            if batch.groups.is_empty() || self.broken.is_some() {
                self.finish(batch, None);
                continue;
            }
            let conn = match open(&self.path) {
                Ok(c) => c,
                Err(e) => {
                    self.finish(batch, Some(Err(e)));
                    continue;
                }
            };
            let mut stmts = Stmts::new(&conn);
            let mut batch = batch;
            loop {
                let result = if batch.groups.is_empty() || self.broken.is_some() {
                    None
                } else {
                    Some(append(&mut stmts, &batch.groups).map_err(|e| {
                        format!("append to the audit chain of {}: {e}", self.path.display())
                    }))
                };
                let failed = matches!(result, Some(Err(_)));
                self.finish(batch, result);
                if failed {
                    // A new connection for the next commit.
                    break;
                }
                match self.take(&rx) {
                    Some(b) => batch = b,
                    None => return,
                }
            }
            drop(stmts);
            drop(conn);
        }
    }

    /// Wait for the next job, then take everything queued meanwhile (each group chains
    /// onto the one before) into the same transaction, up to a barrier. `None`: the queue
    /// ended (the store's last handle is gone).
    fn take(&mut self, rx: &Receiver<Job>) -> Option<Batch> {
        let mut batch = Batch {
            groups: std::mem::take(&mut self.spare),
            barrier: None,
        };
        let mut entries = 0usize;
        let mut job = Some(rx.recv().ok()?);
        while let Some(j) = job.take() {
            match j {
                Job::Group(g, tx) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    entries += g.readies.len();
                    batch.groups.push((g, tx));
                }
                Job::Barrier(tx) => {
                    batch.barrier = Some(tx);
                    break;
                }
            }
            if entries < MAX_ENTRIES {
                job = rx.try_recv().ok();
            }
        }
        Some(batch)
    }

    /// Answer a batch's callers: `result` is its commit's (`None`: not tried, because a
    /// commit it chains onto failed or it has no groups), then its barrier.
    fn finish(&mut self, batch: Batch, result: Option<Result<bool, String>>) {
        let Batch {
            mut groups,
            barrier,
        } = batch;
        match result {
            None => {
                if let Some(b) = &self.broken {
                    // They chain onto a group that was not committed.
                    refuse(b, true, &mut groups);
                }
            }
            Some(Ok(true)) => {
                for (g, tx) in groups.drain(..) {
                    let _ = tx.send(Outcome::Committed(g));
                }
            }
            Some(Ok(false)) => {
                self.close();
                refuse(&Broken::Moved, false, &mut groups);
                self.broken = Some(Broken::Moved);
            }
            Some(Err(e)) => {
                self.close();
                let b = Broken::Failed(e);
                refuse(&b, false, &mut groups);
                self.broken = Some(b);
            }
        }
        // Answered above (or, with nothing tried and nothing broken, none to answer).
        groups.clear();
        self.spare = groups;
        if let Some(tx) = barrier {
            // Every group queued before the barrier is finished; the writer task re-reads
            // the head before callers queue again.
            let _ = tx.send(self.broken.take().is_none());
        }
    }

    /// Callers queue nothing more until the writer task re-read the head.
    fn close(&self) {
        if let Some(p) = self.pipe.upgrade() {
            p.close();
        }
    }
}

/// Answer the callers of groups that were not committed: `behind`, they chain onto a
/// failed group (committed after it, they would make a chain that never was).
fn refuse(b: &Broken, behind: bool, groups: &mut Vec<(Group, oneshot::Sender<Outcome>)>) {
    for (g, tx) in groups.drain(..) {
        let _ = tx.send(match b {
            Broken::Moved => Outcome::Redo(g.readies),
            Broken::Failed(e) if behind => Outcome::Failed(StoreError::Query(format!(
                "not written: an earlier commit these records follow in the audit chain failed: {e}"
            ))),
            Broken::Failed(e) => Outcome::Failed(StoreError::Query(e.clone())),
        });
    }
}

fn open(path: &Path) -> Result<Connection, String> {
    let unavailable =
        |e: rusqlite::Error| format!("open the committer's connection to {}: {e}", path.display());
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    // The store's own settings (`SqliteStore::open`): WAL is recorded in the file, the
    // sync level and busy timeout are per connection.
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    Ok(conn)
}

/// The committer's statements, prepared once per connection (not per transaction):
/// `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` (rusqlite's `Transaction` prepares them
/// again each time: ~25k instructions a transaction), the head's compare-and-set and the
/// multi-row INSERTs, one per chunk size and shape.
struct Stmts<'c> {
    conn: &'c Connection,
    begin: Option<Statement<'c>>,
    commit: Option<Statement<'c>>,
    rollback: Option<Statement<'c>>,
    swap: Option<Statement<'c>>,
    /// Keyed by (rows, shared): `shared`, the rows of the chunk have one actor, run and
    /// digest, bound once.
    inserts: Vec<((usize, bool), Statement<'c>)>,
}

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            begin: None,
            commit: None,
            rollback: None,
            swap: None,
            inserts: Vec::new(),
        }
    }

    /// Run one of the kept statements without parameters.
    fn run(
        conn: &'c Connection,
        st: &mut Option<Statement<'c>>,
        sql: &str,
    ) -> rusqlite::Result<usize> {
        if st.is_none() {
            *st = Some(conn.prepare(sql)?);
        }
        // Set just above when it was not.
        st.as_mut()
            .ok_or(rusqlite::Error::InvalidQuery)?
            .raw_execute()
    }

    fn swap(&mut self) -> rusqlite::Result<&mut Statement<'c>> {
        if self.swap.is_none() {
            self.swap = Some(self.conn.prepare(SWAP_SQL)?);
        }
        // Set just above when it was not.
        self.swap.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }

    fn insert(&mut self, rows: usize, shared: bool) -> rusqlite::Result<&mut Statement<'c>> {
        let i = match self.inserts.iter().position(|(k, _)| *k == (rows, shared)) {
            Some(i) => i,
            None => {
                let st = self.conn.prepare(&insert_sql(rows, shared))?;
                self.inserts.push(((rows, shared), st));
                self.inserts.len() - 1
            }
        };
        Ok(&mut self.inserts[i].1)
    }
}

/// Parameters of a chunk's INSERT: `?1` is the first row's `prev_hash` (every later row's
/// is the row before's `hash` parameter, bound once); `shared`: `?2..?4` are the actor,
/// run and digest of every row, then 6 per row (seq, at, action, outcome, detail, hash);
/// otherwise 9 per row (seq, at, actor, action, run, digest, outcome, detail, hash) from
/// `?2`. The scheme `hv` is a literal (this writer hashes every entry under it).
fn insert_sql(rows: usize, shared: bool) -> String {
    let (first, per) = if shared { (5, 6) } else { (2, 9) };
    let mut sql = String::from(
        "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv) VALUES ",
    );
    for i in 0..rows {
        let p = first + i * per;
        let prev = if i == 0 { 1 } else { p - 1 };
        let row = if shared {
            format!(
                "(?{p}, ?{}, ?2, ?{}, ?3, ?4, ?{}, ?{}, ?{prev}, ?{}, {HASH_V2})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        } else {
            format!(
                "(?{p}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{prev}, ?{}, {HASH_V2})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8
            )
        };
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
    }
    sql
}

/// One entry to insert: its record and text, seq and hash.
type Row<'a> = (&'a Ready, i64, &'a str);

/// The transaction. An error leaves it open: the caller then drops the connection, which
/// rolls it back.
fn append(
    stmts: &mut Stmts<'_>,
    groups: &[(Group, oneshot::Sender<Outcome>)],
) -> rusqlite::Result<bool> {
    let (Some((first, _)), Some((last, _))) = (groups.first(), groups.last()) else {
        return Ok(true);
    };
    // Each group continues the one queued before it (`Pipeline::enqueue`): the chunks
    // below bind a row's `prev_hash` as the row before's `hash`.
    for w in groups.windows(2) {
        if !w[1].0.continues(&w[0].0) {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                "a queued group does not continue the one before it".into(),
            ));
        }
    }
    let conn = stmts.conn;
    Stmts::run(conn, &mut stmts.begin, "BEGIN IMMEDIATE")?;
    let (old, new) = (head_text(&first.old), head_text(&last.new_head()));
    if stmts.swap()?.execute([&new, &old])? != 1 {
        // Nothing written.
        Stmts::run(conn, &mut stmts.rollback, "ROLLBACK")?;
        return Ok(false);
    }
    let rows: Vec<Row<'_>> = groups
        .iter()
        .flat_map(|(g, _)| {
            g.readies.iter().enumerate().map(move |(i, r)| {
                let (seq, _, hash) = g.link(i);
                (r, seq, hash)
            })
        })
        .collect();
    let mut prev: &str = &first.old.1;
    let mut rest: &[Row<'_>] = &rows;
    while !rest.is_empty() {
        let n = CHUNKS
            .iter()
            .copied()
            .find(|n| *n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        insert_chunk(stmts, prev, chunk)?;
        if let Some((_, _, h)) = chunk.last() {
            prev = *h;
        }
        rest = tail;
    }
    Stmts::run(conn, &mut stmts.commit, "COMMIT")?;
    Ok(true)
}

/// Insert `chunk` (consecutive entries, the first linking to `prev`) in one statement.
fn insert_chunk(stmts: &mut Stmts<'_>, prev: &str, chunk: &[Row<'_>]) -> rusqlite::Result<()> {
    let Some((r0, _, _)) = chunk.first() else {
        return Ok(());
    };
    let (actor, run, digest) = (&r0.record.actor, &r0.record.run_id, &r0.record.digest);
    let shared = chunk.iter().all(|(r, _, _)| {
        r.record.actor == *actor && r.record.run_id == *run && r.record.digest == *digest
    });
    let st = stmts.insert(chunk.len(), shared)?;
    st.raw_bind_parameter(1, prev)?;
    let mut p = 2;
    if shared {
        st.raw_bind_parameter(2, actor)?;
        st.raw_bind_parameter(3, run)?;
        st.raw_bind_parameter(4, digest)?;
        p = 5;
    }
    for (r, seq, hash) in chunk {
        st.raw_bind_parameter(p, seq)?;
        st.raw_bind_parameter(p + 1, &r.text.at)?;
        p += 2;
        if !shared {
            st.raw_bind_parameter(p, &r.record.actor)?;
            p += 1;
        }
        st.raw_bind_parameter(p, r.record.event.name())?;
        p += 1;
        if !shared {
            st.raw_bind_parameter(p, &r.record.run_id)?;
            st.raw_bind_parameter(p + 1, &r.record.digest)?;
            p += 2;
        }
        st.raw_bind_parameter(p, &r.text.outcome)?;
        st.raw_bind_parameter(p + 1, &r.text.detail)?;
        st.raw_bind_parameter(p + 2, hash)?;
        p += 3;
    }
    st.raw_execute()?;
    Ok(())
}
