//! One integration-test binary for slipway-proxy (see STYLE.md): every test module is a
//! `mod` here, and `no_test_file_is_forgotten` fails when a file is not listed.
//!
//! The tests use real servers: demo-app started in-process through `demo_app::serve`,
//! and in `test_binary` the real `demo-app` executable.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
// Helpers outside `#[test]` functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod test_admin;
mod test_admin_fuzz;
mod test_binary;
mod test_bodies;
mod test_failures;
mod test_guard;
mod test_keepalive;
mod test_limits;
mod test_matching;
mod test_metrics;
mod test_routing;

#[test]
fn no_test_file_is_forgotten() {
    let runner = include_str!("runner.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs")
            && module != "runner"
        {
            assert!(
                runner.contains(&format!("mod {module};")),
                "tests/{name} is not listed in tests/runner.rs"
            );
        }
    }
}
