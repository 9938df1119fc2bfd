//! Plan digests: stable under reformatting and key order, changed by any semantic edit.

use slipway_model::plan::{Facts, plan};
use slipway_model::validate;

fn digest(text: &str, env: &str) -> String {
    let l = validate::load("d.yaml", text).unwrap();
    plan(&l.spec, env, &Facts::default()).unwrap().digest
}

const BASE: &str = "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  db: { steps: [ { name: m, run: \"echo db\" } ] }
  api: { depends_on: [db, cache], steps: [ { name: i, run: \"echo api\", undo: \"echo undo\" } ] }
  cache: { steps: [ { name: c, run: \"echo cache\" } ] }
environments:
  staging: { target: { exec: {} }, vars: { a: 1 } }
  prod: { target: { exec: {} }, production: true, approvals: { required: 1 } }
";

#[test]
fn reordering_and_whitespace_do_not_change_the_digest() {
    let reordered = "kind: Release
apiVersion: slipway/v1
environments:
  prod:
    approvals:
      required: 1
    production: true
    target:
      exec: {}
  staging: { vars: { a: 1 }, target: { exec: {} } }
services:
  cache:
    steps:
      - run: \"echo cache\"
        name: c
  api:
    steps: [ { undo: \"echo undo\", run: \"echo api\", name: i } ]
    depends_on: [cache, db]     # order of dependencies carries no meaning
  db: { steps: [ { name: m, run: \"echo db\" } ] }
metadata: { type: patch, version: 1.0.0, name: shop }
";
    assert_eq!(digest(BASE, "prod"), digest(reordered, "prod"));
    assert_eq!(digest(BASE, "staging"), digest(reordered, "staging"));
}

#[test]
fn every_semantic_change_changes_the_digest() {
    let base = digest(BASE, "prod");
    for (from, to) in [
        ("version: 1.0.0", "version: 1.0.1"),
        ("type: patch", "type: security"),
        ("run: \"echo db\"", "run: \"echo db2\""),
        ("undo: \"echo undo\"", "undo: \"echo undo2\""),
        ("depends_on: [db, cache]", "depends_on: [db]"),
        ("approvals: { required: 1 }", "approvals: { required: 2 }"),
        ("production: true", "production: false"),
    ] {
        let changed = BASE.replace(from, to);
        assert_ne!(changed, BASE, "replacement {from} did not apply");
        assert_ne!(
            digest(&changed, "prod"),
            base,
            "{from} → {to} kept the digest"
        );
    }
}

#[test]
fn another_environments_settings_do_not_change_this_plan() {
    let changed = BASE.replace("vars: { a: 1 }", "vars: { a: 2 }");
    assert_eq!(digest(&changed, "prod"), digest(BASE, "prod"));
    assert_ne!(digest(&changed, "staging"), digest(BASE, "staging"));
}

#[test]
fn idempotency_keys_are_stable_and_distinct() {
    let l = validate::load("d.yaml", BASE).unwrap();
    let a = plan(&l.spec, "prod", &Facts::default()).unwrap();
    let b = plan(&l.spec, "prod", &Facts::default()).unwrap();
    let keys: std::collections::BTreeSet<_> =
        a.steps.iter().map(|s| s.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), a.steps.len());
    assert_eq!(a.steps, b.steps);
}

#[test]
fn the_router_is_part_of_the_digest_and_named_per_service() {
    let spec = |router: &str| {
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api: {{ run: {{ command: \"bin/api --port {{{{ port }}}}\" }} }}
  web: {{ run: {{ command: \"bin/web --port {{{{ port }}}}\" }} }}
environments:
  prod: {{ target: {{ process: {{}} }}{router} }}
"
        )
    };
    let builtin = digest(&spec(""), "prod");
    let h = ", router: { service: api, haproxy: { socket: a.sock, backend: app } }";
    let haproxy = digest(&spec(h), "prod");
    assert_ne!(builtin, haproxy);
    let other_backend = digest(&spec(&h.replace("backend: app", "backend: app2")), "prod");
    assert_ne!(haproxy, other_backend);
    let n = ", router: { service: api, nginx: { upstream_file: up.conf, upstream: app } }";
    let nginx = digest(&spec(n), "prod");
    assert_ne!(nginx, haproxy);
    assert_ne!(
        nginx,
        digest(&spec(&n.replace("up.conf", "up2.conf")), "prod")
    );
    let l = validate::load("d.yaml", &spec(h)).unwrap();
    let p = plan(&l.spec, "prod", &Facts::default()).unwrap();
    assert_eq!(p.router_of("api").map(|r| r.kind()), Some("haproxy"));
    assert!(p.router_of("web").is_none(), "web keeps the built-in proxy");
}
