//! Smoke tests against an isolated candidate through the real `slipway` binary on the
//! `process` target: real demo-app instances (`slipway demo-app` behind a wrapper on
//! PATH), the real proxy process, real users through it. The environment's
//! `phase: smoke` checks name `{base}`, which stands for each new instance's own address:
//! a candidate answering 500 fails them before the router is given it, so the run rolls
//! back, no user request reaches it and users see no error; a healthy candidate passes,
//! gets traffic, and the smoke gate after the wave checks every new instance again.
//!
//! Every process the test causes carries a marker in its environment and is killed when
//! the test ends, whatever happened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_providers::traffic::Traffic;

struct Env {
    dir: tempfile::TempDir,
    mark: String,
    rt: tokio::runtime::Runtime,
}

impl Env {
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
            .env("SLIPWAY_SMOKE_TEST", &self.mark)
            .args(args)
            .timeout(Duration::from_secs(90))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn spec(&self, version: &str, args: &str) -> PathBuf {
        let text = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}} {args}\", replicas: 2 }}
    readiness: {{ http: /ready, timeout: 2s }}
checks:
  root: {{ phase: smoke, http: {{ url: \"http://{{base}}/\", status: 200 }}, timeout: 2s }}
  version: {{ phase: smoke, http: {{ url: \"http://{{base}}/version\", contains: \"{version}\" }}, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    checks: [root, version]
    strategy:
      canary:
        steps:
          - set_weight: 50
          - pause: 1s
"
        );
        let p = self.path().join(format!("release-{version}.yaml"));
        std::fs::write(&p, text).unwrap();
        p
    }

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
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        (code, v, err)
    }

    fn logs(&self, run: &str) -> String {
        self.run(&["logs", run]).1
    }

    fn proxy(&self) -> slipway_providers::remote::ProxyState {
        slipway_providers::remote::read_state(&self.path().join("process/live/proxies/api.json"))
            .expect("the api proxy recorded itself")
    }

    /// Live processes of this test whose argv names `--version v`.
    fn instances_of(&self, v: &str) -> usize {
        marked(&self.mark)
            .iter()
            .filter(|(_, argv)| {
                argv.get(1).map(String::as_str) == Some("demo-app")
                    && argv.windows(2).any(|w| w[0] == "--version" && w[1] == v)
            })
            .count()
    }
}

/// Live (not zombie) processes carrying `mark` in their environment: pid and argv.
fn marked(mark: &str) -> Vec<(u32, Vec<String>)> {
    crate::marked("SLIPWAY_SMOKE_TEST", mark)
        .into_iter()
        .map(|m| (m.pid, m.argv))
        .collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever the test did: nothing it caused outlives it.
        crate::kill_marked("SLIPWAY_SMOKE_TEST", &self.mark);
    }
}

#[test]
fn a_candidate_failing_smoke_never_gets_traffic_and_a_healthy_one_is_smoked_then_promoted() {
    let env = Env::new();
    // First release: a straight start, smoke-checked on the new instances before the
    // proxy is given them.
    let (code, v, err) = env.deploy(&env.spec("1.0.0", ""));
    assert_eq!(code, 0, "{v}\n{err}");
    let first = env.logs(v["run"].as_str().unwrap());
    assert!(
        first.contains("smoke before traffic ok: 4 smoke check(s) passed"),
        "{first}"
    );
    assert!(first.contains("check ok root (smoke)"), "{first}");
    let users = |env: &Env| {
        let _g = env.rt.enter();
        Traffic::start(env.proxy().traffic, "/", 100, 4)
    };
    let during_broken = users(&env);

    // A broken candidate: every `/` answers 500.
    let (code, v, err) = env.deploy(&env.spec("2.0.0", "--error-rate 1.0"));
    assert_eq!(code, 4, "exit 4 = rolled back: {v}\n{err}");
    assert_eq!(v["state"], "rolled_back", "{v}");
    let run = v["run"].as_str().unwrap().to_owned();
    let text = env.logs(&run);
    assert!(
        text.contains("smoke check(s) failed against the isolated candidate api 2.0.0"),
        "{text}"
    );
    assert!(text.contains("smoke before traffic FAILED"), "{text}");
    assert!(
        text.contains("`root`") && text.contains("HTTP 500"),
        "{text}"
    );
    assert!(
        !text.contains("canary weight 50%"),
        "no weight before smoke: {text}"
    );
    assert_eq!(env.instances_of("2.0.0"), 0, "the candidate is stopped");
    assert_eq!(env.instances_of("1.0.0"), 2, "stable keeps serving");
    // Users never met the broken candidate: not one answer from it, not one 500.
    let stats = env.rt.block_on(during_broken.stop());
    assert_eq!(stats.canary, 0, "{stats:?}");
    assert_eq!(stats.server_errors, 0, "{stats:?}");
    assert!(stats.ok > 0, "{stats:?}");

    // A healthy candidate: smoke passes before traffic, the canary gets weight, and the
    // smoke gate after the wave checks each new instance.
    let during_healthy = users(&env);
    let (code, v, err) = env.deploy(&env.spec("2.0.1", ""));
    assert_eq!(code, 0, "{v}\n{err}");
    let text = env.logs(v["run"].as_str().unwrap());
    let smoke = text.find("smoke before traffic ok").expect(&text);
    let weight = text.find("canary weight 50%").expect(&text);
    assert!(smoke < weight, "smoke before the first weight: {text}");
    assert!(text.contains("check ok root (smoke)"), "{text}");
    assert!(text.contains("check ok version (smoke)"), "{text}");
    // Once its smoke test passed, the candidate did serve users.
    let stats = env.rt.block_on(during_healthy.stop());
    assert!(stats.canary > 0, "{stats:?}");
    assert_eq!(env.instances_of("2.0.1"), 2);
}
