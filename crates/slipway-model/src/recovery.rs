//! Plan findings about recoverability: scheduled backups against deployment windows, the
//! rollback rehearsal a production environment may require, and the migration dry run an
//! admin policy may require.
//!
//! Pure like the rest of this crate: the caller gathers the facts (the current time, when
//! the release last changed, the rehearsal record found beside the store) and gets findings
//! back. Findings are advisory data and not part of the plan digest, so a rehearsal made
//! after a plan was approved does not invalidate the approval.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::duration::{SpecDuration, format_duration};
use crate::plan::Finding;
use crate::spec::{BackupPolicy, Environment, RehearsalRequirement, ReleaseSpec, Window};

/// Version of [`RehearsalRecord`]; bump when the meaning of a field changes.
pub const REHEARSAL_FORMAT: u32 = 1;

/// Window openings looked at per window: enough for a weekly pattern of daily windows
/// several times over, few enough to stay instant.
const MAX_OPENINGS: usize = 64;
/// How far ahead window openings are looked at; two weeks covers every weekly pattern.
const HORIZON: jiff::SignedDuration = jiff::SignedDuration::from_hours(14 * 24);

/// What `slipway rehearse` writes to `<store dir>/rehearsals/<release>-<version>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RehearsalRecord {
    /// [`REHEARSAL_FORMAT`].
    pub format: u32,
    /// Release name.
    pub release: String,
    /// Release version rehearsed.
    pub version: String,
    /// The (non-production) environment the rehearsal ran on.
    pub environment: String,
    /// When the rehearsal finished.
    pub finished_at: Timestamp,
    /// Measured recovery time, milliseconds.
    pub rto_ms: u64,
    /// Measured recovery point (span of lost writes), milliseconds.
    pub rpo_ms: u64,
    /// Acknowledged writes lost by the rollback.
    pub markers_lost: u64,
    /// The objectives the rehearsal was judged against (from the spec).
    pub objective_rto_ms: Option<u64>,
    /// The RPO objective, milliseconds.
    pub objective_rpo_ms: Option<u64>,
    /// Whether the measurements met those objectives.
    pub objectives_met: bool,
    /// What was rehearsed: the database's rollback, the application's, or both. Records
    /// written before scopes existed rehearsed the database only.
    #[serde(default)]
    pub scope: RehearsalScope,
    /// The full measurement (`slipway_migrate::RehearsalReport`), kept as evidence.
    pub report: serde_json::Value,
}

/// What a rehearsal rolled back, or what a release changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RehearsalScope {
    /// The migrations (undo scripts or a backup restore).
    #[default]
    Database,
    /// The application services (deploy and roll back their steps).
    Application,
    /// Both, in one release run deployed and rolled back.
    Both,
}

impl RehearsalScope {
    /// As written in records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Application => "application",
            Self::Both => "both",
        }
    }

    /// A rehearsal of this scope proves the rollback of what `needed` changes.
    pub fn covers(self, needed: Self) -> bool {
        self == Self::Both || self == needed
    }

    /// What `spec` changes: its migrations (a `kind: migration` service with a migrations
    /// directory), its application (any other service that installs something: steps or
    /// a process), or both. `None`: it changes neither.
    pub fn of_release(spec: &ReleaseSpec) -> Option<Self> {
        use crate::spec::ServiceKind;
        let database = spec
            .services
            .values()
            .any(|s| s.kind == ServiceKind::Migration && s.migrations.is_some());
        let application = spec
            .services
            .values()
            .any(|s| s.kind != ServiceKind::Migration && (!s.steps.is_empty() || s.run.is_some()));
        match (database, application) {
            (true, true) => Some(Self::Both),
            (true, false) => Some(Self::Database),
            (false, true) => Some(Self::Application),
            (false, false) => None,
        }
    }
}

/// Version of [`DryRunRecord`].
pub const DRY_RUN_FORMAT: u32 = 1;

/// What `slipway migrate dry-run` keeps in the store (governance record kind
/// `migration_dry_run`, keyed by the migration set's digest): the newest dry run of exactly
/// these migration files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunRecord {
    /// [`DRY_RUN_FORMAT`].
    pub format: u32,
    /// `sha256:<hex>` of the migration set (every V and U script's checksum).
    pub migration_set: String,
    /// The database that was cloned (URL masked).
    pub database: String,
    /// How the clone was made (never by disturbing the source's sessions).
    pub clone_method: String,
    /// Every migration applied, undo restored the schema, the clone was dropped.
    pub passed: bool,
    /// When the dry run finished.
    pub finished_at: Timestamp,
    /// The full report (`slipway_migrate::DryRunReport`), kept as evidence.
    pub report: serde_json::Value,
}

/// One migration service's dry-run facts for [`dry_run_findings`].
#[derive(Debug, Clone)]
pub struct DryRunFacts {
    /// The service.
    pub service: String,
    /// Its migration set's digest, or why it could not be read.
    pub migration_set: Result<String, String>,
    /// The record found for that digest, or why none could be read.
    pub record: Option<Result<DryRunRecord, String>>,
}

/// Findings for an admin policy's `dry_run` requirement: a blocking finding per migration
/// service without a passed dry run of its exact migration set finished within `max_age`
/// of `now`. `source` names the policy for the message.
pub fn dry_run_findings(
    source: &str,
    max_age: Duration,
    now: Timestamp,
    facts: &[DryRunFacts],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for f in facts {
        let svc = &f.service;
        let todo = format!(
            "run `slipway migrate dry-run --url PRODUCTION_URL --dir <services.{svc}.migrations>` against this store (it clones production without touching its sessions)"
        );
        let mut fail = |why: String| {
            out.push(Finding {
                severity: crate::plan::FindingSeverity::Error,
                code: "migration-dry-run-required".into(),
                message: format!(
                    "{source} requires a passed migration dry run no older than {} of the exact migrations of services.{svc}, but {why}; {todo}",
                    format_duration(max_age)
                ),
            });
        };
        let digest = match &f.migration_set {
            Ok(d) => d,
            Err(e) => {
                fail(format!("its migrations cannot be read ({e})"));
                continue;
            }
        };
        let record = match &f.record {
            None => {
                fail(format!(
                    "the store has no dry run of migration set {digest}"
                ));
                continue;
            }
            Some(Err(e)) => {
                fail(format!("the dry run of {digest} cannot be read ({e})"));
                continue;
            }
            Some(Ok(r)) => r,
        };
        if !record.passed {
            fail(format!(
                "the dry run of {digest} at {} failed",
                record.finished_at
            ));
            continue;
        }
        let age = now.duration_since(record.finished_at);
        let too_old = jiff::SignedDuration::try_from(max_age).is_ok_and(|m| age > m);
        if too_old {
            fail(format!(
                "the last passed dry run of {digest} finished at {}, {} ago",
                record.finished_at,
                format_duration(Duration::try_from(age).unwrap_or(Duration::MAX))
            ));
        }
    }
    out
}

/// Facts the recovery findings need.
#[derive(Debug, Clone, Default)]
pub struct RecoveryFacts {
    /// Window openings are checked from this instant on; `None` skips the backup check.
    pub now: Option<Timestamp>,
    /// When the release last changed (e.g. the spec file's modification time); a rehearsal
    /// older than this does not count.
    pub released_at: Option<Timestamp>,
    /// Where the rehearsal record was looked for, to name it in findings.
    pub rehearsal_path: String,
    /// The record found there, or why none could be read.
    pub rehearsal: Option<Result<RehearsalRecord, String>>,
}

/// Objectives as durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Objectives {
    /// Recovery time objective.
    pub rto: Option<Duration>,
    /// Recovery point objective.
    pub rpo: Option<Duration>,
}

impl Objectives {
    /// The objectives an environment declares (unparsable values were refused by validation
    /// and count as absent here).
    pub fn of(env: &Environment) -> Self {
        let r = env.recovery.as_ref();
        let d = |v: Option<&SpecDuration>| v.and_then(|v| v.get().ok());
        Self {
            rto: d(r.and_then(|r| r.rto.as_ref())),
            rpo: d(r.and_then(|r| r.rpo.as_ref())),
        }
    }

    /// Which objectives the measurements miss, as sentences; empty when all are met.
    pub fn missed(&self, rto_ms: u64, rpo_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(o) = self.rto
            && rto_ms > ms(o)
        {
            out.push(format!(
                "RTO {} exceeds the objective {}",
                format_duration(Duration::from_millis(rto_ms)),
                format_duration(o)
            ));
        }
        if let Some(o) = self.rpo
            && rpo_ms > ms(o)
        {
            out.push(format!(
                "RPO {} exceeds the objective {}",
                format_duration(Duration::from_millis(rpo_ms)),
                format_duration(o)
            ));
        }
        out
    }
}

/// Recovery findings for one environment of a validated spec.
pub fn findings(spec: &ReleaseSpec, env_name: &str, facts: &RecoveryFacts) -> Vec<Finding> {
    let Some(env) = spec.environments.get(env_name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let (Some(b), Some(now)) = (&env.backup, facts.now) {
        backup_age(b, &env.windows, now, &mut out);
    }
    if env.production
        && env.recovery.as_ref().and_then(|r| r.rehearsal) == Some(RehearsalRequirement::Required)
    {
        rehearsal(spec, env_name, env, facts, &mut out);
    }
    out
}

/// For every window, the first opening (from `now`, within [`HORIZON`]) that comes more than
/// `max_age` after the last scheduled backup before it.
fn backup_age(b: &BackupPolicy, windows: &[Window], now: Timestamp, out: &mut Vec<Finding>) {
    let (Some(schedule), Some(max_age)) = (&b.schedule, &b.max_age) else {
        return;
    };
    // Validation refused unparsable values; a spec that skipped it gets no finding rather
    // than a wrong one.
    let (Ok(cron), Ok(max)) = (crate::cron::parse(schedule), max_age.get()) else {
        return;
    };
    let Ok(max) = jiff::SignedDuration::try_from(max) else {
        return;
    };
    let backup_tz = b.timezone.as_deref().unwrap_or("UTC");
    let Ok(btz) = TimeZone::get(backup_tz) else {
        return;
    };
    let (severity, consequence) = if b.required {
        (
            crate::plan::FindingSeverity::Error,
            "backups are required here, so the deploy is blocked",
        )
    } else {
        (
            crate::plan::FindingSeverity::Warning,
            "a rollback would restore an old backup",
        )
    };
    let Ok(end) = now.checked_add(HORIZON) else {
        return;
    };
    for (i, w) in windows.iter().enumerate() {
        let (Ok(wcron), Ok(wtz)) = (crate::cron::parse(&w.cron), TimeZone::get(&w.timezone)) else {
            continue;
        };
        for open in wcron.iter_after(now.to_zoned(wtz)).take(MAX_OPENINGS) {
            if open.timestamp() > end {
                break;
            }
            let last = cron
                .find_previous_occurrence(&open.with_time_zone(btz.clone()), true)
                .ok();
            let age = last
                .as_ref()
                .map(|l| open.timestamp().duration_since(l.timestamp()));
            if age.is_some_and(|a| a <= max) {
                continue;
            }
            let ago = match (&last, age) {
                (Some(l), Some(a)) => format!(
                    "{} after the last scheduled backup at {}",
                    format_duration(Duration::try_from(a).unwrap_or(Duration::MAX)),
                    l.strftime("%Y-%m-%d %H:%M %Z")
                ),
                _ => format!("with no scheduled backup before it (`{schedule}` {backup_tz})"),
            };
            out.push(Finding {
                severity,
                code: "backup-too-old".into(),
                message: format!(
                    "deployment window {i} (`{}` {}) opens at {}, {ago}, more than backup.max_age {max_age}; {consequence}. Schedule a backup within {max_age} before the window opens, or move the window",
                    w.cron,
                    w.timezone,
                    open.strftime("%Y-%m-%d %H:%M %Z"),
                ),
            });
            // One finding per window: the same pattern repeats for the later openings.
            break;
        }
    }
}

fn rehearsal(
    spec: &ReleaseSpec,
    env_name: &str,
    env: &Environment,
    facts: &RecoveryFacts,
    out: &mut Vec<Finding>,
) {
    let name = &spec.metadata.name;
    let version = &spec.metadata.version;
    let stage = spec
        .environments
        .iter()
        .find(|(_, e)| !e.production)
        .map_or("ENV", |(n, _)| n.as_str());
    let todo = format!(
        "run `slipway rehearse -f SPEC --env {stage} --url DB_URL` (a non-production environment)"
    );
    let mut fail = |why: String| {
        out.push(Finding {
            severity: crate::plan::FindingSeverity::Error,
            code: "rollback-not-rehearsed".into(),
            message: format!(
                "rollback not rehearsed: `{env_name}` requires a passing rollback rehearsal of {name} {version}, but {why}; {todo}"
            ),
        });
    };
    let record = match &facts.rehearsal {
        None => {
            return fail(format!("there is no report at {}", facts.rehearsal_path));
        }
        Some(Err(e)) => {
            return fail(format!(
                "the report at {} cannot be read ({e})",
                facts.rehearsal_path
            ));
        }
        Some(Ok(r)) => r,
    };
    if record.release != *name || record.version != *version {
        return fail(format!(
            "the report at {} is for {} {}",
            facts.rehearsal_path, record.release, record.version
        ));
    }
    if let Some(at) = facts.released_at
        && record.finished_at < at
    {
        return fail(format!(
            "the last rehearsal ({}) is older than the release (changed {})",
            record.finished_at, at
        ));
    }
    // A rehearsal proves the rollback of what it rolled back, nothing more: a database-only
    // rehearsal says nothing about redeploying the previous application.
    if let Some(needed) = RehearsalScope::of_release(spec)
        && !record.scope.covers(needed)
    {
        return fail(format!(
            "the rehearsal on `{}` at {} rolled back the {} only, and this release changes {}",
            record.environment,
            record.finished_at,
            record.scope.as_str(),
            match needed {
                RehearsalScope::Both => "its database and its application",
                RehearsalScope::Database => "its database",
                RehearsalScope::Application => "its application",
            }
        ));
    }
    // Judged against this environment's objectives, not the ones the rehearsal used: the
    // rehearsed environment may be laxer than production.
    let missed = Objectives::of(env).missed(record.rto_ms, record.rpo_ms);
    if !missed.is_empty() {
        fail(format!(
            "the rehearsal on `{}` at {} missed the objectives: {}",
            record.environment,
            record.finished_at,
            missed.join("; ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RecoveryPolicy;

    fn spec(yaml_env: Environment) -> ReleaseSpec {
        let mut s: ReleaseSpec = serde_json::from_value(serde_json::json!({
            "apiVersion": "slipway/v1", "kind": "Release",
            "metadata": {"name": "shop", "version": "1.2.0", "type": "feature"},
            "services": {"api": {}},
            "environments": {"staging": {"target": {"exec": {}}}}
        }))
        .unwrap();
        s.environments.insert("prod".into(), yaml_env);
        s
    }

    fn window(cron: &str) -> Window {
        Window {
            cron: cron.into(),
            timezone: "UTC".into(),
            duration: "2h".into(),
        }
    }

    fn env(backup: Option<BackupPolicy>, rehearsal: bool) -> Environment {
        Environment {
            production: true,
            windows: vec![window("0 9 * * *")],
            backup,
            recovery: rehearsal.then(|| RecoveryPolicy {
                rto: Some("5m".into()),
                rpo: Some("0s".into()),
                rehearsal: Some(RehearsalRequirement::Required),
            }),
            ..Default::default()
        }
    }

    fn backup(schedule: &str, max_age: &str, required: bool) -> BackupPolicy {
        BackupPolicy {
            required,
            schedule: Some(schedule.into()),
            timezone: None,
            max_age: Some(max_age.into()),
        }
    }

    fn facts() -> RecoveryFacts {
        RecoveryFacts {
            now: Some("2025-03-03T00:00:00Z".parse().unwrap()),
            released_at: Some("2025-03-01T00:00:00Z".parse().unwrap()),
            rehearsal_path: ".slipway/rehearsals/shop-1.2.0.json".into(),
            rehearsal: None,
        }
    }

    #[test]
    fn backup_shortly_before_the_window_is_fine() {
        let s = spec(env(Some(backup("0 2 * * *", "12h", true)), false));
        assert_eq!(findings(&s, "prod", &facts()), vec![]);
    }

    #[test]
    fn stale_backup_names_window_and_backup_time() {
        // Backups at 02:00 on Sundays only: Monday's 09:00 window is 31h after it.
        let s = spec(env(Some(backup("0 2 * * SUN", "12h", true)), false));
        let f = findings(&s, "prod", &facts());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, crate::plan::FindingSeverity::Error);
        assert_eq!(f[0].code, "backup-too-old");
        assert!(
            f[0].message.contains("window 0 (`0 9 * * *` UTC)"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].message.contains("2025-03-03 09:00"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].message.contains("2025-03-02 02:00"),
            "{}",
            f[0].message
        );
        assert!(f[0].message.contains("31h"), "{}", f[0].message);
    }

    #[test]
    fn stale_backup_is_a_warning_when_not_required() {
        let s = spec(env(Some(backup("0 2 * * SUN", "12h", false)), false));
        let f = findings(&s, "prod", &facts());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, crate::plan::FindingSeverity::Warning);
    }

    fn record(rto_ms: u64, finished: &str) -> RehearsalRecord {
        RehearsalRecord {
            format: REHEARSAL_FORMAT,
            release: "shop".into(),
            version: "1.2.0".into(),
            environment: "staging".into(),
            finished_at: finished.parse().unwrap(),
            rto_ms,
            rpo_ms: 0,
            markers_lost: 0,
            objective_rto_ms: None,
            objective_rpo_ms: None,
            objectives_met: true,
            scope: RehearsalScope::Database,
            report: serde_json::Value::Null,
        }
    }

    fn dry(passed: bool, finished: &str) -> DryRunFacts {
        DryRunFacts {
            service: "db".into(),
            migration_set: Ok("sha256:aa".into()),
            record: Some(Ok(DryRunRecord {
                format: DRY_RUN_FORMAT,
                migration_set: "sha256:aa".into(),
                database: "postgres://db/shop".into(),
                clone_method: "pg_dump".into(),
                passed,
                finished_at: finished.parse().unwrap(),
                report: serde_json::Value::Null,
            })),
        }
    }

    #[test]
    fn dry_run_must_have_passed_recently_for_the_exact_set() {
        let now: Timestamp = "2025-03-03T00:00:00Z".parse().unwrap();
        let day = Duration::from_secs(86_400);
        let f =
            |facts: DryRunFacts| dry_run_findings("admin policy v1 (dry_run)", day, now, &[facts]);
        assert_eq!(f(dry(true, "2025-03-02T12:00:00Z")), vec![]);
        let old = f(dry(true, "2025-03-01T12:00:00Z"));
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].code, "migration-dry-run-required");
        assert_eq!(old[0].severity, crate::plan::FindingSeverity::Error);
        assert!(old[0].message.contains("36h ago"), "{old:?}");
        let failed = f(dry(false, "2025-03-02T12:00:00Z"));
        assert!(failed[0].message.contains("failed"), "{failed:?}");
        let mut none = dry(true, "2025-03-02T12:00:00Z");
        none.record = None;
        let missing = f(none);
        assert!(
            missing[0]
                .message
                .contains("no dry run of migration set sha256:aa")
                && missing[0].message.contains("slipway migrate dry-run"),
            "{missing:?}"
        );
    }

    #[test]
    fn production_needs_a_passing_recent_rehearsal() {
        let s = spec(env(None, true));
        let mut f = facts();
        let missing = findings(&s, "prod", &f);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].code, "rollback-not-rehearsed");
        assert!(missing[0].message.contains("rollback not rehearsed"));
        assert!(missing[0].message.contains("slipway rehearse"));
        assert!(missing[0].message.contains("--env staging"));

        f.rehearsal = Some(Ok(record(1_000, "2025-02-01T00:00:00Z")));
        let old = findings(&s, "prod", &f);
        assert!(old[0].message.contains("older than the release"), "{old:?}");

        f.rehearsal = Some(Ok(record(600_000, "2025-03-02T00:00:00Z")));
        let slow = findings(&s, "prod", &f);
        assert!(
            slow[0].message.contains("RTO 10m exceeds the objective 5m"),
            "{slow:?}"
        );

        f.rehearsal = Some(Ok(record(1_000, "2025-03-02T00:00:00Z")));
        assert_eq!(findings(&s, "prod", &f), vec![]);
        // A release that also changes an application service needs a rehearsal of both.
        let mut both = spec(env(None, true));
        both.services.insert(
            "db".into(),
            serde_json::from_value(serde_json::json!({"kind": "migration", "migrations": "m"}))
                .unwrap(),
        );
        both.services.get_mut("api").unwrap().run =
            Some(serde_json::from_value(serde_json::json!({"command": "./api"})).unwrap());
        assert_eq!(
            RehearsalScope::of_release(&both),
            Some(RehearsalScope::Both)
        );
        let narrow = findings(&both, "prod", &f);
        assert!(
            narrow[0].message.contains("rolled back the database only"),
            "{narrow:?}"
        );
        let mut wide = record(1_000, "2025-03-02T00:00:00Z");
        wide.scope = RehearsalScope::Both;
        f.rehearsal = Some(Ok(wide));
        assert_eq!(findings(&both, "prod", &f), vec![]);
        f.rehearsal = Some(Ok(record(1_000, "2025-03-02T00:00:00Z")));
        // Staging itself never needs one.
        assert_eq!(findings(&s, "staging", &RecoveryFacts::default()), vec![]);
    }
}
