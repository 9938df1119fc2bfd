//! Shared by the nginx and HAProxy router tests: real backends that say who they are,
//! requests through the router with fresh connections, and a child process that is
//! killed by its pid when the test ends (even by a panic).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// A free loopback port (bound, then released for the program under test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A demo-app backend reporting `version` in its `x-version` header.
pub async fn backend(version: &str, latency: Duration, error_rate: f64) -> demo_app::RunningServer {
    demo_app::serve(demo_app::Config {
        version: version.into(),
        latency,
        error_rate,
        ..demo_app::Config::default()
    })
    .await
    .unwrap()
}

/// One GET on a fresh connection: status and the `x-version` that answered.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "app.test")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let _ = resp.into_body().collect().await;
    Ok((status, version))
}

/// How many of `n` requests through `addr` the canary answered (every one must be a 200).
pub async fn canary_share(addr: SocketAddr, n: usize) -> usize {
    let mut canary = 0;
    for _ in 0..n {
        let (status, version) = get(addr, "/").await.unwrap();
        assert_eq!(status, 200, "a request through the router failed");
        match version.as_str() {
            "canary" => canary += 1,
            "stable" => {}
            other => panic!("answered by `{other}`"),
        }
    }
    canary
}

/// Poll `f` until it returns true or `limit` passes.
pub async fn until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A daemon started for a test in the foreground, stopped by its pid on drop: SIGTERM
/// (nginx's master takes its workers with it), SIGKILL after 5 s.
pub struct Daemon {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend that answers `version` only when released: each request it receives is
/// announced on `arrived` and held until `release` is sent, so a test knows a request is
/// in flight rather than hoping so.
pub struct HeldBackend {
    pub addr: SocketAddr,
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    pub release: tokio::sync::watch::Sender<bool>,
}

pub async fn held_backend(version: &'static str) -> HeldBackend {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (release, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(());
                let _ = rx.wait_for(|r| *r).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nx-version: {version}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    HeldBackend {
        addr,
        arrived,
        release,
    }
}
