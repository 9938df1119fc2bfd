//! `slipway access …`: role grants, API tokens and access review campaigns, kept in the
//! store file's access tables (`slipway_store::access`) with the policy of
//! `slipway_govern::access`. Managing access needs the `admin` role, except the very
//! first grant of a store (bootstrap: someone must become the first admin).

use std::path::PathBuf;

use jiff::Timestamp;
use slipway_govern::access::{self, Role};
use slipway_model::exit;
use slipway_store::StoreLocation;
use slipway_store::access::AccessDb;

use crate::cmd_run::{StoreArg, identity, runtime, store_error};
use crate::out::{CliError, Output};

/// `slipway access …`.
#[derive(Debug, clap::Subcommand)]
pub enum AccessCommand {
    /// Grant a role (viewer, deployer, approver, admin) to `user:NAME` or `group:NAME`.
    #[command(
        after_help = "Examples:\n  slipway access grant user:alice deployer --env staging\n  slipway access grant group:release-managers approver --env prod"
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
}

/// `slipway access token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token acting as a user (default: you). Printed once, never stored.
    Create(TokenCreateArgs),
    /// Revoke a token by its id (the part after `slw_`).
    Revoke(TokenIdArgs),
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
    #[arg(long)]
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

fn store_path(arg: &StoreArg) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let StoreLocation::Sqlite(p) =
        slipway_store::resolve(arg.store.as_deref(), &cwd).map_err(store_error)?;
    Ok(p)
}

fn refused(e: access::AccessError) -> CliError {
    CliError::new(exit::BLOCKED, format!("failed to {e}"), None)
}

/// Require `admin` (anywhere) of the current user, unless no grant exists yet.
async fn require_admin(db: &AccessDb, action: &str) -> Result<String, CliError> {
    let me = identity();
    let grants = db.grants(false).await.map_err(store_error)?;
    if !grants.is_empty() {
        access::authorize(&grants, &me, &groups(), Role::Admin, action, "*").map_err(refused)?;
    }
    Ok(me)
}

/// Permission check for run commands. Access control switches on with the first grant
/// (`slipway access grant`): before that every identity may act (a fresh install must be
/// usable, and the first grant makes its holder admin); after it, each command needs its
/// role in the run's environment, and a refusal names the role and the grant to ask for.
pub(crate) async fn enforce(
    db_path: &std::path::Path,
    role: Role,
    action: &str,
    environment: &str,
) -> Result<(), CliError> {
    let db = AccessDb::open(db_path).await.map_err(store_error)?;
    let grants = db.grants(false).await.map_err(store_error)?;
    if grants.is_empty() {
        return Ok(());
    }
    access::authorize(&grants, &identity(), &groups(), role, action, environment).map_err(refused)
}

fn groups() -> Vec<String> {
    std::env::var("SLIPWAY_GROUPS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Run an access subcommand.
pub fn access_cmd(c: AccessCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(run(c, out))
}

async fn run(c: AccessCommand, out: &Output) -> Result<i32, CliError> {
    let now = Timestamp::now();
    let store = match &c {
        AccessCommand::Grant(a) => &a.store,
        AccessCommand::Revoke(a) => &a.store,
        AccessCommand::List(a) => &a.store,
        AccessCommand::Token(TokenCommand::Create(a)) => &a.store,
        AccessCommand::Token(TokenCommand::Revoke(a)) => &a.store,
        AccessCommand::Review(ReviewCommand::Start(a) | ReviewCommand::Close(a)) => &a.store,
        AccessCommand::Review(ReviewCommand::Decide(a)) => &a.store,
    };
    let db = AccessDb::open(&store_path(store)?)
        .await
        .map_err(store_error)?;
    match c {
        AccessCommand::Grant(a) => {
            if Role::parse(&a.role).is_none() {
                return Err(CliError::input(
                    format!("failed to grant role `{}`: no such role", a.role),
                    "use viewer, deployer, approver or admin",
                ));
            }
            let me = require_admin(&db, "grant roles").await?;
            let subject = if a.subject.contains(':') {
                a.subject
            } else {
                format!("user:{}", a.subject)
            };
            let id = db
                .grant(&subject, &a.role, &a.env, &format!("user:{me}"), now)
                .await
                .map_err(store_error)?;
            out.line(&format!("grant {id}: {subject} is {} in {}", a.role, a.env));
        }
        AccessCommand::Revoke(a) => {
            let me = require_admin(&db, "revoke grants").await?;
            if !db
                .revoke_grant(a.id, &format!("user:{me}"), now)
                .await
                .map_err(store_error)?
            {
                return Err(CliError::input(
                    format!("failed to revoke grant {}: no live grant has that id", a.id),
                    "list grants with `slipway access list`",
                ));
            }
            out.line(&format!("grant {} revoked", a.id));
        }
        AccessCommand::List(_) => {
            let grants = db.grants(false).await.map_err(store_error)?;
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
            let me = identity();
            let user = a.user.unwrap_or_else(|| me.clone());
            if user != me {
                require_admin(&db, "create tokens for others").await?;
            }
            let issued = access::issue_token(&user, now).map_err(refused)?;
            db.add_token(&issued.row).await.map_err(store_error)?;
            out.line(&format!(
                "token for user:{user} (shown once; store it now): {}",
                issued.token
            ));
        }
        AccessCommand::Token(TokenCommand::Revoke(a)) => {
            if !db.revoke_token(&a.id, now).await.map_err(store_error)? {
                return Err(CliError::input(
                    format!("failed to revoke token {}: no live token has that id", a.id),
                    "the id is the part between `slw_` and the next `_`",
                ));
            }
            out.line(&format!("token {} revoked", a.id));
        }
        AccessCommand::Review(ReviewCommand::Start(a)) => {
            let me = require_admin(&db, "start access reviews").await?;
            let n = db
                .open_review(&a.review, &format!("user:{me}"), now)
                .await
                .map_err(store_error)?;
            out.line(&format!("access review {} opened over {n} grant(s); decide each with `slipway access review decide {} GRANT confirm|revoke`", a.review, a.review));
        }
        AccessCommand::Review(ReviewCommand::Decide(a)) => {
            let me = require_admin(&db, "decide access reviews").await?;
            if !db
                .decide(&a.review, a.grant, &a.decision, &format!("user:{me}"), now)
                .await
                .map_err(store_error)?
            {
                return Err(CliError::input(
                    format!(
                        "failed to decide grant {} in review {}: it is not in an open campaign",
                        a.grant, a.review
                    ),
                    "start one with `slipway access review start ID`",
                ));
            }
            out.line(&format!("grant {}: {}", a.grant, a.decision));
        }
        AccessCommand::Review(ReviewCommand::Close(a)) => {
            require_admin(&db, "close access reviews").await?;
            let unreviewed = db.close_review(&a.review, now).await.map_err(store_error)?;
            for g in &unreviewed {
                out.line(&format!("unreviewed: grant {g}"));
            }
            out.line(&format!(
                "access review {} closed; {} grant(s) unreviewed",
                a.review,
                unreviewed.len()
            ));
            return Ok(if unreviewed.is_empty() {
                exit::SUCCESS
            } else {
                exit::FAILURE
            });
        }
    }
    Ok(exit::SUCCESS)
}
