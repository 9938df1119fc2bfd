//! Diagnostics: one problem in a spec, with where it is, what is wrong and how to fix it.
//!
//! A [`Diagnostic`] is plain data (so it can be JSON for pipelines); [`SpecErrors`]
//! carries all of them with the source text and renders miette-style snippets for people.

use std::fmt;

use serde::Serialize;

/// A position in the source: 1-based line and column, byte offset and token length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pos {
    /// 1-based line; 0 when the problem is about the whole file.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// Byte offset of the start.
    #[serde(skip)]
    pub offset: usize,
    /// Byte length of the highlighted token.
    #[serde(skip)]
    pub len: usize,
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The spec cannot be used.
    Error,
    /// The spec works, but probably not as meant.
    Warning,
}

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Stable machine-readable code, e.g. `unknown-field`.
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// The field, as a dotted path: `services.api.depends_on[0]`.
    pub path: String,
    /// Where it is.
    #[serde(flatten)]
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Diagnostic {
    /// A new error at a JSON pointer.
    pub fn new(
        code: &'static str,
        pointer: &str,
        pos: Pos,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        // Messages quote names and values from the spec: keep escape sequences in them
        // from reaching a terminal.
        let shown = |s: String| crate::text::printable(&s).into_owned();
        Self {
            code,
            severity: Severity::Error,
            path: shown(dotted(pointer)),
            pos,
            message: shown(message.into()),
            help: shown(help.into()),
        }
    }

    /// Turn this into a warning.
    #[must_use]
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }
}

/// `/services/api/depends_on/0` → `services.api.depends_on[0]`.
pub fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            if seg.contains('.') || seg.contains(' ') || seg.is_empty() {
                out.push('"');
                out.push_str(&seg);
                out.push('"');
            } else {
                out.push_str(&seg);
            }
        }
    }
    out
}

/// Every problem found in one spec file, with the source for snippets.
#[derive(Debug, Clone)]
pub struct SpecErrors {
    /// The file name as given by the user.
    pub file: String,
    /// The source text (lossy UTF-8 if the file was not text).
    pub source: String,
    /// All problems, errors first, then in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecErrors {
    /// Number of errors (not warnings).
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Render every diagnostic with a snippet, without colour, `width` columns wide.
    pub fn render(&self, color: bool, width: usize) -> String {
        render_all(&self.file, &self.source, &self.diagnostics, color, width)
    }
}

/// Render diagnostics against a source text.
pub fn render_all(
    file: &str,
    source: &str,
    diagnostics: &[Diagnostic],
    color: bool,
    width: usize,
) -> String {
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_context_lines(1);
    let mut out = String::new();
    let source: &str = &displayable_source(source);
    let file: &str = &crate::text::printable(file);
    for d in diagnostics {
        let report = Report { file, source, d };
        if handler.render_report(&mut out, &report).is_err() {
            // Rendering into a String cannot fail short of a formatter bug; fall back to a line.
            out.push_str(&format!(
                "{file}:{}:{}: {}: {}\n",
                d.pos.line, d.pos.column, d.path, d.message
            ));
        }
        out.push('\n');
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    out.push_str(&format!(
        "{file}: {errors} error{}, {warnings} warning{}\n",
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    ));
    out
}

/// The source with every character a terminal would act on (control characters other
/// than newline and tab, a carriage return not ending a line, bidirectional overrides)
/// replaced by as many `?` as it has bytes, so the snippet cannot carry an escape
/// sequence and every byte offset still points where it did.
fn displayable_source(source: &str) -> std::borrow::Cow<'_, str> {
    let acted_on = |(i, c): (usize, char)| match c {
        '\n' | '\t' => false,
        '\r' => source.as_bytes().get(i + 1) != Some(&b'\n'),
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        c => c.is_control(),
    };
    if !source.char_indices().any(acted_on) {
        return std::borrow::Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    for (i, c) in source.char_indices() {
        if acted_on((i, c)) {
            out.extend(std::iter::repeat_n('?', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

struct Report<'a> {
    file: &'a str,
    source: &'a str,
    d: &'a Diagnostic,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.d.path.is_empty() {
            write!(f, "{}", self.d.message)
        } else {
            write!(f, "{}: {}", self.d.path, self.d.message)
        }
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let sev = match self.d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        Some(Box::new(if self.d.pos.line == 0 {
            format!("{sev}[{}] {}", self.d.code, self.file)
        } else {
            format!(
                "{sev}[{}] {}:{}:{}",
                self.d.code, self.file, self.d.pos.line, self.d.pos.column
            )
        }))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        if self.d.help.is_empty() {
            None
        } else {
            Some(Box::new(&self.d.help))
        }
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.d.pos.line == 0 {
            None
        } else {
            Some(&self.source)
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        if self.d.pos.line == 0 {
            return None;
        }
        let start = self.d.pos.offset.min(self.source.len());
        let len = self.d.pos.len.min(self.source.len() - start);
        Some(Box::new(std::iter::once(miette::LabeledSpan::new(
            Some("here".to_owned()),
            start,
            len,
        ))))
    }
}
