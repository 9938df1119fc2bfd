//! Environment leases by hand: `slipway env lease|release|leases` (the lease every driven
//! run holds is `slipway_ops::lease`).

use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use slipway_engine::store::{LeaseRecord, Store};
use slipway_engine::{Clock, SystemClock};
use slipway_model::duration::{format_duration, parse_duration};
use slipway_model::exit;
use slipway_ops::lease::{describe, live};

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// `slipway env …`.
#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Take the lease on an environment by hand (maintenance, a manual change).
    Lease(LeaseArgs),
    /// Give up a lease (yours, or with --force whoever holds it).
    Release(ReleaseArgs),
    /// List leases with their holders and expiry.
    Leases(LeasesArgs),
}

/// `slipway env lease`.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// The environment.
    #[arg(value_parser = crate::cli_util::env_name)]
    pub env: String,
    /// Why, shown to whoever is refused.
    #[arg(long, default_value = "manual lease")]
    pub reason: String,
    /// How long (e.g. 30m, 2h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway env release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The environment.
    #[arg(value_parser = crate::cli_util::env_name)]
    pub env: String,
    /// Release whoever holds it (a crashed run's lease, without waiting for expiry).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway env leases`.
#[derive(Debug, clap::Args)]
pub struct LeasesArgs {
    #[command(flatten)]
    pub store: StoreArg,
}

fn lease_json(l: &LeaseRecord, now: Timestamp) -> serde_json::Value {
    json!({
        "environment": l.environment,
        "holder": l.holder,
        "release": l.release,
        "acquired_at": l.acquired_at.to_string(),
        "expires_at": l.expires_at.to_string(),
        "live": live(l, now),
    })
}

fn render_lease(out: &Output, lease: &LeaseRecord, ttl: Duration) {
    if out.json() {
        out.json_value(&lease_json(lease, SystemClock.now()));
    } else {
        out.line(&format!(
            "{} {} ({} from now); give it back with `slipway env release {}`",
            lease.environment,
            describe(lease),
            format_duration(ttl),
            lease.environment
        ));
    }
}

fn render_released(out: &Output, l: &LeaseRecord) {
    if out.json() {
        out.json_value(&json!({"released": lease_json(l, SystemClock.now())}));
    } else {
        out.line(&format!(
            "released {} (was held by `{}`)",
            l.environment, l.holder
        ));
    }
}

/// Nothing was released: exit 1, saying whose lease was looked for.
fn nothing_released(env: &str, force: bool, holder: &str) -> CliError {
    CliError::new(
        exit::FAILURE,
        format!(
            "failed to release `{env}`: {}",
            if force {
                "it has no lease".to_owned()
            } else {
                format!("you ({holder}) hold no lease on it")
            }
        ),
        Some("list leases with `slipway env leases`; a lease someone else holds is released with --force".into()),
    )
}

fn render_leases(out: &Output, leases: &[LeaseRecord]) {
    let now = SystemClock.now();
    if out.json() {
        out.json_value(
            &leases
                .iter()
                .map(|l| lease_json(l, now))
                .collect::<Vec<_>>(),
        );
    } else {
        let mut t = comfy_table::Table::new();
        t.set_header([
            "environment",
            "holder",
            "release",
            "since",
            "expires",
            "state",
        ]);
        for l in leases {
            t.add_row([
                l.environment.clone(),
                l.holder.clone(),
                l.release.clone(),
                l.acquired_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                l.expires_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                if live(l, now) { "held" } else { "expired" }.to_owned(),
            ]);
        }
        out.line(&t.to_string());
    }
}

/// `slipway --server URL env …`: the server's leases (`GET /api/v1/leases`, `POST
/// /api/v1/leases/{env}[/release]`), the operations layer's rules for the caller.
async fn env_remote(
    c: &slipway_server::client::Client,
    cmd: EnvCommand,
    out: &Output,
) -> Result<i32, CliError> {
    use crate::cli_util::path_segment;
    let read = |v: serde_json::Value| -> Result<LeaseRecord, CliError> {
        serde_json::from_value(v).map_err(|e| crate::run_remote::unexpected(c, &e))
    };
    match cmd {
        EnvCommand::Lease(a) => {
            let (_, v) = c
                .post(
                    &format!("/leases/{}", path_segment(&a.env)),
                    &json!({"reason": a.reason, "ttl_seconds": a.ttl.as_secs()}),
                )
                .await?;
            render_lease(out, &read(v)?, a.ttl);
        }
        EnvCommand::Release(a) => {
            let (_, v) = c
                .post(
                    &format!("/leases/{}/release", path_segment(&a.env)),
                    &json!({"force": a.force}),
                )
                .await?;
            if v["released"].is_null() {
                let holder = v["holder"].as_str().unwrap_or("manual:you");
                return Err(nothing_released(&a.env, a.force, holder));
            }
            render_released(out, &read(v["released"].clone())?);
        }
        EnvCommand::Leases(_) => {
            let v = c.get("/leases").await?;
            let leases: Vec<LeaseRecord> =
                serde_json::from_value(v).map_err(|e| crate::run_remote::unexpected(c, &e))?;
            render_leases(out, &leases);
        }
    }
    Ok(exit::SUCCESS)
}

/// `slipway env …`.
pub fn env(c: EnvCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    if let Some(client) = crate::cli_util::remote()? {
        return rt.block_on(env_remote(&client, c, out));
    }
    rt.block_on(async {
        match c {
            EnvCommand::Lease(a) => {
                let s = crate::cli_util::session(&a.store).await?;
                let lease = slipway_ops::lease::lease(&s, &a.env, &a.reason, a.ttl).await?;
                render_lease(out, &lease, a.ttl);
                Ok(exit::SUCCESS)
            }
            EnvCommand::Release(a) => {
                let s = crate::cli_util::read_session(&a.store).await?;
                match slipway_ops::lease::release(&s, &a.env, a.force).await? {
                    Some(l) => {
                        render_released(out, &l);
                        Ok(exit::SUCCESS)
                    }
                    None => Err(nothing_released(
                        &a.env,
                        a.force,
                        &format!("manual:{}", s.actor.user),
                    )),
                }
            }
            EnvCommand::Leases(a) => {
                let (store, _) = crate::cli_util::read_store(&a.store).await?;
                let leases = store.leases().await.map_err(CliError::from)?;
                render_leases(out, &leases);
                Ok(exit::SUCCESS)
            }
        }
    })
}
