//! Small helpers for the hand-written HTML and SVG of the reports: escaping and a page
//! shell. No JavaScript, no external assets, so a report opens anywhere and archives as
//! one file.

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete page around `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\n\
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}}\n\
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}\n\
th{{background:#f3f3f3}}.bad{{color:#b00020}}.good{{color:#1b5e20}}svg text{{font-size:11px}}\n\
code{{background:#f5f5f5;padding:0 .2rem}}\n</style></head><body>\n{}\n</body></html>\n",
        esc(title),
        body
    )
}
