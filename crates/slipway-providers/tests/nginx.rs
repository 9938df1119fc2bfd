//! The nginx router against a real nginx (upstream file + `nginx -t` + reload) with real
//! backends and real HTTP traffic through it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use slipway_providers::nginx::{NginxRouter, UpstreamState};
use slipway_rollout::TrafficRouter;

use crate::router_support::{Daemon, backend, canary_share, get, held_backend};

/// The flags that point nginx at a test's own prefix, config and error log.
fn flags(dir: &Path) -> String {
    format!(
        "-p {d} -c {d}/nginx.conf -e {d}/error.log",
        d = dir.display()
    )
}

/// nginx on a loopback port whose `http` block includes `upstream.conf` (upstream `app`)
/// and proxies everything to it; the upstream file starts with `initial`.
pub fn start_nginx(initial: &UpstreamState) -> (Daemon, NginxRouter) {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = crate::router_support::free_port();
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.path().join("tmp").join(sub)).unwrap();
        }
        let conf = format!(
            "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/upstream.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_read_timeout 30s;
        }}
    }}
}}
"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let router = NginxRouter::new(
            dir.path().join("upstream.conf"),
            "app",
            Some(format!("nginx -t -q {}", flags(dir.path()))),
            Some(format!("nginx -s reload {}", flags(dir.path()))),
        );
        router.write_initial(initial).unwrap();
        let child = std::process::Command::new("nginx")
            .args(flags(dir.path()).split(' '))
            .args(["-g", "daemon off;"])
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("nginx is installed (apt-get install nginx; scripts/test.sh does)");
        let mut n = Daemon { child, dir, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        while std::time::Instant::now() < deadline {
            if matches!(n.child.try_wait(), Ok(Some(_))) {
                break; // port taken by a stranger: try another
            }
            if rt.block_on(router.served()).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return (n, router);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        errors.push(std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default());
    }
    panic!("nginx did not start in three attempts: {errors:?}");
}

fn front(n: &Daemon) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], n.port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_real_traffic_and_read_back_after_each_reload() {
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let canary = backend("canary", Duration::ZERO, 0.0).await;
    let (n, r) = tokio::task::block_in_place(|| {
        start_nginx(&UpstreamState {
            weight: 0,
            stable: vec![stable.local_addr()],
            canary: Vec::new(),
            ..UpstreamState::default()
        })
    });
    assert_eq!(r.verify_weight().await, Some(0));
    assert_eq!(canary_share(front(&n), 30).await, 0);
    r.set_pools(&[stable.local_addr()], &[canary.local_addr()])
        .await
        .unwrap();
    assert_eq!(r.verify_weight().await, Some(0), "a new canary starts at 0");
    let total = 200;
    for w in [10u8, 50, 100, 0] {
        r.set_weight(w).await.unwrap();
        // set_weight returns once nginx serves the new file: no waiting here.
        assert_eq!(
            r.verify_weight().await,
            Some(w),
            "weight {w} read back from nginx"
        );
        let seen = canary_share(front(&n), total).await;
        match w {
            0 => assert_eq!(seen, 0, "0%: no request may reach the canary"),
            100 => assert_eq!(seen, total, "100%: every request goes to the canary"),
            50 => assert!((70..=130).contains(&seen), "50%: {seen}/{total}"),
            _ => assert!((5..=40).contains(&seen), "10%: {seen}/{total}"),
        }
    }
    // Promotion's shape: the same addresses in both pools (duplicates are fine for nginx),
    // then the canary alone as stable.
    r.set_weight(100).await.unwrap();
    r.set_pools(&[canary.local_addr()], &[canary.local_addr()])
        .await
        .unwrap();
    r.set_weight(0).await.unwrap();
    r.set_pools(&[canary.local_addr()], &[]).await.unwrap();
    assert_eq!(r.verify_weight().await, Some(0));
    assert_eq!(
        canary_share(front(&n), 50).await,
        50,
        "only the new version answers"
    );
    assert_eq!(r.canary_in_flight().await, None, "nginx cannot tell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_across_a_reload_completes() {
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let mut canary = held_backend("canary").await;
    let (n, r) = tokio::task::block_in_place(|| {
        start_nginx(&UpstreamState {
            weight: 100,
            stable: vec![stable.local_addr()],
            canary: vec![canary.addr],
            ..UpstreamState::default()
        })
    });
    let addr = front(&n);
    let slow = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::timeout(Duration::from_secs(10), canary.arrived.recv())
        .await
        .expect("the request reached the canary")
        .unwrap();
    // Rollback's changes (two reloads) while the canary still holds the request.
    r.set_weight(0).await.unwrap();
    r.set_pools(&[stable.local_addr()], &[]).await.unwrap();
    assert_eq!(
        canary_share(addr, 20).await,
        0,
        "no new request reaches the canary"
    );
    assert!(!slow.is_finished(), "the request is still in flight");
    canary.release.send(true).unwrap();
    let (status, version) = slow.await.unwrap().unwrap();
    assert_eq!(
        (status, version.as_str()),
        (200, "canary"),
        "the request in flight across two reloads completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_nginx_test_restores_the_previous_file_and_keeps_traffic() {
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let canary = backend("canary", Duration::ZERO, 0.0).await;
    let (n, r) = tokio::task::block_in_place(|| {
        start_nginx(&UpstreamState {
            weight: 0,
            stable: vec![stable.local_addr()],
            canary: vec![canary.local_addr()],
            ..UpstreamState::default()
        })
    });
    let before = std::fs::read_to_string(r.file()).unwrap();
    // The user breaks the main config; Slipway's next change must not reach nginx.
    let conf = n.dir.path().join("nginx.conf");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, good.replace("access_log off;", "acces_log off;")).unwrap();
    let e = r.set_weight(50).await.unwrap_err().to_string();
    assert!(
        e.contains("unknown directive \"acces_log\""),
        "nginx's own message is in the error: {e}"
    );
    assert!(e.contains("previous upstream file was restored"), "{e}");
    assert_eq!(
        std::fs::read_to_string(r.file()).unwrap(),
        before,
        "restored byte for byte"
    );
    assert_eq!(
        r.verify_weight().await,
        Some(0),
        "nginx still serves the old weight"
    );
    assert_eq!(canary_share(front(&n), 40).await, 0, "traffic unaffected");
    // Fixed config: the same change goes through.
    std::fs::write(&conf, good).unwrap();
    r.set_weight(100).await.unwrap();
    assert_eq!(canary_share(front(&n), 20).await, 20);
}

/// Routers keep nothing: a router built afresh (as by a `slipway` restarted after a crash)
/// reads the pools and weight back from the file and nginx and carries the weight over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_router_continues_from_what_nginx_serves() {
    let stable = backend("stable", Duration::ZERO, 0.0).await;
    let canary = backend("canary", Duration::ZERO, 0.0).await;
    let other = backend("canary", Duration::ZERO, 0.0).await;
    let (n, first) = tokio::task::block_in_place(|| {
        start_nginx(&UpstreamState {
            weight: 0,
            stable: vec![stable.local_addr()],
            canary: vec![canary.local_addr()],
            ..UpstreamState::default()
        })
    });
    first.set_weight(50).await.unwrap();
    let (file, test, reload) = (
        first.file().to_path_buf(),
        format!("nginx -t -q {}", flags(n.dir.path())),
        format!("nginx -s reload {}", flags(n.dir.path())),
    );
    drop(first);
    let second = NginxRouter::new(file, "app", Some(test), Some(reload));
    assert_eq!(
        second.verify_weight().await,
        Some(50),
        "read back, not remembered"
    );
    second
        .set_pools(
            &[stable.local_addr()],
            &[canary.local_addr(), other.local_addr()],
        )
        .await
        .unwrap();
    assert_eq!(
        second.verify_weight().await,
        Some(50),
        "the weight carries over"
    );
    let seen = canary_share(front(&n), 200).await;
    assert!(
        (70..=130).contains(&seen),
        "50% over 1+2 servers: {seen}/200"
    );
}
