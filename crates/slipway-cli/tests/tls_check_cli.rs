//! `slipway check --only reach` on `tls://` endpoints through the real binary, against a
//! real TLS server (`openssl s_server`) whose CA and certificate this test issues with the
//! openssl CLI: the right name under the declared CA (`?ca=` relative to the spec) passes
//! with the days to expiry, the wrong name and an unknown CA fail with hints, and the
//! spec's URL-shaped endpoints validate.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::slipway;

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA (`name.pem`/`name.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server` with `srv.pem` on a free port, ready when the listener on that port
/// is its own: a port picked free can be taken by another program before s_server binds
/// it (then s_server exits and another port is tried), and a connect alone would reach
/// that stranger.
fn s_server(d: &Path) -> (u16, Server) {
    use slipway_providers::portowner::{Ownership, loopback_listener_owner};
    use std::os::unix::process::CommandExt;
    for _ in 0..5 {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut server = Server(
            Command::new("openssl")
                .current_dir(d)
                .args(["s_server", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-cert", "srv.pem", "-key", "srv.key"])
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if loopback_listener_owner(port, server.0.id()) == Ownership::Ours {
                return (port, server);
            }
            if server.0.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "openssl s_server never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("openssl s_server could not listen on five free ports in a row");
}

#[test]
fn tls_endpoints_are_handshaken_and_judged_by_chain_name_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other");
    // A leaf for `localhost`, valid 30 days, issued by `ca`.
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(d.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "30",
            "-extfile",
            "ext",
        ],
    );
    let (port, _server) = s_server(d);
    let spec = d.join("release.yaml");
    let endpoint = |host: &str, ca: &str| format!("\"tls://{host}:{port}?ca={ca}\"");
    let write = |endpoints: &[String]| {
        std::fs::write(
            &spec,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: x, version: 1.0.0, type: patch }}
services:
  api:
    endpoints: [ {} ]
    steps: [ {{ name: install, run: \"true\" }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
",
                endpoints.join(", ")
            ),
        )
        .unwrap();
    };
    let check = || {
        let o = slipway()
            .args([
                "check", "--env", "staging", "--only", "reach", "--output", "json", "-f",
            ])
            .arg(&spec)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code(), v)
    };

    // s_server answers one client at a time: one endpoint per run.
    write(&[endpoint("localhost", "ca.pem")]);
    let (code, v) = check();
    assert_eq!(code, Some(0), "{v:#}");
    let row = &v["checks"][0];
    assert_eq!(row["verdict"], "pass", "{v:#}");
    assert!(
        row["measured"]
            .as_str()
            .unwrap()
            .contains("trusted, expires in 29 day(s)")
            || row["measured"]
                .as_str()
                .unwrap()
                .contains("trusted, expires in 30 day(s)"),
        "{v:#}"
    );

    write(&[endpoint("127.0.0.1", "ca.pem")]);
    let (code, v) = check();
    assert_eq!(code, Some(1), "{v:#}");
    let row = &v["checks"][0];
    assert_eq!(row["verdict"], "fail", "{v:#}");
    assert!(
        row["measured"]
            .as_str()
            .unwrap()
            .contains("not valid for `127.0.0.1`"),
        "{v:#}"
    );
    assert!(
        row["hint"].as_str().unwrap().contains("subjectAltName"),
        "{v:#}"
    );

    write(&[endpoint("localhost", "other.pem")]);
    let (code, v) = check();
    assert_eq!(code, Some(1), "{v:#}");
    let row = &v["checks"][0];
    assert!(
        row["measured"].as_str().unwrap().contains("untrusted"),
        "{v:#}"
    );
    assert!(row["hint"].as_str().unwrap().contains("ca=FILE"), "{v:#}");
}
