//! Reports after the fact (`slipway report dora | handover | retro`), for either front end:
//! the reader needs `viewer` everywhere, the evidence must verify first, and every report
//! that counts or lists runs reads the live runs *and* the summaries `slipway archive` left
//! of archived ones (so archiving never changes a figure); a per-run report of an archived
//! run names the bundle that holds its journal.

use slipway_engine::Store;
use slipway_govern::access::Role;
use slipway_govern::dora::{self, DoraQuery, DoraReport};
use slipway_govern::history::{self, RunHistory, Unsummarized};
use slipway_govern::{GovernError, git::GitNotes};
use slipway_store::AnyStore;
use slipway_store::archive::{ArchiveDb, Checkpoint, RunSummary};

use crate::error::{Hint, OpsError, OpsResult};
use crate::session::Session;

/// The reader may read reports, and the store's evidence verifies.
async fn readable(session: &Session) -> OpsResult<()> {
    crate::access::require(session, Role::Viewer, "read reports", "*").await?;
    slipway_govern::verify_evidence(session.store.as_ref()).await?;
    Ok(())
}

/// The run summaries and archive checkpoints of the store (either backend).
pub async fn archived(store: &AnyStore) -> OpsResult<(Vec<RunSummary>, Vec<Checkpoint>)> {
    let db = ArchiveDb::for_store(store);
    Ok((db.summaries().await?, db.checkpoints().await?))
}

/// Live and archived runs since `since`, and the archived runs no summary covers.
pub async fn history_with_archive(
    store: &AnyStore,
    since: Option<jiff::Timestamp>,
) -> OpsResult<(Vec<RunHistory>, Vec<Unsummarized>)> {
    let live = history::load_runs(store, since).await?;
    let (summaries, checkpoints) = archived(store).await?;
    Ok(history::with_archived(
        live,
        &summaries,
        &checkpoints,
        since,
    ))
}

/// One run for a per-run report; an archived run is refused naming its bundle.
pub async fn load_run(store: &AnyStore, id: &str) -> OpsResult<RunHistory> {
    match RunHistory::load(store, id).await {
        Err(GovernError::NoSuchRun(_)) => {
            let (summaries, checkpoints) = archived(store).await?;
            let bundle = summaries
                .iter()
                .find(|s| s.run_id == id)
                .map(|s| s.checkpoint_id)
                .or_else(|| {
                    checkpoints
                        .iter()
                        .find(|c| c.runs.iter().any(|r| r == id))
                        .map(|c| c.id)
                })
                .and_then(|cp| checkpoints.iter().find(|c| c.id == cp));
            match bundle {
                Some(c) => Err(OpsError::input(format!(
                    "failed to read run `{id}`: it was archived into {} (sha256 {}, archive before {}); its journal and approvals are in that bundle",
                    c.bundle_name, c.bundle_sha256, c.before
                ))
                .hint(Hint::text("read the bundle's journal.jsonl (`zstd -dc BUNDLE | tar -xO journal.jsonl`); `slipway report dora` still counts the run"))),
                None => Err(GovernError::NoSuchRun(id.to_owned()).into()),
            }
        }
        other => Ok(other?),
    }
}

/// `slipway report dora`: `query.since` is required by the front ends.
pub async fn dora(session: &Session, mut query: DoraQuery) -> OpsResult<DoraReport> {
    readable(session).await?;
    let (runs, unsummarized) = history_with_archive(&session.store, query.since).await?;
    query.unsummarized = unsummarized;
    Ok(dora::compute(
        &runs,
        &query,
        slipway_stdx::now(),
        &slipway_govern::git::change_origin,
    ))
}

/// A run's handover pack.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Handover {
    /// The run.
    pub run: String,
    /// The pack, Markdown.
    pub markdown: String,
    /// The release notes from git (the run's workdir, where it ran).
    pub git: GitNotes,
}

/// `slipway report handover RUN`.
pub async fn handover(session: &Session, id: &str) -> OpsResult<Handover> {
    readable(session).await?;
    let store = session.store.as_ref();
    let run = load_run(&session.store, id).await?;
    let (summaries, checkpoints) = archived(&session.store).await?;
    let prev = history::previous_run_with_archived(store, &run, &summaries, &checkpoints).await?;
    let notes = slipway_govern::git::release_notes(&run, prev.as_ref());
    let markdown = slipway_govern::handover::render(&run, prev.as_ref(), &notes);
    Ok(Handover {
        run: run.record.id.clone(),
        markdown,
        git: notes,
    })
}

/// `slipway report retro RUN`.
pub async fn retro(session: &Session, id: &str) -> OpsResult<slipway_govern::retro::Retro> {
    readable(session).await?;
    let run = load_run(&session.store, id).await?;
    Ok(slipway_govern::retro::build(&run))
}

/// Runs and audit entries read from verified archive bundles (the CLI's `--archive`), to
/// be examined like live ones.
#[derive(Debug, Clone)]
pub struct FromBundles {
    /// The bundles' runs, whole (journal and approvals).
    pub runs: Vec<RunHistory>,
    /// Their audit entries, oldest bundle first.
    pub audit: Vec<slipway_engine::audit::AuditEntry>,
    /// Where the first bundle's chain starts.
    pub start: (i64, String),
}

/// `slipway report compliance`: the evidence of `framework`'s controls over the period
/// `[since, until)` — live runs, archived ones by their summary (or whole, from
/// `bundles`), the audit chain from its start to the head read first, and the reviews
/// after the fact still owed. The reader needs `viewer` everywhere; the evidence must
/// verify.
pub async fn compliance(
    session: &Session,
    framework: &str,
    since: jiff::Timestamp,
    until: jiff::Timestamp,
    bundles: Option<FromBundles>,
) -> OpsResult<slipway_govern::compliance::Evidence> {
    slipway_govern::compliance::catalogue(framework)?;
    readable(session).await?;
    let store = session.store.as_ref();
    // Read the head before the entries: entries appended in between only extend the
    // chain past the head the pack names, which still verifies.
    let start = store.audit_start().await?;
    let head = store.audit_head().await?;
    let entries = store.audit_entries().await?;
    let entries: Vec<_> = match &head {
        Some((seq, _)) => entries.into_iter().filter(|e| e.seq <= *seq).collect(),
        None => entries,
    };
    let (mut runs, unsummarized) = history_with_archive(&session.store, None).await?;
    let (start, entries) = match bundles {
        None => (start, entries),
        Some(b) => {
            RunHistory::replace_from_bundles(&mut runs, b.runs);
            let mut all = b.audit;
            all.extend(entries);
            (b.start, all)
        }
    };
    let mut evidence = slipway_govern::compliance::evaluate_from(
        framework, &runs, &entries, start, head, since, until,
    )?;
    evidence.note_unsummarized(&unsummarized);
    // Reviews after the fact still owed, whenever their run was: an auditor sees them.
    let now = slipway_stdx::now();
    evidence.open_reviews = crate::review::list(store)
        .await?
        .into_iter()
        .filter(|r| r.state(now) != "done")
        .map(|r| {
            serde_json::json!({"run": r.run, "release": r.release, "version": r.version,
                "environment": r.environment, "due_at": r.due_at.to_string(),
                "state": r.state(now)})
        })
        .collect();
    Ok(evidence)
}

/// The Backstage entities of a spec with lifecycles from the run history, and what of
/// that history came from archives.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Catalog {
    /// System, Components and Resources.
    pub entities: Vec<slipway_govern::catalog::Entity>,
    /// Runs counted from archive summaries.
    pub archive: history::ArchiveUse,
}

/// `slipway catalog export`: the entities of `spec`, lifecycles from the run history
/// (archived runs count: a service deployed to production once is in production whether
/// or not that run was archived since). The reader needs `viewer` everywhere.
pub async fn catalog(
    session: &Session,
    spec: &slipway_model::spec::ReleaseSpec,
) -> OpsResult<Catalog> {
    readable(session).await?;
    let (runs, unsummarized) = history_with_archive(&session.store, None).await?;
    Ok(Catalog {
        entities: slipway_govern::catalog::entities(spec, &runs),
        archive: history::ArchiveUse::of(&runs, &unsummarized, None),
    })
}
