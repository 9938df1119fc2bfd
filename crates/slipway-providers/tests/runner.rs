//! Integration tests.

mod canary;
mod config;
mod ports;
mod resume;
mod smoke_gate;
mod ssh;
mod sshd;
