//! Cross-check of deployment windows (`gates::window_status`) against croniter 7 +
//! zoneinfo, the reference implementation of cron semantics, over thousands of instants:
//! the days clocks change in Europe/Berlin, America/New_York and Australia/Lord_Howe
//! (a half-hour shift), Asia/Kolkata (+05:30, no DST), month ends, `L`, `5#3`, Feb 29 and
//! day-of-month OR day-of-week — at, just before and just after openings and closings.
//!
//! The reference's window: open at `t` iff some opening `o` (an instant croniter yields)
//! has `o <= t < o + duration`; then `until` is the close of the latest such opening;
//! otherwise `opens_at` is the first opening after `t`. No intentional difference remains
//! for five-field crons (see README, "Deployment windows").

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use serde_json::{Value, json};
use slipway_engine::gates::{WindowStatus, window_status};
use slipway_model::spec::Window;

use crate::reference;

const CRONITER: &str = r#"
import json, sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo
from croniter import croniter
out = []
for case in json.load(sys.stdin):
    tz = ZoneInfo(case["tz"])
    d = timedelta(seconds=case["d"])
    res = []
    for t in case["ts"]:
        t = datetime.fromtimestamp(t, timezone.utc)
        it = croniter(case["cron"], (t - d).astimezone(tz))
        o = it.get_next(datetime)
        if o <= t:
            latest = o
            while True:
                n = it.get_next(datetime)
                if n > t:
                    break
                latest = n
            # In UTC: Python adds to an aware datetime on the wall clock, which would
            # move a close across a clock change by the change.
            res.append(["open", int((latest.astimezone(timezone.utc) + d).timestamp())])
        else:
            res.append(["closed", int(o.timestamp())])
    out.append(res)
print(json.dumps(out))
"#;

struct Case {
    cron: &'static str,
    tz: &'static str,
    duration: &'static str,
    instants: Vec<Timestamp>,
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// Instants around `t`: a coarse grid over ±`hours` at an odd step (sub-second offsets), and
/// every quarter hour within ±4 h exactly and one millisecond before — openings and
/// closings of the crons below fall on quarter hours.
fn around(t: Timestamp, hours: i64, step_min: i64) -> Vec<Timestamp> {
    let mut v = Vec::new();
    let mut x = t - SignedDuration::from_hours(hours);
    let end = t + SignedDuration::from_hours(hours);
    while x < end {
        v.push(x);
        x += SignedDuration::from_mins(step_min) + SignedDuration::from_millis(250);
    }
    let quarter = t.as_second() - t.as_second().rem_euclid(900);
    for k in -12..12 {
        let q = Timestamp::from_second(quarter + k * 900).unwrap();
        v.push(q);
        v.push(q - SignedDuration::from_millis(1));
    }
    v
}

/// Instants around every clock change of `tz` in 2026.
fn around_changes(tz: &str) -> Vec<Timestamp> {
    let zone = TimeZone::get(tz).unwrap();
    zone.following(ts("2026-01-01T00:00:00Z"))
        .take_while(|tr| tr.timestamp() < ts("2027-01-01T00:00:00Z"))
        .flat_map(|tr| around(tr.timestamp(), 12, 29))
        .collect()
}

/// Every `step` hours (plus 37 s, so instants are not only whole hours) between two dates.
fn every(from: &str, to: &str, step_hours: i64) -> Vec<Timestamp> {
    let (mut x, end) = (ts(from), ts(to));
    let mut v = Vec::new();
    while x < end {
        v.push(x);
        x += SignedDuration::from_hours(step_hours) + SignedDuration::from_secs(37);
    }
    v
}

fn month_ends(tz: &str) -> Vec<Timestamp> {
    let zone = TimeZone::get(tz).unwrap();
    let mut v = Vec::new();
    for year in [2027, 2028] {
        for month in 1..=12 {
            let first = jiff::civil::date(year, month, 1).at(9, 0, 0, 0);
            let t = zone.to_timestamp(first).unwrap();
            v.extend(around(t, 30, 131));
        }
    }
    v
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |cron, tz, duration, instants: Vec<Timestamp>| {
        out.push(Case {
            cron,
            tz,
            duration,
            instants,
        });
    };
    // Clock changes: fixed times in the repeated and in the skipped hour, a window
    // spanning the change, interval crons, in zones with whole- and half-hour shifts.
    add(
        "30 2 * * *",
        "Europe/Berlin",
        "1h",
        around_changes("Europe/Berlin"),
    );
    add(
        "0 2 * * *",
        "Europe/Berlin",
        "30m",
        around_changes("Europe/Berlin"),
    );
    add(
        "0 1 * * *",
        "Europe/Berlin",
        "90m",
        around_changes("Europe/Berlin"),
    );
    add(
        "*/20 * * * *",
        "Europe/Berlin",
        "10m",
        around_changes("Europe/Berlin"),
    );
    add(
        "0 9 * * MON-THU",
        "Europe/Berlin",
        "6h",
        around_changes("Europe/Berlin"),
    );
    add(
        "30 1 * * *",
        "America/New_York",
        "1h",
        around_changes("America/New_York"),
    );
    add(
        "30 2 * * *",
        "America/New_York",
        "1h",
        around_changes("America/New_York"),
    );
    add(
        "0 0 * * *",
        "America/New_York",
        "2h",
        around_changes("America/New_York"),
    );
    add(
        "45 1 * * *",
        "Australia/Lord_Howe",
        "20m",
        around_changes("Australia/Lord_Howe"),
    );
    add(
        "15 2 * * *",
        "Australia/Lord_Howe",
        "30m",
        around_changes("Australia/Lord_Howe"),
    );
    add(
        "*/10 * * * *",
        "Australia/Lord_Howe",
        "5m",
        around_changes("Australia/Lord_Howe"),
    );
    add(
        "30 5 * * *",
        "Asia/Kolkata",
        "45m",
        every("2026-03-01T00:00:00Z", "2026-03-20T00:00:00Z", 1),
    );
    // Calendar: last day of the month, third Friday, Feb 29, the 31st, and cron's
    // day-of-month OR day-of-week.
    add(
        "0 9 L * *",
        "Europe/Berlin",
        "2h",
        month_ends("Europe/Berlin"),
    );
    add(
        "0 0 31 * *",
        "Asia/Kolkata",
        "1h",
        month_ends("Asia/Kolkata"),
    );
    add(
        "0 9 * * 5#3",
        "UTC",
        "1h",
        every("2027-01-01T00:00:00Z", "2027-12-31T00:00:00Z", 11),
    );
    add("0 12 29 2 *", "UTC", "3h", {
        let mut v = every("2027-02-20T00:00:00Z", "2027-03-05T00:00:00Z", 5);
        v.extend(around(ts("2028-02-29T12:00:00Z"), 30, 41));
        v
    });
    add(
        "0 9 1,15 * MON",
        "Europe/Berlin",
        "1h",
        every("2027-01-01T00:00:00Z", "2027-04-01T00:00:00Z", 5),
    );
    out
}

fn ours(case: &Case, t: Timestamp) -> Value {
    let w = Window {
        cron: case.cron.into(),
        timezone: case.tz.into(),
        duration: case.duration.into(),
    };
    match window_status(&[w], t).unwrap() {
        WindowStatus::Open { until } => json!(["open", until.unwrap().as_second()]),
        WindowStatus::Closed { opens_at } => json!(["closed", opens_at.as_second()]),
    }
}

#[test]
fn windows_match_croniter_across_dst_and_calendar_edges() {
    if !reference::available(
        "croniter window",
        &["python3", "-c", "import croniter, zoneinfo"],
        "`python3 -m pip install croniter`",
    ) {
        return;
    }
    let cases = cases();
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            let secs = slipway_model::duration::parse_duration(c.duration)
                .unwrap()
                .as_secs();
            let instants: Vec<f64> = c
                .instants
                .iter()
                .map(|t| t.as_nanosecond() as f64 / 1e9)
                .collect();
            json!({"cron": c.cron, "tz": c.tz, "d": secs, "ts": instants})
        })
        .collect();
    let out = reference::python(CRONITER, &serde_json::to_string(&input).unwrap());
    let theirs: Vec<Vec<Value>> = serde_json::from_str(out.trim()).unwrap();
    let mut compared = 0;
    let mut wrong = Vec::new();
    for (case, answers) in cases.iter().zip(&theirs) {
        assert_eq!(answers.len(), case.instants.len());
        for (t, reference) in case.instants.iter().zip(answers) {
            let mine = ours(case, *t);
            if &mine != reference {
                wrong.push(format!(
                    "`{}` {} {} at {} ({}): slipway {mine}, croniter {reference}",
                    case.cron,
                    case.tz,
                    case.duration,
                    t,
                    t.to_zoned(TimeZone::get(case.tz).unwrap())
                ));
            }
            compared += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {compared} instants differ, e.g.:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(compared > 5000, "only {compared} instants compared");
}
