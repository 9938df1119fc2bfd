//! The canary guard over real HTTP: a canary answering only 500s is cut off on the response
//! that trips the sequential test (the next request already goes to stable), a healthy one
//! is never cut, and a controller in another process arms it and reads the verdict through
//! the admin API.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request};
use slipway_proxy::api::{GuardRequest, StateReport};
use slipway_proxy::guard::GuardConfig;

use crate::support::{backend, backend_with, connect, get, proxy, served_by};

#[tokio::test]
async fn a_canary_failing_every_request_gets_no_request_after_its_fourth_error() {
    let stable = backend("1.0.0").await;
    let canary = backend_with(demo_app::Config {
        version: "2.0.0".to_owned(),
        error_rate: 1.0,
        ..demo_app::Config::default()
    })
    .await;
    // Everything to the canary, so each request is one the guard judges.
    let p = proxy(&[stable.local_addr()], &[canary.local_addr()], 100).await;
    p.arm_guard(GuardConfig::for_max_error_rate(0.05));
    let mut conn = connect::<Empty<Bytes>>(p.local_addr()).await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        seen.push((served_by(&resp), resp.status().as_u16()));
    }
    let canary_500 = ("2.0.0".to_owned(), 500);
    let stable_200 = ("1.0.0".to_owned(), 200);
    assert_eq!(seen[..4], vec![canary_500; 4][..], "{seen:?}");
    assert_eq!(seen[4..], vec![stable_200; 4][..], "{seen:?}");
    assert_eq!(p.weight(), 0);
    let trip = p.guard_trip().unwrap();
    assert_eq!((trip.responses, trip.errors), (4, 4));
}

#[tokio::test]
async fn an_unarmed_or_healthy_canary_keeps_its_traffic() {
    let stable = backend("1.0.0").await;
    let failing = backend_with(demo_app::Config {
        version: "2.0.0".to_owned(),
        error_rate: 1.0,
        ..demo_app::Config::default()
    })
    .await;
    // Not armed: the guard judges nothing.
    let p = proxy(&[stable.local_addr()], &[failing.local_addr()], 100).await;
    let mut conn = connect::<Empty<Bytes>>(p.local_addr()).await;
    for _ in 0..20 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        assert_eq!(served_by(&resp), "2.0.0");
    }
    assert_eq!((p.weight(), p.guard_trip()), (100, None));

    // Armed on a canary failing 4 % of its requests (evenly), under the 5 % max: 500
    // requests, all to the canary.
    let healthy = backend_with(demo_app::Config {
        version: "2.1.0".to_owned(),
        error_rate: 0.04,
        ..demo_app::Config::default()
    })
    .await;
    let p = proxy(&[stable.local_addr()], &[healthy.local_addr()], 100).await;
    p.arm_guard(GuardConfig::for_max_error_rate(0.05));
    let mut conn = connect::<Empty<Bytes>>(p.local_addr()).await;
    for _ in 0..500 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        assert_eq!(served_by(&resp), "2.1.0");
    }
    assert_eq!((p.weight(), p.guard_trip()), (100, None));
}

async fn admin(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    body: &[u8],
) -> (u16, Bytes) {
    let mut conn = connect::<Full<Bytes>>(addr).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = conn.send(req).await;
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn the_admin_api_arms_the_guard_and_reports_its_trip() {
    let stable = backend("1.0.0").await;
    let canary = backend_with(demo_app::Config {
        version: "2.0.0".to_owned(),
        error_rate: 1.0,
        ..demo_app::Config::default()
    })
    .await;
    let p = proxy(&[stable.local_addr()], &[canary.local_addr()], 100).await;
    let a = p.admin_addr().unwrap();
    // A max that admits no distinguishable hard failure is refused, naming the fix.
    let bad = serde_json::to_vec(&GuardRequest {
        max_error_rate: Some(0.6),
    })
    .unwrap();
    let (status, body) = admin(a, Method::PUT, "/admin/guard", &bad).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("between 0 and 0.5"));
    let arm = serde_json::to_vec(&GuardRequest {
        max_error_rate: Some(0.05),
    })
    .unwrap();
    let (status, body) = admin(a, Method::PUT, "/admin/guard", &arm).await;
    assert_eq!(status, 200, "{body:?}");
    let mut conn = connect::<Empty<Bytes>>(p.local_addr()).await;
    for _ in 0..6 {
        get(&mut conn, "/", &[]).await;
    }
    let (_, body) = admin(a, Method::GET, "/admin/state", b"").await;
    let state: StateReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(state.weight, 0);
    let trip = state.guard_trip.unwrap();
    assert_eq!((trip.responses, trip.errors), (4, 4));
    // Disarmed: the verdict is gone with the test.
    let off = serde_json::to_vec(&GuardRequest {
        max_error_rate: None,
    })
    .unwrap();
    let (_, body) = admin(a, Method::PUT, "/admin/guard", &off).await;
    let state: StateReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(state.guard_trip, None);
}
