//! Ports for test servers.
//!
//! A port picked by binding port 0 and dropping the listener ([`free_port`]) comes from
//! the kernel's ephemeral range, the same range every outgoing connection and every other
//! `bind(0)` draws from: on a busy machine another program can take it before the server
//! binds it. A fixture that cannot pick another port on "address already in use" (a port
//! written into a spec, a script or a config file) takes [`fixed_port`] instead: a port
//! below the ephemeral range, which the kernel never hands out by itself.

/// A port nothing listens on right now (see the module doc for the race this leaves).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A port below the kernel's ephemeral range that nothing listens on now, and that no
/// other call in this process has returned (`slipway_stdx::ports`, which says why).
pub fn fixed_port() -> u16 {
    fixed_ports(1)
}

/// The first of `n` consecutive ports as [`fixed_port`] picks one (an instance per
/// replica on `port + k`).
pub fn fixed_ports(n: u16) -> u16 {
    slipway_stdx::ports::fixed_ports(n).expect("a free port below the ephemeral range")
}
