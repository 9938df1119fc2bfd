//! Small helpers every crate may use, each the one place a rule of `clippy.toml` allows
//! something (rust-analyzer's `stdx` habit):
//!
//! - [`now`] reads the wall clock. Code that decides things takes time from a `Clock`
//!   (`slipway_engine::clock`) so tests can fix it; this is what the real clock calls.
//! - [`command`] and [`tokio_command`] start processes. Every child of slipway starts
//!   without `SLIPWAY_TOKEN`: the operator's API token authenticates slipway itself and
//!   must never reach a step, an instance, a probe or a tool slipway runs (a step's output
//!   is journaled, and an instance outlives the command that started it).
//!
//! And two habits every server and reader shares: [`fs`] opens only regular files named
//! by input, without blocking on a FIFO, and bounds whole-file reads; [`net`] caps the
//! connections one client holds open on a listening port; [`ports`] picks ports that
//! must be known before their server starts outside the kernel's ephemeral range.

pub mod fs;
pub mod net;
pub mod ports;

use std::ffi::OsStr;

/// The variables no child process of slipway ever receives.
pub const WITHHELD_ENV: &[&str] = &["SLIPWAY_TOKEN"];

/// The current time from the system clock.
pub fn now() -> jiff::Timestamp {
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the one wall-clock helper"
    )]
    jiff::Timestamp::now()
}

/// A command for `program`, without the variables in [`WITHHELD_ENV`].
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    #[expect(clippy::disallowed_methods, reason = "this is the one process helper")]
    let mut c = std::process::Command::new(program);
    for k in WITHHELD_ENV {
        c.env_remove(k);
    }
    c
}

/// [`command`] for tokio.
pub fn tokio_command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    tokio::process::Command::from(command(program))
}
