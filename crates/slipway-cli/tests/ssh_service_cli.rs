//! Supervised `run:` services on ssh hosts (issue 19 part 2), through the real binary
//! against real sshd "hosts" on 127.0.0.1 (each with its own state directory): instances
//! of demo-app started on every host under the supervisor, config rendered here and
//! delivered 0600, an instance killed with SIGKILL restarted by its supervisor, instances
//! serving on while `slipway` is killed mid-deploy and `resume` finishing the deploy, a
//! rollback restarting the previous version from its own launch record, and a version
//! that crashes put back by itself with its log in the step's output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ssh_cli::sshd::Fleet;

const SECRET_NAME: &str = "SLIPWAY_SSH_SVC_TEST_PASSWORD";
const SECRET: &str = "pw-7f3a-ssh-never-in-the-journal";
const TEMPLATE: &str = "password = \"{{ vars.password }}\"\nversion = \"{{ version }}\"\n";

/// `n` ports in a row that are free now (an instance per replica), written into the
/// spec: outside the ephemeral range, where no other test's connection can take them.
pub(crate) fn free_ports(n: u16) -> u16 {
    slipway_testkit::ports::fixed_ports(n)
}

pub(crate) struct World {
    pub(crate) fleet: Fleet,
    pub(crate) dir: PathBuf,
    roots: Vec<PathBuf>,
    pub(crate) ports: Vec<u16>,
    /// Instances per host.
    pub(crate) replicas: u16,
    /// Lines added to the environment (e.g. `router:`), indented by four spaces.
    pub(crate) env_extra: String,
    /// Top-level lines added to the spec (e.g. `strategy:`).
    pub(crate) tail: String,
    /// `target.ssh.batch`.
    pub(crate) batch: u32,
}

impl World {
    /// `hosts` sshd hosts, each with its own state directory and two ports for `web`.
    pub(crate) fn new(hosts: usize) -> World {
        let fleet = Fleet::start(hosts);
        let dir = fleet.dir.join("spec");
        std::fs::create_dir_all(&dir).unwrap();
        let roots: Vec<PathBuf> = (0..hosts)
            .map(|i| {
                let r = fleet.dir.join(format!("root{i}"));
                std::fs::create_dir_all(&r).unwrap();
                r
            })
            .collect();
        let ports: Vec<u16> = (0..hosts).map(|_| free_ports(2)).collect();
        let (r, p) = (roots.clone(), ports.clone());
        std::fs::write(
            dir.join("hosts.yaml"),
            fleet.inventory(|i| {
                format!(
                    "    state_dir: {}/state\n    ports: {{ web: {} }}\n",
                    r[i].display(),
                    p[i]
                )
            }),
        )
        .unwrap();
        std::fs::write(dir.join("web.conf.j2"), TEMPLATE).unwrap();
        World {
            fleet,
            dir,
            roots,
            ports,
            replicas: 2,
            env_extra: String::new(),
            tail: String::new(),
            batch: 1,
        }
    }

    /// Write the spec of release `version` whose `web` runs `command`.
    pub(crate) fn spec(&self, version: &str, command: &str) -> PathBuf {
        self.spec_with(
            version,
            command,
            "{ http: /ready, timeout: 2s, deadline: 20s }",
        )
    }

    /// ... with this readiness probe.
    fn spec_with(&self, version: &str, command: &str, readiness: &str) -> PathBuf {
        let file = self.dir.join(format!("release-{version}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  web:
    run: {{ command: \"{command}\", replicas: {replicas} }}
    readiness: {readiness}
    config: [ {{ template: web.conf.j2, dest: web.conf }} ]
environments:
  fleet:
    target: {{ ssh: {{ inventory: hosts.yaml, group: all, batch: {batch} }} }}
    vars: {{ password: \"secret://env/{SECRET_NAME}\" }}
{extra}{tail}",
                replicas = self.replicas,
                batch = self.batch,
                extra = self.env_extra,
                tail = self.tail,
            ),
        )
        .unwrap();
        file
    }

    pub(crate) fn demo(&self) -> String {
        format!(
            "{} demo-app --port {{{{ port }}}} --version {{{{ version }}}}",
            env!("CARGO_BIN_EXE_slipway")
        )
    }

    /// `slipway deploy --env fleet -f <2.0.0 of demo>` in the background, its output in
    /// `deploy2.out` / `deploy2.err`; killed when dropped (a failed assertion leaves no
    /// deploy driving). Declare it after the world: it stops before the instances do.
    pub(crate) fn spawn_deploy2(&self) -> slipway_testkit::Reaped {
        let spec2 = self.spec("2.0.0", &self.demo());
        self.cmd()
            .args(["deploy", "--env", "fleet", "-f"])
            .arg(&spec2)
            .stdout(std::fs::File::create(self.dir.join("deploy2.out")).unwrap())
            .stderr(std::fs::File::create(self.dir.join("deploy2.err")).unwrap())
            .spawn()
            .unwrap()
            .into()
    }

    /// Until the journal's step progress satisfies `reached` (`what`, for the failure),
    /// while `child` ([`Self::spawn_deploy2`]) runs, for at most `within`.
    pub(crate) fn wait_progress(
        &self,
        child: &mut std::process::Child,
        within: Duration,
        what: &str,
        reached: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !reached(&progress(self)) {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "the canary never {what}: {} {}",
                std::fs::read_to_string(self.dir.join("deploy2.out")).unwrap_or_default(),
                std::fs::read_to_string(self.dir.join("deploy2.err")).unwrap_or_default(),
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"));
        c.env(
            "SLIPWAY_STORE",
            format!("sqlite://{}", self.dir.join("store.db").display()),
        )
        .env(SECRET_NAME, SECRET)
        .env("NO_COLOR", "1")
        .env_remove("SLIPWAY_OUTPUT");
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().unwrap()
    }

    pub(crate) fn deploy(&self, spec: &Path) -> std::process::Output {
        self.run(&[
            "deploy",
            "--env",
            "fleet",
            "--output",
            "json",
            "-f",
            &spec.display().to_string(),
        ])
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        let o = self.run(&["status", "--output", "json"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The service's directory on host `i`.
    pub(crate) fn base(&self, i: usize) -> PathBuf {
        self.roots[i].join("state/services/web")
    }

    /// `(pid, restarts)` of instance `k` on host `i`, as its supervisor recorded it.
    fn child(&self, i: usize, k: usize) -> Option<(u32, u32)> {
        let text =
            std::fs::read_to_string(self.base(i).join(format!("instances/{k}/child"))).ok()?;
        let f: Vec<&str> = text.split_whitespace().collect();
        Some((f.first()?.parse().ok()?, f.get(3)?.parse().ok()?))
    }

    /// Wait until every instance on every host answers `version`.
    pub(crate) fn wait_all(&self, version: &str) {
        for (i, p) in self.ports.iter().enumerate() {
            for k in 0..self.replicas {
                wait_version(*p + k, version, &format!("host {i} instance {k}"));
            }
        }
    }
}

/// The body of `GET /version` on a local port, if it answers.
pub(crate) fn version_at(port: u16) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    if !buf.starts_with("HTTP/1.1 200") {
        return None;
    }
    buf.split("\r\n\r\n").nth(1).map(|b| b.trim().to_owned())
}

fn wait_version(port: u16, version: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = version_at(port);
        if got.as_deref() == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (port {port}) never answered {version}: last {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The demo-app process of the instance whose process group is `group`.
fn demo_app_in(group: u32) -> u32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state, ppid, pgrp.
        let pgrp = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok());
        let argv = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let argv = String::from_utf8_lossy(&argv);
        if pgrp == Some(group) && argv.contains("demo-app") && !argv.starts_with("sh") {
            return pid;
        }
    }
    panic!("no demo-app process in group {group}");
}

/// The environment of a running process.
fn environ(pid: u32) -> std::collections::BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Stop every supervisor this test started (they outlive `slipway` by design).
impl Drop for World {
    fn drop(&mut self) {
        for i in 0..self.roots.len() {
            let Ok(dirs) = std::fs::read_dir(self.base(i).join("instances")) else {
                continue;
            };
            for d in dirs.flatten() {
                for f in ["supervisor", "child"] {
                    if let Some(pid) = std::fs::read_to_string(d.path().join(f))
                        .ok()
                        .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
                    {
                        // The supervisor first (so it restarts nothing), then the
                        // instance's process group.
                        let flag = if f == "child" { -pid } else { pid };
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", "--", &flag.to_string()])
                            .stderr(std::process::Stdio::null())
                            .status();
                    }
                }
            }
        }
        let _ = &self.fleet;
    }
}

/// Deploy, kill -9 an instance (its supervisor restarts it), kill -9 `slipway` in the
/// middle of the next deploy (instances keep serving; `resume` finishes), then roll the
/// release back: every host runs the previous version again, launched from that
/// version's own record (its own config directory and command).
#[test]
fn run_services_are_supervised_on_each_host_and_roll_back_to_their_own_launch() {
    let w = World::new(2);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    w.wait_all("1.0.0");

    // Config rendered here, delivered to each host 0600, with the secret resolved there.
    for i in 0..2 {
        let conf = w.base(i).join("versions/1.0.0/config/web.conf");
        let meta = std::fs::metadata(&conf).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            conf.display()
        );
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.contains(SECRET) && text.contains("1.0.0"), "{text}");
        let launch = w.base(i).join("versions/1.0.0/launch.sh");
        assert_eq!(
            std::fs::metadata(&launch).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!std::fs::read_to_string(&launch).unwrap().contains(SECRET));
    }
    // The secret is in no journal entry.
    let logs = w.run(&["logs", "--output", "json"]);
    assert!(!String::from_utf8_lossy(&logs.stdout).contains(SECRET));

    // kill -9 of an instance (the demo-app process itself): its supervisor starts it
    // again.
    let (group, restarts) = w.child(0, 0).unwrap();
    assert_eq!(restarts, 0);
    let pid = demo_app_in(group);
    assert_eq!(
        environ(pid).get("SLIPWAY_CONFIG_DIR").map(String::as_str),
        Some(
            w.base(0)
                .join("versions/1.0.0/config")
                .canonicalize()
                .unwrap()
                .to_str()
                .unwrap()
        )
    );
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((new, r)) = w.child(0, 0)
            && new != group
            && r == 1
            && version_at(w.ports[0]).as_deref() == Some("1.0.0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed instance was not restarted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(w.base(0).join("logs/1.0.0.0.log")).unwrap();
    assert!(log.contains("exited (status 137)"), "{log}");

    // 2.0.0, with slipway killed once the first host serves it.
    let mut child = w.spawn_deploy2();
    let deadline = Instant::now() + Duration::from_secs(30);
    while version_at(w.ports[0]).as_deref() != Some("2.0.0") {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "host 0 never served 2.0.0 during the second deploy: {} {} {:?}",
            std::fs::read_to_string(w.dir.join("deploy2.out")).unwrap_or_default(),
            std::fs::read_to_string(w.dir.join("deploy2.err")).unwrap_or_default(),
            String::from_utf8_lossy(&w.run(&["logs"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Nobody drives the run now; what runs on the hosts keeps answering.
    for _ in 0..20 {
        assert_eq!(version_at(w.ports[0]).as_deref(), Some("2.0.0"));
        assert!(version_at(w.ports[1]).is_some(), "host 1 stopped answering");
    }
    let s = w.status();
    let run2 = s["run"]["id"].as_str().unwrap().to_owned();
    if s["run"]["state"] != "succeeded" {
        let o = w.run(&["resume", &run2]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    }
    w.wait_all("2.0.0");
    assert_eq!(w.status()["run"]["state"], "succeeded");

    // Rolled back by hand: the previous version, as its own run launched it.
    let o = w.run(&["rollback", &run2, "--reason", "checkout errors"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    w.wait_all("1.0.0");
    for i in 0..2 {
        let pid = demo_app_in(w.child(i, 1).unwrap().0);
        let argv = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(argv.contains("--version\x001.0.0"), "{argv:?}");
        let env = environ(pid);
        let own = w.base(i).join("versions/1.0.0/config");
        assert_eq!(
            env.get("SLIPWAY_CONFIG_DIR").map(PathBuf::from),
            Some(own.canonicalize().unwrap())
        );
        let conf = std::fs::read_to_string(own.join("web.conf")).unwrap();
        assert!(conf.contains("version = \"1.0.0\""), "{conf}");
        assert_eq!(
            std::fs::read_to_string(w.base(i).join("current"))
                .unwrap()
                .trim(),
            "1.0.0"
        );
    }
}

/// A version whose instances exit at once (http probe), one that runs but never listens
/// (tcp probe, 2 s deadline), and one whose command probe fails: each time the first
/// host puts the version it replaced back by itself, the step fails with why (and the
/// instances' log) in its output, nothing starts on the second host, and the run rolls
/// back with every host on the previous version.
#[test]
fn a_version_that_crashes_is_replaced_by_the_previous_one_and_the_run_rolls_back() {
    let w = World::new(2);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    w.wait_all("1.0.0");
    let before = w.child(1, 0).unwrap().0;

    let o = w.deploy(&w.spec("2.0.0", "sh -c 'echo boom-{{ version }} >&2; exit 3'"));
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let s = w.status();
    assert_eq!(s["run"]["state"], "rolled_back", "{s:#}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        serde_json::to_string(&s).unwrap()
    );
    assert!(
        text.contains("boom-2.0.0"),
        "the instance log is not in the output: {text}"
    );
    assert!(text.contains("exited before it was ready"), "{text}");
    w.wait_all("1.0.0");
    // The second host was never touched: the same instance serves.
    assert_eq!(w.child(1, 0).unwrap().0, before);
    assert_eq!(
        std::fs::read_to_string(w.base(0).join("current"))
            .unwrap()
            .trim(),
        "1.0.0"
    );

    for (version, command, readiness, why) in [
        (
            "3.0.0",
            "sleep 600".to_owned(),
            "{ tcp: true, timeout: 1s, deadline: 2s }",
            "not ready within 2s",
        ),
        (
            "4.0.0",
            w.demo(),
            "{ command: 'test -e /nonexistent/ready-$PORT', deadline: 2s }",
            "not ready within 2s",
        ),
    ] {
        let o = w.deploy(&w.spec_with(version, &command, readiness));
        assert_eq!(o.status.code(), Some(4), "{version}: {o:?}");
        let s = w.status();
        assert_eq!(s["run"]["state"], "rolled_back", "{s:#}");
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(why), "{version}: {text}");
        w.wait_all("1.0.0");
        assert_eq!(w.child(1, 0).unwrap().0, before);
    }
}

/// HAProxy in front of the fleet: backend `web` with one server per host, named after it.
struct Haproxy {
    child: std::process::Child,
    port: u16,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        slipway_testkit::terminate(&mut self.child);
    }
}

impl Haproxy {
    /// Reload as `systemctl reload haproxy` does (a [`haproxy_reloadable`] only).
    fn reload(&self, w: &World) {
        slipway_testkit::haproxy::reload(&self.child, &w.dir, self.port);
    }
}

fn haproxy(w: &World) -> Haproxy {
    start_haproxy(w, false)
}

/// [`haproxy`] in master-worker mode (`-W`), reloadable with [`Haproxy::reload`].
fn haproxy_reloadable(w: &World) -> Haproxy {
    start_haproxy(w, true)
}

fn start_haproxy(w: &World, master_worker: bool) -> Haproxy {
    for _ in 0..3 {
        let port = free_ports(1);
        let servers: String = w
            .fleet
            .hosts
            .iter()
            .zip(&w.ports)
            .map(|(h, p)| format!("  server {} 127.0.0.1:{p}\n", h.name))
            .collect();
        let cfg = format!(
            "global
  stats socket {d}/admin.sock mode 600 level admin
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  # No retry: a request sent to a host whose instances are being replaced fails, as a
  # user's would; only draining keeps requests away from it.
  retries 0
frontend fe
  bind 127.0.0.1:{port}
  default_backend web
backend web
  balance roundrobin
{servers}",
            d = w.dir.display()
        );
        std::fs::write(w.dir.join("haproxy.cfg"), cfg).unwrap();
        let mut h = Haproxy {
            child: slipway_testkit::haproxy::spawn(&w.dir, master_worker),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(h.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if slipway_testkit::haproxy::answers(&w.dir, port) {
                return h;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("haproxy did not start in {}", w.dir.display());
}

/// Requests through `port` one after another (a new connection each) until `stop`:
/// (answers by version, failures with what they were).
fn traffic(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(std::collections::BTreeMap<String, u32>, Vec<String>)> {
    std::thread::spawn(move || {
        let mut seen = std::collections::BTreeMap::new();
        let mut failed = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match version_at_full(port) {
                Ok(v) => *seen.entry(v).or_insert(0) += 1,
                Err(e) => failed.push(e),
            }
        }
        (seen, failed)
    })
}

/// `GET /version` through a port: the body of a 200, else what came back.
fn version_at_full(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if !buf.starts_with("HTTP/1.1 200") {
        return Err(buf.lines().next().unwrap_or("no answer").to_owned());
    }
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
}

/// Behind HAProxy (backend `web`, one server per host), a rolling deploy in waves of one
/// host drains each host before replacing its instances and puts it back after, and a
/// rollback does the same: requests sent all along through HAProxy never fail.
#[test]
fn behind_haproxy_each_host_is_drained_while_replaced_and_no_request_fails() {
    let mut w = World::new(2);
    w.replicas = 1;
    w.env_extra = "    router: { haproxy: { socket: admin.sock, backend: web } }\n".into();
    let h = haproxy(&w);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    w.wait_all("1.0.0");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = traffic(h.port, stop.clone());
    let o = w.deploy(&w.spec("2.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let run2 = w.status()["run"]["id"].as_str().unwrap().to_owned();
    w.wait_all("2.0.0");
    let o = w.run(&["rollback", &run2, "--reason", "drill"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    w.wait_all("1.0.0");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "requests failed: {failed:?} (answered: {seen:?})"
    );
    assert!(
        seen.get("2.0.0").copied().unwrap_or(0) > 0 && seen.get("1.0.0").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
    // Each host's output says it was drained and put back, on the way in and out.
    let s = w.status();
    let hosts = s["hosts"].as_array().unwrap();
    for (phase, what) in [("apply", "deploy"), ("undo", "rollback")] {
        for host in ["host1", "host2"] {
            let h = hosts
                .iter()
                .find(|h| h["step"] == "web/deploy" && h["phase"] == phase && h["host"] == host)
                .unwrap_or_else(|| panic!("no {phase} on {host}: {s:#}"));
            let err = h["stderr"].as_str().unwrap_or("");
            assert!(
                err.contains(&format!("{what}: drained web/{host}"))
                    && err.contains(&format!("web/{host} back in service")),
                "{phase} on {host}: {err}"
            );
        }
    }
    drop(h);
}

/// The canary strategy of the fleet tests: a third of the traffic to the canary host,
/// analysed on its own 5xx against the others', the same analysis between later waves.
pub(crate) const FLEET_CANARY: &str = "strategy:
  canary:
    steps:
      - set_weight: 34
      - analysis: { template: errors, duration: 3s }
analysis_templates:
  errors:
    interval: 500ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 20
    metrics:
      - { name: error-rate, provider: builtin, max: 0.05 }
    on_failure: rollback
";

/// `GET /` through a port, new connection each: the version of a 200, else the status.
pub(crate) fn root_at(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if !buf.starts_with("HTTP/1.1 200") {
        return Err(buf.lines().next().unwrap_or("no answer").to_owned());
    }
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
}

/// Requests to `/` through `port` until `stop`: (answers by version, failures).
pub(crate) fn root_traffic(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(std::collections::BTreeMap<String, u32>, Vec<String>)> {
    std::thread::spawn(move || {
        let mut seen = std::collections::BTreeMap::new();
        let mut failed = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match root_at(port) {
                Ok(v) => *seen.entry(v).or_insert(0) += 1,
                Err(e) => failed.push(e),
            }
        }
        (seen, failed)
    })
}

/// One runtime API command on the test's HAProxy.
fn haproxy_cmd(w: &World, cmd: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(w.dir.join("admin.sock")).unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Each server's weight in backend `web`, by name.
fn weights(w: &World) -> std::collections::BTreeMap<String, u64> {
    let out = haproxy_cmd(w, "show servers state web");
    let mut header: Vec<String> = Vec::new();
    let mut m = std::collections::BTreeMap::new();
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            header = h.split_whitespace().map(str::to_owned).collect();
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if header.is_empty() || f.len() < header.len() {
            continue;
        }
        let at = |n: &str| f[header.iter().position(|h| h == n).unwrap()];
        m.insert(
            at("srv_name").to_owned(),
            at("srv_uweight").parse().unwrap(),
        );
    }
    m
}

/// The run's journal entries' step-progress details, in order.
pub(crate) fn progress(w: &World) -> Vec<serde_json::Value> {
    let o = w.run(&["logs", "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    let mut out = Vec::new();
    let docs: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    };
    fn walk(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("event").and_then(|e| e.as_str()).is_some() && !m.contains_key("seq") {
                    out.push(v.clone());
                }
                for x in m.values() {
                    walk(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    for d in &docs {
        walk(d, &mut out);
    }
    out
}

pub(crate) fn events_named<'a>(
    p: &'a [serde_json::Value],
    name: &str,
) -> Vec<&'a serde_json::Value> {
    p.iter().filter(|e| e["event"] == name).collect()
}

/// A fleet canary through HAProxy (issue 19 part 3), three hosts in waves of one with
/// real traffic through HAProxy all along: a good version goes to host1 first at a third
/// of the traffic, judged on host1's own responses against the others', then to host2
/// (judged again) and host3, with no request failing and every weight back as it was; a
/// bad version (every `/` a 500) is rolled back by itself on host1 — the only host that
/// changed — which runs the good version again from its own launch record, the other
/// hosts never having been touched, every weight back, and the run rolled back.
#[test]
fn a_fleet_canary_promotes_a_good_version_and_rolls_a_bad_one_back_by_itself() {
    let mut w = World::new(3);
    w.replicas = 1;
    w.env_extra = "    router: { haproxy: { socket: admin.sock, backend: web } }\n".into();
    w.tail = FLEET_CANARY.into();
    let h = haproxy(&w);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "first deploy: {o:?}");
    w.wait_all("1.0.0");
    let before = weights(&w);
    assert_eq!(before.len(), 3, "{before:?}");

    // The good version, with traffic all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = root_traffic(h.port, stop.clone());
    let o = w.deploy(&w.spec("2.0.0", &w.demo()));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "good version: {o:?}");
    w.wait_all("2.0.0");
    assert!(failed.is_empty(), "requests failed: {failed:?} ({seen:?})");
    assert!(
        seen.contains_key("2.0.0") && seen.contains_key("1.0.0"),
        "{seen:?}"
    );
    assert_eq!(weights(&w), before);
    let p = progress(&w);
    let fleet = events_named(&p, "fleet_canary");
    assert_eq!(fleet.len(), 1, "{p:#?}");
    assert_eq!(
        fleet[0]["waves"],
        serde_json::json!([["host1"], ["host2"], ["host3"]])
    );
    // The canary's weight and its analysis on its own traffic, then wave 2 judged too.
    assert!(
        events_named(&p, "weight_set")
            .iter()
            .any(|e| e["weight"] == 34 && e["verified"] == 34),
        "{p:#?}"
    );
    let measured = events_named(&p, "measured");
    assert!(
        measured
            .iter()
            .any(|m| m["window"]["canary_requests"].as_u64().unwrap_or(0) > 0
                && m["window"]["stable_requests"].as_u64().unwrap_or(0) > 0),
        "{measured:#?}"
    );
    let waves: Vec<u64> = events_named(&p, "fleet_wave_passed")
        .iter()
        .map(|e| e["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, vec![1, 2, 3], "{p:#?}");

    // The bad version: every `/` answers 500.
    let bad = format!("{} --error-rate 1", w.demo());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = root_traffic(h.port, stop.clone());
    let o = w.deploy(&w.spec("3.0.0", &bad));
    assert_eq!(o.status.code(), Some(4), "bad version rolled back: {o:?}");
    w.wait_all("2.0.0");
    // Afterwards every request through HAProxy is answered by the good version.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10) {
        if (0..20).all(|_| root_at(h.port).as_deref() == Ok("2.0.0")) {
            break;
        }
    }
    assert!((0..30).all(|_| root_at(h.port).as_deref() == Ok("2.0.0")));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert!(
        !failed.is_empty(),
        "the bad version served some 500s: {seen:?}"
    );
    assert!(!seen.contains_key("3.0.0"), "{seen:?}");
    assert_eq!(weights(&w), before, "every weight back");
    let s = w.status();
    assert_eq!(s["run"]["state"], "rolled_back", "{s:#}");
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("error-rate"), "{text}");
    // Exactly the host that changed was rolled back; the others never got 3.0.0.
    for i in [1, 2] {
        assert!(!w.base(i).join("versions/3.0.0").exists(), "host {i}");
    }
    assert!(w.base(0).join("versions/3.0.0").exists());
    let p = progress(&w);
    assert_eq!(events_named(&p, "rolled_back").len(), 1, "{p:#?}");
    let undos: Vec<&str> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["step"] == "web/deploy" && h["phase"] == "undo")
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(undos, vec!["host1"], "{s:#}");
    drop(h);
}

/// kill -9 of `slipway` while a fleet canary is at its first step (issue 19: the
/// orchestrator dying mid-canary): the hosts keep serving through HAProxy at the
/// canary's weights while nobody drives (every request answered, both versions), and
/// `slipway resume` continues from the journal — the canary host found by its marker
/// (its deploy not repeated), the canary continued at its journaled step and weight,
/// judged again, then the later waves — ending with every host on the new version and
/// every weight as it was before the canary.
#[test]
fn a_fleet_canary_survives_slipway_killed_mid_canary_and_resume_continues_it() {
    let mut w = World::new(3);
    w.replicas = 1;
    w.env_extra = "    router: { haproxy: { socket: admin.sock, backend: web } }\n".into();
    w.tail = FLEET_CANARY.into();
    let h = haproxy(&w);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "first deploy: {o:?}");
    w.wait_all("1.0.0");
    let before = weights(&w);

    let mut child = w.spawn_deploy2();
    // Killed once the canary's first step (weight 34% to host1) is in the journal.
    w.wait_progress(
        &mut child,
        Duration::from_secs(60),
        "reached its first step",
        |p| {
            events_named(p, "weight_set")
                .iter()
                .any(|e| e["weight"] == 34)
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Nobody drives: HAProxy keeps the canary's weights and every request is answered.
    let during = weights(&w);
    assert_ne!(during, before, "the canary's weights stay in force");
    assert_eq!(version_at(w.ports[0]).as_deref(), Some("2.0.0"));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let v = root_at(h.port).unwrap_or_else(|e| panic!("a request failed: {e}"));
        *seen.entry(v).or_insert(0) += 1;
    }
    assert!(
        seen.contains_key("2.0.0") && seen.contains_key("1.0.0"),
        "{seen:?}"
    );
    assert_eq!(version_at(w.ports[1]).as_deref(), Some("1.0.0"));

    let run = w.status()["run"]["id"].as_str().unwrap().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = root_traffic(h.port, stop.clone());
    let o = w.run(&["resume", &run]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "resume: {o:?}");
    assert!(failed.is_empty(), "requests failed: {failed:?} ({seen:?})");
    w.wait_all("2.0.0");
    assert_eq!(weights(&w), before, "every weight back after the canary");
    let s = w.status();
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let p = progress(&w);
    // One fleet canary (the resumed driver read its weights back, not journaled anew),
    // continued at its weight, judged, then the later waves.
    assert_eq!(events_named(&p, "fleet_canary").len(), 1, "{p:#?}");
    let resumed = events_named(&p, "canary_resumed");
    assert!(resumed.first().is_some_and(|r| r["weight"] == 34), "{p:#?}");
    let waves: Vec<u64> = events_named(&p, "fleet_wave_passed")
        .iter()
        .map(|e| e["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, vec![1, 2, 3], "{p:#?}");
    // host1's deploy was not repeated: its marker showed it done.
    let host1: Vec<&str> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["step"] == "web/deploy" && h["phase"] == "apply" && h["host"] == "host1")
        .map(|h| h["result"].as_str().unwrap())
        .collect();
    assert!(host1.contains(&"already_done"), "{s:#}");
    drop(h);
}

/// HAProxy reloaded in the middle of a fleet canary (SIGUSR2 to its master, as `systemctl
/// reload haproxy` does) forgets the weights its runtime API was told and serves every
/// host at its configured weight: the canary host's share is gone. Slipway finds it at
/// its next interval and sets the canary's weights again, journaled (`router_restored`).
#[test]
fn a_fleet_canary_behind_a_reloaded_haproxy_gets_its_weights_back() {
    let mut w = World::new(3);
    w.replicas = 1;
    w.env_extra = "    router: { haproxy: { socket: admin.sock, backend: web } }\n".into();
    w.tail =
        "strategy:\n  canary:\n    steps:\n      - set_weight: 34\n      - pause: manual\n".into();
    let h = haproxy_reloadable(&w);
    let o = w.deploy(&w.spec("1.0.0", &w.demo()));
    assert_eq!(o.status.code(), Some(0), "first deploy: {o:?}");
    w.wait_all("1.0.0");
    let before = weights(&w);
    let mut child = w.spawn_deploy2();
    w.wait_progress(&mut child, Duration::from_secs(60), "paused at 34%", |p| {
        !events_named(p, "paused").is_empty()
    });
    let during = weights(&w);
    assert_ne!(during, before, "the canary's weights are in force");
    h.reload(&w);
    let deadline = Instant::now() + Duration::from_secs(30);
    let restored = loop {
        let p = progress(&w);
        if let Some(r) = events_named(&p, "router_restored").first() {
            break (*r).clone();
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded HAProxy never got the canary's weights back (now {:?}, the canary's {during:?}): {p:#?}",
            weights(&w)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(weights(&w), during, "{restored}");
    assert!(
        restored["detail"]
            .as_str()
            .is_some_and(|d| d.contains("web/host1") && d.contains("34%")),
        "{restored}"
    );
    // Put back once: nothing found lost again since.
    assert_eq!(events_named(&progress(&w), "router_restored").len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(h);
}
