//! Real OpenSSH servers for tests: N `sshd` processes on 127.0.0.1, each on a free port
//! with its own generated host key, all accepting one generated client key for the
//! current user. Killed on drop. Also used by slipway-cli's tests (`#[path]` include).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support, shared with slipway-cli's tests"
)]

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One sshd.
pub struct Sshd {
    /// Host name used in inventories.
    pub name: String,
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// Its private host key (the `.pub` beside it).
    pub host_key: PathBuf,
    /// Its own directory (config, keys, log).
    pub dir: PathBuf,
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connection processes stopped by [`Sshd::freeze_connections`]; killed on drop.
pub struct Frozen {
    /// Their pids.
    pub pids: Vec<u32>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Several sshd and the client side to reach them.
pub struct Fleet {
    /// Holds every file; removed on drop (after the servers, which are dropped first).
    pub hosts: Vec<Sshd>,
    /// The client's private key.
    pub client_key: PathBuf,
    /// A known_hosts file with every host's key.
    pub known_hosts: PathBuf,
    /// The user the servers let in (the current one).
    pub user: String,
    /// The fleet's directory.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "slipway-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs (apt: openssh-client)");
    assert!(st.success(), "ssh-keygen failed for {}", path.display());
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout)
        .expect("utf-8 user")
        .trim()
        .to_owned()
}

/// `[127.0.0.1]:port <type> <key>` for a host key.
pub fn known_hosts_line(port: u16, host_key: &Path) -> String {
    let public = std::fs::read_to_string(host_key.with_extension("pub")).expect("read host .pub");
    let mut parts = public.split_whitespace();
    let (alg, key) = (
        parts.next().expect("key type"),
        parts.next().expect("key data"),
    );
    format!("[127.0.0.1]:{port} {alg} {key}\n")
}

/// `SHA256:…` of a public key file, by ssh-keygen.
pub fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .expect("ssh-keygen -l");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_owned()
}

/// What makes one host differ from the others beyond what every host has (a mount
/// namespace, its own /etc/passwd with the user's home in the host's directory): extra
/// /etc/passwd lines, its own /etc/hosts, a small tmpfs (path, size such as `16m`), and
/// extra sshd_config lines.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// Lines appended to a copy of /etc/passwd.
    pub passwd_extra: Option<String>,
    /// The whole /etc/hosts.
    pub hosts: Option<String>,
    /// A tmpfs mounted at this path with this size.
    pub tmpfs: Option<(PathBuf, String)>,
    /// Appended to sshd_config.
    pub sshd_config: String,
}

impl Sshd {
    /// Successful logins so far (from its log).
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(self.dir.join("sshd.log"))
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    }

    /// Kill the per-connection sshd processes of this server (its descendants named
    /// `sshd`), by pid: every open session to it drops, the listener stays, and commands
    /// still running in those sessions go on (as when the network drops a connection).
    pub fn drop_connections(&self) {
        for pid in self.descendants() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() == "sshd" {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }

    /// Every process below this server (its connections and what runs in them).
    fn descendants(&self) -> Vec<u32> {
        descendants_of(&children(), self.child.id())
    }

    /// Stop (SIGSTOP) every process of this server's open connections (its descendants),
    /// by pid: the connections stay open but nothing answers on them any more, as when a
    /// host hangs or the network drops packets without a reset; the listener still
    /// accepts new ones. They are killed when the returned guard is dropped.
    pub fn freeze_connections(&self) -> Frozen {
        let pids = self.descendants();
        for pid in &pids {
            let _ = Command::new("kill")
                .arg("-STOP")
                .arg(pid.to_string())
                .status();
        }
        Frozen { pids }
    }

    fn start(dir: &Path, name: &str, authorized: &Path) -> Sshd {
        Self::start_isolated(dir, name, authorized, None)
    }

    fn start_isolated(
        dir: &Path,
        name: &str,
        authorized: &Path,
        isolation: Option<&Isolation>,
    ) -> Sshd {
        std::fs::create_dir_all(dir).expect("host dir");
        let host_key = dir.join("host_key");
        if !host_key.exists() {
            keygen(&host_key);
        }
        // sshd's privilege-separation directory (absent on a fresh machine).
        let _ = std::fs::create_dir_all("/run/sshd");
        // A port picked free can be taken by another program (another test's sshd) before
        // sshd binds it: then sshd exits with "Address already in use" and we pick again.
        let mut taken = Vec::new();
        for _ in 0..5 {
            match Self::start_on(dir, name, authorized, &host_key, free_port(), isolation) {
                Ok(sshd) => return sshd,
                Err(port) => taken.push(port),
            }
        }
        panic!("sshd {name}: ports {taken:?} were each taken by another program");
    }

    /// One attempt on `port`: the server, or `Err(port)` when another program holds it.
    fn start_on(
        dir: &Path,
        name: &str,
        authorized: &Path,
        host_key: &Path,
        port: u16,
        isolation: Option<&Isolation>,
    ) -> Result<Sshd, u16> {
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nLogLevel INFO\n{}",
                host_key.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
                isolation.map_or("", |i| i.sshd_config.as_str())
            ),
        )
        .expect("write sshd_config");
        let log = std::fs::File::create(dir.join("sshd.log")).expect("sshd log");
        // Every host runs in a mount namespace of its own with its own /etc/passwd, in
        // which the user's home is the host's own empty `home` directory: hosts do not
        // share `~/.slipway` (markers, supervised services), and a session's shell does
        // not source this machine's ~/.bashrc — here it runs `pyenv init`, 3 s alone and
        // over 10 s with 50 sessions at once, which made the 50-host readiness gate time
        // out measuring the harness instead of Slipway. `unshare` without --fork execs,
        // so the child's pid is sshd's.
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("host home");
        let user = current_user();
        let passwd: String = std::fs::read_to_string("/etc/passwd")
            .expect("/etc/passwd")
            .lines()
            .map(|line| {
                let mut f: Vec<&str> = line.split(':').collect();
                if f.len() == 7 && f[0] == user {
                    f[5] = home.to_str().expect("utf-8 host dir");
                }
                format!("{}\n", f.join(":"))
            })
            .collect();
        let mut script = String::new();
        let mut bind = |file: &str, text: &str| {
            let copy = dir.join(file.trim_start_matches("/etc/"));
            std::fs::write(&copy, text).expect("host file");
            script.push_str(&format!("mount --bind '{}' {file} && ", copy.display()));
        };
        let extra = isolation
            .and_then(|i| i.passwd_extra.as_deref())
            .unwrap_or("");
        bind("/etc/passwd", &format!("{passwd}{extra}"));
        if let Some(hosts) = isolation.and_then(|i| i.hosts.as_ref()) {
            bind("/etc/hosts", hosts);
        }
        if let Some((path, size)) = isolation.and_then(|i| i.tmpfs.as_ref()) {
            std::fs::create_dir_all(path).expect("tmpfs mount point");
            script.push_str(&format!(
                "mount -t tmpfs -o size={size} tmpfs '{}' && ",
                path.display()
            ));
        }
        script.push_str(&format!(
            "exec /usr/sbin/sshd -D -e -f '{}'",
            config.display()
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let mut child = cmd
            // Its own process group, so "who listens on the port" can tell it from
            // another test's sshd (a child of this same test process).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/sshd (apt: openssh-server)");
        // Ready when it sends its banner from a listener of its own.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(port);
                }
                panic!("sshd {name} exited ({st}) before listening: {log}");
            }
            let own = slipway_providers::portowner::loopback_listener_owner(port, child.id())
                == slipway_providers::portowner::Ownership::Ours;
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port))
                && own
            {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd {name} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Sshd {
            name: name.to_owned(),
            port,
            host_key: host_key.to_path_buf(),
            dir: dir.to_path_buf(),
            child,
        })
    }
}

/// Every process's children, by parent pid (one read of /proc).
fn children() -> std::collections::BTreeMap<u32, Vec<u32>> {
    let mut children: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    children
}

/// The processes below `root` in a [`children`] tree.
fn descendants_of(children: &std::collections::BTreeMap<u32, Vec<u32>>, root: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut todo = children.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = todo.pop() {
        pids.push(pid);
        todo.extend(children.get(&pid).cloned().unwrap_or_default());
    }
    pids
}

impl Fleet {
    /// Start `n` servers named `host1`..`hostN`.
    pub fn start(n: usize) -> Fleet {
        Self::start_isolated(n, |_, _| None)
    }

    /// Start `n` servers, host `i` (0-based) isolated as `isolate(i, its directory)`
    /// says (see [`Isolation`]), or not at all for `None`.
    pub fn start_isolated(n: usize, isolate: impl Fn(usize, &Path) -> Option<Isolation>) -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let client_key = dir.join("id_ed25519");
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).expect("authorized_keys");
        let hosts: Vec<Sshd> = (1..=n)
            .map(|i| {
                let hdir = dir.join(format!("host{i}"));
                std::fs::create_dir_all(&hdir).expect("host dir");
                let iso = isolate(i - 1, &hdir);
                Sshd::start_isolated(&hdir, &format!("host{i}"), &authorized, iso.as_ref())
            })
            .collect();
        let known_hosts = dir.join("known_hosts");
        let lines: String = hosts
            .iter()
            .map(|h| known_hosts_line(h.port, &h.host_key))
            .collect();
        std::fs::write(&known_hosts, lines).expect("known_hosts");
        Fleet {
            hosts,
            client_key,
            known_hosts,
            user: current_user(),
            dir,
            _tmp: tmp,
        }
    }

    /// How many processes below each server (its connections and what runs in them)
    /// have a command line starting with `prefix` (a Perl `$0` such as
    /// `slipway-step-helper`, or `sshd: ` for its connection processes), by host name,
    /// hosts with none left out; one read of /proc for the whole fleet. Zombies have no
    /// command line and are not counted.
    pub fn processes(&self, prefix: &str) -> Vec<(String, usize)> {
        let tree = children();
        self.hosts
            .iter()
            .map(|h| {
                let n = descendants_of(&tree, h.child.id())
                    .into_iter()
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| c.starts_with(prefix.as_bytes()))
                    })
                    .count();
                (h.name.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Give host `i` a new host key and restart it (on a new port, whose known_hosts
    /// entry is rewritten with the *old* key): what a re-keyed or impostor host looks like.
    pub fn rekey(&mut self, i: usize) {
        let old_line = {
            let h = &self.hosts[i];
            known_hosts_line(h.port, &h.host_key)
        };
        let dir = self.hosts[i].dir.clone();
        let name = self.hosts[i].name.clone();
        let old_key = std::fs::read_to_string(&self.hosts[i].host_key).expect("old key");
        let old_pub =
            std::fs::read_to_string(self.hosts[i].host_key.with_extension("pub")).expect("pub");
        // Stop the old server before reusing its directory.
        let _ = self.hosts[i].child.kill();
        let _ = self.hosts[i].child.wait();
        let _ = std::fs::remove_file(dir.join("host_key"));
        let _ = std::fs::remove_file(dir.join("host_key.pub"));
        let new = Sshd::start(&dir, &name, &self.dir.join("authorized_keys"));
        // known_hosts keeps the old key, now for the new port.
        std::fs::write(dir.join("old_host_key"), old_key).expect("keep old key");
        std::fs::write(dir.join("old_host_key.pub"), old_pub).expect("keep old pub");
        let kh = std::fs::read_to_string(&self.known_hosts).expect("known_hosts");
        let updated = kh.replace(
            &old_line,
            &known_hosts_line(new.port, &dir.join("old_host_key")),
        );
        std::fs::write(&self.known_hosts, updated).expect("rewrite known_hosts");
        self.hosts[i] = new;
    }

    /// An inventory listing every host with `extra(i)` appended to its entry (YAML lines
    /// indented by four spaces), group `all` with every host.
    pub fn inventory(&self, extra: impl Fn(usize) -> String) -> String {
        let mut s = format!(
            "known_hosts: {}\nidentity: {}\nuser: {}\nhosts:\n",
            self.known_hosts.display(),
            self.client_key.display(),
            self.user
        );
        for (i, h) in self.hosts.iter().enumerate() {
            s.push_str(&format!(
                "  - name: {}\n    address: 127.0.0.1\n    port: {}\n{}",
                h.name,
                h.port,
                extra(i)
            ));
        }
        s.push_str("groups:\n  all: [");
        s.push_str(
            &self
                .hosts
                .iter()
                .map(|h| h.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push_str("]\n");
        s
    }
}
