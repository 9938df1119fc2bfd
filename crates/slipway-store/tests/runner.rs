//! Integration tests of the stores: one binary, one module per concern. Real SQLite files
//! in temp dirs and databases on one real PostgreSQL server per binary, tampered with the
//! real `sqlite3` and `psql` CLIs; the contract tests run on every backend, the in-memory
//! store included (`on_both!`), or on the two with files (`on_disk!`).
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns panic on setup failure"
)]

mod access;
mod append_rows;
mod archive;
mod audit_read;
mod check_gates;
mod commits;
mod common;
mod compat;
mod drive_task;
mod engine;
mod journal;
mod latest_runs;
mod leases;
mod live_runs;
mod memory;
mod open_race;
mod pg;
mod pipeline;
mod postgres;
mod rollback;
mod tamper;

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
