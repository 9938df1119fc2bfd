//! Durations as written in specs: `90s`, `5m`, `1h30m`, `300ms`.
//!
//! jiff's "friendly" format does the parsing; we only refuse what makes no sense in a spec
//! (negative, calendar units, zero where a positive time is needed is the caller's call).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// A duration field of a spec or admin policy, kept as the author wrote it: plans, digests
// and diagnostics show that text, and `get` is the one way to read it as a `Duration`.
// Serialised as the plain string, so plan digests are what they were when these fields were
// `String`s. Deserialising never refuses the text: the validator reports a bad duration with
// its file, line and fix (`invalid-duration`), which a serde error could not. The doc comment
// below is what editors show from the JSON schema.
/// A duration such as `90s`, `5m`, `1h30m` or `300ms`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct SpecDuration(String);

impl SpecDuration {
    /// The duration, or why the text is not one.
    pub fn get(&self) -> Result<Duration, String> {
        parse_duration(&self.0)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SpecDuration {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SpecDuration {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<String> for SpecDuration {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<Duration> for SpecDuration {
    fn from(d: Duration) -> Self {
        Self(format_duration(d))
    }
}

/// Parse a spec duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let d: jiff::SignedDuration = t
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    if d.is_negative() {
        return Err(format!("`{text}` is negative"));
    }
    Duration::try_from(d).map_err(|_| format!("`{text}` is out of range"))
}

/// Format a duration the way specs write them.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_duration_is_its_text_in_json_and_reads_as_a_duration() {
        let d: SpecDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert_eq!(d.get().unwrap(), Duration::from_secs(5400));
        let bad: SpecDuration = serde_json::from_str("\"soon\"").unwrap();
        assert!(bad.get().unwrap_err().contains("`soon` is not a duration"));
        assert_eq!(
            SpecDuration::from(Duration::from_millis(300)).as_str(),
            "300ms"
        );
    }

    #[test]
    fn parses_spec_durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("five minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["90s", "5m", "1h30m", "300ms"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
