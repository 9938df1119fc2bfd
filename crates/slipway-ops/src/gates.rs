//! Gates a deploy passes before a run is created, besides the engine's own (windows,
//! freezes, approvals): retrospective checklist items and committed, valid infrastructure.

use std::path::Path;
use std::time::Duration;

use slipway_checks::{Outcome, Verdict};
use slipway_model::plan::{GateKind, Plan};
use slipway_model::spec::ChecklistItem;
use slipway_store::checklist::{Ack, ChecklistDb};

use crate::error::{Hint, OpsError, OpsResult};
use crate::session::Session;

/// An item's state for one plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemState {
    /// Item id.
    pub id: String,
    /// What it says.
    pub text: String,
    /// `check`, `acknowledged` or `open`.
    pub state: &'static str,
    /// Why.
    pub detail: String,
}

/// The checklist items a plan gates on.
pub fn checklist_items(plan: &Plan) -> Vec<ChecklistItem> {
    plan.gates
        .iter()
        .find_map(|g| match &g.kind {
            GateKind::Checklist { items } => Some(items.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Each checklist item's state for a plan, given the acknowledgements for its release,
/// version and environment.
pub fn checklist_states(plan: &Plan, acks: &[Ack]) -> Vec<ItemState> {
    let planned: Vec<&String> = plan
        .gates
        .iter()
        .filter_map(|g| match &g.kind {
            GateKind::Checks { names, .. } => Some(names),
            _ => None,
        })
        .flatten()
        .collect();
    checklist_items(plan)
        .into_iter()
        .map(|i| {
            let by_check = i.check.as_ref().filter(|c| planned.contains(c));
            let ack = acks.iter().find(|a| a.item == i.id);
            let (state, detail) = match (by_check, ack) {
                (Some(c), _) => ("check", format!("check {c} runs in this plan")),
                (None, Some(a)) => (
                    "acknowledged",
                    format!("by {} at {}: {}", a.acknowledged_by, a.at, a.note),
                ),
                (None, None) => (
                    "open",
                    match &i.check {
                        Some(c) => {
                            format!("check {c} is not run in this environment; acknowledge instead")
                        }
                        None => "needs an acknowledgement for this version and environment".into(),
                    },
                ),
            };
            ItemState {
                id: i.id,
                text: i.text,
                state,
                detail,
            }
        })
        .collect()
}

/// Refuse a deploy while a checklist item of the plan is open. Acknowledgements are kept
/// only in an SQLite store so far: on PostgreSQL a plan with a checklist is refused (it
/// could never be acknowledged there), one without deploys.
pub async fn require_checklist(session: &Session, plan: &Plan) -> OpsResult<()> {
    if checklist_items(plan).is_empty() {
        return Ok(());
    }
    let db_path = session.sqlite_only("slipway deploy", "checklist acknowledgements")?;
    let db = ChecklistDb::open(db_path).await?;
    let acks = db
        .acks(&plan.release.name, &plan.release.version, &plan.environment)
        .await?;
    db.close().await;
    let open: Vec<ItemState> = checklist_states(plan, &acks)
        .into_iter()
        .filter(|s| s.state == "open")
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(OpsError::blocked(format!(
        "failed to deploy: {} checklist item(s) open for {} {} in {}: {}",
        open.len(),
        plan.release.name,
        plan.release.version,
        plan.environment,
        open.iter()
            .map(|s| format!("{} ({}; {})", s.id, s.text, s.detail))
            .collect::<Vec<_>>()
            .join("; ")
    ))
    .hint(Hint::text(format!(
        "do what the item says, then `slipway checklist ack {} -f SPEC --env {} --note \"what was done\"`",
        open[0].id, plan.environment
    ))))
}

/// The infrastructure rows of an environment: each declared path committed and clean, and
/// its validation command passing.
pub async fn infra_rows(
    spec_dir: &Path,
    infra: &slipway_model::spec::Infrastructure,
    timeout: Duration,
) -> Vec<Verdict> {
    let mut rows: Vec<Verdict> = infra
        .paths
        .iter()
        .map(|p| slipway_checks::infra::check_path(spec_dir, p))
        .collect();
    if let Some(cmd) = &infra.validate {
        rows.push(
            slipway_checks::infra::validate(spec_dir, cmd, timeout.max(Duration::from_secs(60)))
                .await,
        );
    }
    rows
}

/// Infrastructure must be committed, clean and valid before anything is touched. The rows
/// are returned to be kept with the run.
pub async fn require_infrastructure(file: &Path, plan: &Plan) -> OpsResult<Option<Vec<Verdict>>> {
    let Some(infra) = &plan.env.infrastructure else {
        return Ok(None);
    };
    let rows = infra_rows(
        crate::planning::spec_dir(file),
        infra,
        Duration::from_secs(60),
    )
    .await;
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.verdict == Outcome::Fail)
        .map(|r| format!("{}: {} (expected {})", r.target, r.measured, r.expected))
        .collect();
    if !bad.is_empty() {
        return Err(OpsError::blocked(format!(
            "failed to deploy: the environment's infrastructure is not ready: {}",
            bad.join("; ")
        ))
        .hint(Hint::text(
            "commit the infrastructure files and make the validation pass",
        ))
        .hint(Hint::Check {
            file: file.to_path_buf(),
            environment: plan.environment.clone(),
            only: "infra".into(),
        }));
    }
    Ok(Some(rows))
}
