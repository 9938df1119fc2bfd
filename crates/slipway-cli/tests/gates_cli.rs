//! Gates through the real binary: a closed window (`--no-wait` exit 3 naming when it
//! opens, or a run that waits), a freeze, self-approval refused, an approval for another
//! digest refused, a second approver required.

use crate::slipway;

fn spec(dir: &std::path::Path, env_extra: &str) -> std::path::PathBuf {
    let d = dir.display();
    let p = dir.join("release.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: x, version: 1.0.0, type: patch }}
services:
  api:
    steps: [ {{ name: install, run: \"touch {d}/installed\" }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
{env_extra}"
        ),
    )
    .unwrap();
    p
}

fn run_id(stdout: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned()
}

#[test]
fn a_closed_window_blocks_with_no_wait_and_names_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    // Opens at midnight UTC on January 1st: closed for all but one minute a year.
    let f = spec(
        dir.path(),
        "    windows: [ { cron: \"0 0 1 1 *\", timezone: UTC, duration: 1m } ]\n",
    );
    let store = format!("sqlite://{}/s.db", dir.path().display());
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "--no-wait", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("-01-01T00:00"),
        "must name when the window opens: {text}"
    );
    assert!(
        !dir.path().join("installed").exists(),
        "nothing may run outside the window"
    );

    // Without --no-wait the run waits (detached here), and says so.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args([
            "deploy", "--env", "staging", "--detach", "--output", "json", "-f",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let id = run_id(&o.stdout);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(["status", &id, "--output", "json"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&s.stdout).to_string();
        if text.contains("waiting_for_window") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run never waited for the window: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["abort", &id])
        .output();
}

#[test]
fn a_freeze_refuses_the_deploy_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = spec(
        dir.path(),
        "    freezes: [ { from: 2000-01-01, to: 2999-12-31, reason: millennium freeze } ]\n",
    );
    let o = slipway()
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}/s.db", dir.path().display()),
        )
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("millennium freeze"));
    assert!(!dir.path().join("installed").exists());
}

#[test]
fn approvals_exclude_the_author_and_other_digests_and_need_two_people() {
    let dir = tempfile::tempdir().unwrap();
    let f = spec(dir.path(), "    approvals: { required: 2 }\n");
    let store = format!("sqlite://{}/s.db", dir.path().display());
    // Four-eyes needs people: verified ones, each with their own token.
    let mut people = crate::People::new(&store, "admin");
    people
        .add("alice", "approver", "staging")
        .add("bob", "approver", "staging")
        .add("carol", "approver", "staging");
    let as_user = |u: &str| people.cmd(u);
    let o = as_user("alice")
        .args([
            "deploy",
            "--env",
            "staging",
            "--no-wait",
            "--output",
            "json",
            "-f",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "waits for approvals: {o:?}");
    let id = run_id(&o.stdout);

    let o = as_user("alice").args(["approve", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "the author cannot approve: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("four-eyes"));

    let o = as_user("bob")
        .args(["approve", &id, "--digest", &"0".repeat(64)])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an approval for another plan does not count: {o:?}"
    );

    let o = as_user("bob").args(["approve", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = as_user("bob").args(["approve", &id]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "approving twice is harmless: {o:?}"
    );
    let o = as_user("alice")
        .args(["resume", &id, "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "one person twice is still one approver: {o:?}"
    );
    assert!(!dir.path().join("installed").exists());

    let o = as_user("carol").args(["approve", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = as_user("alice")
        .args(["resume", &id, "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "two distinct approvers let it through: {o:?}"
    );
    assert!(dir.path().join("installed").exists());
}
