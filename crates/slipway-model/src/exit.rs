//! Process exit codes: a documented, stable contract for pipelines.
//!
//! The CLI maps every outcome to one of these; README.md and `slipway --help` list them.

/// Everything went as asked.
pub const SUCCESS: i32 = 0;
/// The operation ran and its outcome is a failure (a run failed, a check failed).
pub const FAILURE: i32 = 1;
/// Invalid input: a malformed spec, flag, argument or file. Nothing was changed.
pub const INVALID_INPUT: i32 = 2;
/// A gate blocks: outside a window (`--no-wait`), a freeze, missing approvals, a held lease.
pub const BLOCKED: i32 = 3;
/// The run was rolled back (automatically or by hand).
pub const ROLLED_BACK: i32 = 4;
/// The run is paused and waits for a human (`slipway resume` / `promote`).
pub const PAUSED: i32 = 5;
/// The run was aborted.
pub const ABORTED: i32 = 6;
/// The audit chain or an evidence file does not verify: something was tampered with.
pub const TAMPERED: i32 = 7;
/// The store cannot be used (unreachable, locked, or a journal version this build refuses).
pub const STORE: i32 = 8;
/// The caller could not be authenticated: the API token (`--token` / `SLIPWAY_TOKEN`) is
/// unknown, revoked or wrong. Distinct from 3 (a known caller lacking a role).
pub const UNAUTHENTICATED: i32 = 9;
/// A bug in Slipway; please report it.
pub const INTERNAL: i32 = 70;

/// Every code with its meaning, for `--help` and README.
pub const ALL: &[(i32, &str)] = &[
    (SUCCESS, "success"),
    (
        FAILURE,
        "the operation ran and failed (run failed, check failed)",
    ),
    (
        INVALID_INPUT,
        "invalid input (spec, flag, argument, file); nothing changed",
    ),
    (
        BLOCKED,
        "blocked by a gate (window, freeze, approvals, lease)",
    ),
    (ROLLED_BACK, "the run was rolled back"),
    (PAUSED, "the run is paused, waiting for a human"),
    (ABORTED, "the run was aborted"),
    (TAMPERED, "audit chain or evidence does not verify"),
    (STORE, "store unavailable or journal version refused"),
    (
        UNAUTHENTICATED,
        "the API token is unknown, revoked or wrong",
    ),
    (INTERNAL, "internal error (a bug)"),
];
