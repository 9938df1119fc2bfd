//! How `slipway status` draws a run as text: state and driver, gates and approvals, steps
//! in plan order with their output, hosts, canary measurements (with what a comparison
//! sampled) and the perf verdict. Kept apart from the run commands so `cmd_run.rs` stays
//! arguments → ops → render.

use slipway_engine::event::RunState;
use slipway_ops::views;

use crate::out::{Output, Style};
use crate::progress::output_lines;

pub fn render_status(v: &views::RunView, perf_lines: &[String], out: &Output) {
    let run = &v.run;
    // A run that is not over and that no process drives is going nowhere: its driver was
    // killed (or it waits for a person). Say so instead of a bare `running`.
    let driver = match v.driven {
        Some(false) if run.state == RunState::Paused => {
            format!(" (continue with `slipway resume {}`)", run.id)
        }
        Some(false) => format!(
            " — {}: no process drives it (continue with `slipway resume {}`)",
            out.paint("interrupted", Style::Warn),
            run.id
        ),
        _ => String::new(),
    };
    out.line(&format!(
        "run {}  {} {} -> {}  state {}{driver}",
        run.id,
        run.release,
        run.version,
        run.environment,
        out.paint(run.state.as_str(), Style::Bold)
    ));
    out.line(&format!(
        "plan {}  steps {}/{} succeeded",
        run.digest, v.steps_succeeded, v.steps_total
    ));
    if v.approvals.required > 0 {
        out.line(&format!(
            "approvals {}/{}",
            v.approvals.valid.len(),
            v.approvals.required
        ));
    }
    for (service, sv) in &v.services {
        out.line(&format!(
            "  {service}: on {} ({}{})",
            sv.version.as_deref().unwrap_or("nothing"),
            sv.state.replace('_', " "),
            if sv.version.as_deref() == Some(sv.target.as_str()) {
                String::new()
            } else {
                format!("; this run deploys {}", sv.target)
            }
        ));
    }
    for r in &v.open_reviews {
        out.line(&format!(
            "review after the fact {} for run {} ({} to {}): due {}; another person runs `slipway review complete {} --note …`",
            r["state"].as_str().unwrap_or_default(),
            r["run"].as_str().unwrap_or_default(),
            r["version"].as_str().unwrap_or_default(),
            r["environment"].as_str().unwrap_or_default(),
            r["due_at"].as_str().unwrap_or_default(),
            r["run"].as_str().unwrap_or_default()
        ));
    }
    for s in &v.steps {
        out.line(&format!(
            "  {:<13} {} (attempts {})",
            s.status.as_str(),
            s.step_id,
            s.attempts
        ));
        if s.status == slipway_engine::StepStatus::Failed {
            for l in s.output.iter().flat_map(output_lines) {
                out.line(&format!("      {l}"));
            }
        }
    }
    for a in &v.analysis {
        let phases = a["by_phase"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out.line(&format!(
            "  analysis {} on {}: {} after {} measurement(s) ({phases})",
            a["template"].as_str().unwrap_or_default(),
            a["step"].as_str().unwrap_or_default(),
            a["phase"].as_str().unwrap_or("?"),
            a["measurements"]
        ));
        for r in a["last"].as_array().into_iter().flatten() {
            out.line(&format!(
                "    {} {}",
                r["phase"].as_str().unwrap_or("?"),
                r["detail"].as_str().unwrap_or_default()
            ));
            if let Some(line) = sampled_line(&r["sampled"]) {
                out.line(&format!("      {line}"));
            }
        }
    }
    for l in perf_lines {
        out.line(l);
    }
    if !v.failed_hosts.is_empty() {
        out.line(&format!(
            "  ssh hosts failed: {}",
            v.failed_hosts.join(", ")
        ));
    }
    for h in &v.hosts {
        out.line(&format!(
            "  {} {} on {}: {}{}",
            h["step"].as_str().unwrap_or_default(),
            h["phase"].as_str().unwrap_or_default(),
            h["host"].as_str().unwrap_or_default(),
            h["result"].as_str().unwrap_or_default(),
            h["exit_code"]
                .as_i64()
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default()
        ));
    }
    for (service, t) in v.traffic.iter().flatten() {
        let instances = t
            .instances
            .iter()
            .map(|(ver, n)| format!("{ver}×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (front, weight) = match &t.router {
            // nginx / HAProxy: what it serves, read back from it.
            Some(r) => (r.via.clone(), r.weight),
            None => (
                format!(
                    "proxy {}",
                    t.proxy
                        .as_ref()
                        .map_or("not running".to_owned(), |p| format!(
                            "http://{}",
                            p.traffic
                        ))
                ),
                t.proxy.as_ref().and_then(|p| p.weight),
            ),
        };
        out.line(&format!(
            "  {service}: {front} canary weight {}%, instances {}",
            weight.map_or("null".to_owned(), |w| w.to_string()),
            if instances.is_empty() {
                "none".to_owned()
            } else {
                instances
            }
        ));
    }
    for f in &v.config {
        out.line(&format!(
            "  config {} masked sha256 {}",
            f["path"].as_str().unwrap_or_default(),
            f["masked_sha256"].as_str().unwrap_or_default()
        ));
    }
}

/// What a distribution comparison judged (`MetricResult::sampled`, journaled with each
/// measurement): the method, the cap per side, and used of available samples per side.
fn sampled_line(v: &serde_json::Value) -> Option<String> {
    let s: slipway_model::analysis::Sampled = serde_json::from_value(v.clone()).ok()?;
    let method = match s.method {
        slipway_model::analysis::SampleMethod::All => "all samples".to_owned(),
        slipway_model::analysis::SampleMethod::Reservoir => {
            format!("uniform reservoir sample (seed {:#x})", s.seed)
        }
    };
    Some(format!(
        "sampled: {method}, cap {} per side; canary {} of {}, stable {} of {}",
        s.cap, s.used_canary, s.n_canary, s.used_stable, s.n_stable
    ))
}
