//! The `Target` extension point: where steps take effect. Implementations live in
//! `slipway-providers`; they hold no state of their own beyond what they can observe on the
//! target itself (files, markers), and the engine journals what goes in and out.

use serde::{Deserialize, Serialize};
use slipway_model::plan::StepAction;

use crate::BoxFuture;

/// Identity of one application of a step.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Run id.
    pub run_id: String,
    /// Step id, `service/step`.
    pub step_id: String,
    /// The plan's idempotency key for the step.
    pub key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Where a long step reports progress; each value is journaled as a
    /// `step_progress` event before the step's outcome.
    pub progress: Option<ProgressSink>,
    /// What this step reported in earlier attempts and undos (its `step_progress`
    /// details, oldest first): a step applied again after a restart continues from what
    /// it recorded (a canary at its step and weight), and an undo restores what the
    /// step's own run recorded it replaced. Empty for a first attempt.
    pub prior: Vec<serde_json::Value>,
}

/// A channel to the journal for a step's progress reports.
pub type ProgressSink = tokio::sync::mpsc::UnboundedSender<serde_json::Value>;

impl StepContext {
    /// Report progress (dropped silently when nobody journals it).
    pub fn report(&self, detail: serde_json::Value) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(detail);
        }
    }
}

/// Captured output of a command, bounded (the tail is kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutput {
    /// Exit code, if the process exited normally.
    pub exit_code: Option<i32>,
    /// Tail of stdout.
    pub stdout: String,
    /// Tail of stderr.
    pub stderr: String,
    /// Whether any output was cut off.
    pub truncated: bool,
}

/// The result of applying a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The step ran.
    Ran {
        /// Its output.
        output: StepOutput,
    },
    /// A guard showed the step was already done; nothing ran.
    AlreadyDone {
        /// Which guard and what it saw, e.g. `creates: /srv/app exists`.
        guard: String,
    },
}

/// What a target can tell about a step without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The step's effect is in place.
    Done {
        /// What shows it.
        evidence: String,
    },
    /// The step's effect is not in place (or cannot be shown to be).
    NotDone {
        /// What was checked.
        evidence: String,
    },
}

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The command ran and failed.
    #[error("{message}")]
    Failed {
        /// What failed.
        message: String,
        /// Its output.
        output: StepOutput,
    },
    /// The target cannot perform this kind of step.
    #[error("the `{target}` target cannot run a `{action}` step; use a target that supports it")]
    Unsupported {
        /// Target kind.
        target: &'static str,
        /// Step action kind.
        action: &'static str,
    },
    /// The target itself could not be used.
    #[error("{0}")]
    Io(String),
    /// The step needs a human before it can go on (e.g. a canary whose analysis was
    /// inconclusive). Neither done nor failed: the run pauses, and resuming observes the
    /// step and carries on.
    #[error("paused: {reason}")]
    Paused {
        /// Why, for the person who must decide.
        reason: String,
    },
}

/// Where steps take effect. Every operation must be idempotent: `apply` of a step already
/// in effect must change nothing, and `observe` must change nothing at all.
pub trait Target: Send + Sync {
    /// Kind name, e.g. `exec`.
    fn kind(&self) -> &'static str;
    /// Bring the step's effect about (or find it already there).
    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>>;
    /// Tell whether the step's effect is in place, without changing anything. Must wait for
    /// any attempt still running from a previous orchestrator process before answering.
    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>>;
    /// Reverse the step's effect (rollback). `Ok(None)` when the step has nothing to undo.
    ///
    /// An undo gets the guarantees of an apply: the engine journals `undo_started` before
    /// calling it, and a target whose undo can outlive the orchestrator (a command in a
    /// process group of its own, a shell on another host) must run it under the step's
    /// lock and leave evidence of its completion for [`Target::observe_undo`].
    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>>;
    /// Take back whatever part of a step found *not done* is in place, applying nothing:
    /// called while a run is rolled back or aborted for a step that was interrupted (a
    /// canary paused at 20 % is not done, yet takes traffic). `Ok(Some(what))` says what
    /// was taken back. The default does nothing: a command found not done left nothing
    /// the target can tell apart.
    fn retract<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>> {
        Box::pin(async { Ok(None) })
    }
    /// Tell whether the step's undo is complete, without changing anything: asked after a
    /// restart for a step journaled `undo_started` but not finished, before its undo runs
    /// again. Must wait for an undo still running from a previous orchestrator process.
    /// `Done` means the undo is not run again; an error means nobody can tell (the engine
    /// records the undo as failed rather than run it blindly).
    ///
    /// The default answers `NotDone`: right for targets whose undo dies with the
    /// orchestrator (in-process work: the run's claim already keeps two drivers apart) and
    /// reverses only what it finds in place, so running it again is safe.
    fn observe_undo<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async {
            Ok(Observation::NotDone {
                evidence: format!(
                    "the `{}` target keeps no undo record; its undo runs again and reverses only what it finds in place",
                    self.kind()
                ),
            })
        })
    }
    /// End the connections the target keeps between steps (an ssh target's sessions and
    /// the step helpers on its hosts), bounded in time by the target: called by whoever
    /// drove a run once it is done with it, so they end then rather than at the process's
    /// exit (or, in a server, whenever the target is dropped). Nothing to report: the
    /// run's outcome is what counts. A target used again afterwards connects anew. The
    /// default does nothing: most targets keep no connection.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The name of a step action's kind, for messages.
pub fn action_kind(action: &StepAction) -> &'static str {
    match action {
        StepAction::Exec(_) => "exec",
        StepAction::Migrate { .. } => "migrate",
        StepAction::Deploy { .. } => "deploy",
        StepAction::VerifyArtifact { .. } => "verify_artifact",
        StepAction::RenderConfig { .. } => "render_config",
    }
}
