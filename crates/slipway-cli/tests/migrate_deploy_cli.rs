//! `slipway deploy` with a migration service: the migration is a step (after a required
//! backup), and when a later wave fails, the run's rollback undoes it with its U script.

use crate::slipway;

#[test]
fn a_failed_release_undoes_its_migration_after_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("migrations")).unwrap();
    std::fs::write(
        d.join("migrations/V1__orders.sql"),
        "CREATE TABLE orders (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(d.join("migrations/U1__orders.sql"), "DROP TABLE orders;").unwrap();
    // The database already exists with data: that is what the backup must protect.
    let made = std::process::Command::new("sqlite3")
        .arg(d.join("shop.db"))
        .arg("CREATE TABLE customers (id INTEGER); INSERT INTO customers VALUES (1);")
        .status()
        .unwrap();
    assert!(made.success());
    let spec = d.join("release.yaml");
    std::fs::write(
        &spec,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  db: { kind: migration, migrations: ./migrations, database: \"sqlite://{{ vars.db }}\" }
  api:
    depends_on: [db]
    steps: [ { name: install, run: \"echo broken install >&2; false\" } ]
environments:
  staging:
    target: { exec: {} }
    vars: { db: shop.db }
    backup: { required: true }
",
    )
    .unwrap();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(4),
        "the run must roll back: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A backup was taken before the migration ran.
    let backups: Vec<_> = std::fs::read_dir(d.join("state/backups/sha256"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!backups.is_empty(), "no backup taken");
    // The migration ran and was undone: V1 is no longer applied.
    let o = slipway()
        .args(["migrate", "status", "--output", "json", "--url"])
        .arg(format!("sqlite://{}/shop.db", d.display()))
        .arg("--dir")
        .arg(d.join("migrations"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["applied"].as_array().unwrap().is_empty(), "{v:#}");
    assert_eq!(v["pending"], serde_json::json!([1]), "{v:#}");
    let logs = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["history", "--output", "json"])
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&logs.stdout).unwrap();
    let run = h
        .as_array()
        .and_then(|a| a.first())
        .or(h["runs"].get(0))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["logs", &run])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("undone db/migrate"), "{text}");
}
