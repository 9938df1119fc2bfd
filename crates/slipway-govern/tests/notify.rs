//! Notifications delivered to real local receivers: an HTTP server on a std TcpListener
//! that records requests (and fails the first one, to prove the retry), the real aiosmtpd
//! SMTP server as a subprocess, and a file sink.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_engine::{EngineEvent, Notice, RunState};
use slipway_govern::notify::{self, Notifier, NotifySettings, SIGNATURE_HEADER};
use slipway_model::spec::{Notification, NotifyEvent};

use crate::common::*;

const SECRET: &str = "hunter2-signing-secret";
const DB_PASSWORD: &str = "s3cr3t-db-password";

#[derive(Debug, Clone)]
struct Request {
    headers: Vec<(String, String)>,
    body: String,
}

/// An HTTP receiver answering 503 to the first `fail_first` requests, then 200.
fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/release", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_lowercase(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            rec.lock().unwrap().push(Request {
                headers,
                body: String::from_utf8(body).unwrap(),
            });
            let status = if i < fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            )
            .unwrap();
        }
    });
    (url, seen)
}

fn plan_with(sinks: Vec<Notification>) -> slipway_model::plan::Plan {
    let mut p = plan(SHOP_FEATURE, "prod");
    p.notifications = sinks;
    p
}

fn notice(seq: i64, from: RunState, to: RunState, reason: Option<&str>) -> Notice {
    Notice {
        seq,
        run_id: "run-1".into(),
        at: t("2026-11-02T10:00:00Z"),
        actor: "op-bob".into(),
        event: EngineEvent::StateChanged {
            from,
            to,
            reason: reason.map(str::to_owned),
        },
    }
}

/// A rolled-back run whose failure reason quotes a secret value (as a careless error
/// message might).
fn rolled_back_run() -> Vec<Notice> {
    vec![
        notice(1, RunState::Pending, RunState::Running, None),
        notice(
            2,
            RunState::Running,
            RunState::RollingBack,
            Some(&format!(
                "api/deploy failed: connect postgres://app:{DB_PASSWORD}@db:5432 refused; {DB_PASSWORD}"
            )),
        ),
        notice(3, RunState::RollingBack, RunState::RolledBack, None),
    ]
}

fn settings() -> NotifySettings {
    NotifySettings {
        webhook_secret: Some(SECRET.into()),
        backoff: Duration::from_millis(20),
        redact: vec![DB_PASSWORD.into()],
        ..NotifySettings::default()
    }
}

#[test]
fn state_changes_map_to_notification_events() {
    let e = |from, to| {
        notify::classify(&EngineEvent::StateChanged {
            from,
            to,
            reason: None,
        })
    };
    assert_eq!(
        e(RunState::Pending, RunState::Running),
        [NotifyEvent::Started]
    );
    assert_eq!(e(RunState::Paused, RunState::Running), []);
    assert_eq!(
        e(RunState::Pending, RunState::WaitingForApproval),
        [NotifyEvent::WaitingForApproval]
    );
    assert_eq!(
        e(RunState::Running, RunState::Paused),
        [NotifyEvent::Paused]
    );
    assert_eq!(
        e(RunState::Running, RunState::RollingBack),
        [NotifyEvent::RollbackStarted]
    );
    assert_eq!(
        e(RunState::RollingBack, RunState::RolledBack),
        [
            NotifyEvent::RolledBack,
            NotifyEvent::RollbackFinished,
            NotifyEvent::Finished
        ]
    );
    assert_eq!(
        e(RunState::RollingBack, RunState::Failed),
        [NotifyEvent::RollbackFinished, NotifyEvent::Finished]
    );
    assert_eq!(
        e(RunState::Running, RunState::Succeeded),
        [NotifyEvent::Finished]
    );
}

#[tokio::test]
async fn webhook_is_signed_retried_and_free_of_secrets() {
    let (url, seen) = receiver(1);
    let mut n = Notifier::new(
        &plan_with(vec![Notification {
            on: vec![NotifyEvent::Started, NotifyEvent::RolledBack],
            webhook: Some(url),
            ..Notification::default()
        }]),
        settings(),
    );
    let mut deliveries = Vec::new();
    for x in rolled_back_run() {
        deliveries.extend(n.handle(&x).await);
    }
    assert_eq!(
        deliveries.len(),
        2,
        "started and rolled_back only: {deliveries:?}"
    );
    assert!(
        deliveries.iter().all(|d| d.error.is_none()),
        "{deliveries:?}"
    );
    assert_eq!(
        deliveries[0].attempts, 2,
        "the first attempt got 503 and was retried"
    );
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3);
    let last = &reqs[2];
    let body: serde_json::Value = serde_json::from_str(&last.body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("rolled back") && text.contains("api/deploy failed"),
        "{text}"
    );
    assert_eq!(body["slipway"]["event"], "rolled_back");
    let sig = &last
        .headers
        .iter()
        .find(|(k, _)| k == SIGNATURE_HEADER)
        .unwrap()
        .1;
    assert_eq!(
        sig,
        &notify::sign(SECRET, &last.body),
        "signature over the exact body"
    );
    for r in &reqs {
        assert!(
            !r.body.contains(SECRET) && !r.body.contains(DB_PASSWORD),
            "{}",
            r.body
        );
        assert!(!r.headers.iter().any(|(_, v)| v.contains(SECRET)));
    }
}

#[tokio::test]
async fn webhook_gives_up_after_its_attempts() {
    let (url, seen) = receiver(usize::MAX);
    let mut n = Notifier::new(
        &plan_with(vec![Notification {
            webhook: Some(url),
            ..Notification::default()
        }]),
        NotifySettings {
            attempts: 3,
            ..settings()
        },
    );
    let d = n
        .handle(&notice(1, RunState::Pending, RunState::Running, None))
        .await;
    assert_eq!(d[0].attempts, 3);
    assert!(d[0].error.as_deref().unwrap().contains("503"));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn file_sink_appends_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Notifier::new(
        &plan_with(vec![Notification {
            file: Some("out/notify.jsonl".into()),
            ..Notification::default()
        }]),
        NotifySettings {
            workdir: dir.path().into(),
            ..settings()
        },
    );
    for x in rolled_back_run() {
        n.handle(&x).await;
    }
    let text = std::fs::read_to_string(dir.path().join("out/notify.jsonl")).unwrap();
    let events: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        events,
        [
            "started",
            "rollback_started",
            "rolled_back",
            "rollback_finished",
            "finished"
        ]
    );
    assert!(!text.contains(DB_PASSWORD), "{text}");
}

/// The real aiosmtpd (`pip install aiosmtpd`) on a free port, printing what it receives.
pub(crate) struct Smtp {
    child: std::process::Child,
    pub(crate) port: u16,
    /// What the server printed on stdout: the received messages.
    pub(crate) out: Arc<Mutex<String>>,
    /// Its log (stderr, `-d`): connections, TLS errors. Shown when a delivery fails.
    pub(crate) log: Arc<Mutex<String>>,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aiosmtpd() -> Smtp {
    aiosmtpd_with(&[])
}

/// Copies a child's stream into a shared buffer, line by line, on a thread.
fn collect(
    stream: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut g = into.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    })
}

/// aiosmtpd with extra arguments (e.g. `--tlscert C --tlskey K` for STARTTLS).
///
/// Ready when the server itself logs that it listens: a TCP connect alone could reach
/// another socket that took the port between our probe bind and aiosmtpd's (seen in CI as
/// a "connection reset" from a stranger). If it did, aiosmtpd exits with "address already
/// in use" and we start it again on another free port.
pub(crate) fn aiosmtpd_with(extra: &[&str]) -> Smtp {
    let mut last_log = String::new();
    for _ in 0..5 {
        match start_aiosmtpd(extra) {
            Ok(smtp) => return smtp,
            Err(log) if log.contains("address already in use") => last_log = log,
            Err(log) => panic!("aiosmtpd did not start:\n{log}"),
        }
    }
    panic!("aiosmtpd found its port taken five times:\n{last_log}");
}

/// One attempt: the running server, or its log when it exited or never listened.
fn start_aiosmtpd(extra: &[&str]) -> Result<Smtp, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("python3")
        .args([
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-d",
            "-c",
            "aiosmtpd.handlers.Debugging",
            "-l",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 -m aiosmtpd: install it with `pip install aiosmtpd`");
    let out = Arc::new(Mutex::new(String::new()));
    let log = Arc::new(Mutex::new(String::new()));
    collect(child.stdout.take().unwrap(), out.clone());
    let stderr = collect(child.stderr.take().unwrap(), log.clone());
    // Owned by the guard from here on, so it is killed and reaped on every path.
    let mut smtp = Smtp {
        child,
        port,
        out,
        log,
    };
    let listening = format!("Server is listening on 127.0.0.1:{port}");
    for _ in 0..200 {
        if smtp.log.lock().unwrap().contains(&listening) {
            return Ok(smtp);
        }
        if let Ok(Some(status)) = smtp.child.try_wait() {
            // Its whole traceback, not the part read so far.
            let _ = stderr.join();
            return Err(format!("exited ({status}):\n{}", smtp.log.lock().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "did not listen on {port} within 10 s:\n{}",
        smtp.log.lock().unwrap()
    ))
}

#[tokio::test]
async fn email_reaches_a_real_smtp_server() {
    let smtp = aiosmtpd();
    let mut n = Notifier::new(
        &plan_with(vec![Notification {
            on: vec![NotifyEvent::RolledBack],
            email: vec!["oncall@example.invalid".into()],
            ..Notification::default()
        }]),
        NotifySettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: smtp.port,
            ..settings()
        },
    );
    let mut d = Vec::new();
    for x in rolled_back_run() {
        d.extend(n.handle(&x).await);
    }
    assert_eq!(d.len(), 1);
    assert!(
        d[0].error.is_none(),
        "{d:?}\naiosmtpd log:\n{}",
        smtp.log.lock().unwrap()
    );
    let mut got = String::new();
    for _ in 0..50 {
        got = smtp.out.lock().unwrap().clone();
        if got.contains("END MESSAGE") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Undo quoted-printable soft line breaks, so no text hides across a wrapped line.
    let got = got.replace("=\n", "");
    assert!(got.contains("oncall@example.invalid"), "{got}");
    assert!(
        got.contains("[slipway] shop 2.4.0 prod: rolled back"),
        "{got}"
    );
    assert!(
        got.contains("api/deploy failed: connect postgres://***@db:5432"),
        "{got}"
    );
    assert!(!got.contains(DB_PASSWORD) && !got.contains(SECRET), "{got}");
}

/// A rollback is announced when it starts (why, which services go back to which version,
/// how long the last rehearsal took) and when it ends (what serves now), by email as a
/// proper MIME message.
#[tokio::test]
async fn rollback_started_and_finished_by_email_with_mime_headers() {
    let smtp = aiosmtpd();
    let mut n = Notifier::new(
        &plan_with(vec![Notification {
            on: vec![NotifyEvent::RollbackStarted, NotifyEvent::RollbackFinished],
            email: vec!["oncall@example.invalid".into()],
            ..Notification::default()
        }]),
        NotifySettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: smtp.port,
            ..settings()
        },
    );
    let run = rolled_back_run();
    let started = notify::RollbackInfo {
        restoring: [("api".to_owned(), Some("2.3.0".to_owned()))].into(),
        expected_seconds: Some(42.0),
        ..Default::default()
    };
    let finished = notify::RollbackInfo {
        serving: [("api".to_owned(), Some("2.3.0".to_owned()))].into(),
        ..Default::default()
    };
    let m = n.messages_with(&run[1], Some(&started));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].event, NotifyEvent::RollbackStarted);
    assert!(m[0].text.contains("restoring api 2.3.0"), "{}", m[0].text);
    assert!(m[0].text.contains("about 42s"), "{}", m[0].text);
    let mut d = Vec::new();
    d.extend(n.handle_with(&run[1], Some(&started)).await);
    d.extend(n.handle_with(&run[2], Some(&finished)).await);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d.iter().all(|d| d.error.is_none()),
        "{d:?}\naiosmtpd log:\n{}",
        smtp.log.lock().unwrap()
    );
    let mut got = String::new();
    for _ in 0..50 {
        got = smtp.out.lock().unwrap().clone();
        if got.matches("END MESSAGE").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = got.replace("=\n", "");
    for header in [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Message-ID: <",
        "Date: ",
        "Subject: [slipway] shop 2.4.0 prod: rollback started",
        "Subject: [slipway] shop 2.4.0 prod: rollback finished",
    ] {
        assert!(got.contains(header), "missing {header}:\n{got}");
    }
    assert!(got.contains("restoring: api 2.3.0"), "{got}");
    assert!(got.contains("expected duration: 42s"), "{got}");
    assert!(got.contains("serving now: api 2.3.0"), "{got}");
    assert!(!got.contains(DB_PASSWORD), "{got}");
}
