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
    /// Reader threads to start: one per core.
    threads: usize,
    /// The queue the threads take ranges from; `None` until the first read.
    jobs: Mutex<Option<Sender<Job>>>,
}

impl AuditReader {
    pub fn new(path: &Path) -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 16));
        Self::with_threads(path, threads)
    }

    /// A reader of `threads` threads (tests: one, so which connection reads is known).
    fn with_threads(path: &Path, threads: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                threads,
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
        for i in 0..self.threads {
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

#[cfg(test)]
mod tests {
    //! A reader thread whose read fails on a real store file (pages of the audit table
    //! corrupted in place under its open connection), with one thread so the connection
    //! that reads after the failure is known to be the one it opened again.

    use std::io::{Seek as _, SeekFrom, Write as _};

    use slipway_engine::event::EngineEvent;
    use slipway_engine::store::{JournalRecord, NewRun, Store as _};

    use super::*;

    fn record(n: i64, event: EngineEvent) -> JournalRecord {
        JournalRecord {
            run_id: "r1".into(),
            digest: "d1".into(),
            at: jiff::Timestamp::from_second(1_800_000_000 + n).unwrap(),
            actor: "op-test".into(),
            event,
        }
    }

    /// A store file with one run and `n` step events (`n + 1` audit entries), its
    /// writer closed and everything checkpointed into the file.
    async fn store_file(dir: &Path, n: i64) -> PathBuf {
        let path = dir.join("slipway.db");
        let store = crate::SqliteStore::open(&path).await.unwrap();
        store
            .create_run(
                NewRun {
                    id: "r1".into(),
                    plan_json: "{}".into(),
                    digest: "d1".into(),
                    release: "shop".into(),
                    version: "1.0.0".into(),
                    environment: "staging".into(),
                    author: "op-test".into(),
                    override_reason: None,
                    created_at: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
                    workdir: "/tmp".into(),
                },
                record(
                    0,
                    EngineEvent::RunCreated {
                        release: "shop".into(),
                        version: "1.0.0".into(),
                        environment: "staging".into(),
                        digest: "d1".into(),
                        override_freeze: None,
                        plan_sha256: None,
                        workdir: None,
                    },
                ),
            )
            .await
            .unwrap();
        for c in 0..n / 500 {
            let batch = (0..500)
                .map(|i| {
                    let k = c * 500 + i;
                    record(
                        k + 1,
                        EngineEvent::StepStarted {
                            step: format!("svc/s{k}"),
                            key: format!("k{k}"),
                            attempt: 1,
                        },
                    )
                })
                .collect();
            store.commit(batch).await.unwrap();
        }
        drop(store);
        // Every page in the file itself, none left in the WAL, so the pages changed below
        // are the ones read.
        let conn = Connection::open(&path).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0, "the checkpoint was blocked");
        path
    }

    /// The leaf pages of the audit table but its first and last, in key order: (page
    /// size, their page numbers).
    fn middle_leaves(path: &Path) -> (u64, Vec<u64>) {
        let conn = Connection::open(path).unwrap();
        let size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let mut st = conn
            .prepare(
                "SELECT pageno FROM dbstat WHERE name = 'audit' AND pagetype = 'leaf' ORDER BY path",
            )
            .unwrap();
        let pages: Vec<i64> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(pages.len() > 4, "{pages:?}");
        let u = |n: i64| u64::try_from(n).unwrap();
        (
            u(size),
            pages[1..pages.len() - 1].iter().map(|p| u(*p)).collect(),
        )
    }

    /// Set the first byte (the b-tree page type) of each page to `byte`; returns what
    /// each held. In place: the size of the file does not change (a file shrunk under a
    /// reader's memory map is another failure, SIGBUS, not a read error).
    fn set_page_type(path: &Path, size: u64, pages: &[u64], bytes: &[u8]) -> Vec<u8> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut was = Vec::new();
        for (p, b) in pages.iter().zip(bytes) {
            use std::io::Read as _;
            let at = (p - 1) * size;
            let mut old = [0u8];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut old).unwrap();
            was.push(old[0]);
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[*b]).unwrap();
        }
        f.sync_all().unwrap();
        was
    }

    async fn read(reader: &AuditReader, upto: i64) -> Result<Segment, StoreError> {
        tokio::time::timeout(Duration::from_secs(60), reader.segment(0, upto, Vec::new()))
            .await
            .expect("a failed read is answered, never left waiting")
    }

    #[tokio::test]
    async fn a_failed_read_names_the_store_and_the_connection_opened_again_reads_right() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_file(dir.path(), 3000).await;
        let reader = AuditReader::with_threads(&path, 1);
        let good = read(&reader, 3001).await.unwrap();
        assert!(good.ok && good.rows == 3001, "{good:?}");

        // Pages the open connection reads turn unreadable under it: the read fails,
        // naming the store file and the range, and is never a pass.
        let (size, pages) = middle_leaves(&path);
        let was = set_page_type(&path, size, &pages, &vec![0xff; pages.len()]);
        let err = read(&reader, 3001).await.unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("entries 1..=3001"),
            "{err}"
        );
        assert!(err.contains("malformed"), "{err}");

        // The pages back as they were: the thread's next read is on a connection it
        // opened again, and it reads the chain as before.
        set_page_type(&path, size, &pages, &was);
        let again = read(&reader, 3001).await.unwrap();
        assert_eq!(again, good);

        // And it judges an edit as the first connection would: the chain breaks there.
        let writer = Connection::open(&path).unwrap();
        writer
            .execute(
                "UPDATE audit SET actor = 'op-someone-else' WHERE seq = 1500",
                [],
            )
            .unwrap();
        let edited = read(&reader, 3001).await.unwrap();
        assert!(!edited.ok, "{edited:?}");
        assert_eq!(edited.rows, 1499, "{edited:?}");
    }
}
