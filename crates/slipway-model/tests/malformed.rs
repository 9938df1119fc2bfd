//! Malformed specs: every fixture under fixtures/malformed must be refused with
//! diagnostics that name the place and the fix; the rendered report is snapshot-tested.

use slipway_model::validate;

#[test]
fn malformed_specs_are_refused_with_teaching_diagnostics() {
    let mut count = 0;
    insta::glob!("fixtures/malformed/*.yaml", |path| {
        count += 1;
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let errs = match validate::load_bytes(&name, &bytes) {
            Ok(_) => panic!("{name} was accepted but is malformed"),
            Err(e) => e,
        };
        assert!(errs.error_count() > 0, "{name}: no errors reported");
        for d in &errs.diagnostics {
            assert!(!d.message.is_empty(), "{name}: empty message");
            assert!(
                !d.help.is_empty(),
                "{name}: diagnostic without a fix: {d:?}"
            );
        }
        insta::assert_snapshot!(errs.render(false, 100));
    });
    assert!(count >= 30, "only {count} malformed fixtures");
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/malformed/34-many-problems.yaml"),
    )
    .unwrap();
    let errs = validate::load("many.yaml", &text).unwrap_err();
    let codes: Vec<&str> = errs.diagnostics.iter().map(|d| d.code).collect();
    for expected in [
        "invalid-name",
        "invalid-semver",
        "invalid-tag-pattern",
        "unknown-reference",
        "exactly-one",
        "invalid-probe",
        "invalid-quantity",
        "invalid-endpoint",
        "out-of-range",
        "missing-field",
    ] {
        assert!(codes.contains(&expected), "missing {expected} in {codes:?}");
    }
    assert!(errs.error_count() >= 10);
}

#[test]
fn positions_point_at_the_offending_token() {
    let text = "apiVersion: slipway/v1\nkind: Release\nmetadata:\n  name: shop\n  version: 1.0.0\n  type: feature\nservices:\n  api:\n    dependson: [db]\n    steps: [ { name: i, run: \"true\" } ]\nenvironments:\n  s: { target: { exec: {} } }\n";
    let errs = validate::load("x.yaml", text).unwrap_err();
    assert_eq!(errs.diagnostics.len(), 1, "{:?}", errs.diagnostics);
    let d = &errs.diagnostics[0];
    assert_eq!(d.code, "unknown-field");
    assert_eq!((d.pos.line, d.pos.column), (9, 5));
    assert_eq!(d.path, "services.api.dependson");
    assert!(d.help.contains("did you mean `depends_on`"), "{}", d.help);
    assert_eq!(&text[d.pos.offset..d.pos.offset + d.pos.len], "dependson");
}

#[test]
fn dangling_references_name_the_candidates() {
    let text = "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: shop, version: 1.0.0, type: patch }\nservices:\n  api: { steps: [ { name: i, run: \"true\" } ] }\n  web: { depends_on: [apu], steps: [ { name: i, run: \"true\" } ] }\nenvironments:\n  s: { target: { exec: {} }, checks: [smoke] }\n";
    let errs = validate::load("x.yaml", text).unwrap_err();
    let dep = errs
        .diagnostics
        .iter()
        .find(|d| d.path == "services.web.depends_on[0]")
        .unwrap();
    assert!(dep.help.contains("did you mean `api`"), "{}", dep.help);
    assert!(dep.help.contains("`web`"), "{}", dep.help);
    let chk = errs
        .diagnostics
        .iter()
        .find(|d| d.path == "environments.s.checks[0]")
        .unwrap();
    assert!(chk.help.contains("no checks are declared"), "{}", chk.help);
}

#[test]
fn cycles_are_reported_with_their_path() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/malformed/13-dependency-cycle.yaml"),
    )
    .unwrap();
    let errs = validate::load("c.yaml", &text).unwrap_err();
    let c = errs
        .diagnostics
        .iter()
        .find(|d| d.code == "dependency-cycle")
        .unwrap();
    assert_eq!(c.message, "dependency cycle: api → db → web → api");
}

#[test]
fn huge_input_is_refused_without_parsing() {
    let text = format!(
        "a: \"{}\"\n",
        "x".repeat(slipway_model::yaml::MAX_SPEC_BYTES)
    );
    let errs = validate::load("huge.yaml", &text).unwrap_err();
    assert_eq!(errs.diagnostics[0].code, "too-large");
}

/// Environment and service names become directories under the store and terminal text:
/// one outside the safe set (a path that climbs out, an escape sequence) is refused naming
/// the field, and the name is shown escaped, never raw.
#[test]
fn unsafe_environment_and_service_names_are_refused_naming_the_field() {
    let text = "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: shop, version: 1.0.0, type: patch }\nservices:\n  \"api\\x1b[31m\": { steps: [ { name: i, run: \"true\" } ] }\nenvironments:\n  \"../../outside\": { target: { exec: {} } }\n";
    let errs = validate::load("x.yaml", text).unwrap_err();
    let named = |prefix: &str| {
        errs.diagnostics
            .iter()
            .find(|d| d.code == "invalid-name" && d.path.starts_with(prefix))
            .unwrap_or_else(|| panic!("no invalid-name at {prefix}: {:?}", errs.diagnostics))
    };
    let env = named("environments");
    assert!(
        env.message.contains("environment name `../../outside`"),
        "{}",
        env.message
    );
    assert!(env.help.contains("letters, digits"), "{}", env.help);
    let svc = named("services");
    assert!(
        svc.message.contains("service name `api\\u{1b}[31m`"),
        "{}",
        svc.message
    );
    let shown = errs.render(false, 100);
    assert!(
        !shown.contains('\u{1b}'),
        "an escape reached the report: {shown:?}"
    );
}

/// A fleet canary (ssh target) weighs hosts through HAProxy's servers or nginx's upstream:
/// neither balancer applies the canary's match routes or pins its users there (both do in
/// front of the process target). Validation refuses them, naming the field and the way
/// out, instead of silently ignoring them; the same spec in front of processes is valid.
#[test]
fn fleet_canaries_refuse_match_routes_and_session_affinity_through_either_balancer() {
    let spec = |router: &str, target: &str, rule: &str| {
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: feature }}
services:
  api:
    run: {{ command: \"bin/api --port {{{{ port }}}}\" }}
environments:
  live:
    target: {target}
    router: {router}
    strategy:
      canary:
        {rule}
        steps: [ {{ set_weight: 20 }}, {{ pause: manual }} ]
"
        )
    };
    let haproxy = "{ haproxy: { socket: admin.sock, backend: app, routes_map: app.routes } }";
    let nginx = "{ nginx: { upstream_file: up.conf, upstream: app } }";
    let affinity = "session_affinity: { cookie: slipway-canary, max_age: 30m }";
    let matches = "match: [ { headers: { x-canary: { exact: always } } } ]";
    for (router, lb) in [(haproxy, "HAProxy"), (nginx, "nginx")] {
        for (rule, field, what) in [
            (affinity, "session_affinity", "`session_affinity`"),
            (matches, "match", "`match` routes"),
        ] {
            let case = format!("{lb} {field}");
            if let Err(e) = validate::load("live.yaml", &spec(router, "{ process: {} }", rule)) {
                panic!(
                    "{case}: refused in front of processes:\n{}",
                    e.render(false, 100)
                );
            }
            let fleet = spec(router, "{ ssh: { inventory: hosts.yaml } }", rule);
            let errs = validate::load("fleet.yaml", &fleet).unwrap_err();
            let shown = errs.render(false, 200);
            let d = errs
                .diagnostics
                .iter()
                .find(|d| d.code == "router-routes")
                .unwrap_or_else(|| panic!("{case}: {shown}"));
            assert!(
                d.message.contains("fleet canary")
                    && d.message.contains(lb)
                    && d.message.contains(what),
                "{case}: {}",
                d.message
            );
            assert!(
                d.help.contains(&format!("remove `{field}:`")) && d.help.contains("process"),
                "{case}: {}",
                d.help
            );
            assert!(
                shown.contains(&format!("environments.live.strategy.canary.{field}")),
                "{case}: {shown}"
            );
        }
    }
}
