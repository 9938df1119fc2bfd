//! The one authorizer: roles per environment from the store's grants, checked for the
//! session's actor, and token verification. Access control switches on with the first
//! grant: before it every identity may act (a fresh install must be usable, and the first
//! grant makes its holder admin); after it each operation needs its role, and a refusal
//! names the role and the grant to ask for.

use serde_json::json;
use slipway_engine::store::JournalRecord;
use slipway_engine::{EngineEvent, Store};
use slipway_govern::access::{self, Role};
use slipway_store::AnyStore;
use slipway_store::access::AccessDb;

use crate::error::{ErrorKind, Hint, OpsError, OpsResult};
use crate::session::{Actor, Session};

fn refused(e: access::AccessError) -> OpsError {
    let hint = match &e {
        access::AccessError::MissingRole {
            subject,
            role,
            environment,
            ..
        } => Some(Hint::AskGrant {
            subject: subject.clone(),
            role: role.as_str().to_owned(),
            environment: environment.clone(),
        }),
        _ => None,
    };
    let mut err = OpsError::blocked(format!("failed to {e}"));
    err.hints.extend(hint);
    err
}

/// Require `role` in `environment` of the session's actor, unless no grant exists yet.
pub async fn require(
    session: &Session,
    role: Role,
    action: &str,
    environment: &str,
) -> OpsResult<()> {
    require_on(&session.store, &session.actor, role, action, environment).await
}

/// [`require`] for `actor` on `store`.
pub async fn require_on(
    store: &AnyStore,
    actor: &Actor,
    role: Role,
    action: &str,
    environment: &str,
) -> OpsResult<()> {
    let db = AccessDb::for_store(store).await?;
    let grants = db.grants(false).await?;
    if grants.is_empty() {
        return Ok(());
    }
    access::authorize(
        &grants,
        &actor.user,
        &actor.groups,
        role,
        action,
        environment,
    )
    .map_err(refused)
}

/// Which environments the session's actor may read runs of: every one until the first grant
/// switches access control on, then those where it holds `viewer` (or any role above it).
/// The grants are read once, for listings.
pub async fn readable(session: &Session) -> OpsResult<impl Fn(&str) -> bool + use<>> {
    let db = AccessDb::for_store(&session.store).await?;
    let grants = db.grants(false).await?;
    let actor = session.actor.clone();
    Ok(move |environment: &str| {
        grants.is_empty()
            || access::authorize(
                &grants,
                &actor.user,
                &actor.groups,
                Role::Viewer,
                "read",
                environment,
            )
            .is_ok()
    })
}

/// Require `admin` (anywhere) of the session's actor, unless no grant exists yet.
pub async fn require_admin(session: &Session, db: &AccessDb, action: &str) -> OpsResult<()> {
    let grants = db.grants(false).await?;
    if !grants.is_empty() {
        access::authorize(
            &grants,
            &session.actor.user,
            &session.actor.groups,
            Role::Admin,
            action,
            "*",
        )
        .map_err(refused)?;
    }
    Ok(())
}

/// Verify an API token against the access tables: it must exist, be live and match its
/// stored hash. Returns the user it acts as (its subject without `user:`) and the token's
/// id; records its last use, and upgrades a legacy sha256 row to argon2id.
pub async fn verify_token(db: &AccessDb, token: &str) -> OpsResult<(String, String)> {
    let subject = access::authenticate(db, token, slipway_stdx::now())
        .await
        .map_err(|e| match e {
            access::AuthError::Refused(e) => {
                OpsError::new(ErrorKind::Unauthenticated, format!("failed to {e}"))
                    .hint(Hint::GetToken)
            }
            access::AuthError::Rehash(e) => refused(e),
            access::AuthError::Store(e) => e.into(),
        })?;
    let id = access::token_id(token)
        .map(|(id, _)| id.to_owned())
        .unwrap_or_default();
    Ok((
        subject.strip_prefix("user:").unwrap_or(&subject).to_owned(),
        id,
    ))
}

/// Append a governance event (outside any run) to the audit chain as the session's actor.
pub async fn audit_governance(
    session: &Session,
    action: &str,
    detail: serde_json::Value,
) -> OpsResult<()> {
    let actor = session.actor_id().await?;
    session
        .store
        .commit(vec![JournalRecord {
            run_id: String::new(),
            digest: String::new(),
            at: slipway_stdx::now(),
            actor,
            event: EngineEvent::Governance {
                action: action.to_owned(),
                detail,
            },
        }])
        .await?;
    Ok(())
}

/// Append an access change to the audit chain, so who could do what (and who changed it)
/// is as tamper-evident as the runs. A person in `subject` is replaced by their pseudonym,
/// like every actor in the chain, so erasing the person keeps the chain valid; no token
/// value or hash ever goes in.
pub async fn audit_change(
    session: &Session,
    action: &str,
    mut detail: serde_json::Value,
) -> OpsResult<()> {
    if let Some(user) = detail
        .get("subject")
        .and_then(|s| s.as_str())
        .and_then(|s| s.strip_prefix("user:"))
        .map(str::to_owned)
    {
        let id = session.store.pseudonym(&user).await?;
        detail["subject"] = json!(format!("user:{id}"));
    }
    audit_governance(session, action, detail).await
}

/// A grant made, with the first admin's token when the grant switched access control on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Granted {
    /// The grant's id.
    pub grant: i64,
    /// `user:NAME` or `group:NAME`.
    pub subject: String,
    /// The role.
    pub role: String,
    /// The environment or `*`.
    pub environment: String,
    /// The first admin's API token (shown once, never stored): from this grant on, every
    /// command acts as the subject of a token, the first admin included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Grant `role` in `environment` to `subject` (`user:NAME`, `group:NAME` or a bare user
/// name). Needs `admin`, except the first grant of a store, which switches access control
/// on: it must make a user admin everywhere, and that user gets a token at once.
pub async fn grant(
    session: &Session,
    subject: &str,
    role: &str,
    environment: &str,
) -> OpsResult<Granted> {
    if Role::parse(role).is_none() {
        return Err(
            OpsError::input(format!("failed to grant role `{role}`: no such role"))
                .hint(Hint::text("use viewer, deployer, approver or admin")),
        );
    }
    let subject = if subject.contains(':') {
        subject.to_owned()
    } else {
        format!("user:{subject}")
    };
    let db = AccessDb::for_store(&session.store).await?;
    let first = db.grants(false).await?.is_empty();
    let mut token = None;
    if first {
        let Some(user) = subject.strip_prefix("user:") else {
            return Err(OpsError::input(format!(
                "failed to grant `{role}` to {subject}: the first grant of a store switches access control on, so it must make a user admin everywhere"
            ))
            .hint(Hint::text(format!(
                "start with `access grant user:NAME admin --env '*'`; that user gets a token and can then grant {subject}"
            ))));
        };
        if role != "admin" || environment != "*" {
            return Err(OpsError::input(format!(
                "failed to grant `{role}` in `{environment}` to {subject}: the first grant of a store switches access control on, so it must make a user admin everywhere (otherwise nobody could manage access afterwards)"
            ))
            .hint(Hint::text(format!(
                "start with `access grant user:{user} admin --env '*'`"
            ))));
        }
        let issued = access::issue_token(user, slipway_stdx::now()).map_err(refused)?;
        // The store commits the token (never its secret) to the chain as `token_issued`.
        db.add_token(&issued.row, &format!("user:{}", session.actor.user))
            .await?;
        token = Some(issued.token);
    } else {
        require_admin(session, &db, "grant roles").await?;
    }
    let id = db
        .grant(
            &subject,
            role,
            environment,
            &format!("user:{}", session.actor.user),
            slipway_stdx::now(),
        )
        .await?;
    Ok(Granted {
        grant: id,
        subject,
        role: role.to_owned(),
        environment: environment.to_owned(),
        token,
    })
}

/// Add `user` to `group` (admin; audited). False when they already were a member.
pub async fn add_member(session: &Session, group: &str, user: &str) -> OpsResult<bool> {
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "manage groups").await?;
    let added = db
        .add_member(
            group,
            user,
            &format!("user:{}", session.actor.user),
            slipway_stdx::now(),
        )
        .await?;
    Ok(added)
}

/// Remove `user` from `group` (admin; audited). False when they were not a member.
pub async fn remove_member(session: &Session, group: &str, user: &str) -> OpsResult<bool> {
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "manage groups").await?;
    let removed = db
        .remove_member(
            group,
            user,
            &format!("user:{}", session.actor.user),
            slipway_stdx::now(),
        )
        .await?;
    Ok(removed)
}

/// Live group memberships, of one group or all (viewer anywhere suffices: who may approve
/// is not a secret to the people governed by it).
pub async fn members(
    session: &Session,
    group: Option<&str>,
) -> OpsResult<Vec<slipway_store::access::MemberRow>> {
    let db = AccessDb::for_store(&session.store).await?;
    Ok(db.members(group).await?)
}

/// The live grants (anyone authenticated may read who holds which role).
pub async fn grants(session: &Session) -> OpsResult<Vec<slipway_store::access::GrantRow>> {
    let db = AccessDb::for_store(&session.store).await?;
    Ok(db.grants(false).await?)
}

/// Revoke grant `id` (needs `admin`).
pub async fn revoke_grant(session: &Session, id: i64) -> OpsResult<()> {
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "revoke grants").await?;
    let by = format!("user:{}", session.actor.user);
    if !db.revoke_grant(id, &by, slipway_stdx::now()).await? {
        return Err(OpsError::input(format!(
            "failed to revoke grant {id}: no live grant has that id"
        ))
        .hint(Hint::text("list grants with `slipway access list`")));
    }
    Ok(())
}

/// An API token just issued: its secret exists only in this value.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IssuedToken {
    /// The token's public id.
    pub id: String,
    /// `user:NAME` it acts as.
    pub subject: String,
    /// The token (shown once, never stored).
    pub token: String,
}

/// Issue an API token for `user` (the actor when `None`; for someone else needs `admin`).
pub async fn create_token(session: &Session, user: Option<&str>) -> OpsResult<IssuedToken> {
    let db = AccessDb::for_store(&session.store).await?;
    let me = session.actor.user.clone();
    let user = user.map_or_else(|| me.clone(), str::to_owned);
    if user != me {
        require_admin(session, &db, "create tokens for others").await?;
    }
    let issued = access::issue_token(&user, slipway_stdx::now())
        .map_err(|e| OpsError::blocked(format!("failed to {e}")))?;
    db.add_token(&issued.row, &format!("user:{me}")).await?;
    Ok(IssuedToken {
        id: issued.row.id.clone(),
        subject: issued.row.subject.clone(),
        token: issued.token,
    })
}

/// Revoke token `id` (one's own, or anyone's with `admin`).
pub async fn revoke_token(session: &Session, id: &str) -> OpsResult<()> {
    let db = AccessDb::for_store(&session.store).await?;
    let me = format!("user:{}", session.actor.user);
    let own = db.token(id).await?.is_some_and(|t| t.subject == me);
    if !own {
        require_admin(session, &db, "revoke tokens of others").await?;
    }
    if !db.revoke_token(id, slipway_stdx::now(), &me).await? {
        return Err(OpsError::input(format!(
            "failed to revoke token {id}: no live token has that id"
        ))
        .hint(Hint::text(
            "the id is the part between `slw_` and the next `_`",
        )));
    }
    Ok(())
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// `user:NAME` it acts as.
    pub subject: String,
    /// Created.
    pub created_at: jiff::Timestamp,
    /// Last successful use.
    pub last_used_at: Option<jiff::Timestamp>,
    /// Revoked.
    pub revoked_at: Option<jiff::Timestamp>,
}

/// Every token's id, subject and use (needs `admin`).
pub async fn tokens(session: &Session) -> OpsResult<Vec<TokenInfo>> {
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "list tokens").await?;
    Ok(db
        .tokens()
        .await?
        .into_iter()
        .map(|t| TokenInfo {
            id: t.id,
            subject: t.subject,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        })
        .collect())
}

/// Open access review campaign `review` over every live grant (needs `admin`); returns how
/// many grants it holds.
pub async fn open_review(session: &Session, review: &str) -> OpsResult<u64> {
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "start access reviews").await?;
    let by = format!("user:{}", session.actor.user);
    Ok(db.open_review(review, &by, slipway_stdx::now()).await?)
}

/// Decide grant `grant` in campaign `review`: `confirm` or `revoke` (needs `admin`).
pub async fn decide_review(
    session: &Session,
    review: &str,
    grant: i64,
    decision: &str,
) -> OpsResult<()> {
    if !matches!(decision, "confirm" | "revoke") {
        return Err(OpsError::input(format!(
            "failed to decide grant {grant} in review {review}: `{decision}` is no decision"
        ))
        .hint(Hint::text("decide `confirm` or `revoke`")));
    }
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "decide access reviews").await?;
    let by = format!("user:{}", session.actor.user);
    if !db
        .decide(review, grant, decision, &by, slipway_stdx::now())
        .await?
    {
        return Err(OpsError::input(format!(
            "failed to decide grant {grant} in review {review}: it is not in an open campaign"
        ))
        .hint(Hint::text(
            "start one with `slipway access review start ID`",
        )));
    }
    Ok(())
}

/// Close campaign `review` (needs `admin`); returns the grants nobody reviewed.
pub async fn close_review(session: &Session, review: &str) -> OpsResult<Vec<i64>> {
    let db = AccessDb::for_store(&session.store).await?;
    require_admin(session, &db, "close access reviews").await?;
    let by = format!("user:{}", session.actor.user);
    Ok(db.close_review(review, slipway_stdx::now(), &by).await?)
}
