//! Breaking compatibility changes the plan, through the real binary: an OpenAPI breaking
//! change refuses a big-bang plan (exit 3, naming the finding and the fix), requires one
//! more approver under a phased strategy, and a waiver removes both while being shown in
//! the plan and written to the audit chain when the run starts. An additive change
//! changes nothing.

use std::path::Path;

use crate::slipway;

const OLD_API: &str = "openapi: 3.0.3
info: { title: orders, version: 1.0.0 }
paths:
  /orders:
    get:
      responses:
        '200': { description: the orders }
  /orders/{id}:
    delete:
      parameters:
        - { name: id, in: path, required: true, schema: { type: string } }
      responses:
        '204': { description: deleted }
";

/// Removes `DELETE /orders/{id}`: breaking.
const BREAKING_API: &str = "openapi: 3.0.3
info: { title: orders, version: 2.0.0 }
paths:
  /orders:
    get:
      responses:
        '200': { description: the orders }
";

/// Adds `GET /customers`: additive.
const ADDITIVE_API: &str = "openapi: 3.0.3
info: { title: orders, version: 1.1.0 }
paths:
  /orders:
    get:
      responses:
        '200': { description: the orders }
  /orders/{id}:
    delete:
      parameters:
        - { name: id, in: path, required: true, schema: { type: string } }
      responses:
        '204': { description: deleted }
  /customers:
    get:
      responses:
        '200': { description: the customers }
";

fn spec(dir: &Path, candidate: Option<&str>, strategy: &str, waivers: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("openapi-1.0.yaml"), OLD_API).unwrap();
    let openapi = match candidate {
        Some(doc) => {
            std::fs::write(dir.join("openapi-new.yaml"), doc).unwrap();
            "    openapi: { candidate: openapi-new.yaml, running: openapi-1.0.yaml }\n"
        }
        None => "",
    };
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: orders, version: 2.0.0, type: patch }}
services:
  api:
    steps: [ {{ name: install, run: 'true' }} ]
{openapi}environments:
  prod:
    target: {{ exec: {{}} }}
    approvals: {{ required: 1, four_eyes: true }}
    strategy: {strategy}
  staging:
    target: {{ exec: {{}} }}
    strategy: {strategy}
{waivers}"
    );
    let path = dir.join("release.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn plan_json(file: &Path, env: &str) -> (i32, serde_json::Value) {
    let o = slipway()
        .args(["plan", "--env", env, "--output", "json", "-f"])
        .arg(file)
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

fn approval_gates(p: &serde_json::Value) -> Vec<(u64, String)> {
    p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["gate"] == "approvals")
        .map(|g| {
            (
                g["required"].as_u64().unwrap(),
                g["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const FINDING: &str = "api:api:path-removed:/paths/~1orders~1{id}";

#[test]
fn a_breaking_api_change_refuses_big_bang_and_requires_another_approver() {
    let d = tempfile::tempdir().unwrap();
    let file = spec(d.path(), Some(BREAKING_API), "{ big_bang: {} }", "");

    // Big bang: refused at plan, naming the finding and the fix.
    let o = slipway()
        .args(["plan", "--env", "prod", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{text}");
    assert!(text.contains("compat-requires-phased"), "{text}");
    assert!(text.contains(FINDING), "the finding id is named: {text}");
    assert!(
        text.contains("strategy: { rolling"),
        "the fix is named: {text}"
    );
    // And a deploy is blocked before any run exists.
    let o = slipway()
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}/s.db", d.path().display()),
        )
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Phased: allowed, with one approver more than the environment asks.
    let file = spec(
        d.path(),
        Some(BREAKING_API),
        "{ rolling: { batch_size: 1 } }",
        "",
    );
    let (code, p) = plan_json(&file, "prod");
    assert_eq!(code, 0, "{p:#}");
    let gates = approval_gates(&p);
    assert_eq!(gates.len(), 2, "{gates:?}");
    assert_eq!(gates[1].0, 2, "{gates:?}");
    assert!(gates[1].1.contains(FINDING), "{gates:?}");
    assert_eq!(p["recommendation"]["approach"], "phased");
    assert_eq!(p["breaking"][0]["id"], FINDING);
    // Staging has no approvals of its own: the compat gate asks for one.
    let (_, p) = plan_json(&file, "staging");
    assert_eq!(approval_gates(&p)[0].0, 1, "{p:#}");
}

#[test]
fn a_waived_finding_adds_no_gate_is_shown_and_audited_when_the_run_starts() {
    let d = tempfile::tempdir().unwrap();
    let waiver = format!(
        "waivers:\n  - {{ finding: '{FINDING}', reason: no client deletes orders since 1.4, by: alice@example.com }}\n"
    );
    let file = spec(d.path(), Some(BREAKING_API), "{ big_bang: {} }", &waiver);
    let (code, p) = plan_json(&file, "staging");
    assert_eq!(code, 0, "{p:#}");
    assert!(approval_gates(&p).is_empty(), "no extra approval: {p:#}");
    assert_eq!(p["waivers"][0]["finding"], FINDING);
    assert_eq!(p["waivers"][0]["by"], "alice@example.com");
    let o = slipway()
        .args(["plan", "--env", "staging", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Waivers") && text.contains("no client deletes orders since 1.4"),
        "{text}"
    );

    let store = format!("sqlite://{}/s.db", d.path().display());
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let export = d.path().join("audit.jsonl");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "export", "--out"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let audit = std::fs::read_to_string(&export).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("waiver_applied"))
        .unwrap_or_else(|| panic!("no waiver in the audit chain:\n{audit}"));
    assert!(line.contains(FINDING), "{line}");
    assert!(
        line.contains("no client deletes orders since 1.4"),
        "{line}"
    );
    assert!(line.contains("alice@example.com"), "{line}");
    // Before any step: it is part of the run's start.
    let started = audit.find("step_started").unwrap_or(usize::MAX);
    assert!(audit.find("waiver_applied").unwrap() < started, "{audit}");
}

#[test]
fn an_additive_api_change_changes_nothing_in_the_plan() {
    let d = tempfile::tempdir().unwrap();
    let without = spec(d.path(), None, "{ big_bang: {} }", "");
    let (code, base) = plan_json(&without, "prod");
    assert_eq!(code, 0, "{base:#}");
    let with = spec(d.path(), Some(ADDITIVE_API), "{ big_bang: {} }", "");
    let (code, p) = plan_json(&with, "prod");
    assert_eq!(code, 0, "{p:#}");
    for part in [
        "gates",
        "strategy_kind",
        "recommendation",
        "findings",
        "waves",
    ] {
        assert_eq!(p[part], base[part], "{part} changed");
    }
    // The same steps (their idempotency keys follow the digest, which the `openapi`
    // field is part of).
    let steps = |p: &serde_json::Value| {
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].clone(), s["action"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&p), steps(&base));
    assert!(
        p.get("breaking").is_none() && p.get("waivers").is_none(),
        "{p:#}"
    );
}

#[test]
fn a_contract_migration_shipped_with_its_app_needs_a_phased_plan_too() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir(p.join("migrations")).unwrap();
    std::fs::write(
        p.join("migrations/V1__orders.sql"),
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER);\n",
    )
    .unwrap();
    std::fs::write(
        p.join("migrations/V2__drop_total.sql"),
        "ALTER TABLE orders DROP COLUMN total;\n",
    )
    .unwrap();
    let write = |strategy: &str| {
        let file = p.join("release.yaml");
        std::fs::write(
            &file,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: orders, version: 2.0.0, type: patch }}
services:
  db: {{ kind: migration, migrations: ./migrations, database: 'sqlite://orders.db', irreversible: true }}
  api:
    depends_on: [db]
    steps: [ {{ name: install, run: 'true' }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    strategy: {strategy}
"
            ),
        )
        .unwrap();
        file
    };
    let (code, plan) = plan_json(&write("{ big_bang: {} }"), "staging");
    assert_eq!(code, 3, "{plan:#}");
    let refused = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "compat-requires-phased")
        .unwrap_or_else(|| panic!("{plan:#}"));
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("migration:db:V2__drop_total.sql"),
        "{refused}"
    );
    let (code, plan) = plan_json(&write("{ rolling: { batch_size: 1 } }"), "staging");
    assert_eq!(code, 0, "{plan:#}");
    assert_eq!(approval_gates(&plan).len(), 1, "{plan:#}");
}
