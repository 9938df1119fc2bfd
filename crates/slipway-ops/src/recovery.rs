//! The facts-gathering half of the recovery findings a plan carries (the pure half is
//! `slipway_model::recovery`): the rollback rehearsal record kept in the store, the spec's
//! modification time as the release time, now.
//!
//! A rehearsal record is a governance record of kind [`REHEARSAL`] (key: `[release,
//! version]` as JSON), committed to by an audit chain entry; it is trusted only once the
//! store's evidence verifies, so a record edited by hand (a failed rehearsal made to pass)
//! is refused, and the plan's finding says why.
//!
//! A migration dry run (`slipway migrate dry-run`) is kept the same way: a governance record
//! of kind [`DRY_RUN`] keyed by the migration set's digest, so an admin policy's `dry_run:
//! { max_age }` is judged against a passed dry run of exactly the files this release
//! applies (`dry_run_findings`).

use std::path::{Path, PathBuf};

use slipway_model::plan::Finding;
use slipway_model::recovery::{RecoveryFacts, RehearsalRecord, findings};
use slipway_model::spec::ReleaseSpec;
use slipway_model::validate::LoadedSpec;

use crate::error::{ErrorKind, OpsError, OpsResult};

/// Directory beside the store named by `store` where rehearsal records live.
pub fn rehearsal_dir(store: Option<&str>) -> OpsResult<PathBuf> {
    crate::session::layout_for(store)
        .map(|(_, layout)| layout.rehearsals())
        .ok_or_else(|| {
            OpsError::new(
                ErrorKind::Store,
                "failed to resolve the store's directory for rehearsal records",
            )
        })
}

/// The store's backup directory: where deploys keep the backups `backup.required` takes
/// before migrating, and where `rehearse --from-backup latest` looks by default.
pub fn backup_dir(store: Option<&str>) -> OpsResult<PathBuf> {
    crate::session::layout_for(store)
        .map(|(_, layout)| layout.backups())
        .ok_or_else(|| {
            OpsError::new(
                ErrorKind::Store,
                "failed to resolve the store's directory for backups",
            )
        })
}

/// Record kind of a rehearsal.
pub const REHEARSAL: &str = "rehearsal";

/// The record's key: `[release, version]` as JSON, unambiguous whatever the names hold.
pub fn record_key(spec: &ReleaseSpec) -> String {
    serde_json::json!([spec.metadata.name, spec.metadata.version]).to_string()
}

/// The rehearsal record of `spec` in the store `store` names, read only after the store's
/// evidence verified; where it was looked for, for the findings. `None`: no store or no
/// record.
async fn read_record(
    spec: &ReleaseSpec,
    store: Option<&str>,
) -> (String, Option<Result<RehearsalRecord, String>>) {
    let Some((loc, _)) = crate::session::layout_for(store) else {
        return (
            "(the store)".into(),
            Some(Err("the store's location cannot be resolved".into())),
        );
    };
    let place = format!(
        "{} (rehearsal record of {} {})",
        loc.display(),
        spec.metadata.name,
        spec.metadata.version
    );
    // Planning never creates a store as a side effect (a PostgreSQL database without
    // slipway's schema included); an unreachable one is reported by the open below.
    if matches!(slipway_store::exists(&loc).await, Ok(false)) {
        return (place, None);
    }
    let found = async {
        use slipway_engine::Store;
        let store = slipway_store::open(&loc).await.map_err(|e| e.to_string())?;
        let v = slipway_engine::evidence::verify_store(&store)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(b) = v.result {
            return Err(format!(
                "the store's evidence does not verify, so no record in it is trusted: {b}"
            ));
        }
        let Some(r) = store
            .record(REHEARSAL, &record_key(spec))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        serde_json::from_str::<RehearsalRecord>(&r.data)
            .map(Some)
            .map_err(|e| format!("not a rehearsal record: {e}"))
    }
    .await;
    (place, found.transpose())
}

/// Record kind of a migration dry run (key: the migration set's digest).
pub const DRY_RUN: &str = "migration_dry_run";

/// Keep a dry run's result in the store as a governance record (its chain entry commits to
/// it and says who tried which migration set, with which outcome); returns where.
pub async fn record_dry_run(
    session: &crate::session::Session,
    record: &slipway_model::recovery::DryRunRecord,
) -> OpsResult<String> {
    use slipway_engine::Store;
    let actor = session.actor_id().await?;
    let data = serde_json::to_value(record).map_err(|e| {
        OpsError::new(
            ErrorKind::Internal,
            format!("failed to serialise the dry-run record: {e}"),
        )
    })?;
    session
        .store
        .append_governance(vec![slipway_engine::store::GovernanceRecord {
            kind: DRY_RUN.to_owned(),
            key: slipway_engine::store::RecordKey::Given(record.migration_set.clone()),
            data: Some(data),
            action: "migration_dry_run_recorded".to_owned(),
            summary: serde_json::json!({"migration_set": record.migration_set,
                "database": record.database, "passed": record.passed}),
            actor,
            at: record.finished_at,
            if_seq: None,
        }])
        .await?;
    Ok(format!(
        "{} as dry-run record {}",
        session.store.location(),
        record.migration_set
    ))
}

/// The record `kind`/`key` of the store `store` names, read only after the store's evidence
/// verified (a record edited by hand is never trusted). `Ok(None)`: no store or no record.
async fn trusted_record(
    store: Option<&str>,
    kind: &str,
    key: &str,
) -> Result<Option<String>, String> {
    use slipway_engine::Store;
    let Some((loc, _)) = crate::session::layout_for(store) else {
        return Err("the store's location cannot be resolved".into());
    };
    if matches!(slipway_store::exists(&loc).await, Ok(false)) {
        return Ok(None);
    }
    let store = slipway_store::open(&loc).await.map_err(|e| e.to_string())?;
    let v = slipway_engine::evidence::verify_store(&store)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(b) = v.result {
        return Err(format!(
            "the store's evidence does not verify, so no record in it is trusted: {b}"
        ));
    }
    Ok(store
        .record(kind, key)
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.data))
}

/// Findings for the admin policy's `dry_run` requirement (none without one): for every
/// migration service with migrations this release still applies in `env` (`applied`: the
/// latest version applied per service, where it could be read), a passed dry run of its
/// exact migration set, recorded in the store, no older than the policy's `max_age`.
pub async fn dry_run_findings(
    spec: &ReleaseSpec,
    env: &str,
    spec_dir: &Path,
    store: Option<&str>,
    policy: Option<&slipway_model::admin_policy::AppliedPolicy>,
    applied: &std::collections::BTreeMap<String, u32>,
) -> Vec<Finding> {
    use slipway_model::recovery::{DryRunFacts, DryRunRecord};
    let Some((policy, rule)) = policy.and_then(|p| p.env.dry_run.as_ref().map(|d| (p, d))) else {
        return Vec::new();
    };
    let Some(max_age) = rule.max_age() else {
        return Vec::new();
    };
    let mut facts = Vec::new();
    for (service, set) in slipway_providers::migrate::migration_sets(spec, env, spec_dir) {
        let migration_set = match set {
            Ok((digest, versions)) => {
                // Nothing of this set left to apply there: nothing to dry-run.
                let latest = applied.get(&service).copied().map(i64::from);
                if latest.is_some_and(|l| versions.iter().all(|v| *v <= l)) {
                    continue;
                }
                Ok(digest)
            }
            Err(e) => Err(e),
        };
        let record = match &migration_set {
            Ok(d) => trusted_record(store, DRY_RUN, d)
                .await
                .transpose()
                .map(|r| {
                    r.and_then(|text| {
                        serde_json::from_str::<DryRunRecord>(&text)
                            .map_err(|e| format!("not a dry-run record: {e}"))
                    })
                }),
            Err(_) => None,
        };
        facts.push(DryRunFacts {
            service,
            migration_set,
            record,
        });
    }
    slipway_model::recovery::dry_run_findings(
        &policy.source("dry_run"),
        max_age,
        slipway_stdx::now(),
        &facts,
    )
}

/// `<release>-<version>.json`, with anything but `[A-Za-z0-9._-]` replaced so a release
/// name cannot point outside the directory (the file older builds kept the record in).
pub fn record_name(spec: &ReleaseSpec) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!(
        "{}-{}.json",
        clean(&spec.metadata.name),
        clean(&spec.metadata.version)
    )
}

/// Recovery findings for a plan: gathers the facts (now, the spec's modification time as
/// the release time, the rehearsal record in the store) and asks the pure planner. The
/// store is read only when the environment requires a rehearsal.
pub async fn plan_findings(
    file: &Path,
    loaded: &LoadedSpec,
    env: &str,
    store: Option<&str>,
) -> Vec<Finding> {
    let required = loaded.spec.environments.get(env).is_some_and(|e| {
        e.production
            && e.recovery.as_ref().and_then(|r| r.rehearsal)
                == Some(slipway_model::spec::RehearsalRequirement::Required)
    });
    let (path, rehearsal) = if required {
        read_record(&loaded.spec, store).await
    } else {
        (String::new(), None)
    };
    let released_at = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok());
    findings(
        &loaded.spec,
        env,
        &RecoveryFacts {
            now: Some(slipway_stdx::now()),
            released_at,
            rehearsal_path: path,
            rehearsal,
        },
    )
}
