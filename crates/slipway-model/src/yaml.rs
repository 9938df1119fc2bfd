//! YAML text → JSON value plus a map from every JSON pointer to its place in the source.
//!
//! serde-saphyr does the parsing (with its budget against alias bombs, deep nesting and
//! node floods); we deserialize into a small spanned tree and flatten it into a
//! [`serde_json::Value`] and a [`SpanMap`]. Everything after this — schema checks, typed
//! deserialization, semantic validation — works on the JSON value and asks the span map
//! where a path came from, which is how every problem gets a line and column.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Pos};

/// Largest spec accepted, in bytes. Real specs are a few KiB; 2,000 services fit in ~1 MiB.
pub const MAX_SPEC_BYTES: usize = 8 * 1024 * 1024;

/// Deepest nesting accepted. The spec itself needs about 8 levels.
const MAX_DEPTH: usize = 48;

/// Where a node sits in the source: the value, and for map entries the key too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSpan {
    /// Where the value starts.
    pub value: Pos,
    /// Where the key of the entry holding this value starts (maps only).
    pub key: Option<Pos>,
}

/// Where a node starts as the parser reported it: 1-based line and column (characters).
/// Turned into a [`Pos`] (byte offset, token length) only when someone asks: a spec of
/// 2,000 services has ~100,000 nodes and a diagnostic needs a handful.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawSpan {
    value: (u32, u32),
    key: Option<(u32, u32)>,
}

/// JSON pointer → position in the source.
///
/// Built on first use: a spec that validates cleanly asks for no position, and recording
/// one for each of a large spec's ~100,000 nodes was the larger part of parsing it. The
/// first lookup parses the text again with positions (the same parser, the same options).
#[derive(Debug, Clone, Default)]
pub struct SpanMap {
    /// The source, to parse again and to turn a line and column into a byte offset.
    text: std::sync::Arc<str>,
    spans: std::sync::Arc<std::sync::OnceLock<Spans>>,
}

/// The positions of one source: every pointer's, and the line starts.
#[derive(Debug, Default)]
struct Spans {
    // foldhash, not SipHash: the keys are the spec's own pointers (no attacker gains by
    // colliding them in a map built and dropped in one `validate`), and hashing ~100,000
    // of them with SipHash was 8 % of validating a large spec.
    by_pointer: HashMap<String, RawSpan, foldhash::fast::FixedState>,
    starts: Vec<usize>,
}

impl SpanMap {
    fn lazy(text: &str) -> Self {
        Self {
            text: std::sync::Arc::from(text),
            spans: std::sync::Arc::default(),
        }
    }

    fn spans(&self) -> &Spans {
        self.spans.get_or_init(|| {
            // The text parsed once already; should the spanned parse refuse it anyway,
            // positions fall back to the document's start rather than failing a lookup.
            spanned(&self.text).map(|(_, s)| s).unwrap_or_default()
        })
    }

    /// The span recorded for a pointer, or the nearest recorded ancestor's.
    pub fn lookup(&self, pointer: &str) -> NodeSpan {
        let spans = self.spans();
        let mut p = pointer;
        loop {
            if let Some(s) = spans.by_pointer.get(p) {
                let lines = LineIndex {
                    text: &self.text,
                    starts: std::borrow::Cow::Borrowed(&spans.starts),
                };
                return NodeSpan {
                    value: pos_at(s.value, &lines),
                    key: s.key.map(|k| pos_at(k, &lines)),
                };
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return NodeSpan::default(),
            }
        }
    }

    /// Whether a pointer was present in the source.
    pub fn contains(&self, pointer: &str) -> bool {
        self.spans().by_pointer.contains_key(pointer)
    }
}

/// Escape one JSON pointer segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Build a JSON pointer from segments.
pub fn pointer<I, S>(segments: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for s in segments {
        out.push('/');
        let s = s.as_ref();
        // Most segments (names, fields) need no escaping: no copy for them.
        if s.contains(['~', '/']) {
            out.push_str(&escape(s));
        } else {
            out.push_str(s);
        }
    }
    out
}

/// A parsed node. Keys of maps may be any scalar in YAML; we keep their text.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Err(E::custom("binary values are not allowed in a release spec"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Node>>()? {
            let v = map.next_value::<Spanned<Node>>()?;
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

/// The document as a JSON value without positions: the same conversions as [`Node`] and
/// [`flatten`] (big integers and non-finite floats become text, scalar keys their text),
/// checked against them by the tests. A mapping as a key is refused here; the spanned
/// reading reports it.
struct Plain(serde_json::Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PlainVisitor).map(Plain)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Plain::deserialize(d).map(|p| p.0)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(serde_json::Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(serde_json::Value::from(v))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v.to_string()))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| serde_json::Value::String(v.to_string())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v))
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Err(E::custom("binary values are not allowed in a release spec"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Plain(item)) = seq.next_element::<Plain>()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(PlainKey(name)) = map.next_key::<PlainKey>()? {
            let Plain(v) = map.next_value::<Plain>()?;
            out.insert(name, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// A mapping key as [`flatten`] names it: a scalar's text as Rust prints it (a float key
/// `1.0` is `1`, as in the spanned reading), a collection refused.
struct PlainKey(String);

impl<'de> Deserialize<'de> for PlainKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor).map(PlainKey)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar key")
    }
    fn visit_unit<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
    fn visit_none<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        PlainKey::deserialize(d).map(|k| k.0)
    }
    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<String, E> {
        Err(E::custom("binary values are not allowed in a release spec"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(serde::de::Error::custom("a mapping key must be a scalar"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(serde::de::Error::custom("a mapping key must be a scalar"))
    }
}

/// Line-start table to turn (line, column) into byte offsets for snippets.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: std::borrow::Cow<'a, [usize]>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            text,
            starts: std::borrow::Cow::Owned(starts),
        }
    }

    /// Byte offset of a 1-based line and 1-based column counted in characters.
    pub(crate) fn offset(&self, line: u64, column: u64) -> usize {
        let Some(&start) = usize::try_from(line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.starts.get(l))
        else {
            return self.text.len();
        };
        let col = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
        let rest = &self.text[start..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        rest[..line_end]
            .char_indices()
            .nth(col)
            .map_or(start + line_end, |(i, _)| start + i)
    }

    /// Length of the token starting at `offset`: to the end of the scalar-ish run.
    pub(crate) fn token_len(&self, offset: usize) -> usize {
        let rest = &self.text[offset.min(self.text.len())..];
        let end = rest.find(['\n', ',', '}', ']', '#']).unwrap_or(rest.len());
        let token = rest[..end].trim_end();
        // Keys end at the colon; values keep theirs (e.g. times like 09:00 are quoted).
        let token = match token.find(": ") {
            Some(i) => &token[..i],
            None => token.strip_suffix(':').unwrap_or(token),
        };
        // Long runs (deep brackets, minified JSON) would make an unreadable label.
        token.len().clamp(1, 40)
    }
}

fn raw_of(loc: &serde_saphyr::Location) -> (u32, u32) {
    (
        u32::try_from(loc.line()).unwrap_or(u32::MAX),
        u32::try_from(loc.column()).unwrap_or(u32::MAX),
    )
}

fn pos_at((line, column): (u32, u32), lines: &LineIndex<'_>) -> Pos {
    let offset = lines.offset(u64::from(line), u64::from(column));
    Pos {
        line,
        column,
        offset,
        len: lines.token_len(offset),
    }
}

fn pos_of(loc: &serde_saphyr::Location, lines: &LineIndex<'_>) -> Pos {
    pos_at(raw_of(loc), lines)
}

/// Parse YAML text into a JSON value and its span map, or a list of diagnostics.
pub fn parse(text: &str) -> Result<(serde_json::Value, SpanMap), Vec<Diagnostic>> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(vec![Diagnostic::new(
            "too-large",
            "",
            Pos::default(),
            format!(
                "the file is {} bytes; a release spec may be at most {} bytes",
                text.len(),
                MAX_SPEC_BYTES
            ),
            "split the release, or generate a smaller spec",
        )]);
    }
    if text.trim().is_empty() {
        return Err(vec![Diagnostic::new(
            "empty",
            "",
            Pos::default(),
            "the file is empty",
            "a release spec starts with `apiVersion: slipway/v1` and `kind: Release`; \
             copy examples/shop/release.yaml to start",
        )]);
    }
    if let Some(i) = text.find('\0') {
        let lines = LineIndex::new(text);
        let line = lines.starts.partition_point(|&s| s <= i);
        return Err(vec![Diagnostic::new(
            "binary",
            "",
            Pos {
                line: u32::try_from(line).unwrap_or(u32::MAX),
                column: 1,
                offset: i,
                len: 1,
            },
            "the file contains a NUL byte: it is binary, not YAML text",
            "point -f at the release spec (a .yaml file)",
        )]);
    }
    // Fast paths: the value alone. Positions are only needed for a diagnostic, and the
    // span map parses again with them when asked. First the parser's events read directly
    // (most of serde-saphyr's time on a large spec was its own machinery around the same
    // parser); what that reading declines (aliases, tags, merge keys, numbers it does not
    // spell out, any doubt) goes to serde-saphyr's plain reading. Anything that one refuses
    // (a syntax error, a mapping as a key, a budget exceeded) takes the spanned path, which
    // reports it with its position.
    if let Some(value) = direct::read(text) {
        return Ok((value, SpanMap::lazy(text)));
    }
    if let Ok(Plain(value)) = serde_saphyr::from_str_with_options::<Plain>(text, options()) {
        return Ok((value, SpanMap::lazy(text)));
    }
    let (value, spans) = spanned(text)?;
    let map = SpanMap {
        text: std::sync::Arc::from(text),
        spans: std::sync::Arc::new(std::sync::OnceLock::from(spans)),
    };
    Ok((value, map))
}

mod direct {
    //! The document read from granit-parser's events (the parser serde-saphyr itself runs),
    //! without serde-saphyr: the value of a common spec, or `None` whenever there is any
    //! doubt that serde-saphyr would read the text to the same value — then it does.
    //!
    //! Only the plain core of YAML is read here: mappings with string keys, sequences and
    //! untagged scalars without anchors or aliases. Declined (so read by serde-saphyr, with
    //! its budget and its errors): any parse error, an anchor, alias or tag, a merge key
    //! (`<<`), a duplicate key, a key that is not a string (null, a boolean, a number, a
    //! collection), a `%YAML` directive, anything but exactly one document, more than
    //! [`MAX_NODES`] nodes or [`MAX_DEPTH`] levels (well inside serde-saphyr's budget), and
    //! every number spelled other than plain decimal (`+1`, `007`, `0x1F`, `1_000`, `.inf`,
    //! 19 digits and more, `1e999`). Everything it accepts is checked against
    //! serde-saphyr's reading by the tests (every YAML file of the repository, and damaged
    //! copies of them).

    use std::borrow::Cow;

    use granit_parser::{Event, Parser, ScalarStyle, StrInput};
    use serde_json::{Map, Value};

    /// Deepest nesting read here; serde-saphyr's budget allows 48 (a spec needs about 8).
    const MAX_DEPTH: usize = 32;

    /// Most nodes read here; serde-saphyr's budget allows 500,000 (its count may differ
    /// from ours by what it counts, never by half). 2,000 services are about 70,000.
    const MAX_NODES: usize = 250_000;

    /// The value of `text`, or `None` for serde-saphyr to read it.
    pub(super) fn read(text: &str) -> Option<Value> {
        let mut r = Reader {
            // serde-saphyr's options for this parser (its `Budget::parser_options` with our
            // budget): comments on, at most 32 buffered — a longer run of comment lines is
            // an error there, so it must be one here too.
            parser: Parser::new_from_str_with_options(
                text,
                granit_parser::options! {
                    emit_comments: true,
                    max_buffered_comment_events: 32,
                    simple_key_max_lookahead: 1024,
                    flow_nesting_limit: 255,
                    block_nesting_limit: 255,
                },
            ),
            nodes: 0,
        };
        if !matches!(r.next()?, Event::StreamStart) {
            return None;
        }
        // A `%YAML` directive may change how scalars resolve: serde-saphyr decides.
        if !matches!(r.next()?, Event::DocumentStart(_, None)) {
            return None;
        }
        let first = r.next()?;
        let value = r.node(first, 1)?;
        if !matches!(r.next()?, Event::DocumentEnd) || !matches!(r.next()?, Event::StreamEnd) {
            return None;
        }
        Some(value)
    }

    struct Reader<'a> {
        parser: Parser<'a, StrInput<'a>>,
        nodes: usize,
    }

    impl<'a> Reader<'a> {
        /// The next event that is not a comment; `None` at an error or the end.
        fn next(&mut self) -> Option<Event<'a>> {
            loop {
                match self.parser.next_event()? {
                    Ok((Event::Comment(..), _)) => {}
                    Ok((event, _)) => return Some(event),
                    Err(_) => return None,
                }
            }
        }

        fn count(&mut self) -> Option<()> {
            self.nodes += 1;
            (self.nodes <= MAX_NODES).then_some(())
        }

        fn node(&mut self, event: Event<'a>, depth: usize) -> Option<Value> {
            self.count()?;
            match event {
                Event::Scalar(text, style, 0, None) => scalar(text, style),
                Event::SequenceStart(_, 0, None) if depth < MAX_DEPTH => {
                    let mut items = Vec::new();
                    loop {
                        match self.next()? {
                            Event::SequenceEnd => return Some(Value::Array(items)),
                            e => items.push(self.node(e, depth + 1)?),
                        }
                    }
                }
                Event::MappingStart(_, 0, None) if depth < MAX_DEPTH => {
                    let mut out = Map::new();
                    loop {
                        let name = match self.next()? {
                            Event::MappingEnd => return Some(Value::Object(out)),
                            Event::Scalar(text, style, 0, None) => key(text, style)?,
                            _ => return None,
                        };
                        self.count()?;
                        let event = self.next()?;
                        let value = self.node(event, depth + 1)?;
                        if out.contains_key(&name) {
                            return None;
                        }
                        out.insert(name, value);
                    }
                }
                _ => None,
            }
        }
    }

    /// A mapping key: a quoted scalar, or a plain one that can only be a string.
    fn key(text: Cow<'_, str>, style: ScalarStyle) -> Option<String> {
        if text == "<<" {
            return None;
        }
        match style {
            ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Some(text.into_owned()),
            ScalarStyle::Plain => match scalar(text, style)? {
                Value::String(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// A scalar as serde-saphyr's untyped reading resolves it (YAML 1.2 core schema with
    /// strict booleans), or `None` where this reading leaves it to serde-saphyr.
    fn scalar(text: Cow<'_, str>, style: ScalarStyle) -> Option<Value> {
        if style != ScalarStyle::Plain {
            return Some(Value::String(text.into_owned()));
        }
        match &*text {
            "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
            "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
            "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
            _ => {}
        }
        let t = &*text;
        let negative = t.starts_with('-');
        let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
        let b = unsigned.as_bytes();
        // Text that does not start (after a sign) with a digit or a dot is no number to
        // serde-saphyr: Rust's float parser takes only `inf`/`nan` spellings there, which
        // are not finite, and so stay text.
        if !b.first().is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
            return Some(Value::String(text.into_owned()));
        }
        if t.starts_with('+') {
            return None;
        }
        if b.iter().all(u8::is_ascii_digit) {
            // Leading zeros and numbers near 64 bits have rules of their own.
            if (b.len() > 1 && b[0] == b'0') || b.len() > 18 {
                return None;
            }
            let n: i64 = unsigned.parse().ok()?;
            return Some(if negative {
                Value::from(-n)
            } else {
                Value::from(n.unsigned_abs())
            });
        }
        // Radix prefixes, underscores and `.inf`/`.nan` are serde-saphyr's to read.
        let lower = unsigned.get(..4).map(str::to_ascii_lowercase);
        if b.contains(&b'_')
            || (b.len() > 1 && b[0] == b'0' && b[1].is_ascii_alphabetic())
            || matches!(lower.as_deref(), Some(".inf" | ".nan"))
        {
            return None;
        }
        match t.parse::<f64>() {
            Ok(f) => serde_json::Number::from_f64(f).map(Value::Number),
            // `1.0.0`, `10:30`, `1.2.3-rc.1`: text.
            Err(_) => Some(Value::String(text.into_owned())),
        }
    }
}

/// The parser's limits and policies, the same for both readings.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_nodes: 500_000,
            max_documents: 1,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 1_000,
        },
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
        with_snippet: false,
        strict_booleans: true,
    }
}

/// The value with every node's position: the reading that names where a problem is.
fn spanned(text: &str) -> Result<(serde_json::Value, Spans), Vec<Diagnostic>> {
    let root: Spanned<Node> = match serde_saphyr::from_str_with_options(text, options()) {
        Ok(root) => root,
        Err(e) => return Err(vec![yaml_error(&e, text)]),
    };
    let lines = LineIndex::new(text);
    let mut spans = Spans {
        by_pointer: HashMap::default(),
        starts: lines.starts.to_vec(),
    };
    let mut path = String::new();
    let value = flatten(root, &mut path, None, &lines, &mut spans)?;
    Ok((value, spans))
}

fn yaml_error(e: &serde_saphyr::Error, text: &str) -> Diagnostic {
    let lines = LineIndex::new(text);
    let pos = e.location().map(|l| pos_of(&l, &lines)).unwrap_or_default();
    let raw = e.to_string();
    // serde-saphyr appends " at line X, column Y" — we show positions ourselves.
    let msg = raw
        .split(" at line ")
        .next()
        .unwrap_or(&raw)
        .trim()
        .to_owned();
    let lower = msg.to_lowercase();
    let msg = if lower.contains("depth") {
        format!("the document nests more than {MAX_DEPTH} levels deep")
    } else if lower.contains("duplicate") {
        // serde-saphyr's wording ends with advice to its own API ("set DuplicateKeyPolicy
        // in Options"), which a spec's author cannot act on: say what is wrong instead.
        let key = msg
            .split_once("duplicate mapping key:")
            .map(|(_, rest)| rest.split(", set ").next().unwrap_or(rest).trim())
            .filter(|k| !k.is_empty());
        match key {
            Some(k) => format!("the key `{k}` appears twice in the same mapping"),
            None => "a key appears twice in the same mapping".to_owned(),
        }
    } else {
        msg
    };
    let (code, help) = if lower.contains("alias") || lower.contains("anchor") {
        (
            "yaml-aliases",
            "too many or too deeply expanded aliases (a YAML \"billion laughs\"); \
             write the values out instead of aliasing them",
        )
    } else if lower.contains("depth") || lower.contains("nests") {
        (
            "yaml-depth",
            "the document nests deeper than any release spec needs; flatten it",
        )
    } else if lower.contains("duplicate") {
        (
            "yaml-duplicate-key",
            "keep one of the two: merge their contents under one key, or rename one",
        )
    } else if lower.contains("budget") || lower.contains("limit") || lower.contains("exceed") {
        (
            "yaml-limit",
            "the document is larger than a release spec can be; split it",
        )
    } else if lower.contains("document") {
        (
            "yaml-documents",
            "a spec file holds exactly one YAML document; remove the extra `---`",
        )
    } else {
        (
            "yaml-syntax",
            "fix the YAML syntax here (indentation, a missing `:` or an unclosed quote or bracket)",
        )
    };
    Diagnostic::new(code, "", pos, format!("invalid YAML: {msg}"), help)
}

/// `path` is the node's pointer; children push their segment onto it and truncate it
/// back, so the walk allocates one string per node (the map's key), not two.
fn flatten(
    node: Spanned<Node>,
    path: &mut String,
    key: Option<(u32, u32)>,
    lines: &LineIndex<'_>,
    map: &mut Spans,
) -> Result<serde_json::Value, Vec<Diagnostic>> {
    use serde_json::Value;
    use std::fmt::Write as _;
    let here = raw_of(&node.referenced);
    map.by_pointer
        .insert(path.clone(), RawSpan { value: here, key });
    let len = path.len();
    Ok(match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::UInt(u) => Value::from(u),
        Node::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                // Writing to a String cannot fail.
                let _ = write!(path, "/{i}");
                let child = flatten(item, path, None, lines, map);
                path.truncate(len);
                out.push(child?);
            }
            Value::Array(out)
        }
        Node::Map(entries) => {
            let mut out = serde_json::Map::new();
            let mut errors = Vec::new();
            for (k, v) in entries {
                let kraw = raw_of(&k.referenced);
                let name = match k.value {
                    Node::Str(s) => s,
                    Node::Int(i) => i.to_string(),
                    Node::UInt(u) => u.to_string(),
                    Node::Bool(b) => b.to_string(),
                    Node::Float(f) => f.to_string(),
                    Node::Null => "null".to_owned(),
                    Node::Seq(_) | Node::Map(_) => {
                        errors.push(Diagnostic::new(
                            "complex-key",
                            path.as_str(),
                            pos_at(kraw, lines),
                            "a mapping key must be a plain scalar, not a list or a mapping",
                            "use a plain name as the key",
                        ));
                        continue;
                    }
                };
                path.push('/');
                if name.contains(['~', '/']) {
                    path.push_str(&escape(&name));
                } else {
                    path.push_str(&name);
                }
                let value = flatten(v, path, Some(kraw), lines, map);
                path.truncate(len);
                out.insert(name, value?);
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            Value::Object(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reading and the spanned one give the same value for every text the plain
    /// one accepts: the fast path must not change what a spec means.
    ///
    /// And the direct reading of the parser's events gives serde-saphyr's value for every
    /// text it accepts (it declines what it is not sure of; accepting what serde-saphyr
    /// refuses, or reading it differently, is the failure). Returns whether it accepted.
    fn agree(text: &str) -> bool {
        let plain = serde_saphyr::from_str_with_options::<Plain>(text, options());
        let direct = direct::read(text);
        if let Some(d) = &direct {
            match &plain {
                Ok(Plain(p)) => assert_eq!(p, d, "the direct reading differs on:\n{text}"),
                Err(e) => panic!("only the direct reading accepts:\n{text}\n{e}"),
            }
        }
        let spanned = spanned(text);
        if let Ok(Plain(p)) = plain {
            match spanned {
                Ok((v, _)) => assert_eq!(p, v, "the readings differ on:\n{text}"),
                Err(d) => panic!("only the plain reading accepts:\n{text}\n{d:?}"),
            }
        }
        direct.is_some()
    }

    fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("target") && !p.ends_with(".git") {
                    yaml_files(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }

    #[test]
    fn the_plain_reading_agrees_with_the_spanned_one() {
        let tricky = [
            "a: 1\nb: -2\nc: 18446744073709551615\nd: 170141183460469231731687303715884105727\n",
            "a: 1.0\nb: 1.5e300\nc: .nan\nd: -.inf\ne: .inf\nf: 0x1F\ng: 0o17\n",
            "1: a\n1.0: b\n2.5: c\ntrue: d\nnull: e\n~: f\n-3: g\n",
            "a: &x { b: [1, 2, { c: d }] }\ne: *x\nf:\n  <<: *x\n  g: h\n",
            "'a/b~c': 1\n\"q\": 'x'\nlist:\n  - ~\n  - null\n  - ''\n  - \"1\"\n",
            "a: !!str 12\nb: !!int \"13\"\nc: !!float 1\nd: yes\ne: True\n",
            "a:\nb: |\n  text\n  more\nc: >-\n  folded\n",
            "[1, 2]: x\n",
            "{a: b}: x\n",
            "a: b\na: c\n",
            "- a\n- b\n",
            "plain",
            "a: !!binary aGVsbG8=\n",
            // Numbers as the direct reading spells them out, and the ones it leaves to
            // serde-saphyr.
            "a: 0\nb: -0\nc: 123456789012345678\nd: 1234567890123456789\ne: -17\nf: 007\n",
            "a: +1\nb: 1_000\nc: 0x1F\nd: 0o17\ne: 0b101\nf: 0X1F\ng: 1e999\nh: -1e999\n",
            "a: 1.5\nb: -0.25\nc: .5\nd: -.5\ne: 1.\nf: 1e5\ng: 1E-5\nh: 00.5\ni: -0.0\n",
            "a: 1.0.0\nb: 10:30\nc: 1.2.3-rc.1\nd: 2026-12-07\ne: 1e\nf: .\ng: '-'\nh: +\n",
            "a: .slipway/x\nb: .5e3\nc: .Inf\nd: .infinity\ne: -.NaN\nf: ./x\ng: .\\x\n",
            "a: inf\nb: -inf\nc: nan\nd: NaN\ne: .inf\nf: -.inf\ng: .NaN\nh: +.inf\ni: infinity\n",
            "a: null\nb: Null\nc: NULL\nd: ~\ne:\nf: nULL\ng: True\nh: FALSE\ni: tRUE\nj: yes\nk: off\n",
            "a: 'null'\nb: \"true\"\nc: '12'\nd: \"1.5\"\ne: ''\n",
            // Keys: quoted ones that look like other things, and ones left to serde-saphyr.
            "'1': a\n\"true\": b\n'~': c\n'a': d\n",
            "a: 1\n'a': 2\n",
            "a: 1\n\"a\": 2\n",
            "'<<': {a: 1}\n",
            "? a\n: b\n? [c]\n: d\n",
            "? |\n  block\n: x\n",
            "1.0.0: a\n-inf: b\n.x: c\n",
            // Documents, directives, comments.
            "---\na: 1\n...\n",
            "---\na: 1\n---\nb: 2\n",
            "%YAML 1.2\n---\na: 1\n",
            "%YAML 1.1\n---\na: yes\n",
            "%TAG !e! tag:example.com,2000:\n---\na: 1\n",
            "# only a comment\n",
            "---\n",
            "a: !e 1\n",
            "a: ! 1\n",
            "a: &x 1\nb: 2\n",
            "a: *x\n",
            "a: \"tab\\there \\u263A\"\nb: 'it''s'\nc: plain\n  folded\n\n  again\n",
            "a: >\n  one\n  two\n\n  three\nb: |+\n  keep\n\nc: |-\n  strip\n",
            "a: [1, {b: c}, [d, e], '', ]\nb: {}\nc: []\n",
            "a:\n  - b\n  -\n  - - c\n    - d\n",
            "\u{feff}a: 1\n",
            "a: 1\n\tb: 2\n",
        ];
        for t in tricky {
            agree(t);
        }
        // Runs of comment lines: serde-saphyr's parser refuses more than 32 buffered.
        for n in [10, 31, 32, 33, 40, 200] {
            let comments = "# comment\n".repeat(n);
            agree(&format!("{comments}a: 1\n"));
            agree(&format!("a: 1\n{comments}b: 2\n"));
            agree(&format!("a:\n{comments}  b: 2\n"));
            agree(&format!("a: [1,\n{comments} 2]\n"));
            agree(&format!("a: 1\n{comments}"));
        }
        // Nesting around the direct reading's limit and serde-saphyr's budget.
        for depth in [30, 31, 32, 33, 47, 48, 49, 60] {
            agree(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth)));
            agree(&format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth)));
        }
        // The common shapes are read directly, not all declined.
        for t in [
            "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: big, version: 1.0.0 }\n",
            "a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: 'x'\ng: [1, \"2\"]\nh: { i: j }\nk: |\n  l\n",
            "file: .slipway/n.jsonl\nfrom: 2026-12-20\nmax: 300ms\nm: ./migrations\nv: 2.4.0\n",
        ] {
            assert!(agree(t), "the direct reading declined:\n{t}");
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        yaml_files(&root.join("examples"), &mut files);
        yaml_files(&root.join("crates"), &mut files);
        assert!(files.len() > 10, "found only {files:?}");
        let mut read_directly = Vec::new();
        for (n, f) in files.iter().enumerate() {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            if agree(&text) {
                read_directly.push(f);
            }
            // Damaged copies (of every fourth file, at every 331st character, to keep the
            // debug build's run short): cut short, and YAML punctuation inserted.
            if n % 4 != 0 {
                continue;
            }
            for (i, _) in text.char_indices().step_by(331) {
                agree(&text[..i]);
                for c in [":", "-", "'", "&a ", "*a", "{", "[", "#", "1.0", "~"] {
                    let mut t = text.clone();
                    t.insert_str(i, c);
                    agree(&t);
                }
            }
            // What the direct reading declines or must refuse, more sparsely (the debug
            // build's run stays short).
            for (i, _) in text.char_indices().step_by(997) {
                for c in [
                    "\"", "!x ", "<<: ", "\t", "? ", "0x", ".inf", "\n---\n", "\n# c\n",
                ] {
                    let mut t = text.clone();
                    t.insert_str(i, c);
                    agree(&t);
                }
            }
        }
        // The examples are what users start from: the direct reading must take them.
        let shop = root.join("examples/shop/release.yaml");
        assert!(
            read_directly.contains(&&shop),
            "the direct reading declined {}",
            shop.display()
        );
    }

    #[test]
    fn a_clean_parse_finds_positions_when_asked() {
        let (_, spans) = parse("a:\n  b: 1\n  c: [x, y]\n").expect("parses");
        let c1 = spans.lookup("/a/c/1");
        assert_eq!((c1.value.line, c1.value.column), (3, 10));
        assert_eq!(
            spans.lookup("/a/b").key.map(|k| (k.line, k.column)),
            Some((2, 3))
        );
        assert!(spans.contains("/a/c") && !spans.contains("/a/d"));
        // Unknown pointers fall back to their nearest ancestor.
        assert_eq!(spans.lookup("/a/c/9").value.line, 3);
    }
}
