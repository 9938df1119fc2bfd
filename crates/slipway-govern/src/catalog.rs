//! The service catalog: Backstage `catalog-info.yaml` entities for a release spec — a
//! `System` for the release, a `Component` per app service and a `Resource` per
//! migration service, with owners, `dependsOn` and a lifecycle from the run history — and
//! the dependency map as Graphviz DOT.
//!
//! Lifecycle: `production` once a run deploying the service succeeded in a production
//! environment, else `experimental` (Backstage's own vocabulary).
//!
//! What runs where comes from the history, not from the spec: each entity carries
//! `slipway.dev/deployed.ENV` (the version the newest succeeded run deployed in each of
//! the spec's environments; a rolled-back or failed run changes nothing) and
//! `slipway.dev/deployed-run.ENV` (that run), and the system's `slipway.dev/spec-version`
//! says which version the spec describes.
//!
//! The YAML is written by hand with every scalar JSON-quoted (JSON strings are YAML), so
//! no name or description can change the document's structure.

use std::fmt::Write as _;

use serde::Serialize;
use slipway_engine::RunState;
use slipway_model::spec::{ReleaseSpec, ServiceKind};

use crate::history::RunHistory;

/// One Backstage entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// `System`, `Component` or `Resource`.
    pub kind: String,
    /// Entity name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owner (`group:…` reference or a bare name).
    pub owner: String,
    /// `spec.type`.
    pub entity_type: Option<String>,
    /// `spec.lifecycle` (components).
    pub lifecycle: Option<String>,
    /// `spec.system`.
    pub system: Option<String>,
    /// `spec.dependsOn` entity references.
    pub depends_on: Vec<String>,
    /// `metadata.annotations`.
    pub annotations: Vec<(String, String)>,
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn entity_name(release: &str, service: &str) -> String {
    format!("{release}-{service}")
}

/// The entities of a spec; `history` decides lifecycles.
pub fn entities(spec: &ReleaseSpec, history: &[RunHistory]) -> Vec<Entity> {
    let m = &spec.metadata;
    let owner = m.owner.clone().unwrap_or_else(|| "unknown".into());
    let mut out = vec![Entity {
        kind: "System".into(),
        name: m.name.clone(),
        description: m
            .description
            .clone()
            .unwrap_or_else(|| format!("release {} managed by slipway", m.name)),
        owner: owner.clone(),
        entity_type: None,
        lifecycle: None,
        system: None,
        depends_on: Vec::new(),
        annotations: {
            let mut a = vec![("slipway.dev/spec-version".into(), m.version.clone())];
            a.extend(deployed(spec, history, None));
            a
        },
    }];
    let ref_of = |name: &str| match spec.services.get(name).map(|s| s.kind) {
        Some(ServiceKind::Migration) => format!("resource:{}", entity_name(&m.name, name)),
        _ => format!("component:{}", entity_name(&m.name, name)),
    };
    for (name, s) in &spec.services {
        let in_production = history.iter().any(|r| {
            r.production()
                && r.record.release == m.name
                && r.record.state == RunState::Succeeded
                && r.services().contains(name)
        });
        let migration = s.kind == ServiceKind::Migration;
        let mut annotations = vec![("slipway.dev/release".into(), m.name.clone())];
        annotations.extend(deployed(spec, history, Some(name)));
        if let Some(h) = s.health.as_ref().and_then(|h| h.http.clone()) {
            annotations.push(("slipway.dev/health".into(), h));
        }
        out.push(Entity {
            kind: if migration { "Resource" } else { "Component" }.into(),
            name: entity_name(&m.name, name),
            description: format!("{name} of {}", m.name),
            owner: s.owner.clone().unwrap_or_else(|| owner.clone()),
            entity_type: Some(if migration { "database" } else { "service" }.into()),
            lifecycle: (!migration).then(|| {
                if in_production {
                    "production"
                } else {
                    "experimental"
                }
                .to_owned()
            }),
            system: Some(m.name.clone()),
            depends_on: s.depends_on.iter().map(|d| ref_of(d)).collect(),
            annotations,
        });
    }
    out
}

/// `slipway.dev/deployed.ENV` and `slipway.dev/deployed-run.ENV` per environment of the
/// spec where a run of this release (deploying `service`, when given) succeeded: the
/// newest such run's version of it.
fn deployed(
    spec: &ReleaseSpec,
    history: &[RunHistory],
    service: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for env in spec.environments.keys() {
        let newest = history
            .iter()
            .filter(|r| {
                r.record.release == spec.metadata.name
                    && &r.record.environment == env
                    && r.record.state == RunState::Succeeded
                    && service.is_none_or(|s| r.services().iter().any(|x| x == s))
            })
            .max_by_key(|r| r.record.created_at);
        if let Some(r) = newest {
            let version = service
                .and_then(|s| r.plan.as_ref()?.services.get(s)?.version.clone())
                .unwrap_or_else(|| r.record.version.clone());
            out.push((format!("slipway.dev/deployed.{env}"), version));
            out.push((
                format!("slipway.dev/deployed-run.{env}"),
                r.record.id.clone(),
            ));
        }
    }
    out
}

/// The entities as one multi-document `catalog-info.yaml`.
pub fn to_yaml(entities: &[Entity]) -> String {
    let mut s = String::new();
    for e in entities {
        let _ = writeln!(
            s,
            "---\napiVersion: backstage.io/v1alpha1\nkind: {}",
            e.kind
        );
        let _ = writeln!(
            s,
            "metadata:\n  name: {}\n  description: {}",
            q(&e.name),
            q(&e.description)
        );
        if !e.annotations.is_empty() {
            let _ = writeln!(s, "  annotations:");
            for (k, v) in &e.annotations {
                let _ = writeln!(s, "    {}: {}", q(k), q(v));
            }
        }
        let _ = writeln!(s, "spec:");
        if let Some(t) = &e.entity_type {
            let _ = writeln!(s, "  type: {}", q(t));
        }
        if let Some(l) = &e.lifecycle {
            let _ = writeln!(s, "  lifecycle: {}", q(l));
        }
        let _ = writeln!(s, "  owner: {}", q(&e.owner));
        if let Some(sys) = &e.system {
            let _ = writeln!(s, "  system: {}", q(sys));
        }
        if !e.depends_on.is_empty() {
            let _ = writeln!(s, "  dependsOn:");
            for d in &e.depends_on {
                let _ = writeln!(s, "    - {}", q(d));
            }
        }
    }
    s
}

/// The dependency map as Graphviz DOT (edges point from a service to what it needs).
pub fn to_dot(spec: &ReleaseSpec) -> String {
    let mut s = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];\n",
        q(&spec.metadata.name)
    );
    for (name, svc) in &spec.services {
        let shape = if svc.kind == ServiceKind::Migration {
            ", shape=cylinder"
        } else {
            ""
        };
        let _ = writeln!(s, "  {} [label={}{shape}];", q(name), q(name));
    }
    for (name, svc) in &spec.services {
        for d in &svc.depends_on {
            let _ = writeln!(s, "  {} -> {};", q(name), q(d));
        }
    }
    s.push_str("}\n");
    s
}
