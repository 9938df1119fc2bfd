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
//!
//! A refused token gets one answer, [`REFUSED`], whether its id is unknown, revoked or its
//! secret wrong, and the same work: an unknown or revoked id is checked against a dummy
//! argon2id hash, so neither the message nor the time tells an attacker which ids exist.
//! A long-running server ([`VerifiedTokens`]) also counts failed attempts per token id:
//! past [`MAX_FAILURES`] in [`FAILURE_WINDOW`] an id is refused at once, without the
//! argon2id work (about 30 ms each, the cost a flood of wrong secrets imposed on everyone
//! else), until the window has passed; a token already verified keeps working.
//!
//! Browser sessions ([`start_session`], [`session_subject`], [`WebSessions`]): the sign-in
//! cookie holds a random session id of its own, never the token; the server keeps its
//! sha256 in memory.

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
    /// The token id failed too often lately: refused unchecked until `retry_after` passed
    /// (the same for an id that exists and one that does not).
    #[error(
        "authenticate with the token: token {id} was refused {MAX_FAILURES} times within {}s; try again in {}s",
        FAILURE_WINDOW.as_secs(),
        retry_after.as_secs() + 1
    )]
    TooManyFailures {
        /// The token's public id.
        id: String,
        /// How long it stays refused.
        retry_after: std::time::Duration,
    },
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

/// Why any token is refused: one text whatever the reason, so a refusal does not tell
/// whether the id exists.
pub const REFUSED: &str = "it is unknown, revoked or its secret is wrong";

fn refused(id: &str) -> AccessError {
    AccessError::Token(format!("token {id} is not valid: {REFUSED}"))
}

/// An argon2id hash of nothing anyone holds, with the parameters real tokens get: what an
/// unknown or revoked id is checked against, so it costs the same time as a wrong secret.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash_secret("slipway-dummy-secret-nobody-holds").ok())
        .as_deref()
}

/// Verify a token against its stored row; the subject it acts as. Unknown, revoked and
/// wrong are refused alike ([`REFUSED`]), after the same argon2id work.
pub fn verify_token(token: &str, row: Option<&TokenRow>) -> Result<String, AccessError> {
    let (id, secret) = token_id(token)?;
    let Some(row) = row.filter(|r| r.id == id && r.revoked_at.is_none()) else {
        if let Some(h) = dummy_hash().and_then(|h| PasswordHash::new(h).ok()) {
            let _ = Argon2::default().verify_password(secret.as_bytes(), &h);
        }
        return Err(refused(id));
    };
    if !secret_matches(row, secret) {
        return Err(refused(id));
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
    /// Failed attempts per token id in the current window (see the module doc).
    failures: std::sync::Mutex<std::collections::HashMap<String, Failures>>,
}

/// Failed attempts of one token id since `since`.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: std::time::Instant,
    count: u32,
}

/// Failed attempts one token id may make per [`FAILURE_WINDOW`] before it is refused
/// without being checked.
pub const MAX_FAILURES: u32 = 5;

/// The window [`MAX_FAILURES`] counts in.
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// How many ids [`VerifiedTokens`] tracks failures of before it drops the oldest windows
/// (random ids must not grow it without bound).
const FAILURES_CAP: usize = 65_536;

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

    /// How long `id` is still refused unchecked, when it used up its failures.
    pub fn locked_out(&self, id: &str) -> Option<std::time::Duration> {
        let map = self.failures.lock().ok()?;
        let f = map.get(id)?;
        let left = FAILURE_WINDOW.checked_sub(f.since.elapsed())?;
        (f.count >= MAX_FAILURES).then_some(left)
    }

    /// Count a failed attempt of `id`.
    fn failed(&self, id: &str) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        if map.len() >= FAILURES_CAP {
            map.retain(|_, f| now.duration_since(f.since) < FAILURE_WINDOW);
            if map.len() >= FAILURES_CAP {
                map.clear();
            }
        }
        let f = map.entry(id.to_owned()).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.duration_since(f.since) >= FAILURE_WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
    }
}

/// [`authenticate`] for a process that sees the same tokens again and again: the row is
/// read every time (revocation is immediate), the argon2id check runs only when this
/// exact token was not yet verified against the row's current hash, and `last_used_at`
/// is written at most once a minute per token. Failed attempts are counted per token id:
/// an id past [`MAX_FAILURES`] in [`FAILURE_WINDOW`] is refused with
/// [`AccessError::TooManyFailures`] without any check, unless this exact token was verified
/// before (its holder keeps working while someone guesses at its id).
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
    if let Some(retry_after) = cache.locked_out(id) {
        return Err(AuthError::Refused(AccessError::TooManyFailures {
            id: id.to_owned(),
            retry_after,
        }));
    }
    let subject = match authenticate(db, token, now).await {
        Err(AuthError::Refused(e)) => {
            cache.failed(id);
            return Err(AuthError::Refused(e));
        }
        r => r?,
    };
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

/// One browser session, as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The API token it was signed in with.
    pub token_id: String,
    /// `user:NAME`.
    pub subject: String,
    /// Signed in.
    pub created_at: Timestamp,
    /// No longer honoured from then on.
    pub expires_at: Timestamp,
}

/// How many live sessions [`WebSessions`] keeps; past it the oldest is dropped (its
/// browser signs in again), so sign-ins cannot grow the table without bound.
const SESSIONS_CAP: usize = 65_536;

/// The browser sessions of one `slipway serve` process, by the sha256 of their id.
///
/// Held in memory, not in the store: a session is a short-lived credential derived from a
/// token, not evidence, and the store's tables are versioned audit records. A restart of
/// the server therefore signs every browser out (they sign in again with their token),
/// which errs on the safe side. Logging out removes the session at once; revoking its
/// token (in any process) ends it on the next request, because [`session_subject`]
/// re-reads the token on every call.
#[derive(Debug, Default)]
pub struct WebSessions {
    inner: std::sync::Mutex<std::collections::HashMap<String, SessionRow>>,
}

impl WebSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, SessionRow>> {
        // A panic while holding the lock leaves a map that is still consistent (every
        // operation is one insert or remove): keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep `row` under `id_hash`, forgetting sessions expired by `row.created_at`.
    fn add(&self, id_hash: String, row: SessionRow) {
        let mut map = self.lock();
        map.retain(|_, r| r.expires_at > row.created_at);
        if map.len() >= SESSIONS_CAP
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, r)| r.created_at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id_hash, row);
    }

    /// The session whose id is `id`, if it was started and not ended.
    fn get(&self, id: &str) -> Option<SessionRow> {
        self.lock().get(&session_hash(id)).cloned()
    }

    /// End the session whose id is `id` (logout); false when unknown or already ended.
    pub fn end(&self, id: &str) -> bool {
        self.lock().remove(&session_hash(id)).is_some()
    }

    /// End every session signed in with the token `token_id`; how many.
    pub fn end_of_token(&self, token_id: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, r| r.token_id != token_id);
        before - map.len()
    }
}

/// A browser session just started: the id for the cookie (shown once, kept only as its
/// sha256) and what the server keeps.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// 64 hex characters of randomness: the cookie's value.
    pub id: String,
    /// What [`WebSessions`] keeps.
    pub row: SessionRow,
}

/// The sha256 a session id is kept under (a dump of the server's memory holds no usable
/// cookie).
pub fn session_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Sign a browser in: verify `token` (as [`authenticate_cached`], failures counted) and
/// keep a session for its subject that lasts `ttl` unless ended earlier.
pub async fn start_session(
    db: &slipway_store::access::AccessDb,
    sessions: &WebSessions,
    token: &str,
    now: Timestamp,
    ttl: std::time::Duration,
    cache: &VerifiedTokens,
) -> Result<NewSession, AuthError> {
    let subject = authenticate_cached(db, token, now, cache).await?;
    let (token_id, _) = token_id(token).map_err(AuthError::Refused)?;
    let id = random_hex(32).map_err(AuthError::Refused)?;
    let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::from_hours(12));
    let row = SessionRow {
        token_id: token_id.to_owned(),
        subject,
        created_at: now,
        expires_at: now.checked_add(ttl).unwrap_or(now),
    };
    sessions.add(session_hash(&id), row.clone());
    Ok(NewSession { id, row })
}

/// Who a session cookie stands for: its subject and token id, while the session is not
/// ended or expired and the token it was signed in with is live (the token is read on
/// every call, so revoking it acts at once, from any process).
pub async fn session_subject(
    db: &slipway_store::access::AccessDb,
    sessions: &WebSessions,
    id: &str,
    now: Timestamp,
) -> Result<(String, String), AuthError> {
    let gone = || {
        AuthError::Refused(AccessError::Token(
            "the session ended, expired or is unknown; sign in again".into(),
        ))
    };
    let row = sessions.get(id).ok_or_else(gone)?;
    if row.expires_at <= now {
        sessions.end(id);
        return Err(gone());
    }
    let live = db
        .token(&row.token_id)
        .await
        .map_err(AuthError::Store)?
        .is_some_and(|t| t.revoked_at.is_none() && t.subject == row.subject);
    if !live {
        sessions.end_of_token(&row.token_id);
        return Err(AuthError::Refused(AccessError::Token(format!(
            "the session's token {} was revoked; sign in again with a live token",
            row.token_id
        ))));
    }
    Ok((row.subject, row.token_id))
}
