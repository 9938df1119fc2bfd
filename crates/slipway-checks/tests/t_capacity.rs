//! Capacity against this machine's real free memory, CPU and disk, and a real busy port.

use slipway_checks::Outcome;
use slipway_checks::capacity::{Demand, check, measure, parse_size};

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("256Mi"), Some(256 * 1024 * 1024));
    assert_eq!(parse_size("1G"), Some(1_000_000_000));
    assert_eq!(parse_size("lots"), None);
}

#[test]
fn a_small_release_fits_and_an_oversized_one_fails_with_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let free = measure(dir.path()).unwrap();
    assert!(free.memory > 0 && free.disk > 0 && free.cores >= 1.0);
    let small = Demand {
        service: "api".into(),
        instances: 2,
        cpu: Some(0.0),
        memory: parse_size("1Mi"),
        disk: parse_size("1Mi"),
        ports: vec![],
    };
    let rows = check(&[small], &free);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.verdict == Outcome::Pass), "{rows:#?}");
    // Four instances of half the free memory each (2 replicas + canary surge): too much.
    let half = free.memory / 2;
    let big = Demand {
        service: "api".into(),
        instances: 4,
        memory: Some(half),
        cpu: Some(free.cores * 2.0),
        ..Demand::default()
    };
    let rows = check(&[big], &free);
    let mem = rows.iter().find(|r| r.check == "capacity.memory").unwrap();
    assert_eq!(mem.verdict, Outcome::Fail, "{mem:?}");
    assert!(mem.measured.contains("MiB") && mem.expected.contains("available"));
    let cpu = rows.iter().find(|r| r.check == "capacity.cpu").unwrap();
    assert_eq!(cpu.verdict, Outcome::Fail, "{cpu:?}");
}

#[test]
fn a_busy_port_fails_and_a_free_one_passes() {
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let p = busy.local_addr().unwrap().port();
    let free_port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let free = measure(dir.path()).unwrap();
    let d = Demand {
        service: "api".into(),
        instances: 1,
        ports: vec![p, free_port],
        ..Demand::default()
    };
    let rows = check(&[d], &free);
    assert_eq!(rows[0].verdict, Outcome::Fail, "{rows:#?}");
    assert_eq!(rows[1].verdict, Outcome::Pass, "{rows:#?}");
}
