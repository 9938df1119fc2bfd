//! The `process` target's processes as a user sees them, through the real `slipway`
//! binary: what environment a real instance and its proxy are given (never a credential
//! exported for `slipway deploy`), and the detached per-service proxies found, listed and
//! stopped with `slipway proxy list|stop`.
//!
//! Processes are real demo-app instances and proxy processes; the [`Env`] guard kills
//! every process the test caused when it ends (see `crate::marked`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MARK_VAR: &str = "SLIPWAY_PROCESS_TARGET_TEST";
/// A credential the release manager exported for `slipway deploy`.
const CANARY_NAME: &str = "AWS_SECRET_ACCESS_KEY";
const CANARY: &str = "canary-7f3a91-must-not-reach-an-instance";
/// A variable the spec names in `run.inherit_env`.
const INHERITED_NAME: &str = "SLIPWAY_TEST_INHERITED";
const INHERITED: &str = "inherited-c0ffee";

/// One test's world: its directory (spec, store, process state) and PATH with demo-app.
struct Env {
    dir: tempfile::TempDir,
    mark: String,
}

impl Env {
    fn new() -> Self {
        let dir = crate::demo_app_dir();
        let mark = dir.path().display().to_string();
        Self { dir, mark }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `slipway ARGS` to completion with the canary credential and the inherited variable
    /// exported: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = crate::slipway()
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.path().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env(
                "SLIPWAY_STORE",
                format!("sqlite://{}/slipway.db", self.path().display()),
            )
            .env(MARK_VAR, &self.mark)
            .env(CANARY_NAME, CANARY)
            .env(INHERITED_NAME, INHERITED)
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A release of `api` at `version` (one instance); `run_extra` is added to its `run:`.
    fn spec(&self, version: &str, run_extra: &str) -> PathBuf {
        let text = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}}\", replicas: 1{run_extra} }}
    readiness: {{ http: /ready, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    strategy:
      canary:
        steps:
          - set_weight: 20
          - analysis: {{ template: golden, duration: 2s }}
          - set_weight: 100
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 3
    metrics:
      - {{ name: error-rate, max: 0.05 }}
    on_failure: rollback
"
        );
        let p = self.path().join(format!("release-{version}.yaml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `slipway deploy` of a spec: (exit code, JSON outcome, stderr).
    fn deploy(&self, spec: &Path) -> (i32, serde_json::Value, String) {
        let (code, out, err) = self.run(&[
            "deploy",
            "--env",
            "live",
            "--output",
            "json",
            "-f",
            &spec.display().to_string(),
        ]);
        let v = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{e}: stdout {out}\nstderr {err}"));
        (code, v, err)
    }

    /// The instances recorded in the process target's state files: (pid, version).
    fn recorded_instances(&self) -> Vec<(u32, String)> {
        let dir = self.path().join("process/live/instances");
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
                found.push((
                    u32::try_from(v["instance"]["pid"].as_u64().unwrap()).unwrap(),
                    v["instance"]["version"].as_str().unwrap().to_owned(),
                ));
            }
        }
        found
    }

    fn proxy_state(&self) -> slipway_providers::remote::ProxyState {
        slipway_providers::remote::read_state(&self.path().join("process/live/proxies/api.json"))
            .expect("the api proxy recorded itself")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever the test did: nothing it caused outlives it.
        crate::kill_marked(MARK_VAR, &self.mark);
    }
}

/// `/proc/PID/environ` of a live process, as name → value.
fn environ(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/environ: {e}"))
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[test]
fn instances_and_proxies_never_inherit_a_credential_exported_for_deploy() {
    let env = Env::new();
    let spec = env.spec(
        "1.0.0",
        &format!(", env: {{ APP_MODE: declared }}, inherit_env: [{INHERITED_NAME}]"),
    );
    let (code, v, err) = env.deploy(&spec);
    assert_eq!(code, 0, "{v}\n{err}");

    let instances = env.recorded_instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let (pid, version) = &instances[0];
    assert_eq!(version, "1.0.0");
    let vars = environ(*pid);
    // The real instance: what the spec declares and inherits, Slipway's own variables,
    // the allowlisted PATH (demo-app was found through it) — and no credential.
    assert_eq!(
        vars.get("APP_MODE").map(String::as_str),
        Some("declared"),
        "{vars:?}"
    );
    assert_eq!(
        vars.get(INHERITED_NAME).map(String::as_str),
        Some(INHERITED),
        "{vars:?}"
    );
    assert_eq!(vars.get("SLIPWAY_SERVICE").map(String::as_str), Some("api"));
    assert_eq!(
        vars.get("SLIPWAY_VERSION").map(String::as_str),
        Some("1.0.0")
    );
    assert!(
        vars.get("PORT").is_some_and(|p| p.parse::<u16>().is_ok()),
        "{vars:?}"
    );
    assert!(
        vars.get("PATH").is_some_and(|p| p.contains(&env.mark)),
        "{vars:?}"
    );
    assert!(!vars.contains_key(CANARY_NAME), "{vars:?}");
    assert!(!vars.values().any(|v| v.contains(CANARY)), "{vars:?}");
    // Not even slipway's harmless-looking variables pass unless allowlisted.
    assert!(
        !vars.contains_key("SLIPWAY_STORE") && !vars.contains_key(MARK_VAR),
        "{vars:?}"
    );

    // The detached proxy in front of it keeps nothing of `slipway deploy`'s environment
    // either (it outlives the deploy just like the instance).
    let proxy = env.proxy_state();
    let pvars = environ(proxy.pid);
    assert!(
        !pvars.values().any(|v| v.contains(CANARY) || v == INHERITED),
        "{pvars:?}"
    );
    assert!(!pvars.contains_key("SLIPWAY_STORE"), "{pvars:?}");

    // Without `inherit_env`, the variable exported for the deploy stays out as well: the
    // canary of 2.0.0 (paused: no traffic to judge) gets neither.
    let (code, v, err) = env.deploy(&env.spec("2.0.0", ", env: { APP_MODE: declared }"));
    assert_eq!(code, 5, "{v}\n{err}");
    let canary = env
        .recorded_instances()
        .into_iter()
        .find(|(_, v)| v == "2.0.0")
        .expect("the canary of 2.0.0 runs");
    let vars = environ(canary.0);
    assert_eq!(vars.get("APP_MODE").map(String::as_str), Some("declared"));
    assert!(!vars.contains_key(INHERITED_NAME), "{vars:?}");
    assert!(!vars.values().any(|v| v.contains(CANARY)), "{vars:?}");
}

#[test]
fn inherit_env_names_are_validated() {
    let env = Env::new();
    let spec = env.spec(
        "1.0.0",
        ", env: { HOME_DIR: x }, inherit_env: [JAVA_HOME, PORT, 9LIVES, HOME_DIR, JAVA_HOME]",
    );
    let (code, out, err) = env.run(&[
        "validate",
        "--output",
        "json",
        "-f",
        &spec.display().to_string(),
    ]);
    assert_eq!(code, 2, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found: Vec<(String, String)> = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                d["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let at = |i: usize| format!("services.api.run.inherit_env[{i}]");
    assert_eq!(
        found,
        [
            (
                at(1),
                "`PORT` is set by Slipway for each instance and cannot be inherited".to_owned()
            ),
            (
                at(2),
                "`9LIVES` is not an environment variable name".to_owned()
            ),
            (
                at(3),
                "`HOME_DIR` is both given in run.env and inherited".to_owned()
            ),
            (
                at(4),
                "`JAVA_HOME` is listed twice in run.inherit_env (entries 0 and 4)".to_owned()
            ),
        ],
        "{v:#}"
    );
}

/// Whether the process `pid` that started at `ticks` still runs (not exited, not a zombie,
/// not a recycled pid).
fn running(pid: u32, ticks: u64) -> bool {
    slipway_providers::process::proc_start_ticks(pid) == Some(ticks)
        && !slipway_providers::process::is_zombie(pid)
}

#[test]
fn proxies_are_listed_refused_while_a_run_uses_them_and_stopped() {
    let env = Env::new();
    let list = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["proxy", "list", "--output", "json"];
        args.extend_from_slice(extra);
        let (code, out, err) = env.run(&args);
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    assert_eq!(list(&[]), serde_json::json!([]), "nothing deployed yet");

    let (code, v, err) = env.deploy(&env.spec("1.0.0", ""));
    assert_eq!(code, 0, "{v}\n{err}");
    let proxy = env.proxy_state();
    assert!(running(proxy.pid, proxy.start_ticks));

    // Listed alive with its addresses and live figures from its admin API, never the token.
    let listed = list(&["--env", "live"]);
    let entry = &listed[0];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(entry["service"], "api");
    assert_eq!(entry["env"], "live");
    assert_eq!(entry["pid"], proxy.pid);
    assert_eq!(entry["status"], "alive");
    assert_eq!(entry["traffic"], proxy.traffic.to_string());
    assert_eq!(entry["admin"], proxy.admin.to_string());
    assert_eq!(entry["weight"], 0);
    assert_eq!(
        entry["requests"],
        serde_json::json!({"stable": 0, "canary": 0})
    );
    assert_eq!(entry["runs"], serde_json::json!([]));
    assert!(!listed.to_string().contains(&proxy.token));
    assert_eq!(list(&["--env", "other"]), serde_json::json!([]));
    let (code, text, _) = env.run(&["proxy", "list"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("api") && text.contains("alive") && text.contains(&proxy.traffic.to_string()),
        "{text}"
    );

    // A canary of 2.0.0 pauses (no traffic to judge) with the proxy in its path: stopping
    // the proxy is refused, naming the run, and the proxy keeps running.
    let (code, v, err) = env.deploy(&env.spec("2.0.0", ""));
    assert_eq!(code, 5, "{v}\n{err}");
    let run = v["run"].as_str().unwrap().to_owned();
    assert_eq!(list(&[])[0]["runs"], serde_json::json!([run]));
    let (code, out, err) = env.run(&["proxy", "stop", "api", "--env", "live"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains("refused to stop the api proxy of live")
            && err.contains(&run)
            && err.contains("--force"),
        "{err}"
    );
    assert!(
        running(proxy.pid, proxy.start_ticks),
        "a refusal signals nothing"
    );

    // --force stops the real process and removes its state file.
    let (code, out, err) = env.run(&[
        "proxy", "stop", "api", "--env", "live", "--force", "--output", "json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let stopped: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stopped["proxies"][0]["result"], "stopped", "{stopped:#}");
    assert_eq!(stopped["proxies"][0]["pid"], proxy.pid);
    assert_eq!(
        stopped["proxies"][0]["forced_past_runs"],
        serde_json::json!([run])
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(proxy.pid, proxy.start_ticks) {
        assert!(Instant::now() < deadline, "proxy {} still runs", proxy.pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    let state_file = env.path().join("process/live/proxies/api.json");
    assert!(!state_file.exists());
    assert_eq!(list(&[]), serde_json::json!([]));

    // Idempotent: stopping it again says so and succeeds.
    let (code, out, err) = env.run(&["proxy", "stop", "api", "--env", "live"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("no proxy of api is recorded in live; nothing to stop"),
        "{out}"
    );

    // A state file left by a proxy that died without cleaning up: listed as stale, and
    // `stop` removes the file without signalling anything.
    slipway_providers::remote::write_state(&state_file, &proxy).unwrap();
    let listed = list(&[]);
    assert_eq!(listed[0]["status"], "stale", "{listed:#}");
    assert_eq!(listed[0]["weight"], serde_json::Value::Null);
    let (code, out, err) = env.run(&["proxy", "stop", "api", "--env", "live", "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let stopped: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        stopped["proxies"][0]["result"], "not_running",
        "{stopped:#}"
    );
    assert!(!state_file.exists());
}
