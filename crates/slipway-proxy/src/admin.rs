//! The admin listener, separate from the traffic port so a service's own `/metrics` is
//! still proxied to it.
//!
//! Open to anyone who can reach it (loopback in practice): `GET /metrics` (Prometheus
//! text) and `GET /weight`. Everything under `/admin/` needs the admin token in
//! [`TOKEN_HEADER`] when one is configured, because it changes routing or consumes the
//! analysis window: `GET /admin/state`, `PUT /admin/weight`, `PUT /admin/pools`,
//! `PUT /admin/guard`, `PUT /admin/routes`, `POST /admin/window`. Bodies are JSON, typed in [`crate::api`], so a controller in
//! another process (a `slipway` that outlives none of its proxies) drives the proxy
//! exactly as the in-process [`crate::ProxyHandle`] does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{GuardRequest, PoolsRequest, StateReport, WeightRequest, WindowReport};
use crate::forward::Shared;
use crate::guard::GuardConfig;
use crate::routing::{Pools, Version};

/// The header carrying the admin token.
pub const TOKEN_HEADER: &str = "x-slipway-admin-token";

/// Admin request bodies are small JSON documents; anything bigger is refused.
const BODY_LIMIT: usize = 1 << 20;

/// How much of a refused body is still read (and dropped) so the client gets its 413.
const DRAIN_LIMIT: usize = 8 << 20;

/// How long a refused body is drained at most.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what is left of `body`, `seen` bytes already read, within [`DRAIN_LIMIT`]
/// and [`DRAIN_TIME`]; errors end it (the connection is closed afterwards either way).
async fn drain(body: &mut Incoming, mut seen: usize) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// The shapes error messages show.
const WEIGHT_EXAMPLE: &str = r#"{"weight": 25} (0 to 100)"#;
const GUARD_EXAMPLE: &str = r#"{"max_error_rate": 0.05}"#;
const ROUTES_EXAMPLE: &str = r#"{"match": [{"headers": [{"name": "x-canary", "exact": "always"}]}], "affinity": {"cookie": "slipway-canary", "max_age_secs": 3600}}"#;
const POOLS_EXAMPLE: &str = r#"{"stable": ["127.0.0.1:8080"], "canary": ["127.0.0.1:8081"]}"#;

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
    limits: crate::ListenLimits,
    mut stop: watch::Receiver<bool>,
) {
    let clients = slipway_stdx::net::ClientLimiter::new(limits.max_per_client);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                // Over its cap, the client's new connection is closed at once (dropped).
                let Some(slot) = clients.admit(peer.ip()) else { continue };
                let shared = Arc::clone(&shared);
                let token = token.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    let token = token.clone();
                    async move { Ok::<_, Infallible>(respond(&shared, token.as_deref(), req).await) }
                });
                let conn = limits.http1().serve_connection(TokioIo::new(stream), svc);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            () = crate::stopped(&mut stop) => break,
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode the answer: {e}\n"),
        ),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// token was right.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Reads a JSON body of the shape `example` shows. Too big a body is a 413, refused on its
/// `Content-Length` or once reading passes the limit; one that does not parse is a 400 that
/// shows the expected shape.
///
/// A refused body is still read and dropped, up to [`DRAIN_LIMIT`] bytes for at most
/// [`DRAIN_TIME`], before the answer goes out (nginx's "lingering close"): a server that
/// closes with the client's bytes unread makes the kernel reset the connection, and the client
/// then sees a broken pipe or a reset instead of the 413 that says what to fix. Past those
/// bounds the connection is closed anyway, so a slow or endless sender costs little.
async fn body_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    example: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let too_large = || {
        let mut resp = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than {BODY_LIMIT} bytes; send a small JSON document: {example}\n"
            ),
        );
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
            drain(&mut body, 0).await;
        }
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            text(
                StatusCode::BAD_REQUEST,
                format!("failed to read the body: {e}\n"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > BODY_LIMIT {
                drain(&mut body, bytes.len() + data.len()).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}; send {example}\n"),
        )
    })
}

async fn respond(
    shared: &Shared,
    token: Option<&str>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            return reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                shared.metrics.render_prometheus(shared.router.weight()),
            );
        }
        (&Method::GET, "/weight") => {
            return text(StatusCode::OK, format!("{}\n", shared.router.weight()));
        }
        _ => {}
    }
    if !path.starts_with("/admin/") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if let Some(expected) = token {
        let given = req
            .headers()
            .get(TOKEN_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !same_token(given, expected.as_bytes()) {
            return text(
                StatusCode::UNAUTHORIZED,
                format!("missing or wrong {TOKEN_HEADER}\n"),
            );
        }
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/admin/state") => json(&state(shared)),
        (Method::PUT, "/admin/weight") => {
            match body_json::<WeightRequest>(req, WEIGHT_EXAMPLE).await {
                Ok(w) if w.weight <= 100 => {
                    shared.router.set_weight(w.weight);
                    json(&state(shared))
                }
                Ok(w) => text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "canary weight {} is above 100 percent; send {WEIGHT_EXAMPLE}\n",
                        w.weight
                    ),
                ),
                Err(resp) => resp,
            }
        }
        (Method::PUT, "/admin/pools") => {
            match body_json::<PoolsRequest>(req, POOLS_EXAMPLE).await {
                Ok(p) => {
                    // In-flight requests keep the backend they were dispatched to.
                    shared.router.set_pools(Pools {
                        stable: p.stable,
                        canary: p.canary,
                    });
                    json(&state(shared))
                }
                Err(resp) => resp,
            }
        }
        (Method::PUT, "/admin/guard") => {
            match body_json::<GuardRequest>(req, GUARD_EXAMPLE).await {
                Ok(g) => {
                    let config = g.max_error_rate.and_then(GuardConfig::for_max_error_rate);
                    if g.max_error_rate.is_some() && config.is_none() {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "no hard failure can be told from an error rate of {:?}: send a max_error_rate between 0 and 0.5 (exclusive), e.g. {GUARD_EXAMPLE}, or null to disarm\n",
                                g.max_error_rate
                            ),
                        );
                    }
                    shared.metrics.arm_guard(Version::Canary, config);
                    json(&state(shared))
                }
                Err(resp) => resp,
            }
        }
        (Method::PUT, "/admin/routes") => {
            match body_json::<crate::matching::Routes>(req, ROUTES_EXAMPLE).await {
                Ok(r) => match crate::matching::Compiled::new(r) {
                    Ok(compiled) => {
                        shared.router.set_routes(compiled);
                        json(&state(shared))
                    }
                    Err(e) => text(
                        StatusCode::BAD_REQUEST,
                        format!("{e}; send e.g. {ROUTES_EXAMPLE}, or {{}} to clear\n"),
                    ),
                },
                Err(resp) => resp,
            }
        }
        (Method::POST, "/admin/window") => {
            let window = shared.metrics.take_window(shared.router.weight());
            json(&WindowReport::from(&window))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn state(shared: &Shared) -> StateReport {
    let pools = shared.router.pools();
    let snapshot = shared.metrics.snapshot(shared.router.weight());
    StateReport {
        weight: shared.router.weight(),
        stable: pools.spec.stable.clone(),
        canary: pools.spec.canary.clone(),
        in_flight_stable: shared.metrics.in_flight(Version::Stable),
        in_flight_canary: shared.metrics.in_flight(Version::Canary),
        requests_stable: snapshot.stable.requests,
        requests_canary: snapshot.canary.requests,
        errors_stable: snapshot.stable.errors(),
        errors_canary: snapshot.canary.errors(),
        guard_trip: shared.metrics.guard_trip(Version::Canary),
        matched_stable: snapshot.stable.matched_requests,
        matched_canary: snapshot.canary.matched_requests,
        routes: shared.router.routes().spec.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"", b"abc"));
    }
}
