//! Reports over the API (`slipway --server URL report dora | handover | retro`): each is
//! one `slipway_ops::reports` call for the caller (viewer everywhere, the evidence
//! verified first, archived runs counted) — no rule of the server's own. The answer holds
//! the report's document and its renderings (`slipway_govern`'s text, Markdown, HTML), so
//! the CLI prints what it prints on a store.
//!
//! `GET /api/v1/reports/dora?since=WHEN[&until=WHEN&service=S&type=T&environment=E]`:
//! `{report, text, html}`; `GET /api/v1/reports/handover/{run}`: `{run, markdown, git}`;
//! `GET /api/v1/reports/retro/{run}`: `{retro, markdown}`;
//! `GET /api/v1/reports/compliance?framework=F&since=WHEN[&until=WHEN]`:
//! `{evidence, coverage, files}`; `POST /api/v1/catalog` `{spec}`:
//! `{entities, yaml, archive, archive_text}`.

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

/// `GET /api/v1/reports/compliance?framework=F&since=WHEN[&until=WHEN]`: the evidence
/// (`slipway_ops::reports::compliance`, live runs and archive summaries; bundles are the
/// CLI's, on a store), what it does not cover, and the pack's files for the caller to write.
pub(crate) async fn compliance(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let framework = q
        .get("framework")
        .ok_or_else(|| ApiError::bad_parameter("framework", "", "sox, hipaa or gdpr"))?;
    let since = when(&q, "since")?.ok_or_else(|| {
        ApiError::bad_parameter("since", "", "a date (2026-11-01) or an RFC 3339 instant")
    })?;
    let until = when(&q, "until")?.unwrap_or_else(slipway_stdx::now);
    let s = caller.session(&state).await?;
    let e = slipway_ops::reports::compliance(&s, framework, since, until, None).await?;
    Ok(Json(json!({
        "coverage": e.coverage(),
        "files": {
            "evidence.jsonl": slipway_govern::compliance::to_jsonl(&e),
            "summary.html": slipway_govern::compliance::to_html(&e),
        },
        "evidence": e,
    })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogBody {
    spec: slipway_model::spec::ReleaseSpec,
}

/// `POST /api/v1/catalog` `{spec}` (a validated spec as the CLI loaded it): the Backstage
/// entities with lifecycles from this server's run history (`slipway_ops::reports::catalog`).
pub(crate) async fn catalog(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: CatalogBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!("the request body does not parse: {e}"),
            "send {\"spec\": …} with the release spec as `slipway validate` accepts it",
        )
    })?;
    let s = caller.session(&state).await?;
    let c = slipway_ops::reports::catalog(&s, &b.spec).await?;
    Ok(Json(json!({
        "entities": c.entities.len(),
        "yaml": slipway_govern::catalog::to_yaml(&c.entities),
        "archive_text": c.archive.describe(),
        "archive": c.archive,
    })))
}
