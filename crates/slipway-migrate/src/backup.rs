//! Backups, stored content-addressed as `store_dir/sha256/<digest>` with metadata beside
//! them in `<digest>.json`, and restore.
//!
//! PostgreSQL: the real `pg_dump --format=custom` / `pg_restore --clean --if-exists
//! --single-transaction`, from `$SLIPWAY_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH` (pg_dump must be at least the server's major
//! version). The password goes through `PGPASSWORD`, never the command line. `--clean`
//! drops and recreates the objects in the dump; objects created after the backup (e.g. a
//! table added by a later migration) are not removed by it.
//! SQLite: `VACUUM INTO`, an online consistent copy; restore replaces the file atomically
//! (copy beside it, then rename), so connections to it must be closed first.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::now_rfc3339;
use crate::error::{Error, Result};
use crate::target::{Target, quote_literal, url_password, url_without_password};

/// What a backup file contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// `pg_dump --format=custom` archive.
    PostgresCustom,
    /// A complete SQLite database file.
    SqliteFile,
}

/// One stored backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    /// `sha256:<hex>`.
    pub digest: String,
    pub path: PathBuf,
    pub size: u64,
    pub kind: BackupKind,
    /// The source database (URL masked).
    pub source: String,
    pub created_at: String,
    pub duration_ms: u64,
}

/// Back up `url` into `store_dir`.
pub async fn backup(url: &str, store_dir: &Path) -> Result<Backup> {
    let target = Target::parse(url)?;
    let objects = store_dir.join("sha256");
    std::fs::create_dir_all(&objects).map_err(|source| Error::Io {
        what: "create the backup store".into(),
        path: objects.clone(),
        source,
    })?;
    let tmp = objects.join(format!(".tmp-{}-{}", std::process::id(), next()));
    let start = Instant::now();
    let made = match &target {
        Target::Postgres { url, .. } => {
            let mut cmd = pg_command("pg_dump", url);
            cmd.arg("--format=custom").arg("--file").arg(&tmp);
            let url = url.clone();
            run_tool("pg_dump", cmd, &url)
                .await
                .map(|()| BackupKind::PostgresCustom)
        }
        Target::Sqlite { .. } => {
            let mut conn = target.connect(false).await?;
            let sql = format!("VACUUM INTO {}", quote_literal(&tmp.to_string_lossy()));
            let r = conn.exec(&sql).await;
            conn.close().await;
            r.map(|_| BackupKind::SqliteFile)
                .map_err(|source| Error::Query {
                    what: "back up with VACUUM INTO".into(),
                    url: target.display(),
                    source,
                })
        }
    };
    let kind = match made {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (hex, size) = sha256_file(&tmp)?;
    let path = objects.join(&hex);
    std::fs::rename(&tmp, &path).map_err(|source| Error::Io {
        what: "store the backup".into(),
        path: path.clone(),
        source,
    })?;
    let b = Backup {
        digest: format!("sha256:{hex}"),
        path,
        size,
        kind,
        source: target.display(),
        created_at: now_rfc3339(),
        duration_ms,
    };
    let meta = objects.join(format!("{hex}.json"));
    let json = serde_json::to_vec_pretty(&b).unwrap_or_default();
    std::fs::write(&meta, json).map_err(|source| Error::Io {
        what: "write backup metadata".into(),
        path: meta,
        source,
    })?;
    Ok(b)
}

/// Find a stored backup by digest (`sha256:<hex>` or `<hex>`).
pub fn load(store_dir: &Path, digest: &str) -> Result<Backup> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Unsupported(format!(
            "find backup `{digest}`: a digest is sha256:<64 hex digits>"
        )));
    }
    let meta = store_dir.join("sha256").join(format!("{hex}.json"));
    let bytes = std::fs::read(&meta).map_err(|source| Error::Io {
        what: "read backup metadata".into(),
        path: meta.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Unsupported(format!("read backup metadata `{}`: {e}", meta.display())))
}

/// The newest backup in `store_dir` (by its recorded creation time), `None` when it holds
/// none. Metadata files that do not read are skipped: a backup without readable metadata
/// cannot be restored by digest either.
pub fn latest(store_dir: &Path) -> Result<Option<Backup>> {
    let objects = store_dir.join("sha256");
    let entries = match std::fs::read_dir(&objects) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                what: "read the backup store".into(),
                path: objects,
                source,
            });
        }
    };
    let mut newest: Option<(jiff::Timestamp, Backup)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(b) = load(store_dir, hex) else {
            continue;
        };
        let Ok(at) = b.created_at.parse::<jiff::Timestamp>() else {
            continue;
        };
        if newest.as_ref().is_none_or(|(n, _)| at > *n) {
            newest = Some((at, b));
        }
    }
    Ok(newest.map(|(_, b)| b))
}

/// Restore `backup` into `url`, after checking the file still matches its digest.
pub async fn restore(backup: &Backup, url: &str) -> Result<()> {
    let target = Target::parse(url)?;
    let (hex, _) = sha256_file(&backup.path)?;
    let actual = format!("sha256:{hex}");
    if actual != backup.digest {
        return Err(Error::BackupDigest {
            path: backup.path.clone(),
            expected: backup.digest.clone(),
            actual,
        });
    }
    match (&target, backup.kind) {
        (Target::Postgres { url, .. }, BackupKind::PostgresCustom) => {
            let mut cmd = pg_command("pg_restore", url);
            cmd.args([
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--exit-on-error",
                "--no-owner",
            ])
            .arg(&backup.path);
            let url = url.clone();
            run_tool("pg_restore", cmd, &url).await
        }
        (Target::Sqlite { path }, BackupKind::SqliteFile) => restore_file(&backup.path, path),
        _ => Err(Error::Unsupported(format!(
            "restore backup {}: a {:?} backup cannot be restored into `{}`",
            backup.digest,
            backup.kind,
            target.display()
        ))),
    }
}

fn restore_file(from: &Path, to: &Path) -> Result<()> {
    let io = |what: &str, path: &Path| {
        let what = what.to_owned();
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(format!(".restore-{}-{}", std::process::id(), next()));
    let tmp = PathBuf::from(tmp);
    std::fs::copy(from, &tmp).map_err(io("copy the backup", &tmp))?;
    // A WAL or shared-memory file of the old database would be applied to the restored one.
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = to.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove the old WAL", &p)(e)),
        }
    }
    std::fs::rename(&tmp, to).map_err(io("replace the database file", to))
}

fn next() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let io = |source| Error::Io {
        what: "hash the backup".into(),
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The directory of the PostgreSQL client binaries.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SLIPWAY_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_dump").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

pub(crate) fn pg_command(tool: &str, url: &str) -> Command {
    let program = pg_bin_dir().map_or_else(|| PathBuf::from(tool), |d| d.join(tool));
    let mut cmd = slipway_stdx::command(program);
    cmd.arg("--no-password")
        .arg("--dbname")
        .arg(url_without_password(url))
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(pw) = url_password(url) {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}

/// Run a client tool off the async threads; its stderr (which never contains the password)
/// becomes the error.
pub(crate) async fn run_tool(tool: &str, mut cmd: Command, url: &str) -> Result<()> {
    let fail = |reason: String| Error::Tool {
        tool: tool.to_owned(),
        reason,
    };
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| {
            fail(format!(
                "{e}; install the PostgreSQL client (apt-get install postgresql-client) or set SLIPWAY_PG_BIN"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{} on `{}`: {}",
            out.status,
            crate::target::mask_url(url),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
