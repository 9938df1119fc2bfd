//! Database migrations for Slipway: PostgreSQL and SQLite targets.
//!
//! - [`files`]: the `V{n}__name.sql` / `U{n}__name.sql` directory format and checksums.
//! - [`migrate`]: [`status`], [`apply`] and [`undo`] against a history table
//!   (`slipway_schema_history`) in the target database, one transaction per migration (in
//!   parts with recorded progress when it holds statements that cannot run in one).
//! - [`dryrun`]: clone the database (`pg_dump` into a scratch database, never disturbing
//!   the source's sessions), apply, undo, compare schemas, drop the clone.
//! - [`backup`](mod@backup): content-addressed backups (`pg_dump --format=custom`, SQLite `VACUUM INTO`)
//!   and restore.
//! - [`rehearse`](mod@rehearse): rollback rehearsal measuring RTO and RPO with marker rows.
//! - [`consistency`]: declared data checks (row count, sum, ordered checksum) across two
//!   databases or tables.
//!
//! Architecture invariant: this crate owns the SQL drivers; `slipway-engine` never depends on
//! it directly (a step provider calls it). It never prints: every function returns a
//! serializable report or an [`Error`]. Database URLs in errors and reports are masked.
//! Only runtime queries are used (no `query!` macros), so building needs no database.
//!
//! How a caller (the engine's migration step provider, the CLI) uses it: every entry point is
//! an `async fn` taking the database URL as text (resolve `{{ vars }}`/`secret://` first) and
//! the migration directory of a `kind: migration` service. `status` before planning (pending
//! versions, roll-forward-only ones for `Service.irreversible`); `dry_run` in the ready phase;
//! `backup` before `apply` when the environment requires it; `apply` as the step's action and
//! `undo(url, dir, previous_latest)` (or `restore`) as its compensation; `run_check` for
//! verify steps; `rehearse` with a [`Redeploy`] that redeploys the previous artifacts.
//! PostgreSQL backups need the client binaries (`pg_dump`, `pg_restore`; apt `postgresql-client`).

pub mod backup;
pub mod consistency;
pub mod dryrun;
pub mod error;
pub mod files;
pub mod migrate;
pub mod rehearse;
pub mod schema;
pub mod target;

mod clock;

pub use backup::{Backup, BackupKind, backup, restore};
pub use consistency::{Check, CheckOutcome, Measure, Side, run_check};
pub use dryrun::{DryRunOptions, DryRunReport, dry_run, dry_run_with};
pub use error::Error;
pub use files::{Migration, MigrationSet};
pub use migrate::{ApplyOptions, ApplyReport, Status, UndoReport, apply, apply_with, status, undo};
pub use rehearse::{
    NoRedeploy, Objectives, Redeploy, RehearsalConfig, RehearsalReport, RollbackMethod, rehearse,
};
pub use schema::{Schema, SchemaDiff};
pub use target::mask_url;
