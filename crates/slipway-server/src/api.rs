//! The JSON API under `/api/v1`: runs, one run with its steps and approvals, its plan, its
//! journal, and the audit chain's verification (the same as `slipway audit verify`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, response::IntoResponse};
use serde_json::{Value, json};
use slipway_engine::audit;
use slipway_engine::store::RunRecord;

use crate::auth::{Caller, require_view, viewable};
use crate::{ApiError, AppState};

/// Runs listed when `?limit=` is not given, and the most one may ask for.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

/// A run as the API lists it. `finished_at` is the last change of a terminal run.
pub(crate) fn run_summary(r: &RunRecord) -> Value {
    json!({
        "id": r.id,
        "digest": r.digest,
        "release": r.release,
        "version": r.version,
        "environment": r.environment,
        "state": r.state,
        "started_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.state.is_terminal().then_some(r.updated_at),
    })
}

/// A numeric query parameter, or 400 naming it.
pub(crate) fn param<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| ApiError::bad_parameter(name, v, expected))
        })
        .transpose()
}

/// The runs `caller` may read, newest first.
pub(crate) async fn visible_runs(
    state: &AppState,
    caller: &Caller,
    limit: u32,
) -> Result<Vec<RunRecord>, ApiError> {
    let may_view = viewable(state, caller).await?;
    let mut runs = state.store.runs(limit).await?;
    runs.retain(|r| may_view(&r.environment));
    Ok(runs)
}

/// `GET /api/v1/runs?limit=N`.
pub(crate) async fn runs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let expected = "a whole number from 1 to 1000";
    let limit = param::<u32>(&q, "limit", expected)?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_parameter(
            "limit",
            &limit.to_string(),
            expected,
        ));
    }
    let runs = visible_runs(&state, &caller, limit).await?;
    Ok(Json(
        json!({"runs": runs.iter().map(run_summary).collect::<Vec<_>>()}),
    ))
}

/// The run `id`, readable by `caller`, or 404 / 403.
pub(crate) async fn load_run(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<RunRecord, ApiError> {
    let run = state
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::no_such_run(id))?;
    require_view(state, caller, &run.environment).await?;
    Ok(run)
}

/// `GET /api/v1/runs/{id}`: the run, its steps and its approvals.
pub(crate) async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = load_run(&state, &caller, &id).await?;
    let steps = slipway_ops::views::in_plan_order(
        slipway_ops::runs::plan_of(&run).as_ref(),
        state.store.steps(&id).await?,
    );
    let approvals = state.store.approvals(&id).await?;
    let mut doc = run_summary(&run);
    doc["control"] = json!(run.control);
    doc["steps"] = json!(steps);
    doc["approvals"] = json!(approvals);
    Ok(Json(doc))
}

/// `GET /api/v1/runs/{id}/status`: everything `slipway status` shows — the document
/// `slipway status --output json` prints (`slipway_ops::views::run`), without the local
/// perf files.
pub(crate) async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = slipway_ops::views::run(&caller.session(&state).await?, &id).await?;
    Ok(Json(serde_json::to_value(v).unwrap_or_default()))
}

/// `GET /api/v1/runs/{id}/plan`: the plan a run executes and what it changes against what
/// runs now — the document `slipway plan show RUN --output json` prints
/// (`slipway_ops::views::plan_of_run`; viewer in the run's environment).
pub(crate) async fn plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let shown = slipway_ops::views::plan_of_run(&caller.session(&state).await?, &id).await?;
    Ok(Json(serde_json::to_value(shown).unwrap_or_default()))
}

/// `GET /api/v1/runs/{id}/journal?after=SEQ`: journal entries, oldest first.
pub(crate) async fn journal(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let after = param::<i64>(&q, "after", "a journal sequence number")?.unwrap_or(0);
    load_run(&state, &caller, &id).await?;
    let entries = state.store.journal(&id, after).await?;
    Ok(Json(json!({"run": id, "entries": entries})))
}

/// `GET /api/v1/audit/verify`: 200 with `ok: true`, or 409 with `ok: false` and the first
/// bad entry (the document `slipway audit verify --output json` prints).
pub(crate) async fn audit_verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    // The chain spans every environment.
    require_view(&state, &caller, "*").await?;
    let v = audit::verify_store(state.store.as_ref()).await?;
    let status = if v.result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Json(v.to_json(&state.store.location()))))
}

/// `GET /healthz`: open, says nothing about the store's content.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// Unknown `/api/v1/…` paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API route",
        "see docs/server.md for the routes: /api/v1/runs, /api/v1/runs/{id}, …/journal, …/events, POST …/{approve,pause,resume,promote,abort,rollback}, /api/v1/plans, /api/v1/diff, /api/v1/leases, /api/v1/audit/{verify,export,anchors}, /api/v1/reviews, /api/v1/checklist/acks, /api/v1/retention, /api/v1/archive/{cut,bundle,prune}, /api/v1/access/…, /api/v1/policy, /api/v1/reports/…",
    )
}
