//! Run commands: `deploy`, `resume`, `status`, `logs`, `pause`, `promote`, `abort`,
//! `rollback`, `approve`, `history` — arguments in, one `slipway_ops` call, the outcome
//! rendered as text or JSON with its exit code. What the operations do is documented in
//! `slipway_ops::runs` and `slipway_ops::views`.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use slipway_engine::DriveOutcome;
use slipway_engine::event::RunState;
use slipway_model::exit;
use slipway_ops::runs::{self, DeployRequest, DeployStarted, DriveReport, DriveRequest, Handled};
use slipway_ops::views;

use crate::cli_util::{StoreArg, read_session, runtime, session};
use crate::out::{CliError, Output};
use crate::progress::{CliReporter, event_line};

/// `slipway deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The release spec.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// The environment to deploy to.
    #[arg(long)]
    pub env: String,
    /// Return the run id at once; the run continues in the background.
    #[arg(long)]
    pub detach: bool,
    /// Exit with code 3 instead of waiting for a window or approvals.
    #[arg(long)]
    pub no_wait: bool,
    /// Deploy inside a freeze (needs --reason and a second person's approval).
    #[arg(long, requires = "reason")]
    pub override_freeze: bool,
    /// Wait while another release holds the environment's lease instead of exiting 3.
    #[arg(long)]
    pub wait: bool,
    /// Deploy although the same inputs have not succeeded in the lifecycle's previous
    /// environment (needs --reason and an approver other than you; audited).
    #[arg(long, requires = "reason")]
    pub override_promotion: bool,
    /// Why the freeze or the promotion evidence is overridden (audited).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Commands that name one run.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run id (see `slipway history`).
    pub run: String,
    /// Exit with code 3 instead of waiting for a window or approvals.
    #[arg(long)]
    pub no_wait: bool,
    /// (promote) Wait while another release holds the environment's lease.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Run id (default: the latest run, as for `status` and `logs`).
    pub run: Option<String>,
    /// Exit with code 3 instead of waiting for a window or approvals.
    #[arg(long)]
    pub no_wait: bool,
    /// Wait while another release holds the environment's lease.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway rollback`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway rollback 20261126-033243-ef0a61 --reason \"checkout errors after release\""
)]
pub struct RollbackArgs {
    /// Run id (see `slipway history`).
    pub run: String,
    /// Why; journaled and audited with your identity.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Run id (default: the latest run).
    pub run: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Run id (default: the latest run).
    pub run: Option<String>,
    /// Keep following the journal until the run ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// Run id.
    pub run: String,
    /// The plan digest you reviewed; refused if the run executes another plan.
    #[arg(long)]
    pub digest: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub store: StoreArg,
}

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
fn render_drive(r: &DriveReport, readiness: &[slipway_checks::Verdict], out: &Output) -> i32 {
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
fn render_delivered(d: &runs::Delivered, out: &Output) -> i32 {
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

fn render_handled(h: Handled, reporter: &CliReporter, out: &Output) -> i32 {
    reporter.finish();
    match h {
        Handled::Delivered(d) => render_delivered(&d, out),
        Handled::Driven(r) => render_drive(&r, &[], out),
    }
}

/// `slipway deploy`.
pub fn deploy(a: DeployArgs, out: &Output) -> Result<i32, CliError> {
    let options = slipway_ops::planning::PlanOptions {
        override_promotion: if a.override_promotion {
            a.reason.clone()
        } else {
            None
        },
    };
    let planned =
        crate::cli_util::planned_with(&a.file, &a.env, a.store.store.as_deref(), &options, out)?;
    let reporter = Arc::new(CliReporter::new(Some(&planned.plan), out));
    let rt = runtime()?;
    rt.block_on(async {
        let s = session(&a.store).await?;
        let started = runs::deploy(
            &s,
            &planned,
            DeployRequest {
                file: a.file.clone(),
                detach: a.detach,
                drive: DriveRequest {
                    no_wait: a.no_wait,
                    wait_for_lease: a.wait,
                },
                override_freeze: if a.override_freeze {
                    a.reason.clone()
                } else {
                    None
                },
            },
            reporter.clone(),
        )
        .await;
        reporter.finish();
        let readiness = reporter.readiness();
        let started = match started {
            Ok(s) => s,
            Err(e) if out.json() && !readiness.is_empty() => {
                // The refusal with the rows that refused it, as one document.
                let e = CliError::from(e);
                out.json_value(&json!({
                    "ok": false,
                    "exit_code": e.code,
                    "error": e.message,
                    "hint": e.hint,
                    "readiness": readiness,
                }));
                return Err(CliError::new(e.code, "", None));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(match started {
            DeployStarted::Detached { run, continued } => {
                if out.json() {
                    let mut v = json!({"run": run, "detached": true, "continued": continued});
                    if !readiness.is_empty() {
                        v["readiness"] = json!(readiness);
                    }
                    out.json_value(&v);
                } else {
                    out.line(&run);
                }
                exit::SUCCESS
            }
            DeployStarted::Driven(r) => render_drive(&r, &readiness, out),
        })
    })
}

/// `slipway resume`.
pub fn resume(a: ResumeArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let run = match a.run {
            Some(r) => r,
            None => {
                let r = views::latest_run(&s).await?;
                // It acts on a run nobody named: say which.
                if !out.json() {
                    out.eline(&format!("resuming the latest run, {r}"));
                }
                r
            }
        };
        let plan = runs::load_run(s.store.as_ref(), &run)
            .await
            .ok()
            .and_then(|r| runs::plan_of(&r));
        let reporter = Arc::new(CliReporter::new(plan.as_ref(), out));
        let req = DriveRequest {
            no_wait: a.no_wait,
            wait_for_lease: a.wait,
        };
        let h = runs::resume(&s, &run, req, reporter.clone()).await?;
        Ok(render_handled(h, &reporter, out))
    })
}

/// `slipway promote`: the canary of a run becomes the new stable now.
pub fn promote(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let plan = runs::load_run(s.store.as_ref(), &a.run)
            .await
            .ok()
            .and_then(|r| runs::plan_of(&r));
        let reporter = Arc::new(CliReporter::new(plan.as_ref(), out));
        let req = DriveRequest {
            no_wait: a.no_wait,
            wait_for_lease: a.wait,
        };
        let h = runs::promote(&s, &a.run, req, reporter.clone()).await?;
        Ok(render_handled(h, &reporter, out))
    })
}

/// `slipway status`.
pub fn status(a: StatusArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let id = match a.run {
            Some(r) => r,
            None => views::latest_run(&s).await?,
        };
        let v = views::run(&s, &id).await?;
        let (perf, perf_lines) = crate::perf_report::run_perf(&v.run_dir);
        if out.json() {
            let mut doc = serde_json::to_value(&v).unwrap_or_default();
            doc["perf"] = perf;
            out.json_value(&doc);
        } else {
            crate::status_view::render_status(&v, &perf_lines, out);
        }
        Ok(exit::SUCCESS)
    })
}

/// `slipway logs`.
pub fn logs(a: LogsArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let run = match a.run {
            Some(r) => r,
            None => views::latest_run(&s).await?,
        };
        views::journal(&s, &run, a.follow, |n| {
            if out.json() {
                // One JSON object per line: a stream a pipeline can follow.
                out.line(&serde_json::to_string(n).unwrap_or_default());
            } else if let Some(line) = event_line(n, out) {
                out.line(&format!("{} {line}", n.at.strftime("%H:%M:%S")));
            }
        })
        .await?;
        Ok(exit::SUCCESS)
    })
}

fn render_control(c: &runs::Controlled, out: &Output) -> i32 {
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

/// `slipway pause`.
pub fn pause(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let c = runs::pause(&s, &a.run).await?;
        Ok(render_control(&c, out))
    })
}

/// `slipway abort`: stop a run where it is (see README, "rollback and abort").
pub fn abort(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let reporter = Arc::new(CliReporter::new(None, out));
        let c = runs::abort(&s, &a.run, reporter.clone()).await;
        reporter.finish();
        Ok(render_control(&c?, out))
    })
}

/// `slipway rollback`: take a run's release back by hand (see README, "rollback and
/// abort"). Exit 0 once it is rolled back (or aborted when nothing had run), 1 when an
/// undo failed.
pub fn rollback(a: RollbackArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let reporter = Arc::new(CliReporter::new(None, out));
        let r = runs::rollback(&s, &a.run, &a.reason, reporter.clone()).await;
        reporter.finish();
        let r = r?;
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
        Ok(code)
    })
}

/// `slipway approve`.
pub fn approve(a: ApproveArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let ap = runs::approve(&s, &a.run, a.digest.as_deref()).await?;
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
        Ok(exit::SUCCESS)
    })
}

/// `slipway history`.
pub fn history(a: HistoryArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let runs = views::history(&s, a.limit).await?;
        if out.json() {
            out.json_value(&runs);
        } else {
            let mut t = comfy_table::Table::new();
            t.set_header(["run", "release", "version", "env", "state", "created"]);
            for r in &runs {
                t.add_row([
                    r.id.clone(),
                    r.release.clone(),
                    r.version.clone(),
                    r.environment.clone(),
                    r.state.as_str().to_owned(),
                    r.created_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            out.line(&t.to_string());
        }
        Ok(exit::SUCCESS)
    })
}
