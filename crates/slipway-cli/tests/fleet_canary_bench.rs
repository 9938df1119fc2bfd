//! BENCHMARKS.md's fleet canary (issue 19, acceptance point 3): an `#[ignore]`d
//! measurement, not a test. `cargo test -q -p slipway-cli --test runner fleet_canary_bench
//! -- --ignored --nocapture` (scripts/bench.sh run fleet-canary).
//!
//! For each N of `FLEET_CANARY_HOSTS` (default `10 50`): N real sshd hosts (the test
//! fleet of `ssh_service_cli`), one `demo-app` instance per host, real HAProxy in front
//! (backend `web`, one server per host named after it, no retries, `X-Server` naming the
//! server that answered), and constant client traffic through HAProxy (a new connection
//! per request, `FLEET_CANARY_RATE` requests/s over 4 clients), every response recorded
//! with when it was sent and received, its status, the server and the version.
//!
//! 1. **A good rolling release, one run, same hosts, same traffic**: ansible-core
//!    (`serial:` waves, pre/post tasks draining and enabling the host through HAProxy's
//!    runtime socket — its documented rolling-update pattern, with `shell` and a small
//!    python script since `community.general.haproxy` is not in ansible-core and socat is not
//!    installed) takes the hosts from 1.0.0 to 2.0.0; then Slipway (its own supervised
//!    1.0.0 first) from 1.0.0 to 2.0.0 as a fleet canary and from 2.0.0 to 3.0.0 as a
//!    plain rolling deploy. Waves of 20% of the hosts, that many at once, for every tool.
//!    Reported: wall time of the release command and requests that failed during it.
//! 2. **Detection**, `FLEET_CANARY_ROUNDS` rounds (default 3) per balancer of
//!    `FLEET_CANARY_BALANCERS` (default `haproxy nginx`: the same hosts, then behind a
//!    real nginx too — Slipway's upstream file, `nginx -t`, reload, analysis on its access
//!    log — with the traffic through it): a fleet canary of a bad version (every `/` a
//!    500) on the first wave. From the clients' view: the time from the first 500 to the
//!    last response a canary host gave on the bad version (its every answer is a 500, so:
//!    the last 500; that every 500 came from a canary host is checked, by `X-Server`
//!    behind HAProxy and by nginx's access log), the 500s users got, and failed requests
//!    (connection errors, 502/503/504); median and max over the rounds.
//!
//! ansible-playbook is `$ANSIBLE_PLAYBOOK`, else found on PATH; the benchmark's command
//! in scripts/bench.py installs ansible-core with pip when missing, never the test suite;
//! without it the ansible row says so. `slipway` is `$SLIPWAY_BIN` (the benchmark's
//! command builds the release binary), else the test build; every instance of both tools
//! runs its `demo-app`. With `FLEET_CANARY_RECORDS=DIR` every phase's responses are also
//! written there as CSV.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fleet_nginx_cli;
use crate::ssh_service_cli::{World, free_ports, version_at};

/// The canary's analysis: short enough that the rollout compares with a tool that does
/// none, and the same between the later waves.
const CANARY: &str = "strategy:
  canary:
    steps:
      - set_weight: 20
      - analysis: { template: errors, duration: 2s }
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

/// One response (or failure) as a client saw it: seconds since the bench's start.
#[derive(Debug, Clone)]
struct Rec {
    sent: f64,
    received: f64,
    /// `None`: no HTTP answer (connection refused, reset, timed out).
    status: Option<u16>,
    /// The `X-Server` HAProxy set: which host answered.
    server: String,
    /// The body of a 200: the version.
    body: String,
}

impl Rec {
    fn failed(&self) -> bool {
        !matches!(self.status, Some(200 | 500))
    }
}

/// `GET /` through HAProxy on a new connection.
fn request(port: u16, epoch: Instant) -> Rec {
    let sent = epoch.elapsed().as_secs_f64();
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })();
    let received = epoch.elapsed().as_secs_f64();
    let mut rec = Rec {
        sent,
        received,
        status: None,
        server: String::new(),
        body: String::new(),
    };
    if let Ok(buf) = answer {
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        rec.status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok());
        rec.server = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-server")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        rec.body = body.trim().to_owned();
    }
    rec
}

/// Constant traffic through HAProxy: `workers` clients, each paced to its share of
/// `rate` requests/s (a client behind its schedule does not burst to catch up).
struct Load {
    stop: Arc<AtomicBool>,
    recs: Arc<Mutex<Vec<Rec>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, epoch: Instant, rate: f64, workers: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let recs = Arc::new(Mutex::new(Vec::new()));
        let period = Duration::from_secs_f64(f64::from(workers) / rate);
        let threads = (0..workers)
            .map(|i| {
                let (stop, recs) = (stop.clone(), recs.clone());
                std::thread::spawn(move || {
                    let mut next = Instant::now() + period * i / workers;
                    while !stop.load(Ordering::SeqCst) {
                        let now = Instant::now();
                        // Pacing to a rate, not waiting for a condition.
                        if next > now {
                            std::thread::sleep(next - now);
                        } else if now - next > period {
                            next = now;
                        }
                        next += period;
                        let r = request(port, epoch);
                        recs.lock().unwrap().push(r);
                    }
                })
            })
            .collect();
        Load {
            stop,
            recs,
            threads,
        }
    }

    /// Stop the clients; every record, in the order sent.
    fn finish(self) -> Vec<Rec> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let mut v = std::mem::take(&mut *self.recs.lock().unwrap());
        v.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        v
    }
}

/// HAProxy in front of the fleet, with the answering server in `X-Server`.
struct Lb {
    child: std::process::Child,
    port: u16,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy(w: &World) -> Lb {
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
  # No retry: a request sent to a host whose instance is being replaced fails, as a
  # user's would; only draining keeps requests away from it.
  retries 0
frontend fe
  bind 127.0.0.1:{port}
  default_backend web
backend web
  balance roundrobin
  http-response set-header X-Server %s
{servers}",
            d = w.dir.display()
        );
        std::fs::write(w.dir.join("haproxy.cfg"), cfg).unwrap();
        let mut lb = Lb {
            child: std::process::Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(w.dir.join("haproxy.cfg"))
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(w.dir.join("haproxy.err")).unwrap())
                .spawn()
                .expect("haproxy is installed"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(lb.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if std::os::unix::net::UnixStream::connect(w.dir.join("admin.sock")).is_ok()
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return lb;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("haproxy did not start in {}", w.dir.display());
}

/// The environment's router for the bench's HAProxy.
const HAPROXY_ROUTER: &str = "    router: { haproxy: { socket: admin.sock, backend: web } }\n";

/// Slipway's spec of `version` (bad: every `/` a 500), in waves of `batch` hosts, that
/// many at once, as a fleet canary or a plain rolling deploy.
fn spec(w: &World, version: &str, bad: bool, canary: bool, batch: usize, router: &str) -> PathBuf {
    let file = w.dir.join(format!("release-{version}.yaml"));
    let command = format!(
        "{} demo-app --port {{{{ port }}}} --version {{{{ version }}}}{}",
        slipway_bin().display(),
        if bad { " --error-rate 1" } else { "" }
    );
    std::fs::write(
        &file,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  web:
    run: {{ command: \"{command}\", replicas: 1 }}
    readiness: {{ http: /ready, timeout: 2s, deadline: 20s }}
environments:
  fleet:
    target: {{ ssh: {{ inventory: hosts.yaml, group: all, batch: {batch}, parallelism: {batch} }} }}
{router}{strategy}",
            strategy = if canary { CANARY } else { "" },
        ),
    )
    .unwrap();
    file
}

/// Call `f` until it returns `Some`, at most for `within`; panics naming `what`.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every host answers `version` on its own port.
fn all_on(w: &World, version: &str) -> bool {
    w.ports
        .iter()
        .all(|p| version_at(*p).as_deref() == Some(version))
}

fn wait_all_on(w: &World, version: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("every host on {version}"),
        || all_on(w, version).then_some(()),
    );
}

/// The `slipway` measured: `$SLIPWAY_BIN` (the bench's command builds the release
/// binary, as the other fleet benchmarks measure), else the test build. Every instance,
/// Slipway's and ansible's, runs its `demo-app`.
fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_slipway")),
            PathBuf::from,
        )
}

/// `slipway --version`'s version and which build it is.
fn slipway_version() -> String {
    let bin = slipway_bin();
    let o = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_owned();
    let build = if bin.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    format!("{v} ({build})")
}

/// `slipway deploy` of `spec` with the world's store, by [`slipway_bin`].
fn deploy(w: &World, spec: &std::path::Path) -> std::process::Output {
    std::process::Command::new(slipway_bin())
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}", w.dir.join("store.db").display()),
        )
        .env("NO_COLOR", "1")
        .env_remove("SLIPWAY_OUTPUT")
        .args(["deploy", "--env", "fleet", "--output", "json", "-f"])
        .arg(spec)
        .output()
        .unwrap()
}

/// ansible-playbook's real path (not a pyenv shim, which would be timed too).
fn ansible_playbook() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ANSIBLE_PLAYBOOK")
        && !p.is_empty()
    {
        return Some(PathBuf::from(p));
    }
    for cmd in [
        "pyenv which ansible-playbook",
        "command -v ansible-playbook",
    ] {
        let o = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if o.status.success() && !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// The drain/enable tasks' tool: HAProxy's runtime API over its unix socket, in python
/// (socat is not installed here). `drain` waits until the server has no session left,
/// as `community.general.haproxy`'s `drain: true` does.
const HAPROXY_PY: &str = r#"import socket, sys, time
sock, backend, server, action = sys.argv[1:5]
def cmd(c):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall((c + "\n").encode())
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out.decode()
if action == "ready":
    cmd(f"set server {backend}/{server} state ready")
    sys.exit(0)
cmd(f"set server {backend}/{server} state drain")
deadline = time.time() + 30
while True:
    scur = 0
    for line in cmd("show stat").splitlines():
        f = line.split(",")
        if len(f) > 4 and f[0] == backend and f[1] == server:
            scur = int(f[4] or 0)
    if scur == 0:
        break
    if time.time() > deadline:
        sys.exit(f"{server} still has {scur} sessions after 30 s")
    time.sleep(0.05)
"#;

/// The same release with ansible-core: `serial:` waves, the host drained in HAProxy
/// before its instance is replaced and enabled after (pre/post tasks delegated to the
/// control machine, where HAProxy runs), the instance started with `setsid` (pid file)
/// and waited for on `/ready`.
struct Ansible {
    playbook: PathBuf,
    dir: PathBuf,
    roots: Vec<PathBuf>,
}

impl Ansible {
    fn setup(w: &World, playbook: PathBuf, batch: usize) -> Ansible {
        let dir = w.fleet.dir.join("ansible");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::create_dir_all(w.fleet.dir.join("cp")).unwrap();
        let roots: Vec<PathBuf> = (0..w.ports.len())
            .map(|i| {
                let r = w.fleet.dir.join(format!("ansible-root{i}"));
                std::fs::create_dir_all(&r).unwrap();
                r
            })
            .collect();
        let mut inv = String::from("[fleet]\n");
        for (i, h) in w.fleet.hosts.iter().enumerate() {
            inv.push_str(&format!(
                "{} ansible_host=127.0.0.1 ansible_port={} app_port={} root={}\n",
                h.name,
                h.port,
                w.ports[i],
                roots[i].display()
            ));
        }
        inv.push_str(&format!(
            "[fleet:vars]\nansible_user={}\nansible_ssh_private_key_file={}\nansible_python_interpreter=/usr/bin/python3\n",
            w.fleet.user,
            w.fleet.client_key.display()
        ));
        std::fs::write(dir.join("inventory.ini"), inv).unwrap();
        std::fs::write(
            dir.join("ansible.cfg"),
            format!(
                "[defaults]
inventory = {d}/inventory.ini
forks = {forks}
host_key_checking = True
gathering = explicit
local_tmp = {d}/tmp
retry_files_enabled = False
[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
control_path_dir = {cp}
",
                d = dir.display(),
                forks = w.ports.len(),
                kh = w.fleet.known_hosts.display(),
                cp = w.fleet.dir.join("cp").display(),
            ),
        )
        .unwrap();
        std::fs::write(dir.join("haproxy.py"), HAPROXY_PY).unwrap();
        let hap = format!(
            "/usr/bin/python3 {} {} web {{{{ inventory_hostname }}}}",
            dir.join("haproxy.py").display(),
            w.dir.join("admin.sock").display()
        );
        std::fs::write(
            dir.join("release.yml"),
            format!(
                r#"- hosts: fleet
  serial: {batch}
  gather_facts: false
  pre_tasks:
    - name: drain the host in HAProxy
      shell: {hap} drain
      delegate_to: localhost
  tasks:
    - name: replace the instance with {{{{ version }}}}
      shell: |
        set -e
        cd "{{{{ root }}}}"
        if [ -f pid ]; then
          old=$(cat pid)
          kill -TERM "$old" 2>/dev/null || true
          i=0
          while kill -0 "$old" 2>/dev/null; do
            i=$((i + 1)); [ $i -lt 100 ] || kill -KILL "$old" 2>/dev/null || true
            sleep 0.05
          done
        fi
        setsid {slipway} demo-app --port {{{{ app_port }}}} --version {{{{ version }}}} > app.log 2>&1 < /dev/null &
        echo $! > pid
        i=0
        until curl -fsS -o /dev/null http://127.0.0.1:{{{{ app_port }}}}/ready; do
          i=$((i + 1)); [ $i -lt 400 ] || {{ echo "not ready within 20 s" >&2; exit 1; }}
          sleep 0.05
        done
  post_tasks:
    - name: enable the host in HAProxy
      shell: {hap} ready
      delegate_to: localhost
"#,
                slipway = slipway_bin().display(),
            ),
        )
        .unwrap();
        Ansible {
            playbook,
            dir,
            roots,
        }
    }

    fn run(&self, version: &str) -> std::process::Output {
        self.playbook_cmd()
            .arg("-e")
            .arg(format!("version={version}"))
            .arg(self.dir.join("release.yml"))
            .output()
            .unwrap()
    }

    fn playbook_cmd(&self) -> std::process::Command {
        // A hung playbook ends the bench with its output instead of hanging it.
        let mut c = std::process::Command::new("timeout");
        c.arg("900")
            .arg(&self.playbook)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_NOCOLOR", "1");
        c
    }

    fn version(&self) -> String {
        let o = std::process::Command::new(&self.playbook)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        text.lines()
            .next()
            .and_then(|l| l.split("core ").nth(1))
            .map(|v| v.trim_end_matches(']').to_owned())
            .unwrap_or_default()
    }

    /// Stop every instance ansible started (their process groups) and its ssh control
    /// masters; wait until the ports are free.
    fn stop(&self, w: &World) {
        for r in &self.roots {
            if let Some(pid) = std::fs::read_to_string(r.join("pid"))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &(-pid).to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
                let _ = std::fs::remove_file(r.join("pid"));
            }
        }
        if let Ok(socks) = std::fs::read_dir(w.fleet.dir.join("cp")) {
            for s in socks.flatten() {
                let _ = std::process::Command::new("ssh")
                    .arg("-o")
                    .arg(format!("ControlPath={}", s.path().display()))
                    .args(["-O", "exit", "dummy"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        eventually(Duration::from_secs(30), "ansible's instances gone", || {
            w.ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_err())
                .then_some(())
        });
    }
}

/// Whatever happens, ansible's instances do not outlive the bench.
struct StopAnsible<'a>(&'a Ansible, &'a World);

impl Drop for StopAnsible<'_> {
    fn drop(&mut self) {
        self.0.stop(self.1);
    }
}

/// Median and max, formatted.
fn med_max(mut v: Vec<f64>, digits: usize) -> String {
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!(
        "{med:.digits$} ({:.digits$})",
        v.last().copied().unwrap_or(f64::NAN)
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A timed release under traffic: (seconds, the command's output, records).
fn under_load<T>(
    port: u16,
    epoch: Instant,
    rate: f64,
    f: impl FnOnce() -> T,
) -> (f64, T, Vec<Rec>) {
    let load = Load::start(port, epoch, rate, 4);
    let started = Instant::now();
    let out = f();
    let secs = started.elapsed().as_secs_f64();
    (secs, out, load.finish())
}

/// Every response of a phase as CSV in `$FLEET_CANARY_RECORDS/NAME.csv`, when set: what
/// the figures were computed from.
fn keep(recs: &[Rec], name: &str) {
    let Ok(dir) = std::env::var("FLEET_CANARY_RECORDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("sent_s,received_s,status,server,body\n");
    for r in recs {
        csv.push_str(&format!(
            "{:.4},{:.4},{},{},{}\n",
            r.sent,
            r.received,
            r.status.map_or("error".to_owned(), |s| s.to_string()),
            r.server,
            r.body.lines().next().unwrap_or("").replace(',', ";")
        ));
    }
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.csv")), csv).unwrap();
}

fn failures(recs: &[Rec]) -> usize {
    recs.iter().filter(|r| r.failed()).count()
}

#[test]
#[ignore = "a measurement, not a test: run by hand for BENCHMARKS.md"]
fn fleet_canary_bench() {
    let sizes: Vec<usize> = env_or("FLEET_CANARY_HOSTS", "10 50")
        .split_whitespace()
        .map(|n| n.parse().expect("FLEET_CANARY_HOSTS: host counts"))
        .collect();
    let rounds: usize = env_or("FLEET_CANARY_ROUNDS", "3").parse().unwrap();
    let rate: f64 = env_or("FLEET_CANARY_RATE", "100").parse().unwrap();
    let balancers: Vec<String> = env_or("FLEET_CANARY_BALANCERS", "haproxy nginx")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let playbook = ansible_playbook();
    let epoch = Instant::now();
    let (mut detection, mut release) = (Vec::new(), Vec::new());

    for &n in &sizes {
        let batch = (n / 5).max(1);
        let waves = n.div_ceil(batch);
        let mut w = World::new(n);
        w.replicas = 1;
        let lb = haproxy(&w);

        // --- ansible-core: 1.0.0 (not timed), then the release to 2.0.0 under traffic.
        match &playbook {
            None => release.push(format!(
                "| ansible-core | {n} | {waves} | not measured | - | - | ansible-playbook is not installed (`pip install ansible-core` failed or was not run) |"
            )),
            Some(p) => {
                let a = Ansible::setup(&w, p.clone(), batch);
                let guard = StopAnsible(&a, &w);
                eprintln!("{n} hosts: ansible-core 1.0.0, then 2.0.0 under traffic");
                let o = a.run("1.0.0");
                assert!(o.status.success(), "ansible 1.0.0: {o:?}");
                wait_all_on(&w, "1.0.0");
                let (secs, o, recs) = under_load(lb.port, epoch, rate, || a.run("2.0.0"));
                keep(&recs, &format!("release-{n}-hosts-ansible"));
                assert!(o.status.success(), "ansible 2.0.0: {o:?}");
                assert!(all_on(&w, "2.0.0"));
                release.push(format!(
                    "| ansible-core {} (`ansible-playbook`, `serial: {batch}`, forks {n}) | {n} | {waves} | {secs:.2} | {} | {} | drain/enable pre/post tasks through the runtime socket (python), `setsid` + pid file, `/ready` polled every 50 ms; pipelining, ControlPersist |",
                    a.version(),
                    recs.len(),
                    failures(&recs),
                ));
                println!(
                    "{{\"bench\":\"fleet-canary-release\",\"tool\":\"ansible\",\"hosts\":{n},\"seconds\":{secs:.3},\"requests\":{},\"failed\":{}}}",
                    recs.len(),
                    failures(&recs)
                );
                drop(guard);
            }
        }

        // --- Slipway: its own 1.0.0 (not timed), the canary to 2.0.0, rolling to 3.0.0.
        eprintln!(
            "{n} hosts: slipway 1.0.0, then 2.0.0 (canary) and 3.0.0 (rolling) under traffic"
        );
        let o = deploy(&w, &spec(&w, "1.0.0", false, false, batch, HAPROXY_ROUTER));
        assert_eq!(o.status.code(), Some(0), "slipway 1.0.0: {o:?}");
        wait_all_on(&w, "1.0.0");
        for (version, canary, what) in [
            (
                "2.0.0",
                true,
                "fleet canary: `set_weight: 20`, analysis 2 s (interval 500 ms, min 5 samples) on the first wave and again between waves",
            ),
            (
                "3.0.0",
                false,
                "plain rolling deploy (no canary), each host drained and put back",
            ),
        ] {
            let s = spec(&w, version, false, canary, batch, HAPROXY_ROUTER);
            let (secs, o, recs) = under_load(lb.port, epoch, rate, || deploy(&w, &s));
            keep(&recs, &format!("release-{n}-hosts-slipway-{version}"));
            assert_eq!(o.status.code(), Some(0), "slipway {version}: {o:?}");
            assert!(all_on(&w, version));
            release.push(format!(
                "| Slipway {} (`slipway deploy`, batch {batch}, parallelism {batch}) | {n} | {waves} | {secs:.2} | {} | {} | {what} |",
                slipway_version(),
                recs.len(),
                failures(&recs),
            ));
            println!(
                "{{\"bench\":\"fleet-canary-release\",\"tool\":\"slipway\",\"canary\":{canary},\"hosts\":{n},\"seconds\":{secs:.3},\"requests\":{},\"failed\":{}}}",
                recs.len(),
                failures(&recs)
            );
        }

        // --- Detection: a bad version on the first wave, rolled back by itself: behind
        // HAProxy, then behind nginx in front of the same hosts.
        let canary_hosts: BTreeSet<String> = w.fleet.hosts[..batch]
            .iter()
            .map(|h| h.name.clone())
            .collect();
        let canary_ports: BTreeSet<String> = w.ports[..batch]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        for (k, balancer) in balancers.iter().enumerate() {
            let (port, router, nginx) = match balancer.as_str() {
                "haproxy" => (lb.port, HAPROXY_ROUTER.to_owned(), None),
                "nginx" => {
                    let ng = fleet_nginx_cli::nginx(&w);
                    (ng.port, fleet_nginx_cli::router(&w.dir), Some(ng))
                }
                other => panic!("FLEET_CANARY_BALANCERS: {other} is neither haproxy nor nginx"),
            };
            let (mut detect, mut bad_n, mut failed_n, mut undone) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for r in 1..=rounds {
                let version = format!("{}.0.{r}", 4 + k);
                eprintln!("{n} hosts: detection behind {balancer}, round {r}, bad {version}");
                let s = spec(&w, &version, true, true, batch, &router);
                let (_, (o, ended), recs) = under_load(port, epoch, rate, || {
                    let o = deploy(&w, &s);
                    (o, epoch.elapsed().as_secs_f64())
                });
                assert_eq!(o.status.code(), Some(4), "bad {version} rolled back: {o:?}");
                assert!(all_on(&w, "3.0.0"), "every host back on 3.0.0");
                keep(&recs, &format!("detection-{balancer}-{n}-hosts-round-{r}"));
                let bad: Vec<&Rec> = recs.iter().filter(|r| r.status == Some(500)).collect();
                assert!(!bad.is_empty(), "round {r}: the clients saw no 500");
                // Every 500 came from a canary host: HAProxy names the server in each
                // response, nginx's access log has the upstream of each.
                let stray: Vec<String> = match &nginx {
                    None => bad
                        .iter()
                        .filter(|r| !canary_hosts.contains(&r.server))
                        .map(|r| format!("{r:?}"))
                        .collect(),
                    Some(ng) => ng
                        .log()
                        .into_iter()
                        .filter(|l| {
                            l.split_once(' ').is_some_and(|(addr, status)| {
                                status == "500" && !canary_ports.contains(addr)
                            })
                        })
                        .collect(),
                };
                assert!(
                    stray.is_empty(),
                    "500s from hosts outside the canary: {stray:?}"
                );
                let first = bad.iter().map(|r| r.received).fold(f64::INFINITY, f64::min);
                let last = bad.iter().map(|r| r.received).fold(0.0, f64::max);
                let failed = failures(&recs);
                println!(
                    "{{\"bench\":\"fleet-canary-detection\",\"balancer\":\"{balancer}\",\"hosts\":{n},\"canary_hosts\":{batch},\"round\":{r},\"first_bad_to_last_canary_s\":{:.3},\"first_bad_to_rolled_back_s\":{:.3},\"bad\":{},\"failed\":{failed},\"requests\":{}}}",
                    last - first,
                    ended - first,
                    bad.len(),
                    recs.len()
                );
                detect.push(last - first);
                undone.push(ended - first);
                bad_n.push(bad.len() as f64);
                failed_n.push(failed as f64);
            }
            detection.push(format!(
                "| {balancer} | {n} | {batch} | {} | {} | {} | {} |",
                med_max(detect, 2),
                med_max(bad_n, 0),
                med_max(failed_n, 0),
                med_max(undone, 2),
            ));
            drop(nginx);
        }
        drop(lb);
        drop(w);
    }

    let host = std::process::Command::new("nproc").output().unwrap();
    println!();
    println!(
        "Fleet canary of a bad version (every `/` a 500) on the first wave (20% of the hosts), {rate} req/s through the balancer; median (max) of {rounds} rounds, {} cores",
        String::from_utf8_lossy(&host.stdout).trim()
    );
    println!(
        "| balancer | hosts | canary hosts | first 500 → last response by a canary host on it (s) | 500s users got | failed requests (errors, 502/503) | first 500 → `slipway deploy` done, rolled back (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &detection {
        println!("{r}");
    }
    println!();
    println!(
        "A good rolling release on the same hosts, with the same traffic ({rate} req/s through HAProxy), in one run: waves of 20% of the hosts"
    );
    println!(
        "| tool | hosts | waves | wall time (s) | requests during it | failed requests | how |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &release {
        println!("{r}");
    }
}
