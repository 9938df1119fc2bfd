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
