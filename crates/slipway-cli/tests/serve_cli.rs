//! `slipway serve` through the real binary and real HTTP: the API over a store a real
//! deploy wrote (tokens checked on every request, 401/404/400 as JSON), the audit
//! verification seeing an edit made with the `sqlite3` CLI, the SSE stream of a run while
//! it executes (resumed by `Last-Event-ID` without duplicates), graceful shutdown on
//! SIGTERM, the web UI in headless Chromium driven through the sign-in form
//! (playwright-core; steps, live journal, escaping, the session cookie), and the listener
//! under idle connections (a connection cap per client, a header-read timeout).
//!
//! The HTTP client is a few lines over `TcpStream` speaking HTTP/1.0, so every body —
//! the event stream too — is delimited by the server closing the connection: nothing to
//! decode, and the stream's end is observable as EOF.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::slipway;

/// A step that waits for `GO` beside the spec, so a test sees the run live.
const SPEC: &str = "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    steps:
      - { name: install, run: \"true\", undo: \"true\" }
      - { name: wait-for-go, run: \"while [ ! -f GO ]; do sleep 0.05; done\", undo: \"true\" }
      - { name: \"<script>document.title='pwned'</script>\", run: \"true\", undo: \"true\" }
environments:
  staging: { target: { exec: {} } }
";

const HOSTILE_STEP: &str = "api/<script>document.title='pwned'</script>";

struct Env {
    dir: tempfile::TempDir,
    spec: String,
    store: String,
    /// Tokens of the people acting once access control is on (the bootstrap grant's
    /// printed token, and those [`Env::token`] creates).
    tokens: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
}

impl Env {
    fn new() -> Self {
        Self::with_store(|dir| format!("sqlite://{}/s.db", dir.display()))
    }

    fn with_store(store: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("release.yaml");
        std::fs::write(&spec, SPEC).unwrap();
        Self {
            spec: spec.display().to_string(),
            store: store(dir.path()),
            dir,
            tokens: Default::default(),
        }
    }

    /// `slipway` on the store acting as `user`: through their token once they have one,
    /// else as the local user (access control off).
    fn cmd_as(&self, user: &str) -> assert_cmd::Command {
        let mut c = slipway();
        c.current_dir(self.dir.path())
            .env("SLIPWAY_STORE", &self.store)
            .env_remove("SLIPWAY_TOKEN");
        if let Some(t) = self.tokens.borrow().get(user) {
            c.env("SLIPWAY_TOKEN", t);
        }
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_as("alice", args)
    }

    fn ok_as(&self, user: &str, args: &[&str]) -> String {
        let o = self.cmd_as(user).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        // The grant that switches access control on prints its admin's first token.
        if args.starts_with(&["access", "grant"])
            && let Some(t) = text.split_whitespace().find(|w| w.starts_with("slw_"))
            && let Some(u) = args.get(2)
        {
            let u = u.strip_prefix("user:").unwrap_or(u);
            self.tokens.borrow_mut().insert(u.to_owned(), t.to_owned());
        }
        text
    }

    fn token(&self, user: &str) -> String {
        if let Some(t) = self.tokens.borrow().get(user) {
            return t.clone();
        }
        let text = self.ok(&["access", "token", "create", "--user", user]);
        let t = text
            .split_whitespace()
            .find(|w| w.starts_with("slw_"))
            .unwrap()
            .to_owned();
        self.tokens.borrow_mut().insert(user.to_owned(), t.clone());
        t
    }

    /// `slipway deploy` in the background (it waits for `GO`), killed and reaped when
    /// dropped.
    fn deploy(&self) -> slipway_testkit::Reaped {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("slipway"));
        c.current_dir(self.dir.path())
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_OUTPUT")
            .env("SLIPWAY_STORE", &self.store)
            .args(["deploy", "-f", &self.spec, "--env", "staging"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().unwrap().into()
    }

    fn go(&self) {
        std::fs::write(self.dir.path().join("GO"), "").unwrap();
    }

    fn serve(&self) -> Server {
        self.serve_with(&[], None)
    }

    /// `slipway serve` with extra arguments, and at most `fds` open descriptors when given
    /// (as on a host whose limit is low, or whose descriptors are nearly used up).
    fn serve_with(&self, extra: &[&str], fds: Option<u32>) -> Server {
        let bin = assert_cmd::cargo::cargo_bin("slipway");
        let mut c = match fds {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = c
            .current_dir(self.dir.path())
            .env_remove("SLIPWAY_TOKEN")
            .env("SLIPWAY_STORE", &self.store)
            .args(["serve", "--listen", "127.0.0.1:0", "--output", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // The ready line comes once the socket is bound; EOF means serve exited.
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line {line:?}: {e}; {:?}", child.try_wait()));
        Server {
            addr: ready["listening"].as_str().unwrap().to_owned(),
            child,
            stdout,
        }
    }
}

struct Server {
    addr: String,
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers (lowercased names), body.
struct Response {
    status: u16,
    headers: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Open a request; the reader is positioned at the body.
fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut head = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l.trim().is_empty() {
            break;
        }
        head.push_str(&l.to_ascii_lowercase());
    }
    (code, head, r)
}

fn get(addr: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, headers, mut r) = open(addr, path, &headers);
    let mut body = String::new();
    r.read_to_string(&mut body).unwrap();
    Response {
        status,
        headers,
        body,
    }
}

/// `POST path` with a form body (`application/x-www-form-urlencoded`, already encoded).
fn post_form(addr: &str, path: &str, body: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// Sign in through the login form; the session cookie (`name=value`) it sets.
fn session_cookie(addr: &str, token: &str) -> String {
    let r = post_form(addr, "/login", &format!("token={token}&next=%2F"));
    assert_eq!(r.status, 303, "{}", r.body);
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned()
}

/// One SSE event: its name, id and data.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<i64>,
    data: String,
}

/// The next event of a stream, `None` at EOF (comments and keep-alives skipped).
fn next_event(r: &mut BufReader<TcpStream>) -> Option<Sse> {
    let mut ev = Sse {
        event: "message".into(),
        id: None,
        data: String::new(),
    };
    let mut any = false;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            return None;
        }
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if any {
                return Some(ev);
            }
            continue;
        }
        if let Some(v) = l.strip_prefix("event:") {
            ev.event = v.trim().into();
            any = true;
        } else if let Some(v) = l.strip_prefix("id:") {
            ev.id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = l.strip_prefix("data:") {
            ev.data.push_str(v.trim_start());
            any = true;
        }
    }
}

/// Poll `f` until it returns a value, or fail after 30 s.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finished_run(e: &Env) -> String {
    let mut d = e.deploy();
    e.go();
    assert!(d.wait().unwrap().success());
    let v: Value = serde_json::from_str(&e.ok(&["history", "--output", "json"])).unwrap();
    v[0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn the_api_serves_runs_to_live_tokens_only_and_verifies_the_audit_chain() {
    let e = Env::new();
    let token = e.token("bob");
    let other = e.token("carol");
    let run = finished_run(&e);
    let s = e.serve();
    let a = s.addr.as_str();

    let h = get(a, "/healthz", None);
    assert_eq!((h.status, h.json()["ok"].as_bool()), (200, Some(true)));

    // No token, a malformed one, a wrong secret: 401 with a JSON error and its fix.
    let (id, secret) = token["slw_".len()..].split_once('_').unwrap();
    let wrong = format!("slw_{id}_{}", "0".repeat(secret.len()));
    for t in [None, Some("nope"), Some(wrong.as_str())] {
        let r = get(a, "/api/v1/runs", t);
        assert_eq!(r.status, 401, "{t:?}: {}", r.body);
        assert!(r.json()["error"].is_string() && r.json()["fix"].is_string());
        assert!(r.headers.contains("www-authenticate: bearer"));
    }

    let runs = get(a, "/api/v1/runs", Some(&token));
    assert_eq!(runs.status, 200, "{}", runs.body);
    let (status, _, _) = open(
        a,
        "/api/v1/runs",
        &[("Authorization", &format!("bearer {token}"))],
    );
    assert_eq!(status, 200, "the scheme is case-insensitive");
    let listed = &runs.json()["runs"][0];
    assert_eq!(listed["id"], run.as_str());
    assert_eq!(listed["environment"], "staging");
    assert_eq!(listed["state"], "succeeded");
    assert_eq!(listed["digest"].as_str().unwrap().len(), 64);
    assert!(listed["finished_at"].is_string());

    let one = get(a, &format!("/api/v1/runs/{run}"), Some(&token)).json();
    let steps: Vec<(&str, &str)> = one["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step_id"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(steps.contains(&("api/install", "succeeded")), "{steps:?}");
    assert!(
        steps.contains(&("api/wait-for-go", "succeeded")),
        "{steps:?}"
    );
    assert!(one["approvals"].as_array().unwrap().is_empty());
    let journal = get(a, &format!("/api/v1/runs/{run}/journal"), Some(&token)).json();
    assert_eq!(
        journal["entries"][0]["event"]["event"], "run_created",
        "{journal}"
    );

    let missing = get(a, "/api/v1/runs/no-such-run", Some(&token));
    assert_eq!(missing.status, 404);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("no-such-run")
    );
    let bad = get(a, "/api/v1/runs?limit=ten", Some(&token));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("limit"));
    assert_eq!(get(a, "/api/v1/runs?limit=0", Some(&token)).status, 400);

    let ok = get(a, "/api/v1/audit/verify", Some(&token));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["ok"], true);

    // Edited behind slipway's back: the server names the entry, as `audit verify` does.
    let db = e.dir.path().join("s.db");
    let o = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg("UPDATE audit SET outcome = 'forged' WHERE seq = 3")
        .output()
        .expect("the sqlite3 CLI");
    assert!(o.status.success(), "{o:?}");
    let broken = get(a, "/api/v1/audit/verify", Some(&token));
    assert_eq!(broken.status, 409, "{}", broken.body);
    let b = broken.json();
    assert_eq!(
        (b["ok"].as_bool(), b["break"]["seq"].as_i64()),
        (Some(false), Some(3))
    );
    assert_eq!(b["break"]["problem"], "edited");

    // Revoked while the server runs: refused at the next request.
    e.ok(&["access", "token", "revoke", id]);
    assert_eq!(get(a, "/api/v1/runs", Some(&token)).status, 401);
    assert_eq!(get(a, "/api/v1/runs", Some(&other)).status, 200);

    // No response carries a token's secret.
    for path in ["/api/v1/runs", &format!("/api/v1/runs/{run}")] {
        let body = get(a, path, Some(&other)).body;
        assert!(!body.contains(secret) && !body.contains(&other[20..]));
    }
}

#[test]
fn the_event_stream_follows_a_run_live_and_resumes_without_duplicates() {
    let e = Env::new();
    let token = e.token("bob");
    let s = e.serve();
    let a = s.addr.clone();
    let mut deploy = e.deploy();
    let run = until("the run to be listed", || {
        get(&a, "/api/v1/runs", Some(&token)).json()["runs"][0]["id"]
            .as_str()
            .map(str::to_owned)
    });
    let auth = format!("Bearer {token}");
    let path = format!("/api/v1/runs/{run}/events");

    // First connection: everything up to the step that waits, which cannot have finished.
    let (status, headers, mut r) = open(&a, &path, &[("Authorization", &auth)]);
    assert_eq!(status, 200);
    assert!(
        headers.contains("content-type: text/event-stream"),
        "{headers}"
    );
    let mut seen: Vec<i64> = Vec::new();
    loop {
        let ev = next_event(&mut r).expect("the stream ended before the step started");
        assert_eq!(ev.event, "journal", "{ev:?}");
        let n: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(Some(n["seq"].as_i64().unwrap()), ev.id);
        seen.push(ev.id.unwrap());
        if n["event"]["event"] == "step_started" && n["event"]["step"] == "api/wait-for-go" {
            break;
        }
    }
    // Live: the run is still executing as the event arrives.
    let now = get(&a, &format!("/api/v1/runs/{run}"), Some(&token)).json();
    assert_eq!(now["state"], "running", "{now}");
    drop(r);

    // Reconnect where the first stream stopped, then let the step finish.
    let last = seen.last().unwrap().to_string();
    let (status, _, mut r) = open(
        &a,
        &path,
        &[("Authorization", &auth), ("Last-Event-ID", &last)],
    );
    assert_eq!(status, 200);
    e.go();
    let mut end = None;
    while let Some(ev) = next_event(&mut r) {
        match ev.event.as_str() {
            "journal" => seen.push(ev.id.unwrap()),
            "end" => end = Some(ev.data),
            other => panic!("unexpected event {other}"),
        }
    }
    let end: Value = serde_json::from_str(&end.expect("an end event")).unwrap();
    assert_eq!(end["state"], "succeeded");
    assert!(deploy.wait().unwrap().success());

    // Both connections together: the whole journal, once each, in order.
    let journal: Vec<i64> =
        get(&a, &format!("/api/v1/runs/{run}/journal"), Some(&token)).json()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["seq"].as_i64().unwrap())
            .collect();
    assert_eq!(seen, journal);

    // A terminal run's stream replays and ends; a bad Last-Event-ID is a 400.
    let (_, _, mut r) = open(
        &a,
        &path,
        &[("Authorization", &auth), ("Last-Event-ID", "5")],
    );
    let mut replay = Vec::new();
    while let Some(ev) = next_event(&mut r) {
        replay.extend(ev.id);
    }
    assert_eq!(
        replay,
        journal
            .iter()
            .copied()
            .filter(|s| *s > 5)
            .collect::<Vec<_>>()
    );
    let (status, _, _) = open(
        &a,
        &path,
        &[("Authorization", &auth), ("Last-Event-ID", "x")],
    );
    assert_eq!(status, 400);
}

#[test]
fn reading_runs_needs_the_viewer_role_once_access_control_is_on() {
    let e = Env::new();
    let run = finished_run(&e);
    e.ok_as(
        "alice",
        &["access", "grant", "user:alice", "admin", "--env", "*"],
    );
    e.ok_as(
        "alice",
        &["access", "grant", "user:bob", "viewer", "--env", "staging"],
    );
    let bob = e.token("bob");
    let carol = e.token("carol");
    let alice = e.token("alice");
    let s = e.serve();
    let a = s.addr.as_str();

    let listed = |t: &str| {
        get(a, "/api/v1/runs", Some(t)).json()["runs"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(listed(&bob), 1);
    assert_eq!(
        listed(&carol),
        0,
        "runs of environments carol may not view are left out"
    );
    assert_eq!(
        get(a, &format!("/api/v1/runs/{run}"), Some(&bob)).status,
        200
    );
    let refused = get(a, &format!("/api/v1/runs/{run}"), Some(&carol));
    assert_eq!(refused.status, 403, "{}", refused.body);
    let r = refused.json();
    assert!(r["error"].as_str().unwrap().contains("viewer"), "{r}");
    assert!(
        r["fix"]
            .as_str()
            .unwrap()
            .contains("slipway access grant user:carol viewer --env staging"),
        "{r}"
    );
    assert_eq!(
        get(a, &format!("/api/v1/runs/{run}/events"), Some(&carol)).status,
        403
    );
    // The chain spans every environment: viewer on `*` (alice, admin there), not bob.
    assert_eq!(get(a, "/api/v1/audit/verify", Some(&bob)).status, 403);
    assert_eq!(get(a, "/api/v1/audit/verify", Some(&alice)).status, 200);
}

/// `POST path` with a JSON body and optional extra headers.
fn post_json(addr: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// An approval over HTTP is the CLI's approval (the same operation): the approver role in
/// the run's environment, four-eyes against the author, the reviewed digest; a viewer is
/// refused, a cookie alone never approves, and the run then passes its approvals gate.
#[test]
fn approving_over_the_api_applies_the_same_rules_as_the_cli() {
    let e = Env::new();
    std::fs::write(
        &e.spec,
        SPEC.replace(
            "  staging: { target: { exec: {} } }",
            "  staging:\n    target: { exec: {} }\n    approvals: { required: 1, four_eyes: true }",
        ),
    )
    .unwrap();
    e.ok_as(
        "alice",
        &["access", "grant", "user:alice", "admin", "--env", "*"],
    );
    e.ok_as(
        "alice",
        &[
            "access", "grant", "user:bob", "approver", "--env", "staging",
        ],
    );
    e.ok_as(
        "alice",
        &[
            "access",
            "grant",
            "user:carol",
            "viewer",
            "--env",
            "staging",
        ],
    );
    // alice starts the run; it waits for one approval (exit 3 with --no-wait).
    let o = e
        .cmd_as("alice")
        .args([
            "deploy",
            "-f",
            &e.spec,
            "--env",
            "staging",
            "--no-wait",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let started: Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = started["run"].as_str().unwrap().to_owned();
    let (alice, bob, carol) = (e.token("alice"), e.token("bob"), e.token("carol"));
    let s = e.serve();
    let a = s.addr.as_str();
    let path = format!("/api/v1/runs/{run}/approve");
    let bearer = |t: &str| format!("Bearer {t}");

    let viewer = post_json(a, &path, "{}", &[("Authorization", &bearer(&carol))]);
    assert_eq!(viewer.status, 403, "{}", viewer.body);
    assert!(
        viewer.json()["fix"].as_str().unwrap().contains("approver"),
        "{}",
        viewer.body
    );
    let author = post_json(a, &path, "{}", &[("Authorization", &bearer(&alice))]);
    assert_eq!(author.status, 409, "four-eyes: {}", author.body);
    assert!(
        author.json()["error"]
            .as_str()
            .unwrap()
            .contains("four-eyes"),
        "{}",
        author.body
    );
    let stale = post_json(
        a,
        &path,
        &format!("{{\"digest\": \"{}\"}}", "0".repeat(64)),
        &[("Authorization", &bearer(&bob))],
    );
    assert_eq!(stale.status, 400, "another plan's digest: {}", stale.body);
    let cookie = post_json(a, &path, "{}", &[("Cookie", &session_cookie(a, &bob))]);
    assert_eq!(
        cookie.status, 403,
        "a cookie alone never approves: {}",
        cookie.body
    );
    let none = post_json(
        a,
        "/api/v1/runs/no-such-run/approve",
        "{}",
        &[("Authorization", &bearer(&bob))],
    );
    assert_eq!(none.status, 404, "{}", none.body);

    let digest = get(a, &format!("/api/v1/runs/{run}"), Some(&bob)).json()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = post_json(
        a,
        &path,
        &format!("{{\"digest\": \"{digest}\"}}"),
        &[("Authorization", &bearer(&bob))],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = ok.json();
    assert_eq!(
        (ok["valid"].as_u64(), ok["required"].as_u64()),
        (Some(1), Some(1)),
        "{ok}"
    );
    // The CLI sees the same approval, and the run now passes its gate.
    let status: Value = serde_json::from_str(&e.ok(&["status", &run, "--output", "json"])).unwrap();
    assert_eq!(
        status["approvals"]["valid"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    e.go();
    let o = e.cmd_as("alice").args(["resume", &run]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn serve_on_postgres_lists_and_streams_a_run_without_printing_the_password() {
    use crate::postgres_store_cli::pg::{PASSWORD, pg};
    let url = pg().new_db("serve");
    let e = Env::with_store(|_| url.clone());
    let token = e.token("bob");
    let run = finished_run(&e);
    let s = e.serve();
    let a = s.addr.as_str();
    let runs = get(a, "/api/v1/runs", Some(&token));
    assert_eq!(runs.json()["runs"][0]["id"], run.as_str(), "{}", runs.body);
    let (status, _, mut r) = open(
        a,
        &format!("/api/v1/runs/{run}/events"),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(status, 200);
    let mut events = Vec::new();
    while let Some(ev) = next_event(&mut r) {
        events.push(ev.event);
    }
    assert_eq!(events.last().map(String::as_str), Some("end"), "{events:?}");
    assert!(
        events.iter().filter(|e| *e == "journal").count() >= 5,
        "{events:?}"
    );
    let verified = get(a, "/api/v1/audit/verify", Some(&token));
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert!(!verified.body.contains(PASSWORD) && !runs.body.contains(PASSWORD));
    assert!(
        verified.json()["source"]
            .as_str()
            .unwrap()
            .contains(":***@")
    );
}

#[test]
fn sigterm_stops_serve_while_an_event_stream_is_open() {
    let e = Env::new();
    let token = e.token("bob");
    let mut s = e.serve();
    let a = s.addr.clone();
    let mut deploy = e.deploy();
    let run = until("the run to be listed", || {
        get(&a, "/api/v1/runs", Some(&token)).json()["runs"][0]["id"]
            .as_str()
            .map(str::to_owned)
    });
    let (status, _, mut r) = open(
        &a,
        &format!("/api/v1/runs/{run}/events"),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(status, 200);
    assert!(next_event(&mut r).is_some());
    // The run waits for GO: its stream would never end by itself.
    assert!(
        Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = until("slipway serve to exit", || s.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    e.go();
    assert!(deploy.wait().unwrap().success());
}

#[test]
fn serve_is_in_the_help_with_examples() {
    let o = slipway().arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&o.stdout);
    assert!(top.contains("serve ") && top.contains("web UI"), "{top}");
    let o = slipway().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for want in [
        "--listen",
        "--store",
        "Examples:",
        "--listen 127.0.0.1:0 --output json",
    ] {
        assert!(help.contains(want), "serve --help lacks {want:?}: {help}");
    }
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let e = Env::new();
    let mut s = e.serve();
    assert_eq!(get(&s.addr, "/healthz", None).status, 200);
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = until("slipway serve to exit", || s.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    s.stdout.read_to_string(&mut rest).unwrap();
    let stopped: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(stopped["stopped"], "SIGTERM");
}

#[test]
fn serve_warns_when_listening_beyond_loopback_without_tls() {
    let e = Env::new();
    let mut child = slipway_testkit::Reaped::from(
        Command::new(assert_cmd::cargo::cargo_bin("slipway"))
            .current_dir(e.dir.path())
            .env("SLIPWAY_STORE", &e.store)
            .args(["serve", "--listen", "0.0.0.0:0", "--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(line.contains("\"listening\":\"0.0.0.0:"), "{line}");
    assert!(stderr.contains("warning: serving plain HTTP"), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
}

#[test]
fn serve_on_a_taken_address_says_which_and_exits_2() {
    let e = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = slipway()
        .env("SLIPWAY_STORE", &e.store)
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("failed to listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
}

/// Drives headless Chromium with playwright-core (npm; never a downloaded browser): opens
/// `url` (the sign-in form), types `token` into it and submits, like a person; waits for
/// the run page's event stream to end. Prints `{dom, cookies, after_logout}` as JSON.
const BROWSER_SCRIPT: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const [url, token] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(url);
    await page.fill('input[name=token]', token);
    await Promise.all([page.waitForNavigation(), page.click('#login button')]);
    await page.waitForFunction(() => {
      const e = document.getElementById('stream-state');
      return e && e.textContent.startsWith('ended');
    }, null, { timeout: 30000 });
    const dom = await page.content();
    const cookies = await page.context().cookies();
    await Promise.all([page.waitForNavigation(), page.click('form.logout button')]);
    const after_logout = page.url();
    process.stdout.write(JSON.stringify({ dom, cookies, after_logout }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

/// What [`BROWSER_SCRIPT`] saw.
fn browse(url: &str, token: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("browse.js");
    std::fs::write(&script, BROWSER_SCRIPT).unwrap();
    let root = Command::new("npm").args(["root", "-g"]).output().unwrap();
    let o = Command::new("node")
        .env("NODE_PATH", String::from_utf8_lossy(&root.stdout).trim())
        .env("HOME", dir.path())
        .arg(&script)
        .arg(url)
        .arg(token)
        .output()
        .expect("node and playwright-core (scripts/test.sh installs them)");
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_web_ui_signs_in_shows_a_run_streams_its_journal_and_escapes_spec_text() {
    let e = Env::new();
    let token = e.token("bob");
    let run = finished_run(&e);
    let s = e.serve();
    let a = s.addr.as_str();

    // Without a session a page sends the browser to the login form.
    let page = get(a, &format!("/runs/{run}"), None);
    assert_eq!(page.status, 303, "{}", page.body);
    assert!(
        page.headers
            .contains(&format!("location: /login?next=/runs/{run}"))
    );

    // The login form: a wrong token is refused on the form; a good one starts a session
    // (HttpOnly, SameSite=Strict cookie holding its id, not the token) and goes to
    // `next`, a path of this site only.
    let refused = post_form(a, "/login", "token=slw_nope_nope&next=%2F");
    assert_eq!(refused.status, 401);
    assert!(
        refused.body.contains("token nope is not valid"),
        "{}",
        refused.body
    );
    assert!(!refused.headers.contains("set-cookie"));
    let signed_in = post_form(a, "/login", &format!("token={token}&next=%2Fruns%2F{run}"));
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert!(
        signed_in
            .headers
            .contains(&format!("location: /runs/{run}"))
    );
    let cookie = signed_in
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap();
    assert!(
        cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("slw_"),
        "the token is not the cookie: {cookie}"
    );
    let elsewhere = post_form(
        a,
        "/login",
        &format!("token={token}&next=%2F%2Fevil.example"),
    );
    assert!(
        elsewhere.headers.contains("location: /\r\n"),
        "{}",
        elsewhere.headers
    );

    // The index lists the run, linked.
    let session = session_cookie(a, &token);
    let (_, _, mut r) = open(a, "/", &[("Cookie", &session)]);
    let mut index = String::new();
    r.read_to_string(&mut index).unwrap();
    assert!(
        index.contains(&format!("<a href=\"/runs/{run}\">{run}</a>")),
        "{index}"
    );

    // With it: the steps, the hostile step name as text, CSP forbidding inline script.
    let (status, headers, mut r) = open(a, &format!("/runs/{run}"), &[("Cookie", &session)]);
    let mut html = String::new();
    r.read_to_string(&mut html).unwrap();
    assert_eq!(status, 200, "{html}");
    assert!(headers.contains("content-security-policy: default-src 'self'; script-src 'self'"));
    assert!(html.contains("api&#x2f;install"), "{html}");
    assert!(!html.contains("<script>document"), "{html}");
    assert!(html.contains("&lt;script&gt;document.title="), "{html}");

    // A real browser signs in through the form, as a person does (a token in the URL no
    // longer signs anyone in); the session takes it to the run, and the page's script
    // appends the journal from the event stream until the run's end.
    let seen = browse(&format!("http://{a}/login?next=/runs/{run}"), &token);
    let dom = seen["dom"].as_str().unwrap();
    let cell = |step: &str| {
        format!(
            "<td class=\"step\">{}</td>",
            step.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        )
    };
    assert!(dom.contains(&cell("api/install")), "{dom}");
    assert!(dom.contains(&cell("api/wait-for-go")), "{dom}");
    assert!(dom.contains(&cell(HOSTILE_STEP)), "{dom}");
    assert!(!dom.contains("pwned</title>"), "{dom}");
    assert!(dom.contains("signed in as bob"), "{dom}");
    assert!(dom.contains("step_succeeded api/wait-for-go"), "{dom}");
    // The script keeps the steps table current from the same events.
    assert!(
        dom.contains("<tr data-step=\"api/wait-for-go\" data-live=\"1\">"),
        "{dom}"
    );
    assert!(
        dom.contains("<small id=\"stream-state\">ended: succeeded</small>"),
        "{dom}"
    );
    assert!(!dom.contains(&token), "the token stays out of the page");
    // The browser holds one cookie: the session's id, HttpOnly, Strict — not the token.
    let cookies = seen["cookies"].as_array().unwrap();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0]["name"], "slipway_session");
    assert_eq!(cookies[0]["httpOnly"], true);
    assert_eq!(cookies[0]["sameSite"], "Strict");
    assert!(!cookies[0]["value"].as_str().unwrap().contains("slw_"));
    // Signing out ends that session on the server: its cookie, replayed, is refused.
    assert!(
        seen["after_logout"].as_str().unwrap().ends_with("/login"),
        "{seen}"
    );
    let replayed = format!("slipway_session={}", cookies[0]["value"].as_str().unwrap());
    let (status, _, _) = open(a, "/api/v1/runs", &[("Cookie", &replayed)]);
    assert_eq!(status, 401, "a logged-out session stays out");
}

/// Whether `GET /healthz` on `addr` is answered 200 within `within`.
fn healthz_within(addr: &str, within: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(within)).unwrap();
    if s.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.contains(" 200 ")
}

/// The issue's attack on `slipway serve`: one client opens connections and sends nothing.
/// With the descriptors a process commonly has (here 128, so a few hundred sockets
/// suffice), an uncapped server fills its table and `/healthz` goes unanswered — shown
/// first, with the cap set out of reach; with a cap per client the excess is closed on
/// accept and `/healthz` answers at once. And a connection that sends no request head is
/// closed after the header-read timeout.
#[test]
fn idle_connections_of_one_client_cannot_starve_healthz_and_time_out() {
    let e = Env::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (cap, answers) in [("100000", false), ("32", true)] {
        let s = e.serve_with(
            &[
                "--max-connections-per-client",
                cap,
                "--header-read-timeout",
                "60s",
            ],
            Some(128),
        );
        let addr: std::net::SocketAddr = s.addr.parse().unwrap();
        let held = rt.block_on(async {
            let mut held = Vec::new();
            for _ in 0..300 {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                // Another loopback address is another client.
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                // A connect that hangs means the server no longer accepts at all: its
                // queue is full, which is the attack succeeding.
                match tokio::time::timeout(Duration::from_millis(500), socket.connect(addr)).await {
                    Ok(Ok(c)) => held.push(c),
                    _ => break,
                }
            }
            held
        });
        assert!(held.len() > 100, "{}", held.len());
        assert_eq!(
            healthz_within(&s.addr, Duration::from_secs(3)),
            answers,
            "cap {cap}: /healthz answered {}",
            if answers { "not" } else { "anyway" }
        );
        drop(held);
    }

    let s = e.serve_with(&["--header-read-timeout", "1s"], None);
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 512];
    let closed = match idle.read(&mut buf) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(
        closed,
        "an idle connection was kept past the header-read timeout"
    );
    assert!(healthz_within(&s.addr, Duration::from_secs(5)));
}

/// `POST path` with a body of `content_type` and extra headers.
fn post_with(
    addr: &str,
    path: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// Sign `token` in through the login form; the session cookie (`name=value`) it sets.
fn sign_in(addr: &str, token: &str) -> String {
    let r = post_form(addr, "/login", &format!("token={token}&next=%2F"));
    assert_eq!(r.status, 303, "{}", r.body);
    let line = r
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap()
        .to_owned();
    // Header names were lowercased; take the value from the raw text's position.
    let value = line["set-cookie:".len()..].trim();
    value.split(';').next().unwrap().to_owned()
}

/// A page's HTML with `cookie`.
fn page_with(addr: &str, path: &str, cookie: &str) -> String {
    let (status, _, mut r) = open(addr, path, &[("Cookie", cookie)]);
    let mut html = String::new();
    r.read_to_string(&mut html).unwrap();
    assert_eq!(status, 200, "{html}");
    html
}

/// The user a journal entry's pseudonymous actor stands for, read from the SQLite store's
/// identity table with the `sqlite3` CLI.
fn name_of(e: &Env, actor: &str) -> String {
    let o = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(e.dir.path().join("s.db"))
        .arg(format!("SELECT name FROM identities WHERE id = '{actor}'"))
        .output()
        .expect("the sqlite3 CLI");
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// `slipway deploy` in the background as the holder of `token`, killed and reaped when
/// dropped.
fn deploy_as(e: &Env, token: &str) -> slipway_testkit::Reaped {
    Command::new(assert_cmd::cargo::cargo_bin("slipway"))
        .current_dir(e.dir.path())
        .env("SLIPWAY_TOKEN", token)
        .env_remove("SLIPWAY_OUTPUT")
        .env("SLIPWAY_STORE", &e.store)
        .args(["deploy", "-f", &e.spec, "--env", "staging"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
        .into()
}

/// Three people with their roles on staging: alice (admin), dave (deployer), carol
/// (viewer).
fn team(e: &Env) -> (String, String, String) {
    e.ok_as(
        "alice",
        &["access", "grant", "user:alice", "admin", "--env", "*"],
    );
    e.ok_as(
        "alice",
        &[
            "access",
            "grant",
            "user:dave",
            "deployer",
            "--env",
            "staging",
        ],
    );
    e.ok_as(
        "alice",
        &[
            "access",
            "grant",
            "user:carol",
            "viewer",
            "--env",
            "staging",
        ],
    );
    (e.token("alice"), e.token("dave"), e.token("carol"))
}

/// Pause, resume and roll back over the API are the CLI's operations for the caller: a
/// viewer gets 403 (from the API and no buttons on the page), a deployer's pause reaches
/// the run's live driver, a browser session acts only with its page's anti-forgery value
/// and never from another site, a resume of a run nobody drives is driven by the server,
/// and each request is journaled with the person who made it.
#[test]
fn a_deployer_acts_on_a_run_over_the_api_and_a_viewer_is_refused() {
    let e = Env::new();
    let (alice, dave, carol) = team(&e);
    let s = e.serve();
    let a = s.addr.as_str();
    let mut deploy = deploy_as(&e, &alice);
    let run = until("the run to wait for GO", || {
        let id = get(a, "/api/v1/runs", Some(&dave)).json()["runs"][0]["id"]
            .as_str()?
            .to_owned();
        let j = get(a, &format!("/api/v1/runs/{id}/journal"), Some(&dave)).json();
        j["entries"]
            .as_array()?
            .iter()
            .any(|n| {
                n["event"]["event"] == "step_started" && n["event"]["step"] == "api/wait-for-go"
            })
            .then_some(id)
    });
    let bearer = |t: &str| format!("Bearer {t}");
    let act = |what: &str, token: &str, body: &str| {
        post_json(
            a,
            &format!("/api/v1/runs/{run}/{what}"),
            body,
            &[("Authorization", &bearer(token))],
        )
    };

    // A viewer: 403 naming the role to ask for, for every action; nothing journaled.
    let before = get(a, &format!("/api/v1/runs/{run}/journal"), Some(&dave)).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    for what in ["pause", "resume", "promote", "abort", "rollback"] {
        let r = act(what, &carol, r#"{"reason": "because"}"#);
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert!(
            r.json()["fix"]
                .as_str()
                .unwrap()
                .contains("slipway access grant user:carol deployer --env staging"),
            "{what}: {}",
            r.body
        );
    }
    let after = get(a, &format!("/api/v1/runs/{run}/journal"), Some(&dave)).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        before, after,
        "a refused request leaves no trace in the run"
    );

    // The deployer pauses the live run: its driver (alice's deploy) stops after the step.
    let paused = act("pause", &dave, "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["requested"], "pause");
    e.go();
    assert_eq!(
        deploy.wait().unwrap().code(),
        Some(5),
        "the deploy exits paused"
    );
    let now = get(a, &format!("/api/v1/runs/{run}"), Some(&dave)).json();
    assert_eq!(now["state"], "paused", "{now}");

    // The browser: carol's page has no buttons; dave's has them, with his session's value.
    let carol_cookie = sign_in(a, &carol);
    let carol_page = page_with(a, &format!("/runs/{run}"), &carol_cookie);
    assert!(
        !carol_page.contains("class=\"action\"") && !carol_page.contains(&format!("{run}/resume")),
        "{carol_page}"
    );
    let dave_cookie = sign_in(a, &dave);
    let dave_page = page_with(a, &format!("/runs/{run}"), &dave_cookie);
    for what in ["resume", "abort", "rollback"] {
        assert!(
            dave_page.contains(&format!("/api/v1/runs/{run}/{what}\"")),
            "{what}: {dave_page}"
        );
    }
    assert!(
        !dave_page.contains(&format!("{run}/pause\"")),
        "a paused run"
    );
    let csrf = dave_page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let form = "application/x-www-form-urlencoded";
    let resume = format!("/api/v1/runs/{run}/resume");
    // The cookie alone, a wrong value, or the right one posted from another site: refused.
    for (body, extra) in [
        (String::new(), None),
        (format!("csrf={}", "0".repeat(csrf.len())), None),
        (
            format!("csrf={csrf}"),
            Some(("Origin", "http://evil.example")),
        ),
        (
            format!("csrf={csrf}"),
            Some(("Sec-Fetch-Site", "cross-site")),
        ),
    ] {
        let mut headers = vec![("Cookie", dave_cookie.as_str())];
        headers.extend(extra);
        let r = post_with(a, &resume, form, &body, &headers);
        assert_eq!(r.status, 403, "{body} {extra:?}: {}", r.body);
    }
    // Another session's value does not do either.
    let other_csrf = {
        let alice_cookie = sign_in(a, &alice);
        let p = page_with(a, &format!("/runs/{run}"), &alice_cookie);
        p.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned()
    };
    assert_ne!(other_csrf, csrf);
    let r = post_with(
        a,
        &resume,
        form,
        &format!("csrf={other_csrf}"),
        &[("Cookie", &dave_cookie)],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        get(a, &format!("/api/v1/runs/{run}"), Some(&dave)).json()["state"],
        "paused"
    );

    // dave's own button: back to the run's page; the server drives the run to its end.
    let r = post_with(
        a,
        &resume,
        form,
        &format!("csrf={csrf}"),
        &[("Cookie", &dave_cookie), ("Origin", &format!("http://{a}"))],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.headers.contains(&format!("location: /runs/{run}")),
        "{}",
        r.headers
    );
    until("the server to finish the resumed run", || {
        (get(a, &format!("/api/v1/runs/{run}"), Some(&dave)).json()["state"] == "succeeded")
            .then_some(())
    });

    // Rollback needs a reason (400), then undoes the run for dave.
    let r = act("rollback", &dave, "{}");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("reason"),
        "{}",
        r.body
    );
    let r = act("rollback", &dave, r#"{"reason": "checkout errors"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "rolled_back", "{}", r.body);
    // Promote on a run without a canary: the operation's own refusal, 400.
    let r = act("promote", &dave, "");
    assert!(r.status == 400 || r.status == 409, "{}", r.body);

    // The journal names dave for each of his requests.
    let journal = get(a, &format!("/api/v1/runs/{run}/journal"), Some(&dave)).json();
    let entries = journal["entries"].as_array().unwrap();
    let by = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        entries
            .iter()
            .filter(|n| pred(&n["event"]))
            .map(|n| name_of(&e, n["actor"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(
        by(&|ev| ev["event"] == "control_requested" && ev["control"] == "pause"),
        ["dave"],
        "{journal}"
    );
    assert_eq!(
        by(&|ev| ev["event"] == "state_changed" && ev["from"] == "paused"),
        ["dave"],
        "the resume: {journal}"
    );
    let rollback = by(&|ev| ev["event"] == "state_changed" && ev["to"] == "rolled_back");
    assert_eq!(rollback, ["dave"], "{journal}");
}

/// Abort over the API stops a run nobody drives (waiting for an approval) for good; a
/// viewer cannot.
#[test]
fn a_deployer_aborts_a_waiting_run_over_the_api() {
    let e = Env::new();
    std::fs::write(
        &e.spec,
        SPEC.replace(
            "  staging: { target: { exec: {} } }",
            "  staging:\n    target: { exec: {} }\n    approvals: { required: 1 }",
        ),
    )
    .unwrap();
    let (alice, dave, carol) = team(&e);
    let o = e
        .cmd_as("alice")
        .args([
            "deploy",
            "-f",
            &e.spec,
            "--env",
            "staging",
            "--no-wait",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let run = serde_json::from_slice::<Value>(&o.stdout).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = e.serve();
    let a = s.addr.as_str();
    let path = format!("/api/v1/runs/{run}/abort");
    let r = post_json(
        a,
        &path,
        "",
        &[("Authorization", &format!("Bearer {carol}"))],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // The approver-only button is not dave's; abort is.
    let page = page_with(a, &format!("/runs/{run}"), &sign_in(a, &dave));
    assert!(page.contains(&format!("{run}/abort\"")), "{page}");
    assert!(!page.contains(&format!("{run}/approve\"")), "{page}");
    let page = page_with(a, &format!("/runs/{run}"), &sign_in(a, &alice));
    assert!(
        page.contains(&format!("{run}/approve\"")),
        "an admin approves: {page}"
    );
    let r = post_json(
        a,
        &path,
        "",
        &[("Authorization", &format!("Bearer {dave}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "aborted", "{}", r.body);
    let journal = get(a, &format!("/api/v1/runs/{run}/journal"), Some(&dave)).json();
    let aborted = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["event"]["event"] == "state_changed" && n["event"]["to"] == "aborted")
        .unwrap_or_else(|| panic!("{journal}"));
    assert_eq!(name_of(&e, aborted["actor"].as_str().unwrap()), "dave");
}

/// `slipway --server URL …` as the holder of `token`, from a directory without a store and
/// with `SLIPWAY_STORE` naming one that does not exist: only the server can answer.
fn remote_cmd(addr: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("slipway"));
    c.current_dir(std::env::temp_dir())
        .env_remove("SLIPWAY_TOKEN")
        .env_remove("SLIPWAY_OUTPUT")
        .env("SLIPWAY_STORE", "sqlite:///nonexistent/slipway.db")
        .env("SLIPWAY_SERVER", format!("http://{addr}"))
        .args(args)
        .stdin(Stdio::null());
    if let Some(t) = token {
        c.env("SLIPWAY_TOKEN", t);
    }
    c
}

/// Its exit code and stdout + stderr.
fn remote(addr: &str, token: Option<&str>, args: &[&str]) -> (i32, String) {
    let o = remote_cmd(addr, token, args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

/// Every run command with `--server` (here `SLIPWAY_SERVER`) goes through the API as the
/// caller's token: history, status, logs (and `logs -f` over the event stream), approve,
/// resume (the server drives, the CLI follows), pause, wait, rollback, abort, promote —
/// with the exit codes of local mode, the viewer refused, a missing token 9, an
/// unreachable server 8 (`deploy` through the server: `server_deploy_cli`).
#[test]
fn every_run_command_works_through_the_server() {
    let e = Env::new();
    std::fs::write(
        &e.spec,
        SPEC.replace(
            "  staging: { target: { exec: {} } }",
            "  staging:\n    target: { exec: {} }\n    approvals: { required: 1 }",
        ),
    )
    .unwrap();
    let (_alice, dave, carol) = team(&e);
    e.ok_as(
        "alice",
        &[
            "access", "grant", "user:bob", "approver", "--env", "staging",
        ],
    );
    let bob = e.token("bob");
    let deploy_waiting = || {
        let o = e
            .cmd_as("alice")
            .args([
                "deploy",
                "-f",
                &e.spec,
                "--env",
                "staging",
                "--no-wait",
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["run"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let run = deploy_waiting();
    let s = e.serve();
    let a = s.addr.as_str();

    let (code, text) = remote(a, Some(&carol), &["history", "--output", "json"]);
    assert_eq!(code, 0, "{text}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed[0]["id"], run.as_str(), "{text}");
    let (code, text) = remote(a, Some(&carol), &["history"]);
    assert!(
        code == 0 && text.contains(&run) && text.contains("waiting_for_approval"),
        "{text}"
    );
    let (code, text) = remote(a, Some(&carol), &["status", &run, "--output", "json"]);
    assert_eq!(code, 0, "{text}");
    let status: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["run"]["state"], "waiting_for_approval", "{text}");
    let (code, text) = remote(a, Some(&carol), &["status"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("run {run}")) && text.contains("approvals 0/1"),
        "{text}"
    );

    // The viewer may read but not act (exit 3, the grant to ask for); the approver approves.
    let (code, text) = remote(a, Some(&carol), &["approve", &run]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("approver"), "{text}");
    let (code, text) = remote(a, Some(&carol), &["pause", &run]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("slipway access grant user:carol deployer --env staging"),
        "{text}"
    );
    let (code, text) = remote(a, Some(&bob), &["approve", &run]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(1/1 approvals)"), "{text}");
    let (code, text) = remote(a, Some(&carol), &["logs", &run]);
    assert!(
        code == 0 && text.contains(&format!("run {run} created")),
        "{text}"
    );

    // dave resumes: the server drives the run; the CLI follows it. It pauses at dave's
    // request once the step waiting for GO has started, and the resume exits 5.
    let mut resume = slipway_testkit::Reaped::from(
        remote_cmd(a, Some(&dave), &["resume", &run])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    until("the server to run the step waiting for GO", || {
        let (_, text) = remote(a, Some(&dave), &["logs", &run, "--output", "json"]);
        text.lines()
            .any(|l| l.contains("\"step_started\"") && l.contains("api/wait-for-go"))
            .then_some(())
    });
    let (code, text) = remote(a, Some(&dave), &["pause", &run]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("pause requested for run {run}")),
        "{text}"
    );
    e.go();
    let o = resume.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    let (code, text) = remote(a, Some(&carol), &["wait", &run]);
    assert_eq!(code, 5, "a paused run: {text}");

    // `logs -f` follows the event stream to the run's end while dave's resume finishes it.
    let mut follow = slipway_testkit::Reaped::from(
        remote_cmd(a, Some(&carol), &["logs", "-f", &run])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (code, text) = remote(a, Some(&dave), &["resume", &run]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("run {run} succeeded")), "{text}");
    let o = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(followed.contains("succeeded"), "{followed}");
    let (code, text) = remote(a, Some(&carol), &["wait", &run, "--output", "json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["state"],
        "succeeded"
    );

    let (code, text) = remote(
        a,
        Some(&dave),
        &["rollback", &run, "--reason", "checkout errors"],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("rolled_back"), "{text}");
    let (code, text) = remote(a, Some(&dave), &["status", &run]);
    assert!(code == 0 && text.contains("state rolled_back"), "{text}");

    // A second run: abort (the run ends, `wait` says 6); promote has no canary (2).
    let second = deploy_waiting();
    let (code, text) = remote(a, Some(&dave), &["abort", &second]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("now aborted"), "{text}");
    let (code, text) = remote(a, Some(&dave), &["wait", &second]);
    assert_eq!(code, 6, "{text}");
    let (code, text) = remote(a, Some(&dave), &["promote", &second]);
    assert_eq!(code, 2, "{text}");

    // No token: 9. An unreachable server: 8 naming it. Deploy: not through the server yet.
    let (code, text) = remote(a, None, &["history"]);
    assert_eq!(code, 9, "{text}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, text) = remote(&gone, Some(&dave), &["status", &run]);
    assert_eq!(code, 8, "{text}");
    assert!(
        text.contains(&format!("failed to reach http://{gone}")),
        "{text}"
    );
}

/// The plan an approver reviews in the browser: what it changes against what runs now,
/// waves, gates with their sources, risk, findings, and — for an approver while the run
/// waits — an approve button bound to the plan's digest; posting it (with the page's
/// anti-forgery value) approves as the signed-in person. A viewer sees the plan, no button.
#[test]
fn an_approver_reviews_the_plan_page_and_approves_from_the_browser() {
    let e = Env::new();
    std::fs::write(
        &e.spec,
        SPEC.replace(
            "  staging: { target: { exec: {} } }",
            "  staging:\n    target: { exec: {} }\n    approvals: { required: 1, four_eyes: true }",
        ),
    )
    .unwrap();
    let (_alice, _dave, carol) = team(&e);
    e.ok_as(
        "alice",
        &[
            "access", "grant", "user:bob", "approver", "--env", "staging",
        ],
    );
    let bob = e.token("bob");
    let o = e
        .cmd_as("alice")
        .args([
            "deploy",
            "-f",
            &e.spec,
            "--env",
            "staging",
            "--no-wait",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let run = serde_json::from_slice::<Value>(&o.stdout).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = e.serve();
    let a = s.addr.as_str();
    let digest = get(a, &format!("/api/v1/runs/{run}"), Some(&bob)).json()["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let bob_cookie = sign_in(a, &bob);
    let run_page = page_with(a, &format!("/runs/{run}"), &bob_cookie);
    assert!(
        run_page.contains(&format!("href=\"/runs/{run}/plan\"")),
        "{run_page}"
    );
    let plan = page_with(a, &format!("/runs/{run}/plan"), &bob_cookie);
    assert!(
        plan.contains(&format!("<code id=\"plan-digest\">{digest}</code>")),
        "{plan}"
    );
    assert!(
        plan.contains("<td>api</td><td>(not deployed)</td><td>1.0.0</td>"),
        "{plan}"
    );
    assert!(
        plan.contains("<td>approvals</td><td>1 approver, never the author</td>"),
        "{plan}"
    );
    assert!(
        plan.contains("<td class=\"source\">environments.staging.approvals.required</td>"),
        "{plan}"
    );
    assert!(plan.contains("<h2>Risk "), "{plan}");
    assert!(
        plan.contains(&format!("name=\"digest\" value=\"{digest}\"")),
        "{plan}"
    );
    let carol_plan = page_with(a, &format!("/runs/{run}/plan"), &sign_in(a, &carol));
    assert!(
        carol_plan.contains(&digest) && !carol_plan.contains("class=\"action\""),
        "{carol_plan}"
    );

    let csrf = plan
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let r = post_with(
        a,
        &format!("/api/v1/runs/{run}/approve"),
        "application/x-www-form-urlencoded",
        &format!("csrf={csrf}&digest={digest}"),
        &[("Cookie", &bob_cookie), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let approvals = get(a, &format!("/api/v1/runs/{run}"), Some(&bob)).json()["approvals"].clone();
    assert_eq!(approvals.as_array().unwrap().len(), 1, "{approvals}");
    // The approval is bob's: the pseudonym recorded stands for him.
    assert_eq!(
        name_of(&e, approvals[0]["approver"].as_str().unwrap()),
        "bob"
    );
}
