//! Where the run commands act: this machine's store through `slipway_ops`, or a Slipway
//! server through its API (`slipway_server::client`) as the caller's token. One type, one
//! method per operation, each answering the same typed value either way, so a command in
//! `cmd_run` is arguments → [`RunClient`] → `run_render`, and the choice between the
//! embedded mode and `--server` is made here only.

use std::sync::Arc;

use serde_json::json;
use slipway_engine::Notice;
use slipway_engine::event::RunState;
use slipway_model::exit;
use slipway_ops::runs::{self, DriveReport, DriveRequest, Handled};
use slipway_ops::session::Session;
use slipway_ops::views::{self, RunView};
use slipway_server::client::Client;

use crate::cli_util::{StoreArg, path_segment, read_session, remote};
use crate::out::{CliError, Output};
use crate::progress::CliReporter;
use crate::run_remote::{drive_from_json, run_view_from_json, unexpected};

/// The store of this machine or the server the run commands act on.
pub enum RunClient {
    /// Embedded mode: `slipway_ops` on the store `--store` names.
    Local(Session),
    /// `--server URL` / `SLIPWAY_SERVER`: one API call per operation.
    Remote(Client),
}

/// A pause or abort as rendered, from the operation or from the server's answer.
#[derive(Debug, serde::Deserialize)]
pub struct Control {
    pub run: String,
    pub requested: String,
    pub state: RunState,
    #[serde(default)]
    pub reason: Option<String>,
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

/// A manual rollback's outcome, from the operation or from the server's answer.
#[derive(Debug, serde::Deserialize)]
pub struct RolledBack {
    pub run: String,
    pub state: RunState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub by_driver: bool,
}

/// An approval's outcome, from the operation or from the server's answer.
#[derive(Debug, serde::Deserialize)]
pub struct Approved {
    pub run: String,
    pub approver: String,
    pub digest: String,
    pub valid: usize,
    pub required: u32,
}

/// A run's status: the document `--output json` prints and, where it reads as one, the
/// view the text renderer draws.
pub struct Status {
    pub json: serde_json::Value,
    pub view: Option<RunView>,
    /// Lines of the run's performance comparison (local runs only: the files stay on the
    /// machine that ran it).
    pub perf_lines: Vec<String>,
}

/// One row of `history`.
pub struct HistoryRow {
    pub id: String,
    pub release: String,
    pub version: String,
    pub environment: String,
    pub state: String,
    pub created: Option<jiff::Timestamp>,
}

/// `history`: the document `--output json` prints and its rows.
pub struct History {
    pub json: serde_json::Value,
    pub rows: Vec<HistoryRow>,
}

/// `resume` or `promote`.
#[derive(Clone, Copy)]
pub enum Drive {
    Resume,
    Promote,
}

impl Drive {
    fn route(self) -> &'static str {
        match self {
            Self::Resume => "resume",
            Self::Promote => "promote",
        }
    }
}

/// The answer to a `resume` or `promote`.
pub enum Driven {
    /// A live driver got the request.
    Delivered(runs::Delivered),
    /// The run was driven within the request; its outcome.
    Report(DriveReport),
    /// The server drives it in the background: follow it with [`RunClient::settle`].
    ByServer,
}

impl RunClient {
    /// The client of a command that only reads or acts on existing runs (the local store
    /// must exist: see `cli_util::read_session`).
    pub async fn open(store: &StoreArg) -> Result<Self, CliError> {
        Ok(match remote()? {
            Some(c) => Self::Remote(c),
            None => Self::Local(read_session(store).await?),
        })
    }

    /// `run`, or the newest run the caller may read.
    pub async fn run_or_latest(&self, run: Option<String>) -> Result<String, CliError> {
        if let Some(r) = run {
            return Ok(r);
        }
        match self {
            Self::Local(s) => Ok(views::latest_run(s).await?),
            Self::Remote(c) => {
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
        }
    }

    /// A run's status.
    pub async fn status(&self, id: &str) -> Result<Status, CliError> {
        match self {
            Self::Local(s) => {
                let v = views::run(s, id).await?;
                let (perf, perf_lines) = crate::perf_report::run_perf(&v.run_dir);
                let mut json = serde_json::to_value(&v).unwrap_or_default();
                json["perf"] = perf;
                Ok(Status {
                    json,
                    view: Some(v),
                    perf_lines,
                })
            }
            Self::Remote(c) => {
                let json = c.get(&format!("/runs/{}/status", path_segment(id))).await?;
                Ok(Status {
                    view: run_view_from_json(&json),
                    json,
                    perf_lines: Vec::new(),
                })
            }
        }
    }

    /// Read a run's journal, calling `print` for each entry; with `follow`, until the run
    /// is over.
    pub async fn journal(
        &self,
        run: &str,
        follow: bool,
        mut print: impl FnMut(&Notice),
    ) -> Result<(), CliError> {
        let c = match self {
            Self::Local(s) => return Ok(views::journal(s, run, follow, print).await?),
            Self::Remote(c) => c,
        };
        let run = path_segment(run);
        if !follow {
            let doc = c.get(&format!("/runs/{run}/journal")).await?;
            let entries: Vec<Notice> =
                serde_json::from_value(doc["entries"].clone()).unwrap_or_default();
            entries.iter().for_each(print);
            return Ok(());
        }
        // The event stream: every entry, then `end` once the run is over.
        let mut ended = None;
        c.events(&format!("/runs/{run}/events"), |event, data| match event {
            "journal" => {
                if let Ok(n) = serde_json::from_str::<Notice>(data) {
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
        Ok(())
    }

    /// `pause` a run where it is.
    pub async fn pause(&self, run: &str) -> Result<Control, CliError> {
        match self {
            Self::Local(s) => Ok(runs::pause(s, run).await?.into()),
            Self::Remote(c) => remote_control(c, run, "pause").await,
        }
    }

    /// `abort` a run where it is.
    pub async fn abort(&self, run: &str, out: &Output) -> Result<Control, CliError> {
        match self {
            Self::Local(s) => {
                let reporter = Arc::new(CliReporter::new(None, out));
                let c = runs::abort(s, run, reporter.clone()).await;
                reporter.finish();
                Ok(c?.into())
            }
            Self::Remote(c) => remote_control(c, run, "abort").await,
        }
    }

    /// Take a run's release back by hand.
    pub async fn rollback(
        &self,
        run: &str,
        reason: &str,
        out: &Output,
    ) -> Result<RolledBack, CliError> {
        match self {
            Self::Local(s) => {
                let reporter = Arc::new(CliReporter::new(None, out));
                let r = runs::rollback(s, run, reason, reporter.clone()).await;
                reporter.finish();
                let r = r?;
                Ok(RolledBack {
                    run: r.run,
                    state: r.state,
                    reason: r.reason,
                    by_driver: r.by_driver,
                })
            }
            Self::Remote(c) => {
                let (_, doc) = c
                    .post(
                        &format!("/runs/{}/rollback", path_segment(run)),
                        &json!({ "reason": reason }),
                    )
                    .await?;
                serde_json::from_value(doc).map_err(|e| unexpected(c, &e))
            }
        }
    }

    /// Approve a run's plan (the one with `digest` when given).
    pub async fn approve(&self, run: &str, digest: Option<&str>) -> Result<Approved, CliError> {
        match self {
            Self::Local(s) => {
                let ap = runs::approve(s, run, digest).await?;
                Ok(Approved {
                    run: ap.run,
                    approver: ap.approver,
                    digest: ap.digest,
                    valid: ap.valid,
                    required: ap.required,
                })
            }
            Self::Remote(c) => {
                let (_, doc) = c
                    .post(
                        &format!("/runs/{}/approve", path_segment(run)),
                        &json!({ "digest": digest }),
                    )
                    .await?;
                serde_json::from_value(doc).map_err(|e| unexpected(c, &e))
            }
        }
    }

    /// The newest `limit` runs the caller may read.
    pub async fn history(&self, limit: u32) -> Result<History, CliError> {
        match self {
            Self::Local(s) => {
                let runs = views::history(s, limit).await?;
                Ok(History {
                    json: serde_json::to_value(&runs).unwrap_or_default(),
                    rows: runs
                        .into_iter()
                        .map(|r| HistoryRow {
                            state: r.state.as_str().to_owned(),
                            created: Some(r.created_at),
                            id: r.id,
                            release: r.release,
                            version: r.version,
                            environment: r.environment,
                        })
                        .collect(),
                })
            }
            Self::Remote(c) => {
                let doc = c
                    .get(&format!("/runs?limit={}", limit.clamp(1, 1000)))
                    .await?;
                let rows = doc["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                        HistoryRow {
                            id: text("id"),
                            release: text("release"),
                            version: text("version"),
                            environment: text("environment"),
                            state: text("state"),
                            created: text("started_at").parse().ok(),
                        }
                    })
                    .collect();
                Ok(History {
                    json: doc["runs"].clone(),
                    rows,
                })
            }
        }
    }

    /// `resume` or `promote` a run: handed to its live driver, driven here (or by the
    /// server within the request), or — the server's usual answer — driven by the server
    /// in the background.
    pub async fn drive(
        &self,
        run: &str,
        what: Drive,
        req: DriveRequest,
        out: &Output,
    ) -> Result<(Driven, Option<Arc<CliReporter>>), CliError> {
        let c = match self {
            Self::Local(s) => {
                let plan = runs::load_run(s.store.as_ref(), run)
                    .await
                    .ok()
                    .and_then(|r| runs::plan_of(&r));
                let reporter = Arc::new(CliReporter::new(plan.as_ref(), out));
                let h = match what {
                    Drive::Resume => runs::resume(s, run, req, reporter.clone()).await?,
                    Drive::Promote => runs::promote(s, run, req, reporter.clone()).await?,
                };
                let d = match h {
                    Handled::Delivered(d) => Driven::Delivered(d),
                    Handled::Driven(r) => Driven::Report(r),
                };
                return Ok((d, Some(reporter)));
            }
            Self::Remote(c) => c,
        };
        let body = json!({"no_wait": req.no_wait, "wait": req.wait_for_lease});
        let (status, doc) = c
            .post(
                &format!("/runs/{}/{}", path_segment(run), what.route()),
                &body,
            )
            .await?;
        if doc.get("delivered_to").is_some() {
            return Ok((
                Driven::Delivered(runs::Delivered {
                    run: doc["run"].as_str().unwrap_or(run).to_owned(),
                    requested: doc["requested"].as_str().unwrap_or(what.route()).to_owned(),
                    state: serde_json::from_value(doc["state"].clone())
                        .map_err(|e| unexpected(c, &e))?,
                }),
                None,
            ));
        }
        if status == 202 {
            return Ok((Driven::ByServer, None));
        }
        let r = drive_from_json(&doc).ok_or_else(|| unexpected(c, &"no drive outcome"))?;
        Ok((Driven::Report(r), None))
    }

    /// Wait until the run settles: its state and its outcome's exit code (see
    /// [`settled_code`]). With `gate_stops`, a run waiting at a gate that nobody drives
    /// stops the wait too (exit 3); past `deadline`, an error.
    pub async fn settle(
        &self,
        run: &str,
        deadline: Option<std::time::Instant>,
        gate_stops: bool,
    ) -> Result<(RunState, i32), CliError> {
        loop {
            let (state, driven) = match self {
                Self::Local(s) => {
                    let v = views::run(s, run).await?;
                    (v.run.state, v.driven)
                }
                Self::Remote(c) => {
                    let doc = c
                        .get(&format!("/runs/{}/status", path_segment(run)))
                        .await?;
                    let state: RunState = serde_json::from_value(doc["run"]["state"].clone())
                        .map_err(|e| unexpected(c, &e))?;
                    (state, doc["driven"].as_bool())
                }
            };
            if let Some(code) = settled_code(state) {
                return Ok((state, code));
            }
            let waiting = matches!(
                state,
                RunState::WaitingForApproval | RunState::WaitingForWindow
            );
            if gate_stops && waiting && driven == Some(false) {
                return Ok((state, exit::BLOCKED));
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(timed_out(run, state));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}

/// How often `wait` and a followed server drive look at the run.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The exit code of a run's state once it has settled: its outcome's code, `None` while
/// it is still going.
pub fn settled_code(state: RunState) -> Option<i32> {
    match state {
        RunState::Succeeded => Some(exit::SUCCESS),
        RunState::RolledBack => Some(exit::ROLLED_BACK),
        RunState::Aborted => Some(exit::ABORTED),
        RunState::Failed => Some(exit::FAILURE),
        RunState::Paused => Some(exit::PAUSED),
        _ => None,
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

/// `pause` / `abort` through the server.
async fn remote_control(c: &Client, run: &str, what: &str) -> Result<Control, CliError> {
    let (_, doc) = c
        .post(&format!("/runs/{}/{what}", path_segment(run)), &json!({}))
        .await?;
    serde_json::from_value(doc).map_err(|e| unexpected(c, &e))
}
