//! The built-in traffic router and metric provider: the rollout traits over a running
//! [`slipway_proxy::ProxyHandle`].
//!
//! The proxy measures every request per version, so the builtin provider needs no
//! scraping: a window is the proxy's own counters and HDR histogram since the previous
//! window, and latency samples for the Mann-Whitney comparison.

use std::net::SocketAddr;
use std::sync::Arc;

use slipway_model::analysis::{VersionWindow, Window};
use slipway_proxy::guard::GuardConfig;
use slipway_proxy::{Pools, ProxyHandle, Version};
use slipway_rollout::{BoxFuture, MetricSource, RolloutError, TrafficRouter};

/// The built-in proxy as router and metric source.
#[derive(Clone)]
pub struct BuiltinRouter {
    proxy: Arc<ProxyHandle>,
}

impl BuiltinRouter {
    /// Wrap a running proxy.
    pub fn new(proxy: Arc<ProxyHandle>) -> Self {
        Self { proxy }
    }

    /// The proxy.
    pub fn proxy(&self) -> &ProxyHandle {
        &self.proxy
    }
}

impl TrafficRouter for BuiltinRouter {
    fn set_pools<'a>(
        &'a self,
        stable: &'a [SocketAddr],
        canary: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        self.proxy.set_pools(Pools {
            stable: stable.to_vec(),
            canary: canary.to_vec(),
        });
        Box::pin(async { Ok(()) })
    }

    fn set_weight(&self, weight: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        let r = self
            .proxy
            .set_weight(weight)
            .map_err(|e| RolloutError::Router(e.to_string()));
        Box::pin(async move { r })
    }

    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        let w = self.proxy.weight();
        Box::pin(async move { Some(w) })
    }

    fn clear_routes(&self) -> BoxFuture<'_, Result<(), RolloutError>> {
        // Clearing cannot be refused: an empty set compiles.
        let r = self
            .proxy
            .set_routes(slipway_proxy::Routes::default())
            .map_err(|e| RolloutError::Router(e.to_string()));
        Box::pin(async move { r })
    }

    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        let n = self.proxy.in_flight(Version::Canary);
        Box::pin(async move { Some(n) })
    }

    fn arm_guard(&self, max_error_rate: Option<f64>) -> BoxFuture<'_, Result<bool, RolloutError>> {
        // An analysis whose max admits no distinguishable hard failure gets no guard.
        let config = max_error_rate.and_then(GuardConfig::for_max_error_rate);
        self.proxy.arm_guard(config);
        Box::pin(async move { Ok(config.is_some() || max_error_rate.is_none()) })
    }

    fn guard_trip(&self) -> BoxFuture<'_, Option<String>> {
        let trip = self.proxy.guard_trip().map(|t| t.sentence());
        Box::pin(async move { trip })
    }
}

fn convert(v: &slipway_proxy::VersionWindow, seconds: f64) -> VersionWindow {
    let ms = |q: f64| {
        v.stats
            .latency_quantile(q)
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    VersionWindow {
        requests: v.stats.requests,
        errors: v.stats.errors(),
        p50_ms: ms(0.50),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        seconds,
        samples_ms: v
            .latency_samples_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect(),
    }
}

impl MetricSource for BuiltinRouter {
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        let w = self.proxy.take_window();
        let secs = w.elapsed.as_secs_f64();
        let out = Window {
            canary: convert(&w.canary, secs),
            stable: convert(&w.stable, secs),
            matched_requests: w.canary.stats.matched_requests,
            matched_errors: w.canary.stats.matched_errors,
        };
        Box::pin(async move { Ok(out) })
    }
}
