//! The fleet lab of `slipway demo --fleet`: a handful of local OpenSSH "hosts" with
//! HAProxy in front, started here and stopped when the lab is dropped.
//!
//! Each host is an `sshd` of its own on 127.0.0.1 (its own port, generated host key and
//! directory; the simpler variant of TESTING.md's fake hosts, which needs no root and no
//! network namespaces), all letting in one generated client key for the current user. The
//! inventory gives each host its own state directory (where the supervised instances of
//! `ssh_service` keep their records) and port for the `web` service; HAProxy's backend
//! `web` has one server per host, named after it, with its admin socket in the lab's
//! directory. The same shape as the ssh tests' fixture (`crates/slipway-providers/tests/
//! sshd.rs`), kept here because the demo is a user-facing command and the test fixture is
//! not built into the binary.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The programs the lab needs, with the Debian package of each.
const NEEDS: &[(&str, &str)] = &[
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("haproxy", "haproxy"),
];

/// Why the lab cannot run here (a program missing), or `None` when it can.
pub fn missing() -> Option<String> {
    let absent: Vec<String> = NEEDS
        .iter()
        .filter(|(p, _)| which(p).is_none())
        .map(|(p, pkg)| format!("`{p}` (apt: {pkg})"))
        .collect();
    (!absent.is_empty()).then(|| format!("not found here: {}", absent.join(", ")))
}

/// `program` as found on PATH (or the path itself when it has a slash).
fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| executable(p))
    })
}

/// One sshd host.
pub struct Host {
    /// Name in the inventory (`host1`…).
    pub name: String,
    /// sshd's port on 127.0.0.1.
    pub port: u16,
    /// Port of the `web` service's first instance.
    pub web_port: u16,
    /// The host's directory (config, keys, log, state).
    pub dir: PathBuf,
    child: Child,
}

/// The hosts, HAProxy, and the files that reach them.
pub struct Lab {
    /// The hosts, in inventory order.
    pub hosts: Vec<Host>,
    /// HAProxy's front door.
    pub front: u16,
    /// The lab's directory (inventory, keys, HAProxy config and socket).
    pub dir: PathBuf,
    haproxy: Option<Child>,
}

fn run(cmd: &mut std::process::Command, what: &str) -> Result<(), String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("failed to run {what}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn keygen(path: &Path) -> Result<(), String> {
    run(
        slipway_stdx::command("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "slipway-demo", "-f"])
            .arg(path),
        "ssh-keygen",
    )
}

/// A port free on 127.0.0.1 now with the next one free too, below the kernel's ephemeral
/// range: the lab writes its ports into configs and the inventory before anything binds
/// them, and a port from the ephemeral range could be taken meanwhile by any outgoing
/// connection on the machine (`slipway_stdx::ports`).
fn free_port() -> Result<u16, String> {
    slipway_stdx::ports::fixed_ports(2)
        .ok_or_else(|| "no two free ports on 127.0.0.1 below the ephemeral range".into())
}

fn current_user() -> Result<String, String> {
    let o = slipway_stdx::command("id")
        .arg("-un")
        .output()
        .map_err(|e| format!("failed to run id -un: {e}"))?;
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Wait until `port` answers with an SSH banner, or the child exits.
fn wait_banner(child: &mut Child, port: u16, log: &Path) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Address already in use") {
                return Ok(false);
            }
            return Err(format!(
                "sshd exited ({st}) before listening: {}",
                text.trim()
            ));
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-" {
                return Ok(true);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "sshd did not listen on 127.0.0.1:{port} within 20 s"
    ))
}

impl Host {
    fn start(dir: &Path, name: &str, authorized: &Path) -> Result<Host, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let host_key = dir.join("host_key");
        // A kept directory (--dir) may hold an earlier lab's key: ssh-keygen would ask.
        let _ = std::fs::remove_file(&host_key);
        let _ = std::fs::remove_file(host_key.with_extension("pub"));
        keygen(&host_key)?;
        // sshd's privilege-separation directory (absent on a fresh machine).
        let _ = std::fs::create_dir_all("/run/sshd");
        for _ in 0..5 {
            let port = free_port()?;
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nLogLevel INFO\n",
                    host_key.display(),
                    dir.join("sshd.pid").display(),
                    authorized.display(),
                ),
            )
            .map_err(|e| format!("{}: {e}", config.display()))?;
            let log = dir.join("sshd.log");
            let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let mut child = slipway_stdx::command("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .map_err(|e| format!("failed to start /usr/sbin/sshd: {e}"))?;
            if wait_banner(&mut child, port, &log)? {
                return Ok(Host {
                    name: name.to_owned(),
                    port,
                    web_port: free_port()?,
                    dir: dir.to_path_buf(),
                    child,
                });
            }
            let _ = child.wait();
        }
        Err(format!(
            "sshd {name}: every port tried was taken by another program"
        ))
    }
}

impl Lab {
    /// Start `n` hosts and HAProxy in front of them, in `dir`.
    pub fn start(dir: &Path, n: usize) -> Result<Lab, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let client_key = dir.join("id_ed25519");
        if !client_key.exists() {
            keygen(&client_key)?;
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)
            .map_err(|e| format!("{}: {e}", authorized.display()))?;
        let mut lab = Lab {
            hosts: Vec::new(),
            front: 0,
            dir: dir.to_path_buf(),
            haproxy: None,
        };
        for i in 1..=n {
            let name = format!("host{i}");
            lab.hosts
                .push(Host::start(&dir.join(&name), &name, &authorized)?);
        }
        let mut known = String::new();
        for h in &lab.hosts {
            let public = std::fs::read_to_string(h.dir.join("host_key.pub"))
                .map_err(|e| format!("{}: {e}", h.dir.display()))?;
            let mut parts = public.split_whitespace();
            let (alg, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            known.push_str(&format!("[127.0.0.1]:{} {alg} {key}\n", h.port));
        }
        std::fs::write(dir.join("known_hosts"), known).map_err(|e| e.to_string())?;
        let user = current_user()?;
        let mut inv =
            format!("known_hosts: known_hosts\nidentity: id_ed25519\nuser: {user}\nhosts:\n");
        for h in &lab.hosts {
            inv.push_str(&format!(
                "  - name: {}\n    address: 127.0.0.1\n    port: {}\n    state_dir: {}/state\n    ports: {{ web: {} }}\n",
                h.name,
                h.port,
                h.dir.display(),
                h.web_port
            ));
        }
        inv.push_str(&format!(
            "groups:\n  web: [{}]\n",
            lab.hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        std::fs::write(dir.join("hosts.yaml"), inv).map_err(|e| e.to_string())?;
        lab.start_haproxy()?;
        Ok(lab)
    }

    fn start_haproxy(&mut self) -> Result<(), String> {
        let servers: String = self
            .hosts
            .iter()
            .map(|h| format!("  server {} 127.0.0.1:{}\n", h.name, h.web_port))
            .collect();
        for _ in 0..3 {
            let port = free_port()?;
            let cfg = format!(
                "global\n  stats socket {d}/admin.sock mode 600 level admin\n\
                 defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend web\n\
                 backend web\n  balance roundrobin\n{servers}",
                d = self.dir.display()
            );
            let file = self.dir.join("haproxy.cfg");
            std::fs::write(&file, cfg).map_err(|e| format!("{}: {e}", file.display()))?;
            let err =
                std::fs::File::create(self.dir.join("haproxy.log")).map_err(|e| e.to_string())?;
            let mut child = slipway_stdx::command("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&file)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .map_err(|e| format!("failed to start haproxy: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if std::os::unix::net::UnixStream::connect(self.dir.join("admin.sock")).is_ok()
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    self.front = port;
                    self.haproxy = Some(child);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(format!(
            "haproxy did not start: {}",
            std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
        ))
    }

    /// One runtime API command on the lab's HAProxy.
    fn haproxy(&self, cmd: &str) -> Result<String, String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.join("admin.sock"))
            .map_err(|e| format!("HAProxy admin socket: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Each host's weight in the backend, in host order (`None` when unreadable).
    pub fn weights(&self) -> Vec<(String, Option<u64>)> {
        let out = self.haproxy("show servers state web").unwrap_or_default();
        let mut header: Vec<&str> = Vec::new();
        let mut found = std::collections::BTreeMap::new();
        for line in out.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                header = h.split_whitespace().collect();
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let col = |n: &str| header.iter().position(|h| *h == n).and_then(|i| f.get(i));
            if let (Some(name), Some(w)) = (col("srv_name"), col("srv_uweight")) {
                found.insert((*name).to_owned(), w.parse::<u64>().ok());
            }
        }
        self.hosts
            .iter()
            .map(|h| (h.name.clone(), found.get(&h.name).copied().flatten()))
            .collect()
    }

    /// The version each host's `web` answers directly (`None`: no answer).
    pub fn versions(&self) -> Vec<(String, Option<String>)> {
        self.hosts
            .iter()
            .map(|h| (h.name.clone(), get(h.web_port, "/version").ok()))
            .collect()
    }

    /// Stop the supervised instances the demo's deploys left on the hosts (they outlive
    /// `slipway` by design): each supervisor, then its instance's process group.
    fn stop_instances(&self) {
        for h in &self.hosts {
            let Ok(dirs) = std::fs::read_dir(h.dir.join("state/services/web/instances")) else {
                continue;
            };
            for d in dirs.flatten() {
                for f in ["supervisor", "child"] {
                    let Some(pid) = std::fs::read_to_string(d.path().join(f))
                        .ok()
                        .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
                    else {
                        continue;
                    };
                    let target = if f == "child" { -pid } else { pid };
                    let _ = slipway_stdx::command("kill")
                        .args(["-KILL", "--", &target.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_instances();
        if let Some(mut c) = self.haproxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &mut self.hosts {
            let _ = h.child.kill();
            let _ = h.child.wait();
        }
    }
}

/// `GET path` on a local port, new connection: the body of a 200, else the status line.
pub fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if !buf.starts_with("HTTP/1.1 200") {
        return Err(buf.lines().next().unwrap_or("no answer").to_owned());
    }
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
}
