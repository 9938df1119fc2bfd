//! Slipway's durable execution engine.
//!
//! A run is a state machine driven by a journal: every transition is committed to the
//! [`Store`] before its effect counts as done, so a run survives the orchestrator dying at
//! any instant. Steps carry the plan's idempotency keys; a step found started-but-not-
//! finished after a restart is first *observed* through its [`Target`], then completed or
//! re-applied, and the journal records which.
//!
//! Architecture invariant: this crate does IO only through the [`Store`], [`Target`],
//! [`CheckRunner`] and [`Clock`] traits. It knows no SQL, no SSH, no HTTP and never spawns
//! a process; the store and providers crates depend on it for these traits, never the
//! other way round.

pub mod audit;
pub mod checks;
pub mod clock;
pub mod engine;
pub mod event;
pub mod evidence;
pub mod gates;
pub mod noop;
pub mod store;
pub mod store_wrap;
pub mod target;
mod wave;

pub use checks::{CheckRunner, CheckVerdict};
pub use clock::{Clock, FakeClock, SystemClock};
pub use engine::{DriveOptions, DriveOutcome, Engine, EngineError, NewRunRequest};
pub use event::{EngineEvent, Notice, RunState, StepStatus};
pub use store::{Store, StoreError};
pub use target::{Applied, Observation, StepContext, StepOutput, Target, TargetError};

/// A boxed, sendable future: what the object-safe traits of this crate return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
