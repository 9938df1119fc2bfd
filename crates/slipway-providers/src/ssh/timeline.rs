//! Where a fleet run's time goes: with `SLIPWAY_SSH_TIMELINE=<file>` in the environment,
//! the `ssh` target appends one line per phase boundary of each host to that file —
//! `<unix seconds> <host> <event> [<detail>]` — for the handshake (`connect`, `hostkey`,
//! `authed`), the step helper (`helper-open`, `helper-up`), each step (`send`, `taken`,
//! `done`, or `wrapper`/`wrapper-done`) and the end (`close`, `closed`); `-` as host marks
//! a step's start and end over all hosts (`apply`, `applied`). Nothing secret goes there:
//! host names, step ids and phase names only. Without the variable nothing is written and
//! the cost is one check of a flag. `crates/slipway-cli/benches/fleet_deploy.sh`
//! (`TIMELINE=dir`) keeps one file per deploy; the split is read from it with `awk`.

use std::io::Write;
use std::sync::{LazyLock, Mutex};

/// The file, when the variable names one that could be opened.
static SINK: LazyLock<Option<Mutex<std::fs::File>>> = LazyLock::new(|| {
    let path = std::env::var_os("SLIPWAY_SSH_TIMELINE")?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
        .map(Mutex::new)
});

/// Record that `host` reached `event` now (`detail`: e.g. the step id).
pub(crate) fn mark(host: &str, event: &str, detail: &str) {
    let Some(sink) = SINK.as_ref() else {
        return;
    };
    let t = slipway_stdx::now().as_microsecond() as f64 / 1e6;
    // A diagnostic: a failed write (full disk) is not worth failing a step for.
    if let Ok(mut f) = sink.lock() {
        let _ = writeln!(f, "{t:.6} {host} {event} {detail}");
    }
}
