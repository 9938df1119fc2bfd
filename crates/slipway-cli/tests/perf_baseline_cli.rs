//! Pre/post performance baseline through the real binary on the exec target. A real
//! demo-app (the hidden `slipway demo-app`) runs as "the current version"; the deploy's
//! step restarts it as the new version, with or without added latency. The perf check
//! measures the running version before the first wave (kept as
//! `runs/<run>/perf-baseline.json`) and the new one after the last: a same-speed release
//! passes verification, a 150 ms slower one fails it, so the run rolls back (its undo
//! restarts the fast version) with both distributions in the journal, in `status` and in
//! `slipway check --only perf --run RUN`.

use std::path::Path;

use crate::slipway;

/// The script that (re)starts the service: stops the instance in `app.pid` (waiting until
/// it is gone or a zombie), starts `slipway demo-app` detached on the fixed port with the
/// given latency, and waits (bounded) for its `listening on` line.
fn write_restart(dir: &Path, port: u16) {
    let bin = assert_cmd::cargo::cargo_bin("slipway");
    let d = dir.display();
    std::fs::write(
        dir.join("restart.sh"),
        format!(
            r#"set -e
if [ -f {d}/app.pid ]; then
  old=$(cat {d}/app.pid)
  kill "$old" 2>/dev/null || true
  n=0
  while [ -e /proc/$old ] && ! grep -q '^State:.*Z' /proc/$old/status 2>/dev/null; do
    n=$((n+1)); [ $n -lt 400 ] || exit 1; sleep 0.05
  done
fi
rm -f {d}/app.log
# Detached, no inherited descriptors (the step's lock, its output pipes).
setsid '{bin}' demo-app --port {port} --threads 1 --latency "$1" >{d}/app.log 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
echo $! > {d}/app.pid
n=0
until grep -q listening {d}/app.log 2>/dev/null; do
  n=$((n+1)); [ $n -lt 400 ] || exit 1; sleep 0.05
done
"#,
            bin = bin.display()
        ),
    )
    .unwrap();
}

fn spec(dir: &Path, version: &str, latency: &str, port: u16) -> std::path::PathBuf {
    let d = dir.display();
    let p = dir.join(format!("release-{version}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: api, version: {version}, type: patch }}
services:
  api:
    steps:
      - {{ name: restart, run: \"sh {d}/restart.sh {latency}\", undo: \"sh {d}/restart.sh 0\" }}
checks:
  latency:
    perf:
      url: \"http://127.0.0.1:{{{{ vars.port }}}}\"
      paths: [\"/\"]
      rate: 40
      workers: 8
      duration: 2s
      tolerance: 50
      slack_ms: 60
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ port: \"{port}\" }}
    checks: [latency]
"
        ),
    )
    .unwrap();
    p
}

/// Stops the service on drop, pass or fail.
struct Service<'a>(&'a Path);

impl Drop for Service<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("app.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn store(dir: &Path) -> String {
    format!("sqlite://{}/s.db", dir.display())
}

fn run_json(dir: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let o = slipway()
        .env("SLIPWAY_STORE", store(dir))
        .args(args)
        .args(["--output", "json"])
        .timeout(std::time::Duration::from_secs(180))
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (
        o.status.code(),
        v,
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn logs(dir: &Path, run: &str) -> String {
    let o = slipway()
        .env("SLIPWAY_STORE", store(dir))
        .args(["logs", run])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn file_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn a_slower_new_version_fails_verification_against_the_kept_baseline_and_a_same_speed_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    write_restart(d, port);
    let _service = Service(d);
    // The current version: fast.
    let started = std::process::Command::new("sh")
        .arg(d.join("restart.sh"))
        .arg("0")
        .status()
        .unwrap();
    assert!(started.success());

    // The plan names the perf check at both ends of the deploy.
    let same = spec(d, "2.0.0", "0", port);
    let o = slipway()
        .args(["plan", "--env", "staging", "-f"])
        .arg(&same)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("pre checks: latency (perf baseline of running version)"),
        "{text}"
    );
    assert!(
        text.contains("post checks: latency (perf verify vs pre-deploy baseline)"),
        "{text}"
    );

    // Same speed: baseline kept, verification passes.
    let (code, v, all) = run_json(
        d,
        &["deploy", "--env", "staging", "-f", same.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(v["state"], "succeeded", "{all}");
    let run1 = v["run"].as_str().unwrap().to_owned();
    let run_dir = d.join("runs").join(&run1);
    let base = file_json(&run_dir.join("perf-baseline.json"));
    assert!(
        base["latency"]["latencies_ms"].as_array().unwrap().len() >= 40,
        "{base}"
    );
    assert_eq!(
        base["latency"]["setup"]["addr"],
        format!("127.0.0.1:{port}")
    );
    let verify = file_json(&run_dir.join("perf-verify.json"));
    assert_eq!(verify["latency"]["verdict"], "pass", "{verify:#}");
    let text = logs(d, &run1);
    assert!(
        text.contains("check ok latency (pre): measured baseline"),
        "{text}"
    );
    assert!(
        text.contains("check ok latency (post): measured after"),
        "{text}"
    );
    assert!(text.contains("perf-baseline.json"), "{text}");

    // `slipway check --only perf` measures the running version on its own.
    let (code, c, all) = run_json(
        d,
        &[
            "check",
            "--env",
            "staging",
            "--only",
            "perf",
            "-f",
            same.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(c["checks"][0]["check"], "perf.latency", "{c:#}");
    assert!(
        c["perf"]["latency"]["measured"]["ok"].as_u64().unwrap() >= 40,
        "{c:#}"
    );

    // 150 ms slower (beyond 50 % + 60 ms of slack): verification fails, the run rolls back.
    let slow = spec(d, "3.0.0", "150ms", port);
    let (code, v, all) = run_json(
        d,
        &["deploy", "--env", "staging", "-f", slow.to_str().unwrap()],
    );
    assert_eq!(code, Some(4), "exit 4 = rolled back: {all}");
    assert_eq!(v["state"], "rolled_back", "{all}");
    let run2 = v["run"].as_str().unwrap().to_owned();
    let verify = file_json(&d.join("runs").join(&run2).join("perf-verify.json"));
    let l = &verify["latency"];
    assert_eq!(l["verdict"], "fail", "{l:#}");
    assert!(l["candidate"]["p50"].as_f64().unwrap() >= 150.0, "{l:#}");
    assert!(l["baseline"]["p50"].as_f64().unwrap() < 150.0, "{l:#}");
    let text = logs(d, &run2);
    assert!(text.contains("check FAILED latency (post)"), "{text}");
    assert!(text.contains("perf regression of `latency`"), "{text}");
    assert!(text.contains("perf.p50 fail"), "{text}");
    // Both distributions in the journal line.
    assert!(
        text.contains("after ") && text.contains("| before "),
        "{text}"
    );
    assert!(
        text.contains("undone api/restart") || text.contains("undone"),
        "{text}"
    );

    // status shows the baseline and the failed verification side by side.
    let (code, st, all) = run_json(d, &["status", &run2]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(st["perf"]["latency"]["verdict"], "fail", "{st:#}");
    assert!(st["perf"]["latency"]["candidate"]["p95"].as_f64().unwrap() >= 150.0);
    assert!(st["perf"]["latency"]["baseline"]["p95"].as_f64().unwrap() < 150.0);
    let o = slipway()
        .env("SLIPWAY_STORE", store(d))
        .args(["status", &run2])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("perf latency baseline"), "{text}");
    assert!(
        text.contains("perf latency after deploy") && text.contains("-> fail"),
        "{text}"
    );

    // The rollback's undo restarted the fast version: judged now against run 2's
    // baseline, `slipway check --only perf --run` passes and shows both sides.
    let (code, c, all) = run_json(
        d,
        &[
            "check",
            "--env",
            "staging",
            "--only",
            "perf",
            "--run",
            &run2,
            "-f",
            slow.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(c["verdict"], "pass", "{c:#}");
    assert!(c["perf"]["latency"]["baseline"]["ok"].as_u64().unwrap() >= 40);
    assert!(c["perf"]["latency"]["candidate"]["ok"].as_u64().unwrap() >= 40);
    // A run that kept no baseline is named, not silently passed.
    let (code, c, all) = run_json(
        d,
        &[
            "check",
            "--env",
            "staging",
            "--only",
            "perf",
            "--run",
            "no-such-run",
            "-f",
            slow.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(c["verdict"], "fail", "{c:#}");
}
