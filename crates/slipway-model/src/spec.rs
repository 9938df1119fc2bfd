//! The release spec, `apiVersion: slipway/v1`: the typed form of the YAML a user writes.
//!
//! Every struct denies unknown fields, and there is no `#[serde(untagged)]` or `flatten`
//! anywhere: both ruin error messages. Where a value is "one of several shapes" (a target,
//! a canary step, a check) it is a struct of optional fields and validation insists that
//! exactly one is set, so the JSON Schema stays a plain object and every error can name the
//! field that is wrong. Strings that carry structure (durations, semver, cron, dates) are
//! kept as strings here and checked in [`crate::validate`], so that a bad value is reported
//! with its location together with every other problem, not as the first serde error.

use std::collections::BTreeMap;

use schemars::JsonSchema;

use crate::duration::SpecDuration;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "slipway/v1";
/// The only `kind` a release spec may have.
pub const KIND: &str = "Release";

/// The "exactly one of" shapes: the schema name of each struct of optional fields and the
/// fields of which exactly one must be set. The published schema expresses each as a
/// `oneOf` of `required` alternatives (so any JSON Schema validator refuses two at once, or
/// none), and validation reports the same rule in its own words.
pub const EXACTLY_ONE: &[(&str, &[&str])] = &[
    ("Probe", &["http", "tcp", "command"]),
    ("Account", &["unix", "postgres"]),
    ("Target", &["exec", "process", "ssh"]),
    ("Router", &["builtin", "nginx", "haproxy"]),
    ("Strategy", &["big_bang", "rolling", "canary"]),
    ("CanaryStep", &["set_weight", "pause", "analysis"]),
    ("HeaderCondition", &["exact", "prefix"]),
    ("Provider", &["prometheus", "http"]),
    (
        "Check",
        &["http", "tcp", "command", "sql", "perf", "consistency"],
    ),
    ("Notification", &["webhook", "email", "file"]),
];

/// A whole release spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Slipway release spec (slipway/v1)")]
pub struct ReleaseSpec {
    /// Always `slipway/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `Release`.
    pub kind: String,
    /// What is being released.
    pub metadata: Metadata,
    /// The services of the release, by name.
    pub services: BTreeMap<String, Service>,
    /// The environments the release can go to, by name.
    #[serde(default)]
    pub environments: BTreeMap<String, Environment>,
    /// The default rollout strategy; an environment may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Reusable analysis templates, referenced from canary `analysis` steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub analysis_templates: BTreeMap<String, AnalysisTemplate>,
    /// Named metric providers besides the `builtin` one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, Provider>,
    /// Named checks (smoke tests, probes, SQL checks) that environments and policy gate on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Check>,
    /// Who hears about the run, and when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
    /// Release type → required gates. Missing entries fall back to built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Breaking-compatibility findings accepted on purpose: each names the finding id
    /// (as `slipway plan` prints it), why, and who decided. A waived finding does not
    /// force a phased strategy or an extra approval; the waiver is shown in the plan and
    /// written to the audit chain when the run starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waivers: Vec<Waiver>,
    /// Lessons every future plan must satisfy, typically action items accepted from a
    /// retrospective (`slipway checklist accept RUN N -f release.yaml`). Each
    /// is a plan gate: satisfied by running its `check`, or acknowledged per version and
    /// environment (`slipway checklist ack`); until then a deploy is blocked (exit 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checklist: Vec<ChecklistItem>,
    /// The parity standard `slipway diff` judges environments against: the differences
    /// allowed between them. Every other difference is drift (`--fail-on-drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
    /// The order releases go through environments (e.g. `dev → staging → prod`): a
    /// release reaches each one after the first only when the same inputs succeeded in
    /// the one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// The order of environments a release is promoted through.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// Environments, first to last. A release reaches each one after the first only when
    /// the same inputs (version, artifact and config template digests) succeeded in the
    /// one before it.
    pub order: Vec<String>,
    /// Minimum time the inputs must have run successfully in the previous environment
    /// before reaching this one, by environment, e.g. `{ prod: 1h }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub soak: BTreeMap<String, SpecDuration>,
    /// The previous environment's run must have run post checks, all passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_checks: bool,
}

impl Lifecycle {
    /// What promotion into `environment` requires: the environment before it, `None` for
    /// the first one or one the lifecycle does not name.
    pub fn promotion_into(&self, environment: &str) -> Option<crate::promotion::PromotionRule> {
        let at = self.order.iter().position(|e| e == environment)?;
        let from = self.order.get(at.checked_sub(1)?)?;
        Some(crate::promotion::PromotionRule {
            from: from.clone(),
            soak: self.soak.get(environment).cloned(),
            post_checks: self.post_checks,
        })
    }
}

/// Differences allowed between environments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Parity {
    /// Each entry a kind (`replicas`, `version`, `artifact`, `config`, `variable`,
    /// `target`, `policy`) allowing every difference of it, or `kind:item` allowing one
    /// (`policy:approvals`, `variable:debug_port`), `*` at the end matching any rest
    /// (`config:api/*`).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// The kinds of differences `slipway diff` reports.
pub const DRIFT_KINDS: &[&str] = &[
    "variable", "version", "artifact", "config", "replicas", "target", "policy",
];

/// A breaking-compatibility finding accepted on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    /// The finding id, e.g. `migration:db:V7__drop_total.sql` or
    /// `api:orders:response-property-removed:/paths/~1orders/get/responses/200`.
    pub finding: String,
    /// Why it is acceptable, e.g. `no client reads total since 2.1`.
    pub reason: String,
    /// Who decided (a person or team), e.g. `alice@example.com`.
    pub by: String,
}

/// One checklist item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecklistItem {
    /// Stable id, e.g. `retro-20261126-033243-ef0a61-1`.
    pub id: String,
    /// What must be true before a deploy.
    pub text: String,
    /// The run whose retrospective produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_run: Option<String>,
    /// A declared check (under `checks`) that satisfies the item when the plan runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// What is being released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Release name, e.g. `shop`.
    pub name: String,
    /// Semantic version of the release, e.g. `2.4.0`.
    pub version: String,
    /// Release type; decides which gates apply.
    #[serde(rename = "type")]
    pub release_type: ReleaseType,
    /// Change-board record id, e.g. `CHG-1042`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// Owning team or person; the escalation contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Git tag pattern the release must have, e.g. `v{version}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Free text shown in plans and release notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What support should know is not right in this release (limitations, workarounds),
    /// for the handover pack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_issues: Vec<String>,
    /// Whom support escalates to, in order (e.g. `#shop-oncall`, `oncall@example.com`),
    /// for the handover pack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<String>,
}

/// The kind of release; drives required tests and approvals.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseType {
    /// New functionality.
    Feature,
    /// A bug fix.
    Patch,
    /// A security fix.
    Security,
    /// An emergency fix, reviewed after the fact.
    Hotfix,
}

impl ReleaseType {
    /// The spelling used in specs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Feature => "feature",
            Self::Patch => "patch",
            Self::Security => "security",
            Self::Hotfix => "hotfix",
        }
    }
}

/// What kind of thing a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A deployable application (the default).
    #[default]
    App,
    /// A set of database migrations applied as one step.
    Migration,
}

/// One service of the release.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `app` (default) or `migration`.
    #[serde(default)]
    pub kind: ServiceKind,
    /// This service's version; defaults to the release version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The artifact to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Services that must be deployed before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Services this one must move together with (same wave, one decision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coupled_with: Vec<String>,
    /// Version constraints on other services, e.g. `{ api: ">=2.3, <3" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// How the service runs (for long-running targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSpec>,
    /// Install steps run by the `exec` target, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<ExecStep>,
    /// Config files rendered per environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigTemplate>,
    /// Liveness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Probe>,
    /// Readiness probe; gates traffic and every wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Resources per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Endpoints (`host:port`) this service must reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Accounts that must exist where the service runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<Account>,
    /// For `kind: migration`: the directory of `V{n}__*.sql` / `U{n}__*.sql` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<String>,
    /// For `kind: migration`: the database URL (may use `{{ vars.x }}` and `secret://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// For `kind: migration`: migrations that cannot be undone (no `U` script) are allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub irreversible: bool,
    /// Owner of this service, if not the release owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The service's OpenAPI 3 documents: the candidate's and the running version's.
    /// Breaking changes between them make the plan require a phased strategy and an
    /// extra approval unless waived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiDocs>,
}

/// The OpenAPI documents compared for a service (paths relative to the spec file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiDocs {
    /// The document of the version this release ships, e.g. `api/openapi.yaml`.
    pub candidate: String,
    /// The document of the version running in the environments, e.g.
    /// `api/openapi-2.3.yaml`.
    pub running: String,
}

/// An artifact reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Path of the artifact, relative to the spec file: a file, or an OCI image layout
    /// directory.
    pub path: String,
    /// Expected sha256 of the artifact, 64 hex digits (for an OCI layout: of its image
    /// manifest, the digest the image is known by).
    pub sha256: String,
    /// Path of a minisign signature of the artifact (for an OCI layout: of its image
    /// manifest blob, `blobs/sha256/<sha256>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The name the package's own metadata gives it (deb `Package`, rpm `Name`, MSI
    /// `ProductName`, OCI title, Slipway archive name), checked at plan time; defaults to
    /// the service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How a long-running service is started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The command line; `{{ port }}` is the instance's port. With `image`, the arguments
    /// given to the image's entrypoint instead (split as a shell splits words, but no
    /// shell runs; empty: the image's own `Cmd`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Run each instance as a container of this OCI image (podman, host network) instead
    /// of a command: `artifact` — the service's artifact, an OCI image layout (e.g. built
    /// by `slipway package image`) or an oci-archive, verified like any artifact — or a
    /// registry reference pinned by digest, `registry.example:5000/shop/api@sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of instances.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Scalar>,
    /// Variables of the environment `slipway` runs in that instances receive too, by
    /// name (e.g. `[JAVA_HOME, HTTPS_PROXY]`). Instances otherwise get only a small
    /// allowlist (PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR)
    /// besides `env` and Slipway's own variables, so a credential exported for
    /// `slipway deploy` never reaches a service unless named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherit_env: Vec<String>,
}

fn one() -> u32 {
    1
}

/// `run.image` naming the service's own artifact (an OCI image layout or oci-archive).
pub const IMAGE_FROM_ARTIFACT: &str = "artifact";

/// Whether an image reference is pinned by digest: `NAME@sha256:<64 lowercase hex>`, with a
/// non-empty name. A tag alone can name other bytes tomorrow, so it is never run.
pub fn is_pinned_image(reference: &str) -> bool {
    reference
        .rsplit_once("@sha256:")
        .is_some_and(|(name, hex)| {
            !name.is_empty()
                && !name.contains(char::is_whitespace)
                && hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// An install step for the `exec` target, with Ansible-like idempotency guards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStep {
    /// Step name, unique within the service.
    pub name: String,
    /// Shell command to run.
    pub run: String,
    /// Skip the step when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
    /// Skip the step when this command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<String>,
    /// Command that reverses the step, used by rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    /// Timeout, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
}

/// A config template rendered per environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigTemplate {
    /// Template path, relative to the spec file.
    pub template: String,
    /// Destination path on the target.
    pub dest: String,
}

/// A health or readiness probe. Exactly one of `http`, `tcp`, `command`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// HTTP path probed on each instance; 2xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// TCP connect to each instance's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    /// Command that exits 0 when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Timeout of one probe, e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
    /// How long to keep trying before giving up, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<SpecDuration>,
}

/// Resources one instance needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory, e.g. `256Mi`, `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU cores, e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Disk, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// A service account. Exactly one of `unix`, `postgres`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// A unix user that must exist on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<String>,
    /// A PostgreSQL role that must exist with these grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresRole>,
}

/// A PostgreSQL role and its required grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresRole {
    /// Role name.
    pub role: String,
    /// Grants, e.g. `SELECT ON orders`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// Database URL to check against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// An environment a release can go to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Where services run.
    pub target: Target,
    /// A production environment: release-type policy gates apply in full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub production: bool,
    /// Variables for config templates and spec placeholders.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, Scalar>,
    /// Deployment windows; outside them a run waits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Freezes; inside them a run is refused unless overridden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<Freeze>,
    /// Approval policy for this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalPolicy>,
    /// Signature policy for artifacts installed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignaturePolicy>,
    /// Overrides the release's strategy here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Names of checks (from top-level `checks`) that gate a deploy here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Readiness checks that only warn here: their failures are shown before the first
    /// wave but do not block the deploy (e.g. `[capacity]` where the hosts' free memory
    /// is managed elsewhere). Every other declared readiness check blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advisory_checks: Vec<crate::readiness::ReadinessCheck>,
    /// Versions of systems Slipway does not deploy here (e.g. a database server), by hand.
    /// What Slipway deployed comes from the store's history: an entry for such a service is
    /// ignored, with a warning.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployed: BTreeMap<String, String>,
    /// Backups: whether one is required before migrating, and the scheduled ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,
    /// Recovery objectives (RTO/RPO) and whether a rollback rehearsal must prove them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryPolicy>,
    /// Infrastructure-as-code this environment is built from: the files must be committed
    /// and clean in git (their digests are recorded with each run) and the validation
    /// command must pass before a deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<Infrastructure>,
    /// What shifts traffic between stable and canary here (process target): the built-in
    /// proxy (default), or an nginx / HAProxy the team already runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Router>,
    /// The external change-management system whose record (`metadata.change`) must exist
    /// and be approved, inside its implementation window, before a deploy here; the
    /// outcome is written back when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeManagement>,
}

/// Which change-management system an environment asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeSystem {
    /// ServiceNow's Table API (`change_request`): `approval`, `state`, `start_date`,
    /// `end_date`; work notes and close code written back.
    Servicenow,
    /// A Jira issue: its status (category), optional window fields; a transition written
    /// back.
    Jira,
    /// Any JSON over HTTP: JSON pointers say where approval and window are.
    Http,
}

impl ChangeSystem {
    /// The spelling used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Servicenow => "servicenow",
            Self::Jira => "jira",
            Self::Http => "http",
        }
    }
}

/// An environment's change gate: where the record of `metadata.change` is checked and
/// its outcome written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeManagement {
    /// `servicenow`, `jira` or `http`.
    pub system: ChangeSystem,
    /// ServiceNow instance or Jira site base URL (`https://acme.service-now.com`); for
    /// `http`, the record's URL with `{change}` where the record id goes.
    pub url: String,
    /// `secret://env/NAME` holding `user:password` (HTTP basic auth) or `Bearer TOKEN`.
    /// Only an environment variable: never a literal in the spec, never journaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// `http`: JSON pointer to the approval value, e.g. `/change/approval`; `jira`: not
    /// used (the status decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<String>,
    /// Values meaning approved: `http`, at `approved` (default `approved`, `true`);
    /// `jira`, status names (default: any status in the `indeterminate` category, i.e.
    /// in progress — neither new nor done).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_values: Vec<String>,
    /// JSON pointer to the implementation window's start (`http`, `jira`, e.g.
    /// `/fields/customfield_10031`); RFC 3339 or `YYYY-MM-DD HH:MM:SS` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// JSON pointer to the window's end, as `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// `http`: where the outcome is POSTed when the run ends (`{change}` replaced), as
    /// JSON `{change, outcome, run, release, version, environment}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_url: Option<String>,
    /// `jira`: transition ids to apply when the run ends, by outcome: `succeeded`,
    /// `rolled_back`, `failed`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transitions: BTreeMap<String, String>,
    /// Request timeout, e.g. `5s` (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
}

/// The traffic router of an environment. Exactly one of `builtin`, `nginx`, `haproxy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// The service this router fronts; required when the release deploys more than one
    /// service as instances (the others keep the built-in proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Slipway's own proxy, one process per service (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinRouter>,
    /// An nginx that includes an upstream file Slipway owns; weights change by rewriting
    /// that file, `nginx -t`, then a reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxRouter>,
    /// An HAProxy whose backend has server slots Slipway fills over the runtime API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxyRouter>,
}

impl Router {
    /// `builtin`, `nginx` or `haproxy`.
    pub fn kind(&self) -> &'static str {
        match (&self.nginx, &self.haproxy) {
            (Some(_), _) => "nginx",
            (_, Some(_)) => "haproxy",
            _ => "builtin",
        }
    }
}

/// Settings of the built-in proxy as router.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuiltinRouter {
    /// The fixed front-door address clients connect to, `HOST:PORT` (e.g.
    /// `127.0.0.1:8080`, `0.0.0.0:80`, `[::1]:8080`). Default: a free loopback port chosen
    /// when the service's proxy first starts, kept by every later proxy of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// nginx as router.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NginxRouter {
    /// The file Slipway owns and rewrites (relative to the spec), `include`d in the main
    /// config's `http` block: the `upstream` block, and a status server on the unix
    /// socket `<upstream_file>.sock` through which Slipway confirms a reload took.
    pub upstream_file: String,
    /// The upstream's name, as the main config's `proxy_pass http://NAME` uses it.
    pub upstream: String,
    /// Validates the whole config before a reload; default `nginx -t`. A failure restores
    /// the previous upstream file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// Reloads nginx; default `nginx -s reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
    /// On the ssh target (a fleet behind nginx): the access log (relative to the spec)
    /// the builtin `error-rate` / `request-rate` of a fleet canary are counted from, per
    /// host. nginx writes it with `log_format slipway '$upstream_addr $status';` and
    /// `access_log PATH slipway;` where requests are proxied to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
}

/// HAProxy as router.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaproxyRouter {
    /// The admin socket (`stats socket PATH level admin`), relative to the spec.
    pub socket: String,
    /// The backend whose server slots Slipway fills.
    pub backend: String,
    /// Name prefixes of the stable and canary slots (default `stable` and `canary`, as
    /// `server-template stable 4 127.0.0.1:1 disabled` names them `stable1`..`stable4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<HaproxySlots>,
    /// The map file (relative to the spec) through which Slipway gives the canary its
    /// `match` routes at runtime (`add map`/`clear map`, no reload); the backend reads it
    /// with `req.hdrs,map_reg(FILE)` (docs/rollout.md has the lines). Required with
    /// `strategy.canary.match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_map: Option<String>,
}

/// Name prefixes of HAProxy server slots.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaproxySlots {
    /// Prefix of the stable pool's slots.
    pub stable: String,
    /// Prefix of the canary pool's slots.
    pub canary: String,
}

/// Infrastructure files of an environment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Infrastructure {
    /// Paths (files or directories) relative to the spec file, e.g. `infra/prod.tf`.
    pub paths: Vec<String>,
    /// Command that validates them (run in the spec's directory), e.g. `terraform validate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<String>,
}

/// An environment's backups.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// A backup must exist before migrations run here; a plan whose windows open too long
    /// after the last scheduled backup is blocked rather than warned about.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Cron expression of the environment's scheduled backups, e.g. `0 2 * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone of `schedule` (default UTC), e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// How old the last scheduled backup may be when a deployment window opens, e.g. `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<SpecDuration>,
}

/// An environment's recovery objectives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPolicy {
    /// Recovery time objective: longest acceptable time until the previous version serves
    /// again after a rollback starts, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<SpecDuration>,
    /// Recovery point objective: longest acceptable span of writes lost by a rollback,
    /// e.g. `0s` (undo scripts) or `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<SpecDuration>,
    /// Whether a passing rollback rehearsal (`slipway rehearse`) of this release must exist
    /// before it goes to a production environment (default `optional`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<RehearsalRequirement>,
}

/// Whether a rollback rehearsal is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RehearsalRequirement {
    /// A passing rehearsal newer than the release is required before production.
    Required,
    /// Rehearsals are informative only.
    #[default]
    Optional,
}

/// Where services run. Exactly one of `exec`, `process`, `ssh`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Run install steps as commands on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecTarget>,
    /// Run services as local processes supervised by Slipway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessTarget>,
    /// Deploy to hosts over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshTarget>,
}

/// The kind of an environment's target. Serialised as `exec`, `process`, `ssh`, `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Shell steps on this machine.
    Exec,
    /// Supervised processes (or containers) on this machine, with canaries.
    Process,
    /// Shell steps on the inventory's hosts over SSH.
    Ssh,
    /// No target configured.
    None,
}

impl TargetKind {
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Process => "process",
            Self::Ssh => "ssh",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Target {
    /// The configured target kind, or [`TargetKind::None`].
    pub fn kind(&self) -> TargetKind {
        match (&self.exec, &self.process, &self.ssh) {
            (Some(_), _, _) => TargetKind::Exec,
            (_, Some(_), _) => TargetKind::Process,
            (_, _, Some(_)) => TargetKind::Ssh,
            _ => TargetKind::None,
        }
    }
}

/// Settings of the `exec` target.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecTarget {
    /// Working directory for commands (default: the spec's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Default timeout of a step, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
    /// How many steps of a wave run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
}

/// Settings of the `process` target.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessTarget {
    /// Directory for instance state and logs (default under `.slipway/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Grace period between SIGTERM and SIGKILL, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<SpecDuration>,
}

/// Settings of the `ssh` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshTarget {
    /// Inventory file, relative to the spec.
    pub inventory: String,
    /// Group of the inventory to deploy to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Remote user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Hosts worked on at once (within a wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Hosts per wave: a number (`2`) or a percentage of the group (`"25%"`, rounded
    /// down, at least 1). Waves run one after another, in inventory order. Default: the
    /// whole group in one wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<HostCount>,
    /// Failure budget: how many hosts of the group (a number, or a percentage rounded
    /// down, `"10%"`) may fail during the run without failing it. A host that fails
    /// within the budget is left out of the later steps of the run. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<HostCount>,
}

/// A number of hosts, or a percentage of a group (`"25%"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HostCount {
    /// That many hosts.
    Hosts(u32),
    /// `N%` of the group's hosts.
    Percent(String),
}

impl HostCount {
    /// The percentage of `"N%"` (0–100), or why the text is not one.
    pub fn percent(text: &str) -> Result<u32, String> {
        text.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|n| *n <= 100)
            .ok_or_else(|| format!("`{text}` is not a percentage from 0% to 100%"))
    }

    /// How many hosts this is of a group of `total`: a percentage is rounded down.
    pub fn of(&self, total: usize) -> Result<usize, String> {
        match self {
            HostCount::Hosts(n) => Ok(*n as usize),
            HostCount::Percent(t) => Ok(total * Self::percent(t)? as usize / 100),
        }
    }
}

impl std::fmt::Display for HostCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostCount::Hosts(n) => write!(f, "{n}"),
            HostCount::Percent(t) => write!(f, "{t}"),
        }
    }
}

/// A deployment window: opens by cron in a time zone, stays open for a duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Cron expression of when the window opens, e.g. `0 9 * * MON-THU`.
    pub cron: String,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// How long the window stays open, e.g. `6h`.
    pub duration: SpecDuration,
}

/// A change freeze: no deploys between two dates (inclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// First frozen day, `YYYY-MM-DD`.
    pub from: String,
    /// Last frozen day, `YYYY-MM-DD`.
    pub to: String,
    /// Why, shown to whoever is refused.
    pub reason: String,
    /// Time zone the dates are in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// Who must approve a deploy to an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Distinct approvers needed.
    pub required: u32,
    /// Groups approvers must belong to (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The author of a run can never approve it.
    #[serde(default = "yes")]
    pub four_eyes: bool,
}

fn yes() -> bool {
    true
}

/// Which signatures artifacts must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignaturePolicy {
    /// Unsigned or untrusted artifacts are refused.
    pub required: bool,
    /// Trusted minisign public key files (several, for rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// How a release rolls out. Exactly one of `big_bang`, `rolling`, `canary`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    /// Everything at once, wave by wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub big_bang: Option<BigBang>,
    /// Instances in batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<Rolling>,
    /// Traffic shifted step by step, judged by analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// The kind of a deployment strategy. Serialised as `big_bang`, `rolling`, `canary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Everything at once.
    BigBang,
    /// In batches.
    Rolling,
    /// A slice of traffic first, judged, then the rest.
    Canary,
}

impl StrategyKind {
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BigBang => "big_bang",
            Self::Rolling => "rolling",
            Self::Canary => "canary",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Strategy {
    /// The configured strategy, big bang when none is.
    pub fn kind(&self) -> StrategyKind {
        if self.canary.is_some() {
            StrategyKind::Canary
        } else if self.rolling.is_some() {
            StrategyKind::Rolling
        } else {
            StrategyKind::BigBang
        }
    }
}

/// Big-bang strategy settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BigBang {}

/// Rolling strategy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Instances or hosts per batch.
    pub batch_size: u32,
    /// Failed steps tolerated per wave before the rest is halted.
    #[serde(default)]
    pub failure_budget: u32,
}

/// Canary strategy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Steps, in order.
    pub steps: Vec<CanaryStep>,
    /// Analysis run in the background for the whole canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
    /// A/B routes: a request matching any of these goes to the new version for the whole
    /// canary, whatever the weight (testers, internal users), and is counted apart from
    /// the traffic the analysis judges. Built-in router only.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRoute>,
    /// Keep each user on the version the weight first gave it, for the whole canary, by a
    /// cookie the router sets. Built-in router only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

/// One A/B route: every header condition and the cookie (when given) must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRoute {
    /// Header name → condition, e.g. `x-canary: { exact: always }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderCondition>,
    /// A cookie with this value, e.g. `{ name: canary, value: always }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieCondition>,
}

/// What a header's value must be. Exactly one of `exact`, `prefix`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    /// The whole value, compared exactly (case matters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The start of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A cookie a request must carry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CookieCondition {
    /// Cookie name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// Session affinity by a router-set cookie (Flagger's `sessionAffinity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAffinity {
    /// The cookie's name, e.g. `slipway-canary`; its value is `canary` or `stable`.
    pub cookie: String,
    /// How long the browser keeps it (`Max-Age`), e.g. `6h`; default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<crate::duration::SpecDuration>,
}

/// One canary step. Exactly one of `set_weight`, `pause`, `analysis`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percentage of traffic (0–100) sent to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub set_weight: Option<u32>,
    /// Wait: a duration (`5m`) or `manual` (until `slipway resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    /// Run an analysis template for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
}

/// A reference to an analysis template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisStep {
    /// Template name from `analysis_templates`.
    pub template: String,
    /// How long to analyse (default: until the template decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<SpecDuration>,
}

/// What to do when analysis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Roll back automatically (the default).
    #[default]
    Rollback,
    /// Pause for a human.
    Pause,
}

/// A reusable analysis: metrics, thresholds and limits, as in Argo Rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisTemplate {
    /// Measurement interval, e.g. `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<SpecDuration>,
    /// Fewer samples than this in a measurement is Inconclusive, never a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// Failed measurements tolerated before the analysis fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// Inconclusive measurements tolerated before the analysis pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<u32>,
    /// Consecutive provider errors tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<u32>,
    /// The metrics judged.
    pub metrics: Vec<Metric>,
    /// `rollback` (default) or `pause`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// One metric of an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Metric name; for `builtin`: `error-rate`, `p50-latency`, `p95-latency`,
    /// `p99-latency`, `latency-vs-stable`, `request-rate`.
    pub name: String,
    /// `builtin` or a name from `providers`.
    #[serde(default = "builtin")]
    pub provider: String,
    /// Provider query (PromQL for Prometheus, a JSON pointer for HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Fails when the value is above this (a number, or a duration for latencies). For
    /// the builtin `error-rate`: fails only when a one-sided exact binomial test is
    /// confident (`confidence`) that the canary's true error rate is above this, on the
    /// window or on the analysis's counts so far — not on one window's raw ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Scalar>,
    /// Fails when the value is below this (the builtin `error-rate`: when confidently
    /// below, as for `max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Scalar>,
    /// Statistical comparison of canary vs stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
    /// Confidence for `compare` and for the builtin `error-rate`'s tests, e.g. `0.98`
    /// (between 0 and 1, both excluded; default 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1))]
    pub confidence: Option<f64>,
}

fn builtin() -> String {
    "builtin".to_owned()
}

/// A statistical comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Comparison {
    /// Mann-Whitney U test, as Kayenta.
    MannWhitney,
}

/// A named metric provider. Exactly one of `prometheus`, `http`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// A Prometheus server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<UrlProvider>,
    /// An HTTP endpoint returning JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<UrlProvider>,
}

/// A provider reached by URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlProvider {
    /// Base URL, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// Request timeout, e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
}

/// When a check runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckPhase {
    /// Before the deploy touches anything (readiness of the environment).
    #[default]
    Pre,
    /// Against the candidate before it gets traffic.
    Smoke,
    /// After the deploy (verification).
    Post,
}

impl CheckPhase {
    /// The spelling used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pre => "pre",
            Self::Smoke => "smoke",
            Self::Post => "post",
        }
    }
}

/// A declared check. Exactly one of `http`, `tcp`, `command`, `sql`, `perf`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// When it runs.
    #[serde(default)]
    pub phase: CheckPhase,
    /// HTTP request and expectations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// `host:port` that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Command that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// SQL query and expectation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlCheck>,
    /// Performance baseline kept before the deploy and compared after it (`phase` is
    /// then implied: measured `pre`, verified `post`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<PerfCheck>,
    /// The same measure (row count, sum of a column, or a checksum over ordered rows)
    /// taken on two tables — of two databases after a data move, or old and new table of
    /// one — and compared (PostgreSQL and SQLite, either side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyCheck>,
    /// Timeout, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
}

/// An HTTP check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// URL to request.
    pub url: String,
    /// Expected status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

/// A performance check: the same request mix is driven at the running version before the
/// deploy changes anything (kept as the run's baseline) and at the new version after the
/// last wave; throughput and p50/p95/p99 are compared, and the latency distributions with
/// a one-sided Mann-Whitney test, within the declared tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerfCheck {
    /// `host:port` or `http://host:port` of the service as clients reach it.
    pub url: String,
    /// Paths requested round-robin (the request mix; default `["/"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Requests per second (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Concurrent connections (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// How long each measurement lasts, e.g. `5s` (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<SpecDuration>,
    /// Allowed slowdown and throughput loss, in percent (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// Latency difference that never counts (timer noise), in ms (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_ms: Option<f64>,
    /// Confidence of the distribution test (default 0.99; between 0 and 1, both excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1))]
    pub confidence: Option<f64>,
}

/// A consistency check between two tables. Counts rows unless `sum` or `checksum` says
/// otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyCheck {
    /// The source side.
    pub left: TableRef,
    /// The side compared with it.
    pub right: TableRef,
    /// Compare the sum of this numeric column instead of the row count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
    /// Compare a sha256 over these columns of every row (ordered by `order_by`) instead
    /// of the row count. Each value is cast to text by its database, so compare like with
    /// like (booleans and floats read differently in PostgreSQL and SQLite).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksum: Vec<String>,
    /// A unique key ordering the rows of a checksum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<String>,
    /// Largest accepted absolute difference of counts and sums (default 0; checksums must
    /// be equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
}

/// A table of a database, for a consistency check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableRef {
    /// Database URL (`postgres://…` or `sqlite://PATH`; may use `{{ vars.x }}`, secret
    /// ones resolved only when the check runs).
    pub database: String,
    /// Table, optionally `schema.table`.
    pub table: String,
    /// SQL condition without `WHERE`, e.g. `created_at < '2026-01-01'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// A SQL check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    /// Database URL.
    pub database: String,
    /// Query returning one value.
    pub query: String,
    /// Expected value, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Scalar>,
}

/// Run events a notification can subscribe to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A run started.
    Started,
    /// A run waits for approval.
    WaitingForApproval,
    /// A run paused.
    Paused,
    /// A run rolled back.
    RolledBack,
    /// A run finished (any outcome).
    Finished,
    /// A rollback started (automatic or by hand): why, which services, the versions being
    /// restored and, when a rehearsal measured one, how long it is expected to take.
    RollbackStarted,
    /// A rollback ended (rolled back, or failed): the outcome and what serves now.
    RollbackFinished,
    /// A run succeeded: its handover pack (release notes, known issues, escalation
    /// contacts, runbook delta) for the support team. Sent only to sinks that list it in
    /// `on`.
    Handover,
}

/// A notification sink. Exactly one of `webhook`, `email`, `file`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Events that trigger it (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<NotifyEvent>,
    /// Slack-compatible webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Email recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    /// A file that receives one JSON line per notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Release type → gates. Unset types use the built-in defaults
/// (see [`crate::policy::default_rule`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Gates for feature releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<PolicyRule>,
    /// Gates for patch releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PolicyRule>,
    /// Gates for security releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<PolicyRule>,
    /// Gates for hotfixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotfix: Option<PolicyRule>,
}

impl Policy {
    /// The rule the spec sets for a release type, if any.
    pub fn rule(&self, t: ReleaseType) -> Option<&PolicyRule> {
        match t {
            ReleaseType::Feature => self.feature.as_ref(),
            ReleaseType::Patch => self.patch.as_ref(),
            ReleaseType::Security => self.security.as_ref(),
            ReleaseType::Hotfix => self.hotfix.as_ref(),
        }
    }
}

/// Whether a gate is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// Must be present.
    Required,
    /// Used when configured.
    Optional,
}

/// Gates for one release type, in production environments.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Minimum distinct approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// Whether a canary strategy is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Requirement>,
    /// Minimum soak time at full weight before the run succeeds, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SpecDuration>,
    /// Whether artifacts must be signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Requirement>,
    /// Whether a change-board record (`metadata.change`) is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_record: Option<Requirement>,
    /// Whether a review after the fact is required (emergency changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_review: Option<Requirement>,
    /// Check phases that must be declared and pass, e.g. `[smoke, post]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckPhase>>,
}

/// A scalar written as a string, number or boolean in YAML, kept as its text.
///
/// Variables like `port: 8080` should not have to be quoted; this keeps the text form so
/// templates and digests see exactly one representation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Scalar(pub String);

impl Scalar {
    /// The text of the scalar.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Scalar {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string, number or boolean, kept as text.",
            "type": ["string", "number", "boolean"]
        })
    }
}
