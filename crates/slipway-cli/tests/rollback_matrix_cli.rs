//! The rollback invariant through the real binary (issue 13, part 1): from every state a
//! run can be in, after every action that ends it — an automatic rollback, `slipway
//! rollback`, `slipway abort`, or one of them killed with SIGKILL mid-way and finished by
//! a second `slipway` — every service serves exactly the version the store records as
//! current, launched exactly as that version's own run launched it (command line and
//! environment), and nothing of the rejected version runs. Asked of the running
//! instances themselves (`GET /version`, `/proc/PID/cmdline`, `/proc/PID/environ`) and of
//! `slipway status`; the environment's lease is free afterwards.
//!
//! One table per target: `process` (demo-app instances behind a proxy process per
//! service, canaries through the proxy) and `exec` (the same demo-app started and stopped
//! by the release's own install and undo scripts). The versions differ in their command
//! line (a latency flag, the version hard-coded as `examples/shop` does) and in an
//! environment variable, so an undo that relaunched the old version with the new
//! release's command or environment is caught. Each case has a directory and a store of
//! its own; a few run at once (`MATRIX_PARALLEL`, default 3; `MATRIX_ONLY=Succeeded`
//! runs the cases whose name contains the text).
//!
//! Last, `examples/shop` as shipped: a promoted service and a failing later one, rolled
//! back to the version before (its commands hard-code their version).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MARK: &str = "SLIPWAY_MATRIX_TEST";
const V1: &str = "1.0.0";
const V2: &str = "2.0.0";

/// How each version is launched: what its instances' command lines and environments
/// must show.
fn flags(version: &str) -> &'static str {
    if version == V1 {
        "--latency 1ms"
    } else {
        "--latency 2ms"
    }
}

fn flavor(version: &str) -> &'static str {
    if version == V1 { "one" } else { "two" }
}

/// A case's world: directory, store, PATH with demo-app; everything it starts is killed
/// when it ends.
struct World {
    dir: tempfile::TempDir,
    mark: String,
    rt: tokio::runtime::Runtime,
}

impl Drop for World {
    #[expect(clippy::print_stderr, reason = "says where a kept directory is")]
    fn drop(&mut self) {
        crate::kill_marked(MARK, &self.mark);
        // `MATRIX_KEEP=1` keeps each case's directory (store, logs, instance state).
        if std::env::var("MATRIX_KEEP").is_ok() {
            eprintln!("kept {}", self.mark);
            self.dir.disable_cleanup(true);
        }
    }
}

impl World {
    fn new() -> Self {
        let dir = crate::demo_app_dir();
        let mark = dir.path().display().to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self { dir, mark, rt }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn envs(&self) -> Vec<(String, String)> {
        vec![
            (
                "PATH".into(),
                format!(
                    "{}:{}",
                    self.path().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            (
                "SLIPWAY_STORE".into(),
                format!("sqlite://{}/slipway.db", self.path().display()),
            ),
            (MARK.into(), self.mark.clone()),
            // A driver that died leaves its lease; a short one lets the next take over.
            ("SLIPWAY_LEASE_TTL".into(), "3s".into()),
        ]
    }

    /// `slipway ARGS` to completion: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = crate::slipway();
        c.envs(self.envs())
            .args(args)
            .timeout(Duration::from_secs(90));
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `slipway ARGS` in the background, stderr in `<dir>/<name>.log`.
    fn spawn(&self, args: &[&str], name: &str) -> Child {
        let log = std::fs::File::create(self.path().join(format!("{name}.log"))).unwrap();
        Command::new(assert_cmd::cargo::cargo_bin("slipway"))
            .current_dir(crate::repo())
            .envs(self.envs())
            .env("NO_COLOR", "1")
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn logs(&self) -> String {
        crate::canary_cli::logs_in(self.path())
    }

    fn deploy(&self, spec: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
        let s = spec.display().to_string();
        let mut args = vec!["deploy", "--env", "live", "--output", "json", "-f", &s];
        args.extend_from_slice(extra);
        let (code, out, err) = self.run(&args);
        let v = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{e}: stdout {out}\nstderr {err}"));
        (code, v)
    }

    fn deploy_bg(&self, spec: &Path, name: &str) -> Child {
        let s = spec.display().to_string();
        self.spawn(&["deploy", "--env", "live", "-f", &s], name)
    }

    fn journal(&self, run: &str) -> String {
        self.run(&["logs", run, "--output", "json"]).1
    }

    /// The id of the newest run of `version`, once its journal contains `needle`.
    fn wait_journal(&self, version: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "the journal of {version} never showed {needle}; logs:\n{}",
                self.logs()
            );
            let (_, out, _) = self.run(&["history", "--output", "json"]);
            let runs: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let run = runs
                .as_array()
                .and_then(|r| r.iter().find(|r| r["version"] == version))
                .and_then(|r| r["id"].as_str())
                .map(str::to_owned);
            if let Some(run) = run
                && self.journal(&run).contains(needle)
            {
                return run;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `run`'s journal contains `needle` at least `n` times.
    fn wait_journal_count(&self, run: &str, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.journal(run).matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "the journal of {run} never showed {needle} {n} times; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self, run: &str) -> serde_json::Value {
        let (code, out, err) = self.run(&["status", run, "--output", "json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Live demo-app instances of this case: (pid, argv after the program, environment).
    fn instances(&self) -> Vec<crate::Marked> {
        crate::marked(MARK, &self.mark)
            .into_iter()
            .filter(|m| m.argv.get(1).map(String::as_str) == Some("demo-app"))
            .collect()
    }

    /// No live lease on the environment.
    fn assert_lease_free(&self) {
        let (_, out, _) = self.run(&["env", "leases", "--output", "json"]);
        let leases: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let live: Vec<_> = leases
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["live"] == true)
            .collect();
        assert!(live.is_empty(), "the environment is still leased: {live:?}");
    }

    /// Open or shut the readiness gate of one service's version (gated specs): while it
    /// is shut, no instance of it becomes ready.
    fn gate(&self, service: &str, version: &str, open: bool) {
        let f = self.path().join(format!("gate-{service}-{version}"));
        if open {
            std::fs::write(f, "").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// `GET /version` at `addr`: the body of a 200, else the answer as the error.
fn version_at(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.trim().to_owned())
    } else {
        Err(text)
    }
}

fn exit_within(child: &mut Child, limit: Duration, w: &World) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        assert!(
            Instant::now() < deadline,
            "slipway did not finish within {limit:?}; logs:\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The invariant for one service: every live instance runs `version`, exactly as its
/// spec launches it (argv and environment), `replicas` of them, and answers with it.
/// Returns the instances' addresses.
fn assert_runs_exactly(
    w: &World,
    service: &str,
    version: &str,
    replicas: usize,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    let mine: Vec<_> = w
        .instances()
        .into_iter()
        .filter(|m| {
            m.environ.get("SLIPWAY_SERVICE").map(String::as_str) == Some(service)
                || m.environ.get("SERVICE").map(String::as_str) == Some(service)
        })
        .collect();
    let seen: Vec<String> = mine.iter().map(|m| m.argv[1..].join(" ")).collect();
    assert_eq!(
        mine.len(),
        replicas,
        "{service}: expected {replicas} instance(s) of {version}, found {seen:#?}\n{}",
        w.logs()
    );
    for m in &mine {
        let port_at = m.argv.iter().position(|a| a == "--port").unwrap() + 1;
        let mut argv = m.argv[1..].to_vec();
        argv[port_at - 1] = "PORT".into();
        let want: Vec<String> = format!(
            "demo-app --port PORT --version {version} {}",
            flags(version)
        )
        .split(' ')
        .map(str::to_owned)
        .collect();
        assert_eq!(argv, want, "{service}: /proc/{}/cmdline", m.pid);
        assert_eq!(
            m.environ.get("FLAVOR").map(String::as_str),
            Some(flavor(version)),
            "{service}: /proc/{}/environ {:?}",
            m.pid,
            m.environ
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", m.argv[port_at]).parse().unwrap();
        assert_eq!(
            version_at(addr).as_deref(),
            Ok(version),
            "{service} at {addr}"
        );
        addrs.push(addr);
    }
    addrs
}

// ---------------------------------------------------------------------------------------
// The process target.

/// What a process-target case starts from and does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PState {
    /// The run waits for an approval (`deploy --no-wait`).
    WaitingForApproval,
    /// A live driver holds the canary at 30 % (`pause: manual`).
    CanaryLive,
    /// The canary answers errors under live traffic: analysis fails.
    CanaryFailing,
    /// A live canary at a manual pause whose 2.0.0 processes are killed (-9): the
    /// candidate crashed after it was ready.
    CanaryCrashed,
    /// A live canary paused by `slipway pause` (the driver exits 5).
    PausedByRequest,
    /// No traffic: the analysis is inconclusive, the run pauses.
    PausedInconclusive,
    /// Errors with `on_failure: pause`.
    PausedOnFailure,
    /// api promoted (by `slipway promote`), web's canary paused beside its stable.
    PartiallyPromoted,
    /// Both services of the release promoted: the run succeeded.
    Succeeded,
    /// A succeeded run whose `slipway rollback` is killed while it relaunches api 1.0.0.
    ManualRollbackKilled,
    /// api promoted, web's 2.0.0 fails to start, the automatic rollback is killed while
    /// it relaunches api 1.0.0.
    AutoRollbackKilled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PAction {
    /// Nothing: the engine decides (automatic rollback).
    Auto,
    /// `slipway rollback RUN --reason …`.
    Rollback,
    /// `slipway abort RUN`.
    Abort,
    /// `slipway resume RUN` (finishes an interrupted rollback).
    Resume,
    /// `slipway rollback`, then a deploy of the version that serves again (must not take
    /// its instances for leftovers).
    RollbackThenRedeployStable,
}

struct PCase {
    state: PState,
    action: PAction,
    /// The command's exit code.
    exit: i32,
    /// The run's final state.
    end: &'static str,
    /// The version each service must be on afterwards.
    expect: &'static [(&'static str, &'static str)],
}

const GOLDEN: &str = "
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 2
    metrics:
      - { name: error-rate, max: 0.05 }
    on_failure: ON_FAILURE
";

impl World {
    /// A release of `services` (api, and web depending on it) at `version` on the process
    /// target, with these canary steps. `bad` makes the version answer errors.
    fn pspec(&self, version: &str, services: &[&str], steps: &str, opts: &SpecOpts) -> PathBuf {
        let mut svc = String::new();
        for s in services {
            let extra = if opts.bad { " --error-rate 1.0" } else { "" };
            let dep = if *s == "web" {
                "\n    depends_on: [api]"
            } else {
                ""
            };
            // The readiness gate (mid-undo cases) holds a relaunch until the test opens it.
            let readiness = if opts.gated {
                format!(
                    "{{ command: \"test -e {}/gate-{s}-{version}\", timeout: 2s, deadline: 60s }}",
                    self.path().display()
                )
            } else {
                "{ http: /ready, timeout: 2s }".to_owned()
            };
            svc.push_str(&format!(
                "  {s}:{dep}
    run:
      command: \"demo-app --port {{{{ port }}}} --version {version} {}{extra}\"
      replicas: 2
      env: {{ FLAVOR: {} }}
    readiness: {readiness}
",
                flags(version),
                flavor(version)
            ));
        }
        let approvals = if opts.approvals {
            "\n    approvals: { required: 1, four_eyes: false }"
        } else {
            ""
        };
        let text = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
{svc}environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}{approvals}
    strategy:
      canary:
        steps:{steps}
{}",
            GOLDEN.replace(
                "ON_FAILURE",
                if opts.pause_on_failure {
                    "pause"
                } else {
                    "rollback"
                }
            )
        );
        let p = self
            .path()
            .join(format!("release-{version}{}.yaml", opts.tag));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn proxy(&self, service: &str) -> SocketAddr {
        slipway_providers::remote::read_state(
            &self
                .path()
                .join(format!("process/live/proxies/{service}.json")),
        )
        .expect("the proxy recorded itself")
        .traffic
    }

    /// Users of a service, through its proxy.
    fn users(&self, service: &str) -> slipway_providers::traffic::Traffic {
        let _g = self.rt.enter();
        slipway_providers::traffic::Traffic::start(self.proxy(service), "/", 100, 4)
    }

    /// The process-target invariant for every service: the instances (see
    /// [`assert_runs_exactly`]), what the proxy serves, and what `status` says.
    fn assert_process_invariant(&self, run: &str, expect: &[(&str, &str)]) {
        let status = self.status(run);
        for (service, version) in expect {
            assert_runs_exactly(self, service, version, 2);
            let proxy = self.proxy(service);
            for _ in 0..10 {
                assert_eq!(
                    version_at(proxy).as_deref(),
                    Ok(*version),
                    "{service} through its proxy"
                );
            }
            assert_eq!(
                status["services"][service]["version"], *version,
                "status of {run} for {service}: {:#}",
                status["services"]
            );
            assert_eq!(
                status["traffic"][service]["instances"],
                serde_json::json!({ *version: 2 }),
                "{:#}",
                status["traffic"]
            );
            assert_eq!(status["traffic"][service]["proxy"]["weight"], 0);
        }
    }
}

#[derive(Default)]
struct SpecOpts {
    bad: bool,
    gated: bool,
    approvals: bool,
    pause_on_failure: bool,
    tag: &'static str,
}

const STEPS_QUICK: &str = "
          - set_weight: 20
          - pause: 500ms
          - set_weight: 100";
const STEPS_MANUAL: &str = "
          - set_weight: 30
          - pause: manual
          - set_weight: 100";
const STEPS_ANALYSIS: &str = "
          - set_weight: 20
          - analysis: { template: golden, duration: 3s }
          - set_weight: 100";

/// Bring a process-target case to its state; returns the run and, when a `slipway`
/// still drives it, that process.
fn process_state(w: &World, state: PState) -> (String, Option<Child>) {
    let two = matches!(
        state,
        PState::PartiallyPromoted
            | PState::Succeeded
            | PState::ManualRollbackKilled
            | PState::AutoRollbackKilled
    );
    let services: &[&str] = if two { &["api", "web"] } else { &["api"] };
    let gated = matches!(
        state,
        PState::ManualRollbackKilled | PState::AutoRollbackKilled
    );
    if gated {
        for s in services {
            w.gate(s, V1, true);
            w.gate(s, V2, true);
        }
    }
    let v1 = w.pspec(
        V1,
        services,
        STEPS_QUICK,
        &SpecOpts {
            gated,
            ..SpecOpts::default()
        },
    );
    let (code, v) = w.deploy(&v1, &[]);
    assert_eq!(code, 0, "{v}\n{}", w.logs());
    match state {
        PState::WaitingForApproval => {
            let spec = w.pspec(
                V2,
                services,
                STEPS_QUICK,
                &SpecOpts {
                    approvals: true,
                    ..SpecOpts::default()
                },
            );
            let (code, v) = w.deploy(&spec, &["--no-wait"]);
            assert_eq!(code, 3, "{v}");
            (v["run"].as_str().unwrap().to_owned(), None)
        }
        PState::CanaryLive | PState::PausedByRequest => {
            let spec = w.pspec(V2, services, STEPS_MANUAL, &SpecOpts::default());
            let mut child = w.deploy_bg(&spec, "deploy-2");
            let run = w.wait_journal(V2, "pause until resumed");
            if state == PState::PausedByRequest {
                let (code, out, err) = w.run(&["pause", &run]);
                assert_eq!(code, 0, "{out}\n{err}");
                assert_eq!(exit_within(&mut child, Duration::from_secs(30), w), 5);
                return (run, None);
            }
            (run, Some(child))
        }
        PState::CanaryCrashed => {
            let spec = w.pspec(V2, services, STEPS_MANUAL, &SpecOpts::default());
            let child = w.deploy_bg(&spec, "deploy-2");
            let run = w.wait_journal(V2, "pause until resumed");
            let candidates: Vec<u32> = w
                .instances()
                .iter()
                .filter(|m| m.argv.iter().any(|a| a == V2))
                .map(|m| m.pid)
                .collect();
            assert_eq!(candidates.len(), 2, "{:?}", w.instances());
            for pid in candidates {
                Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .unwrap();
            }
            (run, Some(child))
        }
        PState::CanaryFailing | PState::PausedOnFailure => {
            let users = w.users("api");
            let spec = w.pspec(
                V2,
                services,
                STEPS_ANALYSIS,
                &SpecOpts {
                    bad: true,
                    pause_on_failure: state == PState::PausedOnFailure,
                    ..SpecOpts::default()
                },
            );
            let (code, v) = w.deploy(&spec, &[]);
            let _ = w.rt.block_on(users.stop());
            let want = if state == PState::CanaryFailing { 4 } else { 5 };
            assert_eq!(code, want, "{v}\n{}", w.logs());
            (v["run"].as_str().unwrap().to_owned(), None)
        }
        PState::PausedInconclusive => {
            let spec = w.pspec(V2, services, STEPS_ANALYSIS, &SpecOpts::default());
            let (code, v) = w.deploy(&spec, &[]);
            assert_eq!(code, 5, "{v}\n{}", w.logs());
            assert!(
                v["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("insufficient data"),
                "{v}"
            );
            (v["run"].as_str().unwrap().to_owned(), None)
        }
        PState::PartiallyPromoted => {
            // Deterministic on any load: both canaries hold at a manual pause; api is
            // promoted by hand, then web's canary reaches its own pause and the run is
            // paused there (the driver exits 5) — api on 2.0.0, web's canary beside its
            // stable. No analysis verdict depends on how many samples a starved machine
            // gets.
            let spec = w.pspec(V2, services, STEPS_MANUAL, &SpecOpts::default());
            let mut child = w.deploy_bg(&spec, "deploy-2");
            let run = w.wait_journal(V2, "pause until resumed");
            let (code, out, err) = w.run(&["promote", &run]);
            assert_eq!(code, 0, "{out}\n{err}");
            w.wait_journal_count(&run, "pause until resumed", 2);
            let (code, out, err) = w.run(&["pause", &run]);
            assert_eq!(code, 0, "{out}\n{err}");
            assert_eq!(exit_within(&mut child, Duration::from_secs(30), w), 5);
            // The setup is the state it claims: api promoted, web not.
            let status = w.status(&run);
            assert_eq!(status["services"]["api"]["version"], V2, "{status:#}");
            assert_eq!(status["services"]["web"]["version"], V1, "{status:#}");
            (run, None)
        }
        PState::Succeeded => {
            let spec = w.pspec(V2, services, STEPS_QUICK, &SpecOpts::default());
            let (code, v) = w.deploy(&spec, &[]);
            assert_eq!(code, 0, "{v}\n{}", w.logs());
            (v["run"].as_str().unwrap().to_owned(), None)
        }
        PState::ManualRollbackKilled => {
            let spec = w.pspec(
                V2,
                services,
                STEPS_QUICK,
                &SpecOpts {
                    gated: true,
                    ..SpecOpts::default()
                },
            );
            let (code, v) = w.deploy(&spec, &[]);
            assert_eq!(code, 0, "{v}\n{}", w.logs());
            let run = v["run"].as_str().unwrap().to_owned();
            // web 1.0.0 cannot become ready while its gate is shut: the rollback hangs
            // in the undo of web (the last deployed, first undone) and is killed there.
            w.gate("web", V1, false);
            let mut rb = w.spawn(&["rollback", &run, "--reason", "matrix"], "rollback-1");
            w.wait_journal(V2, "\"undo_started\"");
            kill(&mut rb);
            w.gate("web", V1, true);
            (run, None)
        }
        PState::AutoRollbackKilled => {
            // api's canary (no analysis) is promoted; web's 2.0.0 cannot start (an unknown
            // flag), so the run rolls back by itself; api 1.0.0's relaunch waits at its
            // shut readiness gate and the driver is killed there. Nothing here waits for
            // an analysis verdict, so the state is the same on any load.
            let spec = w.pspec_mixed_broken_web(V2);
            w.gate("api", V1, false);
            let mut child = w.deploy_bg(&spec, "deploy-2");
            let run = w.wait_journal(V2, "\"undo_started\"");
            kill(&mut child);
            w.gate("api", V1, true);
            (run, None)
        }
    }
}

impl World {
    /// api good, web unable to start at `version` (its command has a flag demo-app
    /// refuses), gated readiness, quick canary steps.
    fn pspec_mixed_broken_web(&self, version: &str) -> PathBuf {
        let good = self.pspec(
            version,
            &["api", "web"],
            STEPS_QUICK,
            &SpecOpts {
                gated: true,
                tag: "-mixed",
                ..SpecOpts::default()
            },
        );
        let text = std::fs::read_to_string(&good).unwrap();
        // The second run command (web's) fails at start.
        let needle = format!("--version {version} {}\"", flags(version));
        let at = text.rfind(&needle).unwrap();
        let text = format!(
            "{}--version {version} {} --no-such-flag\"{}",
            &text[..at],
            flags(version),
            &text[at + needle.len()..]
        );
        std::fs::write(&good, text).unwrap();
        good
    }
}

#[expect(clippy::print_stderr, reason = "MATRIX_DEBUG shows the run's journal")]
fn process_case(c: &PCase) {
    let w = World::new();
    let (run, mut driver) = process_state(&w, c.state);
    let (code, out, err) = match c.action {
        PAction::Auto => (4, String::new(), String::new()),
        PAction::Rollback | PAction::RollbackThenRedeployStable => w.run(&[
            "rollback",
            &run,
            "--reason",
            "matrix case",
            "--output",
            "json",
        ]),
        PAction::Abort => w.run(&["abort", &run, "--output", "json"]),
        PAction::Resume => w.run(&["resume", &run, "--output", "json"]),
    };
    assert_eq!(
        code,
        c.exit,
        "{:?} × {:?}: {out}\n{err}\n{}",
        c.state,
        c.action,
        w.logs()
    );
    if let Some(mut d) = driver.take() {
        let want = if c.end == "aborted" { 6 } else { 4 };
        assert_eq!(
            exit_within(&mut d, Duration::from_secs(60), &w),
            want,
            "{}",
            w.logs()
        );
    }
    if std::env::var("MATRIX_DEBUG").is_ok() {
        eprintln!("{out}\n{err}\n{}", w.run(&["logs", &run]).1);
    }
    let status = w.status(&run);
    assert_eq!(
        status["run"]["state"], c.end,
        "{:?} × {:?}: {:#}",
        c.state, c.action, status["run"]
    );
    w.assert_process_invariant(&run, c.expect);
    w.assert_lease_free();
    if c.action == PAction::RollbackThenRedeployStable {
        // The version serving again is deployed again: nothing to do, nothing stopped.
        let before: Vec<u32> = w.instances().iter().map(|m| m.pid).collect();
        let spec = w.path().join("release-1.0.0.yaml");
        let (code, v) = w.deploy(&spec, &[]);
        assert_eq!(code, 0, "{v}\n{}", w.logs());
        let new_run = v["run"].as_str().unwrap().to_owned();
        w.assert_process_invariant(&new_run, c.expect);
        let mut after: Vec<u32> = w.instances().iter().map(|m| m.pid).collect();
        let mut before = before;
        before.sort_unstable();
        after.sort_unstable();
        assert_eq!(before, after, "the serving instances were kept");
    }
    let (code, out, _) = w.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}

/// Runs `f` over the cases, `MATRIX_PARALLEL` at a time; every failure is reported.
#[expect(
    clippy::print_stderr,
    reason = "how long each case took, for the suite's budget"
)]
fn table<C: Send + Sync + 'static>(
    cases: Vec<C>,
    name: impl Fn(&C) -> String + Send + Sync + 'static,
    f: fn(&C),
) {
    let started = Instant::now();
    let parallel: usize = std::env::var("MATRIX_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // `MATRIX_ONLY=text` runs the cases whose name contains it (to debug one).
    let only = std::env::var("MATRIX_ONLY").unwrap_or_default();
    let queue = Arc::new(Mutex::new(
        cases
            .into_iter()
            .filter(|c| name(c).contains(&only))
            .collect::<VecDeque<C>>(),
    ));
    let name = Arc::new(name);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (queue, failures, name) = (queue.clone(), failures.clone(), name.clone());
            std::thread::spawn(move || {
                loop {
                    let Some(c) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let t = Instant::now();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&c)));
                    eprintln!("case {} took {:.1}s", name(&c), t.elapsed().as_secs_f64());
                    if let Err(e) = r {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{}: {msg}", name(&c)));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    eprintln!("table took {:.1}s", started.elapsed().as_secs_f64());
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

const API_V1: &[(&str, &str)] = &[("api", V1)];
const BOTH_V1: &[(&str, &str)] = &[("api", V1), ("web", V1)];

#[test]
fn process_target_rollback_invariant_from_every_state() {
    use PAction::*;
    use PState::*;
    let c = |state, action, exit, end, expect| PCase {
        state,
        action,
        exit,
        end,
        expect,
    };
    let cases = vec![
        c(WaitingForApproval, Rollback, 0, "aborted", API_V1),
        c(WaitingForApproval, Abort, 0, "aborted", API_V1),
        c(CanaryLive, Rollback, 0, "rolled_back", API_V1),
        c(CanaryLive, Abort, 0, "aborted", API_V1),
        c(CanaryFailing, Auto, 4, "rolled_back", API_V1),
        // Nothing judges this canary (a manual pause, no analysis): its crash alone
        // must roll it back, not wait for a promote that would send users to nothing.
        c(CanaryCrashed, Auto, 4, "rolled_back", API_V1),
        c(PausedByRequest, Rollback, 0, "rolled_back", API_V1),
        c(PausedByRequest, Abort, 0, "aborted", API_V1),
        c(
            PausedInconclusive,
            RollbackThenRedeployStable,
            0,
            "rolled_back",
            API_V1,
        ),
        c(PausedInconclusive, Abort, 0, "aborted", API_V1),
        c(PausedOnFailure, Rollback, 0, "rolled_back", API_V1),
        c(PausedOnFailure, Abort, 0, "aborted", API_V1),
        c(PartiallyPromoted, Rollback, 0, "rolled_back", BOTH_V1),
        // An abort stops the release where it is: api keeps 2.0.0, web's canary leaves.
        c(
            PartiallyPromoted,
            Abort,
            0,
            "aborted",
            &[("api", V2), ("web", V1)],
        ),
        c(Succeeded, Rollback, 0, "rolled_back", BOTH_V1),
        // A finished run cannot be aborted (exit 2); nothing changes.
        c(
            Succeeded,
            Abort,
            2,
            "succeeded",
            &[("api", V2), ("web", V2)],
        ),
        c(ManualRollbackKilled, Rollback, 0, "rolled_back", BOTH_V1),
        c(AutoRollbackKilled, Resume, 4, "rolled_back", BOTH_V1),
    ];
    table(
        cases,
        |c| format!("process {:?} × {:?}", c.state, c.action),
        process_case,
    );
}

// ---------------------------------------------------------------------------------------
// The exec target: the release's own scripts start and stop demo-app, and record how each
// version was launched so that its undo relaunches the one it replaced exactly.

/// The install script of the test's releases: what an operator might write. It keeps the
/// launch line of what serves (for this run's undo), starts the new version on its own
/// port, waits for it, then stops the old one.
const DEPLOY_SH: &str = r#"#!/bin/sh
set -eu
svc=$1; ver=$2; port=$3; flags=$4; flavor=$5
d=$(dirname "$0")/state; mkdir -p "$d"
if [ -f "$d/$svc.launch" ]; then cp "$d/$svc.launch" "$d/$svc.prev.$SLIPWAY_RUN_ID"; else : > "$d/$svc.prev.$SLIPWAY_RUN_ID"; fi
start() {
  env -i PATH="$PATH" FLAVOR="$5" SERVICE="$1" setsid demo-app --port "$3" --version "$2" $4 > "$d/$1-$2.log" 2>&1 < /dev/null &
  echo $! > "$d/$1.pid.new"
  i=0; until [ "$(cat "$d/$1-$2.log" 2>/dev/null | head -c1)" != "" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
  grep -q "^listening on" "$d/$1-$2.log" || { echo "$1 $2 did not start:" >&2; cat "$d/$1-$2.log" >&2; exit 1; }
}
stop_current() { [ -f "$d/$1.pid" ] && kill "$(cat "$d/$1.pid")" 2>/dev/null; rm -f "$d/$1.pid"; }
start "$svc" "$ver" "$port" "$flags" "$flavor"
stop_current "$svc"
mv "$d/$svc.pid.new" "$d/$svc.pid"
printf '%s|%s|%s|%s\n' "$ver" "$port" "$flags" "$flavor" > "$d/$svc.launch"
"#;

/// Its undo: relaunch what the run replaced, exactly as recorded, or stop the service when
/// nothing served before. Waits for the gate file when the test holds it shut.
const UNDO_SH: &str = r#"#!/bin/sh
set -eu
svc=$1
d=$(dirname "$0")/state
gate=$(dirname "$0")/undo-gate
while [ -e "$gate" ]; do sleep 0.05; done
prev="$d/$svc.prev.$SLIPWAY_RUN_ID"
stop_current() { [ -f "$d/$1.pid" ] && kill "$(cat "$d/$1.pid")" 2>/dev/null; rm -f "$d/$1.pid"; }
if [ -s "$prev" ]; then
  IFS='|' read ver port flags flavor < "$prev"
  stop_current "$svc"
  env -i PATH="$PATH" FLAVOR="$flavor" SERVICE="$svc" setsid demo-app --port "$port" --version "$ver" $flags > "$d/$svc-$ver.log" 2>&1 < /dev/null &
  echo $! > "$d/$svc.pid"
  cp "$prev" "$d/$svc.launch"
  i=0; until [ "$(cat "$d/$svc-$ver.log" 2>/dev/null | head -c1)" != "" ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
  grep -q "^listening on" "$d/$svc-$ver.log" || { echo "$svc $ver did not start:" >&2; cat "$d/$svc-$ver.log" >&2; exit 1; }
else
  stop_current "$svc"; rm -f "$d/$svc.launch"
fi
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EState {
    WaitingForApproval,
    /// The driver runs api's `hold` step (it waits for a file).
    StepInFlight,
    /// Paused by request after api, before web.
    Paused,
    /// web's install fails: the run rolls back by itself.
    StepFails,
    Succeeded,
    /// A succeeded run's `slipway rollback` killed while api's undo runs.
    RollbackKilled,
}

struct ECase {
    state: EState,
    action: PAction,
    exit: i32,
    end: &'static str,
    expect: &'static [(&'static str, &'static str)],
}

impl World {
    /// The exec release at `version`: api (install, hold) and web depending on it.
    fn espec(
        &self,
        version: &str,
        ports: &BTreeMap<(String, String), u16>,
        web_fails: bool,
        approvals: bool,
    ) -> PathBuf {
        let d = self.path().display().to_string();
        let install = |svc: &str| {
            format!(
                "sh {d}/deploy.sh {svc} {version} {} '{}' {}",
                ports[&(svc.to_owned(), version.to_owned())],
                flags(version),
                flavor(version)
            )
        };
        let web_run = if web_fails {
            "false".to_owned()
        } else {
            install("web")
        };
        let approvals = if approvals {
            "\n    approvals: { required: 1, four_eyes: false }"
        } else {
            ""
        };
        let text = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    steps:
      - {{ name: install, run: \"{}\", undo: \"sh {d}/undo.sh api\" }}
      - {{ name: hold, run: \"while [ -e {d}/hold ]; do sleep 0.05; done\", undo: \"true\" }}
  web:
    depends_on: [api]
    steps:
      - {{ name: install, run: \"{web_run}\", undo: \"sh {d}/undo.sh web\" }}
environments:
  live:
    target: {{ exec: {{}} }}{approvals}
    deployed: {{ api: {V1}, web: {V1} }}
",
            install("api"),
        );
        let p = self.path().join(format!(
            "exec-{version}{}.yaml",
            if web_fails { "-bad" } else { "" }
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn assert_exec_invariant(&self, run: &str, expect: &[(&str, &str)]) {
        let status = self.status(run);
        for (service, version) in expect {
            assert_runs_exactly(self, service, version, 1);
            assert_eq!(
                status["services"][service]["version"], *version,
                "status of {run} for {service}: {:#}",
                status["services"]
            );
        }
    }
}

fn exec_case(c: &ECase) {
    let w = World::new();
    let d = w.path();
    std::fs::write(d.join("deploy.sh"), DEPLOY_SH).unwrap();
    std::fs::write(d.join("undo.sh"), UNDO_SH).unwrap();
    let mut ports = BTreeMap::new();
    for s in ["api", "web"] {
        for v in [V1, V2] {
            // Written into the release's scripts, so it cannot be re-picked on a clash: a
            // port outside the ephemeral range no connection of another test can take.
            ports.insert(
                (s.to_owned(), v.to_owned()),
                slipway_testkit::ports::fixed_port(),
            );
        }
    }
    let v1 = w.espec(V1, &ports, false, false);
    let (code, v) = w.deploy(&v1, &[]);
    assert_eq!(code, 0, "{v}\n{}", w.logs());
    let mut driver = None;
    let run = match c.state {
        EState::WaitingForApproval => {
            let (code, v) = w.deploy(&w.espec(V2, &ports, false, true), &["--no-wait"]);
            assert_eq!(code, 3, "{v}");
            v["run"].as_str().unwrap().to_owned()
        }
        EState::StepInFlight | EState::Paused => {
            std::fs::write(d.join("hold"), "").unwrap();
            let mut child = w.deploy_bg(&w.espec(V2, &ports, false, false), "deploy-2");
            let run = w.wait_journal(V2, "api/hold");
            if c.state == EState::Paused {
                let (code, out, err) = w.run(&["pause", &run]);
                assert_eq!(code, 0, "{out}\n{err}");
                std::fs::remove_file(d.join("hold")).unwrap();
                assert_eq!(exit_within(&mut child, Duration::from_secs(30), &w), 5);
            } else {
                driver = Some(child);
            }
            run
        }
        EState::StepFails => {
            let (code, v) = w.deploy(&w.espec(V2, &ports, true, false), &[]);
            assert_eq!(code, 4, "{v}\n{}", w.logs());
            v["run"].as_str().unwrap().to_owned()
        }
        EState::Succeeded | EState::RollbackKilled => {
            let (code, v) = w.deploy(&w.espec(V2, &ports, false, false), &[]);
            assert_eq!(code, 0, "{v}\n{}", w.logs());
            let run = v["run"].as_str().unwrap().to_owned();
            if c.state == EState::RollbackKilled {
                std::fs::write(d.join("undo-gate"), "").unwrap();
                let mut rb = w.spawn(&["rollback", &run, "--reason", "matrix"], "rollback-1");
                w.wait_journal(V2, "\"undo_started\"");
                kill(&mut rb);
                std::fs::remove_file(d.join("undo-gate")).unwrap();
            }
            run
        }
    };
    let act = |w: &World| match c.action {
        PAction::Auto => (4, String::new(), String::new()),
        PAction::Rollback | PAction::RollbackThenRedeployStable => w.run(&[
            "rollback",
            &run,
            "--reason",
            "matrix case",
            "--output",
            "json",
        ]),
        PAction::Abort => w.run(&["abort", &run, "--output", "json"]),
        PAction::Resume => w.run(&["resume", &run, "--output", "json"]),
    };
    let (code, out, err) = if let Some(mut child) = driver.take() {
        // The request reaches a live driver; its step in flight finishes first.
        let ask = std::thread::scope(|s| {
            let h = s.spawn(|| act(&w));
            // Let the request land, then let the step finish.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !w.journal(&run).contains("control_requested") {
                assert!(Instant::now() < deadline, "no request journaled");
                std::thread::sleep(Duration::from_millis(50));
            }
            std::fs::remove_file(d.join("hold")).unwrap();
            h.join().unwrap()
        });
        let want = if c.end == "aborted" { 6 } else { 4 };
        assert_eq!(
            exit_within(&mut child, Duration::from_secs(60), &w),
            want,
            "{}",
            w.logs()
        );
        ask
    } else {
        act(&w)
    };
    assert_eq!(
        code,
        c.exit,
        "{:?} × {:?}: {out}\n{err}\n{}",
        c.state,
        c.action,
        w.logs()
    );
    let status = w.status(&run);
    assert_eq!(
        status["run"]["state"], c.end,
        "{:?} × {:?}: {:#}",
        c.state, c.action, status["run"]
    );
    w.assert_exec_invariant(&run, c.expect);
    w.assert_lease_free();
    let journal = w.journal(&run);
    for service in ["api", "web"] {
        // Exactly once: no undo of a step ran twice.
        let undone = journal
            .matches(&format!(
                "\"undo_succeeded\",\"step\":\"{service}/install\""
            ))
            .count();
        assert!(
            undone <= 1,
            "{service}/install undone {undone} times:\n{journal}"
        );
    }
}

#[test]
fn exec_target_rollback_invariant_from_every_state() {
    use EState::*;
    use PAction::*;
    let c = |state, action, exit, end, expect| ECase {
        state,
        action,
        exit,
        end,
        expect,
    };
    let cases = vec![
        c(WaitingForApproval, Rollback, 0, "aborted", BOTH_V1),
        c(WaitingForApproval, Abort, 0, "aborted", BOTH_V1),
        c(StepInFlight, Rollback, 0, "rolled_back", BOTH_V1),
        c(
            StepInFlight,
            Abort,
            0,
            "aborted",
            &[("api", V2), ("web", V1)],
        ),
        c(Paused, Rollback, 0, "rolled_back", BOTH_V1),
        c(Paused, Abort, 0, "aborted", &[("api", V2), ("web", V1)]),
        c(StepFails, Auto, 4, "rolled_back", BOTH_V1),
        c(Succeeded, Rollback, 0, "rolled_back", BOTH_V1),
        c(RollbackKilled, Rollback, 0, "rolled_back", BOTH_V1),
    ];
    table(
        cases,
        |c| format!("exec {:?} × {:?}", c.state, c.action),
        exec_case,
    );
}

// ---------------------------------------------------------------------------------------
// The shipped example.

/// Copy the directory `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A live instance's launch as the invariant compares it: its argv with the port masked
/// (each instance gets its own) and its environment.
type Launch = (Vec<String>, BTreeMap<String, String>);

fn launch(m: &crate::Marked) -> Launch {
    let mut argv = m.argv[1..].to_vec();
    if let Some(i) = argv.iter().position(|a| a == "--port") {
        argv[i + 1] = "PORT".into();
    }
    let mut env = m.environ.clone();
    env.remove("PORT");
    (argv, env)
}

/// `examples/shop` as shipped — both its services hard-code the version in their
/// command — deployed to staging at 2.3.0, then at 2.4.0 (its `release.yaml`, staging's
/// readiness checks made advisory) where db migrates and api is promoted before web,
/// whose 2.4.0 build cannot start: the run rolls back web, then api (relaunched from
/// 2.3.0's own launch record, never 2.4.0's command with a version put in), then undoes
/// db's V3. Afterwards every instance is exactly the one 2.3.0's run launched, through
/// the proxies too, `status` says 2.3.0 for each service, the migration is undone and
/// the lease is free.
#[test]
fn examples_shop_rolls_back_cleanly_after_a_promoted_service_and_a_failing_later_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new();
    let shop = w.path().join("shop");
    copy_dir(&crate::repo().join("examples/shop"), &shop);
    // Where staging's SQLite database lives; the default store (`.slipway/` beside the
    // spec) would have made it, this test's store is elsewhere.
    std::fs::create_dir_all(shop.join(".slipway")).unwrap();
    // web's 2.4.0 build is broken: it exits before it listens. Every other instance is
    // the real demo-app.
    let shim = w.path().join("bin/demo-app");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nif [ \"$SLIPWAY_SERVICE\" = web ] && [ \"$SLIPWAY_VERSION\" = 2.4.0 ]; then\n  echo 'demo-app: web 2.4.0: missing asset bundle' >&2; exit 3\nfi\nexec '{}' demo-app \"$@\"\n",
            assert_cmd::cargo::cargo_bin("slipway").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();

    // 2.3.0: the same release one version back — commands, requirement and migrations
    // (without V3) as they were; nothing declared as deployed, Slipway deploys it.
    // One line added to staging: the readiness gate's reach and capacity checks only
    // warn. It is not this test's subject (see `readiness_cli`), and here it would refuse
    // both deploys before their first wave: nothing listens on the database port the
    // example names (127.0.0.1:5432), and a loaded test machine has no free core.
    let shipped = std::fs::read_to_string(shop.join("release.yaml"))
        .unwrap()
        .replacen(
            "  staging:\n    target: { process: {} }\n",
            "  staging:\n    target: { process: {} }\n    advisory_checks: [reach, capacity]\n",
            1,
        );
    assert!(shipped.contains("advisory_checks"), "{shipped}");
    assert!(shipped.contains("--version 2.4.0"), "{shipped}");
    std::fs::write(shop.join("release.yaml"), &shipped).unwrap();
    let old: String = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with("deployed:"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("2.4.0", "2.3.0")
        .replace("\">=2.4\"", "\">=2.3\"")
        .replace("./migrations", "./migrations-2.3.0");
    std::fs::create_dir_all(shop.join("migrations-2.3.0")).unwrap();
    for f in ["V2__create_orders.sql", "U2__create_orders.sql"] {
        std::fs::copy(
            shop.join("migrations").join(f),
            shop.join("migrations-2.3.0").join(f),
        )
        .unwrap();
    }
    let old_spec = shop.join("release-2.3.0.yaml");
    std::fs::write(&old_spec, old).unwrap();
    let deploy = |spec: &Path| {
        let s = spec.display().to_string();
        let (code, out, err) = w.run(&["deploy", "--env", "staging", "--output", "json", "-f", &s]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{e}: stdout {out}\nstderr {err}\n{}", w.logs()));
        (code, v, err)
    };
    let (code, v, err) = deploy(&old_spec);
    assert_eq!(code, 0, "{v}\n{err}");
    let by_service = |w: &World| {
        let mut out: BTreeMap<String, Vec<Launch>> = BTreeMap::new();
        for m in w.instances() {
            let service = m
                .environ
                .get("SLIPWAY_SERVICE")
                .cloned()
                .unwrap_or_default();
            out.entry(service).or_default().push(launch(&m));
        }
        for l in out.values_mut() {
            l.sort();
        }
        out
    };
    let before = by_service(&w);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["api", "web"],
        "{before:#?}"
    );
    for (service, launches) in &before {
        assert_eq!(launches.len(), 2, "{service}: {launches:#?}");
        assert!(
            launches
                .iter()
                .all(|(argv, _)| argv.join(" ") == "demo-app --port PORT --version 2.3.0"),
            "{service}: {launches:#?}"
        );
    }
    let db = shop.join(".slipway/staging.db");
    let index_exists = || {
        let o = Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT count(*) FROM sqlite_master WHERE name = 'orders_customer_idx';")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).trim() == "1"
    };
    assert!(!index_exists(), "2.3.0 has no V3");

    // 2.4.0, the shipped release: db and api promoted, web fails, the release rolls back.
    let (code, v, err) = deploy(&shop.join("release.yaml"));
    assert_eq!(code, 4, "{v}\n{err}\n{}", w.logs());
    let run = v["run"].as_str().unwrap().to_owned();
    let journal = w.journal(&run);
    // The journal (JSON lines): db migrated and api promoted, then web failed; the
    // rollback relaunched api from 2.3.0's record, then undid db — reverse dependency
    // order.
    let events: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect();
    let at = |kind: &str, step: &str| {
        events
            .iter()
            .position(|e| e["event"] == kind && e["step"] == step)
            .unwrap_or_else(|| panic!("no {kind} of {step}: {journal}"))
    };
    let promoted = events
        .iter()
        .position(|e| e["detail"]["event"] == "promoted" && e["step"] == "api/deploy")
        .unwrap_or_else(|| panic!("api was never promoted: {journal}"));
    assert!(at("step_succeeded", "db/migrate") < promoted, "{journal}");
    assert!(promoted < at("step_failed", "web/deploy"), "{journal}");
    assert!(
        at("step_failed", "web/deploy") < at("undo_succeeded", "api/deploy")
            && at("undo_succeeded", "api/deploy") < at("undo_succeeded", "db/migrate"),
        "{journal}"
    );
    let relaunched = events
        .iter()
        .find(|e| e["detail"]["event"] == "relaunched")
        .unwrap_or_else(|| panic!("api was not relaunched: {journal}"));
    assert_eq!(
        relaunched["detail"]["launch"]["command"], "demo-app --port {{ port }} --version 2.3.0",
        "{journal}"
    );

    // Exactly what 2.3.0's run launched: same command lines and environments, answering
    // 2.3.0 directly and through the proxies; nothing of 2.4.0 runs.
    let after = by_service(&w);
    assert_eq!(after, before, "after the rollback of 2.4.0\n{}", w.logs());
    for m in w.instances() {
        let port_at = m.argv.iter().position(|a| a == "--port").unwrap() + 1;
        let addr: SocketAddr = format!("127.0.0.1:{}", m.argv[port_at]).parse().unwrap();
        assert_eq!(version_at(addr).as_deref(), Ok("2.3.0"), "{:?}", m.argv);
    }
    for service in ["api", "web"] {
        let proxy = slipway_providers::remote::read_state(
            &w.path()
                .join(format!("process/staging/proxies/{service}.json")),
        )
        .expect("the proxy recorded itself")
        .traffic;
        for _ in 0..10 {
            assert_eq!(version_at(proxy).as_deref(), Ok("2.3.0"), "{service} proxy");
        }
    }
    let status = w.status(&run);
    assert_eq!(status["run"]["state"], "rolled_back", "{:#}", status["run"]);
    for service in ["db", "api", "web"] {
        assert_eq!(
            status["services"][service]["version"], "2.3.0",
            "status of {run} for {service}: {:#}",
            status["services"]
        );
    }
    assert!(!index_exists(), "db's V3 was undone (U3)");
    w.assert_lease_free();
    let (code, out, _) = w.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}
