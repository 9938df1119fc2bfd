//! The admin API a controller in another process drives the proxy with: refused without
//! the token, and with it the same effects as the in-process handle — weight, pools, and
//! windows with per-version numbers and raw latency samples.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request};
use slipway_proxy::api::{PoolsRequest, StateReport, WeightRequest, WindowReport};
use slipway_proxy::{Pools, Proxy, ProxyConfig, TOKEN_HEADER};

use crate::support::{backend, backend_with, connect, get, served_by};

async fn admin(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Bytes) {
    let mut conn = connect::<Full<Bytes>>(addr).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    let resp = conn
        .send(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await;
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_drives_the_proxy() {
    let stable = backend("1.0.0").await;
    let canary = backend_with(demo_app::Config {
        version: "2.0.0".to_owned(),
        error_rate: 1.0,
        ..demo_app::Config::default()
    })
    .await;
    let proxy = Proxy::start(ProxyConfig {
        admin_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token: Some("s3cret-token".into()),
        pools: Pools {
            stable: vec![stable.local_addr()],
            canary: vec![],
        },
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let a = proxy.admin_addr().unwrap();

    // Without the token, or with a wrong one, nothing changes and nothing is read.
    let weight = serde_json::to_vec(&WeightRequest { weight: 50 }).unwrap();
    for token in [None, Some("s3cret-tokem"), Some("s3cret")] {
        let (status, _) = admin(a, Method::PUT, "/admin/weight", token, &weight).await;
        assert_eq!(status, 401, "{token:?}");
        let (status, _) = admin(a, Method::POST, "/admin/window", token, b"").await;
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(proxy.weight(), 0);
    // Scraping stays open.
    let (status, _) = admin(a, Method::GET, "/metrics", None, b"").await;
    assert_eq!(status, 200);

    let token = Some("s3cret-token");
    let pools = serde_json::to_vec(&PoolsRequest {
        stable: vec![stable.local_addr()],
        canary: vec![canary.local_addr()],
    })
    .unwrap();
    let (status, body) = admin(a, Method::PUT, "/admin/pools", token, &pools).await;
    assert_eq!(status, 200, "{body:?}");
    let (status, body) = admin(a, Method::PUT, "/admin/weight", token, &weight).await;
    assert_eq!(status, 200);
    let state: StateReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(state.weight, 50);
    assert_eq!(state.canary, vec![canary.local_addr()]);
    assert_eq!(proxy.weight(), 50, "the same router the handle sees");
    let (status, _) = admin(a, Method::PUT, "/admin/weight", token, br#"{"weight":101}"#).await;
    assert_eq!(status, 400);
    let (status, _) = admin(a, Method::PUT, "/admin/pools", token, b"{not json").await;
    assert_eq!(status, 400);

    // A fresh window, then traffic split 50/50 by the weight set over the API.
    let (status, _) = admin(a, Method::POST, "/admin/window", token, b"").await;
    assert_eq!(status, 200);
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let mut by_version = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        *by_version.entry(served_by(&resp)).or_default() += 1;
    }
    assert_eq!(by_version["1.0.0"], 20);
    assert_eq!(by_version["2.0.0"], 20);
    let (status, body) = admin(a, Method::POST, "/admin/window", token, b"").await;
    assert_eq!(status, 200);
    let w: WindowReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(w.canary_weight, 50);
    assert_eq!(w.canary.requests, 20);
    assert_eq!(w.canary.errors, 20, "the canary answers 500");
    assert_eq!(w.stable.requests, 20);
    assert_eq!(w.stable.errors, 0);
    assert_eq!(w.canary.samples_us.len(), 20);
    assert!(w.stable.p99_us.is_some() && w.canary.p50_us.is_some());
    let (_, body) = admin(a, Method::POST, "/admin/window", token, b"").await;
    let empty: WindowReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        empty.canary.requests, 0,
        "a window holds only its own traffic"
    );
    assert_eq!(empty.canary.p99_us, None);

    let (status, body) = admin(a, Method::GET, "/admin/state", token, b"").await;
    assert_eq!(status, 200);
    let state: StateReport = serde_json::from_slice(&body).unwrap();
    assert_eq!((state.requests_canary, state.errors_canary), (20, 20));
    assert_eq!(state.in_flight_canary, 0);
}
