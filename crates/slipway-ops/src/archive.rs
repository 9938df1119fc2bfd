//! Archiving closed runs and the old audit chain (`slipway archive`, on a store or through
//! a server), in the two halves the signing key sits between: [`cut`] selects what the
//! retention policy lets go before a date and builds the bundle (it holds no time of its
//! own, so the same cut builds the same bytes); the caller writes and signs it where the
//! key is; [`prune`] then removes the records and records the checkpoint in one
//! transaction, after building the bundle again and finding it the one that was signed.
//! Admin on `*` for both; a live chain that does not verify is never archived (that would
//! launder tampering).

use jiff::Timestamp;
use slipway_engine::audit;
use slipway_engine::store::Store;
use slipway_govern::access::Role;
use slipway_govern::archive::{self as garchive, Manifest, RetentionPolicy};
use slipway_store::archive::{ArchiveDb, Checkpoint, Selection};

use crate::error::{ErrorKind, Hint, OpsError, OpsResult};
use crate::session::Session;

/// What an archive before a date moves out, and its bundle.
pub struct Cut {
    /// The `--before` date.
    pub before: Timestamp,
    /// The instant the policy's live periods were counted back from.
    pub at: Timestamp,
    /// Closed runs last changed before this move.
    pub runs_before: Timestamp,
    /// Audit entries before this move.
    pub audit_before: Timestamp,
    /// The records.
    pub selection: Selection,
    /// The policy in force.
    pub policy: RetentionPolicy,
    /// The bundle and its manifest (`None`: nothing to archive).
    pub bundle: Option<(Vec<u8>, Manifest)>,
    /// The bundle's sha256 (empty when there is none).
    pub digest: String,
    /// The bundle's file name (`slipway-archive-<sha256 prefix>.tar.zst`).
    pub name: String,
}

/// What a prune did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pruned {
    /// The checkpoint the live chain now starts after.
    pub checkpoint: Checkpoint,
    /// Run summaries kept for the reports.
    pub summaries: usize,
    /// The chain's head after the prune (the checkpoint to sign names it).
    pub head: Option<(i64, String)>,
}

fn archive_error(e: garchive::ArchiveError) -> OpsError {
    match e {
        garchive::ArchiveError::BadPolicy { .. } => OpsError::input(format!("failed to {e}"))
            .hint(Hint::text("write periods like 90d, 12w or 7y")),
        garchive::ArchiveError::Tampered(_) | garchive::ArchiveError::Unreadable(_) => {
            OpsError::new(ErrorKind::Evidence, format!("failed to {e}")).hint(Hint::text(
                "the bundle was altered or is not a slipway archive; keep the original",
            ))
        }
    }
}

/// Files a run left beside the store (version lock, infrastructure digests), as
/// `files/RUN/NAME`.
fn run_files(session: &Session, run: &str) -> OpsResult<Vec<(String, Vec<u8>)>> {
    let dir = session.layout.dir().join("runs").join(run);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() {
            let b = std::fs::read(&p).map_err(|e| {
                OpsError::failure(format!("failed to read {}: {e}", p.display()))
                    .hint(Hint::text("check the directory exists and is readable"))
            })?;
            out.push((
                format!("files/{run}/{}", e.file_name().to_string_lossy()),
                b,
            ));
        }
    }
    Ok(out)
}

/// Select what an archive before `before` moves out, counting the policy's live periods
/// back from `at`, and build its bundle.
pub async fn cut(session: &Session, before: Timestamp, at: Timestamp) -> OpsResult<Cut> {
    crate::access::require(session, Role::Admin, "archive records", "*").await?;
    let store = session.store.as_ref();
    let start = store.audit_start().await?;
    let head = store.audit_head().await?;
    let live = store.audit_entries().await?;
    if let Err(b) = audit::verify_from(
        &live,
        (start.0, start.1.as_str()),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    ) {
        return Err(OpsError::new(
            ErrorKind::Evidence,
            format!("failed to archive: the live audit chain does not verify: {b}"),
        )
        .hint(Hint::text(
            "investigate with `slipway audit verify`; nothing was archived",
        )));
    }
    let db = ArchiveDb::for_store(&session.store);
    let policy = RetentionPolicy::from_rows(&db.policy().await?);
    let (runs_before, audit_before) = policy.cutoffs(at, before);
    let selection = db.select(runs_before, audit_before).await?;
    let (bundle, digest, name) = if selection.is_empty() {
        (None, String::new(), String::new())
    } else {
        let mut extra = Vec::new();
        for id in selection.run_ids() {
            extra.extend(run_files(session, &id)?);
        }
        let (bytes, manifest) =
            garchive::build_bundle(&selection, &extra, &before.to_string(), &policy)
                .map_err(archive_error)?;
        let digest = garchive::bundle_digest(&bytes);
        let name = format!("slipway-archive-{}.tar.zst", &digest[..16]);
        (Some((bytes, manifest)), digest, name)
    };
    Ok(Cut {
        before,
        at,
        runs_before,
        audit_before,
        selection,
        policy,
        bundle,
        digest,
        name,
    })
}

/// Remove what `cut` moved out, once its bundle is written and signed where the key is:
/// the records, the summaries the reports count archived runs by and the checkpoint in
/// one transaction (the prune appends the `archived` chain entry as the session's actor),
/// then the runs' files. `signed` is the sha256 of the bundle that was signed: the cut is
/// made again and must build those bytes, or nothing is removed.
pub async fn prune(session: &Session, cut: &Cut, signed: &str) -> OpsResult<Pruned> {
    crate::access::require(session, Role::Admin, "archive records", "*").await?;
    if cut.bundle.is_none() || cut.digest != signed {
        return Err(OpsError::new(
            ErrorKind::Blocked,
            format!(
                "failed to archive: the records before {} no longer build the bundle that was signed (sha256 {signed})",
                cut.before
            ),
        )
        .hint(Hint::text("run the archive again; nothing was removed")));
    }
    let store = session.store.as_ref();
    let ids = cut.selection.run_ids();
    let keep_until = cut
        .bundle
        .as_ref()
        .and_then(|(_, m)| m.keep_until.get("runs"))
        .and_then(|t| t.parse::<Timestamp>().ok());
    // Closed runs do not change, so reading them after the selection's snapshot reads the
    // same records (the prune re-checks they are still closed).
    let mut summaries = Vec::with_capacity(ids.len());
    for id in &ids {
        let run = slipway_govern::RunHistory::load(store, id).await?;
        summaries.push(slipway_govern::history::summarize(&run, keep_until));
    }
    let actor = session.actor_id().await?;
    let checkpoint = ArchiveDb::for_store(&session.store)
        .prune(
            &cut.selection,
            &summaries,
            &cut.digest,
            &cut.name,
            &cut.before.to_string(),
            slipway_stdx::now(),
            &actor,
        )
        .await?;
    let head = store.audit_head().await?;
    for id in &ids {
        // Best effort: the records are in the bundle and gone from the store; a left
        // directory only costs space.
        let _ = std::fs::remove_dir_all(session.layout.dir().join("runs").join(id));
    }
    Ok(Pruned {
        checkpoint,
        summaries: summaries.len(),
        head,
    })
}
