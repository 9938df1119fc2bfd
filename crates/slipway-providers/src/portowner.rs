//! Which process serves a loopback port: does the listener that a connection to
//! `127.0.0.1:PORT` reaches belong to an instance's process group?
//!
//! The process target picks a free port by binding port 0 and releasing it, then starts
//! the instance on it. Between the two, another program can take the port; the instance
//! then fails to bind, but its readiness probe can be answered by the stranger (another
//! service's `/ready`, even the stable version of the same service) and the canary would
//! be "ready" with someone else's process behind its address. A successful probe is
//! therefore only believed when the listener is the instance's own.
//!
//! Linux only, through `/proc/net/tcp{,6}` and `/proc/PID/fd` (the `procfs` crate). Where
//! that cannot be read (another OS, a hardened `/proc`), the answer is
//! [`Ownership::Unknown`] and callers keep their old behaviour.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use procfs::net::TcpState;
use procfs::process::FDTarget;

/// Who holds the listening socket a connection to `127.0.0.1:PORT` reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// A process of the given process group.
    Ours,
    /// Another process; its pid and command when they could be read.
    Other {
        /// The owner's pid, when its file descriptors are readable to us.
        pid: Option<i32>,
        /// The owner's command name (`/proc/PID/comm`).
        command: Option<String>,
    },
    /// Nobody listens there.
    NoListener,
    /// `/proc` could not answer.
    Unknown,
}

impl Ownership {
    /// "pid 4711 (nginx)", "another process" when it could not be identified.
    pub fn describe(&self) -> String {
        match self {
            Self::Other {
                pid: Some(p),
                command: Some(c),
            } => format!("pid {p} ({c})"),
            Self::Other { pid: Some(p), .. } => format!("pid {p}"),
            Self::Other { .. } => "another process (not readable to this user)".into(),
            Self::Ours => "the instance".into(),
            Self::NoListener => "nobody".into(),
            Self::Unknown => "unknown".into(),
        }
    }
}

/// Who owns the listener reached by `127.0.0.1:port`, judged against process group `pgid`.
pub fn loopback_listener_owner(port: u16, pgid: u32) -> Ownership {
    let Some(inodes) = loopback_listeners(port) else {
        return Ownership::Unknown;
    };
    if inodes.is_empty() {
        return Ownership::NoListener;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return Ownership::Unknown;
    };
    let mut other = None;
    for p in all.flatten() {
        // Processes that exit while we look, or whose fds are not ours to read, are
        // skipped: an unreadable owner ends as `Other { pid: None }`.
        let Ok(fds) = p.fd() else { continue };
        let holds = fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)));
        if !holds {
            continue;
        }
        let stat = p.stat().ok();
        if stat
            .as_ref()
            .is_some_and(|s| u32::try_from(s.pgrp).is_ok_and(|g| g == pgid))
        {
            return Ownership::Ours;
        }
        other.get_or_insert(Ownership::Other {
            pid: Some(p.pid),
            command: stat.map(|s| s.comm),
        });
    }
    other.unwrap_or(Ownership::Other {
        pid: None,
        command: None,
    })
}

/// Socket inodes of the listeners a connection to `127.0.0.1:port` can reach: bound to
/// 127.0.0.1 exactly when there is one (the kernel prefers the more specific address),
/// else to a wildcard address. `None` when `/proc/net/tcp` is unreadable.
fn loopback_listeners(port: u16) -> Option<BTreeSet<u64>> {
    let mut entries = procfs::net::tcp().ok()?;
    // IPv6 may be disabled: its table is then missing, which is not an error.
    entries.extend(procfs::net::tcp6().unwrap_or_default());
    let listening: Vec<_> = entries
        .into_iter()
        .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
        .collect();
    let exact = |ip: IpAddr| {
        ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
            || ip == IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())
    };
    let wildcard = |ip: IpAddr| {
        ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let pick = |f: &dyn Fn(IpAddr) -> bool| -> BTreeSet<u64> {
        listening
            .iter()
            .filter(|e| f(e.local_address.ip()))
            .map(|e| e.inode)
            .collect()
    };
    let specific = pick(&exact);
    Some(if specific.is_empty() {
        pick(&wildcard)
    } else {
        specific
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn own_pgid() -> u32 {
        let me = procfs::process::Process::myself().unwrap();
        u32::try_from(me.stat().unwrap().pgrp).unwrap()
    }

    #[test]
    fn a_listener_of_this_process_group_is_ours_and_of_another_group_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(loopback_listener_owner(port, own_pgid()), Ownership::Ours);
        // The same socket judged for some other group (a sleeping child of its own).
        let mut child = slipway_stdx::command("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let other = loopback_listener_owner(port, child.id());
        let _ = child.kill();
        let _ = child.wait();
        match other {
            Ownership::Other { pid, command } => {
                assert_eq!(pid, Some(i32::try_from(std::process::id()).unwrap()));
                assert!(command.is_some());
            }
            o => panic!("expected another owner, got {o:?}"),
        }
        drop(l);
        assert_eq!(
            loopback_listener_owner(port, own_pgid()),
            Ownership::NoListener
        );
    }

    #[test]
    fn a_wildcard_listener_counts_when_no_loopback_one_exists() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(loopback_listener_owner(port, own_pgid()), Ownership::Ours);
    }
}
