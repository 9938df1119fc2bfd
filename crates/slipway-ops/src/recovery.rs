//! The facts-gathering half of the recovery findings a plan carries (the pure half is
//! `slipway_model::recovery`): the rollback rehearsal record kept beside the store, the
//! spec's modification time as the release time, now.

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

/// `<release>-<version>.json`, with anything but `[A-Za-z0-9._-]` replaced so a release
/// name cannot point outside the directory.
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
/// the release time, the rehearsal record beside the store) and asks the pure planner.
pub fn plan_findings(
    file: &Path,
    loaded: &LoadedSpec,
    env: &str,
    store: Option<&str>,
) -> Vec<Finding> {
    let path = match rehearsal_dir(store) {
        Ok(d) => d.join(record_name(&loaded.spec)),
        Err(e) => PathBuf::from(format!("(store: {})", e.message)),
    };
    let rehearsal = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
        Ok(bytes) => Some(
            serde_json::from_slice::<RehearsalRecord>(&bytes)
                .map_err(|e| format!("not a rehearsal record: {e}")),
        ),
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
            rehearsal_path: path.display().to_string(),
            rehearsal,
        },
    )
}
