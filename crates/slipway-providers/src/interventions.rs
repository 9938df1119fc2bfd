//! Human interventions on a live canary that reach it from another process.
//!
//! `slipway resume|promote RUN` write the request to
//! `<runs dir>/<run>/canary-intervention.json` (atomically); the `slipway` driving the run
//! polls it between analysis ticks through [`RunInterventions`], consumes it (a rename,
//! so a request is acted on once) and journals who asked before the controller acts.
//! Pause, abort and rollback travel the engine's durable way instead (the run's control
//! request in the store): [`RunInterventions`] maps them to the controller's pause and
//! rollback, so they reach a canary in the middle of a long analysis step, not only
//! between steps.
//!
//! A request left behind (nobody was driving) is seen by the next driver: a pending
//! promote makes a re-applied deploy step promote the canary it finds running instead of
//! starting a fresh one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slipway_engine::Store;
use slipway_engine::event::Control;
use slipway_engine::target::ProgressSink;
use slipway_rollout::{BoxFuture, Intervention, Interventions};

/// A request recorded for the driver of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// What to do.
    pub intervention: Intervention,
    /// Who asked (the pseudonym the audit chain uses).
    pub by: String,
}

fn path(runs_dir: &Path, run: &str) -> PathBuf {
    runs_dir.join(run).join("canary-intervention.json")
}

/// Record a request for the run's driver (replacing an unconsumed one).
pub fn request(runs_dir: &Path, run: &str, r: &Requested) -> std::io::Result<PathBuf> {
    let p = path(runs_dir, run);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(r).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, &p)?;
    Ok(p)
}

/// The unconsumed request of a run, if any (not consumed).
pub fn pending(runs_dir: &Path, run: &str) -> Option<Requested> {
    std::fs::read(path(runs_dir, run))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Consume the run's request: renamed away first, so two readers never both act on it.
pub fn take(runs_dir: &Path, run: &str) -> Option<Requested> {
    let p = path(runs_dir, run);
    let taken = p.with_extension("json.taken");
    std::fs::rename(&p, &taken).ok()?;
    let r = std::fs::read(&taken)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let _ = std::fs::remove_file(&taken);
    r
}

/// Journal that a request was received, with who asked, before it is acted on.
pub fn report_received(progress: Option<&ProgressSink>, r: &Requested) {
    if let Some(tx) = progress {
        let _ = tx.send(serde_json::json!({
            "event": "intervention_received",
            "intervention": r.intervention,
            "by": r.by,
        }));
    }
}

/// The interventions of one run: its request file, then its control request in the store.
pub struct RunInterventions {
    runs_dir: PathBuf,
    run: String,
    store: Option<Arc<dyn Store>>,
    progress: Option<ProgressSink>,
}

impl RunInterventions {
    /// Interventions of `run`; `progress` journals who asked.
    pub fn new(
        runs_dir: impl Into<PathBuf>,
        run: impl Into<String>,
        store: Option<Arc<dyn Store>>,
        progress: Option<ProgressSink>,
    ) -> Self {
        Self {
            runs_dir: runs_dir.into(),
            run: run.into(),
            store,
            progress,
        }
    }
}

impl Interventions for RunInterventions {
    fn poll(&self) -> BoxFuture<'_, Option<Intervention>> {
        Box::pin(async move {
            if let Some(r) = take(&self.runs_dir, &self.run) {
                report_received(self.progress.as_ref(), &r);
                return Some(r.intervention);
            }
            let store = self.store.as_ref()?;
            // The run's control request stays set until the run changes state, so it is
            // seen on every poll until the controller has acted on it.
            match store.control(&self.run).await.ok().flatten()? {
                Control::Pause => Some(Intervention::Pause),
                // An abort or a rollback must not leave a canary taking traffic: the
                // canary rolls back, and the engine ends the run as the human asked.
                Control::Abort | Control::Rollback => Some(Intervention::Rollback),
            }
        })
    }
}
