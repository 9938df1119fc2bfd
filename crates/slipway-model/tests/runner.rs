//! The one integration-test binary of slipway-model (see STYLE.md: one binary per crate).
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

mod digest;
mod error_rate;
mod fuzz;
mod malformed;
mod plans;
mod ref_jsonschema;
mod ref_scipy;
mod reference;
mod schema;

/// Every `.rs` file in tests/ must be a module of this runner, or it would silently never run.
#[test]
fn no_test_file_is_forgotten() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let runner = std::fs::read_to_string(dir.join("runner.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs")
            && stem != "runner"
        {
            assert!(
                runner.contains(&format!("mod {stem};")),
                "tests/{name} is not listed in tests/runner.rs"
            );
        }
    }
}

/// Path of a file under the repository root.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}
