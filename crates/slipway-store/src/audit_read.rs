//! Reading and checking the audit chain of an SQLite store file for verification: row by
//! row on a reader thread through rusqlite, each row hashed right there from the column
//! values borrowed from SQLite's page cache and linked to the row before it
//! ([`slipway_engine::audit::SegmentBuilder`]). Nothing is framed into a buffer and parsed
//! again; what goes back to the verifier is the range's two ends and the few rows the
//! table projections fold. One reader thread per core, each with its own connection and
//! the range query prepared once, takes the ranges the verifier queues (several per core
//! at a time, its `reads`), so reading and hashing run on every core.
//!
//! Why a second driver: sqlx hands every row from its worker thread to the async side
//! (microseconds a row), so the sqlx path makes SQLite itself frame thousands of rows into
//! one string per query (`sqlite::FRAMED_SQL`), about 1 µs of SQLite's CPU per row, more
//! than hashing the row costs. Stepping the rows here costs a fraction of that. sqlx's raw
//! handle would need `unsafe` (forbidden in this workspace), so this is a connection of
//! its own, read-only, on the same bundled SQLite: rusqlite 0.39 links the
//! `libsqlite3-sys` 0.37 that sqlx 0.9 links (`links = "sqlite3"` allows one), and moves
//! with sqlx.
//!
//! Only file stores read this way; an in-memory store (shared cache, table locks) keeps
//! the sqlx path.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Statement};
use slipway_engine::audit::{Segment, SegmentBuilder};
use slipway_engine::store::StoreError;
use tokio::sync::oneshot;

/// The rows of one read, in rowid (= seq) order: a range of the INTEGER PRIMARY KEY is
/// visited in key order, so no sort; were it ever otherwise, the verifier's walk stops at
/// the first seq out of place and the exact classifier (ORDER BY seq) decides.
const ROWS_SQL: &str =
    "SELECT seq, hv, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash
    FROM audit WHERE seq > ?1 AND seq <= ?2";

/// Bytes of the store file a reader maps (`PRAGMA mmap_size`).
const MMAP_SIZE: i64 = 1 << 31;

/// One range to read and check, and where its segment goes.
struct Job {
    after: i64,
    upto: i64,
    keep_seqs: Vec<i64>,
    answer: oneshot::Sender<Result<Segment, StoreError>>,
}

/// The reader threads of one store file, started on first use: one per core, each with
/// its own read-only connection and the range query prepared once, taking ranges from one
/// queue in the order the verifier asks for them. A thread that finishes a range takes the
/// next queued one at once, without waiting for the verifier's task to be scheduled and
/// hand it another; preparing the query once per thread instead of once per range saves
/// about 40 µs a range (2.4 % of a 1M-entry verification's CPU samples under `perf`).
/// The threads end, closing their connections, once every handle on the store is gone.
#[derive(Debug, Clone)]
pub(crate) struct AuditReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The queue the threads take ranges from; `None` until the first read.
    jobs: Mutex<Option<Sender<Job>>>,
}

impl AuditReader {
    pub fn new(path: &Path) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                jobs: Mutex::new(None),
            }),
        }
    }

    /// The rows with `after < seq <= upto`, checked, keeping those at `keep_seqs`
    /// (sorted) besides the projected ones; read on one of the reader threads.
    pub async fn segment(
        &self,
        after: i64,
        upto: i64,
        keep_seqs: Vec<i64>,
    ) -> Result<Segment, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            after,
            upto,
            keep_seqs,
            answer,
        };
        let gone = || StoreError::Query("read the audit chain: the reader thread ended".into());
        {
            let mut jobs = self
                .inner
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let tx = match &mut *jobs {
                Some(tx) => tx,
                None => jobs.insert(self.inner.start()?),
            };
            tx.send(job).map_err(|_| gone())?;
        }
        answered.await.map_err(|_| gone())?
    }
}

impl Inner {
    /// Start the reader threads (one per core); the queue they take ranges from.
    fn start(&self) -> Result<Sender<Job>, StoreError> {
        let (tx, rx) = channel();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 16));
        for i in 0..threads {
            let (path, rx) = (self.path.clone(), Arc::clone(&rx));
            std::thread::Builder::new()
                .name(format!("slipway-audit-read-{i}"))
                .spawn(move || serve(&path, &rx))
                .map_err(|e| StoreError::Unavailable {
                    location: format!("sqlite://{}", self.path.display()),
                    message: format!("start a reader thread for the audit chain: {e}"),
                })?;
        }
        Ok(tx)
    }
}

/// The next queued range; `None` once the store is gone.
fn next(jobs: &Mutex<Receiver<Job>>) -> Option<Job> {
    jobs.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .recv()
        .ok()
}

/// One reader thread: open a connection, prepare the range query, answer ranges until the
/// queue closes. A connection that failed a read is dropped and the next range opens
/// another.
fn serve(path: &Path, jobs: &Mutex<Receiver<Job>>) {
    let mut job = next(jobs);
    while let Some(first) = job.take() {
        let conn = match open(path) {
            Ok(c) => c,
            Err(e) => {
                let _ = first.answer.send(Err(e));
                job = next(jobs);
                continue;
            }
        };
        let mut st = match conn.prepare(ROWS_SQL) {
            Ok(st) => st,
            Err(e) => {
                let err = read_error(path, &first, &e);
                let _ = first.answer.send(Err(err));
                job = next(jobs);
                continue;
            }
        };
        let mut current = first;
        loop {
            let mut seg = SegmentBuilder::new(&current.keep_seqs);
            let read = check_range(&mut st, current.after, current.upto, &mut seg);
            let failed = read.is_err();
            let result = match read {
                Ok(()) => Ok(seg.finish()),
                Err(e) => Err(read_error(path, &current, &e)),
            };
            // The verifier may have stopped waiting (it found a break): nothing to do.
            let _ = current.answer.send(result);
            match next(jobs) {
                Some(j) if !failed => current = j,
                Some(j) => {
                    job = Some(j);
                    break;
                }
                None => return,
            }
        }
    }
}

fn read_error(path: &Path, job: &Job, e: &rusqlite::Error) -> StoreError {
    StoreError::Query(format!(
        "read audit entries {}..={} of {}: {e}",
        job.after.saturating_add(1),
        job.upto,
        path.display()
    ))
}

/// A read-only connection on the store file, as the store's own connections wait for a
/// writer's checkpoint.
fn open(path: &Path) -> Result<Connection, StoreError> {
    let unavailable = |e: rusqlite::Error| StoreError::Unavailable {
        location: format!("sqlite://{}", path.display()),
        message: format!("open a reader for the audit chain: {e}"),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    // As the store's own connections: a writer's checkpoint may hold the file briefly.
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(unavailable)?;
    // Read pages through a memory map instead of a `pread` and a copy each: the chain
    // is read once, front to back, so the page cache only costs. SQLite caps the map
    // at its compile-time limit (2 GiB in the bundled build) and reads the rest as
    // before; the connection is read-only, so the map is never written.
    conn.pragma_update(None, "mmap_size", MMAP_SIZE)
        .map_err(unavailable)?;
    Ok(conn)
}

/// Feed the rows with `after < seq <= upto` to `seg`, until one is not accepted. A value
/// no writer stores (a NULL, a number where text belongs) breaks the segment there: the
/// verifier then asks the exact classifier, which names it.
fn check_range(
    st: &mut Statement<'_>,
    after: i64,
    upto: i64,
    seg: &mut SegmentBuilder<'_>,
) -> rusqlite::Result<()> {
    let mut rows = st.query([after, upto])?;
    while let Some(r) = rows.next()? {
        let int = |i: usize| match r.get_ref(i) {
            Ok(ValueRef::Integer(n)) => Some(n),
            _ => None,
        };
        let bytes = |i: usize| match r.get_ref(i) {
            // `concat` (the framed SQL path) reads a BLOB's bytes as text too.
            Ok(ValueRef::Text(b) | ValueRef::Blob(b)) => Some(b),
            _ => None,
        };
        let row = (|| {
            Some((
                int(0)?,
                int(1)?,
                [
                    bytes(2)?,
                    bytes(3)?,
                    bytes(4)?,
                    bytes(5)?,
                    bytes(6)?,
                    bytes(7)?,
                    bytes(8)?,
                ],
                bytes(9)?,
                bytes(10)?,
            ))
        })();
        let Some((seq, v, fields, prev, hash)) = row else {
            seg.unreadable();
            break;
        };
        if !seg.push(seq, v, fields, prev, hash) {
            break;
        }
    }
    Ok(())
}
