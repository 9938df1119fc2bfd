//! What breaking-compatibility findings do to a plan.
//!
//! The findings themselves (OpenAPI breaking changes, contract migrations shipped in the
//! same release as the code that needs them) are read from files by `slipway-package` and
//! handed in as [`crate::plan::Facts::compat`]; this module only decides, purely:
//!
//! - a finding the spec waives (`waivers: [{ finding, reason, by }]`) changes nothing but
//!   is listed in the plan (and audited when the run starts);
//! - any finding not waived requires a **phased** strategy (`rolling` or `canary`) in the
//!   environment. A big-bang plan is *refused* (an `error` finding, so `slipway plan` exits
//!   3 and `deploy` is blocked) rather than silently switched to phased: the strategy is
//!   what approvers reviewed and what the run will do, a plan is a pure function of the
//!   spec, and a rolling or canary strategy needs settings (batch size, steps, analysis)
//!   that only the author can choose. The fix is one line in the spec, and the message
//!   says which;
//! - and **one more approver** than the environment otherwise needs. The engine combines
//!   every approvals gate of a plan into one need (the highest `required`, the union of
//!   groups, four-eyes if any asks), so the compat gate is an approvals gate whose
//!   `required` is one above the rest, from the same groups, never the author. It shows in
//!   the plan as its own line with the finding ids as its source.
//!
//! Migration statements that block a live table (`lock` findings, from the lock
//! classification in `slipway-package`) take the same waiver path but are not breaking
//! compatibility: unwaived, each is an `error` (`migration-lock`) when the environment is
//! production and a `warning` elsewhere, and it neither requires a phased strategy nor
//! adds an approver — neither makes a table rewrite shorter.

use serde::{Deserialize, Serialize};

use crate::plan::{Facts, Finding, Gate, GateKind, Recommendation};
use crate::spec::{Environment, ReleaseSpec, Strategy};

/// One breaking-compatibility finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CompatFinding {
    /// Stable id, what a waiver names: `api:SERVICE:CODE:POINTER` for an OpenAPI change,
    /// `migration:SERVICE:FILE` for a contract migration, `lock:SERVICE:FILE:LINE` for a
    /// migration statement that blocks a live table.
    pub id: String,
    /// `api`, `migration` or `lock`.
    pub kind: String,
    /// The service concerned.
    pub service: String,
    /// What breaks and what to do.
    pub message: String,
}

/// A finding waived by the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedWaiver {
    /// The finding's id.
    pub finding: String,
    /// What the finding said.
    pub message: String,
    /// Why it is acceptable (from the spec).
    pub reason: String,
    /// Who decided (from the spec).
    pub by: String,
}

/// The split of the compatibility findings, for the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompatOutcome {
    /// Findings not waived.
    pub breaking: Vec<CompatFinding>,
    /// Findings waived.
    pub waivers: Vec<AppliedWaiver>,
}

/// Whether a strategy exposes the new version gradually (rolling batches or a canary).
pub fn is_phased(strategy: &Strategy) -> bool {
    strategy.canary.is_some() || strategy.rolling.is_some()
}

/// Applies the compatibility findings to a plan in the making: waivers, the phased
/// requirement, the extra approval and the recommendation. See the module docs.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site in the planner; each argument is a different part of the plan"
)]
pub fn apply(
    spec: &ReleaseSpec,
    env_name: &str,
    env: &Environment,
    strategy: &Strategy,
    facts: &Facts,
    gates: &mut Vec<Gate>,
    recommendation: &mut Recommendation,
    findings: &mut Vec<Finding>,
) -> CompatOutcome {
    let mut out = CompatOutcome::default();
    let mut all = facts.compat.clone();
    all.sort();
    all.dedup();
    for f in all {
        match spec.waivers.iter().find(|w| w.finding == f.id) {
            Some(w) => {
                findings.push(Finding {
                    severity: crate::plan::FindingSeverity::Info,
                    code: if f.kind == "lock" {
                        "migration-lock-waived"
                    } else {
                        "backward-incompatible-waived"
                    }
                    .into(),
                    message: format!(
                        "`{}` waived by {}: {} (finding: {})",
                        f.id, w.by, w.reason, f.message
                    ),
                });
                out.waivers.push(AppliedWaiver {
                    finding: f.id.clone(),
                    message: f.message.clone(),
                    reason: w.reason.clone(),
                    by: w.by.clone(),
                });
            }
            // A statement that blocks a live table is no compatibility break: a phased
            // rollout or another approver does not shorten the lock. It blocks production
            // plans and warns elsewhere, where a blocked table costs little.
            None if f.kind == "lock" => findings.push(Finding {
                severity: if env.production {
                    crate::plan::FindingSeverity::Error
                } else {
                    crate::plan::FindingSeverity::Warning
                },
                code: "migration-lock".into(),
                message: format!(
                    "`{}`: {}{}",
                    f.id,
                    f.message,
                    if env.production {
                        " (this environment is production: rewrite the migration, or waive the finding under `waivers:` with a reason and who decided)"
                    } else {
                        ""
                    }
                ),
            }),
            None => {
                findings.push(Finding {
                    severity: crate::plan::FindingSeverity::Warning,
                    code: "backward-incompatible".into(),
                    message: format!("`{}`: {}", f.id, f.message),
                });
                out.breaking.push(f);
            }
        }
    }
    // Only meaningful when the findings were gathered (the CLI always does; a plan made
    // without the files has no compat facts and so nothing to match).
    if !facts.compat.is_empty() {
        for w in &spec.waivers {
            if !facts.compat.iter().any(|f| f.id == w.finding) {
                findings.push(Finding {
                    severity: crate::plan::FindingSeverity::Warning,
                    code: "waiver-unused".into(),
                    message: format!(
                        "the waiver for `{}` matches no finding of this plan; remove it (the ids found are listed as backward-incompatible findings)",
                        w.finding
                    ),
                });
            }
        }
    }
    if out.breaking.is_empty() {
        return out;
    }

    let ids: Vec<&str> = out.breaking.iter().map(|f| f.id.as_str()).collect();
    let ids = ids.join(", ");
    let phased = is_phased(strategy);
    if !phased {
        findings.push(Finding {
            severity: crate::plan::FindingSeverity::Error,
            code: "compat-requires-phased".into(),
            message: format!(
                "breaking compatibility findings ({ids}) need a phased rollout in environments.{env_name}, so old and new versions run side by side under control instead of all at once; set `strategy: {{ rolling: {{ batch_size: 1 }} }}` or a canary for environments.{env_name} (or the release), or waive each finding under `waivers:` with a reason and who decided"
            ),
        });
    }

    let base = gates
        .iter()
        .filter_map(|g| match &g.kind {
            GateKind::Approvals { required, .. } => Some(*required),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    gates.push(Gate {
        kind: GateKind::Approvals {
            required: base + 1,
            groups: env
                .approvals
                .as_ref()
                .map(|a| a.groups.clone())
                .unwrap_or_default(),
            four_eyes: true,
        },
        source: format!("compat: one more approver for breaking findings {ids}"),
    });

    recommendation.approach = "phased".into();
    recommendation.reasons.insert(
        0,
        format!(
            "breaking compatibility findings ({ids}): old clients or the old version meet the new contract during the rollout"
        ),
    );
    recommendation.strategy_agrees = phased;
    out
}
