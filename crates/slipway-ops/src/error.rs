//! The error of every operation: a kind (which the front ends map to exit codes or HTTP
//! statuses), a message that reads after "failed to …", and typed hints — what to do
//! next, as data, so the CLI can name a command and its flags while the server names an
//! API call, and neither leaks into the library.

use std::path::PathBuf;

use slipway_engine::{EngineError, StoreError};

/// What kind of failure, independent of any front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input (a spec, a name, an argument): nothing was changed.
    Input,
    /// What was named does not exist (a run id).
    NotFound,
    /// A gate or a rule blocks the operation: a lease, a window, a finding, a role.
    Blocked,
    /// The operation ran and failed.
    Failure,
    /// The store cannot be used.
    Store,
    /// The caller could not be authenticated.
    Unauthenticated,
    /// Evidence does not verify.
    Evidence,
    /// A bug.
    Internal,
}

/// An operation a hint may point at, on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunAction {
    /// Continue it.
    Resume,
    /// Approve its plan.
    Approve,
    /// Abort it.
    Abort,
    /// Roll it back.
    Rollback,
    /// Look at it.
    Status,
}

/// What to do next, as data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "hint", rename_all = "snake_case")]
pub enum Hint {
    /// Advice that names no front-end action.
    Text {
        /// The advice.
        text: String,
    },
    /// List runs to find the right id.
    ListRuns,
    /// Use another store.
    ChooseStore,
    /// Look at the plan of a spec for an environment.
    ShowPlan {
        /// The spec.
        file: PathBuf,
        /// The environment.
        environment: String,
    },
    /// Run some of an environment's readiness checks.
    Check {
        /// The spec.
        file: PathBuf,
        /// The environment.
        environment: String,
        /// Which checks.
        only: String,
    },
    /// Act on a run.
    Run {
        /// What to do.
        action: RunAction,
        /// The run.
        run: String,
    },
    /// Wait for an environment's lease instead of being refused.
    WaitForLease {
        /// The environment.
        environment: String,
    },
    /// Force a lease free (a crashed holder).
    ForceRelease {
        /// The environment.
        environment: String,
    },
    /// Ask an admin for a role.
    AskGrant {
        /// Who.
        subject: String,
        /// Which role.
        role: String,
        /// Where.
        environment: String,
    },
    /// Get an API token.
    GetToken,
}

impl Hint {
    /// A plain-text hint.
    pub fn text(t: impl Into<String>) -> Self {
        Self::Text { text: t.into() }
    }
}

/// An operation's failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OpsError {
    /// The kind.
    pub kind: ErrorKind,
    /// What failed, a sentence or a "failed to …" fragment.
    pub message: String,
    /// What to do next.
    pub hints: Vec<Hint>,
}

impl OpsError {
    /// An error of a kind with no hint.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hints: Vec::new(),
        }
    }

    /// Bad input.
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Input, message)
    }

    /// Blocked by a gate or rule.
    pub fn blocked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Blocked, message)
    }

    /// Ran and failed.
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failure, message)
    }

    /// A bug.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// With a hint.
    pub fn hint(mut self, h: Hint) -> Self {
        self.hints.push(h);
        self
    }
}

impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        let (kind, hint) = match &e {
            StoreError::NoSuchRun(_) => (ErrorKind::NotFound, Some(Hint::ListRuns)),
            StoreError::Claimed(_) | StoreError::LiveRunExists { .. } => (ErrorKind::Blocked, None),
            StoreError::Incompatible(_) | StoreError::Unavailable { .. } => {
                (ErrorKind::Store, Some(Hint::ChooseStore))
            }
            _ => (ErrorKind::Store, None),
        };
        Self {
            kind,
            message: format!("failed to {e}"),
            hints: hint.into_iter().collect(),
        }
    }
}

impl From<EngineError> for OpsError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::Frozen { .. } | EngineError::SelfApproval { .. } => {
                Self::blocked(format!("failed to {e}"))
            }
            EngineError::DigestMismatch { ref run, .. } => {
                let run = run.clone();
                Self::input(format!("failed to {e}")).hint(Hint::Run {
                    action: RunAction::Status,
                    run,
                })
            }
            EngineError::Terminal { .. } | EngineError::RollingBack { .. } => {
                Self::input(format!("failed to {e}"))
            }
            other => Self::internal(format!("failed to {other}")),
        }
    }
}

impl From<slipway_govern::GovernError> for OpsError {
    fn from(e: slipway_govern::GovernError) -> Self {
        use slipway_govern::GovernError;
        match e {
            GovernError::Store(s) => s.into(),
            e @ (GovernError::NoSuchRun(_)
            | GovernError::BadDate { .. }
            | GovernError::UnknownFramework(_)) => Self::input(format!("failed to {e}")),
            e @ GovernError::Write { .. } => Self::failure(format!("failed to {e}"))
                .hint(Hint::text("choose a writable --out directory")),
            e @ GovernError::Tampered(_) => Self::new(ErrorKind::Evidence, format!("failed to {e}"))
                .hint(Hint::text(
                    "nothing was written; find what changed with `slipway audit verify` and restore it from a backup or an export",
                )),
        }
    }
}

/// Results of operations.
pub type OpsResult<T> = Result<T, OpsError>;
