//! Test fixtures shared by the workspace's tests (a dev-dependency only; nothing ships it):
//! a real PostgreSQL server per test binary ([`pg`]), a real HAProxy's configuration and
//! daemon ([`haproxy`]), ports ([`ports`]), polling with a deadline instead of sleeping
//! ([`eventually`]), the `slipway` command with a cleared environment ([`cli`]), and guards
//! that stop what a test started when it ends, failing or not ([`reap`]).
//!
//! The workspace's tidy test (`tests/tidy.rs`) lives beside them: crate edges, module docs,
//! forgotten test files, and the one-helper rules for clocks and processes.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a panic is a failed test with the reason"
)]

pub mod cli;
pub mod haproxy;
pub mod pg;
pub mod ports;
pub mod reap;

pub use reap::{Reaped, SweepCwd};

use std::time::{Duration, Instant};

/// Stop a daemon a test started in the foreground: SIGTERM by its pid (nginx's and a
/// master-worker HAProxy's master take their workers with them; SIGKILL would leave
/// them), SIGKILL if it has not exited after 5 s.
pub fn terminate(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Call `f` until it returns `Some`, at most for `within`; panics with `what` when it
/// never does. Poll, never sleep-and-hope.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
