//! A/B match routes and session affinity of `strategy.canary` behind a real nginx
//! (generated `map`s choosing the upstream, reloaded like a weight change) through the
//! real `slipway` binary, real demo-app instances and real HTTP: testers matched to the
//! canary reach it whatever the weight, users stuck to a version stay there while the
//! canary lasts, a cookie from an earlier canary is ignored, and a rollback ends both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::canary_cli::Env;
use crate::front_door_cli::get;
use crate::router_cli::{nginx_flags, nginx_with};

/// A release of `api` at `version` behind `router` with `strategy.canary` = `canary`.
fn spec(env: &Env, version: &str, router: &str, canary: &str) -> PathBuf {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}}\", replicas: 2 }}
    readiness: {{ http: /ready, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    router: {router}
    strategy:
      canary: {canary}
"
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
        for (cookie, version) in &users {
            let (got, set) = who(front, &[("cookie", cookie)]);
            assert_eq!((&got, set.as_str()), (version, ""), "{cookie}");
        }
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
