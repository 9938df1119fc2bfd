//! An instance's port taken by a stranger between the pick and the instance's bind: the
//! stranger answers the readiness probe, but the instance must not be taken for ready on
//! someone else's listener. The real `demo-app` binary as the instance, a plain listener
//! of this test process (another process group) as the stranger.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slipway_model::spec::{Probe, RunSpec};
use slipway_providers::process::{ProcessTarget, ServiceProcess};
use slipway_rollout::{Instances, Role};

use crate::canary::demo_app_bin;

/// A listener answering every request `200 stranger`, counting them.
fn stranger() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            n.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nstranger",
            );
        }
    });
    (port, served)
}

fn target(dir: &std::path::Path) -> ProcessTarget {
    let svc = ServiceProcess {
        run: RunSpec {
            image: None,
            command: format!(
                "{} --port {{{{ port }}}} --version {{{{ version }}}} --threads 1",
                demo_app_bin().display()
            ),
            replicas: 1,
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
        },
        readiness: Some(Probe {
            http: Some("/ready".into()),
            ..Probe::default()
        }),
        env: BTreeMap::new(),
        workdir: dir.to_owned(),
    };
    let mut t = ProcessTarget::new(dir.join("instances"), BTreeMap::from([("web".into(), svc)]));
    t.ready_timeout = Duration::from_secs(20);
    t.stop_grace = Duration::from_secs(2);
    t
}

async fn body(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_port_taken_by_a_stranger_is_not_readiness_and_another_port_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (taken, served) = stranger();
    let t = target(dir.path()).with_first_ports(vec![taken]);
    let started = t.start("web", "2.0.0", 1, Role::Canary).await.unwrap();
    assert_eq!(started.len(), 1);
    let i = &started[0];
    assert_ne!(i.addr.port(), taken, "ready on the stranger's port: {i:?}");
    // The instance itself answers at its address.
    assert!(
        body(i.addr, "/version").await.contains("2.0.0"),
        "{:?}",
        body(i.addr, "/version").await
    );
    // The stranger was asked (the probe reached it) but not believed.
    assert!(served.load(Ordering::SeqCst) >= 1);
    t.stop(&started).await.unwrap();
}

#[tokio::test]
async fn a_port_taken_every_time_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (taken, _) = stranger();
    let t = target(dir.path()).with_first_ports(vec![taken, taken, taken]);
    let err = t
        .start("web", "2.0.0", 1, Role::Canary)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not get a port of its own"), "{err}");
    assert!(
        err.contains(&format!("{taken} (held by pid {}", std::process::id())),
        "{err}"
    );
    // Nothing was left running or recorded.
    assert!(t.running("web").alive.is_empty());
}
