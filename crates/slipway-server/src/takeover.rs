//! Several servers, one store, no run lost: every `takeover_interval` each server looks
//! for runs a server started (their working directory is an unpacked bundle of this
//! store's layout) that are neither finished nor paused and that nobody drives — the run's
//! claim is free, because the server driving it died — and takes each over
//! (`slipway_ops::runs::take_over`), continuing where the journal says.
//!
//! Exactly one server drives a run: the claim is the driver's lease (on PostgreSQL a
//! session advisory lock, gone the moment its process dies, or when TCP keepalives drop a
//! vanished host's session after about 30 s), and a drive takes it before anything else,
//! so two servers reaching for the same run at once leave one driving and the other's
//! attempt refused. Runs started by a CLI (`slipway deploy` in a shell) are left alone:
//! their people resume them.

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::event::RunState;
use slipway_ops::events::{OpsEvent, Reporter};

use crate::AppState;

/// Runs looked at on each pass, newest first.
const SCAN: u32 = 500;

/// A run younger than this is not taken over: between creating a run and claiming it, the
/// server deploying it checks the lease and readiness, and a takeover in that window would
/// drive the run from under the deploy that just made it.
const YOUNG: Duration = Duration::from_secs(2);

/// Counts a takeover once the drive has its first journal entry (it holds the claim).
struct Counted {
    state: AppState,
    counted: std::sync::atomic::AtomicBool,
}

impl Reporter for Counted {
    fn report(&self, event: OpsEvent) {
        if matches!(event, OpsEvent::Notice(_))
            && !self
                .counted
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.state.metrics.took_over();
        }
    }
}

/// One pass: start a takeover of every run that needs one; the runs taken on.
pub(crate) async fn pass(state: &AppState) -> Vec<String> {
    let Ok(runs) = state.store.runs(SCAN).await else {
        // The store is down: nothing can be driven now; the next pass tries again.
        return Vec::new();
    };
    let bundles = state.session.layout.dir().join("bundles");
    let now = slipway_stdx::now();
    let mut started = Vec::new();
    for r in runs {
        let age = now.duration_since(r.created_at);
        if r.state.is_terminal()
            || age < jiff::SignedDuration::try_from(YOUNG).unwrap_or_default()
            || r.state == RunState::Paused
            || !std::path::Path::new(&r.workdir).starts_with(&bundles)
            || state.drives.drives(&r.id)
        {
            continue;
        }
        if slipway_ops::runs::driven(state.store.as_ref(), &r.id)
            .await
            .unwrap_or(true)
        {
            continue;
        }
        let session = state.session.clone();
        let reporter: Arc<dyn Reporter> = Arc::new(Counted {
            state: state.clone(),
            counted: Default::default(),
        });
        let id = r.id.clone();
        // A refused attempt (another server took it first) ends the task; nothing to say.
        let _task = state.drives.spawn(Some(&r.id), |_| async move {
            let _ = slipway_ops::runs::take_over(&session, &id, reporter).await;
        });
        started.push(r.id);
    }
    started
}

/// Passes every `interval` until the process ends.
pub(crate) async fn run(state: AppState, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        pass(&state).await;
    }
}
