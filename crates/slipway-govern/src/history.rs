//! A run with everything the reports read about it: its record, its plan, its journal and
//! its approvals, loaded once through the `Store` trait, with the derived facts every
//! report shares (when it started and ended, why it rolled back).
//!
//! A run moved into an archive bundle is still part of the history: `slipway archive`
//! leaves its [`RunSummary`] in the live store ([`summarize`] makes it, from the same
//! derived facts), and [`with_archived`] turns summaries back into [`RunHistory`] values
//! marked [`RunHistory::archived`], with no plan, journal or approvals. The derived facts
//! (start, end, production, type, services, tag) answer from the summary for those, so a
//! figure computed over live + archived runs is the one computed before the archive.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use serde::Serialize;
use slipway_engine::store::{ApprovalRecord, RunRecord, Store};
use slipway_engine::{EngineEvent, Notice, RunState};
use slipway_model::plan::Plan;
use slipway_store::archive::{Checkpoint, RunSummary};

use crate::GovernError;

/// How many runs a report reads at most; far above any history a single store keeps live.
const MAX_RUNS: u32 = 1_000_000;

/// One run, as the reports see it.
#[derive(Debug, Clone)]
pub struct RunHistory {
    /// The stored run.
    pub record: RunRecord,
    /// Its plan, when the stored JSON still parses with this build.
    pub plan: Option<Plan>,
    /// Its journal, oldest first.
    pub journal: Vec<Notice>,
    /// Its approvals.
    pub approvals: Vec<ApprovalRecord>,
    /// Set when the run was archived: the summary it is read from and the bundle holding
    /// its records. `plan`, `journal` and `approvals` are then empty.
    pub archived: Option<ArchivedRun>,
}

/// Where an archived run's records are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchivedRun {
    /// The summary left in the live store.
    pub summary: RunSummary,
    /// The bundle's file name.
    pub bundle: String,
    /// The bundle's sha256.
    pub bundle_sha256: String,
    /// The archive's `--before` date.
    pub before: String,
    /// Whether the run's plan, journal and approvals were read back from its (verified)
    /// bundle, so per-run controls can examine it; false when only the summary is known.
    pub records: bool,
}

/// A bundle some counted runs come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct BundleRef {
    /// The bundle's file name.
    pub bundle: String,
    /// Its sha256 (what the checkpoint records).
    pub sha256: String,
    /// The checkpoint id.
    pub checkpoint: i64,
    /// The archive's `--before` date.
    pub before: String,
    /// How many of the runs counted come from it.
    pub runs: u32,
}

/// Runs an archive moved out without leaving a summary (archived by a slipway before
/// journal format 4): reports cannot count them and say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsummarized {
    /// The bundle holding them.
    pub bundle: String,
    /// Its sha256.
    pub sha256: String,
    /// The archive's `--before` date: every such run closed before it.
    pub before: String,
    /// Their ids.
    pub runs: Vec<String>,
}

/// What of the history comes from archives, for a report to state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveUse {
    /// Runs the report counted that come from archive summaries.
    pub runs_from_summaries: u32,
    /// The bundles those runs are in.
    pub bundles: Vec<BundleRef>,
    /// Archived runs the report could not count (no summary), when their archive may
    /// overlap the period.
    pub not_counted: Vec<Unsummarized>,
}

impl ArchiveUse {
    /// Which of `runs` come from summaries, by bundle; `unsummarized` (from
    /// [`with_archived`]) kept when an archive's runs may fall in a period from `since`.
    pub fn of<'a>(
        runs: impl IntoIterator<Item = &'a RunHistory>,
        unsummarized: &[Unsummarized],
        since: Option<Timestamp>,
    ) -> Self {
        let mut by: BTreeMap<i64, BundleRef> = BTreeMap::new();
        let mut n = 0;
        for r in runs {
            if let Some(a) = &r.archived {
                n += 1;
                by.entry(a.summary.checkpoint_id)
                    .or_insert_with(|| BundleRef {
                        bundle: a.bundle.clone(),
                        sha256: a.bundle_sha256.clone(),
                        checkpoint: a.summary.checkpoint_id,
                        before: a.before.clone(),
                        runs: 0,
                    })
                    .runs += 1;
            }
        }
        let bundles = by.into_values().collect();
        let not_counted = unsummarized
            .iter()
            .filter(|u| {
                // Such a run closed before the archive's `--before`; it can only be in a
                // period that starts before that.
                since.is_none_or(|s| u.before.parse::<Timestamp>().map_or(true, |b| s < b))
            })
            .cloned()
            .collect();
        Self {
            runs_from_summaries: n,
            bundles,
            not_counted,
        }
    }

    /// One line for people: where the archived runs come from, and what is missing.
    pub fn describe(&self) -> String {
        let mut s = if self.runs_from_summaries == 0 {
            "archived runs: none counted".to_owned()
        } else {
            format!(
                "archived runs: {} counted from archive summaries (bundle{} {})",
                self.runs_from_summaries,
                if self.bundles.len() == 1 { "" } else { "s" },
                self.bundles
                    .iter()
                    .map(|b| format!("{}: {}", b.bundle, b.runs))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for u in &self.not_counted {
            s.push_str(&format!(
                "; NOT COUNTED: {} run(s) archived in {} (closed before {}) left no summary — this report undercounts any period before {}",
                u.runs.len(),
                u.bundle,
                u.before,
                u.before
            ));
        }
        s
    }
}

impl RunHistory {
    /// Load one run.
    pub async fn load(store: &dyn Store, id: &str) -> Result<Self, GovernError> {
        let record = store
            .run(id)
            .await?
            .ok_or_else(|| GovernError::NoSuchRun(id.to_owned()))?;
        Self::from_record(store, record).await
    }

    async fn from_record(store: &dyn Store, record: RunRecord) -> Result<Self, GovernError> {
        let journal = store.journal(&record.id, 0).await?;
        let approvals = store.approvals(&record.id).await?;
        // An unparsable plan (written by another version) still leaves the run countable.
        let plan = serde_json::from_str(&record.plan_json).ok();
        Ok(Self {
            record,
            plan,
            journal,
            approvals,
            archived: None,
        })
    }

    /// An archived run, read back from its summary.
    pub fn from_summary(summary: RunSummary, checkpoint: Option<&Checkpoint>) -> Self {
        let record = RunRecord {
            id: summary.run_id.clone(),
            digest: String::new(),
            release: summary.release.clone(),
            version: summary.version.clone(),
            environment: summary.environment.clone(),
            author: String::new(),
            state: summary.state,
            control: None,
            override_reason: None,
            created_at: summary.created_at,
            updated_at: summary.finished_at.unwrap_or(summary.created_at),
            workdir: summary.workdir.clone(),
            plan_json: String::new(),
        };
        Self {
            record,
            plan: None,
            journal: Vec::new(),
            approvals: Vec::new(),
            archived: Some(ArchivedRun {
                summary,
                bundle: checkpoint.map_or_else(String::new, |c| c.bundle_name.clone()),
                bundle_sha256: checkpoint.map_or_else(String::new, |c| c.bundle_sha256.clone()),
                before: checkpoint.map_or_else(String::new, |c| c.before.clone()),
                records: false,
            }),
        }
    }

    /// The runs of an archive bundle (already checked against its manifest, its signature
    /// and the store's `checkpoint`), with their plan, journal and approvals, so reports
    /// can examine them as they examine live runs.
    pub fn from_bundle(
        bundle: &crate::archive::Bundle,
        checkpoint: &Checkpoint,
    ) -> Result<Vec<Self>, GovernError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            GovernError::Store(slipway_engine::StoreError::Query(format!(
                "read {what} of archive {}: {e}",
                checkpoint.bundle_name
            )))
        };
        let text = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let mut out = Vec::new();
        for row in &bundle.runs {
            let mut record: RunRecord =
                serde_json::from_value(row.clone()).map_err(|e| bad("runs.jsonl", &e))?;
            record.plan_json = text(row, "plan_json");
            let mut journal = Vec::new();
            for j in bundle
                .journal
                .iter()
                .filter(|j| j.get("run_id").and_then(|v| v.as_str()) == Some(record.id.as_str()))
            {
                journal.push(Notice {
                    seq: j
                        .get("seq")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0),
                    run_id: record.id.clone(),
                    at: text(j, "at")
                        .parse()
                        .map_err(|e| bad("journal.jsonl", &e))?,
                    actor: text(j, "actor"),
                    event: serde_json::from_str(&text(j, "data"))
                        .map_err(|e| bad("journal.jsonl", &e))?,
                });
            }
            let mut approvals = Vec::new();
            for a in bundle
                .approvals
                .iter()
                .filter(|a| a.get("run_id").and_then(|v| v.as_str()) == Some(record.id.as_str()))
            {
                approvals.push(ApprovalRecord {
                    approver: text(a, "approver"),
                    digest: text(a, "digest"),
                    groups: serde_json::from_str(&text(a, "groups")).unwrap_or_default(),
                    at: text(a, "at")
                        .parse()
                        .map_err(|e| bad("approvals.jsonl", &e))?,
                });
            }
            let plan = serde_json::from_str(&record.plan_json).ok();
            let mut run = Self {
                record,
                plan,
                journal,
                approvals,
                archived: None,
            };
            let mut summary = summarize(&run, None);
            summary.checkpoint_id = checkpoint.id;
            run.archived = Some(ArchivedRun {
                summary,
                bundle: checkpoint.bundle_name.clone(),
                bundle_sha256: checkpoint.bundle_sha256.clone(),
                before: checkpoint.before.clone(),
                records: true,
            });
            out.push(run);
        }
        Ok(out)
    }

    /// Replace the summary-only entries of `runs` with the full runs read from bundles
    /// (see [`RunHistory::from_bundle`]); runs of a bundle not in `runs` (outside its
    /// period) are left out.
    pub fn replace_from_bundles(runs: &mut [Self], full: Vec<Self>) {
        let mut by_id: BTreeMap<String, Self> =
            full.into_iter().map(|r| (r.record.id.clone(), r)).collect();
        for r in runs.iter_mut() {
            if r.archived.as_ref().is_some_and(|a| !a.records)
                && let Some(f) = by_id.remove(&r.record.id)
            {
                *r = f;
            }
        }
    }

    fn summary(&self) -> Option<&RunSummary> {
        self.archived.as_ref().map(|a| &a.summary)
    }

    /// When the run first started applying steps (its creation when it never did).
    pub fn started_at(&self) -> Timestamp {
        if let Some(s) = self.summary() {
            return s.started_at;
        }
        self.journal
            .iter()
            .find_map(|n| match &n.event {
                EngineEvent::StateChanged {
                    to: RunState::Running,
                    ..
                } => Some(n.at),
                _ => None,
            })
            .unwrap_or(self.record.created_at)
    }

    /// When the run reached its terminal state, if it did.
    pub fn finished_at(&self) -> Option<Timestamp> {
        if let Some(s) = self.summary() {
            return s.finished_at;
        }
        self.journal.iter().rev().find_map(|n| match &n.event {
            EngineEvent::StateChanged { to, .. } if to.is_terminal() => Some(n.at),
            _ => None,
        })
    }

    /// Whether the run's environment is a production one.
    pub fn production(&self) -> bool {
        if let Some(s) = self.summary() {
            return s.production;
        }
        self.plan.as_ref().is_some_and(|p| p.production)
    }

    /// The release type, `unknown` when the plan is unreadable.
    pub fn release_type(&self) -> &str {
        if let Some(s) = self.summary() {
            return &s.release_type;
        }
        self.plan
            .as_ref()
            .map_or("unknown", |p| p.release.release_type.as_str())
    }

    /// The git tag the release carries (`metadata.tag` with `{version}` filled in).
    pub fn tag(&self) -> Option<String> {
        if let Some(s) = self.summary() {
            return s.tag.clone();
        }
        let plan = self.plan.as_ref()?;
        let tag = plan.release.tag.as_ref()?;
        Some(tag.replace("{version}", &plan.release.version))
    }

    /// The services the run's plan deploys.
    pub fn services(&self) -> Vec<String> {
        if let Some(s) = self.summary() {
            return s.services.clone();
        }
        self.plan
            .as_ref()
            .map(|p| p.services.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Why the run rolled back or failed: the first failed step's error, else the reason
    /// of the state change into rolling back or failure.
    pub fn failure_reason(&self) -> Option<String> {
        self.journal
            .iter()
            .find_map(|n| match &n.event {
                EngineEvent::StepFailed { step, error, .. } => Some(format!("{step}: {error}")),
                _ => None,
            })
            .or_else(|| {
                self.journal.iter().find_map(|n| match &n.event {
                    EngineEvent::StateChanged {
                        to: RunState::RollingBack | RunState::Failed | RunState::RolledBack,
                        reason: Some(r),
                        ..
                    } => Some(r.clone()),
                    _ => None,
                })
            })
    }
}

/// The summary an archive leaves of a closed run: the derived facts above, frozen.
/// `keep_until` is when the run's records may be destroyed (the bundle's `runs` date).
pub fn summarize(run: &RunHistory, keep_until: Option<Timestamp>) -> RunSummary {
    RunSummary {
        run_id: run.record.id.clone(),
        checkpoint_id: 0,
        release: run.record.release.clone(),
        version: run.record.version.clone(),
        release_type: run.release_type().to_owned(),
        environment: run.record.environment.clone(),
        production: run.production(),
        services: run.services(),
        state: run.record.state,
        created_at: run.record.created_at,
        started_at: run.started_at(),
        finished_at: run.finished_at(),
        workdir: run.record.workdir.clone(),
        tag: run.tag(),
        keep_until,
    }
}

/// `live` (from [`load_runs`]) with the archived runs of `summaries` created at or after
/// `since` added, oldest first; and, per checkpoint whose runs left no summary (archived
/// before summaries existed), those runs, for the report to state it cannot count them.
/// A run both live and summarized (impossible after a committed prune) counts once, live.
pub fn with_archived(
    live: Vec<RunHistory>,
    summaries: &[RunSummary],
    checkpoints: &[Checkpoint],
    since: Option<Timestamp>,
) -> (Vec<RunHistory>, Vec<Unsummarized>) {
    let summarized: HashSet<&str> = summaries.iter().map(|s| s.run_id.as_str()).collect();
    let live_ids: HashSet<String> = live.iter().map(|r| r.record.id.clone()).collect();
    let mut out = live;
    for s in summaries {
        if live_ids.contains(&s.run_id) || since.is_some_and(|t| s.created_at < t) {
            continue;
        }
        let cp = checkpoints.iter().find(|c| c.id == s.checkpoint_id);
        out.push(RunHistory::from_summary(s.clone(), cp));
    }
    out.sort_by(|a, b| {
        a.record
            .created_at
            .cmp(&b.record.created_at)
            .then_with(|| a.record.id.cmp(&b.record.id))
    });
    let unsummarized = checkpoints
        .iter()
        .filter_map(|c| {
            let runs: Vec<String> = c
                .runs
                .iter()
                .filter(|r| !summarized.contains(r.as_str()))
                .cloned()
                .collect();
            (!runs.is_empty()).then(|| Unsummarized {
                bundle: c.bundle_name.clone(),
                sha256: c.bundle_sha256.clone(),
                before: c.before.clone(),
                runs,
            })
        })
        .collect();
    (out, unsummarized)
}

/// Every run created at or after `since` (all when `None`), oldest first.
pub async fn load_runs(
    store: &dyn Store,
    since: Option<Timestamp>,
) -> Result<Vec<RunHistory>, GovernError> {
    let mut out = Vec::new();
    for r in store.runs(MAX_RUNS).await? {
        if since.is_some_and(|s| r.created_at < s) {
            continue;
        }
        // `runs` omits the plan JSON from listings; read the full record.
        let full = store.run(&r.id).await?.unwrap_or(r);
        out.push(RunHistory::from_record(store, full).await?);
    }
    out.sort_by(|a, b| {
        a.record
            .created_at
            .cmp(&b.record.created_at)
            .then_with(|| a.record.id.cmp(&b.record.id))
    });
    Ok(out)
}

/// The previous release of `run` in its environment: the newest run of the same release
/// there, created before it, that succeeded — an aborted, failed or rolled-back run never
/// put its version there, so it is never the previous release.
pub async fn previous_run(
    store: &dyn Store,
    run: &RunHistory,
) -> Result<Option<RunHistory>, GovernError> {
    let mut best: Option<RunRecord> = None;
    for r in store.runs(MAX_RUNS).await? {
        if r.id != run.record.id
            && r.release == run.record.release
            && r.environment == run.record.environment
            && r.state == RunState::Succeeded
            && r.created_at < run.record.created_at
            && best.as_ref().is_none_or(|b| r.created_at > b.created_at)
        {
            best = Some(r);
        }
    }
    match best {
        Some(b) => Ok(Some(RunHistory::load(store, &b.id).await?)),
        None => Ok(None),
    }
}

/// [`previous_run`] among the live runs and the archived `summaries`: the newest run of the
/// same release in the same environment created before `run`, archived or not.
pub async fn previous_run_with_archived(
    store: &dyn Store,
    run: &RunHistory,
    summaries: &[RunSummary],
    checkpoints: &[Checkpoint],
) -> Result<Option<RunHistory>, GovernError> {
    let live = previous_run(store, run).await?;
    let archived = summaries
        .iter()
        .filter(|s| {
            s.run_id != run.record.id
                && s.release == run.record.release
                && s.environment == run.record.environment
                && s.state == RunState::Succeeded
                && s.created_at < run.record.created_at
        })
        .max_by_key(|s| s.created_at);
    Ok(match (live, archived) {
        (Some(l), Some(a)) if a.created_at > l.record.created_at => Some(RunHistory::from_summary(
            a.clone(),
            checkpoints.iter().find(|c| c.id == a.checkpoint_id),
        )),
        (None, Some(a)) => Some(RunHistory::from_summary(
            a.clone(),
            checkpoints.iter().find(|c| c.id == a.checkpoint_id),
        )),
        (l, _) => l,
    })
}
