//! Gate conformance: every gate kind the planner can put in a plan
//! (`slipway_model::plan::GateKind`) and every probe kind a service can declare, each
//! shown enforced through the real `slipway` binary — here for soak, post_review,
//! change_record, canary and the probes, and by the named test of its own file for the
//! others. The table is an exhaustive `match`: a new gate kind does not compile until it
//! names the test that enforces it, and a test renamed away fails the table.
//!
//! The process-target cases run real demo-app instances behind a real proxy (the
//! [`crate::canary_cli::Env`] world).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use slipway_model::plan::GateKind;

use crate::canary_cli::Env;

/// The test that shows a gate kind enforced through the real binary, as `file::function`.
fn enforced_by(kind: &GateKind) -> &'static str {
    match kind {
        GateKind::Approvals { .. } => {
            "gates_cli::approvals_exclude_the_author_and_other_digests_and_need_two_people"
        }
        GateKind::ChangeRecord { .. } | GateKind::Canary => {
            "gate_conformance_cli::a_production_plan_without_its_change_record_or_canary_is_refused"
        }
        GateKind::Signature { .. } => {
            "artifact_cli::an_artifact_changed_after_planning_is_refused_before_install_and_audited"
        }
        GateKind::Soak { .. } => {
            "gate_conformance_cli::soak_holds_full_weight_with_health_probed_and_a_failing_probe_rolls_back"
        }
        GateKind::Windows { .. } => {
            "gates_cli::a_closed_window_blocks_with_no_wait_and_names_when_it_opens"
        }
        GateKind::Freezes { .. } => "gates_cli::a_freeze_refuses_the_deploy_naming_it",
        GateKind::Checks { .. } => {
            "checks_gate_cli::a_failing_pre_check_stops_the_deploy_before_any_step"
        }
        GateKind::PostReview => {
            "gate_conformance_cli::post_review_opens_a_review_another_person_must_complete"
        }
        GateKind::Checklist { .. } => {
            "checklist_cli::an_accepted_retro_action_blocks_deploys_until_acknowledged"
        }
        GateKind::ChangeApproved { .. } => {
            "change_cli::servicenow_not_approved_outside_its_window_or_unknown_is_refused_before_a_run_exists"
        }
        GateKind::Promotion { .. } => {
            "promotion_cli::prod_is_refused_until_the_same_inputs_succeeded_in_staging_and_an_override_is_audited"
        }
        GateKind::Readiness { .. } => {
            "readiness_cli::failing_readiness_blocks_the_deploy_before_its_first_wave_and_passing_is_kept"
        }
    }
}

/// Probe kinds (`health` and `readiness`, each `http`, `tcp` or `command`, and the
/// readiness `deadline`) and the test enforcing them.
const PROBES: &[(&str, &str)] = &[
    (
        "health.http",
        "gate_conformance_cli::failing_health_probes_keep_a_version_from_traffic",
    ),
    (
        "health.command",
        "gate_conformance_cli::failing_health_probes_keep_a_version_from_traffic",
    ),
    (
        "health.tcp",
        "gate_conformance_cli::failing_health_probes_keep_a_version_from_traffic",
    ),
    (
        "readiness.http",
        "canary_cli::a_canary_returning_errors_is_rolled_back_by_itself",
    ),
    (
        "readiness.command",
        "gate_conformance_cli::readiness_deadline_is_honoured",
    ),
    (
        "readiness.tcp",
        "gate_conformance_cli::readiness_deadline_is_honoured",
    ),
    (
        "readiness.deadline",
        "gate_conformance_cli::readiness_deadline_is_honoured",
    ),
];

/// Probe kinds as the ssh target enforces them for `run:` services (on each host, before
/// the deploy step succeeds there; `health` is not evaluated there and the plan warns).
const SSH_PROBES: &[(&str, &str)] = &[
    (
        "ssh readiness.http",
        "ssh_service_cli::a_version_that_crashes_is_replaced_by_the_previous_one_and_the_run_rolls_back",
    ),
    (
        "ssh readiness.tcp",
        "ssh_service_cli::a_version_that_crashes_is_replaced_by_the_previous_one_and_the_run_rolls_back",
    ),
    (
        "ssh readiness.command",
        "ssh_service_cli::a_version_that_crashes_is_replaced_by_the_previous_one_and_the_run_rolls_back",
    ),
    (
        "ssh readiness.deadline",
        "ssh_service_cli::a_version_that_crashes_is_replaced_by_the_previous_one_and_the_run_rolls_back",
    ),
];

#[test]
fn every_gate_and_probe_kind_names_a_test_that_enforces_it() {
    let every_kind = [
        GateKind::Approvals {
            required: 1,
            groups: vec![],
            four_eyes: true,
        },
        GateKind::ChangeRecord { record: None },
        GateKind::ChangeApproved {
            system: "servicenow".into(),
            record: None,
        },
        GateKind::Signature { keys: vec![] },
        GateKind::Canary,
        GateKind::Soak { seconds: 1 },
        GateKind::Windows { windows: vec![] },
        GateKind::Freezes { freezes: vec![] },
        GateKind::Checks {
            phase: slipway_model::spec::CheckPhase::Pre,
            names: vec![],
        },
        GateKind::PostReview,
        GateKind::Checklist { items: vec![] },
        GateKind::Readiness {
            checks: vec![],
            advisory: vec![],
        },
        GateKind::Promotion {
            from: String::new(),
            run: None,
            finished_at: None,
            inputs: String::new(),
            overridden: None,
        },
    ];
    let tests = crate::repo().join("crates/slipway-cli/tests");
    let names = every_kind
        .iter()
        .map(|k| (k.name(), enforced_by(k)))
        .chain(PROBES.iter().copied())
        .chain(SSH_PROBES.iter().copied());
    for (kind, test) in names {
        let (file, function) = test.split_once("::").unwrap();
        let text = std::fs::read_to_string(tests.join(format!("{file}.rs"))).unwrap();
        assert!(
            text.contains(&format!("fn {function}()")),
            "{kind}: the test {test} that should enforce it does not exist"
        );
    }
}

/// A release of `api` at `version` on the process target in environment `live`.
fn spec(
    env: &Env,
    version: &str,
    env_extra: &str,
    health: &str,
    readiness: &str,
    policy: &str,
) -> PathBuf {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: soaky, version: {version}, type: patch, change: CHG-7 }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}}\", replicas: 1 }}
    readiness: {readiness}
{health}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
{env_extra}
    strategy:
      canary:
        steps:
          - set_weight: 50
          - pause: 1s
{policy}
"
    );
    let p = env.path().join(format!("release-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn exit_within(child: &mut std::process::Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "slipway did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number after `"event":"<event>","<field>":` in a run's journal, if the event is there.
fn event_number(env: &Env, run: &str, event: &str, field: &str) -> Option<u64> {
    let j = env.journal(run);
    let needle = format!("\"event\":\"{event}\",\"{field}\":");
    let at = j.find(&needle)? + needle.len();
    j[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn soak_holds_full_weight_with_health_probed_and_a_failing_probe_rolls_back() {
    let env = Env::new();
    let sick = env.path().join("sick");
    let health = format!(
        "    health: {{ command: \"test ! -e {}\" }}",
        sick.display()
    );
    let prod = "    production: true";
    let policy = "policy:\n  patch: { approvals: 0, soak: 3s }";
    let ready = "{ http: /ready, timeout: 2s }";
    let (code, plan, err) = {
        let f = spec(&env, "1.0.0", prod, &health, ready, policy);
        let (c, out, err) = env.run(&[
            "plan",
            "--env",
            "live",
            "--output",
            "json",
            "-f",
            &f.display().to_string(),
        ]);
        (
            c,
            serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default(),
            err,
        )
    };
    assert_eq!(code, 0, "{plan}\n{err}");
    assert!(plan["gates"].to_string().contains("\"soak\""), "{plan}");

    // The first release: no canary to hold, so the replacement soaks, probed.
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", prod, &health, ready, policy));
    assert_eq!(code, 0, "{v}\n{err}");
    let run1 = v["run"].as_str().unwrap().to_owned();
    let soaked = event_number(&env, &run1, "soak_passed", "seconds");
    assert!(
        soaked.is_some_and(|s| s >= 3),
        "{soaked:?}: {}",
        env.journal(&run1)
    );

    // A canary soaks at full weight (the stable pool kept at 0) before its promotion.
    let (code, v, err) = env.deploy(&spec(&env, "2.0.0", prod, &health, ready, policy));
    assert_eq!(code, 0, "{v}\n{err}");
    let run2 = v["run"].as_str().unwrap().to_owned();
    let j = env.journal(&run2);
    let at = |needle: &str| {
        j.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing: {j}"))
    };
    assert!(at("\"soak_started\"") < at("\"soak_passed\""));
    assert!(at("\"soak_passed\"") < at("\"promoted\""));
    assert_eq!(
        env.versions_served(10).keys().collect::<Vec<_>>(),
        vec!["2.0.0"]
    );

    // A probe failing during the soak rolls back: 2.0.0 serves again.
    let f3 = spec(&env, "3.0.0", prod, &health, ready, policy);
    let mut child = env.spawn_deploy(&f3, "deploy-3");
    let run3 = env.wait_journal("3.0.0", "soak_started");
    std::fs::write(&sick, "").unwrap();
    let code = exit_within(&mut child, Duration::from_secs(60));
    assert_eq!(code, 4, "the soak's failed probe rolls the run back");
    let j = env.journal(&run3);
    assert!(j.contains("\"event\":\"health_failed\""), "{j}");
    std::fs::remove_file(&sick).unwrap();
    assert_eq!(
        env.versions_served(10).keys().collect::<Vec<_>>(),
        vec!["2.0.0"]
    );
    assert_eq!(env.instances().keys().collect::<Vec<_>>(), vec!["2.0.0"]);
}

#[test]
fn failing_health_probes_keep_a_version_from_traffic() {
    let env = Env::new();
    let ready = "{ http: /ready, timeout: 2s }";
    // Passing probes of each kind let a first release and a canary through.
    for (version, health) in [
        ("1.0.0", "    health: { http: /healthz }"),
        ("1.1.0", "    health: { tcp: true }"),
        ("1.2.0", "    health: { command: \"true\" }"),
    ] {
        let (code, v, err) = env.deploy(&spec(&env, version, "", health, ready, ""));
        assert_eq!(code, 0, "{health}: {v}\n{err}");
    }
    // A failing one keeps the candidate from any traffic: rolled back, 1.2.0 serves.
    for (version, health, says) in [
        (
            "2.0.0",
            "    health: { http: /no-such-path }",
            "answered 404",
        ),
        ("2.1.0", "    health: { command: \"false\" }", "exited with"),
    ] {
        let (code, v, err) = env.deploy(&spec(&env, version, "", health, ready, ""));
        assert_eq!(code, 4, "{health}: {v}\n{err}");
        let run = v["run"].as_str().unwrap();
        let j = env.journal(run);
        assert!(j.contains("health_failed") && j.contains(says), "{j}");
        assert!(
            !j.contains("\"weight\":50"),
            "the candidate got traffic: {j}"
        );
        assert_eq!(
            env.versions_served(10).keys().collect::<Vec<_>>(),
            vec!["1.2.0"]
        );
    }
}

#[test]
fn readiness_deadline_is_honoured() {
    let env = Env::new();
    // Never ready: refused once its 2 s deadline passed, saying which deadline.
    let (code, v, err) = env.deploy(&spec(
        &env,
        "1.0.0",
        "",
        "",
        "{ command: \"false\", deadline: 2s }",
        "",
    ));
    assert_ne!(code, 0, "{v}\n{err}");
    let text = format!("{v}{err}");
    assert!(
        text.contains("readiness.deadline") && text.contains("2s"),
        "{text}"
    );
    // Ready by TCP connect: deployed.
    let (code, v, err) = env.deploy(&spec(
        &env,
        "1.0.1",
        "",
        "",
        "{ tcp: true, deadline: 10s }",
        "",
    ));
    assert_eq!(code, 0, "{v}\n{err}");
}

/// An exec-target hotfix to production: its plan carries `post_review`.
fn hotfix(env: &Env, version: &str) -> PathBuf {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: payfix, version: {version}, type: hotfix, change: CHG-9 }}
services:
  pay:
    steps:
      - {{ name: install, run: \"echo installed\" }}
environments:
  live:
    production: true
    target: {{ exec: {{}} }}
policy:
  hotfix: {{ approvals: 0 }}
"
    );
    let p = env.path().join(format!("hotfix-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn post_review_opens_a_review_another_person_must_complete() {
    let env = Env::new();
    // Two people with verified tokens: alice (admin) deploys, bob (approver) reviews.
    let mut people = crate::People::new(&env.store(), "alice");
    people.add("bob", "approver", "live");
    let alice = [("SLIPWAY_TOKEN", people.token("alice"))];
    let bob = [("SLIPWAY_TOKEN", people.token("bob"))];
    let (code, v, err) = env.deploy_with(&hotfix(&env, "1.0.1"), &alice);
    assert_eq!(code, 0, "{v}\n{err}");
    assert!(err.contains("review after the fact is required"), "{err}");
    let run = v["run"].as_str().unwrap().to_owned();

    // Open: listed, in status, in the compliance report, a warning on the next plan.
    let (_, out, _) = env.run_with(&["review", "list", "--output", "json"], &alice);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["run"], run.as_str(), "{list}");
    assert_eq!(list[0]["state"], "open", "{list}");
    let (_, out, _) = env.run_with(&["status", &run, "--output", "json"], &alice);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["open_reviews"][0]["run"], run.as_str(), "{status}");
    let pack = env.path().join("pack");
    let (code, out, err) = env.run_with(
        &[
            "report",
            "compliance",
            "--framework",
            "sox",
            "--since",
            "2020-01-01",
            "--out",
            &pack.display().to_string(),
            "--output",
            "json",
        ],
        &alice,
    );
    // 1: the pack lists an exception (this test's policy waived the approval).
    assert!(code == 0 || code == 1, "{out}\n{err}");
    let pack: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pack["open_reviews"][0]["run"], run.as_str(), "{pack}");
    assert_eq!(pack["open_reviews"][0]["state"], "open", "{pack}");
    let next = hotfix(&env, "1.0.2");
    let (_, out, _) = env.run_with(
        &[
            "plan",
            "--env",
            "live",
            "--output",
            "json",
            "-f",
            &next.display().to_string(),
        ],
        &alice,
    );
    assert!(out.contains("review-open"), "{out}");

    // Not by its author; by another person, with a note.
    let (code, out, err) = env.run_with(
        &["review", "complete", &run, "--note", "looked fine"],
        &alice,
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("different person"), "{err}");
    let (code, out, err) = env.run_with(
        &[
            "review",
            "complete",
            &run,
            "--note",
            "root cause fixed; test added",
        ],
        &bob,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, out, _) = env.run_with(&["review", "list", "--open", "--output", "json"], &alice);
    assert_eq!(out.trim(), "[]");
    let (_, out, _) = env.run_with(
        &[
            "plan",
            "--env",
            "live",
            "--output",
            "json",
            "-f",
            &next.display().to_string(),
        ],
        &alice,
    );
    assert!(!out.contains("review-open"), "{out}");
}

#[test]
fn a_production_plan_without_its_change_record_or_canary_is_refused() {
    let env = Env::new();
    let text = "apiVersion: slipway/v1
kind: Release
metadata: { name: feat, version: 1.0.0, type: feature }
services:
  api:
    run: { command: \"demo-app --port {{ port }} --version {{ version }}\" }
environments:
  live:
    production: true
    target: { process: {} }
    strategy: { big_bang: {} }
policy:
  feature: { approvals: 0, change_record: required, checks: [] }
";
    let f = env.path().join("feat.yaml");
    std::fs::write(&f, text).unwrap();
    let (code, out, err) = env.run(&[
        "deploy",
        "--env",
        "live",
        "--output",
        "json",
        "-f",
        &f.display().to_string(),
    ]);
    assert_eq!(code, 3, "{out}\n{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("change-record-missing") && text.contains("canary-required"),
        "{text}"
    );
    let (_, out, _) = env.run(&["history", "--output", "json"]);
    assert!(!out.contains("feat"), "a refused deploy left a run: {out}");
    assert!(env.instances().is_empty());
}
