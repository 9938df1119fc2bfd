//! Step progress, typed: what a long step reports while it runs — a canary's weight
//! changes, measurements and decisions ([`RolloutEvent`]), a host's result on the ssh
//! target, a launch, a rendered config ([`StepEvent`]) — and the one text rendering of
//! each ([`Progress::describe`]) that the CLI's live view, `slipway logs` and the
//! retrospective share.
//!
//! The journal keeps progress as the JSON these types serialise to (`event` names the
//! kind), so entries written before a kind was typed, or by a newer Slipway, still read:
//! [`Progress::of`] gives [`Progress::Other`] for what it does not know instead of failing.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::analysis::{Measurement, Phase};

/// One running instance of a service version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Stable id, e.g. `api-2.4.0-0`.
    pub id: String,
    /// Service.
    pub service: String,
    /// Version it runs.
    pub version: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// OS process id (or another target-specific handle).
    pub pid: u32,
    /// Where its logs are kept.
    pub log_path: Option<String>,
}

/// Human intervention, polled between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intervention {
    /// Continue a paused canary.
    Resume,
    /// Skip the remaining steps and go to 100%.
    Promote,
    /// Roll back now.
    Rollback,
    /// Stop at the current weight and wait.
    Pause,
}

/// What the controller did, in order, for the journal and the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RolloutEvent {
    /// Canary instances started and ready.
    CanaryStarted {
        /// Instances.
        instances: Vec<Instance>,
    },
    /// A canary left running by an earlier driver is continued: from this step, at this
    /// weight (an analysis there starts fresh).
    CanaryResumed {
        /// Its instances.
        instances: Vec<Instance>,
        /// The step it continues at (0-based).
        step: usize,
        /// The weight it serves at.
        weight: u8,
    },
    /// The pre-traffic (smoke) checks ran against the isolated candidate.
    PreTrafficChecked {
        /// Whether they passed; a failure rolls back before any traffic.
        passed: bool,
        /// What was checked and measured.
        detail: String,
    },
    /// Every canary step is done: the candidate stays at full weight (the stable pool
    /// still running, at weight 0) with health probes and the background analysis running
    /// this long before it is promoted (the plan's `soak` gate).
    SoakStarted {
        /// One past the last canary step (where a resumed canary continues: the soak).
        index: usize,
        /// Seconds still to soak.
        seconds: u64,
    },
    /// The soak ended healthy.
    SoakPassed {
        /// Seconds soaked by this driver.
        seconds: u64,
    },
    /// A health probe of the candidate failed: an analysis failure during the canary, a
    /// rollback trigger during the soak.
    HealthFailed {
        /// What failed.
        detail: String,
    },
    /// A canary step began.
    StepStarted {
        /// 0-based.
        index: usize,
        /// Human description.
        step: String,
    },
    /// The canary weight changed (verified where the router can tell).
    WeightSet {
        /// Percent to the canary.
        weight: u8,
        /// What the router reports back.
        verified: Option<u8>,
    },
    /// One analysis measurement with its verdicts.
    Measured {
        /// Template.
        template: String,
        /// Traffic in the window.
        window: WindowSummary,
        /// The verdicts.
        measurement: Measurement,
        /// Analysis phase after it.
        phase: Phase,
    },
    /// The canary is paused.
    Paused {
        /// Why.
        reason: String,
    },
    /// A human intervened.
    Intervened {
        /// What.
        intervention: Intervention,
    },
    /// Rolling back.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// Stable confirmed ready before traffic moves back.
    StableConfirmed {
        /// Instances checked.
        instances: usize,
    },
    /// The canary drained.
    CanaryDrained {
        /// Requests still in flight when we stopped waiting (0 when fully drained).
        in_flight: u64,
    },
    /// The canary is the new stable.
    Promoted {
        /// The version now serving.
        version: String,
    },
    /// Back on stable.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The router had lost what the controller set (HAProxy reloaded: what its runtime
    /// API was told is gone) and it was set again.
    RouterRestored {
        /// What was lost and put back.
        detail: String,
    },
}

/// Traffic numbers of a window, for display.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Canary requests.
    pub canary_requests: u64,
    /// Canary errors.
    pub canary_errors: u64,
    /// Canary p99, ms.
    pub canary_p99_ms: Option<f64>,
    /// Stable requests.
    pub stable_requests: u64,
    /// Stable errors.
    pub stable_errors: u64,
    /// Stable p99, ms.
    pub stable_p99_ms: Option<f64>,
    /// Window length, s.
    pub seconds: f64,
    /// Requests a match route sent to the canary (not judged), and their errors; absent
    /// in journals written before match routes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub matched_requests: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub matched_errors: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the ssh target reports of one host for one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    /// `apply`, `undo`, `exclude`, ….
    pub phase: String,
    /// The wave (1-based where shown), when the step runs in waves.
    #[serde(default)]
    pub wave: Option<usize>,
    /// Host name from the inventory.
    pub host: String,
    /// `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// `ran`, `already_done`, `failed`, `skipped`, `excluded`.
    pub result: String,
    /// Why, for anything but `ran`.
    #[serde(default)]
    pub detail: Option<String>,
    /// Exit code of the host's command.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Kept stdout tail.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Kept stderr tail.
    #[serde(default)]
    pub stderr: Option<String>,
}

/// What the journal keeps of a process launch (never the environment's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSummary {
    /// Service.
    pub service: String,
    /// Version.
    pub version: String,
    /// The command as launched.
    pub command: String,
    /// Everything else the target recorded (workdir, digests, image, …).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Progress of a step that is not a canary's own decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StepEvent {
    /// A service's steps were not started (a dependency was not deployed).
    Skipped {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The step paused the run.
    StepPaused {
        /// Why.
        reason: String,
    },
    /// A step the run no longer needs was retracted.
    Retracted {
        /// What was retracted.
        detail: String,
    },
    /// What a deploy replaces, journaled before anything changes.
    Replaces {
        /// The service.
        service: String,
        /// The version being deployed.
        version: String,
        /// The version serving before (none on a first deploy).
        previous: Option<String>,
    },
    /// Instances launched.
    Launched {
        /// The launch.
        launch: LaunchSummary,
    },
    /// The previous version launched again, as its own run launched it.
    Relaunched {
        /// The launch.
        launch: LaunchSummary,
        /// Instance ids.
        #[serde(default)]
        instances: Vec<String>,
    },
    /// Instances another run left behind were retired.
    CanaryRetired {
        /// Instance ids.
        instances: Vec<String>,
        /// Why.
        why: String,
    },
    /// A service's config rendered into place.
    ConfigRendered {
        /// The service.
        service: String,
        /// The directory.
        dir: String,
        /// One record per file.
        files: Vec<Value>,
    },
    /// One host's result on the ssh target.
    SshHost(HostReport),
    /// A fleet canary began (ssh hosts behind HAProxy): which hosts take the new version
    /// first, the waves after them, and each host's weight before anything changed (what
    /// a rollback or the end of the canary puts back). Journaled once per step, before
    /// any weight changes, so a resumed driver restores these and not what it finds.
    FleetCanary {
        /// The service.
        service: String,
        /// The version deployed.
        version: String,
        /// Host names of every wave in order; the first is the canary.
        waves: Vec<Vec<String>>,
        /// Each host's HAProxy server weight before the canary.
        weights: std::collections::BTreeMap<String, u64>,
    },
    /// A wave of a fleet canary passed its analysis (wave 1: the canary's steps).
    FleetWavePassed {
        /// 1-based.
        wave: usize,
        /// Every host that runs the new version now.
        changed: Vec<String>,
    },
    /// Hosts' HAProxy weights put back as they were before the fleet canary.
    FleetWeightsRestored {
        /// Host name → weight.
        weights: std::collections::BTreeMap<String, u64>,
    },
    /// A human request reached the driver.
    InterventionReceived {
        /// What was asked.
        intervention: Intervention,
        /// Who asked.
        #[serde(default)]
        by: Option<String>,
    },
}

/// One step-progress entry of the journal, typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Progress {
    /// A canary's decision.
    Rollout(RolloutEvent),
    /// Anything else a target reports.
    Step(StepEvent),
    /// A kind this version does not know (a newer Slipway wrote it): kept as it is.
    Other(Value),
}

impl Progress {
    /// The typed view of a journaled progress document.
    pub fn of(detail: &Value) -> Self {
        serde_json::from_value(detail.clone()).unwrap_or_else(|_| Self::Other(detail.clone()))
    }

    /// The kind, as the journal names it (`weight_set`, `measured`, `ssh_host`, …).
    pub fn kind(&self) -> String {
        let v = match self {
            Self::Other(v) => {
                return v
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or("progress")
                    .to_owned();
            }
            other => serde_json::to_value(other).unwrap_or_default(),
        };
        v.get("event")
            .and_then(Value::as_str)
            .unwrap_or("progress")
            .to_owned()
    }

    /// The measurement, for a canary's analysis entry.
    pub fn measured(&self) -> Option<(&str, &Measurement, Phase)> {
        match self {
            Self::Rollout(RolloutEvent::Measured {
                template,
                measurement,
                phase,
                ..
            }) => Some((template, measurement, *phase)),
            _ => None,
        }
    }

    /// One line a person reads, without the step's name.
    pub fn describe(&self) -> String {
        match self {
            Self::Rollout(e) => describe_rollout(e),
            Self::Step(e) => describe_step(e),
            Self::Other(_) => self.kind().replace('_', " "),
        }
    }
}

fn phase_name(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn describe_rollout(e: &RolloutEvent) -> String {
    match e {
        RolloutEvent::WeightSet { weight, .. } => format!("canary weight {weight}%"),
        RolloutEvent::Measured {
            template,
            window,
            measurement,
            ..
        } => {
            // One line per distinct verdict: metrics short of samples say the same thing.
            let mut details: Vec<&str> = Vec::new();
            for r in &measurement.results {
                if !details.contains(&r.detail.as_str()) {
                    details.push(&r.detail);
                }
            }
            // Matched (A/B) requests are shown apart: they are not what was judged.
            let matched = if window.matched_requests > 0 {
                format!(
                    "; {} matched to the canary, not judged, {} failed",
                    window.matched_requests, window.matched_errors
                )
            } else {
                String::new()
            };
            format!(
                "analysis `{template}`: {} ({} canary / {} stable requests{matched}): {}",
                phase_name(measurement.phase),
                window.canary_requests,
                window.stable_requests,
                details.join("; ")
            )
        }
        RolloutEvent::RollingBack { reason } => format!("rolling back: {reason}"),
        RolloutEvent::RolledBack { reason } => format!("rolled back: {reason}"),
        RolloutEvent::Paused { reason } => format!("paused: {reason}"),
        RolloutEvent::StepStarted { index, step } => format!("canary step {index}: {step}"),
        RolloutEvent::Promoted { version } => format!("{version} promoted"),
        RolloutEvent::PreTrafficChecked { passed, detail } => format!(
            "smoke before traffic {}: {detail}",
            if *passed { "ok" } else { "FAILED" }
        ),
        RolloutEvent::CanaryStarted { instances } => format!(
            "canary {} started ({} instances: {})",
            instances.first().map_or("?", |i| i.version.as_str()),
            instances.len(),
            instances
                .iter()
                .map(|i| i.addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RolloutEvent::CanaryResumed {
            instances,
            step,
            weight,
        } => format!(
            "canary continues at step {step}, weight {weight}% ({} instances)",
            instances.len()
        ),
        RolloutEvent::SoakStarted { seconds, .. } => format!("soaking {seconds}s at full weight"),
        RolloutEvent::SoakPassed { seconds } => format!("soaked {seconds}s, healthy"),
        RolloutEvent::HealthFailed { detail } => format!("health probe failed: {detail}"),
        RolloutEvent::Intervened { intervention } => {
            format!("{} by an operator", intervention_name(*intervention))
        }
        RolloutEvent::StableConfirmed { instances } => {
            format!("stable confirmed ready ({instances} instances) before moving traffic back")
        }
        RolloutEvent::CanaryDrained { in_flight } => {
            format!("canary drained ({in_flight} in flight)")
        }
        RolloutEvent::RouterRestored { detail } => {
            format!("the router had lost the canary's traffic split; set again: {detail}")
        }
    }
}

fn intervention_name(i: Intervention) -> String {
    serde_json::to_value(i)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn describe_step(e: &StepEvent) -> String {
    match e {
        StepEvent::StepPaused { reason } => format!("step paused: {reason}"),
        StepEvent::Retracted { detail } => detail.clone(),
        StepEvent::Replaces { previous, .. } => format!(
            "replaces {}",
            previous.as_deref().unwrap_or("nothing (first deploy)")
        ),
        StepEvent::Launched { launch } => format!(
            "launched {} {}: `{}`",
            launch.service, launch.version, launch.command
        ),
        StepEvent::Relaunched { launch, .. } => format!(
            "relaunched {} {}: `{}`",
            launch.service, launch.version, launch.command
        ),
        StepEvent::SshHost(h) => format!(
            "{} on {}: {}{}",
            h.phase,
            h.host,
            h.result,
            h.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        StepEvent::Skipped { service, reason } => format!("skipped {service}: {reason}"),
        StepEvent::CanaryRetired { instances, why } => {
            format!("retired {}: {why}", instances.join(", "))
        }
        StepEvent::ConfigRendered {
            service,
            dir,
            files,
        } => {
            format!(
                "config of {service} rendered into {dir} ({} files)",
                files.len()
            )
        }
        StepEvent::FleetCanary {
            service,
            version,
            waves,
            ..
        } => format!(
            "fleet canary of {service} {version}: {} first, then {} more wave(s)",
            waves.first().map(|w| w.join(", ")).unwrap_or_default(),
            waves.len().saturating_sub(1)
        ),
        StepEvent::FleetWavePassed { wave, changed } => {
            format!("wave {wave} passed; new version on {}", changed.join(", "))
        }
        StepEvent::FleetWeightsRestored { weights } => format!(
            "weights restored: {}",
            weights
                .iter()
                .map(|(h, w)| format!("{h}={w}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        StepEvent::InterventionReceived { intervention, by } => format!(
            "{} received{}",
            intervention_name(*intervention),
            by.as_deref()
                .map(|b| format!(" from {b}"))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_reads_typed_and_writes_back_the_same_document() {
        let docs = [
            json!({"event": "weight_set", "weight": 20, "verified": 20}),
            json!({"event": "promoted", "version": "2.0.0"}),
            json!({"event": "ssh_host", "phase": "apply", "wave": 1, "host": "web-1",
                   "address": "10.0.0.1:22", "result": "failed", "detail": "exit 1",
                   "exit_code": 1, "stdout": "", "stderr": "boom"}),
            json!({"event": "replaces", "service": "api", "version": "2.0.0", "previous": null}),
            json!({"event": "launched", "launch": {"service": "api", "version": "2.0.0",
                   "command": "api --port 1", "replicas": 2}}),
            json!({"event": "step_paused", "reason": "manual step"}),
            json!({"event": "fleet_canary", "service": "web", "version": "2.0.0",
                   "waves": [["h1"], ["h2", "h3"]], "weights": {"h1": 1, "h2": 1, "h3": 1}}),
            json!({"event": "fleet_wave_passed", "wave": 1, "changed": ["h1"]}),
            json!({"event": "fleet_weights_restored", "weights": {"h1": 1}}),
        ];
        for d in docs {
            let p = Progress::of(&d);
            assert!(!matches!(p, Progress::Other(_)), "{d} read as unknown");
            assert_eq!(serde_json::to_value(&p).unwrap(), d);
            assert_eq!(p.kind(), d["event"].as_str().unwrap());
        }
    }

    #[test]
    fn an_unknown_or_malformed_entry_is_kept_not_refused() {
        for d in [
            json!({"event": "from_the_future", "x": 1}),
            json!({"event": "weight_set", "weight": "not a number"}),
            json!("just a string"),
        ] {
            let p = Progress::of(&d);
            assert_eq!(p, Progress::Other(d.clone()));
            assert_eq!(serde_json::to_value(&p).unwrap(), d);
        }
        assert_eq!(
            Progress::of(&json!({"event": "from_the_future"})).describe(),
            "from the future"
        );
    }

    #[test]
    fn the_text_of_a_measurement_names_its_phase_and_each_verdict() {
        let p = Progress::of(&json!({"event": "measured", "template": "golden",
            "window": {"canary_requests": 10, "canary_errors": 1, "canary_p99_ms": null,
                       "stable_requests": 40, "stable_errors": 0, "stable_p99_ms": null, "seconds": 1.0},
            "measurement": {"phase": "failed", "results": [
                {"metric": "error-rate", "phase": "failed", "value": 0.1, "threshold": "0.05",
                 "detail": "error-rate = 10.00% above max 5.00%"}]},
            "phase": "failed"}));
        assert_eq!(
            p.describe(),
            "analysis `golden`: failed (10 canary / 40 stable requests): error-rate = 10.00% above max 5.00%"
        );
        let (template, m, phase) = p.measured().unwrap();
        assert_eq!(
            (template, m.results.len(), phase),
            ("golden", 1, Phase::Failed)
        );
    }
}
