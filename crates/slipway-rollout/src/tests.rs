//! Controller logic against in-memory fakes (the integration with real processes and the
//! real proxy is tested in slipway-providers).

use std::sync::Mutex;

use slipway_model::analysis::VersionWindow;
use slipway_model::spec::{Comparison, Metric, Scalar};

use super::*;

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct FakeInstances<'a> {
    log: &'a Log,
    stable_ready: bool,
}

fn inst(service: &str, version: &str, n: u32) -> Vec<Instance> {
    (0..n)
        .map(|i| Instance {
            id: format!("{service}-{version}-{i}"),
            service: service.into(),
            version: version.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + u16::try_from(i).unwrap())),
            pid: 1,
            log_path: None,
        })
        .collect()
}

impl Instances for FakeInstances<'_> {
    fn start<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
        replicas: u32,
        role: Role,
    ) -> BoxFuture<'a, Result<Vec<Instance>, RolloutError>> {
        self.log.push(format!("start {version} {role:?}"));
        Box::pin(async move { Ok(inst(service, version, replicas)) })
    }
    fn ready<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, bool> {
        self.log.push(format!("ready? {}", instances[0].version));
        let r = self.stable_ready;
        Box::pin(async move { r })
    }
    fn stop<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), RolloutError>> {
        self.log.push(format!(
            "stop {}",
            instances.first().map(|i| i.version.as_str()).unwrap_or("-")
        ));
        Box::pin(async { Ok(()) })
    }
}

struct FakeRouter<'a> {
    log: &'a Log,
    weight: Mutex<u8>,
}

impl TrafficRouter for FakeRouter<'_> {
    fn set_pools<'a>(
        &'a self,
        s: &'a [SocketAddr],
        c: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        self.log.push(format!("pools {}/{}", s.len(), c.len()));
        Box::pin(async { Ok(()) })
    }
    fn set_weight(&self, w: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        self.log.push(format!("weight {w}"));
        *self.weight.lock().unwrap() = w;
        Box::pin(async { Ok(()) })
    }
    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        let w = *self.weight.lock().unwrap();
        Box::pin(async move { Some(w) })
    }
    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { Some(0) })
    }
    fn clear_routes(&self) -> BoxFuture<'_, Result<(), RolloutError>> {
        self.log.push("routes cleared");
        Box::pin(async { Ok(()) })
    }
}

/// Windows scripted per call: canary requests and errors.
struct Script(Mutex<Vec<(u64, u64)>>);

impl MetricSource for Script {
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        let mut s = self.0.lock().unwrap();
        let (req, err) = if s.is_empty() { (100, 0) } else { s.remove(0) };
        let v = |r: u64, e: u64| VersionWindow {
            requests: r,
            errors: e,
            p50_ms: Some(5.0),
            p95_ms: Some(6.0),
            p99_ms: Some(7.0),
            seconds: 0.01,
            samples_ms: (0..r).map(|i| 5.0 + (i % 3) as f64).collect(),
        };
        let w = Window {
            canary: v(req, err),
            stable: v(900, 0),
            ..Window::default()
        };
        Box::pin(async move { Ok(w) })
    }
}

fn template(failure_limit: u32) -> BTreeMap<String, AnalysisTemplate> {
    BTreeMap::from([(
        "t".to_owned(),
        AnalysisTemplate {
            interval: Some("10ms".into()),
            min_samples: Some(20),
            failure_limit: Some(failure_limit),
            inconclusive_limit: Some(1),
            consecutive_error_limit: None,
            metrics: vec![
                Metric {
                    name: "error-rate".into(),
                    provider: "builtin".into(),
                    query: None,
                    max: Some(Scalar("0.05".into())),
                    min: None,
                    compare: None,
                    confidence: None,
                },
                Metric {
                    name: "latency-vs-stable".into(),
                    provider: "builtin".into(),
                    query: None,
                    max: None,
                    min: None,
                    compare: Some(Comparison::MannWhitney),
                    confidence: Some(0.99),
                },
            ],
            on_failure: OnFailure::Rollback,
        },
    )])
}

fn steps() -> Vec<CanaryStep> {
    vec![
        CanaryStep {
            set_weight: Some(10),
            ..Default::default()
        },
        CanaryStep {
            analysis: Some(AnalysisStep {
                template: "t".into(),
                duration: Some("50ms".into()),
            }),
            ..Default::default()
        },
        CanaryStep {
            set_weight: Some(50),
            ..Default::default()
        },
    ]
}

/// [`steps`] with an analysis without a duration: it ends at its first conclusive
/// measurement or by its limits, so the verdict does not depend on how many windows fit
/// in a wall-clock span.
fn untimed_steps() -> Vec<CanaryStep> {
    let mut untimed = steps();
    untimed[1].analysis = Some(AnalysisStep {
        template: "t".into(),
        duration: None,
    });
    untimed
}

async fn drive(
    script: Vec<(u64, u64)>,
    failure_limit: u32,
    stable_ready: bool,
) -> (Outcome, Vec<String>, Vec<RolloutEvent>) {
    drive_with(script, template(failure_limit), stable_ready, None).await
}

async fn drive_with(
    script: Vec<(u64, u64)>,
    templates: BTreeMap<String, AnalysisTemplate>,
    stable_ready: bool,
    external: Option<&dyn ExternalMetrics>,
) -> (Outcome, Vec<String>, Vec<RolloutEvent>) {
    drive_full(script, templates, stable_ready, external, false, steps()).await
}

/// A router that cannot measure (as nginx): every window fails.
struct NoWindow;

impl MetricSource for NoWindow {
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        Box::pin(async { Err("this router keeps no per-version counters".into()) })
    }
}

async fn drive_full(
    script: Vec<(u64, u64)>,
    templates: BTreeMap<String, AnalysisTemplate>,
    stable_ready: bool,
    external: Option<&dyn ExternalMetrics>,
    no_window: bool,
    steps: Vec<CanaryStep>,
) -> (Outcome, Vec<String>, Vec<RolloutEvent>) {
    let log = Log::default();
    let instances = FakeInstances {
        log: &log,
        stable_ready,
    };
    let router = FakeRouter {
        log: &log,
        weight: Mutex::new(0),
    };
    // The first window is discarded by the controller (traffic before the canary).
    let mut s = vec![(0, 0)];
    s.extend(script);
    let metrics = Script(Mutex::new(s));
    let metrics: &dyn MetricSource = if no_window { &NoWindow } else { &metrics };
    let world = World {
        instances: &instances,
        router: &router,
        metrics,
        external,
        interventions: &NoInterventions,
        drain_timeout: Duration::from_millis(100),
    };
    let mut events = Vec::new();
    let outcome = run_canary(
        Canary {
            service: "api",
            version: "2.0.0",
            replicas: 2,
            stable: inst("api", "1.0.0", 2),
            steps: &steps,
            background: None,
            templates: &templates,
            start_step: 0,
            resume: None,
            environment: "prod",
            soak: None,
            promotion: Default::default(),
        },
        &world,
        &mut |e| events.push(e),
    )
    .await
    .unwrap();
    (outcome, log.all(), events)
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_and_old_stable_retired() {
    let (outcome, log, events) = drive(vec![], 0, true).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");
    assert_eq!(
        log,
        vec![
            "start 2.0.0 Canary",
            "weight 0",
            "pools 2/2",
            "weight 10",
            "weight 50",
            "weight 100",
            // The canary in both pools while the weight returns to 0: never an empty
            // pool taking traffic between two router calls.
            "pools 2/2",
            "weight 0",
            "pools 2/0",
            "stop 1.0.0"
        ]
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RolloutEvent::Promoted { .. }))
    );
}

#[tokio::test]
async fn a_failing_canary_rolls_back_naming_metric_value_and_threshold() {
    let (outcome, log, _) = drive(vec![(100, 40)], 0, true).await;
    let Outcome::RolledBack {
        reason,
        measurements,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("error-rate = 40.00% above max 5.00%"),
        "{reason}"
    );
    assert!(reason.contains("weight 10%"), "{reason}");
    assert_eq!(measurements.len(), 1);
    // Stable is confirmed ready before the weight goes to 0; the match routes go only
    // after the weight (with them gone and the weight up, a tester's request is weighted
    // and may reach the rejected canary again); the canary stops last.
    let tail: Vec<&str> = log.iter().rev().take(5).rev().map(String::as_str).collect();
    assert_eq!(
        tail,
        vec![
            "ready? 1.0.0",
            "weight 0",
            "routes cleared",
            "pools 2/0",
            "stop 2.0.0"
        ]
    );
}

/// The controller judges `error-rate` on the canary's counts of the whole analysis, not
/// only the window: the first window is too small to judge (10 requests, min_samples 20:
/// inconclusive, tolerated once) but 9 of them failed; the second, 1 error of 20, proves
/// nothing alone (p = 0.64), while the two together, 10 of 30 at max 5 %, do.
#[tokio::test]
async fn error_rate_is_judged_on_the_analysis_counts_as_well_as_the_window() {
    let (outcome, _, _) = drive_full(
        vec![(10, 9), (20, 1)],
        template(0),
        true,
        None,
        false,
        untimed_steps(),
    )
    .await;
    let Outcome::RolledBack {
        reason,
        measurements,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("above max 5.00% over the analysis so far (10 errors of 30 requests"),
        "{reason}"
    );
    assert_eq!(measurements.len(), 2);
}

#[tokio::test]
async fn failure_limit_tolerates_that_many_failed_measurements() {
    let (outcome, _, _) = drive(
        vec![(100, 40), (100, 0), (100, 0), (100, 0), (100, 0), (100, 0)],
        1,
        true,
    )
    .await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");
}

#[tokio::test]
async fn too_little_traffic_pauses_instead_of_passing() {
    let (outcome, log, _) = drive(vec![(3, 0), (2, 0), (4, 0), (1, 0)], 0, true).await;
    let Outcome::Paused { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("insufficient data"), "{reason}");
    assert!(!log.iter().any(|l| l == "weight 100"), "{log:?}");
}

#[tokio::test]
async fn rollback_restarts_stable_when_it_is_not_ready_before_moving_traffic() {
    let (outcome, log, _) = drive(vec![(100, 100)], 0, false).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }));
    let i_start = log.iter().position(|l| l == "start 1.0.0 Stable").unwrap();
    let i_weight0 = log.iter().rposition(|l| l == "weight 0").unwrap();
    assert!(i_start < i_weight0, "{log:?}");
}

/// External readings scripted per call; every query asked is kept.
struct Readings {
    script: Mutex<Vec<Reading>>,
    asked: Mutex<Vec<(String, QueryVars)>>,
}

impl Readings {
    fn new(script: Vec<Reading>) -> Self {
        Self {
            script: Mutex::new(script),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl ExternalMetrics for Readings {
    fn read<'a>(
        &'a self,
        metrics: &'a [&'a Metric],
        vars: &'a QueryVars,
    ) -> BoxFuture<'a, Vec<Asked>> {
        let out = metrics
            .iter()
            .map(|m| {
                let q = m.query.clone().unwrap_or_default();
                self.asked.lock().unwrap().push((q.clone(), vars.clone()));
                let mut s = self.script.lock().unwrap();
                let reading = if s.is_empty() {
                    Reading::Value(0.0)
                } else {
                    s.remove(0)
                };
                Asked {
                    source: format!("prometheus `{}`", m.provider),
                    query: q,
                    reading,
                }
            })
            .collect();
        Box::pin(async move { out })
    }
}

/// A template judged by one Prometheus metric only.
fn prom_template() -> BTreeMap<String, AnalysisTemplate> {
    BTreeMap::from([(
        "t".to_owned(),
        AnalysisTemplate {
            interval: Some("10ms".into()),
            min_samples: None,
            failure_limit: Some(0),
            inconclusive_limit: Some(1),
            consecutive_error_limit: Some(1),
            metrics: vec![Metric {
                name: "error-ratio".into(),
                provider: "prom".into(),
                query: Some("errors{version=\"2.0.0\"}".into()),
                max: Some(Scalar("0.1".into())),
                min: None,
                compare: None,
                confidence: None,
            }],
            on_failure: OnFailure::Rollback,
        },
    )])
}

#[tokio::test]
async fn an_external_metric_over_its_threshold_rolls_back_naming_provider_value_and_threshold() {
    let ext = Readings::new(vec![Reading::Value(0.5)]);
    let (outcome, _, events) = drive_with(vec![], prom_template(), true, Some(&ext)).await;
    let Outcome::RolledBack { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("error-ratio = 0.5000 above max 0.1000 (prometheus `prom`)"),
        "{reason}"
    );
    // The measurement in the journal carries the query that was sent.
    let measured = events
        .iter()
        .find_map(|e| match e {
            RolloutEvent::Measured { measurement, .. } => Some(measurement.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        measured.results[0].query.as_deref(),
        Some("errors{version=\"2.0.0\"}")
    );
    assert_eq!(measured.results[0].value, Some(0.5));
    // The provider was told which canary, beside which stable, at which interval.
    let (_, vars) = ext.asked.lock().unwrap()[0].clone();
    assert_eq!(
        vars,
        QueryVars {
            service: "api".into(),
            version: "2.0.0".into(),
            stable_version: "1.0.0".into(),
            environment: "prod".into(),
            interval_ms: 10,
            vars: BTreeMap::new(),
        }
    );
}

#[tokio::test]
async fn an_external_metric_within_its_threshold_promotes() {
    let ext = Readings::new(vec![Reading::Value(0.01)]);
    let (outcome, _, _) = drive_with(vec![], prom_template(), true, Some(&ext)).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");
}

#[tokio::test]
async fn no_data_from_an_external_provider_pauses_never_passes() {
    let ext = Readings::new(vec![
        Reading::NoData("the query returned no sample".into());
        10
    ]);
    let (outcome, log, _) = drive_with(vec![], prom_template(), true, Some(&ext)).await;
    let Outcome::Paused { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("insufficient data: prometheus `prom`: the query returned no sample"),
        "{reason}"
    );
    assert!(!log.iter().any(|l| l == "weight 100"), "{log:?}");
}

#[tokio::test]
async fn provider_errors_past_the_consecutive_limit_pause_with_the_error() {
    let ext = Readings::new(vec![Reading::Error("bad_data: parse error".into()); 10]);
    let (outcome, _, _) = drive_with(vec![], prom_template(), true, Some(&ext)).await;
    let Outcome::Paused { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("errored"), "{reason}");
    assert!(reason.contains("bad_data: parse error"), "{reason}");
}

#[tokio::test]
async fn an_external_metric_without_a_client_is_an_error_not_an_endless_inconclusive() {
    let (outcome, _, _) = drive_with(vec![], prom_template(), true, None).await;
    let Outcome::Paused { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("no client for provider `prom`"), "{reason}");
}

#[tokio::test]
async fn external_metrics_judge_a_canary_whose_router_cannot_measure() {
    let ext = Readings::new(vec![Reading::Value(0.5)]);
    let (outcome, _, _) =
        drive_full(vec![], prom_template(), true, Some(&ext), true, steps()).await;
    let Outcome::RolledBack { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("error-ratio = 0.5000 above max"),
        "{reason}"
    );
    // A template with builtin metrics cannot pass without the router's window: its
    // errors are measurements that pause the canary past consecutive_error_limit (they
    // used to be counted and never acted on, and the canary waited forever).
    let (outcome, log, events) =
        drive_full(vec![], template(0), true, None, true, untimed_steps()).await;
    let Outcome::Paused { reason } = outcome else {
        panic!("{outcome:?} {log:?}")
    };
    assert!(
        reason.contains("errored")
            && reason.contains("metric source failed: this router keeps no per-version counters"),
        "{reason}"
    );
    let measured = events
        .iter()
        .filter(|e| matches!(e, RolloutEvent::Measured { .. }))
        .count();
    assert_eq!(
        measured, 5,
        "4 errors tolerated (the default), the 5th pauses"
    );
}

/// A router with a guard that trips after `trips_after` looks at it.
struct GuardRouter<'a> {
    inner: FakeRouter<'a>,
    trips_after: Option<usize>,
    looks: Mutex<usize>,
}

impl TrafficRouter for GuardRouter<'_> {
    fn set_pools<'a>(
        &'a self,
        s: &'a [SocketAddr],
        c: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        self.inner.set_pools(s, c)
    }
    fn set_weight(&self, w: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        self.inner.set_weight(w)
    }
    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        self.inner.verify_weight()
    }
    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        self.inner.canary_in_flight()
    }
    fn arm_guard(&self, max: Option<f64>) -> BoxFuture<'_, Result<bool, RolloutError>> {
        self.inner.log.push(format!("guard {max:?}"));
        Box::pin(async { Ok(true) })
    }
    fn guard_trip(&self) -> BoxFuture<'_, Option<String>> {
        let mut looks = self.looks.lock().unwrap();
        *looks += 1;
        let trip = self
            .trips_after
            .filter(|n| *looks > *n)
            .map(|_| "the canary guard tripped: 4 errors in the last 4".to_owned());
        Box::pin(async move { trip })
    }
}

async fn drive_guarded(trips_after: Option<usize>) -> (Outcome, Vec<String>) {
    drive_guarded_with(trips_after, OnFailure::Rollback).await
}

async fn drive_guarded_with(
    trips_after: Option<usize>,
    on_failure: OnFailure,
) -> (Outcome, Vec<String>) {
    let log = Log::default();
    let instances = FakeInstances {
        log: &log,
        stable_ready: true,
    };
    let router = GuardRouter {
        inner: FakeRouter {
            log: &log,
            weight: Mutex::new(0),
        },
        trips_after,
        looks: Mutex::new(0),
    };
    let metrics = Script(Mutex::new(vec![(0, 0)]));
    let world = World {
        instances: &instances,
        router: &router,
        metrics: &metrics,
        external: None,
        interventions: &NoInterventions,
        drain_timeout: Duration::from_millis(100),
    };
    let (mut templates, steps) = (template(0), steps());
    for t in templates.values_mut() {
        t.on_failure = on_failure;
    }
    let outcome = run_canary(
        Canary {
            service: "api",
            version: "2.0.0",
            replicas: 2,
            stable: inst("api", "1.0.0", 2),
            steps: &steps,
            background: None,
            templates: &templates,
            start_step: 0,
            environment: "prod",
            resume: None,
            soak: None,
            promotion: Default::default(),
        },
        &world,
        &mut |_| {},
    )
    .await
    .unwrap();
    (outcome, log.all())
}

#[tokio::test]
async fn the_routers_guard_is_armed_with_the_error_rate_max_during_analysis_only() {
    let (outcome, log) = drive_guarded(None).await;
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");
    let guard: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("guard") || l.starts_with("weight"))
        .collect();
    assert_eq!(
        guard,
        vec![
            "weight 0",
            "weight 10",
            "guard Some(0.05)",
            "guard None",
            "weight 50",
            "weight 100",
            "weight 0"
        ]
    );
}

#[tokio::test]
async fn a_tripped_guard_rolls_back_with_its_verdict() {
    let (outcome, log) = drive_guarded(Some(1)).await;
    let Outcome::RolledBack { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("canary guard tripped"), "{reason}");
    // Never raised to the next step's weight once tripped.
    assert!(!log.iter().any(|l| l == "weight 50"), "{log:?}");
    assert!(log.iter().any(|l| l == "stop 2.0.0"), "{log:?}");
}

#[tokio::test]
async fn a_tripped_guard_pauses_where_the_template_says_pause() {
    let (outcome, log) = drive_guarded_with(Some(1), OnFailure::Pause).await;
    let Outcome::Paused { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("canary guard tripped"), "{reason}");
    assert!(reason.contains("on_failure: pause"), "{reason}");
    // Nothing stopped, no weight raised: a human decides.
    assert!(!log.iter().any(|l| l.starts_with("stop")), "{log:?}");
    assert!(!log.iter().any(|l| l == "weight 50"), "{log:?}");
}

/// `Promotion::Hold`: a canary that passed its steps is reported promoted with nothing
/// changed after its last step — no full weight, no pool swap, the stable kept running —
/// for a caller that promotes its own way (the fleet canary's next waves).
#[tokio::test]
async fn a_held_promotion_leaves_router_and_instances_as_the_last_step_left_them() {
    let log = Log::default();
    let instances = FakeInstances {
        log: &log,
        stable_ready: true,
    };
    let router = FakeRouter {
        log: &log,
        weight: Mutex::new(0),
    };
    let metrics = Script(Mutex::new(vec![(0, 0)]));
    let world = World {
        instances: &instances,
        router: &router,
        metrics: &metrics,
        external: None,
        interventions: &NoInterventions,
        drain_timeout: Duration::from_millis(100),
    };
    let steps = vec![CanaryStep {
        set_weight: Some(30),
        ..CanaryStep::default()
    }];
    let templates = BTreeMap::new();
    let mut events = Vec::new();
    let outcome = run_canary(
        Canary {
            service: "api",
            version: "2.0.0",
            replicas: 2,
            stable: inst("api", "1.0.0", 2),
            steps: &steps,
            background: None,
            templates: &templates,
            start_step: 0,
            resume: None,
            environment: "prod",
            soak: None,
            promotion: Promotion::Hold,
        },
        &world,
        &mut |e| events.push(e),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome:?}");
    assert_eq!(
        log.all(),
        vec!["start 2.0.0 Canary", "weight 0", "pools 2/2", "weight 30"]
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RolloutEvent::Promoted { .. }))
    );
}
