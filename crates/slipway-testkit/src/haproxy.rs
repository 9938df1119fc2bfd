//! A real HAProxy for the router tests: the configuration they drive (an admin socket,
//! one frontend, `backend app` with stable and canary server slots the router fills) and
//! the daemon run on it in the foreground, so the test owns its process.

use std::path::{Path, PathBuf};

/// Writes `dir/haproxy.cfg`: admin socket `dir/admin.sock`, a frontend on
/// `127.0.0.1:port`, `backend app` with `slots` stable and `slots` canary server slots
/// (`stable1`.., `canary1`.., disabled until a router sets them) after the `extra` lines.
/// Returns the file's path.
pub fn write_config(dir: &Path, port: u16, slots: u32, extra: &str) -> PathBuf {
    let cfg = format!(
        "global
  stats socket {s} mode 600 level admin
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{port}
  default_backend app
backend app
  balance roundrobin
{extra}
  server-template stable {slots} 127.0.0.1:1 disabled
  server-template canary {slots} 127.0.0.1:1 disabled
",
        s = socket(dir).display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The admin socket of the HAProxy configured in `dir`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// `haproxy -db -f dir/haproxy.cfg`, in master-worker mode (`-W`, as systemd runs it:
/// a reload is a SIGUSR2 to the master) when `master_worker`; its stderr in
/// `dir/haproxy.err`.
pub fn spawn(dir: &Path, master_worker: bool) -> std::process::Child {
    let mut cmd = std::process::Command::new("haproxy");
    if master_worker {
        cmd.arg("-W");
    }
    cmd.arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.err")).unwrap())
        .spawn()
        .expect("haproxy is installed (apt-get install haproxy; scripts/test.sh does)")
}

/// Whether the HAProxy of `dir` answers on its admin socket and on `port`.
pub fn answers(dir: &Path, port: u16) -> bool {
    std::os::unix::net::UnixStream::connect(socket(dir)).is_ok()
        && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// What HAProxy said on stderr in `dir`, for a failure message.
pub fn errors(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("haproxy.err")).unwrap_or_default()
}

/// The pid of the worker answering the admin socket of `dir`, if one does.
pub fn worker(dir: &Path) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket(dir)).ok()?;
    s.write_all(b"show info\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .map(str::to_owned)
}

/// Until a worker other than `old` answers the admin socket of `dir` and `port` takes
/// connections (at most 20 s); its pid.
pub fn wait_worker(dir: &Path, port: u16, old: Option<&str>) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(pid) = worker(dir)
            && old != Some(pid.as_str())
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new HAProxy worker after 20 s: {}",
            errors(dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Reload the master-worker HAProxy `master` of `dir` as `systemctl reload haproxy` does
/// (SIGUSR2 to the master): a new worker from the configuration alone, answering on
/// `port` before this returns.
pub fn reload(master: &std::process::Child, dir: &Path, port: u16) {
    let old = worker(dir).expect("a worker answers before the reload");
    let ok = std::process::Command::new("kill")
        .args(["-USR2", &master.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -USR2 the HAProxy master");
    wait_worker(dir, port, Some(&old));
}
