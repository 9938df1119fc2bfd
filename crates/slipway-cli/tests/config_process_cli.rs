//! Config rendered per version on the `process` target, through the real `slipway` binary:
//! `slipway deploy` renders a service's templates (a variable and a `secret://env/…`) into
//! `<store dir>/config/<env>/<service>/<version>/` before the version's instances start,
//! and each instance gets its own version's directory as `SLIPWAY_CONFIG_DIR` — a canary
//! and the stable version side by side each read their own. A render that cannot be done
//! (the secret is not set) is refused by the plan (`secret-missing`, exit 3) before any
//! run starts, so no instance of the new version starts and nothing is written. The run
//! records the digests and secret names, never the value.
//!
//! Processes are real demo-app instances and proxies (the canary tests' setup); every one
//! carries a marker in its environment and the [`Env`] guard kills them all at the end.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECRET_NAME: &str = "SLIPWAY_CFG_TEST_PASSWORD";
const SECRET: &str = "pw-5e1d0c-never-in-the-journal";
const TEMPLATE: &str = "region = \"{{ vars.region }}\"\npassword = \"{{ vars.password }}\"\nversion = \"{{ version }}\"\n";
const MARK_VAR: &str = "SLIPWAY_CONFIG_PROCESS_TEST";

/// One test's world: its directory (spec, store, process state) and PATH with demo-app.
struct Env {
    dir: tempfile::TempDir,
    mark: String,
}

impl Env {
    fn new() -> Self {
        let dir = crate::demo_app_dir();
        std::fs::write(dir.path().join("api.conf.j2"), TEMPLATE).unwrap();
        let mark = dir.path().display().to_string();
        Self { dir, mark }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `slipway ARGS` to completion, the secret set or not: (exit code, stdout, stderr).
    fn run(&self, args: &[&str], secret: bool) -> (i32, String, String) {
        let mut c = crate::slipway();
        c.env(
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
        .env_remove(SECRET_NAME)
        .args(args)
        .timeout(Duration::from_secs(60));
        if secret {
            c.env(SECRET_NAME, SECRET);
        }
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `slipway deploy` of release `version` of `api` (one instance, config from the
    /// template): (exit code, JSON outcome, stderr). With no traffic, a canary's analysis
    /// has no data and the run pauses with both versions running.
    fn deploy(&self, version: &str, secret: bool) -> (i32, serde_json::Value, String) {
        let spec = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}}\", replicas: 1 }}
    readiness: {{ http: /ready, timeout: 2s }}
    config: [ {{ template: api.conf.j2, dest: api.conf }} ]
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    vars: {{ region: eu-west-1, password: \"secret://env/{SECRET_NAME}\" }}
    strategy:
      canary:
        steps:
          - set_weight: 20
          - analysis: {{ template: golden, duration: 3s }}
          - set_weight: 100
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
        let file = self.path().join(format!("release-{version}.yaml"));
        std::fs::write(&file, spec).unwrap();
        let (code, out, err) = self.run(
            &[
                "deploy",
                "--env",
                "live",
                "--output",
                "json",
                "-f",
                &file.display().to_string(),
            ],
            secret,
        );
        let v = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{e}: stdout {out}\nstderr {err}"));
        (code, v, err)
    }

    fn config_dir(&self, version: &str) -> PathBuf {
        self.path().join("config/live/api").join(version)
    }

    /// Running demo-app instances of this test: version → their `SLIPWAY_CONFIG_DIR`s.
    fn instances(&self) -> BTreeMap<String, Vec<String>> {
        let mut by_version: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (argv, environ) in marked(&self.mark) {
            if argv.get(1).map(String::as_str) == Some("demo-app")
                && let Some(i) = argv.iter().position(|a| a == "--version")
            {
                by_version.entry(argv[i + 1].clone()).or_default().push(
                    environ
                        .get("SLIPWAY_CONFIG_DIR")
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        }
        by_version
    }
}

/// Live processes carrying `mark` in their environment: argv and environment.
fn marked(mark: &str) -> Vec<(Vec<String>, BTreeMap<String, String>)> {
    crate::marked(MARK_VAR, mark)
        .into_iter()
        .map(|m| (m.argv, m.environ))
        .collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever the test did: nothing it caused outlives it.
        crate::kill_marked(MARK_VAR, &self.mark);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn rendered(version: &str, password: &str) -> String {
    format!("region = \"eu-west-1\"\npassword = \"{password}\"\nversion = \"{version}\"\n")
}

/// Every file under `dir` (but the rendered config itself) that contains `needle`.
fn files_containing(dir: &Path, skip: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        if p.is_dir() {
            hits.extend(files_containing(&p, skip, needle));
        } else if std::fs::read(&p)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            hits.push(p);
        }
    }
    hits
}

#[test]
fn each_version_reads_its_own_config_and_a_failed_render_starts_nothing() {
    let env = Env::new();
    let (code, v, err) = env.deploy("1.0.0", true);
    assert_eq!(code, 0, "{v}\n{err}");
    let v1 = env.config_dir("1.0.0");
    assert_eq!(
        std::fs::read_to_string(v1.join("api.conf")).unwrap(),
        rendered("1.0.0", SECRET)
    );

    // Release 2 without its secret: the plan finds it missing and the deploy is refused
    // before a run exists; no 2.0.0 instance starts and nothing of 2.0.0's config is
    // written (no directory, no temporary beside it).
    let (code, v, err) = env.deploy("2.0.0", false);
    assert_eq!(code, 3, "{v}\n{err}");
    assert!(v.get("run").is_none(), "no run was started: {v}");
    let said = format!("{v}{err}");
    assert!(
        said.contains("secret-missing") && said.contains(SECRET_NAME),
        "the refusal names the secret: {said}"
    );
    assert_eq!(
        env.instances(),
        BTreeMap::from([("1.0.0".to_owned(), vec![v1.display().to_string()])])
    );
    let mut names: Vec<String> = std::fs::read_dir(env.path().join("config/live/api"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1.0.0"], "only 1.0.0's config exists");

    // With the secret: a canary of 2.0.0 beside 1.0.0 (paused: no traffic to judge).
    let (code, v, err) = env.deploy("2.0.0", true);
    assert_eq!(code, 5, "{v}\n{err}");
    let run = v["run"].as_str().unwrap().to_owned();
    let v2 = env.config_dir("2.0.0");
    // Each running instance reads its own version's directory.
    assert_eq!(
        env.instances(),
        BTreeMap::from([
            ("1.0.0".to_owned(), vec![v1.display().to_string()]),
            ("2.0.0".to_owned(), vec![v2.display().to_string()]),
        ])
    );
    for (version, dir) in [("1.0.0", &v1), ("2.0.0", &v2)] {
        let file = dir.join("api.conf");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            rendered(version, SECRET)
        );
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }

    // The run records digests and the secret's name, never the value or its digest.
    let (code, out, err) = env.run(&["status", &run, "--output", "json"], false);
    assert_eq!(code, 0, "{out}\n{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &status["config"][0];
    let masked = rendered("2.0.0", &format!("***secret://env/{SECRET_NAME}***"));
    assert_eq!(f["step"], "api/render-config", "{status:#}");
    assert_eq!(f["path"], v2.join("api.conf").display().to_string());
    assert_eq!(
        f["masked_sha256"],
        slipway_package::digest::sha256_bytes(masked.as_bytes()).as_str()
    );
    assert_eq!(
        f["template_sha256"],
        slipway_package::digest::sha256_bytes(TEMPLATE.as_bytes()).as_str()
    );
    assert!(f.get("sha256").is_none(), "no digest over a secret: {f}");
    assert_eq!(
        f["secrets"],
        serde_json::json!([format!("secret://env/{SECRET_NAME}")])
    );

    // The value is nowhere but in the rendered files: not in the store (database and WAL),
    // run directories, process state and logs, nor in the journal or audit export.
    let export = env.path().join("audit.jsonl");
    let (code, out, err) = env.run(
        &["audit", "export", "--out", &export.display().to_string()],
        false,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(export.exists());
    let leaks = files_containing(env.path(), &env.path().join("config"), SECRET);
    assert!(leaks.is_empty(), "the secret leaked into {leaks:?}");
    let (_, logs, _) = env.run(&["logs", &run, "--output", "json"], false);
    assert!(logs.contains("config_rendered") && !logs.contains(SECRET));
    assert!(!out.contains(SECRET) && !status.to_string().contains(SECRET));

    // Promoted, then rolled back by hand: 1.0.0 is started again, and the restarted
    // instance reads 1.0.0's config, not the one rendered for 2.0.0.
    let (code, out, err) = env.run(&["promote", &run, "--output", "json"], true);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        env.instances(),
        BTreeMap::from([("2.0.0".to_owned(), vec![v2.display().to_string()])])
    );
    let (code, out, err) = env.run(
        &[
            "rollback",
            &run,
            "--reason",
            "config check",
            "--output",
            "json",
        ],
        true,
    );
    // A rollback by hand that did what was asked exits 0.
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        env.instances(),
        BTreeMap::from([("1.0.0".to_owned(), vec![v1.display().to_string()])])
    );
    assert_eq!(
        std::fs::read_to_string(v1.join("api.conf")).unwrap(),
        rendered("1.0.0", SECRET)
    );
}
