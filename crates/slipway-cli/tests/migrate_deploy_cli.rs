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

/// Every byte under `dir`, as text, for a search (binary files lossily).
fn all_text_under(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&all_text_under(&p));
        } else if p.is_file() {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// A database URL that is a secret (`secret://env/…`) never reaches the journal, the
/// store or the terminal: the migration's output and its error name the database by the
/// secret's mask. Once applying, once failing on a broken migration.
#[test]
fn a_secret_database_url_is_never_journaled_or_printed() {
    const HIDDEN: &str = "hidden-db-8f3a1c";
    for broken in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("migrations")).unwrap();
        std::fs::write(
            d.join("migrations/V1__orders.sql"),
            "CREATE TABLE orders (id INTEGER PRIMARY KEY);",
        )
        .unwrap();
        if broken {
            std::fs::write(d.join("migrations/V2__broken.sql"), "CREATE TABLE oops (;").unwrap();
        }
        let db_dir = d.join(HIDDEN);
        std::fs::create_dir_all(&db_dir).unwrap();
        let made = std::process::Command::new("sqlite3")
            .arg(db_dir.join("shop.db"))
            .arg("CREATE TABLE customers (id INTEGER);")
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
  db: { kind: migration, migrations: ./migrations, database: \"{{ vars.db }}\" }
  api:
    depends_on: [db]
    steps: [ { name: install, run: \"true\" } ]
environments:
  staging:
    target: { exec: {} }
    vars: { db: secret://env/SHOP_DB_URL }
",
        )
        .unwrap();
        let store = format!("sqlite://{}/state/s.db", d.display());
        let url = format!("sqlite://{}/shop.db", db_dir.display());
        let deploy = slipway()
            .env("SLIPWAY_STORE", &store)
            .env("SHOP_DB_URL", &url)
            .args(["deploy", "--env", "staging", "-f"])
            .arg(&spec)
            .output()
            .unwrap();
        assert_eq!(
            deploy.status.success(),
            !broken,
            "{}",
            String::from_utf8_lossy(&deploy.stderr)
        );
        let run = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(["history", "--output", "json"])
            .output()
            .unwrap();
        let h: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
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
        let journal = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(["logs", &run, "--output", "json"])
            .output()
            .unwrap();
        let mut said = String::new();
        for o in [&deploy, &logs, &journal] {
            said.push_str(&String::from_utf8_lossy(&o.stdout));
            said.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        assert!(
            said.contains("***secret://env/SHOP_DB_URL***"),
            "the database is named by the secret's mask: {said}"
        );
        assert!(!said.contains(HIDDEN), "the resolved URL was shown: {said}");
        let kept = all_text_under(&d.join("state"));
        assert!(!kept.contains(HIDDEN), "the resolved URL is in the store");
    }
}
