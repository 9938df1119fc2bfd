//! Smoke checks from the spec (`checks:`): `http` (status, body contains), `tcp`,
//! `command` (exit 0) and `sql` (the first column of the first row equals), run against a
//! given instance. A `{base}` in an http URL or tcp address is replaced by the base
//! address given (the isolated candidate), so one spec serves every instance.

use std::time::{Duration, Instant};

use slipway_model::spec::{Check, Scalar};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::{Outcome, Verdict};

/// Default check timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

fn scalar_text(s: &Scalar) -> String {
    s.as_str().to_owned()
}

/// Run one declared check. `base` replaces `{base}` in URLs and addresses.
pub async fn run(name: &str, check: &Check, base: Option<&str>, timeout: Duration) -> Verdict {
    let started = Instant::now();
    let fill = |s: &str| match base {
        Some(b) => s.replace("{base}", b),
        None => s.to_owned(),
    };
    let check_name = format!("smoke.{name}");
    if let Some(h) = &check.http {
        let url = fill(&h.url);
        let want = h.status.unwrap_or(200);
        let expected = match &h.contains {
            Some(c) => format!("HTTP {want}, body contains {c:?}"),
            None => format!("HTTP {want}"),
        };
        return match crate::http::get(&url, timeout).await {
            Ok(a) if a.status != want => Verdict::new(
                &check_name,
                &url,
                Outcome::Fail,
                format!("HTTP {}", a.status),
                expected,
                started,
            )
            .hint("the candidate answers with another status than the spec expects"),
            Ok(a) => match &h.contains {
                Some(c) if !a.body.contains(c.as_str()) => {
                    let excerpt: String = a.body.chars().take(60).collect();
                    Verdict::new(
                        &check_name,
                        &url,
                        Outcome::Fail,
                        format!("HTTP {}, body {excerpt:?}", a.status),
                        expected,
                        started,
                    )
                    .hint(format!("the body lacks {c:?}"))
                }
                _ => Verdict::new(
                    &check_name,
                    &url,
                    Outcome::Pass,
                    format!("HTTP {}", a.status),
                    expected,
                    started,
                ),
            },
            Err(e) => Verdict::new(&check_name, &url, Outcome::Fail, e, expected, started)
                .hint("the candidate does not answer; is it running and listening there?"),
        };
    }
    if let Some(t) = &check.tcp {
        let mut v = crate::reach::probe(&fill(t), timeout).await;
        v.check = check_name;
        return v;
    }
    if let Some(cmd) = &check.command {
        let out = slipway_stdx::tokio_command("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        return match tokio::time::timeout(timeout, out).await {
            Err(_) => Verdict::new(
                &check_name,
                cmd,
                Outcome::Fail,
                format!("still running after {} ms", timeout.as_millis()),
                "exit 0",
                started,
            ),
            Ok(Err(e)) => Verdict::new(
                &check_name,
                cmd,
                Outcome::Fail,
                format!("could not start: {e}"),
                "exit 0",
                started,
            ),
            Ok(Ok(o)) if o.status.success() => {
                Verdict::new(&check_name, cmd, Outcome::Pass, "exit 0", "exit 0", started)
            }
            Ok(Ok(o)) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                Verdict::new(
                    &check_name,
                    cmd,
                    Outcome::Fail,
                    format!("exit {} {last}", o.status.code().unwrap_or(-1)),
                    "exit 0",
                    started,
                )
            }
        };
    }
    if let Some(s) = &check.sql {
        let target = crate::accounts::mask(&s.database);
        let expected = s
            .equals
            .as_ref()
            .map_or_else(|| "a row".to_owned(), |e| format!("= {}", scalar_text(e)));
        let got = tokio::time::timeout(timeout, async {
            let mut c = PgConnection::connect(&s.database)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let row = sqlx::query(sqlx::AssertSqlSafe(s.query.clone()))
                .fetch_optional(&mut c)
                .await
                .map_err(|e| format!("query: {e}"))?;
            let _ = c.close().await;
            Ok::<_, String>(row.map(|r| {
                // Any column type: read it as text through PostgreSQL's own cast is not
                // possible after the fact, so try the common types in turn.
                r.try_get::<String, _>(0)
                    .or_else(|_| r.try_get::<i64, _>(0).map(|v| v.to_string()))
                    .or_else(|_| r.try_get::<i32, _>(0).map(|v| v.to_string()))
                    .or_else(|_| r.try_get::<bool, _>(0).map(|v| v.to_string()))
                    .or_else(|_| r.try_get::<f64, _>(0).map(|v| v.to_string()))
                    .unwrap_or_else(|_| "<unreadable type; cast the column to text>".to_owned())
            }))
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        return match got {
            Err(e) => Verdict::new(&check_name, target, Outcome::Fail, e, expected, started),
            Ok(None) => Verdict::new(
                &check_name,
                target,
                Outcome::Fail,
                "no row",
                expected,
                started,
            ),
            Ok(Some(v)) => match &s.equals {
                Some(e) if scalar_text(e) != v => {
                    Verdict::new(&check_name, target, Outcome::Fail, v, expected, started)
                        .hint("the query's first value differs from `equals`")
                }
                _ => Verdict::new(&check_name, target, Outcome::Pass, v, expected, started),
            },
        };
    }
    Verdict::new(
        &check_name,
        "",
        Outcome::Fail,
        "no check kind set",
        "one of http, tcp, command, sql",
        started,
    )
}
