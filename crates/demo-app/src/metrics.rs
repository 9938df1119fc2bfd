//! Request counters and a latency histogram, rendered in Prometheus text format.
//!
//! Plain atomics with fixed buckets: the service must stay cheap enough that a proxy
//! benchmark measures the proxy, not the backend's bookkeeping.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (the Prometheus client defaults).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Handlers that get their own counters; anything else is counted as `other`.
pub(crate) const HANDLERS: [&str; 8] = [
    "/", "/echo", "/stream", "/healthz", "/ready", "/version", "/metrics", "other",
];

/// Statuses the service can answer with.
const STATUSES: [u16; 4] = [200, 404, 405, 500];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// `[handler][status]`
    requests: [[AtomicU64; STATUSES.len()]; HANDLERS.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    pub(crate) fn record(&self, handler: usize, status: u16, elapsed: Duration) {
        if let Some(slot) = STATUSES.iter().position(|s| *s == status)
            && let Some(row) = self.requests.get(handler)
            && let Some(counter) = row.get(slot)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|le| seconds <= *le)
            && let Some(counter) = self.buckets.get(bucket)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, version: &str) -> String {
        let mut out = String::with_capacity(2048);
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "# HELP demo_app_info The running version.\n# TYPE demo_app_info gauge\ndemo_app_info{{version=\"{version}\"}} 1"
        );
        let _ = writeln!(
            out,
            "# HELP demo_app_requests_total Requests answered, by handler and status.\n# TYPE demo_app_requests_total counter"
        );
        for (handler, row) in HANDLERS.iter().zip(&self.requests) {
            for (status, counter) in STATUSES.iter().zip(row) {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "demo_app_requests_total{{handler=\"{handler}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP demo_app_request_duration_seconds Time to answer a request.\n# TYPE demo_app_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (le, counter) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += counter.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "demo_app_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        #[expect(
            clippy::cast_precision_loss,
            reason = "a latency sum in seconds does not need 53+ bits"
        )]
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "demo_app_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\ndemo_app_request_duration_seconds_sum {sum}\ndemo_app_request_duration_seconds_count {count}"
        );
        out
    }
}
