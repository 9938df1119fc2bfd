//! The one integration-test binary of slipway-migrate: real PostgreSQL (started by
//! [`common`]) and real SQLite files.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

mod apply;
mod backup;
mod concurrent;
mod consistency;
mod dry_run;
mod rehearse;

/// Every `tests/*.rs` file is a module of this runner, so none is silently skipped.
#[test]
fn no_test_file_is_forgotten() {
    let runner = include_str!("runner.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs")
            && stem != "runner"
        {
            assert!(
                runner.contains(&format!("mod {stem};")),
                "tests/{name} is not a module of runner.rs"
            );
        }
    }
}
