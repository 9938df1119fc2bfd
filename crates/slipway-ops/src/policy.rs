//! Environment policy owned by admins (`slipway_model::admin_policy`): applied to the store
//! from a policy file, versioned, in the audit chain, read by every plan — never from the
//! release spec it governs — and by the freeze check pipelines ask before merging.

use std::path::Path;

use slipway_govern::access::Role;
use slipway_model::admin_policy::{self, AppliedPolicy, PolicyDoc};
use slipway_model::diag::SpecErrors;
use slipway_model::spec::ReleaseType;
use slipway_store::AnyStore;
use slipway_store::access::{AccessDb, PolicyRow};

use crate::error::{ErrorKind, Hint, OpsError, OpsResult};
use crate::session::Session;

/// Why a policy could not be applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The file does not validate: every diagnostic.
    Invalid(Box<SpecErrors>),
    /// Anything else.
    Ops(OpsError),
}

impl From<OpsError> for ApplyError {
    fn from(e: OpsError) -> Self {
        Self::Ops(e)
    }
}

/// A policy version as applied.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// The new version.
    pub version: i64,
    /// sha256 of the file's text.
    pub digest: String,
    /// Environments it names.
    pub environments: Vec<String>,
}

/// Apply a policy file as the next version (admin everywhere): a governance record the
/// chain commits to (its digest in the entry's summary, its full text committed to), so
/// what every version said verifies like the runs.
pub async fn apply(session: &Session, file: &Path) -> Result<Applied, ApplyError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| OpsError::input(format!("failed to read policy `{}`: {e}", file.display())))?;
    apply_text(session, &file.display().to_string(), &text).await
}

/// [`apply`] of a policy's text (`name` is what diagnostics call it): what the server
/// applies from a request body.
pub async fn apply_text(session: &Session, name: &str, text: &str) -> Result<Applied, ApplyError> {
    let doc = admin_policy::load(name, text).map_err(|e| ApplyError::Invalid(Box::new(e)))?;
    let db = AccessDb::for_store(&session.store)
        .await
        .map_err(OpsError::from)?;
    crate::access::require_admin(session, &db, "apply policy").await?;
    let digest = slipway_package::digest::sha256_bytes(text.as_bytes());
    let version = db
        .apply_policy(
            &digest,
            text,
            &format!("user:{}", session.actor.user),
            slipway_stdx::now(),
        )
        .await
        .map_err(OpsError::from)?;
    Ok(Applied {
        version,
        digest,
        environments: doc.environments.keys().cloned().collect(),
    })
}

/// Every applied version, oldest first (viewer anywhere).
pub async fn versions(session: &Session) -> OpsResult<Vec<PolicyRow>> {
    crate::access::require(session, Role::Viewer, "read the policy", "*").await?;
    let db = AccessDb::for_store(&session.store).await?;
    Ok(db.policies().await?)
}

/// The policy in force for `environment` in `store`, if a policy was applied and names it
/// (or `*`). A stored version that no longer reads is an error, never "no policy".
pub async fn for_environment(
    store: &AnyStore,
    environment: &str,
) -> OpsResult<Option<AppliedPolicy>> {
    let db = AccessDb::for_store(store).await?;
    let Some(row) = db.current_policy().await? else {
        return Ok(None);
    };
    let doc = parse_row(&row)?;
    Ok(doc.for_environment(environment).map(|env| AppliedPolicy {
        version: u32::try_from(row.version).unwrap_or(u32::MAX),
        digest: row.digest,
        env,
    }))
}

fn parse_row(row: &PolicyRow) -> OpsResult<PolicyDoc> {
    admin_policy::load(&format!("policy v{}", row.version), &row.text).map_err(|e| {
        OpsError::new(
            ErrorKind::Evidence,
            format!(
                "failed to read admin policy v{} from the store: {}",
                row.version,
                e.render(false, 100)
            ),
        )
        .hint(Hint::text(
            "an admin applies a valid policy again: `slipway policy apply -f FILE`",
        ))
    })
}

/// Whether a release of `release_type` may deploy to `environment` now, as far as the
/// policy's freezes go: the freeze in force, if it holds this type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FreezeStatus {
    /// The environment.
    pub environment: String,
    /// Frozen for this release type now.
    pub frozen: bool,
    /// The freeze in force (for any type), if one is.
    pub freeze: Option<admin_policy::PolicyFreeze>,
    /// The release type asked about, if any.
    pub release_type: Option<ReleaseType>,
    /// The policy version read.
    pub policy_version: Option<u32>,
}

/// The policy's freeze status of `environment` for a release type (or any, when none is
/// given: then any freeze counts). What a merge pipeline asks (`slipway freeze status`).
pub async fn freeze_status(
    session: &Session,
    environment: &str,
    release_type: Option<ReleaseType>,
) -> OpsResult<FreezeStatus> {
    crate::access::require(session, Role::Viewer, "read the policy", environment).await?;
    let policy = for_environment(&session.store, environment).await?;
    let now = slipway_stdx::now();
    let mut freeze = None;
    let mut frozen = false;
    for f in policy.iter().flat_map(|p| &p.env.freezes) {
        let active =
            slipway_engine::gates::active_freeze(std::slice::from_ref(&f.as_freeze()), now)
                .map_err(|e| {
                    OpsError::input(format!("failed to read a freeze of the policy: {e}"))
                })?
                .is_some();
        if active {
            let holds = release_type.is_none_or(|t| !f.allow.contains(&t));
            frozen |= holds;
            if freeze.is_none() || holds {
                freeze = Some(f.clone());
            }
        }
    }
    Ok(FreezeStatus {
        environment: environment.to_owned(),
        frozen,
        freeze,
        release_type,
        policy_version: policy.map(|p| p.version),
    })
}
