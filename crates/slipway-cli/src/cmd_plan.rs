//! `slipway plan`, `slipway validate`, `slipway diff`: reading specs and showing plans.
//!
//! Facts the pure planner cannot gather itself are collected here: git tags next to the
//! spec and the migration files of migration services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use slipway_model::exit;
use slipway_model::plan::{self, Facts, GateKind, Plan, StepAction};
use slipway_model::validate::{self, LoadedSpec};

use crate::out::{CliError, Output, Style};

/// `slipway plan`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway plan -f examples/shop/release.yaml --env prod\n  slipway plan -f release.yaml --env staging --output json"
)]
pub struct PlanArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// The environment to plan for.
    #[arg(long, value_name = "ENV")]
    pub env: String,
}

/// `slipway validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  slipway validate -f examples/shop/release.yaml")]
pub struct ValidateArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
}

/// `slipway diff`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway diff -f examples/shop/release.yaml --env staging --env prod\n  slipway diff -f release.yaml --env staging --env prod --fail-on-drift"
)]
pub struct DiffArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Two environments to compare (give `--env` twice).
    #[arg(long = "env", value_name = "ENV", num_args = 1, required = true)]
    pub envs: Vec<String>,
    /// Exit 1 when the environments differ.
    #[arg(long)]
    pub fail_on_drift: bool,
}

/// Read and validate a spec, printing diagnostics on failure.
pub fn load_spec(path: &Path, out: &Output) -> Result<LoadedSpec, CliError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| {
        CliError::input(
            format!("failed to read spec `{shown}`: {e}"),
            "pass the release spec with -f, e.g. -f examples/shop/release.yaml",
        )
    })?;
    if meta.is_dir() {
        return Err(CliError::input(
            format!("`{shown}` is a directory, not a spec file"),
            format!(
                "pass the file, e.g. -f {}",
                path.join("release.yaml").display()
            ),
        ));
    }
    if meta.len() > slipway_model::yaml::MAX_SPEC_BYTES as u64 {
        return Err(CliError::input(
            format!(
                "spec `{shown}` is {} bytes; the limit is {} bytes",
                meta.len(),
                slipway_model::yaml::MAX_SPEC_BYTES
            ),
            "split the release into smaller specs",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        CliError::input(
            format!("failed to read spec `{shown}`: {e}"),
            "check the path and its permissions",
        )
    })?;
    match validate::load_bytes(&shown, &bytes) {
        Ok(l) => {
            if !l.warnings.is_empty() && !out.json() {
                out.eline(&slipway_model::diag::render_all(
                    &l.file,
                    &l.source,
                    &l.warnings,
                    out.color_err,
                    100,
                ));
            }
            Ok(l)
        }
        Err(errs) => {
            if out.json() {
                out.json_value(&serde_json::json!({
                    "ok": false,
                    "exit_code": exit::INVALID_INPUT,
                    "file": errs.file,
                    "diagnostics": errs.diagnostics,
                }));
            } else {
                out.eline(&errs.render(out.color_err, 100));
            }
            Err(CliError {
                code: exit::INVALID_INPUT,
                message: format!(
                    "{shown} has {} error{}",
                    errs.error_count(),
                    if errs.error_count() == 1 { "" } else { "s" }
                ),
                // Already printed in JSON mode; the text hint is in each diagnostic.
                hint: None,
            }
            .silent_if(out.json()))
        }
    }
}

trait Silent {
    fn silent_if(self, json: bool) -> Self;
}

impl Silent for CliError {
    /// In JSON mode the diagnostics document is the output; a second error object would
    /// make stdout two documents.
    fn silent_if(self, json: bool) -> Self {
        if json {
            CliError {
                message: String::new(),
                ..self
            }
        } else {
            self
        }
    }
}

/// Facts from the machine: git tags beside the spec, migration files.
pub fn gather_facts(spec_path: &Path, loaded: &LoadedSpec) -> Facts {
    let dir = spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut facts = Facts::default();
    if loaded.spec.metadata.tag.is_some() {
        facts.git_tags = git_tags(dir);
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
    let out = std::process::Command::new("git")
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

/// `slipway validate`.
pub fn validate(a: ValidateArgs, out: &Output) -> Result<i32, CliError> {
    let l = load_spec(&a.file, out)?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": true,
            "file": l.file,
            "release": l.spec.metadata.name,
            "version": l.spec.metadata.version,
            "services": l.spec.services.len(),
            "environments": l.spec.environments.keys().collect::<Vec<_>>(),
            "diagnostics": l.warnings,
        }));
    } else {
        out.line(&format!(
            "{} {}: valid ({} services, environments: {}; {} warning{})",
            out.paint("ok", Style::Good),
            l.file,
            l.spec.services.len(),
            l.spec
                .environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            l.warnings.len(),
            if l.warnings.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(exit::SUCCESS)
}

/// Make the plan for a spec file and environment (shared with deploy).
pub fn make_plan(file: &Path, env: &str, out: &Output) -> Result<(LoadedSpec, Plan), CliError> {
    let loaded = load_spec(file, out)?;
    let mut facts = gather_facts(file, &loaded);
    // Breaking compatibility (OpenAPI documents, contract migrations) is read from the
    // files here and judged by the planner, where it changes gates and strategy.
    let compat_dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Only this release's migrations are judged: those already applied there are not.
    let (applied, applied_problems) = applied_migrations(&loaded.spec, env, compat_dir);
    let (compat, compat_problems) =
        slipway_package::compat::findings(&loaded.spec, compat_dir, Some(env), &applied);
    facts.compat = compat;
    let mut p = plan::plan(&loaded.spec, env, &facts).map_err(|m| {
        CliError::input(
            m,
            format!(
                "pick one of the environments declared in {}",
                file.display()
            ),
        )
    })?;
    // Packaging checks (config placeholders, version constraints against what runs there,
    // migration compatibility) need the files beside the spec, so they run here rather
    // than in the pure planner. Findings are advisory data and not part of the digest.
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let checks = slipway_package::plan_checks(
        &loaded.spec,
        dir,
        env,
        &slipway_package::CheckFacts {
            deployed: facts.deployed.clone(),
            applied_migrations: applied,
        },
    );
    p.findings.extend(applied_problems);
    p.findings.extend(checks.findings);
    p.findings.extend(compat_problems);
    p.findings.extend(rollback_staging(&p, dir));
    // Backups against windows, and the rollback rehearsal production may require.
    let recovery = crate::cmd_rehearse::plan_findings(file, &loaded, env);
    p.findings.extend(recovery);
    // Integrity before promotion: the artifact must be the one the spec names (and signed
    // by a trusted key when the plan has a signature gate). Checked again at install time
    // by each service's verify-artifact step.
    let artifact_findings = slipway_package::check_artifacts(&loaded.spec, dir, p.signature_keys());
    p.findings.extend(artifact_findings);
    p.findings.extend(target_unavailable(&p, file));
    p.findings.extend(ssh_findings(&p, file, dir));
    p.findings.extend(router_findings(&p));
    Ok((loaded, p))
}

/// The latest migration applied to each migration service's database in `env`
/// (`slipway_providers::migrate::applied_versions`), read without writing.
fn applied_migrations(
    spec: &slipway_model::spec::ReleaseSpec,
    env: &str,
    dir: &Path,
) -> (BTreeMap<String, u32>, Vec<plan::Finding>) {
    if !spec.services.values().any(|s| s.migrations.is_some()) {
        return Default::default();
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(slipway_providers::migrate::applied_versions(spec, env, dir)),
        Err(_) => Default::default(),
    }
}

/// Which router fronts each service the plan deploys as instances when the environment
/// names one (an `info` finding per service, so `slipway plan` shows it and reviewers
/// approve it); without `router:` every service has the built-in proxy, as always.
fn router_findings(p: &Plan) -> Vec<plan::Finding> {
    if p.env.target.process.is_none() || p.env.router.is_none() {
        return Vec::new();
    }
    crate::cmd_run::deployed_services(p)
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
            plan::Finding {
                severity: "info".into(),
                code: "router".into(),
                message: format!("{service}: traffic through {how}"),
            }
        })
        .collect()
}

/// The targets `slipway deploy` can run a plan on.
pub const DEPLOYABLE_TARGETS: &[&str] = &["exec", "process", "ssh"];

/// What an `ssh` plan cannot do, found before anyone approves it: an inventory that does
/// not load (or lacks the group, a user or a key), and services the ssh target has no way
/// to install — `run:` instances (it runs install `steps:` only) and config templates
/// (rendered on this machine, not on the hosts). No host is contacted here.
fn ssh_findings(p: &Plan, file: &Path, dir: &Path) -> Vec<plan::Finding> {
    let Some(t) = &p.env.target.ssh else {
        return Vec::new();
    };
    let error = |code: &str, message: String| plan::Finding {
        severity: "error".into(),
        code: code.into(),
        message,
    };
    let mut out = Vec::new();
    match slipway_providers::ssh::Inventory::load(&dir.join(&t.inventory)).and_then(|inv| {
        slipway_providers::ssh::SshTarget::new(
            &inv,
            t.group.as_deref(),
            t.user.as_deref(),
            t.parallelism,
        )?
        .with_waves(&inv, t.batch.as_ref(), t.max_failures.as_ref())
    }) {
        // The waves, from the inventory alone: which hosts go together, in which order.
        Ok(target) => {
            let waves = target.waves();
            out.push(plan::Finding {
                severity: "info".into(),
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
        if !svc.config.is_empty() {
            out.push(error(
                "ssh-unsupported",
                format!(
                    "{}: services.{name}.config: the ssh target does not render config templates on the hosts yet; install the files with a step, or deploy this service with `target: {{ exec: {{}} }}`",
                    file.display()
                ),
            ));
        }
        if svc.steps.is_empty() {
            out.push(error(
                "ssh-unsupported",
                format!(
                    "{}: services.{name} has no `steps:`; the ssh target runs a service's install steps on each host (it does not supervise `run:` instances); add `steps: [{{ name: install, run: ... }}]`",
                    file.display()
                ),
            ));
        }
    }
    out
}

/// A plan for a target this build cannot deploy to is blocked at plan time, before anyone
/// approves it, rather than refused only when the deploy starts.
fn target_unavailable(p: &Plan, file: &Path) -> Option<plan::Finding> {
    (!DEPLOYABLE_TARGETS.contains(&p.target.as_str())).then(|| plan::Finding {
        severity: "error".into(),
        code: "target-unavailable".into(),
        message: format!(
            "{}: environments.{}.target is `{}`, which this build of slipway cannot deploy to (it can: {}); use `target: {{ exec: {{}} }}` with install steps, or `target: {{ process: {{}} }}`",
            file.display(),
            p.environment,
            p.target,
            DEPLOYABLE_TARGETS.join(", ")
        ),
    })
}

/// Is the rollback target pre-staged? The release that last succeeded in this environment
/// is what a rollback returns to; its artifacts must already be in the artifact store
/// (kept there by the verify-artifact step when it was installed), digest- and
/// signature-verified, so that a rollback never depends on fetching or rebuilding
/// anything. Without a store (no history yet) there is nothing to check.
fn rollback_staging(p: &Plan, spec_dir: &Path) -> Vec<plan::Finding> {
    let Ok(cwd) = std::env::current_dir() else {
        return Vec::new();
    };
    let url = std::env::var("SLIPWAY_STORE").ok();
    let Ok(loc) = slipway_store::resolve(url.as_deref(), &cwd) else {
        return Vec::new();
    };
    let db = &crate::cmd_run::local_anchor(&loc, &cwd);
    // Planning must never create a store as a side effect (a PostgreSQL database named by
    // the URL is the store already; opening it creates the schema at most).
    if matches!(loc, slipway_store::StoreLocation::Sqlite(_)) && !db.exists() {
        return Vec::new();
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let previous = rt.block_on(async {
        use slipway_engine::Store;
        let store = slipway_store::open(&loc).await.ok()?;
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
    });
    let Some((run_id, prev)) = previous else {
        return Vec::new();
    };
    let cas = db.parent().unwrap_or(Path::new(".")).join("artifacts");
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
        vec![plan::Finding {
            severity: "error".into(),
            code: "rollback-artifacts-missing".into(),
            message: format!(
                "the rollback target {target} is not pre-staged: {}; a rollback would have to fetch or rebuild it. Put the exact file back into {} under its sha256, or redeploy that release first",
                missing.join("; "),
                cas.display()
            ),
        }]
    } else if kept > 0 {
        vec![plan::Finding {
            severity: "info".into(),
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

/// `slipway plan`.
pub fn plan(a: PlanArgs, out: &Output) -> Result<i32, CliError> {
    let (_, p) = make_plan(&a.file, &a.env, out)?;
    let blocked = p.findings.iter().any(|f| f.severity == "error");
    if out.json() {
        out.json_value(&p);
    } else {
        out.raw(&render_plan(&p, out));
    }
    Ok(if blocked {
        exit::BLOCKED
    } else {
        exit::SUCCESS
    })
}

/// The plan as text: a header, then waves, steps, gates, risk, recommendation, findings.
pub fn render_plan(p: &Plan, out: &Output) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let b = |t: &str| out.paint(t, Style::Bold);
    let _ = writeln!(
        s,
        "{} {} {} ({}) → {}{}",
        b("Plan"),
        p.release.name,
        p.release.version,
        p.release.release_type.as_str(),
        p.environment,
        if p.production { " [production]" } else { "" }
    );
    let _ = writeln!(s, "  digest    sha256:{}", p.digest);
    let _ = writeln!(s, "  target    {}", p.target);
    let _ = writeln!(s, "  strategy  {}", p.strategy_kind);
    if let Some(c) = &p.release.change {
        let _ = writeln!(s, "  change    {c}");
    }
    if let Some(o) = &p.release.owner {
        let _ = writeln!(s, "  owner     {o}");
    }
    if let Some(t) = &p.release.tag {
        let _ = writeln!(s, "  git tag   {t}");
    }

    let _ = writeln!(s, "\n{}", b("Waves"));
    for w in &p.waves {
        let detail: Vec<String> = w
            .services
            .iter()
            .map(|n| {
                let deps = &p.services[n].depends_on;
                if deps.is_empty() {
                    n.clone()
                } else {
                    format!("{n} (after {})", deps.join(", "))
                }
            })
            .collect();
        let _ = writeln!(s, "  {:>3}  {}", w.index + 1, detail.join(", "));
    }

    let _ = writeln!(s, "\n{}", b("Steps"));
    if p.steps.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    let idw = p.steps.iter().map(|st| st.id.len()).max().unwrap_or(0);
    for st in &p.steps {
        let what = match &st.action {
            StepAction::Exec(e) => {
                let mut g = Vec::new();
                if let Some(c) = &e.creates {
                    g.push(format!("creates {c}"));
                }
                if e.unless.is_some() {
                    g.push("unless".to_owned());
                }
                if e.undo.is_some() {
                    g.push("undo".to_owned());
                }
                format!(
                    "exec `{}`{}",
                    truncate(&e.run, 48),
                    if g.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", g.join(", "))
                    }
                )
            }
            StepAction::Migrate { dir, .. } => format!("migrate {dir}"),
            StepAction::VerifyArtifact {
                path,
                signature,
                keys,
                ..
            } => {
                let signed = if keys.is_empty() {
                    ""
                } else if signature.is_some() {
                    " + signature"
                } else {
                    " + signature (missing)"
                };
                format!("verify {}{signed}", truncate(path, 48))
            }
            StepAction::Deploy { version, replicas } => {
                format!("deploy {version} × {replicas} ({})", p.strategy_kind)
            }
            StepAction::RenderConfig { files, .. } => format!(
                "render config {}",
                truncate(
                    &files
                        .iter()
                        .map(|f| f.dest.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    48
                )
            ),
        };
        let _ = writeln!(
            s,
            "  {:>3}  {:<idw$}  {}",
            st.wave + 1,
            st.id,
            what,
            idw = idw
        );
    }

    let _ = writeln!(
        s,
        "\n{} ({} release{})",
        b("Gates"),
        p.release.release_type.as_str(),
        if p.production {
            ", production policy"
        } else {
            ""
        }
    );
    if p.gates.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for g in &p.gates {
        let what = match &g.kind {
            GateKind::Approvals {
                required,
                groups,
                four_eyes,
            } => format!(
                "{required} approver{}{}{}",
                if *required == 1 { "" } else { "s" },
                if groups.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", groups.join(", "))
                },
                if *four_eyes { ", never the author" } else { "" }
            ),
            GateKind::ChangeRecord { record } => match record {
                Some(r) => format!("change record {r}"),
                None => "change record MISSING".to_owned(),
            },
            GateKind::Signature { keys } => format!("signed by one of: {}", keys.join(", ")),
            GateKind::Canary => "canary strategy".to_owned(),
            GateKind::Soak { seconds } => format!(
                "soak {} at full weight",
                slipway_model::duration::format_duration(std::time::Duration::from_secs(*seconds))
            ),
            GateKind::Windows { windows } => windows
                .iter()
                .map(|w| format!("`{}` {} for {}", w.cron, w.timezone, w.duration))
                .collect::<Vec<_>>()
                .join("; "),
            GateKind::Freezes { freezes } => freezes
                .iter()
                .map(|f| format!("{}..{} ({})", f.from, f.to, f.reason))
                .collect::<Vec<_>>()
                .join("; "),
            GateKind::Checks { phase, names } => {
                // A perf check gates both ends: say which half this is.
                let names: Vec<String> = names
                    .iter()
                    .map(
                        |n| match (p.checks.get(n).and_then(|c| c.perf.as_ref()), phase) {
                            (Some(_), slipway_model::spec::CheckPhase::Post) => {
                                format!("{n} (perf verify vs pre-deploy baseline)")
                            }
                            (Some(_), _) => format!("{n} (perf baseline of running version)"),
                            (None, _) => n.clone(),
                        },
                    )
                    .collect();
                format!("{} checks: {}", phase_word(*phase), names.join(", "))
            }
            GateKind::PostReview => "review after the fact".to_owned(),
            GateKind::Checklist { items } => items
                .iter()
                .map(|i| match &i.check {
                    Some(c) => format!("{}: {} (check {c})", i.id, i.text),
                    None => format!("{}: {} (acknowledge)", i.id, i.text),
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        let _ = writeln!(
            s,
            "  {:<14} {:<52} {}",
            g.kind.name(),
            what,
            out.paint(&g.source, Style::Dim)
        );
    }

    let level = match p.risk.level.as_str() {
        "high" => out.paint(&p.risk.level, Style::Bad),
        "medium" => out.paint(&p.risk.level, Style::Warn),
        _ => out.paint(&p.risk.level, Style::Good),
    };
    let _ = writeln!(s, "\n{} {}/100 ({level})", b("Risk"), p.risk.score);
    for f in &p.risk.factors {
        let _ = writeln!(s, "  +{:<3} {:<24} {}", f.points, f.factor, f.detail);
    }

    let _ = writeln!(
        s,
        "\n{} {}{}",
        b("Recommendation:"),
        p.recommendation.approach.replace('_', "-"),
        if p.recommendation.strategy_agrees {
            String::new()
        } else {
            format!(
                " {}",
                out.paint(
                    &format!(
                        "(the `{}` strategy in force does not follow it)",
                        p.strategy_kind
                    ),
                    Style::Warn
                )
            )
        }
    );
    for r in &p.recommendation.reasons {
        let _ = writeln!(s, "  - {r}");
    }

    if !p.waivers.is_empty() {
        let _ = writeln!(s, "\n{}", b("Waivers"));
        for w in &p.waivers {
            let _ = writeln!(s, "  {} waived by {}: {}", w.finding, w.by, w.reason);
        }
    }

    if !p.findings.is_empty() {
        let _ = writeln!(s, "\n{}", b("Findings"));
        for f in &p.findings {
            let sev = match f.severity.as_str() {
                "error" => out.paint("error", Style::Bad),
                "info" => out.paint("info", Style::Dim),
                _ => out.paint("warning", Style::Warn),
            };
            let _ = writeln!(s, "  {sev} [{}] {}", f.code, f.message);
        }
    }
    s
}

fn phase_word(p: slipway_model::spec::CheckPhase) -> &'static str {
    match p {
        slipway_model::spec::CheckPhase::Pre => "pre",
        slipway_model::spec::CheckPhase::Smoke => "smoke",
        slipway_model::spec::CheckPhase::Post => "post",
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// One difference between two environments.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Drift {
    /// `variable`, `version`, `target`, `policy`.
    pub kind: String,
    /// The item that differs.
    pub item: String,
    /// Value in the first environment (`None`: absent).
    pub left: Option<String>,
    /// Value in the second.
    pub right: Option<String>,
}

/// `slipway diff`.
pub fn diff(a: DiffArgs, out: &Output) -> Result<i32, CliError> {
    if a.envs.len() != 2 {
        return Err(CliError::input(
            format!("diff compares two environments; {} given", a.envs.len()),
            "give --env twice, e.g. --env staging --env prod",
        ));
    }
    let loaded = load_spec(&a.file, out)?;
    let spec = &loaded.spec;
    let get = |n: &str| {
        spec.environments.get(n).ok_or_else(|| {
            CliError::input(
                format!("unknown environment `{n}`"),
                format!(
                    "the spec declares: {}",
                    spec.environments
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };
    let (l, r) = (get(&a.envs[0])?, get(&a.envs[1])?);
    let drift = env_drift(spec, l, r);
    if out.json() {
        out.json_value(&serde_json::json!({
            "left": a.envs[0],
            "right": a.envs[1],
            "in_parity": drift.is_empty(),
            "differences": drift,
        }));
    } else if drift.is_empty() {
        out.line(&format!("{} and {} are in parity", a.envs[0], a.envs[1]));
    } else {
        let mut t = comfy_table::Table::new();
        t.force_no_tty();
        t.set_header(vec!["kind", "item", &a.envs[0], &a.envs[1]]);
        for d in &drift {
            t.add_row(vec![
                d.kind.clone(),
                d.item.clone(),
                d.left.clone().unwrap_or_else(|| "—".into()),
                d.right.clone().unwrap_or_else(|| "—".into()),
            ]);
        }
        out.line(&t.to_string());
        out.line(&format!("{} difference(s)", drift.len()));
    }
    Ok(if a.fail_on_drift && !drift.is_empty() {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}

/// Differences between two environments of one spec.
pub fn env_drift(
    spec: &slipway_model::spec::ReleaseSpec,
    l: &slipway_model::spec::Environment,
    r: &slipway_model::spec::Environment,
) -> Vec<Drift> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = l.vars.keys().chain(r.vars.keys()).collect();
    for k in keys {
        let (a, b) = (l.vars.get(k), r.vars.get(k));
        // Values legitimately differ between environments; a variable that exists in one
        // and not the other is what breaks a promotion.
        if a.is_none() != b.is_none() {
            out.push(Drift {
                kind: "variable".into(),
                item: k.clone(),
                left: a.map(|v| mask(v.as_str())),
                right: b.map(|v| mask(v.as_str())),
            });
        }
    }
    let services: BTreeSet<&String> = spec
        .services
        .keys()
        .chain(l.deployed.keys())
        .chain(r.deployed.keys())
        .collect();
    for s in services {
        let (a, b) = (l.deployed.get(s), r.deployed.get(s));
        if a != b {
            out.push(Drift {
                kind: "version".into(),
                item: s.clone(),
                left: a.cloned(),
                right: b.cloned(),
            });
        }
    }
    let shape = |e: &slipway_model::spec::Environment| -> BTreeMap<&'static str, String> {
        let strategy = e
            .strategy
            .as_ref()
            .or(spec.strategy.as_ref())
            .map_or("big_bang", |s| s.kind());
        BTreeMap::from([
            ("target", e.target.kind().to_owned()),
            ("strategy", strategy.to_owned()),
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
            out.push(Drift {
                kind: if matches!(*k, "target" | "strategy") {
                    "target".into()
                } else {
                    "policy".into()
                },
                item: (*k).to_owned(),
                left: Some(v.clone()),
                right: Some(w.clone()),
            });
        }
    }
    out
}

/// Secret references are shown as references; nothing is resolved here.
fn mask(v: &str) -> String {
    if v.starts_with("secret://") {
        v.to_owned()
    } else {
        format!("\"{v}\"")
    }
}
