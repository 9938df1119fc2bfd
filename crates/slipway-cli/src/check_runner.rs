//! The check runner `deploy` gives the engine: runs a plan's declared checks (http, tcp,
//! command, sql) with `slipway_checks::smoke`, as `slipway check` does, so a gate and a
//! hand-run check judge alike.
//!
//! Placeholders `{{ vars.x }}` are filled from the plan's environment variables; secret
//! references are never resolved here, so a check still naming one fails with a hint
//! instead of probing a literal `secret://…` address. `command` checks run in the run's
//! working directory, where the plan's relative paths resolve.

use slipway_checks::Outcome;
use slipway_engine::{BoxFuture, CheckRunner, CheckVerdict};
use slipway_model::plan::Plan;
use slipway_model::spec::Check;

/// Runs declared checks from this machine.
pub struct SpecCheckRunner {
    workdir: String,
}

impl SpecCheckRunner {
    /// A runner whose `command` checks run in `workdir`.
    pub fn new(workdir: &str) -> Self {
        Self {
            workdir: workdir.to_owned(),
        }
    }
}

/// Fill `{{ vars.x }}` from the plan's environment; secrets stay references.
fn fill(plan: &Plan, text: &str) -> String {
    slipway_model::text::fill_vars(
        text,
        plan.env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// A single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The check with its placeholders filled, or why it cannot run.
fn prepare(plan: &Plan, name: &str, check: &Check, workdir: &str) -> Result<Check, String> {
    let mut c = check.clone();
    if let Some(h) = c.http.as_mut() {
        h.url = fill(plan, &h.url);
    }
    if let Some(t) = c.tcp.as_mut() {
        *t = fill(plan, t);
    }
    if let Some(s) = c.sql.as_mut() {
        s.database = fill(plan, &s.database);
    }
    if let Some(cmd) = c.command.as_mut() {
        *cmd = format!("cd {} && {}", shell_quote(workdir), fill(plan, cmd));
    }
    let texts = [
        c.http.as_ref().map(|h| h.url.as_str()),
        c.tcp.as_deref(),
        c.sql.as_ref().map(|s| s.database.as_str()),
    ];
    if texts
        .iter()
        .flatten()
        .any(|t| t.contains("{{") || t.starts_with("secret://"))
    {
        return Err(format!(
            "check `{name}` still names a placeholder or a secret after filling environments.{}.vars; checks never resolve secrets, so give it a plain address in the spec",
            plan.environment
        ));
    }
    Ok(c)
}

impl CheckRunner for SpecCheckRunner {
    fn run<'a>(
        &'a self,
        plan: &'a Plan,
        name: &'a str,
        check: &'a Check,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>> {
        Box::pin(async move {
            let timeout = match &check.timeout {
                Some(t) => slipway_model::duration::parse_duration(t).map_err(|e| {
                    format!("checks.{name}.timeout: {e}; write a duration such as `5s`")
                })?,
                None => slipway_checks::smoke::DEFAULT_TIMEOUT,
            };
            let c = prepare(plan, name, check, &self.workdir)?;
            // No `{base}`: the exec target has no separate candidate instance to aim at.
            let v = slipway_checks::smoke::run(name, &c, None, timeout).await;
            let mut detail = format!("{} on {} in {} ms", v.check, v.target, v.duration_ms);
            if let Some(h) = &v.hint {
                detail.push_str(&format!("; {h}"));
            }
            Ok(CheckVerdict {
                // Only a pass passes: a gate prefers a false alarm to a false pass.
                passed: v.verdict == Outcome::Pass,
                measured: v.measured,
                expected: v.expected,
                detail,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_survive_a_workdir_with_an_apostrophe() {
        assert_eq!(shell_quote("/srv/it's"), r"'/srv/it'\''s'");
    }
}
