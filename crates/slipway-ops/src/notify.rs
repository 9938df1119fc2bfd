//! Run notifications: a `slipway_govern::notify::Notifier` for the plan's sinks, fed the
//! engine's notices, and the handover pack of a succeeded run delivered to the sinks that
//! subscribe to `handover` (the support team's channels), configured from the environment (`SLIPWAY_WEBHOOK_SECRET`,
//! `SLIPWAY_SMTP_HOST`, `SLIPWAY_SMTP_PORT`, `SLIPWAY_SMTP_FROM`, `SLIPWAY_SMTP_TLS` = none
//! | starttls | tls, and `SLIPWAY_NOTIFY_CA_FILE` for a private CA). Failed deliveries are
//! reported as events; they never change a run's outcome.

use std::path::PathBuf;
use std::sync::Arc;

use slipway_engine::{EngineEvent, Notice, RunState, Store};
use slipway_govern::notify::{Delivery, Notifier, NotifySettings, RollbackInfo, SECRET_ENV};
use slipway_model::plan::Plan;
use slipway_model::recovery::RehearsalRecord;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::events::{OpsEvent, Reporter};

/// Settings from the environment; `secret://env/NAME` values of the plan's environment are
/// resolved only to be masked in every message.
fn settings(plan: &Plan, workdir: &str) -> NotifySettings {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let d = NotifySettings::default();
    let redact = plan
        .env
        .vars
        .values()
        .filter_map(|v| v.0.strip_prefix("secret://env/"))
        .filter_map(env)
        .collect();
    NotifySettings {
        webhook_secret: env(SECRET_ENV),
        smtp_host: env("SLIPWAY_SMTP_HOST").unwrap_or(d.smtp_host.clone()),
        smtp_port: env("SLIPWAY_SMTP_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or(d.smtp_port),
        smtp_from: env("SLIPWAY_SMTP_FROM").unwrap_or(d.smtp_from.clone()),
        // An unknown value falls back to plain, and the delivery warning says so.
        smtp_tls: env("SLIPWAY_SMTP_TLS")
            .and_then(|v| slipway_govern::notify::SmtpTls::parse(&v))
            .unwrap_or_default(),
        ca_file: env("SLIPWAY_NOTIFY_CA_FILE").map(Into::into),
        workdir: workdir.into(),
        redact,
        ..d
    }
}

/// Notifications being delivered for one drive (or manual rollback).
pub struct Notifications {
    tx: Option<UnboundedSender<(Notice, Option<RollbackInfo>)>>,
    task: Option<JoinHandle<Vec<Delivery>>>,
    /// What a rollback's messages are built from.
    context: Option<Context>,
}

/// Where the details of a rollback come from: the run's records in the store, its plan,
/// and the rehearsal records.
struct Context {
    store: Arc<dyn Store>,
    plan: Plan,
    rehearsals: PathBuf,
}

impl Notifications {
    /// Start delivering notifications for a plan with sinks (nothing when it has none).
    /// With `store` and `rehearsals` (the directory of rollback rehearsal records), a
    /// rollback's messages say which services go back to which version, how long the
    /// last rehearsal took, and what serves once it is over.
    pub fn start(
        plan: Option<&Plan>,
        workdir: &str,
        store: Option<Arc<dyn Store>>,
        rehearsals: Option<PathBuf>,
    ) -> Self {
        let Some(plan) = plan.filter(|p| !p.notifications.is_empty()) else {
            return Self {
                tx: None,
                task: None,
                context: None,
            };
        };
        let notifier = Notifier::new(plan, settings(plan, workdir));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let context = match (store, rehearsals) {
            (Some(store), Some(rehearsals)) => Some(Context {
                store,
                plan: plan.clone(),
                rehearsals,
            }),
            _ => None,
        };
        Self {
            tx: Some(tx),
            task: Some(tokio::spawn(notifier.run_with(rx))),
            context,
        }
    }

    /// A committed journal entry the notifier may turn into a message.
    pub async fn send(&self, n: &Notice) {
        let Some(t) = &self.tx else { return };
        let info = match (&n.event, &self.context) {
            (EngineEvent::StateChanged { from, to, .. }, Some(cx))
                if *to == RunState::RollingBack || *from == RunState::RollingBack =>
            {
                Some(
                    cx.rollback_info(&n.run_id, *to == RunState::RollingBack)
                        .await,
                )
            }
            _ => None,
        };
        let _ = t.send((n.clone(), info));
    }

    /// Wait for pending deliveries; report the ones that failed.
    pub async fn finish(mut self, reporter: &dyn Reporter) {
        self.tx = None;
        let Some(task) = self.task.take() else { return };
        let Ok(deliveries) = task.await else { return };
        for d in deliveries {
            if let Some(e) = d.error {
                reporter.report(OpsEvent::DeliveryFailed {
                    sink: d.sink,
                    target: d.target,
                    event: serde_json::to_value(d.event)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    attempts: d.attempts,
                    error: e,
                });
            }
        }
    }
}

impl Context {
    /// At the start of a rollback: the services this run changed (a step applied or in
    /// flight) and the version each goes back to, with the expected duration. At its end:
    /// the version each service of the release is on.
    async fn rollback_info(&self, run: &str, starting: bool) -> RollbackInfo {
        let steps = self.store.steps(run).await.unwrap_or_default();
        let journal = self.store.journal(run, 0).await.unwrap_or_default();
        let before = match self.store.run(run).await {
            Ok(Some(r)) => crate::views::versions_before(self.store.as_ref(), &r)
                .await
                .unwrap_or_default(),
            _ => Default::default(),
        };
        let versions = crate::views::service_versions(&self.plan, &steps, &journal, &before);
        if starting {
            RollbackInfo {
                restoring: versions
                    .iter()
                    .filter(|(_, v)| v.state != "not_deployed")
                    .map(|(s, v)| (s.clone(), v.previous.clone()))
                    .collect(),
                expected_seconds: self.expected_seconds(),
                serving: Default::default(),
            }
        } else {
            RollbackInfo {
                serving: versions.into_iter().map(|(s, v)| (s, v.version)).collect(),
                ..RollbackInfo::default()
            }
        }
    }

    /// The RTO of the last rollback rehearsal of this release (this version's record,
    /// else the newest of any version), in seconds.
    fn expected_seconds(&self) -> Option<f64> {
        let release = &self.plan.release;
        let records: Vec<RehearsalRecord> = std::fs::read_dir(&self.rehearsals)
            .ok()?
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<RehearsalRecord>(&b).ok())
            .filter(|r| r.release == release.name)
            .collect();
        let exact = records.iter().find(|r| r.version == release.version);
        let newest = records.iter().max_by_key(|r| r.finished_at);
        exact.or(newest).map(|r| r.rto_ms as f64 / 1000.0)
    }
}

/// Render a succeeded run's handover pack (against the previous release that succeeded
/// there, never an aborted or rolled-back run) and deliver it to the plan's sinks that
/// subscribe to `handover`. A failed delivery is reported; it never changes the run.
pub async fn deliver_handover(
    store: &dyn slipway_engine::Store,
    run: &str,
    plan: &Plan,
    workdir: &str,
    reporter: &dyn Reporter,
) {
    let notifier = Notifier::new(plan, settings(plan, workdir));
    if !notifier.wants_handover() {
        return;
    }
    let fail = |error: String| OpsEvent::DeliveryFailed {
        sink: "handover".into(),
        target: "every sink with `on: [handover]`".into(),
        event: "handover".into(),
        attempts: 0,
        error,
    };
    let history = match slipway_govern::history::RunHistory::load(store, run).await {
        Ok(h) => h,
        Err(e) => {
            reporter.report(fail(format!("read the run for its handover pack: {e}")));
            return;
        }
    };
    let previous = match slipway_govern::history::previous_run(store, &history).await {
        Ok(p) => p,
        Err(e) => {
            reporter.report(fail(format!("find the previous release: {e}")));
            return;
        }
    };
    let notes = slipway_govern::git::release_notes(&history, previous.as_ref());
    let markdown = slipway_govern::handover::render(&history, previous.as_ref(), &notes);
    for d in notifier
        .deliver_handover(run, slipway_stdx::now(), &markdown)
        .await
    {
        if let Some(e) = d.error {
            reporter.report(OpsEvent::DeliveryFailed {
                sink: d.sink,
                target: d.target,
                event: "handover".into(),
                attempts: d.attempts,
                error: e,
            });
        }
    }
}
