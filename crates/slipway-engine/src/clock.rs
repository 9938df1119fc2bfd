//! Time, behind a trait so gate tests can fix and advance it instead of waiting.

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use crate::BoxFuture;

/// The engine's only source of wall-clock time and of waiting for it.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
    /// Wait for `d` of this clock's time to pass.
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        slipway_stdx::now()
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that only moves when told to, or when someone sleeps on it (the sleep advances
/// it at once). Lets a test cross a deployment window without waiting for it.
#[derive(Debug)]
pub struct FakeClock {
    now: Mutex<Timestamp>,
}

impl FakeClock {
    /// A clock frozen at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            now: Mutex::new(now),
        }
    }
    /// Move the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
        *now = now.checked_add(span).unwrap_or(Timestamp::MAX);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()> {
        self.advance(d);
        Box::pin(tokio::task::yield_now())
    }
}
