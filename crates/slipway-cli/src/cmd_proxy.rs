//! `slipway proxy serve` (hidden): one service's built-in proxy as a process of its own.
//!
//! The process target starts it detached (see `slipway_providers::remote`), so it keeps
//! serving clients when the `slipway` that deploys dies; a later `slipway` finds it by its
//! state file. It records itself only once both listeners are bound: pid, start time,
//! addresses and a fresh admin token, in a file only its owner can read. The token is
//! never printed. SIGTERM or Ctrl-C stop it after in-flight requests finish.

use std::net::SocketAddr;
use std::path::PathBuf;

use slipway_model::exit;
use slipway_providers::process::proc_start_ticks;
use slipway_providers::remote::{ProxyState, new_token, read_state, write_state};
use slipway_proxy::{Proxy, ProxyConfig};

use crate::out::{CliError, Output};

/// `slipway proxy`.
#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// Run one service's proxy until SIGTERM (the process target starts it).
    Serve(ServeArgs),
}

/// `slipway proxy serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service it fronts (for messages and the state file).
    #[arg(long)]
    pub service: String,
    /// Where to record pid, start time, addresses and the admin token (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Where clients connect (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Where the admin API listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
}

/// Dispatch `slipway proxy …`.
pub fn run(c: ProxyCommand, out: &Output) -> Result<i32, CliError> {
    match c {
        ProxyCommand::Serve(a) => serve(a, out),
    }
}

fn internal(msg: String) -> CliError {
    CliError::new(exit::INTERNAL, msg, None)
}

fn serve(a: ServeArgs, out: &Output) -> Result<i32, CliError> {
    let rt = crate::cmd_run::runtime()?;
    rt.block_on(async {
        let token =
            new_token().map_err(|e| internal(format!("failed to make an admin token: {e}")))?;
        let proxy = Proxy::start(ProxyConfig {
            listen: a.listen,
            admin_listen: Some(a.admin_listen),
            admin_token: Some(token.clone()),
            ..ProxyConfig::default()
        })
        .await
        .map_err(|e| {
            CliError::input(
                format!("failed to start the {} proxy: {e}", a.service),
                "free the port or remove the proxy's state file to pick a new one",
            )
        })?;
        let pid = std::process::id();
        let state = ProxyState {
            service: a.service.clone(),
            pid,
            start_ticks: proc_start_ticks(pid).unwrap_or(0),
            traffic: proxy.local_addr(),
            admin: proxy.admin_addr().unwrap_or(a.admin_listen),
            token,
        };
        write_state(&a.state, &state).map_err(|e| {
            internal(format!(
                "failed to write the proxy state {}: {e}",
                a.state.display()
            ))
        })?;
        out.line(&format!(
            "proxy for {} (pid {pid}): traffic {}, admin {}",
            a.service, state.traffic, state.admin
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| internal(format!("failed to watch SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        out.line(&format!("proxy for {} stopping", a.service));
        proxy.shutdown().await;
        // Only our own record: a successor may have replaced it already.
        if read_state(&a.state).is_some_and(|s| s.pid == pid) {
            let _ = std::fs::remove_file(&a.state);
        }
        Ok(exit::SUCCESS)
    })
}
