//! RBAC, tokens and access reviews over the real access tables of an SQLite store.

use slipway_govern::access::{self, AccessError, Role};
use slipway_store::access::AccessDb;

use crate::common::*;

async fn db() -> (tempfile::TempDir, AccessDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = AccessDb::open(&dir.path().join("slipway.db"))
        .await
        .unwrap();
    (dir, db)
}

#[tokio::test]
async fn a_missing_role_is_refused_and_named() {
    let (_d, db) = db().await;
    let now = t("2026-11-02T10:00:00Z");
    db.grant("user:alice", "deployer", "staging", "user:root", now)
        .await
        .unwrap();
    db.grant(
        "group:release-managers",
        "approver",
        "prod",
        "user:root",
        now,
    )
    .await
    .unwrap();
    let g = db.grants(false).await.unwrap();
    access::authorize(&g, "alice", &[], Role::Deployer, "deploy", "staging").unwrap();
    access::authorize(&g, "alice", &[], Role::Viewer, "view runs", "staging").unwrap();
    let e = access::authorize(&g, "alice", &[], Role::Deployer, "deploy", "prod").unwrap_err();
    assert!(
        matches!(&e, AccessError::MissingRole { role: Role::Deployer, environment, .. } if environment == "prod")
    );
    assert!(e.to_string().contains("lacks the `deployer` role"), "{e}");
    let e = access::authorize(&g, "alice", &[], Role::Approver, "approve", "staging").unwrap_err();
    assert!(e.to_string().contains("`approver`"), "{e}");
    // Through a group: an approver may also deploy.
    access::authorize(
        &g,
        "bob",
        &["release-managers".into()],
        Role::Deployer,
        "deploy",
        "prod",
    )
    .unwrap();
}

#[test]
fn self_approval_of_a_high_risk_plan_is_refused() {
    let hotfix = plan(SHOP_HOTFIX, "prod");
    assert!(access::needs_peer_review(&hotfix));
    let e = access::check_approval(&hotfix, "r1", "op-bob", "op-bob").unwrap_err();
    assert!(e.to_string().contains("is its author"), "{e}");
    access::check_approval(&hotfix, "r1", "op-bob", "op-carol").unwrap();
    let staging = plan(SHOP_FEATURE, "staging");
    if !access::needs_peer_review(&staging) {
        access::check_approval(&staging, "r2", "op-bob", "op-bob").unwrap();
    }
}

#[tokio::test]
async fn a_revoked_token_stops_working() {
    let (_d, db) = db().await;
    let now = t("2026-11-02T10:00:00Z");
    let issued = access::issue_token("alice", now).unwrap();
    db.add_token(&issued.row, "user:admin").await.unwrap();
    let (id, secret) = access::token_id(&issued.token).unwrap();
    assert_eq!(id, issued.row.id);
    assert!(!issued.row.hash.contains(secret), "only a hash is stored");
    let row = db.token(id).await.unwrap();
    assert_eq!(
        access::verify_token(&issued.token, row.as_ref()).unwrap(),
        "user:alice"
    );
    db.touch_token(id, t("2026-11-02T11:00:00Z")).await.unwrap();
    assert_eq!(
        db.token(id).await.unwrap().unwrap().last_used_at,
        Some(t("2026-11-02T11:00:00Z"))
    );
    // A forged secret with the right id fails.
    let forged = format!("slw_{id}_{}", "0".repeat(64));
    assert!(access::verify_token(&forged, row.as_ref()).is_err());
    assert!(
        db.revoke_token(id, t("2026-11-03T00:00:00Z"), "user:admin")
            .await
            .unwrap()
    );
    let row = db.token(id).await.unwrap();
    let e = access::verify_token(&issued.token, row.as_ref()).unwrap_err();
    assert!(e.to_string().contains("is not valid"), "{e}");
}

#[tokio::test]
async fn a_verified_token_cache_never_outlives_revocation_a_new_hash_or_a_wrong_secret() {
    let (_d, db) = db().await;
    let cache = access::VerifiedTokens::default();
    let t0 = t("2026-11-02T10:00:00Z");
    let issued = access::issue_token("alice", t0).unwrap();
    db.add_token(&issued.row, "user:admin").await.unwrap();
    let (id, _) = access::token_id(&issued.token).unwrap();
    let id = id.to_owned();
    let auth = |token: String, at: &'static str| {
        let (db, cache) = (&db, &cache);
        async move { access::authenticate_cached(db, &token, t(at), cache).await }
    };

    assert_eq!(
        auth(issued.token.clone(), "2026-11-02T10:00:00Z")
            .await
            .unwrap(),
        "user:alice"
    );
    let used = || async { db.token(&id).await.unwrap().unwrap().last_used_at };
    assert_eq!(used().await, Some(t0));
    // Again within the minute: accepted from the cache, last use not rewritten.
    auth(issued.token.clone(), "2026-11-02T10:00:30Z")
        .await
        .unwrap();
    assert_eq!(used().await, Some(t0));
    // A minute on: written again.
    auth(issued.token.clone(), "2026-11-02T10:01:01Z")
        .await
        .unwrap();
    assert_eq!(used().await, Some(t("2026-11-02T10:01:01Z")));

    // A forged secret with the cached token's id gets the full check, and fails.
    let forged = format!("slw_{id}_{}", "0".repeat(64));
    assert!(auth(forged, "2026-11-02T10:02:00Z").await.is_err());

    // The row's hash replaced (re-issued under the same id): the cached token no longer
    // matches what is stored and is refused.
    let other = access::issue_token("alice", t0).unwrap();
    db.rehash_token(&id, &other.row.hash).await.unwrap();
    let e = auth(issued.token.clone(), "2026-11-02T10:03:00Z")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not valid"), "{e}");
    db.rehash_token(&id, &issued.row.hash).await.unwrap();
    auth(issued.token.clone(), "2026-11-02T10:04:00Z")
        .await
        .unwrap();

    // Revoked: refused on the very next use, cached or not.
    assert!(
        db.revoke_token(&id, t("2026-11-02T10:05:00Z"), "user:admin")
            .await
            .unwrap()
    );
    let e = auth(issued.token.clone(), "2026-11-02T10:05:01Z")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not valid"), "{e}");
}

#[tokio::test]
async fn tokens_are_stored_as_argon2id_phc_strings_and_legacy_rows_still_verify() {
    let (_d, db) = db().await;
    let now = t("2026-11-02T10:00:00Z");
    let issued = access::issue_token("alice", now).unwrap();
    assert!(
        issued.row.hash.starts_with("$argon2id$v=19$"),
        "{}",
        issued.row.hash
    );
    assert!(!access::needs_rehash(&issued.row));
    // Two tokens never share a salt: the same secret hashes differently each time.
    let (_, secret) = access::token_id(&issued.token).unwrap();
    assert_ne!(
        access::hash_secret(secret).unwrap(),
        access::hash_secret(secret).unwrap()
    );

    // A row written by an earlier build: salt column + hex sha256(salt || secret).
    let legacy_secret = "ab".repeat(32);
    let salt = "00112233445566778899aabbccddeeff";
    let legacy = slipway_store::access::TokenRow {
        id: "0123456789ab".into(),
        subject: "user:bob".into(),
        salt: salt.into(),
        hash: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(format!("{salt}{legacy_secret}")))
        },
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    db.add_token(&legacy, "user:admin").await.unwrap();
    let token = format!("slw_0123456789ab_{legacy_secret}");
    let row = db.token("0123456789ab").await.unwrap().unwrap();
    assert!(access::needs_rehash(&row));
    assert_eq!(
        access::verify_token(&token, Some(&row)).unwrap(),
        "user:bob"
    );
    let wrong = format!("slw_0123456789ab_{}", "cd".repeat(32));
    assert!(access::verify_token(&wrong, Some(&row)).is_err());
    // Upgraded on use: the same token verifies against the new argon2id row.
    db.rehash_token(
        "0123456789ab",
        &access::hash_secret(&legacy_secret).unwrap(),
    )
    .await
    .unwrap();
    let row = db.token("0123456789ab").await.unwrap().unwrap();
    assert!(!access::needs_rehash(&row) && row.salt.is_empty());
    assert_eq!(
        access::verify_token(&token, Some(&row)).unwrap(),
        "user:bob"
    );
    assert!(access::verify_token(&wrong, Some(&row)).is_err());
}

#[tokio::test]
async fn an_access_review_revokes_a_grant_and_flags_the_unreviewed() {
    let (_d, db) = db().await;
    let now = t("2026-11-02T10:00:00Z");
    let a = db
        .grant("user:alice", "deployer", "prod", "user:root", now)
        .await
        .unwrap();
    let b = db
        .grant("user:bob", "approver", "prod", "user:root", now)
        .await
        .unwrap();
    let c = db
        .grant("user:carol", "viewer", "*", "user:root", now)
        .await
        .unwrap();
    assert_eq!(db.open_review("q4", "user:root", now).await.unwrap(), 3);
    assert!(
        db.decide("q4", a, "revoke", "user:dana", now)
            .await
            .unwrap()
    );
    assert!(
        db.decide("q4", b, "confirm", "user:dana", now)
            .await
            .unwrap()
    );
    let unreviewed = db
        .close_review("q4", t("2026-11-09T00:00:00Z"), "user:admin")
        .await
        .unwrap();
    assert_eq!(unreviewed, [c]);
    assert!(
        !db.decide("q4", c, "confirm", "user:dana", now)
            .await
            .unwrap(),
        "closed campaigns take no decisions"
    );
    let live = db.grants(false).await.unwrap();
    assert!(live.iter().all(|g| g.id != a));
    assert!(access::authorize(&live, "alice", &[], Role::Deployer, "deploy", "prod").is_err());
    access::authorize(&live, "bob", &[], Role::Approver, "approve", "prod").unwrap();
    assert_eq!(
        db.grants(true).await.unwrap().len(),
        3,
        "revoked grants stay on record"
    );
}
