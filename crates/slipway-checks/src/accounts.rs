//! Accounts and grants: declared unix users must exist on the target (this machine for
//! local targets, each host for the ssh target: [`unix_user_command`] runs there), declared PostgreSQL roles must exist and hold every declared grant. A
//! missing grant is named exactly (`INSERT ON orders`), one row per privilege.

use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::{Outcome, Verdict};

/// Check a unix user.
pub fn unix_user(name: &str) -> Verdict {
    let started = Instant::now();
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Verdict::new(
            "accounts.unix",
            name,
            Outcome::Pass,
            format!("uid {} home {}", u.uid, u.dir.display()),
            "exists",
            started,
        ),
        Ok(None) => Verdict::new(
            "accounts.unix",
            name,
            Outcome::Fail,
            "missing",
            "exists",
            started,
        )
        .hint(format!(
            "create it on the target: `useradd --system {name}`"
        )),
        Err(e) => Verdict::new(
            "accounts.unix",
            name,
            Outcome::Fail,
            format!("lookup failed: {e}"),
            "exists",
            started,
        )
        .hint("check /etc/passwd and NSS on the target"),
    }
}

/// The POSIX shell command that looks a unix user up on a target host: its passwd entry
/// on stdout and exit 0, or a non-zero exit when there is none (`getent` where the host
/// has it, so NSS users count; `/etc/passwd` otherwise).
pub fn unix_user_command(name: &str) -> String {
    let q = format!("'{}'", name.replace('\'', r"'\''"));
    format!(
        "if command -v getent >/dev/null 2>&1; then getent passwd {q}; else grep -e \"^\"{q}\":\" /etc/passwd; fi"
    )
}

/// Judge a unix user from what [`unix_user_command`] answered on a host: its exit code
/// (`None`: the command did not finish) and stdout.
pub fn unix_user_from_report(
    name: &str,
    exit: Option<i32>,
    stdout: &str,
    started: Instant,
) -> Verdict {
    let entry = stdout
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .map(|l| l.split(':').collect::<Vec<_>>());
    match (exit, entry) {
        (Some(0), Some(f)) if f.len() >= 7 => Verdict::new(
            "accounts.unix",
            name,
            Outcome::Pass,
            format!("uid {} home {}", f[2], f[5]),
            "exists",
            started,
        ),
        (Some(_), None) | (Some(1 | 2), _) => Verdict::new(
            "accounts.unix",
            name,
            Outcome::Fail,
            "missing",
            "exists",
            started,
        )
        .hint(format!("create it on the host: `useradd --system {name}`")),
        (code, _) => Verdict::new(
            "accounts.unix",
            name,
            Outcome::Fail,
            format!(
                "lookup failed (exit {})",
                code.map_or("none".to_owned(), |c| c.to_string())
            ),
            "exists",
            started,
        )
        .hint("check /etc/passwd and NSS on the host"),
    }
}

/// One declared grant, split: privileges and the object they apply to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `SELECT`, `INSERT`, `USAGE`, `CONNECT`, …
    pub privileges: Vec<String>,
    /// `table`, `schema` or `database`.
    pub kind: &'static str,
    /// The object name.
    pub object: String,
}

/// Parse `SELECT, INSERT ON orders`, `USAGE ON SCHEMA app`, `CONNECT ON DATABASE shop`.
pub fn parse_grant(text: &str) -> Result<Grant, String> {
    let upper = text.to_ascii_uppercase();
    let at = upper
        .find(" ON ")
        .ok_or_else(|| format!("grant `{text}` has no ` ON `; write e.g. `SELECT ON orders`"))?;
    let privileges: Vec<String> = upper[..at]
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let rest = text[at + 4..].trim();
    let (kind, object) = match rest.split_once(char::is_whitespace) {
        Some((k, o)) if k.eq_ignore_ascii_case("schema") => ("schema", o.trim()),
        Some((k, o)) if k.eq_ignore_ascii_case("database") => ("database", o.trim()),
        Some((k, o)) if k.eq_ignore_ascii_case("table") => ("table", o.trim()),
        _ => ("table", rest),
    };
    if privileges.is_empty() || object.is_empty() {
        return Err(format!("grant `{text}` names no privilege or no object"));
    }
    Ok(Grant {
        privileges,
        kind,
        object: object.to_owned(),
    })
}

/// Check a PostgreSQL role and its grants, connecting to `url` (as a user allowed to
/// read the catalogue; the role checked need not be able to log in).
pub async fn postgres_role(
    url: &str,
    role: &str,
    grants: &[String],
    timeout: Duration,
) -> Vec<Verdict> {
    let started = Instant::now();
    let shown = mask(url);
    let target = |what: &str| format!("{role} {what}");
    let mut conn = match tokio::time::timeout(timeout, PgConnection::connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return vec![
                Verdict::new(
                    "accounts.postgres",
                    format!("{role} @ {shown}"),
                    Outcome::Fail,
                    format!("cannot connect: {e}"),
                    "connect",
                    started,
                )
                .hint("check the database URL of the account and that the server is up"),
            ];
        }
        Err(_) => {
            return vec![
                Verdict::new(
                    "accounts.postgres",
                    format!("{role} @ {shown}"),
                    Outcome::Fail,
                    "connect timed out",
                    "connect",
                    started,
                )
                .hint("the database does not answer: check the URL, host and firewall"),
            ];
        }
    };
    let exists: Option<bool> =
        sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(&mut conn)
            .await
            .unwrap_or(None);
    let mut rows = Vec::new();
    match exists {
        None => {
            rows.push(
                Verdict::new(
                    "accounts.postgres",
                    target("role"),
                    Outcome::Fail,
                    "missing",
                    "exists",
                    started,
                )
                .hint(format!("CREATE ROLE {role} LOGIN;")),
            );
            return rows;
        }
        Some(login) => rows.push(Verdict::new(
            "accounts.postgres",
            target("role"),
            Outcome::Pass,
            if login {
                "exists, can log in"
            } else {
                "exists, no login"
            },
            "exists",
            started,
        )),
    }
    for g in grants {
        let t = Instant::now();
        let grant = match parse_grant(g) {
            Ok(x) => x,
            Err(e) => {
                rows.push(Verdict::new(
                    "accounts.grant",
                    target(g),
                    Outcome::Fail,
                    e,
                    g.clone(),
                    t,
                ));
                continue;
            }
        };
        for p in &grant.privileges {
            let sql = match grant.kind {
                "schema" => "SELECT has_schema_privilege($1, $2, $3)",
                "database" => "SELECT has_database_privilege($1, $2, $3)",
                _ => "SELECT has_table_privilege($1, $2, $3)",
            };
            let named = format!(
                "{p} ON {}{}",
                if grant.kind == "table" {
                    String::new()
                } else {
                    format!("{} ", grant.kind.to_ascii_uppercase())
                },
                grant.object
            );
            let got: Result<bool, _> = sqlx::query_scalar(sql)
                .bind(role)
                .bind(&grant.object)
                .bind(p)
                .fetch_one(&mut conn)
                .await;
            let v = match got {
                Ok(true) => Verdict::new(
                    "accounts.grant",
                    target(&named),
                    Outcome::Pass,
                    "granted",
                    named.clone(),
                    t,
                ),
                Ok(false) => Verdict::new(
                    "accounts.grant",
                    target(&named),
                    Outcome::Fail,
                    "missing",
                    named.clone(),
                    t,
                )
                .hint(format!("GRANT {named} TO {role};")),
                Err(e) => Verdict::new(
                    "accounts.grant",
                    target(&named),
                    Outcome::Fail,
                    format!("cannot check: {e}"),
                    named.clone(),
                    t,
                )
                .hint(format!(
                    "does the {} `{}` exist in this database?",
                    grant.kind, grant.object
                )),
            };
            rows.push(v);
        }
    }
    let _ = conn.close().await;
    rows
}

/// A URL with its password replaced, for reports.
pub fn mask(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((u, _)) => format!("{}{u}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
