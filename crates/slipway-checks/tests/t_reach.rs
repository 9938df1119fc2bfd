//! Reachability against a real listener, a closed port (refused) and a port dropped by
//! an iptables rule inside a network namespace this test creates (filtered).

use std::process::Command;
use std::time::Duration;

use slipway_checks::Outcome;
use slipway_checks::reach::{check_service, probe};

use crate::common::{closed_port, demo_app};

/// A network namespace with a veth pair to the root namespace, deleted on drop.
struct Netns {
    name: String,
    pub peer: String,
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    fn new() -> Option<Self> {
        let pid = std::process::id();
        let name = format!("swchk-{pid}");
        let (a, b) = (format!("swc{pid}a"), format!("swc{pid}b"));
        let net = pid % 250 + 1;
        if !sh(&["ip", "netns", "add", &name]) {
            return None;
        }
        let ns = Self {
            name: name.clone(),
            peer: format!("10.203.{net}.2"),
        };
        let ok = sh(&[
            "ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &name,
        ]) && sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.203.{net}.1/30"),
            "dev",
            &a,
        ]) && sh(&["ip", "link", "set", &a, "up"])
            && sh(&[
                "ip",
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                &format!("10.203.{net}.2/30"),
                "dev",
                &b,
            ])
            && sh(&["ip", "netns", "exec", &name, "ip", "link", "set", &b, "up"])
            && sh(&[
                "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
            ])
            && sh(&[
                "ip", "netns", "exec", &name, "iptables", "-A", "INPUT", "-p", "tcp", "--dport",
                "9", "-j", "DROP",
            ]);
        ok.then_some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth pair.
        sh(&["ip", "netns", "del", &self.name]);
    }
}

#[tokio::test]
async fn a_listening_endpoint_passes_in_tcp_and_http_flavours() {
    let app = demo_app(&[]);
    let t = Duration::from_secs(2);
    assert_eq!(probe(&app.addr, t).await.verdict, Outcome::Pass);
    let http = probe(&format!("http://{}/healthz", app.addr), t).await;
    assert_eq!(http.verdict, Outcome::Pass, "{http:?}");
    assert!(http.measured.starts_with("HTTP 2"), "{http:?}");
    // Something listens, but it is no PostgreSQL: the flavour catches it.
    let pg = probe(&format!("postgres://{}", app.addr), t).await;
    assert_eq!(pg.verdict, Outcome::Fail, "{pg:?}");
}

#[tokio::test]
async fn a_closed_port_fails_as_refused_with_a_hint() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let rows = check_service(
        "api",
        "local",
        std::slice::from_ref(&addr),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].verdict, Outcome::Fail);
    assert_eq!(rows[0].measured, "refused");
    assert_eq!(rows[0].target, format!("local -> {addr}"));
    assert!(rows[0].hint.as_deref().unwrap().contains("nothing listens"));
}

#[tokio::test]
async fn a_dropped_port_in_a_namespace_fails_as_filtered_and_a_closed_one_as_refused() {
    let Some(ns) = Netns::new() else {
        panic!("cannot create a network namespace with iptables here (needs root, ip, iptables)");
    };
    let t = Duration::from_millis(500);
    let filtered = probe(&format!("{}:9", ns.peer), t).await;
    assert_eq!(filtered.verdict, Outcome::Fail, "{filtered:?}");
    assert!(filtered.measured.starts_with("filtered"), "{filtered:?}");
    assert!(filtered.hint.as_deref().unwrap().contains("dropped"));
    assert!(filtered.duration_ms >= 450, "{filtered:?}");
    // The same host answers on a port without the drop rule: refused, quickly.
    let refused = probe(&format!("{}:10", ns.peer), t).await;
    assert_eq!(refused.measured, "refused", "{refused:?}");
}
