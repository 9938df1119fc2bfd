//! Config rendered at install time, through the real binary: a deploy renders each
//! service's templates into its config directory (`$SLIPWAY_CONFIG_DIR` of its steps),
//! records the digests with the run, and a template edited after the plan was made (here
//! to read a variable no environment has) is refused at install with both digests before
//! anything is rendered or written — the previous release's config stays exactly as it
//! was. (The same all-or-nothing holds when the render itself fails: the providers tests
//! render unpinned templates with an undefined variable.)

use crate::slipway;

const TEMPLATE: &str = "region = \"{{ vars.region }}\"\nversion = \"{{ version }}\"\n";

fn spec(version: &str, break_template: bool) -> String {
    // `a` runs first (b depends on it); in the second release its step edits b's template
    // after the plan was made, so only the install-time check can catch it.
    let edit = if break_template {
        // The braces are Slipway's escape for a literal `{{`/`}}` in a step command.
        "printf 'extra = \\\"{{ '{{' }} vars.nope {{ '}}' }}\\\"\\\\n' >> b.conf.j2"
    } else {
        "true"
    };
    format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  a:
    steps: [ {{ name: prepare, run: \"{edit}\", undo: 'true' }} ]
  b:
    depends_on: [a]
    config: [ {{ template: b.conf.j2, dest: b.conf }} ]
    steps: [ {{ name: install, run: 'cp \"$SLIPWAY_CONFIG_DIR/b.conf\" installed-b.conf', undo: 'true' }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ region: eu-west-1 }}
"
    )
}

#[test]
fn config_is_rendered_at_install_and_a_broken_render_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let store = format!("sqlite://{}/.slipway/s.db", p.display());
    let file = p.join("release.yaml");
    std::fs::write(p.join("b.conf.j2"), TEMPLATE).unwrap();
    std::fs::write(&file, spec("1.0.0", false)).unwrap();
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["run"].as_str().unwrap().to_owned();
    let dir = p.join(".slipway/config/staging/b");
    let good = "region = \"eu-west-1\"\nversion = \"1.0.0\"\n";
    assert_eq!(std::fs::read_to_string(dir.join("b.conf")).unwrap(), good);
    assert_eq!(
        std::fs::read_to_string(p.join("installed-b.conf")).unwrap(),
        good
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(dir.join("b.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // Recorded with the run: no secret in this file, so its exact digest too.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["status", &run, "--output", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &status["config"][0];
    let digest = slipway_package::digest::sha256_bytes(good.as_bytes());
    assert_eq!(f["sha256"], digest.as_str(), "{status:#}");
    assert_eq!(f["masked_sha256"], digest.as_str());
    assert_eq!(f["step"], "b/render-config");
    // And in the journal, as a step_progress event.
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["logs", &run, "--output", "json"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&o.stdout);
    assert!(
        logs.contains("config_rendered") && logs.contains(&digest),
        "{logs}"
    );

    // Release 2: `a` edits b's template after planning; b's render is refused at install.
    std::fs::write(&file, spec("1.0.1", true)).unwrap();
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(4), "rolled back: {out}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run2 = v["run"].as_str().unwrap().to_owned();
    let o = slipway()
        .env("SLIPWAY_STORE", &store)
        .args(["logs", &run2, "--output", "json"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&o.stdout);
    let template_now = std::fs::read(p.join("b.conf.j2")).unwrap();
    assert!(
        logs.contains("b/render-config")
            && logs.contains("changed since the plan was made")
            && logs.contains(&slipway_package::digest::sha256_bytes(&template_now))
            && logs.contains(&slipway_package::digest::sha256_bytes(TEMPLATE.as_bytes())),
        "the failure names the template and both digests: {logs}"
    );
    // b's install never ran, and its config is release 1's, untouched; no temporary or
    // half-written directory is left beside it.
    assert!(!logs.contains("\"b/install\""), "{logs}");
    assert_eq!(std::fs::read_to_string(dir.join("b.conf")).unwrap(), good);
    let mut names: Vec<String> = std::fs::read_dir(p.join(".slipway/config/staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b"], "only the live directory remains");
}
