//! DORA and delivery figures over the run history.
//!
//! Definitions (each figure says what it counts, so a reader can recompute it):
//! - a **deployment** is a run in scope that reached `succeeded`, `failed` or
//!   `rolled_back`; aborted runs are counted apart and are not deployments;
//! - **deployment frequency**: successful deployments per day over `[since, until)`;
//! - **lead time for changes**: from the commit time of the release (its git tag, or the
//!   last commit before the run when no tag exists — see [`crate::git::change_origin`]) to
//!   the end of the successful deployment; median and mean;
//! - **change failure rate**: failed plus rolled-back deployments over deployments;
//! - **failed deployment recovery time**: per failed deployment, from its start until
//!   service was restored — the end of its rollback when it rolled back, else the end of
//!   the next successful deployment of the same release in the same environment; median,
//!   and **MTTR** as the mean; failures never restored are counted as `unrecovered`;
//! - **success rate** and **rollback frequency**: succeeded and rolled-back deployments
//!   over deployments.
//!
//! Scope: production environments (the plan's `production` flag). When the history holds
//! no production run at all, every environment is used and the report says so.
//!
//! Archived runs count like live ones, read from the summaries `slipway archive` leaves
//! (see [`crate::history::with_archived`]); the report says how many came from summaries
//! and from which bundles, and names any archive whose runs left no summary (archived by
//! an older slipway), since it cannot count those.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;
use slipway_engine::RunState;

use crate::git::ChangeOrigin;
use crate::history::{ArchiveUse, RunHistory, Unsummarized};
use crate::html::{esc, page};

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct DoraQuery {
    /// Start of the period.
    pub since: Option<Timestamp>,
    /// End of the period (the report's "now").
    pub until: Option<Timestamp>,
    /// Only runs deploying this service.
    pub service: Option<String>,
    /// Only runs of this release type.
    pub release_type: Option<String>,
    /// Only this environment (overrides the production scope).
    pub environment: Option<String>,
    /// Archives whose runs left no summary (from [`crate::history::with_archived`]): not
    /// countable, named in the report when they may overlap the period.
    pub unsummarized: Vec<Unsummarized>,
}

/// The figures of one group of deployments.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Deployments (terminal runs other than aborted).
    pub deployments: u32,
    /// Succeeded deployments.
    pub succeeded: u32,
    /// Failed deployments (not rolled back cleanly).
    pub failed: u32,
    /// Rolled-back deployments.
    pub rolled_back: u32,
    /// Aborted runs (not deployments).
    pub aborted: u32,
    /// Successful deployments per day.
    pub deployment_frequency_per_day: f64,
    /// Median lead time for changes, seconds.
    pub lead_time_median_seconds: Option<f64>,
    /// Mean lead time for changes, seconds.
    pub lead_time_mean_seconds: Option<f64>,
    /// Successful deployments without git facts (not in the lead time).
    pub lead_time_unknown: u32,
    /// Failed + rolled back over deployments.
    pub change_failure_rate: Option<f64>,
    /// Median failed deployment recovery time, seconds.
    pub recovery_median_seconds: Option<f64>,
    /// Mean time to restore, seconds.
    pub mttr_seconds: Option<f64>,
    /// Failed deployments never restored within the period.
    pub unrecovered: u32,
    /// Succeeded over deployments.
    pub success_rate: Option<f64>,
    /// Rolled back over deployments.
    pub rollback_frequency: Option<f64>,
}

/// One deployment, as counted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    /// Run id.
    pub run: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Release type.
    pub release_type: String,
    /// Environment.
    pub environment: String,
    /// Services deployed.
    pub services: Vec<String>,
    /// Final state.
    pub state: String,
    /// Start of the deployment.
    pub started_at: Timestamp,
    /// End of the deployment.
    pub finished_at: Option<Timestamp>,
    /// Lead time for changes, seconds (successful deployments with git facts).
    pub lead_time_seconds: Option<f64>,
    /// Where the lead time starts.
    pub change_source: Option<String>,
    /// Recovery time, seconds (failed deployments that were restored).
    pub recovery_seconds: Option<f64>,
    /// The archive bundle holding the run's records, when it was archived (counted from
    /// its summary).
    pub archived_in: Option<String>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoraReport {
    /// Period start.
    pub since: Option<Timestamp>,
    /// Period end.
    pub until: Timestamp,
    /// Which environments were counted, in words.
    pub scope: String,
    /// Filters applied.
    pub service: Option<String>,
    /// Filters applied.
    pub release_type: Option<String>,
    /// All deployments in scope.
    pub overall: Figures,
    /// By service (a run counts once for each service it deploys).
    pub by_service: BTreeMap<String, Figures>,
    /// By release type.
    pub by_type: BTreeMap<String, Figures>,
    /// The deployments counted, oldest first.
    pub deployments: Vec<Deployment>,
    /// How many counted runs (deployments and aborted) come from archive summaries, their
    /// bundles, and archived runs that could not be counted.
    pub archive: ArchiveUse,
}

fn secs(a: Timestamp, b: Timestamp) -> f64 {
    b.duration_since(a).as_secs_f64()
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn ratio(a: u32, b: u32) -> Option<f64> {
    (b > 0).then(|| f64::from(a) / f64::from(b))
}

/// Compute the report. `origin` gives the change a run deploys (its commit), usually
/// [`crate::git::change_origin`]; `until` is "now", passed in so reports are reproducible.
pub fn compute(
    runs: &[RunHistory],
    query: &DoraQuery,
    until: Timestamp,
    origin: &dyn Fn(&RunHistory) -> Option<ChangeOrigin>,
) -> DoraReport {
    let until = query.until.unwrap_or(until);
    let any_production = runs.iter().any(RunHistory::production);
    let scope = match &query.environment {
        Some(e) => format!("environment {e}"),
        None if any_production => "production environments".to_owned(),
        None => "all environments (no run is in a production environment)".to_owned(),
    };
    let in_scope = |r: &RunHistory| {
        let env_ok = match &query.environment {
            Some(e) => &r.record.environment == e,
            None => !any_production || r.production(),
        };
        env_ok
            && query.since.is_none_or(|s| r.record.created_at >= s)
            && r.record.created_at < until
            && query
                .service
                .as_ref()
                .is_none_or(|s| r.services().contains(s))
            && query
                .release_type
                .as_ref()
                .is_none_or(|t| r.release_type() == t)
    };
    let scoped: Vec<&RunHistory> = runs.iter().filter(|r| in_scope(r)).collect();

    let mut deployments = Vec::new();
    let mut aborted: Vec<&RunHistory> = Vec::new();
    for (i, r) in scoped.iter().enumerate() {
        let state = r.record.state;
        if state == RunState::Aborted {
            aborted.push(r);
            continue;
        }
        if !state.is_terminal() {
            continue;
        }
        let started = r.started_at();
        let finished = r.finished_at();
        let mut d = Deployment {
            run: r.record.id.clone(),
            release: r.record.release.clone(),
            version: r.record.version.clone(),
            release_type: r.release_type().to_owned(),
            environment: r.record.environment.clone(),
            services: r.services(),
            state: state.as_str().to_owned(),
            started_at: started,
            finished_at: finished,
            lead_time_seconds: None,
            change_source: None,
            recovery_seconds: None,
            archived_in: r.archived.as_ref().map(|a| a.bundle.clone()),
        };
        match state {
            RunState::Succeeded => {
                if let (Some(o), Some(f)) = (origin(r), finished) {
                    d.lead_time_seconds = Some(secs(o.commit.time, f).max(0.0));
                    d.change_source = Some(format!("{} {}", o.source, short(&o.commit.sha)));
                }
            }
            RunState::RolledBack => {
                d.recovery_seconds = finished.map(|f| secs(started, f));
            }
            _ => {
                // Restored by the next successful deployment of this release here.
                d.recovery_seconds = scoped[i + 1..]
                    .iter()
                    .find(|n| {
                        n.record.state == RunState::Succeeded
                            && n.record.release == r.record.release
                            && n.record.environment == r.record.environment
                    })
                    .and_then(|n| n.finished_at())
                    .map(|f| secs(started, f));
            }
        }
        deployments.push(d);
    }

    let days = query
        .since
        .map(|s| secs(s, until) / 86_400.0)
        .or_else(|| {
            let first = scoped.first()?.record.created_at;
            Some(secs(first, until) / 86_400.0)
        })
        .unwrap_or(0.0);
    let figures = |ds: &[&Deployment], aborted: u32| -> Figures {
        let count = |s: &str| ds.iter().filter(|d| d.state == s).count() as u32;
        let succeeded = count("succeeded");
        let failed = count("failed");
        let rolled_back = count("rolled_back");
        let n = ds.len() as u32;
        let leads: Vec<f64> = ds.iter().filter_map(|d| d.lead_time_seconds).collect();
        let recoveries: Vec<f64> = ds.iter().filter_map(|d| d.recovery_seconds).collect();
        Figures {
            deployments: n,
            succeeded,
            failed,
            rolled_back,
            aborted,
            deployment_frequency_per_day: if days > 0.0 {
                f64::from(succeeded) / days
            } else {
                0.0
            },
            lead_time_median_seconds: median(&leads),
            lead_time_mean_seconds: mean(&leads),
            lead_time_unknown: succeeded - leads.len() as u32,
            change_failure_rate: ratio(failed + rolled_back, n),
            recovery_median_seconds: median(&recoveries),
            mttr_seconds: mean(&recoveries),
            unrecovered: failed + rolled_back - recoveries.len() as u32,
            success_rate: ratio(succeeded, n),
            rollback_frequency: ratio(rolled_back, n),
        }
    };
    let all: Vec<&Deployment> = deployments.iter().collect();
    let overall = figures(&all, aborted.len() as u32);
    let mut by_service = BTreeMap::new();
    let services: std::collections::BTreeSet<&String> =
        deployments.iter().flat_map(|d| &d.services).collect();
    for s in services {
        let ds: Vec<&Deployment> = deployments
            .iter()
            .filter(|d| d.services.contains(s))
            .collect();
        let ab = aborted.iter().filter(|r| r.services().contains(s)).count() as u32;
        by_service.insert(s.clone(), figures(&ds, ab));
    }
    let mut by_type = BTreeMap::new();
    let types: std::collections::BTreeSet<&String> =
        deployments.iter().map(|d| &d.release_type).collect();
    for t in types {
        let ds: Vec<&Deployment> = deployments
            .iter()
            .filter(|d| &d.release_type == t)
            .collect();
        let ab = aborted.iter().filter(|r| r.release_type() == t).count() as u32;
        by_type.insert(t.clone(), figures(&ds, ab));
    }
    let counted = scoped
        .iter()
        .copied()
        .filter(|r| r.record.state.is_terminal());
    let archive = ArchiveUse::of(counted, &query.unsummarized, query.since);
    DoraReport {
        archive,
        since: query.since,
        until,
        scope,
        service: query.service.clone(),
        release_type: query.release_type.clone(),
        overall,
        by_service,
        by_type,
        deployments,
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// A duration for people: `42s`, `3.5m`, `2.1h`, `1.5d`.
pub fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{:.1}m", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86_400.0)
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

fn dur(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), human_secs)
}

fn figure_rows(f: &Figures) -> Vec<(&'static str, String)> {
    vec![
        (
            "deployments",
            format!(
                "{} ({} succeeded, {} failed, {} rolled back; {} aborted not counted)",
                f.deployments, f.succeeded, f.failed, f.rolled_back, f.aborted
            ),
        ),
        (
            "deployment frequency",
            format!("{:.2} per day", f.deployment_frequency_per_day),
        ),
        (
            "lead time for changes",
            format!(
                "median {}, mean {}{}",
                dur(f.lead_time_median_seconds),
                dur(f.lead_time_mean_seconds),
                if f.lead_time_unknown > 0 {
                    format!(" ({} without git facts)", f.lead_time_unknown)
                } else {
                    String::new()
                }
            ),
        ),
        ("change failure rate", pct(f.change_failure_rate)),
        (
            "failed deployment recovery time",
            format!(
                "median {}{}",
                dur(f.recovery_median_seconds),
                if f.unrecovered > 0 {
                    format!(" ({} unrecovered)", f.unrecovered)
                } else {
                    String::new()
                }
            ),
        ),
        ("MTTR", dur(f.mttr_seconds)),
        ("success rate", pct(f.success_rate)),
        ("rollback frequency", pct(f.rollback_frequency)),
    ]
}

/// The report as text for a terminal.
pub fn render_text(r: &DoraReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "DORA report, {} to {} ({})",
        r.since
            .map_or_else(|| "the beginning".to_owned(), |t| t.to_string()),
        r.until,
        r.scope
    );
    if let Some(svc) = &r.service {
        let _ = writeln!(s, "service: {svc}");
    }
    if let Some(t) = &r.release_type {
        let _ = writeln!(s, "release type: {t}");
    }
    for (k, v) in figure_rows(&r.overall) {
        let _ = writeln!(s, "  {k:<32} {v}");
    }
    let _ = writeln!(s, "{}", r.archive.describe());
    for (title, groups) in [
        ("by service", &r.by_service),
        ("by release type", &r.by_type),
    ] {
        if groups.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{title}:");
        let _ = writeln!(
            s,
            "  {:<12} {:>5} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8}",
            "", "deps", "freq/d", "lead", "CFR", "recovery", "success", "rollback"
        );
        for (name, f) in groups {
            let _ = writeln!(
                s,
                "  {:<12} {:>5} {:>8.2} {:>9} {:>8} {:>9} {:>8} {:>8}",
                name,
                f.deployments,
                f.deployment_frequency_per_day,
                dur(f.lead_time_median_seconds),
                pct(f.change_failure_rate),
                dur(f.recovery_median_seconds),
                pct(f.success_rate),
                pct(f.rollback_frequency)
            );
        }
    }
    s
}

const COLORS: [(&str, &str); 3] = [
    ("succeeded", "#2e7d32"),
    ("rolled_back", "#ef6c00"),
    ("failed", "#c62828"),
];

/// Deployments per day, stacked by outcome.
fn svg_per_day(r: &DoraReport) -> String {
    let mut days: BTreeMap<String, BTreeMap<&str, u32>> = BTreeMap::new();
    for d in &r.deployments {
        let day = d.started_at.to_string().get(..10).unwrap_or("").to_owned();
        *days.entry(day).or_default().entry(&d.state).or_default() += 1;
    }
    let max = days
        .values()
        .map(|m| m.values().sum::<u32>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, bar) = (640.0, 220.0, 28.0);
    let n = days.len().max(1) as f64;
    let step = ((w - 60.0) / n).min(bar + 12.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"deployments per day\">\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"40\" y1=\"180\" x2=\"{}\" y2=\"180\" stroke=\"#999\"/><text x=\"4\" y=\"20\">{max}</text><text x=\"4\" y=\"180\">0</text>",
        w - 10.0
    );
    for (i, (day, m)) in days.iter().enumerate() {
        let x = 44.0 + i as f64 * step;
        let mut y = 180.0;
        for (state, color) in COLORS {
            let c = m.get(state).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let bh = 160.0 * f64::from(c) / f64::from(max);
            y -= bh;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{} {}: {c}</title></rect>",
                esc(day),
                state
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"196\" transform=\"rotate(30 {x:.1} 196)\">{}</text>",
            esc(day.get(5..).unwrap_or(day))
        );
    }
    s.push_str("</svg>");
    s
}

/// Lead time per successful deployment, horizontal bars.
fn svg_lead_times(r: &DoraReport) -> String {
    let rows: Vec<(&Deployment, f64)> = r
        .deployments
        .iter()
        .filter_map(|d| d.lead_time_seconds.map(|l| (d, l)))
        .collect();
    if rows.is_empty() {
        return "<p>No lead times: no successful deployment had git facts.</p>".to_owned();
    }
    let max = rows.iter().map(|(_, l)| *l).fold(1.0, f64::max);
    let h = 24.0 * rows.len() as f64 + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{h}\" role=\"img\" aria-label=\"lead time per deployment\">\n"
    );
    for (i, (d, l)) in rows.iter().enumerate() {
        let y = 5.0 + i as f64 * 24.0;
        let bw = 400.0 * l / max;
        let _ = writeln!(
            s,
            "<text x=\"0\" y=\"{:.1}\">{} {}</text><rect x=\"160\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"16\" fill=\"#1565c0\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y + 12.0,
            esc(&d.release),
            esc(&d.version),
            165.0 + bw,
            y + 12.0,
            human_secs(*l)
        );
    }
    s.push_str("</svg>");
    s
}

fn html_table(groups: &BTreeMap<String, Figures>, what: &str) -> String {
    let mut s = format!(
        "<table><tr><th>{what}</th><th>deployments</th><th>frequency / day</th><th>lead time (median)</th><th>change failure rate</th><th>recovery (median)</th><th>MTTR</th><th>success</th><th>rollback</th></tr>\n"
    );
    for (name, f) in groups {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            f.deployments,
            f.deployment_frequency_per_day,
            dur(f.lead_time_median_seconds),
            pct(f.change_failure_rate),
            dur(f.recovery_median_seconds),
            dur(f.mttr_seconds),
            pct(f.success_rate),
            pct(f.rollback_frequency)
        );
    }
    s.push_str("</table>");
    s
}

/// The report as one HTML page with inline SVG charts (no scripts, no external assets).
pub fn render_html(r: &DoraReport) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "<h1>DORA report</h1>");
    let _ = writeln!(
        b,
        "<p>{} to {}; {}.</p>",
        esc(&r
            .since
            .map_or_else(|| "the beginning".to_owned(), |t| t.to_string())),
        esc(&r.until.to_string()),
        esc(&r.scope)
    );
    let _ = writeln!(b, "<p>{}.</p>", esc(&r.archive.describe()));
    b.push_str("<table>");
    for (k, v) in figure_rows(&r.overall) {
        let _ = writeln!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    b.push_str("</table>\n<h2>Deployments per day</h2>\n");
    b.push_str(&svg_per_day(r));
    b.push_str("\n<p>green: succeeded, orange: rolled back, red: failed</p>\n<h2>Lead time for changes</h2>\n");
    b.push_str(&svg_lead_times(r));
    b.push_str("\n<h2>By service</h2>\n");
    b.push_str(&html_table(&r.by_service, "service"));
    b.push_str("\n<h2>By release type</h2>\n");
    b.push_str(&html_table(&r.by_type, "type"));
    b.push_str("\n<h2>Deployments</h2>\n<table><tr><th>run</th><th>release</th><th>type</th><th>environment</th><th>state</th><th>started</th><th>lead time</th><th>change from</th><th>recovery</th></tr>\n");
    for d in &r.deployments {
        let _ = writeln!(
            b,
            "<tr><td><code>{}</code>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.run),
            d.archived_in
                .as_ref()
                .map_or_else(String::new, |b| format!(" (archived: {})", esc(b))),
            esc(&d.release),
            esc(&d.version),
            esc(&d.release_type),
            esc(&d.environment),
            if d.state == "succeeded" {
                "good"
            } else {
                "bad"
            },
            esc(&d.state),
            esc(&d.started_at.to_string()),
            dur(d.lead_time_seconds),
            esc(d.change_source.as_deref().unwrap_or("–")),
            dur(d.recovery_seconds)
        );
    }
    b.push_str("</table>\n");
    page("Slipway DORA report", &b)
}
