//! Typed views of runs for the front ends: one run with everything `status` shows, the
//! history, and a run's journal (followed live until the run ends).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use slipway_engine::event::{EngineEvent, Notice};
use slipway_engine::store::{RunRecord, StepRecord};
use slipway_engine::{StepStatus, Store};
use slipway_model::plan::Plan;
use slipway_providers::compose::ServiceTraffic;

use crate::error::{OpsError, OpsResult};
use crate::runs::{load_run, plan_of};
use crate::session::Session;

/// Everything `status` shows about one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunView {
    /// The run record.
    pub run: RunRecord,
    /// Steps the plan has.
    pub steps_total: usize,
    /// Steps that succeeded.
    pub steps_succeeded: usize,
    /// Each step's record, in the plan's (execution) order.
    pub steps: Vec<StepRecord>,
    /// Whether a live process drives the run now (holds its claim); `None` once the run
    /// is over. `false` for a run that is not over means nothing moves it on: its driver
    /// was killed or it waits for a person — `resume` continues it.
    pub driven: Option<bool>,
    /// Approvals required and given.
    pub approvals: ApprovalsView,
    /// Config files the run rendered (digests and secret names, no values).
    pub config: Vec<serde_json::Value>,
    /// What serves each service of a process-target run now.
    pub traffic: Option<BTreeMap<String, ServiceTraffic>>,
    /// Per ssh host, what each step did.
    pub hosts: Vec<serde_json::Value>,
    /// Hosts where a step failed.
    pub failed_hosts: Vec<String>,
    /// Canary analyses with their measurements.
    pub analysis: Vec<serde_json::Value>,
    /// Where the run's files are (perf baselines and verifications).
    #[serde(skip)]
    pub run_dir: PathBuf,
}

/// Approvals of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApprovalsView {
    /// Required.
    pub required: u32,
    /// Valid approvers (pseudonymous ids).
    pub valid: Vec<String>,
    /// Approvals that do not count, with why.
    pub rejected: Vec<(String, String)>,
}

/// The id of the newest run, for commands whose run defaults to the latest.
pub async fn latest_run(session: &Session) -> OpsResult<String> {
    match session.store.runs(1).await?.into_iter().next() {
        Some(r) => Ok(r.id),
        None => Err(
            OpsError::input("failed to find a run: the store has no runs yet")
                .hint(crate::error::Hint::text("start one with a deploy")),
        ),
    }
}

/// One run as `status` shows it.
pub async fn run(session: &Session, id: &str) -> OpsResult<RunView> {
    let run = load_run(session.store.as_ref(), id).await?;
    let steps = session.store.steps(id).await?;
    // Only a run that is not over can have a driver. The probe takes the claim and lets
    // it go at once when free (a driver starting at that instant retries its claim).
    let driven = if run.state.is_terminal() {
        None
    } else {
        Some(crate::runs::driven(session.store.as_ref(), id).await?)
    };
    // A read: no pseudonym is minted for the reader.
    let engine = crate::runs::engine(session, Path::new(&run.workdir), None, "", None, None);
    let (need, tally) = engine.approvals(id).await?;
    let plan = plan_of(&run);
    let steps = in_plan_order(plan.as_ref(), steps);
    let total = plan.as_ref().map_or(steps.len(), |p| p.steps.len());
    let done = steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .count();
    let traffic = match &plan {
        Some(p) if p.target == "process" => Some(
            slipway_providers::compose::traffic_view(&session.layout, Path::new(&run.workdir), p)
                .await,
        ),
        _ => None,
    };
    let journal = session.store.journal(id, 0).await?;
    Ok(RunView {
        run_dir: session.layout.run(id),
        steps_total: total,
        steps_succeeded: done,
        steps,
        driven,
        approvals: ApprovalsView {
            required: need.required,
            valid: tally.valid,
            rejected: tally.rejected,
        },
        config: rendered_config(&journal),
        traffic,
        hosts: ssh_hosts(&journal),
        failed_hosts: ssh_failed_hosts(&journal),
        analysis: analysis_summary(&journal),
        run,
    })
}

/// Step records in the order the plan executes them (the store keeps them by id, which
/// is alphabetical); records the plan does not name (none, unless the plan is unreadable)
/// follow in the store's order.
pub fn in_plan_order(plan: Option<&Plan>, mut steps: Vec<StepRecord>) -> Vec<StepRecord> {
    let Some(plan) = plan else { return steps };
    let rank: std::collections::HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // Stable: unknown steps keep their relative order after the known ones.
    steps.sort_by_key(|s| rank.get(s.step_id.as_str()).copied().unwrap_or(usize::MAX));
    steps
}

/// The newest runs, newest first.
pub async fn history(session: &Session, limit: u32) -> OpsResult<Vec<RunRecord>> {
    Ok(session.store.runs(limit).await?)
}

/// Read a run's journal after `after`, calling `on` for each entry; with `follow`, keep
/// reading until the run is over. The run must exist.
pub async fn journal(
    session: &Session,
    run: &str,
    follow: bool,
    mut on: impl FnMut(&Notice),
) -> OpsResult<()> {
    load_run(session.store.as_ref(), run).await?;
    let mut after = 0;
    loop {
        let entries = session.store.journal(run, after).await?;
        for n in &entries {
            after = n.seq;
            on(n);
        }
        if !follow {
            return Ok(());
        }
        if entries.is_empty() {
            let r = load_run(session.store.as_ref(), run).await?;
            if r.state.is_terminal() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Per host, what each ssh step did (`ssh_host` progress entries of the journal), in
/// journal order.
pub fn ssh_hosts(journal: &[Notice]) -> Vec<serde_json::Value> {
    journal
        .iter()
        .filter_map(|n| match &n.event {
            EngineEvent::StepProgress { step, detail, .. }
                if detail.get("event").and_then(|e| e.as_str()) == Some("ssh_host") =>
            {
                let mut d = detail.clone();
                if let Some(m) = d.as_object_mut() {
                    m.remove("event");
                    m.insert("step".into(), serde_json::Value::from(step.as_str()));
                }
                Some(d)
            }
            _ => None,
        })
        .collect()
}

/// The ssh hosts where a step failed during the run (those that failed within the
/// failure budget of a succeeded run were left out of its later steps), distinct, in the
/// order they failed.
pub fn ssh_failed_hosts(journal: &[Notice]) -> Vec<String> {
    let mut failed: Vec<String> = Vec::new();
    for h in ssh_hosts(journal) {
        if h["phase"] == "apply"
            && (h["result"] == "failed" || h["result"] == "excluded")
            && let Some(name) = h["host"].as_str()
            && !failed.iter().any(|f| f == name)
        {
            failed.push(name.to_owned());
        }
    }
    failed
}

/// Per step and analysis template, the canary's measurements: how many, by phase, the
/// analysis phase after the last one and the last one's per-metric verdicts (value,
/// threshold, detail and, for Prometheus/HTTP providers, the query sent), so `status`
/// shows what judged the canary without reading the journal.
pub fn analysis_summary(journal: &[Notice]) -> Vec<serde_json::Value> {
    let mut by_key: Vec<(String, String, serde_json::Value)> = Vec::new();
    for n in journal {
        let EngineEvent::StepProgress { step, detail, .. } = &n.event else {
            continue;
        };
        if detail.get("event").and_then(|e| e.as_str()) != Some("measured") {
            continue;
        }
        let template = detail["template"].as_str().unwrap_or_default().to_owned();
        let phase = detail["measurement"]["phase"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let at = match by_key
            .iter()
            .position(|(s, t, _)| s == step && *t == template)
        {
            Some(i) => i,
            None => {
                by_key.push((
                    step.clone(),
                    template.clone(),
                    json!({"step": step, "template": template, "measurements": 0, "by_phase": {}}),
                ));
                by_key.len() - 1
            }
        };
        let entry = &mut by_key[at].2;
        entry["measurements"] = json!(entry["measurements"].as_u64().unwrap_or(0) + 1);
        let count = entry["by_phase"][&phase].as_u64().unwrap_or(0) + 1;
        entry["by_phase"][&phase] = json!(count);
        entry["phase"] = detail["phase"].clone();
        entry["last"] = detail["measurement"]["results"].clone();
    }
    by_key.into_iter().map(|(_, _, v)| v).collect()
}

/// The config files rendered by a run, from its journal's `config_rendered` progress
/// events (the last render of each file wins): digests and secret names, no values.
pub fn rendered_config(journal: &[Notice]) -> Vec<serde_json::Value> {
    let mut by_path = BTreeMap::new();
    for n in journal {
        if let EngineEvent::StepProgress { step, detail, .. } = &n.event
            && detail.get("event").and_then(|e| e.as_str()) == Some("config_rendered")
        {
            for f in detail
                .get("files")
                .and_then(|f| f.as_array())
                .into_iter()
                .flatten()
            {
                let mut f = f.clone();
                if let Some(m) = f.as_object_mut() {
                    m.insert("step".into(), serde_json::Value::from(step.as_str()));
                }
                let path = f
                    .get("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default()
                    .to_owned();
                by_path.insert(path, f);
            }
        }
    }
    by_path.into_values().collect()
}
