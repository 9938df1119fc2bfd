//! The SQLite writer's commit of a chain-only group (step events and the like) after the
//! head it kept, through a rusqlite connection of its own on the blocking pool.
//!
//! Why not through sqlx as the other writes: sqlx binds every value into an argument list
//! of its own (a copy and an allocation each) and hands the call to its worker thread, and
//! a group of N entries was one multi-row `INSERT` whose text depends on N, so SQLite
//! parsed and planned a statement of up to 80 rows × 11 parameters for almost every group
//! (the statement cache only helps when the text repeats). Here the two statements are
//! prepared once per group and the insert is stepped once per entry, its values bound
//! straight from the entries. The transaction is the one `commit_fast` ran: `BEGIN
//! IMMEDIATE`, a compare-and-set of the head in `meta` (every chain writer, archive
//! included, records the head there in the transaction that appends), the inserts only if
//! it swapped, `COMMIT` — on the same file, WAL and `synchronous=FULL`, so a caller still
//! returns only once its records are durable.
//!
//! The connection is the writer's alone and only ever used between two of its sqlx
//! transactions, so the two never wait for each other; `BEGIN IMMEDIATE` and the busy
//! timeout serialize it with other processes as the sqlx connection is. In-memory stores
//! (shared cache) keep the sqlx path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use slipway_engine::audit::AuditEntry;
use slipway_engine::store::StoreError;

const SWAP_SQL: &str = "UPDATE meta SET value = ?1 WHERE key = 'audit_head' AND value = ?2";
const INSERT_SQL: &str = "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// The writer's rusqlite connection on one store file, opened on first use and dropped
/// after any error (the next group opens another).
#[derive(Debug)]
pub(crate) struct Appends {
    path: PathBuf,
    conn: Option<Connection>,
}

impl Appends {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            conn: None,
        }
    }

    /// Append `entries` (numbered and hashed after `old_head`, ending at `new_head`, both
    /// as `meta` records them: `seq:hash`) in one transaction. `Ok(true)`: committed;
    /// `Ok(false)`: another writer had moved the head, nothing was written; an error:
    /// nothing was written either (the transaction rolled back).
    pub async fn commit(
        &mut self,
        old_head: String,
        new_head: String,
        entries: Vec<AuditEntry>,
    ) -> Result<bool, StoreError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let path = self.path.clone();
        let (conn, done) = tokio::task::spawn_blocking(move || {
            let done = append(&conn, &old_head, &new_head, &entries);
            (conn, done)
        })
        .await
        .map_err(|e| {
            StoreError::Query(format!("append to the audit chain: the task failed: {e}"))
        })?;
        match done {
            Ok(swapped) => {
                self.conn = Some(conn);
                Ok(swapped)
            }
            // The connection is dropped with its transaction, which rolls it back.
            Err(e) => Err(StoreError::Query(format!(
                "append to the audit chain of {}: {e}",
                path.display()
            ))),
        }
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let unavailable = |e: rusqlite::Error| StoreError::Unavailable {
        location: format!("sqlite://{}", path.display()),
        message: format!("open the writer's connection: {e}"),
    };
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
    old_head: &str,
    new_head: &str,
    entries: &[AuditEntry],
) -> rusqlite::Result<bool> {
    let tx = conn_tx(conn)?;
    if tx.prepare(SWAP_SQL)?.execute([new_head, old_head])? != 1 {
        return Ok(false);
    }
    {
        let mut ins = tx.prepare(INSERT_SQL)?;
        for e in entries {
            ins.execute(rusqlite::params![
                e.seq,
                e.at,
                e.actor,
                e.action,
                e.run_id,
                e.digest,
                e.outcome,
                e.detail,
                e.prev_hash,
                e.hash,
                i64::from(e.v),
            ])?;
        }
    }
    tx.commit()?;
    Ok(true)
}

fn conn_tx(conn: &Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}
