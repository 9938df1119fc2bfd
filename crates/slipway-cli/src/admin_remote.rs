//! `slipway access …` and `slipway policy …`: what they print (shared by the embedded mode
//! in `cmd_access`/`cmd_policy` and `--server`), and their `--server` mode — one API call
//! per command with the caller's token (`slipway_server`'s `admin.rs` routes), the server
//! applying the operations layer's rules.

use serde_json::{Value, json};
use slipway_model::exit;
use slipway_ops::access::{Granted, IssuedToken, TokenInfo};
use slipway_ops::policy::Applied;
use slipway_server::client::Client;
use slipway_store::access::{GrantRow, MemberRow, PolicyRow};

use crate::cli_util::path_segment;
use crate::out::{CliError, Output};

pub fn render_granted(out: &Output, g: &Granted) {
    let mut text = format!(
        "grant {}: {} is {} in {}",
        g.grant, g.subject, g.role, g.environment
    );
    if let Some(t) = &g.token {
        text.push_str(&format!(
            "\naccess control is on: every command now acts as the subject of an API token.\ntoken for {} (shown once; store it now, e.g. export SLIPWAY_TOKEN=…): {t}",
            g.subject
        ));
    }
    out.outcome(g, &text);
}

pub fn render_review_opened(out: &Output, review: &str, grants: u64) {
    out.outcome(
        &json!({"review": review, "opened": true, "grants": grants}),
        &format!("access review {review} opened over {grants} grant(s); decide each with `slipway access review decide {review} GRANT confirm|revoke`"),
    );
}

pub fn render_review_decided(out: &Output, review: &str, grant: i64, decision: &str) {
    out.outcome(
        &json!({"review": review, "grant": grant, "decision": decision}),
        &format!("grant {grant}: {decision}"),
    );
}

/// Exit 1 when any grant went unreviewed.
pub fn render_review_closed(out: &Output, review: &str, unreviewed: &[i64]) -> i32 {
    if out.json() {
        out.json_value(&json!({"review": review, "closed": true, "unreviewed": unreviewed}));
    } else {
        for g in unreviewed {
            out.line(&format!("unreviewed: grant {g}"));
        }
        out.line(&format!(
            "access review {review} closed; {} grant(s) unreviewed",
            unreviewed.len()
        ));
    }
    if unreviewed.is_empty() {
        exit::SUCCESS
    } else {
        exit::FAILURE
    }
}

pub fn render_grant_revoked(out: &Output, id: i64) {
    out.outcome(
        &json!({"grant": id, "revoked": true}),
        &format!("grant {id} revoked"),
    );
}

pub fn render_grants(out: &Output, grants: &[GrantRow]) {
    if out.json() {
        out.json_value(&grants);
    } else {
        for g in grants {
            out.line(&format!(
                "{:>4}  {:<28} {:<9} {}",
                g.id, g.subject, g.role, g.environment
            ));
        }
    }
}

pub fn render_member_added(out: &Output, group: &str, user: &str, added: bool) {
    out.outcome(
        &json!({"group": group, "user": user, "added": added}),
        &if added {
            format!("user:{user} is a member of group:{group}")
        } else {
            format!("user:{user} already is a member of group:{group}")
        },
    );
}

pub fn render_member_removed(out: &Output, group: &str, user: &str) {
    out.outcome(
        &json!({"group": group, "user": user, "removed": true}),
        &format!("user:{user} removed from group:{group}"),
    );
}

pub fn render_members(out: &Output, members: &[MemberRow]) {
    if out.json() {
        out.json_value(&members);
    } else {
        for m in members {
            out.line(&format!("group:{:<24} user:{}", m.group, m.user));
        }
    }
}

pub fn render_issued(out: &Output, issued: &IssuedToken) {
    if out.json() {
        // For pipelines that hand the token on (a CI secret): the one time it exists.
        out.json_value(issued);
    } else {
        out.line(&format!(
            "token for {} (shown once; store it now): {}",
            issued.subject, issued.token
        ));
    }
}

pub fn render_token_revoked(out: &Output, id: &str) {
    if out.json() {
        out.json_value(&json!({"id": id, "revoked": true}));
    } else {
        out.line(&format!("token {id} revoked"));
    }
}

pub fn render_tokens(out: &Output, tokens: &[TokenInfo]) {
    if out.json() {
        out.json_value(&tokens);
    } else {
        for t in tokens {
            let used = t
                .last_used_at
                .map_or_else(|| "never used".to_owned(), |u| format!("last used {u}"));
            let revoked = t
                .revoked_at
                .map(|r| format!(", revoked {r}"))
                .unwrap_or_default();
            out.line(&format!("{}  {:<24} {used}{revoked}", t.id, t.subject));
        }
    }
}

pub fn render_applied(out: &Output, applied: &Applied) {
    out.outcome(
        applied,
        &format!(
            "policy v{} applied (sha256 {}) for {}; plans made from now on carry it",
            applied.version,
            applied.digest.get(..12).unwrap_or(&applied.digest),
            applied.environments.join(", ")
        ),
    );
}

pub fn render_policy(out: &Output, versions: &[PolicyRow]) {
    if out.json() {
        out.json_value(&json!({"current": versions.last(), "versions": versions.iter()
            .map(|v| json!({"version": v.version, "digest": v.digest, "applied_by": v.applied_by, "applied_at": v.applied_at}))
            .collect::<Vec<_>>()}));
    } else {
        match versions.last() {
            None => out.line("no policy applied: plans follow their specs alone (an admin applies one with `slipway policy apply -f FILE`)"),
            Some(v) => {
                out.line(&format!(
                    "policy v{} (sha256 {}), applied by {} at {}:",
                    v.version, v.digest, v.applied_by, v.applied_at
                ));
                out.raw(&v.text);
            }
        }
    }
}

/// The server's answer as `T`, or an error naming the server.
fn read<T: serde::de::DeserializeOwned>(c: &Client, v: Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| crate::run_remote::unexpected(c, &e))
}

/// `slipway --server URL access …`.
pub async fn access(
    c: &Client,
    cmd: crate::cmd_access::AccessCommand,
    out: &Output,
) -> Result<i32, CliError> {
    use crate::cmd_access::{
        AccessCommand as A, GroupCommand as G, ReviewCommand as R, TokenCommand as T,
    };
    match cmd {
        A::Whoami(_) => {
            let v = c.get("/access/whoami").await?;
            let user = v["user"].as_str().unwrap_or_default();
            let groups: Vec<&str> = v["groups"]
                .as_array()
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let how = match v["verified"]["token"]["id"].as_str() {
                Some(id) => format!("token {id}"),
                None => v["verified"].to_string(),
            };
            out.outcome(
                &v,
                &format!(
                    "{user} ({how}, verified by {}); groups: {}",
                    c.server(),
                    if groups.is_empty() {
                        "none".to_owned()
                    } else {
                        groups.join(", ")
                    }
                ),
            );
        }
        A::Grant(a) => {
            let (_, v) = c
                .post(
                    "/access/grants",
                    &json!({"subject": a.subject, "role": a.role, "environment": a.env}),
                )
                .await?;
            render_granted(out, &read(c, v)?);
        }
        A::Revoke(a) => {
            c.post(&format!("/access/grants/{}/revoke", a.id), &json!({}))
                .await?;
            render_grant_revoked(out, a.id);
        }
        A::List(_) => {
            let v = c.get("/access/grants").await?;
            render_grants(out, &read::<Vec<GrantRow>>(c, v)?);
        }
        A::Group(G::List(a)) => {
            let path = match &a.group {
                Some(g) => format!("/access/groups?group={}", path_segment(g)),
                None => "/access/groups".to_owned(),
            };
            let v = c.get(&path).await?;
            render_members(out, &read::<Vec<MemberRow>>(c, v)?);
        }
        A::Group(G::Add(a)) => {
            let (_, v) = c
                .post(
                    &format!("/access/groups/{}/members", path_segment(&a.group)),
                    &json!({"user": a.user}),
                )
                .await?;
            render_member_added(out, &a.group, &a.user, v["added"] == json!(true));
        }
        A::Group(G::Remove(a)) => {
            c.post(
                &format!(
                    "/access/groups/{}/members/{}/remove",
                    path_segment(&a.group),
                    path_segment(&a.user)
                ),
                &json!({}),
            )
            .await?;
            render_member_removed(out, &a.group, &a.user);
        }
        A::Token(T::Create(a)) => {
            let (_, v) = c.post("/access/tokens", &json!({"user": a.user})).await?;
            render_issued(out, &read(c, v)?);
        }
        A::Token(T::Revoke(a)) => {
            c.post(
                &format!("/access/tokens/{}/revoke", path_segment(&a.id)),
                &json!({}),
            )
            .await?;
            render_token_revoked(out, &a.id);
        }
        A::Token(T::List(_)) => {
            let v = c.get("/access/tokens").await?;
            render_tokens(out, &read::<Vec<TokenInfo>>(c, v)?);
        }
        A::Review(R::Start(a)) => {
            let (_, v) = c
                .post(
                    &format!("/access/reviews/{}", path_segment(&a.review)),
                    &json!({}),
                )
                .await?;
            render_review_opened(out, &a.review, v["grants"].as_u64().unwrap_or(0));
        }
        A::Review(R::Decide(a)) => {
            c.post(
                &format!(
                    "/access/reviews/{}/grants/{}",
                    path_segment(&a.review),
                    a.grant
                ),
                &json!({"decision": a.decision}),
            )
            .await?;
            render_review_decided(out, &a.review, a.grant, &a.decision);
        }
        A::Review(R::Close(a)) => {
            let (_, v) = c
                .post(
                    &format!("/access/reviews/{}/close", path_segment(&a.review)),
                    &json!({}),
                )
                .await?;
            let unreviewed: Vec<i64> = read(c, v["unreviewed"].clone())?;
            return Ok(render_review_closed(out, &a.review, &unreviewed));
        }
    }
    Ok(exit::SUCCESS)
}

/// `slipway --server URL policy …`.
pub async fn policy(
    c: &Client,
    cmd: crate::cmd_policy::PolicyCommand,
    out: &Output,
) -> Result<i32, CliError> {
    use crate::cmd_policy::PolicyCommand as P;
    match cmd {
        P::Show(_) => {
            let v = c.get("/policy").await?;
            render_policy(out, &read::<Vec<PolicyRow>>(c, v)?);
        }
        P::Apply(a) => {
            let text = std::fs::read_to_string(&a.file).map_err(|e| {
                CliError::input(
                    format!("failed to read policy `{}`: {e}", a.file.display()),
                    "pass the policy file with -f FILE",
                )
            })?;
            let (_, v) = c
                .post(
                    "/policy",
                    &json!({"name": a.file.display().to_string(), "text": text}),
                )
                .await?;
            render_applied(out, &read(c, v)?);
        }
    }
    Ok(exit::SUCCESS)
}
