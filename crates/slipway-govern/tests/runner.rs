//! The one integration-test binary of slipway-govern: real SQLite stores seeded through
//! the engine's `Store` trait, real git repositories, real local receivers.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod access;
mod archive_bundle;
mod archive_fuzz;
mod catalog;
mod common;
mod compliance;
mod dora;
mod notify;
mod notify_tls;
mod reports;

#[test]
fn every_test_module_is_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let runner = std::fs::read_to_string(dir.join("runner.rs")).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(m) = name.strip_suffix(".rs")
            && m != "runner"
        {
            assert!(
                runner.contains(&format!("mod {m};")),
                "tests/{name} is not in runner.rs"
            );
        }
    }
}
