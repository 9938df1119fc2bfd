//! Migration classification on real-world-shaped migration sets (PostgreSQL and SQLite),
//! with snapshot reports, and the release-level rule about contract migrations.

use std::collections::BTreeMap;
use std::path::Path;

use slipway_package::checks::{CheckFacts, plan_checks};
use slipway_package::compat::check_migrations;
use slipway_package::compat::sql::{Class, Dialect, SchemaMemory, classify_dir, classify_sql};

use crate::common::write;

fn set(dir: &Path, files: &[(&str, &str)]) {
    for (name, sql) in files {
        write(&dir.join(name), sql.as_bytes());
    }
}

#[test]
fn shop_example_migrations_expand() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/migrations");
    let r = classify_dir(&dir, Dialect::Sqlite).unwrap();
    assert_eq!(r.class, Class::Expand);
    // Undo scripts are listed, not classified.
    assert_eq!(
        r.skipped,
        ["U2__create_orders.sql", "U3__add_orders_index.sql"]
    );
    insta::assert_snapshot!("sql-shop-sqlite", r.to_text());
}

#[test]
fn postgres_expand_set() {
    let d = tempfile::tempdir().unwrap();
    set(
        d.path(),
        &[
            (
                "V1__accounts.sql",
                "-- accounts and their emails\nCREATE TABLE accounts (\n  id bigserial PRIMARY KEY,\n  email varchar(120) NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now()\n);\nCREATE UNIQUE INDEX accounts_email_idx ON accounts (email);\n",
            ),
            (
                "V2__profile.sql",
                "BEGIN;\nALTER TABLE accounts ADD COLUMN display_name text;\nALTER TABLE accounts ADD COLUMN plan varchar(20) NOT NULL DEFAULT 'free';\nCREATE INDEX CONCURRENTLY accounts_plan_idx ON accounts (plan);\nUPDATE accounts SET display_name = email WHERE display_name IS NULL;\nCOMMIT;\n",
            ),
            (
                "V3__widen.sql",
                "ALTER TABLE accounts ALTER COLUMN email TYPE varchar(255);\nALTER TABLE accounts ALTER COLUMN id TYPE bigint;\nALTER TABLE accounts ALTER COLUMN plan DROP NOT NULL;\nCOMMENT ON TABLE accounts IS 'customer accounts';\n",
            ),
        ],
    );
    let r = classify_dir(d.path(), Dialect::Postgres).unwrap();
    assert_eq!(r.class, Class::Expand, "{}", r.to_text());
    insta::assert_snapshot!("sql-postgres-expand", r.to_text());
}

#[test]
fn postgres_contract_set_names_every_destructive_statement() {
    let d = tempfile::tempdir().unwrap();
    set(
        d.path(),
        &[
            (
                "V1__orders.sql",
                "CREATE TABLE orders (id integer PRIMARY KEY, customer varchar(255), note text, legacy_total integer);\n",
            ),
            (
                "V2__contract.sql",
                "ALTER TABLE orders DROP COLUMN legacy_total;\nALTER TABLE orders RENAME COLUMN customer TO customer_name;\nALTER TABLE orders ADD COLUMN region text NOT NULL;\nALTER TABLE orders ALTER COLUMN customer_name TYPE varchar(50);\nALTER TABLE orders ALTER COLUMN note SET NOT NULL;\nALTER TABLE orders ALTER COLUMN id TYPE smallint;\nALTER TABLE orders ADD CONSTRAINT orders_note_len CHECK (length(note) < 500);\nDELETE FROM orders WHERE region IS NULL;\nDROP TABLE IF EXISTS audit_old;\n",
            ),
            (
                "V3__unknown.sql",
                "ALTER TABLE invoices ALTER COLUMN amount TYPE numeric(10,2);\nCREATE FUNCTION touch() RETURNS trigger AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END; $$ LANGUAGE plpgsql;\nVACUUM orders;\n",
            ),
        ],
    );
    let r = classify_dir(d.path(), Dialect::Postgres).unwrap();
    assert!(r.has_contract());
    let v2 = &r.migrations[1];
    assert_eq!(v2.class, Class::Contract);
    assert!(
        v2.statements.iter().all(|s| s.class == Class::Contract),
        "{}",
        r.to_text()
    );
    // Type change on a column whose earlier type is unknown is not guessed.
    assert_eq!(r.migrations[2].statements[0].class, Class::Unknown);
    // The $$ body does not split the function into pieces: three statements, lines 1–3.
    let lines: Vec<_> = r.migrations[2].statements.iter().map(|s| s.line).collect();
    assert_eq!(lines, [Some(1), Some(2), Some(3)]);
    insta::assert_snapshot!("sql-postgres-contract", r.to_text());
}

#[test]
fn unparseable_statement_is_unknown_and_the_rest_still_classified() {
    let mut mem = SchemaMemory::default();
    let r = classify_sql(
        "CREATE TABLE a (id int);\nALTER TABLE a FROBNICATE everything;\n\nALTER TABLE a DROP COLUMN id;\n",
        Dialect::Postgres,
        &mut mem,
    );
    let got: Vec<_> = r.iter().map(|s| (s.line, s.class)).collect();
    assert_eq!(
        got,
        [
            (Some(1), Class::Expand),
            (Some(2), Class::Unknown),
            (Some(4), Class::Contract)
        ]
    );
    assert!(
        r[1].reasons[0].contains("cannot parse"),
        "{:?}",
        r[1].reasons
    );
}

#[test]
fn sqlite_rename_and_not_null_with_default() {
    let d = tempfile::tempdir().unwrap();
    set(
        d.path(),
        &[
            (
                "V1__t.sql",
                "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);\nALTER TABLE t ADD COLUMN active INTEGER NOT NULL DEFAULT 1;\n",
            ),
            ("V2__rename.sql", "ALTER TABLE t RENAME TO things;\n"),
            (
                "V3__col.sql",
                "ALTER TABLE things RENAME COLUMN name TO title;\n",
            ),
            ("notes.txt", "not a migration"),
        ],
    );
    let r = classify_dir(d.path(), Dialect::Sqlite).unwrap();
    let classes: Vec<_> = r
        .migrations
        .iter()
        .map(|m| (m.file.as_str(), m.class))
        .collect();
    assert_eq!(
        classes,
        [
            ("V1__t.sql", Class::Expand),
            ("V2__rename.sql", Class::Contract),
            ("V3__col.sql", Class::Contract)
        ]
    );
    insta::assert_snapshot!("sql-sqlite-renames", r.to_text());
}

const RELEASE: &str = r#"
apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 3.0.0, type: feature }
services:
  db:
    kind: migration
    migrations: ./migrations
    database: "sqlite://shop.db"
  api:
    depends_on: [db]
    requires: { db: ">=3", search: ">=2" }
    run: { command: "api --port {{ port }}" }
    config: [ { template: api.toml.j2, dest: api.toml } ]
  web:
    depends_on: [api]
    run: { command: "web" }
environments:
  prod:
    target: { process: {} }
    vars: { db_url: "secret://env/SHOP_DB" }
    deployed: { search: 1.4.0 }
"#;

#[test]
fn contract_migration_shipped_with_dependent_apps_is_flagged_and_plan_checks_report_it() {
    let d = tempfile::tempdir().unwrap();
    set(
        d.path(),
        &[
            (
                "migrations/V1__orders.sql",
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER);\n",
            ),
            (
                "migrations/V2__drop_total.sql",
                "ALTER TABLE orders DROP COLUMN total;\n",
            ),
            (
                "api.toml.j2",
                "db = \"{{ vars.db_url }}\"\nregion = \"{{ vars.region }}\"\n",
            ),
        ],
    );
    let spec = slipway_model::validate::load("release.yaml", RELEASE)
        .map_err(|e| e.render(false, 100))
        .unwrap()
        .spec;
    let m = check_migrations(&spec, d.path(), None, &BTreeMap::new()).unwrap();
    assert_eq!(m.incompatible.len(), 1);
    assert_eq!(m.incompatible[0].dependents, ["api", "web"]);
    assert_eq!(m.incompatible[0].files, ["V2__drop_total.sql"]);

    // Once V2 is applied, nothing pending contracts.
    let applied = BTreeMap::from([("db".to_owned(), 2)]);
    assert!(
        check_migrations(&spec, d.path(), None, &applied)
            .unwrap()
            .incompatible
            .is_empty()
    );

    let checks = plan_checks(&spec, d.path(), "prod", &CheckFacts::default());
    assert!(checks.requires_phased());
    let lock = checks.lock.as_ref().unwrap();
    assert_eq!(lock.versions["search"].version, "1.4.0");
    let findings: Vec<String> = checks
        .findings
        .iter()
        .map(|f| format!("{} {}: {}", f.severity, f.code, f.message))
        .collect();
    insta::assert_snapshot!("plan-checks-findings", findings.join("\n"));

    // The incompatibility itself goes to the planner as a compatibility fact, one per
    // contract file, with the id a waiver names.
    let (facts, problems) =
        slipway_package::compat::findings(&spec, d.path(), None, &BTreeMap::new());
    assert!(problems.is_empty(), "{problems:?}");
    let ids: Vec<&str> = facts.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["migration:db:V2__drop_total.sql"]);
    assert!(
        facts[0].message.contains("api, web"),
        "{}",
        facts[0].message
    );
}
