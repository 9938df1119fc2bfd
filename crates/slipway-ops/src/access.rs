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

/// Verify an API token against the store named by `url`: it must exist, be live and match
/// its stored hash. Returns the user it acts as (its subject without `user:`); records
/// its last use, and upgrades a legacy sha256 row to argon2id.
pub async fn authenticate(url: Option<&str>, token: &str) -> OpsResult<String> {
    let cwd = std::env::current_dir().map_err(|e| {
        OpsError::new(
            ErrorKind::Store,
            format!("failed to read the current directory: {e}"),
        )
    })?;
    let loc = slipway_store::resolve(url, &cwd)?;
    // Only an existing store: a token can only be known to a store that holds grants, and
    // verifying one must not create a store at a mistyped path.
    let store: AnyStore = slipway_store::open_existing(&loc).await?;
    let db = AccessDb::for_store(&store).await?;
    let subject = access::authenticate(&db, token, slipway_stdx::now())
        .await
        .map_err(|e| match e {
            access::AuthError::Refused(e) => {
                OpsError::new(ErrorKind::Unauthenticated, format!("failed to {e}"))
                    .hint(Hint::GetToken)
            }
            access::AuthError::Rehash(e) => refused(e),
            access::AuthError::Store(e) => e.into(),
        })?;
    db.close().await;
    Ok(subject.strip_prefix("user:").unwrap_or(&subject).to_owned())
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
