//! The `demo-app` binary: parses flags, serves, prints the bound address, and stops
//! gracefully on SIGTERM or Ctrl-C.
//!
//! The first stdout line is always `listening on IP:PORT`, so a supervisor that passed
//! `--port 0` learns the port without racing for one.

// This binary's whole interface is its stdout line and exit code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;

/// A tiny HTTP service whose version, latency and error rate are flags.
#[derive(Debug, Parser)]
#[command(name = "demo-app", disable_version_flag = true)]
struct Args {
    /// Port to listen on; 0 picks a free port (printed on the first stdout line).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The version this instance reports (body of `/` and `/version`, `x-version` header).
    #[arg(long, default_value = "1.0.0")]
    version: String,
    /// Fraction of requests to `/`, `/echo` and `/stream` answered with 500 (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to each request to `/`, `/echo` and `/stream`, e.g. `20ms`, `1s`.
    #[arg(long, default_value = "0", value_parser = demo_app::parse_duration)]
    latency: std::time::Duration,
    /// After N requests to `/`, `/echo` and `/stream`, answer every further one with 500.
    #[arg(long, value_name = "N")]
    fail_after: Option<u64>,
    /// Fail requests independently at `--error-rate` from this seed (pseudo-random,
    /// reproducible) instead of evenly spread.
    #[arg(long, value_name = "SEED")]
    error_seed: Option<u64>,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread means a current-thread runtime: no work stealing, the cheapest setup
    // for a pinned benchmark backend.
    let mut builder = match args.threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    if let Some(threads) = args.threads.filter(|t| *t > 1) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("demo-app: failed to start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo-app: {err}");
            let mut source = std::error::Error::source(&*err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = demo_app::Config {
        addr: SocketAddr::new(args.host, args.port),
        version: args.version,
        error_rate: args.error_rate,
        latency: args.latency,
        fail_after: args.fail_after,
        error_seed: args.error_seed,
    };
    let server = demo_app::serve(config).await?;
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.shutdown().await;
    Ok(())
}
