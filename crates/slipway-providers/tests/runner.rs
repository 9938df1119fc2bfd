//! Integration tests.

mod canary;
mod resume;
