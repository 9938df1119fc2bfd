//! Environment leases in SQLite: one row per environment, changed only inside the
//! writer's `BEGIN IMMEDIATE` transaction, so the read-compare-write of a take-over is a
//! compare-and-swap even between processes (the transaction holds SQLite's write lock
//! from its first statement).
//!
//! Expiry is kept as integer milliseconds since the epoch so SQL and Rust compare the
//! same numbers; the caller's clock decides what "now" is.

use std::str::FromStr;

use jiff::Timestamp;
use slipway_engine::store::{LeaseOutcome, LeaseRecord, LeaseRequest, StoreError};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row, SqlitePool};

/// A lease operation the writer task runs inside its transaction.
pub(crate) enum LeaseOp {
    Acquire(LeaseRequest),
    Release {
        environment: String,
        holder: Option<String>,
    },
}

/// What a lease operation answered.
pub(crate) enum LeaseReply {
    Acquired(LeaseOutcome),
    Released(Option<LeaseRecord>),
}

fn query_err(e: sqlx::Error) -> StoreError {
    StoreError::Query(format!("use the lease table: {e}"))
}

fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_millis(ms: i64) -> Timestamp {
    // Every stored value came from `millis` of a valid timestamp; a hand-edited value out
    // of range reads as the epoch, i.e. long expired, which frees the environment rather
    // than locking it forever.
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

const COLS: &str = "environment, holder, release, acquired_at, expires_ms";

fn lease_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<LeaseRecord, StoreError> {
    let acquired: String = r.try_get("acquired_at").map_err(query_err)?;
    Ok(LeaseRecord {
        environment: r.try_get("environment").map_err(query_err)?,
        holder: r.try_get("holder").map_err(query_err)?,
        release: r.try_get("release").map_err(query_err)?,
        acquired_at: Timestamp::from_str(&acquired).unwrap_or(Timestamp::UNIX_EPOCH),
        expires_at: from_millis(r.try_get("expires_ms").map_err(query_err)?),
    })
}

async fn current(
    tx: &mut SqliteConnection,
    environment: &str,
) -> Result<Option<LeaseRecord>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM leases WHERE environment = ?1"
    )))
    .bind(environment)
    .fetch_optional(&mut *tx)
    .await
    .map_err(query_err)?;
    row.as_ref().map(lease_from_row).transpose()
}

/// Run one lease operation inside the writer's open transaction.
pub(crate) async fn apply(
    tx: &mut SqliteConnection,
    op: &LeaseOp,
) -> Result<LeaseReply, StoreError> {
    match op {
        LeaseOp::Acquire(req) => acquire(tx, req).await.map(LeaseReply::Acquired),
        LeaseOp::Release {
            environment,
            holder,
        } => {
            let Some(lease) = current(tx, environment).await? else {
                return Ok(LeaseReply::Released(None));
            };
            if holder.as_ref().is_some_and(|h| *h != lease.holder) {
                return Ok(LeaseReply::Released(None));
            }
            sqlx::query("DELETE FROM leases WHERE environment = ?1 AND holder = ?2")
                .bind(environment)
                .bind(&lease.holder)
                .execute(&mut *tx)
                .await
                .map_err(query_err)?;
            Ok(LeaseReply::Released(Some(lease)))
        }
    }
}

async fn acquire(
    tx: &mut SqliteConnection,
    req: &LeaseRequest,
) -> Result<LeaseOutcome, StoreError> {
    let ttl = i64::try_from(req.ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let now = millis(req.now);
    let expires = now.saturating_add(ttl);
    let existing = current(tx, &req.environment).await?;
    let (acquired_at, reclaimed) = match existing {
        // Our own lease: a renewal keeps the first acquisition time.
        Some(l) if l.holder == req.holder => (l.acquired_at, None),
        // Live and someone else's: refuse, naming it.
        Some(l) if millis(l.expires_at) > now => return Ok(LeaseOutcome::Held(l)),
        // Expired (its holder crashed or stopped renewing): take it over.
        Some(l) => (req.now, Some(l)),
        None => (req.now, None),
    };
    sqlx::query(
        "INSERT INTO leases (environment, holder, release, acquired_at, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(environment) DO UPDATE SET holder = excluded.holder,
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
    .map_err(query_err)?;
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

/// Every lease, by environment (a plain read; no transaction needed).
pub(crate) async fn all(pool: &SqlitePool) -> Result<Vec<LeaseRecord>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM leases ORDER BY environment"
    )))
    .fetch_all(pool)
    .await
    .map_err(query_err)?;
    rows.iter().map(lease_from_row).collect()
}
