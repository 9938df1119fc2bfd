//! Backward compatibility between what runs and what a release ships: API documents
//! ([`openapi`]) and database migrations ([`sql`]), plus the release-level rule that a
//! contracting migration must not ship together with the code that runs against it.

pub mod openapi;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use slipway_model::spec::{ReleaseSpec, ServiceKind};

use crate::error::Result;
use sql::{Class, Dialect, MigrationSetReport};

/// A migration service whose pending migrations contract the schema while app services of
/// the same release depend on it: during the rollout the old app version runs against the
/// contracted schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncompatibleMigration {
    /// The migration service.
    pub service: String,
    /// App services of the release that depend on it (directly or through others).
    pub dependents: Vec<String>,
    /// Files with contract statements.
    pub files: Vec<String>,
    /// The explanation, with what to do.
    pub message: String,
}

/// Every migration service's classification and the incompatibilities found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationCompat {
    /// Migration service → report of its pending migrations.
    pub reports: BTreeMap<String, MigrationSetReport>,
    /// Contract migrations shipped with dependent app services.
    pub incompatible: Vec<IncompatibleMigration>,
}

/// App services that depend on `target`, directly or transitively through `depends_on`.
fn dependents(spec: &ReleaseSpec, target: &str) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut frontier = vec![target.to_owned()];
    while let Some(t) = frontier.pop() {
        for (name, s) in &spec.services {
            if s.depends_on.contains(&t) && found.insert(name.clone()) {
                frontier.push(name.clone());
            }
        }
    }
    found
        .into_iter()
        .filter(|n| {
            spec.services
                .get(n)
                .is_some_and(|s| s.kind == ServiceKind::App)
        })
        .collect()
}

/// Classifies the pending migrations of every migration service and flags contract
/// migrations shipped with app services that depend on them.
///
/// `applied` is the highest migration version already applied per migration service (from
/// the store); migrations at or below it are not part of this release. A service missing
/// from it has all its migrations considered.
pub fn check_migrations(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    applied: &BTreeMap<String, u32>,
) -> Result<MigrationCompat> {
    let mut reports = BTreeMap::new();
    let mut incompatible = Vec::new();
    for (name, svc) in &spec.services {
        let (ServiceKind::Migration, Some(dir)) = (svc.kind, &svc.migrations) else {
            continue;
        };
        let dialect = Dialect::from_database_url(svc.database.as_deref().unwrap_or(""));
        let mut report = sql::classify_dir(&spec_dir.join(dir), dialect)?;
        if let Some(done) = applied.get(name) {
            report
                .migrations
                .retain(|m| m.version.is_none_or(|v| v > *done));
            report.class = report
                .migrations
                .iter()
                .map(|m| m.class)
                .max()
                .unwrap_or(Class::Expand);
        }
        let files: Vec<String> = report
            .migrations
            .iter()
            .filter(|m| m.class == Class::Contract)
            .map(|m| m.file.clone())
            .collect();
        let deps = dependents(spec, name);
        if !files.is_empty() && !deps.is_empty() {
            incompatible.push(IncompatibleMigration {
                message: format!(
                    "migration service `{name}` contracts the schema ({}) in the same release as {} that depend{} on it: while the rollout runs, the old version of {} runs against the contracted schema; ship the expand part now and the contract part in a later release, or waive with a reason",
                    files.join(", "),
                    deps.join(", "),
                    if deps.len() == 1 { "s" } else { "" },
                    deps.join(", "),
                ),
                service: name.clone(),
                dependents: deps,
                files,
            });
        }
        reports.insert(name.clone(), report);
    }
    Ok(MigrationCompat {
        reports,
        incompatible,
    })
}
