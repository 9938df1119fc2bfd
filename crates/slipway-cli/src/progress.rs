//! Live progress of operations: a [`slipway_ops::Reporter`] that draws a bar per wave on a
//! terminal and one line per journal entry (or nothing but warnings under
//! `--output json`), and [`event_line`], the one text form of a journal entry that
//! `deploy`, `resume` and `logs` share.

use slipway_model::progress::Progress;
use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use slipway_engine::StepOutput;
use slipway_engine::event::{EngineEvent, Notice, RunState, StepCompletion};
use slipway_model::plan::Plan;
use slipway_ops::OpsEvent;
use slipway_providers::compose::WiringNote;

use crate::out::{Output, OutputFormat, Style};

/// One human line for an event, or None for events not worth a line.
pub fn event_line(n: &Notice, out: &Output) -> Option<String> {
    let s = match &n.event {
        EngineEvent::RunCreated {
            release,
            version,
            environment,
            digest,
            ..
        } => format!(
            "run {} created: {release} {version} -> {environment} (plan {})",
            n.run_id,
            &digest[..digest.len().min(12)]
        ),
        EngineEvent::StateChanged { to, reason, .. } => {
            let style = match to {
                RunState::Succeeded => Style::Good,
                RunState::Failed | RunState::RolledBack | RunState::Aborted => Style::Bad,
                _ => Style::Bold,
            };
            let r = reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            format!("state: {}{r}", out.paint(to.as_str(), style))
        }
        EngineEvent::GateWaiting { gate, detail, .. } => format!("waiting on {gate}: {detail}"),
        EngineEvent::GatePassed { gate, detail } => format!("gate {gate} passed: {detail}"),
        EngineEvent::Approved { approver, .. } => format!("approved by {approver}"),
        EngineEvent::ControlRequested { control, reason } => match reason {
            Some(r) => format!("{} requested: {r}", control.as_str()),
            None => format!("{} requested", control.as_str()),
        },
        EngineEvent::InterventionRequested { intervention } => {
            format!("{intervention} requested")
        }
        EngineEvent::InterventionSettled { outcome, .. } if outcome == "dropped" => {
            "a resume/promote request came after its canary ended: dropped".to_owned()
        }
        EngineEvent::StepSucceeded {
            step, completion, ..
        } => match completion {
            StepCompletion::Applied => format!("  {} {step}", out.paint("ok", Style::Good)),
            StepCompletion::AlreadyDone { guard } => {
                format!(
                    "  {} {step} (already done: {guard})",
                    out.paint("ok", Style::Good)
                )
            }
            StepCompletion::Observed { evidence } => {
                format!(
                    "  {} {step} (recovered: {evidence})",
                    out.paint("ok", Style::Good)
                )
            }
        },
        EngineEvent::StepFailed {
            step,
            error,
            output,
            ..
        } => {
            let mut s = format!("  {} {step}: {error}", out.paint("FAILED", Style::Bad));
            for l in output.iter().flat_map(output_lines) {
                s.push_str("\n      ");
                s.push_str(&l);
            }
            s
        }
        EngineEvent::StepObserved {
            step,
            evidence,
            decision,
            ..
        } => {
            format!("  observed {step}: {evidence} -> {decision:?}")
        }
        EngineEvent::UndoSucceeded { step, .. } => format!("  undone {step}"),
        EngineEvent::UndoFailed { step, error, .. } => format!("  undo of {step} failed: {error}"),
        EngineEvent::DeployRefused { reason, .. } => format!("refused: {reason}"),
        // The journal counts waves from 0; people (and `slipway plan`) from 1.
        EngineEvent::WaveStarted { wave, steps } => {
            format!("wave {}: {steps} step(s)", wave + 1)
        }
        EngineEvent::CheckRan {
            phase,
            name,
            passed,
            measured,
            expected,
            detail,
        } => {
            let (verdict, style) = if *passed {
                ("ok", Style::Good)
            } else {
                ("FAILED", Style::Bad)
            };
            format!(
                "  check {} {name} ({}): measured {measured}, expected {expected} — {detail}",
                out.paint(verdict, style),
                slipway_engine::checks::phase_name(*phase)
            )
        }
        EngineEvent::CheckSkipped {
            phase,
            name,
            reason,
        } => format!(
            "  check {} {name} ({}): {reason}",
            out.paint("SKIPPED", Style::Warn),
            slipway_engine::checks::phase_name(*phase)
        ),
        EngineEvent::StepProgress { step, detail, .. } => {
            format!("    {step}: {}", Progress::of(detail).describe())
        }
        _ => return None,
    };
    Some(s)
}

/// A failed step's captured output as lines to show under it: its exit code, then the
/// kept tails of stderr and stdout, each line labelled. The text is what the journal
/// holds — already passed through the run's secret redactor when it was captured.
pub fn output_lines(o: &StepOutput) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(code) = o.exit_code {
        lines.push(format!("exit code {code}"));
    }
    for (name, text) in [("stderr", &o.stderr), ("stdout", &o.stdout)] {
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            lines.push(format!("{name} | {l}"));
        }
    }
    if o.truncated {
        lines.push("(output cut: only its tail was kept)".to_owned());
    }
    lines
}

/// Draws an operation's progress on stderr.
pub struct CliReporter {
    json: bool,
    tty: bool,
    out: Output,
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    wave_of: HashMap<String, u32>,
    /// The readiness rows of the deploy, for the JSON document.
    readiness: std::sync::Mutex<Vec<slipway_checks::Verdict>>,
}

impl CliReporter {
    /// A reporter for a drive of `plan` (bars per wave on a terminal, text mode only).
    pub fn new(plan: Option<&Plan>, out: &Output) -> Self {
        let json = out.json();
        let tty = std::io::stderr().is_terminal() && !json;
        let multi = MultiProgress::new();
        let mut bars = Vec::new();
        if tty && let Some(p) = plan {
            for w in &p.waves {
                let n = p.steps.iter().filter(|s| s.wave == w.index).count() as u64;
                let bar = multi.add(ProgressBar::new(n));
                bar.set_style(
                    ProgressStyle::with_template("wave {prefix} [{bar:30}] {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix((w.index + 1).to_string());
                bars.push(bar);
            }
        }
        Self {
            json,
            tty,
            out: Output {
                format: OutputFormat::Text,
                color: out.color_err,
                color_err: out.color_err,
            },
            multi,
            bars,
            wave_of: plan
                .map(|p| p.steps.iter().map(|s| (s.id.clone(), s.wave)).collect())
                .unwrap_or_default(),
            readiness: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn line(&self, text: &str) {
        if self.tty {
            self.multi.suspend(|| self.out.eline(text));
        } else {
            self.out.eline(text);
        }
    }

    /// The readiness rows reported so far (empty when the plan declares none).
    pub fn readiness(&self) -> Vec<slipway_checks::Verdict> {
        self.readiness.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Finish the bars.
    pub fn finish(&self) {
        for b in &self.bars {
            b.finish();
        }
    }
}

impl slipway_ops::Reporter for CliReporter {
    fn report(&self, event: OpsEvent) {
        match event {
            OpsEvent::Notice(n) => {
                if self.json {
                    return;
                }
                if let EngineEvent::StepSucceeded { step, .. }
                | EngineEvent::StepFailed { step, .. } = &n.event
                    && let Some(bar) = self
                        .wave_of
                        .get(step)
                        .and_then(|w| self.bars.get(*w as usize))
                {
                    bar.inc(1);
                    bar.set_message(step.clone());
                }
                if let Some(line) = event_line(&n, &self.out) {
                    self.line(&line);
                }
            }
            OpsEvent::LeaseReclaimed {
                environment,
                holder,
                release,
                expired_at,
            } if !self.json => self.line(&format!(
                "reclaimed the expired lease on {environment} from `{holder}` ({release}), expired {}",
                expired_at.strftime("%H:%M:%S UTC")
            )),
            OpsEvent::LeaseWaiting {
                environment,
                holder,
                release,
                until,
            } if !self.json => self.line(&format!(
                "waiting for {environment}: leased by `{holder}` ({release}) until {}",
                until.strftime("%Y-%m-%d %H:%M:%S UTC")
            )),
            OpsEvent::Wiring(WiringNote::ExternalRouter { service, via }) if !self.json => {
                self.line(&format!("{service}: traffic through {via}"));
            }
            OpsEvent::Wiring(WiringNote::Proxy {
                service,
                started,
                addr,
                pid,
            }) if !self.json => self.line(&format!(
                "{service}: proxy {} at http://{addr} (pid {pid})",
                if started { "started" } else { "found" }
            )),
            OpsEvent::Continuing { run } if !self.json => {
                self.line(&format!("continuing unfinished run {run} of this plan"));
            }
            OpsEvent::HostUnreachable(u) => self.line(&format!(
                "warning: {u}; deploying without it (counted against the failure budget)"
            )),
            OpsEvent::DeliveryFailed {
                sink,
                target,
                event,
                attempts,
                error,
            } => self.line(&format!(
                "warning: failed to notify {sink} {target} of {event} after {attempts} attempt(s): {error}"
            )),
            OpsEvent::CanaryRetired { detail, .. } if !self.json => self.line(&detail),
            OpsEvent::Warning(w) => self.line(&format!("warning: {w}")),
            OpsEvent::Readiness { rows, advisory } => {
                if !self.json {
                    self.line("readiness before the first wave:");
                    self.line(&crate::cli_util::verdict_table(&rows));
                    for r in rows.iter().filter(|r| r.verdict != slipway_checks::Outcome::Pass) {
                        let kind = slipway_model::readiness::ReadinessCheck::of_row(&r.check);
                        let advisory = kind.is_some_and(|k| advisory.contains(&k))
                            && r.verdict == slipway_checks::Outcome::Fail;
                        let on = r.host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default();
                        self.line(&format!(
                            "  {}{} {}{on}: {}",
                            r.verdict.as_str(),
                            if advisory { " (advisory)" } else { "" },
                            r.target,
                            r.hint.as_deref().unwrap_or(&r.measured)
                        ));
                    }
                }
                if let Ok(mut kept) = self.readiness.lock() {
                    *kept = rows;
                }
            }
            OpsEvent::ChangeWrittenBack { detail, .. } if !self.json => {
                self.line(&format!("change record updated: {detail}"));
            }
            _ => {}
        }
    }
}
