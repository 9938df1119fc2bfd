//! `Engine::drive` runs as a task of the runtime (issue 20 part 2: fewer thread hand-offs
//! per step); dropping its future must still stop the drive as it did when the drive ran
//! in the caller's future: the step in flight is stopped (its effect's future dropped)
//! and no later step starts — as `slipway-ops` relies on when a lost lease drops it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_engine::event::EngineEvent;
use slipway_engine::target::{Applied, StepContext, StepOutput, TargetError};
use slipway_engine::{DriveOptions, Engine, Store, SystemClock};
use slipway_model::plan::{Facts, plan};
use slipway_model::spec::ReleaseSpec;
use tokio::sync::oneshot;

use crate::common::{ApplyOnly, Backend, Effect, Fresh, on_both, req};

/// Sends on its channel when dropped: the effect's future went away.
struct OnDrop(Option<oneshot::Sender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Applies every step at once, but step `s1`, whose effect tells it began and then never
/// ends (until its future is dropped, which it tells too).
struct Hang {
    entered: Mutex<Option<oneshot::Sender<()>>>,
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

impl Effect for Hang {
    fn kind(&self) -> &'static str {
        "hang"
    }
    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
    ) -> slipway_engine::BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            if ctx.step_id.ends_with("s1") {
                let _guard = OnDrop(self.dropped.lock().unwrap().take());
                if let Some(tx) = self.entered.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<()>().await;
            }
            Ok(Applied::Ran {
                output: StepOutput::default(),
            })
        })
    }
}

async fn dropping_the_drive_stops_the_step_in_flight(b: Backend) {
    let spec: ReleaseSpec = serde_saphyr::from_str(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: d, version: 1.0.0, type: patch }\nservices:\n  svc0:\n    steps:\n      - { name: s0, run: 'true' }\n      - { name: s1, run: 'true' }\n      - { name: s2, run: 'true' }\nenvironments:\n  dev:\n    target: { exec: { parallelism: 1 } }\n",
    )
    .unwrap();
    let p = plan(&spec, "dev", &Facts::default()).unwrap();
    let fresh = Fresh::new(b);
    let store = Arc::new(fresh.open().await.unwrap());
    let (entered_tx, entered) = oneshot::channel();
    let (dropped_tx, dropped) = oneshot::channel();
    let target = Arc::new(ApplyOnly(Hang {
        entered: Mutex::new(Some(entered_tx)),
        dropped: Mutex::new(Some(dropped_tx)),
    }));
    let engine = Engine::new(store.clone(), target, Arc::new(SystemClock));
    let run = engine.create_run(req(p, "op-a")).await.unwrap();
    let mut drive = Box::pin(engine.drive(&run.id, "op-a", DriveOptions::default()));
    tokio::select! {
        out = &mut drive => panic!("the drive ended while s1 hangs: {out:?}"),
        e = entered => e.unwrap(),
    }
    drop(drive);
    // The drive's task, and with it the step's, is stopped: the effect's future is
    // dropped (a drive left running would hold it forever).
    tokio::time::timeout(Duration::from_secs(60), dropped)
        .await
        .expect("the step in flight still runs 60 s after its drive was dropped")
        .unwrap();
    let started: Vec<String> = store
        .journal(&run.id, 0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| match n.event {
            EngineEvent::StepStarted { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started[1].ends_with("s1"), "{started:?}");
}

on_both!(dropping_the_drive_stops_the_step_in_flight);
