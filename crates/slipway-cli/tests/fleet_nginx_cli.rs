//! Fleet canaries behind a real nginx (issue 19 part 3): real sshd "hosts" with
//! supervised demo-app instances, a real nginx in front (the upstream file Slipway owns,
//! `nginx -t`, reload), the analysis on nginx's access log per host, and real traffic
//! through nginx all along. nginx is configured with `proxy_next_upstream off`: a request
//! sent to a host whose instance is being replaced fails with a 502 as a user's would,
//! so only draining keeps requests away from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::ssh_service_cli::{
    FLEET_CANARY, World, events_named, free_ports, progress, root_at, root_traffic, version_at,
};

/// nginx in front of the fleet, stopped (SIGTERM to its master, by pid) when dropped.
pub(crate) struct Nginx {
    child: std::process::Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// `nginx -s reload`, as `systemctl reload nginx` does; returns once the master's
    /// workers are all new (the old ones finished and exited): every request from then on
    /// is routed by what the reload read.
    pub(crate) fn reload(&self) {
        let master = self.child.id();
        let old = workers(master);
        assert!(!old.is_empty(), "nginx {master} has no worker");
        let status = std::process::Command::new("nginx")
            .args(flags(&self.dir).split(' '))
            .args(["-s", "reload"])
            .status()
            .unwrap();
        assert!(status.success(), "nginx -s reload: {status}");
        slipway_testkit::eventually(
            Duration::from_secs(60),
            "nginx's workers replaced by the reload",
            || {
                let now = workers(master);
                (!now.is_empty() && now.is_disjoint(&old)).then_some(())
            },
        );
    }

    /// The access log's lines so far.
    pub(crate) fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The processes whose parent is `master` (nginx's workers: the test's nginx has no
/// cache manager or loader).
fn workers(master: u32) -> std::collections::BTreeSet<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command's closing parenthesis: state, ppid.
            let ppid: u32 = stat
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == master).then_some(pid)
        })
        .collect()
}

/// The nginx flags every command of the test uses (prefix, config, error log here).
fn flags(dir: &Path) -> String {
    format!(
        "-p {d} -c {d}/nginx.conf -e {d}/error.log",
        d = dir.display()
    )
}

/// The environment's router for the test's nginx.
pub(crate) fn router(dir: &Path) -> String {
    let f = flags(dir);
    format!(
        "    router: {{ nginx: {{ upstream_file: upstream.conf, upstream: web, access_log: access.log, test: \"nginx {f} -t -q\", reload: \"nginx {f} -s reload\" }} }}\n"
    )
}

/// Start nginx in front of the world's hosts: `upstream web` in `upstream.conf` as a user
/// writes it by hand before Slipway's first change (one server per host), the access log
/// in the documented format.
pub(crate) fn nginx(w: &World) -> Nginx {
    let dir = &w.dir;
    let servers: String = w
        .ports
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p};\n"))
        .collect();
    std::fs::write(
        dir.join("upstream.conf"),
        format!("upstream web {{\n{servers}}}\n"),
    )
    .unwrap();
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(sub)).unwrap();
    }
    for _ in 0..3 {
        let port = free_ports(1);
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format slipway '$upstream_addr $status';
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/upstream.conf;
    server {{
        listen 127.0.0.1:{port};
        access_log {d}/access.log slipway;
        location / {{
            proxy_pass http://web;
            # No retry on another host: a request reaching a host being replaced fails.
            proxy_next_upstream off;
        }}
    }}
}}
"
            ),
        )
        .unwrap();
        let mut n = Nginx {
            child: std::process::Command::new("nginx")
                .args(flags(dir).split(' '))
                .args(["-g", "daemon off;"])
                .stderr(std::fs::File::create(dir.join("nginx.err")).unwrap())
                .spawn()
                .expect("nginx is installed (scripts/test.sh installs it)"),
            port,
            dir: dir.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(n.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("nginx did not start in {}", dir.display());
}

/// Each host's weight and state as Slipway's upstream file records them
/// (`# slipway-host NAME WEIGHT in|drained`).
pub(crate) fn weights(w: &World) -> BTreeMap<String, String> {
    std::fs::read_to_string(w.dir.join("upstream.conf"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("# slipway-host ")?.split_whitespace();
            Some((f.next()?.to_owned(), f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// A world of three hosts in waves of one behind nginx, with the fleet canary strategy,
/// deployed once with 1.0.0.
pub(crate) fn deployed(tail: &str) -> (World, Nginx) {
    let mut w = World::new(3);
    w.replicas = 1;
    w.env_extra = router(&w.dir);
    w.tail = tail.into();
    let n = nginx(&w);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "first deploy: {o:?}");
    w.wait_all("1.0.0");
    (w, n)
}

/// Behind nginx, a good version goes to host1 first at a third of the traffic, judged
/// on host1's own responses (counted from nginx's access log) against the others', then
/// to host2 and host3, with no request failing and every weight back as it was; a bad
/// version (every `/` a 500) is rolled back by itself on host1 — the only host that
/// changed — which runs the good version again, every weight back, and no request ever
/// met a host while it was drained and replaced (the only failures are the bad version's
/// own 500s: never a 502 of a host without a listening instance).
#[test]
fn behind_nginx_a_fleet_canary_promotes_and_rolls_a_bad_version_back_by_itself() {
    let (w, n) = deployed(FLEET_CANARY);
    let before = weights(&w);
    assert_eq!(
        before.values().collect::<Vec<_>>(),
        vec!["1 in", "1 in", "1 in"],
        "{before:?}"
    );

    // The good version, with traffic all along.
    let stop = Arc::new(AtomicBool::new(false));
    let load = root_traffic(n.port, stop.clone());
    let o = w.deploy(&w.spec("2.0.0", &w.demo()));
    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "good version: {o:?}");
    w.wait_all("2.0.0");
    assert!(failed.is_empty(), "requests failed: {failed:?} ({seen:?})");
    assert!(
        seen.contains_key("2.0.0") && seen.contains_key("1.0.0"),
        "{seen:?}"
    );
    assert_eq!(weights(&w), before, "every weight back");
    let p = progress(&w);
    assert_eq!(events_named(&p, "fleet_canary").len(), 1, "{p:#?}");
    assert!(
        events_named(&p, "weight_set")
            .iter()
            .any(|e| e["weight"] == 34 && e["verified"] == 34),
        "{p:#?}"
    );
    // Judged on host1's own traffic from the access log, against the other hosts'.
    let measured = events_named(&p, "measured");
    assert!(
        measured
            .iter()
            .any(|m| m["window"]["canary_requests"].as_u64().unwrap_or(0) > 0
                && m["window"]["stable_requests"].as_u64().unwrap_or(0) > 0),
        "{measured:#?}"
    );
    let waves: Vec<u64> = events_named(&p, "fleet_wave_passed")
        .iter()
        .map(|e| e["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, vec![1, 2, 3], "{p:#?}");

    // The bad version: every `/` answers 500.
    let bad = format!("{} --error-rate 1", w.demo());
    let logged_before = n.log().len();
    let stop = Arc::new(AtomicBool::new(false));
    let load = root_traffic(n.port, stop.clone());
    let o = w.deploy(&w.spec("3.0.0", &bad));
    assert_eq!(o.status.code(), Some(4), "bad version rolled back: {o:?}");
    w.wait_all("2.0.0");
    // Afterwards every request through nginx is answered by the good version.
    assert!((0..30).all(|_| root_at(n.port).as_deref() == Ok("2.0.0")));
    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert!(
        !failed.is_empty(),
        "the bad version served some 500s: {seen:?}"
    );
    assert!(
        failed.iter().all(|f| f.contains(" 500 ")),
        "only the bad version's own 500s, no request met a drained host: {failed:?}"
    );
    let log = n.log();
    assert!(
        log[logged_before..]
            .iter()
            .all(|l| !l.ends_with(" 502") && !l.ends_with(" 504")),
        "{:?}",
        &log[logged_before..]
    );
    assert!(!seen.contains_key("3.0.0"), "{seen:?}");
    assert_eq!(weights(&w), before, "every weight back");
    let s = w.status();
    assert_eq!(s["run"]["state"], "rolled_back", "{s:#}");
    assert!(serde_json::to_string(&s).unwrap().contains("error-rate"));
    // Exactly the host that changed was rolled back; the others never got 3.0.0.
    for i in [1, 2] {
        assert!(!w.base(i).join("versions/3.0.0").exists(), "host {i}");
    }
    let undos: Vec<&str> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["step"] == "web/deploy" && h["phase"] == "undo")
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(undos, vec!["host1"], "{s:#}");
    // Its rollback drained it through nginx first.
    let undo = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["step"] == "web/deploy" && h["phase"] == "undo")
        .unwrap();
    let err = undo["stderr"].as_str().unwrap_or("");
    assert!(
        err.contains("rollback: drained web/host1") && err.contains("web/host1 back in service"),
        "{err}"
    );
    drop(n);
}

/// kill -9 of `slipway` while a fleet canary behind nginx is at its first step: the hosts
/// keep serving through nginx at the canary's weights while nobody drives, and `slipway
/// resume` continues from the journal — the canary host's deploy not repeated, the
/// canary continued at its journaled step and weight, then the later waves — ending with
/// every host on the new version and every weight as before.
#[test]
fn behind_nginx_a_fleet_canary_survives_slipway_killed_mid_canary() {
    let (w, n) = deployed(FLEET_CANARY);
    let before = weights(&w);

    let mut child = w.spawn_deploy2();
    w.wait_progress(
        &mut child,
        Duration::from_secs(90),
        "reached its first step",
        |p| {
            events_named(p, "weight_set")
                .iter()
                .any(|e| e["weight"] == 34)
        },
    );
    // SIGKILL.
    child.kill().unwrap();
    child.wait().unwrap();

    // Nobody drives: nginx keeps the canary's weights and every request is answered.
    let during = weights(&w);
    assert_ne!(during, before, "the canary's weights stay in force");
    assert_eq!(version_at(w.ports[0]).as_deref(), Some("2.0.0"));
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let v = root_at(n.port).unwrap_or_else(|e| panic!("a request failed: {e}"));
        *seen.entry(v).or_insert(0) += 1;
    }
    assert!(
        seen.contains_key("2.0.0") && seen.contains_key("1.0.0"),
        "{seen:?}"
    );

    let run = w.status()["run"]["id"].as_str().unwrap().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let load = root_traffic(n.port, stop.clone());
    let o = w.run(&["resume", &run]);
    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "resume: {o:?}");
    assert!(failed.is_empty(), "requests failed: {failed:?} ({seen:?})");
    w.wait_all("2.0.0");
    assert_eq!(weights(&w), before, "every weight back after the canary");
    let s = w.status();
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let p = progress(&w);
    assert_eq!(events_named(&p, "fleet_canary").len(), 1, "{p:#?}");
    let resumed = events_named(&p, "canary_resumed");
    assert!(resumed.first().is_some_and(|r| r["weight"] == 34), "{p:#?}");
    let waves: Vec<u64> = events_named(&p, "fleet_wave_passed")
        .iter()
        .map(|e| e["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, vec![1, 2, 3], "{p:#?}");
    let host1: Vec<&str> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["step"] == "web/deploy" && h["phase"] == "apply" && h["host"] == "host1")
        .map(|h| h["result"].as_str().unwrap())
        .collect();
    assert!(host1.contains(&"already_done"), "{s:#}");
    drop(n);
}

/// The fleet canary of the operator tests: host1 at a third of the traffic, then a
/// manual pause, then half the traffic judged for ten minutes (an operator decides well
/// before).
const OPERATED: &str = "strategy:
  canary:
    steps:
      - set_weight: 34
      - pause: manual
      - set_weight: 50
      - analysis: { template: errors, duration: 10m }
analysis_templates:
  errors:
    interval: 500ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 2000
    metrics:
      - { name: error-rate, provider: builtin, max: 0.05 }
    on_failure: rollback
";

/// The same without the manual pause: a third of the traffic judged for ten minutes.
const LONG: &str = "strategy:
  canary:
    steps:
      - set_weight: 34
      - analysis: { template: errors, duration: 10m }
analysis_templates:
  errors:
    interval: 500ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 2000
    metrics:
      - { name: error-rate, provider: builtin, max: 0.05 }
    on_failure: rollback
";

/// `slipway deploy` of `version` in the background, its output in files named after it;
/// killed when dropped, so a failed assertion leaves no deploy driving.
fn spawn_deploy(w: &World, version: &str) -> slipway_testkit::Reaped {
    let spec = w.spec(version, &w.demo());
    w.cmd()
        .args(["deploy", "--env", "fleet", "-f"])
        .arg(&spec)
        .stdout(std::fs::File::create(w.dir.join(format!("deploy-{version}.out"))).unwrap())
        .stderr(std::fs::File::create(w.dir.join(format!("deploy-{version}.err"))).unwrap())
        .spawn()
        .unwrap()
        .into()
}

/// Wait (generously: the machine may be loaded) until the latest run's journal holds an
/// event `pred` accepts, while `child` still drives it.
fn wait_event(
    w: &World,
    child: &mut std::process::Child,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if progress(w).iter().any(&pred) {
            return;
        }
        let exited = child.try_wait().unwrap();
        assert!(
            Instant::now() < deadline && exited.is_none(),
            "never saw {what} (deploy exited: {exited:?}): {:#?}",
            progress(w)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait for a background deploy's exit code.
fn exit_of(child: &mut std::process::Child, w: &World) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(
            Instant::now() < deadline,
            "the deploy did not exit: {:#?}",
            progress(w)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_id(w: &World) -> String {
    w.status()["run"]["id"].as_str().unwrap().to_owned()
}

/// `slipway pause`, `resume` and `promote RUN` act on a fleet canary as on the process
/// target, with traffic through nginx all along and no request failing: the canary
/// waits at its manual pause until `resume` reaches the live driver, goes to 50 % and
/// its analysis; `pause` stops the driver mid-analysis (the deploy exits 5, the run is
/// paused, both versions keep serving at the canary's weights); `promote` — nobody
/// driving — drives the run again here and the promoted canary's hosts, then the later
/// waves without analysis, end on the new version with every weight back.
#[test]
fn behind_nginx_operators_pause_resume_and_promote_a_fleet_canary() {
    let (w, n) = deployed(OPERATED);
    let before = weights(&w);
    let stop = Arc::new(AtomicBool::new(false));
    let load = root_traffic(n.port, stop.clone());

    let mut deploy = spawn_deploy(&w, "2.0.0");
    wait_event(&w, &mut deploy, "the manual pause", |e| {
        e["event"] == "paused"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("pause until resumed"))
    });
    let run = run_id(&w);
    let o = w.run(&["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "resume: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("resume sent to the driver"),
        "{o:?}"
    );
    wait_event(&w, &mut deploy, "weight 50 and the analysis", |e| {
        e["event"] == "step_started" && e["index"] == 3
    });
    assert!(
        events_named(&progress(&w), "weight_set")
            .iter()
            .any(|e| e["weight"] == 50 && e["verified"] == 50)
    );

    let o = w.run(&["pause", &run]);
    assert_eq!(o.status.code(), Some(0), "pause: {o:?}");
    assert_eq!(exit_of(&mut deploy, &w), Some(5), "paused deploy exits 5");
    assert_eq!(w.status()["run"]["state"], "paused");
    // Paused: nobody drives, both versions serve at the canary's weights.
    assert_ne!(weights(&w), before);
    assert_eq!(version_at(w.ports[0]).as_deref(), Some("2.0.0"));
    assert_eq!(version_at(w.ports[1]).as_deref(), Some("1.0.0"));

    let o = w.run(&["promote", &run, "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "promote: {o:?}");
    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "requests failed: {failed:?} ({seen:?})");
    assert!(
        seen.contains_key("1.0.0") && seen.contains_key("2.0.0"),
        "{seen:?}"
    );
    w.wait_all("2.0.0");
    assert_eq!(w.status()["run"]["state"], "succeeded");
    assert_eq!(weights(&w), before, "every weight back");
    let p = progress(&w);
    let intervened: Vec<&serde_json::Value> = events_named(&p, "intervened")
        .into_iter()
        .map(|e| &e["intervention"])
        .collect();
    assert_eq!(intervened, vec!["resume", "pause", "promote"], "{p:#?}");
    let waves: Vec<u64> = events_named(&p, "fleet_wave_passed")
        .iter()
        .map(|e| e["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, vec![1, 2, 3], "{p:#?}");
    drop(n);
}

/// `slipway abort RUN` on a fleet canary: while the deploy drives it (the live driver
/// rolls the canary host back and the run ends aborted, the deploy exiting 6), and while
/// it is paused with nobody driving (the abort takes the canary back itself) — each time
/// host1 back on the previous version, every weight back, and no request failing.
#[test]
fn behind_nginx_an_abort_takes_a_fleet_canary_back_live_or_paused() {
    let (w, n) = deployed(LONG);
    let before = weights(&w);
    let stop = Arc::new(AtomicBool::new(false));
    let load = root_traffic(n.port, stop.clone());

    // Live.
    let mut deploy = spawn_deploy(&w, "2.0.0");
    wait_event(&w, &mut deploy, "the analysis", |e| {
        e["event"] == "step_started" && e["index"] == 1
    });
    let run = run_id(&w);
    let o = w.run(&["abort", &run]);
    assert_eq!(o.status.code(), Some(0), "abort: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(now aborted)"),
        "{o:?}"
    );
    assert_eq!(exit_of(&mut deploy, &w), Some(6));
    w.wait_all("1.0.0");
    assert_eq!(weights(&w), before, "every weight back");
    let p = progress(&w);
    assert!(
        events_named(&p, "rolling_back").iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rollback requested by an operator"))),
        "{p:#?}"
    );

    // Paused, nobody driving.
    let mut deploy = spawn_deploy(&w, "2.0.0");
    // The journal read is the latest run's: first the new run, then its analysis.
    let deadline = Instant::now() + Duration::from_secs(180);
    while run_id(&w) == run {
        assert!(
            Instant::now() < deadline && deploy.try_wait().unwrap().is_none(),
            "no second run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_event(&w, &mut deploy, "the analysis", |e| {
        e["event"] == "step_started" && e["index"] == 1
    });
    let run2 = run_id(&w);
    assert_ne!(run2, run);
    let o = w.run(&["pause", &run2]);
    assert_eq!(o.status.code(), Some(0), "pause: {o:?}");
    assert_eq!(exit_of(&mut deploy, &w), Some(5));
    assert_eq!(version_at(w.ports[0]).as_deref(), Some("2.0.0"));
    assert_ne!(weights(&w), before);
    let o = w.run(&["abort", &run2]);
    assert_eq!(o.status.code(), Some(0), "abort: {o:?}");
    assert_eq!(w.status()["run"]["state"], "aborted");
    w.wait_all("1.0.0");
    assert_eq!(weights(&w), before, "every weight back");

    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "requests failed: {failed:?} ({seen:?})");
    assert!(seen.contains_key("2.0.0"), "{seen:?}");
    drop(n);
}

/// The canary's share of `n` requests in a row through nginx: how many host1 (the only
/// host on 2.0.0) answered. Each request on a new connection; any failure fails the test.
fn canary_answers(port: u16, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            root_at(port).unwrap_or_else(|e| panic!("a request through nginx failed: {e}"))
                == "2.0.0"
        })
        .count()
}

/// nginx reloaded (`nginx -s reload`, as `systemctl reload nginx` does) while a fleet
/// canary holds host1 at 80 % of the traffic: nginx reads the upstream file Slipway wrote
/// again, so the split survives the reload — counted from nginx's own answers after it
/// (the other hosts at 1, host1 at 8: 80 of any 100 requests in a row) — and Slipway finds
/// nothing to put back (no `router_restored`). With the weights lost, host1 would answer a
/// third.
#[test]
fn behind_nginx_a_reload_mid_canary_keeps_the_canary_share() {
    let (w, n) = deployed(
        "strategy:\n  canary:\n    steps:\n      - set_weight: 80\n      - pause: manual\n",
    );
    let mut child = w.spawn_deploy2();
    w.wait_progress(&mut child, Duration::from_secs(120), "paused at 80%", |p| {
        !events_named(p, "paused").is_empty()
    });
    let during = weights(&w);
    assert_eq!(
        during.values().collect::<Vec<_>>(),
        vec!["8 in", "1 in", "1 in"],
        "{during:?}"
    );
    let before = canary_answers(n.port, 100);
    assert!(
        (75..=85).contains(&before),
        "before the reload: {before} of 100"
    );

    n.reload();
    let after = canary_answers(n.port, 100);
    assert!(
        (75..=85).contains(&after),
        "host1 answered {after} of 100 requests after the reload (80 before it: {before}): the canary's weight did not survive"
    );
    assert_eq!(weights(&w), during);
    let p = progress(&w);
    assert!(events_named(&p, "router_restored").is_empty(), "{p:#?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the deploy stopped driving"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(n);
}
