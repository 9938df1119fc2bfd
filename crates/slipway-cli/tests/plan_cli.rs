//! `slipway plan`, `validate`, `diff`, `schema` as a user runs them: output snapshots and
//! exit codes.

use crate::{repo, slipway};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plan_text_and_json_snapshots_for_every_example() {
    for (example, envs, code) in [
        ("shop", &["staging"][..], 0),
        // Production's database URL is the secret SHOP_DB_URL, unset here: the plan says
        // so and blocks (3) instead of the deploy failing at its migration.
        ("shop", &["prod"][..], 3),
        ("hotfix", &["prod"][..], 0),
        // The repository has no `payments-v3.1.2` tag: the plan says so and blocks (3).
        ("security-patch", &["staging", "prod"][..], 3),
    ] {
        for env in envs {
            let file = format!("examples/{example}/release.yaml");
            let text = slipway()
                .args(["plan", "-f", &file, "--env", env])
                .output()
                .unwrap();
            assert_eq!(text.status.code(), Some(code), "{example}/{env}: {text:?}");
            insta::assert_snapshot!(format!("plan-text-{example}-{env}"), stdout(&text));

            let json = slipway()
                .args(["plan", "-f", &file, "--env", env, "--output", "json"])
                .output()
                .unwrap();
            assert_eq!(json.status.code(), Some(code));
            let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
            assert_eq!(v["environment"], *env);
            assert_eq!(v["digest"].as_str().unwrap().len(), 64);
            insta::assert_json_snapshot!(format!("plan-json-{example}-{env}"), v);
        }
    }
}

#[test]
fn invalid_spec_exits_2_with_located_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: x, version: 1.0.0, type: patch }\nservices:\n  api: { dependson: [db] }\nenvironments:\n  s: { target: { exec: {} } }\n",
    )
    .unwrap();
    let o = slipway()
        .args(["plan", "--env", "s", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yaml:5:10"), "{err}");
    assert!(err.contains("did you mean `depends_on`"), "{err}");

    let o = slipway()
        .args(["validate", "--output", "json", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "unknown-field");
    assert_eq!(d["path"], "services.api.dependson");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(5), Some(10))
    );
}

#[test]
fn bad_arguments_are_input_errors() {
    let o = slipway()
        .args([
            "plan",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "production",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("prod, staging"));

    let o = slipway()
        .args(["plan", "-f", "does/not/exist.yaml", "--env", "prod"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does/not/exist.yaml"));

    let o = slipway()
        .args(["plan", "-f", "examples", "--env", "prod"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a directory"));

    // clap's own usage errors also exit 2.
    let o = slipway().args(["plan", "--bogus"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn tag_convention_is_checked_against_a_real_git_repo() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("release.yaml");
    std::fs::copy(repo().join("examples/security-patch/release.yaml"), &spec).unwrap();
    // The plan verifies the artifact and its signature, so they come along.
    for f in [
        "dist/payments-3.1.2.tar.gz",
        "dist/payments-3.1.2.tar.gz.minisig",
        "keys/release-2025.pub",
        "keys/release-2026.pub",
    ] {
        let to = dir.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join("examples/security-patch").join(f), to).unwrap();
    }
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .current_dir(dir.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "release"]);
    git(&["tag", "payments-v3.1.1"]);
    let o = slipway()
        .args(["plan", "--env", "prod", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(msg.contains("`payments-v3.1.2`"), "{msg}");

    git(&["tag", "payments-v3.1.2"]);
    let o = slipway()
        .args(["plan", "--env", "prod", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn diff_reports_environment_drift() {
    let o = slipway()
        .args([
            "diff",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "staging",
            "--env",
            "prod",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["in_parity"], false);
    let items: Vec<(String, String)> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["item"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("variable", "replicas_hint"),
        ("version", "api"),
        ("target", "strategy"),
        ("policy", "approvals"),
    ] {
        assert!(
            items.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} not in {items:?}"
        );
    }
    let o = slipway()
        .args([
            "diff",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "staging",
            "--env",
            "prod",
            "--fail-on-drift",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("diff-shop", stdout(&o));
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let o = slipway().arg("schema").output().unwrap();
    assert!(o.status.success());
    let committed = std::fs::read_to_string(repo().join("schema/slipway-v1.schema.json")).unwrap();
    assert_eq!(stdout(&o), committed);
}

#[test]
fn help_documents_exit_codes_and_examples() {
    let o = slipway().arg("--help").output().unwrap();
    let h = stdout(&o);
    for want in [
        "Exit codes:",
        "3   blocked by a gate",
        "slipway plan -f examples/shop/release.yaml",
    ] {
        assert!(h.contains(want), "--help lacks {want:?}");
    }
}

#[test]
fn a_port_in_a_process_target_config_template_blocks_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.conf.j2"),
        "region = \"{{ vars.region }}\"\nlisten = \"127.0.0.1:{{ port }}\"\n",
    )
    .unwrap();
    let f = dir.path().join("release.yaml");
    std::fs::write(
        &f,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    run: { command: \"api --port {{ port }}\" }
    config: [ { template: api.conf.j2, dest: api.conf } ]
environments:
  live:
    target: { process: {} }
    vars: { region: eu-west-1 }
",
    )
    .unwrap();
    // Text: exit 3 (blocked by a finding), naming file, line, placeholder and the fix.
    let o = slipway()
        .args(["plan", "--env", "live", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let text = stdout(&o);
    assert!(
        text.contains(
            "error [port-in-version-config] api.conf.j2:2: `{{ port }}` in the config of `api`"
        ),
        "{text}"
    );
    // JSON: the same finding, in full.
    let o = slipway()
        .args(["plan", "--env", "live", "--output", "json", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    insta::assert_json_snapshot!("plan-port-in-version-config", v["findings"]);
}

/// An `ssh` plan the ssh target cannot carry out — a service running a container image on
/// the hosts, an inventory that does not load — is blocked by findings at plan
/// time, before anyone approves it, and a deploy is refused as blocked without a run.
/// (No host is contacted for this.)
#[test]
fn an_ssh_plan_the_target_cannot_carry_out_blocks_the_plan_and_the_deploy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yaml"), "hosts: [web1, web2]\n").unwrap();
    let f = dir.path().join("release.yaml");
    std::fs::write(
        &f,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    run: { image: \"registry.example/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" }
environments:
  fleet:
    target: { ssh: { inventory: hosts.yaml } }
",
    )
    .unwrap();
    let o = slipway()
        .args(["plan", "--env", "fleet", "--output", "json", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let find = |code: &str| {
        findings
            .iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("no {code} finding: {v}"))
    };
    let unsupported = find("ssh-unsupported");
    assert_eq!(unsupported["severity"], "error");
    let message = unsupported["message"].as_str().unwrap();
    assert!(
        message.contains("services.api.run.image") && message.contains("release.yaml"),
        "{message}"
    );
    let inventory = find("ssh-inventory");
    assert_eq!(inventory["severity"], "error");
    let message = inventory["message"].as_str().unwrap();
    assert!(
        message.contains("hosts.yaml")
            && message.contains("environments.fleet.target.ssh")
            && message.contains("fix:"),
        "{message}"
    );
    assert!(
        !findings.iter().any(|f| f["code"] == "target-unavailable"),
        "ssh is deployable: {v}"
    );

    let store = dir.path().join("store.db");
    let o = slipway()
        .current_dir(dir.path())
        .env("SLIPWAY_STORE", format!("sqlite://{}", store.display()))
        .args(["deploy", "--env", "fleet", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ssh-unsupported"),
        "{o:?}"
    );
    let o = slipway()
        .current_dir(dir.path())
        .env("SLIPWAY_STORE", format!("sqlite://{}", store.display()))
        .args(["history", "--output", "json"])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&o.stdout);
    assert!(
        !history.contains("\"fleet\""),
        "a run was created: {history}"
    );
}
