//! Database targets: URL parsing and masking, and one connection type over both backends.
//!
//! We keep two concrete sqlx connections behind `Conn` instead of `sqlx::Any`, because the
//! schema queries, cloning and advisory locks are backend specific anyway.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::error::{Error, Result};

/// How long a connection attempt may take before we give up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Hide the password of a database URL; shared with the state store's URLs, so it lives in
/// the model crate.
pub use slipway_model::text::mask_url;
use slipway_model::text::percent_decode;

/// The password in a PostgreSQL URL, percent-decoded, for `PGPASSWORD` of child processes
/// (so it never appears on a command line).
pub(crate) fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let userinfo = rest[..end].rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    Some(percent_decode(password))
}

/// The URL without its password (what child processes get on their command line).
pub(crate) fn url_without_password(url: &str) -> String {
    mask_url(url).replacen(":***@", "@", 1)
}

/// A parsed database URL. `Debug` masks the password (the parsed options hold it).
#[derive(Clone)]
pub enum Target {
    /// PostgreSQL; `url` is the original URL (with password) and `opts` its parsed form.
    Postgres {
        url: String,
        opts: Box<PgConnectOptions>,
    },
    /// SQLite file.
    Sqlite { path: PathBuf },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.display())
    }
}

impl Target {
    /// Parse `postgres://…`, `postgresql://…`, `sqlite://PATH` or `sqlite:PATH`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadUrl {
            url: mask_url(url),
            reason: reason.to_owned(),
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|e| bad(&e.to_string()))?;
            if opts.get_database().is_none() {
                return Err(bad("no database name after the host"));
            }
            Ok(Self::Postgres {
                url: url.to_owned(),
                opts: Box::new(opts),
            })
        } else if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or(rest);
            if path.is_empty() || path == ":memory:" {
                return Err(bad("an SQLite target must be a file path"));
            }
            Ok(Self::Sqlite {
                path: PathBuf::from(path),
            })
        } else {
            Err(bad("unknown scheme"))
        }
    }

    /// The URL for messages, password masked.
    pub fn display(&self) -> String {
        match self {
            Self::Postgres { url, .. } => mask_url(url),
            Self::Sqlite { path } => format!("sqlite://{}", path.display()),
        }
    }

    /// The same server with another database name (PostgreSQL) or another file (SQLite).
    pub(crate) fn with_database(&self, name: &str) -> Self {
        match self {
            Self::Postgres { url, opts } => Self::Postgres {
                url: replace_pg_database(url, name),
                opts: Box::new((**opts).clone().database(name)),
            },
            Self::Sqlite { path } => Self::Sqlite {
                path: sibling(path, name),
            },
        }
    }

    /// Open one connection (with a timeout). `create` makes a missing SQLite file.
    pub(crate) async fn connect(&self, create: bool) -> Result<Conn> {
        let fail = |reason: String| Error::Connect {
            url: self.display(),
            reason,
        };
        let fut = async {
            match self {
                Self::Postgres { opts, .. } => PgConnection::connect_with(opts).await.map(Conn::Pg),
                Self::Sqlite { path } => {
                    let opts = SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(create)
                        .busy_timeout(Duration::from_secs(10));
                    SqliteConnection::connect_with(&opts)
                        .await
                        .map(Conn::Sqlite)
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(fail(crate::migrate::db_error(&e, None))),
            Err(_) => Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }
}

/// A file next to `path` named `name`.
fn sibling(path: &Path, name: &str) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(name),
        _ => PathBuf::from(name),
    }
}

/// Replace the path (database name) of a PostgreSQL URL, keeping credentials and parameters.
fn replace_pg_database(url: &str, name: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{name}{query}")
}

/// Quote an SQL identifier (`a.b` is quoted per part), doubling embedded quotes.
pub(crate) fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Quote an SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One open connection to either backend.
#[derive(Debug)]
pub(crate) enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// Run the same sqlx code against whichever connection `$conn` holds; `$c` is bound to the
/// concrete connection so each arm type-checks on its own backend.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::target::Conn::Pg($c) => $body,
            $crate::target::Conn::Sqlite($c) => $body,
        }
    };
}
pub(crate) use on_conn;

impl Conn {
    /// Execute statements (possibly several) outside a transaction; rows affected summed.
    pub(crate) async fn exec(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        let q = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()));
        Ok(on_conn!(self, c => q.execute(&mut *c).await?.rows_affected()))
    }

    /// Close politely (errors on close do not matter: the work is done or rolled back).
    pub(crate) async fn close(self) {
        let _ = on_conn!(self, c => c.close().await);
    }

    pub(crate) fn is_pg(&self) -> bool {
        matches!(self, Self::Pg(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://app:s3cr%40t@db:5432/shop?sslmode=disable"),
            "postgres://app:***@db:5432/shop?sslmode=disable"
        );
        assert_eq!(mask_url("postgres://app@db/shop"), "postgres://app@db/shop");
        assert_eq!(
            mask_url("postgres://db/shop?user=a&password=x&x=1"),
            "postgres://db/shop?user=a&password=***&x=1"
        );
        assert_eq!(
            url_password("postgres://app:s3cr%40t@db/x").as_deref(),
            Some("s3cr@t")
        );
        assert_eq!(
            url_without_password("postgres://app:pw@db:1/x"),
            "postgres://app@db:1/x"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let t = Target::parse("postgres://app:hunter2@db:5432/shop").unwrap();
        let shown = format!("{t:?} {}", t.display());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db:5432/shop"), "{shown}");
    }

    #[test]
    fn replaces_database() {
        assert_eq!(
            replace_pg_database("postgres://u:p@h:1/src?host=/tmp", "clone"),
            "postgres://u:p@h:1/clone?host=/tmp"
        );
        assert_eq!(replace_pg_database("postgres://h", "c"), "postgres://h/c");
    }

    #[test]
    fn parses_sqlite() {
        let t = Target::parse("sqlite:///tmp/a.db").unwrap();
        assert!(matches!(t, Target::Sqlite { ref path } if path == Path::new("/tmp/a.db")));
        assert!(Target::parse("mysql://x/y").is_err());
    }
}
