//! Forwarding one request: pick a version and backend, rewrite hop-by-hop headers, send it
//! through the pooled client, stream the response back, and count the outcome.
//!
//! Bodies are never buffered: the client's request body is handed to the upstream
//! connection as it arrives, and the upstream response body is handed to the client the
//! same way, wrapped only to keep the in-flight count honest.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri};

use crate::matching::Routed;
use crate::metrics::{InFlight, Metrics, Outcome};
use crate::routing::{Backend, Decision, Router, Version};
use crate::timer::UpstreamTimer;
use crate::upstream::{self, UpstreamConfig};

/// Testers force a version with this request header: `canary` or `stable`. Honoured only
/// from the sources the proxy trusts ([`crate::ProxyConfig::route_override_from`]; from
/// anyone else it is removed and the request routed by weight), and a forced request is
/// never counted in the numbers canary analysis judges: otherwise any client could
/// choose which version serves it, or dilute a failing canary's error rate with its own
/// healthy requests.
pub const ROUTE_HEADER: &str = "x-slipway-route";
/// Every proxied response says which version answered it.
pub const VERSION_HEADER: &str = "x-slipway-version";

/// The body the proxy answers with: the backend's, streamed, or its own short message.
pub type ProxyBody = Either<Tracked<Incoming>, Full<Bytes>>;

/// Shared by all connection tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) upstream_timeout: Option<Duration>,
    /// Sources whose [`ROUTE_HEADER`] is honoured.
    pub(crate) route_override_from: Vec<ipnet::IpNet>,
}

impl Shared {
    /// Count a finished request: in the analysed numbers, or — forced by a tester or
    /// sent by a match route — apart. When an analysed one trips the canary guard, the
    /// canary gets no further request from this instant (weight 0, match routes and
    /// affinity cleared), before the controller has even looked.
    fn count(&self, version: Version, routed: Routed, outcome: Outcome, elapsed: Duration) {
        match routed {
            Routed::Forced => self.metrics.record_forced(version),
            Routed::Matched => self.metrics.record_matched(version, outcome),
            Routed::Weighted | Routed::Sticky => {
                if self.metrics.record(version, outcome, elapsed).is_some() {
                    // The guard tripped on the canary's own traffic: take it all away.
                    self.router.set_weight(0);
                    self.router.set_routes(crate::matching::Compiled::default());
                }
            }
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus `expect`: hyper already answered the
/// client's `100-continue` when it started reading the body, so the backend must not.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

/// Whether `name` is in [`HOP_BY_HOP`]; the length test first, because most names
/// differ in length from all seven and comparing a length is cheaper than seven names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // connection/keep-alive 10, proxy-connection 16, te 2, transfer-encoding 17,
    // upgrade 7, expect 6.
    matches!(name.as_str().len(), 2 | 6 | 7 | 10 | 16 | 17) && HOP_BY_HOP.contains(name)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What one client connection's requests share: rendered once when it is accepted.
#[derive(Debug)]
pub(crate) struct ClientConn {
    pub(crate) shared: Arc<Shared>,
    /// `X-Forwarded-For` value of the peer.
    pub(crate) peer_ip: HeaderValue,
    pub(crate) timer: UpstreamTimer,
    /// The peer is a source allowed to force a version with [`ROUTE_HEADER`].
    pub(crate) may_route: bool,
}

impl ClientConn {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        let ip = peer.ip().to_canonical();
        let may_route = shared.route_override_from.iter().any(|n| n.contains(&ip));
        Self {
            shared,
            peer_ip: peer_ip_value(peer),
            timer: UpstreamTimer::default(),
            may_route,
        }
    }
}

pub(crate) async fn handle(
    conn: &ClientConn,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let shared = &*conn.shared;
    let peer_ip = &conn.peer_ip;
    let started = Instant::now();
    let overridden = if conn.may_route {
        route_override(req.headers())
    } else {
        // Not a trusted source: the header means nothing here, and goes no further.
        req.headers_mut().remove(ROUTE_HEADER);
        Ok(None)
    };
    let pools = shared.router.pools();
    let Decision {
        version,
        routed,
        set_cookie,
    } = match overridden {
        Ok(Some(version)) => Decision {
            version,
            routed: Routed::Forced,
            set_cookie: None,
        },
        Ok(None) => shared.router.decide(req.headers(), &pools),
        Err(()) => {
            return Ok(local_response(
                StatusCode::BAD_REQUEST,
                "x-slipway-route must be `canary` or `stable`\n",
                None,
            ));
        }
    };
    let Some(backend) = pools.pool(version).next_backend() else {
        // Counted: a version that should take traffic but has no backend is failing.
        shared.count(version, routed, Outcome::ProxyError, started.elapsed());
        return Ok(local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend for this version\n",
            Some(version),
        ));
    };

    let backend = Arc::clone(backend);
    drop(pools);

    // Upstream requests go in origin form; a client that sent the absolute form (as to
    // a forward proxy) gets its path and query forwarded.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = hyper::http::uri::Parts::default();
        parts.path_and_query = Some(path_and_query);
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return Ok(local_response(
                    StatusCode::BAD_REQUEST,
                    "request target cannot be forwarded\n",
                    None,
                ));
            }
        }
    }
    *req.version_mut() = hyper::Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    append_forwarded_for(req.headers_mut(), peer_ip);
    if !req.headers().contains_key(header::HOST) {
        // HTTP/1.1 requires it; an HTTP/1.0 client may have left it out.
        req.headers_mut().insert(header::HOST, backend.host.clone());
    }

    let in_flight = shared.metrics.in_flight_guard(version);
    let sent = upstream::send(backend.addr, &backend.idle, &shared.upstream, started, req);
    let result = match shared.upstream_timeout {
        Some(limit) => {
            let deadline = tokio::time::Instant::from_std(started) + limit;
            match conn.timer.limit(deadline, sent).await {
                Some(result) => result.map_err(|_| StatusCode::BAD_GATEWAY),
                None => Err(StatusCode::GATEWAY_TIMEOUT),
            }
        }
        None => sent.await.map_err(|_| StatusCode::BAD_GATEWAY),
    };
    let elapsed = started.elapsed();
    match result {
        Ok((response, sender)) => {
            shared.count(
                version,
                routed,
                Outcome::Status(response.status().as_u16()),
                elapsed,
            );
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(VERSION_HEADER, HeaderValue::from_static(version.as_str()));
            if let Some(cookie) = set_cookie {
                // Appended: the backend's own cookies stay.
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            let body = Tracked {
                ended: body.is_end_stream(),
                inner: body,
                _in_flight: in_flight,
                reuse: Some(Reuse {
                    sender,
                    backend,
                    max_idle: shared.upstream.max_idle,
                    started,
                }),
            };
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(status) => {
            shared.count(version, routed, Outcome::ProxyError, elapsed);
            let message = if status == StatusCode::GATEWAY_TIMEOUT {
                "upstream timed out\n"
            } else {
                "upstream failed\n"
            };
            Ok(local_response(status, message, Some(version)))
        }
    }
}

/// `Ok(None)` without the header, `Err` when it names no version.
fn route_override(headers: &HeaderMap) -> Result<Option<Version>, ()> {
    let Some(value) = headers.get(ROUTE_HEADER) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?.trim();
    if value.eq_ignore_ascii_case("canary") {
        Ok(Some(Version::Canary))
    } else if value.eq_ignore_ascii_case("stable") {
        Ok(Some(Version::Stable))
    } else {
        Err(())
    }
}

/// Removes the headers that describe this hop only: the fixed list and every header the
/// `Connection` header names. Everything else passes unchanged.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the few headers present is
    // cheaper than a hashed removal per listed name on every request and response.
    // Connection-listed names only matter when `Connection` itself is present, and it
    // is in the fixed list.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `X-Forwarded-For` value naming one client connection's peer, rendered once per
/// connection and shared by its requests.
pub(crate) fn peer_ip_value(peer: SocketAddr) -> HeaderValue {
    #[expect(
        clippy::expect_used,
        reason = "an IP address renders as ASCII digits, dots, colons and hex: always a valid header value"
    )]
    HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value")
}

fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        // The usual case: no proxy in front, so the value is just this connection's peer.
        headers.insert(X_FORWARDED_FOR.clone(), client.clone());
        return;
    }
    let mut values = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if !values.is_empty() {
        values.push_str(", ");
    }
    // A HeaderValue built from an IP address is ASCII (see `peer_ip_value`).
    values.push_str(client.to_str().unwrap_or_default());
    if let Ok(value) = HeaderValue::from_str(&values) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

pub(crate) fn local_response(
    status: StatusCode,
    message: &'static str,
    version: Option<Version>,
) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        message.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(version) = version {
        headers.insert(VERSION_HEADER, HeaderValue::from_static(version.as_str()));
    }
    response
}

/// A response body that keeps its request counted as in flight until it is finished
/// or dropped, and puts its upstream connection back for the next request once it has
/// been read to its end (a body dropped early leaves a connection in an unknown state:
/// it is closed instead).
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
    ended: bool,
    reuse: Option<Reuse>,
}

#[derive(Debug)]
struct Reuse {
    sender: SendRequest<Incoming>,
    backend: Arc<Backend>,
    max_idle: usize,
    /// When the request that used the connection started: stands in for "idle since"
    /// (a little early, so a connection is never kept longer than the idle timeout) and
    /// saves a clock read per request.
    started: Instant,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling once `is_end_stream` says so, without waiting for `None`.
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if !self.ended {
            return;
        }
        if let Some(reuse) = self.reuse.take() {
            reuse
                .backend
                .idle
                .put_back(reuse.sender, reuse.max_idle, reuse.started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_and_fixed_hop_headers_go_others_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Trace-Hop"),
        );
        headers.insert("x-trace-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        headers.insert("x-custom", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-type", "x-custom"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let peer = peer_ip_value("127.0.0.7:5000".parse().unwrap());
        let peer = &peer;
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, peer);
        assert_eq!(headers[&X_FORWARDED_FOR], "127.0.0.7");
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_forwarded_for(&mut headers, peer);
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.7");
    }

    #[test]
    fn route_header_values() {
        let mut headers = HeaderMap::new();
        assert_eq!(route_override(&headers), Ok(None));
        headers.insert(ROUTE_HEADER, HeaderValue::from_static("Canary"));
        assert_eq!(route_override(&headers), Ok(Some(Version::Canary)));
        headers.insert(ROUTE_HEADER, HeaderValue::from_static("blue"));
        assert_eq!(route_override(&headers), Err(()));
    }
}
