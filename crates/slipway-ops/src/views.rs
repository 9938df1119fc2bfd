//! Typed views of runs for the front ends: one run with everything `status` shows, the
//! history, and a run's journal (followed live until the run ends).

use slipway_model::progress::{Progress, StepEvent};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use slipway_engine::event::Notice;
use slipway_engine::store::{RunRecord, StepRecord};
use slipway_engine::{StepStatus, Store};
use slipway_govern::access::Role;
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
    /// The version each service of the release is on, as this run's records say.
    pub services: BTreeMap<String, ServiceVersion>,
    /// Reviews after the fact of this release not completed yet (this run's included),
    /// each with its state (`open` or `overdue`).
    pub open_reviews: Vec<serde_json::Value>,
    /// Where the run's files are (perf baselines and verifications).
    #[serde(skip)]
    pub run_dir: PathBuf,
}

/// The version one service is on, as a run's step records say: the run's version when
/// its steps completed (and were not undone), else the version before the run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceVersion {
    /// The version the records say it is on (`None`: nothing served before this run and
    /// its steps did not complete).
    pub version: Option<String>,
    /// The version this run deploys.
    pub target: String,
    /// The version before this run, when known.
    pub previous: Option<String>,
    /// `deployed` (this run's version is in place), `not_deployed` (never started, failed,
    /// skipped or undone: the previous version stays), `in_progress` (a step runs or is
    /// interrupted: a canary may take part of the traffic) or `partial` (some of its
    /// steps are applied, others not: check it by hand).
    pub state: &'static str,
}

/// What the store records each service of `run`'s environment was on before the run: for
/// each service, its version in the newest earlier run there that left it deployed.
pub async fn versions_before(
    store: &dyn Store,
    run: &RunRecord,
) -> OpsResult<BTreeMap<String, String>> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for r in store.runs(500).await? {
        if r.environment != run.environment || r.created_at >= run.created_at || r.id == run.id {
            continue;
        }
        // Listings leave the plan out: read the run whole.
        let Some(r) = store.run(&r.id).await? else {
            continue;
        };
        let Some(plan) = plan_of(&r) else { continue };
        let steps = store.steps(&r.id).await?;
        let journal = store.journal(&r.id, 0).await?;
        for (service, v) in service_versions(&plan, &steps, &journal, &BTreeMap::new()) {
            if v.state == "deployed" {
                found.entry(service).or_insert(v.target);
            }
        }
    }
    Ok(found)
}

/// The version each service of a run is on (see [`ServiceVersion`]). `before` is what the
/// store records the services were on before the run ([`versions_before`]); the run's own
/// record of what a deploy replaced, and the spec's `deployed`, are used first and last.
pub fn service_versions(
    plan: &slipway_model::plan::Plan,
    steps: &[StepRecord],
    journal: &[Notice],
    before: &BTreeMap<String, String>,
) -> BTreeMap<String, ServiceVersion> {
    use slipway_model::plan::StepAction;
    let mut out = BTreeMap::new();
    let status = |id: &str| steps.iter().find(|r| r.step_id == id).map(|r| r.status);
    for (service, svc) in &plan.services {
        let own: Vec<_> = plan
            .steps
            .iter()
            .filter(|s| &s.service == service)
            .collect();
        // Migrations, artifact checks and config renders are not what serves.
        let decisive: Vec<_> = own
            .iter()
            .filter(|s| matches!(s.action, StepAction::Deploy { .. } | StepAction::Exec(_)))
            .collect();
        let decisive = if decisive.is_empty() {
            own.clone()
        } else {
            decisive.into_iter().copied().collect()
        };
        if decisive.is_empty() {
            continue;
        }
        let target = decisive
            .iter()
            .find_map(|s| match &s.action {
                StepAction::Deploy { version, .. } => Some(version.clone()),
                _ => None,
            })
            .or_else(|| svc.version.clone())
            .unwrap_or_else(|| plan.release.version.clone());
        let replaced = journal
            .iter()
            .rev()
            .find_map(|n| match n.event.progress()? {
                (step, Progress::Step(StepEvent::Replaces { previous, .. }))
                    if decisive.iter().any(|s| s.id == step) =>
                {
                    Some(previous)
                }
                _ => None,
            });
        let previous = replaced.unwrap_or_else(|| {
            before
                .get(service)
                .or_else(|| plan.env.deployed.get(service))
                .cloned()
        });
        let states: Vec<Option<StepStatus>> = decisive.iter().map(|s| status(&s.id)).collect();
        let applied = |st: &Option<StepStatus>| {
            matches!(
                st,
                Some(StepStatus::Succeeded | StepStatus::UndoFailed | StepStatus::UndoStarted)
            )
        };
        let (version, state) = if states.iter().all(applied) {
            (Some(target.clone()), "deployed")
        } else if states
            .iter()
            .any(|st| matches!(st, Some(StepStatus::Started)))
        {
            (previous.clone(), "in_progress")
        } else if states.iter().any(applied) {
            (None, "partial")
        } else {
            (previous.clone(), "not_deployed")
        };
        out.insert(
            service.clone(),
            ServiceVersion {
                version,
                target,
                previous,
                state,
            },
        );
    }
    out
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

/// The id of the newest run the actor may read, for commands whose run defaults to the
/// latest.
pub async fn latest_run(session: &Session) -> OpsResult<String> {
    match history(session, 1).await?.into_iter().next() {
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
    crate::access::require(session, Role::Viewer, "read runs", &run.environment).await?;
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
        Some(p) if p.target == slipway_model::spec::TargetKind::Process => Some(
            slipway_providers::compose::traffic_view(&session.layout, Path::new(&run.workdir), p)
                .await,
        ),
        _ => None,
    };
    let journal = session.store.journal(id, 0).await?;
    let before = versions_before(session.store.as_ref(), &run).await?;
    let services = plan
        .as_ref()
        .map(|p| service_versions(p, &steps, &journal, &before))
        .unwrap_or_default();
    let now = slipway_stdx::now();
    let open_reviews = crate::review::list(session.store.as_ref())
        .await?
        .into_iter()
        .filter(|r| r.release == run.release && r.state(now) != "done")
        .map(|r| {
            let state = r.state(now);
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["state"] = state.into();
            v
        })
        .collect();
    Ok(RunView {
        open_reviews,
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
        services,
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

/// The newest runs the actor may read, newest first.
pub async fn history(session: &Session, limit: u32) -> OpsResult<Vec<RunRecord>> {
    let may_read = crate::access::readable(session).await?;
    let mut runs = session.store.runs(limit).await?;
    runs.retain(|r| may_read(&r.environment));
    Ok(runs)
}

/// Read a run's journal after `after`, calling `on` for each entry; with `follow`, keep
/// reading until the run is over. The run must exist.
pub async fn journal(
    session: &Session,
    run: &str,
    follow: bool,
    mut on: impl FnMut(&Notice),
) -> OpsResult<()> {
    let r = load_run(session.store.as_ref(), run).await?;
    crate::access::require(session, Role::Viewer, "read runs", &r.environment).await?;
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
        .filter_map(|n| match n.event.progress()? {
            (step, Progress::Step(StepEvent::SshHost(h))) => {
                let mut d = serde_json::to_value(h).ok()?;
                if let Some(m) = d.as_object_mut() {
                    m.insert("step".into(), serde_json::Value::from(step));
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
        let Some((step, progress)) = n.event.progress() else {
            continue;
        };
        let Some((template, measurement, after)) = progress.measured() else {
            continue;
        };
        let (step, template) = (step.to_owned(), template.to_owned());
        let phase = json!(measurement.phase).as_str().unwrap_or("?").to_owned();
        let at = match by_key
            .iter()
            .position(|(s, t, _)| *s == step && *t == template)
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
        entry["phase"] = json!(after);
        entry["last"] = json!(measurement.results);
    }
    by_key.into_iter().map(|(_, _, v)| v).collect()
}

/// The config files rendered by a run, from its journal's `config_rendered` progress
/// events (the last render of each file wins): digests and secret names, no values.
pub fn rendered_config(journal: &[Notice]) -> Vec<serde_json::Value> {
    let mut by_path = BTreeMap::new();
    for n in journal {
        if let Some((step, Progress::Step(StepEvent::ConfigRendered { files, .. }))) =
            n.event.progress()
        {
            for f in files {
                let mut f = f.clone();
                if let Some(m) = f.as_object_mut() {
                    m.insert("step".into(), serde_json::Value::from(step));
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

/// A service a plan deploys, against what runs there now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// The service.
    pub service: String,
    /// The version running now (from the store's history), if any.
    pub running: Option<String>,
    /// The version the plan deploys.
    pub planned: String,
    /// The run that put the running version there.
    pub run: Option<String>,
}

/// The plan a run executes, as its approvers review it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlanOfRun {
    /// The run.
    pub run: String,
    /// Its state.
    pub state: slipway_engine::RunState,
    /// The plan its approvals are bound to (by digest).
    pub plan: slipway_model::plan::Plan,
    /// What it changes against what runs now.
    pub changes: Vec<Change>,
}

/// The plan a run executes and what it changes against what runs in its environment now
/// (the newest succeeded run of each service there, from the store's history).
pub async fn plan_of_run(session: &Session, id: &str) -> OpsResult<PlanOfRun> {
    let run = load_run(session.store.as_ref(), id).await?;
    crate::access::require(session, Role::Viewer, "read runs", &run.environment).await?;
    let plan = plan_of(&run).ok_or_else(|| {
        OpsError::new(
            crate::error::ErrorKind::Evidence,
            format!("failed to read the plan of run {id}: it does not parse"),
        )
    })?;
    let current = running_versions(session, &run.environment, Some(id)).await?;
    let mut changes = Vec::new();
    for (service, version) in crate::deployed::planned_versions(&plan) {
        let now = current.get(&service);
        changes.push(Change {
            running: now.map(|(v, _)| v.clone()),
            run: now.map(|(_, r)| r.clone()),
            planned: version,
            service,
        });
    }
    Ok(PlanOfRun {
        run: run.id.clone(),
        state: run.state,
        plan,
        changes,
    })
}

/// Per service, the version the newest succeeded run in `environment` deployed and that
/// run's id (runs other than `except`).
pub async fn running_versions(
    session: &Session,
    environment: &str,
    except: Option<&str>,
) -> OpsResult<BTreeMap<String, (String, String)>> {
    crate::deployed::running_versions(session.store.as_ref(), environment, except).await
}
