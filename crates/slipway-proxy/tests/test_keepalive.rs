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
