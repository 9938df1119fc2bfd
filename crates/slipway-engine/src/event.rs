//! Typed engine events: what the journal stores, what the audit chain hashes, and what the
//! CLI and the server render. Only the CLI prints them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_model::progress::Progress;
use slipway_model::spec::CheckPhase;

use crate::target::StepOutput;

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, gates not yet evaluated.
    Pending,
    /// Outside every deployment window; waits for the next one.
    WaitingForWindow,
    /// Not enough valid approvals for the plan digest yet.
    WaitingForApproval,
    /// Steps are being applied.
    Running,
    /// Stopped by a human between steps; `resume` continues.
    Paused,
    /// Undoing completed steps after a failure.
    RollingBack,
    /// Every step succeeded.
    Succeeded,
    /// A step failed and the run could not be rolled back cleanly.
    Failed,
    /// A step failed and completed steps were undone.
    RolledBack,
    /// Stopped for good by a human.
    Aborted,
}

impl RunState {
    /// No further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Aborted
        )
    }
    /// The snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::WaitingForWindow => "waiting_for_window",
            Self::WaitingForApproval => "waiting_for_approval",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::RollingBack => "rolling_back",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }
    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// The state of one step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Started; its outcome is not journaled yet.
    Started,
    /// Done (applied, or found done by a guard or by observation).
    Succeeded,
    /// Failed.
    Failed,
    /// Its undo command was started.
    UndoStarted,
    /// Undone by rollback.
    Undone,
    /// Its undo command failed.
    UndoFailed,
}

impl StepStatus {
    /// The snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::UndoStarted => "undo_started",
            Self::Undone => "undone",
            Self::UndoFailed => "undo_failed",
        }
    }
    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// How a step came to be done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum StepCompletion {
    /// The target ran it.
    Applied,
    /// A guard (`creates`, `unless`, or the step's completion marker) showed it was already
    /// done, so nothing ran.
    AlreadyDone {
        /// Which guard, with its evidence.
        guard: String,
    },
    /// After a restart the target was observed and the step found complete.
    Observed {
        /// What was observed.
        evidence: String,
    },
}

/// What to do with a step found started-but-not-finished after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryDecision {
    /// The target shows it done: mark it complete without re-running.
    Complete,
    /// The target shows it not done: apply it again (its guards still hold).
    Reapply,
    /// The target shows it not done while the run rolls back: it is not applied again,
    /// and is recorded failed (nothing of it to undo).
    Abandon,
    /// Its interrupted undo is shown complete: recorded undone without running it again.
    UndoComplete,
    /// Its interrupted undo is shown not complete (and no attempt still runs): the undo
    /// runs again.
    UndoAgain,
}

/// A control request from a human, picked up by whoever drives the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Stop starting steps; finish those in flight; go to Paused.
    Pause,
    /// Stop starting steps; take a canary in flight out of service; keep what completed;
    /// go to Aborted.
    Abort,
    /// Stop starting steps; take a canary in flight out of service; undo every completed
    /// step in reverse order; go to RolledBack.
    Rollback,
}

impl Control {
    /// The snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
        }
    }
    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "abort" => Some(Self::Abort),
            "rollback" => Some(Self::Rollback),
            _ => None,
        }
    }
}

/// Everything that happens to a run. Journaled, hashed into the audit chain, streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EngineEvent {
    /// A run was created from a plan.
    RunCreated {
        /// Release name.
        release: String,
        /// Release version.
        version: String,
        /// Environment.
        environment: String,
        /// Plan digest.
        digest: String,
        /// Reason given with `--override-freeze`, if any.
        override_freeze: Option<String>,
        /// sha256 (hex) of the plan JSON stored with the run (journal format 6 on; the
        /// store fills it in), so an edited stored plan is caught by `audit verify`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_sha256: Option<String>,
        /// The run's working directory as stored (journal format 6 on; the store fills it
        /// in).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
    },
    /// A deploy was refused before a run existed (a freeze).
    DeployRefused {
        /// Plan digest.
        digest: String,
        /// Environment.
        environment: String,
        /// Why.
        reason: String,
    },
    /// The run changed state.
    StateChanged {
        /// Previous state.
        from: RunState,
        /// New state.
        to: RunState,
        /// Why, when it is not obvious.
        reason: Option<String>,
    },
    /// A gate holds the run.
    GateWaiting {
        /// `windows`, `approvals`, `freezes`.
        gate: String,
        /// What is missing, for a human.
        detail: String,
        /// When the gate opens by itself (a window), if known.
        until: Option<Timestamp>,
    },
    /// A gate let the run through.
    GatePassed {
        /// Gate name.
        gate: String,
        /// Why it passed.
        detail: String,
    },
    /// Someone approved the run's plan digest.
    Approved {
        /// Pseudonymous id of the approver.
        approver: String,
        /// The digest approved.
        digest: String,
        /// The approver's groups as the store records them when the approval was given.
        groups: Vec<String>,
    },
    /// A human asked the driver to pause, abort or roll back.
    ControlRequested {
        /// What was asked.
        control: Control,
        /// Why (a rollback's reason, audited with it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A human asked the driver of a run's canary to resume it (past a pause) or promote
    /// it: a one-shot request, kept in the journal so a driver on any machine sharing the
    /// store hears it, and consumed once ([`EngineEvent::InterventionSettled`]). A newer
    /// request replaces an unsettled older one.
    InterventionRequested {
        /// `resume` or `promote`.
        intervention: String,
    },
    /// The request at journal entry `request` (and every older one) was settled: `taken`
    /// by the driver, which acts on it next, or `dropped` because the canary it was for
    /// had ended when the drive did.
    InterventionSettled {
        /// Sequence number of the request's journal entry.
        request: i64,
        /// `taken` or `dropped`.
        outcome: String,
    },
    /// A wave began.
    WaveStarted {
        /// Wave index.
        wave: u32,
        /// Steps of the wave.
        steps: u32,
    },
    /// A wave ended.
    WaveFinished {
        /// Wave index.
        wave: u32,
        /// Failed steps.
        failed: u32,
    },
    /// A step is about to be applied (committed before the target is touched).
    StepStarted {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A step found started-but-not-finished (or its undo found started-but-not-finished)
    /// was observed through its target.
    StepObserved {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
        /// What was seen.
        evidence: String,
        /// What the engine decided.
        decision: RecoveryDecision,
    },
    /// A step is done.
    StepSucceeded {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
        /// How.
        completion: StepCompletion,
        /// Captured output (bounded).
        output: Option<StepOutput>,
    },
    /// A step failed.
    StepFailed {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
        /// Why.
        error: String,
        /// Captured output (bounded).
        output: Option<StepOutput>,
    },
    /// Rollback started a step's undo.
    UndoStarted {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
    },
    /// Rollback undid a step.
    UndoSucceeded {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
    },
    /// A step's undo failed.
    UndoFailed {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
        /// Why.
        error: String,
    },
    /// Progress inside a long step, as reported by its target: for a canary, every weight
    /// change, analysis measurement and rollback decision.
    StepProgress {
        /// Step id.
        step: String,
        /// Idempotency key.
        key: String,
        /// What happened (target-defined JSON; a rollout event for deploys).
        detail: serde_json::Value,
    },
    /// A declared check ran as a gate; a failure stops the run (before any step for
    /// `pre`, by rollback for `smoke` and `post`).
    CheckRan {
        /// When it ran.
        phase: CheckPhase,
        /// Check name, as declared under `checks`.
        name: String,
        /// Whether it passed.
        passed: bool,
        /// What was measured.
        measured: String,
        /// What was expected.
        expected: String,
        /// What was checked, and for a failure what to do.
        detail: String,
    },
    /// A breaking-compatibility finding the spec waives, recorded when the run starts so
    /// the acceptance (what, why, who decided) is in the audit chain with the run.
    WaiverApplied {
        /// The finding id.
        finding: String,
        /// What the finding said.
        message: String,
        /// Why it is acceptable.
        reason: String,
        /// Who decided.
        by: String,
    },
    /// A declared check was not run because the engine has no check runner: reported so a
    /// deploy never looks checked when it was not.
    CheckSkipped {
        /// When it would have run.
        phase: CheckPhase,
        /// Check name.
        name: String,
        /// Why it was skipped.
        reason: String,
    },
    /// A governance change outside any run: an access grant or revoke, an API token issued
    /// or revoked, an access review opened, decided or closed, a retention policy change,
    /// an archive. Appended to the audit chain so "who could do what, and who changed it"
    /// is as tamper-evident as the runs; never carries a secret (a token's id, not its value).
    Governance {
        /// What changed (`access_granted`, `token_revoked`, `archived`, ...): the audit
        /// entry's outcome.
        action: String,
        /// The facts of the change.
        detail: serde_json::Value,
    },
}

impl EngineEvent {
    /// The event's name, as in its JSON `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunCreated { .. } => "run_created",
            Self::DeployRefused { .. } => "deploy_refused",
            Self::StateChanged { .. } => "state_changed",
            Self::GateWaiting { .. } => "gate_waiting",
            Self::GatePassed { .. } => "gate_passed",
            Self::Approved { .. } => "approved",
            Self::ControlRequested { .. } => "control_requested",
            Self::InterventionRequested { .. } => "intervention_requested",
            Self::InterventionSettled { .. } => "intervention_settled",
            Self::WaveStarted { .. } => "wave_started",
            Self::WaveFinished { .. } => "wave_finished",
            Self::StepStarted { .. } => "step_started",
            Self::StepObserved { .. } => "step_observed",
            Self::StepSucceeded { .. } => "step_succeeded",
            Self::StepFailed { .. } => "step_failed",
            Self::UndoStarted { .. } => "undo_started",
            Self::UndoSucceeded { .. } => "undo_succeeded",
            Self::UndoFailed { .. } => "undo_failed",
            Self::StepProgress { .. } => "step_progress",
            Self::CheckRan { .. } => "check_ran",
            Self::CheckSkipped { .. } => "check_skipped",
            Self::Governance { .. } => "governance",
            Self::WaiverApplied { .. } => "waiver_applied",
        }
    }

    /// The typed view of a step-progress entry: the step and what it reported.
    pub fn progress(&self) -> Option<(&str, Progress)> {
        match self {
            Self::StepProgress { step, detail, .. } => Some((step, Progress::of(detail))),
            _ => None,
        }
    }

    /// The outcome recorded in the audit entry.
    pub fn outcome(&self) -> String {
        match self {
            Self::StateChanged { to, .. } => to.as_str().to_owned(),
            Self::StepSucceeded { completion, .. } => match completion {
                StepCompletion::Applied => "applied".into(),
                StepCompletion::AlreadyDone { .. } => "already_done".into(),
                StepCompletion::Observed { .. } => "observed_done".into(),
            },
            Self::StepFailed { .. } | Self::UndoFailed { .. } => "failed".into(),
            Self::DeployRefused { .. } => "refused".into(),
            Self::CheckRan { passed: true, .. } => "passed".into(),
            Self::CheckRan { passed: false, .. } => "failed".into(),
            Self::CheckSkipped { .. } => "skipped".into(),
            Self::Governance { action, .. } => action.clone(),
            Self::WaiverApplied { .. } => "waived".into(),
            Self::StepProgress { detail, .. } => Progress::of(detail).kind(),
            Self::StepObserved { decision, .. } => match decision {
                RecoveryDecision::Complete => "complete".into(),
                RecoveryDecision::Reapply => "reapply".into(),
                RecoveryDecision::Abandon => "abandon".into(),
                RecoveryDecision::UndoComplete => "undo_complete".into(),
                RecoveryDecision::UndoAgain => "undo_again".into(),
            },
            _ => "ok".into(),
        }
    }

    /// The step row this event updates: (step id, key, new status).
    pub fn step_effect(&self) -> Option<(&str, &str, StepStatus)> {
        match self {
            Self::StepStarted { step, key, .. } => Some((step, key, StepStatus::Started)),
            Self::StepSucceeded { step, key, .. } => Some((step, key, StepStatus::Succeeded)),
            Self::StepFailed { step, key, .. } => Some((step, key, StepStatus::Failed)),
            Self::UndoStarted { step, key } => Some((step, key, StepStatus::UndoStarted)),
            Self::UndoSucceeded { step, key } => Some((step, key, StepStatus::Undone)),
            Self::UndoFailed { step, key, .. } => Some((step, key, StepStatus::UndoFailed)),
            _ => None,
        }
    }
}

/// A journaled event as read back or streamed: who, when, which run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Journal sequence number (0 when not yet assigned).
    pub seq: i64,
    /// Run id (empty for events outside a run).
    pub run_id: String,
    /// When.
    pub at: Timestamp,
    /// Pseudonymous id of the actor.
    pub actor: String,
    /// The event.
    pub event: EngineEvent,
}
