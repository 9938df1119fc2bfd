//! TLS reachability against a real local TLS listener (tokio-rustls) serving certificates
//! this test issues from a throwaway CA (rcgen): trusted passes, a different CA fails as
//! untrusted, the wrong host name fails, an expired certificate fails and one close to
//! expiry warns — each with its hint, and the days until expiry in the verdict.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use slipway_checks::Outcome;
use slipway_checks::reach::{check_service_in, probe_in};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf for `localhost` valid from `from` to `until` days relative to now.
fn leaf(ca: &Ca, from: i64, until: i64) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from);
    p.not_after = now + time::Duration::days(until);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A TLS server on 127.0.0.1 answering handshakes until dropped; returns its port.
async fn serve(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                // A refused client certificate check ends the handshake; nothing to do.
                let _ = a.accept(s).await;
            });
        }
    });
    (port, task)
}

fn write_ca(dir: &std::path::Path, file: &str, ca: &Ca) {
    std::fs::write(dir.join(file), ca.cert.pem()).unwrap();
}

const T: Duration = Duration::from_secs(3);

#[tokio::test]
async fn trusted_passes_wrong_ca_and_wrong_name_fail_with_hints() {
    let dir = tempfile::tempdir().unwrap();
    let good = ca("slipway test CA");
    let other = ca("some other CA");
    write_ca(dir.path(), "ca.pem", &good);
    write_ca(dir.path(), "other.pem", &other);
    let (cert, key) = leaf(&good, -1, 90);
    let (port, server) = serve(cert, key).await;

    // Relative ca= resolves against the base directory (the spec's directory).
    let ok = probe_in(&format!("tls://localhost:{port}?ca=ca.pem"), T, dir.path()).await;
    assert_eq!(ok.verdict, Outcome::Pass, "{ok:?}");
    assert!(ok.measured.contains("trusted"), "{ok:?}");
    assert!(
        ok.measured.contains("expires in 89 day(s)")
            || ok.measured.contains("expires in 90 day(s)"),
        "{ok:?}"
    );

    let wrong_ca = probe_in(
        &format!("tls://localhost:{port}?ca=other.pem"),
        T,
        dir.path(),
    )
    .await;
    assert_eq!(wrong_ca.verdict, Outcome::Fail, "{wrong_ca:?}");
    assert!(wrong_ca.measured.contains("untrusted"), "{wrong_ca:?}");
    assert!(
        wrong_ca.hint.as_deref().unwrap().contains("ca=FILE"),
        "{wrong_ca:?}"
    );

    // The certificate names `localhost` only; 127.0.0.1 is not in it.
    let wrong_name = probe_in(&format!("tls://127.0.0.1:{port}?ca=ca.pem"), T, dir.path()).await;
    assert_eq!(wrong_name.verdict, Outcome::Fail, "{wrong_name:?}");
    assert!(
        wrong_name.measured.contains("not valid for `127.0.0.1`"),
        "{wrong_name:?}"
    );
    assert!(
        wrong_name
            .hint
            .as_deref()
            .unwrap()
            .contains("subjectAltName"),
        "{wrong_name:?}"
    );
    // ... and name= verifies the name clients use while connecting to the address.
    let named = probe_in(
        &format!("tls://127.0.0.1:{port}?ca=ca.pem&name=localhost"),
        T,
        dir.path(),
    )
    .await;
    assert_eq!(named.verdict, Outcome::Pass, "{named:?}");

    // Without ca= the system roots are used, which never issued this throwaway CA.
    let system = probe_in(&format!("tls://localhost:{port}"), T, dir.path()).await;
    assert_eq!(system.verdict, Outcome::Fail, "{system:?}");
    assert!(
        system.measured.contains("untrusted") || system.measured.contains("no system root"),
        "{system:?}"
    );

    // A plain TCP listener is open but speaks no TLS.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pport = plain.local_addr().unwrap().port();
    let notls = probe_in(
        &format!("tls://localhost:{pport}?ca=ca.pem"),
        Duration::from_millis(500),
        dir.path(),
    )
    .await;
    assert_eq!(notls.verdict, Outcome::Fail, "{notls:?}");
    assert!(notls.hint.as_deref().unwrap().contains("TLS"), "{notls:?}");

    // The matrix row carries the service and the origin.
    let rows = check_service_in(
        "api",
        "this machine",
        &[format!("tls://localhost:{port}?ca=ca.pem")],
        T,
        dir.path(),
    )
    .await;
    assert_eq!(rows[0].check, "reach.api");
    assert_eq!(rows[0].verdict, Outcome::Pass, "{rows:?}");
    server.abort();
}

#[tokio::test]
async fn expired_fails_and_expiring_soon_warns() {
    let dir = tempfile::tempdir().unwrap();
    let good = ca("slipway test CA");
    write_ca(dir.path(), "ca.pem", &good);

    let (cert, key) = leaf(&good, -30, -2);
    let (port, server) = serve(cert, key).await;
    let expired = probe_in(&format!("tls://localhost:{port}?ca=ca.pem"), T, dir.path()).await;
    assert_eq!(expired.verdict, Outcome::Fail, "{expired:?}");
    assert!(expired.measured.contains("expired"), "{expired:?}");
    assert!(
        expired.measured.contains("expires in -"),
        "days are reported: {expired:?}"
    );
    assert!(
        expired.hint.as_deref().unwrap().contains("renew"),
        "{expired:?}"
    );
    server.abort();

    let (cert, key) = leaf(&good, -30, 5);
    let (port, server) = serve(cert, key).await;
    let soon = probe_in(&format!("tls://localhost:{port}?ca=ca.pem"), T, dir.path()).await;
    assert_eq!(soon.verdict, Outcome::Warn, "{soon:?}");
    assert!(soon.hint.as_deref().unwrap().contains("renew"), "{soon:?}");
    // A lower threshold makes the same certificate a pass.
    let lenient = probe_in(
        &format!("tls://localhost:{port}?ca=ca.pem&warn_days=2"),
        T,
        dir.path(),
    )
    .await;
    assert_eq!(lenient.verdict, Outcome::Pass, "{lenient:?}");
    let bad = probe_in(&format!("tls://localhost:{port}?cafile=x"), T, dir.path()).await;
    assert_eq!(bad.verdict, Outcome::Fail, "{bad:?}");
    assert!(bad.measured.contains("unknown"), "{bad:?}");
    server.abort();
}
