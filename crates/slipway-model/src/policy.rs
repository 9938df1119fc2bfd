//! Release-type policy: which gates each kind of release needs in production.
//!
//! The spec's `policy` section overrides the built-in defaults field by field, and every
//! effective value remembers where it came from, so a plan can say *why* a gate applies.
//!
//! Defaults, and why:
//! - feature: 1 approval, canary required, 5m soak, smoke checks — new behaviour is the
//!   riskiest thing to expose all at once.
//! - patch: 1 approval, 2m soak.
//! - security: 1 approval, signed artifacts required, 2m soak — urgency over soak time, but
//!   never an unverified artifact.
//! - hotfix: 1 approval, post-review required, may deploy outside windows (never inside a
//!   freeze without an override) — the emergency-change path auditors ask about.

use crate::spec::{CheckPhase, PolicyRule, ReleaseSpec, ReleaseType, Requirement};

/// The built-in rule for a release type.
pub fn default_rule(t: ReleaseType) -> PolicyRule {
    let req = Some(Requirement::Required);
    match t {
        ReleaseType::Feature => PolicyRule {
            approvals: Some(1),
            canary: req,
            soak: Some("5m".into()),
            checks: Some(vec![CheckPhase::Smoke]),
            ..PolicyRule::default()
        },
        ReleaseType::Patch => PolicyRule {
            approvals: Some(1),
            soak: Some("2m".into()),
            ..PolicyRule::default()
        },
        ReleaseType::Security => PolicyRule {
            approvals: Some(1),
            signature: req,
            soak: Some("2m".into()),
            ..PolicyRule::default()
        },
        ReleaseType::Hotfix => PolicyRule {
            approvals: Some(1),
            post_review: req,
            ..PolicyRule::default()
        },
    }
}

/// A rule with every field resolved, each with its source.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveRule {
    /// Approvals and source.
    pub approvals: (u32, String),
    /// Canary required, and source.
    pub canary: (bool, String),
    /// Soak in seconds, and source.
    pub soak: Option<(u64, String)>,
    /// Signature required, and source.
    pub signature: (bool, String),
    /// Change record required, and source.
    pub change_record: (bool, String),
    /// Post-review required, and source.
    pub post_review: (bool, String),
    /// Required check phases, and source.
    pub checks: (Vec<CheckPhase>, String),
    /// Emergency changes may deploy outside windows.
    pub bypass_windows: bool,
}

/// Merge the spec's rule for `t` over the default.
pub fn effective_rule(spec: &ReleaseSpec, t: ReleaseType) -> EffectiveRule {
    let user = spec.policy.as_ref().and_then(|p| p.rule(t));
    let def = default_rule(t);
    let name = t.as_str();
    fn pick<T: Clone>(
        user: Option<&PolicyRule>,
        def: &PolicyRule,
        get: impl Fn(&PolicyRule) -> Option<T>,
        field: &str,
        name: &str,
    ) -> Option<(T, String)> {
        if let Some(v) = user.and_then(&get) {
            return Some((v, format!("policy.{name}.{field}")));
        }
        get(def).map(|v| (v, format!("default policy for {name} releases")))
    }
    let none = |field: &str| (false, format!("policy.{name}.{field} (not required)"));
    let flag = |r: Option<(Requirement, String)>, field: &str| match r {
        Some((Requirement::Required, s)) => (true, s),
        Some((Requirement::Optional, s)) => (false, s),
        None => none(field),
    };
    EffectiveRule {
        approvals: pick(user, &def, |r| r.approvals, "approvals", name)
            .unwrap_or((0, format!("policy.{name}.approvals"))),
        canary: flag(pick(user, &def, |r| r.canary, "canary", name), "canary"),
        soak: pick(user, &def, |r| r.soak.clone(), "soak", name).and_then(|(s, src)| {
            s.get()
                .ok()
                .map(|d| (d.as_secs(), src))
                .filter(|(secs, _)| *secs > 0)
        }),
        signature: flag(
            pick(user, &def, |r| r.signature, "signature", name),
            "signature",
        ),
        change_record: flag(
            pick(user, &def, |r| r.change_record, "change_record", name),
            "change_record",
        ),
        post_review: flag(
            pick(user, &def, |r| r.post_review, "post_review", name),
            "post_review",
        ),
        checks: pick(user, &def, |r| r.checks.clone(), "checks", name)
            .unwrap_or_else(|| (Vec::new(), format!("policy.{name}.checks"))),
        bypass_windows: t == ReleaseType::Hotfix,
    }
}
