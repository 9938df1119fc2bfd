//! Governance over the run history: what the people who support, audit and improve a
//! release need after it, drawn from the engine's [`Store`](slipway_engine::Store) alone.
//!
//! - [`dora`]: DORA and delivery figures (frequency, lead time, change failure rate,
//!   recovery time, success and rollback rates, MTTR) by service and release type, as
//!   values, text, JSON and an HTML page with hand-written SVG charts.
//! - [`handover`]: the Markdown handover pack of one run.
//! - [`retro`]: the retrospective of one run (timeline, anomalies, action items).
//! - [`compliance`]: a control catalogue (SOX, HIPAA, GDPR) evaluated into an evidence pack.
//! - [`notify`]: notifications of run events to webhooks, email and files.
//! - [`catalog`]: Backstage entities and the dependency map of a spec.
//! - [`archive`]: the retention policy and the archive bundles `slipway archive` writes.
//!
//! Architecture invariant: this crate reads the store only through the engine's `Store`
//! trait and never prints; the CLI renders what it returns. Wall-clock time is passed in,
//! never read, so every report is reproducible in tests. The only processes it spawns are
//! `git` (read-only queries, in [`git`]).

pub mod access;
pub mod archive;
pub mod catalog;
pub mod compliance;
pub mod dora;
pub mod git;

pub mod handover;
pub mod history;
pub mod html;
pub mod notify;
pub mod retro;

pub use history::RunHistory;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GovernError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] slipway_engine::StoreError),
    /// A run id that does not exist.
    #[error("find run `{0}`; list runs with `slipway history`")]
    NoSuchRun(String),
    /// A date or time argument that does not parse.
    #[error("read the date `{value}`: {message}; use YYYY-MM-DD or an RFC 3339 time")]
    BadDate {
        /// What was given.
        value: String,
        /// Why it does not parse.
        message: String,
    },
    /// A file could not be written.
    #[error("write {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// An unknown compliance framework.
    #[error("select framework `{0}`: known frameworks are sox, hipaa and gdpr")]
    UnknownFramework(String),
    /// The store's evidence does not verify: a report drawn from it would launder the
    /// tampering, so none is made.
    #[error("read the run history: the evidence in the store does not verify: {0}")]
    Tampered(slipway_engine::audit::ChainBreak),
}

/// Verify everything a report reads before it reads it: the audit chain, the `runs` rows
/// and the governance records against it ([`slipway_engine::evidence::verify_store`]).
/// A report over a store that does not verify is refused, naming the first broken record.
pub async fn verify_evidence(
    store: &dyn slipway_engine::Store,
) -> Result<slipway_engine::audit::Verified, GovernError> {
    slipway_engine::evidence::verify_store(store)
        .await?
        .result
        .map_err(GovernError::Tampered)
}

/// Parse `--since`/`--until`: a date (midnight UTC) or an RFC 3339 time.
pub fn parse_when(value: &str) -> Result<jiff::Timestamp, GovernError> {
    let v = value.trim();
    if let Ok(t) = v.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    match v.parse::<jiff::civil::Date>() {
        Ok(d) => d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|e| GovernError::BadDate {
                value: value.to_owned(),
                message: e.to_string(),
            }),
        Err(e) => Err(GovernError::BadDate {
            value: value.to_owned(),
            message: e.to_string(),
        }),
    }
}
