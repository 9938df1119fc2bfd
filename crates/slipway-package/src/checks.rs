//! Plan-time checks of this crate, shaped as plan findings so `slipway plan` can append
//! them: unresolved config placeholders, unmet version requirements and migrations that are
//! not backward compatible. The version lock is returned alongside, to be written with the
//! run.

use std::collections::BTreeMap;
use std::path::Path;

use slipway_model::plan::Finding;
use slipway_model::spec::ReleaseSpec;

use crate::compat::{self, MigrationCompat};
use crate::deps::{self, VersionLock};
use crate::render::{self, Severity};

/// Observed facts the checks can use; all optional.
#[derive(Debug, Clone, Default)]
pub struct CheckFacts {
    /// Versions running in the environment (from the store); override
    /// `environments.<env>.deployed`.
    pub deployed: BTreeMap<String, String>,
    /// Highest applied migration version per migration service (from the store).
    pub applied_migrations: BTreeMap<String, u32>,
}

/// What [`plan_checks`] found.
#[derive(Debug, Clone)]
pub struct PlanChecks {
    /// Findings to append to the plan (`error` blocks, `warning` does not).
    pub findings: Vec<Finding>,
    /// Resolved versions, to write with the run; `None` for an unknown environment.
    pub lock: Option<VersionLock>,
    /// Migration classification, when the migration directories could be read.
    pub migrations: Option<MigrationCompat>,
}

impl PlanChecks {
    /// Whether any finding requires a phased strategy and an extra approval (breaking
    /// compatibility), as the packaging issue asks.
    pub fn requires_phased(&self) -> bool {
        self.migrations
            .as_ref()
            .is_some_and(|m| !m.incompatible.is_empty())
    }
}

/// Runs this crate's plan-time checks for one environment.
///
/// Codes: `placeholder-undefined`, `template-syntax`, `template-render`,
/// `template-unreadable`, `secret-reference`, `port-in-version-config` (a process-target
/// template needing an instance's `port`) (errors: the deploy would fail at install);
/// `dependency-conflict` (error); `migration-unclassified` (warning);
/// `migrations-unreadable` (warning). Breaking compatibility is not reported here but
/// handed to the planner as facts ([`crate::compat::findings`]), which requires a phased
/// strategy and an extra approval unless waived.
pub fn plan_checks(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    env_name: &str,
    facts: &CheckFacts,
) -> PlanChecks {
    let mut findings = Vec::new();

    if let Some((name, _)) = spec.environments.get_key_value(env_name) {
        let problems = render::check_placeholders_in(spec, spec_dir, &[name])
            .into_iter()
            .chain(render::check_version_config_in(spec, spec_dir, &[name]));
        for p in problems {
            findings.push(Finding {
                severity: p.severity.as_str().to_owned(),
                code: if p.code == "undefined-variable" {
                    "placeholder-undefined".to_owned()
                } else {
                    p.code.clone()
                },
                message: p.message,
            });
        }
    }

    let lock = match deps::resolve(spec, env_name, &facts.deployed) {
        Ok(res) => {
            for c in &res.conflicts {
                findings.push(Finding {
                    severity: Severity::Error.as_str().to_owned(),
                    code: "dependency-conflict".to_owned(),
                    message: c.message.clone(),
                });
            }
            Some(res.lock)
        }
        Err(_) => None,
    };

    let migrations = match compat::check_migrations(
        spec,
        spec_dir,
        Some(env_name),
        &facts.applied_migrations,
    ) {
        Ok(m) => {
            // Contract migrations are compatibility facts of the plan (`compat::findings`),
            // reported by the planner with their waivers, not here.
            for (svc, r) in &m.reports {
                for mig in &r.migrations {
                    let unknown = mig
                        .statements
                        .iter()
                        .filter(|s| s.class == compat::sql::Class::Unknown)
                        .count();
                    if unknown > 0 {
                        findings.push(Finding {
                            severity: Severity::Warning.as_str().to_owned(),
                            code: "migration-unclassified".to_owned(),
                            message: format!(
                                "{unknown} statement(s) of {} (service `{svc}`) could not be classified as expand or contract; review them by hand (`slipway compat sql`)",
                                mig.file
                            ),
                        });
                    }
                }
            }
            Some(m)
        }
        Err(e) => {
            findings.push(Finding {
                severity: Severity::Warning.as_str().to_owned(),
                code: "migrations-unreadable".to_owned(),
                message: format!("failed to {e}"),
            });
            None
        }
    };

    PlanChecks {
        findings,
        lock,
        migrations,
    }
}
