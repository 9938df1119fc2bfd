//! Environment parity (`slipway diff`): what differs between two environments — not only
//! the spec's shape, but what runs there, from the store's history: the version each
//! service runs (the newest succeeded run that deployed it; a rolled-back or failed run
//! changes nothing), the artifact digests it installed, the config it rendered (template
//! and rendering digests, secrets masked), its replicas — judged against the spec's
//! parity standard (`parity: { allow: [...] }`).
//!
//! Every difference says where its values come from (`history`, `declared` — the spec's
//! `deployed:` for a system Slipway does not deploy there — or `spec`) and, when the
//! standard allows it, which entry does. Only differences it does not allow are drift.

use std::collections::{BTreeMap, BTreeSet};

use slipway_engine::Store;
use slipway_model::spec::{Environment, ReleaseSpec};

use crate::error::OpsResult;

/// One difference between two environments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    /// `variable`, `version`, `artifact`, `config`, `replicas`, `target` or `policy`.
    pub kind: String,
    /// What differs (a variable, a service, `service/dest`, a policy field).
    pub item: String,
    /// Value in the first environment (`None`: absent).
    pub left: Option<String>,
    /// Value in the second.
    pub right: Option<String>,
    /// Where the values come from: `history`, `declared` or `spec`.
    pub source: String,
    /// The entry of the parity standard that allows it, if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<String>,
}

/// What one environment runs, from the store's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Live {
    /// Per service: version, the run that deployed it.
    pub versions: BTreeMap<String, (String, String)>,
    /// Per service: the artifact sha256 it installed.
    pub artifacts: BTreeMap<String, String>,
    /// Per `service/dest`: `template <sha256> rendered <sha256>` (secrets masked).
    pub config: BTreeMap<String, String>,
    /// Per service: replicas.
    pub replicas: BTreeMap<String, u32>,
}

/// The comparison of two environments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Parity {
    /// The first environment.
    pub left: String,
    /// The second.
    pub right: String,
    /// No difference the standard does not allow.
    pub in_parity: bool,
    /// Every difference, allowed or not.
    pub differences: Vec<Difference>,
    /// What runs in each, from the store's history.
    pub live: BTreeMap<String, Live>,
}

/// What runs in `environment`: per service, from the newest succeeded run that deployed
/// it there.
pub async fn live(store: &dyn Store, environment: &str) -> OpsResult<Live> {
    let mut out = Live::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for r in store.runs(1000).await? {
        if r.environment != environment || r.state != slipway_engine::RunState::Succeeded {
            continue;
        }
        let Some(full) = store.run(&r.id).await? else {
            continue;
        };
        let Some(plan) = crate::runs::plan_of(&full) else {
            continue;
        };
        let fresh: Vec<String> = plan
            .services
            .keys()
            .filter(|s| !seen.contains(*s))
            .cloned()
            .collect();
        if fresh.is_empty() {
            continue;
        }
        let journal = store.journal(&r.id, 0).await?;
        let rendered = crate::views::rendered_config(&journal);
        for name in fresh {
            let svc = &plan.services[&name];
            out.versions.insert(
                name.clone(),
                (
                    svc.version
                        .clone()
                        .unwrap_or_else(|| plan.release.version.clone()),
                    r.id.clone(),
                ),
            );
            if let Some(a) = &svc.artifact {
                out.artifacts
                    .insert(name.clone(), a.sha256.to_ascii_lowercase());
            }
            if let Some(run) = &svc.run {
                out.replicas.insert(name.clone(), run.replicas);
            }
            for f in rendered
                .iter()
                .filter(|f| f.get("service").and_then(|s| s.as_str()) == Some(name.as_str()))
            {
                let field = |k: &str| {
                    f.get(k)
                        .and_then(|v| v.as_str())
                        .map(|v| v[..v.len().min(12)].to_owned())
                        .unwrap_or_else(|| "?".into())
                };
                let dest = f.get("dest").and_then(|v| v.as_str()).unwrap_or("?");
                out.config.insert(
                    format!("{name}/{dest}"),
                    format!(
                        "template {} rendered {}",
                        field("template_sha256"),
                        field("masked_sha256")
                    ),
                );
            }
            seen.insert(name);
        }
    }
    Ok(out)
}

/// Compare two environments of `spec`; what runs there is read from `store` (none: a
/// store with no history).
pub async fn diff(
    store: Option<&dyn Store>,
    spec: &ReleaseSpec,
    left: &str,
    right: &str,
) -> OpsResult<Parity> {
    let env = |n: &str| {
        spec.environments.get(n).ok_or_else(|| {
            crate::error::OpsError::input(format!(
                "failed to compare: unknown environment `{n}`; the spec declares: {}",
                spec.environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let (l, r) = (env(left)?, env(right)?);
    let (ll, rl) = match store {
        Some(s) => (live(s, left).await?, live(s, right).await?),
        None => (Live::default(), Live::default()),
    };
    let mut differences = spec_drift(spec, l, r);
    differences.extend(live_drift(spec, l, r, &ll, &rl));
    let allow = spec
        .parity
        .as_ref()
        .map(|p| p.allow.clone())
        .unwrap_or_default();
    for d in &mut differences {
        d.allowed_by = allow.iter().find(|a| allows(a, &d.kind, &d.item)).cloned();
    }
    Ok(Parity {
        left: left.to_owned(),
        right: right.to_owned(),
        in_parity: differences.iter().all(|d| d.allowed_by.is_some()),
        differences,
        live: BTreeMap::from([(left.to_owned(), ll), (right.to_owned(), rl)]),
    })
}

/// [`diff`] over the store `store` names, when it exists (never created here).
pub async fn diff_in(
    store: Option<&str>,
    spec: &ReleaseSpec,
    left: &str,
    right: &str,
) -> OpsResult<Parity> {
    let opened = match crate::session::layout_for(store) {
        Some((slipway_store::StoreLocation::Sqlite(db), _)) if !db.exists() => None,
        None => None,
        Some((loc, _)) => Some(slipway_store::open(&loc).await?),
    };
    diff(opened.as_ref().map(|s| s as &dyn Store), spec, left, right).await
}

/// Whether a standard's entry allows a difference: `kind`, `kind:item`, or a prefix
/// ending in `*`.
pub fn allows(entry: &str, kind: &str, item: &str) -> bool {
    let full = format!("{kind}:{item}");
    match entry.strip_suffix('*') {
        Some(prefix) => full.starts_with(prefix) || kind.starts_with(prefix),
        None => entry == kind || entry == full,
    }
}

/// Differences of what runs: versions (history, else the spec's `deployed:` for systems
/// Slipway does not deploy), artifacts, rendered config, replicas.
fn live_drift(
    spec: &ReleaseSpec,
    l: &Environment,
    r: &Environment,
    ll: &Live,
    rl: &Live,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let services: BTreeSet<&String> = spec
        .services
        .keys()
        .chain(l.deployed.keys())
        .chain(r.deployed.keys())
        .chain(ll.versions.keys())
        .chain(rl.versions.keys())
        .collect();
    let version = |live: &Live, env: &Environment, s: &str| -> (Option<String>, &'static str) {
        match (live.versions.get(s), env.deployed.get(s)) {
            (Some((v, run)), _) => (Some(format!("{v} (run {run})")), "history"),
            (None, Some(v)) => (Some(format!("{v} (declared)")), "declared"),
            (None, None) => (None, "history"),
        }
    };
    for s in &services {
        let (a, sa) = version(ll, l, s);
        let (b, sb) = version(rl, r, s);
        let plain = |x: &Option<String>| {
            x.as_ref()
                .map(|v| v.split(' ').next().unwrap_or(v).to_owned())
        };
        if plain(&a) != plain(&b) {
            out.push(Difference {
                kind: "version".into(),
                item: (*s).clone(),
                left: a,
                right: b,
                source: if sa == sb {
                    sa.into()
                } else {
                    format!("{sa}/{sb}")
                },
                allowed_by: None,
            });
        }
    }
    let mut push = |kind: &str, a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            if a.get(k) != b.get(k) {
                out.push(Difference {
                    kind: kind.into(),
                    item: k.clone(),
                    left: a.get(k).cloned(),
                    right: b.get(k).cloned(),
                    source: "history".into(),
                    allowed_by: None,
                });
            }
        }
    };
    push("artifact", &ll.artifacts, &rl.artifacts);
    push("config", &ll.config, &rl.config);
    let reps = |x: &Live| -> BTreeMap<String, String> {
        x.replicas
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    };
    push("replicas", &reps(ll), &reps(rl));
    out
}

/// Differences of the spec's shape: a variable present in one only, target, strategy and
/// policy fields.
fn spec_drift(spec: &ReleaseSpec, l: &Environment, r: &Environment) -> Vec<Difference> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = l.vars.keys().chain(r.vars.keys()).collect();
    for k in keys {
        let (a, b) = (l.vars.get(k), r.vars.get(k));
        // Values legitimately differ between environments; a variable that exists in one
        // and not the other is what breaks a promotion.
        if a.is_none() != b.is_none() {
            out.push(Difference {
                kind: "variable".into(),
                item: k.clone(),
                left: a.map(|v| mask(v.as_str())),
                right: b.map(|v| mask(v.as_str())),
                source: "spec".into(),
                allowed_by: None,
            });
        }
    }
    let shape = |e: &Environment| -> BTreeMap<&'static str, String> {
        let strategy = e
            .strategy
            .as_ref()
            .or(spec.strategy.as_ref())
            .map_or(slipway_model::spec::StrategyKind::BigBang, |s| s.kind());
        BTreeMap::from([
            ("target", e.target.kind().to_string()),
            ("strategy", strategy.to_string()),
            ("production", e.production.to_string()),
            (
                "approvals",
                e.approvals
                    .as_ref()
                    .map_or("none".to_owned(), |a| a.required.to_string()),
            ),
            (
                "signature",
                e.signature.as_ref().map_or("not required".to_owned(), |s| {
                    if s.required {
                        "required".to_owned()
                    } else {
                        "optional".to_owned()
                    }
                }),
            ),
            ("windows", e.windows.len().to_string()),
            ("checks", e.checks.join(",")),
        ])
    };
    let (sl, sr) = (shape(l), shape(r));
    for (k, v) in &sl {
        let w = &sr[k];
        if v != w {
            out.push(Difference {
                kind: if matches!(*k, "target" | "strategy") {
                    "target".into()
                } else {
                    "policy".into()
                },
                item: (*k).to_owned(),
                left: Some(v.clone()),
                right: Some(w.clone()),
                source: "spec".into(),
                allowed_by: None,
            });
        }
    }
    out
}

/// A variable's value as shown: secret references as they are (they are references), other
/// values quoted.
fn mask(v: &str) -> String {
    if v.starts_with("secret://") {
        v.to_owned()
    } else {
        format!("\"{v}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standard_entry_allows_a_kind_one_item_or_a_prefix() {
        assert!(allows("replicas", "replicas", "api"));
        assert!(allows("policy:approvals", "policy", "approvals"));
        assert!(!allows("policy:approvals", "policy", "windows"));
        assert!(allows("config:api/*", "config", "api/api.conf"));
        assert!(!allows("config:api/*", "config", "web/web.conf"));
        assert!(!allows("version", "artifact", "api"));
    }
}
