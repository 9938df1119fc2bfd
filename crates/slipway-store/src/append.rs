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
use slipway_engine::audit::{HASH_V2, hash_v2_hex};
use slipway_engine::store::StoreError;

use crate::chain::Ready;

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

    /// Append `group` in one transaction. `Ok(true)`: committed; `Ok(false)`: another
    /// writer had moved the head, nothing was written; an error: nothing was written either
    /// (the transaction rolled back). The group comes back either way (its records go the
    /// ordinary way when this did not commit them).
    pub async fn commit(&mut self, group: Group) -> (Group, Result<bool, StoreError>) {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => match open(&self.path) {
                Ok(c) => c,
                Err(e) => return (group, Err(e)),
            },
        };
        let joined = tokio::task::spawn_blocking(move || {
            let done = append(&conn, &group);
            (conn, group, done)
        })
        .await;
        let (conn, group, done) = match joined {
            Ok(j) => j,
            // The closure does not panic (rusqlite reports errors), so this is a runtime
            // shutting down; the group went with the task, and its callers with it.
            Err(e) => {
                return (
                    Group::default(),
                    Err(StoreError::Query(format!(
                        "append to the audit chain: the task failed: {e}"
                    ))),
                );
            }
        };
        match done {
            Ok(swapped) => {
                self.conn = Some(conn);
                (group, Ok(swapped))
            }
            // The connection is dropped with its transaction, which rolls it back.
            Err(e) => {
                let e = StoreError::Query(format!(
                    "append to the audit chain of {}: {e}",
                    self.path.display()
                ));
                (group, Err(e))
            }
        }
    }
}

/// A group of chain-only records (step events and the like) numbered and hashed after a
/// head: what one transaction appends.
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

    /// The head after the group, as `meta` records it (`seq:hash`).
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
fn append(conn: &Connection, group: &Group) -> rusqlite::Result<bool> {
    let tx = conn_tx(conn)?;
    let (old, new) = (head_text(&group.old), head_text(&group.new_head()));
    if tx.prepare(SWAP_SQL)?.execute([&new, &old])? != 1 {
        return Ok(false);
    }
    {
        let mut ins = tx.prepare(INSERT_SQL)?;
        for (i, r) in group.readies.iter().enumerate() {
            let (seq, prev, hash) = group.link(i);
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
    tx.commit()?;
    Ok(true)
}

fn conn_tx(conn: &Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}
