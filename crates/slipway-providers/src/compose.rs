//! The composition root of a run: everything the engine acts through, built from a plan,
//! the store directory's [`Layout`] and the run's resolved [`RunSecrets`] — the `exec` or
//! `ssh` target, config rendering, migrations, artifact verification, the process target's
//! deploy target with its routers (built-in proxy processes, nginx, HAProxy) and metric
//! providers, and the check runner.
//!
//! Why here, next to the implementations, and not in a front end: each component is built
//! from its config where it is implemented (Vector's habit), and there is one place that
//! composes them, which `slipway-ops` calls for every operation that drives a run
//! (deploy, resume, promote, rollback, and the demo with its in-process proxy as an
//! override). Nothing here prints: what an operator should hear about (a proxy started,
//! an external router used) comes back as [`WiringNote`]s.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_engine::{CheckRunner, Store, Target};
use slipway_model::plan::{Plan, StepAction};
use slipway_package::{Redactor, SecretRef};

use crate::checks::SpecCheckRunner;
use crate::deploy::{CompositeTarget, DeployTarget, ServiceRouter};
use crate::migrate::MigrateTarget;
use crate::process::{ProcessTarget, ServiceProcess};
use crate::remote::{ProxySupervisor, RemoteRouter};
use crate::ssh::SshTarget;
use crate::{ArtifactTarget, ExecTarget};

/// Where a store keeps the files of its runs on this machine: exec markers, verified
/// artifacts, `runs/<id>/` (version lock, perf baselines, request files), the process
/// target's instances and proxies, rendered configs, migration state, backups and
/// rehearsal records. The directory of an SQLite store file, or `.slipway/` under the
/// working directory for a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The layout of the directory holding the SQLite file `db` (`.` for a bare name).
    pub fn beside(db: &Path) -> Self {
        Self::new(
            db.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Locks and completion markers of exec steps.
    pub fn exec(&self) -> PathBuf {
        self.dir.join("exec")
    }

    /// Verified artifacts by sha256 (the rollback target's pre-staged copies).
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    /// Per-run files.
    pub fn runs(&self) -> PathBuf {
        self.dir.join("runs")
    }

    /// One run's files.
    pub fn run(&self, id: &str) -> PathBuf {
        self.runs().join(id)
    }

    /// Migration state (applied-by records, locks) of migration steps.
    pub fn migrate(&self) -> PathBuf {
        self.dir.join("migrate")
    }

    /// Content-addressed database backups.
    pub fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// Rollback rehearsal records.
    pub fn rehearsals(&self) -> PathBuf {
        self.dir.join("rehearsals")
    }

    /// Rendered configs of an environment.
    pub fn config(&self, environment: &str) -> PathBuf {
        crate::config::env_root(&self.dir, environment)
    }

    /// Where the process target of a plan's environment keeps instance and proxy state,
    /// logs and diagnostics: `target.process.workdir` (relative to `workdir`, the run's
    /// directory), else `<dir>/process/<environment>`.
    pub fn process_root(&self, workdir: &Path, plan: &Plan) -> PathBuf {
        match plan
            .env
            .target
            .process
            .as_ref()
            .and_then(|p| p.workdir.as_deref())
        {
            Some(w) => workdir.join(w),
            None => self.dir.join("process").join(&plan.environment),
        }
    }
}

/// The values of a run's `secret://env/…` variables, resolved once when the run is
/// driven, by variable name (unset ones are absent). Steps, migrations and metric
/// providers get them from here; the redactor masks them (and `secret://file/…` values)
/// in everything captured.
#[derive(Debug, Clone, Default)]
pub struct RunSecrets {
    env: BTreeMap<String, String>,
}

impl RunSecrets {
    /// Resolve the plan's `secret://env/NAME` variables with `lookup` (the process
    /// environment in `slipway`; a test may pass anything).
    pub fn resolve(plan: Option<&Plan>, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let env = plan
            .into_iter()
            .flat_map(|p| p.env.vars.iter())
            .filter_map(|(k, v)| match SecretRef::parse(v.as_str()) {
                Ok(Some(SecretRef::Env(name))) => lookup(&name).map(|val| (k.clone(), val)),
                _ => None,
            })
            .collect();
        Self { env }
    }

    /// Resolved secret variables by variable name.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The plan's variables with secrets resolved (unset secrets and `secret://file/…`
    /// left out), for migration `{{ vars.x }}`.
    fn filled_vars(&self, plan: Option<&Plan>) -> BTreeMap<String, String> {
        plan.into_iter()
            .flat_map(|p| p.env.vars.iter())
            .filter_map(|(k, v)| match SecretRef::parse(v.as_str()) {
                Ok(Some(SecretRef::Env(_))) => self.env.get(k).map(|val| (k.clone(), val.clone())),
                Ok(Some(_)) => None,
                _ => Some((k.clone(), v.as_str().to_owned())),
            })
            .collect()
    }

    /// Masks the resolved `secret://env/…` values (`***secret://env/NAME***`, so the
    /// reader sees which secret was printed).
    fn env_redactor(&self, plan: Option<&Plan>) -> Redactor {
        let secrets = plan
            .into_iter()
            .flat_map(|p| p.env.vars.iter())
            .filter_map(|(k, v)| match SecretRef::parse(v.as_str()) {
                Ok(Some(r @ SecretRef::Env(_))) => self.env.get(k).map(|val| (r, val.clone())),
                _ => None,
            });
        Redactor::new(secrets)
    }
}

/// Something the operator should hear about while a run's world is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WiringNote {
    /// A service's traffic goes through nginx or HAProxy, not the built-in proxy.
    ExternalRouter {
        /// Service.
        service: String,
        /// What fronts it.
        via: String,
    },
    /// A service's built-in proxy process.
    Proxy {
        /// Service.
        service: String,
        /// Started now (else found running).
        started: bool,
        /// Its traffic address.
        addr: String,
        /// Its pid.
        pid: u32,
    },
}

/// Why a run's world could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WiringError {
    /// The spec asks for what this machine cannot give (a taken front-door port): the
    /// operator fixes the spec or the machine, nothing was started.
    pub input: bool,
    /// What went wrong.
    pub message: String,
    /// What to do about it, when there is something specific.
    pub fix: Option<String>,
}

impl WiringError {
    fn failed(message: String) -> Self {
        Self {
            input: false,
            message,
            fix: None,
        }
    }
}

/// The inputs of a run's composition.
pub struct RunWiring<'a> {
    /// The store directory's layout.
    pub layout: &'a Layout,
    /// The run's working directory (the spec's directory joined with the exec target's
    /// `workdir`).
    pub workdir: &'a Path,
    /// The run's plan, when it can be read.
    pub plan: Option<&'a Plan>,
    /// The run's resolved secrets.
    pub secrets: &'a RunSecrets,
    /// Who drives (pseudonymous id), recorded by migrations.
    pub actor: &'a str,
    /// The run's store, through which operators' requests (pause, resume, promote,
    /// abort) reach a fleet canary on the ssh target; `None`: none reach it.
    pub store: Option<Arc<dyn Store>>,
}

impl RunWiring<'_> {
    /// The spec file's directory, recovered from the run's workdir.
    pub fn spec_dir(&self) -> PathBuf {
        spec_dir_of(self.workdir, self.plan)
    }

    /// The engine's target: exec (or the ssh target `ssh`, or one built from the plan's
    /// inventory), config rendering, migrations, artifact verification, and `deploy` for
    /// the process target's deploy steps.
    pub fn target(
        &self,
        deploy: Option<Arc<DeployTarget>>,
        ssh: Option<SshTarget>,
    ) -> Arc<dyn Target> {
        let plan = self.plan;
        let spec_dir = self.spec_dir();
        let redactor = self.secrets.env_redactor(plan);
        let (exec_wrap, config) = config_targets(self.layout, &spec_dir, plan, redactor.clone());
        let ssh_plan = plan.filter(|p| p.target == slipway_model::spec::TargetKind::Ssh);
        // On the ssh target, `deploy` steps are supervised instances on the hosts, run by
        // the same target as the install steps (waves, budget, markers).
        let with_services = |t: SshTarget, p: &Plan| {
            let services = ssh_services(p, self.workdir, t.endpoints(), self.store.clone());
            t.with_services(services, Some(self.layout.config(&p.environment)))
        };
        let exec: Arc<dyn Target> = match (ssh_plan, ssh) {
            (Some(p), Some(checked)) => Arc::new(with_services(checked, p)),
            (Some(p), None) => match ssh_target(p, &spec_dir, redactor) {
                Ok(t) => Arc::new(with_services(t, p)),
                // A resumed or rolled-back run whose inventory no longer loads: every step
                // fails with the reason instead of running somewhere else.
                Err(why) => Arc::new(Unavailable(why)),
            },
            (None, _) => Arc::new(exec_wrap(ExecTarget::new(self.workdir, self.layout.exec()))),
        };
        let deploy = match (ssh_plan, deploy) {
            (Some(_), None) => Some(Arc::clone(&exec)),
            (_, d) => d.map(|d| d as Arc<dyn Target>),
        };
        let migrate = MigrateTarget::new(
            &spec_dir,
            self.layout.migrate(),
            self.secrets.filled_vars(plan),
            self.actor.to_owned(),
        )
        .with_redactor(self.secrets.env_redactor(plan));
        let migrate = if plan.is_some_and(|p| p.env.backup.as_ref().is_some_and(|b| b.required)) {
            migrate.with_backup(self.layout.backups())
        } else {
            migrate
        };
        Arc::new(CompositeTarget {
            config,
            exec: Some(exec),
            deploy,
            migrate: Some(Arc::new(migrate)),
            artifact: Some(Arc::new(
                ArtifactTarget::new(spec_dir).with_store(self.layout.artifacts()),
            )),
        })
    }

    /// The runner of the plan's declared checks.
    pub fn checks(&self) -> Arc<dyn CheckRunner> {
        let mut checks =
            SpecCheckRunner::new(&self.workdir.to_string_lossy()).with_runs_dir(self.layout.runs());
        if let Some(p) = self
            .plan
            .filter(|p| p.target == slipway_model::spec::TargetKind::Process)
        {
            checks =
                checks.with_instances(self.layout.process_root(self.workdir, p).join("instances"));
        }
        Arc::new(checks)
    }

    /// The deploy target of a `process` plan: instances under the process root, and each
    /// deployed service's proxy process found (or started with `proxy_command`) there, or
    /// its nginx / HAProxy router. A proxy started now is given the instances already
    /// serving, so clients are answered from the first request. `None` for other targets.
    pub async fn process_deploy(
        &self,
        store: Arc<dyn Store>,
        proxy_command: Vec<OsString>,
        notes: &mut Vec<WiringNote>,
    ) -> Result<Option<Arc<DeployTarget>>, WiringError> {
        use slipway_rollout::TrafficRouter as _;
        let Some(plan) = self
            .plan
            .filter(|p| p.target == slipway_model::spec::TargetKind::Process)
        else {
            return Ok(None);
        };
        let root = self.layout.process_root(self.workdir, plan);
        let processes = process_target(self.layout, self.workdir, plan);
        let supervisor = ProxySupervisor::new(root.join("proxies"), proxy_command);
        let mut routers: BTreeMap<String, RemoteRouter> = BTreeMap::new();
        let external = external_routers(plan, self.workdir);
        for (service, version) in deployed_services(plan) {
            if let Some((via, _)) = external.get(&service) {
                notes.push(WiringNote::ExternalRouter {
                    service: service.clone(),
                    via: via.clone(),
                });
                continue;
            }
            let fixed = plan.builtin_listen(&service);
            let (router, started) =
                supervisor
                    .ensure(&service, fixed)
                    .await
                    .map_err(|e| match e.fix() {
                        Some(fix) => WiringError {
                            input: e.is_input(),
                            message: e.to_string(),
                            fix: Some(fix),
                        },
                        None => WiringError::failed(format!(
                            "{e} (the proxy's log is {})",
                            supervisor.log_path(&service).display()
                        )),
                    })?;
            // The canary's A/B routes and affinity as this plan declares them (none
            // clears what an earlier release installed).
            router
                .set_routes(&proxy_routes(plan))
                .await
                .map_err(WiringError::failed)?;
            if started {
                // A new front door serves what already runs: the previous version when a
                // canary of this release was left running beside it, else all of it.
                let alive = processes.running(&service).alive;
                let serving: Vec<_> = alive.iter().filter(|i| i.version != version).collect();
                let serving = if serving.is_empty() {
                    alive.iter().collect()
                } else {
                    serving
                };
                if !serving.is_empty() {
                    let addrs: Vec<_> = serving.iter().map(|i| i.addr).collect();
                    router
                        .set_pools(&addrs, &[])
                        .await
                        .map_err(|e| WiringError::failed(e.to_string()))?;
                }
            }
            notes.push(WiringNote::Proxy {
                service: service.clone(),
                started,
                addr: router.traffic_addr().to_string(),
                pid: router.state().pid,
            });
            routers.insert(service, router);
        }
        // Canary analysis asks the plan's metric providers, with the environment's
        // `secret://env/…` variables resolved for this run and nowhere else.
        let providers =
            crate::metrics::ProviderSet::from_plan(plan).with_secrets(self.secrets.vars().clone());
        let mut deploy =
            DeployTarget::new(plan.clone(), processes, routers, root.join("diagnostics"))
                .with_routers(external.into_iter().map(|(s, (_, r))| (s, r)).collect())
                .with_run_interventions(self.layout.runs(), Some(store))
                .with_external_metrics(Arc::new(providers));
        // Smoke checks run against each candidate's own address before it gets traffic.
        if let Some(gate) = crate::smoke_gate::SmokeGate::from_plan(plan) {
            deploy = deploy.with_pre_traffic(Arc::new(gate));
        }
        Ok(Some(Arc::new(deploy)))
    }
}

/// The canary's match routes and session affinity (`strategy.canary.match`,
/// `session_affinity`) as the built-in proxy takes them; empty without a canary.
pub fn proxy_routes(plan: &Plan) -> slipway_proxy::Routes {
    use slipway_proxy::matching::{Affinity, CookieMatch, HeaderMatch, MatchRule};
    /// A session's default length when the spec gives no `max_age`.
    const DEFAULT_MAX_AGE_SECS: u64 = 3600;
    let Some(c) = plan.strategy.canary.as_ref() else {
        return slipway_proxy::Routes::default();
    };
    slipway_proxy::Routes {
        matches: c
            .matches
            .iter()
            .map(|m| MatchRule {
                headers: m
                    .headers
                    .iter()
                    .map(|(name, cond)| HeaderMatch {
                        name: name.clone(),
                        exact: cond.exact.clone(),
                        prefix: cond.prefix.clone(),
                    })
                    .collect(),
                cookie: m.cookie.as_ref().map(|c| CookieMatch {
                    name: c.name.clone(),
                    value: c.value.clone(),
                }),
            })
            .collect(),
        affinity: c.session_affinity.as_ref().map(|a| Affinity {
            cookie: a.cookie.clone(),
            // Validation proved the duration parses; a hand-edited plan gets the default.
            max_age_secs: a
                .max_age
                .as_ref()
                .and_then(|d| d.get().ok())
                .map_or(DEFAULT_MAX_AGE_SECS, |d| d.as_secs()),
            // The release plan's digest names the canary: a cookie from an earlier
            // release's canary (a rejected version's users above all) is not honoured,
            // and the same plan resumed after a crash keeps its users where they were.
            token: plan.digest.chars().take(16).collect(),
        }),
    }
}

/// The process target of a plan: one [`ServiceProcess`] per service with `run:`, rendered
/// configs per version under the environment's config root, the environment's stop grace.
pub fn process_target(layout: &Layout, workdir: &Path, plan: &Plan) -> ProcessTarget {
    let root = layout.process_root(workdir, plan);
    let services = plan
        .services
        .iter()
        .filter_map(|(name, s)| {
            let run = s.run.clone()?;
            Some((
                name.clone(),
                ServiceProcess {
                    run,
                    readiness: s.readiness.clone(),
                    env: BTreeMap::new(),
                    workdir: workdir.to_path_buf(),
                },
            ))
        })
        .collect();
    let artifacts = plan
        .services
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.artifact.as_ref()?.sha256.clone())))
        .collect();
    // What is shown or kept of an instance's log is masked like step output.
    let redactor = crate::config::plan_redactor(plan, &spec_dir_of(workdir, Some(plan)));
    let mut processes = ProcessTarget::new(root.join("instances"), services)
        .with_config_root(layout.config(&plan.environment))
        .with_artifacts(artifacts)
        .with_health(
            plan.services
                .iter()
                .filter_map(|(name, s)| Some((name.clone(), s.health.clone()?)))
                .collect(),
        )
        .with_artifact_store(layout.artifacts())
        .with_deploying(deployed_services(plan).into_iter().collect())
        .with_redactor(redactor);
    if let Some(g) = plan
        .env
        .target
        .process
        .as_ref()
        .and_then(|p| p.stop_grace.as_ref())
        .and_then(|g| g.get().ok())
    {
        processes.stop_grace = g;
    }
    processes
}

/// The `render-config` target of a plan and what the `exec` target needs for it: the
/// environment's config root (so steps get `SLIPWAY_CONFIG_DIR`) and a redactor that also
/// knows `secret://file/` values, since a step may print the config it was given.
/// Without a plan (status, approvals) there is nothing to render and `fallback` masks.
fn config_targets(
    layout: &Layout,
    spec_dir: &Path,
    plan: Option<&Plan>,
    fallback: Redactor,
) -> (
    impl FnOnce(ExecTarget) -> ExecTarget + use<>,
    Option<Arc<dyn Target>>,
) {
    let root = plan.map(|p| layout.config(&p.environment));
    let redactor = plan.map_or(fallback, |p| crate::config::plan_redactor(p, spec_dir));
    let config: Option<Arc<dyn Target>> = match (plan, &root) {
        (Some(p), Some(r)) => Some(Arc::new(crate::ConfigTarget::new(p.clone(), spec_dir, r))),
        _ => None,
    };
    let exec = move |e: ExecTarget| {
        let e = e.with_redactor(redactor);
        match root {
            Some(r) => e.with_config_root(r),
            None => e,
        }
    };
    (exec, config)
}

/// The ssh target of an `ssh` plan: its inventory (relative to the spec's directory),
/// group, user, waves and failure budget, with `redactor` masking host output. Refused
/// when the inventory changed since the plan pinned it.
pub fn ssh_target(plan: &Plan, spec_dir: &Path, redactor: Redactor) -> Result<SshTarget, String> {
    let Some(t) = &plan.env.target.ssh else {
        return Err(format!(
            "environments.{}.target is not `ssh`",
            plan.environment
        ));
    };
    let path = spec_dir.join(&t.inventory);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "inventory {}: cannot be read: {e}; fix: restore the file the plan was made with",
            path.display()
        )
    })?;
    // The plan pinned the inventory it was approved with: hosts and users are what
    // approvers reviewed, and a run never goes on against other ones.
    if let Some(pinned) = plan.target_files.get(&t.inventory) {
        let now = slipway_package::digest::sha256_bytes(text.as_bytes());
        if &now != pinned {
            return Err(format!(
                "inventory {} changed since plan {} was made (pinned sha256 {pinned}, now {now}); fix: restore it, or make a new plan (`slipway plan`) and have that approved",
                path.display(),
                plan.digest
            ));
        }
    }
    let inventory = crate::ssh::Inventory::parse(&path, &text).map_err(|e| e.to_string())?;
    SshTarget::new(
        &inventory,
        t.group.as_deref(),
        t.user.as_deref(),
        t.parallelism,
    )
    .and_then(|s| s.with_waves(&inventory, t.batch.as_ref(), t.max_failures.as_ref()))
    .map(|t| t.with_redactor(redactor))
    .map_err(|e| e.to_string())
}

/// The `run:` services of a plan as the ssh target deploys them on its hosts
/// (`endpoints`), each with the load balancer its environment's `router:` puts in front
/// of the fleet: HAProxy or nginx (paths relative to `workdir`).
pub fn ssh_services(
    plan: &Plan,
    workdir: &Path,
    endpoints: &[crate::ssh::Endpoint],
    store: Option<Arc<dyn Store>>,
) -> BTreeMap<String, crate::ssh_service::SshService> {
    plan.services
        .iter()
        .filter_map(|(name, s)| {
            let router = plan.router_of(name);
            let drain: Option<Arc<dyn crate::balancer::Balancer>> =
                if let Some(h) = router.and_then(|r| r.haproxy.as_ref()) {
                    Some(Arc::new(crate::haproxy::HaproxyRouter::new(
                        workdir.join(&h.socket),
                        h.backend.clone(),
                        "stable",
                        "canary",
                    )))
                } else {
                    router.and_then(|r| r.nginx.as_ref()).map(|n| {
                        let members = endpoints
                            .iter()
                            .filter_map(|e| {
                                Some(crate::balancer::Member {
                                    name: e.host.name.clone(),
                                    address: e.host.address.clone(),
                                    port: *e.host.ports.get(name)?,
                                })
                            })
                            .collect();
                        Arc::new(crate::balancer::NginxFleet::new(
                            workdir.join(&n.upstream_file),
                            n.upstream.clone(),
                            n.test.clone(),
                            n.reload.clone(),
                            n.access_log.as_ref().map(|l| workdir.join(l)),
                            members,
                            s.run.as_ref().map_or(1, |r| r.replicas),
                        )) as Arc<dyn crate::balancer::Balancer>
                    })
                };
            // A canary needs the load balancer to shift traffic with; without one the
            // plan is refused (`ssh-unsupported`), and nothing here would enforce it.
            let canary = plan
                .strategy
                .canary
                .as_ref()
                .filter(|_| drain.is_some())
                .map(|c| {
                    Arc::new(crate::fleet::FleetCanary {
                        steps: c.steps.clone(),
                        background: c.analysis.clone(),
                        templates: plan.analysis_templates.clone(),
                        environment: plan.environment.clone(),
                        external: Some(Arc::new(crate::metrics::ProviderSet::from_plan(plan))
                            as Arc<dyn slipway_rollout::ExternalMetrics>),
                        store: store.clone(),
                    })
                });
            Some((
                name.clone(),
                crate::ssh_service::SshService {
                    run: s.run.clone()?,
                    readiness: s.readiness.clone(),
                    drain,
                    canary,
                },
            ))
        })
        .collect()
}

/// The nginx / HAProxy router of each deployed service whose environment names one
/// (paths relative to `workdir`), with a description for the operator. They keep nothing:
/// a later `slipway` builds the same from the plan and reads the rest back from nginx /
/// HAProxy.
pub fn external_routers(
    plan: &Plan,
    workdir: &Path,
) -> BTreeMap<String, (String, Arc<dyn ServiceRouter>)> {
    let mut out = BTreeMap::new();
    for (service, _) in deployed_services(plan) {
        let Some(r) = plan.router_of(&service) else {
            continue;
        };
        let built: Option<(String, Arc<dyn ServiceRouter>)> = if let Some(n) = &r.nginx {
            let file = workdir.join(&n.upstream_file);
            Some((
                format!("nginx upstream `{}` ({})", n.upstream, file.display()),
                Arc::new(
                    crate::nginx::NginxRouter::new(
                        file,
                        n.upstream.clone(),
                        n.test.clone(),
                        n.reload.clone(),
                    )
                    .with_routes(proxy_routes(plan)),
                ),
            ))
        } else {
            r.haproxy.as_ref().map(|h| {
                let socket = workdir.join(&h.socket);
                let (stable, canary) = h
                    .servers
                    .as_ref()
                    .map_or(("stable".to_owned(), "canary".to_owned()), |s| {
                        (s.stable.clone(), s.canary.clone())
                    });
                (
                    format!("HAProxy backend `{}` ({})", h.backend, socket.display()),
                    Arc::new({
                        let routes = proxy_routes(plan);
                        let r = crate::haproxy::HaproxyRouter::new(
                            socket,
                            h.backend.clone(),
                            stable,
                            canary,
                        )
                        .with_affinity(routes.affinity);
                        match &h.routes_map {
                            Some(map) => r.with_routes(routes.matches, workdir.join(map)),
                            None => r,
                        }
                    }) as Arc<dyn ServiceRouter>,
                )
            })
        };
        if let Some(b) = built {
            out.insert(service, b);
        }
    }
    out
}

/// The services a plan deploys as instances and their versions (from each
/// `service/step` deploy step), sorted.
pub fn deployed_services(plan: &Plan) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            StepAction::Deploy { version, .. } => Some((
                s.id.split('/').next().unwrap_or(&s.id).to_owned(),
                version.clone(),
            )),
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What serves a process-target environment now, per deployed service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceTraffic {
    /// Its built-in proxy process, when one runs (never its admin token).
    pub proxy: Option<ProxyView>,
    /// Running instances by version.
    pub instances: BTreeMap<String, usize>,
    /// The nginx / HAProxy router fronting it instead, read back from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterView>,
}

/// A built-in proxy process as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyView {
    /// Pid.
    pub pid: u32,
    /// Traffic address.
    pub traffic: String,
    /// Canary weight, when its admin API answered.
    pub weight: Option<u8>,
    /// Requests per pool.
    pub requests: Option<serde_json::Value>,
    /// Errors per pool.
    pub errors: Option<serde_json::Value>,
}

/// An external router as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouterView {
    /// What it is.
    pub via: String,
    /// The canary weight it serves, when it can tell.
    pub weight: Option<u8>,
}

/// What serves each deployed service of a process-target plan now: its proxy (live weight
/// and counters from its admin API), its external router, and the instances running by
/// version. Read-only: nothing is started.
pub async fn traffic_view(
    layout: &Layout,
    workdir: &Path,
    plan: &Plan,
) -> BTreeMap<String, ServiceTraffic> {
    let root = layout.process_root(workdir, plan);
    let instances = ProcessTarget::new(root.join("instances"), BTreeMap::new());
    let proxies = ProxySupervisor::new(root.join("proxies"), Vec::new());
    let external = external_routers(plan, workdir);
    let mut view = BTreeMap::new();
    for (service, _) in deployed_services(plan) {
        let proxy = match proxies.find(&service).await {
            Some(r) => {
                let state = r.fetch_state().await.ok();
                Some(ProxyView {
                    pid: r.state().pid,
                    traffic: r.traffic_addr().to_string(),
                    weight: state.as_ref().map(|s| s.weight),
                    requests: state.as_ref().map(|s| {
                        serde_json::json!({"stable": s.requests_stable, "canary": s.requests_canary})
                    }),
                    errors: state.as_ref().map(|s| {
                        serde_json::json!({"stable": s.errors_stable, "canary": s.errors_canary})
                    }),
                })
            }
            None => None,
        };
        let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
        for i in instances.running(&service).alive {
            *by_version.entry(i.version).or_insert(0) += 1;
        }
        let router = match external.get(&service) {
            Some((via, r)) => Some(RouterView {
                via: via.clone(),
                weight: r.verify_weight().await,
            }),
            None => None,
        };
        view.insert(
            service,
            ServiceTraffic {
                proxy,
                instances: by_version,
                router,
            },
        );
    }
    view
}

/// The spec file's directory, recovered from a run's workdir: a deploy sets the workdir to
/// the spec's directory joined with the exec target's `workdir`, so a relative one is
/// stripped off again. An absolute exec `workdir` cannot be undone; the workdir is used.
pub fn spec_dir_of(workdir: &Path, plan: Option<&Plan>) -> PathBuf {
    let rel = plan
        .and_then(|p| p.env.target.exec.as_ref())
        .and_then(|e| e.workdir.as_deref())
        .map(Path::new)
        .filter(|w| w.is_relative());
    let Some(rel) = rel else {
        return workdir.to_path_buf();
    };
    // `Path::join` keeps `..` and drops interior `.`, so compare without `.` components.
    let rel: PathBuf = rel
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() || !workdir.ends_with(&rel) {
        return workdir.to_path_buf();
    }
    let mut dir = workdir.to_path_buf();
    for _ in rel.components() {
        dir.pop();
    }
    dir
}

/// A target that cannot be built: every operation fails with why.
struct Unavailable(String);

impl Target for Unavailable {
    fn kind(&self) -> &'static str {
        "unavailable"
    }
    fn apply<'a>(
        &'a self,
        _: &'a slipway_engine::StepContext,
        _: &'a StepAction,
    ) -> slipway_engine::BoxFuture<'a, Result<slipway_engine::Applied, slipway_engine::TargetError>>
    {
        Box::pin(async move { Err(slipway_engine::TargetError::Io(self.0.clone())) })
    }
    fn observe<'a>(
        &'a self,
        _: &'a slipway_engine::StepContext,
        _: &'a StepAction,
    ) -> slipway_engine::BoxFuture<
        'a,
        Result<slipway_engine::Observation, slipway_engine::TargetError>,
    > {
        Box::pin(async move { Err(slipway_engine::TargetError::Io(self.0.clone())) })
    }
    fn undo<'a>(
        &'a self,
        _: &'a slipway_engine::StepContext,
        _: &'a StepAction,
    ) -> slipway_engine::BoxFuture<
        'a,
        Result<Option<slipway_engine::StepOutput>, slipway_engine::TargetError>,
    > {
        Box::pin(async move { Err(slipway_engine::TargetError::Io(self.0.clone())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_beside_a_bare_file_name_is_the_current_directory() {
        assert_eq!(
            Layout::beside(Path::new("slipway.db")).dir(),
            Path::new(".")
        );
        assert_eq!(
            Layout::beside(Path::new("/srv/.slipway/slipway.db")).run("r1"),
            Path::new("/srv/.slipway/runs/r1")
        );
    }
}
