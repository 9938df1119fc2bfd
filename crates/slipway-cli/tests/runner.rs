//! The one integration-test binary of the CLI: real `slipway` processes, real files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

mod access_enforced_cli;
mod archive_cli;
mod artifact_cli;
mod canary_cli;
mod check_cli;
mod checklist_cli;
mod checks_gate_cli;
mod compat_plan_cli;
mod config_cli;
mod config_process_cli;
mod crash;
mod demo_cli;
mod gates_cli;
mod infra_cli;
mod lease_cli;
mod migrate_deploy_cli;
mod perf_baseline_cli;
mod plan_cli;
mod prestage_cli;
mod rehearse_cli;
mod render_cli;
mod report_cli;
mod rollback_cli;
mod secret_cli;
mod smoke_cli;
mod tls_check_cli;
mod tokens_cli;

/// Every `.rs` file in tests/ must be a module of this runner, or it would never run.
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

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `slipway` command with a clean, deterministic environment.
pub fn slipway() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("slipway").unwrap();
    c.current_dir(repo())
        .env_remove("SLIPWAY_OUTPUT")
        .env_remove("SLIPWAY_STORE")
        .env("NO_COLOR", "1");
    c
}
