//! The audit chain over the API, for `slipway --server URL audit export | checkpoint`.
//!
//! - `GET /api/v1/audit/export`: the live chain as the JSONL `slipway audit export` writes
//!   (`slipway_engine::audit::export_jsonl`: a header with the head, one entry per line),
//!   so the file verifies with `slipway audit verify --file`. Viewer on `*`, the rule of
//!   the local export and of `/audit/verify`: the chain spans every environment.
//! - `GET /api/v1/audit/anchors`: where the live chain starts and the signed checkpoints
//!   kept beside it (viewer on `*`).
//! - `POST /api/v1/audit/anchors` `{seq, hash, payload, signature}`: keep a checkpoint the
//!   caller signed on their own machine — the signing key never reaches the server. The
//!   server cannot know which keys a verifier trusts, so it checks what it can (the
//!   payload names this chain's entry `seq` with its hash and this chain's start) and the
//!   caller must be admin on `*`: a checkpoint naming a trusted key id with a bad
//!   signature makes `audit verify --pubkey` report a forgery, which nobody but an admin
//!   may cause. A checkpoint is no chain entry (it would move the head it signs); it is
//!   itself the signed record of who vouched, by key id.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use slipway_engine::audit;
use slipway_engine::evidence::AnchorPayload;
use slipway_engine::store::Anchor;
use slipway_govern::access::Role;

use crate::auth::{Caller, require_view};
use crate::{ApiError, AppState};

/// `GET /api/v1/audit/export`.
pub(crate) async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_view(&state, &caller, "*").await?;
    let entries = state.store.audit_entries().await?;
    let text = audit::export_jsonl(&entries);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from(text),
    )
        .into_response())
}

/// `GET /api/v1/audit/anchors`.
pub(crate) async fn anchors(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    require_view(&state, &caller, "*").await?;
    let start = state.store.audit_start().await?;
    let anchors = state.store.anchors().await?;
    Ok(Json(json!({
        "start": {"seq": start.0, "hash": start.1},
        "anchors": anchors,
    })))
}

/// `POST /api/v1/audit/anchors`: `{added}` (false: this head was checkpointed already).
pub(crate) async fn add_anchor(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let anchor: Anchor = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body does not parse: {e}"),
            "send {seq, hash, payload, signature} as `slipway --server URL audit checkpoint` does",
        )
    })?;
    crate::control::require_same_site(&caller, &headers, None)?;
    let session = caller.session(&state).await?;
    slipway_ops::access::require(&session, Role::Admin, "checkpoint the audit chain", "*").await?;
    let refused = |why: String| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("failed to keep the checkpoint: {why}"),
            "sign the server's current chain: run `slipway --server URL audit checkpoint --key KEY` again",
        )
    };
    let p = AnchorPayload::parse(&anchor.payload)
        .map_err(|e| refused(format!("its payload is not a checkpoint: {e}")))?;
    if (p.seq, p.hash.as_str()) != (anchor.seq, anchor.hash.as_str()) {
        return Err(refused("it names another head than its payload".into()));
    }
    let start = state.store.audit_start().await?;
    if (p.start_seq, p.start_hash.as_str()) != (start.0, start.1.as_str()) {
        return Err(refused(format!(
            "it says the live chain starts after entry {}, this chain starts after entry {}",
            p.start_seq, start.0
        )));
    }
    let entries = state.store.audit_entries().await?;
    match entries.iter().find(|e| e.seq == p.seq) {
        Some(e) if e.hash == p.hash => {}
        Some(_) => {
            return Err(refused(format!(
                "entry {} of this chain has another hash",
                p.seq
            )));
        }
        None => return Err(refused(format!("this chain has no entry {}", p.seq))),
    }
    let added = state.store.add_anchor(anchor).await?;
    Ok(Json(json!({"added": added})))
}
