//! Durations as written in specs: `90s`, `5m`, `1h30m`, `300ms`.
//!
//! jiff's "friendly" format does the parsing; we only refuse what makes no sense in a spec
//! (negative, calendar units, zero where a positive time is needed is the caller's call).

use std::time::Duration;

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
