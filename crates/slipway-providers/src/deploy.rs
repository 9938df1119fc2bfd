//! `Deploy` steps on the process target: a progressive rollout per service through the
//! built-in proxy, or a straight replacement when there is nothing to canary against.
//!
//! The rollout controller (`slipway-rollout`) decides; this module wires it to the world
//! (process instances, the service's proxy), streams its [`RolloutEvent`]s to whoever
//! watches (the live view), and keeps a diagnostics bundle per rolled-back canary under
//! the run: the analysis measurements and the canary's logs, so the evidence survives the
//! instances.
//!
//! A canary that is rolled back fails its step with the reason (metric, value, threshold);
//! the engine then rolls the run back. A canary that pauses (inconclusive analysis, manual
//! pause) pauses the run with both versions running; a resume observes the step (mixed
//! versions: not done) and runs a fresh canary, retiring the paused one (traffic moved off
//! it first), unless a promote is pending: then the running canary is promoted as it is.
//!
//! The router of a service is the in-process proxy ([`crate::builtin::BuiltinRouter`],
//! `slipway demo`) or a proxy process of its own ([`crate::remote::RemoteRouter`],
//! `slipway deploy` on the process target); both are a [`ServiceRouter`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::plan::{GateKind, Plan, StepAction};
use slipway_rollout::{
    Canary, ExternalMetrics, Instances, Intervention, Interventions, NoInterventions, Outcome,
    PreTraffic, Role, RolloutEvent, TrafficRouter, World, run_canary_checked,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::interventions::{self, RunInterventions};
use crate::metrics::ProviderSet;
use crate::process::ProcessTarget;

/// A service's traffic router that also measures it: what a canary needs of a proxy.
pub trait ServiceRouter: TrafficRouter + slipway_rollout::MetricSource {}

impl<T: TrafficRouter + slipway_rollout::MetricSource> ServiceRouter for T {}

/// Where a run's interventions come from (its store) and its files go (`runs_dir`).
#[derive(Clone)]
struct RunSource {
    runs_dir: PathBuf,
    store: Option<Arc<dyn slipway_engine::Store>>,
}

/// A rollout event with the service it belongs to.
#[derive(Debug, Clone)]
pub struct ServiceEvent {
    /// Service.
    pub service: String,
    /// What happened.
    pub event: RolloutEvent,
}

/// Runs `Deploy` steps.
pub struct DeployTarget {
    plan: Plan,
    processes: ProcessTarget,
    routers: BTreeMap<String, Arc<dyn ServiceRouter>>,
    events: Option<UnboundedSender<ServiceEvent>>,
    interventions: Arc<dyn Interventions>,
    run_source: Option<RunSource>,
    /// Smoke checks run against the candidate before it gets any traffic.
    pre_traffic: Option<Arc<dyn PreTraffic>>,
    /// The plan's Prometheus/HTTP metric providers, asked by canary analysis.
    external: Arc<dyn ExternalMetrics>,
    diagnostics: PathBuf,
    /// How long a canary may take to drain after its weight went to 0.
    pub drain_timeout: Duration,
}

impl DeployTarget {
    /// A deploy target for one plan: `routers` holds the proxy of each service.
    pub fn new<R: ServiceRouter + 'static>(
        plan: Plan,
        processes: ProcessTarget,
        routers: BTreeMap<String, R>,
        diagnostics: impl Into<PathBuf>,
    ) -> Self {
        // The plan carries its providers: a deploy target always has them.
        let external = Arc::new(ProviderSet::from_plan(&plan));
        Self {
            plan,
            processes,
            routers: routers
                .into_iter()
                .map(|(k, r)| (k, Arc::new(r) as Arc<dyn ServiceRouter>))
                .collect(),
            events: None,
            interventions: Arc::new(NoInterventions),
            run_source: None,
            pre_traffic: None,
            external,
            diagnostics: diagnostics.into(),
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Replace the routers of some services (nginx, HAProxy, or any [`ServiceRouter`]).
    pub fn with_routers(mut self, routers: BTreeMap<String, Arc<dyn ServiceRouter>>) -> Self {
        self.routers.extend(routers);
        self
    }

    /// Stream rollout events here.
    pub fn with_events(mut self, tx: UnboundedSender<ServiceEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Where human interventions come from.
    pub fn with_interventions(mut self, i: Arc<dyn Interventions>) -> Self {
        self.interventions = i;
        self
    }

    /// Interventions per run, from other processes and machines: the run's journaled
    /// requests and control requests in `store` (see [`crate::interventions`]); its
    /// diagnostics go under `<runs_dir>/<run>/`. Replaces [`Self::with_interventions`]
    /// when a store is given.
    pub fn with_run_interventions(
        mut self,
        runs_dir: impl Into<PathBuf>,
        store: Option<Arc<dyn slipway_engine::Store>>,
    ) -> Self {
        self.run_source = Some(RunSource {
            runs_dir: runs_dir.into(),
            store,
        });
        self
    }

    /// Checks each canary must pass on its own address before the router sees it
    /// (e.g. [`crate::smoke_gate::SmokeGate`]).
    pub fn with_pre_traffic(mut self, p: Arc<dyn PreTraffic>) -> Self {
        self.pre_traffic = Some(p);
        self
    }

    /// Where canary analysis reads the metrics of external providers (by default the
    /// plan's `providers`, [`ProviderSet::from_plan`]).
    pub fn with_external_metrics(mut self, e: Arc<dyn ExternalMetrics>) -> Self {
        self.external = e;
        self
    }

    /// What is left of the plan's soak (`GateKind::Soak`) for this step: all of it, less
    /// the time since an earlier driver of the step journaled its soak's start (a resumed
    /// soak is not started over). `None` when the plan has no soak gate.
    fn soak_left(&self, prior: &[serde_json::Value]) -> Option<Duration> {
        let total = self.plan.gates.iter().find_map(|g| match g.kind {
            GateKind::Soak { seconds } => Some(Duration::from_secs(seconds)),
            _ => None,
        })?;
        let began = prior
            .iter()
            .find(|p| p["event"] == "soak_started")
            .and_then(|p| p["at_unix"].as_i64());
        let done = began
            .and_then(|at| u64::try_from(slipway_stdx::now().as_second() - at).ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        Some(total.saturating_sub(done))
    }

    fn service_of(ctx: &StepContext) -> &str {
        ctx.step_id.split('/').next().unwrap_or(&ctx.step_id)
    }

    fn router(&self, service: &str) -> Result<&dyn ServiceRouter, TargetError> {
        self.routers.get(service).map(AsRef::as_ref).ok_or_else(|| {
            TargetError::Io(format!(
                "no traffic router for service `{service}`: the process target needs one proxy per service"
            ))
        })
    }

    async fn deploy(
        &self,
        ctx: &StepContext,
        service: &str,
        version: &str,
        replicas: u32,
    ) -> Result<Applied, TargetError> {
        let io = |e: slipway_rollout::RolloutError| TargetError::Io(e.to_string());
        let router = self.router(service)?;
        let survey = self.processes.running(service);
        let serving = self.processes.serving(service);
        let (current, others): (Vec<_>, Vec<_>) =
            survey.alive.into_iter().partition(|i| i.version == version);
        // This version already serves (a re-applied step after a crash, or a deploy of the
        // current stable version): whatever else runs is a canary another run left
        // behind, never the stable pool.
        if !current.is_empty() && (others.is_empty() || serving.as_deref() == Some(version)) {
            if !others.is_empty() {
                retire(
                    router,
                    &self.processes,
                    &current,
                    &others,
                    self.drain_timeout,
                )
                .await?;
                ctx.report(serde_json::json!({
                    "event": "canary_retired",
                    "instances": others.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
                    "why": format!("left running by another run; {version} is the version serving"),
                }));
            }
            let addrs: Vec<_> = current.iter().map(|i| i.addr).collect();
            router.set_pools(&addrs, &[]).await.map_err(io)?;
            router.set_weight(0).await.map_err(io)?;
            if serving.as_deref() != Some(version) {
                self.processes.set_serving(service, Some(version));
            }
            return Ok(Applied::AlreadyDone {
                guard: format!(
                    "{} instance(s) of {service} {version} already serving",
                    current.len()
                ),
            });
        }
        // The stable pool: the version recorded as serving, else the one most instances
        // run. Any third version is a canary another run left behind: out first.
        let stable_version = serving
            .clone()
            .filter(|v| others.iter().any(|i| &i.version == v))
            .or_else(|| most_common_version(&others));
        let (stable, leftovers): (Vec<_>, Vec<_>) = others
            .into_iter()
            .partition(|i| Some(&i.version) == stable_version.as_ref());
        if !leftovers.is_empty() {
            retire(
                router,
                &self.processes,
                &stable,
                &leftovers,
                self.drain_timeout,
            )
            .await?;
            ctx.report(serde_json::json!({
                "event": "canary_retired",
                "instances": leftovers.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
                "why": "left running by another run; not part of the stable pool",
            }));
        }
        let previous = stable.first().map(|i| i.version.clone());
        // What this deploy replaces, journaled before anything changes: the undo restores
        // exactly this version, as its own run launched it.
        if !ctx.prior.iter().any(|p| p["event"] == "replaces") {
            ctx.report(serde_json::json!({
                "event": "replaces",
                "service": service,
                "version": version,
                "previous": previous,
            }));
        }
        // An earlier attempt of this step decided to roll its canary back (the analysis
        // failed it, or the router refused it) and its driver died before the step's
        // failure was journaled: the decision stands. What is left of the canary is
        // retired and the step fails with the journaled reason. A fresh canary would send
        // users to a version already judged bad, or ask a router that refused it to take
        // it again (Argo Rollouts keeps an aborted rollout aborted until a human retries
        // it; the fleet canary finishes a journaled rollback the same way).
        if let Some(reason) = rollback_decided(&ctx.prior) {
            return Err(self
                .finish_rollback(ctx, router, service, version, &stable, &current, &reason)
                .await);
        }
        let mut resume = None;
        if !current.is_empty() {
            if let Some(store) = self.run_source.as_ref().and_then(|s| s.store.as_deref())
                && interventions::pending(store, &ctx.run_id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.intervention == Intervention::Promote)
                && self.processes.ready(&current).await
                && let Ok(Some(r)) = interventions::take(store, &ctx.run_id).await
            {
                // A human promoted the canary that was left running (a paused run).
                interventions::report_received(ctx.progress.as_ref(), &r);
                return self
                    .promote_running(ctx, router, service, version, current, &stable)
                    .await;
            }
            // A canary of this run left by an interrupted attempt continues at its
            // recorded step and weight (Argo Rollouts' behaviour) when every instance is
            // still there and ready; otherwise it is retired (traffic first) and a fresh
            // one starts.
            // A `pause: manual` it waited at was passed by the human who resumed the run.
            let at = canary_position(&ctx.prior).map(|(step, weight)| {
                let manual = self
                    .plan
                    .strategy
                    .canary
                    .as_ref()
                    .and_then(|c| c.steps.get(step))
                    .is_some_and(|s| s.pause.as_deref() == Some("manual"));
                (if manual { step + 1 } else { step }, weight)
            });
            if let Some((step, weight)) = at
                && current.len() == replicas as usize
                && !stable.is_empty()
                && self.processes.ready(&current).await
            {
                resume = Some((step, weight, current.clone()));
            } else {
                retire(
                    router,
                    &self.processes,
                    &stable,
                    &current,
                    self.drain_timeout,
                )
                .await?;
                ctx.report(serde_json::json!({
                    "event": "canary_retired",
                    "instances": current.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
                    "why": "left running by an earlier attempt; a fresh canary starts",
                }));
            }
        }
        let emit_to = self.events.clone();
        let svc = service.to_owned();
        let mut log: Vec<RolloutEvent> = Vec::new();
        let processes = &self.processes;
        let mut emit = |e: RolloutEvent| {
            // Journaled by the engine as `step_progress`, before the step's outcome.
            if let Ok(mut v) = serde_json::to_value(&e) {
                if let RolloutEvent::SoakStarted { .. } = &e {
                    // When the soak began, so a resumed driver soaks only what is left.
                    v["at_unix"] = serde_json::json!(slipway_stdx::now().as_second());
                }
                ctx.report(v);
            }
            if let RolloutEvent::CanaryStarted { .. } = &e
                && let Some(l) = processes.launch_of(&svc, version)
            {
                // How the candidate was launched, for the audit trail (no env values).
                ctx.report(serde_json::json!({"event": "launched", "launch": l.summary()}));
            }
            if let Some(tx) = &emit_to {
                let _ = tx.send(ServiceEvent {
                    service: svc.clone(),
                    event: e.clone(),
                });
            }
            log.push(e);
        };
        let canary = self.plan.strategy.canary.as_ref();
        let per_run: Option<RunInterventions> = self
            .run_source
            .as_ref()
            .and_then(|src| src.store.clone())
            .map(|store| RunInterventions::new(ctx.run_id.clone(), store, ctx.progress.clone()));
        let humans: &dyn Interventions = match &per_run {
            Some(p) => p,
            None => self.interventions.as_ref(),
        };
        let outcome = match (canary, stable.is_empty()) {
            (Some(c), false) => {
                let world = World {
                    instances: &self.processes,
                    router,
                    metrics: router,
                    external: Some(self.external.as_ref()),
                    interventions: humans,
                    drain_timeout: self.drain_timeout,
                };
                let (start_step, resumed) = match resume {
                    Some((step, weight, instances)) => {
                        (step, Some(slipway_rollout::Resumed { instances, weight }))
                    }
                    None => (0, None),
                };
                let driven = run_canary_checked(
                    Canary {
                        service,
                        version,
                        replicas,
                        stable: stable.clone(),
                        steps: &c.steps,
                        background: c.analysis.as_ref(),
                        templates: &self.plan.analysis_templates,
                        start_step,
                        resume: resumed,
                        environment: &self.plan.environment,
                        soak: self.soak_left(&ctx.prior),
                        promotion: Default::default(),
                    },
                    &world,
                    self.pre_traffic.as_deref(),
                    &mut emit,
                )
                .await;
                match driven {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        return Err(self
                            .abandon_canary(router, service, version, &stable, e, &mut emit)
                            .await);
                    }
                }
            }
            _ => {
                // Nothing to compare against (first deploy) or not a canary: replace.
                let fresh = self
                    .processes
                    .start(service, version, replicas, Role::Stable)
                    .await
                    .map_err(|e| TargetError::Io(e.to_string()))?;
                if let Some(l) = self.processes.launch_of(service, version) {
                    ctx.report(serde_json::json!({"event": "launched", "launch": l.summary()}));
                }
                // Smoke tests on the new instances before the router is given them.
                if let Some(pt) = &self.pre_traffic {
                    let verdict = pt.check(&fresh).await;
                    let (passed, detail) = match &verdict {
                        Ok(d) | Err(d) => (verdict.is_ok(), d.clone()),
                    };
                    emit(RolloutEvent::PreTrafficChecked {
                        passed,
                        detail: detail.clone(),
                    });
                    if !passed {
                        self.processes.stop_instances(&fresh).await;
                        return Err(TargetError::Failed {
                            message: format!(
                                "smoke check(s) failed against the new {service} {version} before it got any traffic (it was stopped; the old version keeps serving): {detail}"
                            ),
                            output: StepOutput {
                                exit_code: None,
                                stdout: String::new(),
                                stderr: String::new(),
                                truncated: false,
                            },
                        });
                    }
                }
                // Its health probe too: a version failing it never gets traffic.
                if let Err(detail) = self.processes.healthy(&fresh).await {
                    emit(RolloutEvent::HealthFailed {
                        detail: detail.clone(),
                    });
                    self.processes.stop_instances(&fresh).await;
                    return Err(TargetError::Failed {
                        message: format!(
                            "the health probe of the new {service} {version} failed before it got any traffic (it was stopped; the old version keeps serving): {detail}"
                        ),
                        output: StepOutput::default(),
                    });
                }
                let addrs: Vec<_> = fresh.iter().map(|i| i.addr).collect();
                router
                    .set_pools(&addrs, &[])
                    .await
                    .map_err(|e| TargetError::Io(e.to_string()))?;
                router
                    .set_weight(0)
                    .await
                    .map_err(|e| TargetError::Io(e.to_string()))?;
                if let Some(left) = self.soak_left(&ctx.prior)
                    && let Err(detail) = self.soak_replaced(&fresh, left, &mut emit).await
                {
                    // Back to what served, still running and never stopped during the soak.
                    let back: Vec<_> = stable.iter().map(|i| i.addr).collect();
                    router.set_pools(&back, &[]).await.map_err(io)?;
                    self.processes.stop_instances(&fresh).await;
                    if stable.is_empty() {
                        self.processes.set_serving(service, None);
                    }
                    return Err(TargetError::Failed {
                        message: format!(
                            "{service} {version} failed its health probe during the soak and was taken out ({}): {detail}",
                            match &previous {
                                Some(p) => format!("{p} serves again"),
                                None => "no earlier version served".to_owned(),
                            }
                        ),
                        output: StepOutput::default(),
                    });
                }
                self.processes.set_serving(service, Some(version));
                self.processes.stop_instances(&stable).await;
                emit(RolloutEvent::Promoted {
                    version: version.to_owned(),
                });
                Outcome::Promoted { instances: fresh }
            }
        };
        if let Outcome::Promoted { .. } = &outcome {
            self.processes.set_serving(service, Some(version));
            if let Some(prev) = &previous {
                self.processes.record_previous(service, version, prev);
            }
        }
        match outcome {
            Outcome::Promoted { instances } => Ok(Applied::Ran {
                output: StepOutput {
                    exit_code: Some(0),
                    stdout: format!(
                        "{service} {version} serving on {} instance(s): {}",
                        instances.len(),
                        instances
                            .iter()
                            .map(|i| i.addr.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    stderr: String::new(),
                    truncated: false,
                },
            }),
            Outcome::RolledBack {
                reason,
                measurements,
            } => {
                let bundle =
                    self.keep_diagnostics(&ctx.run_id, service, version, &log, &measurements);
                Err(TargetError::Failed {
                    message: format!("canary rolled back: {reason}"),
                    output: StepOutput {
                        exit_code: None,
                        stdout: bundle
                            .map(|p| format!("diagnostics kept in {}", p.display()))
                            .unwrap_or_default(),
                        stderr: String::new(),
                        truncated: false,
                    },
                })
            }
            // Both versions keep running; the run pauses and a resume observes this step.
            Outcome::Paused { reason } => Err(TargetError::Paused { reason }),
        }
    }

    /// The controller stopped with an error (the router refused the candidate's pool as
    /// it was about to get traffic, or a change later on; an instance would not start):
    /// the step fails, and what this attempt started or continued of `version` is taken
    /// out of the router and stopped, the stable pool untouched — the engine undoes only
    /// steps that succeeded, so nothing else would. Journaled as a rollback
    /// (`rolling_back` first): a driver killed in between is resumed as one, the step
    /// applied again retiring what is left and failing with the journaled reason
    /// ([`rollback_decided`]), never starting a fresh canary. A router that refuses
    /// to serve the stable pool alone leaves the canary running, and the error says so.
    async fn abandon_canary(
        &self,
        router: &dyn ServiceRouter,
        service: &str,
        version: &str,
        stable: &[slipway_rollout::Instance],
        error: slipway_rollout::RolloutError,
        emit: &mut (dyn FnMut(RolloutEvent) + Send),
    ) -> TargetError {
        let started: Vec<_> = self
            .processes
            .running(service)
            .alive
            .into_iter()
            .filter(|i| i.version == version)
            .collect();
        let failed = |message: String| TargetError::Failed {
            message,
            output: StepOutput::default(),
        };
        if started.is_empty() {
            return failed(error.to_string());
        }
        let reason = format!("the canary cannot go on: {error}");
        emit(RolloutEvent::RollingBack {
            reason: reason.clone(),
        });
        let n = started.len();
        match retire(
            router,
            &self.processes,
            stable,
            &started,
            self.drain_timeout,
        )
        .await
        {
            Ok(()) => {
                emit(RolloutEvent::RolledBack { reason });
                failed(format!(
                    "{error}; the canary {service} {version} was taken out of the router and stopped ({n} instance(s)), {} serves as before",
                    stable
                        .first()
                        .map_or("the stable pool", |i| i.version.as_str())
                ))
            }
            Err(e) => failed(format!(
                "{error}; the canary {service} {version} ({n} instance(s)) keeps running: taking it out failed too ({e}); fix the router, then `slipway rollback` the run"
            )),
        }
    }

    /// [`rollback_decided`]: retire what is left of the canary (`current`, possibly
    /// nothing: the killed driver may have stopped it already) and fail with `reason`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's world as deploy() has it; a struct would only rename it"
    )]
    async fn finish_rollback(
        &self,
        ctx: &StepContext,
        router: &dyn ServiceRouter,
        service: &str,
        version: &str,
        stable: &[slipway_rollout::Instance],
        current: &[slipway_rollout::Instance],
        reason: &str,
    ) -> TargetError {
        let failed = |message: String| TargetError::Failed {
            message,
            output: StepOutput::default(),
        };
        if !current.is_empty() {
            if let Err(e) =
                retire(router, &self.processes, stable, current, self.drain_timeout).await
            {
                return failed(format!(
                    "canary rolled back: {reason}; after a restart the canary {service} {version} ({} instance(s)) keeps running: taking it out failed ({e}); fix the router, then `slipway rollback` the run",
                    current.len()
                ));
            }
            ctx.report(serde_json::json!({
                "event": "canary_retired",
                "instances": current.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
                "why": "an earlier attempt decided to roll it back; the rollback is finished",
            }));
        }
        if let Ok(v) = serde_json::to_value(RolloutEvent::RolledBack {
            reason: reason.to_owned(),
        }) {
            ctx.report(v);
        }
        failed(format!(
            "canary rolled back: {reason} (decided before a restart and finished after it; no fresh canary of {service} {version} was started)"
        ))
    }

    /// Promote canary instances found running (a paused canary a human promoted): all
    /// traffic to them, then they become the stable pool and the old stable stops.
    async fn promote_running(
        &self,
        ctx: &StepContext,
        router: &dyn ServiceRouter,
        service: &str,
        version: &str,
        canary: Vec<slipway_rollout::Instance>,
        stable: &[slipway_rollout::Instance],
    ) -> Result<Applied, TargetError> {
        let io = |e: slipway_rollout::RolloutError| TargetError::Io(e.to_string());
        let report = |e: RolloutEvent| {
            if let Ok(v) = serde_json::to_value(&e) {
                ctx.report(v);
            }
            if let Some(tx) = &self.events {
                let _ = tx.send(ServiceEvent {
                    service: service.to_owned(),
                    event: e,
                });
            }
        };
        report(RolloutEvent::Intervened {
            intervention: Intervention::Promote,
        });
        let stable_addrs: Vec<_> = stable.iter().map(|i| i.addr).collect();
        let canary_addrs: Vec<_> = canary.iter().map(|i| i.addr).collect();
        router
            .set_pools(&stable_addrs, &canary_addrs)
            .await
            .map_err(io)?;
        router.set_weight(100).await.map_err(io)?;
        report(RolloutEvent::WeightSet {
            weight: 100,
            verified: router.verify_weight().await,
        });
        // Both pools hold the canary while the weight returns to 0: no request meets an
        // empty pool between the two calls.
        router
            .set_pools(&canary_addrs, &canary_addrs)
            .await
            .map_err(io)?;
        router.set_weight(0).await.map_err(io)?;
        router.set_pools(&canary_addrs, &[]).await.map_err(io)?;
        self.processes.set_serving(service, Some(version));
        self.processes.stop_instances(stable).await;
        if let Some(prev) = stable.first() {
            self.processes
                .record_previous(service, version, &prev.version);
        }
        report(RolloutEvent::Promoted {
            version: version.to_owned(),
        });
        Ok(Applied::Ran {
            output: StepOutput {
                exit_code: Some(0),
                stdout: format!(
                    "{service} {version} promoted by request, serving on {} instance(s)",
                    canary.len()
                ),
                stderr: String::new(),
                truncated: false,
            },
        })
    }

    /// The soak of a replaced service (no canary to hold at full weight): the new
    /// instances serve alone for `left`, their health probed every second, while the old
    /// ones keep running unrouted so a failure puts them back at once. `Err` is the
    /// failed probe's answer.
    async fn soak_replaced(
        &self,
        fresh: &[slipway_rollout::Instance],
        left: Duration,
        emit: &mut (dyn FnMut(RolloutEvent) + Send),
    ) -> Result<(), String> {
        emit(RolloutEvent::SoakStarted {
            index: 0,
            seconds: left.as_secs(),
        });
        let started = std::time::Instant::now();
        let tick = Duration::from_secs(1).min(left.max(Duration::from_millis(1)));
        loop {
            tokio::time::sleep(tick).await;
            if let Err(detail) = self.processes.healthy(fresh).await {
                emit(RolloutEvent::HealthFailed {
                    detail: detail.clone(),
                });
                return Err(detail);
            }
            if started.elapsed() >= left {
                break;
            }
        }
        emit(RolloutEvent::SoakPassed {
            seconds: started.elapsed().as_secs(),
        });
        Ok(())
    }

    /// Take a canary of `version` out of service: no new traffic, drained, stopped; the
    /// other version keeps (or takes back) the whole pool. For an abort of a paused run,
    /// which nobody drives. Returns what was done, `None` when no canary was running.
    pub async fn retire_canary(
        &self,
        service: &str,
        version: &str,
    ) -> Result<Option<String>, TargetError> {
        let router = self.router(service)?;
        let survey = self.processes.running(service);
        let (canary, stable): (Vec<_>, Vec<_>) =
            survey.alive.into_iter().partition(|i| i.version == version);
        if canary.is_empty() || stable.is_empty() {
            return Ok(None);
        }
        retire(
            router,
            &self.processes,
            &stable,
            &canary,
            self.drain_timeout,
        )
        .await?;
        Ok(Some(format!(
            "{service}: canary {version} retired ({} instance(s) stopped), {} stable instance(s) serving",
            canary.len(),
            stable.len()
        )))
    }

    /// Measurements and canary logs into `<diagnostics>/<service>-<version>/`, or, with
    /// run interventions configured, under the run: `<runs dir>/<run>/diagnostics/…`.
    ///
    /// The directory is 0700 and its files 0600, and every file passes through the
    /// environment's redactor (the instances' one): a canary's log may hold a secret it
    /// printed, and the bundle is kept long after the run. A log is copied bounded, its
    /// last [`DIAGNOSTIC_LOG_BYTES`], redacted before it is cut.
    fn keep_diagnostics(
        &self,
        run: &str,
        service: &str,
        version: &str,
        log: &[RolloutEvent],
        measurements: &[slipway_model::analysis::Measurement],
    ) -> Option<PathBuf> {
        use std::os::unix::fs::DirBuilderExt as _;
        let base = match &self.run_source {
            Some(src) => src.runs_dir.join(run).join("diagnostics"),
            None => self.diagnostics.clone(),
        };
        let dir = base.join(format!("{service}-{version}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ok()?;
        let redactor = self.processes.redactor();
        let events: String = log
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(|l| l + "\n")
            .collect();
        write_private(
            &dir.join("rollout-events.jsonl"),
            redactor.redact(&events).as_bytes(),
        )
        .ok()?;
        let measurements = serde_json::to_string_pretty(measurements).ok()?;
        write_private(
            &dir.join("measurements.json"),
            redactor.redact(&measurements).as_bytes(),
        )
        .ok()?;
        for e in log {
            if let RolloutEvent::CanaryStarted { instances } = e {
                for i in instances {
                    if let Some(p) = &i.log_path {
                        let text = crate::process::read_log_tail(
                            std::path::Path::new(p),
                            DIAGNOSTIC_LOG_BYTES,
                            redactor,
                        );
                        let _ = write_private(&dir.join(format!("{}.log", i.id)), text.as_bytes());
                    }
                }
            }
        }
        Some(dir)
    }
}

/// How much of each canary instance's log a diagnostics bundle keeps (its end).
pub const DIAGNOSTIC_LOG_BYTES: usize = 1024 * 1024;

/// Write `bytes` to a new file readable by its owner only (an existing one is replaced
/// and made 0600 too).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

impl Target for DeployTarget {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            match action {
                StepAction::Deploy { version, replicas } => {
                    self.deploy(ctx, Self::service_of(ctx), version, *replicas)
                        .await
                }
                other => Err(TargetError::Unsupported {
                    target: "process",
                    action: slipway_engine::target::action_kind(other),
                }),
            }
        })
    }

    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            let StepAction::Deploy { version, .. } = action else {
                return Err(TargetError::Unsupported {
                    target: "process",
                    action: slipway_engine::target::action_kind(action),
                });
            };
            let service = Self::service_of(ctx);
            let survey = self.processes.running(service);
            let serving =
                !survey.alive.is_empty() && survey.alive.iter().all(|i| &i.version == version);
            let evidence = format!(
                "{} alive instance(s) of {service}: {}; {} dead{}",
                survey.alive.len(),
                survey
                    .alive
                    .iter()
                    .map(|i| format!("{}@{}", i.version, i.addr))
                    .collect::<Vec<_>>()
                    .join(", "),
                survey.dead.len(),
                if survey.dead.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        survey
                            .dead
                            .iter()
                            .map(|i| format!("{}@{}", i.id, i.addr))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            if serving {
                if self.processes.serving(service).as_deref() != Some(version.as_str()) {
                    self.processes.set_serving(service, Some(version));
                }
                // Make sure the proxy routes to what is running (the proxy may be new).
                if let Ok(r) = self.router(service) {
                    let addrs: Vec<_> = survey.alive.iter().map(|i| i.addr).collect();
                    let _ = r.set_pools(&addrs, &[]).await;
                    let _ = r.set_weight(0).await;
                }
                Ok(Observation::Done { evidence })
            } else {
                Ok(Observation::NotDone { evidence })
            }
        })
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async move {
            let StepAction::Deploy { version, .. } = action else {
                return Ok(None);
            };
            let said = self.take_back(ctx, Self::service_of(ctx), version).await?;
            Ok(Some(StepOutput {
                exit_code: Some(0),
                stdout: said,
                stderr: String::new(),
                truncated: false,
            }))
        })
    }

    fn retract<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>> {
        Box::pin(async move {
            let StepAction::Deploy { version, .. } = action else {
                return Ok(None);
            };
            self.take_back(ctx, Self::service_of(ctx), version)
                .await
                .map(Some)
        })
    }
}

impl DeployTarget {
    /// Put a service back on what served before this step: the undo of a deploy step,
    /// and the retraction of one found not done (a paused or interrupted canary).
    ///
    /// - A canary of `version` beside the stable pool is taken out of service (traffic
    ///   first, drained, stopped).
    /// - A promoted `version` is replaced by the version it replaced — as this step's own
    ///   run recorded it (`replaces`), else as recorded at promotion, else as the spec
    ///   says is deployed — started from that version's launch record exactly as its own
    ///   run launched it (command, environment, config, artifact), made ready, given the
    ///   traffic, and only then are the instances of `version` stopped. With no earlier
    ///   version (a first deploy) the service is stopped.
    /// - A service a later release moved on from `version` is left alone: undoing this
    ///   step must not replace what another run put there.
    ///
    /// Safe to repeat: each case acts only on what it finds running.
    async fn take_back(
        &self,
        ctx: &StepContext,
        service: &str,
        version: &str,
    ) -> Result<String, TargetError> {
        let io = |e: slipway_rollout::RolloutError| TargetError::Io(e.to_string());
        let router = self.router(service)?;
        let survey = self.processes.running(service);
        let serving = self.processes.serving(service);
        let previous: Option<String> = ctx
            .prior
            .iter()
            .rev()
            .find(|p| p["event"] == "replaces")
            .map(|p| p["previous"].as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                self.processes
                    .previous_of(service, version)
                    .or_else(|| self.plan.env.deployed.get(service).cloned())
            });
        let (ours, others): (Vec<_>, Vec<_>) =
            survey.alive.into_iter().partition(|i| i.version == version);
        let promoted = serving.as_deref() == Some(version)
            || (serving.is_none() && !ours.is_empty() && others.is_empty());
        if !promoted {
            if ours.is_empty() {
                return Ok(match serving {
                    Some(s) if Some(&s) == previous.as_ref() => {
                        format!("{service} already back on {s}; nothing of {version} runs")
                    }
                    Some(s) => format!(
                        "{service} serves {s} now, not {version} (a later release moved it on); nothing of {version} runs, left as it is"
                    ),
                    None => format!("nothing of {service} {version} runs"),
                });
            }
            // A canary never promoted: out of service, the stable pool keeps serving.
            let stable: Vec<_> = others
                .iter()
                .filter(|i| serving.as_ref().is_none_or(|s| &i.version == s))
                .cloned()
                .collect();
            if stable.is_empty() {
                return Err(TargetError::Failed {
                    message: format!(
                        "{service}: the canary {version} runs but no stable instance does, so taking it out would leave nobody serving; deploy the version you want serving"
                    ),
                    output: StepOutput::default(),
                });
            }
            retire(router, &self.processes, &stable, &ours, self.drain_timeout).await?;
            return Ok(format!(
                "{service}: canary {version} taken out of service ({} instance(s) stopped), {} {} instance(s) serving",
                ours.len(),
                stable.len(),
                stable[0].version
            ));
        }
        let Some(prev) = previous else {
            // A first deploy: nothing served before it.
            router.set_weight(0).await.map_err(io)?;
            router.set_pools(&[], &[]).await.map_err(io)?;
            self.processes.stop_instances(&ours).await;
            self.processes.stop_instances(&others).await;
            self.processes.set_serving(service, None);
            return Ok(format!(
                "{service} {version} stopped; no earlier version served before it"
            ));
        };
        let alive_prev: Vec<_> = others
            .iter()
            .filter(|i| i.version == prev)
            .cloned()
            .collect();
        let launch = self.processes.launch_of(service, &prev);
        let wanted = launch.as_ref().map_or(1, |l| l.replicas.max(1) as usize);
        let (restored, how) = if alive_prev.len() >= wanted
            && self.processes.ready(&alive_prev).await
        {
            (alive_prev, "its instances were still running".to_owned())
        } else {
            // Some of it left by an interrupted undo: started again whole, so the version
            // serves with its own replicas.
            self.processes.stop_instances(&alive_prev).await;
            let Some(launch) = launch else {
                return Err(TargetError::Failed {
                    message: format!(
                        "{service} {version} was promoted and how {service} {prev} was launched is not recorded (it was not started by this slipway, or by a version before launch records); it is not restarted with {version}'s command: roll forward, or deploy {prev} again"
                    ),
                    output: StepOutput::default(),
                });
            };
            let fresh = self
                .processes
                .relaunch(&launch, Role::Stable)
                .await
                .map_err(|e| TargetError::Failed {
                    message: format!("restore {service} {prev}: {e}"),
                    output: StepOutput::default(),
                })?;
            ctx.report(serde_json::json!({
                "event": "relaunched",
                "launch": launch.summary(),
                "instances": fresh.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
            }));
            (
                fresh,
                format!("relaunched as it was launched: `{}`", launch.command),
            )
        };
        let addrs: Vec<_> = restored.iter().map(|i| i.addr).collect();
        // The restored version is ready (a start waits for it) before traffic moves.
        router.set_weight(0).await.map_err(io)?;
        router.set_pools(&addrs, &[]).await.map_err(io)?;
        self.processes.set_serving(service, Some(&prev));
        let rest: Vec<_> = ours
            .into_iter()
            .chain(others.into_iter().filter(|i| i.version != prev))
            .collect();
        self.processes.stop_instances(&rest).await;
        Ok(format!("{service} back on {prev} ({how})"))
    }
}

/// The version most of these instances run (ties: the smallest, for determinism).
fn most_common_version(instances: &[slipway_rollout::Instance]) -> Option<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for i in instances {
        *count.entry(i.version.as_str()).or_insert(0) += 1;
    }
    let most = count.values().copied().max()?;
    count
        .into_iter()
        .find(|(_, n)| *n == most)
        .map(|(v, _)| v.to_owned())
}

/// Where this step's canary was when its driver stopped, from what the step journaled:
/// the canary step it was in and the weight it served at. `None` when no canary of the
/// step is live (never started, or it ended: promoted or rolled back).
fn canary_position(prior: &[serde_json::Value]) -> Option<(usize, u8)> {
    let start = prior
        .iter()
        .rposition(|p| p["event"] == "canary_started" || p["event"] == "canary_resumed")?;
    let mut step = prior[start]["step"].as_u64().unwrap_or(0) as usize;
    let mut weight = prior[start]["weight"].as_u64().unwrap_or(0) as u8;
    for p in &prior[start + 1..] {
        match p["event"].as_str() {
            Some("step_started" | "soak_started") => {
                step = p["index"].as_u64().unwrap_or(0) as usize;
            }
            Some("weight_set") => weight = p["weight"].as_u64().unwrap_or(0).min(100) as u8,
            Some("promoted" | "rolling_back" | "rolled_back") => return None,
            _ => {}
        }
    }
    Some((step, weight))
}

/// The reason of a rollback an earlier attempt journaled (`rolling_back`) for the canary
/// it started or continued last, if it decided one: the step applied again finishes that
/// rollback instead of starting a fresh canary.
fn rollback_decided(prior: &[serde_json::Value]) -> Option<String> {
    let start = prior
        .iter()
        .rposition(|p| p["event"] == "canary_started" || p["event"] == "canary_resumed")?;
    prior[start + 1..]
        .iter()
        .find(|p| p["event"] == "rolling_back")
        .map(|p| {
            p["reason"]
                .as_str()
                .unwrap_or("no reason recorded")
                .to_owned()
        })
}

/// Weight to 0 with the stable pool alone in front (the canary kept in its pool while it
/// drains so in-flight requests are counted), then the canary stops.
async fn retire(
    router: &dyn ServiceRouter,
    processes: &ProcessTarget,
    stable: &[slipway_rollout::Instance],
    canary: &[slipway_rollout::Instance],
    drain_timeout: Duration,
) -> Result<(), TargetError> {
    let io = |e: slipway_rollout::RolloutError| TargetError::Io(e.to_string());
    let stable_addrs: Vec<_> = stable.iter().map(|i| i.addr).collect();
    let canary_addrs: Vec<_> = canary.iter().map(|i| i.addr).collect();
    if !stable.is_empty() {
        router.set_weight(0).await.map_err(io)?;
        // Drained in its pool where the router takes it there; a router that refuses
        // (a canary it never served, e.g. a HAProxy backend without the affinity cookie)
        // only has to serve the stable pool alone before the canary stops.
        if router.set_pools(&stable_addrs, &canary_addrs).await.is_ok() {
            let start = std::time::Instant::now();
            while router.canary_in_flight().await.unwrap_or(0) > 0
                && start.elapsed() < drain_timeout
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        router.set_pools(&stable_addrs, &[]).await.map_err(io)?;
    }
    processes.stop_instances(canary).await;
    Ok(())
}

/// One target for a whole plan: each action kind goes to the target that handles it.
pub struct CompositeTarget {
    /// `exec` steps.
    pub exec: Option<Arc<dyn Target>>,
    /// `deploy` steps.
    pub deploy: Option<Arc<dyn Target>>,
    /// `migrate` steps.
    pub migrate: Option<Arc<dyn Target>>,
    /// `verify_artifact` steps.
    pub artifact: Option<Arc<dyn Target>>,
    /// `render_config` steps (`crate::config::ConfigTarget`).
    pub config: Option<Arc<dyn Target>>,
}

impl CompositeTarget {
    fn pick(&self, action: &StepAction) -> Result<&Arc<dyn Target>, TargetError> {
        let t = match action {
            StepAction::Exec(_) => &self.exec,
            StepAction::Deploy { .. } => &self.deploy,
            StepAction::Migrate { .. } => &self.migrate,
            StepAction::VerifyArtifact { .. } => &self.artifact,
            StepAction::RenderConfig { .. } => &self.config,
        };
        t.as_ref().ok_or(TargetError::Unsupported {
            target: "composite",
            action: slipway_engine::target::action_kind(action),
        })
    }
}

impl Target for CompositeTarget {
    fn kind(&self) -> &'static str {
        "composite"
    }
    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        match self.pick(action) {
            Ok(t) => t.apply(ctx, action),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        match self.pick(action) {
            Ok(t) => t.observe(ctx, action),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        match self.pick(action) {
            Ok(t) => t.undo(ctx, action),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn retract<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>> {
        match self.pick(action) {
            Ok(t) => t.retract(ctx, action),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn observe_undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        match self.pick(action) {
            Ok(t) => t.observe_undo(ctx, action),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Every part once (on the ssh target `exec` and `deploy` are one target), all
            // at once: each bounds its own close.
            let mut parts: Vec<&Arc<dyn Target>> = Vec::new();
            for t in [
                &self.exec,
                &self.deploy,
                &self.migrate,
                &self.artifact,
                &self.config,
            ]
            .into_iter()
            .flatten()
            {
                if !parts.iter().any(|p| Arc::ptr_eq(p, t)) {
                    parts.push(t);
                }
            }
            futures_util::future::join_all(parts.into_iter().map(|t| t.close())).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::rollback_decided;
    use serde_json::json;

    #[test]
    fn a_journaled_rollback_stands_only_for_the_canary_it_was_decided_for() {
        let started = json!({"event": "canary_started", "instances": []});
        let refused = json!({"event": "rolling_back", "reason": "the router refused"});
        assert_eq!(rollback_decided(&[]), None);
        // Decided, not finished: the step applied again finishes it.
        let prior = [
            started.clone(),
            json!({"event": "weight_set", "weight": 20}),
            refused.clone(),
        ];
        assert_eq!(
            rollback_decided(&prior).as_deref(),
            Some("the router refused")
        );
        // A canary started after that rollback is the one that counts.
        let prior = [
            started.clone(),
            refused,
            json!({"event": "rolled_back", "reason": "the router refused"}),
            started.clone(),
        ];
        assert_eq!(rollback_decided(&prior), None);
        // Paused, nothing decided: the canary continues.
        let prior = [started, json!({"event": "paused", "reason": "manual"})];
        assert_eq!(rollback_decided(&prior), None);
    }
}
