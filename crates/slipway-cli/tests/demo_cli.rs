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
