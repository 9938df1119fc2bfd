//! Integration tests.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]

mod canary;
mod config;
mod haproxy;
mod nginx;
mod ports;
mod resume;
mod router_support;
mod secrets_out;
mod smoke_gate;
mod ssh;
mod sshd;
