//! `slipway report …`, `slipway catalog export` and run notifications as a user meets
//! them: a real deploy of a small spec whose environment references a secret, then every
//! report over that store — and the secret's value appears in none of them.

use crate::slipway;

/// What `secret://env/TINY_DB_PASSWORD` resolves to; must never be written anywhere.
const SECRET: &str = "hunter2-Zq81-db-password";
/// The webhook signing secret.
const SIGNING: &str = "sig-Xy77-signing-secret";

const SPEC: &str = r#"apiVersion: slipway/v1
kind: Release
metadata: { name: tiny, version: 1.0.0, type: hotfix, owner: team-tiny }
services:
  db:
    steps: [ { name: schema, run: "true" } ]
  app:
    depends_on: [db]
    steps: [ { name: start, run: "true", undo: "true" } ]
environments:
  prod:
    production: true
    target: { exec: {} }
    vars: { db_password: "secret://env/TINY_DB_PASSWORD" }
notifications:
  - { file: notify.jsonl }
"#;

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    run_as("alice", dir, args)
}

/// Keep the token printed in `output` as `user`'s, for [`run_as`].
fn keep_token(dir: &std::path::Path, user: &str, output: &str) {
    let token = output
        .split(|c: char| c.is_whitespace() || c == '"')
        .find(|w| w.starts_with("slw_"))
        .unwrap_or_else(|| panic!("no token in {output}"));
    std::fs::write(dir.join(format!("token-{user}")), token).unwrap();
}

/// Access control on with alice as admin and bob as approver in prod, each with a token.
fn alice_and_bob(dir: &std::path::Path) {
    let (code, o) = run(dir, &["access", "grant", "alice", "admin", "--env", "*"]);
    assert_eq!(code, 0, "{o}");
    keep_token(dir, "alice", &o);
    let (code, o) = run(
        dir,
        &["access", "grant", "user:bob", "approver", "--env", "prod"],
    );
    assert_eq!(code, 0, "{o}");
    let (code, o) = run(dir, &["access", "token", "create", "--user", "bob"]);
    assert_eq!(code, 0, "{o}");
    keep_token(dir, "bob", &o);
}

/// Run slipway as `user` — through the token kept for them in `dir` (see [`keep_token`]),
/// or as the local user while they have none; returns the exit code and stdout followed
/// by stderr.
fn run_as(user: &str, dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let store = format!("sqlite://{}", dir.join("s.db").display());
    let mut c = slipway();
    c.args(args)
        .args(["--store", &store])
        .env("TINY_DB_PASSWORD", SECRET)
        .env("SLIPWAY_WEBHOOK_SECRET", SIGNING)
        .env_remove("SLIPWAY_TOKEN");
    if let Ok(t) = std::fs::read_to_string(dir.join(format!("token-{user}"))) {
        c.env("SLIPWAY_TOKEN", t.trim());
    }
    let o = c
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn reports_over_a_real_deploy_list_exceptions_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("release.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let spec = spec.display().to_string();
    // A hotfix needs one approval: alice deploys, bob approves, alice resumes — two
    // verified people.
    alice_and_bob(dir.path());
    let (code, out) = run(
        dir.path(),
        &[
            "deploy",
            "-f",
            &spec,
            "--env",
            "prod",
            "--no-wait",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 3, "{out}");
    let json_end = out.rfind('}').unwrap() + 1;
    let id = serde_json::from_str::<serde_json::Value>(&out[..json_end]).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, o) = run_as("bob", dir.path(), &["approve", &id]);
    assert_eq!(code, 0, "{o}");
    let (code, o) = run(dir.path(), &["resume", &id]);
    assert_eq!(code, 0, "{o}");

    let mut outputs = vec![out, o];
    let (code, dora) = run(
        dir.path(),
        &[
            "report",
            "dora",
            "--since",
            "2020-01-01",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{dora}");
    let v: serde_json::Value = serde_json::from_str(&dora).unwrap();
    assert_eq!(v["overall"]["deployments"], 1);
    assert_eq!(v["overall"]["success_rate"], 1.0);
    assert_eq!(v["scope"], "production environments");
    outputs.push(dora);
    let html = dir.path().join("dora.html");
    let (code, o) = run(
        dir.path(),
        &[
            "report",
            "dora",
            "--since",
            "2020-01-01",
            "--html",
            html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{o}");
    outputs.push(o);

    let (code, handover) = run(dir.path(), &["report", "handover", &id]);
    assert_eq!(code, 0, "{handover}");
    assert!(
        handover.contains("# Handover: tiny 1.0.0 → prod"),
        "{handover}"
    );
    assert!(
        handover.contains("config key added: `vars.db_password`"),
        "{handover}"
    );
    assert!(
        handover.contains("step `app/start` is undone by `true`"),
        "{handover}"
    );
    outputs.push(handover);
    let (code, retro) = run(dir.path(), &["report", "retro", &id]);
    assert_eq!(code, 0, "{retro}");
    assert!(retro.contains("## Timeline"), "{retro}");
    outputs.push(retro);
    let (code, missing) = run(dir.path(), &["report", "retro", "no-such-run"]);
    assert_eq!(code, 2, "{missing}");
    assert!(missing.contains("slipway history"), "{missing}");

    // A hotfix approved by another person, but before it ran (no after-the-fact review)
    // and never tried outside production: SOX exceptions, exit 1.
    let pack = dir.path().join("evidence");
    let (code, sox) = run(
        dir.path(),
        &[
            "report",
            "compliance",
            "--framework",
            "sox",
            "--since",
            "2020-01-01",
            "--out",
            pack.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{sox}");
    assert!(sox.contains("exception SOX-CM-3"), "{sox}");
    assert!(sox.contains("exception SOX-CM-4"), "{sox}");
    assert!(
        !sox.contains("exception SOX-CM-1"),
        "it was approved first: {sox}"
    );
    assert!(
        !sox.contains("exception SOX-CM-2"),
        "bob is not the author: {sox}"
    );
    outputs.push(sox);
    let (code, bad) = run(
        dir.path(),
        &[
            "report",
            "compliance",
            "--framework",
            "pci",
            "--since",
            "2020-01-01",
            "--out",
            pack.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{bad}");

    let cat = dir.path().join("catalog");
    let (code, o) = run(
        dir.path(),
        &[
            "catalog",
            "export",
            "-f",
            &spec,
            "--out",
            cat.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{o}");
    let yaml = std::fs::read_to_string(cat.join("catalog-info.yaml")).unwrap();
    assert!(yaml.contains("lifecycle: \"production\""), "{yaml}");
    outputs.push(o);

    let notes = std::fs::read_to_string(dir.path().join("notify.jsonl")).unwrap();
    assert!(
        notes.contains("\"event\":\"started\"") && notes.contains("\"event\":\"finished\""),
        "{notes}"
    );
    for f in [
        html,
        pack.join("evidence.jsonl"),
        pack.join("summary.html"),
        cat.join("catalog-info.yaml"),
        dir.path().join("notify.jsonl"),
    ] {
        outputs.push(std::fs::read_to_string(f).unwrap());
    }
    for o in &outputs {
        assert!(
            !o.contains(SECRET) && !o.contains(SIGNING),
            "a secret leaked:\n{o}"
        );
    }
}

#[test]
fn access_grants_refusals_tokens_and_a_review_that_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Bootstrap: the first grant of a store needs no admin, and gives alice a token.
    let (code, o) = run(d, &["access", "grant", "alice", "admin", "--env", "*"]);
    assert_eq!(code, 0, "{o}");
    keep_token(d, "alice", &o);
    let (code, o) = run(
        d,
        &["access", "grant", "user:bob", "deployer", "--env", "prod"],
    );
    assert_eq!(code, 0, "{o}");
    assert!(o.contains("grant 2: user:bob is deployer in prod"), "{o}");
    let (code, o) = run(d, &["access", "token", "create", "--user", "bob"]);
    assert_eq!(code, 0, "{o}");
    keep_token(d, "bob", &o);
    // Bob is no admin: refused, naming the missing role.
    let (code, o) = run_as("bob", d, &["access", "grant", "bob", "admin", "--env", "*"]);
    assert_eq!(code, 3, "{o}");
    assert!(o.contains("lacks the `admin` role"), "{o}");
    let (code, o) = run(d, &["access", "grant", "bob", "overlord", "--env", "prod"]);
    assert_eq!(code, 2, "{o}");

    let (code, o) = run(d, &["access", "token", "create"]);
    assert_eq!(code, 0, "{o}");
    let token = o
        .split_whitespace()
        .find(|w| w.starts_with("slw_"))
        .unwrap()
        .to_owned();
    let id = token.split('_').nth(1).unwrap().to_owned();
    assert!(
        !std::fs::read(d.join("s.db"))
            .unwrap()
            .windows(token.len())
            .any(|w| w == token.as_bytes()),
        "only a hash is stored"
    );
    let (code, o) = run(d, &["access", "token", "revoke", &id]);
    assert_eq!(code, 0, "{o}");
    let (code, _) = run(d, &["access", "token", "revoke", &id]);
    assert_eq!(code, 2, "a revoked token cannot be revoked again");

    let (code, o) = run(d, &["access", "review", "start", "q4"]);
    assert_eq!(code, 0, "{o}");
    let (code, o) = run(d, &["access", "review", "decide", "q4", "2", "revoke"]);
    assert_eq!(code, 0, "{o}");
    let (code, o) = run(d, &["access", "review", "close", "q4"]);
    assert_eq!(code, 1, "alice's grant was never reviewed: {o}");
    assert!(o.contains("unreviewed: grant 1"), "{o}");
    let (code, o) = run(d, &["access", "list"]);
    assert_eq!(code, 0, "{o}");
    assert!(
        !o.contains("user:bob"),
        "bob's grant was revoked by the review: {o}"
    );
}
