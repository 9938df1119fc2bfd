//! `slipway rollback RUN`: a finished run's steps are undone in reverse, by hand, audited.

use crate::slipway;

#[test]
fn a_succeeded_run_is_rolled_back_by_hand_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let spec = dir.path().join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: x, version: 1.0.0, type: patch }}
services:
  db:
    steps: [ {{ name: schema, run: \"touch {d}/schema\", undo: \"rm {d}/schema && echo db >> {d}/undo-order\" }} ]
  api:
    depends_on: [db]
    steps: [ {{ name: install, run: \"touch {d}/api\", undo: \"rm {d}/api && echo api >> {d}/undo-order\" }} ]
environments:
  staging: {{ target: {{ exec: {{}} }} }}
"
        ),
    )
    .unwrap();
    let store = format!("sqlite://{d}/s.db");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();
    assert!(dir.path().join("api").exists() && dir.path().join("schema").exists());
    // The versions the run resolved are written with it.
    let lock: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("runs")
                .join(&run)
                .join("versions.lock.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(lock["versions"]["api"]["version"], "1.0.0", "{lock:#}");
    assert_eq!(lock["digest"].as_str().unwrap().len(), 64);

    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rollback", &run, "--reason", ""])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a rollback without a reason is refused"
    );

    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args([
            "rollback",
            &run,
            "--reason",
            "checkout errors after release",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    // A rollback by hand that did what was asked exits 0 (4 is a deploy's run that
    // rolled back).
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.path().join("api").exists() && !dir.path().join("schema").exists());
    let order = std::fs::read_to_string(dir.path().join("undo-order")).unwrap();
    assert_eq!(order, "api\ndb\n", "undo runs in reverse dependency order");

    // Rolling back twice is refused; the chain still verifies and names the reason.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rollback", &run, "--reason", "again"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "already rolled back");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let logs = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["logs", &run])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stdout)
            .contains("rollback requested by hand: checkout errors after release")
    );
}

/// A service's `steps:` are a script: each starts when the one before it has finished
/// (they once all started at once, so a step could run before the one it builds on).
/// Services of one wave still run side by side.
#[test]
fn the_steps_of_a_service_run_one_after_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let spec = dir.path().join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: x, version: 1.0.0, type: patch }}
services:
  api:
    steps:
      - {{ name: download, run: \"sleep 0.3 && echo download >> {d}/api-order\" }}
      - {{ name: unpack, run: \"grep -q download {d}/api-order && echo unpack >> {d}/api-order\" }}
      - {{ name: switch, run: \"grep -q unpack {d}/api-order && echo switch >> {d}/api-order\" }}
  web:
    steps:
      - {{ name: one, run: \"echo one >> {d}/web-order\" }}
      - {{ name: two, run: \"echo two >> {d}/web-order\" }}
environments:
  staging: {{ target: {{ exec: {{}} }} }}
"
        ),
    )
    .unwrap();
    let o = slipway()
        .env("SLIPWAY_STORE", format!("sqlite://{d}/s.db"))
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let order = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(order("api-order"), "download\nunpack\nswitch\n");
    assert_eq!(order("web-order"), "one\ntwo\n");
}
