//! Ports for test servers.
//!
//! A port picked by binding port 0 and dropping the listener ([`free_port`]) comes from
//! the kernel's ephemeral range, the same range every outgoing connection and every other
//! `bind(0)` draws from: on a busy machine another program can take it before the server
//! binds it. A fixture that cannot pick another port on "address already in use" (a port
//! written into a spec, a script or a config file) takes [`fixed_port`] instead: a port
//! below the ephemeral range, which the kernel never hands out by itself.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A port nothing listens on right now (see the module doc for the race this leaves).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The lowest port [`fixed_port`] hands out: above the ports services are configured on.
const LOW: u32 = 10_000;

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&p: &u32| p > LOW + 1_000)
        .unwrap_or(32_768)
}

/// A port below the kernel's ephemeral range that nothing listens on now, and that no
/// other call in this process has returned. Neither `bind(0)` nor an outgoing connection
/// takes such a port, so it stays free between the pick and the server's bind unless a
/// fixed-port fixture of another process picks it too: each process starts at an offset
/// derived from its pid, and every port is bound once to check it is free.
pub fn fixed_port() -> u16 {
    fixed_ports(1)
}

/// The first of `n` consecutive ports as [`fixed_port`] picks one (an instance per
/// replica on `port + k`).
pub fn fixed_ports(n: u16) -> u16 {
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = u32::from(n.max(1));
    let span = ephemeral_start() - LOW;
    let start = *START.get_or_init(|| std::process::id().wrapping_mul(7_919) % span);
    for _ in 0..span {
        let first = (start + NEXT.fetch_add(n, Ordering::Relaxed)) % span;
        if first + n > span {
            continue; // would run into the ephemeral range
        }
        // Every candidate is below the ephemeral start, itself at most 65535.
        let ports: Vec<u16> = (0..n)
            .map(|k| u16::try_from(LOW + first + k).unwrap())
            .collect();
        if ports
            .iter()
            .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return ports[0];
        }
    }
    panic!("no {n} free ports between {LOW} and the ephemeral range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_are_distinct_and_outside_the_ephemeral_range() {
        let start = ephemeral_start();
        let ports: std::collections::BTreeSet<u16> = (0..200).map(|_| fixed_port()).collect();
        assert_eq!(ports.len(), 200);
        let pair = fixed_ports(2);
        assert!(!ports.contains(&pair) && !ports.contains(&(pair + 1)));
        assert!(
            ports
                .iter()
                .all(|&p| u32::from(p) >= LOW && u32::from(p) < start)
        );
        // The premise: what bind(0) hands out is in the ephemeral range, never among them.
        for _ in 0..50 {
            assert!(u32::from(free_port()) >= start);
        }
    }
}
