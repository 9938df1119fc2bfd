//! Run notifications: a `slipway_govern::notify::Notifier` for the plan's sinks, fed the
//! engine's notices, configured from the environment (`SLIPWAY_WEBHOOK_SECRET`,
//! `SLIPWAY_SMTP_HOST`, `SLIPWAY_SMTP_PORT`, `SLIPWAY_SMTP_FROM`, `SLIPWAY_SMTP_TLS` = none
//! | starttls | tls, and `SLIPWAY_NOTIFY_CA_FILE` for a private CA). Failed deliveries are
//! reported as events; they never change a run's outcome.

use slipway_engine::Notice;
use slipway_govern::notify::{Delivery, Notifier, NotifySettings, SECRET_ENV};
use slipway_model::plan::Plan;
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

/// Notifications being delivered for one drive.
pub struct Notifications {
    tx: Option<UnboundedSender<Notice>>,
    task: Option<JoinHandle<Vec<Delivery>>>,
}

impl Notifications {
    /// Start delivering notifications for a plan with sinks (nothing when it has none).
    pub fn start(plan: Option<&Plan>, workdir: &str) -> Self {
        let Some(plan) = plan.filter(|p| !p.notifications.is_empty()) else {
            return Self {
                tx: None,
                task: None,
            };
        };
        let notifier = Notifier::new(plan, settings(plan, workdir));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx: Some(tx),
            task: Some(tokio::spawn(notifier.run(rx))),
        }
    }

    /// A committed journal entry the notifier may turn into a message.
    pub fn send(&self, n: &Notice) {
        if let Some(t) = &self.tx {
            let _ = t.send(n.clone());
        }
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
