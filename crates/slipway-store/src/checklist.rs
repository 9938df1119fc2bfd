//! Acknowledgements of spec checklist items: who confirmed, for which release version and
//! environment, that an item without a check holds. Governance records of kind
//! `checklist_ack` (key: the JSON array `[release, version, environment, item]`), each
//! committed to by a chain entry, so an acknowledgement slipped into the store by hand is
//! named by `slipway audit verify`.

use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_engine::StoreError;
use slipway_engine::store::{GovernanceRecord, RecordKey, Store};

use crate::{AnyStore, SqliteStore};

/// Record kind of an acknowledgement.
pub const ACK: &str = "checklist_ack";

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The checklist item id.
    pub item: String,
    /// Who (`user:NAME`).
    pub acknowledged_by: String,
    /// What they said.
    pub note: String,
    /// When.
    pub at: String,
}

/// The stored form: the acknowledgement and what it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AckData {
    pub release: String,
    pub version: String,
    pub environment: String,
    #[serde(flatten)]
    pub ack: Ack,
}

/// The key of an acknowledgement: unambiguous whatever the names hold.
pub(crate) fn ack_key(release: &str, version: &str, environment: &str, item: &str) -> String {
    serde_json::json!([release, version, environment, item]).to_string()
}

/// The checklist acknowledgements of a store.
#[derive(Debug, Clone)]
pub struct ChecklistDb {
    store: AnyStore,
}

impl ChecklistDb {
    /// The acknowledgements of the SQLite store at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: AnyStore::Sqlite(SqliteStore::open(path).await?),
        })
    }

    /// The acknowledgements of whichever store this is.
    pub fn for_store(store: &AnyStore) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// Record (or replace) an acknowledgement; the chain entry names the item, the release
    /// and the acknowledger's pseudonym.
    pub async fn acknowledge(
        &self,
        release: &str,
        version: &str,
        environment: &str,
        ack: &Ack,
    ) -> Result<(), StoreError> {
        let who = ack.acknowledged_by.as_str();
        let actor = self
            .store
            .pseudonym(who.strip_prefix("user:").unwrap_or(who))
            .await?;
        let data = AckData {
            release: release.to_owned(),
            version: version.to_owned(),
            environment: environment.to_owned(),
            ack: ack.clone(),
        };
        let at = ack
            .at
            .parse::<Timestamp>()
            .unwrap_or_else(|_| slipway_stdx::now());
        self.store
            .append_governance(vec![GovernanceRecord {
                kind: ACK.to_owned(),
                key: RecordKey::Given(ack_key(release, version, environment, &ack.item)),
                data: Some(
                    serde_json::to_value(&data).map_err(|e| StoreError::Query(e.to_string()))?,
                ),
                action: "checklist_acknowledged".to_owned(),
                summary: serde_json::json!({"release": release, "version": version,
                    "environment": environment, "item": ack.item}),
                actor,
                at,
                if_seq: None,
            }])
            .await?;
        Ok(())
    }

    /// The acknowledgements of one release version in one environment, by item.
    pub async fn acks(
        &self,
        release: &str,
        version: &str,
        environment: &str,
    ) -> Result<Vec<Ack>, StoreError> {
        let mut out = Vec::new();
        for r in self.store.records(Some(ACK)).await? {
            let d: AckData = serde_json::from_str(&r.data).map_err(|e| {
                StoreError::Query(format!(
                    "read checklist acknowledgement `{}`: {e}; `slipway audit verify` names what was changed",
                    r.key
                ))
            })?;
            if d.release == release && d.version == version && d.environment == environment {
                out.push(d.ack);
            }
        }
        out.sort_by(|a, b| a.item.cmp(&b.item));
        Ok(out)
    }

    /// Nothing to close: the records live in the store, whose pools close with it.
    pub async fn close(&self) {}
}
