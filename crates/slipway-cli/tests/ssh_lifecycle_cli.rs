//! Every command that drives a run on `ssh` hosts ends the sessions it used before it
//! exits, not only `slipway deploy`
//! (`ssh_cli::a_deploy_leaves_no_step_helper_or_session_behind_on_the_hosts`): `slipway
//! rollback` run by hand, `slipway resume` of a run that waited for an approval and the
//! background driver of `slipway deploy --detach`, against real sshd hosts. Each builds
//! its ssh target itself (no checked target is handed to it), so what ends the sessions
//! is the drive's close of the engine's target (`slipway_ops::runs::drive`,
//! `Target::close`).

use std::path::Path;
use std::time::Duration;

use crate::ssh_cli::sshd::Fleet;
use crate::ssh_cli::{approved_run, deploy, left_after, requiring_an_approval, run, setup, status};

/// One step on each host, with an undo.
const SERVICES: &str = "  web:
    steps:
      - { name: install, run: 'echo 1 > \"$ROOT/app.txt\"', undo: 'rm -f \"$ROOT/app.txt\"' }
";

/// No step helper on any host now that the command has exited (its close waited for each
/// helper's channel to end, which sshd signals only once the helper exited), and no sshd
/// connection process within 2 s.
fn no_session_left(fleet: &Fleet, after: &str) {
    assert_eq!(
        left_after(fleet, "slipway-step-", Duration::ZERO),
        vec![],
        "step helpers left after {after}"
    );
    assert_eq!(
        left_after(fleet, "sshd: ", Duration::from_secs(2)),
        vec![],
        "sshd connections left after {after}"
    );
}

/// Where each host's sshd log ends now: the logins of a command started after this are
/// the ones [`nothing_left`] holds to a disconnect.
fn mark(fleet: &Fleet) -> Vec<usize> {
    fleet
        .hosts
        .iter()
        .map(|h| log_of(fleet, &h.name).len())
        .collect()
}

/// Where each host's last login is in its sshd log (its end when none).
fn last_login(fleet: &Fleet) -> Vec<usize> {
    fleet
        .hosts
        .iter()
        .map(|h| {
            let log = log_of(fleet, &h.name);
            log.rfind("Accepted publickey").unwrap_or(log.len())
        })
        .collect()
}

fn log_of(fleet: &Fleet, host: &str) -> String {
    std::fs::read_to_string(fleet.dir.join(host).join("sshd.log")).unwrap_or_default()
}

/// [`no_session_left`], and every login since `since` ([`mark`]) — the command's — ended
/// by a disconnect from Slipway, not by its socket closing at its exit.
fn nothing_left(fleet: &Fleet, after: &str, since: &[usize]) {
    no_session_left(fleet, after);
    let missing = unsaid_goodbyes(fleet, since, Duration::from_secs(10));
    let logs: String = missing
        .iter()
        .map(|(h, _)| format!("\n{h}'s sshd log:\n{}", log_of(fleet, h)))
        .collect();
    assert_eq!(
        missing,
        vec![],
        "logins not ended by a disconnect after {after}{logs}"
    );
}

/// Poll (at most `within`) until each login accepted since `since` on every host has its
/// `Received disconnect` (what sshd logs for a client's SSH_MSG_DISCONNECT; a client that
/// exits without one leaves no line), matched by the client's port. The hosts where not,
/// with those ports. (A session whose process exits without the close ends as quickly —
/// the kernel closes its socket — so this is what tells the two apart when no step helper
/// ran, as in an undo, which runs on a channel of its own. Only the command's own logins
/// count: a deploy's host check closed within milliseconds of its login was seen, now and
/// then, to leave no line.)
fn unsaid_goodbyes(fleet: &Fleet, since: &[usize], within: Duration) -> Vec<(String, Vec<u16>)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let missing: Vec<_> = fleet
            .hosts
            .iter()
            .zip(since)
            .filter_map(|(h, &since)| {
                let log = log_of(fleet, &h.name);
                let ports: Vec<u16> = log
                    .get(since..)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("Accepted publickey"))
                    .filter_map(|l| l.split(" port ").nth(1)?.split(' ').next()?.parse().ok())
                    .filter(|p| {
                        !log.contains(&format!("Received disconnect from 127.0.0.1 port {p}:"))
                    })
                    .collect();
                (!ports.is_empty()).then(|| (h.name.clone(), ports))
            })
            .collect();
        if missing.is_empty() || std::time::Instant::now() >= deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The id of the store's latest run.
fn latest_run(dir: &Path) -> String {
    status(dir)["run"]["id"].as_str().unwrap().to_owned()
}

/// `slipway rollback` of a succeeded run undoes the step on every host over sessions of
/// its own, and has ended them when it exits. (Left to the process's exit, no host got a
/// disconnect for the rollback's login.)
#[test]
fn a_rollback_leaves_no_step_helper_or_session_behind_on_the_hosts() {
    let fleet = Fleet::start(10);
    let (dir, roots) = setup(&fleet, SERVICES);
    let o = deploy(&dir);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    no_session_left(&fleet, "the deploy");
    let id = latest_run(&dir);
    let since = mark(&fleet);
    let o = run(&dir, &["rollback", &id, "--reason", "lifecycle test"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // The undo ran on the hosts, so the rollback had sessions to end.
    for root in &roots {
        assert!(!root.join("app.txt").exists(), "{}", root.display());
    }
    assert_eq!(status(&dir)["run"]["state"], "rolled_back");
    nothing_left(&fleet, "the rollback", &since);
}

/// `slipway resume` of a run that waited for an approval runs its steps on every host over
/// sessions of its own, and has ended them when it exits. (Left to the process's exit,
/// step helpers were still on the hosts when it had exited.)
#[test]
fn a_resume_leaves_no_step_helper_or_session_behind_on_the_hosts() {
    let fleet = Fleet::start(10);
    let (dir, roots) = setup(&fleet, SERVICES);
    let spec = requiring_an_approval(&dir);
    let (people, id) = approved_run(&dir, &spec);
    // The deploy (its host check) and the approval left nothing behind either.
    no_session_left(&fleet, "the deploy that waited");
    let since = mark(&fleet);
    let o = people.cmd("alice").args(["resume", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    for root in &roots {
        assert!(root.join("app.txt").exists(), "{}", root.display());
    }
    nothing_left(&fleet, "the resume", &since);
}

/// Kills, when dropped, every `slipway` process with this store in its environment: the
/// background driver of a detached deploy (its own process group, no child of the test).
struct Drivers(String);

impl Drop for Drivers {
    fn drop(&mut self) {
        crate::kill_marked("SLIPWAY_STORE", &self.0);
    }
}

/// The background driver of `slipway deploy --detach` (a `slipway resume` process of its
/// own) runs the steps over sessions of its own, and has ended them when it exits.
#[test]
fn a_detached_driver_leaves_no_step_helper_or_session_behind_on_the_hosts() {
    let fleet = Fleet::start(10);
    let (dir, roots) = setup(&fleet, SERVICES);
    let store = format!("sqlite://{}", dir.join("store.db").display());
    let _drivers = Drivers(store.clone());
    let spec = dir.join("release.yaml").display().to_string();
    let o = run(
        &dir,
        &[
            "deploy", "--env", "fleet", "--detach", "--output", "json", "-f", &spec,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();
    // The driver was started (exec'd) before the deploy returned: not found now, it has
    // exited already.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while crate::marked("SLIPWAY_STORE", &store)
        .iter()
        .any(|m| m.argv.iter().any(|a| a == "resume") && m.argv.contains(&id))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the detached driver of {id} still runs after 120 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status(&dir)["run"]["state"], "succeeded");
    for root in &roots {
        assert!(root.join("app.txt").exists(), "{}", root.display());
    }
    // The driver logged in after the deploy had closed its host check's sessions.
    nothing_left(&fleet, "the detached driver", &last_login(&fleet));
}
