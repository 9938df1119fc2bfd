//! Integrity before promotion, through the real binary: an artifact's digest and signature
//! are checked by `slipway plan` (blocking findings) and again by a verify-artifact step
//! immediately before the service's install, whose refusal is journaled and audited.
//! Keys and signatures are made with `slipway key generate` / `slipway sign`.

use std::path::Path;

use crate::slipway;

fn sha256(path: &Path) -> String {
    slipway_package::sha256_file(path).unwrap()
}

/// Generates a key pair `NAME.key` / `NAME.pub` in `dir`.
fn keypair(dir: &Path, name: &str) {
    let o = slipway()
        .current_dir(dir)
        .args(["key", "generate", "--unencrypted", "--secret-key"])
        .arg(format!("{name}.key"))
        .arg("--public-key")
        .arg(format!("{name}.pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn sign(dir: &Path, file: &str, key: &str) {
    let o = slipway()
        .current_dir(dir)
        .args(["sign", "--key", key, file])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A spec with one service `api` installing `app.bin`, signatures required with `trusted.pub`.
fn write_spec(dir: &Path, digest: &str, signature: Option<&str>) -> std::path::PathBuf {
    let d = dir.display();
    let sig = signature
        .map(|s| format!(", signature: {s}"))
        .unwrap_or_default();
    let spec = dir.join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
    artifact: {{ path: app.bin, sha256: \"{digest}\"{sig} }}
    steps: [ {{ name: install, run: \"touch {d}/installed\" }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    signature: {{ required: true, keys: [trusted.pub] }}
"
        ),
    )
    .unwrap();
    spec
}

fn plan_json(spec: &Path) -> (Option<i32>, serde_json::Value) {
    let o = slipway()
        .args(["plan", "--env", "staging", "--output", "json", "-f"])
        .arg(spec)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "plan printed no JSON: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

fn codes(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"].as_str().unwrap().starts_with("artifact-"))
        .map(|f| f["code"].as_str().unwrap().to_owned())
        .collect()
}

fn message(v: &serde_json::Value, code: &str) -> String {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .map(|f| f["message"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {code} finding in {v:#}"))
}

#[test]
fn plan_checks_digest_and_signature_of_every_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    keypair(p, "trusted");
    keypair(p, "other");
    std::fs::write(p.join("app.bin"), b"the build output\n").unwrap();
    let good = sha256(&p.join("app.bin"));
    sign(p, "app.bin", "trusted.key");

    // Exact file, signed by a trusted key: no artifact finding, and the plan carries a
    // verify-artifact step before the install.
    let spec = write_spec(p, &good, Some("app.bin.minisig"));
    let (code, v) = plan_json(&spec);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(codes(&v).is_empty(), "{v:#}");
    let ids: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["api/verify-artifact", "api/install"]);
    assert_eq!(v["steps"][0]["action"]["kind"], "verify_artifact");
    assert_eq!(v["steps"][0]["action"]["keys"][0], "trusted.pub");

    // Missing file.
    let spec_missing = write_spec(p, &good, Some("app.bin.minisig"));
    std::fs::rename(p.join("app.bin"), p.join("app.bin.away")).unwrap();
    let (code, v) = plan_json(&spec_missing);
    assert_eq!(code, Some(3));
    assert_eq!(codes(&v), ["artifact-missing"]);
    assert!(message(&v, "artifact-missing").contains("app.bin"));
    std::fs::rename(p.join("app.bin.away"), p.join("app.bin")).unwrap();

    // Another digest in the spec than the file's: blocked, both digests named.
    let wrong = "0".repeat(64);
    let spec = write_spec(p, &wrong, Some("app.bin.minisig"));
    let (code, v) = plan_json(&spec);
    assert_eq!(code, Some(3), "a digest mismatch blocks the plan");
    let m = message(&v, "artifact-digest-mismatch");
    assert!(m.contains(&wrong) && m.contains(&good), "{m}");

    // Unsigned, while signatures are required.
    let spec = write_spec(p, &good, None);
    let (code, v) = plan_json(&spec);
    assert_eq!(code, Some(3));
    assert_eq!(codes(&v), ["artifact-unsigned"]);

    // Signed with a key the environment does not trust.
    std::fs::copy(p.join("app.bin"), p.join("b.bin")).unwrap();
    sign(p, "b.bin", "other.key");
    let spec = write_spec(p, &good, Some("b.bin.minisig"));
    let (code, v) = plan_json(&spec);
    assert_eq!(code, Some(3));
    assert_eq!(codes(&v), ["artifact-untrusted-key"]);

    // A trusted signature of another file.
    std::fs::write(p.join("c.bin"), b"something else\n").unwrap();
    sign(p, "c.bin", "trusted.key");
    let spec = write_spec(p, &good, Some("c.bin.minisig"));
    let (code, v) = plan_json(&spec);
    assert_eq!(code, Some(3));
    assert_eq!(codes(&v), ["artifact-signature-invalid"]);
}

#[test]
fn an_artifact_changed_after_planning_is_refused_before_install_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let d = p.display();
    keypair(p, "trusted");
    std::fs::write(p.join("app.bin"), b"the build output\n").unwrap();
    let good = sha256(&p.join("app.bin"));
    sign(p, "app.bin", "trusted.key");
    // Under `signature: required` a service that runs commands needs a signed artifact
    // of its own too.
    std::fs::write(p.join("build.bin"), b"the swapper\n").unwrap();
    let build = sha256(&p.join("build.bin"));
    sign(p, "build.bin", "trusted.key");
    // `build` (wave 0) rewrites api's artifact after the plan was made and checked: the
    // swap happens between plan and install, which is exactly what the step must catch.
    let spec = p.join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  build:
    artifact: {{ path: build.bin, sha256: \"{build}\", signature: build.bin.minisig }}
    steps: [ {{ name: swap, run: \"echo tampered >> {d}/app.bin\" }} ]
  api:
    depends_on: [build]
    artifact: {{ path: app.bin, sha256: \"{good}\", signature: app.bin.minisig }}
    steps: [ {{ name: install, run: \"touch {d}/installed\" }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    signature: {{ required: true, keys: [trusted.pub] }}
"
        ),
    )
    .unwrap();
    let store = format!("sqlite://{d}/s.db");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the deploy must fail: {stderr}");
    let tampered = sha256(&p.join("app.bin"));
    assert_ne!(tampered, good);
    assert!(
        !p.join("installed").exists(),
        "api's install ran from a tampered artifact"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON on stdout; stderr: {stderr}"));
    let run = v["run"]
        .as_str()
        .or(v["id"].as_str())
        .unwrap_or_else(|| panic!("no run id in {v:#}"))
        .to_owned();

    // The journal names the refusal with both digests.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["logs", &run])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let logs = String::from_utf8_lossy(&o.stdout);
    assert!(logs.contains("api/verify-artifact"), "{logs}");
    assert!(
        logs.contains(&good) && logs.contains(&tampered),
        "the refusal must name the expected and the actual digest: {logs}"
    );

    // The refusal is in the audit chain, which still verifies.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let export = p.join("audit.jsonl");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["audit", "export", "--out"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let audit = std::fs::read_to_string(&export).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("step_failed")
            && l.contains("api/verify-artifact")
            && l.contains(&tampered)),
        "no audited step_failed of api/verify-artifact naming {tampered}:\n{audit}"
    );
}
