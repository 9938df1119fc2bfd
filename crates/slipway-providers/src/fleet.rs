//! Fleet canaries: a `run:` service on the hosts of an ssh inventory group, behind a
//! load balancer with one server per host (named as the host) — an HAProxy backend or an
//! nginx upstream, both through [`crate::balancer::Balancer`], the only thing used here —
//! deployed with `strategy: canary`.
//!
//! # What happens
//!
//! The group's waves (`target.ssh.batch`) are the unit of change. Each host's weight in
//! the backend is read and journaled first ([`StepEvent::FleetCanary`]): a rollback and
//! the end of the canary put exactly those back, also from a resumed driver. Then:
//!
//! 1. **The canary wave.** Each host of the first wave gets weight 0, is drained, has its
//!    instances replaced by the new version (the supervised deploy of
//!    [`crate::ssh_service`], with its completion marker) and is put back in service,
//!    still at weight 0. The rollout controller (`slipway-rollout`, the same controller
//!    and judge as the process target) then runs the canary's steps with the hosts as
//!    its pools: `set_weight: W` gives the canary hosts W% of new requests through
//!    absolute per-server weights ([`crate::haproxy::server_weights`]), and analysis
//!    reads the balancer's per-host counters (HAProxy's `show stat`, or nginx's access
//!    log: responses and 5xx of the canary hosts against the other hosts').
//! 2. **The next waves.** Once the canary passed, its hosts get their own weights back,
//!    and each later wave is deployed like a rolling deploy (drained, replaced, back in
//!    service at its own weight). Between waves the canary's last analysis runs again on
//!    every changed host's own traffic against the hosts not changed yet (at their
//!    natural share); after the last wave there is nothing left to compare with.
//! 3. **Rollback.** A failed analysis rolls back exactly the hosts that changed in this
//!    step: their weight goes to 0 (the others take the traffic), they drain, the
//!    version each of them ran before is started again from its own launch record (the
//!    supervisor's `rollback`, which also removes the step's marker there), and every
//!    host's journaled weight is put back. The step then fails with the analysis's reason
//!    and the engine rolls the run back.
//!
//! The failure budget and `batch` are the ssh target's, per host: a host whose deploy
//! fails within the budget is put back at its own weight running what it ran, left out
//! of the later steps, and counted as a stable host; past the budget every changed host
//! is rolled back and the step fails.
//!
//! # A driver that dies
//!
//! Nothing here is kept in memory that the journal and the hosts do not also hold:
//! instances are supervised on the hosts and keep serving through the balancer at the weights
//! in force. A resumed driver reads the step's progress: the journaled weights, whether
//! the canary wave passed, and the canary's step and weight; the canary hosts are found
//! by their completion markers (their deploy is not repeated) and the controller
//! continues the canary at its step and weight (an analysis there starts fresh). A
//! rollback that was under way is finished.
//!
//! Used when the step has a version to compare against (some host outside the canary
//! wave runs another version) and the group has more than one wave; otherwise the
//! deploy is the plain rolling one of [`crate::ssh`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use slipway_engine::{Applied, StepContext, StepOutput, TargetError};
use slipway_model::analysis::{VersionWindow, Window};
use slipway_model::plan::StepAction;
use slipway_model::progress::{Progress, StepEvent};
use slipway_model::spec::{AnalysisStep, AnalysisTemplate, CanaryStep, ExecStep};
use slipway_rollout::{
    BoxFuture, Canary, ExternalMetrics, Instance, Instances, Intervention, Interventions,
    MetricSource, NoInterventions, Outcome, Promotion, Resumed, Role, RolloutError, RolloutEvent,
    TrafficRouter, World, run_canary_checked,
};

use crate::balancer::Balancer;
use crate::haproxy::server_weights;
use crate::ssh::{HostOutcome, Session, SshTarget};
use crate::ssh_service;

/// The canary of a service on the ssh target: the plan's strategy and what its analysis
/// needs.
pub struct FleetCanary {
    /// The canary's steps.
    pub steps: Vec<CanaryStep>,
    /// Its background analysis.
    pub background: Option<AnalysisStep>,
    /// The plan's analysis templates.
    pub templates: BTreeMap<String, AnalysisTemplate>,
    /// The environment (for external metric queries).
    pub environment: String,
    /// The plan's external metric providers (Prometheus, HTTP JSON).
    pub external: Option<Arc<dyn ExternalMetrics>>,
    /// The run's store: operators' pause, resume, promote and abort reach the canary
    /// through it ([`crate::interventions`]); `None`: none do.
    pub store: Option<Arc<dyn slipway_engine::Store>>,
}

impl std::fmt::Debug for FleetCanary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCanary")
            .field("steps", &self.steps)
            .field("background", &self.background)
            .finish_non_exhaustive()
    }
}

impl FleetCanary {
    /// The analysis run between later waves: the canary's last analysis step, else its
    /// background analysis.
    fn between_waves(&self) -> Option<AnalysisStep> {
        self.steps
            .iter()
            .rev()
            .find_map(|s| s.analysis.clone())
            .or_else(|| self.background.clone())
    }
}

/// How long the canary waits for the changed hosts' requests in flight after their
/// weight went to 0, before they are rolled back anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One host as the fleet canary sees it.
#[derive(Clone)]
struct FleetHost {
    index: usize,
    name: String,
    session: Arc<Session>,
    addr: SocketAddr,
    /// The version it ran when the step started (`None`: nothing).
    current: Option<String>,
}

/// What the step's earlier attempts journaled (see the module docs).
#[derive(Debug, Default)]
struct Prior {
    weights: Option<BTreeMap<String, u64>>,
    waves_passed: usize,
    /// The canary's step and weight, while it ran.
    position: Option<(usize, u8)>,
    rolling_back: Option<String>,
    restored: bool,
    /// An operator promoted the canary: the later waves go without analysis.
    promoted: bool,
}

impl Prior {
    fn read(prior: &[serde_json::Value]) -> Self {
        let mut p = Self::default();
        let Some(start) = prior.iter().rposition(|v| v["event"] == "fleet_canary") else {
            return p;
        };
        if let Progress::Step(StepEvent::FleetCanary { weights, .. }) = Progress::of(&prior[start])
        {
            p.weights = Some(weights);
        }
        let mut live = false;
        for v in &prior[start + 1..] {
            match Progress::of(v) {
                Progress::Rollout(RolloutEvent::CanaryStarted { .. }) if p.waves_passed == 0 => {
                    live = true;
                    p.position = Some((0, 0));
                }
                Progress::Rollout(RolloutEvent::CanaryResumed { step, weight, .. })
                    if p.waves_passed == 0 =>
                {
                    live = true;
                    p.position = Some((step, weight));
                }
                Progress::Rollout(RolloutEvent::StepStarted { index, .. }) if live => {
                    if let Some(pos) = p.position.as_mut() {
                        pos.0 = index;
                    }
                }
                Progress::Rollout(RolloutEvent::WeightSet { weight, .. }) if live => {
                    if let Some(pos) = p.position.as_mut() {
                        pos.1 = weight.min(100);
                    }
                }
                Progress::Rollout(RolloutEvent::RollingBack { reason }) => {
                    p.rolling_back = Some(reason);
                }
                Progress::Step(StepEvent::FleetWavePassed { wave, .. }) => {
                    p.waves_passed = p.waves_passed.max(wave);
                    live = false;
                    p.position = None;
                }
                Progress::Step(StepEvent::FleetWeightsRestored { .. }) => p.restored = true,
                Progress::Rollout(RolloutEvent::Intervened {
                    intervention: Intervention::Promote,
                }) => p.promoted = true,
                _ => {}
            }
        }
        p
    }
}

/// The address a host's first instance listens on, as the controller's pools name it. A
/// host whose address does not resolve here gets a label in 240.0.0.0/4 (reserved,
/// never routed): the pools are mapped back to hosts, never connected to.
fn host_addr(address: &str, port: u16, index: usize) -> SocketAddr {
    (address, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| {
            let i = u32::try_from(index).unwrap_or(u32::MAX) & 0x00ff_ffff;
            SocketAddr::from((std::net::Ipv4Addr::from(0xf000_0000 | i), port))
        })
}

/// The canary's view of the load balancer: pools are sets of hosts (servers named after
/// them).
struct FleetRouter<'a> {
    lb: &'a dyn Balancer,
    /// Every host with a server in the backend, by address.
    hosts: BTreeMap<SocketAddr, String>,
    /// The hosts in the canary pool.
    canary: Mutex<BTreeSet<String>>,
    /// Hosts in neither pool (weight 0): canary hosts after a rollback took them out.
    out: Mutex<BTreeSet<String>>,
    /// The canary's weight this router last set, to set again when the balancer lost it.
    weight: Mutex<Option<u8>>,
    /// The previous window's sums: when, and (requests, 5xx) of canary and stable.
    last: Mutex<Option<(Instant, Sums, Sums)>>,
}

/// Requests and 5xx responses of a pool.
type Sums = (u64, u64);

/// Hosts' weights, by host name, in the order they are to be set.
type Weights = Vec<(String, u64)>;

impl FleetRouter<'_> {
    fn canary(&self) -> BTreeSet<String> {
        self.canary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn out(&self) -> BTreeSet<String> {
        self.out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Each host's weight for the canary at `weight`%: (the canary hosts', the others')
    /// — a host out of both pools at 0 among the others.
    fn weights_for(&self, weight: u8) -> (Weights, Weights) {
        let canary = self.canary();
        let out = self.out();
        let stable: Vec<&String> = self
            .hosts
            .values()
            .filter(|h| !canary.contains(*h) && !out.contains(*h))
            .collect();
        let (ws, wc) = server_weights(weight, stable.len(), canary.len());
        let c = canary.iter().map(|h| (h.clone(), wc)).collect();
        let s = stable
            .into_iter()
            .map(|h| (h.clone(), ws))
            .chain(out.iter().map(|h| (h.clone(), 0)))
            .collect();
        (c, s)
    }
}

/// One host's weight.
async fn set_weight(lb: &dyn Balancer, host: &str, weight: u64) -> Result<(), String> {
    lb.set_weights(&[(host.to_owned(), weight)]).await
}

impl TrafficRouter for FleetRouter<'_> {
    fn set_pools<'a>(
        &'a self,
        _stable: &'a [SocketAddr],
        canary: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        Box::pin(async move {
            // The hosts are the pools: only membership changes. A host leaving the canary
            // pool without becoming stable (a rollback) is taken out (weight 0) until
            // its previous version runs again and its own weight is put back.
            let now: BTreeSet<String> = canary
                .iter()
                .filter_map(|a| self.hosts.get(a).cloned())
                .collect();
            let before = self.canary();
            let left: Vec<String> = before.difference(&now).cloned().collect();
            if !left.is_empty() {
                let zero: Vec<(String, u64)> = left.iter().map(|h| (h.clone(), 0)).collect();
                self.lb
                    .set_weights(&zero)
                    .await
                    .map_err(RolloutError::Router)?;
            }
            self.out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(left);
            *self
                .canary
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
            Ok(())
        })
    }

    fn set_weight(&self, weight: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            let (c, s) = self.weights_for(weight);
            // The pool gaining weight first, so the servers never all weigh 0.
            let current = self.verify_weight().await.unwrap_or(0);
            let order: Vec<(String, u64)> = if weight >= current {
                c.into_iter().chain(s).collect()
            } else {
                s.into_iter().chain(c).collect()
            };
            self.lb
                .set_weights(&order)
                .await
                .map_err(RolloutError::Router)?;
            *self
                .weight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(weight);
            Ok(())
        })
    }

    /// A balancer reloaded mid-canary (HAProxy's runtime API forgets the weights it was
    /// told; the configuration's come back) no longer gives the canary its share: the
    /// hosts' weights are read at each interval and, where one differs from what the
    /// canary's weight gives it, all are set again. nginx keeps them (the upstream file
    /// is Slipway's): nothing is found lost there.
    fn reconcile(&self) -> BoxFuture<'_, Result<Option<String>, RolloutError>> {
        Box::pin(async move {
            let Some(weight) = *self
                .weight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            else {
                return Ok(None);
            };
            let have = self.lb.hosts().await.map_err(RolloutError::Router)?;
            let (c, s) = self.weights_for(weight);
            let lost: Vec<String> = c
                .iter()
                .chain(&s)
                .filter_map(|(host, want)| {
                    let now = have.get(host).map(|h| h.weight);
                    (now != Some(*want)).then(|| {
                        format!(
                            "{} at {} instead of {want}",
                            self.lb.server(host),
                            now.map_or("nothing (not in the balancer)".to_owned(), |w| w
                                .to_string())
                        )
                    })
                })
                .collect();
            if lost.is_empty() {
                return Ok(None);
            }
            self.set_weight(weight).await?;
            Ok(Some(format!(
                "the weights ({}), the canary at {weight}% again",
                lost.join(", ")
            )))
        })
    }

    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        Box::pin(async move {
            let hosts = self.lb.hosts().await.ok()?;
            let canary = self.canary();
            let (mut c, mut all) = (0u64, 0u64);
            for (name, s) in hosts.iter().filter(|(_, s)| s.in_service) {
                if !self.hosts.values().any(|h| h == name) {
                    continue;
                }
                all += s.weight;
                if canary.contains(name) {
                    c += s.weight;
                }
            }
            if all == 0 {
                return None;
            }
            u8::try_from((c * 100 + all / 2) / all).ok()
        })
    }

    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            let counts = self.lb.counts().await.ok()?;
            let canary = self.canary();
            counts
                .iter()
                .filter(|(n, _)| canary.contains(*n))
                .map(|(_, s)| s.in_flight)
                .sum()
        })
    }
}

impl MetricSource for FleetRouter<'_> {
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        Box::pin(async move {
            let stats = self.lb.counts().await?;
            let canary = self.canary();
            let (mut c, mut s) = ((0u64, 0u64), (0u64, 0u64));
            for (name, st) in &stats {
                if !self.hosts.values().any(|h| h == name) {
                    continue;
                }
                let pool = if canary.contains(name) {
                    &mut c
                } else {
                    &mut s
                };
                pool.0 += st.responses;
                pool.1 += st.errors;
            }
            let now = Instant::now();
            let previous = self
                .last
                .lock()
                .map_err(|_| "metric state poisoned".to_owned())?
                .replace((now, c, s));
            // The pools change between windows (a wave joins the canary): a window is
            // the difference of each pool's sums, and a negative one (HAProxy restarted,
            // a host moved pools, a new reader of nginx's log) counts from zero.
            let (since, pc, ps) = previous.unwrap_or((now, (0, 0), (0, 0)));
            let diff = |now: (u64, u64), before: (u64, u64)| {
                if now.0 < before.0 {
                    now
                } else {
                    (now.0 - before.0, now.1.saturating_sub(before.1))
                }
            };
            let seconds = now.duration_since(since).as_secs_f64();
            let v = |(requests, errors): (u64, u64)| VersionWindow {
                requests,
                errors,
                p50_ms: None,
                p95_ms: None,
                p99_ms: None,
                seconds,
                samples_ms: Vec::new(),
            };
            // No match routes in a fleet canary: nothing is counted apart.
            Ok(Window {
                canary: v(diff(c, pc)),
                stable: v(diff(s, ps)),
                ..Window::default()
            })
        })
    }
}

/// The canary's hosts as the controller's instances: started before the controller runs
/// (the wave's deploy), stopped by rolling each back to its previous version.
struct FleetHosts<'a> {
    run: &'a FleetRun<'a>,
    /// The canary's instances (one per host of the canary).
    canary: Vec<Instance>,
}

impl Instances for FleetHosts<'_> {
    fn start<'a>(
        &'a self,
        _service: &'a str,
        _version: &'a str,
        _replicas: u32,
        role: Role,
    ) -> BoxFuture<'a, Result<Vec<Instance>, RolloutError>> {
        Box::pin(async move {
            match role {
                // Deployed on the wave's hosts before the controller started.
                Role::Canary => Ok(self.canary.clone()),
                Role::Stable => Err(RolloutError::Instances(
                    "every host outside the canary is out of service in the load balancer (down, drained or in maintenance): there is no stable version to move the traffic back to; the canary hosts are rolled back to their previous version instead".into(),
                )),
            }
        })
    }

    fn ready<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            // The stable hosts were not touched: they can take the traffic back unless
            // the balancer has every one of them out of service.
            let Ok(hosts) = self.run.lb.hosts().await else {
                return false;
            };
            instances.is_empty()
                || instances
                    .iter()
                    .any(|i| hosts.get(&i.id).is_some_and(|s| s.in_service))
        })
    }

    fn stop<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), RolloutError>> {
        Box::pin(async move {
            let names: BTreeSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            let hosts: Vec<&FleetHost> = self
                .run
                .hosts
                .iter()
                .filter(|h| names.contains(h.name.as_str()))
                .collect();
            self.run
                .roll_back(&hosts)
                .await
                .map_err(RolloutError::Instances)
        })
    }
}

/// One fleet canary step being driven.
struct FleetRun<'a> {
    target: &'a SshTarget,
    ctx: &'a StepContext,
    action: &'a StepAction,
    step: &'a ExecStep,
    service: &'a str,
    version: &'a str,
    spec: &'a FleetCanary,
    lb: &'a dyn Balancer,
    /// Every connected host, in inventory order.
    hosts: Vec<FleetHost>,
    /// Each host's weight before the canary.
    weights: BTreeMap<String, u64>,
    /// An operator promoted the canary (now or in an earlier attempt).
    promoted: std::sync::atomic::AtomicBool,
}

/// The operators' requests as the controller polls them, remembering a promotion (the
/// later waves then go without analysis, as a promoted canary on the process target
/// skips its remaining steps).
struct Operators<'a> {
    inner: &'a dyn Interventions,
    promoted: &'a std::sync::atomic::AtomicBool,
}

impl Interventions for Operators<'_> {
    fn poll(&self) -> BoxFuture<'_, Option<Intervention>> {
        Box::pin(async move {
            let i = self.inner.poll().await;
            if i == Some(Intervention::Promote) {
                self.promoted
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            i
        })
    }
}

impl FleetRun<'_> {
    fn instance(&self, h: &FleetHost, version: &str) -> Instance {
        Instance {
            id: h.name.clone(),
            service: self.service.to_owned(),
            version: version.to_owned(),
            addr: h.addr,
            pid: 0,
            log_path: None,
        }
    }

    /// Roll these hosts back to what they ran before this step (drained; the
    /// supervisor's rollback removes the step's marker), each then at its own weight
    /// again. Every host is tried; `Err` names those that failed.
    async fn roll_back(&self, hosts: &[&FleetHost]) -> Result<(), String> {
        let Some(cmd) = self.step.undo.as_deref() else {
            return Err("the deploy step has no undo".into());
        };
        let t = self.target.timeout(self.step).map_err(|e| e.to_string())?;
        let futs: Vec<_> = hosts
            .iter()
            .map(|h| async move {
                let r = self
                    .target
                    .undo_one(&h.session, self.ctx, self.action, cmd, t)
                    .await;
                let outcome = match &r {
                    Ok(Some(o)) => HostOutcome::Ran(o.clone()),
                    Ok(None) => HostOutcome::AlreadyDone(
                        "no completion marker: nothing of this run to undo".into(),
                    ),
                    Err((m, o)) => HostOutcome::Failed(m.clone(), o.clone()),
                };
                self.target
                    .report(self.ctx, &h.session.endpoint().host, "undo", None, &outcome);
                let back = match self.weights.get(&h.name) {
                    Some(w) => set_weight(self.lb, &h.name, *w).await,
                    None => Ok(()),
                };
                match (r, back) {
                    (Ok(_), Ok(())) => Ok(()),
                    (Err((m, _)), _) => Err(format!("{}: {m}", h.name)),
                    (_, Err(m)) => Err(format!("{}: {m}", h.name)),
                }
            })
            .collect();
        let results: Vec<Result<(), String>> = futures_util::stream::iter(futs)
            .buffered(self.target.parallelism())
            .collect()
            .await;
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("rolling back failed on {}", failed.join("; ")))
        }
    }

    /// Every host's journaled weight put back, reported.
    async fn restore_weights(&self) -> Result<(), String> {
        let all: Vec<(String, u64)> = self.weights.iter().map(|(h, w)| (h.clone(), *w)).collect();
        self.lb.set_weights(&all).await?;
        self.ctx.report(json(&StepEvent::FleetWeightsRestored {
            weights: self.weights.clone(),
        }));
        Ok(())
    }

    /// Deploy the new version on a wave's hosts (drained, replaced, back in service):
    /// the hosts where it runs now, or `Err` when the failure budget is exceeded (the
    /// hosts of `changed` and of this wave are rolled back then). A host failing within
    /// the budget runs what it ran, at its own weight again, and is left out of the
    /// later steps.
    async fn deploy_wave(
        &self,
        wave: &[FleetHost],
        wave_no: usize,
        changed: &[FleetHost],
    ) -> Result<Vec<FleetHost>, TargetError> {
        let futs: Vec<_> = wave
            .iter()
            .map(|h| {
                self.target.apply_guarded(
                    h.index,
                    &h.session,
                    self.ctx,
                    self.step,
                    self.action,
                    wave_no,
                )
            })
            .collect();
        let outcomes: Vec<HostOutcome> = futures_util::stream::iter(futs)
            .buffered(self.target.parallelism())
            .collect()
            .await;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (h, o) in wave.iter().zip(&outcomes) {
            match o {
                HostOutcome::Ran(_) | HostOutcome::AlreadyDone(_) => done.push(h.clone()),
                HostOutcome::Failed(m, _) => failed.push((h, m.clone())),
                HostOutcome::Skipped | HostOutcome::Excluded => failed.push((h, String::new())),
            }
        }
        if !self.target.over_budget() {
            let t = self.target.timeout(self.step)?;
            for (h, _) in &failed {
                self.target
                    .exclude_host(h.index, &h.session, self.ctx, t)
                    .await;
                if let Some(w) = self.weights.get(&h.name) {
                    set_weight(self.lb, &h.name, *w)
                        .await
                        .map_err(TargetError::Io)?;
                }
            }
            return Ok(done);
        }
        let all: Vec<&FleetHost> = changed.iter().chain(&done).collect();
        let undone = self.roll_back(&all).await;
        let restored = self.restore_weights().await;
        let mut message = format!(
            "{} hosts failed in this run, more than the failure budget of {}: {}",
            self.target.failed_count(),
            self.target.max_failures(),
            failed
                .iter()
                .filter(|(_, m)| !m.is_empty())
                .map(|(h, m)| format!("{}: {m}", h.name))
                .collect::<Vec<_>>()
                .join("; ")
        );
        match (&undone, all.is_empty()) {
            (Ok(()), false) => message.push_str(&format!(
                "; rolled back to their previous version on: {}",
                all.iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (Err(m), _) => message.push_str(&format!("; {m}")),
            _ => {}
        }
        if let Err(m) = restored {
            message.push_str(&format!("; weights not all restored: {m}"));
        }
        Err(TargetError::Failed {
            message,
            output: StepOutput::default(),
        })
    }

    /// Run the controller over `canary` (the changed hosts) against the other hosts.
    async fn judge(
        &self,
        canary: &[FleetHost],
        steps: &[CanaryStep],
        background: Option<&AnalysisStep>,
        resume: Option<(usize, u8)>,
    ) -> Result<Outcome, RolloutError> {
        let names: BTreeSet<&str> = canary.iter().map(|h| h.name.as_str()).collect();
        let canary_instances: Vec<Instance> = canary
            .iter()
            .map(|h| self.instance(h, self.version))
            .collect();
        let stable: Vec<Instance> = self
            .hosts
            .iter()
            .filter(|h| !names.contains(h.name.as_str()))
            .map(|h| self.instance(h, h.current.as_deref().unwrap_or("unknown")))
            .collect();
        let router = FleetRouter {
            lb: self.lb,
            hosts: self
                .hosts
                .iter()
                .filter(|h| self.weights.contains_key(&h.name))
                .map(|h| (h.addr, h.name.clone()))
                .collect(),
            canary: Mutex::new(names.iter().map(|n| (*n).to_owned()).collect()),
            out: Mutex::default(),
            weight: Mutex::default(),
            last: Mutex::default(),
        };
        let hosts = FleetHosts {
            run: self,
            canary: canary_instances.clone(),
        };
        let per_run = self.spec.store.clone().map(|store| {
            crate::interventions::RunInterventions::new(
                self.ctx.run_id.clone(),
                store,
                self.ctx.progress.clone(),
            )
        });
        let operators = Operators {
            inner: match &per_run {
                Some(p) => p,
                None => &NoInterventions,
            },
            promoted: &self.promoted,
        };
        let world = World {
            instances: &hosts,
            router: &router,
            metrics: &router,
            external: self.spec.external.as_deref(),
            interventions: &operators,
            drain_timeout: DRAIN_TIMEOUT,
        };
        let (start_step, resumed) = match resume {
            Some((step, weight)) => (
                step,
                Some(Resumed {
                    instances: canary_instances,
                    weight,
                }),
            ),
            None => (0, None),
        };
        let ctx = self.ctx;
        let mut emit = |e: RolloutEvent| {
            if let Ok(v) = serde_json::to_value(&e) {
                ctx.report(v);
            }
        };
        run_canary_checked(
            Canary {
                service: self.service,
                version: self.version,
                replicas: u32::try_from(canary.len()).unwrap_or(u32::MAX),
                stable,
                steps,
                background,
                templates: &self.spec.templates,
                start_step,
                resume: resumed,
                environment: &self.spec.environment,
                soak: None,
                promotion: Promotion::Hold,
            },
            &world,
            None,
            &mut emit,
        )
        .await
    }

    /// What a verdict of the controller means for the step: `Ok(())` to go on.
    async fn verdict(
        &self,
        outcome: Result<Outcome, RolloutError>,
        changed: &[FleetHost],
    ) -> Result<(), TargetError> {
        match outcome {
            Ok(Outcome::Promoted { .. }) => Ok(()),
            Ok(Outcome::RolledBack { reason, .. }) => {
                // The controller rolled the changed hosts back; the other hosts' weights
                // too go back to what they were.
                let restored = self.restore_weights().await;
                Err(TargetError::Failed {
                    message: format!(
                        "canary rolled back: {reason}; {} back on their previous version{}",
                        changed
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        match restored {
                            Ok(()) => ", every host at its own weight again".to_owned(),
                            Err(m) => format!("; weights not all restored: {m}"),
                        }
                    ),
                    output: StepOutput::default(),
                })
            }
            // Both versions keep serving at the weights in force; a resume continues.
            Ok(Outcome::Paused { reason }) => Err(TargetError::Paused { reason }),
            Err(e) => {
                // The router or the hosts refused mid-canary: what changed goes back.
                let hosts: Vec<&FleetHost> = changed.iter().collect();
                let undone = self.roll_back(&hosts).await;
                let restored = self.restore_weights().await;
                Err(TargetError::Failed {
                    message: format!(
                        "the fleet canary stopped: {e}; {}{}",
                        match undone {
                            Ok(()) =>
                                "the changed hosts are back on their previous version".to_owned(),
                            Err(m) => m,
                        },
                        restored
                            .err()
                            .map(|m| format!("; weights not all restored: {m}"))
                            .unwrap_or_default()
                    ),
                    output: StepOutput::default(),
                })
            }
        }
    }
}

fn json(e: &StepEvent) -> serde_json::Value {
    serde_json::to_value(e).unwrap_or_default()
}

/// The version a host's service runs now (its `current` record).
async fn current_version(
    target: &SshTarget,
    s: &Session,
    ctx: &StepContext,
    service: &str,
) -> Result<Option<String>, String> {
    let base = ssh_service::base_dir(&s.endpoint().host, service);
    let o = target
        .run_on(
            s,
            ctx,
            &format!("cat {base}/current 2>/dev/null; true"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(m, _)| m)?;
    let v = o.stdout.trim();
    Ok((!v.is_empty()).then(|| v.to_owned()))
}

/// The fleet canary of a `deploy` step (see the module docs), or `None` when the step is
/// a plain rolling deploy: nothing runs yet to compare with, or a single wave.
#[expect(
    clippy::too_many_arguments,
    reason = "the step's parts, passed through from the ssh target"
)]
pub(crate) async fn apply(
    target: &SshTarget,
    ctx: &StepContext,
    action: &StepAction,
    step: &ExecStep,
    service: &str,
    spec: &FleetCanary,
    lb: &dyn Balancer,
    port: impl Fn(&crate::ssh::Host) -> Option<u16>,
) -> Option<Result<Applied, TargetError>> {
    let StepAction::Deploy { version, .. } = action else {
        return None;
    };
    let prior = Prior::read(&ctx.prior);
    let excluded = target.excluded_set();
    let live: Vec<usize> = (0..target.endpoints().len())
        .filter(|i| !excluded.contains(i))
        .collect();
    let (connected, _unreachable) = match target.connect_within_budget(ctx, &live).await {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let mut hosts = Vec::new();
    for (i, s) in &connected {
        let current = match current_version(target, s, ctx, service).await {
            Ok(c) => c,
            Err(m) => return Some(Err(TargetError::Io(m))),
        };
        let host = &s.endpoint().host;
        let Some(p) = port(host) else {
            return Some(Err(TargetError::Io(format!(
                "host `{}` has no port for service `{service}`; fix: add `ports: {{ {service}: PORT }}` to the inventory",
                host.name
            ))));
        };
        hosts.push(FleetHost {
            index: *i,
            name: host.name.clone(),
            session: s.clone(),
            addr: host_addr(&host.address, p, *i),
            current,
        });
    }
    let batch = target.batch();
    let waves: Vec<Vec<FleetHost>> = hosts
        .chunk_by(|a, b| a.index / batch == b.index / batch)
        .map(<[FleetHost]>::to_vec)
        .collect();
    let first: BTreeSet<&str> = waves
        .first()
        .map(|w| w.iter().map(|h| h.name.as_str()).collect())
        .unwrap_or_default();
    let comparable = hosts.iter().any(|h| {
        !first.contains(h.name.as_str()) && h.current.as_deref().is_some_and(|c| c != version)
    });
    if prior.weights.is_none() && (waves.len() < 2 || !comparable) {
        return None;
    }
    // Each host's weight before anything changed: journaled once, read back after.
    let weights = match prior.weights.clone() {
        Some(w) => w,
        None => {
            let servers = match lb.hosts().await {
                Ok(s) => s,
                Err(m) => return Some(Err(TargetError::Io(m))),
            };
            let mut w = BTreeMap::new();
            for h in &hosts {
                match servers.get(&h.name) {
                    Some(s) => {
                        w.insert(h.name.clone(), s.weight);
                    }
                    None => {
                        return Some(Err(TargetError::Io(format!(
                            "{} has no server `{}`; fix: name one server per host after the host in the inventory",
                            lb.describe(),
                            h.name
                        ))));
                    }
                }
            }
            ctx.report(json(&StepEvent::FleetCanary {
                service: service.to_owned(),
                version: version.clone(),
                waves: waves
                    .iter()
                    .map(|w| w.iter().map(|h| h.name.clone()).collect())
                    .collect(),
                weights: w.clone(),
            }));
            w
        }
    };
    let run = FleetRun {
        target,
        ctx,
        action,
        step,
        service,
        version,
        spec,
        lb,
        hosts: hosts.clone(),
        weights,
        promoted: std::sync::atomic::AtomicBool::new(prior.promoted),
    };
    Some(drive(&run, &waves, &prior).await)
}

async fn drive(
    run: &FleetRun<'_>,
    waves: &[Vec<FleetHost>],
    prior: &Prior,
) -> Result<Applied, TargetError> {
    let version = run.version;
    if let Some(reason) = &prior.rolling_back {
        // A rollback was under way when the driver stopped: finish it (hosts already
        // back have no marker left, so nothing is done twice there).
        let all: Vec<&FleetHost> = run.hosts.iter().collect();
        let undone = run.roll_back(&all).await;
        let restored = run.restore_weights().await;
        return Err(TargetError::Failed {
            message: format!(
                "canary rolled back: {reason} (the rollback was finished after a restart){}{}",
                undone.err().map(|m| format!("; {m}")).unwrap_or_default(),
                restored
                    .err()
                    .map(|m| format!("; weights not all restored: {m}"))
                    .unwrap_or_default()
            ),
            output: StepOutput::default(),
        });
    }
    let mut changed: Vec<FleetHost> = Vec::new();
    for (k, wave) in waves.iter().enumerate() {
        let wave_no = k + 1;
        if k == 0 && prior.waves_passed == 0 {
            // The canary hosts get weight 0 before they are replaced (a resumed driver
            // leaves those already on the new version at the weight they serve at).
            for h in wave
                .iter()
                .filter(|h| h.current.as_deref() != Some(version))
            {
                set_weight(run.lb, &h.name, 0)
                    .await
                    .map_err(TargetError::Io)?;
            }
        }
        let done = run.deploy_wave(wave, wave_no, &changed).await?;
        changed.extend(done);
        if k == 0 && prior.waves_passed == 0 {
            if changed.is_empty() {
                run.restore_weights().await.map_err(TargetError::Io)?;
                return Err(TargetError::Failed {
                    message: "no host of the canary wave runs the new version (each failed within the failure budget); nothing to judge".into(),
                    output: StepOutput::default(),
                });
            }
            let resume = prior.position.map(|(step, weight)| {
                let manual = run
                    .spec
                    .steps
                    .get(step)
                    .is_some_and(|s| s.pause.as_deref() == Some("manual"));
                (if manual { step + 1 } else { step }, weight)
            });
            let outcome = run
                .judge(
                    &changed,
                    &run.spec.steps,
                    run.spec.background.as_ref(),
                    resume,
                )
                .await;
            run.verdict(outcome, &changed).await?;
        } else if k + 1 < waves.len()
            && wave_no > prior.waves_passed
            && !run.promoted.load(std::sync::atomic::Ordering::SeqCst)
            && let Some(a) = run.spec.between_waves()
        {
            // At their natural share: each changed host at its own weight.
            run.restore_weights().await.map_err(TargetError::Io)?;
            let total = run.weights.values().sum::<u64>().max(1);
            let names: BTreeSet<&str> = changed.iter().map(|h| h.name.as_str()).collect();
            let mine: u64 = run
                .weights
                .iter()
                .filter(|(h, _)| names.contains(h.as_str()))
                .map(|(_, w)| *w)
                .sum();
            let share = u8::try_from((mine * 100 + total / 2) / total).unwrap_or(100);
            let steps = [CanaryStep {
                analysis: Some(a),
                ..CanaryStep::default()
            }];
            let outcome = run.judge(&changed, &steps, None, Some((0, share))).await;
            run.verdict(outcome, &changed).await?;
        } else if wave_no <= prior.waves_passed {
            continue;
        }
        run.restore_weights().await.map_err(TargetError::Io)?;
        run.ctx.report(json(&StepEvent::FleetWavePassed {
            wave: wave_no,
            changed: changed.iter().map(|h| h.name.clone()).collect(),
        }));
    }
    let failed = run.target.excluded_hosts();
    let mut stderr = String::new();
    if !failed.is_empty() {
        stderr = format!(
            "[slipway] failed within the failure budget ({} of {} hosts may fail), left out of the later steps: {}\n",
            run.target.max_failures(),
            run.target.endpoints().len(),
            failed.join(", ")
        );
    }
    Ok(Applied::Ran {
        output: StepOutput {
            exit_code: Some(0),
            stdout: format!(
                "{} {version} on {} host(s) after a canary on {} and {} more wave(s): {}",
                run.service,
                changed.len(),
                waves
                    .first()
                    .map(|w| w
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                waves.len().saturating_sub(1),
                changed
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            stderr,
            truncated: false,
        },
    })
}

/// Take back a fleet canary found not done while its run is aborted or rolled back with
/// nobody driving it (a paused canary still takes traffic): the hosts running the step's
/// version are rolled back to what they ran (drained; the supervisor's rollback, guarded
/// by the step's marker), and every journaled weight is put back. `None`: the step
/// started no fleet canary (nothing journaled), so there is nothing of one to take back.
#[expect(
    clippy::too_many_arguments,
    reason = "the step's parts, passed through from the ssh target"
)]
pub(crate) async fn retract(
    target: &SshTarget,
    ctx: &StepContext,
    action: &StepAction,
    step: &ExecStep,
    service: &str,
    spec: &FleetCanary,
    lb: &dyn Balancer,
    port: impl Fn(&crate::ssh::Host) -> Option<u16>,
) -> Option<Result<Option<String>, TargetError>> {
    let StepAction::Deploy { version, .. } = action else {
        return None;
    };
    let prior = Prior::read(&ctx.prior);
    let weights = prior.weights?;
    let all: Vec<usize> = (0..target.endpoints().len()).collect();
    let (connected, _unreachable) = match target.connect_within_budget(ctx, &all).await {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let mut hosts = Vec::new();
    for (i, s) in &connected {
        let current = match current_version(target, s, ctx, service).await {
            Ok(c) => c,
            Err(m) => return Some(Err(TargetError::Io(m))),
        };
        let host = &s.endpoint().host;
        let p = port(host).unwrap_or(0);
        hosts.push(FleetHost {
            index: *i,
            name: host.name.clone(),
            session: s.clone(),
            addr: host_addr(&host.address, p, *i),
            current,
        });
    }
    let run = FleetRun {
        target,
        ctx,
        action,
        step,
        service,
        version,
        spec,
        lb,
        hosts: hosts.clone(),
        weights,
        promoted: std::sync::atomic::AtomicBool::new(prior.promoted),
    };
    let changed: Vec<&FleetHost> = hosts
        .iter()
        .filter(|h| h.current.as_deref() == Some(version.as_str()))
        .collect();
    let undone = run.roll_back(&changed).await;
    let restored = run.restore_weights().await;
    let names = changed
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Some(match (undone, restored) {
        (Ok(()), Ok(())) => Ok(Some(format!(
            "the fleet canary of {service} {version} was taken back: {} on their previous version, every host at its own weight in {}",
            if names.is_empty() {
                "no host was".to_owned()
            } else {
                format!("{names} back")
            },
            lb.describe()
        ))),
        (Err(m), _) | (_, Err(m)) => Err(TargetError::Failed {
            message: format!("taking back the fleet canary of {service} {version} failed: {m}"),
            output: StepOutput::default(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_journal_gives_the_weights_the_position_and_the_passed_waves() {
        let prior = vec![
            json!({"event": "fleet_canary", "service": "web", "version": "2.0.0",
                   "waves": [["h1"], ["h2"]], "weights": {"h1": 1, "h2": 1}}),
            json!({"event": "canary_started", "instances": []}),
            json!({"event": "step_started", "index": 0, "step": "set_weight 50"}),
            json!({"event": "weight_set", "weight": 50, "verified": 50}),
            json!({"event": "step_started", "index": 1, "step": "analysis x"}),
        ];
        let p = Prior::read(&prior);
        assert_eq!(p.position, Some((1, 50)));
        assert_eq!(p.waves_passed, 0);
        assert_eq!(p.weights.unwrap().len(), 2);
        assert!(p.rolling_back.is_none());

        let mut more = prior.clone();
        more.push(json!({"event": "fleet_wave_passed", "wave": 1, "changed": ["h1"]}));
        let p = Prior::read(&more);
        assert_eq!((p.position, p.waves_passed), (None, 1));

        let mut back = prior;
        back.push(json!({"event": "rolling_back", "reason": "5xx"}));
        assert_eq!(Prior::read(&back).rolling_back.as_deref(), Some("5xx"));
        assert!(Prior::read(&[]).weights.is_none());
    }

    #[test]
    fn an_unresolvable_host_gets_a_reserved_label_address() {
        assert_eq!(
            host_addr("127.0.0.1", 8080, 3),
            "127.0.0.1:8080".parse().unwrap()
        );
        let a = host_addr("no-such-host.invalid", 8080, 3);
        assert_eq!(a, "240.0.0.3:8080".parse().unwrap());
    }
}
