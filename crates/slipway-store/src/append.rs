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
//! (a copy and an allocation each) and hands the call to its worker thread; here the two
//! statements are prepared once per transaction and the insert is stepped once per entry,
//! its values bound straight from the callers' text. `BEGIN IMMEDIATE` and the busy
//! timeout serialize this connection with other processes as the sqlx one is, and the
//! writer task uses its sqlx connection only after a barrier, so the two never overlap.
//! In-memory stores (shared cache) keep the writer's sqlx path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use slipway_engine::audit::{HASH_V2, hash_v2_hex};
use slipway_engine::store::StoreError;
use tokio::sync::oneshot;

use crate::chain::Ready;

const SWAP_SQL: &str = "UPDATE meta SET value = ?1 WHERE key = 'audit_head' AND value = ?2";
const INSERT_SQL: &str = "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Most entries the committer puts in one transaction.
const MAX_ENTRIES: usize = 4096;

/// What a caller whose group was not committed gets: its records back to be committed the
/// ordinary way (the head had moved), or the error.
pub(crate) enum Outcome {
    Committed,
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
            conn: None,
            pipe: Arc::downgrade(&pipe),
            waiting,
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
    /// Opened on first use, dropped after any error (the next commit opens another).
    conn: Option<Connection>,
    pipe: Weak<Pipeline>,
    waiting: Arc<AtomicUsize>,
}

impl Committer {
    fn run(mut self, rx: Receiver<Job>) {
        let mut broken: Option<Broken> = None;
        let mut barrier: Option<oneshot::Sender<bool>> = None;
        while let Ok(first) = rx.recv() {
            let mut groups = Vec::new();
            match first {
                Job::Group(g, tx) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    groups.push((g, tx));
                }
                Job::Barrier(tx) => barrier = Some(tx),
            }
            // Everything queued meanwhile (each group chains onto the one before) goes
            // into the same transaction, up to a barrier.
            let mut entries: usize = groups.iter().map(|(g, _)| g.readies.len()).sum();
            while barrier.is_none() && entries < MAX_ENTRIES {
                match rx.try_recv() {
                    Ok(Job::Group(g, tx)) => {
                        self.waiting.fetch_sub(1, Ordering::Relaxed);
                        entries += g.readies.len();
                        groups.push((g, tx));
                    }
                    Ok(Job::Barrier(tx)) => barrier = Some(tx),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !groups.is_empty() {
                if let Some(b) = &broken {
                    // They chain onto a group that was not committed.
                    refuse(b, true, groups);
                } else {
                    match self.commit(&groups) {
                        Ok(true) => {
                            // Everyone hears back before the groups' memory is freed.
                            let mut done = Vec::with_capacity(groups.len());
                            for (g, tx) in groups {
                                let _ = tx.send(Outcome::Committed);
                                done.push(g);
                            }
                            drop(done);
                        }
                        Ok(false) => {
                            self.close();
                            refuse(&Broken::Moved, false, groups);
                            broken = Some(Broken::Moved);
                        }
                        Err(e) => {
                            self.close();
                            let b = Broken::Failed(e);
                            refuse(&b, false, groups);
                            broken = Some(b);
                        }
                    }
                }
            }
            if let Some(tx) = barrier.take() {
                // Every group queued before the barrier is finished; the writer task
                // re-reads the head before callers queue again.
                let _ = tx.send(broken.take().is_none());
            }
        }
    }

    /// Callers queue nothing more until the writer task re-read the head.
    fn close(&self) {
        if let Some(p) = self.pipe.upgrade() {
            p.close();
        }
    }

    /// Commit `groups` (consecutive: each continues the one before) in one transaction.
    /// `Ok(false)`: the head in `meta` was not the first group's, nothing written.
    fn commit(&mut self, groups: &[(Group, oneshot::Sender<Outcome>)]) -> Result<bool, String> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => open(&self.path)?,
        };
        match append(&conn, groups) {
            Ok(swapped) => {
                self.conn = Some(conn);
                Ok(swapped)
            }
            // The connection is dropped with its transaction, which rolls it back.
            Err(e) => Err(format!(
                "append to the audit chain of {}: {e}",
                self.path.display()
            )),
        }
    }
}

/// Answer the callers of groups that were not committed: `behind`, they chain onto a
/// failed group (committed after it, they would make a chain that never was).
fn refuse(b: &Broken, behind: bool, groups: Vec<(Group, oneshot::Sender<Outcome>)>) {
    for (g, tx) in groups {
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

/// The transaction; dropping it uncommitted (an early return) rolls it back.
fn append(
    conn: &Connection,
    groups: &[(Group, oneshot::Sender<Outcome>)],
) -> rusqlite::Result<bool> {
    let (Some((first, _)), Some((last, _))) = (groups.first(), groups.last()) else {
        return Ok(true);
    };
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let (old, new) = (head_text(&first.old), head_text(&last.new_head()));
    if tx.prepare(SWAP_SQL)?.execute([&new, &old])? != 1 {
        return Ok(false);
    }
    {
        let mut ins = tx.prepare(INSERT_SQL)?;
        for (g, _) in groups {
            for (i, r) in g.readies.iter().enumerate() {
                let (seq, prev, hash) = g.link(i);
                ins.execute(rusqlite::params![
                    seq,
                    r.text.at,
                    r.record.actor,
                    r.record.event.name(),
                    r.record.run_id,
                    r.record.digest,
                    r.text.outcome,
                    r.text.detail,
                    prev,
                    hash,
                    i64::from(HASH_V2),
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(true)
}
