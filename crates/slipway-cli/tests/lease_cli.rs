//! Environment leases with real `slipway deploy` processes: two concurrent deploys of two
//! releases to one environment (exactly one proceeds, the other exits 3 naming the
//! holder), and a SIGKILLed holder whose lease is reclaimed after expiry. Steps block on a
//! `go` file the test creates, so no timing is guessed; short leases come from
//! `SLIPWAY_LEASE_TTL`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn spec(dir: &Path, version: &str, block: bool) -> std::path::PathBuf {
    let step = if block {
        // Marks that the driver got past the lease, then holds until the test says go.
        format!("touch started-{version}; while [ ! -e go ]; do sleep 0.02; done")
    } else {
        format!("touch done-{version}")
    };
    let text = format!(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: {{ name: shop, version: {version}, type: patch }}\n\
         services:\n  api:\n    steps:\n      - {{ name: work, run: \"{step}\" }}\n\
         environments:\n  prod:\n    target: {{ exec: {{}} }}\n"
    );
    let p = dir.join(format!("shop-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn slipway(dir: &Path, ttl: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.current_dir(dir)
        .env_remove("SLIPWAY_STORE")
        .env_remove("SLIPWAY_OUTPUT")
        .env("SLIPWAY_LEASE_TTL", ttl)
        .env("NO_COLOR", "1");
    c
}

fn deploy(dir: &Path, file: &Path, ttl: &str, extra: &[&str]) -> Command {
    let mut c = slipway(dir, ttl);
    c.arg("deploy")
        .arg("-f")
        .arg(file)
        .args(["--env", "prod"])
        .args(extra);
    c
}

/// `c` in the background, killed and reaped when dropped (a failing test leaves no
/// `slipway` behind).
fn spawn(mut c: Command) -> slipway_testkit::Reaped {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into()
}

/// Poll `cond` every 20 ms for at most `limit`.
fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn leases(dir: &Path) -> Vec<serde_json::Value> {
    let o = slipway(dir, "1s")
        .args(["env", "leases", "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn two_concurrent_deploys_to_one_environment_exactly_one_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = spec(d, "1.0.0", true);
    let b = spec(d, "1.0.1", true);
    let mut ca = spawn(deploy(d, &a, "30s", &[]));
    let mut cb = spawn(deploy(d, &b, "30s", &[]));
    // One of them must be refused while the other holds the environment.
    let mut refused = None;
    until(Duration::from_secs(60), "one deploy to be refused", || {
        for (name, c) in [("1.0.0", &mut ca), ("1.0.1", &mut cb)] {
            if c.try_wait().unwrap().is_some() {
                refused = Some(name);
                return true;
            }
        }
        false
    });
    let refused = refused.unwrap();
    let winner = if refused == "1.0.0" { "1.0.1" } else { "1.0.0" };
    let (mut loser, mut proceeding) = if refused == "1.0.0" {
        (ca, cb)
    } else {
        (cb, ca)
    };
    let lo = loser.wait_with_output().unwrap();
    assert_eq!(lo.status.code(), Some(3), "{}", text(&lo));
    let msg = text(&lo);
    assert!(msg.contains("environment is leased by"), "{msg}");
    assert!(msg.contains(&format!("shop {winner}")), "{msg}");
    // A refused deploy leaves no run behind that could deploy later over the winner: it was
    // refused before creating one, or the one it created lost the lease and was aborted.
    let o = slipway(d, "30s")
        .args(["history", "--output", "json"])
        .output()
        .unwrap();
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        runs.iter()
            .filter(|r| r["version"] == refused)
            .all(|r| r["state"] == "aborted"),
        "{runs:?}"
    );
    // The winner really runs its step, and the store names it as the holder.
    until(Duration::from_secs(60), "the winner's step", || {
        d.join(format!("started-{winner}")).exists()
    });
    assert!(!d.join(format!("started-{refused}")).exists());
    let held = leases(d);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["release"], format!("shop {winner}"));
    assert_eq!(held[0]["live"], true);
    std::fs::write(d.join("go"), "").unwrap();
    assert!(proceeding.wait().unwrap().success());
    // A finished run gives the environment back; the refused release now proceeds.
    assert!(leases(d).is_empty());
    let loser_file = if refused == "1.0.0" { &a } else { &b };
    let o = deploy(d, loser_file, "30s", &[]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join(format!("started-{refused}")).exists());
}

#[test]
fn a_sigkilled_holders_lease_is_reclaimed_after_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = spec(d, "2.0.0", true);
    let b = spec(d, "2.0.1", false);
    let ttl = "3s";
    let mut holder = spawn(deploy(d, &a, ttl, &[]));
    until(Duration::from_secs(60), "the holder's step", || {
        d.join("started-2.0.0").exists()
    });
    holder.kill().unwrap(); // SIGKILL: no chance to give the lease back
    holder.wait().unwrap();
    let killed = Instant::now();
    // Let the orphaned step shell of the killed driver end; it holds no lease.
    std::fs::write(d.join("go"), "").unwrap();
    let held = leases(d);
    assert_eq!(
        held.len(),
        1,
        "the dead holder's lease stays until it expires"
    );
    assert_eq!(held[0]["release"], "shop 2.0.0");

    // Immediately after the kill the lease (renewed every 1s, 3s long) is still live:
    // refused, naming the dead holder. (On a machine so loaded that this deploy started
    // after expiry, it reclaims instead; either way the reclaim is checked below.)
    let first = deploy(d, &b, ttl, &[]).output().unwrap();
    let reclaimer = if first.status.code() == Some(3) {
        assert!(text(&first).contains("shop 2.0.0"), "{}", text(&first));
        assert!(!d.join("done-2.0.1").exists());
        // With --wait the next deploy polls until expiry, reclaims and proceeds.
        let o = deploy(d, &b, ttl, &["--wait"]).output().unwrap();
        assert!(
            killed.elapsed() >= Duration::from_secs(1),
            "reclaimed too early"
        );
        o
    } else {
        assert!(
            killed.elapsed() >= Duration::from_secs(1),
            "reclaimed too early"
        );
        first
    };
    assert!(reclaimer.status.success(), "{}", text(&reclaimer));
    assert!(d.join("done-2.0.1").exists());
    let out = text(&reclaimer);
    assert!(
        out.contains("reclaimed the expired lease on prod from"),
        "{out}"
    );
    assert!(leases(d).is_empty());
}
