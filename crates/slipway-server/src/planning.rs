//! Planning and environments over the API (`slipway --server URL plan | diff | env …`):
//! each route is one `slipway_ops` call for the caller, on this server's store — the
//! operations layer's rules, none of the server's own.
//!
//! - `POST /api/v1/plans?environment=E&file=F[&override_promotion=REASON]` with a bundle
//!   (`slipway_package::bundle`, as `deploy --server` packs it) and
//!   `X-Slipway-Bundle-Sha256`: the plan `slipway plan -f F --env E --output json` prints
//!   (`slipway_ops::bundles::plan`; viewer in E; nothing kept, no run started).
//! - `POST /api/v1/diff` `{spec, left, right}` (the spec as the CLI loaded it): the two
//!   environments compared against what this store records as running there
//!   (`slipway_ops::parity::diff`; viewer in both).
//! - `GET /api/v1/leases` (the leases of the environments the caller may read),
//!   `POST /api/v1/leases/{env}` `{reason, ttl_seconds}` and
//!   `POST /api/v1/leases/{env}/release` `{force}` (`slipway_ops::lease`: deployer there,
//!   audited with the acting person).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Value, json};
use slipway_engine::store::LeaseRecord;
use slipway_govern::access::Role;
use slipway_ops::planning::{PlanError, PlanOptions};

use crate::auth::{Caller, viewable};
use crate::deploy::BUNDLE_DIGEST_HEADER;
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

fn bad_body(e: &serde_json::Error, fields: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("the request body does not parse: {e}"),
        format!("send a JSON object with {fields}"),
    )
}

/// A POST: authenticated by a token, or by a session from this server's own pages.
async fn posted(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<slipway_ops::Session, ApiError> {
    crate::control::require_same_site(caller, headers, None)?;
    caller.session(state).await
}

/// `POST /api/v1/plans?environment=E&file=F[&override_promotion=REASON]`.
pub(crate) async fn plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let environment = q.get("environment").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the plan names no environment",
            "POST /api/v1/plans?environment=ENV&file=SPEC with the bundle as the body",
        )
    })?;
    let session = posted(&state, &caller, &headers).await?;
    // Before the body is read: a caller who may not read the environment sends it for
    // nothing.
    slipway_ops::access::require(&session, Role::Viewer, "plan", environment).await?;
    let data = crate::deploy::read_bundle(body).await?;
    let declared = headers
        .get(BUNDLE_DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let shown = q
        .get("file")
        .cloned()
        .unwrap_or_else(|| "release.yaml".to_owned());
    let options = PlanOptions {
        override_promotion: q.get("override_promotion").cloned(),
    };
    let p = slipway_ops::bundles::plan(
        &session,
        environment,
        declared.as_deref(),
        data,
        &shown,
        &options,
    )
    .await
    .map_err(|e| match e {
        PlanError::Ops(e) => ApiError::from(e),
        PlanError::Spec(errs) => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the bundle's spec `{}` does not validate", errs.file),
            "fix the spec (`slipway validate -f SPEC` shows every problem), then plan again",
        )
        .with("diagnostics", json!(errs.diagnostics)),
    })?;
    Ok(Json(json!(p)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffBody {
    spec: slipway_model::spec::ReleaseSpec,
    left: String,
    right: String,
}

/// `POST /api/v1/diff` `{spec, left, right}`.
pub(crate) async fn diff(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: DiffBody =
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "spec, left and right"))?;
    let session = posted(&state, &caller, &headers).await?;
    // What runs in each environment is what their viewers may read.
    for env in [&b.left, &b.right] {
        slipway_ops::access::require(&session, Role::Viewer, "compare", env).await?;
    }
    let store: &dyn slipway_engine::Store = session.store.as_ref();
    let parity = slipway_ops::parity::diff(Some(store), &b.spec, &b.left, &b.right).await?;
    Ok(Json(json!(parity)))
}

/// `GET /api/v1/leases`: the leases of the environments the caller may read.
pub(crate) async fn leases(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let may_view = viewable(&state, &caller).await?;
    let mut leases = state.store.leases().await?;
    leases.retain(|l| may_view(&l.environment));
    Ok(Json(json!(leases)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    reason: String,
    ttl_seconds: u64,
}

/// `POST /api/v1/leases/{env}` `{reason, ttl_seconds}`: a manual lease, held by
/// `manual:<the caller>`.
pub(crate) async fn lease(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: LeaseBody =
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "reason and ttl_seconds"))?;
    let session = posted(&state, &caller, &headers).await?;
    let ttl = std::time::Duration::from_secs(b.ttl_seconds);
    let l: LeaseRecord = slipway_ops::lease::lease(&session, &env, &b.reason, ttl).await?;
    Ok(Json(json!(l)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/leases/{env}/release` `{force}`: `{released: LEASE | null, holder}` —
/// `holder` is whose lease a release without `force` gives up (the caller's manual one).
pub(crate) async fn release(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: ReleaseBody = if body.is_empty() {
        ReleaseBody { force: false }
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "force (optional)"))?
    };
    let session = posted(&state, &caller, &headers).await?;
    let gone = slipway_ops::lease::release(&session, &env, b.force).await?;
    Ok(Json(json!({
        "released": gone,
        "holder": format!("manual:{}", session.actor.user),
    })))
}
