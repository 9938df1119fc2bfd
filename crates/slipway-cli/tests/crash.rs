//! The crash test: a plan of 20 `exec` steps whose side effects append to counter files;
//! the real `slipway` binary is SIGKILLed at random points and resumed each time. Every
//! run must end Succeeded, every side effect must have happened exactly once, and
//! `audit verify` must pass. `SLIPWAY_CRASH_ITERATIONS` sets the number of kills
//! (default 200); `SLIPWAY_CRASH_SEED` fixes the random points (printed on failure).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 20;
const KILLS_PER_RUN: usize = 5;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough to spread kill points, reproducible from the seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn spec(dir: &Path) -> String {
    let mut s = String::from(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: crash, version: 1.0.0, type: patch }\nservices:\n",
    );
    // Three services in two waves; guards vary: none (completion marker), creates, unless.
    for (svc, deps, range) in [
        ("a", "[]", 0..8),
        ("b", "[]", 8..14),
        ("c", "[a, b]", 14..STEPS),
    ] {
        s.push_str(&format!("  {svc}:\n    depends_on: {deps}\n    steps:\n"));
        for i in range {
            let run = format!("echo x >> counts/{i}; sleep 0.0{}", i % 5);
            let guard = match i % 3 {
                0 => String::new(),
                1 => format!(", creates: done/{i}"),
                _ => format!(", unless: \"test -e done/{i}\""),
            };
            let mark = if i % 3 == 0 {
                String::new()
            } else {
                format!(" && touch done/{i}")
            };
            s.push_str(&format!(
                "      - {{ name: s{i}, run: \"{run}{mark}\"{guard} }}\n"
            ));
        }
    }
    s.push_str("environments:\n  dev:\n    target: { exec: { parallelism: 4 } }\n");
    std::fs::create_dir_all(dir.join("counts")).unwrap();
    std::fs::create_dir_all(dir.join("done")).unwrap();
    s
}

fn slipway(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.current_dir(dir)
        .env_remove("SLIPWAY_STORE")
        .env_remove("SLIPWAY_OUTPUT")
        .env("SLIPWAY_USER", "crash-tester")
        .env("NO_COLOR", "1");
    c
}

fn status(dir: &Path) -> Option<serde_json::Value> {
    let out = slipway(dir)
        .args(["status", "--output", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn sigkill_at_random_points_then_resume_runs_every_step_exactly_once() {
    let kills: usize = std::env::var("SLIPWAY_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("SLIPWAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    let mut rng = Rng(seed | 1);
    let mut killed_total = 0;
    let mut recovered = 0;
    let mut runs = 0;
    // New runs until enough kills landed (bounded, should kills keep missing).
    while killed_total < kills && runs < kills * 3 {
        let r = runs;
        runs += 1;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("release.yaml"), spec(dir)).unwrap();
        let ctx = format!("seed {seed}, run {r}");
        for k in 0..KILLS_PER_RUN * 2 {
            if killed_total >= kills {
                break;
            }
            // The first attempt deploys, later ones deploy the same plan again (which must
            // continue the interrupted run) or resume it by id.
            let mut cmd = slipway(dir);
            let st = status(dir);
            if st
                .as_ref()
                .is_some_and(|s| s["run"]["state"] == "succeeded")
            {
                // Finished before the kills ran out; a new deploy would be a new run.
                break;
            }
            let id = st.and_then(|s| s["run"]["id"].as_str().map(str::to_owned));
            match (&id, k % 2) {
                (Some(id), 1) => cmd.args(["resume", id]),
                _ => cmd.args(["deploy", "-f", "release.yaml", "--env", "dev"]),
            };
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Kill somewhere in the first ~160 ms (a run takes about that long): startup, store open, mid-wave, between.
            let delay = Duration::from_millis(rng.next() % 160);
            let start = Instant::now();
            let mut finished = false;
            while start.elapsed() < delay {
                if child.try_wait().unwrap().is_some() {
                    finished = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if !finished {
                child.kill().unwrap(); // SIGKILL
                killed_total += 1;
            }
            child.wait().unwrap();
        }
        // Finish: resume (or deploy) until the run ends; bounded by a deadline.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if status(dir).is_some_and(|s| s["run"]["state"] == "succeeded") {
                break;
            }
            let out = slipway(dir)
                .args([
                    "deploy",
                    "-f",
                    "release.yaml",
                    "--env",
                    "dev",
                    "--output",
                    "json",
                ])
                .output()
                .unwrap();
            let s = status(dir).unwrap_or_default();
            if s["run"]["state"] == "succeeded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ctx}: run did not finish: {s}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The orphaned shells of killed drivers may still be finishing: wait for the locks.
        for i in 0..STEPS {
            let text = std::fs::read_to_string(dir.join(format!("counts/{i}")))
                .unwrap_or_else(|_| panic!("{ctx}: step s{i} never ran"));
            assert_eq!(
                text.lines().count(),
                1,
                "{ctx}: step s{i} ran {} times",
                text.lines().count()
            );
        }
        let history = slipway(dir)
            .args(["history", "--output", "json"])
            .output()
            .unwrap();
        let runs_json: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
        assert_eq!(
            runs_json.as_array().unwrap().len(),
            1,
            "{ctx}: deploying again must continue the run, not start another"
        );
        let id = runs_json[0]["id"].as_str().unwrap().to_owned();
        let logs = slipway(dir)
            .args(["logs", &id, "--output", "json"])
            .output()
            .unwrap();
        let logs = String::from_utf8_lossy(&logs.stdout);
        recovered += logs.matches("\"step_observed\"").count();
        // Every step succeeded exactly once in the journal.
        assert_eq!(logs.matches("\"step_succeeded\"").count(), STEPS, "{ctx}");
        let v = slipway(dir).args(["audit", "verify"]).output().unwrap();
        assert!(
            v.status.success(),
            "{ctx}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
    eprintln!(
        "crash test: {runs} runs, {killed_total} SIGKILLs, {recovered} interrupted steps observed and recovered"
    );
    assert!(killed_total > 0);
}
