//! Promotion through environments, through the real binary: with the spec's lifecycle
//! `staging → prod`, production is refused until the same inputs (version,
//! artifact digest, config template digest) succeeded in staging — not while staging's
//! newest attempt of them rolled back, and not for other bytes under the same version —
//! then allowed, with the evidence in the plan; the override needs a reason and an
//! approver other than the author, and is in the audit chain.

use std::path::Path;

use crate::People;

fn sha256(bytes: &[u8]) -> String {
    slipway_package::digest::sha256_bytes(bytes)
}

/// A release whose `api` installs `artifact.bin` (these bytes) and renders a template;
/// its install fails while `fail-next` exists in the spec's directory.
fn spec(dir: &Path, artifact: &[u8]) -> String {
    std::fs::write(dir.join("artifact.bin"), artifact).unwrap();
    std::fs::write(dir.join("api.conf.j2"), "port = {{ vars.port }}\n").unwrap();
    let p = dir.join("release.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
    artifact: {{ path: artifact.bin, sha256: \"{}\" }}
    config: [ {{ template: api.conf.j2, dest: api.conf }} ]
    steps: [ {{ name: install, run: \"test ! -e fail-next && touch installed\", undo: \"true\" }} ]
lifecycle: {{ order: [staging, prod] }}
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ port: 8081 }}
  prod:
    target: {{ exec: {{}} }}
    vars: {{ port: 80 }}
",
            sha256(artifact)
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

fn finding<'a>(plan: &'a serde_json::Value, code: &str) -> Option<&'a serde_json::Value> {
    plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
}

#[test]
fn prod_is_refused_until_the_same_inputs_succeeded_in_staging_and_an_override_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    // Access control on: `dev` deploys, `bob` approves, each with their own token.
    let mut people = People::new(&store, "admin");
    people
        .add("dev", "deployer", "staging")
        .add("dev", "deployer", "prod")
        .add("bob", "approver", "prod");
    let cmd = |user: &str| people.cmd(user);
    let s = spec(d, b"api 1.0.0 build 1");
    let deploy = |env: &str, extra: &[&str]| {
        cmd("dev")
            .args(["deploy", "--env", env, "--output", "json", "-f", &s])
            .args(extra)
            .output()
            .unwrap()
    };
    let plan = |env: &str| {
        json(
            &cmd("dev")
                .args(["plan", "--env", env, "--output", "json", "-f", &s])
                .output()
                .unwrap(),
        )
    };

    // Nothing in staging yet: prod is refused, with the finding in the plan.
    let o = deploy("prod", &[]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        json(&o)["error"]
            .as_str()
            .unwrap()
            .contains("promotion-unproven: no run in staging deployed these inputs"),
        "{o:?}"
    );
    let p = plan("prod");
    let f = finding(&p, "promotion-unproven").unwrap_or_else(|| panic!("{p:#}"));
    assert_eq!(f["severity"], "error");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("staging has no run at all"),
        "{f}"
    );

    // Staging's attempt rolls back: still refused, naming that run.
    std::fs::write(d.join("fail-next"), "").unwrap();
    let o = deploy("staging", &[]);
    assert_eq!(o.status.code(), Some(4), "rolled back: {o:?}");
    let failed = json(&o)["run"].as_str().unwrap().to_owned();
    let o = deploy("prod", &[]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let error = json(&o)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&format!(
            "the newest run of these inputs in staging, {failed}, ended rolled_back"
        )),
        "{error}"
    );

    // Staging succeeds with these inputs: prod is allowed, the plan names the evidence.
    std::fs::remove_file(d.join("fail-next")).unwrap();
    let o = deploy("staging", &[]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let staged = json(&o)["run"].as_str().unwrap().to_owned();
    let p = plan("prod");
    let gate = p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "promotion")
        .unwrap_or_else(|| panic!("{p:#}"));
    assert_eq!(gate["from"], "staging");
    assert_eq!(gate["run"], staged.as_str());
    assert!(gate["finished_at"].is_string(), "{gate}");
    let evidence = finding(&p, "promotion").unwrap_or_else(|| panic!("{p:#}"));
    let message = evidence["message"].as_str().unwrap();
    assert!(message.contains(&staged), "{message}");
    assert!(
        message.contains(&format!(
            "artifact:api={}",
            &sha256(b"api 1.0.0 build 1")[..12]
        )),
        "{message}"
    );
    assert!(message.contains("config:api:api.conf.j2="), "{message}");
    let o = deploy("prod", &[]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // Other bytes under the same version: not what succeeded in staging.
    let s2 = spec(d, b"api 1.0.0 build 2");
    assert_eq!(s2, s);
    let o = deploy("prod", &[]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        json(&o)["error"].as_str().unwrap().contains(&format!(
            "the newest run there is {staged} (1.0.0, succeeded) with other inputs"
        )),
        "{o:?}"
    );

    // The override: a reason, an approver who is not the author, and the audit chain.
    let o = deploy(
        "prod",
        &[
            "--override-promotion",
            "--reason",
            "build 2 only re-signs build 1",
            "--no-wait",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "waits for an approver: {o:?}");
    let v = json(&o);
    assert_eq!(v["blocked"]["gate"], "approvals", "{v:#}");
    let run = v["run"].as_str().unwrap().to_owned();
    let o = cmd("dev").args(["approve", &run]).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "the author cannot approve: {o:?}");
    let o = cmd("bob").args(["approve", &run]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = cmd("dev")
        .args(["resume", &run, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = cmd("dev")
        .args(["logs", &run, "--output", "json"])
        .output()
        .unwrap();
    let journal = String::from_utf8_lossy(&o.stdout).into_owned();
    let waiver = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e.to_string().contains("waiver_applied"))
        .unwrap_or_else(|| panic!("no waiver in the journal: {journal}"));
    let text = waiver.to_string();
    assert!(text.contains("promotion-unproven:staging->prod"), "{text}");
    assert!(text.contains("build 2 only re-signs build 1"), "{text}");
    let o = cmd("admin")
        .args(["audit", "verify", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

/// Promotion belongs to the admin policy: a spec with no `lifecycle` still cannot reach
/// prod before its inputs succeeded in the environment the policy's `promote_from` names.
#[test]
fn the_policys_promote_from_holds_for_a_spec_without_a_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let mut people = People::new(&store, "admin");
    people
        .add("dev", "deployer", "staging")
        .add("dev", "deployer", "prod");
    let s = spec(d, b"api 1.0.0 build 7");
    let text = std::fs::read_to_string(&s)
        .unwrap()
        .replace("lifecycle: { order: [staging, prod] }\n", "");
    std::fs::write(&s, text).unwrap();
    let deploy = |env: &str| {
        people
            .cmd("dev")
            .args(["deploy", "--env", env, "--output", "json", "-f", &s])
            .output()
            .unwrap()
    };
    // Without a policy, nothing asks for staging first.
    let plan = json(
        &people
            .cmd("dev")
            .args(["plan", "--env", "prod", "--output", "json", "-f", &s])
            .output()
            .unwrap(),
    );
    assert!(
        plan["findings"]
            .as_array()
            .is_none_or(|f| !f.iter().any(|f| f["code"] == "promotion-unproven")),
        "{plan:#}"
    );

    let policy = d.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod:\n    promote_from: { environment: staging }\n",
    )
    .unwrap();
    people.ok(
        "admin",
        &["policy", "apply", "-f", &policy.display().to_string()],
    );
    let o = deploy("prod");
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        json(&o)["error"]
            .as_str()
            .unwrap()
            .contains("promotion-unproven"),
        "{o:?}"
    );
    assert!(!d.join("installed").exists());
    let plan = json(
        &people
            .cmd("dev")
            .args(["plan", "--env", "prod", "--output", "json", "-f", &s])
            .output()
            .unwrap(),
    );
    let gate = plan["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "promotion")
        .unwrap_or_else(|| panic!("{plan:#}"));
    assert!(
        gate["source"]
            .as_str()
            .unwrap()
            .contains("admin policy v1 (promote_from) (staging → prod)"),
        "{gate}"
    );

    // The same inputs succeed in staging: prod may follow.
    let o = deploy("staging");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = deploy("prod");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}
