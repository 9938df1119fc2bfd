//! Governance records over the API, for `slipway --server URL review | checklist |
//! retention`: each route reads or writes the store's records for the caller, with the
//! role the same command needs on a store; every write is a governance record of the
//! audit chain with the acting person (`Store::append_governance`).
//!
//! - `GET /api/v1/reviews`: reviews after the fact (of the environments the caller may
//!   read); `POST /api/v1/reviews/{run}/complete` `{note}` (`slipway_ops::review::complete`:
//!   approver there, never the run's author).
//! - `GET /api/v1/checklist/acks?release=R&version=V&environment=E` (viewer in E);
//!   `POST /api/v1/checklist/acks` `{release, version, environment, item, note}` (approver
//!   in E). Which items a spec's checklist has is read from the spec, by the CLI.
//! - `GET /api/v1/retention` (the policy, which is no environment's record: any
//!   authenticated caller); `POST /api/v1/retention/{kind}` `{live_days, keep_days}`
//!   (admin on `*`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Value, json};
use slipway_govern::access::Role;
use slipway_govern::archive::{KINDS, RetentionPolicy};
use slipway_store::archive::{ArchiveDb, PolicyRow};
use slipway_store::checklist::{Ack, ChecklistDb};

use crate::auth::{Caller, viewable};
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

fn bad_body(e: &serde_json::Error, fields: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("the request body does not parse: {e}"),
        format!("send a JSON object with {fields}"),
    )
}

/// A write: authenticated by a token, or by a session from this server's own pages.
async fn changing(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<slipway_ops::Session, ApiError> {
    crate::control::require_same_site(caller, headers, None)?;
    caller.session(state).await
}

/// `GET /api/v1/reviews`.
pub(crate) async fn reviews(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let may_view = viewable(&state, &caller).await?;
    let mut list = slipway_ops::review::list(state.store.as_ref()).await?;
    list.retain(|r| may_view(&r.environment));
    Ok(Json(json!(list)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    note: String,
}

/// `POST /api/v1/reviews/{run}/complete` `{note}`.
pub(crate) async fn complete_review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: CompleteBody = serde_json::from_slice(&body).map_err(|e| bad_body(&e, "note"))?;
    let session = changing(&state, &caller, &headers).await?;
    let r = slipway_ops::review::complete(&session, &run, &b.note).await?;
    Ok(Json(json!(r)))
}

/// A query parameter that must be there.
fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    q.get(name)
        .map(String::as_str)
        .ok_or_else(|| ApiError::bad_parameter(name, "", "given"))
}

/// `GET /api/v1/checklist/acks?release=R&version=V&environment=E`.
pub(crate) async fn acks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let (release, version, environment) = (
        required(&q, "release")?,
        required(&q, "version")?,
        required(&q, "environment")?,
    );
    crate::auth::require_view(&state, &caller, environment).await?;
    let acks = ChecklistDb::for_store(&state.session.store)
        .acks(release, version, environment)
        .await?;
    Ok(Json(json!(acks)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    release: String,
    version: String,
    environment: String,
    item: String,
    note: String,
}

/// `POST /api/v1/checklist/acks`: acknowledged as the caller.
pub(crate) async fn acknowledge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: AckBody = serde_json::from_slice(&body)
        .map_err(|e| bad_body(&e, "release, version, environment, item and note"))?;
    let session = changing(&state, &caller, &headers).await?;
    slipway_ops::access::require(
        &session,
        Role::Approver,
        "acknowledge checklist items",
        &b.environment,
    )
    .await?;
    let ack = Ack {
        item: b.item,
        acknowledged_by: format!("user:{}", session.actor.user),
        note: b.note,
        at: slipway_stdx::now().to_string(),
    };
    ChecklistDb::for_store(&session.store)
        .acknowledge(&b.release, &b.version, &b.environment, &ack)
        .await?;
    Ok(Json(json!(ack)))
}

/// `GET /api/v1/retention`: the policy in force (defaults for kinds never set).
pub(crate) async fn retention(State(state): State<AppState>) -> Answer {
    let rows = ArchiveDb::for_store(&state.session.store).policy().await?;
    Ok(Json(json!(RetentionPolicy::from_rows(&rows))))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    live_days: u32,
    keep_days: u32,
}

/// `POST /api/v1/retention/{kind}` `{live_days, keep_days}`.
pub(crate) async fn set_retention(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let b: RetentionBody =
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "live_days and keep_days"))?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::bad_parameter("kind", &kind, &KINDS.join(", ")));
    }
    if b.keep_days < b.live_days {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "failed to set the retention of {kind}: keep ({}d) is shorter than live ({}d)",
                b.keep_days, b.live_days
            ),
            "records must be kept at least as long as they stay live",
        ));
    }
    let session = changing(&state, &caller, &headers).await?;
    slipway_ops::access::require(&session, Role::Admin, "set retention", "*").await?;
    ArchiveDb::for_store(&session.store)
        .set_policy(&PolicyRow {
            kind: kind.clone(),
            live_days: b.live_days,
            keep_days: b.keep_days,
            set_by: format!("user:{}", session.actor.user),
            set_at: slipway_stdx::now().to_string(),
        })
        .await?;
    Ok(Json(
        json!({"kind": kind, "live_days": b.live_days, "keep_days": b.keep_days}),
    ))
}
