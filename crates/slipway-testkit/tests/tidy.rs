//! The workspace's tidy test (rust-analyzer's habit): the architecture invariants that are
//! about the code's shape, checked on the real dependency graph and the real files, so a
//! change that breaks one fails `cargo test` with the rule and the place.
//!
//! - Crate edges: the model and the engine know no server stack, SSH, SQL driver or
//!   process API; the operations layer depends on no CLI, HTTP or terminal crate; the
//!   front ends do not depend on SQL or SSH drivers directly; nothing ships the test kit.
//! - Only the operations layer constructs the engine (tests, benches and examples aside).
//! - Every source file starts with a `//!` module doc.
//! - Every test file is part of its crate's one test binary.
//! - `clippy.toml` keeps wall-clock reads and process spawning behind one helper each.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is a failure with the reason"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root. From the variable cargo sets when it runs the test (a test binary
/// built in a moved checkout would carry the old path in `env!`).
fn root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    dir.join("../..")
}

/// Normal (non-dev, non-build) dependencies of every workspace package, transitively, by
/// package name, from `cargo metadata`.
struct Graph {
    direct: BTreeMap<String, BTreeSet<String>>,
    workspace: BTreeSet<String>,
}

impl Graph {
    fn load() -> Self {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: BTreeMap<String, String> = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_owned(),
                    p["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let workspace = meta["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| names[id.as_str().unwrap()].clone())
            .collect();
        let mut direct: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().unwrap() {
            let from = names[node["id"].as_str().unwrap()].clone();
            let entry = direct.entry(from).or_default();
            for dep in node["deps"].as_array().unwrap() {
                let normal = dep["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null());
                if normal {
                    entry.insert(names[dep["pkg"].as_str().unwrap()].clone());
                }
            }
        }
        Self { direct, workspace }
    }

    fn closure(&self, krate: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![krate.to_owned()];
        while let Some(k) = todo.pop() {
            for d in self.direct.get(&k).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    }
}

/// Every broken edge, as "crate -> dependency (rule)".
fn broken_edges(g: &Graph) -> Vec<String> {
    let server_stack = ["axum", "hyper", "tower-http", "reqwest"];
    let drivers = ["russh", "openssh", "sqlx", "procfs"];
    let front_ends = [
        "clap",
        "indicatif",
        "comfy-table",
        "anstream",
        "axum",
        "tower-http",
    ];
    let mut broken = Vec::new();
    let forbid = |broken: &mut Vec<String>,
                  krate: &str,
                  deps: &BTreeSet<String>,
                  names: &[&str],
                  rule: &str| {
        for n in names {
            if deps.contains(*n) {
                broken.push(format!("{krate} -> {n} ({rule})"));
            }
        }
    };
    let model = g.closure("slipway-model");
    forbid(
        &mut broken,
        "slipway-model",
        &model,
        &["tokio"],
        "the model does no IO: no async runtime",
    );
    forbid(
        &mut broken,
        "slipway-model",
        &model,
        &server_stack,
        "the model knows no server stack",
    );
    forbid(
        &mut broken,
        "slipway-model",
        &model,
        &drivers,
        "the model knows no drivers",
    );
    let engine = g.closure("slipway-engine");
    forbid(
        &mut broken,
        "slipway-engine",
        &engine,
        &server_stack,
        "the engine knows no HTTP server or client",
    );
    forbid(
        &mut broken,
        "slipway-engine",
        &engine,
        &drivers,
        "the engine does IO only through its traits",
    );
    for k in &g.workspace {
        if !["slipway-model", "slipway-engine", "slipway-stdx"].contains(&k.as_str()) {
            for (of, closure) in [("slipway-model", &model), ("slipway-engine", &engine)] {
                if closure.contains(k) {
                    broken.push(format!("{of} -> {k} (the core depends on no other slipway crate but the model and stdx)"));
                }
            }
        }
    }
    let ops = g.closure("slipway-ops");
    forbid(
        &mut broken,
        "slipway-ops",
        &ops,
        &front_ends,
        "the operations layer depends on no CLI, HTTP or terminal crate",
    );
    forbid(
        &mut broken,
        "slipway-ops",
        &ops,
        &["slipway-cli", "slipway-server"],
        "front ends stand on ops, not the reverse",
    );
    for fe in ["slipway-cli", "slipway-server"] {
        let direct = g.direct.get(fe).cloned().unwrap_or_default();
        forbid(
            &mut broken,
            fe,
            &direct,
            &drivers,
            "front ends reach SQL, SSH and /proc through the layers below",
        );
    }
    for k in &g.workspace {
        if g.direct
            .get(k)
            .is_some_and(|d| d.contains("slipway-testkit"))
        {
            broken.push(format!(
                "{k} -> slipway-testkit (the test kit is a dev-dependency only)"
            ));
        }
    }
    broken
}

#[test]
fn crate_edges_hold() {
    let g = Graph::load();
    assert!(
        g.workspace.contains("slipway-ops"),
        "the graph was not read: {:?}",
        g.workspace
    );
    let broken = broken_edges(&g);
    assert!(
        broken.is_empty(),
        "crate edges broken:\n  {}",
        broken.join("\n  ")
    );
}

/// The rules catch what they are meant to: a front-end crate added to the operations layer's
/// dependencies and a driver added to the engine's are both reported.
#[test]
fn a_broken_edge_is_reported() {
    let mut g = Graph::load();
    g.direct
        .get_mut("slipway-ops")
        .unwrap()
        .insert("clap".into());
    g.direct
        .get_mut("slipway-engine")
        .unwrap()
        .insert("sqlx".into());
    let broken = broken_edges(&g);
    assert!(
        broken.iter().any(|b| b.starts_with("slipway-ops -> clap")),
        "{broken:?}"
    );
    assert!(
        broken
            .iter()
            .any(|b| b.starts_with("slipway-engine -> sqlx")),
        "{broken:?}"
    );
}

/// Rust files under a directory, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn only_the_operations_layer_constructs_the_engine() {
    let mut offenders = Vec::new();
    for c in crates() {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        if name == "slipway-ops" || name == "slipway-engine" {
            continue;
        }
        for f in rust_files(&c.join("src")) {
            let text = std::fs::read_to_string(&f).unwrap();
            if text.contains("Engine::new(") {
                offenders.push(f.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "front ends call slipway-ops, which composes the engine; these construct one: {offenders:?}"
    );
}

/// `cmd_*` modules of a file list, each with the other `cmd_*` modules it names.
fn cmd_cross_imports(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, text) in files {
        let Some(me) = name.strip_suffix(".rs").filter(|n| n.starts_with("cmd_")) else {
            continue;
        };
        for (i, _) in text.match_indices("cmd_") {
            // A path into another command module: `crate::cmd_x::` or `super::cmd_x::`.
            let before = &text[..i];
            if !(before.ends_with("crate::") || before.ends_with("super::")) {
                continue;
            }
            let other: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if other != me {
                found.push(format!("{name} -> {other}"));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The CLI's commands are thin and independent: what two of them share lives in a shared
/// module (`cli_util`, `audit_view`, `progress`, …) or in slipway-ops, never in another
/// command's module — the circle the operations issue removed must not come back.
#[test]
fn no_cli_command_module_imports_another() {
    let dir = root().join("crates/slipway-cli/src");
    let files: Vec<(String, String)> = rust_files(&dir)
        .into_iter()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&f).unwrap(),
            )
        })
        .collect();
    let found = cmd_cross_imports(&files);
    assert!(
        found.is_empty(),
        "cmd_* modules importing another: {found:?}"
    );
}

#[test]
fn a_cross_import_between_commands_is_reported() {
    let files = vec![
        (
            "cmd_a.rs".to_owned(),
            "fn f() { crate::cmd_b::g(); crate::cmd_a::h(); crate::cli_util::x(); }".to_owned(),
        ),
        ("cli_util.rs".to_owned(), "use crate::cmd_a::Y;".to_owned()),
    ];
    assert_eq!(cmd_cross_imports(&files), vec!["cmd_a.rs -> cmd_b"]);
}

#[test]
fn every_source_file_has_a_module_doc() {
    let mut missing = Vec::new();
    for c in crates() {
        for dir in ["src", "tests", "benches", "examples"] {
            for f in rust_files(&c.join(dir)) {
                let text = std::fs::read_to_string(&f).unwrap();
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if !first.starts_with("//!") {
                    missing.push(f.display().to_string());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` doc saying what they are for: {missing:#?}"
    );
}

#[test]
fn no_test_file_is_forgotten() {
    let mut forgotten = Vec::new();
    for c in crates() {
        let tests = c.join("tests");
        let runner = tests.join("runner.rs");
        let Ok(runner_text) = std::fs::read_to_string(&runner) else {
            continue;
        };
        // A crate with a runner has one test binary (`autotests = false`): every other file
        // must be one of its modules or it never runs.
        let manifest = std::fs::read_to_string(c.join("Cargo.toml")).unwrap();
        let others = std::fs::read_dir(&tests)
            .unwrap()
            .flatten()
            .filter(|f| {
                f.file_name() != "runner.rs" && f.path().extension().is_some_and(|x| x == "rs")
            })
            .count();
        if others > 0 && !manifest.contains("autotests = false") {
            forgotten.push(format!(
                "{}: its test modules would also build as binaries of their own: set `autotests = false`",
                c.display()
            ));
        }
        for f in std::fs::read_dir(&tests).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".rs")
                && stem != "runner"
                && !runner_text.contains(&format!("mod {stem};"))
            {
                forgotten.push(format!("{}", f.path().display()));
            }
        }
    }
    assert!(
        forgotten.is_empty(),
        "test files outside their crate's runner: {forgotten:#?}"
    );
}

#[test]
fn clippy_keeps_clocks_and_processes_behind_their_helpers() {
    let text = std::fs::read_to_string(root().join("clippy.toml")).unwrap();
    for path in [
        "std::time::SystemTime::now",
        "jiff::Timestamp::now",
        "std::process::Command::new",
        "tokio::process::Command::new",
    ] {
        assert!(
            text.contains(&format!("\"{path}\"")),
            "clippy.toml does not ban `{path}` outside its helper"
        );
    }
}
