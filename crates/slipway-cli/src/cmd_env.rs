//! Environment leases: `slipway env lease|release|leases`, and the lease every driven run
//! holds on its environment (taken before the engine drives, renewed while it drives,
//! given up when the run ends).
//!
//! Why here and not in the engine's `drive`: every foreground and detached drive already
//! goes through one function of the CLI (`cmd_run::drive_foreground`), so one call site
//! covers `deploy`, `resume` and `deploy --detach`; the engine stays a pure state machine
//! over its journal, and losing a lease can stop a drive the same way a crash would (the
//! journal makes both recoverable) without teaching the engine about wall-clock leases.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use slipway_engine::store::{LeaseOutcome, LeaseRecord, LeaseRequest, RunRecord, Store};
use slipway_engine::{Clock, SystemClock};
use slipway_model::duration::{format_duration, parse_duration};
use slipway_model::exit;
use tokio::sync::oneshot;

use crate::cmd_run::{StoreArg, identity, open_store, runtime, store_error};
use crate::out::{CliError, Output};

/// Default lease length; renewed every third of it while a run is driven.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

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
    pub env: String,
    /// Who holds it (default: `manual:` and the current identity).
    #[arg(long)]
    pub holder: Option<String>,
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
    pub env: String,
    /// Release only if this holder has it (default: `manual:` and the current identity).
    #[arg(long, conflicts_with = "force")]
    pub holder: Option<String>,
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

/// The lease length: `SLIPWAY_LEASE_TTL` (e.g. `2s` in tests) or [`DEFAULT_TTL`].
pub fn ttl() -> Result<Duration, CliError> {
    match std::env::var("SLIPWAY_LEASE_TTL") {
        Ok(v) if !v.trim().is_empty() => match parse_duration(&v) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            Ok(_) => Err(CliError::input(
                format!("failed to read SLIPWAY_LEASE_TTL: `{v}` is shorter than 100ms"),
                "set SLIPWAY_LEASE_TTL to a duration such as 30s, or unset it for 60s",
            )),
            Err(e) => Err(CliError::input(
                format!("failed to read SLIPWAY_LEASE_TTL: {e}"),
                "set SLIPWAY_LEASE_TTL to a duration such as 30s, or unset it for 60s",
            )),
        },
        _ => Ok(DEFAULT_TTL),
    }
}

fn live(l: &LeaseRecord, now: Timestamp) -> bool {
    l.expires_at > now
}

fn describe(l: &LeaseRecord) -> String {
    format!(
        "leased by `{}` ({}) until {}",
        l.holder,
        l.release,
        l.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The refusal of a deploy to a leased environment (exit BLOCKED).
pub fn held_error(environment: &str, l: &LeaseRecord, run: Option<&str>) -> CliError {
    let mut hint = String::from(
        "wait with `slipway deploy --wait`, or when its holder crashed: it is reclaimed at expiry (or `slipway env release ENV --force`)",
    );
    if let Some(r) = run {
        hint =
            format!("run {r} was created and waits; continue it with `slipway resume {r}`; {hint}");
    }
    CliError::new(
        exit::BLOCKED,
        format!(
            "failed to deploy to `{environment}`: the environment is {}",
            describe(l)
        ),
        Some(hint.replace("ENV", environment)),
    )
}

/// Refuse early, before a new run is even created, when another holder has a live lease.
/// `mine` is the run this deploy would continue (its own lease is no obstacle).
pub async fn refuse_if_leased(
    store: &dyn Store,
    environment: &str,
    mine: Option<&str>,
) -> Result<(), CliError> {
    let now = SystemClock.now();
    let leases = store.leases().await.map_err(store_error)?;
    match leases
        .iter()
        .find(|l| l.environment == environment && live(l, now) && Some(l.holder.as_str()) != mine)
    {
        Some(l) => Err(held_error(environment, l, None)),
        None => Ok(()),
    }
}

/// A lease held by this process for a run; renewed in the background until dropped or
/// given up. `lost` fires if a renewal finds another holder (our lease lapsed and was
/// taken over), so the caller stops driving.
pub struct HeldLease {
    store: Arc<dyn Store>,
    environment: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    /// Fires with the new holder when the lease was lost.
    pub lost: oneshot::Receiver<LeaseRecord>,
}

impl HeldLease {
    /// Stop renewing and remove the lease (the run ended).
    pub async fn release(self) -> Result<(), CliError> {
        self.renewer.abort();
        self.store
            .release_lease(&self.environment, Some(&self.holder))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Stop renewing and let the lease lapse at its expiry (the run paused or waits).
    pub fn lapse(self) {
        self.renewer.abort();
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Take the lease on the run's environment for the run, waiting for it when `wait`;
/// refused (exit BLOCKED) otherwise while another run holds it.
pub async fn take(
    store: Arc<dyn Store>,
    run: &RunRecord,
    wait: bool,
    out: &Output,
) -> Result<HeldLease, CliError> {
    let ttl = ttl()?;
    let request = |now| LeaseRequest {
        environment: run.environment.clone(),
        holder: run.id.clone(),
        release: format!("{} {}", run.release, run.version),
        now,
        ttl,
    };
    let mut announced: Option<String> = None;
    loop {
        match store
            .acquire_lease(request(SystemClock.now()))
            .await
            .map_err(store_error)?
        {
            LeaseOutcome::Granted { reclaimed, .. } => {
                if let Some(old) = reclaimed
                    && !out.json()
                {
                    out.eline(&format!(
                        "reclaimed the expired lease on {} from `{}` ({}), expired {}",
                        run.environment,
                        old.holder,
                        old.release,
                        old.expires_at.strftime("%H:%M:%S UTC")
                    ));
                }
                break;
            }
            LeaseOutcome::Held(l) if wait => {
                if announced.as_deref() != Some(l.holder.as_str()) && !out.json() {
                    out.eline(&format!(
                        "waiting for {}: {}",
                        run.environment,
                        describe(&l)
                    ));
                }
                announced = Some(l.holder.clone());
                // Poll at a fraction of the lease: a release is seen within it, an
                // expiry at most that long after it.
                tokio::time::sleep(
                    (ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(2)),
                )
                .await;
            }
            LeaseOutcome::Held(l) => return Err(held_error(&run.environment, &l, Some(&run.id))),
        }
    }
    let (tx, lost) = oneshot::channel();
    let renewer = {
        let store = store.clone();
        let environment = run.environment.clone();
        let holder = run.id.clone();
        let release = format!("{} {}", run.release, run.version);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let req = LeaseRequest {
                    environment: environment.clone(),
                    holder: holder.clone(),
                    release: release.clone(),
                    now: SystemClock.now(),
                    ttl,
                };
                match store.acquire_lease(req).await {
                    Ok(LeaseOutcome::Granted { .. }) => {}
                    Ok(LeaseOutcome::Held(other)) => {
                        let _ = tx.send(other);
                        return;
                    }
                    // A busy store is retried at the next tick; the lease has two more
                    // ticks before it lapses.
                    Err(_) => {}
                }
            }
        })
    };
    Ok(HeldLease {
        store,
        environment: run.environment.clone(),
        holder: run.id.clone(),
        renewer,
        lost,
    })
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
                let (store, _) = open_store(&a.store).await?;
                let holder = a.holder.unwrap_or_else(|| format!("manual:{}", identity()));
                let req = LeaseRequest {
                    environment: a.env.clone(),
                    holder,
                    release: a.reason.clone(),
                    now: SystemClock.now(),
                    ttl: a.ttl,
                };
                match store.acquire_lease(req).await.map_err(store_error)? {
                    LeaseOutcome::Granted { lease, .. } => {
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
                    LeaseOutcome::Held(l) => Err(CliError::new(
                        exit::BLOCKED,
                        format!("failed to lease `{}`: it is {}", a.env, describe(&l)),
                        Some("wait for its expiry, or `slipway env release ENV --force` if its holder is gone".replace("ENV", &a.env)),
                    )),
                }
            }
            EnvCommand::Release(a) => {
                let (store, _) = open_store(&a.store).await?;
                let holder = if a.force {
                    None
                } else {
                    Some(a.holder.unwrap_or_else(|| format!("manual:{}", identity())))
                };
                let gone = store
                    .release_lease(&a.env, holder.as_deref())
                    .await
                    .map_err(store_error)?;
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
                            match &holder {
                                Some(h) => format!("`{h}` holds no lease on it"),
                                None => "it has no lease".to_owned(),
                            }
                        ),
                        Some("list leases with `slipway env leases`; name the holder with --holder or use --force".into()),
                    )),
                }
            }
            EnvCommand::Leases(a) => {
                let (store, _) = open_store(&a.store).await?;
                let now = SystemClock.now();
                let leases = store.leases().await.map_err(store_error)?;
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
