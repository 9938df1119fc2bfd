//! `slipway render` (config templates per environment, secrets masked) and `slipway compat
//! api|sql` (backward-compatibility reports): thin wrappers over `slipway-package`.

use std::path::{Path, PathBuf};

use slipway_model::exit;
use slipway_package as pkg;
use slipway_package::compat::{openapi, sql};
use slipway_package::render::{RenderOptions, SecretMode};

use crate::out::{CliError, Output, Style};

/// `slipway render`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Secrets (secret://env/NAME, secret://file/PATH) are always shown masked; they are resolved only at install time.\n\nExamples:\n  slipway render -f examples/shop/release.yaml --env prod\n  slipway render -f examples/shop/release.yaml --env staging api --output json"
)]
pub struct RenderArgs {
    /// The release spec (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// The environment to render for.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Only this service's config files.
    pub service: Option<String>,
    /// The instance port to render `{{ port }}` with (default: shown as `<port>`).
    #[arg(long)]
    pub port: Option<u16>,
}

/// `slipway compat …`.
#[derive(Debug, clap::Subcommand)]
pub enum CompatCommand {
    /// Compare two OpenAPI 3 documents (YAML or JSON): breaking vs additive changes.
    #[command(
        after_help = "Exit 1 when a change breaks existing clients.\n\nExamples:\n  slipway compat api openapi-2.3.yaml openapi-2.4.yaml\n  slipway compat api old.json new.json --output json"
    )]
    Api(CompatApiArgs),
    /// Classify SQL migrations as expand, contract or unknown, statement by statement.
    #[command(
        after_help = "Exit 1 when a migration contracts the schema.\n\nExamples:\n  slipway compat sql examples/shop/migrations --dialect sqlite\n  slipway compat sql migrations/ --output json"
    )]
    Sql(CompatSqlArgs),
}

/// `slipway compat api`.
#[derive(Debug, clap::Args)]
pub struct CompatApiArgs {
    /// The OpenAPI document of the running version.
    pub old: PathBuf,
    /// The OpenAPI document of the candidate version.
    pub new: PathBuf,
}

/// SQL dialects on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DialectArg {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// `slipway compat sql`.
#[derive(Debug, clap::Args)]
pub struct CompatSqlArgs {
    /// The directory of migrations (`V<N>__<name>.sql`; `U<N>__` undo scripts are skipped).
    pub dir: PathBuf,
    /// The SQL dialect.
    #[arg(long, value_enum, default_value_t = DialectArg::Postgres)]
    pub dialect: DialectArg,
}

fn spec_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `slipway render`.
pub fn render(a: RenderArgs, out: &Output) -> Result<i32, CliError> {
    let loaded = crate::cli_util::load_spec(&a.file, out)?;
    let opts = RenderOptions {
        secrets: SecretMode::Masked,
        port: a.port,
    };
    match pkg::render_environment(
        &loaded.spec,
        spec_dir(&a.file),
        &a.env,
        a.service.as_deref(),
        &opts,
    ) {
        Ok(files) => {
            if out.json() {
                out.json_value(&serde_json::json!({
                    "ok": true,
                    "environment": a.env,
                    "files": files,
                }));
            } else if files.is_empty() {
                out.line(&format!(
                    "no config templates for {} in {}",
                    a.service.as_deref().unwrap_or("any service"),
                    a.env
                ));
            } else {
                for f in &files {
                    out.line(&out.paint(
                        &format!(
                            "# {} -> {} (from {}, sha256 {})",
                            f.service, f.dest, f.template, f.sha256
                        ),
                        Style::Bold,
                    ));
                    out.raw(&f.content);
                    if !f.content.ends_with('\n') {
                        out.line("");
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        Err(pkg::Error::Placeholders { problems }) => {
            if out.json() {
                out.json_value(&serde_json::json!({
                    "ok": false,
                    "exit_code": exit::INVALID_INPUT,
                    "problems": problems,
                }));
            } else {
                for p in &problems {
                    out.eline(&format!(
                        "{} {}",
                        out.paint("error:", Style::Bad),
                        p.message
                    ));
                }
            }
            let message = if out.json() {
                // The problems document is the output; a second JSON object would make
                // stdout two documents.
                String::new()
            } else {
                format!(
                    "failed to render the config of {} for {}: {} problem{}",
                    a.service.as_deref().unwrap_or("the release"),
                    a.env,
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                )
            };
            Err(CliError {
                code: exit::INVALID_INPUT,
                message,
                hint: None,
            })
        }
        Err(e) => Err(CliError::input(
            format!("failed to {e}"),
            "check the template paths and the environment's vars",
        )),
    }
}

/// `slipway compat …`.
pub fn compat(c: CompatCommand, out: &Output) -> Result<i32, CliError> {
    match c {
        CompatCommand::Api(a) => compat_api(a, out),
        CompatCommand::Sql(a) => compat_sql(a, out),
    }
}

fn compat_api(a: CompatApiArgs, out: &Output) -> Result<i32, CliError> {
    let report = openapi::compare_files(&a.old, &a.new).map_err(|e| {
        CliError::input(
            format!("failed to {e}"),
            "pass two OpenAPI 3 documents (YAML or JSON): the running version, then the candidate",
        )
    })?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": !report.is_breaking(),
            "old": a.old,
            "new": a.new,
            "report": report,
        }));
    } else {
        out.raw(&report.to_text());
        if report.is_breaking() {
            out.line(&out.paint(
                "not backward compatible: existing clients may break",
                Style::Bad,
            ));
        }
    }
    Ok(if report.is_breaking() {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}

fn compat_sql(a: CompatSqlArgs, out: &Output) -> Result<i32, CliError> {
    let dialect = match a.dialect {
        DialectArg::Postgres => sql::Dialect::Postgres,
        DialectArg::Sqlite => sql::Dialect::Sqlite,
    };
    let report = sql::classify_dir(&a.dir, dialect).map_err(|e| {
        CliError::input(
            format!("failed to {e}"),
            "pass the directory holding the V{N}__name.sql migrations",
        )
    })?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": !report.has_contract(),
            "dir": a.dir,
            "report": report,
        }));
    } else {
        out.raw(&report.to_text());
        if report.has_contract() {
            out.line(&out.paint(
                "not backward compatible: a migration contracts the schema; ship it in a later release than the code that stops using what it removes",
                Style::Bad,
            ));
        }
    }
    Ok(if report.has_contract() {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}
