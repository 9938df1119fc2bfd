//! The change gate around a run: the environment's change system
//! (`environments.X.change`, see `slipway_providers::change`) is asked when planning (a
//! finding), again when a deploy starts (refused before a run exists), by the engine
//! before the first wave (the plan's `change_approved` gate, through the check runner),
//! and told the outcome when the run ends.
//!
//! Where the configuration lives: in the environment's section of the spec for now;
//! it belongs in the admin-owned policy (the release being governed should not choose the
//! system that governs it), and moves there with that policy.

use slipway_engine::RunState;
use slipway_model::plan::{Finding, Plan};
use slipway_providers::change::{ChangeClient, Outcome, RunSummary, gate_of};

use crate::error::{Hint, OpsError, OpsResult};
use crate::events::{OpsEvent, Reporter};

/// What planning says about the plan's change record: `change-approved` (info) when a
/// deploy may go now; a window that opens later is a warning (the plan may be approved
/// ahead of it, and `deploy` refuses until then); anything else is an error.
pub async fn plan_findings(plan: &Plan) -> Vec<Finding> {
    let Some((_, record)) = gate_of(plan) else {
        return Vec::new();
    };
    // A missing record is the planner's own `change-record-missing` finding.
    let Some(record) = record else {
        return Vec::new();
    };
    let client = match ChangeClient::from_plan(plan) {
        None => return Vec::new(),
        Some(Err(e)) => {
            return vec![Finding {
                severity: slipway_model::plan::FindingSeverity::Error,
                code: "change-unverified".into(),
                message: format!("{record} could not be checked: {e}"),
            }];
        }
        Some(Ok(c)) => c,
    };
    let j = client.judge(Some(&record), slipway_stdx::now()).await;
    let severity = match j.code {
        "change-approved" => slipway_model::plan::FindingSeverity::Info,
        "change-window-not-open" => slipway_model::plan::FindingSeverity::Warning,
        _ => slipway_model::plan::FindingSeverity::Error,
    };
    vec![Finding {
        severity,
        code: j.code.into(),
        message: format!("{}; {}", j.measured, j.detail),
    }]
}

/// Refuse a deploy whose change record is not approved, or outside its window, now —
/// before a run exists. Nothing to check without a change gate.
pub async fn require_approved(plan: &Plan) -> OpsResult<()> {
    let Some((system, record)) = gate_of(plan) else {
        return Ok(());
    };
    let client = match ChangeClient::from_plan(plan) {
        None => {
            return Err(OpsError::blocked(format!(
                "failed to deploy: the plan gates on a change in {system}, but environments.{}.change is gone",
                plan.environment
            )));
        }
        Some(Err(e)) => {
            return Err(OpsError::blocked(format!(
                "failed to deploy: the change record could not be checked, no run was started: {e}"
            ))
            .hint(Hint::text(
                "set the change system's credentials in this shell, then deploy again",
            )));
        }
        Some(Ok(c)) => c,
    };
    let j = client.judge(record.as_deref(), slipway_stdx::now()).await;
    if j.passed {
        return Ok(());
    }
    Err(OpsError::blocked(format!(
        "failed to deploy: the change gate refused, no run was started: {} ({}; expected {})",
        j.code, j.measured, j.expected
    ))
    .hint(Hint::text(j.detail)))
}

/// How a finished run is written back, `None` for states that are not an end.
fn outcome_of(state: RunState) -> Option<Outcome> {
    Some(match state {
        RunState::Succeeded => Outcome::Succeeded,
        RunState::RolledBack => Outcome::RolledBack,
        RunState::Failed => Outcome::Failed,
        RunState::Aborted => Outcome::Aborted,
        _ => return None,
    })
}

/// Tell the change system how the run ended (best effort: the run's outcome stands
/// whatever the change system answers; a failure is reported as a warning naming the
/// record, so someone closes it by hand).
pub async fn write_back(
    plan: Option<&Plan>,
    run: &str,
    state: RunState,
    reason: Option<String>,
    reporter: &dyn Reporter,
) {
    let Some(plan) = plan else { return };
    let Some((_, Some(record))) = gate_of(plan) else {
        return;
    };
    let Some(outcome) = outcome_of(state) else {
        return;
    };
    let client = match ChangeClient::from_plan(plan) {
        None => return,
        Some(Err(e)) => {
            reporter.report(OpsEvent::Warning(format!(
                "the outcome of run {run} was not written to change {record}: {e}"
            )));
            return;
        }
        Some(Ok(c)) => c,
    };
    let summary = RunSummary {
        run: run.to_owned(),
        release: plan.release.name.clone(),
        version: plan.release.version.clone(),
        environment: plan.environment.clone(),
        reason,
    };
    match client.write_back(&record, outcome, &summary).await {
        Ok(what) => reporter.report(OpsEvent::ChangeWrittenBack {
            record: record.clone(),
            detail: what,
        }),
        Err(e) => reporter.report(OpsEvent::Warning(format!(
            "the outcome of run {run} ({}) was not written to change {record}: {e}; record it there by hand",
            outcome.as_str()
        ))),
    }
}
