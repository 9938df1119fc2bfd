//! Cron expressions of deployment windows and backup schedules: standard five-field cron
//! (minute hour day-of-month month day-of-week, Vixie/cronie syntax with croner's `L`, `#`
//! and `W`), parsed by croner with seconds and years disallowed.
//!
//! Why five fields only: croner also reads six- and seven-field patterns, *seconds first*,
//! so `0 9 * * 1 0` (someone adding a field at the end) would silently mean "at second 0
//! of minute 9 of every hour, Sundays in January". A window is a time of day, not a second;
//! refusing is the only reading that cannot surprise.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Parse a five-field cron expression (or an `@daily`-style nickname). The error is a
/// sentence naming what is wrong; callers add the field and a fix.
pub fn parse(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if !text.trim_start().starts_with('@') && (fields == 6 || fields == 7) {
        return Err(format!(
            "`{text}` has {fields} fields: Slipway takes standard five-field cron (no seconds, no year) and refuses more rather than read the first field as seconds"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("`{text}` is not a cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_and_nicknames_parse() {
        for ok in [
            "0 9 * * MON-THU",
            "*/15 8-17 * * 1-5",
            "0 9 L * *",
            "0 9 * * 5#3",
            "@daily",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok).err());
        }
    }

    #[test]
    fn six_and_seven_fields_are_refused_with_the_shape() {
        for bad in ["0 9 * * 1 0", "0 0 9 * * 1", "0 0 9 * * 1 2027"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("fields") && e.contains("seconds"), "{e}");
        }
        assert!(parse("0 9 * *").is_err());
        assert!(parse("61 9 * * *").is_err());
    }
}
