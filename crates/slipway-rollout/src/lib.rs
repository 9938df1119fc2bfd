//! The progressive-delivery controller: drives one service's canary through its steps,
//! judges live analysis, and promotes or rolls back.
//!
//! The controller decides; the world is reached only through traits, implemented in
//! `slipway-providers`: [`Instances`] (start, probe and stop a version's instances),
//! [`TrafficRouter`] (pools and weights), [`MetricSource`] (a measurement window of
//! canary vs stable) and [`ExternalMetrics`] (Prometheus and HTTP JSON providers, asked
//! each interval and judged here like builtin metrics). Every decision is reported as a
//! [`RolloutEvent`] so the engine can journal it and the CLI can show it.
//!
//! Architecture invariant: no IO here besides the traits and timers; the same controller
//! runs against the built-in proxy, nginx or HAProxy.
//!
//! Rollback done right (the lessons of argo-rollouts #1838, #3888, #4841): the stable
//! pool is confirmed ready *before* any traffic moves back; the weight then goes to 0 in
//! one step; the canary drains before it is stopped; the reason names the metric, the
//! value and the threshold.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_model::analysis::{
    self, AnalysisState, Limits, Measurement, MetricResult, Phase, Reading, Window,
};
use slipway_model::duration::parse_duration;
pub use slipway_model::metric_query::QueryVars;
// The journal's vocabulary of a canary lives in the model, where the engine's typed step
// progress (and every reader of the journal) can name it.
pub use slipway_model::progress::{Instance, Intervention, RolloutEvent, WindowSummary};
use slipway_model::spec::{AnalysisStep, AnalysisTemplate, CanaryStep, Metric, OnFailure};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which side of the split an instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The version currently serving.
    Stable,
    /// The candidate.
    Canary,
}

/// Why the world refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// Instances could not be started or did not become ready.
    #[error("{0}")]
    Instances(String),
    /// The router refused a change.
    #[error("{0}")]
    Router(String),
}

/// Starting, probing and stopping instances.
pub trait Instances: Send + Sync {
    /// Start `replicas` instances of a version and wait until they are ready.
    fn start<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
        replicas: u32,
        role: Role,
    ) -> BoxFuture<'a, Result<Vec<Instance>, RolloutError>>;
    /// Whether every instance answers its readiness probe now.
    fn ready<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, bool>;
    /// Whether every instance runs and answers its service's `health` probe now; `Err`
    /// names the instance and what failed. A running instance of a service without a
    /// health probe is healthy (targets that cannot tell whether it runs say healthy).
    fn healthy<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), String>> {
        let _ = instances;
        Box::pin(async { Ok(()) })
    }
    /// Stop instances gracefully.
    fn stop<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), RolloutError>>;
}

/// A traffic router in front of a service.
pub trait TrafficRouter: Send + Sync {
    /// Replace both pools.
    fn set_pools<'a>(
        &'a self,
        stable: &'a [SocketAddr],
        canary: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>>;
    /// Send `weight`% of traffic to the canary.
    fn set_weight(&self, weight: u8) -> BoxFuture<'_, Result<(), RolloutError>>;
    /// The weight actually in force, or `None` when the router cannot tell.
    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>>;
    /// Requests still in flight to the canary (`None` when unknown).
    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>>;
    /// Arm the router's canary guard with a fresh sequential test for an analysis whose
    /// error rate may be at most `max_error_rate` (a router that judges every canary
    /// response and takes the canary's weight to 0 on the one that shows a hard failure),
    /// or disarm it with `None`. `Ok(false)`: this router has no guard (the interval
    /// analysis alone judges the canary).
    fn arm_guard(&self, max_error_rate: Option<f64>) -> BoxFuture<'_, Result<bool, RolloutError>> {
        let _ = max_error_rate;
        Box::pin(async { Ok(false) })
    }
    /// Stop the canary's match routes and session affinity (a rollback begins): from now
    /// on only the weight sends requests to the canary. A router without them has
    /// nothing to do.
    fn clear_routes(&self) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async { Ok(()) })
    }
    /// The armed guard's verdict once it tripped, as a sentence for the rollback reason.
    fn guard_trip(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
    /// Called at every analysis interval: when the router no longer holds what this
    /// router last set (pools, weights, match routes, affinity — e.g. HAProxy reloaded
    /// and forgot what its runtime API was told), set it again and say what was lost.
    /// `Ok(None)`: nothing was lost, or a router that cannot lose it.
    fn reconcile(&self) -> BoxFuture<'_, Result<Option<String>, RolloutError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Measurements of canary vs stable.
pub trait MetricSource: Send + Sync {
    /// What happened since the previous call.
    fn window(&self) -> BoxFuture<'_, Result<Window, String>>;
}

/// Metrics of external providers (Prometheus, HTTP JSON) for one canary.
///
/// Implemented in `slipway-providers` from the plan's `providers`; the controller decides
/// when to measure and judges what comes back, the implementation only asks.
pub trait ExternalMetrics: Send + Sync {
    /// Ask the provider of each metric now, all at once, each within its provider's
    /// timeout. One [`Asked`] per metric, in order.
    fn read<'a>(
        &'a self,
        metrics: &'a [&'a Metric],
        vars: &'a QueryVars,
    ) -> BoxFuture<'a, Vec<Asked>>;
}

/// What was asked of an external provider and what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    /// The provider, as the reason should name it (`prometheus \`prom\``).
    pub source: String,
    /// The query sent, placeholders filled, credentials masked.
    pub query: String,
    /// The answer.
    pub reading: Reading,
}

/// Where interventions come from (the store's control table, a channel, ...).
pub trait Interventions: Send + Sync {
    /// The pending intervention, if any (consumed).
    fn poll(&self) -> BoxFuture<'_, Option<Intervention>>;
}

/// No interventions ever.
pub struct NoInterventions;

impl Interventions for NoInterventions {
    fn poll(&self) -> BoxFuture<'_, Option<Intervention>> {
        Box::pin(async { None })
    }
}

/// Checks run against the candidate's own instances after they are ready and before the
/// router knows them, so a candidate that fails them never serves a request (the smoke
/// tests of a release). `Err` names what failed.
pub trait PreTraffic: Send + Sync {
    /// Check these candidate instances.
    fn check<'a>(&'a self, candidate: &'a [Instance]) -> BoxFuture<'a, Result<String, String>>;
}

/// The traffic numbers of a window, as the journal keeps them.
fn window_summary(w: &Window) -> WindowSummary {
    WindowSummary {
        canary_requests: w.canary.requests,
        canary_errors: w.canary.errors,
        canary_p99_ms: w.canary.p99_ms,
        stable_requests: w.stable.requests,
        stable_errors: w.stable.errors,
        stable_p99_ms: w.stable.p99_ms,
        seconds: w.canary.seconds.max(w.stable.seconds),
        matched_requests: w.matched_requests,
        matched_errors: w.matched_errors,
    }
}

/// How a canary ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The canary is the new stable.
    Promoted {
        /// Instances now serving.
        instances: Vec<Instance>,
    },
    /// Back on stable.
    RolledBack {
        /// Which metric, which value, which threshold — or the human who asked.
        reason: String,
        /// The measurements taken (kept as diagnostics).
        measurements: Vec<Measurement>,
    },
    /// Waiting for a human (inconclusive analysis, `pause: manual`, analysis `on_failure: pause`).
    Paused {
        /// Why.
        reason: String,
    },
}

/// One canary to drive.
pub struct Canary<'a> {
    /// Service.
    pub service: &'a str,
    /// Candidate version.
    pub version: &'a str,
    /// Instances of the candidate.
    pub replicas: u32,
    /// Instances currently serving (stable).
    pub stable: Vec<Instance>,
    /// The canary steps.
    pub steps: &'a [CanaryStep],
    /// Analysis running in the background for the whole canary.
    pub background: Option<&'a AnalysisStep>,
    /// Templates by name.
    pub templates: &'a BTreeMap<String, AnalysisTemplate>,
    /// Where to resume (0 for a fresh canary).
    pub start_step: usize,
    /// A canary already running, continued instead of started (a resume after its driver
    /// died): its instances and the weight it served at. It is not started or
    /// smoke-checked again; the pools are restored at that weight and the steps continue
    /// from `start_step`, an analysis there starting fresh.
    pub resume: Option<Resumed>,
    /// The environment (for the placeholders of external metric queries).
    pub environment: &'a str,
    /// Time still to soak at full weight after the last step, before the promotion (the
    /// plan's `soak` gate, less what an earlier driver already soaked); `None`: no soak.
    pub soak: Option<Duration>,
    /// What passing every step leads to.
    pub promotion: Promotion,
}

/// What a canary that passed its steps (or was promoted by a human) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Promotion {
    /// The canary takes all traffic and replaces the stable pool, which is stopped (one
    /// service's instances behind one router).
    #[default]
    Replace,
    /// Nothing is changed: the outcome is [`Outcome::Promoted`] with the router and the
    /// instances as the last step left them, for a caller that goes on its own way (a
    /// fleet canary: the next waves of hosts, the canary hosts back at their own weights).
    Hold,
}

/// A canary continued where an earlier driver left it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// Its running instances.
    pub instances: Vec<Instance>,
    /// The weight it served at.
    pub weight: u8,
}

/// The world the controller acts on.
pub struct World<'a> {
    /// Instances.
    pub instances: &'a dyn Instances,
    /// Router.
    pub router: &'a dyn TrafficRouter,
    /// Metrics.
    pub metrics: &'a dyn MetricSource,
    /// External metric providers (`None`: a template that uses one errors, never passes).
    pub external: Option<&'a dyn ExternalMetrics>,
    /// Human interventions.
    pub interventions: &'a dyn Interventions,
    /// Longest wait for the canary to drain after its weight went to 0.
    pub drain_timeout: Duration,
}

struct Judge<'a> {
    name: String,
    template: &'a AnalysisTemplate,
    limits: Limits,
    state: AnalysisState,
}

impl<'a> Judge<'a> {
    fn new(step: &AnalysisStep, templates: &'a BTreeMap<String, AnalysisTemplate>) -> Option<Self> {
        let template = templates.get(&step.template)?;
        Some(Self {
            name: step.template.clone(),
            template,
            limits: Limits::of(template),
            state: AnalysisState::default(),
        })
    }

    /// The `max` of the template's builtin error-rate metric: what the router's guard
    /// takes as the acceptable rate.
    fn guard_max(&self) -> Option<f64> {
        self.template
            .metrics
            .iter()
            .filter(|m| m.provider == "builtin" && m.name == "error-rate")
            .filter_map(|m| m.max.as_ref()?.0.parse::<f64>().ok())
            .reduce(f64::min)
    }

    /// Whether a failure pauses for a human instead of rolling back.
    fn pauses(&self) -> bool {
        self.template.on_failure == OnFailure::Pause
    }

    /// Whether the template has a metric of the router's window.
    fn uses_builtin(&self) -> bool {
        self.template
            .metrics
            .iter()
            .any(|m| m.provider == "builtin")
    }

    /// The template's metrics that an external provider measures.
    fn external(&self) -> Vec<&'a Metric> {
        self.template
            .metrics
            .iter()
            .filter(|m| m.provider != "builtin")
            .collect()
    }

    /// Judge one measurement: builtin metrics on the window (`error-rate` also on the
    /// canary's counts of the analysis's earlier windows), external ones on what their
    /// providers answered (`asked`, in the order of [`Self::external`]).
    fn measure(&mut self, w: &Window, asked: Vec<Asked>) -> (Measurement, Phase) {
        let mut asked = asked.into_iter();
        let before = self.state.canary;
        let results = self
            .template
            .metrics
            .iter()
            .map(|m| {
                if m.provider == "builtin" {
                    return analysis::measure_builtin_over(m, w, before, &self.limits);
                }
                match asked.next() {
                    Some(a) => analysis::judge_reading(m, &a.source, &a.query, a.reading),
                    None => MetricResult {
                        phase: Phase::Error,
                        detail: format!(
                            "{} could not be measured: no client for provider `{}` in this controller",
                            m.name, m.provider
                        ),
                        ..analysis::judge_value(m, None, "")
                    },
                }
            })
            .collect();
        let m = analysis::combine(results);
        let phase = analysis::record(&mut self.state, m.clone(), &self.limits);
        self.state.observe(w);
        (m, phase)
    }
}

/// Ask the external providers of a judge's template, if it has any metric of theirs.
async fn ask(world: &World<'_>, judge: &Judge<'_>, vars: &QueryVars) -> Vec<Asked> {
    let metrics = judge.external();
    match (world.external, metrics.is_empty()) {
        (Some(ext), false) => {
            let vars = QueryVars {
                interval_ms: judge.limits.interval_ms,
                ..vars.clone()
            };
            ext.read(&metrics, &vars).await
        }
        _ => Vec::new(),
    }
}

/// Measure one judge over the router's window `w`, emit the measurement and keep it.
/// When the window itself failed (`source_error`), a judge with builtin metrics gets a
/// measurement in Error, counted against `consecutive_error_limit` like any other; a
/// judge of external providers only is measured as usual (an nginx router has no window).
async fn measure_judge(
    world: &World<'_>,
    j: &mut Judge<'_>,
    w: &Window,
    source_error: Option<&str>,
    vars: &QueryVars,
    measurements: &mut Vec<Measurement>,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> (Measurement, Phase) {
    let (m, phase) = match source_error {
        Some(e) if j.uses_builtin() => {
            let m = analysis::combine(vec![analysis::MetricResult {
                metric: "provider".into(),
                phase: Phase::Error,
                value: None,
                threshold: String::new(),
                detail: format!("metric source failed: {e}"),
                query: None,
                sampled: None,
            }]);
            let phase = analysis::record(&mut j.state, m.clone(), &j.limits);
            (m, phase)
        }
        _ => {
            let asked = ask(world, j, vars).await;
            j.measure(w, asked)
        }
    };
    emit(RolloutEvent::Measured {
        template: j.name.clone(),
        window: window_summary(w),
        measurement: m.clone(),
        phase,
    });
    measurements.push(m.clone());
    (m, phase)
}

/// Drive a canary to its end. `emit` receives every event before the controller acts on
/// the next decision, so a journal written from it is always ahead of the world.
pub async fn run_canary(
    c: Canary<'_>,
    world: &World<'_>,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    run_canary_checked(c, world, None, emit).await
}

/// [`run_canary`] with `pre_traffic` checks run against the candidate's own addresses
/// after it is ready and before the router is given its pool: a failure rolls back with
/// the checks' verdict as the reason, and no request ever reaches the candidate.
pub async fn run_canary_checked(
    c: Canary<'_>,
    world: &World<'_>,
    pre_traffic: Option<&dyn PreTraffic>,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    if let Some(r) = &c.resume {
        return continue_canary(&c, world, r.instances.clone(), r.weight, emit).await;
    }
    let canary = world
        .instances
        .start(c.service, c.version, c.replicas, Role::Canary)
        .await?;
    emit(RolloutEvent::CanaryStarted {
        instances: canary.clone(),
    });
    if let Some(pt) = pre_traffic {
        let verdict = pt.check(&canary).await;
        let (passed, detail) = match &verdict {
            Ok(d) => (true, d.clone()),
            Err(d) => (false, d.clone()),
        };
        emit(RolloutEvent::PreTrafficChecked {
            passed,
            detail: detail.clone(),
        });
        if !passed {
            let reason = format!(
                "smoke check(s) failed against the isolated candidate {} {} before it got any traffic: {detail}",
                c.service, c.version
            );
            return rollback(&c, world, &canary, reason, Vec::new(), emit).await;
        }
    }
    if let Err(detail) = world.instances.healthy(&canary).await {
        emit(RolloutEvent::HealthFailed {
            detail: detail.clone(),
        });
        let reason = format!(
            "the health probe of the isolated candidate {} {} failed before it got any traffic: {detail}",
            c.service, c.version
        );
        return rollback(&c, world, &canary, reason, Vec::new(), emit).await;
    }
    let stable_addrs: Vec<SocketAddr> = c.stable.iter().map(|i| i.addr).collect();
    let canary_addrs: Vec<SocketAddr> = canary.iter().map(|i| i.addr).collect();
    // Pools are installed at weight 0 so nothing reaches the canary before the first step.
    world.router.set_weight(0).await?;
    world.router.set_pools(&stable_addrs, &canary_addrs).await?;
    steps(&c, world, canary, 0, emit).await
}

/// Continue a canary that is already running at `weight` (see [`Canary::resume`]).
async fn continue_canary(
    c: &Canary<'_>,
    world: &World<'_>,
    canary: Vec<Instance>,
    weight: u8,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    emit(RolloutEvent::CanaryResumed {
        instances: canary.clone(),
        step: c.start_step,
        weight,
    });
    let stable_addrs: Vec<SocketAddr> = c.stable.iter().map(|i| i.addr).collect();
    let canary_addrs: Vec<SocketAddr> = canary.iter().map(|i| i.addr).collect();
    // The pools first (a proxy started again may hold only the stable pool), then the
    // weight the canary served at: never more than it had.
    let current = world.router.verify_weight().await.unwrap_or(0);
    world.router.set_weight(current.min(weight)).await?;
    world.router.set_pools(&stable_addrs, &canary_addrs).await?;
    world.router.set_weight(weight).await?;
    emit(RolloutEvent::WeightSet {
        weight,
        verified: world.router.verify_weight().await,
    });
    steps(c, world, canary, weight, emit).await
}

/// The canary's steps from `c.start_step`, then its promotion (or rollback, or pause).
async fn steps(
    c: &Canary<'_>,
    world: &World<'_>,
    canary: Vec<Instance>,
    weight: u8,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    let _ = world.metrics.window().await; // discard traffic from before the canary

    let mut background = c.background.and_then(|b| Judge::new(b, c.templates));
    // What external queries may refer to; the interval is each template's own.
    let vars = QueryVars {
        service: c.service.to_owned(),
        version: c.version.to_owned(),
        stable_version: c
            .stable
            .first()
            .map(|i| i.version.clone())
            .unwrap_or_default(),
        environment: c.environment.to_owned(),
        interval_ms: analysis::DEFAULT_INTERVAL_MS,
        // The environment's variables are the provider set's (it holds resolved secrets).
        vars: BTreeMap::new(),
    };
    let mut measurements: Vec<Measurement> = Vec::new();
    let mut weight: u8 = weight;
    // The router's guard judges every canary response while an analysis with a builtin
    // error-rate runs (the background one throughout, a step's own during the step).
    let background_max = background.as_ref().and_then(Judge::guard_max);
    let background_pauses = background.as_ref().is_some_and(Judge::pauses);
    let mut guard = Guard::default();
    guard.set(world, background_max, background_pauses).await?;

    for (index, step) in c.steps.iter().enumerate().skip(c.start_step) {
        if let Some(reason) = guard.tripped(world).await {
            return guard
                .verdict(c, world, &canary, reason, measurements, emit)
                .await;
        }
        emit(RolloutEvent::StepStarted {
            index,
            step: describe(step),
        });
        if let Some(w) = step.set_weight {
            weight = u8::try_from(w.min(100)).unwrap_or(100);
            world.router.set_weight(weight).await?;
            let verified = world.router.verify_weight().await;
            emit(RolloutEvent::WeightSet { weight, verified });
            continue;
        }
        // Pauses and analysis steps are timed loops that keep judging the background
        // analysis and listening for humans at the template's interval.
        let (mut judge, deadline, manual) = if let Some(a) = &step.analysis {
            let judge = Judge::new(a, c.templates).ok_or_else(|| {
                RolloutError::Instances(format!("unknown analysis template `{}`", a.template))
            })?;
            let d = a.duration.as_ref().and_then(|d| d.get().ok());
            (Some(judge), d, false)
        } else {
            let p = step.pause.as_deref().unwrap_or("manual");
            (None, parse_duration(p).ok(), p == "manual")
        };
        let tick = Duration::from_millis(
            judge
                .as_ref()
                .map(|j| j.limits.interval_ms)
                .or(background.as_ref().map(|b| b.limits.interval_ms))
                .unwrap_or(analysis::DEFAULT_INTERVAL_MS),
        );
        if manual {
            emit(RolloutEvent::Paused {
                reason: format!("step {index}: pause until resumed (slipway resume / promote)"),
            });
        }
        // The stricter max governs, and with it its template's on_failure.
        let step_max = judge.as_ref().and_then(Judge::guard_max);
        let pauses = match (step_max, background_max) {
            (Some(s), b) if b.is_none_or(|b| s <= b) => judge.as_ref().is_some_and(Judge::pauses),
            _ => background_pauses,
        };
        guard
            .set(world, min_of(background_max, step_max), pauses)
            .await?;
        let started = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            if let Some(reason) = guard.tripped(world).await {
                return guard
                    .verdict(c, world, &canary, reason, measurements, emit)
                    .await;
            }
            match world.interventions.poll().await {
                Some(Intervention::Rollback) => {
                    emit(RolloutEvent::Intervened {
                        intervention: Intervention::Rollback,
                    });
                    return rollback(
                        c,
                        world,
                        &canary,
                        "rollback requested by an operator".into(),
                        measurements,
                        emit,
                    )
                    .await;
                }
                Some(Intervention::Promote) => {
                    emit(RolloutEvent::Intervened {
                        intervention: Intervention::Promote,
                    });
                    return promote(c, world, canary, emit).await;
                }
                Some(i @ (Intervention::Resume | Intervention::Pause)) => {
                    emit(RolloutEvent::Intervened { intervention: i });
                    if i == Intervention::Resume && manual {
                        break;
                    }
                    if i == Intervention::Pause {
                        return Ok(Outcome::Paused {
                            reason: "paused by an operator".into(),
                        });
                    }
                }
                None => {}
            }
            if let Err(detail) = world.instances.healthy(&canary).await {
                return health_failed(c, world, &canary, detail, weight, measurements, emit).await;
            }
            restore_router(world, emit).await;
            if judge.is_some() || background.is_some() {
                // A template judged only by external providers does not need the router's
                // window (an nginx router has none): a failing window is an Error only
                // for templates with builtin metrics.
                let (w, source_error) = match world.metrics.window().await {
                    Ok(w) => (w, None),
                    Err(e) => (Window::default(), Some(e)),
                };
                for j in judge.iter_mut().chain(background.iter_mut()) {
                    let (m, phase) = measure_judge(
                        world,
                        j,
                        &w,
                        source_error.as_deref(),
                        &vars,
                        &mut measurements,
                        emit,
                    )
                    .await;
                    match phase {
                        Phase::Failed | Phase::Error => {
                            let reason = failure_reason(&j.name, &m, weight, phase);
                            if j.template.on_failure == OnFailure::Pause || phase == Phase::Error {
                                emit(RolloutEvent::Paused {
                                    reason: reason.clone(),
                                });
                                return Ok(Outcome::Paused { reason });
                            }
                            return rollback(c, world, &canary, reason, measurements, emit).await;
                        }
                        Phase::Inconclusive => {
                            let reason = format!(
                                "analysis `{}` is inconclusive ({} inconclusive measurements, limit {}): {}; pausing for a human (slipway resume or rollback)",
                                j.name,
                                j.state.inconclusive,
                                j.limits.inconclusive_limit,
                                m.results
                                    .iter()
                                    .filter(|r| r.phase == Phase::Inconclusive)
                                    .map(|r| r.detail.clone())
                                    .next()
                                    .unwrap_or_default()
                            );
                            emit(RolloutEvent::Paused {
                                reason: reason.clone(),
                            });
                            return Ok(Outcome::Paused { reason });
                        }
                        _ => {}
                    }
                }
            }
            if manual {
                continue;
            }
            if let Some(d) = deadline
                && started.elapsed() >= d
            {
                if let Some(j) = &judge
                    && analysis::conclude(&j.state) == Phase::Inconclusive
                {
                    let reason = format!(
                        "analysis `{}` ended without one conclusive measurement (insufficient data); pausing for a human",
                        j.name
                    );
                    emit(RolloutEvent::Paused {
                        reason: reason.clone(),
                    });
                    return Ok(Outcome::Paused { reason });
                }
                break;
            }
            if deadline.is_none() && judge.is_some() {
                // An analysis without a duration runs until it has one conclusive result.
                if let Some(j) = &judge
                    && analysis::conclude(&j.state) == Phase::Successful
                {
                    break;
                }
            }
        }
        guard.set(world, background_max, background_pauses).await?;
    }
    // A trip after the last look still counts: the router already took the weight to 0.
    if let Some(reason) = guard.tripped(world).await {
        return guard
            .verdict(c, world, &canary, reason, measurements, emit)
            .await;
    }
    if let Some(left) = c.soak {
        // The guard stays armed with the background analysis's max through the soak.
        let soaked = Soaked {
            background,
            measurements,
            guard,
        };
        return soak(c, world, canary, left, soaked, &vars, emit).await;
    }
    guard.set(world, None, false).await?;
    promote(c, world, canary, emit).await
}

/// Put back what the router lost since the last interval (see
/// [`TrafficRouter::reconcile`]), journaled. A router that cannot be read now is tried
/// again at the next interval; one that stays unreachable fails the analysis window.
async fn restore_router(world: &World<'_>, emit: &mut (dyn FnMut(RolloutEvent) + Send)) {
    if let Ok(Some(detail)) = world.router.reconcile().await {
        emit(RolloutEvent::RouterRestored { detail });
    }
}

/// What the steps hand to the soak: the background analysis, the measurements so far and
/// the router's guard (armed with the background analysis's max).
struct Soaked<'a> {
    background: Option<Judge<'a>>,
    measurements: Vec<Measurement>,
    guard: Guard,
}

/// A failed health probe of the candidate during its canary: an analysis failure, rolled
/// back with the probe's answer as the reason.
async fn health_failed(
    c: &Canary<'_>,
    world: &World<'_>,
    canary: &[Instance],
    detail: String,
    weight: u8,
    measurements: Vec<Measurement>,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    emit(RolloutEvent::HealthFailed {
        detail: detail.clone(),
    });
    let reason = format!("health probe failed at canary weight {weight}%: {detail}");
    rollback(c, world, canary, reason, measurements, emit).await
}

/// The soak (see [`Canary::soak`]): full weight to the candidate for `left`, its health
/// probed and the background analysis judged at every tick, the stable pool kept running
/// at weight 0 so a failure moves traffic back at once. A failed health probe or analysis
/// rolls back; an analysis error pauses, as during the steps. An inconclusive
/// measurement does not stop the soak: at full weight the stable pool gets no traffic
/// to be compared with.
async fn soak(
    c: &Canary<'_>,
    world: &World<'_>,
    canary: Vec<Instance>,
    left: Duration,
    soaked: Soaked<'_>,
    vars: &QueryVars,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    let Soaked {
        mut background,
        mut measurements,
        mut guard,
    } = soaked;
    if world.router.verify_weight().await != Some(100) {
        world.router.set_weight(100).await?;
        emit(RolloutEvent::WeightSet {
            weight: 100,
            verified: world.router.verify_weight().await,
        });
    }
    emit(RolloutEvent::SoakStarted {
        index: c.steps.len(),
        seconds: left.as_secs(),
    });
    let tick = Duration::from_millis(
        background
            .as_ref()
            .map_or(analysis::DEFAULT_INTERVAL_MS, |b| b.limits.interval_ms),
    )
    .min(left.max(Duration::from_millis(1)));
    let started = Instant::now();
    let _ = world.metrics.window().await; // the soak's own window
    loop {
        tokio::time::sleep(tick).await;
        if let Some(reason) = guard.tripped(world).await {
            return guard
                .verdict(c, world, &canary, reason, measurements, emit)
                .await;
        }
        match world.interventions.poll().await {
            Some(Intervention::Rollback) => {
                emit(RolloutEvent::Intervened {
                    intervention: Intervention::Rollback,
                });
                let reason = "rollback requested by an operator during the soak".to_owned();
                return rollback(c, world, &canary, reason, measurements, emit).await;
            }
            Some(Intervention::Promote) => {
                // A human ends the soak early: the promotion is theirs.
                emit(RolloutEvent::Intervened {
                    intervention: Intervention::Promote,
                });
                return promote(c, world, canary, emit).await;
            }
            Some(Intervention::Pause) => {
                emit(RolloutEvent::Intervened {
                    intervention: Intervention::Pause,
                });
                return Ok(Outcome::Paused {
                    reason: "paused by an operator during the soak".into(),
                });
            }
            Some(Intervention::Resume) | None => {}
        }
        if let Err(detail) = world.instances.healthy(&canary).await {
            emit(RolloutEvent::HealthFailed {
                detail: detail.clone(),
            });
            let reason = format!("health probe failed during the soak at full weight: {detail}");
            return rollback(c, world, &canary, reason, measurements, emit).await;
        }
        restore_router(world, emit).await;
        if let Some(j) = background.as_mut() {
            let (w, source_error) = match world.metrics.window().await {
                Ok(w) => (w, None),
                Err(e) => (Window::default(), Some(e)),
            };
            let (m, phase) = measure_judge(
                world,
                j,
                &w,
                source_error.as_deref(),
                vars,
                &mut measurements,
                emit,
            )
            .await;
            if matches!(phase, Phase::Failed | Phase::Error) {
                let reason = format!(
                    "{} (during the soak)",
                    failure_reason(&j.name, &m, 100, phase)
                );
                if j.template.on_failure == OnFailure::Pause || phase == Phase::Error {
                    emit(RolloutEvent::Paused {
                        reason: reason.clone(),
                    });
                    return Ok(Outcome::Paused { reason });
                }
                return rollback(c, world, &canary, reason, measurements, emit).await;
            }
        }
        if started.elapsed() >= left {
            break;
        }
    }
    emit(RolloutEvent::SoakPassed {
        seconds: started.elapsed().as_secs(),
    });
    guard.set(world, None, false).await?;
    promote(c, world, canary, emit).await
}

fn min_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The router's canary guard as the controller keeps it: armed with which `max`, if the
/// router has one.
#[derive(Default)]
struct Guard {
    armed: Option<f64>,
    /// The governing template's `on_failure: pause`: a trip pauses for a human (the
    /// canary already gets no traffic) instead of rolling back.
    pause: bool,
    /// A trip seen while armed with an earlier `max`: a re-arm must not forget it.
    trip: Option<String>,
}

impl Guard {
    /// Arm with `max` (or disarm with `None`) unless that is what is armed already.
    async fn set(
        &mut self,
        world: &World<'_>,
        max: Option<f64>,
        pause: bool,
    ) -> Result<(), RolloutError> {
        self.pause = pause;
        if self.armed == max {
            return Ok(());
        }
        if self.armed.is_some() && self.trip.is_none() {
            self.trip = world.router.guard_trip().await;
        }
        let supported = world.router.arm_guard(max).await?;
        self.armed = if supported { max } else { None };
        Ok(())
    }

    /// The rollback reason once the guard tripped.
    async fn tripped(&mut self, world: &World<'_>) -> Option<String> {
        if self.trip.is_none() && self.armed.is_some() {
            self.trip = world.router.guard_trip().await;
        }
        self.trip.clone()
    }

    /// What a trip leads to: a rollback, or a pause where the template says so.
    async fn verdict(
        &self,
        c: &Canary<'_>,
        world: &World<'_>,
        canary: &[Instance],
        reason: String,
        measurements: Vec<Measurement>,
        emit: &mut (dyn FnMut(RolloutEvent) + Send),
    ) -> Result<Outcome, RolloutError> {
        if self.pause {
            let reason = format!(
                "{reason}; paused for a human (on_failure: pause), the canary gets no traffic meanwhile"
            );
            emit(RolloutEvent::Paused {
                reason: reason.clone(),
            });
            return Ok(Outcome::Paused { reason });
        }
        rollback(c, world, canary, reason, measurements, emit).await
    }
}

fn describe(s: &CanaryStep) -> String {
    if let Some(w) = s.set_weight {
        format!("set_weight {w}")
    } else if let Some(p) = &s.pause {
        format!("pause {p}")
    } else if let Some(a) = &s.analysis {
        format!(
            "analysis {}{}",
            a.template,
            a.duration
                .as_ref()
                .map(|d| format!(" for {d}"))
                .unwrap_or_default()
        )
    } else {
        "empty step".into()
    }
}

fn failure_reason(template: &str, m: &Measurement, weight: u8, phase: Phase) -> String {
    let failed: Vec<String> = m
        .results
        .iter()
        .filter(|r| r.phase == phase)
        .map(|r| r.detail.clone())
        .collect();
    format!(
        "analysis `{template}` {} at canary weight {weight}%: {}",
        if phase == Phase::Error {
            "errored"
        } else {
            "failed"
        },
        failed.join("; ")
    )
}

async fn promote(
    c: &Canary<'_>,
    world: &World<'_>,
    canary: Vec<Instance>,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    if c.promotion == Promotion::Hold {
        return Ok(Outcome::Promoted { instances: canary });
    }
    if world.router.verify_weight().await != Some(100) {
        world.router.set_weight(100).await?;
        emit(RolloutEvent::WeightSet {
            weight: 100,
            verified: world.router.verify_weight().await,
        });
    }
    // The canary becomes the stable pool, then the old stable is retired. Both pools hold
    // the canary while the weight returns to 0, so no request meets an empty pool in
    // between (a remote router applies each change in its own call).
    let addrs: Vec<SocketAddr> = canary.iter().map(|i| i.addr).collect();
    world.router.set_pools(&addrs, &addrs).await?;
    world.router.set_weight(0).await?;
    world.router.set_pools(&addrs, &[]).await?;
    world.instances.stop(&c.stable).await?;
    emit(RolloutEvent::Promoted {
        version: c.version.to_owned(),
    });
    Ok(Outcome::Promoted { instances: canary })
}

async fn rollback(
    c: &Canary<'_>,
    world: &World<'_>,
    canary: &[Instance],
    reason: String,
    measurements: Vec<Measurement>,
    emit: &mut (dyn FnMut(RolloutEvent) + Send),
) -> Result<Outcome, RolloutError> {
    emit(RolloutEvent::RollingBack {
        reason: reason.clone(),
    });
    // Never shift traffic onto a stable that cannot take it (argo-rollouts #3888).
    let mut stable = c.stable.clone();
    if !world.instances.ready(&stable).await {
        let replicas = u32::try_from(stable.len().max(1)).unwrap_or(1);
        let version = stable
            .first()
            .map(|i| i.version.clone())
            .unwrap_or_default();
        let fresh = world
            .instances
            .start(c.service, &version, replicas, Role::Stable)
            .await?;
        let canary_addrs: Vec<SocketAddr> = canary.iter().map(|i| i.addr).collect();
        let addrs: Vec<SocketAddr> = fresh.iter().map(|i| i.addr).collect();
        world.router.set_pools(&addrs, &canary_addrs).await?;
        stable = fresh;
    }
    emit(RolloutEvent::StableConfirmed {
        instances: stable.len(),
    });
    // The weight first, then the routes: with the routes gone and the weight still up, a
    // tester's request would be weighted — and could land on the rejected canary again.
    world.router.set_weight(0).await?;
    emit(RolloutEvent::WeightSet {
        weight: 0,
        verified: world.router.verify_weight().await,
    });
    // Testers matched to the canary and users stuck to it leave with everyone else.
    world.router.clear_routes().await?;
    let start = Instant::now();
    let mut in_flight = world.router.canary_in_flight().await.unwrap_or(0);
    while in_flight > 0 && start.elapsed() < world.drain_timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
        in_flight = world.router.canary_in_flight().await.unwrap_or(0);
    }
    emit(RolloutEvent::CanaryDrained { in_flight });
    let stable_addrs: Vec<SocketAddr> = stable.iter().map(|i| i.addr).collect();
    world.router.set_pools(&stable_addrs, &[]).await?;
    world.instances.stop(canary).await?;
    emit(RolloutEvent::RolledBack {
        reason: reason.clone(),
    });
    Ok(Outcome::RolledBack {
        reason,
        measurements,
    })
}

#[cfg(test)]
mod tests;
