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

/// Whether `text` uses `vars.NAME` (not as the prefix of a longer name).
fn uses_var(text: &str, name: &str) -> bool {
    let needle = format!("vars.{name}");
    text.match_indices(&needle).any(|(i, _)| {
        text[i + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// Every secret the deploy of `env_name` will need, resolved now for presence only (the
/// value is dropped at once): a variable `secret://env/NAME` or `secret://file/PATH` that
/// the spec (a database URL, a provider, a check) or a config template of a service uses
/// must resolve here, or the plan is refused (`secret-missing`) — rather than the deploy
/// finding out after its migration ran. When a service renders config, every secret of
/// the environment is needed (rendering resolves them all); otherwise variables nothing
/// uses are not required.
pub fn secret_findings(spec: &ReleaseSpec, spec_dir: &Path, env_name: &str) -> Vec<Finding> {
    use crate::render::{EnvFileResolver, SecretRef, SecretResolver};
    let Some(env) = spec.environments.get(env_name) else {
        return Vec::new();
    };
    // Where variables can be used: the spec itself (other environments' own sections
    // aside) and the config templates that will be rendered.
    let mut uses: Vec<(String, String)> = Vec::new();
    let mut shape = spec.clone();
    shape.environments.retain(|n, _| n == env_name);
    if let Ok(text) = serde_json::to_string(&shape) {
        uses.push(("the spec".to_owned(), text));
    }
    for svc in spec.services.values() {
        for c in &svc.config {
            if let Ok(t) = std::fs::read_to_string(spec_dir.join(&c.template)) {
                uses.push((c.template.clone(), t));
            }
        }
    }
    let renders_config = spec.services.values().any(|s| !s.config.is_empty());
    let resolver = EnvFileResolver {
        base_dir: spec_dir.to_owned(),
    };
    let mut out = Vec::new();
    for (var, value) in &env.vars {
        let Ok(Some(secret)) = SecretRef::parse(value.as_str()) else {
            continue;
        };
        // Rendering a service's config resolves every secret of the environment
        // (`render::resolve_secrets`), used by its templates or not.
        let place = match uses.iter().find(|(_, t)| uses_var(t, var)) {
            Some((place, _)) => place.clone(),
            None if renders_config => {
                "config rendering (it resolves every secret of the environment)".to_owned()
            }
            None => continue,
        };
        if let Err(e) = resolver.resolve(&secret) {
            out.push(Finding {
                severity: slipway_model::plan::FindingSeverity::Error,
                code: "secret-missing".to_owned(),
                message: format!(
                    "environments.{env_name}.vars.{var} ({secret}) is needed by {place} but cannot be resolved here: failed to {e}. The deploy would stop when it first needs it — after earlier steps (a migration) already ran"
                ),
            });
        }
    }
    out
}

/// Runs this crate's plan-time checks for one environment.
///
/// Codes: `secret-missing` (error: a secret the deploy needs is not there, see
/// [`secret_findings`]), `placeholder-undefined`, `template-syntax`, `template-render`,
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
    let mut findings = secret_findings(spec, spec_dir, env_name);

    if let Some((name, _)) = spec.environments.get_key_value(env_name) {
        let problems = render::check_placeholders_in(spec, spec_dir, &[name])
            .into_iter()
            .chain(render::check_version_config_in(spec, spec_dir, &[name]));
        for p in problems {
            findings.push(Finding {
                severity: match p.severity {
                    Severity::Error => slipway_model::plan::FindingSeverity::Error,
                    Severity::Warning => slipway_model::plan::FindingSeverity::Warning,
                },
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
                    severity: slipway_model::plan::FindingSeverity::Error,
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
                            severity: slipway_model::plan::FindingSeverity::Warning,
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
                severity: slipway_model::plan::FindingSeverity::Warning,
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
