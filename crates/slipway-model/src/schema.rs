//! The JSON Schema of the release spec, generated from the Rust types.
//!
//! `slipway schema` prints it and validation checks documents against it, so the published
//! schema and what Slipway accepts cannot drift apart. schemars renders `Option<T>` as
//! "T or null"; we strip the null because a spec writes an absent field by leaving it out,
//! and "null is allowed" would only make editors suggest something useless.
//!
//! The generated schema is then tightened so that a standard validator (check-jsonschema,
//! an editor) refuses what Slipway refuses for shape, and nothing that passes it can fail
//! to read into the Rust types:
//! - every integer gets the bounds its Rust type holds (`uint32` → 0..=4294967295; 64-bit
//!   ones are capped at 2^53 − 1, the largest integer every JSON reader keeps exactly);
//! - `apiVersion` and `kind` are pinned (`const`);
//! - each "exactly one of" struct ([`crate::spec::EXACTLY_ONE`]) gets a `oneOf` of
//!   `required` alternatives, so two at once (or none) is refused.

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
        integer_bounds(&mut value);
        pin(&mut value);
        exactly_one(&mut value);
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

/// Largest integer a JSON number keeps exactly in every reader (2^53 − 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// `minimum`/`maximum` from the Rust integer type schemars names in `format`; a tighter
/// bound already there (e.g. a weight's 100) is kept.
fn integer_bounds(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let range: Option<(i64, u64)> = match o.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((0, u64::from(u8::MAX))),
                Some("uint16") => Some((0, u64::from(u16::MAX))),
                Some("uint32") => Some((0, u64::from(u32::MAX))),
                Some("uint64" | "uint") => Some((0, MAX_SAFE_INTEGER)),
                Some("int32") => Some((i64::from(i32::MIN), u64::from(i32::MAX.unsigned_abs()))),
                Some("int64" | "int") => Some((-(1 << 53) + 1, MAX_SAFE_INTEGER)),
                _ => None,
            };
            if let Some((min, max)) = range {
                let lower = o
                    .get("minimum")
                    .and_then(Value::as_i64)
                    .map_or(min, |m| m.max(min));
                let upper = o
                    .get("maximum")
                    .and_then(Value::as_u64)
                    .map_or(max, |m| m.min(max));
                o.insert("minimum".into(), Value::from(lower));
                o.insert("maximum".into(), Value::from(upper));
            }
            for (_, child) in o.iter_mut() {
                integer_bounds(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integer_bounds),
        _ => {}
    }
}

/// `apiVersion` and `kind` have one allowed value each.
fn pin(v: &mut Value) {
    for (field, value) in [
        ("apiVersion", crate::spec::API_VERSION),
        ("kind", crate::spec::KIND),
    ] {
        if let Some(Value::Object(p)) = v.pointer_mut(&format!("/properties/{field}")) {
            p.insert("const".into(), Value::from(value));
        }
    }
}

/// A `oneOf` of `required` alternatives on every "exactly one of" struct. A list field
/// (a notification's `email`) counts as set when it has an entry.
fn exactly_one(v: &mut Value) {
    for (name, fields) in crate::spec::EXACTLY_ONE {
        let Some(Value::Object(def)) = v.pointer_mut(&format!("/$defs/{name}")) else {
            continue;
        };
        let is_list = |f: &str| {
            def.get("properties")
                .and_then(|p| p.get(f))
                .and_then(|p| p.get("type"))
                .and_then(Value::as_str)
                == Some("array")
        };
        let alternatives: Vec<Value> = fields
            .iter()
            .map(|f| {
                if is_list(f) {
                    serde_json::json!({"required": [f], "properties": {*f: {"minItems": 1}}})
                } else {
                    serde_json::json!({"required": [f]})
                }
            })
            .collect();
        def.insert("oneOf".into(), Value::Array(alternatives));
    }
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
