//! Judging a canary: measurements → metric verdicts → an analysis phase.
//!
//! Pure functions, so every rule is unit-tested without traffic. The vocabulary is Argo
//! Rollouts' (Successful / Failed / Error / Inconclusive, failure_limit,
//! inconclusive_limit, consecutive_error_limit), with the lessons of its open issues
//! applied: an empty or NaN result is never a pass (argo-rollouts #180, #1466), and too
//! little traffic is an explicit *insufficient data* Inconclusive, never a pass.
//!
//! Thresholds judge the canary's **own** traffic — an error rate diluted by stable traffic
//! would let a canary at 5% weight fail every request and still look healthy. The
//! canary-vs-stable comparison is a one-sided Mann-Whitney U test on latency samples from
//! the same window (as Kayenta does): "is the canary slower than stable?".
//!
//! The builtin `error-rate` is judged as a proportion, not a raw ratio: it fails only when
//! the counts make it confident (the metric's `confidence`, default
//! [`DEFAULT_CONFIDENCE`]) that the canary's *true* error rate is above `max` (below
//! `min`) — a one-sided exact binomial test ([`binomial_p_greater`], [`binomial_p_less`]),
//! on the window and on the analysis's accumulated counts ([`AnalysisState::canary`],
//! cleared by a failed measurement so one bad stretch is counted once).
//! Why: a raw `errors/requests > max` over a window of 50 requests fires now and then on a
//! healthy canary (at a 1 % true rate, 3 errors of 50 — "6 %" — happen 1.4 % of the time),
//! and each such window is a rollback with `failure_limit: 0`. Argo Rollouts and Flagger
//! judge the raw ratio and leave the noise to `failureLimit`/`threshold` counts; Kayenta
//! judges with a statistical test, as here. A hard failure (every request an error) still
//! fails on its first window of `min_samples` (p = max^n), and the accumulated counts
//! catch a moderate rate (10 % against 5 %) a single short window cannot yet prove.
//!
//! The test judges at most [`MAX_COMPARE_SAMPLES`] samples per side. A side with more is
//! reduced by reservoir sampling (Algorithm R, [`reservoir`]) with a fixed seed: every
//! sample has the same chance to be judged whatever its position or size, so no part of a
//! distribution (a late regression, a slow tail) is systematically left out, and the same
//! samples always give the same verdict. What was used is reported with every verdict
//! ([`Sampled`]).

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::spec::{AnalysisTemplate, Comparison, Metric};

/// Default measurement interval for the builtin provider.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
/// Default minimum samples per measurement.
pub const DEFAULT_MIN_SAMPLES: u64 = 50;
/// Default confidence of a comparison.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
/// Default consecutive provider errors tolerated (Argo's default).
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;
/// Most samples per side the Mann-Whitney test judges; more are reservoir-sampled down to
/// this. Why a cap at all: statrs checks comparability of every pair (O(n²)), so 1,500 per
/// side (3,000 in all, 4.5 million comparisons) keeps one measurement in milliseconds,
/// while a uniform sample of 1,500 a side still detects a shift of a tenth of a standard
/// deviation about 85 % of the time at α = 0.05 (normal approximation of its power).
pub const MAX_COMPARE_SAMPLES: usize = 1_500;
/// Seed of the reservoir sampler: fixed, so the same samples always give the same verdict
/// (a judgement re-run from the journal or a stored baseline repeats exactly).
pub const SAMPLE_SEED: u64 = 0x736c_6970_7761_7931;

/// How the samples a comparison judged were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleMethod {
    /// Every sample of both sides.
    All,
    /// A uniform random sample of at most `cap` per side (Algorithm R, seeded), because a
    /// side had more (in the proxy's window, or here).
    Reservoir,
}

/// What a comparison judged: the sampling method and the sizes, so a reader can tell how
/// much of each distribution the p-value rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampled {
    /// `all` or `reservoir`.
    pub method: SampleMethod,
    /// Most samples per side the test uses ([`MAX_COMPARE_SAMPLES`]).
    pub cap: usize,
    /// The sampler's seed ([`SAMPLE_SEED`]).
    pub seed: u64,
    /// Latencies the canary side had (its requests in the window).
    pub n_canary: u64,
    /// Latencies the stable (or baseline) side had.
    pub n_stable: u64,
    /// Canary samples the test judged.
    pub used_canary: usize,
    /// Stable samples the test judged.
    pub used_stable: usize,
}

impl Sampled {
    fn new(n_canary: u64, n_stable: u64, used_canary: usize, used_stable: usize) -> Self {
        let mut s = Self {
            method: SampleMethod::All,
            cap: MAX_COMPARE_SAMPLES,
            seed: SAMPLE_SEED,
            n_canary,
            n_stable,
            used_canary,
            used_stable,
        };
        s.settle();
        s
    }

    /// `reservoir` as soon as either side judged fewer samples than it had.
    fn settle(&mut self) {
        let short = |used: usize, n: u64| u64::try_from(used).map_or(true, |u| u < n);
        self.method =
            if short(self.used_canary, self.n_canary) || short(self.used_stable, self.n_stable) {
                SampleMethod::Reservoir
            } else {
                SampleMethod::All
            };
    }

    /// "1500 of 4210 canary, 1500 of 38000 stable (uniform reservoir sample)".
    pub fn describe(&self) -> String {
        let how = match self.method {
            SampleMethod::All => "all samples".to_owned(),
            SampleMethod::Reservoir => format!(
                "uniform reservoir sample, at most {} per side, seed {:#x}",
                self.cap, self.seed
            ),
        };
        format!(
            "{} of {} canary, {} of {} stable ({how})",
            self.used_canary, self.n_canary, self.used_stable, self.n_stable
        )
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny generator whose output is fixed by its
/// definition. Why not `rand`: its `seed_from_u64` and range sampling may change values
/// between releases, which would change verdicts re-derived from stored samples.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias, at most n / 2^64, is far below
    /// anything a test on a few thousand samples could notice).
    fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next()) * u128::from(n);
        // The high 64 bits of a product of two u64 fit in a u64.
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

/// The finite values of `samples`, reduced to a uniform random sample of at most `cap` by
/// reservoir sampling (Algorithm R, Vitter 1985) seeded with `seed`: each value is kept
/// with probability `cap / n` whatever its position, so neither the order of the input
/// (arrival, or sorted) nor a change late in it biases the sample. Deterministic given the
/// seed. Non-finite values (never a latency) are dropped first.
pub fn reservoir(samples: &[f64], cap: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed);
    let mut kept = Vec::with_capacity(cap.min(samples.len()));
    let mut seen: u64 = 0;
    for &x in samples.iter().filter(|x| x.is_finite()) {
        seen += 1;
        if kept.len() < cap {
            kept.push(x);
        } else if cap > 0
            && let Ok(j) = usize::try_from(rng.below(seen))
            && let Some(slot) = kept.get_mut(j)
        {
            *slot = x;
        }
    }
    kept
}

/// The one-sided Mann-Whitney U p-value ("`canary` is stochastically greater than
/// `stable`"), asymptotic with continuity and tie correction — scipy's
/// `mannwhitneyu(canary, stable, alternative='greater', method='asymptotic')` — on exactly
/// these samples (no sampling: [`compare`] samples first). `None` when it cannot be computed
/// (fewer than one sample a side, or a non-finite value).
pub fn mann_whitney_greater(canary: &[f64], stable: &[f64]) -> Option<f64> {
    use statrs::stats_tests::Alternative;
    use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};
    if canary.is_empty() || stable.is_empty() || !canary.iter().chain(stable).all(|x| x.is_finite())
    {
        return None;
    }
    // The asymptotic method handles ties (latencies are quantised) and large samples.
    mannwhitneyu(
        canary,
        stable,
        MannWhitneyUMethod::AsymptoticInclContinuityCorrection,
        Alternative::Greater,
    )
    .ok()
    .map(|(_, p)| p)
    .filter(|p| p.is_finite())
}

/// Requests and errors of the canary's own traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests completed.
    pub requests: u64,
    /// Of which errors (5xx and proxy-level failures).
    pub errors: u64,
}

impl Counts {
    /// The sum of two counts (saturating: a counter never wraps into a small number).
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            requests: self.requests.saturating_add(other.requests),
            errors: self.errors.saturating_add(other.errors),
        }
    }

    fn of(v: &VersionWindow) -> Self {
        Self {
            requests: v.requests,
            errors: v.errors.min(v.requests),
        }
    }

    fn describe(self) -> String {
        format!("{} errors of {} requests", self.errors, self.requests)
    }
}

/// One-sided exact binomial test, alternative "the true rate is above `rate`": the p-value
/// P(X ≥ `errors`) for X ~ Binomial(`requests`, `rate`) — scipy's
/// `binomtest(errors, requests, rate, alternative='greater').pvalue`. `None` when `rate`
/// is not a probability or `errors > requests`.
pub fn binomial_p_greater(errors: u64, requests: u64, rate: f64) -> Option<f64> {
    use statrs::distribution::{Binomial, DiscreteCDF};
    if errors > requests || !(0.0..=1.0).contains(&rate) {
        return None;
    }
    if errors == 0 {
        return Some(1.0);
    }
    // The edges exactly, rather than through the incomplete beta function.
    if rate == 0.0 {
        return Some(0.0);
    }
    if rate == 1.0 {
        return Some(1.0);
    }
    let b = Binomial::new(rate, requests).ok()?;
    Some(b.sf(errors - 1).clamp(0.0, 1.0))
}

/// One-sided exact binomial test, alternative "the true rate is below `rate`": the p-value
/// P(X ≤ `errors`) for X ~ Binomial(`requests`, `rate`) — scipy's
/// `binomtest(errors, requests, rate, alternative='less').pvalue`.
pub fn binomial_p_less(errors: u64, requests: u64, rate: f64) -> Option<f64> {
    use statrs::distribution::{Binomial, DiscreteCDF};
    if errors > requests || !(0.0..=1.0).contains(&rate) {
        return None;
    }
    if errors == requests || rate == 0.0 {
        return Some(1.0);
    }
    if rate == 1.0 {
        return Some(0.0);
    }
    let b = Binomial::new(rate, requests).ok()?;
    Some(b.cdf(errors).clamp(0.0, 1.0))
}

/// Phase of a metric, a measurement or a whole analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Still measuring; no limit reached.
    Running,
    /// Passed.
    Successful,
    /// A threshold was breached.
    Failed,
    /// The provider could not measure.
    Error,
    /// Not enough information to decide (too little traffic, no data).
    Inconclusive,
}

/// What one version served in one window, as the builtin proxy measures it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionWindow {
    /// Requests completed.
    pub requests: u64,
    /// 5xx responses and proxy-level failures.
    pub errors: u64,
    /// Latency percentiles in milliseconds (`None` when there were no requests).
    pub p50_ms: Option<f64>,
    /// p95, ms.
    pub p95_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Length of the window in seconds.
    pub seconds: f64,
    /// Raw latency samples in ms (bounded), for comparisons.
    pub samples_ms: Vec<f64>,
}

/// Canary and stable over the same window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The canary's own traffic.
    pub canary: VersionWindow,
    /// The stable version's traffic.
    pub stable: VersionWindow,
    /// Requests a match route sent to the canary in the window: in neither of the above,
    /// so they cannot move the verdict, but kept for the journal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub matched_requests: u64,
    /// Those of them that failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub matched_errors: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The verdict on one metric in one measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    /// Metric name.
    pub metric: String,
    /// Verdict.
    pub phase: Phase,
    /// Measured value (error rate as a fraction, latency in ms, p-value for comparisons).
    pub value: Option<f64>,
    /// The threshold, as written in the spec.
    pub threshold: String,
    /// A sentence a person can read in a log.
    pub detail: String,
    /// The query an external provider was sent, placeholders filled (never credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// For a distribution comparison: which samples the test judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
}

/// One measurement: every metric of the template at one point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Per-metric verdicts.
    pub results: Vec<MetricResult>,
    /// The worst of them (Failed > Error > Inconclusive > Successful).
    pub phase: Phase,
}

/// Running totals of an analysis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisState {
    /// Measurements taken.
    pub measurements: u32,
    /// Failed measurements.
    pub failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Consecutive Error measurements.
    pub consecutive_errors: u32,
    /// The last measurement.
    pub last: Option<Measurement>,
    /// The canary's own requests and errors over the windows measured since the analysis
    /// began or last failed a measurement: what the builtin `error-rate` judges beside the
    /// window itself ([`AnalysisState::observe`]).
    #[serde(default)]
    pub canary: Counts,
}

impl AnalysisState {
    /// After [`record`]: add a judged window's canary traffic to the accumulated counts
    /// — or, when its measurement failed, clear them. Why clear: that evidence has been
    /// counted once against `failure_limit`, and a next failure must rest on new traffic
    /// (otherwise one bad window would fail every measurement after it).
    pub fn observe(&mut self, w: &Window) {
        self.canary = if self.last.as_ref().is_some_and(|m| m.phase == Phase::Failed) {
            Counts::default()
        } else {
            self.canary.plus(Counts::of(&w.canary))
        };
    }
}

/// The limits of a template with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Measurement interval, ms.
    pub interval_ms: u64,
    /// Minimum samples.
    pub min_samples: u64,
    /// Failed measurements tolerated.
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated.
    pub inconclusive_limit: u32,
    /// Consecutive errors tolerated.
    pub consecutive_error_limit: u32,
}

impl Limits {
    /// Limits of a template.
    pub fn of(t: &AnalysisTemplate) -> Self {
        Self {
            interval_ms: t
                .interval
                .as_ref()
                .and_then(|i| i.get().ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
                .unwrap_or(DEFAULT_INTERVAL_MS),
            min_samples: t.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES),
            failure_limit: t.failure_limit.unwrap_or(0),
            inconclusive_limit: t.inconclusive_limit.unwrap_or(0),
            consecutive_error_limit: t
                .consecutive_error_limit
                .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT),
        }
    }
}

/// Parse a threshold: a number, or a duration for latencies (→ ms). Bare numbers on
/// latency metrics are milliseconds, the unit every latency here is reported in.
pub fn threshold_value(metric: &Metric, text: &str) -> Option<f64> {
    if let Ok(n) = text.parse::<f64>() {
        return n.is_finite().then_some(n);
    }
    if metric.name.contains("latency") {
        return parse_duration(text).ok().map(|d| d.as_secs_f64() * 1000.0);
    }
    None
}

fn phase_rank(p: Phase) -> u8 {
    match p {
        Phase::Failed => 5,
        Phase::Error => 4,
        Phase::Inconclusive => 3,
        Phase::Running | Phase::Pending => 2,
        Phase::Successful => 1,
    }
}

/// Judge a value against a metric's min/max. `None` or NaN is Inconclusive, never a pass.
pub fn judge_value(metric: &Metric, value: Option<f64>, unit: &str) -> MetricResult {
    let threshold = threshold_text(metric);
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return MetricResult {
            metric: metric.name.clone(),
            phase: Phase::Inconclusive,
            value: None,
            threshold,
            detail: "no data (empty or NaN result): not a pass".into(),
            query: None,
            sampled: None,
        };
    };
    let max = metric
        .max
        .as_ref()
        .and_then(|m| threshold_value(metric, m.as_str()));
    let min = metric
        .min
        .as_ref()
        .and_then(|m| threshold_value(metric, m.as_str()));
    let (phase, detail) = match (max, min) {
        (Some(mx), _) if v > mx => (
            Phase::Failed,
            format!(
                "{} = {} above max {}",
                metric.name,
                fmt(v, unit),
                fmt(mx, unit)
            ),
        ),
        (_, Some(mn)) if v < mn => (
            Phase::Failed,
            format!(
                "{} = {} below min {}",
                metric.name,
                fmt(v, unit),
                fmt(mn, unit)
            ),
        ),
        _ => (
            Phase::Successful,
            format!("{} = {} within {threshold}", metric.name, fmt(v, unit)),
        ),
    };
    MetricResult {
        metric: metric.name.clone(),
        phase,
        value: Some(v),
        threshold,
        detail,
        query: None,
        sampled: None,
    }
}

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "%" => format!("{:.2}%", v * 100.0),
        "ms" => format!("{v:.1}ms"),
        _ => format!("{v:.4}"),
    }
}

fn threshold_text(m: &Metric) -> String {
    let mut parts = Vec::new();
    if let Some(x) = &m.max {
        parts.push(format!("max {}", x.as_str()));
    }
    if let Some(x) = &m.min {
        parts.push(format!("min {}", x.as_str()));
    }
    if m.compare.is_some() {
        parts.push(format!(
            "canary not slower than stable at {}",
            m.confidence.unwrap_or(DEFAULT_CONFIDENCE)
        ));
    }
    parts.join(", ")
}

/// Measure one builtin metric on a window alone (no earlier windows of the analysis).
pub fn measure_builtin(metric: &Metric, w: &Window, limits: &Limits) -> MetricResult {
    measure_builtin_over(metric, w, Counts::default(), limits)
}

/// Measure one builtin metric on a window; `before` is the canary's traffic in the
/// analysis's earlier windows ([`AnalysisState::canary`]), which `error-rate` also judges.
pub fn measure_builtin_over(
    metric: &Metric,
    w: &Window,
    before: Counts,
    limits: &Limits,
) -> MetricResult {
    let c = &w.canary;
    let insufficient = |have: u64, who: &str| MetricResult {
        metric: metric.name.clone(),
        phase: Phase::Inconclusive,
        value: None,
        threshold: threshold_text(metric),
        detail: format!(
            "insufficient data: {who} served {have} requests, fewer than min_samples {}",
            limits.min_samples
        ),
        query: None,
        sampled: None,
    };
    match metric.name.as_str() {
        "request-rate" => {
            let rate = (c.seconds > 0.0).then(|| c.requests as f64 / c.seconds);
            judge_value(metric, rate, "")
        }
        _ if c.requests < limits.min_samples => insufficient(c.requests, "the canary"),
        "error-rate" => judge_error_rate(metric, Counts::of(c), before),
        "p50-latency" => judge_value(metric, c.p50_ms, "ms"),
        "p95-latency" => judge_value(metric, c.p95_ms, "ms"),
        "p99-latency" => judge_value(metric, c.p99_ms, "ms"),
        "latency-vs-stable" => {
            if w.stable.requests < limits.min_samples {
                return insufficient(w.stable.requests, "stable");
            }
            let mut r = compare(metric, &c.samples_ms, &w.stable.samples_ms);
            // The proxy itself keeps a uniform reservoir of each window's latencies; the
            // population the sample stands for is every request of the window.
            if let Some(s) = r.sampled.as_mut() {
                let before = s.describe();
                s.n_canary = s.n_canary.max(c.requests);
                s.n_stable = s.n_stable.max(w.stable.requests);
                s.settle();
                r.detail = r.detail.replace(&before, &s.describe());
            }
            r
        }
        other => MetricResult {
            metric: other.to_owned(),
            phase: Phase::Error,
            value: None,
            threshold: threshold_text(metric),
            detail: format!("the builtin provider has no metric `{other}`"),
            query: None,
            sampled: None,
        },
    }
}

/// The builtin `error-rate` of a window with requests: Failed only when a one-sided exact
/// binomial test is confident (at the metric's `confidence`) that the true rate is above
/// `max` (or below `min`), on the window or on the analysis's counts so far (`before` plus
/// the window). `value` is the window's observed rate; `detail` names what was tested.
fn judge_error_rate(metric: &Metric, window: Counts, before: Counts) -> MetricResult {
    if window.requests == 0 {
        return judge_value(metric, None, "%");
    }
    let confidence = metric.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    let alpha = 1.0 - confidence;
    let rate = |c: Counts| c.errors as f64 / c.requests as f64;
    let bound = |b: &Option<crate::spec::Scalar>| {
        b.as_ref()
            .and_then(|x| threshold_value(metric, x.as_str()))
            .map(|x| x.clamp(0.0, 1.0))
    };
    let total = before.plus(window);
    // The window alone, then (once earlier windows exist) everything the analysis saw.
    let mut scopes = vec![("in this window", window)];
    if before.requests > 0 {
        scopes.push(("over the analysis so far", total));
    }
    let mut tested = Vec::new();
    let mut failed = None;
    type Test = fn(u64, u64, f64) -> Option<f64>;
    let sides: [(Option<f64>, &str, &str, Test); 2] = [
        (bound(&metric.max), "above max", "above", binomial_p_greater),
        (bound(&metric.min), "below min", "below", binomial_p_less),
    ];
    for (limit, words, side, test) in sides {
        let Some(limit) = limit else { continue };
        for (scope, c) in &scopes {
            let Some(p) = test(c.errors, c.requests, limit) else {
                continue;
            };
            tested.push(format!("{scope} {}: p = {p:.3e}", c.describe()));
            if p < alpha && failed.is_none() {
                failed = Some(format!(
                    "{} = {} {words} {} {scope} ({}; one-sided exact binomial test that the true rate is {side} {}: p = {p:.3e} < α = {alpha:.3}, confidence {confidence})",
                    metric.name,
                    fmt(rate(*c), "%"),
                    fmt(limit, "%"),
                    c.describe(),
                    fmt(limit, "%"),
                ));
            }
        }
    }
    let threshold = threshold_text(metric);
    let (phase, detail) = match failed {
        Some(d) => (Phase::Failed, d),
        None => (
            Phase::Successful,
            format!(
                "{} = {} within {threshold}: not confident at {confidence} that the true rate is outside it (one-sided exact binomial test, α = {alpha:.3}; {})",
                metric.name,
                fmt(rate(window), "%"),
                tested.join("; ")
            ),
        ),
    };
    MetricResult {
        metric: metric.name.clone(),
        phase,
        value: Some(rate(window)),
        threshold,
        detail,
        query: None,
        sampled: None,
    }
}

/// One-sided Mann-Whitney U: is the canary's latency stochastically greater than stable's?
///
/// Each side is reduced to a uniform sample of at most [`MAX_COMPARE_SAMPLES`]
/// ([`reservoir`]); the result's `sampled` says how many of how many were judged.
pub fn compare(metric: &Metric, canary: &[f64], stable: &[f64]) -> MetricResult {
    let confidence = metric.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    let finite = |v: &[f64]| v.iter().filter(|x| x.is_finite()).count() as u64;
    let (c, s) = (
        reservoir(canary, MAX_COMPARE_SAMPLES, SAMPLE_SEED),
        reservoir(stable, MAX_COMPARE_SAMPLES, SAMPLE_SEED),
    );
    let sampled = Sampled::new(finite(canary), finite(stable), c.len(), s.len());
    let threshold = threshold_text(metric);
    if c.len() < 2 || s.len() < 2 {
        return MetricResult {
            metric: metric.name.clone(),
            phase: Phase::Inconclusive,
            value: None,
            threshold,
            detail: format!(
                "insufficient data: {} canary and {} stable latency samples",
                c.len(),
                s.len()
            ),
            query: None,
            sampled: Some(sampled),
        };
    }
    let Some(Comparison::MannWhitney) = metric.compare else {
        return judge_value(metric, None, "");
    };
    match mann_whitney_greater(&c, &s) {
        Some(p) => {
            let alpha = 1.0 - confidence;
            let median = |v: &[f64]| {
                let mut v = v.to_vec();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (mc, ms) = (median(&c), median(&s));
            let (phase, verdict) = if p < alpha {
                (Phase::Failed, "canary is slower than stable")
            } else {
                (Phase::Successful, "no evidence the canary is slower")
            };
            MetricResult {
                metric: metric.name.clone(),
                phase,
                value: Some(p),
                threshold,
                detail: format!(
                    "{verdict}: p = {p:.4} (α = {alpha:.3}); median canary {mc:.1}ms vs stable {ms:.1}ms; {}",
                    sampled.describe()
                ),
                query: None,
                sampled: Some(sampled),
            }
        }
        None => MetricResult {
            metric: metric.name.clone(),
            phase: Phase::Error,
            value: None,
            threshold,
            detail: "the Mann-Whitney test could not be computed on these samples".into(),
            query: None,
            sampled: Some(sampled),
        },
    }
}

/// What an external provider (Prometheus, HTTP JSON) answered for one metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A number.
    Value(f64),
    /// Nothing to judge (no sample, null, NaN): why, in words.
    NoData(String),
    /// The provider could not answer (unreachable, refused the query, unreadable answer).
    Error(String),
}

/// Judge what an external provider answered. No data is Inconclusive *insufficient data*,
/// never a pass; an error is Error (counted by `consecutive_error_limit`); `source` names
/// the provider in every detail, `query` is kept with the verdict.
pub fn judge_reading(metric: &Metric, source: &str, query: &str, reading: Reading) -> MetricResult {
    let mut r = match reading {
        Reading::Value(v) if v.is_finite() => judge_value(metric, Some(v), ""),
        Reading::Value(_) => MetricResult {
            detail: format!(
                "insufficient data: {source} returned NaN for `{}`",
                metric.name
            ),
            ..judge_value(metric, None, "")
        },
        Reading::NoData(why) => MetricResult {
            detail: format!("insufficient data: {source}: {why}"),
            ..judge_value(metric, None, "")
        },
        Reading::Error(e) => MetricResult {
            phase: Phase::Error,
            detail: format!("{} could not be measured: {source}: {e}", metric.name),
            ..judge_value(metric, None, "")
        },
    };
    if r.phase == Phase::Successful || r.phase == Phase::Failed {
        r.detail = format!("{} ({source})", r.detail);
    }
    r.query = Some(query.to_owned());
    r
}

/// Combine metric results into a measurement.
pub fn combine(results: Vec<MetricResult>) -> Measurement {
    let phase = results
        .iter()
        .map(|r| r.phase)
        .max_by_key(|p| phase_rank(*p))
        .unwrap_or(Phase::Inconclusive);
    Measurement { results, phase }
}

/// Record a measurement and decide the analysis phase.
///
/// `Running` means "keep measuring"; the caller ends a timed analysis as Successful when
/// its duration is over and the state is still Running *and* at least one measurement
/// was Successful (an analysis that only ever saw insufficient data is Inconclusive).
pub fn record(state: &mut AnalysisState, m: Measurement, limits: &Limits) -> Phase {
    state.measurements += 1;
    match m.phase {
        Phase::Failed => {
            state.failed += 1;
            state.consecutive_errors = 0;
        }
        Phase::Inconclusive => {
            state.inconclusive += 1;
            state.consecutive_errors = 0;
        }
        Phase::Error => state.consecutive_errors += 1,
        _ => state.consecutive_errors = 0,
    }
    state.last = Some(m);
    if state.failed > limits.failure_limit {
        Phase::Failed
    } else if state.consecutive_errors > limits.consecutive_error_limit {
        Phase::Error
    } else if state.inconclusive > limits.inconclusive_limit {
        Phase::Inconclusive
    } else {
        Phase::Running
    }
}

/// The phase of a timed analysis whose duration has ended while still Running.
pub fn conclude(state: &AnalysisState) -> Phase {
    let successes = state
        .measurements
        .saturating_sub(state.failed + state.inconclusive + state.consecutive_errors);
    if successes == 0 {
        Phase::Inconclusive
    } else {
        Phase::Successful
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Scalar;

    fn metric(name: &str, max: Option<&str>) -> Metric {
        Metric {
            name: name.into(),
            provider: "builtin".into(),
            query: None,
            max: max.map(|m| Scalar(m.into())),
            min: None,
            compare: (name == "latency-vs-stable").then_some(Comparison::MannWhitney),
            confidence: Some(0.98),
        }
    }

    fn limits() -> Limits {
        Limits {
            interval_ms: 1000,
            min_samples: 50,
            failure_limit: 1,
            inconclusive_limit: 2,
            consecutive_error_limit: 4,
        }
    }

    fn version(requests: u64, errors: u64, latency: f64) -> VersionWindow {
        VersionWindow {
            requests,
            errors,
            p50_ms: Some(latency),
            p95_ms: Some(latency * 1.5),
            p99_ms: Some(latency * 2.0),
            seconds: 1.0,
            samples_ms: (0..requests)
                .map(|i| latency + (i % 7) as f64 * 0.1)
                .collect(),
        }
    }

    #[test]
    fn error_rate_is_judged_on_the_canary_own_traffic() {
        // 10% weight: 100 canary requests, all failing; 900 stable, all fine. Diluted over
        // all traffic the error rate would be 10%; on the canary's own traffic it is 100%.
        let w = Window {
            canary: version(100, 100, 5.0),
            stable: version(900, 0, 5.0),
            ..Window::default()
        };
        let r = measure_builtin(&metric("error-rate", Some("0.01")), &w, &limits());
        assert_eq!(r.phase, Phase::Failed);
        assert_eq!(r.value, Some(1.0));
    }

    fn counts(requests: u64, errors: u64) -> Window {
        Window {
            canary: VersionWindow {
                requests,
                errors,
                seconds: 1.0,
                ..VersionWindow::default()
            },
            ..Window::default()
        }
    }

    #[test]
    fn one_unlucky_window_is_not_a_failure_but_a_confident_one_is() {
        let m = Metric {
            confidence: None,
            ..metric("error-rate", Some("0.05"))
        };
        // 3 of 50 (6 %) happens 1.4 % of the time at a true 1 %: the raw ratio failed it.
        let r = measure_builtin(&m, &counts(50, 3), &limits());
        assert_eq!(r.phase, Phase::Successful, "{}", r.detail);
        assert_eq!(r.value, Some(0.06));
        assert!(r.detail.contains("3 errors of 50 requests"), "{}", r.detail);
        assert!(r.detail.contains("p = 4.595e-1"), "{}", r.detail);
        // 6 of 50: P(X ≥ 6 | 50, 5 %) = 0.038 < 0.05.
        let r = measure_builtin(&m, &counts(50, 6), &limits());
        assert_eq!(r.phase, Phase::Failed, "{}", r.detail);
        assert!(
            r.detail.contains("above max 5.00% in this window"),
            "{}",
            r.detail
        );
        assert!(
            r.detail.contains("p = 3.778e-2 < α = 0.050"),
            "{}",
            r.detail
        );
        // A hard failure fails on its first window of min_samples.
        let r = measure_builtin(&m, &counts(50, 50), &limits());
        assert_eq!(r.phase, Phase::Failed, "{}", r.detail);
        assert_eq!(r.value, Some(1.0));
    }

    #[test]
    fn the_analysis_counts_so_far_prove_what_one_window_cannot() {
        let m = metric("error-rate", Some("0.05"));
        // 10 % in every window: 10 of 100 is not proof at 0.98, 50 of 500 is.
        let w = counts(100, 10);
        assert_eq!(measure_builtin(&m, &w, &limits()).phase, Phase::Successful);
        let before = Counts {
            requests: 400,
            errors: 40,
        };
        let r = measure_builtin_over(&m, &w, before, &limits());
        assert_eq!(r.phase, Phase::Failed, "{}", r.detail);
        assert!(
            r.detail
                .contains("10.00% above max 5.00% over the analysis so far (50 errors of 500"),
            "{}",
            r.detail
        );
        assert_eq!(r.value, Some(0.1), "the value stays the window's rate");
        // The state accumulates what the controller measured, until a failed measurement.
        let mut s = AnalysisState::default();
        let l = limits();
        let ok = || combine(vec![measure_builtin(&m, &counts(1, 0), &l)]);
        record(&mut s, ok(), &l);
        s.observe(&w);
        record(&mut s, ok(), &l);
        s.observe(&counts(50, 60)); // a counter glitch: never more errors than requests
        assert_eq!(
            s.canary,
            Counts {
                requests: 150,
                errors: 60
            }
        );
        record(&mut s, combine(vec![r]), &l);
        s.observe(&w);
        assert_eq!(s.canary, Counts::default(), "spent on the failure");
    }

    #[test]
    fn a_min_is_judged_the_same_way() {
        let m = Metric {
            max: None,
            min: Some(Scalar("0.05".into())),
            ..metric("error-rate", None)
        };
        // P(X ≤ 0 | 100, 5 %) = 0.0059 < 0.02; P(X ≤ 2 | 100, 5 %) = 0.118.
        let r = measure_builtin(&m, &counts(100, 0), &limits());
        assert_eq!(r.phase, Phase::Failed, "{}", r.detail);
        assert!(r.detail.contains("below min 5.00%"), "{}", r.detail);
        let r = measure_builtin(&m, &counts(100, 2), &limits());
        assert_eq!(r.phase, Phase::Successful, "{}", r.detail);
    }

    #[test]
    fn binomial_p_values_at_the_edges() {
        assert_eq!(binomial_p_greater(0, 10, 0.3), Some(1.0));
        assert_eq!(binomial_p_greater(1, 10, 0.0), Some(0.0));
        assert_eq!(binomial_p_greater(10, 10, 1.0), Some(1.0));
        assert_eq!(binomial_p_less(10, 10, 0.3), Some(1.0));
        assert_eq!(binomial_p_less(0, 10, 1.0), Some(0.0));
        assert_eq!(binomial_p_greater(11, 10, 0.3), None);
        assert_eq!(binomial_p_less(1, 10, 1.5), None);
        assert_eq!(binomial_p_greater(1, 10, f64::NAN), None);
    }

    #[test]
    fn too_little_traffic_is_inconclusive_never_a_pass() {
        let w = Window {
            canary: version(10, 0, 5.0),
            stable: version(900, 0, 5.0),
            ..Window::default()
        };
        for m in ["error-rate", "p99-latency"] {
            let r = measure_builtin(&metric(m, Some("0.5")), &w, &limits());
            assert_eq!(r.phase, Phase::Inconclusive, "{m}");
            assert!(r.detail.contains("insufficient data"), "{}", r.detail);
        }
    }

    #[test]
    fn nan_and_empty_results_are_not_a_pass() {
        let m = metric("error-rate", Some("0.01"));
        assert_eq!(judge_value(&m, None, "").phase, Phase::Inconclusive);
        assert_eq!(
            judge_value(&m, Some(f64::NAN), "").phase,
            Phase::Inconclusive
        );
    }

    #[test]
    fn latency_thresholds_accept_durations() {
        let w = Window {
            canary: version(100, 0, 200.0),
            stable: version(100, 0, 5.0),
            ..Window::default()
        };
        let r = measure_builtin(&metric("p99-latency", Some("300ms")), &w, &limits());
        assert_eq!(r.phase, Phase::Failed, "{}", r.detail);
        let r = measure_builtin(&metric("p99-latency", Some("1s")), &w, &limits());
        assert_eq!(r.phase, Phase::Successful);
    }

    #[test]
    fn mann_whitney_flags_a_slower_canary_only() {
        let m = metric("latency-vs-stable", None);
        let slow = Window {
            canary: version(200, 0, 12.0),
            stable: version(200, 0, 10.0),
            ..Window::default()
        };
        assert_eq!(measure_builtin(&m, &slow, &limits()).phase, Phase::Failed);
        let same = Window {
            canary: version(200, 0, 10.0),
            stable: version(200, 0, 10.0),
            ..Window::default()
        };
        assert_eq!(
            measure_builtin(&m, &same, &limits()).phase,
            Phase::Successful
        );
        let faster = Window {
            canary: version(200, 0, 8.0),
            stable: version(200, 0, 10.0),
            ..Window::default()
        };
        assert_eq!(
            measure_builtin(&m, &faster, &limits()).phase,
            Phase::Successful
        );
    }

    #[test]
    fn limits_decide_the_analysis_phase() {
        let l = limits();
        let failed = || {
            combine(vec![judge_value(
                &metric("error-rate", Some("0.01")),
                Some(0.5),
                "%",
            )])
        };
        let ok = || {
            combine(vec![judge_value(
                &metric("error-rate", Some("0.01")),
                Some(0.0),
                "%",
            )])
        };
        let mut s = AnalysisState::default();
        assert_eq!(record(&mut s, failed(), &l), Phase::Running); // failure_limit 1 tolerates one
        assert_eq!(record(&mut s, ok(), &l), Phase::Running);
        assert_eq!(record(&mut s, failed(), &l), Phase::Failed);

        let inconclusive = || {
            combine(vec![judge_value(
                &metric("error-rate", Some("0.01")),
                None,
                "",
            )])
        };
        let mut s = AnalysisState::default();
        assert_eq!(record(&mut s, inconclusive(), &l), Phase::Running);
        assert_eq!(record(&mut s, inconclusive(), &l), Phase::Running);
        assert_eq!(record(&mut s, inconclusive(), &l), Phase::Inconclusive);
        assert_eq!(conclude(&s), Phase::Inconclusive);
    }

    #[test]
    fn a_failed_metric_dominates_the_measurement() {
        let m = combine(vec![
            judge_value(&metric("error-rate", Some("0.01")), Some(0.0), "%"),
            judge_value(&metric("p99-latency", Some("10")), None, "ms"),
            judge_value(&metric("p50-latency", Some("10")), Some(50.0), "ms"),
        ]);
        assert_eq!(m.phase, Phase::Failed);
    }

    /// `n` latencies of 10–14 ms in an order unrelated to their size.
    fn steady(n: usize, offset: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 10.0 + (((i + offset) * 7919) % 1000) as f64 * 0.004)
            .collect()
    }

    #[test]
    fn reservoir_keeps_everything_under_the_cap_and_is_deterministic() {
        let v = steady(100, 0);
        assert_eq!(reservoir(&v, 1500, SAMPLE_SEED), v);
        let big: Vec<f64> = (0..10_000).map(f64::from).collect();
        let a = reservoir(&big, 1500, SAMPLE_SEED);
        assert_eq!(a.len(), 1500);
        assert_eq!(
            a,
            reservoir(&big, 1500, SAMPLE_SEED),
            "same seed, same sample"
        );
        assert_ne!(a, reservoir(&big, 1500, 7), "another seed, another sample");
        let with_nan = [1.0, f64::NAN, 2.0, f64::INFINITY];
        assert_eq!(reservoir(&with_nan, 10, SAMPLE_SEED), vec![1.0, 2.0]);
    }

    #[test]
    fn reservoir_sample_of_sorted_input_is_spread_over_the_whole_range() {
        // Sorted input: a cut would keep the smallest 1,500. A uniform sample keeps about
        // 1,500 · k/10 from each tenth of the range.
        let big: Vec<f64> = (0..10_000).map(f64::from).collect();
        let kept = reservoir(&big, 1500, SAMPLE_SEED);
        for decile in 0..10 {
            let lo = f64::from(decile) * 1000.0;
            let n = kept
                .iter()
                .filter(|x| **x >= lo && **x < lo + 1000.0)
                .count();
            // Binomial(1500, 0.1): mean 150, sd 11.6; ±50 is over 4 sd.
            assert!((100..=200).contains(&n), "decile {decile}: {n} of 1500");
        }
    }

    #[test]
    fn a_regression_late_in_the_window_is_judged() {
        // 4,000 canary requests: the first 1,500 as fast as stable, the rest 2 ms slower.
        // Judging the first 1,500 would see no difference.
        let mut canary = steady(4000, 0);
        for x in canary.iter_mut().skip(1500) {
            *x += 2.0;
        }
        let stable = steady(4000, 3);
        let r = compare(&metric("latency-vs-stable", None), &canary, &stable);
        assert_eq!(r.phase, Phase::Failed, "{}", r.detail);
        let s = r.sampled.unwrap();
        assert_eq!(s.method, SampleMethod::Reservoir);
        assert_eq!((s.n_canary, s.used_canary), (4000, MAX_COMPARE_SAMPLES));
        assert!(r.detail.contains("1500 of 4000 canary"), "{}", r.detail);
    }

    #[test]
    fn sorted_sides_of_different_sizes_from_one_distribution_are_not_slower() {
        // Sorted, 2,000 vs 3,000 from the same distribution: the fastest 1,500 of each
        // would make the smaller side look slower.
        let mut canary = steady(2000, 1);
        let mut stable = steady(3000, 2);
        canary.sort_by(f64::total_cmp);
        stable.sort_by(f64::total_cmp);
        let r = compare(&metric("latency-vs-stable", None), &canary, &stable);
        assert_eq!(r.phase, Phase::Successful, "{}", r.detail);
    }

    #[test]
    fn the_window_population_is_reported_when_the_proxy_sampled() {
        let mut w = Window {
            canary: version(200, 0, 10.0),
            stable: version(200, 0, 10.0),
            ..Window::default()
        };
        // The proxy's reservoir kept 200 of 50,000 stable requests.
        w.stable.requests = 50_000;
        let r = measure_builtin(&metric("latency-vs-stable", None), &w, &limits());
        let s = r.sampled.unwrap();
        assert_eq!((s.n_stable, s.used_stable), (50_000, 200));
        assert_eq!((s.n_canary, s.used_canary), (200, 200));
        assert_eq!(s.method, SampleMethod::Reservoir);
        assert!(r.detail.contains("200 of 50000 stable"), "{}", r.detail);
    }
}
