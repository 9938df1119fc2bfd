//! `slipway rehearse` through the real binary on a real SQLite file: production refused,
//! a passing rehearsal recorded beside the store and lifting `plan`'s "rollback not
//! rehearsed" error, and a restore-from-backup rollback that loses writes missing an RPO of
//! zero (exit 1, and `plan` still blocks with the measured figure).

use std::path::Path;

use crate::slipway;

const SPEC: &str = r#"apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.2.0, type: feature }
services:
  db:
    kind: migration
    migrations: migrations
    database: DATABASE
environments:
  staging:
    target: { exec: {} }
    recovery: { rto: 1m, rpo: 0s }
  prod:
    target: { exec: {} }
    production: true
    recovery: { rto: 1m, rpo: 0s, rehearsal: required }
"#;

/// A spec beside its migrations, V1 applied to the database and V2 pending.
fn setup(dir: &Path) -> (String, String) {
    let db = format!("sqlite://{}", dir.join("staging.db").display());
    let store = format!("sqlite://{}", dir.join(".slipway/slipway.db").display());
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("V1__customers.sql"),
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);",
    )
    .unwrap();
    std::fs::write(m.join("U1__customers.sql"), "DROP TABLE customers;").unwrap();
    slipway()
        .args(["migrate", "apply", "--url", &db, "--dir"])
        .arg(&m)
        .assert()
        .success();
    std::fs::write(
        m.join("V2__orders.sql"),
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER);",
    )
    .unwrap();
    std::fs::write(m.join("U2__orders.sql"), "DROP TABLE orders;").unwrap();
    std::fs::write(dir.join("release.yaml"), SPEC.replace("DATABASE", &db)).unwrap();
    (db, store)
}

fn plan_codes(spec: &Path, store: &str) -> Vec<(String, String)> {
    let out = slipway()
        .env("SLIPWAY_STORE", store)
        .args(["plan", "--env", "prod", "--output", "json", "-f"])
        .arg(spec)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rehearsal_error(codes: &[(String, String)]) -> Option<&String> {
    codes
        .iter()
        .find(|(c, _)| c == "rollback-not-rehearsed")
        .map(|(_, m)| m)
}

#[test]
fn passing_rehearsal_lifts_the_plan_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, store) = setup(tmp.path());
    let spec = tmp.path().join("release.yaml");

    let before = plan_codes(&spec, &store);
    let msg = rehearsal_error(&before).expect("plan must say the rollback is not rehearsed");
    assert!(msg.contains("rollback not rehearsed"), "{msg}");
    assert!(msg.contains("slipway rehearse"), "{msg}");
    assert!(msg.contains("shop-1.2.0.json"), "{msg}");

    // Production is never rehearsed on.
    let refused = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "prod", "-f"])
        .arg(&spec)
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("production"), "{err}");

    let ok = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .assert()
        .code(0);
    let v: serde_json::Value = serde_json::from_slice(&ok.get_output().stdout).unwrap();
    let r = &v["rehearsal"];
    assert_eq!(r["objectives_met"], true, "{v}");
    assert_eq!(r["markers_lost"], 0, "{v}");
    assert_eq!(r["objective_rto_ms"], 60_000, "{v}");
    assert!(r["rto_ms"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(r["report"]["previous_version"], 1, "{v}");
    assert_eq!(r["report"]["new_version"], 2, "{v}");
    let record = tmp.path().join(".slipway/rehearsals/shop-1.2.0.json");
    assert!(record.is_file(), "{v}");

    let after = plan_codes(&spec, &store);
    assert_eq!(rehearsal_error(&after), None, "{after:?}");

    // Editing the release after the rehearsal makes it stale again.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("rto: 1m, rpo: 0s }", "rto: 2m, rpo: 0s }"),
    )
    .unwrap();
    let stale = plan_codes(&spec, &store);
    let msg = rehearsal_error(&stale).expect("a rehearsal older than the release must not count");
    assert!(msg.contains("older than the release"), "{msg}");
}

#[test]
fn restoring_a_backup_misses_an_rpo_of_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, store) = setup(tmp.path());
    let spec = tmp.path().join("release.yaml");

    let missed = slipway()
        .env("SLIPWAY_STORE", &store)
        .args([
            "rehearse",
            "--env",
            "staging",
            "--rollback",
            "restore-backup",
            "-f",
        ])
        .arg(&spec)
        .assert()
        .code(1);
    let text = String::from_utf8_lossy(&missed.get_output().stdout).into_owned();
    assert!(text.contains("MISSED"), "{text}");
    assert!(text.contains("RPO"), "{text}");
    assert!(text.contains("exceeds the objective 0s"), "{text}");

    let codes = plan_codes(&spec, &store);
    let msg = rehearsal_error(&codes).expect("a failed rehearsal must not count");
    assert!(msg.contains("missed the objectives"), "{msg}");
    assert!(msg.contains("RPO"), "{msg}");
}
