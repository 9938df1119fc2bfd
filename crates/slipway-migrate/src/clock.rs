//! The one place this crate reads the wall clock (history rows, backup metadata).
//!
//! Durations are measured with `std::time::Instant`; only timestamps written for humans come
//! from here.

/// Now as RFC 3339 in UTC, e.g. `2026-11-02T10:00:00Z`.
pub(crate) fn now_rfc3339() -> String {
    slipway_stdx::now().to_string()
}
