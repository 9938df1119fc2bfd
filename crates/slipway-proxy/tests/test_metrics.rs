//! Per-version metrics match the traffic sent, snapshots, windows and `/metrics` alike.

use bytes::Bytes;
use http_body_util::Empty;

use crate::support::{backend, backend_with, connect, get, proxy};

#[tokio::test]
async fn per_version_numbers_match_the_traffic() {
    let s = backend("1.0.0").await;
    let c = backend_with(demo_app::Config {
        version: "2.0.0".to_owned(),
        error_rate: 0.5,
        ..demo_app::Config::default()
    })
    .await;
    let proxy = proxy(&[s.local_addr()], &[c.local_addr()], 50).await;
    let _ = proxy.take_window(); // start a fresh window
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let mut statuses = std::collections::HashMap::<(String, u16), u64>::new();
    for _ in 0..200 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        let version = resp.headers()["x-version"].to_str().unwrap().to_owned();
        *statuses
            .entry((version, resp.status().as_u16()))
            .or_default() += 1;
    }
    assert_eq!(statuses[&("1.0.0".to_owned(), 200)], 100);
    assert_eq!(statuses[&("2.0.0".to_owned(), 200)], 50);
    assert_eq!(statuses[&("2.0.0".to_owned(), 500)], 50);

    let window = proxy.take_window();
    assert_eq!(window.canary_weight, 50);
    assert_eq!(window.canary.stats.requests, 100);
    assert_eq!(window.canary.stats.status_5xx(), 50);
    assert_eq!(window.canary.stats.error_rate(), Some(0.5));
    assert_eq!(window.canary.latency_samples_us.len(), 100);
    assert_eq!(window.stable.stats.status_2xx(), 100);
    assert_eq!(window.stable.stats.error_rate(), Some(0.0));
    assert!(window.stable.stats.latency_quantile(0.99).is_some());
    let empty = proxy.take_window();
    assert_eq!(
        empty.canary.stats.requests, 0,
        "a window holds only its own traffic"
    );
    assert!(empty.canary.latency_samples_us.is_empty());

    let admin = proxy.admin_addr().unwrap();
    let mut admin_conn = connect::<Empty<Bytes>>(admin).await;
    let (resp, body) = get(&mut admin_conn, "/metrics", &[]).await;
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "slipway_proxy_canary_weight 50",
        "slipway_proxy_requests_total{version=\"stable\",class=\"2xx\"} 100",
        "slipway_proxy_requests_total{version=\"canary\",class=\"2xx\"} 50",
        "slipway_proxy_requests_total{version=\"canary\",class=\"5xx\"} 50",
        "slipway_proxy_request_duration_seconds_count{version=\"canary\"} 100",
        "slipway_proxy_in_flight{version=\"canary\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // The backend's own /metrics is still reachable through the traffic port.
    let (resp, body) = get(&mut conn, "/metrics", &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(String::from_utf8_lossy(&body).contains("demo_app_requests_total"));
}
