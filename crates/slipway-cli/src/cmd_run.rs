//! Run commands: `deploy`, `resume`, `status`, `logs`, `pause`, `promote`, `abort`,
//! `rollback`, `approve`, `history`, `wait` — arguments in, one `slipway_ops` call, the
//! outcome rendered as text or JSON with its exit code. What the operations do is
//! documented in `slipway_ops::runs` and `slipway_ops::views`.
//!
//! With `--server URL` the same commands are one API call each instead
//! (`slipway_server::client`), as the caller's token, rendered the same way: the server
//! makes the same `slipway_ops` call for them. `deploy` packs the spec's directory into a
//! bundle (`slipway_package::bundle`), uploads it and has the server plan and drive it.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use slipway_engine::DriveOutcome;
use slipway_engine::event::RunState;
use slipway_model::exit;
use slipway_ops::runs::{self, DeployRequest, DeployStarted, DriveReport, DriveRequest, Handled};
use slipway_ops::views;

use crate::cli_util::{StoreArg, path_segment, read_session, remote, runtime, session};
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

/// `slipway wait`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes are the run's outcome: 0 succeeded, 1 failed, 4 rolled back, 5 paused, 6 aborted; 3 when --timeout passes first.\n\nExamples:\n  run=$(slipway deploy -f release.yaml --env prod --detach)\n  slipway wait \"$run\" --timeout 3600\n  slipway --server https://slipway.example.com wait \"$run\""
)]
pub struct WaitArgs {
    /// Run id.
    pub run: String,
    /// Give up after this many seconds (exit 3); without it, wait as long as it takes.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
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

/// `slipway --server URL deploy`: pack the spec's directory into a bundle, upload it,
/// start the run on the server, and (unless `--detach`) follow its journal until it ends,
/// pauses or — with `--no-wait` — stops at a gate, exiting with its outcome's code.
async fn deploy_remote(
    c: &slipway_server::client::Client,
    a: &DeployArgs,
    out: &Output,
) -> Result<i32, CliError> {
    use slipway_server::client::ClientError;
    let packed = slipway_package::bundle::pack(&a.file).map_err(|e| {
        CliError::input(
            format!("failed to pack the bundle of {}: {e}", a.file.display()),
            "deploy a spec whose directory holds only the release's files (no other links out of it, nothing over the size limit)",
        )
    })?;
    let files = packed.manifest.files.len();
    let digest = packed.sha256.clone();
    let (_, up) = c
        .post_bytes(
            &format!("/bundles?environment={}", path_segment(&a.env)),
            packed.bytes,
            &[(slipway_server::BUNDLE_DIGEST_HEADER, digest.as_str())],
        )
        .await?;
    if !out.json() {
        out.eline(&format!(
            "bundle sha256:{digest} ({files} files, {} bytes) {} {}",
            up["size"].as_u64().unwrap_or_default(),
            if up["stored"] == json!(true) {
                "uploaded to"
            } else {
                "already on"
            },
            c.server()
        ));
    }
    let body = json!({
        "bundle": digest,
        "environment": a.env,
        "no_wait": a.no_wait,
        "wait": a.wait,
        "override_freeze": if a.override_freeze { a.reason.clone() } else { None },
        "override_promotion": if a.override_promotion { a.reason.clone() } else { None },
    });
    let (status, doc) = match c.post("/runs", &body).await {
        Ok(r) => r,
        Err(ClientError::Api {
            status,
            error,
            fix,
            body,
        }) if body["findings"].is_array() => {
            // The refusal with its findings, as a local deploy shows them.
            let e = CliError::from(ClientError::Api {
                status,
                error,
                fix,
                body: body.clone(),
            });
            if out.json() {
                out.json_value(&json!({
                    "ok": false,
                    "exit_code": e.code,
                    "error": e.message,
                    "hint": e.hint,
                    "findings": body["findings"],
                }));
                return Err(CliError::new(e.code, "", None));
            }
            for f in body["findings"].as_array().into_iter().flatten() {
                out.eline(&format!(
                    "finding {} ({}): {}",
                    f["code"].as_str().unwrap_or_default(),
                    f["severity"].as_str().unwrap_or_default(),
                    f["message"].as_str().unwrap_or_default()
                ));
            }
            return Err(e);
        }
        Err(e) => return Err(e.into()),
    };
    if status != 202 {
        let r = drive_from_json(&doc).ok_or_else(|| unexpected(c, &"no drive outcome"))?;
        return Ok(render_drive(&r, &[], out));
    }
    let run = doc["run"]
        .as_str()
        .ok_or_else(|| unexpected(c, &"the run's id is missing"))?
        .to_owned();
    if a.detach {
        if out.json() {
            out.json_value(&json!({"run": run, "detached": true, "driving": "server"}));
        } else {
            out.line(&run);
        }
        return Ok(exit::SUCCESS);
    }
    if !out.json() {
        out.eline(&format!(
            "{} drives run {run}; following it (Ctrl-C stops following, not the run)",
            c.server()
        ));
    }
    let print = |n: &slipway_engine::Notice| {
        if !out.json()
            && let Some(line) = event_line(n, out)
        {
            out.line(&format!("{} {line}", n.at.strftime("%H:%M:%S")));
        }
    };
    let path = format!("/runs/{}/events", path_segment(&run));
    let events = c.events(&path, |event, data| {
        if event == "journal"
            && let Ok(n) = serde_json::from_str::<slipway_engine::Notice>(data)
        {
            print(&n);
        }
    });
    let mut events = std::pin::pin!(events);
    let (state, code) = tokio::select! {
        // The stream ends once the run is over and every entry was sent.
        streamed = &mut events => {
            streamed?;
            poll_remote(c, &run, None, a.no_wait).await?
        }
        settled = poll_remote(c, &run, None, a.no_wait) => {
            let settled = settled?;
            if settled.0.is_terminal() {
                // The last entries are on their way; the stream ends after them.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut events).await;
            }
            settled
        }
    };
    Ok(render_settled(&run, state, out, code))
}

/// `slipway deploy`.
pub fn deploy(a: DeployArgs, out: &Output) -> Result<i32, CliError> {
    if let Some(c) = remote()? {
        return runtime()?.block_on(deploy_remote(&c, &a, out));
    }
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
    if let Some(c) = remote()? {
        return rt.block_on(async {
            let run = match a.run {
                Some(r) => r,
                None => {
                    let r = remote_latest(&c).await?;
                    if !out.json() {
                        out.eline(&format!("resuming the latest run, {r}"));
                    }
                    r
                }
            };
            let body = json!({"no_wait": a.no_wait, "wait": a.wait});
            remote_drive(&c, &run, "resume", &body, out).await
        });
    }
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
    if let Some(c) = remote()? {
        let body = json!({"no_wait": a.no_wait, "wait": a.wait});
        return rt.block_on(remote_drive(&c, &a.run, "promote", &body, out));
    }
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
    if let Some(c) = remote()? {
        return rt.block_on(async {
            let id = match a.run {
                Some(r) => r,
                None => remote_latest(&c).await?,
            };
            let doc = c
                .get(&format!("/runs/{}/status", path_segment(&id)))
                .await?;
            if out.json() {
                out.json_value(&doc);
            } else {
                let v = run_view_from_json(&doc).ok_or_else(|| {
                    CliError::new(
                        exit::INTERNAL,
                        format!(
                            "failed to read the status of run {id} from {}: an unexpected document",
                            c.server()
                        ),
                        Some("use the same slipway version as the server".into()),
                    )
                })?;
                crate::status_view::render_status(&v, &[], out);
            }
            Ok(exit::SUCCESS)
        });
    }
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
    let print = |n: &slipway_engine::Notice| {
        if out.json() {
            out.line(&serde_json::to_string(n).unwrap_or_default());
        } else if let Some(line) = event_line(n, out) {
            out.line(&format!("{} {line}", n.at.strftime("%H:%M:%S")));
        }
    };
    if let Some(c) = remote()? {
        return rt.block_on(async {
            let run = match a.run {
                Some(r) => r,
                None => remote_latest(&c).await?,
            };
            let run = path_segment(&run);
            if a.follow {
                // The event stream: every entry, then `end` once the run is over.
                let mut ended = None;
                c.events(&format!("/runs/{run}/events"), |event, data| match event {
                    "journal" => {
                        if let Ok(n) = serde_json::from_str::<slipway_engine::Notice>(data) {
                            print(&n);
                        }
                    }
                    "end" => ended = Some(data.to_owned()),
                    _ => {}
                })
                .await?;
                // An `end` naming an error (the token revoked meanwhile) is a failure.
                if let Some(err) = ended
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                    .and_then(|d| d["error"].as_str().map(str::to_owned))
                {
                    return Err(CliError::new(
                        exit::UNAUTHENTICATED,
                        format!("the event stream ended: {err}"),
                        None,
                    ));
                }
            } else {
                let doc = c.get(&format!("/runs/{run}/journal")).await?;
                let entries: Vec<slipway_engine::Notice> =
                    serde_json::from_value(doc["entries"].clone()).unwrap_or_default();
                for n in &entries {
                    print(n);
                }
            }
            Ok(exit::SUCCESS)
        });
    }
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let run = match a.run {
            Some(r) => r,
            None => views::latest_run(&s).await?,
        };
        // One JSON object per line: a stream a pipeline can follow.
        views::journal(&s, &run, a.follow, print).await?;
        Ok(exit::SUCCESS)
    })
}

/// A pause or abort as rendered, from the operation or from the server's answer.
#[derive(Debug, serde::Deserialize)]
struct Control {
    run: String,
    requested: String,
    state: RunState,
    #[serde(default)]
    reason: Option<String>,
}

impl From<runs::Controlled> for Control {
    fn from(c: runs::Controlled) -> Self {
        Self {
            run: c.run,
            requested: c.requested.to_owned(),
            state: c.state,
            reason: c.reason,
        }
    }
}

fn render_control(c: &Control, out: &Output) -> i32 {
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
    if let Some(c) = remote()? {
        return rt.block_on(remote_control(&c, &a.run, "pause", out));
    }
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let c = runs::pause(&s, &a.run).await?;
        Ok(render_control(&c.into(), out))
    })
}

/// `slipway abort`: stop a run where it is (see README, "rollback and abort").
pub fn abort(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    if let Some(c) = remote()? {
        return rt.block_on(remote_control(&c, &a.run, "abort", out));
    }
    rt.block_on(async {
        let s = read_session(&a.store).await?;
        let reporter = Arc::new(CliReporter::new(None, out));
        let c = runs::abort(&s, &a.run, reporter.clone()).await;
        reporter.finish();
        Ok(render_control(&c?.into(), out))
    })
}

/// `slipway rollback`: take a run's release back by hand (see README, "rollback and
/// abort"). Exit 0 once it is rolled back (or aborted when nothing had run), 1 when an
/// undo failed.
pub fn rollback(a: RollbackArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let r = match remote()? {
            Some(c) => {
                let (_, doc) = c
                    .post(
                        &format!("/runs/{}/rollback", path_segment(&a.run)),
                        &json!({"reason": a.reason}),
                    )
                    .await?;
                serde_json::from_value::<RolledBack>(doc).map_err(|e| unexpected(&c, &e))?
            }
            None => {
                let s = read_session(&a.store).await?;
                let reporter = Arc::new(CliReporter::new(None, out));
                let r = runs::rollback(&s, &a.run, &a.reason, reporter.clone()).await;
                reporter.finish();
                let r = r?;
                RolledBack {
                    run: r.run,
                    state: r.state,
                    reason: r.reason,
                    by_driver: r.by_driver,
                }
            }
        };
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
        let ap = match remote()? {
            Some(c) => {
                let (_, doc) = c
                    .post(
                        &format!("/runs/{}/approve", path_segment(&a.run)),
                        &json!({"digest": a.digest}),
                    )
                    .await?;
                serde_json::from_value::<Approved>(doc).map_err(|e| unexpected(&c, &e))?
            }
            None => {
                let s = read_session(&a.store).await?;
                let ap = runs::approve(&s, &a.run, a.digest.as_deref()).await?;
                Approved {
                    run: ap.run,
                    approver: ap.approver,
                    digest: ap.digest,
                    valid: ap.valid,
                    required: ap.required,
                }
            }
        };
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
        if let Some(c) = remote()? {
            let doc = c
                .get(&format!("/runs?limit={}", a.limit.clamp(1, 1000)))
                .await?;
            if out.json() {
                out.json_value(&doc["runs"]);
                return Ok(exit::SUCCESS);
            }
            let mut t = comfy_table::Table::new();
            t.set_header(["run", "release", "version", "env", "state", "created"]);
            for r in doc["runs"].as_array().into_iter().flatten() {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                let created = text("started_at")
                    .parse::<jiff::Timestamp>()
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                t.add_row([
                    text("id"),
                    text("release"),
                    text("version"),
                    text("environment"),
                    text("state"),
                    created,
                ]);
            }
            out.line(&t.to_string());
            return Ok(exit::SUCCESS);
        }
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

/// A manual rollback's outcome, from the operation or from the server's answer.
#[derive(Debug, serde::Deserialize)]
struct RolledBack {
    run: String,
    state: RunState,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    by_driver: bool,
}

/// An approval's outcome, from the operation or from the server's answer.
#[derive(Debug, serde::Deserialize)]
struct Approved {
    run: String,
    approver: String,
    digest: String,
    valid: usize,
    required: u32,
}

/// An answer of the server this version does not read.
fn unexpected(c: &slipway_server::client::Client, e: &dyn std::fmt::Display) -> CliError {
    CliError::new(
        exit::INTERNAL,
        format!("failed to read the answer of {}: {e}", c.server()),
        Some("use the same slipway version as the server".into()),
    )
}

/// The newest run the caller may read on the server.
async fn remote_latest(c: &slipway_server::client::Client) -> Result<String, CliError> {
    let doc = c.get("/runs?limit=1").await?;
    doc["runs"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            CliError::input(
                format!(
                    "failed to find a run: {} lists none you may read",
                    c.server()
                ),
                "start one with a deploy",
            )
        })
}

/// `pause` / `abort` through the server.
async fn remote_control(
    c: &slipway_server::client::Client,
    run: &str,
    what: &str,
    out: &Output,
) -> Result<i32, CliError> {
    let (_, doc) = c
        .post(&format!("/runs/{}/{what}", path_segment(run)), &json!({}))
        .await?;
    let control: Control = serde_json::from_value(doc).map_err(|e| unexpected(c, &e))?;
    Ok(render_control(&control, out))
}

/// A drive's outcome as the server reports it (`slipway_server`'s `drive_json`).
fn drive_from_json(v: &serde_json::Value) -> Option<DriveReport> {
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    let list =
        |k: &str| -> Vec<String> { serde_json::from_value(v[k].clone()).unwrap_or_default() };
    let outcome = match v["outcome"].as_str()? {
        "finished" => DriveOutcome::Finished(serde_json::from_value(v["state"].clone()).ok()?),
        "paused" => DriveOutcome::Paused,
        "blocked" => DriveOutcome::Blocked {
            gate: v["blocked"]["gate"].as_str()?.to_owned(),
            detail: v["blocked"]["detail"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            opens_at: v["blocked"]["opens_at"]
                .as_str()
                .and_then(|t| t.parse().ok()),
        },
        _ => return None,
    };
    Some(DriveReport {
        run: text("run")?,
        outcome,
        continued: v["continued"].as_bool().unwrap_or(true),
        reason: text("reason"),
        failed_hosts: list("failed_hosts"),
        not_deployed: list("not_deployed"),
    })
}

/// `resume` / `promote` through the server: handed to the run's live driver, driven to
/// its end by the server within the request, or — the usual case — driven by the server
/// in the background (202): then followed here until it ends, pauses or stops at a gate,
/// as a local resume would.
async fn remote_drive(
    c: &slipway_server::client::Client,
    run: &str,
    what: &str,
    body: &serde_json::Value,
    out: &Output,
) -> Result<i32, CliError> {
    let (status, doc) = c
        .post(&format!("/runs/{}/{what}", path_segment(run)), body)
        .await?;
    if doc.get("delivered_to").is_some() {
        let d: runs::Delivered = runs::Delivered {
            run: doc["run"].as_str().unwrap_or(run).to_owned(),
            requested: doc["requested"].as_str().unwrap_or(what).to_owned(),
            state: serde_json::from_value(doc["state"].clone()).map_err(|e| unexpected(c, &e))?,
        };
        return Ok(render_delivered(&d, out));
    }
    if status == 202 {
        if !out.json() {
            out.eline(&format!(
                "{} drives run {run}; following it (Ctrl-C stops following, not the run)",
                c.server()
            ));
        }
        return follow_remote(c, run, None, true, out).await;
    }
    let r = drive_from_json(&doc).ok_or_else(|| unexpected(c, &"no drive outcome"))?;
    Ok(render_drive(&r, &[], out))
}

/// The exit code of a run's state once it has settled: its outcome's code, `None` while
/// it is still going.
fn settled_code(state: RunState) -> Option<i32> {
    match state {
        RunState::Succeeded => Some(exit::SUCCESS),
        RunState::RolledBack => Some(exit::ROLLED_BACK),
        RunState::Aborted => Some(exit::ABORTED),
        RunState::Failed => Some(exit::FAILURE),
        RunState::Paused => Some(exit::PAUSED),
        _ => None,
    }
}

/// How often `wait` and a followed remote drive look at the run.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Print a settled run's line and return its code.
fn render_settled(run: &str, state: RunState, out: &Output, code: i32) -> i32 {
    if out.json() {
        out.json_value(&json!({"run": run, "state": state, "exit_code": code}));
    } else {
        out.line(&format!("run {run} {}", state.as_str()));
    }
    code
}

/// Follow a run on the server until it settles (see [`settled_code`]); with
/// `gate_stops`, a run waiting at a gate that nobody drives stops the wait too (exit 3).
async fn follow_remote(
    c: &slipway_server::client::Client,
    run: &str,
    deadline: Option<std::time::Instant>,
    gate_stops: bool,
    out: &Output,
) -> Result<i32, CliError> {
    let (state, code) = poll_remote(c, run, deadline, gate_stops).await?;
    Ok(render_settled(run, state, out, code))
}

/// [`follow_remote`] without the rendering: the settled state and its exit code.
async fn poll_remote(
    c: &slipway_server::client::Client,
    run: &str,
    deadline: Option<std::time::Instant>,
    gate_stops: bool,
) -> Result<(RunState, i32), CliError> {
    loop {
        let doc = c
            .get(&format!("/runs/{}/status", path_segment(run)))
            .await?;
        let state: RunState =
            serde_json::from_value(doc["run"]["state"].clone()).map_err(|e| unexpected(c, &e))?;
        if let Some(code) = settled_code(state) {
            return Ok((state, code));
        }
        let waiting = matches!(
            state,
            RunState::WaitingForApproval | RunState::WaitingForWindow
        );
        if gate_stops && waiting && doc["driven"] == json!(false) {
            return Ok((state, exit::BLOCKED));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(timed_out(run, state));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn timed_out(run: &str, state: RunState) -> CliError {
    CliError::new(
        exit::BLOCKED,
        format!(
            "run {run} is still {} at the end of --timeout",
            state.as_str()
        ),
        Some(format!(
            "wait again with `slipway wait {run}`, or see `slipway status {run}`"
        )),
    )
}

/// `slipway wait`: until the run ends or pauses, then exit with its outcome's code.
pub fn wait(a: WaitArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let deadline = a
        .timeout
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    rt.block_on(async {
        if let Some(c) = remote()? {
            return follow_remote(&c, &a.run, deadline, false, out).await;
        }
        let s = read_session(&a.store).await?;
        loop {
            let v = views::run(&s, &a.run).await?;
            if let Some(code) = settled_code(v.run.state) {
                return Ok(render_settled(&a.run, v.run.state, out, code));
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(timed_out(&a.run, v.run.state));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    })
}

/// The status document of the server (`slipway_ops::views::RunView` as JSON) as the view
/// `render_status` draws; `None` when it does not read as one.
fn run_view_from_json(v: &serde_json::Value) -> Option<views::RunView> {
    use slipway_providers::compose::{ProxyView, RouterView, ServiceTraffic};
    let de = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let values =
        |k: &str| -> Vec<serde_json::Value> { serde_json::from_value(de(k)).unwrap_or_default() };
    let services = v["services"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, s)| {
                    let state = match s["state"].as_str().unwrap_or_default() {
                        "deployed" => "deployed",
                        "not_deployed" => "not_deployed",
                        "in_progress" => "in_progress",
                        "partial" => "partial",
                        _ => "unknown",
                    };
                    (
                        name.clone(),
                        views::ServiceVersion {
                            version: s["version"].as_str().map(str::to_owned),
                            target: s["target"].as_str().unwrap_or_default().to_owned(),
                            previous: s["previous"].as_str().map(str::to_owned),
                            state,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let traffic = v["traffic"].as_object().map(|m| {
        m.iter()
            .map(|(name, t)| {
                let weight =
                    |x: &serde_json::Value| x["weight"].as_u64().and_then(|w| u8::try_from(w).ok());
                (
                    name.clone(),
                    ServiceTraffic {
                        proxy: t["proxy"].as_object().map(|_| ProxyView {
                            pid: t["proxy"]["pid"]
                                .as_u64()
                                .and_then(|p| u32::try_from(p).ok())
                                .unwrap_or(0),
                            traffic: t["proxy"]["traffic"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            weight: weight(&t["proxy"]),
                            requests: t["proxy"].get("requests").cloned(),
                            errors: t["proxy"].get("errors").cloned(),
                        }),
                        instances: serde_json::from_value(t["instances"].clone())
                            .unwrap_or_default(),
                        router: t["router"].as_object().map(|_| RouterView {
                            via: t["router"]["via"].as_str().unwrap_or_default().to_owned(),
                            weight: weight(&t["router"]),
                        }),
                    },
                )
            })
            .collect()
    });
    Some(views::RunView {
        run: serde_json::from_value(de("run")).ok()?,
        steps_total: usize::try_from(v["steps_total"].as_u64()?).ok()?,
        steps_succeeded: usize::try_from(v["steps_succeeded"].as_u64()?).ok()?,
        steps: serde_json::from_value(de("steps")).ok()?,
        driven: v["driven"].as_bool(),
        approvals: views::ApprovalsView {
            required: u32::try_from(v["approvals"]["required"].as_u64().unwrap_or(0)).ok()?,
            valid: serde_json::from_value(v["approvals"]["valid"].clone()).unwrap_or_default(),
            rejected: serde_json::from_value(v["approvals"]["rejected"].clone())
                .unwrap_or_default(),
        },
        config: values("config"),
        traffic,
        hosts: values("hosts"),
        failed_hosts: serde_json::from_value(de("failed_hosts")).unwrap_or_default(),
        analysis: values("analysis"),
        services,
        open_reviews: values("open_reviews"),
        // Perf files stay on the server's machine.
        run_dir: PathBuf::new(),
    })
}
