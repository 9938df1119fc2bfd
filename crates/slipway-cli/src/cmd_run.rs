//! Run commands: `deploy`, `resume`, `status`, `logs`, `pause`, `promote`, `abort`,
//! `approve`, `history`. They open the store (`--store` / `SLIPWAY_STORE`: an SQLite file,
//! default `.slipway/slipway.db`, or a PostgreSQL URL), build the engine with the `exec` target (the `ssh` target for an
//! `ssh` environment, whose hosts `deploy` checks before creating a run; and, for a `process`
//! environment, the deploy target with one long-lived proxy process per service), and
//! render the engine's typed events; the engine itself never prints.
//!
//! A live canary hears humans from other processes: `pause` and `abort` through the run's
//! control request in the store, `resume` and `promote` through a request file the driver
//! polls (`slipway_providers::interventions`). When nobody drives the run (paused, or its
//! driver died), `resume` and `promote` drive it here and `abort` first takes a paused
//! canary out of service.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use slipway_engine::engine::approval_need;
use slipway_engine::event::{Control, EngineEvent, Notice, RunState, StepCompletion};
use slipway_engine::store::{RunRecord, Store};
use slipway_engine::{
    DriveOptions, DriveOutcome, Engine, EngineError, NewRunRequest, StoreError, SystemClock,
};
use slipway_govern::access::Role;
use slipway_model::exit;
use slipway_model::plan::Plan;
use slipway_providers::deploy::{CompositeTarget, DeployTarget};
use slipway_providers::interventions;
use slipway_providers::migrate::MigrateTarget;
use slipway_providers::{ArtifactTarget, ExecTarget};
use slipway_rollout::Intervention;
use slipway_store::{AnyStore, StoreLocation};

use crate::out::{CliError, Output, Style};

/// `--store`, shared by every run command.
#[derive(Debug, clap::Args)]
pub struct StoreArg {
    /// Where runs are kept: sqlite://PATH (default .slipway/slipway.db here) or
    /// postgres://USER:PASSWORD@HOST:PORT/DB (shared by a team).
    #[arg(long, env = "SLIPWAY_STORE")]
    pub store: Option<String>,
}

/// `slipway deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The release spec.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// The environment to deploy to.
    #[arg(long)]
    pub env: String,
    /// Return the run id at once; the run continues in the background.
    #[arg(long)]
    pub detach: bool,
    /// Exit with code 3 instead of waiting for a window or approvals.
    #[arg(long)]
    pub no_wait: bool,
    /// Deploy inside a freeze (needs --reason and a second person's approval).
    #[arg(long, requires = "reason")]
    pub override_freeze: bool,
    /// Wait while another release holds the environment's lease instead of exiting 3.
    #[arg(long)]
    pub wait: bool,
    /// Why the freeze is overridden (audited).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Commands that name one run.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run id (see `slipway history`).
    pub run: String,
    /// Exit with code 3 instead of waiting for a window or approvals.
    #[arg(long)]
    pub no_wait: bool,
    /// (resume) Wait while another release holds the environment's lease.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway rollback`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway rollback 20261126-033243-ef0a61 --reason \"checkout errors after release\""
)]
pub struct RollbackArgs {
    /// Run id (see `slipway history`).
    pub run: String,
    /// Why; journaled and audited with your identity.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Run id (default: the latest run).
    pub run: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Run id.
    pub run: String,
    /// Keep following the journal until the run ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// Run id.
    pub run: String,
    /// The plan digest you reviewed; refused if the run executes another plan.
    #[arg(long)]
    pub digest: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub store: StoreArg,
}

/// The current person: the subject of a verified `--token`, else `SLIPWAY_USER`, else the
/// OS user.
pub fn identity() -> String {
    if let Some(user) = crate::cmd_access::token_user() {
        return user.to_owned();
    }
    ["SLIPWAY_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start the async runtime: {e}"),
                None,
            )
        })
}

pub(crate) fn store_error(e: StoreError) -> CliError {
    let hint = match &e {
        StoreError::Incompatible(_) | StoreError::Unavailable { .. } => {
            Some("choose another store with --store (or SLIPWAY_STORE): sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB".to_owned())
        }
        StoreError::NoSuchRun(_) => Some("list runs with `slipway history`".to_owned()),
        _ => None,
    };
    let code = match &e {
        StoreError::NoSuchRun(_) => exit::INVALID_INPUT,
        StoreError::Claimed(_) => exit::BLOCKED,
        _ => exit::STORE,
    };
    CliError::new(code, format!("failed to {e}"), hint)
}

fn engine_error(e: EngineError) -> CliError {
    match e {
        EngineError::Store(s) => store_error(s),
        EngineError::Frozen { .. } | EngineError::SelfApproval { .. } => {
            CliError::new(exit::BLOCKED, format!("failed to {e}"), None)
        }
        EngineError::DigestMismatch { .. } | EngineError::Terminal { .. } => {
            CliError::new(exit::INVALID_INPUT, format!("failed to {e}"), None)
        }
        other => CliError::new(exit::INTERNAL, format!("failed to {other}"), None),
    }
}

/// Open the store named by `--store`. Besides the store, the path whose directory holds
/// this machine's files of runs (exec markers, verified artifacts, `runs/<id>/`, process
/// state): the SQLite file itself, or for PostgreSQL `.slipway/slipway.db` under the
/// current directory — a name only, never opened as a database (the records kept only in
/// SQLite go through [`sqlite_only`]).
pub(crate) async fn open_store(arg: &StoreArg) -> Result<(Arc<AnyStore>, PathBuf), CliError> {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::new(
            exit::STORE,
            format!("failed to read the current directory: {e}"),
            None,
        )
    })?;
    let loc = slipway_store::resolve(arg.store.as_deref(), &cwd).map_err(store_error)?;
    let anchor = local_anchor(&loc, &cwd);
    let store = slipway_store::open(&loc).await.map_err(store_error)?;
    Ok((Arc::new(store), anchor))
}

/// See [`open_store`]: where this machine's run files live for a store location.
pub(crate) fn local_anchor(loc: &StoreLocation, cwd: &Path) -> PathBuf {
    match loc {
        StoreLocation::Sqlite(p) => p.clone(),
        StoreLocation::Postgres(_) => cwd.join(slipway_store::DEFAULT_PATH),
    }
}

/// The SQLite file of the store, for `command`, which needs `what` — records kept only in
/// an SQLite store so far. On PostgreSQL: a refusal (exit 2, nothing done) naming the
/// command, the store and what to do.
pub(crate) fn sqlite_only<'a>(
    store: &'a AnyStore,
    command: &str,
    what: &str,
) -> Result<&'a Path, CliError> {
    store.sqlite_path().ok_or_else(|| {
        CliError::new(
            exit::INVALID_INPUT,
            format!(
                "failed to run `{command}` on {}: it needs {what}, which only an SQLite store keeps so far",
                store.location()
            ),
            Some(
                "run it with --store sqlite://PATH; on PostgreSQL, runs, approvals, leases, access control, reports and `audit verify/export` work"
                    .to_owned(),
            ),
        )
    })
}

/// The engine over the exec target, with verify-artifact steps routed to an
/// [`ArtifactTarget`]. `plan` (when known) locates the spec's directory, which artifact,
/// signature and key paths are relative to.
fn engine_for(store: Arc<AnyStore>, db: &Path, workdir: &str, plan: Option<&Plan>) -> Engine {
    engine_with(store, db, workdir, plan, None)
}

/// [`engine_for`] with `deploy` steps going to `deploy` (the process target).
fn engine_with(
    store: Arc<AnyStore>,
    db: &Path,
    workdir: &str,
    plan: Option<&Plan>,
    deploy: Option<Arc<DeployTarget>>,
) -> Engine {
    engine_with_ssh(store, db, workdir, plan, deploy, None)
}

/// [`engine_with`] whose steps on an `ssh` plan go to `ssh` when given: the target whose
/// host check opened the sessions, so the run does not log in to every host again.
fn engine_with_ssh(
    store: Arc<AnyStore>,
    db: &Path,
    workdir: &str,
    plan: Option<&Plan>,
    deploy: Option<Arc<DeployTarget>>,
    ssh: Option<slipway_providers::ssh::SshTarget>,
) -> Engine {
    let state = db.parent().unwrap_or(Path::new(".")).join("exec");
    let (exec, config) = crate::cmd_config::targets(
        db,
        &spec_dir_of(Path::new(workdir), plan),
        plan,
        secret_redactor(plan),
    );
    let exec: Arc<dyn slipway_engine::Target> = match (plan.filter(|p| p.target == "ssh"), ssh) {
        (Some(_), Some(checked)) => Arc::new(checked),
        (Some(p), None) => match ssh_target(p, &spec_dir_of(Path::new(workdir), plan)) {
            Ok(t) => Arc::new(t),
            // A resumed or rolled-back run whose inventory no longer loads: every step
            // fails with the reason instead of running somewhere else.
            Err(why) => Arc::new(Unavailable(why)),
        },
        (None, _) => Arc::new(exec(ExecTarget::new(workdir, state))),
    };
    let target = CompositeTarget {
        config,
        exec: Some(exec),
        deploy: deploy.map(|d| d as Arc<dyn slipway_engine::Target>),
        migrate: Some(Arc::new(migrate_target(db, workdir, plan))),
        artifact: Some(Arc::new(
            ArtifactTarget::new(spec_dir_of(Path::new(workdir), plan))
                .with_store(db.parent().unwrap_or(Path::new(".")).join("artifacts")),
        )),
    };
    let mut checks = crate::check_runner::SpecCheckRunner::new(workdir)
        .with_runs_dir(db.parent().unwrap_or(Path::new(".")).join("runs"));
    if let Some(p) = plan.filter(|p| p.target == "process") {
        checks = checks.with_instances(process_root(db, Path::new(workdir), p).join("instances"));
    }
    Engine::new(store, Arc::new(target), Arc::new(SystemClock)).with_checks(Arc::new(checks))
}

/// The ssh target of an `ssh` plan: its inventory (relative to the spec's directory),
/// group, user and parallelism, with the environment's secrets masked in host output.
pub(crate) fn ssh_target(
    plan: &Plan,
    spec_dir: &Path,
) -> Result<slipway_providers::ssh::SshTarget, String> {
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
    let inventory =
        slipway_providers::ssh::Inventory::parse(&path, &text).map_err(|e| e.to_string())?;
    slipway_providers::ssh::SshTarget::new(
        &inventory,
        t.group.as_deref(),
        t.user.as_deref(),
        t.parallelism,
    )
    .and_then(|s| s.with_waves(&inventory, t.batch.as_ref(), t.max_failures.as_ref()))
    .map(|t| t.with_redactor(secret_redactor(Some(plan))))
    .map_err(|e| e.to_string())
}

/// A target that cannot be built: every operation fails with why.
struct Unavailable(String);

impl slipway_engine::Target for Unavailable {
    fn kind(&self) -> &'static str {
        "unavailable"
    }
    fn apply<'a>(
        &'a self,
        _: &'a slipway_engine::StepContext,
        _: &'a slipway_model::plan::StepAction,
    ) -> slipway_engine::BoxFuture<'a, Result<slipway_engine::Applied, slipway_engine::TargetError>>
    {
        Box::pin(async move { Err(slipway_engine::TargetError::Io(self.0.clone())) })
    }
    fn observe<'a>(
        &'a self,
        _: &'a slipway_engine::StepContext,
        _: &'a slipway_model::plan::StepAction,
    ) -> slipway_engine::BoxFuture<
        'a,
        Result<slipway_engine::Observation, slipway_engine::TargetError>,
    > {
        Box::pin(async move { Err(slipway_engine::TargetError::Io(self.0.clone())) })
    }
    fn undo<'a>(
        &'a self,
        _: &'a slipway_engine::StepContext,
        _: &'a slipway_model::plan::StepAction,
    ) -> slipway_engine::BoxFuture<
        'a,
        Result<Option<slipway_engine::StepOutput>, slipway_engine::TargetError>,
    > {
        Box::pin(async move { Err(slipway_engine::TargetError::Io(self.0.clone())) })
    }
}

/// Per host, what each ssh step did (`ssh_host` progress entries of the journal), in
/// journal order.
fn ssh_hosts(journal: &[Notice]) -> Vec<serde_json::Value> {
    journal
        .iter()
        .filter_map(|n| match &n.event {
            EngineEvent::StepProgress { step, detail, .. }
                if detail.get("event").and_then(|e| e.as_str()) == Some("ssh_host") =>
            {
                let mut d = detail.clone();
                if let Some(m) = d.as_object_mut() {
                    m.remove("event");
                    m.insert("step".into(), serde_json::Value::from(step.as_str()));
                }
                Some(d)
            }
            _ => None,
        })
        .collect()
}

/// Per step and analysis template, the canary's measurements: how many, by phase, the
/// analysis phase after the last one and the last one's per-metric verdicts (value,
/// threshold, detail and, for Prometheus/HTTP providers, the query sent), so `status`
/// shows what judged the canary without reading the journal.
fn analysis_summary(journal: &[Notice]) -> Vec<serde_json::Value> {
    let mut by_key: Vec<(String, String, serde_json::Value)> = Vec::new();
    for n in journal {
        let EngineEvent::StepProgress { step, detail, .. } = &n.event else {
            continue;
        };
        if detail.get("event").and_then(|e| e.as_str()) != Some("measured") {
            continue;
        }
        let template = detail["template"].as_str().unwrap_or_default().to_owned();
        let phase = detail["measurement"]["phase"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let at = match by_key
            .iter()
            .position(|(s, t, _)| s == step && *t == template)
        {
            Some(i) => i,
            None => {
                by_key.push((
                    step.clone(),
                    template.clone(),
                    json!({"step": step, "template": template, "measurements": 0, "by_phase": {}}),
                ));
                by_key.len() - 1
            }
        };
        let entry = &mut by_key[at].2;
        entry["measurements"] = json!(entry["measurements"].as_u64().unwrap_or(0) + 1);
        let count = entry["by_phase"][&phase].as_u64().unwrap_or(0) + 1;
        entry["by_phase"][&phase] = json!(count);
        entry["phase"] = detail["phase"].clone();
        entry["last"] = detail["measurement"]["results"].clone();
    }
    by_key.into_iter().map(|(_, _, v)| v).collect()
}

/// The ssh hosts where a step failed during the run (those that failed within the
/// failure budget of a succeeded run were left out of its later steps), distinct, in the
/// order they failed.
fn ssh_failed_hosts(journal: &[Notice]) -> Vec<String> {
    let mut failed: Vec<String> = Vec::new();
    for h in ssh_hosts(journal) {
        if h["phase"] == "apply"
            && (h["result"] == "failed" || h["result"] == "excluded")
            && let Some(name) = h["host"].as_str()
            && !failed.iter().any(|f| f == name)
        {
            failed.push(name.to_owned());
        }
    }
    failed
}

/// Where the process target of an environment keeps instance and proxy state, logs and
/// diagnostics: `target.process.workdir` (relative to the spec's directory), else
/// `<store dir>/process/<environment>`.
pub(crate) fn process_root(db: &Path, workdir: &Path, plan: &Plan) -> PathBuf {
    match plan
        .env
        .target
        .process
        .as_ref()
        .and_then(|p| p.workdir.as_deref())
    {
        Some(w) => workdir.join(w),
        None => db
            .parent()
            .unwrap_or(Path::new("."))
            .join("process")
            .join(&plan.environment),
    }
}

/// The services a plan deploys and their versions (from each `service/step` deploy step).
pub(crate) fn deployed_services(plan: &Plan) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            slipway_model::plan::StepAction::Deploy { version, .. } => Some((
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

/// The deploy target of a `process` environment: instances under the process root, and
/// each deployed service's proxy process found (or started) there. A proxy started now
/// is given the instances already serving, so clients are answered from the first request.
async fn process_deploy(
    store: Arc<AnyStore>,
    db: &Path,
    workdir: &Path,
    plan: &Plan,
    out: &Output,
) -> Result<Arc<DeployTarget>, CliError> {
    use slipway_providers::process::{ProcessTarget, ServiceProcess};
    use slipway_providers::remote::{ProxySupervisor, RemoteRouter};
    use slipway_rollout::TrafficRouter as _;
    let root = process_root(db, workdir, plan);
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
                    env: std::collections::BTreeMap::new(),
                    workdir: workdir.to_path_buf(),
                },
            ))
        })
        .collect();
    let store_dir = db.parent().unwrap_or(Path::new("."));
    let mut processes = ProcessTarget::new(root.join("instances"), services).with_config_root(
        slipway_providers::config::env_root(store_dir, &plan.environment),
    );
    if let Some(g) = plan
        .env
        .target
        .process
        .as_ref()
        .and_then(|p| p.stop_grace.as_deref())
        .and_then(|g| slipway_model::duration::parse_duration(g).ok())
    {
        processes.stop_grace = g;
    }
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            exit::INTERNAL,
            format!("failed to find the slipway binary: {e}"),
            None,
        )
    })?;
    let supervisor = ProxySupervisor::new(
        root.join("proxies"),
        vec![exe.into_os_string(), "proxy".into(), "serve".into()],
    );
    let mut routers: std::collections::BTreeMap<String, RemoteRouter> =
        std::collections::BTreeMap::new();
    let external = external_routers(plan, workdir);
    for (service, version) in deployed_services(plan) {
        if let Some(r) = external.get(&service) {
            if !out.json() {
                out.eline(&format!("{service}: traffic through {}", r.0));
            }
            continue;
        }
        let (router, started) = supervisor.ensure(&service).await.map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("failed to deploy: {e}"),
                Some(format!(
                    "the proxy's log is {}",
                    supervisor.log_path(&service).display()
                )),
            )
        })?;
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
                router.set_pools(&addrs, &[]).await.map_err(|e| {
                    CliError::new(exit::FAILURE, format!("failed to deploy: {e}"), None)
                })?;
            }
        }
        if !out.json() {
            out.eline(&format!(
                "{service}: proxy {} at http://{} (pid {})",
                if started { "started" } else { "found" },
                router.traffic_addr(),
                router.state().pid
            ));
        }
        routers.insert(service, router);
    }
    let runs_dir = db.parent().unwrap_or(Path::new(".")).join("runs");
    let store: Arc<dyn slipway_engine::Store> = store;
    // Canary analysis asks the plan's metric providers, with the environment's
    // `secret://env/…` variables resolved here, at deploy time, and nowhere else.
    let providers =
        slipway_providers::metrics::ProviderSet::from_plan(plan).with_secrets(secret_vars(plan));
    let mut deploy = DeployTarget::new(plan.clone(), processes, routers, root.join("diagnostics"))
        .with_routers(external.into_iter().map(|(s, (_, r))| (s, r)).collect())
        .with_run_interventions(runs_dir, Some(store))
        .with_external_metrics(Arc::new(providers));
    // Smoke checks run against each candidate's own address before it gets traffic.
    if let Some(gate) = slipway_providers::smoke_gate::SmokeGate::from_plan(plan) {
        deploy = deploy.with_pre_traffic(Arc::new(gate));
    }
    Ok(Arc::new(deploy))
}

/// The nginx / HAProxy router of each deployed service whose environment names one
/// (paths relative to the spec's directory), with a description for the operator. They
/// keep nothing: a later `slipway` builds the same from the plan and reads the rest back
/// from nginx / HAProxy.
fn external_routers(
    plan: &Plan,
    workdir: &Path,
) -> std::collections::BTreeMap<String, (String, Arc<dyn slipway_providers::deploy::ServiceRouter>)>
{
    use slipway_providers::deploy::ServiceRouter;
    let mut out = std::collections::BTreeMap::new();
    for (service, _) in deployed_services(plan) {
        let Some(r) = plan.router_of(&service) else {
            continue;
        };
        let built: Option<(String, Arc<dyn ServiceRouter>)> = if let Some(n) = &r.nginx {
            let file = workdir.join(&n.upstream_file);
            Some((
                format!("nginx upstream `{}` ({})", n.upstream, file.display()),
                Arc::new(slipway_providers::nginx::NginxRouter::new(
                    file,
                    n.upstream.clone(),
                    n.test.clone(),
                    n.reload.clone(),
                )),
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
                    Arc::new(slipway_providers::haproxy::HaproxyRouter::new(
                        socket,
                        h.backend.clone(),
                        stable,
                        canary,
                    )) as Arc<dyn ServiceRouter>,
                )
            })
        };
        if let Some(b) = built {
            out.insert(service, b);
        }
    }
    out
}

/// The deploy target when the plan deploys to the process target.
async fn deploy_target_for(
    store: &Arc<AnyStore>,
    db: &Path,
    workdir: &Path,
    plan: Option<&Plan>,
    out: &Output,
) -> Result<Option<Arc<DeployTarget>>, CliError> {
    match plan {
        Some(p) if p.target == "process" => Ok(Some(
            process_deploy(store.clone(), db, workdir, p, out).await?,
        )),
        _ => Ok(None),
    }
}

/// What serves a process-target environment now, per deployed service: its proxy (live
/// weight and counters from its admin API; never the token) and the instances running,
/// by version. Read-only: nothing is started.
async fn process_view(db: &Path, workdir: &Path, plan: &Plan) -> serde_json::Value {
    use slipway_providers::process::ProcessTarget;
    use slipway_providers::remote::ProxySupervisor;
    let root = process_root(db, workdir, plan);
    let instances = ProcessTarget::new(root.join("instances"), std::collections::BTreeMap::new());
    let proxies = ProxySupervisor::new(root.join("proxies"), Vec::new());
    let external = external_routers(plan, workdir);
    let mut view = serde_json::Map::new();
    for (service, _) in deployed_services(plan) {
        let proxy = match proxies.find(&service).await {
            Some(r) => {
                let state = r.fetch_state().await.ok();
                json!({
                    "pid": r.state().pid,
                    "traffic": r.traffic_addr().to_string(),
                    "weight": state.as_ref().map(|s| s.weight),
                    "requests": state.as_ref().map(|s| json!({"stable": s.requests_stable, "canary": s.requests_canary})),
                    "errors": state.as_ref().map(|s| json!({"stable": s.errors_stable, "canary": s.errors_canary})),
                })
            }
            None => serde_json::Value::Null,
        };
        let mut by_version: std::collections::BTreeMap<String, usize> =
            std::collections::BTreeMap::new();
        for i in instances.running(&service).alive {
            *by_version.entry(i.version).or_insert(0) += 1;
        }
        let mut entry = json!({"proxy": proxy, "instances": by_version});
        if let Some((what, r)) = external.get(&service) {
            // No built-in proxy here: what the external router serves, read back from it.
            entry["router"] = json!({"via": what, "weight": r.verify_weight().await});
        }
        view.insert(service, entry);
    }
    serde_json::Value::Object(view)
}

/// Whether a live process drives the run now (holds its claim).
async fn driven(store: &AnyStore, run: &str) -> Result<bool, CliError> {
    match slipway_engine::Store::claim(store, run).await {
        Ok(_claim) => Ok(false),
        Err(StoreError::Claimed(_)) => Ok(true),
        Err(e) => Err(store_error(e)),
    }
}

/// The versions this run resolved (release services + what runs there), written with the
/// run as `<store dir>/runs/<run>/versions.lock.json`, so "what exactly was deployed
/// beside what" survives the spec changing. Best effort: a run is not refused for it.
fn write_version_lock(db: &Path, run_id: &str, plan: &Plan, spec_file: &Path) {
    let spec_dir = spec_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(text) = std::fs::read_to_string(spec_file) else {
        return;
    };
    let Ok(loaded) = slipway_model::validate::load(&spec_file.display().to_string(), &text) else {
        return;
    };
    let checks = slipway_package::plan_checks(
        &loaded.spec,
        spec_dir,
        &plan.environment,
        &slipway_package::CheckFacts::default(),
    );
    let Some(lock) = checks.lock else {
        return;
    };
    let dir = db
        .parent()
        .unwrap_or(Path::new("."))
        .join("runs")
        .join(run_id);
    let write = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::write(
            dir.join("versions.lock.json"),
            serde_json::to_vec_pretty(&lock).unwrap_or_default(),
        )
    });
    if let Err(e) = write {
        warn_operator(&format!(
            "could not write the version lock of run {run_id}: {e}"
        ));
    }
}

fn warn_operator(msg: &str) {
    #[allow(clippy::print_stderr, reason = "a warning the operator should see")]
    {
        eprintln!("warning: {msg}");
    }
}

/// The environment's variables that are `secret://env/NAME` references and whose variable
/// is set in this process, by variable name, resolved (for metric provider URLs).
fn secret_vars(plan: &Plan) -> std::collections::BTreeMap<String, String> {
    use slipway_package::SecretRef;
    plan.env
        .vars
        .iter()
        .filter_map(|(k, v)| match SecretRef::parse(v.as_str()) {
            Ok(Some(SecretRef::Env(name))) => std::env::var(&name).ok().map(|val| (k.clone(), val)),
            _ => None,
        })
        .collect()
}

/// Migration steps: paths relative to the spec's directory, `{{ vars.x }}` filled from the
/// environment (a `secret://env/NAME` variable is resolved from this process's
/// environment here, at install time, and nowhere else), a backup first when the
/// environment requires one.
fn migrate_target(db: &Path, workdir: &str, plan: Option<&Plan>) -> MigrateTarget {
    use slipway_package::SecretRef;
    let state = db.parent().unwrap_or(Path::new("."));
    let vars = plan
        .into_iter()
        .flat_map(|p| p.env.vars.iter())
        .filter_map(|(k, v)| match SecretRef::parse(v.as_str()) {
            Ok(Some(SecretRef::Env(name))) => std::env::var(&name).ok().map(|val| (k.clone(), val)),
            Ok(Some(_)) => None,
            _ => Some((k.clone(), v.as_str().to_owned())),
        })
        .collect();
    let t = MigrateTarget::new(
        spec_dir_of(Path::new(workdir), plan),
        state.join("migrate"),
        vars,
        identity(),
    );
    if plan.is_some_and(|p| p.env.backup.as_ref().is_some_and(|b| b.required)) {
        t.with_backup(state.join("backups"))
    } else {
        t
    }
}

/// A redactor for the values of the environment variables this environment's vars
/// reference as `secret://env/NAME`: steps run with this process's environment, so a step
/// can print such a secret, and captured output is journaled and audited. Unset variables
/// have nothing to mask. (`secret://file/…` values are only read when rendering configs.)
fn secret_redactor(plan: Option<&Plan>) -> slipway_package::Redactor {
    use slipway_package::SecretRef;
    // Masked as `***secret://env/NAME***`, so the reader sees which secret was printed.
    let secrets = plan
        .into_iter()
        .flat_map(|p| p.env.vars.values())
        .filter_map(|v| match SecretRef::parse(v.as_str()) {
            Ok(Some(SecretRef::Env(name))) => std::env::var(&name)
                .ok()
                .map(|value| (SecretRef::Env(name), value)),
            _ => None,
        });
    slipway_package::Redactor::new(secrets)
}

/// The spec file's directory, recovered from a run's workdir: `deploy` sets the workdir to
/// the spec's directory joined with the exec target's `workdir`, so a relative one is
/// stripped off again. An absolute exec `workdir` cannot be undone; the workdir is used.
fn spec_dir_of(workdir: &Path, plan: Option<&Plan>) -> PathBuf {
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

fn exit_for(outcome: &DriveOutcome) -> i32 {
    match outcome {
        DriveOutcome::Finished(RunState::Succeeded) => exit::SUCCESS,
        DriveOutcome::Finished(RunState::RolledBack) => exit::ROLLED_BACK,
        DriveOutcome::Finished(RunState::Aborted) => exit::ABORTED,
        DriveOutcome::Finished(_) => exit::FAILURE,
        DriveOutcome::Paused => exit::PAUSED,
        DriveOutcome::Blocked { .. } => exit::BLOCKED,
    }
}

/// Why the run is where it is: the reason of its latest state change that gave one.
async fn last_reason(store: &dyn Store, run: &str) -> Option<String> {
    let journal = store.journal(run, 0).await.ok()?;
    journal.iter().rev().find_map(|n| match &n.event {
        EngineEvent::StateChanged {
            reason: Some(r), ..
        } => Some(r.clone()),
        _ => None,
    })
}

fn outcome_json(run: &str, outcome: &DriveOutcome, continued: bool) -> serde_json::Value {
    match outcome {
        DriveOutcome::Finished(s) => {
            json!({"run": run, "state": s, "continued": continued, "exit_code": exit_for(outcome)})
        }
        DriveOutcome::Paused => {
            json!({"run": run, "state": "paused", "continued": continued, "exit_code": exit::PAUSED})
        }
        DriveOutcome::Blocked {
            gate,
            detail,
            opens_at,
        } => json!({
            "run": run, "state": "blocked", "continued": continued, "exit_code": exit::BLOCKED,
            "blocked": {"gate": gate, "detail": detail, "opens_at": opens_at.map(|t| t.to_string())},
        }),
    }
}

/// One human line for an event, or None for events not worth a line.
pub fn event_line(n: &Notice, out: &Output) -> Option<String> {
    let s = match &n.event {
        EngineEvent::RunCreated {
            release,
            version,
            environment,
            digest,
            ..
        } => format!(
            "run {} created: {release} {version} -> {environment} (plan {})",
            n.run_id,
            &digest[..digest.len().min(12)]
        ),
        EngineEvent::StateChanged { to, reason, .. } => {
            let style = match to {
                RunState::Succeeded => Style::Good,
                RunState::Failed | RunState::RolledBack | RunState::Aborted => Style::Bad,
                _ => Style::Bold,
            };
            let r = reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            format!("state: {}{r}", out.paint(to.as_str(), style))
        }
        EngineEvent::GateWaiting { gate, detail, .. } => format!("waiting on {gate}: {detail}"),
        EngineEvent::GatePassed { gate, detail } => format!("gate {gate} passed: {detail}"),
        EngineEvent::Approved { approver, .. } => format!("approved by {approver}"),
        EngineEvent::ControlRequested { control } => format!("{} requested", control.as_str()),
        EngineEvent::StepSucceeded {
            step, completion, ..
        } => match completion {
            StepCompletion::Applied => format!("  {} {step}", out.paint("ok", Style::Good)),
            StepCompletion::AlreadyDone { guard } => {
                format!(
                    "  {} {step} (already done: {guard})",
                    out.paint("ok", Style::Good)
                )
            }
            StepCompletion::Observed { evidence } => {
                format!(
                    "  {} {step} (recovered: {evidence})",
                    out.paint("ok", Style::Good)
                )
            }
        },
        EngineEvent::StepFailed { step, error, .. } => {
            format!("  {} {step}: {error}", out.paint("FAILED", Style::Bad))
        }
        EngineEvent::StepObserved {
            step,
            evidence,
            decision,
            ..
        } => {
            format!("  observed {step}: {evidence} -> {decision:?}")
        }
        EngineEvent::UndoSucceeded { step, .. } => format!("  undone {step}"),
        EngineEvent::UndoFailed { step, error, .. } => format!("  undo of {step} failed: {error}"),
        EngineEvent::DeployRefused { reason, .. } => format!("refused: {reason}"),
        EngineEvent::WaveStarted { wave, steps } => format!("wave {wave}: {steps} step(s)"),
        EngineEvent::CheckRan {
            phase,
            name,
            passed,
            measured,
            expected,
            detail,
        } => {
            let (verdict, style) = if *passed {
                ("ok", Style::Good)
            } else {
                ("FAILED", Style::Bad)
            };
            format!(
                "  check {} {name} ({}): measured {measured}, expected {expected} — {detail}",
                out.paint(verdict, style),
                slipway_engine::checks::phase_name(*phase)
            )
        }
        EngineEvent::CheckSkipped {
            phase,
            name,
            reason,
        } => format!(
            "  check {} {name} ({}): {reason}",
            out.paint("SKIPPED", Style::Warn),
            slipway_engine::checks::phase_name(*phase)
        ),
        EngineEvent::StepProgress { step, detail, .. } => {
            let kind = detail
                .get("event")
                .and_then(|v| v.as_str())
                .unwrap_or("progress");
            let what = match kind {
                "weight_set" => format!("canary weight {}%", detail["weight"]),
                "measured" => format!(
                    "analysis {}: {}",
                    detail["phase"].as_str().unwrap_or("?"),
                    detail["measurement"]["results"]
                        .as_array()
                        .map(|r| r
                            .iter()
                            .map(|m| m["detail"].as_str().unwrap_or_default().to_owned())
                            .collect::<Vec<_>>()
                            .join("; "))
                        .unwrap_or_default()
                ),
                "rolling_back" | "rolled_back" | "paused" | "step_paused" => {
                    format!("{kind}: {}", detail["reason"].as_str().unwrap_or_default())
                }
                "step_started" => format!(
                    "canary step {}: {}",
                    detail["index"],
                    detail["step"].as_str().unwrap_or_default()
                ),
                "promoted" => format!(
                    "promoted {}",
                    detail["version"].as_str().unwrap_or_default()
                ),
                "pre_traffic_checked" => format!(
                    "smoke before traffic {}: {}",
                    if detail["passed"] == true {
                        "ok"
                    } else {
                        "FAILED"
                    },
                    detail["detail"].as_str().unwrap_or_default()
                ),
                "canary_started" => format!(
                    "canary started ({} instances)",
                    detail["instances"].as_array().map_or(0, Vec::len)
                ),
                "ssh_host" => format!(
                    "{} on {}: {}{}",
                    detail["phase"].as_str().unwrap_or_default(),
                    detail["host"].as_str().unwrap_or_default(),
                    detail["result"].as_str().unwrap_or_default(),
                    detail["detail"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                other => other.replace('_', " "),
            };
            format!("    {step}: {what}")
        }
        _ => return None,
    };
    Some(s)
}

/// Drive a run in the foreground with live progress, then report.
#[expect(
    clippy::too_many_arguments,
    reason = "one private call shape shared by deploy and resume; a struct would only rename them"
)]
async fn drive_foreground(
    engine: Engine,
    run: &RunRecord,
    plan: Option<&Plan>,
    actor: &str,
    no_wait: bool,
    continued: bool,
    lease_wait: bool,
    out: &Output,
) -> Result<i32, CliError> {
    // No two runs deploy to one environment: take its lease before driving.
    let store = engine.store().clone();
    let mut lease = crate::cmd_env::take(store.clone(), run, lease_wait, out).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Notice>();
    let engine = engine.with_notices(tx);
    let (notify_tx, notify_task) = crate::cmd_notify::start(plan, &run.workdir);
    let tty = std::io::stderr().is_terminal() && !out.json();
    let json = out.json();
    let multi = MultiProgress::new();
    let mut bars: Vec<ProgressBar> = Vec::new();
    if tty && let Some(p) = plan {
        for w in &p.waves {
            let n = p.steps.iter().filter(|s| s.wave == w.index).count() as u64;
            let bar = multi.add(ProgressBar::new(n));
            bar.set_style(
                ProgressStyle::with_template("wave {prefix} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(w.index.to_string());
            bars.push(bar);
        }
    }
    let wave_of: std::collections::HashMap<String, u32> = plan
        .map(|p| p.steps.iter().map(|s| (s.id.clone(), s.wave)).collect())
        .unwrap_or_default();
    let printer = {
        let out_color = out.color_err;
        tokio::spawn(async move {
            let out = Output {
                format: crate::out::OutputFormat::Text,
                color: out_color,
                color_err: out_color,
            };
            while let Some(n) = rx.recv().await {
                if let Some(t) = &notify_tx {
                    let _ = t.send(n.clone());
                }
                if json {
                    continue;
                }
                if let EngineEvent::StepSucceeded { step, .. }
                | EngineEvent::StepFailed { step, .. } = &n.event
                    && let Some(bar) = wave_of.get(step).and_then(|w| bars.get(*w as usize))
                {
                    bar.inc(1);
                    bar.set_message(step.clone());
                }
                if let Some(line) = event_line(&n, &out) {
                    if tty {
                        multi.suspend(|| out.eline(&line));
                    } else {
                        out.eline(&line);
                    }
                }
            }
            for b in bars {
                b.finish();
            }
        })
    };
    let result = tokio::select! {
        r = engine.drive(&run.id, actor, DriveOptions { no_wait }) => r,
        // Our lease lapsed and another run took the environment: stop at once, as a crash
        // would (the journal makes the run resumable), rather than deploy beside it.
        Ok(other) = &mut lease.lost => {
            return Err(CliError::new(
                exit::BLOCKED,
                format!(
                    "failed to keep the lease on `{}`: it lapsed and run `{}` ({}) took it; run {} stopped",
                    run.environment, other.holder, other.release, run.id
                ),
                Some(format!("continue with `slipway resume {}` once that release is done", run.id)),
            ));
        }
    };
    drop(engine);
    let _ = printer.await;
    crate::cmd_notify::finish(notify_task, out).await;
    let outcome = result.map_err(engine_error)?;
    // A finished run gives the environment back; a paused or blocked one lets its lease
    // lapse at expiry (resume takes it again if still free).
    if matches!(outcome, DriveOutcome::Finished(_)) {
        lease.release().await?;
    } else {
        lease.lapse();
    }
    let code = exit_for(&outcome);
    let reason = match &outcome {
        DriveOutcome::Finished(RunState::Succeeded) | DriveOutcome::Blocked { .. } => None,
        _ => last_reason(store.as_ref(), &run.id).await,
    };
    // A run that succeeded with ssh hosts failed within the failure budget exits 0 (as
    // Ansible does within `max_fail_percentage`) but says which hosts were left behind.
    let failed_hosts = match &outcome {
        DriveOutcome::Finished(RunState::Succeeded) => store
            .journal(&run.id, 0)
            .await
            .map(|j| ssh_failed_hosts(&j))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if out.json() {
        let mut v = outcome_json(&run.id, &outcome, continued);
        if let Some(r) = &reason {
            v["reason"] = json!(r);
        }
        if !failed_hosts.is_empty() {
            v["failed_hosts"] = json!(failed_hosts);
        }
        out.json_value(&v);
    } else {
        if let Some(r) = &reason {
            out.eline(&format!("reason: {r}"));
        }
        if !failed_hosts.is_empty() {
            out.eline(&format!(
                "warning: succeeded with {} host{} failed within the failure budget (left out of the later steps): {}; see `slipway status {}`",
                failed_hosts.len(),
                if failed_hosts.len() == 1 { "" } else { "s" },
                failed_hosts.join(", "),
                run.id
            ));
        }
        match &outcome {
            DriveOutcome::Finished(s) => out.line(&format!("run {} {}", run.id, s.as_str())),
            DriveOutcome::Paused => out.line(&format!(
                "run {} paused; continue with `slipway resume {}`",
                run.id, run.id
            )),
            DriveOutcome::Blocked { gate, detail, .. } => out.line(&format!(
                "run {} blocked by {gate}: {detail}; continue later with `slipway resume {}`",
                run.id, run.id
            )),
        }
    }
    Ok(code)
}

/// `slipway deploy`.
pub fn deploy(a: DeployArgs, out: &Output) -> Result<i32, CliError> {
    let (_, plan) = crate::cmd_plan::make_plan(&a.file, &a.env, out)?;
    let blocking: Vec<_> = plan
        .findings
        .iter()
        .filter(|f| f.severity == "error")
        .collect();
    if !blocking.is_empty() {
        let msgs: Vec<String> = blocking
            .iter()
            .map(|f| format!("{}: {}", f.code, f.message))
            .collect();
        return Err(CliError::new(
            exit::BLOCKED,
            format!(
                "failed to deploy: the plan has blocking findings: {}",
                msgs.join("; ")
            ),
            Some(format!(
                "see `slipway plan -f {} --env {}`",
                a.file.display(),
                a.env
            )),
        ));
    }
    // Unreachable through `make_plan` (a `target-unavailable` finding blocks above); kept
    // so that no later change to the findings can start a run on a target without code.
    if !crate::cmd_plan::DEPLOYABLE_TARGETS.contains(&plan.target.as_str()) {
        return Err(CliError::input(
            format!(
                "failed to deploy: the `{}` target is not available in this build",
                plan.target
            ),
            "use `target: { exec: {} }` or `target: { process: {} }` for this environment",
        ));
    }
    let spec_dir = a
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let spec_dir = std::fs::canonicalize(&spec_dir).unwrap_or(spec_dir);
    let workdir = match plan
        .env
        .target
        .exec
        .as_ref()
        .and_then(|e| e.workdir.as_ref())
    {
        Some(w) => spec_dir.join(w),
        None => spec_dir,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        crate::cmd_access::enforce(&store, Role::Deployer, "deploy", &plan.environment).await?;
        crate::cmd_checklist::require(&store, &plan).await?;
        // Infrastructure must be committed, clean and valid before anything is touched.
        let infra = match &plan.env.infrastructure {
            Some(infra) => {
                let spec_dir = a
                    .file
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let rows =
                    crate::cmd_check::infra_rows(spec_dir, infra, Duration::from_secs(60)).await;
                let bad: Vec<String> = rows
                    .iter()
                    .filter(|r| r.verdict == slipway_checks::Outcome::Fail)
                    .map(|r| format!("{}: {} (expected {})", r.target, r.measured, r.expected))
                    .collect();
                if !bad.is_empty() {
                    return Err(CliError::new(
                        exit::BLOCKED,
                        format!(
                            "failed to deploy: the environment's infrastructure is not ready: {}",
                            bad.join("; ")
                        ),
                        Some("commit the infrastructure files and make the validation pass (`slipway check --only infra`)".into()),
                    ));
                }
                Some(rows)
            }
            None => None,
        };
        let me = identity();
        let author = store.pseudonym(&me).await.map_err(store_error)?;
        if !a.wait {
            // Refuse before creating a run when another release holds the environment.
            let mine = store
                .active_run(&plan.digest, &plan.environment)
                .await
                .map_err(store_error)?
                .map(|r| r.id);
            crate::cmd_env::refuse_if_leased(store.as_ref(), &plan.environment, mine.as_deref())
                .await?;
        }
        let mut checked_ssh = None;
        if plan.target == "ssh" {
            // Every host reachable, its key the recorded one, the key accepted: checked
            // before a run exists, so a refused host key stops the release before any
            // host has changed.
            let target = ssh_target(&plan, &spec_dir_of(&workdir, Some(&plan)))
                .map_err(|e| CliError::input(format!("failed to deploy: {e}"), "fix the inventory, then deploy again"))?;
            // Unreachable hosts are tolerated up to the failure budget (`max_failures`).
            match target.check_hosts().await {
                Ok(unreachable) => {
                    for u in unreachable {
                        out.eline(&format!(
                            "warning: {u}; deploying without it (counted against the failure budget)"
                        ));
                    }
                }
                Err(e) => {
                    return Err(CliError::new(
                        exit::BLOCKED,
                        format!("failed to deploy: the ssh hosts are not ready, no run was started: {e}"),
                        Some("fix what each host's message says, then deploy again".into()),
                    ));
                }
            }
            if a.detach {
                // The background driver opens its own sessions.
                target.close_all().await;
            } else {
                checked_ssh = Some(target);
            }
        }
        let deploy = if a.detach {
            // The background driver finds or starts the proxies itself.
            None
        } else {
            deploy_target_for(&store, &db, &workdir, Some(&plan), out).await?
        };
        let engine = engine_with_ssh(
            store.clone(),
            &db,
            &workdir.to_string_lossy(),
            Some(&plan),
            deploy,
            checked_ssh,
        );
        let (run, continued) = engine
            .create_or_continue(NewRunRequest {
                plan: plan.clone(),
                author: author.clone(),
                override_freeze: if a.override_freeze {
                    a.reason.clone()
                } else {
                    None
                },
                workdir: workdir.to_string_lossy().into_owned(),
            })
            .await
            .map_err(engine_error)?;
        write_version_lock(&db, &run.id, &plan, &a.file);
        if let Some(rows) = &infra {
            // The digests of the infrastructure the run was made against, kept with it.
            let dir = db.parent().unwrap_or(Path::new(".")).join("runs").join(&run.id);
            let _ = std::fs::create_dir_all(&dir).and_then(|_| {
                std::fs::write(
                    dir.join("infrastructure.json"),
                    serde_json::to_vec_pretty(rows).unwrap_or_default(),
                )
            });
        }
        if a.detach {
            let exe = std::env::current_exe().map_err(|e| {
                CliError::new(
                    exit::INTERNAL,
                    format!("failed to find the slipway binary: {e}"),
                    None,
                )
            })?;
            let mut c = std::process::Command::new(exe);
            c.arg("resume").arg(&run.id);
            // Through the environment, never argv: a PostgreSQL URL may hold a password,
            // and a command line is readable by every user of the machine.
            match store.sqlite_path() {
                Some(p) => c.env("SLIPWAY_STORE", format!("sqlite://{}", p.display())),
                None => c.env("SLIPWAY_STORE", a.store.store.as_deref().unwrap_or_default()),
            };
            if a.no_wait {
                c.arg("--no-wait");
            }
            if a.wait {
                c.arg("--wait");
            }
            use std::os::unix::process::CommandExt;
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0);
            c.spawn().map_err(|e| {
                CliError::new(
                    exit::INTERNAL,
                    format!("failed to start the background driver: {e}"),
                    None,
                )
            })?;
            if out.json() {
                out.json_value(&json!({"run": run.id, "detached": true, "continued": continued}));
            } else {
                out.line(&run.id);
            }
            return Ok(exit::SUCCESS);
        }
        if continued && !out.json() {
            out.eline(&format!(
                "continuing unfinished run {} of this plan",
                run.id
            ));
        }
        let code = drive_foreground(
            engine,
            &run,
            Some(&plan),
            &author,
            a.no_wait,
            continued,
            a.wait,
            out,
        )
        .await;
        discard_interventions(&db, &run.id);
        code
    })
}

/// A canary request nobody consumed while this process drove the run (it came after the
/// canary ended) must not act on a later canary of the run.
fn discard_interventions(db: &Path, run: &str) {
    let runs_dir = db.parent().unwrap_or(Path::new(".")).join("runs");
    let _ = interventions::take(&runs_dir, run);
}

/// `slipway resume`.
pub fn resume(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let run = load_run(store.as_ref(), &a.run).await?;
        crate::cmd_access::enforce(&store, Role::Deployer, "resume", &run.environment).await?;
        let actor = store.pseudonym(&identity()).await.map_err(store_error)?;
        let plan: Option<Plan> = serde_json::from_str(&run.plan_json).ok();
        if plan.as_ref().is_some_and(|p| p.target == "process")
            && !run.state.is_terminal()
            && driven(&store, &run.id).await?
        {
            // A live driver: its canary (e.g. in a `pause: manual` step) continues.
            return send_intervention(&db, &run, Intervention::Resume, &actor, out);
        }
        if let Some(p) = plan.as_ref().filter(|p| p.target == "ssh")
            && !run.state.is_terminal()
            && let Err(why) = ssh_target(p, &spec_dir_of(Path::new(&run.workdir), Some(p)))
        {
            return Err(CliError::new(
                exit::BLOCKED,
                format!("failed to resume run {}: {why}", run.id),
                None,
            ));
        }
        let deploy =
            deploy_target_for(&store, &db, Path::new(&run.workdir), plan.as_ref(), out).await?;
        let engine = engine_with(store.clone(), &db, &run.workdir, plan.as_ref(), deploy);
        let code = drive_foreground(
            engine,
            &run,
            plan.as_ref(),
            &actor,
            a.no_wait,
            true,
            a.wait,
            out,
        )
        .await;
        discard_interventions(&db, &run.id);
        code
    })
}

/// Leave a request for the live driver of a run's canary.
fn send_intervention(
    db: &Path,
    run: &RunRecord,
    what: Intervention,
    actor: &str,
    out: &Output,
) -> Result<i32, CliError> {
    let runs_dir = db.parent().unwrap_or(Path::new(".")).join("runs");
    interventions::request(
        &runs_dir,
        &run.id,
        &interventions::Requested {
            intervention: what,
            by: actor.to_owned(),
        },
    )
    .map_err(|e| {
        CliError::new(
            exit::STORE,
            format!(
                "failed to record the request under {}: {e}",
                runs_dir.display()
            ),
            None,
        )
    })?;
    let name = serde_json::to_value(what)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if out.json() {
        out.json_value(&json!({"run": run.id, "requested": name, "state": run.state, "delivered_to": "driver"}));
    } else {
        out.line(&format!(
            "{name} sent to the driver of run {} (its canary acts on it within an analysis interval; follow with `slipway logs -f {}`)",
            run.id, run.id
        ));
    }
    Ok(exit::SUCCESS)
}

/// `slipway promote`: the canary of a run becomes the new stable now.
pub fn promote(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let run = load_run(store.as_ref(), &a.run).await?;
        crate::cmd_access::enforce(&store, Role::Deployer, "promote", &run.environment).await?;
        if run.state.is_terminal() {
            return Err(CliError::input(
                format!(
                    "failed to promote: run {} is already {}",
                    run.id,
                    run.state.as_str()
                ),
                "promote a running or paused canary (see `slipway history`)",
            ));
        }
        let plan: Option<Plan> = serde_json::from_str(&run.plan_json).ok();
        if !plan
            .as_ref()
            .is_some_and(|p| p.target == "process" && p.strategy.canary.is_some())
        {
            return Err(CliError::input(
                format!("failed to promote: run {} has no canary to promote", run.id),
                "promote works on runs of a canary strategy on the process target",
            ));
        }
        let actor = store.pseudonym(&identity()).await.map_err(store_error)?;
        if driven(&store, &run.id).await? {
            return send_intervention(&db, &run, Intervention::Promote, &actor, out);
        }
        // Nobody drives it: record the request, then drive the run here; the deploy step,
        // observed first, finds the canary running and promotes it.
        let runs_dir = db.parent().unwrap_or(Path::new(".")).join("runs");
        interventions::request(
            &runs_dir,
            &run.id,
            &interventions::Requested {
                intervention: Intervention::Promote,
                by: actor.clone(),
            },
        )
        .map_err(|e| {
            CliError::new(
                exit::STORE,
                format!(
                    "failed to record the promotion under {}: {e}",
                    runs_dir.display()
                ),
                None,
            )
        })?;
        let deploy =
            deploy_target_for(&store, &db, Path::new(&run.workdir), plan.as_ref(), out).await?;
        let engine = engine_with(store.clone(), &db, &run.workdir, plan.as_ref(), deploy);
        let code = drive_foreground(
            engine,
            &run,
            plan.as_ref(),
            &actor,
            a.no_wait,
            true,
            a.wait,
            out,
        )
        .await;
        // Not acted on (no canary was running): it must not surprise a later driver.
        discard_interventions(&db, &run.id);
        code
    })
}

async fn load_run(store: &AnyStore, id: &str) -> Result<RunRecord, CliError> {
    store
        .run(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(StoreError::NoSuchRun(id.to_owned())))
}

/// `slipway status`.
pub fn status(a: StatusArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let id = match a.run {
            Some(r) => r,
            None => match store.runs(1).await.map_err(store_error)?.into_iter().next() {
                Some(r) => r.id,
                None => {
                    return Err(CliError::input(
                        "failed to show status: the store has no runs yet",
                        "start one with `slipway deploy -f FILE --env ENV`",
                    ));
                }
            },
        };
        let run = load_run(store.as_ref(), &id).await?;
        let steps = store.steps(&id).await.map_err(store_error)?;
        let engine = engine_for(store.clone(), &db, &run.workdir, None);
        let (need, tally) = engine.approvals(&id).await.map_err(engine_error)?;
        let plan: Option<Plan> = serde_json::from_str(&run.plan_json).ok();
        let total = plan.as_ref().map_or(steps.len(), |p| p.steps.len());
        let done = steps
            .iter()
            .filter(|s| s.status == slipway_engine::StepStatus::Succeeded)
            .count();
        let traffic = match &plan {
            Some(p) if p.target == "process" => Some(process_view(&db, Path::new(&run.workdir), p).await),
            _ => None,
        };
        let (perf, perf_lines) = crate::perf_report::run_perf(&db, &id);
        let journal = store.journal(&id, 0).await.map_err(store_error)?;
        let config = crate::cmd_config::rendered(&journal);
        if out.json() {
            out.json_value(&json!({
                "run": run,
                "perf": perf,
                "steps_total": total,
                "steps_succeeded": done,
                "steps": steps,
                "approvals": {"required": need.required, "valid": tally.valid, "rejected": tally.rejected},
                "config": config,
                "traffic": traffic,
                "hosts": ssh_hosts(&journal),
                "failed_hosts": ssh_failed_hosts(&journal),
                "analysis": analysis_summary(&journal),
            }));
        } else {
            out.line(&format!(
                "run {}  {} {} -> {}  state {}",
                run.id,
                run.release,
                run.version,
                run.environment,
                out.paint(run.state.as_str(), Style::Bold)
            ));
            out.line(&format!("plan {}  steps {done}/{total} succeeded", run.digest));
            if need.required > 0 {
                out.line(&format!("approvals {}/{}", tally.valid.len(), need.required));
            }
            for s in &steps {
                out.line(&format!("  {:<13} {} (attempts {})", s.status.as_str(), s.step_id, s.attempts));
            }
            for a in analysis_summary(&journal) {
                let phases = a["by_phase"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                out.line(&format!(
                    "  analysis {} on {}: {} after {} measurement(s) ({phases})",
                    a["template"].as_str().unwrap_or_default(),
                    a["step"].as_str().unwrap_or_default(),
                    a["phase"].as_str().unwrap_or("?"),
                    a["measurements"]
                ));
                for r in a["last"].as_array().into_iter().flatten() {
                    out.line(&format!(
                        "    {} {}",
                        r["phase"].as_str().unwrap_or("?"),
                        r["detail"].as_str().unwrap_or_default()
                    ));
                }
            }
            for l in &perf_lines {
                out.line(l);
            }
            let failed_hosts = ssh_failed_hosts(&journal);
            if !failed_hosts.is_empty() {
                out.line(&format!("  ssh hosts failed: {}", failed_hosts.join(", ")));
            }
            for h in ssh_hosts(&journal) {
                out.line(&format!(
                    "  {} {} on {}: {}{}",
                    h["step"].as_str().unwrap_or_default(),
                    h["phase"].as_str().unwrap_or_default(),
                    h["host"].as_str().unwrap_or_default(),
                    h["result"].as_str().unwrap_or_default(),
                    h["exit_code"]
                        .as_i64()
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default()
                ));
            }
            for (service, v) in traffic.as_ref().and_then(|t| t.as_object()).into_iter().flatten() {
                let instances = v["instances"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(ver, n)| format!("{ver}×{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let (front, weight) = match v.get("router") {
                    // nginx / HAProxy: what it serves, read back from it.
                    Some(r) => (r["via"].as_str().unwrap_or_default().to_owned(), &r["weight"]),
                    None => (
                        format!(
                            "proxy {}",
                            v["proxy"]["traffic"].as_str().map_or("not running".to_owned(), |a| format!("http://{a}"))
                        ),
                        &v["proxy"]["weight"],
                    ),
                };
                out.line(&format!(
                    "  {service}: {front} canary weight {weight}%, instances {}",
                    if instances.is_empty() { "none".to_owned() } else { instances }
                ));
            }
            for f in &config {
                out.line(&format!(
                    "  config {} masked sha256 {}",
                    f["path"].as_str().unwrap_or_default(),
                    f["masked_sha256"].as_str().unwrap_or_default()
                ));
            }
        }
        let _ = approval_need;
        Ok(exit::SUCCESS)
    })
}

/// `slipway logs`.
pub fn logs(a: LogsArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, _) = open_store(&a.store).await?;
        load_run(store.as_ref(), &a.run).await?;
        let mut after = 0;
        loop {
            let entries = store.journal(&a.run, after).await.map_err(store_error)?;
            for n in &entries {
                after = n.seq;
                if out.json() {
                    // One JSON object per line: a stream a pipeline can follow.
                    out.line(&serde_json::to_string(n).unwrap_or_default());
                } else if let Some(line) = event_line(n, out) {
                    out.line(&format!("{} {line}", n.at.strftime("%H:%M:%S")));
                }
            }
            if !a.follow {
                break;
            }
            if entries.is_empty() {
                let run = load_run(store.as_ref(), &a.run).await?;
                if run.state.is_terminal() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(exit::SUCCESS)
    })
}

fn control(a: RunArgs, c: Control, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let run = load_run(store.as_ref(), &a.run).await?;
        crate::cmd_access::enforce(&store, Role::Deployer, c.as_str(), &run.environment).await?;
        let actor = store.pseudonym(&identity()).await.map_err(store_error)?;
        let engine = engine_for(store.clone(), &db, &run.workdir, None);
        let state = engine
            .request(&a.run, &actor, c)
            .await
            .map_err(engine_error)?;
        if state.is_terminal() {
            // Aborted here (nobody drove it): the environment is free again now, not at
            // the lease's expiry. Only this run's own lease is given up.
            slipway_engine::Store::release_lease(store.as_ref(), &run.environment, Some(&run.id))
                .await
                .map_err(store_error)?;
        }
        if out.json() {
            out.json_value(&json!({"run": a.run, "requested": c.as_str(), "state": state}));
        } else {
            out.line(&format!(
                "{} requested for run {} (now {})",
                c.as_str(),
                a.run,
                state.as_str()
            ));
        }
        Ok(exit::SUCCESS)
    })
}

/// `slipway pause`.
pub fn pause(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    control(a, Control::Pause, out)
}

/// `slipway abort`. A live canary hears it and rolls back; a paused canary (nobody
/// drives the run) is taken out of service here first, so an aborted run leaves no
/// canary taking traffic.
pub fn abort(a: RunArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let run = load_run(store.as_ref(), &a.run).await?;
        let plan: Option<Plan> = serde_json::from_str(&run.plan_json).ok();
        let Some(p) = plan.filter(|p| p.target == "process" && !run.state.is_terminal()) else {
            return Ok(());
        };
        crate::cmd_access::enforce(&store, Role::Deployer, "abort", &run.environment).await?;
        if driven(&store, &run.id).await? {
            return Ok(());
        }
        let Some(deploy) =
            deploy_target_for(&store, &db, Path::new(&run.workdir), Some(&p), out).await?
        else {
            return Ok(());
        };
        for (service, version) in deployed_services(&p) {
            match deploy.retire_canary(&service, &version).await {
                Ok(Some(done)) if !out.json() => out.eline(&done),
                Ok(_) => {}
                Err(e) => {
                    return Err(CliError::new(
                        exit::FAILURE,
                        format!("failed to abort: the {service} canary could not be retired: {e}"),
                        Some(format!("retry `slipway abort {}`", run.id)),
                    ));
                }
            }
        }
        Ok(())
    })?;
    drop(rt);
    control(a, Control::Abort, out)
}

/// `slipway rollback`: undo a run's completed steps in reverse order, by hand.
pub fn rollback(a: RollbackArgs, out: &Output) -> Result<i32, CliError> {
    if a.reason.trim().is_empty() {
        return Err(CliError::input(
            "a rollback needs a reason",
            "say why with --reason TEXT; it is kept in the audit chain",
        ));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let run = load_run(store.as_ref(), &a.run).await?;
        crate::cmd_access::enforce(&store, Role::Deployer, "roll back", &run.environment).await?;
        let me = store.pseudonym(&identity()).await.map_err(store_error)?;
        // Undo commands print too: the plan's secrets are masked in their output.
        let plan: Option<Plan> = serde_json::from_str(&run.plan_json).ok();
        // Deploy steps on the process target are undone through the service's proxy.
        let deploy =
            deploy_target_for(&store, &db, Path::new(&run.workdir), plan.as_ref(), out).await?;
        let engine = engine_with(store.clone(), &db, &run.workdir, plan.as_ref(), deploy);
        let end = engine
            .rollback_run(&a.run, &me, a.reason.trim())
            .await
            .map_err(engine_error)?;
        if out.json() {
            out.json_value(&json!({"run": a.run, "state": end.as_str()}));
        } else {
            out.line(&format!("run {} → {}", a.run, end.as_str()));
        }
        Ok(match end {
            RunState::RolledBack => exit::ROLLED_BACK,
            RunState::Aborted => exit::ABORTED,
            _ => exit::FAILURE,
        })
    })
}

/// `slipway approve`.
pub fn approve(a: ApproveArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, db) = open_store(&a.store).await?;
        let run = load_run(store.as_ref(), &a.run).await?;
        crate::cmd_access::enforce(&store, Role::Approver, "approve", &run.environment).await?;
        let me = store.pseudonym(&identity()).await.map_err(store_error)?;
        let groups: Vec<String> = std::env::var("SLIPWAY_GROUPS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        let engine = engine_for(store.clone(), &db, &run.workdir, None);
        engine
            .approve(&a.run, &me, groups, a.digest.as_deref())
            .await
            .map_err(engine_error)?;
        let (need, tally) = engine.approvals(&a.run).await.map_err(engine_error)?;
        if out.json() {
            out.json_value(&json!({"run": a.run, "approver": me, "digest": run.digest,
                "valid": tally.valid.len(), "required": need.required}));
        } else {
            out.line(&format!(
                "approved plan {} of run {} ({}/{} approvals)",
                &run.digest[..run.digest.len().min(12)],
                a.run,
                tally.valid.len(),
                need.required
            ));
        }
        Ok(exit::SUCCESS)
    })
}

/// `slipway history`.
pub fn history(a: HistoryArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, _) = open_store(&a.store).await?;
        let runs = store.runs(a.limit).await.map_err(store_error)?;
        if out.json() {
            out.json_value(&runs);
        } else {
            let mut t = comfy_table::Table::new();
            t.set_header(["run", "release", "version", "env", "state", "created"]);
            for r in &runs {
                t.add_row([
                    r.id.clone(),
                    r.release.clone(),
                    r.version.clone(),
                    r.environment.clone(),
                    r.state.as_str().to_owned(),
                    r.created_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            out.line(&t.to_string());
        }
        Ok(exit::SUCCESS)
    })
}
