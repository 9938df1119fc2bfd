//! Verification and handover that reach people, through the real binary.
//!
//! A data move from PostgreSQL into SQLite verified by declared post checks: a `sql`
//! check on the SQLite side (it used to fail with "Connection refused" there) and a
//! `consistency` check comparing row count and checksum across the two databases, the
//! PostgreSQL URL — password included — a secret variable resolved at run time and never
//! written to the journal, status or output. A move that drops a row fails verification
//! and rolls the run back. A succeeded run's handover pack (known issues and escalation
//! contacts from the spec) is delivered to the channel subscribed to `handover`, naming
//! the previous release that succeeded — never a rolled-back one.

use std::path::Path;

use crate::postgres_store_cli::pg::{PASSWORD, pg};
use crate::slipway;

/// The release: a step copies `orders` from PostgreSQL to SQLite (`psql` … `| sqlite3`),
/// dropping the rows `skip` selects; post checks verify the move.
fn spec(dir: &Path, version: &str, skip: &str) -> String {
    let p = dir.join("release.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata:
  name: shop
  version: {version}
  type: patch
  known_issues: [\"order search lags up to 5 minutes after the move\"]
  contacts: [\"#shop-oncall\", \"oncall@example.com\"]
services:
  orders:
    steps:
      - name: move
        run: >-
          rm -f target.db && sqlite3 target.db 'CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)' &&
          psql -X -q -A -t -F, \"$PG_URL\" -c 'SELECT id, total FROM orders WHERE NOT ({skip}) ORDER BY id' |
          sed 's/^/INSERT INTO orders VALUES (/; s/$/);/' | sqlite3 target.db
        undo: rm -f target.db
environments:
  prod:
    target: {{ exec: {{}} }}
    vars:
      source_db: secret://env/SOURCE_DB_URL
    checks: [moved-count, moved-rows]
checks:
  moved-count:
    phase: post
    sql: {{ database: \"sqlite://{dir}/target.db\", query: \"SELECT count(*) FROM orders\", equals: 3 }}
  moved-rows:
    phase: post
    consistency:
      left: {{ database: \"{{{{ vars.source_db }}}}\", table: orders }}
      right: {{ database: \"sqlite://{dir}/target.db\", table: orders }}
      checksum: [id, total]
      order_by: [id]
notifications:
  - {{ on: [handover], file: support.jsonl }}
",
            dir = dir.display()
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn post_checks_verify_a_data_move_across_databases_and_the_handover_reaches_support() {
    let server = pg();
    let url = server.new_db("verify");
    let db = crate::postgres_store_cli::pg::db_name(&url).to_owned();
    server.psql(
        &db,
        "CREATE TABLE orders (id integer PRIMARY KEY, total integer); INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30);",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let deploy = |spec: &str| {
        let o = slipway()
            .env("SLIPWAY_STORE", &store)
            .env("SOURCE_DB_URL", &url)
            .env("PG_URL", &url)
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
    let handovers = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("support.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // A complete move: both checks pass, the run succeeds, support gets the pack.
    let (code, v, err) = deploy(&spec(d, "1.0.0", "false"));
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let first = v["run"].as_str().unwrap().to_owned();
    let packs = handovers();
    assert_eq!(packs.len(), 1, "{packs:?}");
    assert_eq!(packs[0]["event"], "handover");
    let md = packs[0]["handover"].as_str().unwrap();
    assert!(
        md.contains("Known: order search lags up to 5 minutes after the move"),
        "{md}"
    );
    assert!(
        md.contains("escalation 1: #shop-oncall")
            && md.contains("escalation 2: oncall@example.com"),
        "{md}"
    );
    assert!(md.contains("First release of shop here."), "{md}");

    // A move that drops a row: the sql count and the checksum fail, the run rolls back,
    // and no handover is delivered for it.
    let (code, v, err) = deploy(&spec(d, "1.1.0", "id = 2"));
    assert_eq!(code, Some(4), "{v:#}\n{err}");
    let rolled = v["run"].as_str().unwrap().to_owned();
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`moved-count` measured 2, expected = 3"),
        "{reason}"
    );
    assert!(reason.contains("`moved-rows`"), "{reason}");
    assert_eq!(handovers().len(), 1, "no pack for a rolled-back run");

    // The next release that succeeds names 1.0.0 as the previous release, not 1.1.0.
    let (code, v, err) = deploy(&spec(d, "1.2.0", "false"));
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let packs = handovers();
    assert_eq!(packs.len(), 2, "{packs:?}");
    let md = packs[1]["handover"].as_str().unwrap();
    assert!(
        md.contains(&format!(
            "Previous release here: shop 1.0.0 (run `{first}`, succeeded)"
        )),
        "{md}"
    );
    assert!(!md.contains(&rolled), "{md}");

    // The secret URL (and its password) reached no record.
    for args in [
        vec!["logs", &rolled, "--output", "json"],
        vec!["status", &rolled, "--output", "json"],
        vec!["logs", &rolled],
    ] {
        let o = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(&args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains(PASSWORD), "{args:?}: {text}");
    }
    assert!(
        !std::fs::read_to_string(d.join("support.jsonl"))
            .unwrap()
            .contains(PASSWORD)
    );

    // The same checks by hand, on SQLite too.
    let o = slipway()
        .env("SOURCE_DB_URL", &url)
        .args([
            "check", "--env", "prod", "--only", "smoke", "--output", "json", "-f",
        ])
        .arg(d.join("release.yaml"))
        .output()
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{c:#}");
    assert_eq!(c["checks"].as_array().unwrap().len(), 2, "{c:#}");
    assert!(!c.to_string().contains(PASSWORD), "{c:#}");
}
