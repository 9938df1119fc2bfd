//! The `CheckRunner` extension point: how the engine runs the plan's declared checks
//! (`pre`, `smoke`, `post`) as gates without doing any IO itself.
//!
//! The engine decides *when* a check runs and what its verdict does to the run; the runner
//! (in the CLI, over `slipway-checks`) decides *how* to connect, request or query. Each
//! result is journaled as a `check_ran` event, so the audit chain shows what was measured
//! against what was expected.

use slipway_model::plan::Plan;
use slipway_model::spec::Check;

use crate::BoxFuture;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckVerdict {
    /// Whether the run may go on. A check that could not measure must not pass.
    pub passed: bool,
    /// What was measured, with units (`HTTP 503`, `connection refused`).
    pub measured: String,
    /// What was expected (`HTTP 200`, `a TCP connection`).
    pub expected: String,
    /// What was checked and, for a failure, what to do about it.
    pub detail: String,
}

/// Runs declared checks. Implementations observe the environment and never change it.
pub trait CheckRunner: Send + Sync {
    /// Run the check `name` of `plan`. The plan is passed so the runner can fill
    /// placeholders (`{{ vars.x }}`) from the environment it deploys to: the engine is
    /// built before the plan of a resumed run is read. `Err` when the check could not be
    /// run at all; the engine treats that as a failure, never as a pass.
    fn run<'a>(
        &'a self,
        plan: &'a Plan,
        name: &'a str,
        check: &'a Check,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>>;

    /// Run check `name` as a gate of `phase` in run `run_id`: what the engine calls. A
    /// check that spans the deploy (a perf baseline taken `pre` and verified `post`) needs
    /// both to find what it kept; the default ignores them.
    fn run_gate<'a>(
        &'a self,
        run_id: &'a str,
        phase: slipway_model::spec::CheckPhase,
        plan: &'a Plan,
        name: &'a str,
        check: &'a Check,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>> {
        let _ = (run_id, phase);
        self.run(plan, name, check)
    }

    /// Check the plan's external change record (a `change_approved` gate): it exists, is
    /// approved and the run is inside its implementation window. The engine asks before
    /// the first wave. A runner that cannot ask any change system must not pass it, so the
    /// default refuses.
    fn change_gate<'a>(
        &'a self,
        run_id: &'a str,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>> {
        let _ = (run_id, plan);
        Box::pin(async {
            Err("this check runner has no change-management client, so the change record was not verified".to_owned())
        })
    }
}

/// The phase's name as written in specs: `pre`, `smoke`, `post`.
pub fn phase_name(phase: slipway_model::spec::CheckPhase) -> &'static str {
    use slipway_model::spec::CheckPhase;
    match phase {
        CheckPhase::Pre => "pre",
        CheckPhase::Smoke => "smoke",
        CheckPhase::Post => "post",
    }
}
