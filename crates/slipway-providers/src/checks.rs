//! The check runner `deploy` gives the engine: runs a plan's declared checks (http, tcp,
//! command, sql) with `slipway_checks::smoke`, as `slipway check` does, so a gate and a
//! hand-run check judge alike.
//!
//! Placeholders `{{ vars.x }}` are filled from the plan's environment variables; in
//! addresses (http URLs, tcp endpoints, database URLs) secret ones are resolved when the
//! check runs and masked in everything it reports, so a secret is never journaled
//! ([`crate::readiness::PlanVars`]); `command` checks get plain variables only and run in
//! the run's working directory, where the plan's relative paths resolve. `sql` checks run
//! on PostgreSQL or SQLite, and `consistency` checks compare a measure of two tables
//! (row count, sum, ordered checksum; across databases after a data move), both through
//! `slipway-migrate`, which owns the target database drivers.
//!
//! A `perf` check spans the deploy: as a `pre` gate it measures the running version and
//! keeps the measurement as the run's baseline (`<store dir>/runs/<run>/perf-baseline.json`,
//! summarised in the `check_ran` journal entry); as a `post` gate it measures the new
//! version with the same mix and judges it against that baseline (`perf-verify.json`),
//! so a regression fails verification and the run rolls back.

use slipway_checks::{Outcome, Verdict};
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

/// Run one declared check as a row: `sql` and `consistency` through slipway-migrate
/// (PostgreSQL or SQLite), the others through [`slipway_checks::smoke`]. Addresses are
/// filled from `vars` (secret ones resolved, and masked in the row); a `command` runs in
/// `workdir` when one is given.
pub async fn run_declared(
    name: &str,
    check: &Check,
    vars: &crate::readiness::PlanVars,
    base: Option<&str>,
    timeout: std::time::Duration,
    workdir: Option<&str>,
) -> Verdict {
    let started = std::time::Instant::now();
    let fail = |target: String, measured: String, expected: &str| {
        Verdict::new(
            format!("smoke.{name}"),
            target,
            Outcome::Fail,
            measured,
            expected,
            started,
        )
    };
    let mut c = check.clone();
    let filled = (|| -> Result<(), String> {
        if let Some(h) = c.http.as_mut() {
            h.url = vars.fill(&h.url)?;
        }
        if let Some(t) = c.tcp.as_mut() {
            *t = vars.fill(t)?;
        }
        if let Some(q) = c.sql.as_mut() {
            q.database = vars.fill(&q.database)?;
        }
        if let Some(k) = c.consistency.as_mut() {
            k.left.database = vars.fill(&k.left.database)?;
            k.right.database = vars.fill(&k.right.database)?;
        }
        Ok(())
    })();
    if let Err(e) = filled {
        return vars.redact_row(
            fail(String::new(), e, "the check's addresses").hint(
                "define the variable in the environment's `vars` (a secret one must be set where slipway runs)",
            ),
        );
    }
    if let Some(cmd) = c.command.as_mut() {
        let plain = vars.shown(cmd);
        *cmd = match workdir {
            Some(w) => format!("cd {} && {plain}", shell_quote(w)),
            None => plain,
        };
    }
    let row = if let Some(q) = &c.sql {
        sql_row(name, q, timeout, started).await
    } else if let Some(k) = &c.consistency {
        consistency_row(name, k, timeout, started).await
    } else {
        slipway_checks::smoke::run(name, &c, base, timeout).await
    };
    vars.redact_row(row)
}

async fn sql_row(
    name: &str,
    q: &slipway_model::spec::SqlCheck,
    timeout: std::time::Duration,
    started: std::time::Instant,
) -> Verdict {
    let target = slipway_model::text::mask_url(&q.database);
    let expected = q
        .equals
        .as_ref()
        .map_or_else(|| "a row".to_owned(), |e| format!("= {}", e.as_str()));
    let row = |o, measured: String| {
        Verdict::new(
            format!("smoke.{name}"),
            target.clone(),
            o,
            measured,
            expected.clone(),
            started,
        )
    };
    let got = tokio::time::timeout(
        timeout,
        slipway_migrate::consistency::query_first(&q.database, &q.query),
    )
    .await;
    match got {
        Err(_) => row(
            Outcome::Fail,
            format!("no answer within {} ms", timeout.as_millis()),
        ),
        Ok(Err(e)) => row(Outcome::Fail, e.to_string())
            .hint("check the database URL and the query (PostgreSQL or SQLite)"),
        Ok(Ok(None)) => row(Outcome::Fail, "no row".into()),
        Ok(Ok(Some(v))) => match &q.equals {
            Some(e) if e.as_str() != v => {
                row(Outcome::Fail, v).hint("the query's first value differs from `equals`")
            }
            _ => row(Outcome::Pass, v),
        },
    }
}

async fn consistency_row(
    name: &str,
    k: &slipway_model::spec::ConsistencyCheck,
    timeout: std::time::Duration,
    started: std::time::Instant,
) -> Verdict {
    use slipway_migrate::consistency::{Check as DataCheck, Measure, Side};
    let measure = match (&k.sum, k.checksum.is_empty()) {
        (Some(column), _) => Measure::Sum {
            column: column.clone(),
        },
        (None, false) => Measure::Checksum {
            columns: k.checksum.clone(),
            order_by: k.order_by.clone(),
        },
        (None, true) => Measure::RowCount,
    };
    let what = match &measure {
        Measure::RowCount => "row count".to_owned(),
        Measure::Sum { column } => format!("sum of {column}"),
        Measure::Checksum { columns, .. } => format!("checksum of {}", columns.join(", ")),
    };
    let side = |t: &slipway_model::spec::TableRef| Side {
        url: t.database.clone(),
        table: t.table.clone(),
        filter: t.filter.clone(),
    };
    let check = DataCheck {
        name: name.to_owned(),
        measure,
        left: side(&k.left),
        right: side(&k.right),
        tolerance: k.tolerance.unwrap_or(0.0),
    };
    let target = format!(
        "{} {} vs {} {}",
        slipway_model::text::mask_url(&k.left.database),
        k.left.table,
        slipway_model::text::mask_url(&k.right.database),
        k.right.table
    );
    let expected = format!("equal {what} (tolerance {})", check.tolerance);
    let row = |o, measured: String| {
        Verdict::new(
            format!("consistency.{name}"),
            target.clone(),
            o,
            measured,
            expected.clone(),
            started,
        )
    };
    match tokio::time::timeout(timeout, slipway_migrate::consistency::run_check(&check)).await {
        Err(_) => row(
            Outcome::Fail,
            format!("no answer within {} ms", timeout.as_millis()),
        ),
        Ok(Err(e)) => {
            row(Outcome::Fail, e.to_string()).hint("check both database URLs and table names")
        }
        Ok(Ok(o)) => {
            let measured = format!("{} | {}", o.left, o.right);
            if o.passed {
                row(Outcome::Pass, measured)
            } else {
                row(Outcome::Fail, measured).hint(o.message)
            }
        }
    }
}

impl CheckRunner for SpecCheckRunner {
    fn change_gate<'a>(
        &'a self,
        _run_id: &'a str,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<CheckVerdict, String>> {
        Box::pin(async move {
            let (_, record) = crate::change::gate_of(plan)
                .ok_or_else(|| "the plan has no change gate".to_owned())?;
            let client = crate::change::ChangeClient::from_plan(plan)
                .ok_or_else(|| "the plan's environment names no change system".to_owned())??;
            let j = client.judge(record.as_deref(), slipway_stdx::now()).await;
            Ok(CheckVerdict {
                passed: j.passed,
                measured: j.measured,
                expected: j.expected,
                detail: j.detail,
            })
        })
    }

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
                Some(t) => t.get().map_err(|e| {
                    format!("checks.{name}.timeout: {e}; write a duration such as `5s`")
                })?,
                None => slipway_checks::smoke::DEFAULT_TIMEOUT,
            };
            let spec_dir = crate::compose::spec_dir_of(Path::new(&self.workdir), Some(plan));
            let vars = crate::readiness::PlanVars::resolve(plan, &spec_dir);
            // The exec target has no separate instance to aim at: `{base}` only means
            // something on the process target.
            let mut passed = true;
            let (mut measured, mut expected, mut details) = (Vec::new(), String::new(), Vec::new());
            for base in self.bases(plan, check)? {
                let v = run_declared(
                    name,
                    check,
                    &vars,
                    base.as_deref(),
                    timeout,
                    Some(&self.workdir),
                )
                .await;
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
