//! External change management: the record a release names (`metadata.change`) must exist
//! and be approved in the environment's change system, and the run's outcome is written
//! back to it when the run ends. Three systems, each through its documented HTTP API:
//!
//! - **ServiceNow** (Table API): `GET {url}/api/now/table/change_request?number=REC`
//!   with `sysparm_fields=sys_id,number,state,approval,start_date,end_date` and internal
//!   values (`sysparm_display_value=false`). Approved means `approval` is `approved` and
//!   `state` is Scheduled (`-2`) or Implement (`-1`); the window is `start_date` ..
//!   `end_date` (`YYYY-MM-DD HH:MM:SS`, UTC). Written back with `PATCH
//!   {url}/api/now/table/change_request/{sys_id}`: `work_notes`, and when the run ended
//!   the change (succeeded, rolled back, failed) `close_code` (`successful` /
//!   `unsuccessful`) and `close_notes`.
//! - **Jira**: `GET {url}/rest/api/2/issue/KEY`. Approved means the status is one of
//!   `approved_values`, or without them any status in the `indeterminate` category (in
//!   progress: neither new nor done); the window comes from the `start`/`end` pointers
//!   when given (custom fields). Written back as a comment, and the transition the
//!   environment names for the outcome (`POST …/transitions`).
//! - **http**: `GET` the URL with `{change}` replaced; JSON pointers say where the
//!   approval (`approved`, compared with `approved_values`, default `approved`/`true`)
//!   and the window are. Written back as a JSON `POST` to `outcome_url`, when given.
//!
//! A record that does not exist, is not approved, lies outside its window, or cannot be
//! read (an unreachable system, an answer of another shape) is never a pass. Credentials
//! come only from `secret://env/NAME` (`user:password` for basic auth, or `Bearer
//! TOKEN`), are sent in the `Authorization` header, and never appear in what this module
//! returns: every message passes through a [`Redactor`] of them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use slipway_model::plan::{GateKind, Plan};
use slipway_model::spec::{ChangeManagement, ChangeSystem};
use slipway_package::render::Redactor;

/// A change system's request timeout when the spec gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a run ended, as written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every wave and check passed.
    Succeeded,
    /// It failed and was undone.
    RolledBack,
    /// It failed and could not be (fully) undone.
    Failed,
    /// Stopped before it changed anything.
    Aborted,
}

impl Outcome {
    /// The name used in specs (`transitions`) and written back.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

/// What the run that ended was, for the write-back.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Run id.
    pub run: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// The reason it ended so, when it did not succeed.
    pub reason: Option<String>,
}

/// What the change system says about a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeStatus {
    /// The record id as the release names it.
    pub record: String,
    /// Approved (the system's own words in `state`).
    pub approved: bool,
    /// The system's state, e.g. `approval=approved, state=-1 (Implement)`.
    pub state: String,
    /// The implementation window, where the record has one.
    pub start: Option<Timestamp>,
    /// Its end.
    pub end: Option<Timestamp>,
    /// What the write-back addresses (ServiceNow's `sys_id`).
    pub reference: Option<String>,
}

/// Whether a deploy may go, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// The record is approved and `now` is inside its window.
    pub passed: bool,
    /// A stable code: `change-approved`, `change-not-approved`, `change-unknown`,
    /// `change-window-not-open`, `change-window-closed`, `change-unverified`.
    pub code: &'static str,
    /// What was found, e.g. `CHG0030001: approval=requested, state=-3 (Authorize)`.
    pub measured: String,
    /// What a deploy needs.
    pub expected: String,
    /// One sentence with the fix.
    pub detail: String,
}

/// How a request authenticates.
#[derive(Clone)]
enum Auth {
    Basic(String),
    Bearer(String),
}

/// A client of one environment's change system.
#[derive(Clone)]
pub struct ChangeClient {
    config: ChangeManagement,
    auth: Option<Auth>,
    timeout: Duration,
    redactor: Redactor,
    roots: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl std::fmt::Debug for ChangeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChangeClient({} {})",
            self.config.system.as_str(),
            self.config.url
        )
    }
}

/// The record a plan's change gate checks, when the plan has one: (system, record).
pub fn gate_of(plan: &Plan) -> Option<(String, Option<String>)> {
    plan.gates.iter().find_map(|g| match &g.kind {
        GateKind::ChangeApproved { system, record } => Some((system.clone(), record.clone())),
        _ => None,
    })
}

impl ChangeClient {
    /// The client of `plan`'s environment, `None` when it has no change system. `Err`
    /// when its credentials variable is not set.
    pub fn from_plan(plan: &Plan) -> Option<Result<Self, String>> {
        let config = plan.env.change.clone()?;
        Some(Self::new(config, |name| std::env::var(name).ok()))
    }

    /// A client of `config`, reading `secret://env/NAME` credentials through `env`.
    pub fn new(
        config: ChangeManagement,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut secrets = Vec::new();
        let auth = match &config.credentials {
            None => None,
            Some(reference) => {
                let name = reference.strip_prefix("secret://env/").ok_or_else(|| {
                    format!(
                        "the change system's credentials must be `secret://env/NAME`, not `{reference}`"
                    )
                })?;
                let value = env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                    format!(
                        "the change system's credentials {reference} are not set: export {name}=user:password (or {name}='Bearer TOKEN') where slipway runs"
                    )
                })?;
                secrets.push(value.clone());
                Some(match value.strip_prefix("Bearer ") {
                    Some(token) => {
                        secrets.push(token.to_owned());
                        Auth::Bearer(token.to_owned())
                    }
                    None => {
                        let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
                        if let Some((_, password)) = value.split_once(':') {
                            secrets.push(password.to_owned());
                        }
                        secrets.push(encoded.clone());
                        Auth::Basic(encoded)
                    }
                })
            }
        };
        let timeout = match &config.timeout {
            Some(t) => t
                .get()
                .map_err(|e| format!("the change system's timeout: {e}"))?,
            None => DEFAULT_TIMEOUT,
        };
        Ok(Self {
            config,
            auth,
            timeout,
            redactor: Redactor::from_values(secrets.into_iter().filter(|s| s.len() >= 4)),
            roots: None,
        })
    }

    /// Verify `https://` systems with these roots instead of the system's (tests, a
    /// private CA).
    pub fn with_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.roots = Some(Arc::new(roots));
        self
    }

    /// Which system this is.
    pub fn system(&self) -> ChangeSystem {
        self.config.system
    }

    fn base(&self) -> &str {
        self.config.url.trim_end_matches('/')
    }

    /// The record's URL (what is read).
    fn record_url(&self, record: &str) -> Result<url::Url, String> {
        let enc = utf8_percent(record);
        let text = match self.config.system {
            ChangeSystem::Servicenow => format!(
                "{}/api/now/table/change_request?number={enc}&sysparm_limit=1&sysparm_display_value=false&sysparm_fields=sys_id,number,state,approval,start_date,end_date",
                self.base()
            ),
            ChangeSystem::Jira => format!("{}/rest/api/2/issue/{enc}", self.base()),
            ChangeSystem::Http => self.config.url.replace("{change}", &enc),
        };
        url::Url::parse(&text).map_err(|e| format!("the change system's URL `{text}`: {e}"))
    }

    /// One request; the status and body. Errors name the method and URL, never the
    /// credentials.
    async fn request(
        &self,
        method: hyper::Method,
        url: &url::Url,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Bytes), String> {
        let shown = format!("{method} {url}");
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let https = url.scheme() == "https";
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json");
        match &self.auth {
            Some(Auth::Basic(b)) => {
                req = req.header(hyper::header::AUTHORIZATION, format!("Basic {b}"));
            }
            Some(Auth::Bearer(t)) => {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            None => {}
        }
        let payload = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v).map_err(|e| format!("{shown}: {e}"))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| format!("{shown}: {e}"))?;
        let connect_limit = self.timeout.min(crate::metrics::CONNECT_TIMEOUT);
        let roots = self.roots.as_deref().map(Vec::as_slice);
        let attempt = async {
            let tcp = match tokio::time::timeout(
                connect_limit,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
                Err(_) => return Err(format!("no connection within {connect_limit:?}")),
            };
            if https {
                let tls = crate::metrics::tls_connect(tcp, &host, roots).await?;
                exchange(tls, req).await
            } else {
                exchange(tcp, req).await
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r.map_err(|e| format!("{shown}: {e}")),
            Err(_) => Err(format!(
                "{shown}: no answer within {:?} (the change system's timeout)",
                self.timeout
            )),
        };
        result.map_err(|e| self.redactor.redact(&e))
    }

    /// What the change system says about `record`: `Ok(None)` when it has no such record.
    pub async fn status(&self, record: &str) -> Result<Option<ChangeStatus>, String> {
        let url = self.record_url(record)?;
        let (status, body) = self.request(hyper::Method::GET, &url, None).await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(self
                .redactor
                .redact(&format!("GET {url}: HTTP {status}: {}", quote(&body))));
        }
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {url}: the answer is not JSON ({e}): {}", quote(&body)))?;
        let at =
            |ptr: &Option<String>, doc: &serde_json::Value| -> Result<Option<Timestamp>, String> {
                match ptr {
                    None => Ok(None),
                    Some(p) => when(doc.pointer(p)).map_err(|e| format!("GET {url}: {p}: {e}")),
                }
            };
        match self.config.system {
            ChangeSystem::Servicenow => {
                let Some(r) = doc
                    .pointer("/result")
                    .and_then(|r| r.as_array())
                    .map(|a| a.first())
                else {
                    return Err(format!(
                        "GET {url}: not a Table API answer (no `result` list): {}",
                        quote(&body)
                    ));
                };
                let Some(r) = r else { return Ok(None) };
                let text = |k: &str| r.get(k).and_then(value_text).unwrap_or_default();
                let approval = text("approval");
                let state = text("state");
                let approved = approval.eq_ignore_ascii_case("approved")
                    && matches!(
                        state.to_ascii_lowercase().as_str(),
                        "-2" | "-1" | "scheduled" | "implement"
                    );
                Ok(Some(ChangeStatus {
                    record: record.to_owned(),
                    approved,
                    state: format!(
                        "approval={approval}, state={state}{}",
                        servicenow_state(&state)
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    ),
                    start: when(r.get("start_date"))
                        .map_err(|e| format!("GET {url}: start_date: {e}"))?,
                    end: when(r.get("end_date"))
                        .map_err(|e| format!("GET {url}: end_date: {e}"))?,
                    reference: r.get("sys_id").and_then(value_text),
                }))
            }
            ChangeSystem::Jira => {
                let name = doc
                    .pointer("/fields/status/name")
                    .and_then(value_text)
                    .ok_or_else(|| {
                        format!(
                            "GET {url}: not a Jira issue (no fields.status): {}",
                            quote(&body)
                        )
                    })?;
                let category = doc
                    .pointer("/fields/status/statusCategory/key")
                    .and_then(value_text)
                    .unwrap_or_default();
                let approved = if self.config.approved_values.is_empty() {
                    category == "indeterminate"
                } else {
                    self.config
                        .approved_values
                        .iter()
                        .any(|v| v.eq_ignore_ascii_case(&name))
                };
                Ok(Some(ChangeStatus {
                    record: record.to_owned(),
                    approved,
                    state: format!("status={name} (category {category})"),
                    start: at(&self.config.start, &doc)?,
                    end: at(&self.config.end, &doc)?,
                    reference: doc.get("key").and_then(value_text),
                }))
            }
            ChangeSystem::Http => {
                let ptr = self.config.approved.as_deref().unwrap_or("/approved");
                let value = doc.pointer(ptr).and_then(value_text).ok_or_else(|| {
                    format!(
                        "GET {url}: nothing at {ptr} (where `approved` says the approval is): {}",
                        quote(&body)
                    )
                })?;
                let approved = if self.config.approved_values.is_empty() {
                    value.eq_ignore_ascii_case("approved") || value.eq_ignore_ascii_case("true")
                } else {
                    self.config
                        .approved_values
                        .iter()
                        .any(|v| v.eq_ignore_ascii_case(&value))
                };
                Ok(Some(ChangeStatus {
                    record: record.to_owned(),
                    approved,
                    state: format!("{ptr}={value}"),
                    start: at(&self.config.start, &doc)?,
                    end: at(&self.config.end, &doc)?,
                    reference: None,
                }))
            }
        }
    }

    /// May a deploy of `record` go at `now`: it exists, is approved, and `now` is inside
    /// its implementation window (where it has one). Anything unclear is a refusal.
    pub async fn judge(&self, record: Option<&str>, now: Timestamp) -> Judgement {
        let system = self.config.system.as_str();
        let expected = format!("an approved change in {system}, inside its implementation window");
        let Some(record) = record else {
            return Judgement {
                passed: false,
                code: "change-record-missing",
                measured: "no change record".into(),
                expected,
                detail: "set metadata.change to the approved record's id".into(),
            };
        };
        let status = match self.status(record).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Judgement {
                    passed: false,
                    code: "change-unknown",
                    measured: format!("{record}: no such record in {system}"),
                    expected,
                    detail: format!(
                        "{system} has no change {record}; name an existing record in metadata.change"
                    ),
                };
            }
            Err(e) => {
                return Judgement {
                    passed: false,
                    code: "change-unverified",
                    measured: format!("{record}: could not be read"),
                    expected,
                    detail: format!(
                        "the change could not be checked, so it does not count as approved: {e}"
                    ),
                };
            }
        };
        let measured = format!("{record}: {}{}", status.state, window_text(&status));
        if !status.approved {
            return Judgement {
                passed: false,
                code: "change-not-approved",
                measured,
                expected,
                detail: format!(
                    "{record} is not approved for implementation in {system}; get it approved (and scheduled), then deploy"
                ),
            };
        }
        if let Some(start) = status.start
            && now < start
        {
            return Judgement {
                passed: false,
                code: "change-window-not-open",
                measured,
                expected,
                detail: format!(
                    "{record}'s implementation window opens at {start}; deploy then, or have the change rescheduled"
                ),
            };
        }
        if let Some(end) = status.end
            && now >= end
        {
            return Judgement {
                passed: false,
                code: "change-window-closed",
                measured,
                expected,
                detail: format!(
                    "{record}'s implementation window closed at {end}; have the change rescheduled in {system}"
                ),
            };
        }
        Judgement {
            passed: true,
            code: "change-approved",
            measured,
            expected,
            detail: format!("{record} is approved in {system} and inside its window"),
        }
    }

    /// Write the run's outcome back to the record. Returns what was written, in words.
    pub async fn write_back(
        &self,
        record: &str,
        outcome: Outcome,
        run: &RunSummary,
    ) -> Result<String, String> {
        let note = format!(
            "slipway run {} of {} {} in {}: {}{}",
            run.run,
            run.release,
            run.version,
            run.environment,
            outcome.as_str().replace('_', " "),
            run.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        let note = self.redactor.redact(&note);
        let ok = |status: u16, body: &Bytes, what: &str| {
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(self
                    .redactor
                    .redact(&format!("{what}: HTTP {status}: {}", quote(body))))
            }
        };
        match self.config.system {
            ChangeSystem::Servicenow => {
                let sys_id = self
                    .status(record)
                    .await?
                    .and_then(|s| s.reference)
                    .ok_or_else(|| format!("{record} is no longer in ServiceNow"))?;
                let url = url::Url::parse(&format!(
                    "{}/api/now/table/change_request/{}",
                    self.base(),
                    utf8_percent(&sys_id)
                ))
                .map_err(|e| e.to_string())?;
                let mut body = serde_json::json!({ "work_notes": note });
                let close = match outcome {
                    Outcome::Succeeded => Some("successful"),
                    Outcome::RolledBack | Outcome::Failed => Some("unsuccessful"),
                    Outcome::Aborted => None,
                };
                if let Some(code) = close {
                    body["close_code"] = code.into();
                    body["close_notes"] = note.clone().into();
                }
                let (status, resp) = self.request(hyper::Method::PATCH, &url, Some(body)).await?;
                ok(status, &resp, &format!("PATCH {url}"))?;
                Ok(match close {
                    Some(code) => format!("{record}: work note added, close code {code}"),
                    None => format!("{record}: work note added"),
                })
            }
            ChangeSystem::Jira => {
                let base = format!("{}/rest/api/2/issue/{}", self.base(), utf8_percent(record));
                let comment =
                    url::Url::parse(&format!("{base}/comment")).map_err(|e| e.to_string())?;
                let (status, resp) = self
                    .request(
                        hyper::Method::POST,
                        &comment,
                        Some(serde_json::json!({ "body": note })),
                    )
                    .await?;
                ok(status, &resp, &format!("POST {comment}"))?;
                match self.config.transitions.get(outcome.as_str()) {
                    Some(id) => {
                        let url = url::Url::parse(&format!("{base}/transitions"))
                            .map_err(|e| e.to_string())?;
                        let (status, resp) = self
                            .request(
                                hyper::Method::POST,
                                &url,
                                Some(serde_json::json!({ "transition": { "id": id } })),
                            )
                            .await?;
                        ok(status, &resp, &format!("POST {url}"))?;
                        Ok(format!("{record}: commented, transition {id}"))
                    }
                    None => Ok(format!("{record}: commented")),
                }
            }
            ChangeSystem::Http => {
                let Some(target) = &self.config.outcome_url else {
                    return Ok(format!("{record}: no outcome_url, nothing written"));
                };
                let url = url::Url::parse(&target.replace("{change}", &utf8_percent(record)))
                    .map_err(|e| e.to_string())?;
                let body = serde_json::json!({
                    "change": record,
                    "outcome": outcome.as_str(),
                    "run": run.run,
                    "release": run.release,
                    "version": run.version,
                    "environment": run.environment,
                    "note": note,
                });
                let (status, resp) = self.request(hyper::Method::POST, &url, Some(body)).await?;
                ok(status, &resp, &format!("POST {url}"))?;
                Ok(format!("{record}: outcome {} posted", outcome.as_str()))
            }
        }
    }
}

/// The window as a reader wants it after the state.
fn window_text(s: &ChangeStatus) -> String {
    match (s.start, s.end) {
        (None, None) => ", no implementation window".into(),
        (Some(a), Some(b)) => format!(", window {a} .. {b}"),
        (Some(a), None) => format!(", window from {a}"),
        (None, Some(b)) => format!(", window until {b}"),
    }
}

/// ServiceNow's change states by internal value.
fn servicenow_state(state: &str) -> Option<&'static str> {
    Some(match state {
        "-5" => "New",
        "-4" => "Assess",
        "-3" => "Authorize",
        "-2" => "Scheduled",
        "-1" => "Implement",
        "0" => "Review",
        "3" => "Closed",
        "4" => "Canceled",
        _ => return None,
    })
}

/// A JSON value as text: strings as they are, numbers and booleans printed, ServiceNow's
/// `{value, display_value}` objects by their value.
fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Object(o) => o.get("value").and_then(value_text),
        _ => None,
    }
}

/// A point in time from a record: RFC 3339, or `YYYY-MM-DD HH:MM:SS` (ServiceNow's form,
/// UTC); absent, null or empty is no time.
fn when(v: Option<&serde_json::Value>) -> Result<Option<Timestamp>, String> {
    let Some(text) = v.and_then(value_text).filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    let t = text.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(Some(ts));
    }
    t.replace(' ', "T")
        .parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| Some(z.timestamp()))
        .ok_or_else(|| format!("`{t}` is not a time (RFC 3339, or YYYY-MM-DD HH:MM:SS in UTC)"))
}

/// Percent-encode everything but unreserved characters (a record id in a path or query).
fn utf8_percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The start of an answer, for an error that must show what came back.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// One request on a fresh HTTP/1.1 connection over `io`.
async fn exchange<IO>(io: IO, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    // Bounded: a change system answers small documents.
    let body = http_body_util::Limited::new(resp.into_body(), 4 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}
