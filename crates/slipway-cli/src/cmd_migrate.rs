//! `slipway migrate status|apply|undo|dry-run` and `slipway backup create|restore`: thin
//! wrappers over `slipway-migrate` (PostgreSQL and SQLite).

use std::path::PathBuf;

use slipway_migrate as mig;
use slipway_model::exit;

use crate::out::{CliError, Output, Style};

/// `slipway migrate …`.
#[derive(Debug, clap::Subcommand)]
#[command(
    after_help = "Examples:\n  slipway migrate status --url sqlite://shop.db --dir migrations\n  slipway migrate dry-run --url postgres://postgres@127.0.0.1:5432/shop --dir migrations\n  slipway migrate apply --url sqlite://shop.db --dir migrations\n  slipway migrate undo --url sqlite://shop.db --dir migrations --to 2"
)]
pub enum MigrateCommand {
    /// Applied, pending, out-of-order, missing and changed migrations; roll-forward-only ones.
    #[command(
        after_help = "Exit 1 when an applied file changed, an applied version's file is missing, or a pending version is older than the latest applied.\n\nExamples:\n  slipway migrate status --url sqlite://shop.db --dir migrations\n  slipway migrate status --url postgres://app@db:5432/shop --dir migrations --output json"
    )]
    Status(MigrateArgs),
    /// Apply pending migrations in order, each in its own transaction.
    #[command(
        after_help = "Refuses (exit 2, nothing changed) when an applied file changed or a pending version is out of order. Exit 1 when a migration fails: it was rolled back and nothing after it ran.\n\nExample:\n  slipway migrate apply --url sqlite://shop.db --dir migrations"
    )]
    Apply(ApplyArgs),
    /// Undo applied migrations above a version with their U scripts, newest first.
    Undo(UndoArgs),
    /// Clone the database, apply pending migrations, undo them, compare schemas, drop the clone.
    #[command(
        after_help = "PostgreSQL is cloned with pg_dump into a scratch database (on the same server, or on --clone-url): connected application sessions are never waited for or ended. The result is recorded in the store for this exact migration set (an admin policy's `dry_run: { max_age }` asks for it when planning).\n\nExit 1 when a migration fails or undo does not restore the schema exactly.\n\nExamples:\n  slipway migrate dry-run --url postgres://app@db:5432/shop --dir migrations --output json\n  slipway migrate dry-run --url postgres://app@db:5432/shop --dir migrations --clone-url postgres://postgres@scratch:5432/postgres"
    )]
    DryRun(DryRunArgs),
}

/// Where the database and the migrations are.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Database URL: postgres://user[:password]@host:port/db or sqlite://PATH.
    #[arg(long, env = "SLIPWAY_DATABASE_URL", value_name = "URL")]
    pub url: String,
    /// Directory of migrations: V<N>__<name>.sql files and their U<N>__<name>.sql undo
    /// scripts (N the version, e.g. V3__add_orders_index.sql).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// `slipway migrate apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: MigrateArgs,
    /// Recorded as `applied_by` in the target database's history (default: the OS account
    /// running slipway; this command works on the target database, not on the store).
    #[arg(long)]
    pub who: Option<String>,
    /// Apply pending versions older than the latest applied one instead of refusing.
    #[arg(long)]
    pub allow_out_of_order: bool,
}

/// `slipway migrate undo`.
#[derive(Debug, clap::Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: MigrateArgs,
    /// Undo every applied version above this one (0 undoes all).
    #[arg(long, value_name = "VERSION")]
    pub to: i64,
}

/// `slipway migrate dry-run`.
#[derive(Debug, clap::Args)]
pub struct DryRunArgs {
    #[command(flatten)]
    pub target: MigrateArgs,
    /// PostgreSQL: create the scratch database on this server instead of the source's
    /// (postgres://USER@HOST:PORT/postgres — the database to connect to for CREATE DATABASE).
    #[arg(long, value_name = "URL")]
    pub clone_url: Option<String>,
    /// Removed: the dry run never ends anyone's session (it clones with pg_dump).
    #[arg(long, hide = true)]
    pub allow_terminate: bool,
    #[command(flatten)]
    pub store: crate::cli_util::StoreArg,
}

/// `slipway backup …`.
#[derive(Debug, clap::Subcommand)]
#[command(
    after_help = "Examples:\n  slipway backup create --url sqlite://shop.db --store .slipway/backups\n  slipway backup restore --url sqlite://shop.db --store .slipway/backups --digest SHA256"
)]
pub enum BackupCommand {
    /// Back up a database (pg_dump custom format, or an SQLite copy) into a content-addressed store.
    #[command(
        after_help = "Example:\n  slipway backup create --url sqlite://shop.db --store backups"
    )]
    Create(BackupCreateArgs),
    /// Restore a stored backup (checked against its digest first).
    #[command(
        after_help = "Exit 7 when the backup file no longer matches its digest.\n\nExample:\n  slipway backup restore --store backups --digest sha256:… --url sqlite://shop.db"
    )]
    Restore(BackupRestoreArgs),
}

/// `slipway backup create`.
#[derive(Debug, clap::Args)]
pub struct BackupCreateArgs {
    /// Database URL.
    #[arg(long, env = "SLIPWAY_DATABASE_URL", value_name = "URL")]
    pub url: String,
    /// Backup store directory (backups go to STORE/sha256/<digest>).
    #[arg(long, value_name = "STORE")]
    pub store: PathBuf,
}

/// `slipway backup restore`.
#[derive(Debug, clap::Args)]
pub struct BackupRestoreArgs {
    /// Database URL to restore into.
    #[arg(long, env = "SLIPWAY_DATABASE_URL", value_name = "URL")]
    pub url: String,
    /// Backup store directory.
    #[arg(long, value_name = "STORE")]
    pub store: PathBuf,
    /// The backup's digest (sha256:<hex>), as printed by `backup create`.
    #[arg(long)]
    pub digest: String,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start the async runtime: {e}"),
                None,
            )
        })
}

/// `slipway migrate …`.
pub fn migrate(cmd: MigrateCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        match cmd {
            MigrateCommand::Status(a) => {
                let st = mig::status(&a.url, &a.dir)
                    .await
                    .map_err(crate::cli_util::migrate_error)?;
                if out.json() {
                    out.json_value(&st);
                } else {
                    out.line(&out.paint(
                        &format!(
                            "{} (latest applied: {})",
                            st.database,
                            fmt_version(st.latest_applied)
                        ),
                        Style::Bold,
                    ));
                    for e in &st.entries {
                        let state = match &e.progress {
                            Some(p) => format!("InProgress {}/{}", p.done, p.total),
                            None => format!("{:?}", e.state),
                        };
                        let rev = if e.reversible {
                            ""
                        } else {
                            "  roll-forward-only"
                        };
                        out.line(&format!(
                            "  V{:<5} {:<17} {}{rev}",
                            e.version, state, e.description
                        ));
                    }
                    for e in &st.entries {
                        if let Some(p) = &e.progress {
                            out.line(&out.paint(
                                &format!(
                                    "  V{} was interrupted after part {} of {} (started {} by {}); `slipway migrate apply` continues it",
                                    e.version, p.done, p.total, p.started_at, p.applied_by
                                ),
                                Style::Warn,
                            ));
                        }
                    }
                    for e in st
                        .entries
                        .iter()
                        .filter(|e| e.state == mig::migrate::State::ChecksumMismatch)
                    {
                        out.line(&out.paint(
                            &format!(
                                "  V{} changed: recorded {}, file {}",
                                e.version,
                                e.history.as_ref().map(|h| h.checksum.as_str()).unwrap_or_default(),
                                e.file_checksum.as_deref().unwrap_or_default()
                            ),
                            Style::Bad,
                        ));
                    }
                }
                Ok(if st.is_clean() {
                    exit::SUCCESS
                } else {
                    exit::FAILURE
                })
            }
            MigrateCommand::Apply(a) => {
                let who = a.who.unwrap_or_else(|| slipway_ops::session::Actor::local().user);
                let opts = mig::ApplyOptions {
                    who,
                    allow_out_of_order: a.allow_out_of_order,
                };
                let r = mig::apply_with(&a.target.url, &a.target.dir, &opts)
                    .await
                    .map_err(crate::cli_util::migrate_error)?;
                if out.json() {
                    out.json_value(&r);
                } else {
                    for s in &r.applied {
                        out.line(&format!(
                            "applied V{} {} ({} ms, {} rows)",
                            s.version, s.description, s.duration_ms, s.rows_affected
                        ));
                        for n in &s.notes {
                            out.line(&format!("  {n}"));
                        }
                    }
                    if r.applied.is_empty() {
                        out.line("nothing to apply");
                    }
                    if !r.roll_forward_only.is_empty() {
                        out.line(&out.paint(
                            &format!("roll-forward-only (no U script): {:?}", r.roll_forward_only),
                            Style::Warn,
                        ));
                    }
                    if !r.missing.is_empty() {
                        out.line(&out.paint(
                            &format!(
                                "applied but missing from {}: {:?}",
                                a.target.dir.display(),
                                r.missing
                            ),
                            Style::Warn,
                        ));
                    }
                }
                Ok(exit::SUCCESS)
            }
            MigrateCommand::Undo(a) => {
                let r = mig::undo(&a.target.url, &a.target.dir, a.to)
                    .await
                    .map_err(crate::cli_util::migrate_error)?;
                if out.json() {
                    out.json_value(&r);
                } else {
                    for s in &r.undone {
                        out.line(&format!(
                            "undid V{} {} ({} ms, {} rows)",
                            s.version, s.description, s.duration_ms, s.rows_affected
                        ));
                    }
                    out.line(&format!(
                        "latest applied: {}",
                        fmt_version(r.latest_applied)
                    ));
                }
                Ok(exit::SUCCESS)
            }
            MigrateCommand::DryRun(a) => {
                if a.allow_terminate {
                    return Err(CliError::input(
                        "--allow-terminate is gone: the dry run no longer ends anyone's session",
                        "drop it; PostgreSQL is cloned with pg_dump into a scratch database while the application stays connected (use --clone-url to put the scratch database on another server)",
                    ));
                }
                if a.clone_url.is_some() && !a.target.url.starts_with("postgres") {
                    return Err(CliError::input(
                        "--clone-url applies to a PostgreSQL source; an SQLite file is cloned beside itself",
                        "drop --clone-url",
                    ));
                }
                let r = mig::dry_run_with(
                    &a.target.url,
                    &a.target.dir,
                    &mig::DryRunOptions {
                        clone_server: a.clone_url.clone(),
                    },
                )
                .await
                .map_err(crate::cli_util::migrate_error)?;
                let record = slipway_model::recovery::DryRunRecord {
                    format: slipway_model::recovery::DRY_RUN_FORMAT,
                    migration_set: r.migration_set.clone(),
                    database: r.database.clone(),
                    clone_method: r.clone_method.clone(),
                    passed: r.passed() && r.clone_dropped,
                    finished_at: slipway_stdx::now(),
                    report: serde_json::to_value(&r).map_err(|e| {
                        CliError::new(
                            exit::INTERNAL,
                            format!("failed to serialise the dry-run report: {e}"),
                            None,
                        )
                    })?,
                };
                let session = crate::cli_util::session(&a.store).await?;
                let recorded = slipway_ops::recovery::record_dry_run(&session, &record).await?;
                if out.json() {
                    out.json_value(&serde_json::json!({"record": recorded, "dry_run": r}));
                } else {
                    out.line(&format!(
                        "clone {} ({}{}) in {} ms; the source's sessions were not touched",
                        r.clone,
                        r.clone_method,
                        r.clone_server
                            .as_deref()
                            .map(|s| format!(" on {s}"))
                            .unwrap_or_default(),
                        r.clone_ms
                    ));
                    for s in &r.steps {
                        let undo = s
                            .undo_ms
                            .map_or_else(|| "not undone".to_owned(), |ms| format!("undo {ms} ms"));
                        out.line(&format!(
                            "  V{:<5} apply {} ms, {} rows, {undo}  {}",
                            s.version, s.apply_ms, s.rows_affected, s.description
                        ));
                    }
                    out.line(&format!("apply {} ms, undo {} ms", r.apply_ms, r.undo_ms));
                    for e in r.apply_error.iter().chain(&r.undo_error) {
                        out.line(&out.paint(e, Style::Bad));
                    }
                    if r.undo_restores_schema {
                        out.line(&out.paint("undo restores the schema exactly", Style::Good));
                    } else {
                        out.line(&out.paint("undo does NOT restore the schema:", Style::Bad));
                        for d in &r.schema_differences {
                            out.line(&format!("  {d}"));
                        }
                    }
                    if !r.roll_forward_only.is_empty() {
                        out.line(&out.paint(
                            &format!("roll-forward-only: {:?}", r.roll_forward_only),
                            Style::Warn,
                        ));
                    }
                    if let Some(e) = &r.drop_error {
                        out.line(&out.paint(
                            &format!("the clone {} was not dropped: {e}", r.clone),
                            Style::Bad,
                        ));
                    }
                    out.line(&format!(
                        "migration set {}: {}, recorded in {recorded}",
                        r.migration_set,
                        if record.passed { "passed" } else { "FAILED" }
                    ));
                }
                Ok(if r.passed() && r.clone_dropped {
                    exit::SUCCESS
                } else {
                    exit::FAILURE
                })
            }
        }
    })
}

/// `slipway backup …`.
pub fn backup(cmd: BackupCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        match cmd {
            BackupCommand::Create(a) => {
                let b = mig::backup(&a.url, &a.store)
                    .await
                    .map_err(crate::cli_util::migrate_error)?;
                if out.json() {
                    out.json_value(&b);
                } else {
                    out.line(&format!(
                        "{} {} bytes in {} ms",
                        b.digest, b.size, b.duration_ms
                    ));
                    out.line(&out.paint(&b.path.display().to_string(), Style::Dim));
                }
                Ok(exit::SUCCESS)
            }
            BackupCommand::Restore(a) => {
                let b = mig::backup::load(&a.store, &a.digest)
                    .map_err(crate::cli_util::migrate_error)?;
                mig::restore(&b, &a.url)
                    .await
                    .map_err(crate::cli_util::migrate_error)?;
                if out.json() {
                    out.json_value(
                        &serde_json::json!({ "restored": b.digest, "into": mig::mask_url(&a.url) }),
                    );
                } else {
                    out.line(&format!(
                        "restored {} into {}",
                        b.digest,
                        mig::mask_url(&a.url)
                    ));
                }
                Ok(exit::SUCCESS)
            }
        }
    })
}

fn fmt_version(v: Option<i64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| format!("V{v}"))
}
