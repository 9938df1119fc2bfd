//! The real PostgreSQL server of this test binary: slipway-testkit's harness (one server
//! per test binary, started on first use, password authentication over TCP, a fresh
//! database per test), under the name the store's tests import it by.

pub use slipway_testkit::pg::*;
pub use slipway_testkit::ports::free_port;
