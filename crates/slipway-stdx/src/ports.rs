//! Ports for servers whose port must be known before they start (written into a config,
//! an inventory or a spec): the lab of `slipway demo --fleet`, and test fixtures.
//!
//! Why not bind port 0 and release it: that port comes from the kernel's ephemeral range,
//! the same range every outgoing connection and every other `bind(0)` draws from, so on a
//! busy machine another program can take it before the server binds it. A port below the
//! ephemeral range is never handed out by the kernel by itself; it stays free between the
//! pick and the bind unless another program picks the same one on purpose. Each process
//! starts at an offset derived from its pid, hands out each port once, and binds every
//! candidate once to check that nothing listens there now.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the ports services are commonly configured on.
const LOW: u32 = 10_000;

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&p: &u32| p > LOW + 1_000 && p <= 65_535)
        .unwrap_or(32_768)
}

/// The first of `n` consecutive loopback ports below the ephemeral range that nothing
/// listens on now and that no earlier call in this process returned; `None` when there
/// are none (every candidate taken).
pub fn fixed_ports(n: u16) -> Option<u16> {
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
        let ports: Vec<u16> = (0..n)
            .filter_map(|k| u16::try_from(LOW + first + k).ok())
            .collect();
        if ports.len() == n as usize
            && ports
                .iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return ports.first().copied();
        }
    }
    None
}

/// Whether `port` is one [`fixed_ports`] may hand out (below the ephemeral range).
pub fn below_ephemeral(port: u16) -> bool {
    (LOW..ephemeral_start()).contains(&u32::from(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = fixed_ports(1);
            assert!(p.is_some_and(below_ephemeral), "{p:?}");
            assert!(seen.insert(p));
        }
        let pair = fixed_ports(2).unwrap_or_default();
        assert!(below_ephemeral(pair) && below_ephemeral(pair + 1));
        assert!(!seen.contains(&Some(pair)) && !seen.contains(&Some(pair + 1)));
        // The premise: what bind(0) hands out is in the ephemeral range, never among them.
        for _ in 0..50 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            assert!(!below_ephemeral(l.local_addr().unwrap().port()));
        }
    }
}
