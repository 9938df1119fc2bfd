//! The ssh target against real sshd processes (tests/sshd.rs): inventory errors, strict
//! host-key checking (unknown and changed keys), command execution with env, bounded
//! output, timeouts, and the target's apply/observe/undo on several hosts.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use slipway_engine::{Applied, Observation, StepContext, Target, TargetError};
use slipway_model::plan::StepAction;
use slipway_model::spec::{ExecStep, HostCount};
use slipway_providers::exec::OUTPUT_LIMIT;
use slipway_providers::ssh::{self, Inventory, SshError, SshTarget};

use crate::sshd::{Fleet, Isolation, fingerprint};

fn inventory(fleet: &Fleet, extra: impl Fn(usize) -> String) -> Inventory {
    let path = fleet.dir.join("inventory.yaml");
    std::fs::write(&path, fleet.inventory(extra)).unwrap();
    Inventory::load(&path).unwrap()
}

fn endpoint(fleet: &Fleet, i: usize) -> ssh::Endpoint {
    let inv = inventory(fleet, |_| String::new());
    SshTarget::new(&inv, None, None, None).unwrap().endpoints()[i].clone()
}

fn ctx(
    run: &str,
    step: &str,
) -> (
    StepContext,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        StepContext {
            run_id: run.into(),
            step_id: format!("web/{step}"),
            key: format!("key-{step}"),
            attempt: 1,
            progress: Some(tx),
            prior: Vec::new(),
        },
        rx,
    )
}

fn exec_step(run: &str, undo: Option<&str>) -> StepAction {
    StepAction::Exec(ExecStep {
        name: "install".into(),
        run: run.into(),
        creates: None,
        unless: None,
        undo: undo.map(str::to_owned),
        timeout: Some("30s".into()),
    })
}

fn reports(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    while let Ok(r) = rx.try_recv() {
        v.push(r);
    }
    v
}

fn load_err(dir: &Path, text: &str) -> String {
    let p = dir.join("inv.yaml");
    std::fs::write(&p, text).unwrap();
    Inventory::load(&p).unwrap_err().to_string()
}

#[test]
fn inventory_errors_name_the_file_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path(), "hosts:\n  - name: a\n    address: 10.0.0.1\n");
    assert!(
        e.contains("inv.yaml") && e.contains("`known_hosts` is missing") && e.contains("fix:"),
        "{e}"
    );
    let e = load_err(
        dir.path(),
        "known_hosts: kh\nhosts:\n  - name: a\n    address: 10.0.0.1\ngroups:\n  web: [a, b]\n",
    );
    assert!(
        e.contains("`groups.web` names host `b`") && e.contains("hosts: a"),
        "{e}"
    );
    let e = load_err(
        dir.path(),
        "known_hosts: kh\nhosts:\n  - name: a\n    adress: 10.0.0.1\n",
    );
    assert!(e.contains("adress") && e.contains("fix:"), "{e}");
    let e = load_err(
        dir.path(),
        "known_hosts: kh\nhosts:\n  - name: a\n    address: x\n  - name: a\n    address: y\n",
    );
    assert!(e.contains("`hosts[1].name` `a` is used twice"), "{e}");
    let e = load_err(
        dir.path(),
        "known_hosts: kh\nhosts:\n  - name: a\n    address: x\n    env: { 'X; rm -rf ~': 1 }\n",
    );
    assert!(
        e.contains("`hosts[0].env`") && e.contains("not a variable name"),
        "{e}"
    );
    let e = load_err(
        dir.path(),
        "known_hosts: kh\nconnect_parallelism: 0\nhosts:\n  - name: a\n    address: x\n",
    );
    assert!(
        e.contains("`connect_parallelism` is 0") && e.contains("fix:"),
        "{e}"
    );
    let p = dir.path().join("ok.yaml");
    std::fs::write(&p, "known_hosts: kh\nhosts:\n  - name: a\n    address: x\n").unwrap();
    let inv = Inventory::load(&p).unwrap();
    let e = inv.select(Some("db")).unwrap_err().to_string();
    assert!(
        e.contains("no group `db`") && e.contains("target.ssh.group"),
        "{e}"
    );
    let e = SshTarget::new(&inv, None, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("host `a` has no user"), "{e}");
    assert_eq!(inv.known_hosts, dir.path().join("kh"));
}

#[tokio::test]
async fn runs_a_command_with_env_and_captures_output_and_status() {
    let fleet = Fleet::start(1);
    let s = ssh::connect(&endpoint(&fleet, 0)).await.unwrap();
    let (out, timed_out) = s
        .run(
            "echo \"$GREETING\"; echo oops >&2; exit 3",
            &[("GREETING".into(), "it's a 'quoted' $value".into())],
            Duration::from_secs(20),
            OUTPUT_LIMIT,
        )
        .await
        .unwrap();
    assert!(!timed_out);
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.stdout, "it's a 'quoted' $value\n");
    assert_eq!(out.stderr, "oops\n");
    assert!(!out.truncated);

    // Output is bounded: the tail is kept.
    let (out, _) = s
        .run(
            "head -c 100000 /dev/zero | tr '\\0' a; echo END",
            &[],
            Duration::from_secs(20),
            OUTPUT_LIMIT,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), OUTPUT_LIMIT);
    assert!(
        out.stdout.ends_with("aaa\nEND\n") || out.stdout.ends_with("aEND\n"),
        "{}",
        &out.stdout[out.stdout.len() - 10..]
    );

    // A command past its timeout is cut off with no exit status.
    let (out, timed_out) = s
        .run(
            "echo started; exec sleep 8",
            &[],
            Duration::from_millis(1500),
            OUTPUT_LIMIT,
        )
        .await
        .unwrap();
    assert!(timed_out);
    assert_eq!(out.exit_code, None);
    assert_eq!(out.stdout, "started\n");
    s.close().await;
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_naming_host_fingerprint_and_fix() {
    let fleet = Fleet::start(1);
    let mut ep = endpoint(&fleet, 0);
    let empty = fleet.dir.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    ep.known_hosts = empty.clone();
    let e = ssh::connect(&ep).await.unwrap_err();
    let SshError::HostKey(msg) = &e else {
        panic!("expected a host-key refusal, got {e:?}");
    };
    let fp = fingerprint(&fleet.hosts[0].host_key.with_extension("pub"));
    assert!(msg.contains("host `host1`"), "{msg}");
    assert!(msg.contains(&fp), "{msg} lacks {fp}");
    assert!(
        msg.contains("unknown") && msg.contains("never trusted on first use"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("ssh-keyscan -p {} 127.0.0.1", fleet.hosts[0].port)),
        "{msg}"
    );
    // Nothing was learnt: the file is still empty.
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");

    // A missing known_hosts file is refused too.
    ep.known_hosts = fleet.dir.join("no-such-file");
    let e = ssh::connect(&ep).await.unwrap_err().to_string();
    assert!(e.contains("does not exist") && e.contains(&fp), "{e}");
}

#[tokio::test]
async fn a_changed_host_key_is_refused_naming_both_fingerprints() {
    let mut fleet = Fleet::start(2);
    // Before: accepted.
    ssh::connect(&endpoint(&fleet, 1))
        .await
        .unwrap()
        .close()
        .await;
    fleet.rekey(1);
    let e = ssh::connect(&endpoint(&fleet, 1)).await.unwrap_err();
    let SshError::HostKey(msg) = &e else {
        panic!("expected a host-key refusal, got {e:?}");
    };
    let new_fp = fingerprint(&fleet.hosts[1].host_key.with_extension("pub"));
    let old_fp = fingerprint(&fleet.hosts[1].dir.join("old_host_key.pub"));
    assert_ne!(new_fp, old_fp);
    assert!(
        msg.contains("host `host2`") && msg.contains("HOST KEY CHANGED"),
        "{msg}"
    );
    assert!(msg.contains(&new_fp) && msg.contains(&old_fp), "{msg}");
    assert!(msg.contains("ssh-keygen -R"), "{msg}");
    // The other host is unaffected.
    ssh::connect(&endpoint(&fleet, 0))
        .await
        .unwrap()
        .close()
        .await;
}

/// Per-host directories on this machine stand for the hosts' file systems.
fn host_dirs(fleet: &Fleet) -> (Inventory, Vec<std::path::PathBuf>) {
    let roots: Vec<_> = (0..fleet.hosts.len())
        .map(|i| {
            let d = fleet.dir.join(format!("root{i}"));
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let r = roots.clone();
    let inv = inventory(fleet, move |i| {
        format!(
            "    workdir: {}\n    state_dir: {}/state\n    env: {{ ROOT: {} }}\n",
            r[i].display(),
            r[i].display(),
            r[i].display()
        )
    });
    (inv, roots)
}

/// One sshd host, its directory ([`host_dirs`]) and a target over it: what the
/// single-host tests start from. Keep `fleet` bound (`_fleet`): dropped, it stops the host.
struct OneHost {
    fleet: Fleet,
    inv: Inventory,
    root: std::path::PathBuf,
    target: SshTarget,
}

fn one_host() -> OneHost {
    let fleet = Fleet::start(1);
    let (inv, mut roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, None, None, None).unwrap();
    OneHost {
        fleet,
        inv,
        root: roots.remove(0),
        target,
    }
}

#[tokio::test]
async fn the_target_applies_observes_and_undoes_on_every_host() {
    let fleet = Fleet::start(3);
    let (inv, roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, Some("all"), None, Some(2)).unwrap();
    let action = exec_step(
        "echo \"$SLIPWAY_HOST\" > app.txt && echo installed on $SLIPWAY_HOST",
        Some("rm app.txt"),
    );
    let (c, mut rx) = ctx("run1", "install");
    assert!(matches!(
        target.observe(&c, &action).await.unwrap(),
        Observation::NotDone { .. }
    ));
    let Applied::Ran { output } = target.apply(&c, &action).await.unwrap() else {
        panic!("expected the step to run");
    };
    for (i, root) in roots.iter().enumerate() {
        let host = format!("host{}", i + 1);
        assert_eq!(
            std::fs::read_to_string(root.join("app.txt")).unwrap(),
            format!("{host}\n")
        );
        assert!(
            output
                .stdout
                .contains(&format!("[{host}] installed on {host}")),
            "{}",
            output.stdout
        );
        assert!(root.join("state/markers/run1/key-install").exists());
    }
    let r = reports(&mut rx);
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(
        r.iter()
            .all(|v| v["event"] == "ssh_host" && v["result"] == "ran"),
        "{r:?}"
    );

    // Exactly once: a re-apply finds every marker and runs nothing.
    std::fs::remove_file(roots[0].join("app.txt")).unwrap();
    let again = target.apply(&c, &action).await.unwrap();
    assert!(matches!(again, Applied::AlreadyDone { .. }), "{again:?}");
    assert!(!roots[0].join("app.txt").exists());
    std::fs::write(roots[0].join("app.txt"), "host1\n").unwrap();
    assert!(matches!(
        target.observe(&c, &action).await.unwrap(),
        Observation::Done { .. }
    ));

    // Undo runs on every host with a marker and clears it.
    target.undo(&c, &action).await.unwrap();
    for root in &roots {
        assert!(!root.join("app.txt").exists());
        assert!(!root.join("state/markers/run1/key-install").exists());
    }
    assert!(matches!(
        target.observe(&c, &action).await.unwrap(),
        Observation::NotDone { .. }
    ));
}

#[tokio::test]
async fn a_failing_host_fails_the_step_and_undoes_where_it_completed() {
    let fleet = Fleet::start(3);
    let (inv, roots) = host_dirs(&fleet);
    // One host at a time, in order: host1 completes, host2 fails, host3 never starts.
    let target = SshTarget::new(&inv, None, None, Some(1)).unwrap();
    let action = exec_step(
        "if [ \"$SLIPWAY_HOST\" = host2 ]; then echo disk full >&2; exit 7; fi; touch app.txt",
        Some("rm app.txt && touch undone.txt"),
    );
    let (c, mut rx) = ctx("run2", "install");
    let e = target.apply(&c, &action).await.unwrap_err();
    let TargetError::Failed { message, output } = &e else {
        panic!("expected a failed step, got {e:?}");
    };
    assert!(
        message.contains("host `host2`") && message.contains("exited with status 7"),
        "{message}"
    );
    assert!(
        message.contains("undone on the hosts where it had completed: host1"),
        "{message}"
    );
    assert!(message.contains("not started on: host3"), "{message}");
    assert!(output.stderr.contains("[host2] disk full"), "{output:?}");
    assert!(roots[0].join("undone.txt").exists() && !roots[0].join("app.txt").exists());
    assert!(!roots[1].join("app.txt").exists() && !roots[1].join("undone.txt").exists());
    assert!(!roots[2].join("app.txt").exists() && !roots[2].join("undone.txt").exists());
    let r = reports(&mut rx);
    let summary: Vec<(String, String, String)> = r
        .iter()
        .map(|v| {
            (
                v["phase"].as_str().unwrap().to_owned(),
                v["host"].as_str().unwrap().to_owned(),
                v["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        summary,
        vec![
            s("apply", "host1", "ran"),
            s("apply", "host2", "failed"),
            s("apply", "host3", "skipped"),
            s("undo", "host1", "ran"),
        ]
    );
}

#[tokio::test]
async fn a_changed_host_key_stops_the_step_before_any_host_runs_it() {
    let mut fleet = Fleet::start(3);
    fleet.rekey(2);
    let (inv, roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, None, None, Some(3)).unwrap();
    let (c, _rx) = ctx("run3", "install");
    let e = target
        .apply(&c, &exec_step("touch app.txt", None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nothing was run on any host")
            && e.contains("host `host3`")
            && e.contains("HOST KEY CHANGED"),
        "{e}"
    );
    for root in &roots {
        assert!(!root.join("app.txt").exists());
    }
}

#[tokio::test]
async fn guards_skip_hosts_where_the_effect_is_already_there() {
    let fleet = Fleet::start(2);
    let (inv, roots) = host_dirs(&fleet);
    std::fs::write(roots[0].join("app.txt"), "pre-existing").unwrap();
    let target = SshTarget::new(&inv, None, None, Some(2)).unwrap();
    let action = StepAction::Exec(ExecStep {
        name: "install".into(),
        run: "echo new > app.txt".into(),
        creates: Some("app.txt".into()),
        unless: None,
        undo: Some("rm app.txt".into()),
        timeout: None,
    });
    let (c, _rx) = ctx("run4", "install");
    assert!(matches!(
        target.apply(&c, &action).await.unwrap(),
        Applied::Ran { .. }
    ));
    assert_eq!(
        std::fs::read_to_string(roots[0].join("app.txt")).unwrap(),
        "pre-existing"
    );
    assert_eq!(
        std::fs::read_to_string(roots[1].join("app.txt")).unwrap(),
        "new\n"
    );
    // Observed done everywhere (one channel per host: marker and guard in one shell).
    let Observation::Done { evidence } = target.observe(&c, &action).await.unwrap() else {
        panic!("not observed done");
    };
    assert!(
        evidence.contains("host1: creates: app.txt exists")
            && evidence.contains("host2: completion marker"),
        "{evidence}"
    );
    // Undo reverses what this run did: host1's file predates it and stays.
    target.undo(&c, &action).await.unwrap();
    assert!(roots[0].join("app.txt").exists());
    assert!(!roots[1].join("app.txt").exists());
}

/// `unless` is judged on the host in the step's own attempt (under its lock, no channel
/// of its own): where it exits 0 the command does not run and no marker is written, so
/// an undo leaves that host alone.
#[tokio::test]
async fn an_unless_guard_skips_hosts_in_the_same_attempt() {
    let fleet = Fleet::start(2);
    let (inv, roots) = host_dirs(&fleet);
    std::fs::write(roots[0].join("app.txt"), "pre-existing").unwrap();
    let target = SshTarget::new(&inv, None, None, Some(2)).unwrap();
    let action = StepAction::Exec(ExecStep {
        name: "install".into(),
        run: "echo new > app.txt; echo x >> runs".into(),
        creates: None,
        unless: Some("echo noise; grep -q pre-existing app.txt".into()),
        undo: Some("rm app.txt".into()),
        timeout: Some("30s".into()),
    });
    let (c, mut rx) = ctx("run4u", "install");
    assert!(matches!(
        target.apply(&c, &action).await.unwrap(),
        Applied::Ran { .. }
    ));
    assert!(!roots[0].join("runs").exists());
    assert_eq!(
        std::fs::read_to_string(roots[1].join("runs")).unwrap(),
        "x\n"
    );
    assert!(!roots[0].join("state/markers/run4u/key-install").exists());
    assert!(roots[1].join("state/markers/run4u/key-install").exists());
    let details: Vec<String> = reports(&mut rx)
        .iter()
        .filter(|r| r["host"] == "host1")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("unless: `echo noise; grep -q pre-existing app.txt` exited 0")),
        "{details:?}"
    );
    // Every host done now: host1 by its guard, host2 by its marker.
    let Observation::Done { evidence } = target.observe(&c, &action).await.unwrap() else {
        panic!("not observed done");
    };
    assert!(
        evidence.contains("host1: unless: `echo noise; grep -q pre-existing app.txt` exited 0")
            && evidence.contains("host2: completion marker"),
        "{evidence}"
    );
    let again = target.apply(&c, &action).await.unwrap();
    assert!(matches!(again, Applied::AlreadyDone { .. }), "{again:?}");
    target.undo(&c, &action).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(roots[0].join("app.txt")).unwrap(),
        "pre-existing"
    );
    assert!(!roots[1].join("app.txt").exists());
}

/// An earlier attempt still holding the step's lock on the host (a dead slipway's,
/// still running) past the step's timeout: the new attempt is not started after slipway
/// stopped waiting for it, and the host fails naming why.
#[tokio::test]
async fn an_attempt_waits_for_the_lock_no_longer_than_the_timeout() {
    let fleet = Fleet::start(1);
    let (inv, roots) = host_dirs(&fleet);
    let dir = roots[0].join("state/markers/run8");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("key-install.lock");
    let held = roots[0].join("held");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .arg("sh")
        .arg("-c")
        .arg(format!("touch {}; sleep 60", held.display()))
        .spawn()
        .unwrap();
    wait_for(&held).await;
    let target = SshTarget::new(&inv, None, None, None).unwrap();
    let action = StepAction::Exec(ExecStep {
        name: "install".into(),
        run: "touch app.txt".into(),
        creates: None,
        unless: None,
        undo: None,
        timeout: Some("1s".into()),
    });
    let (c, _rx) = ctx("run8", "install");
    let e = target.apply(&c, &action).await.unwrap_err();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        e.to_string().contains("still held its lock") && e.to_string().contains("after 1s"),
        "{e}"
    );
    assert!(!roots[0].join("app.txt").exists());
    assert!(!dir.join("key-install").exists());
}

async fn wait_for(path: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// slipway dying mid-step drops the connection; the attempt on the host must neither be
/// hung up on nor killed by its closed output pipe, and `observe` must wait for it and
/// find its marker: the step ran exactly once.
#[tokio::test]
async fn an_attempt_outlives_a_dropped_connection_and_observe_waits_for_it() {
    let fleet = Fleet::start(1);
    let (inv, roots) = host_dirs(&fleet);
    // It writes output after the connection is gone.
    let action = exec_step(
        "touch started; sleep 1; echo still here; echo more >&2; echo x >> runs; touch app.txt",
        Some("rm app.txt"),
    );
    let (c, _rx) = ctx("run5", "install");
    let started = roots[0].join("started");
    {
        // This target (and its open sessions) is dropped mid-step, as when slipway dies.
        let target = SshTarget::new(&inv, None, None, None).unwrap();
        let apply = target.apply(&c, &action);
        tokio::pin!(apply);
        tokio::select! {
            r = &mut apply => panic!("the step finished before it was interrupted: {r:?}"),
            () = wait_for(&started) => {}
        }
    }
    let target = SshTarget::new(&inv, None, None, None).unwrap();
    let seen = target.observe(&c, &action).await.unwrap();
    assert!(matches!(seen, Observation::Done { .. }), "{seen:?}");
    assert!(roots[0].join("app.txt").exists());
    let again = target.apply(&c, &action).await.unwrap();
    assert!(matches!(again, Applied::AlreadyDone { .. }), "{again:?}");
    assert_eq!(
        std::fs::read_to_string(roots[0].join("runs")).unwrap(),
        "x\n"
    );
}

/// The same for an undo: slipway dying mid-undo drops the connection; the undo on the
/// host goes on (its own session, output in files), `observe_undo` waits for it and finds
/// it complete, and an undo run again changes nothing: it ran exactly once.
#[tokio::test]
async fn an_undo_outlives_a_dropped_connection_and_observe_undo_waits_for_it() {
    let fleet = Fleet::start(2);
    let (inv, roots) = host_dirs(&fleet);
    let action = exec_step(
        "echo x >> applied",
        Some("touch undo-started; sleep 1; echo still undoing; echo x >> undone"),
    );
    let (c, _rx) = ctx("run6", "install");
    let target = SshTarget::new(&inv, None, None, None).unwrap();
    target.apply(&c, &action).await.unwrap();
    let (c2, _rx2) = ctx("run6", "install");
    let seen = target.observe_undo(&c2, &action).await.unwrap();
    assert!(matches!(seen, Observation::NotDone { .. }), "{seen:?}");
    drop(target);
    {
        let target = SshTarget::new(&inv, None, None, None).unwrap();
        let undo = target.undo(&c, &action);
        tokio::pin!(undo);
        tokio::select! {
            r = &mut undo => panic!("the undo finished before it was interrupted: {r:?}"),
            () = async {
                for root in &roots {
                    wait_for(&root.join("undo-started")).await;
                }
            } => {}
        }
    }
    let target = SshTarget::new(&inv, None, None, None).unwrap();
    let seen = target.observe_undo(&c, &action).await.unwrap();
    assert!(matches!(seen, Observation::Done { .. }), "{seen:?}");
    target.undo(&c, &action).await.unwrap();
    for root in &roots {
        assert_eq!(std::fs::read_to_string(root.join("undone")).unwrap(), "x\n");
        assert_eq!(
            std::fs::read_to_string(root.join("applied")).unwrap(),
            "x\n"
        );
    }
}

#[tokio::test]
async fn a_step_past_its_timeout_is_killed_on_the_host_and_leaves_no_marker() {
    let OneHost {
        fleet: _fleet,
        root,
        target,
        ..
    } = one_host();
    let action = StepAction::Exec(ExecStep {
        name: "install".into(),
        run: "echo begun; sleep 30; touch app.txt".into(),
        creates: None,
        unless: None,
        undo: None,
        timeout: Some("1s".into()),
    });
    let (c, _rx) = ctx("run6", "install");
    let e = target.apply(&c, &action).await.unwrap_err();
    let TargetError::Failed { message, output } = &e else {
        panic!("expected a failed step, got {e:?}");
    };
    assert!(message.contains("timed out after 1s"), "{message}");
    assert!(output.stdout.contains("[host1] begun"), "{output:?}");
    assert!(!root.join("state/markers/run6/key-install").exists());
    // Killed there: the sleep did not go on to create the file (its lock is free again).
    assert!(matches!(
        target.observe(&c, &action).await.unwrap(),
        Observation::NotDone { .. }
    ));
    assert!(!root.join("app.txt").exists());
}

/// One handshake per host per run, not per step: a target keeps its sessions between
/// operations, and replaces one the host dropped.
#[tokio::test]
async fn sessions_are_kept_between_steps_and_replaced_when_the_host_drops_them() {
    let fleet = Fleet::start(2);
    let (inv, roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, None, None, Some(2)).unwrap();
    for step in ["one", "two", "three"] {
        let (c, _rx) = ctx("run7", step);
        let action = exec_step(&format!("touch {step}"), None);
        target.apply(&c, &action).await.unwrap();
        target.observe(&c, &action).await.unwrap();
    }
    assert_eq!(fleet.hosts[0].logins(), 1);
    assert_eq!(fleet.hosts[1].logins(), 1);

    fleet.hosts[0].drop_connections();
    let (c, _rx) = ctx("run7", "four");
    target
        .apply(&c, &exec_step("touch four", None))
        .await
        .unwrap();
    assert!(roots.iter().all(|r| r.join("four").exists()));
    assert_eq!(fleet.hosts[0].logins(), 2);
    assert_eq!(fleet.hosts[1].logins(), 1);
}

/// The reconnect rule, first half: a kept session whose host stopped answering without
/// closing the connection (its sshd processes stopped: nothing tells this side) is not
/// probed before the step; the step's channel does not open within `OPEN_TIMEOUT`, and
/// since no command was sent on it the session logs in again and the step runs there,
/// once.
#[tokio::test]
async fn a_step_whose_channel_does_not_open_logs_in_again_and_runs_once() {
    let fleet = Fleet::start(2);
    let (inv, roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, None, None, Some(2)).unwrap();
    let (c, _rx) = ctx("run10", "one");
    target
        .apply(&c, &exec_step("echo x >> one", None))
        .await
        .unwrap();
    let frozen = fleet.hosts[0].freeze_connections();
    assert!(!frozen.pids.is_empty(), "host1 has a connection to freeze");
    let (c, mut rx) = ctx("run10", "two");
    let action = exec_step("echo x >> two", None);
    let bound = ssh::OPEN_TIMEOUT + Duration::from_secs(60);
    let applied = tokio::time::timeout(bound, target.apply(&c, &action))
        .await
        .expect("the step waited on the frozen connection instead of logging in again")
        .unwrap();
    assert!(matches!(applied, Applied::Ran { .. }), "{applied:?}");
    let mut ran = summary(&reports(&mut rx));
    ran.sort();
    assert_eq!(
        ran,
        vec![
            ("apply".into(), "host1".into(), "ran".into()),
            ("apply".into(), "host2".into(), "ran".into()),
        ]
    );
    for root in &roots {
        assert_eq!(std::fs::read_to_string(root.join("one")).unwrap(), "x\n");
        assert_eq!(std::fs::read_to_string(root.join("two")).unwrap(), "x\n");
    }
    assert_eq!(fleet.hosts[0].logins(), 2);
    assert_eq!(fleet.hosts[1].logins(), 1);
    // The new session is kept: the next step logs in no more.
    let (c, _rx) = ctx("run10", "three");
    target
        .apply(&c, &exec_step("echo x >> three", None))
        .await
        .unwrap();
    assert_eq!(fleet.hosts[0].logins(), 2);
    drop(frozen);
}

/// The reconnect rule, second half: once the step's channel opened, a broken connection
/// is never a reason to run the step again: the host whose connection dropped while the
/// command ran fails the step (whether it took effect is not known here), the command
/// goes on to the end on the host, once, and its marker shows it done.
#[tokio::test]
async fn a_connection_dropped_after_the_channel_opened_does_not_start_the_step_again() {
    let OneHost {
        fleet,
        root,
        target,
        ..
    } = one_host();
    let action = exec_step("touch started; sleep 1; echo x >> runs", None);
    let (c, _rx) = ctx("run11", "install");
    let started = root.join("started");
    let apply = target.apply(&c, &action);
    tokio::pin!(apply);
    tokio::select! {
        r = &mut apply => panic!("the step finished before its connection dropped: {r:?}"),
        () = wait_for(&started) => {}
    }
    fleet.hosts[0].drop_connections();
    let e = apply.await.unwrap_err();
    assert!(matches!(e, TargetError::Failed { .. }), "{e:?}");
    // `observe` waits for the attempt still running on the host and finds its marker.
    let seen = target.observe(&c, &action).await.unwrap();
    assert!(matches!(seen, Observation::Done { .. }), "{seen:?}");
    assert_eq!(std::fs::read_to_string(root.join("runs")).unwrap(), "x\n");
    assert_eq!(fleet.hosts[0].logins(), 2);
}

fn waves_target(inv: &Inventory, parallelism: u32, batch: u32, max_failures: u32) -> SshTarget {
    SshTarget::new(inv, None, None, Some(parallelism))
        .unwrap()
        .with_waves(
            inv,
            Some(&HostCount::Hosts(batch)),
            Some(&HostCount::Hosts(max_failures)),
        )
        .unwrap()
}

fn summary(r: &[serde_json::Value]) -> Vec<(String, String, String)> {
    r.iter()
        .map(|v| {
            (
                v["phase"].as_str().unwrap().to_owned(),
                v["host"].as_str().unwrap().to_owned(),
                v["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_second_wave_starts_only_after_the_first_finished() {
    let fleet = Fleet::start(4);
    let (inv, _roots) = host_dirs(&fleet);
    // Four at once would be allowed; the waves of two must still go one after another.
    let target = waves_target(&inv, 4, 2, 0);
    assert_eq!(
        target.waves(),
        vec![vec!["host1", "host2"], vec!["host3", "host4"]]
    );
    let log = fleet.dir.join("order.log");
    let started = fleet.dir.join("started");
    std::fs::create_dir_all(&started).unwrap();
    // Each host logs its start; a host of the first wave waits (bounded) until both of
    // its wave have started — so they do run together — and lingers a moment, long
    // enough that a host of the second wave started too early would log in between.
    let action = exec_step(
        &format!(
            "echo \"start $SLIPWAY_HOST\" >> {log}; touch {started}/$SLIPWAY_HOST; \
             case $SLIPWAY_HOST in host1|host2) \
               for i in $(seq 100); do [ -e {started}/host1 ] && [ -e {started}/host2 ] && break; sleep 0.1; done; \
               [ -e {started}/host1 ] && [ -e {started}/host2 ] || exit 9; sleep 1;; \
             esac; echo \"end $SLIPWAY_HOST\" >> {log}",
            log = log.display(),
            started = started.display()
        ),
        None,
    );
    let (c, mut rx) = ctx("waves1", "install");
    let applied = target.apply(&c, &action).await.unwrap();
    assert!(matches!(applied, Applied::Ran { .. }), "{applied:?}");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let pos = |l: &str| {
        lines
            .iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("{l} not in {lines:?}"))
    };
    for first in ["host1", "host2"] {
        for second in ["host3", "host4"] {
            assert!(
                pos(&format!("end {first}")) < pos(&format!("start {second}")),
                "{second} started before {first} ended: {lines:?}"
            );
        }
    }
    let r = reports(&mut rx);
    let waves: Vec<(String, i64)> = r
        .iter()
        .map(|v| {
            (
                v["host"].as_str().unwrap().to_owned(),
                v["wave"].as_i64().unwrap(),
            )
        })
        .collect();
    for (host, wave) in &waves {
        let want = if host == "host1" || host == "host2" {
            1
        } else {
            2
        };
        assert_eq!(*wave, want, "{waves:?}");
    }
    assert_eq!(waves.len(), 4, "{r:?}");
}

#[tokio::test]
async fn a_host_failing_within_the_budget_is_left_out_of_later_steps() {
    let fleet = Fleet::start(4);
    let (inv, roots) = host_dirs(&fleet);
    let target = waves_target(&inv, 2, 2, 1);
    let install = exec_step(
        "if [ \"$SLIPWAY_HOST\" = host2 ]; then echo disk full >&2; exit 7; fi; touch app.txt",
        Some("rm app.txt"),
    );
    let (c, mut rx) = ctx("budget1", "install");
    let Applied::Ran { output } = target.apply(&c, &install).await.unwrap() else {
        panic!("expected the step to run");
    };
    assert!(
        output.stderr.contains("failed within the failure budget")
            && output.stderr.contains("host `host2`")
            && output.stderr.contains("[host2] disk full"),
        "{output:?}"
    );
    for i in [0, 2, 3] {
        assert!(roots[i].join("app.txt").exists(), "host{}", i + 1);
    }
    assert!(!roots[1].join("app.txt").exists());
    assert!(roots[1].join("state/markers/budget1/.host-failed").exists());
    assert_eq!(target.excluded_hosts(), vec!["host2"]);
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    let first = summary(&reports(&mut rx));
    assert!(first.contains(&s("apply", "host2", "failed")), "{first:?}");
    assert!(
        first.contains(&s("exclude", "host2", "excluded")),
        "{first:?}"
    );
    // The observe of the step does not wait for the host left out.
    assert!(matches!(
        target.observe(&c, &install).await.unwrap(),
        Observation::Done { .. }
    ));

    // The next step runs everywhere but host2.
    let (c2, mut rx2) = ctx("budget1", "start");
    let start = exec_step("touch started.txt", None);
    let Applied::Ran { output } = target.apply(&c2, &start).await.unwrap() else {
        panic!("expected the step to run");
    };
    assert!(output.stderr.contains("left out"), "{output:?}");
    for i in [0, 2, 3] {
        assert!(roots[i].join("started.txt").exists(), "host{}", i + 1);
    }
    assert!(!roots[1].join("started.txt").exists());
    // Hosts of a wave report as they finish; sorted to compare.
    let mut second = summary(&reports(&mut rx2));
    second.sort();
    assert_eq!(
        second,
        vec![
            s("apply", "host1", "ran"),
            s("apply", "host3", "ran"),
            s("apply", "host4", "ran"),
        ]
    );

    // A resumed run (a new target, nothing in memory) finds the mark on the host.
    let fresh = waves_target(&inv, 2, 2, 1);
    let (c3, mut rx3) = ctx("budget1", "migrate");
    let Applied::Ran { .. } = fresh
        .apply(&c3, &exec_step("touch migrated.txt", None))
        .await
        .unwrap()
    else {
        panic!("expected the step to run");
    };
    assert!(!roots[1].join("migrated.txt").exists());
    assert!(roots[0].join("migrated.txt").exists());
    let third = summary(&reports(&mut rx3));
    assert!(
        third.contains(&s("apply", "host2", "excluded")),
        "{third:?}"
    );
    assert_eq!(fresh.excluded_hosts(), vec!["host2"]);
}

#[tokio::test]
async fn failures_over_the_budget_fail_the_step_start_no_later_wave_and_undo() {
    // Wave 1: host1 fails, host2 completes (within the budget of 1). Wave 2: host3
    // fails (over it), host4 runs alongside. Wave 3 (host5) never starts.
    let fleet = Fleet::start(5);
    let (inv5, roots5) = host_dirs(&fleet);
    let target = waves_target(&inv5, 2, 2, 1);
    assert_eq!(target.waves().len(), 3);
    let action = exec_step(
        "case $SLIPWAY_HOST in host1|host3) echo broken >&2; exit 3;; esac; touch app.txt",
        Some("rm app.txt && touch undone.txt"),
    );
    let (c, mut rx) = ctx("budget2", "install");
    let e = target.apply(&c, &action).await.unwrap_err();
    let TargetError::Failed { message, .. } = &e else {
        panic!("expected a failed step, got {e:?}");
    };
    assert!(
        message.contains("2 hosts failed in this run, more than the failure budget of 1"),
        "{message}"
    );
    assert!(message.contains("not started on: host5"), "{message}");
    for i in [1, 3] {
        assert!(
            roots5[i].join("undone.txt").exists() && !roots5[i].join("app.txt").exists(),
            "host{}",
            i + 1
        );
    }
    assert!(!roots5[4].join("app.txt").exists() && !roots5[4].join("undone.txt").exists());
    let r = summary(&reports(&mut rx));
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert!(r.contains(&s("apply", "host5", "skipped")), "{r:?}");
    assert!(r.contains(&s("undo", "host2", "ran")), "{r:?}");
    assert!(r.contains(&s("undo", "host4", "ran")), "{r:?}");
    assert!(
        !r.iter()
            .any(|(p, h, _)| p == "undo" && (h == "host1" || h == "host3" || h == "host5")),
        "{r:?}"
    );
}

#[tokio::test]
async fn an_unreachable_host_counts_against_the_budget() {
    let fleet = Fleet::start(3);
    let (inv, roots) = host_dirs(&fleet);
    // host3's port now has nobody listening: connecting is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&inv.path).unwrap().replace(
        &format!("port: {}", fleet.hosts[2].port),
        &format!("port: {closed}"),
    );
    std::fs::write(&inv.path, text).unwrap();
    let inv = Inventory::load(&inv.path).unwrap();
    let action = exec_step("touch app.txt", None);

    // Without a budget nothing runs anywhere, as before.
    let strict = waves_target(&inv, 3, 3, 0);
    let e = strict.check_hosts().await.unwrap_err().to_string();
    assert!(e.contains("host3"), "{e}");
    let (c, _rx) = ctx("reach0", "install");
    let e = strict.apply(&c, &action).await.unwrap_err().to_string();
    assert!(e.contains("nothing was run on any host"), "{e}");
    assert!(!roots[0].join("app.txt").exists());

    // With a budget of 1 the others go on; host3 is reported failed and left out.
    let lenient = waves_target(&inv, 3, 3, 1);
    let warned = lenient.check_hosts().await.unwrap();
    assert_eq!(warned.len(), 1, "{warned:?}");
    let (c, mut rx) = ctx("reach1", "install");
    let Applied::Ran { output } = lenient.apply(&c, &action).await.unwrap() else {
        panic!("expected the step to run");
    };
    assert!(output.stderr.contains("unreachable"), "{output:?}");
    assert!(roots[0].join("app.txt").exists() && roots[1].join("app.txt").exists());
    assert_eq!(lenient.excluded_hosts(), vec!["host3"]);
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    let r = summary(&reports(&mut rx));
    assert!(r.contains(&s("apply", "host3", "failed")), "{r:?}");
    // The next step does not try it again.
    let (c2, _rx2) = ctx("reach1", "start");
    assert!(
        lenient
            .apply(&c2, &exec_step("touch started.txt", None))
            .await
            .is_ok()
    );
    assert!(roots[0].join("started.txt").exists());
}

/// The engine runs the steps of one wave at once: the budget is the run's, so two steps
/// each losing a different host are two failures, not one per step.
#[tokio::test]
async fn the_budget_holds_across_steps_running_at_once() {
    let fleet = Fleet::start(3);
    let (inv, _roots) = host_dirs(&fleet);
    let target = waves_target(&inv, 3, 3, 1);
    let fail_on = |h: &str| {
        exec_step(
            &format!("if [ \"$SLIPWAY_HOST\" = {h} ]; then exit 5; fi; true"),
            None,
        )
    };
    let (a, b) = (fail_on("host1"), fail_on("host2"));
    let (ca, _ra) = ctx("budget3", "a");
    let (cb, _rb) = ctx("budget3", "b");
    let (ra, rb) = tokio::join!(target.apply(&ca, &a), target.apply(&cb, &b));
    assert!(
        ra.is_err() || rb.is_err(),
        "two hosts failed with a budget of 1, yet both steps succeeded: {ra:?} {rb:?}"
    );
    let failed = ra.err().or(rb.err()).unwrap().to_string();
    assert!(
        failed.contains("2 hosts failed in this run, more than the failure budget of 1"),
        "{failed}"
    );
    assert_eq!(target.excluded_hosts(), vec!["host1", "host2"]);
}

#[test]
fn percentages_are_taken_of_the_group_rounded_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("known_hosts"), "").unwrap();
    let hosts: String = (1..=10)
        .map(|i| format!("  - {{ name: h{i}, address: 10.0.0.{i} }}\n"))
        .collect();
    let p = dir.path().join("inv.yaml");
    std::fs::write(
        &p,
        format!("known_hosts: known_hosts\nidentity: id\nuser: deploy\nhosts:\n{hosts}"),
    )
    .unwrap();
    let inv = Inventory::load(&p).unwrap();
    let pct = |s: &str| HostCount::Percent(s.into());
    let t = |batch: Option<HostCount>, max: Option<HostCount>| {
        SshTarget::new(&inv, None, None, None).unwrap().with_waves(
            &inv,
            batch.as_ref(),
            max.as_ref(),
        )
    };
    // 25% of 10 is 2.5: waves of 2.
    let w = t(Some(pct("25%")), None).unwrap().waves();
    assert_eq!(w.iter().map(Vec::len).collect::<Vec<_>>(), vec![2; 5]);
    // 5% of 10 rounds down to 0: a wave still holds one host.
    assert_eq!(t(Some(pct("5%")), None).unwrap().waves().len(), 10);
    // No batch: one wave of everything; 3 of 10 per wave: 3, 3, 3, 1.
    assert_eq!(t(None, None).unwrap().waves().len(), 1);
    let w = t(Some(HostCount::Hosts(3)), None).unwrap().waves();
    assert_eq!(w.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
    // 15% of 10 hosts may fail: 1.
    assert_eq!(t(None, Some(pct("15%"))).unwrap().max_failures(), 1);
    assert_eq!(t(None, None).unwrap().max_failures(), 0);
    // A budget that lets every host fail is refused, naming the fix.
    let e = t(None, Some(HostCount::Hosts(10))).unwrap_err().to_string();
    assert!(
        e.contains("max_failures") && e.contains("fix: set it below 10"),
        "{e}"
    );
    let e = t(Some(pct("lots")), None).unwrap_err().to_string();
    assert!(e.contains("batch") && e.contains("fix:"), "{e}");
}

/// The step helpers (ssh/helper.rs) running on a host with this workdir: processes whose
/// name (Perl's `$0`) is the helper's and whose working directory is `root`.
fn helper_pids(root: &Path) -> Vec<u32> {
    let root = root.canonicalize().unwrap();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.starts_with(b"slipway-step-helper")
            && std::fs::read_link(e.path().join("cwd")).is_ok_and(|d| d == root)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Wait (bounded) until process `pid` has ended (gone, or a zombie).
async fn wait_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("gone")
            .to_owned();
        if state == "gone" || state == "Z" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A step that waits (at most 30 s) for the file `go` in its workdir, after touching
/// `started`, then counts itself in `runs`.
fn held_step() -> StepAction {
    exec_step(
        "touch started; i=0; while [ ! -e go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo x >> runs",
        None,
    )
}

/// How each host's `apply` reached it (`via` of its report), by host.
fn vias(r: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .iter()
        .filter(|v| v["phase"] == "apply")
        .map(|v| {
            (
                v["host"].as_str().unwrap().to_owned(),
                v["via"].as_str().unwrap_or("none").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// One helper per connection runs every step of the run; its death mid-step (killed on
/// the host) loses nothing and runs nothing twice: the step's runner, which holds the
/// lock, finishes, marks and answers; the next step starts a new helper; a resumed run
/// (a new process) observes the step done.
#[tokio::test]
async fn a_step_helper_killed_mid_step_runs_the_step_once_and_the_run_goes_on() {
    let OneHost {
        fleet,
        inv,
        root,
        target,
    } = one_host();
    let root = &root;
    let (c, mut rx) = ctx("run20", "one");
    target
        .apply(&c, &exec_step("echo x >> one", None))
        .await
        .unwrap();
    let first = helper_pids(root);
    assert_eq!(first.len(), 1, "one helper after the first step");
    assert_eq!(
        vias(&reports(&mut rx)),
        vec![("host1".into(), "helper".into())]
    );

    let action = held_step();
    let (c, mut rx) = ctx("run20", "two");
    let started = root.join("started");
    let apply = target.apply(&c, &action);
    tokio::pin!(apply);
    tokio::select! {
        r = &mut apply => panic!("the step finished before its helper was killed: {r:?}"),
        () = wait_for(&started) => {}
    }
    // The same helper took the second step.
    assert_eq!(helper_pids(root), first);
    let st = std::process::Command::new("kill")
        .args(["-KILL", &first[0].to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_gone(first[0]).await;
    std::fs::write(root.join("go"), "").unwrap();
    let applied = apply.await.unwrap();
    assert!(matches!(applied, Applied::Ran { .. }), "{applied:?}");
    assert_eq!(summary(&reports(&mut rx)).len(), 1);
    assert_eq!(std::fs::read_to_string(root.join("runs")).unwrap(), "x\n");

    // The next step starts a new helper on the same connection.
    let (c3, mut rx) = ctx("run20", "three");
    target
        .apply(&c3, &exec_step("echo x >> three", None))
        .await
        .unwrap();
    assert_eq!(
        vias(&reports(&mut rx)),
        vec![("host1".into(), "helper".into())]
    );
    let second = helper_pids(root);
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    assert_eq!(fleet.hosts[0].logins(), 1);

    // A resumed run (a new process) finds the killed helper's step done, and applying it
    // again does nothing.
    let resumed = SshTarget::new(&inv, None, None, None).unwrap();
    let seen = resumed.observe(&c, &action).await.unwrap();
    assert!(matches!(seen, Observation::Done { .. }), "{seen:?}");
    let again = resumed.apply(&c, &action).await.unwrap();
    assert!(matches!(again, Applied::AlreadyDone { .. }), "{again:?}");
    assert_eq!(std::fs::read_to_string(root.join("runs")).unwrap(), "x\n");
    assert_eq!(std::fs::read_to_string(root.join("three")).unwrap(), "x\n");
    resumed.close_all().await;
    target.close_all().await;
}

/// The reconnect rule with a helper already running: the connection drops while it runs
/// a later step; the host fails the step (its effect is not known here), the step goes on
/// to the end on the host, once, `observe` finds its marker, and a resumed run starts a
/// new helper for the next step.
#[tokio::test]
async fn a_connection_dropped_while_the_helper_runs_a_step_does_not_start_it_again() {
    let OneHost {
        fleet,
        inv,
        root,
        target,
    } = one_host();
    let root = &root;
    let (c, _rx) = ctx("run21", "one");
    target
        .apply(&c, &exec_step("echo x >> one", None))
        .await
        .unwrap();
    let action = held_step();
    let (c, _rx) = ctx("run21", "two");
    let started = root.join("started");
    let apply = target.apply(&c, &action);
    tokio::pin!(apply);
    tokio::select! {
        r = &mut apply => panic!("the step finished before its connection dropped: {r:?}"),
        () = wait_for(&started) => {}
    }
    fleet.hosts[0].drop_connections();
    let e = apply.await.unwrap_err();
    let TargetError::Failed { message, .. } = &e else {
        panic!("expected a failed step, got {e:?}");
    };
    assert!(message.contains("not known"), "{message}");
    // Released only now: the step's answer cannot have reached this side.
    std::fs::write(root.join("go"), "").unwrap();
    let seen = target.observe(&c, &action).await.unwrap();
    assert!(matches!(seen, Observation::Done { .. }), "{seen:?}");
    assert_eq!(std::fs::read_to_string(root.join("runs")).unwrap(), "x\n");
    assert_eq!(fleet.hosts[0].logins(), 2);
    target.close_all().await;
    // The helper of the dropped connection ends once its step did; a resumed run (a new
    // process: this one's failure budget is spent) runs the next step with a new helper.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !helper_pids(root).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the helper never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = SshTarget::new(&inv, None, None, None).unwrap();
    let again = resumed.apply(&c, &action).await.unwrap();
    assert!(matches!(again, Applied::AlreadyDone { .. }), "{again:?}");
    let (c3, mut rx) = ctx("run21", "three");
    resumed
        .apply(&c3, &exec_step("echo x >> three", None))
        .await
        .unwrap();
    assert_eq!(
        vias(&reports(&mut rx)),
        vec![("host1".into(), "helper".into())]
    );
    assert_eq!(std::fs::read_to_string(root.join("three")).unwrap(), "x\n");
    assert_eq!(std::fs::read_to_string(root.join("runs")).unwrap(), "x\n");
    assert_eq!(fleet.hosts[0].logins(), 3);
    resumed.close_all().await;
}

/// A step that prints megabytes on both streams: its output goes to files on the host,
/// the helper answers with their tails only, nothing blocks, the files are emptied, and
/// the helper takes the next step.
#[tokio::test]
async fn a_step_that_prints_a_lot_does_not_block_the_helper() {
    let OneHost {
        fleet: _fleet,
        root,
        target,
        ..
    } = one_host();
    let root = &root;
    let (c, mut rx) = ctx("run22", "loud");
    let applied = target
        .apply(
            &c,
            &exec_step(
                "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo OUT-END; \
                 head -c 2000000 /dev/zero | tr '\\0' b >&2; echo >&2; echo ERR-END >&2",
                None,
            ),
        )
        .await
        .unwrap();
    let Applied::Ran { output } = applied else {
        panic!("{applied:?}")
    };
    assert!(
        output.stdout.ends_with("aaa\nOUT-END\n"),
        "{:?}",
        &output.stdout[output.stdout.len() - 40..]
    );
    assert!(
        output.stderr.ends_with("bbb\nERR-END\n"),
        "{:?}",
        &output.stderr[output.stderr.len() - 40..]
    );
    assert!(output.truncated);
    assert!(
        output.stdout.len() <= OUTPUT_LIMIT + 20,
        "{}",
        output.stdout.len()
    );
    assert_eq!(
        vias(&reports(&mut rx)),
        vec![("host1".into(), "helper".into())]
    );
    let markers = root.join("state/markers/run22");
    assert!(markers.join("key-loud").exists());
    assert_eq!(
        std::fs::metadata(markers.join("key-loud.out"))
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        std::fs::metadata(markers.join("key-loud.err"))
            .unwrap()
            .len(),
        0
    );
    let (c, mut rx) = ctx("run22", "quiet");
    let applied = target
        .apply(&c, &exec_step("echo small; echo note >&2", None))
        .await
        .unwrap();
    let Applied::Ran { output } = applied else {
        panic!("{applied:?}")
    };
    assert_eq!(output.stdout, "[host1] small\n");
    assert_eq!(output.stderr, "[host1] note\n");
    assert!(!output.truncated);
    assert_eq!(
        vias(&reports(&mut rx)),
        vec![("host1".into(), "helper".into())]
    );
    assert_eq!(helper_pids(root).len(), 1);
    target.close_all().await;
}

/// A host where the helper cannot start (here its perl refuses to: `PERL5OPT` names a
/// module that is not there) runs its steps with the wrapper, guards and all, for the
/// whole session; the other hosts use their helpers; each host's report says which.
#[tokio::test]
async fn a_host_where_the_helper_cannot_start_runs_its_steps_with_the_wrapper() {
    let fleet = Fleet::start_isolated(2, |i, _| {
        (i == 0).then(|| Isolation {
            sshd_config: "SetEnv PERL5OPT=-Mslipway_no_such_module\n".into(),
            ..Isolation::default()
        })
    });
    let (inv, roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, None, None, Some(2)).unwrap();
    let step = |run: &str, creates: Option<&str>| {
        StepAction::Exec(ExecStep {
            name: "install".into(),
            run: run.into(),
            creates: creates.map(str::to_owned),
            unless: None,
            undo: None,
            timeout: Some("30s".into()),
        })
    };
    for (name, creates) in [("one", None), ("two", Some("guard")), ("three", None)] {
        let (c, mut rx) = ctx("run23", name);
        target
            .apply(
                &c,
                &step(&format!("echo x >> {name}; touch guard"), creates),
            )
            .await
            .unwrap();
        let r = reports(&mut rx);
        assert_eq!(
            vias(&r),
            vec![
                ("host1".into(), "wrapper".into()),
                ("host2".into(), "helper".into())
            ]
        );
        let why = r.iter().find(|v| v["host"] == "host1").unwrap()["via_why"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(why.contains("did not start"), "{why}");
    }
    for root in &roots {
        // `two` was skipped by its guard on both hosts; the others ran once.
        assert_eq!(std::fs::read_to_string(root.join("one")).unwrap(), "x\n");
        assert!(!root.join("two").exists());
        assert_eq!(std::fs::read_to_string(root.join("three")).unwrap(), "x\n");
    }
    assert!(helper_pids(&roots[0]).is_empty());
    assert_eq!(helper_pids(&roots[1]).len(), 1);
    target.close_all().await;
}

/// The host check starts each host's step helper (overlapping the other handshakes), so
/// the first step finds it up and it takes the step; a host where it cannot start runs
/// its steps with the wrapper, as when the first step starts it; the helpers end with the
/// sessions.
#[tokio::test]
async fn the_host_check_starts_the_step_helpers_that_take_the_first_step() {
    let fleet = Fleet::start_isolated(3, |i, _| {
        (i == 0).then(|| Isolation {
            sshd_config: "SetEnv PERL5OPT=-Mslipway_no_such_module\n".into(),
            ..Isolation::default()
        })
    });
    let (inv, roots) = host_dirs(&fleet);
    let target = SshTarget::new(&inv, None, None, Some(3)).unwrap();
    assert!(target.check_hosts().await.unwrap().is_empty());
    // Nothing of the run has started yet: no marker directory, no step output.
    assert!(helper_pids(&roots[0]).is_empty());
    let warmed: Vec<Vec<u32>> = roots[1..].iter().map(|r| helper_pids(r)).collect();
    for (root, pids) in roots[1..].iter().zip(&warmed) {
        assert_eq!(
            pids.len(),
            1,
            "one helper on {} after the check",
            root.display()
        );
        assert!(!root.join("one").exists());
    }
    let (c, mut rx) = ctx("run24", "one");
    target
        .apply(&c, &exec_step("echo x >> one", None))
        .await
        .unwrap();
    assert_eq!(
        vias(&reports(&mut rx)),
        vec![
            ("host1".into(), "wrapper".into()),
            ("host2".into(), "helper".into()),
            ("host3".into(), "helper".into())
        ]
    );
    for (root, pids) in roots[1..].iter().zip(&warmed) {
        assert_eq!(&helper_pids(root), pids, "the check's helper took the step");
    }
    for root in &roots {
        assert_eq!(std::fs::read_to_string(root.join("one")).unwrap(), "x\n");
    }
    target.close_all().await;
    for pid in warmed.into_iter().flatten() {
        wait_gone(pid).await;
    }
}
