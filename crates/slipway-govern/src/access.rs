//! Who may do what: roles granted to users and groups per environment, API tokens, peer
//! review of high-risk plans, and access review campaigns. Records live in
//! `slipway_store::access`; this module is the policy.
//!
//! Roles are ordered: `viewer` < `deployer` < `approver` < `admin`, each including the
//! ones before it (an approver may deploy; only an admin grants). A grant is for one
//! environment or `*`. A refusal names the role that is missing and where.
//!
//! Tokens are `slw_<id>_<secret>` with 32 random bytes of secret; the store keeps only an
//! argon2id hash of the secret as a PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`,
//! its own random salt inside), as the issue asks: a stolen store file then yields nothing
//! usable even for a short or leaked-pattern secret, and the PHC string carries its
//! parameters so they can be raised later without a migration. Rows written by earlier
//! builds (salt column + hex sha256(salt ‖ secret)) still verify; [`needs_rehash`] tells the
//! caller to replace them with an argon2id hash on their next successful use.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use slipway_store::access::{GrantRow, TokenRow};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read runs and reports.
    Viewer,
    /// Deploy, pause, resume, abort.
    Deployer,
    /// Approve plans.
    Approver,
    /// Grant roles, manage tokens, run access reviews.
    Admin,
}

impl Role {
    /// Parse a stored role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "deployer" => Some(Self::Deployer),
            "approver" => Some(Self::Approver),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Approver => "approver",
            Self::Admin => "admin",
        }
    }
}

/// Why access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The subject lacks a role.
    #[error(
        "{action} in `{environment}`: {subject} lacks the `{}` role there; ask an admin for `slipway access grant {subject} {} --env {environment}`",
        role.as_str(), role.as_str()
    )]
    MissingRole {
        /// Who asked.
        subject: String,
        /// What they tried.
        action: String,
        /// The role needed.
        role: Role,
        /// Where.
        environment: String,
    },
    /// The author approved a plan that needs a peer review.
    #[error(
        "count the approval of run `{run}`: {approver} is its author, and a high-risk plan needs a review by someone else"
    )]
    SelfApproval {
        /// The run.
        run: String,
        /// The author-approver.
        approver: String,
    },
    /// A token that does not verify.
    #[error("authenticate with the token: {0}")]
    Token(String),
}

/// Check that `user` (with `groups`) holds `role` in `environment`.
pub fn authorize(
    grants: &[GrantRow],
    user: &str,
    groups: &[String],
    role: Role,
    action: &str,
    environment: &str,
) -> Result<(), AccessError> {
    let subjects: Vec<String> = std::iter::once(format!("user:{user}"))
        .chain(groups.iter().map(|g| format!("group:{g}")))
        .collect();
    let ok = grants.iter().any(|g| {
        g.revoked_at.is_none()
            && subjects.contains(&g.subject)
            && (g.environment == "*" || g.environment == environment)
            && Role::parse(&g.role).is_some_and(|r| r >= role)
    });
    if ok {
        Ok(())
    } else {
        Err(AccessError::MissingRole {
            subject: format!("user:{user}"),
            action: action.to_owned(),
            role,
            environment: environment.to_owned(),
        })
    }
}

/// Whether a plan needs a peer review before approvals count: a high risk level, or a
/// security or hotfix release in production.
pub fn needs_peer_review(plan: &slipway_model::plan::Plan) -> bool {
    use slipway_model::spec::ReleaseType;
    plan.risk.level == "high"
        || (plan.production
            && matches!(
                plan.release.release_type,
                ReleaseType::Security | ReleaseType::Hotfix
            ))
}

/// Refuse an approval by the run's author when the plan needs a peer review.
pub fn check_approval(
    plan: &slipway_model::plan::Plan,
    run: &str,
    author: &str,
    approver: &str,
) -> Result<(), AccessError> {
    if approver == author && needs_peer_review(plan) {
        return Err(AccessError::SelfApproval {
            run: run.to_owned(),
            approver: approver.to_owned(),
        });
    }
    Ok(())
}

/// A token just issued: shown once, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// `slw_<id>_<secret>`.
    pub token: String,
    /// What the store keeps.
    pub row: TokenRow,
}

fn random_hex(n: usize) -> Result<String, AccessError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| AccessError::Token(format!("the system random source failed: {e}")))?;
    Ok(hex::encode(b))
}

/// The legacy (pre-argon2) digest: hex sha256(salt ‖ secret).
fn legacy_digest(salt: &str, secret: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}{secret}").as_bytes()))
}

/// The argon2id PHC string of a token secret, with a fresh random salt.
pub fn hash_secret(secret: &str) -> Result<String, AccessError> {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AccessError::Token(format!("hash the token with argon2id: {e}")))
}

/// Whether a stored row still holds a legacy sha256 digest (to be rehashed with argon2id
/// once its secret is at hand, i.e. on its next successful use).
pub fn needs_rehash(row: &TokenRow) -> bool {
    !row.hash.starts_with("$argon2")
}

fn secret_matches(row: &TokenRow, secret: &str) -> bool {
    if needs_rehash(row) {
        // Compare digests, not secrets: equal-length hex, the secret never leaves here.
        return legacy_digest(&row.salt, secret) == row.hash;
    }
    // argon2's verifier compares in constant time, with the parameters the PHC string names.
    PasswordHash::new(&row.hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// Issue a token for `user`.
pub fn issue_token(user: &str, now: Timestamp) -> Result<IssuedToken, AccessError> {
    let id = random_hex(6)?;
    let secret = random_hex(32)?;
    Ok(IssuedToken {
        row: TokenRow {
            id: id.clone(),
            subject: format!("user:{user}"),
            hash: hash_secret(&secret)?,
            // The salt lives inside the PHC string; the column stays for legacy rows.
            salt: String::new(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        },
        token: format!("slw_{id}_{secret}"),
    })
}

/// Split a token into (id, secret).
pub fn token_id(token: &str) -> Result<(&str, &str), AccessError> {
    token
        .strip_prefix("slw_")
        .and_then(|t| t.split_once('_'))
        .ok_or_else(|| AccessError::Token("it is not a slipway token (slw_ID_SECRET)".into()))
}

/// Verify a token against its stored row; the subject it acts as.
pub fn verify_token(token: &str, row: Option<&TokenRow>) -> Result<String, AccessError> {
    let (id, secret) = token_id(token)?;
    let row = row
        .filter(|r| r.id == id)
        .ok_or_else(|| AccessError::Token(format!("token {id} is unknown")))?;
    if row.revoked_at.is_some() {
        return Err(AccessError::Token(format!("token {id} was revoked")));
    }
    if !secret_matches(row, secret) {
        return Err(AccessError::Token(format!("token {id} does not match")));
    }
    Ok(row.subject.clone())
}

/// Tokens a long-running process (`slipway serve`) has already verified, so a token used
/// on every request costs the argon2id verification once, not per request (about 30 ms
/// each on these machines).
///
/// Keyed by sha256 of the whole presented token (a token has 256 bits of random secret,
/// so a fast hash of it is as unguessable as the token), holding the stored hash it was
/// verified against. The row is still read on every use: a revoked or re-issued token is
/// refused at once, and a changed stored hash (rehash, replaced row) means a full
/// verification again. A wrong secret has another key and always gets the full check.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    inner: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    stored_hash: String,
    touched: Timestamp,
}

/// How many verified tokens [`VerifiedTokens`] keeps before it starts over.
const VERIFIED_TOKENS_CAP: usize = 4096;

/// How often a cached token's `last_used_at` is written: a request per second would
/// otherwise be a write per second for a figure access reviews read by the day.
const TOUCH_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

impl VerifiedTokens {
    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn get(&self, token: &str) -> Option<Verified> {
        let map = self.inner.lock().ok()?;
        map.get(&Self::key(token)).cloned()
    }

    fn put(&self, token: &str, v: Verified) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= VERIFIED_TOKENS_CAP {
                map.clear();
            }
            map.insert(Self::key(token), v);
        }
    }
}

/// [`authenticate`] for a process that sees the same tokens again and again: the row is
/// read every time (revocation is immediate), the argon2id check runs only when this
/// exact token was not yet verified against the row's current hash, and `last_used_at`
/// is written at most once a minute per token.
pub async fn authenticate_cached(
    db: &slipway_store::access::AccessDb,
    token: &str,
    now: Timestamp,
    cache: &VerifiedTokens,
) -> Result<String, AuthError> {
    let (id, _) = token_id(token).map_err(AuthError::Refused)?;
    let row = db.token(id).await.map_err(AuthError::Store)?;
    if let (Some(row), Some(hit)) = (row.as_ref(), cache.get(token))
        && row.id == id
        && row.revoked_at.is_none()
        && row.hash == hit.stored_hash
    {
        if now.duration_since(hit.touched) >= TOUCH_EVERY {
            db.touch_token(id, now).await.map_err(AuthError::Store)?;
            cache.put(
                token,
                Verified {
                    touched: now,
                    ..hit
                },
            );
        }
        return Ok(row.subject.clone());
    }
    let subject = authenticate(db, token, now).await?;
    // After a rehash the row holds a new hash: cache the one now stored.
    if let Some(row) = db.token(id).await.map_err(AuthError::Store)? {
        cache.put(
            token,
            Verified {
                stored_hash: row.hash,
                touched: now,
            },
        );
    }
    Ok(subject)
}

/// Why [`authenticate`] did not accept a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown, revoked, malformed or wrong: the caller is not who the token claims.
    #[error("{0}")]
    Refused(AccessError),
    /// A legacy row could not be rehashed.
    #[error("{0}")]
    Rehash(AccessError),
    /// The store could not be asked.
    #[error("{0}")]
    Store(slipway_engine::store::StoreError),
}

/// Verify a presented token against the access tables: it must exist, be live and match
/// its stored hash. Returns its subject (`user:NAME`); records the use, and upgrades a
/// legacy sha256 row to argon2id. The one check `--token` and `slipway serve` share.
pub async fn authenticate(
    db: &slipway_store::access::AccessDb,
    token: &str,
    now: Timestamp,
) -> Result<String, AuthError> {
    let (id, secret) = token_id(token).map_err(AuthError::Refused)?;
    let row = db.token(id).await.map_err(AuthError::Store)?;
    let subject = verify_token(token, row.as_ref()).map_err(AuthError::Refused)?;
    if row.as_ref().is_some_and(needs_rehash) {
        let hash = hash_secret(secret).map_err(AuthError::Rehash)?;
        db.rehash_token(id, &hash).await.map_err(AuthError::Store)?;
    }
    db.touch_token(id, now).await.map_err(AuthError::Store)?;
    Ok(subject)
}
