//! OpenAPI compatibility on real-world-shaped documents, small to large, with snapshot
//! reports.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use slipway_package::compat::openapi::{Impact, compare, compare_files, parse};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openapi")
        .join(name)
}

#[test]
fn petstore_yaml_to_json_reports_breaking_and_additive_changes() {
    let report = compare_files(&fixture("petstore-v1.yaml"), &fixture("petstore-v2.json")).unwrap();
    assert!(report.is_breaking());
    let has = |code: &str, pointer: &str| {
        report
            .changes
            .iter()
            .any(|c| c.code == code && c.pointer == pointer)
    };
    assert!(has("operation-removed", "/paths/~1pets~1{petId}/delete"));
    assert!(has("path-added", "/paths/~1stores"));
    assert!(has(
        "required-parameter-added",
        "/paths/~1pets/post/parameters/X-Request-Id"
    ));
    assert!(has(
        "enum-value-removed",
        "/paths/~1pets/post/requestBody/content/application~1json/schema/properties/status/enum"
    ));
    assert!(has(
        "type-changed",
        "/paths/~1pets~1{id}/get/responses/200/content/application~1json/schema/properties/id"
    ));
    // Renaming a path parameter ({petId} → {id}) is not a change.
    assert!(!has("path-removed", "/paths/~1pets~1{petId}"));
    insta::assert_snapshot!("openapi-petstore", report.to_text());
}

#[test]
fn identical_documents_and_recursive_schemas_report_nothing() {
    let doc = std::fs::read_to_string(fixture("petstore-v1.yaml")).unwrap();
    let v = parse(&doc).unwrap();
    let r = compare(&v, &v);
    assert_eq!(r.changes, []);
    assert!(!r.is_breaking());
}

#[test]
fn swagger_2_and_garbage_are_refused_with_a_reason() {
    assert!(
        parse("swagger: '2.0'\npaths: {}\n")
            .unwrap_err()
            .contains("not an OpenAPI 3")
    );
    assert!(parse("{ not json").unwrap_err().contains("invalid JSON"));
    assert!(
        parse("openapi: 3.0.0\n")
            .unwrap_err()
            .contains("no `paths`")
    );
}

#[test]
fn widening_a_request_type_is_compatible_but_narrowing_a_response_is_not() {
    let doc = |req: &str, resp: &str| {
        json!({
            "openapi": "3.0.0", "info": { "version": "1" },
            "paths": { "/m": { "put": {
                "requestBody": { "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "v": { "type": req } } } } } },
                "responses": { "200": { "description": "ok", "content": { "application/json": {
                    "schema": { "type": "object", "properties": { "v": { "type": resp } } } } } } }
            } } }
        })
    };
    let r = compare(&doc("integer", "integer"), &doc("number", "number"));
    let impacts: Vec<(Impact, &str)> = r.changes.iter().map(|c| (c.impact, c.code)).collect();
    assert_eq!(
        impacts,
        [
            (Impact::Breaking, "type-changed"),
            (Impact::Compatible, "type-widened"),
        ],
        "{r:#?}"
    );
    assert!(r.changes[0].pointer.contains("/responses/200/"));
}

/// A ~40-path API in the shape of a typical CRUD service.
fn big_api(version: u32) -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for i in 0..20 {
        let name = format!("resource{i:02}");
        let schema = format!("Resource{i:02}");
        let mut props = json!({
            "id": { "type": "string", "format": "uuid" },
            "name": { "type": "string", "maxLength": 200 },
            "created_at": { "type": "string", "format": "date-time" },
            "state": { "type": "string", "enum": ["active", "archived"] }
        });
        let mut required = vec!["id", "name"];
        if version == 2 {
            match i {
                // A response field removed, an enum value added, a new required field.
                3 => {
                    props.as_object_mut().unwrap().remove("created_at");
                }
                7 => props["state"]["enum"] = json!(["active", "archived", "deleted"]),
                11 => {
                    props["region"] = json!({ "type": "string" });
                    required.push("region");
                }
                _ => {}
            }
        }
        schemas.insert(
            schema.clone(),
            json!({ "type": "object", "required": required, "properties": props }),
        );
        let item_ref = json!({ "$ref": format!("#/components/schemas/{schema}") });
        paths.insert(
            format!("/{name}"),
            json!({
                "get": {
                    "parameters": [
                        { "name": "page", "in": "query", "schema": { "type": "integer" } },
                        { "$ref": "#/components/parameters/Limit" }
                    ],
                    "responses": { "200": { "description": "list", "content": { "application/json": {
                        "schema": { "type": "array", "items": item_ref } } } } }
                },
                "post": {
                    "requestBody": { "required": true, "content": { "application/json": { "schema": item_ref } } },
                    "responses": { "201": { "description": "created", "content": { "application/json": { "schema": item_ref } } } }
                }
            }),
        );
        if !(version == 2 && i == 15) {
            paths.insert(
                format!("/{name}/{{{name}_id}}"),
                json!({
                    "get": { "responses": {
                        "200": { "description": "one", "content": { "application/json": { "schema": item_ref } } },
                        "404": { "description": "missing" } } },
                    "delete": { "responses": { "204": { "description": "gone" } } }
                }),
            );
        }
    }
    if version == 2 {
        paths.insert(
            "/health".into(),
            json!({ "get": { "responses": { "200": { "description": "ok" } } } }),
        );
    }
    let limit_max = if version == 2 { 50 } else { 500 };
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Inventory", "version": format!("{version}.0.0") },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": { "Limit": { "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": limit_max } } }
        }
    })
}

#[test]
fn forty_path_api_reports_each_change_once_with_pointers() {
    let old = parse(&big_api(1).to_string()).unwrap();
    let new = parse(&big_api(2).to_string()).unwrap();
    assert_eq!(old["paths"].as_object().unwrap().len(), 40);
    let r = compare(&old, &new);
    // The shared Limit parameter narrowed on all 20 list operations.
    assert_eq!(
        r.changes
            .iter()
            .filter(|c| c.code == "constraint-narrowed")
            .count(),
        20
    );
    assert!(
        r.changes.iter().any(
            |c| c.code == "path-removed" && c.pointer == "/paths/~1resource15~1{resource15_id}"
        )
    );
    insta::assert_snapshot!("openapi-forty-paths", r.to_text());
    insta::assert_json_snapshot!(
        "openapi-forty-paths-summary",
        json!({ "breaking": r.breaking, "additive": r.additive, "total": r.changes.len() })
    );
}
