//! Ports for test servers.
//!
//! A port picked by binding port 0 and dropping the listener can be taken by another
//! program before the server binds it: a fixture must confirm its server holds the port
//! (a log line of its own, a banner) and pick another on "address already in use".

/// A port nothing listens on right now (see the module doc for the race this leaves).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
