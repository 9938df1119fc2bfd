//! Declared readiness checks are gates, through the real binary: a spec whose endpoint is
//! refused, whose unix user is missing and whose capacity need is 500 GiB is refused
//! before its first wave (exit 3, the table, no run, nothing installed) where it used to
//! deploy with exit 0; the same spec made right deploys and keeps what was measured with
//! the run; an environment that marks a kind advisory (`advisory_checks`) turns its failure
//! into a warning.

use std::path::Path;

use crate::slipway;

/// A release of `api` on the exec target with these endpoints, accounts and memory.
fn spec(dir: &Path, endpoint: &str, user: &str, memory: &str) -> String {
    spec_with(dir, endpoint, user, memory, "")
}

/// [`spec`] with more lines for `environments.prod`.
fn spec_with(dir: &Path, endpoint: &str, user: &str, memory: &str, prod: &str) -> String {
    let p = dir.join("release.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
    steps: [ {{ name: install, run: \"touch installed\", undo: \"rm -f installed\" }} ]
    endpoints: [\"{endpoint}\"]
    accounts: [ {{ unix: {user} }} ]
    resources: {{ memory: {memory} }}
environments:
  prod:
    target: {{ exec: {{}} }}
{prod}"
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn rows(v: &serde_json::Value) -> Vec<(String, String)> {
    v["readiness"]
        .as_array()
        .unwrap_or_else(|| panic!("no readiness rows: {v:#}"))
        .iter()
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_owned(),
                r["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn verdict_of(v: &serde_json::Value, check: &str) -> String {
    rows(v)
        .into_iter()
        .find(|(c, _)| c.starts_with(check))
        .unwrap_or_else(|| panic!("no {check} row: {v:#}"))
        .1
}

#[test]
fn failing_readiness_blocks_the_deploy_before_its_first_wave_and_passing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let deploy = |spec: &str| {
        let o = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(["deploy", "--env", "prod", "--output", "json", "-f", spec])
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
        (
            o.status.code(),
            v,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    // The bad release: refused, unreachable, missing, too big.
    let bad = spec(
        d,
        &format!("127.0.0.1:{}", closed_port()),
        "no-such-user-slipway",
        "500Gi",
    );
    let (code, v, err) = deploy(&bad);
    assert_eq!(code, Some(3), "blocked: {v:#}\n{err}");
    assert_eq!(verdict_of(&v, "reach.api"), "fail", "{v:#}");
    assert_eq!(verdict_of(&v, "accounts.unix"), "fail", "{v:#}");
    assert_eq!(verdict_of(&v, "capacity.memory"), "fail", "{v:#}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("3 readiness check(s) failed before the first wave, no run was started"),
        "{error}"
    );
    assert!(!d.join("installed").exists(), "nothing was installed");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["history", "--output", "json"])
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h.as_array().map(Vec::len), Some(0), "no run: {h:#}");

    // In text, the table with the failing rows and their fixes.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "prod", "-f", &bad])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("readiness before the first wave"), "{text}");
    assert!(
        text.contains("useradd --system no-such-user-slipway"),
        "{text}"
    );
    assert!(text.contains("nothing listens on"), "{text}");

    // The same checks by hand.
    let o = slipway()
        .args(["check", "--env", "prod", "--only", "accounts", "-f", &bad])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // Made right: every row passes and the deploy goes ahead.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let good = spec(
        d,
        &listener.local_addr().unwrap().to_string(),
        "root",
        "1Mi",
    );
    let (code, v, err) = deploy(&good);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert!(
        rows(&v).iter().all(|(_, verdict)| verdict == "pass"),
        "{v:#}"
    );
    assert!(d.join("installed").exists());
    let run = v["run"].as_str().unwrap();
    // The rows are evidence in the store, committed to by the audit chain…
    let db = d.join("state/s.db");
    let sql = |q: &str| {
        let o = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(q)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let kept = sql(&format!(
        "SELECT data FROM records WHERE kind = 'readiness' AND key = '{run}'"
    ));
    assert!(
        kept.contains("reach.api") && kept.contains("capacity.memory") && kept.contains(run),
        "{kept}"
    );
    assert!(
        !d.join("state/runs")
            .join(run)
            .join("readiness.json")
            .exists()
    );
    slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "verify"])
        .assert()
        .success();
    // …so a failing row edited into a pass (or the reverse) is named by `audit verify`.
    sql("UPDATE records SET data = replace(data, '\"pass\"', '\"fail\"') WHERE kind = 'readiness'");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!("readiness record `{run}` was edited")),
        "{said}"
    );

    // The plan shows the gate.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["plan", "--env", "prod", "--output", "json", "-f", &good])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gate = plan["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "readiness")
        .unwrap_or_else(|| panic!("no readiness gate: {plan:#}"));
    assert_eq!(
        gate["checks"],
        serde_json::json!(["reach", "capacity", "accounts"])
    );
}

#[test]
fn an_environment_marks_a_readiness_kind_advisory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let run = |args: &[&str]| {
        slipway()
            .env("SLIPWAY_STORE", &store)
            .args(args)
            .output()
            .unwrap()
    };
    // Only capacity fails, and it blocks.
    let too_big = spec(d, &addr, "root", "500Gi");
    let o = run(&[
        "deploy", "--env", "prod", "--output", "json", "-f", &too_big,
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(!d.join("installed").exists());

    // Marked advisory there: shown, not blocking.
    let advisory = spec_with(
        d,
        &addr,
        "root",
        "500Gi",
        "    advisory_checks: [capacity]\n",
    );
    let o = run(&["plan", "--env", "prod", "--output", "json", "-f", &advisory]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gate = plan["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "readiness")
        .unwrap()
        .clone();
    assert_eq!(
        gate["advisory"],
        serde_json::json!(["capacity"]),
        "{gate:#}"
    );
    assert!(
        gate["source"]
            .as_str()
            .unwrap()
            .contains("environments.prod.advisory_checks"),
        "{gate:#}"
    );
    let o = run(&["deploy", "--env", "prod", "-f", &advisory]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("fail (advisory)"), "{text}");
    assert!(d.join("installed").exists());
}

/// Making a check advisory loosens a gate, so under an admin policy only the policy may:
/// the spec's `advisory_checks` no longer let a failing capacity check through (a warning
/// says why), and the policy's own list does.
#[test]
fn under_an_admin_policy_only_the_policy_makes_a_check_advisory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let run = |args: &[&str]| {
        slipway()
            .env("SLIPWAY_STORE", &store)
            .args(args)
            .output()
            .unwrap()
    };
    let advisory = spec_with(
        d,
        &addr,
        "root",
        "500Gi",
        "    advisory_checks: [capacity]\n",
    );
    let apply = |version: u32, text: &str| {
        let p = d.join(format!("policy-{version}.yaml"));
        std::fs::write(&p, text).unwrap();
        let o = run(&["policy", "apply", "-f", &p.display().to_string()]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    };
    let gate_of = |plan: &serde_json::Value| {
        plan["gates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gate"] == "readiness")
            .unwrap()
            .clone()
    };
    apply(
        1,
        "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod:\n    change_record: false\n",
    );
    let o = run(&["plan", "--env", "prod", "--output", "json", "-f", &advisory]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        gate_of(&plan)["advisory"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{plan:#}"
    );
    let warning = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "policy-advisory-checks")
        .unwrap_or_else(|| panic!("{plan:#}"));
    assert_eq!(warning["severity"], "warning");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("[capacity] stay gates"),
        "{warning}"
    );
    let o = run(&["deploy", "--env", "prod", "-f", &advisory]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(!d.join("installed").exists());

    // The admin lists capacity as advisory in prod: now it only warns.
    apply(
        2,
        "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod:\n    advisory_checks: [capacity]\n",
    );
    let o = run(&["plan", "--env", "prod", "--output", "json", "-f", &advisory]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gate = gate_of(&plan);
    assert_eq!(
        gate["advisory"],
        serde_json::json!(["capacity"]),
        "{gate:#}"
    );
    assert!(
        gate["source"]
            .as_str()
            .unwrap()
            .contains("admin policy v2 (advisory_checks)"),
        "{gate:#}"
    );
    let o = run(&["deploy", "--env", "prod", "-f", &advisory]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(d.join("installed").exists());
}
