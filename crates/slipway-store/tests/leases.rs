//! Environment leases: one holder at a time, renewals, take-over of an expired lease, and
//! the compare-and-swap holding between two store handles (as two processes would) — on
//! both backends.

use std::time::Duration;

use crate::common::{Backend, Fresh, at, on_both};
use slipway_engine::store::{LeaseOutcome, LeaseRequest, Store};

fn req(holder: &str, secs: i64) -> LeaseRequest {
    LeaseRequest {
        environment: "prod".into(),
        holder: holder.into(),
        release: format!("shop {holder}"),
        now: at(secs),
        ttl: Duration::from_secs(30),
    }
}

fn granted(o: &LeaseOutcome) -> bool {
    matches!(o, LeaseOutcome::Granted { .. })
}

async fn a_live_lease_refuses_others_names_itself_and_renews_for_its_holder(b: Backend) {
    let fresh = Fresh::new(b);
    let store = fresh.open().await.unwrap();
    assert!(granted(
        &store.acquire_lease(req("run-a", 0)).await.unwrap()
    ));
    match store.acquire_lease(req("run-b", 10)).await.unwrap() {
        LeaseOutcome::Held(l) => {
            assert_eq!(l.holder, "run-a");
            assert_eq!(l.release, "shop run-a");
            assert_eq!(l.expires_at, at(30));
        }
        other => panic!("expected held, got {other:?}"),
    }
    // The holder renews: expiry moves, acquisition time stays.
    match store.acquire_lease(req("run-a", 20)).await.unwrap() {
        LeaseOutcome::Granted { lease, reclaimed } => {
            assert_eq!(lease.expires_at, at(50));
            assert_eq!(lease.acquired_at, at(0));
            assert!(reclaimed.is_none());
        }
        other => panic!("expected granted, got {other:?}"),
    }
    // Past the old expiry but before the renewed one: still held.
    assert!(!granted(
        &store.acquire_lease(req("run-b", 40)).await.unwrap()
    ));
    let all = store.leases().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].holder, "run-a");
}

async fn an_expired_lease_is_reclaimed_and_the_old_holder_cannot_release_it(b: Backend) {
    let fresh = Fresh::new(b);
    let store = fresh.open().await.unwrap();
    store.acquire_lease(req("run-a", 0)).await.unwrap();
    match store.acquire_lease(req("run-b", 30)).await.unwrap() {
        LeaseOutcome::Granted { lease, reclaimed } => {
            assert_eq!(lease.holder, "run-b");
            assert_eq!(reclaimed.unwrap().holder, "run-a");
        }
        other => panic!("expected the expired lease to be reclaimed, got {other:?}"),
    }
    // The crashed holder coming back must neither release nor retake the live lease.
    assert!(
        store
            .release_lease("prod", Some("run-a"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!granted(
        &store.acquire_lease(req("run-a", 31)).await.unwrap()
    ));
    let gone = store.release_lease("prod", Some("run-b")).await.unwrap();
    assert_eq!(gone.unwrap().holder, "run-b");
    assert!(store.leases().await.unwrap().is_empty());
    // Free again: anyone may take it; a forced release (no holder) removes any holder.
    assert!(granted(
        &store.acquire_lease(req("run-c", 32)).await.unwrap()
    ));
    assert_eq!(
        store
            .release_lease("prod", None)
            .await
            .unwrap()
            .unwrap()
            .holder,
        "run-c"
    );
}

async fn concurrent_takers_on_two_store_handles_get_exactly_one_lease(b: Backend) {
    let fresh = Fresh::new(b);
    // Two handles = two writer connections, the situation of two slipway processes.
    let a = std::sync::Arc::new(fresh.open().await.unwrap());
    let b = std::sync::Arc::new(fresh.open().await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.acquire_lease(req(&format!("run-{i}"), 0)).await.unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let LeaseOutcome::Granted { lease, .. } = t.await.unwrap() {
            winners.push(lease.holder);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(a.leases().await.unwrap()[0].holder, winners[0]);
}

on_both!(
    a_live_lease_refuses_others_names_itself_and_renews_for_its_holder,
    an_expired_lease_is_reclaimed_and_the_old_holder_cannot_release_it,
    concurrent_takers_on_two_store_handles_get_exactly_one_lease
);
