//! Cross-check of the published schema (`slipway schema`) with check-jsonschema, a standard
//! validator: every example spec passes it and Slipway's validation; every spec of the
//! invalid corpus (the shapes issue 18 found slipping through: integers beyond their Rust
//! type, weights above 100, confidence of 1, unpinned apiVersion/kind, two targets or
//! strategies at once) fails both — and never reaches Slipway's `internal` error.

use std::path::{Path, PathBuf};
use std::process::Command;

use slipway_model::validate;

use crate::{reference, repo_path};

const BASE: &str = r#"apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    run: { command: "demo-app --port {{ port }}", replicas: 2 }
    health: { http: /healthz }
environments:
  prod:
    target: { process: {} }
    strategy:
      canary:
        steps:
          - set_weight: 10
          - analysis: { template: golden, duration: 30s }
          - set_weight: 100
analysis_templates:
  golden:
    metrics:
      - { name: latency-vs-stable, compare: mann-whitney, confidence: 0.98 }
notifications:
  - { webhook: "https://hooks.example.com/x", email: [] }
"#;

/// (name, replace this, with that) applied to [`BASE`].
const VALID: &[(&str, &str, &str)] = &[
    ("base", "", ""),
    ("whole-float-replicas", "replicas: 2", "replicas: 10.0"),
    ("weight-100", "set_weight: 10\n", "set_weight: 100\n"),
];

const INVALID: &[(&str, &str, &str)] = &[
    ("fractional-replicas", "replicas: 2", "replicas: 10.5"),
    (
        "replicas-beyond-u32",
        "replicas: 2",
        "replicas: 99999999999",
    ),
    ("negative-replicas", "replicas: 2", "replicas: -1"),
    (
        "weight-beyond-u32",
        "set_weight: 10\n",
        "set_weight: 5000000000\n",
    ),
    ("weight-101", "set_weight: 10\n", "set_weight: 101\n"),
    ("confidence-1", "confidence: 0.98", "confidence: 1"),
    ("confidence-0", "confidence: 0.98", "confidence: 0"),
    (
        "api-version",
        "apiVersion: slipway/v1",
        "apiVersion: slipway/v2",
    ),
    ("kind", "kind: Release", "kind: Deployment"),
    (
        "two-targets",
        "target: { process: {} }",
        "target: { process: {}, exec: {} }",
    ),
    ("no-target", "target: { process: {} }", "target: {}"),
    (
        "two-strategies",
        "    strategy:\n      canary:",
        "    strategy:\n      big_bang: {}\n      canary:",
    ),
    (
        "two-probes",
        "health: { http: /healthz }",
        "health: { http: /healthz, tcp: 8080 }",
    ),
    (
        "two-steps-in-one",
        "- set_weight: 100",
        "- { set_weight: 100, pause: 1m }",
    ),
    ("two-sinks", "email: []", "email: [ops@example.com]"),
    (
        "unknown-field",
        "type: patch }",
        "type: patch, colour: red }",
    ),
    ("missing-version", "version: 1.0.0, ", ""),
    (
        "min-samples-beyond-safe-integers",
        "  golden:\n",
        "  golden:\n    min_samples: 18446744073709551616\n",
    ),
];

fn variant(from: &str, to: &str) -> String {
    if from.is_empty() {
        return BASE.to_owned();
    }
    assert!(BASE.contains(from), "`{from}` is not in the base spec");
    BASE.replacen(from, to, 1)
}

/// The files check-jsonschema refused, by path.
fn check_jsonschema(schema: &Path, files: &[PathBuf]) -> Vec<String> {
    // Through the interpreter, not the console script: a pyenv shim for it may be missing.
    let out = Command::new("python3")
        .args(["-m", "check_jsonschema", "-o", "json", "--schemafile"])
        .arg(schema)
        .args(files)
        .output()
        .expect("check-jsonschema runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check-jsonschema output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut refused: Vec<String> = ["errors", "parse_errors"]
        .iter()
        .flat_map(|k| report[k].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["filename"].as_str().map(str::to_owned))
        .collect();
    refused.sort();
    refused.dedup();
    refused
}

#[test]
fn the_published_schema_agrees_with_check_jsonschema_and_validation() {
    if !reference::available(
        "check-jsonschema",
        &["python3", "-m", "check_jsonschema", "--version"],
        "`python3 -m pip install check-jsonschema`",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("slipway-v1.schema.json");
    std::fs::write(&schema, slipway_model::schema::schema_text()).unwrap();

    let mut valid: Vec<PathBuf> = std::fs::read_dir(repo_path("examples"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|f| f.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && std::fs::read_to_string(p).is_ok_and(|t| t.contains("kind: Release"))
        })
        .collect();
    assert!(valid.len() >= 6, "examples: {valid:?}");
    for (name, from, to) in VALID {
        let p = dir.path().join(format!("valid-{name}.yaml"));
        std::fs::write(&p, variant(from, to)).unwrap();
        valid.push(p);
    }
    let mut invalid = Vec::new();
    for (name, from, to) in INVALID {
        let p = dir.path().join(format!("invalid-{name}.yaml"));
        std::fs::write(&p, variant(from, to)).unwrap();
        invalid.push(p);
    }

    // Slipway: the valid ones load, the invalid ones are refused without `internal`.
    for p in &valid {
        let text = std::fs::read_to_string(p).unwrap();
        if let Err(e) = validate::load(&p.display().to_string(), &text) {
            panic!(
                "{} is refused by Slipway:\n{}",
                p.display(),
                e.render(false, 100)
            );
        }
    }
    for p in &invalid {
        let text = std::fs::read_to_string(p).unwrap();
        match validate::load(&p.display().to_string(), &text) {
            Ok(_) => panic!("{} is accepted by Slipway", p.display()),
            Err(e) => assert!(
                e.diagnostics.iter().all(|d| d.code != "internal"),
                "{}:\n{}",
                p.display(),
                e.render(false, 100)
            ),
        }
    }

    // check-jsonschema: the same verdicts.
    let refused_valid = check_jsonschema(&schema, &valid);
    assert!(
        refused_valid.is_empty(),
        "check-jsonschema refuses valid specs: {refused_valid:?}"
    );
    let refused = check_jsonschema(&schema, &invalid);
    let accepted: Vec<_> = invalid
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| !refused.contains(p))
        .collect();
    assert!(
        accepted.is_empty(),
        "check-jsonschema accepts invalid specs: {accepted:?}"
    );
}

#[test]
fn structural_problems_do_not_hide_semantic_ones() {
    // A wrong type, an unknown field and an out-of-range number (structure) beside a
    // dangling reference, a bad cron and a bad duration (meaning): all reported at once.
    let text = variant("", "")
        .replacen("replicas: 2", "replicas: two", 1)
        .replacen("type: patch }", "type: patch, colour: red }", 1)
        .replacen("set_weight: 100", "set_weight: 500", 1)
        .replacen("template: golden,", "template: goldne,", 1)
        .replacen(
            "    target: { process: {} }\n",
            "    target: { process: {} }\n    windows: [ { cron: \"0 9 * * 1 0\", timezone: UTC, duration: 1h } ]\n",
            1,
        );
    let e = validate::load("spec.yaml", &text).unwrap_err();
    let codes: Vec<&str> = e.diagnostics.iter().map(|d| d.code).collect();
    for want in [
        "wrong-type",
        "unknown-field",
        "out-of-range",
        "unknown-reference",
        "invalid-cron",
    ] {
        assert!(
            codes.contains(&want),
            "{want} missing: {}",
            e.render(false, 100)
        );
    }
}
