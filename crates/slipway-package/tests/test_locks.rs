//! Lock-aware migration classification: the cases PostgreSQL's locking makes dangerous on
//! a live table, the safe patterns read as safe, the plan findings they become, and a
//! cross-check of the whole corpus (`tests/fixtures/locks`) against squawk, the
//! PostgreSQL migration linter, where every disagreement must be one documented in
//! `docs/migration-locks.md` with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use slipway_package::compat::locks::{LockMode, TxNeed, Work};
use slipway_package::compat::sql::{
    Dialect, MigrationSetReport, SchemaMemory, StatementReport, classify_dir, classify_sql,
};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/locks")
}

fn classify_corpus() -> MigrationSetReport {
    classify_dir(&corpus(), Dialect::Postgres).unwrap()
}

/// The statement of `file` starting at `line`.
fn at<'a>(r: &'a MigrationSetReport, file: &str, line: usize) -> &'a StatementReport {
    let m = r.migrations.iter().find(|m| m.file == file).unwrap();
    m.statements
        .iter()
        .find(|s| s.line == Some(line))
        .unwrap_or_else(|| panic!("no statement at {file}:{line}\n{}", r.to_text()))
}

/// `(file, line)` of every statement Slipway calls blocking.
fn slipway_blocking(r: &MigrationSetReport) -> BTreeSet<(String, usize)> {
    r.migrations
        .iter()
        .flat_map(|m| {
            m.statements
                .iter()
                .filter(|s| s.blocking())
                .filter_map(|s| Some((m.file.clone(), s.line?)))
        })
        .collect()
}

/// squawk's rules that say a statement blocks reads or writes of a live table for longer
/// than a catalog change. Its other rules judge style (`prefer-*`), robustness
/// (`prefer-robust-stmts`), missing timeouts, destructive changes (`ban-drop-*`,
/// `renaming-*`, `adding-required-field`: compatibility, which Slipway judges separately)
/// and transaction placement (`ban-concurrent-index-creation-in-transaction`: Slipway runs
/// those statements outside the transaction itself).
const SQUAWK_LOCK_RULES: &[&str] = &[
    "adding-field-with-default",
    "adding-foreign-key-constraint",
    "adding-not-nullable-field",
    "adding-serial-primary-key-field",
    "changing-column-type",
    "constraint-missing-not-valid",
    "disallowed-unique-constraint",
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
    "require-concurrent-reindex",
];

/// `(file, statement line)` → squawk lock rules that fired on it. A violation's line may
/// be inside a statement; it belongs to the last statement starting at or before it.
fn squawk_blocking(r: &MigrationSetReport) -> BTreeMap<(String, usize), Vec<String>> {
    let files: Vec<PathBuf> = r
        .migrations
        .iter()
        .map(|m| corpus().join(&m.file))
        .collect();
    let out = Command::new("squawk")
        .args(["--reporter", "json", "--pg-version", "15", "--assume-in-transaction"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run squawk ({e}); install it with `pip install squawk-cli` (scripts/test.sh does)")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let violations: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "squawk did not print JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut found: BTreeMap<(String, usize), Vec<String>> = BTreeMap::new();
    for v in violations {
        let rule = v["rule_name"].as_str().unwrap().to_owned();
        if !SQUAWK_LOCK_RULES.contains(&rule.as_str()) {
            continue;
        }
        let file = Path::new(v["file"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // squawk counts lines from 0.
        let line = usize::try_from(v["line"].as_u64().unwrap()).unwrap() + 1;
        let m = r.migrations.iter().find(|m| m.file == file).unwrap();
        let start = m
            .statements
            .iter()
            .filter_map(|s| s.line)
            .filter(|l| *l <= line)
            .max()
            .unwrap_or_else(|| panic!("squawk line {line} of {file} precedes every statement"));
        found.entry((file, start)).or_default().push(rule);
    }
    found
}

/// The documented disagreements: rows `| FILE:LINE | slipway | squawk | reason |` of the
/// table in `docs/migration-locks.md`.
fn documented() -> BTreeMap<(String, usize), (String, String)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/migration-locks.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let mut out = BTreeMap::new();
    for row in text
        .lines()
        .filter(|l| l.starts_with("| `V") && l.contains(".sql:"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (file, line) = cells[1].trim_matches('`').split_once(':').unwrap();
        let reason = cells[4];
        assert!(reason.len() > 20, "{row}: give the reason");
        out.insert(
            (file.to_owned(), line.parse().unwrap()),
            (cells[2].to_owned(), cells[3].to_owned()),
        );
    }
    out
}

#[test]
fn corpus_agrees_with_squawk_except_documented_disagreements() {
    let r = classify_corpus();
    let statements: usize = r.migrations.iter().map(|m| m.statements.len()).sum();
    assert!(statements >= 30, "the corpus has {statements} statements");
    let ours = slipway_blocking(&r);
    let theirs = squawk_blocking(&r);
    let doc = documented();
    let mut problems = Vec::new();
    let keys: BTreeSet<&(String, usize)> = ours.iter().chain(theirs.keys()).collect();
    for key in keys {
        let (a, b) = (ours.contains(key), theirs.contains_key(key));
        if a == b {
            if doc.contains_key(key) {
                problems.push(format!(
                    "{}:{} is documented as a disagreement but both agree; remove the row",
                    key.0, key.1
                ));
            }
            continue;
        }
        let expected = (
            if a { "blocking" } else { "not blocking" }.to_owned(),
            theirs
                .get(key)
                .map_or("no lock rule".to_owned(), |rules| rules.join(", ")),
        );
        match doc.get(key) {
            Some((slip, squawk)) if *slip == expected.0 && squawk.contains(&expected.1) => {}
            Some(row) => problems.push(format!(
                "{}:{}: documented as {row:?}, found slipway {} / squawk {}",
                key.0, key.1, expected.0, expected.1
            )),
            None => problems.push(format!(
                "{}:{}: slipway says {}, squawk says {} — undocumented disagreement (`{}`)",
                key.0,
                key.1,
                expected.0,
                expected.1,
                at(&r, &key.0, key.1).sql
            )),
        }
    }
    // A documented row must name a statement of the corpus that really disagrees.
    for key in doc.keys() {
        if !ours.contains(key) && !theirs.contains_key(key) {
            problems.push(format!(
                "{}:{} is documented but neither flags it",
                key.0, key.1
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\n{}",
        problems.join("\n"),
        r.to_text()
    );
}

#[test]
fn the_dangerous_cases_are_blocking_and_name_the_safe_alternative() {
    let r = classify_corpus();
    for (file, line, mode, work, alternative) in [
        // A plain index build on an existing table blocks writes for the whole build.
        (
            "V2__indexes.sql",
            1,
            LockMode::Share,
            Work::IndexBuild,
            "CONCURRENTLY",
        ),
        (
            "V2__indexes.sql",
            2,
            LockMode::Share,
            Work::IndexBuild,
            "CONCURRENTLY",
        ),
        // A volatile default, bigserial, identity and stored generated columns rewrite.
        (
            "V3__columns.sql",
            4,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "backfill",
        ),
        (
            "V3__columns.sql",
            5,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "backfill",
        ),
        (
            "V3__columns.sql",
            6,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "backfill",
        ),
        (
            "V3__columns.sql",
            7,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "batches",
        ),
        (
            "V3__columns.sql",
            8,
            LockMode::AccessExclusive,
            Work::Scan,
            "NOT VALID",
        ),
        (
            "V3__columns.sql",
            9,
            LockMode::AccessExclusive,
            Work::IndexBuild,
            "USING INDEX",
        ),
        // int → bigint and text → varchar(n) rewrite.
        (
            "V4__types.sql",
            1,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "new column",
        ),
        (
            "V4__types.sql",
            5,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "new column",
        ),
        // Constraints validated at once.
        (
            "V5__constraints.sql",
            1,
            LockMode::ShareRowExclusive,
            Work::Scan,
            "NOT VALID",
        ),
        (
            "V5__constraints.sql",
            2,
            LockMode::AccessExclusive,
            Work::Scan,
            "NOT VALID",
        ),
        (
            "V5__constraints.sql",
            3,
            LockMode::AccessExclusive,
            Work::IndexBuild,
            "USING INDEX",
        ),
        (
            "V5__constraints.sql",
            4,
            LockMode::AccessExclusive,
            Work::Scan,
            "VALIDATE",
        ),
        (
            "V5__constraints.sql",
            5,
            LockMode::AccessExclusive,
            Work::IndexBuild,
            "USING INDEX",
        ),
        // An inline foreign key over a column with a default validates every row.
        (
            "V7__inline_fk_default.sql",
            1,
            LockMode::AccessExclusive,
            Work::Scan,
            "NOT VALID",
        ),
        // The backfill runs while the ADD COLUMN's ACCESS EXCLUSIVE is still held.
        (
            "V9__backfill.sql",
            3,
            LockMode::RowExclusive,
            Work::Scan,
            "migration of its own",
        ),
        (
            "V10__maintenance.sql",
            1,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "VACUUM",
        ),
        (
            "V10__maintenance.sql",
            3,
            LockMode::AccessExclusive,
            Work::IndexBuild,
            "CONCURRENTLY",
        ),
        (
            "V10__maintenance.sql",
            5,
            LockMode::AccessExclusive,
            Work::Rewrite,
            "pg_repack",
        ),
    ] {
        let s = at(&r, file, line);
        let l = s
            .lock
            .as_ref()
            .unwrap_or_else(|| panic!("{file}:{line} has no lock"));
        assert!(l.blocking, "{file}:{line} `{}` should block: {l:?}", s.sql);
        assert_eq!((l.mode, l.work), (mode, work), "{file}:{line} `{}`", s.sql);
        let alt = l.alternative.as_deref().unwrap_or_default();
        assert!(alt.contains(alternative), "{file}:{line}: {alt}");
    }
}

#[test]
fn the_safe_patterns_are_read_as_safe() {
    let r = classify_corpus();
    for (file, line) in [
        // Tables created in the same file have no readers yet.
        ("V1__base.sql", 6),
        ("V1__base.sql", 8),
        ("V2__indexes.sql", 3),
        ("V2__indexes.sql", 4),
        ("V2__indexes.sql", 5),
        ("V2__indexes.sql", 6),
        ("V3__columns.sql", 1),
        // Constant and STABLE defaults are catalog changes since PostgreSQL 11.
        ("V3__columns.sql", 2),
        ("V3__columns.sql", 3),
        // Binary-coercible type changes.
        ("V4__types.sql", 2),
        ("V4__types.sql", 3),
        ("V4__types.sql", 4),
        // A foreign key over a new all-NULL column is not validated.
        ("V6__inline_fk.sql", 1),
        // NOT VALID, then VALIDATE in a transaction of its own; SET NOT NULL proven by a
        // validated CHECK; a unique constraint over a concurrently built index.
        ("V8__safe_constraints.sql", 2),
        ("V8__safe_constraints.sql", 3),
        ("V8__safe_constraints.sql", 4),
        ("V8__safe_constraints.sql", 5),
        ("V8__safe_constraints.sql", 6),
        ("V8__safe_constraints.sql", 7),
        ("V8__safe_constraints.sql", 8),
        ("V8__safe_constraints.sql", 9),
        ("V8__safe_constraints.sql", 10),
        ("V8__safe_constraints.sql", 11),
        ("V9__backfill.sql", 1),
        ("V9__backfill.sql", 2),
        ("V10__maintenance.sql", 2),
        ("V10__maintenance.sql", 4),
    ] {
        let s = at(&r, file, line);
        assert!(!s.blocking(), "{file}:{line} `{}`: {:?}", s.sql, s.lock);
    }
    // A new table's foreign key locks the referenced table briefly, validating nothing.
    let fk = at(&r, "V1__base.sql", 8).lock.clone().unwrap();
    assert_eq!(
        (fk.mode, fk.work),
        (LockMode::ShareRowExclusive, Work::Metadata)
    );
    assert_eq!(fk.tables, ["orders"]);
    // An inline foreign key over a new all-NULL column locks the referenced table too.
    assert_eq!(
        at(&r, "V6__inline_fk.sql", 1)
            .lock
            .as_ref()
            .unwrap()
            .referenced,
        ["accounts"]
    );
    // Where each statement must run.
    assert_eq!(at(&r, "V2__indexes.sql", 3).transaction, TxNeed::Outside);
    assert_eq!(at(&r, "V2__indexes.sql", 6).transaction, TxNeed::Outside);
    assert_eq!(
        at(&r, "V8__safe_constraints.sql", 4).transaction,
        TxNeed::Own
    );
    assert_eq!(
        at(&r, "V8__safe_constraints.sql", 11).transaction,
        TxNeed::Outside
    );
    assert_eq!(
        at(&r, "V10__maintenance.sql", 1).transaction,
        TxNeed::Outside
    );
    assert_eq!(
        at(&r, "V10__maintenance.sql", 4).transaction,
        TxNeed::Outside
    );
}

#[test]
fn set_not_null_without_a_validated_check_scans() {
    let mut mem = SchemaMemory::default();
    let r = classify_sql("CREATE TABLE t (a int);\n", Dialect::Postgres, &mut mem);
    assert!(!r[0].blocking());
    // A NOT VALID check alone proves nothing: SET NOT NULL still scans.
    let mut next = mem.clone();
    let r = slipway_package::compat::sql::classify_migration(
        "V2__x.sql",
        Some(2),
        "ALTER TABLE t ADD CONSTRAINT c CHECK (a IS NOT NULL) NOT VALID;\nALTER TABLE t ALTER COLUMN a SET NOT NULL;\n",
        Dialect::Postgres,
        &mut next,
    );
    assert!(r.statements[1].blocking(), "{:?}", r.statements[1]);
}

#[test]
fn sqlite_migrations_have_no_lock_report() {
    let mut mem = SchemaMemory::default();
    let r = classify_sql(
        "CREATE TABLE t (a int);\nCREATE INDEX i ON t (a);\n",
        Dialect::Sqlite,
        &mut mem,
    );
    assert!(
        r.iter()
            .all(|s| s.lock.is_none() && s.transaction == TxNeed::Shared)
    );
}

#[test]
fn lock_findings_follow_the_environments_database_and_skip_applied_migrations() {
    let d = tempfile::tempdir().unwrap();
    let mig = d.path().join("migrations");
    std::fs::create_dir(&mig).unwrap();
    std::fs::write(
        mig.join("V1__orders.sql"),
        "CREATE TABLE orders (id integer PRIMARY KEY, status text);\n",
    )
    .unwrap();
    std::fs::write(
        mig.join("V2__index.sql"),
        "CREATE INDEX orders_status_idx ON orders (status);\n",
    )
    .unwrap();
    let spec = slipway_model::validate::load(
        "release.yaml",
        r#"apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  db: { kind: migration, migrations: ./migrations, database: "{{ vars.db }}" }
environments:
  staging:
    target: { exec: {} }
    vars: { db: "sqlite://staging.db" }
  prod:
    production: true
    target: { exec: {} }
    vars: { db: "secret://env/SHOP_DB" }
"#,
    )
    .map_err(|e| e.render(false, 100))
    .unwrap()
    .spec;
    let none = BTreeMap::new();
    let ids = |env: &str, applied: &BTreeMap<String, u32>| -> Vec<String> {
        slipway_package::compat::findings(&spec, d.path(), Some(env), applied)
            .0
            .into_iter()
            .filter(|f| f.kind == "lock")
            .map(|f| f.id)
            .collect()
    };
    // SQLite has no such locks; PostgreSQL (a secret URL is taken as PostgreSQL) does.
    assert!(ids("staging", &none).is_empty());
    assert_eq!(ids("prod", &none), ["lock:db:V2__index.sql:1"]);
    // Once V2 ran there, it is not this release's lock.
    assert!(ids("prod", &BTreeMap::from([("db".to_owned(), 2)])).is_empty());
}
