//! Config rendering: strict placeholders reported with file, line, variable and the
//! environments lacking them; secrets masked or resolved; digests; redaction.

use std::path::Path;

use slipway_model::spec::ReleaseSpec;
use slipway_package::render::{
    EnvFileResolver, Redactor, RenderOptions, SecretMode, SecretRef, check_placeholders,
    check_version_config_in, render_environment, resolve_secrets,
};
use slipway_package::{Error, digest::sha256_bytes};

use crate::common::write;

const SPEC: &str = r#"
apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.4.0, type: feature }
services:
  api:
    version: 2.4.1
    run: { command: "api --port {{ port }}" }
    config:
      - { template: config/api.toml.j2, dest: api.toml }
  worker:
    run: { command: "worker" }
    config:
      - { template: config/worker.env.j2, dest: worker.env }
environments:
  staging:
    target: { process: {} }
    vars: { database_url: "sqlite://staging.db", log_level: debug }
  prod:
    target: { process: {} }
    vars: { database_url: "secret://env/SLIPWAY_TEST_DB_URL", log_level: info, queue: jobs }
  qa:
    target: { exec: {} }
    vars: { database_url: "sqlite://qa.db" }
"#;

const API_TOML: &str = "# api {{ service }} {{ version }} for {{ env }} (release {{ release.name }} {{ release.version }})\ndatabase_url = \"{{ vars.database_url }}\"\nport = {{ port }}\n{% if vars.feature_flag is defined %}flag = {{ vars.feature_flag }}\n{% endif %}log = \"{{ vars.log_level | default('warn') }}\"\n";

const WORKER_ENV: &str =
    "DB={{ vars.database_url }}\n\nQUEUE={{ vars.queue }}\nLEVEL={{ vars.log_level }}\n";

fn fixture(dir: &Path) -> ReleaseSpec {
    write(&dir.join("config/api.toml.j2"), API_TOML.as_bytes());
    write(&dir.join("config/worker.env.j2"), WORKER_ENV.as_bytes());
    slipway_model::validate::load("release.yaml", SPEC)
        .map_err(|e| e.render(false, 100))
        .unwrap()
        .spec
}

#[test]
fn undefined_variable_names_template_line_variable_and_every_environment_lacking_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    let problems = check_placeholders(&spec, dir.path());
    let summary: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{} {}:{} {} [{}]",
                p.code,
                p.template,
                p.line.unwrap_or(0),
                p.variable.clone().unwrap_or_default(),
                p.environments.join(",")
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            // `port` is only defined on targets that assign ports: qa is `exec`.
            "undefined-variable config/api.toml.j2:3 port [qa]",
            // log_level is missing in qa, but the template guards it with default().
            "undefined-variable config/worker.env.j2:3 vars.queue [qa,staging]",
            "undefined-variable config/worker.env.j2:4 vars.log_level [qa]",
        ],
        "{problems:#?}"
    );
    let queue = &problems[1];
    assert!(
        queue.message.contains("config/worker.env.j2:3")
            && queue.message.contains("qa, staging")
            && queue.message.contains("add `queue` to `vars`"),
        "{}",
        queue.message
    );
}

#[test]
fn masked_render_shows_secret_reference_never_value_and_records_digest() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    let files = render_environment(
        &spec,
        dir.path(),
        "prod",
        None,
        &RenderOptions {
            secrets: SecretMode::Masked,
            port: Some(8080),
        },
    )
    .unwrap();
    assert_eq!(files.len(), 2);
    let api = &files[0];
    assert_eq!(
        api.content,
        "# api api 2.4.1 for prod (release shop 2.4.0)\ndatabase_url = \"***secret://env/SLIPWAY_TEST_DB_URL***\"\nport = 8080\nlog = \"info\"\n"
    );
    assert_eq!(api.sha256, sha256_bytes(api.content.as_bytes()));
    assert_eq!(api.secrets, ["secret://env/SLIPWAY_TEST_DB_URL"]);
    assert_eq!(api.dest, "api.toml");
    // Debug output never shows the content.
    assert!(!format!("{api:?}").contains("database_url"));
}

#[test]
fn resolved_render_uses_real_values_and_redactor_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    write(&dir.path().join("secrets/pw"), b"s3cr\"et-file-value\n");
    let mut spec = spec;
    let prod = spec.environments.get_mut("prod").unwrap();
    prod.vars.insert(
        "database_url".into(),
        slipway_model::spec::Scalar("secret://file/secrets/pw".into()),
    );
    let resolver = EnvFileResolver {
        base_dir: dir.path().to_owned(),
    };
    let secrets = resolve_secrets(&spec.environments["prod"], &resolver).unwrap();
    // Debug of the resolved set shows references only.
    assert!(!format!("{secrets:?}").contains("et-file-value"));
    let files = render_environment(
        &spec,
        dir.path(),
        "prod",
        Some("api"),
        &RenderOptions {
            secrets: SecretMode::Resolved(&secrets),
            port: Some(9000),
        },
    )
    .unwrap();
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .content
            .contains("database_url = \"s3cr\"et-file-value\"")
    );

    let redactor = secrets.redactor();
    let log = format!(
        "wrote {} ({}), json: {}",
        files[0].dest,
        files[0].content,
        serde_json::json!({ "content": files[0].content })
    );
    assert!(redactor.leaks(&log));
    let clean = redactor.redact(&log);
    assert!(!redactor.leaks(&clean), "{clean}");
    assert!(!clean.contains("et-file-value"), "{clean}");
    assert!(clean.contains("***secret://file/secrets/pw***"), "{clean}");
}

#[test]
fn resolved_render_without_port_on_a_port_target_refuses_a_template_using_port() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    let secrets = resolve_secrets(
        &spec.environments["staging"],
        &EnvFileResolver {
            base_dir: dir.path().to_owned(),
        },
    )
    .unwrap();
    let err = render_environment(
        &spec,
        dir.path(),
        "staging",
        Some("api"),
        &RenderOptions {
            secrets: SecretMode::Resolved(&secrets),
            port: None,
        },
    )
    .unwrap_err();
    // A render per version (no instance, no port): the template's `{{ port }}` is named,
    // with where the instance's port is found instead.
    let err = err.to_string();
    assert!(
        err.contains("config/api.toml.j2:3: `port` is undefined") && err.contains("$PORT"),
        "{err}"
    );
}

#[test]
fn a_port_in_config_rendered_per_version_is_found_before_install() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    // The masked check shows `port` as `<port>` on process targets (the fixture above
    // relies on it); the per-version check renders as the install does, without one.
    let envs: Vec<&String> = spec.environments.keys().collect();
    let problems = check_version_config_in(&spec, dir.path(), &envs);
    let summary: Vec<_> = problems
        .iter()
        .map(|p| {
            (
                p.code.as_str(),
                p.template.as_str(),
                p.line,
                p.environments.join(","),
            )
        })
        .collect();
    // qa is an exec target: no per-version render there (and `check_placeholders` already
    // reports its undefined `port`).
    assert_eq!(
        summary,
        [(
            "port-in-version-config",
            "config/api.toml.j2",
            Some(3),
            "prod,staging".to_owned()
        )],
        "{problems:#?}"
    );
    let msg = &problems[0].message;
    assert!(
        msg.starts_with("config/api.toml.j2:3: `{{ port }}` in the config of `api`")
            && msg.contains("$PORT")
            && msg.contains("once per version"),
        "{msg}"
    );

    // Guarded, the template renders at install time without a port: no problem.
    write(
        &dir.path().join("config/api.toml.j2"),
        b"{% if port is defined %}port = {{ port }}\n{% endif %}x = 1\n",
    );
    assert_eq!(check_version_config_in(&spec, dir.path(), &envs), []);
}

#[test]
fn missing_env_secret_names_the_variable_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    let err = resolve_secrets(
        &spec.environments["prod"],
        &EnvFileResolver {
            base_dir: dir.path().to_owned(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Secret { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("secret://env/SLIPWAY_TEST_DB_URL") && msg.contains("not set"),
        "{msg}"
    );
}

#[test]
fn render_error_lists_every_problem_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    let err =
        render_environment(&spec, dir.path(), "qa", None, &RenderOptions::default()).unwrap_err();
    let Error::Placeholders { problems } = &err else {
        panic!("{err}")
    };
    let vars: Vec<_> = problems
        .iter()
        .map(|p| (p.variable.clone().unwrap(), p.line))
        .collect();
    assert_eq!(
        vars,
        [
            ("port".to_owned(), Some(3)),
            ("vars.queue".to_owned(), Some(3)),
            ("vars.log_level".to_owned(), Some(4)),
        ]
    );
    // In a single-environment render, the other environments lacking it are named too.
    assert_eq!(problems[1].environments, ["qa", "staging"]);
    assert!(err.to_string().contains("(and 2 more)"), "{err}");
}

#[test]
fn syntax_errors_and_missing_templates_are_problems_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixture(dir.path());
    write(
        &dir.path().join("config/api.toml.j2"),
        b"a = 1\nb = {{ vars.database_url \n",
    );
    std::fs::remove_file(dir.path().join("config/worker.env.j2")).unwrap();
    let problems = check_placeholders(&spec, dir.path());
    let codes: Vec<_> = problems
        .iter()
        .map(|p| (p.code.as_str(), p.line, p.environments.len()))
        .collect();
    assert_eq!(
        codes,
        [
            ("template-syntax", Some(2), 3),
            ("template-unreadable", None, 0)
        ],
        "{problems:#?}"
    );
}

#[test]
fn secret_references_parse_strictly() {
    assert_eq!(
        SecretRef::parse("secret://env/DB_URL").unwrap(),
        Some(SecretRef::Env("DB_URL".into()))
    );
    assert_eq!(
        SecretRef::parse("secret://file/keys/db").unwrap(),
        Some(SecretRef::File("keys/db".into()))
    );
    assert_eq!(SecretRef::parse("postgres://x").unwrap(), None);
    assert!(
        SecretRef::parse("secret://vault/x")
            .unwrap_err()
            .contains("unknown secret source")
    );
    assert!(SecretRef::parse("secret://env/").is_err());
    assert!(SecretRef::parse("secret://env/A-B").is_err());
    assert_eq!(SecretRef::Env("X".into()).mask(), "***secret://env/X***");
}

#[test]
fn redactor_masks_longest_first_and_ignores_empty_values() {
    let r = Redactor::new([
        (SecretRef::Env("SHORT".into()), "abc".to_owned()),
        (SecretRef::Env("LONG".into()), "xxabcxx".to_owned()),
        (SecretRef::Env("EMPTY".into()), String::new()),
    ]);
    assert_eq!(
        r.redact("1 xxabcxx 2 abc 3"),
        "1 ***secret://env/LONG*** 2 ***secret://env/SHORT*** 3"
    );
    assert!(!r.leaks("nothing here"));
    assert!(Redactor::from_values([String::new()]).is_empty());
    let v = Redactor::from_values(["p@ss\\word".to_owned()]);
    // The JSON-escaped form is masked too.
    let json = serde_json::json!({ "line": "pw=p@ss\\word" }).to_string();
    assert!(!v.redact(&json).contains("p@ss"), "{}", v.redact(&json));
}

#[test]
fn the_shop_example_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let text = std::fs::read_to_string(root.join("release.yaml")).unwrap();
    let spec = slipway_model::validate::load("release.yaml", &text)
        .unwrap()
        .spec;
    assert_eq!(check_placeholders(&spec, &root), []);
}
