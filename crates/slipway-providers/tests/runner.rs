//! Integration tests.

mod canary;
mod config;
mod haproxy;
mod nginx;
mod ports;
mod resume;
mod router_support;
mod smoke_gate;
mod ssh;
mod sshd;
