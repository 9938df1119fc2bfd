//! What the CLI says is true, through the real binary: a closed stdout ends a command
//! quietly (exit 141, never a panic); commands that only read never create a store at a
//! mistyped path (exit 8 naming it); a failed step's output, redacted, shows in `logs` and
//! text `status`; `resume` and `logs` default to the latest run as `status` does; waves
//! count from 1 in `plan`, `deploy` and `logs`; steps are listed in execution order; a
//! run whose driver was killed shows as interrupted; an untrusted key is a refusal (1),
//! tampering 7; the identity without `$USER` is the OS account; `package build` writes
//! with `--out`/`-o`; `--help` lists a command's own flags with the global ones in one
//! line, and the exit codes from the one list README's table repeats; a canary's
//! comparison says what it sampled.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::slipway;

const MARK_VAR: &str = "SLIPWAY_TRUTH_TEST";

/// A test's directory and store; every process the test causes dies with it.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> String {
        format!("sqlite://{}/s.db", self.path().display())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `slipway ARGS` on this directory's store, with `extra` variables: (code, stdout,
    /// stderr).
    fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
        let o = slipway()
            .env("SLIPWAY_STORE", self.store())
            .env(MARK_VAR, self.path())
            .envs(extra.iter().copied())
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

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[])
    }

    /// `slipway ARGS` that must exit `code`; its stdout.
    fn ok(&self, args: &[&str], code: i32) -> String {
        let (c, out, err) = self.run(args);
        assert_eq!(c, code, "slipway {args:?}\nstdout: {out}\nstderr: {err}");
        out
    }

    /// `slipway ARGS --output json`, exit 0, parsed.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.ok(&a, 0);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        crate::kill_marked(MARK_VAR, &self.path().display().to_string());
    }
}

/// A release of services `zeta` (two steps, the first wave) and `alpha` (after zeta):
/// execution order zeta/unpack, zeta/configure, alpha/start — the reverse of the
/// alphabet.
fn two_waves(d: &Dir) -> PathBuf {
    let p = d.path().display().to_string();
    d.write(
        "release.yaml",
        &format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  zeta:
    steps:
      - {{ name: unpack, run: \"touch {p}/unpacked\" }}
      - {{ name: configure, run: \"touch {p}/configured\" }}
  alpha:
    depends_on: [zeta]
    steps: [ {{ name: start, run: \"touch {p}/started\" }} ]
environments:
  staging: {{ target: {{ exec: {{}} }} }}
"
        ),
    )
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly_with_141() {
    let d = Dir::new();
    let spec = path_arg(&two_waves(&d));
    d.ok(&["deploy", "--env", "staging", "-f", &spec], 0);
    let run = d.json(&["history"])[0]["id"].as_str().unwrap().to_owned();
    let commands: &[&[&str]] = &[
        &["status"],
        &["status", &run, "--output", "json"],
        &["logs"],
        &["history"],
        &["plan", "--env", "staging", "-f", &spec],
        &["validate", "-f", &spec],
        &["schema"],
        &["audit", "verify"],
        &["report", "dora", "--since", "2000-01-01"],
    ];
    for args in commands {
        // The reading end is closed before the child starts: its first write meets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .current_dir(d.path())
            .env("SLIPWAY_STORE", d.store())
            .env("NO_COLOR", "1")
            .env_remove("SLIPWAY_OUTPUT")
            .args(*args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "slipway {args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "slipway {args:?} must end quietly: {err}"
        );
    }
}

#[test]
fn commands_that_only_read_never_create_a_store_at_a_mistyped_path() {
    let d = Dir::new();
    let spec = path_arg(&two_waves(&d));
    let typo_dir = d.path().join("typo");
    let typo = format!("sqlite://{}/slipway.db", typo_dir.display());
    let export = path_arg(&d.path().join("audit.jsonl"));
    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "20260101-000000-abcdef"],
        &["logs"],
        &["history"],
        &["resume"],
        &["audit", "verify"],
        &["audit", "export", "--out", &export],
        &["report", "dora", "--since", "2000-01-01"],
        &["access", "list"],
        &["env", "leases"],
        &["retention", "show"],
    ];
    for args in commands {
        let mut a = args.to_vec();
        a.extend(["--store", &typo]);
        let (code, out, err) = d.run(&a);
        assert_eq!(code, 8, "slipway {a:?}\n{out}{err}");
        assert!(
            err.contains(&typo_dir.display().to_string())
                && err.contains("a command that only reads never creates one"),
            "slipway {a:?} must name the path and why: {err}"
        );
        assert!(!typo_dir.exists(), "slipway {a:?} created {typo}");
    }
    // A token is only known to a store that exists.
    let (code, _, err) = d.run_with(
        &["history", "--store", &typo],
        &[("SLIPWAY_TOKEN", "slw_x")],
    );
    assert_eq!(code, 8, "{err}");
    // Planning reads the history when there is one, and never makes one.
    let (code, _, err) = d.run_with(
        &["plan", "--env", "staging", "-f", &spec],
        &[("SLIPWAY_STORE", &typo)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!typo_dir.exists(), "plan created a store");
    // A command that writes creates it.
    d.ok(
        &["deploy", "--env", "staging", "--store", &typo, "-f", &spec],
        0,
    );
    assert!(typo_dir.join("slipway.db").is_file());
    assert_eq!(
        d.json(&["history", "--store", &typo])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_failed_steps_output_shows_redacted_in_logs_and_status_and_waves_count_from_one() {
    const SECRET: &str = "s3cr3t-4f1b9e";
    let d = Dir::new();
    let spec = d.write(
        "release.yaml",
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    steps:
      - { name: install, run: 'true', undo: 'true' }
      - { name: migrate, run: 'echo \"connecting with $API_TOKEN\"; echo \"boom: table missing ($API_TOKEN)\" >&2; exit 3' }
environments:
  staging:
    target: { exec: {} }
    vars: { token: 'secret://env/API_TOKEN' }
",
    );
    let (code, _, err) = d.run_with(
        &["deploy", "--env", "staging", "-f", &path_arg(&spec)],
        &[("API_TOKEN", SECRET)],
    );
    assert_eq!(code, 4, "the failed run is rolled back: {err}");
    // The deploy's own progress shows the output under the failure.
    assert!(err.contains("stderr | boom: table missing ("), "{err}");
    let logs = d.ok(&["logs"], 0);
    let status = d.ok(&["status"], 0);
    for (what, text) in [("deploy", &err), ("logs", &logs), ("status", &status)] {
        assert!(
            text.contains("stderr | boom: table missing (")
                && text.contains("stdout | connecting with ")
                && text.contains("exit code 3"),
            "{what} must show the failed step's output: {text}"
        );
        assert!(!text.contains(SECRET), "{what} printed the secret: {text}");
        // One numbering for people: the only wave is wave 1.
        assert!(!text.contains("wave 0"), "{what}: {text}");
    }
    assert!(logs.contains("wave 1: 2 step(s)"), "{logs}");
    assert!(logs.contains("wave 1 had 1 failed step(s)"), "{logs}");
}

#[test]
fn waves_count_from_one_and_steps_are_listed_in_execution_order() {
    let d = Dir::new();
    let spec = path_arg(&two_waves(&d));
    let plan = d.ok(&["plan", "--env", "staging", "-f", &spec], 0);
    assert!(
        plan.contains("    1  zeta") && plan.contains("    2  alpha (after zeta)"),
        "{plan}"
    );
    let (code, _, err) = d.run(&["deploy", "--env", "staging", "-f", &spec]);
    assert_eq!(code, 0, "{err}");
    let logs = d.ok(&["logs"], 0);
    for (what, text) in [("deploy", &err), ("logs", &logs)] {
        assert!(
            text.contains("wave 1: 2 step(s)") && text.contains("wave 2: 1 step(s)"),
            "{what}: {text}"
        );
        assert!(!text.contains("wave 0"), "{what}: {text}");
    }
    let order = ["zeta/unpack", "zeta/configure", "alpha/start"];
    let plan_json = d.json(&["plan", "--env", "staging", "-f", &spec]);
    let planned: Vec<&str> = plan_json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(planned, order);
    let status = d.json(&["status"]);
    let listed: Vec<&str> = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed, order,
        "status --output json lists steps as they run"
    );
    let text = d.ok(&["status"], 0);
    let at = |id: &str| text.find(id).unwrap_or_else(|| panic!("{id}: {text}"));
    assert!(
        at(order[0]) < at(order[1]) && at(order[1]) < at(order[2]),
        "status lists steps as they run: {text}"
    );
}

#[test]
fn resume_and_logs_default_to_the_latest_run_like_status() {
    let d = Dir::new();
    let spec = d.write(
        "release.yaml",
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    steps: [ { name: install, run: 'true' } ]
environments:
  staging:
    target: { exec: {} }
    approvals: { required: 1 }
",
    );
    let (code, out, err) = d.run(&[
        "deploy",
        "--env",
        "staging",
        "--no-wait",
        "--output",
        "json",
        "-f",
        &path_arg(&spec),
    ]);
    assert_eq!(code, 3, "waits for an approval: {out}{err}");
    let run = serde_json::from_str::<serde_json::Value>(&out).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    // `resume` with no id continues the latest run (still waiting: exit 3) and says which.
    let (code, _, err) = d.run(&["resume", "--no-wait"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("resuming the latest run, {run}")),
        "{err}"
    );
    let logs = d.ok(&["logs"], 0);
    assert!(logs.contains(&format!("run {run} created")), "{logs}");
    assert_eq!(d.json(&["status"])["run"]["id"], run.as_str());
}

/// Poll `status --output json` until `ready` holds (a deadline, never a sleep hoping).
fn status_until(
    d: &Dir,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, _) = d.run(&["status", "--output", "json"]);
        if code == 0
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
            && ready(&v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last status {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_run_whose_driver_was_killed_shows_as_interrupted_not_running() {
    let d = Dir::new();
    let spec = d.write(
        "release.yaml",
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    steps: [ { name: install, run: 'sleep 60' } ]
environments:
  staging: { target: { exec: {} } }
",
    );
    let mut deploy = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .current_dir(d.path())
        .env("SLIPWAY_STORE", d.store())
        .env(MARK_VAR, d.path())
        .args(["deploy", "--env", "staging", "-f", &path_arg(&spec)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let live = status_until(&d, "the step starts", |v| {
        v["steps"][0]["status"] == "started"
    });
    assert_eq!(live["run"]["state"], "running");
    assert_eq!(live["driven"], true, "{live:#}");
    let text = d.ok(&["status"], 0);
    assert!(!text.contains("interrupted"), "{text}");

    deploy.kill().unwrap();
    deploy.wait().unwrap();
    let run = live["run"]["id"].as_str().unwrap();
    let dead = d.json(&["status"]);
    assert_eq!(dead["run"]["state"], "running", "the journal's state stays");
    assert_eq!(dead["driven"], false, "{dead:#}");
    let text = d.ok(&["status"], 0);
    assert!(
        text.contains("interrupted: no process drives it")
            && text.contains(&format!("slipway resume {run}")),
        "{text}"
    );
    // A finished run has no driver to speak of.
    d.ok(&["abort", run], 0);
    let over = status_until(&d, "the run ends", |v| v["run"]["state"] == "aborted");
    assert!(over["driven"].is_null(), "{over:#}");
}

#[test]
fn an_untrusted_key_is_a_refusal_and_a_tampered_file_is_exit_7() {
    let d = Dir::new();
    let p = |n: &str| path_arg(&d.path().join(n));
    for k in ["a", "b"] {
        d.ok(
            &[
                "key",
                "generate",
                "--unencrypted",
                "--secret-key",
                &p(&format!("{k}.key")),
                "--public-key",
                &p(&format!("{k}.pub")),
            ],
            0,
        );
    }
    let file = d.write("app.tar.gz", "release bytes");
    d.ok(&["sign", &path_arg(&file), "-s", &p("a.key")], 0);
    d.ok(&["verify", &path_arg(&file), "-p", &p("a.pub")], 0);
    d.ok(&["verify", &path_arg(&file), "-p", &p("b.pub")], 1);
    std::fs::write(&file, "release bytes, changed").unwrap();
    d.ok(&["verify", &path_arg(&file), "-p", &p("a.pub")], 7);
    // The exit code table says so.
    let help = squash(&d.ok(&["--help"], 0));
    assert!(
        help.contains("1 the operation ran and failed (run failed, check failed, `diff --fail-on-drift` found drift, a signature made by a key that is not trusted)"),
        "{help}"
    );
}

#[test]
fn without_user_the_identity_is_the_os_account_not_unknown() {
    let d = Dir::new();
    let who = Command::new("id").arg("-un").output().unwrap();
    let who = String::from_utf8_lossy(&who.stdout).trim().to_owned();
    assert!(!who.is_empty());
    let o = slipway()
        .env("SLIPWAY_STORE", d.store())
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("SLIPWAY_USER")
        .args([
            "env",
            "lease",
            "staging",
            "--reason",
            "maintenance",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["holder"], format!("manual:{who}"), "{v:#}");
}

#[test]
fn package_build_writes_with_out_and_refuses_a_file_name_for_output() {
    let d = Dir::new();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.txt"), "hello").unwrap();
    let target = d.path().join("app-1.0.0.tar.gz");
    let (code, _, err) = d.run(&[
        "package",
        "build",
        &path_arg(&src),
        "--name",
        "app",
        "--version",
        "1.0.0",
        "--output",
        &path_arg(&target),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--out PATH (-o PATH)"), "{err}");
    assert!(!target.exists());
    d.ok(
        &[
            "package",
            "build",
            &path_arg(&src),
            "--name",
            "app",
            "--version",
            "1.0.0",
            "-o",
            &path_arg(&target),
        ],
        0,
    );
    assert!(target.is_file());
}

/// Whitespace runs as one space: clap wraps help text to the terminal's width.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn subcommand_help_lists_its_own_flags_and_summarises_the_global_ones_once() {
    let d = Dir::new();
    for args in [
        &["deploy", "--help"][..],
        &["status", "-h"][..],
        &["access", "token", "create", "--help"][..],
    ] {
        let help = d.ok(args, 0);
        assert!(
            !help.contains("--token <TOKEN>") && !help.contains("--color <COLOR>"),
            "{args:?} repeats the global flags: {help}"
        );
        assert_eq!(
            help.matches("Global options (any command").count(),
            1,
            "{args:?}: {help}"
        );
        assert!(help.contains("--store <STORE>"), "{args:?}: {help}");
    }
    let deploy = d.ok(&["deploy", "--help"], 0);
    assert!(
        deploy.find("--file <FILE>").unwrap() < deploy.find("Global options").unwrap(),
        "{deploy}"
    );
    // The global flags still work after a subcommand.
    let v = d.json(&["schema"]);
    assert!(v.is_object());
    // The root help describes them in full.
    let root = d.ok(&["--help"], 0);
    assert!(
        root.contains("--token <TOKEN>") && root.contains("--color <COLOR>"),
        "{root}"
    );
}

#[test]
fn the_exit_codes_in_help_and_readme_are_the_ones_in_the_code() {
    let d = Dir::new();
    let help = squash(&d.ok(&["--help"], 0));
    for (code, meaning) in slipway_model::exit::ALL {
        assert!(
            help.contains(&squash(&format!("{code} {meaning}"))),
            "--help lacks exit code {code}: {help}"
        );
    }
    let readme = std::fs::read_to_string(crate::repo().join("README.md")).unwrap();
    let start = readme
        .find("| code | meaning |")
        .expect("README has the exit code table");
    let rows: Vec<&str> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let expected: Vec<String> = slipway_model::exit::ALL
        .iter()
        .map(|(code, meaning)| format!("| {code} | {meaning} |"))
        .collect();
    assert_eq!(
        rows, expected,
        "README's exit code table differs from slipway_model::exit::ALL"
    );
}

#[test]
fn help_and_messages_name_what_a_user_can_act_on() {
    let d = Dir::new();
    // clap reads `{n}` in help text as a line break: file names are written `V<N>__…`.
    let help = d.ok(&["migrate", "apply", "--help"], 0);
    assert!(
        help.contains("V<N>__<name>.sql") && help.contains("U<N>__<name>.sql"),
        "{help}"
    );
    // A duplicate key is explained in the spec's terms, not the YAML library's options.
    let spec = d.write(
        "dup.yaml",
        "apiVersion: slipway/v1
kind: Release
metadata: { name: x, version: 1.0.0, type: patch }
services:
  api:
    steps: [ { name: a, run: 'true' } ]
  api:
    steps: []
environments:
  staging: { target: { exec: {} } }
",
    );
    let (code, out, err) = d.run(&["validate", "-f", &path_arg(&spec)]);
    assert_eq!(code, 2);
    let text = format!("{out}{err}");
    assert!(
        text.contains("the key `api` appears twice in the same mapping")
            && text.contains("dup.yaml:7:3"),
        "{text}"
    );
    assert!(
        !text.contains("DuplicateKeyPolicy") && !text.contains("Options"),
        "{text}"
    );
}

#[test]
fn a_postgresql_migration_error_names_the_line_of_the_file_and_reads_create_no_schema() {
    use crate::postgres_store_cli::pg::{db_name, pg};
    let pg = pg();
    let d = Dir::new();
    let dir = d.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("V1__accounts.sql"),
        "CREATE TABLE accounts (id int);\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("V2__orders.sql"),
        "CREATE TABLE orders (id int);\n\nCREATE TABLE lines (id int,, qty int);\n",
    )
    .unwrap();
    let url = pg.new_db("truth_migrate");
    let (code, out, err) = d.run(&["migrate", "apply", "--url", &url, "--dir", &path_arg(&dir)]);
    let text = format!("{out}{err}");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "syntax error at or near \",\" (SQLSTATE 42601) at line 3, column 28 of the file"
        ),
        "the position must be the file's: {text}"
    );
    // Never PostgreSQL's own source line ("at line 1234" of its parser).
    assert_eq!(
        text.matches("at line ").count(),
        text.matches(", column ").count(),
        "{text}"
    );
    // A database without a slipway store stays without one after a read.
    let empty = pg.new_db("truth_empty");
    let (code, _, err) = d.run(&["history", "--store", &empty]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("the database holds no slipway store"), "{err}");
    assert_eq!(
        pg.psql(db_name(&empty), "SELECT to_regclass('meta') IS NULL")
            .trim(),
        "t"
    );
}

#[test]
fn status_says_what_a_canary_comparison_sampled() {
    let env = crate::canary_cli::Env::new();
    let users = env.baseline();
    let spec = env.path().join("release-2.0.0.yaml");
    std::fs::write(
        &spec,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.0.0, type: patch }
services:
  api:
    run: { command: \"demo-app --port {{ port }} --version {{ version }}\", replicas: 2 }
    readiness: { http: /ready, timeout: 2s }
environments:
  live:
    target: { process: { stop_grace: 2s } }
    strategy:
      canary:
        steps:
          - set_weight: 50
          - analysis: { template: compare, duration: 1s }
          - set_weight: 100
analysis_templates:
  compare:
    interval: 250ms
    min_samples: 5
    failure_limit: 2
    inconclusive_limit: 3
    metrics:
      - { name: latency-vs-stable, compare: mann-whitney, confidence: 0.999 }
    on_failure: rollback
",
    )
    .unwrap();
    // The verdict is the test's business elsewhere; here only what status says about it.
    let (code, v, err) = env.deploy(&spec);
    assert!([0, 4, 5].contains(&code), "{v}\n{err}");
    let run = v["run"].as_str().unwrap();
    let (code, out, err) = env.run(&["status", run, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let result = &status["analysis"][0]["last"][0];
    assert_eq!(result["metric"], "latency-vs-stable", "{status:#}");
    let sampled = &result["sampled"];
    assert!(
        ["all", "reservoir"].contains(&sampled["method"].as_str().unwrap_or_default())
            && sampled["cap"] == 1500
            && sampled["n_canary"].is_u64()
            && sampled["used_stable"].is_u64(),
        "{status:#}"
    );
    let (code, text, err) = env.run(&["status", run]);
    assert_eq!(code, 0, "{err}");
    let line = format!(
        "cap 1500 per side; canary {} of {}, stable {} of {}",
        sampled["used_canary"], sampled["n_canary"], sampled["used_stable"], sampled["n_stable"]
    );
    assert!(
        text.contains("sampled: ") && text.contains(&line),
        "status must say what was judged ({line}): {text}"
    );
    let _ = env.rt.block_on(users.stop());
}
