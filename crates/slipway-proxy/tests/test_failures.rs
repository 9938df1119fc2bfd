//! Backend failures become 502s counted as errors of the version that failed.

use bytes::Bytes;
use http_body_util::Empty;
use slipway_proxy::{Pools, Proxy, ProxyConfig, VERSION_HEADER};

use crate::support::{backend, connect, dead_addr, get, proxy};

#[tokio::test]
async fn dead_canary_is_502_and_counted_as_canary_error() {
    let s = backend("1.0.0").await;
    let proxy = proxy(&[s.local_addr()], &[dead_addr()], 50).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let mut bad = 0;
    for _ in 0..20 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        if resp.status() == 502 {
            assert_eq!(resp.headers()[VERSION_HEADER], "canary");
            bad += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert_eq!(bad, 10);
    let snap = proxy.snapshot();
    assert_eq!(snap.canary.requests, 10);
    assert_eq!(snap.canary.proxy_errors, 10);
    assert_eq!(snap.canary.error_rate(), Some(1.0));
    assert_eq!(snap.stable.errors(), 0);
    assert_eq!(snap.stable.status_2xx(), 10);
}

#[tokio::test]
async fn backend_that_dies_mid_run_turns_into_502s() {
    let s = backend("1.0.0").await;
    let addr = s.local_addr();
    let proxy = proxy(&[addr], &[], 0).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    assert_eq!(get(&mut conn, "/", &[]).await.0.status(), 200);
    s.shutdown().await;
    for _ in 0..3 {
        assert_eq!(get(&mut conn, "/", &[]).await.0.status(), 502);
    }
    assert_eq!(proxy.snapshot().stable.proxy_errors, 3);
}

#[tokio::test]
async fn empty_pool_is_503_and_counted() {
    let proxy = proxy(&[], &[], 0).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    assert_eq!(get(&mut conn, "/", &[]).await.0.status(), 503);
    assert_eq!(proxy.snapshot().stable.proxy_errors, 1);
}

#[tokio::test]
async fn slow_backend_hits_the_upstream_timeout() {
    let slow = crate::support::backend_with(demo_app::Config {
        latency: std::time::Duration::from_secs(5),
        ..demo_app::Config::default()
    })
    .await;
    let proxy = Proxy::start(ProxyConfig {
        pools: Pools {
            stable: vec![slow.local_addr()],
            canary: vec![],
        },
        upstream_timeout: Some(std::time::Duration::from_millis(50)),
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    assert_eq!(get(&mut conn, "/", &[]).await.0.status(), 504);
    assert_eq!(proxy.snapshot().stable.proxy_errors, 1);
}

/// One timer serves all requests of a client connection (timer.rs): a deadline left
/// armed by an earlier request must not cut a later, slower one short, and the later
/// one's own deadline must still hold.
#[tokio::test]
async fn upstream_timeout_is_per_request_on_a_kept_alive_connection() {
    use std::time::{Duration, Instant};
    let fast = crate::support::backend("1.0.0").await;
    let slowish = crate::support::backend_with(demo_app::Config {
        latency: Duration::from_millis(600),
        ..demo_app::Config::default()
    })
    .await;
    let stuck = crate::support::backend_with(demo_app::Config {
        latency: Duration::from_secs(30),
        ..demo_app::Config::default()
    })
    .await;
    let timeout = Duration::from_secs(1);
    let proxy = Proxy::start(ProxyConfig {
        pools: Pools {
            stable: vec![fast.local_addr()],
            canary: vec![slowish.local_addr()],
        },
        upstream_timeout: Some(timeout),
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let first = Instant::now();
    assert_eq!(get(&mut conn, "/", &[]).await.0.status(), 200);
    // The second request starts 0.6 s later and takes 0.6 s: the first one's deadline
    // (1 s after it) passes while it waits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (resp, _) = get(&mut conn, "/", &[(slipway_proxy::ROUTE_HEADER, "canary")]).await;
    assert!(
        first.elapsed() > timeout,
        "the scenario needs the first deadline to pass during the second request"
    );
    assert_eq!(
        resp.status(),
        200,
        "cut short by an earlier request's deadline"
    );
    proxy.set_pools(Pools {
        stable: vec![fast.local_addr()],
        canary: vec![stuck.local_addr()],
    });
    // By weight, not by the route header: a forced request is never counted.
    proxy.set_weight(100).unwrap();
    let started = Instant::now();
    let (resp, _) = get(&mut conn, "/", &[]).await;
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() >= timeout,
        "timed out before its own deadline"
    );
    assert_eq!(proxy.snapshot().canary.proxy_errors, 1);
}
