//! A steady HTTP load generator: the demo's users and the tests' traffic.
//!
//! Requests are paced by a fixed schedule (not "as fast as possible"), so a rate of
//! 1,000 req/s means 1,000 requests each second whatever the latency; each worker keeps
//! one keep-alive connection. Counts by status class and by the version header the proxy
//! adds tell what clients actually saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What clients saw so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Connection-level failures.
    pub failed: u64,
    /// Answers served by the canary (`x-slipway-version: canary`).
    pub canary: u64,
    /// 5xx answers served by the canary.
    pub canary_errors: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
    canary: AtomicU64,
    canary_errors: AtomicU64,
}

/// A running load.
pub struct Traffic {
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    tasks: JoinSet<()>,
}

impl Traffic {
    /// Send `rate` requests per second to `GET http://addr/path` from `workers` connections.
    pub fn start(addr: SocketAddr, path: &str, rate: u32, workers: u32) -> Self {
        let (stop, rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        let workers = workers.max(1);
        let per_worker = Duration::from_secs_f64(f64::from(workers) / f64::from(rate.max(1)));
        for w in 0..workers {
            let rx = rx.clone();
            let c = counters.clone();
            let path = path.to_owned();
            // Stagger workers so the schedule is smooth rather than bursty.
            let offset = per_worker.mul_f64(f64::from(w) / f64::from(workers));
            tasks.spawn(worker(addr, path, per_worker, offset, rx, c));
        }
        Self {
            stop,
            counters,
            tasks,
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> TrafficStats {
        let c = &self.counters;
        TrafficStats {
            sent: c.sent.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            server_errors: c.server_errors.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            canary: c.canary.load(Ordering::Relaxed),
            canary_errors: c.canary_errors.load(Ordering::Relaxed),
        }
    }

    /// Stop sending and wait for the workers.
    pub async fn stop(mut self) -> TrafficStats {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.stats()
    }
}

async fn worker(
    addr: SocketAddr,
    path: String,
    every: Duration,
    offset: Duration,
    mut stop: watch::Receiver<bool>,
    c: Arc<Counters>,
) {
    let mut next = Instant::now() + offset;
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        next += every;
        // Behind schedule (a slow answer): skip ahead rather than bursting to catch up.
        if next < Instant::now() {
            next = Instant::now() + every;
        }
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect(addr).await;
        }
        c.sent.fetch_add(1, Ordering::Relaxed);
        let Some(s) = sender.as_mut() else {
            c.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let req = match hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::new())
        {
            Ok(r) => r,
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let canary = resp
                    .headers()
                    .get("x-slipway-version")
                    .is_some_and(|v| v == "canary");
                let _ = resp.into_body().collect().await;
                if (200..300).contains(&status) {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                } else if status >= 500 {
                    c.server_errors.fetch_add(1, Ordering::Relaxed);
                    if canary {
                        c.canary_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if canary {
                    c.canary.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
}

async fn connect(
    addr: SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}
