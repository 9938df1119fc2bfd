//! `slipway --server URL access …` and `policy …` (issue 16 part 1) against a real
//! `slipway serve`: each command goes through the API with the caller's token and the
//! server applies the operations layer's rules (admin for changes), so a deployer is
//! refused there as on a store; a token revoked through the server stops working at
//! once; a token listing never carries a secret or hash; a policy that does not validate
//! is refused with its diagnostics and nothing applied. The embedded mode's own tests
//! (`policy_cli`, `tokens_cli`, `access_enforced_cli`) are unchanged. Access reviews, the
//! compliance pack, the freeze status and the catalog go through the server too.

use serde_json::Value;

use crate::People;
use crate::server_deploy_cli::{World, remote};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn access_and_policy_commands_go_through_the_server_with_the_callers_token() {
    let world = World::sqlite();
    let people = People::new(&world.store, "alice");
    let alice = people.token("alice").to_owned();
    let server = world.serve();
    let addr = server.addr.as_str();
    let cwd = tempfile::tempdir().unwrap();
    let run = |token: &str, args: &[&str]| remote(addr, token, cwd.path(), args);

    let (code, out, err) = run(&alice, &["access", "whoami", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["user"], "alice", "{out}");

    let (code, out, err) = run(
        &alice,
        &["access", "grant", "user:bob", "deployer", "--env", "live"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("user:bob is deployer in live"), "{out}");
    let (_, out, _) = run(&alice, &["access", "list", "--output", "json"]);
    let grants = json(&out);
    let bobs = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["subject"] == "user:bob")
        .unwrap_or_else(|| panic!("{out}"))
        .clone();

    // A token for bob, issued through the server: it works there, as bob.
    let (code, out, err) = run(
        &alice,
        &[
            "access", "token", "create", "--user", "bob", "--output", "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let issued = json(&out);
    let bob = issued["token"].as_str().unwrap().to_owned();
    let (code, out, _) = run(&bob, &["access", "whoami", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["user"], "bob", "{out}");

    // The operations layer's rules, enforced by the server: a deployer changes no access.
    let (code, out, err) = run(
        &bob,
        &["access", "grant", "user:bob", "admin", "--env", "*"],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("admin"), "{err}");
    let (code, _, err) = run(&bob, &["access", "token", "list"]);
    assert_eq!(code, 3, "{err}");

    // Groups.
    let (code, out, err) = run(
        &alice,
        &["access", "group", "add", "release-managers", "bob"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run(&alice, &["access", "group", "list", "--output", "json"]);
    assert_eq!(json(&out)[0]["user"], "bob", "{out}");
    let (code, out, err) = run(
        &alice,
        &["access", "group", "remove", "release-managers", "bob"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(
        &alice,
        &["access", "group", "remove", "release-managers", "bob"],
    );
    assert_eq!(code, 2, "not a member any more: {err}");

    // Tokens are listed without secret or hash; a revoked one stops at once.
    let (code, out, _) = run(&alice, &["access", "token", "list", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(out.contains(issued["id"].as_str().unwrap()), "{out}");
    assert!(
        !out.contains("hash") && !out.contains(&bob) && !out.contains("argon2"),
        "{out}"
    );
    let (code, out, err) = run(
        &alice,
        &["access", "token", "revoke", issued["id"].as_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&bob, &["access", "whoami"]);
    assert_ne!(code, 0, "a revoked token: {err}");

    // Revoking the grant.
    let (code, out, err) = run(&alice, &["access", "revoke", &bobs["id"].to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run(&alice, &["access", "list", "--output", "json"]);
    assert!(!out.contains("user:bob"), "{out}");

    // Policy: none yet; an invalid one refused with its diagnostics; a valid one applied.
    let (code, out, _) = run(&alice, &["policy", "show", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["current"], Value::Null, "{out}");
    let bad = cwd.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod: { approvals: { required: many } }\n").unwrap();
    let (code, out, err) = run(
        &alice,
        &["policy", "apply", "-f", &bad.display().to_string()],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    let good = cwd.path().join("policy.yaml");
    let text = "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod:\n    production: true\n    approvals: { required: 2, four_eyes: true }\n";
    std::fs::write(&good, text).unwrap();
    let (code, out, err) = run(
        &alice,
        &[
            "policy",
            "apply",
            "-f",
            &good.display().to_string(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["version"], 1, "{out}");
    let (code, out, _) = run(&alice, &["policy", "show"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("policy v1") && out.contains("four_eyes: true"),
        "{out}"
    );
    // The change is the store's: the embedded mode on the server's store sees it.
    let local = people.ok("alice", &["policy", "show", "--output", "json"]);
    assert_eq!(json(&local)["current"]["version"], 1, "{local}");
}

#[test]
fn reports_through_the_server_are_the_stores_reports_for_viewers_only() {
    use crate::server_deploy_cli::{exec_release, spec_of};
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people
        .add("bob", "deployer", "staging")
        .add("vic", "viewer", "*");
    let (alice, bob, vic) = (
        people.token("alice").to_owned(),
        people.token("bob").to_owned(),
        people.token("vic").to_owned(),
    );
    let server = world.serve();
    let addr = server.addr.as_str();
    let release = exec_release();
    let (code, out, err) = remote(
        addr,
        &alice,
        release.path(),
        &["deploy", "-f", &spec_of(&release), "--env", "staging"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = remote(addr, &vic, release.path(), &["history", "--output", "json"]);
    let history = json(&out);
    let run = history[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let cwd = tempfile::tempdir().unwrap();

    // DORA: the server's figures are the store's.
    let args = [
        "report",
        "dora",
        "--since",
        "2020-01-01",
        "--until",
        "2100-01-01",
        "--output",
        "json",
    ];
    let (code, out, err) = remote(addr, &vic, cwd.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    let remote_dora = json(&out);
    let local_dora = json(&people.ok("vic", &args));
    assert_eq!(remote_dora["overall"], local_dora["overall"], "{out}");
    assert_eq!(remote_dora["deployments"], local_dora["deployments"]);
    assert_eq!(remote_dora["deployments"][0]["run"], run.as_str(), "{out}");
    let (code, text, _) = remote(
        addr,
        &vic,
        cwd.path(),
        &["report", "dora", "--since", "2020-01-01"],
    );
    assert_eq!(code, 0);
    assert!(
        text.contains("Deployment frequency") || text.contains("deployment"),
        "{text}"
    );
    let html = cwd.path().join("dora.html");
    let (code, _, err) = remote(
        addr,
        &vic,
        cwd.path(),
        &[
            "report",
            "dora",
            "--since",
            "2020-01-01",
            "--html",
            &html.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"));

    // Per-run reports: the same documents as on the store.
    for report in ["retro", "handover"] {
        let (code, out, err) = remote(
            addr,
            &vic,
            cwd.path(),
            &["report", report, &run, "--output", "json"],
        );
        assert_eq!(code, 0, "{report}: {out}{err}");
        let local = json(&people.ok("vic", &["report", report, &run, "--output", "json"]));
        let served = json(&out);
        if report == "retro" {
            assert_eq!(served, local, "{report}");
        } else {
            assert_eq!(served["markdown"], local["markdown"], "{report}");
        }
        let (code, md, _) = remote(addr, &vic, cwd.path(), &["report", report, &run]);
        assert_eq!(code, 0);
        assert!(md.contains(&run) || md.contains("shop"), "{report}: {md}");
    }
    let (code, _, err) = remote(addr, &vic, cwd.path(), &["report", "retro", "no-such-run"]);
    assert_eq!(code, 2, "{err}");

    // Reports read every environment: a deployer in staging only is refused, as locally.
    let (code, _, err) = remote(
        addr,
        &bob,
        cwd.path(),
        &["report", "dora", "--since", "2020-01-01"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("viewer"), "{err}");
}

/// Access reviews, the compliance pack, the freeze status and the catalog through a real
/// server (issue 16: the last commands refused under `--server`): each is the operations
/// layer's answer for the caller's token, the same as on the store, with its roles.
#[test]
fn reviews_compliance_freeze_and_catalog_go_through_the_server() {
    use crate::server_deploy_cli::{exec_release, spec_of};
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people
        .add("bob", "deployer", "staging")
        .add("vic", "viewer", "*");
    let (alice, bob, vic) = (
        people.token("alice").to_owned(),
        people.token("bob").to_owned(),
        people.token("vic").to_owned(),
    );
    let server = world.serve();
    let addr = server.addr.as_str();
    let release = exec_release();
    let (code, out, err) = remote(
        addr,
        &alice,
        release.path(),
        &["deploy", "-f", &spec_of(&release), "--env", "staging"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let cwd = tempfile::tempdir().unwrap();
    let run = |token: &str, args: &[&str]| remote(addr, token, cwd.path(), args);

    // An access review campaign, admin only, decided and closed through the server.
    let (code, _, err) = run(&bob, &["access", "review", "start", "q4"]);
    assert_eq!(code, 3, "a deployer starts no review: {err}");
    // A viewer posting to the API anyway: 403 naming the role, on every review route.
    let vic_auth = format!("Bearer {vic}");
    for (path, body) in [
        ("/api/v1/access/reviews/q4", "{}"),
        (
            "/api/v1/access/reviews/q4/grants/1",
            r#"{"decision":"revoke"}"#,
        ),
        ("/api/v1/access/reviews/q4/close", "{}"),
    ] {
        let (status, v) = crate::server_deploy_cli::post(
            addr,
            path,
            body.as_bytes(),
            &[
                ("Authorization", &vic_auth),
                ("Content-Type", "application/json"),
            ],
        );
        assert_eq!(status, 403, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("admin"), "{v}");
    }
    let (code, out, err) = run(
        &alice,
        &["access", "review", "start", "q4", "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["grants"], 3, "{out}");
    let (_, out, _) = run(&alice, &["access", "list", "--output", "json"]);
    let ids: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].to_string())
        .collect();
    let (code, out, err) = run(
        &alice,
        &["access", "review", "decide", "q4", &ids[0], "confirm"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(
        &alice,
        &["access", "review", "decide", "nope", &ids[0], "confirm"],
    );
    assert_eq!(code, 2, "no such campaign: {err}");
    let (code, out, err) = run(
        &alice,
        &["access", "review", "close", "q4", "--output", "json"],
    );
    assert_eq!(code, 1, "two grants went unreviewed: {out}{err}");
    assert_eq!(
        json(&out)["unreviewed"].as_array().unwrap().len(),
        2,
        "{out}"
    );
    // The campaign is the store's: its chain entries verify locally.
    let chain = people.ok("alice", &["audit", "verify", "--output", "json"]);
    assert_eq!(json(&chain)["ok"], true, "{chain}");

    // Freeze status: the policy's, for a viewer of the environment.
    let today = jiff::Zoned::now().date();
    let policy = cwd.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod:\n    freezes: [ {{ from: {}, to: {}, reason: year-end freeze, allow: [hotfix] }} ]\n",
            today.yesterday().unwrap(),
            today.tomorrow().unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = run(
        &alice,
        &["policy", "apply", "-f", &policy.display().to_string()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(
        &vic,
        &["freeze", "status", "--env", "prod", "--output", "json"],
    );
    assert_eq!(code, 3, "frozen: {out}{err}");
    assert_eq!(json(&out)["frozen"], true, "{out}");
    assert_eq!(json(&out)["freeze"]["reason"], "year-end freeze", "{out}");
    let (code, out, _) = run(
        &vic,
        &["freeze", "status", "--env", "prod", "--type", "hotfix"],
    );
    assert_eq!(code, 0, "hotfixes pass: {out}");
    assert!(out.contains("allowed through"), "{out}");
    let (code, _, err) = run(&bob, &["freeze", "status", "--env", "prod"]);
    assert_eq!(code, 3, "bob may not read prod's policy: {err}");
    assert!(err.contains("viewer"), "{err}");

    // The compliance pack: the server's evidence, written here, the store's figures.
    let pack = cwd.path().join("pack");
    let args = [
        "report",
        "compliance",
        "--framework",
        "sox",
        "--since",
        "2020-01-01",
        "--until",
        "2100-01-01",
        "--output",
        "json",
    ];
    let mut served = args.to_vec();
    let pack_arg = pack.display().to_string();
    served.extend(["--out", &pack_arg]);
    let (code, out, err) = run(&vic, &served);
    assert!(matches!(code, 0 | 1), "{out}{err}");
    let remote_pack = json(&out);
    let local_dir = cwd.path().join("local");
    let mut local = args.to_vec();
    let local_arg = local_dir.display().to_string();
    local.extend(["--out", &local_arg]);
    let o = people.cmd("vic").args(&local).output().unwrap();
    let local_pack: Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "framework",
        "audit_head_seq",
        "chain",
        "exceptions",
        "coverage",
    ] {
        assert_eq!(remote_pack[k], local_pack[k], "{k}: {out}");
    }
    let evidence = std::fs::read_to_string(pack.join("evidence.jsonl")).unwrap();
    assert!(evidence.lines().count() > 1, "{evidence}");
    assert!(
        std::fs::read_to_string(pack.join("summary.html"))
            .unwrap()
            .contains("<html")
    );
    let (code, _, err) = run(&bob, &served);
    assert_eq!(code, 3, "reports need viewer everywhere: {err}");
    // Bundles are files of this machine: refused through a server, naming the way.
    let (code, _, err) = run(
        &vic,
        &[
            "report",
            "compliance",
            "--framework",
            "sox",
            "--since",
            "2020-01-01",
            "--out",
            &pack_arg,
            "--archive",
            "x.tar.zst",
            "--pubkey",
            "k.pub",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--archive"), "{err}");

    // The catalog: lifecycles from the server's history (api deployed to staging only).
    let out_dir = cwd.path().join("catalog");
    let (code, out, err) = remote(
        addr,
        &vic,
        release.path(),
        &[
            "catalog",
            "export",
            "-f",
            &spec_of(&release),
            "--out",
            &out_dir.display().to_string(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let yaml = std::fs::read_to_string(out_dir.join("catalog-info.yaml")).unwrap();
    assert!(yaml.contains("slipway.dev/deployed.staging"), "{yaml}");
    let local_dir = cwd.path().join("catalog-local");
    people.ok(
        "vic",
        &[
            "catalog",
            "export",
            "-f",
            &spec_of(&release),
            "--out",
            &local_dir.display().to_string(),
        ],
    );
    assert_eq!(
        yaml,
        std::fs::read_to_string(local_dir.join("catalog-info.yaml")).unwrap(),
        "the server's catalog is the store's"
    );
    let (code, _, err) = remote(
        addr,
        &bob,
        release.path(),
        &[
            "catalog",
            "export",
            "-f",
            &spec_of(&release),
            "--out",
            &out_dir.display().to_string(),
        ],
    );
    assert_eq!(code, 3, "{err}");
}
