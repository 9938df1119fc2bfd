//! API tokens through the real binary: `--token` / `SLIPWAY_TOKEN` makes every command act
//! as the token's user (checked against the store, last use recorded); a revoked or
//! unknown token is refused with exit 9. Every access change lands in the audit chain,
//! without the token's secret, and the chain still verifies.

use crate::slipway;

const SPEC: &str = "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api: { steps: [ { name: install, run: \"true\", undo: \"true\" } ] }
environments:
  staging: { target: { exec: {} } }
  prod: { target: { exec: {} }, approvals: { required: 1 } }
";

struct Env {
    _dir: tempfile::TempDir,
    spec: String,
    store: String,
    out: std::path::PathBuf,
    tokens: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("release.yaml");
        std::fs::write(&spec, SPEC).unwrap();
        Self {
            spec: spec.display().to_string(),
            store: format!("sqlite://{}/s.db", dir.path().display()),
            out: dir.path().join("audit.jsonl"),
            _dir: dir,
            tokens: Default::default(),
        }
    }

    /// `slipway ARGS` with `token` in SLIPWAY_TOKEN when given, else `user`'s token when
    /// they have one (the bootstrap admin's is kept from the first grant), else as the
    /// local user. A user with no token is someone the store cannot tell apart from the
    /// local user: identity is verified, never declared.
    fn run(&self, user: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut c = slipway();
        c.env("SLIPWAY_STORE", &self.store)
            .env_remove("SLIPWAY_TOKEN");
        if let Some(t) = token
            .map(str::to_owned)
            .or_else(|| self.tokens.borrow().get(user).cloned())
        {
            c.env("SLIPWAY_TOKEN", t);
        }
        let o = c.args(args).output().unwrap();
        if o.status.success()
            && args.starts_with(&["access", "grant"])
            && let Some(t) = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|w| w.starts_with("slw_"))
            && let Some(u) = args.get(2)
        {
            let u = u.strip_prefix("user:").unwrap_or(u);
            self.tokens.borrow_mut().insert(u.to_owned(), t.to_owned());
        }
        o
    }

    fn ok(&self, user: &str, args: &[&str]) -> String {
        let o = self.run(user, None, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn a_token_acts_as_its_user_until_it_is_revoked() {
    let e = Env::new();
    e.ok(
        "alice",
        &["access", "grant", "user:alice", "admin", "--env", "*"],
    );
    e.ok(
        "alice",
        &["access", "grant", "user:bob", "approver", "--env", "*"],
    );
    let text = e.ok("alice", &["access", "token", "create", "--user", "bob"]);
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("slw_"))
        .unwrap()
        .to_owned();
    let id = token.split('_').nth(1).unwrap().to_owned();

    // alice deploys to prod; it waits for an approval.
    let o = e.run(
        "alice",
        None,
        &[
            "deploy",
            "--env",
            "prod",
            "--no-wait",
            "--output",
            "json",
            "-f",
            &e.spec,
        ],
    );
    assert_eq!(code(&o), Some(3), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();

    // mallory has no token: once access control is on, nobody acts without one; with
    // bob's token the command is bob's.
    let o = e.run("mallory", None, &["approve", &run]);
    assert_eq!(code(&o), Some(9), "no identity without a token: {o:?}");
    let o = e.run("mallory", Some(&token), &["approve", &run]);
    assert_eq!(code(&o), Some(0), "{o:?}");
    let o = e.run(
        "mallory",
        Some(&token),
        &["deploy", "--env", "staging", "-f", &e.spec],
    );
    assert_eq!(code(&o), Some(0), "{o:?}");
    // The global flag works as well as the variable.
    let o = e.run(
        "mallory",
        None,
        &[
            "--token", &token, "deploy", "--env", "staging", "-f", &e.spec,
        ],
    );
    assert_eq!(code(&o), Some(0), "{o:?}");

    // Last use is recorded; the listing shows no secret.
    let list = e.ok("alice", &["access", "token", "list", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert!(row["last_used_at"].is_string(), "{row}");
    assert!(!list.contains(token.rsplit('_').next().unwrap()));
    assert!(!list.contains("argon2"), "no hash in the listing: {list}");

    e.ok("alice", &["access", "token", "revoke", &id]);
    let o = e.run(
        "mallory",
        Some(&token),
        &["deploy", "--env", "staging", "-f", &e.spec],
    );
    assert_eq!(code(&o), Some(9), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    // Revoked, unknown and wrong are refused alike: no answer tells which ids exist.
    assert!(err.contains(&format!("token {id} is not valid")), "{err}");
    let o = e.run("bob", Some(&token), &["approve", &run]);
    assert_eq!(code(&o), Some(9), "{o:?}");

    let o = e.run(
        "bob",
        Some(&format!("slw_ffffffffffff_{}", "0".repeat(64))),
        &["history"],
    );
    assert_eq!(code(&o), Some(9), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("token ffffffffffff is not valid"));
    let o = e.run("bob", Some("not-a-token"), &["history"]);
    assert_eq!(code(&o), Some(9), "{o:?}");
}

#[test]
fn access_changes_are_in_the_audit_chain_without_secrets() {
    let e = Env::new();
    e.ok(
        "alice",
        &["access", "grant", "user:alice", "admin", "--env", "*"],
    );
    e.ok(
        "alice",
        &["access", "grant", "user:carol", "deployer", "--env", "prod"],
    );
    let text = e.ok(
        "alice",
        &[
            "access",
            "grant",
            "group:sre",
            "viewer",
            "--env",
            "*",
            "--output",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["subject"].as_str(), v["role"].as_str()),
        (Some("group:sre"), Some("viewer")),
        "{v}"
    );
    // For pipelines: the token once, as JSON.
    let text = e.ok(
        "alice",
        &[
            "access", "token", "create", "--user", "carol", "--output", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("slw_{id}_")), "{v}");
    assert_eq!(v["subject"], "user:carol");
    let text = e.ok(
        "alice",
        &["access", "token", "revoke", &id, "--output", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["revoked"], true, "{v}");
    e.ok("alice", &["access", "review", "start", "q4"]);
    e.ok(
        "alice",
        &["access", "review", "decide", "q4", "2", "revoke"],
    );
    let o = e.run(
        "alice",
        None,
        &["access", "review", "close", "q4", "--output", "json"],
    );
    assert_eq!(code(&o), Some(1), "grants 1 and 3 were not reviewed: {o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["unreviewed"], serde_json::json!([1, 3]), "{v}");
    e.ok("alice", &["access", "revoke", "3"]);

    e.ok("alice", &["audit", "verify"]);
    let out = e.out.display().to_string();
    e.ok("alice", &["audit", "export", "--out", &out]);
    let text = std::fs::read_to_string(&e.out).unwrap();
    let outcomes: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["action"] == "governance")
        .map(|v| v["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        outcomes,
        [
            // The first grant gives the first admin a token at once.
            "token_issued",
            "access_granted",
            "access_granted",
            "access_granted",
            "token_issued",
            "token_revoked",
            "review_opened",
            "review_decided",
            // The decision's revoke of grant 2, committed in the same transaction.
            "access_revoked",
            "review_closed",
            "access_revoked",
        ]
    );
    let secret = token.rsplit('_').next().unwrap();
    assert!(
        !text.contains(secret),
        "the token's secret is not in the chain"
    );
    assert!(text.contains(&id), "its id is");
    assert!(!text.contains("argon2"), "nor its hash");
    assert!(
        !text.contains("user:carol"),
        "people appear by pseudonym, so erasure keeps the chain valid"
    );
    assert!(text.contains("group:sre"));
}
