//! Backward compatibility between what runs and what a release ships: API documents
//! ([`openapi`]) and database migrations ([`sql`]), plus the release-level rule that a
//! contracting migration must not ship together with the code that runs against it.

pub mod locks;
pub mod openapi;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use slipway_model::spec::{ReleaseSpec, ServiceKind};

use slipway_model::compat::CompatFinding;
use slipway_model::plan::Finding;

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
/// from it has all its migrations considered. `env` is the environment planned for: its
/// variables decide the dialect of a `{{ vars.x }}` database URL (without one, or for a
/// secret reference, PostgreSQL is assumed).
pub fn check_migrations(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    env: Option<&str>,
    applied: &BTreeMap<String, u32>,
) -> Result<MigrationCompat> {
    let mut reports = BTreeMap::new();
    let mut incompatible = Vec::new();
    for (name, svc) in &spec.services {
        let (ServiceKind::Migration, Some(dir)) = (svc.kind, &svc.migrations) else {
            continue;
        };
        let url = svc.database.as_deref().unwrap_or("");
        let url = match env.and_then(|e| spec.environments.get(e)) {
            Some(e) => slipway_model::text::fill_vars(
                url,
                e.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            None => url.to_owned(),
        };
        let dialect = Dialect::from_database_url(&url);
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

/// Every pending PostgreSQL statement that blocks reads or writes of a live table for
/// longer than a catalog change, as a `lock` finding (`lock:SERVICE:FILE:LINE`, what a
/// waiver names). The planner makes them errors in a production environment and warnings
/// elsewhere; they never require a phased strategy (the lock is the same either way).
pub fn lock_findings(m: &MigrationCompat) -> Vec<CompatFinding> {
    let mut out = Vec::new();
    for (service, report) in &m.reports {
        if report.dialect != Dialect::Postgres {
            continue;
        }
        for mig in &report.migrations {
            for (i, s) in mig.statements.iter().enumerate() {
                let Some(l) = s.lock.as_ref().filter(|l| l.blocking) else {
                    continue;
                };
                let at = s
                    .line
                    .map_or_else(|| format!("statement {}", i + 1), |n| n.to_string());
                out.push(CompatFinding {
                    id: format!("lock:{service}:{}:{at}", mig.file),
                    kind: "lock".into(),
                    service: service.clone(),
                    message: format!(
                        "{} line {at}: `{}` takes {} on {} and {}, so {} of {} wait meanwhile: {}; instead: {}",
                        mig.file,
                        s.sql,
                        l.mode.as_str(),
                        l.tables.join(", "),
                        l.work.as_str(),
                        l.blocks.as_str(),
                        l.tables.join(", "),
                        l.why,
                        l.alternative
                            .as_deref()
                            .unwrap_or("run it in a maintenance window, or waive it with a reason")
                    ),
                });
            }
        }
    }
    out
}

/// Every breaking-compatibility finding of a release, as plan facts: each OpenAPI breaking
/// change between a service's `openapi.running` and `openapi.candidate` documents
/// (`api:SERVICE:CODE:POINTER`), and each contract migration shipped with app services
/// that depend on it (`migration:SERVICE:FILE`), and each pending statement that blocks a
/// live table ([`lock_findings`]). Documents or migrations that cannot be
/// read come back as `error` plan findings: compatibility that cannot be judged must not
/// pass as compatible.
pub fn findings(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    env: Option<&str>,
    applied: &BTreeMap<String, u32>,
) -> (Vec<CompatFinding>, Vec<Finding>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (name, svc) in &spec.services {
        let Some(docs) = &svc.openapi else { continue };
        match openapi::compare_files(&spec_dir.join(&docs.running), &spec_dir.join(&docs.candidate))
        {
            Ok(report) => {
                for c in report
                    .changes
                    .iter()
                    .filter(|c| c.impact == openapi::Impact::Breaking)
                {
                    out.push(CompatFinding {
                        id: format!("api:{name}:{}:{}", c.code, c.pointer),
                        kind: "api".into(),
                        service: name.clone(),
                        message: format!(
                            "{} (OpenAPI {} → {} of `{name}`); existing clients may break: keep the old contract alongside the new one, or waive with a reason",
                            c.message, docs.running, docs.candidate
                        ),
                    });
                }
            }
            Err(e) => problems.push(Finding {
                severity: slipway_model::plan::FindingSeverity::Error,
                code: "openapi-unreadable".into(),
                message: format!(
                    "failed to {e} (services.{name}.openapi); fix the paths or the documents: compatibility cannot be judged without them"
                ),
            }),
        }
    }
    // Unreadable migrations are reported by `plan_checks` already.
    if let Ok(m) = check_migrations(spec, spec_dir, env, applied) {
        out.extend(lock_findings(&m));
        for inc in &m.incompatible {
            for file in &inc.files {
                out.push(CompatFinding {
                    id: format!("migration:{}:{file}", inc.service),
                    kind: "migration".into(),
                    service: inc.service.clone(),
                    message: inc.message.clone(),
                });
            }
        }
    }
    (out, problems)
}
