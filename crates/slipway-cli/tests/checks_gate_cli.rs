//! Declared checks gate `slipway deploy` through the real binary: a `pre` tcp check against
//! a closed port fails the deploy before any step runs; against a real listener the deploy
//! succeeds and `slipway logs` shows the check's verdict. The address comes from
//! `{{ vars.port }}`, so the runner's placeholder filling is exercised too.

use crate::slipway;

fn spec(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let d = dir.display();
    let p = dir.join("release.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: x, version: 1.0.0, type: patch }}
services:
  api:
    steps: [ {{ name: install, run: \"touch {d}/installed\" }} ]
checks:
  db-port: {{ phase: pre, tcp: \"127.0.0.1:{{{{ vars.port }}}}\", timeout: 2s }}
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ port: \"{port}\" }}
    checks: [db-port]
"
        ),
    )
    .unwrap();
    p
}

fn deploy(dir: &std::path::Path, f: &std::path::Path) -> (Option<i32>, serde_json::Value, String) {
    let o = slipway()
        .env("SLIPWAY_STORE", format!("sqlite://{}/s.db", dir.display()))
        .args(["deploy", "--env", "staging", "--output", "json", "-f"])
        .arg(f)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (
        o.status.code(),
        v,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn logs(dir: &std::path::Path, run: &str) -> String {
    let o = slipway()
        .env("SLIPWAY_STORE", format!("sqlite://{}/s.db", dir.display()))
        .args(["logs", run])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_failing_pre_check_stops_the_deploy_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: bound, then closed, so a connect is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = spec(dir.path(), port);
    let (code, v, stderr) = deploy(dir.path(), &f);
    assert!(matches!(code, Some(c) if c != 0), "{code:?} {v} {stderr}");
    assert_eq!(v["state"], "failed", "{v} {stderr}");
    assert!(
        !dir.path().join("installed").exists(),
        "no step may run after a failed pre check"
    );
    let text = logs(dir.path(), v["run"].as_str().unwrap());
    assert!(
        text.contains("check FAILED db-port (pre)"),
        "logs must show the failed check: {text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("api/install"), "{text}");
}

#[test]
fn a_passing_pre_check_lets_the_deploy_run_and_is_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    // Kept open for the whole deploy: the kernel completes the handshake from the backlog.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = spec(dir.path(), port);
    let (code, v, stderr) = deploy(dir.path(), &f);
    assert_eq!(code, Some(0), "{v} {stderr}");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(dir.path().join("installed").exists());
    let text = logs(dir.path(), v["run"].as_str().unwrap());
    assert!(text.contains("check ok db-port (pre)"), "{text}");
    assert!(text.contains("gate checks passed"), "{text}");
    drop(listener);
}
