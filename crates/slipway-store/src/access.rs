//! Access control records: role grants, API tokens (salted hashes only) and access review
//! campaigns, in the same store as the runs — the SQLite file or the PostgreSQL database.
//!
//! These tables are created here with `CREATE TABLE IF NOT EXISTS` when an [`AccessDb`]
//! opens, outside the journal's versioned schema (`schema.rs`): they are not journal
//! records, an older slipway simply ignores them, and keeping them apart lets the journal
//! format evolve without them. Policy (who may do what) lives in `slipway-govern`.
//!
//! One SQL text serves both backends: `$n` placeholders (sqlx binds them by number on
//! SQLite too), `RETURNING id`, and types both read as the same Rust values.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_engine::StoreError;
use sqlx::Row;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};

use crate::AnyStore;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS access_grants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    environment TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    revoked_at TEXT,
    revoked_by TEXT
);
CREATE TABLE IF NOT EXISTS access_tokens (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    salt TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS access_reviews (
    id TEXT PRIMARY KEY,
    opened_by TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT
);
CREATE TABLE IF NOT EXISTS access_review_items (
    review_id TEXT NOT NULL,
    grant_id INTEGER NOT NULL,
    decision TEXT,
    reviewer TEXT,
    decided_at TEXT,
    PRIMARY KEY (review_id, grant_id)
);
CREATE TABLE IF NOT EXISTS access_group_members (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL,
    user_name TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at TEXT NOT NULL,
    removed_at TEXT,
    removed_by TEXT
);
CREATE TABLE IF NOT EXISTS admin_policies (
    version INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    text TEXT NOT NULL,
    applied_by TEXT NOT NULL,
    applied_at TEXT NOT NULL
);
"#;

/// The same tables in PostgreSQL (identity columns, `BIGINT` ids).
const PG_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS access_grants (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    environment TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    revoked_at TEXT,
    revoked_by TEXT
);
CREATE TABLE IF NOT EXISTS access_tokens (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    salt TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS access_reviews (
    id TEXT PRIMARY KEY,
    opened_by TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT
);
CREATE TABLE IF NOT EXISTS access_review_items (
    review_id TEXT NOT NULL,
    grant_id BIGINT NOT NULL,
    decision TEXT,
    reviewer TEXT,
    decided_at TEXT,
    PRIMARY KEY (review_id, grant_id)
);
CREATE TABLE IF NOT EXISTS access_group_members (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name TEXT NOT NULL,
    user_name TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at TEXT NOT NULL,
    removed_at TEXT,
    removed_by TEXT
);
CREATE TABLE IF NOT EXISTS admin_policies (
    version BIGINT PRIMARY KEY,
    digest TEXT NOT NULL,
    text TEXT NOT NULL,
    applied_by TEXT NOT NULL,
    applied_at TEXT NOT NULL
);
"#;

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

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    /// The PostgreSQL store's own read pool (not closed here).
    Pg(PgPool),
}

/// Run `$e` with `$p` bound to whichever pool this is (the expression is type-checked
/// once per backend).
macro_rules! on {
    ($self:ident, $p:ident => $e:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => $e,
            Pool::Pg($p) => $e,
        }
    };
}

/// The access tables of a store.
#[derive(Debug, Clone)]
pub struct AccessDb {
    pool: Pool,
    location: String,
}

fn ts(s: Option<String>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

impl AccessDb {
    /// Open (creating the tables if needed) the access tables of the store at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = format!("sqlite://{}", path.display());
        let unavailable = |e: sqlx::Error| StoreError::Unavailable {
            location: location.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable {
                location: location.clone(),
                message: e.to_string(),
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = crate::sqlite::pool_options(1)
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        sqlx::raw_sql(TABLES)
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
            location,
        })
    }

    /// The access tables of whichever store this is (created if needed).
    pub async fn for_store(store: &AnyStore) -> Result<Self, StoreError> {
        match store {
            AnyStore::Sqlite(s) => Self::open(s.path()).await,
            AnyStore::Postgres(s) => {
                let location = slipway_engine::Store::location(s);
                let unavailable = |e: sqlx::Error| StoreError::Unavailable {
                    location: location.clone(),
                    message: format!("create the access tables: {e}"),
                };
                let pool = s.pool().clone();
                // Under the schema lock: concurrent `CREATE TABLE IF NOT EXISTS` of one
                // table can still collide in PostgreSQL's catalog.
                let mut tx = pool.begin().await.map_err(unavailable)?;
                crate::postgres::schema_lock(&mut tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::raw_sql(PG_TABLES)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                Ok(Self {
                    pool: Pool::Pg(pool),
                    location,
                })
            }
        }
    }

    fn q(e: sqlx::Error) -> StoreError {
        StoreError::Query(e.to_string())
    }

    /// Add `user` to `group`; returns the membership id, or `None` when they already are
    /// a member.
    pub async fn add_member(
        &self,
        group: &str,
        user: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        if self
            .members(Some(group))
            .await?
            .iter()
            .any(|m| m.user == user)
        {
            return Ok(None);
        }
        on!(self, p => sqlx::query_scalar::<_, i64>(
            "INSERT INTO access_group_members (group_name, user_name, added_by, added_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(group)
        .bind(user)
        .bind(by)
        .bind(at.to_string())
        .fetch_one(p)
        .await
        .map(Some)
        .map_err(Self::q))
    }

    /// Remove `user` from `group`; false when they were not a member.
    pub async fn remove_member(
        &self,
        group: &str,
        user: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        on!(self, p => sqlx::query(
            "UPDATE access_group_members SET removed_at = $1, removed_by = $2 WHERE group_name = $3 AND user_name = $4 AND removed_at IS NULL",
        )
        .bind(at.to_string())
        .bind(by)
        .bind(group)
        .bind(user)
        .execute(p)
        .await
        .map(|r| r.rows_affected() > 0)
        .map_err(Self::q))
    }

    /// Live memberships, of one group or all, ordered by group then user.
    pub async fn members(&self, group: Option<&str>) -> Result<Vec<MemberRow>, StoreError> {
        let rows = on!(self, p => sqlx::query(
            "SELECT id, group_name, user_name, added_by, added_at FROM access_group_members WHERE removed_at IS NULL ORDER BY group_name, user_name",
        )
        .fetch_all(p)
        .await
        .map_err(Self::q)
        .and_then(|rows| rows.into_iter().map(|r| {
            Ok(MemberRow {
                id: r.try_get("id").map_err(Self::q)?,
                group: r.try_get("group_name").map_err(Self::q)?,
                user: r.try_get("user_name").map_err(Self::q)?,
                added_by: r.try_get("added_by").map_err(Self::q)?,
                added_at: ts(Some(r.try_get("added_at").map_err(Self::q)?)).unwrap_or_default(),
            })
        }).collect::<Result<Vec<_>, StoreError>>()))?;
        Ok(rows
            .into_iter()
            .filter(|m| group.is_none_or(|g| m.group == g))
            .collect())
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
    /// numbered in the order applied; a version is never changed.
    pub async fn apply_policy(
        &self,
        digest: &str,
        text: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<i64, StoreError> {
        let next = self.current_policy().await?.map_or(1, |p| p.version + 1);
        on!(self, p => sqlx::query(
            "INSERT INTO admin_policies (version, digest, text, applied_by, applied_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(next)
        .bind(digest)
        .bind(text)
        .bind(by)
        .bind(at.to_string())
        .execute(p)
        .await
        .map(|_| ())
        .map_err(Self::q))?;
        Ok(next)
    }

    /// Every version of the admin policy, oldest first.
    pub async fn policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        on!(self, p => sqlx::query(
            "SELECT version, digest, text, applied_by, applied_at FROM admin_policies ORDER BY version",
        )
        .fetch_all(p)
        .await
        .map_err(Self::q)
        .and_then(|rows| rows.into_iter().map(|r| {
            Ok(PolicyRow {
                version: r.try_get("version").map_err(Self::q)?,
                digest: r.try_get("digest").map_err(Self::q)?,
                text: r.try_get("text").map_err(Self::q)?,
                applied_by: r.try_get("applied_by").map_err(Self::q)?,
                applied_at: ts(Some(r.try_get("applied_at").map_err(Self::q)?)).unwrap_or_default(),
            })
        }).collect()))
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
        on!(self, p => sqlx::query_scalar::<_, i64>(
            "INSERT INTO access_grants (subject, role, environment, granted_by, granted_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(subject)
        .bind(role)
        .bind(environment)
        .bind(by)
        .bind(at.to_string())
        .fetch_one(p)
        .await
        .map_err(Self::q))
    }

    /// Grants, live ones only unless `all`.
    pub async fn grants(&self, all: bool) -> Result<Vec<GrantRow>, StoreError> {
        on!(self, p => {
            let sql = if all {
                "SELECT * FROM access_grants ORDER BY id"
            } else {
                "SELECT * FROM access_grants WHERE revoked_at IS NULL ORDER BY id"
            };
            let rows = sqlx::query(sql)
                .fetch_all(p)
                .await
                .map_err(Self::q)?;
            rows.iter()
                .map(|r| {
                    Ok(GrantRow {
                        id: r.try_get("id").map_err(Self::q)?,
                        subject: r.try_get("subject").map_err(Self::q)?,
                        role: r.try_get("role").map_err(Self::q)?,
                        environment: r.try_get("environment").map_err(Self::q)?,
                        granted_by: r.try_get("granted_by").map_err(Self::q)?,
                        granted_at: ts(r.try_get("granted_at").map_err(Self::q)?).unwrap_or_default(),
                        revoked_at: ts(r.try_get("revoked_at").map_err(Self::q)?),
                    })
                })
                .collect()
        })
    }

    /// Revoke a grant; false when it did not exist or was already revoked.
    pub async fn revoke_grant(&self, id: i64, by: &str, at: Timestamp) -> Result<bool, StoreError> {
        on!(self, p => {
            let r = sqlx::query(
                "UPDATE access_grants SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(at.to_string())
            .bind(by)
            .execute(p)
            .await
            .map_err(Self::q)?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Store a new token's hash.
    pub async fn add_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        on!(self, p => {
            sqlx::query(
                "INSERT INTO access_tokens (id, subject, salt, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&t.id)
            .bind(&t.subject)
            .bind(&t.salt)
            .bind(&t.hash)
            .bind(t.created_at.to_string())
            .execute(p)
            .await
            .map_err(Self::q)?;
            Ok(())
        })
    }

    /// One token by id.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        on!(self, p => {
            let r = sqlx::query("SELECT * FROM access_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(Self::q)?;
            r.map(|r| {
                Ok(TokenRow {
                    id: r.try_get("id").map_err(Self::q)?,
                    subject: r.try_get("subject").map_err(Self::q)?,
                    salt: r.try_get("salt").map_err(Self::q)?,
                    hash: r.try_get("hash").map_err(Self::q)?,
                    created_at: ts(r.try_get("created_at").map_err(Self::q)?).unwrap_or_default(),
                    last_used_at: ts(r.try_get("last_used_at").map_err(Self::q)?),
                    revoked_at: ts(r.try_get("revoked_at").map_err(Self::q)?),
                })
            })
            .transpose()
        })
    }

    /// Record a successful use.
    pub async fn touch_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        on!(self, p => {
            sqlx::query("UPDATE access_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at.to_string())
                .execute(p)
                .await
                .map_err(Self::q)?;
            Ok(())
        })
    }

    /// Replace a token's stored hash (a legacy digest upgraded to argon2id).
    pub async fn rehash_token(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        on!(self, p => {
            sqlx::query("UPDATE access_tokens SET hash = $2, salt = '' WHERE id = $1")
                .bind(id)
                .bind(hash)
                .execute(p)
                .await
                .map_err(Self::q)?;
            Ok(())
        })
    }

    /// Every token, newest first (hashes included: never print them).
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        on!(self, p => {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM access_tokens ORDER BY created_at DESC, id")
                    .fetch_all(p)
                    .await
                    .map_err(Self::q)?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(t) = self.token(&id).await? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    /// Revoke a token; false when unknown or already revoked.
    pub async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        on!(self, p => {
            let r = sqlx::query(
                "UPDATE access_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(at.to_string())
            .execute(p)
            .await
            .map_err(Self::q)?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Open a review campaign over every live grant; returns how many it lists.
    pub async fn open_review(&self, id: &str, by: &str, at: Timestamp) -> Result<u64, StoreError> {
        on!(self, p => {
            let mut tx = p.begin().await.map_err(Self::q)?;
            sqlx::query("INSERT INTO access_reviews (id, opened_by, opened_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(by)
                .bind(at.to_string())
                .execute(&mut *tx)
                .await
                .map_err(Self::q)?;
            let r = sqlx::query(
                "INSERT INTO access_review_items (review_id, grant_id) SELECT $1, id FROM access_grants WHERE revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Self::q)?;
            tx.commit().await.map_err(Self::q)?;
            Ok(r.rows_affected())
        })
    }

    /// The items of a campaign.
    pub async fn review_items(&self, id: &str) -> Result<Vec<ReviewItem>, StoreError> {
        on!(self, p => {
            let rows = sqlx::query(
                "SELECT grant_id, decision, reviewer FROM access_review_items WHERE review_id = $1 ORDER BY grant_id",
            )
            .bind(id)
            .fetch_all(p)
            .await
            .map_err(Self::q)?;
            rows.iter()
                .map(|r| {
                    Ok(ReviewItem {
                        grant_id: r.try_get("grant_id").map_err(Self::q)?,
                        decision: r.try_get("decision").map_err(Self::q)?,
                        reviewer: r.try_get("reviewer").map_err(Self::q)?,
                    })
                })
                .collect()
        })
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
        on!(self, p => {
            let mut tx = p.begin().await.map_err(Self::q)?;
            let r = sqlx::query(
                "UPDATE access_review_items SET decision = $3, reviewer = $4, decided_at = $5
             WHERE review_id = $1 AND grant_id = $2
             AND EXISTS (SELECT 1 FROM access_reviews WHERE id = $1 AND closed_at IS NULL)",
            )
            .bind(review)
            .bind(grant_id)
            .bind(decision)
            .bind(reviewer)
            .bind(at.to_string())
            .execute(&mut *tx)
            .await
            .map_err(Self::q)?;
            if r.rows_affected() == 1 && decision == "revoke" {
                sqlx::query(
                    "UPDATE access_grants SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(grant_id)
                .bind(at.to_string())
                .bind(reviewer)
                .execute(&mut *tx)
                .await
                .map_err(Self::q)?;
            }
            tx.commit().await.map_err(Self::q)?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Close a campaign; returns the grant ids nobody reviewed.
    pub async fn close_review(&self, id: &str, at: Timestamp) -> Result<Vec<i64>, StoreError> {
        on!(self, p => {
            sqlx::query("UPDATE access_reviews SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL")
                .bind(id)
                .bind(at.to_string())
                .execute(p)
                .await
                .map_err(Self::q)?;
            Ok(self
                .review_items(id)
                .await?
                .into_iter()
                .filter(|i| i.decision.is_none())
                .map(|i| i.grant_id)
                .collect())
        })
    }

    /// Close the connection pool (before its runtime is dropped).
    pub async fn close(&self) {
        // A PostgreSQL store's pool belongs to the store.
        if let Pool::Sqlite(p) = &self.pool {
            p.close().await;
        }
    }

    /// Where the tables live, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }
}
