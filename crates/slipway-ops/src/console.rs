//! What the team console shows beside a single run: the approvals inbox (runs waiting
//! for an approval the actor may give), the environment dashboard (service ×
//! environment: what runs, the last deploy, who, drift) and a canary's measurements as
//! series over time (what the run page charts). Typed values; the server renders them.

use std::collections::BTreeMap;

use jiff::Timestamp;
use slipway_engine::event::{EngineEvent, Notice};
use slipway_engine::store::RunRecord;
use slipway_engine::{RunState, Store};
use slipway_govern::access::Role;

use crate::error::OpsResult;
use crate::runs::plan_of;
use crate::session::Session;

/// A run waiting for an approval the actor may give.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Awaiting {
    /// The run (without its plan).
    pub run: RunRecord,
    /// Distinct approvals the plan needs.
    pub required: u32,
    /// Approvals that count so far.
    pub given: usize,
    /// Groups whose members' approvals count (empty: anyone with the approver role).
    pub groups: Vec<String>,
}

/// Runs (among the newest `limit`) waiting for approval that the session's actor may
/// approve: the `approver` role in the run's environment, a member of a group the plan
/// asks for (when it asks), not the author when the plan wants four eyes, and not yet
/// counted among its approvers. The same conditions `runs::approve` and the engine
/// enforce, so a run listed here is one whose approval would count.
pub async fn inbox(session: &Session, limit: u32) -> OpsResult<Vec<Awaiting>> {
    let me = session.actor_id().await?;
    let mut out = Vec::new();
    for listed in session.store.runs(limit).await? {
        if listed.state != RunState::WaitingForApproval
            || crate::access::require(session, Role::Approver, "approve", &listed.environment)
                .await
                .is_err()
        {
            continue;
        }
        // Listings leave the plan out: read the run whole.
        let Some(run) = session.store.run(&listed.id).await? else {
            continue;
        };
        let Some(plan) = plan_of(&run) else { continue };
        let need = slipway_engine::engine::approval_need(&plan, &run);
        let approvals = session.store.approvals(&run.id).await?;
        let tally = slipway_engine::gates::tally(&need, &approvals, &run.digest, &run.author);
        let excluded = need.exclude_author && run.author == me;
        let outside = !need.groups.is_empty()
            && !session.actor.groups.iter().any(|g| need.groups.contains(g));
        if excluded || outside || tally.valid.contains(&me) {
            continue;
        }
        out.push(Awaiting {
            required: need.required,
            given: tally.valid.len(),
            groups: need.groups,
            run,
        });
    }
    Ok(out)
}

/// The last run of one service in one environment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastRun {
    /// Run id.
    pub id: String,
    /// The version it deploys.
    pub version: String,
    /// Its state.
    pub state: RunState,
    /// When it started.
    pub at: Timestamp,
    /// Who started it (the store's pseudonymous id).
    pub author: String,
}

/// One cell of the dashboard: a service in an environment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceCell {
    /// Environment.
    pub environment: String,
    /// Service.
    pub service: String,
    /// The version running (the newest succeeded run's), if any.
    pub running: Option<String>,
    /// The run that put it there.
    pub running_run: Option<String>,
    /// The newest run of the service there, whatever its outcome.
    pub last: LastRun,
    /// Drift: what was last attempted is not what runs (the newest run failed, rolled
    /// back, was aborted or is still under way with another version).
    pub drift: bool,
}

/// Service × environment the actor may read, ordered by environment then service, from
/// the newest run and the newest succeeded run of each release in each environment
/// (`Store::latest_runs`: one indexed query, whatever the history's length — a service
/// deployed once, thousands of runs ago, still shows). Every run plans all of its
/// release's services, so those two runs hold each service's last run and what runs.
pub async fn dashboard(session: &Session) -> OpsResult<Vec<ServiceCell>> {
    let may_read = crate::access::readable(session).await?;
    let mut cells: BTreeMap<(String, String), ServiceCell> = BTreeMap::new();
    // Newest first: the first run naming a service is its last run there; the first
    // succeeded one is what runs.
    for run in session.store.latest_runs().await? {
        if !may_read(&run.environment) {
            continue;
        }
        let Some(plan) = plan_of(&run) else { continue };
        for (service, version) in crate::deployed::planned_versions(&plan) {
            let cell = cells
                .entry((run.environment.clone(), service.clone()))
                .or_insert_with(|| ServiceCell {
                    environment: run.environment.clone(),
                    service,
                    running: None,
                    running_run: None,
                    last: LastRun {
                        id: run.id.clone(),
                        version: version.clone(),
                        state: run.state,
                        at: run.created_at,
                        author: run.author.clone(),
                    },
                    drift: false,
                });
            if cell.running.is_none() && run.state == RunState::Succeeded {
                cell.running = Some(version);
                cell.running_run = Some(run.id.clone());
            }
        }
    }
    Ok(cells
        .into_values()
        .map(|mut c| {
            c.drift = c.running.as_deref() != Some(c.last.version.as_str())
                || (c.last.state != RunState::Succeeded
                    && c.running_run.as_deref() != Some(c.last.id.as_str()));
            c
        })
        .collect())
}

/// One point of a canary chart.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CanaryPoint {
    /// Journal sequence number of the entry it comes from.
    pub seq: i64,
    /// When it was journaled.
    pub at: Timestamp,
    /// The canary's weight (percent) from here on: set by a `weight_set` entry, carried
    /// over by measurements.
    pub weight: u8,
    /// A measurement's window (`None` for a weight change).
    pub measured: Option<Measured>,
}

/// One analysis measurement's window, per version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measured {
    /// Canary errors ÷ requests in the window (`None` without requests).
    pub canary_error_rate: Option<f64>,
    /// Stable errors ÷ requests in the window.
    pub stable_error_rate: Option<f64>,
    /// Canary p99 latency, ms.
    pub canary_p99_ms: Option<f64>,
    /// Stable p99 latency, ms.
    pub stable_p99_ms: Option<f64>,
    /// Requests in the window (canary, stable).
    pub requests: (u64, u64),
}

/// The canary of one step: its points, oldest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CanarySeries {
    /// The step (`deploy-<service>`).
    pub step: String,
    /// Weight changes and measurements.
    pub points: Vec<CanaryPoint>,
}

fn rate(errors: Option<u64>, requests: Option<u64>) -> Option<f64> {
    match (errors, requests) {
        // Counts far below 2^53: exact as f64.
        #[allow(clippy::cast_precision_loss)]
        (Some(e), Some(r)) if r > 0 => Some(e as f64 / r as f64),
        _ => None,
    }
}

/// A run's canaries as series, from its journal's `weight_set` and `measured` progress
/// entries (what the rollout journaled, nothing recomputed): per step, in journal order.
pub fn canary_series(journal: &[Notice]) -> Vec<CanarySeries> {
    let mut out: Vec<CanarySeries> = Vec::new();
    for n in journal {
        let EngineEvent::StepProgress { step, detail, .. } = &n.event else {
            continue;
        };
        let kind = detail.get("event").and_then(|e| e.as_str());
        if !matches!(kind, Some("weight_set" | "measured" | "canary_resumed")) {
            continue;
        }
        let at = match out.iter().position(|s| &s.step == step) {
            Some(i) => i,
            None => {
                out.push(CanarySeries {
                    step: step.clone(),
                    points: Vec::new(),
                });
                out.len() - 1
            }
        };
        let series = &mut out[at];
        let last_weight = series.points.last().map_or(0, |p| p.weight);
        let weight_of = |v: &serde_json::Value| {
            v.get("weight")
                .and_then(serde_json::Value::as_u64)
                .and_then(|w| u8::try_from(w).ok())
                .unwrap_or(last_weight)
        };
        let point = match kind {
            Some("measured") => {
                let w = &detail["window"];
                let u = |k: &str| w.get(k).and_then(serde_json::Value::as_u64);
                let f = |k: &str| w.get(k).and_then(serde_json::Value::as_f64);
                CanaryPoint {
                    seq: n.seq,
                    at: n.at,
                    weight: last_weight,
                    measured: Some(Measured {
                        canary_error_rate: rate(u("canary_errors"), u("canary_requests")),
                        stable_error_rate: rate(u("stable_errors"), u("stable_requests")),
                        canary_p99_ms: f("canary_p99_ms"),
                        stable_p99_ms: f("stable_p99_ms"),
                        requests: (
                            u("canary_requests").unwrap_or(0),
                            u("stable_requests").unwrap_or(0),
                        ),
                    }),
                }
            }
            _ => CanaryPoint {
                seq: n.seq,
                at: n.at,
                weight: weight_of(detail),
                measured: None,
            },
        };
        series.points.push(point);
    }
    out
}

/// Per service of `run`, the version its canary replaces, as the run's own records say
/// (`None` when they do not tell): the chart's label of the stable series.
/// `journal` is the run's.
pub async fn stable_versions(
    store: &dyn Store,
    run: &RunRecord,
    journal: &[Notice],
) -> OpsResult<BTreeMap<String, String>> {
    let Some(plan) = plan_of(run) else {
        return Ok(BTreeMap::new());
    };
    let steps = store.steps(&run.id).await?;
    Ok(
        crate::views::service_versions(&plan, &steps, journal, &BTreeMap::new())
            .into_iter()
            .filter_map(|(s, v)| v.previous.map(|p| (s, p)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn progress(seq: i64, detail: serde_json::Value) -> Notice {
        Notice {
            seq,
            run_id: "r".into(),
            at: Timestamp::from_second(1_700_000_000 + seq).unwrap_or_default(),
            actor: "a".into(),
            event: EngineEvent::StepProgress {
                step: "deploy-api".into(),
                key: "k".into(),
                detail,
            },
        }
    }

    #[test]
    fn weights_carry_over_to_measurements_and_rates_come_from_the_window() {
        let journal = vec![
            progress(1, json!({"event": "canary_started", "instances": []})),
            progress(
                2,
                json!({"event": "weight_set", "weight": 20, "verified": 20}),
            ),
            progress(
                3,
                json!({"event": "measured", "template": "golden", "window": {
                    "canary_requests": 8, "canary_errors": 2, "canary_p99_ms": 12.5,
                    "stable_requests": 0, "stable_errors": 0, "stable_p99_ms": null,
                    "seconds": 1.0}}),
            ),
            progress(
                4,
                json!({"event": "weight_set", "weight": 100, "verified": null}),
            ),
        ];
        let s = canary_series(&journal);
        assert_eq!(s.len(), 1);
        let p = &s[0].points;
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!((p[0].weight, p[1].weight, p[2].weight), (20, 20, 100));
        let m = p[1].measured.as_ref().unwrap();
        assert_eq!(m.canary_error_rate, Some(0.25));
        assert_eq!(m.stable_error_rate, None);
        assert_eq!(m.canary_p99_ms, Some(12.5));
        assert_eq!(m.requests, (8, 0));
    }
}
