//! The CI examples (`examples/ci/`, issue 16 part 5) run as their pipelines run them:
//! the GitHub Actions step and the GitLab CI script are read from the YAML files, their
//! variables set as the CI system would (server URL and token from its secrets), and the
//! documented script executed with bash from a release checkout against a real
//! `slipway serve`. A good release makes the job succeed; a release whose step fails is
//! rolled back by the server and the job fails with exit 4 (GitLab lets only 5, paused,
//! through as a warning); a job without its token stops before contacting anyone.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::People;
use crate::server_deploy_cli::World;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ci")
}

fn yaml(name: &str) -> Value {
    let text = std::fs::read_to_string(examples().join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A checkout: an exec-target release for `prod` (its install step failing when `fail`)
/// and the deploy script where the pipelines call it.
fn checkout(version: &str, fail: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let run = if fail { "exit 1" } else { "touch installed" };
    std::fs::write(
        d.path().join("release.yaml"),
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    steps: [ {{ name: install, run: \"{run}\", undo: \"rm -f installed\" }} ]
environments:
  prod:
    target: {{ exec: {{}} }}
"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.path().join("ci")).unwrap();
    // Copied by `cp`, not by this process: a copy written here holds a write descriptor on
    // the new executable, which a process another test thread forks at that moment inherits
    // until its exec, and running the script then fails with "Text file busy" (ETXTBSY;
    // seen under load). A symlink would leave the checkout, which bundles refuse.
    let copied = Command::new("cp")
        .arg(examples().join("slipway-deploy.sh"))
        .arg(d.path().join("ci/slipway-deploy.sh"))
        .status()
        .unwrap();
    assert!(copied.success());
    d
}

/// Runs `script` with bash in `cwd` with these variables (and slipway on PATH, no store):
/// exit code, stdout, stderr.
fn job(script: &str, cwd: &Path, vars: &[(String, String)]) -> (i32, String, String) {
    let bin = assert_cmd::cargo::cargo_bin("slipway");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .args(["-e", "-c", script])
        .current_dir(cwd)
        .env_remove("SLIPWAY_TOKEN")
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_OUTPUT")
        .env("SLIPWAY_STORE", "sqlite:///nonexistent/slipway.db")
        .env("PATH", path)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Variables as the CI system gives them: literal ones as written, `${{ … }}` / `$VAR`
/// references to the server and token filled from its secrets.
fn vars(declared: &Value, server: &str, token: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = declared
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    out.retain(|(_, v)| !v.contains("${{"));
    out.push(("SLIPWAY_SERVER".into(), format!("http://{server}")));
    out.push(("SLIPWAY_TOKEN".into(), token.into()));
    out
}

#[test]
fn the_documented_pipelines_deploy_through_the_server_and_map_its_exit_codes() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people.add("ci", "deployer", "prod");
    let server = world.serve();
    let token = people.token("ci").to_owned();

    // GitHub Actions: the step named "Deploy through Slipway", with the job's env.
    let gh = yaml("github-actions.yml");
    let gh_job = &gh["jobs"]["deploy"];
    let step = gh_job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Deploy through Slipway")
        .expect("the deploy step");
    assert_eq!(step["shell"], "bash");
    let gh_script = step["run"].as_str().unwrap();
    let gh_vars = vars(&gh_job["env"], &server.addr, &token);
    assert!(
        gh_vars
            .iter()
            .any(|(k, v)| k == "SLIPWAY_ENV" && v == "prod"),
        "{gh_vars:?}"
    );
    let good = checkout("1.0.0", false);
    let (code, out, err) = job(gh_script, good.path(), &gh_vars);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("started on http://"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("run ") && l.ends_with(" succeeded")),
        "{out}"
    );
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "the token is never printed"
    );

    // GitLab CI: the job's script lines and variables; a failing release is rolled back
    // by the server and fails the job (only 5, paused, may pass as a warning).
    let gl = yaml("gitlab-ci.yml");
    let gl_job = &gl["deploy"];
    assert_eq!(
        gl_job["allow_failure"]["exit_codes"],
        serde_json::json!([5])
    );
    let gl_script = gl_job["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let gl_vars = vars(&gl_job["variables"], &server.addr, &token);
    let bad = checkout("1.1.0", true);
    let (code, out, err) = job(&gl_script, bad.path(), &gl_vars);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("was rolled back"), "{err}");

    // Without its token the job stops at once, naming the variable.
    let no_token: Vec<(String, String)> = gl_vars
        .iter()
        .filter(|(k, _)| k != "SLIPWAY_TOKEN")
        .cloned()
        .collect();
    let (code, out, err) = job(&gl_script, good.path(), &no_token);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("SLIPWAY_TOKEN"), "{err}");
}
