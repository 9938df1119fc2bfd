//! Pre-staged rollback: every installed artifact is kept in a content-addressed store, and
//! the next release's plan checks that the rollback target's artifacts are there and
//! verify — or blocks.

use std::path::Path;

use crate::slipway;

fn write_release(dir: &Path, version: &str, content: &str) -> std::path::PathBuf {
    let artifact = format!("app-{version}.bin");
    std::fs::write(dir.join(&artifact), content).unwrap();
    let digest = slipway_package::sha256_file(&dir.join(&artifact)).unwrap();
    let spec = dir.join(format!("release-{version}.yaml"));
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    artifact: {{ path: {artifact}, sha256: \"{digest}\" }}
    steps: [ {{ name: install, run: \"true\" }} ]
environments:
  staging: {{ target: {{ exec: {{}} }} }}
"
        ),
    )
    .unwrap();
    spec
}

#[test]
fn the_rollback_target_must_be_pre_staged_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/state/s.db", dir.path().display());
    let v1 = write_release(dir.path(), "1.0.0", "version one");
    let v2 = write_release(dir.path(), "1.1.0", "version two");

    // No history yet: nothing to pre-stage, no finding.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["plan", "--env", "staging", "--output", "json", "-f"])
        .arg(&v2)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().iter().all(|f| {
        !f["code"]
            .as_str()
            .unwrap()
            .starts_with("rollback-artifacts")
    }));
    assert!(
        !dir.path().join("state/s.db").exists(),
        "planning must not create a store"
    );

    // 1.0.0 is installed: its artifact is kept under its digest.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&v1)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let digest = slipway_package::sha256_file(&dir.path().join("app-1.0.0.bin")).unwrap();
    let kept = dir.path().join("state/artifacts/sha256").join(&digest);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "version one");

    // Planning 1.1.0: the rollback target (1.0.0) is pre-staged.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["plan", "--env", "staging", "--output", "json", "-f"])
        .arg(&v2)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let staged = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "rollback-artifacts-staged")
        .unwrap();
    assert!(
        staged["message"].as_str().unwrap().contains("shop 1.0.0"),
        "{staged}"
    );

    // The kept copy is damaged: the plan blocks, naming the service and the digests.
    std::fs::write(&kept, "tampered").unwrap();
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["plan", "--env", "staging", "--output", "json", "-f"])
        .arg(&v2)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let missing = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "rollback-artifacts-missing")
        .unwrap();
    let msg = missing["message"].as_str().unwrap();
    assert!(msg.contains("api") && msg.contains(&digest), "{msg}");

    // Gone entirely: still blocked, and deploy refuses the plan.
    std::fs::remove_file(&kept).unwrap();
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "-f"])
        .arg(&v2)
        .output()
        .unwrap();
    assert_ne!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
