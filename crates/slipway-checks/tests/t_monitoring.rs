//! Monitoring against the real demo-app `/metrics`: with traffic the request counter
//! grows (pass); without traffic it does not (fail); an unknown metric fails.

use std::time::Duration;

use slipway_checks::Outcome;
use slipway_checks::monitoring::check;

use crate::common::demo_app;

#[tokio::test]
async fn traffic_is_seen_and_silence_or_a_wrong_name_fails() {
    let app = demo_app(&[]);
    let url = format!("http://{}/metrics", app.addr);
    let t = Duration::from_secs(2);
    let window = Duration::from_millis(600);
    // No traffic yet: the analysis would see nothing (no series, or a counter at rest).
    let quiet = check(&url, "demo_app_requests_total", window, t).await;
    assert_eq!(quiet.verdict, Outcome::Fail, "{quiet:?}");
    let addr = app.addr.clone();
    let traffic = tokio::spawn(async move {
        let load = slipway_checks::perf::Load {
            paths: vec!["/".into()],
            rate: 50,
            workers: 2,
            duration: Duration::from_secs(2),
        };
        slipway_checks::perf::drive(&addr, &load).await
    });
    let busy = check(&url, "demo_app_requests_total", window, t).await;
    assert_eq!(busy.verdict, Outcome::Pass, "{busy:?}");
    traffic.await.unwrap();
    let wrong = check(&url, "no_such_metric_total", window, t).await;
    assert_eq!(wrong.verdict, Outcome::Fail);
    assert_eq!(wrong.measured, "no such series");
}
