//! `GET /api/v1/runs/{id}/events`: the run's journal as Server-Sent Events, live.
//!
//! Each entry is one `journal` event whose `id:` is its journal seq, so a client that
//! reconnects with `Last-Event-ID` (browsers do by themselves) resumes after the last
//! entry it saw, without duplicates. The stream polls the store (`Options::poll_interval`)
//! — it works the same whichever process drives the run, on SQLite or PostgreSQL — and
//! ends with one `end` event carrying the final state once the run is terminal and every
//! entry was sent. Every `Options::reauth_interval` the stream checks again both who it
//! serves and what they may see: the token or session (revoked, logged out, expired) and
//! the `viewer` role in the run's environment (a grant revoked meanwhile). A stream that
//! fails either ends with an `end` event naming why.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use slipway_engine::event::Notice;

use crate::api::{load_run, param};
use crate::auth::{Caller, require_view, verify_credential};
use crate::{ApiError, AppState};

struct Follow {
    state: AppState,
    /// Who opened the stream; their credential and role are checked again every
    /// `reauth_interval`.
    caller: Caller,
    /// The run's environment (what the role is checked in).
    environment: String,
    verified_at: Instant,
    run: String,
    after: i64,
    pending: VecDeque<Notice>,
    done: bool,
}

/// Where to resume: `Last-Event-ID` (a reconnect), else `?after=`, else the start.
fn resume_from(headers: &HeaderMap, q: &HashMap<String, String>) -> Result<i64, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let s = v.to_str().unwrap_or("");
        return s
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::bad_parameter("Last-Event-ID", s, "a journal sequence number"));
    }
    Ok(param::<i64>(q, "after", "a journal sequence number")?.unwrap_or(0))
}

/// The handler.
pub(crate) async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = resume_from(&headers, &q)?;
    let run = load_run(&state, &caller, &id).await?;
    let follow = Follow {
        state,
        caller,
        environment: run.environment,
        verified_at: Instant::now(),
        run: id,
        after,
        pending: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let event = next_event(&mut f).await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The next event to send, or `None` when the stream is over.
async fn next_event(f: &mut Follow) -> Option<Event> {
    loop {
        if let Some(n) = f.pending.pop_front() {
            f.after = n.seq;
            let data = serde_json::to_string(&n).unwrap_or_else(|_| "{}".to_owned());
            return Some(
                Event::default()
                    .event("journal")
                    .id(n.seq.to_string())
                    .data(data),
            );
        }
        if f.done {
            return None;
        }
        if f.verified_at.elapsed() >= f.state.options.reauth_interval {
            if let Err(e) = still_allowed(f).await {
                return Some(finish(f, json!({"error": e.error, "fix": e.fix})));
            }
            f.verified_at = Instant::now();
        }
        // The state first, then the journal: a run terminal at this read had journaled
        // everything, so an empty read after it means nothing more will come.
        let run = match f.state.store.run(&f.run).await {
            Ok(Some(r)) => r,
            Ok(None) => return Some(finish(f, json!({"error": "the run no longer exists"}))),
            Err(e) => {
                return Some(finish(
                    f,
                    json!({"error": format!("the store failed: {e}")}),
                ));
            }
        };
        match f.state.store.journal(&f.run, f.after).await {
            Ok(entries) if !entries.is_empty() => f.pending.extend(entries),
            Ok(_) if run.state.is_terminal() => {
                return Some(finish(f, json!({"state": run.state})));
            }
            Ok(_) => tokio::time::sleep(f.state.options.poll_interval).await,
            Err(e) => {
                return Some(finish(
                    f,
                    json!({"error": format!("the store failed: {e}")}),
                ));
            }
        }
    }
}

/// The stream's credential still verifies and its caller still holds `viewer` in the run's
/// environment.
async fn still_allowed(f: &Follow) -> Result<(), ApiError> {
    let caller = verify_credential(&f.state, &f.caller.credential).await?;
    require_view(&f.state, &caller, &f.environment).await
}

fn finish(f: &mut Follow, data: serde_json::Value) -> Event {
    f.done = true;
    Event::default().event("end").data(data.to_string())
}
