//! What an operation tells its caller while it works: the engine's journal notices as
//! they are committed, and the few things outside the journal an operator should hear
//! (a lease reclaimed or waited for, a proxy started, an unreachable host, a failed
//! notification). Front ends render these; the library never prints.

use jiff::Timestamp;
use slipway_engine::Notice;
use slipway_providers::compose::WiringNote;

/// An event of an operation in progress.
#[derive(Debug, Clone)]
pub enum OpsEvent {
    /// A journal entry was committed.
    Notice(Notice),
    /// An expired lease of another holder was taken over.
    LeaseReclaimed {
        /// Environment.
        environment: String,
        /// The old holder.
        holder: String,
        /// Its release.
        release: String,
        /// When it had expired.
        expired_at: Timestamp,
    },
    /// Waiting for another holder's lease (`--wait`).
    LeaseWaiting {
        /// Environment.
        environment: String,
        /// Who holds it.
        holder: String,
        /// Their release.
        release: String,
        /// Until when it is held (unless renewed).
        until: Timestamp,
    },
    /// What the run's world was built from.
    Wiring(WiringNote),
    /// An ssh host that did not answer the pre-flight check and is left out.
    HostUnreachable(String),
    /// The deploy continues an unfinished run of the same plan.
    Continuing {
        /// The run.
        run: String,
    },
    /// A notification could not be delivered (never changes the outcome).
    DeliveryFailed {
        /// The sink kind.
        sink: String,
        /// Where to.
        target: String,
        /// Which event.
        event: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// A paused canary was taken out of service (by an abort).
    CanaryRetired {
        /// Service.
        service: String,
        /// What was done.
        detail: String,
    },
    /// Something the operator should know that is not an error.
    Warning(String),
    /// The readiness checks run before the first wave, pass or fail.
    Readiness {
        /// Every row.
        rows: Vec<slipway_checks::Verdict>,
        /// The kinds whose failures only warn here.
        advisory: Vec<slipway_model::readiness::ReadinessCheck>,
    },
    /// The run's outcome was written to its change record.
    ChangeWrittenBack {
        /// The record (`metadata.change`).
        record: String,
        /// What was written.
        detail: String,
    },
}

/// Receives events; must not block (a slow display never slows a run).
pub trait Reporter: Send + Sync {
    /// One event.
    fn report(&self, event: OpsEvent);
}

/// Drops every event (for callers that only want the outcome).
pub struct Quiet;

impl Reporter for Quiet {
    fn report(&self, _: OpsEvent) {}
}
