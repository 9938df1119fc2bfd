//! Cross-check of the OpenAPI differ against openapi-diff (npm, Atlassian's), on pairs of
//! documents written here. oasdiff, the better reference, has no PyPI or npm build
//! (npm's `oasdiff` is an empty placeholder) and nothing may download a binary, so
//! openapi-diff it is; where it is blind (it compares bodies with json-schema-diff, which
//! ignores `enum`, and does not compare parameter schemas) or disagrees on purpose, the
//! pair says so and the test checks that too, so a change on either side is noticed.
//! The differences are listed in README ("API compatibility").

use serde_json::{Value, json};
use slipway_package::compat::openapi::{Impact, compare};

use crate::reference;

const OPENAPI_DIFF: &str = r#"
const od = require('openapi-diff');
let input = '';
process.stdin.on('data', d => input += d);
process.stdin.on('end', async () => {
  const out = [];
  for (const [i, p] of JSON.parse(input).entries()) {
    const spec = (doc, name) => ({ content: JSON.stringify(doc), location: name + i + '.json', format: 'openapi3' });
    const r = await od.diffSpecs({ sourceSpec: spec(p.old, 'old'), destinationSpec: spec(p.new, 'new') });
    const codes = k => (r[k] || []).map(d => d.code);
    out.push({ breaking: r.breakingDifferencesFound, breakingCodes: codes('breakingDifferences'),
               others: codes('nonBreakingDifferences').concat(codes('unclassifiedDifferences')) });
  }
  console.log(JSON.stringify(out));
});
"#;

/// What openapi-diff says about a pair, relative to Slipway.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reference {
    /// The same breaking / not breaking verdict.
    Agrees,
    /// Sees no change at all (a kind of change it does not compare).
    Blind,
    /// The opposite verdict, on purpose (the reason is in README).
    Disagrees,
}

fn base() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": { "title": "pets", "version": "1.0.0" },
        "paths": {
            "/pets/{id}": { "get": {
                "parameters": [
                    { "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }
                ],
                "responses": { "200": { "description": "a pet", "content": { "application/json": {
                    "schema": { "type": "object", "required": ["id"], "properties": {
                        "id": { "type": "integer" },
                        "status": { "type": "string", "enum": ["available", "sold"] }
                    } } } } } }
            } },
            "/orders": { "post": {
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "type": "object", "properties": {
                        "kind": { "type": "string", "enum": ["pickup", "delivery"] },
                        "note": { "type": "string" }
                    } } } } },
                "responses": { "201": { "description": "created" } }
            } },
            "/health": { "get": { "responses": { "200": { "description": "ok" } } } }
        }
    })
}

type Edit = fn(&mut Value);

const PET: &str = "/paths/~1pets~1{id}/get";
const ORDER: &str = "/paths/~1orders/post";

fn at<'a>(v: &'a mut Value, ptr: &str) -> &'a mut Value {
    v.pointer_mut(ptr).unwrap_or_else(|| panic!("no {ptr}"))
}

fn pet_schema(v: &mut Value) -> &mut Value {
    at(
        v,
        &format!("{PET}/responses/200/content/application~1json/schema"),
    )
}

fn order_schema(v: &mut Value) -> &mut Value {
    at(
        v,
        &format!("{ORDER}/requestBody/content/application~1json/schema"),
    )
}

fn rename_media(content: &mut Value, from: &str, to: &str) {
    let m = content.as_object_mut().unwrap();
    let x = m.remove(from).unwrap();
    m.insert(to.into(), x);
}

/// (name, edit of the new document, Slipway's code and impact, openapi-diff)
const PAIRS: &[(&str, Edit, &str, Impact, Reference)] = &[
    (
        "path parameter integer -> string",
        |v| *at(v, &format!("{PET}/parameters/0/schema/type")) = json!("string"),
        "type-changed",
        Impact::Breaking,
        Reference::Blind,
    ),
    (
        "path parameter integer -> number (widened)",
        |v| *at(v, &format!("{PET}/parameters/0/schema/type")) = json!("number"),
        "type-widened",
        Impact::Compatible,
        Reference::Blind,
    ),
    (
        "response media type JSON -> XML",
        |v| {
            rename_media(
                at(v, &format!("{PET}/responses/200/content")),
                "application/json",
                "application/xml",
            );
        },
        "response-media-type-removed",
        Impact::Breaking,
        Reference::Agrees,
    ),
    (
        "request media type JSON -> XML",
        |v| {
            rename_media(
                at(v, &format!("{ORDER}/requestBody/content")),
                "application/json",
                "application/xml",
            );
        },
        "request-media-type-removed",
        Impact::Breaking,
        Reference::Disagrees,
    ),
    (
        "response enum value added",
        |v| pet_schema(v)["properties"]["status"]["enum"] = json!(["available", "sold", "lost"]),
        "enum-value-added",
        Impact::Breaking,
        Reference::Blind,
    ),
    (
        "response enum value removed",
        |v| pet_schema(v)["properties"]["status"]["enum"] = json!(["available"]),
        "enum-value-removed",
        Impact::Compatible,
        Reference::Blind,
    ),
    (
        "request enum value added",
        |v| order_schema(v)["properties"]["kind"]["enum"] = json!(["pickup", "delivery", "drone"]),
        "enum-value-added",
        Impact::Additive,
        Reference::Blind,
    ),
    (
        "request enum value removed",
        |v| order_schema(v)["properties"]["kind"]["enum"] = json!(["pickup"]),
        "enum-value-removed",
        Impact::Breaking,
        Reference::Blind,
    ),
    (
        "response field type changed",
        |v| pet_schema(v)["properties"]["id"]["type"] = json!("string"),
        "type-changed",
        Impact::Breaking,
        Reference::Agrees,
    ),
    (
        "response field removed",
        |v| {
            let s = pet_schema(v);
            s["properties"].as_object_mut().unwrap().remove("status");
        },
        "response-property-removed",
        Impact::Breaking,
        Reference::Agrees,
    ),
    (
        "request field became required",
        |v| order_schema(v)["required"] = json!(["note"]),
        "request-property-became-required",
        Impact::Breaking,
        Reference::Agrees,
    ),
    (
        "path removed",
        |v| {
            at(v, "/paths").as_object_mut().unwrap().remove("/health");
        },
        "path-removed",
        Impact::Breaking,
        Reference::Agrees,
    ),
    (
        "optional query parameter added",
        |v| {
            at(v, &format!("{PET}/parameters"))
                .as_array_mut()
                .unwrap()
                .push(json!({ "name": "fields", "in": "query", "schema": { "type": "string" } }));
        },
        "optional-parameter-added",
        Impact::Additive,
        Reference::Agrees,
    ),
    (
        "required query parameter added",
        |v| {
            at(v, &format!("{PET}/parameters")).as_array_mut().unwrap().push(
                json!({ "name": "tenant", "in": "query", "required": true, "schema": { "type": "string" } }),
            );
        },
        "required-parameter-added",
        Impact::Breaking,
        Reference::Blind,
    ),
];

#[test]
fn the_differ_agrees_with_openapi_diff_where_both_look() {
    // Slipway's own verdicts first: they hold with or without the reference.
    let mut docs = Vec::new();
    for (name, edit, code, impact, _) in PAIRS {
        let old = base();
        let mut new = base();
        edit(&mut new);
        let r = compare(&old, &new);
        assert!(
            r.changes
                .iter()
                .any(|c| c.code == *code && c.impact == *impact),
            "{name}: expected {code} ({impact:?}), got:\n{}",
            r.to_text()
        );
        docs.push((json!({ "old": old, "new": new }), r.is_breaking()));
    }
    let installed = format!(
        "{}/openapi-diff/package.json",
        reference::npm_root().unwrap_or_default()
    );
    if !reference::available(
        "openapi-diff",
        &["test", "-f", &installed],
        "`npm install -g openapi-diff@0.24.1`",
    ) {
        return;
    }
    let input: Vec<&Value> = docs.iter().map(|(d, _)| d).collect();
    let out = reference::node(OPENAPI_DIFF, &serde_json::to_string(&input).unwrap());
    let theirs: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(theirs.len(), PAIRS.len());
    for ((name, _, _, _, expect), ((_, ours), t)) in PAIRS.iter().zip(docs.iter().zip(&theirs)) {
        let breaking = t["breaking"].as_bool().unwrap();
        let saw_anything = !t["breakingCodes"].as_array().unwrap().is_empty()
            || !t["others"].as_array().unwrap().is_empty();
        let got = if !saw_anything {
            Reference::Blind
        } else if breaking == *ours {
            Reference::Agrees
        } else {
            Reference::Disagrees
        };
        // An optional parameter is invisible to openapi-diff and not breaking for both.
        let got = if *expect == Reference::Agrees && got == Reference::Blind && !*ours {
            Reference::Agrees
        } else {
            got
        };
        assert_eq!(
            got, *expect,
            "{name}: openapi-diff said {t}, Slipway breaking = {ours}"
        );
    }
}
