//! Bodies pass byte-identical and streamed: large, chunked, interleaved.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper::body::{Body, Frame};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::support::{backend, connect, get, noise, post, proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_round_trips_byte_identical() {
    let b = backend("1.0.0").await;
    let proxy = proxy(&[b.local_addr()], &[], 0).await;
    let mut conn = connect(proxy.local_addr()).await;
    let payload = Bytes::from(noise(8 << 20, 42));
    let (resp, body) = post(&mut conn, "/echo", payload.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len(), payload.len());
    assert_eq!(
        hex::encode(Sha256::digest(&body)),
        hex::encode(Sha256::digest(&payload))
    );
}

/// A request body whose chunks the test feeds by hand.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// The client sends a chunked body one piece at a time and reads each piece back
/// through the proxy before sending the next: only possible if neither direction is
/// buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_and_response_stream_interleaved() {
    let b = backend("1.0.0").await;
    let proxy = proxy(&[b.local_addr()], &[], 0).await;
    let mut conn = connect::<ChannelBody>(proxy.local_addr()).await;
    let (tx, rx) = mpsc::channel(1);
    let req = Request::post("/echo")
        .header("host", "test")
        .body(ChannelBody(rx))
        .unwrap();
    let first = Bytes::from(noise(1000, 1));
    tx.send(first.clone()).await.unwrap();
    let resp = conn.send(req).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let mut sent = first.to_vec();
    for round in 0..20u64 {
        while received.len() < sent.len() {
            let frame = body.frame().await.unwrap().unwrap();
            received.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(received, sent, "round {round}");
        let next = Bytes::from(noise(
            777 + usize::try_from(round).unwrap() * 100,
            round + 2,
        ));
        sent.extend_from_slice(&next);
        tx.send(next).await.unwrap();
    }
    drop(tx);
    while let Some(frame) = body.frame().await {
        received.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(received, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunked_response_arrives_whole_and_in_order() {
    let b = backend("1.0.0").await;
    let proxy = proxy(&[b.local_addr()], &[], 0).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let (resp, body) = get(&mut conn, "/stream?chunks=300&size=10000", &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "stays chunked"
    );
    assert_eq!(body.len(), 300 * 10_000);
    for (i, chunk) in body.chunks(10_000).enumerate() {
        let fill = u8::try_from(i % 251).unwrap();
        assert!(chunk.iter().all(|b| *b == fill), "chunk {i} corrupted");
    }
}

#[tokio::test]
async fn end_to_end_headers_pass_and_hop_by_hop_do_not() {
    // A raw backend that echoes the request head it received as the response body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut head = String::new();
                        for (k, v) in req.headers() {
                            head.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
                        }
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(head)));
                        resp.headers_mut()
                            .insert("x-backend", "yes".parse().unwrap());
                        resp.headers_mut()
                            .insert("connection", "x-internal".parse().unwrap());
                        resp.headers_mut()
                            .insert("x-internal", "secret".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let proxy = proxy(&[backend_addr], &[], 0).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let (resp, body) = get(
        &mut conn,
        "/x?y=1",
        &[
            ("x-custom", "Kept Value"),
            ("connection", "x-hop"),
            ("x-hop", "dropped"),
            ("x-forwarded-for", "10.1.2.3"),
            ("cookie", "a=1; b=2"),
        ],
    )
    .await;
    let head = String::from_utf8(body.to_vec()).unwrap();
    assert!(head.contains("x-custom: Kept Value\n"), "{head}");
    assert!(head.contains("cookie: a=1; b=2\n"), "{head}");
    assert!(
        head.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1\n"),
        "{head}"
    );
    assert!(!head.contains("x-hop"), "{head}");
    assert!(!head.contains("connection"), "{head}");
    assert_eq!(resp.headers()["x-backend"], "yes");
    assert!(resp.headers().get("x-internal").is_none());
}
