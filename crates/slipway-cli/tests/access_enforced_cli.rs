//! Identity is verified, never declared, and every command checks its role once access
//! control is on (the first grant): the bypasses of issue 14 through the real binary —
//! a self-declared user or groups, an author approving her own run as invented people, a
//! viewer becoming an approver, unauthenticated reads, leases without a role, the operator's
//! token reaching a step — each refused, and the honest path working.

use crate::{People, slipway};

const SPEC: &str = "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api: { steps: [ { name: install, run: \"printf %s \\\"${SLIPWAY_TOKEN-unset}\\\" > seen-token\", undo: \"true\" } ] }
environments:
  staging: { target: { exec: {} } }
  prod:
    target: { exec: {} }
    approvals: { required: 2, groups: [release-managers], four_eyes: true }
";

struct Env {
    dir: tempfile::TempDir,
    spec: std::path::PathBuf,
    store: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("release.yaml");
        std::fs::write(&spec, SPEC).unwrap();
        let store = format!("sqlite://{}/s.db", dir.path().display());
        Self { dir, spec, store }
    }

    /// `slipway` with no token (the local user), on the store.
    fn local(&self) -> assert_cmd::Command {
        let mut c = slipway();
        c.env("SLIPWAY_STORE", &self.store)
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_USER")
            .env_remove("SLIPWAY_GROUPS");
        c
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The audit chain exported by `who`.
fn audit_text(p: &People, who: &str, dir: &std::path::Path) -> String {
    let out = dir.join("audit.jsonl");
    p.ok(
        who,
        &["audit", "export", "--out", &out.display().to_string()],
    );
    std::fs::read_to_string(out).unwrap()
}

fn run_id(o: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["run"].as_str().unwrap().to_owned()
}

#[test]
fn a_declared_user_or_group_is_refused_with_or_without_access_control() {
    let e = Env::new();
    for (var, value) in [
        ("SLIPWAY_USER", "admin"),
        ("SLIPWAY_GROUPS", "release-managers"),
    ] {
        let o = e
            .local()
            .env(var, value)
            .args(["history"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(9), "{var}: {}", text(&o));
        assert!(text(&o).contains(var), "{}", text(&o));
    }
    // Without them, and without grants, the local operating-system user acts (from the
    // uid, not from $USER).
    let o = e
        .local()
        .env("USER", "somebody-else")
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&e.spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = e
        .local()
        .env("USER", "somebody-else")
        .args(["access", "whoami", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let me: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(me["user"], nix_user(), "{me}");
    assert_eq!(me["verified"]["by"], "local", "{me}");
}

/// The name of this process's user from its uid, as the binary finds it.
fn nix_user() -> String {
    let o = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn once_access_control_is_on_every_command_needs_a_verified_token_and_its_role() {
    let e = Env::new();
    let o = e
        .local()
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&e.spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let first = run_id(&o);
    // The operator's token never reaches a step (the step wrote what it saw).
    assert_eq!(
        std::fs::read_to_string(e.dir.path().join("seen-token")).unwrap(),
        "unset"
    );

    // The first grant must make a user admin everywhere, and prints that admin's token.
    let o = e
        .local()
        .args([
            "access",
            "grant",
            "user:carol",
            "deployer",
            "--env",
            "staging",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let mut p = People::new(&e.store, "alice");
    p.add("carol", "deployer", "staging")
        .add("vic", "viewer", "staging");

    // No token: every command is refused, reads included.
    for args in [
        vec!["history"],
        vec!["status", first.as_str()],
        vec!["logs", first.as_str()],
        vec!["audit", "verify"],
        vec!["report", "dora", "--since", "2020-01-01"],
    ] {
        let o = e.local().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(9), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("API token"), "{args:?}: {}", text(&o));
    }
    // With a token, each command checks its role.
    let o = p.cmd("vic").args(["status", &first]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = p
        .cmd("vic")
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&e.spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("slipway access grant user:vic deployer --env staging"),
        "{}",
        text(&o)
    );
    // Reports read every environment: viewer on `*`.
    let o = p
        .cmd("vic")
        .args(["report", "dora", "--since", "2020-01-01"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // Leases need the deployer role and are audited.
    let o = p
        .cmd("vic")
        .args(["env", "lease", "staging"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    p.ok(
        "carol",
        &["env", "lease", "staging", "--reason", "db maintenance"],
    );
    let o = p
        .cmd("vic")
        .args(["env", "release", "staging", "--force"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    p.ok("carol", &["env", "release", "staging"]);
    let audit = audit_text(&p, "alice", e.dir.path());
    assert!(audit.contains("lease_taken"), "{audit}");
    assert!(audit.contains("lease_released"), "{audit}");
    // A deployer rolls back a run of her environment.
    let o = p
        .cmd("carol")
        .args(["rollback", &first, "--reason", "test"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let me: serde_json::Value =
        serde_json::from_str(&p.ok("carol", &["access", "whoami", "--output", "json"])).unwrap();
    assert_eq!(me["user"], "carol", "{me}");
    assert_eq!(me["verified"]["by"], "token", "{me}");
}

#[test]
fn approvals_count_only_from_verified_members_of_the_required_groups_and_never_the_author() {
    let e = Env::new();
    let mut p = People::new(&e.store, "admin");
    p.add("alice", "deployer", "prod")
        .add("bob", "approver", "prod")
        .add("dana", "approver", "prod")
        .add("vic", "viewer", "prod");
    let o = p
        .cmd("alice")
        .args([
            "deploy",
            "--env",
            "prod",
            "--no-wait",
            "--output",
            "json",
            "-f",
        ])
        .arg(&e.spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let run = run_id(&o);

    // The author cannot approve her own run, whatever she declares.
    let o = p
        .cmd("alice")
        .env("SLIPWAY_GROUPS", "release-managers")
        .args(["approve", &run])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    // A viewer with a valid token is not an approver.
    let o = p.cmd("vic").args(["approve", &run]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // An approver outside the required group: refused, saying which group counts.
    let o = p.cmd("bob").args(["approve", &run]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("group:release-managers"), "{}", text(&o));
    // Admins keep group membership; then bob's and dana's approvals count.
    p.group("release-managers", "bob")
        .group("release-managers", "dana")
        .group("release-managers", "alice");
    let o = p.cmd("alice").args(["approve", &run]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "four-eyes: {}", text(&o));
    p.ok("bob", &["approve", &run]);
    let o = p
        .cmd("dana")
        .args(["approve", &run, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["valid"].as_u64(), v["required"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    // Group changes are in the audit chain.
    let audit = audit_text(&p, "admin", e.dir.path());
    assert!(audit.contains("group_member_added"), "{audit}");
    let o = p.cmd("alice").args(["resume", &run]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
