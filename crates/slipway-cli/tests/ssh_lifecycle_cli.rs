//! Every command that drives a run on `ssh` hosts ends the sessions it used before it
//! exits, not only `slipway deploy` (`ssh_cli::a_deploy_leaves_no_step_helper_or_session_behind_on_the_hosts`):
//! `slipway rollback` run by hand and `slipway resume` of a run that waited for an
//! approval, against real sshd hosts. Each command builds its ssh target itself (no
//! checked target is handed to it), so what ends the sessions is the drive's close of the
//! engine's target (`slipway_ops::runs::drive`, `Target::close`).

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
/// helper's channel to end, which sshd signals only once the helper exited), no sshd
/// connection process within 2 s, and every login ended by a disconnect from Slipway, not
/// by its socket closing at its exit.
fn nothing_left(fleet: &Fleet, after: &str) {
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
    assert_eq!(
        unsaid_goodbyes(fleet, Duration::from_secs(10)),
        vec![],
        "logins not ended by a disconnect after {after}"
    );
}

/// Poll (at most `within`) until on every host each accepted login has its `Received
/// disconnect` in the sshd log (what sshd logs for a client's SSH_MSG_DISCONNECT; a
/// client that exits without one leaves no such line). The hosts where not, with their
/// `(logins, disconnects)`. (A session whose process exits without the close ends as
/// quickly — the kernel closes its socket — so this is what tells the two apart when no
/// step helper ran, as in an undo, which runs on a channel of its own.)
fn unsaid_goodbyes(fleet: &Fleet, within: Duration) -> Vec<(String, usize, usize)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let missing: Vec<_> = fleet
            .hosts
            .iter()
            .filter_map(|h| {
                let log = std::fs::read_to_string(fleet.dir.join(&h.name).join("sshd.log"))
                    .unwrap_or_default();
                let logins = log.matches("Accepted publickey").count();
                let byes = log.matches("Received disconnect from").count();
                (logins != byes).then(|| (h.name.clone(), logins, byes))
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
    nothing_left(&fleet, "the deploy");
    let id = latest_run(&dir);
    let o = run(&dir, &["rollback", &id, "--reason", "lifecycle test"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // The undo ran on the hosts, so the rollback had sessions to end.
    for root in &roots {
        assert!(!root.join("app.txt").exists(), "{}", root.display());
    }
    assert_eq!(status(&dir)["run"]["state"], "rolled_back");
    nothing_left(&fleet, "the rollback");
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
    nothing_left(&fleet, "the deploy that waited");
    let o = people.cmd("alice").args(["resume", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    for root in &roots {
        assert!(root.join("app.txt").exists(), "{}", root.display());
    }
    nothing_left(&fleet, "the resume");
}
