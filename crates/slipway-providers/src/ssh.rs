//! The `ssh` target: the `exec` target's steps (`run`, `creates`, `unless`, `undo`,
//! `timeout`) run on every host of an inventory group over SSH (russh), in waves of
//! `batch` hosts one after another, at most `parallelism` hosts of a wave at once, hosts
//! in inventory order, with a failure budget of `max_failures` hosts.
//!
//! # Inventory file
//!
//! ```yaml
//! known_hosts: known_hosts      # required; relative to this file. Host keys are checked
//!                               # against it and nothing else: an unknown or changed key
//!                               # is refused (never trusted on first use)
//! identity: id_ed25519          # private key for every host (OpenSSH format, no passphrase)
//! user: deploy                  # remote user for every host
//! connect_parallelism: 32       # optional; SSH handshakes in flight at once (default 32)
//! hosts:                        # in the order they are worked on
//!   - name: web1
//!     address: 10.0.0.11        # as it appears in known_hosts (`[address]:port` if port != 22)
//!     port: 22                  # default 22
//!     user: deploy              # optional, overrides the target's and the file's user
//!     identity: keys/web1       # optional, overrides `identity`
//!     workdir: /srv/app         # optional; steps run there (default: the login directory)
//!     state_dir: /var/lib/x     # optional; locks and markers (default: ~/.slipway)
//!     env: { ROOT: /srv/web1 }  # optional; exported to every step on this host
//!     ports: { web: 8081 }      # optional; overrides the file's `ports` for this host
//! ports: { web: 8080 }          # the first instance's port of each `run:` service
//! groups:
//!   web: [web1]
//! ```
//!
//! The user of a host is the host's `user`, else the target's `user`, else the file's.
//!
//! `connect_parallelism` bounds the handshakes (TCP, key exchange, authentication) in
//! flight at once, whatever the target's `parallelism`: a handshake costs the host (and
//! a fleet of local test hosts, this machine) a process start and a key exchange, and
//! hundreds at once starve each other (and meet sshd's `MaxStartups`) instead of
//! finishing sooner. The sessions are kept for the run, so this only paces its start.
//!
//! A kept session is not probed before a step (that cost a round trip per host per
//! step). One the host was seen to close is replaced before the step, with the
//! handshakes; one that broke unseen (a host that stopped answering) is replaced when the
//! step's channel does not open within [`OPEN_TIMEOUT`] — once, and only then: no command
//! was sent, so nothing of the step started there. A connection that breaks once the
//! channel is open fails the host and never runs the step again (its effect is unknown:
//! the lock and the marker settle it, see below).
//!
//! # Exactly once, on the host
//!
//! As in [`crate::exec`], each attempt runs under `flock` on the host, on
//! `<state_dir>/markers/<run>/<key>.lock` (`state_dir` defaults to `~/.slipway`), and the
//! shell holding the lock skips the command when the completion marker
//! `<state_dir>/markers/<run>/<key>` exists (or the step's `creates`/`unless` guard
//! holds), else runs it and writes the marker on exit 0. One step on one host is one
//! channel and one process tree: the login shell takes the lock (on a descriptor of its
//! own, which the command does not inherit, so a step that starts a service does not keep
//! its step locked for the service's life), checks, runs the command under `timeout`
//! with its output in files beside the marker, writes the marker, and only then sends
//! the output back. Without a terminal nothing signals that shell when the connection
//! drops, and the command writes to files, not to the connection: slipway dying
//! mid-step leaves the attempt to finish and write its marker on its own, and `observe`
//! waits for its lock before looking at the marker. The timeout is applied on the host
//! (`timeout`, killing the command there), to the wait for the lock too. The host needs
//! `flock` and `timeout` (util-linux and coreutils).
//!
//! That wrapper costs a host a channel and four process starts per step (login shell,
//! `flock`, `timeout`, `sh`). Where `perl` runs, a step instead goes to the connection's
//! step helper ([`helper`]): one process per connection, started on the first step, that
//! runs each step with the same lock, markers, guards, timeout, output files and answers
//! at the cost of a fork and the step's `sh`. A host where it cannot start, or a step that
//! finds it busy with another step of the host, takes the wrapper; each host's progress
//! report says which (`via`).
//!
//! # Waves
//!
//! `batch` (a number, or a percentage of the group rounded down, at least 1) cuts the
//! group into waves in inventory order; a wave starts only when every host of the one
//! before has finished the step, and within a wave at most `parallelism` hosts work at
//! once. Without `batch` the whole group is one wave. Waves are per step: step 1 goes
//! through every wave before step 2 starts on the first one.
//!
//! # Failures, the failure budget, and undo
//!
//! All hosts are connected (and their host keys checked) before a command runs on any of
//! them, so a refused host key stops the step before it touches any host, whatever the
//! budget. A host that cannot be reached counts against the failure budget below: within
//! it, the step goes on without the host (reported `failed`, left out of later steps —
//! remembered by this process only, since nothing can be marked on it); beyond it, nothing
//! runs on any host.
//!
//! `max_failures` (a number, or a percentage of the group rounded down; default 0, less
//! than the group's size) is how many hosts may fail during the run without failing it.
//! It counts over the whole run, not per step or per wave: hosts that failed an earlier
//! step count against it. A host that fails within the budget is reported `failed`, gets
//! an exclusion marker (`<state_dir>/markers/<run>/.host-failed`) and is left out of the
//! steps of the run that start after that (reported `excluded` when found by its marker,
//! e.g. after a resume; not contacted at all while this process remembers it). The engine
//! runs the steps of one dependency wave at once, so in practice a host is left out of the
//! services that depend on the one whose step failed; a step running alongside may still
//! reach it. What earlier steps did there stays (a rollback of the run undoes it, as on
//! every host). The step succeeds, its output naming
//! the failed hosts; the run ends `succeeded`, and `slipway deploy` exits 0 with a warning
//! naming them (as Ansible does within `max_fail_percentage`); `slipway status` lists
//! them under `failed_hosts`.
//!
//! When a failure exceeds the budget, the step fails: no further host of the wave and no
//! further wave is started, hosts in flight finish, and the step's `undo` runs on the
//! hosts where this step completed (the engine does not undo a failed step). The engine's
//! rollback later undoes completed steps on the hosts where their marker is present; a
//! host where a `creates`/`unless` guard skipped the step has no marker and is not undone
//! (unlike `exec`, which cannot tell): undo reverses what the run did.
//!
//! An undo runs as an attempt does: under the step's lock, in a session of its own with
//! its output in files, and it removes the marker once it succeeded; so the marker is the
//! undo's completion record too. `observe_undo` (after a crash during a rollback) waits
//! for the lock on every host and calls the undo complete when no marker is left; an undo
//! run again goes only where a marker is left.
//!
//! Every host's outcome and its output (through the [`Redactor`]) is reported as a
//! `step_progress` entry, so the journal and `slipway status` show per-host results.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use serde::Deserialize;
use slipway_engine::target::action_kind;
use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::duration::format_duration;
use slipway_model::plan::StepAction;
use slipway_model::spec::{ExecStep, HostCount};
use slipway_package::Redactor;

use crate::exec::{DEFAULT_TIMEOUT, OUTPUT_LIMIT};
use crate::ssh_service::{self, SshService};

mod helper;
mod timeline;

/// How long connecting to one host (TCP, key exchange, authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long opening a channel on a kept session may take before the connection is
/// taken for dead (the host stopped answering without closing it) and replaced.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long ending a session may take ([`Session::close`]): its helper's exit awaited,
/// then its disconnect. Longer only for a host that stopped answering, which then does
/// not hold up the end of a run by more.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Handshakes in flight at once unless the inventory sets `connect_parallelism`.
pub const DEFAULT_CONNECT_PARALLELISM: usize = 32;

/// What the wrapper prints when the completion marker already exists.
const MARKER_SENTINEL: &str = "slipway: completion marker present, nothing to do";

/// What the step wrapper prints when the host failed an earlier step of the run.
const EXCLUDED_SENTINEL: &str = "slipway: this host failed an earlier step of the run";

/// Name of the exclusion marker in a run's marker directory (idempotency keys are hex,
/// so it cannot be one).
const EXCLUDED_MARKER: &str = ".host-failed";

/// What the undo script prints when the step left no marker on the host.
const NO_MARKER_SENTINEL: &str = "slipway: no completion marker, nothing to undo";

/// The undo's script on a host, as [`step_script`]: in the login shell, under the
/// step's lock, the undo command runs only where the step's completion marker is (else
/// [`NO_MARKER_SENTINEL`]: nothing of this run to undo here, or an earlier undo
/// finished), and the marker goes once the undo succeeded, so it is also the undo's
/// completion evidence.
fn undo_script(dir: &str, marker: &str, cmd: &str, secs: u64, keep: usize) -> String {
    let no_marker = sh_quote(NO_MARKER_SENTINEL);
    format!(
        "{{ [ -d {dir} ] || {{ echo {no_marker} >&2; exit 0; }}\n\
         exec 9>>{marker}.lock || exit 1\n\
         flock -w {secs} 9 || {{ echo {} >&2; exit 75; }}\n\
         if [ ! -e {marker} ]; then echo {no_marker} >&2; exit 0; fi\n\
         timeout -k 5 {secs} sh -c {} >{marker}.undo.out 2>{marker}.undo.err </dev/null 9>&-\n\
         rc=$?\n\
         if [ $rc -eq 0 ]; then rm -f {marker} || rc=75; fi\n\
         if [ -s {marker}.undo.out ]; then tail -c {keep} {marker}.undo.out; : >{marker}.undo.out; fi\n\
         if [ -s {marker}.undo.err ]; then tail -c {keep} {marker}.undo.err >&2; : >{marker}.undo.err; fi\n\
         exit $rc; }}",
        sh_quote(LOCK_SENTINEL),
        sh_quote(cmd),
    )
}

/// What the step script prints when the step's `creates` path exists.
const CREATES_SENTINEL: &str = "slipway: guard `creates` holds, nothing to do";

/// What the step script prints when the step's `unless` command exited 0.
const UNLESS_SENTINEL: &str = "slipway: guard `unless` holds, nothing to do";

/// What the step script prints when an earlier attempt of the step (e.g. of a slipway
/// that died) still held the step's lock after the step's timeout.
const LOCK_SENTINEL: &str = "slipway: an earlier attempt of this step still holds its lock";

/// What the step helper answers (with 75) when its runner finds the step's attempt record
/// holding its own attempt token: this attempt already started on the host, by an earlier
/// send of the same step (ssh/helper.rs), and it is not started again.
const ATTEMPT_SENTINEL: &str =
    "slipway: this attempt of the step already started on this host (an earlier send of it)";

/// The step's script on a host, run by the login shell in the host's workdir: the whole
/// attempt (lock, exclusion and marker checks, guards, the command, the marker, the
/// output) in that one shell, so that a step costs the host one process tree and one
/// channel. Besides the shell: `mkdir` once per run (the run's marker directory),
/// `flock` (takes the lock on the shell's descriptor 9 and exits: the lock is the
/// shell's), `timeout` and `sh -c` for the command (and for `unless`), `tail` only for
/// a stream that is not empty.
///
/// Why it is safe for the login shell to hold the lock: without a terminal nothing
/// signals it when the connection drops (sshd does not, and there is no hang-up), and
/// it writes to the connection only after the marker, so slipway dying mid-step leaves
/// it to finish the attempt, write the marker and only then release the lock (by
/// exiting); `observe` waits for that lock. The command's output goes to files beside
/// the marker (a closed pipe would kill it), read back and emptied (secrets do not stay
/// there) once it ended. Descriptor 9 is closed for the command, so a service it starts
/// does not keep the step locked. The lock wait is bounded by the step's timeout too,
/// so nothing starts on the host after slipway stopped waiting for it.
fn step_script(dir: &str, marker: &str, step: &ExecStep, secs: u64, keep: usize) -> String {
    let mut s = format!(
        "{{ [ -d {dir} ] || mkdir -p {dir} || exit 1\n\
         exec 9>>{marker}.lock || exit 1\n\
         flock -w {secs} 9 || {{ echo {} >&2; exit 75; }}\n\
         if [ -e {dir}/{EXCLUDED_MARKER} ]; then echo {} >&2; exit 0; fi\n\
         if [ -e {marker} ]; then echo {} >&2; exit 0; fi\n",
        sh_quote(LOCK_SENTINEL),
        sh_quote(EXCLUDED_SENTINEL),
        sh_quote(MARKER_SENTINEL),
    );
    if let Some(p) = &step.creates {
        s.push_str(&format!(
            "if [ -e {} ]; then echo {} >&2; exit 0; fi\n",
            sh_quote(p),
            sh_quote(CREATES_SENTINEL)
        ));
    }
    if let Some(cmd) = &step.unless {
        s.push_str(&format!(
            "if timeout -k 5 {secs} sh -c {} >/dev/null 2>&1 </dev/null 9>&-; then echo {} >&2; exit 0; fi\n",
            sh_quote(cmd),
            sh_quote(UNLESS_SENTINEL)
        ));
    }
    s.push_str(&format!(
        "timeout -k 5 {secs} sh -c {} >{marker}.out 2>{marker}.err </dev/null 9>&-\n\
         rc=$?\n\
         if [ $rc -eq 0 ]; then : >{marker} || {{ echo {} >&2; rc=75; }}; fi\n\
         if [ -s {marker}.out ]; then tail -c {keep} {marker}.out; : >{marker}.out; fi\n\
         if [ -s {marker}.err ]; then tail -c {keep} {marker}.err >&2; : >{marker}.err; fi\n\
         exit $rc; }}",
        sh_quote(&step.run),
        sh_quote("slipway: could not write the completion marker")
    ));
    s
}

/// Exit statuses of [`observe_script`], each the answer to "is the step done here", so
/// that a shell that fails on its own (a missing workdir: 1 or 2) is not taken for one.
const OBSERVED_MARKER: i32 = 0;
const OBSERVED_EXCLUDED: i32 = 3;
const OBSERVED_CREATES: i32 = 4;
const OBSERVED_UNLESS: i32 = 5;
const OBSERVED_NOT_DONE: i32 = 6;

/// Whether a step is done on a host, in the login shell, on one channel: left out by an
/// earlier failure (the run's exclusion marker), else, once no attempt holds the step's
/// lock (waited for at most `wait` seconds, then [`LOCK_SENTINEL`] and 75), the
/// completion marker, else the step's `creates`/`unless` guard checked under that lock as
/// an attempt checks it; the answer is the exit status (`OBSERVED_*`).
fn observe_script(dir: &str, marker: &str, step: &ExecStep, secs: u64, wait: u64) -> String {
    let mut s = format!(
        "{{ if [ -e {dir}/{EXCLUDED_MARKER} ]; then exit {OBSERVED_EXCLUDED}; fi\n\
         if [ -e {marker}.lock ]; then\n\
         exec 9>>{marker}.lock || exit 1\n\
         flock -w {wait} 9 || {{ echo {} >&2; exit 75; }}\n\
         fi\n\
         if [ -e {marker} ]; then exit {OBSERVED_MARKER}; fi\n",
        sh_quote(LOCK_SENTINEL),
    );
    if let Some(p) = &step.creates {
        s.push_str(&format!(
            "if [ -e {} ]; then exit {OBSERVED_CREATES}; fi\n",
            sh_quote(p)
        ));
    }
    if let Some(cmd) = &step.unless {
        s.push_str(&format!(
            "if timeout -k 5 {secs} sh -c {} >/dev/null 2>&1 </dev/null 9>&-; then exit {OBSERVED_UNLESS}; fi\n",
            sh_quote(cmd)
        ));
    }
    s.push_str(&format!("exit {OBSERVED_NOT_DONE}; }}"));
    s
}

// ---------------------------------------------------------------------------------------
// Inventory

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    known_hosts: Option<String>,
    identity: Option<String>,
    user: Option<String>,
    connect_parallelism: Option<u32>,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default)]
    hosts: Vec<RawHost>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: String,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<String>,
    workdir: Option<String>,
    state_dir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
}

/// A shell variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One host of an inventory, with everything needed to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name in the inventory (what messages and status show).
    pub name: String,
    /// Address to connect to, and to look up in `known_hosts`.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Remote user, if the host sets one.
    pub user: Option<String>,
    /// Private key file, if the host sets one (absolute).
    pub identity: Option<PathBuf>,
    /// Where steps run on the host.
    pub workdir: Option<String>,
    /// Where locks and completion markers live on the host (default `~/.slipway`).
    pub state_dir: Option<String>,
    /// Exported to every step on this host.
    pub env: BTreeMap<String, String>,
    /// The port of the first instance of each `run:` service on this host (the next
    /// instances take the ports after it): the host's own `ports`, over the file's.
    pub ports: BTreeMap<String, u16>,
}

/// A parsed, checked inventory file.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    /// The known_hosts file host keys are checked against (absolute).
    pub known_hosts: PathBuf,
    /// Default private key (absolute).
    pub identity: Option<PathBuf>,
    /// Default user.
    pub user: Option<String>,
    /// SSH handshakes in flight at once (at least 1).
    pub connect_parallelism: usize,
    /// Hosts in file order.
    pub hosts: Vec<Host>,
    /// Groups: name → host names.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A problem with an inventory file, naming the file, the field and the fix.
#[derive(Debug, thiserror::Error)]
#[error("inventory {}: {message}", path.display())]
pub struct InventoryError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Inventory {
    /// Read and check an inventory file. Relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let err = |message: String| InventoryError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(format!(
                "cannot be read: {e}; fix: point `target.ssh.inventory` at an inventory file (relative to the spec)"
            ))
        })?;
        Self::parse(path, &text)
    }

    /// Parse inventory text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, InventoryError> {
        let err = |message: String| InventoryError {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawInventory = serde_saphyr::from_str(text).map_err(|e| {
            err(format!(
                "{e}; fix: the fields are known_hosts, identity, user, connect_parallelism, ports, hosts (list of name, address, port, user, identity, workdir, state_dir, env, ports) and groups (name: [host, ...])"
            ))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &str| dir.join(p);
        let Some(known_hosts) = raw.known_hosts.as_deref() else {
            return Err(err(
                "`known_hosts` is missing; fix: add `known_hosts: FILE` with the hosts' keys (e.g. from `ssh-keyscan` checked against the hosts' real fingerprints); host keys are never trusted on first use".into(),
            ));
        };
        if raw.connect_parallelism == Some(0) {
            return Err(err(
                "`connect_parallelism` is 0; fix: allow at least 1 SSH handshake at once (default 32)".into(),
            ));
        }
        if raw.hosts.is_empty() {
            return Err(err(
                "`hosts` is empty; fix: list the hosts as `hosts: [{ name: web1, address: 10.0.0.11 }]`".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.into_iter().enumerate() {
            if h.name.trim().is_empty() {
                return Err(err(format!(
                    "`hosts[{i}].name` is empty; fix: give every host a unique name"
                )));
            }
            if !seen.insert(h.name.clone()) {
                return Err(err(format!(
                    "`hosts[{i}].name` `{}` is used twice; fix: give every host a unique name",
                    h.name
                )));
            }
            if h.address.trim().is_empty() {
                return Err(err(format!(
                    "`hosts[{i}].address` of `{}` is empty; fix: set the host's address as in known_hosts",
                    h.name
                )));
            }
            let port = h.port.unwrap_or(22);
            if port == 0 {
                return Err(err(format!(
                    "`hosts[{i}].port` of `{}` is 0; fix: use the host's SSH port (default 22)",
                    h.name
                )));
            }
            // Names are written into the remote command line (`export NAME=...`).
            if let Some(bad) = h.env.keys().find(|k| !is_env_name(k)) {
                return Err(err(format!(
                    "`hosts[{i}].env` of `{}` has the name `{bad}`, which is not a variable name; fix: use letters, digits and `_`, not starting with a digit",
                    h.name
                )));
            }
            let mut ports = raw.ports.clone();
            ports.extend(h.ports);
            if let Some((svc, _)) = ports.iter().find(|(_, p)| **p == 0) {
                return Err(err(format!(
                    "the port of service `{svc}` on host `{}` is 0; fix: give the port its instances listen on (1-65535) in `ports`",
                    h.name
                )));
            }
            hosts.push(Host {
                ports,
                name: h.name,
                address: h.address,
                port,
                user: h.user,
                identity: h.identity.as_deref().map(abs),
                workdir: h.workdir,
                state_dir: h.state_dir,
                env: h.env,
            });
        }
        for (group, members) in &raw.groups {
            for m in members {
                if !seen.contains(m) {
                    return Err(err(format!(
                        "`groups.{group}` names host `{m}`, which is not in `hosts` (hosts: {}); fix: add it to `hosts` or correct the name",
                        seen.iter().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            known_hosts: abs(known_hosts),
            identity: raw.identity.as_deref().map(abs),
            user: raw.user,
            connect_parallelism: raw
                .connect_parallelism
                .map_or(DEFAULT_CONNECT_PARALLELISM, |n| n as usize),
            hosts,
            groups: raw.groups,
        })
    }

    /// The hosts of `group` in inventory order, or every host when no group is given.
    pub fn select(&self, group: Option<&str>) -> Result<Vec<Host>, InventoryError> {
        let Some(group) = group else {
            return Ok(self.hosts.clone());
        };
        let Some(members) = self.groups.get(group) else {
            return Err(InventoryError {
                path: self.path.clone(),
                message: format!(
                    "has no group `{group}` (groups: {}); fix: add `groups: {{ {group}: [host, ...] }}` or correct `target.ssh.group`",
                    if self.groups.is_empty() {
                        "none".to_owned()
                    } else {
                        self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            });
        };
        if members.is_empty() {
            return Err(InventoryError {
                path: self.path.clone(),
                message: format!("group `{group}` has no hosts; fix: list its hosts"),
            });
        }
        Ok(self
            .hosts
            .iter()
            .filter(|h| members.contains(&h.name))
            .cloned()
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// Connections

/// Everything needed to open an authenticated session to one host.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The host.
    pub host: Host,
    /// Remote user.
    pub user: String,
    /// Private key file.
    pub identity: PathBuf,
    /// known_hosts file the host key must be in.
    pub known_hosts: PathBuf,
}

impl Endpoint {
    /// `name (address:port)`, for messages.
    pub fn label(&self) -> String {
        format!(
            "host `{}` ({}:{})",
            self.host.name, self.host.address, self.host.port
        )
    }
}

/// Why a host could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// Its host key is unknown or changed (or known_hosts is unusable): refused.
    #[error("{0}")]
    HostKey(String),
    /// It could not be reached, or refused the key.
    #[error("{0}")]
    Connect(String),
    /// A command could not be run (the session broke).
    #[error("{0}")]
    Session(String),
}

/// `SHA256:…` of a key, as `ssh-keygen -l` prints it.
fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Check a presented host key against the known_hosts file: accepted only when the file
/// records exactly this key for `[address]:port`.
pub fn check_host_key(ep: &Endpoint, key: &PublicKey) -> Result<(), String> {
    let kh = &ep.known_hosts;
    let h = &ep.host;
    let presented = format!("{} key {}", key.algorithm(), fingerprint(key));
    let pattern = if h.port == 22 {
        h.address.clone()
    } else {
        format!("[{}]:{}", h.address, h.port)
    };
    let scan = format!("ssh-keyscan -p {} {}", h.port, h.address);
    if !kh.is_file() {
        return Err(format!(
            "refused {}: it presented {presented}, and the known_hosts file {} does not exist; fix: check that fingerprint against the host (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` there), then record it: `{scan} >> {}`",
            ep.label(),
            kh.display(),
            kh.display()
        ));
    }
    let recorded = russh::keys::known_hosts::known_host_keys_path(&h.address, h.port, kh)
        .map_err(|e| {
            format!(
                "refused {}: the known_hosts file {} cannot be read for `{pattern}`: {e}; fix: correct or remove that entry",
                ep.label(),
                kh.display()
            )
        })?;
    if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
        return Ok(());
    }
    if recorded.is_empty() {
        return Err(format!(
            "refused {}: its host key is unknown: it presented {presented}, and {} has no entry for `{pattern}` (keys are never trusted on first use); fix: check that fingerprint against the host (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` there), then record it: `{scan} >> {}`",
            ep.label(),
            kh.display(),
            kh.display()
        ));
    }
    let was: Vec<String> = recorded
        .iter()
        .map(|(line, k)| format!("line {line}: {} {}", k.algorithm(), fingerprint(k)))
        .collect();
    Err(format!(
        "refused {}: its HOST KEY CHANGED: it presented {presented}, but {} records {} for `{pattern}` (someone may be intercepting the connection); fix: if the host was legitimately re-keyed, check the new fingerprint against the host, then replace the entry: `ssh-keygen -R '{pattern}' -f {}` and `{scan} >> {}`",
        ep.label(),
        kh.display(),
        was.join(", "),
        kh.display(),
        kh.display()
    ))
}

struct Verifier {
    endpoint: Endpoint,
    /// Why the key was refused, read back after the handshake fails.
    refusal: Arc<Mutex<Option<String>>>,
    /// Dropped with the handler when the connection's task ends: [`Conn::ended`].
    _alive: tokio::sync::watch::Sender<()>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        timeline::mark(&self.endpoint.host.name, "hostkey", "");
        match check_host_key(&self.endpoint, &server_public_key.public_key()) {
            Ok(()) => Ok(true),
            Err(why) => {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// An SSH connection, and word of its end.
struct Conn {
    handle: client::Handle<Verifier>,
    /// Closed when the connection's task has ended (its handler, which holds the sender,
    /// is dropped then): a disconnect sent before is on the wire and the socket shut.
    ended: tokio::sync::watch::Receiver<()>,
}

impl std::ops::Deref for Conn {
    type Target = client::Handle<Verifier>;
    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

impl Conn {
    /// Say goodbye to the host and wait (until `deadline`) for the connection to end, so
    /// that the host sees a clean disconnect even when this process exits right after.
    async fn disconnect_by(&self, deadline: tokio::time::Instant) {
        let bye = self.disconnect(russh::Disconnect::ByApplication, "", "en");
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, bye).await {
            let mut ended = self.ended.clone();
            // `Err` once the sender is dropped: the connection's task ended.
            let _ = tokio::time::timeout_at(deadline, ended.changed()).await;
        }
    }
}

/// The SSH connection of a [`Session`].
type Handle = Arc<Conn>;

/// An authenticated session to one host, kept for a run. Its connection is replaced
/// (host key checked again) when a channel cannot be opened on it: see
/// [`Session::channel`].
pub struct Session {
    endpoint: Endpoint,
    /// The current connection. Each user of a channel holds its own clone of the handle
    /// for the channel's life, so replacing it never cuts a channel in use.
    handle: std::sync::Mutex<Handle>,
    /// Taken while the connection is replaced, so users that find it broken at once
    /// log in again once, not once each.
    reconnecting: tokio::sync::Mutex<()>,
    /// The step helper on the current connection ([`helper`]); taken by the step it
    /// runs, so a step that finds it taken runs with the wrapper instead of waiting.
    helper: tokio::sync::Mutex<helper::Slot>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Connect to a host, verify its key strictly, authenticate with its private key.
pub async fn connect(ep: &Endpoint) -> Result<Session, SshError> {
    Ok(Session {
        endpoint: ep.clone(),
        handle: std::sync::Mutex::new(Arc::new(handshake(ep).await?)),
        reconnecting: tokio::sync::Mutex::new(()),
        helper: tokio::sync::Mutex::default(),
    })
}

/// A new authenticated connection to a host (the work of [`connect`]).
async fn handshake(ep: &Endpoint) -> Result<Conn, SshError> {
    timeline::mark(&ep.host.name, "connect", "");
    let key = russh::keys::load_secret_key(&ep.identity, None).map_err(|e| {
        SshError::Connect(format!(
            "cannot use the private key {} for {}: {e}; fix: set `identity` in the inventory to an OpenSSH private key without a passphrase",
            ep.identity.display(),
            ep.label()
        ))
    })?;
    let refusal = Arc::new(Mutex::new(None));
    let (alive, ended) = tokio::sync::watch::channel(());
    let verifier = Verifier {
        endpoint: ep.clone(),
        refusal: refusal.clone(),
        _alive: alive,
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        // Each message goes out when written: with Nagle's algorithm (russh's default) a
        // small message written while the previous one is unacknowledged waits for the
        // host's delayed acknowledgement (40 ms on Linux) — in the handshake, and for a
        // step's channel after the previous step's close.
        nodelay: true,
        ..Default::default()
    });
    let addr = (ep.host.address.as_str(), ep.host.port);
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT, client::connect(config, addr, verifier)).await;
    let mut handle = match connected {
        Err(_) => {
            return Err(SshError::Connect(format!(
                "cannot reach {}: no SSH handshake within {}; fix: check the address and port in the inventory and that sshd runs there",
                ep.label(),
                format_duration(CONNECT_TIMEOUT)
            )));
        }
        Ok(Err(e)) => {
            if let Some(why) = refusal.lock().ok().and_then(|mut r| r.take()) {
                return Err(SshError::HostKey(why));
            }
            return Err(SshError::Connect(format!(
                "cannot connect to {}: {e}; fix: check the address and port in the inventory and that sshd runs there",
                ep.label()
            )));
        }
        Ok(Ok(h)) => h,
    };
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| SshError::Connect(format!("{}: {e}", ep.label())))?
        .flatten();
    let auth = handle
        .authenticate_publickey(
            ep.user.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
        )
        .await
        .map_err(|e| SshError::Connect(format!("authenticate to {}: {e}", ep.label())))?;
    if !auth.success() {
        return Err(SshError::Connect(format!(
            "{} refused the key {} for user `{}`; fix: add its public key to that user's authorized_keys on the host, or correct `user`/`identity` in the inventory",
            ep.label(),
            ep.identity.display(),
            ep.user
        )));
    }
    timeline::mark(&ep.host.name, "authed", "");
    Ok(Conn { handle, ended })
}

/// Append to a buffer keeping its last `limit` bytes.
fn push_tail(buf: &mut Vec<u8>, data: &[u8], limit: usize, truncated: &mut bool) {
    buf.extend_from_slice(data);
    // A stream that fills the buffer may have been cut already on the host (`tail -c`).
    if buf.len() >= limit {
        *truncated = true;
    }
    if buf.len() > limit {
        let cut = buf.len() - limit;
        buf.drain(..cut);
        *truncated = true;
    }
}

/// Quote a string for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Session {
    /// The host this session is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Run a command line (interpreted by the user's login shell on the host) with `env`
    /// exported first, capturing the tail of stdout and stderr and the exit status. The
    /// timeout is the caller's bound on the whole exchange; on expiry the channel is
    /// closed and the output so far is returned with no exit code.
    ///
    /// `keep` bytes of each stream are kept (its end); `truncated` says whether a stream
    /// filled them, so a caller that redacts (`Redactor::redact_tail`) knows the first
    /// bytes may end a secret that began before them.
    pub async fn run(
        &self,
        command: &str,
        env: &[(String, String)],
        timeout: Duration,
        keep: usize,
    ) -> Result<(StepOutput, bool), SshError> {
        self.run_with_input(command, env, timeout, keep, None).await
    }

    /// [`Self::run`] with `input` as the command's standard input (then end of file):
    /// how bytes that must not appear on a command line (rendered secrets) reach a host.
    pub async fn run_with_input(
        &self,
        command: &str,
        env: &[(String, String)],
        timeout: Duration,
        keep: usize,
        input: Option<&[u8]>,
    ) -> Result<(StepOutput, bool), SshError> {
        let mut line = String::new();
        for (k, v) in env {
            line.push_str(&format!("export {k}={}; ", sh_quote(v)));
        }
        line.push_str(command);
        let broke = |e: russh::Error| {
            SshError::Session(format!("run a command on {}: {e}", self.endpoint.label()))
        };
        // Held until the exchange ends: the channel lives on this connection.
        let (_conn, mut ch) = self.channel().await?;
        ch.exec(true, line).await.map_err(broke)?;
        if let Some(bytes) = input {
            let sent = tokio::time::timeout(timeout, async {
                ch.data(bytes).await?;
                ch.eof().await
            })
            .await;
            match sent {
                Ok(r) => r.map_err(broke)?,
                Err(_) => {
                    let _ = ch.close().await;
                    return Err(SshError::Session(format!(
                        "send input to {}: not accepted within {}",
                        self.endpoint.label(),
                        format_duration(timeout)
                    )));
                }
            }
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut truncated = false;
        let mut code = None;
        let mut signal = None;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut timed_out = false;
        loop {
            match tokio::time::timeout_at(deadline, ch.wait()).await {
                Err(_) => {
                    timed_out = true;
                    let _ = ch.close().await;
                    break;
                }
                Ok(None) => break,
                Ok(Some(msg)) => match msg {
                    russh::ChannelMsg::Data { data } => {
                        push_tail(&mut out, &data, keep, &mut truncated);
                    }
                    russh::ChannelMsg::ExtendedData { data, .. } => {
                        push_tail(&mut err, &data, keep, &mut truncated);
                    }
                    russh::ChannelMsg::ExitStatus { exit_status } => {
                        code = Some(i32::try_from(exit_status).unwrap_or(i32::MAX));
                    }
                    russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                        signal = Some(format!("{signal_name:?}"));
                    }
                    // The host refused to start the command: nothing ran, and nothing
                    // more will come on this channel (it waited for the bound before).
                    russh::ChannelMsg::Failure => {
                        let _ = ch.close().await;
                        return Err(SshError::Session(format!(
                            "run a command on {}: the host refused to start it",
                            self.endpoint.label()
                        )));
                    }
                    _ => {}
                },
            }
        }
        let mut stderr = String::from_utf8_lossy(&err).into_owned();
        if let Some(s) = signal {
            stderr.push_str(&format!("\n(killed by signal {s})"));
        }
        Ok((
            StepOutput {
                exit_code: code,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr,
                truncated,
            },
            timed_out,
        ))
    }

    /// A TCP connection opened *by the host* to `host:port` (an SSH `direct-tcpip`
    /// channel): what the host can reach, not what this machine can, with no tool needed
    /// there. sshd refuses it when its `AllowTcpForwarding`/`PermitOpen` forbid it. A
    /// connection already closed is replaced first; a refused channel is the answer
    /// (nothing listens there, or forwarding is forbidden), not a reason to log in again.
    pub async fn open_tcp(
        &self,
        host: &str,
        port: u16,
    ) -> Result<russh::ChannelStream<client::Msg>, russh::Error> {
        let mut conn = self.current();
        if conn.is_closed() {
            conn = self
                .reconnect(&conn)
                .await
                .map_err(|e| russh::Error::IO(std::io::Error::other(e.to_string())))?;
        }
        let ch = conn
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await?;
        Ok(ch.into_stream())
    }

    /// The current connection.
    fn current(&self) -> Handle {
        // A poisoned lock only means a thread panicked while swapping an `Arc`: the
        // handle in it is whole.
        self.handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replace `broken` with a new connection (host key checked again), unless another
    /// user of the session did already; the connection to use now.
    async fn reconnect(&self, broken: &Handle) -> Result<Handle, SshError> {
        let _one = self.reconnecting.lock().await;
        let now = self.current();
        if !Arc::ptr_eq(&now, broken) && !now.is_closed() {
            return Ok(now);
        }
        let fresh = Arc::new(handshake(&self.endpoint).await?);
        *self
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
        // The old connection may still be open (it stopped answering): say goodbye, and
        // do not wait for an answer that may never come.
        let old = broken.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.disconnect(russh::Disconnect::ByApplication, "", "en"),
            )
            .await;
        });
        Ok(fresh)
    }

    /// Whether the connection was found closed (the host dropped it since it was last
    /// used); nothing is sent to find out.
    pub fn is_closed(&self) -> bool {
        self.current().is_closed()
    }

    /// Replace the connection if it is closed (see [`Self::is_closed`]).
    pub async fn reconnect_if_closed(&self) -> Result<(), SshError> {
        let conn = self.current();
        if conn.is_closed() {
            self.reconnect(&conn).await?;
        }
        Ok(())
    }

    /// A session channel to run one command on, with the connection it lives on.
    ///
    /// The reconnect rule (exactly once): when the connection is closed, or opening the
    /// channel fails or gets no answer within [`OPEN_TIMEOUT`], the session logs in again
    /// and opens the channel there, once. That is safe because no command had been sent:
    /// a command goes only on a channel that opened, so nothing of it can have started on
    /// the host. Once the channel is open, nothing is ever retried here: a connection
    /// that breaks after that fails the command, whose effect on the host is unknown (the
    /// step's lock and marker settle it). A kept session is thus not probed before use
    /// (that cost a round trip per host per step).
    async fn channel(&self) -> Result<(Handle, russh::Channel<client::Msg>), SshError> {
        let conn = self.current();
        let why = if conn.is_closed() {
            "the connection was closed".to_owned()
        } else {
            match tokio::time::timeout(OPEN_TIMEOUT, conn.channel_open_session()).await {
                Ok(Ok(ch)) => return Ok((conn, ch)),
                Ok(Err(e)) => format!("opening a channel failed: {e}"),
                Err(_) => format!(
                    "opening a channel got no answer within {}",
                    format_duration(OPEN_TIMEOUT)
                ),
            }
        };
        let label = self.endpoint.label();
        let conn = self.reconnect(&conn).await.map_err(|e| {
            SshError::Session(format!(
                "run a command on {label}: {why}, and logging in again failed (nothing was started there): {e}"
            ))
        })?;
        match tokio::time::timeout(OPEN_TIMEOUT, conn.channel_open_session()).await {
            Ok(Ok(ch)) => Ok((conn, ch)),
            Ok(Err(e)) => Err(SshError::Session(format!(
                "run a command on {label}: {why}; logged in again, and opening a channel failed again (nothing was started there): {e}"
            ))),
            Err(_) => Err(SshError::Session(format!(
                "run a command on {label}: {why}; logged in again, and opening a channel got no answer within {} again (nothing was started there)",
                format_duration(OPEN_TIMEOUT)
            ))),
        }
    }

    /// End the session, by [`CLOSE_TIMEOUT`] at most (a host that stopped answering
    /// does not hold up the end of a run): its step helper is told end of file and
    /// exits, and its channel's end is awaited — so once this returns the helper is gone
    /// from the host — then the host gets a clean disconnect, on the wire before this
    /// returns. Left to the process's exit, helpers and their sshd sessions outlived the
    /// run by seconds on a busy host and overlapped the next run's logins.
    pub async fn close(&self) {
        timeline::mark(&self.endpoint.host.name, "close", "");
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        // A step still holding the helper (a run stopped mid-step) keeps it: the
        // disconnect then ends its channel, and the helper reads end of file.
        if let Ok(mut slot) = tokio::time::timeout_at(deadline, self.helper.lock()).await
            && let helper::Slot::Up(h) = std::mem::take(&mut *slot)
        {
            h.finish(deadline).await;
        }
        self.current().disconnect_by(deadline).await;
        timeline::mark(&self.endpoint.host.name, "closed", "");
    }
}

// ---------------------------------------------------------------------------------------
// The target

/// Runs exec steps on every host of an inventory group.
#[derive(Debug, Clone)]
pub struct SshTarget {
    endpoints: Vec<Endpoint>,
    parallelism: usize,
    /// Handshakes in flight at once (the inventory's `connect_parallelism`).
    connect_parallelism: usize,
    /// Hosts per wave (at least 1).
    batch: usize,
    /// Hosts that may fail during the run (less than the number of hosts).
    max_failures: usize,
    /// Endpoint indices of hosts that failed a step (or could not be reached) in this run:
    /// left out of the later steps. Shared by the steps the engine runs at once, so the
    /// budget holds for the run, not per step. Also marked on the host, so a resumed run
    /// finds them again.
    excluded: Arc<Mutex<BTreeSet<usize>>>,
    default_timeout: Duration,
    redactor: Redactor,
    /// Open sessions by endpoint index, reused by the next step of the run (one handshake
    /// per host per run, not per step); a closed one is replaced.
    sessions: Arc<tokio::sync::Mutex<BTreeMap<usize, Arc<Session>>>>,
    /// The plan's `run:` services, deployed as supervised instances by `deploy` steps
    /// (`crate::ssh_service`).
    services: Arc<BTreeMap<String, SshService>>,
    /// Where this machine renders each version's config (`<config root>/<service>/<version>`),
    /// delivered to the hosts by the deploy step.
    config_root: Option<PathBuf>,
}

/// How a step reached a host.
#[derive(Debug, Clone)]
pub(crate) enum Via {
    /// Not at all (not started, or its timeout could not be read).
    Nothing,
    /// Through the connection's step helper ([`helper`]).
    Helper,
    /// Through the wrapper on a channel of its own ([`step_script`]): why not the helper.
    Wrapper(String),
}

/// What happened to one step on one host.
#[derive(Debug, Clone)]
pub(crate) enum HostOutcome {
    Ran(StepOutput),
    AlreadyDone(String),
    Failed(String, StepOutput),
    /// Not started because the failure budget was used up first.
    Skipped,
    /// Left out: the host failed an earlier step of the run within the budget.
    Excluded,
}

impl SshTarget {
    /// The hosts of `group` in `inventory`, as `user` unless a host or the inventory says
    /// otherwise (host, then `user`, then the inventory's). Every host needs a user and a
    /// private key.
    pub fn new(
        inventory: &Inventory,
        group: Option<&str>,
        user: Option<&str>,
        parallelism: Option<u32>,
    ) -> Result<Self, InventoryError> {
        let hosts = inventory.select(group)?;
        let mut endpoints = Vec::new();
        for h in hosts {
            let Some(user) = h
                .user
                .clone()
                .or_else(|| user.map(str::to_owned))
                .or_else(|| inventory.user.clone())
            else {
                return Err(InventoryError {
                    path: inventory.path.clone(),
                    message: format!(
                        "host `{}` has no user; fix: set `user` on the host or in the inventory, or `target.ssh.user` in the spec",
                        h.name
                    ),
                });
            };
            let Some(identity) = h.identity.clone().or_else(|| inventory.identity.clone()) else {
                return Err(InventoryError {
                    path: inventory.path.clone(),
                    message: format!(
                        "host `{}` has no private key; fix: set `identity: FILE` in the inventory (or on the host)",
                        h.name
                    ),
                });
            };
            endpoints.push(Endpoint {
                host: h,
                user,
                identity,
                known_hosts: inventory.known_hosts.clone(),
            });
        }
        let batch = endpoints.len().max(1);
        Ok(Self {
            endpoints,
            parallelism: parallelism.map_or(1, |p| p.max(1) as usize),
            connect_parallelism: inventory.connect_parallelism.max(1),
            batch,
            max_failures: 0,
            excluded: Arc::default(),
            default_timeout: DEFAULT_TIMEOUT,
            redactor: Redactor::default(),
            sessions: Arc::default(),
            services: Arc::default(),
            config_root: None,
        })
    }

    /// Waves of `batch` hosts (default: one wave) and a failure budget of `max_failures`
    /// hosts (default 0), resolved against the group's size; a budget that would let
    /// every host fail is refused.
    pub fn with_waves(
        mut self,
        inventory: &Inventory,
        batch: Option<&HostCount>,
        max_failures: Option<&HostCount>,
    ) -> Result<Self, InventoryError> {
        let n = self.endpoints.len();
        let err = |message: String| InventoryError {
            path: inventory.path.clone(),
            message,
        };
        if let Some(b) = batch {
            let size = b.of(n).map_err(|e| {
                err(format!(
                    "`target.ssh.batch`: {e}; fix: write a number of hosts (`2`) or a percentage (`\"25%\"`)"
                ))
            })?;
            if matches!(b, HostCount::Hosts(0)) {
                return Err(err(
                    "`target.ssh.batch` is 0; fix: put at least 1 host in a wave".into(),
                ));
            }
            self.batch = size.max(1);
        }
        if let Some(m) = max_failures {
            let budget = m.of(n).map_err(|e| {
                err(format!(
                    "`target.ssh.max_failures`: {e}; fix: write a number of hosts (`1`) or a percentage (`\"10%\"`)"
                ))
            })?;
            if budget >= n && n > 0 {
                return Err(err(format!(
                    "`target.ssh.max_failures` {m} lets all {n} hosts of the group fail and still calls the run a success; fix: set it below {n}"
                )));
            }
            self.max_failures = budget;
        }
        Ok(self)
    }

    /// The waves: host names, in the order they are worked on.
    pub fn waves(&self) -> Vec<Vec<String>> {
        self.endpoints
            .chunks(self.batch)
            .map(|w| w.iter().map(|e| e.host.name.clone()).collect())
            .collect()
    }

    /// How many hosts may fail during the run without failing it.
    pub fn max_failures(&self) -> usize {
        self.max_failures
    }

    /// Hosts per wave.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Hosts worked on at once within a wave.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// Names of the hosts left out of later steps after failing within the budget.
    pub fn excluded_hosts(&self) -> Vec<String> {
        self.excluded_set()
            .iter()
            .filter_map(|i| self.endpoints.get(*i).map(|e| e.host.name.clone()))
            .collect()
    }

    pub(crate) fn excluded_set(&self) -> BTreeSet<usize> {
        // A poisoned lock only means a thread panicked while inserting an index: the set
        // is still a set of indices.
        self.excluded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Count host `i` as failed in this run; how many have failed now.
    fn exclude(&self, i: usize) -> usize {
        let mut set = self
            .excluded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(i);
        set.len()
    }

    /// How many hosts have failed in this run (as far as this process knows).
    pub(crate) fn failed_count(&self) -> usize {
        self.excluded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether more hosts failed than the budget allows: nothing more starts.
    pub(crate) fn over_budget(&self) -> bool {
        self.failed_count() > self.max_failures
    }

    /// Masks these secret values in every captured stdout/stderr and message.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The `run:` services its `deploy` steps deploy, and the config root their
    /// versions' config is rendered under on this machine.
    pub fn with_services(
        mut self,
        services: BTreeMap<String, SshService>,
        config_root: Option<PathBuf>,
    ) -> Self {
        self.services = Arc::new(services);
        self.config_root = config_root;
        self
    }

    /// Timeout of steps that set none.
    pub fn with_default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    /// The hosts, in order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// A session to every host, in host order: the open ones kept from an earlier step,
    /// new ones connected (bounded by `parallelism` and `connect_parallelism`) with their host keys checked and
    /// their key authenticated; every problem is named, host by host, and then none of
    /// the sessions is handed out.
    pub async fn connect_all(&self) -> Result<Vec<Arc<Session>>, TargetError> {
        let all: Vec<usize> = (0..self.endpoints.len()).collect();
        Ok(self
            .connect_some(&all)
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Whether a run can start: every host's key checked (a refused one is an error) and
    /// at most `max_failures` hosts unreachable (each named in the result, to warn about:
    /// the run counts them against its budget). The sessions stay open for this target's
    /// steps, so a deploy that checks first and then runs logs in once per host; on an
    /// error they are closed.
    ///
    /// Each host's step helper ([`helper`]) is started as soon as its session is up,
    /// while the other hosts' handshakes go on (outside their bound), so that the run's
    /// first step does not start 200 of them at once: it found them started. A helper
    /// runs nothing until a step is sent to it, so this changes nothing on a host whose
    /// run does not start. Where one cannot start, the host's steps take the wrapper, as
    /// they would have.
    pub async fn check_hosts(&self) -> Result<Vec<String>, TargetError> {
        let all: Vec<usize> = (0..self.endpoints.len()).collect();
        let (_kept, problems) = self.connect_each_then(&all, true).await;
        let refused = problems
            .iter()
            .any(|(_, e)| matches!(e, SshError::HostKey(_)));
        let named: Vec<String> = problems.iter().map(|(_, e)| e.to_string()).collect();
        if refused || problems.len() > self.max_failures {
            self.close_all().await;
            return Err(TargetError::Io(format!(
                "nothing was run on any host: {}",
                named.join("; ")
            )));
        }
        Ok(named)
    }

    /// A session to every host for read-only checks, in host order: the sessions kept by
    /// [`Self::check_hosts`] (so a deploy's readiness checks log in no more often than its
    /// steps do), new ones where none is kept; a host that cannot be had carries why.
    pub async fn sessions(&self) -> Vec<(Endpoint, Result<Arc<Session>, String>)> {
        let all: Vec<usize> = (0..self.endpoints.len()).collect();
        let (kept, problems) = self.connect_each(&all).await;
        let mut out: Vec<(usize, Result<Arc<Session>, String>)> = kept
            .into_iter()
            .map(|(i, s)| (i, Ok(s)))
            .chain(problems.into_iter().map(|(i, e)| (i, Err(e.to_string()))))
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter()
            .map(|(i, r)| (self.endpoints[i].clone(), r))
            .collect()
    }

    /// Close every kept session, all at once ([`Session::close`]: the step helpers gone
    /// from the hosts, a clean disconnect, [`CLOSE_TIMEOUT`] at most): what a run's
    /// driver calls when it is done with the hosts.
    pub async fn close_all(&self) {
        let kept = std::mem::take(&mut *self.sessions.lock().await);
        futures_util::future::join_all(kept.values().map(|s| s.close())).await;
    }

    /// [`Self::connect_all`] for the hosts at these endpoint indices, with their indices.
    async fn connect_some(
        &self,
        which: &[usize],
    ) -> Result<Vec<(usize, Arc<Session>)>, TargetError> {
        let (sessions, problems) = self.connect_each(which).await;
        if !problems.is_empty() {
            return Err(TargetError::Io(format!(
                "nothing was run on any host: {}",
                problems
                    .iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Ok(sessions)
    }

    /// A session to each host at these indices that could be had, and the problem of
    /// each that could not, both in host order.
    async fn connect_each(
        &self,
        which: &[usize],
    ) -> (Vec<(usize, Arc<Session>)>, Vec<(usize, SshError)>) {
        self.connect_each_then(which, false).await
    }

    /// [`Self::connect_each`], starting each new session's step helper once it is up
    /// when `warm` ([`Self::check_hosts`]); every start is awaited before this returns,
    /// so that a step never finds a helper still starting (it would take the wrapper).
    async fn connect_each_then(
        &self,
        which: &[usize],
        warm: bool,
    ) -> (Vec<(usize, Arc<Session>)>, Vec<(usize, SshError)>) {
        let mut pool = self.sessions.lock().await;
        timeline::mark("-", "sessions", &which.len().to_string());
        // A kept session is used as it is, not probed (a probe cost a round trip per host
        // per step); one the host was seen to close (restarted sshd, idle timeout) logs in
        // again here, paced with the new handshakes, so that a host gone since the last
        // step is found before anything runs. One that broke unseen is replaced when its
        // channel does not open (`Session::channel`).
        enum Todo {
            New(usize),
            Closed(usize, Arc<Session>),
        }
        let todo: Vec<Todo> = which
            .iter()
            .filter_map(|&i| match pool.get(&i) {
                None => Some(Todo::New(i)),
                Some(s) if s.is_closed() => Some(Todo::Closed(i, s.clone())),
                Some(_) => None,
            })
            .collect();
        // Unordered: one slow handshake does not hold back the start of the others.
        let futs: Vec<_> = todo
            .into_iter()
            .map(|t| async move {
                match t {
                    Todo::New(i) => (i, connect(&self.endpoints[i]).await.map(Arc::new)),
                    Todo::Closed(i, s) => (i, s.reconnect_if_closed().await.map(|()| s)),
                }
            })
            .collect();
        let mut connecting = futures_util::stream::iter(futs)
            .buffer_unordered(self.parallelism.min(self.connect_parallelism));
        let mut results: Vec<(usize, Result<Arc<Session>, SshError>)> = Vec::new();
        // Helper starts run beside the handshakes still in flight, not within their bound:
        // a handshake slot is not held by the session's own helper start.
        let mut warming = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                next = connecting.next() => match next {
                    Some(r) => {
                        if warm && let (_, Ok(s)) = &r {
                            let s = s.clone();
                            warming.push(async move { s.warm_helper().await });
                        }
                        results.push(r);
                    }
                    None => break,
                },
                Some(()) = warming.next(), if !warming.is_empty() => {}
            }
        }
        while warming.next().await.is_some() {}
        results.sort_by_key(|(i, _)| *i);
        timeline::mark("-", "sessions-done", &results.len().to_string());
        let mut problems = Vec::new();
        for (i, r) in results {
            match r {
                Ok(s) => {
                    pool.insert(i, s);
                }
                Err(e) => {
                    pool.remove(&i);
                    problems.push((i, e));
                }
            }
        }
        let sessions = which
            .iter()
            .filter_map(|i| pool.get(i).map(|s| (*i, s.clone())))
            .collect();
        (sessions, problems)
    }

    /// Sessions for a step: a refused host key stops it before any host runs anything;
    /// hosts that cannot be reached count against the failure budget (reported failed
    /// and left out of later steps — in memory only, nothing can be marked on them) and
    /// the step goes on without them while the budget holds, else nothing runs.
    pub(crate) async fn connect_within_budget(
        &self,
        ctx: &StepContext,
        which: &[usize],
    ) -> Result<(Vec<(usize, Arc<Session>)>, Vec<String>), TargetError> {
        let (sessions, problems) = self.connect_each(which).await;
        if problems.is_empty() {
            return Ok((sessions, Vec::new()));
        }
        let refused = problems
            .iter()
            .any(|(_, e)| matches!(e, SshError::HostKey(_)));
        let failed = self.failed_count() + problems.len();
        if refused || failed > self.max_failures {
            let mut message = format!(
                "nothing was run on any host: {}",
                problems
                    .iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if !refused && self.max_failures > 0 {
                message.push_str(&format!(
                    "; {failed} hosts failed in this run, more than the failure budget of {}",
                    self.max_failures
                ));
            }
            return Err(TargetError::Io(message));
        }
        let mut unreachable = Vec::new();
        for (i, e) in problems {
            self.exclude(i);
            let outcome = HostOutcome::Failed(format!("unreachable: {e}"), StepOutput::default());
            self.report(
                ctx,
                &self.endpoints[i].host,
                "apply",
                Some(i / self.batch + 1),
                &outcome,
            );
            unreachable.push(format!("{}: unreachable: {e}", self.endpoints[i].label()));
        }
        Ok((sessions, unreachable))
    }

    /// The exec step an action runs on every host: its own, or for a `deploy` step the
    /// supervisor's deploy command with its rollback as undo (`crate::ssh_service`).
    fn step<'a>(
        &self,
        ctx: &StepContext,
        action: &'a StepAction,
    ) -> Result<Cow<'a, ExecStep>, TargetError> {
        match action {
            StepAction::Exec(s) => Ok(Cow::Borrowed(s)),
            StepAction::Deploy { version, replicas } => {
                let (service, svc) = self.service_of(ctx)?;
                Ok(Cow::Owned(ssh_service::exec_step(
                    service, svc, version, *replicas,
                )))
            }
            other => Err(TargetError::Unsupported {
                target: "ssh",
                action: action_kind(other),
            }),
        }
    }

    /// Run `work` on a host of a `deploy` step's service with the host out of its load
    /// balancer (drained first, back in service after, whatever the outcome: the host then
    /// runs the new version or the one put back); without one just `work`. The drain
    /// is reported as the host's progress.
    async fn drained(
        &self,
        s: &Session,
        ctx: &StepContext,
        what: &str,
        work: impl std::future::Future<Output = HostOutcome>,
    ) -> HostOutcome {
        let router = self
            .service_of(ctx)
            .ok()
            .and_then(|(_, svc)| svc.drain.clone());
        let Some(router) = router else {
            return work.await;
        };
        let server = s.endpoint().host.name.clone();
        let drained = match router.drain(&server).await {
            Ok(d) => d,
            Err(m) => return HostOutcome::Failed(m, StepOutput::default()),
        };
        let outcome = work.await;
        let back = router.restore(&server).await;
        let note = format!(
            "[slipway] {what}: {drained}; {}\n",
            match &back {
                Ok(()) => format!("{} back in service", router.server(&server)),
                Err(m) => format!("could not put it back in service: {m}"),
            }
        );
        match (outcome, back) {
            (HostOutcome::Ran(mut o), Ok(())) => {
                o.stderr.push_str(&note);
                HostOutcome::Ran(o)
            }
            (HostOutcome::Ran(o), Err(m)) => HostOutcome::Failed(m, o),
            (HostOutcome::Failed(m, mut o), _) => {
                o.stderr.push_str(&note);
                HostOutcome::Failed(m, o)
            }
            (other, _) => other,
        }
    }

    /// The `run:` service of a deploy step (`service/deploy`).
    fn service_of<'s>(
        &'s self,
        ctx: &StepContext,
    ) -> Result<(&'s str, &'s SshService), TargetError> {
        let name = ctx.step_id.split('/').next().unwrap_or(&ctx.step_id);
        self.services
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| {
                TargetError::Io(format!(
                    "step `{}` deploys service `{name}`, which has no `run:` in the plan",
                    ctx.step_id
                ))
            })
    }

    /// Put a version's directory (launch record, probe, port, config) and the supervisor
    /// on a host before its deploy step runs there; bytes go over standard input. The
    /// directory is written under a temporary name and renamed in whole.
    async fn upload_version(
        &self,
        s: &Session,
        ctx: &StepContext,
        version: &str,
        replicas: u32,
    ) -> Result<(), (String, StepOutput)> {
        let (service, svc) = self
            .service_of(ctx)
            .map_err(|e| (e.to_string(), StepOutput::default()))?;
        let host = &s.endpoint().host;
        let port = *host.ports.get(service).ok_or_else(|| {
            (
                format!(
                    "host `{}` has no port for service `{service}`; fix: add `ports: {{ {service}: PORT }}` to the inventory",
                    host.name
                ),
                StepOutput::default(),
            )
        })?;
        let config = self
            .config_root
            .as_ref()
            .map(|r| crate::config::version_dir(r, service, version));
        let files = ssh_service::version_files(
            host,
            service,
            svc,
            version,
            replicas,
            port,
            config.as_deref(),
        )
        .map_err(|m| (m, StepOutput::default()))?;
        let base = ssh_service::base_dir(host, service);
        let stage = format!("{base}/versions/{}", sh_quote(&format!(".{version}.new")));
        let old = format!("{base}/versions/{}", sh_quote(&format!(".{version}.old")));
        let dest = format!("{base}/versions/{}", sh_quote(version));
        let t = Duration::from_secs(30);
        let run = |line: String, input: Option<Vec<u8>>| async move {
            let line = Self::in_workdir(host, &format!("umask 077 && {line}"));
            match s
                .run_with_input(
                    &line,
                    &self.env(ctx, host),
                    t,
                    self.keep(),
                    input.as_deref(),
                )
                .await
            {
                Ok((o, false)) if o.exit_code == Some(0) => Ok(()),
                Ok((o, _)) => Err((
                    format!(
                        "delivering {service} {version} to {} failed (exit {:?})",
                        s.endpoint().label(),
                        o.exit_code
                    ),
                    self.redact(o),
                )),
                Err(e) => Err((self.redactor.redact(&e.to_string()), StepOutput::default())),
            }
        };
        run(format!("rm -rf {stage} && mkdir -p {stage}"), None).await?;
        for (rel, bytes, mode) in files {
            let rel = rel.to_string_lossy().into_owned();
            let path = format!("{stage}/{}", sh_quote(&rel));
            run(
                format!("mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode:o} {path}"),
                Some(bytes),
            )
            .await?;
        }
        let helper = format!("{base}/{}", ssh_service::HELPER);
        run(
            format!(
                "cat > {helper}.tmp && mv -f {helper}.tmp {helper} && rm -rf {old} && if [ -d {dest} ]; then mv {dest} {old}; fi && mv {stage} {dest} && rm -rf {old}"
            ),
            Some(ssh_service::helper_script().into_bytes()),
        )
        .await
    }

    pub(crate) fn timeout(&self, step: &ExecStep) -> Result<Duration, TargetError> {
        match &step.timeout {
            None => Ok(self.default_timeout),
            Some(t) => t.get().map_err(|e| {
                TargetError::Io(format!("read timeout `{t}` of step `{}`: {e}", step.name))
            }),
        }
    }

    fn env(&self, ctx: &StepContext, host: &Host) -> Vec<(String, String)> {
        let mut env = vec![
            ("SLIPWAY_RUN_ID".to_owned(), ctx.run_id.clone()),
            ("SLIPWAY_STEP".to_owned(), ctx.step_id.clone()),
            ("SLIPWAY_STEP_KEY".to_owned(), ctx.key.clone()),
            ("SLIPWAY_ATTEMPT".to_owned(), ctx.attempt.to_string()),
            ("SLIPWAY_HOST".to_owned(), host.name.clone()),
        ];
        // Where the host keeps its state, for the supervised services' commands.
        if let Some(d) = &host.state_dir {
            env.push(("SLIPWAY_STATE_DIR".to_owned(), d.clone()));
        }
        env.extend(host.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// What [`Session::run`] keeps of each stream: the limit and, past it, the longest
    /// secret, so [`Self::redact`] sees any secret straddling the limit whole.
    fn keep(&self) -> usize {
        OUTPUT_LIMIT + self.redactor.tail_margin()
    }

    /// Redact, then cut to [`OUTPUT_LIMIT`] (never the other way round).
    fn redact(&self, o: StepOutput) -> StepOutput {
        let (stdout, ot) = self
            .redactor
            .redact_tail(&o.stdout, o.truncated, OUTPUT_LIMIT);
        let (stderr, et) = self
            .redactor
            .redact_tail(&o.stderr, o.truncated, OUTPUT_LIMIT);
        StepOutput {
            stdout,
            stderr,
            truncated: ot || et,
            ..o
        }
    }

    /// `cd` into the host's workdir, then `script`.
    fn in_workdir(host: &Host, script: &str) -> String {
        match &host.workdir {
            Some(w) => format!("cd {} && {script}", sh_quote(w)),
            None => script.to_owned(),
        }
    }

    fn marker_dir(host: &Host, ctx: &StepContext) -> String {
        let base = match &host.state_dir {
            Some(d) => sh_quote(d),
            None => "\"$HOME\"/.slipway".to_owned(),
        };
        format!("{base}/markers/{}", sh_quote(&ctx.run_id))
    }

    fn marker(host: &Host, ctx: &StepContext) -> String {
        format!("{}/{}", Self::marker_dir(host, ctx), sh_quote(&ctx.key))
    }

    /// Run `script` on a host, redacted; a time-out is a failure.
    pub(crate) async fn run_on(
        &self,
        s: &Session,
        ctx: &StepContext,
        script: &str,
        timeout: Duration,
    ) -> Result<StepOutput, (String, StepOutput)> {
        let host = &s.endpoint().host;
        // The host kills the attempt at `timeout`; the extra 10 s here only bounds a
        // host that stops answering.
        let secs = timeout.as_secs().max(1);
        let line = Self::in_workdir(
            host,
            &format!("timeout -k 5 {secs} sh -c {}", sh_quote(script)),
        );
        match s
            .run(
                &line,
                &self.env(ctx, host),
                timeout + Duration::from_secs(10),
                self.keep(),
            )
            .await
        {
            Ok((o, false)) => Ok(self.redact(o)),
            Ok((o, true)) => Err((
                format!(
                    "timed out after {} on {}",
                    format_duration(timeout),
                    s.endpoint().label()
                ),
                self.redact(o),
            )),
            Err(e) => Err((self.redactor.redact(&e.to_string()), StepOutput::default())),
        }
    }

    /// One attempt of the step on one host, through the host's step helper ([`helper`])
    /// or, where it cannot run or is busy, the wrapper ([`step_script`]): the same guard,
    /// answers and outcome either way; which one ran it comes back with the outcome.
    async fn apply_host(
        &self,
        s: &Session,
        ctx: &StepContext,
        step: &ExecStep,
    ) -> (HostOutcome, Via) {
        let t = match self.timeout(step) {
            Ok(t) => t,
            Err(e) => {
                return (
                    HostOutcome::Failed(e.to_string(), StepOutput::default()),
                    Via::Nothing,
                );
            }
        };
        let host = &s.endpoint().host;
        let secs = t.as_secs().max(1);
        let env = self.env(ctx, host);
        // The host bounds each wait of the attempt (the lock, `unless`, the command) by
        // the step's timeout (killed 5 s after it); this bound only covers a host that
        // stops answering.
        let waits: u32 = if step.unless.is_some() { 3 } else { 2 };
        let bound = (t + Duration::from_secs(5)) * waits + Duration::from_secs(10);
        let req = helper::StepRequest {
            secs,
            keep: self.keep(),
            state_dir: host.state_dir.as_deref(),
            run_id: &ctx.run_id,
            key: &ctx.key,
            creates: step.creates.as_deref(),
            unless: step.unless.as_deref(),
            run: &step.run,
            env: &env,
        };
        let (ran, via) = match s.run_step(&req, bound).await {
            helper::StepRun::Ran(r) => (r, Via::Helper),
            helper::StepRun::Wrapper(why) => {
                let script = step_script(
                    &Self::marker_dir(host, ctx),
                    &Self::marker(host, ctx),
                    step,
                    secs,
                    self.keep(),
                );
                let line = Self::in_workdir(host, &script);
                timeline::mark(&host.name, "wrapper", &ctx.step_id);
                let ran = s.run(&line, &env, bound, self.keep()).await;
                timeline::mark(&host.name, "wrapper-done", &ctx.step_id);
                (ran, Via::Wrapper(why))
            }
        };
        (self.outcome(s, step, t, ran), via)
    }

    /// What an attempt's answer means (the helper's and the wrapper's are alike).
    fn outcome(
        &self,
        s: &Session,
        step: &ExecStep,
        t: Duration,
        ran: Result<(StepOutput, bool), SshError>,
    ) -> HostOutcome {
        let ran = match ran {
            Ok((o, false)) => Ok(self.redact(o)),
            Ok((o, true)) => Err((
                format!("{} stopped answering", s.endpoint().label()),
                self.redact(o),
            )),
            Err(e) => Err((self.redactor.redact(&e.to_string()), StepOutput::default())),
        };
        match ran {
            Err((m, o)) => HostOutcome::Failed(m, o),
            Ok(o) if o.exit_code == Some(124) => HostOutcome::Failed(
                format!(
                    "`{}` timed out after {} (exit 124: killed on the host at its timeout)",
                    step.run,
                    format_duration(t)
                ),
                o,
            ),
            Ok(o) if o.exit_code == Some(0) && o.stderr.trim_end() == EXCLUDED_SENTINEL => {
                HostOutcome::Excluded
            }
            Ok(o) if o.exit_code == Some(0) && o.stderr.trim_end() == MARKER_SENTINEL => {
                HostOutcome::AlreadyDone("completion marker of an earlier attempt".into())
            }
            Ok(o) if o.exit_code == Some(0) && o.stderr.trim_end() == CREATES_SENTINEL => {
                HostOutcome::AlreadyDone(format!(
                    "creates: {} exists",
                    step.creates.as_deref().unwrap_or_default()
                ))
            }
            Ok(o) if o.exit_code == Some(0) && o.stderr.trim_end() == UNLESS_SENTINEL => {
                HostOutcome::AlreadyDone(format!(
                    "unless: `{}` exited 0",
                    step.unless.as_deref().unwrap_or_default()
                ))
            }
            Ok(o) if o.exit_code == Some(75) && o.stderr.trim_end() == ATTEMPT_SENTINEL => {
                HostOutcome::Failed(
                    format!(
                        "`{}` was sent to {} twice (its first send got no answer in time) and the first send had started it: it was not started again, and whether it took effect there is not known (the step's lock and marker settle it: `slipway resume` observes them)",
                        step.run,
                        s.endpoint().label(),
                    ),
                    o,
                )
            }
            Ok(o) if o.exit_code == Some(75) && o.stderr.trim_end() == LOCK_SENTINEL => {
                HostOutcome::Failed(
                    format!(
                        "an earlier attempt of `{}` still held its lock on {} after {}: it was not started again; fix: wait for that attempt (`slipway resume` observes it) or raise the step's `timeout`",
                        step.run,
                        s.endpoint().label(),
                        format_duration(t)
                    ),
                    o,
                )
            }
            Ok(o) if o.exit_code == Some(0) => HostOutcome::Ran(o),
            Ok(o) => HostOutcome::Failed(
                match o.exit_code {
                    Some(c) => format!("`{}` exited with status {c}", step.run),
                    None => format!("`{}` ended without an exit status", step.run),
                },
                o,
            ),
        }
    }

    /// Undo on one host when its marker is there; `Ok(None)` when there was nothing.
    ///
    /// As an apply: under the step's lock (so never beside an attempt of the step, nor
    /// beside the undo of a dead slipway, which is waited for), in a session of its own
    /// with its output in files, so slipway dying neither hangs it up nor kills it by a
    /// closed pipe; removing the marker is its completion record, so an interrupted undo
    /// that finished is not run again.
    async fn undo_host(
        &self,
        s: &Session,
        ctx: &StepContext,
        cmd: &str,
        t: Duration,
    ) -> Result<Option<StepOutput>, (String, StepOutput)> {
        let host = &s.endpoint().host;
        let script = undo_script(
            &Self::marker_dir(host, ctx),
            &Self::marker(host, ctx),
            cmd,
            t.as_secs().max(1),
            self.keep(),
        );
        let line = Self::in_workdir(host, &script);
        // The host bounds the lock wait and the undo by `t` each (`timeout -k 5`); this
        // bound only covers a host that stops answering.
        let bound = (t + Duration::from_secs(5)) * 2 + Duration::from_secs(10);
        let o = match s.run(&line, &self.env(ctx, host), bound, self.keep()).await {
            Ok((o, false)) => self.redact(o),
            Ok((o, true)) => {
                return Err((
                    format!("{} stopped answering", s.endpoint().label()),
                    self.redact(o),
                ));
            }
            Err(e) => return Err((self.redactor.redact(&e.to_string()), StepOutput::default())),
        };
        match o.exit_code {
            Some(0) if o.stderr.trim_end() == NO_MARKER_SENTINEL => Ok(None),
            Some(0) => Ok(Some(o)),
            Some(75) if o.stderr.trim_end() == LOCK_SENTINEL => Err((
                format!(
                    "an earlier attempt or undo of this step still held its lock on {} after {}: the undo was not started; fix: wait for it (`slipway resume` observes it) or raise the step's `timeout`",
                    s.endpoint().label(),
                    format_duration(t)
                ),
                o,
            )),
            Some(124) => Err((
                format!(
                    "undo `{cmd}` timed out after {} (exit 124 from `timeout` on the host, which killed it)",
                    format_duration(t)
                ),
                o,
            )),
            c => Err((format!("undo `{cmd}` exited with {c:?}"), o)),
        }
    }

    /// Whether the step's undo is complete on this host: no completion marker left once
    /// no attempt or undo holds the step's lock. `Ok(true)` when none is left.
    async fn undo_observed_host(
        &self,
        s: &Session,
        ctx: &StepContext,
        t: Duration,
    ) -> Result<bool, String> {
        let marker = Self::marker(&s.endpoint().host, ctx);
        let script = format!(
            "if [ -e {marker}.lock ]; then flock {marker}.lock true; fi; if [ -e {marker} ]; then exit 1; fi"
        );
        match self.run_on(s, ctx, &script, t).await {
            Ok(o) if o.exit_code == Some(0) => Ok(true),
            Ok(o) if o.exit_code == Some(1) => Ok(false),
            Ok(o) => Err(format!(
                "{}: looking for the completion marker exited with {:?}: {}",
                s.endpoint().label(),
                o.exit_code,
                o.stderr.trim()
            )),
            Err((m, _)) => Err(m),
        }
    }

    /// Whether the step is done on this host: its marker (after waiting for an attempt
    /// still holding the lock), else a guard; one channel and one shell
    /// ([`observe_script`]). `Ok(None)` when it is not.
    async fn observe_host(
        &self,
        s: &Session,
        ctx: &StepContext,
        step: &ExecStep,
        t: Duration,
    ) -> Result<Option<String>, String> {
        let host = &s.endpoint().host;
        let secs = t.as_secs().max(1);
        // An attempt holds the lock through its `unless` and its command (each killed by
        // the host 5 s past the timeout) and then writes its marker.
        let wait = (secs + 5) * 2 + 5;
        let script = observe_script(
            &Self::marker_dir(host, ctx),
            &Self::marker(host, ctx),
            step,
            secs,
            wait,
        );
        let line = Self::in_workdir(host, &script);
        let guard_wait = if step.unless.is_some() { secs + 5 } else { 0 };
        let bound = Duration::from_secs(wait + guard_wait + 10);
        let o = match s.run(&line, &self.env(ctx, host), bound, self.keep()).await {
            Ok((o, false)) => self.redact(o),
            Ok((_, true)) => return Err(format!("{} stopped answering", s.endpoint().label())),
            Err(e) => return Err(self.redactor.redact(&e.to_string())),
        };
        match o.exit_code {
            Some(OBSERVED_MARKER) => Ok(Some("completion marker".into())),
            Some(OBSERVED_EXCLUDED) => Ok(Some(
                "left out: failed an earlier step of this run within the failure budget".into(),
            )),
            Some(OBSERVED_CREATES) => Ok(Some(format!(
                "creates: {} exists",
                step.creates.as_deref().unwrap_or_default()
            ))),
            Some(OBSERVED_UNLESS) => Ok(Some(format!(
                "unless: `{}` exited 0",
                step.unless.as_deref().unwrap_or_default()
            ))),
            Some(OBSERVED_NOT_DONE) => Ok(None),
            Some(75) if o.stderr.trim_end() == LOCK_SENTINEL => Err(format!(
                "{}: an attempt of `{}` still held its lock after {wait} s, so whether it completed is not known yet; fix: `slipway resume` once it ended",
                s.endpoint().label(),
                step.run
            )),
            c => Err(format!(
                "{}: looking for the completion marker and the guards exited with {c:?}: {}",
                s.endpoint().label(),
                o.stderr.trim()
            )),
        }
    }

    /// [`Target::apply`]: the step on every host of the group (waves, budget, undo).
    async fn apply_all(
        &self,
        ctx: &StepContext,
        action: &StepAction,
    ) -> Result<Applied, TargetError> {
        let step = self.step(ctx, action)?;
        let step: &ExecStep = &step;
        // A `deploy` with a canary behind a load balancer: the fleet canary (crate::fleet),
        // unless there is nothing to compare with yet.
        if matches!(action, StepAction::Deploy { .. })
            && let Ok((service, svc)) = self.service_of(ctx)
            && let (Some(spec), Some(router)) = (&svc.canary, &svc.drain)
            && let Some(r) =
                crate::fleet::apply(self, ctx, action, step, service, spec, &**router, |h| {
                    h.ports.get(service).copied()
                })
                .await
        {
            return r;
        }
        let excluded = self.excluded_set();
        let live: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !excluded.contains(i))
            .collect();
        let (connected, unreachable) = self.connect_within_budget(ctx, &live).await?;
        // Waves one after another; within one, at most `parallelism` hosts at once.
        let mut results: Vec<(usize, Arc<Session>, HostOutcome)> = Vec::new();
        let mut left_out = Vec::new();
        for (w, wave) in connected
            .chunk_by(|(a, _), (b, _)| a / self.batch == b / self.batch)
            .enumerate()
        {
            let wave_no = wave.first().map_or(w, |(i, _)| i / self.batch) + 1;
            let futs: Vec<_> = wave
                .iter()
                .map(|(i, s)| self.apply_guarded(*i, s, ctx, step, action, wave_no))
                .collect();
            let outcomes: Vec<HostOutcome> = futures_util::stream::iter(futs)
                .buffered(self.parallelism)
                .collect()
                .await;
            for ((i, s), o) in wave.iter().zip(outcomes) {
                results.push((*i, s.clone(), o));
            }
        }
        for i in &excluded {
            left_out.push(self.endpoints[*i].host.name.clone());
        }
        let sessions: Vec<Arc<Session>> = results.iter().map(|(_, s, _)| s.clone()).collect();
        let outcomes: Vec<HostOutcome> = results.iter().map(|(_, _, o)| o.clone()).collect();
        if !self.over_budget() {
            let t = self.timeout(step)?;
            let mut parts = Vec::new();
            let mut guards = Vec::new();
            let mut failed_here = unreachable.clone();
            for (i, s, o) in &results {
                let name = s.endpoint().host.name.clone();
                match o {
                    HostOutcome::Ran(out) => parts.push((name, out.clone())),
                    HostOutcome::AlreadyDone(g) => guards.push(format!("{name}: {g}")),
                    HostOutcome::Failed(m, out) => {
                        self.exclude_host(*i, s, ctx, t).await;
                        failed_here.push(format!("{}: {m}", s.endpoint().label()));
                        parts.push((name, out.clone()));
                    }
                    HostOutcome::Excluded => {
                        self.exclude(*i);
                        left_out.push(name);
                    }
                    HostOutcome::Skipped => {}
                }
            }
            if parts.is_empty() && failed_here.is_empty() {
                let mut guard = format!("already done on every host ({})", guards.join("; "));
                if !left_out.is_empty() {
                    guard.push_str(&format!(
                        "; left out (failed an earlier step within the failure budget): {}",
                        left_out.join(", ")
                    ));
                }
                return Ok(Applied::AlreadyDone { guard });
            }
            let mut output = combine(&parts);
            if !failed_here.is_empty() {
                // Within the budget: the step succeeded on the other hosts.
                output.exit_code = Some(0);
                output.stderr.push_str(&self.redactor.redact(&format!(
                    "[slipway] failed within the failure budget ({} of {} hosts may fail; {} failed in this run), left out of the later steps: {}\n",
                    self.max_failures,
                    self.endpoints.len(),
                    self.failed_count(),
                    failed_here.join("; ")
                )));
            }
            if !left_out.is_empty() {
                output.stderr.push_str(&format!(
                    "[slipway] left out (failed an earlier step within the failure budget): {}\n",
                    left_out.join(", ")
                ));
            }
            return Ok(Applied::Ran { output });
        }
        // Over the budget: undo where this step completed, then fail the step.
        let mut failures = unreachable.clone();
        let mut parts = Vec::new();
        let mut completed = Vec::new();
        let mut skipped = Vec::new();
        for (s, o) in sessions.iter().zip(&outcomes) {
            let name = s.endpoint().host.name.clone();
            match o {
                HostOutcome::Failed(m, out) => {
                    failures.push(format!("{}: {m}", s.endpoint().label()));
                    parts.push((name, out.clone()));
                }
                HostOutcome::Ran(out) => {
                    completed.push(s);
                    parts.push((name, out.clone()));
                }
                HostOutcome::AlreadyDone(g) if g.starts_with("completion marker") => {
                    completed.push(s);
                }
                HostOutcome::Skipped => skipped.push(name),
                HostOutcome::AlreadyDone(_) | HostOutcome::Excluded => {}
            }
        }
        let mut undone = Vec::new();
        if let Some(cmd) = &step.undo {
            let t = self.timeout(step)?;
            for s in &completed {
                let name = s.endpoint().host.name.clone();
                let r = self.undo_one(s, ctx, action, cmd, t).await;
                let outcome = match &r {
                    Ok(o) => HostOutcome::Ran(o.clone().unwrap_or_default()),
                    Err((m, o)) => HostOutcome::Failed(m.clone(), o.clone()),
                };
                self.report(ctx, &s.endpoint().host, "undo", None, &outcome);
                match r {
                    Ok(_) => undone.push(name),
                    Err((m, _)) => failures.push(format!("undo on {name} failed: {m}")),
                }
            }
        } else if !completed.is_empty() {
            failures.push(format!(
                "the step has no undo, so it stays applied on: {}",
                completed
                    .iter()
                    .map(|s| s.endpoint().host.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut message = failures.join("; ");
        if self.max_failures > 0 || !excluded.is_empty() {
            message.push_str(&format!(
                "; {} hosts failed in this run, more than the failure budget of {}",
                self.failed_count(),
                self.max_failures
            ));
        }
        if !undone.is_empty() {
            message.push_str(&format!(
                "; undone on the hosts where it had completed: {}",
                undone.join(", ")
            ));
        }
        if !skipped.is_empty() {
            message.push_str(&format!("; not started on: {}", skipped.join(", ")));
        }
        Err(TargetError::Failed {
            message: self.redactor.redact(&message),
            output: combine(&parts),
        })
    }

    /// [`Self::apply_host`] on host `i` unless the failure budget is used up already (by
    /// any step of the run); a failure (or a host found marked as failed by an earlier
    /// attempt) counts against it at once. Reported.
    pub(crate) async fn apply_guarded(
        &self,
        i: usize,
        s: &Session,
        ctx: &StepContext,
        step: &ExecStep,
        action: &StepAction,
        wave: usize,
    ) -> HostOutcome {
        let mut via = Via::Nothing;
        let o = if self.over_budget() {
            HostOutcome::Skipped
        } else if let StepAction::Deploy { version, replicas } = action {
            match self.upload_version(s, ctx, version, *replicas).await {
                Err((m, out)) => HostOutcome::Failed(m, out),
                Ok(()) => {
                    let work = async {
                        let (o, v) = self.apply_host(s, ctx, step).await;
                        via = v;
                        o
                    };
                    self.drained(s, ctx, "deploy", work).await
                }
            }
        } else {
            let (o, v) = self.apply_host(s, ctx, step).await;
            via = v;
            o
        };
        if matches!(o, HostOutcome::Failed(..) | HostOutcome::Excluded) {
            self.exclude(i);
        }
        self.report_via(ctx, &s.endpoint().host, "apply", Some(wave), &o, &via);
        o
    }

    /// Leave a host that failed within the budget out of the later steps: remembered
    /// here, and marked on the host for a resumed run. The mark is best effort (the host
    /// may be the reason it failed); reported either way.
    pub(crate) async fn exclude_host(&self, i: usize, s: &Session, ctx: &StepContext, t: Duration) {
        self.exclude(i);
        let dir = Self::marker_dir(&s.endpoint().host, ctx);
        let script = format!(
            "mkdir -p {dir} && echo {} > {dir}/{EXCLUDED_MARKER}",
            sh_quote(&ctx.step_id)
        );
        let marked = match self.run_on(s, ctx, &script, t).await {
            Ok(o) if o.exit_code == Some(0) => "marked on the host".to_owned(),
            Ok(o) => format!("could not be marked on the host (exit {:?})", o.exit_code),
            Err((m, _)) => format!("could not be marked on the host: {m}"),
        };
        ctx.report(serde_json::json!({
            "event": "ssh_host",
            "phase": "exclude",
            "host": s.endpoint().host.name,
            "result": "excluded",
            "detail": format!("failed within the failure budget; left out of the later steps of the run ({marked})"),
        }));
    }

    /// [`Self::undo_host`], reported.
    async fn undo_reported(
        &self,
        s: &Session,
        ctx: &StepContext,
        action: &StepAction,
        cmd: &str,
        t: Duration,
    ) -> (String, Result<Option<StepOutput>, (String, StepOutput)>) {
        let r = self.undo_one(s, ctx, action, cmd, t).await;
        let outcome = match &r {
            Ok(Some(o)) => HostOutcome::Ran(o.clone()),
            Ok(None) => {
                HostOutcome::AlreadyDone("no completion marker: nothing of this run to undo".into())
            }
            Err((m, o)) => HostOutcome::Failed(m.clone(), o.clone()),
        };
        self.report(ctx, &s.endpoint().host, "undo", None, &outcome);
        (s.endpoint().host.name.clone(), r)
    }

    /// [`Self::undo_host`], with the host out of its HAProxy backend meanwhile when the
    /// step deploys instances there.
    pub(crate) async fn undo_one(
        &self,
        s: &Session,
        ctx: &StepContext,
        action: &StepAction,
        cmd: &str,
        t: Duration,
    ) -> Result<Option<StepOutput>, (String, StepOutput)> {
        if !matches!(action, StepAction::Deploy { .. }) {
            return self.undo_host(s, ctx, cmd, t).await;
        }
        let work = async {
            match self.undo_host(s, ctx, cmd, t).await {
                Ok(Some(o)) => HostOutcome::Ran(o),
                Ok(None) => HostOutcome::Skipped,
                Err((m, o)) => HostOutcome::Failed(m, o),
            }
        };
        match self.drained(s, ctx, "rollback", work).await {
            HostOutcome::Ran(o) => Ok(Some(o)),
            HostOutcome::Failed(m, o) => Err((m, o)),
            _ => Ok(None),
        }
    }

    pub(crate) fn report(
        &self,
        ctx: &StepContext,
        host: &Host,
        what: &str,
        wave: Option<usize>,
        outcome: &HostOutcome,
    ) {
        self.report_via(ctx, host, what, wave, outcome, &Via::Nothing);
    }

    /// [`Self::report`], saying how the host ran the step (`via`: `helper` or `wrapper`,
    /// and for the wrapper `via_why`).
    fn report_via(
        &self,
        ctx: &StepContext,
        host: &Host,
        what: &str,
        wave: Option<usize>,
        outcome: &HostOutcome,
        via: &Via,
    ) {
        let (result, detail, out) = match outcome {
            HostOutcome::Ran(o) => ("ran", None, Some(o)),
            HostOutcome::AlreadyDone(g) => ("already_done", Some(g.clone()), None),
            HostOutcome::Failed(m, o) => ("failed", Some(m.clone()), Some(o)),
            HostOutcome::Skipped => (
                "skipped",
                Some(format!(
                    "not started: more hosts failed than the failure budget allows ({})",
                    self.max_failures
                )),
                None,
            ),
            HostOutcome::Excluded => (
                "excluded",
                Some(
                    "left out: failed an earlier step of this run within the failure budget"
                        .to_owned(),
                ),
                None,
            ),
        };
        let mut v = serde_json::json!({
            "event": "ssh_host",
            "phase": what,
            "wave": wave,
            "host": host.name,
            "address": format!("{}:{}", host.address, host.port),
            "result": result,
            "detail": detail,
            "exit_code": out.and_then(|o| o.exit_code),
            "stdout": out.map(|o| o.stdout.clone()),
            "stderr": out.map(|o| o.stderr.clone()),
        });
        match via {
            Via::Nothing => {}
            Via::Helper => v["via"] = "helper".into(),
            Via::Wrapper(why) => {
                v["via"] = "wrapper".into();
                v["via_why"] = why.clone().into();
            }
        }
        ctx.report(v);
    }
}

/// One output of many hosts: each host's section, in host order.
fn combine(parts: &[(String, StepOutput)]) -> StepOutput {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut exit_code = Some(0);
    let mut truncated = false;
    for (host, o) in parts {
        if !o.stdout.is_empty() {
            stdout.push_str(&format!("[{host}] {}\n", o.stdout.trim_end()));
        }
        if !o.stderr.is_empty() {
            stderr.push_str(&format!("[{host}] {}\n", o.stderr.trim_end()));
        }
        if o.exit_code != Some(0) {
            exit_code = o.exit_code;
        }
        truncated |= o.truncated;
    }
    StepOutput {
        exit_code,
        stdout,
        stderr,
        truncated,
    }
}

impl Target for SshTarget {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.close_all())
    }

    fn retract<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<String>, TargetError>> {
        Box::pin(async move {
            // A fleet canary paused or interrupted mid-way takes traffic on its hosts:
            // an abort or rollback with nobody driving takes it back (crate::fleet).
            if matches!(action, StepAction::Deploy { .. })
                && let Ok((service, svc)) = self.service_of(ctx)
                && let (Some(spec), Some(router)) = (&svc.canary, &svc.drain)
            {
                let step = self.step(ctx, action)?;
                if let Some(r) =
                    crate::fleet::retract(self, ctx, action, &step, service, spec, &**router, |h| {
                        h.ports.get(service).copied()
                    })
                    .await
                {
                    return r;
                }
            }
            Ok(None)
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            timeline::mark("-", "apply", &ctx.step_id);
            let r = self.apply_all(ctx, action).await;
            timeline::mark("-", "applied", &ctx.step_id);
            r
        })
    }

    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            let step = self.step(ctx, action)?;
            let step: &ExecStep = &step;
            let t = self.timeout(step)?;
            // Hosts left out after failing within the budget are not waited for; once
            // the budget is exceeded the run is failing, and every host is looked at.
            let excluded = if self.over_budget() {
                BTreeSet::new()
            } else {
                self.excluded_set()
            };
            let live: Vec<usize> = (0..self.endpoints.len())
                .filter(|i| !excluded.contains(i))
                .collect();
            let sessions: Vec<Arc<Session>> = self
                .connect_some(&live)
                .await?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            let futs: Vec<_> = sessions
                .iter()
                .map(|s| self.observe_host(s, ctx, step, t))
                .collect();
            let seen: Vec<_> = futures_util::stream::iter(futs)
                .buffered(self.parallelism)
                .collect()
                .await;
            let mut done = Vec::new();
            let mut not_done = Vec::new();
            let mut errors = Vec::new();
            for (s, r) in sessions.iter().zip(seen) {
                let name = s.endpoint().host.name.clone();
                match r {
                    Ok(Some(evidence)) => done.push(format!("{name}: {evidence}")),
                    Ok(None) => not_done.push(name),
                    Err(m) => errors.push(m),
                }
            }
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            if let Some(m) = error {
                return Err(TargetError::Io(m));
            }
            if not_done.is_empty() {
                Ok(Observation::Done {
                    evidence: format!("done on every host ({})", done.join("; ")),
                })
            } else {
                Ok(Observation::NotDone {
                    evidence: format!(
                        "no completion marker and no guard showing it done on: {}",
                        not_done.join(", ")
                    ),
                })
            }
        })
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async move {
            let step = self.step(ctx, action)?;
            let step: &ExecStep = &step;
            let Some(cmd) = &step.undo else {
                return Ok(None);
            };
            let t = self.timeout(step)?;
            let sessions = self.connect_all().await?;
            let futs: Vec<_> = sessions
                .iter()
                .map(|s| self.undo_reported(s, ctx, action, cmd, t))
                .collect();
            let results: Vec<_> = futures_util::stream::iter(futs)
                .buffered(self.parallelism)
                .collect()
                .await;
            let mut parts = Vec::new();
            let mut failures = Vec::new();
            for (name, r) in results {
                match r {
                    Ok(Some(o)) => parts.push((name, o)),
                    Ok(None) => {}
                    Err((m, o)) => {
                        failures.push(format!("{name}: {m}"));
                        parts.push((name, o));
                    }
                }
            }
            if !failures.is_empty() {
                return Err(TargetError::Failed {
                    message: self.redactor.redact(&failures.join("; ")),
                    output: combine(&parts),
                });
            }
            Ok(Some(combine(&parts)))
        })
    }

    fn observe_undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            let step = self.step(ctx, action)?;
            let step: &ExecStep = &step;
            let t = self.timeout(step)?;
            // Every host, as `undo` goes to every host.
            let sessions = self.connect_all().await?;
            let futs: Vec<_> = sessions
                .iter()
                .map(|s| self.undo_observed_host(s, ctx, t))
                .collect();
            let seen: Vec<_> = futures_util::stream::iter(futs)
                .buffered(self.parallelism)
                .collect()
                .await;
            let mut left = Vec::new();
            let mut errors = Vec::new();
            for (s, r) in sessions.iter().zip(seen) {
                match r {
                    Ok(true) => {}
                    Ok(false) => left.push(s.endpoint().host.name.clone()),
                    Err(m) => errors.push(m),
                }
            }
            if !errors.is_empty() {
                return Err(TargetError::Io(self.redactor.redact(&errors.join("; "))));
            }
            Ok(if left.is_empty() {
                Observation::Done {
                    evidence: format!(
                        "no completion marker left on any of {} host(s): undone, or never applied there",
                        sessions.len()
                    ),
                }
            } else {
                Observation::NotDone {
                    evidence: format!(
                        "the completion marker is still there (not undone yet) on: {}",
                        left.join(", ")
                    ),
                }
            })
        })
    }
}
