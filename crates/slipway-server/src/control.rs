//! Acting on a run over the API: `POST /api/v1/runs/{id}/{pause|resume|promote|abort|
//! rollback}` (and `approve`, in `api.rs`). The server has no policy of its own: each route
//! is one `slipway_ops::runs` call for the caller — their role in the run's environment,
//! their name journaled and audited with the request — exactly what the CLI command does.
//!
//! Who may post: a bearer token, or a browser session that proves the request comes from
//! this server's own pages. A cookie rides along with any request the browser makes, a
//! cross-site form's included; so a cookie-authenticated action needs both the browser's
//! word that it is same-site (`Sec-Fetch-Site`/`Origin`, [`crate::ui::cross_site`]) and
//! the page's anti-forgery value ([`csrf_token`], the `csrf` form field or the
//! `X-Slipway-Csrf` header), which another site cannot read.
//!
//! Each operation runs in a task of its own, so a client that hangs up never cancels an
//! abort or a rollback half-way. `resume` and `promote` of a run nobody drives drive it in
//! this server: the answer is `202 Accepted` as soon as the drive starts (its first journal
//! entry), and the run continues here; a request a live driver acts on, and every other
//! action, answers `200` with the outcome.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use slipway_engine::DriveOutcome;
use slipway_ops::events::{OpsEvent, Reporter};
use slipway_ops::runs::{self, DriveReport, DriveRequest, Handled};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// The header an API client of a browser session sends the anti-forgery value in.
pub(crate) const CSRF_HEADER: &str = "x-slipway-csrf";

/// The anti-forgery value of a browser session: a digest of the session's cookie value,
/// which only this server's pages reveal (the cookie is HttpOnly; a page of another site
/// can neither read it nor this value). Stateless, so every server instance agrees.
pub(crate) fn csrf_token(cookie_value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"slipway-csrf-v1\0");
    h.update(cookie_value.as_bytes());
    hex::encode(h.finalize())
}

/// What can be done to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
    Rollback,
    Approve,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
            Self::Approve => "approve",
        }
    }
}

/// The body of an action: JSON from API clients, a form from the browser's buttons. Every
/// field is optional; an empty body is every default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    /// Why (required by `rollback`; journaled and audited).
    #[serde(default)]
    pub reason: Option<String>,
    /// `approve`: the plan digest the approver reviewed.
    #[serde(default)]
    pub digest: Option<String>,
    /// `resume`/`promote`: stop at a window or approvals gate instead of waiting there.
    #[serde(default)]
    pub no_wait: Option<bool>,
    /// `resume`/`promote`: wait while another release holds the environment's lease.
    #[serde(default)]
    pub wait: Option<bool>,
    /// A browser form's anti-forgery value.
    #[serde(default)]
    pub csrf: Option<String>,
}

/// How the request came: a browser's form (answered with a redirect to the run's page) or
/// an API call (answered with JSON).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<ActionBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActionBody::default());
    }
    let bad = |e: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body does not parse: {e}"),
            "send a JSON object with the optional fields reason, digest, no_wait, wait",
        )
    };
    if is_form(headers) {
        serde_urlencoded::from_bytes(body).map_err(|e| bad(e.to_string()))
    } else {
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
    }
}

/// Constant-time equality of two strings (an anti-forgery value is compared against the
/// expected one without leaking how long a prefix matched).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A request authenticated by a browser's cookie must come from this server's own page:
/// same-site by the browser's headers, and carrying the page's anti-forgery value.
pub(crate) fn require_same_site(
    caller: &Caller,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<(), ApiError> {
    if caller.bearer {
        // A cross-site page cannot set an Authorization header.
        return Ok(());
    }
    let refused = |why: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("an action from a browser session is refused: {why}"),
            "use the buttons on this server's run page, or call the API with `Authorization: Bearer slw_…`",
        )
    };
    if crate::ui::cross_site(headers) {
        return Err(refused("it was posted from another site"));
    }
    let expected = session_csrf(caller);
    let given = form_csrf.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
    match (expected, given) {
        (Some(e), Some(g)) if same(&e, g.trim()) => Ok(()),
        (_, None) => Err(refused("it carries no anti-forgery value")),
        _ => Err(refused("its anti-forgery value is not this session's")),
    }
}

/// Signals once when a drive has started (its first journal entry, or a wait for the
/// environment's lease): the request has been taken on, and the run goes on here.
struct Started(Mutex<Option<oneshot::Sender<()>>>);

impl Reporter for Started {
    fn report(&self, event: OpsEvent) {
        if matches!(event, OpsEvent::Notice(_) | OpsEvent::LeaseWaiting { .. })
            && let Some(tx) = self.0.lock().ok().and_then(|mut g| g.take())
        {
            let _ = tx.send(());
        }
    }
}

/// A finished drive as the API reports it: `outcome` (`finished`, `paused`, `blocked`), the
/// run's `state`, and what the CLI prints beside it.
pub(crate) fn drive_json(r: &DriveReport) -> Value {
    let mut v = match &r.outcome {
        DriveOutcome::Finished(s) => json!({"run": r.run, "outcome": "finished", "state": s}),
        DriveOutcome::Paused => json!({"run": r.run, "outcome": "paused", "state": "paused"}),
        DriveOutcome::Blocked {
            gate,
            detail,
            opens_at,
        } => json!({
            "run": r.run, "outcome": "blocked",
            "blocked": {"gate": gate, "detail": detail, "opens_at": opens_at.map(|t| t.to_string())},
        }),
    };
    v["continued"] = json!(r.continued);
    v["reason"] = json!(r.reason);
    v["failed_hosts"] = json!(r.failed_hosts);
    v["not_deployed"] = json!(r.not_deployed);
    v
}

/// Run `action` for `caller`: the answer's status and JSON body.
async fn perform(
    state: &AppState,
    caller: &Caller,
    action: Action,
    id: String,
    body: ActionBody,
) -> Result<(StatusCode, Value), ApiError> {
    let session = caller.session(state).await?;
    let req = DriveRequest {
        no_wait: body.no_wait.unwrap_or(false),
        wait_for_lease: body.wait.unwrap_or(false),
    };
    let (tx, started) = oneshot::channel();
    // Only a resume or promote answers before its end (a drive can take hours); without
    // a sender the `started` branch below never fires.
    let drives = matches!(action, Action::Resume | Action::Promote);
    let reporter = Arc::new(Started(Mutex::new(drives.then_some(tx))));
    let run = id.clone();
    // Its own task: a client hanging up must not cancel an operation half-way. Tracked,
    // so a drive this starts is handed over when the server shuts down.
    let run_id = id.clone();
    let task = state.drives.spawn(Some(&run_id), |_| async move {
        let r = reporter as Arc<dyn Reporter>;
        match action {
            Action::Pause => runs::pause(&session, &run)
                .await
                .map(|c| (StatusCode::OK, json!(c))),
            Action::Abort => runs::abort(&session, &run, r)
                .await
                .map(|c| (StatusCode::OK, json!(c))),
            Action::Rollback => {
                runs::rollback(&session, &run, body.reason.as_deref().unwrap_or(""), r)
                    .await
                    .map(|c| (StatusCode::OK, json!(c)))
            }
            Action::Approve => runs::approve(&session, &run, body.digest.as_deref())
                .await
                .map(|c| (StatusCode::OK, json!(c))),
            Action::Resume | Action::Promote => {
                let h = if action == Action::Resume {
                    runs::resume(&session, &run, req, r).await
                } else {
                    runs::promote(&session, &run, req, r).await
                };
                h.map(|h| match h {
                    Handled::Delivered(d) => {
                        let mut v = json!(d);
                        v["delivered_to"] = json!("driver");
                        (StatusCode::OK, v)
                    }
                    Handled::Driven(r) => (StatusCode::OK, drive_json(&r)),
                })
            }
        }
    });
    let joined = tokio::select! {
        joined = task => joined,
        Ok(()) = started => {
            // The drive is under way in this server; the client follows the run.
            let state_now = state.store.run(&id).await?.map(|r| r.state);
            return Ok((
                StatusCode::ACCEPTED,
                json!({"run": id, "requested": action.name(), "driving": "server", "state": state_now}),
            ));
        }
    };
    let result = joined.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the {} of run {id} stopped: {e}", action.name()),
            "see the run's journal (GET /api/v1/runs/{id}/journal); this is a bug in slipway-server",
        )
    })?;
    Ok(result?)
}

/// `POST /api/v1/runs/{id}/{action}`, for every action.
async fn act(
    state: AppState,
    caller: Caller,
    action: Action,
    id: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = is_form(&headers);
    let result = async {
        let body = parse_body(&headers, &body)?;
        require_same_site(&caller, &headers, body.csrf.as_deref())?;
        perform(&state, &caller, action, id.clone(), body).await
    }
    .await;
    match (result, form) {
        // A browser's form goes back to the run's page, which shows what happened.
        (Ok(_), true) => {
            Redirect::to(&format!("/runs/{}", crate::ui::url_encode(&id))).into_response()
        }
        (Ok((status, v)), false) => (status, Json(v)).into_response(),
        (Err(e), true) => crate::ui::error_page(&state, e),
        (Err(e), false) => e.into_response(),
    }
}

macro_rules! route {
    ($name:ident, $action:expr) => {
        /// One action's route (see the module doc).
        pub(crate) async fn $name(
            State(state): State<AppState>,
            Extension(caller): Extension<Caller>,
            Path(id): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            act(state, caller, $action, id, headers, body).await
        }
    };
}

route!(pause, Action::Pause);
route!(resume, Action::Resume);
route!(promote, Action::Promote);
route!(abort, Action::Abort);
route!(rollback, Action::Rollback);
route!(approve, Action::Approve);

/// The session's anti-forgery value for a page's forms; `None` for a bearer caller.
pub(crate) fn page_csrf(caller: &Caller) -> Option<String> {
    if caller.bearer {
        return None;
    }
    session_csrf(caller)
}

/// The anti-forgery value of the browser session `caller` came with (from its session id,
/// the cookie's value); `None` for a token.
fn session_csrf(caller: &Caller) -> Option<String> {
    match &caller.credential {
        crate::auth::Credential::Session(id) => Some(csrf_token(id)),
        crate::auth::Credential::Token(_) => None,
    }
}

/// The actions `caller` may take on `run` in its state — the run page's buttons. The
/// operations decide again when one is posted; this only keeps buttons that would be
/// refused (a viewer's, a finished run's pause) off the page.
pub(crate) async fn actions_for(
    state: &AppState,
    caller: &Caller,
    run: &slipway_engine::store::RunRecord,
) -> Result<Vec<&'static str>, ApiError> {
    use slipway_engine::event::RunState;
    use slipway_govern::access::Role;
    let session = caller.session(state).await?;
    let may = |role| {
        let session = &session;
        async move {
            slipway_ops::access::require(session, role, "act", &run.environment)
                .await
                .is_ok()
        }
    };
    let mut out = Vec::new();
    let live = !run.state.is_terminal();
    if may(Role::Deployer).await {
        let plan = runs::plan_of(run);
        let canary = plan.as_ref().is_some_and(|p| {
            p.target == slipway_model::spec::TargetKind::Process && p.strategy.canary.is_some()
        });
        if live && run.state != RunState::Paused {
            out.push("pause");
        }
        if live {
            out.push("resume");
        }
        if live && canary {
            out.push("promote");
        }
        if live {
            out.push("abort");
        }
        if !matches!(run.state, RunState::RolledBack | RunState::Pending) {
            out.push("rollback");
        }
    }
    if run.state == RunState::WaitingForApproval && may(Role::Approver).await {
        out.insert(0, "approve");
    }
    Ok(out)
}
