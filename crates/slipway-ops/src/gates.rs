//! Gates a deploy passes before a run is created, besides the engine's own (windows,
//! freezes, approvals): retrospective checklist items, committed and valid
//! infrastructure, and the readiness checks the spec declares for the environment
//! (reach, TLS, capacity, accounts, monitoring — on every host of an ssh environment).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use slipway_checks::{Outcome, Verdict};
use slipway_model::plan::{GateKind, Plan};
use slipway_model::spec::ChecklistItem;
use slipway_store::checklist::{Ack, ChecklistDb};

use crate::error::{Hint, OpsError, OpsResult};
use crate::events::{OpsEvent, Reporter};
use crate::session::Session;

/// An item's state for one plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemState {
    /// Item id.
    pub id: String,
    /// What it says.
    pub text: String,
    /// `check`, `acknowledged` or `open`.
    pub state: &'static str,
    /// Why.
    pub detail: String,
}

/// The checklist items a plan gates on.
pub fn checklist_items(plan: &Plan) -> Vec<ChecklistItem> {
    plan.gates
        .iter()
        .find_map(|g| match &g.kind {
            GateKind::Checklist { items } => Some(items.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Each checklist item's state for a plan, given the acknowledgements for its release,
/// version and environment.
pub fn checklist_states(plan: &Plan, acks: &[Ack]) -> Vec<ItemState> {
    let planned: Vec<&String> = plan
        .gates
        .iter()
        .filter_map(|g| match &g.kind {
            GateKind::Checks { names, .. } => Some(names),
            _ => None,
        })
        .flatten()
        .collect();
    checklist_items(plan)
        .into_iter()
        .map(|i| {
            let by_check = i.check.as_ref().filter(|c| planned.contains(c));
            let ack = acks.iter().find(|a| a.item == i.id);
            let (state, detail) = match (by_check, ack) {
                (Some(c), _) => ("check", format!("check {c} runs in this plan")),
                (None, Some(a)) => (
                    "acknowledged",
                    format!("by {} at {}: {}", a.acknowledged_by, a.at, a.note),
                ),
                (None, None) => (
                    "open",
                    match &i.check {
                        Some(c) => {
                            format!("check {c} is not run in this environment; acknowledge instead")
                        }
                        None => "needs an acknowledgement for this version and environment".into(),
                    },
                ),
            };
            ItemState {
                id: i.id,
                text: i.text,
                state,
                detail,
            }
        })
        .collect()
}

/// Refuse a deploy while a checklist item of the plan is open (acknowledgements are
/// records of the store, either backend).
pub async fn require_checklist(session: &Session, plan: &Plan) -> OpsResult<()> {
    if checklist_items(plan).is_empty() {
        return Ok(());
    }
    let db = ChecklistDb::for_store(&session.store);
    let acks = db
        .acks(&plan.release.name, &plan.release.version, &plan.environment)
        .await?;
    db.close().await;
    let open: Vec<ItemState> = checklist_states(plan, &acks)
        .into_iter()
        .filter(|s| s.state == "open")
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(OpsError::blocked(format!(
        "failed to deploy: {} checklist item(s) open for {} {} in {}: {}",
        open.len(),
        plan.release.name,
        plan.release.version,
        plan.environment,
        open.iter()
            .map(|s| format!("{} ({}; {})", s.id, s.text, s.detail))
            .collect::<Vec<_>>()
            .join("; ")
    ))
    .hint(Hint::text(format!(
        "do what the item says, then `slipway checklist ack {} -f SPEC --env {} --note \"what was done\"`",
        open[0].id, plan.environment
    ))))
}

/// The infrastructure rows of an environment: each declared path committed and clean, and
/// its validation command passing.
pub async fn infra_rows(
    spec_dir: &Path,
    infra: &slipway_model::spec::Infrastructure,
    timeout: Duration,
) -> Vec<Verdict> {
    let mut rows: Vec<Verdict> = infra
        .paths
        .iter()
        .map(|p| slipway_checks::infra::check_path(spec_dir, p))
        .collect();
    if let Some(cmd) = &infra.validate {
        rows.push(
            slipway_checks::infra::validate(spec_dir, cmd, timeout.max(Duration::from_secs(60)))
                .await,
        );
    }
    rows
}

/// Infrastructure must be committed, clean and valid before anything is touched. The rows
/// are returned to be kept with the run.
pub async fn require_infrastructure(file: &Path, plan: &Plan) -> OpsResult<Option<Vec<Verdict>>> {
    let Some(infra) = &plan.env.infrastructure else {
        return Ok(None);
    };
    let rows = infra_rows(
        crate::planning::spec_dir(file),
        infra,
        Duration::from_secs(60),
    )
    .await;
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.verdict == Outcome::Fail)
        .map(|r| format!("{}: {} (expected {})", r.target, r.measured, r.expected))
        .collect();
    if !bad.is_empty() {
        return Err(OpsError::blocked(format!(
            "failed to deploy: the environment's infrastructure is not ready: {}",
            bad.join("; ")
        ))
        .hint(Hint::text(
            "commit the infrastructure files and make the validation pass",
        ))
        .hint(Hint::Check {
            file: file.to_path_buf(),
            environment: plan.environment.clone(),
            only: "infra".into(),
        }));
    }
    Ok(Some(rows))
}

/// The readiness gate of a plan: which kinds run and which only warn.
pub fn readiness_gate(
    plan: &Plan,
) -> Option<(
    Vec<slipway_model::readiness::ReadinessCheck>,
    Vec<slipway_model::readiness::ReadinessCheck>,
)> {
    plan.gates.iter().find_map(|g| match &g.kind {
        GateKind::Readiness { checks, advisory } => Some((checks.clone(), advisory.clone())),
        _ => None,
    })
}

/// The rows of a readiness run that block: failures of kinds not advisory here.
pub fn blocking_rows<'a>(
    rows: &'a [Verdict],
    advisory: &[slipway_model::readiness::ReadinessCheck],
) -> Vec<&'a Verdict> {
    rows.iter()
        .filter(|r| r.verdict == Outcome::Fail)
        .filter(|r| {
            slipway_model::readiness::ReadinessCheck::of_row(&r.check)
                .is_none_or(|k| !advisory.contains(&k))
        })
        .collect()
}

/// Run the plan's readiness checks before anything is touched — on this machine, or on
/// every host over the deploy's own sessions — and refuse the deploy (blocked, no run
/// created) when one that is not advisory fails. The rows are reported (the front end
/// shows the table either way) and returned to be kept with the run.
pub async fn require_readiness(
    session: &Session,
    plan: &Plan,
    file: &Path,
    workdir: &Path,
    ssh: Option<&slipway_providers::ssh::SshTarget>,
    reporter: &dyn Reporter,
) -> OpsResult<Vec<Verdict>> {
    let Some((_, advisory)) = readiness_gate(plan) else {
        return Ok(Vec::new());
    };
    let running =
        crate::deployed::running_versions(session.store.as_ref(), &plan.environment, None)
            .await?
            .into_iter()
            .map(|(s, (v, _))| (s, v))
            .collect();
    let rows = slipway_providers::readiness::Readiness::new(
        plan,
        crate::planning::spec_dir(file),
        workdir,
    )
    .with_running(running)
    .run(ssh)
    .await;
    reporter.report(OpsEvent::Readiness {
        rows: rows.clone(),
        advisory: advisory.clone(),
    });
    let blocking = blocking_rows(&rows, &advisory);
    if blocking.is_empty() {
        return Ok(rows);
    }
    let named: Vec<String> = blocking
        .iter()
        .map(|r| {
            let on = r
                .host
                .as_ref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default();
            format!(
                "{} {}{on}: {} (expected {})",
                r.check, r.target, r.measured, r.expected
            )
        })
        .collect();
    Err(OpsError::blocked(format!(
        "failed to deploy: {} readiness check(s) failed before the first wave, no run was started: {}",
        blocking.len(),
        named.join("; ")
    ))
    .hint(Hint::text(
        "fix what each row says (or mark the kind advisory there: `environments.ENV.advisory_checks`), then deploy again",
    ))
    .hint(Hint::Check {
        file: file.to_path_buf(),
        environment: plan.environment.clone(),
        only: slipway_model::readiness::ReadinessCheck::of_row(&blocking[0].check)
            .map_or("reach", |k| k.as_str())
            .to_owned(),
    }))
}

/// The readiness rows of a plan as `slipway check` shows them (no gate: every row is
/// shown, nothing refused): on this machine, or on every host of an ssh environment.
/// What runs there now comes from the store `store` names, when it exists (never created
/// here).
pub async fn check_readiness(
    store: Option<&str>,
    file: &Path,
    plan: &Plan,
    only: Option<slipway_model::readiness::ReadinessCheck>,
    timeout: Duration,
) -> OpsResult<Vec<Verdict>> {
    let running = match crate::session::layout_for(store) {
        Some((slipway_store::StoreLocation::Sqlite(db), _)) if !db.exists() => BTreeMap::new(),
        None => BTreeMap::new(),
        Some((loc, _)) => {
            let opened = slipway_store::open(&loc).await?;
            crate::deployed::running_versions(&opened, &plan.environment, None)
                .await?
                .into_iter()
                .map(|(s, (v, _))| (s, v))
                .collect()
        }
    };
    let spec_dir = crate::planning::spec_dir(file);
    let readiness = slipway_providers::readiness::Readiness::new(plan, spec_dir, spec_dir)
        .with_running(running)
        .with_timeout(timeout)
        .only(only);
    if plan.env.target.ssh.is_none() {
        return Ok(readiness.run(None).await);
    }
    let redactor = slipway_providers::config::plan_redactor(plan, spec_dir);
    let target = slipway_providers::compose::ssh_target(plan, spec_dir, redactor)
        .map_err(|e| OpsError::input(format!("failed to check: {e}")))?;
    let rows = readiness.run(Some(&target)).await;
    target.close_all().await;
    Ok(rows)
}

/// The environment's declared checks (all but `perf`) as `slipway check` shows them: run
/// now, from this machine, addresses filled with secret variables resolved (and masked in
/// the rows); `sql` and `consistency` checks on PostgreSQL or SQLite.
pub async fn declared_check_rows(
    file: &Path,
    plan: &Plan,
    base: Option<&str>,
    timeout: Duration,
) -> Vec<Verdict> {
    let spec_dir = crate::planning::spec_dir(file);
    let vars = slipway_providers::readiness::PlanVars::resolve(plan, spec_dir);
    let workdir = crate::planning::canonical_spec_dir(file);
    let mut rows = Vec::new();
    for (name, c) in plan.checks.iter().filter(|(_, c)| c.perf.is_none()) {
        rows.push(
            slipway_providers::checks::run_declared(
                name,
                c,
                &vars,
                base,
                timeout,
                Some(&workdir.to_string_lossy()),
            )
            .await,
        );
    }
    rows
}
