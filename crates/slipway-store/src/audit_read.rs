//! Reading the audit chain of an SQLite store file for verification, row by row on the
//! caller's thread through rusqlite, each column borrowed from SQLite's page cache and
//! copied once into the framed buffer (`slipway_engine::audit::parse_framed`).
//!
//! Why a second driver: sqlx hands every row from its worker thread to the async side
//! (microseconds a row), so the sqlx path makes SQLite itself frame thousands of rows into
//! one string per query (`sqlite::FRAMED_SQL`): `concat`, eleven integer-to-text
//! conversions, `group_concat`'s growing buffer and two more copies a row — about 1 µs of
//! SQLite's CPU per row, more than hashing the row costs. Stepping the rows here costs a
//! fraction of that. sqlx's raw handle would need `unsafe` (forbidden in this workspace),
//! so this is a connection of its own, read-only, on the same bundled SQLite: rusqlite 0.39
//! links the `libsqlite3-sys` 0.37 that sqlx 0.9 links (`links = "sqlite3"` allows one),
//! and moves with sqlx.
//!
//! Only file stores read this way; an in-memory store (shared cache, table locks) keeps
//! the sqlx path.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use slipway_engine::store::StoreError;

/// The rows of one read, in rowid (= seq) order: a range of the INTEGER PRIMARY KEY is
/// visited in key order, so no sort; were it ever otherwise, the verifier's walk stops at
/// the first seq out of place and the exact classifier (ORDER BY seq) decides.
const ROWS_SQL: &str =
    "SELECT seq, hv, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash
    FROM audit WHERE seq > ?1 AND seq <= ?2";

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

    /// The rows with `after < seq <= upto`, framed; runs on the blocking pool.
    pub async fn framed(&self, after: i64, upto: i64) -> Result<Vec<u8>, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.framed_blocking(after, upto))
            .await
            .map_err(|e| {
                StoreError::Query(format!("read the audit chain: the reader failed: {e}"))
            })?
    }

    fn framed_blocking(&self, after: i64, upto: i64) -> Result<Vec<u8>, StoreError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(c) => c,
            None => self.open()?,
        };
        let mut out = Vec::new();
        frame_range(&conn, after, upto, &mut out).map_err(|e| {
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
        Ok(out)
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
        Ok(conn)
    }
}

/// Append the rows with `after < seq <= upto` to `out`, framed. A value no writer
/// stores (a NULL, a number where text belongs) frames as a row [`parse_framed`] refuses,
/// and the rows stop there: the verifier then asks the exact classifier, which names it.
///
/// [`parse_framed`]: slipway_engine::audit::parse_framed
fn frame_range(
    conn: &Connection,
    after: i64,
    upto: i64,
    out: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    // Preparing costs microseconds against the hundreds a chunk of rows takes; a cache
    // would need rusqlite's `cache` feature and its dependencies.
    let mut st = conn.prepare(ROWS_SQL)?;
    let mut rows = st.query([after, upto])?;
    while let Some(r) = rows.next()? {
        let int = |i: usize| match r.get_ref(i) {
            Ok(ValueRef::Integer(n)) => Some(n),
            _ => None,
        };
        let bytes = |i: usize| match r.get_ref(i) {
            // `concat` (the SQL path) reads a BLOB's bytes as text too.
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
        match row {
            Some((seq, v, fields, prev, hash)) => {
                slipway_engine::audit::frame_row(seq, v, fields, prev, hash, out);
            }
            None => {
                // Not a number: `parse_framed` fails here.
                out.extend_from_slice(b"?");
                break;
            }
        }
    }
    Ok(())
}
