//! Small textual conventions shared by every crate: sizes like `256Mi`, `{{ vars.x }}`
//! placeholders in endpoints, URLs and database strings, and database URLs with their
//! password masked for messages.

/// Parse a size like `256Mi`, `1Gi`, `500M` or `1024` (bytes). Negative and non-finite
/// values are refused; zero is a valid size (callers that need more say so).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "K" | "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let b = n * mult;
    // Sizes are far below 2^53 bytes; the cast is exact enough for sizes of machines.
    (b.is_finite() && b >= 0.0).then_some(b as u64)
}

/// Fill `{{ vars.x }}` (and `{{vars.x}}`) placeholders. Values that are secret references
/// (`secret://…`) are left unfilled: only install-time code resolves secrets, and it
/// passes the resolved values in.
pub fn fill_vars<'a>(text: &str, vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut t = text.to_owned();
    for (k, v) in vars {
        if v.starts_with("secret://") {
            continue;
        }
        t = t
            .replace(&format!("{{{{ vars.{k} }}}}"), v)
            .replace(&format!("{{{{vars.{k}}}}}"), v);
    }
    t
}

/// Hide the password of a database URL (`postgres://u:secret@h/db` → `postgres://u:***@h/db`),
/// so URLs can appear in errors, logs and reports.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; a password can only sit inside it.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // `password=` may also be passed as a query parameter.
    let tail = match tail.find("password=") {
        Some(i) => {
            let after = &tail[i + "password=".len()..];
            let stop = after.find('&').unwrap_or(after.len());
            format!("{}password=***{}", &tail[..i], &after[stop..])
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{masked}{tail}")
}

/// Decode `%XX` escapes (as in a URL's userinfo); anything else is kept as is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` safe to print on a terminal: control characters (other than newline and tab)
/// and Unicode bidirectional overrides are shown escaped (`\u{1b}`), so a name, a path or
/// an error message taken from input can never move the cursor, recolour the screen or
/// reorder what a reader sees.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The longest environment or service name: one path component with room to spare,
/// and short enough for a table column.
pub const NAME_MAX: usize = 63;

/// Whether `name` is a safe environment or service name: 1 to [`NAME_MAX`] ASCII
/// letters, digits, `-` and `_`, starting with a letter or digit. Such names become
/// directory names under the store (`config/<env>/<service>/`, `process/<env>/`), lock
/// keys and terminal output, so they can never be `..`, hold a `/`, or carry an escape
/// sequence.
pub fn is_safe_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_MAX
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256Mi"), Some(256 * 1024 * 1024));
        assert_eq!(parse_size("1G"), Some(1_000_000_000));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn placeholders_fill_but_secrets_stay_references() {
        let vars = [("host", "db.internal"), ("url", "secret://env/DB")];
        assert_eq!(
            fill_vars("{{ vars.host }}:5432 {{vars.host}} {{ vars.url }}", vars),
            "db.internal:5432 db.internal {{ vars.url }}"
        );
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert_eq!(printable("prod\n\tok"), "prod\n\tok");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn safe_names() {
        for ok in ["prod", "eu-west_1", "A1", &"x".repeat(NAME_MAX)] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "-x",
            "_x",
            "a b",
            "a.b",
            "\u{1b}[2J",
            &"x".repeat(NAME_MAX + 1),
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
    }
}
