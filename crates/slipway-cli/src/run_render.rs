//! How the run commands show their outcomes: text for a person, one JSON document for a
//! pipeline, and the exit code that goes with each outcome (`slipway_model::exit`).

use serde_json::json;
use slipway_engine::DriveOutcome;
use slipway_engine::event::RunState;
use slipway_model::exit;
use slipway_ops::runs::{self, DriveReport};

use crate::out::Output;
use crate::run_client::{Approved, Control, History, RolledBack, Status};

fn exit_for(r: &DriveReport) -> i32 {
    if !r.not_deployed.is_empty() && r.outcome == DriveOutcome::Finished(RunState::Succeeded) {
        return exit::PARTIAL;
    }
    match &r.outcome {
        DriveOutcome::Finished(RunState::Succeeded) => exit::SUCCESS,
        DriveOutcome::Finished(RunState::RolledBack) => exit::ROLLED_BACK,
        DriveOutcome::Finished(RunState::Aborted) => exit::ABORTED,
        DriveOutcome::Finished(_) => exit::FAILURE,
        DriveOutcome::Paused => exit::PAUSED,
        DriveOutcome::Blocked { .. } => exit::BLOCKED,
    }
}

/// The end of a drive: its outcome as JSON, or the reason, warnings and one line.
pub fn render_drive(r: &DriveReport, readiness: &[slipway_checks::Verdict], out: &Output) -> i32 {
    let code = exit_for(r);
    if out.json() {
        let mut v = match &r.outcome {
            DriveOutcome::Finished(s) => json!({"run": r.run, "state": s}),
            DriveOutcome::Paused => json!({"run": r.run, "state": "paused"}),
            DriveOutcome::Blocked {
                gate,
                detail,
                opens_at,
            } => json!({
                "run": r.run, "state": "blocked",
                "blocked": {"gate": gate, "detail": detail, "opens_at": opens_at.map(|t| t.to_string())},
            }),
        };
        v["continued"] = json!(r.continued);
        v["exit_code"] = json!(code);
        if let Some(reason) = &r.reason {
            v["reason"] = json!(reason);
        }
        if !r.failed_hosts.is_empty() {
            v["failed_hosts"] = json!(r.failed_hosts);
        }
        if !r.not_deployed.is_empty() {
            v["not_deployed"] = json!(r.not_deployed);
            v["outcome"] = json!("partially_succeeded");
        }
        if !readiness.is_empty() {
            v["readiness"] = json!(readiness);
        }
        out.json_value(&v);
        return code;
    }
    if !r.not_deployed.is_empty() {
        out.eline(&format!(
            "warning: succeeded partially: {} not deployed: {} (exit {}); see `slipway status {}`",
            if r.not_deployed.len() == 1 {
                "1 service"
            } else {
                "services"
            },
            r.reason
                .as_deref()
                .and_then(|x| x.strip_prefix(slipway_engine::engine::PARTIAL_PREFIX))
                .map_or_else(|| r.not_deployed.join(", "), str::to_owned),
            exit::PARTIAL,
            r.run
        ));
    } else if let Some(reason) = &r.reason {
        out.eline(&format!("reason: {reason}"));
    }
    if !r.failed_hosts.is_empty() {
        out.eline(&format!(
            "warning: succeeded with {} host{} failed within the failure budget (left out of the later steps): {}; see `slipway status {}`",
            r.failed_hosts.len(),
            if r.failed_hosts.len() == 1 { "" } else { "s" },
            r.failed_hosts.join(", "),
            r.run
        ));
    }
    match &r.outcome {
        DriveOutcome::Finished(s) => out.line(&format!("run {} {}", r.run, s.as_str())),
        DriveOutcome::Paused => out.line(&format!(
            "run {} paused; continue with `slipway resume {}`",
            r.run, r.run
        )),
        DriveOutcome::Blocked { gate, detail, .. } => out.line(&format!(
            "run {} blocked by {gate}: {detail}; continue later with `slipway resume {}`",
            r.run, r.run
        )),
    }
    code
}

/// A request handed to a live driver, as the person who sent it reads it.
pub fn render_delivered(d: &runs::Delivered, out: &Output) -> i32 {
    if out.json() {
        out.json_value(&json!({"run": d.run, "requested": d.requested, "state": d.state, "delivered_to": "driver"}));
    } else {
        out.line(&format!(
            "{} sent to the driver of run {} (its canary acts on it within an analysis interval; follow with `slipway logs -f {}`)",
            d.requested, d.run, d.run
        ));
    }
    exit::SUCCESS
}

/// A pause or abort.
pub fn render_control(c: &Control, out: &Output) -> i32 {
    if out.json() {
        out.json_value(
            &json!({"run": c.run, "requested": c.requested, "state": c.state, "reason": c.reason}),
        );
    } else {
        if let Some(r) = c.reason.as_ref().filter(|_| c.state.is_terminal()) {
            out.eline(&format!("reason: {r}"));
        }
        out.line(&format!(
            "{} requested for run {} (now {})",
            c.requested,
            c.run,
            c.state.as_str()
        ));
    }
    exit::SUCCESS
}

/// Print a settled run's line and return its code.
pub fn render_settled(run: &str, state: RunState, out: &Output, code: i32) -> i32 {
    if out.json() {
        out.json_value(&json!({"run": run, "state": state, "exit_code": code}));
    } else {
        out.line(&format!("run {run} {}", state.as_str()));
    }
    code
}

/// A manual rollback: exit 0 once it is rolled back (or aborted when nothing had run), 1
/// when an undo failed.
pub fn render_rollback(r: &RolledBack, out: &Output) -> i32 {
    let code = match r.state {
        RunState::RolledBack | RunState::Aborted => exit::SUCCESS,
        _ => exit::FAILURE,
    };
    if out.json() {
        out.json_value(&json!({"run": r.run, "state": r.state.as_str(), "reason": r.reason, "by_driver": r.by_driver, "exit_code": code}));
    } else {
        if code != exit::SUCCESS
            && let Some(reason) = &r.reason
        {
            out.eline(&format!("reason: {reason}"));
        }
        out.line(&format!("run {} → {}", r.run, r.state.as_str()));
    }
    code
}

/// An approval given.
pub fn render_approved(ap: &Approved, out: &Output) -> i32 {
    if out.json() {
        out.json_value(
            &json!({"run": ap.run, "approver": ap.approver, "digest": ap.digest,
            "valid": ap.valid, "required": ap.required}),
        );
    } else {
        out.line(&format!(
            "approved plan {} of run {} ({}/{} approvals)",
            &ap.digest[..ap.digest.len().min(12)],
            ap.run,
            ap.valid,
            ap.required
        ));
    }
    exit::SUCCESS
}

/// The run history as a table.
pub fn render_history(h: &History, out: &Output) -> i32 {
    if out.json() {
        out.json_value(&h.json);
        return exit::SUCCESS;
    }
    let mut t = comfy_table::Table::new();
    t.set_header(["run", "release", "version", "env", "state", "created"]);
    for r in &h.rows {
        t.add_row([
            r.id.clone(),
            r.release.clone(),
            r.version.clone(),
            r.environment.clone(),
            r.state.clone(),
            r.created
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
        ]);
    }
    out.line(&t.to_string());
    exit::SUCCESS
}

/// A run's status; `None` when the text view cannot be drawn from what the server sent.
pub fn render_status(s: &Status, out: &Output) -> Option<i32> {
    if out.json() {
        out.json_value(&s.json);
    } else {
        crate::status_view::render_status(s.view.as_ref()?, &s.perf_lines, out);
    }
    Some(exit::SUCCESS)
}
