//! A/B match routes and session affinity of `strategy.canary` behind a real nginx
//! (generated `map`s choosing the upstream, reloaded like a weight change) through the
//! real `slipway` binary, real demo-app instances and real HTTP: testers matched to the
//! canary reach it whatever the weight, users stuck to a version stay there while the
//! canary lasts, a cookie from an earlier canary is ignored, and a rollback ends both.
//! Behind a real HAProxy (a `map_reg` map over the request's headers filled through the
//! runtime API, `use-server` to a canary slot, a stick table counting matched requests):
//! the same for match routes, and testers kept out of the verdict HAProxy's counters give.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::canary_cli::Env;
use crate::front_door_cli::get;
use crate::router_cli::{haproxy_with, nginx_flags, nginx_with};
use slipway_providers::traffic::Traffic;

/// A release of `api` at `version` behind `router` with `strategy.canary` = `canary`.
fn spec(env: &Env, version: &str, router: &str, canary: &str) -> PathBuf {
    spec_with(env, version, "", router, canary, "")
}

/// [`spec`] with `args` for demo-app and `more` YAML at the end.
fn spec_with(
    env: &Env,
    version: &str,
    args: &str,
    router: &str,
    canary: &str,
    more: &str,
) -> PathBuf {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}} {args}\", replicas: 2 }}
    readiness: {{ http: /ready, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    router: {router}
    strategy:
      canary: {canary}
{more}"
    );
    let p = env.path().join(format!("release-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// nginx proxying to `$slipway_app` (what the routes choose), logging each request's
/// `$slipway_route_app` to `access.log`; and the router spec that drives it.
fn routed_nginx(env: &Env) -> (crate::router_cli::Daemon, String) {
    let d = env.path().display().to_string();
    let n = nginx_with(
        env.path(),
        "http://$slipway_app",
        &format!("log_format route '$slipway_route_app $status'; access_log {d}/access.log route;"),
    );
    let router = format!(
        "{{ nginx: {{ upstream_file: upstream.conf, upstream: app, test: \"nginx -t -q {f}\", reload: \"nginx -s reload {f}\" }} }}",
        f = nginx_flags(env.path())
    );
    (n, router)
}

/// `slipway deploy --detach` of a canary that pauses for a human, and its run once the
/// canary waits there (journal polled with a deadline).
fn deploy_to_pause(env: &Env, spec: &Path) -> String {
    let (code, out, err) = env.run(&[
        "deploy",
        "--env",
        "live",
        "--detach",
        "--output",
        "json",
        "-f",
        &spec.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let run = v["run"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if env.journal(&run).contains("pause until resumed") {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "never paused: {}",
            env.journal(&run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `slipway abort` of a paused run (the controller's rollback), waiting for it to end.
fn abort(env: &Env, run: &str) {
    let (code, out, err) = env.run(&["abort", run]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = env.run(&["wait", run, "--timeout", "30"]);
    assert_eq!(code, 6, "aborted: {out}\n{err}");
}

/// `GET /version` through the front door: (version that answered, `Set-Cookie` or "").
fn who(front: SocketAddr, headers: &[(&str, &str)]) -> (String, String) {
    let (status, head, body) = get(front.port(), "/version", headers);
    assert_eq!(status, 200, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (body.trim().to_owned(), cookie)
}

/// The routes the access log recorded, by `$slipway_route_app`.
fn logged_routes(env: &Env) -> std::collections::BTreeMap<String, usize> {
    let text = std::fs::read_to_string(env.path().join("access.log")).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let route = line.split_whitespace().next().unwrap_or("").to_owned();
        *out.entry(route).or_insert(0) += 1;
    }
    out
}

#[test]
fn nginx_sends_testers_by_header_or_cookie_to_a_paused_canary_until_it_is_rolled_back() {
    let env = Env::new();
    let (n, router) = routed_nginx(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], n.port));
    let canary = "{ match: [ { headers: { x-canary: { exact: always } } }, { cookie: { name: canary, value: always } } ], steps: [ { pause: manual } ] }";
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", &router, canary));
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(who(front, &[("x-canary", "always")]).0, "1.0.0");
    // The canary waits at weight 0: only matched requests reach it.
    let run = deploy_to_pause(&env, &spec(&env, "2.0.0", &router, canary));
    let before = logged_routes(&env);
    for _ in 0..10 {
        assert_eq!(who(front, &[("x-canary", "always")]).0, "2.0.0");
        assert_eq!(who(front, &[("cookie", "a=b; canary=always")]).0, "2.0.0");
        assert_eq!(who(front, &[]).0, "1.0.0");
        assert_eq!(who(front, &[("x-canary", "Always")]).0, "1.0.0");
        assert_eq!(who(front, &[("cookie", "canary=always2")]).0, "1.0.0");
    }
    // nginx tells the matched requests apart for the team's metrics and logs.
    let after = logged_routes(&env);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!((delta("matched"), delta("weighted")), (20, 30), "{after:?}");
    abort(&env, &run);
    // The rollback removed the routes with the weight: testers are back on stable.
    for _ in 0..5 {
        assert_eq!(who(front, &[("x-canary", "always")]).0, "1.0.0");
        assert_eq!(who(front, &[("cookie", "canary=always")]).0, "1.0.0");
    }
    let file = std::fs::read_to_string(env.path().join("upstream.conf")).unwrap();
    assert!(file.contains("# slipway-routes -"), "{file}");
}

#[test]
fn nginx_keeps_users_on_their_version_while_the_canary_lasts_and_ignores_stale_cookies() {
    let env = Env::new();
    let (n, router) = routed_nginx(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], n.port));
    let canary = "{ session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { pause: manual } ] }";
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", &router, canary));
    assert_eq!(code, 0, "{v}\n{err}");
    // No canary: nobody is assigned.
    assert_eq!(who(front, &[]), ("1.0.0".to_owned(), String::new()));
    let run = deploy_to_pause(&env, &spec(&env, "2.0.0", &router, canary));
    // New users are split by weight and told where they were put, by a cookie naming
    // this canary.
    let mut users = Vec::new();
    let mut token = None;
    for _ in 0..10 {
        let (version, set) = who(front, &[]);
        let (value, attrs) = set.split_once(';').unwrap_or_else(|| panic!("{set:?}"));
        assert_eq!(attrs.trim(), "Max-Age=1800; Path=/; HttpOnly; SameSite=Lax");
        let (name, value) = value.split_once('=').unwrap();
        assert_eq!(name, "slipway-canary");
        let (t, role) = value.rsplit_once('-').unwrap();
        assert_eq!(
            role,
            if version == "2.0.0" {
                "canary"
            } else {
                "stable"
            },
            "{set}"
        );
        assert_eq!(
            *token.get_or_insert_with(|| t.to_owned()),
            t,
            "one token per canary"
        );
        users.push((format!("{name}={value}"), version));
    }
    let on_canary = users.iter().filter(|(_, v)| v == "2.0.0").count();
    assert!((1..10).contains(&on_canary), "{users:?}");
    // Each comes back to the same version, every time, and is not reassigned.
    for _ in 0..5 {
        assert_still_pinned(front, &users, "nginx");
    }
    // A cookie from an earlier canary names another rollout: its holder is assigned
    // afresh by weight, not sent to this canary.
    let stale = "slipway-canary=5eed-canary";
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (version, set) = who(front, &[("cookie", stale)]);
        assert!(set.starts_with("slipway-canary="), "reassigned: {set:?}");
        assert!(!set.contains("5eed"), "{set}");
        seen.insert(version);
    }
    assert!(seen.contains("1.0.0"), "{seen:?}");
    abort(&env, &run);
    for (cookie, _) in &users {
        let (got, set) = who(front, &[("cookie", cookie)]);
        assert_eq!((got.as_str(), set.as_str()), ("1.0.0", ""), "{cookie}");
    }
}

/// HAProxy whose `backend app` applies the routes map `routes.map` (created empty), and
/// the router spec that drives it.
fn routed_haproxy(env: &Env) -> (crate::router_cli::Daemon, String) {
    let map = env.path().join("routes.map");
    std::fs::write(&map, "").unwrap();
    let m = map.display();
    let h = haproxy_with(
        env.path(),
        &format!(
            "  stick-table type integer size 1 store http_req_cnt,http_fail_cnt
  http-request set-var(txn.slipway) req.hdrs,map_reg({m})
  http-request track-sc0 int(0) if {{ var(txn.slipway) -m str matched }}
  use-server canary1 if {{ var(txn.slipway) -m str matched }} {{ srv_is_up(app/canary1) }}
  use-server canary2 if {{ var(txn.slipway) -m str matched }} {{ srv_is_up(app/canary2) }}"
        ),
    );
    (
        h,
        "{ haproxy: { socket: admin.sock, backend: app, routes_map: routes.map } }".to_owned(),
    )
}

#[test]
fn haproxy_sends_testers_by_header_or_cookie_to_a_paused_canary_until_it_is_rolled_back() {
    let env = Env::new();
    let (h, router) = routed_haproxy(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let canary = "{ match: [ { headers: { x-canary: { exact: always } } }, { headers: { x-group: { prefix: \"beta \" }, x-region: { exact: eu.1 } } }, { cookie: { name: canary, value: always } } ], steps: [ { pause: manual } ] }";
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", &router, canary));
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(who(front, &[("x-canary", "always")]).0, "1.0.0");
    // The canary waits at weight 0: only matched requests reach it.
    let run = deploy_to_pause(&env, &spec(&env, "2.0.0", &router, canary));
    for _ in 0..5 {
        assert_eq!(who(front, &[("x-canary", "always")]).0, "2.0.0");
        assert_eq!(who(front, &[("X-Canary", "always ")]).0, "2.0.0");
        assert_eq!(who(front, &[("cookie", "a=b; canary=always")]).0, "2.0.0");
        assert_eq!(
            who(front, &[("x-region", "eu.1"), ("x-group", "beta testers")]).0,
            "2.0.0"
        );
        assert_eq!(who(front, &[]).0, "1.0.0");
        assert_eq!(who(front, &[("x-canary", "Always")]).0, "1.0.0");
        assert_eq!(who(front, &[("x-canary", "always2")]).0, "1.0.0");
        assert_eq!(who(front, &[("cookie", "canary=always2")]).0, "1.0.0");
        assert_eq!(who(front, &[("x-region", "eu.1")]).0, "1.0.0");
        assert_eq!(
            who(front, &[("x-region", "eux1"), ("x-group", "beta testers")]).0,
            "1.0.0"
        );
    }
    abort(&env, &run);
    // The rollback emptied the map with the weight: testers are back on stable.
    for _ in 0..5 {
        assert_eq!(who(front, &[("x-canary", "always")]).0, "1.0.0");
        assert_eq!(who(front, &[("cookie", "canary=always")]).0, "1.0.0");
    }
}

#[test]
fn haproxy_testers_hammering_a_failing_canary_cannot_dilute_its_verdict() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let (h, router) = routed_haproxy(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let canary = "{ match: [ { headers: { x-canary: { exact: always } } } ], steps: [ { set_weight: 20 }, { analysis: { template: golden, duration: 4s } }, { set_weight: 100 } ] }";
    let golden = "analysis_templates:
  golden:
    interval: 500ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 8
    metrics:
      - { name: error-rate, max: 0.05 }
    on_failure: rollback
";
    let (code, v, err) = env.deploy(&spec_with(&env, "1.0.0", "", &router, canary, golden));
    assert_eq!(code, 0, "{v}\n{err}");
    let users = {
        let _g = env.rt.enter();
        slipway_providers::traffic::Traffic::start(front, "/", 100, 2)
    };
    // A tester asks the canary for `/version` (which never fails) as fast as it answers:
    // counted with the canary's own traffic, these would hide its errors.
    let stop = Arc::new(AtomicBool::new(false));
    let tester = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (version, _) = who(front, &[("x-canary", "always")]);
                if seen.last() != Some(&version) {
                    seen.push(version);
                }
            }
            seen
        })
    };
    let (code, v, err) = env.deploy(&spec_with(
        &env,
        "2.0.0",
        "--error-rate 0.3",
        &router,
        canary,
        golden,
    ));
    stop.store(true, Ordering::SeqCst);
    let seen = tester.join().unwrap();
    let stats = env.rt.block_on(users.stop());
    assert_eq!(code, 4, "rolled back by itself: {v}\n{err}\n{stats:?}");
    // Once the rollback cleared the routes nothing installed them again.
    // The tester reached the canary through the header and, once the rollback took the
    // weight to 0 and then the routes away, stable for good: nothing put them back.
    assert_eq!(seen, ["1.0.0", "2.0.0", "1.0.0"], "the tester's path");
    for _ in 0..20 {
        assert_eq!(who(front, &[("x-canary", "always")]).0, "1.0.0");
    }
    let map = env.rt.block_on(
        slipway_providers::haproxy::HaproxyRouter::new(
            env.path().join("admin.sock"),
            "app",
            "stable",
            "canary",
        )
        .command(&format!(
            "show map {}",
            env.path().join("routes.map").display()
        )),
    );
    assert!(
        !map.as_deref().unwrap_or("").contains(" matched"),
        "{map:?}"
    );
    let journal = env.journal(v["run"].as_str().unwrap());
    assert!(journal.contains("\"matched_requests\""), "{journal}");
    let (_, shown, _) = env.run(&["logs", v["run"].as_str().unwrap()]);
    assert!(
        shown.contains("matched to the canary, not judged"),
        "{shown}"
    );
}

/// HAProxy whose `backend app` declares the affinity cookie (the line docs/rollout.md
/// gives; Slipway turns on dynamic server cookies while a canary serves), and the router
/// spec that drives it.
fn sticky_haproxy(env: &Env) -> (crate::router_cli::Daemon, String) {
    let h = haproxy_with(
        env.path(),
        "  cookie slipway-canary insert indirect nocache httponly attr \"SameSite=Lax\" attr \"Max-Age=1800\"",
    );
    (
        h,
        "{ haproxy: { socket: admin.sock, backend: app } }".to_owned(),
    )
}

/// The value of a `slipway-canary=VALUE; ...` `Set-Cookie` ("" for none or a removal).
fn pin(set: &str) -> &str {
    set.strip_prefix("slipway-canary=")
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
}

/// `n` new users through HAProxy's front door, each pinned by the cookie it was given:
/// (its `Cookie` header, the version that answered). Some are on the canary.
fn pinned_users(front: SocketAddr, n: usize) -> Vec<(String, String)> {
    let users: Vec<(String, String)> = (0..n)
        .map(|_| {
            let (version, set) = who(front, &[]);
            assert!(!pin(&set).is_empty(), "{set}");
            (format!("slipway-canary={}", pin(&set)), version)
        })
        .collect();
    assert!(users.iter().any(|(_, v)| v == "2.0.0"), "{users:?}");
    users
}

/// Each of `users` (cookie, version) comes back to its version and is not pinned anew.
fn assert_still_pinned(front: SocketAddr, users: &[(String, String)], when: &str) {
    for (cookie, version) in users {
        let (got, set) = who(front, &[("cookie", cookie)]);
        assert_eq!((&got, set.as_str()), (version, ""), "{when}: {cookie}");
    }
}

#[test]
fn haproxy_keeps_users_on_their_version_while_the_canary_lasts_and_ignores_stale_cookies() {
    let env = Env::new();
    let (h, router) = sticky_haproxy(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let canary = "{ session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { pause: manual } ] }";
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", &router, canary));
    assert_eq!(code, 0, "{v}\n{err}");
    // No canary: nobody is pinned (HAProxy only asks for any old cookie to be dropped).
    let (version, set) = who(front, &[]);
    assert_eq!((version.as_str(), pin(&set)), ("1.0.0", ""), "{set}");
    let run = deploy_to_pause(&env, &spec(&env, "2.0.0", &router, canary));
    // New users are split by weight and pinned to the server that answered them.
    let mut users = Vec::new();
    for _ in 0..20 {
        let (version, set) = who(front, &[]);
        let (value, attrs) = set.split_once(';').unwrap_or_else(|| panic!("{set:?}"));
        assert_eq!(
            attrs.trim(),
            "path=/; HttpOnly; SameSite=Lax; Max-Age=1800",
            "{set}"
        );
        assert!(!pin(&set).is_empty(), "{set}");
        users.push((value.to_owned(), version));
    }
    let on_canary = users.iter().filter(|(_, v)| v == "2.0.0").count();
    assert!((1..20).contains(&on_canary), "{users:?}");
    // Each comes back to the same version, every time, and is not reassigned.
    for _ in 0..10 {
        assert_still_pinned(front, &users, "HAProxy");
    }
    abort(&env, &run);
    // The rollback ended the pins with the weight: everyone is on stable, nobody pinned.
    for (cookie, _) in &users {
        let (got, set) = who(front, &[("cookie", cookie)]);
        assert_eq!((got.as_str(), pin(&set)), ("1.0.0", ""), "{cookie}: {set}");
    }
    // The next release's canary does not honour the earlier canary's cookies, not even a
    // stable user's (the same stable servers): each holder is routed by weight and pinned
    // anew.
    let _run = deploy_to_pause(&env, &spec(&env, "3.0.0", &router, canary));
    let mut seen = std::collections::BTreeSet::new();
    for (cookie, _) in &users {
        let (got, set) = who(front, &[("cookie", cookie)]);
        let fresh = pin(&set);
        assert!(
            !fresh.is_empty() && !cookie.ends_with(&format!("={fresh}")),
            "{cookie} was honoured by the next canary: {set:?}"
        );
        // The fresh pin holds.
        let (again, set2) = who(front, &[("cookie", &format!("slipway-canary={fresh}"))]);
        assert_eq!((&again, set2.as_str()), (&got, ""), "{set}");
        seen.insert(got);
    }
    assert!(seen.contains("1.0.0"), "{seen:?}");
}

/// `GET /` (latency and injected failures apply) with `cookie`: (status, the version
/// that answered, `Set-Cookie` or "").
fn get_root(front: SocketAddr, cookie: Option<&str>) -> (u16, String, String) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let (status, head, _) = get(front.port(), "/", &headers);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    (status, header("x-version"), header("set-cookie"))
}

#[test]
fn haproxy_sends_users_pinned_to_a_canary_it_rolls_back_by_itself_to_stable_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let (h, router) = sticky_haproxy(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let canary = "{ session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { analysis: { template: golden, duration: 8s } }, { set_weight: 100 } ] }";
    let golden = "analysis_templates:
  golden:
    interval: 500ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 8
    metrics:
      - { name: error-rate, max: 0.05 }
    on_failure: rollback
";
    let (code, v, err) = env.deploy(&spec_with(&env, "1.0.0", "", &router, canary, golden));
    assert_eq!(code, 0, "{v}\n{err}");
    let traffic = {
        let _g = env.rt.enter();
        slipway_providers::traffic::Traffic::start(front, "/", 100, 2)
    };
    // Users who keep coming back: each takes the first pin the canary gives it, then
    // asks with it (the canary is slow: a pinned user is nearly always in flight there).
    let stop = Arc::new(AtomicBool::new(false));
    let pinned: Vec<_> = (0..3)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut cookie: Option<String> = None;
                let mut path: Vec<String> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let Some(c) = &cookie else {
                        let (version, set) = who(front, &[]);
                        if version == "2.0.0" && !pin(&set).is_empty() {
                            cookie = Some(format!("slipway-canary={}", pin(&set)));
                        }
                        continue;
                    };
                    let (status, version, _) = get_root(front, Some(c));
                    assert_ne!(status, 0, "no answer");
                    if path.last() != Some(&version) {
                        path.push(version);
                    }
                }
                path
            })
        })
        .collect();
    // HAProxy's own counters of the canary slots the moment the rollback's weight 0 is
    // in force: what they served until then, and what was in flight there.
    let socket = env.path().join("admin.sock");
    let at_zero = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut weighted = false;
            loop {
                assert!(
                    Instant::now() < deadline,
                    "the canary never went 0 after >0"
                );
                let weights = canary_weights(&socket);
                if weights.iter().any(|w| *w > 0) {
                    weighted = true;
                } else if weighted {
                    return canary_served(&socket);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let (code, v, err) = env.deploy(&spec_with(
        &env,
        "2.0.0",
        "--error-rate 0.3 --latency 300ms",
        &router,
        canary,
        golden,
    ));
    stop.store(true, Ordering::SeqCst);
    let (served, in_flight) = at_zero.join().unwrap();
    let (served_after, _) = canary_served(&socket);
    let paths: Vec<Vec<String>> = pinned.into_iter().map(|t| t.join().unwrap()).collect();
    let stats = env.rt.block_on(traffic.stop());
    assert_eq!(code, 4, "rolled back by itself: {v}\n{err}\n{stats:?}");
    // Each pinned user stayed on the canary until the verdict, then was on stable for
    // good.
    for path in &paths {
        assert_eq!(path, &["2.0.0", "1.0.0"], "{paths:?}");
    }
    // From the rollback's weight 0 on HAProxy sent the canary nothing new: it answered
    // only what was in flight then (plus at most one request per client HAProxy had
    // routed but not yet counted), where users kept pinned to it would have been served
    // there all through the drain.
    assert!(
        served_after <= served + in_flight + 5,
        "the canary answered {} requests after its weight went to 0 ({in_flight} were in flight)",
        served_after - served
    );
    // And it drained to no request in flight (a pinned user kept on it holds one there
    // nearly always).
    let journal = env.journal(v["run"].as_str().unwrap());
    let mut drained = Vec::new();
    for line in journal.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        find_key(&entry, "in_flight", &mut drained);
    }
    assert_eq!(drained, [serde_json::json!(0)], "{journal}");
}

/// One runtime API command to HAProxy's admin socket, and its answer.
fn admin(socket: &Path, cmd: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The weights of the canary slots in service (`show servers state app`).
fn canary_weights(socket: &Path) -> Vec<u64> {
    let out = admin(socket, "show servers state app");
    let mut header: Vec<&str> = Vec::new();
    let mut weights = Vec::new();
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            header = h.split_whitespace().collect();
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |n: &str| {
            let i = header.iter().position(|h| *h == n)?;
            f.get(i).copied()
        };
        let in_service = get("srv_admin_state")
            .and_then(|a| a.parse::<u32>().ok())
            .is_some_and(|a| a & 0x01 == 0);
        if get("srv_name").is_some_and(|n| n.starts_with("canary")) && in_service {
            weights.push(get("srv_uweight").and_then(|w| w.parse().ok()).unwrap_or(0));
        }
    }
    weights
}

/// Responses the canary slots have given since HAProxy started, and their current
/// sessions (`show stat`, as the router reads it for the fleet balancer).
fn canary_served(socket: &Path) -> (u64, u64) {
    let router = slipway_providers::haproxy::HaproxyRouter::new(socket, "app", "stable", "canary");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = rt.block_on(router.server_stats()).unwrap();
    stats
        .iter()
        .filter(|(name, _)| name.starts_with("canary"))
        .fold((0, 0), |(served, current), (_, s)| {
            (served + s.requests, current + s.sessions)
        })
}

/// Every value of `key` anywhere in `v`.
fn find_key(v: &serde_json::Value, key: &str, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x.clone());
                }
                find_key(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

/// `slipway` killed mid-canary behind HAProxy with session affinity: HAProxy keeps every
/// user pinned while nobody drives, and the resumed run (a new process, the same plan)
/// sets the same key, so each user stays on its version through the next step; after the
/// promotion nobody is pinned.
#[test]
fn haproxy_keeps_its_users_pinned_across_a_killed_and_resumed_canary() {
    let env = Env::new();
    let (h, router) = sticky_haproxy(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let canary = "{ session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { analysis: { template: golden, duration: 6s } }, { set_weight: 60 }, { analysis: { template: golden, duration: 6s } }, { set_weight: 100 } ] }";
    let golden = "analysis_templates:
  golden:
    interval: 500ms
    min_samples: 5
    inconclusive_limit: 20
    metrics:
      - { name: error-rate, max: 0.05 }
";
    let (code, v, err) = env.deploy(&spec_with(&env, "1.0.0", "", &router, canary, golden));
    assert_eq!(code, 0, "{v}\n{err}");
    let traffic = {
        let _g = env.rt.enter();
        slipway_providers::traffic::Traffic::start(front, "/", 100, 2)
    };
    let mut child = env.spawn_deploy(
        &spec_with(&env, "2.0.0", "", &router, canary, golden),
        "killed",
    );
    let run = env.wait_journal("2.0.0", "\"verified\":50,\"weight\":50");
    let users = pinned_users(front, 20);
    child.kill().unwrap(); // SIGKILL mid-analysis
    child.wait().unwrap();
    let still = |when: &str| assert_still_pinned(front, &users, when);
    still("nobody driving");
    std::thread::scope(|s| {
        let resumed = s.spawn(|| env.run(&["resume", &run]));
        // The resumed run set the weight again (and with it the key): the same pins hold.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !env.journal(&run).contains("\"verified\":60,\"weight\":60") {
            if resumed.is_finished() || Instant::now() > deadline {
                let (code, out, err) = resumed.join().unwrap();
                panic!(
                    "the resumed run never reached 60%: {code}\n{out}\n{err}\n{}",
                    env.journal(&run)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        still("resumed at 60%");
        let (code, out, err) = resumed.join().unwrap();
        assert_eq!(code, 0, "{out}\n{err}");
    });
    let journal = env.journal(&run);
    assert!(
        journal.contains("\"event\":\"canary_resumed\""),
        "{journal}"
    );
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    // Promoted: everyone on 2.0.0 and nobody pinned, whatever they hold.
    for (cookie, _) in &users {
        let (got, set) = who(front, &[("cookie", cookie)]);
        assert_eq!((got.as_str(), pin(&set)), ("2.0.0", ""), "{cookie}: {set}");
    }
    let stats = env.rt.block_on(traffic.stop());
    assert_eq!(stats.server_errors, 0, "{stats:?}");
}

/// HAProxy whose backend has no cookie line, 1.0.0 deployed behind it, and (the router,
/// a canary with session affinity) the next release asks for: a canary it refuses.
fn cookieless(env: &Env) -> (crate::router_cli::Daemon, &'static str, &'static str) {
    let h = haproxy_with(env.path(), "");
    let router = "{ haproxy: { socket: admin.sock, backend: app } }";
    let canary = "{ session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { pause: manual } ] }";
    let (code, v, err) = env.deploy(&spec(env, "1.0.0", router, canary));
    assert_eq!(code, 0, "{v}\n{err}");
    (h, router, canary)
}

/// A backend without the affinity cookie line: the canary is refused before its pool is
/// in service, with the line to add and the field it serves, and stable keeps serving.
#[test]
fn haproxy_without_the_affinity_cookie_refuses_the_canary_naming_the_line_to_add() {
    let env = Env::new();
    let (h, router, canary) = cookieless(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let (code, v, err) = env.deploy(&spec(&env, "2.0.0", router, canary));
    let shown = format!("{v}\n{err}");
    assert_ne!(code, 0, "{shown}");
    for needle in [
        "HAProxy backend `app`",
        "declares no cookie",
        "strategy.canary.session_affinity.cookie",
        "cookie slipway-canary insert indirect nocache httponly attr \\\"SameSite=Lax\\\" attr \\\"Max-Age=1800\\\"",
    ] {
        assert!(shown.contains(needle), "{needle} not in: {shown}");
    }
    for _ in 0..10 {
        assert_eq!(who(front, &[]).0, "1.0.0");
    }
    assert!(canary_weights(&env.path().join("admin.sock")).is_empty());
    // What the refused attempt started is stopped, the stable pool untouched.
    let running = env.instances();
    assert_eq!(
        running.get("2.0.0"),
        None,
        "the refused canary keeps running: {running:?}"
    );
    assert_eq!(running.get("1.0.0"), Some(&2), "{running:?}");
    assert!(
        shown.contains("the canary api 2.0.0 was taken out of the router and stopped (2 instance(s)), 1.0.0 serves as before"),
        "{shown}"
    );
}

/// A release of `api` at `version` whose instances are `held-app` (see [`held_app`])
/// stopped with a grace far longer than any test waits: a driver stopping them is held
/// in that stop until the test lets the instances go.
fn held_spec(env: &Env, version: &str, router: &str, canary: &str) -> PathBuf {
    held(spec(env, version, router, canary))
}

/// The release at `p` rewritten as [`held_spec`] does.
fn held(p: PathBuf) -> PathBuf {
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("command: \"demo-app ", "command: \"held-app ")
        .replace("stop_grace: 2s", "stop_grace: 600s");
    std::fs::write(&p, text).unwrap();
    p
}

/// `bin/held-app`: demo-app behind a shell that holds the first SIGTERM coming before
/// `<dir>/release` exists: it writes `held.PID` and waits for `release`; the instance (the
/// shell, its process group's leader) then lives on without demo-app, which the signal to
/// the group stopped, until it is stopped again. Any other SIGTERM stops it at once.
fn held_app(env: &Env) {
    let dir = env.path().display();
    crate::write_executable(
        &env.path().join("bin/held-app"),
        &format!(
            r#"#!/bin/sh
term() {{
  if [ -e '{dir}/release' ]; then
    kill -TERM "$app" 2>/dev/null
    exit 0
  fi
  : > "{dir}/held.$$"
  while [ ! -e '{dir}/release' ]; do sleep 0.05; done
}}
trap term TERM
demo-app "$@" &
app=$!
wait "$app"
while :; do sleep 1 & wait $!; done
"#
        ),
    );
}

/// The pids of the held instances ([`held_app`]'s `held.PID` files).
fn held_pids(env: &Env) -> Vec<u32> {
    std::fs::read_dir(env.path())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("held.")
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

/// Whether `pid` is a live process (not a zombie).
fn lives(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// The driver is SIGKILLed after the router's refusal is journaled (`rolling_back`) but
/// while it is still stopping the canary (held in the instances' SIGTERM): `slipway
/// resume` finishes that rollback — retires what was left — and fails the step with the
/// journaled reason, without a fresh canary the router would be asked to take again; the
/// run ends rolled back and stable serves alone as before.
#[test]
fn a_driver_killed_while_it_stops_a_refused_canary_is_resumed_to_a_rolled_back_run() {
    let (env, run, code, shown) = killed_while_stopping_a_refused_canary(&["resume"]);
    assert_ne!(code, 0, "{shown}");
    assert!(shown.contains("declares no cookie"), "{shown}");
    let journal = env.journal(&run);
    assert!(
        journal.contains("\"event\":\"canary_retired\""),
        "the resumed driver did not retire what the killed one left: {journal}"
    );
    assert_eq!(
        journal.matches("\"event\":\"canary_started\"").count(),
        1,
        "the resumed driver started a fresh canary after a journaled refusal: {journal}"
    );
    assert!(
        shown.contains("finished after it; no fresh canary"),
        "{shown}"
    );
}

/// [`a_driver_killed_while_it_stops_a_refused_canary_is_resumed_to_a_rolled_back_run`],
/// rolled back by hand instead: the interrupted step is found not done and what it left
/// (the canary) is taken back.
#[test]
fn a_driver_killed_while_it_stops_a_refused_canary_is_rolled_back_by_hand_without_it() {
    let (env, run, code, shown) =
        killed_while_stopping_a_refused_canary(&["rollback", "--reason", "router refused"]);
    assert_eq!(code, 0, "{shown}");
    let journal = env.journal(&run);
    assert!(
        journal.contains("\"event\":\"retracted\""),
        "the canary was not taken back: {shown}\n{journal}"
    );
}

/// A refused canary's driver SIGKILLed while it stops the canary, then `slipway COMMAND
/// RUN ARGS...` (`after` = COMMAND, ARGS...): (the test's world, the run, the command's
/// exit code, what it showed). Checked here: the command ended the run rolled back with
/// the step failed, no canary instance is left, the stable pool serves every request
/// alone, and HAProxy's canary slots are out of service.
fn killed_while_stopping_a_refused_canary(after: &[&str]) -> (Env, String, i32, String) {
    let env = Env::new();
    let (h, router, canary) = cookieless(&env);
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    held_app(&env);
    let child = env.spawn_deploy(&held_spec(&env, "2.0.0", router, canary), "killed");
    let (run, held) = kill_while_held(&env, child, "2.0.0");
    let mut args = after.to_vec();
    args.insert(1, &run);
    let (code, out, err) = env.run(&args);
    let shown = format!("{out}\n{err}");
    let running = env.instances();
    assert_eq!(
        running.get("2.0.0"),
        None,
        "the canary outlived `{after:?}`: {running:?}\n{shown}"
    );
    let left: Vec<u32> = held.into_iter().filter(|p| lives(*p)).collect();
    assert!(
        left.is_empty(),
        "held canary instances left running: {left:?}\n{shown}"
    );
    assert_eq!(running.get("1.0.0"), Some(&2), "{running:?}");
    assert!(canary_weights(&env.path().join("admin.sock")).is_empty());
    for _ in 0..10 {
        assert_eq!(who(front, &[]).0, "1.0.0");
    }
    let (_, status, _) = env.run(&["status", &run, "--output", "json"]);
    let status: serde_json::Value =
        serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(status["run"]["state"], "rolled_back", "{status}\n{shown}");
    assert_eq!(status["steps"][0]["status"], "failed", "{status}");
    (env, run, code, shown)
}

/// SIGKILL `driver` (a background `slipway deploy` of `version`'s [`held`] release) once
/// its rollback is journaled (`rolling_back`) and both canary instances hold it in their
/// stop, then let the instances go: (the run, the held instances' pids, still alive and
/// to be stopped by whoever finishes the rollback). Checked: the rollback was not
/// journaled as finished.
fn kill_while_held(
    env: &Env,
    mut driver: slipway_testkit::Reaped,
    version: &str,
) -> (String, Vec<u32>) {
    // Both canary instances were asked to stop and hold the driver there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_pids(env).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the canary instances were never asked to stop; instance logs:\n{}\ndeploy: {}",
            crate::canary_cli::logs_in(&env.path().join("process/live/instances")),
            std::fs::read_to_string(env.path().join("killed.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = env.wait_journal(version, "\"event\":\"rolling_back\"");
    driver.kill().unwrap(); // SIGKILL in the middle of stopping the canary
    driver.wait().unwrap();
    std::fs::write(env.path().join("release"), "").unwrap();
    let held = held_pids(env);
    assert!(held.iter().all(|p| lives(*p)), "{held:?}");
    let journal = env.journal(&run);
    assert!(
        !journal.contains("\"event\":\"rolled_back\""),
        "killed after the stop: {journal}"
    );
    (run, held)
}

/// Every object with `"event": name` anywhere in the journal's entries (JSON lines),
/// oldest first.
fn events(journal: &str, name: &str) -> Vec<serde_json::Value> {
    fn walk(v: &serde_json::Value, name: &str, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("event").and_then(|e| e.as_str()) == Some(name) {
                    out.push(v.clone());
                }
                m.values().for_each(|x| walk(x, name, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, name, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for line in journal.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        walk(&entry, name, &mut out);
    }
    out
}

/// The analysis template of the canaries below: the error rate of HAProxy's counters,
/// judged every 250ms, the first failure final.
const GOLDEN: &str = "analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 40
    metrics:
      - { name: error-rate, max: 0.05 }
    on_failure: rollback
";

/// Behind HAProxy: 1.0.0 deployed and users sending it requests (HAProxy's counters are
/// what the analysis judges), and a held release ([`held`]) of 2.0.0 whose canary takes
/// 30% and is analysed for `analysis`, its instances running demo-app with `args`:
/// (HAProxy, its admin socket, the users, the release of 2.0.0).
fn behind_haproxy_with_users(
    env: &Env,
    args: &str,
    analysis: &str,
) -> (crate::router_cli::Daemon, PathBuf, Traffic, PathBuf) {
    let h = haproxy_with(env.path(), "");
    let router = "{ haproxy: { socket: admin.sock, backend: app } }";
    let canary = format!(
        "{{ steps: [ {{ set_weight: 30 }}, {{ analysis: {{ template: golden, duration: {analysis} }} }}, {{ set_weight: 100 }} ] }}"
    );
    let (code, v, err) = env.deploy(&spec_with(env, "1.0.0", "", router, &canary, GOLDEN));
    assert_eq!(code, 0, "{v}\n{err}");
    let users = {
        let _g = env.rt.enter();
        Traffic::start(SocketAddr::from(([127, 0, 0, 1], h.port)), "/", 100, 2)
    };
    held_app(env);
    let next = held(spec_with(env, "2.0.0", args, router, &canary, GOLDEN));
    (h, env.path().join("admin.sock"), users, next)
}

/// What `slipway resume` of a run whose driver was killed in a canary's rollback
/// ([`kill_while_held`]) must leave, whatever decided the rollback: (exit code, what it
/// showed, the journal). Checked here: HAProxy sent the rejected 2.0.0 no request from the
/// kill on (its canary slots' response counters did not move, users saw no 5xx) and its
/// canary slots are out of service; no 2.0.0 instance is left and 1.0.0 serves every
/// request; the resumed driver started no canary (one `canary_started`, the killed
/// driver's).
fn resume_killed_rollback(
    env: &Env,
    h: &crate::router_cli::Daemon,
    socket: &Path,
    users: &Traffic,
    run: &str,
    held: Vec<u32>,
) -> (i32, String, String) {
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let (served, _) = canary_served(socket);
    let errors = users.stats().server_errors;
    let (code, out, err) = env.run(&["resume", run]);
    let shown = format!("{out}\n{err}");
    for _ in 0..10 {
        assert_eq!(who(front, &[]).0, "1.0.0", "{shown}");
    }
    let (served_after, _) = canary_served(socket);
    assert_eq!(
        served_after - served,
        0,
        "HAProxy sent the rejected canary requests after the rollback was decided: {shown}\n{}",
        env.journal(run)
    );
    assert_eq!(
        users.stats().server_errors - errors,
        0,
        "users got 5xx after the rollback was decided: {shown}"
    );
    assert!(canary_weights(socket).is_empty(), "{shown}");
    let running = env.instances();
    assert_eq!(running.get("2.0.0"), None, "{running:?}\n{shown}");
    assert_eq!(running.get("1.0.0"), Some(&2), "{running:?}");
    let left: Vec<u32> = held.into_iter().filter(|p| lives(*p)).collect();
    assert!(
        left.is_empty(),
        "held canary instances left running: {left:?}\n{shown}"
    );
    let journal = env.journal(run);
    assert_eq!(
        events(&journal, "canary_started").len(),
        1,
        "the resumed driver started a fresh canary after a journaled rollback: {journal}"
    );
    (code, shown, journal)
}

/// The analysis judges the canary bad and its driver is SIGKILLed after the rollback is
/// journaled (`rolling_back`), while it stops the canary: `slipway resume` finishes that
/// rollback — never a fresh canary of the version judged bad — and the run ends rolled
/// back with the analysis' verdict as its reason.
#[test]
fn a_driver_killed_while_it_rolls_back_a_failed_analysis_is_resumed_to_a_rolled_back_run() {
    let env = Env::new();
    let (h, socket, users, next) = behind_haproxy_with_users(&env, "--error-rate 0.5", "60s");
    let (run, held) = kill_while_held(&env, env.spawn_deploy(&next, "killed"), "2.0.0");
    let journal = env.journal(&run);
    let decided = events(&journal, "rolling_back");
    let reason = decided[0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("analysis `golden` failed") && reason.contains("error-rate"),
        "not rolled back by the analysis: {journal}"
    );
    let (code, shown, journal) = resume_killed_rollback(&env, &h, &socket, &users, &run, held);
    assert_eq!(code, slipway_model::exit::ROLLED_BACK, "{shown}");
    assert!(
        shown.contains("finished after it; no fresh canary"),
        "{shown}"
    );
    // The rollback is journaled finished with the reason the analysis gave.
    let finished = events(&journal, "rolled_back");
    assert_eq!(finished.len(), 1, "{journal}");
    assert_eq!(finished[0]["reason"], reason.as_str(), "{journal}");
    let (_, status, _) = env.run(&["status", &run, "--output", "json"]);
    let status: serde_json::Value =
        serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(status["run"]["state"], "rolled_back", "{status}\n{shown}");
    assert_eq!(status["steps"][0]["status"], "failed", "{status}");
    env.rt.block_on(users.stop());
}

/// An operator aborts a live canary (`slipway abort` while its analysis runs) and the
/// driver is SIGKILLed while it takes the canary out (`rolling_back` journaled, the
/// instances held in their stop): `slipway resume` ends the run aborted as the operator
/// asked, the canary taken back, without a fresh one.
///
/// What decides it is the engine, not da29af9's `rollback_decided` (this test passes with
/// that commit reverted): `Engine::drive` finds the stored abort (`run.control ==
/// Some(Control::Abort)`, the operator's `control_requested`) before any step runs and ends
/// the run through `Engine::abort`, which observes the interrupted deploy step (not done)
/// and retracts it (`DeployTarget::retract` → `take_back` retires the canary) instead of
/// applying it again.
#[test]
fn a_driver_killed_while_it_aborts_a_live_canary_is_resumed_to_an_aborted_run() {
    let env = Env::new();
    let (h, socket, users, next) = behind_haproxy_with_users(&env, "", "10m");
    let driver = env.spawn_deploy(&next, "killed");
    let run = env.wait_journal("2.0.0", "\"verified\":30,\"weight\":30");
    let (held, aborted) = std::thread::scope(|s| {
        // `slipway abort` of a live run waits for its driver to act (or die).
        let aborting = s.spawn(|| env.run(&["abort", &run]));
        let (killed, held) = kill_while_held(&env, driver, "2.0.0");
        assert_eq!(killed, run);
        (held, aborting.join().unwrap())
    });
    let journal = env.journal(&run);
    let decided = events(&journal, "rolling_back");
    assert_eq!(decided.len(), 1, "{journal}\nabort: {aborted:?}");
    let (code, shown, journal) = resume_killed_rollback(&env, &h, &socket, &users, &run, held);
    assert_eq!(
        code,
        slipway_model::exit::ABORTED,
        "{shown}\nabort: {aborted:?}"
    );
    assert!(
        events(&journal, "retracted").len() + events(&journal, "canary_retired").len() == 1,
        "the canary was not taken back once: {journal}"
    );
    let (_, status, _) = env.run(&["status", &run, "--output", "json"]);
    let status: serde_json::Value =
        serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(status["run"]["state"], "aborted", "{status}\n{shown}");
    env.rt.block_on(users.stop());
}

/// HAProxy in master-worker mode, reloaded as `systemctl reload haproxy` does (SIGUSR2 to
/// the master): the new worker starts from the configuration alone.
struct Reloadable {
    master: std::process::Child,
    port: u16,
    socket: PathBuf,
}

impl Reloadable {
    /// [`crate::router_cli::haproxy_with`]'s configuration, with `extra` in `backend app`.
    fn start(dir: &Path, extra: &str) -> Self {
        use slipway_testkit::haproxy;
        // Written into the configuration, and this daemon is not restarted on a clash.
        let port = slipway_testkit::ports::fixed_port();
        haproxy::write_config(dir, port, 2, extra);
        let master = haproxy::spawn(dir, true);
        haproxy::wait_worker(dir, port, None);
        Self {
            master,
            port,
            socket: haproxy::socket(dir),
        }
    }

    /// Reload as `systemctl reload haproxy` does: a new worker from the configuration.
    fn reload(&self) {
        let dir = self
            .socket
            .parent()
            .expect("the socket is in the test's directory");
        slipway_testkit::haproxy::reload(&self.master, dir, self.port);
    }
}

impl Drop for Reloadable {
    fn drop(&mut self) {
        slipway_testkit::terminate(&mut self.master);
    }
}

/// HAProxy reloaded mid-canary forgets everything its runtime API was told (addresses,
/// weights, the dynamic-cookie key): Slipway finds it at its next interval and sets it
/// again, journaled; the canary gets its share again and every user pinned before the
/// reload is still on the same version (the same key gives the same cookies).
#[test]
fn haproxy_reloaded_mid_canary_gets_its_split_and_its_pinned_users_back() {
    let env = Env::new();
    let h = Reloadable::start(
        env.path(),
        "  cookie slipway-canary insert indirect nocache httponly attr \"SameSite=Lax\" attr \"Max-Age=1800\"",
    );
    let router = "{ haproxy: { socket: admin.sock, backend: app } }";
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let canary = "{ session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { pause: manual } ] }";
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", router, canary));
    assert_eq!(code, 0, "{v}\n{err}");
    let run = deploy_to_pause(&env, &spec(&env, "2.0.0", router, canary));
    let split = canary_weights(&h.socket);
    assert_eq!(split.len(), 2, "{split:?}");
    let users = pinned_users(front, 20);
    assert!(users.iter().any(|(_, v)| v == "1.0.0"), "{users:?}");
    h.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.journal(&run).contains("\"event\":\"router_restored\"") {
        assert!(
            Instant::now() < deadline,
            "the reloaded HAProxy was never given the canary back (canary weights now {:?}): {}",
            canary_weights(&h.socket),
            env.journal(&run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(canary_weights(&h.socket), split);
    // Each pinned user is on its version still, and not pinned anew.
    assert_still_pinned(front, &users, "after the reload");
    // New users are split by the weight again.
    let on_canary = (0..20).filter(|_| who(front, &[]).0 == "2.0.0").count();
    assert!(
        (1..20).contains(&on_canary),
        "{on_canary} of 20 on the canary"
    );
    // Once put back, nothing is found lost again at the intervals since.
    let journal = env.journal(&run);
    assert_eq!(
        journal.matches("\"event\":\"router_restored\"").count(),
        1,
        "{journal}"
    );
    abort(&env, &run);
}
