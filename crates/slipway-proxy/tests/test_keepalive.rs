//! Connections are reused on both sides of the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::Request;

use crate::support::{connect, get, proxy};

#[tokio::test]
async fn client_and_upstream_connections_are_reused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let proxy = proxy(&[backend_addr], &[], 0).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    for _ in 0..100 {
        let (resp, body) = get(&mut conn, "/", &[]).await;
        assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));
        assert!(!conn.is_closed(), "the client connection stays open");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for 100 requests"
    );
}

/// A backend that closes every connection after one response (`Connection: close`):
/// each request needs a fresh upstream connection, and none may fail because the proxy
/// tried a connection the backend had already closed.
#[tokio::test]
async fn backend_closing_after_each_response_never_costs_a_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let proxy = proxy(&[backend_addr], &[], 0).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    for i in 0..50 {
        let (resp, body) = get(&mut conn, "/", &[]).await;
        assert_eq!(
            (resp.status().as_u16(), &body[..]),
            (200, &b"ok"[..]),
            "request {i}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        50,
        "one connection per request"
    );
    let stats = proxy.snapshot().stable;
    assert_eq!((stats.requests, stats.errors()), (50, 0));
}

/// Idle upstream connections are closed once the idle timeout has passed.
#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&closed);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                // The serving future ends when the proxy closes its side.
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let proxy = slipway_proxy::Proxy::start(slipway_proxy::ProxyConfig {
        pools: slipway_proxy::Pools {
            stable: vec![backend_addr],
            canary: vec![],
        },
        idle_timeout: std::time::Duration::from_millis(300),
        ..slipway_proxy::ProxyConfig::default()
    })
    .await
    .unwrap();
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let (resp, _) = get(&mut conn, "/", &[]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "kept alive right after use"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while closed.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle upstream connection was never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And the next request still works, on a new connection.
    let (resp, body) = get(&mut conn, "/", &[]).await;
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));
}
