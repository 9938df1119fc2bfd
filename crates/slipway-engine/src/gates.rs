//! Gate evaluation, as pure functions of the plan, the time and the approvals: deployment
//! windows (cron + IANA time zone + duration), freezes (inclusive dates in a time zone)
//! and approvals bound to the plan digest.
//!
//! Windows are half-open intervals `[opening, opening + duration)` with croniter's DST
//! semantics; see [`window_status`] and README's "Deployment windows".

use std::collections::BTreeSet;
use std::str::FromStr;

use jiff::{Timestamp, Zoned, tz::TimeZone};
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
///
/// A window is the half-open interval `[opening, opening + duration)` for every opening of
/// its cron in its time zone: open at the opening instant, closed at the closing instant.
/// Openings follow croniter (the reference the test suite compares with) and cronie:
/// - a wall-clock time the cron matches opens the window at **every** instant the clock
///   shows it, so on the day clocks go back a time in the repeated hour opens it twice
///   (once per offset);
/// - a time that matches inside the hour skipped when clocks go forward opens it at the
///   first instant after the gap (fixed-time crons, e.g. `30 2 * * *` opens at 03:00);
///   interval crons (`*/15 * * * *`) just have no openings inside the gap.
///
/// When several openings overlap, `until` is the close of the latest one.
pub fn window_status(windows: &[Window], now: Timestamp) -> Result<WindowStatus, GateError> {
    if windows.is_empty() {
        return Ok(WindowStatus::Open { until: None });
    }
    let mut next: Option<Timestamp> = None;
    let mut open_until: Option<Timestamp> = None;
    for (i, w) in windows.iter().enumerate() {
        let what = |f: &str| format!("windows[{i}].{f}");
        let cron = slipway_model::cron::parse(&w.cron).map_err(|message| GateError {
            what: what("cron"),
            message,
        })?;
        let tz = TimeZone::get(&w.timezone).map_err(|e| GateError {
            what: what("timezone"),
            message: format!("`{}` is not an IANA time zone: {e}", w.timezone),
        })?;
        let len = w.duration.get().map_err(|e| GateError {
            what: what("duration"),
            message: e,
        })?;
        let len = jiff::SignedDuration::try_from(len).map_err(|e| GateError {
            what: what("duration"),
            message: e.to_string(),
        })?;
        let never = |e: croner::errors::CronError| GateError {
            what: what("cron"),
            message: format!("`{}` never matches: {e}", w.cron),
        };
        let here = now.to_zoned(tz.clone());
        // croner opens a fixed-time cron once in a repeated hour (at the earlier instant);
        // the later instant of the same wall-clock time is an opening too.
        let last = cron.find_previous_occurrence(&here, true).ok();
        let repeat = last.as_ref().and_then(|l| repeated(&tz, l));
        let latest = match (last.as_ref().map(Zoned::timestamp), repeat) {
            (Some(l), Some(r)) if r <= now => Some(r.max(l)),
            (l, _) => l,
        };
        if let Some(opened) = latest
            && let Ok(closes) = opened.checked_add(len)
            && now < closes
        {
            open_until = Some(open_until.map_or(closes, |u| u.max(closes)));
            continue;
        }
        let ahead = cron.find_next_occurrence(&here, false).map_err(never)?;
        let mut opens = ahead.timestamp();
        if let Some(r) = repeat.filter(|r| *r > now) {
            opens = opens.min(r);
        }
        next = Some(next.map_or(opens, |n| n.min(opens)));
    }
    if let Some(until) = open_until {
        return Ok(WindowStatus::Open { until: Some(until) });
    }
    match next {
        Some(opens_at) => Ok(WindowStatus::Closed { opens_at }),
        None => Ok(WindowStatus::Open { until: None }),
    }
}

/// The later instant of `at`'s wall-clock time when the clocks went back over it (the time
/// is shown twice), else `None`.
fn repeated(tz: &TimeZone, at: &Zoned) -> Option<Timestamp> {
    let ambiguous = tz.to_ambiguous_timestamp(at.datetime());
    if !matches!(ambiguous.offset(), jiff::tz::AmbiguousOffset::Fold { .. }) {
        return None;
    }
    ambiguous.later().ok().filter(|l| *l != at.timestamp())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(cron: &str, tz: &str, duration: &str) -> Window {
        Window {
            cron: cron.into(),
            timezone: tz.into(),
            duration: duration.into(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn status(w: &Window, t: &str) -> WindowStatus {
        window_status(std::slice::from_ref(w), at(t)).unwrap()
    }

    #[test]
    fn a_window_is_closed_at_its_closing_instant() {
        let w = window("0 9 * * *", "UTC", "1h");
        assert_eq!(
            status(&w, "2027-03-01T09:00:00Z"),
            WindowStatus::Open {
                until: Some(at("2027-03-01T10:00:00Z"))
            }
        );
        assert!(matches!(
            status(&w, "2027-03-01T09:59:59.999Z"),
            WindowStatus::Open { .. }
        ));
        for closed in [
            "2027-03-01T10:00:00Z",
            "2027-03-01T10:00:00.5Z",
            "2027-03-01T08:59:59.999Z",
        ] {
            assert!(
                matches!(status(&w, closed), WindowStatus::Closed { .. }),
                "{closed}"
            );
        }
    }

    #[test]
    fn a_time_in_the_repeated_hour_opens_twice_when_clocks_go_back() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let w = window("30 2 * * *", "Europe/Berlin", "15m");
        // First 02:30 (CEST, 00:30 UTC) and second 02:30 (CET, 01:30 UTC).
        assert!(matches!(
            status(&w, "2026-10-25T00:35:00Z"),
            WindowStatus::Open { .. }
        ));
        assert_eq!(
            status(&w, "2026-10-25T01:00:00Z"),
            WindowStatus::Closed {
                opens_at: at("2026-10-25T01:30:00Z")
            }
        );
        assert_eq!(
            status(&w, "2026-10-25T01:35:00Z"),
            WindowStatus::Open {
                until: Some(at("2026-10-25T01:45:00Z"))
            }
        );
    }

    #[test]
    fn a_time_in_the_skipped_hour_opens_right_after_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        // It opens at 03:00 CEST (01:00 UTC), as cronie runs such a job.
        let w = window("30 2 * * *", "Europe/Berlin", "1h");
        assert_eq!(
            status(&w, "2026-03-29T00:30:00Z"),
            WindowStatus::Closed {
                opens_at: at("2026-03-29T01:00:00Z")
            }
        );
        assert_eq!(
            status(&w, "2026-03-29T01:10:00Z"),
            WindowStatus::Open {
                until: Some(at("2026-03-29T02:00:00Z"))
            }
        );
    }

    #[test]
    fn six_field_crons_are_refused() {
        let e = window_status(
            &[window("0 9 * * 1 0", "UTC", "1h")],
            at("2027-01-01T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(e.what, "windows[0].cron");
        assert!(e.message.contains("6 fields"), "{}", e.message);
    }
}
