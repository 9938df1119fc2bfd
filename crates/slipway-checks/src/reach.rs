//! Reachability: can this machine (the local target) reach every endpoint a service
//! declares? Endpoints are `host:port` (TCP) or `tcp://`, `http://host:port/path`,
//! `postgres://host:port` and `tls://host:port[?ca=FILE&name=HOST&warn_days=N]` (a real
//! handshake, see [`crate::tls`]). A refused connection (nothing listens) and a filtered
//! one (no answer: a firewall drops the packets) fail with different hints.

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Probe one endpoint, relative `ca=` files resolved against `base_dir`.
pub async fn probe_in(endpoint: &str, timeout: Duration, base_dir: &Path) -> Verdict {
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
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
        Err(_) => {
            return row(
                Outcome::Fail,
                format!("filtered: no answer within {} ms", timeout.as_millis()),
                "connect",
            )
            .hint(format!(
                "packets to {addr} are dropped (a firewall rule or a down host): open the port from this machine"
            ));
        }
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
            return row(Outcome::Fail, "refused".into(), "connect").hint(format!(
                "the host answers but nothing listens on {addr}: start the service or fix the port"
            ));
        }
        Ok(Err(e)) => {
            return row(Outcome::Fail, format!("error: {e}"), "connect").hint(format!(
                "check the name and route to {addr} from this machine"
            ));
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
            drop(stream);
            match crate::http::get(endpoint, timeout).await {
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

async fn pg_ssl_probe(mut s: TcpStream, timeout: Duration) -> Result<u8, String> {
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
