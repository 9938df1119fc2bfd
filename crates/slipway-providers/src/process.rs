//! The `process` target: service instances as local processes supervised by Slipway.
//!
//! Each instance is a `sh -c` command in its own process group, on a free loopback port,
//! with its stdout/stderr captured to a log file and a state file
//! (`<dir>/<id>.json`: pid, process start time, port). The state survives the `slipway`
//! process dying: [`ProcessTarget::running`] finds instances that still run (same pid
//! *and* same start time — a recycled pid is not ours — and the port answers) instead of
//! starting duplicates, and reports the dead ones.
//!
//! Stopping is SIGTERM to the process group, then SIGKILL after the grace period.
//!
//! **Logs.** An instance writes its log itself (it outlives `slipway`, so nothing can
//! filter it on the way), and a service may print a secret it was given: the log is
//! created 0600, and whatever Slipway shows or keeps of it — the last lines in an error,
//! the copy in a rollback's diagnostics ([`read_log_tail`]) — is read bounded and passed
//! through the environment's [`Redactor`] like step output, redacted before it is cut.
//!
//! With a config root ([`ProcessTarget::with_config_root`]), an instance of version V is
//! started with `SLIPWAY_CONFIG_DIR` set to V's rendered config
//! ([`crate::config::version_dir`]) when it exists: each version reads its own config,
//! whichever other version runs beside it.
//!
//! **Environment.** An instance does not inherit `slipway`'s environment: whoever runs
//! `slipway deploy` may have exported an API token, `SLIPWAY_TOKEN` or cloud credentials,
//! and a long-lived service would keep them in `/proc/PID/environ` for anyone who can
//! read it (and hand them to every child it spawns). An instance gets exactly
//! [`host_env`]: the variables of [`ALLOWED_HOST_VARS`] and `LC_*` that are set (what a
//! program needs to find its tools, home, locale and time zone; none is a credential),
//! plus those the spec names in `run.inherit_env`; then Slipway's own (`PORT`,
//! `SLIPWAY_SERVICE`, `SLIPWAY_VERSION`, `SLIPWAY_CONFIG_DIR`) and the spec's `run.env`.
//! A readiness probe command runs with the same environment as its instance.
//!
//! **Launch records.** Every start of a version writes how it was launched — the command
//! its spec gave (version filled in, `{{ port }}` kept, since each instance gets its
//! own), the working directory, the exact environment (everything above but `PORT`), the
//! rendered config directory with the sha256 of its bytes, the artifact's sha256, the
//! probes and replicas — to `<dir>/launch/<service>@<version>.json` (0600: the
//! environment may hold what `run.inherit_env` passed on). An undo relaunches the version
//! it restores from that record ([`ProcessTarget::relaunch`]), never by putting the old
//! version into the new release's command: a flag, variable or config of the rejected
//! release must not survive its rollback, and a command that hard-codes its version
//! would start the wrong one. A relaunch whose config directory no longer has the
//! recorded bytes is refused.
//!
//! **Serving record.** `<dir>/<service>.serving` holds the version the service's stable
//! pool runs (written by a first start, a promotion and an undo), so a deploy of the
//! version already serving tells the stable instances from a canary left behind by an
//! earlier run, and an undo refuses to replace a version a later release put there.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_model::spec::{Probe, RunSpec};
use slipway_package::Redactor;
use slipway_rollout::{BoxFuture, Instance, Instances, Role, RolloutError};

use crate::container::{self, ContainerImage};
use crate::portowner::{self, Ownership};

/// Variables of `slipway`'s environment that every process it starts detached keeps when
/// they are set (with every `LC_*`): enough to find programs, a home and temporary
/// directory, the user, the locale and the time zone. Nothing here can hold a credential.
pub const ALLOWED_HOST_VARS: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// Whether a variable of `slipway`'s environment passes to a process it starts detached.
pub fn allowed_host_var(name: &str) -> bool {
    ALLOWED_HOST_VARS.contains(&name) || name.starts_with("LC_")
}

/// The part of this process's environment a detached child keeps (an instance, a proxy):
/// the allowlist ([`allowed_host_var`]) plus the variables named in `extra` that are set.
/// The child must be started with `env_clear()` before these are added.
pub fn host_env(extra: &[String]) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| allowed_host_var(k) || extra.iter().any(|e| e == k))
        })
        .collect()
}

/// How one service's instances are started and probed.
#[derive(Debug, Clone)]
pub struct ServiceProcess {
    /// The run command (`{{ port }}` and `{{ version }}` are substituted).
    pub run: RunSpec,
    /// Readiness probe (default: TCP connect to the port).
    pub readiness: Option<Probe>,
    /// Extra environment (rendered vars).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: PathBuf,
}

/// How one version of a service was launched: everything a relaunch needs to start it
/// again exactly so (see the module docs). Written when the version starts, read by an
/// undo that restores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// Service.
    pub service: String,
    /// Version.
    pub version: String,
    /// The command as the version's spec gave it, `{{ version }}` filled in; `{{ port }}`
    /// is each instance's port. Run as `sh -c "exec <command>"`.
    pub command: String,
    /// Working directory of every instance.
    pub workdir: PathBuf,
    /// The whole environment of an instance except `PORT` (set per instance first, so
    /// the spec's variables still win as they did).
    pub env: BTreeMap<String, String>,
    /// The version's rendered config directory (`SLIPWAY_CONFIG_DIR`), if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_dir: Option<PathBuf>,
    /// sha256 of that directory's files (names and bytes), to refuse a relaunch with
    /// another config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// sha256 of the service's artifact, as the plan pinned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    /// Readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Instances the version ran with.
    pub replicas: u32,
    /// The container image each instance runs, for a service with `run.image`
    /// ([`crate::container`]); `command` is then unused and `env` is the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ContainerImage>,
}

impl Launch {
    /// sha256 of the environment (names and values), for the journal, which must not
    /// hold the values themselves.
    pub fn env_sha256(&self) -> String {
        let mut bytes = Vec::new();
        for (k, v) in &self.env {
            bytes.extend_from_slice(k.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(0);
        }
        slipway_package::digest::sha256_bytes(&bytes)
    }

    /// What the journal records of a launch: everything but the environment's values.
    pub fn summary(&self) -> serde_json::Value {
        let mut summary = serde_json::json!({
            "service": self.service,
            "version": self.version,
            "command": self.command,
            "workdir": self.workdir,
            "env_names": self.env.keys().collect::<Vec<_>>(),
            "env_sha256": self.env_sha256(),
            "config_dir": self.config_dir,
            "config_sha256": self.config_sha256,
            "artifact_sha256": self.artifact_sha256,
            "replicas": self.replicas,
        });
        if let (Some(i), Some(map)) = (&self.image, summary.as_object_mut()) {
            map.insert(
                "image".into(),
                serde_json::json!({
                    "source": i.source,
                    "id": i.id,
                    "digest": i.digest,
                    "args": i.args,
                }),
            );
        }
        summary
    }

    /// How long an instance may take to become ready: the readiness probe's `deadline`,
    /// else `default`.
    fn ready_deadline(&self, default: Duration) -> Duration {
        self.readiness
            .as_ref()
            .and_then(|p| p.deadline.as_ref())
            .and_then(|d| d.get().ok())
            .unwrap_or(default)
    }
}

/// sha256 over the files of a directory (relative names and bytes, sorted), `None` when
/// it cannot be read.
pub fn dir_sha256(dir: &Path) -> Option<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
                out.push((rel, std::fs::read(&p)?));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files).ok()?;
    files.sort();
    let mut all = Vec::new();
    for (name, bytes) in files {
        all.extend_from_slice(name.as_bytes());
        all.push(0);
        all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        all.extend_from_slice(&bytes);
    }
    Some(slipway_package::digest::sha256_bytes(&all))
}

impl ServiceProcess {
    /// What an instance's and its probe's environments start from (see the module docs):
    /// the host's allowlisted and `run.inherit_env` variables, then `env`, then `run.env`.
    fn spec_env(&self) -> Vec<(OsString, OsString)> {
        let mut vars = host_env(&self.run.inherit_env);
        vars.extend(
            self.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        vars.extend(
            self.run
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v.as_str()))),
        );
        vars
    }
}

/// Supervises local processes.
#[derive(Debug, Clone)]
pub struct ProcessTarget {
    dir: PathBuf,
    services: BTreeMap<String, ServiceProcess>,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    /// How long an instance may take to become ready.
    pub ready_timeout: Duration,
    /// The environment's config root (`<store dir>/config/<env>`), absolute.
    config_root: Option<PathBuf>,
    /// Ports to try before free ones (tests: a port a stranger holds).
    first_ports: Arc<Mutex<Vec<u16>>>,
    /// Each service's artifact sha256, recorded in its launches.
    artifacts: BTreeMap<String, String>,
    /// The version of each service the plan deploys: only that version is started from
    /// the spec; any other (a stable pool started again during a canary's rollback) is
    /// relaunched from its launch record.
    deploying: BTreeMap<String, String>,
    /// Masks the environment's secrets in what is shown of an instance's log.
    redactor: Redactor,
    /// Each service's `health` probe: probed during its canary, its soak and before a
    /// replacement gets traffic ([`Instances::healthy`]).
    health: BTreeMap<String, Probe>,
    /// The artifact store (`sha256/<digest>`): where a container service's image
    /// artifact is pulled from.
    artifact_store: Option<PathBuf>,
}

/// Ports tried for one instance when other programs keep taking the free port picked
/// for it (see [`crate::portowner`]).
const PORT_ATTEMPTS: usize = 3;

/// Why one attempt to start an instance on a port failed.
enum StartError {
    /// Another process holds the port: try another one.
    PortTaken(String),
    Failed(RolloutError),
}

impl From<RolloutError> for StartError {
    fn from(e: RolloutError) -> Self {
        Self::Failed(e)
    }
}

/// What a state file holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceState {
    /// The instance.
    pub instance: Instance,
    /// Process start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_ticks: u64,
}

/// What [`ProcessTarget::running`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Still running (answering or not: see [`ProcessTarget::ready`]).
    pub alive: Vec<Instance>,
    /// Recorded but gone (or the pid now belongs to another process).
    pub dead: Vec<Instance>,
}

impl ProcessTarget {
    /// A supervisor keeping state and logs under `dir`.
    pub fn new(dir: impl Into<PathBuf>, services: BTreeMap<String, ServiceProcess>) -> Self {
        Self {
            dir: dir.into(),
            services,
            stop_grace: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(30),
            config_root: None,
            first_ports: Arc::default(),
            artifacts: BTreeMap::new(),
            deploying: BTreeMap::new(),
            redactor: Redactor::default(),
            health: BTreeMap::new(),
            artifact_store: None,
        }
    }

    /// Pull container services' image artifacts from this content-addressed store (the
    /// copies `verify-artifact` steps keep).
    pub fn with_artifact_store(mut self, store: impl Into<PathBuf>) -> Self {
        let store = store.into();
        self.artifact_store = Some(std::path::absolute(&store).unwrap_or(store));
        self
    }

    /// Mask these secrets in everything shown of an instance's log.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The redactor of [`Self::with_redactor`] (for copies of logs kept elsewhere).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Try these ports, in order, before free ones. For tests that need an instance's
    /// port to be taken by a stranger; a deployment has no use for it.
    #[doc(hidden)]
    pub fn with_first_ports(self, ports: Vec<u16>) -> Self {
        if let Ok(mut p) = self.first_ports.lock() {
            *p = ports.into_iter().rev().collect();
        }
        self
    }

    fn pick_port(&self) -> Result<u16, RolloutError> {
        let first = self.first_ports.lock().ok().and_then(|mut p| p.pop());
        first.map_or_else(free_port, Ok)
    }

    /// Give each instance its version's rendered config under `root` as
    /// `SLIPWAY_CONFIG_DIR`. Made absolute here: instances run in the service's workdir.
    pub fn with_config_root(mut self, root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        self.config_root = Some(std::path::absolute(&root).unwrap_or(root));
        self
    }

    /// The version of each service the plan deploys: the spec's command starts only that
    /// version; another one (an earlier version started again) is relaunched from its
    /// launch record, or refused when there is none. Without this, every version is
    /// started from the spec (the demo, tests of the controller).
    pub fn with_deploying(mut self, deploying: BTreeMap<String, String>) -> Self {
        self.deploying = deploying;
        self
    }

    /// Each service's `health` probe (see [`Instances::healthy`]).
    pub fn with_health(mut self, health: BTreeMap<String, Probe>) -> Self {
        self.health = health;
        self
    }

    /// Each service's artifact sha256, recorded in its launches.
    pub fn with_artifacts(mut self, artifacts: BTreeMap<String, String>) -> Self {
        self.artifacts = artifacts;
        self
    }

    /// The directory holding state files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn previous_path(&self, service: &str, version: &str) -> PathBuf {
        self.dir.join(format!("{service}-{version}.previous"))
    }

    /// Remember which version `version` of a service replaced (observed when it was
    /// promoted), for an undo after `slipway` has forgotten.
    pub fn record_previous(&self, service: &str, version: &str, previous: &str) {
        let _ = std::fs::create_dir_all(&self.dir);
        let _ = std::fs::write(self.previous_path(service, version), previous);
    }

    /// The version `version` of a service replaced, if recorded.
    pub fn previous_of(&self, service: &str, version: &str) -> Option<String> {
        std::fs::read_to_string(self.previous_path(service, version))
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Instances recorded for a service (any version), split into alive and dead. Dead
    /// ones' state files are removed.
    pub fn running(&self, service: &str) -> Survey {
        let mut survey = Survey::default();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return survey;
        };
        let mut states: Vec<InstanceState> = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<InstanceState>(&b).ok())
            .filter(|s| s.instance.service == service)
            .collect();
        states.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        for s in states {
            // Running means our process lives (same pid and start time, not a zombie),
            // whether or not it answers this instant: whether it is ready is `ready`'s
            // question. A connect that took over 500 ms on a loaded host used to count as
            // death here: the record was removed, the process kept serving unrecorded,
            // and the next deploy saw no stable version and launched the new one
            // without a canary.
            let ours = proc_start_ticks(s.instance.pid) == Some(s.start_ticks)
                && !is_zombie(s.instance.pid);
            if ours {
                survey.alive.push(s.instance);
            } else {
                let _ = std::fs::remove_file(self.state_path(&s.instance.id));
                survey.dead.push(s.instance);
            }
        }
        survey
    }

    /// How `version` of a service is launched now, from its spec: the record a start
    /// writes (see the module docs).
    pub fn launch_for(
        &self,
        service: &str,
        version: &str,
        replicas: u32,
    ) -> Result<Launch, RolloutError> {
        let svc = self.services.get(service).ok_or_else(|| {
            RolloutError::Instances(format!(
                "service `{service}` has no `run:` command for the process target"
            ))
        })?;
        let command = svc
            .run
            .command
            .replace("{{ version }}", version)
            .replace("{{version}}", version);
        let image = match svc.run.image.as_deref() {
            None => None,
            Some(reference) => Some(self.image_for(service, reference, &command)?),
        };
        // The order a start always used: the host's allowlist, Slipway's own, the
        // rendered vars, the spec's `run.env`, then the version's own config directory.
        // A container gets no host variables: its image has its own PATH and HOME.
        let host = if image.is_some() {
            Vec::new()
        } else {
            host_env(&svc.run.inherit_env)
        };
        let mut env: BTreeMap<String, String> = host
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        env.insert("SLIPWAY_SERVICE".into(), service.into());
        env.insert("SLIPWAY_VERSION".into(), version.into());
        env.extend(svc.env.clone());
        env.extend(
            svc.run
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().to_owned())),
        );
        let mut config_dir = None;
        let mut config_sha256 = None;
        if let Some(root) = &self.config_root {
            let dir = crate::config::version_dir(root, service, version);
            if dir.is_dir() {
                // After the spec's env: an instance must read its own version's config,
                // never a path the spec pinned for every version.
                env.insert("SLIPWAY_CONFIG_DIR".into(), dir.display().to_string());
                config_sha256 = dir_sha256(&dir);
                config_dir = Some(dir);
            }
        }
        Ok(Launch {
            service: service.to_owned(),
            version: version.to_owned(),
            command,
            workdir: svc.workdir.clone(),
            env,
            config_dir,
            config_sha256,
            artifact_sha256: self.artifacts.get(service).cloned(),
            readiness: svc.readiness.clone(),
            replicas,
            image,
        })
    }

    /// Where a container service's image comes from (see [`crate::container`]).
    fn image_for(
        &self,
        service: &str,
        reference: &str,
        command: &str,
    ) -> Result<ContainerImage, RolloutError> {
        // `{{ port }}` is filled per instance, after the split: kept as one word.
        let command = command.replace("{{ port }}", "{{port}}");
        let args = shlex::split(&command).ok_or_else(|| {
            RolloutError::Instances(format!(
                "run.command of `{service}` cannot be split into arguments (an unclosed quote?)"
            ))
        })?;
        if reference != slipway_model::spec::IMAGE_FROM_ARTIFACT {
            let digest = reference
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .filter(|_| slipway_model::spec::is_pinned_image(reference))
                .ok_or_else(|| {
                    RolloutError::Instances(format!(
                        "the image of `{service}`, `{reference}`, is not pinned by digest"
                    ))
                })?;
            let insecure = registry_is_loopback(reference);
            return Ok(ContainerImage {
                source: format!("docker://{reference}"),
                pull_dir: None,
                expect_digest: Some(digest),
                id: None,
                digest: None,
                args,
                insecure_registry: insecure,
            });
        }
        let sha = self.artifacts.get(service).ok_or_else(|| {
            RolloutError::Instances(format!(
                "`{service}` runs its artifact as an image but has no artifact"
            ))
        })?;
        let store = self.artifact_store.as_ref().ok_or_else(|| {
            RolloutError::Instances(format!(
                "`{service}` runs its artifact as an image, but this target has no artifact store to take it from"
            ))
        })?;
        let path = crate::artifact::stored_path(store, sha);
        let meta = std::fs::metadata(&path).map_err(|e| {
            RolloutError::Instances(format!(
                "the image artifact of `{service}` (sha256 {sha}) is not in the artifact store at {} ({e}): its verify-artifact step keeps it there before the deploy",
                path.display()
            ))
        })?;
        // A layout is known by its manifest digest, which podman must report too; an
        // oci-archive by the file's sha256 (already verified), its manifest read after.
        let (source, expect_digest) = if meta.is_dir() {
            (format!("oci:{sha}"), Some(format!("sha256:{sha}")))
        } else {
            (format!("oci-archive:{sha}"), None)
        };
        Ok(ContainerImage {
            source,
            pull_dir: path.parent().map(Path::to_path_buf),
            expect_digest,
            id: None,
            digest: None,
            args,
            insecure_registry: false,
        })
    }

    fn launch_path(&self, service: &str, version: &str) -> PathBuf {
        self.dir
            .join("launch")
            .join(format!("{service}@{version}.json"))
    }

    /// The launch record of a version of a service, if it was ever started here.
    pub fn launch_of(&self, service: &str, version: &str) -> Option<Launch> {
        std::fs::read(self.launch_path(service, version))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn write_launch(&self, launch: &Launch) -> Result<(), RolloutError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.launch_path(&launch.service, &launch.version);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(launch).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            RolloutError::Instances(format!(
                "record how {} {} is launched in {}: {e}",
                launch.service,
                launch.version,
                path.display()
            ))
        })
    }

    fn serving_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.serving"))
    }

    /// The version the service's stable pool runs, as last recorded.
    pub fn serving(&self, service: &str) -> Option<String> {
        std::fs::read_to_string(self.serving_path(service))
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Record the version the service's stable pool runs (`None`: nothing serves it).
    pub fn set_serving(&self, service: &str, version: Option<&str>) {
        let path = self.serving_path(service);
        match version {
            Some(v) => {
                let _ = std::fs::create_dir_all(&self.dir);
                let _ = write_atomic(&path, v.as_bytes());
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Start `launch.replicas` instances of a version exactly as `launch` records (an
    /// undo restoring it): refused when its config directory no longer holds the bytes
    /// it was launched with.
    pub async fn relaunch(
        &self,
        launch: &Launch,
        role: Role,
    ) -> Result<Vec<Instance>, RolloutError> {
        if let Some(dir) = &launch.config_dir {
            let now = dir_sha256(dir);
            if now != launch.config_sha256 {
                return Err(RolloutError::Instances(format!(
                    "{} {} was launched with the config in {} (sha256 {}), which now reads {}; not relaunching it with another config: render that version's config again (deploy {} {} anew) or roll forward",
                    launch.service,
                    launch.version,
                    dir.display(),
                    launch.config_sha256.as_deref().unwrap_or("unknown"),
                    now.as_deref().unwrap_or("missing"),
                    launch.service,
                    launch.version
                )));
            }
        }
        self.start_launched(launch, role).await
    }

    /// Start every instance of a launch, all or nothing.
    async fn start_launched(
        &self,
        launch: &Launch,
        role: Role,
    ) -> Result<Vec<Instance>, RolloutError> {
        let mut pinned;
        let launch = match &launch.image {
            Some(image) => {
                let mut image = image.clone();
                container::ensure_image(
                    &mut image,
                    &format!("{} {}", launch.service, launch.version),
                )
                .await?;
                pinned = launch.clone();
                pinned.image = Some(image);
                &pinned
            }
            None => launch,
        };
        self.write_launch(launch)?;
        let mut started = Vec::new();
        for i in 0..launch.replicas {
            match self.start_one(launch, i, role).await {
                Ok(inst) => started.push(inst),
                Err(e) => {
                    // All or nothing: a half-started version must not linger.
                    self.stop_instances(&started).await;
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    async fn start_one(
        &self,
        launch: &Launch,
        index: u32,
        role: Role,
    ) -> Result<Instance, RolloutError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| RolloutError::Instances(format!("create {}: {e}", self.dir.display())))?;
        let role_s = match role {
            Role::Stable => "stable",
            Role::Canary => "canary",
        };
        let (service, version) = (&launch.service, &launch.version);
        let id = format!("{service}-{version}-{role_s}-{index}");
        let mut taken = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = self.pick_port()?;
            match self.start_on(launch, &id, port).await {
                Ok(instance) => return Ok(instance),
                Err(StartError::Failed(e)) => return Err(e),
                Err(StartError::PortTaken(owner)) => {
                    taken.push(format!("{port} (held by {owner})"));
                }
            }
        }
        Err(RolloutError::Instances(format!(
            "{id} could not get a port of its own: other programs took each port picked for \
             it between the pick and the instance's bind: {}. Stop what keeps taking ports \
             on 127.0.0.1, or retry",
            taken.join(", ")
        )))
    }

    /// One attempt to start an instance on `port`: ready (on a listener of its own), taken
    /// by a stranger, or failed.
    async fn start_on(&self, launch: &Launch, id: &str, port: u16) -> Result<Instance, StartError> {
        let log_path = self.dir.join(format!("{id}.log"));
        let log = private_log(&log_path).map_err(|e| {
            RolloutError::Instances(format!("create log {}: {e}", log_path.display()))
        })?;
        let log2 = log
            .try_clone()
            .map_err(|e| RolloutError::Instances(format!("log {}: {e}", log_path.display())))?;
        let container_name = launch
            .image
            .as_ref()
            .map(|_| container::container_name(&self.dir, id));
        let (mut cmd, command) = match (&launch.image, &container_name) {
            (Some(image), Some(name)) => {
                let env_file = self.dir.join(format!("{id}.env"));
                container::write_env_file(&env_file, &launch.env, port)?;
                let (service, version) = (launch.service.as_str(), launch.version.as_str());
                let cmd = container::run_command(
                    image,
                    name,
                    port,
                    &env_file,
                    launch.config_dir.as_ref(),
                    &[("slipway.service", service), ("slipway.version", version)],
                )?;
                (cmd, format!("podman run {name}"))
            }
            _ => {
                let command = launch
                    .command
                    .replace("{{ port }}", &port.to_string())
                    .replace("{{port}}", &port.to_string());
                let mut cmd = slipway_stdx::tokio_command("sh");
                cmd.arg("-c")
                    .arg(format!("exec {command}"))
                    // Nothing of `slipway`'s environment but what the launch records:
                    // see the module docs.
                    .env_clear()
                    .env("PORT", port.to_string())
                    .envs(&launch.env);
                (cmd, command)
            }
        };
        cmd.current_dir(&launch.workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: stopping it stops everything the command started, and a
            // Ctrl-C aimed at `slipway` does not kill the service behind our back.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| RolloutError::Instances(format!("start `{command}`: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| RolloutError::Instances(format!("`{command}` exited at once")))?;
        // The child is not awaited here: it must outlive this `slipway` process. A reaper
        // task collects its exit status while we live, so it never lingers as a zombie.
        tokio::spawn(async move {
            let mut child = child;
            let _ = child.wait().await;
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let id = id.to_owned();
        let instance = Instance {
            id: id.clone(),
            service: launch.service.clone(),
            version: launch.version.clone(),
            addr,
            pid,
            log_path: Some(log_path.display().to_string()),
        };
        let state = InstanceState {
            instance: instance.clone(),
            start_ticks: proc_start_ticks(pid).unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| RolloutError::Instances(format!("state of {id}: {e}")))?;
        write_atomic(&self.state_path(&id), &json)
            .map_err(|e| RolloutError::Instances(format!("write state of {id}: {e}")))?;

        // Readiness with backoff; a process that exits while we wait fails at once with
        // the tail of its log.
        // A probe answered by a stranger holding the port is not readiness (see
        // `portowner`): the instance is ready only on a listener of its own process group
        // (or where /proc cannot tell, as before).
        // A container's listener belongs to its init process, in a session of its own
        // under podman's conmon, not to the `podman` client's group.
        let owner_group = || async {
            match &container_name {
                Some(name) => container::container_pid(name).await,
                None => Some(pid),
            }
        };
        let stranger = |port, group: Option<u32>| match portowner::loopback_listener_owner(
            port,
            group.unwrap_or(pid),
        ) {
            o @ Ownership::Other { .. } => Some(o),
            _ => None,
        };
        let probe_env = probe_env(launch);
        let ready_within = launch.ready_deadline(self.ready_timeout);
        let deadline = Instant::now() + ready_within;
        let mut backoff = Duration::from_millis(20);
        loop {
            let probed = probe_result(&instance, launch.readiness.as_ref(), &probe_env).await;
            let answered = probed.is_ok();
            // A probe that does not ask the process itself (`command: test -e …`) can
            // pass after the process died: ready means answered *and* still running.
            let exited = proc_start_ticks(pid).is_none() || is_zombie(pid);
            // Asking podman who the container is costs a process: only when it matters.
            let held_by = if answered || exited || container_name.is_none() {
                stranger(port, owner_group().await)
            } else {
                None
            };
            if answered && held_by.is_none() && !exited {
                return Ok(instance);
            }
            if exited {
                let _ = std::fs::remove_file(self.state_path(&id));
                if let Some(owner) = held_by {
                    return Err(StartError::PortTaken(owner.describe()));
                }
                return Err(RolloutError::Instances(format!(
                    "{id} exited before it was ready; last log lines:\n{}",
                    self.log_tail(&log_path)
                ))
                .into());
            }
            if Instant::now() >= deadline {
                self.stop_instances(std::slice::from_ref(&instance)).await;
                if let Some(owner) = held_by {
                    return Err(RolloutError::Instances(format!(
                        "{id} never listened on its port {port}: {} holds it; last log \
                         lines:\n{}",
                        owner.describe(),
                        self.log_tail(&log_path)
                    ))
                    .into());
                }
                // The last probe's own answer (refused, a status, timed out) is what
                // tells a slow start from a wrong port or a failing endpoint.
                let last = match &probed {
                    Err(why) => format!("; last probe: {why}"),
                    Ok(()) => String::new(),
                };
                return Err(RolloutError::Instances(format!(
                    "{id} was not ready within {:?} (probe {}{}{last}); last log lines:\n{}",
                    ready_within,
                    describe_probe(launch.readiness.as_ref()),
                    if launch
                        .readiness
                        .as_ref()
                        .is_some_and(|p| p.deadline.is_some())
                    {
                        ", readiness.deadline"
                    } else {
                        ", the default deadline; set readiness.deadline to change it"
                    },
                    self.log_tail(&log_path)
                ))
                .into());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Why `i` no longer runs (its process exited, or its pid now belongs to another
    /// process), with the tail of its log; `None` while it runs.
    fn exited(&self, i: &Instance) -> Option<String> {
        let recorded = std::fs::read(self.state_path(&i.id))
            .ok()
            .and_then(|b| serde_json::from_slice::<InstanceState>(&b).ok());
        let now = proc_start_ticks(i.pid);
        let running = match (now, recorded) {
            (None, _) => false,
            (Some(t), Some(s)) => t == s.start_ticks && !is_zombie(i.pid),
            (Some(_), None) => !is_zombie(i.pid),
        };
        if running {
            return None;
        }
        let tail = i
            .log_path
            .as_deref()
            .map(|p| self.log_tail(Path::new(p)))
            .unwrap_or_default();
        Some(format!(
            "its process {} exited; last log lines:\n{tail}",
            i.pid
        ))
    }

    /// SIGTERM the process groups, SIGKILL what is left after the grace period.
    ///
    /// Every signal goes only to a pid whose start time is still the one we recorded:
    /// pids are recycled quickly where `pid_max` is 32768 (as on the CI machines), and
    /// a process-group signal to a recycled pid would hit someone else's whole group.
    pub async fn stop_instances(&self, instances: &[Instance]) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        // A container is stopped through podman (SIGTERM, SIGKILL after the grace,
        // removed): signalling its attached client would leave it running. Its client
        // then exits by itself, and the signals below find nothing left.
        let containers: Vec<&Instance> = instances
            .iter()
            .filter(|i| {
                self.launch_of(&i.service, &i.version)
                    .is_some_and(|l| l.image.is_some())
            })
            .collect();
        futures_util::future::join_all(containers.iter().map(|i| {
            container::remove(container::container_name(&self.dir, &i.id), self.stop_grace)
        }))
        .await;
        for i in &containers {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.env", i.id)));
        }
        let ours: Vec<(&Instance, u64)> = instances
            .iter()
            .filter_map(|i| {
                let recorded = std::fs::read(self.state_path(&i.id))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<InstanceState>(&b).ok());
                let now = proc_start_ticks(i.pid)?;
                // Never signal a pid that was recycled for someone else's process.
                match recorded {
                    Some(s) if s.start_ticks != now => None,
                    _ => Some((i, now)),
                }
            })
            .collect();
        // Still the same process, and not yet exited.
        let alive = |(i, ticks): &(&Instance, u64)| {
            proc_start_ticks(i.pid) == Some(*ticks) && !is_zombie(i.pid)
        };
        for (i, _) in &ours {
            if let Ok(pid) = i32::try_from(i.pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + self.stop_grace;
        while Instant::now() < deadline && ours.iter().any(alive) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for entry in &ours {
            if alive(entry)
                && let Ok(pid) = i32::try_from(entry.0.pid)
            {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for i in instances {
            let _ = std::fs::remove_file(self.state_path(&i.id));
        }
    }
}

impl Instances for ProcessTarget {
    fn start<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
        replicas: u32,
        role: Role,
    ) -> BoxFuture<'a, Result<Vec<Instance>, RolloutError>> {
        Box::pin(async move {
            match self.deploying.get(service) {
                Some(v) if v != version => {
                    // Not the version this release brings: never this release's command.
                    let launch = self.launch_of(service, version).ok_or_else(|| {
                        RolloutError::Instances(format!(
                            "start {service} {version} again: how it was launched is not recorded, and this release's command starts {v}, not {version}"
                        ))
                    })?;
                    let launch = Launch { replicas, ..launch };
                    self.relaunch(&launch, role).await
                }
                _ => {
                    let launch = self.launch_for(service, version, replicas)?;
                    self.start_launched(&launch, role).await
                }
            }
        })
    }

    fn ready<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            for i in instances {
                // Probed as the version was launched: a relaunched earlier version keeps
                // its own probe.
                let ok = match self.launch_of(&i.service, &i.version) {
                    Some(l) => probe_with(i, l.readiness.as_ref(), &probe_env(&l)).await,
                    None => probe(i, self.services.get(&i.service)).await,
                };
                if !ok {
                    return false;
                }
            }
            !instances.is_empty()
        })
    }

    fn healthy<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            for i in instances {
                // An instance whose process exited is unhealthy whatever its probes say:
                // without this a canary that crashed after its readiness probe was
                // promoted when its canary had no analysis to notice the errors.
                if let Some(why) = self.exited(i) {
                    return Err(format!("{} {} ({}): {why}", i.service, i.version, i.id));
                }
                let Some(p) = self.health.get(&i.service) else {
                    continue;
                };
                // With the instance's own environment, as its readiness probe.
                let env = self
                    .launch_of(&i.service, &i.version)
                    .map(|l| probe_env(&l))
                    .unwrap_or_default();
                probe_result(i, Some(p), &env)
                    .await
                    .map_err(|e| format!("{} {} ({}): {e}", i.service, i.version, i.id))?;
            }
            Ok(())
        })
    }

    fn stop<'a>(&'a self, instances: &'a [Instance]) -> BoxFuture<'a, Result<(), RolloutError>> {
        Box::pin(async move {
            self.stop_instances(instances).await;
            Ok(())
        })
    }
}

/// The environment a probe command of a launch runs with: the instance's own, and for a
/// container (whose environment has no host variables) the host allowlist under it, since
/// the probe runs on this machine.
fn probe_env(launch: &Launch) -> BTreeMap<String, String> {
    if launch.image.is_none() {
        return launch.env.clone();
    }
    let mut env: BTreeMap<String, String> = host_env(&[])
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    env.extend(launch.env.clone());
    env
}

/// Whether an image reference's registry is on loopback (`localhost`, `127.x`, `[::1]`):
/// pulled without TLS, as Docker treats such registries (nothing off the machine can
/// intercept the connection). The digest pin still decides what runs.
fn registry_is_loopback(reference: &str) -> bool {
    let host = reference.split('/').next().unwrap_or("");
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

fn describe_probe(p: Option<&Probe>) -> String {
    match p {
        Some(Probe { http: Some(h), .. }) => format!("GET {h}"),
        Some(Probe {
            command: Some(c), ..
        }) => format!("`{c}`"),
        _ => "TCP connect".into(),
    }
}

/// One readiness probe of an instance of `svc`: HTTP 2xx on the path, a command exiting
/// 0 (run with the instance's environment), or a TCP connect.
pub async fn probe(i: &Instance, svc: Option<&ServiceProcess>) -> bool {
    let env: BTreeMap<String, String> = svc
        .map_or_else(|| host_env(&[]), ServiceProcess::spec_env)
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    probe_with(i, svc.and_then(|s| s.readiness.as_ref()), &env).await
}

/// One probe of an instance: HTTP 2xx on the path, a command exiting 0 (run with `env`,
/// the instance's environment, and its `PORT`), or a TCP connect. Each within the probe's
/// `timeout` (2 s by default).
pub async fn probe_with(i: &Instance, p: Option<&Probe>, env: &BTreeMap<String, String>) -> bool {
    probe_result(i, p, env).await.is_ok()
}

/// [`probe_with`], saying what failed.
pub async fn probe_result(
    i: &Instance,
    p: Option<&Probe>,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let timeout = p
        .and_then(|p| p.timeout.as_ref())
        .and_then(|t| t.get().ok())
        .unwrap_or(Duration::from_secs(2));
    match p {
        Some(Probe {
            http: Some(path), ..
        }) => match tokio::time::timeout(timeout, http_get_status(i.addr, path)).await {
            Ok(Ok(s)) if (200..300).contains(&s) => Ok(()),
            Ok(Ok(s)) => Err(format!("GET {path} on {} answered {s}", i.addr)),
            Ok(Err(why)) => Err(format!("GET {path} on {} failed: {why}", i.addr)),
            Err(_) => Err(format!(
                "GET {path} on {} timed out after {timeout:?}",
                i.addr
            )),
        },
        Some(Probe {
            command: Some(c), ..
        }) => {
            let run = slipway_stdx::tokio_command("sh")
                .arg("-c")
                .arg(c)
                .env_clear()
                .envs(env)
                .env("PORT", i.addr.port().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(format!("`{c}` for {} exited with {s}", i.addr)),
                Ok(Err(e)) => Err(format!("`{c}` for {} could not run: {e}", i.addr)),
                Err(_) => Err(format!("`{c}` for {} timed out after {timeout:?}", i.addr)),
            }
        }
        _ => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(i.addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("TCP connect to {}: {e}", i.addr)),
            Err(_) => Err(format!(
                "TCP connect to {} timed out after {timeout:?}",
                i.addr
            )),
        },
    }
}

/// `GET path` over HTTP/1.1 with hyper: the status, or what failed (connect, handshake, no
/// answer) for the probe to report.
pub async fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(resp.status().as_u16())
}

fn free_port() -> Result<u16, RolloutError> {
    // Binding port 0 and releasing it races with other programs taking the port: the
    // readiness loop checks who listens and `start_one` tries another port.
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| RolloutError::Instances(format!("find a free port: {e}")))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Start time of a process (clock ticks since boot), `None` when it does not exist.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    // After ')': field 3 (state) is index 0, so field 22 (starttime) is index 19.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether a process has exited but was not reaped yet (its parent may never reap it,
/// e.g. a container's init): it exists in /proc but is not running.
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
}

/// A log file for an instance: created (or emptied) with mode 0600 — set on an existing
/// file too, which an earlier build may have left world-readable.
fn private_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// The last `limit` bytes of an instance's log, redacted before they are cut (so a
/// secret straddling the cut is masked whole); reads at most `limit` plus the longest
/// secret, whatever the log's size. Empty when the log cannot be read; never follows a
/// FIFO or device put in its place (that would block or read forever).
pub fn read_log_tail(path: &Path, limit: usize, redactor: &Redactor) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt as _;
    let read = || -> std::io::Result<(Vec<u8>, bool)> {
        // Non-blocking: opening a FIFO for reading must not wait for a writer.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let keep = (limit + redactor.tail_margin()) as u64;
        let len = meta.len();
        let start = len.saturating_sub(keep);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(keep).read_to_end(&mut buf)?;
        Ok((buf, start > 0))
    };
    let (bytes, cut) = read().unwrap_or_default();
    redactor
        .redact_tail(&String::from_utf8_lossy(&bytes), cut, limit)
        .0
}

/// How much of a log an error message quotes.
const LOG_TAIL_BYTES: usize = 4096;

impl ProcessTarget {
    /// The last lines of an instance's log for an error message, redacted.
    fn log_tail(&self, path: &Path) -> String {
        let text = read_log_tail(path, LOG_TAIL_BYTES, &self.redactor);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(10)..].join("\n")
    }
}
