//! Placeholders in the queries and URLs of external metric providers (Prometheus, HTTP
//! JSON), rendered with minijinja each time a canary measures.
//!
//! The names follow Flagger's metric templates (`{{ interval }}`, a plain name per fact
//! of the canary) rather than Argo Rollouts' `{{args.x}}`: every value here is known to
//! Slipway itself, so there is nothing for the author to declare or pass.
//!
//! | placeholder          | value |
//! |----------------------|-------|
//! | `{{ service }}`      | the service being deployed |
//! | `{{ version }}`      | the canary's version |
//! | `{{ stable_version }}` | the version serving beside it |
//! | `{{ environment }}`  | the environment's name |
//! | `{{ interval }}`     | the template's measurement interval as a PromQL duration (`1s`, `250ms`) |
//! | `{{ vars.NAME }}`    | the environment's variable `NAME` (a `secret://env/…` one is resolved by `slipway deploy` at measure time, never written into the plan) |
//!
//! An unknown placeholder is a plan-time error ([`check`] from validation), so a typo
//! never reaches a canary; rendering is strict as well.

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// Every placeholder a query or provider URL may use.
pub const PLACEHOLDERS: &[&str] = &[
    "service",
    "version",
    "stable_version",
    "environment",
    "interval",
];

/// The values of the placeholders for one canary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryVars {
    /// Service.
    pub service: String,
    /// Canary version.
    pub version: String,
    /// Stable version (empty when nothing serves beside the canary).
    pub stable_version: String,
    /// Environment.
    pub environment: String,
    /// Measurement interval in ms.
    pub interval_ms: u64,
    /// The environment's variables (secret ones resolved, or absent when unresolved).
    pub vars: BTreeMap<String, String>,
}

impl QueryVars {
    fn context(&self) -> serde_json::Value {
        serde_json::json!({
            "service": self.service,
            "version": self.version,
            "stable_version": self.stable_version,
            "environment": self.environment,
            "interval": promql_duration(self.interval_ms),
            "vars": self.vars,
        })
    }
}

/// A duration in ms as PromQL writes it: whole seconds as `Ns`, else `Nms`.
pub fn promql_duration(ms: u64) -> String {
    if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn jinja() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Queries are PromQL, JSON pointers and URLs, never HTML.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env
}

/// What is wrong with a query or URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryProblem {
    /// Not a valid template (an unclosed `{{`, a bad expression).
    Syntax(String),
    /// Placeholders that are not in [`PLACEHOLDERS`], sorted.
    Unknown(Vec<String>),
}

/// Check a template without rendering it: syntax, then every placeholder it reads
/// (`vars.NAME` must name one of `known_vars`).
pub fn check(text: &str, known_vars: &[&str]) -> Result<(), QueryProblem> {
    let env = jinja();
    let tmpl = env
        .template_from_str(text)
        .map_err(|e| QueryProblem::Syntax(syntax_message(&e)))?;
    let globals: Vec<String> = env.globals().map(|(n, _)| n.to_owned()).collect();
    let mut unknown: Vec<String> = tmpl
        .undeclared_variables(true)
        .into_iter()
        .filter(|v| {
            let (root, rest) = v.split_once('.').unwrap_or((v, ""));
            let known = match root {
                "vars" => known_vars.contains(&rest.split('.').next().unwrap_or_default()),
                _ => PLACEHOLDERS.contains(&root) || globals.iter().any(|g| g == root),
            };
            !known
        })
        .collect();
    unknown.sort();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(QueryProblem::Unknown(unknown))
    }
}

/// Render a template with the canary's values. Errors name the problem, for the
/// measurement's detail (validation has refused what it can see before).
pub fn render(text: &str, vars: &QueryVars) -> Result<String, String> {
    let env = jinja();
    let tmpl = env
        .template_from_str(text)
        .map_err(|e| format!("invalid placeholder syntax: {}", syntax_message(&e)))?;
    tmpl.render(minijinja::Value::from(minijinja::value::Serde(
        vars.context(),
    )))
    .map_err(|e| format!("cannot fill the placeholders: {}", syntax_message(&e)))
}

/// The metric names a PromQL query selects (`rate(x_total{a="b"}[5m])` → `x_total`), in
/// order of first use, placeholders and label matchers skipped.
///
/// Not a PromQL parser: Prometheus parses the query itself and refuses a bad one as an
/// error answer. This only finds the names, so that a query with no sample *yet* (a canary
/// query before the canary exists) can still be proven to select series that exist
/// (`count({__name__="x_total"})`): it skips strings, `{…}` (matchers and placeholders),
/// `[…]` (ranges), numbers and durations, functions (a name followed by `(`), keywords,
/// and the label lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
pub fn promql_metric_names(query: &str) -> Vec<String> {
    // Operators, modifiers and the aggregation operators (reserved: `sum by (x) (…)`
    // puts a label list between the name and its parenthesis).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = query.chars().collect();
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    // Skip to after the bracket matching the one at `i`.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(q) if c == '\\' && q != '`' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i + 1;
                    }
                }
                None => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' && c != '`' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '_'))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next = chars.get(j).copied();
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) && next == Some('(') {
                i = skip_group(j, '(', ')');
            } else if next == Some('(') || KEYWORDS.contains(&lower.as_str()) {
                // A function, or an operator word.
            } else if !names.contains(&word) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn syntax_message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{} ({d})", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> QueryVars {
        QueryVars {
            service: "api".into(),
            version: "2.0.0".into(),
            stable_version: "1.0.0".into(),
            environment: "prod".into(),
            interval_ms: 250,
            vars: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
        }
    }

    #[test]
    fn promql_label_braces_and_placeholders_render_together() {
        let q = r#"sum(rate(http_requests_total{service="{{ service }}",version="{{version}}",code=~"5..",region="{{ vars.region }}"}[{{ interval }}])) / sum(rate(http_requests_total{service="{{ service }}",version!="{{ stable_version }}"}[1m]))"#;
        assert_eq!(check(q, &["region"]), Ok(()));
        assert_eq!(
            render(q, &vars()).unwrap(),
            r#"sum(rate(http_requests_total{service="api",version="2.0.0",code=~"5..",region="eu"}[250ms])) / sum(rate(http_requests_total{service="api",version!="1.0.0"}[1m]))"#
        );
        assert_eq!(promql_duration(2000), "2s");
    }

    #[test]
    fn the_metric_names_of_a_query_skip_matchers_functions_and_label_lists() {
        let q = r#"(sum(rate(slipway_proxy_requests_total{service="{{ service }}",version="canary",class=~"5xx|proxy_error"}[5s])) / sum by (service) (rate(slipway_proxy_requests_total{service="{{ service }}"}[{{ interval }}] offset 1m))) and on(job) (sum(increase(http_errors:rate5m{a="x{y}"}[5s])) >= 20) or up"#;
        assert_eq!(
            promql_metric_names(q),
            vec!["slipway_proxy_requests_total", "http_errors:rate5m", "up"]
        );
        assert_eq!(
            promql_metric_names("histogram_quantile(0.99, sum by (le) (rate(req_bucket[1m])))"),
            vec!["req_bucket"]
        );
        assert_eq!(promql_metric_names("1 + 2.5e3"), Vec::<String>::new());
        assert_eq!(
            promql_metric_names("{__name__=\"x\"}"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unknown_placeholders_are_named_all_at_once() {
        assert_eq!(
            check(
                "x{a=\"{{ servce }}\",b=\"{{ args.version }}\",c=\"{{ vars.regio }}\"}",
                &["region"]
            ),
            Err(QueryProblem::Unknown(vec![
                "args.version".into(),
                "servce".into(),
                "vars.regio".into()
            ]))
        );
        assert!(matches!(
            check("x{{ service", &[]),
            Err(QueryProblem::Syntax(_))
        ));
        assert!(render("{{ nope }}", &vars()).is_err());
        // A variable not resolved (an unset secret) is an error, never an empty string.
        assert!(render("{{ vars.password }}", &vars()).is_err());
    }
}
