//! Plans of the examples (JSON snapshots) and the planner's rules: waves, gates with
//! sources, risk factors, recommendations, tag findings.

use slipway_model::plan::{Facts, GateKind, plan};
use slipway_model::validate;

use crate::repo_path;

fn load(rel: &str) -> slipway_model::spec::ReleaseSpec {
    let text = std::fs::read_to_string(repo_path(rel)).unwrap();
    validate::load(rel, &text).unwrap().spec
}

#[test]
fn example_plans_snapshot() {
    for (example, envs) in [
        ("shop", &["staging", "prod"][..]),
        ("security-patch", &["staging", "prod"][..]),
        ("hotfix", &["prod"][..]),
    ] {
        let spec = load(&format!("examples/{example}/release.yaml"));
        for env in envs {
            let p = plan(&spec, env, &Facts::default()).unwrap();
            // A plan reads back from its JSON as itself: the engine drives a run it just
            // created with the plan it kept, and a resumed one with the stored text parsed.
            let back: slipway_model::plan::Plan =
                serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            assert_eq!(
                back, p,
                "plan of {example} in {env} read back from its JSON"
            );
            insta::assert_json_snapshot!(format!("plan-{example}-{env}"), p);
        }
    }
}

#[test]
fn waves_follow_dependencies_and_coupling() {
    let text = "apiVersion: slipway/v1
kind: Release
metadata: { name: x, version: 1.0.0, type: patch }
services:
  db: { steps: [ { name: i, run: \"true\" } ] }
  cache: { steps: [ { name: i, run: \"true\" } ] }
  api: { depends_on: [db], coupled_with: [worker], steps: [ { name: i, run: \"true\" } ] }
  worker: { depends_on: [cache], steps: [ { name: i, run: \"true\" } ] }
  web: { depends_on: [api], steps: [ { name: i, run: \"true\" } ] }
  search: { depends_on: [db, cache], steps: [ { name: i, run: \"true\" } ] }
environments:
  s: { target: { exec: {} } }
";
    let spec = validate::load("w.yaml", text).unwrap().spec;
    let p = plan(&spec, "s", &Facts::default()).unwrap();
    let waves: Vec<Vec<&str>> = p
        .waves
        .iter()
        .map(|w| w.services.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        waves,
        vec![
            vec!["cache", "db"],
            vec!["api", "search", "worker"],
            vec!["web"]
        ]
    );
    // Steps come out in wave order.
    let order: Vec<u32> = p.steps.iter().map(|s| s.wave).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn gates_come_from_policy_with_their_source() {
    let spec = load("examples/shop/release.yaml");
    let p = plan(&spec, "prod", &Facts::default()).unwrap();
    let find = |name: &str| p.gates.iter().find(|g| g.kind.name() == name).unwrap();
    assert_eq!(find("soak").source, "policy.feature.soak");
    assert_eq!(find("canary").source, "policy.feature.canary");
    assert!(matches!(
        find("approvals").kind,
        GateKind::Approvals {
            required: 2,
            four_eyes: true,
            ..
        }
    ));
    // Staging is not production: the release-type policy does not apply there.
    let s = plan(&spec, "staging", &Facts::default()).unwrap();
    assert!(
        s.gates
            .iter()
            .all(|g| g.kind.name() != "soak" && g.kind.name() != "approvals")
    );
}

#[test]
fn security_releases_require_signatures_by_default() {
    let spec = load("examples/security-patch/release.yaml");
    let p = plan(&spec, "prod", &Facts::default()).unwrap();
    // Its soak cannot be held on the exec target: left out of the plan, and said so.
    assert!(p.gates.iter().all(|g| g.kind.name() != "soak"));
    let f = p
        .findings
        .iter()
        .find(|f| f.code == "soak-not-enforced")
        .unwrap();
    assert!(
        f.message.contains("default policy for security releases"),
        "{}",
        f.message
    );
    assert!(p.findings.iter().any(|f| f.code == "probe-not-enforced"));
    assert!(
        p.gates
            .iter()
            .any(|g| matches!(&g.kind, GateKind::Signature { keys } if keys.len() == 2))
    );
}

#[test]
fn hotfix_needs_post_review_and_may_skip_windows() {
    let spec = load("examples/hotfix/release.yaml");
    let p = plan(&spec, "prod", &Facts::default()).unwrap();
    assert!(p.gates.iter().any(|g| g.kind == GateKind::PostReview));
    assert!(p.gates.iter().all(|g| g.kind.name() != "windows"));
    assert!(p.findings.iter().any(|f| f.code == "windows-bypassed"));
}

#[test]
fn missing_tag_is_named() {
    let spec = load("examples/security-patch/release.yaml");
    let facts = Facts {
        git_tags: Some(vec!["payments-v3.1.1".into()]),
        ..Facts::default()
    };
    let p = plan(&spec, "prod", &facts).unwrap();
    let f = p.findings.iter().find(|f| f.code == "tag-missing").unwrap();
    assert!(f.message.contains("payments-v3.1.2"), "{}", f.message);
    let facts = Facts {
        git_tags: Some(vec!["payments-v3.1.2".into()]),
        ..Facts::default()
    };
    let p = plan(&spec, "prod", &facts).unwrap();
    assert!(p.findings.iter().all(|f| f.code != "tag-missing"));
}

#[test]
fn irreversible_migrations_raise_risk_and_recommend_phasing() {
    let spec = load("examples/shop/release.yaml");
    let mut facts = Facts::default();
    let calm = plan(&spec, "prod", &facts).unwrap();
    facts
        .migrations
        .insert("db".into(), vec![(2, true), (3, false)]);
    let p = plan(&spec, "prod", &facts).unwrap();
    let f = p
        .risk
        .factors
        .iter()
        .find(|f| f.factor == "irreversible migrations")
        .unwrap();
    assert_eq!(f.points, 25);
    assert_eq!(p.risk.score, calm.risk.score + 25);
    assert_eq!(p.recommendation.approach, "phased");
    assert!(
        p.recommendation
            .reasons
            .iter()
            .any(|r| r.contains("migration db cannot be undone"))
    );
}

#[test]
fn high_risk_requires_a_change_record() {
    let text = std::fs::read_to_string(repo_path("examples/shop/release.yaml"))
        .unwrap()
        .replace("  change: CHG-1042\n", "");
    let spec = validate::load("s.yaml", &text).unwrap().spec;
    let calm = plan(&spec, "prod", &Facts::default()).unwrap();
    assert!(
        calm.findings
            .iter()
            .all(|f| f.code != "change-record-missing")
    );
    let facts = Facts {
        days_since_change: [("api".to_owned(), 200u32)].into(),
        migrations: [("db".to_owned(), vec![(3u32, false)])].into(),
        ..Facts::default()
    };
    let p = plan(&spec, "prod", &facts).unwrap();
    assert!(
        p.risk.score >= slipway_model::plan::HIGH_RISK,
        "{:?}",
        p.risk
    );
    let f = p
        .findings
        .iter()
        .find(|f| f.code == "change-record-missing")
        .unwrap();
    assert!(f.message.contains("high-impact"), "{}", f.message);
}

#[test]
fn unknown_environment_names_the_choices() {
    let spec = load("examples/shop/release.yaml");
    let e = plan(&spec, "production", &Facts::default()).unwrap_err();
    assert!(e.contains("prod, staging"), "{e}");
}

fn compat_spec(strategy: &str, waivers: &str) -> slipway_model::spec::ReleaseSpec {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: feature }}
services:
  api: {{ steps: [ {{ name: i, run: \"true\" }} ] }}
environments:
  prod:
    target: {{ exec: {{}} }}
    approvals: {{ required: 1, groups: [release-managers] }}
    strategy: {strategy}
{waivers}"
    );
    validate::load("compat.yaml", &text)
        .map_err(|e| e.render(false, 100))
        .unwrap()
        .spec
}

fn breaking() -> Facts {
    Facts {
        compat: vec![slipway_model::compat::CompatFinding {
            id: "api:api:path-removed:/paths/~1orders".into(),
            kind: "api".into(),
            service: "api".into(),
            message: "GET /orders was removed".into(),
        }],
        ..Facts::default()
    }
}

fn approvals(p: &slipway_model::plan::Plan) -> Vec<(u32, String)> {
    p.gates
        .iter()
        .filter_map(|g| match &g.kind {
            GateKind::Approvals { required, .. } => Some((*required, g.source.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn breaking_findings_refuse_big_bang_and_add_an_approver() {
    let p = plan(&compat_spec("{ big_bang: {} }", ""), "prod", &breaking()).unwrap();
    let refused: Vec<_> = p
        .findings
        .iter()
        .filter(|f| {
            f.severity == slipway_model::plan::FindingSeverity::Error
                && f.code == "compat-requires-phased"
        })
        .collect();
    assert_eq!(refused.len(), 1, "{:#?}", p.findings);
    assert!(
        refused[0]
            .message
            .contains("api:api:path-removed:/paths/~1orders")
    );
    assert!(refused[0].message.contains("rolling"));

    let p = plan(
        &compat_spec("{ rolling: { batch_size: 1 } }", ""),
        "prod",
        &breaking(),
    )
    .unwrap();
    assert!(
        p.findings
            .iter()
            .all(|f| f.severity != slipway_model::plan::FindingSeverity::Error),
        "{:#?}",
        p.findings
    );
    let gates = approvals(&p);
    assert_eq!(gates.len(), 2, "{gates:?}");
    assert_eq!(gates[1].0, 2, "one approver more than the environment's 1");
    assert!(gates[1].1.starts_with("compat:"), "{gates:?}");
    assert_eq!(p.recommendation.approach, "phased");
    assert!(p.recommendation.strategy_agrees);
    assert_eq!(p.breaking.len(), 1);
}

#[test]
fn a_waived_finding_adds_no_gate_and_is_in_the_plan_and_digest() {
    let waiver = "waivers:
  - { finding: 'api:api:path-removed:/paths/~1orders', reason: no client calls it since 1.4, by: alice }
";
    let spec = compat_spec("{ big_bang: {} }", waiver);
    let p = plan(&spec, "prod", &breaking()).unwrap();
    assert!(
        p.findings
            .iter()
            .all(|f| f.severity != slipway_model::plan::FindingSeverity::Error),
        "{:#?}",
        p.findings
    );
    assert_eq!(approvals(&p).len(), 1);
    assert_eq!(p.waivers.len(), 1);
    assert_eq!(p.waivers[0].by, "alice");
    assert!(p.breaking.is_empty());
    // The waiver is part of what is approved.
    let without = plan(
        &compat_spec("{ big_bang: {} }", ""),
        "prod",
        &Facts::default(),
    )
    .unwrap();
    assert_ne!(p.digest, without.digest);
}

#[test]
fn no_breaking_finding_leaves_the_plan_unchanged() {
    let spec = compat_spec("{ big_bang: {} }", "");
    let a = plan(&spec, "prod", &Facts::default()).unwrap();
    let b = plan(
        &spec,
        "prod",
        &Facts {
            compat: Vec::new(),
            ..Facts::default()
        },
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(approvals(&a).len(), 1);
    assert!(a.waivers.is_empty() && a.breaking.is_empty());
}

fn lock_spec(waivers: &str) -> slipway_model::spec::ReleaseSpec {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: patch }}
services:
  api: {{ steps: [ {{ name: i, run: \"true\" }} ] }}
environments:
  prod:
    production: true
    target: {{ exec: {{}} }}
  staging:
    target: {{ exec: {{}} }}
{waivers}"
    );
    validate::load("locks.yaml", &text)
        .map_err(|e| e.render(false, 100))
        .unwrap()
        .spec
}

fn blocking_lock() -> Facts {
    Facts {
        compat: vec![slipway_model::compat::CompatFinding {
            id: "lock:db:V3__index.sql:1".into(),
            kind: "lock".into(),
            service: "db".into(),
            message: "V3__index.sql line 1: `CREATE INDEX …` takes SHARE on orders".into(),
        }],
        ..Facts::default()
    }
}

#[test]
fn a_blocking_migration_lock_is_an_error_in_production_and_a_warning_elsewhere() {
    let spec = lock_spec("");
    let prod = plan(&spec, "prod", &blocking_lock()).unwrap();
    let f: Vec<_> = prod
        .findings
        .iter()
        .filter(|f| f.code == "migration-lock")
        .collect();
    assert_eq!(f.len(), 1, "{:#?}", prod.findings);
    assert_eq!(f[0].severity, slipway_model::plan::FindingSeverity::Error);
    assert!(
        f[0].message.contains("lock:db:V3__index.sql:1"),
        "{}",
        f[0].message
    );
    // A lock is no compatibility break: no phased requirement, no extra approver.
    assert!(prod.breaking.is_empty());
    assert!(
        prod.findings
            .iter()
            .all(|f| f.code != "compat-requires-phased"),
        "{:#?}",
        prod.findings
    );
    let staging = plan(&spec, "staging", &blocking_lock()).unwrap();
    let f: Vec<_> = staging
        .findings
        .iter()
        .filter(|f| f.code == "migration-lock")
        .collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, slipway_model::plan::FindingSeverity::Warning);
}

#[test]
fn a_waived_migration_lock_is_listed_not_blocking() {
    let spec = lock_spec(
        "waivers:
  - { finding: 'lock:db:V3__index.sql:1', reason: orders has 200 rows, by: alice }
",
    );
    let p = plan(&spec, "prod", &blocking_lock()).unwrap();
    assert!(
        p.findings
            .iter()
            .all(|f| f.severity != slipway_model::plan::FindingSeverity::Error),
        "{:#?}",
        p.findings
    );
    assert_eq!(p.waivers.len(), 1);
    assert_eq!(p.waivers[0].finding, "lock:db:V3__index.sql:1");
}

fn steps_spec(prod_vars: &str, run: &str) -> Result<slipway_model::spec::ReleaseSpec, String> {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.0.0, type: patch }}
services:
  api:
    steps:
      - {{ name: install, run: '{run}', creates: '{{{{ vars.dir }}}}/installed', undo: 'rm -rf {{{{ vars.dir }}}}' }}
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ dir: /srv/staging, mode: fast }}
  prod:
    production: true
    target: {{ exec: {{}} }}
    vars: {prod_vars}
"
    );
    validate::load("steps.yaml", &text)
        .map(|l| l.spec)
        .map_err(|e| e.render(false, 100))
}

fn exec_runs(p: &slipway_model::plan::Plan) -> Vec<(String, Option<String>, Option<String>)> {
    p.steps
        .iter()
        .filter_map(|s| match &s.action {
            slipway_model::plan::StepAction::Exec(e) => {
                Some((e.run.clone(), e.creates.clone(), e.undo.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn step_placeholders_are_filled_per_environment_and_change_only_that_plan() {
    let spec = steps_spec(
        "{ dir: /srv/prod, mode: careful }",
        "install --to {{ vars.dir }} --{{ vars.mode }} ${#ARGS[@]}",
    )
    .unwrap();
    let staging = plan(&spec, "staging", &Facts::default()).unwrap();
    assert_eq!(
        exec_runs(&staging),
        [(
            "install --to /srv/staging --fast ${#ARGS[@]}".to_owned(),
            Some("/srv/staging/installed".to_owned()),
            Some("rm -rf /srv/staging".to_owned())
        )]
    );
    let prod = plan(&spec, "prod", &Facts::default()).unwrap();
    assert_eq!(
        exec_runs(&prod)[0].0,
        "install --to /srv/prod --careful ${#ARGS[@]}"
    );
    assert!(prod.findings.iter().all(|f| f.code != "step-placeholder"));
    // The command is part of what prod's approvers approve: another value, another digest.
    let other = steps_spec(
        "{ dir: /srv/other, mode: careful }",
        "install --to {{ vars.dir }} --{{ vars.mode }} ${#ARGS[@]}",
    )
    .unwrap();
    assert_ne!(
        plan(&other, "prod", &Facts::default()).unwrap().digest,
        prod.digest
    );
    assert_eq!(
        plan(&other, "staging", &Facts::default()).unwrap().digest,
        staging.digest
    );
}

#[test]
fn a_step_placeholder_that_cannot_be_filled_is_refused() {
    // Declared by staging only: prod's plan is refused, naming the step and the fix.
    let spec = steps_spec("{ other: 1 }", "install --to {{ vars.dir }}").unwrap();
    let prod = plan(&spec, "prod", &Facts::default()).unwrap();
    let f: Vec<_> = prod
        .findings
        .iter()
        .filter(|f| f.code == "step-placeholder")
        .collect();
    assert_eq!(f.len(), 3, "{:#?}", prod.findings);
    assert!(
        f.iter()
            .all(|f| f.severity == slipway_model::plan::FindingSeverity::Error)
    );
    assert!(
        f[0].message.contains("services.api.steps[0].run")
            && f[0].message.contains("environments.prod.vars"),
        "{}",
        f[0].message
    );
    // Unknown to every environment, a typo, or a secret: `validate` refuses it.
    for (vars, run, expect) in [
        (
            "{ dir: /srv/prod }",
            "echo {{ vars.nope }}",
            "no environment declares `nope`",
        ),
        (
            "{ dir: /srv/prod }",
            "echo {{ var.dir }}",
            "not a placeholder Slipway fills",
        ),
        (
            "{ dir: 'secret://env/PROD_DIR' }",
            "echo {{ vars.dir }}",
            "\"$PROD_DIR\"",
        ),
    ] {
        let e = steps_spec(vars, run).unwrap_err();
        assert!(e.contains(expect), "{run}: {e}");
    }
}

fn tagged_spec() -> slipway_model::spec::ReleaseSpec {
    validate::load(
        "tag.yaml",
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.0.0, type: patch, tag: 'v{version}' }
services:
  api:
    artifact: { path: api.tar.gz, sha256: '0000000000000000000000000000000000000000000000000000000000000000' }
    steps: [ { name: i, run: 'true' } ]
environments:
  prod: { target: { exec: {} } }
",
    )
    .map_err(|e| e.render(false, 100))
    .unwrap()
    .spec
}

fn tag_facts(head: &str, uncommitted: &[&str], revision: Option<&str>) -> Facts {
    Facts {
        git_tags: Some(vec!["v2.0.0".into()]),
        git: Some(slipway_model::plan::GitState {
            head: head.into(),
            tag_commit: Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
            commits_after_tag: (head != "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").then_some(1),
            uncommitted: uncommitted.iter().map(|s| (*s).to_owned()).collect(),
        }),
        artifact_revisions: revision
            .map(|r| std::collections::BTreeMap::from([("api".to_owned(), r.to_owned())]))
            .unwrap_or_default(),
        ..Facts::default()
    }
}

fn codes(p: &slipway_model::plan::Plan) -> Vec<(String, String)> {
    p.findings
        .iter()
        .filter(|f| f.code.starts_with("tag") || f.code == "tree-dirty")
        .map(|f| (f.severity.to_string(), f.code.clone()))
        .collect()
}

#[test]
fn the_release_tag_must_be_head_with_a_clean_tree_or_the_artifacts_built_from_it() {
    let spec = tagged_spec();
    let tagged = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let later = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let p = plan(&spec, "prod", &tag_facts(tagged, &[], None)).unwrap();
    assert!(codes(&p).is_empty(), "{:?}", codes(&p));
    let p = plan(&spec, "prod", &tag_facts(later, &["release.yaml"], None)).unwrap();
    assert_eq!(
        codes(&p),
        [
            ("error".to_owned(), "tag-not-head".to_owned()),
            ("error".to_owned(), "tree-dirty".to_owned())
        ]
    );
    let msg = &p
        .findings
        .iter()
        .find(|f| f.code == "tag-not-head")
        .unwrap()
        .message;
    assert!(msg.contains("1 commit after tag v2.0.0"), "{msg}");
    // An artifact that records the tagged commit (abbreviated) was built from the tag.
    let p = plan(
        &spec,
        "prod",
        &tag_facts(later, &["x"], Some("aaaaaaaaaaaa")),
    )
    .unwrap();
    assert_eq!(codes(&p), [("info".to_owned(), "tag-artifacts".to_owned())]);
    // One from another commit is not.
    let p = plan(&spec, "prod", &tag_facts(later, &[], Some("cccccccccccc"))).unwrap();
    assert_eq!(codes(&p), [("error".to_owned(), "tag-not-head".to_owned())]);
}
