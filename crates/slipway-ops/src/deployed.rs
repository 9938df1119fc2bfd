//! What runs where, from the store's run history: per service, the version the newest
//! succeeded run of an environment deployed, and that run. A run that failed, aborted or
//! rolled back never counts — what runs after it is what ran before it. The spec's
//! `deployed:` list is only an explicitly labelled override for systems Slipway does not
//! deploy (see `planning`).

use std::collections::BTreeMap;

use slipway_engine::Store;
use slipway_model::plan::Plan;

use crate::error::OpsResult;
use crate::runs::plan_of;

/// The version each service of a plan deploys (its own `version`, else its release's).
pub fn planned_versions(plan: &Plan) -> Vec<(String, String)> {
    plan.services
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                s.version
                    .clone()
                    .unwrap_or_else(|| plan.release.version.clone()),
            )
        })
        .collect()
}

/// Per service, the version the newest succeeded run in `environment` deployed and that
/// run's id (runs other than `except`).
pub async fn running_versions(
    store: &dyn Store,
    environment: &str,
    except: Option<&str>,
) -> OpsResult<BTreeMap<String, (String, String)>> {
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    for r in store.runs(1000).await? {
        if r.environment != environment
            || r.state != slipway_engine::RunState::Succeeded
            || Some(r.id.as_str()) == except
        {
            continue;
        }
        let Some(full) = store.run(&r.id).await? else {
            continue;
        };
        let Some(p) = plan_of(&full) else { continue };
        // Newest first: the first run naming a service is what runs there.
        for (service, version) in planned_versions(&p) {
            out.entry(service).or_insert((version, r.id.clone()));
        }
    }
    Ok(out)
}
