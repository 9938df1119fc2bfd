//! Runs the Slipway proxy in front of given backends until SIGTERM or Ctrl-C, for
//! `benches/proxy_overhead.sh`.
//!
//! `bench_proxy --listen 127.0.0.1:8080 --stable 127.0.0.1:9000[,..] [--canary ..]
//! [--weight N] [--threads N] [--upstream-timeout-ms MS, 0 = none]`; prints `listening on ADDR` first.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
// A benchmark helper talks to its script through stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

// The allocator the `slipway` binary runs its proxy with (crates/slipway-cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;

use slipway_proxy::{Proxy, ProxyConfig};

fn addrs(list: &str) -> Result<Vec<SocketAddr>, String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("bad address {s:?}: {e}")))
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_proxy: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut config = ProxyConfig::default();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => config.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--admin" => {
                config.admin_listen = Some(value.parse().map_err(|e| format!("--admin: {e}"))?);
            }
            "--stable" => config.pools.stable = addrs(&value)?,
            "--canary" => config.pools.canary = addrs(&value)?,
            "--weight" => {
                config.canary_weight = value.parse().map_err(|e| format!("--weight: {e}"))?;
            }
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            "--upstream-timeout-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|e| format!("--upstream-timeout-ms: {e}"))?;
                config.upstream_timeout = (ms > 0).then(|| std::time::Duration::from_millis(ms));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    // One worker means a current-thread runtime: the fair match for one nginx worker
    // or one HAProxy thread, without work-stealing overhead.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("failed to start the runtime: {e}"))?;
    runtime.block_on(async move {
        let proxy = Proxy::start(config).await.map_err(|e| e.to_string())?;
        println!("listening on {}", proxy.local_addr());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("failed to install the SIGTERM handler: {e}"))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let snapshot = proxy.snapshot();
        eprintln!(
            "bench_proxy: stable {} requests ({} errors), canary {} requests",
            snapshot.stable.requests,
            snapshot.stable.errors(),
            snapshot.canary.requests
        );
        proxy.shutdown().await;
        Ok(())
    })
}
