//! Supervised `run:` services on ssh hosts: what a `deploy` step of an `ssh` plan puts on
//! each host, and the small supervisor that keeps its instances running there after
//! `slipway` and the SSH session are gone.
//!
//! # On the host
//!
//! Everything lives under `<state_dir>/services/<service>/` (`state_dir` defaults to
//! `~/.slipway`, as for markers):
//!
//! ```text
//! slipway-svc.sh            the supervisor and its commands (uploaded with every deploy)
//! versions/<version>/       one directory per version, 0700, written whole then renamed in:
//!   launch.sh               how this version is launched (command, environment, config dir)
//!   probe.sh                the readiness probe, run on the host (curl/wget, tcp, command)
//!   port replicas deadline  the first instance's port, how many instances, probe deadline
//!   config/                 the version's rendered config, files 0600
//! current                   the version the instances run
//! steps/<key>               what the deploy step with that idempotency key replaced
//! instances/<i>/            per instance: `supervisor` (pid, start time, version, port),
//!                           `child` (pid, start time, started at, restarts)
//! logs/<version>.<i>.log    each instance's output and every restart, kept per version
//! ```
//!
//! A version's directory is its launch record: a rollback starts the previous version
//! from its own `launch.sh` and config, as its own run wrote them, never the new
//! release's command with another version substituted (the rollback invariant). Secrets
//! (rendered config, `run.env`) go over the SSH channel's standard input, never on a
//! command line a host's `ps` shows.
//!
//! # Supervision
//!
//! Each instance is a `setsid` supervisor shell (`slipway-svc.sh supervise`) with its
//! standard streams on files: it does not belong to the SSH session or to `slipway`, so
//! neither ending touches it. It starts the instance in a process group of its own
//! (the instance is that group: when its first process exits, what it left behind is
//! killed before the restart, so nothing keeps the port), records pid and start time (`/proc/<pid>/stat` field 22, so a recycled pid is never
//! taken for it), and restarts it when it exits, after 1 s, doubling to at most 30 s
//! (back to 1 s after 30 s of running); each exit is logged in the instance's log.
//! Stopping sends SIGTERM to the supervisor (which passes it to the instance's group and
//! waits), then SIGKILL to both after a grace period.
//!
//! systemd units are not used even where the host has systemd: a unit needs root or a
//! lingering user session, which a deploy user usually lacks; the supervisor needs only
//! a POSIX shell, `setsid` and `/proc`.
//!
//! # Behind HAProxy
//!
//! With `router: { haproxy: { socket, backend } }` in an ssh environment, the backend has
//! one server per host, named as the host in the inventory (`server web1 10.0.0.11:8080`).
//! Before a host's instances are replaced (deploy or rollback) its server is set to
//! `drain` and its sessions are waited for (at most [`DRAIN_TIMEOUT`]); after, whatever
//! the outcome (the host then runs the new version, or the one put back), it is set
//! `ready` again. A rolling deploy in waves of `batch` hosts so never sends a request to
//! a host whose instances are being replaced — the rolling-update pattern of Ansible's
//! `serial:` with HAProxy drain tasks.
//!
//! # The deploy step
//!
//! The `deploy` step is run like any exec step of the ssh target (markers, locks, waves,
//! the failure budget, observe after a crash): its command is `slipway-svc.sh deploy`,
//! its undo `slipway-svc.sh rollback`. Deploying records the version it replaces (once per
//! step, so an attempt again after a crash keeps the first record), stops the instances,
//! starts the new version's and waits until every one passes the probe on the host. An
//! instance that exits before it is ready, or a probe still failing at the deadline,
//! fails the step on that host after restoring the version it replaced there, and the
//! step's output carries the tail of every instance's log. The undo restores the
//! recorded version the same way, unless a later release already replaced this one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::Balancer;
use slipway_model::spec::{ExecStep, Probe, RunSpec};

use crate::ssh::{Host, sh_quote};

/// File name of the supervisor script in a service's directory on the host.
pub const HELPER: &str = "slipway-svc.sh";

/// How long a probe may keep failing before an instance counts as not ready, when the
/// spec sets no `readiness.deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long stopping waits for a supervisor and its instance after SIGTERM.
pub const STOP_GRACE_SECS: u64 = 10;

/// A `run:` service as the ssh target deploys it.
#[derive(Clone)]
pub struct SshService {
    /// The spec's `run:`.
    pub run: RunSpec,
    /// The spec's `readiness` probe, run on the host.
    pub readiness: Option<Probe>,
    /// The load balancer in front of the fleet (`router: { haproxy }` or `router: {
    /// nginx }`), with one server per host named after it: each host is drained before
    /// its instances are replaced and put back in service after.
    pub drain: Option<Arc<dyn Balancer>>,
    /// The plan's canary, driven through that balancer host by host
    /// ([`crate::fleet`]); `None`: a rolling deploy.
    pub canary: Option<Arc<crate::fleet::FleetCanary>>,
}

impl std::fmt::Debug for SshService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshService")
            .field("run", &self.run)
            .field("readiness", &self.readiness)
            .field("drain", &self.drain.as_ref().map(|r| r.describe()))
            .field("canary", &self.canary)
            .finish()
    }
}

/// The supervisor and its commands (see the module docs). POSIX sh; needs `setsid`,
/// `/proc` and coreutils.
pub const HELPER_SCRIPT: &str = r#"# slipway-svc.sh: supervised instances of one service on this host, written by slipway.
#   deploy BASE VERSION REPLICAS KEY   replace what runs by VERSION, recording what it replaced
#   rollback BASE VERSION KEY          put back what step KEY replaced (unless replaced since)
#   supervise BASE INDEX VERSION PORT  (internal) run one instance, restarting it on exit
set -u
cmd=$1
base=$2
GRACE=__GRACE__

starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
# alive PID START: the recorded process is running (not a recycled pid, not a zombie).
alive() {
  [ -n "${1:-}" ] && [ -n "${2:-}" ] || return 1
  [ "$(starttime "$1")" = "$2" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
# group DIR: some process of the instance's process group still exists.
group() { [ -n "$(field "$1/child" 1)" ] && kill -0 -"$(field "$1/child" 1)" 2>/dev/null; }
field() { cut -d' ' -f"$2" "$1" 2>/dev/null; }
write() { printf '%s\n' "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"; }

supervise() {
  i=$1; v=$2; port=$3
  d="$base/instances/$i"
  vd="$base/versions/$v"
  log="$base/logs/$v.$i.log"
  stop=0; child=
  trap 'stop=1; if [ -n "$child" ]; then kill -TERM -"$child" 2>/dev/null; fi' TERM INT
  trap '' HUP
  write "$d/supervisor" "$$ $(starttime $$) $v $port"
  backoff=1; restarts=0
  while [ "$stop" = 0 ]; do
    started=$(date +%s)
    PORT=$port setsid sh "$vd/launch.sh" >>"$log" 2>&1 </dev/null &
    child=$!
    write "$d/child" "$child $(starttime "$child") $started $restarts"
    rc=0
    while :; do
      wait "$child"; rc=$?
      kill -0 "$child" 2>/dev/null || break
    done
    # The instance is its process group: what the command started outlives its shell
    # (and would keep the port), so it goes too — after the grace period when stopping.
    if [ "$stop" = 1 ]; then
      w=0
      while kill -0 -"$child" 2>/dev/null && [ "$w" -lt $((GRACE * 10)) ]; do sleep 0.1; w=$((w + 1)); done
    fi
    kill -KILL -"$child" 2>/dev/null
    child=
    [ "$stop" = 0 ] || break
    restarts=$((restarts + 1))
    now=$(date +%s)
    if [ $((now - started)) -ge 30 ]; then backoff=1; fi
    echo "[slipway-svc] $(date -u +%Y-%m-%dT%H:%M:%SZ) instance $i of $v exited (status $rc) after $((now - started))s; restart $restarts in ${backoff}s" >>"$log"
    sleep "$backoff" &
    wait $! || true
    backoff=$((backoff * 2))
    if [ "$backoff" -gt 30 ]; then backoff=30; fi
  done
  rm -f "$d/child" "$d/supervisor"
}

# stop_all: stop every instance of the service on this host.
stop_all() {
  [ -d "$base/instances" ] || return 0
  for d in "$base"/instances/*; do
    [ -d "$d" ] || continue
    if alive "$(field "$d/supervisor" 1)" "$(field "$d/supervisor" 2)"; then
      kill -TERM "$(field "$d/supervisor" 1)" 2>/dev/null
    elif alive "$(field "$d/child" 1)" "$(field "$d/child" 2)"; then
      kill -TERM -"$(field "$d/child" 1)" 2>/dev/null
    fi
  done
  end=$(( $(date +%s) + GRACE ))
  for d in "$base"/instances/*; do
    [ -d "$d" ] || continue
    # Until the supervisor and every process of the instance's group are gone (the
    # command's shell may end before what it started, which still holds the port).
    while alive "$(field "$d/supervisor" 1)" "$(field "$d/supervisor" 2)" || group "$d"; do
      if [ "$(date +%s)" -ge "$end" ]; then
        if group "$d"; then kill -KILL -"$(field "$d/child" 1)" 2>/dev/null; fi
        if alive "$(field "$d/supervisor" 1)" "$(field "$d/supervisor" 2)"; then kill -KILL "$(field "$d/supervisor" 1)" 2>/dev/null; fi
      fi
      sleep 0.1
    done
    rm -rf "$d"
  done
}

# start_all VERSION: start VERSION's instances, each under its own supervisor.
start_all() {
  sv=$1; svd="$base/versions/$sv"
  sn=$(cat "$svd/replicas"); sport=$(cat "$svd/port")
  mkdir -p "$base/logs" && chmod 700 "$base/logs"
  sk=0
  while [ "$sk" -lt "$sn" ]; do
    d="$base/instances/$sk"
    mkdir -p "$d" && chmod 700 "$d"
    setsid sh "$base/slipway-svc.sh" supervise "$base" "$sk" "$sv" $((sport + sk)) </dev/null >>"$base/logs/$sv.$sk.log" 2>&1 &
    sk=$((sk + 1))
  done
  write "$base/current" "$sv"
}

# ready VERSION: every instance of VERSION alive, never restarted, and passing the probe.
ready() {
  rv=$1; rvd="$base/versions/$rv"
  rn=$(cat "$rvd/replicas"); rport=$(cat "$rvd/port"); rdeadline=$(cat "$rvd/deadline")
  end=$(( $(date +%s) + rdeadline ))
  while :; do
    ok=1; rk=0
    while [ "$rk" -lt "$rn" ]; do
      d="$base/instances/$rk"
      restarted=$(field "$d/child" 4)
      if [ -n "$restarted" ] && [ "$restarted" != 0 ]; then
        echo "instance $rk of $rv (port $((rport + rk))) exited before it was ready" >&2
        return 1
      fi
      if ! alive "$(field "$d/child" 1)" "$(field "$d/child" 2)"; then ok=0; break; fi
      if ! PORT=$((rport + rk)) sh "$rvd/probe.sh" >/dev/null 2>"$d/probe.err"; then ok=0; break; fi
      rk=$((rk + 1))
    done
    [ "$ok" = 1 ] && return 0
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "instance $rk of $rv (port $((rport + rk))) not ready within ${rdeadline}s: $(tail -c 300 "$d/probe.err" 2>/dev/null)" >&2
      return 1
    fi
    sleep 0.2
  done
}

# logs VERSION: the end of each of its instances' logs (kept on the host, per version).
logs() {
  for f in "$base/logs/$1".*.log; do
    [ -f "$f" ] || continue
    echo "--- last 40 lines of $f ---"
    tail -n 40 "$f"
  done
}

# switch FROM TO: stop what runs, start TO and wait for it; on failure put FROM back.
switch() {
  from=$1; to=$2
  stop_all
  start_all "$to"
  if ready "$to"; then return 0; fi
  logs "$to" >&2
  stop_all
  if [ -n "$from" ] && [ -f "$base/versions/$from/launch.sh" ]; then
    start_all "$from"
    if ready "$from"; then
      echo "[slipway-svc] $to did not become ready; $from runs again" >&2
    else
      echo "[slipway-svc] $to did not become ready, and $from did not either" >&2
    fi
  else
    rm -f "$base/current"
    echo "[slipway-svc] $to did not become ready; nothing ran before it, so nothing runs" >&2
  fi
  return 1
}

case "$cmd" in
supervise)
  supervise "$3" "$4" "$5"
  ;;
deploy)
  v=$3; key=$5
  [ -f "$base/versions/$v/launch.sh" ] || { echo "no launch record $base/versions/$v/launch.sh" >&2; exit 1; }
  mkdir -p "$base/steps"
  cur=$(cat "$base/current" 2>/dev/null || true)
  [ -f "$base/steps/$key" ] || write "$base/steps/$key" "$cur"
  switch "$cur" "$v" || exit 1
  echo "$v running: $(cat "$base/versions/$v/replicas") instance(s) from port $(cat "$base/versions/$v/port")${cur:+, replacing $cur}"
  ;;
rollback)
  v=$3; key=$4
  prev=$(cat "$base/steps/$key" 2>/dev/null || true)
  cur=$(cat "$base/current" 2>/dev/null || true)
  if [ -n "$cur" ] && [ "$cur" != "$v" ]; then
    echo "$cur runs here, put there after $v by a later release: left as it is"
  elif [ -n "$prev" ]; then
    switch "$cur" "$prev" || exit 1
    echo "$prev running again (launched from its own record), replacing $v"
  else
    stop_all
    rm -f "$base/current"
    echo "$v stopped; nothing ran before it"
  fi
  rm -f "$base/steps/$key"
  ;;
*)
  echo "slipway-svc.sh: unknown command $cmd" >&2
  exit 2
  ;;
esac
"#;

/// The helper as uploaded: the grace period filled in.
pub fn helper_script() -> String {
    HELPER_SCRIPT.replace("__GRACE__", &STOP_GRACE_SECS.to_string())
}

/// The service's directory on a host, as a shell word (expands `$HOME` when the host has
/// no `state_dir`).
pub fn base_dir(host: &Host, service: &str) -> String {
    let root = match &host.state_dir {
        Some(d) => sh_quote(d),
        None => "\"$HOME\"/.slipway".to_owned(),
    };
    format!("{root}/services/{}", sh_quote(service))
}

/// The probe deadline of a service.
pub fn deadline(svc: &SshService) -> Duration {
    svc.readiness
        .as_ref()
        .and_then(|p| p.deadline.as_ref())
        .and_then(|d| d.get().ok())
        .unwrap_or(DEFAULT_DEADLINE)
}

/// The exec step a `deploy` step of `service` runs on every host. Host independent: the
/// host's directory comes from `SLIPWAY_STATE_DIR` (exported when the host sets
/// `state_dir`), the step's key from `SLIPWAY_STEP_KEY`.
pub fn exec_step(service: &str, svc: &SshService, version: &str, replicas: u32) -> ExecStep {
    let base = format!(
        "\"${{SLIPWAY_STATE_DIR:-$HOME/.slipway}}\"/services/{}",
        sh_quote(service)
    );
    let helper = format!("{base}/{HELPER}");
    // Twice the probe deadline (the new version, then the one put back on failure),
    // twice the stop grace, and a minute for the rest.
    let secs = 2 * deadline(svc).as_secs() + 2 * STOP_GRACE_SECS + 60;
    ExecStep {
        name: "deploy".into(),
        run: format!(
            "sh {helper} deploy {base} {} {replicas} \"$SLIPWAY_STEP_KEY\"",
            sh_quote(version)
        ),
        creates: None,
        unless: None,
        undo: Some(format!(
            "sh {helper} rollback {base} {} \"$SLIPWAY_STEP_KEY\"",
            sh_quote(version)
        )),
        timeout: Some(format!("{secs}s").into()),
    }
}

/// Seconds for a probe's timeout (at least 1).
fn probe_timeout(p: &Probe) -> String {
    let d = p
        .timeout
        .as_ref()
        .and_then(|t| t.get().ok())
        .unwrap_or(Duration::from_secs(2));
    format!("{:.3}", d.as_secs_f64().max(0.1))
}

/// `probe.sh`: exits 0 when the instance on `$PORT` is ready, run on the host.
pub fn probe_script(p: Option<&Probe>, workdir: Option<&str>) -> String {
    let Some(p) = p else {
        return "# no readiness probe: an instance is ready while it runs\nexit 0\n".into();
    };
    let t = probe_timeout(p);
    let secs = format!("{}", t.parse::<f64>().unwrap_or(2.0).ceil().max(1.0));
    if let Some(path) = &p.http {
        let path = if path.starts_with('/') {
            path.clone()
        } else {
            format!("/{path}")
        };
        return format!(
            "url=\"http://127.0.0.1:$PORT\"{}\n\
             if command -v curl >/dev/null 2>&1; then exec curl -fsS -o /dev/null --max-time {t} \"$url\"; fi\n\
             if command -v wget >/dev/null 2>&1; then exec wget -q -O /dev/null -T {secs} \"$url\"; fi\n\
             echo 'the http probe needs curl or wget on this host' >&2\nexit 2\n",
            sh_quote(&path)
        );
    }
    if let Some(cmd) = &p.command {
        let cd = workdir.map_or(String::new(), |w| format!("cd {} || exit 2\n", sh_quote(w)));
        return format!("{cd}exec timeout -k 1 {secs} sh -c {}\n", sh_quote(cmd));
    }
    // tcp (the remaining kind): a connection to the instance's port.
    format!("exec timeout -k 1 {secs} bash -c 'exec 3<>/dev/tcp/127.0.0.1/'\"$PORT\"\n")
}

/// Variables of the login environment an instance keeps (as on the process target).
const KEPT: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// `launch.sh`: how `version` of `service` is launched on `host` (see the module docs).
pub fn launch_script(host: &Host, service: &str, svc: &SshService, version: &str) -> String {
    let command = svc
        .run
        .command
        .replace("{{ version }}", version)
        .replace("{{version}}", version)
        .replace("{{ port }}", "${PORT}")
        .replace("{{port}}", "${PORT}");
    let mut s = format!(
        "# How {service} {version} is launched on {}; written by slipway, kept for rollback.\n\
         here=$(cd \"$(dirname \"$0\")\" && pwd) || exit 1\n",
        host.name
    );
    if let Some(w) = &host.workdir {
        s.push_str(&format!("cd {} || exit 1\n", sh_quote(w)));
    } else {
        s.push_str("cd \"$HOME\" || exit 1\n");
    }
    s.push_str("exec env -i");
    for k in KEPT
        .iter()
        .map(|k| (*k).to_owned())
        .chain(svc.run.inherit_env.iter().cloned())
    {
        if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.is_empty() {
            s.push_str(&format!(" ${{{k}:+\"{k}=${k}\"}}"));
        }
    }
    let mut vars: Vec<(String, String)> = host
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.push(("SLIPWAY_SERVICE".into(), service.into()));
    vars.push(("SLIPWAY_VERSION".into(), version.into()));
    vars.push(("SLIPWAY_HOST".into(), host.name.clone()));
    vars.extend(
        svc.run
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_owned())),
    );
    for (k, v) in vars {
        s.push_str(&format!(" {}", sh_quote(&format!("{k}={v}"))));
    }
    s.push_str(" PORT=\"$PORT\" SLIPWAY_CONFIG_DIR=\"$here/config\"");
    s.push_str(&format!(" sh -c {}\n", sh_quote(&command)));
    s
}

/// The files of a version's directory on `host`: relative path, bytes, mode. The
/// rendered config comes from `config_dir` (this machine's render of the version).
pub fn version_files(
    host: &Host,
    service: &str,
    svc: &SshService,
    version: &str,
    replicas: u32,
    port: u16,
    config_dir: Option<&Path>,
) -> Result<Vec<(PathBuf, Vec<u8>, u32)>, String> {
    let mut files = vec![
        (
            PathBuf::from("launch.sh"),
            launch_script(host, service, svc, version).into_bytes(),
            0o600,
        ),
        (
            PathBuf::from("probe.sh"),
            probe_script(svc.readiness.as_ref(), host.workdir.as_deref()).into_bytes(),
            0o600,
        ),
        (
            PathBuf::from("port"),
            format!("{port}\n").into_bytes(),
            0o600,
        ),
        (
            PathBuf::from("replicas"),
            format!("{replicas}\n").into_bytes(),
            0o600,
        ),
        (
            PathBuf::from("deadline"),
            format!("{}\n", deadline(svc).as_secs().max(1)).into_bytes(),
            0o600,
        ),
    ];
    if let Some(dir) = config_dir.filter(|d| d.is_dir()) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| format!("read the rendered config {}: {e}", d.display()))?;
            for e in entries {
                let e = e.map_err(|e| format!("read the rendered config {}: {e}", d.display()))?;
                let path = e.path();
                let ft = e
                    .file_type()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let rel = path
                        .strip_prefix(dir)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let bytes = std::fs::read(&path)
                        .map_err(|e| format!("read the rendered config {}: {e}", path.display()))?;
                    files.push((Path::new("config").join(rel), bytes, 0o600));
                }
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            name: "web1".into(),
            address: "127.0.0.1".into(),
            port: 22,
            user: None,
            identity: None,
            workdir: None,
            state_dir: None,
            env: [("ROOT".to_owned(), "/srv/a b".to_owned())].into(),
            ports: [("web".to_owned(), 8080)].into(),
        }
    }

    fn svc(command: &str) -> SshService {
        SshService {
            run: RunSpec {
                command: command.into(),
                image: None,
                replicas: 1,
                env: Default::default(),
                inherit_env: vec!["JAVA_HOME".into()],
            },
            drain: None,
            canary: None,
            readiness: Some(Probe {
                http: Some("/ready".into()),
                tcp: None,
                command: None,
                timeout: Some("2s".into()),
                deadline: Some("5s".into()),
            }),
        }
    }

    /// The launch record runs the spec's command through `sh` with the port from the
    /// supervisor and the version filled in; the environment is cleared but for the kept
    /// variables, the host's env and Slipway's own.
    #[test]
    fn the_launch_script_runs_the_command_with_its_version_port_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = launch_script(
            &host(),
            "web",
            &svc(
                "echo \"v={{ version }} port={{ port }} root=$ROOT cfg=$SLIPWAY_CONFIG_DIR java=${JAVA_HOME:-none} secret=${SECRET:-none}\"",
            ),
            "2.0.0",
        );
        let path = dir.path().join("launch.sh");
        std::fs::write(&path, s).unwrap();
        let out = slipway_stdx::command("sh")
            .arg(&path)
            .env("PORT", "8123")
            .env("SECRET", "leaked")
            .env("JAVA_HOME", "/opt/jdk")
            .output()
            .unwrap();
        let dir = dir.path().canonicalize().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!(
                "v=2.0.0 port=8123 root=/srv/a b cfg={}/config java=/opt/jdk secret=none",
                dir.display()
            ),
            "{out:?}"
        );
    }

    #[test]
    fn the_deploy_step_is_the_helper_with_an_undo_and_a_bounded_timeout() {
        let s = exec_step("web", &svc("x"), "2.0.0", 3);
        assert!(
            s.run.contains("deploy") && s.run.contains("'2.0.0' 3"),
            "{}",
            s.run
        );
        assert!(s.undo.as_deref().unwrap_or("").contains("rollback"));
        assert_eq!(s.timeout.as_deref(), Some("90s"));
    }
}
