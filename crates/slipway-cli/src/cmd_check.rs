//! `slipway check`: is this environment ready for this release? Runs every check the spec
//! declares for it and prints one table.
//!
//! Kinds: `reach` (each service's endpoints, from this machine), `capacity` (resources ×
//! replicas × canary surge vs what this machine has free), `accounts` (unix users,
//! PostgreSQL roles and grants), `smoke` (the environment's declared checks: http, tcp,
//! command, sql), `infra`, `perf` (the running version under the declared request mix;
//! with `--run RUN`, judged against the baseline that run kept before its deploy, both
//! distributions shown). Placeholders `{{ vars.x }}` in endpoints and URLs are filled from the
//! environment's variables; secret references are never resolved here.

use std::path::PathBuf;
use std::time::Duration;

use slipway_checks::{Outcome, Verdict};
use slipway_model::exit;

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
    /// Run only one kind: reach, capacity, accounts, smoke, infra, perf.
    #[arg(long, value_name = "KIND", value_parser = ["reach", "capacity", "accounts", "smoke", "infra", "perf"])]
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
    let spec_dir = a
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or(PathBuf::from("."), PathBuf::from);
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
    rt.block_on(async {
        if want("reach") {
            for (name, s) in &spec.services {
                let endpoints: Vec<String> = s.endpoints.iter().map(|e| fill(e)).collect();
                rows.extend(slipway_checks::reach::check_service_in(name, "this machine", &endpoints, a.timeout, &spec_dir).await);
            }
        }
        if want("perf") {
            for name in &env.checks {
                if let Some(p) = spec.checks.get(name).and_then(|c| c.perf.as_ref()) {
                    let mut p = p.clone();
                    p.url = fill(&p.url);
                    let (r, detail, lines) = crate::perf_report::check_rows(name, &p, run_dir.as_deref()).await;
                    rows.extend(r);
                    perf_json.insert(name.clone(), detail);
                    perf_lines.extend(lines);
                }
            }
        }
        if want("capacity") {
            let surge = u32::from(env.strategy.as_ref().or(spec.strategy.as_ref()).is_some_and(|s| s.canary.is_some()));
            let demands: Vec<slipway_checks::capacity::Demand> = spec
                .services
                .iter()
                .filter_map(|(name, s)| {
                    let r = s.resources.as_ref()?;
                    let replicas = s.run.as_ref().map_or(1, |r| r.replicas);
                    Some(slipway_checks::capacity::Demand {
                        service: name.clone(),
                        // A canary runs the new version beside the old: replicas twice at the peak.
                        instances: replicas * (1 + surge),
                        cpu: r.cpu,
                        memory: r.memory.as_deref().and_then(slipway_checks::capacity::parse_size),
                        disk: r.disk.as_deref().and_then(slipway_checks::capacity::parse_size),
                        ports: Vec::new(),
                    })
                })
                .collect();
            if !demands.is_empty() {
                let dir = a.file.parent().filter(|d| !d.as_os_str().is_empty()).map_or(PathBuf::from("."), PathBuf::from);
                match slipway_checks::capacity::measure(&dir) {
                    Ok(free) => rows.extend(slipway_checks::capacity::check(&demands, &free)),
                    Err(e) => rows.push(Verdict {
                        check: "capacity".into(),
                        target: "this machine".into(),
                        verdict: Outcome::Fail,
                        measured: e.to_string(),
                        expected: "readable /proc and filesystem".into(),
                        duration_ms: 0,
                        hint: None,
                    }),
                }
            }
        }
        if want("accounts") {
            for s in spec.services.values() {
                for acc in &s.accounts {
                    if let Some(u) = &acc.unix {
                        rows.push(slipway_checks::accounts::unix_user(u));
                    }
                    if let Some(pg) = &acc.postgres {
                        let url = pg.database.as_deref().map(&fill).unwrap_or_default();
                        if url.is_empty() || url.starts_with("secret://") {
                            rows.push(Verdict {
                                check: "accounts.postgres".into(),
                                target: pg.role.clone(),
                                verdict: Outcome::Warn,
                                measured: "not checked".into(),
                                expected: format!("role {} with {} grant(s)", pg.role, pg.grants.len()),
                                duration_ms: 0,
                                hint: Some("give the account a `database:` URL this machine can use (secrets are resolved only at install time)".into()),
                            });
                        } else {
                            rows.extend(slipway_checks::accounts::postgres_role(&url, &pg.role, &pg.grants, a.timeout).await);
                        }
                    }
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
            for name in &env.checks {
                // Perf checks are measurements, reported under `perf`.
                if let Some(c) = spec.checks.get(name).filter(|c| c.perf.is_none()) {
                    let mut c = c.clone();
                    if let Some(h) = c.http.as_mut() {
                        h.url = fill(&h.url);
                    }
                    if let Some(t) = c.tcp.as_mut() {
                        *t = fill(t);
                    }
                    rows.push(slipway_checks::smoke::run(name, &c, a.base.as_deref(), a.timeout).await);
                }
            }
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
        let mut t = comfy_table::Table::new();
        t.force_no_tty();
        t.set_header(vec![
            "check", "target", "verdict", "measured", "expected", "time",
        ]);
        for r in &rows {
            t.add_row(vec![
                r.check.clone(),
                r.target.clone(),
                r.verdict.as_str().to_owned(),
                r.measured.clone(),
                r.expected.clone(),
                format!("{}ms", r.duration_ms),
            ]);
        }
        out.line(&t.to_string());
        for l in &perf_lines {
            out.line(l);
        }
        for r in rows.iter().filter(|r| r.verdict != Outcome::Pass) {
            if let Some(h) = &r.hint {
                out.line(&format!(
                    "  {} {}: {h}",
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
