//! Reports over the API (`slipway --server URL report dora | handover | retro`): each is
//! one `slipway_ops::reports` call for the caller (viewer everywhere, the evidence
//! verified first, archived runs counted) — no rule of the server's own. The answer holds
//! the report's document and its renderings (`slipway_govern`'s text, Markdown, HTML), so
//! the CLI prints what it prints on a store.
//!
//! `GET /api/v1/reports/dora?since=WHEN[&until=WHEN&service=S&type=T&environment=E]`:
//! `{report, text, html}`; `GET /api/v1/reports/handover/{run}`: `{run, markdown, git}`;
//! `GET /api/v1/reports/retro/{run}`: `{retro, markdown}`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde_json::{Value, json};
use slipway_govern::dora::{self, DoraQuery};

use crate::auth::Caller;
use crate::{ApiError, AppState};

fn when(q: &HashMap<String, String>, name: &str) -> Result<Option<jiff::Timestamp>, ApiError> {
    q.get(name)
        .map(|v| {
            slipway_govern::parse_when(v).map_err(|_| {
                ApiError::bad_parameter(name, v, "a date (2026-11-01) or an RFC 3339 instant")
            })
        })
        .transpose()
}

/// `GET /api/v1/reports/dora`.
pub(crate) async fn dora_report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let since = when(&q, "since")?.ok_or_else(|| {
        ApiError::bad_parameter("since", "", "a date (2026-11-01) or an RFC 3339 instant")
    })?;
    let query = DoraQuery {
        since: Some(since),
        until: when(&q, "until")?,
        service: q.get("service").cloned(),
        release_type: q.get("type").cloned(),
        environment: q.get("environment").cloned(),
        unsummarized: Vec::new(),
    };
    let s = caller.session(&state).await?;
    let report = slipway_ops::reports::dora(&s, query).await?;
    Ok(Json(json!({
        "text": dora::render_text(&report),
        "html": dora::render_html(&report),
        "report": report,
    })))
}

/// `GET /api/v1/reports/handover/{run}`.
pub(crate) async fn handover(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = caller.session(&state).await?;
    Ok(Json(json!(slipway_ops::reports::handover(&s, &id).await?)))
}

/// `GET /api/v1/reports/retro/{run}`.
pub(crate) async fn retro(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = caller.session(&state).await?;
    let r = slipway_ops::reports::retro(&s, &id).await?;
    Ok(Json(json!({
        "markdown": slipway_govern::retro::render_markdown(&r),
        "retro": r,
    })))
}
