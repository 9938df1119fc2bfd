//! Config rendered at install time (`render-config` steps, `slipway_providers::config`):
//! wiring the target into deploys and showing what was rendered in `slipway status`.

use std::path::Path;
use std::sync::Arc;

use slipway_engine::{EngineEvent, Notice, Target};
use slipway_model::plan::Plan;
use slipway_package::Redactor;
use slipway_providers::ExecTarget;
use slipway_providers::config::{ConfigTarget, env_root, plan_redactor};

/// The `render-config` target of a plan and what the `exec` target needs for it: the
/// environment's config root (so steps get `SLIPWAY_CONFIG_DIR`) and a redactor that also
/// knows `secret://file/` values, since a step may print the config it was given.
/// Without a plan (status, approvals) there is nothing to render and `fallback` masks.
pub(crate) fn targets(
    db: &Path,
    spec_dir: &Path,
    plan: Option<&Plan>,
    fallback: Redactor,
) -> (
    impl FnOnce(ExecTarget) -> ExecTarget + use<>,
    Option<Arc<dyn Target>>,
) {
    let store_dir = db.parent().unwrap_or(Path::new(".")).to_path_buf();
    let root = plan.map(|p| env_root(&store_dir, &p.environment));
    let redactor = plan.map_or(fallback, |p| plan_redactor(p, spec_dir));
    let config: Option<Arc<dyn Target>> = match (plan, &root) {
        (Some(p), Some(r)) => Some(Arc::new(ConfigTarget::new(p.clone(), spec_dir, r))),
        _ => None,
    };
    let exec = move |e: ExecTarget| {
        let e = e.with_redactor(redactor);
        match root {
            Some(r) => e.with_config_root(r),
            None => e,
        }
    };
    (exec, config)
}

/// The config files rendered by a run, from its journal's `config_rendered` progress
/// events (the last render of each file wins): digests and secret names, no values.
pub(crate) fn rendered(journal: &[Notice]) -> Vec<serde_json::Value> {
    let mut by_path = std::collections::BTreeMap::new();
    for n in journal {
        if let EngineEvent::StepProgress { step, detail, .. } = &n.event
            && detail.get("event").and_then(|e| e.as_str()) == Some("config_rendered")
        {
            for f in detail
                .get("files")
                .and_then(|f| f.as_array())
                .into_iter()
                .flatten()
            {
                let mut f = f.clone();
                if let Some(m) = f.as_object_mut() {
                    m.insert("step".into(), serde_json::Value::from(step.as_str()));
                }
                let path = f
                    .get("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default()
                    .to_owned();
                by_path.insert(path, f);
            }
        }
    }
    by_path.into_values().collect()
}
