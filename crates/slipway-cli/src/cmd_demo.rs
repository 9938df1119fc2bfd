//! `slipway demo`: the product in two minutes, with nothing to set up.
//!
//! Starts the sample shop (api and web, each a pair of `demo-app` processes behind its own
//! built-in proxy), sends it steady live traffic, then runs three real, durable runs
//! through the engine: the current version as a first deploy, a good version whose
//! canaries promote, and a bad version whose api canary breaches the error-rate threshold
//! and is rolled back automatically. A live table shows weights, request rates, error
//! rates and p99 per version; the end verifies the audit chain and prints delivery
//! figures. Every process it started is stopped when it ends or is interrupted.
//!
//! `demo-app` is this very binary (`slipway demo-app`, hidden): a tiny wrapper script on
//! the instances' PATH points at it, so the demo needs no other program.

use slipway_model::progress::Progress;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use slipway_engine::{DriveOutcome, RunState};
use slipway_model::exit;
use slipway_model::plan::Plan;
use slipway_providers::builtin::BuiltinRouter;
use slipway_providers::deploy::{DeployTarget, ServiceEvent};
use slipway_providers::process::{ProcessTarget, ServiceProcess};
use slipway_providers::traffic::{Traffic, TrafficStats};
use slipway_proxy::{Proxy, ProxyConfig, ProxyHandle, Version};
use slipway_rollout::RolloutEvent;

use crate::out::{CliError, Output, Style};

/// Migration files each release ships (cumulative, as a real repository would hold them).
const MIGRATIONS: [(&str, &str, &str); 12] = [
    (
        "2.3.0",
        "V1__create_orders.sql",
        include_str!("../../../examples/demo/migrations-2.3.0/V1__create_orders.sql"),
    ),
    (
        "2.3.0",
        "U1__create_orders.sql",
        include_str!("../../../examples/demo/migrations-2.3.0/U1__create_orders.sql"),
    ),
    (
        "2.4.0",
        "V1__create_orders.sql",
        include_str!("../../../examples/demo/migrations-2.4.0/V1__create_orders.sql"),
    ),
    (
        "2.4.0",
        "U1__create_orders.sql",
        include_str!("../../../examples/demo/migrations-2.4.0/U1__create_orders.sql"),
    ),
    (
        "2.4.0",
        "V2__orders_customer_index.sql",
        include_str!("../../../examples/demo/migrations-2.4.0/V2__orders_customer_index.sql"),
    ),
    (
        "2.4.0",
        "U2__orders_customer_index.sql",
        include_str!("../../../examples/demo/migrations-2.4.0/U2__orders_customer_index.sql"),
    ),
    (
        "2.5.0",
        "V1__create_orders.sql",
        include_str!("../../../examples/demo/migrations-2.5.0/V1__create_orders.sql"),
    ),
    (
        "2.5.0",
        "U1__create_orders.sql",
        include_str!("../../../examples/demo/migrations-2.5.0/U1__create_orders.sql"),
    ),
    (
        "2.5.0",
        "V2__orders_customer_index.sql",
        include_str!("../../../examples/demo/migrations-2.5.0/V2__orders_customer_index.sql"),
    ),
    (
        "2.5.0",
        "U2__orders_customer_index.sql",
        include_str!("../../../examples/demo/migrations-2.5.0/U2__orders_customer_index.sql"),
    ),
    (
        "2.5.0",
        "V3__payments.sql",
        include_str!("../../../examples/demo/migrations-2.5.0/V3__payments.sql"),
    ),
    (
        "2.5.0",
        "U3__payments.sql",
        include_str!("../../../examples/demo/migrations-2.5.0/U3__payments.sql"),
    ),
];

const RELEASES: [(&str, &str); 3] = [
    (
        "2.3.0",
        include_str!("../../../examples/demo/shop-2.3.0.yaml"),
    ),
    (
        "2.4.0",
        include_str!("../../../examples/demo/shop-2.4.0.yaml"),
    ),
    (
        "2.5.0",
        include_str!("../../../examples/demo/shop-2.5.0.yaml"),
    ),
];

/// `slipway demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway demo\n  slipway demo --output json\n  slipway demo --dir /tmp/shop --keep\n  slipway demo --fleet"
)]
pub struct DemoArgs {
    /// Working directory for the demo's store, logs and diagnostics (default: a new
    /// temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the working directory afterwards (always kept when --dir is given).
    #[arg(long)]
    pub keep: bool,
    /// Requests per second sent to each service (the canary at 10% needs enough of them
    /// per analysis window to be judged: below ~200 the analysis turns inconclusive).
    #[arg(long, default_value_t = 300)]
    pub rate: u32,
    /// The fleet demo instead: four local sshd "hosts" behind HAProxy, a good version
    /// rolled out host by host after a canary on the first, then a bad one rolled back by
    /// itself (needs sshd, ssh-keygen and haproxy; says so and exits 0 without them).
    #[arg(long)]
    pub fleet: bool,
}

/// `slipway demo-app` (hidden): the demo's service.
#[derive(Debug, clap::Args)]
pub struct DemoAppArgs {
    /// Port (0 picks one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Version reported.
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    /// Share of requests answered with 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Added latency, e.g. `20ms`.
    #[arg(long, default_value = "0", value_parser = demo_app::parse_duration)]
    pub latency: Duration,
    /// Every request after the first N is a 500.
    #[arg(long)]
    pub fail_after: Option<u64>,
    /// Accepted for compatibility with the standalone binary; the service is single-threaded.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Run the demo service until SIGTERM or Ctrl-C.
pub fn demo_app(a: DemoAppArgs, out: &Output) -> Result<i32, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start a runtime: {e}"),
                None,
            )
        })?;
    rt.block_on(async {
        let server = demo_app::serve(demo_app::Config {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], a.port)),
            version: a.version,
            error_rate: a.error_rate,
            latency: a.latency,
            fail_after: a.fail_after,
            error_seed: None,
        })
        .await
        .map_err(|e| {
            CliError::input(
                format!("failed to start demo-app: {e}"),
                "pick another --port",
            )
        })?;
        out.line(&format!("listening on {}", server.local_addr()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| {
                CliError::new(
                    exit::INTERNAL,
                    format!("failed to watch SIGTERM: {e}"),
                    None,
                )
            })?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        server.shutdown().await;
        Ok(exit::SUCCESS)
    })
}

/// One run of the demo, for the summary.
#[derive(Debug, Clone, Serialize)]
struct RunSummary {
    version: String,
    run_id: String,
    state: String,
    expected: String,
    reason: Option<String>,
    /// Latest applied migration after the run (the bad release's is undone again).
    schema_version: Option<i64>,
    seconds: f64,
}

/// Everything the demo reports at the end.
#[derive(Debug, Serialize)]
struct Summary {
    ok: bool,
    runs: Vec<RunSummary>,
    traffic: BTreeMap<String, TrafficView>,
    audit: serde_json::Value,
    delivery: serde_json::Value,
    workdir: String,
}

#[derive(Debug, Serialize)]
struct TrafficView {
    sent: u64,
    ok: u64,
    server_errors: u64,
    failed: u64,
    served_by_canary: u64,
    canary_errors_seen_by_users: u64,
}

impl From<TrafficStats> for TrafficView {
    fn from(s: TrafficStats) -> Self {
        Self {
            sent: s.sent,
            ok: s.ok,
            server_errors: s.server_errors,
            failed: s.failed,
            served_by_canary: s.canary,
            canary_errors_seen_by_users: s.canary_errors,
        }
    }
}

struct Shop {
    dir: PathBuf,
    proxies: BTreeMap<String, Arc<ProxyHandle>>,
    traffic: BTreeMap<String, Traffic>,
}

/// `slipway demo`.
pub fn demo(a: DemoArgs, out: &Output) -> Result<i32, CliError> {
    if a.fleet {
        return demo_fleet(&a, out);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start a runtime: {e}"),
                None,
            )
        })?;
    let (dir, temp) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| {
                CliError::input(
                    format!("failed to create {}: {e}", d.display()),
                    "pass a writable --dir",
                )
            })?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("slipway-demo-")
                .tempdir()
                .map_err(|e| {
                    CliError::new(
                        exit::INTERNAL,
                        format!("failed to create a temporary directory: {e}"),
                        None,
                    )
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run_demo(&a, &dir, out) => r,
            _ = tokio::signal::ctrl_c() => Err(CliError::new(
                130,
                "interrupted; every demo process has been stopped",
                None,
            )),
        }
    });
    // Whatever happened, nothing the demo started may outlive it.
    rt.block_on(stop_everything(&dir));
    if a.keep
        && let Some(t) = temp
    {
        let kept = t.keep();
        out.eline(&format!("demo files kept in {}", kept.display()));
    }
    result
}

/// The fleet demo's releases: version, whether it answers every `/` with a 500, what it
/// shows, and the run state it should end in.
const FLEET_RELEASES: [(&str, bool, &str, &str); 3] = [
    (
        "1.0.0",
        false,
        "first deploy of what runs today",
        "succeeded",
    ),
    (
        "2.0.0",
        false,
        "good version: canary on host1 at 20% of the traffic, then host by host",
        "succeeded",
    ),
    (
        "3.0.0",
        true,
        "bad version (every request a 500): rolled back by itself",
        "rolled_back",
    ),
];

/// The fleet demo's release spec of `version`.
fn fleet_spec(exe: &Path, version: &str, bad: bool) -> String {
    format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: fleet-shop, version: {version}, type: patch }}
services:
  web:
    run: {{ command: \"'{exe}' demo-app --port {{{{ port }}}} --version {{{{ version }}}}{faults}\", replicas: 1 }}
    readiness: {{ http: /ready, timeout: 2s, deadline: 20s }}
environments:
  fleet:
    target: {{ ssh: {{ inventory: hosts.yaml, group: web, batch: 1 }} }}
    router: {{ haproxy: {{ socket: admin.sock, backend: web }} }}
strategy:
  canary:
    steps:
      - set_weight: 20
      - analysis: {{ template: errors, duration: 3s }}
analysis_templates:
  errors:
    interval: 500ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 20
    metrics:
      - {{ name: error-rate, provider: builtin, max: 0.05 }}
    on_failure: rollback
",
        exe = exe.display(),
        faults = if bad { " --error-rate 1" } else { "" },
    )
}

/// What the fleet demo's users saw through HAProxy: answers by version, and failures.
#[derive(Debug, Clone, Default, Serialize)]
struct FleetTraffic {
    by_version: BTreeMap<String, u64>,
    failed: u64,
}

/// One fleet demo run.
#[derive(Debug, Serialize)]
struct FleetRun {
    version: String,
    what: String,
    state: String,
    expected: String,
    exit_code: Option<i32>,
    run_id: String,
    reason: Option<String>,
    seconds: f64,
}

/// The `reason` of the first journal event named `event` anywhere in `v`.
fn event_reason(v: &serde_json::Value, event: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("event").and_then(|e| e.as_str()) == Some(event)
                && let Some(r) = m.get("reason").and_then(|r| r.as_str())
            {
                return Some(r.to_owned());
            }
            m.values().find_map(|x| event_reason(x, event))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| event_reason(x, event)),
        _ => None,
    }
}

/// `slipway demo --fleet` (see [`DemoArgs::fleet`]): the lab of [`crate::fleet_demo`], a
/// steady trickle of users through HAProxy, and three deploys by this very binary.
fn demo_fleet(a: &DemoArgs, out: &Output) -> Result<i32, CliError> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    if let Some(why) = crate::fleet_demo::missing() {
        let reason = format!(
            "the fleet demo needs OpenSSH and HAProxy on this machine: {why}; install them (`apt-get install openssh-server openssh-client haproxy`) and run it again"
        );
        out.outcome(
            &serde_json::json!({"ok": true, "skipped": true, "reason": reason}),
            &format!("skipping the fleet demo: {reason}"),
        );
        return Ok(exit::SUCCESS);
    }
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            exit::INTERNAL,
            format!("failed to find this slipway binary: {e}"),
            None,
        )
    })?;
    let (dir, temp) = match &a.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("slipway-fleet-demo-")
                .tempdir()
                .map_err(|e| {
                    CliError::new(
                        exit::INTERNAL,
                        format!("failed to create a temporary directory: {e}"),
                        None,
                    )
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let lab_dir = dir.join("lab");
    let lab = match crate::fleet_demo::Lab::start(&lab_dir, 4) {
        Ok(l) => l,
        Err(why) => {
            let reason =
                format!("the local sshd hosts or HAProxy could not be started here: {why}");
            out.outcome(
                &serde_json::json!({"ok": true, "skipped": true, "reason": reason}),
                &format!("skipping the fleet demo: {reason}"),
            );
            return Ok(exit::SUCCESS);
        }
    };
    if !out.json() {
        out.line(&format!(
            "{} four sshd hosts on 127.0.0.1 ({}) behind HAProxy (http://127.0.0.1:{}, backend `web`, one server per host); working directory {}",
            out.paint("Starting", Style::Bold),
            lab.hosts
                .iter()
                .map(|h| format!("{} :{}", h.name, h.port))
                .collect::<Vec<_>>()
                .join(", "),
            lab.front,
            dir.display()
        ));
    }
    let store = format!("sqlite://{}", dir.join("slipway.db").display());
    let slipway = |args: &[&str]| {
        slipway_stdx::command(&exe)
            .env("SLIPWAY_STORE", &store)
            .env("NO_COLOR", "1")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
    };

    let weights_before = lab.weights();
    let mut runs = Vec::new();
    let seen = Arc::new(Mutex::new(FleetTraffic::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut users = None;
    for (version, bad, what, expected) in FLEET_RELEASES {
        if users.is_none() && !runs.is_empty() {
            // Users from the first deploy on (before it, nothing serves): one request
            // after another through HAProxy, each on a new connection.
            let (seen, stop, front) = (seen.clone(), stop.clone(), lab.front);
            users = Some(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = crate::fleet_demo::get(front, "/");
                    if let Ok(mut t) = seen.lock() {
                        match r {
                            Ok(v) => *t.by_version.entry(v).or_insert(0) += 1,
                            Err(_) => t.failed += 1,
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        let spec = lab_dir.join(format!("fleet-shop-{version}.yaml"));
        std::fs::write(&spec, fleet_spec(&exe, version, bad)).map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to write {}: {e}", spec.display()),
                None,
            )
        })?;
        if !out.json() {
            out.line(&format!(
                "\n{} {version}: {what}",
                out.paint("Deploying", Style::Bold)
            ));
        }
        let started = Instant::now();
        let spec_arg = spec.display().to_string();
        let mut child = slipway_stdx::command(&exe)
            .env("SLIPWAY_STORE", &store)
            .env("NO_COLOR", "1")
            .args([
                "deploy", "--env", "fleet", "--output", "json", "-f", &spec_arg,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                CliError::new(
                    exit::INTERNAL,
                    format!("failed to run slipway deploy: {e}"),
                    None,
                )
            })?;
        let mut last_line = Instant::now();
        let code = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st.code();
            }
            if !out.json() && last_line.elapsed() >= Duration::from_secs(1) {
                last_line = Instant::now();
                let weights: BTreeMap<String, Option<u64>> = lab.weights().into_iter().collect();
                let hosts: Vec<String> = lab
                    .versions()
                    .into_iter()
                    .map(|(h, v)| {
                        format!(
                            "{h} {} w{}",
                            v.as_deref().unwrap_or("-"),
                            weights
                                .get(&h)
                                .copied()
                                .flatten()
                                .map_or("?".to_owned(), |w| w.to_string())
                        )
                    })
                    .collect();
                let users = seen.lock().map(|t| t.clone()).unwrap_or_default();
                out.line(&format!(
                    "  {:>4.0}s  {}  · users: {}, not answered 200: {}",
                    started.elapsed().as_secs_f64(),
                    hosts.join(" | "),
                    users
                        .by_version
                        .iter()
                        .map(|(v, n)| format!("{v} {n}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    users.failed
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let status: serde_json::Value = slipway(&["status", "--output", "json"])
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default();
        let state = status["run"]["state"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let run_id = status["run"]["id"].as_str().unwrap_or_default().to_owned();
        // Why it was rolled back, as the journal's `rolled_back` entry says.
        let reason = if state == "succeeded" {
            None
        } else {
            // One journal entry per line.
            slipway(&["logs", &run_id, "--output", "json"])
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .find_map(|entry| event_reason(&entry, "rolled_back"))
                })
        };
        let run = FleetRun {
            version: version.to_owned(),
            what: what.to_owned(),
            state,
            expected: expected.to_owned(),
            exit_code: code,
            run_id,
            reason,
            seconds: started.elapsed().as_secs_f64(),
        };
        if !out.json() {
            let mark = if run.state == run.expected {
                out.paint("✓", Style::Good)
            } else {
                out.paint("✗", Style::Bad)
            };
            out.line(&format!(
                "  {mark} {version} {} in {:.1}s{}",
                run.state,
                run.seconds,
                run.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        runs.push(run);
    }
    // The users keep going a moment after the rollback: all answered by the good version.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(u) = users {
        let _ = u.join();
    }
    let traffic = seen.lock().map(|t| t.clone()).unwrap_or_default();
    let versions = lab.versions();
    let weights_after = lab.weights();
    let ok = runs.iter().all(|r| r.state == r.expected)
        && versions.iter().all(|(_, v)| v.as_deref() == Some("2.0.0"))
        && weights_after == weights_before;
    let summary = serde_json::json!({
        "ok": ok,
        "skipped": false,
        "runs": runs,
        "hosts": versions.iter().zip(&weights_after).map(|((h, v), (_, w))| serde_json::json!({
            "host": h, "version": v, "weight": w,
        })).collect::<Vec<_>>(),
        "weights_before": weights_before.iter().map(|(h, w)| (h.clone(), *w)).collect::<BTreeMap<_, _>>(),
        "traffic": traffic,
        "store": store,
    });
    if out.json() {
        out.json_value(&summary);
    } else {
        out.line(&format!("\n{}", out.paint("Summary", Style::Bold)));
        for (h, v) in &versions {
            out.line(&format!(
                "  {h}: serving {} at weight {}",
                v.as_deref().unwrap_or("nothing"),
                weights_after
                    .iter()
                    .find(|(n, _)| n == h)
                    .and_then(|(_, w)| *w)
                    .map_or("?".to_owned(), |w| w.to_string())
            ));
        }
        out.line(&format!(
            "  users (from the first deploy on): {} requests not answered 200 (the bad canary's 500s); answers {}",
            traffic.failed,
            traffic
                .by_version
                .iter()
                .map(|(v, n)| format!("{v}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.line(&format!(
            "  the journal: SLIPWAY_STORE={store} slipway logs {}",
            runs.last().map(|r| r.run_id.as_str()).unwrap_or("")
        ));
        out.line(&format!(
            "\n{}",
            if ok {
                out.paint(
                    "The good version reached every host; the bad one was rolled back by itself and every weight is back.",
                    Style::Good,
                )
            } else {
                out.paint("The fleet demo did not go as intended.", Style::Bad)
            }
        ));
    }
    drop(lab);
    if a.keep
        && let Some(t) = temp
    {
        let kept = t.keep();
        out.eline(&format!("demo files kept in {}", kept.display()));
    }
    Ok(if ok { exit::SUCCESS } else { exit::FAILURE })
}

fn process_target(dir: &Path, plan: &Plan, bin: &Path) -> ProcessTarget {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
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
                    env: BTreeMap::from([("PATH".to_owned(), path.clone())]),
                    workdir: dir.to_path_buf(),
                },
            ))
        })
        .collect();
    let mut t = ProcessTarget::new(dir.join("instances"), services);
    t.stop_grace = Duration::from_secs(3);
    t.ready_timeout = Duration::from_secs(20);
    t
}

async fn stop_everything(dir: &Path) {
    let t = ProcessTarget::new(dir.join("instances"), BTreeMap::new());
    for s in ["api", "web"] {
        let survey = t.running(s);
        t.stop_instances(&survey.alive).await;
    }
}

fn write_wrapper(dir: &Path) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            exit::INTERNAL,
            format!("failed to find the slipway binary: {e}"),
            None,
        )
    })?;
    std::fs::create_dir_all(&bin)
        .and_then(|_| {
            let script = bin.join("demo-app");
            std::fs::write(
                &script,
                format!("#!/bin/sh\nexec '{}' demo-app \"$@\"\n", exe.display()),
            )?;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to write the demo-app wrapper: {e}"),
                None,
            )
        })?;
    Ok(bin)
}

fn write_migrations(dir: &Path) -> Result<(), CliError> {
    for (release, name, text) in MIGRATIONS {
        let d = dir.join(format!("migrations-{release}"));
        std::fs::create_dir_all(&d)
            .and_then(|_| std::fs::write(d.join(name), text))
            .map_err(|e| {
                CliError::new(
                    exit::INTERNAL,
                    format!("failed to write the demo migrations: {e}"),
                    None,
                )
            })?;
    }
    Ok(())
}

async fn schema_version(dir: &Path, release: &str) -> Option<i64> {
    let url = format!("sqlite://{}", dir.join("shop.db").display());
    slipway_migrate::status(&url, &dir.join(format!("migrations-{release}")))
        .await
        .ok()?
        .latest_applied
}

async fn run_demo(a: &DemoArgs, dir: &Path, out: &Output) -> Result<i32, CliError> {
    let bin = write_wrapper(dir)?;
    write_migrations(dir)?;
    let store_url = format!("sqlite://{}", dir.join("slipway.db").display());
    // The demo's runs go through the same operations as `slipway deploy` (plan, gates,
    // lease, checks, notifications, audit); only the canaries' front doors differ: one
    // in-process proxy per service, watched live. Its store is its own: the local user acts.
    let session = slipway_ops::Session::open_private(&store_url)
        .await
        .map_err(|e| {
            CliError::new(
                exit::STORE,
                format!("failed to open the demo store: {}", e.message),
                None,
            )
        })?;
    let store = session.store.clone();

    // The shop's front doors: one built-in proxy per service, on fixed ports for the life
    // of the demo; traffic flows through them the whole time.
    let mut shop = Shop {
        dir: dir.to_path_buf(),
        proxies: BTreeMap::new(),
        traffic: BTreeMap::new(),
    };
    for s in ["api", "web"] {
        let p = Proxy::start(ProxyConfig::default()).await.map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start the {s} proxy: {e}"),
                None,
            )
        })?;
        shop.proxies.insert(s.to_owned(), Arc::new(p));
    }
    if !out.json() {
        out.line(&format!(
            "{} the sample shop: api and web, two instances each, behind built-in proxies (api {}, web {}); working directory {}",
            out.paint("Starting", Style::Bold),
            shop.proxies["api"].local_addr(),
            shop.proxies["web"].local_addr(),
            dir.display()
        ));
    }

    let mut runs = Vec::new();
    let expectations = [
        (
            "2.3.0",
            RunState::Succeeded,
            "first deploy of what runs today",
        ),
        (
            "2.4.0",
            RunState::Succeeded,
            "good version: canaries promote",
        ),
        (
            "2.5.0",
            RunState::RolledBack,
            "bad version: api canary rolls back",
        ),
    ];
    let mut started_traffic = false;
    for ((version, text), (_, expected, what)) in RELEASES.iter().zip(expectations.iter()) {
        // The spec is planned from a file beside the store, as any release is.
        let spec_file = dir.join(format!("shop-{version}.yaml"));
        std::fs::write(&spec_file, text).map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to write {}: {e}", spec_file.display()),
                None,
            )
        })?;
        let planned = slipway_ops::planning::plan_file(&spec_file, "demo", Some(&store_url))
            .await
            .map_err(|e| match e {
                slipway_ops::planning::PlanError::Spec(e) => CliError::new(
                    exit::INTERNAL,
                    format!(
                        "the embedded demo spec is invalid:\n{}",
                        e.render(false, 100)
                    ),
                    None,
                ),
                slipway_ops::planning::PlanError::Ops(e) => e.into(),
            })?;
        let plan = planned.plan.clone();
        if !out.json() {
            out.line(&format!(
                "\n{} shop {version} — {what} (plan sha256:{}…)",
                out.paint("Deploying", Style::Bold),
                &plan.digest[..12]
            ));
        }
        let processes = process_target(dir, &plan, &bin);
        let routers: BTreeMap<String, BuiltinRouter> = shop
            .proxies
            .iter()
            .map(|(k, p)| (k.clone(), BuiltinRouter::new(p.clone())))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let deploy = DeployTarget::new(plan.clone(), processes, routers, dir.join("diagnostics"))
            .with_events(tx);
        let view = tokio::spawn(live_view(
            rx,
            shop.proxies.clone(),
            out.json(),
            out.color,
            std::io::stderr().is_terminal(),
        ));
        let t0 = Instant::now();
        let started = slipway_ops::runs::deploy_with(
            &session,
            &planned,
            slipway_ops::runs::DeployRequest {
                file: spec_file.clone(),
                detach: false,
                drive: slipway_ops::runs::DriveRequest::default(),
                override_freeze: None,
            },
            Arc::new(DemoReporter { quiet: out.json() }),
            slipway_ops::runs::Overrides {
                deploy: Some(Arc::new(deploy)),
            },
        )
        .await;
        view.abort();
        let report = match started.map_err(CliError::from)? {
            slipway_ops::runs::DeployStarted::Driven(r) => r,
            slipway_ops::runs::DeployStarted::Detached { run, .. } => {
                return Err(CliError::new(
                    exit::INTERNAL,
                    format!("run {run} was detached; the demo drives its runs itself"),
                    None,
                ));
            }
        };
        let state = match report.outcome {
            DriveOutcome::Finished(s) => s,
            DriveOutcome::Paused => RunState::Paused,
            DriveOutcome::Blocked { .. } => RunState::WaitingForApproval,
        };
        let run_id = report.run.clone();
        let reason = run_reason(store.as_ref(), &run_id).await;
        let schema = schema_version(dir, version).await;
        if !out.json() {
            let verdict = if state == *expected {
                out.paint(&format!("{state:?}"), Style::Good)
            } else {
                out.paint(&format!("{state:?} (expected {expected:?})"), Style::Bad)
            };
            out.line(&format!(
                "  run {} → {verdict} in {:.1}s{}",
                run_id,
                t0.elapsed().as_secs_f64(),
                reason
                    .as_ref()
                    .map(|r| format!("\n  reason: {r}"))
                    .unwrap_or_default()
            ));
        }
        runs.push(RunSummary {
            version: (*version).to_owned(),
            run_id,
            state: format!("{state:?}"),
            expected: format!("{expected:?}"),
            reason,
            schema_version: schema,
            seconds: t0.elapsed().as_secs_f64(),
        });
        if !started_traffic {
            // Users arrive once the shop is up.
            for (name, p) in &shop.proxies {
                shop.traffic
                    .insert(name.clone(), Traffic::start(p.local_addr(), "/", a.rate, 8));
            }
            started_traffic = true;
            if !out.json() {
                out.line(&format!("  live traffic: {} req/s to each service", a.rate));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    let mut traffic = BTreeMap::new();
    for (name, t) in std::mem::take(&mut shop.traffic) {
        traffic.insert(name, TrafficView::from(t.stop().await));
    }
    for p in shop.proxies.values() {
        // Other handles may still exist in finished targets; shutdown is by reference.
        let _ = p;
    }

    // The evidence: the audit chain over everything the demo did.
    let entries = slipway_engine::Store::audit_entries(store.as_ref())
        .await
        .map_err(|e| {
            CliError::new(
                exit::STORE,
                format!("failed to read the audit chain: {e}"),
                None,
            )
        })?;
    let head = slipway_engine::Store::audit_head(store.as_ref())
        .await
        .map_err(|e| {
            CliError::new(
                exit::STORE,
                format!("failed to read the audit head: {e}"),
                None,
            )
        })?;
    let audit = match slipway_engine::audit::verify(
        &entries,
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    ) {
        Ok(v) => {
            serde_json::json!({ "ok": true, "entries": v.entries, "head_seq": v.head_seq, "head_hash": v.head_hash })
        }
        Err(b) => serde_json::json!({ "ok": false, "problem": b.to_string() }),
    };
    let delivery = delivery(&runs);
    let ok = runs.iter().all(|r| r.state == r.expected) && audit["ok"] == true;
    let summary = Summary {
        ok,
        runs,
        traffic,
        audit,
        delivery,
        workdir: shop.dir.display().to_string(),
    };
    if out.json() {
        out.json_value(&summary);
    } else {
        print_summary(&summary, out);
    }
    Ok(if ok { exit::SUCCESS } else { exit::FAILURE })
}

/// Prints what the demo narrates besides its live table: migration output and undos.
struct DemoReporter {
    quiet: bool,
}

impl slipway_ops::Reporter for DemoReporter {
    fn report(&self, event: slipway_ops::OpsEvent) {
        use slipway_engine::EngineEvent as E;
        let slipway_ops::OpsEvent::Notice(n) = event else {
            return;
        };
        let line = match &n.event {
            E::StepSucceeded {
                step,
                output: Some(o),
                ..
            } if step.ends_with("/migrate") => format!("  {step}: {}", o.stdout),
            E::UndoStarted { step, .. } => {
                format!("  {step}: undoing (pre-staged down-migration)")
            }
            E::UndoSucceeded { step, .. } => format!("  {step}: undone"),
            E::UndoFailed { step, error, .. } => format!("  {step}: undo FAILED: {error}"),
            _ => return,
        };
        if !self.quiet {
            crate::out::stderr_line(&line);
        }
    }
}

async fn run_reason(store: &dyn slipway_engine::Store, run: &str) -> Option<String> {
    let journal = store.journal(run, 0).await.ok()?;
    journal.iter().rev().find_map(|r| match &r.event {
        slipway_engine::EngineEvent::StepFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
}

fn delivery(runs: &[RunSummary]) -> serde_json::Value {
    let n = runs.len() as f64;
    let failed: Vec<&RunSummary> = runs.iter().filter(|r| r.state != "Succeeded").collect();
    let rolled_back = runs.iter().filter(|r| r.state == "RolledBack").count();
    let span: f64 = runs.iter().map(|r| r.seconds).sum();
    serde_json::json!({
        "deployments": runs.len(),
        "succeeded": runs.len() - failed.len(),
        "change_failure_rate": if n > 0.0 { failed.len() as f64 / n } else { 0.0 },
        "rollback_frequency": if n > 0.0 { rolled_back as f64 / n } else { 0.0 },
        "deployments_per_hour": if span > 0.0 { n / span * 3600.0 } else { 0.0 },
        "failed_deployment_recovery_seconds": failed.iter().map(|r| r.seconds).fold(0.0, f64::max),
    })
}

fn print_summary(s: &Summary, out: &Output) {
    out.line(&format!("\n{}", out.paint("Summary", Style::Bold)));
    for r in &s.runs {
        let mark = if r.state == r.expected {
            out.paint("✓", Style::Good)
        } else {
            out.paint("✗", Style::Bad)
        };
        out.line(&format!(
            "  {mark} shop {:<6} {:<11} {:>5.1}s  schema V{}  run {}",
            r.version,
            r.state,
            r.seconds,
            r.schema_version.unwrap_or(0),
            r.run_id
        ));
    }
    for (name, t) in &s.traffic {
        out.line(&format!(
            "  users of {name}: {} requests, {} ok, {} 5xx ({} of them from a canary), {} connection failures",
            t.sent, t.ok, t.server_errors, t.canary_errors_seen_by_users, t.failed
        ));
    }
    if s.audit["ok"] == true {
        out.line(&format!(
            "  audit chain verified: {} entries, head {}",
            s.audit["entries"],
            s.audit["head_hash"].as_str().unwrap_or_default()
        ));
    } else {
        out.line(&format!(
            "  {} {}",
            out.paint("audit chain broken:", Style::Bad),
            s.audit["problem"]
        ));
    }
    let d = &s.delivery;
    out.line(&format!(
        "  delivery: {} deployments, change failure rate {:.0}%, rollback frequency {:.0}%, recovery {:.1}s",
        d["deployments"],
        d["change_failure_rate"].as_f64().unwrap_or(0.0) * 100.0,
        d["rollback_frequency"].as_f64().unwrap_or(0.0) * 100.0,
        d["failed_deployment_recovery_seconds"].as_f64().unwrap_or(0.0),
    ));
    out.line(&format!(
        "\n{}",
        if s.ok {
            out.paint("Both outcomes happened as intended.", Style::Good)
        } else {
            out.paint("The demo did not go as intended.", Style::Bad)
        }
    ));
}

/// Live table (on a terminal: redrawn in place; otherwise: a line per second) and a line
/// per rollout decision.
async fn live_view(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ServiceEvent>,
    proxies: BTreeMap<String, Arc<ProxyHandle>>,
    quiet: bool,
    color: bool,
    tty: bool,
) {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    if quiet {
        while rx.recv().await.is_some() {}
        return;
    }
    let mp = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let header = mp.add(ProgressBar::new_spinner().with_style(style.clone()));
    header.set_message(format!(
        "{:<5} {:>6} │ {:>7} {:>7} {:>8} │ {:>7} {:>7} {:>8} │ {}",
        "svc", "weight", "stable/s", "err%", "p99", "canary/s", "err%", "p99", "analysis"
    ));
    let mut verdicts: BTreeMap<String, String> = BTreeMap::new();
    let rows: BTreeMap<String, ProgressBar> = proxies
        .keys()
        .map(|k| {
            (
                k.clone(),
                mp.add(ProgressBar::new_spinner().with_style(style.clone())),
            )
        })
        .collect();
    let mut last: BTreeMap<String, slipway_proxy::MetricsSnapshot> = proxies
        .iter()
        .map(|(k, p)| (k.clone(), p.snapshot()))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let say = |line: String| {
        if tty {
            let _ = mp.println(line);
        } else {
            crate::out::stderr_line(&line);
        }
    };
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                // Routine measurements go into the table's last column; decisions get a line.
                if let RolloutEvent::Measured { measurement, phase, window, .. } = &ev.event {
                    let failing: Vec<&str> = measurement
                        .results
                        .iter()
                        .filter(|r| r.phase != slipway_model::analysis::Phase::Successful)
                        .map(|r| r.metric.as_str())
                        .collect();
                    verdicts.insert(
                        ev.service.clone(),
                        if failing.is_empty() {
                            format!("{phase:?}: all metrics pass (n={})", window.canary_requests)
                        } else {
                            format!("{phase:?}: {} (n={})", failing.join(", "), window.canary_requests)
                        },
                    );
                    if tty && *phase == slipway_model::analysis::Phase::Running && failing.is_empty() {
                        continue;
                    }
                }
                if let Some(line) = describe(&ev, color) {
                    say(line);
                }
            }
            _ = tick.tick() => {
                for (name, p) in &proxies {
                    let now = p.snapshot();
                    let prev = last.get(name).cloned().unwrap_or_else(|| now.clone());
                    let d = now.since(&prev);
                    let row = |v: Version| {
                        let s = d.version(v);
                        let err = s.error_rate().map_or("-".to_owned(), |e| format!("{:.1}", e * 100.0));
                        let p99 = s.latency_quantile(0.99).map_or("-".to_owned(), |l| format!("{:.1}ms", l.as_secs_f64() * 1000.0));
                        (s.requests, err, p99)
                    };
                    let (sr, se, sp) = row(Version::Stable);
                    let (cr, ce, cp) = row(Version::Canary);
                    let line = format!(
                        "{:<5} {:>5}% │ {:>7} {:>7} {:>8} │ {:>7} {:>7} {:>8} │ {}",
                        name,
                        now.canary_weight,
                        sr,
                        se,
                        sp,
                        cr,
                        ce,
                        cp,
                        if now.canary_weight > 0 { verdicts.get(name).map_or("-", String::as_str) } else { "-" }
                    );
                    if tty {
                        if let Some(r) = rows.get(name) { r.set_message(line); r.tick(); }
                    } else if cr > 0 || now.canary_weight > 0 {
                        say(format!("  {line}"));
                    }
                    last.insert(name.clone(), now);
                }
            }
        }
    }
    let _ = mp.clear();
}

fn describe(ev: &ServiceEvent, color: bool) -> Option<String> {
    let paint = |t: &str, good: bool| {
        if !color {
            return t.to_owned();
        }
        use owo_colors::OwoColorize;
        if good {
            t.green().to_string()
        } else {
            t.red().bold().to_string()
        }
    };
    let s = &ev.service;
    // The shared text of every progress line (`Progress::describe`), with the outcomes a
    // newcomer watches for painted.
    let text = Progress::Rollout(ev.event.clone()).describe();
    Some(match &ev.event {
        RolloutEvent::RollingBack { .. } => format!("  {s}: {}", paint(&text, false)),
        RolloutEvent::RolledBack { .. } => {
            format!("  {s}: {}", paint("rolled back; canary stopped", false))
        }
        RolloutEvent::Promoted { .. } => format!("  {s}: {}", paint(&text, true)),
        RolloutEvent::StepStarted { .. } | RolloutEvent::Intervened { .. } => return None,
        _ => format!("  {s}: {text}"),
    })
}
