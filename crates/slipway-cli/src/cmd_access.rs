//! `slipway access …`: role grants, API tokens and access review campaigns, kept in the
//! store file's access tables (`slipway_store::access`) with the policy of
//! `slipway_govern::access`. Managing access needs the `admin` role, except the very
//! first grant of a store (bootstrap: someone must become the first admin).

use slipway_model::exit;
use slipway_ops::Session;

use crate::admin_remote::{
    render_grant_revoked, render_granted, render_grants, render_issued, render_member_added,
    render_member_removed, render_members, render_review_closed, render_review_decided,
    render_review_opened, render_token_revoked, render_tokens,
};
use crate::cli_util::{StoreArg, remote, runtime, session};
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
    let result = match remote()? {
        Some(client) => rt.block_on(crate::admin_remote::access(&client, c, out)),
        None => rt.block_on(run(c, out)),
    };
    // Everything is committed; the pools' background tasks need no orderly wait.
    rt.shutdown_background();
    result
}

async fn run(c: AccessCommand, out: &Output) -> Result<i32, CliError> {
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
    match c {
        AccessCommand::Grant(a) => {
            let g = slipway_ops::access::grant(&s, &a.subject, &a.role, &a.env).await?;
            render_granted(out, &g);
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
            render_member_added(out, &a.group, &a.user, added);
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
            render_member_removed(out, &a.group, &a.user);
        }
        AccessCommand::Group(GroupCommand::List(a)) => {
            let members = slipway_ops::access::members(&s, a.group.as_deref()).await?;
            render_members(out, &members);
        }
        AccessCommand::Revoke(a) => {
            slipway_ops::access::revoke_grant(&s, a.id).await?;
            render_grant_revoked(out, a.id);
        }
        AccessCommand::List(_) => {
            let grants = slipway_ops::access::grants(&s).await?;
            render_grants(out, &grants);
        }
        AccessCommand::Token(TokenCommand::Create(a)) => {
            let issued = slipway_ops::access::create_token(&s, a.user.as_deref()).await?;
            render_issued(out, &issued);
        }
        AccessCommand::Token(TokenCommand::Revoke(a)) => {
            slipway_ops::access::revoke_token(&s, &a.id).await?;
            render_token_revoked(out, &a.id);
        }
        AccessCommand::Token(TokenCommand::List(_)) => {
            let tokens = slipway_ops::access::tokens(&s).await?;
            render_tokens(out, &tokens);
        }
        AccessCommand::Review(ReviewCommand::Start(a)) => {
            let n = slipway_ops::access::open_review(&s, &a.review).await?;
            render_review_opened(out, &a.review, n);
        }
        AccessCommand::Review(ReviewCommand::Decide(a)) => {
            slipway_ops::access::decide_review(&s, &a.review, a.grant, &a.decision).await?;
            render_review_decided(out, &a.review, a.grant, &a.decision);
        }
        AccessCommand::Review(ReviewCommand::Close(a)) => {
            let unreviewed = slipway_ops::access::close_review(&s, &a.review).await?;
            return Ok(render_review_closed(out, &a.review, &unreviewed));
        }
    }
    Ok(exit::SUCCESS)
}
