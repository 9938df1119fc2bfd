//! Shared helpers: the demo-app binary, a child process stopped on drop, free ports.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The real demo-app binary, built on demand (a dev-dependency only builds the library).
pub fn demo_app_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DEMO_APP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("demo-app");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-q", "-p", "demo-app", "--bin", "demo-app"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building demo-app failed");
    });
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A demo-app process, killed on drop.
pub struct App {
    child: Child,
    pub addr: String,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start demo-app with extra flags; its first stdout line names the address.
pub fn demo_app(args: &[&str]) -> App {
    let mut child = Command::new(demo_app_bin())
        .args(["--port", "0", "--threads", "1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "listening on 127.0.0.1:PORT"
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(
        addr.contains(':'),
        "no address in demo-app's first line: {line:?}"
    );
    App { child, addr }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
