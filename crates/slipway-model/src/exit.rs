//! Process exit codes: a documented, stable contract for pipelines.
//!
//! The CLI maps every outcome to one of these; README.md and `slipway --help` list them.

/// Everything went as asked.
pub const SUCCESS: i32 = 0;
/// The operation ran and its outcome is a failure (a run failed, a check failed, a
/// signature was made by a key that is not trusted).
pub const FAILURE: i32 = 1;
/// Invalid input: a malformed spec, flag, argument or file. Nothing was changed.
pub const INVALID_INPUT: i32 = 2;
/// A gate blocks: outside a window (`--no-wait`), a freeze, missing approvals, a held lease.
pub const BLOCKED: i32 = 3;
/// The run of a `deploy`/`resume` was rolled back by itself (an analysis, a check or a
/// step failed) or by another person's `slipway rollback`. A successful `slipway
/// rollback` itself exits 0: it did what was asked.
pub const ROLLED_BACK: i32 = 4;
/// The run is paused and waits for a human (`slipway resume` / `promote`).
pub const PAUSED: i32 = 5;
/// The run was aborted.
pub const ABORTED: i32 = 6;
/// The audit chain or an evidence file does not verify: something was tampered with (a
/// digest, signature or chain entry no longer matches what was signed or recorded). A
/// valid signature by a key that is not trusted is a refusal ([`FAILURE`]), not tampering:
/// nothing changed, the key is simply not one the caller trusts.
pub const TAMPERED: i32 = 7;
/// The store cannot be used (unreachable, locked, missing where a command only reads, or a
/// journal version this build refuses).
pub const STORE: i32 = 8;
/// The caller could not be authenticated: the API token (`--token` / `SLIPWAY_TOKEN`) is
/// unknown, revoked or wrong. Distinct from 3 (a known caller lacking a role).
pub const UNAUTHENTICATED: i32 = 9;
/// The run succeeded but not everywhere: some services were not deployed (failed within
/// the failure budget, or not started because a service they depend on failed); the
/// message and `slipway status` name them.
pub const PARTIAL: i32 = 10;
/// A bug in Slipway; please report it.
pub const INTERNAL: i32 = 70;
/// Stdout was closed before everything was written (`slipway history | head -1`): the
/// process ends quietly with the code a shell reports for a program ended by SIGPIPE
/// (128 + 13), so a pipeline under `pipefail` still learns the output was cut.
pub const BROKEN_PIPE: i32 = 141;

/// Every code with its meaning, for `--help` and README (a test keeps README's table equal
/// to this list).
pub const ALL: &[(i32, &str)] = &[
    (SUCCESS, "success"),
    (
        FAILURE,
        "the operation ran and failed (run failed, check failed, `diff --fail-on-drift` found drift, a signature made by a key that is not trusted)",
    ),
    (
        INVALID_INPUT,
        "invalid input (spec, flag, argument, file); nothing was changed",
    ),
    (
        BLOCKED,
        "blocked by a gate (window, freeze, approvals, lease, blocking plan findings, a role you lack)",
    ),
    (
        ROLLED_BACK,
        "the run was rolled back (by itself, or by someone else's `slipway rollback`)",
    ),
    (PAUSED, "the run is paused, waiting for a human"),
    (ABORTED, "the run was aborted"),
    (
        TAMPERED,
        "the audit chain or evidence does not verify: a file, signature or entry changed after it was signed or recorded",
    ),
    (
        STORE,
        "store unavailable or missing (a command that only reads never creates one), or journal version refused",
    ),
    (
        UNAUTHENTICATED,
        "the API token (`--token` / `SLIPWAY_TOKEN`) is unknown, revoked or wrong",
    ),
    (
        PARTIAL,
        "the run succeeded partially: some services were not deployed (named in the message)",
    ),
    (INTERNAL, "internal error (a bug)"),
    (
        BROKEN_PIPE,
        "stdout was closed early (piped into `head`); the output was cut, as for a program ended by SIGPIPE",
    ),
];
