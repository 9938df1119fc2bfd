//! Access control records: role grants, API tokens (salted hashes only) and access review
//! campaigns, in the same store as the runs — the SQLite file or the PostgreSQL database.
//!
//! Each is a governance record (`Store::append_governance`): kinds `access_grant` (key:
//! the grant id, allocated by the store), `access_token` (key: the token id) and
//! `access_review` (key: the campaign id, its items inside). Every change is one chain
//! entry committing to the new version, with a readable summary (people as pseudonyms,
//! never a token's secret or hash), written in the same transaction as the row: so who
//! could do what, and who changed it, verifies like the runs. Conditional writes (revoke
//! only a live grant, decide only in an open campaign) re-read and retry on a conflict.
//! The one thing outside the chain is a token's last use (`token_use`), which changes on
//! every request and decides nothing. Policy (who may do what) lives in `slipway-govern`.

use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_engine::StoreError;
use slipway_engine::store::{GovernanceRecord, RecordKey, Store, StoredRecord};

use crate::{AnyStore, SqliteStore};

/// Record kind of a role grant.
pub const GRANT: &str = "access_grant";
/// Record kind of an API token.
pub const TOKEN: &str = "access_token";
/// Record kind of an access review campaign.
pub const REVIEW: &str = "access_review";
/// Record kind of a user's membership of a group (key: `GROUP/USER`).
pub const MEMBER: &str = "access_group_member";
/// Record kind of a version of the admin policy (key: the version number).
pub const POLICY: &str = "admin_policy";

/// How many times a conditional write is retried after another writer changed the record.
const RETRIES: usize = 5;

/// A role grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRow {
    /// Id.
    pub id: i64,
    /// `user:NAME` or `group:NAME`.
    pub subject: String,
    /// `viewer`, `deployer`, `approver`, `admin`.
    pub role: String,
    /// Environment, or `*` for all.
    pub environment: String,
    /// Who granted it.
    pub granted_by: String,
    /// When.
    pub granted_at: Timestamp,
    /// When revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

/// A stored API token: never the token itself, only a salted hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    /// Public id (the token's prefix).
    pub id: String,
    /// `user:NAME` the token acts as.
    pub subject: String,
    /// Hex salt of a legacy row; empty for argon2id rows (their salt is in the PHC string).
    pub salt: String,
    /// argon2id PHC string of the secret, or (legacy rows) hex sha256(salt || secret).
    pub hash: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last successful use.
    pub last_used_at: Option<Timestamp>,
    /// Revoked.
    pub revoked_at: Option<Timestamp>,
}

/// A user's membership of a group, kept by admins (`slipway access group add`). Groups
/// are never taken from the caller: the authorizer reads them here for a verified user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    /// Id.
    pub id: i64,
    /// The group.
    pub group: String,
    /// The user (a name, as in `user:NAME`).
    pub user: String,
    /// Who added them.
    pub added_by: String,
    /// When.
    pub added_at: Timestamp,
}

/// A version of the admin policy (`slipway policy apply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// 1, 2, …
    pub version: i64,
    /// sha256 of `text`.
    pub digest: String,
    /// The policy file as applied.
    pub text: String,
    /// Who applied it (`user:NAME`).
    pub applied_by: String,
    /// When.
    pub applied_at: Timestamp,
}

/// One grant in a review campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewItem {
    /// The grant.
    pub grant_id: i64,
    /// `confirm` or `revoke`, once decided.
    pub decision: Option<String>,
    /// Who decided.
    pub reviewer: Option<String>,
}

/// The stored form of a grant (the record's data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GrantData {
    pub subject: String,
    pub role: String,
    pub environment: String,
    pub granted_by: String,
    pub granted_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
    #[serde(default)]
    pub revoked_by: Option<String>,
}

/// The stored form of a token (its last use is kept apart, in `token_use`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenData {
    pub subject: String,
    pub salt: String,
    pub hash: String,
    pub created_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// The stored form of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReviewData {
    pub opened_by: String,
    pub opened_at: String,
    #[serde(default)]
    pub closed_at: Option<String>,
    pub items: Vec<ItemData>,
}

/// One grant of a campaign, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ItemData {
    pub grant_id: i64,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub reviewer: Option<String>,
    #[serde(default)]
    pub decided_at: Option<String>,
}

/// The access records of a store.
#[derive(Debug, Clone)]
pub struct AccessDb {
    store: AnyStore,
}

fn ts(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

fn data<T: serde::de::DeserializeOwned>(r: &StoredRecord) -> Result<T, StoreError> {
    serde_json::from_str(&r.data).map_err(|e| {
        StoreError::Query(format!(
            "read {} record `{}`: {e}; `slipway audit verify` names what was changed",
            r.kind, r.key
        ))
    })
}

fn value<T: Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Query(e.to_string()))
}

/// A group membership as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberData {
    group: String,
    user: String,
    added_by: String,
    added_at: String,
}

/// A version of the admin policy as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PolicyData {
    digest: String,
    text: String,
    applied_by: String,
    applied_at: String,
}

fn grant_row(r: &StoredRecord) -> Result<GrantRow, StoreError> {
    let d: GrantData = data(r)?;
    Ok(GrantRow {
        id: r.key.parse().map_err(|_| {
            StoreError::Query(format!(
                "read access grant `{}`: its id is not a number",
                r.key
            ))
        })?,
        subject: d.subject,
        role: d.role,
        environment: d.environment,
        granted_by: d.granted_by,
        granted_at: ts(Some(&d.granted_at)).unwrap_or_default(),
        revoked_at: ts(d.revoked_at.as_deref()),
    })
}

impl AccessDb {
    /// The access records of the SQLite store at `path` (opened, created or migrated).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: AnyStore::Sqlite(SqliteStore::open(path).await?),
        })
    }

    /// The access records of whichever store this is.
    pub async fn for_store(store: &AnyStore) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
        })
    }

    /// The pseudonym of the person in `who` (`user:NAME` or a bare name), for the chain.
    async fn actor(&self, who: &str) -> Result<String, StoreError> {
        self.store
            .pseudonym(who.strip_prefix("user:").unwrap_or(who))
            .await
    }

    /// A subject as the chain shows it: a user by pseudonym, a group by name.
    async fn public_subject(&self, subject: &str) -> Result<String, StoreError> {
        match subject.strip_prefix("user:") {
            Some(name) => Ok(format!("user:{}", self.store.pseudonym(name).await?)),
            None => Ok(subject.to_owned()),
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one governance record's fields")]
    fn record(
        kind: &str,
        key: RecordKey,
        data: serde_json::Value,
        action: &str,
        summary: serde_json::Value,
        actor: &str,
        at: Timestamp,
        if_seq: i64,
    ) -> GovernanceRecord {
        GovernanceRecord {
            kind: kind.to_owned(),
            key,
            data: Some(data),
            action: action.to_owned(),
            summary,
            actor: actor.to_owned(),
            at,
            if_seq: Some(if_seq),
        }
    }

    /// Add `user` to `group`; false when they already are a member.
    pub async fn add_member(
        &self,
        group: &str,
        user: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let d = MemberData {
            group: group.to_owned(),
            user: user.to_owned(),
            added_by: by.to_owned(),
            added_at: at.to_string(),
        };
        let summary =
            json!({"group": group, "subject": self.public_subject(&format!("user:{user}")).await?});
        let rec = Self::record(
            MEMBER,
            RecordKey::Given(format!("{group}/{user}")),
            value(&d)?,
            "group_member_added",
            summary,
            &self.actor(by).await?,
            at,
            0,
        );
        match self.store.append_governance(vec![rec]).await {
            // Written by someone else first: already a member.
            Err(StoreError::Conflict(_)) => Ok(false),
            other => other.map(|_| true),
        }
    }

    /// Remove `user` from `group`; false when they were not a member.
    pub async fn remove_member(
        &self,
        group: &str,
        user: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let key = format!("{group}/{user}");
        let actor = self.actor(by).await?;
        for _ in 0..RETRIES {
            let Some(r) = self.store.record(MEMBER, &key).await? else {
                return Ok(false);
            };
            let summary = json!({"group": group, "subject": self.public_subject(&format!("user:{user}")).await?});
            let rec = GovernanceRecord {
                kind: MEMBER.to_owned(),
                key: RecordKey::Given(key.clone()),
                data: None,
                action: "group_member_removed".to_owned(),
                summary,
                actor: actor.clone(),
                at,
                if_seq: Some(r.seq),
            };
            match self.store.append_governance(vec![rec]).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| true),
            }
        }
        Err(conflict("remove group member", &key))
    }

    /// Memberships, of one group or all, ordered by group then user.
    pub async fn members(&self, group: Option<&str>) -> Result<Vec<MemberRow>, StoreError> {
        let mut rows = Vec::new();
        for r in self.store.records(Some(MEMBER)).await? {
            let d: MemberData = data(&r)?;
            if group.is_none_or(|g| d.group == g) {
                rows.push(MemberRow {
                    id: r.seq,
                    group: d.group,
                    user: d.user,
                    added_by: d.added_by,
                    added_at: ts(Some(&d.added_at)).unwrap_or_default(),
                });
            }
        }
        rows.sort_by(|a, b| (&a.group, &a.user).cmp(&(&b.group, &b.user)));
        Ok(rows)
    }

    /// The groups `user` belongs to.
    pub async fn groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .members(None)
            .await?
            .into_iter()
            .filter(|m| m.user == user)
            .map(|m| m.group)
            .collect())
    }

    /// Record a new version of the admin policy; returns its version. Versions are
    /// numbered in the order applied and never changed; each is a chain entry whose
    /// summary carries the policy's digest (the record commits to its full text).
    pub async fn apply_policy(
        &self,
        digest: &str,
        text: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<i64, StoreError> {
        let actor = self.actor(by).await?;
        for _ in 0..RETRIES {
            let next = self.current_policy().await?.map_or(1, |p| p.version + 1);
            let d = PolicyData {
                digest: digest.to_owned(),
                text: text.to_owned(),
                applied_by: by.to_owned(),
                applied_at: at.to_string(),
            };
            let rec = Self::record(
                POLICY,
                RecordKey::Given(next.to_string()),
                value(&d)?,
                "policy_applied",
                json!({"version": next, "digest": digest}),
                &actor,
                at,
                0,
            );
            match self.store.append_governance(vec![rec]).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| next),
            }
        }
        Err(conflict("apply policy", "next version"))
    }

    /// Every version of the admin policy, oldest first.
    pub async fn policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        let mut rows = Vec::new();
        for r in self.store.records(Some(POLICY)).await? {
            let d: PolicyData = data(&r)?;
            rows.push(PolicyRow {
                version: r.key.parse().map_err(|_| {
                    StoreError::Query(format!("admin policy record `{}` is not a version", r.key))
                })?,
                digest: d.digest,
                text: d.text,
                applied_by: d.applied_by,
                applied_at: ts(Some(&d.applied_at)).unwrap_or_default(),
            });
        }
        rows.sort_by_key(|p| p.version);
        Ok(rows)
    }

    /// The admin policy in force (the latest version), if any was applied.
    pub async fn current_policy(&self) -> Result<Option<PolicyRow>, StoreError> {
        Ok(self.policies().await?.pop())
    }

    /// Grant a role; returns the grant id.
    pub async fn grant(
        &self,
        subject: &str,
        role: &str,
        environment: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<i64, StoreError> {
        let d = GrantData {
            subject: subject.to_owned(),
            role: role.to_owned(),
            environment: environment.to_owned(),
            granted_by: by.to_owned(),
            granted_at: at.to_string(),
            revoked_at: None,
            revoked_by: None,
        };
        let summary = json!({"subject": self.public_subject(subject).await?, "role": role,
            "environment": environment});
        let rec = Self::record(
            GRANT,
            RecordKey::Next,
            value(&d)?,
            "access_granted",
            summary,
            &self.actor(by).await?,
            at,
            0,
        );
        let stored = self.store.append_governance(vec![rec]).await?;
        let key = stored.first().map(|r| r.key.clone()).unwrap_or_default();
        key.parse()
            .map_err(|_| StoreError::Query(format!("grant a role: the store allocated id `{key}`")))
    }

    /// Grants, live ones only unless `all`, by id.
    pub async fn grants(&self, all: bool) -> Result<Vec<GrantRow>, StoreError> {
        let mut rows = self
            .store
            .records(Some(GRANT))
            .await?
            .iter()
            .map(grant_row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.retain(|g| all || g.revoked_at.is_none());
        rows.sort_by_key(|g| g.id);
        Ok(rows)
    }

    /// Revoke a grant; false when it did not exist or was already revoked.
    pub async fn revoke_grant(&self, id: i64, by: &str, at: Timestamp) -> Result<bool, StoreError> {
        let actor = self.actor(by).await?;
        for _ in 0..RETRIES {
            let Some(r) = self.store.record(GRANT, &id.to_string()).await? else {
                return Ok(false);
            };
            let mut d: GrantData = data(&r)?;
            if d.revoked_at.is_some() {
                return Ok(false);
            }
            d.revoked_at = Some(at.to_string());
            d.revoked_by = Some(by.to_owned());
            let rec = Self::record(
                GRANT,
                RecordKey::Given(r.key.clone()),
                value(&d)?,
                "access_revoked",
                json!({"grant": id}),
                &actor,
                at,
                r.seq,
            );
            match self.store.append_governance(vec![rec]).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| true),
            }
        }
        Err(conflict("revoke grant", &id.to_string()))
    }

    /// Store a new token's hash; `by` issued it.
    pub async fn add_token(&self, t: &TokenRow, by: &str) -> Result<(), StoreError> {
        let d = TokenData {
            subject: t.subject.clone(),
            salt: t.salt.clone(),
            hash: t.hash.clone(),
            created_at: t.created_at.to_string(),
            revoked_at: t.revoked_at.map(|r| r.to_string()),
        };
        // The token's id only: its secret is never kept, its hash only committed to.
        let summary = json!({"token": t.id, "subject": self.public_subject(&t.subject).await?});
        let rec = Self::record(
            TOKEN,
            RecordKey::Given(t.id.clone()),
            value(&d)?,
            "token_issued",
            summary,
            &self.actor(by).await?,
            t.created_at,
            0,
        );
        self.store.append_governance(vec![rec]).await?;
        Ok(())
    }

    fn token_row(r: &StoredRecord, last_used: Option<&str>) -> Result<TokenRow, StoreError> {
        let d: TokenData = data(r)?;
        Ok(TokenRow {
            id: r.key.clone(),
            subject: d.subject,
            salt: d.salt,
            hash: d.hash,
            created_at: ts(Some(&d.created_at)).unwrap_or_default(),
            last_used_at: ts(last_used),
            revoked_at: ts(d.revoked_at.as_deref()),
        })
    }

    /// One token by id.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let Some(r) = self.store.record(TOKEN, id).await? else {
            return Ok(None);
        };
        let used = self.store.token_last_used(id).await?;
        Self::token_row(&r, used.as_deref()).map(Some)
    }

    /// Record a successful use (outside the chain: it decides nothing).
    pub async fn touch_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        self.store.token_used(id, at).await
    }

    /// Replace a token's stored hash (a legacy digest upgraded to argon2id); a chain entry
    /// records that it changed.
    pub async fn rehash_token(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        for _ in 0..RETRIES {
            let Some(r) = self.store.record(TOKEN, id).await? else {
                return Ok(());
            };
            let mut d: TokenData = data(&r)?;
            d.hash = hash.to_owned();
            d.salt = String::new();
            let actor = self.actor(&d.subject).await?;
            let rec = Self::record(
                TOKEN,
                RecordKey::Given(r.key.clone()),
                value(&d)?,
                "token_rehashed",
                json!({"token": id}),
                &actor,
                slipway_stdx::now(),
                r.seq,
            );
            match self.store.append_governance(vec![rec]).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(conflict("rehash token", id))
    }

    /// Every token, newest first (hashes included: never print them).
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let mut out = Vec::new();
        for r in self.store.records(Some(TOKEN)).await? {
            let used = self.store.token_last_used(&r.key).await?;
            out.push(Self::token_row(&r, used.as_deref())?);
        }
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// Revoke a token; false when unknown or already revoked. `by` revoked it.
    pub async fn revoke_token(
        &self,
        id: &str,
        at: Timestamp,
        by: &str,
    ) -> Result<bool, StoreError> {
        let actor = self.actor(by).await?;
        for _ in 0..RETRIES {
            let Some(r) = self.store.record(TOKEN, id).await? else {
                return Ok(false);
            };
            let mut d: TokenData = data(&r)?;
            if d.revoked_at.is_some() {
                return Ok(false);
            }
            d.revoked_at = Some(at.to_string());
            let rec = Self::record(
                TOKEN,
                RecordKey::Given(r.key.clone()),
                value(&d)?,
                "token_revoked",
                json!({"token": id}),
                &actor,
                at,
                r.seq,
            );
            match self.store.append_governance(vec![rec]).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| true),
            }
        }
        Err(conflict("revoke token", id))
    }

    /// Open a review campaign over every live grant; returns how many it lists. Refused
    /// when a campaign of that id exists.
    pub async fn open_review(&self, id: &str, by: &str, at: Timestamp) -> Result<u64, StoreError> {
        let items: Vec<ItemData> = self
            .grants(false)
            .await?
            .into_iter()
            .map(|g| ItemData {
                grant_id: g.id,
                decision: None,
                reviewer: None,
                decided_at: None,
            })
            .collect();
        let n = items.len() as u64;
        let d = ReviewData {
            opened_by: by.to_owned(),
            opened_at: at.to_string(),
            closed_at: None,
            items,
        };
        let rec = Self::record(
            REVIEW,
            RecordKey::Given(id.to_owned()),
            value(&d)?,
            "review_opened",
            json!({"review": id, "grants": n}),
            &self.actor(by).await?,
            at,
            0,
        );
        match self.store.append_governance(vec![rec]).await {
            Err(StoreError::Conflict(_)) => Err(StoreError::Query(format!(
                "open access review `{id}`: a campaign with that id exists; pick another id"
            ))),
            other => other.map(|_| n),
        }
    }

    /// The items of a campaign.
    pub async fn review_items(&self, id: &str) -> Result<Vec<ReviewItem>, StoreError> {
        let Some(r) = self.store.record(REVIEW, id).await? else {
            return Ok(Vec::new());
        };
        let d: ReviewData = data(&r)?;
        let mut items: Vec<ReviewItem> = d
            .items
            .into_iter()
            .map(|i| ReviewItem {
                grant_id: i.grant_id,
                decision: i.decision,
                reviewer: i.reviewer,
            })
            .collect();
        items.sort_by_key(|i| i.grant_id);
        Ok(items)
    }

    /// Decide one item (`confirm` or `revoke`); a revoke also revokes the grant, in the
    /// same transaction. False when the item is not in an open campaign.
    pub async fn decide(
        &self,
        review: &str,
        grant_id: i64,
        decision: &str,
        reviewer: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let actor = self.actor(reviewer).await?;
        for _ in 0..RETRIES {
            let Some(r) = self.store.record(REVIEW, review).await? else {
                return Ok(false);
            };
            let mut d: ReviewData = data(&r)?;
            if d.closed_at.is_some() {
                return Ok(false);
            }
            let Some(item) = d.items.iter_mut().find(|i| i.grant_id == grant_id) else {
                return Ok(false);
            };
            item.decision = Some(decision.to_owned());
            item.reviewer = Some(reviewer.to_owned());
            item.decided_at = Some(at.to_string());
            let mut recs = vec![Self::record(
                REVIEW,
                RecordKey::Given(review.to_owned()),
                value(&d)?,
                "review_decided",
                json!({"review": review, "grant": grant_id, "decision": decision}),
                &actor,
                at,
                r.seq,
            )];
            if decision == "revoke"
                && let Some(g) = self.store.record(GRANT, &grant_id.to_string()).await?
            {
                let mut gd: GrantData = data(&g)?;
                if gd.revoked_at.is_none() {
                    gd.revoked_at = Some(at.to_string());
                    gd.revoked_by = Some(reviewer.to_owned());
                    recs.push(Self::record(
                        GRANT,
                        RecordKey::Given(g.key.clone()),
                        value(&gd)?,
                        "access_revoked",
                        json!({"grant": grant_id, "review": review}),
                        &actor,
                        at,
                        g.seq,
                    ));
                }
            }
            match self.store.append_governance(recs).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| true),
            }
        }
        Err(conflict("decide access review", review))
    }

    /// Close a campaign (`by` closes it); returns the grant ids nobody reviewed.
    pub async fn close_review(
        &self,
        id: &str,
        at: Timestamp,
        by: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let actor = self.actor(by).await?;
        for _ in 0..RETRIES {
            let Some(r) = self.store.record(REVIEW, id).await? else {
                return Ok(Vec::new());
            };
            let mut d: ReviewData = data(&r)?;
            let mut unreviewed: Vec<i64> = d
                .items
                .iter()
                .filter(|i| i.decision.is_none())
                .map(|i| i.grant_id)
                .collect();
            unreviewed.sort_unstable();
            if d.closed_at.is_some() {
                return Ok(unreviewed);
            }
            d.closed_at = Some(at.to_string());
            let rec = Self::record(
                REVIEW,
                RecordKey::Given(id.to_owned()),
                value(&d)?,
                "review_closed",
                json!({"review": id, "unreviewed": unreviewed}),
                &actor,
                at,
                r.seq,
            );
            match self.store.append_governance(vec![rec]).await {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| unreviewed),
            }
        }
        Err(conflict("close access review", id))
    }

    /// Nothing to close: the records live in the store, whose pools close with it.
    pub async fn close(&self) {}

    /// Where the records live, for messages.
    pub fn location(&self) -> String {
        self.store.location()
    }
}

fn conflict(what: &str, key: &str) -> StoreError {
    StoreError::Conflict(format!(
        "{what} `{key}`: other writers kept changing it; try again"
    ))
}
