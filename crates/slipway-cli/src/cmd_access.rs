//! `slipway access …`: role grants, API tokens and access review campaigns, kept in the
//! store file's access tables (`slipway_store::access`) with the policy of
//! `slipway_govern::access`. Managing access needs the `admin` role, except the very
//! first grant of a store (bootstrap: someone must become the first admin).

use serde_json::json;
use slipway_govern::access::{self};
use slipway_model::exit;
use slipway_ops::Session;
use slipway_ops::access::require_admin;
use slipway_store::access::AccessDb;

use crate::cli_util::{StoreArg, runtime, session};
use crate::out::{CliError, Output};

/// `slipway access …`.
#[derive(Debug, clap::Subcommand)]
pub enum AccessCommand {
    /// Grant a role (viewer, deployer, approver, admin) to `user:NAME` or `group:NAME`.
    #[command(
        after_help = "The first grant of a store switches access control on: it must be `user:NAME admin --env '*'`, and prints that user's first API token (from then on every command acts as the subject of a token).\n\nExamples:\n  slipway access grant user:alice admin --env '*'\n  slipway access grant user:bob deployer --env staging\n  slipway access grant group:release-managers approver --env prod"
    )]
    Grant(GrantArgs),
    /// Revoke a grant by id (see `slipway access list`).
    Revoke(IdArgs),
    /// List live grants.
    List(StoreOnly),
    /// Create an API token for a user (shown once) or revoke one.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Access review campaigns: start, decide each grant, close.
    #[command(subcommand)]
    Review(ReviewCommand),
    /// Group membership, kept here by admins (never declared by the caller).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Who you act as in this store, and how that was verified.
    Whoami(StoreOnly),
}

/// `slipway access group …`.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Add a user to a group.
    #[command(after_help = "Examples:\n  slipway access group add release-managers alice")]
    Add(MemberArgs),
    /// Remove a user from a group.
    Remove(MemberArgs),
    /// List members (of one group, or all).
    List(GroupListArgs),
}

/// A group and a user.
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    /// The group (as granted: `group:NAME`).
    pub group: String,
    /// The user.
    pub user: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway access group list`.
#[derive(Debug, clap::Args)]
pub struct GroupListArgs {
    /// Only this group.
    pub group: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway access token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token acting as a user (default: you). Printed once, never stored.
    Create(TokenCreateArgs),
    /// Revoke a token by its id (the part after `slw_`): your own, or any as admin.
    Revoke(TokenIdArgs),
    /// List tokens: id, user, created, last used, revoked (never the secret or its hash).
    List(StoreOnly),
}

/// `slipway access review …`.
#[derive(Debug, clap::Subcommand)]
pub enum ReviewCommand {
    /// Open a campaign listing every live grant.
    Start(ReviewIdArgs),
    /// Confirm or revoke one grant of a campaign.
    Decide(DecideArgs),
    /// Close a campaign; grants nobody reviewed are flagged (exit 1 when any).
    Close(ReviewIdArgs),
}

/// Only `--store`.
#[derive(Debug, clap::Args)]
pub struct StoreOnly {
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway access grant`.
#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    /// `user:NAME` or `group:NAME` (a bare name is a user).
    pub subject: String,
    /// viewer, deployer, approver or admin.
    pub role: String,
    /// Environment, or `*` for all.
    #[arg(long, value_parser = crate::cli_util::env_name_or_all)]
    pub env: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// A grant id.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// Grant id.
    pub id: i64,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway access token create`.
#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The user the token acts as (default: you).
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// A token id.
#[derive(Debug, clap::Args)]
pub struct TokenIdArgs {
    /// Token id.
    pub id: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// A campaign id.
#[derive(Debug, clap::Args)]
pub struct ReviewIdArgs {
    /// Campaign id (e.g. 2026-q4).
    pub review: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway access review decide`.
#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// Campaign id.
    pub review: String,
    /// Grant id.
    pub grant: i64,
    /// confirm or revoke.
    #[arg(value_parser = ["confirm", "revoke"])]
    pub decision: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run an access subcommand.
pub fn access_cmd(c: AccessCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let result = rt.block_on(run(c, out));
    // Everything is committed; the pools' background tasks need no orderly wait.
    rt.shutdown_background();
    result
}

async fn run(c: AccessCommand, out: &Output) -> Result<i32, CliError> {
    let now = slipway_stdx::now();
    let store_url = match &c {
        AccessCommand::Grant(a) => &a.store,
        AccessCommand::Revoke(a) => &a.store,
        AccessCommand::List(a) => &a.store,
        AccessCommand::Token(TokenCommand::Create(a)) => &a.store,
        AccessCommand::Token(TokenCommand::Revoke(a)) => &a.store,
        AccessCommand::Token(TokenCommand::List(a)) => &a.store,
        AccessCommand::Review(ReviewCommand::Start(a) | ReviewCommand::Close(a)) => &a.store,
        AccessCommand::Review(ReviewCommand::Decide(a)) => &a.store,
        AccessCommand::Group(GroupCommand::Add(a) | GroupCommand::Remove(a)) => &a.store,
        AccessCommand::Group(GroupCommand::List(a)) => &a.store,
        AccessCommand::Whoami(a) => &a.store,
    }
    .store
    .clone();
    let store = StoreArg { store: store_url };
    // Listing, revoking and deciding need records that exist: never create a store for
    // them (a mistyped --store is exit 8 naming it). Granting, issuing a token and
    // starting a review write, and may start a store.
    let creates = matches!(
        c,
        AccessCommand::Grant(_)
            | AccessCommand::Token(TokenCommand::Create(_))
            | AccessCommand::Review(ReviewCommand::Start(_))
    );
    // The run store first: it creates and migrates the file, which the access tables share
    // (created first, they would make the file look like a foreign SQLite database).
    let s: Session = if creates {
        session(&store).await?
    } else {
        crate::cli_util::read_session(&store).await?
    };
    let db = AccessDb::for_store(&s.store)
        .await
        .map_err(CliError::from)?;
    let me = s.actor.user.clone();
    match c {
        AccessCommand::Grant(a) => {
            let g = slipway_ops::access::grant(&s, &a.subject, &a.role, &a.env).await?;
            let mut text = format!(
                "grant {}: {} is {} in {}",
                g.grant, g.subject, g.role, g.environment
            );
            if let Some(t) = &g.token {
                text.push_str(&format!(
                    "\naccess control is on: every command now acts as the subject of an API token.\ntoken for {} (shown once; store it now, e.g. export SLIPWAY_TOKEN=…): {t}",
                    g.subject
                ));
            }
            out.outcome(&g, &text);
        }
        AccessCommand::Whoami(_) => {
            out.outcome(
                &s.actor,
                &format!(
                    "{}; groups: {}",
                    s.actor.describe(),
                    if s.actor.groups.is_empty() {
                        "none".to_owned()
                    } else {
                        s.actor.groups.join(", ")
                    }
                ),
            );
        }
        AccessCommand::Group(GroupCommand::Add(a)) => {
            let added = slipway_ops::access::add_member(&s, &a.group, &a.user).await?;
            out.outcome(
                &json!({"group": a.group, "user": a.user, "added": added}),
                &if added {
                    format!("user:{} is a member of group:{}", a.user, a.group)
                } else {
                    format!("user:{} already is a member of group:{}", a.user, a.group)
                },
            );
        }
        AccessCommand::Group(GroupCommand::Remove(a)) => {
            if !slipway_ops::access::remove_member(&s, &a.group, &a.user).await? {
                return Err(CliError::input(
                    format!(
                        "failed to remove user:{} from group:{}: not a member",
                        a.user, a.group
                    ),
                    "list members with `slipway access group list`",
                ));
            }
            out.outcome(
                &json!({"group": a.group, "user": a.user, "removed": true}),
                &format!("user:{} removed from group:{}", a.user, a.group),
            );
        }
        AccessCommand::Group(GroupCommand::List(a)) => {
            let members = slipway_ops::access::members(&s, a.group.as_deref()).await?;
            if out.json() {
                out.json_value(&members);
            } else {
                for m in &members {
                    out.line(&format!("group:{:<24} user:{}", m.group, m.user));
                }
            }
        }
        AccessCommand::Revoke(a) => {
            require_admin(&s, &db, "revoke grants").await?;
            if !db
                .revoke_grant(a.id, &format!("user:{me}"), now)
                .await
                .map_err(CliError::from)?
            {
                return Err(CliError::input(
                    format!("failed to revoke grant {}: no live grant has that id", a.id),
                    "list grants with `slipway access list`",
                ));
            }
            out.outcome(
                &json!({"grant": a.id, "revoked": true}),
                &format!("grant {} revoked", a.id),
            );
        }
        AccessCommand::List(_) => {
            let grants = db.grants(false).await.map_err(CliError::from)?;
            if out.json() {
                out.json_value(&grants);
            } else {
                for g in grants {
                    out.line(&format!(
                        "{:>4}  {:<28} {:<9} {}",
                        g.id, g.subject, g.role, g.environment
                    ));
                }
            }
        }
        AccessCommand::Token(TokenCommand::Create(a)) => {
            let user = a.user.unwrap_or_else(|| me.clone());
            if user != me {
                require_admin(&s, &db, "create tokens for others").await?;
            }
            let issued = access::issue_token(&user, now)
                .map_err(|e| CliError::new(exit::BLOCKED, format!("failed to {e}"), None))?;
            db.add_token(&issued.row, &format!("user:{me}"))
                .await
                .map_err(CliError::from)?;
            // The token's id only: its secret is shown once below and never kept.
            if out.json() {
                // For pipelines that hand the token on (a CI secret): the one time it exists.
                out.json_value(&json!({
                    "id": issued.row.id,
                    "subject": issued.row.subject,
                    "token": issued.token,
                }));
            } else {
                out.line(&format!(
                    "token for user:{user} (shown once; store it now): {}",
                    issued.token
                ));
            }
        }
        AccessCommand::Token(TokenCommand::Revoke(a)) => {
            let own = db
                .token(&a.id)
                .await
                .map_err(CliError::from)?
                .is_some_and(|t| t.subject == format!("user:{me}"));
            if !own {
                require_admin(&s, &db, "revoke tokens of others").await?;
            }
            if !db
                .revoke_token(&a.id, now, &format!("user:{me}"))
                .await
                .map_err(CliError::from)?
            {
                return Err(CliError::input(
                    format!("failed to revoke token {}: no live token has that id", a.id),
                    "the id is the part between `slw_` and the next `_`",
                ));
            }
            if out.json() {
                out.json_value(&json!({"id": a.id, "revoked": true}));
            } else {
                out.line(&format!("token {} revoked", a.id));
            }
        }
        AccessCommand::Token(TokenCommand::List(_)) => {
            require_admin(&s, &db, "list tokens").await?;
            let tokens = db.tokens().await.map_err(CliError::from)?;
            let rows: Vec<_> = tokens
                .iter()
                .map(|t| {
                    json!({"id": t.id, "subject": t.subject, "created_at": t.created_at,
                        "last_used_at": t.last_used_at, "revoked_at": t.revoked_at})
                })
                .collect();
            if out.json() {
                out.json_value(&rows);
            } else {
                for t in &tokens {
                    let used = t
                        .last_used_at
                        .map_or_else(|| "never used".to_owned(), |u| format!("last used {u}"));
                    let revoked = t
                        .revoked_at
                        .map(|r| format!(", revoked {r}"))
                        .unwrap_or_default();
                    out.line(&format!("{}  {:<24} {used}{revoked}", t.id, t.subject));
                }
            }
        }
        AccessCommand::Review(ReviewCommand::Start(a)) => {
            require_admin(&s, &db, "start access reviews").await?;
            let n = db
                .open_review(&a.review, &format!("user:{me}"), now)
                .await
                .map_err(CliError::from)?;
            out.outcome(
                &json!({"review": a.review, "opened": true, "grants": n}),
                &format!("access review {} opened over {n} grant(s); decide each with `slipway access review decide {} GRANT confirm|revoke`", a.review, a.review),
            );
        }
        AccessCommand::Review(ReviewCommand::Decide(a)) => {
            require_admin(&s, &db, "decide access reviews").await?;
            if !db
                .decide(&a.review, a.grant, &a.decision, &format!("user:{me}"), now)
                .await
                .map_err(CliError::from)?
            {
                return Err(CliError::input(
                    format!(
                        "failed to decide grant {} in review {}: it is not in an open campaign",
                        a.grant, a.review
                    ),
                    "start one with `slipway access review start ID`",
                ));
            }
            out.outcome(
                &json!({"review": a.review, "grant": a.grant, "decision": a.decision}),
                &format!("grant {}: {}", a.grant, a.decision),
            );
        }
        AccessCommand::Review(ReviewCommand::Close(a)) => {
            require_admin(&s, &db, "close access reviews").await?;
            let unreviewed = db
                .close_review(&a.review, now, &format!("user:{me}"))
                .await
                .map_err(CliError::from)?;
            if out.json() {
                out.json_value(
                    &json!({"review": a.review, "closed": true, "unreviewed": unreviewed}),
                );
            } else {
                for g in &unreviewed {
                    out.line(&format!("unreviewed: grant {g}"));
                }
                out.line(&format!(
                    "access review {} closed; {} grant(s) unreviewed",
                    a.review,
                    unreviewed.len()
                ));
            }
            return Ok(if unreviewed.is_empty() {
                exit::SUCCESS
            } else {
                exit::FAILURE
            });
        }
    }
    Ok(exit::SUCCESS)
}
