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
//! slw_…`, or, for the browser, a session that `POST /login` starts from a token: the
//! `slipway_session` cookie (HttpOnly, SameSite=Strict; `__Host-` and `Secure` over TLS)
//! holds a random session id the store keeps the hash of, never the token. Every request
//! re-verifies the token or session, so a revoked token, a logout or an expired session
//! stops working at once. Once access control is on (a grant exists) reading a run also
//! needs the `viewer` role in its environment (403 otherwise), and listings show only such
//! runs.
//!
//! Connections ([`serve`]): each waits at most `header_read_timeout` for a request head
//! (idle keep-alive included), and one client holds at most `max_connections_per_client`
//! open, so idle or trickling sockets cannot take every descriptor from `/healthz` and
//! everyone else.

mod admin;
mod api;
mod archiving;
mod audit;
mod auth;
mod chart;
pub mod client;
mod control;
mod deploy;
mod drives;
mod error;
mod governance;
mod metrics;
mod planning;
mod reports;
mod sse;
mod takeover;
pub mod tls;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use slipway_engine::store::Store;
use slipway_store::access::AccessDb;

pub use deploy::BUNDLE_DIGEST_HEADER;
pub use error::ApiError;

/// How the server behaves; [`Options::default`] is what `slipway serve` uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often an SSE stream asks the store for new journal entries.
    pub poll_interval: Duration,
    /// How often an open SSE stream checks its token again, so a revoked token stops a
    /// stream that outlives it.
    pub reauth_interval: Duration,
    /// Whether the session cookie gets the `Secure` attribute and the `__Host-` name
    /// (only when served over TLS, or a browser would never send it back over plain HTTP).
    pub secure_cookie: bool,
    /// How long a browser session lasts after sign-in (unless logged out before).
    pub session_ttl: Duration,
    /// How long a connection may take to send a request head; an idle keep-alive
    /// connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold open; more are
    /// closed as soon as they are accepted. Behind a reverse proxy every client is the
    /// proxy: raise it there.
    pub max_connections_per_client: usize,
    /// TLS of the server itself ([`tls::server_config`]): answers then carry
    /// `Strict-Transport-Security`. `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            reauth_interval: Duration::from_secs(30),
            secure_cookie: false,
            session_ttl: Duration::from_secs(12 * 3600),
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_client: 128,
            tls: None,
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
    /// Browser sessions (the cookie's id, kept in memory).
    pub sessions: Arc<slipway_govern::access::WebSessions>,
    pub options: Arc<Options>,
    pub templates: Arc<minijinja::Environment<'static>>,
    /// The server's own metrics (`/metrics`).
    pub metrics: Arc<metrics::Metrics>,
    /// The runs this server drives, handed over at shutdown.
    pub drives: Arc<drives::Drives>,
}

/// The runs a server drives, besides its router: taken over from a server that died
/// ([`Handover::take_over_every`]) and handed over when it shuts down
/// ([`Handover::hand_over`]).
#[derive(Clone)]
pub struct Handover {
    state: AppState,
}

impl Handover {
    /// Stop every run this server drives and give back their environments' leases, so
    /// another server (or a person) can resume them at once: the runs handed over.
    pub async fn hand_over(&self) -> Vec<String> {
        self.state.drives.hand_over(self.state.store.as_ref()).await
    }

    /// Look for runs a server started whose driver died, every `interval`, and drive them
    /// here (see `takeover.rs`); the task ends with the runtime.
    pub fn take_over_every(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(takeover::run(self.state.clone(), interval))
    }
}

/// The whole application: API, event streams, pages.
///
/// `access` must be the access tables of the session's store (`AccessDb::for_store`).
pub fn router(
    session: slipway_ops::Session,
    access: AccessDb,
    options: Options,
) -> Result<Router, ApiError> {
    app(session, access, options).map(|(r, _)| r)
}

/// [`router`] and the [`Handover`] of the runs it will drive.
pub fn app(
    session: slipway_ops::Session,
    access: AccessDb,
    options: Options,
) -> Result<(Router, Handover), ApiError> {
    let metrics = metrics::Metrics::new().map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            e,
            "this is a bug in slipway-server",
        )
    })?;
    let drives = Arc::new(drives::Drives::default());
    let state = AppState {
        store: session.dyn_store(),
        session,
        access,
        verified: Arc::default(),
        sessions: Arc::default(),
        options: Arc::new(options),
        templates: Arc::new(ui::templates()?),
        metrics: Arc::new(metrics),
        drives,
    };
    let handover = Handover {
        state: state.clone(),
    };
    let api = Router::new()
        .route("/runs", get(api::runs).post(deploy::start))
        .route("/bundles", post(deploy::upload))
        .route("/runs/{id}", get(api::run))
        .route("/runs/{id}/journal", get(api::journal))
        .route("/runs/{id}/status", get(api::status))
        .route("/runs/{id}/plan", get(api::plan))
        .route("/runs/{id}/events", get(sse::events))
        .route("/runs/{id}/approve", post(control::approve))
        .route("/runs/{id}/pause", post(control::pause))
        .route("/runs/{id}/resume", post(control::resume))
        .route("/runs/{id}/promote", post(control::promote))
        .route("/runs/{id}/abort", post(control::abort))
        .route("/runs/{id}/rollback", post(control::rollback))
        .route("/plans", post(planning::plan))
        .route("/diff", post(planning::diff))
        .route("/leases", get(planning::leases))
        .route("/leases/{env}", post(planning::lease))
        .route("/leases/{env}/release", post(planning::release))
        .route("/audit/verify", get(api::audit_verify))
        .route("/audit/export", get(audit::export))
        .route(
            "/audit/anchors",
            get(audit::anchors).post(audit::add_anchor),
        )
        .route("/access/whoami", get(admin::whoami))
        .route("/access/grants", get(admin::grants).post(admin::grant))
        .route("/access/grants/{id}/revoke", post(admin::revoke_grant))
        .route("/access/groups", get(admin::members))
        .route("/access/groups/{group}/members", post(admin::add_member))
        .route(
            "/access/groups/{group}/members/{user}/remove",
            post(admin::remove_member),
        )
        .route(
            "/access/tokens",
            get(admin::tokens).post(admin::create_token),
        )
        .route("/access/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/access/reviews/{review}", post(admin::open_review))
        .route(
            "/access/reviews/{review}/grants/{id}",
            post(admin::decide_review),
        )
        .route("/access/reviews/{review}/close", post(admin::close_review))
        .route("/reviews", get(governance::reviews))
        .route("/reviews/{run}/complete", post(governance::complete_review))
        .route(
            "/checklist/acks",
            get(governance::acks).post(governance::acknowledge),
        )
        .route("/archive/cut", post(archiving::select))
        .route("/archive/bundle", get(archiving::bundle))
        .route("/archive/prune", post(archiving::prune))
        .route("/retention", get(governance::retention))
        .route("/retention/{kind}", post(governance::set_retention))
        .route("/policy", get(admin::policy).post(admin::apply_policy))
        .route("/freeze", get(admin::freeze_status))
        .route("/reports/compliance", get(reports::compliance))
        .route("/catalog", post(reports::catalog))
        .route("/reports/dora", get(reports::dora_report))
        .route("/reports/handover/{id}", get(reports::handover))
        .route("/reports/retro/{id}", get(reports::retro))
        .fallback(api::not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api,
        ));
    let pages = Router::new()
        .route("/", get(ui::index))
        .route("/runs/{id}", get(ui::run_page))
        .route("/runs/{id}/plan", get(ui::plan_page))
        .route("/runs/{id}/chart.svg", get(ui::chart_svg))
        .route("/inbox", get(ui::inbox_page))
        .route("/environments", get(ui::environments_page))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_page,
        ));
    let app = Router::new()
        .nest("/api/v1", api)
        .merge(pages)
        .route("/login", get(ui::login_form).post(ui::login))
        .route("/logout", post(ui::logout))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/assets/{name}", get(ui::asset))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::observe,
        ))
        .with_state(state);
    Ok((app, handover))
}

/// Serve `app` on `listener` until `stop` resolves, then stop accepting and wait for open
/// connections to finish their requests (the caller bounds that wait: an event stream of
/// a live run never finishes by itself).
///
/// hyper's HTTP/1 server with a header-read timeout (an idle keep-alive connection is
/// closed after it too) and a cap on the connections per client
/// ([`slipway_stdx::net::ClientLimiter`]): a connection over the cap is closed as soon as
/// it is accepted. `axum::serve` has neither, so 1,000 idle sockets used to hold every
/// descriptor and `/healthz` stopped answering.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    options: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let clients = slipway_stdx::net::ClientLimiter::new(options.max_connections_per_client);
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(_) => {
                        // EMFILE and friends are transient; back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                // Over its cap, the client's new connection is closed at once (dropped).
                let Some(slot) = clients.admit(peer.ip()) else { continue };
                let service = TowerToHyperService::new(app.clone());
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(options.header_read_timeout);
                let watcher = graceful.watcher();
                let tls = tls.clone();
                let timeout = options.header_read_timeout;
                tokio::spawn(async move {
                    // A client that resets or times out ends its connection; nothing to report.
                    match tls {
                        None => {
                            let _ = watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await;
                        }
                        Some(acceptor) => {
                            // The handshake is bounded like a request head: a client that
                            // opens a socket and says nothing holds no slot for long.
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(timeout, acceptor.accept(stream)).await
                            {
                                let _ = watcher
                                    .watch(http.serve_connection(TokioIo::new(stream), service))
                                    .await;
                            }
                        }
                    }
                    drop(slot);
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
