//! The built-in proxy in a process of its own, driven over its admin API.
//!
//! The process target's instances outlive `slipway`; so must the proxy in front of them,
//! or a `slipway` that dies mid-canary takes the service's front door with it. Each
//! service gets one long-lived proxy process (`slipway proxy serve`, spawned detached in
//! its own process group, logs in `<dir>/<service>.log`) that records itself in a state
//! file `<dir>/<service>.json` (mode 0600): pid + process start time (a recycled pid is
//! not ours), traffic and admin addresses, and a random admin token. A later `slipway`
//! finds the same proxy through that file instead of starting another
//! ([`ProxySupervisor::ensure`]), exactly as [`crate::process`] finds instances.
//!
//! The proxy process is started with a cleared environment plus the allowlist of
//! [`crate::process::host_env`], as instances are.
//!
//! [`RemoteRouter`] is that proxy as the rollout controller's `TrafficRouter` and
//! `MetricSource`: the same operations as [`crate::builtin::BuiltinRouter`], as JSON calls
//! carrying the token.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use slipway_model::analysis::{VersionWindow, Window};
use slipway_proxy::TOKEN_HEADER;
use slipway_proxy::api::{
    GuardRequest, PoolsRequest, StateReport, VersionReport, WeightRequest, WindowReport,
};
use slipway_rollout::{BoxFuture, MetricSource, RolloutError, TrafficRouter};

use crate::process::{host_env, is_zombie, proc_start_ticks};

/// Longest an admin call may take; the proxy answers from memory, so this is generous.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What a proxy process records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    /// The service it fronts.
    pub service: String,
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// Where clients connect.
    pub traffic: SocketAddr,
    /// Where the admin API listens.
    pub admin: SocketAddr,
    /// The admin token (the file is readable by its owner only).
    pub token: String,
}

impl ProxyState {
    /// Whether the recorded process is still the one that wrote this (same pid, same
    /// start time) and has not exited.
    pub fn is_running(&self) -> bool {
        proc_start_ticks(self.pid) == Some(self.start_ticks) && !is_zombie(self.pid)
    }
}

/// Write a proxy's state file atomically, readable and writable by its owner only.
pub fn write_state(path: &Path, state: &ProxyState) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)
}

/// Read a proxy's state file.
pub fn read_state(path: &Path) -> Option<ProxyState> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// A fresh admin token: 32 random bytes from the kernel, hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A proxy process as router and metric source.
#[derive(Debug, Clone)]
pub struct RemoteRouter {
    state: ProxyState,
}

impl RemoteRouter {
    /// Drive the proxy a state file describes.
    pub fn new(state: ProxyState) -> Self {
        Self { state }
    }

    /// What the proxy recorded about itself.
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// Where clients connect.
    pub fn traffic_addr(&self) -> SocketAddr {
        self.state.traffic
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, String> {
        let what = format!(
            "{method} {path} on the {} proxy at {}",
            self.state.service, self.state.admin
        );
        let attempt = async {
            let stream = tokio::net::TcpStream::connect(self.state.admin)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, self.state.admin.to_string())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(TOKEN_HEADER, self.state.token.as_str())
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "answered {status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ));
            }
            serde_json::from_slice::<T>(&bytes).map_err(|e| format!("unreadable answer: {e}"))
        };
        match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what} failed: {e}")),
            Err(_) => Err(format!("{what} timed out after {CALL_TIMEOUT:?}")),
        }
    }

    /// Weight, pools, in-flight counts and lifetime counters.
    pub async fn fetch_state(&self) -> Result<StateReport, String> {
        self.call(hyper::Method::GET, "/admin/state", None).await
    }

    /// Install the canary's match routes and session affinity (an empty document clears
    /// them). Refused by a proxy too old to have them when there are any to install.
    pub async fn set_routes(&self, routes: &slipway_proxy::Routes) -> Result<(), String> {
        let body = serde_json::to_vec(routes).map_err(|e| e.to_string())?;
        match self
            .call::<StateReport>(hyper::Method::PUT, "/admin/routes", Some(body))
            .await
        {
            Ok(_) => Ok(()),
            // An older proxy without the route has none to clear.
            Err(_) if routes.is_empty() => Ok(()),
            Err(e) => Err(format!(
                "{e} (a proxy started by an older slipway has no match routes: stop it with `slipway proxy stop {}` and deploy again)",
                self.state.service
            )),
        }
    }

    /// Take the analysis window (ends it and starts the next).
    pub async fn take_window(&self) -> Result<WindowReport, String> {
        self.call(hyper::Method::POST, "/admin/window", None).await
    }
}

fn router_err(e: String) -> RolloutError {
    RolloutError::Router(e)
}

impl TrafficRouter for RemoteRouter {
    fn set_pools<'a>(
        &'a self,
        stable: &'a [SocketAddr],
        canary: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&PoolsRequest {
                stable: stable.to_vec(),
                canary: canary.to_vec(),
            })
            .map_err(|e| RolloutError::Router(e.to_string()))?;
            self.call::<StateReport>(hyper::Method::PUT, "/admin/pools", Some(body))
                .await
                .map(|_| ())
                .map_err(router_err)
        })
    }

    fn set_weight(&self, weight: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&WeightRequest { weight })
                .map_err(|e| RolloutError::Router(e.to_string()))?;
            let state: StateReport = self
                .call(hyper::Method::PUT, "/admin/weight", Some(body))
                .await
                .map_err(router_err)?;
            if state.weight == weight {
                Ok(())
            } else {
                Err(RolloutError::Router(format!(
                    "the {} proxy reports weight {} after being set to {weight}",
                    self.state.service, state.weight
                )))
            }
        })
    }

    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        Box::pin(async move { self.fetch_state().await.ok().map(|s| s.weight) })
    }

    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move { self.fetch_state().await.ok().map(|s| s.in_flight_canary) })
    }

    fn arm_guard(&self, max_error_rate: Option<f64>) -> BoxFuture<'_, Result<bool, RolloutError>> {
        Box::pin(async move {
            // The proxy refuses a max that admits no distinguishable hard failure; such an
            // analysis has no guard (the interval analysis alone judges it).
            let max_error_rate = max_error_rate
                .filter(|m| slipway_proxy::guard::GuardConfig::for_max_error_rate(*m).is_some());
            let body = serde_json::to_vec(&GuardRequest { max_error_rate })
                .map_err(|e| RolloutError::Router(e.to_string()))?;
            // A proxy started by an older slipway has no guard route: the interval
            // analysis alone judges then, as with any router without a guard.
            let armed = self
                .call::<StateReport>(hyper::Method::PUT, "/admin/guard", Some(body))
                .await
                .is_ok();
            Ok(armed && max_error_rate.is_some())
        })
    }

    fn clear_routes(&self) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            self.set_routes(&slipway_proxy::Routes::default())
                .await
                .map_err(router_err)
        })
    }

    fn guard_trip(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let state = self.fetch_state().await.ok()?;
            state.guard_trip.map(|t| t.sentence())
        })
    }
}

fn convert(v: &VersionReport, seconds: f64) -> VersionWindow {
    #[expect(
        clippy::cast_precision_loss,
        reason = "latencies in µs stay far below 2^53"
    )]
    let ms = |us: u64| us as f64 / 1000.0;
    VersionWindow {
        requests: v.requests,
        errors: v.errors,
        p50_ms: v.p50_us.map(ms),
        p95_ms: v.p95_us.map(ms),
        p99_ms: v.p99_us.map(ms),
        seconds,
        samples_ms: v.samples_us.iter().copied().map(ms).collect(),
    }
}

/// A window report as the analysis reads it (the same conversion as the in-process
/// builtin router's).
pub fn analysis_window(w: &WindowReport) -> Window {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a window length in µs stays far below 2^53"
    )]
    let seconds = w.elapsed_us as f64 / 1e6;
    Window {
        canary: convert(&w.canary, seconds),
        stable: convert(&w.stable, seconds),
        matched_requests: w.canary.matched_requests,
        matched_errors: w.canary.matched_errors,
    }
}

impl MetricSource for RemoteRouter {
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        Box::pin(async move { self.take_window().await.map(|w| analysis_window(&w)) })
    }
}

/// What [`ProxySupervisor::stop_verified`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// No state file: nothing recorded, nothing to stop.
    NotRecorded,
    /// The recorded process was not running (exited, or its pid now belongs to another
    /// process); its stale state file was removed.
    Stale(ProxyState),
    /// The proxy was running and has exited; `killed` when SIGTERM was not enough within
    /// the grace period.
    Stopped {
        /// What the state file recorded.
        state: ProxyState,
        /// Whether SIGKILL was needed.
        killed: bool,
    },
}

/// Why [`ProxySupervisor::ensure`] has no proxy to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnsureError {
    /// The spec's fixed front-door address is held by another process.
    #[error(
        "the front-door address {addr} of the {service} proxy (`router.builtin.listen`) cannot be bound: {why}"
    )]
    AddressTaken {
        /// Service.
        service: String,
        /// The address asked for.
        addr: SocketAddr,
        /// What binding it said.
        why: String,
    },
    /// The spec's fixed front-door address differs from where the running proxy serves.
    #[error(
        "the {service} proxy serves on {running}, but `router.builtin.listen` now asks for {asked}"
    )]
    AddressMoved {
        /// Service.
        service: String,
        /// Where the running proxy serves.
        running: SocketAddr,
        /// The address asked for.
        asked: SocketAddr,
    },
    /// Anything else: the proxy could not be started or does not answer.
    #[error("{0}")]
    Failed(String),
}

impl EnsureError {
    /// What the operator can do about it.
    pub fn fix(&self) -> Option<String> {
        match self {
            Self::AddressTaken { addr, .. } => Some(format!(
                "free port {} (`ss -ltnp 'sport = :{}'` shows who holds it) or set another address in `router: {{ builtin: {{ listen: ... }} }}`",
                addr.port(),
                addr.port()
            )),
            Self::AddressMoved {
                service, running, ..
            } => Some(format!(
                "stop the running proxy with `slipway proxy stop {service} --env ENV` (its clients on {running} are cut off until the deploy starts the new one), or set `listen: \"{running}\"` back"
            )),
            Self::Failed(_) => None,
        }
    }

    /// Whether the spec asks for something this machine cannot give (invalid input),
    /// rather than a proxy that failed.
    pub fn is_input(&self) -> bool {
        !matches!(self, Self::Failed(_))
    }
}

/// Finds or starts the proxy processes of one environment.
#[derive(Debug, Clone)]
pub struct ProxySupervisor {
    dir: PathBuf,
    command: Vec<OsString>,
    /// How long a new proxy may take to record itself.
    pub start_timeout: Duration,
}

impl ProxySupervisor {
    /// Proxies recorded under `dir`; `command` (program and leading arguments) starts
    /// one and is given `--service S --state FILE --listen ADDR`.
    pub fn new(dir: impl Into<PathBuf>, command: Vec<OsString>) -> Self {
        Self {
            dir: dir.into(),
            command,
            start_timeout: Duration::from_secs(10),
        }
    }

    /// Where the state files and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file of a service's proxy.
    pub fn state_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.json"))
    }

    /// The service's proxy when it is running and answers its admin API with the
    /// recorded token.
    pub async fn find(&self, service: &str) -> Option<RemoteRouter> {
        let state = read_state(&self.state_path(service))?;
        if !state.is_running() {
            return None;
        }
        let router = RemoteRouter::new(state);
        // A proxy that was just started may need a moment before it answers.
        for _ in 0..5 {
            if router.fetch_state().await.is_ok() {
                return Some(router);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The running proxy of a service, or a new one: on `fixed` when the spec sets the
    /// front-door address, else on the port the previous one used, so clients keep their
    /// address. `true` when it was started now.
    ///
    /// A fixed address that another process holds is refused before anything starts
    /// ([`EnsureError::AddressTaken`]), and so is one that differs from where the running
    /// proxy serves ([`EnsureError::AddressMoved`]): moving a live front door would cut its
    /// clients off, so that takes the operator's `slipway proxy stop`.
    pub async fn ensure(
        &self,
        service: &str,
        fixed: Option<SocketAddr>,
    ) -> Result<(RemoteRouter, bool), EnsureError> {
        if let Some(r) = self.find(service).await {
            if let Some(asked) = fixed
                && asked != r.traffic_addr()
            {
                return Err(EnsureError::AddressMoved {
                    service: service.to_owned(),
                    running: r.traffic_addr(),
                    asked,
                });
            }
            return Ok((r, false));
        }
        let path = self.state_path(service);
        let previous = read_state(&path);
        if let Some(p) = &previous
            && p.is_running()
        {
            return Err(EnsureError::Failed(format!(
                "the {service} proxy (pid {}) is running but does not answer its admin API on {}; see {}",
                p.pid,
                p.admin,
                self.log_path(service).display()
            )));
        }
        let listen = match fixed {
            Some(addr) => {
                // Refused here with the address and the fix rather than as a proxy that
                // exited: the bind is tried and released at once (a process that takes
                // the port in between still makes the proxy fail, with its log named).
                if let Err(e) = std::net::TcpListener::bind(addr) {
                    return Err(EnsureError::AddressTaken {
                        service: service.to_owned(),
                        addr,
                        why: e.to_string(),
                    });
                }
                addr
            }
            None => previous
                .as_ref()
                .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.traffic),
        };
        self.start(service, &path, listen)
            .await
            .map_err(EnsureError::Failed)
    }

    /// Start the proxy of `service` on `listen` and wait until it recorded itself in
    /// `path` and answers.
    async fn start(
        &self,
        service: &str,
        path: &Path,
        listen: SocketAddr,
    ) -> Result<(RemoteRouter, bool), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("failed to create {}: {e}", self.dir.display()))?;
        let _ = std::fs::remove_file(path);
        let log_path = self.log_path(service);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("failed to open {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("failed to open {}: {e}", log_path.display()))?;
        let Some((program, args)) = self.command.split_first() else {
            return Err("no command to start a proxy with".into());
        };
        let mut cmd = slipway_stdx::tokio_command(program);
        cmd.args(args)
            .arg("--service")
            .arg(service)
            .arg("--state")
            .arg(path)
            .arg("--listen")
            .arg(listen.to_string())
            // Like an instance, the long-lived proxy keeps nothing of this process's
            // environment but the allowlist: no token or credential exported for
            // `slipway deploy` lingers in its /proc/PID/environ.
            .env_clear()
            .envs(host_env(&[]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C or a kill aimed at `slipway` leaves the
            // service's front door standing.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("failed to start the {service} proxy: {e}"))?;
        let pid = child
            .id()
            .ok_or_else(|| format!("the {service} proxy exited at once"))?;
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(state) = read_state(path)
                && state.pid == pid
                && let Some(router) = self.find(service).await
            {
                // Reap it while we live; after that it is init's child.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                return Ok((router, true));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the {service} proxy exited ({status}) before it was ready; see {}",
                    log_path.display()
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(format!(
                    "the {service} proxy did not record itself within {:?}; see {}",
                    self.start_timeout,
                    log_path.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log file of a service's proxy.
    pub fn log_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.log"))
    }

    /// The state files recorded here, by service: `(service, state file, state)`. A file
    /// that cannot be read as a proxy's state is skipped (a torn write is never left:
    /// states are written to a temporary file and renamed).
    pub fn recorded(&self) -> Vec<(String, PathBuf, ProxyState)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf, ProxyState)> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let service = p.file_stem()?.to_str()?.to_owned();
                let state = read_state(&p)?;
                Some((service, p, state))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Stop a service's proxy and remove its state file: SIGTERM (it finishes in-flight
    /// requests), then SIGKILL if it has not exited after `grace`. Only the process the
    /// state file records is ever signalled: pid *and* start time are checked right
    /// before each signal, so a recycled pid is left alone. A recorded proxy that is no
    /// longer running only has its stale state file removed.
    pub async fn stop_verified(&self, service: &str, grace: Duration) -> Result<Stopped, String> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let path = self.state_path(service);
        let Some(state) = read_state(&path) else {
            return Ok(Stopped::NotRecorded);
        };
        // Removes the record only while it is still this process's: a successor may have
        // replaced it already.
        let forget = |state: &ProxyState| -> Result<(), String> {
            match read_state(&path) {
                Some(now) if now.pid == state.pid && now.start_ticks == state.start_ticks => {
                    std::fs::remove_file(&path)
                        .or_else(|e| {
                            if e.kind() == std::io::ErrorKind::NotFound {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| format!("failed to remove {}: {e}", path.display()))
                }
                _ => Ok(()),
            }
        };
        if !state.is_running() {
            forget(&state)?;
            return Ok(Stopped::Stale(state));
        }
        let pid = i32::try_from(state.pid)
            .map_err(|_| format!("pid {} in {} is out of range", state.pid, path.display()))?;
        let signal = |sig: Signal| -> Result<(), String> {
            if !state.is_running() {
                return Ok(());
            }
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(format!(
                    "failed to send {sig} to the {service} proxy (pid {pid}): {e}"
                )),
            }
        };
        let st = &state;
        let exited_within = |limit: Duration| async move {
            let deadline = Instant::now() + limit;
            while st.is_running() {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        };
        signal(Signal::SIGTERM)?;
        let mut killed = false;
        if !exited_within(grace).await {
            signal(Signal::SIGKILL)?;
            killed = true;
            if !exited_within(Duration::from_secs(5)).await {
                return Err(format!(
                    "the {service} proxy (pid {pid}) is still running after SIGKILL; see {}",
                    self.log_path(service).display()
                ));
            }
        }
        forget(&state)?;
        Ok(Stopped::Stopped { state, killed })
    }

    /// Stop a service's proxy (SIGTERM: it finishes in-flight requests) if it is ours.
    pub fn stop(&self, service: &str) -> bool {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Some(state) = read_state(&self.state_path(service)) else {
            return false;
        };
        if !state.is_running() {
            return false;
        }
        i32::try_from(state.pid).is_ok_and(|pid| kill(Pid::from_raw(pid), Signal::SIGTERM).is_ok())
    }
}
