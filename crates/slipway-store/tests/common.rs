//! Shared helpers: a fresh store on any backend (an SQLite file in a temp dir, a database
//! on the binary's PostgreSQL server, or an in-memory store), journal records, the sqlite3
//! and psql CLIs, and a target made of a test's own `apply` ([`ApplyOnly`]).

use std::path::Path;
use std::process::Command;

use jiff::Timestamp;
use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::store::{JournalRecord, NewRun, Store};
use slipway_engine::target::{Applied, Observation, StepContext, StepOutput, Target, TargetError};
use slipway_model::plan::StepAction;
use slipway_store::AnyStore;

use crate::pg::pg;

/// The store backends the contract tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// `SqliteStore::in_memory`: the same SQL with no file, for fast engine tests; the
    /// contract tests show it behaves as the file store does.
    Memory,
}

/// A fresh, empty store location: a file in a temp dir or a new database.
pub struct Fresh {
    pub backend: Backend,
    /// `sqlite:///…` or `postgres://…` (with the password).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Fresh {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("s.db").display());
                Self {
                    backend,
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => Self {
                backend,
                url: pg().new_db("store"),
                _dir: None,
            },
            Backend::Memory => {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Self {
                    backend,
                    url: format!("memory://contract-{n}"),
                    _dir: None,
                }
            }
        }
    }

    /// A new handle on the store (its own pools and writer, as another process has).
    pub async fn open(&self) -> Result<AnyStore, slipway_engine::StoreError> {
        if let Some(name) = self.url.strip_prefix("memory://") {
            return slipway_store::SqliteStore::in_memory(name)
                .await
                .map(AnyStore::Sqlite);
        }
        let loc = slipway_store::resolve(Some(&self.url), Path::new("/")).unwrap();
        slipway_store::open(&loc).await
    }

    /// Run SQL on the store with the backend's own CLI (sqlite3 or psql).
    pub fn sql(&self, sql: &str) -> String {
        match self.backend {
            Backend::Sqlite => sqlite3(Path::new(self.url.strip_prefix("sqlite://").unwrap()), sql),
            Backend::Postgres => pg().psql(crate::pg::db_name(&self.url), sql),
            Backend::Memory => {
                panic!("no CLI reaches an in-memory store: use on_disk! for this test")
            }
        }
    }
}

/// For each `name`, a module `name` with one `#[tokio::test]` per listed backend
/// (`fn_name Variant`) calling `async fn name(Backend)`.
macro_rules! backend_tests {
    ([$($f:ident $v:ident),*] $(,)?) => {};
    ([$($f:ident $v:ident),*] $name:ident $(, $rest:ident)* $(,)?) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $f() {
                    super::$name(crate::common::Backend::$v).await
                }
            )*
        }
        crate::common::backend_tests!([$($f $v),*] $($rest),*);
    };
}
pub(crate) use backend_tests;

/// `name::sqlite`, `name::postgres` and `name::memory` tests calling `async fn name(Backend)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        crate::common::backend_tests!([sqlite Sqlite, postgres Postgres, memory Memory] $($name),*);
    };
}
pub(crate) use on_both;

/// `name::sqlite` and `name::postgres` only: tests that edit the store with its own CLI
/// (`Fresh::sql`), which no in-memory store has.
macro_rules! on_disk {
    ($($name:ident),* $(,)?) => {
        crate::common::backend_tests!([sqlite Sqlite, postgres Postgres] $($name),*);
    };
}
pub(crate) use on_disk;

pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

pub fn record(run: &str, secs: i64, event: EngineEvent) -> JournalRecord {
    JournalRecord {
        run_id: run.into(),
        digest: "d1".into(),
        at: at(secs),
        actor: "op-test".into(),
        event,
    }
}

/// A fresh store on `backend` with one run and `n` further events.
pub async fn populated_on(backend: Backend, n: usize) -> (Fresh, AnyStore) {
    let fresh = Fresh::new(backend);
    let store = fresh.open().await.unwrap();
    fill(&store, n).await;
    (fresh, store)
}

/// A store of one run and 5,000 step events (5,001 entries: five ranges of 1,024 seqs,
/// each hashed where it is read, one per core at a time).
pub async fn large_chain(b: Backend) -> (Fresh, AnyStore) {
    let (fresh, store) = populated_on(b, 0).await;
    for c in 0..10 {
        let batch = (0..500)
            .map(|i| {
                let n = c * 500 + i;
                record(
                    "r1",
                    n + 1,
                    EngineEvent::StepStarted {
                        step: format!("svc/s{n}"),
                        key: format!("k{n}"),
                        attempt: 1,
                    },
                )
            })
            .collect();
        store.commit(batch).await.unwrap();
    }
    (fresh, store)
}

async fn fill(store: &impl Store, n: usize) {
    store
        .create_run(
            NewRun {
                id: "r1".into(),
                plan_json: "{}".into(),
                digest: "d1".into(),
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: "staging".into(),
                author: "op-test".into(),
                override_reason: None,
                created_at: at(0),
                workdir: "/tmp".into(),
            },
            record(
                "r1",
                0,
                EngineEvent::RunCreated {
                    release: "shop".into(),
                    version: "1.0.0".into(),
                    environment: "staging".into(),
                    digest: "d1".into(),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                },
            ),
        )
        .await
        .unwrap();
    for i in 0..n {
        store
            .commit(vec![record(
                "r1",
                i as i64 + 1,
                EngineEvent::StepStarted {
                    step: format!("svc/s{i}"),
                    key: format!("k{i}"),
                    attempt: 1,
                },
            )])
            .await
            .unwrap();
    }
    let _ = RunState::Pending;
}

pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        // Wait for a lock the store holds instead of failing at once with "database is
        // locked", as any other SQLite client of the store would.
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 CLI is installed (apt install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A request for a run of `p` by `author`, no freeze overridden.
pub fn req(p: slipway_model::plan::Plan, author: &str) -> slipway_engine::NewRunRequest {
    slipway_engine::NewRunRequest {
        plan: p,
        author: author.into(),
        override_freeze: None,
        workdir: "/tmp".into(),
    }
}

/// What a test's target does when a step is applied; [`ApplyOnly`] makes it a [`Target`].
pub trait Effect: Send + Sync {
    /// The target's kind name.
    fn kind(&self) -> &'static str;
    /// Apply a step (the tests tell steps apart by their context alone).
    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
    ) -> slipway_engine::BoxFuture<'a, Result<Applied, TargetError>>;
}

/// A target that only applies, for engine tests in which no step is found interrupted
/// (`observe` is never called: it panics) and no step has anything to undo.
pub struct ApplyOnly<E>(pub E);

impl<E: Effect> Target for ApplyOnly<E> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> slipway_engine::BoxFuture<'a, Result<Applied, TargetError>> {
        self.0.apply(ctx)
    }
    fn observe<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> slipway_engine::BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async { unreachable!("nothing is interrupted here") })
    }
    fn undo<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> slipway_engine::BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async { Ok(None) })
    }
}
