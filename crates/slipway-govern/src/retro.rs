//! The retrospective of one run: a timeline from its journal (the same events the audit
//! chain hashes), the analysis measurements its canary took, the anomalies worth a
//! conversation, and action items derived from them.
//!
//! Anomalies and their rules:
//! - **pause**: a pause request or a transition to `paused`;
//! - **retry**: a step started more than once, or observed after a restart;
//! - **slow step**: a step that took at least 10 s and more than three times the median
//!   step of the run (relative, so a slow environment does not flag everything);
//! - **gate blocked**: a gate that held the run, with how long;
//! - **rollback**: with the reason journaled;
//! - **analysis**: failed and inconclusive (insufficient data) measurements.

use slipway_model::analysis::Phase;
use slipway_model::progress::Progress;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use slipway_engine::{EngineEvent, RunState};

use crate::dora::human_secs;
use crate::history::RunHistory;

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// When.
    pub at: Timestamp,
    /// Seconds since the run was created.
    pub offset_seconds: f64,
    /// Pseudonymous actor.
    pub actor: String,
    /// What happened.
    pub what: String,
}

/// Something worth discussing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// `pause`, `retry`, `slow_step`, `gate_blocked`, `rollback`, `analysis`, `failure`.
    pub kind: String,
    /// What, for people.
    pub detail: String,
}

/// The retrospective.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retro {
    /// Run id.
    pub run: String,
    /// `release version → environment`.
    pub title: String,
    /// Final state.
    pub state: String,
    /// Seconds from start to end, if it ended.
    pub duration_seconds: Option<f64>,
    /// Step durations in seconds.
    pub steps: BTreeMap<String, f64>,
    /// Analysis measurements by phase (`successful`, `failed`, `inconclusive`, …).
    pub measurements: BTreeMap<String, u32>,
    /// The timeline.
    pub timeline: Vec<TimelineEntry>,
    /// Anomalies.
    pub anomalies: Vec<Anomaly>,
    /// Action items.
    pub actions: Vec<String>,
}

fn progress_text(step: &str, d: &Value) -> String {
    format!("{step}: {}", Progress::of(d).describe())
}

fn describe(e: &EngineEvent) -> String {
    match e {
        EngineEvent::RunCreated {
            release,
            version,
            environment,
            ..
        } => format!("run created: {release} {version} → {environment}"),
        EngineEvent::DeployRefused { reason, .. } => format!("deploy refused: {reason}"),
        EngineEvent::StateChanged { from, to, reason } => format!(
            "{} → {}{}",
            from.as_str(),
            to.as_str(),
            reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        EngineEvent::GateWaiting { gate, detail, .. } => format!("gate {gate} holds: {detail}"),
        EngineEvent::GatePassed { gate, detail } => format!("gate {gate} passed: {detail}"),
        EngineEvent::Approved { approver, .. } => format!("approved by {approver}"),
        EngineEvent::ControlRequested { control, .. } => {
            format!("{} requested", control.as_str())
        }
        EngineEvent::InterventionRequested { intervention } => {
            format!("{intervention} requested")
        }
        EngineEvent::InterventionSettled { request, outcome } => {
            format!("request #{request} {outcome}")
        }
        // The journal counts waves from 0; people (and `slipway plan`) from 1.
        EngineEvent::WaveStarted { wave, steps } => {
            format!("wave {} started ({steps} steps)", wave + 1)
        }
        EngineEvent::WaveFinished { wave, failed } => {
            format!("wave {} finished ({failed} failed)", wave + 1)
        }
        EngineEvent::StepStarted { step, attempt, .. } => {
            format!("{step}: started (attempt {attempt})")
        }
        EngineEvent::StepObserved { step, evidence, .. } => {
            format!("{step}: observed after restart ({evidence})")
        }
        EngineEvent::StepSucceeded { step, .. } => format!("{step}: succeeded ({})", e.outcome()),
        EngineEvent::StepFailed { step, error, .. } => format!("{step}: failed — {error}"),
        EngineEvent::UndoStarted { step, .. } => format!("{step}: undo started"),
        EngineEvent::UndoSucceeded { step, .. } => format!("{step}: undone"),
        EngineEvent::UndoFailed { step, error, .. } => format!("{step}: undo failed — {error}"),
        EngineEvent::StepProgress { step, detail, .. } => progress_text(step, detail),
        EngineEvent::CheckRan {
            name,
            passed,
            measured,
            expected,
            ..
        } => format!(
            "check {name} {}: measured {measured}, expected {expected}",
            if *passed { "passed" } else { "failed" }
        ),
        EngineEvent::CheckSkipped { name, reason, .. } => {
            format!("check {name} skipped: {reason}")
        }
        EngineEvent::Governance { action, .. } => {
            format!("governance: {}", action.replace('_', " "))
        }
        EngineEvent::WaiverApplied {
            finding,
            reason,
            by,
            ..
        } => format!("compatibility finding {finding} waived by {by}: {reason}"),
    }
}

/// Build the retrospective of a run.
pub fn build(run: &RunHistory) -> Retro {
    let r = &run.record;
    let created = r.created_at;
    let timeline = run
        .journal
        .iter()
        .map(|n| TimelineEntry {
            at: n.at,
            offset_seconds: n.at.duration_since(created).as_secs_f64(),
            actor: n.actor.clone(),
            what: describe(&n.event),
        })
        .collect();

    let mut anomalies = Vec::new();
    let mut actions = Vec::new();
    let mut started: BTreeMap<&str, Timestamp> = BTreeMap::new();
    let mut steps = BTreeMap::new();
    let mut measurements: BTreeMap<String, u32> = BTreeMap::new();
    let mut gate_since: BTreeMap<&str, (Timestamp, String)> = BTreeMap::new();
    let mut inconclusive_detail = None;
    for n in &run.journal {
        match &n.event {
            EngineEvent::StepStarted { step, attempt, .. } => {
                started.entry(step).or_insert(n.at);
                if *attempt > 1 {
                    anomalies.push(Anomaly {
                        kind: "retry".into(),
                        detail: format!("{step} was started {attempt} times"),
                    });
                }
            }
            EngineEvent::StepObserved { step, evidence, .. } => anomalies.push(Anomaly {
                kind: "retry".into(),
                detail: format!(
                    "{step} was found unfinished after a restart and observed: {evidence}"
                ),
            }),
            EngineEvent::StepSucceeded { step, .. } | EngineEvent::StepFailed { step, .. } => {
                if let Some(s) = started.get(step.as_str()) {
                    steps.insert(step.clone(), n.at.duration_since(*s).as_secs_f64());
                }
            }
            EngineEvent::ControlRequested { control, .. } => anomalies.push(Anomaly {
                kind: "pause".into(),
                detail: format!("{} requested by {}", control.as_str(), n.actor),
            }),
            EngineEvent::StateChanged {
                to: RunState::Paused,
                ..
            } => anomalies.push(Anomaly {
                kind: "pause".into(),
                detail: format!("the run paused at {}", n.at),
            }),
            EngineEvent::StateChanged {
                to: RunState::RollingBack,
                reason,
                ..
            } => anomalies.push(Anomaly {
                kind: "rollback".into(),
                detail: reason
                    .clone()
                    .unwrap_or_else(|| "no reason journaled".into()),
            }),
            EngineEvent::GateWaiting { gate, detail, .. } => {
                gate_since
                    .entry(gate)
                    .or_insert_with(|| (n.at, detail.clone()));
            }
            EngineEvent::GatePassed { gate, .. } => {
                if let Some((since, detail)) = gate_since.remove(gate.as_str()) {
                    anomalies.push(Anomaly {
                        kind: "gate_blocked".into(),
                        detail: format!(
                            "gate {gate} held the run for {}: {detail}",
                            human_secs(n.at.duration_since(since).as_secs_f64())
                        ),
                    });
                }
            }
            EngineEvent::UndoFailed { step, error, .. } => {
                anomalies.push(Anomaly {
                    kind: "failure".into(),
                    detail: format!("undo of {step} failed: {error}"),
                });
                actions.push(format!(
                    "Fix the undo of {step} and rehearse it: a rollback left it in place"
                ));
            }
            EngineEvent::StepProgress { detail, .. } => {
                let progress = Progress::of(detail);
                let Some((_, m, _)) = progress.measured() else {
                    continue;
                };
                if m.phase == Phase::Inconclusive && inconclusive_detail.is_none() {
                    inconclusive_detail = m.results.first().map(|r| r.detail.clone());
                }
                let phase = serde_json::to_value(m.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                *measurements.entry(phase).or_default() += 1;
            }
            _ => {}
        }
    }
    for (gate, (since, detail)) in gate_since {
        anomalies.push(Anomaly {
            kind: "gate_blocked".into(),
            detail: format!("gate {gate} still holds the run since {since}: {detail}"),
        });
    }
    let mut durations: Vec<f64> = steps.values().copied().collect();
    durations.sort_by(f64::total_cmp);
    let median = durations.get(durations.len() / 2).copied().unwrap_or(0.0);
    for (step, d) in &steps {
        if *d >= 10.0 && durations.len() > 1 && *d > 3.0 * median {
            anomalies.push(Anomaly {
                kind: "slow_step".into(),
                detail: format!(
                    "{step} took {} (median step {})",
                    human_secs(*d),
                    human_secs(median)
                ),
            });
            actions.push(format!(
                "Find out why {step} is slow, or give it a timeout that says so"
            ));
        }
    }
    let failed = measurements.get("failed").copied().unwrap_or(0);
    let inconclusive = measurements.get("inconclusive").copied().unwrap_or(0);
    if failed > 0 || inconclusive > 0 {
        anomalies.push(Anomaly {
            kind: "analysis".into(),
            detail: format!(
                "{failed} failed and {inconclusive} inconclusive analysis measurements"
            ),
        });
    }
    if inconclusive > 0 {
        actions.push(format!(
            "Canary analysis lacked data {inconclusive} time(s) ({}): send more traffic to the canary or lengthen the analysis, so decisions rest on enough samples",
            inconclusive_detail.unwrap_or_else(|| "insufficient data".into())
        ));
    }
    if matches!(r.state, RunState::RolledBack | RunState::Failed) {
        let why = run
            .failure_reason()
            .unwrap_or_else(|| "no reason journaled".into());
        actions.push(format!(
            "Fix the cause before re-releasing {} and add a check that catches it before production: {why}",
            r.version
        ));
    }
    if anomalies.iter().any(|a| a.kind == "gate_blocked") {
        actions.push(
            "Review the gates that held this run: plan approvals and windows ahead of the release"
                .into(),
        );
    }
    if anomalies.iter().any(|a| a.kind == "retry") {
        actions.push(
            "Check why steps had to be retried or recovered; make their effects observable".into(),
        );
    }
    Retro {
        run: r.id.clone(),
        title: format!("{} {} → {}", r.release, r.version, r.environment),
        state: r.state.as_str().to_owned(),
        duration_seconds: run
            .finished_at()
            .map(|f| f.duration_since(run.started_at()).as_secs_f64()),
        steps,
        measurements,
        timeline,
        anomalies,
        actions,
    }
}

/// The retrospective as Markdown.
pub fn render_markdown(r: &Retro) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Retrospective: {}\n", r.title);
    let _ = writeln!(s, "- run: `{}` ({})", r.run, r.state);
    if let Some(d) = r.duration_seconds {
        let _ = writeln!(s, "- duration: {}", human_secs(d));
    }
    for (step, d) in &r.steps {
        let _ = writeln!(s, "- step {step}: {}", human_secs(*d));
    }
    if !r.measurements.is_empty() {
        let m: Vec<String> = r
            .measurements
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let _ = writeln!(s, "- analysis measurements: {}", m.join(", "));
    }
    let _ = writeln!(s, "\n## Timeline\n");
    for t in &r.timeline {
        let _ = writeln!(s, "- +{:.3}s {} — {}", t.offset_seconds, t.actor, t.what);
    }
    let _ = writeln!(s, "\n## Anomalies\n");
    if r.anomalies.is_empty() {
        let _ = writeln!(s, "None.");
    }
    for a in &r.anomalies {
        let _ = writeln!(s, "- **{}**: {}", a.kind, a.detail);
    }
    let _ = writeln!(s, "\n## Action items\n");
    if r.actions.is_empty() {
        let _ = writeln!(s, "None.");
    }
    for a in &r.actions {
        let _ = writeln!(s, "- [ ] {a}");
    }
    s
}
