//! `demo-app`: a tiny HTTP service whose version, added latency, error rate and failure
//! point are configuration, so a canary can be made good or bad on purpose.
//!
//! The binary (`src/main.rs`) is a thin wrapper around [`serve`]; tests that only need a
//! backend start it in-process the same way.
//!
//! Endpoints:
//! - `/` — the version in the body and in an `x-version` header (faults apply);
//! - `/echo` — streams the request body back unchanged (faults apply);
//! - `/stream?chunks=N&size=S` — a chunked response of N chunks of S bytes (faults apply);
//! - `/healthz`, `/ready`, `/version` — never faulted: a bad release still looks alive,
//!   which is exactly what a canary analysis has to catch;
//! - `/metrics` — Prometheus text format.

mod faults;
mod metrics;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{ParseDurationError, parse_duration};

/// How long a graceful shutdown waits for open connections before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything that shapes the service's behaviour.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The version string served by `/`, `/version` and the `x-version` header.
    pub version: String,
    /// Fraction (0.0–1.0) of faultable requests answered with 500, spread evenly and
    /// deterministically (request n fails when `floor((n+1)·rate) > floor(n·rate)`).
    pub error_rate: f64,
    /// Latency added to every faultable request before it is answered.
    pub latency: Duration,
    /// After this many faultable requests, every further one is answered with 500.
    pub fail_after: Option<u64>,
    /// With a seed, each faultable request fails independently with probability
    /// `error_rate` (a seeded pseudo-random stream: errors arrive as real ones do,
    /// sometimes several close together) instead of evenly spread.
    pub error_seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: "1.0.0".to_owned(),
            error_rate: 0.0,
            latency: Duration::ZERO,
            fail_after: None,
            error_seed: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("error rate {0} is outside 0.0..=1.0")]
    InvalidErrorRate(f64),
    #[error("failed to bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the bound address")]
    LocalAddr(#[source] std::io::Error),
}

/// A running server; dropping it asks the server to stop (without waiting).
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The address the server actually listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to a grace period), and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // A panicked server task has nothing left to clean up; shutting down is done.
            let _ = task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds the listener and serves on the current tokio runtime until shut down.
pub async fn serve(config: Config) -> Result<RunningServer, ServeError> {
    if !(0.0..=1.0).contains(&config.error_rate) {
        return Err(ServeError::InvalidErrorRate(config.error_rate));
    }
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    let state = Arc::new(service::State::new(config));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, state, stop_rx));
    Ok(RunningServer {
        local_addr,
        stop,
        task: Some(task),
    })
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<service::State>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // Accept errors (e.g. EMFILE) are transient; back off briefly so a full
                    // descriptor table does not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                // Small responses must not wait for Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                let svc = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { service::handle(&state, req).await }
                });
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // Client resets and aborted bodies are normal for a test service.
                    let _ = conn.await;
                });
            }
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// Resolves once stop was requested, or the handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it before the select arm runs.
    let _ = stop.wait_for(|stopped| *stopped).await;
}
