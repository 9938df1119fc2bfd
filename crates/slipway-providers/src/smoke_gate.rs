//! Smoke tests against an isolated candidate: the plan's `phase: smoke` checks run against
//! each candidate instance's own address (`{base}` in a check's URL or address stands for
//! it) after the instance is ready and before the router is given it, through
//! [`slipway_rollout::run_canary_checked`]. A failure rolls the canary back before a
//! single request of real traffic reaches it; the verdict names each failing check.
//!
//! Placeholders `{{ vars.x }}` are filled from the plan's environment; a check still
//! naming a secret or a placeholder fails (checks never resolve secrets).

use std::time::Duration;

use slipway_checks::{Outcome, smoke};
use slipway_model::plan::Plan;
use slipway_model::spec::{Check, CheckPhase};
use slipway_rollout::{BoxFuture, Instance, PreTraffic};

/// The plan's smoke checks, ready to run against candidate instances.
pub struct SmokeGate {
    checks: Vec<(String, Check)>,
}

impl SmokeGate {
    /// The `phase: smoke` checks of `plan` (none: `None`, nothing to gate on).
    pub fn from_plan(plan: &Plan) -> Option<Self> {
        let vars = || plan.env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let checks: Vec<(String, Check)> = plan
            .checks
            .iter()
            .filter(|(_, c)| c.phase == CheckPhase::Smoke && c.perf.is_none())
            .map(|(n, c)| {
                let mut c = c.clone();
                if let Some(h) = c.http.as_mut() {
                    h.url = slipway_model::text::fill_vars(&h.url, vars());
                }
                if let Some(t) = c.tcp.as_mut() {
                    *t = slipway_model::text::fill_vars(t, vars());
                }
                if let Some(s) = c.sql.as_mut() {
                    s.database = slipway_model::text::fill_vars(&s.database, vars());
                }
                (n.clone(), c)
            })
            .collect();
        (!checks.is_empty()).then_some(Self { checks })
    }

    /// Gate on exactly these checks.
    pub fn new(checks: Vec<(String, Check)>) -> Self {
        Self { checks }
    }
}

impl PreTraffic for SmokeGate {
    fn check<'a>(&'a self, candidate: &'a [Instance]) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let mut passed = Vec::new();
            let mut failed = Vec::new();
            for i in candidate {
                let base = i.addr.to_string();
                for (name, c) in &self.checks {
                    let timeout = c
                        .timeout
                        .as_ref()
                        .and_then(|t| t.get().ok())
                        .unwrap_or(smoke::DEFAULT_TIMEOUT)
                        .min(Duration::from_secs(60));
                    let v = smoke::run(name, c, Some(&base), timeout).await;
                    let line = format!(
                        "`{name}` on {} ({}): measured {}, expected {}",
                        i.id, v.target, v.measured, v.expected
                    );
                    // Only a pass passes: a check that could not measure is a failure.
                    if v.verdict == Outcome::Pass {
                        passed.push(line);
                    } else {
                        failed.push(match &v.hint {
                            Some(h) => format!("{line} — {h}"),
                            None => line,
                        });
                    }
                }
            }
            if failed.is_empty() {
                Ok(format!(
                    "{} smoke check(s) passed: {}",
                    passed.len(),
                    passed.join("; ")
                ))
            } else {
                Err(failed.join("; "))
            }
        })
    }
}
