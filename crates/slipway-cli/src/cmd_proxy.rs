//! `slipway proxy list|stop`: the detached per-service proxies of the `process` target,
//! found and stopped without digging in state files; and `slipway proxy serve` (hidden):
//! one service's built-in proxy as a process of its own.
//!
//! The process target starts `serve` detached (see `slipway_providers::remote`), so it
//! keeps serving clients when the `slipway` that deploys dies; a later `slipway` finds it
//! by its state file. It records itself only once both listeners are bound: pid, start
//! time, addresses and a fresh admin token, in a file only its owner can read. The token is
//! never printed. SIGTERM or Ctrl-C stop it after in-flight requests finish.
//!
//! Where proxies are recorded: `<store dir>/process/<env>/proxies/`, or under a spec's
//! `target.process.workdir` — found through the store's runs (each environment's newest
//! and every unfinished one), whose plans say where their process root was. `list` reads state files and each live proxy's admin API (weight and
//! counters; never the token). `stop` refuses while a run that is not finished deploys
//! through that proxy (it would take the service's front door from under the run), unless
//! `--force`; it signals only the process the state file records (pid *and* start time),
//! waits for it to exit and removes the state file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use slipway_engine::store::{RunRecord, Store};
use slipway_model::duration::parse_duration;
use slipway_model::exit;
use slipway_model::plan::Plan;
use slipway_providers::process::proc_start_ticks;
use slipway_providers::remote::{
    ProxyState, ProxySupervisor, RemoteRouter, Stopped, new_token, read_state, write_state,
};
use slipway_proxy::{Proxy, ProxyConfig};

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// `slipway proxy`.
#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// List the process target's proxies: service, environment, pid, alive or stale,
    /// addresses, canary weight and request counts.
    #[command(
        after_help = "Examples:\n  slipway proxy list\n  slipway proxy list --env prod --output json"
    )]
    List(ListArgs),
    /// Stop a service's proxy (refused while a run deploys through it, unless --force);
    /// stopping one that is not running says so and succeeds.
    #[command(
        after_help = "Examples:\n  slipway proxy stop api --env staging\n  slipway proxy stop api --env staging --force --grace 30s"
    )]
    Stop(StopArgs),
    /// Run one service's proxy until SIGTERM (the process target starts it).
    #[command(hide = true)]
    Serve(ServeArgs),
}

/// `slipway proxy list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this environment's proxies.
    #[arg(long, value_parser = crate::cli_util::env_name)]
    pub env: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway proxy stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The service whose proxy to stop.
    #[arg(value_parser = crate::cli_util::service_name)]
    pub service: String,
    /// The environment.
    #[arg(long, value_parser = crate::cli_util::env_name)]
    pub env: String,
    /// Stop it even while a run that is not finished deploys through it.
    #[arg(long)]
    pub force: bool,
    /// How long it may take to finish in-flight requests after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    #[command(flatten)]
    pub store: StoreArg,
}
/// `slipway proxy serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service it fronts (for messages and the state file).
    #[arg(long)]
    pub service: String,
    /// Where to record pid, start time, addresses and the admin token (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Where clients connect (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Where the admin API listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
}

/// Dispatch `slipway proxy …`.
pub fn run(c: ProxyCommand, out: &Output) -> Result<i32, CliError> {
    match c {
        ProxyCommand::List(a) => list(a, out),
        ProxyCommand::Stop(a) => stop(a, out),
        ProxyCommand::Serve(a) => serve(a, out),
    }
}

/// Where one environment's proxies are recorded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ProxyDir {
    env: String,
    dir: PathBuf,
}

/// How many of the newest runs are looked at for where proxies are and who uses them.
const RUNS_LOOKED_AT: u32 = 1000;

/// The store's database path, and (when it exists: listing must not create one) the runs
/// that can tell where proxies are recorded and who uses them, with their plans: every
/// unfinished run, and the newest run of each environment.
async fn store_runs(arg: &StoreArg) -> Result<(PathBuf, Vec<RunRecord>), CliError> {
    let (loc, layout) = slipway_ops::session::layout_for(arg.store.as_deref())
        .ok_or_else(|| CliError::new(exit::STORE, "failed to resolve the store", None))?;
    if let slipway_store::StoreLocation::Sqlite(db) = &loc
        && !db.exists()
    {
        return Ok((layout.dir().join("slipway.db"), Vec::new()));
    }
    let (store, db) = crate::cli_util::read_store(arg).await?;
    // Listings carry no plan; the few runs that matter are read in full.
    let listed = store.runs(RUNS_LOOKED_AT).await.map_err(CliError::from)?;
    let mut seen_env = std::collections::BTreeSet::new();
    let mut runs = Vec::new();
    for r in listed {
        let newest_of_env = seen_env.insert(r.environment.clone());
        if (newest_of_env || !r.state.is_terminal())
            && let Some(full) = store.run(&r.id).await.map_err(CliError::from)?
        {
            runs.push(full);
        }
    }
    Ok((db, runs))
}

fn plan_of(run: &RunRecord) -> Option<Plan> {
    serde_json::from_str::<Plan>(&run.plan_json)
        .ok()
        .filter(|p| p.target == slipway_model::spec::TargetKind::Process)
}

/// Every directory proxies of `env` (or any environment) may be recorded in: the default
/// `<store dir>/process/<env>/proxies`, and the process root of every process-target run.
fn proxy_dirs(db: &Path, runs: &[RunRecord], env: Option<&str>) -> Vec<ProxyDir> {
    let mut dirs = std::collections::BTreeSet::new();
    let base = db.parent().unwrap_or(Path::new(".")).join("process");
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().join("proxies").is_dir() {
                dirs.insert(ProxyDir {
                    env: name,
                    dir: e.path().join("proxies"),
                });
            }
        }
    }
    for run in runs {
        if let Some(plan) = plan_of(run) {
            let root = slipway_providers::compose::Layout::beside(db)
                .process_root(Path::new(&run.workdir), &plan);
            dirs.insert(ProxyDir {
                env: run.environment.clone(),
                dir: root.join("proxies"),
            });
        }
    }
    dirs.into_iter()
        .filter(|d| env.is_none_or(|e| d.env == e))
        .collect()
}

/// Runs not finished that deploy `service` in `env` through the proxies in `dir`.
fn runs_using(
    db: &Path,
    runs: &[RunRecord],
    env: &str,
    service: &str,
    dir: &Path,
) -> Vec<RunRecord> {
    runs.iter()
        .filter(|r| !r.state.is_terminal() && r.environment == env)
        .filter(|r| {
            plan_of(r).is_some_and(|plan| {
                slipway_providers::compose::deployed_services(&plan)
                    .iter()
                    .any(|(s, _)| s == service)
                    && slipway_providers::compose::Layout::beside(db)
                        .process_root(Path::new(&r.workdir), &plan)
                        .join("proxies")
                        == dir
            })
        })
        .cloned()
        .collect()
}

/// One proxy as `slipway proxy list` shows it (never its token).
#[derive(Debug, Serialize)]
struct Listed {
    service: String,
    env: String,
    pid: u32,
    /// `alive`, `unresponsive` (running, admin API does not answer) or `stale` (the
    /// recorded process is gone or its pid belongs to another process).
    status: &'static str,
    traffic: SocketAddr,
    admin: SocketAddr,
    weight: Option<u8>,
    requests: Option<BTreeMap<&'static str, u64>>,
    errors: Option<BTreeMap<&'static str, u64>>,
    /// Runs not finished that deploy through it.
    runs: Vec<String>,
    state_file: String,
    log: String,
}

/// `slipway proxy list`.
fn list(a: ListArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (db, runs) = store_runs(&a.store).await?;
        let mut listed = Vec::new();
        for d in proxy_dirs(&db, &runs, a.env.as_deref()) {
            let sup = ProxySupervisor::new(&d.dir, Vec::new());
            for (service, path, state) in sup.recorded() {
                let report = if state.is_running() {
                    RemoteRouter::new(state.clone()).fetch_state().await.ok()
                } else {
                    None
                };
                let status = match (&report, state.is_running()) {
                    (Some(_), _) => "alive",
                    (None, true) => "unresponsive",
                    (None, false) => "stale",
                };
                listed.push(Listed {
                    runs: runs_using(&db, &runs, &d.env, &service, &d.dir)
                        .into_iter()
                        .map(|r| r.id)
                        .collect(),
                    log: sup.log_path(&service).display().to_string(),
                    service,
                    env: d.env.clone(),
                    pid: state.pid,
                    status,
                    traffic: state.traffic,
                    admin: state.admin,
                    weight: report.as_ref().map(|r| r.weight),
                    requests: report.as_ref().map(|r| {
                        BTreeMap::from([("stable", r.requests_stable), ("canary", r.requests_canary)])
                    }),
                    errors: report.as_ref().map(|r| {
                        BTreeMap::from([("stable", r.errors_stable), ("canary", r.errors_canary)])
                    }),
                    state_file: path.display().to_string(),
                });
            }
        }
        if out.json() {
            out.json_value(&listed);
        } else if listed.is_empty() {
            out.line(&match &a.env {
                Some(e) => format!("no proxy recorded in {e}"),
                None => "no proxy recorded".to_owned(),
            });
        } else {
            out.line(&format!(
                "{:<16} {:<12} {:>8}  {:<12} {:<22} {:<22} {:>6}  {:<19} runs",
                "SERVICE", "ENV", "PID", "STATUS", "TRAFFIC", "ADMIN", "WEIGHT", "REQUESTS S/C"
            ));
            for l in &listed {
                let requests = l.requests.as_ref().map_or_else(
                    || "-".to_owned(),
                    |r| format!("{}/{}", r["stable"], r["canary"]),
                );
                out.line(&format!(
                    "{:<16} {:<12} {:>8}  {:<12} {:<22} {:<22} {:>6}  {:<19} {}",
                    l.service,
                    l.env,
                    l.pid,
                    l.status,
                    format!("http://{}", l.traffic),
                    l.admin.to_string(),
                    l.weight.map_or_else(|| "-".to_owned(), |w| format!("{w}%")),
                    requests,
                    if l.runs.is_empty() { "-".to_owned() } else { l.runs.join(",") },
                ));
            }
            if listed.iter().any(|l| l.status == "stale") {
                out.line("stale: the recorded process is gone; `slipway proxy stop SERVICE --env ENV` removes its state file");
            }
        }
        Ok(exit::SUCCESS)
    })
}

/// `slipway proxy stop`.
fn stop(a: StopArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (db, runs) = store_runs(&a.store).await?;
        // A missing SQLite file holds no grant (and listing must not create one); a
        // PostgreSQL store is always asked.
        let cwd = std::env::current_dir().unwrap_or_default();
        let shared = matches!(
            slipway_store::resolve(a.store.store.as_deref(), &cwd),
            Ok(slipway_store::StoreLocation::Postgres(_))
        );
        if db.exists() || shared {
            let session = crate::cli_util::read_session(&a.store).await?;
            crate::cli_util::enforce(
                &session,
                slipway_govern::access::Role::Deployer,
                "stop a proxy",
                &a.env,
            )
            .await?;
        }
        let dirs: Vec<ProxyDir> = proxy_dirs(&db, &runs, Some(&a.env))
            .into_iter()
            .filter(|d| d.dir.join(format!("{}.json", a.service)).exists())
            .collect();
        if dirs.is_empty() && !out.json() {
            out.line(&format!(
                "no proxy of {} is recorded in {}; nothing to stop",
                a.service, a.env
            ));
        }
        // Every refusal before anything is signalled.
        let mut todo = Vec::new();
        for d in dirs {
            let sup = ProxySupervisor::new(&d.dir, Vec::new());
            let running = read_state(&sup.state_path(&a.service)).is_some_and(|s| s.is_running());
            let users = if running {
                runs_using(&db, &runs, &a.env, &a.service, &d.dir)
            } else {
                Vec::new()
            };
            if !users.is_empty() && !a.force {
                let names: Vec<String> = users
                    .iter()
                    .map(|r| format!("{} ({} {}, {})", r.id, r.release, r.version, r.state.as_str()))
                    .collect();
                return Err(CliError::new(
                    exit::BLOCKED,
                    format!(
                        "refused to stop the {} proxy of {}: run {} deploys through it, and stopping it takes the service's front door from under the run",
                        a.service,
                        a.env,
                        names.join(", ")
                    ),
                    Some(format!(
                        "finish the run first (`slipway promote {0}`, `slipway abort {0}` or `slipway rollback {0}`), or pass --force",
                        users[0].id
                    )),
                ));
            }
            todo.push((sup, users));
        }
        let mut results = Vec::new();
        for (sup, users) in todo {
            let stopped = sup
                .stop_verified(&a.service, a.grace)
                .await
                .map_err(|e| CliError::new(exit::FAILURE, format!("failed to stop: {e}"), None))?;
            let (result, pid, text) = match &stopped {
                Stopped::NotRecorded => (
                    "not_recorded",
                    None,
                    format!("no proxy of {} is recorded in {}; nothing to stop", a.service, a.env),
                ),
                Stopped::Stale(s) => (
                    "not_running",
                    Some(s.pid),
                    format!(
                        "the {} proxy of {} (pid {}) was not running; removed its stale state file {}",
                        a.service,
                        a.env,
                        s.pid,
                        sup.state_path(&a.service).display()
                    ),
                ),
                Stopped::Stopped { state, killed } => (
                    if *killed { "killed" } else { "stopped" },
                    Some(state.pid),
                    format!(
                        "stopped the {} proxy of {} (pid {}, traffic {}){}",
                        a.service,
                        a.env,
                        state.pid,
                        state.traffic,
                        if *killed {
                            format!(": it did not exit within {:?} of SIGTERM and was killed", a.grace)
                        } else {
                            String::new()
                        }
                    ),
                ),
            };
            let overridden: Vec<String> = users.iter().map(|r| r.id.clone()).collect();
            if !out.json() {
                out.line(&text);
                if !overridden.is_empty() {
                    out.eline(&format!(
                        "warning: --force: run {} deployed through it; its service has no front door until a `slipway resume` starts a proxy again",
                        overridden.join(", ")
                    ));
                }
            }
            results.push(serde_json::json!({
                "result": result,
                "pid": pid,
                "state_file": sup.state_path(&a.service).display().to_string(),
                "forced_past_runs": overridden,
            }));
        }
        if out.json() {
            out.json_value(&serde_json::json!({
                "service": a.service,
                "env": a.env,
                "proxies": results,
            }));
        }
        Ok(exit::SUCCESS)
    })
}

fn internal(msg: String) -> CliError {
    CliError::new(exit::INTERNAL, msg, None)
}

fn serve(a: ServeArgs, out: &Output) -> Result<i32, CliError> {
    let rt = crate::cli_util::runtime()?;
    rt.block_on(async {
        let token =
            new_token().map_err(|e| internal(format!("failed to make an admin token: {e}")))?;
        let proxy = Proxy::start(ProxyConfig {
            listen: a.listen,
            admin_listen: Some(a.admin_listen),
            admin_token: Some(token.clone()),
            ..ProxyConfig::default()
        })
        .await
        .map_err(|e| {
            CliError::input(
                format!("failed to start the {} proxy: {e}", a.service),
                "free the port or remove the proxy's state file to pick a new one",
            )
        })?;
        let pid = std::process::id();
        let state = ProxyState {
            service: a.service.clone(),
            pid,
            start_ticks: proc_start_ticks(pid).unwrap_or(0),
            traffic: proxy.local_addr(),
            admin: proxy.admin_addr().unwrap_or(a.admin_listen),
            token,
        };
        write_state(&a.state, &state).map_err(|e| {
            internal(format!(
                "failed to write the proxy state {}: {e}",
                a.state.display()
            ))
        })?;
        out.line(&format!(
            "proxy for {} (pid {pid}): traffic {}, admin {}",
            a.service, state.traffic, state.admin
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| internal(format!("failed to watch SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        out.line(&format!("proxy for {} stopping", a.service));
        proxy.shutdown().await;
        // Only our own record: a successor may have replaced it already.
        if read_state(&a.state).is_some_and(|s| s.pid == pid) {
            let _ = std::fs::remove_file(&a.state);
        }
        Ok(exit::SUCCESS)
    })
}
