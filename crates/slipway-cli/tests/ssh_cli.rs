//! `slipway deploy` to an `ssh` environment, through the real binary, against real sshd
//! processes on 127.0.0.1 (one per "host", each with its own directory standing for its
//! file system): steps on every host, a failing host rolling the run back with undo on
//! the hosts that had completed, a changed host key refused before any run exists, and
//! per-host results in `slipway status --output json`.

use std::path::{Path, PathBuf};

// Shared with readiness_ssh_cli (a file may be a module of the runner only once).
#[path = "../../slipway-providers/tests/sshd.rs"]
pub(crate) mod sshd;

use crate::slipway;
use sshd::Fleet;

/// A spec directory with an inventory of the fleet (each host's `ROOT` its own directory)
/// and `release.yaml` with `services` as given.
pub(crate) fn setup(fleet: &Fleet, services: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = fleet.dir.join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    let roots: Vec<PathBuf> = (0..fleet.hosts.len())
        .map(|i| {
            let r = fleet.dir.join(format!("root{i}"));
            std::fs::create_dir_all(&r).unwrap();
            r
        })
        .collect();
    let r = roots.clone();
    std::fs::write(
        dir.join("hosts.yaml"),
        fleet.inventory(|i| {
            format!(
                "    state_dir: {}/state\n    env: {{ ROOT: {} }}\n",
                r[i].display(),
                r[i].display()
            )
        }),
    )
    .unwrap();
    std::fs::write(
        dir.join("release.yaml"),
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
{services}environments:
  fleet:
    target: {{ ssh: {{ inventory: hosts.yaml, group: all, parallelism: 2 }} }}
"
        ),
    )
    .unwrap();
    (dir, roots)
}

pub(crate) fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    slipway()
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}", dir.join("store.db").display()),
        )
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn deploy(dir: &Path) -> std::process::Output {
    let spec = dir.join("release.yaml").display().to_string();
    run(
        dir,
        &["deploy", "--env", "fleet", "--output", "json", "-f", &spec],
    )
}

pub(crate) fn status(dir: &Path) -> serde_json::Value {
    let o = run(dir, &["status", "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `(phase, host, result)` of a step's per-host entries in `status`.
fn host_results(status: &serde_json::Value, step: &str) -> Vec<(String, String, String)> {
    status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["step"] == step)
        .map(|h| {
            (
                h["phase"].as_str().unwrap().to_owned(),
                h["host"].as_str().unwrap().to_owned(),
                h["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn t(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

#[test]
fn a_release_is_deployed_on_every_host_and_status_shows_each_host() {
    let fleet = Fleet::start(3);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'echo \"1.0.0 on $SLIPWAY_HOST\" > \"$ROOT/app.txt\"', undo: 'rm \"$ROOT/app.txt\"' }
",
    );
    let spec = dir.join("release.yaml").display().to_string();
    let o = run(
        &dir,
        &["plan", "--env", "fleet", "--output", "json", "-f", &spec],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["target"], "ssh");

    let o = deploy(&dir);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    for (i, root) in roots.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(root.join("app.txt")).unwrap(),
            format!("1.0.0 on host{}\n", i + 1)
        );
    }
    // The host-key check before the run and the run's steps share one session per host.
    for h in &fleet.hosts {
        assert_eq!(h.logins(), 1, "logins on {}", h.name);
    }
    let s = status(&dir);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let mut results = host_results(&s, "web/install");
    results.sort();
    assert_eq!(
        results,
        vec![
            t("apply", "host1", "ran"),
            t("apply", "host2", "ran"),
            t("apply", "host3", "ran"),
        ],
        "{s:#}"
    );
    let o = run(&dir, &["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("web/install apply on host3: ran (exit 0)"),
        "{text}"
    );
    let port = fleet.hosts[1].port;
    assert!(
        s["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == "host2" && h["address"] == format!("127.0.0.1:{port}")),
        "{s:#}"
    );
}

#[test]
fn a_failing_host_rolls_the_run_back_and_undo_runs_where_steps_completed() {
    let fleet = Fleet::start(3);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'touch \"$ROOT/app\"', undo: 'rm \"$ROOT/app\" && touch \"$ROOT/install-undone\"' }
      - { name: switch, run: 'if [ \"$SLIPWAY_HOST\" = host2 ]; then echo no space left >&2; exit 5; fi; touch \"$ROOT/switched\"', undo: 'rm \"$ROOT/switched\" && touch \"$ROOT/switch-undone\"' }
",
    );
    // One host at a time, so the order is known: host1 switches, host2 fails, host3 is
    // never started.
    let spec = std::fs::read_to_string(dir.join("release.yaml"))
        .unwrap()
        .replace("parallelism: 2", "parallelism: 1");
    std::fs::write(dir.join("release.yaml"), spec).unwrap();
    let o = deploy(&dir);
    assert_eq!(o.status.code(), Some(4), "rolled back: {o:?}");
    for root in &roots {
        // The install step completed everywhere and was undone everywhere.
        assert!(!root.join("app").exists());
        assert!(root.join("install-undone").exists(), "{}", root.display());
        assert!(!root.join("switched").exists());
    }
    assert!(roots[0].join("switch-undone").exists());
    assert!(!roots[1].join("switch-undone").exists());
    assert!(!roots[2].join("switch-undone").exists());

    let s = status(&dir);
    assert_eq!(s["run"]["state"], "rolled_back", "{s:#}");
    assert_eq!(
        host_results(&s, "web/switch"),
        vec![
            t("apply", "host1", "ran"),
            t("apply", "host2", "failed"),
            t("apply", "host3", "skipped"),
            t("undo", "host1", "ran"),
        ],
        "{s:#}"
    );
    let failed = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["result"] == "failed")
        .unwrap();
    assert_eq!(failed["exit_code"], 5);
    assert!(
        failed["stderr"].as_str().unwrap().contains("no space left"),
        "{failed}"
    );
    // The engine's rollback undid `install` on every host, each host's outcome journaled.
    let mut undo: Vec<_> = host_results(&s, "web/install")
        .into_iter()
        .filter(|r| r.0 == "undo")
        .collect();
    undo.sort();
    assert_eq!(
        undo,
        vec![
            t("undo", "host1", "ran"),
            t("undo", "host2", "ran"),
            t("undo", "host3", "ran"),
        ],
        "{s:#}"
    );
}

#[test]
fn a_changed_host_key_is_refused_before_any_run_or_step() {
    let mut fleet = Fleet::start(3);
    fleet.rekey(1);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'touch \"$ROOT/app\"' }
",
    );
    let o = deploy(&dir);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    // With `--output json` the error is a JSON document on stdout.
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        err.contains("host `host2`") && err.contains("HOST KEY CHANGED"),
        "{err}"
    );
    assert!(err.contains("no run was started"), "{err}");
    for root in &roots {
        assert!(!root.join("app").exists());
    }
    let o = run(&dir, &["history", "--output", "json"]);
    let history = String::from_utf8_lossy(&o.stdout);
    assert!(
        !history.contains("\"fleet\""),
        "a run was created: {history}"
    );
}

/// `slipway` SIGKILLed while a step runs on the hosts: the attempts there finish on their
/// own, and `slipway resume` observes them (waiting for their locks) instead of running
/// the step again: each host's side effect happens exactly once. (An attempt killed by
/// its closed output pipe after its side effect, before its marker, would be re-applied
/// and count twice.)
#[test]
fn slipway_killed_mid_step_then_resumed_runs_the_step_once_per_host() {
    let fleet = Fleet::start(2);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'touch \"$ROOT/started\"; sleep 1; echo x >> \"$ROOT/count\"; echo done' }
",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}", dir.join("store.db").display()),
        )
        .env("NO_COLOR", "1")
        .args(["deploy", "--env", "fleet", "-f"])
        .arg(dir.join("release.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !roots.iter().all(|r| r.join("started").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started on every host"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "slipway ended before the step started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let s = status(&dir);
    let id = s["run"]["id"].as_str().unwrap().to_owned();
    assert_ne!(s["run"]["state"], "succeeded", "{s:#}");
    let o = run(&dir, &["resume", &id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    for root in &roots {
        assert_eq!(
            std::fs::read_to_string(root.join("count")).unwrap(),
            "x\n",
            "{}",
            root.display()
        );
    }
    assert_eq!(status(&dir)["run"]["state"], "succeeded");
}

/// One approval required on the fleet environment of `dir`'s spec; the spec's path.
pub(crate) fn requiring_an_approval(dir: &Path) -> String {
    let spec_path = dir.join("release.yaml");
    let spec = std::fs::read_to_string(&spec_path)
        .unwrap()
        .replace("  fleet:\n", "  fleet:\n    approvals: { required: 1 }\n");
    std::fs::write(&spec_path, spec).unwrap();
    spec_path.display().to_string()
}

/// A run of `spec` (see [`requiring_an_approval`]) that `alice` deployed with `--no-wait`
/// (it waits for the approval) and `bob` approved, access control being on in `dir`'s
/// store (approvals need two verified people); nothing ran on the hosts yet. The people
/// (`alice` deploys) and the run.
pub(crate) fn approved_run(dir: &Path, spec: &str) -> (crate::People, String) {
    let mut people = crate::People::new(
        &format!("sqlite://{}", dir.join("store.db").display()),
        "admin",
    );
    people
        .add("alice", "deployer", "fleet")
        .add("bob", "approver", "fleet");
    let o = people
        .cmd("alice")
        .args(["deploy", "--env", "fleet", "--no-wait", "-f", spec])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "waits for an approval: {o:?}");
    let st: serde_json::Value =
        serde_json::from_str(&people.ok("admin", &["status", "--output", "json"])).unwrap();
    let id = st["run"]["id"].as_str().unwrap().to_owned();
    people.ok("bob", &["approve", &id]);
    (people, id)
}

/// Whether the completion marker of some step of some run is on the host (a file of the
/// run's marker directory named by its key: no dot, unlike `.lock`, `.out`, `.err` and
/// `.host-failed`).
fn has_marker(root: &Path) -> bool {
    let Ok(runs) = std::fs::read_dir(root.join("state/markers")) else {
        return false;
    };
    runs.flatten().any(|run| {
        std::fs::read_dir(run.path()).is_ok_and(|files| {
            files
                .flatten()
                .any(|f| !f.file_name().to_string_lossy().contains('.'))
        })
    })
}

/// The crash window between a step's effect and the journal: `slipway` is stopped
/// (SIGSTOP) while the step runs, so it cannot learn of its end; the step then finishes
/// on every host and writes its completion marker, and only then is `slipway` SIGKILLed.
/// The run's journal never saw the step succeed; `slipway resume` finds the markers and
/// does not run the step again: each host's effect happened exactly once.
#[test]
fn slipway_killed_after_the_marker_before_the_journal_does_not_run_the_step_again() {
    let fleet = Fleet::start(2);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - name: install
        timeout: 60s
        run: 'touch \"$ROOT/started\"; while [ ! -e \"$ROOT/go\" ]; do sleep 0.05; done; echo x >> \"$ROOT/count\"; echo done'
",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}", dir.join("store.db").display()),
        )
        .env("NO_COLOR", "1")
        .args(["deploy", "--env", "fleet", "-f"])
        .arg(dir.join("release.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} failed");
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !roots.iter().all(|r| r.join("started").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started on every host"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    signal("-STOP");
    for root in &roots {
        std::fs::write(root.join("go"), "").unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !roots.iter().all(|r| has_marker(r)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never wrote its marker on every host"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    signal("-KILL");
    child.wait().unwrap();
    let s = status(&dir);
    let id = s["run"]["id"].as_str().unwrap().to_owned();
    assert_ne!(s["run"]["state"], "succeeded", "{s:#}");
    let o = run(&dir, &["resume", &id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    for root in &roots {
        assert_eq!(
            std::fs::read_to_string(root.join("count")).unwrap(),
            "x\n",
            "{}",
            root.display()
        );
    }
    assert_eq!(status(&dir)["run"]["state"], "succeeded");
}

/// The inventory (which hosts, as whom) is pinned into the plan by its sha256: editing it
/// makes another plan (another digest, so approvals of the old one do not carry over),
/// and a run made with the old one refuses to go on until the file is restored.
#[test]
fn the_inventory_is_pinned_into_the_plan_and_a_run_refuses_an_edited_one() {
    let fleet = Fleet::start(2);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'touch \"$ROOT/app\"' }
",
    );
    let spec = requiring_an_approval(&dir);
    let plan = |dir: &Path| -> serde_json::Value {
        let o = run(
            dir,
            &["plan", "--env", "fleet", "--output", "json", "-f", &spec],
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let inventory = dir.join("hosts.yaml");
    let original = std::fs::read(&inventory).unwrap();
    let before = plan(&dir);
    let o = std::process::Command::new("sha256sum")
        .arg(&inventory)
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        before["target_files"]["hosts.yaml"],
        sha.as_str(),
        "{before:#}"
    );

    let (people, id) = approved_run(&dir, &spec);
    let as_user = |u: &str, args: &[&str]| people.cmd(u).args(args).output().unwrap();

    // Someone adds a host after the approval.
    let mut edited = original.clone();
    edited.extend_from_slice(b"# edited after approval\n");
    std::fs::write(&inventory, &edited).unwrap();
    assert_ne!(plan(&dir)["digest"], before["digest"]);
    let o = as_user("alice", &["resume", &id, "--no-wait"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hosts.yaml") && err.contains("changed since plan"),
        "{err}"
    );
    assert!(roots.iter().all(|r| !r.join("app").exists()));

    std::fs::write(&inventory, &original).unwrap();
    let o = as_user("alice", &["resume", &id, "--no-wait"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(roots.iter().all(|r| r.join("app").exists()));
}

/// Sets `batch` and `max_failures` on the fleet environment of `dir`'s spec.
fn with_waves(dir: &Path, waves: &str) {
    let spec = std::fs::read_to_string(dir.join("release.yaml"))
        .unwrap()
        .replace("parallelism: 2", &format!("parallelism: 2, {waves}"));
    std::fs::write(dir.join("release.yaml"), spec).unwrap();
}

#[test]
fn a_host_failing_within_the_budget_is_left_behind_and_the_deploy_succeeds() {
    let fleet = Fleet::start(4);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'if [ \"$SLIPWAY_HOST\" = host3 ]; then echo disk full >&2; exit 6; fi; touch \"$ROOT/app\"', undo: 'rm \"$ROOT/app\"' }
  edge:
    depends_on: [web]
    steps:
      - { name: switch, run: 'touch \"$ROOT/switched\"', undo: 'rm \"$ROOT/switched\"' }
",
    );
    with_waves(&dir, "batch: \"50%\", max_failures: 1");
    // The plan shows the waves without contacting any host.
    let spec = dir.join("release.yaml").display().to_string();
    let p = run(
        &dir,
        &["plan", "--env", "fleet", "--output", "json", "-f", &spec],
    );
    let plan: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let waves = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "ssh-waves")
        .unwrap_or_else(|| panic!("no ssh-waves finding: {plan:#}"));
    assert!(
        waves["message"].as_str().unwrap().contains(
            "4 hosts in 2 waves of up to 2 (at most 2 at once), failure budget 1 host: wave 1: host1, host2; wave 2: host3, host4"
        ),
        "{waves}"
    );

    let o = deploy(&dir);
    assert_eq!(o.status.code(), Some(0), "within the budget: {o:?}");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["state"], "succeeded", "{out:#}");
    assert_eq!(out["failed_hosts"], serde_json::json!(["host3"]), "{out:#}");
    for i in [0, 1, 3] {
        assert!(roots[i].join("app").exists() && roots[i].join("switched").exists());
    }
    // host3 failed `install` and was left out of `switch` (a step of a later wave: the
    // engine runs the steps of one wave at once).
    let s = status(&dir);
    assert!(
        !roots[2].join("app").exists() && !roots[2].join("switched").exists(),
        "{s:#}"
    );

    let s = status(&dir);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(s["failed_hosts"], serde_json::json!(["host3"]), "{s:#}");
    assert!(
        host_results(&s, "web/install").contains(&t("apply", "host3", "failed")),
        "{s:#}"
    );
    // Hosts of a wave report as they finish; sorted to compare.
    let mut switch = host_results(&s, "edge/switch");
    switch.sort();
    assert_eq!(
        switch,
        vec![
            t("apply", "host1", "ran"),
            t("apply", "host2", "ran"),
            t("apply", "host4", "ran"),
        ],
        "{s:#}"
    );
}

#[test]
fn failures_over_the_budget_roll_the_deploy_back() {
    let fleet = Fleet::start(4);
    let (dir, roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'case $SLIPWAY_HOST in host1|host2) echo broken >&2; exit 6;; esac; touch \"$ROOT/app\"', undo: 'rm \"$ROOT/app\" && touch \"$ROOT/undone\"' }
",
    );
    with_waves(&dir, "batch: 2, max_failures: 1");
    let o = deploy(&dir);
    assert_eq!(o.status.code(), Some(4), "rolled back: {o:?}");
    // Both hosts of the first wave failed: the second wave was never started.
    for root in &roots {
        assert!(!root.join("app").exists() && !root.join("undone").exists());
    }
    let s = status(&dir);
    assert_eq!(s["run"]["state"], "rolled_back", "{s:#}");
    // Hosts of a wave report as they finish; sorted to compare.
    let mut results = host_results(&s, "web/install");
    results.sort();
    assert_eq!(
        results,
        vec![
            t("apply", "host1", "failed"),
            t("apply", "host2", "failed"),
            t("apply", "host3", "skipped"),
            t("apply", "host4", "skipped"),
        ],
        "{s:#}"
    );
}

/// Poll (at most `within`; once for zero) until no host runs a process whose command line
/// starts with `prefix`; the ones left then, by host.
pub(crate) fn left_after(
    fleet: &Fleet,
    prefix: &str,
    within: std::time::Duration,
) -> Vec<(String, usize)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = fleet.processes(prefix);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A deploy ends its sessions before it exits, whether the run succeeded or rolled back:
/// every host's step helper is gone when `slipway deploy` has exited (it waited for each
/// helper's channel to end, which sshd signals only after the helper exited), and the
/// hosts' sshd connection processes end within 2 s. (Left to the process's exit, the
/// helpers and sessions of one run lingered into the next run's logins: on the old code
/// the helpers were still there when the deploy had exited.)
#[test]
fn a_deploy_leaves_no_step_helper_or_session_behind_on_the_hosts() {
    let fleet = Fleet::start(10);
    let (dir, _roots) = setup(
        &fleet,
        "  web:
    steps:
      - { name: install, run: 'echo 1 > \"$ROOT/app.txt\"', undo: 'rm -f \"$ROOT/app.txt\"' }
      - { name: check, run: 'test -e \"$ROOT/app.txt\" && test \"$SLIPWAY_HOST\" != \"$FAIL_ON\"' }
",
    );
    let within = std::time::Duration::from_secs(2);
    let hosts = std::fs::read_to_string(dir.join("hosts.yaml")).unwrap();
    for (fail_on, code) in [("nobody", 0), ("host2", 4)] {
        std::fs::write(
            dir.join("hosts.yaml"),
            hosts.replace("env: {", &format!("env: {{ FAIL_ON: {fail_on}, ")),
        )
        .unwrap();
        let o = deploy(&dir);
        assert_eq!(o.status.code(), Some(code), "{o:?}");
        assert_eq!(
            left_after(&fleet, "slipway-step-", std::time::Duration::ZERO),
            vec![],
            "step helpers left after the deploy that failed on {fail_on}"
        );
        assert_eq!(
            left_after(&fleet, "sshd: ", within),
            vec![],
            "sshd connections left after the deploy that failed on {fail_on}"
        );
    }
}
