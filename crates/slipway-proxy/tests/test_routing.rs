//! Weighted split, live weight and pool changes, the route header.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Empty;
use slipway_proxy::{Pools, Proxy, ProxyConfig, ROUTE_HEADER, Version};

use crate::support::{
    self, Conn, backend, backend_with, connect, connect_from, eventually, get, proxy, served_by,
};

async fn count_versions(conn: &mut Conn<Empty<Bytes>>, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (resp, _) = get(conn, "/", &[]).await;
        assert_eq!(resp.status(), 200);
        *seen.entry(served_by(&resp)).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn split_is_exact_at_0_10_50_100() {
    let (s1, s2, c1) = (
        backend("1.0.0").await,
        backend("1.0.0").await,
        backend("2.0.0").await,
    );
    let proxy = proxy(&[s1.local_addr(), s2.local_addr()], &[c1.local_addr()], 0).await;
    let mut conn = connect(proxy.local_addr()).await;
    for weight in [0u8, 10, 50, 100] {
        proxy.set_weight(weight).unwrap();
        assert_eq!(proxy.weight(), weight);
        let before = proxy.snapshot();
        let seen = count_versions(&mut conn, 200).await;
        let canary = seen.get("2.0.0").copied().unwrap_or(0);
        assert_eq!(canary, usize::from(weight) * 2, "weight {weight}: {seen:?}");
        let delta = proxy.snapshot().since(&before);
        assert_eq!(delta.canary.requests, u64::from(weight) * 2);
        assert_eq!(delta.stable.requests, 200 - u64::from(weight) * 2);
    }
    assert!(proxy.set_weight(101).is_err());
    assert_eq!(proxy.weight(), 100, "a refused weight changes nothing");
}

#[tokio::test]
async fn round_robin_within_the_stable_pool() {
    let (a, b) = (backend("a").await, backend("b").await);
    let proxy = proxy(&[a.local_addr(), b.local_addr()], &[], 0).await;
    let mut conn = connect(proxy.local_addr()).await;
    let seen = count_versions(&mut conn, 100).await;
    assert_eq!(seen.get("a"), Some(&50));
    assert_eq!(seen.get("b"), Some(&50));
}

#[tokio::test]
async fn header_overrides_the_weight() {
    let (s, c) = (backend("1.0.0").await, backend("2.0.0").await);
    let proxy = proxy(&[s.local_addr()], &[c.local_addr()], 0).await;
    let mut conn = connect(proxy.local_addr()).await;
    for _ in 0..5 {
        let (resp, body) = get(&mut conn, "/", &[(ROUTE_HEADER, "canary")]).await;
        assert_eq!(served_by(&resp), "2.0.0");
        assert_eq!(resp.headers()[slipway_proxy::VERSION_HEADER], "canary");
        assert_eq!(body, "2.0.0\n");
    }
    proxy.set_weight(100).unwrap();
    let (resp, _) = get(&mut conn, "/", &[(ROUTE_HEADER, "stable")]).await;
    assert_eq!(served_by(&resp), "1.0.0");
    let (resp, _) = get(&mut conn, "/", &[(ROUTE_HEADER, "purple")]).await;
    assert_eq!(
        resp.status(),
        400,
        "a typo in the header must not route silently"
    );
    // Forced requests are a tester's, not traffic: none is in the analysed numbers, each
    // is counted apart.
    let snap = proxy.snapshot();
    assert_eq!((snap.canary.requests, snap.stable.requests), (0, 0));
    let window = proxy.take_window();
    assert_eq!(
        window.canary.stats.requests + window.stable.stats.requests,
        0
    );
    let text = proxy.render_prometheus();
    assert!(
        text.contains("slipway_proxy_forced_requests_total{version=\"canary\"} 5"),
        "{text}"
    );
    assert!(text.contains("slipway_proxy_forced_requests_total{version=\"stable\"} 1"));
}

/// A client the proxy does not trust cannot pick a version: its header is removed and the
/// request goes by weight (and counts like any other); a trusted source's forced requests
/// never reach the analysed numbers. The attack: healthy requests forced to a
/// 50 %-failing canary diluted its error rate to 0.8 %.
#[tokio::test]
async fn the_route_header_counts_only_from_trusted_sources_and_never_in_analysis() {
    let stable = backend("1.0.0").await;
    let canary = backend_with(demo_app::Config {
        version: "2.0.0".into(),
        error_rate: 0.5,
        ..demo_app::Config::default()
    })
    .await;
    let proxy = Proxy::start(ProxyConfig {
        pools: Pools {
            stable: vec![stable.local_addr()],
            canary: vec![canary.local_addr()],
        },
        canary_weight: 0,
        // Only 127.0.0.1 is trusted; the attacker below connects from 127.0.0.2.
        route_override_from: vec!["127.0.0.1/32".parse().unwrap()],
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let mut untrusted = connect_from::<Empty<Bytes>>("127.0.0.2", proxy.local_addr()).await;
    for _ in 0..20 {
        let (resp, _) = get(&mut untrusted, "/", &[(ROUTE_HEADER, "canary")]).await;
        assert_eq!(
            served_by(&resp),
            "1.0.0",
            "weight 0: the header was ignored"
        );
    }
    let snap = proxy.snapshot();
    assert_eq!((snap.stable.requests, snap.canary.requests), (20, 0));

    // A trusted tester may force the canary; none of it is judged.
    proxy.set_weight(100).unwrap();
    let mut trusted = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    for _ in 0..4 {
        get(&mut trusted, "/", &[]).await;
    }
    for _ in 0..50 {
        let (resp, _) = get(&mut trusted, "/", &[(ROUTE_HEADER, "stable")]).await;
        assert_eq!(served_by(&resp), "1.0.0");
    }
    let snap = proxy.snapshot();
    assert_eq!(snap.canary.requests, 4, "only weighted requests are judged");
    assert_eq!(snap.stable.requests, 20);
}

/// Eight clients hammer the proxy while the weight swings; every request must succeed,
/// and every request sent after `set_weight(0)` returned must land on stable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_under_load_drop_nothing() {
    let slow = |version: &str| demo_app::Config {
        version: version.to_owned(),
        latency: std::time::Duration::from_millis(2),
        ..demo_app::Config::default()
    };
    let s = support::backend_with(slow("1.0.0")).await;
    let c = support::backend_with(slow("2.0.0")).await;
    let proxy = Arc::new(proxy(&[s.local_addr()], &[c.local_addr()], 0).await);
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (running, addr) = (Arc::clone(&running), proxy.local_addr());
        clients.push(tokio::spawn(async move {
            let mut conn = connect(addr).await;
            let mut sent = 0u64;
            while running.load(Ordering::Relaxed) {
                let (resp, body) = get(&mut conn, "/", &[]).await;
                assert_eq!(resp.status(), 200);
                assert_eq!(body, format!("{}\n", served_by(&resp)));
                sent += 1;
            }
            sent
        }));
    }
    for weight in [10, 50, 100, 0, 100, 25, 0, 75] {
        let before = proxy.snapshot().stable.requests + proxy.snapshot().canary.requests;
        proxy.set_weight(weight).unwrap();
        // Let some traffic through at each weight before moving on.
        eventually("traffic at this weight", || {
            let snap = proxy.snapshot();
            snap.stable.requests + snap.canary.requests >= before + 40
        })
        .await;
    }
    running.store(false, Ordering::Relaxed);
    let mut sent = 0;
    for client in clients {
        sent += client.await.unwrap();
    }
    let snap = proxy.snapshot();
    assert_eq!(snap.stable.requests + snap.canary.requests, sent);
    assert_eq!(snap.stable.errors() + snap.canary.errors(), 0);
    assert!(snap.canary.requests > 0 && snap.stable.requests > 0);

    // Stopping the canary: nothing sent after set_weight(0) reaches it.
    proxy.set_weight(0).unwrap();
    let before = proxy.snapshot();
    let mut conn = connect(proxy.local_addr()).await;
    let seen = count_versions(&mut conn, 50).await;
    assert_eq!(seen.get("2.0.0"), None);
    assert_eq!(proxy.snapshot().since(&before).canary.requests, 0);
    eventually("canary drained", || proxy.in_flight(Version::Canary) == 0).await;
}

/// Requests already at the canary when the weight drops to 0 finish normally there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_canary_requests_finish_after_weight_zero() {
    let s = backend("1.0.0").await;
    let c = support::backend_with(demo_app::Config {
        version: "2.0.0".to_owned(),
        latency: std::time::Duration::from_millis(300),
        ..demo_app::Config::default()
    })
    .await;
    let proxy = Arc::new(proxy(&[s.local_addr()], &[c.local_addr()], 100).await);
    let mut pending = Vec::new();
    for _ in 0..4 {
        let addr = proxy.local_addr();
        pending.push(tokio::spawn(async move {
            let mut conn = connect(addr).await;
            let (resp, _) = get(&mut conn, "/", &[]).await;
            (resp.status(), served_by(&resp))
        }));
    }
    eventually("4 requests in flight at the canary", || {
        proxy.in_flight(Version::Canary) == 4
    })
    .await;
    proxy.set_weight(0).unwrap();
    let mut conn = connect(proxy.local_addr()).await;
    let (resp, _) = get(&mut conn, "/", &[]).await;
    assert_eq!(served_by(&resp), "1.0.0");
    for p in pending {
        let (status, version) = p.await.unwrap();
        assert_eq!((status.as_u16(), version.as_str()), (200, "2.0.0"));
    }
    assert_eq!(proxy.in_flight(Version::Canary), 0);
}

#[tokio::test]
async fn pools_are_replaced_live() {
    let (old, new) = (backend("old").await, backend("new").await);
    let proxy = proxy(&[old.local_addr()], &[], 0).await;
    let mut conn = connect(proxy.local_addr()).await;
    assert_eq!(served_by(&get(&mut conn, "/", &[]).await.0), "old");
    let pools = Pools {
        stable: vec![new.local_addr()],
        canary: vec![],
    };
    proxy.set_pools(pools.clone());
    assert_eq!(proxy.pools(), pools);
    assert_eq!(served_by(&get(&mut conn, "/", &[]).await.0), "new");
}
