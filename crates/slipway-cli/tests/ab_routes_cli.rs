//! A/B match routes and session affinity of `strategy.canary` through the real `slipway`
//! binary: a real proxy process in front of real demo-app instances, real HTTP. Testers
//! matched to the canary reach it whatever the weight and are kept out of its verdict;
//! users stuck to a version stay there while the canary lasts; once it ends neither
//! the header nor the cookie matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::front_door_cli::{Env, get};

const ROUTER: &str = "{ builtin: {} }";

fn run_id(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["run"].as_str().unwrap().to_owned()
}

/// `slipway deploy --output json`: (exit code, run id, stdout + stderr).
fn deploy(env: &Env, spec: &std::path::Path) -> (i32, String, String) {
    let (code, out, err) = env.run(&[
        "deploy",
        "--env",
        "live",
        "--output",
        "json",
        "-f",
        &spec.display().to_string(),
    ]);
    (code, run_id(&out), format!("{out}\n{err}"))
}

/// `slipway deploy --detach` of a canary that pauses for a human, and its run once the
/// canary waits there (journal polled with a deadline).
fn deploy_to_pause(env: &Env, spec: &std::path::Path) -> String {
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
    let run = run_id(&out);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, journal, _) = env.run(&["logs", &run, "--output", "json"]);
        if journal.contains("pause until resumed") {
            return run;
        }
        assert!(Instant::now() < deadline, "never paused: {journal}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `slipway abort` of a paused run, waiting for it to end.
fn abort(env: &Env, run: &str) {
    let (code, out, err) = env.run(&["abort", run]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = env.run(&["wait", run, "--timeout", "30"]);
    assert_eq!(code, 6, "aborted: {out}\n{err}");
}

/// Who answered: the proxy's `x-slipway-version` and the body of `/version`.
fn who(port: u16, headers: &[(&str, &str)]) -> (String, String, String) {
    let (status, head, body) = get(port, "/version", headers);
    assert_eq!(status, 200, "{head}");
    let proxy_says = head
        .lines()
        .find_map(|l| l.strip_prefix("x-slipway-version: "))
        .unwrap_or_default()
        .to_owned();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_default()
        .to_owned();
    (proxy_says, body.trim().to_owned(), cookie)
}

#[test]
fn a_header_or_cookie_sends_testers_to_a_paused_canary_until_it_is_aborted() {
    let env = Env::new();
    let strategy = "{ canary: { match: [ { headers: { x-canary: { exact: always } } }, { cookie: { name: canary, value: always } } ], steps: [ { pause: manual } ] } }";
    let (code, _, out) = deploy(&env, &env.spec("1.0.0", ROUTER, strategy));
    assert_eq!(code, 0, "{out}");
    let port = env.proxy_state().traffic.port();
    // The canary waits at weight 0: only matched requests reach it.
    let run = deploy_to_pause(&env, &env.spec("2.0.0", ROUTER, strategy));
    for _ in 0..10 {
        assert_eq!(who(port, &[("x-canary", "always")]).1, "2.0.0");
        assert_eq!(who(port, &[("cookie", "a=b; canary=always")]).1, "2.0.0");
        assert_eq!(who(port, &[]).1, "1.0.0");
        assert_eq!(who(port, &[("x-canary", "Always")]).1, "1.0.0");
    }
    abort(&env, &run);
    // No canary: the route means nothing any more.
    for _ in 0..5 {
        assert_eq!(who(port, &[("x-canary", "always")]).1, "1.0.0");
    }
}

#[test]
fn affinity_keeps_users_on_their_version_while_the_canary_lasts_and_not_after() {
    let env = Env::new();
    let strategy = "{ canary: { session_affinity: { cookie: slipway-canary, max_age: 30m }, steps: [ { set_weight: 50 }, { pause: manual } ] } }";
    let (code, _, out) = deploy(&env, &env.spec("1.0.0", ROUTER, strategy));
    assert_eq!(code, 0, "{out}");
    let port = env.proxy_state().traffic.port();
    let run = deploy_to_pause(&env, &env.spec("2.0.0", ROUTER, strategy));
    // New users are split by weight and told where they were put.
    let mut users = Vec::new();
    for _ in 0..10 {
        let (proxy_says, version, cookie) = who(port, &[]);
        // `slipway-canary=TOKEN-canary`: the token names this canary (its plan).
        let (value, attributes) = cookie.split_once("; ").unwrap_or((&cookie, ""));
        assert_eq!(attributes, "Max-Age=1800; Path=/; HttpOnly; SameSite=Lax");
        let token = value
            .strip_prefix("slipway-canary=")
            .and_then(|v| v.strip_suffix(&format!("-{proxy_says}")))
            .unwrap_or_else(|| panic!("{cookie}"));
        assert!(!token.is_empty(), "{cookie}");
        users.push((value.to_owned(), version));
    }
    assert_eq!(users.iter().filter(|(_, v)| v == "2.0.0").count(), 5);
    // Each comes back to the same version, every time, and is not reassigned.
    for _ in 0..5 {
        for (cookie, version) in &users {
            let (_, got, set) = who(port, &[("cookie", cookie)]);
            assert_eq!((&got, set.as_str()), (version, ""), "{cookie}");
        }
    }
    abort(&env, &run);
    for (cookie, _) in &users {
        let (_, got, set) = who(port, &[("cookie", cookie)]);
        assert_eq!((got.as_str(), set.as_str()), ("1.0.0", ""), "{cookie}");
    }
    // The next release's canary does not honour the rejected one's cookies: every one of
    // those users is routed by weight again and told anew (a `TOKEN-canary` cookie of
    // 2.0.0 would otherwise pin them to 3.0.0 without the weight choosing it).
    let _run = deploy_to_pause(&env, &env.spec("3.0.0", ROUTER, strategy));
    for (cookie, _) in &users {
        let (proxy_says, got, set) = who(port, &[("cookie", cookie)]);
        assert!(
            set.starts_with("slipway-canary=") && !set.starts_with(&format!("{cookie};")),
            "{cookie} was honoured by the next canary: {set:?}"
        );
        let want = if proxy_says == "canary" {
            "3.0.0"
        } else {
            "1.0.0"
        };
        assert_eq!(got, want, "{cookie} → {set}");
    }
}

#[test]
fn testers_hammering_a_failing_canary_cannot_dilute_its_verdict() {
    let env = Env::new();
    let strategy = "{ canary: { match: [ { headers: { x-canary: { exact: always } } } ], steps: [ { set_weight: 20 }, { analysis: { template: golden, duration: 4s } }, { set_weight: 100 } ] } }";
    let (code, _, out) = deploy(&env, &env.spec("1.0.0", ROUTER, strategy));
    assert_eq!(code, 0, "{out}");
    let traffic_addr = env.proxy_state().traffic;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let users = {
        let _g = rt.enter();
        slipway_providers::traffic::Traffic::start(traffic_addr, "/", 100, 2)
    };
    // A tester asks the canary for `/version` (which never fails) as fast as it answers:
    // counted with the canary's own traffic, these would hide its errors.
    let stop = Arc::new(AtomicBool::new(false));
    let tester = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut seen = Vec::new();
            let mut when = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (_, version, _) = who(traffic_addr.port(), &[("x-canary", "always")]);
                if seen.last() != Some(&version) {
                    seen.push(version);
                    when.push(start.elapsed().as_millis());
                }
            }
            (seen, when)
        })
    };
    let (code, run, out) = deploy(
        &env,
        &env.spec_with("2.0.0", "--error-rate 0.3", ROUTER, strategy),
    );
    stop.store(true, Ordering::SeqCst);
    let (seen, when) = tester.join().unwrap();
    let stats = rt.block_on(users.stop());
    assert_eq!(code, 4, "rolled back by itself: {out}\n{stats:?}");
    // The tester reached the canary through its header and, once the canary was judged
    // bad, never again: not between the guard tripping and the rollback either.
    let (_, journal, _) = env.run(&["logs", &run]);
    assert_eq!(seen, ["1.0.0", "2.0.0", "1.0.0"], "{when:?}\n{journal}");
    // The journal keeps the matched requests apart from the judged ones.
    let (_, journal, _) = env.run(&["logs", &run, "--output", "json"]);
    assert!(journal.contains("\"matched_requests\""), "{journal}");
    let (_, shown, _) = env.run(&["logs", &run]);
    assert!(
        shown.contains("matched to the canary, not judged"),
        "{shown}"
    );
}
