//! The one integration-test binary of slipway-checks: every check kind against real
//! things (listeners, a network namespace with a drop rule, unix users, git repositories,
//! PostgreSQL, the demo-app binary), each with a passing and a failing case.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;
mod t_accounts;
mod t_capacity;
mod t_infra;
mod t_monitoring;
mod t_perf;
mod t_postgres;
mod t_reach;
mod t_smoke;
mod t_tls;

#[test]
fn no_test_file_is_forgotten() {
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
