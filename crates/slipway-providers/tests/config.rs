//! `render-config` steps on real files: all or nothing, private modes, digests that never
//! cover a secret, undo that restores the previous render and is safe to repeat.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use slipway_engine::{Applied, Observation, StepContext, Target};
use slipway_model::plan::{Facts, Plan, StepAction, plan};
use slipway_providers::config::{ConfigTarget, install_config, service_dir};

fn make_plan(dir: &Path, dest: &str, region: &str) -> Plan {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.2.0, type: patch }}
services:
  api:
    config: [ {{ template: api.conf.j2, dest: '{dest}' }} ]
    steps: [ {{ name: install, run: 'true' }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ region: {region}, token: 'secret://file/token.txt' }}
"
    );
    std::fs::write(dir.join("token.txt"), "s3cr3t\n").unwrap();
    let spec = slipway_model::validate::load("release.yaml", &text)
        .map_err(|e| e.render(false, 100))
        .unwrap()
        .spec;
    plan(&spec, "staging", &Facts::default()).unwrap()
}

fn ctx(plan: &Plan, run: &str) -> (StepContext, StepAction) {
    let step = plan
        .steps
        .iter()
        .find(|s| s.id == "api/render-config")
        .expect("a render-config step before the install steps");
    (
        StepContext {
            run_id: run.to_owned(),
            step_id: step.id.clone(),
            key: step.idempotency_key.clone(),
            attempt: 1,
            progress: None,
            prior: Vec::new(),
        },
        step.action.clone(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_render_is_private_recorded_without_secret_digests_and_undone_to_the_previous_one() {
    let d = tempfile::tempdir().unwrap();
    let spec_dir = d.path();
    std::fs::write(
        spec_dir.join("api.conf.j2"),
        "region={{ vars.region }}\ntoken={{ vars.token }}\n",
    )
    .unwrap();
    let root = spec_dir.join("store/config/staging");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Release 1, rendered by its step.
    let p1 = make_plan(spec_dir, "/etc/api/api.conf", "eu-west-1");
    let t1 = ConfigTarget::new(p1.clone(), spec_dir, &root);
    let (c1, a1) = ctx(&p1, "run-1");
    assert!(matches!(
        rt.block_on(t1.observe(&c1, &a1)).unwrap(),
        Observation::NotDone { .. }
    ));
    assert!(matches!(
        rt.block_on(t1.apply(&c1, &a1)).unwrap(),
        Applied::Ran { .. }
    ));
    let dir = service_dir(&root, "api");
    let file = dir.join("etc/api/api.conf");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "region=eu-west-1\ntoken=s3cr3t\n"
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Applying again is a no-op; observing sees it done.
    assert!(matches!(
        rt.block_on(t1.apply(&c1, &a1)).unwrap(),
        Applied::AlreadyDone { .. }
    ));
    assert!(matches!(
        rt.block_on(t1.observe(&c1, &a1)).unwrap(),
        Observation::Done { .. }
    ));
    // The record in the directory holds digests and names, no value and no digest of
    // the bytes that contain the secret.
    let record = std::fs::read_to_string(dir.join(".slipway-config.json")).unwrap();
    assert!(!record.contains("s3cr3t"), "{record}");
    let rec: serde_json::Value = serde_json::from_str(&record).unwrap();
    let f = &rec["files"][0];
    assert_eq!(f["secrets"], serde_json::json!(["secret://file/token.txt"]));
    assert!(f.get("sha256").is_none(), "{f}");
    assert_eq!(
        f["masked_sha256"],
        slipway_package::digest::sha256_bytes(
            b"region=eu-west-1\ntoken=***secret://file/token.txt***\n"
        )
        .as_str()
    );

    // Release 2 replaces it whole; the previous render is kept beside it.
    let p2 = make_plan(spec_dir, "/etc/api/api.conf", "us-east-1");
    let t2 = ConfigTarget::new(p2.clone(), spec_dir, &root);
    let (c2, a2) = ctx(&p2, "run-2");
    rt.block_on(t2.apply(&c2, &a2)).unwrap();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("region=us-east-1")
    );
    assert_eq!(names(&root), [".api.previous", "api"]);

    // Undo restores release 1's config; a repeated undo (a restart mid-rollback) changes
    // nothing, since the directory no longer holds run 2's render.
    rt.block_on(t2.undo(&c2, &a2)).unwrap();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("region=eu-west-1")
    );
    rt.block_on(t2.undo(&c2, &a2)).unwrap();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("region=eu-west-1")
    );
    assert_eq!(names(&root), ["api"]);
}

#[test]
fn nothing_is_written_when_a_render_cannot_complete() {
    let d = tempfile::tempdir().unwrap();
    let spec_dir = d.path();
    std::fs::write(spec_dir.join("api.conf.j2"), "region={{ vars.region }}\n").unwrap();
    let root = spec_dir.join("store/config/staging");
    let dir = service_dir(&root, "api");
    // A plan made without template digests: the render itself must catch what changed.
    let no_pins = std::collections::BTreeMap::new();
    let p = make_plan(spec_dir, "api.conf", "eu-west-1");
    install_config(&p, spec_dir, "api", None, &no_pins, &dir, "run-1", "k1").unwrap();
    let before = std::fs::read_to_string(dir.join("api.conf")).unwrap();

    // The template now reads a variable the environment lacks.
    std::fs::write(
        spec_dir.join("api.conf.j2"),
        "region={{ vars.region }}\nzone={{ vars.zone }}\n",
    )
    .unwrap();
    let err = install_config(&p, spec_dir, "api", None, &no_pins, &dir, "run-2", "k2").unwrap_err();
    assert!(err.contains("vars.zone"), "{err}");
    // A secret that cannot be resolved.
    std::fs::write(spec_dir.join("api.conf.j2"), "region={{ vars.region }}\n").unwrap();
    std::fs::remove_file(spec_dir.join("token.txt")).unwrap();
    let err = install_config(&p, spec_dir, "api", None, &no_pins, &dir, "run-3", "k3").unwrap_err();
    assert!(err.contains("secret://file/token.txt"), "{err}");
    // A destination outside the service's directory.
    let bad = make_plan(spec_dir, "../../escape.conf", "eu-west-1");
    let err =
        install_config(&bad, spec_dir, "api", None, &no_pins, &dir, "run-4", "k4").unwrap_err();
    assert!(err.contains(".."), "{err}");
    assert!(!spec_dir.join("store/escape.conf").exists());

    // Each time, the live directory is exactly the first render and nothing else is left.
    assert_eq!(
        std::fs::read_to_string(dir.join("api.conf")).unwrap(),
        before
    );
    assert_eq!(names(&root), ["api"]);
}
