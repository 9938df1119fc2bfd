//! The JSON Schema of the release spec, generated from the Rust types.
//!
//! `slipway schema` prints it and validation checks documents against it, so the published
//! schema and what Slipway accepts cannot drift apart. schemars renders `Option<T>` as
//! "T or null"; we strip the null because a spec writes an absent field by leaving it out,
//! and "null is allowed" would only make editors suggest something useless.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::spec::ReleaseSpec;

/// The schema as JSON.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generator = SchemaSettings::draft2020_12().into_generator();
        let schema = generator.into_root_schema_for::<ReleaseSpec>();
        let mut value = schema.to_value();
        strip_null(&mut value);
        if let Value::Object(o) = &mut value {
            o.insert(
                "$id".into(),
                Value::String("https://slipway.dev/schema/slipway-v1.json".into()),
            );
        }
        value
    })
}

/// The schema as pretty JSON text, with a trailing newline (the committed file's form).
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(schema()).unwrap_or_default();
    s.push('\n');
    s
}

fn strip_null(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(types)) = o.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types.remove(0);
                    o.insert("type".into(), t);
                }
            }
            if let Some(Value::Array(any)) = o.get("anyOf") {
                let non_null: Vec<Value> = any
                    .iter()
                    .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
                    .cloned()
                    .collect();
                if non_null.len() == 1 && any.len() == 2 {
                    o.remove("anyOf");
                    if let Value::Object(inner) = &non_null[0] {
                        for (k, val) in inner {
                            o.entry(k.clone()).or_insert_with(|| val.clone());
                        }
                    }
                }
            }
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            for (_, child) in o.iter_mut() {
                strip_null(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// Resolve `{"$ref": "#/$defs/X"}` against the root schema.
pub(crate) fn deref<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    let mut cur = s;
    for _ in 0..8 {
        match cur.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                Some(next) => cur = next,
                None => return cur,
            },
            None => return cur,
        }
    }
    cur
}

/// The subschema that describes the value at a JSON pointer, if the walk can tell.
pub(crate) fn subschema_at<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut cur = deref(root, root);
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let next = if let Some(p) = cur.get("properties").and_then(|p| p.get(&seg)) {
            p
        } else if let Some(a) = cur.get("additionalProperties").filter(|a| a.is_object()) {
            a
        } else {
            cur.get("items").filter(|i| i.is_object())?
        };
        cur = deref(root, next);
    }
    Some(cur)
}

/// Field names allowed in the object at a pointer.
pub(crate) fn allowed_fields(root: &Value, pointer: &str) -> Vec<String> {
    subschema_at(root, pointer)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}
