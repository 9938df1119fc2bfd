//! `slipway render` and `slipway compat` as a user runs them: masked secrets (a known
//! secret value never appears in render or plan output), strict placeholders with exit 2,
//! and compatibility reports with exit 1 on breaking changes.

use crate::{repo, slipway};

/// A value that must never be printed: it is what `secret://env/SHOP_DB_URL` resolves to.
const SECRET: &str = "postgres://shop:hunter2-Kx9@db.internal/shop";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn render_and_plan_never_print_a_secret_value_from_the_environment() {
    let runs: [&[&str]; 4] = [
        &[
            "render",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "prod",
        ],
        &[
            "render",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "prod",
            "--output",
            "json",
        ],
        &[
            "plan",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "prod",
            "--output",
            "json",
        ],
        &["plan", "-f", "examples/shop/release.yaml", "--env", "prod"],
    ];
    for args in runs {
        let o = slipway()
            .env("SHOP_DB_URL", SECRET)
            .args(args)
            .output()
            .unwrap();
        let all = text(&o);
        assert!(!all.contains(SECRET), "{args:?} printed the secret:\n{all}");
        assert!(
            !all.contains("hunter2"),
            "{args:?} printed part of the secret:\n{all}"
        );
        if args[0] == "render" {
            assert_eq!(o.status.code(), Some(0), "{all}");
            assert!(all.contains("***secret://env/SHOP_DB_URL***"), "{all}");
        }
    }
}

#[test]
fn render_text_and_json_for_the_shop() {
    let o = slipway()
        .args([
            "render",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "prod",
            "api",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    insta::assert_snapshot!("render-shop-prod-api", String::from_utf8_lossy(&o.stdout));

    let o = slipway()
        .args([
            "render",
            "-f",
            "examples/shop/release.yaml",
            "--env",
            "staging",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"][0]["dest"], "api.toml");
    assert_eq!(v["files"][0]["sha256"].as_str().unwrap().len(), 64);
    assert!(
        v["files"][0]["content"]
            .as_str()
            .unwrap()
            .contains("sqlite://.slipway/staging.db")
    );
}

#[test]
fn undefined_placeholder_exits_2_naming_template_line_variable_and_environments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("release.yaml"),
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: x, version: 1.0.0, type: patch }\nservices:\n  api:\n    run: { command: api }\n    config: [ { template: api.conf.j2, dest: api.conf } ]\nenvironments:\n  staging: { target: { exec: {} }, vars: { a: 1 } }\n  prod: { target: { exec: {} }, vars: { a: 2 } }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("api.conf.j2"),
        "a={{ vars.a }}\n\nb={{ vars.b }}\n",
    )
    .unwrap();
    let spec = dir.path().join("release.yaml");
    let o = slipway()
        .args(["render", "--env", "prod", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("api.conf.j2:3: `vars.b` is undefined in environments prod, staging"),
        "{err}"
    );

    let o = slipway()
        .args(["render", "--env", "prod", "--output", "json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"][0]["variable"], "vars.b");
    assert_eq!(v["problems"][0]["line"], 3);
    assert_eq!(
        v["problems"][0]["environments"],
        serde_json::json!(["prod", "staging"])
    );
}

#[test]
fn compat_api_and_sql_exit_1_on_breaking_changes() {
    let fixtures = repo().join("crates/slipway-package/tests/fixtures/openapi");
    let o = slipway()
        .args(["compat", "api"])
        .arg(fixtures.join("petstore-v1.yaml"))
        .arg(fixtures.join("petstore-v2.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("operation DELETE /pets/{petId} was removed"));

    let o = slipway()
        .args(["compat", "api", "--output", "json"])
        .arg(fixtures.join("petstore-v1.yaml"))
        .arg(fixtures.join("petstore-v1.yaml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["report"]["breaking"], 0);

    let o = slipway()
        .args([
            "compat",
            "sql",
            "examples/shop/migrations",
            "--dialect",
            "sqlite",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("expand V3__add_orders_index.sql"),
        "{}",
        text(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("V1__t.sql"), "ALTER TABLE t DROP COLUMN c;").unwrap();
    let o = slipway()
        .args(["compat", "sql"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = slipway()
        .args(["compat", "sql", "no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
