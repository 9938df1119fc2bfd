//! `slipway policy apply|show` — the environment policy admins own (versioned, audited, in
//! every plan's digest) — and `slipway freeze status`, the freeze check a merge pipeline
//! asks before it lets a feature in.

use std::path::PathBuf;

use serde_json::json;
use slipway_model::exit;
use slipway_model::spec::ReleaseType;
use slipway_ops::policy::ApplyError;

use crate::cli_util::{StoreArg, runtime, session};
use crate::out::{CliError, Output};

const POLICY_HELP: &str = "\
A policy file says what every release deployed to an environment must pass; a release spec
may tighten it but never loosen it:

  apiVersion: slipway/v1
  kind: Policy
  environments:
    \"*\": { approvals: { required: 1 } }
    prod:
      production: true
      approvals: { required: 2, groups: [release-managers], four_eyes: true }
      risk: { above: 60, add_approvals: 1 }
      windows: [ { cron: \"0 9 * * MON-THU\", timezone: Europe/Berlin, duration: 6h } ]
      freezes: [ { from: 2026-12-20, to: 2027-01-04, reason: holiday freeze, allow: [hotfix] } ]
      checks: [pre, post]
      rehearsal: required
      change_record: true
      dry_run: { max_age: 168h }   # a passed `slipway migrate dry-run` of the exact migrations
      change: { system: servicenow, url: \"https://acme.service-now.com\", credentials: secret://env/SNOW }
      advisory_checks: [capacity]
      promote_from: { environment: staging, soak: 1h, post_checks: true }
      release_types: [feature, patch, security, hotfix]

Settings that would loosen a gate belong to the policy: under it, the spec's change system,
advisory readiness checks and lifecycle for this environment are replaced by the policy's
(`change`, `advisory_checks`, `promote_from`).

Examples:
  slipway policy apply -f policy.yaml
  slipway policy show --output json";

/// `slipway policy …`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Apply a policy file as the next version (admin; audited).
    #[command(after_help = POLICY_HELP)]
    Apply(ApplyArgs),
    /// Show the policy in force and its versions.
    Show(ShowArgs),
}

/// `slipway policy apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The policy file (YAML, `kind: Policy`).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway policy show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway freeze …`.
#[derive(Debug, clap::Subcommand)]
pub enum FreezeCommand {
    /// Exit 3 while the admin policy freezes an environment for this release type (a
    /// pipeline's merge check), 0 otherwise.
    #[command(
        after_help = "Examples:\n  slipway freeze status --env prod\n  slipway freeze status --env prod --type hotfix --output json"
    )]
    Status(FreezeArgs),
}

/// `slipway freeze status`.
#[derive(Debug, clap::Args)]
pub struct FreezeArgs {
    /// The environment.
    #[arg(long)]
    pub env: String,
    /// The change's release type: a freeze that allows it does not block (default: any
    /// freeze blocks).
    #[arg(long = "type", value_enum)]
    pub release_type: Option<TypeArg>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// A release type on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TypeArg {
    /// New functionality.
    Feature,
    /// A bug fix.
    Patch,
    /// A security fix.
    Security,
    /// An emergency fix.
    Hotfix,
}

impl From<TypeArg> for ReleaseType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Feature => Self::Feature,
            TypeArg::Patch => Self::Patch,
            TypeArg::Security => Self::Security,
            TypeArg::Hotfix => Self::Hotfix,
        }
    }
}

/// Run `slipway policy …`.
pub fn policy(c: PolicyCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    if let Some(client) = crate::cli_util::remote()? {
        return rt.block_on(crate::admin_remote::policy(&client, c, out));
    }
    rt.block_on(async {
        match c {
            PolicyCommand::Apply(a) => {
                let s = session(&a.store).await?;
                match slipway_ops::policy::apply(&s, &a.file).await {
                    Ok(applied) => {
                        crate::admin_remote::render_applied(out, &applied);
                        Ok(exit::SUCCESS)
                    }
                    Err(ApplyError::Ops(e)) => Err(e.into()),
                    Err(ApplyError::Invalid(errs)) => {
                        if out.json() {
                            out.json_value(&json!({"ok": false, "exit_code": exit::INVALID_INPUT,
                                "file": errs.file, "diagnostics": errs.diagnostics}));
                            return Err(CliError::new(exit::INVALID_INPUT, String::new(), None));
                        }
                        out.eline(&errs.render(out.color_err, 100));
                        Err(CliError::new(
                            exit::INVALID_INPUT,
                            format!(
                                "{} has {} error(s); nothing was applied",
                                errs.file,
                                errs.error_count()
                            ),
                            None,
                        ))
                    }
                }
            }
            PolicyCommand::Show(a) => {
                let s = session(&a.store).await?;
                let versions = slipway_ops::policy::versions(&s).await?;
                crate::admin_remote::render_policy(out, &versions);
                Ok(exit::SUCCESS)
            }
        }
    })
}

/// Run `slipway freeze …`.
pub fn freeze(c: FreezeCommand, out: &Output) -> Result<i32, CliError> {
    let FreezeCommand::Status(a) = c;
    let rt = runtime()?;
    let release_type: Option<ReleaseType> = a.release_type.map(Into::into);
    rt.block_on(async {
        let st = match crate::cli_util::remote()? {
            Some(c) => {
                let mut path = format!(
                    "/freeze?environment={}",
                    crate::cli_util::path_segment(&a.env)
                );
                if let Some(t) = release_type {
                    path.push_str(&format!("&type={}", t.as_str()));
                }
                let v = c.get(&path).await?;
                serde_json::from_value::<slipway_ops::policy::FreezeStatus>(v).map_err(|e| {
                    CliError::new(
                        exit::FAILURE,
                        format!("failed to read the server's freeze status: {e}"),
                        Some("check that the server runs the same slipway version".into()),
                    )
                })?
            }
            None => {
                let s = session(&a.store).await?;
                slipway_ops::policy::freeze_status(&s, &a.env, release_type).await?
            }
        };
        let code = if st.frozen {
            exit::BLOCKED
        } else {
            exit::SUCCESS
        };
        if out.json() {
            let mut v = serde_json::to_value(&st).unwrap_or_default();
            v["exit_code"] = json!(code);
            out.json_value(&v);
        } else {
            match (&st.freeze, st.frozen) {
                (Some(f), true) => out.line(&format!(
                    "{} is frozen from {} to {} ({}){}",
                    st.environment,
                    f.from,
                    f.to,
                    f.reason,
                    if f.allow.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; allowed through: {}",
                            f.allow
                                .iter()
                                .map(|t| t.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )),
                (Some(f), false) => out.line(&format!(
                    "{} is frozen from {} to {} ({}), but {} releases are allowed through",
                    st.environment,
                    f.from,
                    f.to,
                    f.reason,
                    st.release_type.map_or("these", |t| t.as_str())
                )),
                (None, _) => out.line(&format!("{} is not frozen", st.environment)),
            }
        }
        Ok(code)
    })
}
