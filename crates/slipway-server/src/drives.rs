//! The runs this server drives (a deploy it started, a resume or promote of a run nobody
//! drove), so a shutdown hands them over instead of leaving them stuck.
//!
//! Handing over ([`Drives::hand_over`]) stops each drive where it is — the same as a crash
//! of the process, which the engine is built to survive: the journal says what happened,
//! and a resume observes a step in flight before anything is re-applied — and then gives
//! back what the drive held: its claim on the run (dropped with the drive) and the
//! environment's lease (released now rather than left to lapse at expiry). Another server,
//! or a person, can then `resume` the run at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use slipway_engine::store::Store;

/// One drive: its task, and the run once known (a deploy learns its run id from the
/// run's first journal entry).
struct Drive {
    task: tokio::task::AbortHandle,
    run: Arc<Mutex<Option<String>>>,
    /// Resolves once the task's future is gone (finished or dropped by an abort), and
    /// with it the drive's claim on the run and its lease renewer.
    gone: tokio::sync::oneshot::Receiver<()>,
}

/// Sends on drop: carried by a drive's task, so its end is observable however it ends.
struct Gone(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Gone {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The drives of one server.
#[derive(Default)]
pub(crate) struct Drives {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Drive>>,
}

/// Where a drive writes its run id once it has one.
#[derive(Clone)]
pub(crate) struct RunSlot(Arc<Mutex<Option<String>>>);

impl RunSlot {
    /// Record the run the drive is of.
    pub(crate) fn set(&self, run: &str) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(run.to_owned());
        }
    }
}

impl Drives {
    /// Spawn `fut` as a tracked drive of `run` (when known; else set it later through the
    /// slot given to `make`); it leaves the registry when it ends.
    pub(crate) fn spawn<F, T>(
        self: &Arc<Self>,
        run: Option<&str>,
        make: impl FnOnce(RunSlot) -> F,
    ) -> tokio::task::JoinHandle<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Mutex::new(run.map(str::to_owned)));
        let fut = make(RunSlot(slot.clone()));
        let me = self.clone();
        let (tx, gone) = tokio::sync::oneshot::channel();
        // Registered before the task can finish, so its removal never comes first.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn(async move {
            // Locals drop in reverse order: the drive's future before `_gone`, also when
            // the task is aborted while the future waits.
            let _gone = Gone(Some(tx));
            let fut = fut;
            let out = fut.await;
            me.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            out
        });
        live.insert(
            id,
            Drive {
                task: task.abort_handle(),
                run: slot,
                gone,
            },
        );
        task
    }

    /// Whether a drive of `run` is under way here.
    pub(crate) fn drives(&self, run: &str) -> bool {
        self.live.lock().is_ok_and(|g| {
            g.values()
                .any(|d| d.run.lock().is_ok_and(|r| r.as_deref() == Some(run)))
        })
    }

    /// How many drives are under way.
    pub(crate) fn count(&self) -> usize {
        self.live.lock().map(|g| g.len()).unwrap_or_default()
    }

    /// Stop every drive and give back the environments' leases they held: the runs handed
    /// over, by id.
    pub(crate) async fn hand_over(&self, store: &dyn Store) -> Vec<String> {
        let drives: Vec<Drive> = self
            .live
            .lock()
            .map(|mut g| g.drain().map(|(_, d)| d).collect())
            .unwrap_or_default();
        let mut runs = Vec::new();
        let mut gone = Vec::new();
        for d in drives {
            d.task.abort();
            if let Some(run) = d.run.lock().ok().and_then(|g| g.clone()) {
                runs.push(run);
            }
            gone.push(d.gone);
        }
        // The claims and lease renewers go with the futures; only then are the leases
        // released, or a renewal could take one back.
        for g in gone {
            let _ = g.await;
        }
        if let Ok(leases) = store.leases().await {
            for l in leases.iter().filter(|l| runs.contains(&l.holder)) {
                // Best effort: a lease not released lapses at its expiry anyway.
                let _ = store.release_lease(&l.environment, Some(&l.holder)).await;
            }
        }
        runs.sort();
        runs
    }
}
