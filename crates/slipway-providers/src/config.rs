//! `RenderConfig` steps: a service's config templates rendered for the environment at
//! install time, with secrets resolved only then, and written where the installed service
//! reads them.
//!
//! Where: one directory per (environment, service), `<store dir>/config/<env>/<service>/`
//! (directories 0700, files 0600), each file at its `dest` taken relative to that
//! directory. The `exec` target gives every step of the service its path as
//! `SLIPWAY_CONFIG_DIR`. The path is stable across runs, so a service started by an
//! install step can keep reading it; a new render replaces the whole directory with one
//! rename and keeps the previous one beside it for `undo`. It is not under the spec's
//! directory on purpose: that is usually a git checkout, and rendered secrets must never
//! be one `git add` away from a commit.
//!
//! A service the plan deploys as instances (a `deploy` step, the `process` target) gets
//! one directory per **version**, `<store dir>/config/<env>/<service>/<version>/`, and
//! each instance is started with `SLIPWAY_CONFIG_DIR` pointing at its own version's: a
//! canary and the stable version run side by side, each reading its own config, and the
//! old version kept or restarted by a rollback never reads the new version's. The plan
//! puts the `render-config` step before the `deploy` step, and the engine finishes config
//! ranks before any other step of the wave starts, so a render that fails (undefined
//! variable, missing secret, edited template) fails the wave before an instance starts.
//!
//! All or nothing: secrets are resolved and every template rendered (strict: an undefined
//! variable is an error) before anything is written; files go to a fresh temporary
//! directory that replaces the old one only when complete. A failed render leaves the
//! service's config exactly as it was.
//!
//! What is recorded (journal `step_progress` event `config_rendered`, `slipway status`):
//! per file, the sha256 of the **template**, the sha256 of the rendering **with secrets
//! masked** (`***secret://env/NAME***`, exactly what `slipway render` prints and digests),
//! and the **names** of the secrets used — never a digest of bytes that contain a secret.
//! The journal and audit chain are readable by many; a plain sha256 over a file holding a
//! low-entropy secret (a short password, a PIN) would let anyone with the audit trail find
//! the secret by trying candidates offline. The masked digest still pins everything else
//! in the file, and the template digest pins the text the secrets went into. A file that
//! uses no secret also records the sha256 of its exact bytes (then equal to the masked
//! one).
//!
//! [`install_config`] is the whole operation as a plain function, for targets that render
//! config themselves (it takes a port for `{{ port }}`; no target renders per instance
//! yet).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::plan::{Plan, StepAction};
use slipway_model::spec::{self, ReleaseSpec};
use slipway_package::digest::sha256_bytes;
use slipway_package::{
    EnvFileResolver, Redactor, RenderOptions, SecretMode, render_environment, resolve_secrets,
};

/// Name of the record kept inside each rendered directory (no secret in it).
pub const RECORD_FILE: &str = ".slipway-config.json";

/// What was rendered for one file: digests and secret names, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// The service.
    pub service: String,
    /// Template path as written in the spec.
    pub template: String,
    /// `dest` as written in the spec.
    pub dest: String,
    /// Where the file was written.
    pub path: String,
    /// sha256 of the template's bytes.
    pub template_sha256: String,
    /// sha256 of the rendering with every secret masked (what `slipway render` digests).
    pub masked_sha256: String,
    /// sha256 of the file's exact bytes, only when it holds no secret (see module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The secret references the file uses (`secret://env/NAME`), never their values.
    pub secrets: Vec<String>,
}

/// The record file: which step wrote the directory, and what is in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DirRecord {
    run: String,
    key: String,
    files: Vec<ConfigRecord>,
}

/// The directory a service's config is rendered into under `root` (the environment's
/// config root, `<store dir>/config/<env>`).
pub fn service_dir(root: &Path, service: &str) -> PathBuf {
    root.join(service)
}

/// The directory one version of a service's config is rendered into, for services run
/// as versioned instances side by side (see the module docs). Versions are semver
/// (validated in the spec), so the version is one plain path component.
pub fn version_dir(root: &Path, service: &str, version: &str) -> PathBuf {
    root.join(service).join(version)
}

/// The config root of an environment beside a store.
pub fn env_root(store_dir: &Path, environment: &str) -> PathBuf {
    store_dir.join("config").join(environment)
}

/// Enough of a spec to render templates, rebuilt from the plan (the plan carries the
/// environment, the services and the release identity; templates see nothing else).
fn spec_from_plan(plan: &Plan) -> ReleaseSpec {
    ReleaseSpec {
        api_version: spec::API_VERSION.to_owned(),
        kind: spec::KIND.to_owned(),
        metadata: spec::Metadata {
            name: plan.release.name.clone(),
            version: plan.release.version.clone(),
            release_type: plan.release.release_type,
            change: plan.release.change.clone(),
            owner: plan.release.owner.clone(),
            tag: None,
            description: None,
            known_issues: Vec::new(),
            contacts: Vec::new(),
        },
        services: plan.services.clone(),
        environments: BTreeMap::from([(plan.environment.clone(), plan.env.clone())]),
        strategy: None,
        analysis_templates: BTreeMap::new(),
        providers: BTreeMap::new(),
        checks: BTreeMap::new(),
        notifications: Vec::new(),
        policy: None,
        waivers: Vec::new(),
        checklist: Vec::new(),
        parity: None,
        lifecycle: None,
    }
}

/// `dest` as a path inside the config directory: a leading `/` is dropped, `..` refused
/// (a template must not write outside its service's directory).
fn relative_dest(dest: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(dest).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "config dest `{dest}` leaves the service's config directory; write a path without `..`"
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("config dest `{dest}` names no file"));
    }
    Ok(out)
}

fn read_record(dir: &Path) -> Option<DirRecord> {
    let text = std::fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Renders `service`'s config for the plan's environment and replaces `dir` with it.
///
/// Secrets (`secret://env/NAME`, `secret://file/PATH` relative to `spec_dir`) are resolved
/// here; `port` fills `{{ port }}` on targets that assign ports. `pinned` maps template
/// paths to the sha256 the plan recorded: a template that changed since is refused (with
/// both digests), so what is rendered with production secrets is what was approved.
/// Every error is returned before anything is written, and error texts pass through a
/// redactor of the resolved values. `run` and `key` are recorded in the directory so a
/// step can tell its own render from another's.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a different input of one install; a struct would only rename them"
)]
pub fn install_config(
    plan: &Plan,
    spec_dir: &Path,
    service: &str,
    port: Option<u16>,
    pinned: &BTreeMap<String, String>,
    dir: &Path,
    run: &str,
    key: &str,
) -> Result<Vec<ConfigRecord>, String> {
    // Integrity first: a template edited since the plan is not rendered at all.
    if let Some(svc) = plan.services.get(service) {
        for c in &svc.config {
            let Some(planned) = pinned.get(&c.template) else {
                continue;
            };
            let now = std::fs::read(spec_dir.join(&c.template))
                .map(|b| sha256_bytes(&b))
                .map_err(|e| {
                    format!(
                        "failed to render the config of `{service}`: cannot read {}: {e}",
                        c.template
                    )
                })?;
            if *planned != now {
                return Err(format!(
                    "failed to render the config of `{service}`: refused: template {} changed since the plan was made (planned sha256 {planned}, now {now}); plan and approve the release again",
                    c.template
                ));
            }
        }
    }
    let spec = spec_from_plan(plan);
    let resolver = EnvFileResolver {
        base_dir: spec_dir.to_path_buf(),
    };
    let secrets = resolve_secrets(&plan.env, &resolver)
        .map_err(|e| format!("failed to render the config of `{service}`: {e}"))?;
    let redactor = secrets.redactor();
    let fail = |what: String| {
        redactor.redact(&format!(
            "failed to render the config of `{service}`: {what}"
        ))
    };
    let real = render_environment(
        &spec,
        spec_dir,
        &plan.environment,
        Some(service),
        &RenderOptions {
            secrets: SecretMode::Resolved(&secrets),
            port,
        },
    )
    .map_err(|e| fail(e.to_string()))?;
    let masked = render_environment(
        &spec,
        spec_dir,
        &plan.environment,
        Some(service),
        &RenderOptions {
            secrets: SecretMode::Masked,
            port,
        },
    )
    .map_err(|e| fail(e.to_string()))?;

    let mut records = Vec::new();
    let mut planned = Vec::new();
    for (r, m) in real.iter().zip(&masked) {
        let rel = relative_dest(&r.dest).map_err(fail)?;
        let template = std::fs::read(spec_dir.join(&r.template))
            .map_err(|e| fail(format!("cannot read {}: {e}", r.template)))?;
        let template_sha256 = sha256_bytes(&template);
        if let Some(planned) = pinned.get(&r.template)
            && *planned != template_sha256
        {
            return Err(fail(format!(
                "refused: template {} changed since the plan was made (planned sha256 {planned}, now {template_sha256}); plan and approve the release again",
                r.template
            )));
        }
        records.push(ConfigRecord {
            service: service.to_owned(),
            template: r.template.clone(),
            dest: r.dest.clone(),
            path: dir.join(&rel).display().to_string(),
            template_sha256,
            masked_sha256: m.sha256.clone(),
            sha256: r.secrets.is_empty().then(|| r.sha256.clone()),
            secrets: r.secrets.clone(),
        });
        planned.push((rel, r.content.as_bytes()));
    }
    write_dir(
        dir,
        &planned,
        &DirRecord {
            run: run.to_owned(),
            key: key.to_owned(),
            files: records.clone(),
        },
    )
    .map_err(fail)?;
    Ok(records)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Writes the files into a fresh temporary directory, then swaps it in: the old directory
/// becomes `.<service>.previous` (for undo), the new one takes its name.
fn write_dir(dir: &Path, files: &[(PathBuf, &[u8])], record: &DirRecord) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let parent = dir.parent().unwrap_or(Path::new("."));
    let mkdir = |p: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| format!("cannot create {}: {e}", p.display()))
    };
    mkdir(parent)?;
    let tmp = sibling(dir, "new");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| format!("cannot clear {}: {e}", tmp.display()))?;
    }
    mkdir(&tmp)?;
    let write = |rel: &Path, bytes: &[u8]| -> Result<(), String> {
        let path = tmp.join(rel);
        if let Some(p) = path.parent() {
            mkdir(p)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    for (rel, bytes) in files {
        write(rel, bytes)?;
    }
    let json = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    write(Path::new(RECORD_FILE), &json)?;
    let previous = sibling(dir, "previous");
    if dir.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous)
                .map_err(|e| format!("cannot clear {}: {e}", previous.display()))?;
        }
        std::fs::rename(dir, &previous)
            .map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
    } else if previous.exists() {
        // A previous directory from an older render that had none before it: stale.
        std::fs::remove_dir_all(&previous)
            .map_err(|e| format!("cannot clear {}: {e}", previous.display()))?;
    }
    std::fs::rename(&tmp, dir)
        .map_err(|e| format!("cannot put {} in place: {e}", dir.display()))?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", parent.display()))
}

/// Renders config for `render_config` steps of one plan.
pub struct ConfigTarget {
    plan: Arc<Plan>,
    /// Where templates and `secret://file/` paths resolve: the spec file's directory.
    spec_dir: PathBuf,
    /// The environment's config root, `<store dir>/config/<env>`.
    root: PathBuf,
}

impl ConfigTarget {
    /// A target rendering the plan's services' config under `root`.
    pub fn new(plan: Plan, spec_dir: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            plan: Arc::new(plan),
            spec_dir: spec_dir.into(),
            root: root.into(),
        }
    }

    fn service<'a>(ctx: &'a StepContext, action: &StepAction) -> Result<&'a str, TargetError> {
        if !matches!(action, StepAction::RenderConfig { .. }) {
            return Err(TargetError::Unsupported {
                target: "config",
                action: slipway_engine::target::action_kind(action),
            });
        }
        Ok(ctx.step_id.split('/').next().unwrap_or(&ctx.step_id))
    }

    /// Where `service`'s config goes: its version's directory when the plan deploys it as
    /// instances (a `deploy` step), else the service's directory.
    fn dir(&self, service: &str) -> PathBuf {
        let deployed = self.plan.steps.iter().find_map(|s| match &s.action {
            StepAction::Deploy { version, .. } if s.service == service => Some(version),
            _ => None,
        });
        match deployed {
            Some(version) => version_dir(&self.root, service, version),
            None => service_dir(&self.root, service),
        }
    }

    fn pinned(action: &StepAction) -> BTreeMap<String, String> {
        match action {
            StepAction::RenderConfig { templates, .. } => templates.clone(),
            _ => BTreeMap::new(),
        }
    }
}

fn summary(records: &[ConfigRecord]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "{} -> {} (template sha256 {}, masked sha256 {}{})\n",
                r.template,
                r.path,
                r.template_sha256,
                r.masked_sha256,
                if r.secrets.is_empty() {
                    String::new()
                } else {
                    format!(", secrets: {}", r.secrets.join(", "))
                }
            )
        })
        .collect()
}

impl Target for ConfigTarget {
    fn kind(&self) -> &'static str {
        "config"
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let service = Self::service(ctx, action)?.to_owned();
            let dir = self.dir(&service);
            if let Some(rec) = read_record(&dir)
                && rec.key == ctx.key
                && rec.run == ctx.run_id
            {
                return Ok(Applied::AlreadyDone {
                    guard: format!("{} was rendered by this step", dir.display()),
                });
            }
            let (plan, spec_dir) = (Arc::clone(&self.plan), self.spec_dir.clone());
            let (run, key) = (ctx.run_id.clone(), ctx.key.clone());
            let d = dir.clone();
            let svc = service.clone();
            let pinned = Self::pinned(action);
            let res = tokio::task::spawn_blocking(move || {
                install_config(&plan, &spec_dir, &svc, None, &pinned, &d, &run, &key)
            })
            .await
            .map_err(|e| TargetError::Io(format!("config render task failed: {e}")))?;
            let records = res.map_err(|message| TargetError::Failed {
                message,
                output: StepOutput::default(),
            })?;
            ctx.report(serde_json::json!({
                "event": "config_rendered",
                "service": service,
                "dir": dir.display().to_string(),
                "files": records,
            }));
            Ok(Applied::Ran {
                output: StepOutput {
                    exit_code: Some(0),
                    stdout: summary(&records),
                    stderr: String::new(),
                    truncated: false,
                },
            })
        })
    }

    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            let service = Self::service(ctx, action)?;
            let dir = self.dir(service);
            match read_record(&dir) {
                Some(rec) if rec.key == ctx.key && rec.run == ctx.run_id => Ok(Observation::Done {
                    evidence: format!("{} holds this step's render", dir.display()),
                }),
                _ => Ok(Observation::NotDone {
                    evidence: format!("{} does not hold this step's render", dir.display()),
                }),
            }
        })
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async move {
            let service = Self::service(ctx, action)?;
            let dir = self.dir(service);
            // Only our own render is rolled back: after a restart mid-undo the directory
            // may already hold the previous config again.
            let ours = read_record(&dir).is_some_and(|r| r.key == ctx.key && r.run == ctx.run_id);
            if !ours {
                return Ok(Some(StepOutput {
                    exit_code: Some(0),
                    stdout: format!(
                        "{} does not hold this step's render; nothing to undo\n",
                        dir.display()
                    ),
                    ..StepOutput::default()
                }));
            }
            let previous = sibling(&dir, "previous");
            let io = |what: &str, p: &Path, e: std::io::Error| {
                TargetError::Io(format!("{what} {}: {e}", p.display()))
            };
            let gone = sibling(&dir, "undone");
            if gone.exists() {
                std::fs::remove_dir_all(&gone).map_err(|e| io("clear", &gone, e))?;
            }
            std::fs::rename(&dir, &gone).map_err(|e| io("move aside", &dir, e))?;
            let stdout = if previous.exists() {
                std::fs::rename(&previous, &dir).map_err(|e| io("restore", &previous, e))?;
                format!("restored the previous config in {}\n", dir.display())
            } else {
                format!("removed {} (there was no config before)\n", dir.display())
            };
            std::fs::remove_dir_all(&gone).map_err(|e| io("remove", &gone, e))?;
            Ok(Some(StepOutput {
                exit_code: Some(0),
                stdout,
                ..StepOutput::default()
            }))
        })
    }
}

/// A redactor for every secret the plan's environment references, `env` and `file`
/// alike, resolved as an install would (unresolvable ones have nothing to mask). Steps
/// may print their rendered config, so captured output must mask file secrets too.
pub fn plan_redactor(plan: &Plan, spec_dir: &Path) -> Redactor {
    use slipway_package::{SecretRef, SecretResolver};
    let resolver = EnvFileResolver {
        base_dir: spec_dir.to_path_buf(),
    };
    Redactor::new(
        plan.env
            .vars
            .values()
            .filter_map(|v| match SecretRef::parse(v.as_str()) {
                Ok(Some(r)) => resolver.resolve(&r).ok().map(|value| (r, value)),
                _ => None,
            }),
    )
}
