//! Archives through the API (`slipway --server URL archive`), in the halves
//! `slipway_ops::archive` splits an archive into so the signing key stays with the
//! caller: the server selects and builds, the caller writes and signs the bundle, the
//! server prunes once it builds the same bytes again. Admin on `*` for each route (the
//! operations layer's rule); the prune's `archived` chain entry names the acting person.
//!
//! - `POST /api/v1/archive/cut` `{before}`: what would go and the bundle's sha256 and
//!   name, with the instant `at` the policy's live periods were counted back from;
//! - `GET /api/v1/archive/bundle?before=…&at=…`: the bundle's bytes;
//! - `POST /api/v1/archive/prune` `{before, at, sha256}`: the records removed and the
//!   checkpoint recorded, if the cut still builds the bundle of that sha256 (409 when
//!   not: nothing removed). The caller then signs the new start
//!   (`POST /api/v1/audit/anchors`).
//!
//! `at` is the server's own instant from the cut, sent back; one older than an hour or
//! in the future is refused, so no caller moves the live periods.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// How long a cut's instant stays usable for its bundle and prune.
const CUT_VALID: Duration = Duration::from_secs(3600);

fn instant(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    slipway_govern::parse_when(value).map_err(|_| {
        ApiError::bad_parameter(name, value, "a date (2026-11-01) or an RFC 3339 instant")
    })
}

/// The instant of a cut, as the server gave it: not in the future, not older than
/// [`CUT_VALID`].
fn cut_at(value: &str) -> Result<Timestamp, ApiError> {
    let at = instant("at", value)?;
    let now = slipway_stdx::now();
    let oldest = now
        .checked_sub(jiff::SignedDuration::try_from(CUT_VALID).unwrap_or_default())
        .unwrap_or(now);
    if at > now || at < oldest {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the archive's cut at {at} is not this server's from the last hour"),
            "run the archive again (POST /api/v1/archive/cut first)",
        ));
    }
    Ok(at)
}

async fn cut(
    state: &AppState,
    caller: &Caller,
    before: &str,
    at: Timestamp,
) -> Result<(slipway_ops::Session, slipway_ops::archive::Cut), ApiError> {
    let before = instant("before", before)?;
    let session = caller.session(state).await?;
    let cut = slipway_ops::archive::cut(&session, before, at).await?;
    Ok((session, cut))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CutBody {
    before: String,
}

fn bad_body(e: &serde_json::Error, fields: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("the request body does not parse: {e}"),
        format!("send a JSON object with {fields}"),
    )
}

/// `POST /api/v1/archive/cut` `{before}`.
pub(crate) async fn select(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: CutBody = serde_json::from_slice(&body).map_err(|e| bad_body(&e, "before"))?;
    crate::control::require_same_site(&caller, &headers, None)?;
    let (_, c) = cut(&state, &caller, &b.before, slipway_stdx::now()).await?;
    let (end_seq, _) = c.selection.end();
    Ok(Json(json!({
        "empty": c.bundle.is_none(),
        "at": c.at.to_string(),
        "runs": c.selection.run_ids(),
        "audit_entries": c.selection.audit.len(),
        "start_seq": c.selection.start.0,
        "end_seq": end_seq,
        "runs_before": c.runs_before.to_string(),
        "audit_before": c.audit_before.to_string(),
        "sha256": c.digest,
        "name": c.name,
    })))
}

/// `GET /api/v1/archive/bundle?before=…&at=…`.
pub(crate) async fn bundle(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let before = q.get("before").map(String::as_str).unwrap_or_default();
    let at = cut_at(q.get("at").map(String::as_str).unwrap_or_default())?;
    let (_, c) = cut(&state, &caller, before, at).await?;
    let Some((bytes, _)) = c.bundle else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing to archive any more",
            "run the archive again",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/zstd")],
        Body::from(bytes),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    before: String,
    at: String,
    sha256: String,
}

/// `POST /api/v1/archive/prune` `{before, at, sha256}`.
pub(crate) async fn prune(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: PruneBody =
        serde_json::from_slice(&body).map_err(|e| bad_body(&e, "before, at and sha256"))?;
    crate::control::require_same_site(&caller, &headers, None)?;
    let at = cut_at(&b.at)?;
    let (session, c) = cut(&state, &caller, &b.before, at).await?;
    let pruned = slipway_ops::archive::prune(&session, &c, &b.sha256).await?;
    let keep_until = c.bundle.as_ref().map(|(_, m)| json!(m.keep_until));
    Ok(Json(json!({"pruned": pruned, "keep_until": keep_until})))
}
