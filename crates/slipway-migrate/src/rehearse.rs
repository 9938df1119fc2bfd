//! Rollback rehearsal on a non-production database: back up, apply the pending migrations
//! while a task writes marker rows at a steady rate, roll back (undo scripts or restore the
//! backup), redeploy the previous version through a callback, and measure
//!
//! - **RTO**: from the start of the rollback until the previous version serves again: the
//!   database part is done, the redeploy callback returned, a fresh connection sees the
//!   previous schema version in the history table, and a marker write succeeds after that.
//! - **RPO**: marker rows whose insert was acknowledged but that are gone after the rollback
//!   (restoring a backup loses every row written after it; undo scripts should lose none), and
//!   the time span those rows cover.
//!
//! The process/version redeploy is the engine's ([`Redeploy`]); this crate only does the
//! database part. Markers live in `slipway_rehearsal_marker`, dropped at the end. The caller
//! is responsible for pointing this at a non-production database.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backup::{Backup, backup, restore};
use crate::error::{Error, Result};
use crate::files::MigrationSet;
use crate::migrate::{ApplyOptions, ApplyReport, apply_on, read_history, undo_on};
use crate::schema::snapshot;
use crate::target::{Conn, Target};

/// How long the recovery probe may take before the rehearsal fails.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);
/// One marker write may take this long (a restore can hold locks).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the database is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackMethod {
    /// Run the `U` scripts down to the previous version (no data loss expected).
    Undo,
    /// Restore the backup taken before applying (loses writes made after it).
    RestoreBackup,
}

/// Declared objectives.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Objectives {
    pub rto: Duration,
    pub rpo_rows: u64,
}

/// What to rehearse.
#[derive(Debug, Clone)]
pub struct RehearsalConfig {
    pub url: String,
    pub dir: PathBuf,
    pub store_dir: PathBuf,
    pub who: String,
    pub rollback: RollbackMethod,
    /// Pause between marker writes.
    pub marker_interval: Duration,
    /// Markers acknowledged on the new version before rolling back.
    pub soak_markers: u32,
    pub objectives: Option<Objectives>,
    /// A real backup (e.g. production's newest, [`crate::backup::latest`]) to roll back to
    /// by restoring it, instead of one the rehearsal takes itself: the rehearsal then proves
    /// that backup restores and measures how old its data is (the RPO of a restore).
    pub restore_from: Option<Backup>,
}

/// The rest of the release around the database: the engine's part of a deploy and of a
/// rollback.
///
/// Two shapes: a database-only rehearsal (the default methods) where this crate applies
/// and rolls back the migrations itself and the callback only brings the previous artifacts
/// back; or a whole-release rehearsal ([`Redeploy::owns_migrations`]) where the callback
/// deploys the release through the engine (migrations included, as in production) and rolls
/// that run back, and this crate only writes markers and measures.
pub trait Redeploy {
    /// `true` when [`Redeploy::deploy_new`] applies the migrations and
    /// [`Redeploy::redeploy_previous`] undoes them.
    fn owns_migrations(&self) -> bool {
        false
    }
    /// Deploy the new version; `Err` is a human-readable reason.
    fn deploy_new(&self) -> impl Future<Output = std::result::Result<(), String>> + Send {
        async { Ok(()) }
    }
    /// Bring the previous version back into service; `Err` is a human-readable reason.
    fn redeploy_previous(&self) -> impl Future<Output = std::result::Result<(), String>> + Send;
}

/// No process to redeploy: rehearse the database part only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRedeploy;

impl Redeploy for NoRedeploy {
    async fn redeploy_previous(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// What a rehearsal measured.
#[derive(Debug, Clone, Serialize)]
pub struct RehearsalReport {
    pub database: String,
    pub rollback: RollbackMethod,
    /// `taken by the rehearsal` or `from the backup store` ([`RehearsalConfig::restore_from`]).
    pub backup_origin: &'static str,
    /// Age of the restored backup's data when the rollback started (from-backup only): the
    /// writes a restore of it loses.
    pub backup_age_ms: Option<u64>,
    pub previous_version: Option<i64>,
    pub new_version: Option<i64>,
    pub backup: Backup,
    pub apply: ApplyReport,
    pub apply_ms: u64,
    /// The rollback: the database part (undo or restore), or for a whole-release
    /// rehearsal the engine's rollback run of every step.
    pub rollback_ms: u64,
    /// Bringing the previous artifacts back after the database part (0 when the
    /// rollback run did both).
    pub redeploy_ms: u64,
    /// `release`: the engine deployed and rolled back the whole release; `database`: the
    /// migrations only.
    pub scope: &'static str,
    pub rto_ms: u64,
    pub markers_written: u64,
    pub markers_lost: u64,
    /// Time span between the first lost marker and the start of the rollback (0 when none).
    pub rpo_ms: u64,
    pub marker_write_errors: u64,
    /// The schema after rollback equals the one before the rehearsal.
    pub schema_restored: bool,
    pub schema_differences: Vec<String>,
    /// `None` without objectives.
    pub objectives_met: Option<bool>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Markers {
    acked: Vec<(i64, Instant)>,
    errors: u64,
}

/// Run the rehearsal.
pub async fn rehearse<R: Redeploy>(cfg: &RehearsalConfig, redeploy: &R) -> Result<RehearsalReport> {
    let target = Target::parse(&cfg.url)?;
    let set = MigrationSet::load(&cfg.dir)?;
    let q = |what: &'static str| {
        let url = target.display();
        move |source| Error::Query {
            what: what.into(),
            url,
            source,
        }
    };
    let mut conn = target.connect(true).await?;
    conn.exec(
        "CREATE TABLE IF NOT EXISTS slipway_rehearsal_marker (seq BIGINT PRIMARY KEY, written_at TEXT NOT NULL);\n\
         DELETE FROM slipway_rehearsal_marker;",
    )
    .await
    .map_err(q("create the marker table"))?;
    let previous_version = latest(&mut conn, &target).await?;
    let before = snapshot(&mut conn, &target).await?;
    conn.close().await;

    let markers = Arc::new(Mutex::new(Markers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_markers(
        target.clone(),
        cfg.marker_interval,
        markers.clone(),
        stop.clone(),
    ));
    let outcome = rehearse_inner(cfg, redeploy, &target, &set, previous_version, &markers).await;
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let (mut report, rollback_start) = match outcome {
        Ok(r) => r,
        Err(e) => {
            cleanup(&target).await;
            return Err(e);
        }
    };

    let mut conn = target.connect(false).await?;
    let present: Vec<i64> = match &mut conn {
        Conn::Pg(c) => {
            sqlx::query_scalar("SELECT seq FROM slipway_rehearsal_marker")
                .fetch_all(&mut *c)
                .await
        }
        Conn::Sqlite(c) => {
            sqlx::query_scalar("SELECT seq FROM slipway_rehearsal_marker")
                .fetch_all(&mut *c)
                .await
        }
    }
    .map_err(q("read the markers"))?;
    let after = snapshot(&mut conn, &target).await;
    conn.close().await;
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    {
        let m = markers
            .lock()
            .map_err(|_| Error::Rehearsal("the marker writer panicked".into()))?;
        let lost: Vec<Instant> = m
            .acked
            .iter()
            .filter(|(s, _)| !present.contains(s))
            .map(|(_, at)| *at)
            .collect();
        report.markers_written = m.acked.len() as u64;
        report.markers_lost = lost.len() as u64;
        report.marker_write_errors = m.errors;
        report.rpo_ms = lost.iter().min().map_or(0, |first| {
            millis(rollback_start.saturating_duration_since(*first))
        });
        // Restoring a real backup loses everything written since it was taken, whether or
        // not the rehearsal's own markers noticed.
        if let Some(age) = report.backup_age_ms {
            report.rpo_ms = report.rpo_ms.max(age);
        }
    }
    report.schema_differences = before.diff(&after?);
    report.schema_restored = report.schema_differences.is_empty();
    report.objectives_met = cfg.objectives.map(|o| {
        u128::from(report.rto_ms) <= o.rto.as_millis() && report.markers_lost <= o.rpo_rows
    });
    cleanup(&target).await;
    Ok(report)
}

async fn rehearse_inner<R: Redeploy>(
    cfg: &RehearsalConfig,
    redeploy: &R,
    target: &Target,
    set: &MigrationSet,
    previous_version: Option<i64>,
    markers: &Arc<Mutex<Markers>>,
) -> Result<(RehearsalReport, Instant)> {
    let acked = || markers.lock().map(|m| m.acked.len()).unwrap_or(0);
    wait_for(|| acked() >= 1, "the first marker write").await?;
    let backup = match &cfg.restore_from {
        Some(b) => b.clone(),
        None => backup(&cfg.url, &cfg.store_dir).await?,
    };

    let t = Instant::now();
    let apply = if redeploy.owns_migrations() {
        redeploy
            .deploy_new()
            .await
            .map_err(|e| Error::Rehearsal(format!("deploy the release: {e}")))?;
        // The engine applied them; what it applied is in the history table.
        let mut conn = target.connect(false).await?;
        let history = read_history(&mut conn, target).await;
        conn.close().await;
        let history = history?;
        let newest = history
            .iter()
            .filter(|h| h.success)
            .map(|h| h.version)
            .max();
        ApplyReport {
            database: target.display(),
            applied: Vec::new(),
            missing: Vec::new(),
            roll_forward_only: Vec::new(),
            latest_applied: newest.filter(|v| Some(*v) != previous_version),
        }
    } else {
        let mut conn = target.connect(false).await?;
        let apply = apply_on(
            &mut conn,
            target,
            set,
            &ApplyOptions {
                who: cfg.who.clone(),
                allow_out_of_order: false,
            },
        )
        .await;
        conn.close().await;
        let apply = apply?;
        redeploy
            .deploy_new()
            .await
            .map_err(|e| Error::Rehearsal(format!("deploy the new version: {e}")))?;
        apply
    };
    let apply_ms = millis(t.elapsed());
    let new_version = apply.latest_applied;
    let soaked = acked() + cfg.soak_markers as usize;
    wait_for(|| acked() >= soaked, "marker writes on the new version").await?;

    let rollback_start = Instant::now();
    let backup_age_ms = cfg.restore_from.as_ref().map(|b| {
        b.created_at
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|at| {
                std::time::Duration::try_from(slipway_stdx::now().duration_since(at)).ok()
            })
            .map_or(u64::MAX, millis)
    });
    let (rollback_ms, redeploy_ms) = if redeploy.owns_migrations() {
        // One rollback run undoes the whole release, migrations included.
        redeploy
            .redeploy_previous()
            .await
            .map_err(|e| Error::Rehearsal(format!("roll the release back: {e}")))?;
        (millis(rollback_start.elapsed()), 0)
    } else {
        match cfg.rollback {
            RollbackMethod::Undo => {
                let mut conn = target.connect(false).await?;
                let r = undo_on(&mut conn, target, set, previous_version.unwrap_or(0)).await;
                conn.close().await;
                r?;
            }
            RollbackMethod::RestoreBackup => {
                restore(&backup, &cfg.url).await?;
                if cfg.restore_from.is_some() {
                    restored_as_before(target, &backup, previous_version).await?;
                }
            }
        }
        let rollback_ms = millis(rollback_start.elapsed());
        let t = Instant::now();
        redeploy
            .redeploy_previous()
            .await
            .map_err(|e| Error::Rehearsal(format!("redeploy the previous version: {e}")))?;
        (rollback_ms, millis(t.elapsed()))
    };

    // Serving again: the previous version is visible to a new connection, then a marker
    // written after that point is acknowledged.
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        if let Ok(mut c) = target.connect(false).await {
            let v = latest(&mut c, target).await;
            c.close().await;
            if matches!(v, Ok(v) if v == previous_version) {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Rehearsal(format!(
                "the previous version V{previous_version:?} was not back within {RECOVERY_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let visible = Instant::now();
    wait_for(
        || {
            markers
                .lock()
                .map(|m| m.acked.last().is_some_and(|(_, at)| *at > visible))
                .unwrap_or(false)
        },
        "a marker write after the rollback",
    )
    .await?;
    let rto_ms = millis(rollback_start.elapsed());
    Ok((
        RehearsalReport {
            database: target.display(),
            rollback: cfg.rollback,
            backup_origin: if cfg.restore_from.is_some() {
                "from the backup store"
            } else {
                "taken by the rehearsal"
            },
            backup_age_ms,
            previous_version,
            new_version,
            backup,
            apply,
            apply_ms,
            rollback_ms,
            redeploy_ms,
            scope: if redeploy.owns_migrations() {
                "release"
            } else {
                "database"
            },
            rto_ms,
            markers_written: 0,
            markers_lost: 0,
            rpo_ms: 0,
            marker_write_errors: 0,
            schema_restored: false,
            schema_differences: Vec::new(),
            objectives_met: None,
        },
        rollback_start,
    ))
}

/// After restoring a backup the rehearsal did not take: it must hold the version the
/// rehearsal database was at before the release (else the rehearsal database does not
/// mirror what the backup is of, and "back to the previous version" cannot be judged), and
/// the marker table — which a real backup does not have — is made again so the application's
/// writes can be seen resuming.
async fn restored_as_before(target: &Target, backup: &Backup, previous: Option<i64>) -> Result<()> {
    let mut conn = target.connect(false).await?;
    let version = latest(&mut conn, target).await;
    let made = conn
        .exec("CREATE TABLE IF NOT EXISTS slipway_rehearsal_marker (seq BIGINT PRIMARY KEY, written_at TEXT NOT NULL)")
        .await;
    conn.close().await;
    let version = version?;
    made.map_err(|source| Error::Query {
        what: "create the marker table after the restore".into(),
        url: target.display(),
        source,
    })?;
    if version != previous {
        return Err(Error::Rehearsal(format!(
            "the backup {} (of {}, {}) holds migration V{}, but the rehearsal database was at V{} before the release; restore that backup into it first (slipway backup restore) so the rehearsal starts where the backup's database is",
            backup.digest,
            backup.source,
            backup.created_at,
            version.unwrap_or(0),
            previous.unwrap_or(0)
        )));
    }
    Ok(())
}

/// Poll `done` every few milliseconds until it holds or the deadline passes.
async fn wait_for(done: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    while !done() {
        if Instant::now() >= deadline {
            return Err(Error::Rehearsal(format!(
                "wait for {what}: nothing within {RECOVERY_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn latest(conn: &mut Conn, target: &Target) -> Result<Option<i64>> {
    Ok(read_history(conn, target)
        .await?
        .iter()
        .filter(|h| h.success)
        .map(|h| h.version)
        .max())
}

/// Write one marker per interval on a fresh connection each time, so that a restored SQLite
/// file or a recreated PostgreSQL table is what the next write sees (as a restarted
/// application would).
async fn write_markers(
    target: Target,
    interval: Duration,
    markers: Arc<Mutex<Markers>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let write = async {
            let mut c = target.connect(false).await.map_err(|e| e.to_string())?;
            let now = crate::clock::now_rfc3339();
            let r = match &mut c {
                Conn::Pg(c) => sqlx::query(
                    "INSERT INTO slipway_rehearsal_marker (seq, written_at) VALUES ($1, $2)",
                )
                .bind(seq)
                .bind(&now)
                .execute(&mut *c)
                .await
                .map(|_| ()),
                Conn::Sqlite(c) => sqlx::query(
                    "INSERT INTO slipway_rehearsal_marker (seq, written_at) VALUES ($1, $2)",
                )
                .bind(seq)
                .bind(&now)
                .execute(&mut *c)
                .await
                .map(|_| ()),
            };
            c.close().await;
            r.map_err(|e| e.to_string())
        };
        let ok = matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())));
        if let Ok(mut m) = markers.lock() {
            if ok {
                m.acked.push((seq, Instant::now()));
            } else {
                m.errors += 1;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn cleanup(target: &Target) {
    if let Ok(mut c) = target.connect(false).await {
        let _ = c
            .exec("DROP TABLE IF EXISTS slipway_rehearsal_marker")
            .await;
        c.close().await;
    }
}
