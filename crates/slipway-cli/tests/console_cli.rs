//! The team console of `slipway serve` (issue 16 part 2) through real HTTP against a real
//! server driving a real process-target canary under live traffic: the approvals inbox
//! lists the plan for an approver who may approve it (not for its four-eyes author, not
//! for a viewer), the environment dashboard shows what runs and the drift of a release
//! under way, and the run page's canary chart is SVG whose points are the journal's
//! measurements (read back from the journal, not written down here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::People;
use crate::server_deploy_cli::{World, get_body, post, process_release, remote, spec_of};

/// `GET path` as `token` (HTTP/1.0): status and body.
pub(crate) fn get_as(addr: &str, path: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// [`process_release`] with a four-eyes approval and a canary judged by an analysis:
/// 20 %, 3 s of analysis, 100 %. One canary request makes a window conclusive, so a load
/// generator starved by a busy machine slows the chart down instead of pausing the run
/// (a timed analysis needs one conclusive measurement).
pub(crate) fn approved_canary_release(version: &str) -> tempfile::TempDir {
    let d = process_release(version);
    let spec = d.path().join("release.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        format!(
            "{text}    approvals: {{ required: 1, four_eyes: true }}
    strategy:
      canary:
        steps:
          - set_weight: 20
          - analysis: {{ template: golden, duration: 3s }}
          - set_weight: 100
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 1
    failure_limit: 0
    inconclusive_limit: 1000
    metrics:
      - {{ name: error-rate, max: 0.05 }}
    on_failure: rollback
"
        ),
    )
    .unwrap();
    d
}

/// Requests to `traffic`, one after the other, until the returned flag is set.
pub(crate) fn live_traffic(traffic: String) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = get_body(&traffic, "/version");
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    (stop, h)
}

/// Poll `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub(crate) fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `data-value` of the chart's circle for `series`/`role` at journal entry `seq`.
fn plotted(svg: &str, series: &str, role: &str, seq: i64) -> Option<f64> {
    let needle = format!("data-series=\"{series}\" data-role=\"{role}\" ");
    svg.split("<circle ").skip(1).find_map(|c| {
        let c = c.split('>').next()?;
        if !c.contains(&needle) || !c.contains(&format!("data-seq=\"{seq}\"")) {
            return None;
        }
        c.split("data-value=\"")
            .nth(1)?
            .split('"')
            .next()?
            .parse()
            .ok()
    })
}

/// A real server (SQLite store) whose `live` environment runs api 1.0.0 behind its proxy,
/// live traffic through that proxy, and api 1.1.0 deployed by alice from the CLI through
/// the server, waiting for an approval bob (approver) may give and vic (viewer) may not.
pub(crate) struct AwaitingApproval {
    pub world: World,
    pub people: People,
    pub server: crate::server_deploy_cli::Server,
    pub run: String,
    pub stop: Arc<AtomicBool>,
    pub traffic: std::thread::JoinHandle<()>,
    /// The two releases' directories (1.0.0, 1.1.0), kept for the run's lifetime.
    pub releases: [tempfile::TempDir; 2],
}

impl AwaitingApproval {
    pub(crate) fn start() -> Self {
        let world = World::sqlite();
        let mut people = People::new(&world.store, "alice");
        people
            .add("bob", "approver", "live")
            .add("vic", "viewer", "live");
        let server = world.serve();
        let addr = server.addr.clone();
        let alice = people.token("alice").to_owned();
        let v1 = process_release("1.0.0");
        let (code, out, err) = remote(
            &addr,
            &alice,
            v1.path(),
            &["deploy", "-f", &spec_of(&v1), "--env", "live"],
        );
        assert_eq!(code, 0, "{out}{err}");
        let proxy = slipway_providers::remote::read_state(
            &world.dir.path().join("process/live/proxies/api.json"),
        )
        .expect("the first deploy started the api proxy");
        let (stop, traffic) = live_traffic(proxy.traffic.to_string());

        let v2 = approved_canary_release("1.1.0");
        let (code, out, err) = remote(
            &addr,
            &alice,
            v2.path(),
            &["deploy", "-f", &spec_of(&v2), "--env", "live", "--detach"],
        );
        assert_eq!(code, 0, "{out}{err}");
        let run = out.trim().to_owned();
        let vic = people.token("vic");
        until(30, "the approvals gate", || {
            let (_, b) = get_as(&addr, &format!("/api/v1/runs/{run}"), vic);
            (serde_json::from_str::<Value>(&b).ok()?["state"] == "waiting_for_approval")
                .then_some(())
        });
        Self {
            world,
            people,
            server,
            run,
            stop,
            traffic,
            releases: [v1, v2],
        }
    }
}

#[test]
fn inbox_dashboard_and_canary_chart_show_a_real_canary_run() {
    let AwaitingApproval {
        world: _world,
        people,
        server,
        run,
        stop,
        traffic,
        releases,
    } = AwaitingApproval::start();
    let (alice, bob, vic) = (
        people.token("alice"),
        people.token("bob"),
        people.token("vic"),
    );
    let addr = server.addr.as_str();

    // The inbox: bob may approve; alice wrote it (four eyes); vic only views.
    let (status, page) = get_as(addr, "/inbox", bob);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("data-run=\"{run}\"")), "{page}");
    assert!(page.contains(&format!("/runs/{run}/plan")), "{page}");
    for who in [alice, vic] {
        let (status, page) = get_as(addr, "/inbox", who);
        assert_eq!(status, 200);
        assert!(!page.contains(&run), "{page}");
        assert!(page.contains("inbox-empty"), "{page}");
    }

    // The dashboard: 1.0.0 runs, and the release under way is drift.
    let (status, page) = get_as(addr, "/environments", vic);
    assert_eq!(status, 200, "{page}");
    let cell = page.split("data-environment=\"live\"").nth(1).unwrap();
    let cell = cell.split("</td>").next().unwrap();
    assert!(
        cell.contains("<span class=\"version\">1.0.0</span>"),
        "{cell}"
    );
    assert!(cell.contains("drift-marker"), "{cell}");
    assert!(cell.contains(&run), "{cell}");

    let (status, v) = post(
        addr,
        &format!("/api/v1/runs/{run}/approve"),
        b"{}",
        &[
            ("Authorization", &format!("Bearer {bob}")),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(status, 200, "{v}");
    let (code, out, err) = remote(
        addr,
        alice,
        releases[1].path(),
        &["wait", &run, "--timeout", "60"],
    );
    assert_eq!(code, 0, "{out}{err}");
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let (_, page) = get_as(addr, "/inbox", bob);
    assert!(!page.contains(&run), "approved and done: {page}");

    // The chart's points are the journal's measurements and weights.
    let (_, body) = get_as(addr, &format!("/api/v1/runs/{run}/journal"), vic);
    let journal: Value = serde_json::from_str(&body).unwrap();
    let (status, svg) = get_as(addr, &format!("/runs/{run}/chart.svg"), vic);
    assert_eq!(status, 200, "{svg}");
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    let (mut measured, mut weights) = (0, Vec::new());
    for e in journal["entries"].as_array().unwrap() {
        let d = &e["event"]["detail"];
        let seq = e["seq"].as_i64().unwrap();
        match d["event"].as_str() {
            Some("measured") => {
                let w = &d["window"];
                let (req, errs) = (
                    w["canary_requests"].as_u64().unwrap(),
                    w["canary_errors"].as_u64().unwrap(),
                );
                if req > 0 {
                    #[allow(clippy::cast_precision_loss)]
                    let rate = errs as f64 / req as f64;
                    assert_eq!(
                        plotted(&svg, "error_rate", "canary", seq),
                        Some(rate),
                        "seq {seq}: {svg}"
                    );
                }
                if let Some(p99) = w["canary_p99_ms"].as_f64() {
                    assert_eq!(
                        plotted(&svg, "p99_ms", "canary", seq),
                        Some(p99),
                        "seq {seq}"
                    );
                }
                if let Some(p99) = w["stable_p99_ms"].as_f64() {
                    assert_eq!(
                        plotted(&svg, "p99_ms", "stable", seq),
                        Some(p99),
                        "seq {seq}"
                    );
                }
                measured += 1;
            }
            Some("weight_set") => {
                let w = d["weight"].as_f64().unwrap();
                assert_eq!(plotted(&svg, "weight", "canary", seq), Some(w), "seq {seq}");
                assert_eq!(
                    plotted(&svg, "weight", "stable", seq),
                    Some(100.0 - w),
                    "seq {seq}"
                );
                weights.push(w);
            }
            _ => {}
        }
    }
    assert!(
        measured >= 3,
        "the analysis measured the live traffic: {journal}"
    );
    assert_eq!(weights.first(), Some(&20.0), "{weights:?}");
    assert_eq!(weights.last(), Some(&100.0), "{weights:?}");
    assert!(svg.contains("data-version=\"1.1.0\""), "{svg}");
    // The run page embeds the same chart.
    let (_, page) = get_as(addr, &format!("/runs/{run}"), vic);
    assert!(page.contains("id=\"canary-chart\""), "{page}");
    assert_eq!(
        page.matches("<circle ").count(),
        svg.matches("<circle ").count()
    );

    // What runs now is the canary's version, without drift.
    let (_, page) = get_as(addr, "/environments", vic);
    let cell = page.split("data-environment=\"live\"").nth(1).unwrap();
    let cell = cell.split("</td>").next().unwrap();
    assert!(
        cell.contains("<span class=\"version\">1.1.0</span>"),
        "{cell}"
    );
    assert!(!cell.contains("drift-marker"), "{cell}");
}
