//! Planning a spec file: read and validate it, gather the facts the pure planner cannot
//! gather itself (git tags beside the spec, migration files, pinned inventories and
//! templates, compatibility documents, what ran before in the store), plan, and add the
//! findings that need files or the store (packaging, artifacts, rollback staging, recovery,
//! ssh inventories, routers, target availability).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use slipway_model::diag::SpecErrors;
use slipway_model::plan::{self, Facts, Finding, Plan};
use slipway_model::validate::{self, LoadedSpec};

use crate::error::{Hint, OpsError, OpsResult};

/// Why a spec could not be planned.
#[derive(Debug)]
pub enum PlanError {
    /// The spec does not validate: every diagnostic, for the front end to render.
    Spec(Box<SpecErrors>),
    /// Anything else (unreadable file, unknown environment).
    Ops(OpsError),
}

impl From<OpsError> for PlanError {
    fn from(e: OpsError) -> Self {
        Self::Ops(e)
    }
}

/// Read and validate a spec file (warnings are in the result).
pub fn load_spec(path: &Path) -> Result<LoadedSpec, PlanError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| {
        OpsError::input(format!("failed to read spec `{shown}`: {e}")).hint(Hint::text(
            "pass the release spec with -f, e.g. -f examples/shop/release.yaml",
        ))
    })?;
    if meta.is_dir() {
        return Err(
            OpsError::input(format!("`{shown}` is a directory, not a spec file"))
                .hint(Hint::text(format!(
                    "pass the file, e.g. -f {}",
                    path.join("release.yaml").display()
                )))
                .into(),
        );
    }
    if meta.len() > slipway_model::yaml::MAX_SPEC_BYTES as u64 {
        return Err(OpsError::input(format!(
            "spec `{shown}` is {} bytes; the limit is {} bytes",
            meta.len(),
            slipway_model::yaml::MAX_SPEC_BYTES
        ))
        .hint(Hint::text("split the release into smaller specs"))
        .into());
    }
    let bytes = std::fs::read(path).map_err(|e| {
        OpsError::input(format!("failed to read spec `{shown}`: {e}"))
            .hint(Hint::text("check the path and its permissions"))
    })?;
    validate::load_bytes(&shown, &bytes).map_err(|e| PlanError::Spec(Box::new(e)))
}

/// The directory a spec's relative paths resolve against.
pub fn spec_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Facts from the machine: git tags beside the spec, migration files, the digests of the
/// inventories and templates the plan pins.
pub fn gather_facts(spec_path: &Path, loaded: &LoadedSpec) -> Facts {
    let dir = spec_dir(spec_path);
    let mut facts = Facts::default();
    if let Some(tag) = slipway_model::plan::release_tag(&loaded.spec) {
        facts.git_tags = git_tags(dir);
        // HEAD and a clean tree, or artifacts built from the tag (the model decides).
        facts.git = slipway_govern::git::tag_state(dir, &tag);
        facts.artifact_revisions = slipway_package::artifact_revisions(&loaded.spec, dir);
    }
    for env in loaded.spec.environments.values() {
        if let Some(t) = &env.target.ssh
            && let Ok(bytes) = std::fs::read(dir.join(&t.inventory))
        {
            facts.target_files.insert(
                t.inventory.clone(),
                slipway_package::digest::sha256_bytes(&bytes),
            );
        }
    }
    for (name, svc) in &loaded.spec.services {
        for c in &svc.config {
            if let Ok(bytes) = std::fs::read(dir.join(&c.template)) {
                facts.config_templates.insert(
                    c.template.clone(),
                    slipway_package::digest::sha256_bytes(&bytes),
                );
            }
        }
        if let Some(m) = &svc.migrations {
            facts
                .migrations
                .insert(name.clone(), migration_files(&dir.join(m)));
        }
    }
    facts
}

fn git_tags(dir: &Path) -> Option<Vec<String>> {
    let out = slipway_stdx::command("git")
        .arg("-C")
        .arg(dir)
        .args(["tag", "--list"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

/// `V{n}__x.sql` files and whether a matching `U{n}__*.sql` exists.
fn migration_files(dir: &Path) -> Vec<(u32, bool)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut up = BTreeSet::new();
    let mut down = BTreeSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((head, _)) = name.split_once("__") else {
            continue;
        };
        if !name.ends_with(".sql") {
            continue;
        }
        if let Some(n) = head.strip_prefix('V').and_then(|n| n.parse::<u32>().ok()) {
            up.insert(n);
        } else if let Some(n) = head.strip_prefix('U').and_then(|n| n.parse::<u32>().ok()) {
            down.insert(n);
        }
    }
    up.into_iter().map(|v| (v, down.contains(&v))).collect()
}

/// The targets a deploy can run a plan on.
pub const DEPLOYABLE_TARGETS: &[slipway_model::spec::TargetKind] = &[
    slipway_model::spec::TargetKind::Exec,
    slipway_model::spec::TargetKind::Process,
    slipway_model::spec::TargetKind::Ssh,
];

/// A validated spec and its plan for one environment.
pub struct Planned {
    /// The spec.
    pub loaded: LoadedSpec,
    /// The plan, with every finding.
    pub plan: Plan,
}

/// What a plan is asked for beyond its file and environment.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Plan (and deploy) without the promotion evidence the lifecycle requires, for this
    /// reason: a warning instead of a blocking finding, a waiver journaled when the run
    /// starts, and an approver other than the author.
    pub override_promotion: Option<String>,
}

/// Make the plan for a spec file and environment, with every finding. `store` names the
/// store whose history says what a rollback would return to (never created here).
pub async fn plan_file(file: &Path, env: &str, store: Option<&str>) -> Result<Planned, PlanError> {
    plan_file_with(file, env, store, &PlanOptions::default()).await
}

/// [`plan_file`] with options.
pub async fn plan_file_with(
    file: &Path,
    env: &str,
    store: Option<&str>,
    options: &PlanOptions,
) -> Result<Planned, PlanError> {
    let loaded = load_spec(file)?;
    let mut facts = gather_facts(file, &loaded);
    // The admin policy of the environment comes from the store, never from the spec.
    facts.policy = admin_policy(store, env).await?;
    // What runs there comes from the store's history, never from the spec: the spec's
    // `deployed:` is only for systems Slipway does not deploy (see `deployed_findings`).
    let history = history_versions(store, env).await?;
    facts.deployed = history
        .iter()
        .map(|(s, (v, _))| (s.clone(), v.clone()))
        .collect();
    let dir = spec_dir(file);
    // Only this release's migrations are judged: those already applied there are not
    // (read from each migration service's database without writing).
    let (applied, applied_problems) = if loaded
        .spec
        .services
        .values()
        .any(|s| s.migrations.is_some())
    {
        slipway_providers::migrate::applied_versions(&loaded.spec, env, dir).await
    } else {
        Default::default()
    };
    // Breaking compatibility (OpenAPI documents, contract migrations) is read from the
    // files here and judged by the planner, where it changes gates and strategy.
    let (compat, compat_problems) =
        slipway_package::compat::findings(&loaded.spec, dir, Some(env), &applied);
    facts.compat = compat;
    let mut p = plan::plan(&loaded.spec, env, &facts).map_err(|m| {
        OpsError::input(m).hint(Hint::text(format!(
            "pick one of the environments declared in {}",
            file.display()
        )))
    })?;
    // Promotion through the lifecycle: the same inputs must have succeeded before. Under
    // an admin policy its `promote_from` decides (the spec's lifecycle cannot drop it);
    // without one, the spec's lifecycle.
    let policy_rule = facts.policy.as_ref().and_then(|ap| {
        ap.env.promote_from.as_ref().map(|pf| {
            (
                pf.rule(),
                format!("{} ({} → {env})", ap.source("promote_from"), pf.environment),
            )
        })
    });
    let rule = policy_rule.or_else(|| {
        loaded
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.promotion_into(env))
            .map(|r| {
                let source = format!("lifecycle ({} → {env})", r.from);
                (r, source)
            })
    });
    if let Some((rule, source)) = rule {
        let inputs = slipway_model::promotion::inputs(&p);
        let mut ev = promotion_evidence(store, &rule, &inputs).await;
        ev.override_reason = options.override_promotion.clone();
        slipway_model::promotion::apply_from(&mut p, &rule, &ev, source);
    }
    // Packaging checks (config placeholders, version constraints against what runs there,
    // migration compatibility) need the files beside the spec, so they run here rather
    // than in the pure planner. Findings are advisory data and not part of the digest.
    // The admin policy's migration dry run, for the migrations still to apply there.
    let dry_run = crate::recovery::dry_run_findings(
        &loaded.spec,
        env,
        dir,
        store,
        facts.policy.as_ref(),
        &applied,
    )
    .await;
    let checks = slipway_package::plan_checks(
        &loaded.spec,
        dir,
        env,
        &slipway_package::CheckFacts {
            deployed: facts.deployed.clone(),
            applied_migrations: applied,
        },
    );
    p.findings
        .extend(deployed_findings(&loaded.spec, env, &history, file));
    p.findings.extend(applied_problems);
    p.findings.extend(checks.findings);
    p.findings.extend(compat_problems);
    p.findings.extend(rollback_staging(&p, dir, store).await);
    // Backups against windows, and the rollback rehearsal production may require.
    // Judged on the environment as the plan has it — the admin policy may require a
    // rehearsal or production that the spec does not declare.
    let mut tightened = loaded.clone();
    tightened
        .spec
        .environments
        .insert(env.to_owned(), p.env.clone());
    p.findings
        .extend(crate::recovery::plan_findings(file, &tightened, env, store).await);
    // Reviews after the fact this release still owes block its next production change.
    if p.env.production {
        p.findings
            .extend(crate::review::plan_findings(store, &loaded.spec.metadata.name).await);
    }
    p.findings.extend(dry_run);
    // Integrity before promotion: the artifact must be the one the spec names (and signed
    // by a trusted key when the plan has a signature gate). Checked again at install time
    // by each service's verify-artifact step.
    p.findings.extend(slipway_package::check_artifacts(
        &loaded.spec,
        dir,
        p.signature_keys(),
    ));
    p.findings.extend(target_unavailable(&p, file));
    p.findings.extend(ssh_findings(&p, file, dir));
    p.findings.extend(router_findings(&p));
    // The change record, asked in the environment's change system (see `crate::change`).
    p.findings.extend(crate::change::plan_findings(&p).await);
    Ok(Planned { loaded, plan: p })
}

/// The runs of the lifecycle's previous environment, for these inputs: the newest run
/// there with exactly these inputs (its state, when it finished, its post checks).
async fn promotion_evidence(
    store: Option<&str>,
    rule: &slipway_model::promotion::PromotionRule,
    inputs: &std::collections::BTreeMap<String, String>,
) -> slipway_model::promotion::PromotionEvidence {
    use slipway_engine::Store as _;
    use slipway_engine::event::EngineEvent;
    use slipway_model::promotion::{PriorRun, PromotionEvidence};
    let mut ev = PromotionEvidence {
        now: Some(slipway_stdx::now()),
        ..PromotionEvidence::default()
    };
    let Some((loc, _)) = crate::session::layout_for(store) else {
        ev.unavailable = Some("the store's location cannot be resolved".into());
        return ev;
    };
    if let slipway_store::StoreLocation::Sqlite(db) = &loc
        && !db.exists()
    {
        return ev;
    }
    let read = async {
        let opened = slipway_store::open(&loc).await?;
        for r in opened.runs(1000).await? {
            if r.environment != rule.from {
                continue;
            }
            ev.runs_there += 1;
            let Some(full) = opened.run(&r.id).await? else {
                continue;
            };
            let same = crate::runs::plan_of(&full)
                .is_some_and(|p| &slipway_model::promotion::inputs(&p) == inputs);
            if !same {
                if ev.latest_other.is_none() {
                    ev.latest_other =
                        Some((r.id.clone(), r.version.clone(), r.state.as_str().to_owned()));
                }
                continue;
            }
            let post_checks = opened
                .journal(&r.id, 0)
                .await?
                .into_iter()
                .filter_map(|n| match n.event {
                    EngineEvent::CheckRan {
                        phase: slipway_model::spec::CheckPhase::Post,
                        name,
                        passed,
                        ..
                    } => Some((name, passed)),
                    _ => None,
                })
                .collect();
            ev.newest = Some(PriorRun {
                run: r.id.clone(),
                state: r.state.as_str().to_owned(),
                finished_at: r.state.is_terminal().then(|| r.updated_at.to_string()),
                post_checks,
            });
            break;
        }
        Ok::<(), slipway_engine::StoreError>(())
    };
    if let Err(e) = read.await {
        ev.unavailable = Some(e.to_string());
    }
    ev
}

/// The admin policy in force for `env` in the store `store` names, when the store exists
/// (planning never creates one) and has a policy.
async fn admin_policy(
    store: Option<&str>,
    env: &str,
) -> OpsResult<Option<slipway_model::admin_policy::AppliedPolicy>> {
    let Some((loc, _)) = crate::session::layout_for(store) else {
        return Ok(None);
    };
    if let slipway_store::StoreLocation::Sqlite(db) = &loc
        && !db.exists()
    {
        return Ok(None);
    }
    let opened = slipway_store::open(&loc).await?;
    crate::policy::for_environment(&opened, env).await
}

/// Per service, the version the store's history says runs in `env` and the run that put
/// it there (nothing when the store does not exist yet).
async fn history_versions(
    store: Option<&str>,
    env: &str,
) -> OpsResult<std::collections::BTreeMap<String, (String, String)>> {
    let Some((loc, _)) = crate::session::layout_for(store) else {
        return Ok(Default::default());
    };
    if let slipway_store::StoreLocation::Sqlite(db) = &loc
        && !db.exists()
    {
        return Ok(Default::default());
    }
    let opened = slipway_store::open(&loc).await?;
    crate::deployed::running_versions(&opened, env, None).await
}

/// Where the versions a plan compares against come from: the store's history (what
/// Slipway deployed), and the spec's `deployed:` only for systems Slipway has not deployed
/// there — an entry for one it has is ignored and said so.
fn deployed_findings(
    spec: &slipway_model::spec::ReleaseSpec,
    env: &str,
    history: &std::collections::BTreeMap<String, (String, String)>,
    file: &Path,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if !history.is_empty() {
        out.push(Finding {
            severity: slipway_model::plan::FindingSeverity::Info,
            code: "deployed-from-history".into(),
            message: format!(
                "running in {env} (from the store's history): {}",
                history
                    .iter()
                    .map(|(s, (v, r))| format!("{s} {v} (run {r})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let declared = spec
        .environments
        .get(env)
        .map(|e| e.deployed.clone())
        .unwrap_or_default();
    for (service, version) in declared {
        match history.get(&service) {
            Some((v, r)) => out.push(Finding {
                severity: slipway_model::plan::FindingSeverity::Warning,
                code: "deployed-override-ignored".into(),
                message: format!(
                    "{}: environments.{env}.deployed.{service} says {version}, but Slipway deployed {service} {v} there (run {r}), and its history wins; `deployed:` is only for systems Slipway does not deploy: remove the entry",
                    file.display()
                ),
            }),
            None => out.push(Finding {
                severity: slipway_model::plan::FindingSeverity::Info,
                code: "deployed-declared".into(),
                message: format!(
                    "{service} {version} in {env} is declared by hand (environments.{env}.deployed; Slipway has not deployed it there)"
                ),
            }),
        }
    }
    out
}

/// Which router fronts each service the plan deploys as instances when the environment
/// names one (an `info` finding per service, so `slipway plan` shows it and reviewers
/// approve it); without `router:` every service has the built-in proxy, as always.
fn router_findings(p: &Plan) -> Vec<Finding> {
    if p.env.target.process.is_none() || p.env.router.is_none() {
        return Vec::new();
    }
    slipway_providers::compose::deployed_services(p)
        .into_iter()
        .map(|(service, _)| {
            let how = match p.router_of(&service) {
                Some(r) if r.nginx.is_some() => {
                    let n = r
                        .nginx
                        .as_ref()
                        .map(|n| (n.upstream.as_str(), n.upstream_file.as_str()));
                    let (up, file) = n.unwrap_or_default();
                    format!("nginx upstream `{up}` in {file} (the built-in proxy is not started)")
                }
                Some(r) if r.haproxy.is_some() => {
                    let h = r
                        .haproxy
                        .as_ref()
                        .map(|h| (h.backend.as_str(), h.socket.as_str()));
                    let (be, sock) = h.unwrap_or_default();
                    format!(
                        "HAProxy backend `{be}` over {sock} (the built-in proxy is not started)"
                    )
                }
                _ => "the built-in proxy".to_owned(),
            };
            Finding {
                severity: slipway_model::plan::FindingSeverity::Info,
                code: "router".into(),
                message: format!("{service}: traffic through {how}"),
            }
        })
        .collect()
}

/// What an `ssh` plan cannot do, found before anyone approves it: an inventory that does
/// not load (or lacks the group, a user or a key), and services the ssh target has no way
/// to install — config templates of a service without `run:` (only supervised instances
/// get config delivered), container images, canaries, and `run:` services some host has
/// no port for. No host is contacted here.
fn ssh_findings(p: &Plan, file: &Path, dir: &Path) -> Vec<Finding> {
    use slipway_providers::ssh::{Inventory, SshTarget};
    let Some(t) = &p.env.target.ssh else {
        return Vec::new();
    };
    let error = |code: &str, message: String| Finding {
        severity: slipway_model::plan::FindingSeverity::Error,
        code: code.into(),
        message,
    };
    let mut out = Vec::new();
    let target = Inventory::load(&dir.join(&t.inventory)).and_then(|inv| {
        SshTarget::new(&inv, t.group.as_deref(), t.user.as_deref(), t.parallelism)?.with_waves(
            &inv,
            t.batch.as_ref(),
            t.max_failures.as_ref(),
        )
    });
    match &target {
        // The waves, from the inventory alone: which hosts go together, in which order.
        Ok(target) => {
            let waves = target.waves();
            out.push(Finding {
                severity: slipway_model::plan::FindingSeverity::Info,
                code: "ssh-waves".into(),
                message: format!(
                    "{} hosts in {} wave{} of up to {} (at most {} at once), failure budget {} host{}: {}",
                    target.endpoints().len(),
                    waves.len(),
                    if waves.len() == 1 { "" } else { "s" },
                    waves.first().map_or(0, Vec::len),
                    t.parallelism.unwrap_or(1).max(1),
                    target.max_failures(),
                    if target.max_failures() == 1 { "" } else { "s" },
                    waves
                        .iter()
                        .enumerate()
                        .map(|(i, w)| format!("wave {}: {}", i + 1, w.join(", ")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        Err(e) => out.push(error(
            "ssh-inventory",
            format!(
                "{}: environments.{}.target.ssh: {e}",
                file.display(),
                p.environment
            ),
        )),
    }
    for (name, svc) in &p.services {
        if svc.kind == slipway_model::spec::ServiceKind::Migration {
            continue;
        }
        let Some(run) = &svc.run else {
            if !svc.config.is_empty() {
                out.push(error(
                    "ssh-unsupported",
                    format!(
                        "{}: services.{name}.config: on the ssh target config is delivered to the hosts for services with `run:` (supervised instances); install the files with a step, give the service `run:`, or deploy it with `target: {{ exec: {{}} }}`",
                        file.display()
                    ),
                ));
            }
            if svc.steps.is_empty() {
                out.push(error(
                    "ssh-unsupported",
                    format!(
                        "{}: services.{name} has neither `steps:` nor `run:`; the ssh target runs a service's install steps on each host and supervises its `run:` instances there; add one of them",
                        file.display()
                    ),
                ));
            }
            continue;
        };
        if run.image.is_some() {
            out.push(error(
                "ssh-unsupported",
                format!(
                    "{}: services.{name}.run.image: container instances on ssh hosts are not supported yet; run a command (`run.command`), or deploy the image with `target: {{ process: {{}} }}`",
                    file.display()
                ),
            ));
        }
        // Canaries on a fleet shift traffic through HAProxy or nginx, one server per host
        // (`slipway_providers::fleet`); without one an ssh plan must not show traffic
        // steps nobody would enforce.
        let behind_balancer = p
            .router_of(name)
            .is_some_and(|r| r.haproxy.is_some() || r.nginx.is_some());
        if p.strategy.canary.is_some() && !behind_balancer {
            {
                out.push(error(
                    "ssh-unsupported",
                    format!(
                        "{}: environments.{}.strategy: a canary of `run:` services on the ssh target shifts traffic through HAProxy or nginx; add `router: {{ haproxy: {{ socket: …, backend: … }} }}` (one server per host, named after it) or `router: {{ nginx: {{ upstream_file: …, upstream: …, access_log: … }} }}` to the environment, or use `rolling` (hosts in waves of `target.ssh.batch`) for services.{name}",
                        file.display(),
                        p.environment
                    ),
                ));
            }
        }
        if let Ok(target) = &target {
            for e in target.endpoints() {
                if !e.host.ports.contains_key(name.as_str()) {
                    out.push(error(
                        "ssh-port",
                        format!(
                            "{}: services.{name} runs instances on the hosts, but the inventory {} gives host `{}` no port for it; fix: add `ports: {{ {name}: PORT }}` to the inventory (for every host) or to that host",
                            file.display(),
                            t.inventory,
                            e.host.name
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// A plan for a target this build cannot deploy to is blocked at plan time, before anyone
/// approves it, rather than refused only when the deploy starts.
fn target_unavailable(p: &Plan, file: &Path) -> Option<Finding> {
    (!DEPLOYABLE_TARGETS.contains(&p.target)).then(|| Finding {
        severity: slipway_model::plan::FindingSeverity::Error,
        code: "target-unavailable".into(),
        message: format!(
            "{}: environments.{}.target is `{}`, which this build of slipway cannot deploy to (it can: {}); use `target: {{ exec: {{}} }}` with install steps, or `target: {{ process: {{}} }}`",
            file.display(),
            p.environment,
            p.target,
            DEPLOYABLE_TARGETS
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Is the rollback target pre-staged? The release that last succeeded in this environment
/// is what a rollback returns to; its artifacts must already be in the artifact store
/// (kept there by the verify-artifact step when it was installed), digest- and
/// signature-verified, so that a rollback never depends on fetching or rebuilding
/// anything. Without a store (no history yet) there is nothing to check.
async fn rollback_staging(p: &Plan, spec_dir: &Path, store: Option<&str>) -> Vec<Finding> {
    let Some((loc, layout)) = crate::session::layout_for(store) else {
        return Vec::new();
    };
    // Planning must never create a store as a side effect: without one (the first plan
    // comes before the first deploy) there is no history to check.
    let previous = async {
        use slipway_engine::Store;
        let store = slipway_store::open_existing(&loc).await.ok()?;
        let runs = store.runs(1000).await.ok()?;
        let prev = runs.iter().find(|r| {
            r.environment == p.environment
                && r.release == p.release.name
                && r.state == slipway_engine::RunState::Succeeded
                && r.version != p.release.version
        })?;
        let full = store.run(&prev.id).await.ok()??;
        let plan: Plan = serde_json::from_str(&full.plan_json).ok()?;
        Some((prev.id.clone(), plan))
    }
    .await;
    let Some((run_id, prev)) = previous else {
        return Vec::new();
    };
    let cas = layout.artifacts();
    let keys = prev.signature_keys().map(<[String]>::to_vec);
    let mut kept = 0usize;
    let mut missing = Vec::new();
    for (name, svc) in &prev.services {
        let Some(a) = &svc.artifact else { continue };
        let stored = slipway_providers::artifact::stored_path(&cas, &a.sha256);
        let sig = a
            .signature
            .as_ref()
            .map(|_| stored.with_extension("minisig").display().to_string());
        // Keys resolve against this spec's directory: same environment, same trust roots.
        let checked = slipway_package::verify_artifact(
            spec_dir,
            &stored.display().to_string(),
            &a.sha256,
            sig.as_deref(),
            keys.as_deref().filter(|k| !k.is_empty()),
        );
        match checked {
            Ok(_) => kept += 1,
            Err(e) => missing.push(format!("{name} ({}): {e}", a.path)),
        }
    }
    let target = format!(
        "{} {} (run {run_id})",
        prev.release.name, prev.release.version
    );
    if !missing.is_empty() {
        vec![Finding {
            severity: slipway_model::plan::FindingSeverity::Error,
            code: "rollback-artifacts-missing".into(),
            message: format!(
                "the rollback target {target} is not pre-staged: {}; a rollback would have to fetch or rebuild it. Put the exact file back into {} under its sha256, or redeploy that release first",
                missing.join("; "),
                cas.display()
            ),
        }]
    } else if kept > 0 {
        vec![Finding {
            severity: slipway_model::plan::FindingSeverity::Info,
            code: "rollback-artifacts-staged".into(),
            message: format!(
                "rollback target {target}: {kept} artifact(s) pre-staged in {} and verified (digest{})",
                cas.display(),
                if keys.as_ref().is_some_and(|k| !k.is_empty()) {
                    " and signature"
                } else {
                    ""
                }
            ),
        }]
    } else {
        Vec::new()
    }
}

/// The blocking findings of a plan (severity `error`).
pub fn blocking(p: &Plan) -> Vec<&Finding> {
    p.findings
        .iter()
        .filter(|f| f.severity == slipway_model::plan::FindingSeverity::Error)
        .collect()
}

/// The spec file's directory, canonical when it can be (the run's workdir is absolute).
pub fn canonical_spec_dir(file: &Path) -> PathBuf {
    let dir = spec_dir(file).to_path_buf();
    std::fs::canonicalize(&dir).unwrap_or(dir)
}
