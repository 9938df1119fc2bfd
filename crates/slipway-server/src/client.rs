//! A client of this server's API, for `slipway --server URL`: JSON requests with the
//! caller's bearer token, the API's `{"error", "fix"}` answers as typed errors, and the
//! event stream of a run read entry by entry. One HTTP/1.1 connection per request (hyper's
//! client connection, TLS by rustls with ring and the system's roots for `https://`, as the
//! metric providers do); nothing here prints.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The URL is not one the client can use.
    #[error("`{url}` is not a server URL: {why}")]
    Url {
        /// As given.
        url: String,
        /// Why not.
        why: String,
    },
    /// No answer: connection refused, TLS failed, the connection broke.
    #[error("failed to reach {server}: {why}")]
    Unreachable {
        /// The server.
        server: String,
        /// What failed.
        why: String,
    },
    /// The server answered with an error (`{"error", "fix"}`).
    #[error("{error}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        error: String,
        /// The server's fix.
        fix: String,
        /// The whole answer (a refused plan's `findings` are in it).
        body: Value,
    },
}

/// A server and the token to act with.
#[derive(Debug, Clone)]
pub struct Client {
    https: bool,
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header says it.
    authority: String,
    /// The URL's path, without a trailing `/` (a server behind a path prefix).
    prefix: String,
    /// The URL as shown in messages (no credentials: a URL with a user part is refused).
    shown: String,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `url` (`http://host:port` or `https://…`, optionally with
    /// a path prefix), acting with `token`.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let https = match u.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("use http://HOST:PORT or https://HOST:PORT")),
        };
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL; pass the API token with --token or SLIPWAY_TOKEN",
            ));
        }
        let host = u
            .host_str()
            .ok_or_else(|| bad("it names no host"))?
            .to_owned();
        let port = u.port_or_known_default().unwrap_or(80);
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(Self {
            https,
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            authority,
            prefix: u.path().trim_end_matches('/').to_owned(),
            shown: format!("{}://{}", u.scheme(), {
                let a = u.host_str().unwrap_or_default();
                match u.port() {
                    Some(p) => format!("{a}:{p}"),
                    None => a.to_owned(),
                }
            }),
            token,
        })
    }

    /// The server as messages name it.
    pub fn server(&self) -> &str {
        &self.shown
    }

    /// `GET path` (under `/api/v1`): the answer's JSON, or the server's error.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self.send("GET", path, None, &[]).await?;
        self.json(resp).await.map(|(_, v)| v)
    }

    /// `GET path` (under `/api/v1`) of a document that is not JSON (an audit export): its
    /// bytes, or the server's error.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send("GET", path, None, &[]).await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            self.json(resp).await?;
            return Err(self.unreachable(format!("the answer is HTTP {status}, not a document")));
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(bytes.to_vec())
    }

    /// `POST path` (under `/api/v1`) with a JSON body: the status (200, 202) and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), ClientError> {
        let body = Bytes::from(body.to_string());
        let resp = self
            .send("POST", path, Some((body, "application/json")), &[])
            .await?;
        self.json(resp).await
    }

    /// `POST path` (under `/api/v1`) with raw bytes and extra headers: the status and JSON.
    pub async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        let resp = self
            .send(
                "POST",
                path,
                Some((Bytes::from(body), "application/octet-stream")),
                headers,
            )
            .await?;
        self.json(resp).await
    }

    /// Follow `GET path` as Server-Sent Events: `on(event, data)` for each event until the
    /// server ends the stream.
    pub async fn events(
        &self,
        path: &str,
        mut on: impl FnMut(&str, &str),
    ) -> Result<(), ClientError> {
        let resp = self.send("GET", path, None, &[]).await?;
        if !resp.status().is_success() {
            return self.json(resp).await.map(|_| ());
        }
        let mut body = resp.into_body();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(format!("the stream broke: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            // An event ends at a blank line (the server writes `\n` line ends).
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let (mut event, mut payload) = ("message".to_owned(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !payload.is_empty() {
                            payload.push('\n');
                        }
                        payload.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !payload.is_empty() {
                    on(&event, &payload);
                }
            }
        }
        Ok(())
    }

    fn unreachable(&self, why: String) -> ClientError {
        ClientError::Unreachable {
            server: self.shown.clone(),
            why,
        }
    }

    async fn json(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(u16, Value), ClientError> {
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            self.unreachable(format!(
                "the answer (HTTP {status}) is not JSON ({e}); is {} a slipway server?",
                self.shown
            ))
        })?;
        if status >= 400 {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            return Err(ClientError::Api {
                status,
                error: text("error"),
                fix: text("fix"),
                body: v,
            });
        }
        Ok((status, v))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(Bytes, &str)>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/api/v1{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "slipway-cli");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some((b, kind)) => {
                req = req.header(hyper::header::CONTENT_TYPE, kind);
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| self.unreachable(format!("the request: {e}")))?;
        let tcp = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.unreachable(format!("cannot connect: {e}"))),
            Err(_) => {
                return Err(self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")));
            }
        };
        let r = if self.https {
            let tls = tls_connect(tcp, &self.host)
                .await
                .map_err(|e| self.unreachable(e))?;
            exchange(tls, req).await
        } else {
            exchange(tcp, req).await
        };
        r.map_err(|e| self.unreachable(e))
    }
}

/// A TLS session with certificate chain and host name verified (rustls, ring; the system's
/// roots, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
async fn tls_connect(
    tcp: tokio::net::TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _) =
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(
            "no trusted CA certificate to verify the server with (install ca-certificates, or point SSL_CERT_FILE at the server's CA)"
                .into(),
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("set up TLS: {e}"))?
    .with_root_certificates(store)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a TLS server name: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

/// One request on a fresh HTTP/1.1 connection over `io`; the response streams its body.
async fn exchange<IO>(
    io: IO,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // The connection ends with the response (or the process); nothing to report.
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}
