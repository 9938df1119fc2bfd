//! A run with everything the reports read about it: its record, its plan, its journal and
//! its approvals, loaded once through the `Store` trait, with the derived facts every
//! report shares (when it started and ended, why it rolled back).

use jiff::Timestamp;
use slipway_engine::store::{ApprovalRecord, RunRecord, Store};
use slipway_engine::{EngineEvent, Notice, RunState};
use slipway_model::plan::Plan;

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
        })
    }

    /// When the run first started applying steps (its creation when it never did).
    pub fn started_at(&self) -> Timestamp {
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
        self.journal.iter().rev().find_map(|n| match &n.event {
            EngineEvent::StateChanged { to, .. } if to.is_terminal() => Some(n.at),
            _ => None,
        })
    }

    /// Whether the run's environment is a production one.
    pub fn production(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.production)
    }

    /// The release type, `unknown` when the plan is unreadable.
    pub fn release_type(&self) -> &'static str {
        self.plan
            .as_ref()
            .map_or("unknown", |p| p.release.release_type.as_str())
    }

    /// The services the run's plan deploys.
    pub fn services(&self) -> Vec<String> {
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

/// The run before `run` of the same release in the same environment, if any.
pub async fn previous_run(
    store: &dyn Store,
    run: &RunHistory,
) -> Result<Option<RunHistory>, GovernError> {
    let mut best: Option<RunRecord> = None;
    for r in store.runs(MAX_RUNS).await? {
        if r.id != run.record.id
            && r.release == run.record.release
            && r.environment == run.record.environment
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
