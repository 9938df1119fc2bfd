//! TLS of `slipway serve` itself (`--tls-cert`, `--tls-key`): rustls with ring, as the
//! API client and the metric providers use it, HTTP/1.1 only (the server speaks nothing
//! else). With TLS on, the session cookie is `__Host-` and `Secure` and every answer says
//! `Strict-Transport-Security` (see `crate::metrics::observe`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server configuration of a PEM certificate chain and a PEM private key, or what is
/// wrong with them (naming the file and the fix).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "failed to read the certificate {}: {e}; give --tls-cert a PEM file with the server's certificate (then its chain)",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "the certificate file {} holds no PEM certificate; give --tls-cert the server's certificate in PEM",
            cert.display()
        ));
    }
    let key_file = key.display().to_string();
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "failed to read the private key {key_file}: {e}; give --tls-key a PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1)"
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("failed to set up TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        format!(
            "the key {key_file} does not go with the certificate {}: {e}; give the certificate's own private key",
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
