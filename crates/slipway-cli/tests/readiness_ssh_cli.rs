//! Readiness on an ssh environment is measured on the target hosts, over the deploy's own
//! SSH sessions, each row naming its host — through the real binary against real sshd
//! servers that differ the way hosts do: each runs in a mount namespace of its own with
//! its own /etc/passwd, /etc/hosts and (host2) a 16 MiB file system as its workdir.
//!
//! The endpoint `db.internal:PORT` resolves on host1 only (its /etc/hosts) and not at all
//! on this machine, so a pass proves that the host connected; the user exists on host1
//! only; the disk need fits host1's disk but not host2's tmpfs.

use std::path::{Path, PathBuf};

use crate::slipway;
use crate::ssh_cli::sshd::{self, Fleet, Isolation};

fn fleet() -> Fleet {
    Fleet::start_isolated(2, |i, dir: &Path| {
        Some(if i == 0 {
            Isolation {
                passwd_extra: Some(
                    "svc-web:x:2001:2001:web service:/nonexistent:/usr/sbin/nologin\n".into(),
                ),
                hosts: Some("127.0.0.1 localhost\n127.0.0.1 db.internal\n".into()),
                ..Isolation::default()
            }
        } else {
            Isolation {
                passwd_extra: Some(String::new()),
                hosts: Some("127.0.0.1 localhost\n".into()),
                tmpfs: Some((dir.join("data"), "16m".into())),
                ..Isolation::default()
            }
        })
    })
}

/// The spec directory, with an inventory whose hosts work in `<host dir>/data`.
fn setup(fleet: &Fleet, service: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = fleet.dir.join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<PathBuf> = fleet.hosts.iter().map(|h| h.dir.join("data")).collect();
    for d in &data {
        std::fs::create_dir_all(d).unwrap();
    }
    let states: Vec<PathBuf> = fleet.hosts.iter().map(|h| h.dir.join("state")).collect();
    std::fs::write(
        dir.join("hosts.yaml"),
        fleet.inventory(|i| {
            format!(
                "    workdir: {}\n    state_dir: {}\n",
                data[i].display(),
                states[i].display()
            )
        }),
    )
    .unwrap();
    std::fs::write(
        dir.join("release.yaml"),
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  web:
    steps: [ {{ name: install, run: 'touch installed' }} ]
{service}environments:
  fleet:
    target: {{ ssh: {{ inventory: hosts.yaml, group: all, parallelism: 2 }} }}
"
        ),
    )
    .unwrap();
    (dir, data)
}

fn run(dir: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let o = slipway()
        .env(
            "SLIPWAY_STORE",
            format!("sqlite://{}", dir.join("store.db").display()),
        )
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (
        o.status.code(),
        v,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `(check, host, verdict)` of every row.
fn rows(rows: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = rows
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {rows:#}"))
        .iter()
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_owned(),
                r["host"].as_str().unwrap_or("this machine").to_owned(),
                r["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn t(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

#[test]
fn reach_capacity_and_accounts_run_on_each_host_over_the_deploys_sessions() {
    let db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = db.local_addr().unwrap().port();
    let fleet = fleet();
    let (dir, data) = setup(
        &fleet,
        &format!(
            "    endpoints: [\"db.internal:{port}\"]
    accounts: [ {{ unix: svc-web }} ]
    resources: {{ disk: 100Mi }}
"
        ),
    );
    let spec = dir.join("release.yaml").display().to_string();

    let (code, v, err) = run(
        &dir,
        &["deploy", "--env", "fleet", "--output", "json", "-f", &spec],
    );
    assert_eq!(code, Some(3), "{v:#}\n{err}");
    assert_eq!(
        rows(&v["readiness"]),
        vec![
            t("accounts.unix", "host1", "pass"),
            t("accounts.unix", "host2", "fail"),
            t("capacity.disk", "host1", "pass"),
            t("capacity.disk", "host2", "fail"),
            t("reach.web", "host1", "pass"),
            t("reach.web", "host2", "fail"),
        ],
        "{v:#}"
    );
    let reach2 = v["readiness"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "reach.web" && r["host"] == "host2")
        .unwrap();
    assert_eq!(reach2["target"], format!("host2 -> db.internal:{port}"));
    assert!(
        reach2["measured"]
            .as_str()
            .unwrap()
            .contains("the host could not connect"),
        "{reach2:#}"
    );
    // No run exists, nothing ran (host2's workdir is its own tmpfs, seen only there).
    assert!(!data[0].join("installed").exists());
    let (_, h, _) = run(&dir, &["history", "--output", "json"]);
    assert_eq!(h.as_array().map(Vec::len), Some(0), "{h:#}");
    // Readiness used the session the host-key check opened: one login per host.
    for h in &fleet.hosts {
        assert_eq!(h.logins(), 1, "logins on {}", h.name);
    }

    // By hand, the same rows for one kind.
    let (code, v, err) = run(
        &dir,
        &[
            "check", "--env", "fleet", "--only", "reach", "--output", "json", "-f", &spec,
        ],
    );
    assert_eq!(code, Some(1), "{v:#}\n{err}");
    assert_eq!(
        rows(&v["checks"]),
        vec![
            t("reach.web", "host1", "pass"),
            t("reach.web", "host2", "fail")
        ],
        "{v:#}"
    );

    // What every host has: the deploy goes ahead, its steps on the same sessions.
    let before: Vec<usize> = fleet.hosts.iter().map(sshd::Sshd::logins).collect();
    let (dir, data) = setup(
        &fleet,
        &format!(
            "    endpoints: [\"127.0.0.1:{port}\"]
    accounts: [ {{ unix: root }} ]
    resources: {{ disk: 1Mi }}
"
        ),
    );
    let (code, v, err) = run(
        &dir,
        &["deploy", "--env", "fleet", "--output", "json", "-f", &spec],
    );
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert!(
        rows(&v["readiness"])
            .iter()
            .all(|(_, h, verdict)| verdict == "pass" && h.starts_with("host")),
        "{v:#}"
    );
    assert!(data[0].join("installed").exists());
    let (_, st, _) = run(&dir, &["status", "--output", "json"]);
    let mut ran: Vec<&str> = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["result"] == "ran")
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, ["host1", "host2"], "{st:#}");
    for (h, b) in fleet.hosts.iter().zip(before) {
        assert_eq!(
            h.logins(),
            b + 1,
            "one login for checks and steps on {}",
            h.name
        );
    }
}

/// BENCHMARKS.md: the wall time the readiness gate (reach, capacity and an account on
/// every host) adds to a deploy of 10 and 50 sshd hosts, and `slipway check` of the same
/// on its own. `cargo test -p slipway-cli --test runner readiness_gate_bench -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement, not a test: run by hand for BENCHMARKS.md"]
fn readiness_gate_bench() {
    use std::time::Instant;
    let db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = db.local_addr().unwrap().port();
    // Accept and drop every probe's connection: a listener nobody accepts on fills its
    // backlog (128) after a few deploys of 50 hosts, and the kernel then drops new SYNs —
    // every later reach row read "filtered: no answer", a failure of the harness, not of
    // the gate.
    std::thread::spawn(move || {
        for c in db.incoming() {
            drop(c);
        }
    });
    let mut rows = Vec::new();
    for n in [10usize, 50] {
        let fleet = Fleet::start(n);
        let with = format!(
            "    endpoints: [\"127.0.0.1:{port}\"]
    accounts: [ {{ unix: root }} ]
    resources: {{ disk: 1Mi }}
"
        );
        let (mut plain, mut gated, mut checks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            for (service, times) in [("", &mut plain), (with.as_str(), &mut gated)] {
                let (dir, _) = setup(&fleet, service);
                let spec = dir.join("release.yaml").display().to_string();
                let started = Instant::now();
                let (code, v, err) = run(
                    &dir,
                    &["deploy", "--env", "fleet", "--output", "json", "-f", &spec],
                );
                times.push(started.elapsed().as_secs_f64());
                assert_eq!(code, Some(0), "{v:#}\n{err}");
            }
            let (dir, _) = setup(&fleet, &with);
            let spec = dir.join("release.yaml").display().to_string();
            let started = Instant::now();
            let (code, v, err) = run(
                &dir,
                &["check", "--env", "fleet", "--output", "json", "-f", &spec],
            );
            checks.push(started.elapsed().as_secs_f64());
            assert_eq!(code, Some(0), "{v:#}\n{err}");
            assert_eq!(v["checks"].as_array().unwrap().len(), 3 * n, "{v:#}");
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (p, g, c) = (median(&mut plain), median(&mut gated), median(&mut checks));
        rows.push(format!("| {n} | {p:.3} | {g:.3} | {:.3} | {c:.3} |", g - p));
    }
    // A markdown table: scripts/bench.py parses it into BENCHMARKS.md's block.
    println!("Pre-deploy readiness gate (reach, capacity, account on every host), medians of 5");
    println!(
        "| hosts | deploy without readiness (s) | deploy with readiness (s) | gate (s) | slipway check alone (s) |"
    );
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
