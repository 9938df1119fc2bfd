//! Integration tests.

mod canary;
mod resume;
mod smoke_gate;
