//! Notifications of run events — started, waiting for approval, paused, rollback started,
//! rollback finished, rolled back, finished — to the sinks a spec's `notifications` names: Slack-compatible webhooks
//! (signed, retried with backoff), SMTP email, and files of JSON lines.
//!
//! A [`Notifier`] is fed the engine's [`Notice`]s (`Engine::with_notices`), turns the
//! state changes that matter into [`Message`]s and delivers each to every sink that
//! subscribed to its event. It never prints: each attempt's outcome is returned as a
//! [`Delivery`] for the caller to show. Failing sinks never fail the run.
//!
//! Secrets: the webhook signing secret is used only as the HMAC key; every text leaving
//! through a sink is passed through [`Redactor`], which masks the values it is given (the
//! signing secret, the resolved `secret://` values of the environment) and the
//! `user:password@` part of URLs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use jiff::Timestamp;
use serde::Serialize;
use slipway_engine::{EngineEvent, Notice, RunState};
use slipway_model::plan::Plan;
use slipway_model::spec::{Notification, NotifyEvent};

use crate::handover::strip_userinfo;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-slipway-signature";

/// The env var the CLI reads the webhook signing secret from.
pub const SECRET_ENV: &str = "SLIPWAY_WEBHOOK_SECRET";

/// Masks secret values and URL credentials in outgoing text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Mask these values (empty ones are ignored: masking "" would mask everything).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 3).collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }
    /// The text with every secret masked as `***`.
    pub fn apply(&self, text: &str) -> String {
        let mut t = text
            .split(' ')
            .map(strip_userinfo)
            .collect::<Vec<_>>()
            .join(" ");
        for s in &self.secrets {
            t = t.replace(s.as_str(), "***");
        }
        t
    }
}

/// Where and how to deliver, beyond what the spec says.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// HMAC key for webhook signatures (from [`SECRET_ENV`]); unsigned when `None`.
    pub webhook_secret: Option<String>,
    /// SMTP relay host (plain SMTP; e.g. a local MTA or relay).
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// Sender address.
    pub smtp_from: String,
    /// Attempts per webhook delivery (at least 1).
    pub attempts: u32,
    /// First backoff; doubles after each failed attempt.
    pub backoff: Duration,
    /// Relative `file` sinks resolve against this directory (the spec's).
    pub workdir: PathBuf,
    /// Values to mask in every message.
    pub redact: Vec<String>,
    /// How email reaches the relay: plain, STARTTLS or implicit TLS (SMTPS).
    pub smtp_tls: SmtpTls,
    /// PEM file of the CA certificates to trust for `https://` webhooks and SMTP over TLS
    /// (a private CA); the system roots when `None`.
    pub ca_file: Option<PathBuf>,
}

/// How email reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain SMTP (a local relay the operator controls).
    #[default]
    None,
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
}

impl SmtpTls {
    /// Parse `none`, `starttls` or `tls`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" | "" => Some(Self::None),
            "starttls" => Some(Self::StartTls),
            "tls" | "smtps" => Some(Self::Implicit),
            _ => None,
        }
    }
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            smtp_host: "localhost".into(),
            smtp_port: 25,
            smtp_from: "slipway@localhost".into(),
            attempts: 4,
            backoff: Duration::from_millis(500),
            workdir: PathBuf::from("."),
            redact: Vec::new(),
            smtp_tls: SmtpTls::None,
            ca_file: None,
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// What happened.
    pub event: NotifyEvent,
    /// Run id.
    pub run: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// State the run entered.
    pub state: String,
    /// Why, when known.
    pub reason: Option<String>,
    /// When.
    pub at: Timestamp,
    /// One line for people.
    pub text: String,
    /// The handover pack (Markdown), for `handover` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
    /// For `rollback_started` and `rollback_finished`: what is restored and what serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackInfo>,
}

/// What stakeholders hear about a rollback besides its reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollbackInfo {
    /// Services being rolled back, with the version each goes back to (`None`: nothing
    /// served before this run, so it is stopped).
    pub restoring: std::collections::BTreeMap<String, Option<String>>,
    /// How long the rollback is expected to take, in seconds: the RTO the last rollback
    /// rehearsal of this release measured, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_seconds: Option<f64>,
    /// When it finished: the version each service is on now (`None`: none runs).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub serving: std::collections::BTreeMap<String, Option<String>>,
}

/// The outcome of delivering one message to one sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// `webhook`, `email` or `file`.
    pub sink: String,
    /// Where (URL without credentials, recipients, path).
    pub target: String,
    /// The event delivered.
    pub event: NotifyEvent,
    /// Attempts made.
    pub attempts: u32,
    /// `None` when delivered, else the last error.
    pub error: Option<String>,
}

/// Which notification events a journaled event is.
pub fn classify(event: &EngineEvent) -> Vec<NotifyEvent> {
    let EngineEvent::StateChanged { from, to, .. } = event else {
        return Vec::new();
    };
    let mut v = Vec::new();
    match to {
        RunState::Running
            if matches!(
                from,
                RunState::Pending | RunState::WaitingForWindow | RunState::WaitingForApproval
            ) =>
        {
            v.push(NotifyEvent::Started);
        }
        RunState::WaitingForApproval if *from != RunState::WaitingForApproval => {
            v.push(NotifyEvent::WaitingForApproval);
        }
        RunState::Paused => v.push(NotifyEvent::Paused),
        RunState::RollingBack if *from != RunState::RollingBack => {
            v.push(NotifyEvent::RollbackStarted);
        }
        RunState::RolledBack => v.push(NotifyEvent::RolledBack),
        _ => {}
    }
    if *from == RunState::RollingBack && *to != RunState::RollingBack {
        v.push(NotifyEvent::RollbackFinished);
    }
    if to.is_terminal() {
        v.push(NotifyEvent::Finished);
    }
    v
}

fn event_name(e: NotifyEvent) -> &'static str {
    match e {
        NotifyEvent::Started => "started",
        NotifyEvent::WaitingForApproval => "waiting for approval",
        NotifyEvent::Paused => "paused",
        NotifyEvent::RolledBack => "rolled back",
        NotifyEvent::Finished => "finished",
        NotifyEvent::RollbackStarted => "rollback started",
        NotifyEvent::RollbackFinished => "rollback finished",
        NotifyEvent::Handover => "handover",
    }
}

/// Delivers run notifications for one plan's sinks.
#[derive(Debug, Clone)]
pub struct Notifier {
    sinks: Vec<Notification>,
    release: String,
    version: String,
    environment: String,
    settings: NotifySettings,
    redactor: Redactor,
    last_reason: Option<String>,
}

impl Notifier {
    /// A notifier for the sinks of `plan` (none when it names none).
    pub fn new(plan: &Plan, settings: NotifySettings) -> Self {
        let mut secrets = settings.redact.clone();
        secrets.extend(settings.webhook_secret.clone());
        Self {
            sinks: plan.notifications.clone(),
            release: plan.release.name.clone(),
            version: plan.release.version.clone(),
            environment: plan.environment.clone(),
            redactor: Redactor::new(secrets),
            settings,
            last_reason: None,
        }
    }

    /// Whether any sink is configured.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// The messages a notice produces.
    pub fn messages(&mut self, n: &Notice) -> Vec<Message> {
        self.messages_with(n, None)
    }

    /// The messages a notice produces; `info` is what the caller found out about a
    /// rollback this notice starts or ends (services, versions, expected duration).
    pub fn messages_with(&mut self, n: &Notice, info: Option<&RollbackInfo>) -> Vec<Message> {
        if let EngineEvent::StateChanged {
            reason: Some(r), ..
        } = &n.event
        {
            self.last_reason = Some(r.clone());
        }
        let EngineEvent::StateChanged { to, reason, .. } = &n.event else {
            return Vec::new();
        };
        classify(&n.event)
            .into_iter()
            .map(|event| {
                // A rollback's reason is on the transition into rolling back, not the last.
                let reason = reason.clone().or_else(|| {
                    matches!(to, RunState::RolledBack | RunState::Failed)
                        .then(|| self.last_reason.clone())
                        .flatten()
                });
                let mut text = format!(
                    "{} {} → {}: {} (run {}, {})",
                    self.release,
                    self.version,
                    self.environment,
                    event_name(event),
                    n.run_id,
                    to.as_str()
                );
                if let Some(r) = &reason {
                    text.push_str(&format!(": {r}"));
                }
                let rollback = match event {
                    NotifyEvent::RollbackStarted | NotifyEvent::RollbackFinished => {
                        let info = info.cloned().unwrap_or_default();
                        text.push_str(&describe_rollback(event, &info));
                        Some(info)
                    }
                    _ => None,
                };
                Message {
                    event,
                    run: n.run_id.clone(),
                    release: self.release.clone(),
                    version: self.version.clone(),
                    environment: self.environment.clone(),
                    state: to.as_str().to_owned(),
                    reason: reason.map(|r| self.redactor.apply(&r)),
                    at: n.at,
                    text: self.redactor.apply(&text),
                    rollback,
                    handover: None,
                }
            })
            .collect()
    }

    /// Deliver the messages of a notice to every subscribed sink.
    pub async fn handle(&mut self, n: &Notice) -> Vec<Delivery> {
        self.handle_with(n, None).await
    }

    /// [`Self::handle`] with what the caller knows of a rollback (see
    /// [`Self::messages_with`]).
    pub async fn handle_with(&mut self, n: &Notice, info: Option<&RollbackInfo>) -> Vec<Delivery> {
        let mut out = Vec::new();
        for m in self.messages_with(n, info) {
            for sink in &self.sinks {
                if !sink.on.is_empty() && !sink.on.contains(&m.event) {
                    continue;
                }
                if let Some(url) = &sink.webhook {
                    out.push(self.webhook(url, &m).await);
                }
                if !sink.email.is_empty() {
                    out.push(self.email(&sink.email, &m).await);
                }
                if let Some(path) = &sink.file {
                    out.push(self.file(path, &m));
                }
            }
        }
        out
    }

    /// Deliver a succeeded run's handover pack (Markdown) to the sinks that list
    /// `handover` in their `on` (the support team's channels; a sink listening to every
    /// event does not get it — a pack is a document, not an event line).
    pub async fn deliver_handover(
        &self,
        run: &str,
        at: Timestamp,
        markdown: &str,
    ) -> Vec<Delivery> {
        let m = Message {
            event: NotifyEvent::Handover,
            run: run.to_owned(),
            release: self.release.clone(),
            version: self.version.clone(),
            environment: self.environment.clone(),
            state: "succeeded".into(),
            reason: None,
            at,
            text: self.redactor.apply(&format!(
                "{} {} → {}: handover (run {run})\n\n{markdown}",
                self.release, self.version, self.environment
            )),
            rollback: None,
            handover: Some(self.redactor.apply(markdown)),
        };
        let mut out = Vec::new();
        for sink in self
            .sinks
            .iter()
            .filter(|s| s.on.contains(&NotifyEvent::Handover))
        {
            if let Some(url) = &sink.webhook {
                out.push(self.webhook(url, &m).await);
            }
            if !sink.email.is_empty() {
                out.push(self.email(&sink.email, &m).await);
            }
            if let Some(path) = &sink.file {
                out.push(self.file(path, &m));
            }
        }
        out
    }

    /// Whether a sink wants handover packs.
    pub fn wants_handover(&self) -> bool {
        self.sinks
            .iter()
            .any(|s| s.on.contains(&NotifyEvent::Handover))
    }

    /// Consume notices until the channel closes; return every delivery.
    pub async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    ) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(n) = rx.recv().await {
            all.extend(self.handle(&n).await);
        }
        all
    }

    /// [`Self::run`] over notices with what the caller knows of the rollbacks they start
    /// or end.
    pub async fn run_with(
        mut self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(Notice, Option<RollbackInfo>)>,
    ) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some((n, info)) = rx.recv().await {
            all.extend(self.handle_with(&n, info.as_ref()).await);
        }
        all
    }

    /// The Slack-compatible body of a message: `text` for Slack, `slipway` for machines.
    pub fn webhook_body(m: &Message) -> String {
        serde_json::json!({ "text": m.text, "username": "slipway", "slipway": m }).to_string()
    }

    async fn webhook(&self, url: &str, m: &Message) -> Delivery {
        let body = Self::webhook_body(m);
        let (attempts, error) = post_json(url, &body, &self.settings).await;
        Delivery {
            sink: "webhook".into(),
            target: strip_userinfo(url),
            event: m.event,
            attempts,
            error,
        }
    }

    async fn email(&self, to: &[String], m: &Message) -> Delivery {
        let result = send_mail(&self.settings, to, m).await;
        Delivery {
            sink: "email".into(),
            target: to.join(", "),
            event: m.event,
            attempts: 1,
            error: result.err(),
        }
    }

    fn file(&self, path: &str, m: &Message) -> Delivery {
        let p = self.settings.workdir.join(path);
        let result = append_line(&p, &serde_json::to_string(m).unwrap_or_default());
        Delivery {
            sink: "file".into(),
            target: p.display().to_string(),
            event: m.event,
            attempts: 1,
            error: result.err(),
        }
    }
}

/// POST a JSON document to a webhook as notifications are sent: signed
/// (`x-slipway-signature`) when a secret is set, retried with doubling backoff on errors
/// and 5xx/408/429 answers. Returns the attempts made and the last error, if it never
/// succeeded. Also what `slipway audit checkpoint --webhook` sends its checkpoints with.
pub async fn post_json(url: &str, body: &str, settings: &NotifySettings) -> (u32, Option<String>) {
    let signature = settings.webhook_secret.as_ref().map(|s| sign(s, body));
    let mut attempts = 0;
    let mut delay = settings.backoff;
    let mut error = None;
    while attempts < settings.attempts.max(1) {
        attempts += 1;
        match post(url, body, signature.as_deref(), settings).await {
            Ok(status) if (200..300).contains(&status) => {
                error = None;
                break;
            }
            Ok(status) => {
                error = Some(format!("the receiver answered HTTP {status}"));
                // Other client errors will not change on retry.
                if (400..500).contains(&status) && status != 408 && status != 429 {
                    break;
                }
            }
            Err(e) => error = Some(e),
        }
        if attempts < settings.attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    (attempts, error)
}

/// The rollback part of a message's text: what is restored and how long it should take,
/// or what serves now.
fn describe_rollback(event: NotifyEvent, info: &RollbackInfo) -> String {
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "nothing".into());
    let list = |m: &std::collections::BTreeMap<String, Option<String>>| {
        m.iter()
            .map(|(s, v)| format!("{s} {}", version(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match event {
        NotifyEvent::RollbackStarted => {
            let mut t = String::new();
            if !info.restoring.is_empty() {
                t.push_str(&format!("; restoring {}", list(&info.restoring)));
            }
            match info.expected_seconds {
                Some(s) => t.push_str(&format!(
                    "; expected to take about {s:.0}s (the last rollback rehearsal's RTO)"
                )),
                None => t.push_str("; no rehearsal measured how long it takes"),
            }
            t
        }
        _ if !info.serving.is_empty() => format!("; serving now: {}", list(&info.serving)),
        _ => String::new(),
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &str, body: &str) -> String {
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body.as_bytes());
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        // HMAC accepts keys of any length; this arm is unreachable but keeps us panic-free.
        Err(_) => String::new(),
    }
}

fn append_line(path: &Path, line: &str) -> Result<(), String> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("append to {}: {e}", path.display()))
}

/// The roots to trust: the certificates of `ca_file`, or the system's.
fn trusted_roots(
    ca_file: Option<&Path>,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    match ca_file {
        Some(ca) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("read the CA file {}: {e}", ca.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    format!(
                        "read the CA file {}: not PEM certificates: {e}",
                        ca.display()
                    )
                })?;
            if certs.is_empty() {
                return Err(format!(
                    "read the CA file {}: it holds no certificate",
                    ca.display()
                ));
            }
            Ok(certs)
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err("find trusted roots: this machine has no system CA certificates; install ca-certificates or set SLIPWAY_NOTIFY_CA_FILE".into());
            }
            Ok(found.certs)
        }
    }
}

/// POST to an `https://` webhook: TLS with certificate and host name verification against
/// the trusted roots, then HTTP/1.1 on that connection.
async fn post_tls(
    uri: hyper::Uri,
    body: &str,
    signature: Option<&str>,
    s: &NotifySettings,
) -> Result<u16, String> {
    use std::sync::Arc;
    let host = uri
        .host()
        .ok_or_else(|| "parse the webhook URL: it names no host".to_owned())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(trusted_roots(s.ca_file.as_deref())?);
    if added == 0 {
        return Err("trust the webhook's certificate: no usable CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("use {host} as a TLS server name: {e}"))?;
    let limit = Duration::from_secs(10);
    let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| "reach the webhook: timed out after 10s".to_owned())?
        .map_err(|e| format!("reach the webhook: {e}"))?;
    let tls = tokio::time::timeout(
        limit,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| "reach the webhook: the TLS handshake timed out after 10s".to_owned())?
    .map_err(|e| format!("reach the webhook over TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("reach the webhook: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if port == 443 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let mut req = hyper::Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("user-agent", "slipway");
    if let Some(sig) = signature {
        req = req.header(SIGNATURE_HEADER, sig);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| format!("build the webhook request: {e}"))?;
    let resp = tokio::time::timeout(limit, sender.send_request(req))
        .await
        .map_err(|_| "reach the webhook: timed out after 10s".to_owned())?
        .map_err(|e| format!("reach the webhook: {e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn post(
    url: &str,
    body: &str,
    signature: Option<&str>,
    s: &NotifySettings,
) -> Result<u16, String> {
    if url.starts_with("https://") {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("parse webhook URL {}: {e}", strip_userinfo(url)))?;
        return post_tls(uri, body, signature, s).await;
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("parse webhook URL {}: {e}", strip_userinfo(url)))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .header("user-agent", "slipway");
    if let Some(s) = signature {
        req = req.header(SIGNATURE_HEADER, s);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| format!("build the webhook request: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "reach the webhook: timed out after 10s".to_owned())?
        .map_err(|e| format!("reach the webhook: {e}"))?;
    let status = resp.status().as_u16();
    // Drain the body so the connection closes cleanly.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn send_mail(s: &NotifySettings, to: &[String], m: &Message) -> Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};
    let mut b = Mail::builder()
        .from(
            s.smtp_from
                .parse()
                .map_err(|e| format!("parse the sender {}: {e}", s.smtp_from))?,
        )
        .subject(format!(
            "[slipway] {} {} {}: {}",
            m.release,
            m.version,
            m.environment,
            event_name(m.event)
        ));
    for r in to {
        b = b.to(r
            .parse()
            .map_err(|e| format!("parse the recipient {r}: {e}"))?);
    }
    let mut body = format!(
        "{}\n\nrun: {}\nstate: {}\nat: {}\n",
        m.text, m.run, m.state, m.at
    );
    if let Some(r) = &m.rollback {
        for (service, v) in &r.restoring {
            body.push_str(&format!(
                "restoring: {service} {}\n",
                v.as_deref().unwrap_or("(stopped: nothing served before)")
            ));
        }
        if let Some(s) = r.expected_seconds {
            body.push_str(&format!(
                "expected duration: {s:.0}s (last rehearsal's RTO)\n"
            ));
        }
        for (service, v) in &r.serving {
            body.push_str(&format!(
                "serving now: {service} {}\n",
                v.as_deref().unwrap_or("(nothing)")
            ));
        }
    }
    // A MIME message (lettre writes the headers): `MIME-Version: 1.0`, `Content-Type:
    // text/plain; charset=utf-8` with a transfer encoding for any text, a `Date` and a
    // `Message-ID`, so mail clients and relays read it as they should.
    let mail = b
        .message_id(None)
        .singlepart(lettre::message::SinglePart::plain(body))
        .map_err(|e| format!("build the email: {e}"))?;
    // No credentials are ever sent: plain SMTP only to a relay the operator controls, or
    // TLS (STARTTLS or implicit) with the certificate verified against the trusted roots.
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.smtp_host)
        .port(s.smtp_port)
        .timeout(Some(Duration::from_secs(10)));
    if s.smtp_tls != SmtpTls::None {
        use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
        let mut params =
            TlsParameters::builder(s.smtp_host.clone()).certificate_store(CertificateStore::None);
        for der in trusted_roots(s.ca_file.as_deref())? {
            let cert = Certificate::from_der(der.to_vec())
                .map_err(|e| format!("trust a CA certificate for SMTP: {e}"))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| format!("set up TLS for SMTP: {e}"))?;
        builder = builder.tls(match s.smtp_tls {
            SmtpTls::Implicit => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    let transport = builder.build();
    transport
        .send(mail)
        .await
        .map(|_| ())
        .map_err(|e| format!("send the email via {}:{}: {e}", s.smtp_host, s.smtp_port))
}
