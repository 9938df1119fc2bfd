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
use slipway_engine::evidence::AnchorPayload;
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

async fn policy_of(db: &ArchiveDb) -> Result<RetentionPolicy, CliError> {
    Ok(RetentionPolicy::from_rows(
        &db.policy().await.map_err(CliError::from)?,
    ))
}

/// What an archive selected, as both modes report it.
struct Selected {
    runs: Vec<String>,
    audit_entries: usize,
    start_seq: i64,
    end_seq: i64,
    runs_before: String,
    audit_before: String,
}

fn render_nothing(out: &Output, s: &Selected) -> i32 {
    if out.json() {
        out.json_value(&json!({"archived": false, "runs": [], "audit_entries": 0,
            "runs_before": s.runs_before, "audit_before": s.audit_before}));
    } else {
        out.line(&format!(
            "nothing to archive: no closed run before {} and no audit entry before {} (retention: `slipway retention show`)",
            s.runs_before, s.audit_before
        ));
    }
    exit::SUCCESS
}

fn render_dry_run(out: &Output, s: &Selected, path: &Path) -> i32 {
    if out.json() {
        out.json_value(&json!({"archived": false, "dry_run": true, "runs": s.runs,
            "audit_entries": s.audit_entries, "chain_end": s.end_seq, "bundle": path}));
    } else {
        out.line(&format!(
            "would archive {} run(s) and audit entries {}..={} into {}",
            s.runs.len(),
            s.start_seq + 1,
            s.end_seq,
            path.display()
        ));
    }
    exit::SUCCESS
}

/// Write the bundle durably into `path` and sign it there with the key of `a` (the key
/// never leaves this machine): the secret key and the signature's path.
fn write_signed(
    a: &ArchiveArgs,
    path: &Path,
    bytes: &[u8],
    digest: &str,
) -> Result<(pkg::SecretKey, PathBuf), CliError> {
    let pw = crate::cli_util::password_from_env(a.password_env.as_deref())?;
    let sk = pkg::SecretKey::from_file(&a.key, pw.as_deref())
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    write_durable(path, bytes)?;
    let sig = pkg::sign::signature_path(path);
    // The trusted comment binds the digest the checkpoint records; it holds no time, so
    // a re-run signs identically.
    pkg::sign::sign_to(path, &sk, &format!("slipway-archive sha256:{digest}"), &sig)
        .map_err(|e| crate::cli_util::package_error(&e))?;
    File::open(&sig)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("fsync", &sig, e))?;
    sync_dir(dir)?;
    if std::env::var("SLIPWAY_FAULT").as_deref() == Ok("archive-before-prune") {
        // Test hook (see the module doc): die as a crash would, before the prune.
        std::process::abort();
    }
    Ok((sk, sig))
}

/// The checkpoint the live chain now starts at, signed with the archive's key, so `audit
/// verify --pubkey` can tell this start from a forged one.
fn start_anchor(pruned: &slipway_ops::archive::Pruned) -> Option<AnchorPayload> {
    let cp = &pruned.checkpoint;
    pruned.head.as_ref().map(|(seq, hash)| AnchorPayload {
        seq: *seq,
        hash: hash.clone(),
        entries: seq - cp.end_seq,
        start_seq: cp.end_seq,
        start_hash: cp.end_hash.clone(),
        at: slipway_stdx::now().to_string(),
    })
}

struct Archived<'a> {
    path: &'a Path,
    sig: &'a Path,
    digest: &'a str,
    key_id: String,
    selected: &'a Selected,
    pruned: &'a slipway_ops::archive::Pruned,
    keep_until: serde_json::Value,
}

fn render_archived(out: &Output, a: &Archived<'_>) -> i32 {
    let cp = &a.pruned.checkpoint;
    if out.json() {
        out.json_value(
            &json!({"archived": true, "bundle": a.path, "signature": a.sig,
            "sha256": a.digest, "runs": a.selected.runs, "summaries": a.pruned.summaries,
            "audit_entries": a.selected.audit_entries, "checkpoint": cp,
            "keep_until": a.keep_until}),
        );
    } else {
        out.line(&format!(
            "archived {} run(s) and audit entries {}..={} into {}",
            a.selected.runs.len(),
            cp.start_seq + 1,
            cp.end_seq,
            a.path.display()
        ));
        out.line(&format!(
            "  sha256 {}, signed with key {} ({})",
            a.digest,
            a.key_id,
            a.sig.display()
        ));
        out.line(&format!(
            "  checkpoint: the live chain now starts after entry {} ({})",
            cp.end_seq, cp.end_hash
        ));
        out.line(&format!(
            "  {} run summar{} kept in the store for the reports",
            a.pruned.summaries,
            if a.pruned.summaries == 1 { "y" } else { "ies" }
        ));
    }
    exit::SUCCESS
}

/// Run `slipway archive`: on a store, or through a server (`--server`), where the server
/// cuts and prunes and this machine writes and signs the bundle (the key never reaches the
/// server): `POST /api/v1/archive/cut`, `GET /api/v1/archive/bundle`, `POST
/// /api/v1/archive/prune`, then the new start's checkpoint by `POST /api/v1/audit/anchors`
/// — admin on `*` for each.
pub fn archive(a: ArchiveArgs, out: &Output) -> Result<i32, CliError> {
    let before = slipway_govern::parse_when(&a.before)
        .map_err(|e| CliError::input(format!("failed to {e}"), "e.g. --before 2026-01-01"))?;
    let rt = runtime()?;
    match crate::cli_util::remote()? {
        Some(c) => rt.block_on(archive_remote(&c, &a, before, out)),
        None => rt.block_on(archive_store(&a, before, out)),
    }
}

async fn archive_store(a: &ArchiveArgs, before: Timestamp, out: &Output) -> Result<i32, CliError> {
    let session = crate::cli_util::read_session(&a.store).await?;
    let cut = slipway_ops::archive::cut(&session, before, slipway_stdx::now()).await?;
    let (end_seq, _) = cut.selection.end();
    let selected = Selected {
        runs: cut.selection.run_ids(),
        audit_entries: cut.selection.audit.len(),
        start_seq: cut.selection.start.0,
        end_seq,
        runs_before: cut.runs_before.to_string(),
        audit_before: cut.audit_before.to_string(),
    };
    let Some((bytes, manifest)) = &cut.bundle else {
        return Ok(render_nothing(out, &selected));
    };
    // An SQLite store's directory; `.slipway/` where a PostgreSQL store's runs were
    // driven from here.
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| session.layout.dir().join("archive"));
    let path = dir.join(&cut.name);
    if a.dry_run {
        return Ok(render_dry_run(out, &selected, &path));
    }
    let (sk, sig) = write_signed(a, &path, bytes, &cut.digest)?;
    let pruned = slipway_ops::archive::prune(&session, &cut, &cut.digest).await?;
    if let Some(payload) = start_anchor(&pruned) {
        crate::audit_view::sign_anchor(session.store.as_ref(), &sk, &payload).await?;
    }
    Ok(render_archived(
        out,
        &Archived {
            path: &path,
            sig: &sig,
            digest: &cut.digest,
            key_id: sk.key_id().to_owned(),
            selected: &selected,
            pruned: &pruned,
            keep_until: json!(manifest.keep_until),
        },
    ))
}

async fn archive_remote(
    c: &slipway_server::client::Client,
    a: &ArchiveArgs,
    before: Timestamp,
    out: &Output,
) -> Result<i32, CliError> {
    use crate::run_remote::{read, unexpected};
    let (_, v) = c
        .post("/archive/cut", &json!({"before": before.to_string()}))
        .await?;
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let selected = Selected {
        runs: read(c, v["runs"].clone())?,
        audit_entries: read(c, v["audit_entries"].clone())?,
        start_seq: read(c, v["start_seq"].clone())?,
        end_seq: read(c, v["end_seq"].clone())?,
        runs_before: text("runs_before"),
        audit_before: text("audit_before"),
    };
    if v["empty"] == json!(true) {
        return Ok(render_nothing(out, &selected));
    }
    let (at, digest, name) = (text("at"), text("sha256"), text("name"));
    if name.contains('/') || !name.starts_with("slipway-archive-") {
        return Err(unexpected(c, &format!("the bundle's name `{name}`")));
    }
    // No store here: the bundle goes where --out says, else `archive/` in this directory.
    let dir = a.out.clone().unwrap_or_else(|| PathBuf::from("archive"));
    let path = dir.join(&name);
    if a.dry_run {
        return Ok(render_dry_run(out, &selected, &path));
    }
    let seg = crate::cli_util::path_segment;
    let bytes = c
        .get_bytes(&format!(
            "/archive/bundle?before={}&at={}",
            seg(&before.to_string()),
            seg(&at)
        ))
        .await?;
    if garchive::bundle_digest(&bytes) != digest {
        return Err(CliError::new(
            exit::TAMPERED,
            format!(
                "failed to archive: the bundle {} sent does not hash to the sha256 {digest} it announced",
                c.server()
            ),
            Some("nothing was signed or removed; run the archive again".into()),
        ));
    }
    let (sk, sig) = write_signed(a, &path, &bytes, &digest)?;
    let (_, p) = c
        .post(
            "/archive/prune",
            &json!({"before": before.to_string(), "at": at, "sha256": digest}),
        )
        .await?;
    let pruned: slipway_ops::archive::Pruned = read(c, p["pruned"].clone())?;
    if let Some(payload) = start_anchor(&pruned) {
        let line = payload.line();
        let signature = pkg::sign::sign_bytes(line.as_bytes(), Path::new("checkpoint"), &sk, &line)
            .map_err(|e| crate::cli_util::package_error(&e))?;
        c.post(
            "/audit/anchors",
            &json!({"seq": payload.seq, "hash": payload.hash, "payload": line, "signature": signature}),
        )
        .await?;
    }
    Ok(render_archived(
        out,
        &Archived {
            path: &path,
            sig: &sig,
            digest: &digest,
            key_id: sk.key_id().to_owned(),
            selected: &selected,
            pruned: &pruned,
            keep_until: p["keep_until"].clone(),
        },
    ))
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
