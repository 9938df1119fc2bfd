//! Operations on runs: start a deploy, drive a run (lease, notifications, engine), resume,
//! promote, pause, abort (retiring a paused canary first), roll back and approve.
//!
//! Every run is driven through [`drive`], so each drive takes the environment's lease,
//! delivers notifications and reports progress the same way, whichever operation started
//! it. A live canary hears humans from other processes and machines sharing the store:
//! pause and abort through the run's control request, resume and promote through journaled
//! requests its driver polls (`slipway_providers::interventions`). When nobody drives the run (paused, or its
//! driver died), resume and promote drive it here, and abort first takes a paused canary
//! out of service.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_engine::event::{Control, EngineEvent, Notice, RunState};
use slipway_engine::store::RunRecord;
use slipway_engine::{DriveOptions, DriveOutcome, Engine, NewRunRequest, Store, StoreError};
use slipway_govern::access::Role;
use slipway_model::plan::Plan;
use slipway_providers::compose::{RunSecrets, RunWiring};
use slipway_providers::deploy::DeployTarget;
use slipway_providers::interventions;
use slipway_providers::ssh::SshTarget;
use slipway_rollout::Intervention;

use crate::error::{Hint, OpsError, OpsResult, RunAction};
use crate::events::{OpsEvent, Reporter};
use crate::lease;
use crate::notify::Notifications;
use crate::planning::Planned;
use crate::session::Session;

/// How a drive ended, with what the caller shows.
#[derive(Debug, Clone)]
pub struct DriveReport {
    /// The run.
    pub run: String,
    /// The engine's outcome.
    pub outcome: DriveOutcome,
    /// The drive continued an existing run.
    pub continued: bool,
    /// Why the run is where it is (its latest state change's reason), unless it succeeded.
    pub reason: Option<String>,
    /// Hosts that failed within the failure budget of a succeeded run.
    pub failed_hosts: Vec<String>,
    /// Services a succeeded run did not deploy (failed within the failure budget, or not
    /// started because a service they depend on is not deployed): a partial success.
    pub not_deployed: Vec<String>,
}

/// Options of a drive.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriveRequest {
    /// Return at a window or approvals gate instead of waiting.
    pub no_wait: bool,
    /// Wait while another release holds the environment's lease instead of being refused.
    pub wait_for_lease: bool,
}

/// A deploy to start.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The spec file the plan was made from.
    pub file: PathBuf,
    /// Return the run id at once; a child process drives the run.
    pub detach: bool,
    /// Drive options.
    pub drive: DriveRequest,
    /// Deploy inside a freeze, for this reason (a second person must then approve).
    pub override_freeze: Option<String>,
}

/// Parts of a run's world a caller provides instead of the composed ones: the demo drives
/// its canaries through in-process proxies it watches live.
#[derive(Default)]
pub struct Overrides {
    /// The deploy target of the process target's deploy steps.
    pub deploy: Option<Arc<DeployTarget>>,
}

/// How a deploy started.
#[derive(Debug, Clone)]
pub enum DeployStarted {
    /// A background driver took the run.
    Detached {
        /// The run.
        run: String,
        /// It continues an unfinished run of the same plan.
        continued: bool,
    },
    /// The run was driven here.
    Driven(DriveReport),
}

/// A request handed to the live driver of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivered {
    /// The run.
    pub run: String,
    /// `resume` or `promote`.
    pub requested: String,
    /// The run's state when the request was left.
    pub state: RunState,
}

/// What resume or promote did.
#[derive(Debug, Clone)]
pub enum Handled {
    /// A live driver got the request.
    Delivered(Delivered),
    /// Nobody drove the run: it was driven here.
    Driven(DriveReport),
}

/// The engine of a run, over everything [`RunWiring`] composes. The one place an engine
/// is made besides the demo's override (see [`Session::engine_with`]).
pub(crate) fn engine(
    session: &Session,
    workdir: &Path,
    plan: Option<&Plan>,
    actor: &str,
    deploy: Option<Arc<DeployTarget>>,
    ssh: Option<SshTarget>,
) -> Engine {
    let secrets = RunSecrets::resolve(plan, |k| std::env::var(k).ok());
    let wiring = RunWiring {
        layout: &session.layout,
        workdir,
        plan,
        secrets: &secrets,
        actor,
        store: Some(session.dyn_store()),
    };
    let target = wiring.target(deploy, ssh);
    Engine::new(
        session.dyn_store(),
        target,
        Arc::new(slipway_engine::SystemClock),
    )
    .with_checks(wiring.checks())
}

/// The deploy target of a process-target plan (proxies found or started), `None` for other
/// targets.
async fn deploy_target(
    session: &Session,
    workdir: &Path,
    plan: Option<&Plan>,
    reporter: &dyn Reporter,
) -> OpsResult<Option<Arc<DeployTarget>>> {
    let secrets = RunSecrets::resolve(plan, |k| std::env::var(k).ok());
    let wiring = RunWiring {
        layout: &session.layout,
        workdir,
        plan,
        secrets: &secrets,
        actor: "",
        store: None,
    };
    let exe = std::env::current_exe()
        .map_err(|e| OpsError::internal(format!("failed to find the slipway binary: {e}")))?;
    let mut notes = Vec::new();
    let built = wiring
        .process_deploy(
            session.dyn_store(),
            vec![exe.into_os_string(), "proxy".into(), "serve".into()],
            &mut notes,
        )
        .await;
    for n in notes {
        reporter.report(OpsEvent::Wiring(n));
    }
    built.map_err(|e| {
        let err = if e.input {
            OpsError::input(format!("cannot deploy: {}", e.message))
        } else {
            OpsError::failure(format!("failed to deploy: {}", e.message))
        };
        match e.fix {
            Some(fix) => err.hint(Hint::text(fix)),
            None => err,
        }
    })
}

/// A run by id.
pub async fn load_run(store: &dyn Store, id: &str) -> OpsResult<RunRecord> {
    store
        .run(id)
        .await?
        .ok_or_else(|| StoreError::NoSuchRun(id.to_owned()).into())
}

/// The plan a run executes, when it can be read.
pub fn plan_of(run: &RunRecord) -> Option<Plan> {
    serde_json::from_str(&run.plan_json).ok()
}

/// Whether a live process drives the run now (holds its claim).
pub async fn driven(store: &dyn Store, run: &str) -> OpsResult<bool> {
    Ok(store.driven(run).await?)
}

/// Why the run is where it is: the reason of its latest state change that gave one.
pub async fn last_reason(store: &dyn Store, run: &str) -> Option<String> {
    let journal = store.journal(run, 0).await.ok()?;
    journal.iter().rev().find_map(|n| match &n.event {
        EngineEvent::StateChanged {
            reason: Some(r), ..
        } => Some(r.clone()),
        _ => None,
    })
}

/// Record kind of the readiness rows a deploy's gate measured before its run (key: the run).
pub const READINESS: &str = "readiness";

/// Keep the readiness rows measured before run `run` as a governance record.
async fn record_readiness<T: serde::Serialize>(
    session: &Session,
    run: &str,
    plan: &slipway_model::plan::Plan,
    actor: &str,
    rows: &[T],
) -> OpsResult<()> {
    use slipway_engine::Store as _;
    let data = serde_json::json!({
        "run": run,
        "environment": plan.environment,
        "plan": plan.digest,
        "rows": rows,
    });
    session
        .store
        .append_governance(vec![slipway_engine::store::GovernanceRecord {
            kind: READINESS.to_owned(),
            key: slipway_engine::store::RecordKey::Given(run.to_owned()),
            data: Some(data),
            action: "readiness_recorded".to_owned(),
            summary: serde_json::json!({"run": run, "environment": plan.environment,
                "rows": rows.len()}),
            actor: actor.to_owned(),
            at: slipway_stdx::now(),
            if_seq: None,
        }])
        .await?;
    Ok(())
}

/// Start a deploy of a planned spec: refuse blocking findings, check access, the
/// checklist and the infrastructure, refuse early when another release holds the
/// environment, check every ssh host, create (or continue) the run, and drive it here or
/// in a background process.
pub async fn deploy(
    session: &Session,
    planned: &Planned,
    req: DeployRequest,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<DeployStarted> {
    deploy_with(session, planned, req, reporter, Overrides::default()).await
}

/// [`deploy`] with parts of the run's world provided by the caller.
pub async fn deploy_with(
    session: &Session,
    planned: &Planned,
    req: DeployRequest,
    reporter: Arc<dyn Reporter>,
    overrides: Overrides,
) -> OpsResult<DeployStarted> {
    let plan = &planned.plan;
    let blocking = crate::planning::blocking(plan);
    if !blocking.is_empty() {
        let msgs: Vec<String> = blocking
            .iter()
            .map(|f| format!("{}: {}", f.code, f.message))
            .collect();
        return Err(OpsError::blocked(format!(
            "failed to deploy: the plan has blocking findings: {}",
            msgs.join("; ")
        ))
        .hint(Hint::ShowPlan {
            file: req.file.clone(),
            environment: plan.environment.clone(),
        }));
    }
    // Unreachable through planning (a `target-unavailable` finding blocks above); kept so
    // that no later change to the findings can start a run on a target without code.
    if !crate::planning::DEPLOYABLE_TARGETS.contains(&plan.target) {
        return Err(OpsError::input(format!(
            "failed to deploy: the `{}` target is not available in this build",
            plan.target
        ))
        .hint(Hint::text(
            "use `target: { exec: {} }` or `target: { process: {} }` for this environment",
        )));
    }
    let spec_dir = crate::planning::canonical_spec_dir(&req.file);
    let workdir = match plan
        .env
        .target
        .exec
        .as_ref()
        .and_then(|e| e.workdir.as_ref())
    {
        Some(w) => spec_dir.join(w),
        None => spec_dir,
    };
    crate::access::require(session, Role::Deployer, "deploy", &plan.environment).await?;
    crate::gates::require_checklist(session, plan).await?;
    // Asked again now, not trusted from when the plan was made.
    crate::change::require_approved(plan).await?;
    let infra = crate::gates::require_infrastructure(&req.file, plan).await?;
    let author = session.actor_id().await?;
    if !req.drive.wait_for_lease {
        // Refuse before creating a run when another release holds the environment.
        let mine = session
            .store
            .active_run(&plan.digest, &plan.environment)
            .await?
            .map(|r| r.id);
        lease::refuse_if_leased(session.store.as_ref(), &plan.environment, mine.as_deref()).await?;
    }
    let mut checked_ssh = None;
    let readiness;
    if plan.target == slipway_model::spec::TargetKind::Ssh {
        // Every host reachable, its key the recorded one, the key accepted: checked before
        // a run exists, so a refused host key stops the release before any host changed.
        let spec_dir = slipway_providers::compose::spec_dir_of(&workdir, Some(plan));
        let redactor = slipway_providers::config::plan_redactor(plan, &spec_dir);
        let target =
            slipway_providers::compose::ssh_target(plan, &spec_dir, redactor).map_err(|e| {
                OpsError::input(format!("failed to deploy: {e}"))
                    .hint(Hint::text("fix the inventory, then deploy again"))
            })?;
        // Unreachable hosts are tolerated up to the failure budget (`max_failures`).
        match target.check_hosts().await {
            Ok(unreachable) => {
                for u in unreachable {
                    reporter.report(OpsEvent::HostUnreachable(u.to_string()));
                }
            }
            Err(e) => {
                return Err(OpsError::blocked(format!(
                    "failed to deploy: the ssh hosts are not ready, no run was started: {e}"
                ))
                .hint(Hint::text(
                    "fix what each host's message says, then deploy again",
                )));
            }
        }
        // Readiness on every host, over the sessions just opened (no extra login).
        let gate = crate::gates::require_readiness(
            session,
            plan,
            &req.file,
            &workdir,
            Some(&target),
            reporter.as_ref(),
        )
        .await;
        match gate {
            Ok(rows) => readiness = rows,
            Err(e) => {
                target.close_all().await;
                return Err(e);
            }
        }
        if req.detach {
            // The background driver opens its own sessions.
            target.close_all().await;
        } else {
            checked_ssh = Some(target);
        }
    } else {
        readiness = crate::gates::require_readiness(
            session,
            plan,
            &req.file,
            &workdir,
            None,
            reporter.as_ref(),
        )
        .await?;
    }
    let deploy = if let Some(d) = overrides.deploy {
        Some(d)
    } else if req.detach {
        // The background driver finds or starts the proxies itself.
        None
    } else {
        deploy_target(session, &workdir, Some(plan), reporter.as_ref()).await?
    };
    let engine = engine(session, &workdir, Some(plan), &author, deploy, checked_ssh);
    let (run, continued) = engine
        .create_or_continue(NewRunRequest {
            plan: plan.clone(),
            author: author.clone(),
            override_freeze: req.override_freeze.clone(),
            workdir: workdir.to_string_lossy().into_owned(),
        })
        .await?;
    write_version_lock(session, &run.id, planned, &req.file, reporter.as_ref());
    if !readiness.is_empty() {
        // What the readiness checks measured before the run: evidence that the gate passed,
        // so a governance record the audit chain commits to (an edit shows in `audit verify`).
        record_readiness(session, &run.id, plan, &author, &readiness).await?;
    }
    if let Some(rows) = &infra {
        // The digests of the infrastructure the run was made against, kept with it.
        let dir = session.layout.run(&run.id);
        let _ = std::fs::create_dir_all(&dir).and_then(|_| {
            std::fs::write(
                dir.join("infrastructure.json"),
                serde_json::to_vec_pretty(rows).unwrap_or_default(),
            )
        });
    }
    if req.detach {
        spawn_driver(session, &run.id, req.drive)?;
        return Ok(DeployStarted::Detached {
            run: run.id,
            continued,
        });
    }
    if continued {
        reporter.report(OpsEvent::Continuing {
            run: run.id.clone(),
        });
    }
    let report = drive(
        session,
        engine.clone(),
        Driving {
            run: &run,
            plan: Some(plan),
            actor: &author,
            continued,
        },
        req.drive,
        reporter.clone(),
    )
    .await;
    discard_interventions(session, &run.id, reporter.as_ref()).await;
    if let Err(e) = &report
        && !continued
        && e.kind == crate::error::ErrorKind::Blocked
        // Refused at the lease, not found driven by another deploy of this plan (which
        // continued this run and claimed it first: the run is theirs to finish).
        && e
            .hints
            .iter()
            .any(|h| matches!(h, Hint::WaitForLease { .. }))
        && session
            .store
            .run(&run.id)
            .await?
            .is_some_and(|r| r.state == RunState::Pending)
    {
        // Another release took the environment between the early check and the lease: the
        // run this deploy just created must not wait to deploy later over that release.
        engine.request(&run.id, &author, Control::Abort).await?;
        return Err(OpsError::blocked(e.message.clone())
            .hint(Hint::text(format!(
                "run {} was aborted before it started; deploy again once the environment is free",
                run.id
            )))
            .hint(Hint::WaitForLease {
                environment: plan.environment.clone(),
            }));
    }
    report.map(DeployStarted::Driven)
}

/// Start `slipway resume RUN` in the background, in its own process group, with the store
/// in its environment (never argv: a PostgreSQL URL may hold a password, and a command
/// line is readable by every user of the machine).
fn spawn_driver(session: &Session, run: &str, drive: DriveRequest) -> OpsResult<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| OpsError::internal(format!("failed to find the slipway binary: {e}")))?;
    let mut c = slipway_stdx::command(exe);
    c.arg("resume").arg(run);
    c.env("SLIPWAY_STORE", session.store_for_child());
    if drive.no_wait {
        c.arg("--no-wait");
    }
    if drive.wait_for_lease {
        c.arg("--wait");
    }
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    c.spawn()
        .map_err(|e| OpsError::internal(format!("failed to start the background driver: {e}")))?;
    Ok(())
}

/// The versions this run resolved (release services + what runs there), written with the
/// run as `<store dir>/runs/<run>/versions.lock.json`, so "what exactly was deployed beside
/// what" survives the spec changing. Best effort: a run is not refused for it.
fn write_version_lock(
    session: &Session,
    run_id: &str,
    planned: &Planned,
    spec_file: &Path,
    reporter: &dyn Reporter,
) {
    let checks = slipway_package::plan_checks(
        &planned.loaded.spec,
        crate::planning::spec_dir(spec_file),
        &planned.plan.environment,
        &slipway_package::CheckFacts::default(),
    );
    let Some(lock) = checks.lock else {
        return;
    };
    let dir = session.layout.run(run_id);
    let write = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::write(
            dir.join("versions.lock.json"),
            serde_json::to_vec_pretty(&lock).unwrap_or_default(),
        )
    });
    if let Err(e) = write {
        reporter.report(OpsEvent::Warning(format!(
            "could not write the version lock of run {run_id}: {e}"
        )));
    }
}

/// A canary request nobody took while this process drove the run (it came after the
/// canary ended) must not act on a later canary of the run: it is settled `dropped`. A
/// store that refuses the write leaves it pending, said as a warning.
async fn discard_interventions(session: &Session, run: &str, reporter: &dyn Reporter) {
    if let Err(e) = interventions::drop_pending(session.store.as_ref(), run).await {
        reporter.report(OpsEvent::Warning(format!(
            "could not settle the pending resume/promote request of run {run}: {e}; a later canary of this run may act on it"
        )));
    }
}

/// The reporter of one drive: every committed notice goes to the caller and to the
/// notifier.
struct Tee {
    reporter: Arc<dyn Reporter>,
    notify: Notifications,
}

/// Every notice the engine commits goes to the caller and to the run's notification
/// sinks; [`unwatch`] waits for the deliveries once the engine is dropped.
fn watch(
    engine: Engine,
    plan: Option<&Plan>,
    run: &RunRecord,
    reporter: Arc<dyn Reporter>,
    rehearsals: PathBuf,
) -> (Engine, tokio::task::JoinHandle<Tee>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Notice>();
    let store = engine.store().clone();
    let engine = engine.with_notices(tx);
    let tee = Tee {
        reporter,
        notify: Notifications::start(plan, &run.workdir, Some(store), Some(rehearsals)),
    };
    let forward = tokio::spawn(async move {
        while let Some(n) = rx.recv().await {
            tee.notify.send(&n).await;
            tee.reporter.report(OpsEvent::Notice(n));
        }
        tee
    });
    (engine, forward)
}

/// Wait for the notifications of a watched engine (dropped by now) to be delivered.
async fn unwatch(forward: tokio::task::JoinHandle<Tee>, reporter: &dyn Reporter) {
    if let Ok(tee) = forward.await {
        tee.notify.finish(reporter).await;
    }
}

/// Drive a run: take the environment's lease, deliver notifications, drive the engine
/// (reporting every committed entry), give the lease back when the run ends.
/// What one drive is of: the run, its plan, who drives it, and whether the drive continues
/// a run the caller did not just create.
struct Driving<'a> {
    run: &'a RunRecord,
    plan: Option<&'a Plan>,
    actor: &'a str,
    continued: bool,
}

/// Every drive, whichever operation started it (deploy, resume, promote, take over, the
/// background driver) and however it ended, ends the target's connections when done with
/// the run: an ssh target's step helpers and sessions end now, not at this process's exit
/// (where they outlived it by seconds and overlapped the next run's logins) nor, in a
/// server, whenever the engine is dropped.
async fn drive(
    session: &Session,
    engine: Engine,
    d: Driving<'_>,
    req: DriveRequest,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<DriveReport> {
    let target = engine.target().clone();
    let report = drive_engine(session, engine, d, req, reporter).await;
    target.close().await;
    report
}

/// [`drive`] without the close.
async fn drive_engine(
    session: &Session,
    engine: Engine,
    d: Driving<'_>,
    req: DriveRequest,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<DriveReport> {
    let Driving {
        run,
        plan,
        actor,
        continued,
    } = d;
    // Freezes of the admin policy hold every release, including runs planned before the
    // freeze was declared: a run that has not started waits like at any closed gate.
    if let Some(blocked) = policy_freeze(&session.store, run, plan).await? {
        return Ok(DriveReport {
            run: run.id.clone(),
            outcome: blocked,
            continued,
            reason: None,
            failed_hosts: Vec::new(),
            not_deployed: Vec::new(),
        });
    }
    // No two runs deploy to one environment: take its lease before driving.
    let store = engine.store().clone();
    let mut held = lease::take(store.clone(), run, req.wait_for_lease, reporter.as_ref()).await?;
    let (engine, forward) = watch(
        engine,
        plan,
        run,
        reporter.clone(),
        session.layout.rehearsals(),
    );
    let result = tokio::select! {
        r = engine.drive(&run.id, actor, DriveOptions { no_wait: req.no_wait }) => r,
        // Our lease lapsed and another run took the environment: stop at once, as a crash
        // would (the journal makes the run resumable), rather than deploy beside it.
        Ok(other) = &mut held.lost => {
            return Err(OpsError::blocked(format!(
                "failed to keep the lease on `{}`: it lapsed and run `{}` ({}) took it; run {} stopped",
                run.environment, other.holder, other.release, run.id
            ))
            .hint(Hint::text("continue once that release is done"))
            .hint(Hint::Run { action: RunAction::Resume, run: run.id.clone() }));
        }
    };
    drop(engine);
    unwatch(forward, reporter.as_ref()).await;
    let outcome = result?;
    // A finished run gives the environment back, and so does one blocked at a gate
    // (windows, approvals, freezes: nothing of it has started, and waiting for people can
    // take hours); a paused one lets its lease lapse at expiry (resume takes it again if
    // still free).
    if matches!(
        outcome,
        DriveOutcome::Finished(_) | DriveOutcome::Blocked { .. }
    ) {
        held.release().await?;
    } else {
        held.lapse();
    }
    let reason = match &outcome {
        DriveOutcome::Blocked { .. } => None,
        // A success has a reason only when it is partial.
        DriveOutcome::Finished(RunState::Succeeded) => last_reason(store.as_ref(), &run.id)
            .await
            .filter(|r| r.starts_with(slipway_engine::engine::PARTIAL_PREFIX)),
        _ => last_reason(store.as_ref(), &run.id).await,
    };
    // A run that changed production under a `post_review` gate owes a review by another
    // person: opened now, in the store.
    if let (DriveOutcome::Finished(RunState::Succeeded), Some(p)) = (&outcome, plan) {
        match crate::review::open_for(store.as_ref(), run, p).await {
            Ok(Some(r)) => reporter.report(OpsEvent::Warning(format!(
                "a review after the fact is required ({}): another person must complete it by {} with `slipway review complete {} --note …`",
                r.required_by, r.due_at, run.id
            ))),
            Ok(None) => {}
            Err(e) => reporter.report(OpsEvent::Warning(format!(
                "the review after the fact of run {} could not be opened: {}; open it by hand before the next production deploy",
                run.id, e.message
            ))),
        }
    }
    let not_deployed = match (&outcome, plan) {
        (DriveOutcome::Finished(RunState::Succeeded), Some(p)) => {
            let steps = store.steps(&run.id).await?;
            let journal = store.journal(&run.id, 0).await?;
            crate::views::service_versions(p, &steps, &journal, &Default::default())
                .into_iter()
                .filter(|(_, v)| v.state != "deployed")
                .map(|(s, _)| s)
                .collect()
        }
        _ => Vec::new(),
    };
    if let DriveOutcome::Finished(state) = &outcome {
        crate::change::write_back(plan, &run.id, *state, reason.clone(), reporter.as_ref()).await;
    }
    // A run that succeeded with ssh hosts failed within the failure budget exits 0 (as
    // Ansible does within `max_fail_percentage`) but says which hosts were left behind.
    let failed_hosts = match &outcome {
        DriveOutcome::Finished(RunState::Succeeded) => store
            .journal(&run.id, 0)
            .await
            .map(|j| crate::views::ssh_failed_hosts(&j))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // The support team gets the handover pack of a release that is now live.
    if let (DriveOutcome::Finished(RunState::Succeeded), Some(plan)) = (&outcome, plan) {
        crate::notify::deliver_handover(
            store.as_ref(),
            &run.id,
            plan,
            &run.workdir,
            reporter.as_ref(),
        )
        .await;
    }
    Ok(DriveReport {
        run: run.id.clone(),
        outcome,
        continued,
        reason,
        failed_hosts,
        not_deployed,
    })
}

/// The admin policy's freeze in force for a run that has not started yet, as a blocked
/// outcome (unless the run overrides freezes with a reason and a second approver).
async fn policy_freeze(
    store: &slipway_store::AnyStore,
    run: &RunRecord,
    plan: Option<&Plan>,
) -> OpsResult<Option<DriveOutcome>> {
    let not_started = matches!(
        run.state,
        RunState::Pending | RunState::WaitingForWindow | RunState::WaitingForApproval
    );
    let (Some(plan), true, None) = (plan, not_started, &run.override_reason) else {
        return Ok(None);
    };
    let Some(policy) = crate::policy::for_environment(store, &run.environment).await? else {
        return Ok(None);
    };
    let now = slipway_stdx::now();
    for f in &policy.env.freezes {
        if f.allow.contains(&plan.release.release_type) {
            continue;
        }
        let freeze = f.as_freeze();
        if slipway_engine::gates::active_freeze(std::slice::from_ref(&freeze), now)
            .map_err(|e| OpsError::input(format!("failed to read a freeze of the policy: {e}")))?
            .is_some()
        {
            return Ok(Some(DriveOutcome::Blocked {
                gate: "freezes".into(),
                detail: format!(
                    "frozen by {} from {} to {} ({})",
                    policy.source("freezes"),
                    f.from,
                    f.to,
                    f.reason
                ),
                opens_at: None,
            }));
        }
    }
    Ok(None)
}

/// Take over a run whose driver is gone — a server that died (kill -9, a lost host) while
/// it drove the run: drive it here, continuing where the journal says (a canary at its
/// recorded step), as the session's actor (a server's service identity). No role is
/// checked: nobody decides anything new — the run was authorized when it started, and
/// this continues that decision. `None` when there is nothing to take over: the run ended,
/// a person paused it, or a live process still drives it (its claim is held).
pub async fn take_over(
    session: &Session,
    run_id: &str,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<Option<DriveReport>> {
    let run = load_run(session.store.as_ref(), run_id).await?;
    if run.state.is_terminal()
        || run.state == RunState::Paused
        || driven(session.store.as_ref(), &run.id).await?
    {
        return Ok(None);
    }
    let actor = session.actor_id().await?;
    let plan = plan_of(&run);
    let workdir = PathBuf::from(&run.workdir);
    let deploy = deploy_target(session, &workdir, plan.as_ref(), reporter.as_ref()).await?;
    let engine = engine(session, &workdir, plan.as_ref(), &actor, deploy, None);
    let report = drive(
        session,
        engine,
        Driving {
            run: &run,
            plan: plan.as_ref(),
            actor: &actor,
            continued: true,
        },
        DriveRequest {
            no_wait: false,
            wait_for_lease: true,
        },
        reporter.clone(),
    )
    .await;
    discard_interventions(session, &run.id, reporter.as_ref()).await;
    report.map(Some)
}

/// Continue a paused, waiting or interrupted run — or, when another process drives its
/// canary (e.g. in a `pause: manual` step), hand it the resume.
pub async fn resume(
    session: &Session,
    run_id: &str,
    req: DriveRequest,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<Handled> {
    let run = load_run(session.store.as_ref(), run_id).await?;
    crate::access::require(session, Role::Deployer, "resume", &run.environment).await?;
    let actor = session.actor_id().await?;
    let plan = plan_of(&run);
    if plan.as_ref().is_some_and(canary_driven_live)
        && !run.state.is_terminal()
        && driven(session.store.as_ref(), &run.id).await?
    {
        // A live driver: its canary continues.
        return deliver(session, &run, Intervention::Resume, &actor)
            .await
            .map(Handled::Delivered);
    }
    if let Some(p) = plan
        .as_ref()
        .filter(|p| p.target == slipway_model::spec::TargetKind::Ssh)
        && !run.state.is_terminal()
    {
        let spec_dir = slipway_providers::compose::spec_dir_of(Path::new(&run.workdir), Some(p));
        if let Err(why) = slipway_providers::compose::ssh_target(
            p,
            &spec_dir,
            slipway_package::Redactor::default(),
        ) {
            return Err(OpsError::blocked(format!(
                "failed to resume run {}: {why}",
                run.id
            )));
        }
    }
    let workdir = PathBuf::from(&run.workdir);
    let deploy = deploy_target(session, &workdir, plan.as_ref(), reporter.as_ref()).await?;
    let engine = engine(session, &workdir, plan.as_ref(), &actor, deploy, None);
    let report = drive(
        session,
        engine,
        Driving {
            run: &run,
            plan: plan.as_ref(),
            actor: &actor,
            continued: true,
        },
        req,
        reporter.clone(),
    )
    .await;
    discard_interventions(session, &run.id, reporter.as_ref()).await;
    report.map(Handled::Driven)
}

/// Whether a plan's deploys are canaries a live driver takes requests for: the process
/// target's, and a fleet canary's on the ssh target behind HAProxy or nginx.
fn canary_driven_live(p: &Plan) -> bool {
    match p.target {
        slipway_model::spec::TargetKind::Process => true,
        slipway_model::spec::TargetKind::Ssh => {
            p.strategy.canary.is_some()
                && p.services.keys().any(|s| {
                    p.router_of(s)
                        .is_some_and(|r| r.haproxy.is_some() || r.nginx.is_some())
                })
        }
        _ => false,
    }
}

/// Journal a request for the driver of a run's canary, wherever it runs.
async fn deliver(
    session: &Session,
    run: &RunRecord,
    what: Intervention,
    actor: &str,
) -> OpsResult<Delivered> {
    interventions::request(session.store.as_ref(), &run.id, what, actor).await?;
    let name = serde_json::to_value(what)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Delivered {
        run: run.id.clone(),
        requested: name,
        state: run.state,
    })
}

/// The canary of a run becomes the new stable now: handed to its live driver, or — nobody
/// driving — recorded and the run driven here (the deploy step, observed first, finds the
/// canary running and promotes it).
pub async fn promote(
    session: &Session,
    run_id: &str,
    req: DriveRequest,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<Handled> {
    let run = load_run(session.store.as_ref(), run_id).await?;
    crate::access::require(session, Role::Deployer, "promote", &run.environment).await?;
    if run.state.is_terminal() {
        return Err(OpsError::input(format!(
            "failed to promote: run {} is already {}",
            run.id,
            run.state.as_str()
        ))
        .hint(Hint::text("promote a running or paused canary"))
        .hint(Hint::ListRuns));
    }
    let plan = plan_of(&run);
    if !plan
        .as_ref()
        .is_some_and(|p| p.strategy.canary.is_some() && canary_driven_live(p))
    {
        return Err(OpsError::input(format!(
            "failed to promote: run {} has no canary to promote",
            run.id
        ))
        .hint(Hint::text(
            "promote works on runs of a canary strategy on the process target, or on the ssh target behind HAProxy or nginx (a fleet canary)",
        )));
    }
    let actor = session.actor_id().await?;
    if driven(session.store.as_ref(), &run.id).await? {
        return deliver(session, &run, Intervention::Promote, &actor)
            .await
            .map(Handled::Delivered);
    }
    deliver(session, &run, Intervention::Promote, &actor).await?;
    let workdir = PathBuf::from(&run.workdir);
    let deploy = deploy_target(session, &workdir, plan.as_ref(), reporter.as_ref()).await?;
    let engine = engine(session, &workdir, plan.as_ref(), &actor, deploy, None);
    let report = drive(
        session,
        engine,
        Driving {
            run: &run,
            plan: plan.as_ref(),
            actor: &actor,
            continued: true,
        },
        req,
        reporter.clone(),
    )
    .await;
    // Not acted on (no canary was running): it must not surprise a later driver.
    discard_interventions(session, &run.id, reporter.as_ref()).await;
    report.map(Handled::Driven)
}

/// What a pause or abort request did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Controlled {
    /// The run.
    pub run: String,
    /// `pause` or `abort`.
    pub requested: &'static str,
    /// The run's state after the request.
    pub state: RunState,
    /// Why it is in that state (its latest state change's reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Ask the driver of a run to pause it (a live canary pauses at its next analysis tick).
pub async fn pause(session: &Session, run_id: &str) -> OpsResult<Controlled> {
    let run = load_run(session.store.as_ref(), run_id).await?;
    crate::access::require(session, Role::Deployer, "pause", &run.environment).await?;
    let actor = session.actor_id().await?;
    let engine = engine(session, Path::new(&run.workdir), None, &actor, None, None);
    let state = engine.request(run_id, &actor, Control::Pause).await?;
    Ok(Controlled {
        run: run_id.to_owned(),
        requested: "pause",
        state,
        reason: None,
    })
}

/// Abort a run: stop it where it is for good. No further step starts; a canary in flight
/// (live, or paused with nobody driving) is taken out of service; steps that completed
/// stay as they are (`rollback` undoes them). A live driver hears the request; a run
/// nobody drives is aborted here. Returns once the run is aborted, and gives its
/// environment's lease back.
pub async fn abort(
    session: &Session,
    run_id: &str,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<Controlled> {
    let run = load_run(session.store.as_ref(), run_id).await?;
    crate::access::require(session, Role::Deployer, "abort", &run.environment).await?;
    let actor = session.actor_id().await?;
    let plan = plan_of(&run);
    let workdir = PathBuf::from(&run.workdir);
    let state = if !run.state.is_terminal() && driven(session.store.as_ref(), &run.id).await? {
        let engine = engine(session, &workdir, None, &actor, None, None);
        engine.request(run_id, &actor, Control::Abort).await?;
        wait_for_driver(session, run_id).await?
    } else {
        // Nobody drives it: the engine settles what is in flight (a paused canary is
        // taken out of service through the deploy target) and ends the run here.
        let deploy = deploy_target(session, &workdir, plan.as_ref(), reporter.as_ref()).await?;
        let engine = engine(session, &workdir, plan.as_ref(), &actor, deploy, None);
        let target = engine.target().clone();
        let (engine, forward) = watch(
            engine,
            plan.as_ref(),
            &run,
            reporter.clone(),
            session.layout.rehearsals(),
        );
        let state = engine.request(run_id, &actor, Control::Abort).await;
        // Settling the run may have reached the hosts (a paused fleet canary taken out of
        // service): their sessions end now ([`drive`]).
        target.close().await;
        drop(engine);
        unwatch(forward, reporter.as_ref()).await;
        let state = state?;
        if state.is_terminal() {
            state
        } else {
            // A driver took the run between the look and the request: it acts on it.
            wait_for_driver(session, run_id).await?
        }
    };
    if state.is_terminal() {
        // The environment is free again now, not at the lease's expiry. Only this run's
        // own lease is given up.
        session
            .store
            .release_lease(&run.environment, Some(&run.id))
            .await?;
    }
    Ok(Controlled {
        run: run_id.to_owned(),
        requested: "abort",
        state,
        reason: last_reason(session.store.as_ref(), run_id).await,
    })
}

/// Wait until the live driver of a run has acted on a request: the run is terminal, or
/// paused, or nobody drives it any more (its driver died; the run is then as it left it).
async fn wait_for_driver(session: &Session, run_id: &str) -> OpsResult<RunState> {
    loop {
        let run = load_run(session.store.as_ref(), run_id).await?;
        if run.state.is_terminal()
            || run.state == RunState::Paused
            || !driven(session.store.as_ref(), run_id).await?
        {
            // Read again: the driver may have finished between the two reads.
            return Ok(load_run(session.store.as_ref(), run_id).await?.state);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Hand a rollback to the live driver of a run and wait until it acted.
async fn ask_driver(
    session: &Session,
    workdir: &Path,
    me: &str,
    run_id: &str,
    reason: &str,
) -> OpsResult<RunState> {
    let engine = engine(session, workdir, None, me, None, None);
    engine.request_rollback(run_id, me, reason).await?;
    wait_for_driver(session, run_id).await
}

/// What a manual rollback did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolledBack {
    /// The run.
    pub run: String,
    /// Its state now: `rolled_back`, `aborted` (nothing had run), or `failed` (some undo
    /// failed; the reason names it).
    pub state: RunState,
    /// Why it is in that state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A live driver carried the rollback out.
    pub by_driver: bool,
}

/// Roll a run back by hand: take a canary in flight out of service and undo every
/// completed step in reverse order (audited, with the reason). A live driver hears the
/// request and rolls back itself; otherwise the rollback runs here, holding the
/// environment's lease, with the run's notifications (`rollback_started`,
/// `rollback_finished`). Returns once the run is rolled back (or failed to be), and gives
/// the lease back.
pub async fn rollback(
    session: &Session,
    run_id: &str,
    reason: &str,
    reporter: Arc<dyn Reporter>,
) -> OpsResult<RolledBack> {
    if reason.trim().is_empty() {
        return Err(OpsError::input("a rollback needs a reason")
            .hint(Hint::text("say why; the reason is kept in the audit chain")));
    }
    let reason = reason.trim();
    let run = load_run(session.store.as_ref(), run_id).await?;
    crate::access::require(session, Role::Deployer, "roll back", &run.environment).await?;
    let me = session.actor_id().await?;
    let plan = plan_of(&run);
    let workdir = PathBuf::from(&run.workdir);
    let (state, by_driver) = if !run.state.is_terminal()
        && driven(session.store.as_ref(), &run.id).await?
    {
        (
            ask_driver(session, &workdir, &me, run_id, reason).await?,
            true,
        )
    } else {
        // No two releases change one environment at once: a rollback takes the lease.
        let now = slipway_stdx::now();
        if let Some(l) =
            session.store.leases().await?.into_iter().find(|l| {
                l.environment == run.environment && lease::live(l, now) && l.holder != run.id
            })
        {
            return Err(OpsError::blocked(format!(
                    "failed to roll back run {}: `{}` is {}; nothing was undone",
                    run.id,
                    run.environment,
                    lease::describe(&l)
                ))
                .hint(Hint::text(format!(
                    "roll back once that release is done, or roll it back first (`slipway rollback {} --reason TEXT`)",
                    l.holder
                ))));
        }
        let mut held = lease::take(session.store.clone(), &run, false, reporter.as_ref()).await?;
        // Deploy steps on the process target are undone through the service's proxy;
        // undo commands print too, and the plan's secrets are masked in their output.
        let deploy = deploy_target(session, &workdir, plan.as_ref(), reporter.as_ref()).await?;
        let engine = engine(session, &workdir, plan.as_ref(), &me, deploy, None);
        let target = engine.target().clone();
        let (engine, forward) = watch(
            engine,
            plan.as_ref(),
            &run,
            reporter.clone(),
            session.layout.rehearsals(),
        );
        let result = tokio::select! {
            r = engine.rollback_run(run_id, &me, reason) => r,
            Ok(other) = &mut held.lost => {
                target.close().await;
                return Err(OpsError::blocked(format!(
                    "failed to keep the lease on `{}`: it lapsed and run `{}` ({}) took it; the rollback of run {} stopped",
                    run.environment, other.holder, other.release, run.id
                ))
                .hint(Hint::text("finish the rollback once that release is done (it continues where it stopped)")));
            }
        };
        // Done with the hosts the undo ran on: their sessions end now ([`drive`]).
        target.close().await;
        drop(engine);
        unwatch(forward, reporter.as_ref()).await;
        match result {
            Ok(state) => {
                held.release().await?;
                (state, false)
            }
            Err(slipway_engine::EngineError::Store(StoreError::Claimed(_))) => {
                // A driver took the run between the look and the claim.
                held.lapse();
                (
                    ask_driver(session, &workdir, &me, run_id, reason).await?,
                    true,
                )
            }
            Err(e) => {
                held.lapse();
                return Err(e.into());
            }
        }
    };
    if state.is_terminal() {
        session
            .store
            .release_lease(&run.environment, Some(&run.id))
            .await?;
    }
    if !by_driver {
        // A run's driver writes its own outcome back when the rollback it was asked for
        // ends; here nobody else will.
        crate::change::write_back(
            plan.as_ref(),
            run_id,
            state,
            Some(format!("rolled back by hand: {}", reason.trim())),
            reporter.as_ref(),
        )
        .await;
    }
    Ok(RolledBack {
        run: run_id.to_owned(),
        state,
        reason: last_reason(session.store.as_ref(), run_id).await,
        by_driver,
    })
}

/// An approval as recorded, with the run's tally after it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Approval {
    /// The run.
    pub run: String,
    /// The approver's pseudonymous id.
    pub approver: String,
    /// The plan digest approved.
    pub digest: String,
    /// Valid approvals now.
    pub valid: usize,
    /// Approvals required.
    pub required: u32,
}

/// Approve the plan digest of a run as the session's actor. `reviewed` is the digest the
/// approver reviewed; refused when the run executes another plan.
pub async fn approve(
    session: &Session,
    run_id: &str,
    reviewed: Option<&str>,
) -> OpsResult<Approval> {
    let run = load_run(session.store.as_ref(), run_id).await?;
    crate::access::require(session, Role::Approver, "approve", &run.environment).await?;
    let me = session.actor_id().await?;
    let engine = engine(session, Path::new(&run.workdir), None, &me, None, None);
    // An approval that would not count is refused, saying why, instead of being recorded
    // and silently ignored by the gate (self-approval and a stale digest are refused by
    // the engine).
    let (need, _) = engine.approvals(run_id).await?;
    if !need.groups.is_empty() && !session.actor.groups.iter().any(|g| need.groups.contains(g)) {
        return Err(OpsError::blocked(format!(
            "failed to approve run {run_id}: its approvals count only from members of {}; {} is a member of {}",
            need.groups
                .iter()
                .map(|g| format!("group:{g}"))
                .collect::<Vec<_>>()
                .join(", "),
            session.actor.user,
            if session.actor.groups.is_empty() {
                "no group".to_owned()
            } else {
                session
                    .actor
                    .groups
                    .iter()
                    .map(|g| format!("group:{g}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
        .hint(Hint::text(
            "group membership is kept by admins: `slipway access group add GROUP USER`",
        )));
    }
    engine
        .approve(run_id, &me, session.actor.groups.clone(), reviewed)
        .await?;
    let (need, tally) = engine.approvals(run_id).await?;
    Ok(Approval {
        run: run_id.to_owned(),
        approver: me,
        digest: run.digest,
        valid: tally.valid.len(),
        required: need.required,
    })
}
