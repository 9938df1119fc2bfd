//! Plans: a pure function of a validated spec, an environment and observed facts.
//!
//! A [`Plan`] is what gets approved and executed: dependency-ordered waves, the concrete
//! steps with idempotency keys, the gates the release type requires in that environment
//! (each with where the requirement comes from), a risk score with its factors, and a
//! big-bang vs phased recommendation with reasons. Its [`Plan::digest`] is the sha256 of a
//! canonical JSON form of everything that changes what would happen — not of advisory
//! parts (risk, recommendation) that may move with time — so an approval bound to a digest
//! stays valid exactly as long as the plan means the same thing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::{self, EffectiveRule};
use crate::spec::{
    AnalysisTemplate, Check, CheckPhase, Environment, ExecStep, Notification, Provider,
    ReleaseSpec, ReleaseType, Service, ServiceKind, Strategy,
};

/// Version of the plan format; bump when the meaning of a field changes.
pub const PLAN_FORMAT: u32 = 1;

/// Facts observed outside the spec that a plan may depend on. All optional: a plan made
/// without them says which facts it lacked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// Git tags of the repository holding the spec, if it is one.
    pub git_tags: Option<Vec<String>>,
    /// Versions currently running in the environment (from the store), overriding
    /// `environments.X.deployed`.
    pub deployed: BTreeMap<String, String>,
    /// Days since each service last changed in this environment.
    pub days_since_change: BTreeMap<String, u32>,
    /// Migration files found per migration service: (version, has undo script).
    pub migrations: BTreeMap<String, Vec<(u32, bool)>>,
    /// sha256 of each config template, by its path as written in the spec; pinned into
    /// the plan's `render_config` steps.
    #[serde(default)]
    pub config_templates: BTreeMap<String, String>,
    /// Breaking-compatibility findings (OpenAPI breaking changes, contract migrations
    /// shipped with the code that needs them), read from the files beside the spec.
    #[serde(default)]
    pub compat: Vec<crate::compat::CompatFinding>,
    /// sha256 of files the target reads at deploy time (the ssh target's inventory), by
    /// their path as written in the spec; pinned into the plan.
    #[serde(default)]
    pub target_files: BTreeMap<String, String>,
    /// Where the spec's repository stands relative to the release tag (only gathered when
    /// the spec declares `metadata.tag`).
    #[serde(default)]
    pub git: Option<GitState>,
    /// The source commit each service's artifact records it was built from (an OCI
    /// image's `org.opencontainers.image.revision`, an RPM's VCS tag), by service.
    #[serde(default)]
    pub artifact_revisions: BTreeMap<String, String>,
    /// The admin policy in force for the environment (from the store), which the plan is
    /// made at least as strict as.
    #[serde(default)]
    pub policy: Option<crate::admin_policy::AppliedPolicy>,
}

/// The repository holding the spec, for the release-tag check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// The commit checked out (HEAD).
    pub head: String,
    /// The commit the release tag points at, when the tag exists.
    pub tag_commit: Option<String>,
    /// Commits on HEAD after the tag, when HEAD descends from it.
    pub commits_after_tag: Option<u32>,
    /// Paths with changes no commit holds (modified, staged, untracked), Slipway's own
    /// `.slipway/` state excepted.
    pub uncommitted: Vec<String>,
}

/// The admin policy a plan was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// The store's policy version.
    pub version: u32,
    /// sha256 of the policy file's text.
    pub digest: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: u32,
    /// sha256 (hex) of the canonical form of the plan's semantic content.
    pub digest: String,
    /// What is released.
    pub release: ReleaseInfo,
    /// Environment name.
    pub environment: String,
    /// Whether it is a production environment.
    pub production: bool,
    /// The target kind.
    pub target: crate::spec::TargetKind,
    /// The strategy in force here.
    pub strategy_kind: crate::spec::StrategyKind,
    /// Dependency-ordered waves.
    pub waves: Vec<Wave>,
    /// Every step, in execution order.
    pub steps: Vec<PlannedStep>,
    /// Gates that must pass before and during the run.
    pub gates: Vec<Gate>,
    /// Risk score and its factors (advisory; not in the digest).
    pub risk: Risk,
    /// Big-bang vs phased (advisory; not in the digest).
    pub recommendation: Recommendation,
    /// Problems found while planning (e.g. a missing git tag).
    pub findings: Vec<Finding>,
    /// The environment's resolved settings.
    pub env: Environment,
    /// The strategy in force here.
    pub strategy: Strategy,
    /// The services of the release.
    pub services: BTreeMap<String, Service>,
    /// Analysis templates the strategy uses.
    pub analysis_templates: BTreeMap<String, AnalysisTemplate>,
    /// Metric providers the analysis uses.
    pub providers: BTreeMap<String, Provider>,
    /// Checks that gate this environment.
    pub checks: BTreeMap<String, Check>,
    /// Notification sinks.
    pub notifications: Vec<Notification>,
    /// Breaking-compatibility findings not waived: they require a phased strategy and an
    /// extra approval (see [`crate::compat`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaking: Vec<crate::compat::CompatFinding>,
    /// Breaking findings waived by the spec, with the reason and who decided; audited when
    /// the run starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waivers: Vec<crate::compat::AppliedWaiver>,
    /// sha256 of the files the target reads at deploy time (the ssh target's inventory:
    /// which hosts, as whom), by path as written in the spec. In the digest, so an edited
    /// inventory is another plan needing its own approvals, and a run refuses to go on
    /// with a file that no longer matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_files: BTreeMap<String, String>,
    /// The admin policy the plan was made under, when the store has one. In the digest: a
    /// new policy version is another plan needing its own approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
}

/// Release identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Release name.
    pub name: String,
    /// Release version.
    pub version: String,
    /// Release type.
    #[serde(rename = "type")]
    pub release_type: ReleaseType,
    /// Change record.
    pub change: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// The git tag the release must carry, when the spec declares a pattern.
    pub tag: Option<String>,
    /// Known issues, for the handover pack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_issues: Vec<String>,
    /// Escalation contacts, for the handover pack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<String>,
}

/// One wave: services deployed in parallel once every earlier wave is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// 0-based index.
    pub index: u32,
    /// Services of the wave, sorted.
    pub services: Vec<String>,
}

/// A concrete step of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Stable id within the plan, `service/step`.
    pub id: String,
    /// Wave index.
    pub wave: u32,
    /// Service the step belongs to.
    pub service: String,
    /// sha256(plan digest input + id): the same step of the same plan always has the same key.
    pub idempotency_key: String,
    /// What the step does.
    pub action: StepAction,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepAction {
    /// Run a command with idempotency guards (the `exec` target).
    Exec(ExecStep),
    /// Apply pending migrations of a migration service.
    Migrate {
        /// Migration directory.
        dir: String,
        /// Database URL template.
        database: String,
    },
    /// Deploy a service version onto the target (process or ssh), following the strategy.
    Deploy {
        /// Version deployed.
        version: String,
        /// Instances.
        replicas: u32,
    },
    /// Render a service's config templates for the environment at install time (secrets
    /// resolved only then) into the service's config directory (the `exec` target), or
    /// into its version's directory when the service is deployed as instances (`process`).
    RenderConfig {
        /// The templates and their destinations, as in `services.X.config`.
        files: Vec<crate::spec::ConfigTemplate>,
        /// sha256 of each template (by path) when the plan was made: a template edited
        /// after planning (and approval) is refused at install, as a changed artifact is.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        templates: BTreeMap<String, String>,
    },
    /// Re-verify a service's artifact immediately before its install: its sha256, and its
    /// signature when the plan requires signatures. Paths are relative to the spec file.
    VerifyArtifact {
        /// The artifact file.
        path: String,
        /// Expected sha256.
        sha256: String,
        /// The minisign signature file, if the spec names one.
        signature: Option<String>,
        /// Trusted public key files; empty when signatures are not required here.
        keys: Vec<String>,
    },
}

/// A gate and why it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The gate.
    #[serde(flatten)]
    pub kind: GateKind,
    /// Where the requirement comes from, e.g. `policy.feature.approvals`.
    pub source: String,
}

/// Kinds of gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "gate", rename_all = "snake_case")]
pub enum GateKind {
    /// N distinct approvers, from these groups, never the author when four-eyes.
    Approvals {
        /// Approvers needed.
        required: u32,
        /// Allowed groups (empty: anyone with the approver role).
        groups: Vec<String>,
        /// The author cannot approve.
        four_eyes: bool,
    },
    /// A change-board record must be named in `metadata.change`.
    ChangeRecord {
        /// The record, if present.
        record: Option<String>,
    },
    /// Artifacts must be signed by one of these keys.
    Signature {
        /// Trusted key files.
        keys: Vec<String>,
    },
    /// The strategy must be a canary.
    Canary,
    /// Stay at full weight this long, healthy, before success.
    Soak {
        /// Seconds.
        seconds: u64,
    },
    /// Only inside these windows.
    Windows {
        /// The windows.
        windows: Vec<crate::spec::Window>,
    },
    /// Never inside these freezes unless overridden with a reason and a second approver.
    Freezes {
        /// The freezes.
        freezes: Vec<crate::spec::Freeze>,
    },
    /// These checks must pass.
    Checks {
        /// Phase.
        phase: CheckPhase,
        /// Check names.
        names: Vec<String>,
    },
    /// The change record must exist and be approved in the external change-management
    /// system (`environments.X.change`), inside its implementation window: checked when
    /// planning, when a deploy starts, and by the engine before the first wave.
    ChangeApproved {
        /// `servicenow`, `jira` or `http`.
        system: String,
        /// The record (`metadata.change`), if named.
        record: Option<String>,
    },
    /// A review after the fact is required (emergency change).
    PostReview,
    /// The spec's checklist (lessons from retrospectives): each item satisfied by its
    /// check running in this plan, or acknowledged for this version and environment
    /// before a deploy starts.
    Checklist {
        /// The items.
        items: Vec<crate::spec::ChecklistItem>,
    },
    /// Readiness checks the spec declares for the environment (endpoints, TLS, resources,
    /// accounts, the analysis's metric providers) run before the first wave; a failure of
    /// one not listed as advisory blocks the deploy. On the ssh target they run on every
    /// host over the deploy's own sessions.
    Readiness {
        /// The kinds that run.
        checks: Vec<crate::readiness::ReadinessCheck>,
        /// The kinds whose failures only warn (`environments.X.advisory_checks`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        advisory: Vec<crate::readiness::ReadinessCheck>,
    },
    /// The same inputs must have succeeded in the previous environment of the admin
    /// policy's lifecycle (see [`crate::promotion`]).
    Promotion {
        /// The previous environment.
        from: String,
        /// The run there that proves it, when one does.
        run: Option<String>,
        /// When that run finished.
        finished_at: Option<String>,
        /// sha256 of the inputs (version, artifact and config template digests).
        inputs: String,
        /// Deployed without the evidence, for this reason (`--override-promotion`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overridden: Option<String>,
    },
}

impl GateKind {
    /// Short name of the gate.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Approvals { .. } => "approvals",
            Self::ChangeRecord { .. } => "change_record",
            Self::ChangeApproved { .. } => "change_approved",
            Self::Signature { .. } => "signature",
            Self::Canary => "canary",
            Self::Soak { .. } => "soak",
            Self::Windows { .. } => "windows",
            Self::Freezes { .. } => "freezes",
            Self::Checks { .. } => "checks",
            Self::PostReview => "post_review",
            Self::Checklist { .. } => "checklist",
            Self::Readiness { .. } => "readiness",
            Self::Promotion { .. } => "promotion",
        }
    }
}

/// Risk score with contributing factors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Risk {
    /// 0–100.
    pub score: u32,
    /// `low` (<30), `medium` (<60), `high`.
    pub level: String,
    /// What contributed.
    pub factors: Vec<RiskFactor>,
}

/// One contribution to the risk score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFactor {
    /// Factor name.
    pub factor: String,
    /// Points added.
    pub points: u32,
    /// Why.
    pub detail: String,
}

/// Big-bang vs phased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    /// `big_bang` or `phased`.
    pub approach: String,
    /// Why.
    pub reasons: Vec<String>,
    /// Whether the strategy in force follows the recommendation.
    pub strategy_agrees: bool,
}

impl Plan {
    /// The router in front of `service` here: the environment's `router:` when it names
    /// this service or names none, else `None` (the built-in proxy).
    pub fn router_of(&self, service: &str) -> Option<&crate::spec::Router> {
        self.env
            .router
            .as_ref()
            .filter(|r| r.service.as_deref().is_none_or(|s| s == service))
            .filter(|r| r.kind() != "builtin")
    }

    /// The fixed front-door address of `service`'s built-in proxy, when the environment's
    /// `router: { builtin: { listen } }` sets one for it. Validation proved it parses; a
    /// plan edited by hand to something else gets no fixed address (a free port).
    pub fn builtin_listen(&self, service: &str) -> Option<std::net::SocketAddr> {
        self.env
            .router
            .as_ref()
            .filter(|r| r.service.as_deref().is_none_or(|s| s == service))
            .and_then(|r| r.builtin.as_ref())
            .and_then(|b| b.listen.as_deref())
            .and_then(|l| l.parse().ok())
    }

    /// The trusted keys of the plan's signature gate, when artifacts must be signed here;
    /// `None` when the plan has no signature gate.
    pub fn signature_keys(&self) -> Option<&[String]> {
        signature_keys(&self.gates)
    }
}

fn signature_keys(gates: &[Gate]) -> Option<&[String]> {
    gates.iter().find_map(|g| match &g.kind {
        GateKind::Signature { keys } => Some(keys.as_slice()),
        _ => None,
    })
}

/// How much a plan finding matters. Serialised as `error`, `warning`, `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingSeverity {
    /// Blocks the deploy.
    Error,
    /// Worth a look; does not block.
    Warning,
    /// For the record.
    Info,
}

impl FindingSeverity {
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

impl std::fmt::Display for FindingSeverity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem found while planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `error` blocks the deploy; `warning` and `info` do not.
    pub severity: FindingSeverity,
    /// Stable code.
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Fills a step's commands in place (see [`crate::step_vars`]); what cannot be filled
/// stays as written and is an `error` finding, so the plan is refused rather than a
/// placeholder reaching the shell.
fn render_step(
    service: &str,
    index: usize,
    st: &mut crate::spec::ExecStep,
    vars: &BTreeMap<String, crate::spec::Scalar>,
    env_name: &str,
    findings: &mut Vec<Finding>,
) {
    use crate::step_vars::{RenderError, render};
    let fields: [(&str, &mut String); 1] = [("run", &mut st.run)];
    let optional = [
        ("creates", st.creates.as_mut()),
        ("unless", st.unless.as_mut()),
        ("undo", st.undo.as_mut()),
    ];
    let all = fields
        .into_iter()
        .chain(optional.into_iter().filter_map(|(f, v)| v.map(|v| (f, v))));
    for (field, text) in all {
        match render(text, vars) {
            Ok(filled) => *text = filled,
            Err(e) => {
                let why = match e {
                    RenderError::Placeholder(p) => p.to_string(),
                    RenderError::Undefined(names) => format!(
                        "environments.{env_name} declares no variable {}: declare it under environments.{env_name}.vars",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    RenderError::Secret(names) => secret_advice(&names, vars, env_name),
                };
                findings.push(Finding {
                    severity: FindingSeverity::Error,
                    code: "step-placeholder".into(),
                    message: format!("services.{service}.steps[{index}].{field}: {why}"),
                });
            }
        }
    }
}

/// Why a secret variable cannot be filled into a command, and what to write instead: the
/// variable a `secret://env/X` names is in the environment every exec step inherits.
pub fn secret_advice(
    names: &[String],
    vars: &BTreeMap<String, crate::spec::Scalar>,
    env_name: &str,
) -> String {
    let instead: Vec<String> = names
        .iter()
        .map(|n| {
            let v = vars
                .get(n)
                .map(crate::spec::Scalar::as_str)
                .unwrap_or_default();
            match v.strip_prefix("secret://env/") {
                Some(var) => format!("\"${var}\" for vars.{n}"),
                None => format!("read {v} in the command for vars.{n}"),
            }
        })
        .collect();
    format!(
        "{} {} a secret reference in environments.{env_name}, and a secret's value is never written into a plan; write {} (exec steps inherit slipway's environment)",
        names
            .iter()
            .map(|n| format!("vars.{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        if names.len() == 1 { "is" } else { "are" },
        instead.join(", ")
    )
}

/// The git tag the release must carry: `metadata.tag` with `{version}` and `{name}` filled.
pub fn release_tag(spec: &ReleaseSpec) -> Option<String> {
    spec.metadata.tag.as_ref().map(|p| {
        p.replace("{version}", &spec.metadata.version)
            .replace("{name}", &spec.metadata.name)
    })
}

/// The release tag must be what is deployed: the tagged commit checked out with no
/// uncommitted change — or else every artifact must record that it was built from the
/// tagged commit (then what runs is the tag's, whatever the checkout holds; the spec's own
/// edits are what the plan shows and approvers review).
fn tag_at_head(
    tag: &str,
    g: &GitState,
    revisions: &BTreeMap<String, String>,
    spec: &ReleaseSpec,
) -> Vec<Finding> {
    let Some(tagged) = &g.tag_commit else {
        return Vec::new();
    };
    let short = |c: &str| c.chars().take(12).collect::<String>();
    let with_artifacts: Vec<&String> = spec
        .services
        .iter()
        .filter(|(_, s)| s.artifact.is_some())
        .map(|(n, _)| n)
        .collect();
    if !with_artifacts.is_empty()
        && with_artifacts.iter().all(|n| {
            // A revision may be abbreviated, but not below git's shortest default.
            revisions
                .get(*n)
                .is_some_and(|r| r.len() >= 7 && tagged.starts_with(&r.to_lowercase()))
        })
    {
        return vec![Finding {
            severity: FindingSeverity::Info,
            code: "tag-artifacts".into(),
            message: format!(
                "every artifact records it was built from {} (tag {tag}), so what is deployed is the tag's even though the checkout is not",
                short(tagged)
            ),
        }];
    }
    let mut out = Vec::new();
    if g.head != *tagged {
        let distance = match g.commits_after_tag {
            Some(n) => format!("{n} commit{} after", if n == 1 { "" } else { "s" }),
            None => "not a descendant of".to_owned(),
        };
        out.push(Finding {
            severity: FindingSeverity::Error,
            code: "tag-not-head".into(),
            message: format!(
                "HEAD is {} ({distance} tag {tag} at {}): the plan would deploy what is checked out, not what was tagged. Check out the tag (git checkout {tag}), or move the tag to this commit if it is the release",
                short(&g.head),
                short(tagged)
            ),
        });
    }
    if !g.uncommitted.is_empty() {
        let shown: Vec<&str> = g.uncommitted.iter().take(5).map(String::as_str).collect();
        out.push(Finding {
            severity: FindingSeverity::Error,
            code: "tree-dirty".into(),
            message: format!(
                "{} uncommitted change{} ({}{}): tag {tag} does not contain what would be deployed. Commit and tag them, or stash them",
                g.uncommitted.len(),
                if g.uncommitted.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if g.uncommitted.len() > 5 { ", …" } else { "" }
            ),
        });
    }
    out
}

/// Risk score at or above which a release counts as high-impact (change record required).
pub const HIGH_RISK: u32 = 60;

/// Make the plan for one environment of a validated spec.
///
/// The caller must have validated the spec ([`crate::validate::load`]); an unknown
/// environment is the only error, since everything else was checked there.
pub fn plan(spec: &ReleaseSpec, env_name: &str, facts: &Facts) -> Result<Plan, String> {
    let declared = spec.environments.get(env_name).ok_or_else(|| {
        let names: Vec<&str> = spec.environments.keys().map(String::as_str).collect();
        format!(
            "unknown environment `{env_name}`; the spec declares: {}",
            names.join(", ")
        )
    })?;
    // The admin policy makes the environment at least as strict as it says; the spec can
    // tighten it further but never loosen it.
    let declared_phases: Vec<CheckPhase> = declared
        .checks
        .iter()
        .filter_map(|n| spec.checks.get(n).map(|c| c.phase))
        .collect();
    let (tightened_env, tightened) = match &facts.policy {
        Some(p) => {
            let (e, t) = crate::admin_policy::tighten(
                declared,
                spec.metadata.release_type,
                &declared_phases,
                p,
            );
            (e, Some((t, p)))
        }
        None => (declared.clone(), None),
    };
    let env = &tightened_env;
    let strategy = env
        .strategy
        .clone()
        .or_else(|| spec.strategy.clone())
        .unwrap_or_default();
    let mut deployed = env.deployed.clone();
    deployed.extend(facts.deployed.clone());

    let waves = waves(&spec.services);
    let release = ReleaseInfo {
        name: spec.metadata.name.clone(),
        version: spec.metadata.version.clone(),
        release_type: spec.metadata.release_type,
        change: spec.metadata.change.clone(),
        owner: spec.metadata.owner.clone(),
        tag: release_tag(spec),
        known_issues: spec.metadata.known_issues.clone(),
        contacts: spec.metadata.contacts.clone(),
    };

    // Only what this environment uses goes into the plan (and so into its digest): editing
    // staging's variables must not invalidate production approvals.
    let mut templates = BTreeMap::new();
    if let Some(c) = &strategy.canary {
        for a in c
            .steps
            .iter()
            .filter_map(|s| s.analysis.as_ref())
            .chain(c.analysis.as_ref())
        {
            if let Some(t) = spec.analysis_templates.get(&a.template) {
                templates.insert(a.template.clone(), t.clone());
            }
        }
    }
    let providers: BTreeMap<String, Provider> = templates
        .values()
        .flat_map(|t| t.metrics.iter().map(|m| m.provider.clone()))
        .filter_map(|p| spec.providers.get(&p).map(|v| (p, v.clone())))
        .collect();
    let checks: BTreeMap<String, Check> = env
        .checks
        .iter()
        .filter_map(|n| spec.checks.get(n).map(|c| (n.clone(), c.clone())))
        .collect();

    let rule = policy::effective_rule(spec, spec.metadata.release_type);
    let mut findings = Vec::new();
    if let (Some(tag), None) = (&release.tag, &facts.git_tags) {
        findings.push(Finding {
            severity: FindingSeverity::Warning,
            code: "tag-unchecked".into(),
            message: format!(
                "the spec is not in a git repository, so tag `{tag}` could not be checked"
            ),
        });
    }
    if let (Some(tag), Some(tags)) = (&release.tag, &facts.git_tags)
        && !tags.iter().any(|t| t == tag)
    {
        findings.push(Finding {
                severity: FindingSeverity::Error,
                code: "tag-missing".into(),
                message: format!(
                    "git tag `{tag}` (from metadata.tag `{}`) does not exist; tag the release commit: git tag {tag}",
                    spec.metadata.tag.as_deref().unwrap_or_default()
                ),
            });
    }

    if let (Some(tag), Some(g)) = (&release.tag, &facts.git) {
        findings.extend(tag_at_head(tag, g, &facts.artifact_revisions, spec));
    }

    let risk = risk(spec, env, &strategy, &deployed, facts, &waves);
    let mut gates = gates(
        spec,
        env_name,
        env,
        &strategy,
        &rule,
        &checks,
        &risk,
        &mut findings,
    );
    if let Some((t, p)) = &tightened {
        apply_policy(spec, env, &risk, t, p, &mut gates, &mut findings);
    }
    if let Some(mut g) = readiness_gate(spec, env, env_name, &templates) {
        // Under a policy the advisory list is the policy's, not the spec's.
        if let Some((t, _)) = &tightened
            && let Some(src) = t.sources.get("advisory_checks")
            && let GateKind::Readiness { advisory, .. } = &g.kind
            && !advisory.is_empty()
        {
            g.source = g
                .source
                .replace(&format!("environments.{env_name}.advisory_checks"), src);
        }
        gates.push(g);
    }
    let mut recommendation = recommend(spec, env, &strategy, &risk, facts);
    // What the engine enforces and what it cannot: a soak holds traffic at full weight
    // and probes run against instances, both only on the process target, for services it
    // runs (`run:`). Elsewhere the gate is left out of the plan, and a probe is said to be
    // unenforced, rather than shown and not kept.
    let runs = |s: &crate::spec::Service| {
        env.target.kind() == crate::spec::TargetKind::Process && s.run.is_some()
    };
    if !spec.services.values().any(runs)
        && let Some(i) = gates
            .iter()
            .position(|g| matches!(g.kind, GateKind::Soak { .. }))
    {
        let g = gates.remove(i);
        findings.push(Finding {
            severity: FindingSeverity::Warning,
            code: "soak-not-enforced".into(),
            message: format!(
                "{} asks for a soak, but only the process target holds a release at full weight with its probes and analysis running; this plan has no service it runs, so the soak is not part of the plan: watch the release by hand for that long",
                g.source
            ),
        });
    }
    for (name, s) in &spec.services {
        // On ssh hosts the supervisor waits for the readiness probe of each instance
        // (`slipway_providers::ssh_service`); nothing probes health there after that.
        if env.target.kind() == crate::spec::TargetKind::Ssh && s.run.is_some() {
            if s.health.is_some() {
                findings.push(Finding {
                    severity: FindingSeverity::Warning,
                    code: "probe-not-enforced".into(),
                    message: format!(
                        "services.{name}.health: on the ssh target only the readiness probe is evaluated (on each host, before the deploy step succeeds there); the health probe is not: watch the service's health by hand"
                    ),
                });
            }
            continue;
        }
        if !runs(s) && (s.health.is_some() || s.readiness.is_some()) {
            findings.push(Finding {
                severity: FindingSeverity::Warning,
                code: "probe-not-enforced".into(),
                message: format!(
                    "services.{name} declares a health or readiness probe, but probes run only against instances the process target runs (`run:`); on the {} target it is not evaluated: check the service in a step (e.g. a last step `run: <your probe>`)",
                    env.target.kind()
                ),
            });
        }
    }
    let compat = crate::compat::apply(
        spec,
        env_name,
        env,
        &strategy,
        facts,
        &mut gates,
        &mut recommendation,
        &mut findings,
    );

    // `{{ vars.NAME }}` in step commands, filled with this environment's variables: the
    // plan shows, and approvals cover, the commands exactly as they will run.
    let mut services = spec.services.clone();
    for (name, svc) in &mut services {
        for (i, st) in svc.steps.iter_mut().enumerate() {
            render_step(name, i, st, &env.vars, env_name, &mut findings);
        }
    }

    let mut plan = Plan {
        format: PLAN_FORMAT,
        digest: String::new(),
        release,
        environment: env_name.to_owned(),
        production: env.production,
        target: env.target.kind(),
        strategy_kind: strategy.kind(),
        waves,
        steps: Vec::new(),
        gates,
        risk,
        recommendation,
        findings,
        env: env.clone(),
        strategy,
        services,
        analysis_templates: templates,
        providers,
        checks,
        notifications: spec.notifications.clone(),
        breaking: compat.breaking,
        waivers: compat.waivers,
        target_files: BTreeMap::new(),
        policy: facts.policy.as_ref().map(|p| PolicyRef {
            version: p.version,
            digest: p.digest.clone(),
        }),
    };
    // The base digest (no steps yet) keys the steps; the plan's digest adds them. Only
    // `steps` and `target_files` differ between the two, and `steps` sorts after almost
    // everything else: the canonical text is written once with no steps, the SHA-256 of
    // what precedes them kept, and the final digest continues from there.
    let parts = canonical_text(&plan);
    let (base, prefix) = match &parts {
        Ok((doc, steps_at)) => {
            let mut prefix = Sha256::new();
            prefix.update(&doc[..steps_at.start]);
            let base = hex::encode(
                prefix
                    .clone()
                    .chain_update(&doc[steps_at.start..])
                    .finalize(),
            );
            (base, Some(prefix))
        }
        Err(_) => (hash_of(&canonical(&plan)), None),
    };
    plan.steps = steps(&plan, &base);
    // Template digests are facts (the planner reads no files); they go into the steps, and
    // so into the digest, but not into the idempotency keys' base.
    for s in &mut plan.steps {
        if let StepAction::RenderConfig { files, templates } = &mut s.action {
            for f in files.iter() {
                if let Some(d) = facts.config_templates.get(&f.template) {
                    templates.insert(f.template.clone(), d.clone());
                }
            }
        }
    }
    // Like template digests: in the plan's digest, not in the idempotency keys' base.
    if let Some(t) = &plan.env.target.ssh
        && let Some(d) = facts.target_files.get(&t.inventory)
    {
        plan.target_files.insert(t.inventory.clone(), d.clone());
    }
    plan.digest = match (parts, prefix) {
        (Ok((doc, steps_at)), Some(mut prefix)) if plan.target_files.is_empty() => {
            let mut w = crate::canonical::Canonical::default();
            match w.write(&plan.steps) {
                Ok(()) => {
                    prefix.update(w.bytes());
                    prefix.update(&doc[steps_at.end..]);
                    hex::encode(prefix.finalize())
                }
                Err(_) => digest_of(&plan),
            }
        }
        // `target_files` sorts after `steps`: the whole text again (ssh plans only).
        _ => digest_of(&plan),
    };
    debug_assert_eq!(
        plan.digest,
        hash_of(&canonical(&plan)),
        "the digest continued from the text before the steps"
    );
    Ok(plan)
}

/// What the admin policy adds beyond the tightened environment: the source of each gate it
/// decided, its windows (a gate of their own: a deploy must be inside one of the policy's
/// windows and one of the spec's), approvals added for risk, the change record it
/// requires, and releases it does not allow.
fn apply_policy(
    spec: &ReleaseSpec,
    env: &Environment,
    risk: &Risk,
    t: &crate::admin_policy::Tightened,
    p: &crate::admin_policy::AppliedPolicy,
    gates: &mut Vec<Gate>,
    findings: &mut Vec<Finding>,
) {
    for g in gates.iter_mut() {
        let name = g.kind.name();
        if let Some(src) = t.sources.get(name) {
            g.source = src.clone();
        }
    }
    if let Some(r) = &p.env.risk
        && risk.score >= r.above
    {
        let base = gates.iter().find_map(|g| match &g.kind {
            GateKind::Approvals { required, .. } => Some(*required),
            _ => None,
        });
        let groups = env
            .approvals
            .as_ref()
            .map(|a| a.groups.clone())
            .unwrap_or_default();
        gates.push(Gate {
            kind: GateKind::Approvals {
                required: base.unwrap_or(0) + r.add_approvals,
                groups,
                four_eyes: true,
            },
            source: format!(
                "{} (risk score {} ≥ {})",
                p.source("risk"),
                risk.score,
                r.above
            ),
        });
    }
    if !t.windows.is_empty() {
        gates.push(Gate {
            kind: GateKind::Windows {
                windows: t.windows.clone(),
            },
            source: p.source("windows"),
        });
    }
    if p.env.change_record
        && !gates
            .iter()
            .any(|g| matches!(g.kind, GateKind::ChangeRecord { .. }))
    {
        if spec.metadata.change.is_none() {
            findings.push(Finding {
                severity: FindingSeverity::Error,
                code: "change-record-missing".into(),
                message: format!(
                    "a change-board record is required ({}); set metadata.change to the record id, e.g. CHG-1234",
                    p.source("change_record")
                ),
            });
        }
        gates.push(Gate {
            kind: GateKind::ChangeRecord {
                record: spec.metadata.change.clone(),
            },
            source: p.source("change_record"),
        });
    }
    for (code, message) in &t.violations {
        findings.push(Finding {
            severity: FindingSeverity::Error,
            code: code.clone(),
            message: message.clone(),
        });
    }
    for (code, message) in &t.warnings {
        findings.push(Finding {
            severity: FindingSeverity::Warning,
            code: code.clone(),
            message: message.clone(),
        });
    }
}

/// The readiness checks the spec declares for this environment, as a gate: endpoints
/// (reach, and TLS for `tls://`), resources (capacity), accounts, and — where canaries run
/// (the process target) — the external metric providers the analysis asks (monitoring).
/// `None` when nothing is declared.
fn readiness_gate(
    spec: &ReleaseSpec,
    env: &Environment,
    env_name: &str,
    templates: &BTreeMap<String, AnalysisTemplate>,
) -> Option<Gate> {
    use crate::readiness::ReadinessCheck as K;
    let services = spec.services.values();
    let endpoints: Vec<&String> = services.clone().flat_map(|s| &s.endpoints).collect();
    let mut checks = Vec::new();
    if endpoints
        .iter()
        .any(|e| !e.trim_start().starts_with("tls://"))
    {
        checks.push(K::Reach);
    }
    if endpoints
        .iter()
        .any(|e| e.trim_start().starts_with("tls://"))
    {
        checks.push(K::Tls);
    }
    if services.clone().any(|s| s.resources.is_some()) {
        checks.push(K::Capacity);
    }
    if services.clone().any(|s| !s.accounts.is_empty()) {
        checks.push(K::Accounts);
    }
    let external = templates
        .values()
        .flat_map(|t| &t.metrics)
        .any(|m| spec.providers.contains_key(&m.provider));
    if external && env.target.process.is_some() {
        checks.push(K::Monitoring);
    }
    if checks.is_empty() {
        return None;
    }
    let advisory: Vec<K> = env
        .advisory_checks
        .iter()
        .copied()
        .filter(|k| checks.contains(k))
        .collect();
    let mut source =
        "services (endpoints, resources, accounts) and the analysis's providers".to_owned();
    if !advisory.is_empty() {
        source.push_str(&format!(
            "; advisory: environments.{env_name}.advisory_checks"
        ));
    }
    Some(Gate {
        kind: GateKind::Readiness { checks, advisory },
        source,
    })
}

/// Canonical digest of the semantic content of a plan.
///
/// serde_json's map is a BTreeMap (no `preserve_order` feature), so keys are sorted and the
/// text is whitespace-free: reordering keys or reformatting the YAML cannot change it.
pub fn digest_of(plan: &Plan) -> String {
    match canonical_text(plan) {
        Ok((doc, _)) => hex::encode(Sha256::digest(&doc)),
        Err(_) => hash_of(&canonical(plan)),
    }
}

/// The text of [`canonical`] written directly ([`crate::canonical`]), and where the value
/// of `steps` is in it. Identical bytes, without building the `serde_json::Value` (which,
/// with dropping it, was most of the digest's cost for 2,000 services).
fn canonical_text(plan: &Plan) -> Result<(Vec<u8>, std::ops::Range<usize>), serde_json::Error> {
    let mut depends: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (n, s) in &plan.services {
        depends.insert(n, s.depends_on.iter().map(String::as_str).collect());
    }
    let mut w = crate::canonical::Canonical::default();
    let o = w.begin_object();
    // In key order, so no entry moves and the range of `steps` stays true (checked below).
    w.entry(&o, "analysis_templates", &plan.analysis_templates)?;
    if !plan.breaking.is_empty() {
        w.entry(&o, "breaking", &plan.breaking)?;
    }
    w.entry(&o, "checks", &plan.checks)?;
    w.entry(&o, "depends", &depends)?;
    w.entry(&o, "env", &plan.env)?;
    w.entry(&o, "environment", &plan.environment)?;
    w.entry(&o, "format", &plan.format)?;
    w.entry(&o, "gates", &plan.gates)?;
    w.entry(&o, "notifications", &plan.notifications)?;
    if let Some(p) = &plan.policy {
        w.entry(&o, "policy", p)?;
    }
    w.entry(&o, "providers", &plan.providers)?;
    w.entry(&o, "release", &plan.release)?;
    // depends_on order carries no meaning; the set does: each service's lists are
    // written sorted, as [`canonical`] sorts them in the `Value`.
    w.entry_with_sorted_lists(
        &o,
        "services",
        &plan.services,
        2,
        &["depends_on", "coupled_with"],
    )?;
    let steps = w.entry(&o, "steps", &plan.steps)?;
    w.entry(&o, "strategy", &plan.strategy)?;
    if !plan.target_files.is_empty() {
        w.entry(&o, "target_files", &plan.target_files)?;
    }
    if !plan.waivers.is_empty() {
        w.entry(&o, "waivers", &plan.waivers)?;
    }
    w.entry(&o, "waves", &plan.waves)?;
    if w.end_object(o) {
        // Cannot happen with the order above; the text is right anyway, only the range
        // would not be.
        return Err(<serde_json::Error as serde::ser::Error>::custom(
            "plan fields out of key order",
        ));
    }
    Ok((w.take(), steps))
}

/// The canonical JSON a plan's digest hashes.
fn canonical(plan: &Plan) -> serde_json::Value {
    let mut depends: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (n, s) in &plan.services {
        depends.insert(n, s.depends_on.iter().map(String::as_str).collect());
    }
    // depends_on order carries no meaning; the set does: each service's lists are sorted
    // in its JSON rather than on a copy of the service (2,000 clones and drops of them was
    // a tenth of planning 2,000 services; the bytes hashed are the same).
    let mut services = serde_json::json!(plan.services);
    if let Some(m) = services.as_object_mut() {
        for s in m.values_mut() {
            for field in ["depends_on", "coupled_with"] {
                if let Some(serde_json::Value::Array(a)) = s.get_mut(field) {
                    a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
                }
            }
        }
    }
    let mut canonical = serde_json::json!({
        "format": plan.format,
        "release": plan.release,
        "environment": plan.environment,
        "env": plan.env,
        "strategy": plan.strategy,
        // depends_on order carries no meaning; the set does.
        "depends": depends,
        "waves": plan.waves,
        "steps": plan.steps,
        "gates": plan.gates,
        "analysis_templates": plan.analysis_templates,
        "providers": plan.providers,
        "checks": plan.checks,
        "notifications": plan.notifications,
    });
    // Only when present, so plans without compatibility findings keep their digests.
    // A waiver changes what is approved (no compat gate), so it is part of the digest.
    if let Some(m) = canonical.as_object_mut() {
        // Moved in, not through `json!` (which would copy the whole tree).
        m.insert("services".into(), services);
        if !plan.breaking.is_empty() {
            m.insert("breaking".into(), serde_json::json!(plan.breaking));
        }
        if !plan.waivers.is_empty() {
            m.insert("waivers".into(), serde_json::json!(plan.waivers));
        }
        if !plan.target_files.is_empty() {
            m.insert("target_files".into(), serde_json::json!(plan.target_files));
        }
        if let Some(p) = &plan.policy {
            m.insert("policy".into(), serde_json::json!(p));
        }
    }
    canonical
}

/// SHA-256 of a value's compact JSON text, in hex.
fn hash_of(canonical: &serde_json::Value) -> String {
    // Streamed into the hash: the same bytes as `canonical.to_string()` without holding
    // a megabyte of text for a 2,000-service plan.
    let mut hasher = HashWriter(Sha256::new());
    // Writing to a hasher cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut hasher, canonical);
    hex::encode(hasher.0.finalize())
}

/// `io::Write` into a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Longest-path layering: a service's wave is one more than the latest of its
/// dependencies; coupled services are pulled into the same (latest) wave.
pub fn waves(services: &BTreeMap<String, Service>) -> Vec<Wave> {
    // Kahn's algorithm over indices (each edge looked at once): a service's level is one
    // more than the highest of its dependencies. Unknown dependencies are ignored; a
    // service on a cycle (validation refuses those) never becomes ready and gets no level.
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    let index: std::collections::HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let deps: Vec<Vec<usize>> = services
        .values()
        .map(|s| {
            s.depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut waiting: Vec<usize> = vec![0; names.len()];
    for (i, ds) in deps.iter().enumerate() {
        waiting[i] = ds.len();
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut levels: Vec<Option<u32>> = vec![None; names.len()];
    let mut ready: Vec<usize> = (0..names.len()).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop() {
        levels[i] = Some(
            deps[i]
                .iter()
                .filter_map(|&d| levels[d])
                .map(|l| l + 1)
                .max()
                .unwrap_or(0),
        );
        for &j in &dependents[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    let mut level: BTreeMap<&str, u32> = names
        .iter()
        .zip(&levels)
        .filter_map(|(n, l)| l.map(|l| (*n, l)))
        .collect();
    // Coupled groups move together: everyone in a group goes to the group's latest wave.
    // Repeat until stable because groups can chain.
    for _ in 0..services.len() {
        let mut changed = false;
        for (n, s) in services {
            for c in &s.coupled_with {
                let (Some(&a), Some(&b)) = (level.get(n.as_str()), level.get(c.as_str())) else {
                    continue;
                };
                if a != b {
                    let m = a.max(b);
                    level.insert(n, m);
                    level.insert(c, m);
                    changed = true;
                }
            }
        }
        // Pulling a service later may break "after its dependencies" for its dependents.
        for (n, s) in services {
            let need = s
                .depends_on
                .iter()
                .filter_map(|d| level.get(d.as_str()))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            if let Some(l) = level.get_mut(n.as_str())
                && *l < need
            {
                *l = need;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut by_wave: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (n, l) in level {
        by_wave.entry(l).or_default().push(n.to_owned());
    }
    by_wave
        .into_values()
        .enumerate()
        .map(|(i, services)| Wave {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            services,
        })
        .collect()
}

fn steps(plan: &Plan, base_digest: &str) -> Vec<PlannedStep> {
    let mut out = Vec::new();
    let sig_keys = plan.signature_keys();
    // Every key hashes `{base_digest}\n{id}`: the state after the common prefix is kept
    // and each id continues from a copy of it (the same bytes hashed, one block less each).
    let mut key_prefix = Sha256::new();
    key_prefix.update(base_digest.as_bytes());
    key_prefix.update(b"\n");
    for wave in &plan.waves {
        for name in &wave.services {
            let Some(svc) = plan.services.get(name) else {
                continue;
            };
            let version = svc
                .version
                .clone()
                .unwrap_or_else(|| plan.release.version.clone());
            let mut push = |id: String, action: StepAction| {
                let key = hex::encode(key_prefix.clone().chain_update(id.as_bytes()).finalize());
                out.push(PlannedStep {
                    id,
                    wave: wave.index,
                    service: name.clone(),
                    idempotency_key: key,
                    action,
                });
            };
            // First in the service's steps, so nothing of the service is installed from
            // an artifact that changed since the plan was made.
            if let Some(a) = &svc.artifact {
                push(
                    format!("{name}/verify-artifact"),
                    StepAction::VerifyArtifact {
                        path: a.path.clone(),
                        sha256: a.sha256.clone(),
                        signature: a.signature.clone(),
                        keys: sig_keys.map(<[String]>::to_vec).unwrap_or_default(),
                    },
                );
            }
            if svc.kind == ServiceKind::Migration {
                push(
                    format!("{name}/migrate"),
                    StepAction::Migrate {
                        dir: svc.migrations.clone().unwrap_or_default(),
                        database: svc.database.clone().unwrap_or_default(),
                    },
                );
                continue;
            }
            if plan.env.target.exec.is_some() {
                // Config first, so the install steps find it in $SLIPWAY_CONFIG_DIR.
                if !svc.config.is_empty() {
                    push(
                        format!("{name}/render-config"),
                        StepAction::RenderConfig {
                            files: svc.config.clone(),
                            templates: BTreeMap::new(),
                        },
                    );
                }
                for s in &svc.steps {
                    push(format!("{name}/{}", s.name), StepAction::Exec(s.clone()));
                }
            } else if plan.env.target.ssh.is_some() {
                // The same install steps, run on every host of the inventory group. A
                // service with `run:` is then deployed as supervised instances on each
                // host: its config rendered first (on this machine, one directory per
                // version, delivered to each host by the deploy step), then the deploy.
                // Config of a service without `run:` has nowhere to go on the hosts (the
                // CLI refuses such a plan: `ssh-unsupported`).
                if svc.run.is_some() && !svc.config.is_empty() {
                    push(
                        format!("{name}/render-config"),
                        StepAction::RenderConfig {
                            files: svc.config.clone(),
                            templates: BTreeMap::new(),
                        },
                    );
                }
                for s in &svc.steps {
                    push(format!("{name}/{}", s.name), StepAction::Exec(s.clone()));
                }
                if let Some(run) = &svc.run {
                    push(
                        format!("{name}/deploy"),
                        StepAction::Deploy {
                            version,
                            replicas: run.replicas,
                        },
                    );
                }
            } else if svc.run.is_some() {
                // Config first here too: rendered (one directory per version) before the
                // deploy step starts any instance of the new version.
                if !svc.config.is_empty() {
                    push(
                        format!("{name}/render-config"),
                        StepAction::RenderConfig {
                            files: svc.config.clone(),
                            templates: BTreeMap::new(),
                        },
                    );
                }
                push(
                    format!("{name}/deploy"),
                    StepAction::Deploy {
                        version,
                        replicas: svc.run.as_ref().map_or(1, |r| r.replicas),
                    },
                );
            }
        }
    }
    out
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn gates(
    spec: &ReleaseSpec,
    env_name: &str,
    env: &Environment,
    strategy: &Strategy,
    rule: &EffectiveRule,
    checks: &BTreeMap<String, Check>,
    risk: &Risk,
    findings: &mut Vec<Finding>,
) -> Vec<Gate> {
    let t = spec.metadata.release_type.as_str();
    let mut gates = Vec::new();
    let env_src = |f: &str| format!("environments.{env_name}.{f}");

    // Approvals: the environment's own policy, raised to the release type's minimum in
    // production. Four-eyes always holds in production.
    let env_required = env.approvals.as_ref().map_or(0, |a| a.required);
    let policy_required = if env.production { rule.approvals.0 } else { 0 };
    if env_required > 0 || policy_required > 0 {
        let (required, source) = if policy_required > env_required {
            (policy_required, rule.approvals.1.clone())
        } else {
            (env_required, env_src("approvals.required"))
        };
        gates.push(Gate {
            kind: GateKind::Approvals {
                required,
                groups: env
                    .approvals
                    .as_ref()
                    .map(|a| a.groups.clone())
                    .unwrap_or_default(),
                four_eyes: env.production || env.approvals.as_ref().is_none_or(|a| a.four_eyes),
            },
            source,
        });
    }

    if env.production {
        let high = risk.score >= HIGH_RISK;
        if rule.change_record.0 || high {
            let source = if rule.change_record.0 {
                rule.change_record.1.clone()
            } else {
                format!(
                    "risk score {} ≥ {HIGH_RISK} (high-impact change)",
                    risk.score
                )
            };
            if spec.metadata.change.is_none() {
                findings.push(Finding {
                    severity: FindingSeverity::Error,
                    code: "change-record-missing".into(),
                    message: format!(
                        "a change-board record is required ({source}); set metadata.change to the record id, e.g. CHG-1234"
                    ),
                });
            }
            gates.push(Gate {
                kind: GateKind::ChangeRecord {
                    record: spec.metadata.change.clone(),
                },
                source,
            });
        }
        if rule.canary.0 {
            if strategy.canary.is_none() {
                findings.push(Finding {
                    severity: FindingSeverity::Error,
                    code: "canary-required".into(),
                    message: format!(
                        "{t} releases need a canary strategy in production ({}); add strategy.canary to environments.{env_name}",
                        rule.canary.1
                    ),
                });
            }
            gates.push(Gate {
                kind: GateKind::Canary,
                source: rule.canary.1.clone(),
            });
        }
        if let Some((secs, src)) = &rule.soak {
            gates.push(Gate {
                kind: GateKind::Soak { seconds: *secs },
                source: src.clone(),
            });
        }
        if rule.post_review.0 {
            gates.push(Gate {
                kind: GateKind::PostReview,
                source: rule.post_review.1.clone(),
            });
        }
    }

    let sig_by_env = env.signature.as_ref().filter(|s| s.required);
    if sig_by_env.is_some() || (env.production && rule.signature.0) {
        let keys = env
            .signature
            .as_ref()
            .map(|s| s.keys.clone())
            .unwrap_or_default();
        if keys.is_empty() {
            findings.push(Finding {
                severity: FindingSeverity::Error,
                code: "signature-keys-missing".into(),
                message: format!(
                    "signatures are required ({}) but environments.{env_name}.signature.keys lists no trusted key",
                    rule.signature.1
                ),
            });
        }
        gates.push(Gate {
            kind: GateKind::Signature { keys },
            source: if sig_by_env.is_some() {
                env_src("signature")
            } else {
                rule.signature.1.clone()
            },
        });
    }

    if !env.windows.is_empty() {
        if env.production && rule.bypass_windows {
            findings.push(Finding {
                severity: FindingSeverity::Warning,
                code: "windows-bypassed".into(),
                message: format!(
                    "{t} releases may deploy outside environments.{env_name}.windows (emergency change); a post-review is required instead"
                ),
            });
        } else {
            gates.push(Gate {
                kind: GateKind::Windows {
                    windows: env.windows.clone(),
                },
                source: env_src("windows"),
            });
        }
    }
    if !env.freezes.is_empty() {
        gates.push(Gate {
            kind: GateKind::Freezes {
                freezes: env.freezes.clone(),
            },
            source: env_src("freezes"),
        });
    }

    if let Some(c) = &env.change {
        if spec.metadata.change.is_none() {
            findings.push(Finding {
                severity: FindingSeverity::Error,
                code: "change-record-missing".into(),
                message: format!(
                    "environments.{env_name}.change checks every deploy's change record in {}; set metadata.change to the approved record's id, e.g. CHG0030001",
                    c.system.as_str()
                ),
            });
        }
        gates.push(Gate {
            kind: GateKind::ChangeApproved {
                system: c.system.as_str().to_owned(),
                record: spec.metadata.change.clone(),
            },
            source: env_src("change"),
        });
    }

    if !spec.checklist.is_empty() {
        gates.push(Gate {
            kind: GateKind::Checklist {
                items: spec.checklist.clone(),
            },
            source: "checklist".into(),
        });
    }

    let mut by_phase: BTreeMap<CheckPhase, Vec<String>> = BTreeMap::new();
    for (n, c) in checks {
        if c.perf.is_some() {
            // A perf check measures the running version before any change (its baseline,
            // kept with the run) and verifies the new version against it after the last
            // wave: it gates both ends of the deploy.
            by_phase.entry(CheckPhase::Pre).or_default().push(n.clone());
            by_phase
                .entry(CheckPhase::Post)
                .or_default()
                .push(n.clone());
        } else {
            by_phase.entry(c.phase).or_default().push(n.clone());
        }
    }
    for (phase, names) in &by_phase {
        gates.push(Gate {
            kind: GateKind::Checks {
                phase: *phase,
                names: names.clone(),
            },
            source: env_src("checks"),
        });
    }
    if env.production {
        for phase in &rule.checks.0 {
            if !by_phase.contains_key(phase) {
                findings.push(Finding {
                    severity: FindingSeverity::Error,
                    code: "checks-missing".into(),
                    message: format!(
                        "{t} releases need {} checks in production ({}); declare one under `checks` with phase: {} and list it in environments.{env_name}.checks",
                        phase_name(*phase),
                        rule.checks.1,
                        phase_name(*phase)
                    ),
                });
            }
        }
    }
    gates
}

fn phase_name(p: CheckPhase) -> &'static str {
    match p {
        CheckPhase::Pre => "pre",
        CheckPhase::Smoke => "smoke",
        CheckPhase::Post => "post",
    }
}

fn risk(
    spec: &ReleaseSpec,
    env: &Environment,
    strategy: &Strategy,
    deployed: &BTreeMap<String, String>,
    facts: &Facts,
    waves: &[Wave],
) -> Risk {
    let mut factors = Vec::new();
    let release_version = &spec.metadata.version;
    let touched: Vec<&String> = spec
        .services
        .iter()
        .filter(|(n, s)| {
            let v = s.version.as_ref().unwrap_or(release_version);
            deployed.get(*n) != Some(v)
        })
        .map(|(n, _)| n)
        .collect();
    if !touched.is_empty() {
        let points = u32::try_from(touched.len() * 5).unwrap_or(u32::MAX).min(25);
        factors.push(RiskFactor {
            factor: "services touched".into(),
            points,
            detail: format!(
                "{} of {} services change: {}",
                touched.len(),
                spec.services.len(),
                list(touched.iter().map(|s| s.as_str()))
            ),
        });
    }

    let irreversible: Vec<String> = spec
        .services
        .iter()
        .filter(|(n, s)| {
            s.kind == ServiceKind::Migration
                && (s.irreversible
                    || facts
                        .migrations
                        .get(*n)
                        .is_some_and(|m| m.iter().any(|(_, undo)| !undo)))
        })
        .map(|(n, _)| n.clone())
        .collect();
    if !irreversible.is_empty() {
        factors.push(RiskFactor {
            factor: "irreversible migrations".into(),
            points: 25,
            detail: format!(
                "{} cannot be undone: the release is roll-forward-only for them",
                list(irreversible.iter().map(String::as_str))
            ),
        });
    }

    if !deployed.is_empty() {
        let new: Vec<&String> = spec
            .services
            .keys()
            .filter(|n| !deployed.contains_key(*n))
            .collect();
        if !new.is_empty() {
            factors.push(RiskFactor {
                factor: "new dependencies".into(),
                points: u32::try_from(new.len() * 10).unwrap_or(u32::MAX).min(20),
                detail: format!(
                    "not running here yet: {}",
                    list(new.iter().map(|s| s.as_str()))
                ),
            });
        }
    }

    // Blast radius: how much of the system sits downstream of what changes.
    let mut downstream: BTreeSet<&str> = touched.iter().map(|s| s.as_str()).collect();
    loop {
        let before = downstream.len();
        for (n, s) in &spec.services {
            if s.depends_on.iter().any(|d| downstream.contains(d.as_str())) {
                downstream.insert(n);
            }
        }
        if downstream.len() == before {
            break;
        }
    }
    let mut blast = 0u32;
    let mut why = Vec::new();
    if env.production {
        blast += 10;
        why.push("production environment".to_owned());
    }
    if waves.len() > 2 {
        blast += 5;
        why.push(format!("{} dependency levels", waves.len()));
    }
    if !spec.services.is_empty() && downstream.len() * 2 > spec.services.len() {
        blast += 5;
        why.push(format!(
            "{} of {} services affected directly or downstream",
            downstream.len(),
            spec.services.len()
        ));
    }
    if blast > 0 {
        factors.push(RiskFactor {
            factor: "blast radius".into(),
            points: blast,
            detail: why.join("; "),
        });
    }

    let stale: Vec<String> = facts
        .days_since_change
        .iter()
        .filter(|(n, d)| **d >= 90 && touched.iter().any(|t| t == n))
        .map(|(n, d)| format!("{n} ({d} days)"))
        .collect();
    if !stale.is_empty() {
        factors.push(RiskFactor {
            factor: "time since last change".into(),
            points: 10,
            detail: format!("unchanged for 90+ days: {}", stale.join(", ")),
        });
    }

    match spec.metadata.release_type {
        ReleaseType::Hotfix => factors.push(RiskFactor {
            factor: "release type".into(),
            points: 10,
            detail: "hotfix: emergency change with shortened testing".into(),
        }),
        ReleaseType::Security => factors.push(RiskFactor {
            factor: "release type".into(),
            points: 5,
            detail: "security fix: urgency over soak time".into(),
        }),
        ReleaseType::Feature | ReleaseType::Patch => {}
    }
    if env.production && strategy.canary.is_none() && strategy.rolling.is_none() {
        factors.push(RiskFactor {
            factor: "no progressive delivery".into(),
            points: 10,
            detail: "big-bang in production: every user sees the change at once".into(),
        });
    }

    let score = factors.iter().map(|f| f.points).sum::<u32>().min(100);
    let level = if score >= HIGH_RISK {
        "high"
    } else if score >= 30 {
        "medium"
    } else {
        "low"
    };
    Risk {
        score,
        level: level.into(),
        factors,
    }
}

fn recommend(
    spec: &ReleaseSpec,
    env: &Environment,
    strategy: &Strategy,
    risk: &Risk,
    facts: &Facts,
) -> Recommendation {
    let mut phased = Vec::new();
    let mut big_bang = Vec::new();
    for (n, s) in &spec.services {
        if !s.coupled_with.is_empty() {
            big_bang.push(format!(
                "{n} is tightly coupled with {}: they must move together in one wave and one decision",
                list(s.coupled_with.iter().map(String::as_str))
            ));
        }
        if s.kind == ServiceKind::Migration
            && (s.irreversible
                || facts
                    .migrations
                    .get(n)
                    .is_some_and(|m| m.iter().any(|(_, u)| !u)))
        {
            phased.push(format!(
                "migration {n} cannot be undone: expose the new code to a fraction of traffic first, and keep the schema change expand-only"
            ));
        }
    }
    let no_undo: Vec<&str> = spec
        .services
        .iter()
        .filter(|(_, s)| !s.steps.is_empty() && s.steps.iter().all(|st| st.undo.is_none()))
        .map(|(n, _)| n.as_str())
        .collect();
    if !no_undo.is_empty() {
        phased.push(format!(
            "rollback is manual for {} (no undo commands): limit the blast radius",
            list(no_undo.iter().copied())
        ));
    }
    if env.production && risk.score >= 30 {
        phased.push(format!(
            "risk is {} ({}) in a production environment",
            risk.level, risk.score
        ));
    }
    if spec.services.len() == 1 && phased.is_empty() {
        big_bang.push("a single service with low risk: phasing buys little".into());
    }
    if !env.production && phased.is_empty() {
        big_bang.push("not a production environment: fast feedback matters more".into());
    }
    let approach = if phased.is_empty() {
        "big_bang"
    } else {
        "phased"
    };
    let progressive = strategy.canary.is_some() || strategy.rolling.is_some();
    let strategy_agrees = (approach == "phased") == progressive || approach == "big_bang";
    let reasons = if approach == "phased" {
        phased.into_iter().chain(big_bang).collect()
    } else {
        big_bang
    };
    Recommendation {
        approach: approach.into(),
        reasons,
        strategy_agrees,
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
