//! The access tables beside the journal, on both backends: grants (ids, revoke), tokens
//! (store, read, touch, rehash, revoke) and a review campaign whose revoke decision
//! revokes the grant in the same transaction.

use jiff::Timestamp;
use slipway_store::access::{AccessDb, TokenRow};

use crate::common::{Backend, Fresh, at, on_both};

async fn grants_tokens_and_reviews_round_trip(b: Backend) {
    let fresh = Fresh::new(b);
    let store = fresh.open().await.unwrap();
    let db = AccessDb::for_store(&store).await.unwrap();
    // A second opener (another process) finds the tables there.
    let again = AccessDb::for_store(&fresh.open().await.unwrap())
        .await
        .unwrap();
    let g1 = db
        .grant("user:alice", "admin", "*", "user:alice", at(0))
        .await
        .unwrap();
    let g2 = again
        .grant("user:carol", "deployer", "prod", "user:alice", at(1))
        .await
        .unwrap();
    assert!(g2 > g1);
    let live = db.grants(false).await.unwrap();
    assert_eq!(
        live.iter().map(|g| g.subject.as_str()).collect::<Vec<_>>(),
        ["user:alice", "user:carol"]
    );
    assert_eq!(live[1].granted_at, at(1));

    let t = TokenRow {
        id: "slw_abc".into(),
        subject: "user:ci".into(),
        salt: String::new(),
        hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: at(2),
        last_used_at: None,
        revoked_at: None,
    };
    db.add_token(&t, "user:admin").await.unwrap();
    db.touch_token("slw_abc", at(3)).await.unwrap();
    db.rehash_token("slw_abc", "$argon2id$new").await.unwrap();
    let read = again.token("slw_abc").await.unwrap().unwrap();
    assert_eq!(read.last_used_at, Some(at(3)));
    assert_eq!(read.hash, "$argon2id$new");
    assert_eq!(db.tokens().await.unwrap().len(), 1);
    assert!(
        db.revoke_token("slw_abc", at(4), "user:admin")
            .await
            .unwrap()
    );
    assert!(
        !db.revoke_token("slw_abc", at(5), "user:admin")
            .await
            .unwrap()
    );
    assert!(db.token("nope").await.unwrap().is_none());

    assert_eq!(db.open_review("rv1", "user:alice", at(6)).await.unwrap(), 2);
    assert!(
        db.decide("rv1", g2, "revoke", "user:alice", at(7))
            .await
            .unwrap()
    );
    assert_eq!(
        db.close_review("rv1", at(8), "user:admin").await.unwrap(),
        vec![g1]
    );
    // Closed: no more decisions.
    assert!(
        !db.decide("rv1", g1, "confirm", "user:alice", Timestamp::UNIX_EPOCH)
            .await
            .unwrap()
    );
    let live = db.grants(false).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(db.grants(true).await.unwrap().len(), 2);
    assert!(db.revoke_grant(g1, "user:alice", at(9)).await.unwrap());
    assert!(db.grants(false).await.unwrap().is_empty());
    db.close().await;
    // Closing the access tables leaves a PostgreSQL store's pool alone.
    slipway_engine::Store::runs(&store, 1).await.unwrap();
}

on_both!(grants_tokens_and_reviews_round_trip);
