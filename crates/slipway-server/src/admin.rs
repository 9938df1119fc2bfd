//! Access and policy over the API (`slipway --server URL access …` / `policy …`): each
//! route is one `slipway_ops::access` or `slipway_ops::policy` call for the caller — the
//! operations layer decides who may (admin for changes, viewer for the policy), exactly
//! as for the CLI on a store; the server adds no rule of its own. A change from a browser
//! session needs this server's own page (`control::require_same_site`).
//!
//! Reads: `GET /api/v1/access/whoami`, `…/access/grants`, `…/access/groups[?group=G]`,
//! `…/access/tokens`, `/api/v1/policy`. Changes: `POST /api/v1/access/grants`
//! `{subject, role, environment}`, `…/access/grants/{id}/revoke`,
//! `…/access/groups/{group}/members` `{user}`, `…/access/groups/{group}/members/{user}/remove`,
//! `…/access/tokens` `{user?}` (the answer holds the new token, the one time it exists),
//! `…/access/tokens/{id}/revoke`, `POST /api/v1/policy` `{name, text}`; access review
//! campaigns: `POST …/access/reviews/{review}` (open), `…/access/reviews/{review}/grants/{id}`
//! `{decision}`, `…/access/reviews/{review}/close`. The freeze status a merge pipeline asks:
//! `GET /api/v1/freeze?environment=E[&type=T]`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

fn bad_body(e: &serde_json::Error, fields: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("the request body does not parse: {e}"),
        format!("send a JSON object with {fields}"),
    )
}

/// A change: authenticated by a token, or by a session from this server's own pages.
async fn changing(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<slipway_ops::Session, ApiError> {
    crate::control::require_same_site(caller, headers, None)?;
    caller.session(state).await
}

/// `GET /api/v1/access/whoami`: the caller as the operations layer sees them.
pub(crate) async fn whoami(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let s = caller.session(&state).await?;
    Ok(Json(json!(s.actor)))
}

/// `GET /api/v1/access/grants`.
pub(crate) async fn grants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let s = caller.session(&state).await?;
    Ok(Json(json!(slipway_ops::access::grants(&s).await?)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    subject: String,
    role: String,
    environment: String,
}

/// `POST /api/v1/access/grants`.
pub(crate) async fn grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: GrantBody =
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "subject, role, environment"))?;
    let s = changing(&state, &caller, &headers).await?;
    let g = slipway_ops::access::grant(&s, &b.subject, &b.role, &b.environment).await?;
    Ok(Json(json!(g)))
}

/// `POST /api/v1/access/grants/{id}/revoke`.
pub(crate) async fn revoke_grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_parameter("id", &id, "a grant id (a whole number)"))?;
    let s = changing(&state, &caller, &headers).await?;
    slipway_ops::access::revoke_grant(&s, id).await?;
    Ok(Json(json!({"grant": id, "revoked": true})))
}

/// `GET /api/v1/access/groups[?group=G]`.
pub(crate) async fn members(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let s = caller.session(&state).await?;
    let m = slipway_ops::access::members(&s, q.get("group").map(String::as_str)).await?;
    Ok(Json(json!(m)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    user: String,
}

/// `POST /api/v1/access/groups/{group}/members`.
pub(crate) async fn add_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: MemberBody = serde_json::from_slice(&body).map_err(|e| bad_body(&e, "user"))?;
    let s = changing(&state, &caller, &headers).await?;
    let added = slipway_ops::access::add_member(&s, &group, &b.user).await?;
    Ok(Json(
        json!({"group": group, "user": b.user, "added": added}),
    ))
}

/// `POST /api/v1/access/groups/{group}/members/{user}/remove`.
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((group, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    let s = changing(&state, &caller, &headers).await?;
    if !slipway_ops::access::remove_member(&s, &group, &user).await? {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("failed to remove user:{user} from group:{group}: not a member"),
            "list members with GET /api/v1/access/groups",
        ));
    }
    Ok(Json(json!({"group": group, "user": user, "removed": true})))
}

/// `GET /api/v1/access/tokens`.
pub(crate) async fn tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let s = caller.session(&state).await?;
    Ok(Json(json!(slipway_ops::access::tokens(&s).await?)))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[serde(default)]
    user: Option<String>,
}

/// `POST /api/v1/access/tokens`: the new token, in this answer only.
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: TokenBody = if body.iter().all(u8::is_ascii_whitespace) {
        TokenBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "an optional user"))?
    };
    let s = changing(&state, &caller, &headers).await?;
    Ok(Json(json!(
        slipway_ops::access::create_token(&s, b.user.as_deref()).await?
    )))
}

/// `POST /api/v1/access/tokens/{id}/revoke`.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let s = changing(&state, &caller, &headers).await?;
    slipway_ops::access::revoke_token(&s, &id).await?;
    Ok(Json(json!({"id": id, "revoked": true})))
}

/// `GET /api/v1/policy`: every applied version, oldest first.
pub(crate) async fn policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let s = caller.session(&state).await?;
    Ok(Json(json!(slipway_ops::policy::versions(&s).await?)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    name: String,
    text: String,
}

/// `POST /api/v1/policy`: apply a policy's text as the next version; a policy that does
/// not validate is 400 with every diagnostic.
pub(crate) async fn apply_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: PolicyBody = serde_json::from_slice(&body).map_err(|e| bad_body(&e, "name, text"))?;
    let s = changing(&state, &caller, &headers).await?;
    match slipway_ops::policy::apply_text(&s, &b.name, &b.text).await {
        Ok(applied) => Ok(Json(json!(applied))),
        Err(slipway_ops::policy::ApplyError::Ops(e)) => Err(e.into()),
        Err(slipway_ops::policy::ApplyError::Invalid(errs)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} has {} error(s); nothing was applied",
                errs.file,
                errs.error_count()
            ),
            "fix the policy file and apply it again",
        )
        .with("diagnostics", json!(errs.diagnostics))),
    }
}

/// `POST /api/v1/access/reviews/{review}`: open a campaign over every live grant.
pub(crate) async fn open_review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(review): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let s = changing(&state, &caller, &headers).await?;
    let n = slipway_ops::access::open_review(&s, &review).await?;
    Ok(Json(json!({"review": review, "opened": true, "grants": n})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
}

/// `POST /api/v1/access/reviews/{review}/grants/{id}` `{decision: confirm|revoke}`.
pub(crate) async fn decide_review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((review, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_parameter("id", &id, "a grant id (a whole number)"))?;
    let b: DecisionBody =
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "decision (confirm or revoke)"))?;
    let s = changing(&state, &caller, &headers).await?;
    slipway_ops::access::decide_review(&s, &review, id, &b.decision).await?;
    Ok(Json(
        json!({"review": review, "grant": id, "decision": b.decision}),
    ))
}

/// `POST /api/v1/access/reviews/{review}/close`: the grants nobody reviewed.
pub(crate) async fn close_review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(review): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let s = changing(&state, &caller, &headers).await?;
    let unreviewed = slipway_ops::access::close_review(&s, &review).await?;
    Ok(Json(
        json!({"review": review, "closed": true, "unreviewed": unreviewed}),
    ))
}

/// `GET /api/v1/freeze?environment=E[&type=T]`: the policy's freeze status for a merge
/// pipeline (viewer in that environment).
pub(crate) async fn freeze_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let env = q
        .get("environment")
        .ok_or_else(|| ApiError::bad_parameter("environment", "", "an environment name"))?;
    let release_type = q
        .get("type")
        .map(|t| {
            serde_json::from_value::<slipway_model::spec::ReleaseType>(json!(t)).map_err(|_| {
                ApiError::bad_parameter("type", t, "feature, patch, security or hotfix")
            })
        })
        .transpose()?;
    let s = caller.session(&state).await?;
    Ok(Json(json!(
        slipway_ops::policy::freeze_status(&s, env, release_type).await?
    )))
}
