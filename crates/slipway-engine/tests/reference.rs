//! Running a reference implementation (croniter) as a subprocess for the
//! cross-checks. A missing tool skips the check with a loud message on a developer's
//! machine and fails it in CI (`CI` set), where `scripts/test.sh` installs every tool.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Whether the cross-check can run: `probe` (a command line) exits 0. When it cannot, in CI
/// this panics; elsewhere it says so on stderr and the caller returns early.
#[expect(
    clippy::print_stderr,
    reason = "a skipped cross-check must be loud in the test output"
)]
pub fn available(what: &str, probe: &[&str], install: &str) -> bool {
    let ok = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "{what} is missing in CI: scripts/test.sh installs it ({install})"
        );
        eprintln!(
            "\n*** SKIPPED: the {what} cross-check needs {install}; scripts/test.sh installs it ***\n"
        );
    }
    ok
}

/// Run `python3 -c script` with `input` on stdin; its stdout, or a panic with its stderr.
pub fn python(script: &str, input: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // Written from a thread: a large input could fill the pipe while python writes.
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("python3 finishes");
    writer
        .join()
        .expect("writer thread")
        .expect("input written");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
