//! What bounds the connections a client holds: a header-read timeout and a cap per
//! client, on the traffic and the admin port, through real sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use slipway_proxy::{Pools, Proxy, ProxyConfig, ProxyHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{backend, connect, get, socket_from};

async fn limited_proxy(stable: SocketAddr, timeout: Duration, cap: usize) -> ProxyHandle {
    Proxy::start(ProxyConfig {
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        pools: Pools {
            stable: vec![stable],
            canary: vec![],
        },
        header_read_timeout: timeout,
        max_connections_per_client: cap,
        ..ProxyConfig::default()
    })
    .await
    .unwrap()
}

/// Whether the server closes `s` within `within` (reads EOF or a reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An error page (408) may come first; the close follows.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_no_request_head_is_closed_after_the_header_read_timeout() {
    let stable = backend("1.0.0").await;
    let proxy = limited_proxy(stable.local_addr(), Duration::from_millis(300), 64).await;
    let admin = proxy.admin_addr().unwrap();
    for addr in [proxy.local_addr(), admin] {
        // Nothing at all, then half a header: both are closed.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(
            closed_within(&mut idle, Duration::from_secs(5)).await,
            "{addr}: idle kept open"
        );
        assert!(
            closed_within(&mut slow, Duration::from_secs(5)).await,
            "{addr}: slow header kept open"
        );
    }
    // A client that sends its request in time is served.
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    assert_eq!(get(&mut conn, "/", &[]).await.0.status(), 200);
}

/// The attack, scaled down: one client holds connections open and sends nothing.
/// Past its cap each new one is closed at once, so it cannot take the descriptor table,
/// and another client is served on both ports meanwhile.
#[tokio::test]
async fn one_client_beyond_its_connection_cap_is_closed_while_others_are_served() {
    let stable = backend("1.0.0").await;
    let cap = 16;
    // A long header timeout: only the cap can close these.
    let proxy = limited_proxy(stable.local_addr(), Duration::from_secs(60), cap).await;
    let admin = proxy.admin_addr().unwrap();
    for addr in [proxy.local_addr(), admin] {
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(socket_from("127.0.0.2", addr).await.unwrap());
        }
        // Accepted connections are counted as the server accepts them: one over the cap
        // is closed, the ones held stay open.
        let mut extra = socket_from("127.0.0.2", addr).await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(5)).await,
            "{addr}: a connection past the cap stayed open"
        );
        assert!(
            !closed_within(&mut held[0], Duration::from_millis(200)).await,
            "{addr}: a connection within the cap was closed"
        );
        // Another client is served meanwhile.
        let mut conn = connect::<Empty<Bytes>>(addr).await;
        let path = if addr == admin { "/metrics" } else { "/" };
        assert_eq!(get(&mut conn, path, &[]).await.0.status(), 200, "{addr}");
        // Once the client lets go, it may connect again.
        drop(held);
        let mut again = None;
        for _ in 0..100 {
            let mut s = socket_from("127.0.0.2", addr).await.unwrap();
            if !closed_within(&mut s, Duration::from_millis(100)).await {
                again = Some(s);
                break;
            }
        }
        assert!(
            again.is_some(),
            "{addr}: the client's slots were never freed"
        );
    }
}
