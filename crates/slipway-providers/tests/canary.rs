//! Canaries with real processes and real HTTP traffic: the real `demo-app` binary as
//! stable and canary, the built-in proxy in front, the load generator as users, and the
//! rollout controller deciding.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slipway_model::spec::{
    AnalysisStep, AnalysisTemplate, CanaryStep, Comparison, Metric, OnFailure, Probe, RunSpec,
    Scalar,
};
use slipway_providers::builtin::BuiltinRouter;
use slipway_providers::process::{ProcessTarget, ServiceProcess};
use slipway_providers::traffic::Traffic;
use slipway_proxy::{Proxy, ProxyConfig};
use slipway_rollout::{
    Canary, Instances, NoInterventions, Outcome, Role, RolloutEvent, World, run_canary,
};

/// The real demo-app binary, built on demand (a dev-dependency only builds the library).
pub fn demo_app_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DEMO_APP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("demo-app");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", "demo-app", "--bin", "demo-app"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building demo-app failed");
    });
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

fn service(args: &str) -> ServiceProcess {
    ServiceProcess {
        run: RunSpec {
            image: None,
            command: format!(
                "{} --port {{{{ port }}}} --version {{{{ version }}}} --threads 1 {args}",
                demo_app_bin().display()
            ),
            replicas: 2,
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
        },
        readiness: Some(Probe {
            http: Some("/ready".into()),
            ..Probe::default()
        }),
        env: BTreeMap::new(),
        workdir: std::env::temp_dir(),
    }
}

fn target(dir: &std::path::Path, args: &str) -> ProcessTarget {
    let mut t = ProcessTarget::new(dir, BTreeMap::from([("api".to_owned(), service(args))]));
    t.stop_grace = Duration::from_secs(3);
    t.ready_timeout = Duration::from_secs(20);
    t
}

fn metric(name: &str, max: Option<&str>) -> Metric {
    Metric {
        name: name.into(),
        provider: "builtin".into(),
        query: None,
        max: max.map(|m| Scalar(m.into())),
        min: None,
        compare: (name == "latency-vs-stable").then_some(Comparison::MannWhitney),
        confidence: Some(0.99),
    }
}

/// How long the analysis step runs.
#[derive(Clone, Copy)]
enum Until {
    /// Two seconds, pausing after two inconclusive measurements (too little traffic).
    TwoSeconds,
    /// Until its first conclusive measurement, however many windows a starved load
    /// generator leaves short of `min_samples`: the verdict does not depend on how fast
    /// this machine is.
    Conclusive,
}

fn templates(
    metrics: Vec<Metric>,
    interval: &str,
    min_samples: u64,
    until: Until,
) -> BTreeMap<String, AnalysisTemplate> {
    BTreeMap::from([(
        "golden".to_owned(),
        AnalysisTemplate {
            interval: Some(interval.into()),
            min_samples: Some(min_samples),
            failure_limit: Some(0),
            inconclusive_limit: Some(match until {
                Until::TwoSeconds => 2,
                Until::Conclusive => 1_000_000,
            }),
            consecutive_error_limit: None,
            metrics,
            on_failure: OnFailure::Rollback,
        },
    )])
}

fn steps(analysis_for: Option<&str>) -> Vec<CanaryStep> {
    vec![
        CanaryStep {
            set_weight: Some(20),
            ..CanaryStep::default()
        },
        CanaryStep {
            analysis: Some(AnalysisStep {
                template: "golden".into(),
                duration: analysis_for.map(Into::into),
            }),
            ..CanaryStep::default()
        },
        CanaryStep {
            set_weight: Some(60),
            ..CanaryStep::default()
        },
    ]
}

/// Kills every instance recorded under a directory when dropped, so a failing test
/// (which panics before its cleanup) leaves no process behind.
struct Reap(std::path::PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        let t = ProcessTarget::new(&self.0, BTreeMap::new());
        for i in t.running("api").alive {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(i32::try_from(i.pid).unwrap_or(0)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

struct Run {
    outcome: Outcome,
    events: Vec<RolloutEvent>,
    canary_ids: Vec<u32>,
    stable_ids: Vec<u32>,
    // Dropped before `dir` (fields drop in order), while the state files still exist.
    _reap: Reap,
    dir: tempfile::TempDir,
}

async fn canary(
    canary_args: &str,
    metrics: Vec<Metric>,
    rate: u32,
    (interval, min_samples): (&str, u64),
    until: Until,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let reap = Reap(dir.path().to_path_buf());
    let stable_t = target(dir.path(), "");
    let stable = stable_t
        .start("api", "1.0.0", 2, Role::Stable)
        .await
        .unwrap();
    let proxy = Arc::new(
        Proxy::start(ProxyConfig {
            pools: slipway_proxy::Pools {
                stable: stable.iter().map(|i| i.addr).collect(),
                canary: vec![],
            },
            ..ProxyConfig::default()
        })
        .await
        .unwrap(),
    );
    let traffic = Traffic::start(proxy.local_addr(), "/", rate, 16);
    let router = BuiltinRouter::new(proxy.clone());
    let canary_t = target(dir.path(), canary_args);
    let templates = templates(metrics, interval, min_samples, until);
    let steps = steps(match until {
        Until::TwoSeconds => Some("2s"),
        Until::Conclusive => None,
    });
    let world = World {
        instances: &canary_t,
        router: &router,
        metrics: &router,
        external: None,
        interventions: &NoInterventions,
        drain_timeout: Duration::from_secs(5),
    };
    let mut events = Vec::new();
    let outcome = run_canary(
        Canary {
            service: "api",
            version: "2.0.0",
            replicas: 2,
            stable: stable.clone(),
            steps: &steps,
            background: None,
            templates: &templates,
            start_step: 0,
            resume: None,
            environment: "test",
            soak: None,
            promotion: Default::default(),
        },
        &world,
        &mut |e| events.push(e),
    )
    .await
    .unwrap();
    let _ = traffic.stop().await;
    let canary_ids = events
        .iter()
        .find_map(|e| match e {
            RolloutEvent::CanaryStarted { instances } => {
                Some(instances.iter().map(|i| i.pid).collect())
            }
            _ => None,
        })
        .unwrap();
    Run {
        outcome,
        events,
        canary_ids,
        stable_ids: stable.iter().map(|i| i.pid).collect(),
        dir,
        _reap: reap,
    }
}

fn alive(pid: u32) -> bool {
    slipway_providers::process::proc_start_ticks(pid).is_some()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn cleanup(run: &Run) {
    let t = target(run.dir.path(), "");
    let left = t.running("api");
    t.stop_instances(&left.alive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_and_the_old_stable_stopped() {
    // min_samples well below the ~20 canary requests a 250 ms window gets at 400 req/s and
    // 20 % weight: on a loaded machine the load generator falls behind, and this test is
    // about promotion, not about too little traffic (that has its own test below).
    let run = canary(
        "",
        vec![
            metric("error-rate", Some("0.01")),
            metric("p99-latency", Some("500ms")),
        ],
        400,
        ("250ms", 5),
        Until::Conclusive,
    )
    .await;
    assert!(
        matches!(run.outcome, Outcome::Promoted { .. }),
        "{:?}",
        run.outcome
    );
    assert!(
        run.canary_ids.iter().all(|p| alive(*p)),
        "new stable must be running"
    );
    assert!(
        run.stable_ids.iter().all(|p| !alive(*p)),
        "old stable must be stopped"
    );
    assert!(run.events.iter().any(|e| matches!(
        e,
        RolloutEvent::Measured {
            phase: slipway_model::analysis::Phase::Running,
            ..
        }
    )));
    cleanup(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_returning_errors_is_rolled_back_automatically() {
    // 20 % errors, evenly spread: far above the 5 % max for the interval analysis, while
    // the guard (which waits for a hard failure, half of all responses) lets it through.
    // Windows of at least 50 canary requests (1 s at ~80 req/s): the error-rate judge
    // fails only what a binomial test proves at 95 %, and the ~20 requests of a 250 ms
    // window may hold 3 errors, no proof of a rate above 5 % (p = 0.075), while 50
    // requests at 20 % (10 errors, p < 0.001) are. Until then a window short of
    // 50 is inconclusive and the analysis keeps measuring, however slow this machine.
    let run = canary(
        "--error-rate 0.2",
        vec![metric("error-rate", Some("0.05"))],
        400,
        ("1s", 50),
        Until::Conclusive,
    )
    .await;
    let Outcome::RolledBack {
        reason,
        measurements,
    } = &run.outcome
    else {
        panic!("{:?}", run.outcome)
    };
    assert!(reason.contains("error-rate"), "{reason}");
    assert!(reason.contains("above max 5.00%"), "{reason}");
    assert!(!measurements.is_empty());
    assert!(
        run.canary_ids.iter().all(|p| !alive(*p)),
        "canary must be stopped"
    );
    assert!(
        run.stable_ids.iter().all(|p| alive(*p)),
        "stable must keep serving"
    );
    cleanup(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_latency() {
    let run = canary(
        "--latency 80ms",
        vec![
            metric("p99-latency", Some("50ms")),
            metric("latency-vs-stable", None),
        ],
        300,
        ("250ms", 15),
        Until::Conclusive,
    )
    .await;
    let Outcome::RolledBack { reason, .. } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert!(reason.contains("latency"), "{reason}");
    assert!(run.stable_ids.iter().all(|p| alive(*p)));
    cleanup(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_is_inconclusive_and_pauses() {
    // 8 req/s × 20% weight ≈ 0.4 canary requests per 250 ms window: never min_samples.
    let run = canary(
        "",
        vec![metric("error-rate", Some("0.01"))],
        8,
        ("250ms", 20),
        Until::TwoSeconds,
    )
    .await;
    let Outcome::Paused { reason } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert!(reason.contains("insufficient data"), "{reason}");
    assert!(
        !run.events
            .iter()
            .any(|e| matches!(e, RolloutEvent::Promoted { .. }))
    );
    cleanup(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_the_supervisor_and_are_found_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(dir.path().to_path_buf());
    let first = target(dir.path(), "");
    let started = first.start("api", "1.0.0", 2, Role::Stable).await.unwrap();
    drop(first);
    // A new supervisor over the same directory — what `slipway` sees after a restart.
    let second = target(dir.path(), "");
    let survey = second.running("api");
    assert_eq!(survey.alive, started);
    assert!(survey.dead.is_empty());
    // One dies behind our back: it is reported, not resurrected silently.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(started[0].pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let survey = loop {
        let s = second.running("api");
        if !s.dead.is_empty() || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(survey.dead.len(), 1);
    assert_eq!(survey.alive, vec![started[1].clone()]);
    second.stop_instances(&survey.alive).await;
    assert!(second.running("api").alive.is_empty());
}

/// An instance whose process lives is running whether or not it answers this instant (a
/// loaded host, a full accept queue). The survey used to call it dead when a connect was
/// refused or took over 500 ms: its record was removed, the process kept serving
/// unrecorded, and the next deploy saw no stable version and launched the new one
/// without a canary (seen under load in browser_cli: `replaces`, `previous: null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_answer_for_a_moment_is_still_running() {
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(dir.path().to_path_buf());
    let t = target(dir.path(), "");
    let started = t.start("api", "1.0.0", 1, Role::Stable).await.unwrap();
    // Its record now names an address nothing listens on: every connect is refused, as
    // a connect to a stalled instance times out.
    let state = dir.path().join(format!("{}.json", started[0].id));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    v["instance"]["addr"] = silent.to_string().into();
    std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
    let survey = t.running("api");
    assert!(state.exists(), "the record of a live instance was removed");
    // Stop it by its real pid whatever the survey said, so a failure leaks nothing.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(started[0].pid).unwrap());
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    assert!(survey.dead.is_empty(), "{survey:?}");
    assert_eq!(
        survey.alive.iter().map(|i| i.pid).collect::<Vec<_>>(),
        vec![started[0].pid],
        "{survey:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_hard_is_cut_off_by_the_guard() {
    let run = canary(
        "--error-rate 1.0",
        vec![metric("error-rate", Some("0.05"))],
        400,
        ("250ms", 20),
        Until::TwoSeconds,
    )
    .await;
    let Outcome::RolledBack { reason, .. } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    // The 4th failed response trips the guard, before any interval has 20 samples.
    assert!(
        reason.contains("canary guard tripped: 4 errors in the last 4"),
        "{reason}"
    );
    assert!(
        run.canary_ids.iter().all(|p| !alive(*p)),
        "canary must be stopped"
    );
    assert!(
        run.stable_ids.iter().all(|p| alive(*p)),
        "stable must keep serving"
    );
    cleanup(&run).await;
}
