//! Running a reference implementation (openapi-diff on node) as a subprocess for the
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

/// Where npm installs global packages (`npm root -g`), for node's `NODE_PATH`.
pub fn npm_root() -> Option<String> {
    let out = Command::new("npm").args(["root", "-g"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Run `node -e script` with `input` on stdin and the global packages on `NODE_PATH`; its
/// stdout, or a panic with its stderr.
pub fn node(script: &str, input: &str) -> String {
    let mut child = Command::new("node")
        .args(["-e", script])
        .env("NODE_PATH", npm_root().unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    // Written from a thread: a large input could fill the pipe while python writes.
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("node finishes");
    writer
        .join()
        .expect("writer thread")
        .expect("input written");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
