//! Config templates rendered per environment, with strict placeholders and secrets that
//! stay references until install time.
//!
//! A service's `config: [ { template, dest } ]` entries are minijinja templates. The
//! context a template sees is:
//!
//! | name      | value |
//! |-----------|-------|
//! | `vars`    | the environment's `vars` (every value a string) |
//! | `env`     | the environment's name |
//! | `service` | the service's name |
//! | `version` | the service's version (its own, or the release's) |
//! | `release` | `{ name, version, type }` of the release |
//! | `port`    | the instance's port, only where the target assigns one (`process`, `ssh`) and the render is for one instance |
//!
//! Placeholders are checked *before* rendering: `undeclared_variables(true)` lists every
//! variable and trivial attribute path a template reads, and each is looked up in the
//! context, so all missing variables are reported at once with template, line and the
//! environments that lack them (rendering alone stops at the first). Rendering then runs
//! with [`UndefinedBehavior::Strict`]. A variable that static analysis flags but the
//! template guards (`{% if vars.x is defined %}`, `| default(…)`) renders fine; it is only
//! an error when the strict render fails too, so guarded optional variables stay possible.
//!
//! Secrets are variables whose value is a reference, `secret://env/NAME` or
//! `secret://file/PATH`. [`SecretMode::Masked`] renders them as `***secret://env/NAME***`
//! (for `slipway render` and plans); [`SecretMode::Resolved`] renders real values and is
//! for install time only. [`Redactor`] removes resolved values from any text written
//! afterwards (logs, journal, audit).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use slipway_model::spec::{Environment as EnvSpec, ReleaseSpec, Service};

use crate::digest::sha256_bytes;
use crate::error::{Error, Result};

/// The names every template context defines (besides `port`, which depends on the target).
pub const CONTEXT_NAMES: &[&str] = &["vars", "env", "service", "version", "release", "port"];

/// Largest template Slipway reads; config templates are small, and a huge file here is
/// almost certainly a wrong path.
const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks rendering (and the deploy).
    Error,
    /// Worth knowing; does not block.
    Warning,
}

impl Severity {
    /// The spelling used in plan findings.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem with a config template, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable code: `undefined-variable`, `template-syntax`, `template-unreadable`,
    /// `secret-reference`, `port-in-version-config`.
    pub code: String,
    /// Error or warning.
    pub severity: Severity,
    /// The service whose config it is.
    pub service: String,
    /// Template path as written in the spec.
    pub template: String,
    /// 1-based line in the template, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The variable (dotted path, e.g. `vars.database_url`) involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// The environments affected, sorted.
    pub environments: Vec<String>,
    /// What is wrong and how to fix it, one sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A parsed secret reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum SecretRef {
    /// `secret://env/NAME`: an environment variable of the installing process.
    Env(String),
    /// `secret://file/PATH`: a file's content (one trailing newline removed); a relative
    /// path is relative to the spec's directory.
    File(String),
}

impl SecretRef {
    /// The prefix that marks a variable value as a secret reference.
    pub const PREFIX: &'static str = "secret://";

    /// Parses `secret://env/NAME` or `secret://file/PATH`. `Ok(None)` when the value is
    /// not a reference at all; an error when it is one but malformed.
    pub fn parse(value: &str) -> std::result::Result<Option<SecretRef>, String> {
        let Some(rest) = value.strip_prefix(Self::PREFIX) else {
            return Ok(None);
        };
        let (scheme, name) = rest.split_once('/').unwrap_or((rest, ""));
        if name.is_empty() {
            return Err(format!(
                "`{value}` names no secret: write secret://env/NAME or secret://file/PATH"
            ));
        }
        match scheme {
            "env" => {
                if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    Ok(Some(SecretRef::Env(name.to_owned())))
                } else {
                    Err(format!(
                        "`{value}`: an environment variable name has only letters, digits and `_`"
                    ))
                }
            }
            "file" => Ok(Some(SecretRef::File(name.to_owned()))),
            other => Err(format!(
                "`{value}` uses the unknown secret source `{other}`: write secret://env/NAME or secret://file/PATH"
            )),
        }
    }

    /// The mask shown instead of the value: `***secret://env/NAME***`.
    pub fn mask(&self) -> String {
        format!("***{self}***")
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "secret://env/{n}"),
            SecretRef::File(p) => write!(f, "secret://file/{p}"),
        }
    }
}

/// Turns a secret reference into its value. Called at install time only.
pub trait SecretResolver {
    /// The secret's value, or an error saying where it was looked for.
    fn resolve(&self, secret: &SecretRef) -> Result<String>;
}

/// Resolves `env` secrets from this process's environment and `file` secrets from disk
/// (relative to `base_dir`, normally the spec's directory).
#[derive(Debug, Clone)]
pub struct EnvFileResolver {
    /// Directory relative file references are resolved against.
    pub base_dir: PathBuf,
}

impl SecretResolver for EnvFileResolver {
    fn resolve(&self, secret: &SecretRef) -> Result<String> {
        match secret {
            SecretRef::Env(name) => std::env::var(name).map_err(|e| Error::Secret {
                reference: secret.to_string(),
                reason: format!(
                    "the environment variable {name} is {}; export it in the environment that runs the install",
                    match e {
                        std::env::VarError::NotPresent => "not set",
                        std::env::VarError::NotUnicode(_) => "not valid UTF-8",
                    }
                ),
            }),
            SecretRef::File(p) => {
                let path = self.base_dir.join(p);
                // A secret file is small; never a FIFO someone left in its place.
                let text = slipway_stdx::fs::read_regular_string(&path, 1024 * 1024).map_err(|e| Error::Secret {
                    reference: secret.to_string(),
                    reason: format!(
                        "cannot read {}: {e}; create the file or fix the path",
                        path.display()
                    ),
                })?;
                // Files written by editors and `echo` end in a newline that is not part of
                // the secret.
                let text = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(&text);
                Ok(text.to_owned())
            }
        }
    }
}

/// Secret values resolved for one environment. `Debug` shows only the references.
#[derive(Clone, Default)]
pub struct ResolvedSecrets {
    values: BTreeMap<SecretRef, String>,
}

impl fmt::Debug for ResolvedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl ResolvedSecrets {
    /// The value of a reference, if it was resolved.
    pub fn get(&self, secret: &SecretRef) -> Option<&str> {
        self.values.get(secret).map(String::as_str)
    }

    /// The references resolved.
    pub fn references(&self) -> impl Iterator<Item = &SecretRef> {
        self.values.keys()
    }

    /// A redactor for these values.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.values.iter().map(|(r, v)| (r.clone(), v.clone())))
    }
}

/// Resolves every secret referenced by an environment's `vars`.
pub fn resolve_secrets(env: &EnvSpec, resolver: &dyn SecretResolver) -> Result<ResolvedSecrets> {
    let mut values = BTreeMap::new();
    for (name, value) in &env.vars {
        match SecretRef::parse(value.as_str()) {
            Ok(Some(r)) => {
                let v = resolver.resolve(&r)?;
                values.insert(r, v);
            }
            Ok(None) => {}
            Err(reason) => {
                return Err(Error::Secret {
                    reference: format!("vars.{name}"),
                    reason,
                });
            }
        }
    }
    Ok(ResolvedSecrets { values })
}

/// Replaces every occurrence of known secret values in text with the secret's mask.
///
/// Values are matched longest first so a secret that contains another is masked whole.
/// Each value is also matched in its JSON-escaped form, because logs and journals are JSON
/// and a value with a quote or backslash appears escaped there. Empty values are ignored:
/// they occur everywhere and carry nothing to hide.
#[derive(Clone, Default)]
pub struct Redactor {
    /// (needle, replacement), longest needle first.
    needles: Vec<(String, String)>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} patterns)", self.needles.len())
    }
}

impl Redactor {
    /// A redactor for these (reference, value) pairs.
    pub fn new(secrets: impl IntoIterator<Item = (SecretRef, String)>) -> Self {
        let mut needles = Vec::new();
        for (r, v) in secrets {
            if v.is_empty() {
                continue;
            }
            let mask = r.mask();
            // serde_json never fails to serialize a string; the fallback keeps the raw form.
            let json = serde_json::to_string(&v).unwrap_or_default();
            let escaped = json
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or_default()
                .to_owned();
            if !escaped.is_empty() && escaped != v {
                needles.push((escaped, mask.clone()));
            }
            needles.push((v, mask));
        }
        needles.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        needles.dedup_by(|a, b| a.0 == b.0);
        Redactor { needles }
    }

    /// A redactor for plain values, each masked as `***`.
    pub fn from_values(values: impl IntoIterator<Item = String>) -> Self {
        Redactor::new(
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (SecretRef::Env(format!("REDACTED_{i}")), v)),
        )
    }

    /// Whether the redactor has nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The text with every secret value replaced by its mask.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (needle, mask) in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), mask);
            }
        }
        out
    }

    /// How many bytes a reader that keeps the last `limit` bytes of a stream must keep
    /// beyond them for [`Self::redact_tail`]: the longest value (or escaped value). With
    /// that margin every secret that overlaps the kept tail is whole in what was read.
    pub fn tail_margin(&self) -> usize {
        self.needles.first().map_or(0, |(n, _)| n.len())
    }

    /// Redact the end of a stream, *then* keep at most `limit` bytes of it. Cutting first
    /// would leak: a secret straddling the cut leaves its end in the tail, which no longer
    /// matches the whole value.
    ///
    /// `text` is the stream's last `limit + tail_margin()` bytes or more when it was longer
    /// (`cut`), else the whole stream. When `cut`, the first bytes may be the end of a
    /// secret that began before them: the longest such piece is masked too. Returns the
    /// kept text and whether anything was left out.
    pub fn redact_tail(&self, text: &str, cut: bool, limit: usize) -> (String, bool) {
        let mut out = self.redact(text);
        if cut {
            let lead = self.partial_lead(&out);
            if lead > 0 {
                out.replace_range(..lead, "***");
            }
        }
        if out.len() <= limit {
            return (out, cut);
        }
        let mut start = out.len() - limit;
        while !out.is_char_boundary(start) {
            start += 1;
        }
        (out[start..].to_owned(), true)
    }

    /// The length of the longest start of `text` that is the end (not the whole) of a
    /// secret value.
    fn partial_lead(&self, text: &str) -> usize {
        let t = text.as_bytes();
        let mut best = 0;
        for (needle, _) in &self.needles {
            let n = needle.as_bytes();
            // Longest first; only pieces longer than the best so far can matter.
            for k in (best + 1..n.len()).rev() {
                if k <= t.len() && t[..k] == n[n.len() - k..] {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Whether the text contains any secret value (for tests and last-line checks).
    pub fn leaks(&self, text: &str) -> bool {
        self.needles.iter().any(|(n, _)| text.contains(n.as_str()))
    }
}

/// Whether secrets are masked or resolved while rendering.
#[derive(Debug, Clone, Copy)]
pub enum SecretMode<'a> {
    /// Secrets render as `***secret://env/NAME***`; for `slipway render` and plans.
    Masked,
    /// Secrets render as their values; for install time only.
    Resolved(&'a ResolvedSecrets),
}

/// What to render.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    /// Masked or resolved secrets.
    pub secrets: SecretMode<'a>,
    /// The instance's port. When the target assigns ports and none is given, `port`
    /// renders as `<port>` in masked mode, and is undefined in resolved mode (a render
    /// per version, for no one instance: a template using it fails, naming it).
    pub port: Option<u16>,
}

impl Default for RenderOptions<'_> {
    fn default() -> Self {
        RenderOptions {
            secrets: SecretMode::Masked,
            port: None,
        }
    }
}

/// One rendered config file. `Debug` never shows the content (it may hold secrets).
#[derive(Clone, Serialize)]
pub struct RenderedFile {
    /// The service.
    pub service: String,
    /// Template path as written in the spec.
    pub template: String,
    /// Destination on the target.
    pub dest: String,
    /// The rendered text.
    pub content: String,
    /// Lowercase hex sha256 of `content`, to record with the run.
    pub sha256: String,
    /// Secret references the file uses (never their values).
    pub secrets: Vec<String>,
}

impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedFile")
            .field("service", &self.service)
            .field("template", &self.template)
            .field("dest", &self.dest)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Whether a target assigns each instance a port (so `port` is in the context).
pub fn target_provides_port(env: &EnvSpec) -> bool {
    env.target.process.is_some() || env.target.ssh.is_some()
}

/// A service's version: its own, or the release's.
pub fn service_version<'s>(spec: &'s ReleaseSpec, service: &'s Service) -> &'s str {
    service.version.as_deref().unwrap_or(&spec.metadata.version)
}

/// Builds the template context as JSON (the form the static check walks).
fn context(
    spec: &ReleaseSpec,
    env_name: &str,
    env: &EnvSpec,
    service_name: &str,
    service: &Service,
    opts: &RenderOptions<'_>,
) -> std::result::Result<(serde_json::Value, Vec<String>), String> {
    let mut vars = serde_json::Map::new();
    let mut used_secrets = Vec::new();
    for (k, v) in &env.vars {
        let text = match SecretRef::parse(v.as_str()) {
            Ok(None) => v.as_str().to_owned(),
            Ok(Some(r)) => {
                used_secrets.push(r.to_string());
                match opts.secrets {
                    SecretMode::Masked => r.mask(),
                    SecretMode::Resolved(resolved) => match resolved.get(&r) {
                        Some(v) => v.to_owned(),
                        None => {
                            return Err(format!(
                                "the secret {r} (vars.{k}) was not resolved; resolve the environment's secrets before rendering"
                            ));
                        }
                    },
                }
            }
            Err(e) => return Err(format!("vars.{k}: {e}")),
        };
        vars.insert(k.clone(), serde_json::Value::String(text));
    }
    let mut ctx = serde_json::json!({
        "vars": vars,
        "env": env_name,
        "service": service_name,
        "version": service_version(spec, service),
        "release": {
            "name": spec.metadata.name,
            "version": spec.metadata.version,
            "type": spec.metadata.release_type.as_str(),
        },
    });
    if target_provides_port(env) {
        let port = match (opts.port, opts.secrets) {
            (Some(p), _) => Some(serde_json::Value::from(p)),
            (None, SecretMode::Masked) => Some(serde_json::Value::from("<port>")),
            // An install-time render for no one instance (the process target renders per
            // version): `port` stays undefined, so a template using it fails, naming it.
            (None, SecretMode::Resolved(_)) => None,
        };
        if let (Some(port), Some(m)) = (port, ctx.as_object_mut()) {
            m.insert("port".to_owned(), port);
        }
    }
    Ok((ctx, used_secrets))
}

/// The minijinja environment every render uses: strict undefined, no HTML escaping
/// (config files are not HTML), trailing newlines kept (config files end in one).
fn jinja() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build();
    // The default delimiters always build; keep the default syntax if that ever changes.
    if let Ok(s) = syntax {
        env.set_syntax(s);
    }
    env
}

/// Whether a dotted path (`vars.database_url`) resolves in the context.
fn defined(ctx: &serde_json::Value, path: &str) -> bool {
    let mut cur = ctx;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    true
}

/// Sets a dotted path in the context to a placeholder string, creating objects on the way.
fn fill(ctx: &mut serde_json::Value, path: &str) {
    let mut cur = ctx;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        let last = i + 1 == parts.len();
        cur = map.entry((*part).to_owned()).or_insert_with(|| {
            if last {
                serde_json::Value::from("<placeholder>")
            } else {
                serde_json::Value::Object(serde_json::Map::new())
            }
        });
    }
}

/// The 1-based line where `path` is first used inside a `{{ }}` or `{% %}` tag.
pub(crate) fn line_of(source: &str, path: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        let open = &source[i..];
        let close = if open.starts_with("{{") {
            "}}"
        } else if open.starts_with("{%") {
            "%}"
        } else {
            i += 1;
            continue;
        };
        let start = i + 2;
        let end = source[start..]
            .find(close)
            .map_or(source.len(), |e| start + e);
        let tag = &source[start..end];
        let mut from = 0;
        while let Some(pos) = tag[from..].find(path) {
            let at = from + pos;
            let before = tag[..at].chars().next_back();
            let after = tag[at + path.len()..].chars().next();
            let ident = |c: char| c.is_alphanumeric() || c == '_';
            if !before.is_some_and(|c| ident(c) || c == '.')
                && !after.is_some_and(|c| ident(c) || c == '.')
            {
                return Some(source[..start + at].matches('\n').count() + 1);
            }
            from = at + path.len();
        }
        i = end + 2;
    }
    None
}

/// A template read from disk.
struct Loaded {
    path: String,
    source: String,
}

/// `Err` is boxed: a [`Problem`] is large and this is on the happy path of every render.
fn read_template(
    spec_dir: &Path,
    service: &str,
    path: &str,
) -> std::result::Result<Loaded, Box<Problem>> {
    let full = spec_dir.join(path);
    let unreadable = |reason: String| {
        Box::new(Problem {
            code: "template-unreadable".into(),
            severity: Severity::Error,
            service: service.to_owned(),
            template: path.to_owned(),
            line: None,
            variable: None,
            environments: Vec::new(),
            message: format!(
                "{path} (config of `{service}`): {reason}; fix `services.{service}.config[].template` or create the file"
            ),
        })
    };
    match std::fs::metadata(&full) {
        Ok(m) if m.len() > MAX_TEMPLATE_BYTES => {
            return Err(unreadable(format!(
                "{} bytes is more than the {MAX_TEMPLATE_BYTES}-byte limit for a template",
                m.len()
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(unreadable(format!("cannot read {}: {e}", full.display()))),
    }
    match slipway_stdx::fs::read_regular_string(&full, MAX_TEMPLATE_BYTES) {
        Ok(source) => Ok(Loaded {
            path: path.to_owned(),
            source,
        }),
        Err(e) => Err(unreadable(format!("cannot read {}: {e}", full.display()))),
    }
}

/// What checking one template against one environment found.
enum Outcome {
    Ok(RenderedFile),
    Missing(Vec<(String, Option<usize>)>),
    Failed(Problem),
}

/// One (environment, service) pair a template is rendered for.
struct Scope<'a> {
    spec: &'a ReleaseSpec,
    env_name: &'a str,
    env: &'a EnvSpec,
    service_name: &'a str,
    service: &'a Service,
    /// Rendered once per version, for no one instance: `port` is not in the context
    /// whatever the target (see [`check_version_config_in`]).
    per_version: bool,
}

fn render_one(
    scope: &Scope<'_>,
    template: &Loaded,
    dest: &str,
    opts: &RenderOptions<'_>,
) -> Outcome {
    let Scope {
        spec,
        env_name,
        env,
        service_name,
        service,
        per_version,
    } = *scope;
    let problem = |code: &str, line: Option<usize>, message: String| Problem {
        code: code.to_owned(),
        severity: Severity::Error,
        service: service_name.to_owned(),
        template: template.path.clone(),
        line,
        variable: None,
        environments: vec![env_name.to_owned()],
        message,
    };
    let (mut ctx, secrets) = match context(spec, env_name, env, service_name, service, opts) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(problem(
                "secret-reference",
                None,
                format!("environment `{env_name}`: {e}"),
            ));
        }
    };
    if per_version && let Some(m) = ctx.as_object_mut() {
        m.remove("port");
    }
    let jenv = jinja();
    let tmpl = match jenv.template_from_named_str(&template.path, &template.source) {
        Ok(t) => t,
        Err(e) => {
            let line = e.line();
            return Outcome::Failed(problem(
                "template-syntax",
                line,
                format!(
                    "{}:{}: {}; fix the template syntax",
                    template.path,
                    line.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                    e.detail().unwrap_or("syntax error")
                ),
            ));
        }
    };
    // Static check first, so every missing variable is known, not just the first one the
    // renderer trips over. Globals (range, namespace, …) are not variables of ours.
    let globals: BTreeSet<String> = jenv.globals().map(|(n, _)| n.to_owned()).collect();
    let mut missing: Vec<(String, Option<usize>)> = tmpl
        .undeclared_variables(true)
        .into_iter()
        .filter(|v| {
            let root = v.split('.').next().unwrap_or(v);
            !globals.contains(root) && !defined(&ctx, v)
        })
        .map(|v| {
            let line = line_of(&template.source, &v);
            (v, line)
        })
        .collect();
    missing.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    match tmpl.render(minijinja::Value::from(minijinja::value::Serde(&ctx))) {
        Ok(content) => Outcome::Ok(RenderedFile {
            service: service_name.to_owned(),
            template: template.path.clone(),
            dest: dest.to_owned(),
            sha256: sha256_bytes(content.as_bytes()),
            content,
            secrets,
        }),
        Err(e) if e.kind() == minijinja::ErrorKind::UndefinedError && !missing.is_empty() => {
            // Static analysis also flags variables the template guards (`is defined`,
            // `default`). Keep those whose absence alone still fails the strict render.
            let needed: Vec<(String, Option<usize>)> = missing
                .iter()
                .filter(|(v, _)| {
                    let mut filled = ctx.clone();
                    for (other, _) in missing.iter().filter(|(o, _)| o != v) {
                        fill(&mut filled, other);
                    }
                    matches!(
                        tmpl.render(minijinja::Value::from(minijinja::value::Serde(&filled))),
                        Err(e) if e.kind() == minijinja::ErrorKind::UndefinedError
                    )
                })
                .cloned()
                .collect();
            if needed.is_empty() {
                // Only combinations fail; report them all rather than nothing.
                Outcome::Missing(missing)
            } else {
                Outcome::Missing(needed)
            }
        }
        Err(e) => {
            let line = e.line();
            Outcome::Failed(problem(
                "template-render",
                line,
                format!(
                    "{}:{}: {} (environment `{env_name}`); fix the template or the environment's vars",
                    template.path,
                    line.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                    e.detail()
                        .map_or_else(|| e.kind().to_string(), str::to_owned)
                ),
            ))
        }
    }
}

fn fix_for(variable: &str) -> String {
    match variable.strip_prefix("vars.") {
        Some(name) => {
            let name = name.split('.').next().unwrap_or(name);
            format!("add `{name}` to `vars` of those environments")
        }
        None if variable == "port" => {
            "`port` exists only on targets that assign ports (process, ssh), and only in a render for one instance; config installed per version (process target) cannot hold an instance's port: read $PORT from the instance's environment instead".to_owned()
        }
        None => format!(
            "the context has {}; did you mean `vars.{variable}`?",
            CONTEXT_NAMES.join(", ")
        ),
    }
}

fn undefined_problem(
    service: &str,
    template: &str,
    variable: &str,
    line: Option<usize>,
    envs: Vec<String>,
) -> Problem {
    Problem {
        code: "undefined-variable".into(),
        severity: Severity::Error,
        service: service.to_owned(),
        template: template.to_owned(),
        line,
        variable: Some(variable.to_owned()),
        message: format!(
            "{template}:{}: `{variable}` is undefined in environment{} {} (config of `{service}`); {}",
            line.map_or_else(|| "?".to_owned(), |l| l.to_string()),
            if envs.len() == 1 { "" } else { "s" },
            envs.join(", "),
            fix_for(variable)
        ),
        environments: envs,
    }
}

/// Checks every config template of every service against every environment, without
/// resolving secrets. Problems for the same template and variable are merged, listing all
/// environments that lack it.
pub fn check_placeholders(spec: &ReleaseSpec, spec_dir: &Path) -> Vec<Problem> {
    let env_names: Vec<&String> = spec.environments.keys().collect();
    check_placeholders_in(spec, spec_dir, &env_names)
}

/// [`check_placeholders`] for some environments only (a plan checks its own).
pub fn check_placeholders_in(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    env_names: &[&String],
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    for (svc_name, svc) in &spec.services {
        for cfg in &svc.config {
            let template = match read_template(spec_dir, svc_name, &cfg.template) {
                Ok(t) => t,
                Err(p) => {
                    problems.push(*p);
                    continue;
                }
            };
            // (line, variable) → environments lacking it; sorted by line for reading.
            let mut missing: BTreeMap<(Option<usize>, String), Vec<String>> = BTreeMap::new();
            let mut failed: BTreeMap<(String, String), Problem> = BTreeMap::new();
            for env_name in env_names {
                let Some(env) = spec.environments.get(env_name.as_str()) else {
                    continue;
                };
                let opts = RenderOptions::default();
                let scope = Scope {
                    spec,
                    env_name,
                    env,
                    service_name: svc_name,
                    service: svc,
                    per_version: false,
                };
                match render_one(&scope, &template, &cfg.dest, &opts) {
                    Outcome::Ok(_) => {}
                    Outcome::Missing(vars) => {
                        for (v, line) in vars {
                            missing
                                .entry((line, v))
                                .or_default()
                                .push((*env_name).clone());
                        }
                    }
                    Outcome::Failed(p) => {
                        // Syntax errors are the same in every environment: report once.
                        let key = if p.code == "template-syntax" {
                            (p.code.clone(), String::new())
                        } else {
                            (p.code.clone(), p.message.clone())
                        };
                        match failed.get_mut(&key) {
                            Some(existing) => existing.environments.push((*env_name).clone()),
                            None => {
                                failed.insert(key, p);
                            }
                        }
                    }
                }
            }
            for ((line, variable), envs) in missing {
                problems.push(undefined_problem(
                    svc_name,
                    &cfg.template,
                    &variable,
                    line,
                    envs,
                ));
            }
            problems.extend(failed.into_values());
        }
    }
    problems
}

/// Templates that need an instance's `port` in environments whose config is rendered once
/// per version: on the `process` target every instance of a version shares one rendering
/// (`<store dir>/config/<env>/<service>/<version>/`), so there is no port to put in it, and
/// such a template would pass [`check_placeholders`] (which shows `port` as `<port>`) only
/// to fail at install time. Each template is rendered as the install renders it — secrets
/// masked, `port` undefined — and a `port` the strict render needs is a
/// `port-in-version-config` error naming the template, line and the fix. A template that
/// guards it (`{% if port is defined %}`) passes.
pub fn check_version_config_in(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    env_names: &[&String],
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    for (svc_name, svc) in &spec.services {
        for cfg in &svc.config {
            // An unreadable template is reported by `check_placeholders`.
            let Ok(template) = read_template(spec_dir, svc_name, &cfg.template) else {
                continue;
            };
            // line → environments where the template needs the port.
            let mut needs: BTreeMap<Option<usize>, Vec<String>> = BTreeMap::new();
            for env_name in env_names {
                let Some(env) = spec.environments.get(env_name.as_str()) else {
                    continue;
                };
                if env.target.process.is_none() {
                    continue;
                }
                let scope = Scope {
                    spec,
                    env_name,
                    env,
                    service_name: svc_name,
                    service: svc,
                    per_version: true,
                };
                if let Outcome::Missing(vars) =
                    render_one(&scope, &template, &cfg.dest, &RenderOptions::default())
                    && let Some((_, line)) = vars.iter().find(|(v, _)| v == "port")
                {
                    needs.entry(*line).or_default().push((*env_name).clone());
                }
            }
            for (line, envs) in needs {
                problems.push(Problem {
                    code: "port-in-version-config".into(),
                    severity: Severity::Error,
                    service: svc_name.clone(),
                    template: cfg.template.clone(),
                    line,
                    variable: Some("port".into()),
                    message: format!(
                        "{}:{}: `{{{{ port }}}}` in the config of `{svc_name}` cannot be rendered on the process target of environment{} {}: config is rendered once per version and shared by all its instances, each of which has its own port; read the port from the instance's environment ($PORT) or pass it on the command line (`--port {{{{ port }}}}` in `run.command`), or guard it with `{{% if port is defined %}}`",
                        cfg.template,
                        line.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                        if envs.len() == 1 { "" } else { "s" },
                        envs.join(", "),
                    ),
                    environments: envs,
                });
            }
        }
    }
    problems
}

/// Renders the config files of one environment (all services, or one), in service then
/// template order. Any problem fails the whole render, listing every problem.
pub fn render_environment(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    env_name: &str,
    service: Option<&str>,
    opts: &RenderOptions<'_>,
) -> Result<Vec<RenderedFile>> {
    let env = spec
        .environments
        .get(env_name)
        .ok_or_else(|| Error::Placeholders {
            problems: vec![Problem {
                code: "unknown-environment".into(),
                severity: Severity::Error,
                service: String::new(),
                template: String::new(),
                line: None,
                variable: None,
                environments: vec![env_name.to_owned()],
                message: format!(
                    "unknown environment `{env_name}`; the spec declares: {}",
                    spec.environments
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }],
        })?;
    if let Some(s) = service
        && !spec.services.contains_key(s)
    {
        return Err(Error::Placeholders {
            problems: vec![Problem {
                code: "unknown-service".into(),
                severity: Severity::Error,
                service: s.to_owned(),
                template: String::new(),
                line: None,
                variable: None,
                environments: vec![env_name.to_owned()],
                message: format!(
                    "unknown service `{s}`; the spec declares: {}",
                    spec.services.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }],
        });
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for (svc_name, svc) in &spec.services {
        if service.is_some_and(|s| s != svc_name) {
            continue;
        }
        for cfg in &svc.config {
            let template = match read_template(spec_dir, svc_name, &cfg.template) {
                Ok(t) => t,
                Err(p) => {
                    problems.push(*p);
                    continue;
                }
            };
            let scope = Scope {
                spec,
                env_name,
                env,
                service_name: svc_name,
                service: svc,
                per_version: false,
            };
            match render_one(&scope, &template, &cfg.dest, opts) {
                Outcome::Ok(f) => files.push(f),
                Outcome::Missing(vars) => {
                    // Name every environment lacking the variable, not just this one, so
                    // the fix is made once.
                    let all: Vec<&String> = spec.environments.keys().collect();
                    for (v, line) in vars {
                        let envs: Vec<String> = all
                            .iter()
                            .filter(|e| {
                                spec.environments.get(e.as_str()).is_some_and(|en| {
                                    let o = RenderOptions::default();
                                    context(spec, e, en, svc_name, svc, &o)
                                        .map(|(c, _)| !defined(&c, &v))
                                        .unwrap_or(true)
                                })
                            })
                            .map(|e| (*e).clone())
                            .collect();
                        problems.push(undefined_problem(svc_name, &cfg.template, &v, line, envs));
                    }
                }
                Outcome::Failed(p) => problems.push(p),
            }
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(Error::Placeholders { problems })
    }
}
