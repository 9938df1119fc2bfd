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
}
