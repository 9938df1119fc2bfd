//! The check runner `deploy` gives the engine: runs a plan's declared checks (http, tcp,
//! command, sql) with `slipway_checks::smoke`, as `slipway check` does, so a gate and a
//! hand-run check judge alike.
//!
//! Placeholders `{{ vars.x }}` are filled from the plan's environment variables; secret
//! references are never resolved here, so a check still naming one fails with a hint
//! instead of probing a literal `secret://…` address. `command` checks run in the run's
//! working directory, where the plan's relative paths resolve.
//!
//! A `perf` check spans the deploy: as a `pre` gate it measures the running version and
//! keeps the measurement as the run's baseline (`<store dir>/runs/<run>/perf-baseline.json`,
//! summarised in the `check_ran` journal entry); as a `post` gate it measures the new
//! version with the same mix and judges it against that baseline (`perf-verify.json`),
//! so a regression fails verification and the run rolls back.

use slipway_checks::Outcome;
use slipway_engine::{BoxFuture, CheckRunner, CheckVerdict};
use slipway_model::plan::Plan;
use std::path::{Path, PathBuf};

use slipway_model::spec::{Check, CheckPhase, PerfCheck};

/// Runs declared checks from this machine.
pub struct SpecCheckRunner {
    workdir: String,
    runs_dir: Option<PathBuf>,
    instances: Option<PathBuf>,
}

impl SpecCheckRunner {
    /// A runner whose `command` checks run in `workdir`.
    pub fn new(workdir: &str) -> Self {
        Self {
            workdir: workdir.to_owned(),
            runs_dir: None,
            instances: None,
        }
    }

    /// The process target's instance directory: a check naming `{base}` then runs
    /// against every instance of the version each service deploys (after the deploying
    /// wave; the same checks ran against each isolated candidate before it got traffic).
    pub fn with_instances(mut self, dir: PathBuf) -> Self {
        self.instances = Some(dir);
        self
    }

    /// What `{base}` stands for: one run per address, or `[None]` when the check does not
    /// name it or there are no instances to aim at (the exec target).
    fn bases(&self, plan: &Plan, c: &Check) -> Result<Vec<Option<String>>, String> {
        let names_base = [c.http.as_ref().map(|h| h.url.as_str()), c.tcp.as_deref()]
            .iter()
            .flatten()
            .any(|t| t.contains("{base}"));
        let Some(dir) = self.instances.as_ref().filter(|_| names_base) else {
            return Ok(vec![None]);
        };
        let t = crate::process::ProcessTarget::new(dir, Default::default());
        let mut addrs = Vec::new();
        for s in &plan.steps {
            if let slipway_model::plan::StepAction::Deploy { version, .. } = &s.action {
                let service = s.id.split('/').next().unwrap_or(&s.id);
                addrs.extend(
                    t.running(service)
                        .alive
                        .into_iter()
                        .filter(|i| &i.version == version)
                        .map(|i| Some(i.addr.to_string())),
                );
            }
        }
        if addrs.is_empty() {
            return Err(format!(
                "no running instance of the deployed version under {} for `{{base}}` to stand for",
                dir.display()
            ));
        }
        Ok(addrs)
    }

    /// Where per-run records live (`<store dir>/runs`): perf baselines are kept there.
    pub fn with_runs_dir(mut self, dir: PathBuf) -> Self {
        self.runs_dir = Some(dir);
        self
    }
}

/// A perf check as a gate: `pre` keeps a baseline, `post` verifies against it.
async fn perf_gate(
    runs_dir: Option<&Path>,
    run_id: &str,
    phase: CheckPhase,
    plan: &Plan,
    name: &str,
    perf: &PerfCheck,
) -> Result<CheckVerdict, String> {
    use slipway_checks::perf_baseline as pb;
    let runs_dir = runs_dir.ok_or_else(|| {
        format!("perf check `{name}` needs a store directory to keep its baseline")
    })?;
    let run_dir = runs_dir.join(run_id);
    let mut perf = perf.clone();
    perf.url = fill(plan, &perf.url);
    if perf.url.contains("{{") || perf.url.starts_with("secret://") {
        return Err(format!(
            "perf check `{name}` url still names a placeholder or a secret after filling environments.{}.vars",
            plan.environment
        ));
    }
    match phase {
        CheckPhase::Pre | CheckPhase::Smoke => {
            let setup =
                pb::Setup::from_spec(&perf).map_err(|e| format!("checks.{name}.perf: {e}"))?;
            match pb::take(&setup).await {
                Ok(b) => {
                    let file = pb::save_baseline(&run_dir, name, &b)?;
                    Ok(CheckVerdict {
                        passed: true,
                        measured: format!("baseline {}", pb::summary(&b.distribution)),
                        expected: format!("a baseline of the running version at {}", setup.addr),
                        detail: format!(
                            "perf baseline of `{name}` ({} req/s over {} for {} ms, paths {}) kept in {}",
                            setup.rate,
                            setup.workers,
                            setup.duration_ms,
                            setup.paths.join(","),
                            file.display()
                        ),
                    })
                }
                Err(e) => Ok(CheckVerdict {
                    passed: false,
                    measured: "no usable baseline".into(),
                    expected: format!("a baseline of the running version at {}", setup.addr),
                    detail: e,
                }),
            }
        }
        CheckPhase::Post => {
            let Some(b) = pb::load_baseline(&run_dir, name)? else {
                return Ok(CheckVerdict {
                    passed: false,
                    measured: "no baseline kept for this run".into(),
                    expected: "a baseline taken before the deploy".into(),
                    detail: format!(
                        "{} has no entry `{name}`: the pre-deploy measurement is missing, so the new version cannot be compared; deploy again to take one",
                        run_dir.join(pb::BASELINE_FILE).display()
                    ),
                });
            };
            let v = pb::verify(&b).await;
            let file = pb::save_verification(&run_dir, name, &v)?;
            let failing: Vec<String> = v
                .rows
                .iter()
                .filter(|r| r.verdict != Outcome::Pass)
                .map(|r| {
                    format!(
                        "{} {} {} (limit {}){}",
                        r.check,
                        r.verdict.as_str(),
                        r.measured,
                        r.expected,
                        r.hint
                            .as_deref()
                            .map(|h| format!(": {h}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            Ok(CheckVerdict {
                // Only a pass passes: too few samples for the test is not a pass.
                passed: v.verdict == Outcome::Pass,
                measured: format!(
                    "after {} | before {}",
                    pb::summary(&v.candidate),
                    pb::summary(&v.baseline)
                ),
                expected: b.setup.expected(),
                detail: if failing.is_empty() {
                    format!(
                        "perf verify of `{name}` against the pre-deploy baseline; report in {}",
                        file.display()
                    )
                } else {
                    format!(
                        "perf regression of `{name}` against the pre-deploy baseline: {}; report in {}",
                        failing.join("; "),
                        file.display()
                    )
                },
            })
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
    fn run_gate<'a>(
        &'a self,
        run_id: &'a str,
        phase: CheckPhase,
        plan: &'a Plan,
        name: &'a str,
        check: &'a Check,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>> {
        match &check.perf {
            Some(perf) => Box::pin(perf_gate(
                self.runs_dir.as_deref(),
                run_id,
                phase,
                plan,
                name,
                perf,
            )),
            None => self.run(plan, name, check),
        }
    }

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
            // The exec target has no separate instance to aim at: `{base}` only means
            // something on the process target.
            let mut passed = true;
            let (mut measured, mut expected, mut details) = (Vec::new(), String::new(), Vec::new());
            for base in self.bases(plan, &c)? {
                let v = slipway_checks::smoke::run(name, &c, base.as_deref(), timeout).await;
                // Only a pass passes: a gate prefers a false alarm to a false pass.
                passed &= v.verdict == Outcome::Pass;
                measured.push(v.measured);
                expected = v.expected;
                let mut d = format!("{} on {} in {} ms", v.check, v.target, v.duration_ms);
                if let Some(h) = &v.hint {
                    d.push_str(&format!("; {h}"));
                }
                details.push(d);
            }
            Ok(CheckVerdict {
                passed,
                measured: measured.join(", "),
                expected,
                detail: details.join("; "),
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
