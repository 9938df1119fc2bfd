//! A secret never reaches what Slipway records: a step prints a secret it gets from the
//! deploy's environment (the environment's vars reference it as `secret://env/NAME`), and
//! the service's config is rendered at install time with that secret and a
//! `secret://file/` one; the step reads the real values from `$SLIPWAY_CONFIG_DIR` and
//! prints them too. The known values are looked for in slipway's own output, `slipway
//! plan` and `render`, `slipway logs`, `slipway status --output json`, the SQLite files'
//! bytes and `slipway audit export`; the digests recorded with the run are checked
//! against `slipway render`'s (secrets masked) and the template's.

use crate::slipway;

const SECRET: &str = "hunter2-7f3a9c41e0b5-secret";
/// Short on purpose: the kind of secret a digest of the real file would give away.
const FILE_SECRET: &str = "pw-4417";
const TEMPLATE: &str = "token = \"{{ vars.api_token }}\"\npassword = \"{{ vars.db_password }}\"\nenv = \"{{ env }}\"\n";

#[test]
fn a_secret_printed_by_a_step_is_masked_in_logs_status_store_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let d = p.display();
    let spec = p.join("release.yaml");
    std::fs::write(p.join("api.conf.j2"), TEMPLATE).unwrap();
    std::fs::write(p.join("db.pass"), format!("{FILE_SECRET}\n")).unwrap();
    let seen_conf = p.join("seen.conf");
    std::fs::write(
        &spec,
        format!("apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
    config: [ {{ template: api.conf.j2, dest: etc/api.conf }} ]
    steps:
      - {{ name: install, run: 'echo \"token=$SECRET_X\"; echo \"stderr $SECRET_X\" >&2' }}
      - {{ name: read-config, run: 'cat \"$SLIPWAY_CONFIG_DIR/etc/api.conf\"; echo mode=$(stat -c %a \"$SLIPWAY_CONFIG_DIR/etc/api.conf\"); cp \"$SLIPWAY_CONFIG_DIR/etc/api.conf\" {seen}' }}
      - {{ name: fail, run: 'echo \"failing with $SECRET_X\"; exit 3' }}
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ api_token: 'secret://env/SECRET_X', db_password: 'secret://file/db.pass' }}
", seen = seen_conf.display()),
    )
    .unwrap();
    // What planning and `render` print, with the secret in the environment.
    let mut seen = Vec::new();
    for args in [
        &["plan", "--env", "staging", "-f"][..],
        &["plan", "--env", "staging", "--output", "json", "-f"][..],
        &["render", "--env", "staging", "-f"][..],
    ] {
        let o = slipway()
            .env("SECRET_X", SECRET)
            .args(args)
            .arg(&spec)
            .output()
            .unwrap();
        seen.push((
            "plan/render output",
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ));
    }
    let o = slipway()
        .args([
            "render", "--env", "staging", "api", "--output", "json", "-f",
        ])
        .arg(&spec)
        .output()
        .unwrap();
    let rendered: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let masked_sha256 = rendered["files"][0]["sha256"].as_str().unwrap().to_owned();
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
    seen.push(("deploy stdout+stderr", format!("{stdout}{stderr}")));
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
        for secret in [SECRET, FILE_SECRET] {
            assert!(
                !text.contains(secret),
                "the secret {secret} leaked into {what}:\n{text}"
            );
        }
    }
    for entry in std::fs::read_dir(p).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("s.db") && path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(FILE_SECRET.len())
                    .any(|w| w == FILE_SECRET.as_bytes()),
                "the file secret is in the bytes of {name}"
            );
        }
    }

    // The step saw the rendered file with the real values, private to the owner.
    let conf = std::fs::read_to_string(&seen_conf).expect("the step copied its config");
    assert_eq!(
        conf,
        format!("token = \"{SECRET}\"\npassword = \"{FILE_SECRET}\"\nenv = \"staging\"\n")
    );
    let logs = &seen.iter().find(|(w, _)| *w == "logs json").unwrap().1;
    assert!(logs.contains("mode=600"), "config files are 0600: {logs}");
    assert!(
        logs.contains("password = \\\"***secret://file/db.pass***\\\""),
        "the file secret the step printed is masked: {logs}"
    );
    // What was recorded: the masked rendering's digest (as `slipway render` computes
    // it), the template's digest and the secrets' names; no digest of the real bytes.
    let status = &seen.iter().find(|(w, _)| *w == "status json").unwrap().1;
    let status: serde_json::Value = serde_json::from_str(status).unwrap();
    let files = status["config"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{status:#}");
    let f = &files[0];
    assert_eq!(f["masked_sha256"], masked_sha256.as_str());
    assert_eq!(
        f["template_sha256"],
        slipway_package::digest::sha256_bytes(TEMPLATE.as_bytes()).as_str()
    );
    assert_eq!(
        f["secrets"],
        serde_json::json!(["secret://env/SECRET_X", "secret://file/db.pass"])
    );
    assert!(
        f.get("sha256").is_none(),
        "no digest over secret bytes: {f}"
    );
    assert_ne!(
        f["masked_sha256"],
        slipway_package::digest::sha256_bytes(conf.as_bytes()).as_str()
    );
    // The run failed and rolled back: the config it rendered is gone again (there was
    // none before).
    assert!(!p.join("config/staging/api").exists());
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
