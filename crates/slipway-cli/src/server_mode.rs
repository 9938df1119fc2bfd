//! What every top-level command does under `--server URL` / `SLIPWAY_SERVER`, in one
//! exhaustive table (a new command does not compile until it is classified here):
//!
//! - **through the server**: the command calls the API with the caller's token and reads
//!   or changes the server's store only (deploy, resume, status, logs, pause, promote,
//!   abort, rollback, approve, history, wait, access, policy, freeze, report, catalog,
//!   audit verify/export/checkpoint (signed here), plan (a bundle the server plans),
//!   `plan show`, diff, env, review, checklist, retention, archive (signed here));
//! - **here**: the command works on files of this machine (or starts its own demo) and
//!   never reads a store, so a server changes nothing and it runs as without one
//!   (validate, schema, key, sign, verify, package, render, compat, demo, migrate
//!   status/apply/undo and backup, which act on the database `--url` names);
//! - **refused**: the command acts from the machine that runs it on things a server does
//!   not reach or must not hold (targets, databases and their credentials, local
//!   processes), or is the server itself; run through a server it would act on whatever
//!   store this machine has, so it is refused before it starts, saying why and where it
//!   does work (exit 2).
//!
//! `docs/server.md` holds the same table for people.

use crate::Commands;
use crate::out::CliError;

/// How a command behaves under `--server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It calls the server's API.
    Through,
    /// It needs no store: it runs here, the same with or without a server.
    Here,
    /// It needs a store the API does not serve: refused, with why and the way.
    Refused {
        /// The command as typed.
        command: &'static str,
        /// Why it cannot go through a server.
        why: &'static str,
        /// Where it does work.
        fix: &'static str,
    },
}

/// The mode of `command`.
pub fn mode(command: &Commands) -> Mode {
    use crate::cmd_migrate::MigrateCommand as M;
    let refused = |command, why, fix| Mode::Refused { command, why, fix };
    match command {
        Commands::Deploy(_)
        | Commands::Resume(_)
        | Commands::Status(_)
        | Commands::Logs(_)
        | Commands::Pause(_)
        | Commands::Promote(_)
        | Commands::Abort(_)
        | Commands::Rollback(_)
        | Commands::Approve(_)
        | Commands::History(_)
        | Commands::Wait(_)
        | Commands::Access(_)
        | Commands::Policy(_)
        | Commands::Freeze(_)
        | Commands::Report(_)
        | Commands::Catalog(_)
        | Commands::Plan(_)
        | Commands::Diff(_)
        | Commands::Env(_)
        | Commands::Audit(_)
        | Commands::Review(_)
        | Commands::Checklist(_)
        | Commands::Retention(_)
        | Commands::Archive(_) => Mode::Through,
        Commands::Validate(_)
        | Commands::Schema
        | Commands::Key(_)
        | Commands::Sign(_)
        | Commands::Verify(_)
        | Commands::Package(_)
        | Commands::Render(_)
        | Commands::Compat(_)
        | Commands::Demo(_)
        | Commands::DemoApp(_)
        | Commands::Backup(_)
        | Commands::Migrate(M::Status(_) | M::Apply(_) | M::Undo(_)) => Mode::Here,
        Commands::Check(_) => refused(
            "check",
            "it probes the targets (hosts, ports, accounts, capacity) from the machine that runs it, so through a server it would say what this machine reaches, not what the server's deploys reach; the server runs the same readiness gate itself before each deploy it drives",
            "run `slipway check` without --server on a machine that reaches the targets, with --store naming the server's store (`--store postgres://…`); or deploy through the server, whose readiness gate refuses a target that is not ready",
        ),
        Commands::Proxy(_) => refused(
            "proxy",
            "the process target's proxies are processes of the machine that runs the target, not of the server's API",
            "run `slipway proxy …` on that machine, without --server",
        ),
        Commands::Serve(_) => refused(
            "serve",
            "`serve` is the server; --server/SLIPWAY_SERVER names a server for its clients",
            "unset SLIPWAY_SERVER (or drop --server) and name the store with --store",
        ),
        Commands::Rehearse(_) => refused(
            "rehearse",
            "a rehearsal backs up, migrates, rolls back and restores the environment's databases from the machine that runs it (it needs their credentials and network), then records its RTO/RPO in the store; the server never holds those credentials",
            "run `slipway rehearse` without --server on a machine that reaches the databases, with --store naming the server's store (`--store postgres://…`) so plans through the server see the record",
        ),
        Commands::Migrate(M::DryRun(_)) => refused(
            "migrate dry-run",
            "the dry run clones the database --url names and runs the migrations on the clone from the machine that runs it (the server never holds database credentials); its record is written into the store, for the plans that ask for it",
            "run `slipway migrate dry-run` without --server on a machine that reaches the database, with --store naming the server's store (`--store postgres://…`)",
        ),
    }
}

/// The refusal of `command` when a server is named and it cannot go through one.
pub fn check(command: &Commands, server: bool) -> Result<(), CliError> {
    match mode(command) {
        Mode::Refused { command, why, fix } if server => Err(CliError::input(
            format!(
                "failed to run `slipway {command}` through a server (--server/SLIPWAY_SERVER): {why}"
            ),
            fix,
        )),
        _ => Ok(()),
    }
}
