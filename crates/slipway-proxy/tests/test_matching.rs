//! Match routes (header and cookie, A/B testing) and session affinity by cookie, over real
//! HTTP through the proxy to real demo-app backends.

use slipway_proxy::Pools;
use slipway_proxy::guard::GuardConfig;
use slipway_proxy::matching::{Affinity, CookieMatch, HeaderMatch, MatchRule, Routes};

use crate::support::{backend, backend_with, connect, get, proxy, served_by};

fn ab_routes() -> Routes {
    Routes {
        matches: vec![
            MatchRule {
                headers: vec![HeaderMatch {
                    name: "x-canary".into(),
                    exact: Some("always".into()),
                    prefix: None,
                }],
                cookie: None,
            },
            MatchRule {
                headers: vec![],
                cookie: Some(CookieMatch {
                    name: "canary".into(),
                    value: "always".into(),
                }),
            },
        ],
        affinity: None,
    }
}

fn sticky(max_age_secs: u64) -> Routes {
    Routes {
        matches: vec![],
        affinity: Some(Affinity {
            cookie: "slipway-canary".into(),
            max_age_secs,
            token: String::new(),
        }),
    }
}

#[tokio::test]
async fn matched_requests_always_reach_the_canary_and_stay_out_of_the_analysis() {
    let (stable, canary) = (backend("1.0.0").await, backend("2.0.0").await);
    let p = proxy(&[stable.local_addr()], &[canary.local_addr()], 0).await;
    p.set_routes(ab_routes()).unwrap();
    assert_eq!(p.routes(), ab_routes());
    let _ = p.take_window();
    let mut conn = connect(p.local_addr()).await;
    for _ in 0..20 {
        let (resp, _) = get(&mut conn, "/", &[("x-canary", "always")]).await;
        assert_eq!(served_by(&resp), "2.0.0");
        let (resp, _) = get(&mut conn, "/", &[("cookie", "theme=dark; canary=always")]).await;
        assert_eq!(served_by(&resp), "2.0.0");
        // Near misses route by weight (0: stable).
        let (resp, _) = get(&mut conn, "/", &[("x-canary", "sometimes")]).await;
        assert_eq!(served_by(&resp), "1.0.0");
        let (resp, _) = get(&mut conn, "/", &[("cookie", "canary=never")]).await;
        assert_eq!(served_by(&resp), "1.0.0");
    }
    let w = p.take_window();
    assert_eq!(w.canary.stats.requests, 0, "matched traffic was analysed");
    assert_eq!(w.canary.stats.matched_requests, 40);
    assert_eq!(w.canary.stats.matched_errors, 0);
    assert_eq!(w.stable.stats.requests, 40);
    assert!(
        p.render_prometheus().contains(
            "slipway_proxy_matched_requests_total{version=\"canary\",outcome=\"all\"} 40"
        )
    );

    // Without a canary (promoted or rolled back) a match means nothing.
    p.set_pools(Pools {
        stable: vec![stable.local_addr()],
        canary: vec![],
    });
    let (resp, _) = get(&mut conn, "/", &[("x-canary", "always")]).await;
    assert_eq!(
        (resp.status().as_u16(), served_by(&resp)),
        (200, "1.0.0".into())
    );
    assert_eq!(p.take_window().stable.stats.requests, 1);
}

#[tokio::test]
async fn a_failing_canary_behind_a_match_neither_trips_nor_feeds_the_verdict() {
    let stable = backend("1.0.0").await;
    let failing = backend_with(demo_app::Config {
        version: "2.0.0".into(),
        error_rate: 1.0,
        ..demo_app::Config::default()
    })
    .await;
    let p = proxy(&[stable.local_addr()], &[failing.local_addr()], 0).await;
    p.set_routes(ab_routes()).unwrap();
    p.arm_guard(GuardConfig::for_max_error_rate(0.05));
    let mut conn = connect(p.local_addr()).await;
    for _ in 0..30 {
        let (resp, _) = get(&mut conn, "/", &[("x-canary", "always")]).await;
        assert_eq!(resp.status(), 500);
    }
    assert!(p.guard_trip().is_none(), "matched traffic fed the guard");
    let w = p.take_window();
    assert_eq!((w.canary.stats.requests, w.canary.stats.errors()), (0, 0));
    assert_eq!(
        (
            w.canary.stats.matched_requests,
            w.canary.stats.matched_errors
        ),
        (30, 30)
    );
}

#[tokio::test]
async fn the_guard_tripping_on_weighted_traffic_clears_the_routes_too() {
    let stable = backend("1.0.0").await;
    let failing = backend_with(demo_app::Config {
        version: "2.0.0".into(),
        error_rate: 1.0,
        ..demo_app::Config::default()
    })
    .await;
    let p = proxy(&[stable.local_addr()], &[failing.local_addr()], 100).await;
    p.set_routes(ab_routes()).unwrap();
    p.arm_guard(GuardConfig::for_max_error_rate(0.05));
    let mut conn = connect(p.local_addr()).await;
    while p.guard_trip().is_none() {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        assert_eq!(
            resp.status(),
            500,
            "a request after the trip reached the canary"
        );
    }
    assert_eq!(p.weight(), 0);
    assert_eq!(p.routes(), Routes::default());
    let (resp, _) = get(&mut conn, "/", &[("x-canary", "always")]).await;
    assert_eq!(
        (resp.status().as_u16(), served_by(&resp)),
        (200, "1.0.0".into())
    );
}

/// The `slipway-canary` cookie a response set, if any.
fn assigned(resp: &hyper::Response<()>) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("slipway-canary="))
        .map(|v| v.to_owned())
}

#[tokio::test]
async fn affinity_keeps_each_user_on_its_version_while_the_weight_changes() {
    let (stable, canary) = (backend("1.0.0").await, backend("2.0.0").await);
    let p = proxy(&[stable.local_addr()], &[canary.local_addr()], 50).await;
    p.set_routes(sticky(3600)).unwrap();
    let mut conn = connect(p.local_addr()).await;

    // Ten new users at weight 50: five assigned to each version, told so by a cookie.
    let mut users = Vec::new();
    for _ in 0..10 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        let cookie = assigned(&resp).expect("a weighted response carries the cookie");
        let version = served_by(&resp);
        let expected = if version == "2.0.0" {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(
            cookie,
            format!("{expected}; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax")
        );
        users.push((format!("slipway-canary={expected}"), version));
    }
    assert_eq!(users.iter().filter(|(_, v)| v == "2.0.0").count(), 5);

    let _ = p.take_window();
    // Whatever the weight does, each user stays where it was assigned, and is not
    // assigned again.
    for weight in [0u8, 100, 10, 90] {
        p.set_weight(weight).unwrap();
        for (cookie, version) in &users {
            let (resp, _) = get(&mut conn, "/", &[("cookie", cookie.as_str())]).await;
            assert_eq!(&served_by(&resp), version, "weight {weight}, {cookie}");
            assert_eq!(assigned(&resp), None);
        }
    }
    // Sticky users are real users: their requests are what the analysis judges.
    let w = p.take_window();
    assert_eq!((w.canary.stats.requests, w.stable.stats.requests), (20, 20));
    assert_eq!(w.canary.stats.matched_requests, 0);

    // Once the canary is gone the cookie stops mattering, and nobody gets a new one.
    p.set_pools(Pools {
        stable: vec![canary.local_addr()],
        canary: vec![],
    });
    p.set_weight(0).unwrap();
    for (cookie, _) in &users {
        let (resp, _) = get(&mut conn, "/", &[("cookie", cookie.as_str())]).await;
        assert_eq!(served_by(&resp), "2.0.0");
        assert_eq!(assigned(&resp), None);
    }
}

#[tokio::test]
async fn bad_routes_are_refused_over_the_admin_api_and_change_nothing() {
    let stable = backend("1.0.0").await;
    let p = proxy(&[stable.local_addr()], &[], 0).await;
    let admin = p.admin_addr().unwrap();
    let put = |body: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        let req = format!(
            "PUT /admin/routes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out)
            .await
            .unwrap();
        out
    };
    let refused = put(r#"{"match": [{"headers": [{"name": "x canary", "exact": "1"}]}]}"#).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(
        refused.contains("`x canary` is not a valid HTTP header name"),
        "{refused}"
    );
    let refused = put(r#"{"match": [{}]}"#).await;
    assert!(
        refused.contains("would send every request to the canary"),
        "{refused}"
    );
    assert_eq!(p.routes(), Routes::default());
    let ok = put(r#"{"affinity": {"cookie": "sticky", "max_age_secs": 60}}"#).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(p.routes().affinity.unwrap().cookie, "sticky");
}
