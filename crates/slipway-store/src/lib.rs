//! Store implementations of `slipway_engine::Store`. For now the embedded default:
//! SQLite in WAL mode, one writer task per process with group commit, `busy_timeout` for
//! the other processes (a `slipway approve` beside a running `slipway deploy`).
//!
//! Selecting a store: [`resolve`] takes `--store` / `SLIPWAY_STORE` (`sqlite://PATH`) or
//! defaults to `.slipway/slipway.db` under the current directory.

pub mod access;
pub mod archive;
pub mod checklist;
mod leases;
pub mod schema;
pub mod sqlite;

use std::path::{Path, PathBuf};

use slipway_engine::StoreError;
pub use sqlite::SqliteStore;

/// The default store file, relative to the current directory.
pub const DEFAULT_PATH: &str = ".slipway/slipway.db";

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
}

/// Resolve `--store` (or `SLIPWAY_STORE`, given as `url`) against `cwd`.
///
/// Accepted: `sqlite://PATH` and `sqlite:PATH` (relative paths are relative to `cwd`;
/// `sqlite:///abs` is absolute). None: `cwd/.slipway/slipway.db`.
pub fn resolve(url: Option<&str>, cwd: &Path) -> Result<StoreLocation, StoreError> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(StoreLocation::Sqlite(cwd.join(DEFAULT_PATH)));
    };
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Unavailable {
            location: url.to_owned(),
            message: "unsupported store URL; use sqlite://PATH (e.g. sqlite://.slipway/slipway.db)"
                .into(),
        })?;
    if path.is_empty() {
        return Err(StoreError::Unavailable {
            location: url.to_owned(),
            message: "the URL names no file; use sqlite://PATH".into(),
        });
    }
    Ok(StoreLocation::Sqlite(cwd.join(path)))
}

/// Open the store at a location.
pub async fn open(loc: &StoreLocation) -> Result<SqliteStore, StoreError> {
    match loc {
        StoreLocation::Sqlite(p) => SqliteStore::open(p).await,
    }
}
