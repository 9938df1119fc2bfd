//! Reachability: can this machine (the local target), or a target host over its SSH
//! session ([`probe_via`] with a channel the host opens), reach every endpoint a service
//! declares? Endpoints are `host:port` (TCP) or `tcp://`, `http://host:port/path`,
//! `postgres://host:port` and `tls://host:port[?ca=FILE&name=HOST&warn_days=N]` (a real
//! handshake, see [`crate::tls`]). A refused connection (nothing listens) and a filtered
//! one (no answer: a firewall drops the packets) fail with different hints.

use std::future::Future;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Outcome, Verdict};

/// How an endpoint is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// A TCP connect.
    Tcp,
    /// A GET that must answer below 500.
    Http,
    /// A TCP connect and a verified TLS handshake (chain, host name, expiry).
    Tls,
    /// A TCP connect plus PostgreSQL's SSLRequest, which any server answers without
    /// credentials (`S` or `N`).
    Postgres,
}

/// Split an endpoint into flavour, `host:port` and (for http) the URL.
pub fn parse(endpoint: &str) -> Result<(Flavour, String), String> {
    let e = endpoint.trim();
    let (flavour, rest) = if let Some(r) = e.strip_prefix("tcp://") {
        (Flavour::Tcp, r)
    } else if e.starts_with("http://") {
        let (authority, _) = crate::http::split_url(e)?;
        return Ok((Flavour::Http, authority));
    } else if let Some(r) = e.strip_prefix("tls://") {
        // Options (`?ca=…`) are read by the probe; the address is what precedes them.
        (Flavour::Tls, r.split('?').next().unwrap_or(r))
    } else if let Some(r) = e
        .strip_prefix("postgres://")
        .or_else(|| e.strip_prefix("postgresql://"))
    {
        // Credentials and database name are irrelevant to reachability.
        let r = r.rsplit_once('@').map_or(r, |(_, h)| h);
        let r = r.split(['/', '?']).next().unwrap_or(r);
        let r = if r.contains(':') {
            r.to_owned()
        } else {
            format!("{r}:5432")
        };
        return Ok((Flavour::Postgres, r));
    } else {
        (Flavour::Tcp, e)
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok((flavour, rest.to_owned())),
        _ => Err(format!("`{endpoint}` is not host:port")),
    }
}

/// Probe every endpoint of one service: one matrix row each (`from` → endpoint).
pub async fn check_service(
    service: &str,
    from: &str,
    endpoints: &[String],
    timeout: Duration,
) -> Vec<Verdict> {
    check_service_in(service, from, endpoints, timeout, Path::new(".")).await
}

/// [`check_service`] with relative `ca=` files of `tls://` endpoints resolved against
/// `base_dir` (the spec's directory).
pub async fn check_service_in(
    service: &str,
    from: &str,
    endpoints: &[String],
    timeout: Duration,
    base_dir: &Path,
) -> Vec<Verdict> {
    let mut rows = Vec::new();
    for e in endpoints {
        let mut v = probe_in(e, timeout, base_dir).await;
        v.check = format!("reach.{service}");
        v.target = format!("{from} -> {e}");
        rows.push(v);
    }
    rows
}

/// Probe one endpoint (relative `ca=` files resolved against the current directory).
pub async fn probe(endpoint: &str, timeout: Duration) -> Verdict {
    probe_in(endpoint, timeout, Path::new(".")).await
}

/// Probe one endpoint from this machine, relative `ca=` files resolved against `base_dir`.
pub async fn probe_in(endpoint: &str, timeout: Duration, base_dir: &Path) -> Verdict {
    probe_via(
        endpoint,
        timeout,
        base_dir,
        "this machine",
        |host, port| async move {
            match TcpStream::connect((host.as_str(), port)).await {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Err(ConnectError::Refused),
                Err(e) => Err(ConnectError::Other {
                    measured: format!("error: {e}"),
                    hint: format!("check the name and route to {host}:{port} from this machine"),
                }),
            }
        },
    )
    .await
}

/// Why a connection to an endpoint could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The host answered, but nothing listens on the port.
    Refused,
    /// Anything else: what was seen and what to do.
    Other {
        /// What was measured, e.g. `error: no route to host`.
        measured: String,
        /// The fix.
        hint: String,
    },
}

/// A connection a probe speaks over: a TCP stream of this machine, or a channel a remote
/// host opened to the endpoint (SSH `direct-tcpip`), so the same probe judges "can this
/// host reach it" wherever it runs.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// Probe one endpoint over connections `connect(host, port)` opens, as seen from `from`
/// (named in hints): the connection must open within `timeout` (else it is *filtered*),
/// then the endpoint's protocol is spoken over it (HTTP GET, TLS handshake, PostgreSQL
/// SSLRequest), also within `timeout`.
pub async fn probe_via<C, F, Fut>(
    endpoint: &str,
    timeout: Duration,
    base_dir: &Path,
    from: &str,
    connect: F,
) -> Verdict
where
    C: Conn,
    F: FnOnce(String, u16) -> Fut,
    Fut: Future<Output = Result<C, ConnectError>>,
{
    let started = Instant::now();
    let row = |o, measured: String, expected: &str| {
        Verdict::new("reach", endpoint, o, measured, expected, started)
    };
    let (flavour, addr) = match parse(endpoint) {
        Ok(x) => x,
        Err(e) => {
            return row(Outcome::Fail, e, "host:port")
                .hint("write endpoints as host:port, tcp://, http://, tls:// or postgres:// URLs");
        }
    };
    let (host, port) = match addr.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
        Some((h, Ok(p))) => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p,
        ),
        _ => {
            return row(
                Outcome::Fail,
                format!("`{addr}` is not host:port"),
                "host:port",
            )
            .hint("write endpoints as host:port, tcp://, http://, tls:// or postgres:// URLs");
        }
    };
    let stream = match tokio::time::timeout(timeout, connect(host, port)).await {
        Err(_) => {
            return row(
                Outcome::Fail,
                format!("filtered: no answer within {} ms", timeout.as_millis()),
                "connect",
            )
            .hint(format!(
                "packets to {addr} are dropped (a firewall rule or a down host): open the port from {from}"
            ));
        }
        Ok(Err(ConnectError::Refused)) => {
            return row(Outcome::Fail, "refused".into(), "connect").hint(format!(
                "the host answers but nothing listens on {addr}: start the service or fix the port"
            ));
        }
        Ok(Err(ConnectError::Other { measured, hint })) => {
            return row(Outcome::Fail, measured, "connect").hint(hint);
        }
        Ok(Ok(s)) => s,
    };
    let connected = format!("connected in {} ms", started.elapsed().as_millis());
    match flavour {
        Flavour::Tcp => row(Outcome::Pass, connected, "connect"),
        Flavour::Tls => {
            let rest = endpoint.trim().trim_start_matches("tls://");
            let expected = "trusted certificate for the host, not expiring soon";
            match crate::tls::options(rest, base_dir) {
                Err(e) => row(Outcome::Fail, e, expected)
                    .hint("write tls endpoints as tls://host:port?ca=FILE&name=HOST&warn_days=N"),
                Ok((_, o)) => {
                    let f = crate::tls::handshake(stream, &addr, &o, timeout).await;
                    let v = row(f.outcome, f.measured, expected);
                    match f.hint {
                        Some(h) => v.hint(h),
                        None => v,
                    }
                }
            }
        }
        Flavour::Http => {
            let answer = tokio::time::timeout(timeout, crate::http::get_on(stream, endpoint))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())));
            match answer {
                Ok(a) if a.status < 500 => {
                    row(Outcome::Pass, format!("HTTP {}", a.status), "HTTP < 500")
                }
                Ok(a) => row(Outcome::Fail, format!("HTTP {}", a.status), "HTTP < 500")
                    .hint("the service answers with a server error"),
                Err(e) => row(Outcome::Fail, e, "HTTP < 500")
                    .hint("the port is open but does not speak HTTP/1.1 as expected"),
            }
        }
        Flavour::Postgres => match pg_ssl_probe(stream, timeout).await {
            Ok(b) => row(
                Outcome::Pass,
                format!("postgres answered `{}`", b as char),
                "postgres",
            ),
            Err(e) => row(Outcome::Fail, e, "postgres")
                .hint("the port is open but no PostgreSQL server answers there"),
        },
    }
}

async fn pg_ssl_probe<S: Conn>(mut s: S, timeout: Duration) -> Result<u8, String> {
    // SSLRequest: length 8, code 80877103. A server answers one byte, `S` or `N`.
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&8u32.to_be_bytes());
    msg[4..].copy_from_slice(&80_877_103u32.to_be_bytes());
    tokio::time::timeout(timeout, async {
        s.write_all(&msg).await.map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match b[0] {
            b'S' | b'N' => Ok(b[0]),
            other => Err(format!("unexpected answer byte 0x{other:02x}")),
        }
    })
    .await
    .map_err(|_| "no PostgreSQL answer in time".to_owned())?
}
