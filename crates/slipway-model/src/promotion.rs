//! Promotion through environments: a release reaches an environment only after the same
//! inputs succeeded in the one before it, in the order the spec's `lifecycle`
//! declares (`dev → staging → prod`).
//!
//! *The same inputs* are the plan's [`inputs`]: the release version, each service's
//! artifact sha256 and each config template's sha256 (the templates are what is rendered;
//! the rendering itself differs between environments by their variables, on purpose). The
//! evidence is the newest run of the previous environment with exactly those inputs
//! ([`PromotionEvidence`], gathered from the store by the caller); it must have succeeded
//! — a newer attempt of the same inputs that failed or rolled back is what counts, not an
//! older success — and, when the policy says so, have soaked there for a minimum time and
//! run post checks that passed.
//!
//! [`apply`] adds a `promotion` gate carrying the evidence (run, when it finished, the
//! inputs' digest) to the plan, so approvers approve a plan that names what proved it,
//! and a blocking finding when there is none. An override (`--override-promotion --reason`)
//! turns that finding into a warning, records the acceptance as a waiver the run journals
//! into the audit chain when it starts, and requires an approver who is not the run's
//! author.
//!
//! Architecture invariant: this is pure; "now" and the runs come in as facts.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compat::AppliedWaiver;
use crate::plan::{Finding, Gate, GateKind, Plan, StepAction};

/// What promotion into one environment requires (from the lifecycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionRule {
    /// The environment before it.
    pub from: String,
    /// Minimum soak there, e.g. `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::duration::SpecDuration>,
    /// Post checks must have passed there.
    #[serde(default)]
    pub post_checks: bool,
}

/// What the plan installs that must be the same as what succeeded before: `version`,
/// `artifact:SERVICE` (sha256) and `config:SERVICE:TEMPLATE` (template sha256).
pub fn inputs(plan: &Plan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("version".to_owned(), plan.release.version.clone());
    for (name, svc) in &plan.services {
        if let Some(a) = &svc.artifact {
            out.insert(format!("artifact:{name}"), a.sha256.to_ascii_lowercase());
        }
    }
    for s in &plan.steps {
        if let StepAction::RenderConfig { templates, .. } = &s.action {
            for (path, digest) in templates {
                out.insert(format!("config:{}:{path}", s.service), digest.clone());
            }
        }
    }
    out
}

/// sha256 of the canonical JSON of [`inputs`]: one value to compare and show.
pub fn inputs_digest(inputs: &BTreeMap<String, String>) -> String {
    let text = serde_json::to_string(inputs).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One run of the previous environment with the same inputs as the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorRun {
    /// The run.
    pub run: String,
    /// Its state (`succeeded`, `rolled_back`, `failed`, …).
    pub state: String,
    /// When it reached that state (RFC 3339), if it is over.
    pub finished_at: Option<String>,
    /// Its post checks: name and whether it passed, in the order they ran.
    pub post_checks: Vec<(String, bool)>,
}

/// What the store says about the previous environment, for one plan's inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromotionEvidence {
    /// The newest run there with the same inputs, if any.
    pub newest: Option<PriorRun>,
    /// Runs there in all, whatever their inputs (to say what was found instead).
    pub runs_there: usize,
    /// The newest run there, whatever its inputs: its id, version and state.
    pub latest_other: Option<(String, String, String)>,
    /// Now.
    pub now: Option<Timestamp>,
    /// `--override-promotion --reason`: deploy without the evidence, for this reason.
    pub override_reason: Option<String>,
    /// Why the store could not be read, if it could not (then nothing is proven).
    pub unavailable: Option<String>,
}

/// Judge the plan's promotion into its environment under `rule`, adding the gate and the
/// findings (and, when overridden, the waiver and an approval by someone other than the
/// author), then recompute the digest.
pub fn apply(plan: &mut Plan, rule: &PromotionRule, ev: &PromotionEvidence) {
    let source = format!("lifecycle ({} → {})", rule.from, plan.environment);
    apply_from(plan, rule, ev, source);
}

/// [`apply`] with the gate's source named by the caller (the admin policy's
/// `promote_from`, or the spec's lifecycle).
pub fn apply_from(plan: &mut Plan, rule: &PromotionRule, ev: &PromotionEvidence, source: String) {
    let inputs = inputs(plan);
    let digest = inputs_digest(&inputs);
    let from = &rule.from;
    let to = plan.environment.clone();
    let shown_inputs = inputs
        .iter()
        .map(|(k, v)| format!("{k}={}", short(v)))
        .collect::<Vec<_>>()
        .join(", ");
    let problem = judge(rule, ev, &shown_inputs);
    match (&problem, &ev.override_reason) {
        (None, _) => {
            let run = ev.newest.as_ref();
            plan.findings.push(Finding {
                severity: crate::plan::FindingSeverity::Info,
                code: "promotion".into(),
                message: format!(
                    "these inputs succeeded in {from}: run {} finished {}{}; inputs {shown_inputs}",
                    run.map_or("?", |r| r.run.as_str()),
                    run.and_then(|r| r.finished_at.as_deref()).unwrap_or("?"),
                    run.filter(|r| !r.post_checks.is_empty())
                        .map(|r| format!(
                            ", post checks passed: {}",
                            r.post_checks
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                        .unwrap_or_default()
                ),
            });
            plan.gates.push(Gate {
                kind: GateKind::Promotion {
                    from: from.clone(),
                    run: run.map(|r| r.run.clone()),
                    finished_at: run.and_then(|r| r.finished_at.clone()),
                    inputs: digest,
                    overridden: None,
                },
                source,
            });
        }
        (Some((code, message)), None) => {
            plan.findings.push(Finding {
                severity: crate::plan::FindingSeverity::Error,
                code: (*code).to_owned(),
                message: format!(
                    "{message}; deploy the same inputs to {from} first, or override with `--override-promotion --reason TEXT` (a second person must approve, and it is audited)"
                ),
            });
            plan.gates.push(Gate {
                kind: GateKind::Promotion {
                    from: from.clone(),
                    run: None,
                    finished_at: None,
                    inputs: digest,
                    overridden: None,
                },
                source,
            });
        }
        (Some((code, message)), Some(reason)) => {
            plan.findings.push(Finding {
                severity: crate::plan::FindingSeverity::Warning,
                code: "promotion-overridden".into(),
                message: format!("{message}; overridden: {reason}"),
            });
            plan.waivers.push(AppliedWaiver {
                finding: format!("{code}:{from}->{to}"),
                message: message.clone(),
                reason: reason.clone(),
                by: "the run's author (--override-promotion)".into(),
            });
            plan.gates.push(Gate {
                kind: GateKind::Promotion {
                    from: from.clone(),
                    run: None,
                    finished_at: None,
                    inputs: digest,
                    overridden: Some(reason.clone()),
                },
                source: source.clone(),
            });
            plan.gates.push(Gate {
                kind: GateKind::Approvals {
                    required: 1,
                    groups: Vec::new(),
                    four_eyes: true,
                },
                source: format!("{source}: an override needs an approver other than the author"),
            });
        }
    }
    plan.digest = crate::plan::digest_of(plan);
}

/// What is missing, as a finding code and message; `None` when promoted.
fn judge(
    rule: &PromotionRule,
    ev: &PromotionEvidence,
    shown_inputs: &str,
) -> Option<(&'static str, String)> {
    let from = &rule.from;
    if let Some(why) = &ev.unavailable {
        return Some((
            "promotion-unproven",
            format!(
                "the runs of {from} could not be read ({why}), so nothing proves these inputs there"
            ),
        ));
    }
    let Some(run) = &ev.newest else {
        let instead = match &ev.latest_other {
            Some((id, version, state)) => {
                format!("; the newest run there is {id} ({version}, {state}) with other inputs")
            }
            None if ev.runs_there == 0 => format!("; {from} has no run at all"),
            None => String::new(),
        };
        return Some((
            "promotion-unproven",
            format!("no run in {from} deployed these inputs ({shown_inputs}){instead}"),
        ));
    };
    if run.state != "succeeded" {
        return Some((
            "promotion-unproven",
            format!(
                "the newest run of these inputs in {from}, {}, ended {}: they have not succeeded there",
                run.run, run.state
            ),
        ));
    }
    if rule.post_checks {
        let failed: Vec<&str> = run
            .post_checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n.as_str())
            .collect();
        if run.post_checks.is_empty() || !failed.is_empty() {
            return Some((
                "promotion-post-checks",
                if failed.is_empty() {
                    format!(
                        "run {} in {from} ran no post check, and the lifecycle requires post checks passed there",
                        run.run
                    )
                } else {
                    format!(
                        "run {} in {from} failed post check(s) {}",
                        run.run,
                        failed.join(", ")
                    )
                },
            ));
        }
    }
    if let Some(soak) = &rule.soak {
        let need = soak.get().ok()?;
        let finished = run
            .finished_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok());
        let (Some(finished), Some(now)) = (finished, ev.now) else {
            return Some((
                "promotion-soak",
                format!(
                    "when run {} in {from} finished is unknown, so its soak of {soak} is not proven",
                    run.run
                ),
            ));
        };
        let had = now.duration_since(finished);
        let need_span = jiff::SignedDuration::try_from(need).unwrap_or(jiff::SignedDuration::MAX);
        if had < need_span {
            let ready = finished
                .checked_add(need_span)
                .map_or("?".to_owned(), |t| t.to_string());
            return Some((
                "promotion-soak",
                format!(
                    "run {} succeeded in {from} at {finished}; the lifecycle wants {soak} there before this environment, {} so far (ready at {ready})",
                    run.run,
                    crate::duration::format_duration(had.unsigned_abs())
                ),
            ));
        }
    }
    None
}

fn short(digest: &str) -> String {
    if digest.len() > 12 && digest.chars().all(|c| c.is_ascii_hexdigit()) {
        digest[..12].to_owned()
    } else {
        digest.to_owned()
    }
}
