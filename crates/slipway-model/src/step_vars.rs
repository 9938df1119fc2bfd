//! `{{ vars.NAME }}` in a step's commands (`run`, `creates`, `unless`, `undo`): filled at
//! plan time with the environment's variable, so the plan shows — and its digest and its
//! approvals cover — the exact command that runs in that environment, as config templates
//! are rendered per environment. Undefined is an error, never literal text reaching the
//! shell.
//!
//! Why not minijinja here, as for config: a step command is shell, and shell is full of
//! `{#` (`${#array[@]}` opens a minijinja comment) and `{%`. So only `{{ … }}` is read, and
//! inside it only `vars.NAME`; `{{ '{{' }}` and `{{ '}}' }}` write the braces themselves.
//! A Go template handed to a tool (`docker inspect -f '{{.State.Running}}'`) starts with a
//! dot and is left as written.
//!
//! A variable whose value is a secret reference (`secret://env/X`) is never written into a
//! plan, so it cannot be filled: validation refuses it and says what to write instead
//! (`"$X"`: exec steps inherit `slipway`'s environment, where the secret is).

use std::collections::BTreeMap;

use crate::spec::Scalar;

/// One `{{ … }}` of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{ vars.NAME }}`.
    Var(String),
    /// `{{ '{{' }}` or `{{ '}}' }}`: the braces themselves.
    Literal(&'static str),
    /// `{{.Go.Template}}`: left as written.
    Foreign,
}

/// What is wrong with a command's placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A `{{` without its `}}`.
    Unclosed,
    /// `{{ something }}` that is not `vars.NAME`.
    Unknown(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unclosed => f.write_str("a `{{` is not closed by `}}`"),
            Problem::Unknown(e) => write!(
                f,
                "`{{{{ {e} }}}}` is not a placeholder Slipway fills in a step command (only `{{{{ vars.NAME }}}}`)"
            ),
        }
    }
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The pieces of `text`: literal text and placeholders, or the first problem.
fn pieces(text: &str) -> Result<Vec<(String, Option<Placeholder>)>, Problem> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let (before, after) = rest.split_at(open);
        let inner_and_rest = &after[2..];
        // A quoted literal (`{{ '}}' }}`) may hold the closing braces themselves.
        let body = inner_and_rest.trim_start();
        let skip = inner_and_rest.len() - body.len();
        let from = match body.chars().next() {
            Some(q @ ('\'' | '"')) => body[1..].find(q).map_or(0, |end| skip + end + 2),
            _ => 0,
        };
        let Some(close) = inner_and_rest[from..].find("}}").map(|c| c + from) else {
            return Err(Problem::Unclosed);
        };
        let raw = &inner_and_rest[..close];
        let inner = raw.trim();
        let p = if inner.starts_with('.') {
            Placeholder::Foreign
        } else if inner == "'{{'" || inner == "\"{{\"" {
            Placeholder::Literal("{{")
        } else if inner == "'}}'" || inner == "\"}}\"" {
            Placeholder::Literal("}}")
        } else if let Some(name) = inner.strip_prefix("vars.").filter(|n| is_ident(n)) {
            Placeholder::Var(name.to_owned())
        } else {
            return Err(Problem::Unknown(inner.to_owned()));
        };
        let text = if p == Placeholder::Foreign {
            format!("{before}{{{{{raw}}}}}")
        } else {
            before.to_owned()
        };
        out.push((text, Some(p)));
        rest = &inner_and_rest[close + 2..];
    }
    out.push((rest.to_owned(), None));
    Ok(out)
}

/// The variables a command uses, or the first problem with its placeholders.
pub fn variables(text: &str) -> Result<Vec<String>, Problem> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|(_, p)| match p {
            Some(Placeholder::Var(v)) => Some(v),
            _ => None,
        })
        .collect())
}

/// Why a command cannot be filled in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// Malformed or unknown placeholders.
    Placeholder(Problem),
    /// Variables the environment does not declare.
    Undefined(Vec<String>),
    /// Variables whose value is a secret reference.
    Secret(Vec<String>),
}

/// `text` with every `{{ vars.NAME }}` replaced by the environment's value.
pub fn render(text: &str, vars: &BTreeMap<String, Scalar>) -> Result<String, RenderError> {
    if !text.contains("{{") {
        return Ok(text.to_owned());
    }
    let pieces = pieces(text).map_err(RenderError::Placeholder)?;
    let mut out = String::new();
    let (mut undefined, mut secret) = (Vec::new(), Vec::new());
    for (literal, p) in pieces {
        out.push_str(&literal);
        match p {
            Some(Placeholder::Var(name)) => match vars.get(&name) {
                Some(v) if v.as_str().starts_with("secret://") => secret.push(name),
                Some(v) => out.push_str(v.as_str()),
                None => undefined.push(name),
            },
            Some(Placeholder::Literal(s)) => out.push_str(s),
            Some(Placeholder::Foreign) | None => {}
        }
    }
    if !secret.is_empty() {
        return Err(RenderError::Secret(secret));
    }
    if !undefined.is_empty() {
        return Err(RenderError::Undefined(undefined));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, Scalar> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Scalar((*v).to_owned())))
            .collect()
    }

    #[test]
    fn fills_vars_and_leaves_shell_and_go_templates_alone() {
        let v = vars(&[("dir", "/srv/shop"), ("n", "3")]);
        assert_eq!(
            render(
                "mkdir -p {{ vars.dir }} && echo {{vars.n}} ${#a[@]} {% x",
                &v
            )
            .unwrap(),
            "mkdir -p /srv/shop && echo 3 ${#a[@]} {% x"
        );
        assert_eq!(
            render("docker inspect -f '{{.State.Running}}' {{ vars.dir }}", &v).unwrap(),
            "docker inspect -f '{{.State.Running}}' /srv/shop"
        );
        assert_eq!(
            render("echo {{ '{{' }}x{{ '}}' }}", &v).unwrap(),
            "echo {{x}}"
        );
    }

    #[test]
    fn undefined_unknown_unclosed_and_secret_are_errors() {
        let v = vars(&[("pw", "secret://env/DB_PW")]);
        assert_eq!(
            render("echo {{ vars.nope }}", &v),
            Err(RenderError::Undefined(vec!["nope".into()]))
        );
        assert_eq!(
            render("echo {{ var.x }}", &v),
            Err(RenderError::Placeholder(Problem::Unknown("var.x".into())))
        );
        assert_eq!(
            render("echo {{ vars.x", &v),
            Err(RenderError::Placeholder(Problem::Unclosed))
        );
        assert_eq!(
            render("psql -W {{ vars.pw }}", &v),
            Err(RenderError::Secret(vec!["pw".into()]))
        );
    }
}
