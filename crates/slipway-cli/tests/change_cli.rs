//! The change gate through the real binary, against a local change system written here
//! (axum, real sockets) that answers the documented shapes: ServiceNow's Table API
//! (`change_request` by `number`, PATCH by `sys_id`), Jira's issue API (status category,
//! comment, transitions) and a plain JSON service read through pointers. It checks basic
//! auth on every request and records what it was sent.
//!
//! Covered: an approved record deploys and its outcome is written back (successful, and
//! unsuccessful after a rollback); not approved, outside its window, a free-text record
//! the system does not know, and missing credentials are refused before a run exists; a
//! change withdrawn between the deploy's start and the first wave is refused by the
//! engine's gate (the run fails with nothing applied); the credentials never reach the
//! output, the journal or the store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

use crate::slipway;

const USER: &str = "svc-slipway";
const PASSWORD: &str = "s3cret-change-pw";

/// One change record as the fake systems keep it.
#[derive(Clone, Debug)]
struct Record {
    approval: String,
    state: String,
    start: String,
    end: String,
    /// Answer "approved" only to the first N reads, then "requested" (a change withdrawn
    /// while a deploy is under way).
    approved_reads: Option<usize>,
}

#[derive(Default)]
struct Fake {
    /// ServiceNow numbers / Jira keys / http ids → record.
    records: BTreeMap<String, Record>,
    /// Every request: method, path, body.
    seen: Vec<(String, String, Value)>,
    reads: BTreeMap<String, usize>,
}

type Shared = Arc<Mutex<Fake>>;

fn authorized(h: &HeaderMap) -> bool {
    use base64::Engine as _;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": "User Not Authenticated"}})),
    )
}

/// The record as read now (counting reads for `approved_reads`).
fn read(f: &mut Fake, id: &str) -> Option<Record> {
    let n = f.reads.entry(id.to_owned()).or_insert(0);
    *n += 1;
    let mut r = f.records.get(id)?.clone();
    if let Some(limit) = r.approved_reads
        && *n > limit
    {
        r.approval = "requested".into();
        r.state = "-3".into();
    }
    Some(r)
}

async fn snow_get(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h) {
        return unauthorized();
    }
    let mut f = s.lock().unwrap();
    let number = q.get("number").cloned().unwrap_or_default();
    f.seen.push((
        "GET".into(),
        format!("change_request?number={number}"),
        Value::Null,
    ));
    let result = match read(&mut f, &number) {
        Some(r) => vec![json!({
            "sys_id": format!("sys-{number}"),
            "number": number,
            "state": r.state,
            "approval": r.approval,
            "start_date": r.start,
            "end_date": r.end,
        })],
        None => vec![],
    };
    (StatusCode::OK, Json(json!({ "result": result })))
}

async fn snow_patch(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(sys_id): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h) {
        return unauthorized();
    }
    s.lock().unwrap().seen.push((
        "PATCH".into(),
        format!("change_request/{sys_id}"),
        body.clone(),
    ));
    (StatusCode::OK, Json(json!({ "result": body })))
}

async fn jira_get(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(key): Path<String>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h) {
        return unauthorized();
    }
    let mut f = s.lock().unwrap();
    f.seen
        .push(("GET".into(), format!("issue/{key}"), Value::Null));
    match read(&mut f, &key) {
        Some(r) => {
            let (name, category) = if r.approval == "approved" {
                ("Awaiting implementation", "indeterminate")
            } else {
                ("Planning", "new")
            };
            (
                StatusCode::OK,
                Json(json!({
                    "key": key,
                    "fields": {
                        "status": { "name": name, "statusCategory": { "key": category } },
                        "customfield_10031": r.start,
                        "customfield_10032": r.end,
                    }
                })),
            )
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(
                json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."]}),
            ),
        ),
    }
}

async fn jira_post(
    State(s): State<Shared>,
    h: HeaderMap,
    Path((key, what)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h) {
        return unauthorized();
    }
    s.lock()
        .unwrap()
        .seen
        .push(("POST".into(), format!("issue/{key}/{what}"), body));
    (StatusCode::CREATED, Json(json!({})))
}

async fn http_get(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h) {
        return unauthorized();
    }
    let mut f = s.lock().unwrap();
    f.seen
        .push(("GET".into(), format!("changes/{id}"), Value::Null));
    match read(&mut f, &id) {
        Some(r) => (
            StatusCode::OK,
            Json(
                json!({"change": {"id": id, "decision": {"approved": r.approval == "approved"}, "window": {"from": r.start, "to": r.end}}}),
            ),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such change"})),
        ),
    }
}

async fn http_post(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&h) {
        return unauthorized();
    }
    s.lock()
        .unwrap()
        .seen
        .push(("POST".into(), format!("outcomes/{id}"), body));
    (StatusCode::OK, Json(json!({})))
}

/// The fake change systems on a free port, served from a thread of their own.
struct Server {
    addr: SocketAddr,
    fake: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    fn start() -> Self {
        let fake: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/api/now/table/change_request", get(snow_get))
            .route("/api/now/table/change_request/{sys_id}", patch(snow_patch))
            .route("/rest/api/2/issue/{key}", get(jira_get))
            .route("/rest/api/2/issue/{key}/{what}", post(jira_post))
            .route("/changes/{id}", get(http_get))
            .route("/outcomes/{id}", post(http_post))
            .with_state(fake.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            addr: rx.recv().unwrap(),
            fake,
            _stop: stop,
        }
    }

    fn record(&self, id: &str, approval: &str, state: &str, start: &str, end: &str) {
        self.fake.lock().unwrap().records.insert(
            id.into(),
            Record {
                approval: approval.into(),
                state: state.into(),
                start: start.into(),
                end: end.into(),
                approved_reads: None,
            },
        );
    }

    fn seen(&self) -> Vec<(String, String, Value)> {
        self.fake.lock().unwrap().seen.clone()
    }

    fn writes(&self) -> Vec<(String, String, Value)> {
        self.seen()
            .into_iter()
            .filter(|(m, ..)| m != "GET")
            .collect()
    }
}

/// ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC), `hours` from now.
fn snow_time(hours: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(hours);
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

struct Env {
    dir: tempfile::TempDir,
    spec: std::path::PathBuf,
    store: String,
}

impl Env {
    /// A release with one install step (failing when `fail`), `change` as its record,
    /// deploying to `prod` whose change system is `change_yaml` (none when empty).
    fn new(record: Option<&str>, change_yaml: &str, fail: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let change = record
            .map(|r| format!(", change: \"{r}\""))
            .unwrap_or_default();
        let step = if fail {
            format!(
                "[ {{ name: install, run: \"touch {d}/installed\", undo: \"rm -f {d}/installed\" }}, {{ name: smoke, run: \"exit 1\" }} ]"
            )
        } else {
            format!(
                "[ {{ name: install, run: \"touch {d}/installed\", undo: \"rm -f {d}/installed\" }} ]"
            )
        };
        // An empty `change_yaml`: the spec names no change system.
        let system = if change_yaml.is_empty() {
            String::new()
        } else {
            format!("    change: {change_yaml}\n")
        };
        let spec = dir.path().join("release.yaml");
        std::fs::write(
            &spec,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.2.0, type: patch{change} }}
services:
  api:
    steps: {step}
environments:
  prod:
    target: {{ exec: {{}} }}
{system}"
            ),
        )
        .unwrap();
        Self {
            store: format!("sqlite://{d}/s.db"),
            dir,
            spec,
        }
    }

    fn run(&self, args: &[&str], with_credentials: bool) -> std::process::Output {
        let mut c = slipway();
        c.env("SLIPWAY_STORE", &self.store)
            .env_remove("CHANGE_CREDS")
            .args(args)
            .arg("-f")
            .arg(&self.spec)
            .args(["--env", "prod"]);
        if with_credentials {
            c.env("CHANGE_CREDS", format!("{USER}:{PASSWORD}"));
        }
        c.output().unwrap()
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        slipway()
            .env("SLIPWAY_STORE", &self.store)
            .args(args)
            .output()
            .unwrap()
    }

    fn installed(&self) -> bool {
        self.dir.path().join("installed").exists()
    }

    /// Runs in the store.
    fn history(&self) -> Vec<Value> {
        let o = self.cmd(&["history", "--output", "json"]);
        serde_json::from_slice::<Value>(&o.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Everything a reader of this store can see, for leak checks: outputs given, the
    /// journal of every run, and the store's bytes.
    fn assert_no_credentials(&self, outputs: &[&std::process::Output]) {
        let mut all = String::new();
        for o in outputs {
            all.push_str(&String::from_utf8_lossy(&o.stdout));
            all.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        for r in self.history() {
            let id = r["id"].as_str().unwrap();
            all.push_str(&String::from_utf8_lossy(
                &self.cmd(&["logs", id, "--output", "json"]).stdout,
            ));
        }
        for f in ["s.db", "s.db-wal"] {
            if let Ok(b) = std::fs::read(self.dir.path().join(f)) {
                all.push_str(&String::from_utf8_lossy(&b));
            }
        }
        assert!(
            !all.contains(PASSWORD),
            "the change system's password leaked"
        );
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        assert!(!all.contains(&basic), "the basic-auth header leaked");
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn servicenow(s: &Server) -> String {
    format!(
        "{{ system: servicenow, url: \"http://{}\", credentials: secret://env/CHANGE_CREDS }}",
        s.addr
    )
}

#[test]
fn servicenow_approved_deploys_and_the_outcome_is_written_back() {
    let s = Server::start();
    s.record(
        "CHG0030001",
        "approved",
        "-1",
        &snow_time(-1),
        &snow_time(2),
    );
    let e = Env::new(Some("CHG0030001"), &servicenow(&s), false);

    let plan = e.run(&["plan"], true);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(text(&plan).contains("change-approved"), "{}", text(&plan));
    assert!(text(&plan).contains("CHG0030001"), "{}", text(&plan));

    let deploy = e.run(&["deploy"], true);
    assert_eq!(deploy.status.code(), Some(0), "{}", text(&deploy));
    assert!(e.installed());
    assert!(
        text(&deploy).contains("close code successful"),
        "{}",
        text(&deploy)
    );
    // The engine checked the record again before the first wave, journaled.
    let run = e.history()[0]["id"].as_str().unwrap().to_owned();
    let logs = text(&e.cmd(&["logs", &run, "--output", "json"]));
    assert!(logs.contains("change-record"), "{logs}");

    // Plan 1, deploy: its plan 1 + the start 1 + the engine 1, then the write-back.
    let seen = s.seen();
    let gets = seen.iter().filter(|(m, ..)| m == "GET").count();
    assert_eq!(gets, 5, "{seen:?}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (method, path, body) = &writes[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("PATCH", "change_request/sys-CHG0030001")
    );
    assert_eq!(body["close_code"], "successful");
    assert!(
        body["work_notes"].as_str().unwrap().contains(&run),
        "{body}"
    );
    assert!(
        body["close_notes"].as_str().unwrap().contains("succeeded"),
        "{body}"
    );
    e.assert_no_credentials(&[&plan, &deploy]);
}

#[test]
fn servicenow_not_approved_outside_its_window_or_unknown_is_refused_before_a_run_exists() {
    let s = Server::start();
    s.record(
        "CHG0000002",
        "requested",
        "-3",
        &snow_time(-1),
        &snow_time(2),
    );
    s.record(
        "CHG0000003",
        "approved",
        "-2",
        &snow_time(-5),
        &snow_time(-1),
    );
    s.record("CHG0000004", "approved", "-2", &snow_time(3), &snow_time(6));
    for (record, code) in [
        ("CHG0000002", "change-not-approved"),
        ("CHG0000003", "change-window-closed"),
        ("CHG0000004", "change-window-not-open"),
        // A free-text record the system does not know.
        ("lol-any-string", "change-unknown"),
    ] {
        let e = Env::new(Some(record), &servicenow(&s), false);
        let plan = e.run(&["plan", "--output", "json"], true);
        assert!(text(&plan).contains(code), "{record}: {}", text(&plan));
        let deploy = e.run(&["deploy"], true);
        assert_eq!(deploy.status.code(), Some(3), "{record}: {}", text(&deploy));
        assert!(text(&deploy).contains(code), "{record}: {}", text(&deploy));
        assert!(!e.installed(), "{record}");
        assert!(e.history().is_empty(), "{record}: no run was created");
        e.assert_no_credentials(&[&plan, &deploy]);
    }
    assert!(
        s.writes().is_empty(),
        "nothing is written back for refused deploys"
    );

    // No record named at all, and no credentials in the environment.
    let e = Env::new(None, &servicenow(&s), false);
    let plan = e.run(&["plan"], true);
    assert!(
        text(&plan).contains("change-record-missing"),
        "{}",
        text(&plan)
    );
    let e = Env::new(Some("CHG0030001"), &servicenow(&s), false);
    let deploy = e.run(&["deploy"], false);
    assert_eq!(deploy.status.code(), Some(3), "{}", text(&deploy));
    assert!(text(&deploy).contains("CHANGE_CREDS"), "{}", text(&deploy));
    assert!(!e.installed());
}

/// A gate the plan shows is enforced: the change is withdrawn after the deploy started
/// (approved for the plan's and the start's reads, then not), and the engine's own check
/// before the first wave fails the run with nothing applied.
#[test]
fn a_change_withdrawn_before_the_first_wave_fails_the_run_with_nothing_applied() {
    let s = Server::start();
    s.record(
        "CHG0000005",
        "approved",
        "-1",
        &snow_time(-1),
        &snow_time(2),
    );
    s.fake
        .lock()
        .unwrap()
        .records
        .get_mut("CHG0000005")
        .unwrap()
        .approved_reads = Some(2);
    let e = Env::new(Some("CHG0000005"), &servicenow(&s), false);
    let deploy = e.run(&["deploy"], true);
    assert_ne!(deploy.status.code(), Some(0), "{}", text(&deploy));
    assert!(!e.installed(), "no step ran");
    let runs = e.history();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["state"], "failed", "{runs:?}");
    let run = runs[0]["id"].as_str().unwrap();
    let logs = text(&e.cmd(&["logs", run, "--output", "json"]));
    assert!(logs.contains("change-record"), "{logs}");
    assert!(
        logs.contains("change-not-approved") || logs.contains("not approved"),
        "{logs}"
    );
    // The outcome is written back: unsuccessful.
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].2["close_code"], "unsuccessful");
}

#[test]
fn a_rolled_back_run_is_written_back_as_unsuccessful() {
    let s = Server::start();
    s.record(
        "CHG0000006",
        "approved",
        "-1",
        &snow_time(-1),
        &snow_time(2),
    );
    let e = Env::new(Some("CHG0000006"), &servicenow(&s), true);
    let deploy = e.run(&["deploy"], true);
    assert_ne!(deploy.status.code(), Some(0), "{}", text(&deploy));
    assert_eq!(e.history()[0]["state"], "rolled_back");
    assert!(!e.installed(), "undone");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let body = &writes[0].2;
    assert_eq!(body["close_code"], "unsuccessful");
    assert!(
        body["close_notes"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{body}"
    );
    e.assert_no_credentials(&[&deploy]);
}

#[test]
fn jira_status_category_gates_and_a_transition_is_applied_on_success() {
    let s = Server::start();
    s.record("OPS-42", "approved", "", "", "");
    s.record("OPS-43", "requested", "", "", "");
    let jira = format!(
        "{{ system: jira, url: \"http://{}\", credentials: secret://env/CHANGE_CREDS, transitions: {{ succeeded: \"31\", rolled_back: \"41\" }} }}",
        s.addr
    );
    let refused = Env::new(Some("OPS-43"), &jira, false);
    let o = refused.run(&["deploy"], true);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("change-not-approved"), "{}", text(&o));
    assert!(
        text(&o).contains("Planning"),
        "the system's own status: {}",
        text(&o)
    );

    let e = Env::new(Some("OPS-42"), &jira, false);
    let o = e.run(&["deploy"], true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let writes = s.writes();
    let paths: Vec<&str> = writes.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["issue/OPS-42/comment", "issue/OPS-42/transitions"],
        "{writes:?}"
    );
    assert_eq!(writes[1].2["transition"]["id"], "31");
    e.assert_no_credentials(&[&o]);
}

#[test]
fn a_generic_json_system_is_read_through_pointers_and_told_the_outcome() {
    let s = Server::start();
    let now = jiff::Timestamp::now();
    let hour = jiff::SignedDuration::from_hours(1);
    s.record(
        "REQ-7",
        "approved",
        "",
        &(now - hour).to_string(),
        &(now + hour).to_string(),
    );
    s.record(
        "REQ-8",
        "approved",
        "",
        &(now + hour).to_string(),
        &(now + hour * 2).to_string(),
    );
    let http = format!(
        "{{ system: http, url: \"http://{a}/changes/{{change}}\", credentials: secret://env/CHANGE_CREDS, approved: /change/decision/approved, start: /change/window/from, end: /change/window/to, outcome_url: \"http://{a}/outcomes/{{change}}\" }}",
        a = s.addr
    );
    let later = Env::new(Some("REQ-8"), &http, false);
    let o = later.run(&["deploy"], true);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("change-window-not-open"), "{}", text(&o));

    let e = Env::new(Some("REQ-7"), &http, false);
    let o = e.run(&["deploy"], true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].1, "outcomes/REQ-7");
    assert_eq!(writes[0].2["outcome"], "succeeded");
    assert_eq!(writes[0].2["environment"], "prod");
}

#[test]
fn a_change_system_configured_with_literal_credentials_is_refused_by_validation() {
    let e = Env::new(
        Some("CHG1"),
        "{ system: servicenow, url: \"http://127.0.0.1:9\", credentials: \"admin:hunter2\" }",
        false,
    );
    let o = e.run(&["plan"], false);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("change-credentials"), "{}", text(&o));
    assert!(
        text(&o).contains("environments.prod.change.credentials"),
        "{}",
        text(&o)
    );
}

/// The change system belongs to the admin policy: a spec that names no change system, or
/// one that says "approved" to anything, still has its record checked in the policy's
/// system — and the outcome is written back there, not to the spec's.
#[test]
fn the_policys_change_system_is_asked_whatever_the_spec_names() {
    let policy_system = Server::start();
    policy_system.record(
        "CHG0000042",
        "approved",
        "-2",
        &snow_time(-1),
        &snow_time(2),
    );
    let yes_man = Server::start();
    yes_man.record(
        "lol-any-string",
        "approved",
        "-2",
        &snow_time(-1),
        &snow_time(2),
    );
    let apply = |e: &Env| {
        let p = e.dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            format!(
                "apiVersion: slipway/v1\nkind: Policy\nenvironments:\n  prod:\n    change_record: true\n    change: {}\n",
                servicenow(&policy_system)
            ),
        )
        .unwrap();
        let o = e.cmd(&["policy", "apply", "-f", &p.display().to_string()]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    };
    for spec_system in [String::new(), servicenow(&yes_man)] {
        let e = Env::new(Some("lol-any-string"), &spec_system, false);
        // Without the policy the spec decides: free text passes, or the yes-man says yes.
        let plan = e.run(&["plan", "--output", "json"], true);
        assert!(!text(&plan).contains("change-unknown"), "{}", text(&plan));
        apply(&e);
        let plan = e.run(&["plan", "--output", "json"], true);
        assert!(text(&plan).contains("change-unknown"), "{}", text(&plan));
        if !spec_system.is_empty() {
            assert!(
                text(&plan).contains("policy-change-system"),
                "{}",
                text(&plan)
            );
        }
        let deploy = e.run(&["deploy"], true);
        assert_eq!(deploy.status.code(), Some(3), "{}", text(&deploy));
        assert!(!e.installed());
    }
    // The record the policy's system approved deploys, and is told the outcome there.
    let e = Env::new(Some("CHG0000042"), &servicenow(&yes_man), false);
    apply(&e);
    let deploy = e.run(&["deploy"], true);
    assert_eq!(deploy.status.code(), Some(0), "{}", text(&deploy));
    assert!(e.installed());
    assert!(
        policy_system.writes().iter().any(|(m, _, _)| m == "PATCH"),
        "{:?}",
        policy_system.seen()
    );
    assert!(yes_man.writes().is_empty(), "{:?}", yes_man.seen());
}
