//! The built-in proxy's fixed front-door address (`router: { builtin: { listen } }`)
//! through the real `slipway` binary: real demo-app instances, a real proxy process, real
//! HTTP on the port the spec names — and the port taken, or moved under a running proxy,
//! refused before anything starts (exit 2) with the address and the fix.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MARK_VAR: &str = "SLIPWAY_FRONT_DOOR_TEST";

/// One test's world: its directory (spec, store, process state), PATH with demo-app.
pub(crate) struct Env {
    dir: tempfile::TempDir,
    mark: String,
}

impl Env {
    pub(crate) fn new() -> Self {
        let dir = crate::demo_app_dir();
        let mark = dir.path().display().to_string();
        Self { dir, mark }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `slipway ARGS` to completion: (exit code, stdout, stderr).
    pub(crate) fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = crate::slipway()
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.path().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env(
                "SLIPWAY_STORE",
                format!("sqlite://{}/slipway.db", self.path().display()),
            )
            .env(MARK_VAR, &self.mark)
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A release of `api` at `version` (one instance), with `router` and `strategy`
    /// (YAML mappings, indented under the environment) written as given.
    pub(crate) fn spec(&self, version: &str, router: &str, strategy: &str) -> PathBuf {
        self.spec_with(version, "", router, strategy)
    }

    /// [`Self::spec`] with `args` added to demo-app's command line (e.g. `--error-rate 0.3`).
    pub(crate) fn spec_with(
        &self,
        version: &str,
        args: &str,
        router: &str,
        strategy: &str,
    ) -> PathBuf {
        let text = format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}} {args}\", replicas: 1 }}
    readiness: {{ http: /ready, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    router: {router}
    strategy: {strategy}
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 3
    metrics:
      - {{ name: error-rate, max: 0.05 }}
    on_failure: rollback
"
        );
        let p = self.path().join(format!("release-{version}.yaml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `slipway deploy --env live -f SPEC`: (exit code, stdout, stderr).
    pub(crate) fn deploy(&self, spec: &Path) -> (i32, String, String) {
        self.run(&["deploy", "--env", "live", "-f", &spec.display().to_string()])
    }

    pub(crate) fn proxy_state(&self) -> slipway_providers::remote::ProxyState {
        slipway_providers::remote::read_state(&self.path().join("process/live/proxies/api.json"))
            .expect("the api proxy recorded itself")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever the test did: nothing it caused outlives it.
        crate::kill_marked(MARK_VAR, &self.mark);
    }
}

/// A port free right now, written into a spec: outside the ephemeral range, where no
/// other test's connection can take it before the proxy binds it.
pub(crate) fn free_port() -> u16 {
    slipway_testkit::ports::fixed_port()
}

/// One HTTP/1.1 exchange on a fresh connection: (status, head, body).
pub(crate) fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

const BIG_BANG: &str = "{ big_bang: {} }";

#[test]
fn the_proxy_serves_on_the_address_the_spec_fixes_across_releases() {
    let env = Env::new();
    let port = free_port();
    let router = format!("{{ builtin: {{ listen: \"127.0.0.1:{port}\" }} }}");
    let (code, out, err) = env.deploy(&env.spec("1.0.0", &router, BIG_BANG));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(env.proxy_state().traffic.port(), port);
    let (status, _, body) = get(port, "/version", &[]);
    assert_eq!((status, body.trim()), (200, "1.0.0"));

    // The next release keeps the same front door (the proxy found, not moved).
    let pid = env.proxy_state().pid;
    let (code, out, err) = env.deploy(&env.spec("2.0.0", &router, BIG_BANG));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(env.proxy_state().pid, pid);
    let (status, _, body) = get(port, "/version", &[]);
    assert_eq!((status, body.trim()), (200, "2.0.0"));
}

#[test]
fn a_taken_front_door_port_is_refused_naming_it_and_the_fix() {
    let env = Env::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let router = format!("{{ builtin: {{ listen: \"{taken}\" }} }}");
    let (code, out, err) = env.deploy(&env.spec("1.0.0", &router, BIG_BANG));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&taken.to_string()) && err.contains("router.builtin.listen"),
        "{err}"
    );
    assert!(
        err.contains(&format!("free port {}", taken.port())),
        "no fix in {err}"
    );
    // Nothing was started or recorded: no run, no proxy.
    assert!(!env.path().join("process/live/proxies/api.json").exists());
    let (_, history, _) = env.run(&["history", "--output", "json"]);
    assert!(!history.contains("1.0.0"), "{history}");
    drop(holder);
}

#[test]
fn moving_the_front_door_of_a_running_proxy_is_refused_with_the_fix() {
    let env = Env::new();
    let first = free_port();
    let router = |p: u16| format!("{{ builtin: {{ listen: \"127.0.0.1:{p}\" }} }}");
    let (code, out, err) = env.deploy(&env.spec("1.0.0", &router(first), BIG_BANG));
    assert_eq!(code, 0, "{out}\n{err}");
    let second = free_port();
    let (code, out, err) = env.deploy(&env.spec("2.0.0", &router(second), BIG_BANG));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{first}"))
            && err.contains(&format!("127.0.0.1:{second}"))
            && err.contains("slipway proxy stop api"),
        "{err}"
    );
    // The running front door was left alone, still serving the first release.
    let (status, _, body) = get(first, "/version", &[]);
    assert_eq!((status, body.trim()), (200, "1.0.0"));
}
