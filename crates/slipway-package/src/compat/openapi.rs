//! API backward compatibility: the OpenAPI 3 documents of the running and the candidate
//! version compared operation by operation.
//!
//! The rule of thumb is the client's point of view: a client written against the old
//! document must keep working against the new one. So for requests (what clients send) the
//! new version may accept *more* — new optional fields and parameters, wider types — and
//! for responses (what clients read) it may return *more* — new fields — but never less.
//!
//! Enums follow the same point of view (oasdiff's rules are the reference):
//!
//! | enum change            | in a request (parameter, body)   | in a response                    |
//! |------------------------|----------------------------------|----------------------------------|
//! | value added            | additive: the server accepts more | **breaking**: a strict client (generated enum types, exhaustive `switch`) fails on a value it does not know — oasdiff warns (WARN, listed by `oasdiff breaking`) |
//! | value removed          | **breaking**: clients sending it are refused (oasdiff ERR) | compatible: clients never see it again (oasdiff INFO) |
//! | enum introduced        | **breaking**: values clients send may now be refused | compatible: the server returns a subset |
//! | enum dropped           | additive: any value is accepted   | **breaking**: like values added  |
//!
//! Media types are compared per content type: a request media type no longer accepted or a
//! response media type no longer produced (JSON → XML) is breaking; a new one is additive;
//! schemas are compared under each media type both documents have. Path parameters are
//! positional (`/pets/{petId}` and `/pets/{id}` are one route) and their schemas are
//! compared position by position like any request value.
//!
//! Documents are YAML or JSON, read into `serde_json::Value`; local `$ref`s
//! (`#/components/...`) are inlined first, with recursion cut where a schema refers to
//! itself. Every change carries a JSON pointer into the document it was found in (the new
//! one, or the old one for removals).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Largest document read (large public APIs are a few MB).
const MAX_DOC_BYTES: u64 = 32 * 1024 * 1024;
/// How deep `$ref` inlining goes before giving up on a branch (guards recursive schemas
/// that do not refer to themselves directly).
const MAX_REF_DEPTH: usize = 32;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// How a change affects existing clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    /// Existing clients may fail.
    Breaking,
    /// Something new; existing clients are unaffected.
    Additive,
    /// A change that existing clients should not notice (e.g. a parameter no longer read).
    Compatible,
}

impl Impact {
    /// Spelling in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Impact::Breaking => "breaking",
            Impact::Additive => "additive",
            Impact::Compatible => "compatible",
        }
    }
}

/// One difference between the documents.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ApiChange {
    /// Breaking, additive or compatible.
    pub impact: Impact,
    /// Stable code, e.g. `path-removed`, `response-property-removed`.
    pub code: &'static str,
    /// JSON pointer into the new document (the old one for removals).
    pub pointer: String,
    /// What changed, in words.
    pub message: String,
}

/// All differences, breaking first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiReport {
    /// `info.version` of the old document.
    pub old_version: Option<String>,
    /// `info.version` of the new document.
    pub new_version: Option<String>,
    /// Number of breaking changes.
    pub breaking: usize,
    /// Number of additive changes.
    pub additive: usize,
    /// Every change.
    pub changes: Vec<ApiChange>,
}

impl ApiReport {
    /// Whether any change breaks existing clients.
    pub fn is_breaking(&self) -> bool {
        self.breaking > 0
    }

    /// A plain-text report, one change per line, for people and snapshots.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "API {} -> {}: {} breaking, {} additive, {} compatible\n",
            self.old_version.as_deref().unwrap_or("?"),
            self.new_version.as_deref().unwrap_or("?"),
            self.breaking,
            self.additive,
            self.changes.len() - self.breaking - self.additive
        );
        for c in &self.changes {
            out.push_str(&format!(
                "  {:<10} {:<34} {}\n             at {}\n",
                c.impact.as_str(),
                c.code,
                c.message,
                c.pointer
            ));
        }
        out
    }
}

/// Reads an OpenAPI document (YAML or JSON) and inlines its local `$ref`s.
pub fn load(path: &Path) -> Result<Value> {
    let err = |reason: String| Error::OpenApi {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
    if meta.len() > MAX_DOC_BYTES {
        return Err(err(format!(
            "{} bytes is more than the {MAX_DOC_BYTES}-byte limit",
            meta.len()
        )));
    }
    let text = slipway_stdx::fs::read_regular_string(path, crate::MAX_TEXT_INPUT)
        .map_err(|e| Error::io("read", path, e))?;
    parse(&text).map_err(err)
}

/// Parses an OpenAPI document from text (JSON when it starts with `{`, YAML otherwise)
/// and inlines its local `$ref`s.
pub fn parse(text: &str) -> std::result::Result<Value, String> {
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with('3') {
        return Err(format!(
            "`openapi: {version}` is not an OpenAPI 3 document (Swagger 2 is not supported); convert it to OpenAPI 3"
        ));
    }
    if !doc.get("paths").is_some_and(Value::is_object) {
        return Err("the document has no `paths` object".to_owned());
    }
    let mut stack = Vec::new();
    Ok(inline_refs(&doc, &doc, &mut stack))
}

/// Inlines `{"$ref": "#/..."}` objects. A reference already being inlined further up (a
/// recursive schema) stays a `$ref`, which compares equal to itself.
fn inline_refs(root: &Value, v: &Value, stack: &mut Vec<String>) -> Value {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && let Some(ptr) = r.strip_prefix('#')
            {
                if stack.iter().any(|s| s == r) || stack.len() >= MAX_REF_DEPTH {
                    return v.clone();
                }
                if let Some(target) = root.pointer(ptr) {
                    stack.push(r.clone());
                    let out = inline_refs(root, target, stack);
                    stack.pop();
                    return out;
                }
                return v.clone();
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), inline_refs(root, v, stack)))
                    .collect(),
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| inline_refs(root, v, stack)).collect())
        }
        other => other.clone(),
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// `/pets/{petId}` and `/pets/{id}` are the same route: parameter names do not matter.
fn route_key(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

/// Which side of the exchange a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

struct Differ {
    changes: Vec<ApiChange>,
}

impl Differ {
    fn push(&mut self, impact: Impact, code: &'static str, pointer: String, message: String) {
        self.changes.push(ApiChange {
            impact,
            code,
            pointer,
            message,
        });
    }

    fn paths(&mut self, old: &Value, new: &Value) {
        let by_route = |doc: &Value| -> BTreeMap<String, (String, Value)> {
            doc.get("paths")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(p, v)| (route_key(p), (p.clone(), v.clone())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let old_paths = by_route(old);
        let new_paths = by_route(new);
        for (key, (path, old_item)) in &old_paths {
            let ptr = format!("/paths/{}", esc(path));
            match new_paths.get(key) {
                None => self.push(
                    Impact::Breaking,
                    "path-removed",
                    ptr,
                    format!("path {path} was removed"),
                ),
                Some((new_path, new_item)) => {
                    self.path_item(path, old_item, new_path, new_item);
                }
            }
        }
        for (key, (path, item)) in &new_paths {
            if !old_paths.contains_key(key) {
                let ops: Vec<String> = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_uppercase())
                    .collect();
                self.push(
                    Impact::Additive,
                    "path-added",
                    format!("/paths/{}", esc(path)),
                    format!("path {path} was added ({})", ops.join(", ")),
                );
            }
        }
    }

    fn path_item(&mut self, old_path: &str, old: &Value, new_path: &str, new: &Value) {
        let base_old = format!("/paths/{}", esc(old_path));
        let base_new = format!("/paths/{}", esc(new_path));
        for m in METHODS {
            let op_name = format!("{} {new_path}", m.to_uppercase());
            match (old.get(*m), new.get(*m)) {
                (Some(_), None) => self.push(
                    Impact::Breaking,
                    "operation-removed",
                    format!("{base_old}/{m}"),
                    format!("operation {} {old_path} was removed", m.to_uppercase()),
                ),
                (None, Some(_)) => self.push(
                    Impact::Additive,
                    "operation-added",
                    format!("{base_new}/{m}"),
                    format!("operation {op_name} was added"),
                ),
                (Some(o), Some(n)) => {
                    let ptr = format!("{base_new}/{m}");
                    self.parameters(&op_name, &ptr, (old_path, old, o), (new_path, new, n));
                    self.request_body(&op_name, &ptr, o, n);
                    self.responses(&op_name, &ptr, o, n);
                }
                (None, None) => {}
            }
        }
    }

    /// Path-level and operation-level parameters, keyed by (in, name); the operation's
    /// win, as in OpenAPI.
    fn params_of(item: &Value, op: &Value) -> BTreeMap<(String, String), Value> {
        let mut out = BTreeMap::new();
        for src in [item.get("parameters"), op.get("parameters")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
        {
            for p in src {
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                let loc = p.get("in").and_then(Value::as_str).unwrap_or_default();
                // Path parameter names are positional: compare them by position instead.
                out.insert((loc.to_owned(), name.to_owned()), p.clone());
            }
        }
        out
    }

    /// The names of a path's parameters in order: `/a/{x}/b/{y}` → `[x, y]`.
    fn path_params(path: &str) -> Vec<&str> {
        path.split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .collect()
    }

    /// `(path, path item, operation)` of each side.
    fn parameters(
        &mut self,
        op: &str,
        ptr: &str,
        (old_path, old_item, old_op): (&str, &Value, &Value),
        (new_path, new_item, new_op): (&str, &Value, &Value),
    ) {
        let old = Self::params_of(old_item, old_op);
        let new = Self::params_of(new_item, new_op);
        // Path parameters by position: a renamed one is the same parameter.
        for (on, nn) in Self::path_params(old_path)
            .into_iter()
            .zip(Self::path_params(new_path))
        {
            let (Some(os), Some(ns)) = (
                old.get(&("path".to_owned(), on.to_owned()))
                    .and_then(|p| p.get("schema")),
                new.get(&("path".to_owned(), nn.to_owned()))
                    .and_then(|p| p.get("schema")),
            ) else {
                continue;
            };
            self.schema(
                Dir::Request,
                &format!("{op}: path parameter `{nn}`"),
                &format!("{ptr}/parameters/{}/schema", esc(nn)),
                os,
                ns,
            );
        }
        let required = |p: &Value| p.get("required").and_then(Value::as_bool).unwrap_or(false);
        for ((loc, name), np) in &new {
            if loc == "path" {
                continue;
            }
            let pptr = format!("{ptr}/parameters/{}", esc(name));
            match old.get(&(loc.clone(), name.clone())) {
                None if required(np) => self.push(
                    Impact::Breaking,
                    "required-parameter-added",
                    pptr,
                    format!("{op}: new required {loc} parameter `{name}`"),
                ),
                None => self.push(
                    Impact::Additive,
                    "optional-parameter-added",
                    pptr,
                    format!("{op}: new optional {loc} parameter `{name}`"),
                ),
                Some(op_old) => {
                    if required(np) && !required(op_old) {
                        self.push(
                            Impact::Breaking,
                            "parameter-became-required",
                            pptr.clone(),
                            format!("{op}: {loc} parameter `{name}` became required"),
                        );
                    }
                    if let (Some(os), Some(ns)) = (op_old.get("schema"), np.get("schema")) {
                        self.schema(
                            Dir::Request,
                            &format!("{op}: {loc} parameter `{name}`"),
                            &format!("{pptr}/schema"),
                            os,
                            ns,
                        );
                    }
                }
            }
        }
        for (loc, name) in old.keys() {
            if loc != "path" && !new.contains_key(&(loc.clone(), name.clone())) {
                self.push(
                    Impact::Compatible,
                    "parameter-removed",
                    format!("{ptr}/parameters/{}", esc(name)),
                    format!(
                        "{op}: {loc} parameter `{name}` is no longer read (clients sending it are unaffected unless the server rejects unknown parameters)"
                    ),
                );
            }
        }
    }

    /// The media types of a request body or response, normalised (lower case, parameters
    /// such as `; charset=utf-8` dropped), with their schemas.
    fn media(body: &Value) -> BTreeMap<String, (String, Option<&Value>)> {
        body.get("content")
            .and_then(Value::as_object)
            .map(|c| {
                c.iter()
                    .map(|(k, v)| {
                        let norm = k.split(';').next().unwrap_or(k).trim().to_ascii_lowercase();
                        (norm, (k.clone(), v.get("schema")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether media range `range` (`application/json`, `application/*`, `*/*`) covers
    /// media type `t`.
    fn covers(range: &str, t: &str) -> bool {
        match range.split_once('/') {
            _ if range == t || range == "*/*" => true,
            Some((kind, "*")) => t.split_once('/').is_some_and(|(k, _)| k == kind),
            _ => false,
        }
    }

    /// Compare the media types of a request body or response, and the schema under each
    /// media type both sides have. `at` is the pointer of the body (or response).
    fn contents(&mut self, dir: Dir, what: &str, at: &str, old: &Value, new: &Value) {
        let (om, nm) = (Self::media(old), Self::media(new));
        for (t, (raw, _)) in &om {
            if !nm.keys().any(|r| Self::covers(r, t)) {
                let now: Vec<&str> = nm.values().map(|(k, _)| k.as_str()).collect();
                let (code, verb) = match dir {
                    Dir::Request => ("request-media-type-removed", "is no longer accepted"),
                    Dir::Response => ("response-media-type-removed", "is no longer returned"),
                };
                self.push(
                    Impact::Breaking,
                    code,
                    format!("{at}/content/{}", esc(raw)),
                    format!(
                        "{what}: media type {raw} {verb} (now {})",
                        if now.is_empty() {
                            "none".to_owned()
                        } else {
                            now.join(", ")
                        }
                    ),
                );
            }
        }
        for (t, (raw, ns)) in &nm {
            match om.get(t) {
                None => self.push(
                    Impact::Additive,
                    match dir {
                        Dir::Request => "request-media-type-added",
                        Dir::Response => "response-media-type-added",
                    },
                    format!("{at}/content/{}", esc(raw)),
                    format!("{what}: media type {raw} was added"),
                ),
                Some((_, os)) => {
                    if let (Some(os), Some(ns)) = (os, ns) {
                        let label = if om.len() > 1 || nm.len() > 1 {
                            format!("{what} ({raw})")
                        } else {
                            what.to_owned()
                        };
                        self.schema(
                            dir,
                            &label,
                            &format!("{at}/content/{}/schema", esc(raw)),
                            os,
                            ns,
                        );
                    }
                }
            }
        }
    }

    fn request_body(&mut self, op: &str, ptr: &str, old: &Value, new: &Value) {
        let required = |b: &Value| b.get("required").and_then(Value::as_bool).unwrap_or(false);
        match (old.get("requestBody"), new.get("requestBody")) {
            (None, Some(nb)) if required(nb) => self.push(
                Impact::Breaking,
                "request-body-added",
                format!("{ptr}/requestBody"),
                format!("{op}: a required request body was added"),
            ),
            (Some(ob), Some(nb)) => {
                if required(nb) && !required(ob) {
                    self.push(
                        Impact::Breaking,
                        "request-body-became-required",
                        format!("{ptr}/requestBody"),
                        format!("{op}: the request body became required"),
                    );
                }
                self.contents(
                    Dir::Request,
                    &format!("{op} request body"),
                    &format!("{ptr}/requestBody"),
                    ob,
                    nb,
                );
            }
            _ => {}
        }
    }

    fn responses(&mut self, op: &str, ptr: &str, old: &Value, new: &Value) {
        let (Some(or), Some(nr)) = (
            old.get("responses").and_then(Value::as_object),
            new.get("responses").and_then(Value::as_object),
        ) else {
            return;
        };
        for (code, o) in or {
            let rptr = format!("{ptr}/responses/{}", esc(code));
            match nr.get(code) {
                None if code.starts_with('2') => self.push(
                    Impact::Breaking,
                    "success-response-removed",
                    rptr,
                    format!("{op}: response {code} was removed"),
                ),
                None => self.push(
                    Impact::Compatible,
                    "response-removed",
                    rptr,
                    format!("{op}: response {code} is no longer documented"),
                ),
                Some(n) => {
                    if !Self::media(o).is_empty() && Self::media(n).is_empty() {
                        self.push(
                            Impact::Breaking,
                            "response-body-removed",
                            rptr,
                            format!("{op}: response {code} no longer has a body"),
                        );
                    } else {
                        self.contents(Dir::Response, &format!("{op} response {code}"), &rptr, o, n);
                    }
                }
            }
        }
        for code in nr.keys() {
            if !or.contains_key(code) {
                self.push(
                    Impact::Additive,
                    "response-added",
                    format!("{ptr}/responses/{}", esc(code)),
                    format!("{op}: response {code} was added"),
                );
            }
        }
    }

    /// The schema with `allOf` merged into one object schema, so a refactoring into
    /// `allOf` is not reported as a change.
    fn flatten(s: &Value) -> Value {
        let Some(all) = s.get("allOf").and_then(Value::as_array) else {
            return s.clone();
        };
        let mut props = serde_json::Map::new();
        let mut required = BTreeSet::new();
        let mut out = s.clone();
        for part in all
            .iter()
            .map(Self::flatten)
            .chain(std::iter::once(s.clone()))
        {
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                props.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            if let Some(r) = part.get("required").and_then(Value::as_array) {
                required.extend(r.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            if let (Some(t), Some(o)) = (part.get("type"), out.as_object_mut()) {
                o.entry("type").or_insert_with(|| t.clone());
            }
        }
        if let Some(o) = out.as_object_mut() {
            o.remove("allOf");
            o.insert("properties".into(), Value::Object(props));
            o.insert(
                "required".into(),
                Value::Array(required.into_iter().map(Value::String).collect()),
            );
        }
        out
    }

    /// The set of types a schema allows (`type` string or array, plus `nullable: true`).
    fn types(s: &Value) -> Option<BTreeSet<String>> {
        let mut set: BTreeSet<String> = match s.get("type") {
            Some(Value::String(t)) => std::iter::once(t.clone()).collect(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => return None,
        };
        if s.get("nullable").and_then(Value::as_bool) == Some(true) {
            set.insert("null".into());
        }
        // Every integer is a number: treat `number` as covering `integer`.
        if set.contains("number") {
            set.insert("integer".into());
        }
        Some(set)
    }

    fn schema(&mut self, dir: Dir, what: &str, ptr: &str, old: &Value, new: &Value) {
        if old == new {
            return;
        }
        let old = Self::flatten(old);
        let new = Self::flatten(new);

        if let (Some(ot), Some(nt)) = (Self::types(&old), Self::types(&new))
            && ot != nt
        {
            // Requests may widen (accept more); responses may narrow (return less kinds).
            let (from, to) = match dir {
                Dir::Request => (&ot, &nt),
                Dir::Response => (&nt, &ot),
            };
            let show = |t: &BTreeSet<String>| {
                t.iter()
                    .filter(|x| !(x.as_str() == "integer" && t.contains("number")))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("|")
            };
            let (impact, code) = if from.is_subset(to) {
                (Impact::Compatible, "type-widened")
            } else {
                (Impact::Breaking, "type-changed")
            };
            self.push(
                impact,
                code,
                ptr.to_owned(),
                format!("{what}: type changed from {} to {}", show(&ot), show(&nt)),
            );
            // Properties of a schema whose type changed are not worth comparing further.
            return;
        }

        self.enums(dir, what, ptr, &old, &new);
        self.bounds(dir, what, ptr, &old, &new);

        let props = |s: &Value| {
            s.get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let req = |s: &Value| -> BTreeSet<String> {
            s.get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (op, np) = (props(&old), props(&new));
        let (or, nr) = (req(&old), req(&new));
        for (name, os) in &op {
            let pptr = format!("{ptr}/properties/{}", esc(name));
            let field = format!("{what}: field `{name}`");
            match (np.get(name), dir) {
                (None, Dir::Response) => self.push(
                    Impact::Breaking,
                    "response-property-removed",
                    pptr,
                    format!("{field} was removed"),
                ),
                (None, Dir::Request) => self.push(
                    Impact::Compatible,
                    "request-property-removed",
                    pptr,
                    format!("{field} is no longer read"),
                ),
                (Some(ns), _) => {
                    if dir == Dir::Request && nr.contains(name) && !or.contains(name) {
                        self.push(
                            Impact::Breaking,
                            "request-property-became-required",
                            pptr.clone(),
                            format!("{field} became required"),
                        );
                    }
                    if dir == Dir::Response && or.contains(name) && !nr.contains(name) {
                        self.push(
                            Impact::Breaking,
                            "response-property-became-optional",
                            pptr.clone(),
                            format!("{field} is no longer always present"),
                        );
                    }
                    self.schema(dir, &field, &pptr, os, ns);
                }
            }
        }
        for (name, _) in np.iter().filter(|(n, _)| !op.contains_key(*n)) {
            let pptr = format!("{ptr}/properties/{}", esc(name));
            let field = format!("{what}: field `{name}`");
            if dir == Dir::Request && nr.contains(name) {
                self.push(
                    Impact::Breaking,
                    "required-request-property-added",
                    pptr,
                    format!("{field} was added as required"),
                );
            } else {
                self.push(
                    Impact::Additive,
                    if dir == Dir::Request {
                        "optional-request-property-added"
                    } else {
                        "response-property-added"
                    },
                    pptr,
                    format!("{field} was added"),
                );
            }
        }
        if let (Some(oi), Some(ni)) = (old.get("items"), new.get("items")) {
            self.schema(dir, &format!("{what}[]"), &format!("{ptr}/items"), oi, ni);
        }
        for key in ["oneOf", "anyOf"] {
            if let (Some(oa), Some(na)) = (
                old.get(key).and_then(Value::as_array),
                new.get(key).and_then(Value::as_array),
            ) {
                if na.len() < oa.len() {
                    self.push(
                        Impact::Breaking,
                        "variant-removed",
                        format!("{ptr}/{key}"),
                        format!("{what}: {key} lost {} variant(s)", oa.len() - na.len()),
                    );
                }
                for (i, (o, n)) in oa.iter().zip(na).enumerate() {
                    self.schema(
                        dir,
                        &format!("{what} ({key} #{i})"),
                        &format!("{ptr}/{key}/{i}"),
                        o,
                        n,
                    );
                }
            }
        }
    }

    /// Enum changes by the rule table in the module doc: what a client sends may gain
    /// values and never lose them; what it reads may lose values and never gain them.
    fn enums(&mut self, dir: Dir, what: &str, ptr: &str, old: &Value, new: &Value) {
        let values = |s: &Value| -> Option<Vec<Value>> { s.get("enum")?.as_array().cloned() };
        let (more, fewer) = match dir {
            // Values added, values removed.
            Dir::Request => (Impact::Additive, Impact::Breaking),
            Dir::Response => (Impact::Breaking, Impact::Compatible),
        };
        let why_added = match dir {
            Dir::Request => "",
            Dir::Response => " (a client that knows only the documented values may fail on it)",
        };
        match (values(old), values(new)) {
            (Some(ov), Some(nv)) => {
                for v in ov.iter().filter(|v| !nv.contains(v)) {
                    self.push(
                        fewer,
                        "enum-value-removed",
                        format!("{ptr}/enum"),
                        format!("{what}: enum value {v} was removed"),
                    );
                }
                for v in nv.iter().filter(|v| !ov.contains(v)) {
                    self.push(
                        more,
                        "enum-value-added",
                        format!("{ptr}/enum"),
                        format!("{what}: enum value {v} was added{why_added}"),
                    );
                }
            }
            (None, Some(nv)) => self.push(
                fewer,
                "enum-added",
                format!("{ptr}/enum"),
                format!(
                    "{what}: values are now restricted to {}",
                    nv.iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (Some(_), None) => self.push(
                more,
                "enum-removed",
                ptr.to_owned(),
                format!("{what}: values are no longer restricted to an enum{why_added}"),
            ),
            (None, None) => {}
        }
    }

    /// Tighter bounds on a request value reject what old clients send.
    fn bounds(&mut self, dir: Dir, what: &str, ptr: &str, old: &Value, new: &Value) {
        if dir != Dir::Request {
            return;
        }
        let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64);
        for (key, tighter_if_smaller) in [
            ("maxLength", true),
            ("maxItems", true),
            ("maximum", true),
            ("minLength", false),
            ("minItems", false),
            ("minimum", false),
        ] {
            let narrowed = match (num(old, key), num(new, key)) {
                (Some(o), Some(n)) => {
                    if tighter_if_smaller {
                        n < o
                    } else {
                        n > o
                    }
                }
                (None, Some(_)) => true,
                _ => false,
            };
            if narrowed {
                self.push(
                    Impact::Breaking,
                    "constraint-narrowed",
                    format!("{ptr}/{key}"),
                    format!(
                        "{what}: {key} narrowed from {} to {}",
                        old.get(key)
                            .map_or_else(|| "none".to_owned(), Value::to_string),
                        new.get(key)
                            .map_or_else(|| "none".to_owned(), Value::to_string)
                    ),
                );
            }
        }
    }
}

/// Compares two parsed documents (see [`parse`]).
pub fn compare(old: &Value, new: &Value) -> ApiReport {
    let mut d = Differ {
        changes: Vec::new(),
    };
    d.paths(old, new);
    let mut changes = d.changes;
    changes.sort();
    changes.dedup();
    let breaking = changes
        .iter()
        .filter(|c| c.impact == Impact::Breaking)
        .count();
    let additive = changes
        .iter()
        .filter(|c| c.impact == Impact::Additive)
        .count();
    let version = |d: &Value| {
        d.pointer("/info/version")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ApiReport {
        old_version: version(old),
        new_version: version(new),
        breaking,
        additive,
        changes,
    }
}

/// Reads and compares two documents.
pub fn compare_files(old: &Path, new: &Path) -> Result<ApiReport> {
    Ok(compare(&load(old)?, &load(new)?))
}
