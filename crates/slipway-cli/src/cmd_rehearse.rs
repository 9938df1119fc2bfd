//! `slipway rehearse`: a rollback rehearsal of a release's migrations on a non-production
//! environment, judged against the spec's recovery objectives and recorded where `plan`
//! looks for it: a governance record of kind `rehearsal` in the store, committed to by an
//! audit chain entry (`slipway_ops::recovery`).
//!
//! The measuring is `slipway_migrate::rehearse` (back up, write marker rows at a steady
//! rate, roll back, measure RTO and RPO). When the release has application services (exec
//! steps or processes), the rehearsal is of the whole release, done the way production
//! would do it: [`ReleaseRun`] runs the real `slipway deploy` of the release on the
//! environment (migrations, installs, processes, checks, leases, audit — one real run),
//! then the real `slipway rollback` of that run, and the RTO ends only when the rollback run
//! has finished, the services' command probes pass again, the database is back at the
//! previous version and a marker write succeeds after that. Running the two commands as
//! child processes (rather than an engine in this process) keeps the rehearsal honest: it
//! exercises exactly the code paths, locks and start-up costs an operator's rollback has.
//! `--database-only` rehearses the migrations alone (undo scripts or backup restore);
//! `--from-backup latest` rolls the database back by restoring the newest *real* backup of
//! the backup store (never one the rehearsal takes), proving it restores and measuring RPO
//! as the age of its data. A release without migrations rehearses its application rollback:
//! the same real deploy and rollback run, RTO measured until the probes pass again.
//!
//! Every record says its scope (database, application, both) and `plan` accepts it only for
//! a release whose changes it covers (`slipway_model::recovery::RehearsalScope`).
//!
//! The findings `slipway plan` draws from rehearsal records are
//! `slipway_ops::recovery::plan_findings`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_migrate as mig;
use slipway_model::exit;
use slipway_model::recovery::{Objectives, REHEARSAL_FORMAT, RehearsalRecord, RehearsalScope};
use slipway_model::spec::{ReleaseSpec, ServiceKind};

use crate::cli_util::StoreArg;
use crate::out::{CliError, Output, Style};

/// How the database is rolled back during the rehearsal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RollbackArg {
    /// Run the `U` scripts down to the previous version.
    Undo,
    /// Restore the backup taken before applying.
    RestoreBackup,
}

/// `slipway rehearse`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "With application services in the release, the rehearsal runs the real `slipway deploy` of the release on the environment and then `slipway rollback` of that run (a release without migrations rehearses just that); --database-only rehearses the migrations alone; --from-backup latest restores the newest real backup of the backup store as the rollback.\n\nExit 1 when the rehearsal misses the RTO/RPO objectives (environments.X.recovery) or fails; 2 for a production environment or when the backup store holds no backup.\n\nExamples:\n  slipway rehearse -f release.yaml --env staging\n  slipway rehearse -f release.yaml --env staging --database-only --rollback restore-backup --url sqlite://staging.db\n  slipway rehearse -f release.yaml --env staging --from-backup latest --backup-store /backups/prod"
)]
pub struct RehearseArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// A non-production environment of the spec to rehearse on.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Database URL (default: the migration service's `database`).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Migrations directory (default: the migration service's `migrations`, beside the spec).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The migration service, when the release has several.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// How the database is rolled back (`restore-backup` needs --database-only: a release
    /// run rolls back through its own steps).
    #[arg(long, value_enum, default_value_t = RollbackArg::Undo)]
    pub rollback: RollbackArg,
    /// Rehearse the migrations only, even when the release has application services.
    #[arg(long)]
    pub database_only: bool,
    /// Roll the database back by restoring a real backup — `latest` (the newest in the
    /// backup store) or its digest `sha256:…` — instead of one the rehearsal takes; RPO is
    /// then the age of that backup's data. Rehearses the database only.
    #[arg(long, value_name = "latest|DIGEST")]
    pub from_backup: Option<String>,
    /// The backup store --from-backup reads (default: the store's backups directory, where
    /// deploys keep the backups `backup.required` takes before migrating; `slipway backup
    /// create --store DIR` writes one).
    #[arg(long, value_name = "DIR", requires = "from_backup")]
    pub backup_store: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Directory beside the store where rehearsal records live.
fn rehearsal_dir(store: Option<&str>) -> Result<PathBuf, CliError> {
    Ok(slipway_ops::recovery::rehearsal_dir(store)?)
}

/// The objectives a rehearsal on `env` is judged by: the environment's own, else the
/// strictest of the production environments' (what the rehearsal is meant to prove).
fn objectives_for(spec: &ReleaseSpec, env: &str) -> Objectives {
    let own = spec
        .environments
        .get(env)
        .map(Objectives::of)
        .unwrap_or_default();
    if own.rto.is_some() || own.rpo.is_some() {
        return own;
    }
    spec.environments
        .values()
        .filter(|e| e.production)
        .map(Objectives::of)
        .fold(Objectives::default(), |a, b| Objectives {
            rto: min_some(a.rto, b.rto),
            rpo: min_some(a.rpo, b.rpo),
        })
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `slipway rehearse`.
pub fn rehearse(a: RehearseArgs, out: &Output) -> Result<i32, CliError> {
    let loaded = crate::cli_util::load_spec(&a.file, out)?;
    let spec = &loaded.spec;
    let shown = a.file.display();
    let Some(env) = spec.environments.get(&a.env) else {
        let names: Vec<&str> = spec.environments.keys().map(String::as_str).collect();
        return Err(CliError::input(
            format!("unknown environment `{}` in {shown}", a.env),
            format!("pick one of: {}", names.join(", ")),
        ));
    };
    if env.production {
        return Err(CliError::input(
            format!(
                "`{}` is a production environment (environments.{}.production in {shown}); a rehearsal deploys and rolls back on purpose",
                a.env, a.env
            ),
            "rehearse on a staging environment with a copy of production's data",
        ));
    }
    let spec_dir = a
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let changes = RehearsalScope::of_release(spec);
    if changes == Some(RehearsalScope::Application)
        && a.service.is_none()
        && !a.database_only
        && a.from_backup.is_none()
    {
        return rehearse_application(&a, spec, spec_dir, objectives_for(spec, &a.env), out);
    }
    let database_only = a.database_only || a.from_backup.is_some();
    let migrations: Vec<(&String, &slipway_model::spec::Service)> = spec
        .services
        .iter()
        .filter(|(n, s)| {
            s.kind == ServiceKind::Migration && a.service.as_ref().is_none_or(|w| w == *n)
        })
        .collect();
    let (svc_name, svc) = match migrations.as_slice() {
        [one] => *one,
        [] => {
            return Err(CliError::input(
                match &a.service {
                    Some(s) => format!("`{s}` is not a `kind: migration` service of {shown}"),
                    None => format!("{shown} has no `kind: migration` service to rehearse"),
                },
                "declare one: services.db: { kind: migration, migrations: migrations, database: … }",
            ));
        }
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
            return Err(CliError::input(
                format!(
                    "{shown} has several migration services: {}",
                    names.join(", ")
                ),
                "pick one with --service NAME",
            ));
        }
    };
    let dir = match (&a.dir, &svc.migrations) {
        (Some(d), _) => d.clone(),
        (None, Some(m)) => spec_dir.join(m),
        (None, None) => {
            return Err(CliError::input(
                format!("services.{svc_name}.migrations is not set in {shown}"),
                "pass --dir MIGRATIONS or set `migrations:` on the service",
            ));
        }
    };
    // A whole-release rehearsal when anything besides migrations gets installed.
    let release_scope = !database_only
        && spec
            .services
            .values()
            .any(|s| s.kind != ServiceKind::Migration && (!s.steps.is_empty() || s.run.is_some()));
    if release_scope {
        if a.url.is_some() || a.dir.is_some() {
            return Err(CliError::input(
                "--url and --dir only apply to a database-only rehearsal: the release run migrates the database its spec names",
                "drop them, or add --database-only",
            ));
        }
        if a.rollback == RollbackArg::RestoreBackup {
            return Err(CliError::input(
                "--rollback restore-backup only applies to a database-only rehearsal: a release run rolls back through its own steps (undo scripts)",
                "drop --rollback, or add --database-only",
            ));
        }
    }
    let url = match (&a.url, &svc.database) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => resolve_database(d, env).ok_or_else(|| {
            CliError::input(
                format!(
                    "services.{svc_name}.database in {shown} uses a placeholder or secret that is not set here"
                ),
                format!(
                    "set the variable in environments.{}.vars (and any secret://env/NAME in this shell), or pass the database with --url --database-only",
                    a.env
                ),
            )
        })?,
        (None, None) => {
            return Err(CliError::input(
                format!("services.{svc_name}.database is not set in {shown}"),
                format!("pass the {} database with --url", a.env),
            ));
        }
    };
    let records = rehearsal_dir(a.store.store.as_deref())?;
    let objectives = objectives_for(spec, &a.env);
    let restore_from = match &a.from_backup {
        None => None,
        Some(which) => Some(real_backup(&a, which)?),
    };
    let cfg = mig::RehearsalConfig {
        url: url.clone(),
        dir,
        store_dir: records.join("backups"),
        who: crate::cli_util::whoami(&a.store)?,
        rollback: match a.rollback {
            _ if restore_from.is_some() => mig::RollbackMethod::RestoreBackup,
            RollbackArg::Undo => mig::RollbackMethod::Undo,
            RollbackArg::RestoreBackup => mig::RollbackMethod::RestoreBackup,
        },
        marker_interval: Duration::from_millis(10),
        soak_markers: 5,
        // Judged here against durations (the spec's RPO is a time span), not marker rows.
        objectives: None,
        restore_from,
    };
    let rt = crate::cli_util::runtime()?;
    let driver = release_scope
        .then(|| ReleaseRun::new(&a, spec_dir, spec))
        .transpose()?;
    let report = match &driver {
        Some(d) => rt.block_on(mig::rehearse(&cfg, d)),
        None => rt.block_on(mig::rehearse(&cfg, &mig::NoRedeploy)),
    }
    .map_err(crate::cli_util::migrate_error)?;
    let run_id = driver.as_ref().and_then(ReleaseRun::run_id);
    let mut missed = objectives.missed(report.rto_ms, report.rpo_ms);
    if !report.schema_restored {
        missed.push("the rollback did not restore the schema".to_owned());
    }
    let record = RehearsalRecord {
        format: REHEARSAL_FORMAT,
        release: spec.metadata.name.clone(),
        version: spec.metadata.version.clone(),
        environment: a.env.clone(),
        finished_at: slipway_stdx::now(),
        rto_ms: report.rto_ms,
        rpo_ms: report.rpo_ms,
        markers_lost: report.markers_lost,
        objective_rto_ms: objectives.rto.map(millis),
        objective_rpo_ms: objectives.rpo.map(millis),
        objectives_met: missed.is_empty(),
        scope: if report.scope == "release" {
            RehearsalScope::Both
        } else {
            RehearsalScope::Database
        },
        report: serde_json::to_value(&report).map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to serialise the rehearsal report: {e}"),
                None,
            )
        })?,
    };
    let path = rt.block_on(store_record(&a.store, spec, &record))?;

    if out.json() {
        out.json_value(&serde_json::json!({
            "record": path,
            "service": svc_name,
            "scope": record.scope.as_str(),
            "run": run_id,
            "redeploy": if run_id.is_some() {
                "rehearsed: the release run was deployed and rolled back"
            } else {
                "not rehearsed (database only)"
            },
            "missed": missed,
            "rehearsal": record,
        }));
    } else {
        let fmt = |ms: u64| slipway_model::duration::format_duration(Duration::from_millis(ms));
        let objective = |o: Option<Duration>| {
            o.map_or("—".to_owned(), slipway_model::duration::format_duration)
        };
        let mut t = comfy_table::Table::new();
        t.force_no_tty();
        t.set_header(vec!["measure", "measured", "objective", "verdict"]);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        t.add_row(vec![
            "RTO".to_owned(),
            fmt(report.rto_ms),
            objective(objectives.rto),
            verdict(objectives.rto.is_none_or(|o| report.rto_ms <= millis(o))).to_owned(),
        ]);
        t.add_row(vec![
            "RPO".to_owned(),
            format!("{} ({} rows lost)", fmt(report.rpo_ms), report.markers_lost),
            objective(objectives.rpo),
            verdict(objectives.rpo.is_none_or(|o| report.rpo_ms <= millis(o))).to_owned(),
        ]);
        t.add_row(vec![
            "schema restored".to_owned(),
            if report.schema_restored { "yes" } else { "no" }.to_owned(),
            "yes".to_owned(),
            verdict(report.schema_restored).to_owned(),
        ]);
        out.line(&format!(
            "rehearsal of {} {} on {} ({}, {:?}): V{} → V{} → V{}",
            spec.metadata.name,
            spec.metadata.version,
            a.env,
            report.database,
            report.rollback,
            fmt_version(report.previous_version),
            fmt_version(report.new_version),
            fmt_version(report.previous_version),
        ));
        out.line(&t.to_string());
        if let Some(age) = report.backup_age_ms {
            out.line(&format!(
                "rolled back by restoring backup {} of {} (taken {}, its data {} old: the RPO of a restore)",
                report.backup.digest,
                report.backup.source,
                report.backup.created_at,
                fmt(age)
            ));
        }
        let how = match &run_id {
            Some(run) => format!(
                "deploy {} ms, rollback run {} ms (run {run}: `slipway deploy` then `slipway rollback`)",
                report.apply_ms, report.rollback_ms
            ),
            None => format!(
                "apply {} ms, rollback {} ms; redeploy not rehearsed (database only)",
                report.apply_ms, report.rollback_ms
            ),
        };
        out.line(&out.paint(
            &format!(
                "{how}; {} markers written, {} write errors",
                report.markers_written, report.marker_write_errors
            ),
            Style::Dim,
        ));
        for d in &report.schema_differences {
            out.line(&format!("  schema: {d}"));
        }
        if record.objectives_met {
            out.line(&out.paint("objectives met", Style::Good));
        } else {
            out.line(&out.paint(
                &format!("objectives MISSED: {}", missed.join("; ")),
                Style::Bad,
            ));
        }
        out.line(&format!("recorded in {path}"));
    }
    Ok(if record.objectives_met {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

/// The real backup `--from-backup` names: `latest` (the newest in the backup store) or a
/// digest; refused with what to do when the store holds none.
fn real_backup(a: &RehearseArgs, which: &str) -> Result<mig::Backup, CliError> {
    let dir = match &a.backup_store {
        Some(d) => d.clone(),
        None => slipway_ops::recovery::backup_dir(a.store.store.as_deref())?,
    };
    if which != "latest" {
        return mig::backup::load(&dir, which).map_err(crate::cli_util::migrate_error);
    }
    mig::backup::latest(&dir)
        .map_err(crate::cli_util::migrate_error)?
        .ok_or_else(|| {
            CliError::input(
                format!(
                    "no backup in {}: --from-backup latest restores the newest real backup of the backup store, and it holds none",
                    dir.display()
                ),
                format!(
                    "take one of production with `slipway backup create --url PRODUCTION_URL --store {}`, or name the store that has them with --backup-store DIR",
                    dir.display()
                ),
            )
        })
}

/// A release without migrations: rehearse its application rollback — the real deploy of
/// the release on the environment, then the real rollback of that run — and measure RTO
/// from the start of the rollback until it finished and every command probe passes again.
/// There is no database to lose writes in: RPO is 0.
fn rehearse_application(
    a: &RehearseArgs,
    spec: &ReleaseSpec,
    spec_dir: &Path,
    objectives: Objectives,
    out: &Output,
) -> Result<i32, CliError> {
    use mig::Redeploy as _;
    if a.url.is_some() || a.dir.is_some() || a.rollback == RollbackArg::RestoreBackup {
        return Err(CliError::input(
            "--url, --dir and --rollback apply to a database rehearsal, and this release has no migrations",
            "drop them: the release's application rollback is rehearsed",
        ));
    }
    let driver = ReleaseRun::new(a, spec_dir, spec)?;
    let rt = crate::cli_util::runtime()?;
    let failed = |what: &str, e: String| {
        CliError::new(
            exit::FAILURE,
            format!("failed to rehearse: {what}: {e}"),
            Some("see the run with `slipway status RUN`; nothing is recorded for a rehearsal that failed".to_owned()),
        )
    };
    let t = std::time::Instant::now();
    rt.block_on(driver.deploy_new())
        .map_err(|e| failed("deploy the release", e))?;
    let deploy_ms = millis(t.elapsed());
    let t = std::time::Instant::now();
    rt.block_on(driver.redeploy_previous())
        .map_err(|e| failed("roll the release back", e))?;
    let rto_ms = millis(t.elapsed());
    let run_id = driver.run_id();
    let missed = objectives.missed(rto_ms, 0);
    let record = RehearsalRecord {
        format: REHEARSAL_FORMAT,
        release: spec.metadata.name.clone(),
        version: spec.metadata.version.clone(),
        environment: a.env.clone(),
        finished_at: slipway_stdx::now(),
        rto_ms,
        rpo_ms: 0,
        markers_lost: 0,
        objective_rto_ms: objectives.rto.map(millis),
        objective_rpo_ms: objectives.rpo.map(millis),
        objectives_met: missed.is_empty(),
        scope: RehearsalScope::Application,
        report: serde_json::json!({
            "scope": "application",
            "run": run_id,
            "deploy_ms": deploy_ms,
            "rollback_ms": rto_ms,
            "rto_ms": rto_ms,
            "rpo": "no migrations in this release: no data to lose",
        }),
    };
    let path = rt.block_on(store_record(&a.store, spec, &record))?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "record": path,
            "scope": "application",
            "run": run_id,
            "missed": missed,
            "rehearsal": record,
        }));
    } else {
        let fmt = |ms: u64| slipway_model::duration::format_duration(Duration::from_millis(ms));
        out.line(&format!(
            "application rehearsal of {} {} on {}: run {} deployed in {}, rolled back in {} (`slipway deploy` then `slipway rollback`, probes passing again)",
            spec.metadata.name,
            spec.metadata.version,
            a.env,
            run_id.as_deref().unwrap_or("?"),
            fmt(deploy_ms),
            fmt(rto_ms)
        ));
        out.line(&format!(
            "RTO {} (objective {})",
            fmt(rto_ms),
            objectives
                .rto
                .map_or("—".to_owned(), slipway_model::duration::format_duration)
        ));
        if record.objectives_met {
            out.line(&out.paint("objectives met", Style::Good));
        } else {
            out.line(&out.paint(
                &format!("objectives MISSED: {}", missed.join("; ")),
                Style::Bad,
            ));
        }
        out.line(&format!("recorded in {path}"));
    }
    Ok(if record.objectives_met {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

fn fmt_version(v: Option<i64>) -> String {
    v.map_or_else(|| "0".to_owned(), |v| v.to_string())
}

/// Keep the record in the store as a governance record (its chain entry commits to it and
/// says who rehearsed what, with which outcome); returns where, for the output.
async fn store_record(
    store: &StoreArg,
    spec: &ReleaseSpec,
    record: &RehearsalRecord,
) -> Result<String, CliError> {
    use slipway_engine::Store;
    let session = crate::cli_util::session(store).await?;
    let actor = session.actor_id().await?;
    let store = session.store;
    let data = serde_json::to_value(record).map_err(|e| {
        CliError::new(
            exit::INTERNAL,
            format!("failed to serialise the rehearsal record: {e}"),
            None,
        )
    })?;
    let key = slipway_ops::recovery::record_key(spec);
    store
        .append_governance(vec![slipway_engine::store::GovernanceRecord {
            kind: slipway_ops::recovery::REHEARSAL.to_owned(),
            key: slipway_engine::store::RecordKey::Given(key.clone()),
            data: Some(data),
            action: "rehearsal_recorded".to_owned(),
            summary: serde_json::json!({"release": record.release, "version": record.version,
                "environment": record.environment, "objectives_met": record.objectives_met,
                "rto_ms": record.rto_ms, "rpo_ms": record.rpo_ms}),
            actor,
            at: record.finished_at,
            if_seq: None,
        }])
        .await
        .map_err(CliError::from)?;
    Ok(format!("{} as rehearsal record {key}", store.location()))
}

/// The database URL of a migration service as the release run will resolve it: the
/// environment's `{{ vars.x }}` filled in, `secret://env/NAME` (as the URL or as a
/// variable's value) read from this process's environment. `None` when something is unset.
fn resolve_database(database: &str, env: &slipway_model::spec::Environment) -> Option<String> {
    use slipway_package::SecretRef;
    let secret = |v: &str| match SecretRef::parse(v) {
        Ok(Some(SecretRef::Env(name))) => Some(std::env::var(name).ok()),
        Ok(Some(_)) | Err(_) => Some(None),
        Ok(None) => None,
    };
    let vars: Vec<(String, String)> = env
        .vars
        .iter()
        .filter_map(|(k, v)| match secret(v.as_str()) {
            Some(resolved) => resolved.map(|r| (k.clone(), r)),
            None => Some((k.clone(), v.as_str().to_owned())),
        })
        .collect();
    let filled = slipway_model::text::fill_vars(
        database,
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let url = match secret(&filled) {
        Some(resolved) => resolved?,
        None => filled,
    };
    (!url.contains("{{")).then_some(url)
}

/// How long a service's probe may take to pass again after the rollback run.
const PROBE_DEADLINE: Duration = Duration::from_secs(120);

/// The engine's part of a whole-release rehearsal: the real `slipway deploy` of the release
/// and the real `slipway rollback` of that run, as child processes of this same binary
/// (same store, same identity, same environment variables for secrets).
struct ReleaseRun {
    exe: PathBuf,
    spec: PathBuf,
    env: String,
    store: Option<String>,
    /// Where command probes run: the deploy's workdir.
    workdir: PathBuf,
    /// (service, command, deadline) of every command health/readiness probe.
    probes: Vec<(String, String, Duration)>,
    run: std::sync::Mutex<Option<String>>,
}

impl ReleaseRun {
    fn new(a: &RehearseArgs, spec_dir: &Path, spec: &ReleaseSpec) -> Result<Self, CliError> {
        let exe = std::env::current_exe().map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to find the slipway binary: {e}"),
                None,
            )
        })?;
        let workdir = match spec
            .environments
            .get(&a.env)
            .and_then(|e| e.target.exec.as_ref())
            .and_then(|e| e.workdir.as_ref())
        {
            Some(w) => spec_dir.join(w),
            None => spec_dir.to_path_buf(),
        };
        let probes = spec
            .services
            .iter()
            .filter(|(_, s)| s.kind != ServiceKind::Migration)
            .flat_map(|(name, s)| {
                [s.readiness.as_ref(), s.health.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(move |p| {
                        let deadline = p
                            .deadline
                            .as_ref()
                            .and_then(|d| d.get().ok())
                            .unwrap_or(PROBE_DEADLINE);
                        p.command.clone().map(|c| (name.clone(), c, deadline))
                    })
            })
            .collect();
        Ok(Self {
            exe,
            spec: a.file.clone(),
            env: a.env.clone(),
            store: a.store.store.clone(),
            workdir,
            probes,
            run: std::sync::Mutex::new(None),
        })
    }

    fn run_id(&self) -> Option<String> {
        self.run.lock().ok().and_then(|r| r.clone())
    }

    /// Run `slipway ARGS --output json`; the parsed JSON answer when it exits with one of
    /// `ok` (`rollback` exits 4, ROLLED_BACK, when it did its job), or why it failed.
    async fn slipway(
        &self,
        args: &[&std::ffi::OsStr],
        ok: &[i32],
    ) -> Result<serde_json::Value, String> {
        let mut c = slipway_stdx::tokio_command(&self.exe);
        c.args(args).args(["--output", "json"]);
        if let Some(s) = &self.store {
            c.arg("--store").arg(s);
        }
        let out = c
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("failed to start {}: {e}", self.exe.display()))?;
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if let Some(run) = answer["run"].as_str()
            && let Ok(mut slot) = self.run.lock()
            && slot.is_none()
        {
            *slot = Some(run.to_owned());
        }
        if out.status.code().is_some_and(|c| ok.contains(&c)) {
            return Ok(answer);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        Err(format!(
            "`slipway {}` exited {} (run {}, state {}){}",
            args.first().map_or("".into(), |a| a.to_string_lossy()),
            out.status
                .code()
                .map_or("by a signal".to_owned(), |c| c.to_string()),
            answer["run"].as_str().unwrap_or("none"),
            answer["state"].as_str().unwrap_or("unknown"),
            last.map(|l| format!(": {l}")).unwrap_or_default(),
        ))
    }

    /// Poll every command probe until it passes, in the deploy's workdir.
    async fn probes_pass(&self) -> Result<(), String> {
        for (service, command, deadline) in &self.probes {
            let until = std::time::Instant::now() + *deadline;
            loop {
                let ok = slipway_stdx::tokio_command("sh")
                    .arg("-c")
                    .arg(command)
                    .current_dir(&self.workdir)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if std::time::Instant::now() >= until {
                    return Err(format!(
                        "service `{service}` did not pass its probe `{command}` within {} after the rollback",
                        slipway_model::duration::format_duration(*deadline)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

impl mig::Redeploy for ReleaseRun {
    fn owns_migrations(&self) -> bool {
        true
    }

    async fn deploy_new(&self) -> Result<(), String> {
        let args = [
            "deploy".as_ref(),
            "-f".as_ref(),
            self.spec.as_os_str(),
            "--env".as_ref(),
            self.env.as_ref(),
            // A rehearsal does not wait for a window or an approval: it says which gate.
            "--no-wait".as_ref(),
        ];
        self.slipway(&args, &[exit::SUCCESS]).await.map(|_| ())
    }

    async fn redeploy_previous(&self) -> Result<(), String> {
        let run = self
            .run_id()
            .ok_or_else(|| "the deploy did not report a run to roll back".to_owned())?;
        let args = [
            "rollback".as_ref(),
            std::ffi::OsStr::new(&run),
            "--reason".as_ref(),
            "rollback rehearsal (slipway rehearse)".as_ref(),
        ];
        let answer = self
            .slipway(&args, &[exit::SUCCESS, exit::ROLLED_BACK])
            .await?;
        if answer["state"] != "rolled_back" {
            return Err(format!(
                "the rollback of run {run} ended {} instead of rolled_back",
                answer["state"]
            ));
        }
        self.probes_pass().await
    }
}
