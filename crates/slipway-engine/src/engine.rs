//! The durable executor: creates runs from plans and drives them through their states.
//!
//! Rule: an event is committed to the store *before* its effect counts as done. A step is
//! journaled `step_started` before the target is touched, and `step_succeeded` before the
//! engine moves on; so after a crash every step is either untouched, done, or "started"
//! — and a started step is observed through its target before anything else happens.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use slipway_model::plan::{GateKind, Plan, PlannedStep, StepAction};
use slipway_model::spec::CheckPhase;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use crate::checks::{CheckRunner, phase_name};
use crate::clock::Clock;
use crate::event::{
    Control, EngineEvent, Notice, RecoveryDecision, RunState, StepCompletion, StepStatus,
};
use crate::gates::{self, ApprovalNeed, ApprovalTally, GateError, WindowStatus};
use crate::store::{JournalRecord, NewRun, RunRecord, StepRecord, Store, StoreError};
use crate::target::{Applied, Observation, StepContext, Target, TargetError};
use crate::wave::WaveTodo;

/// The order steps of a wave start in: artifact re-verification (0), then config
/// rendering (1), then everything else (2), each rank finished before the next starts.
/// Install steps may read their config, and nothing is rendered for an artifact that
/// could still be refused.
fn rank(step: &PlannedStep) -> u8 {
    match step.action {
        StepAction::VerifyArtifact { .. } => 0,
        StepAction::RenderConfig { .. } => 1,
        _ => 2,
    }
}

/// How the reason of a run that succeeded without deploying every service begins.
pub const PARTIAL_PREFIX: &str = "succeeded partially; not deployed: ";

/// Default number of steps of a wave applied at once.
pub const DEFAULT_PARALLELISM: usize = 4;

/// Most progress reports of a step journaled in one commit (bounds one transaction).
const PROGRESS_PER_COMMIT: usize = 256;

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A gate could not be evaluated.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The stored plan cannot be read.
    #[error("read the plan of run `{run}`: {message}")]
    Plan {
        /// Run id.
        run: String,
        /// Why.
        message: String,
    },
    /// A freeze is in force.
    #[error(
        "deploy to `{environment}`: frozen from {from} to {to} ({reason}); to deploy anyway pass --override-freeze --reason TEXT (a second person must then approve)"
    )]
    Frozen {
        /// Environment.
        environment: String,
        /// First day.
        from: String,
        /// Last day.
        to: String,
        /// The freeze's reason.
        reason: String,
    },
    /// The author tried to approve their own run.
    #[error("approve run `{run}`: you started it, and four-eyes requires someone else to approve")]
    SelfApproval {
        /// Run id.
        run: String,
    },
    /// The approver reviewed another plan.
    #[error(
        "approve run `{run}`: you reviewed plan {given} but the run executes plan {expected}; review the current plan (`slipway status {run}`) and approve that digest"
    )]
    DigestMismatch {
        /// Run id.
        run: String,
        /// The run's digest.
        expected: String,
        /// The digest given.
        given: String,
    },
    /// The run is over.
    #[error("{action} run `{run}`: it is already {state}")]
    Terminal {
        /// What was attempted.
        action: &'static str,
        /// Run id.
        run: String,
        /// Its state.
        state: &'static str,
    },
    /// A pause or abort while the run rolls back.
    #[error(
        "{action} run `{run}`: it is rolling back, which always runs to its end; if its driver died, `slipway rollback {run} --reason TEXT` finishes it"
    )]
    RollingBack {
        /// What was attempted.
        action: &'static str,
        /// Run id.
        run: String,
    },
    /// A step or drive task panicked or was cancelled (a bug, or the runtime shutting
    /// down).
    #[error("run an engine task: {0}")]
    Task(String),
}

/// How a drive ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveOutcome {
    /// The run reached a terminal state.
    Finished(RunState),
    /// The run is paused.
    Paused,
    /// A gate holds the run and the caller asked not to wait.
    Blocked {
        /// `windows`, `approvals`, `freezes`.
        gate: String,
        /// For a human.
        detail: String,
        /// When a window opens.
        opens_at: Option<Timestamp>,
    },
}

/// Options of one drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriveOptions {
    /// Return [`DriveOutcome::Blocked`] instead of waiting for a window or approvals.
    pub no_wait: bool,
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRunRequest {
    /// The plan.
    pub plan: Plan,
    /// Pseudonymous id of the author.
    pub author: String,
    /// `--override-freeze --reason`.
    pub override_freeze: Option<String>,
    /// Absolute directory relative paths of the plan resolve against.
    pub workdir: String,
}

/// The engine. Cheap to clone: everything is shared.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    target: Arc<dyn Target>,
    clock: Arc<dyn Clock>,
    checks: Option<Arc<dyn CheckRunner>>,
    notices: Option<UnboundedSender<Notice>>,
    parallelism: usize,
    poll: Duration,
    /// The plan of the run this engine (or a clone) created last, kept until a drive of
    /// that run takes it: a deploy creates and drives its run in one process, and parsing
    /// the stored plan again cost as much CPU as journaling a few thousand steps (a
    /// 4,000-step plan is ~0.9 MB of JSON).
    created: Arc<Mutex<Option<CreatedPlan>>>,
}

/// A plan as `create_run` stored it: taken by a drive of that run only while the stored
/// plan is still exactly this text (else the drive parses what is stored).
struct CreatedPlan {
    run_id: String,
    plan_json: String,
    plan: Plan,
}

/// What a drive keeps about its run.
struct RunCtx {
    run: RunRecord,
    /// Shared with the wave's step tasks, which read their step from it (no copy each).
    plan: Arc<Plan>,
    actor: String,
    state: RunState,
}

enum Halt {
    Budget,
    Control(Control),
    Paused,
}

/// How one step ended for its wave.
enum StepEnd {
    /// Applied. `Some(event)`: its `step_succeeded`, not yet committed — the wave commits it
    /// together with the service's next `step_started` (one fsync for both), or on its own.
    Done(Option<EngineEvent>),
    Failed(String),
    /// The target asked for a human; the step stays started, the run pauses.
    Paused(String),
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Engine {
    /// An engine over a store, a target and a clock.
    pub fn new(store: Arc<dyn Store>, target: Arc<dyn Target>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            target,
            clock,
            checks: None,
            notices: None,
            parallelism: DEFAULT_PARALLELISM,
            poll: Duration::from_millis(500),
            created: Arc::new(Mutex::new(None)),
        }
    }

    /// Send every committed event here too (for progress display).
    pub fn with_notices(mut self, tx: UnboundedSender<Notice>) -> Self {
        self.notices = Some(tx);
        self
    }

    /// Run the plan's declared checks through this runner. Without one, checks are
    /// journaled as skipped (never as passed) and the run goes on.
    pub fn with_checks(mut self, runner: Arc<dyn CheckRunner>) -> Self {
        self.checks = Some(runner);
        self
    }

    /// Default bound on steps applied at once (the plan's `target.exec.parallelism` wins).
    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallelism = n.max(1);
        self
    }

    /// How often waiting gates and control requests are re-read.
    pub fn with_poll(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The target: its driver ends its connections ([`Target::close`]) once done with
    /// the run.
    pub fn target(&self) -> &Arc<dyn Target> {
        &self.target
    }

    async fn commit(
        &self,
        run_id: &str,
        digest: &str,
        actor: &str,
        events: Vec<EngineEvent>,
    ) -> Result<(), StoreError> {
        let at = self.clock.now();
        let records: Vec<JournalRecord> = events
            .into_iter()
            .map(|event| JournalRecord {
                run_id: run_id.to_owned(),
                digest: digest.to_owned(),
                at,
                actor: actor.to_owned(),
                event,
            })
            .collect();
        let notices: Vec<Notice> = if self.notices.is_some() {
            records
                .iter()
                .map(|r| Notice {
                    seq: 0,
                    run_id: r.run_id.clone(),
                    at: r.at,
                    actor: r.actor.clone(),
                    event: r.event.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        self.store.commit(records).await?;
        if let Some(tx) = &self.notices {
            for n in notices {
                // A display that went away must not stop the run.
                let _ = tx.send(n);
            }
        }
        Ok(())
    }

    async fn emit(&self, ctx: &RunCtx, events: Vec<EngineEvent>) -> Result<(), StoreError> {
        self.commit(&ctx.run.id, &ctx.run.digest, &ctx.actor, events)
            .await
    }

    async fn transition(
        &self,
        ctx: &mut RunCtx,
        to: RunState,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        if ctx.state == to {
            return Ok(());
        }
        let from = ctx.state;
        self.emit(ctx, vec![EngineEvent::StateChanged { from, to, reason }])
            .await?;
        ctx.state = to;
        Ok(())
    }

    /// Create a run for a plan, unless a freeze refuses it. The refusal is audited.
    pub async fn create_run(&self, req: NewRunRequest) -> Result<RunRecord, EngineError> {
        let now = self.clock.now();
        let plan = &req.plan;
        if req.override_freeze.is_none()
            && let Some(f) = gates::active_freeze(&plan.env.freezes, now)?
        {
            let err = EngineError::Frozen {
                environment: plan.environment.clone(),
                from: f.from.clone(),
                to: f.to.clone(),
                reason: f.reason.clone(),
            };
            self.commit(
                "",
                &plan.digest,
                &req.author,
                vec![EngineEvent::DeployRefused {
                    digest: plan.digest.clone(),
                    environment: plan.environment.clone(),
                    reason: err.to_string(),
                }],
            )
            .await?;
            return Err(err);
        }
        let plan_json = serde_json::to_string(plan).map_err(|e| EngineError::Plan {
            run: String::new(),
            message: e.to_string(),
        })?;
        let id = new_run_id(now, &plan.digest);
        let kept_json = plan_json.clone();
        let first = JournalRecord {
            run_id: id.clone(),
            digest: plan.digest.clone(),
            at: now,
            actor: req.author.clone(),
            event: EngineEvent::RunCreated {
                release: plan.release.name.clone(),
                version: plan.release.version.clone(),
                environment: plan.environment.clone(),
                digest: plan.digest.clone(),
                override_freeze: req.override_freeze.clone(),
                plan_sha256: Some(crate::evidence::sha256_hex(plan_json.as_bytes())),
                workdir: Some(req.workdir.clone()),
            },
        };
        self.store
            .create_run(
                NewRun {
                    id: id.clone(),
                    plan_json,
                    digest: plan.digest.clone(),
                    release: plan.release.name.clone(),
                    version: plan.release.version.clone(),
                    environment: plan.environment.clone(),
                    author: req.author.clone(),
                    override_reason: req.override_freeze.clone(),
                    created_at: now,
                    workdir: req.workdir.clone(),
                },
                first.clone(),
            )
            .await?;
        if let Some(tx) = &self.notices {
            let _ = tx.send(Notice {
                seq: 0,
                run_id: id.clone(),
                at: now,
                actor: req.author.clone(),
                event: first.event,
            });
        }
        // Waived compatibility findings go into the audit chain as the run starts: the
        // plan carries them, but the chain is what an auditor reads.
        if !plan.waivers.is_empty() {
            self.commit(&id, &plan.digest, &req.author, waiver_events(plan))
                .await?;
        }
        let run = self
            .store
            .run(&id)
            .await?
            .ok_or(EngineError::Store(StoreError::NoSuchRun(id)))?;
        *self.created_plan() = Some(CreatedPlan {
            run_id: run.id.clone(),
            plan_json: kept_json,
            plan: req.plan,
        });
        Ok(run)
    }

    fn created_plan(&self) -> MutexGuard<'_, Option<CreatedPlan>> {
        // The slot is only ever replaced or taken whole, so a panic elsewhere while it was
        // held cannot have left it half-written.
        self.created.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan of a loaded run: the one `create_run` kept when it is this run's and the
    /// stored text is still what it wrote, else the stored plan parsed.
    fn plan_of(&self, run: &RunRecord) -> Result<Plan, EngineError> {
        let kept = {
            let mut slot = self.created_plan();
            match slot.as_ref() {
                Some(c) if c.run_id == run.id => slot.take(),
                _ => None,
            }
        };
        match kept {
            Some(c) if c.plan_json == run.plan_json => Ok(c.plan),
            _ => parse_plan(run),
        }
    }

    /// The unfinished run of this plan in its environment if there is one (so deploying
    /// the same plan again continues it), else a new run. The bool says "continued".
    ///
    /// Safe against a race: the store keeps one live run per digest and environment, so
    /// of two deploys of one plan started together one creates the run and the other
    /// continues it (and then finds it claimed, or finished, when it tries to drive it);
    /// the loser leaves no run of its own behind.
    pub async fn create_or_continue(
        &self,
        req: NewRunRequest,
    ) -> Result<(RunRecord, bool), EngineError> {
        let (digest, environment) = (req.plan.digest.clone(), req.plan.environment.clone());
        // A few rounds: the live run found by a lost race may end before it is read back.
        let mut rounds = 0;
        loop {
            rounds += 1;
            if let Some(run) = self.store.active_run(&digest, &environment).await? {
                return Ok((run, true));
            }
            match self.create_run(req.clone()).await {
                Err(EngineError::Store(StoreError::LiveRunExists { .. })) if rounds < 3 => {
                    // Another process created a run of this plan between the look and
                    // the insert: continue that one.
                }
                other => return other.map(|run| (run, false)),
            }
        }
    }

    /// Record an approval of the run's plan digest by `approver` (pseudonymous id).
    /// `reviewed` is the digest the approver reviewed, when they name one.
    pub async fn approve(
        &self,
        run_id: &str,
        approver: &str,
        groups: Vec<String>,
        reviewed: Option<&str>,
    ) -> Result<(), EngineError> {
        let run = self.load(run_id).await?;
        if run.state.is_terminal() {
            return Err(EngineError::Terminal {
                action: "approve",
                run: run.id,
                state: run.state.as_str(),
            });
        }
        if let Some(given) = reviewed
            && given != run.digest
        {
            return Err(EngineError::DigestMismatch {
                run: run.id,
                expected: run.digest,
                given: given.to_owned(),
            });
        }
        let plan = parse_plan(&run)?;
        let need = approval_need(&plan, &run);
        if need.exclude_author && approver == run.author {
            return Err(EngineError::SelfApproval { run: run.id });
        }
        self.commit(
            &run.id,
            &run.digest,
            approver,
            vec![EngineEvent::Approved {
                approver: approver.to_owned(),
                digest: run.digest.clone(),
                groups,
            }],
        )
        .await?;
        Ok(())
    }

    /// Ask whoever drives the run to pause or abort it. A run nobody drives (paused,
    /// waiting with `--no-wait`, or whose driver died) is aborted here directly: its
    /// steps still `started` are observed first, and one found not done has what is in
    /// place of it taken back ([`Target::retract`], e.g. a paused canary taken out of
    /// service); completed steps stay (a rollback undoes them).
    pub async fn request(
        &self,
        run_id: &str,
        actor: &str,
        control: Control,
    ) -> Result<RunState, EngineError> {
        let run = self.load(run_id).await?;
        if run.state.is_terminal() {
            return Err(EngineError::Terminal {
                action: control.as_str(),
                run: run.id,
                state: run.state.as_str(),
            });
        }
        if run.state == RunState::RollingBack {
            return Err(EngineError::RollingBack {
                action: control.as_str(),
                run: run.id,
            });
        }
        self.commit(
            &run.id,
            &run.digest,
            actor,
            vec![EngineEvent::ControlRequested {
                control,
                reason: None,
            }],
        )
        .await?;
        if control == Control::Abort
            && let Ok(_claim) = self.store.claim(run_id).await
        {
            // Nobody drives it: the request would never be picked up.
            let run = self.load(run_id).await?;
            let plan = parse_plan(&run)?;
            let mut ctx = RunCtx {
                state: run.state,
                run,
                plan: Arc::new(plan),
                actor: actor.to_owned(),
            };
            let end = self.abort(&mut ctx, "aborted by request").await?;
            return Ok(end);
        }
        Ok(run.state)
    }

    /// Ask the live driver of a run to roll it back (`reason` is journaled with the
    /// request). The caller rolls back itself ([`Engine::rollback_run`]) when nobody
    /// drives the run.
    pub async fn request_rollback(
        &self,
        run_id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let run = self.load(run_id).await?;
        if run.state.is_terminal() {
            return Err(EngineError::Terminal {
                action: "roll back",
                run: run.id,
                state: run.state.as_str(),
            });
        }
        self.commit(
            &run.id,
            &run.digest,
            actor,
            vec![EngineEvent::ControlRequested {
                control: Control::Rollback,
                reason: Some(reason.to_owned()),
            }],
        )
        .await?;
        Ok(())
    }

    /// The reason of the latest rollback request of a run.
    async fn rollback_reason(&self, run_id: &str) -> String {
        let journal = self.store.journal(run_id, 0).await.unwrap_or_default();
        let reason = journal.iter().rev().find_map(|n| match &n.event {
            EngineEvent::ControlRequested {
                control: Control::Rollback,
                reason,
            } => Some(reason.clone().unwrap_or_default()),
            _ => None,
        });
        format!(
            "rollback requested by hand: {}",
            reason.unwrap_or_else(|| "no reason given".into())
        )
    }

    /// End a run as aborted: settle every step still `started` (see [`Engine::request`]),
    /// then go to Aborted. Completed steps are not undone.
    async fn abort(&self, ctx: &mut RunCtx, why: &str) -> Result<RunState, EngineError> {
        let records = self.store.steps(&ctx.run.id).await?;
        let started: Vec<&StepRecord> = records
            .iter()
            .filter(|r| r.status == StepStatus::Started)
            .collect();
        let mut unknown = Vec::new();
        if !started.is_empty() {
            let prior = self.prior_progress(&ctx.run.id).await?;
            for rec in started {
                let Some(step) = ctx.plan.steps.iter().find(|s| s.id == rec.step_id).cloned()
                else {
                    continue;
                };
                let sctx = StepContext {
                    run_id: ctx.run.id.clone(),
                    step_id: step.id.clone(),
                    key: step.idempotency_key.clone(),
                    attempt: rec.attempts,
                    progress: None,
                    prior: prior.get(&step.id).cloned().unwrap_or_default(),
                };
                self.settle_in_flight(ctx, &step, &sctx, &mut unknown, "aborted")
                    .await?;
            }
        }
        let reason = if unknown.is_empty() {
            why.to_owned()
        } else {
            format!("{why}; {}", unknown.join("; "))
        };
        self.transition(ctx, RunState::Aborted, Some(reason))
            .await?;
        Ok(RunState::Aborted)
    }

    /// Every `step_progress` detail of a run, by step, oldest first: what a step applied
    /// again or undone is given as [`StepContext::prior`].
    async fn prior_progress(
        &self,
        run_id: &str,
    ) -> Result<HashMap<String, Vec<serde_json::Value>>, StoreError> {
        let mut by_step: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
        for n in self.store.journal(run_id, 0).await? {
            if let EngineEvent::StepProgress { step, detail, .. } = n.event {
                by_step.entry(step).or_default().push(detail);
            }
        }
        Ok(by_step)
    }

    /// The tally of approvals of a run, against what it needs.
    pub async fn approvals(
        &self,
        run_id: &str,
    ) -> Result<(ApprovalNeed, ApprovalTally), EngineError> {
        let run = self.load(run_id).await?;
        let plan = parse_plan(&run)?;
        let need = approval_need(&plan, &run);
        let approvals = self.store.approvals(run_id).await?;
        let tally = gates::tally(&need, &approvals, &run.digest, &run.author);
        Ok((need, tally))
    }

    async fn load(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        self.store
            .run(run_id)
            .await?
            .ok_or_else(|| EngineError::Store(StoreError::NoSuchRun(run_id.to_owned())))
    }

    /// Drive a run as far as it goes: through its gates, its waves, and rollback on
    /// failure. Resumes a paused run and recovers an interrupted one. `actor` is the
    /// pseudonymous id of whoever drives.
    ///
    /// The drive runs as a task of the runtime, not on the caller's thread. A caller that
    /// `block_on`s it (the CLI, `#[tokio::main]`) would otherwise run the wave loop on a
    /// thread of its own, so every step of a sequential service crossed threads twice more
    /// (its task's end woke the caller's thread, whose next spawn woke a worker); as a
    /// task, the loop wakes on the worker its step task ended on. Dropping this future
    /// stops the drive as before: the task's `JoinSet` aborts it, as the wave's own set
    /// aborts its step tasks. A panic in the drive is resumed here.
    pub async fn drive(
        &self,
        run_id: &str,
        actor: &str,
        opts: DriveOptions,
    ) -> Result<DriveOutcome, EngineError> {
        let this = self.clone();
        let (run_id, actor) = (run_id.to_owned(), actor.to_owned());
        let mut task = JoinSet::new();
        task.spawn(async move { this.drive_here(&run_id, &actor, opts).await });
        match task.join_next().await {
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Some(Err(e)) => Err(EngineError::Task(format!("the drive: {e}"))),
            // One task was spawned just above.
            None => Err(EngineError::Task("the drive task was not spawned".into())),
        }
    }

    /// [`Engine::drive`], on the task that polls it.
    async fn drive_here(
        &self,
        run_id: &str,
        actor: &str,
        opts: DriveOptions,
    ) -> Result<DriveOutcome, EngineError> {
        let _claim = self.store.claim(run_id).await?;
        let run = self.load(run_id).await?;
        let plan = self.plan_of(&run)?;
        let mut ctx = RunCtx {
            state: run.state,
            run,
            plan: Arc::new(plan),
            actor: actor.to_owned(),
        };
        if ctx.state.is_terminal() {
            return Ok(DriveOutcome::Finished(ctx.state));
        }
        if ctx.run.control == Some(Control::Abort) && ctx.state != RunState::RollingBack {
            let end = self.abort(&mut ctx, "aborted by request").await?;
            return Ok(DriveOutcome::Finished(end));
        }
        if ctx.run.control == Some(Control::Rollback) && ctx.state != RunState::RollingBack {
            // Asked while its driver was gone (or before it looked).
            let reason = self.rollback_reason(&ctx.run.id).await;
            let end = self.rollback_ctx(&mut ctx, &reason).await?;
            return Ok(DriveOutcome::Finished(end));
        }
        if ctx.state == RunState::RollingBack {
            let end = self.rollback(&mut ctx, "resuming rollback").await?;
            return Ok(DriveOutcome::Finished(end));
        }
        if ctx.state == RunState::Pending && !ctx.plan.waivers.is_empty() {
            // `create_run` journals the waivers right after the run; a crash between the
            // two commits would leave a run whose waivers are not in the audit chain, so
            // the first drive makes sure they are.
            let journal = self.store.journal(&ctx.run.id, 0).await?;
            if !journal
                .iter()
                .any(|n| matches!(n.event, EngineEvent::WaiverApplied { .. }))
            {
                let waivers = waiver_events(&ctx.plan);
                self.emit(&ctx, waivers).await?;
            }
        }
        if ctx.state == RunState::Paused {
            self.transition(&mut ctx, RunState::Running, Some("resumed".into()))
                .await?;
        }
        if matches!(
            ctx.state,
            RunState::Pending | RunState::WaitingForWindow | RunState::WaitingForApproval
        ) {
            if let Some(out) = self.pass_gates(&mut ctx, opts).await? {
                return Ok(out);
            }
            // The external change record, checked again now that the run may go: a change
            // approved when the deploy started may have been withdrawn, or its window
            // closed, while the run waited for approvals or a deployment window.
            if let Some(reason) = self.change_gate(&ctx).await? {
                self.transition(&mut ctx, RunState::Failed, Some(reason))
                    .await?;
                return Ok(DriveOutcome::Finished(RunState::Failed));
            }
            // Pre checks run once the run may go (windows, freezes, approvals passed), so
            // they see the environment as it is when the first step would start.
            if let Some(reason) = self.run_checks(&ctx, CheckPhase::Pre).await? {
                // Nothing was applied, so there is nothing to roll back: the run fails here
                // and a new deploy starts afresh once the environment is ready.
                self.transition(&mut ctx, RunState::Failed, Some(reason))
                    .await?;
                return Ok(DriveOutcome::Finished(RunState::Failed));
            }
            self.transition(&mut ctx, RunState::Running, None).await?;
        }
        self.run_waves(&mut ctx).await
    }

    /// Roll a run back by hand: undo its completed steps in reverse order. Allowed for
    /// runs that are paused, running without a live driver, failed, succeeded, aborted
    /// (what an abort kept is undone) or interrupted mid-rollback; the request and its
    /// reason are journaled (and so audited) before anything is undone. A run nobody
    /// started a step of yet is aborted instead: there is nothing to undo.
    pub async fn rollback_run(
        &self,
        run_id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<RunState, EngineError> {
        let _claim = self.store.claim(run_id).await?;
        let run = self.load(run_id).await?;
        let plan = parse_plan(&run)?;
        let mut ctx = RunCtx {
            state: run.state,
            run,
            plan: Arc::new(plan),
            actor: actor.to_owned(),
        };
        if ctx.state == RunState::RolledBack {
            return Err(EngineError::Terminal {
                action: "roll back",
                run: run_id.to_owned(),
                state: ctx.state.as_str(),
            });
        }
        if ctx.state == RunState::Aborted
            && self
                .store
                .steps(run_id)
                .await?
                .iter()
                .all(|r| !matches!(r.status, StepStatus::Succeeded | StepStatus::Started))
        {
            return Err(EngineError::Terminal {
                action: "roll back",
                run: run_id.to_owned(),
                state: "aborted with nothing left applied",
            });
        }
        self.rollback_ctx(&mut ctx, &format!("rollback requested by hand: {reason}"))
            .await
    }

    /// Roll back a loaded run: aborted when nothing ran yet, else undone.
    async fn rollback_ctx(&self, ctx: &mut RunCtx, reason: &str) -> Result<RunState, EngineError> {
        if matches!(
            ctx.state,
            RunState::Pending | RunState::WaitingForWindow | RunState::WaitingForApproval
        ) {
            // Nothing ran yet: there is nothing to undo, so the run is simply aborted.
            self.transition(
                ctx,
                RunState::Aborted,
                Some(format!(
                    "{reason}; no step had started, so nothing was undone"
                )),
            )
            .await?;
            return Ok(RunState::Aborted);
        }
        self.rollback(ctx, reason).await
    }

    /// Wait at the gates. `Some(outcome)` when the drive must stop here.
    async fn pass_gates(
        &self,
        ctx: &mut RunCtx,
        opts: DriveOptions,
    ) -> Result<Option<DriveOutcome>, EngineError> {
        let need = approval_need(&ctx.plan, &ctx.run);
        loop {
            let now = self.clock.now();
            if ctx.run.override_reason.is_none()
                && let Some(f) = gates::active_freeze(&ctx.plan.env.freezes, now)?
            {
                let detail = format!(
                    "frozen from {} to {} ({}); pass --override-freeze --reason TEXT",
                    f.from, f.to, f.reason
                );
                return Ok(Some(DriveOutcome::Blocked {
                    gate: "freezes".into(),
                    detail,
                    opens_at: None,
                }));
            }
            if need.required > 0 {
                let approvals = self.store.approvals(&ctx.run.id).await?;
                let tally = gates::tally(&need, &approvals, &ctx.run.digest, &ctx.run.author);
                if (tally.valid.len() as u32) < need.required {
                    let mut detail = format!(
                        "{} of {} approvals of plan {}",
                        tally.valid.len(),
                        need.required,
                        gates::short(&ctx.run.digest)
                    );
                    if ctx.run.override_reason.is_some() {
                        detail.push_str(
                            " (freeze override: someone other than the author must approve)",
                        );
                    }
                    for (who, why) in &tally.rejected {
                        detail.push_str(&format!("; {who} does not count: {why}"));
                    }
                    if ctx.state != RunState::WaitingForApproval {
                        self.transition(ctx, RunState::WaitingForApproval, None)
                            .await?;
                        self.emit(
                            ctx,
                            vec![EngineEvent::GateWaiting {
                                gate: "approvals".into(),
                                detail: detail.clone(),
                                until: None,
                            }],
                        )
                        .await?;
                    }
                    if opts.no_wait {
                        return Ok(Some(DriveOutcome::Blocked {
                            gate: "approvals".into(),
                            detail: format!(
                                "{detail}; approve with `slipway approve {}`",
                                ctx.run.id
                            ),
                            opens_at: None,
                        }));
                    }
                    if let Some(out) = self.wait_or_stop(ctx, self.poll).await? {
                        return Ok(Some(out));
                    }
                    continue;
                }
            }
            // Every windows gate the plan shows must be open (the spec's and the admin
            // policy's are separate gates: a deploy must be inside one of each); a plan
            // without one (e.g. a hotfix's bypass in production) waits for none.
            let mut closed: Option<Timestamp> = None;
            for g in &ctx.plan.gates {
                if let GateKind::Windows { windows } = &g.kind
                    && let WindowStatus::Closed { opens_at } = gates::window_status(windows, now)?
                {
                    closed = Some(closed.map_or(opens_at, |c| c.max(opens_at)));
                }
            }
            let status = match closed {
                Some(opens_at) => WindowStatus::Closed { opens_at },
                None => WindowStatus::Open { until: None },
            };
            match status {
                WindowStatus::Open { .. } => {}
                WindowStatus::Closed { opens_at } => {
                    let detail =
                        format!("outside every deployment window; the next opens at {opens_at}");
                    if ctx.state != RunState::WaitingForWindow {
                        self.transition(ctx, RunState::WaitingForWindow, None)
                            .await?;
                        self.emit(
                            ctx,
                            vec![EngineEvent::GateWaiting {
                                gate: "windows".into(),
                                detail: detail.clone(),
                                until: Some(opens_at),
                            }],
                        )
                        .await?;
                    }
                    if opts.no_wait {
                        return Ok(Some(DriveOutcome::Blocked {
                            gate: "windows".into(),
                            detail,
                            opens_at: Some(opens_at),
                        }));
                    }
                    let left = opens_at.duration_since(now).unsigned_abs();
                    if let Some(out) = self.wait_or_stop(ctx, left.min(self.poll)).await? {
                        return Ok(Some(out));
                    }
                    continue;
                }
            }
            let mut passed = Vec::new();
            if need.required > 0 {
                passed.push(EngineEvent::GatePassed {
                    gate: "approvals".into(),
                    detail: format!("{} approvals of the plan digest", need.required),
                });
            }
            if ctx
                .plan
                .gates
                .iter()
                .any(|g| matches!(g.kind, GateKind::Windows { .. }))
            {
                passed.push(EngineEvent::GatePassed {
                    gate: "windows".into(),
                    detail: "inside a deployment window".into(),
                });
            }
            if let Some(r) = &ctx.run.override_reason {
                passed.push(EngineEvent::GatePassed {
                    gate: "freezes".into(),
                    detail: format!("freeze overridden: {r}"),
                });
            }
            if !passed.is_empty() {
                self.emit(ctx, passed).await?;
            }
            return Ok(None);
        }
    }

    /// Sleep on the clock, then stop if someone asked to.
    async fn wait_or_stop(
        &self,
        ctx: &mut RunCtx,
        d: Duration,
    ) -> Result<Option<DriveOutcome>, EngineError> {
        self.clock.sleep(d).await;
        match self.store.control(&ctx.run.id).await? {
            Some(Control::Abort) => {
                self.transition(ctx, RunState::Aborted, Some("aborted by request".into()))
                    .await?;
                Ok(Some(DriveOutcome::Finished(RunState::Aborted)))
            }
            Some(Control::Pause) => {
                self.transition(ctx, RunState::Paused, Some("paused by request".into()))
                    .await?;
                Ok(Some(DriveOutcome::Paused))
            }
            Some(Control::Rollback) => {
                let reason = self.rollback_reason(&ctx.run.id).await;
                let end = self.rollback_ctx(ctx, &reason).await?;
                Ok(Some(DriveOutcome::Finished(end)))
            }
            None => Ok(None),
        }
    }

    async fn run_waves(&self, ctx: &mut RunCtx) -> Result<DriveOutcome, EngineError> {
        let budget = ctx
            .plan
            .strategy
            .rolling
            .as_ref()
            .map_or(0, |r| r.failure_budget);
        let parallelism = ctx
            .plan
            .env
            .target
            .exec
            .as_ref()
            .and_then(|e| e.parallelism)
            .map_or(self.parallelism, |p| p.max(1) as usize);
        let records: HashMap<String, StepRecord> = self
            .store
            .steps(&ctx.run.id)
            .await?
            .into_iter()
            .map(|r| (r.step_id.clone(), r))
            .collect();
        let waves = ctx.plan.waves.clone();
        // The step tasks read their step here, named by its index in the plan.
        let plan = Arc::clone(&ctx.plan);
        // Smoke checks are meant for the candidate before it gets traffic. The exec target
        // has no separate candidate instance, so they run right after the wave that
        // deploys: the last wave with a `deploy` step, else (exec-only plans) the last wave,
        // where the release is complete.
        let smoke_wave = ctx
            .plan
            .steps
            .iter()
            .filter(|s| matches!(s.action, StepAction::Deploy { .. }))
            .map(|s| s.wave)
            .max()
            .or_else(|| waves.last().map(|w| w.index));
        // Services not deployed, with why: failed within the budget, or never started
        // because a service they depend on is not deployed (a failure budget must not put
        // a service in front of a dependency that is not there).
        let mut down: BTreeMap<String, String> = BTreeMap::new();
        for wave in &waves {
            let steps: Vec<(usize, &PlannedStep)> = plan
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.wave == wave.index)
                .collect();
            let mut failed = 0u32;
            let mut errors: Vec<String> = Vec::new();
            let mut paused: Vec<String> = Vec::new();
            let mut refused_artifact = false;
            // (index of the step in the plan, its record when it has one).
            let mut todo: Vec<(usize, Option<StepRecord>)> = Vec::with_capacity(steps.len());
            let mut fresh = true;
            // A service whose step failed runs none of its later steps.
            let mut failed_services: HashSet<String> = HashSet::new();
            for (i, s) in &steps {
                match records.get(&s.id) {
                    None => todo.push((*i, None)),
                    Some(r) => {
                        fresh = false;
                        match r.status {
                            StepStatus::Succeeded => {}
                            StepStatus::Failed => {
                                failed += 1;
                                failed_services.insert(s.service.clone());
                            }
                            _ => todo.push((*i, Some(r.clone()))),
                        }
                    }
                }
            }
            for service in &failed_services {
                down.entry(service.clone())
                    .or_insert_with(|| "a step failed".into());
            }
            let mut skipped: BTreeMap<String, String> = BTreeMap::new();
            for (i, _) in &todo {
                let s = &plan.steps[*i];
                if skipped.contains_key(&s.service) {
                    continue;
                }
                let deps = ctx
                    .plan
                    .services
                    .get(&s.service)
                    .map(|svc| svc.depends_on.clone())
                    .unwrap_or_default();
                if let Some(dep) = deps.iter().find(|d| down.contains_key(*d)) {
                    skipped.insert(
                        s.service.clone(),
                        format!("not started: {dep}, which it depends on, is not deployed"),
                    );
                }
            }
            if !skipped.is_empty() {
                let mut notes = Vec::new();
                for (service, why) in &skipped {
                    if let Some(s) = todo
                        .iter()
                        .map(|(i, _)| &plan.steps[*i])
                        .find(|s| &s.service == service)
                    {
                        notes.push(EngineEvent::StepProgress {
                            step: s.id.clone(),
                            key: s.idempotency_key.clone(),
                            detail: serde_json::json!({"event": "skipped", "service": service, "reason": why}),
                        });
                    }
                }
                todo.retain(|(i, _)| !skipped.contains_key(&plan.steps[*i].service));
                down.extend(skipped);
                self.emit(ctx, notes).await?;
            }
            if todo.is_empty() && failed == 0 {
                // Done before a restart: its smoke checks run again, since checks only
                // observe and the journal may end before their verdicts.
                if Some(wave.index) == smoke_wave
                    && let Some(out) = self.checks_or_rollback(ctx, CheckPhase::Smoke).await?
                {
                    return Ok(out);
                }
                continue;
            }
            if fresh {
                self.emit(
                    ctx,
                    vec![EngineEvent::WaveStarted {
                        wave: wave.index,
                        steps: steps.len() as u32,
                    }],
                )
                .await?;
            }
            let mut halt = if failed > budget {
                Some(Halt::Budget)
            } else {
                None
            };
            // Verify-artifact steps run first: nothing of the wave is installed until every
            // artifact of the wave has been re-verified, and a refused artifact halts the
            // wave whatever the failure budget. Otherwise the services of a wave run at
            // once, and the steps of one service one after another, in their order: a
            // service's `steps:` are a script (download, unpack, switch), not a set.
            // The sort is stable, so plan order holds within a rank.
            todo.sort_by_key(|(i, _)| rank(&plan.steps[*i]));
            // Steps in flight per rank.
            let mut running = [0usize; 3];
            let mut refused_config = false;
            // Successes returned uncommitted: (service, rank, event). Their service stays
            // busy and their rank running until the event is committed, with the service's
            // next step or by a flush job below, within this turn of the loop.
            let mut pending: Vec<(String, u8, EngineEvent)> = Vec::new();
            let mut set = JoinSet::new();
            // What interrupted steps reported before, so they continue from it.
            let prior = if todo.iter().any(|(_, r)| r.is_some()) {
                self.prior_progress(&ctx.run.id).await?
            } else {
                HashMap::new()
            };
            // Steps of failed services never start.
            let mut todo = WaveTodo::new(todo.into_iter().filter_map(|t| {
                let s = &plan.steps[t.0];
                (!failed_services.contains(&s.service)).then(|| (rank(s), s.service.as_str(), t))
            }));
            let mut last_check = Instant::now();
            // Step tasks in the set: the parallelism bounds steps being applied, not the
            // commits of successes below (which hold no target and would otherwise take
            // the slot a service's next step needs to carry its success).
            let mut applying = 0usize;
            let ctx_shared = Arc::new((
                ctx.run.id.clone(),
                ctx.run.digest.clone(),
                ctx.actor.clone(),
            ));
            loop {
                while halt.is_none() && applying < parallelism {
                    // Control requests are polled at most every 50 ms: a pause is prompt
                    // for a human while a fast wave does not pay a read per step.
                    if last_check.elapsed() >= Duration::from_millis(50) {
                        last_check = Instant::now();
                        if let Some(c) = self.store.control(&ctx.run.id).await? {
                            halt = Some(Halt::Control(c));
                            break;
                        }
                    }
                    // The lowest rank left goes first, and a rank starts once the lower
                    // ones ended.
                    let Some(lowest) = todo.lowest() else {
                        break;
                    };
                    if running[..usize::from(lowest)].iter().any(|n| *n > 0) {
                        break;
                    }
                    // A service whose last step's success is pending continues first, if
                    // its next step (the first of it left, in plan order) may start now:
                    // that start carries the success into the same commit.
                    let chained = pending.iter().position(|(svc, _, _)| {
                        todo.next_of(svc)
                            .is_some_and(|(r, (_, rec))| r == lowest && rec.is_none())
                    });
                    let ((index, rec), prelude, carried) = match chained {
                        // Found just above, so there is one to take.
                        Some(p) => match todo.take_next_of(&pending[p].0) {
                            Some(t) => {
                                let (_, pr, ev) = pending.swap_remove(p);
                                running[usize::from(pr)] -= 1;
                                (t, vec![ev], Vec::new())
                            }
                            None => break,
                        },
                        // The first step (in plan order) of a service with nothing in
                        // flight; an earlier step of a service is found before a later.
                        // The successes of services with nothing left in the wave ride
                        // with its start instead of a commit each: they stay running (of
                        // this same rank, which waits for this step anyway) and their
                        // service busy until the start is durable, when its task returns.
                        None => match todo.take_free(lowest) {
                            Some(t) => {
                                let mut prelude = Vec::new();
                                let mut carried = Vec::new();
                                if t.1.is_none() {
                                    let mut i = 0;
                                    while i < pending.len() {
                                        if todo.next_of(&pending[i].0).is_none() {
                                            let (svc, pr, ev) = pending.swap_remove(i);
                                            prelude.push(ev);
                                            carried.push((svc, pr));
                                        } else {
                                            i += 1;
                                        }
                                    }
                                }
                                (t, prelude, carried)
                            }
                            None => break,
                        },
                    };
                    let step = &plan.steps[index];
                    let r = rank(step);
                    running[usize::from(r)] += 1;
                    applying += 1;
                    let service = step.service.clone();
                    let this = self.clone();
                    let shared = Arc::clone(&ctx_shared);
                    let before = prior.get(&step.id).cloned().unwrap_or_default();
                    let plan = Arc::clone(&plan);
                    set.spawn(async move {
                        let step = &plan.steps[index];
                        (
                            r,
                            service,
                            true,
                            carried,
                            this.run_step(&shared, step, rec, before, prelude).await,
                        )
                    });
                }
                // Successes that no next step carried are committed on their own, still
                // counted as running (a higher rank waits for them) and their service busy.
                for (service, r, ev) in pending.drain(..) {
                    let this = self.clone();
                    let shared = Arc::clone(&ctx_shared);
                    set.spawn(async move {
                        let (run_id, digest, actor) = &*shared;
                        let done = this.commit(run_id, digest, actor, vec![ev]).await;
                        (
                            r,
                            service,
                            false,
                            Vec::new(),
                            done.map(|()| StepEnd::Done(None)).map_err(Into::into),
                        )
                    });
                }
                match set.join_next().await {
                    None => break,
                    Some(joined) => {
                        let (r, service, step_task, carried, result) =
                            joined.map_err(|e| EngineError::Task(e.to_string()))?;
                        if step_task {
                            applying -= 1;
                        }
                        let end = result?;
                        // The step's start was committed (an error returned above), and
                        // with it the successes it carried.
                        for (svc, cr) in carried {
                            running[usize::from(cr)] -= 1;
                            todo.release(&svc);
                        }
                        if let StepEnd::Done(Some(ev)) = end {
                            pending.push((service, r, ev));
                            continue;
                        }
                        running[usize::from(r)] -= 1;
                        todo.release(&service);
                        match end {
                            StepEnd::Done(_) => {}
                            StepEnd::Failed(error) => {
                                down.insert(service.clone(), format!("failed: {error}"));
                                errors.push(error);
                                failed += 1;
                                todo.drop_service(&service);
                                failed_services.insert(service);
                                refused_artifact |= r == 0;
                                refused_config |= r == 1;
                                // Nothing is installed from a refused artifact or without
                                // its config, whatever the budget.
                                if (failed > budget || r < 2) && halt.is_none() {
                                    halt = Some(Halt::Budget);
                                }
                            }
                            StepEnd::Paused(why) => {
                                paused.push(why);
                                if halt.is_none() {
                                    halt = Some(Halt::Paused);
                                }
                            }
                        }
                    }
                }
            }
            // A request that came while the wave's last steps ran is heard before the
            // next wave (requests are otherwise read only when a step starts).
            if halt.is_none()
                && let Some(c) = self.store.control(&ctx.run.id).await?
            {
                halt = Some(Halt::Control(c));
            }
            self.emit(
                ctx,
                vec![EngineEvent::WaveFinished {
                    wave: wave.index,
                    failed,
                }],
            )
            .await?;
            // A failure caused by a human's abort or rollback (a canary takes itself out
            // of service when it hears one) ends the run as that human asked.
            if matches!(halt, Some(Halt::Budget))
                && let Some(c @ (Control::Abort | Control::Rollback)) =
                    self.store.control(&ctx.run.id).await?
            {
                halt = Some(Halt::Control(c));
            }
            match halt {
                Some(Halt::Budget) => {
                    let why = if refused_artifact && failed <= budget {
                        // A refused artifact halts the wave whatever the budget allows.
                        "an artifact was refused before install".to_owned()
                    } else if refused_config && failed <= budget {
                        "a config could not be rendered before install".to_owned()
                    } else {
                        format!("over its failure budget of {budget}")
                    };
                    // Waves are 0-based in plans and the journal, 1-based for people.
                    let reason = format!(
                        "wave {} had {failed} failed step(s), {why}{}",
                        wave.index + 1,
                        if errors.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", errors.join("; "))
                        }
                    );
                    let end = self.rollback(ctx, &reason).await?;
                    return Ok(DriveOutcome::Finished(end));
                }
                Some(Halt::Control(Control::Pause)) => {
                    self.transition(ctx, RunState::Paused, Some("paused by request".into()))
                        .await?;
                    return Ok(DriveOutcome::Paused);
                }
                Some(Halt::Paused) => {
                    let id = ctx.run.id.clone();
                    self.transition(
                        ctx,
                        RunState::Paused,
                        Some(format!(
                            "waiting for a human: {}; `slipway resume {id}` continues (the step is observed first), `slipway promote {id}` accepts the canary as it is, `slipway abort {id}` takes the canary out and stops the release here, `slipway rollback {id} --reason TEXT` takes the whole release back",
                            paused.join("; ")
                        )),
                    )
                    .await?;
                    return Ok(DriveOutcome::Paused);
                }
                Some(Halt::Control(Control::Abort)) => {
                    let end = self.abort(ctx, "aborted by request").await?;
                    return Ok(DriveOutcome::Finished(end));
                }
                Some(Halt::Control(Control::Rollback)) => {
                    let reason = self.rollback_reason(&ctx.run.id).await;
                    let end = self.rollback(ctx, &reason).await?;
                    return Ok(DriveOutcome::Finished(end));
                }
                None => {}
            }
            if Some(wave.index) == smoke_wave
                && let Some(out) = self.checks_or_rollback(ctx, CheckPhase::Smoke).await?
            {
                return Ok(out);
            }
        }
        if smoke_wave.is_none()
            && let Some(out) = self.checks_or_rollback(ctx, CheckPhase::Smoke).await?
        {
            return Ok(out);
        }
        if let Some(out) = self.checks_or_rollback(ctx, CheckPhase::Post).await? {
            return Ok(out);
        }
        // A success that is not complete says so, naming the services left out.
        let reason = (!down.is_empty()).then(|| {
            format!(
                "{PARTIAL_PREFIX}{}",
                down.iter()
                    .map(|(s, why)| format!("{s} ({why})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        });
        self.transition(ctx, RunState::Succeeded, reason).await?;
        Ok(DriveOutcome::Finished(RunState::Succeeded))
    }

    /// The plan's `change_approved` gate, when it has one: asked through the check
    /// runner and journaled as the `pre` check `change-record`. `Some(reason)` when it did
    /// not pass — including when no runner can ask (a gate the plan shows is enforced).
    async fn change_gate(&self, ctx: &RunCtx) -> Result<Option<String>, EngineError> {
        let Some(record) = ctx.plan.gates.iter().find_map(|g| match &g.kind {
            GateKind::ChangeApproved { record, .. } => Some(record.clone()),
            _ => None,
        }) else {
            return Ok(None);
        };
        let verdict = match &self.checks {
            Some(runner) => runner.change_gate(&ctx.run.id, &ctx.plan).await,
            None => {
                Err("this engine has no check runner, so the change record was not verified".into())
            }
        };
        let (passed, measured, expected, detail) = match verdict {
            Ok(v) => (v.passed, v.measured, v.expected, v.detail),
            Err(e) => (
                false,
                format!("{}: not verified", record.as_deref().unwrap_or("no record")),
                "an approved change, inside its window".to_owned(),
                e,
            ),
        };
        self.emit(
            ctx,
            vec![EngineEvent::CheckRan {
                phase: CheckPhase::Pre,
                name: "change-record".into(),
                passed,
                measured: measured.clone(),
                expected: expected.clone(),
                detail: detail.clone(),
            }],
        )
        .await?;
        Ok((!passed).then(|| {
            format!(
                "change gate: `change-record` measured {measured}, expected {expected} ({detail})"
            )
        }))
    }

    /// Run the declared checks of one phase, every one of them even after a failure (a
    /// report with all problems beats fixing them one deploy at a time), journaling each
    /// verdict. `Some(reason)` when any failed.
    async fn run_checks(
        &self,
        ctx: &RunCtx,
        phase: CheckPhase,
    ) -> Result<Option<String>, EngineError> {
        let names: Vec<String> = ctx
            .plan
            .gates
            .iter()
            .filter_map(|g| match &g.kind {
                GateKind::Checks { phase: p, names } if *p == phase => Some(names.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        let mut failures = Vec::new();
        let mut skipped = 0usize;
        for name in &names {
            let event = match (&self.checks, ctx.plan.checks.get(name)) {
                (_, None) => EngineEvent::CheckRan {
                    phase,
                    name: name.clone(),
                    passed: false,
                    measured: "no definition in the plan".into(),
                    expected: format!("a check named `{name}` under `checks`"),
                    detail: format!(
                        "the plan gates on check `{name}` but does not carry its definition; declare it under `checks` and plan again"
                    ),
                },
                (None, Some(_)) => {
                    skipped += 1;
                    EngineEvent::CheckSkipped {
                        phase,
                        name: name.clone(),
                        reason: "this engine has no check runner, so the check did not run and did not pass".into(),
                    }
                }
                (Some(runner), Some(check)) => match runner
                    .run_gate(&ctx.run.id, phase, &ctx.plan, name, check)
                    .await
                {
                    Ok(v) => EngineEvent::CheckRan {
                        phase,
                        name: name.clone(),
                        passed: v.passed,
                        measured: v.measured,
                        expected: v.expected,
                        detail: v.detail,
                    },
                    // A check that could not run must not pass ("prefer false alarms").
                    Err(e) => EngineEvent::CheckRan {
                        phase,
                        name: name.clone(),
                        passed: false,
                        measured: "not run".into(),
                        expected: "the check to run".into(),
                        detail: e,
                    },
                },
            };
            if let EngineEvent::CheckRan {
                passed: false,
                measured,
                expected,
                detail,
                ..
            } = &event
            {
                failures.push(format!(
                    "`{name}` measured {measured}, expected {expected} ({detail})"
                ));
            }
            self.emit(ctx, vec![event]).await?;
        }
        let phase = phase_name(phase);
        if !failures.is_empty() {
            return Ok(Some(format!(
                "{phase} check(s) failed: {}",
                failures.join("; ")
            )));
        }
        if skipped == 0 {
            self.emit(
                ctx,
                vec![EngineEvent::GatePassed {
                    gate: "checks".into(),
                    detail: format!("{} {phase} check(s) passed", names.len()),
                }],
            )
            .await?;
        }
        Ok(None)
    }

    /// Run a phase's checks after steps took effect; a failure rolls the run back.
    async fn checks_or_rollback(
        &self,
        ctx: &mut RunCtx,
        phase: CheckPhase,
    ) -> Result<Option<DriveOutcome>, EngineError> {
        match self.run_checks(ctx, phase).await? {
            None => Ok(None),
            Some(reason) => {
                let end = self.rollback(ctx, &reason).await?;
                Ok(Some(DriveOutcome::Finished(end)))
            }
        }
    }

    /// Bring one step to done. `prelude`: events to commit in the same transaction as this step's
    /// `step_started` (the previous step of its service's `step_succeeded`); the wave only
    /// passes them for a step with no record yet.
    async fn run_step(
        &self,
        run: &(String, String, String),
        step: &PlannedStep,
        rec: Option<StepRecord>,
        prior: Vec<serde_json::Value>,
        mut prelude: Vec<EngineEvent>,
    ) -> Result<StepEnd, EngineError> {
        let (run_id, digest, actor) = run;
        let mut sctx = StepContext {
            run_id: run_id.clone(),
            step_id: step.id.clone(),
            key: step.idempotency_key.clone(),
            attempt: rec.as_ref().map_or(0, |r| r.attempts),
            progress: None,
            prior,
        };
        let commit = |events: Vec<EngineEvent>| self.commit(run_id, digest, actor, events);
        if rec.is_some() && !prelude.is_empty() {
            // Not expected (see above), but a resumed step decides on its own commits.
            commit(std::mem::take(&mut prelude)).await?;
        }
        if let Some(r) = &rec {
            match r.status {
                StepStatus::Succeeded => return Ok(StepEnd::Done(None)),
                StepStatus::Failed => {
                    return Ok(StepEnd::Failed(format!("{} failed earlier", step.id)));
                }
                StepStatus::Started => {
                    // Interrupted mid-step: look before doing anything.
                    let obs = self.target.observe(&sctx, &step.action).await;
                    match obs {
                        Ok(Observation::Done { evidence }) => {
                            commit(vec![
                                EngineEvent::StepObserved {
                                    step: step.id.clone(),
                                    key: sctx.key.clone(),
                                    evidence: evidence.clone(),
                                    decision: RecoveryDecision::Complete,
                                },
                                EngineEvent::StepSucceeded {
                                    step: step.id.clone(),
                                    key: sctx.key.clone(),
                                    completion: StepCompletion::Observed { evidence },
                                    output: None,
                                },
                            ])
                            .await?;
                            return Ok(StepEnd::Done(None));
                        }
                        Ok(Observation::NotDone { evidence }) => {
                            commit(vec![EngineEvent::StepObserved {
                                step: step.id.clone(),
                                key: sctx.key.clone(),
                                evidence,
                                decision: RecoveryDecision::Reapply,
                            }])
                            .await?;
                        }
                        Err(e) => {
                            let error = format!("observe the interrupted step: {e}");
                            commit(vec![EngineEvent::StepFailed {
                                step: step.id.clone(),
                                key: sctx.key.clone(),
                                error: error.clone(),
                                output: None,
                            }])
                            .await?;
                            return Ok(StepEnd::Failed(format!("{}: {error}", step.id)));
                        }
                    }
                }
                // Steps in undo states belong to a rollback, which is not driven here.
                _ => return Ok(StepEnd::Done(None)),
            }
        }
        sctx.attempt += 1;
        // The previous step's success and this start in one transaction: both are durable
        // before this step's effect begins, and a sequential service pays one fsync per
        // step instead of two.
        prelude.push(EngineEvent::StepStarted {
            step: step.id.clone(),
            key: sctx.key.clone(),
            attempt: sctx.attempt,
        });
        commit(prelude).await?;
        // Progress reports are journaled as they come, and all of them before the outcome:
        // by this task, beside the effect (a task of its own per step cost a spawn and two
        // wake-ups on every step, most of which report nothing); those that came while the
        // previous commit was written go in one commit, in order (a step on 200 hosts
        // reports 200 times nearly at once; one commit each made the step wait for 200
        // commits in a row after its last host).
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        sctx.progress = Some(ptx);
        let key = sctx.key.clone();
        let journal_progress = async {
            let mut details = Vec::new();
            while prx.recv_many(&mut details, PROGRESS_PER_COMMIT).await > 0 {
                let events = details
                    .drain(..)
                    .map(|detail| EngineEvent::StepProgress {
                        step: step.id.clone(),
                        key: key.clone(),
                        detail,
                    })
                    .collect();
                commit(events).await?;
            }
            Ok::<(), StoreError>(())
        };
        let apply = async {
            let applied = self.target.apply(&sctx, &step.action).await;
            // The step's own sink closes here, so the journaling ends once the reports
            // sent so far (and by any clone the target still holds) are in.
            sctx.progress = None;
            applied
        };
        let (applied, journaled) = tokio::join!(apply, journal_progress);
        journaled?;
        let event = match applied {
            Ok(Applied::Ran { output }) => EngineEvent::StepSucceeded {
                step: step.id.clone(),
                key: sctx.key.clone(),
                completion: StepCompletion::Applied,
                output: Some(output),
            },
            Ok(Applied::AlreadyDone { guard }) => EngineEvent::StepSucceeded {
                step: step.id.clone(),
                key: sctx.key.clone(),
                completion: StepCompletion::AlreadyDone { guard },
                output: None,
            },
            Err(TargetError::Paused { reason }) => {
                // Journaled as progress, not as an outcome: the step is still started, so
                // a resume observes it through the target before anything is re-applied.
                commit(vec![EngineEvent::StepProgress {
                    step: step.id.clone(),
                    key: sctx.key.clone(),
                    detail: serde_json::json!({ "event": "step_paused", "reason": reason }),
                }])
                .await?;
                return Ok(StepEnd::Paused(format!("{}: {reason}", step.id)));
            }
            Err(TargetError::Failed { message, output }) => EngineEvent::StepFailed {
                step: step.id.clone(),
                key: sctx.key.clone(),
                error: message,
                output: Some(output),
            },
            Err(e) => EngineEvent::StepFailed {
                step: step.id.clone(),
                key: sctx.key.clone(),
                error: e.to_string(),
                output: None,
            },
        };
        if let EngineEvent::StepFailed { error, .. } = &event {
            let end = StepEnd::Failed(format!("{}: {error}", step.id));
            commit(vec![event]).await?;
            return Ok(end);
        }
        // The success is not committed here: the wave commits it with the next step of
        // this service, or alone. Until then the step counts as running, not done.
        Ok(StepEnd::Done(Some(event)))
    }

    /// Undo completed steps in reverse plan order. Returns the final state.
    ///
    /// Before anything is called rolled back, every step is settled: a step still
    /// `started` (in flight when a sibling failed and the driver died, or when the run was
    /// rolled back by hand) is observed through its target, which waits for an attempt
    /// still running, and is undone if it completed; an undo found `undo_started` (the
    /// driver died during it) is observed before it runs again, so it never runs twice.
    async fn rollback(&self, ctx: &mut RunCtx, reason: &str) -> Result<RunState, EngineError> {
        self.transition(ctx, RunState::RollingBack, Some(reason.to_owned()))
            .await?;
        let records: HashMap<String, StepRecord> = self
            .store
            .steps(&ctx.run.id)
            .await?
            .into_iter()
            .map(|r| (r.step_id.clone(), r))
            .collect();
        let mut failures = Vec::new();
        let prior = self.prior_progress(&ctx.run.id).await?;
        let steps: Vec<PlannedStep> = ctx.plan.steps.iter().rev().cloned().collect();
        for step in steps {
            let Some(rec) = records.get(&step.id) else {
                continue;
            };
            let key = step.idempotency_key.clone();
            let sctx = StepContext {
                run_id: ctx.run.id.clone(),
                step_id: step.id.clone(),
                key: key.clone(),
                attempt: rec.attempts,
                progress: None,
                prior: prior.get(&step.id).cloned().unwrap_or_default(),
            };
            // Whether the undo's start is journaled already (a resumed undo).
            let mut undo_journaled = false;
            match rec.status {
                StepStatus::Succeeded => {}
                StepStatus::Started => {
                    if !self
                        .settle_in_flight(ctx, &step, &sctx, &mut failures, "rolls back")
                        .await?
                    {
                        continue;
                    }
                }
                // An undo interrupted by a crash, or one that failed (a rollback by hand of
                // a run that ended `failed` tries what is left again): observed first, so
                // one that completed after all is not run again.
                StepStatus::UndoStarted | StepStatus::UndoFailed => {
                    match self.target.observe_undo(&sctx, &step.action).await {
                        Ok(Observation::Done { evidence }) => {
                            self.emit(
                                ctx,
                                vec![
                                    EngineEvent::StepObserved {
                                        step: step.id.clone(),
                                        key: key.clone(),
                                        evidence,
                                        decision: RecoveryDecision::UndoComplete,
                                    },
                                    EngineEvent::UndoSucceeded {
                                        step: step.id.clone(),
                                        key: key.clone(),
                                    },
                                ],
                            )
                            .await?;
                            continue;
                        }
                        Ok(Observation::NotDone { evidence }) => {
                            self.emit(
                                ctx,
                                vec![EngineEvent::StepObserved {
                                    step: step.id.clone(),
                                    key: key.clone(),
                                    evidence,
                                    decision: RecoveryDecision::UndoAgain,
                                }],
                            )
                            .await?;
                            undo_journaled = true;
                        }
                        Err(e) => {
                            let error = format!("observe the interrupted undo: {e}");
                            failures.push(format!("{}: {error}", step.id));
                            self.emit(
                                ctx,
                                vec![EngineEvent::UndoFailed {
                                    step: step.id.clone(),
                                    key: key.clone(),
                                    error,
                                }],
                            )
                            .await?;
                            continue;
                        }
                    }
                }
                _ => continue,
            }
            let has_undo = match &step.action {
                StepAction::Exec(e) => e.undo.is_some(),
                _ => true,
            };
            if !has_undo {
                failures.push(format!("{} has no undo command", step.id));
                continue;
            }
            // What the undo reports (e.g. per host on the ssh target) is journaled
            // between its start and its outcome, as an apply's progress is.
            let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
            let sctx = StepContext {
                progress: Some(ptx),
                ..sctx
            };
            if !undo_journaled {
                self.emit(
                    ctx,
                    vec![EngineEvent::UndoStarted {
                        step: step.id.clone(),
                        key: key.clone(),
                    }],
                )
                .await?;
            }
            let undone = self.target.undo(&sctx, &step.action).await;
            drop(sctx);
            let mut progress = Vec::new();
            while let Ok(detail) = prx.try_recv() {
                progress.push(EngineEvent::StepProgress {
                    step: step.id.clone(),
                    key: key.clone(),
                    detail,
                });
            }
            if !progress.is_empty() {
                self.emit(ctx, progress).await?;
            }
            let event = match undone {
                Ok(_) => EngineEvent::UndoSucceeded {
                    step: step.id.clone(),
                    key,
                },
                Err(e) => {
                    failures.push(format!("{}: {e}", step.id));
                    EngineEvent::UndoFailed {
                        step: step.id.clone(),
                        key,
                        error: e.to_string(),
                    }
                }
            };
            self.emit(ctx, vec![event]).await?;
        }
        let end = if failures.is_empty() {
            RunState::RolledBack
        } else {
            RunState::Failed
        };
        let why = if failures.is_empty() {
            None
        } else {
            Some(format!("could not roll back: {}", failures.join("; ")))
        };
        self.transition(ctx, end, why).await?;
        Ok(end)
    }

    /// Settle a step found `started` during a rollback or an abort (`why`): observe it
    /// (the target waits for an attempt still running) and journal what was found.
    /// `true` when it completed, so a rollback must undo it; a step not done is recorded
    /// failed and never applied again, after whatever part of it is in place was taken
    /// back ([`Target::retract`]: a paused canary leaves the traffic); one that cannot be
    /// observed, or whose partial effect cannot be taken back, is recorded failed and
    /// counted in `failures` (the run cannot be called rolled back while nobody knows
    /// whether it took effect).
    async fn settle_in_flight(
        &self,
        ctx: &RunCtx,
        step: &PlannedStep,
        sctx: &StepContext,
        failures: &mut Vec<String>,
        why: &str,
    ) -> Result<bool, EngineError> {
        let key = sctx.key.clone();
        match self.target.observe(sctx, &step.action).await {
            Ok(Observation::Done { evidence }) => {
                self.emit(
                    ctx,
                    vec![
                        EngineEvent::StepObserved {
                            step: step.id.clone(),
                            key: key.clone(),
                            evidence: evidence.clone(),
                            decision: RecoveryDecision::Complete,
                        },
                        EngineEvent::StepSucceeded {
                            step: step.id.clone(),
                            key,
                            completion: StepCompletion::Observed { evidence },
                            output: None,
                        },
                    ],
                )
                .await?;
                Ok(true)
            }
            Ok(Observation::NotDone { evidence }) => {
                self.emit(
                    ctx,
                    vec![EngineEvent::StepObserved {
                        step: step.id.clone(),
                        key: key.clone(),
                        evidence,
                        decision: RecoveryDecision::Abandon,
                    }],
                )
                .await?;
                let retracted = self.target.retract(sctx, &step.action).await;
                let error = match &retracted {
                    Ok(Some(what)) => {
                        self.emit(
                            ctx,
                            vec![EngineEvent::StepProgress {
                                step: step.id.clone(),
                                key: key.clone(),
                                detail: serde_json::json!({"event": "retracted", "detail": what}),
                            }],
                        )
                        .await?;
                        format!(
                            "interrupted and found not done while the run {why}; what was in place of it was taken back ({what}); not applied again"
                        )
                    }
                    Ok(None) => format!(
                        "interrupted and found not done while the run {why}; not applied again"
                    ),
                    Err(e) => {
                        let error = format!(
                            "interrupted and found not done while the run {why}, and what is in place of it could not be taken back: {e}; check it by hand"
                        );
                        failures.push(format!("{}: {error}", step.id));
                        error
                    }
                };
                self.emit(
                    ctx,
                    vec![EngineEvent::StepFailed {
                        step: step.id.clone(),
                        key,
                        error,
                        output: None,
                    }],
                )
                .await?;
                Ok(false)
            }
            Err(e) => {
                let error = format!(
                    "observe the interrupted step while the run {why}: {e}; whether it took effect is unknown, so check it by hand"
                );
                failures.push(format!("{}: {error}", step.id));
                self.emit(
                    ctx,
                    vec![EngineEvent::StepFailed {
                        step: step.id.clone(),
                        key,
                        error,
                        output: None,
                    }],
                )
                .await?;
                Ok(false)
            }
        }
    }
}

/// The plan's waived compatibility findings as journal events.
fn waiver_events(plan: &Plan) -> Vec<EngineEvent> {
    plan.waivers
        .iter()
        .map(|w| EngineEvent::WaiverApplied {
            finding: w.finding.clone(),
            message: w.message.clone(),
            reason: w.reason.clone(),
            by: w.by.clone(),
        })
        .collect()
}

/// What approvals a run needs: the plan's approvals gate, and with a freeze override at
/// least one approver who is not the author.
pub fn approval_need(plan: &Plan, run: &RunRecord) -> ApprovalNeed {
    let mut need = ApprovalNeed {
        required: 0,
        groups: Vec::new(),
        exclude_author: false,
    };
    for g in &plan.gates {
        if let GateKind::Approvals {
            required,
            groups,
            four_eyes,
        } = &g.kind
        {
            need.required = need.required.max(*required);
            need.groups.extend(groups.iter().cloned());
            need.exclude_author |= *four_eyes;
        }
    }
    if run.override_reason.is_some() {
        need.required = need.required.max(1);
        need.exclude_author = true;
    }
    need
}

fn parse_plan(run: &RunRecord) -> Result<Plan, EngineError> {
    serde_json::from_str(&run.plan_json).map_err(|e| EngineError::Plan {
        run: run.id.clone(),
        message: e.to_string(),
    })
}

/// A run id: sortable by creation time, unique per process and instant.
fn new_run_id(now: Timestamp, digest: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{now}{digest}{}{n}", std::process::id());
    let h = hex::encode(Sha256::digest(seed.as_bytes()));
    let stamp = now.strftime("%Y%m%d-%H%M%S");
    format!("{stamp}-{}", &h[..6])
}
