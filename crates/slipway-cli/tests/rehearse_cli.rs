//! `slipway rehearse` through the real binary on a real SQLite file: production refused,
//! a passing rehearsal recorded in the store (a governance record the audit chain commits
//! to) and lifting `plan`'s "rollback not rehearsed" error, and a restore-from-backup
//! rollback that loses writes missing an RPO of zero (exit 1, and `plan` still blocks with
//! the measured figure) — also after its record was edited by hand to pass (refused, and
//! named by `audit verify`, exit 7). `--from-backup latest` restores the newest real
//! backup of the backup store (refused when it holds none) and measures RPO as its age; a
//! release without migrations rehearses its application rollback; a database-only
//! rehearsal does not satisfy a release that also changes services.

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
    assert!(msg.contains("rehearsal record of shop 1.2.0"), "{msg}");

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
    assert!(
        v["record"].as_str().unwrap().contains("rehearsal record"),
        "{v}"
    );
    let db = tmp.path().join(".slipway/slipway.db");
    assert_eq!(
        sqlite3(&db, "SELECT key FROM records WHERE kind = 'rehearsal'").trim(),
        r#"["shop","1.2.0"]"#
    );

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

    // The failed record edited by hand to pass (the issue's bypass): `plan` does not trust
    // it, and `audit verify` names it.
    let db = tmp.path().join(".slipway/slipway.db");
    sqlite3(
        &db,
        "UPDATE records SET data = json_set(data, '$.rpo_ms', 0, '$.markers_lost', 0, '$.objectives_met', json('true')) WHERE kind = 'rehearsal'",
    );
    let codes = plan_codes(&spec, &store);
    let msg = rehearsal_error(&codes).expect("an edited record must not count");
    assert!(msg.contains("does not verify"), "{msg}");
    assert!(
        msg.contains(r#"rehearsal record `["shop","1.2.0"]` was edited"#),
        "{msg}"
    );
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("rehearsal record"), "{text}");
}

/// Run SQL on an SQLite file with the real `sqlite3` CLI.
fn sqlite3(db: &Path, sql: &str) -> String {
    let o = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 CLI is installed (apt install sqlite3)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shop with an application service installed by exec steps beside the migrations:
/// `install` records the running version in `current` and keeps the previous one; its
/// `undo` puts the previous one back (`UNDO` lets a test break it).
const RELEASE: &str = r#"apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.3.0, type: feature }
services:
  db:
    kind: migration
    migrations: migrations
    database: "{{ vars.db }}"
  web:
    depends_on: [db]
    steps:
      - name: install
        run: "cp current current.prev && echo 1.3.0 > current"
        undo: "UNDO"
    readiness: { command: "test -s current", deadline: 5s }
environments:
  staging:
    target: { exec: {} }
    vars: { db: DATABASE }
    recovery: { rto: 1m, rpo: 0s }
"#;

fn setup_release(dir: &Path, undo: &str) -> (String, std::path::PathBuf) {
    let (db, store) = setup(dir);
    std::fs::write(dir.join("current"), "1.2.0\n").unwrap();
    let spec = dir.join("release.yaml");
    std::fs::write(
        &spec,
        RELEASE.replace("DATABASE", &db).replace("UNDO", undo),
    )
    .unwrap();
    (store, spec)
}

#[test]
fn whole_release_rehearsal_deploys_and_rolls_back_a_real_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, spec) = setup_release(tmp.path(), "mv current.prev current");

    // Overrides that only make sense for the migrations alone are refused up front.
    let refused = slipway()
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
        .code(2);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("--database-only"), "{err}");

    let ok = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .assert()
        .code(0);
    let v: serde_json::Value = serde_json::from_slice(&ok.get_output().stdout).unwrap();
    assert_eq!(v["scope"], "both", "{v}");
    assert_eq!(v["rehearsal"]["scope"], "both", "{v}");
    let r = &v["rehearsal"];
    assert_eq!(r["objectives_met"], true, "{v}");
    assert_eq!(r["markers_lost"], 0, "{v}");
    assert_eq!(r["report"]["previous_version"], 1, "{v}");
    assert_eq!(r["report"]["new_version"], 2, "{v}");
    assert_eq!(r["report"]["schema_restored"], true, "{v}");
    assert!(r["rto_ms"].as_u64().unwrap() > 0, "{v}");

    // It was a real run of the release, deployed then rolled back, in the store's history.
    let run = v["run"]
        .as_str()
        .expect("the rehearsal names its run")
        .to_owned();
    let status = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["status", &run, "--output", "json"])
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    assert_eq!(s["run"]["state"], "rolled_back", "{s}");
    let undone: Vec<&str> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|st| st["status"] == "undone")
        .map(|st| st["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(undone, ["db/migrate", "web/install"], "{s}");
    // The application is back on the previous version.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("current")).unwrap(),
        "1.2.0\n"
    );
    slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "verify"])
        .assert()
        .success();
}

#[test]
fn a_release_whose_rollback_fails_fails_the_rehearsal() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, spec) = setup_release(tmp.path(), "exit 3");

    let failed = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "staging", "-f"])
        .arg(&spec)
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
    assert!(err.contains("roll the release back"), "{err}");
    assert!(err.contains("slipway rollback"), "{err}");
    // No record: a rehearsal that failed cannot lift the plan's requirement.
    let db = tmp.path().join(".slipway/slipway.db");
    assert_eq!(
        sqlite3(&db, "SELECT count(*) FROM records WHERE kind = 'rehearsal'").trim(),
        "0"
    );
}

/// A real backup of "production" (another file at the same schema version), taken before
/// the rehearsal by `slipway backup create`; the rehearsal must restore the newest of the
/// store's backups, never take its own, and measure RPO as that backup's age.
#[test]
fn from_backup_latest_restores_the_newest_real_backup_and_measures_its_age() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (db, store) = setup(d);
    let spec = d.join("release.yaml");
    // Staging's objectives allow an hour of lost writes: a restore of a fresh backup meets it.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replacen("rpo: 0s", "rpo: 1h", 1)).unwrap();
    let prod = d.join("prod.db");
    std::fs::copy(d.join("staging.db"), &prod).unwrap();
    let prod_url = format!("sqlite://{}", prod.display());
    let backups = d.join("prod-backups");

    // None yet: refused, saying how to get one.
    let refused = slipway()
        .env("SLIPWAY_STORE", &store)
        .args([
            "rehearse",
            "--env",
            "staging",
            "--from-backup",
            "latest",
            "--backup-store",
        ])
        .arg(&backups)
        .arg("-f")
        .arg(&spec)
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        err.contains("no backup in") && err.contains("slipway backup create"),
        "{err}"
    );

    let backup = |note: &str| {
        sqlite3(
            &prod,
            &format!("INSERT INTO customers (name) VALUES ('{note}')"),
        );
        let o = slipway()
            .args([
                "backup", "create", "--output", "json", "--url", &prod_url, "--store",
            ])
            .arg(&backups)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["digest"].as_str().unwrap().to_owned()
    };
    let older = backup("older");
    let newest = backup("newest");
    assert_ne!(older, newest);
    let taken = std::time::Instant::now();

    let ok = slipway()
        .env("SLIPWAY_STORE", &store)
        .args([
            "rehearse",
            "--env",
            "staging",
            "--output",
            "json",
            "--from-backup",
            "latest",
            "--backup-store",
        ])
        .arg(&backups)
        .arg("-f")
        .arg(&spec)
        .assert()
        .code(0);
    let v: serde_json::Value = serde_json::from_slice(&ok.get_output().stdout).unwrap();
    let r = &v["rehearsal"];
    assert_eq!(v["scope"], "database", "{v}");
    assert_eq!(r["report"]["backup"]["digest"], newest.as_str(), "{v}");
    assert_eq!(r["report"]["backup_origin"], "from the backup store", "{v}");
    assert_eq!(r["report"]["rollback"], "restore-backup", "{v}");
    assert_eq!(r["report"]["previous_version"], 1, "{v}");
    assert_eq!(r["report"]["new_version"], 2, "{v}");
    assert_eq!(r["report"]["schema_restored"], true, "{v}");
    // RPO is the age of the backup's data: more than nothing, less than since it was taken.
    let age = r["report"]["backup_age_ms"].as_u64().unwrap();
    let rpo = r["rpo_ms"].as_u64().unwrap();
    assert!(age > 0 && rpo >= age, "{v}");
    assert!(
        u128::from(rpo) <= taken.elapsed().as_millis() + 1_000,
        "{v}"
    );
    assert_eq!(r["objectives_met"], true, "{v}");
    // What is in staging now is production's backup, not a copy staging made of itself.
    assert_eq!(
        sqlite3(
            &d.join("staging.db"),
            "SELECT group_concat(name) FROM customers"
        )
        .trim(),
        "older,newest"
    );
    assert!(
        !d.join(".slipway/rehearsals/backups/sha256").exists()
            || std::fs::read_dir(d.join(".slipway/rehearsals/backups/sha256"))
                .unwrap()
                .next()
                .is_none(),
        "the rehearsal took a backup of its own"
    );
    let _ = db;

    // With an RPO of zero, restoring any real backup misses it.
    std::fs::write(&spec, text).unwrap();
    let missed = slipway()
        .env("SLIPWAY_STORE", &store)
        .args([
            "rehearse",
            "--env",
            "staging",
            "--from-backup",
            &newest,
            "--backup-store",
        ])
        .arg(&backups)
        .arg("-f")
        .arg(&spec)
        .assert()
        .code(1);
    let out = String::from_utf8_lossy(&missed.get_output().stdout).into_owned();
    assert!(
        out.contains("exceeds the objective 0s") && out.contains(&newest),
        "{out}"
    );
}

/// The shop's application alone (no migrations): rehearsable, and what production needs.
const APP_ONLY: &str = r#"apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.3.0, type: feature }
services:
  web:
    steps:
      - name: install
        run: "cp current current.prev && echo 1.3.0 > current"
        undo: "mv current.prev current"
    readiness: { command: "test -s current", deadline: 5s }
environments:
  staging:
    target: { exec: {} }
    recovery: { rto: 1m }
  prod:
    target: { exec: {} }
    production: true
    recovery: { rto: 1m, rehearsal: required }
"#;

#[test]
fn an_application_only_release_rehearses_its_application_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = format!("sqlite://{}", d.join(".slipway/slipway.db").display());
    std::fs::write(d.join("current"), "1.2.0\n").unwrap();
    let spec = d.join("release.yaml");
    std::fs::write(&spec, APP_ONLY).unwrap();
    let before = plan_codes(&spec, &store);
    assert!(rehearsal_error(&before).is_some(), "{before:?}");

    let ok = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .assert()
        .code(0);
    let v: serde_json::Value = serde_json::from_slice(&ok.get_output().stdout).unwrap();
    assert_eq!(v["scope"], "application", "{v}");
    assert_eq!(v["rehearsal"]["scope"], "application", "{v}");
    assert_eq!(v["rehearsal"]["objectives_met"], true, "{v}");
    assert!(v["rehearsal"]["rto_ms"].as_u64().unwrap() > 0, "{v}");
    let run = v["run"].as_str().expect("the rehearsal names its run");
    let status = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["status", run, "--output", "json"])
        .assert()
        .success();
    let s: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    assert_eq!(s["run"]["state"], "rolled_back", "{s}");
    assert_eq!(
        std::fs::read_to_string(d.join("current")).unwrap(),
        "1.2.0\n"
    );

    let after = plan_codes(&spec, &store);
    assert_eq!(rehearsal_error(&after), None, "{after:?}");
}

#[test]
fn a_database_only_rehearsal_does_not_satisfy_a_release_that_changes_services() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, spec) = setup_release(tmp.path(), "mv current.prev current");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        format!(
            "{text}  prod:\n    target: {{ exec: {{}} }}\n    production: true\n    recovery: {{ rto: 1m, rpo: 0s, rehearsal: required }}\n"
        ),
    )
    .unwrap();

    slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "staging", "--database-only", "-f"])
        .arg(&spec)
        .assert()
        .code(0);
    let codes = plan_codes(&spec, &store);
    let msg = rehearsal_error(&codes).expect("a database-only rehearsal must not count here");
    assert!(
        msg.contains("rolled back the database only")
            && msg.contains("its database and its application"),
        "{msg}"
    );

    slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["rehearse", "--env", "staging", "-f"])
        .arg(&spec)
        .assert()
        .code(0);
    let codes = plan_codes(&spec, &store);
    assert_eq!(rehearsal_error(&codes), None, "{codes:?}");
}
