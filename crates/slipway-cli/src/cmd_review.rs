//! `slipway review list | complete`: the reviews after the fact that a plan's
//! `post_review` gate (an emergency change) asks for once its run has deployed. Another
//! person than the run's author completes each within its due time; until then it shows
//! here, in `slipway status`, in the compliance report and, once overdue, as a blocking
//! finding of the release's next production plan (see `slipway_ops::review`).

use crate::cli_util::{StoreArg, read_session, runtime};
use crate::out::{CliError, Output};

/// `slipway review …`.
#[derive(Debug, clap::Subcommand)]
pub enum ReviewCommand {
    /// List reviews after the fact: open, overdue and done.
    #[command(after_help = "Examples:\n  slipway review list\n  slipway review list --open")]
    List(ListArgs),
    /// Complete the review of a run (approver role; not the run's author).
    #[command(
        after_help = "Examples:\n  slipway review complete 20261126-033243-ef0a61 --note \"hotfix reviewed; tests added in PR 812\""
    )]
    Complete(CompleteArgs),
}

/// `slipway review list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only reviews not completed yet.
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway review complete`.
#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    /// The run reviewed.
    pub run: String,
    /// What was reviewed and found (audited).
    #[arg(long)]
    pub note: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run a `slipway review` command.
///
/// Through a server (`--server`): `GET /api/v1/reviews` (the environments the caller may
/// read) and `POST /api/v1/reviews/{run}/complete`, the same rules on the server's store.
pub fn review(c: ReviewCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let remote = crate::cli_util::remote()?;
    rt.block_on(async {
        match c {
            ReviewCommand::List(a) => {
                let all: Vec<slipway_ops::review::Review> = match &remote {
                    Some(c) => crate::run_remote::read(c, c.get("/reviews").await?)?,
                    None => {
                        let s = read_session(&a.store).await?;
                        slipway_ops::review::list(s.store.as_ref()).await?
                    }
                };
                let now = slipway_stdx::now();
                let reviews: Vec<_> = all
                    .into_iter()
                    .filter(|r| !a.open || r.state(now) != "done")
                    .collect();
                if out.json() {
                    let v: Vec<_> = reviews
                        .iter()
                        .map(|r| {
                            let mut v = serde_json::to_value(r).unwrap_or_default();
                            v["state"] = r.state(now).into();
                            v
                        })
                        .collect();
                    out.json_value(&v);
                } else if reviews.is_empty() {
                    out.line("no reviews after the fact");
                } else {
                    for r in &reviews {
                        out.line(&format!(
                            "{:<8} {}  {} {} to {}  due {}{}",
                            r.state(now),
                            r.run,
                            r.release,
                            r.version,
                            r.environment,
                            r.due_at,
                            r.note
                                .as_ref()
                                .map(|n| format!("  note: {n}"))
                                .unwrap_or_default()
                        ));
                    }
                }
                Ok(0)
            }
            ReviewCommand::Complete(a) => {
                let r: slipway_ops::review::Review = match &remote {
                    Some(c) => {
                        let path = format!(
                            "/reviews/{}/complete",
                            crate::cli_util::path_segment(&a.run)
                        );
                        let (_, v) = c.post(&path, &serde_json::json!({"note": a.note})).await?;
                        crate::run_remote::read(c, v)?
                    }
                    None => {
                        let s = read_session(&a.store).await?;
                        slipway_ops::review::complete(&s, &a.run, &a.note).await?
                    }
                };
                if out.json() {
                    let mut v = serde_json::to_value(&r).unwrap_or_default();
                    v["state"] = "done".into();
                    out.json_value(&v);
                } else {
                    out.line(&format!(
                        "review of run {} completed{}",
                        r.run,
                        if r.completed_at.is_some_and(|t| t > r.due_at) {
                            " (late)"
                        } else {
                            ""
                        }
                    ));
                }
                Ok(0)
            }
        }
    })
}
