//! Environment leases: the lease every driven run holds on its environment (taken before
//! the engine drives, renewed while it drives, given up when the run ends), and the
//! manual leases of `env lease|release`.
//!
//! Why here and not in the engine's `drive`: every drive goes through [`crate::runs`], so
//! one call site covers deploy, resume, promote and a detached deploy; the engine stays a
//! pure state machine over its journal, and losing a lease can stop a drive the same way a
//! crash would (the journal makes both recoverable) without teaching the engine about
//! wall-clock leases.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use slipway_engine::store::{LeaseOutcome, LeaseRecord, LeaseRequest, RunRecord};
use slipway_engine::{Clock, Store, SystemClock};
use slipway_model::duration::parse_duration;
use tokio::sync::oneshot;

use crate::error::{Hint, OpsError, OpsResult, RunAction};
use crate::events::{OpsEvent, Reporter};
use crate::session::Session;
use serde_json::json;
use slipway_govern::access::Role;

/// Default lease length; renewed every third of it while a run is driven.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The lease length: `SLIPWAY_LEASE_TTL` (e.g. `2s` in tests) or [`DEFAULT_TTL`].
pub fn ttl() -> OpsResult<Duration> {
    let bad = |why: String| {
        OpsError::input(format!("failed to read SLIPWAY_LEASE_TTL: {why}")).hint(Hint::text(
            "set SLIPWAY_LEASE_TTL to a duration such as 30s, or unset it for 60s",
        ))
    };
    match std::env::var("SLIPWAY_LEASE_TTL") {
        Ok(v) if !v.trim().is_empty() => match parse_duration(&v) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            Ok(_) => Err(bad(format!("`{v}` is shorter than 100ms"))),
            Err(e) => Err(bad(e.to_string())),
        },
        _ => Ok(DEFAULT_TTL),
    }
}

/// Whether a lease is still held at `now`.
pub fn live(l: &LeaseRecord, now: Timestamp) -> bool {
    l.expires_at > now
}

/// "leased by `holder` (release) until …", for messages.
pub fn describe(l: &LeaseRecord) -> String {
    format!(
        "leased by `{}` ({}) until {}",
        l.holder,
        l.release,
        l.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The refusal of a deploy to a leased environment.
pub fn held_error(environment: &str, l: &LeaseRecord, run: Option<&str>) -> OpsError {
    let mut e = OpsError::blocked(format!(
        "failed to deploy to `{environment}`: the environment is {}",
        describe(l)
    ));
    if let Some(r) = run {
        e = e
            .hint(Hint::text(format!("run {r} was created and waits")))
            .hint(Hint::Run {
                action: RunAction::Resume,
                run: r.to_owned(),
            });
    }
    e.hint(Hint::WaitForLease {
        environment: environment.to_owned(),
    })
    .hint(Hint::ForceRelease {
        environment: environment.to_owned(),
    })
}

/// Refuse early, before a new run is even created, when another holder has a live lease.
/// `mine` is the run this deploy would continue (its own lease is no obstacle).
pub async fn refuse_if_leased(
    store: &dyn Store,
    environment: &str,
    mine: Option<&str>,
) -> OpsResult<()> {
    let now = SystemClock.now();
    let leases = store.leases().await?;
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
    /// Tells the renewer to stop before its next renewal; it finishes one in flight.
    stop: Option<oneshot::Sender<()>>,
    /// Fires with the new holder when the lease was lost.
    pub lost: oneshot::Receiver<LeaseRecord>,
}

impl HeldLease {
    /// Stop renewing and remove the lease (the run ended).
    pub async fn release(mut self) -> OpsResult<()> {
        // Stop the renewer and wait for it: aborting it could leave a renewal already
        // handed to the store to land after the release below and take the lease again
        // until its expiry (seen under load: the next deploy found the environment leased
        // by the run that had just ended).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.renewer).await;
        self.store
            .release_lease(&self.environment, Some(&self.holder))
            .await?;
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
/// refused (blocked) otherwise while another run holds it.
pub async fn take(
    store: Arc<dyn Store>,
    run: &RunRecord,
    wait: bool,
    reporter: &dyn Reporter,
) -> OpsResult<HeldLease> {
    take_for(store, run, wait, reporter, ttl()?).await
}

/// [`take`] with the lease length given (the tests' own, without the environment).
async fn take_for(
    store: Arc<dyn Store>,
    run: &RunRecord,
    wait: bool,
    reporter: &dyn Reporter,
    ttl: Duration,
) -> OpsResult<HeldLease> {
    let request = |now| LeaseRequest {
        environment: run.environment.clone(),
        holder: run.id.clone(),
        release: format!("{} {}", run.release, run.version),
        now,
        ttl,
    };
    let mut announced: Option<String> = None;
    loop {
        match store.acquire_lease(request(SystemClock.now())).await? {
            LeaseOutcome::Granted { reclaimed, .. } => {
                if let Some(old) = reclaimed {
                    reporter.report(OpsEvent::LeaseReclaimed {
                        environment: run.environment.clone(),
                        holder: old.holder,
                        release: old.release,
                        expired_at: old.expires_at,
                    });
                }
                break;
            }
            LeaseOutcome::Held(l) if wait => {
                if announced.as_deref() != Some(l.holder.as_str()) {
                    reporter.report(OpsEvent::LeaseWaiting {
                        environment: run.environment.clone(),
                        holder: l.holder.clone(),
                        release: l.release.clone(),
                        until: l.expires_at,
                    });
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
    let (stop, mut stop_rx) = oneshot::channel::<()>();
    let renewer = {
        let store = store.clone();
        let environment = run.environment.clone();
        let holder = run.id.clone();
        let release = format!("{} {}", run.release, run.version);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(ttl / 3) => {}
                    // Asked to stop, or the lease was dropped.
                    _ = &mut stop_rx => return,
                }
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
        stop: Some(stop),
        lost,
    })
}

/// `env lease`: take an environment's lease by hand (maintenance, a manual change), held
/// by `manual:<the actor>`. Needs the deployer role there; audited.
pub async fn lease(
    session: &Session,
    environment: &str,
    reason: &str,
    ttl: Duration,
) -> OpsResult<LeaseRecord> {
    crate::access::require(session, Role::Deployer, "lease", environment).await?;
    let req = LeaseRequest {
        environment: environment.to_owned(),
        holder: manual_holder(session),
        release: reason.to_owned(),
        now: SystemClock.now(),
        ttl,
    };
    match session.store.acquire_lease(req).await? {
        LeaseOutcome::Granted { lease, .. } => {
            crate::access::audit_governance(
                session,
                "lease_taken",
                json!({"environment": environment, "holder": lease.holder, "reason": reason,
                    "expires_at": lease.expires_at.to_string()}),
            )
            .await?;
            Ok(lease)
        }
        LeaseOutcome::Held(l) => Err(OpsError::blocked(format!(
            "failed to lease `{environment}`: it is {}",
            describe(&l)
        ))
        .hint(Hint::text("wait for its expiry"))
        .hint(Hint::ForceRelease {
            environment: environment.to_owned(),
        })),
    }
}

/// The holder of the actor's manual leases.
fn manual_holder(session: &Session) -> String {
    format!("manual:{}", session.actor.user)
}

/// `env release`: give up the actor's manual lease on `environment`, or with `force`
/// whoever holds it (a crashed run's, without waiting for expiry). Needs the deployer role
/// there; audited. `None` when there was nothing to release.
pub async fn release(
    session: &Session,
    environment: &str,
    force: bool,
) -> OpsResult<Option<LeaseRecord>> {
    crate::access::require(session, Role::Deployer, "release the lease of", environment).await?;
    let holder = (!force).then(|| manual_holder(session));
    let gone = session
        .store
        .release_lease(environment, holder.as_deref())
        .await?;
    if let Some(l) = &gone {
        crate::access::audit_governance(
            session,
            "lease_released",
            json!({"environment": environment, "holder": l.holder, "forced": force}),
        )
        .await?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests;
