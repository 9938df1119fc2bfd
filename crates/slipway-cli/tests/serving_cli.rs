//! Production-grade serving (issue 16 part 4), through the real binary with real HTTP(S):
//! HTTPS from certificate and key files (a CA and a leaf made with rcgen; the CLI's
//! client trusts the CA through `SSL_CERT_FILE`), `Strict-Transport-Security` and a
//! `__Host-`/`Secure` session cookie on TLS, `/readyz` and the Prometheus `/metrics` of
//! the server itself, and a SIGTERM that hands the runs the server drives over: stopped
//! where they are, the environment's lease released, and another server takes one over.
//!
//! Processes the tests cause are found by their mark and killed when each test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::People;

const MARK_VAR: &str = "SLIPWAY_SERVING_TEST";

/// A release whose one step waits for `GO` in its working directory.
const WAITING: &str = "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api:
    steps:
      - { name: install, run: \"true\", undo: \"true\" }
      - { name: wait-for-go, run: \"while [ ! -f GO ]; do sleep 0.05; done\", undo: \"true\" }
environments:
  staging: { target: { exec: {} } }
";

struct World {
    dir: tempfile::TempDir,
    store: String,
    mark: String,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}/s.db", dir.path().display());
        let mark = dir.path().display().to_string();
        Self { dir, store, mark }
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("slipway"))
            .current_dir(self.dir.path())
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_OUTPUT")
            .env("SLIPWAY_STORE", &self.store)
            .env(MARK_VAR, &self.mark)
            .args(["serve", "--listen", "127.0.0.1:0", "--output", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line {line:?}: {e}; {:?}", child.try_wait()));
        Server {
            addr: ready["listening"].as_str().unwrap().to_owned(),
            url: ready["url"].as_str().unwrap().to_owned(),
            child,
            stdout,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        crate::kill_marked(MARK_VAR, &self.mark);
    }
}

struct Server {
    addr: String,
    url: String,
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slipway --server URL ARGS` as `token` from `cwd`, trusting `ca` when given.
fn remote(url: &str, token: &str, cwd: &Path, ca: Option<&Path>, args: &[&str]) -> (i32, String) {
    let mut c = crate::slipway();
    c.current_dir(cwd)
        .env("SLIPWAY_SERVER", url)
        .env("SLIPWAY_TOKEN", token)
        .env(MARK_VAR, "client")
        .args(args)
        .timeout(Duration::from_secs(60));
    if let Some(ca) = ca {
        c.env("SSL_CERT_FILE", ca).env_remove("SSL_CERT_DIR");
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// One HTTP/1.0 exchange over `stream`: status, lowercased head, body.
fn exchange(mut stream: impl Read + Write, req: &str) -> (u16, String, String) {
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after HTTP/1.0: what was read counts.
    let _ = stream.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn http(addr: &str, req: &str) -> (u16, String, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(s, req)
}

/// A certificate authority and a leaf for localhost/127.0.0.1 signed by it, as files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "slipway serve test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        cert: write("cert.pem", &leaf.pem()),
        key: write("key.pem", &key.serialize_pem()),
        ca_der: ca.der().to_vec(),
        _dir: dir,
    }
}

/// One HTTPS exchange with `addr`, verifying the server against `ca` as `localhost`.
fn https(addr: &str, ca_der: &[u8], req: &str) -> (u16, String, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(rustls::StreamOwned::new(conn, tcp), req)
}

#[test]
fn https_from_cert_files_with_hsts_secure_cookies_and_the_cli_through_it() {
    let world = World::new();
    let people = People::new(&world.store, "alice");
    let pki = pki();
    let server = world.serve(&[
        "--tls-cert",
        &pki.cert.display().to_string(),
        "--tls-key",
        &pki.key.display().to_string(),
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let port = server.addr.rsplit(':').next().unwrap();
    let host = format!("localhost:{port}");

    let (status, head, _) = https(
        &server.addr,
        &pki.ca_der,
        &format!("GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    // Signing in over TLS: the session cookie is __Host- and Secure.
    let body = format!("token={}&next=%2F", people.token("alice"));
    let (status, head, _) = https(
        &server.addr,
        &pki.ca_der,
        &format!(
            "POST /login HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{head}"));
    assert!(cookie.contains("__host-slipway_session="), "{cookie}");
    assert!(cookie.contains("; secure"), "{cookie}");

    // Plain HTTP to the TLS port gets no answer.
    let (status, _, _) = http(
        &server.addr,
        &format!("GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    );
    assert_eq!(status, 0);

    // The CLI through HTTPS, trusting the CA; refused without it.
    let url = format!("https://{host}");
    let (code, out) = remote(
        &url,
        people.token("alice"),
        world.dir.path(),
        Some(&pki.ca),
        &["history"],
    );
    assert_eq!(code, 0, "{out}");
    // A trust store without the CA (a PEM file with no certificate in it): refused, exit 8.
    let (code, out) = remote(
        &url,
        people.token("alice"),
        world.dir.path(),
        Some(&pki.key),
        &["history"],
    );
    assert_eq!(code, 8, "{out}");
}

#[test]
fn readyz_and_the_servers_own_metrics() {
    let world = World::new();
    let people = People::new(&world.store, "alice");
    let server = world.serve(&[]);
    let a = server.addr.as_str();
    let (status, _, body) = http(a, &format!("GET /readyz HTTP/1.0\r\nHost: {a}\r\n\r\n"));
    assert_eq!(status, 200, "{body}");

    // A run through the server, then its state counted.
    let release = tempfile::tempdir().unwrap();
    std::fs::write(
        release.path().join("release.yaml"),
        WAITING.replace("while [ ! -f GO ]; do sleep 0.05; done", "true"),
    )
    .unwrap();
    let spec = release.path().join("release.yaml").display().to_string();
    let (code, out) = remote(
        &server.url,
        people.token("alice"),
        release.path(),
        None,
        &["deploy", "-f", &spec, "--env", "staging"],
    );
    assert_eq!(code, 0, "{out}");
    let (status, head, body) = http(a, &format!("GET /metrics HTTP/1.0\r\nHost: {a}\r\n\r\n"));
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert!(
        body.contains("slipway_runs{state=\"succeeded\"} 1"),
        "{body}"
    );
    assert!(body.contains("slipway_store_up 1"), "{body}");
    // Latency by route pattern (never a run id), with buckets.
    assert!(
        body.contains("slipway_http_request_duration_seconds_bucket{route=\"/api/v1/runs/{id}/status\",method=\"GET\",status=\"200\",le=\"0.005\"}"),
        "{body}"
    );
    assert!(body.contains("slipway_http_request_duration_seconds_count{route=\"/api/v1/bundles\",method=\"POST\",status=\"201\"} 1"), "{body}");
}

#[test]
fn sigterm_hands_the_runs_the_server_drives_over_to_another_server() {
    let world = World::new();
    let people = People::new(&world.store, "alice");
    let mut first = world.serve(&[]);
    let release = tempfile::tempdir().unwrap();
    std::fs::write(release.path().join("release.yaml"), WAITING).unwrap();
    let spec = release.path().join("release.yaml").display().to_string();
    let token = people.token("alice");
    let (code, out) = remote(
        &first.url,
        token,
        release.path(),
        None,
        &["deploy", "-f", &spec, "--env", "staging", "--detach"],
    );
    assert_eq!(code, 0, "{out}");
    // stdout (the run id) comes before stderr in `out`.
    let run = out.lines().next().unwrap().trim().to_owned();
    // Until the first step is done (the second then waits for GO).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = remote(&first.url, token, release.path(), None, &["logs", &run]);
        if out.contains("ok api/install") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let pid = first.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut line = String::new();
    first.stdout.read_line(&mut line).unwrap();
    let stopped: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(stopped["stopped"], "SIGTERM");
    assert_eq!(
        stopped["handed_over"],
        serde_json::json!([run]),
        "{stopped}"
    );
    let status = first.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // The environment is free at once (no waiting for the lease to lapse), and another
    // server continues the run where the journal says.
    let o = crate::slipway()
        .env("SLIPWAY_STORE", &world.store)
        .env("SLIPWAY_TOKEN", token)
        .args(["env", "leases", "--output", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{o:?}");
    assert!(!text.contains(&run), "the lease is still held: {text}");
    // Another server finds the run nobody drives and takes it over by itself.
    let second = world.serve(&["--takeover-interval", "200ms"]);
    let workdir = std::fs::read_dir(world.dir.path().join("bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::write(workdir.join("GO"), "").unwrap();
    let (code, out) = remote(
        &second.url,
        token,
        release.path(),
        None,
        &["wait", &run, "--timeout", "30"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("run {run} succeeded")), "{out}");
}
