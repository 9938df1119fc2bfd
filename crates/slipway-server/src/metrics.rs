//! The server's own health and metrics: `/healthz` (the process answers), `/readyz` (the
//! store answers too: a load balancer sends no traffic to a server that cannot read runs)
//! and `/metrics` in Prometheus' text format — runs by state, runs this server drives, and
//! a latency histogram of every request by route, method and status, and how many runs
//! this server took over from a driver that died.
//!
//! Recorded with the `metrics` facade into a recorder of this router's own
//! (`metrics-exporter-prometheus`, no global one), so two servers in one process (the
//! crate's tests) keep their numbers apart. `/metrics` is open like `/healthz`: it holds
//! counts and durations, never a name, run id or token.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::AppState;

/// Upper bounds (seconds) of the request latency buckets: from a cached token check
/// (~1 ms) to an argon2 verification and a slow store (seconds).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metrics of one server.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    /// Run states reported before, set to 0 when no run is in them any more.
    states: Mutex<BTreeSet<String>>,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, String> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .map_err(|e| format!("set up the metrics: {e}"))?
            .build_recorder();
        Ok(Self {
            recorder,
            states: Mutex::default(),
        })
    }
}

impl Metrics {
    /// A run this server took over from a driver that died.
    pub(crate) fn took_over(&self) {
        metrics::with_local_recorder(&self.recorder, || {
            metrics::counter!("slipway_run_takeovers_total").increment(1);
        });
    }
}

/// Every request: its latency recorded by route (the route's pattern, never the path a
/// client sent: no run ids or unbounded label values), and `Strict-Transport-Security`
/// on the answer when the server speaks TLS.
pub(crate) async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let mut resp = next.run(req).await;
    if state.options.tls.is_some() {
        // A year; browsers then refuse plain HTTP to this host (RFC 6797).
        resp.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    let status = resp.status().as_u16().to_string();
    let secs = start.elapsed().as_secs_f64();
    metrics::with_local_recorder(&state.metrics.recorder, || {
        metrics::histogram!(
            "slipway_http_request_duration_seconds",
            "route" => route,
            "method" => method,
            "status" => status
        )
        .record(secs);
    });
    resp
}

/// `GET /readyz`: 200 when the store answers, 503 naming why not.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.runs(1).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store does not answer: {e}\n"),
        )
            .into_response(),
    }
}

/// Runs read for the by-state gauge: every run a store of this size keeps.
const MAX_COUNTED: u32 = 100_000;

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    // A store that does not answer still gets an answer here: the latency histogram says
    // how the server fares without it.
    let runs = state.store.runs(MAX_COUNTED).await.ok();
    let drives = state.drives.count();
    let m = &state.metrics;
    metrics::with_local_recorder(&m.recorder, || {
        metrics::gauge!("slipway_server_driven_runs").set(drives as f64);
        metrics::gauge!("slipway_store_up").set(if runs.is_some() { 1.0 } else { 0.0 });
        if let Some(runs) = &runs {
            let mut counts = std::collections::BTreeMap::<String, u64>::new();
            for r in runs {
                *counts.entry(r.state.as_str().to_owned()).or_default() += 1;
            }
            let mut seen = m.states.lock().unwrap_or_else(|p| p.into_inner());
            for s in seen.iter() {
                if !counts.contains_key(s) {
                    metrics::gauge!("slipway_runs", "state" => s.clone()).set(0.0);
                }
            }
            for (s, n) in &counts {
                metrics::gauge!("slipway_runs", "state" => s.clone()).set(*n as f64);
                seen.insert(s.clone());
            }
        }
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        m.recorder.handle().render(),
    )
        .into_response()
}
