//! `slipway serve`: the HTTP API, SSE event stream and web UI of `slipway-server` over
//! the store `--store` names (HTTPS with `--tls-cert`/`--tls-key`), until SIGINT or
//! SIGTERM: then it stops accepting, lets open requests finish (for up to 3 s: an event
//! stream of a live run never ends by itself) and hands over the runs it drives — each
//! stopped where it is, its environment's lease released — so another server or a person
//! can resume them at once.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use slipway_engine::store::Store;
use slipway_model::exit;
use slipway_store::access::AccessDb;

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// How long open connections (event streams above all) get to finish after a signal.
const DRAIN: Duration = Duration::from_secs(3);

const EXAMPLES: &str = "\
Examples:
  slipway serve                                   # http://127.0.0.1:8080, store .slipway/slipway.db
  slipway serve --store postgres://slipway@db/slipway --listen 0.0.0.0:8080
  slipway serve --listen 127.0.0.1:0 --output json   # one line {\"listening\": …} when ready
  slipway serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem
  curl -H \"Authorization: Bearer $SLIPWAY_TOKEN\" http://127.0.0.1:8080/api/v1/runs

Every /api route and page needs an API token (`slipway access token create --user NAME`);
the web UI asks for it once at /login and keeps a server-side session (logout or revoking
the token ends it). /healthz is open. Behind a TLS-terminating proxy, give --secure-cookies
(and raise --max-connections-per-client: every client then comes from the proxy).";

/// `slipway serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (printed when ready).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Browsers reach this server over HTTPS (a TLS-terminating proxy in front): the
    /// session cookie gets `Secure` and the `__Host-` name.
    #[arg(long)]
    pub secure_cookies: bool,
    /// How long a connection may take to send a request's head (idle keep-alive
    /// connections are closed after it too).
    #[arg(long, default_value = "10s", value_parser = slipway_model::duration::parse_duration)]
    pub header_read_timeout: Duration,
    /// Connections one client address may hold open; more are closed at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,
    /// Serve HTTPS with this PEM certificate (chain) file; needs --tls-key. Cookies are
    /// then `Secure` and answers carry `Strict-Transport-Security`.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How often to look for runs a server started whose driver died (its claim on the
    /// run is free) and take them over here; `0s` never does.
    #[arg(long, default_value = "5s", value_parser = slipway_model::duration::parse_duration)]
    pub takeover_interval: Duration,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run the server until a signal.
pub fn serve(a: ServeArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let result = rt.block_on(run(a, out));
    // Everything is committed; the pools' background tasks need no orderly wait.
    rt.shutdown_background();
    result
}

async fn run(a: ServeArgs, out: &Output) -> Result<i32, CliError> {
    let session = slipway_ops::Session::open_for_service(a.store.store.as_deref(), "serve").await?;
    let store = session.store.clone();
    let access = AccessDb::for_store(&store).await.map_err(CliError::from)?;
    let location = store.location();
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(
            slipway_server::tls::server_config(cert, key)
                .map_err(|e| CliError::input(e, "see `slipway serve --help`"))?,
        ),
        _ => None,
    };
    let https = tls.is_some();
    let options = slipway_server::Options {
        secure_cookie: a.secure_cookies || https,
        tls,
        header_read_timeout: a.header_read_timeout,
        max_connections_per_client: usize::try_from(a.max_connections_per_client)
            .unwrap_or(usize::MAX),
        ..slipway_server::Options::default()
    };
    let (app, handover) = slipway_server::app(session, access, options.clone())
        .map_err(|e| CliError::new(exit::INTERNAL, format!("failed to {e}"), None))?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.map_err(|e| {
        CliError::input(
            format!("failed to listen on {}: {e}", a.listen),
            "choose a free address with --listen HOST:PORT (port 0 picks a free one)",
        )
    })?;
    let bound = listener.local_addr().map_err(|e| {
        CliError::new(
            exit::INTERNAL,
            format!("failed to read the bound address: {e}"),
            None,
        )
    })?;
    if !bound.ip().is_loopback() && !https {
        out.eline(&format!(
            "warning: serving plain HTTP on {bound}: API tokens cross the network unencrypted; serve HTTPS with --tls-cert/--tls-key or put a TLS-terminating proxy in front"
        ));
    }
    let url = format!("{}://{bound}", if https { "https" } else { "http" });
    if out.json() {
        out.json_line(&json!({"listening": bound.to_string(), "url": url, "store": location}));
    } else {
        out.line(&format!("serving {url} (store {location}); Ctrl-C stops"));
    }

    if !a.takeover_interval.is_zero() {
        handover.take_over_every(a.takeover_interval);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = slipway_server::serve(listener, app, &options, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let mut server = std::pin::pin!(server);
    let signal = shutdown_signal().await.map_err(|e| {
        CliError::new(
            exit::INTERNAL,
            format!("failed to listen for signals: {e}"),
            None,
        )
    })?;
    tokio::select! {
        r = &mut server => return served(r),
        name = signal => {
            let _ = stop_tx.send(true);
            // Event streams never end by themselves while a run is live: give open
            // connections a moment, then stop regardless.
            if let Ok(r) = tokio::time::timeout(DRAIN, &mut server).await {
                served(r)?;
            }
            // What this server drives goes on elsewhere: stopped where it is, its lease
            // given back.
            let runs = handover.hand_over().await;
            if out.json() {
                out.json_line(&json!({"stopped": name, "handed_over": runs}));
            } else {
                if !runs.is_empty() {
                    out.line(&format!(
                        "handed over {} (resume with `slipway resume RUN` here or on another server)",
                        runs.join(", ")
                    ));
                }
                out.line(&format!("stopped ({name})"));
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn served(r: std::io::Result<()>) -> Result<i32, CliError> {
    r.map(|()| exit::SUCCESS)
        .map_err(|e| CliError::new(exit::FAILURE, format!("failed to serve: {e}"), None))
}

/// A future that resolves to the name of the first of SIGINT / SIGTERM received.
async fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}
