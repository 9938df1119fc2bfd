//! `slipway serve`: an HTTP API, a Server-Sent Events stream of a run's journal and a
//! server-rendered web UI, over the same store the CLI uses.
//!
//! Reads go through the engine's [`Store`] trait only, so SQLite and PostgreSQL serve
//! alike; tokens are checked against the store's access tables with the same
//! [`slipway_govern::access::authenticate`] `--token` uses; every authorization and every
//! action (`POST /api/v1/runs/{id}/{approve|pause|resume|promote|abort|rollback}`, see
//! `control.rs`) is a `slipway_ops` call for the caller, the one policy the CLI uses too;
//! a browser session acts only from this server's own pages (anti-forgery value and
//! same-site headers). This crate prints nothing: the CLI binds, reports the address
//! and owns the process (signals, warnings).
//!
//! Authentication: every `/api/…` route and every page except `/login` and `/healthz`
//! needs an API token (`slipway access token create`), given as `Authorization: Bearer
//! slw_…` or, for the browser, in the `slipway_token` cookie (HttpOnly, SameSite=Strict)
//! that `POST /login` sets. Every request re-verifies the token, so a revoked token stops
//! working at once. Once access control is on (a grant exists) reading a run also needs the
//! `viewer` role in its environment (403 otherwise), and listings show only such runs.

mod api;
mod auth;
pub mod client;
mod control;
mod error;
mod sse;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use slipway_engine::store::Store;
use slipway_store::access::AccessDb;

pub use error::ApiError;

/// How the server behaves; [`Options::default`] is what `slipway serve` uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often an SSE stream asks the store for new journal entries.
    pub poll_interval: Duration,
    /// How often an open SSE stream checks its token again, so a revoked token stops a
    /// stream that outlives it.
    pub reauth_interval: Duration,
    /// Whether the session cookie gets the `Secure` attribute (only when served over TLS,
    /// or a browser would never send it back over plain HTTP).
    pub secure_cookie: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            reauth_interval: Duration::from_secs(30),
            secure_cookie: false,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The store and its layout; handlers act through it as the caller
    /// ([`slipway_ops::Session::as_actor`]).
    pub session: slipway_ops::Session,
    pub store: Arc<dyn Store>,
    pub access: AccessDb,
    /// Tokens already verified (argon2id once per token, not per request).
    pub verified: Arc<slipway_govern::access::VerifiedTokens>,
    pub options: Arc<Options>,
    pub templates: Arc<minijinja::Environment<'static>>,
}

/// The whole application: API, event streams, pages.
///
/// `access` must be the access tables of the session's store (`AccessDb::for_store`).
pub fn router(
    session: slipway_ops::Session,
    access: AccessDb,
    options: Options,
) -> Result<Router, ApiError> {
    let state = AppState {
        store: session.dyn_store(),
        session,
        access,
        verified: Arc::default(),
        options: Arc::new(options),
        templates: Arc::new(ui::templates()?),
    };
    let api = Router::new()
        .route("/runs", get(api::runs))
        .route("/runs/{id}", get(api::run))
        .route("/runs/{id}/journal", get(api::journal))
        .route("/runs/{id}/status", get(api::status))
        .route("/runs/{id}/events", get(sse::events))
        .route("/runs/{id}/approve", post(control::approve))
        .route("/runs/{id}/pause", post(control::pause))
        .route("/runs/{id}/resume", post(control::resume))
        .route("/runs/{id}/promote", post(control::promote))
        .route("/runs/{id}/abort", post(control::abort))
        .route("/runs/{id}/rollback", post(control::rollback))
        .route("/audit/verify", get(api::audit_verify))
        .fallback(api::not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api,
        ));
    let pages = Router::new()
        .route("/", get(ui::index))
        .route("/runs/{id}", get(ui::run_page))
        .route("/runs/{id}/plan", get(ui::plan_page))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_page,
        ));
    Ok(Router::new()
        .nest("/api/v1", api)
        .merge(pages)
        .route("/login", get(ui::login_form).post(ui::login))
        .route("/logout", post(ui::logout))
        .route("/healthz", get(api::healthz))
        .route("/assets/{name}", get(ui::asset))
        .with_state(state))
}
