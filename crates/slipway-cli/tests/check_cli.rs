//! `slipway check` against real listeners, a closed port and real unix accounts.

use crate::slipway;

#[test]
fn check_reports_each_kind_with_verdicts_and_fails_on_any_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = listener.local_addr().unwrap().port();
    // A port that was free a moment ago and is now closed again: refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: x, version: 1.0.0, type: patch }}
services:
  api:
    steps: [ {{ name: i, run: \"true\" }} ]
    endpoints: [\"127.0.0.1:{{{{ vars.up }}}}\", \"127.0.0.1:{closed}\"]
    resources: {{ memory: 1Mi }}
    accounts: [ {{ unix: root }}, {{ unix: no-such-user-slipway }} ]
environments:
  s:
    target: {{ exec: {{}} }}
    vars: {{ up: {up} }}
    checks: [port]
checks:
  port: {{ phase: smoke, tcp: \"127.0.0.1:{{{{ vars.up }}}}\" }}
"
        ),
    )
    .unwrap();
    let o = slipway()
        .args(["check", "--env", "s", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "fail");
    let row = |check: &str, target_has: &str| -> String {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["check"].as_str().unwrap().starts_with(check)
                    && r["target"].as_str().unwrap().contains(target_has)
            })
            .unwrap_or_else(|| panic!("no {check} row for {target_has}: {v:#}"))["verdict"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(row("reach", &format!(":{up}")), "pass");
    assert_eq!(row("reach", &format!(":{closed}")), "fail");
    assert_eq!(row("capacity.memory", "api"), "pass");
    assert_eq!(row("accounts.unix", "root"), "pass");
    assert_eq!(row("accounts.unix", "no-such-user-slipway"), "fail");
    assert_eq!(row("smoke.port", &up.to_string()), "pass");

    // Only the passing kinds: exit 0.
    let o = slipway()
        .args(["check", "--env", "s", "--only", "smoke", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    drop(listener);
}
