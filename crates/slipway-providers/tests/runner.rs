//! Integration tests.

mod canary;
