//! Keep-alive connections to the backends: one idle list per backend, reused most
//! recently used first, refilled when a response body has been read to its end.
//!
//! Why not hyper-util's pooled client: on this path it cost about 8% of the proxy's CPU
//! per request (a SipHash map lookup under a lock at checkout, a lazy connect future, a
//! task spawned per response only to put the connection back). Here a connection is
//! checked out with one uncontended lock and a `Vec::pop`, and put back by the response
//! body itself when it ends (see [`crate::forward::Tracked`]).
//!
//! What it keeps from that client: a request that was never written because its idle
//! connection had closed meanwhile is sent again on the next one (or a new connection);
//! connections idle longer than the idle timeout are not reused and are closed by
//! [`crate::routing::Router::reap_idle`]; at most `max_idle` are kept per backend.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Limits of the upstream side, from [`crate::ProxyConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Duration,
}

/// Why a request got no response from its backend (the client gets a 502).
#[derive(Debug)]
pub(crate) struct UpstreamFailed;

type Sender = SendRequest<Incoming>;

/// Idle keep-alive connections to one backend.
#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    list: Mutex<Vec<(Sender, Instant)>>,
}

impl IdleConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        // Poison only means a holder panicked between Vec operations, which leave the
        // Vec valid; the connections in it are still usable or detected as closed.
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self, idle_timeout: Duration, now: Instant) -> Option<Sender> {
        let mut list = self.lock();
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && now.saturating_duration_since(since) < idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end; `since` is when its
    /// last request started (callers have it at hand; a clock read per request is not
    /// free, and an earlier "idle since" only makes reuse more careful).
    pub(crate) fn put_back(&self, sender: Sender, max_idle: usize, since: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut list = self.lock();
        if list.len() < max_idle {
            list.push((sender, since));
        }
    }

    /// Drops (and so closes) connections idle too long or already closed.
    pub(crate) fn reap(&self, idle_timeout: Duration) {
        self.lock()
            .retain(|(sender, since)| !sender.is_closed() && since.elapsed() < idle_timeout);
    }
}

/// Sends `req` to the backend at `addr` on an idle connection or a new one; returns the
/// response head and the connection, to be put back once the body has ended. `now` is
/// when the request started.
pub(crate) async fn send(
    addr: SocketAddr,
    idle: &IdleConns,
    config: &UpstreamConfig,
    now: Instant,
    mut req: Request<Incoming>,
) -> Result<(Response<Incoming>, Sender), UpstreamFailed> {
    while let Some(mut sender) = idle.checkout(config.idle_timeout, now) {
        // A connection put back the moment its last body ended may need its connection
        // task to run once more before it takes the next request.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut err) => match err.take_message() {
                // Never written: the connection closed while idle; the next one gets it.
                Some(unsent) => req = unsent,
                None => return Err(UpstreamFailed),
            },
        }
    }
    let mut sender = connect(addr, config.connect_timeout).await?;
    let response = sender.send_request(req).await.map_err(|_| UpstreamFailed)?;
    Ok((response, sender))
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, UpstreamFailed> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_elapsed| UpstreamFailed)?
        .map_err(|_| UpstreamFailed)?;
    // Small requests and responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| UpstreamFailed)?;
    tokio::spawn(async move {
        // Ends when the backend closes or every handle to it is dropped; a broken
        // connection shows up as an error on the request that was using it.
        let _ = connection.await;
    });
    Ok(sender)
}
