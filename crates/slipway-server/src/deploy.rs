//! The server executes runs: `POST /api/v1/bundles` receives a release bundle (the spec
//! and the files beside it, packed by `slipway --server URL deploy`), `POST /api/v1/runs`
//! plans one for an environment and drives the run here.
//!
//! Everything a local deploy decides is decided the same way, for the caller's verified
//! identity: the plan is made by `slipway_ops::planning` from the unpacked bundle and this
//! server's store, a plan with blocking findings is refused (409, the findings in the
//! answer, as `slipway deploy` exits 3 with them), and `slipway_ops::runs::deploy` checks
//! the role, the checklist, the change record, the infrastructure, the lease and readiness
//! before a run exists, then drives it in a task of this server — a client that hangs up
//! never stops a release. The answer is `202 Accepted` with the run's id once it has one
//! (its first journal entry); a refusal before that is the operation's error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Value, json};
use slipway_govern::access::Role;
use slipway_ops::events::{OpsEvent, Reporter};
use slipway_ops::planning::{self, PlanError, PlanOptions};
use slipway_ops::runs::{self, DeployRequest, DeployStarted, DriveRequest};
use tokio::sync::oneshot;

use crate::auth::Caller;
use crate::control::drive_json;
use crate::{ApiError, AppState};

/// The header a client declares a bundle's SHA-256 in; a body that hashes otherwise is
/// refused (it changed on the way).
pub const BUNDLE_DIGEST_HEADER: &str = "x-slipway-bundle-sha256";

/// `POST /api/v1/bundles?environment=ENV`: keep a bundle for deploys to `ENV` (the caller
/// needs `deployer` there). Idempotent: the same bytes are the same bundle.
pub(crate) async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let environment = q.get("environment").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the upload names no environment",
            "POST /api/v1/bundles?environment=ENV (you need the deployer role there)",
        )
    })?;
    let data = read_bundle(body).await?;
    let declared = headers
        .get(BUNDLE_DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let session = caller.session(&state).await?;
    let up = slipway_ops::bundles::upload(&session, environment, declared.as_deref(), data).await?;
    let status = if up.stored {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(up))))
}

/// A request body holding a bundle, refused (413) past the size a bundle may have.
pub(crate) async fn read_bundle(body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = usize::try_from(slipway_package::bundle::MAX_BUNDLE_BYTES).unwrap_or(usize::MAX);
    // One byte over the limit is enough to know the body is too big.
    let data = axum::body::to_bytes(body, limit.saturating_add(1))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the bundle was not received whole: {e} (a bundle may have at most {limit} bytes)"
                ),
                "keep large artifacts in a registry the spec references, not beside the spec",
            )
        })?;
    if data.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the bundle is larger than the {limit} bytes a bundle may have"),
            "keep large artifacts in a registry the spec references, not beside the spec",
        ));
    }
    Ok(data.into())
}

/// The body of `POST /api/v1/runs`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    /// The bundle's SHA-256, as its upload answered.
    bundle: String,
    /// The environment to deploy to.
    environment: String,
    /// Stop at a window or approvals gate instead of waiting there.
    #[serde(default)]
    no_wait: bool,
    /// Wait while another release holds the environment's lease.
    #[serde(default)]
    wait: bool,
    /// Deploy inside a freeze, for this reason (a second person must approve).
    #[serde(default)]
    override_freeze: Option<String>,
    /// Deploy without the lifecycle's promotion evidence, for this reason.
    #[serde(default)]
    override_promotion: Option<String>,
}

/// Signals once with the run's id when the deploy has a run (its first journal entry), or
/// with `None` when it waits for the environment's lease.
/// The run id also goes to the drive's slot, for a hand-over at shutdown.
struct Started {
    tx: Mutex<Option<oneshot::Sender<Option<String>>>>,
    slot: crate::drives::RunSlot,
}

impl Reporter for Started {
    fn report(&self, event: OpsEvent) {
        let run = match &event {
            OpsEvent::Notice(n) if !n.run_id.is_empty() => Some(n.run_id.clone()),
            OpsEvent::LeaseWaiting { .. } => None,
            _ => return,
        };
        if let Some(r) = &run {
            self.slot.set(r);
        }
        if let Some(tx) = self.tx.lock().ok().and_then(|mut g| g.take()) {
            let _ = tx.send(run);
        }
    }
}

/// `POST /api/v1/runs`: plan a bundle for an environment and drive the run here.
pub(crate) async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: StartBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body does not parse: {e}"),
            "send a JSON object with bundle and environment (optional: no_wait, wait, override_freeze, override_promotion)",
        )
    })?;
    let session = caller.session(&state).await?;
    let env = body.environment.clone();
    // Before anything is unpacked: a viewer learns nothing of the bundle.
    slipway_ops::access::require(&session, Role::Deployer, "deploy", &env).await?;
    let unpacked = slipway_ops::bundles::unpack_for_run(&session, &body.bundle).await?;
    let planned = match plan(&session, &unpacked.spec, &env, &body).await {
        Ok(p) => p,
        Err(e) => {
            // A refused plan never runs: nothing of its bundle needs to stay.
            let _ = std::fs::remove_dir_all(&unpacked.dir);
            return Err(e);
        }
    };
    let digest = planned.plan.digest.clone();
    let req = DeployRequest {
        file: unpacked.spec.clone(),
        detach: false,
        drive: DriveRequest {
            no_wait: body.no_wait,
            wait_for_lease: body.wait,
        },
        override_freeze: body.override_freeze.clone(),
    };
    // Its own task: the release goes on whatever happens to this request; a tracked
    // drive, handed over when the server shuts down.
    let (tx, started) = oneshot::channel();
    let task = state.drives.spawn(None, |slot| {
        let reporter: Arc<dyn Reporter> = Arc::new(Started {
            tx: Mutex::new(Some(tx)),
            slot,
        });
        async move { runs::deploy(&session, &planned, req, reporter).await }
    });
    tokio::select! {
        joined = task => {
            let started = joined.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the deploy stopped: {e}"),
                    "this is a bug in slipway-server; see the server's store for the run",
                )
            })??;
            match started {
                DeployStarted::Driven(r) => Ok((StatusCode::OK, Json(drive_json(&r)))),
                DeployStarted::Detached { run, continued } => Ok((
                    StatusCode::ACCEPTED,
                    Json(json!({"run": run, "continued": continued, "driving": "server"})),
                )),
            }
        }
        Ok(run) = started => {
            let run = match run {
                Some(r) => Some(r),
                None => state.store.active_run(&digest, &env).await?.map(|r| r.id),
            };
            let state_now = match &run {
                Some(r) => state.store.run(r).await?.map(|r| r.state),
                None => None,
            };
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"run": run, "state": state_now, "driving": "server", "digest": digest})),
            ))
        }
    }
}

/// The plan of the unpacked spec for `env`, refused (409 with the findings) when a finding
/// blocks it, as `slipway deploy` refuses it.
async fn plan(
    session: &slipway_ops::Session,
    spec: &std::path::Path,
    env: &str,
    body: &StartBody,
) -> Result<planning::Planned, ApiError> {
    let store = session.store_for_child();
    let planned = planning::plan_file_with(
        spec,
        env,
        Some(&store),
        &PlanOptions {
            override_promotion: body.override_promotion.clone(),
        },
    )
    .await
    .map_err(|e| match e {
        PlanError::Ops(e) => ApiError::from(e),
        PlanError::Spec(errs) => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the bundle's spec `{}` does not validate", errs.file),
            "fix the spec (`slipway validate -f SPEC` shows every problem), then deploy again",
        )
        .with("diagnostics", json!(errs.diagnostics)),
    })?;
    let blocking = planning::blocking(&planned.plan);
    if !blocking.is_empty() {
        let msgs: Vec<String> = blocking
            .iter()
            .map(|f| format!("{}: {}", f.code, f.message))
            .collect();
        let findings = json!(blocking);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "failed to deploy: the plan has blocking findings: {}",
                msgs.join("; ")
            ),
            format!(
                "see the plan (`slipway plan -f SPEC --env {env}`), resolve the findings, then deploy again"
            ),
        )
        .with("findings", findings)
        .with("digest", json!(planned.plan.digest)));
    }
    Ok(planned)
}
