//! Loading a spec: YAML → structure (JSON Schema) → types → meaning, all problems at once.
//!
//! Three passes, each reporting every problem it finds with a position:
//! 1. [`crate::yaml::parse`] refuses what is not a sane YAML document (syntax, alias bombs,
//!    depth, size, binary) — these stop everything, nothing later could be trusted.
//! 2. The JSON Schema from [`crate::schema`] checks structure: unknown fields (with "did you
//!    mean"), missing fields, wrong types, bad enum values. All of them, not the first.
//! 3. Semantic checks on the typed spec: references between services, environments,
//!    templates, providers and checks (naming the candidates), dependency cycles (with the
//!    cycle path), semver, durations, cron, time zones, dates, "exactly one of" choices.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::diag::{Diagnostic, Pos, Severity, SpecErrors};
use crate::duration::{SpecDuration, parse_duration};
use crate::schema;
use crate::spec::{
    API_VERSION, AnalysisTemplate, BackupPolicy, Check, Environment, IMAGE_FROM_ARTIFACT, KIND,
    Metric, RehearsalRequirement, ReleaseSpec, Router, Service, ServiceKind, Strategy,
    is_pinned_image,
};
use crate::yaml::{self, SpanMap, pointer};

/// A spec that passed validation, with its warnings and source positions.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The spec.
    pub spec: ReleaseSpec,
    /// Non-fatal problems.
    pub warnings: Vec<Diagnostic>,
    /// File name as given.
    pub file: String,
    /// Source text.
    pub source: String,
    /// Positions of every value.
    pub spans: SpanMap,
}

/// Load a spec from raw bytes (refusing non-UTF-8 cleanly).
pub fn load_bytes(file: &str, bytes: &[u8]) -> Result<LoadedSpec, SpecErrors> {
    match std::str::from_utf8(bytes) {
        Ok(text) => load(file, text),
        Err(e) => {
            let at = e.valid_up_to();
            let valid = String::from_utf8_lossy(&bytes[..at]).into_owned();
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Err(SpecErrors {
                file: file.to_owned(),
                source: String::from_utf8_lossy(bytes).into_owned(),
                diagnostics: vec![Diagnostic::new(
                    "not-utf8",
                    "",
                    Pos {
                        line: u32::try_from(line).unwrap_or(u32::MAX),
                        column: u32::try_from(column).unwrap_or(u32::MAX),
                        offset: at,
                        len: 1,
                    },
                    format!("the file is not UTF-8 text (invalid byte at offset {at})"),
                    "a release spec is YAML text in UTF-8; check that -f points at the spec and not at an artifact",
                )],
            })
        }
    }
}

/// Load and validate a spec.
pub fn load(file: &str, text: &str) -> Result<LoadedSpec, SpecErrors> {
    let fail = |diagnostics: Vec<Diagnostic>| SpecErrors {
        file: file.to_owned(),
        source: text.to_owned(),
        diagnostics,
    };
    let (value, spans) = yaml::parse(text).map_err(fail)?;
    let mut cx = Cx {
        spans: &spans,
        diags: Vec::new(),
    };

    if !value.is_object() {
        cx.err_value(
            "not-a-mapping",
            "",
            format!(
                "the document is {}, not a mapping",
                json_type_name(&value)
            ),
            "a release spec is a mapping that starts with `apiVersion: slipway/v1` and `kind: Release`",
        );
        return Err(fail(cx.finish()));
    }
    // A different apiVersion means a different schema: report only that.
    if let Some(v) = value.get("apiVersion").and_then(Value::as_str)
        && v != API_VERSION
    {
        cx.err_value(
            "api-version",
            "/apiVersion",
            format!("unsupported apiVersion `{v}`"),
            format!("this slipway reads `{API_VERSION}`; set `apiVersion: {API_VERSION}`"),
        );
        return Err(fail(cx.finish()));
    }

    let root = schema::schema();
    let mut value = value;
    // `replicas: 10.0` is the integer 10 to JSON Schema; serde would refuse the float.
    whole_floats_to_integers(root, &mut value);

    // Pass 2, structure. Every problem is reported; each is then patched on a copy (an
    // unknown field dropped, a wrong or missing value replaced by a well-typed stand-in)
    // so that pass 3 can still judge the meaning of everything that did parse.
    let first = structural(root, &value, &spans);
    cx.diags.extend(first.diagnostics);
    let mut repaired: Vec<String> = Vec::new();
    // Patched in place: nothing reads the document as written after pass 2 (a copy of a
    // 2,000-service tree cost about a tenth of validating it).
    let mut patched = value;
    let mut repairs = first.repairs;
    for _ in 0..16 {
        if repairs.is_empty() {
            break;
        }
        for r in &repairs {
            repaired.push(r.apply(&mut patched));
        }
        repairs = structural(root, &patched, &spans).repairs;
    }
    let mut typed = None;
    match serde_json::from_value::<ReleaseSpec>(patched) {
        Ok(spec) if repairs.is_empty() => {
            let before = cx.diags.len();
            semantic(&mut cx, &spec);
            typed = Some(spec);
            // A stand-in's own findings are not the user's problems: the structural
            // diagnostic at that place already is.
            let mut kept = cx.diags.split_off(before);
            kept.retain(|d| !repaired.iter().any(|r| within(&d.path, r)));
            cx.diags.extend(kept);
        }
        Ok(_) | Err(_) if !first.exactly_one.is_empty() || !repaired.is_empty() => {
            // The meaning cannot be judged; the structural diagnostics stand alone.
            cx.diags.extend(first.exactly_one);
        }
        Ok(_) | Err(_) => {
            // The schema is generated from the same types, so this means they disagree: a
            // bug, but still reported as a diagnostic rather than a panic.
            cx.err_value(
                "internal",
                "",
                "the spec passed the schema but could not be read",
                "please report this as a Slipway bug, with the spec",
            );
        }
    }
    let diags = cx.finish();
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(fail(diags));
    }
    // No error means pass 3 ran on the document as written (nothing was patched).
    let Some(spec) = typed else {
        return Err(fail(diags));
    };
    Ok(LoadedSpec {
        spec,
        warnings: diags,
        file: file.to_owned(),
        source: text.to_owned(),
        spans,
    })
}

struct Cx<'a> {
    spans: &'a SpanMap,
    diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn err_value(
        &mut self,
        code: &'static str,
        ptr: &str,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        let pos = self.spans.lookup(ptr).value;
        self.diags.push(Diagnostic::new(code, ptr, pos, msg, help));
    }
    fn err_key(
        &mut self,
        code: &'static str,
        ptr: &str,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        let span = self.spans.lookup(ptr);
        let pos = span.key.unwrap_or(span.value);
        self.diags.push(Diagnostic::new(code, ptr, pos, msg, help));
    }
    fn warn(
        &mut self,
        code: &'static str,
        ptr: &str,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        let span = self.spans.lookup(ptr);
        let pos = span.key.unwrap_or(span.value);
        self.diags
            .push(Diagnostic::new(code, ptr, pos, msg, help).warning());
    }
    fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by(|a, b| {
            (
                a.severity != Severity::Error,
                a.pos.line,
                a.pos.column,
                &a.path,
            )
                .cmp(&(
                    b.severity != Severity::Error,
                    b.pos.line,
                    b.pos.column,
                    &b.path,
                ))
        });
        self.diags
            .dedup_by(|a, b| a.path == b.path && a.message == b.message);
        self.diags
    }

    fn duration(&mut self, ptr: &str, v: Option<&SpecDuration>, positive: bool) {
        let Some(v) = v else { return };
        match v.get() {
            Ok(d) if positive && d.is_zero() => self.err_value(
                "invalid-duration",
                ptr,
                format!("duration `{v}` must be greater than zero"),
                "write a positive duration such as `30s` or `5m`",
            ),
            Ok(_) => {}
            Err(e) => self.err_value(
                "invalid-duration",
                ptr,
                format!("invalid duration: {e}"),
                "write durations like `90s`, `5m`, `1h30m` or `300ms`",
            ),
        }
    }

    fn exactly_one(&mut self, ptr: &str, what: &str, options: &[(&str, bool)]) {
        let set: Vec<&str> = options
            .iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| *n)
            .collect();
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        match set.len() {
            1 => {}
            0 => self.err_value(
                "exactly-one",
                ptr,
                format!("{what} needs exactly one of {}", names.join(", ")),
                format!("add one of them, e.g. `{}:`", options[0].0),
            ),
            _ => self.err_value(
                "exactly-one",
                ptr,
                format!(
                    "{what} sets {} at once; exactly one of {} is allowed",
                    set.iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    names.join(", ")
                ),
                "keep one and move the others into separate entries",
            ),
        }
    }

    fn reference(&mut self, ptr: &str, kind: &str, name: &str, known: &[&str]) {
        if known.contains(&name) {
            return;
        }
        self.err_value(
            "unknown-reference",
            ptr,
            format!("unknown {kind} `{name}`"),
            suggest(name, known, kind),
        );
    }
}

/// "did you mean" help: the closest candidate, then the full list.
/// The fix for an unknown field: a field that belongs elsewhere says where, any other
/// gets the nearest known name.
fn unknown_field_help(ptr: &str, field: &str, known: &[&str]) -> String {
    let parent = ptr.rsplit('/').next().unwrap_or_default();
    if field == "listen" && matches!(parent, "nginx" | "haproxy") {
        // The front door of nginx / HAProxy is their own config's `listen` / `bind`.
        return format!(
            "`listen` fixes the built-in proxy's address (`router: {{ builtin: {{ listen: \"127.0.0.1:8080\" }} }}`); behind {parent}, clients connect where {parent}'s own config listens: remove it here"
        );
    }
    suggest(field, known, "field")
}

pub(crate) fn suggest(name: &str, known: &[&str], kind: &str) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(s, _)| *s > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let list = if known.is_empty() {
        format!("no {kind}s are declared")
    } else {
        format!(
            "known {kind}s: {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match best {
        Some((_, b)) => format!("did you mean `{b}`? {list}"),
        None => list,
    }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null (empty)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// What the structural pass found: diagnostics, the "exactly one of" ones held back (pass 3
/// says the same in its own words when it runs), and how to patch each problem.
#[derive(Default)]
struct Structure {
    diagnostics: Vec<Diagnostic>,
    exactly_one: Vec<Diagnostic>,
    repairs: Vec<Repair>,
}

/// A patch that makes one structural problem go away on a copy of the document.
enum Repair {
    /// Drop an unknown field.
    Remove(String),
    /// Put a well-typed stand-in at a pointer (a wrong value, or a missing field).
    Put(String, Value),
}

impl Repair {
    /// Apply it; returns the pointer it changed.
    fn apply(&self, v: &mut Value) -> String {
        let (ptr, new) = match self {
            Repair::Remove(p) => (p, None),
            Repair::Put(p, x) => (p, Some(x)),
        };
        let (parent, key) = ptr.rsplit_once('/').unwrap_or(("", ptr));
        let key = key.replace("~1", "/").replace("~0", "~");
        match (v.pointer_mut(parent), new) {
            (Some(Value::Object(o)), None) => {
                o.remove(&key);
            }
            (Some(Value::Object(o)), Some(x)) => {
                o.insert(key, x.clone());
            }
            (Some(Value::Array(a)), Some(x)) => {
                if let Some(slot) = key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    *slot = x.clone();
                }
            }
            _ => {}
        }
        ptr.clone()
    }
}

/// Whether the dotted path `p` (a diagnostic's) is the one of JSON pointer `at` or inside it.
fn within(p: &str, at: &str) -> bool {
    let at = crate::diag::dotted(at);
    p == at
        || (p.starts_with(&at)
            && (at.is_empty() || matches!(p.as_bytes().get(at.len()), Some(b'.' | b'['))))
}

/// A value the schema `s` accepts, standing in for a wrong or missing one.
fn stand_in(root: &Value, s: &Value) -> Value {
    let s = schema::deref(root, s);
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(alts) = s
        .get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
        && s.get("type").is_none()
        && let Some(first) = alts.first()
    {
        return stand_in(root, first);
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.first().and_then(Value::as_str).unwrap_or("string"),
        _ => "string",
    };
    let bound = |k: &str| s.get(k).and_then(Value::as_f64);
    match ty {
        "object" => Value::Object(serde_json::Map::new()),
        "array" => Value::Array(Vec::new()),
        "boolean" => Value::Bool(false),
        "integer" => Value::from(bound("minimum").map_or(0, |m| m.max(0.0) as u64)),
        "number" => match (bound("exclusiveMinimum"), bound("exclusiveMaximum")) {
            (Some(lo), Some(hi)) => Value::from(f64::midpoint(lo, hi)),
            (Some(lo), None) => Value::from(lo + 1.0),
            _ => Value::from(bound("minimum").unwrap_or(0.0)),
        },
        _ => Value::String(String::new()),
    }
}

/// A whole float (`10.0`) where the schema wants an integer becomes that integer.
///
/// The walk keeps the path as borrowed segments and writes a JSON pointer only for a float:
/// escaping every key of a 2,000-service spec allocated two strings per node.
fn whole_floats_to_integers(root: &Value, v: &mut Value) {
    fn walk<'v>(root: &Value, v: &'v mut Value, path: &mut Vec<Segment<'v>>) {
        match v {
            Value::Object(o) => {
                for (k, child) in o.iter_mut() {
                    path.push(Segment::Key(k));
                    walk(root, child, path);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter_mut().enumerate() {
                    path.push(Segment::Index(i));
                    walk(root, child, path);
                    path.pop();
                }
            }
            Value::Number(n) if n.is_f64() => {
                let Some(x) = n.as_f64() else { return };
                // Within ±2^53 a whole f64 is exactly that integer.
                if x.fract() != 0.0 || x.abs() > schema::MAX_SAFE_INTEGER as f64 {
                    return;
                }
                let mut ptr = String::new();
                for s in path.iter() {
                    match s {
                        Segment::Key(k) => {
                            ptr.push('/');
                            ptr.push_str(&yaml::escape(k));
                        }
                        Segment::Index(i) => ptr.push_str(&format!("/{i}")),
                    }
                }
                let wants_integer = |s: &Value| {
                    let s = schema::deref(root, s);
                    s.get("type").and_then(Value::as_str) == Some("integer")
                        || s.get("anyOf")
                            .and_then(Value::as_array)
                            .is_some_and(|alts| {
                                alts.iter().any(|a| {
                                    schema::deref(root, a).get("type").and_then(Value::as_str)
                                        == Some("integer")
                                })
                            })
                };
                if schema::subschema_at(root, &ptr).is_some_and(wants_integer) {
                    *v = if x < 0.0 {
                        Value::from(x as i64)
                    } else {
                        Value::from(x as u64)
                    };
                }
            }
            _ => {}
        }
    }
    enum Segment<'v> {
        Key(&'v str),
        Index(usize),
    }
    walk(root, v, &mut Vec::new());
}

/// Pass 2: the document against the JSON Schema.
fn structural(root: &Value, value: &Value, spans: &SpanMap) -> Structure {
    static VALIDATOR: std::sync::OnceLock<Option<jsonschema::Validator>> =
        std::sync::OnceLock::new();
    let mut out = Structure::default();
    let Some(validator) = VALIDATOR
        .get_or_init(|| jsonschema::validator_for(root).ok())
        .as_ref()
    else {
        out.diagnostics.push(Diagnostic::new(
            "internal",
            "",
            Pos::default(),
            "the built-in JSON Schema does not compile",
            "please report this as a Slipway bug",
        ));
        return out;
    };
    let mut cx = Cx {
        spans,
        diags: Vec::new(),
    };
    for e in validator.iter_errors(value) {
        let ptr = e.instance_path().as_str().to_owned();
        use jsonschema::error::ValidationErrorKind as K;
        let stand_in_here = || {
            Repair::Put(
                ptr.clone(),
                schema::subschema_at(root, &ptr)
                    .map_or(Value::String(String::new()), |s| stand_in(root, s)),
            )
        };
        match e.kind() {
            K::AdditionalProperties { unexpected } => {
                for field in unexpected {
                    out.repairs
                        .push(Repair::Remove(format!("{ptr}/{}", yaml::escape(field))));
                }
            }
            K::Required { property } => {
                let prop = property.as_str().unwrap_or_default();
                let child = format!("{ptr}/{}", yaml::escape(prop));
                let filler = schema::subschema_at(root, &child)
                    .map_or(Value::String(String::new()), |s| stand_in(root, s));
                out.repairs.push(Repair::Put(child, filler));
            }
            K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. }
                if exactly_one_fields(root, &ptr).is_some() => {}
            _ => out.repairs.push(stand_in_here()),
        }
        if let (K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. }, Some(fields)) =
            (e.kind(), exactly_one_fields(root, &ptr))
        {
            let set: Vec<(&str, bool)> = fields
                .iter()
                .map(|f| {
                    let here = value.pointer(&ptr).and_then(|o| o.get(*f));
                    let is_set = here.is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()));
                    (*f, is_set)
                })
                .collect();
            let mut held = Cx {
                spans,
                diags: Vec::new(),
            };
            held.exactly_one(&ptr, &format!("`{}`", crate::diag::dotted(&ptr)), &set);
            out.exactly_one.extend(held.diags);
            continue;
        }
        match e.kind() {
            K::AdditionalProperties { unexpected } => {
                let allowed = schema::allowed_fields(root, &ptr);
                let known: Vec<&str> = allowed.iter().map(String::as_str).collect();
                for field in unexpected {
                    let child = format!("{ptr}/{}", yaml::escape(field));
                    let where_ = if ptr.is_empty() {
                        "at the top level".to_owned()
                    } else {
                        format!("in `{}`", crate::diag::dotted(&ptr))
                    };
                    cx.err_key(
                        "unknown-field",
                        &child,
                        format!("unknown field `{field}` {where_}"),
                        unknown_field_help(&ptr, field, &known),
                    );
                }
            }
            K::Required { property } => {
                let prop = property.as_str().unwrap_or_default();
                let desc = schema::subschema_at(root, &format!("{ptr}/{}", yaml::escape(prop)))
                    .and_then(|s| s.get("description"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let what = if ptr.is_empty() {
                    "the spec".to_owned()
                } else {
                    format!("`{}`", crate::diag::dotted(&ptr))
                };
                cx.err_key(
                    "missing-field",
                    &ptr,
                    format!("{what} is missing the required field `{prop}`"),
                    if desc.is_empty() {
                        format!("add `{prop}:`")
                    } else {
                        format!("add `{prop}:` — {}", desc.trim_end_matches('.'))
                    },
                );
            }
            K::Type { kind } => {
                let expected = match kind {
                    jsonschema::error::TypeKind::Single(t) => type_word(&t.to_string()),
                    jsonschema::error::TypeKind::Multiple(ts) => ts
                        .iter()
                        .map(|t| type_word(&t.to_string()))
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                let found = json_type_name(e.instance());
                let help = if ptr.ends_with("/version") && e.instance().is_number() {
                    format!(
                        "a version is text with three parts; write it in quotes: \"{}{}\"",
                        scalar_text(e.instance()),
                        ".0".repeat(
                            3usize.saturating_sub(scalar_text(e.instance()).split('.').count())
                        )
                    )
                } else if expected.contains("string") && !e.instance().is_object() {
                    format!(
                        "quote the value to make it text: \"{}\"",
                        scalar_text(e.instance())
                    )
                } else if expected.contains("list") {
                    "write a list, e.g. `[a, b]` or one `- item` per line".to_owned()
                } else if expected.contains("mapping") {
                    "write a mapping of `key: value` lines, indented under this field".to_owned()
                } else {
                    format!("write {expected} here")
                };
                cx.err_value(
                    "wrong-type",
                    &ptr,
                    format!("expected {expected}, found {found}"),
                    help,
                );
            }
            K::Enum { options } => {
                let opts: Vec<String> = options
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|o| o.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let known: Vec<&str> = opts.iter().map(String::as_str).collect();
                let got = scalar_text(e.instance());
                cx.err_value(
                    "invalid-value",
                    &ptr,
                    format!("`{got}` is not allowed here"),
                    suggest(&got, &known, "value"),
                );
            }
            K::Minimum { .. }
            | K::ExclusiveMinimum { .. }
            | K::Maximum { .. }
            | K::ExclusiveMaximum { .. } => {
                let here = schema::subschema_at(root, &ptr);
                let bound = |k: &str| here.and_then(|s| s.get(k)).map(scalar_text);
                let range = match (
                    bound("minimum"),
                    bound("exclusiveMinimum"),
                    bound("maximum"),
                    bound("exclusiveMaximum"),
                ) {
                    (_, Some(lo), _, Some(hi)) => {
                        format!("a value between {lo} and {hi}, both excluded")
                    }
                    (Some(lo), _, Some(hi), _) => format!("a value from {lo} to {hi}"),
                    (Some(lo), ..) => format!("a value of at least {lo}"),
                    (_, Some(lo), ..) => format!("a value above {lo}"),
                    (_, _, Some(hi), _) => format!("a value of at most {hi}"),
                    (_, _, _, Some(hi)) => format!("a value below {hi}"),
                    _ => "a value in range".to_owned(),
                };
                let desc = here
                    .and_then(|s| s.get("description"))
                    .and_then(Value::as_str)
                    .map(|d| format!(" — {}", d.trim_end_matches('.')))
                    .unwrap_or_default();
                cx.err_value(
                    "out-of-range",
                    &ptr,
                    format!("{} is out of range", scalar_text(e.instance())),
                    format!("use {range}{desc}"),
                );
            }
            K::OneOfNotValid { .. } | K::AnyOf { .. } if enum_options(root, &ptr).is_some() => {
                let opts = enum_options(root, &ptr).unwrap_or_default();
                let known: Vec<&str> = opts.iter().map(String::as_str).collect();
                let got = scalar_text(e.instance());
                cx.err_value(
                    "invalid-value",
                    &ptr,
                    format!("`{got}` is not allowed here"),
                    suggest(&got, &known, "value"),
                );
            }
            K::Constant { expected_value } if ptr == "/kind" => cx.err_value(
                "kind",
                &ptr,
                format!("unsupported kind `{}`", scalar_text(e.instance())),
                format!("set `kind: {}`", scalar_text(expected_value)),
            ),
            K::Constant { expected_value } => cx.err_value(
                "invalid-value",
                &ptr,
                format!("`{}` is not allowed here", scalar_text(e.instance())),
                format!("write `{}`", scalar_text(expected_value)),
            ),
            _ => cx.err_value(
                "schema",
                &ptr,
                e.to_string(),
                "see `slipway schema` for what this field accepts",
            ),
        }
    }
    out.diagnostics = cx.diags;
    out
}

/// The fields of the "exactly one of" struct at `ptr`, if it is one.
fn exactly_one_fields(root: &Value, ptr: &str) -> Option<Vec<&'static str>> {
    let here = schema::subschema_at(root, ptr)?;
    crate::spec::EXACTLY_ONE
        .iter()
        .find(|(name, _)| root.pointer(&format!("/$defs/{name}")) == Some(here))
        .map(|(_, fields)| fields.to_vec())
}

/// The allowed values of an enum written as `oneOf` of `const`s (how schemars renders
/// documented enum variants).
fn enum_options(root: &Value, ptr: &str) -> Option<Vec<String>> {
    let s = schema::subschema_at(root, ptr)?;
    let variants = s.get("oneOf").or_else(|| s.get("anyOf"))?.as_array()?;
    let opts: Vec<String> = variants
        .iter()
        .filter_map(|v| v.get("const").and_then(Value::as_str).map(str::to_owned))
        .collect();
    (!opts.is_empty() && opts.len() == variants.len()).then_some(opts)
}

fn type_word(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "string" => "a string".into(),
        "integer" => "an integer".into(),
        "number" => "a number".into(),
        "boolean" => "a boolean (true or false)".into(),
        "null" => "nothing".into(),
        other => other.to_owned(),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const BUILTIN_METRICS: &[&str] = &[
    "error-rate",
    "p50-latency",
    "p95-latency",
    "p99-latency",
    "latency-vs-stable",
    "request-rate",
];

fn semantic(cx: &mut Cx<'_>, spec: &ReleaseSpec) {
    if spec.kind != KIND {
        cx.err_value(
            "kind",
            "/kind",
            format!("unsupported kind `{}`", spec.kind),
            format!("set `kind: {KIND}`"),
        );
    }
    let m = &spec.metadata;
    if m.name.is_empty()
        || !m
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        cx.err_value(
            "invalid-name",
            "/metadata/name",
            format!("release name `{}` is not a simple name", m.name),
            "use lowercase letters, digits, `-` and `_`, e.g. `shop`",
        );
    }
    semver_at(cx, "/metadata/version", &m.version);
    if let Some(tag) = &m.tag
        && !tag.contains("{version}")
    {
        cx.err_value(
            "invalid-tag-pattern",
            "/metadata/tag",
            format!("tag pattern `{tag}` does not contain `{{version}}`"),
            "write the pattern with the version placeholder, e.g. `v{version}`",
        );
    }

    let names: Vec<&str> = spec.services.keys().map(String::as_str).collect();
    if spec.services.is_empty() {
        cx.err_value(
            "no-services",
            "/services",
            "the release has no services",
            "declare at least one service under `services:`",
        );
    }
    for (name, svc) in &spec.services {
        service(cx, spec, name, svc, &names);
    }
    cycles(cx, spec);

    if spec.environments.is_empty() {
        cx.err_key(
            "no-environments",
            "/environments",
            "the release has no environments",
            "declare at least one under `environments:`, e.g. `staging: { target: { exec: {} } }`",
        );
    }
    for (name, env) in &spec.environments {
        environment(cx, spec, name, env);
    }
    if let Some(l) = &spec.lifecycle {
        lifecycle(cx, spec, l);
    }
    if let Some(s) = &spec.strategy {
        strategy(cx, spec, "/strategy", s);
    }
    waivers(cx, spec);
    for (name, t) in &spec.analysis_templates {
        template(cx, spec, name, t);
    }
    for (name, p) in &spec.providers {
        let ptr = pointer(["providers", name]);
        cx.exactly_one(
            &ptr,
            &format!("provider `{name}`"),
            &[
                ("prometheus", p.prometheus.is_some()),
                ("http", p.http.is_some()),
            ],
        );
        if name == "builtin" {
            cx.err_key(
                "reserved-name",
                &ptr,
                "`builtin` is the name of the built-in provider",
                "give this provider another name",
            );
        }
        for (field, u) in [("prometheus", &p.prometheus), ("http", &p.http)] {
            if let Some(u) = u {
                let url_ptr = pointer(["providers", name, field, "url"]);
                url_at(cx, &url_ptr, &u.url);
                placeholders(cx, spec, &url_ptr, &u.url);
                literal_password(cx, &url_ptr, &u.url);
                cx.duration(
                    &pointer(["providers", name, field, "timeout"]),
                    u.timeout.as_ref(),
                    true,
                );
            }
        }
    }
    for (name, c) in &spec.checks {
        check(cx, name, c);
    }
    for (i, n) in spec.notifications.iter().enumerate() {
        let ptr = format!("/notifications/{i}");
        cx.exactly_one(
            &ptr,
            "a notification",
            &[
                ("webhook", n.webhook.is_some()),
                ("email", !n.email.is_empty()),
                ("file", n.file.is_some()),
            ],
        );
        if let Some(u) = &n.webhook {
            url_at(cx, &format!("{ptr}/webhook"), u);
        }
        for (j, e) in n.email.iter().enumerate() {
            if !e.contains('@') || e.starts_with('@') || e.ends_with('@') {
                cx.err_value(
                    "invalid-email",
                    &format!("{ptr}/email/{j}"),
                    format!("`{e}` is not an email address"),
                    "write an address like `oncall@example.com`",
                );
            }
        }
    }
    if let Some(p) = &spec.policy {
        for (t, r) in [
            ("feature", &p.feature),
            ("patch", &p.patch),
            ("security", &p.security),
            ("hotfix", &p.hotfix),
        ] {
            if let Some(r) = r {
                cx.duration(&pointer(["policy", t, "soak"]), r.soak.as_ref(), false);
            }
        }
    }
}

fn semver_at(cx: &mut Cx<'_>, ptr: &str, v: &str) {
    if let Err(e) = semver::Version::parse(v) {
        let numeric = v
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let hint = if numeric && v.split('.').count() < 3 {
            format!(
                "write all three parts: `{v}{}`",
                ".0".repeat(3 - v.split('.').count().min(3))
            )
        } else {
            "write a semantic version like `2.4.0` or `2.4.0-rc.1`".to_owned()
        };
        cx.err_value(
            "invalid-semver",
            ptr,
            format!("`{v}` is not a semantic version: {e}"),
            hint,
        );
    }
}

/// [`change_management`] for a change system outside a spec (the admin policy's), with
/// the policy file's spans.
pub(crate) fn change_management_at(
    spans: &SpanMap,
    ptr: &str,
    c: &crate::spec::ChangeManagement,
) -> Vec<Diagnostic> {
    let mut cx = Cx {
        spans,
        diags: Vec::new(),
    };
    change_management(&mut cx, ptr, c);
    cx.diags
}

/// An environment's change gate: a URL, credentials only from an environment variable,
/// what each system needs (`http` says where approval is), pointers that are pointers,
/// known outcome names for Jira transitions, a timeout that parses.
fn change_management(cx: &mut Cx<'_>, ptr: &str, c: &crate::spec::ChangeManagement) {
    use crate::spec::ChangeSystem;
    url_at(cx, &format!("{ptr}/url"), &c.url);
    if let Some(cred) = &c.credentials {
        let name = cred.strip_prefix("secret://env/").unwrap_or_default();
        let valid = !name.is_empty()
            && !name.starts_with(|ch: char| ch.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            cx.err_value(
                "change-credentials",
                &format!("{ptr}/credentials"),
                "the change system's credentials must come from an environment variable, not the spec",
                "write `credentials: secret://env/NAME` and export NAME=user:password (or NAME='Bearer TOKEN') where slipway runs",
            );
        }
    }
    if c.system == ChangeSystem::Http && c.approved.is_none() {
        cx.err_key(
            "change-mapping",
            ptr,
            "an `http` change system needs `approved:`, the JSON pointer to the record's approval",
            "add e.g. `approved: /change/approval` (and `approved_values` if approved is not `approved` or `true`)",
        );
    }
    if c.system == ChangeSystem::Http && !c.url.contains("{change}") {
        cx.err_value(
            "change-mapping",
            &format!("{ptr}/url"),
            "an `http` change system's URL must say where the record id goes",
            "put `{change}` in it, e.g. `https://changes.example.com/api/changes/{change}`",
        );
    }
    for (field, value) in [
        ("approved", &c.approved),
        ("start", &c.start),
        ("end", &c.end),
    ] {
        if let Some(v) = value
            && !v.starts_with('/')
        {
            cx.err_value(
                "change-mapping",
                &format!("{ptr}/{field}"),
                format!("`{v}` is not a JSON pointer"),
                "write a pointer from the answer's root, e.g. `/result/0/approval`",
            );
        }
    }
    if let Some(u) = &c.outcome_url {
        url_at(cx, &format!("{ptr}/outcome_url"), u);
    }
    for k in c.transitions.keys() {
        if !matches!(k.as_str(), "succeeded" | "rolled_back" | "failed") {
            cx.err_key(
                "change-mapping",
                &format!("{ptr}/transitions/{k}"),
                format!("`{k}` is not a run outcome"),
                "name transitions by outcome: `succeeded`, `rolled_back`, `failed`",
            );
        }
    }
    cx.duration(&format!("{ptr}/timeout"), c.timeout.as_ref(), false);
}

fn url_at(cx: &mut Cx<'_>, ptr: &str, u: &str) {
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
        cx.err_value(
            "invalid-url",
            ptr,
            format!("`{u}` is not an http(s) URL"),
            "write a full URL such as `http://127.0.0.1:9090`",
        );
    }
}

fn endpoint_at(cx: &mut Cx<'_>, ptr: &str, e: &str) {
    // `host:port`, or a URL (`http://host:port/path`, `tls://host:port?ca=FILE`,
    // `postgres://user@host[:port]/db`): the authority is what must name host and port.
    let (scheme, rest) = e.split_once("://").unwrap_or(("", e));
    let authority = if scheme.is_empty() {
        rest
    } else {
        rest.split(['/', '?']).next().unwrap_or(rest)
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let ok = match authority.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && (port.contains("{{") || port.parse::<u16>().is_ok_and(|p| p > 0))
        }
        // PostgreSQL has a default port.
        None => matches!(scheme, "postgres" | "postgresql") && !authority.is_empty(),
    } || authority.contains("{base}");
    if !ok {
        cx.err_value(
            "invalid-endpoint",
            ptr,
            format!("`{e}` is not `host:port`"),
            "write the endpoint as host and port, e.g. `db.internal:5432` or `{{ vars.db_host }}:5432`",
        );
    }
}

/// Variables Slipway sets for every instance itself; inheriting them would be overwritten.
pub const INSTANCE_VARS: &[&str] = &[
    "PORT",
    "SLIPWAY_SERVICE",
    "SLIPWAY_VERSION",
    "SLIPWAY_CONFIG_DIR",
];

/// `run.inherit_env`: names of real variables, each once, none that Slipway or `run.env`
/// already sets (the value would silently not be the host's).
fn inherit_env(cx: &mut Cx<'_>, ptr: &str, r: &crate::spec::RunSpec) {
    let mut seen = BTreeMap::new();
    for (i, name) in r.inherit_env.iter().enumerate() {
        let p = format!("{ptr}/{i}");
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            cx.err_value(
                "invalid-name",
                &p,
                format!("`{name}` is not an environment variable name"),
                "use letters, digits and `_`, not starting with a digit (e.g. `JAVA_HOME`)",
            );
        } else if INSTANCE_VARS.contains(&name.as_str()) {
            cx.err_value(
                "reserved-name",
                &p,
                format!("`{name}` is set by Slipway for each instance and cannot be inherited"),
                format!("remove `{name}` from run.inherit_env"),
            );
        } else if r.env.contains_key(name) {
            cx.err_value(
                "conflict",
                &p,
                format!("`{name}` is both given in run.env and inherited"),
                format!("keep `{name}` in one of run.env and run.inherit_env"),
            );
        } else if let Some(first) = seen.insert(name.as_str(), i) {
            cx.err_value(
                "duplicate",
                &p,
                format!("`{name}` is listed twice in run.inherit_env (entries {first} and {i})"),
                format!("list `{name}` once"),
            );
        }
    }
}

/// Refuse an environment or service name outside the safe set
/// ([`crate::text::is_safe_name`]): such names become directories under the store and
/// appear on terminals, so `../x` or an escape sequence must never get that far. The
/// message shows the name escaped.
fn safe_name(cx: &mut Cx<'_>, ptr: &str, kind: &str, name: &str) {
    if !crate::text::is_safe_name(name) {
        cx.err_key(
            "invalid-name",
            ptr,
            format!(
                "{kind} name `{}` is not a simple name",
                name.escape_default()
            ),
            format!(
                "use 1 to {} letters, digits, `-` and `_`, starting with a letter or digit, e.g. `prod-eu`",
                crate::text::NAME_MAX
            ),
        );
    }
}

fn service(cx: &mut Cx<'_>, spec: &ReleaseSpec, name: &str, s: &Service, names: &[&str]) {
    let base = pointer(["services", name]);
    let at = |f: &str| format!("{base}/{f}");
    safe_name(cx, &base, "service", name);
    if let Some(v) = &s.version {
        semver_at(cx, &at("version"), v);
    }
    if let Some(a) = &s.artifact {
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            cx.err_value(
                "invalid-digest",
                &at("artifact/sha256"),
                format!("`{}` is not a sha256 digest (64 hex digits)", a.sha256),
                format!(
                    "compute it with `sha256sum {}` and paste the 64-digit digest",
                    a.path
                ),
            );
        }
        if a.path.is_empty() {
            cx.err_value(
                "empty",
                &at("artifact/path"),
                "artifact path is empty",
                "give the path of the artifact file",
            );
        }
    }
    for (i, d) in s.depends_on.iter().enumerate() {
        // A map lookup first: `reference` searches the list (for its "did you mean"), which
        // was a fifth of validating 2,000 services with 10,000 edges (issue 20 part 5).
        if d != name && spec.services.contains_key(d) {
            continue;
        }
        let p = format!("{}/{i}", at("depends_on"));
        if d == name {
            cx.err_value(
                "self-dependency",
                &p,
                format!("service `{name}` depends on itself"),
                "remove it from its own depends_on",
            );
        } else {
            cx.reference(&p, "service", d, names);
        }
    }
    for (i, d) in s.coupled_with.iter().enumerate() {
        if d != name && spec.services.contains_key(d) {
            continue;
        }
        let p = format!("{}/{i}", at("coupled_with"));
        if d == name {
            cx.err_value(
                "self-coupling",
                &p,
                format!("service `{name}` is coupled with itself"),
                "remove it",
            );
        } else {
            cx.reference(&p, "service", d, names);
        }
    }
    let deployed_anywhere: BTreeSet<&str> = spec
        .environments
        .values()
        .flat_map(|e| e.deployed.keys().map(String::as_str))
        .collect();
    for (other, req) in &s.requires {
        let p = pointer(["services", name, "requires", other]);
        let r = match semver::VersionReq::parse(req) {
            Ok(r) => r,
            Err(e) => {
                cx.err_value(
                    "invalid-version-req",
                    &p,
                    format!("`{req}` is not a version requirement: {e}"),
                    "write a requirement like `>=2.3, <3` or `^1.4`",
                );
                continue;
            }
        };
        match spec.services.get(other) {
            Some(o) => {
                let v = o.version.as_ref().unwrap_or(&spec.metadata.version);
                if let Ok(v) = semver::Version::parse(v)
                    && !r.matches(&v)
                {
                    cx.err_value(
                            "version-conflict",
                            &p,
                            format!("`{name}` requires {other} `{req}`, but this release ships {other} {v}"),
                            format!("ship a version of {other} that matches `{req}`, or relax the requirement"),
                        );
                }
            }
            None if deployed_anywhere.contains(other.as_str()) => {}
            None => {
                let mut known: Vec<&str> = names.to_vec();
                known.extend(deployed_anywhere.iter());
                cx.err_key(
                    "unknown-reference",
                    &p,
                    format!("`{name}` requires unknown service `{other}`"),
                    suggest(other, &known, "service"),
                );
            }
        }
    }
    if let Some(r) = &s.run {
        match r.image.as_deref() {
            None if r.command.trim().is_empty() => {
                cx.err_value(
                    "empty",
                    &at("run/command"),
                    "run.command is empty",
                    "give the command that starts one instance, or `image:` to run a container",
                );
            }
            None => {}
            Some(IMAGE_FROM_ARTIFACT) if s.artifact.is_none() => {
                cx.err_value(
                    "missing-artifact",
                    &at("run/image"),
                    "run.image is `artifact` but the service has no `artifact:`",
                    "add `artifact: { path: IMAGE_LAYOUT_DIR, sha256: MANIFEST_DIGEST }` (`slipway package image DIR` builds one and prints its digest), or give a registry reference pinned by digest",
                );
            }
            Some(IMAGE_FROM_ARTIFACT) => {}
            Some(reference) if !is_pinned_image(reference) => {
                cx.err_value(
                    "unpinned-image",
                    &at("run/image"),
                    format!("run.image `{reference}` is not pinned by digest"),
                    "name the image by its manifest digest, `REGISTRY/NAME@sha256:<64 hex>` (`skopeo inspect docker://REF` shows it), or `artifact` to run the service's OCI image artifact: a tag can point at other bytes tomorrow",
                );
            }
            Some(_) => {}
        }
        if r.image.is_some() && shlex::split(&r.command).is_none() {
            cx.err_value(
                "invalid",
                &at("run/command"),
                "run.command cannot be split into arguments (an unclosed quote?)",
                "with `image:`, run.command is the entrypoint's arguments split as a shell would: close the quote or escape it",
            );
        }
        if r.replicas == 0 {
            cx.err_value(
                "out-of-range",
                &at("run/replicas"),
                "replicas is 0",
                "run at least one instance, or remove the service from the release",
            );
        }
        inherit_env(cx, &at("run/inherit_env"), r);
    }
    let mut seen = BTreeMap::new();
    for (i, st) in s.steps.iter().enumerate() {
        // The step's pointer only for a finding: 2,000 services formatted five pointers
        // each that nothing read (issue 20 part 5).
        let p = || format!("{base}/steps/{i}");
        if let Some(first) = seen.insert(st.name.as_str(), i) {
            cx.err_value(
                "duplicate-step",
                &format!("{}/name", p()),
                format!(
                    "step name `{}` is used twice (steps {first} and {i})",
                    st.name
                ),
                "give every step of a service its own name: it keys the step's idempotency",
            );
        }
        if st.run.trim().is_empty() {
            cx.err_value(
                "empty",
                &format!("{}/run", p()),
                "step command is empty",
                "give the command to run",
            );
        }
        if st.timeout.is_some() {
            cx.duration(&format!("{}/timeout", p()), st.timeout.as_ref(), true);
        }
        let fields = [
            ("run", Some(&st.run)),
            ("creates", st.creates.as_ref()),
            ("unless", st.unless.as_ref()),
            ("undo", st.undo.as_ref()),
        ];
        for (field, text) in fields {
            // Without `{{` a command has no placeholder, so nothing to check.
            if let Some(text) = text
                && text.contains("{{")
            {
                step_placeholders(cx, spec, &format!("{}/{field}", p()), text);
            }
        }
    }
    for (field, probe) in [("health", &s.health), ("readiness", &s.readiness)] {
        let Some(pr) = probe else { continue };
        let p = at(field);
        cx.exactly_one(
            &p,
            &format!("the {field} probe"),
            &[
                ("http", pr.http.is_some()),
                ("tcp", pr.tcp.is_some()),
                ("command", pr.command.is_some()),
            ],
        );
        if let Some(h) = &pr.http
            && !h.starts_with('/')
        {
            cx.err_value(
                "invalid-probe",
                &format!("{p}/http"),
                format!("probe path `{h}` does not start with `/`"),
                format!(
                    "write the path on the instance, e.g. `/{}`",
                    h.trim_start_matches('/')
                ),
            );
        }
        cx.duration(&format!("{p}/timeout"), pr.timeout.as_ref(), true);
        cx.duration(&format!("{p}/deadline"), pr.deadline.as_ref(), true);
    }
    if let Some(r) = &s.resources {
        for (f, v) in [("memory", &r.memory), ("disk", &r.disk)] {
            if let Some(v) = v
                && crate::text::parse_size(v).is_none_or(|b| b == 0)
            {
                cx.err_value(
                    "invalid-quantity",
                    &at(&format!("resources/{f}")),
                    format!("`{v}` is not a size"),
                    "write sizes like `256Mi`, `1Gi` or `500M`",
                );
            }
        }
        if let Some(c) = r.cpu
            && (c <= 0.0 || !c.is_finite())
        {
            cx.err_value(
                "out-of-range",
                &at("resources/cpu"),
                format!("cpu {c} must be positive"),
                "write cores as a number, e.g. `0.5`",
            );
        }
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        endpoint_at(cx, &format!("{}/{i}", at("endpoints")), e);
    }
    for (i, a) in s.accounts.iter().enumerate() {
        cx.exactly_one(
            &format!("{}/{i}", at("accounts")),
            "an account",
            &[
                ("unix", a.unix.is_some()),
                ("postgres", a.postgres.is_some()),
            ],
        );
    }
    match s.kind {
        ServiceKind::Migration => {
            for (f, v) in [("migrations", &s.migrations), ("database", &s.database)] {
                if v.is_none() {
                    cx.err_key(
                        "missing-field",
                        &base,
                        format!("migration service `{name}` is missing `{f}`"),
                        if f == "migrations" {
                            "add `migrations: ./migrations` (a directory of V{n}__name.sql and U{n}__name.sql files)"
                        } else {
                            "add `database: \"{{ vars.database_url }}\"`"
                        },
                    );
                }
            }
        }
        ServiceKind::App => {
            for (f, set) in [
                ("migrations", s.migrations.is_some()),
                ("database", s.database.is_some()),
                ("irreversible", s.irreversible),
            ] {
                if set {
                    cx.err_key(
                        "migration-field",
                        &at(f),
                        format!("`{f}` only applies to `kind: migration` services"),
                        format!("add `kind: migration` to `{name}`, or move the migrations to their own service"),
                    );
                }
            }
            if s.artifact.is_none() && s.run.is_none() && s.steps.is_empty() {
                cx.warn(
                    "nothing-to-deploy",
                    &base,
                    format!("service `{name}` has no artifact, run command or steps: nothing will be deployed"),
                    "add `run:` (process/ssh targets) or `steps:` (exec target)",
                );
            }
        }
    }
}

/// A waiver accepts a breaking change on someone's word, so the word must be there: an
/// empty reason or decider would make the audit entry it becomes worthless. Whether the
/// finding exists is only known when the plan reads the files (an unused waiver is a plan
/// warning there).
fn waivers(cx: &mut Cx<'_>, spec: &ReleaseSpec) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, w) in spec.waivers.iter().enumerate() {
        let i = i.to_string();
        for (field, value, fix) in [
            (
                "finding",
                &w.finding,
                "copy the finding id from `slipway plan`, e.g. `migration:db:V7__drop_total.sql`",
            ),
            (
                "reason",
                &w.reason,
                "say why the breaking change is acceptable, e.g. `no client reads total since 2.1`",
            ),
            ("by", &w.by, "name who decided, e.g. `alice@example.com`"),
        ] {
            if value.trim().is_empty() {
                cx.err_value(
                    "empty-waiver-field",
                    &pointer(["waivers", i.as_str(), field]),
                    format!("waiver {i} has an empty `{field}`"),
                    fix,
                );
            }
        }
        if !seen.insert(w.finding.as_str()) {
            cx.err_value(
                "duplicate-waiver",
                &pointer(["waivers", i.as_str(), "finding"]),
                format!("finding `{}` is waived twice", w.finding),
                "keep one waiver per finding",
            );
        }
    }
}

fn cycles(cx: &mut Cx<'_>, spec: &ReleaseSpec) {
    use petgraph::graph::DiGraph;
    let mut g = DiGraph::<&str, ()>::new();
    let mut idx = BTreeMap::new();
    for n in spec.services.keys() {
        idx.insert(n.as_str(), g.add_node(n.as_str()));
    }
    for (n, s) in &spec.services {
        for d in &s.depends_on {
            if let (Some(&a), Some(&b)) = (idx.get(n.as_str()), idx.get(d.as_str()))
                && a != b
            {
                g.add_edge(a, b, ());
            }
        }
    }
    for scc in petgraph::algo::tarjan_scc(&g) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<&str> = scc.iter().map(|i| g[*i]).collect();
        // Walk from the alphabetically first member along in-cycle edges until we return.
        let Some(&start) = members.iter().next() else {
            continue;
        };
        let mut path = vec![start];
        let mut cur = start;
        for _ in 0..members.len() {
            let next = spec.services[cur]
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| members.contains(d))
                .min_by_key(|d| (*d != start, *d));
            let Some(next) = next else { break };
            path.push(next);
            if next == start {
                break;
            }
            if path[..path.len() - 1].contains(&next) {
                break;
            }
            cur = next;
        }
        let Some(pos) = spec.services[start]
            .depends_on
            .iter()
            .position(|d| members.contains(d.as_str()))
        else {
            continue;
        };
        cx.err_value(
            "dependency-cycle",
            &format!("{}/{pos}", pointer(["services", start, "depends_on"])),
            format!("dependency cycle: {}", path.join(" → ")),
            "services cannot depend on each other in a circle; remove one of these depends_on entries (services that must move together belong in coupled_with)",
        );
    }
}

/// The lifecycle names declared environments, each once, and soaks only where there is an
/// environment before to soak in.
fn lifecycle(cx: &mut Cx<'_>, spec: &ReleaseSpec, l: &crate::spec::Lifecycle) {
    let envs: Vec<&str> = spec.environments.keys().map(String::as_str).collect();
    for (i, name) in l.order.iter().enumerate() {
        let ptr = format!("/lifecycle/order/{i}");
        if l.order[..i].contains(name) {
            cx.err_value(
                "duplicate",
                &ptr,
                format!("`{name}` appears twice in the lifecycle"),
                "name each environment once, in the order releases go through them",
            );
        } else {
            cx.reference(&ptr, "environment", name, &envs);
        }
    }
    for (env, d) in &l.soak {
        let ptr = format!("/lifecycle/soak/{}", yaml::escape(env));
        cx.duration(&ptr, Some(d), false);
        if l.order.first() == Some(env) || !l.order.contains(env) {
            cx.err_key(
                "invalid-soak",
                &ptr,
                format!("`{env}` has no environment before it in the lifecycle to soak in"),
                "give a soak to an environment that follows another in `lifecycle.order`",
            );
        }
    }
}

fn environment(cx: &mut Cx<'_>, spec: &ReleaseSpec, name: &str, e: &Environment) {
    let base = pointer(["environments", name]);
    let at = |f: &str| format!("{base}/{f}");
    safe_name(cx, &base, "environment", name);
    if let Some(c) = &e.change {
        change_management(cx, &at("change"), c);
    }
    cx.exactly_one(
        &at("target"),
        &format!("the target of `{name}`"),
        &[
            ("exec", e.target.exec.is_some()),
            ("process", e.target.process.is_some()),
            ("ssh", e.target.ssh.is_some()),
        ],
    );
    if let Some(x) = &e.target.exec {
        cx.duration(&at("target/exec/timeout"), x.timeout.as_ref(), true);
        if x.parallelism == Some(0) {
            cx.err_value(
                "out-of-range",
                &at("target/exec/parallelism"),
                "parallelism is 0",
                "use at least 1",
            );
        }
    }
    if let Some(s) = &e.target.ssh {
        ssh_counts(cx, &at("target/ssh"), s);
    }
    if let Some(p) = &e.target.process {
        cx.duration(
            &at("target/process/stop_grace"),
            p.stop_grace.as_ref(),
            false,
        );
    }
    for (i, w) in e.windows.iter().enumerate() {
        let p = format!("{}/{i}", at("windows"));
        if let Err(err) = crate::cron::parse(&w.cron) {
            cx.err_value(
                "invalid-cron",
                &format!("{p}/cron"),
                err,
                "write five fields: minute hour day-of-month month day-of-week, e.g. `0 9 * * MON-THU`",
            );
        }
        if jiff::tz::TimeZone::get(&w.timezone).is_err() {
            cx.err_value(
                "invalid-timezone",
                &format!("{p}/timezone"),
                format!("`{}` is not an IANA time zone", w.timezone),
                "write a zone name such as `Europe/Berlin`, `America/New_York` or `UTC`",
            );
        }
        cx.duration(&format!("{p}/duration"), Some(&w.duration), true);
    }
    for (i, f) in e.freezes.iter().enumerate() {
        let p = format!("{}/{i}", at("freezes"));
        let from = date_at(cx, &format!("{p}/from"), &f.from);
        let to = date_at(cx, &format!("{p}/to"), &f.to);
        if let (Some(a), Some(b)) = (from, to)
            && a > b
        {
            cx.err_value(
                "invalid-date-range",
                &format!("{p}/to"),
                format!("the freeze ends ({b}) before it starts ({a})"),
                "swap `from` and `to`",
            );
        }
        if let Some(tz) = &f.timezone
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            cx.err_value(
                "invalid-timezone",
                &format!("{p}/timezone"),
                format!("`{tz}` is not an IANA time zone"),
                "write a zone name such as `Europe/Berlin` or `UTC`",
            );
        }
        if f.reason.trim().is_empty() {
            cx.err_value(
                "empty",
                &format!("{p}/reason"),
                "the freeze has no reason",
                "say why, e.g. `holiday freeze`: it is shown to whoever is refused",
            );
        }
    }
    if let Some(a) = &e.approvals
        && a.required == 0
        && !a.groups.is_empty()
    {
        cx.warn(
            "approvals-zero",
            &at("approvals/required"),
            "approval groups are set but 0 approvals are required",
            "set `required:` to the number of approvers needed",
        );
    }
    if let Some(s) = &e.signature
        && s.required
        && s.keys.is_empty()
    {
        cx.err_key(
            "missing-field",
            &at("signature"),
            "signatures are required but no trusted keys are listed",
            "add `keys: [keys/release.pub]` (minisign public key files)",
        );
    }
    if let Some(s) = &e.strategy {
        strategy(cx, spec, &at("strategy"), s);
    }
    if let Some(infra) = &e.infrastructure {
        if infra.paths.is_empty() {
            cx.err_value(
                "empty",
                &at("infrastructure/paths"),
                "no infrastructure paths are listed",
                "list the IaC files or directories, e.g. `paths: [infra/]`, or remove `infrastructure`",
            );
        }
        for (i, p) in infra.paths.iter().enumerate() {
            if p.trim().is_empty()
                || std::path::Path::new(p).is_absolute()
                || p.split('/').any(|c| c == "..")
            {
                cx.err_value(
                    "invalid-path",
                    &format!("{}/{i}", at("infrastructure/paths")),
                    format!("`{p}` is not a path inside the repository"),
                    "write a path relative to the spec file, without `..`",
                );
            }
        }
    }
    let check_names: Vec<&str> = spec.checks.keys().map(String::as_str).collect();
    for (i, c) in e.checks.iter().enumerate() {
        cx.reference(&format!("{}/{i}", at("checks")), "check", c, &check_names);
    }
    if let Some(b) = &e.backup {
        backup_policy(cx, &at("backup"), b);
    }
    if let Some(r) = &e.recovery {
        cx.duration(&at("recovery/rto"), r.rto.as_ref(), true);
        cx.duration(&at("recovery/rpo"), r.rpo.as_ref(), false);
        if r.rehearsal == Some(RehearsalRequirement::Required) && r.rto.is_none() && r.rpo.is_none()
        {
            // A rehearsal with nothing to meet passes whatever it measures.
            cx.err_key(
                "missing-field",
                &at("recovery"),
                format!("`{name}` requires a rollback rehearsal but declares no objectives"),
                "add `rto:` and/or `rpo:`, e.g. `rto: 5m` and `rpo: 0s`",
            );
        }
    }
    if let Some(r) = &e.router {
        router(cx, spec, name, e, r);
    }
    // `deployed:` names systems Slipway does not deploy (a database server, another
    // team's service): a name that is not a service of this release is the point.
    for (svc, v) in &e.deployed {
        let p = format!("{}/{}", at("deployed"), yaml::escape(svc));
        semver_at(cx, &p, v);
    }
}

/// What each router can do with the canary's match routes and session affinity: the
/// built-in proxy and nginx apply both (nginx reads a header through `$http_NAME`, so
/// its name must be letters, digits and `-`); HAProxy applies match routes from a map
/// file (`routes_map`) and session affinity by its cookie persistence, neither to a fleet
/// canary on the ssh target (`ssh`).
fn router_routes(
    cx: &mut Cx,
    env: &str,
    r: &crate::spec::Router,
    sp: &str,
    c: &crate::spec::Canary,
    ssh: bool,
) {
    // A fleet canary on the ssh target weighs and counts per host, through HAProxy's
    // servers or nginx's upstream: neither reads the canary's match routes there, nor pins
    // its users (HAProxy does in front of the process target, by its dynamic server
    // cookies; nginx by its maps). Refused rather than silently ignored.
    let lb = match r.kind() {
        "nginx" => "nginx",
        "haproxy" => "HAProxy",
        _ => "",
    };
    if ssh && !lb.is_empty() {
        let fix = |what: &str| {
            format!(
                "remove `{what}:` for `{env}` (an environment's own `strategy:` may leave it out), or deploy `{env}` with `target: {{ process: {{}} }}` behind {lb}"
            )
        };
        if c.session_affinity.is_some() {
            cx.err_key(
                "router-routes",
                &format!("{sp}/canary/session_affinity"),
                format!(
                    "`{env}` runs a fleet canary on the ssh target through {lb}, which Slipway cannot give the canary's `session_affinity` there yet (it does in front of the process target)"
                ),
                fix("session_affinity"),
            );
        }
        if !c.matches.is_empty() {
            cx.err_key(
                "router-routes",
                &format!("{sp}/canary/match"),
                format!(
                    "`{env}` runs a fleet canary on the ssh target through {lb}, which does not apply the canary's `match` routes there (it does in front of the process target)"
                ),
                fix("match"),
            );
        }
        return;
    }
    match r.kind() {
        "nginx" => {
            for (i, m) in c.matches.iter().enumerate() {
                for name in m.headers.keys() {
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        cx.err_key(
                            "router-routes",
                            &format!("{sp}/canary/match/{i}/headers/{}", crate::yaml::escape(name)),
                            format!(
                                "`{env}` routes through nginx, which reads a header as `$http_NAME`: `{name}` holds a character other than letters, digits and `-` (nginx drops headers with `_` by default)"
                            ),
                            "name the header with letters, digits and `-` only, e.g. `x-canary`",
                        );
                    }
                }
            }
        }
        "haproxy"
            if !c.matches.is_empty()
                && r.haproxy.as_ref().is_some_and(|h| h.routes_map.is_none()) =>
        {
            cx.err_key(
                "router-routes",
                &format!("{sp}/canary/match"),
                format!(
                    "`{env}` routes through HAProxy, which takes the canary's `match` routes from a map file Slipway fills at runtime, and `router.haproxy` names none"
                ),
                "add `routes_map: FILE` to `router.haproxy` and have the backend read it (`http-request set-var(txn.slipway) req.hdrs,map_reg(FILE)`, see docs/rollout.md), or remove `match:`",
            );
        }
        _ => {}
    }
}

/// `router.builtin.listen`: an IP address and a port (not 0: that is what leaving it out
/// means), fronting one service.
fn builtin_listen(cx: &mut Cx<'_>, ptr: &str, listen: &str, r: &Router, instanced: &[&str]) {
    match listen.parse::<std::net::SocketAddr>() {
        Err(_) => cx.err_value(
            "invalid-address",
            ptr,
            format!("`{listen}` is not an IP address and port"),
            "write `HOST:PORT` with a numeric address, e.g. `127.0.0.1:8080`, `0.0.0.0:80` or `[::1]:8080` (no host names: the proxy binds it)",
        ),
        Ok(a) if a.port() == 0 => cx.err_value(
            "invalid-address",
            ptr,
            format!("`{listen}` asks for port 0, i.e. any free port"),
            "give the fixed port clients should use, e.g. `127.0.0.1:8080`, or remove `listen:` to let the proxy pick one",
        ),
        Ok(_) => {}
    }
    if r.service.is_none() && instanced.len() > 1 {
        cx.err_value(
            "missing-field",
            ptr,
            format!(
                "the release runs {} services as instances ({}), each behind its own proxy; one address cannot front them all",
                instanced.len(),
                instanced.join(", ")
            ),
            format!(
                "add `service: {}` to `router:` to give that service's proxy this address (the others keep a free port)",
                instanced[0]
            ),
        );
    }
}

/// Builtin metrics HAProxy's per-server counters (`show stat`) can answer.
pub const HAPROXY_BUILTIN_METRICS: &[&str] = &["error-rate", "request-rate"];

/// `environments.X.router`: one kind, on the process target (or HAProxy on the ssh
/// target, draining each host while it is deployed), fronting one service, with
/// the builtin metrics of the canary's analysis answerable by that router.
fn router(cx: &mut Cx<'_>, spec: &ReleaseSpec, env: &str, e: &Environment, r: &Router) {
    let base = pointer(["environments", env, "router"]);
    let at = |f: &str| format!("{base}/{f}");
    cx.exactly_one(
        &base,
        &format!("the router of `{env}`"),
        &[
            ("builtin", r.builtin.is_some()),
            ("nginx", r.nginx.is_some()),
            ("haproxy", r.haproxy.is_some()),
        ],
    );
    // On the ssh target HAProxy or nginx takes each host out of service while its
    // instances are replaced (one server per host, named after it); nothing else routes
    // there.
    let ssh_drain = e.target.ssh.is_some() && (r.haproxy.is_some() || r.nginx.is_some());
    if e.target.process.is_none() && e.target.kind() != crate::spec::TargetKind::None && !ssh_drain
    {
        cx.err_key(
            "router-needs-process",
            &base,
            format!(
                "`{env}` deploys with the `{}` target, which does not shift traffic; a router fronts the instances of the `process` target",
                e.target.kind()
            ),
            "use `target: { process: {} }` here (or, on the ssh target, `router: { haproxy: ... }` or `router: { nginx: ... }` to drain each host while it is deployed), or remove `router:`",
        );
    }
    let instanced: Vec<&str> = spec
        .services
        .iter()
        .filter(|(_, s)| s.run.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    match &r.service {
        Some(svc) if !instanced.contains(&svc.as_str()) => {
            let msg = if spec.services.contains_key(svc) {
                format!("service `{svc}` has no `run:`, so it runs no instances to route to")
            } else {
                format!("unknown service `{svc}`")
            };
            cx.err_value(
                "unknown-reference",
                &at("service"),
                msg,
                suggest(svc, &instanced, "service"),
            );
        }
        None if instanced.len() > 1 && r.kind() != "builtin" => cx.err_key(
            "missing-field",
            &base,
            format!(
                "the release runs {} services as instances ({}); the {} router fronts one",
                instanced.len(),
                instanced.join(", "),
                r.kind()
            ),
            format!(
                "add `service: {}` to `router:` (the other services keep the built-in proxy)",
                instanced[0]
            ),
        ),
        _ => {}
    }
    if let Some((sp, c)) = e
        .strategy
        .as_ref()
        .map(|s| (pointer(["environments", env, "strategy"]), s))
        .or(spec.strategy.as_ref().map(|s| ("/strategy".to_owned(), s)))
        .and_then(|(p, s)| Some((p, s.canary.as_ref()?)))
    {
        router_routes(cx, env, r, &sp, c, e.target.ssh.is_some());
    }
    if let Some(listen) = r.builtin.as_ref().and_then(|b| b.listen.as_deref()) {
        builtin_listen(cx, &at("builtin/listen"), listen, r, &instanced);
    }
    let word = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_graphic() && !b";{}'\"#$\\".contains(&b))
    };
    if let Some(n) = &r.nginx {
        if n.upstream_file.trim().is_empty() {
            cx.err_value(
                "empty",
                &at("nginx/upstream_file"),
                "the upstream file is empty",
                "name the file Slipway owns, e.g. `upstream_file: /etc/nginx/slipway/api.conf`, and `include` it in nginx's `http` block",
            );
        } else if !word(&n.upstream_file) {
            // The path is written into nginx config (`listen unix:<file>.sock;`).
            cx.err_value(
                "invalid-path",
                &at("nginx/upstream_file"),
                format!(
                    "`{}` cannot be written into an nginx config: it holds whitespace, a quote, `;`, `{{`, `}}`, `#`, `$` or `\\`",
                    n.upstream_file
                ),
                "use a plain path such as `/etc/nginx/slipway/api.conf`",
            );
        }
        if !word(&n.upstream) {
            cx.err_value(
                "invalid-name",
                &at("nginx/upstream"),
                format!("`{}` is not an nginx upstream name", n.upstream),
                "write the name your `proxy_pass http://NAME` uses: letters, digits, `-`, `_`, `.`",
            );
        }
        match &n.access_log {
            Some(l) if l.trim().is_empty() => cx.err_value(
                "empty",
                &at("nginx/access_log"),
                "the access log path is empty",
                "name the file of `access_log PATH slipway;` in nginx's config, or remove the field",
            ),
            Some(_) if e.target.ssh.is_none() => cx.err_value(
                "unused-field",
                &at("nginx/access_log"),
                "`access_log` is read only by fleet canaries on the ssh target; this environment does not deploy with `target: { ssh: ... }`",
                "remove `access_log:` (on the process target analysis behind nginx uses `prometheus` or `http` providers)",
            ),
            _ => {}
        }
        for (f, v) in [("test", &n.test), ("reload", &n.reload)] {
            if v.as_ref().is_some_and(|v| v.trim().is_empty()) {
                cx.err_value(
                    "empty",
                    &at(&format!("nginx/{f}")),
                    format!("the `{f}` command is empty"),
                    format!(
                        "write the command, e.g. `{}`, or remove the field for that default",
                        if f == "test" {
                            "nginx -t"
                        } else {
                            "nginx -s reload"
                        }
                    ),
                );
            }
        }
    }
    if let Some(h) = &r.haproxy {
        if h.socket.trim().is_empty() {
            cx.err_value(
                "empty",
                &at("haproxy/socket"),
                "the admin socket path is empty",
                "name the socket of `stats socket PATH mode 600 level admin` in haproxy.cfg",
            );
        }
        if !word(&h.backend) {
            cx.err_value(
                "invalid-name",
                &at("haproxy/backend"),
                format!("`{}` is not an HAProxy backend name", h.backend),
                "write the name of the `backend NAME` section whose server slots Slipway fills",
            );
        }
        if let Some(sl) = &h.servers {
            for (f, v) in [("stable", &sl.stable), ("canary", &sl.canary)] {
                if !word(v) {
                    cx.err_value(
                        "invalid-name",
                        &at(&format!("haproxy/servers/{f}")),
                        format!("`{v}` is not a server name prefix"),
                        format!("write the prefix of the {f} slots, e.g. `{f}` for `server-template {f} 4 127.0.0.1:1 disabled`"),
                    );
                }
            }
            if sl.stable.starts_with(&sl.canary) || sl.canary.starts_with(&sl.stable) {
                cx.err_value(
                    "ambiguous-prefix",
                    &at("haproxy/servers"),
                    format!(
                        "the prefixes `{}` and `{}` overlap: a slot name could belong to both pools",
                        sl.stable, sl.canary
                    ),
                    "use prefixes neither of which starts the other, e.g. `stable` and `canary`",
                );
            }
        }
    }
    // The canary's analysis in this environment: builtin metrics come from the router.
    let Some(canary) = e
        .strategy
        .as_ref()
        .or(spec.strategy.as_ref())
        .and_then(|s| s.canary.as_ref())
    else {
        return;
    };
    let used: BTreeSet<&str> = canary
        .steps
        .iter()
        .filter_map(|s| s.analysis.as_ref())
        .chain(canary.analysis.as_ref())
        .map(|a| a.template.as_str())
        .collect();
    for t in used {
        let Some(tpl) = spec.analysis_templates.get(t) else {
            continue;
        };
        for m in tpl.metrics.iter().filter(|m| m.provider == "builtin") {
            let fleet_log =
                e.target.ssh.is_some() && r.nginx.as_ref().is_some_and(|n| n.access_log.is_some());
            let answered = match r.kind() {
                "haproxy" => HAPROXY_BUILTIN_METRICS.contains(&m.name.as_str()),
                "nginx" => fleet_log && HAPROXY_BUILTIN_METRICS.contains(&m.name.as_str()),
                _ => true,
            };
            if answered {
                continue;
            }
            let (msg, help) = if r.kind() == "nginx" && e.target.ssh.is_some() {
                if HAPROXY_BUILTIN_METRICS.contains(&m.name.as_str()) {
                    cx.err_key(
                        "router-metrics",
                        &at("nginx"),
                        format!(
                            "analysis template `{t}` measures `{}` with the builtin provider; a fleet behind nginx counts it per host from nginx's access log, and `router.nginx.access_log` is not set",
                            m.name
                        ),
                        "add `access_log: /var/log/nginx/slipway-web.log` under `router.nginx` and in nginx's `http` block `log_format slipway '$upstream_addr $status';` and `access_log /var/log/nginx/slipway-web.log slipway;` (docs/providers.md, \"A fleet behind nginx\"), or measure it with a `prometheus` or `http` provider",
                    );
                    continue;
                }
                (
                    format!(
                        "analysis template `{t}` measures `{}` with the builtin provider; a fleet behind nginx has only per-host response and 5xx counts from the access log ({})",
                        m.name,
                        HAPROXY_BUILTIN_METRICS.join(", ")
                    ),
                    "measure latency with a `prometheus` or `http` provider (declared under `providers:`)".to_owned(),
                )
            } else if r.kind() == "nginx" {
                (
                    format!(
                        "analysis template `{t}` measures `{}` with the builtin provider, which counts requests in the built-in proxy; behind nginx there are no such counters",
                        m.name
                    ),
                    "measure it with a `prometheus` or `http` provider (declared under `providers:`), use `router: { haproxy: ... }` for error-rate from HAProxy's counters, or keep the built-in router".to_owned(),
                )
            } else {
                (
                    format!(
                        "analysis template `{t}` measures `{}` with the builtin provider; behind HAProxy it only has per-server request and 5xx counters ({})",
                        m.name,
                        HAPROXY_BUILTIN_METRICS.join(", ")
                    ),
                    "measure latency with a `prometheus` or `http` provider (declared under `providers:`), or keep the built-in router".to_owned(),
                )
            };
            cx.err_key("router-metrics", &base, msg, help);
        }
    }
}

/// `environments.X.backup`: cron and zone parse; an age is needed to judge a schedule.
fn backup_policy(cx: &mut Cx<'_>, ptr: &str, b: &BackupPolicy) {
    if let Some(c) = &b.schedule
        && let Err(err) = crate::cron::parse(c)
    {
        cx.err_value(
            "invalid-cron",
            &format!("{ptr}/schedule"),
            err,
            "write five fields: minute hour day-of-month month day-of-week, e.g. `0 2 * * *`",
        );
    }
    if let Some(tz) = &b.timezone
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        cx.err_value(
            "invalid-timezone",
            &format!("{ptr}/timezone"),
            format!("`{tz}` is not an IANA time zone"),
            "write a zone name such as `Europe/Berlin`, `America/New_York` or `UTC`",
        );
    }
    cx.duration(&format!("{ptr}/max_age"), b.max_age.as_ref(), true);
    match (&b.schedule, &b.max_age) {
        (Some(_), None) => cx.err_key(
            "missing-field",
            ptr,
            "a backup schedule is declared without `max_age`, so windows cannot be checked against it",
            "add `max_age:`, the oldest a backup may be when a window opens, e.g. `max_age: 12h`",
        ),
        (None, Some(_)) => cx.err_key(
            "missing-field",
            ptr,
            "`max_age` is declared without a backup `schedule` to measure it from",
            "add `schedule:`, the cron of the scheduled backups, e.g. `schedule: \"0 2 * * *\"`",
        ),
        _ => {}
    }
    if b.timezone.is_some() && b.schedule.is_none() {
        cx.warn(
            "unused-field",
            &format!("{ptr}/timezone"),
            "`timezone` has no effect without a backup `schedule`",
            "add `schedule:` or remove `timezone:`",
        );
    }
}

fn date_at(cx: &mut Cx<'_>, ptr: &str, d: &str) -> Option<jiff::civil::Date> {
    match d.parse::<jiff::civil::Date>() {
        Ok(v) => Some(v),
        Err(_) => {
            cx.err_value(
                "invalid-date",
                ptr,
                format!("`{d}` is not a date"),
                "write dates as YYYY-MM-DD, e.g. `2026-12-20`",
            );
            None
        }
    }
}

/// An RFC 7230 token: what a header name or a cookie name may be.
fn http_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A cookie value: RFC 6265 cookie-octets (no space, quote, comma, semicolon, backslash).
fn cookie_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b))
}

/// `canary.match` and `canary.session_affinity`: names a router can match and set.
fn canary_routes(cx: &mut Cx<'_>, ptr: &str, c: &crate::spec::Canary) {
    for (i, rule) in c.matches.iter().enumerate() {
        let rp = format!("{ptr}/match/{i}");
        if rule.headers.is_empty() && rule.cookie.is_none() {
            cx.err_value(
                "empty",
                &rp,
                "this match route has no condition: it would send every request to the canary",
                "give it `headers: { x-canary: { exact: always } }` and/or `cookie: { name: canary, value: always }`, or use `set_weight: 100` to send everyone",
            );
        }
        for (name, cond) in &rule.headers {
            let hp = format!("{rp}/headers/{}", yaml::escape(name));
            if !http_token(name) {
                cx.err_key(
                    "invalid-name",
                    &hp,
                    format!("`{name}` is not an HTTP header name"),
                    "header names are letters, digits and `-` (e.g. `x-canary`), without spaces or `:`",
                );
            }
            cx.exactly_one(
                &hp,
                &format!("the condition on header `{name}`"),
                &[
                    ("exact", cond.exact.is_some()),
                    ("prefix", cond.prefix.is_some()),
                ],
            );
            if let Some(v) = cond.exact.as_ref().or(cond.prefix.as_ref())
                && (v.is_empty() || v.bytes().any(|b| b.is_ascii_control()))
            {
                cx.err_value(
                    "invalid-value",
                    &format!("{hp}/{}", if cond.exact.is_some() { "exact" } else { "prefix" }),
                    format!("header `{name}` cannot be matched against {v:?}"),
                    "write the value a tester sends, e.g. `always`: not empty, no control characters",
                );
            }
        }
        if let Some(ck) = &rule.cookie {
            if !http_token(&ck.name) {
                cx.err_value(
                    "invalid-name",
                    &format!("{rp}/cookie/name"),
                    if ck.name.is_empty() {
                        "the cookie name is empty".to_owned()
                    } else {
                        format!("`{}` is not a cookie name", ck.name)
                    },
                    "name the cookie testers carry, e.g. `name: canary` (letters, digits, `-`, `_`)",
                );
            }
            if ck.value.is_empty() || !cookie_value(&ck.value) {
                cx.err_value(
                    "invalid-value",
                    &format!("{rp}/cookie/value"),
                    format!("{:?} cannot be a cookie value", ck.value),
                    "write the value testers set, e.g. `value: always`: not empty, no space, quote, comma, `;` or `\\`",
                );
            }
        }
    }
    if let Some(a) = &c.session_affinity {
        let ap = format!("{ptr}/session_affinity");
        if !http_token(&a.cookie) {
            cx.err_value(
                "invalid-name",
                &format!("{ap}/cookie"),
                if a.cookie.is_empty() {
                    "the affinity cookie name is empty".to_owned()
                } else {
                    format!("`{}` is not a cookie name", a.cookie)
                },
                "name the cookie the router sets, e.g. `cookie: slipway-canary` (letters, digits, `-`, `_`)",
            );
        }
        cx.duration(&format!("{ap}/max_age"), a.max_age.as_ref(), true);
        if c.matches
            .iter()
            .any(|m| m.cookie.as_ref().is_some_and(|ck| ck.name == a.cookie))
        {
            cx.err_value(
                "ambiguous-name",
                &format!("{ap}/cookie"),
                format!("`{}` is also the cookie of a match route", a.cookie),
                "give the affinity cookie a name of its own, e.g. `slipway-canary`",
            );
        }
    }
}

fn strategy(cx: &mut Cx<'_>, spec: &ReleaseSpec, ptr: &str, s: &Strategy) {
    cx.exactly_one(
        ptr,
        "the strategy",
        &[
            ("big_bang", s.big_bang.is_some()),
            ("rolling", s.rolling.is_some()),
            ("canary", s.canary.is_some()),
        ],
    );
    if let Some(r) = &s.rolling
        && r.batch_size == 0
    {
        cx.err_value(
            "out-of-range",
            &format!("{ptr}/rolling/batch_size"),
            "batch_size is 0",
            "use at least 1",
        );
    }
    let templates: Vec<&str> = spec.analysis_templates.keys().map(String::as_str).collect();
    if let Some(c) = &s.canary {
        let sp = format!("{ptr}/canary/steps");
        if c.steps.is_empty() {
            cx.err_value(
                "empty",
                &sp,
                "the canary has no steps",
                "add steps such as `- set_weight: 10`, `- analysis: { template: golden-signals }`, `- set_weight: 100`",
            );
        }
        for (i, st) in c.steps.iter().enumerate() {
            let p = format!("{sp}/{i}");
            cx.exactly_one(
                &p,
                "a canary step",
                &[
                    ("set_weight", st.set_weight.is_some()),
                    ("pause", st.pause.is_some()),
                    ("analysis", st.analysis.is_some()),
                ],
            );
            if let Some(w) = st.set_weight
                && w > 100
            {
                cx.err_value(
                    "out-of-range",
                    &format!("{p}/set_weight"),
                    format!("weight {w} is above 100"),
                    "weights are percentages of traffic, 0 to 100",
                );
            }
            if let Some(pause) = &st.pause
                && pause != "manual"
            {
                cx.duration(
                    &format!("{p}/pause"),
                    Some(&SpecDuration::from(pause.as_str())),
                    true,
                );
            }
            if let Some(a) = &st.analysis {
                cx.reference(
                    &format!("{p}/analysis/template"),
                    "analysis template",
                    &a.template,
                    &templates,
                );
                cx.duration(&format!("{p}/analysis/duration"), a.duration.as_ref(), true);
            }
        }
        if let Some(a) = &c.analysis {
            cx.reference(
                &format!("{ptr}/canary/analysis/template"),
                "analysis template",
                &a.template,
                &templates,
            );
            cx.duration(
                &format!("{ptr}/canary/analysis/duration"),
                a.duration.as_ref(),
                true,
            );
        }
        canary_routes(cx, &format!("{ptr}/canary"), c);
        if !c.steps.iter().any(|s| s.analysis.is_some()) && c.analysis.is_none() {
            cx.warn(
                "canary-without-analysis",
                &format!("{ptr}/canary"),
                "the canary has no analysis: nothing will judge it and it can never roll back by itself",
                "add an `- analysis: { template: ... }` step or a background `analysis:`",
            );
        }
    }
}

fn template(cx: &mut Cx<'_>, spec: &ReleaseSpec, name: &str, t: &AnalysisTemplate) {
    let base = pointer(["analysis_templates", name]);
    cx.duration(&format!("{base}/interval"), t.interval.as_ref(), true);
    if t.metrics.is_empty() {
        cx.err_value(
            "empty",
            &format!("{base}/metrics"),
            "the template has no metrics",
            "add at least one, e.g. `- { name: error-rate, max: 0.01 }`",
        );
    }
    if t.min_samples == Some(0) {
        cx.warn(
            "min-samples-zero",
            &format!("{base}/min_samples"),
            "min_samples 0 lets a measurement with no traffic pass",
            "require enough samples to judge, e.g. `min_samples: 50`",
        );
    }
    let mut providers: Vec<&str> = vec!["builtin"];
    providers.extend(spec.providers.keys().map(String::as_str));
    for (i, m) in t.metrics.iter().enumerate() {
        let ptr = format!("{base}/metrics/{i}");
        metric(cx, &ptr, m, &providers);
        if let (Some(q), Some(p)) = (&m.query, spec.providers.get(&m.provider)) {
            external_query(cx, spec, &format!("{ptr}/query"), q, p.http.is_some());
        }
    }
}

/// A query for an external provider: placeholders known, and for `http` a JSON pointer.
fn external_query(cx: &mut Cx<'_>, spec: &ReleaseSpec, ptr: &str, query: &str, http: bool) {
    placeholders(cx, spec, ptr, query);
    if http && !(query.is_empty() || query.starts_with('/')) {
        // `canary.queue` / `$.canary.queue` (JSONPath habits) → `/canary/queue`.
        let fixed = format!(
            "/{}",
            query.trim_start_matches(['$', '.']).replace('.', "/")
        );
        cx.err_value(
            "invalid-pointer",
            ptr,
            format!(
                "`{query}` is not a JSON pointer: the http provider reads `query` as one (RFC 6901)"
            ),
            format!("start it with `/` and separate fields with `/`, e.g. `{fixed}`"),
        );
    }
}

/// A password written into a provider URL would be in every plan, run and audit export
/// made from the spec: it must come from a secret variable, filled at measure time.
fn literal_password(cx: &mut Cx<'_>, ptr: &str, url: &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return;
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return;
    };
    if !password.is_empty() && !password.contains("{{") {
        cx.err_value(
            "secret-in-url",
            ptr,
            "this URL carries a password: it would be stored in every plan, run and audit export made from this spec",
            format!(
                "write `{user}:{{{{ vars.NAME }}}}@…` and declare `NAME: secret://env/VARIABLE` under the environment's `vars:`; `slipway deploy` fills it from its own environment when it measures"
            ),
        );
    }
}

/// `{{ vars.NAME }}` in a step command (`crate::step_vars`): well formed, declared by some
/// environment, and never a secret (its value would have to be written into the plan).
/// An environment that lacks a variable another declares is refused when that
/// environment is planned (`step-placeholder`).
fn step_placeholders(cx: &mut Cx<'_>, spec: &ReleaseSpec, ptr: &str, text: &str) {
    let names = match crate::step_vars::variables(text) {
        Ok(n) => n,
        Err(p) => {
            cx.err_value(
                "step-placeholder",
                ptr,
                p.to_string(),
                "write `{{ vars.NAME }}` for an environment's variable; other `{{ … }}` text reaches the shell only as `{{ '{{' }}` … `{{ '}}' }}`, or as a Go template starting with a dot",
            );
            return;
        }
    };
    let declared: Vec<&str> = spec
        .environments
        .values()
        .flat_map(|e| e.vars.keys().map(String::as_str))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for n in names {
        if !declared.contains(&n.as_str()) {
            cx.err_value(
                "unknown-placeholder",
                ptr,
                format!("`{{{{ vars.{n} }}}}`: no environment declares `{n}`"),
                format!(
                    "{} (declare it under each environment's `vars:`)",
                    suggest(&n, &declared, "variable")
                ),
            );
            continue;
        }
        for (env_name, env) in &spec.environments {
            if env
                .vars
                .get(&n)
                .is_some_and(|v| v.as_str().starts_with("secret://"))
            {
                cx.err_value(
                    "step-placeholder-secret",
                    ptr,
                    format!("`{{{{ vars.{n} }}}}` cannot be filled into a command"),
                    crate::plan::secret_advice(std::slice::from_ref(&n), &env.vars, env_name),
                );
                break;
            }
        }
    }
}

/// Placeholders of a metric query or provider URL: each must be one Slipway fills.
fn placeholders(cx: &mut Cx<'_>, spec: &ReleaseSpec, ptr: &str, text: &str) {
    use crate::metric_query::{PLACEHOLDERS, QueryProblem, check};
    // `vars.NAME` is known when some environment declares NAME.
    let vars: std::collections::BTreeSet<&str> = spec
        .environments
        .values()
        .flat_map(|e| e.vars.keys().map(String::as_str))
        .collect();
    let vars: Vec<&str> = vars.into_iter().collect();
    // Every name a placeholder may use: the canary's facts, then `vars.NAME` declared.
    let names: Vec<String> = PLACEHOLDERS
        .iter()
        .map(|p| (*p).to_owned())
        .chain(vars.iter().map(|v| format!("vars.{v}")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let known = names
        .iter()
        .map(|p| format!("{{{{ {p} }}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    match check(text, &vars) {
        Ok(()) => {}
        Err(QueryProblem::Syntax(e)) => cx.err_value(
            "invalid-placeholder",
            ptr,
            format!("the placeholders cannot be read: {e}"),
            format!("write placeholders as `{{{{ name }}}}`; known: {known}"),
        ),
        Err(QueryProblem::Unknown(unknown)) => {
            // Suggest for the first name that is a near miss of a known one.
            let first = unknown
                .iter()
                .find(|n| suggest(n, &names, "placeholder").starts_with("did you mean"))
                .or(unknown.first())
                .map(String::as_str)
                .unwrap_or_default();
            cx.err_value(
                "unknown-placeholder",
                ptr,
                format!(
                    "unknown placeholder{} {}",
                    if unknown.len() == 1 { "" } else { "s" },
                    unknown
                        .iter()
                        .map(|n| format!("`{{{{ {n} }}}}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!(
                    "{} (written `{{{{ name }}}}`; `vars.NAME` must be declared under an environment's `vars:`)",
                    suggest(first, &names, "placeholder")
                ),
            );
        }
    }
}

fn metric(cx: &mut Cx<'_>, ptr: &str, m: &Metric, providers: &[&str]) {
    cx.reference(
        &format!("{ptr}/provider"),
        "provider",
        &m.provider,
        providers,
    );
    let latency = m.name.contains("latency");
    if m.provider == "builtin" {
        if !BUILTIN_METRICS.contains(&m.name.as_str()) {
            cx.err_value(
                "unknown-metric",
                &format!("{ptr}/name"),
                format!("the builtin provider has no metric `{}`", m.name),
                suggest(&m.name, BUILTIN_METRICS, "builtin metric"),
            );
        }
        if m.query.is_some() {
            cx.warn(
                "unused-query",
                &format!("{ptr}/query"),
                "the builtin provider ignores `query`",
                "remove it, or use a prometheus/http provider",
            );
        }
    } else if m.query.is_none() {
        cx.err_key(
            "missing-field",
            ptr,
            format!(
                "metric `{}` from provider `{}` needs a `query`",
                m.name, m.provider
            ),
            "add `query:` (PromQL for prometheus, a JSON pointer for http)",
        );
    }
    for (f, v) in [("max", &m.max), ("min", &m.min)] {
        let Some(v) = v else { continue };
        let p = format!("{ptr}/{f}");
        let text = v.as_str();
        let number = text.parse::<f64>().ok().filter(|n| n.is_finite());
        let dur = parse_duration(text).ok();
        match (number, dur) {
            (Some(n), _) if m.name == "error-rate" && !(0.0..=1.0).contains(&n) => cx.err_value(
                "out-of-range",
                &p,
                format!("error-rate threshold {n} is outside 0–1"),
                format!(
                    "error-rate is a fraction: 1% is 0.01, so write `{f}: {}`",
                    n / 100.0
                ),
            ),
            (Some(_), _) => {}
            (None, Some(_)) if latency => {}
            (None, Some(_)) => cx.err_value(
                "invalid-threshold",
                &p,
                format!("`{text}` is a duration, but `{}` is not a latency", m.name),
                "write a number",
            ),
            (None, None) => cx.err_value(
                "invalid-threshold",
                &p,
                format!("`{text}` is neither a number nor a duration"),
                if latency {
                    "write a latency like `300ms`"
                } else {
                    "write a number such as `0.01`"
                },
            ),
        }
    }
    if m.name == "latency-vs-stable" && m.compare.is_none() {
        cx.err_key(
            "missing-field",
            ptr,
            "`latency-vs-stable` needs `compare: mann-whitney`",
            "add `compare: mann-whitney` and a `confidence:` such as 0.98",
        );
    }
    if let Some(c) = m.confidence
        && !(c > 0.5 && c < 1.0)
    {
        cx.err_value(
            "out-of-range",
            &format!("{ptr}/confidence"),
            format!("confidence {c} is outside (0.5, 1)"),
            "use a confidence such as 0.95 or 0.98",
        );
    }
    if m.compare.is_some() && m.confidence.is_none() {
        cx.warn(
            "default-confidence",
            ptr,
            "no confidence given for the comparison; 0.95 is used",
            "set `confidence:` explicitly",
        );
    }
    if m.max.is_none() && m.min.is_none() && m.compare.is_none() {
        cx.err_key(
            "no-threshold",
            ptr,
            format!("metric `{}` has no threshold: it can never fail", m.name),
            "add `max:`, `min:` or `compare:`",
        );
    }
}

/// A perf check's numbers must mean something: a rate and a duration that yield samples,
/// a tolerance in percent, a confidence strictly between 0 and 1.
fn perf_check(cx: &mut Cx<'_>, base: &str, p: &crate::spec::PerfCheck) {
    if !p.url.contains("{{") && p.url.starts_with("http") {
        url_at(cx, &format!("{base}/perf/url"), &p.url);
    }
    cx.duration(&format!("{base}/perf/duration"), p.duration.as_ref(), true);
    for (field, v) in [("rate", p.rate), ("workers", p.workers)] {
        if v == Some(0) {
            cx.err_value(
                "out-of-range",
                &format!("{base}/perf/{field}"),
                format!("a perf check with {field} 0 measures nothing"),
                "set rate and workers to at least 1 (defaults: 50 and 4)",
            );
        }
    }
    if let Some(t) = p.tolerance
        && !(0.0..=1000.0).contains(&t)
    {
        cx.err_value(
            "out-of-range",
            &format!("{base}/perf/tolerance"),
            format!("{t} is not a percentage between 0 and 1000"),
            "write the allowed slowdown in percent, e.g. `tolerance: 20`",
        );
    }
    if let Some(c) = p.confidence
        && !(c > 0.0 && c < 1.0)
    {
        cx.err_value(
            "out-of-range",
            &format!("{base}/perf/confidence"),
            format!("{c} is not a probability strictly between 0 and 1"),
            "e.g. `confidence: 0.99`",
        );
    }
    for (i, path) in p.paths.iter().enumerate() {
        if !path.starts_with('/') {
            cx.err_value(
                "invalid-path",
                &format!("{base}/perf/paths/{i}"),
                format!("`{path}` is not a request path"),
                "start each path with `/`, e.g. `/api/items`",
            );
        }
    }
}

fn check(cx: &mut Cx<'_>, name: &str, c: &Check) {
    let base = pointer(["checks", name]);
    cx.exactly_one(
        &base,
        &format!("check `{name}`"),
        &[
            ("http", c.http.is_some()),
            ("tcp", c.tcp.is_some()),
            ("command", c.command.is_some()),
            ("sql", c.sql.is_some()),
            ("perf", c.perf.is_some()),
            ("consistency", c.consistency.is_some()),
        ],
    );
    if let Some(k) = &c.consistency {
        if k.sum.is_some() && !k.checksum.is_empty() {
            cx.err_value(
                "conflicting-fields",
                &format!("{base}/consistency"),
                "`sum` and `checksum` are both set",
                "compare one measure per check: a row count (neither), `sum: COLUMN`, or `checksum: [COLUMNS]` with `order_by`",
            );
        }
        if !k.checksum.is_empty() && k.order_by.is_empty() {
            cx.err_value(
                "missing-field",
                &format!("{base}/consistency/order_by"),
                "a checksum needs `order_by`",
                "name a unique key, e.g. `order_by: [id]`, so both sides hash rows in the same order",
            );
        }
        if k.tolerance.is_some_and(|t| t.is_nan() || t < 0.0) {
            cx.err_value(
                "out-of-range",
                &format!("{base}/consistency/tolerance"),
                "a tolerance below 0",
                "write the largest accepted difference, 0 or more",
            );
        }
    }
    if let Some(p) = &c.perf {
        perf_check(cx, &base, p);
    }
    if let Some(h) = &c.http {
        if !h.url.contains("{{") {
            url_at(cx, &format!("{base}/http/url"), &h.url);
        }
        if let Some(s) = h.status
            && !(100..=599).contains(&s)
        {
            cx.err_value(
                "out-of-range",
                &format!("{base}/http/status"),
                format!("{s} is not an HTTP status"),
                "use a status between 100 and 599",
            );
        }
    }
    if let Some(t) = &c.tcp {
        endpoint_at(cx, &format!("{base}/tcp"), t);
    }
    cx.duration(&format!("{base}/timeout"), c.timeout.as_ref(), true);
}

/// `batch` and `max_failures` of an ssh target: a wave holds at least one host; a budget
/// of 100% would let every host fail and still call the run a success.
fn ssh_counts(cx: &mut Cx<'_>, base: &str, s: &crate::spec::SshTarget) {
    use crate::spec::HostCount;
    if s.parallelism == Some(0) {
        cx.err_value(
            "out-of-range",
            &format!("{base}/parallelism"),
            "parallelism is 0",
            "use at least 1",
        );
    }
    match &s.batch {
        Some(HostCount::Hosts(0)) => cx.err_value(
            "out-of-range",
            &format!("{base}/batch"),
            "batch is 0: a wave would hold no host",
            "write the hosts per wave as a number of at least 1 (`batch: 2`) or a percentage of the group from 1% to 100% (`batch: \"25%\"`)",
        ),
        Some(HostCount::Percent(t)) => match HostCount::percent(t) {
            Ok(0) | Err(_) => cx.err_value(
                "out-of-range",
                &format!("{base}/batch"),
                format!("batch `{t}` is not a percentage from 1% to 100%"),
                "write the hosts per wave as a number of at least 1 (`batch: 2`) or a percentage of the group from 1% to 100% (`batch: \"25%\"`)",
            ),
            Ok(_) => {}
        },
        _ => {}
    }
    if let Some(HostCount::Percent(t)) = &s.max_failures {
        match HostCount::percent(t) {
            Ok(p) if p < 100 => {}
            _ => cx.err_value(
                "out-of-range",
                &format!("{base}/max_failures"),
                format!("max_failures `{t}` is not a percentage from 0% to 99%"),
                "write how many hosts may fail as a number (`max_failures: 1`) or a percentage of the group below 100% (`max_failures: \"10%\"`)",
            ),
        }
    }
}
