//! Performance baselines in reports: `slipway check --only perf` (measure the running
//! version, or with `--run RUN` judge it against the baseline that run kept before its
//! deploy) and `slipway status` (a run's baseline and post-deploy verification, both
//! distributions side by side). Values only; `out.rs` prints.

use std::path::Path;

use serde_json::{Value, json};
use slipway_checks::perf_baseline as pb;
use slipway_checks::{Outcome, Verdict};
use slipway_model::spec::PerfCheck;

fn fail_row(name: &str, target: &str, measured: String, hint: String) -> Verdict {
    Verdict {
        check: format!("perf.{name}"),
        target: target.to_owned(),
        verdict: Outcome::Fail,
        measured,
        expected: "a measurement of the running version".into(),
        duration_ms: 0,
        hint: Some(hint),
        host: None,
    }
}

/// Rows, JSON detail and text lines for one perf check. `run_dir` set: compare against the
/// baseline kept there (the setup stored with it, so the mix is the same as at deploy).
pub async fn check_rows(
    name: &str,
    perf: &PerfCheck,
    run_dir: Option<&Path>,
) -> (Vec<Verdict>, Value, Vec<String>) {
    let setup = match pb::Setup::from_spec(perf) {
        Ok(s) => s,
        Err(e) => {
            return (
                vec![fail_row(
                    name,
                    &perf.url,
                    e,
                    format!("fix checks.{name}.perf.url"),
                )],
                Value::Null,
                Vec::new(),
            );
        }
    };
    if let Some(dir) = run_dir {
        let b = match pb::load_baseline(dir, name) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return (
                    vec![fail_row(
                        name,
                        &setup.addr,
                        format!(
                            "no baseline `{name}` in {}",
                            dir.join(pb::BASELINE_FILE).display()
                        ),
                        "name a run that deployed with this perf check (`slipway history`)".into(),
                    )],
                    Value::Null,
                    Vec::new(),
                );
            }
            Err(e) => {
                return (
                    vec![fail_row(
                        name,
                        &setup.addr,
                        e,
                        "the run's record is unreadable".into(),
                    )],
                    Value::Null,
                    Vec::new(),
                );
            }
        };
        let v = pb::verify(&b).await;
        let lines = vec![
            format!(
                "perf {name} before (baseline {}): {}",
                b.taken_at,
                pb::summary(&v.baseline)
            ),
            format!("perf {name} now: {}", pb::summary(&v.candidate)),
        ];
        let detail = json!({
            "setup": v.setup,
            "baseline_taken_at": v.baseline_taken_at,
            "baseline": v.baseline,
            "candidate": v.candidate,
            "verdict": v.verdict,
        });
        return (v.rows, detail, lines);
    }
    match pb::take(&setup).await {
        Ok(b) => {
            let row = Verdict {
                check: format!("perf.{name}"),
                target: setup.addr.clone(),
                verdict: Outcome::Pass,
                measured: pb::summary(&b.distribution),
                expected: format!("at least {} ok requests, under 10% failed", pb::MIN_SAMPLES),
                duration_ms: setup.duration_ms,
                hint: None,
                host: None,
            };
            let lines = vec![format!("perf {name} now: {}", pb::summary(&b.distribution))];
            (
                vec![row],
                json!({"setup": setup, "measured": b.distribution}),
                lines,
            )
        }
        Err(e) => (
            vec![fail_row(name, &setup.addr, "not measurable".into(), e)],
            Value::Null,
            Vec::new(),
        ),
    }
}

/// A run's perf baselines and verifications: JSON (`null` when it kept none) and lines.
pub fn run_perf(dir: &Path) -> (Value, Vec<String>) {
    let baselines = pb::baselines(dir).unwrap_or_default();
    let verifications = pb::verifications(dir).unwrap_or_default();
    if baselines.is_empty() && verifications.is_empty() {
        return (Value::Null, Vec::new());
    }
    let mut lines = Vec::new();
    let mut obj = serde_json::Map::new();
    for (name, b) in &baselines {
        lines.push(format!(
            "perf {name} baseline ({}): {}",
            b.taken_at,
            pb::summary(&b.distribution)
        ));
        let v = verifications.get(name);
        match v {
            Some(v) => lines.push(format!(
                "perf {name} after deploy ({}): {} -> {}",
                v.taken_at,
                pb::summary(&v.candidate),
                v.verdict.as_str()
            )),
            None => lines.push(format!("perf {name} after deploy: not verified yet")),
        }
        obj.insert(
            name.clone(),
            json!({
                "setup": b.setup,
                "baseline_taken_at": b.taken_at,
                "baseline": b.distribution,
                "candidate": v.map(|v| &v.candidate),
                "verified_at": v.map(|v| &v.taken_at),
                "verdict": v.map(|v| v.verdict),
                "rows": v.map(|v| &v.rows),
            }),
        );
    }
    (Value::Object(obj), lines)
}
