//! A secret never reaches what Slipway records: a step prints a secret it gets from the
//! deploy's environment (the environment's vars reference it as `secret://env/NAME`), and
//! the known value is looked for in `slipway logs`, `slipway status --output json`, the
//! SQLite files' bytes and `slipway audit export`.

use crate::slipway;

const SECRET: &str = "hunter2-7f3a9c41e0b5-secret";

#[test]
fn a_secret_printed_by_a_step_is_masked_in_logs_status_store_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let d = p.display();
    let spec = p.join("release.yaml");
    std::fs::write(
        &spec,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    steps:
      - { name: install, run: 'echo \"token=$SECRET_X\"; echo \"stderr $SECRET_X\" >&2' }
      - { name: fail, run: 'echo \"failing with $SECRET_X\"; exit 3' }
environments:
  staging:
    target: { exec: {} }
    vars: { api_token: 'secret://env/SECRET_X' }
",
    )
    .unwrap();
    let store = format!("sqlite://{d}/s.db");
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .env("SECRET_X", SECRET)
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "the `fail` step fails the run: {stderr}"
    );
    let mut seen = vec![("deploy stdout+stderr", format!("{stdout}{stderr}"))];
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON on stdout; stderr: {stderr}"));
    let run = v["run"]
        .as_str()
        .or(v["id"].as_str())
        .unwrap_or_else(|| panic!("no run id in {v:#}"))
        .to_owned();

    let cmd = |args: &[&str]| {
        let o = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    seen.push(("logs", cmd(&["logs", &run])));
    seen.push(("logs json", cmd(&["logs", &run, "--output", "json"])));
    seen.push(("status json", cmd(&["status", &run, "--output", "json"])));
    let export = p.join("audit.jsonl");
    cmd(&["audit", "export", "--out", &export.display().to_string()]);
    seen.push(("audit export", std::fs::read_to_string(&export).unwrap()));
    // The database and its WAL, as bytes: what a backup or a copied file would carry.
    for entry in std::fs::read_dir(p).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("s.db") && path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            seen.push(("store file", String::from_utf8_lossy(&bytes).into_owned()));
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the secret is in the bytes of {name}"
            );
        }
    }

    for (what, text) in &seen {
        assert!(
            !text.contains(SECRET),
            "the secret leaked into {what}:\n{text}"
        );
    }
    // The output was captured (the masks are there), so the absence above means something.
    let logs = &seen.iter().find(|(w, _)| *w == "logs json").unwrap().1;
    assert!(
        logs.contains("token=***secret://env/SECRET_X***"),
        "captured stdout with the mask expected in the journal: {logs}"
    );
    assert!(
        logs.contains("stderr ***secret://env/SECRET_X***"),
        "{logs}"
    );
    let audit = &seen.iter().find(|(w, _)| *w == "audit export").unwrap().1;
    assert!(
        audit.contains("failing with ***secret://env/SECRET_X***"),
        "the failed step's output is audited, masked: {audit}"
    );
}
