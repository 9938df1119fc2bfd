//! The real `demo-app` executable behind the proxy: flags, first stdout line, SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Empty;

use crate::support::{connect, eventually, get, proxy};

/// Builds the `demo-app` binary once (a dev-dependency builds only its library) and
/// returns its path. `DEMO_APP_BIN` overrides it.
fn demo_app_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("DEMO_APP_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "demo-app", "--bin", "demo-app"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building demo-app failed");
        // The test binary lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("demo-app")
    })
    .clone()
}

struct Spawned {
    child: Child,
    addr: SocketAddr,
}

fn spawn(args: &[&str]) -> Spawned {
    let mut child = Command::new(demo_app_bin())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Spawned { child, addr }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn real_binary_behind_the_proxy() {
    let stable = spawn(&["--port", "0", "--version", "1.0.0"]);
    let canary = spawn(&["--port", "0", "--version", "2.0.0", "--fail-after", "3"]);
    let proxy = proxy(&[stable.addr], &[canary.addr], 100).await;
    let mut conn = connect::<Empty<Bytes>>(proxy.local_addr()).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (resp, _) = get(&mut conn, "/", &[]).await;
        assert_eq!(resp.headers()["x-version"], "2.0.0");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 500, 500], "--fail-after 3");
    let (resp, _) = get(&mut conn, "/healthz", &[]).await;
    assert_eq!(resp.status(), 200, "health stays green: only traffic fails");
    assert_eq!(proxy.snapshot().canary.status_5xx(), 2);

    // SIGTERM: a graceful exit with status 0.
    let mut stable = stable;
    let pid = stable.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exit = None;
    eventually("demo-app to exit on SIGTERM", || {
        exit = stable.child.try_wait().unwrap();
        exit.is_some()
    })
    .await;
    assert!(exit.unwrap().success());
    let (resp, _) = get(&mut conn, "/", &[("x-slipway-route", "stable")]).await;
    assert_eq!(resp.status(), 502);
}
