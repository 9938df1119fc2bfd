//! `Migrate` steps: a migration service's pending `V{n}__*.sql` files applied through
//! `slipway-migrate`, and undone by its `U{n}__*.sql` scripts on rollback.
//!
//! What to undo to is decided at apply time and kept in a marker file per idempotency key
//! (`<state>/<key>.before`): the latest version applied *before* this step. Undo is then
//! "back to exactly where this step found the database", whatever happened since.
//!
//! A database URL is often a secret (`database: "{{ vars.db_url }}"` with `db_url:
//! secret://env/DB_URL`): everything this target says — step output, which is journaled,
//! and errors, which are too — names the database by its redacted form (the secret's mask
//! in place of its value, then any password masked), never the resolved URL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::plan::StepAction;
use slipway_package::Redactor;

/// Runs migration steps.
#[derive(Debug, Clone)]
pub struct MigrateTarget {
    workdir: PathBuf,
    state_dir: PathBuf,
    vars: BTreeMap<String, String>,
    who: String,
    /// Take a backup into this content-addressed store before applying anything.
    backup_store: Option<PathBuf>,
    /// Masks the environment's secrets (a resolved database URL among them).
    redactor: Redactor,
}

impl MigrateTarget {
    /// Paths resolve against `workdir`; `vars` fill `{{ vars.x }}` in database URLs.
    pub fn new(
        workdir: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        vars: BTreeMap<String, String>,
        who: impl Into<String>,
    ) -> Self {
        Self {
            workdir: workdir.into(),
            state_dir: state_dir.into(),
            vars,
            who: who.into(),
            backup_store: None,
            redactor: Redactor::default(),
        }
    }

    /// Mask these secrets (the values behind `vars`) in everything the target says.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// How a message names the database: secrets masked, then the password.
    fn shown(&self, url: &str) -> String {
        slipway_migrate::mask_url(&self.redactor.redact(url))
    }

    /// A migration error as a message: secrets masked.
    fn said(&self, e: impl std::fmt::Display) -> String {
        self.redactor.redact(&e.to_string())
    }

    /// Back the database up into `store` before any migration is applied (environments
    /// with `backup.required`); the backup's digest goes into the step's output, so the
    /// journal says which backup a restore would use.
    pub fn with_backup(mut self, store: impl Into<PathBuf>) -> Self {
        self.backup_store = Some(store.into());
        self
    }

    /// The migration directory and the database URL a step of `dir` and `database` would
    /// use: `{{ vars.x }}` filled, relative SQLite paths resolved against the workdir;
    /// refused while a secret reference or a placeholder is left.
    pub fn resolve(&self, dir: &str, database: &str) -> Result<(PathBuf, String), TargetError> {
        let mut url = slipway_model::text::fill_vars(
            database,
            self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let secret_left = self
            .vars
            .iter()
            .any(|(k, v)| v.starts_with("secret://") && url.contains(&format!("vars.{k}")));
        if url.starts_with("secret://") || secret_left {
            return Err(TargetError::Io(
                "the database URL is a secret reference; resolve secrets before migrating".into(),
            ));
        }
        if url.contains("{{") {
            return Err(TargetError::Io(format!(
                "database `{database}` has a placeholder no variable of the environment fills"
            )));
        }
        // Relative SQLite paths are relative to the run's working directory.
        if let Some(rest) = url.strip_prefix("sqlite://")
            && !rest.starts_with('/')
        {
            url = format!("sqlite://{}", self.workdir.join(rest).display());
        }
        Ok((self.workdir.join(dir), url))
    }

    fn marker(&self, key: &str) -> PathBuf {
        self.state_dir.join(format!("{key}.before"))
    }
}

/// How long reading a database's migration history may take at plan time.
const PLAN_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Plan-time facts: the latest migration version applied to each migration service's
/// database in environment `env_name`, read (never written) from its history table, so the
/// plan judges only the migrations this release will run — a `CREATE INDEX` that ran last
/// year is not this release's lock. Variables are filled as a deploy fills them
/// (`secret://env/NAME` from this process's environment), relative SQLite paths against
/// the spec's directory joined with the exec target's `workdir`.
///
/// A database that cannot be read gives a `migrations-applied-unknown` warning instead:
/// every migration of that service is then judged as pending, the safe side.
pub async fn applied_versions(
    spec: &slipway_model::spec::ReleaseSpec,
    env_name: &str,
    spec_dir: &Path,
) -> (BTreeMap<String, u32>, Vec<slipway_model::plan::Finding>) {
    use slipway_package::SecretRef;
    let mut applied = BTreeMap::new();
    let mut findings = Vec::new();
    let Some(env) = spec.environments.get(env_name) else {
        return (applied, findings);
    };
    let vars: BTreeMap<String, String> = env
        .vars
        .iter()
        .filter_map(|(k, v)| match SecretRef::parse(v.as_str()) {
            Ok(Some(SecretRef::Env(name))) => std::env::var(&name).ok().map(|val| (k.clone(), val)),
            Ok(Some(_)) => None,
            _ => Some((k.clone(), v.as_str().to_owned())),
        })
        .collect();
    let workdir = match env.target.exec.as_ref().and_then(|e| e.workdir.as_deref()) {
        Some(w) => spec_dir.join(w),
        None => spec_dir.to_owned(),
    };
    let target = MigrateTarget::new(workdir, spec_dir, vars, "slipway plan");
    for (name, svc) in &spec.services {
        let (Some(dir), Some(database)) = (&svc.migrations, &svc.database) else {
            continue;
        };
        let unknown = |why: String| slipway_model::plan::Finding {
            severity: slipway_model::plan::FindingSeverity::Warning,
            code: "migrations-applied-unknown".into(),
            message: format!(
                "services.{name}: cannot read which migrations are applied ({why}); every migration in {dir} is judged as pending. Make the database reachable from here (and its secret set) for an exact plan"
            ),
        };
        // A secret the URL needs that is not set here is the likely reason: say which.
        let missing: Vec<String> = env
            .vars
            .iter()
            .filter(|(k, _)| {
                database.contains(&format!("vars.{k}")) && !target.vars.contains_key(*k)
            })
            .map(|(k, v)| format!("{} (vars.{k}) is not set here", v.as_str()))
            .chain(
                matches!(SecretRef::parse(database), Ok(Some(_)))
                    .then(|| format!("{database} is not resolved at plan time")),
            )
            .collect();
        if !missing.is_empty() {
            findings.push(unknown(missing.join(", ")));
            continue;
        }
        let (dir, url) = match target.resolve(dir, database) {
            Ok(r) => r,
            Err(e) => {
                findings.push(unknown(e.to_string()));
                continue;
            }
        };
        match tokio::time::timeout(PLAN_STATUS_TIMEOUT, slipway_migrate::status(&url, &dir)).await {
            Ok(Ok(st)) => {
                if let Some(v) = st.latest_applied.and_then(|v| u32::try_from(v).ok()) {
                    applied.insert(name.clone(), v);
                }
            }
            Ok(Err(e)) => findings.push(unknown(e.to_string())),
            Err(_) => findings.push(unknown(format!(
                "{} did not answer within {PLAN_STATUS_TIMEOUT:?}",
                slipway_migrate::mask_url(&url)
            ))),
        }
    }
    (applied, findings)
}

/// A migration set's digest and its versions.
pub type MigrationSetFacts = (String, Vec<i64>);

/// Plan-time facts: each migration service's migration set in environment `env_name` —
/// its digest (`slipway_migrate::MigrationSet::digest`, what a recorded dry run is keyed
/// by) and its versions — or why its directory cannot be read. The directory is resolved
/// as a deploy resolves it (the spec's directory joined with the exec target's `workdir`).
pub fn migration_sets(
    spec: &slipway_model::spec::ReleaseSpec,
    env_name: &str,
    spec_dir: &Path,
) -> Vec<(String, Result<MigrationSetFacts, String>)> {
    let workdir = match spec
        .environments
        .get(env_name)
        .and_then(|e| e.target.exec.as_ref())
        .and_then(|e| e.workdir.as_deref())
    {
        Some(w) => spec_dir.join(w),
        None => spec_dir.to_owned(),
    };
    spec.services
        .iter()
        .filter_map(|(name, svc)| {
            let dir = svc.migrations.as_ref()?;
            let set = slipway_migrate::MigrationSet::load(&workdir.join(dir))
                .map(|set| {
                    let versions = set.migrations.iter().map(|m| m.version).collect();
                    (set.digest(), versions)
                })
                .map_err(|e| e.to_string());
            Some((name.clone(), set))
        })
        .collect()
}

fn io(e: impl std::fmt::Display) -> TargetError {
    TargetError::Io(e.to_string())
}

fn write_marker(path: &Path, before: Option<i64>) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, before.map_or("none".to_owned(), |v| v.to_string()))?;
    std::fs::rename(tmp, path)
}

impl Target for MigrateTarget {
    fn kind(&self) -> &'static str {
        "migrate"
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let StepAction::Migrate { dir, database } = action else {
                return Err(TargetError::Unsupported {
                    target: "migrate",
                    action: slipway_engine::target::action_kind(action),
                });
            };
            let (dir, url) = self.resolve(dir, database)?;
            let before = slipway_migrate::status(&url, &dir)
                .await
                .map_err(|e| TargetError::Io(self.said(e)))?;
            if before.pending.is_empty() {
                return Ok(Applied::AlreadyDone {
                    guard: format!(
                        "no pending migrations (latest applied: V{})",
                        before.latest_applied.unwrap_or(0)
                    ),
                });
            }
            // Only the first attempt records where the database started: a re-applied step
            // after a crash must undo to the same place.
            let marker = self.marker(&ctx.key);
            if !marker.exists() {
                write_marker(&marker, before.latest_applied).map_err(io)?;
            }
            let fresh_sqlite = url
                .strip_prefix("sqlite://")
                .is_some_and(|p| !std::path::Path::new(p).exists());
            let backed_up = match &self.backup_store {
                // A database that does not exist yet holds nothing to lose.
                Some(_) if fresh_sqlite => {
                    "no backup: the database does not exist yet; ".to_owned()
                }
                Some(store) => {
                    let b = slipway_migrate::backup(&url, store).await.map_err(|e| {
                        TargetError::Failed {
                            message: format!(
                                "back up {} before migrating (the environment requires it): {}",
                                self.shown(&url),
                                self.said(e)
                            ),
                            output: StepOutput::default(),
                        }
                    })?;
                    format!("backup {} ({} bytes); ", b.digest, b.size)
                }
                None => String::new(),
            };
            match slipway_migrate::apply(&url, &dir, &self.who).await {
                Ok(r) => Ok(Applied::Ran {
                    output: StepOutput {
                        exit_code: Some(0),
                        stdout: format!(
                            "{backed_up}applied {} migration(s) to {}: now at V{}{}",
                            r.applied.len(),
                            self.shown(&url),
                            r.latest_applied.unwrap_or(0),
                            if r.roll_forward_only.is_empty() {
                                String::new()
                            } else {
                                format!("; roll-forward-only: {:?}", r.roll_forward_only)
                            }
                        ),
                        stderr: String::new(),
                        truncated: false,
                    },
                }),
                Err(e) => Err(TargetError::Failed {
                    message: format!("migrate {}: {}", self.shown(&url), self.said(e)),
                    output: StepOutput::default(),
                }),
            }
        })
    }

    fn observe<'a>(
        &'a self,
        _ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            let StepAction::Migrate { dir, database } = action else {
                return Err(TargetError::Unsupported {
                    target: "migrate",
                    action: slipway_engine::target::action_kind(action),
                });
            };
            let (dir, url) = self.resolve(dir, database)?;
            let s = slipway_migrate::status(&url, &dir)
                .await
                .map_err(|e| TargetError::Io(self.said(e)))?;
            let evidence = format!(
                "latest applied V{}, pending {:?}",
                s.latest_applied.unwrap_or(0),
                s.pending
            );
            Ok(if s.pending.is_empty() {
                Observation::Done { evidence }
            } else {
                Observation::NotDone { evidence }
            })
        })
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async move {
            let StepAction::Migrate { dir, database } = action else {
                return Ok(None);
            };
            let (dir, url) = self.resolve(dir, database)?;
            let marker = self.marker(&ctx.key);
            let Ok(text) = std::fs::read_to_string(&marker) else {
                // The step found nothing pending (AlreadyDone): it changed nothing to undo.
                return Ok(None);
            };
            let to = text.trim().parse::<i64>().unwrap_or(0);
            let r =
                slipway_migrate::undo(&url, &dir, to)
                    .await
                    .map_err(|e| TargetError::Failed {
                        message: format!("undo migrations to V{to}: {}", self.said(e)),
                        output: StepOutput::default(),
                    })?;
            Ok(Some(StepOutput {
                exit_code: Some(0),
                stdout: format!(
                    "undid {} migration(s): back at V{}",
                    r.undone.len(),
                    r.latest_applied.unwrap_or(0)
                ),
                stderr: String::new(),
                truncated: false,
            }))
        })
    }
}
