//! Readiness checks a deploy runs before its first wave, and `slipway check` runs by hand:
//! what the plan declares for its environment — each service's `endpoints` (reach; TLS for
//! `tls://`), `resources` (capacity), `accounts`, and the external metric providers and
//! queries its canary analysis will ask (monitoring) — judged as [`Verdict`] rows.
//!
//! Where they are measured is where the release runs. On this machine for the `exec` and
//! `process` targets; on an `ssh` environment, reach, capacity and unix accounts are
//! measured *on every host of the group*, over the sessions the deploy opened anyway
//! ([`SshTarget::sessions`]): an endpoint is connected to by the host's sshd (an SSH
//! `direct-tcpip` channel, so the host's network, firewall and name resolution decide,
//! and no tool is needed there), free memory, load and disk come from the host's own
//! /proc and `df`, and users from its passwd database. Each such row names its host.
//! PostgreSQL roles and the metric providers are asked from this machine, once: a database
//! or Prometheus is one service however many hosts there are, and this machine is where
//! the canary analysis will ask.
//!
//! Monitoring asks each (provider, query) the analysis uses, for each service deployed as
//! instances, with the placeholders the canary will have — except that `version` is the
//! version running there now (from the store's history), since the canary does not exist
//! yet: an answer with data proves that the provider is up, the query parses and the
//! series exist before any traffic moves. A dead provider address or a query that errors
//! fails; no data fails too when something runs there (the canary would be judged on
//! nothing), and only warns on a first deploy, when no data can exist yet.
//!
//! Addresses may use the environment's secret variables: they are resolved here, at run
//! time, and never shown — rows name the address with the secret's placeholder and every
//! measured text passes through a [`Redactor`] of the resolved values.
//!
//! Architecture invariant: readiness checks only observe. On a host they open channels and
//! run read-only commands (`cat`, `df`, `getent`); they change nothing anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use slipway_checks::capacity::Demand;
use slipway_checks::reach::ConnectError;
use slipway_checks::{Outcome, Verdict};
use slipway_model::analysis::Reading;
use slipway_model::metric_query::QueryVars;
use slipway_model::plan::Plan;
use slipway_model::readiness::ReadinessCheck;
use slipway_model::spec::Metric;
use slipway_package::{EnvFileResolver, Redactor, SecretRef, SecretResolver};

use crate::metrics::ProviderSet;
use crate::ssh::{Endpoint, Session, SshTarget};

/// How long one probe may take when the caller gives no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// How many hosts are checked at once. The sessions are open already and every check is a
/// channel on one of them, so this bounds only concurrent channels, not connections.
const HOSTS_AT_ONCE: usize = 64;

/// The environment's variables as addresses use them: plain ones as written, secret ones
/// (`secret://env/…`, `secret://file/…`) resolved now, at run time, and never shown —
/// [`PlanVars::shown`] keeps their placeholder, [`PlanVars::redact`] masks their values.
#[derive(Debug, Clone, Default)]
pub struct PlanVars {
    environment: String,
    plain: Vec<(String, String)>,
    /// Secret variables resolved now, by variable name.
    secrets: BTreeMap<String, String>,
    /// Secret variables that could not be resolved, with why.
    unresolved: BTreeMap<String, String>,
    redactor: Redactor,
}

impl PlanVars {
    /// Resolve `plan`'s environment variables (secret files relative to `spec_dir`).
    pub fn resolve(plan: &Plan, spec_dir: &Path) -> Self {
        let resolver = EnvFileResolver {
            base_dir: spec_dir.to_path_buf(),
        };
        let mut out = Self {
            environment: plan.environment.clone(),
            ..Self::default()
        };
        let mut pairs = Vec::new();
        for (k, v) in &plan.env.vars {
            match SecretRef::parse(v.as_str()) {
                Ok(Some(r)) => match resolver.resolve(&r) {
                    Ok(value) => {
                        out.secrets.insert(k.clone(), value.clone());
                        pairs.push((r, value));
                    }
                    Err(e) => {
                        out.unresolved.insert(k.clone(), e.to_string());
                    }
                },
                _ => out.plain.push((k.clone(), v.as_str().to_owned())),
            }
        }
        out.redactor = Redactor::new(pairs);
        out
    }

    /// Secret variables resolved, by name.
    pub fn secrets(&self) -> &BTreeMap<String, String> {
        &self.secrets
    }

    /// `text` with the plain variables filled (secrets stay placeholders): what is shown.
    pub fn shown(&self, text: &str) -> String {
        slipway_model::text::fill_vars(
            text,
            self.plain.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// `text` with every variable filled, secrets resolved; or which one is missing.
    pub fn fill(&self, text: &str) -> Result<String, String> {
        let mut t = self.shown(text);
        for (k, v) in &self.secrets {
            t = t
                .replace(&format!("{{{{ vars.{k} }}}}"), v)
                .replace(&format!("{{{{vars.{k}}}}}"), v);
        }
        if let Some((k, why)) = self
            .unresolved
            .iter()
            .find(|(k, _)| t.contains(&format!("vars.{k}")))
        {
            return Err(format!("secret variable `{k}` is not available: {why}"));
        }
        if t.contains("{{") {
            return Err(format!(
                "`{}` names a variable environments.{}.vars does not define",
                self.shown(text),
                self.environment
            ));
        }
        Ok(t)
    }

    /// `text` with every resolved secret value masked.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// A row with every resolved secret value masked.
    pub fn redact_row(&self, mut v: Verdict) -> Verdict {
        v.measured = self.redact(&v.measured);
        v.hint = v.hint.map(|h| self.redact(&h));
        v.target = self.redact(&v.target);
        v.expected = self.redact(&v.expected);
        v
    }
}

/// The readiness checks of one plan, ready to run.
pub struct Readiness<'a> {
    plan: &'a Plan,
    /// Where relative `ca=` files resolve (the spec's directory).
    spec_dir: PathBuf,
    /// Where the release is written on this machine (free disk is measured there).
    local_dir: PathBuf,
    /// The version running now per service (the store's history).
    running: BTreeMap<String, String>,
    timeout: Duration,
    only: Option<ReadinessCheck>,
    vars: PlanVars,
}

/// One endpoint of a service, as shown and as probed.
struct EndpointText {
    service: String,
    /// With plain variables filled, secrets left as their placeholder.
    shown: String,
    /// Everything filled, or why it cannot be.
    real: Result<String, String>,
}

impl<'a> Readiness<'a> {
    /// The checks `plan` declares; secrets are resolved now (environment variables and
    /// files relative to `spec_dir`), relative paths resolve against `spec_dir`, and free
    /// disk on this machine is measured in `local_dir`.
    pub fn new(plan: &'a Plan, spec_dir: &Path, local_dir: &Path) -> Self {
        Self {
            plan,
            spec_dir: spec_dir.to_path_buf(),
            local_dir: local_dir.to_path_buf(),
            running: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            only: None,
            vars: PlanVars::resolve(plan, spec_dir),
        }
    }

    /// What runs in the environment now, per service (for monitoring's placeholders).
    pub fn with_running(mut self, running: BTreeMap<String, String>) -> Self {
        self.running = running;
        self
    }

    /// Bound of each probe.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Run only this kind.
    pub fn only(mut self, kind: Option<ReadinessCheck>) -> Self {
        self.only = kind;
        self
    }

    fn wants(&self, k: ReadinessCheck) -> bool {
        self.only.is_none_or(|o| o == k)
    }

    fn shown(&self, text: &str) -> String {
        self.vars.shown(text)
    }

    fn real(&self, text: &str) -> Result<String, String> {
        self.vars.fill(text)
    }

    fn redact(&self, v: Verdict) -> Verdict {
        self.vars.redact_row(v)
    }

    fn endpoints(&self) -> Vec<EndpointText> {
        let mut out = Vec::new();
        for (name, s) in &self.plan.services {
            for e in &s.endpoints {
                // A TLS endpoint is reached too: `only: reach` keeps it, `only: tls`
                // keeps nothing else.
                let is_tls = e.trim_start().starts_with("tls://");
                let wanted = self.wants(ReadinessCheck::Reach)
                    || (is_tls && self.wants(ReadinessCheck::Tls));
                if !wanted {
                    continue;
                }
                out.push(EndpointText {
                    service: name.clone(),
                    shown: self.shown(e),
                    real: self.real(e),
                });
            }
        }
        out
    }

    /// Per service with resources: replicas, twice at a canary's peak (the new version
    /// runs beside the old).
    fn demands(&self) -> Vec<Demand> {
        if !self.wants(ReadinessCheck::Capacity) {
            return Vec::new();
        }
        let surge = u32::from(self.plan.strategy.canary.is_some());
        self.plan
            .services
            .iter()
            .filter_map(|(name, s)| {
                let r = s.resources.as_ref()?;
                let replicas = s.run.as_ref().map_or(1, |r| r.replicas);
                Some(Demand {
                    service: name.clone(),
                    instances: replicas * (1 + surge),
                    cpu: r.cpu,
                    memory: r
                        .memory
                        .as_deref()
                        .and_then(slipway_checks::capacity::parse_size),
                    disk: r
                        .disk
                        .as_deref()
                        .and_then(slipway_checks::capacity::parse_size),
                    ports: Vec::new(),
                })
            })
            .collect()
    }

    fn unix_users(&self) -> Vec<String> {
        if !self.wants(ReadinessCheck::Accounts) {
            return Vec::new();
        }
        let mut users: Vec<String> = self
            .plan
            .services
            .values()
            .flat_map(|s| &s.accounts)
            .filter_map(|a| a.unix.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Every row: on this machine, or on each host of `ssh` for what runs on hosts.
    pub async fn run(&self, ssh: Option<&SshTarget>) -> Vec<Verdict> {
        let mut rows = match ssh {
            Some(t) => self.on_hosts(t).await,
            None => self.here().await,
        };
        rows.extend(self.postgres_accounts().await);
        rows.extend(self.monitoring().await);
        rows.into_iter().map(|r| self.redact(r)).collect()
    }

    /// Reach, capacity and unix accounts measured on this machine.
    async fn here(&self) -> Vec<Verdict> {
        let mut rows = Vec::new();
        for e in self.endpoints() {
            let v = match &e.real {
                Ok(real) => {
                    slipway_checks::reach::probe_in(real, self.timeout, &self.spec_dir).await
                }
                Err(why) => unfillable(why),
            };
            rows.push(name_reach(v, &e, "this machine"));
        }
        let demands = self.demands();
        if !demands.is_empty() {
            match slipway_checks::capacity::measure(&self.local_dir) {
                Ok(free) => rows.extend(slipway_checks::capacity::check(&demands, &free)),
                Err(e) => rows.push(
                    Verdict::new(
                        "capacity",
                        "this machine",
                        Outcome::Fail,
                        e.to_string(),
                        "readable /proc and filesystem",
                        Instant::now(),
                    )
                    .hint("the capacity of this machine could not be measured"),
                ),
            }
        }
        for u in self.unix_users() {
            rows.push(slipway_checks::accounts::unix_user(&u));
        }
        rows
    }

    /// Reach, capacity and unix accounts measured on every host, hosts side by side, rows
    /// in host order.
    async fn on_hosts(&self, target: &SshTarget) -> Vec<Verdict> {
        let endpoints = self.endpoints();
        let demands = self.demands();
        let users = self.unix_users();
        if endpoints.is_empty() && demands.is_empty() && users.is_empty() {
            return Vec::new();
        }
        let sessions = target.sessions().await;
        let per_host = sessions.into_iter().map(|(ep, s)| {
            let (endpoints, demands, users) = (&endpoints, &demands, &users);
            async move {
                match s {
                    Err(why) => vec![
                        Verdict::new(
                            "ssh",
                            ep.host.name.clone(),
                            Outcome::Warn,
                            format!("not checked: {why}"),
                            "a session to the host",
                            Instant::now(),
                        )
                        .hint("the host is unreachable; the deploy counts it against the failure budget")
                        .on_host(ep.host.name.clone()),
                    ],
                    Ok(s) => self.on_host(&ep, s, endpoints, demands, users).await,
                }
            }
        });
        futures_util::stream::iter(per_host)
            .buffered(HOSTS_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn on_host(
        &self,
        ep: &Endpoint,
        s: Arc<Session>,
        endpoints: &[EndpointText],
        demands: &[Demand],
        users: &[String],
    ) -> Vec<Verdict> {
        let host = ep.host.name.clone();
        let mut rows = Vec::new();
        for e in endpoints {
            let v = match &e.real {
                Ok(real) => {
                    let s = s.clone();
                    let from = host.clone();
                    slipway_checks::reach::probe_via(
                        real,
                        self.timeout,
                        &self.spec_dir,
                        &host,
                        move |h, port| async move {
                            s.open_tcp(&h, port)
                                .await
                                .map_err(|err| open_failure(&from, &h, port, &err))
                        },
                    )
                    .await
                }
                Err(why) => unfillable(why),
            };
            rows.push(name_reach(v, e, &host).on_host(host.clone()));
        }
        // Commands on the host get at least 10 s: `df` on a busy disk is slow, and a
        // timeout must mean "the host did not answer", not "the host is loaded".
        let bound = self.timeout.max(Duration::from_secs(10));
        if !demands.is_empty() {
            let dir = ep.host.workdir.clone().unwrap_or_else(|| ".".to_owned());
            let started = Instant::now();
            let cmd = slipway_checks::capacity::host_report_command(&dir);
            let measured = match s.run(&cmd, &[], bound, crate::exec::OUTPUT_LIMIT).await {
                Ok((o, false)) if o.exit_code == Some(0) => {
                    slipway_checks::capacity::parse_host_report(&o.stdout, &dir)
                        .map_err(|e| e.to_string())
                }
                Ok((o, false)) => Err(format!(
                    "the capacity report failed (exit {}): {}",
                    o.exit_code.map_or("none".to_owned(), |c| c.to_string()),
                    o.stderr.trim()
                )),
                Ok((_, true)) => Err(format!(
                    "no capacity report within {}",
                    slipway_model::duration::format_duration(bound)
                )),
                Err(e) => Err(e.to_string()),
            };
            match measured {
                Ok(free) => rows.extend(
                    slipway_checks::capacity::check(demands, &free)
                        .into_iter()
                        .map(|v| v.on_host(host.clone())),
                ),
                Err(e) => rows.push(
                    Verdict::new(
                        "capacity",
                        host.clone(),
                        Outcome::Fail,
                        e,
                        format!("/proc and `df -Pk {dir}` readable on the host"),
                        started,
                    )
                    .hint("the host's capacity could not be measured: does its workdir exist?")
                    .on_host(host.clone()),
                ),
            }
        }
        for u in users {
            let started = Instant::now();
            let cmd = slipway_checks::accounts::unix_user_command(u);
            let v = match s.run(&cmd, &[], bound, crate::exec::OUTPUT_LIMIT).await {
                Ok((o, false)) => slipway_checks::accounts::unix_user_from_report(
                    u,
                    o.exit_code,
                    &o.stdout,
                    started,
                ),
                Ok((_, true)) => Verdict::new(
                    "accounts.unix",
                    u.clone(),
                    Outcome::Fail,
                    "no answer from the lookup",
                    "exists",
                    started,
                ),
                Err(e) => Verdict::new(
                    "accounts.unix",
                    u.clone(),
                    Outcome::Fail,
                    e.to_string(),
                    "exists",
                    started,
                ),
            };
            rows.push(v.on_host(host.clone()));
        }
        rows
    }

    /// PostgreSQL roles and grants, from this machine (a database is one service however
    /// many hosts use it).
    async fn postgres_accounts(&self) -> Vec<Verdict> {
        if !self.wants(ReadinessCheck::Accounts) {
            return Vec::new();
        }
        let mut rows = Vec::new();
        for s in self.plan.services.values() {
            for pg in s.accounts.iter().filter_map(|a| a.postgres.as_ref()) {
                let Some(url) = pg.database.as_deref() else {
                    rows.push(
                        Verdict::new(
                            "accounts.postgres",
                            pg.role.clone(),
                            Outcome::Fail,
                            "no database to check against",
                            format!("role {} with {} grant(s)", pg.role, pg.grants.len()),
                            Instant::now(),
                        )
                        .hint("give the account a `database:` URL (it may use a secret variable)"),
                    );
                    continue;
                };
                match self.real(url) {
                    Ok(real) => rows.extend(
                        slipway_checks::accounts::postgres_role(
                            &real,
                            &pg.role,
                            &pg.grants,
                            self.timeout,
                        )
                        .await,
                    ),
                    Err(why) => rows.push(
                        Verdict::new(
                            "accounts.postgres",
                            pg.role.clone(),
                            Outcome::Fail,
                            why,
                            format!("role {} with {} grant(s)", pg.role, pg.grants.len()),
                            Instant::now(),
                        )
                        .hint("export the secret in the environment that runs slipway"),
                    ),
                }
            }
        }
        rows
    }

    /// Each external (provider, query) of the analysis, for each service deployed as
    /// instances, asked now.
    async fn monitoring(&self) -> Vec<Verdict> {
        if !self.wants(ReadinessCheck::Monitoring) || self.plan.env.target.process.is_none() {
            return Vec::new();
        }
        let providers = ProviderSet::from_plan(self.plan).with_secrets(self.vars.secrets().clone());
        type Key = (String, String, Option<String>);
        let mut asks: Vec<(Key, Metric, QueryVars, Option<String>)> = Vec::new();
        for (service, candidate) in crate::compose::deployed_services(self.plan) {
            for t in self.plan.analysis_templates.values() {
                let interval_ms = t
                    .interval
                    .as_ref()
                    .and_then(|i| i.get().ok())
                    .map_or(60_000, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                for m in &t.metrics {
                    if !self.plan.providers.contains_key(&m.provider) {
                        continue;
                    }
                    let running = self.running.get(&service).cloned();
                    let key = (service.clone(), m.provider.clone(), m.query.clone());
                    if asks.iter().any(|(k, ..)| *k == key) {
                        continue;
                    }
                    let vars = QueryVars {
                        service: service.clone(),
                        // The canary does not exist yet: ask for what runs now.
                        version: running.clone().unwrap_or_else(|| candidate.clone()),
                        stable_version: running.clone().unwrap_or_default(),
                        environment: self.plan.environment.clone(),
                        interval_ms,
                        vars: BTreeMap::new(),
                    };
                    asks.push((key, m.clone(), vars, running));
                }
            }
        }
        let judged = asks
            .iter()
            .map(|((service, provider, _), m, vars, running)| {
                self.judge_monitoring(&providers, service, provider, m, vars, running.as_deref())
            });
        futures_util::future::join_all(judged).await
    }

    /// Ask one (provider, query) for one service, and judge the answer.
    async fn judge_monitoring(
        &self,
        providers: &ProviderSet,
        service: &str,
        provider: &str,
        m: &Metric,
        vars: &QueryVars,
        running: Option<&str>,
    ) -> Verdict {
        let started = Instant::now();
        let asked = providers.read_one(m, vars).await;
        let target = format!("{service}: {} ({})", m.name, asked.source);
        let expected = format!("an answer with data for {service} {}", vars.version);
        let row = |o, measured: String| {
            Verdict::new(
                format!("monitoring.{provider}"),
                target.clone(),
                o,
                measured,
                expected.clone(),
                started,
            )
        };
        let why = match asked.reading {
            Reading::Value(v) if v.is_finite() => {
                return row(Outcome::Pass, format!("value {v} for `{}`", asked.query));
            }
            Reading::Error(e) => {
                return row(Outcome::Fail, e).hint(format!(
                    "the canary analysis would ask this provider once traffic is on the canary, and fail there: fix providers.{provider} (address, credentials) or the query now"
                ));
            }
            Reading::Value(v) => format!("{v} (not a number)"),
            Reading::NoData(why) => why,
        };
        let is_prometheus = self
            .plan
            .providers
            .get(provider)
            .is_some_and(|p| p.prometheus.is_some());
        let names = m
            .query
            .as_deref()
            .map(slipway_model::metric_query::promql_metric_names)
            .unwrap_or_default();
        if !is_prometheus || names.is_empty() {
            return match running {
                Some(r) if is_prometheus => row(Outcome::Fail, format!("no data: {why}")).hint(format!(
                    "the provider answers, but the query has no data for {service} {r}, which runs there now: the canary would be judged on nothing"
                )),
                _ => row(Outcome::Warn, format!("answered, no value yet: {why}")).hint(
                    "the provider answers; whether the canary will have data cannot be known before it exists",
                ),
            };
        }
        // A canary query has no sample before the canary exists: prove instead that
        // every series it selects exists, so the analysis will have something to read.
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in &names {
            let probe = Metric {
                name: m.name.clone(),
                provider: m.provider.clone(),
                query: Some(format!("count({{__name__=\"{name}\"}})")),
                max: None,
                min: None,
                compare: None,
                confidence: None,
            };
            match providers.read_one(&probe, vars).await.reading {
                Reading::Value(n) if n.is_finite() && n > 0.0 => {
                    found.push(format!("{name} ({n} series)"))
                }
                Reading::Error(e) => return row(Outcome::Fail, e),
                _ => missing.push(name.clone()),
            }
        }
        if missing.is_empty() {
            return row(
                Outcome::Pass,
                format!(
                    "no sample yet ({why}); every series it selects exists: {}",
                    found.join(", ")
                ),
            );
        }
        let measured = format!(
            "no data ({why}) and no series named {}",
            missing
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match running {
            Some(r) => row(Outcome::Fail, measured).hint(format!(
                "{service} {r} runs there, yet nothing exports those series: the canary would be judged on nothing; fix the metric names or the exporter"
            )),
            None => row(Outcome::Warn, measured).hint(format!(
                "nothing of {service} runs in {} yet, so its series may not exist yet",
                self.plan.environment
            )),
        }
    }
}

/// A row for an address whose placeholders cannot be filled.
fn unfillable(why: &str) -> Verdict {
    Verdict::new(
        "reach",
        "",
        Outcome::Fail,
        why.to_owned(),
        "connect",
        Instant::now(),
    )
    .hint("define the variable (a secret one must be set where slipway runs)")
}

/// Name a reach row: `reach.SERVICE` (`tls.SERVICE` for `tls://`), `FROM -> endpoint`.
fn name_reach(mut v: Verdict, e: &EndpointText, from: &str) -> Verdict {
    let kind = if e.shown.trim_start().starts_with("tls://") {
        "tls"
    } else {
        "reach"
    };
    v.check = format!("{kind}.{}", e.service);
    v.target = format!("{from} -> {}", e.shown);
    v
}

/// Why a host could not open a connection, in the reach check's terms.
fn open_failure(host: &str, to: &str, port: u16, e: &russh::Error) -> ConnectError {
    use russh::ChannelOpenFailure as F;
    match e {
        russh::Error::ChannelOpenFailure(F::ConnectFailed) => ConnectError::Other {
            measured: "refused (the host could not connect)".into(),
            hint: format!(
                "{host} cannot connect to {to}:{port}: nothing listens there, or the name does not resolve on {host}; start the service or fix the endpoint"
            ),
        },
        russh::Error::ChannelOpenFailure(F::AdministrativelyProhibited) => ConnectError::Other {
            measured: "not checkable: the host's sshd forbids TCP forwarding".into(),
            hint: format!(
                "reachability is measured through {host}'s sshd (a direct-tcpip channel): allow it for the deploy user (`AllowTcpForwarding local` and `PermitOpen any` in sshd_config), or mark `reach` advisory (`environments.ENV.advisory_checks`)"
            ),
        },
        other => ConnectError::Other {
            measured: format!("error: {other}"),
            hint: format!("the session to {host} could not open a channel to {to}:{port}"),
        },
    }
}
