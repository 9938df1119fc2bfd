//! Request routing and the handlers behind each endpoint.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::Config;
use crate::faults::Faults;
use crate::metrics::{HANDLERS, Metrics};

/// The body type of every response.
pub(crate) type DemoBody = BoxBody<Bytes, hyper::Error>;

/// The most a `/stream` request may ask for, so a typo cannot exhaust memory or time.
const MAX_STREAM_BYTES: u64 = 1 << 30;

#[derive(Debug)]
pub(crate) struct State {
    version: String,
    version_header: HeaderValue,
    latency: std::time::Duration,
    faults: Faults,
    /// Sequence number of the next faultable request.
    served: AtomicU64,
    metrics: Metrics,
}

impl State {
    pub(crate) fn new(config: Config) -> Self {
        let version_header = HeaderValue::from_str(&config.version)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Self {
            faults: Faults::new(config.error_rate, config.fail_after).seeded(config.error_seed),
            version: config.version,
            version_header,
            latency: config.latency,
            served: AtomicU64::new(0),
            metrics: Metrics::default(),
        }
    }
}

pub(crate) async fn handle(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<DemoBody>, Infallible> {
    let started = Instant::now();
    let path = req.uri().path();
    let handler = HANDLERS
        .iter()
        .position(|h| *h == path)
        .unwrap_or(HANDLERS.len() - 1);
    let faultable = matches!(path, "/" | "/echo" | "/stream");
    let mut response = if faultable {
        faultable_request(state, req).await
    } else {
        match path {
            "/healthz" | "/ready" => text(StatusCode::OK, "ok\n"),
            "/version" => text(StatusCode::OK, format!("{}\n", state.version)),
            "/metrics" => {
                let mut r = text(StatusCode::OK, state.metrics.render(&state.version));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    };
    response
        .headers_mut()
        .insert("x-version", state.version_header.clone());
    state
        .metrics
        .record(handler, response.status().as_u16(), started.elapsed());
    Ok(response)
}

async fn faultable_request(state: &State, req: Request<Incoming>) -> Response<DemoBody> {
    let n = state.served.fetch_add(1, Ordering::Relaxed);
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    if state.faults.fails(n) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "injected failure\n");
    }
    match req.uri().path() {
        "/echo" => {
            if req.method() != Method::POST && req.method() != Method::PUT {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use POST or PUT\n");
            }
            let content_type = req.headers().get(CONTENT_TYPE).cloned();
            // The body streams straight back: nothing is buffered, so a proxy test can
            // send gigabytes or interleave request and response chunks.
            let mut response = Response::new(req.into_body().boxed());
            if let Some(ct) = content_type {
                response.headers_mut().insert(CONTENT_TYPE, ct);
            }
            response
        }
        "/stream" => {
            let (chunks, size) = stream_params(req.uri().query().unwrap_or(""));
            if chunks.saturating_mul(size) > MAX_STREAM_BYTES {
                return text(StatusCode::BAD_REQUEST, "stream too large\n");
            }
            Response::new(ChunkStream::new(chunks, size).boxed())
        }
        _ => text(StatusCode::OK, format!("{}\n", state.version)),
    }
}

/// Reads `chunks` and `size` from a query string; defaults are 16 chunks of 1 KiB.
fn stream_params(query: &str) -> (u64, u64) {
    let mut chunks = 16;
    let mut size = 1024;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("chunks", v)) => chunks = v.parse().unwrap_or(chunks),
            Some(("size", v)) => size = v.parse().unwrap_or(size),
            _ => {}
        }
    }
    (chunks, size)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<DemoBody> {
    let mut response = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A body of `remaining` chunks of `size` bytes with no length known up front, so it is
/// sent with chunked transfer encoding. Chunk i is filled with byte `i % 251` so a reader
/// can check order and content without a reference copy.
struct ChunkStream {
    next: u64,
    remaining: u64,
    size: usize,
}

impl ChunkStream {
    fn new(chunks: u64, size: u64) -> Self {
        Self {
            next: 0,
            remaining: chunks,
            size: usize::try_from(size).unwrap_or(usize::MAX),
        }
    }
}

impl Body for ChunkStream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let fill = u8::try_from(self.next % 251).unwrap_or(0);
        self.next += 1;
        self.remaining -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![fill; self.size])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        // Deliberately unknown: the point of this endpoint is a chunked response.
        SizeHint::default()
    }
}
