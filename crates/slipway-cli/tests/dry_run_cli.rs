//! Migration dry runs through the real binary on a real PostgreSQL with a connected
//! application session (a `psql` holding an open transaction): the dry run clones around
//! it (pg_dump into a scratch database), the session survives and commits; the result is
//! recorded in the store for the exact migration set; an admin policy's `dry_run: {
//! max_age }` refuses a production plan and deploy until a passed dry run of these very
//! files exists, and again once any script changes. `--allow-terminate` is refused with
//! the clone path explained.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres_store_cli::pg::pg;
use crate::slipway;

const DB_VAR: &str = "DRY_RUN_TEST_DB_URL";

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn run(cmd: &mut assert_cmd::Command) -> (i32, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn psql(url: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "psql {sql}: {o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The application: a `psql` session with a transaction open (a row inserted, not
/// committed), fed from a pipe so it stays connected until told to commit; killed and
/// reaped when dropped (a failing test leaves no session holding the transaction).
fn application(url: &str) -> slipway_testkit::Reaped {
    let mut c: slipway_testkit::Reaped = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
        .env("PGAPPNAME", "shop-app")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into();
    c.stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN;\nINSERT INTO customers (id, name) VALUES (2, 'in flight');\n")
        .unwrap();
    c
}

/// The application's backend pids, polled until its INSERT is in (its transaction open).
fn app_backend(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = psql(
            url,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'shop-app' AND state = 'idle in transaction'",
        );
        if !pid.is_empty() {
            return pid;
        }
        assert!(Instant::now() < deadline, "the application never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn plan(spec: &Path, store: &str, url: &str) -> (i32, serde_json::Value) {
    let (code, out, err) = run(slipway()
        .args(["plan", "--env", "prod", "--output", "json", "-f"])
        .arg(spec)
        .env("SLIPWAY_STORE", store)
        .env(DB_VAR, url));
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no plan JSON ({e}): {out}{err}"));
    (code, v)
}

fn dry_run_findings(p: &serde_json::Value) -> Vec<String> {
    p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "migration-dry-run-required")
        .map(|f| f["message"].as_str().unwrap().to_owned())
        .collect()
}

/// The release (a migration service on the database in `$DRY_RUN_TEST_DB_URL`) and the
/// admin policy requiring a dry run no older than an hour for production, applied.
fn release_under_policy(d: &Path, store: &str) -> std::path::PathBuf {
    write(
        d,
        "release.yaml",
        &format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: patch }}
services:
  db: {{ kind: migration, migrations: ./migrations, database: '{{{{ vars.db }}}}' }}
environments:
  prod:
    production: true
    target: {{ exec: {{}} }}
    vars: {{ db: 'secret://env/{DB_VAR}' }}
"
        ),
    );
    write(
        d,
        "policy.yaml",
        "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod: { production: true, dry_run: { max_age: 1h } }\n",
    );
    let (code, _, err) = run(slipway()
        .env("SLIPWAY_STORE", store)
        .args(["policy", "apply", "-f"])
        .arg(d.join("policy.yaml")));
    assert_eq!(code, 0, "{err}");
    d.join("release.yaml")
}

#[test]
fn a_dry_run_clones_around_a_live_session_and_is_what_the_policy_asks_for() {
    let url = pg().new_db("dry_cli");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    write(
        d,
        "migrations/V1__customers.sql",
        "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL);",
    );
    write(d, "migrations/U1__customers.sql", "DROP TABLE customers;");
    let migrations = d.join("migrations");
    let (code, _, err) = run(slipway()
        .args(["migrate", "apply", "--url", &url, "--dir"])
        .arg(&migrations));
    assert_eq!(code, 0, "{err}");
    psql(&url, "INSERT INTO customers VALUES (1, 'a')");
    write(
        d,
        "migrations/V2__email.sql",
        "ALTER TABLE customers ADD COLUMN email text;",
    );
    write(
        d,
        "migrations/U2__email.sql",
        "ALTER TABLE customers DROP COLUMN email;",
    );
    let spec = release_under_policy(d, &store);

    // No dry run yet: the production plan is blocked, and so is the deploy.
    let (code, p) = plan(&spec, &store, &url);
    assert_eq!(code, 3, "{p:#}");
    let f = dry_run_findings(&p);
    assert_eq!(f.len(), 1, "{p:#}");
    assert!(
        f[0].contains("admin policy v1 (dry_run)")
            && f[0].contains("no dry run of migration set sha256:")
            && f[0].contains("slipway migrate dry-run"),
        "{}",
        f[0]
    );
    let (code, _, err) = run(slipway()
        .args(["deploy", "--env", "prod", "-f"])
        .arg(&spec)
        .env("SLIPWAY_STORE", &store)
        .env(DB_VAR, &url));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("migration-dry-run-required"), "{err}");

    // The old way out is gone, with the reason.
    let (code, _, err) = run(slipway()
        .args([
            "migrate",
            "dry-run",
            "--allow-terminate",
            "--url",
            &url,
            "--dir",
        ])
        .arg(&migrations)
        .env("SLIPWAY_STORE", &store));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("pg_dump") && err.contains("--clone-url"),
        "{err}"
    );

    // The dry run, with the application connected in the middle of a transaction.
    let mut app = application(&url);
    let pid = app_backend(&url);
    let (code, out, err) = run(slipway()
        .args(["migrate", "dry-run", "--url", &url, "--dir"])
        .arg(&migrations)
        .env("SLIPWAY_STORE", &store));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("pg_dump") && out.contains("sessions were not touched"),
        "{out}"
    );
    assert!(out.contains("passed, recorded in"), "{out}");
    // Same backend, transaction still open: it commits, its row is there.
    assert_eq!(
        app_backend(&url),
        pid,
        "the application's session was replaced"
    );
    let stdin = app.stdin.as_mut().unwrap();
    stdin.write_all(b"COMMIT;\n\\q\n").unwrap();
    let o = app.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the application's session failed: {o:?}"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(name, ',' ORDER BY id) FROM customers"
        ),
        "a,in flight"
    );
    // Nothing of the dry run is left: no scratch database of this one (the server is
    // shared with other tests whose dry runs may be under way), production not migrated.
    // Scratch databases are named `<source, first 30 characters>_dryrun_…`.
    let db: String = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .chars()
        .take(30)
        .collect();
    assert_eq!(
        psql(
            &url,
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{db}\\_dryrun\\_%'")
        ),
        "0"
    );
    assert_eq!(
        psql(&url, "SELECT max(version) FROM slipway_schema_history"),
        "1"
    );

    // The record satisfies the policy for these files…
    let (_, p) = plan(&spec, &store, &url);
    assert!(dry_run_findings(&p).is_empty(), "{p:#}");
    // …and for no others: an edited undo script is another migration set.
    write(
        d,
        "migrations/U2__email.sql",
        "ALTER TABLE customers DROP COLUMN IF EXISTS email;",
    );
    let (code, p) = plan(&spec, &store, &url);
    assert_eq!(code, 3, "{p:#}");
    assert_eq!(dry_run_findings(&p).len(), 1, "{p:#}");

    // The record is evidence in the store's chain.
    let (code, out, err) = run(slipway()
        .args(["audit", "verify"])
        .env("SLIPWAY_STORE", &store));
    assert_eq!(code, 0, "{out}{err}");
}

/// A failed dry run is recorded too, and does not satisfy the policy.
#[test]
fn a_failed_dry_run_is_recorded_and_does_not_count() {
    let url = pg().new_db("dry_cli_fail");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    write(d, "migrations/V1__t.sql", "CREATE TABLE t (id integer);");
    // Forgets to drop the table: undo does not restore the schema.
    write(d, "migrations/U1__t.sql", "SELECT 1;");
    let (code, out, _) = run(slipway()
        .args([
            "migrate", "dry-run", "--output", "json", "--url", &url, "--dir",
        ])
        .arg(d.join("migrations"))
        .env("SLIPWAY_STORE", &store));
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["record"]
            .as_str()
            .unwrap()
            .contains("dry-run record sha256:"),
        "{v:#}"
    );
    assert_eq!(v["dry_run"]["undo_restores_schema"], false, "{v:#}");
    let spec = release_under_policy(d, &store);
    let (code, p) = plan(&spec, &store, &url);
    assert_eq!(code, 3, "{p:#}");
    let f = dry_run_findings(&p);
    assert!(f.len() == 1 && f[0].contains("failed"), "{p:#}");
}
