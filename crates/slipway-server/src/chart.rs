//! The run page's canary chart: weight, error rate and p99 latency per version over time,
//! as server-rendered SVG from the journal's measurements
//! ([`slipway_ops::console::canary_series`]). No front-end framework: the page embeds the
//! SVG, and its script fetches `GET /runs/{id}/chart.svg` again when the event stream
//! journals a weight change or a measurement.
//!
//! Every point is a `<circle>` carrying what it plots (`data-series`, `data-role`,
//! `data-version`, `data-seq`, `data-value`), so a test — or a person — reads the values
//! from the chart itself. The only text from outside is versions and step names, escaped;
//! everything else is numbers this module formats. Colours are presentation attributes,
//! not `style`, so the page's Content-Security-Policy (no inline style) allows them.

use std::fmt::Write as _;

use slipway_ops::console::{CanaryPoint, CanarySeries};

/// Width and height of one panel, and the margins around its plot area.
const WIDTH: f64 = 720.0;
const PANEL: f64 = 130.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 24.0;
const GAP: f64 = 34.0;

const CANARY: &str = "#d4730b";
const STABLE: &str = "#1f6feb";

/// The versions a chart labels its series with.
pub(crate) struct Versions {
    /// The version the canary deploys.
    pub canary: String,
    /// The version it replaces, when the run's records say.
    pub stable: Option<String>,
}

/// XML text/attribute escaping.
pub(crate) fn esc(s: &str) -> String {
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

/// One plotted value: when (seconds from the first point), what, whose.
struct Value {
    seq: i64,
    t: f64,
    v: f64,
}

/// One panel: a title, a unit formatter, and its canary and stable values.
struct Panel<'a> {
    series: &'a str,
    title: &'a str,
    canary: Vec<Value>,
    stable: Vec<Value>,
    /// The y range's floor for the top (so a flat zero line is not the whole panel).
    min_top: f64,
    label: fn(f64) -> String,
}

/// The chart of a run's canaries (one block per canary step), or a placeholder saying
/// none was measured yet.
pub(crate) fn render(series: &[CanarySeries], versions: &dyn Fn(&str) -> Versions) -> String {
    let blocks: Vec<&CanarySeries> = series.iter().filter(|s| !s.points.is_empty()).collect();
    let per_block = TOP + 3.0 * (PANEL + GAP) + 10.0;
    let height = if blocks.is_empty() {
        60.0
    } else {
        per_block * blocks.len() as f64
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"canary-chart\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"canary weight, error rate and p99 per version over time\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    if blocks.is_empty() {
        svg.push_str(
            "<text x=\"10\" y=\"30\" fill=\"#57606a\">No canary weight or measurement journaled yet.</text></svg>",
        );
        return svg;
    }
    for (i, s) in blocks.iter().enumerate() {
        let service = s.step.strip_prefix("deploy-").unwrap_or(&s.step);
        let v = versions(service);
        block(&mut svg, s, &v, per_block * i as f64);
    }
    svg.push_str("</svg>");
    svg
}

fn block(svg: &mut String, s: &CanarySeries, v: &Versions, y0: f64) {
    let first = s.points.first().map_or(0, |p| p.at.as_millisecond());
    let t = |p: &CanaryPoint| (p.at.as_millisecond() - first) as f64 / 1000.0;
    let mut weight = Panel {
        series: "weight",
        title: "traffic weight (%)",
        canary: Vec::new(),
        stable: Vec::new(),
        min_top: 100.0,
        label: |x| format!("{x:.0}%"),
    };
    let mut errors = Panel {
        series: "error_rate",
        title: "error rate (%)",
        canary: Vec::new(),
        stable: Vec::new(),
        min_top: 0.05,
        label: |x| format!("{:.1}%", x * 100.0),
    };
    let mut p99 = Panel {
        series: "p99_ms",
        title: "p99 latency (ms)",
        canary: Vec::new(),
        stable: Vec::new(),
        min_top: 10.0,
        label: |x| format!("{x:.0}"),
    };
    for p in &s.points {
        let (seq, t) = (p.seq, t(p));
        let w = f64::from(p.weight);
        weight.canary.push(Value { seq, t, v: w });
        weight.stable.push(Value {
            seq,
            t,
            v: 100.0 - w,
        });
        if let Some(m) = &p.measured {
            let add = |panel: &mut Panel<'_>, c: Option<f64>, st: Option<f64>| {
                if let Some(v) = c {
                    panel.canary.push(Value { seq, t, v });
                }
                if let Some(v) = st {
                    panel.stable.push(Value { seq, t, v });
                }
            };
            add(&mut errors, m.canary_error_rate, m.stable_error_rate);
            add(&mut p99, m.canary_p99_ms, m.stable_p99_ms);
        }
    }
    let span = s.points.iter().map(&t).fold(1.0_f64, f64::max);
    let stable_label = v.stable.as_deref().unwrap_or("stable");
    let _ = write!(
        svg,
        "<g class=\"canary\" data-step=\"{step}\" transform=\"translate(0 {y0})\"><text x=\"{LEFT}\" y=\"14\" font-weight=\"bold\">{step}: <tspan fill=\"{CANARY}\">■ canary {canary}</tspan> <tspan fill=\"{STABLE}\">■ stable {stable}</tspan> · {span:.0} s</text>",
        step = esc(&s.step),
        canary = esc(&v.canary),
        stable = esc(stable_label),
    );
    for (i, panel) in [weight, errors, p99].iter().enumerate() {
        draw(
            svg,
            panel,
            TOP + i as f64 * (PANEL + GAP),
            span,
            &v.canary,
            stable_label,
        );
    }
    svg.push_str("</g>");
}

fn draw(svg: &mut String, panel: &Panel<'_>, y0: f64, span: f64, canary: &str, stable: &str) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let top = panel
        .canary
        .iter()
        .chain(&panel.stable)
        .map(|v| v.v)
        .fold(panel.min_top, f64::max);
    let x = |t: f64| LEFT + t / span * plot_w;
    let y = |v: f64| y0 + PANEL - (v / top).clamp(0.0, 1.0) * PANEL;
    let _ = write!(
        svg,
        "<g class=\"panel\" data-series=\"{series}\"><text x=\"{LEFT}\" y=\"{ty}\" fill=\"#57606a\">{title}</text><rect x=\"{LEFT}\" y=\"{y0}\" width=\"{plot_w}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#d0d7de\"/><text x=\"{lx}\" y=\"{yt}\" text-anchor=\"end\" fill=\"#57606a\">{top_label}</text><text x=\"{lx}\" y=\"{yb}\" text-anchor=\"end\" fill=\"#57606a\">{zero}</text>",
        series = panel.series,
        ty = y0 - 4.0,
        title = esc(panel.title),
        lx = LEFT - 4.0,
        yt = y0 + 10.0,
        yb = y0 + PANEL,
        top_label = esc(&(panel.label)(top)),
        zero = esc(&(panel.label)(0.0)),
    );
    for (role, values, colour, version) in [
        ("stable", &panel.stable, STABLE, stable),
        ("canary", &panel.canary, CANARY, canary),
    ] {
        if values.len() > 1 {
            let pts: Vec<String> = values
                .iter()
                .map(|v| format!("{:.1},{:.1}", x(v.t), y(v.v)))
                .collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
        for v in values.iter() {
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\" data-series=\"{series}\" data-role=\"{role}\" data-version=\"{version}\" data-seq=\"{seq}\" data-value=\"{value}\"><title>{role} {version} at +{t:.1} s: {shown}</title></circle>",
                x(v.t),
                y(v.v),
                series = panel.series,
                version = esc(version),
                seq = v.seq,
                value = v.v,
                t = v.t,
                shown = esc(&(panel.label)(v.v)),
            );
        }
    }
    svg.push_str("</g>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_ops::console::Measured;

    #[test]
    fn every_point_is_a_circle_with_its_value_and_text_is_escaped() {
        let at = |s| jiff::Timestamp::from_second(1_700_000_000_i64 + s).unwrap();
        let series = vec![CanarySeries {
            step: "deploy-<api>".into(),
            points: vec![
                CanaryPoint {
                    seq: 3,
                    at: at(0),
                    weight: 20,
                    measured: None,
                },
                CanaryPoint {
                    seq: 4,
                    at: at(2),
                    weight: 20,
                    measured: Some(Measured {
                        canary_error_rate: Some(0.125),
                        stable_error_rate: Some(0.0),
                        canary_p99_ms: Some(42.5),
                        stable_p99_ms: None,
                        requests: (8, 30),
                    }),
                },
            ],
        }];
        let svg = render(&series, &|_| Versions {
            canary: "1.1.0\"x".into(),
            stable: Some("1.0.0".into()),
        });
        assert!(svg.contains("data-step=\"deploy-&lt;api&gt;\""), "{svg}");
        assert!(svg.contains("data-version=\"1.1.0&quot;x\""), "{svg}");
        assert!(svg.contains("data-series=\"error_rate\" data-role=\"canary\" data-version=\"1.1.0&quot;x\" data-seq=\"4\" data-value=\"0.125\""), "{svg}");
        assert!(svg.contains("data-series=\"p99_ms\" data-role=\"canary\" data-version=\"1.1.0&quot;x\" data-seq=\"4\" data-value=\"42.5\""), "{svg}");
        assert!(svg.contains("data-series=\"weight\" data-role=\"stable\" data-version=\"1.0.0\" data-seq=\"3\" data-value=\"80\""), "{svg}");
        // 2 weight points × 2 roles, 2 error rates, 1 p99.
        assert_eq!(svg.matches("<circle").count(), 7, "{svg}");
        assert!(!svg.contains("<api>"));
    }
}
