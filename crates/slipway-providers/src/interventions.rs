//! Human interventions on a live canary that reach it from another process — or another
//! machine sharing the store.
//!
//! `slipway resume|promote RUN` journal the request (`intervention_requested`, chained like
//! every journal entry) when someone else drives the run; the driver polls the run's
//! journal between analysis ticks through [`RunInterventions`], settles the request
//! (`intervention_settled`, `taken`) durably before acting on it — so a request is acted on
//! at most once, by whichever process drives the run — and the controller acts. Pause,
//! abort and rollback travel the engine's control request instead (also in the store):
//! [`RunInterventions`] maps them to the controller's pause and rollback, so they reach a
//! canary in the middle of a long analysis step, not only between steps.
//!
//! A request left behind (nobody was driving) is seen by the next driver: a pending
//! promote makes a re-applied deploy step promote the canary it finds running instead of
//! starting a fresh one. One that no canary took by the end of a drive is settled
//! `dropped` ([`drop_pending`]), so it cannot surprise a later canary of the run.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slipway_engine::event::{Control, EngineEvent};
use slipway_engine::store::JournalRecord;
use slipway_engine::target::ProgressSink;
use slipway_engine::{Store, StoreError};
use slipway_rollout::{BoxFuture, Intervention, Interventions};

/// A request recorded for the driver of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// What to do.
    pub intervention: Intervention,
    /// Who asked (the pseudonym the audit chain uses).
    pub by: String,
}

/// The name a request is journaled under (`resume`, `promote`).
fn name(i: Intervention) -> String {
    serde_json::to_value(i)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Journal a request for the run's driver (replacing an unsettled one). `by` is the
/// asker's pseudonym; only `resume` and `promote` travel this way.
pub async fn request(
    store: &dyn Store,
    run: &str,
    what: Intervention,
    by: &str,
) -> Result<(), StoreError> {
    let digest = store
        .run(run)
        .await?
        .ok_or_else(|| StoreError::NoSuchRun(run.to_owned()))?
        .digest;
    store
        .commit(vec![JournalRecord {
            run_id: run.to_owned(),
            digest,
            at: slipway_stdx::now(),
            actor: by.to_owned(),
            event: EngineEvent::InterventionRequested {
                intervention: name(what),
            },
        }])
        .await
}

/// Where a reader of a run's journal stands: entries up to `after` folded in.
#[derive(Debug, Default)]
struct Scan {
    after: i64,
    /// Every request at or before this seq is settled.
    settled: i64,
    /// The newest request seen: (its seq, the request).
    latest: Option<(i64, Requested)>,
}

impl Scan {
    /// Fold the run's journal entries after the last ones read.
    async fn advance(&mut self, store: &dyn Store, run: &str) -> Result<(), StoreError> {
        for n in store.journal(run, self.after).await? {
            self.after = self.after.max(n.seq);
            match n.event {
                EngineEvent::InterventionRequested { intervention } => {
                    // A request this build cannot read (none today) is not acted on.
                    if let Ok(i) = serde_json::from_value(serde_json::Value::String(intervention)) {
                        self.latest = Some((
                            n.seq,
                            Requested {
                                intervention: i,
                                by: n.actor,
                            },
                        ));
                    }
                }
                EngineEvent::InterventionSettled { request, .. } => {
                    self.settled = self.settled.max(request);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn pending(&self) -> Option<&(i64, Requested)> {
        self.latest.as_ref().filter(|(seq, _)| *seq > self.settled)
    }
}

/// The unsettled request of a run, if any (not settled by reading it).
pub async fn pending(store: &dyn Store, run: &str) -> Result<Option<Requested>, StoreError> {
    let mut scan = Scan::default();
    scan.advance(store, run).await?;
    Ok(scan.pending().map(|(_, r)| r.clone()))
}

/// Settle the request at `seq` durably with `outcome`, on behalf of its asker.
async fn settle(
    store: &dyn Store,
    run: &str,
    seq: i64,
    by: &str,
    outcome: &str,
) -> Result<(), StoreError> {
    let digest = store.run(run).await?.map(|r| r.digest).unwrap_or_default();
    store
        .commit(vec![JournalRecord {
            run_id: run.to_owned(),
            digest,
            at: slipway_stdx::now(),
            actor: by.to_owned(),
            event: EngineEvent::InterventionSettled {
                request: seq,
                outcome: outcome.to_owned(),
            },
        }])
        .await
}

/// Take the run's request: settled `taken` in the store before it is returned, so it is
/// acted on at most once. Only the run's driver (the holder of its claim) takes requests.
pub async fn take(store: &dyn Store, run: &str) -> Result<Option<Requested>, StoreError> {
    let mut scan = Scan::default();
    scan.advance(store, run).await?;
    take_from(&mut scan, store, run).await
}

async fn take_from(
    scan: &mut Scan,
    store: &dyn Store,
    run: &str,
) -> Result<Option<Requested>, StoreError> {
    let Some((seq, r)) = scan.pending().cloned() else {
        return Ok(None);
    };
    settle(store, run, seq, &r.by, "taken").await?;
    scan.settled = seq;
    Ok(Some(r))
}

/// Settle a request no canary took by the end of a drive as `dropped`. Returns it.
pub async fn drop_pending(store: &dyn Store, run: &str) -> Result<Option<Requested>, StoreError> {
    let mut scan = Scan::default();
    scan.advance(store, run).await?;
    let Some((seq, r)) = scan.pending().cloned() else {
        return Ok(None);
    };
    settle(store, run, seq, &r.by, "dropped").await?;
    Ok(Some(r))
}

/// Journal that a request was received, with who asked, before it is acted on (a progress
/// line for the live display; the settlement is the durable record).
pub fn report_received(progress: Option<&ProgressSink>, r: &Requested) {
    if let Some(tx) = progress {
        let _ = tx.send(serde_json::json!({
            "event": "intervention_received",
            "intervention": r.intervention,
            "by": r.by,
        }));
    }
}

/// The interventions of one run: its journaled requests, then its control request.
pub struct RunInterventions {
    run: String,
    store: Arc<dyn Store>,
    progress: Option<ProgressSink>,
    /// The journal read so far: each poll reads only the entries after it.
    scan: tokio::sync::Mutex<Scan>,
}

impl RunInterventions {
    /// Interventions of `run`; `progress` shows who asked.
    pub fn new(
        run: impl Into<String>,
        store: Arc<dyn Store>,
        progress: Option<ProgressSink>,
    ) -> Self {
        Self {
            run: run.into(),
            store,
            progress,
            scan: tokio::sync::Mutex::new(Scan::default()),
        }
    }
}

impl Interventions for RunInterventions {
    fn poll(&self) -> BoxFuture<'_, Option<Intervention>> {
        Box::pin(async move {
            {
                let mut scan = self.scan.lock().await;
                // A store that cannot be read now is read again at the next tick; the
                // control request below is the same store's, so it waits too.
                if scan.advance(self.store.as_ref(), &self.run).await.is_ok()
                    && let Ok(Some(r)) = take_from(&mut scan, self.store.as_ref(), &self.run).await
                {
                    report_received(self.progress.as_ref(), &r);
                    return Some(r.intervention);
                }
            }
            // The run's control request stays set until the run changes state, so it is
            // seen on every poll until the controller has acted on it.
            match self.store.control(&self.run).await.ok().flatten()? {
                Control::Pause => Some(Intervention::Pause),
                // An abort or a rollback must not leave a canary taking traffic: the
                // canary rolls back, and the engine ends the run as the human asked.
                Control::Abort | Control::Rollback => Some(Intervention::Rollback),
            }
        })
    }
}
