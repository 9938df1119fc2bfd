//! `slipway`: plan, ship and prove software releases.
//!
//! This is the only crate that prints. Each subcommand lives in its own `cmd_*` module and
//! returns an exit code from [`slipway_model::exit`]; errors carry a hint and map to
//! exit codes here, so every failure a user sees says what to do next.

// mimalloc instead of glibc's malloc: see the dependency's note in Cargo.toml and
// BENCHMARKS.md (plan-cli) for what it measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin_remote;
mod audit_view;
mod cli_util;
mod cmd_access;
mod cmd_archive;
mod cmd_audit;
mod cmd_check;
mod cmd_checklist;
mod cmd_demo;
mod cmd_env;
mod cmd_migrate;
mod cmd_package;
mod cmd_plan;
mod cmd_policy;
mod cmd_proxy;
mod cmd_rehearse;
mod cmd_render;
mod cmd_report;
mod cmd_review;
mod cmd_run;
mod cmd_serve;
mod fleet_demo;
mod out;
mod perf_report;
mod progress;
mod run_client;
mod run_remote;
mod run_render;
mod server_mode;
mod status_view;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use slipway_model::exit;

use crate::out::{ColorChoice, Output, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  slipway demo
  slipway plan -f examples/shop/release.yaml --env prod
  slipway plan -f examples/shop/release.yaml --env prod --output json | jq .digest
  slipway diff -f examples/shop/release.yaml --env staging --env prod
  slipway schema > slipway-v1.schema.json";

/// The end of `slipway --help`: the exit codes, generated from
/// [`slipway_model::exit::ALL`] (the one list README's table is checked against), then
/// examples.
fn root_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in exit::ALL {
        s.push_str(&hanging(&format!("  {code:<4}"), meaning, 78));
    }
    s.push('\n');
    s.push_str(EXAMPLES);
    s
}

/// `text` after `lead`, wrapped at `width` columns with later lines indented as far as
/// `lead` reaches (clap would wrap a long line at the terminal's width, flush left). Lines
/// stay within 78 columns, so no terminal of 80 or more wraps them again.
fn hanging(lead: &str, text: &str, width: usize) -> String {
    let indent = " ".repeat(lead.len());
    let mut out = String::new();
    let mut line = lead.to_owned();
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.clone();
        } else if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The one line every subcommand's help says about the global flags instead of repeating
/// their blocks (they work after any subcommand; `slipway --help` describes them).
const GLOBAL_NOTE: &str = "Global options (any command; see `slipway --help`):
  --output text|json, --color auto|always|never, --token TOKEN, --server URL";

/// The command line: clap's derive, plus what derive cannot say — the exit codes in the
/// root help, and subcommand help that lists the command's own flags, with the global
/// ones summarised in one line. Clap copies a global flag into every subcommand that has
/// no flag of that id; giving each subcommand a hidden copy instead keeps the flag
/// working there (same id, same settings) without its help block.
fn command() -> clap::Command {
    let root = Cli::command()
        .after_help(root_help())
        .after_long_help(root_help());
    let globals: Vec<clap::Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    root.mut_subcommands(|sc| quiet_globals(sc, &globals))
}

fn quiet_globals(mut sc: clap::Command, globals: &[clap::Arg]) -> clap::Command {
    for g in globals {
        sc = sc.arg(g.clone().hide(true));
    }
    let note = |own: Option<&clap::builder::StyledStr>| match own {
        Some(h) => format!("{h}\n\n{GLOBAL_NOTE}"),
        None => GLOBAL_NOTE.to_owned(),
    };
    let short = note(sc.get_after_help());
    let long = sc.get_after_long_help().map(|h| note(Some(h)));
    sc = sc.after_help(short);
    if let Some(long) = long {
        sc = sc.after_long_help(long);
    }
    sc.mut_subcommands(|c| quiet_globals(c, globals))
}

/// Slipway: plan a release, check every environment is ready, ship it progressively,
/// roll it back by itself when the numbers say so, and prove what happened.
#[derive(Debug, Parser)]
#[command(name = "slipway", version)]
pub struct Cli {
    /// Output format: `text` for people, `json` for pipelines (stable, documented).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text, env = "SLIPWAY_OUTPUT")]
    pub output: OutputFormat,
    /// When to use colours: `auto` uses them only on a terminal (and honours NO_COLOR).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Act as the subject of this API token (`slipway access token create`), checked
    /// against the store: every command then runs as that user. Prefer the env variable.
    #[arg(long, global = true, env = "SLIPWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Act through a `slipway serve` API (http://HOST:PORT) with your token instead of
    /// a store: deploy, plan, diff, status, history, logs, wait, approve, pause, resume,
    /// promote, abort, rollback, env, review, checklist, retention, access, policy,
    /// freeze, report, catalog, audit and archive (signed here), plan show. Commands on
    /// files (validate, package, …) run here; check, rehearse, migrate dry-run, proxy and
    /// serve, which act from this machine, are refused with the way to run them.
    #[arg(long, global = true, env = "SLIPWAY_SERVER", value_name = "URL")]
    pub server: Option<String>,
    #[command(subcommand)]
    pub command: Commands,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// The product in two minutes: a sample shop, live traffic, a canary that promotes
    /// and one that rolls back by itself. Needs no setup and no network.
    Demo(cmd_demo::DemoArgs),
    /// The demo's tiny HTTP service (used by `slipway demo`).
    #[command(name = "demo-app", hide = true)]
    DemoApp(cmd_demo::DemoAppArgs),
    /// Validate a spec and show the plan for one environment: waves, gates, risk, digest.
    Plan(cmd_plan::PlanArgs),
    /// Is the environment ready? Reachability, capacity, accounts and smoke checks, in one table.
    Check(cmd_check::CheckArgs),
    /// Validate a spec: every problem at once, with file:line:column and a fix.
    Validate(cmd_plan::ValidateArgs),
    /// Compare two environments of a spec: variables, versions, target shape.
    Diff(cmd_plan::DiffArgs),
    /// Print the JSON Schema of the release spec.
    Schema,
    /// Signing keys in minisign's format.
    #[command(subcommand)]
    Key(cmd_package::KeyCommand),
    /// Sign a file (FILE.minisig, verifiable with `minisign -V`).
    Sign(cmd_package::SignArgs),
    /// Verify a file's minisign signature against trusted public keys.
    Verify(cmd_package::VerifyArgs),
    /// Build deterministic artifacts and inspect packages (tar, deb, rpm, OCI).
    #[command(subcommand)]
    Package(cmd_package::PackageCommand),
    /// Deploy a spec to an environment as a durable, resumable run.
    Deploy(cmd_run::DeployArgs),
    /// Continue a paused, waiting or interrupted run (default: the latest).
    Resume(cmd_run::ResumeArgs),
    /// Show a run (default: the latest): state, steps, approvals.
    Status(cmd_run::StatusArgs),
    /// Show a run's journal (default: the latest run); -f follows it live.
    Logs(cmd_run::LogsArgs),
    /// Ask the driver of a run to pause (a live canary pauses at its next analysis tick).
    Pause(cmd_run::RunArgs),
    /// Skip a canary's remaining steps and make it the new stable: reaches a running
    /// `slipway deploy`, or promotes the canary of a paused run.
    Promote(cmd_run::RunArgs),
    /// Abort a run (steps in flight finish; a live or paused canary is taken out of
    /// service first).
    Abort(cmd_run::RunArgs),
    /// Roll a run back by hand: undo its completed steps in reverse order (audited).
    Rollback(cmd_run::RollbackArgs),
    /// Approve the plan digest of a run as the verified identity (the token's user; before any grant, the OS user).
    Approve(cmd_run::ApproveArgs),
    /// List runs, newest first.
    History(cmd_run::HistoryArgs),
    /// Wait until a run ends (or pauses) and exit with its outcome's code, for pipelines
    /// that deploy with --detach or --no-wait.
    Wait(cmd_run::WaitArgs),
    /// Environment leases: take, release and list them (deploys take them by themselves).
    #[command(subcommand)]
    Env(cmd_env::EnvCommand),
    /// The process target's detached per-service proxies: list them (alive or stale,
    /// addresses, weight, counts) and stop one.
    #[command(subcommand)]
    Proxy(cmd_proxy::ProxyCommand),
    /// Serve the HTTP API, live run events (SSE) and the web UI over the store, for a team.
    Serve(cmd_serve::ServeArgs),
    /// Verify or export the hash-chained audit log.
    #[command(subcommand)]
    Audit(cmd_audit::AuditCommand),
    /// Move closed runs and the old audit chain into a signed bundle, leaving a checkpoint.
    Archive(cmd_archive::ArchiveArgs),
    /// Lessons from retrospectives that every plan must satisfy: accept, show, acknowledge.
    #[command(subcommand)]
    Checklist(cmd_checklist::ChecklistCommand),
    /// Reviews after the fact that emergency changes owe: list them, complete one.
    #[command(subcommand)]
    Review(cmd_review::ReviewCommand),
    /// The retention policy per record kind (runs, journal, approvals, checks, audit).
    #[command(subcommand)]
    Retention(cmd_archive::RetentionCommand),
    /// Render config templates for an environment, secrets masked; strict placeholders.
    Render(cmd_render::RenderArgs),
    /// Backward compatibility: OpenAPI documents and SQL migrations.
    #[command(subcommand)]
    Compat(cmd_render::CompatCommand),
    /// Reports from the run history: DORA figures, handover packs, retrospectives,
    /// compliance evidence.
    #[command(subcommand)]
    Report(cmd_report::ReportCommand),
    /// The service catalog: Backstage entities and the dependency map of a spec.
    #[command(subcommand)]
    Catalog(cmd_report::CatalogCommand),
    /// Access control: role grants per environment, groups, API tokens, access reviews.
    #[command(subcommand)]
    Access(cmd_access::AccessCommand),
    /// The environment policy admins own: apply a policy file, show it.
    #[command(subcommand)]
    Policy(cmd_policy::PolicyCommand),
    /// Freezes of the admin policy: `freeze status` for merge pipelines.
    #[command(subcommand)]
    Freeze(cmd_policy::FreezeCommand),
    /// Database migrations: status, apply, undo, dry run on a clone.
    #[command(subcommand)]
    Migrate(cmd_migrate::MigrateCommand),
    /// Database backups: create (content-addressed) and restore.
    #[command(subcommand)]
    Backup(cmd_migrate::BackupCommand),
    /// Rehearse the rollback of a release's migrations on a non-production environment:
    /// measure RTO and RPO against the spec's objectives and record them for `plan`.
    Rehearse(cmd_rehearse::RehearseArgs),
}

fn main() {
    let matches = match command().try_get_matches() {
        Ok(m) => m,
        Err(e) => usage_error(e),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let out = Output::new(cli.output, cli.color);
    if let Err(e) = cli_util::set_credentials(cli.token.clone()) {
        std::process::exit(out.fail(&e));
    }
    cli_util::set_server(cli.server.clone());
    let server = cli.server.as_deref().is_some_and(|u| !u.trim().is_empty());
    if let Err(e) = server_mode::check(&cli.command, server) {
        std::process::exit(out.fail(&e));
    }
    let code = match run(cli.command, &out) {
        Ok(code) => code,
        Err(e) => out.fail(&e),
    };
    std::process::exit(code);
}

/// A command line clap refused (or `--help`/`--version`, which clap prints and ends with
/// 0). `--output` is the global output format; a file name given to it (`package build
/// --output x.tar.gz`, the spelling of an earlier version) gets a pointer to `--out`.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let output_flag = matches!(
        e.get(ContextKind::InvalidArg),
        Some(ContextValue::String(a)) if a.starts_with("--output")
    );
    if e.kind() == ErrorKind::InvalidValue && output_flag {
        let _ = e.print();
        out::stderr_line(
            "  tip: --output is the output format (text or json); a command that writes a file or directory takes it as --out PATH (-o PATH)",
        );
        std::process::exit(exit::INVALID_INPUT);
    }
    e.exit()
}

fn run(command: Commands, out: &Output) -> Result<i32, out::CliError> {
    match command {
        Commands::Plan(a) => cmd_plan::plan(a, out),
        Commands::Check(a) => cmd_check::check(a, out),
        Commands::Validate(a) => cmd_plan::validate(a, out),
        Commands::Diff(a) => cmd_plan::diff(a, out),
        Commands::Key(c) => cmd_package::key(c, out),
        Commands::Sign(a) => cmd_package::sign(a, out),
        Commands::Verify(a) => cmd_package::verify(a, out),
        Commands::Package(c) => cmd_package::package(c, out),
        Commands::Demo(a) => cmd_demo::demo(a, out),
        Commands::DemoApp(a) => cmd_demo::demo_app(a, out),
        Commands::Deploy(a) => cmd_run::deploy(a, out),
        Commands::Resume(a) => cmd_run::resume(a, out),
        Commands::Status(a) => cmd_run::status(a, out),
        Commands::Logs(a) => cmd_run::logs(a, out),
        Commands::Pause(a) => cmd_run::pause(a, out),
        Commands::Promote(a) => cmd_run::promote(a, out),
        Commands::Abort(a) => cmd_run::abort(a, out),
        Commands::Proxy(c) => cmd_proxy::run(c, out),
        Commands::Rollback(a) => cmd_run::rollback(a, out),
        Commands::Approve(a) => cmd_run::approve(a, out),
        Commands::History(a) => cmd_run::history(a, out),
        Commands::Wait(a) => cmd_run::wait(a, out),
        Commands::Audit(c) => cmd_audit::audit(c, out),
        Commands::Serve(a) => cmd_serve::serve(a, out),
        Commands::Archive(a) => cmd_archive::archive(a, out),
        Commands::Retention(c) => cmd_archive::retention(c, out),
        Commands::Checklist(c) => cmd_checklist::checklist(c, out),
        Commands::Review(c) => cmd_review::review(c, out),
        Commands::Env(c) => cmd_env::env(c, out),
        Commands::Render(a) => cmd_render::render(a, out),
        Commands::Compat(c) => cmd_render::compat(c, out),
        Commands::Report(c) => cmd_report::report(c, out),
        Commands::Catalog(c) => cmd_report::catalog(c, out),
        Commands::Access(c) => cmd_access::access_cmd(c, out),
        Commands::Policy(c) => cmd_policy::policy(c, out),
        Commands::Freeze(c) => cmd_policy::freeze(c, out),
        Commands::Migrate(c) => cmd_migrate::migrate(c, out),
        Commands::Backup(c) => cmd_migrate::backup(c, out),
        Commands::Rehearse(a) => cmd_rehearse::rehearse(a, out),
        Commands::Schema => {
            out.raw(&slipway_model::schema::schema_text());
            Ok(exit::SUCCESS)
        }
    }
}
