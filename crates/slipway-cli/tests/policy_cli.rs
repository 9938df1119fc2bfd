//! Policy belongs to admins, not to the release it governs: through the real binary, a
//! spec that drops its approvals and its production flag still gets both from the admin
//! policy in the store; a freeze of the policy stops every release (but the types it
//! allows) including a run planned before it; a merge pipeline asks `freeze status`; a
//! non-admin cannot apply policy, a bad policy file is refused with its line; a spec may
//! tighten the policy, never loosen it.

use crate::People;

/// A release whose prod environment declares neither approvals nor production.
fn spec(dir: &std::path::Path, name: &str, release_type: &str, extra: &str) -> String {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: {name}, version: 1.0.0, type: {release_type} }}
services:
  api: {{ steps: [ {{ name: install, run: \"touch installed-{name}\", undo: \"true\" }} ] }}
environments:
  prod:
    target: {{ exec: {{}} }}
{extra}"
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn policy(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup() -> (tempfile::TempDir, People) {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/s.db", dir.path().display());
    let mut p = People::new(&store, "admin");
    p.add("dev", "deployer", "prod")
        .add("bob", "approver", "prod")
        .add("dana", "approver", "prod");
    (dir, p)
}

fn plan_json(p: &People, who: &str, spec: &str) -> serde_json::Value {
    let o = p
        .cmd(who)
        .args(["plan", "--env", "prod", "--output", "json", "-f", spec])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn approvals_gate(plan: &serde_json::Value) -> Vec<(u64, String)> {
    plan["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["gate"] == "approvals")
        .map(|g| {
            (
                g["required"].as_u64().unwrap(),
                g["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const PROD_POLICY: &str = "apiVersion: slipway/v1
kind: Policy
environments:
  prod:
    production: true
    approvals: { required: 2, four_eyes: true }
";

#[test]
fn a_spec_cannot_drop_the_approvals_or_the_production_flag_the_policy_requires() {
    let (dir, p) = setup();
    let d = dir.path();
    let s = spec(d, "shop", "patch", "");
    let before = plan_json(&p, "dev", &s);
    assert_eq!(before["production"], false);
    assert!(approvals_gate(&before).is_empty());

    // Only an admin applies policy.
    let file = policy(d, "policy.yaml", PROD_POLICY);
    let o = p
        .cmd("dev")
        .args(["policy", "apply", "-f", &file])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    p.ok("admin", &["policy", "apply", "-f", &file]);

    let after = plan_json(&p, "dev", &s);
    assert_eq!(after["production"], true, "{after:#}");
    let gates = approvals_gate(&after);
    assert_eq!(gates.len(), 1, "{gates:?}");
    assert_eq!(gates[0].0, 2);
    assert!(gates[0].1.contains("admin policy v1"), "{gates:?}");
    assert_eq!(after["policy"]["version"], 1);
    assert_ne!(
        after["digest"], before["digest"],
        "the policy is part of the plan"
    );
    let shown = p.ok("dev", &["plan", "--env", "prod", "-f", &s]);
    assert!(shown.contains("admin policy v1"), "{shown}");

    // The deploy waits for the policy's approvals; the run is a production run.
    let o = p
        .cmd("dev")
        .args([
            "deploy",
            "--env",
            "prod",
            "--no-wait",
            "--output",
            "json",
            "-f",
            &s,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["blocked"]["gate"], "approvals", "{v}");
    assert!(!d.join("installed-shop").exists());
    let run = v["run"].as_str().unwrap().to_owned();
    let shown: serde_json::Value =
        serde_json::from_str(&p.ok("bob", &["plan", "show", &run, "--output", "json"])).unwrap();
    assert_eq!(shown["plan"]["production"], true, "{shown}");

    // The policy's other requirements hold too: a rehearsal before production, a change
    // record, the release types allowed.
    let file = policy(
        d,
        "policy2.yaml",
        &format!(
            "{PROD_POLICY}    rehearsal: required\n    change_record: true\n    release_types: [hotfix, security]\n"
        ),
    );
    p.ok("admin", &["policy", "apply", "-f", &file]);
    let v2 = plan_json(&p, "dev", &s);
    let codes: Vec<&str> = v2["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    for code in [
        "rollback-not-rehearsed",
        "change-record-missing",
        "policy-release-type",
    ] {
        assert!(codes.contains(&code), "{code} missing: {codes:?}");
    }
    assert_eq!(v2["policy"]["version"], 2);

    // A spec may tighten: three approvals where the policy asks two.
    let strict = spec(
        d,
        "strict",
        "patch",
        "    approvals: { required: 3, four_eyes: true }\n",
    );
    let gates = approvals_gate(&plan_json(&p, "dev", &strict));
    assert_eq!(gates[0].0, 3, "{gates:?}");
}

#[test]
fn a_policy_freeze_stops_every_release_but_the_types_it_allows_and_pipelines_can_ask() {
    let (dir, p) = setup();
    let d = dir.path();
    let feature = spec(d, "web", "feature", "    approvals: { required: 1 }\n");
    // Planned and waiting for its approval before the freeze exists.
    let o = p
        .cmd("dev")
        .args([
            "deploy",
            "--env",
            "prod",
            "--no-wait",
            "--output",
            "json",
            "-f",
            &feature,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let waiting = v["run"].as_str().unwrap().to_owned();

    let o = p
        .cmd("dev")
        .args(["freeze", "status", "--env", "prod"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let today = jiff::Zoned::now().date();
    let file = policy(
        d,
        "freeze.yaml",
        &format!(
            "apiVersion: slipway/v1
kind: Policy
environments:
  prod:
    freezes: [ {{ from: {}, to: {}, reason: year-end freeze, allow: [hotfix] }} ]
",
            today.yesterday().unwrap(),
            today.tomorrow().unwrap()
        ),
    );
    p.ok("admin", &["policy", "apply", "-f", &file]);
    let o = p
        .cmd("dev")
        .args(["freeze", "status", "--env", "prod", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["frozen"], true, "{st}");
    let o = p
        .cmd("dev")
        .args(["freeze", "status", "--env", "prod", "--type", "hotfix"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "hotfixes pass: {}", text(&o));

    // Another release is refused during the freeze, whatever its spec says.
    let other = spec(d, "billing", "patch", "");
    let o = p
        .cmd("dev")
        .args(["deploy", "--env", "prod", "--no-wait", "-f", &other])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("year-end freeze"), "{}", text(&o));
    assert!(!d.join("installed-billing").exists());
    // The run planned before the freeze does not start either, even once approved.
    p.ok("bob", &["approve", &waiting]);
    let o = p
        .cmd("dev")
        .args(["resume", &waiting, "--no-wait", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("year-end freeze"), "{}", text(&o));
    assert!(!d.join("installed-web").exists());
    // A hotfix is allowed through.
    let hotfix = spec(d, "fix", "hotfix", "");
    let o = p
        .cmd("dev")
        .args(["deploy", "--env", "prod", "--no-wait", "-f", &hotfix])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(d.join("installed-fix").exists());
}

#[test]
fn a_bad_policy_file_is_refused_with_its_line_and_nothing_is_applied() {
    let (dir, p) = setup();
    let file = policy(
        dir.path(),
        "bad.yaml",
        "apiVersion: slipway/v1
kind: Policy
environments:
  prod:
    approvals: { required: 2 }
    windows: [ { cron: \"0 9 * * * *\", timezone: Mars/Olympus, duration: 6h } ]
",
    );
    let o = p
        .cmd("admin")
        .args(["policy", "apply", "-f", &file])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("bad.yaml") && t.contains(":6:"), "{t}");
    assert!(t.contains("Mars/Olympus"), "{t}");
    let shown = p.ok("admin", &["policy", "show"]);
    assert!(shown.contains("no policy applied"), "{shown}");
}
