//! Facts from history, through the real binary: `slipway diff` compares what runs in two
//! environments — versions, artifact and rendered-config digests from each one's newest
//! succeeded run (a rolled-back run changes nothing) — besides the spec's shape, against
//! the spec's parity standard, and `--fail-on-drift` fails only on what the standard does
//! not allow; the spec's `deployed:` is an explicitly labelled override for systems
//! Slipway does not deploy; `plan` says where the running versions came from.

use std::path::Path;

use crate::slipway;

/// The release at `version` (artifact bytes `build`), with `allow` as its parity standard
/// and `deployed` under prod.
fn spec(dir: &Path, version: &str, build: &str, allow: &str, deployed: &str) -> String {
    std::fs::write(dir.join("api.bin"), build).unwrap();
    std::fs::write(dir.join("api.conf.j2"), "port = {{ vars.port }}\n").unwrap();
    let sha = slipway_package::digest::sha256_bytes(build.as_bytes());
    let p = dir.join("release.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    artifact: {{ path: api.bin, sha256: \"{sha}\" }}
    config: [ {{ template: api.conf.j2, dest: api.conf }} ]
    steps: [ {{ name: install, run: \"test ! -e fail-next\", undo: \"true\" }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ port: 8081 }}
  prod:
    target: {{ exec: {{}} }}
    vars: {{ port: 80 }}
{deployed}parity: {{ allow: [{allow}] }}
"
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn diff_compares_what_runs_from_history_against_the_parity_standard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = format!("sqlite://{}/state/s.db", d.display());
    let run = |args: &[&str]| {
        let o = slipway()
            .env("SLIPWAY_STORE", &store)
            .args(args)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        (
            o.status.code(),
            v,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let s = spec(d, "1.0.0", "build 1", "config", "");
    for env in ["staging", "prod"] {
        let (code, v, err) = run(&["deploy", "--env", env, "--output", "json", "-f", &s]);
        assert_eq!(code, Some(0), "{v:#}\n{err}");
    }
    let diff = |s: &str| {
        run(&[
            "diff",
            "-f",
            s,
            "--env",
            "staging",
            "--env",
            "prod",
            "--fail-on-drift",
            "--output",
            "json",
        ])
    };
    let kinds = |v: &serde_json::Value| -> Vec<(String, String, bool)> {
        v["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_owned(),
                    d["item"].as_str().unwrap().to_owned(),
                    d["allowed_by"].is_string(),
                )
            })
            .collect()
    };

    // Only the rendered config differs (the port), and the standard allows it.
    let (code, v, err) = diff(&s);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert_eq!(
        kinds(&v),
        vec![("config".into(), "api/api.conf".into(), true)],
        "{v:#}"
    );
    assert_eq!(v["in_parity"], true);

    // 1.1.0 rolls back in staging: what runs there is still 1.0.0, no version drift.
    let s = spec(d, "1.1.0", "build 2", "config", "");
    std::fs::write(d.join("fail-next"), "").unwrap();
    let (code, v, err) = run(&["deploy", "--env", "staging", "--output", "json", "-f", &s]);
    assert_eq!(code, Some(4), "{v:#}\n{err}");
    let (code, v, _) = diff(&s);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(!kinds(&v).iter().any(|(k, ..)| k == "version"), "{v:#}");

    // 1.1.0 succeeds in staging: version and artifact drift, not allowed: exit 1.
    std::fs::remove_file(d.join("fail-next")).unwrap();
    let (code, v, err) = run(&["deploy", "--env", "staging", "--output", "json", "-f", &s]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let staged = v["run"].as_str().unwrap().to_owned();
    let (code, v, _) = diff(&s);
    assert_eq!(code, Some(1), "{v:#}");
    let version = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "version")
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone();
    assert_eq!(version["left"], format!("1.1.0 (run {staged})"));
    assert_eq!(version["source"], "history");
    assert!(
        kinds(&v).contains(&("artifact".into(), "api".into(), false)),
        "{v:#}"
    );
    assert_eq!(v["in_parity"], false);

    // A standard that allows a release in flight: exit 0, every row says what allows it.
    let s = spec(
        d,
        "1.1.0",
        "build 2",
        "config, version, \"artifact:api\"",
        "",
    );
    let (code, v, _) = diff(&s);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(kinds(&v).iter().all(|(.., allowed)| *allowed), "{v:#}");

    // `deployed:` is for systems Slipway does not deploy: labelled as declared; an entry
    // for a service it deployed is ignored, with a warning in the plan.
    let s = spec(
        d,
        "1.1.0",
        "build 2",
        "config, version, \"artifact:api\"",
        "    deployed: { postgres: 14.2.0, api: 0.9.0 }\n",
    );
    let (_, v, _) = diff(&s);
    let pg = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["item"] == "postgres")
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone();
    assert_eq!(pg["right"], "14.2.0 (declared)", "{pg}");
    assert_eq!(pg["source"], "history/declared", "{pg}");
    let (_, plan, _) = run(&["plan", "--env", "prod", "--output", "json", "-f", &s]);
    let finding = |code: &str| {
        plan["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("no {code}: {plan:#}"))["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(finding("deployed-from-history").contains("api 1.0.0"));
    assert!(
        finding("deployed-override-ignored").contains("says 0.9.0, but Slipway deployed api 1.0.0")
    );
    assert!(finding("deployed-declared").contains("postgres 14.2.0"));
}
