//! Run commands check permissions once access control is switched on by the first grant;
//! a refusal names the missing role and the grant to ask for.

use crate::slipway;

#[test]
fn commands_need_their_role_once_the_first_grant_exists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.join("release.yaml");
    std::fs::write(
        &spec,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api: { steps: [ { name: install, run: \"true\", undo: \"true\" } ] }
environments:
  staging: { target: { exec: {} } }
",
    )
    .unwrap();
    let store = format!("sqlite://{}/s.db", d.display());
    let as_user = |u: &str, args: &[&str]| {
        slipway()
            .env("SLIPWAY_STORE", &store)
            .env("SLIPWAY_USER", u)
            .args(args)
            .arg("-f")
            .arg(&spec)
            .output()
            .unwrap()
    };
    let cmd = |u: &str, args: &[&str]| {
        slipway()
            .env("SLIPWAY_STORE", &store)
            .env("SLIPWAY_USER", u)
            .args(args)
            .output()
            .unwrap()
    };
    // No grant yet: open mode, anyone may deploy.
    let o = as_user("alice", &["deploy", "--env", "staging"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The first grant switches access control on.
    let o = cmd(
        "alice",
        &["access", "grant", "user:alice", "admin", "--env", "*"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let o = as_user("carol", &["deploy", "--env", "staging"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("lacks the `deployer` role"), "{err}");
    assert!(
        err.contains("slipway access grant user:carol deployer --env staging"),
        "{err}"
    );

    let o = cmd(
        "alice",
        &[
            "access",
            "grant",
            "user:carol",
            "deployer",
            "--env",
            "staging",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = as_user("carol", &["deploy", "--env", "staging", "--output", "json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();

    // A deployer is not an approver, and rolling back needs deployer in that environment.
    let o = cmd("carol", &["approve", &run]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lacks the `approver` role"));
    let o = cmd("dave", &["rollback", &run, "--reason", "test"]);
    assert_eq!(o.status.code(), Some(3));
    let o = cmd("carol", &["rollback", &run, "--reason", "test"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
