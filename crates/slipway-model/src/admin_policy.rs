//! Environment policy owned by admins, not by the releases it governs.
//!
//! A policy file (`kind: Policy`) says, per environment, what every release deployed there
//! must pass: production or not, approvals (count, groups, four-eyes), risk thresholds that
//! add approvals, deployment windows, freezes (environment-wide, for every release, with the
//! release types allowed through), required check phases, a rollback rehearsal, a change
//! record and the change system it is checked in, the environment a release must have
//! succeeded in first (promotion), which readiness checks may only warn, and which release
//! types may deploy at all. Admins apply it to the store
//! (`slipway policy apply`); each version is kept and audited, and its digest is part of
//! every plan made under it.
//!
//! A spec may tighten a policy but never loosen it: [`tighten`] makes the environment a
//! plan is made for the stricter of the two, field by field, and says which gates came
//! from the policy so `plan` can show each gate's source. Where the spec's field would
//! loosen a gate (its change system, its advisory readiness checks, its lifecycle), the
//! policy's replaces it under a policy: a deployer who edits the spec cannot point the
//! change check at a server that says yes, make a failing check advisory, or drop the
//! promotion requirement.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Pos, SpecErrors};
use crate::readiness::ReadinessCheck;
use crate::spec::{
    ApprovalPolicy, ChangeManagement, CheckPhase, Environment, Freeze, RecoveryPolicy,
    RehearsalRequirement, ReleaseType, Window,
};

/// The `kind` of a policy file.
pub const POLICY_KIND: &str = "Policy";

/// A policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    /// `slipway/v1`.
    pub api_version: String,
    /// `Policy`.
    pub kind: String,
    /// Policy per environment name; `"*"` applies to every environment (an environment's
    /// own entry tightens it further).
    pub environments: BTreeMap<String, EnvPolicy>,
}

/// What every release deployed to one environment must pass.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvPolicy {
    /// A production environment: release-type policy gates apply in full, reports count it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub production: bool,
    /// Approvals every release needs here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalPolicy>,
    /// Extra approvals for risky releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskPolicy>,
    /// Deployment windows every release must deploy inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Freezes for every release (the types in `allow` may still deploy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<PolicyFreeze>,
    /// Check phases every release must declare checks for here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckPhase>,
    /// A passing rollback rehearsal must exist before a release deploys here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<RehearsalRequirement>,
    /// Every release needs a change record (`metadata.change`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub change_record: bool,
    /// A release that migrates a database here needs a passed migration dry run
    /// (`slipway migrate dry-run`, recorded in the store) of its exact migration set, no
    /// older than `max_age`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunPolicy>,
    /// The change-management system the record is checked in (approved, inside its
    /// window) and the outcome written back to. Replaces the spec's
    /// `environments.X.change`: otherwise whoever edits the spec picks the server that
    /// answers "approved".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeManagement>,
    /// Readiness checks whose failures only warn here. Under a policy a release cannot make
    /// a check advisory itself: the spec's `advisory_checks` are replaced by this list
    /// (empty: every declared check blocks), with a warning naming what stays a gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advisory_checks: Vec<ReadinessCheck>,
    /// The environment where the same inputs must have succeeded before a release deploys
    /// here. Replaces what the spec's `lifecycle` says for this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_from: Option<PromoteFrom>,
    /// The release types that may deploy here (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release_types: Vec<ReleaseType>,
}

/// The migration dry run a policy requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunPolicy {
    /// How old the passed dry run may be when planning, e.g. `168h`.
    pub max_age: crate::duration::SpecDuration,
}

impl DryRunPolicy {
    /// `max_age` as a duration (validated when the policy was applied; `None` only for a
    /// policy that skipped validation).
    pub fn max_age(&self) -> Option<std::time::Duration> {
        self.max_age.get().ok()
    }
}

/// Promotion into an environment, as the admin policy requires it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteFrom {
    /// The environment before this one.
    pub environment: String,
    /// Minimum time the inputs must have run successfully there, e.g. `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::duration::SpecDuration>,
    /// The run there must have run post checks, all passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_checks: bool,
}

impl PromoteFrom {
    /// The rule the planner judges.
    pub fn rule(&self) -> crate::promotion::PromotionRule {
        crate::promotion::PromotionRule {
            from: self.environment.clone(),
            soak: self.soak.clone(),
            post_checks: self.post_checks,
        }
    }
}

/// Approvals added to risky releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskPolicy {
    /// From this risk score (0–100) on…
    #[schemars(range(max = 100))]
    pub above: u32,
    /// …this many approvals are added.
    #[schemars(range(min = 1, max = 10))]
    pub add_approvals: u32,
}

/// A freeze of the policy: for every release, except the types it allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFreeze {
    /// First frozen day, `YYYY-MM-DD`.
    pub from: String,
    /// Last frozen day, `YYYY-MM-DD`.
    pub to: String,
    /// Why, shown to whoever is refused.
    pub reason: String,
    /// Time zone the dates are in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Release types that may still deploy (e.g. `hotfix`, `security`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<ReleaseType>,
}

impl PolicyFreeze {
    /// As a spec freeze (what the engine's gate checks).
    pub fn as_freeze(&self) -> Freeze {
        Freeze {
            from: self.from.clone(),
            to: self.to.clone(),
            reason: self.reason.clone(),
            timezone: self.timezone.clone(),
        }
    }
}

/// The policy in force when a plan is made: which version, its digest, and what it says for
/// the plan's environment (the `"*"` entry merged with the environment's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// The store's policy version.
    pub version: u32,
    /// sha256 of the policy file's text.
    pub digest: String,
    /// What it says for this environment.
    pub env: EnvPolicy,
}

impl AppliedPolicy {
    /// How gates name it as their source.
    pub fn source(&self, field: &str) -> String {
        format!("admin policy v{} ({field})", self.version)
    }
}

impl PolicyDoc {
    /// What the policy says for `environment`: its own entry tightened by `"*"`.
    pub fn for_environment(&self, environment: &str) -> Option<EnvPolicy> {
        let all = self.environments.get("*");
        let own = self.environments.get(environment);
        match (all, own) {
            (None, None) => None,
            (Some(a), None) => Some(a.clone()),
            (None, Some(o)) => Some(o.clone()),
            (Some(a), Some(o)) => Some(merge(a, o)),
        }
    }
}

/// The stricter of two policies, field by field.
fn merge(a: &EnvPolicy, b: &EnvPolicy) -> EnvPolicy {
    let approvals = match (&a.approvals, &b.approvals) {
        (Some(x), Some(y)) => Some(stricter_approvals(x, y)),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    let risk = match (&a.risk, &b.risk) {
        (Some(x), Some(y)) => Some(RiskPolicy {
            above: x.above.min(y.above),
            add_approvals: x.add_approvals.max(y.add_approvals),
        }),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    let mut checks = a.checks.clone();
    for c in &b.checks {
        if !checks.contains(c) {
            checks.push(*c);
        }
    }
    let release_types = match (a.release_types.is_empty(), b.release_types.is_empty()) {
        (true, _) => b.release_types.clone(),
        (_, true) => a.release_types.clone(),
        _ => a
            .release_types
            .iter()
            .filter(|t| b.release_types.contains(t))
            .copied()
            .collect(),
    };
    EnvPolicy {
        production: a.production || b.production,
        approvals,
        risk,
        // Both sets of windows must hold: kept apart by the caller; here the environment's
        // own entry wins only when "*" has none (documented in `tighten`).
        windows: if b.windows.is_empty() {
            a.windows.clone()
        } else {
            b.windows.clone()
        },
        freezes: a.freezes.iter().chain(&b.freezes).cloned().collect(),
        checks,
        rehearsal: match (a.rehearsal, b.rehearsal) {
            (Some(RehearsalRequirement::Required), _)
            | (_, Some(RehearsalRequirement::Required)) => Some(RehearsalRequirement::Required),
            (x, y) => x.or(y),
        },
        change_record: a.change_record || b.change_record,
        // The shorter age is the stricter requirement.
        dry_run: match (&a.dry_run, &b.dry_run) {
            (Some(x), Some(y)) => Some(if y.max_age() < x.max_age() {
                y.clone()
            } else {
                x.clone()
            }),
            (x, y) => x.clone().or_else(|| y.clone()),
        },
        // Admin-written settings of one system: the environment's own entry names it,
        // else "*"'s applies.
        change: b.change.clone().or_else(|| a.change.clone()),
        advisory_checks: if b.advisory_checks.is_empty() {
            a.advisory_checks.clone()
        } else {
            b.advisory_checks.clone()
        },
        promote_from: b.promote_from.clone().or_else(|| a.promote_from.clone()),
        release_types,
    }
}

fn stricter_approvals(a: &ApprovalPolicy, b: &ApprovalPolicy) -> ApprovalPolicy {
    ApprovalPolicy {
        required: a.required.max(b.required),
        // Groups narrow: an approver must be in the narrower list. With two lists, the
        // approver must belong to one both allow.
        groups: match (a.groups.is_empty(), b.groups.is_empty()) {
            (true, _) => b.groups.clone(),
            (_, true) => a.groups.clone(),
            _ => a
                .groups
                .iter()
                .filter(|g| b.groups.contains(g))
                .cloned()
                .collect(),
        },
        four_eyes: a.four_eyes || b.four_eyes,
    }
}

/// What tightening changed, for the plan's gates and findings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tightened {
    /// Windows of the policy, kept apart from the spec's: a deploy must be inside one of
    /// each set.
    pub windows: Vec<Window>,
    /// Fields the policy decided (raised or set), by gate name, with the source to show.
    pub sources: BTreeMap<&'static str, String>,
    /// Problems of the release under this policy (a release type it does not allow, a
    /// required check phase the spec does not declare).
    pub violations: Vec<(String, String)>,
    /// What the policy overruled in the spec without blocking (code, message): shown as
    /// warnings so the author learns why the spec's setting has no effect.
    pub warnings: Vec<(String, String)>,
}

/// The environment a plan is made for: the spec's, made at least as strict as the policy.
/// A spec can add approvals, groups, windows and freezes but never remove the policy's.
pub fn tighten(
    env: &Environment,
    release_type: ReleaseType,
    declared_phases: &[CheckPhase],
    policy: &AppliedPolicy,
) -> (Environment, Tightened) {
    let p = &policy.env;
    let mut out = env.clone();
    let mut t = Tightened::default();
    if p.production && !env.production {
        out.production = true;
        t.sources.insert("production", policy.source("production"));
    }
    if let Some(pa) = &p.approvals {
        let merged = match &env.approvals {
            Some(sa) => stricter_approvals(pa, sa),
            None => pa.clone(),
        };
        let raised = env.approvals.as_ref() != Some(&merged);
        if raised {
            t.sources.insert("approvals", policy.source("approvals"));
        }
        out.approvals = Some(merged);
    }
    for f in &p.freezes {
        if !f.allow.contains(&release_type) {
            out.freezes.push(f.as_freeze());
            t.sources.insert("freezes", policy.source("freezes"));
        }
    }
    if !p.windows.is_empty() {
        t.windows = p.windows.clone();
    }
    if p.rehearsal == Some(RehearsalRequirement::Required)
        && env.recovery.as_ref().and_then(|r| r.rehearsal) != Some(RehearsalRequirement::Required)
    {
        let mut r = env.recovery.clone().unwrap_or(RecoveryPolicy {
            rto: None,
            rpo: None,
            rehearsal: None,
        });
        r.rehearsal = Some(RehearsalRequirement::Required);
        out.recovery = Some(r);
        t.sources.insert("rehearsal", policy.source("rehearsal"));
    }
    if !p.release_types.is_empty() && !p.release_types.contains(&release_type) {
        t.violations.push((
            "policy-release-type".to_owned(),
            format!(
                "{} does not allow {} releases (it allows: {}); ask an admin, or release as one of those types",
                policy.source("release_types"),
                release_type.as_str(),
                p.release_types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for phase in &p.checks {
        if !declared_phases.contains(phase) {
            t.violations.push((
                "policy-checks-missing".to_owned(),
                format!(
                    "{} requires `{}` checks here, and the spec declares none for this environment; add one under `checks` and list it in the environment's `checks`",
                    policy.source("checks"),
                    phase.as_str()
                ),
            ));
        }
    }
    if p.change_record {
        t.sources
            .insert("change_record", policy.source("change_record"));
    }
    if let Some(c) = &p.change {
        if env.change.as_ref().is_some_and(|own| own != c) {
            t.warnings.push((
                "policy-change-system".to_owned(),
                format!(
                    "the spec's `change` system ({}) is not used: {} names the change system this environment's records are checked in ({})",
                    own_url(env.change.as_ref()),
                    policy.source("change"),
                    c.url
                ),
            ));
        }
        out.change = Some(c.clone());
        t.sources.insert("change", policy.source("change"));
    }
    // Making a readiness check advisory loosens a gate: under a policy only the policy
    // may.
    let refused: Vec<&str> = env
        .advisory_checks
        .iter()
        .filter(|k| !p.advisory_checks.contains(k))
        .map(|k| k.as_str())
        .collect();
    if !refused.is_empty() {
        t.warnings.push((
            "policy-advisory-checks".to_owned(),
            format!(
                "`advisory_checks` [{}] stay gates here: under {} only the policy makes a readiness check advisory; fix what the check finds, or ask an admin to list it in the policy's `advisory_checks`",
                refused.join(", "),
                policy.source("advisory_checks")
            ),
        ));
    }
    // Under a policy whatever is advisory is so by the policy's word, even where the spec
    // happens to say the same.
    if !p.advisory_checks.is_empty() || !env.advisory_checks.is_empty() {
        t.sources
            .insert("advisory_checks", policy.source("advisory_checks"));
    }
    out.advisory_checks = p.advisory_checks.clone();
    if p.promote_from.is_some() {
        t.sources
            .insert("promote_from", policy.source("promote_from"));
    }
    (out, t)
}

fn own_url(c: Option<&ChangeManagement>) -> &str {
    c.map_or("none", |c| c.url.as_str())
}

/// Read a policy file: YAML into [`PolicyDoc`], every problem with its line and column.
pub fn load(file: &str, text: &str) -> Result<PolicyDoc, SpecErrors> {
    let fail = |diagnostics: Vec<Diagnostic>| SpecErrors {
        file: file.to_owned(),
        source: text.to_owned(),
        diagnostics,
    };
    let (value, spans) = crate::yaml::parse(text).map_err(fail)?;
    let mut diags = Vec::new();
    let schema = serde_json::to_value(schemars::schema_for!(PolicyDoc)).unwrap_or_default();
    match jsonschema::validator_for(&schema) {
        Ok(v) => {
            for e in v.iter_errors(&value) {
                let ptr = e.instance_path().as_str().to_owned();
                diags.push(Diagnostic::new(
                    "policy-invalid",
                    &ptr,
                    spans.lookup(&ptr).value,
                    format!("`{}`: {e}", crate::diag::dotted(&ptr)),
                    "see `slipway policy apply --help` for the policy file's fields",
                ));
            }
        }
        Err(e) => diags.push(Diagnostic::new(
            "internal",
            "",
            Pos::default(),
            format!("the built-in policy schema does not compile: {e}"),
            "please report this as a Slipway bug",
        )),
    }
    if !diags.is_empty() {
        return Err(fail(diags));
    }
    let doc: PolicyDoc = serde_json::from_value(value).map_err(|e| {
        fail(vec![Diagnostic::new(
            "policy-invalid",
            "",
            Pos::default(),
            format!("the policy does not read: {e}"),
            "see `slipway policy apply --help` for the policy file's fields",
        )])
    })?;
    let mut semantic = Vec::new();
    let at = |ptr: &str| spans.lookup(ptr).value;
    if doc.api_version != "slipway/v1" {
        semantic.push(Diagnostic::new(
            "policy-api-version",
            "/apiVersion",
            at("/apiVersion"),
            format!("apiVersion is `{}`", doc.api_version),
            "write `apiVersion: slipway/v1`",
        ));
    }
    if doc.kind != POLICY_KIND {
        semantic.push(Diagnostic::new(
            "policy-kind",
            "/kind",
            at("/kind"),
            format!("kind is `{}`, not `{POLICY_KIND}`", doc.kind),
            "a policy file says `kind: Policy` (a release spec is applied with `slipway deploy`)",
        ));
    }
    for (name, p) in &doc.environments {
        let base = format!("/environments/{}", crate::yaml::escape(name));
        if name != "*" && !valid_name(name) {
            semantic.push(Diagnostic::new(
                "policy-environment-name",
                &base,
                at(&base),
                format!("`{name}` is not an environment name"),
                "use letters, digits, `-`, `_` and `.`, or `*` for every environment",
            ));
        }
        for (i, w) in p.windows.iter().enumerate() {
            let ptr = format!("{base}/windows/{i}");
            if let Err(e) = crate::cron::parse(&w.cron) {
                semantic.push(Diagnostic::new(
                    "policy-window",
                    &format!("{ptr}/cron"),
                    at(&format!("{ptr}/cron")),
                    format!("`{}`: {e}", w.cron),
                    "write a five-field cron such as `0 9 * * MON-THU`",
                ));
            }
            if jiff::tz::TimeZone::get(&w.timezone).is_err() {
                semantic.push(Diagnostic::new(
                    "policy-window",
                    &format!("{ptr}/timezone"),
                    at(&format!("{ptr}/timezone")),
                    format!("`{}` is not an IANA time zone", w.timezone),
                    "write a zone such as `Europe/Berlin`",
                ));
            }
            if w.duration.get().is_err() {
                semantic.push(Diagnostic::new(
                    "policy-window",
                    &format!("{ptr}/duration"),
                    at(&format!("{ptr}/duration")),
                    format!("`{}` is not a duration", w.duration),
                    "write a duration such as `6h`",
                ));
            }
        }
        if let Some(d) = &p.dry_run
            && d.max_age().is_none()
        {
            let ptr = format!("{base}/dry_run/max_age");
            semantic.push(Diagnostic::new(
                "policy-dry-run",
                &ptr,
                at(&ptr),
                format!("`{}` is not a duration", d.max_age),
                "write a duration in hours or less, such as `24h` or `168h`",
            ));
        }
        if let Some(c) = &p.change {
            semantic.extend(crate::validate::change_management_at(
                &spans,
                &format!("{base}/change"),
                c,
            ));
        }
        if let Some(pf) = &p.promote_from {
            let ptr = format!("{base}/promote_from");
            if pf.environment == *name {
                semantic.push(Diagnostic::new(
                    "policy-promote-from",
                    &format!("{ptr}/environment"),
                    at(&format!("{ptr}/environment")),
                    format!("`{name}` cannot be promoted from itself"),
                    "name the environment releases go through before this one, e.g. `staging`",
                ));
            }
            if let Some(soak) = &pf.soak
                && soak.get().is_err()
            {
                semantic.push(Diagnostic::new(
                    "policy-promote-from",
                    &format!("{ptr}/soak"),
                    at(&format!("{ptr}/soak")),
                    format!("`{soak}` is not a duration"),
                    "write a duration such as `1h`",
                ));
            }
        }
        for (i, f) in p.freezes.iter().enumerate() {
            let ptr = format!("{base}/freezes/{i}");
            for (field, v) in [("from", &f.from), ("to", &f.to)] {
                if v.parse::<jiff::civil::Date>().is_err() {
                    semantic.push(Diagnostic::new(
                        "policy-freeze",
                        &format!("{ptr}/{field}"),
                        at(&format!("{ptr}/{field}")),
                        format!("`{v}` is not a YYYY-MM-DD date"),
                        "write a date such as `2026-12-20`",
                    ));
                }
            }
        }
    }
    if semantic.is_empty() {
        Ok(doc)
    } else {
        Err(fail(semantic))
    }
}

/// An environment name: letters, digits, `-`, `_`, `.`, not starting with `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
