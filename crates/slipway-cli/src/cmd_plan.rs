//! `slipway plan`, `slipway validate`, `slipway diff`: reading specs and showing plans.
//! Planning itself (facts, findings) is `slipway_ops::planning`.

use std::path::PathBuf;

use slipway_model::exit;
use slipway_model::plan::{GateKind, Plan, StepAction};

use crate::cli_util::load_spec;
use crate::out::{CliError, Output, Style};

/// `slipway plan`.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  slipway plan -f examples/shop/release.yaml --env prod\n  slipway plan -f release.yaml --env staging --output json\n  slipway plan show 20261206-091500-3fa2c1"
)]
pub struct PlanArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
    pub file: Option<PathBuf>,
    /// The environment to plan for.
    #[arg(long, value_name = "ENV", required = true)]
    pub env: Option<String>,
    /// Plan as `deploy --override-promotion --reason TEXT` would: without the lifecycle's
    /// promotion evidence (what approvers then approve).
    #[arg(long, requires = "reason")]
    pub override_promotion: bool,
    /// Why the promotion evidence is overridden.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(subcommand)]
    pub command: Option<PlanCommand>,
}

/// `slipway plan …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PlanCommand {
    /// The plan a run executes — what its approvers approve: waves, gates with their
    /// sources, risk factors, findings, and what it changes against what runs now.
    Show(PlanShowArgs),
}

/// `slipway plan show`.
#[derive(Debug, clap::Args)]
pub struct PlanShowArgs {
    /// The run.
    pub run: String,
    #[command(flatten)]
    pub store: crate::cli_util::StoreArg,
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
    /// Exit 1 when they differ in a way the spec's parity standard (`parity.allow`)
    /// does not allow.
    #[arg(long)]
    pub fail_on_drift: bool,
    #[command(flatten)]
    pub store: crate::cli_util::StoreArg,
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

/// `slipway plan`.
pub fn plan(a: PlanArgs, out: &Output) -> Result<i32, CliError> {
    if let Some(PlanCommand::Show(s)) = a.command {
        return show(s, out);
    }
    let (Some(file), Some(env)) = (a.file, a.env) else {
        return Err(CliError::input(
            "failed to plan: -f FILE and --env ENV are both needed",
            "e.g. slipway plan -f release.yaml --env prod, or slipway plan show RUN",
        ));
    };
    let store = std::env::var("SLIPWAY_STORE").ok();
    let options = slipway_ops::planning::PlanOptions {
        override_promotion: if a.override_promotion {
            a.reason.clone()
        } else {
            None
        },
    };
    let p = match crate::cli_util::remote()? {
        // Through a server: validated here first (its diagnostics and warnings as on a
        // store), then planned by the server against its store.
        Some(c) => {
            load_spec(&file, out)?;
            let rt = crate::cli_util::runtime()?;
            rt.block_on(crate::run_remote::plan_remote(
                &c,
                &file,
                &env,
                options.override_promotion.as_deref(),
            ))?
        }
        None => crate::cli_util::planned_with(&file, &env, store.as_deref(), &options, out)?.plan,
    };
    let blocked = p
        .findings
        .iter()
        .any(|f| f.severity == slipway_model::plan::FindingSeverity::Error);
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

/// `slipway plan show RUN`: the stored plan of a run and what it changes.
fn show(a: PlanShowArgs, out: &Output) -> Result<i32, CliError> {
    let rt = crate::cli_util::runtime()?;
    rt.block_on(async {
        // Through a server: the same document (`GET /api/v1/runs/{id}/plan`), the
        // server's store and the caller's token.
        let shown = match crate::cli_util::remote()? {
            Some(c) => {
                let v = c
                    .get(&format!(
                        "/runs/{}/plan",
                        crate::cli_util::path_segment(&a.run)
                    ))
                    .await?;
                serde_json::from_value::<slipway_ops::views::PlanOfRun>(v).map_err(|e| {
                    CliError::new(
                        exit::FAILURE,
                        format!("failed to read the server's plan of run {}: {e}", a.run),
                        Some("use the same slipway version as the server".into()),
                    )
                })?
            }
            None => {
                let s = crate::cli_util::session(&a.store).await?;
                slipway_ops::views::plan_of_run(&s, &a.run).await?
            }
        };
        if out.json() {
            out.json_value(&shown);
        } else {
            out.line(&format!(
                "run {} ({}), the plan its approvals are bound to:",
                shown.run,
                shown.state.as_str()
            ));
            out.raw(&render_plan(&shown.plan, out));
            let b = |t: &str| out.paint(t, Style::Bold);
            out.line(&format!("\n{}", b("Against what runs now")));
            if shown.changes.is_empty() {
                out.line("  (nothing this plan deploys is recorded as running there)");
            }
            for c in &shown.changes {
                out.line(&format!(
                    "  {:<16} {} → {}{}",
                    c.service,
                    c.running.as_deref().unwrap_or("(not deployed)"),
                    c.planned,
                    c.run
                        .as_deref()
                        .map(|r| format!("  (current from run {r})"))
                        .unwrap_or_default()
                ));
            }
        }
        Ok(exit::SUCCESS)
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
    match &p.policy {
        Some(pol) => {
            let _ = writeln!(
                s,
                "  policy    admin policy v{} (sha256 {})",
                pol.version,
                &pol.digest[..pol.digest.len().min(12)]
            );
        }
        None => {
            let _ = writeln!(s, "  policy    none applied (gates from the spec alone)");
        }
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
            GateKind::ChangeApproved { system, record } => match record {
                Some(r) => format!("change {r} approved in {system}, inside its window"),
                None => format!("change record MISSING (checked in {system})"),
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
            GateKind::PostReview => format!(
                "review after the fact by another person within {}h of the run (slipway review)",
                slipway_ops::review::REVIEW_WITHIN.as_secs() / 3600
            ),
            GateKind::Checklist { items } => items
                .iter()
                .map(|i| match &i.check {
                    Some(c) => format!("{}: {} (check {c})", i.id, i.text),
                    None => format!("{}: {} (acknowledge)", i.id, i.text),
                })
                .collect::<Vec<_>>()
                .join("; "),
            GateKind::Readiness { checks, advisory } => {
                let names: Vec<String> = checks
                    .iter()
                    .map(|c| {
                        if advisory.contains(c) {
                            format!("{} (advisory)", c.as_str())
                        } else {
                            c.as_str().to_owned()
                        }
                    })
                    .collect();
                format!("before the first wave: {}", names.join(", "))
            }
            GateKind::Promotion {
                from,
                run,
                finished_at,
                inputs,
                overridden,
            } => match (run, overridden) {
                (_, Some(reason)) => format!(
                    "same inputs ({}) in {from} first: OVERRIDDEN ({reason})",
                    &inputs[..inputs.len().min(12)]
                ),
                (Some(r), None) => format!(
                    "same inputs ({}) succeeded in {from}: run {r} at {}",
                    &inputs[..inputs.len().min(12)],
                    finished_at.as_deref().unwrap_or("?")
                ),
                (None, None) => format!(
                    "same inputs ({}) in {from} first: not proven",
                    &inputs[..inputs.len().min(12)]
                ),
            },
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
            let sev = match f.severity {
                slipway_model::plan::FindingSeverity::Error => out.paint("error", Style::Bad),
                slipway_model::plan::FindingSeverity::Info => out.paint("info", Style::Dim),
                slipway_model::plan::FindingSeverity::Warning => out.paint("warning", Style::Warn),
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

/// `slipway diff`: two environments compared — spec shape and, from the store's history,
/// what runs there (versions, artifact and config digests, replicas) — against the spec's
/// parity standard (`slipway_ops::parity`).
pub fn diff(a: DiffArgs, out: &Output) -> Result<i32, CliError> {
    if a.envs.len() != 2 {
        return Err(CliError::input(
            format!("diff compares two environments; {} given", a.envs.len()),
            "give --env twice, e.g. --env staging --env prod",
        ));
    }
    let loaded = load_spec(&a.file, out)?;
    let rt = crate::cli_util::runtime()?;
    let report = match crate::cli_util::remote()? {
        // Through a server: what runs there is what its store records
        // (`POST /api/v1/diff`, viewer in both).
        Some(c) => rt.block_on(async {
            let (_, v) = c
                .post(
                    "/diff",
                    &serde_json::json!({"spec": loaded.spec, "left": a.envs[0], "right": a.envs[1]}),
                )
                .await?;
            serde_json::from_value::<slipway_ops::parity::Parity>(v)
                .map_err(|e| crate::run_remote::unexpected(&c, &e))
        })?,
        None => rt.block_on(slipway_ops::parity::diff_in(
            a.store.store.as_deref(),
            &loaded.spec,
            &a.envs[0],
            &a.envs[1],
        ))?,
    };
    let drift = report
        .differences
        .iter()
        .filter(|d| d.allowed_by.is_none())
        .count();
    if out.json() {
        out.json_value(&serde_json::json!({
            "left": report.left,
            "right": report.right,
            "in_parity": report.in_parity,
            "drift": drift,
            "differences": report.differences,
            "live": report.live,
        }));
    } else if report.differences.is_empty() {
        out.line(&format!("{} and {} are in parity", a.envs[0], a.envs[1]));
    } else {
        let mut t = comfy_table::Table::new();
        t.force_no_tty();
        t.set_header(vec![
            "kind",
            "item",
            &a.envs[0],
            &a.envs[1],
            "from",
            "allowed by",
        ]);
        for d in &report.differences {
            t.add_row(vec![
                d.kind.clone(),
                d.item.clone(),
                d.left.clone().unwrap_or_else(|| "—".into()),
                d.right.clone().unwrap_or_else(|| "—".into()),
                d.source.clone(),
                d.allowed_by.clone().unwrap_or_else(|| "— (drift)".into()),
            ]);
        }
        out.line(&t.to_string());
        out.line(&format!(
            "{} difference(s), {drift} not allowed by the parity standard",
            report.differences.len()
        ));
    }
    Ok(if a.fail_on_drift && drift > 0 {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}
