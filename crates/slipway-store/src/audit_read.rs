//! Reading and checking the audit chain of an SQLite store file for verification: row by
//! row on a blocking thread through rusqlite, each row hashed right there from the column
//! values borrowed from SQLite's page cache and linked to the row before it
//! ([`slipway_engine::audit::SegmentBuilder`]). Nothing is framed into a buffer and parsed
//! again; what goes back to the verifier is the range's two ends and the few rows the
//! table projections fold. One range per core at a time (the verifier's `reads`), each on
//! its own connection, so reading and hashing run on every core.
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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use slipway_engine::audit::{Segment, SegmentBuilder};
use slipway_engine::store::StoreError;

/// The rows of one read, in rowid (= seq) order: a range of the INTEGER PRIMARY KEY is
/// visited in key order, so no sort; were it ever otherwise, the verifier's walk stops at
/// the first seq out of place and the exact classifier (ORDER BY seq) decides.
const ROWS_SQL: &str =
    "SELECT seq, hv, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash
    FROM audit WHERE seq > ?1 AND seq <= ?2";

/// Bytes of the store file a reader maps (`PRAGMA mmap_size`).
const MMAP_SIZE: i64 = 1 << 31;

/// Read-only connections on one store file, opened on first use and reused (opening one
/// reads the schema: tens of microseconds, as much as a chunk's rows).
#[derive(Debug, Clone)]
pub(crate) struct AuditReader {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl AuditReader {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Arc::default(),
        }
    }

    /// The rows with `after < seq <= upto`, checked, keeping those at `keep_seqs`
    /// (sorted) besides the projected ones; runs on the blocking pool.
    pub async fn segment(
        &self,
        after: i64,
        upto: i64,
        keep_seqs: Vec<i64>,
    ) -> Result<Segment, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.segment_blocking(after, upto, &keep_seqs))
            .await
            .map_err(|e| {
                StoreError::Query(format!("read the audit chain: the reader failed: {e}"))
            })?
    }

    fn segment_blocking(
        &self,
        after: i64,
        upto: i64,
        keep_seqs: &[i64],
    ) -> Result<Segment, StoreError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(c) => c,
            None => self.open()?,
        };
        let mut seg = SegmentBuilder::new(keep_seqs);
        check_range(&conn, after, upto, &mut seg).map_err(|e| {
            StoreError::Query(format!(
                "read audit entries {}..={upto} of {}: {e}",
                after.saturating_add(1),
                self.path.display()
            ))
        })?;
        // A connection that failed is dropped above, not pooled.
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        Ok(seg.finish())
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let unavailable = |e: rusqlite::Error| StoreError::Unavailable {
            location: format!("sqlite://{}", self.path.display()),
            message: format!("open a reader for the audit chain: {e}"),
        };
        let conn = Connection::open_with_flags(
            &self.path,
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
}

/// Feed the rows with `after < seq <= upto` to `seg`, until one is not accepted. A value
/// no writer stores (a NULL, a number where text belongs) breaks the segment there: the
/// verifier then asks the exact classifier, which names it.
fn check_range(
    conn: &Connection,
    after: i64,
    upto: i64,
    seg: &mut SegmentBuilder<'_>,
) -> rusqlite::Result<()> {
    // Preparing costs microseconds against the milliseconds a range of rows takes; a
    // cache would need rusqlite's `cache` feature and its dependencies.
    let mut st = conn.prepare(ROWS_SQL)?;
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
