//! Readiness and validation checks: know that an environment can take a release before
//! touching it. One module per check kind; each returns [`Verdict`] rows
//! `{check, target, verdict, measured, expected, duration_ms, hint}` that the CLI prints as
//! one table and pipelines read as JSON.
//!
//! Architecture invariant: checks observe, they never change the environment (a smoke
//! `command` check runs what the spec declares, nothing else). They never print.
//! "Prefer false alarms to false passes": a check that cannot measure fails or warns,
//! it never passes.

pub mod accounts;
pub mod capacity;
pub mod infra;
pub mod monitoring;
pub mod perf;
pub mod perf_baseline;
pub mod reach;
pub mod smoke;
pub mod tls;

mod http;

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The judgement of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// As expected.
    Pass,
    /// Works, but close to a limit or not fully checkable.
    Warn,
    /// Not as expected: the release should not go ahead.
    Fail,
}

impl Outcome {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One row of a check report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The check kind and name, e.g. `reach`, `capacity.memory`, `smoke.health`.
    pub check: String,
    /// What was checked (an endpoint, a user, a path).
    pub target: String,
    /// The judgement.
    pub verdict: Outcome,
    /// What was measured, with units.
    pub measured: String,
    /// What was expected.
    pub expected: String,
    /// How long the check took.
    pub duration_ms: u64,
    /// What to do when it is not a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The target host the row was measured on (an ssh environment's host, by its
    /// inventory name); `None` when measured on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Verdict {
    /// A row timed from `started`.
    pub fn new(
        check: impl Into<String>,
        target: impl Into<String>,
        verdict: Outcome,
        measured: impl Into<String>,
        expected: impl Into<String>,
        started: Instant,
    ) -> Self {
        Self {
            check: check.into(),
            target: target.into(),
            verdict,
            measured: measured.into(),
            expected: expected.into(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            hint: None,
            host: None,
        }
    }

    /// With a hint.
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }

    /// Measured on this target host.
    pub fn on_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

/// The worst outcome of a report (`Pass` when empty).
pub fn worst(rows: &[Verdict]) -> Outcome {
    rows.iter()
        .map(|r| r.verdict)
        .max()
        .unwrap_or(Outcome::Pass)
}
