//! Canaries through the real `slipway` binary on the `process` target: real demo-app
//! instances (`slipway demo-app` behind a wrapper on PATH), a real proxy process per
//! service, real HTTP traffic through it from this test, and humans acting from other
//! `slipway` processes.
//!
//! Every process a test causes (slipway, proxies, instances) carries a marker in its
//! environment; the [`Env`] guard finds them in /proc and kills them when the test ends,
//! whatever happened.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway_providers::traffic::Traffic;

/// One test's world: its directory (spec, store, process state), PATH with demo-app.
/// Also used by `metrics_cli` (canaries judged by Prometheus and HTTP providers).
pub(crate) struct Env {
    dir: tempfile::TempDir,
    mark: String,
    pub(crate) rt: tokio::runtime::Runtime,
    /// A PostgreSQL store instead of `<dir>/slipway.db`.
    postgres: Option<String>,
}

const CANARY_STEPS: &str = "
      canary:
        steps:
          - set_weight: 20
          - analysis: { template: golden, duration: ANALYSIS }
          - set_weight: 100";

impl Env {
    pub(crate) fn new() -> Self {
        let dir = crate::demo_app_dir();
        let mark = dir.path().display().to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self {
            dir,
            mark,
            rt,
            postgres: None,
        }
    }

    /// An [`Env`] whose store is a fresh PostgreSQL database: run files then live in
    /// `.slipway/` of the working directory of each command (the test's directory).
    fn on_postgres() -> Self {
        let mut env = Self::new();
        env.postgres = Some(crate::postgres_store_cli::pg::pg().new_db("canary"));
        env
    }

    /// Where this machine's run files (process state, proxies) live.
    fn state_dir(&self) -> PathBuf {
        match self.postgres {
            Some(_) => self.path().join(".slipway"),
            None => self.path().to_owned(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn store(&self) -> String {
        match &self.postgres {
            Some(url) => url.clone(),
            None => format!("sqlite://{}/slipway.db", self.path().display()),
        }
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
            ("SLIPWAY_STORE".into(), self.store()),
            ("SLIPWAY_CANARY_TEST".into(), self.mark.clone()),
        ]
    }

    /// `slipway ARGS` to completion: (exit code, stdout, stderr).
    pub(crate) fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[])
    }

    /// [`Self::run`] with more environment variables (e.g. a secret a spec refers to).
    pub(crate) fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
        self.run_in(self.path(), args, extra)
    }

    /// [`Self::run_with`] from the working directory `cwd`.
    fn run_in(&self, cwd: &Path, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
        let mut c = crate::slipway();
        c.current_dir(cwd)
            .envs(self.envs())
            .envs(extra.iter().copied())
            .args(args);
        c.timeout(Duration::from_secs(60));
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A release of `api` at `version` whose instances run demo-app with `args`.
    fn spec(&self, version: &str, args: &str, analysis: &str) -> PathBuf {
        self.spec_steps(version, args, &CANARY_STEPS.replace("ANALYSIS", analysis))
    }

    /// [`Self::spec`] with the canary strategy's YAML given.
    fn spec_steps(&self, version: &str, args: &str, steps: &str) -> PathBuf {
        let text = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}} {args}\", replicas: 2 }}
    readiness: {{ http: /ready, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    strategy:{steps}
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 3
    metrics:
      - {{ name: error-rate, max: 0.05 }}
      - {{ name: p99-latency, max: 200ms }}
    on_failure: rollback
"
        );
        let p = self.path().join(format!("release-{version}.yaml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `slipway deploy` of a spec: (exit code, JSON outcome, stderr).
    pub(crate) fn deploy(&self, spec: &Path) -> (i32, serde_json::Value, String) {
        self.deploy_with(spec, &[])
    }

    /// [`Self::deploy`] with more environment variables.
    pub(crate) fn deploy_with(
        &self,
        spec: &Path,
        extra: &[(&str, &str)],
    ) -> (i32, serde_json::Value, String) {
        let (code, stdout, stderr) = self.run_with(
            &[
                "deploy",
                "--env",
                "live",
                "--output",
                "json",
                "-f",
                &spec.display().to_string(),
            ],
            extra,
        );
        let v = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: stdout {stdout}\nstderr {stderr}"));
        (code, v, stderr)
    }

    /// The first release (nothing to canary against: a straight start), then users.
    pub(crate) fn baseline(&self) -> Traffic {
        self.baseline_with(4)
    }

    /// [`Self::baseline`] with `workers` concurrent users (each waits for its answer).
    fn baseline_with(&self, workers: u32) -> Traffic {
        let (code, v, err) = self.deploy(&self.spec("1.0.0", "", "2s"));
        assert_eq!(code, 0, "{v}\n{err}");
        let _g = self.rt.enter();
        Traffic::start(self.proxy().traffic, "/", 200, workers)
    }

    fn proxies_dir(&self) -> PathBuf {
        self.state_dir().join("process/live/proxies")
    }

    pub(crate) fn proxy(&self) -> slipway_providers::remote::ProxyState {
        slipway_providers::remote::read_state(&self.proxies_dir().join("api.json"))
            .expect("the api proxy recorded itself")
    }

    /// demo-app instances of this test now running, by version.
    pub(crate) fn instances(&self) -> BTreeMap<String, usize> {
        instances(&self.mark)
    }

    /// The version answering `GET /version` through the proxy, `n` times.
    pub(crate) fn versions_served(&self, n: usize) -> BTreeMap<String, usize> {
        let addr = self.proxy().traffic;
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            *seen.entry(get_version(addr)).or_insert(0) += 1;
        }
        seen
    }

    pub(crate) fn journal(&self, run: &str) -> String {
        self.run(&["logs", run, "--output", "json"]).1
    }

    /// `slipway deploy` of a spec in the background (its stderr in `<dir>/<name>.log`),
    /// killed and reaped when dropped: a test that fails leaves no driver behind.
    pub(crate) fn spawn_deploy(&self, spec: &Path, name: &str) -> slipway_testkit::Reaped {
        let log = std::fs::File::create(self.path().join(format!("{name}.log"))).unwrap();
        Command::new(assert_cmd::cargo::cargo_bin("slipway"))
            .current_dir(self.path())
            .envs(self.envs())
            .env("NO_COLOR", "1")
            .args(["deploy", "--env", "live", "-f"])
            .arg(spec)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
            .into()
    }

    /// What the background `slipway deploy`s wrote, for failure messages.
    fn background_logs(&self) -> String {
        logs_in(self.path())
    }

    /// The id of the run of `version`, once the journal of it contains `needle`.
    pub(crate) fn wait_journal(&self, version: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "the journal of {version} never showed {needle}; background logs:\n{}",
                self.background_logs()
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
}

/// Every `*.log` file in `dir` (none if it does not exist), for failure messages.
pub(crate) fn logs_in(dir: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            all.push_str(&format!(
                "--- {}\n{}\n",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            ));
        }
    }
    all
}

/// The exit code of a background `slipway`, within `limit`.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Killed by a signal: 128 + its number, as a shell reports it, so a failure says
            // which signal (137 SIGKILL, 143 SIGTERM, 134 SIGABRT).
            use std::os::unix::process::ExitStatusExt;
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        assert!(
            Instant::now() < deadline,
            "slipway did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// demo-app instances carrying `mark`, by version.
fn instances(mark: &str) -> BTreeMap<String, usize> {
    let mut by_version = BTreeMap::new();
    for (_, argv) in marked(mark) {
        if argv.get(1).map(String::as_str) == Some("demo-app")
            && let Some(i) = argv.iter().position(|a| a == "--version")
        {
            *by_version.entry(argv[i + 1].clone()).or_insert(0) += 1;
        }
    }
    by_version
}

/// Live processes carrying `mark` in their environment: pid and argv.
fn marked(mark: &str) -> Vec<(u32, Vec<String>)> {
    crate::marked("SLIPWAY_CANARY_TEST", mark)
        .into_iter()
        .map(|m| (m.pid, m.argv))
        .collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever the test did: nothing it caused outlives it.
        crate::kill_marked("SLIPWAY_CANARY_TEST", &self.mark);
    }
}

fn get_version(addr: SocketAddr) -> String {
    match try_version(addr) {
        Ok(v) => v,
        Err(text) => panic!("GET /version through {addr}: {text}"),
    }
}

/// `GET /version`: the body of a 200, else the whole answer as the error.
fn try_version(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
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

fn run_id(v: &serde_json::Value) -> String {
    v["run"].as_str().unwrap().to_owned()
}

#[test]
fn a_good_canary_is_promoted_through_slipway_deploy_and_rolled_back_by_hand() {
    let env = Env::new();
    let users = env.baseline();
    let proxy = env.proxy();
    assert_eq!(env.instances(), BTreeMap::from([("1.0.0".to_owned(), 2)]));

    let (code, v, err) = env.deploy(&env.spec("2.0.0", "", "2s"));
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(v["state"], "succeeded");
    // The canary really ran: weight moved, analysis judged real traffic.
    let journal = env.journal(&run_id(&v));
    assert!(journal.contains("\"weight\":20"), "{journal}");
    assert!(
        journal.contains("\"phase\":\"successful\"") || journal.contains("\"phase\":\"running\""),
        "{journal}"
    );
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    // The new version serves everything, the old one is gone, the proxy is the same one.
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("2.0.0".to_owned(), 20)])
    );
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    assert_eq!(
        env.proxy().pid,
        proxy.pid,
        "one proxy for the service's life"
    );
    // `slipway status` shows what serves now, and never the admin token.
    let (code, out, _) = env.run(&["status", &run_id(&v), "--output", "json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["traffic"]["api"]["proxy"]["weight"], 0, "{status:#}");
    assert_eq!(
        status["traffic"]["api"]["instances"]["2.0.0"], 2,
        "{status:#}"
    );
    assert_eq!(
        status["traffic"]["api"]["proxy"]["traffic"],
        proxy.traffic.to_string()
    );
    assert!(!out.contains(&proxy.token));

    // Changed our minds: `slipway rollback` brings back the version it replaced.
    let (code, out, err) = env.run(&[
        "rollback",
        &run_id(&v),
        "--reason",
        "checkout looks wrong",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(env.instances(), BTreeMap::from([("1.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );
    let stats = env.rt.block_on(users.stop());
    assert!(stats.sent > 200, "{stats:?}");
    assert_eq!(
        stats.server_errors + stats.failed,
        0,
        "users saw failures: {stats:?}"
    );
}

#[test]
fn a_canary_returning_errors_is_rolled_back_by_itself() {
    let env = Env::new();
    let users = env.baseline();
    let (code, v, err) = env.deploy(&env.spec("2.0.0", "--error-rate 1.0", "3s"));
    assert_eq!(code, 4, "{v}\n{err}");
    assert_eq!(v["state"], "rolled_back");
    let reason = v["reason"].as_str().unwrap_or_default();
    // The evidence is kept with the run: measurements, decisions, the canary's logs.
    let diag = env
        .path()
        .join("runs")
        .join(run_id(&v))
        .join("diagnostics/api-2.0.0");
    assert!(
        diag.join("measurements.json").exists(),
        "{}",
        diag.display()
    );
    assert!(diag.join("rollout-events.jsonl").exists());
    // Kept long after the run and possibly holding what a canary printed: private.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&diag), 0o700, "{}", diag.display());
        for f in std::fs::read_dir(&diag).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
    }
    assert!(
        diag.join("api-2.0.0-canary-0.log").exists(),
        "{:?}",
        std::fs::read_dir(&diag).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // A canary failing every request is cut off by the proxy's guard on its 4th failed
    // response, before the interval analysis has a window (slipway-proxy guard.rs).
    assert!(
        reason.contains("canary guard tripped: 4 errors in the last 4"),
        "{reason}\n{err}"
    );
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );
    assert_eq!(env.instances(), BTreeMap::from([("1.0.0".to_owned(), 2)]));
    let stats = env.rt.block_on(users.stop());
    assert!(stats.canary_errors < 100, "{stats:?}");
}

#[test]
fn a_slow_canary_is_rolled_back_by_itself() {
    let env = Env::new();
    // Enough concurrent users that slow answers still complete in every window.
    let users = env.baseline_with(32);
    let (code, v, err) = env.deploy(&env.spec("2.0.0", "--latency 400ms", "3s"));
    assert_eq!(code, 4, "{v}\n{err}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("p99-latency = ") && reason.contains("above max 200.0ms"),
        "{reason}\n{err}"
    );
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );
    assert_eq!(env.instances(), BTreeMap::from([("1.0.0".to_owned(), 2)]));
    let _ = env.rt.block_on(users.stop());
}

#[test]
fn too_little_traffic_pauses_then_promote_and_abort_act_from_other_processes() {
    let env = Env::new();
    let (code, v, err) = env.deploy(&env.spec("1.0.0", "", "2s"));
    assert_eq!(code, 0, "{v}\n{err}");

    // No users at all: the analysis has no data, which is never a pass.
    let (code, v, err) = env.deploy(&env.spec("2.0.0", "", "3s"));
    assert_eq!(code, 5, "{v}\n{err}");
    assert_eq!(v["state"], "paused");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("insufficient data"), "{reason}\n{err}");
    let run = run_id(&v);
    // Paused: both versions keep running, the canary at its weight.
    assert_eq!(
        env.instances(),
        BTreeMap::from([("1.0.0".to_owned(), 2), ("2.0.0".to_owned(), 2)])
    );
    let (code, out, err) = env.run(&["promote", &run, "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    let journal = env.journal(&run);
    assert!(journal.contains("intervention_received"), "{journal}");
    // The paused canary itself was promoted: no third set of instances.
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );

    // Again, and this time a human aborts the paused canary.
    let (code, v, err) = env.deploy(&env.spec("3.0.0", "", "3s"));
    assert_eq!(code, 5, "{v}\n{err}");
    let run = run_id(&v);
    let (code, out, err) = env.run(&["abort", &run, "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "aborted", "{v}");
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );
    let (code, out, _) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn slipway_killed_mid_canary_resumes_without_duplicate_instances() {
    let env = Env::new();
    let users = env.baseline();
    let proxy = env.proxy();
    let spec = env.spec("2.0.0", "", "4s");
    let mut child = env.spawn_deploy(&spec, "killed-deploy");
    // Wait until the canary takes traffic, as the journal says.
    let run = env.wait_journal("2.0.0", "\"weight\":20");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        env.instances(),
        BTreeMap::from([("1.0.0".to_owned(), 2), ("2.0.0".to_owned(), 2)]),
        "stable and canary outlive the killed slipway"
    );
    // One canary instance dies too while nobody watches.
    let victim = std::fs::read_dir(env.path().join("process/live/instances"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            (v["instance"]["version"] == "2.0.0").then(|| v["instance"]["pid"].as_u64().unwrap())
        })
        .next()
        .expect("a canary instance is recorded");
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.instances().get("2.0.0") != Some(&1) {
        assert!(Instant::now() < deadline, "{:?}", env.instances());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Resume while watching how many instances of each version run at any moment.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        let mark = env.mark.clone();
        std::thread::spawn(move || {
            let mut most: BTreeMap<String, usize> = BTreeMap::new();
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                for (v, n) in instances(&mark) {
                    let m = most.entry(v).or_insert(0);
                    *m = (*m).max(n);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let (code, out, err) = env.run(&["resume", &run]);
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let most = watcher.join().unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        most,
        BTreeMap::from([("1.0.0".to_owned(), 2), ("2.0.0".to_owned(), 2)]),
        "never more than the asked-for replicas of a version"
    );
    assert!(
        err.contains("proxy found"),
        "the same proxy is re-attached: {err}"
    );
    assert_eq!(env.proxy().pid, proxy.pid);
    let journal = env.journal(&run);
    assert!(journal.contains("step_observed"), "{journal}");
    assert!(
        journal.contains("; 1 dead (api-2.0.0-canary-"),
        "the dead instance is reported: {journal}"
    );
    assert!(journal.contains("canary_retired"), "{journal}");
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("2.0.0".to_owned(), 20)])
    );
    let (code, out, err) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let stats = env.rt.block_on(users.stop());
    assert!(stats.sent > 200, "{stats:?}");
    // The only failures users saw came from the canary instance that died.
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.server_errors, stats.canary_errors, "{stats:?}");
}

/// On a PostgreSQL store shared by several machines, each with its own working directory:
/// resume and promote typed in another directory (another machine's view: none of the
/// driver's run files) reach the live canary through the store's journal.
#[test]
fn on_a_shared_postgresql_store_resume_and_promote_reach_a_live_canary_from_another_directory() {
    let env = Env::on_postgres();
    let users = env.baseline();
    let spec = env.spec_steps(
        "2.0.0",
        "",
        "
      canary:
        steps:
          - set_weight: 20
          - pause: manual
          - set_weight: 50
          - pause: manual
          - set_weight: 100",
    );
    let mut deploy = env.spawn_deploy(&spec, "deploy-2.0.0");
    let run = env.wait_journal("2.0.0", "pause until resumed");
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = env.run_in(elsewhere.path(), &["resume", &run], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("resume sent to the driver"), "{out}");
    env.wait_journal("2.0.0", "\"weight\":50");
    let (code, out, err) = env.run_in(
        elsewhere.path(),
        &["promote", &run, "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let code = exit_within(&mut deploy, Duration::from_secs(20));
    assert_eq!(code, 0, "{}", env.background_logs());
    // Each request journaled (chained), taken once by the driver, acted on once.
    let journal = env.journal(&run);
    for (needle, n) in [
        ("\"intervention_requested\"", 2),
        ("\"outcome\":\"taken\"", 2),
        ("intervention_received", 2),
    ] {
        assert_eq!(journal.matches(needle).count(), n, "{needle}: {journal}");
    }
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    // Nothing of the run was written in the other directory.
    assert!(!elsewhere.path().join(".slipway/runs").join(&run).exists());
    let (code, out, _) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let stats = env.rt.block_on(users.stop());
    assert_eq!(
        stats.server_errors + stats.failed,
        0,
        "no user request failed: {stats:?}"
    );
}

#[test]
fn a_live_canary_hears_resume_promote_pause_and_abort_from_other_processes() {
    let env = Env::new();
    let users = env.baseline();
    // The proxy's record holds its admin token: its owner alone may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.proxies_dir().join("api.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A manual pause holds the canary at 20% until a human says so, from elsewhere.
    let spec = env.spec_steps(
        "2.0.0",
        "",
        "
      canary:
        steps:
          - set_weight: 20
          - pause: manual
          - set_weight: 50
          - pause: manual
          - set_weight: 100",
    );
    let mut deploy = env.spawn_deploy(&spec, "deploy-2.0.0");
    let run = env.wait_journal("2.0.0", "pause until resumed");
    let (code, out, err) = env.run(&["resume", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("resume sent to the driver"), "{out}");
    env.wait_journal("2.0.0", "\"weight\":50");
    let (code, out, err) = env.run(&["promote", &run, "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let code = exit_within(&mut deploy, Duration::from_secs(20));
    assert_eq!(code, 0, "{}", env.background_logs());
    let journal = env.journal(&run);
    assert_eq!(
        journal.matches("intervention_received").count(),
        2,
        "{journal}"
    );
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));

    // A long analysis, paused by a human mid-way: the deploy stops at once with exit 5
    // and both versions keep running; then an abort takes the canary out of service.
    let started = Instant::now();
    let mut deploy = env.spawn_deploy(&env.spec("3.0.0", "", "60s"), "deploy-3.0.0");
    let run = env.wait_journal("3.0.0", "\"weight\":20");
    let (code, out, err) = env.run(&["pause", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    let code = exit_within(&mut deploy, Duration::from_secs(20));
    assert_eq!(code, 5, "{}", env.background_logs());
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the pause was not heard mid-analysis"
    );
    assert_eq!(
        env.instances(),
        BTreeMap::from([("2.0.0".to_owned(), 2), ("3.0.0".to_owned(), 2)])
    );
    let (code, out, err) = env.run(&["abort", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("canary 3.0.0 taken out of service"), "{err}");
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );

    // An abort while the deploy drives the canary: the canary leaves at once and the run
    // ends aborted (the deploy exits 6); `abort` waits for it.
    let mut deploy = env.spawn_deploy(&env.spec("4.0.0", "", "60s"), "deploy-4.0.0");
    let run = env.wait_journal("4.0.0", "\"weight\":20");
    let (code, out, err) = env.run(&["abort", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("(now aborted)"), "{out}");
    let code = exit_within(&mut deploy, Duration::from_secs(20));
    assert_eq!(code, 6, "{}", env.background_logs());
    let journal = env.journal(&run);
    assert!(
        journal.contains("rollback requested by an operator"),
        "{journal}"
    );
    assert_eq!(env.instances(), BTreeMap::from([("2.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );
    let stats = env.rt.block_on(users.stop());
    assert_eq!(
        stats.server_errors + stats.failed,
        0,
        "users saw failures: {stats:?}"
    );
}

#[test]
fn a_dead_proxy_is_started_again_on_its_port_and_serves_what_runs() {
    let env = Env::new();
    let (code, v, err) = env.deploy(&env.spec("1.0.0", "", "2s"));
    assert_eq!(code, 0, "{v}\n{err}");
    let before = env.proxy();
    // The front door and the orchestrator both die mid-canary.
    let mut deploy = env.spawn_deploy(&env.spec("2.0.0", "", "60s"), "deploy-2.0.0");
    let run = env.wait_journal("2.0.0", "\"weight\":20");
    deploy.kill().unwrap();
    deploy.wait().unwrap();
    Command::new("kill")
        .args(["-KILL", &before.pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(before.traffic).is_ok() {
        assert!(Instant::now() < deadline, "the proxy did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A resume brings a new proxy up on the same address, in front of the stable version
    // at once, and continues the canary where it was (20 %).
    let mut resume = Command::new(assert_cmd::cargo::cargo_bin("slipway"));
    let log = std::fs::File::create(env.path().join("resume.log")).unwrap();
    let mut resume = resume
        .envs(env.envs())
        .args(["resume", &run])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        assert!(
            Instant::now() < deadline,
            "no new proxy: {}",
            env.background_logs()
        );
        if let Some(s) = slipway_providers::remote::read_state(&env.proxies_dir().join("api.json"))
            && s.pid != before.pid
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(after.traffic, before.traffic, "clients keep their address");
    assert_ne!(
        after.token, before.token,
        "a new proxy has a new admin token"
    );
    // Serving as soon as the resuming slipway has told it what runs: the stable version
    // first, then the canary again at the weight it had (the deploy step continues it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match try_version(after.traffic) {
            Ok(v) => break v,
            Err(e) => assert!(Instant::now() < deadline, "never served: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(first == "1.0.0" || first == "2.0.0", "{first}");
    assert_eq!(
        exit_within(&mut resume, Duration::from_secs(90)),
        5,
        "{}",
        env.background_logs()
    );
}
