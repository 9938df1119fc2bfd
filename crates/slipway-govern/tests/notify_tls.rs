//! Notifications over TLS to real local receivers with a throwaway private CA (rcgen): an
//! `https://` webhook served by a rustls server, and the real aiosmtpd with STARTTLS and
//! with implicit TLS (SMTPS). Certificates are verified: the same deliveries with another
//! CA as the trusted root fail, and nothing reaches the receivers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use slipway_govern::notify::{Notifier, NotifySettings, SIGNATURE_HEADER, SmtpTls};
use slipway_model::spec::{Notification, NotifyEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::notify::aiosmtpd_with;

/// A CA, and a server certificate for 127.0.0.1 / localhost signed by it, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_der: Vec<u8>,
}

fn ca() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "slipway test CA");
    (p.self_signed(&key).unwrap(), key)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = ca();
    let (other, _) = ca();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        other_ca: write("other-ca.pem", &other.pem()),
        cert: write("cert.pem", &leaf.pem()),
        key: write("key.pem", &key.serialize_pem()),
        cert_pem: leaf.pem(),
        key_der: key.serialize_der(),
        _dir: dir,
    }
}

/// An HTTPS receiver (rustls) recording each request's head and body, answering 200.
async fn https_receiver(pki: &Pki) -> (String, Arc<Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hooks/release",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let rec = rec.clone();
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing recorded.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            rec.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, seen)
}

fn settings(ca: &Path) -> NotifySettings {
    NotifySettings {
        webhook_secret: Some("tls-signing-secret".into()),
        attempts: 1,
        backoff: Duration::from_millis(10),
        ca_file: Some(ca.to_owned()),
        ..NotifySettings::default()
    }
}

fn finished(run: &str) -> Vec<slipway_engine::Notice> {
    use slipway_engine::{EngineEvent, Notice, RunState};
    vec![Notice {
        seq: 1,
        run_id: run.into(),
        at: t("2026-11-02T10:00:00Z"),
        actor: "op-bob".into(),
        event: EngineEvent::StateChanged {
            from: RunState::Running,
            to: RunState::Succeeded,
            reason: None,
        },
    }]
}

fn plan_with(n: Notification) -> slipway_model::plan::Plan {
    let mut p = plan(SHOP_FEATURE, "prod");
    p.notifications = vec![n];
    p
}

#[tokio::test]
async fn an_https_webhook_verifies_the_private_ca_and_refuses_another() {
    let pki = pki();
    let (url, seen) = https_receiver(&pki).await;
    let sink = Notification {
        on: vec![NotifyEvent::Finished],
        webhook: Some(url.clone()),
        ..Notification::default()
    };
    let mut n = Notifier::new(&plan_with(sink.clone()), settings(&pki.ca));
    let mut d = Vec::new();
    for x in finished("run-tls") {
        d.extend(n.handle(&x).await);
    }
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].error.is_none(), "{d:?}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("POST /hooks/release HTTP/1.1"),
        "{}",
        got[0]
    );
    assert!(
        got[0].to_lowercase().contains(SIGNATURE_HEADER),
        "{}",
        got[0]
    );
    assert!(got[0].contains("run-tls"), "{}", got[0]);

    let mut n = Notifier::new(&plan_with(sink), settings(&pki.other_ca));
    let mut d = Vec::new();
    for x in finished("run-wrong-ca") {
        d.extend(n.handle(&x).await);
    }
    let err = d[0].error.clone().expect("another CA must not be trusted");
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing more was delivered");
}

/// Sends one notification email; gives the delivery error, what the server printed, and
/// the server's log (so a failed assertion shows both sides of the connection).
async fn email(ca: &Path, tls: SmtpTls, extra: &[&str]) -> (Option<String>, String, String) {
    let smtp = aiosmtpd_with(extra);
    let mut n = Notifier::new(
        &plan_with(Notification {
            on: vec![NotifyEvent::Finished],
            email: vec!["oncall@example.invalid".into()],
            ..Notification::default()
        }),
        NotifySettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: smtp.port,
            smtp_tls: tls,
            ..settings(ca)
        },
    );
    let mut d = Vec::new();
    for x in finished("run-mail") {
        d.extend(n.handle(&x).await);
    }
    let mut got = String::new();
    if d[0].error.is_none() {
        // Poll the server's output until the message is printed.
        for _ in 0..50 {
            got = smtp.out.lock().unwrap().clone();
            if got.contains("END MESSAGE") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        got = smtp.out.lock().unwrap().clone();
    }
    let log = smtp.log.lock().unwrap().clone();
    (d[0].error.clone(), got, log)
}

#[tokio::test]
async fn email_over_starttls_and_implicit_tls_verifies_the_certificate() {
    let pki = pki();
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let starttls = ["--tlscert", cert.as_str(), "--tlskey", key.as_str()];
    let smtps = ["--smtpscert", cert.as_str(), "--smtpskey", key.as_str()];

    let (err, got, log) = email(&pki.ca, SmtpTls::StartTls, &starttls).await;
    assert!(err.is_none(), "{err:?}\naiosmtpd log:\n{log}");
    assert!(
        got.contains("oncall@example.invalid") && got.contains("run-mail"),
        "{got}"
    );

    let (err, got, log) = email(&pki.ca, SmtpTls::Implicit, &smtps).await;
    assert!(err.is_none(), "{err:?}\naiosmtpd log:\n{log}");
    assert!(got.contains("run-mail"), "{got}");

    let (err, got, _) = email(&pki.other_ca, SmtpTls::StartTls, &starttls).await;
    let err = err.expect("another CA must not be trusted");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("tls"),
        "{err}"
    );
    assert!(!got.contains("END MESSAGE"), "{got}");

    let (err, _, _) = email(&pki.other_ca, SmtpTls::Implicit, &smtps).await;
    assert!(err.is_some(), "SMTPS with another CA must fail");

    // A server requiring STARTTLS refuses a plain client.
    let (err, _, _) = email(&pki.ca, SmtpTls::None, &starttls).await;
    assert!(
        err.is_some(),
        "plain SMTP to a STARTTLS-only server must fail"
    );
}
