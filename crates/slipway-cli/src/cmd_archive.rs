//! `slipway archive` and `slipway retention`: move closed runs (with their journal, steps,
//! approvals, check results and run files) and the old prefix of the audit chain out of
//! the live store into a compressed, digested, minisign-signed bundle, leaving a
//! checkpoint so the live chain still verifies alone, and with the bundles
//! (`slipway audit verify --archive BUNDLE --pubkey KEY.pub`).
//!
//! Order of effects, so a crash loses nothing: the live chain is verified first (a broken
//! chain is never archived); the bundle and its signature are written to temporary files,
//! fsynced, renamed into place and the directory fsynced; only then does one transaction
//! remove the records and record the checkpoint. A crash before the prune leaves the
//! records live and a bundle no checkpoint names; running the archive again rebuilds the
//! identical bundle (it holds no time of its own) and prunes. `SLIPWAY_FAULT=
//! archive-before-prune` aborts the process at that point; the tests use it to prove this.
//!
//! The prune's transaction also writes one summary per archived run (what the reports
//! count: release, environment, outcome, start and end), so `slipway report dora` gives
//! the same figures before and after an archive. `SLIPWAY_FAULT=archive-inside-prune`
//! aborts inside that transaction, after the summaries and deletes, before the commit.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::json;
use slipway_engine::audit;
use slipway_engine::store::Store;
use slipway_govern::access::Role;
use slipway_govern::archive::{self as garchive, KINDS, RetentionPolicy};
use slipway_model::exit;
use slipway_package as pkg;
use slipway_store::archive::{ArchiveDb, PolicyRow};

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// `slipway archive`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway archive --before 2026-01-01 --key archive.key\n  slipway audit verify --archive .slipway/archive/slipway-archive-*.tar.zst --pubkey archive.pub"
)]
pub struct ArchiveArgs {
    /// Archive closed runs last changed before this date (YYYY-MM-DD or RFC 3339), and
    /// audit entries older than it; the retention policy's live periods hold back anything
    /// younger (see `slipway retention show`).
    #[arg(long)]
    pub before: String,
    /// Directory for the bundle (default: `archive/` beside the store file).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The minisign secret key that signs the bundle (`slipway key generate`).
    #[arg(long, short = 's')]
    pub key: PathBuf,
    /// Name of an environment variable holding the secret key's password.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Show what would be archived; write and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway retention …`.
#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Show the retention policy per record kind.
    Show(RetentionShowArgs),
    /// Set one kind's live and keep periods (admin; audited).
    #[command(
        after_help = "Examples:\n  slipway retention set runs --live 90d --keep 7y\n  slipway retention set audit --live 1y --keep 7y"
    )]
    Set(RetentionSetArgs),
}

/// `slipway retention show`.
#[derive(Debug, clap::Args)]
pub struct RetentionShowArgs {
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway retention set`.
#[derive(Debug, clap::Args)]
pub struct RetentionSetArgs {
    /// runs, journal, approvals, checks or audit.
    #[arg(value_parser = ["runs", "journal", "approvals", "checks", "audit"])]
    pub kind: String,
    /// Least time records stay in the live store (e.g. 90d, 12w, 1y; 0d: no minimum).
    #[arg(long)]
    pub live: String,
    /// Time records must be kept in all, live or archived (e.g. 7y).
    #[arg(long)]
    pub keep: String,
    #[command(flatten)]
    pub store: StoreArg,
}

fn archive_error(e: garchive::ArchiveError) -> CliError {
    match e {
        garchive::ArchiveError::BadPolicy { .. } => CliError::input(
            format!("failed to {e}"),
            "write periods like 90d, 12w or 7y",
        ),
        garchive::ArchiveError::Tampered(_) | garchive::ArchiveError::Unreadable(_) => {
            CliError::new(
                exit::TAMPERED,
                format!("failed to {e}"),
                Some(
                    "the bundle was altered or is not a slipway archive; keep the original".into(),
                ),
            )
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> CliError {
    CliError::new(
        exit::FAILURE,
        format!("failed to {what} {}: {e}", path.display()),
        Some("check the directory exists and is writable".into()),
    )
}

/// Write `bytes` to `path` durably: a temporary file in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced so the rename itself survives a crash.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| io_error("create a file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| io_error("write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_error("fsync", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| io_error("write", path, e.error))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), CliError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync directory", dir, e))
}

/// Files a run left beside the store (version lock, infrastructure digests), as
/// `files/RUN/NAME`.
fn run_files(store_dir: &Path, run: &str) -> Result<Vec<(String, Vec<u8>)>, CliError> {
    let dir = store_dir.join("runs").join(run);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() {
            let b = std::fs::read(&p).map_err(|e| io_error("read", &p, e))?;
            out.push((
                format!("files/{run}/{}", e.file_name().to_string_lossy()),
                b,
            ));
        }
    }
    Ok(out)
}

async fn policy_of(db: &ArchiveDb) -> Result<RetentionPolicy, CliError> {
    Ok(RetentionPolicy::from_rows(
        &db.policy().await.map_err(CliError::from)?,
    ))
}

/// Run `slipway archive`.
pub fn archive(a: ArchiveArgs, out: &Output) -> Result<i32, CliError> {
    let before = slipway_govern::parse_when(&a.before)
        .map_err(|e| CliError::input(format!("failed to {e}"), "e.g. --before 2026-01-01"))?;
    let rt = runtime()?;
    rt.block_on(async {
        let session = crate::cli_util::read_session(&a.store).await?;
        let store = session.store.clone();
        crate::cli_util::enforce(&session, Role::Admin, "archive records", "*").await?;
        let db = ArchiveDb::for_store(&store);
        // A chain that does not verify is evidence of tampering: moving it into a signed
        // bundle would launder it.
        let start = store.audit_start().await.map_err(CliError::from)?;
        let head = store.audit_head().await.map_err(CliError::from)?;
        let live = store.audit_entries().await.map_err(CliError::from)?;
        if let Err(b) = audit::verify_from(
            &live,
            (start.0, start.1.as_str()),
            head.as_ref().map(|(s, h)| (*s, h.as_str())),
        ) {
            return Err(CliError::new(
                exit::TAMPERED,
                format!("failed to archive: the live audit chain does not verify: {b}"),
                Some("investigate with `slipway audit verify`; nothing was archived".into()),
            ));
        }
        let policy = policy_of(&db).await?;
        let now = slipway_stdx::now();
        let (runs_before, audit_before) = policy.cutoffs(now, before);
        let sel = db
            .select(runs_before, audit_before)
            .await
            .map_err(CliError::from)?;
        let ids = sel.run_ids();
        let (end_seq, _) = sel.end();
        if sel.is_empty() {
            if out.json() {
                out.json_value(&json!({"archived": false, "runs": [], "audit_entries": 0,
                    "runs_before": runs_before.to_string(), "audit_before": audit_before.to_string()}));
            } else {
                out.line(&format!(
                    "nothing to archive: no closed run before {runs_before} and no audit entry before {audit_before} (retention: `slipway retention show`)"
                ));
            }
            return Ok(exit::SUCCESS);
        }
        // Files runs left (an SQLite store's directory; `.slipway/` where a PostgreSQL
        // store's runs were driven from here).
        let store_dir = session.layout.dir().to_owned();
        let mut extra = Vec::new();
        for id in &ids {
            extra.extend(run_files(&store_dir, id)?);
        }
        let (bytes, manifest) =
            garchive::build_bundle(&sel, &extra, &before.to_string(), &policy)
                .map_err(archive_error)?;
        let digest = garchive::bundle_digest(&bytes);
        let dir = a.out.clone().unwrap_or_else(|| store_dir.join("archive"));
        let name = format!("slipway-archive-{}.tar.zst", &digest[..16]);
        let path = dir.join(&name);
        if a.dry_run {
            if out.json() {
                out.json_value(&json!({"archived": false, "dry_run": true, "runs": ids,
                    "audit_entries": sel.audit.len(), "chain_end": end_seq, "bundle": path}));
            } else {
                out.line(&format!(
                    "would archive {} run(s) and audit entries {}..={} into {}",
                    ids.len(),
                    sel.start.0 + 1,
                    end_seq,
                    path.display()
                ));
            }
            return Ok(exit::SUCCESS);
        }
        let pw = crate::cli_util::password_from_env(a.password_env.as_deref())?;
        let sk = pkg::SecretKey::from_file(&a.key, pw.as_deref())
            .map_err(|e| crate::cli_util::package_error(&e))?;
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        write_durable(&path, &bytes)?;
        let sig = pkg::sign::signature_path(&path);
        // The trusted comment binds the digest the checkpoint records; it holds no time, so
        // a re-run signs identically.
        pkg::sign::sign_to(&path, &sk, &format!("slipway-archive sha256:{digest}"), &sig)
            .map_err(|e| crate::cli_util::package_error(&e))?;
        File::open(&sig)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("fsync", &sig, e))?;
        sync_dir(&dir)?;
        // The summaries the reports count archived runs by, pruned with the runs in one
        // transaction. Closed runs do not change, so reading them after the selection's
        // snapshot reads the same records (the prune re-checks they are still closed).
        let keep_until = manifest
            .keep_until
            .get("runs")
            .and_then(|t| t.parse::<Timestamp>().ok());
        let mut summaries = Vec::with_capacity(ids.len());
        for id in &ids {
            let run = slipway_govern::RunHistory::load(store.as_ref(), id)
                .await
                .map_err(CliError::from)?;
            summaries.push(slipway_govern::history::summarize(&run, keep_until));
        }
        if std::env::var("SLIPWAY_FAULT").as_deref() == Ok("archive-before-prune") {
            // Test hook (see the module doc): die as a crash would, before the prune.
            std::process::abort();
        }
        let actor = session.actor_id().await?;
        // The prune appends the `archived` chain entry itself, in its transaction.
        let cp = db
            .prune(&sel, &summaries, &digest, &name, &before.to_string(), now, &actor)
            .await
            .map_err(CliError::from)?;
        // The live chain now starts at the checkpoint: sign that (with the archive's key),
        // so `audit verify --pubkey` can tell this start from a forged one.
        if let Some((seq, hash)) = store.audit_head().await.map_err(CliError::from)? {
            let payload = slipway_engine::evidence::AnchorPayload {
                seq,
                hash,
                entries: seq - cp.end_seq,
                start_seq: cp.end_seq,
                start_hash: cp.end_hash.clone(),
                at: now.to_string(),
            };
            crate::audit_view::sign_anchor(store.as_ref(), &sk, &payload).await?;
        }
        for id in &ids {
            // Best effort: the records are in the bundle and gone from the store; a left
            // directory only costs space.
            let _ = std::fs::remove_dir_all(store_dir.join("runs").join(id));
        }
        if out.json() {
            out.json_value(&json!({"archived": true, "bundle": path, "signature": sig,
                "sha256": digest, "runs": ids, "summaries": summaries.len(), "audit_entries": sel.audit.len(),
                "checkpoint": cp, "keep_until": manifest.keep_until}));
        } else {
            out.line(&format!(
                "archived {} run(s) and audit entries {}..={} into {}",
                ids.len(),
                cp.start_seq + 1,
                cp.end_seq,
                path.display()
            ));
            out.line(&format!("  sha256 {digest}, signed with key {} ({})", sk.key_id(), sig.display()));
            out.line(&format!(
                "  checkpoint: the live chain now starts after entry {} ({})",
                cp.end_seq, cp.end_hash
            ));
            out.line(&format!(
                "  {} run summar{} kept in the store for the reports",
                summaries.len(),
                if summaries.len() == 1 { "y" } else { "ies" }
            ));
        }
        Ok(exit::SUCCESS)
    })
}

/// Run `slipway retention …`.
///
/// Through a server (`--server`): `GET /api/v1/retention` and `POST
/// /api/v1/retention/{kind}` (admin on `*`, as on a store).
pub fn retention(c: RetentionCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let remote = crate::cli_util::remote()?;
    rt.block_on(async {
        match c {
            RetentionCommand::Show(a) => {
                let policy: RetentionPolicy = match &remote {
                    Some(c) => crate::run_remote::read(c, c.get("/retention").await?)?,
                    None => {
                        let (store, _) = crate::cli_util::read_store(&a.store).await?;
                        policy_of(&ArchiveDb::for_store(&store)).await?
                    }
                };
                if out.json() {
                    out.json_value(&policy);
                } else {
                    out.line(&format!("{:<10} {:>10} {:>10}", "kind", "live", "keep"));
                    for k in KINDS {
                        if let Some(r) = policy.rules.get(*k) {
                            out.line(&format!(
                                "{:<10} {:>9}d {:>9}d",
                                k, r.live_days, r.keep_days
                            ));
                        }
                    }
                }
                Ok(exit::SUCCESS)
            }
            RetentionCommand::Set(a) => {
                let live = garchive::parse_days(&a.live).map_err(archive_error)?;
                let keep = garchive::parse_days(&a.keep).map_err(archive_error)?;
                if keep < live {
                    return Err(CliError::input(
                        format!(
                            "failed to set the retention of {}: --keep {} is shorter than --live {}",
                            a.kind, a.keep, a.live
                        ),
                        "records must be kept at least as long as they stay live",
                    ));
                }
                if let Some(c) = &remote {
                    c.post(
                        &format!("/retention/{}", crate::cli_util::path_segment(&a.kind)),
                        &json!({"live_days": live, "keep_days": keep}),
                    )
                    .await?;
                } else {
                    let session = crate::cli_util::session(&a.store).await?;
                    crate::cli_util::enforce(&session, Role::Admin, "set retention", "*").await?;
                    let db = ArchiveDb::for_store(&session.store);
                    let me = session.actor.user.clone();
                    db.set_policy(&PolicyRow {
                        kind: a.kind.clone(),
                        live_days: live,
                        keep_days: keep,
                        set_by: format!("user:{me}"),
                        set_at: slipway_stdx::now().to_string(),
                    })
                    .await
                    .map_err(CliError::from)?;
                }
                if out.json() {
                    out.json_value(&json!({"kind": a.kind, "live_days": live, "keep_days": keep}));
                } else {
                    out.line(&format!(
                        "retention of {}: live {live}d, keep {keep}d",
                        a.kind
                    ));
                }
                Ok(exit::SUCCESS)
            }
        }
    })
}
