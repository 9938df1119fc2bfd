//! A target whose steps have no effect: for tests of the engine's own behaviour and for
//! the durability benchmark, where only the journal's cost should count.

use slipway_model::plan::StepAction;

use crate::BoxFuture;
use crate::target::{Applied, Observation, StepContext, StepOutput, Target, TargetError};

/// Applies every step instantly and observes every step as done.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTarget;

impl Target for NoopTarget {
    fn kind(&self) -> &'static str {
        "noop"
    }
    fn apply<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async {
            Ok(Applied::Ran {
                output: StepOutput::default(),
            })
        })
    }
    fn observe<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async {
            Ok(Observation::Done {
                evidence: "noop steps have no effect to observe".into(),
            })
        })
    }
    fn undo<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async { Ok(None) })
    }
}
