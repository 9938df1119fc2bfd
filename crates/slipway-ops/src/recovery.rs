//! The facts-gathering half of the recovery findings a plan carries (the pure half is
//! `slipway_model::recovery`): the rollback rehearsal record kept in the store, the spec's
//! modification time as the release time, now.
//!
//! A rehearsal record is a governance record of kind [`REHEARSAL`] (key: `[release,
//! version]` as JSON), committed to by an audit chain entry; it is trusted only once the
//! store's evidence verifies, so a record edited by hand (a failed rehearsal made to pass)
//! is refused, and the plan's finding says why.

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
