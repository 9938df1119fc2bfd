//! A cap on the connections one client holds open on a listening port, shared by every
//! server slipway runs (`slipway serve`, the built-in proxy's traffic and admin ports).
//!
//! Why: each open connection costs the server a file descriptor, and the descriptor
//! table is finite (1,024 by default for a process). A client that opens connections and
//! sends nothing (or a header a byte at a time) can otherwise take every descriptor, and
//! then nobody — not even a health check — is accepted. With a cap per client, one
//! client's connections beyond it are closed as soon as they are accepted; the header-read
//! timeout each server sets closes the ones it is allowed once they sit idle.
//!
//! A client is an IPv4 address, or an IPv6 /64 (one host commonly holds a whole /64, so
//! per-address counting would not bound it). IPv4-mapped IPv6 addresses count as IPv4.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// The open connections per client, and the cap.
#[derive(Debug)]
pub struct ClientLimiter {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ClientSlot {
    limiter: Arc<ClientLimiter>,
    client: IpAddr,
}

/// The key a peer address is counted under.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl ClientLimiter {
    /// A limiter admitting at most `max` open connections per client (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::default(),
        })
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for a connection from `peer`, or `None` when that client already holds
    /// [`Self::max`] open connections (the caller closes the new one).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ClientSlot> {
        let client = client_of(peer);
        // A poisoned map only means a panic elsewhere between two integer updates.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            limiter: Arc::clone(self),
            client,
        })
    }

    /// Open connections of the client `peer` belongs to.
    pub fn open(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client_of(peer)).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_at_most_max_slots_and_a_dropped_slot_is_free_again() {
        let l = ClientLimiter::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let s1 = l.admit(a).unwrap();
        let _s2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none());
        // The mapped form is the same client.
        assert!(l.admit("::ffff:127.0.0.2".parse().unwrap()).is_none());
        assert!(l.admit(b).is_some());
        drop(s1);
        assert!(l.admit(a).is_some());
        // One IPv6 /64 is one client.
        let _x = l.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _y = l.admit("2001:db8::2".parse().unwrap()).unwrap();
        assert!(l.admit("2001:db8::ffff".parse().unwrap()).is_none());
        assert!(l.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
    }
}
