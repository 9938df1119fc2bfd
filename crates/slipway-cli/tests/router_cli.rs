//! Canaries through the real `slipway` binary with an external router: a real HAProxy
//! (runtime API) or a real nginx (upstream file + reload) in front of real demo-app
//! instances, real HTTP traffic through it, and no built-in proxy started.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_providers::traffic::Traffic;

use crate::canary_cli::Env;

/// A daemon this test started in the foreground, stopped by its pid when the test ends.
pub(crate) struct Daemon {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        slipway_testkit::terminate(&mut self.child);
    }
}

/// Start `program args` until `ready` holds (another port on a clash, three tries).
fn start(
    dir: &Path,
    what: &str,
    mut spawn: impl FnMut(u16) -> std::process::Child,
    ready: impl Fn(u16) -> bool,
) -> Daemon {
    for _ in 0..3 {
        let port = slipway_testkit::ports::free_port();
        let mut d = Daemon {
            child: spawn(port),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(d.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if ready(port) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{what} did not start in {}", dir.display());
}

/// HAProxy in the test's directory: admin socket `admin.sock`, backend `app` with two
/// stable and two canary slots.
pub(crate) fn haproxy(dir: &Path) -> Daemon {
    haproxy_with(dir, "")
}

/// HAProxy as [`haproxy`] starts it, with `extra` lines in `backend app`.
pub(crate) fn haproxy_with(dir: &Path, extra: &str) -> Daemon {
    use slipway_testkit::haproxy;
    start(
        dir,
        "haproxy",
        |port| {
            haproxy::write_config(dir, port, 2, extra);
            haproxy::spawn(dir, false)
        },
        |port| haproxy::answers(dir, port),
    )
}

pub(crate) fn nginx_flags(dir: &Path) -> String {
    format!(
        "-p {d} -c {d}/nginx.conf -e {d}/error.log",
        d = dir.display()
    )
}

/// nginx in the test's directory including `upstream.conf` (upstream `app`), which a
/// first `slipway` writes; until then a placeholder.
fn nginx(dir: &Path) -> Daemon {
    nginx_with(dir, "http://app", "access_log off;")
}

/// nginx as [`nginx`] does, proxying to `pass` with `log` as its access log directive.
pub(crate) fn nginx_with(dir: &Path, pass: &str, log: &str) -> Daemon {
    let file = dir.join("upstream.conf");
    slipway_providers::nginx::NginxRouter::new(&file, "app", None, None)
        .write_initial(&slipway_providers::nginx::UpstreamState::default())
        .unwrap();
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(sub)).unwrap();
    }
    start(
        dir,
        "nginx",
        |port| {
            let d = dir.display();
            let conf = format!(
                "worker_processes 1;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    {log}
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/upstream.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {pass};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            std::process::Command::new("nginx")
                .args(nginx_flags(dir).split(' '))
                .args(["-g", "daemon off;"])
                .stderr(std::fs::File::create(dir.join("nginx.err")).unwrap())
                .spawn()
                .expect("nginx is installed (scripts/test.sh installs it)")
        },
        |port| {
            std::os::unix::net::UnixStream::connect(dir.join("upstream.conf.sock")).is_ok()
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    )
}

/// A release of `api` at `version` behind `router` (YAML), judged by `metrics`.
fn spec(env: &Env, version: &str, args: &str, router: &str, steps: &str, metrics: &str) -> PathBuf {
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
      canary:
        steps:
{steps}
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 8
    metrics:
{metrics}
    on_failure: rollback
"
    );
    let p = env.path().join(format!("release-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `GET /version` through `addr` `n` times: versions by count.
pub(crate) fn versions_served(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "{text}");
        *seen.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn one(version: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(version.to_owned(), n)])
}

const STEPS: &str = "          - set_weight: 30
          - analysis: { template: golden, duration: 3s }
          - set_weight: 100";

#[test]
fn haproxy_fronts_a_canary_that_is_promoted_and_a_bad_one_that_is_rolled_back() {
    let env = Env::new();
    let h = haproxy(env.path());
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    // Relative to the spec: the socket beside it.
    let router = "{ haproxy: { socket: admin.sock, backend: app } }";
    let metrics = "      - { name: error-rate, max: 0.05 }";

    // The plan names the router and it is part of what gets approved.
    let first = spec(&env, "1.0.0", "", router, STEPS, metrics);
    let (code, plan, err) = env.run(&[
        "plan",
        "--env",
        "live",
        "--output",
        "json",
        "-f",
        &first.display().to_string(),
    ]);
    assert_eq!(code, 0, "{plan}\n{err}");
    assert!(
        plan.contains("api: traffic through HAProxy backend `app` over admin.sock"),
        "{plan}"
    );

    let (code, v, err) = env.deploy(&first);
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(versions_served(front, 10), one("1.0.0", 10));
    assert!(
        !env.path().join("process/live/proxies/api.json").exists(),
        "no built-in proxy is started for a service behind HAProxy"
    );
    let users = {
        let _g = env.rt.enter();
        Traffic::start(front, "/", 200, 4)
    };

    // A good version: weight moves in HAProxy (read back), analysis judges HAProxy's
    // counters, promotion leaves only it serving.
    let (code, v, err) = env.deploy(&spec(&env, "2.0.0", "", router, STEPS, metrics));
    assert_eq!(code, 0, "{v}\n{err}");
    let journal = env.journal(v["run"].as_str().unwrap());
    assert!(
        journal.contains("\"verified\":30,\"weight\":30"),
        "{journal}"
    );
    assert!(
        journal.contains("\"phase\":\"successful\""),
        "judged on real counters: {journal}"
    );
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    assert_eq!(versions_served(front, 20), one("2.0.0", 20));
    assert_eq!(env.instances(), one("2.0.0", 2));
    // Status reads the weight back from HAProxy (no proxy to ask).
    let (code, out, err) = env.run(&["status", v["run"].as_str().unwrap(), "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let api = &status["traffic"]["api"];
    assert!(
        api["router"]["via"]
            .as_str()
            .unwrap()
            .contains("HAProxy backend `app`"),
        "{api}"
    );
    assert_eq!(api["router"]["weight"], 0, "{api}");
    assert_eq!(api["proxy"], serde_json::Value::Null, "{api}");
    let (code, out, err) = env.run(&["status", v["run"].as_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("api: HAProxy backend `app`") && out.contains("canary weight 0%"),
        "{out}"
    );

    // A bad version (half its answers are 500): HAProxy's 5xx counters roll it back.
    let (code, v, err) = env.deploy(&spec(
        &env,
        "3.0.0",
        "--error-rate 0.5",
        router,
        STEPS,
        metrics,
    ));
    assert_eq!(code, slipway_model::exit::ROLLED_BACK, "{v}\n{err}");
    let journal = env.journal(v["run"].as_str().unwrap());
    assert!(journal.contains("error-rate"), "{journal}");
    assert!(journal.contains("\"event\":\"rolled_back\""), "{journal}");
    assert!(journal.contains("\"verified\":0,\"weight\":0"), "{journal}");
    assert_eq!(versions_served(front, 20), one("2.0.0", 20));
    assert_eq!(env.instances(), one("2.0.0", 2));
    let seen = env.rt.block_on(users.stop());
    assert_eq!(seen.failed, 0, "no user request was dropped: {seen:?}");
    assert!(seen.ok > 100, "{seen:?}");
}

/// Users sending `GET /` through `front` from a thread, tallying (requests, 5xx) by the
/// `x-version` that answered; and a JSON endpoint serving those tallies as
/// `/stats/VERSION` → `{"requests": n, "error_ratio": r}`: a team's own metrics, measured
/// from real traffic through the router, for an HTTP metric provider.
struct Observed {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    go: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tally: std::sync::Arc<std::sync::Mutex<BTreeMap<String, (u64, u64)>>>,
    stats: SocketAddr,
}

impl Observed {
    fn start(front: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tally =
            std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, (u64, u64)>::new()));
        let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, t, g) = (stop.clone(), tally.clone(), go.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if !g.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let Ok(mut c) = TcpStream::connect(front) else {
                    continue;
                };
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut text = String::new();
                let _ = c.read_to_string(&mut text);
                let version = text
                    .lines()
                    .find_map(|l| l.strip_prefix("x-version: "))
                    .unwrap_or("none")
                    .trim()
                    .to_owned();
                let error = text.starts_with("HTTP/1.1 5");
                let mut t = t.lock().unwrap();
                let e = t.entry(version).or_insert((0, 0));
                e.0 += 1;
                e.1 += u64::from(error);
                drop(t);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stats = l.local_addr().unwrap();
        let t = tally.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let version = req
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/stats/"))
                    .unwrap_or("")
                    .to_owned();
                let (requests, errors) = t.lock().unwrap().get(&version).copied().unwrap_or((0, 0));
                #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
                let body = if requests == 0 {
                    serde_json::json!({"requests": 0, "error_ratio": null})
                } else {
                    serde_json::json!({"requests": requests, "error_ratio": errors as f64 / requests as f64})
                }
                .to_string();
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Self {
            stop,
            go,
            tally,
            stats,
        }
    }

    /// Users start sending (once something serves behind the router).
    fn users(&self) {
        self.go.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn tally(&self) -> BTreeMap<String, (u64, u64)> {
        self.tally.lock().unwrap().clone()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn nginx_fronts_a_canary_that_is_promoted_and_a_bad_one_that_is_rolled_back() {
    let env = Env::new();
    let n = nginx(env.path());
    let front = SocketAddr::from(([127, 0, 0, 1], n.port));
    let router = format!(
        "{{ nginx: {{ upstream_file: upstream.conf, upstream: app, test: \"nginx -t -q {f}\", reload: \"nginx -s reload {f}\" }} }}",
        f = nginx_flags(env.path())
    );
    // nginx counts nothing per server: builtin metrics are refused before any run exists.
    let builtin = spec(
        &env,
        "1.0.0",
        "",
        &router,
        STEPS,
        "      - { name: error-rate, max: 0.05 }",
    );
    let (code, out, err) = env.run(&[
        "deploy",
        "--env",
        "live",
        "-f",
        &builtin.display().to_string(),
    ]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("router-metrics") && err.contains("behind nginx"),
        "{err}"
    );

    // The team's own metrics endpoint, fed by real traffic through nginx.
    let users = Observed::start(front);
    let metrics = "      - { name: canary-errors, provider: stats, max: 0.1, query: /error_ratio }";
    let with_stats = |version: &str, args: &str| {
        let p = spec(&env, version, args, &router, STEPS, metrics);
        let text = std::fs::read_to_string(&p).unwrap()
            + &format!(
                "providers:\n  stats: {{ http: {{ url: \"http://{}/stats/{{{{ version }}}}\", timeout: 2s }} }}\n",
                users.stats
            );
        std::fs::write(&p, text).unwrap();
        p
    };
    let (code, v, err) = env.deploy(&with_stats("1.0.0", ""));
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(versions_served(front, 10), one("1.0.0", 10));
    assert!(
        !env.path().join("process/live/proxies/api.json").exists(),
        "no built-in proxy is started for a service behind nginx"
    );
    users.users();

    let (code, v, err) = env.deploy(&with_stats("2.0.0", ""));
    assert_eq!(code, 0, "{v}\n{err}");
    let journal = env.journal(v["run"].as_str().unwrap());
    assert!(
        journal.contains("\"verified\":30,\"weight\":30"),
        "read back from nginx: {journal}"
    );
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    assert_eq!(versions_served(front, 20), one("2.0.0", 20));
    assert_eq!(env.instances(), one("2.0.0", 2));
    let served_2 = users.tally().get("2.0.0").copied().unwrap_or_default();

    let (code, v, err) = env.deploy(&with_stats("3.0.0", "--error-rate 0.5"));
    assert_eq!(code, slipway_model::exit::ROLLED_BACK, "{v}\n{err}");
    let journal = env.journal(v["run"].as_str().unwrap());
    assert!(journal.contains("canary-errors"), "{journal}");
    assert!(journal.contains("\"event\":\"rolled_back\""), "{journal}");
    assert!(journal.contains("\"verified\":0,\"weight\":0"), "{journal}");
    assert_eq!(versions_served(front, 20), one("2.0.0", 20));
    assert_eq!(env.instances(), one("2.0.0", 2));
    let tally = users.tally();
    let (bad, bad_errors) = tally.get("3.0.0").copied().unwrap_or_default();
    assert!(
        bad > 0 && bad_errors > 0,
        "the bad canary really served users through nginx: {tally:?}"
    );
    assert!(
        tally.get("2.0.0").copied().unwrap_or_default().0 > served_2.0,
        "{tally:?}"
    );
    assert_eq!(
        tally.get("none"),
        None,
        "every request was answered by a version: {tally:?}"
    );
}

/// `slipway` killed mid-canary behind HAProxy: nothing of the canary was kept by the
/// router, so the resumed run reads the slots and weight back from HAProxy, continues
/// the canary at its recorded step and weight (30 %) and promotes it, with no user request
/// failing.
#[test]
fn haproxy_canary_resumes_after_slipway_is_killed() {
    let env = Env::new();
    let h = haproxy(env.path());
    let front = SocketAddr::from(([127, 0, 0, 1], h.port));
    let router = "{ haproxy: { socket: admin.sock, backend: app } }";
    let metrics = "      - { name: error-rate, max: 0.05 }";
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", "", router, STEPS, metrics));
    assert_eq!(code, 0, "{v}\n{err}");
    let users = {
        let _g = env.rt.enter();
        Traffic::start(front, "/", 200, 4)
    };
    let long = STEPS.replace("duration: 3s", "duration: 6s");
    let mut child = env.spawn_deploy(&spec(&env, "2.0.0", "", router, &long, metrics), "killed");
    let run = env.wait_journal("2.0.0", "\"verified\":30,\"weight\":30");
    child.kill().unwrap(); // SIGKILL mid-analysis
    child.wait().unwrap();
    // HAProxy alone knows the split now; the canary really takes a share of traffic.
    let seen = versions_served(front, 100);
    assert!(seen.get("2.0.0").copied().unwrap_or(0) > 5, "{seen:?}");

    let (code, out, err) = env.run(&["resume", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    let journal = env.journal(&run);
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"event\":\"canary_resumed\"") && l.contains("\"weight\":30")),
        "the canary continues at 30 %: {journal}"
    );
    assert!(!journal.contains("canary_retired"), "{journal}");
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    assert_eq!(versions_served(front, 20), one("2.0.0", 20));
    assert_eq!(env.instances(), one("2.0.0", 2));
    let stats = env.rt.block_on(users.stop());
    assert!(stats.sent > 200, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.server_errors, 0, "{stats:?}");
}

/// `slipway` killed mid-canary behind nginx: the resumed run reads the pools and weight
/// back from the upstream file and nginx, continues the canary at its
/// recorded step and weight (30 %) and promotes it; every user request through nginx is answered.
#[test]
fn nginx_canary_resumes_after_slipway_is_killed() {
    let env = Env::new();
    let n = nginx(env.path());
    let front = SocketAddr::from(([127, 0, 0, 1], n.port));
    let router = format!(
        "{{ nginx: {{ upstream_file: upstream.conf, upstream: app, test: \"nginx -t -q {f}\", reload: \"nginx -s reload {f}\" }} }}",
        f = nginx_flags(env.path())
    );
    let users = Observed::start(front);
    let metrics = "      - { name: canary-errors, provider: stats, max: 0.1, query: /error_ratio }";
    let long = STEPS.replace("duration: 3s", "duration: 6s");
    let spec_at = |version: &str| {
        let p = spec(&env, version, "", &router, &long, metrics);
        let text = std::fs::read_to_string(&p).unwrap()
            + &format!(
                "providers:\n  stats: {{ http: {{ url: \"http://{}/stats/{{{{ version }}}}\", timeout: 2s }} }}\n",
                users.stats
            );
        std::fs::write(&p, text).unwrap();
        p
    };
    let (code, v, err) = env.deploy(&spec_at("1.0.0"));
    assert_eq!(code, 0, "{v}\n{err}");
    users.users();
    let mut child = env.spawn_deploy(&spec_at("2.0.0"), "killed");
    let run = env.wait_journal("2.0.0", "\"verified\":30,\"weight\":30");
    child.kill().unwrap(); // SIGKILL mid-analysis
    child.wait().unwrap();
    let seen = versions_served(front, 100);
    assert!(
        seen.get("2.0.0").copied().unwrap_or(0) > 5,
        "nginx still splits: {seen:?}"
    );

    let (code, out, err) = env.run(&["resume", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    let journal = env.journal(&run);
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"event\":\"canary_resumed\"") && l.contains("\"weight\":30")),
        "the canary continues at 30 %: {journal}"
    );
    assert!(!journal.contains("canary_retired"), "{journal}");
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    assert_eq!(versions_served(front, 20), one("2.0.0", 20));
    assert_eq!(env.instances(), one("2.0.0", 2));
    let tally = users.tally();
    assert_eq!(
        tally.get("none"),
        None,
        "every request was answered: {tally:?}"
    );
    assert!(tally.values().all(|(_, errors)| *errors == 0), "{tally:?}");
}
