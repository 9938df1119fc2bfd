//! Gate evaluation, as pure functions of the plan, the time and the approvals: deployment
//! windows (cron + IANA time zone + duration), freezes (inclusive dates in a time zone)
//! and approvals bound to the plan digest.

use std::collections::BTreeSet;
use std::str::FromStr;

use croner::Cron;
use jiff::{Timestamp, tz::TimeZone};
use slipway_model::duration::parse_duration;
use slipway_model::spec::{Freeze, Window};

use crate::store::ApprovalRecord;

/// Why a gate cannot be evaluated (the spec should have been validated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evaluate {what}: {message}")]
pub struct GateError {
    /// Which field.
    pub what: String,
    /// Why.
    pub message: String,
}

/// Whether the deployment windows are open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowStatus {
    /// No windows are configured, or one is open until this time.
    Open {
        /// When the open window closes (None when there are no windows).
        until: Option<Timestamp>,
    },
    /// Every window is closed; the earliest opens then.
    Closed {
        /// Next opening.
        opens_at: Timestamp,
    },
}

/// Evaluate the windows at `now`.
pub fn window_status(windows: &[Window], now: Timestamp) -> Result<WindowStatus, GateError> {
    if windows.is_empty() {
        return Ok(WindowStatus::Open { until: None });
    }
    let mut next: Option<Timestamp> = None;
    for (i, w) in windows.iter().enumerate() {
        let what = |f: &str| format!("windows[{i}].{f}");
        let cron = Cron::from_str(&w.cron).map_err(|e| GateError {
            what: what("cron"),
            message: format!("`{}` is not a cron expression: {e}", w.cron),
        })?;
        let tz = TimeZone::get(&w.timezone).map_err(|e| GateError {
            what: what("timezone"),
            message: format!("`{}` is not an IANA time zone: {e}", w.timezone),
        })?;
        let len = parse_duration(&w.duration).map_err(|e| GateError {
            what: what("duration"),
            message: e,
        })?;
        let len = jiff::SignedDuration::try_from(len).map_err(|e| GateError {
            what: what("duration"),
            message: e.to_string(),
        })?;
        // The first opening at or after now - duration: if it is not after now, the window
        // that opened then is still open.
        let from = now.checked_sub(len).unwrap_or(Timestamp::MIN).to_zoned(tz);
        let open = cron
            .find_next_occurrence(&from, true)
            .map_err(|e| GateError {
                what: what("cron"),
                message: format!("`{}` never matches: {e}", w.cron),
            })?
            .timestamp();
        if open <= now {
            return Ok(WindowStatus::Open {
                until: open.checked_add(len).ok(),
            });
        }
        next = Some(next.map_or(open, |n| n.min(open)));
    }
    match next {
        Some(opens_at) => Ok(WindowStatus::Closed { opens_at }),
        None => Ok(WindowStatus::Open { until: None }),
    }
}

/// The freeze in force at `now`, if any.
pub fn active_freeze(freezes: &[Freeze], now: Timestamp) -> Result<Option<&Freeze>, GateError> {
    for (i, f) in freezes.iter().enumerate() {
        let tz_name = f.timezone.as_deref().unwrap_or("UTC");
        let tz = TimeZone::get(tz_name).map_err(|e| GateError {
            what: format!("freezes[{i}].timezone"),
            message: format!("`{tz_name}` is not an IANA time zone: {e}"),
        })?;
        let parse = |field: &str, v: &str| {
            jiff::civil::Date::from_str(v).map_err(|e| GateError {
                what: format!("freezes[{i}].{field}"),
                message: format!("`{v}` is not a YYYY-MM-DD date: {e}"),
            })
        };
        let (from, to) = (parse("from", &f.from)?, parse("to", &f.to)?);
        let today = now.to_zoned(tz).date();
        if from <= today && today <= to {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// What approvals a run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNeed {
    /// Distinct approvers needed.
    pub required: u32,
    /// Allowed groups (empty: anyone).
    pub groups: Vec<String>,
    /// The author's approval does not count.
    pub exclude_author: bool,
}

/// The approvals that count, and those that do not with why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApprovalTally {
    /// Distinct approvers that count.
    pub valid: Vec<String>,
    /// (approver, why it does not count).
    pub rejected: Vec<(String, String)>,
}

/// Count the approvals that are bound to `digest`, not from the author when excluded, from
/// an allowed group, one per approver.
pub fn tally(
    need: &ApprovalNeed,
    approvals: &[ApprovalRecord],
    digest: &str,
    author: &str,
) -> ApprovalTally {
    let mut seen = BTreeSet::new();
    let mut t = ApprovalTally::default();
    for a in approvals {
        if a.digest != digest {
            t.rejected.push((
                a.approver.clone(),
                format!("approved another plan digest ({})", short(&a.digest)),
            ));
        } else if need.exclude_author && a.approver == author {
            t.rejected
                .push((a.approver.clone(), "is the author of the run".to_owned()));
        } else if !need.groups.is_empty() && !a.groups.iter().any(|g| need.groups.contains(g)) {
            t.rejected.push((
                a.approver.clone(),
                format!("is in none of the groups {}", need.groups.join(", ")),
            ));
        } else if seen.insert(a.approver.clone()) {
            t.valid.push(a.approver.clone());
        }
    }
    t
}

/// The first 12 characters of a digest, for messages.
pub fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
