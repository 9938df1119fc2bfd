//! `slipway check`: is this environment ready for this release? Runs every check the spec
//! declares for it and prints one table.
//!
//! Kinds: the readiness checks a deploy also runs before its first wave
//! (`slipway_ops::gates::check_readiness`): `reach` (each service's endpoints), `tls`
//! (its `tls://` endpoints), `capacity` (resources × replicas × canary surge vs what is
//! free), `accounts` (unix users, PostgreSQL roles and grants), `monitoring` (each metric
//! provider and query the canary analysis uses answers with data) — measured on this
//! machine, or on every host of an ssh environment, each row naming its host — and
//! `smoke` (the environment's declared checks: http, tcp, command, sql), `infra`, `perf`
//! (the running version under the declared request mix; with `--run RUN`, judged against
//! the baseline that run kept before its deploy, both distributions shown). Placeholders
//! `{{ vars.x }}` are filled from the environment's variables; readiness addresses may use
//! secret variables, resolved here and never shown.

use std::path::PathBuf;
use std::time::Duration;

use slipway_checks::{Outcome, Verdict};
use slipway_model::exit;
use slipway_model::readiness::ReadinessCheck;

use crate::cli_util::load_spec;
use crate::out::{CliError, Output, Style};

/// `slipway check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway check -f examples/shop/release.yaml --env staging\n  slipway check -f release.yaml --env prod --only reach --output json"
)]
pub struct CheckArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// The environment to check.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Run only one kind: reach, tls, capacity, accounts, monitoring, smoke, infra, perf.
    #[arg(long, value_name = "KIND", value_parser = ["reach", "tls", "capacity", "accounts", "monitoring", "smoke", "infra", "perf"])]
    pub only: Option<String>,
    /// Judge perf checks against the baseline this run kept before its deploy.
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    #[command(flatten)]
    pub store: crate::cli_util::StoreArg,
    /// Base URL or `host:port` that `{base}` in smoke check URLs stands for.
    #[arg(long, value_name = "URL")]
    pub base: Option<String>,
    /// Timeout of each probe.
    #[arg(long, default_value = "3s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    slipway_model::duration::parse_duration(s)
}

/// Infrastructure files committed and clean in git (with their digests), and the declared
/// validation command passing.
pub(crate) async fn infra_rows(
    spec_dir: &std::path::Path,
    infra: &slipway_model::spec::Infrastructure,
    timeout: Duration,
) -> Vec<Verdict> {
    let mut rows: Vec<Verdict> = infra
        .paths
        .iter()
        .map(|p| slipway_checks::infra::check_path(spec_dir, p))
        .collect();
    if let Some(cmd) = &infra.validate {
        rows.push(
            slipway_checks::infra::validate(spec_dir, cmd, timeout.max(Duration::from_secs(60)))
                .await,
        );
    }
    rows
}

/// `slipway check`.
pub fn check(a: CheckArgs, out: &Output) -> Result<i32, CliError> {
    let loaded = load_spec(&a.file, out)?;
    let spec = &loaded.spec;
    let env = spec.environments.get(&a.env).ok_or_else(|| {
        CliError::input(
            format!("unknown environment `{}`", a.env),
            format!(
                "the spec declares: {}",
                spec.environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    // A secret reference stays a reference: checks never resolve secrets.
    let fill = |text: &str| -> String {
        slipway_model::text::fill_vars(text, env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    };
    let want = |k: &str| a.only.as_deref().is_none_or(|o| o == k);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start a runtime: {e}"),
                None,
            )
        })?;
    let run_dir = match &a.run {
        None => None,
        Some(run) => {
            let (_, layout) = slipway_ops::session::layout_for(a.store.store.as_deref())
                .ok_or_else(|| {
                    CliError::new(exit::STORE, "failed to resolve the store's directory", None)
                })?;
            Some(layout.run(run))
        }
    };
    let mut rows: Vec<Verdict> = Vec::new();
    let mut perf_json = serde_json::Map::new();
    let mut perf_lines: Vec<String> = Vec::new();
    let readiness_only = a
        .only
        .as_deref()
        .and_then(|o| ReadinessCheck::ALL.into_iter().find(|k| k.as_str() == o));
    let readiness_wanted = a.only.is_none() || readiness_only.is_some();
    let plan = slipway_model::plan::plan(spec, &a.env, &slipway_model::plan::Facts::default())
        .map_err(|e| CliError::input(e, "pick an environment the spec declares"))?;
    let readiness: Result<Vec<Verdict>, CliError> = rt.block_on(async {
        if !readiness_wanted {
            return Ok(Vec::new());
        }
        Ok(slipway_ops::gates::check_readiness(
            a.store.store.as_deref(),
            &a.file,
            &plan,
            readiness_only,
            a.timeout,
        )
        .await?)
    });
    rows.extend(readiness?);
    rt.block_on(async {
        if want("perf") {
            for name in &env.checks {
                if let Some(p) = spec.checks.get(name).and_then(|c| c.perf.as_ref()) {
                    let mut p = p.clone();
                    p.url = fill(&p.url);
                    let (r, detail, lines) =
                        crate::perf_report::check_rows(name, &p, run_dir.as_deref()).await;
                    rows.extend(r);
                    perf_json.insert(name.clone(), detail);
                    perf_lines.extend(lines);
                }
            }
        }
        if want("infra")
            && let Some(infra) = &env.infrastructure
        {
            let dir = a
                .file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or(PathBuf::from("."), PathBuf::from);
            rows.extend(infra_rows(&dir, infra, a.timeout).await);
        }
        if want("smoke") {
            // Perf checks are measurements, reported under `perf`.
            rows.extend(
                slipway_ops::gates::declared_check_rows(
                    &a.file,
                    &plan,
                    a.base.as_deref(),
                    a.timeout,
                )
                .await,
            );
        }
    });
    let worst = slipway_checks::worst(&rows);
    if out.json() {
        out.json_value(&serde_json::json!({
            "environment": a.env,
            "verdict": worst.as_str(),
            "checks": rows,
            "perf": perf_json,
        }));
    } else if rows.is_empty() {
        out.line(&format!(
            "no checks declared for {} (endpoints, resources, accounts, environments.{}.checks)",
            a.env, a.env
        ));
    } else {
        out.line(&crate::cli_util::verdict_table(&rows));
        for l in &perf_lines {
            out.line(l);
        }
        for r in rows.iter().filter(|r| r.verdict != Outcome::Pass) {
            if let Some(h) = &r.hint {
                let on = r
                    .host
                    .as_ref()
                    .map(|h| format!(" on {h}"))
                    .unwrap_or_default();
                out.line(&format!(
                    "  {} {}{on}: {h}",
                    out.paint(
                        r.verdict.as_str(),
                        if r.verdict == Outcome::Fail {
                            Style::Bad
                        } else {
                            Style::Warn
                        }
                    ),
                    r.target
                ));
            }
        }
        out.line(&format!(
            "{}: {}",
            a.env,
            out.paint(
                worst.as_str(),
                match worst {
                    Outcome::Pass => Style::Good,
                    Outcome::Warn => Style::Warn,
                    Outcome::Fail => Style::Bad,
                }
            )
        ));
    }
    Ok(if worst == Outcome::Fail {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}
