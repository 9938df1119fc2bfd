//! The upstream timeout without a timer registration per request.
//!
//! A `tokio::time::timeout` per request inserts and removes a timer-wheel entry every
//! time: about 4 % of the proxy's user-space instructions per request (callgrind, see
//! docs/benchmarks-history.md 4b). Requests on one client connection run one after another (HTTP/1),
//! so one `Sleep` per connection serves them all. It stays armed at the deadline of an
//! earlier request, which is never later than the current request's; when it fires during
//! a request whose own deadline has not come yet, it is re-armed to that deadline. Under
//! steady traffic a connection so re-arms about once per timeout period instead of twice
//! per request, and a client still gets its 504 at its own request's deadline, never
//! earlier.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep, sleep_until};

/// One client connection's timer; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct UpstreamTimer {
    /// `None` before the first request and while a request has it out.
    sleep: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl UpstreamTimer {
    /// Runs `fut` until it finishes (`Some`) or `deadline` passes (`None`).
    pub(crate) async fn limit<F: Future>(&self, deadline: Instant, fut: F) -> Option<F::Output> {
        let mut sleep = self.take(deadline);
        let out = Limited {
            fut: pin!(fut),
            sleep: sleep.as_mut(),
            deadline,
        }
        .await;
        // A request dropped before this point drops its Sleep; the next one makes a new one.
        *self.lock() = Some(sleep);
        out
    }

    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        match self.lock().take() {
            Some(mut sleep) => {
                // Later requests have later deadlines, so this only happens if the clock
                // were not monotonic; a sleep must never stay armed past the deadline.
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => Box::pin(sleep_until(deadline)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<Sleep>>>> {
        // Poison only means a holder panicked while moving an Option: still valid.
        self.sleep.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Limited<'a, F> {
    fut: Pin<&'a mut F>,
    sleep: Pin<&'a mut Sleep>,
    deadline: Instant,
}

impl<F: Future> Future for Limited<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        // At most two rounds: after a re-arm the sleep's deadline is this request's own.
        loop {
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if self.sleep.deadline() >= self.deadline => {
                    return Poll::Ready(None);
                }
                Poll::Ready(()) => {
                    // It fired for an earlier request's deadline.
                    let deadline = self.deadline;
                    self.sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sleep_left_armed_by_an_earlier_request_does_not_cut_a_later_one_short() {
        let timer = UpstreamTimer::default();
        let first = Instant::now() + Duration::from_secs(1);
        assert_eq!(timer.limit(first, async { 1 }).await, Some(1));
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Starts at 0.6 s with its deadline at 1.6 s; the armed sleep fires at 1.0 s.
        let second = Instant::now() + Duration::from_secs(1);
        let slow = tokio::time::sleep(Duration::from_millis(900));
        assert_eq!(timer.limit(second, slow).await, Some(()));
        assert!(
            Instant::now() >= first,
            "the earlier deadline passed during the request"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_kept_after_a_re_arm() {
        let timer = UpstreamTimer::default();
        let first = Instant::now() + Duration::from_secs(1);
        assert_eq!(timer.limit(first, async {}).await, Some(()));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let start = Instant::now();
        let second = start + Duration::from_secs(1);
        let never = std::future::pending::<()>();
        assert_eq!(timer.limit(second, never).await, None);
        assert_eq!(
            Instant::now(),
            second,
            "timed out at its own deadline, not the earlier one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_idle_past_its_deadline_is_re_armed_by_the_next_request() {
        let timer = UpstreamTimer::default();
        assert_eq!(
            timer
                .limit(Instant::now() + Duration::from_millis(10), async {})
                .await,
            Some(())
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_millis(100);
        let fast = tokio::time::sleep(Duration::from_millis(50));
        assert_eq!(timer.limit(deadline, fast).await, Some(()));
        let never = std::future::pending::<()>();
        let deadline = Instant::now() + Duration::from_millis(100);
        assert_eq!(timer.limit(deadline, never).await, None);
        assert_eq!(Instant::now(), deadline);
    }
}
