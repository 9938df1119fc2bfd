//! Monitoring: "is the canary observable?" The metrics the analysis will use must exist
//! and have recent samples. For the built-in proxy (and any Prometheus text endpoint) the
//! check scrapes the counter twice, a window apart: the series must exist and its request
//! count must grow within the window. A release whose analysis would see no data fails
//! here instead of passing silently later.

use std::time::{Duration, Instant};

use crate::{Outcome, Verdict};

/// The sum of every sample of `metric` (all label sets) in Prometheus text, or None when
/// no such series exists.
pub fn sum_series(text: &str, metric: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        // The name must end here: `x_total` is not `x_total_created`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit_once('}').map_or(rest, |(_, v)| v);
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

/// Scrape `url` twice, `window` apart, and judge whether `metric` exists and grew.
pub async fn check(url: &str, metric: &str, window: Duration, timeout: Duration) -> Verdict {
    let started = Instant::now();
    let target = format!("{metric} @ {url}");
    let expected = format!("series exists, > 0 requests in {} ms", window.as_millis());
    let scrape = || async {
        let a = crate::http::get(url, timeout).await?;
        if a.status != 200 {
            return Err(format!("HTTP {}", a.status));
        }
        Ok(sum_series(&a.body, metric))
    };
    let first = match scrape().await {
        Ok(v) => v,
        Err(e) => {
            return Verdict::new(
                "monitoring",
                target,
                Outcome::Fail,
                format!("cannot scrape: {e}"),
                expected,
                started,
            )
            .hint(
                "the metrics endpoint does not answer: is the proxy (or exporter) running there?",
            );
        }
    };
    let Some(first) = first else {
        return Verdict::new("monitoring", target, Outcome::Fail, "no such series", expected, started)
            .hint(format!("nothing exports `{metric}` there: check the metric name and the provider the analysis uses"));
    };
    tokio::time::sleep(window).await;
    match scrape().await {
        Ok(Some(second)) if second > first => Verdict::new(
            "monitoring",
            target,
            Outcome::Pass,
            format!("{} requests in {} ms", second - first, window.as_millis()),
            expected,
            started,
        ),
        Ok(Some(second)) => Verdict::new(
            "monitoring",
            target,
            Outcome::Fail,
            format!("0 requests in {} ms (counter at {second})", window.as_millis()),
            expected,
            started,
        )
        .hint("no traffic reaches the service: the canary analysis would be inconclusive; send traffic (or lower min_samples) first"),
        Ok(None) => Verdict::new("monitoring", target, Outcome::Fail, "the series disappeared", expected, started),
        Err(e) => Verdict::new("monitoring", target, Outcome::Fail, format!("cannot scrape: {e}"), expected, started),
    }
}
