//! Canaries judged by external metric providers through the real `slipway deploy` on the
//! `process` target: a real Prometheus scraping the service's real proxy process while
//! this test sends real traffic through it, and an HTTP JSON endpoint served by this test.
//! The verdict comes from what the provider answers: PromQL over the proxy's counters,
//! a number at a JSON pointer.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::canary_cli::Env;

/// The canary's own error ratio over the last 5 s, from the proxy's per-version counters
/// (`version` is the proxy's side, canary or stable; `service` is the scrape's label),
/// and only once the canary served 20 requests in that window (`and`: otherwise no
/// sample, i.e. insufficient data) — PromQL's min_samples, so a ratio of 3 lucky requests
/// never passes a bad canary.
const ERROR_RATIO: &str = r#"(sum(rate(slipway_proxy_requests_total{service="{{ service }}",version="canary",class=~"5xx|proxy_error"}[5s])) / sum(rate(slipway_proxy_requests_total{service="{{ service }}",version="canary"}[5s]))) and (sum(increase(slipway_proxy_requests_total{service="{{ service }}",version="canary"}[5s])) >= 20)"#;

/// A release of `api` at `version` (demo-app with `args`) whose canary is judged by
/// `metrics` (YAML list items) from `providers` (YAML map entries). The analysis has no
/// duration: it runs until one conclusive measurement, so a slow first scrape only costs
/// inconclusive measurements (up to the limit), never the verdict.
fn spec(env: &Env, version: &str, args: &str, metrics: &str, providers: &str) -> PathBuf {
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
    vars: {{ stats_password: \"secret://env/SLIPWAY_TEST_STATS_PASSWORD\" }}
    strategy:
      canary:
        steps:
          - set_weight: 50
          - analysis: {{ template: external }}
          - set_weight: 100
analysis_templates:
  external:
    interval: 500ms
    failure_limit: 0
    inconclusive_limit: 60
    consecutive_error_limit: 2
    metrics:
{metrics}
    on_failure: rollback
providers:
{providers}
"
    );
    let p = env.path().join(format!("release-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// A port for a server started on it (Prometheus) or for nothing to listen on: outside
/// the ephemeral range, where no other test's connection can take it meanwhile.
fn free_port() -> u16 {
    slipway_testkit::ports::fixed_port()
}

/// A real Prometheus scraping the proxy's admin `/metrics` every second; stopped (by its
/// own pid) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, proxy_admin: SocketAddr) -> Self {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
scrape_configs:
  - job_name: slipway-proxy
    static_configs:
      - targets: [\"{proxy_admin}\"]
        labels: {{ service: api }}
"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (apt: prometheus; scripts/test.sh installs it)");
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An instant query's `data.result`, or `None` while Prometheus cannot answer.
    fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let set = slipway_providers::metrics::ProviderSet::new(&BTreeMap::from([(
            "p".to_owned(),
            slipway_model::spec::Provider {
                prometheus: Some(slipway_model::spec::UrlProvider {
                    url: self.url(),
                    timeout: Some("2s".into()),
                }),
                http: None,
            },
        )]));
        let m = slipway_model::spec::Metric {
            name: "probe".into(),
            provider: "p".into(),
            query: Some(promql.into()),
            max: None,
            min: None,
            compare: None,
            confidence: None,
        };
        let a = rt.block_on(set.read_one(&m, &Default::default()));
        match a.reading {
            slipway_model::analysis::Reading::Value(v) => Some(serde_json::json!(v)),
            _ => None,
        }
    }

    /// Poll until `promql` has a value (Prometheus up, the proxy scraped, traffic seen).
    fn wait_for(&self, promql: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.query(promql).is_none() {
            assert!(
                Instant::now() < deadline,
                "Prometheus never answered `{promql}`; its log:\n{}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metric results of every `measured` event of a run's journal (`slipway logs
/// --output json`: one entry per line), in order.
fn measured(journal: &str) -> Vec<serde_json::Value> {
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = entries.iter().rev().collect();
    while let Some(x) = stack.pop() {
        match x {
            serde_json::Value::Object(m) => {
                if m.get("event").and_then(|e| e.as_str()) == Some("measured")
                    && let Some(r) = m["measurement"]["results"].as_array()
                {
                    out.extend(r.iter().cloned());
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
    out
}

fn prometheus_metric() -> String {
    format!(
        "      - {{ name: canary-error-ratio, provider: prom, max: 0.05, query: '{ERROR_RATIO}' }}"
    )
}

fn prometheus_provider(p: &Prometheus) -> String {
    format!(
        "  prom: {{ prometheus: {{ url: \"{}\", timeout: 3s }} }}",
        p.url()
    )
}

/// The environment, with Prometheus scraping its proxy and seeing the users' traffic.
fn with_prometheus() -> (Env, slipway_providers::traffic::Traffic, Prometheus) {
    let env = Env::new();
    let users = env.baseline();
    let prom = Prometheus::start(env.path(), env.proxy().admin);
    // Scraped at least twice with traffic: the stable side's rate exists.
    prom.wait_for(
        r#"sum(rate(slipway_proxy_requests_total{service="api",version="stable"}[5s])) > 0"#,
    );
    (env, users, prom)
}

#[test]
fn a_canary_judged_by_prometheus_is_promoted_when_healthy() {
    let (env, users, prom) = with_prometheus();
    let (code, v, err) = env.deploy(&spec(
        &env,
        "2.0.0",
        "",
        &prometheus_metric(),
        &prometheus_provider(&prom),
    ));
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(v["state"], "succeeded");
    let run = v["run"].as_str().unwrap();
    let results = measured(&env.journal(run));
    // The verdict came from Prometheus: a successful measurement of the canary's own
    // error ratio, with the query as sent (placeholders filled).
    let ok = results
        .iter()
        .find(|r| r["metric"] == "canary-error-ratio" && r["phase"] == "successful")
        .unwrap_or_else(|| panic!("no successful Prometheus measurement: {results:?}"));
    assert!(ok["value"].as_f64().unwrap() <= 0.05, "{ok}");
    let query = ok["query"].as_str().unwrap();
    assert!(
        query.contains(r#"{service="api",version="canary""#) && !query.contains("{{"),
        "{query}"
    );
    assert_eq!(ok["threshold"], "max 0.05");
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );
    // Before any traffic moved, the readiness gate proved the query's series exist.
    let row = v["readiness"]
        .as_array()
        .unwrap_or_else(|| panic!("no readiness rows: {v:#}"))
        .iter()
        .find(|r| r["check"] == "monitoring.prom")
        .unwrap_or_else(|| panic!("no monitoring row: {v:#}"))
        .clone();
    assert_eq!(row["verdict"], "pass", "{row:#}");
    assert!(
        row["measured"]
            .as_str()
            .unwrap()
            .contains("every series it selects exists: slipway_proxy_requests_total"),
        "{row:#}"
    );
    let _ = env.rt.block_on(users.stop());
}

#[test]
fn a_dead_prometheus_blocks_the_deploy_before_any_traffic_moves() {
    let env = Env::new();
    let users = env.baseline();
    // Nothing listens there: the provider is dead.
    let dead = format!(
        "  prom: {{ prometheus: {{ url: \"http://127.0.0.1:{}\", timeout: 1s }} }}",
        free_port()
    );
    let spec = spec(&env, "2.0.0", "", &prometheus_metric(), &dead);
    let (code, v, err) = env.deploy(&spec);
    assert_eq!(code, 3, "blocked before the first wave: {v}\n{err}");
    let row = v["readiness"]
        .as_array()
        .unwrap_or_else(|| panic!("no readiness rows: {v:#}"))
        .iter()
        .find(|r| r["check"] == "monitoring.prom")
        .unwrap_or_else(|| panic!("no monitoring row: {v:#}"))
        .clone();
    assert_eq!(row["verdict"], "fail", "{row:#}");
    assert!(
        row["target"]
            .as_str()
            .unwrap()
            .contains("canary-error-ratio (prometheus `prom`)"),
        "{row:#}"
    );
    // No canary was started, no traffic moved.
    assert_eq!(env.instances(), BTreeMap::from([("1.0.0".to_owned(), 2)]));
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("1.0.0".to_owned(), 10)])
    );
    // The same by hand.
    let (code, out, err) = env.run(&[
        "check",
        "--env",
        "live",
        "--only",
        "monitoring",
        "--output",
        "json",
        "-f",
        &spec.display().to_string(),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["checks"][0]["check"], "monitoring.prom", "{c:#}");
    assert_eq!(c["checks"][0]["verdict"], "fail", "{c:#}");
    let _ = env.rt.block_on(users.stop());
}

#[test]
fn check_only_monitoring_proves_a_live_prometheus_query_and_names_a_missing_series() {
    let (env, users, prom) = with_prometheus();
    let spec = spec(
        &env,
        "2.0.0",
        "",
        &prometheus_metric(),
        &prometheus_provider(&prom),
    );
    let check = |spec: &Path| {
        let (code, out, err) = env.run(&[
            "check",
            "--env",
            "live",
            "--only",
            "monitoring",
            "--output",
            "json",
            "-f",
            &spec.display().to_string(),
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        (code, v)
    };
    let (code, v) = check(&spec);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["checks"][0]["verdict"], "pass", "{v:#}");
    // A misspelt metric: Prometheus answers, but nothing exports that series while 1.0.0
    // runs there: the canary would be judged on nothing.
    let typo = prometheus_metric().replace(
        "slipway_proxy_requests_total",
        "slipway_proxy_request_total",
    );
    let spec = spec_with(&env, &typo, &prometheus_provider(&prom));
    let (code, v) = check(&spec);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["checks"][0]["measured"]
            .as_str()
            .unwrap()
            .contains("no series named `slipway_proxy_request_total`"),
        "{v:#}"
    );
    let _ = env.rt.block_on(users.stop());
}

fn spec_with(env: &Env, metric: &str, provider: &str) -> PathBuf {
    spec(env, "2.0.0", "", metric, provider)
}

#[test]
fn a_canary_judged_by_prometheus_is_rolled_back_on_its_error_ratio() {
    let (env, users, prom) = with_prometheus();
    let (code, v, err) = env.deploy(&spec(
        &env,
        "2.0.0",
        "--error-rate 0.5",
        &prometheus_metric(),
        &prometheus_provider(&prom),
    ));
    assert_eq!(code, 4, "{v}\n{err}");
    assert_eq!(v["state"], "rolled_back");
    // The reason names the Prometheus metric, its value and the threshold.
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("canary-error-ratio = ")
            && reason.contains("above max 0.0500")
            && reason.contains("prometheus `prom`"),
        "{reason}\n{err}"
    );
    let run = v["run"].as_str().unwrap();
    // What people read shows the Prometheus verdict: the run's status, its log, the retro.
    for args in [
        vec!["status", run],
        vec!["logs", run],
        vec!["report", "retro", run],
    ] {
        let (_, out, errs) = env.run(&args);
        assert!(
            out.contains("canary-error-ratio = ") && out.contains("above max 0.0500"),
            "{args:?}:\n{out}\n{errs}"
        );
    }
    let results = measured(&env.journal(run));
    let failed = results
        .iter()
        .find(|r| r["phase"] == "failed")
        .unwrap_or_else(|| panic!("{results:?}"));
    // demo-app fails about half of the canary's requests; PromQL's rate extrapolates.
    let value = failed["value"].as_f64().unwrap();
    assert!(value > 0.2 && value < 0.8, "{failed}");
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("1.0.0".to_owned(), 10)])
    );
    assert_eq!(env.instances(), BTreeMap::from([("1.0.0".to_owned(), 2)]));
    let _ = env.rt.block_on(users.stop());
}

/// An HTTP server answering `GET` with `{"canary":{"error_ratio": X}}`, X taken from
/// `script` per request (`None` → `null`) and the last entry repeated; paths and
/// `authorization` headers kept.
struct JsonServer {
    addr: SocketAddr,
    script: Arc<Mutex<Vec<Option<f64>>>>,
    paths: Arc<Mutex<Vec<String>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

impl JsonServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<Mutex<Vec<Option<f64>>>> = Arc::new(Mutex::new(vec![None]));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let auth = Arc::new(Mutex::new(Vec::new()));
        let (s, p, a) = (script.clone(), paths.clone(), auth.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization:") {
                        a.lock().unwrap().push(v.trim().to_owned());
                    }
                }
                p.lock()
                    .unwrap()
                    .push(line.split(' ').nth(1).unwrap_or_default().to_owned());
                let value = {
                    let mut script = s.lock().unwrap();
                    if script.len() > 1 {
                        script.remove(0)
                    } else {
                        script[0]
                    }
                };
                let body = format!(
                    "{{\"canary\":{{\"error_ratio\":{}}}}}",
                    value.map_or("null".to_owned(), |v| v.to_string())
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            addr,
            script,
            paths,
            auth,
        }
    }

    fn answer(&self, script: Vec<Option<f64>>) {
        *self.script.lock().unwrap() = script;
    }
}

#[test]
fn a_canary_judged_by_an_http_json_endpoint_waits_for_data_then_promotes_or_rolls_back() {
    let env = Env::new();
    let users = env.baseline();
    let server = JsonServer::start();
    let metric =
        "      - { name: canary-errors, provider: stats, max: 0.1, query: /canary/error_ratio }";
    // The password is a secret variable: resolved by `slipway deploy` from its own
    // environment when it measures, never in the plan, the journal or the output.
    let password = "pw-7f3a-never-logged";
    let secret = [("SLIPWAY_TEST_STATS_PASSWORD", password)];
    let provider = format!(
        "  stats: {{ http: {{ url: \"http://ops:{{{{ vars.stats_password }}}}@{}/stats/{{{{ service }}}}/{{{{ version }}}}\", timeout: 2s }} }}",
        server.addr
    );

    // The readiness gate asks first (for the version running now: no data there only
    // warns for an HTTP provider); then no data twice (null), then a healthy value:
    // inconclusive, inconclusive, promoted.
    server.answer(vec![None, None, None, Some(0.01)]);
    let (code, v, err) = env.deploy_with(&spec(&env, "2.0.0", "", metric, &provider), &secret);
    assert_eq!(code, 0, "{v}\n{err}");
    let run2 = v["run"].as_str().unwrap().to_owned();
    let results = measured(&env.journal(&run2));
    let phases: Vec<&str> = results.iter().filter_map(|r| r["phase"].as_str()).collect();
    assert!(
        phases.iter().filter(|p| **p == "inconclusive").count() >= 2
            && phases.contains(&"successful"),
        "{results:?}"
    );
    let no_data = results
        .iter()
        .find(|r| r["phase"] == "inconclusive")
        .unwrap();
    assert!(
        no_data["detail"]
            .as_str()
            .unwrap()
            .contains("insufficient data: http `stats`: `/canary/error_ratio` is null"),
        "{no_data}"
    );
    // The URL's placeholders were filled with the canary's service and version (the
    // gate's with the version that ran before any traffic moved).
    let paths = server.paths.lock().unwrap().clone();
    assert_eq!(paths[0], "/stats/api/1.0.0", "{paths:?}");
    assert!(
        paths[1..].iter().all(|p| p == "/stats/api/2.0.0"),
        "{paths:?}"
    );

    // A bad value: rolled back, the reason naming metric, value, threshold and provider.
    server.answer(vec![Some(0.4)]);
    let (code, v, err) = env.deploy_with(&spec(&env, "3.0.0", "", metric, &provider), &secret);
    assert_eq!(code, 4, "{v}\n{err}");
    let run3 = v["run"].as_str().unwrap().to_owned();
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("canary-errors = 0.4000 above max 0.1000 (http `stats`)"),
        "{reason}"
    );
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("2.0.0".to_owned(), 10)])
    );
    assert!(
        server
            .paths
            .lock()
            .unwrap()
            .contains(&"/stats/api/3.0.0".to_owned())
    );
    // Every request carried the secret as basic auth; nothing Slipway wrote carries it.
    let basic = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"))
    )
    .to_ascii_lowercase();
    let auth = server.auth.lock().unwrap().clone();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a.to_ascii_lowercase() == basic),
        "{auth:?}"
    );
    for run in [&run2, &run3] {
        for args in [
            vec!["logs", run.as_str(), "--output", "json"],
            vec!["logs", run.as_str()],
            vec!["status", run.as_str(), "--output", "json"],
            vec!["plan", "--env", "live", "-f"],
        ] {
            let mut args = args;
            let spec_path = env.path().join("release-3.0.0.yaml").display().to_string();
            if args[0] == "plan" {
                args.push(&spec_path);
            }
            let (_, out, errs) = env.run(&args);
            assert!(
                !out.contains(password) && !errs.contains(password),
                "{args:?} shows the secret:\n{out}\n{errs}"
            );
        }
    }
    // Nor any file of the test's world: store (and its WAL), run files, process state.
    let mut dirs = vec![env.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                assert!(
                    !bytes
                        .windows(password.len())
                        .any(|w| w == password.as_bytes()),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }
    let _ = env.rt.block_on(users.stop());
}
