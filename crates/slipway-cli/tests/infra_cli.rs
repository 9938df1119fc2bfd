//! Infrastructure files: committed and clean in a real git repository, validated by a
//! declared command, digests recorded with the run; a dirty file blocks the deploy.

use crate::slipway;

#[test]
fn dirty_or_invalid_infrastructure_blocks_and_clean_is_recorded_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .current_dir(d)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    std::fs::create_dir_all(d.join("infra")).unwrap();
    std::fs::write(d.join("infra/main.tf"), "resource \"null\" \"x\" {}\n").unwrap();
    std::fs::write(
        d.join("release.yaml"),
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api: { steps: [ { name: install, run: \"true\" } ] }
environments:
  staging:
    target: { exec: {} }
    infrastructure: { paths: [infra/main.tf], validate: \"grep -q resource infra/main.tf\" }
",
    )
    .unwrap();
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "infra"]);
    let spec = d.join("release.yaml");
    let store = format!("sqlite://{}/state/s.db", d.display());

    let o = slipway()
        .args([
            "check", "--env", "staging", "--only", "infra", "--output", "json", "-f",
        ])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();
    let recorded =
        std::fs::read_to_string(d.join("state/runs").join(&run).join("infrastructure.json"))
            .unwrap();
    assert!(recorded.contains("infra/main.tf"), "{recorded}");

    // An uncommitted edit: check fails and deploy is blocked before anything runs.
    std::fs::write(d.join("infra/main.tf"), "resource \"null\" \"y\" {}\n").unwrap();
    let o = slipway()
        .args(["check", "--env", "staging", "--only", "infra", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("infrastructure is not ready"));

    // Committed again but failing validation: still blocked.
    std::fs::write(d.join("infra/main.tf"), "nothing here\n").unwrap();
    git(&["commit", "-qam", "break"]);
    let o = slipway()
        .args([
            "check", "--env", "staging", "--only", "infra", "--output", "json", "-f",
        ])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}
