//! What leaves a target is redacted, bounded and private: step output is redacted
//! *before* it is cut to its limit (a secret straddling the cut used to leave most of
//! itself in the journal), an instance's log is created 0600 and what is shown of it is
//! redacted and bounded, and a FIFO put in a log's place never blocks the reader.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use slipway_engine::{Applied, StepContext, Target, TargetError};
use slipway_model::plan::StepAction;
use slipway_model::spec::{ExecStep, RunSpec};
use slipway_package::{Redactor, SecretRef};
use slipway_providers::exec::{ExecTarget, OUTPUT_LIMIT};
use slipway_providers::process::{ProcessTarget, ServiceProcess, read_log_tail};
use slipway_rollout::{Instances, Role};

const SECRET: &str = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0-very-long-secret-value-of-the-api";

fn redactor() -> Redactor {
    Redactor::new([(SecretRef::Env("API_TOKEN".into()), SECRET.to_owned())])
}

fn step(name: String, run: String) -> ExecStep {
    ExecStep {
        name,
        run,
        creates: None,
        unless: None,
        undo: None,
        timeout: None,
    }
}

fn ctx(key: &str) -> StepContext {
    StepContext {
        run_id: "r1".into(),
        step_id: format!("api/{key}"),
        key: key.into(),
        attempt: 0,
        progress: None,
        prior: Vec::new(),
    }
}

/// No piece of the secret of 8 characters or more survives in `text`.
fn no_piece_of_secret(text: &str) {
    for i in 0..=SECRET.len() - 8 {
        let piece = &SECRET[i..i + 8];
        assert!(
            !text.contains(piece),
            "`{piece}` of the secret is in the output"
        );
    }
}

/// A step prints the secret so that a cut falls inside it: everything kept is masked,
/// whichever byte the cut falls on. Two cuts: the output limit itself (cut first, as
/// before, the tail kept the secret's end), and the start of what is read back (the limit
/// plus the longest secret), where only the secret's end is in hand.
#[tokio::test]
async fn a_secret_straddling_the_output_limit_is_masked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let target = ExecTarget::new(dir.path(), dir.path().join("state")).with_redactor(redactor());
    let margin = redactor().tail_margin();
    assert!(margin >= SECRET.len());
    for (window, cut_at) in [(OUTPUT_LIMIT, "limit"), (OUTPUT_LIMIT + margin, "read")] {
        // `window` bytes end `offset` bytes into the secret, followed by the rest of the
        // output; several offsets, both streams.
        for offset in [1, 7, SECRET.len() / 2, SECRET.len() - 1] {
            let tail = window - (SECRET.len() - offset);
            // After the read cut, the secret a second time: its mask is shorter than it,
            // so the final cut at the limit no longer drops the whole piece the read cut
            // left at the front.
            let (x1, again) = if cut_at == "read" {
                (
                    tail - SECRET.len() - 100,
                    format!("{SECRET}{}", "x".repeat(100)),
                )
            } else {
                (tail, String::new())
            };
            let yagain = again.replace('x', "y");
            let script = format!(
                "head -c 5000 /dev/zero | tr '\\0' a; printf '%s' '{SECRET}'; head -c {x1} /dev/zero | tr '\\0' x; printf '%s' '{again}'; \
                 head -c 5000 /dev/zero | tr '\\0' b >&2; printf '%s' '{SECRET}' >&2; head -c {x1} /dev/zero | tr '\\0' y >&2; printf '%s' '{yagain}' >&2"
            );
            let step = step(format!("print-{cut_at}-{offset}"), script);
            let out = match target
                .apply(&ctx(&format!("k{cut_at}{offset}")), &StepAction::Exec(step))
                .await
            {
                Ok(Applied::Ran { output }) => output,
                other => panic!("{other:?}"),
            };
            assert!(out.truncated, "{cut_at} {offset}");
            assert!(out.stdout.len() <= OUTPUT_LIMIT && out.stderr.len() <= OUTPUT_LIMIT);
            no_piece_of_secret(&out.stdout);
            no_piece_of_secret(&out.stderr);
            assert!(
                out.stdout.ends_with("xxxx") && out.stderr.ends_with("yyyy"),
                "the tail is still what was printed last"
            );
            if cut_at == "limit" && offset <= 7 {
                // The whole secret was read and its mask fits: it is shown as the mask.
                assert!(
                    out.stdout.contains("***secret://env/API_TOKEN***"),
                    "{cut_at} {offset}: {}",
                    &out.stdout[..80]
                );
            }
        }
    }
}

/// An instance that prints a secret and dies: its log is 0600, and the error that quotes
/// its last lines shows the mask. A huge log is read bounded, redacted before it is cut,
/// and a FIFO in its place is refused at once instead of blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_logs_are_private_and_what_is_shown_of_them_is_redacted_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let svc = ServiceProcess {
        run: RunSpec {
            image: None,
            command: format!("sh -c 'echo starting with {SECRET}; exit 3'"),
            replicas: 1,
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
        },
        readiness: None,
        env: BTreeMap::new(),
        workdir: dir.path().to_path_buf(),
    };
    let mut t = ProcessTarget::new(
        dir.path().join("instances"),
        BTreeMap::from([("api".to_owned(), svc)]),
    )
    .with_redactor(redactor());
    t.ready_timeout = Duration::from_secs(10);
    std::fs::create_dir_all(dir.path().join("instances")).unwrap();
    let err = t
        .start("api", "1.0.0", 1, Role::Canary)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("starting with ***secret://env/API_TOKEN***"),
        "{err}"
    );
    no_piece_of_secret(&err);
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("instances"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .collect();
    assert!(!logs.is_empty());
    for l in &logs {
        let mode = l.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", l.path().display());
    }

    // 3 MB of log ending with the secret cut by the limit: bounded and masked whole.
    let big = dir.path().join("big.log");
    let limit = 4096;
    let mut text = "z".repeat(3 * 1024 * 1024);
    text.push_str(SECRET);
    text.push_str(&"w".repeat(limit - 10));
    std::fs::write(&big, &text).unwrap();
    let shown = read_log_tail(&big, limit, &redactor());
    assert!(shown.len() <= limit, "{}", shown.len());
    no_piece_of_secret(&shown);
    assert!(shown.ends_with("www"));

    // A FIFO where a log should be: refused at once (nothing ever writes to it).
    let fifo = dir.path().join("fifo.log");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let started = std::time::Instant::now();
    assert_eq!(read_log_tail(&fifo, limit, &redactor()), "");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Guard against a silent regression of the error type: a refused step still carries
/// its (redacted) output.
#[tokio::test]
async fn a_failed_step_reports_its_output_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let target = ExecTarget::new(dir.path(), dir.path().join("state")).with_redactor(redactor());
    let step = step("fail".into(), format!("echo {SECRET}; exit 2"));
    match target.apply(&ctx("kf"), &StepAction::Exec(step)).await {
        Err(TargetError::Failed { output, .. }) => {
            assert!(
                output.stdout.contains("***secret://env/API_TOKEN***"),
                "{output:?}"
            );
            no_piece_of_secret(&output.stdout);
        }
        other => panic!("{other:?}"),
    }
}
