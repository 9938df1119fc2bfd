//! Live per-version metrics: request counts, status classes, proxy errors, HDR latency
//! histograms, and raw latency samples of the current window.
//!
//! Two ways to get windowed numbers, because an analysis loop must judge the canary's own
//! traffic in the last interval, not a lifetime average that dilutes a fresh regression:
//! - [`MetricsSnapshot::since`]: the difference of two cumulative snapshots (any number of
//!   readers, no shared state);
//! - [`crate::ProxyHandle::take_window`]: everything since the previous call, including a
//!   bounded reservoir of raw latency samples for a Mann-Whitney U test. Meant for exactly
//!   one analysis loop; other readers use snapshots.
//!
//! Latency is measured from the moment the proxy has the request head until it has the
//! response head (time to first byte), so a client that reads a body slowly does not
//! make a version look slow. Proxy errors (connect failure, timeout) are recorded too:
//! that is what the client experienced.

use crate::guard::{Cusum, GuardConfig, Trip};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::routing::Version;

/// Latencies are recorded in microseconds from 1 µs to 60 s with 3 significant digits.
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 60_000_000;
const HIST_SIGFIG: u8 = 3;

/// `le` bounds (seconds) of the Prometheus histogram derived from the HDR histogram.
const PROM_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub(crate) fn new_histogram() -> Histogram<u64> {
    #[expect(
        clippy::expect_used,
        reason = "constant bounds satisfy hdrhistogram's preconditions (low >= 1, high >= 2·low, sigfig <= 5)"
    )]
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Counts and latency of one version over some span (lifetime, or a window).
#[derive(Debug, Clone)]
pub struct VersionSnapshot {
    /// Requests that finished (a response head was returned to the client).
    pub requests: u64,
    /// Backend responses by status class: index 0 = 1xx … index 4 = 5xx.
    pub status_classes: [u64; 5],
    /// Requests the proxy answered itself because the backend failed (502/503/504):
    /// connection refused, connect timeout, upstream timeout, broken connection.
    pub proxy_errors: u64,
    /// Latency to response head, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests a match route sent here: counted apart, in none of the numbers above,
    /// so testers forcing the canary cannot move its verdict either way.
    pub matched_requests: u64,
    /// Those of them that failed (5xx or a proxy error).
    pub matched_errors: u64,
}

impl Default for VersionSnapshot {
    fn default() -> Self {
        Self {
            requests: 0,
            status_classes: [0; 5],
            proxy_errors: 0,
            latency_us: new_histogram(),
            matched_requests: 0,
            matched_errors: 0,
        }
    }
}

impl VersionSnapshot {
    /// Backend 2xx responses.
    pub fn status_2xx(&self) -> u64 {
        self.status_classes[1]
    }

    /// Backend 5xx responses (proxy errors not included; see [`Self::errors`]).
    pub fn status_5xx(&self) -> u64 {
        self.status_classes[4]
    }

    /// Backend 4xx responses.
    pub fn status_4xx(&self) -> u64 {
        self.status_classes[3]
    }

    /// Failed requests as a client sees them: backend 5xx plus proxy errors.
    pub fn errors(&self) -> u64 {
        self.status_5xx() + self.proxy_errors
    }

    /// `errors / requests`, or `None` without requests (no data is not a zero).
    pub fn error_rate(&self) -> Option<f64> {
        #[expect(
            clippy::cast_precision_loss,
            reason = "request counts stay far below 2^53"
        )]
        (self.requests > 0).then(|| self.errors() as f64 / self.requests as f64)
    }

    /// The latency at quantile `q` (0.0–1.0), or `None` without samples.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        (!self.latency_us.is_empty())
            .then(|| Duration::from_micros(self.latency_us.value_at_quantile(q)))
    }

    /// What happened between `earlier` and `self` (both cumulative, same proxy).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut latency_us = self.latency_us.clone();
        // Subtraction only fails when `earlier` has counts `self` lacks, i.e. when the two
        // snapshots are not from the same proxy in order; fall back to the full value then.
        if latency_us.subtract(&earlier.latency_us).is_err() {
            latency_us = self.latency_us.clone();
        }
        let mut status_classes = [0; 5];
        for (i, slot) in status_classes.iter_mut().enumerate() {
            *slot = self.status_classes[i].saturating_sub(earlier.status_classes[i]);
        }
        Self {
            requests: self.requests.saturating_sub(earlier.requests),
            status_classes,
            proxy_errors: self.proxy_errors.saturating_sub(earlier.proxy_errors),
            latency_us,
            matched_requests: self
                .matched_requests
                .saturating_sub(earlier.matched_requests),
            matched_errors: self.matched_errors.saturating_sub(earlier.matched_errors),
        }
    }

    fn record(&mut self, outcome: Outcome, latency_us: u64) {
        self.requests += 1;
        match outcome {
            Outcome::Status(status) => {
                let class = usize::from(status / 100).clamp(1, 5) - 1;
                self.status_classes[class] += 1;
            }
            Outcome::ProxyError => self.proxy_errors += 1,
        }
        self.latency_us
            .saturating_record(latency_us.max(HIST_LOW_US));
    }
}

/// Cumulative numbers for both versions at one instant.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Canary weight (percent) when the snapshot was taken.
    pub canary_weight: u8,
    pub stable: VersionSnapshot,
    pub canary: VersionSnapshot,
}

impl MetricsSnapshot {
    pub fn version(&self, version: Version) -> &VersionSnapshot {
        match version {
            Version::Stable => &self.stable,
            Version::Canary => &self.canary,
        }
    }

    /// The traffic between `earlier` and `self`, per version: a window of any length.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            canary_weight: self.canary_weight,
            stable: self.stable.since(&earlier.stable),
            canary: self.canary.since(&earlier.canary),
        }
    }
}

/// One version's traffic in a window taken with [`crate::ProxyHandle::take_window`].
#[derive(Debug, Clone, Default)]
pub struct VersionWindow {
    pub stats: VersionSnapshot,
    /// Raw latencies (µs) of the window: all of them, or a uniform random sample
    /// (reservoir sampling, fixed seed) when there were more than the configured limit.
    pub latency_samples_us: Vec<u64>,
}

/// Both versions' traffic since the previous [`crate::ProxyHandle::take_window`].
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// How long the window lasted.
    pub elapsed: Duration,
    pub canary_weight: u8,
    pub stable: VersionWindow,
    pub canary: VersionWindow,
}

impl Window {
    pub fn version(&self, version: Version) -> &VersionWindow {
        match version {
            Version::Stable => &self.stable,
            Version::Canary => &self.canary,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Status(u16),
    ProxyError,
}

#[derive(Debug)]
struct VersionState {
    total: VersionSnapshot,
    window: VersionSnapshot,
    samples: Vec<u64>,
    /// Latencies offered to the reservoir this window.
    offered: u64,
    rng: u64,
    /// The sequential test on this version's responses, when armed (canary only).
    guard: Option<Cusum>,
}

/// Fixed seed: windows are reproducible given the same traffic.
const RNG_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

impl VersionState {
    fn new() -> Self {
        Self {
            total: VersionSnapshot::default(),
            window: VersionSnapshot::default(),
            samples: Vec::new(),
            offered: 0,
            rng: RNG_SEED,
            guard: None,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for reservoir sampling, and no dependency.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Debug)]
pub(crate) struct VersionMetrics {
    state: Mutex<VersionState>,
    in_flight: AtomicU64,
    /// Requests a tester forced to this version with the route header: counted apart,
    /// never in the numbers canary analysis judges (see [`crate::forward`]).
    forced: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    versions: [VersionMetrics; 2],
    sample_limit: usize,
    window_started: Mutex<Instant>,
}

impl Metrics {
    pub(crate) fn new(sample_limit: usize) -> Self {
        let version = || VersionMetrics {
            state: Mutex::new(VersionState::new()),
            in_flight: AtomicU64::new(0),
            forced: AtomicU64::new(0),
        };
        Self {
            versions: [version(), version()],
            sample_limit,
            window_started: Mutex::new(Instant::now()),
        }
    }

    fn of(&self, version: Version) -> &VersionMetrics {
        &self.versions[version.index()]
    }

    /// Count one response; `Some` when it trips the version's guard (that response only).
    pub(crate) fn record(
        &self,
        version: Version,
        outcome: Outcome,
        latency: Duration,
    ) -> Option<Trip> {
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Poison only means another recorder panicked between plain integer updates;
        // the counters are still meaningful, so keep counting.
        let mut state = self
            .of(version)
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.total.record(outcome, latency_us);
        state.window.record(outcome, latency_us);
        let error = match outcome {
            Outcome::Status(status) => status >= 500,
            Outcome::ProxyError => true,
        };
        let trip = state.guard.as_mut().and_then(|g| g.observe(error));
        state.offered += 1;
        if state.samples.len() < self.sample_limit {
            state.samples.push(latency_us);
        } else if self.sample_limit > 0 {
            // Algorithm R: keep each of the `offered` latencies with equal probability.
            let offered = state.offered;
            let slot = state.next_random() % offered;
            if let Some(kept) = usize::try_from(slot)
                .ok()
                .and_then(|slot| state.samples.get_mut(slot))
            {
                *kept = latency_us;
            }
        }
        trip
    }

    /// Arm (a fresh test) or disarm the guard on `version`'s responses.
    pub(crate) fn arm_guard(&self, version: Version, config: Option<GuardConfig>) {
        let mut state = self
            .of(version)
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.guard = config.map(Cusum::new);
    }

    /// The guard's verdict on `version`, once it tripped (until disarmed).
    pub(crate) fn guard_trip(&self, version: Version) -> Option<Trip> {
        let state = self
            .of(version)
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.guard.as_ref().and_then(Cusum::tripped)
    }

    pub(crate) fn in_flight_guard(self: &std::sync::Arc<Self>, version: Version) -> InFlight {
        self.of(version).in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            metrics: std::sync::Arc::clone(self),
            version,
        }
    }

    /// Count a request a match route sent to `version`: apart from the analysed numbers
    /// and never seen by the guard.
    pub(crate) fn record_matched(&self, version: Version, outcome: Outcome) {
        let error = match outcome {
            Outcome::Status(status) => status >= 500,
            Outcome::ProxyError => true,
        };
        let mut guard = self
            .of(version)
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        for span in [&mut state.total, &mut state.window] {
            span.matched_requests += 1;
            span.matched_errors += u64::from(error);
        }
    }

    /// Count a request forced to `version` by the route header (not in any window).
    pub(crate) fn record_forced(&self, version: Version) {
        self.of(version).forced.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests forced to `version` by the route header so far.
    pub(crate) fn forced(&self, version: Version) -> u64 {
        self.of(version).forced.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self, version: Version) -> u64 {
        self.of(version).in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn snapshot(&self, canary_weight: u8) -> MetricsSnapshot {
        let total = |v: Version| {
            self.of(v)
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .total
                .clone()
        };
        MetricsSnapshot {
            canary_weight,
            stable: total(Version::Stable),
            canary: total(Version::Canary),
        }
    }

    pub(crate) fn take_window(&self, canary_weight: u8) -> Window {
        let elapsed = {
            let mut started = self
                .window_started
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let elapsed = now.duration_since(*started);
            *started = now;
            elapsed
        };
        let take = |v: Version| {
            let mut state = self
                .of(v)
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.offered = 0;
            VersionWindow {
                stats: std::mem::take(&mut state.window),
                latency_samples_us: std::mem::take(&mut state.samples),
            }
        };
        Window {
            elapsed,
            canary_weight,
            stable: take(Version::Stable),
            canary: take(Version::Canary),
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render_prometheus(&self, canary_weight: u8) -> String {
        let snapshot = self.snapshot(canary_weight);
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail, so the fmt::Results are ignored.
        let _ = writeln!(
            out,
            "# HELP slipway_proxy_canary_weight Percent of weighted requests routed to the canary.\n\
             # TYPE slipway_proxy_canary_weight gauge\n\
             slipway_proxy_canary_weight {canary_weight}"
        );
        let _ = writeln!(
            out,
            "# HELP slipway_proxy_requests_total Requests answered, by version and status class.\n\
             # TYPE slipway_proxy_requests_total counter"
        );
        for v in Version::ALL {
            let s = snapshot.version(v);
            for (i, n) in s.status_classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "slipway_proxy_requests_total{{version=\"{v}\",class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
            let _ = writeln!(
                out,
                "slipway_proxy_requests_total{{version=\"{v}\",class=\"proxy_error\"}} {}",
                s.proxy_errors
            );
        }
        let _ = writeln!(
            out,
            "# HELP slipway_proxy_forced_requests_total Requests a trusted source forced to a version with x-slipway-route (not part of canary analysis).\n\
             # TYPE slipway_proxy_forced_requests_total counter"
        );
        for v in Version::ALL {
            let _ = writeln!(
                out,
                "slipway_proxy_forced_requests_total{{version=\"{v}\"}} {}",
                self.forced(v)
            );
        }
        let _ = writeln!(
            out,
            "# HELP slipway_proxy_matched_requests_total Requests a match route sent to a version, and those that failed (not part of canary analysis).\n\
             # TYPE slipway_proxy_matched_requests_total counter"
        );
        for v in Version::ALL {
            let s = snapshot.version(v);
            let _ = writeln!(
                out,
                "slipway_proxy_matched_requests_total{{version=\"{v}\",outcome=\"all\"}} {}\n\
                 slipway_proxy_matched_requests_total{{version=\"{v}\",outcome=\"error\"}} {}",
                s.matched_requests, s.matched_errors
            );
        }
        let _ = writeln!(
            out,
            "# HELP slipway_proxy_in_flight Requests dispatched whose response has not finished.\n\
             # TYPE slipway_proxy_in_flight gauge"
        );
        for v in Version::ALL {
            let _ = writeln!(
                out,
                "slipway_proxy_in_flight{{version=\"{v}\"}} {}",
                self.in_flight(v)
            );
        }
        let _ = writeln!(
            out,
            "# HELP slipway_proxy_request_duration_seconds Time until the response head, by version.\n\
             # TYPE slipway_proxy_request_duration_seconds histogram"
        );
        for v in Version::ALL {
            let h = &snapshot.version(v).latency_us;
            for le in PROM_BUCKETS {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "bucket bounds are small positive constants"
                )]
                let le_us = (le * 1e6) as u64;
                let n = if h.is_empty() {
                    0
                } else {
                    h.count_between(0, le_us)
                };
                let _ = writeln!(
                    out,
                    "slipway_proxy_request_duration_seconds_bucket{{version=\"{v}\",le=\"{le}\"}} {n}"
                );
            }
            #[expect(
                clippy::cast_precision_loss,
                reason = "a latency sum in seconds does not need 53+ bits"
            )]
            let sum = h.mean() * h.len() as f64 / 1e6;
            let _ = writeln!(
                out,
                "slipway_proxy_request_duration_seconds_bucket{{version=\"{v}\",le=\"+Inf\"}} {count}\n\
                 slipway_proxy_request_duration_seconds_sum{{version=\"{v}\"}} {sum}\n\
                 slipway_proxy_request_duration_seconds_count{{version=\"{v}\"}} {count}",
                count = h.len()
            );
        }
        out
    }
}

/// Counts one dispatched request as in flight until dropped (when its response body is
/// finished or abandoned), so a rollback can wait for the canary to drain.
#[derive(Debug)]
pub(crate) struct InFlight {
    metrics: std::sync::Arc<Metrics>,
    version: Version,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics
            .of(self.version)
            .in_flight
            .fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_deltas_agree() {
        let metrics = Metrics::new(4);
        for ms in 1..=10 {
            metrics.record(
                Version::Canary,
                Outcome::Status(200),
                Duration::from_millis(ms),
            );
        }
        let before = metrics.snapshot(10);
        let first = metrics.take_window(10);
        assert_eq!(first.canary.stats.requests, 10);
        assert_eq!(
            first.canary.latency_samples_us.len(),
            4,
            "bounded reservoir"
        );
        metrics.record(
            Version::Canary,
            Outcome::Status(503),
            Duration::from_millis(7),
        );
        metrics.record(
            Version::Canary,
            Outcome::ProxyError,
            Duration::from_millis(1),
        );
        metrics.record(
            Version::Stable,
            Outcome::Status(404),
            Duration::from_millis(1),
        );
        let delta = metrics.snapshot(10).since(&before);
        let second = metrics.take_window(10);
        for canary in [&delta.canary, &second.canary.stats] {
            assert_eq!(canary.requests, 2);
            assert_eq!(canary.errors(), 2);
            assert_eq!(canary.error_rate(), Some(1.0));
            assert_eq!(canary.latency_us.len(), 2);
        }
        assert_eq!(second.canary.latency_samples_us, vec![7000, 1000]);
        assert_eq!(second.stable.stats.status_4xx(), 1);
        assert_eq!(second.stable.stats.error_rate(), Some(0.0));
        assert_eq!(metrics.take_window(10).canary.stats.error_rate(), None);
    }

    #[test]
    fn prometheus_text_has_every_version() {
        let metrics = Metrics::new(16);
        metrics.record(
            Version::Stable,
            Outcome::Status(200),
            Duration::from_micros(300),
        );
        let text = metrics.render_prometheus(25);
        assert!(text.contains("slipway_proxy_canary_weight 25"));
        assert!(text.contains("slipway_proxy_requests_total{version=\"stable\",class=\"2xx\"} 1"));
        assert!(text.contains("slipway_proxy_requests_total{version=\"canary\",class=\"2xx\"} 0"));
        assert!(text.contains(
            "slipway_proxy_request_duration_seconds_bucket{version=\"stable\",le=\"0.0005\"} 1"
        ));
        assert!(
            text.contains("slipway_proxy_request_duration_seconds_count{version=\"canary\"} 0")
        );
    }
}
