//! The HAProxy router against a real HAProxy (runtime API on its admin socket) with real
//! backends and real HTTP traffic through it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::net::SocketAddr;
use std::time::Duration;

use slipway_providers::haproxy::HaproxyRouter;
use slipway_rollout::{MetricSource, TrafficRouter};

use crate::router_support::{Daemon, backend, canary_share, get, until};

/// HAProxy on a loopback port with backend `app`: `slots` stable and canary slots.
pub fn start_haproxy(slots: u32) -> Daemon {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::router_support::free_port();
        slipway_testkit::haproxy::write_config(dir.path(), port, slots, "");
        let child = slipway_testkit::haproxy::spawn(dir.path(), false);
        let mut d = Daemon { child, dir, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(d.child.try_wait(), Ok(Some(_))) {
                break; // port taken by a stranger: try another
            }
            if slipway_testkit::haproxy::answers(d.dir.path(), port) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        errors.push(slipway_testkit::haproxy::errors(d.dir.path()));
    }
    panic!("haproxy did not start in three attempts: {errors:?}");
}

pub fn router(h: &Daemon) -> HaproxyRouter {
    HaproxyRouter::new(
        slipway_testkit::haproxy::socket(h.dir.path()),
        "app",
        "stable",
        "canary",
    )
}

fn front(h: &Daemon) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], h.port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_real_traffic_and_read_back() {
    let h = start_haproxy(2);
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let canary = backend("canary", Duration::ZERO, 0.2).await;
    let r = router(&h);
    r.set_weight(0).await.unwrap();
    r.set_pools(&[stable.local_addr()], &[canary.local_addr()])
        .await
        .unwrap();
    let _ = r.window().await.unwrap(); // counters before the measurement
    let n = 200;
    for w in [10u8, 50, 100, 0] {
        r.set_weight(w).await.unwrap();
        assert_eq!(r.verify_weight().await, Some(w), "weight {w} read back");
        let mut canary_seen = 0;
        let mut errors = 0;
        for _ in 0..n {
            let (status, version) = get(front(&h), "/").await.unwrap();
            if version == "canary" {
                canary_seen += 1;
            }
            if status >= 500 {
                assert_eq!(version, "canary", "only the canary has errors");
                errors += 1;
            }
        }
        match w {
            0 => assert_eq!(canary_seen, 0, "0%: no request may reach the canary"),
            100 => assert_eq!(canary_seen, n, "100%: every request goes to the canary"),
            50 => assert!((70..=130).contains(&canary_seen), "50%: {canary_seen}/{n}"),
            _ => assert!((5..=40).contains(&canary_seen), "10%: {canary_seen}/{n}"),
        }
        // HAProxy's own per-server counters see exactly what the clients saw.
        let win = r.window().await.unwrap();
        assert_eq!(win.canary.requests, canary_seen as u64, "{w}%: {win:?}");
        assert_eq!(win.stable.requests, (n - canary_seen) as u64, "{w}%");
        assert_eq!(win.canary.errors, errors, "{w}%: 5xx counted per pool");
        assert_eq!(win.stable.errors, 0);
    }
    assert_eq!(r.canary_in_flight().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_move_between_slots_and_unused_slots_take_no_traffic() {
    let h = start_haproxy(2);
    let a = backend("stable", Duration::ZERO, 0.0).await;
    let b = backend("stable", Duration::ZERO, 0.0).await;
    let c = backend("canary", Duration::ZERO, 0.0).await;
    let d = backend("canary", Duration::ZERO, 0.0).await;
    let r = router(&h);
    r.set_pools(&[a.local_addr(), b.local_addr()], &[])
        .await
        .unwrap();
    assert_eq!(r.verify_weight().await, Some(0));
    assert_eq!(canary_share(front(&h), 40).await, 0);
    // Two stable, one canary at 50%: the pools' shares, not the servers', are equal.
    r.set_pools(&[a.local_addr(), b.local_addr()], &[c.local_addr()])
        .await
        .unwrap();
    assert_eq!(r.verify_weight().await, Some(0), "a new canary starts at 0");
    r.set_weight(50).await.unwrap();
    assert_eq!(r.verify_weight().await, Some(50));
    let seen = canary_share(front(&h), 200).await;
    assert!(
        (70..=130).contains(&seen),
        "50% over 2+1 servers: {seen}/200"
    );
    // Promotion's shape: canary pool becomes stable, the old stable is retired.
    r.set_pools(&[c.local_addr(), d.local_addr()], &[])
        .await
        .unwrap();
    assert_eq!(r.verify_weight().await, Some(0));
    assert_eq!(
        canary_share(front(&h), 60).await,
        60,
        "only the new version answers"
    );
    let slots = r.slots().await.unwrap();
    assert!(slots.canary.iter().all(|s| !s.in_use()), "{slots:?}");
    // Too many instances for the slots: the error names the backend, the slots and the fix.
    let e = r
        .set_pools(&[a.local_addr(), b.local_addr(), c.local_addr()], &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backend `app` has 2 `stable*` server slot(s)"),
        "{e}"
    );
    assert!(
        e.contains("server-template stable 3 127.0.0.1:1 disabled"),
        "{e}"
    );
    // An unknown backend and a socket nobody listens on are named with the fix.
    let wrong = HaproxyRouter::new(h.dir.path().join("admin.sock"), "nope", "stable", "canary");
    let e = wrong.set_weight(10).await.unwrap_err().to_string();
    assert!(
        e.contains("no backend `nope`") && e.contains("server-template"),
        "{e}"
    );
    let gone = HaproxyRouter::new(h.dir.path().join("missing.sock"), "app", "stable", "canary");
    let e = gone.set_weight(10).await.unwrap_err().to_string();
    assert!(
        e.contains("missing.sock") && e.contains("level admin"),
        "{e}"
    );
    assert_eq!(gone.verify_weight().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_and_pool_removal_do_not_drop_a_request_in_flight() {
    let h = start_haproxy(1);
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let canary = backend("canary", Duration::from_millis(1500), 0.0).await;
    let r = router(&h);
    r.set_pools(&[stable.local_addr()], &[canary.local_addr()])
        .await
        .unwrap();
    r.set_weight(100).await.unwrap();
    let addr = front(&h);
    let slow = tokio::spawn(async move { get(addr, "/").await });
    assert!(
        until(Duration::from_secs(5), || async {
            r.canary_in_flight().await == Some(1)
        })
        .await,
        "the slow request is seen in flight on the canary"
    );
    // Rollback's order: weight to 0, wait for the drain, then the canary leaves its pool.
    r.set_weight(0).await.unwrap();
    assert_eq!(r.verify_weight().await, Some(0));
    assert_eq!(
        canary_share(addr, 20).await,
        0,
        "no new request reaches the canary"
    );
    assert_eq!(r.canary_in_flight().await, Some(1), "still draining");
    r.set_pools(&[stable.local_addr()], &[]).await.unwrap();
    let (status, version) = slow.await.unwrap().unwrap();
    assert_eq!(
        (status, version.as_str()),
        (200, "canary"),
        "the request in flight completed"
    );
    assert!(
        until(Duration::from_secs(5), || async {
            r.canary_in_flight().await.unwrap_or(0) == 0
        })
        .await
    );
}

/// Routers keep nothing: a router built afresh (as by a `slipway` restarted after a crash)
/// reads the pools and weight back from HAProxy and carries the weight over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_router_continues_from_what_haproxy_serves() {
    let h = start_haproxy(2);
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let canary = backend("canary", Duration::ZERO, 0.0).await;
    let other = backend("canary", Duration::ZERO, 0.0).await;
    let first = router(&h);
    first
        .set_pools(&[stable.local_addr()], &[canary.local_addr()])
        .await
        .unwrap();
    first.set_weight(50).await.unwrap();
    drop(first);
    let second = router(&h);
    assert_eq!(
        second.verify_weight().await,
        Some(50),
        "read back, not remembered"
    );
    // A pool change keeps the weight in force: a second canary joins at the same 50%.
    second
        .set_pools(
            &[stable.local_addr()],
            &[canary.local_addr(), other.local_addr()],
        )
        .await
        .unwrap();
    assert_eq!(second.verify_weight().await, Some(50));
    let seen = canary_share(front(&h), 200).await;
    assert!(
        (70..=130).contains(&seen),
        "50% over 1+2 servers: {seen}/200"
    );
}
