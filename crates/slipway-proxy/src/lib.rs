//! `slipway-proxy`: the built-in weighted HTTP reverse proxy that sits in front of a
//! service's stable and canary pools, with live per-version metrics.
//!
//! Built on hyper 1: its HTTP/1 server, and its client connections kept in an own
//! per-backend keep-alive pool (`upstream`; see CRATES.md for why not pingora).
//! HTTP/1.1 with keep-alive on both sides; bodies stream in both directions.
//!
//! The engine drives it through [`ProxyHandle`]:
//! - [`ProxyHandle::set_weight`] / [`ProxyHandle::weight`] — the `TrafficRouter`
//!   set_weight / verify_weight pair; a change applies to the very next request, and
//!   requests already dispatched finish where they are;
//! - [`ProxyHandle::set_pools`] — swap backends live;
//! - [`ProxyHandle::set_routes`] — header/cookie match routes and session affinity
//!   ([`matching`]), applied only while the canary pool has a backend;
//! - [`ProxyHandle::snapshot`], [`ProxyHandle::take_window`], [`ProxyHandle::in_flight`]
//!   — what the built-in metric provider measures.
//!
//! The same operations are served as JSON on the admin listener (`/admin/…`, guarded by
//! a token; documents in [`api`]) for a proxy that runs in a process of its own and
//! outlives the `slipway` that drives it.
//!
//! Architecture invariant: this crate knows nothing about specs, runs or the engine; it
//! routes and counts, and is told everything else.

mod admin;
pub mod api;
mod forward;
pub mod guard;
pub mod matching;
mod metrics;
mod routing;
mod timer;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use admin::TOKEN_HEADER;
pub use forward::{ProxyBody, ROUTE_HEADER, Tracked, VERSION_HEADER};
pub use matching::Routes;
pub use metrics::{MetricsSnapshot, VersionSnapshot, VersionWindow, Window};
pub use routing::{Pools, Version};

use crate::forward::Shared;
use crate::metrics::Metrics;

/// How long shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the proxy starts.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients connect; port 0 picks a free port (see [`ProxyHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Where `/metrics` (Prometheus text) is served, if anywhere. Kept off the traffic
    /// port so the service's own `/metrics` path still reaches the backends.
    pub admin_listen: Option<SocketAddr>,
    /// When set, every `/admin/…` call must carry it in [`TOKEN_HEADER`]; `/metrics`
    /// and `/weight` stay readable without it.
    pub admin_token: Option<String>,
    pub pools: Pools,
    /// Initial percent of weighted requests that go to the canary (0–100).
    pub canary_weight: u8,
    /// Limit on establishing an upstream TCP connection; a refused or slow connect is a
    /// 502 counted as a proxy error for the version.
    pub connect_timeout: Duration,
    /// Limit on waiting for the upstream response head (504 when exceeded); `None`
    /// waits as long as the backend takes.
    pub upstream_timeout: Option<Duration>,
    /// Idle keep-alive connections kept per backend.
    pub max_idle_per_backend: usize,
    /// How long an idle upstream connection is kept.
    pub idle_timeout: Duration,
    /// Raw latency samples kept per version per window (reservoir-sampled beyond this).
    pub window_sample_limit: usize,
    /// How long a client connection may take to send a request's head — counted from
    /// when the proxy starts waiting for one, so an idle keep-alive connection is closed
    /// after it too. Holds on both listeners.
    pub header_read_timeout: Duration,
    /// Connections one client (an IPv4 address or an IPv6 /64) may hold open on each
    /// listener; more are closed as soon as they are accepted
    /// ([`slipway_stdx::net::ClientLimiter`]).
    pub max_connections_per_client: usize,
    /// Sources whose [`ROUTE_HEADER`] is honoured (default: loopback only). From anyone
    /// else the header is removed and the request routed by weight; forced requests are
    /// never part of canary analysis, whoever sends them.
    pub route_override_from: Vec<ipnet::IpNet>,
}

/// Loopback, v4 and v6: the default sources allowed to force a version.
pub fn loopback_nets() -> Vec<ipnet::IpNet> {
    vec![
        ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8)),
        ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::LOCALHOST,
            128,
        )),
    ]
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: None,
            admin_token: None,
            pools: Pools::default(),
            canary_weight: 0,
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Some(Duration::from_secs(30)),
            max_idle_per_backend: 1024,
            idle_timeout: Duration::from_secs(60),
            window_sample_limit: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_client: 256,
            route_override_from: loopback_nets(),
        }
    }
}

/// Why the proxy could not start or a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("canary weight {0} is above 100 percent")]
    WeightOutOfRange(u8),
    #[error("failed to bind the {role} listener on {addr}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the bound address of the {role} listener")]
    LocalAddr {
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point; see [`Proxy::start`].
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Binds the listeners and starts serving on the current tokio runtime.
    pub async fn start(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        if config.canary_weight > 100 {
            return Err(ProxyError::WeightOutOfRange(config.canary_weight));
        }
        let listener = bind("traffic", config.listen).await?;
        let local_addr = bound_addr("traffic", &listener)?;
        let admin = match config.admin_listen {
            Some(addr) => {
                let admin = bind("admin", addr).await?;
                let admin_addr = bound_addr("admin", &admin)?;
                Some((admin, admin_addr))
            }
            None => None,
        };

        let shared = Arc::new(Shared {
            router: routing::Router::new(config.pools, config.canary_weight),
            metrics: Arc::new(Metrics::new(config.window_sample_limit)),
            upstream: upstream::UpstreamConfig {
                connect_timeout: config.connect_timeout,
                max_idle: config.max_idle_per_backend,
                idle_timeout: config.idle_timeout,
            },
            upstream_timeout: config.upstream_timeout,
            route_override_from: config.route_override_from,
        });
        let limits = ListenLimits {
            header_read_timeout: config.header_read_timeout,
            max_per_client: config.max_connections_per_client,
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(serve_traffic(
                listener,
                Arc::clone(&shared),
                limits,
                stop_rx.clone(),
            )),
            tokio::spawn(reap_idle(
                Arc::clone(&shared),
                config.idle_timeout,
                stop_rx.clone(),
            )),
        ];
        let admin_addr = admin.map(|(admin, addr)| {
            tasks.push(tokio::spawn(admin::serve(
                admin,
                Arc::clone(&shared),
                config.admin_token.map(Arc::from),
                limits,
                stop_rx,
            )));
            addr
        });
        Ok(ProxyHandle {
            shared,
            local_addr,
            admin_addr,
            stop,
            tasks,
        })
    }
}

/// Controls a running proxy. Dropping it stops the proxy (without waiting); use
/// [`ProxyHandle::shutdown`] to wait for in-flight requests.
#[derive(Debug)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The traffic address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address serving `/metrics` and the admin API, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Sets the canary's percent of weighted traffic. Takes effect for the next request
    /// the proxy routes; at 0 no new request reaches the canary (except ones that ask for
    /// it with [`ROUTE_HEADER`]). In-flight requests are not touched.
    pub fn set_weight(&self, canary_percent: u8) -> Result<(), ProxyError> {
        if canary_percent > 100 {
            return Err(ProxyError::WeightOutOfRange(canary_percent));
        }
        self.shared.router.set_weight(canary_percent);
        Ok(())
    }

    /// The canary weight in effect (the verify_weight of the router contract).
    pub fn weight(&self) -> u8 {
        self.shared.router.weight()
    }

    /// Installs match routes and session affinity (replacing any; an empty [`Routes`]
    /// clears them). They apply from the next request, and only while the canary pool has
    /// a backend.
    pub fn set_routes(&self, routes: matching::Routes) -> Result<(), matching::RoutesError> {
        self.shared
            .router
            .set_routes(matching::Compiled::new(routes)?);
        Ok(())
    }

    /// The match routes and affinity in force.
    pub fn routes(&self) -> matching::Routes {
        self.shared.router.routes().spec.clone()
    }

    /// Replaces the backends of both pools; the next request uses the new ones.
    /// In-flight requests finish on the backend they were sent to.
    pub fn set_pools(&self, pools: Pools) {
        self.shared.router.set_pools(pools);
    }

    /// The backends in effect.
    pub fn pools(&self) -> Pools {
        self.shared.router.pools().spec.clone()
    }

    /// Cumulative counters and histograms; subtract two with [`MetricsSnapshot::since`].
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot(self.weight())
    }

    /// Everything since the previous call (or start), with raw latency samples, and
    /// starts a new window. For one analysis loop; other readers use [`Self::snapshot`].
    pub fn take_window(&self) -> Window {
        self.shared.metrics.take_window(self.weight())
    }

    /// Arm the canary guard (a sequential test on every canary response that sets the
    /// canary's weight to 0 on the response that trips it; see [`guard`]) with a fresh
    /// test, or disarm it with `None`.
    pub fn arm_guard(&self, config: Option<guard::GuardConfig>) {
        self.shared.metrics.arm_guard(Version::Canary, config);
    }

    /// The guard's verdict once it tripped (until armed again or disarmed).
    pub fn guard_trip(&self) -> Option<guard::Trip> {
        self.shared.metrics.guard_trip(Version::Canary)
    }

    /// Requests dispatched to `version` whose responses have not finished yet; after
    /// `set_weight(0)` the canary has drained when this reaches 0.
    pub fn in_flight(&self, version: Version) -> u64 {
        self.shared.metrics.in_flight(version)
    }

    /// The metrics in Prometheus text format, as the admin `/metrics` serves them.
    pub fn render_prometheus(&self) -> String {
        self.shared.metrics.render_prometheus(self.weight())
    }

    /// Stops accepting connections, lets in-flight requests finish (up to a grace
    /// period), and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            // A task that panicked has nothing left to wait for.
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn bind(role: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { role, addr, source })
}

fn bound_addr(role: &'static str, listener: &TcpListener) -> Result<SocketAddr, ProxyError> {
    listener
        .local_addr()
        .map_err(|source| ProxyError::LocalAddr { role, source })
}

/// Resolves once stop was requested or the handle is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `wait_for` returns a guard that is not Send; it is dropped here, before any await.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Closes upstream keep-alive connections idle longer than `idle_timeout`, checking a
/// few times per timeout so none outlives it by much.
async fn reap_idle(shared: Arc<Shared>, idle_timeout: Duration, mut stop: watch::Receiver<bool>) {
    let period = (idle_timeout / 4).max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => shared.router.reap_idle(idle_timeout),
            () = stopped(&mut stop) => break,
        }
    }
}

/// What bounds the connections of each listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_per_client: usize,
}

impl ListenLimits {
    /// hyper's HTTP/1 server with the header-read timeout (which needs hyper's timer).
    pub(crate) fn http1(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        b
    }
}

async fn serve_traffic(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ListenLimits,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let clients = slipway_stdx::net::ClientLimiter::new(limits.max_per_client);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Accept errors (e.g. EMFILE) are transient; back off so a full
                    // descriptor table does not become a busy loop.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                // Over its cap, the client's new connection is closed at once (dropped).
                let Some(slot) = clients.admit(peer.ip()) else { continue };
                let _ = stream.set_nodelay(true);
                let client = Arc::new(forward::ClientConn::new(Arc::clone(&shared), peer));
                let svc = hyper::service::service_fn(move |req| {
                    let client = Arc::clone(&client);
                    async move { forward::handle(&client, req).await }
                });
                let conn = limits
                    .http1()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // Client resets and aborted bodies end connections; nothing to report.
                    let _ = conn.await;
                    drop(slot);
                });
            }
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}
