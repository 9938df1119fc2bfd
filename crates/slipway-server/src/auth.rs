//! Who is asking: an API token from `Authorization: Bearer`, or a browser session from
//! the sign-in cookie — each verified against the store on every request (a revoked
//! token, a logged-out or expired session stops at once) — and the `viewer` role per
//! environment once access control is on.
//!
//! The cookie holds a random session id, never the token (`slipway_govern::access::
//! start_session`): a stolen cookie is worth one session that logout or revoking the
//! token ends, and the token itself never sits in a browser. A cookie from before this
//! (`slipway_token=slw_…`) is not accepted.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use slipway_govern::access::{self, AccessError, AuthError};

use crate::{ApiError, AppState};

/// The session cookie's name over plain HTTP.
pub(crate) const COOKIE: &str = "slipway_session";

/// Its name when served over TLS: the `__Host-` prefix makes browsers keep it only if it
/// is `Secure`, has `Path=/` and no `Domain` — bound to this host, never set or read by a
/// sibling domain.
pub(crate) const SECURE_COOKIE: &str = "__Host-slipway_session";

/// The cookie's name under these options.
pub(crate) fn cookie_name(state: &AppState) -> &'static str {
    if state.options.secure_cookie {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// What a request presents.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `Authorization: Bearer slw_…`.
    Token(String),
    /// The browser's session cookie (the session id).
    Session(String),
}

/// The authenticated caller, put in the request's extensions by the middleware.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The user name (the token's subject without `user:`).
    pub user: String,
    /// The verified token's public id.
    pub token_id: String,
    /// The credentials came in an `Authorization` header (a cross-site form cannot set
    /// one), not in the browser's cookie.
    pub bearer: bool,
    /// What was presented, so a long-lived response (an event stream) can check it again.
    pub credential: Credential,
}

impl Caller {
    /// The server's session acting as this caller, with the groups admins keep for them.
    pub(crate) async fn session(&self, state: &AppState) -> Result<slipway_ops::Session, ApiError> {
        Ok(state
            .session
            .as_token_user(&self.user, &self.token_id)
            .await?)
    }
}

/// The value of cookie `name` in a request.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|t| !t.is_empty())
}

/// The credential of a request: the bearer header first, else the session cookie.
pub(crate) fn presented(state: &AppState, headers: &HeaderMap) -> Option<Credential> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let (scheme, token) = v.to_str().ok()?.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(Credential::Token);
    }
    cookie(headers, cookie_name(state)).map(Credential::Session)
}

/// An authentication failure as the API answers it.
pub(crate) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Refused(e @ AccessError::TooManyFailures { .. }) => {
            let retry_after = match &e {
                AccessError::TooManyFailures { retry_after, .. } => *retry_after,
                _ => std::time::Duration::ZERO,
            };
            ApiError::too_many_failures(e.to_string(), retry_after)
        }
        // The message names the token's id at most, never its secret.
        AuthError::Refused(e) => ApiError::unauthenticated(e.to_string()),
        AuthError::Rehash(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            "retry; if it persists, issue a new token with `slipway access token create`",
        ),
        AuthError::Store(e) => e.into(),
    }
}

fn user_of(subject: &str) -> String {
    subject.strip_prefix("user:").unwrap_or(subject).to_owned()
}

/// Check a token; the caller it stands for.
pub(crate) async fn verify(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let subject =
        access::authenticate_cached(&state.access, token, slipway_stdx::now(), &state.verified)
            .await
            .map_err(auth_error)?;
    Ok(Caller {
        user: user_of(&subject),
        token_id: access::token_id(token)
            .map(|(id, _)| id.to_owned())
            .unwrap_or_default(),
        bearer: true,
        credential: Credential::Token(token.to_owned()),
    })
}

/// Check a credential; the caller it stands for.
pub(crate) async fn verify_credential(
    state: &AppState,
    credential: &Credential,
) -> Result<Caller, ApiError> {
    match credential {
        Credential::Token(t) => verify(state, t).await,
        Credential::Session(id) => {
            let (subject, token_id) =
                access::session_subject(&state.access, &state.sessions, id, slipway_stdx::now())
                    .await
                    .map_err(auth_error)?;
            Ok(Caller {
                user: user_of(&subject),
                token_id,
                bearer: false,
                credential: credential.clone(),
            })
        }
    }
}

async fn caller_of(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let credential = presented(state, headers).ok_or_else(|| {
        ApiError::unauthenticated("this request carries no API token or session".to_owned())
    })?;
    verify_credential(state, &credential).await
}

/// Middleware of `/api/…`: 401 JSON without a valid token or session.
pub(crate) async fn require_api(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    match caller_of(&state, req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Middleware of the pages: to the login form without a valid session.
pub(crate) async fn require_page(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    match caller_of(&state, req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let next_path = req.uri().path();
            Redirect::to(&format!("/login?next={}", crate::ui::url_encode(next_path)))
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Whether `caller` may read runs of `environment`: anyone authenticated until the first
/// grant switches access control on, then the `viewer` role there (or `*`).
pub(crate) async fn can_view(
    state: &AppState,
    caller: &Caller,
    environment: &str,
) -> Result<bool, ApiError> {
    Ok(viewable(state, caller).await?(environment))
}

/// [`can_view`] for many environments, with the grants read once: the operations layer's
/// rule (`slipway_ops::access::readable`), the one the CLI applies.
pub(crate) async fn viewable(
    state: &AppState,
    caller: &Caller,
) -> Result<impl Fn(&str) -> bool + use<>, ApiError> {
    Ok(slipway_ops::access::readable(&caller.session(state).await?).await?)
}

/// [`can_view`] as a 403.
pub(crate) async fn require_view(
    state: &AppState,
    caller: &Caller,
    environment: &str,
) -> Result<(), ApiError> {
    if can_view(state, caller, environment).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "user:{} lacks the `viewer` role in `{environment}`",
                caller.user
            ),
            format!(
                "ask an admin for `slipway access grant user:{} viewer --env {environment}`",
                caller.user
            ),
        ))
    }
}
