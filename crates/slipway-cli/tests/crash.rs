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

// ---------------------------------------------------------------------------------------
// Exactly once, for undo too (issue 13): every step's side effect and every undo's is
// counted by the command itself (a line appended to `counts/<n>.apply` / `.undo`), so a
// double apply or a double undo is measured, never inferred from the journal.

/// What a crash round is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Steps that print a lot after their effect; the run succeeds.
    Print,
    /// Steps with undos (printing after their effect too); the last step fails, so the run
    /// rolls back: kills land in applies and in undos.
    Undo,
    /// A slow step still running when a sibling of its wave fails; the run rolls back.
    Sibling,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Print, Scenario::Undo, Scenario::Sibling];

    /// The state every round of it must end in.
    fn expected(self) -> &'static str {
        match self {
            Scenario::Print => "succeeded",
            Scenario::Undo | Scenario::Sibling => "rolled_back",
        }
    }

    /// Counted steps (the failing step of a rollback scenario is not counted: it changes
    /// nothing).
    fn counted(self) -> usize {
        match self {
            Scenario::Print => 8,
            Scenario::Undo => 8,
            Scenario::Sibling => 4,
        }
    }

    fn spec(self, dir: &Path) -> String {
        std::fs::create_dir_all(dir.join("counts")).unwrap();
        std::fs::create_dir_all(dir.join("done")).unwrap();
        let head = "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: crash, version: 1.0.0, type: patch }\nservices:\n";
        // `seq` writes about 110 KB after the effect: far more than a pipe holds, so a
        // step writing into a pipe nobody reads any more is killed by SIGPIPE.
        let print = "seq 1 20000";
        let step = |i: usize, undo: bool| {
            let run = format!("echo x >> counts/{i}.apply; sleep 0.0{}; {print}", i % 4);
            let undo = if undo {
                format!(
                    ", undo: \"echo x >> counts/{i}.undo; sleep 0.0{}; {print}\"",
                    i % 3
                )
            } else {
                String::new()
            };
            // Guards vary as in the first crash test: none, creates, unless.
            let (mark, guard) = match i % 3 {
                0 => (String::new(), String::new()),
                1 => (
                    format!(" && touch done/{i}"),
                    format!(", creates: done/{i}"),
                ),
                _ => (
                    format!(" && touch done/{i}"),
                    format!(", unless: \"test -e done/{i}\""),
                ),
            };
            format!("      - {{ name: s{i}, run: \"{run}{mark}\"{guard}{undo} }}\n")
        };
        let mut s = String::from(head);
        match self {
            Scenario::Print | Scenario::Undo => {
                let undo = self == Scenario::Undo;
                for (svc, deps, range) in
                    [("a", "[]", 0..3), ("b", "[]", 3..6), ("c", "[a, b]", 6..8)]
                {
                    s.push_str(&format!("  {svc}:\n    depends_on: {deps}\n    steps:\n"));
                    for i in range {
                        s.push_str(&step(i, undo));
                    }
                }
                if undo {
                    s.push_str("  z:\n    depends_on: [c]\n    steps:\n      - { name: boom, run: \"sleep 0.05; exit 3\" }\n");
                }
            }
            Scenario::Sibling => {
                s.push_str("  a:\n    steps:\n");
                s.push_str(&step(0, true));
                s.push_str(&step(1, true));
                // In the second wave: `slow` is still running when `boom` fails.
                s.push_str("  slow:\n    depends_on: [a]\n    steps:\n");
                s.push_str(&format!(
                    "      - {{ name: s2, run: \"sleep 0.4; echo x >> counts/2.apply; {print}\", undo: \"echo x >> counts/2.undo; {print}\" }}\n"
                ));
                s.push_str(
                    "      - { name: s3, run: \"echo x >> counts/3.apply\", undo: \"echo x >> counts/3.undo\" }\n",
                );
                s.push_str("  boom:\n    depends_on: [a]\n    steps:\n      - { name: boom, run: \"sleep 0.1; exit 3\" }\n");
            }
        }
        s.push_str("environments:\n  dev:\n    target: { exec: { parallelism: 4 } }\n");
        s
    }
}

/// What one round measured.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    double_applies: usize,
    double_undos: usize,
    /// Steps applied and not undone in a rolled-back run.
    left_applied: usize,
    /// Steps found `started` once the run ended.
    stuck: usize,
    /// Steps observed after a restart (journal `step_observed`).
    observed: usize,
    /// Of those, interrupted undos observed (`undo_complete` or `undo_again`).
    undos_observed: usize,
    /// Kills per scenario (print, undo, sibling).
    kills_by: [usize; 3],
    /// Runs of the tier.
    rounds: usize,
    /// What went wrong, per round (printed by the test).
    problems: Vec<String>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.kills += o.kills;
        self.double_applies += o.double_applies;
        self.double_undos += o.double_undos;
        self.left_applied += o.left_applied;
        self.stuck += o.stuck;
        self.observed += o.observed;
        self.undos_observed += o.undos_observed;
        for (a, b) in self.kills_by.iter_mut().zip(o.kills_by) {
            *a += b;
        }
        self.rounds += 1;
        self.problems.extend(o.problems.iter().cloned());
    }

    fn summary(&self) -> String {
        format!(
            "crash tier: {} runs, {} SIGKILLs (printing steps {}, undos {}, sibling in flight {}), {} double applies, {} double undos, {} steps left applied in rolled-back runs, {} steps left started, {} interrupted steps or undos observed ({} undos)",
            self.rounds,
            self.kills,
            self.kills_by[0],
            self.kills_by[1],
            self.kills_by[2],
            self.double_applies,
            self.double_undos,
            self.left_applied,
            self.stuck,
            self.observed,
            self.undos_observed
        )
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn run_state(dir: &Path) -> Option<(String, String)> {
    let s = status(dir)?;
    Some((
        s["run"]["id"].as_str()?.to_owned(),
        s["run"]["state"].as_str()?.to_owned(),
    ))
}

fn terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "rolled_back" | "aborted")
}

/// Drive the run of `dir` to its end: `deploy` until a run exists, `resume` after.
fn finish(dir: &Path, ctx: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = slipway(dir);
        match run_state(dir) {
            Some((_, state)) if terminal(&state) => return state,
            Some((id, _)) => c.args(["resume", &id]),
            None => c.args(["deploy", "-f", "release.yaml", "--env", "dev"]),
        };
        let out = c.output().unwrap();
        if let Some((_, state)) = run_state(dir)
            && terminal(&state)
        {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "{ctx}: the run did not end: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Count what the steps themselves recorded, and check the run as the journal has it.
fn settle(dir: &Path, scenario: Scenario, ctx: &str) -> Tally {
    let state = finish(dir, ctx);
    let mut t = Tally::default();
    if state != scenario.expected() {
        t.problems.push(format!(
            "{ctx}: the run ended {state}, not {}",
            scenario.expected()
        ));
    }
    for i in 0..scenario.counted() {
        let applied = lines(&dir.join(format!("counts/{i}.apply")));
        let undone = lines(&dir.join(format!("counts/{i}.undo")));
        if applied > 1 {
            t.problems
                .push(format!("{ctx}: step s{i} applied {applied} times"));
            t.double_applies += 1;
        }
        if undone > 1 {
            t.problems
                .push(format!("{ctx}: step s{i} undone {undone} times"));
            t.double_undos += 1;
        }
        if state == "rolled_back" && applied > undone {
            t.problems.push(format!(
                "{ctx}: step s{i} left applied by a rolled-back run"
            ));
            t.left_applied += 1;
        }
        if state == "succeeded" && applied == 0 {
            t.problems
                .push(format!("{ctx}: step s{i} never ran in a succeeded run"));
        }
    }
    let s = status(dir).unwrap();
    for st in s["steps"].as_array().unwrap() {
        if st["status"] == "started" {
            t.stuck += 1;
            t.problems
                .push(format!("{ctx}: step {} left started", st["step_id"]));
        }
    }
    let history = slipway(dir)
        .args(["history", "--output", "json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let n = runs.as_array().unwrap().len();
    if n != 1 {
        t.problems.push(format!("{ctx}: {n} runs, one expected"));
    }
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    let logs = slipway(dir)
        .args(["logs", &id, "--output", "json"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    t.observed = logs.matches("\"step_observed\"").count();
    t.undos_observed = logs.matches("\"decision\":\"undo_complete\"").count()
        + logs.matches("\"decision\":\"undo_again\"").count();
    let v = slipway(dir).args(["audit", "verify"]).output().unwrap();
    assert!(
        v.status.success(),
        "{ctx}: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    t
}

/// How long an uninterrupted run of the scenario takes here (debug or release, loaded
/// machine or not), so kill points spread over the whole of it.
fn calibrate(scenario: Scenario) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("release.yaml"), scenario.spec(dir)).unwrap();
    let start = Instant::now();
    let out = slipway(dir)
        .args(["deploy", "-f", "release.yaml", "--env", "dev"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let t = settle(dir, scenario, &format!("calibrating {scenario:?}"));
    assert_eq!(
        (t.double_applies, t.double_undos, t.left_applied, t.stuck),
        (0, 0, 0, 0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// One run of `scenario` killed (SIGKILL) at up to `kills` random points, alternately
/// deployed again and resumed by id, then driven to its end and counted.
fn crash_round(
    scenario: Scenario,
    rng: &mut Rng,
    kills: usize,
    span: Duration,
    ctx: &str,
) -> Tally {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("release.yaml"), scenario.spec(dir)).unwrap();
    let mut killed = 0;
    for k in 0..kills * 2 {
        if killed >= kills {
            break;
        }
        let mut cmd = slipway(dir);
        match run_state(dir) {
            Some((_, state)) if terminal(&state) => break,
            Some((id, _)) if k % 2 == 1 => cmd.args(["resume", &id]),
            _ => cmd.args(["deploy", "-f", "release.yaml", "--env", "dev"]),
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.next() % (span.as_millis() as u64).max(1));
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
            killed += 1;
        }
        child.wait().unwrap();
    }
    let mut t = settle(dir, scenario, ctx);
    t.kills = killed;
    t.kills_by[Scenario::ALL
        .iter()
        .position(|s| *s == scenario)
        .unwrap_or(0)] = killed;
    t
}

/// Random kill points over every scenario until `kills` kills landed; the tally of all.
fn crash_tier(kills: usize, seed: u64) -> Tally {
    let mut rng = Rng(seed | 1);
    let spans: Vec<(Scenario, Duration)> = Scenario::ALL
        .iter()
        .map(|s| (*s, calibrate(*s).mul_f64(1.2)))
        .collect();
    let mut total = Tally::default();
    let mut rounds = 0;
    while total.kills < kills && rounds < kills * 3 {
        let (scenario, span) = spans[rounds % spans.len()];
        let ctx = format!("seed {seed}, round {rounds} ({scenario:?})");
        rounds += 1;
        let per_round = (kills - total.kills).min(4);
        let t = crash_round(scenario, &mut rng, per_round, span, &ctx);
        total.add(&t);
    }
    total
}

fn assert_clean(t: &Tally) {
    assert!(t.kills > 0);
    assert!(
        t.problems.is_empty(),
        "{}:\n{}",
        t.summary(),
        t.problems.join("\n")
    );
    assert_eq!(
        (t.double_applies, t.double_undos, t.left_applied, t.stuck),
        (0, 0, 0, 0),
        "double applies, double undos, steps left applied in rolled-back runs, steps left started"
    );
}

/// The short tier, in CI: a few dozen kills over printing steps, undos and a sibling in
/// flight (about half a minute in a debug build).
#[test]
fn crash_short_tier_printing_steps_undos_and_siblings_in_flight() {
    let kills: usize = std::env::var("SLIPWAY_CRASH_SHORT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("SLIPWAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0bad_5eed_0013);
    let t = crash_tier(kills, seed);
    eprintln!("{}", t.summary());
    assert_clean(&t);
}

/// The long tier (not in CI): `SLIPWAY_CRASH_ROUNDS` (default 500) random kill points.
/// `SLIPWAY_CRASH_ROUNDS=500 cargo test --release -p slipway-cli crash_long -- --ignored --nocapture`
#[test]
#[ignore = "long tier: minutes; run by hand (README, BENCHMARKS.md)"]
fn crash_long_tier() {
    let kills: usize = std::env::var("SLIPWAY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed: u64 = std::env::var("SLIPWAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1017_5eed_0013);
    let t = crash_tier(kills, seed);
    eprintln!("{}", t.summary());
    assert_clean(&t);
}

/// Poll `what` until it holds; the deadline only bounds a broken run.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The journal of the run of `dir`, as `logs --output json` prints it.
fn journal(dir: &Path) -> String {
    let (id, _) = run_state(dir).unwrap();
    let logs = slipway(dir)
        .args(["logs", &id, "--output", "json"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&logs.stdout).into_owned()
}

fn step_status(dir: &Path, step: &str) -> Option<String> {
    let s = status(dir)?;
    s["steps"]
        .as_array()?
        .iter()
        .find(|st| st["step_id"] == step)
        .and_then(|st| st["status"].as_str().map(str::to_owned))
}

/// A step that writes a lot after its effect, with `slipway` SIGKILLed in between: the
/// step is not killed by its own output (it goes to a file, not to a pipe of the dead
/// process), finishes, and is observed done by the resume instead of applied again.
#[test]
fn a_step_printing_after_its_effect_survives_slipway_dying() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("counts")).unwrap();
    std::fs::write(
        dir.join("release.yaml"),
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: p, version: 1.0.0, type: patch }\n\
         services:\n  a:\n    steps:\n      - { name: s, run: \"echo x >> counts/a; sleep 0.3; seq 1 100000 && echo x >> counts/end\" }\n\
         environments:\n  dev:\n    target: { exec: {} }\n",
    )
    .unwrap();
    let mut child = slipway(dir)
        .args(["deploy", "-f", "release.yaml", "--env", "dev"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the step's effect", || dir.join("counts/a").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    let state = finish(dir, "print");
    assert_eq!(state, "succeeded");
    assert_eq!(lines(&dir.join("counts/a")), 1, "the step ran again");
    // It ran to its end although nobody read its output any more.
    assert_eq!(lines(&dir.join("counts/end")), 1);
    assert!(
        journal(dir).contains("\"decision\":\"complete\""),
        "the resume observed the step done"
    );
}

/// `kill -9` of `slipway` while an undo runs, then a resume at once: the undo still
/// running is waited for and found complete, never run a second time (neither beside
/// the first one nor after it).
#[test]
fn kill_9_while_an_undo_runs_then_resume_undoes_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("counts")).unwrap();
    std::fs::write(
        dir.join("release.yaml"),
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: u, version: 1.0.0, type: patch }\n\
         services:\n  a:\n    steps:\n      - { name: s, run: \"echo x >> counts/apply\", undo: \"echo x >> counts/undo-start; sleep 0.5; echo x >> counts/undo; seq 1 100000\" }\n\
         \x20 b:\n    depends_on: [a]\n    steps:\n      - { name: boom, run: \"exit 3\" }\n\
         environments:\n  dev:\n    target: { exec: {} }\n",
    )
    .unwrap();
    let mut child = slipway(dir)
        .args(["deploy", "-f", "release.yaml", "--env", "dev"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the undo to start", || {
        dir.join("counts/undo-start").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Resumed while the first undo still sleeps.
    assert_eq!(lines(&dir.join("counts/undo")), 0);
    let state = finish(dir, "undo");
    assert_eq!(state, "rolled_back");
    assert_eq!(lines(&dir.join("counts/apply")), 1);
    assert_eq!(
        lines(&dir.join("counts/undo-start")),
        1,
        "the undo started twice"
    );
    assert_eq!(lines(&dir.join("counts/undo")), 1, "the undo ran twice");
    assert!(journal(dir).contains("\"decision\":\"undo_complete\""));
}

/// A step still running when a sibling of its wave fails: without a crash the wave waits
/// for it and the rollback undoes it; with `slipway` SIGKILLed right after the failure
/// was journaled, the resumed rollback observes it (waiting for it to finish) and undoes
/// it. Either way the run ends rolled back with no step left `started`.
#[test]
fn a_sibling_in_flight_when_another_step_fails_is_undone_before_the_run_is_rolled_back() {
    for kill in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("counts")).unwrap();
        std::fs::write(
            dir.join("release.yaml"),
            "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: s, version: 1.0.0, type: patch }\n\
             services:\n  slow:\n    steps:\n      - { name: s, run: \"sleep 1; echo x >> counts/apply; seq 1 50000\", undo: \"echo x >> counts/undo\" }\n\
             \x20 boom:\n    steps:\n      - { name: boom, run: \"exit 3\" }\n\
             environments:\n  dev:\n    target: { exec: {} }\n",
        )
        .unwrap();
        let mut child = slipway(dir)
            .args(["deploy", "-f", "release.yaml", "--env", "dev"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if kill {
            wait_for("boom's failure in the journal", || {
                step_status(dir, "boom/boom").as_deref() == Some("failed")
            });
            assert_eq!(step_status(dir, "slow/s").as_deref(), Some("started"));
            child.kill().unwrap();
        }
        child.wait().unwrap();
        let state = finish(dir, "sibling");
        assert_eq!(state, "rolled_back", "kill: {kill}");
        assert_eq!(lines(&dir.join("counts/apply")), 1, "kill: {kill}");
        assert_eq!(lines(&dir.join("counts/undo")), 1, "kill: {kill}");
        assert_eq!(step_status(dir, "slow/s").as_deref(), Some("undone"));
    }
}

/// Two `slipway deploy` of one plan started at the same moment make one run: the store
/// refuses the second live run of a digest, so the loser continues the winner's run (and
/// finds it driven, or finished) and leaves nothing behind. Every step runs once. (The
/// run lasts longer than starting a `slipway` takes, so the two overlap: a deploy after
/// the run finished is a new run by design.)
#[test]
fn two_deploys_of_one_plan_started_together_make_one_run() {
    for round in 0..6 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("counts")).unwrap();
        std::fs::write(
            dir.join("release.yaml"),
            "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: t, version: 1.0.0, type: patch }\n\
             services:\n  a:\n    steps:\n      - { name: one, run: \"echo x >> counts/one; sleep 0.5\" }\n      - { name: two, run: \"echo x >> counts/two\" }\n\
             environments:\n  dev:\n    target: { exec: {} }\n",
        )
        .unwrap();
        let spawn = || {
            slipway(dir)
                .args([
                    "deploy",
                    "-f",
                    "release.yaml",
                    "--env",
                    "dev",
                    "--output",
                    "json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let codes = (a.status.code(), b.status.code());
        // One drove it (0); the other drove it too after it finished (0), or found it
        // driven (3, naming the run).
        for o in [&a, &b] {
            assert!(
                matches!(o.status.code(), Some(0 | 3)),
                "round {round}: {codes:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let history = slipway(dir)
            .args(["history", "--output", "json"])
            .output()
            .unwrap();
        let runs: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
        assert_eq!(
            runs.as_array().unwrap().len(),
            1,
            "round {round}: two runs of one plan: {runs}"
        );
        let state = finish(dir, "two deploys");
        assert_eq!(state, "succeeded");
        assert_eq!(lines(&dir.join("counts/one")), 1);
        assert_eq!(lines(&dir.join("counts/two")), 1);
    }
}

/// A tmpfs mounted for a test, unmounted (lazily, so a busy one goes too) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it (it needs root, as scripts/test.sh runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The store refuses writes (its file system is full) after a step's effect: `slipway`
/// stops with the store's error before the step's success is journaled, while a sibling
/// still runs and prints. Once there is room again, the resume observes both (the
/// completion marker, waiting for the sibling) instead of applying them again.
#[test]
fn a_store_that_refuses_writes_after_a_step_succeeded_is_observed_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("counts")).unwrap();
    // The store's file system is small and gets filled; the exec target's markers and
    // output files live on another one with room (`.slipway/exec`), as they would on a
    // store elsewhere (a PostgreSQL one, a separate volume).
    let store_fs = Tmpfs::mount(&dir.join(".slipway"), "4m");
    let exec_fs = Tmpfs::mount(&dir.join(".slipway/exec"), "16m");
    std::fs::write(
        dir.join("release.yaml"),
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: f, version: 1.0.0, type: patch }\n\
         services:\n  a:\n    steps:\n      - { name: one, run: \"echo x >> counts/one\" }\n\
         \x20     - { name: fill, run: \"echo x >> counts/fill; sleep 0.2; dd if=/dev/zero of=.slipway/filler bs=64k 2>/dev/null; echo filled\" }\n\
         \x20     - { name: three, run: \"echo x >> counts/three\" }\n\
         \x20 b:\n    steps:\n      - { name: sibling, run: \"echo x >> counts/sibling; sleep 1; seq 1 50000\" }\n\
         environments:\n  dev:\n    target: { exec: {} }\n",
    )
    .unwrap();
    let out = slipway(dir)
        .args(["deploy", "-f", "release.yaml", "--env", "dev"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The store really refused: exit 8 (store unavailable) with SQLite's own reason, and
    // the step whose effect happened is still `started` in it.
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("disk is full"), "{stderr}");
    assert_eq!(lines(&dir.join("counts/fill")), 1);
    assert_eq!(step_status(dir, "a/fill").as_deref(), Some("started"));
    std::fs::remove_file(dir.join(".slipway/filler")).unwrap();
    let state = finish(dir, "full store");
    assert_eq!(state, "succeeded");
    for step in ["one", "fill", "three", "sibling"] {
        assert_eq!(
            lines(&dir.join(format!("counts/{step}"))),
            1,
            "step {step} ran more than once"
        );
    }
    let journal = journal(dir);
    assert!(journal.contains("\"decision\":\"complete\""), "{journal}");
    assert!(!journal.contains("\"decision\":\"reapply\""), "{journal}");
    drop(exec_fs);
    drop(store_fs);
}
