//! The handover pack of one run, as Markdown: what the support team needs the day after a
//! release — release notes, what changed in configuration and endpoints since the previous
//! run of the release in that environment, known issues, whom to call, and the runbook
//! delta (new config keys, new checks, how this release is rolled back).
//!
//! Secrets never appear: environment variables and process environment are listed by
//! name only, never by value, and URLs lose any `user:password@` part.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use slipway_engine::RunState;
use slipway_model::plan::{Plan, StepAction};
use slipway_model::spec::Service;

use crate::git::GitNotes;
use crate::history::RunHistory;

/// Drop a `user:password@` from a URL-like string, so a credential in an endpoint or
/// webhook never reaches a report.
pub fn strip_userinfo(s: &str) -> String {
    if let Some((scheme, rest)) = s.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        return format!("{scheme}://***@{host}");
    }
    s.to_owned()
}

fn config_keys(plan: &Plan) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = plan.env.vars.keys().map(|k| format!("vars.{k}")).collect();
    for (name, s) in &plan.services {
        if let Some(run) = &s.run {
            keys.extend(run.env.keys().map(|k| format!("{name}.run.env.{k}")));
        }
        keys.extend(
            s.config
                .iter()
                .map(|c| format!("{name}.config {} → {}", c.template, c.dest)),
        );
    }
    keys
}

fn endpoints(plan: &Plan) -> BTreeSet<String> {
    plan.services
        .iter()
        .flat_map(|(n, s)| {
            let mut v: Vec<String> = s
                .endpoints
                .iter()
                .map(|e| format!("{n} → {}", strip_userinfo(e)))
                .collect();
            for (what, p) in [("health", &s.health), ("readiness", &s.readiness)] {
                if let Some(http) = p.as_ref().and_then(|p| p.http.as_ref()) {
                    v.push(format!("{n} {what} {http}"));
                }
            }
            v
        })
        .collect()
}

fn service_line(s: &Service) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &s.version {
        parts.push(format!("version {v}"));
    }
    if let Some(a) = &s.artifact {
        parts.push(format!("artifact `{}`", a.path));
    }
    if let Some(r) = &s.run {
        parts.push(format!("`{}` ×{}", r.command, r.replicas));
    }
    if !s.depends_on.is_empty() {
        parts.push(format!("depends on {}", s.depends_on.join(", ")));
    }
    parts.join("; ")
}

fn diff_sets(out: &mut String, what: &str, old: &BTreeSet<String>, new: &BTreeSet<String>) {
    for added in new.difference(old) {
        let _ = writeln!(out, "- {what} added: `{added}`");
    }
    for removed in old.difference(new) {
        let _ = writeln!(out, "- {what} removed: `{removed}`");
    }
}

/// Render the pack. `previous` is the run before this one of the same release in the same
/// environment; `notes` the git log between their tags (see [`crate::git::release_notes`]).
pub fn render(run: &RunHistory, previous: Option<&RunHistory>, notes: &GitNotes) -> String {
    let r = &run.record;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Handover: {} {} → {}\n",
        r.release, r.version, r.environment
    );
    let _ = writeln!(s, "- run: `{}` ({})", r.id, r.state.as_str());
    let _ = writeln!(s, "- plan digest: `{}`", r.digest);
    let _ = writeln!(s, "- started: {}", run.started_at());
    if let Some(f) = run.finished_at() {
        let _ = writeln!(s, "- finished: {f}");
    }
    let Some(plan) = &run.plan else {
        let _ = writeln!(
            s,
            "\nThe run's plan cannot be read by this version of slipway; only the journal is available."
        );
        return s;
    };
    let _ = writeln!(s, "- release type: {}", plan.release.release_type.as_str());
    if let Some(c) = &plan.release.change {
        let _ = writeln!(s, "- change record: {c}");
    }
    let _ = writeln!(s, "- strategy: {}", plan.strategy_kind);

    // Release notes.
    let _ = writeln!(s, "\n## Release notes\n");
    if let Some(prev) = previous {
        let _ = writeln!(
            s,
            "Previous release here: {} {} (run `{}`, {}{}).\n",
            prev.record.release,
            prev.record.version,
            prev.record.id,
            prev.record.state.as_str(),
            prev.archived
                .as_ref()
                .map_or_else(String::new, |a| format!(", archived in {}", a.bundle))
        );
    } else {
        let _ = writeln!(s, "First release of {} here.\n", r.release);
    }
    for (name, svc) in &plan.services {
        let _ = writeln!(s, "- **{name}**: {}", service_line(svc));
    }
    let _ = writeln!(s, "\nGit: {}", notes.range);
    for c in &notes.commits {
        let _ = writeln!(s, "- {} {}", c.sha.get(..10).unwrap_or(&c.sha), c.subject);
    }

    // Configuration and endpoint changes.
    let _ = writeln!(s, "\n## Configuration and endpoint changes\n");
    let empty = BTreeMap::new();
    let prev_plan = previous.and_then(|p| p.plan.as_ref());
    let before = prev_plan.map_or(&empty, |p| &p.services);
    let mut changes = String::new();
    for (name, svc) in &plan.services {
        match before.get(name) {
            None => {
                let _ = writeln!(changes, "- service added: **{name}**");
            }
            Some(old) if old != svc => {
                let (a, b) = (service_line(old), service_line(svc));
                if a == b {
                    let _ = writeln!(changes, "- **{name}**: settings changed");
                } else {
                    let _ = writeln!(changes, "- **{name}**: was {a}; now {b}");
                }
            }
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !plan.services.contains_key(*n)) {
        let _ = writeln!(changes, "- service removed: **{name}**");
    }
    let (old_keys, new_keys) = (
        prev_plan.map(config_keys).unwrap_or_default(),
        config_keys(plan),
    );
    diff_sets(&mut changes, "config key", &old_keys, &new_keys);
    let (old_eps, new_eps) = (
        prev_plan.map(endpoints).unwrap_or_default(),
        endpoints(plan),
    );
    diff_sets(&mut changes, "endpoint", &old_eps, &new_eps);
    if let Some(a) = previous.and_then(|p| p.archived.as_ref()) {
        // Its plan left with it: a diff against nothing would list everything as added.
        changes = format!(
            "Not shown: the previous run's plan is in archive bundle {} (sha256 {}).\n",
            a.bundle, a.bundle_sha256
        );
    } else if changes.is_empty() {
        changes = "None since the previous run.\n".to_owned();
    }
    s.push_str(&changes);

    // Known issues.
    let _ = writeln!(s, "\n## Known issues\n");
    let mut issues = Vec::new();
    if matches!(
        r.state,
        RunState::RolledBack | RunState::Failed | RunState::Aborted
    ) {
        issues.push(format!(
            "The run ended {}: {}",
            r.state.as_str(),
            run.failure_reason()
                .unwrap_or_else(|| "no reason was journaled".into())
        ));
    }
    for f in &plan.findings {
        issues.push(format!(
            "Plan finding: {}",
            serde_json::to_string(f).unwrap_or_default()
        ));
    }
    for f in &plan.risk.factors {
        issues.push(format!("Risk ({} points): {}", f.points, f.detail));
    }
    for (name, svc) in &plan.services {
        if svc.irreversible {
            issues.push(format!(
                "{name} is irreversible: it cannot be rolled back by slipway"
            ));
        }
    }
    // What the release's authors know is not right, before the plan's own findings.
    for (i, k) in plan.release.known_issues.iter().enumerate() {
        issues.insert(i, format!("Known: {k}"));
    }
    if issues.is_empty() {
        let _ = writeln!(s, "None recorded.");
    }
    for i in issues {
        let _ = writeln!(s, "- {i}");
    }

    // Escalation contacts.
    let _ = writeln!(s, "\n## Escalation contacts\n");
    let _ = writeln!(
        s,
        "- release owner: {}",
        plan.release
            .owner
            .as_deref()
            .unwrap_or("(none in the spec: set metadata.owner)")
    );
    for (name, svc) in &plan.services {
        if let Some(o) = &svc.owner {
            let _ = writeln!(s, "- {name}: {o}");
        }
    }
    for (i, c) in plan.release.contacts.iter().enumerate() {
        let _ = writeln!(s, "- escalation {}: {c}", i + 1);
    }

    // Runbook delta.
    let _ = writeln!(s, "\n## Runbook delta\n");
    if let Some(a) = previous.and_then(|p| p.archived.as_ref()) {
        let _ = writeln!(
            s,
            "The previous run's plan is in archive bundle {}: the keys and checks below are all of this release's, not only the new ones.\n",
            a.bundle
        );
    }
    let new_config: Vec<&String> = new_keys.difference(&old_keys).collect();
    let _ = writeln!(
        s,
        "New config keys: {}",
        if new_config.is_empty() {
            "none".to_owned()
        } else {
            new_config
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let old_checks: BTreeSet<&String> = prev_plan
        .map(|p| p.checks.keys().collect())
        .unwrap_or_default();
    let new_checks: Vec<&String> = plan
        .checks
        .keys()
        .filter(|c| !old_checks.contains(c))
        .collect();
    let _ = writeln!(
        s,
        "\nNew checks: {}",
        if new_checks.is_empty() {
            "none".to_owned()
        } else {
            new_checks
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(s, "\nRollback procedure for this release:\n");
    if let Some(c) = &plan.strategy.canary {
        let templates: BTreeSet<&str> = c
            .steps
            .iter()
            .filter_map(|st| st.analysis.as_ref())
            .chain(c.analysis.as_ref())
            .map(|a| a.template.as_str())
            .collect();
        for t in templates {
            let on = plan
                .analysis_templates
                .get(t)
                .map_or("rollback".to_owned(), |a| {
                    serde_json::to_value(a.on_failure)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "rollback".into())
                });
            let _ = writeln!(
                s,
                "- canary analysis `{t}` failing → automatic {on}: traffic returns to the stable version and the canary is drained"
            );
        }
    }
    let _ = writeln!(
        s,
        "- by hand: `slipway pause {id}` stops between steps; `slipway abort {id}` stops for good; redeploy the previous release ({prev}) to return to it",
        id = r.id,
        prev = previous.map_or_else(|| "none here yet".to_owned(), |p| p.record.version.clone())
    );
    for step in &plan.steps {
        match &step.action {
            StepAction::Exec(e) => {
                if let Some(u) = &e.undo {
                    let _ = writeln!(s, "- step `{}` is undone by `{u}`", step.id);
                }
            }
            StepAction::Migrate { dir, .. } => {
                let _ = writeln!(
                    s,
                    "- step `{}` is undone by the down-migrations (U files) in `{dir}`",
                    step.id
                );
            }
            StepAction::RenderConfig { .. } => {
                let _ = writeln!(
                    s,
                    "- step `{}` is undone by restoring the service's previous rendered config",
                    step.id
                );
            }
            StepAction::Deploy { .. } | StepAction::VerifyArtifact { .. } => {}
        }
    }
    s
}
