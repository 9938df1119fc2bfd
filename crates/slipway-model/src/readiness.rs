//! The readiness checks a deploy runs before its first wave, from what the spec declares
//! for the environment (endpoints, resources, accounts, the analysis's metric providers).
//! Their kinds are named here so plans, policies, flags and check rows spell them alike.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One kind of readiness check.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessCheck {
    /// Each service's `endpoints` (tcp, http, postgres) reachable from where it runs.
    Reach,
    /// Each `tls://` endpoint: a verified handshake, certificate not expiring soon.
    Tls,
    /// `resources` × instances against what the target (each host) has free.
    Capacity,
    /// `accounts`: unix users on the target (each host), PostgreSQL roles and grants.
    Accounts,
    /// Each external metric provider and query the canary analysis uses answers, with
    /// data for what runs now.
    Monitoring,
}

impl ReadinessCheck {
    /// Every kind, in the order they run.
    pub const ALL: [ReadinessCheck; 5] = [
        Self::Reach,
        Self::Tls,
        Self::Capacity,
        Self::Accounts,
        Self::Monitoring,
    ];

    /// The spelling used in policies, flags and check rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reach => "reach",
            Self::Tls => "tls",
            Self::Capacity => "capacity",
            Self::Accounts => "accounts",
            Self::Monitoring => "monitoring",
        }
    }

    /// The kind a check row belongs to, from its `check` name (`reach.api`,
    /// `capacity.memory`, `accounts.grant`, ...).
    pub fn of_row(check: &str) -> Option<Self> {
        let head = check.split('.').next().unwrap_or(check);
        Self::ALL.into_iter().find(|k| k.as_str() == head)
    }
}
