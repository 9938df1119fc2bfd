//! Who is asking: the API token from `Authorization: Bearer` or the session cookie,
//! verified against the store on every request (a revoked token stops at once), and the
//! `viewer` role per environment once access control is on.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use slipway_govern::access::{self, AuthError};

use crate::{ApiError, AppState};

/// The cookie the login form sets; it holds the token itself (see the crate doc).
pub(crate) const COOKIE: &str = "slipway_token";

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

/// The token of a request: the bearer header first, else the session cookie.
pub(crate) fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let (scheme, token) = v.to_str().ok()?.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|t| !t.is_empty());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|t| !t.is_empty())
}

/// Check a token; the caller it stands for.
pub(crate) async fn verify(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    match access::authenticate_cached(&state.access, token, slipway_stdx::now(), &state.verified)
        .await
    {
        Ok(subject) => Ok(Caller {
            user: subject.strip_prefix("user:").unwrap_or(&subject).to_owned(),
            token_id: access::token_id(token)
                .map(|(id, _)| id.to_owned())
                .unwrap_or_default(),
            bearer: false,
        }),
        // The message names the token's id at most, never its secret.
        Err(AuthError::Refused(e)) => Err(ApiError::unauthenticated(e.to_string())),
        Err(AuthError::Rehash(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            "retry; if it persists, issue a new token with `slipway access token create`",
        )),
        Err(AuthError::Store(e)) => Err(e.into()),
    }
}

async fn caller_of(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = presented(headers)
        .ok_or_else(|| ApiError::unauthenticated("this request carries no API token".to_owned()))?;
    let mut caller = verify(state, &token).await?;
    caller.bearer = headers.contains_key(header::AUTHORIZATION);
    Ok(caller)
}

/// Middleware of `/api/…`: 401 JSON without a valid token.
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

/// Middleware of the pages: to the login form without a valid token.
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
