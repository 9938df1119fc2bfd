//! A session: the store an operation works on, the directory of this machine's run files
//! beside it ([`Layout`]), and the [`Actor`] every check and record names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_providers::compose::Layout;
use slipway_store::{AnyStore, StoreLocation};

use crate::error::{ErrorKind, Hint, OpsError, OpsResult};

/// How an actor's identity was established. Never by the caller's say-so: a name in an
/// environment variable or a request is not an identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Verified {
    /// Access control is off in this store (no grant exists yet): the operating-system user
    /// running slipway, the store's single local user.
    Local,
    /// An API token verified against the store's access tables (its id, never its secret).
    Token {
        /// The token's public id.
        id: String,
    },
    /// A service process (`slipway serve`): it acts for nobody itself — every request acts
    /// as the caller its own token verifies ([`Session::as_token_user`]).
    Service,
}

/// Who performs an operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor {
    /// The user name (never a pseudonym; the store turns it into one when recording).
    pub user: String,
    /// Groups the user belongs to, as admins keep them in the store.
    pub groups: Vec<String>,
    /// How the identity was established.
    pub verified: Verified,
}

impl Actor {
    /// The operating-system user running this process (from its uid, not from `$USER`,
    /// which anyone can set), for a store whose access control is off.
    pub fn local() -> Self {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| format!("uid{uid}"), |u| u.name);
        Self {
            user,
            groups: Vec::new(),
            verified: Verified::Local,
        }
    }

    /// A short description for people: `alice (token 3f2a…)` or `root (local user; access
    /// control is off)`.
    pub fn describe(&self) -> String {
        match &self.verified {
            Verified::Local => format!(
                "{} (local user; access control is off until the first `access grant`)",
                self.user
            ),
            Verified::Token { id } => format!("{} (token {id})", self.user),
            Verified::Service => format!("{} (a service; acts only for its callers)", self.user),
        }
    }
}

/// What a caller presents to act as someone.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// Nothing: the local user, allowed only while access control is off.
    #[default]
    None,
    /// An API token (`slw_…`).
    Token(String),
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
    /// `.slipway/slipway.db` under the current directory) and establish who acts: the
    /// subject of a verified token, with the groups admins keep for them; without a token,
    /// the local operating-system user — only while access control is off (no grant
    /// exists). Once it is on, every operation, reads included, needs a token.
    pub async fn open(url: Option<&str>, credentials: &Credentials) -> OpsResult<Self> {
        let cwd = current_dir()?;
        let loc = slipway_store::resolve(url, &cwd)?;
        let layout = layout_of(&loc, &cwd);
        let store = Arc::new(slipway_store::open(&loc).await?);
        let actor = identify(&store, credentials).await?;
        Ok(Self {
            store,
            layout,
            actor,
            named: url.map(str::to_owned),
        })
    }

    /// [`Session::open`], but only if the store exists (see
    /// [`slipway_store::open_existing`]): for operations that only read, which must never
    /// create a store — a mistyped path is an error naming it, not an empty history.
    pub async fn open_existing(url: Option<&str>, credentials: &Credentials) -> OpsResult<Self> {
        let cwd = current_dir()?;
        let loc = slipway_store::resolve(url, &cwd)?;
        let layout = layout_of(&loc, &cwd);
        let store = Arc::new(slipway_store::open_existing(&loc).await?);
        let actor = identify(&store, credentials).await?;
        Ok(Self {
            store,
            layout,
            actor,
            named: url.map(str::to_owned),
        })
    }

    /// Open a store for a service that acts only for the callers it authenticates
    /// (`slipway serve`): the session's own actor holds no role anywhere.
    pub async fn open_for_service(url: Option<&str>, name: &str) -> OpsResult<Self> {
        let cwd = current_dir()?;
        let loc = slipway_store::resolve(url, &cwd)?;
        let layout = layout_of(&loc, &cwd);
        let store = Arc::new(slipway_store::open(&loc).await?);
        Ok(Self {
            store,
            layout,
            actor: Actor {
                user: format!("service:{name}"),
                groups: Vec::new(),
                verified: Verified::Service,
            },
            named: url.map(str::to_owned),
        })
    }

    /// Open a store as the local user whatever its access control says — for stores a
    /// command made itself and nobody else uses (the demo's).
    pub async fn open_private(url: &str) -> OpsResult<Self> {
        let cwd = current_dir()?;
        let loc = slipway_store::resolve(Some(url), &cwd)?;
        let layout = layout_of(&loc, &cwd);
        let store = Arc::new(slipway_store::open(&loc).await?);
        Ok(Self {
            store,
            layout,
            actor: Actor::local(),
            named: Some(url.to_owned()),
        })
    }

    /// The same store, acting as the user a server authenticated (by token id), with the
    /// groups admins keep for them.
    pub async fn as_token_user(&self, user: &str, token_id: &str) -> OpsResult<Self> {
        let db = slipway_store::access::AccessDb::for_store(&self.store).await?;
        let groups = db.groups_of(user).await?;
        Ok(self.as_actor(Actor {
            user: user.to_owned(),
            groups,
            verified: Verified::Token {
                id: token_id.to_owned(),
            },
        }))
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
}

/// Who acts in `store` with `credentials` (see [`Session::open`]).
async fn identify(store: &AnyStore, credentials: &Credentials) -> OpsResult<Actor> {
    let db = slipway_store::access::AccessDb::for_store(store).await?;
    let actor = match credentials {
        Credentials::Token(token) => {
            let (user, id) = crate::access::verify_token(&db, token).await?;
            let groups = db.groups_of(&user).await?;
            Actor {
                user,
                groups,
                verified: Verified::Token { id },
            }
        }
        Credentials::None => {
            if !db.grants(false).await?.is_empty() {
                db.close().await;
                return Err(OpsError::new(
                    ErrorKind::Unauthenticated,
                    format!(
                        "failed to act on {}: access control is on in this store, so every command acts as the subject of an API token",
                        slipway_engine::Store::location(store)
                    ),
                )
                .hint(Hint::GetToken));
            }
            Actor::local()
        }
    };
    db.close().await;
    Ok(actor)
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
