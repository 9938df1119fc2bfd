//! Shared helpers: backends, a proxy in front of them, and a small HTTP client that keeps
//! one connection so tests can reason about keep-alive and ordering.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_proxy::{Pools, Proxy, ProxyConfig, ProxyHandle};
use tokio::net::TcpStream;

/// Generous upper bound for anything that should happen "soon"; tests poll, never sleep.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Starts an in-process demo-app with the given version.
pub async fn backend(version: &str) -> demo_app::RunningServer {
    backend_with(demo_app::Config {
        version: version.to_owned(),
        ..demo_app::Config::default()
    })
    .await
}

pub async fn backend_with(config: demo_app::Config) -> demo_app::RunningServer {
    demo_app::serve(config).await.unwrap()
}

/// A proxy on a free port with an admin port, in front of the given pools.
pub async fn proxy(stable: &[SocketAddr], canary: &[SocketAddr], weight: u8) -> ProxyHandle {
    Proxy::start(ProxyConfig {
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        pools: Pools {
            stable: stable.to_vec(),
            canary: canary.to_vec(),
        },
        canary_weight: weight,
        ..ProxyConfig::default()
    })
    .await
    .unwrap()
}

/// A free loopback port nobody listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One HTTP/1.1 keep-alive connection.
pub struct Conn<B> {
    sender: SendRequest<B>,
    pub addr: SocketAddr,
}

pub async fn connect<B>(addr: SocketAddr) -> Conn<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Conn { sender, addr }
}

/// [`connect`] from a chosen local address (another loopback address is another client).
pub async fn connect_from<B>(local: &str, addr: SocketAddr) -> Conn<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = socket_from(local, addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Conn { sender, addr }
}

/// A TCP connection to `addr` from the loopback address `local` (any port).
pub async fn socket_from(local: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local.parse().unwrap(), 0))?;
    socket.connect(addr).await
}

impl<B> Conn<B>
where
    B: hyper::body::Body + Send + 'static,
{
    pub async fn send(&mut self, req: Request<B>) -> Response<Incoming> {
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap()
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// GET `path` with optional extra headers; returns status, headers and the whole body.
pub async fn get(
    conn: &mut Conn<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response<()>, Bytes) {
    let mut req = Request::get(path).header("host", conn.addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = conn.send(req.body(Empty::new()).unwrap()).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// POST a whole body.
pub async fn post(conn: &mut Conn<Full<Bytes>>, path: &str, body: Bytes) -> (Response<()>, Bytes) {
    let req = Request::post(path)
        .header("host", conn.addr.to_string())
        .body(Full::new(body))
        .unwrap();
    let resp = conn.send(req).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// The `x-version` the backend answered with.
pub fn served_by(resp: &Response<()>) -> String {
    resp.headers()["x-version"].to_str().unwrap().to_owned()
}

/// Polls `check` until it returns true, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted byte anywhere shows.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}
