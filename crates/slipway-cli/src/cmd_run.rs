//! Run commands: `deploy`, `resume`, `status`, `logs`, `pause`, `promote`, `abort`,
//! `rollback`, `approve`, `history`, `wait` — arguments in, one call of the run client,
//! the outcome rendered as text or JSON with its exit code. Where the call goes — this
//! machine's store through `slipway_ops`, or a server with `--server URL` — is
//! `run_client`'s business; how outcomes look is `run_render`'s. What the operations do is
//! documented in `slipway_ops::runs` and `slipway_ops::views`. `deploy` through a server
//! packs the spec's directory into a bundle (`run_remote`).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use slipway_model::exit;
use slipway_ops::runs::{self, DeployRequest, DeployStarted, DriveRequest};

use crate::cli_util::{StoreArg, remote, runtime, session};
use crate::out::{CliError, Output};
use crate::progress::{CliReporter, event_line};
use crate::run_client::{Drive, Driven, RunClient};
use crate::run_render::{
    render_approved, render_control, render_delivered, render_drive, render_history,
    render_rollback, render_settled, render_status,
};

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

/// `slipway deploy`.
pub fn deploy(a: DeployArgs, out: &Output) -> Result<i32, CliError> {
    if let Some(c) = remote()? {
        return runtime()?.block_on(crate::run_remote::deploy_remote(&c, &a, out));
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

/// `resume` / `promote`: render what the driver, this process or the server made of it;
/// a run the server drives in the background is followed until it settles.
async fn drive(
    client: &RunClient,
    run: &str,
    what: Drive,
    req: DriveRequest,
    out: &Output,
) -> Result<i32, CliError> {
    let (driven, reporter) = client.drive(run, what, req, out).await?;
    if let Some(r) = reporter {
        r.finish();
    }
    Ok(match driven {
        Driven::Delivered(d) => render_delivered(&d, out),
        Driven::Report(r) => render_drive(&r, &[], out),
        Driven::ByServer => {
            if let RunClient::Remote(c) = client
                && !out.json()
            {
                out.eline(&format!(
                    "{} drives run {run}; following it (Ctrl-C stops following, not the run)",
                    c.server()
                ));
            }
            let (state, code) = client.settle(run, None, true).await?;
            render_settled(run, state, out, code)
        }
    })
}

/// `slipway resume`.
pub fn resume(a: ResumeArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let named = a.run.is_some();
        let run = client.run_or_latest(a.run).await?;
        // It acts on a run nobody named: say which.
        if !named && !out.json() {
            out.eline(&format!("resuming the latest run, {run}"));
        }
        let req = DriveRequest {
            no_wait: a.no_wait,
            wait_for_lease: a.wait,
        };
        drive(&client, &run, Drive::Resume, req, out).await
    })
}

/// `slipway promote`: the canary of a run becomes the new stable now.
pub fn promote(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let req = DriveRequest {
            no_wait: a.no_wait,
            wait_for_lease: a.wait,
        };
        drive(&client, &a.run, Drive::Promote, req, out).await
    })
}

/// `slipway status`.
pub fn status(a: StatusArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let id = client.run_or_latest(a.run).await?;
        let s = client.status(&id).await?;
        render_status(&s, out).ok_or_else(|| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to read the status of run {id}: an unexpected document"),
                Some("use the same slipway version as the server".into()),
            )
        })
    })
}

/// `slipway logs`: the journal, one line per entry, or with `--output json` one JSON
/// object per line — a stream a pipeline can follow.
pub fn logs(a: LogsArgs, out: &Output) -> Result<i32, CliError> {
    let print = |n: &slipway_engine::Notice| {
        if out.json() {
            out.line(&serde_json::to_string(n).unwrap_or_default());
        } else if let Some(line) = event_line(n, out) {
            out.line(&format!("{} {line}", n.at.strftime("%H:%M:%S")));
        }
    };
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let run = client.run_or_latest(a.run).await?;
        client.journal(&run, a.follow, print).await?;
        Ok(exit::SUCCESS)
    })
}

/// `slipway pause`.
pub fn pause(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let c = RunClient::open(&a.store).await?.pause(&a.run).await?;
        Ok(render_control(&c, out))
    })
}

/// `slipway abort`: stop a run where it is (see README, "rollback and abort").
pub fn abort(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let c = RunClient::open(&a.store).await?.abort(&a.run, out).await?;
        Ok(render_control(&c, out))
    })
}

/// `slipway rollback`: take a run's release back by hand (see README, "rollback and
/// abort"). Exit 0 once it is rolled back (or aborted when nothing had run), 1 when an
/// undo failed.
pub fn rollback(a: RollbackArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let r = client.rollback(&a.run, &a.reason, out).await?;
        Ok(render_rollback(&r, out))
    })
}

/// `slipway approve`.
pub fn approve(a: ApproveArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let ap = client.approve(&a.run, a.digest.as_deref()).await?;
        Ok(render_approved(&ap, out))
    })
}

/// `slipway history`.
pub fn history(a: HistoryArgs, out: &Output) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let h = RunClient::open(&a.store).await?.history(a.limit).await?;
        Ok(render_history(&h, out))
    })
}

/// `slipway wait`: until the run ends or pauses, then exit with its outcome's code.
pub fn wait(a: WaitArgs, out: &Output) -> Result<i32, CliError> {
    let deadline = a
        .timeout
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    runtime()?.block_on(async {
        let client = RunClient::open(&a.store).await?;
        let (state, code) = client.settle(&a.run, deadline, false).await?;
        Ok(render_settled(&a.run, state, out, code))
    })
}
