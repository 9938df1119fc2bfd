//! Lock-aware migrations through the real binary on a real PostgreSQL: a statement that
//! blocks a live table (a plain `CREATE INDEX`, `int → bigint`) refuses a production plan
//! (exit 3, `migration-lock`, naming the safe alternative) and only warns in staging; a
//! waiver lets it through; migrations already applied to the database are not judged
//! again; `CREATE INDEX CONCURRENTLY` plans clean and `migrate apply` runs it outside the
//! transaction; a crash in the middle of a concurrent build is detected (`status`: in
//! progress, statement k of n; the INVALID index) and a re-run resumes and rebuilds it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::postgres_store_cli::pg::pg;
use crate::slipway;

const DB_VAR: &str = "LOCKS_TEST_DB_URL";

fn spec(dir: &Path, name: &str, waivers: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(
        &file,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: patch }}
services:
  db: {{ kind: migration, migrations: ./migrations, database: '{{{{ vars.db }}}}', irreversible: true }}
environments:
  prod:
    production: true
    target: {{ exec: {{}} }}
    vars: {{ db: 'secret://env/{DB_VAR}' }}
  staging:
    target: {{ exec: {{}} }}
    vars: {{ db: 'secret://env/{DB_VAR}' }}
{waivers}"
        ),
    )
    .unwrap();
    file
}

fn migration(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(dir.join("migrations").join(name), sql).unwrap();
}

fn plan(file: &Path, env: &str, url: &str) -> (i32, serde_json::Value) {
    let o = slipway()
        .args(["plan", "--env", env, "--output", "json", "-f"])
        .arg(file)
        .env(DB_VAR, url)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no plan JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), v)
}

fn findings<'a>(p: &'a serde_json::Value, code: &str) -> Vec<&'a serde_json::Value> {
    p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == code)
        .collect()
}

fn migrate(args: &[&str], url: &str, dir: &Path) -> Output {
    slipway()
        .arg("migrate")
        .args(args)
        .args(["--url", url, "--dir"])
        .arg(dir.join("migrations"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_blocking_statement_refuses_production_warns_elsewhere_and_is_judged_only_while_pending() {
    let url = pg().new_db("locks_plan");
    let d = tempfile::tempdir().unwrap();
    migration(
        d.path(),
        "V1__orders.sql",
        "CREATE TABLE orders (id integer PRIMARY KEY, status text);\n",
    );
    migration(
        d.path(),
        "V2__status_index.sql",
        "-- find orders by status\nCREATE INDEX orders_status_idx ON orders (status);\n",
    );
    let file = spec(d.path(), "release.yaml", "");

    let (code, p) = plan(&file, "prod", &url);
    assert_eq!(code, 3, "{p:#}");
    let f = findings(&p, "migration-lock");
    assert_eq!(f.len(), 1, "{p:#}");
    assert_eq!(f[0]["severity"], "error");
    let message = f[0]["message"].as_str().unwrap();
    for part in [
        "lock:db:V2__status_index.sql:2",
        "SHARE",
        "orders",
        "CREATE INDEX CONCURRENTLY orders_status_idx",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }

    let (code, p) = plan(&file, "staging", &url);
    assert_eq!(code, 0, "{p:#}");
    assert_eq!(findings(&p, "migration-lock")[0]["severity"], "warning");

    // A waiver with a reason lets production through and is listed.
    let waived = spec(
        d.path(),
        "waived.yaml",
        "waivers:\n  - { finding: 'lock:db:V2__status_index.sql:2', reason: orders is new and empty, by: alice }\n",
    );
    let (code, p) = plan(&waived, "prod", &url);
    assert_eq!(code, 0, "{p:#}");
    assert_eq!(p["waivers"][0]["finding"], "lock:db:V2__status_index.sql:2");

    // Once applied, V2 is not this release's migration any more.
    let o = migrate(&["apply"], &url, d.path());
    assert!(o.status.success(), "{}", text(&o));
    let (code, p) = plan(&file, "prod", &url);
    assert_eq!(code, 0, "{p:#}");
    assert!(findings(&p, "migration-lock").is_empty(), "{p:#}");

    // The next release: a concurrent index plans clean, int → bigint does not.
    migration(
        d.path(),
        "V3__total.sql",
        "ALTER TABLE orders ADD COLUMN total numeric(10,2);\n",
    );
    migration(
        d.path(),
        "V4__concurrent_index.sql",
        "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);\n",
    );
    let (code, p) = plan(&file, "prod", &url);
    assert_eq!(code, 0, "{p:#}");
    migration(
        d.path(),
        "V5__bigint.sql",
        "ALTER TABLE orders ALTER COLUMN id TYPE bigint;\n",
    );
    let (code, p) = plan(&file, "prod", &url);
    assert_eq!(code, 3, "{p:#}");
    let f = findings(&p, "migration-lock");
    assert_eq!(f.len(), 1, "{p:#}");
    assert!(
        f[0]["message"]
            .as_str()
            .unwrap()
            .contains("rewrites every row"),
        "{}",
        f[0]
    );

    // An unreachable database: said so, and every migration is judged (the safe side).
    let (code, p) = plan(&file, "prod", "postgres://postgres@127.0.0.1:1/nothing");
    assert_eq!(code, 3, "{p:#}");
    assert_eq!(findings(&p, "migrations-applied-unknown").len(), 1, "{p:#}");
    assert_eq!(findings(&p, "migration-lock").len(), 2, "{p:#}");
}

/// Polls `cond` every 50 ms until it holds, failing the test after `limit`.
fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_migrator_killed_during_a_concurrent_build_is_detected_and_the_next_apply_resumes() {
    let server = pg();
    let url = server.new_db("locks_crash");
    let db = crate::postgres_store_cli::pg::db_name(&url).to_owned();
    let d = tempfile::tempdir().unwrap();
    migration(
        d.path(),
        "V1__orders.sql",
        "CREATE TABLE orders (id integer PRIMARY KEY, status text, total integer);\nINSERT INTO orders SELECT g, 'new', 0 FROM generate_series(1, 1000) g;\n",
    );
    let o = migrate(&["apply"], &url, d.path());
    assert!(o.status.success(), "{}", text(&o));
    migration(
        d.path(),
        "V2__status_index.sql",
        "CREATE TABLE order_log (n integer);\nINSERT INTO order_log VALUES (1);\nCREATE INDEX CONCURRENTLY orders_status_idx ON orders (status);\nUPDATE orders SET total = id;\n",
    );

    // An application session with a write in flight: the concurrent build waits for it.
    let mut app = slipway_testkit::Reaped::from(
        Command::new(server.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::Write as _;
        let stdin = app.stdin.as_mut().unwrap();
        stdin
            .write_all(b"BEGIN;\nINSERT INTO orders VALUES (5000, 'held', 0);\n")
            .unwrap();
        stdin.flush().unwrap();
    }
    let count = |sql: &str| server.psql(&db, sql).trim().to_owned();
    until(
        Duration::from_secs(10),
        "the application's open write",
        || {
            count("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")
                == "1"
        },
    );

    let mut migrator = slipway_testkit::Reaped::from(
        Command::new(assert_cmd::cargo::cargo_bin("slipway"))
            .env("NO_COLOR", "1")
            .args(["migrate", "apply", "--url", &url, "--dir"])
            .arg(d.path().join("migrations"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    until(
        Duration::from_secs(15),
        "the concurrent build to wait",
        || {
            count(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'",
            ) == "1"
        },
    );
    // The migrator dies between its statements: part 1 committed, part 2 mid-build.
    migrator.kill().unwrap();
    migrator.wait().unwrap();
    // Its backend notices the client is gone and aborts the build, leaving the index
    // INVALID, while the application's transaction is still open (nothing else ended it).
    until(
        Duration::from_secs(10),
        "the orphaned build to stop",
        || {
            count(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%'",
            ) == "0"
        },
    );
    assert_eq!(
        count(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('orders_status_idx')"
        ),
        "f"
    );
    // The application carries on: its transaction commits.
    {
        use std::io::Write as _;
        let stdin = app.stdin.as_mut().unwrap();
        stdin.write_all(b"COMMIT;\n").unwrap();
    }
    drop(app.stdin.take());
    assert!(app.wait().unwrap().success());
    assert_eq!(count("SELECT count(*) FROM orders WHERE id = 5000"), "1");

    let o = migrate(&["status"], &url, d.path());
    let shown = text(&o);
    assert!(shown.contains("InProgress 1/3"), "{shown}");
    assert!(shown.contains("interrupted after part 1 of 3"), "{shown}");

    let o = migrate(&["apply"], &url, d.path());
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains("resumed after part 1 of 3"), "{shown}");
    assert!(
        shown.contains("INVALID") && shown.contains("built again"),
        "{shown}"
    );
    assert_eq!(
        count(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('orders_status_idx')"
        ),
        "t"
    );
    // Part 1 ran once, part 3 ran.
    assert_eq!(count("SELECT count(*) FROM order_log"), "1");
    assert_eq!(
        count("SELECT count(*) FROM orders WHERE total = id"),
        "1001"
    );
    let o = migrate(&["status", "--output", "json"], &url, d.path());
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["applied"], serde_json::json!([1, 2]), "{st:#}");
    assert_eq!(st["in_progress"], serde_json::json!([]), "{st:#}");
}
