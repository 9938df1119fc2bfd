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

/// `slipway env …`.
pub fn env(c: EnvCommand, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        match c {
            EnvCommand::Lease(a) => {
                let s = crate::cli_util::session(&a.store).await?;
                let lease = slipway_ops::lease::lease(&s, &a.env, &a.reason, a.ttl).await?;
                if out.json() {
                    out.json_value(&lease_json(&lease, SystemClock.now()));
                } else {
                    out.line(&format!(
                        "{} {} ({} from now); give it back with `slipway env release {}`",
                        lease.environment,
                        describe(&lease),
                        format_duration(a.ttl),
                        lease.environment
                    ));
                }
                Ok(exit::SUCCESS)
            }
            EnvCommand::Release(a) => {
                let s = crate::cli_util::read_session(&a.store).await?;
                let gone = slipway_ops::lease::release(&s, &a.env, a.force).await?;
                match gone {
                    Some(l) => {
                        if out.json() {
                            out.json_value(&json!({"released": lease_json(&l, SystemClock.now())}));
                        } else {
                            out.line(&format!("released {} (was held by `{}`)", l.environment, l.holder));
                        }
                        Ok(exit::SUCCESS)
                    }
                    None => Err(CliError::new(
                        exit::FAILURE,
                        format!(
                            "failed to release `{}`: {}",
                            a.env,
                            if a.force {
                                "it has no lease".to_owned()
                            } else {
                                format!("you (manual:{}) hold no lease on it", s.actor.user)
                            }
                        ),
                        Some("list leases with `slipway env leases`; a lease someone else holds is released with --force".into()),
                    )),
                }
            }
            EnvCommand::Leases(a) => {
                let (store, _) = crate::cli_util::read_store(&a.store).await?;
                let now = SystemClock.now();
                let leases = store.leases().await.map_err(CliError::from)?;
                if out.json() {
                    out.json_value(&leases.iter().map(|l| lease_json(l, now)).collect::<Vec<_>>());
                } else {
                    let mut t = comfy_table::Table::new();
                    t.set_header(["environment", "holder", "release", "since", "expires", "state"]);
                    for l in &leases {
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
                Ok(exit::SUCCESS)
            }
        }
    })
}
