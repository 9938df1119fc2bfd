//! `slipway demo` end to end: real processes, real proxies, real traffic, three runs.

use crate::slipway;

#[test]
fn demo_promotes_the_good_canary_rolls_back_the_bad_one_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let o = slipway()
        .args(["demo", "--output", "json", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(240))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["ok"], true);
    let states: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Succeeded", "Succeeded", "RolledBack"]);
    let reason = v["runs"][2]["reason"].as_str().unwrap();
    // The interval analysis or, when the bad canary's errors come close together first,
    // the proxy's per-response guard (slipway-proxy guard.rs) stops it.
    assert!(
        (reason.contains("error-rate") && reason.contains("above max"))
            || reason.contains("canary guard tripped"),
        "{reason}"
    );
    assert_eq!(v["audit"]["ok"], true);
    // The bad release's migration (V3) was applied, then undone by the rollback.
    let schema: Vec<i64> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["schema_version"].as_i64().unwrap())
        .collect();
    assert_eq!(schema, [1, 2, 2]);
    // The bad canary was stopped early: only a handful of its 500s reached users.
    let seen = v["traffic"]["api"]["canary_errors_seen_by_users"]
        .as_u64()
        .unwrap();
    assert!(seen < 100, "{seen} canary errors reached users");
    assert!(v["traffic"]["api"]["sent"].as_u64().unwrap() > 500);
    // Diagnostics of the rolled-back canary are kept.
    let diag = dir.path().join("diagnostics/api-2.5.0");
    assert!(
        diag.join("measurements.json").exists(),
        "{}",
        diag.display()
    );
    assert!(diag.join("rollout-events.jsonl").exists());
    // Nothing the demo started is left running.
    let states_left: Vec<_> = std::fs::read_dir(dir.path().join("instances"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(states_left.is_empty(), "instances left: {states_left:?}");
    // The journal tells the story: `slipway logs` over the demo's store shows the rollback.
    let store = format!("sqlite://{}", dir.path().join("slipway.db").display());
    let run = v["runs"][2]["run_id"].as_str().unwrap();
    let logs = slipway()
        .args(["logs", "--store", &store, run])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("rolling_back"), "{text}");
    assert!(text.contains("canary weight 0%"), "{text}");
}

/// `slipway demo --fleet` (issue 19 part 5) end to end: four sshd hosts behind a real
/// HAProxy, users sending requests through it all along, a good version rolled out after
/// a canary on the first host, a bad one rolled back by itself; afterwards every host
/// serves the good version at its own weight, and nothing the demo started runs on.
#[test]
fn demo_fleet_rolls_a_good_version_across_the_hosts_and_a_bad_one_back_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let o = slipway()
        .args(["demo", "--fleet", "--output", "json", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(240))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(
        v["skipped"], false,
        "sshd and haproxy are installed here (scripts/test.sh): {v:#}"
    );
    assert_eq!(v["ok"], true, "{v:#}");
    let states: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "succeeded", "rolled_back"]);
    let reason = v["runs"][2]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("error-rate"), "{v:#}");
    for h in v["hosts"].as_array().unwrap() {
        assert_eq!(h["version"], "2.0.0", "{v:#}");
        assert_eq!(
            h["weight"],
            v["weights_before"][h["host"].as_str().unwrap()]
        );
    }
    let by_version = &v["traffic"]["by_version"];
    assert!(
        by_version["1.0.0"].as_u64().unwrap_or(0) > 0
            && by_version["2.0.0"].as_u64().unwrap_or(0) > 0,
        "{v:#}"
    );
    // Every supervised instance on the hosts is gone once the demo ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 1..=4 {
        let instances = dir
            .path()
            .join(format!("lab/host{i}/state/services/web/instances"));
        for d in std::fs::read_dir(&instances).unwrap().flatten() {
            for f in ["supervisor", "child"] {
                let Some(pid) = std::fs::read_to_string(d.path().join(f))
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
                else {
                    continue;
                };
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "pid {pid} of {} still runs",
                        d.path().display()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
}

/// Without sshd or HAProxy (here: an empty PATH) the fleet demo says why and exits 0.
#[test]
fn demo_fleet_skips_saying_why_where_sshd_or_haproxy_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let o = slipway()
        .env("PATH", empty.path())
        .args(["demo", "--fleet", "--output", "json"])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["skipped"], true, "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("haproxy") && reason.contains("apt-get install"),
        "{reason}"
    );
    let o = slipway()
        .env("PATH", empty.path())
        .args(["demo", "--fleet"])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("skipping the fleet demo"),
        "{o:?}"
    );
}
