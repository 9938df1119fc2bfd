//! The JSON Schema: the committed copy is current, and every example validates against it
//! with a real JSON Schema validator.

use crate::repo_path;

const COMMITTED: &str = "schema/slipway-v1.schema.json";

#[test]
fn committed_schema_is_up_to_date() {
    let current = slipway_model::schema::schema_text();
    let path = repo_path(COMMITTED);
    if std::env::var_os("SLIPWAY_UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "{COMMITTED} is stale; regenerate it with: SLIPWAY_UPDATE_SCHEMA=1 cargo test -p slipway-model --test runner schema"
    );
}

#[test]
fn examples_validate_against_the_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path(COMMITTED)).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut n = 0;
    for dir in std::fs::read_dir(repo_path("examples")).unwrap() {
        let spec = dir.unwrap().path().join("release.yaml");
        if !spec.exists() {
            continue;
        }
        n += 1;
        let value: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", spec.display());
    }
    assert!(n >= 3);
}

#[test]
fn schema_rejects_unknown_fields() {
    let schema = slipway_model::schema::schema();
    let validator = jsonschema::validator_for(schema).unwrap();
    let bad = serde_json::json!({
        "apiVersion": "slipway/v1", "kind": "Release",
        "metadata": { "name": "x", "version": "1.0.0", "type": "patch", "colour": "red" },
        "services": {}
    });
    assert!(!validator.is_valid(&bad));
}
