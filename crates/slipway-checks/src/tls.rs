//! TLS reachability: a real handshake (rustls, ring provider) that verifies the server's
//! chain and host name against the system's roots or a declared CA file, and reports the
//! days until the leaf certificate expires.
//!
//! Endpoint options ride in the URL's query so the spec stays a list of strings:
//! `tls://host:port?ca=certs/ca.pem&name=api.example.com&warn_days=21`. `ca` is relative
//! to the spec's directory; `name` is the host name to verify (default: the host);
//! `warn_days` (default 14) is how close to expiry a certificate warns.
//!
//! Verdicts: trusted, right name and more than `warn_days` left passes; fewer days left
//! warns; expired, untrusted (unknown issuer, bad signature) or the wrong name fails, each
//! with its own hint. The leaf is captured before verification so even a refused
//! certificate's expiry is reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Outcome;

/// Default `warn_days`: two weeks leaves time to renew by hand.
pub const DEFAULT_WARN_DAYS: i64 = 14;

/// How one TLS endpoint is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA file (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Host name to verify; `None` = the endpoint's host.
    pub name: Option<String>,
    /// Warn when the leaf expires within this many days.
    pub warn_days: i64,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            ca: None,
            name: None,
            warn_days: DEFAULT_WARN_DAYS,
        }
    }
}

/// Split `host:port?query` into `host:port` and the options; `ca` is resolved against
/// `base_dir` when relative.
pub fn options(rest: &str, base_dir: &Path) -> Result<(String, TlsOptions), String> {
    let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut o = TlsOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "ca" if !v.is_empty() => {
                let p = PathBuf::from(v);
                o.ca = Some(if p.is_absolute() { p } else { base_dir.join(p) });
            }
            "name" if !v.is_empty() => o.name = Some(v.to_owned()),
            "warn_days" => {
                o.warn_days = v
                    .parse()
                    .map_err(|_| format!("warn_days=`{v}` is not a whole number of days"))?;
            }
            _ => {
                return Err(format!(
                    "unknown or empty tls option `{pair}`; use ca=FILE, name=HOST, warn_days=N"
                ));
            }
        }
    }
    Ok((addr.trim_end_matches('/').to_owned(), o))
}

/// What a handshake found.
#[derive(Debug, Clone)]
pub struct TlsFinding {
    /// The judgement.
    pub outcome: Outcome,
    /// What was measured (protocol, days left, or what went wrong).
    pub measured: String,
    /// Days until the leaf expires (negative: expired), when a leaf was seen.
    pub days_left: Option<i64>,
    /// What to do when it is not a pass.
    pub hint: Option<String>,
}

/// Records the leaf and the verifier's error, then answers as webpki does.
#[derive(Debug)]
struct Capture {
    inner: Arc<WebPkiServerVerifier>,
    leaf: Mutex<Option<Vec<u8>>>,
    error: Mutex<Option<rustls::Error>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut l) = self.leaf.lock() {
            *l = Some(end_entity.to_vec());
        }
        let r = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let (Err(e), Ok(mut slot)) = (&r, self.error.lock()) {
            *slot = Some(e.clone());
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn roots(o: &TlsOptions) -> Result<(RootCertStore, String), String> {
    let mut store = RootCertStore::empty();
    if let Some(ca) = &o.ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CA file {} is not PEM certificates: {e}", ca.display()))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "CA file {} holds no usable certificate",
                ca.display()
            ));
        }
        Ok((store, format!("CA {}", ca.display())))
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(
                "this machine has no system root certificates (install ca-certificates) and the endpoint names no ca=FILE".into(),
            );
        }
        Ok((store, "system roots".into()))
    }
}

/// Days from now until the leaf's notAfter (negative when past).
fn days_left(leaf: &[u8]) -> Option<i64> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(leaf).ok()?;
    let not_after = cert.tbs_certificate.validity.not_after.to_unix_duration();
    let end = i64::try_from(not_after.as_secs()).ok()?;
    let now = slipway_stdx::now().as_second();
    Some((end - now).div_euclid(86_400))
}

/// Handshake over an open connection to `host:port` and judge the certificate.
pub async fn handshake<S>(stream: S, addr: &str, o: &TlsOptions, timeout: Duration) -> TlsFinding
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let fail = |measured: String, hint: String| TlsFinding {
        outcome: Outcome::Fail,
        measured,
        days_left: None,
        hint: Some(hint),
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = o.name.clone().unwrap_or_else(|| host.to_owned());
    let server_name = match ServerName::try_from(name.clone()) {
        Ok(n) => n,
        Err(e) => {
            return fail(
                format!("`{name}` is not a host name: {e}"),
                "give the endpoint a DNS name or IP address (or name=HOST)".into(),
            );
        }
    };
    let (store, trusted_by) = match roots(o) {
        Ok(r) => r,
        Err(e) => return fail(e, "fix ca=FILE or install the system CA bundle".into()),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = match WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
    {
        Ok(v) => v,
        Err(e) => return fail(format!("verifier: {e}"), "check the CA file".into()),
    };
    let capture = Arc::new(Capture {
        inner,
        leaf: Mutex::new(None),
        error: Mutex::new(None),
    });
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(capture.clone())
            .with_no_client_auth(),
        Err(e) => return fail(format!("tls setup: {e}"), "report this as a bug".into()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let result = tokio::time::timeout(timeout, connector.connect(server_name, stream)).await;
    let days = capture
        .leaf
        .lock()
        .ok()
        .and_then(|l| l.as_deref().and_then(days_left));
    let verify_error = capture.error.lock().ok().and_then(|e| e.clone());
    let days_text = days.map_or(String::new(), |d| format!(", expires in {d} day(s)"));
    match (result, verify_error) {
        (_, Some(e)) => {
            let (measured, hint) = match &e {
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => (
                    format!("certificate expired{days_text}"),
                    format!("renew the certificate served on {addr}"),
                ),
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => (
                    format!("certificate not valid for `{name}`{days_text}"),
                    format!(
                        "the certificate on {addr} does not name `{name}`: serve one whose subjectAltName has it, or set name=HOST to the name clients use"
                    ),
                ),
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => (
                    format!("untrusted certificate (not issued by {trusted_by}){days_text}"),
                    format!(
                        "the chain on {addr} does not lead to {trusted_by}: serve the full chain, or declare the issuing CA with ca=FILE"
                    ),
                ),
                other => (
                    format!("certificate refused: {other}{days_text}"),
                    format!("the certificate on {addr} failed verification against {trusted_by}"),
                ),
            };
            TlsFinding {
                outcome: Outcome::Fail,
                measured,
                days_left: days,
                hint: Some(hint),
            }
        }
        (Err(_), None) => TlsFinding {
            outcome: Outcome::Fail,
            measured: format!("no TLS handshake within {} ms", timeout.as_millis()),
            days_left: days,
            hint: Some(format!(
                "the port {addr} is open but does not complete a TLS handshake"
            )),
        },
        (Ok(Err(e)), None) => TlsFinding {
            outcome: Outcome::Fail,
            measured: format!("handshake failed: {e}"),
            days_left: days,
            hint: Some(format!(
                "the port {addr} is open but does not speak TLS as expected"
            )),
        },
        (Ok(Ok(conn)), None) => {
            let version = conn
                .get_ref()
                .1
                .protocol_version()
                .map_or("TLS".into(), |v| format!("{v:?}"));
            match days {
                Some(d) if d < o.warn_days => TlsFinding {
                    outcome: Outcome::Warn,
                    measured: format!("{version}, trusted, expires in {d} day(s)"),
                    days_left: days,
                    hint: Some(format!(
                        "the certificate on {addr} expires in {d} day(s) (warning under {} days): renew it",
                        o.warn_days
                    )),
                },
                Some(d) => TlsFinding {
                    outcome: Outcome::Pass,
                    measured: format!("{version}, trusted, expires in {d} day(s)"),
                    days_left: days,
                    hint: None,
                },
                // A verified chain whose expiry cannot be read: do not claim it is fine.
                None => TlsFinding {
                    outcome: Outcome::Warn,
                    measured: format!("{version}, trusted, expiry unreadable"),
                    days_left: None,
                    hint: Some("the leaf certificate's notAfter could not be parsed".into()),
                },
            }
        }
    }
}
