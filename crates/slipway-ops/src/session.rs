//! A session: the store an operation works on, the directory of this machine's run files
//! beside it ([`Layout`]), and the [`Actor`] every check and record names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_providers::compose::Layout;
use slipway_store::{AnyStore, StoreLocation};

use crate::error::{ErrorKind, Hint, OpsError, OpsResult};

/// Who performs an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The user name (never a pseudonym; the store turns it into one when recording).
    pub user: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
}

impl Actor {
    /// The actor of this process: the subject of a verified token when there is one, else
    /// [`process_user`]; groups from `SLIPWAY_GROUPS`.
    pub fn from_process(token_user: Option<&str>) -> Self {
        let user = match token_user {
            Some(u) => u.to_owned(),
            None => process_user(),
        };
        let groups = std::env::var("SLIPWAY_GROUPS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        Self { user, groups }
    }
}

/// The user this process runs as, when no token says who acts: `SLIPWAY_USER`, `USER` or
/// `LOGNAME`, else the OS account of the process's uid (cron jobs, containers and
/// `env -i` have no `$USER`, but always a uid), else `uid:N` for a uid without an account.
/// The one fallback lookup of an identity, so the identity rework replaces one function.
pub fn process_user() -> String {
    if let Some(u) = ["SLIPWAY_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    {
        return u;
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) if !u.name.is_empty() => u.name,
        _ => format!("uid:{uid}"),
    }
}

/// An open store with its layout and actor.
#[derive(Clone)]
pub struct Session {
    /// The store.
    pub store: Arc<AnyStore>,
    /// This machine's files of the store's runs.
    pub layout: Layout,
    /// Who acts.
    pub actor: Actor,
    /// The store as the caller named it (`--store`), for a child process driving a run.
    named: Option<String>,
}

impl Session {
    /// Open the store named by `url` (`sqlite://PATH`, a path, `postgres://…`; default
    /// `.slipway/slipway.db` under the current directory) as `actor`.
    pub async fn open(url: Option<&str>, actor: Actor) -> OpsResult<Self> {
        let cwd = current_dir()?;
        let loc = slipway_store::resolve(url, &cwd)?;
        let layout = layout_of(&loc, &cwd);
        let store = slipway_store::open(&loc).await?;
        Ok(Self {
            store: Arc::new(store),
            layout,
            actor,
            named: url.map(str::to_owned),
        })
    }

    /// Open the store named by `url` only if it exists (see
    /// [`slipway_store::open_existing`]): for operations that only read, which must never
    /// create a store — a mistyped path is an error naming it, not an empty history.
    pub async fn open_existing(url: Option<&str>, actor: Actor) -> OpsResult<Self> {
        let cwd = current_dir()?;
        let loc = slipway_store::resolve(url, &cwd)?;
        let layout = layout_of(&loc, &cwd);
        let store = slipway_store::open_existing(&loc).await?;
        Ok(Self {
            store: Arc::new(store),
            layout,
            actor,
            named: url.map(str::to_owned),
        })
    }

    /// A session over an already open store (a server keeps one per process).
    pub fn over(store: Arc<AnyStore>, layout: Layout, actor: Actor) -> Self {
        Self {
            store,
            layout,
            actor,
            named: None,
        }
    }

    /// The same store, acting as `actor` (a server serves many callers over one store).
    pub fn as_actor(&self, actor: Actor) -> Self {
        Self {
            actor,
            ..self.clone()
        }
    }

    /// The store as `dyn Store`.
    pub fn dyn_store(&self) -> Arc<dyn slipway_engine::Store> {
        self.store.clone()
    }

    /// The value a child `slipway` needs in `SLIPWAY_STORE` to open the same store (an
    /// SQLite file by absolute path; a PostgreSQL URL as given, password included — pass
    /// it through the environment, never argv).
    pub fn store_for_child(&self) -> String {
        match self.store.sqlite_path() {
            Some(p) => format!("sqlite://{}", p.display()),
            None => self.named.clone().unwrap_or_default(),
        }
    }

    /// The pseudonymous id of the actor, as recorded in the journal and the audit chain.
    pub async fn actor_id(&self) -> OpsResult<String> {
        Ok(slipway_engine::Store::pseudonym(self.store.as_ref(), &self.actor.user).await?)
    }

    /// The SQLite file of the store, for `operation`, which needs `what` — records kept
    /// only in an SQLite store so far. On PostgreSQL: a refusal naming the operation.
    pub fn sqlite_only(&self, operation: &str, what: &str) -> OpsResult<&Path> {
        self.store.sqlite_path().ok_or_else(|| {
            OpsError::input(format!(
                "failed to run `{operation}` on {}: it needs {what}, which only an SQLite store keeps so far",
                slipway_engine::Store::location(self.store.as_ref())
            ))
            .hint(Hint::text(
                "use an SQLite store (sqlite://PATH) for it; on PostgreSQL, runs, approvals, leases, access control, reports and audit verification work",
            ))
        })
    }
}

fn current_dir() -> OpsResult<PathBuf> {
    std::env::current_dir().map_err(|e| {
        OpsError::new(
            ErrorKind::Store,
            format!("failed to read the current directory: {e}"),
        )
    })
}

/// Where this machine's run files live for a store location: beside the SQLite file, or
/// `.slipway/` under the current directory for PostgreSQL (a name only, never opened as
/// a database).
pub fn layout_of(loc: &StoreLocation, cwd: &Path) -> Layout {
    match loc {
        StoreLocation::Sqlite(p) => Layout::beside(p),
        StoreLocation::Postgres(_) => Layout::beside(&cwd.join(slipway_store::DEFAULT_PATH)),
    }
}

/// The layout of the store `url` names, without opening it (planning must never create a
/// store as a side effect). `None` when the location does not resolve.
pub fn layout_for(url: Option<&str>) -> Option<(StoreLocation, Layout)> {
    let cwd = std::env::current_dir().ok()?;
    let loc = slipway_store::resolve(url, &cwd).ok()?;
    let layout = layout_of(&loc, &cwd);
    Some((loc, layout))
}
