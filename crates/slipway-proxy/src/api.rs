//! The admin API's JSON documents, shared by the proxy (server side, `admin.rs`) and
//! remote controllers (client side, `slipway-providers`' `RemoteRouter`), so both ends
//! read the same types.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::metrics::{VersionWindow, Window};

/// `PUT /admin/weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightRequest {
    /// Percent of weighted requests to the canary (0–100).
    pub weight: u8,
}

/// `PUT /admin/guard`: arm the canary guard for an analysis whose error rate may be at
/// most `max_error_rate` (a fresh test), or disarm it with `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardRequest {
    pub max_error_rate: Option<f64>,
}

/// `PUT /admin/pools`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolsRequest {
    pub stable: Vec<SocketAddr>,
    pub canary: Vec<SocketAddr>,
}

/// `GET /admin/state` (and the answer to every change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    /// Canary weight in effect.
    pub weight: u8,
    /// Backends in effect.
    pub stable: Vec<SocketAddr>,
    pub canary: Vec<SocketAddr>,
    /// Requests dispatched whose response has not finished.
    pub in_flight_stable: u64,
    pub in_flight_canary: u64,
    /// Lifetime counters (requests answered; 5xx plus proxy errors).
    pub requests_stable: u64,
    pub requests_canary: u64,
    pub errors_stable: u64,
    pub errors_canary: u64,
    /// The canary guard's verdict once it tripped (it set the weight to 0 then).
    #[serde(default)]
    pub guard_trip: Option<crate::guard::Trip>,
    /// Lifetime requests a match route sent to each version (counted apart).
    #[serde(default)]
    pub matched_stable: u64,
    #[serde(default)]
    pub matched_canary: u64,
    /// The match routes and affinity in force.
    #[serde(default)]
    pub routes: crate::matching::Routes,
}

/// One version's traffic in a window (`POST /admin/window`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    pub requests: u64,
    /// Backend 5xx plus proxy errors: what clients saw fail.
    pub errors: u64,
    pub status_5xx: u64,
    pub proxy_errors: u64,
    /// Latency quantiles to the response head, µs; absent without requests.
    pub p50_us: Option<u64>,
    pub p95_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Raw latencies (µs) for the Mann-Whitney comparison (reservoir-sampled).
    pub samples_us: Vec<u64>,
    /// Requests a match route sent here, apart from all of the above, and their errors.
    #[serde(default)]
    pub matched_requests: u64,
    #[serde(default)]
    pub matched_errors: u64,
}

/// `POST /admin/window`: both versions since the previous window, which this call ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    /// Window length, µs.
    pub elapsed_us: u64,
    pub canary_weight: u8,
    pub stable: VersionReport,
    pub canary: VersionReport,
}

impl From<&VersionWindow> for VersionReport {
    fn from(v: &VersionWindow) -> Self {
        let us = |q: f64| {
            v.stats
                .latency_quantile(q)
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        };
        Self {
            requests: v.stats.requests,
            errors: v.stats.errors(),
            status_5xx: v.stats.status_5xx(),
            proxy_errors: v.stats.proxy_errors,
            p50_us: us(0.50),
            p95_us: us(0.95),
            p99_us: us(0.99),
            samples_us: v.latency_samples_us.clone(),
            matched_requests: v.stats.matched_requests,
            matched_errors: v.stats.matched_errors,
        }
    }
}

impl From<&Window> for WindowReport {
    fn from(w: &Window) -> Self {
        Self {
            elapsed_us: u64::try_from(w.elapsed.as_micros()).unwrap_or(u64::MAX),
            canary_weight: w.canary_weight,
            stable: VersionReport::from(&w.stable),
            canary: VersionReport::from(&w.canary),
        }
    }
}
