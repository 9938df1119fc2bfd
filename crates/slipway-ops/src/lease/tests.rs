//! The release of a held lease against a renewal already handed to the store (the race of
//! d5ca8d3, seen once in CI): a real SQLite store behind a wrapper that holds the first
//! renewal until the release has been asked for, then applies it. After `release`
//! returns, the environment must be free whatever the store did with that renewal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use slipway_engine::store::{LeaseOutcome, LeaseRecord, LeaseRequest, RunRecord};
use slipway_engine::store_wrap::{Wrap, Wrapped};
use slipway_engine::{Clock, RunState, Store, StoreError, SystemClock};
use slipway_store::{AnyStore, StoreLocation};
use tokio::sync::watch;

use crate::events::Quiet;

type Fut<'a, T> = slipway_engine::BoxFuture<'a, Result<T, StoreError>>;

/// Where the release stands, as the store saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    NotAsked,
    Asked,
    Done,
}

/// The real store, but the first renewal (the second `acquire_lease`) is handed over and
/// held: it is applied once the test opens `gate`, and after a release already asked of
/// the store — as the SQLite writer's queue applies a renewal it received before an
/// abort of its sender, after whatever it was given meanwhile.
struct Gated {
    inner: Arc<AnyStore>,
    acquires: AtomicUsize,
    /// The first renewal is handed over and waits.
    held: watch::Sender<bool>,
    /// The test lets it go.
    gate: Arc<watch::Sender<bool>>,
    /// It was applied.
    landed: Arc<watch::Sender<bool>>,
    release: Arc<watch::Sender<Release>>,
}

impl Gated {
    fn new(inner: Arc<AnyStore>) -> Self {
        Self {
            inner,
            acquires: AtomicUsize::new(0),
            held: watch::Sender::new(false),
            gate: Arc::new(watch::Sender::new(false)),
            landed: Arc::new(watch::Sender::new(false)),
            release: Arc::new(watch::Sender::new(Release::NotAsked)),
        }
    }
}

impl Wrap for Gated {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }
    fn acquire_lease(&self, req: LeaseRequest) -> Fut<'_, LeaseOutcome> {
        // The first call takes the lease; the second is the renewer's first renewal.
        if self.acquires.fetch_add(1, Ordering::SeqCst) != 1 {
            return self.inner.acquire_lease(req);
        }
        let inner = self.inner.clone();
        let mut gate = self.gate.subscribe();
        let mut release = self.release.subscribe();
        let landed = self.landed.clone();
        // Handed over: a task of the store's own, which dropping (aborting) the caller's
        // future does not cancel.
        let task = tokio::spawn(async move {
            let _ = gate.wait_for(|open| *open).await;
            if *release.borrow_and_update() != Release::NotAsked {
                let _ = release.wait_for(|r| *r == Release::Done).await;
            }
            let out = inner.acquire_lease(req).await;
            landed.send_replace(true);
            out
        });
        self.held.send_replace(true);
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError::Query(format!("the held renewal's task: {e}")))?
        })
    }
    fn release_lease<'a>(
        &'a self,
        environment: &'a str,
        holder: Option<&'a str>,
    ) -> Fut<'a, Option<LeaseRecord>> {
        // Asked as the caller hands it over, before its future is first polled.
        self.release.send_replace(Release::Asked);
        Box::pin(async move {
            let out = self.inner.release_lease(environment, holder).await;
            self.release.send_replace(Release::Done);
            // A renewal handed over before is applied before the caller's next request,
            // as the writer's queue would: the caller then sees the store it left.
            if *self.held.borrow() {
                let _ = self.landed.subscribe().wait_for(|l| *l).await;
            }
            out
        })
    }
}

fn run(id: &str) -> RunRecord {
    let now = SystemClock.now();
    RunRecord {
        id: id.into(),
        digest: "d1".into(),
        release: "shop".into(),
        version: "1.0.0".into(),
        environment: "prod".into(),
        author: "op".into(),
        state: RunState::Running,
        control: None,
        override_reason: None,
        created_at: now,
        updated_at: now,
        workdir: "/".into(),
        plan_json: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_flight_at_the_release_does_not_take_the_lease_back() {
    let dir = tempfile::tempdir().unwrap();
    let loc = StoreLocation::Sqlite(dir.path().join("store.db"));
    let inner = Arc::new(slipway_store::open(&loc).await.unwrap());
    let store = Arc::new(Wrapped(Gated::new(inner.clone())));
    // Renewed every second; long enough that the lease a late renewal would put back is
    // still live when the next run asks.
    let ttl = Duration::from_secs(3);
    let held = super::take_for(store.clone(), &run("run-a"), false, &Quiet, ttl)
        .await
        .unwrap();
    // The first renewal is handed to the store and held there.
    let mut handed = store.0.held.subscribe();
    tokio::time::timeout(Duration::from_secs(30), handed.wait_for(|h| *h))
        .await
        .expect("the renewer renews within 30 s")
        .unwrap();
    // The release is asked for (polled once: it runs until it waits), then the held
    // renewal is let go and the release completes.
    let mut release = std::pin::pin!(held.release());
    std::future::poll_fn(|cx| {
        assert!(
            release.as_mut().poll(cx).is_pending(),
            "the release cannot end while the renewal is held"
        );
        Poll::Ready(())
    })
    .await;
    store.0.gate.send_replace(true);
    tokio::time::timeout(Duration::from_secs(30), release)
        .await
        .expect("the release ends once the renewal landed")
        .unwrap();
    assert!(
        *store.0.landed.borrow(),
        "the held renewal was applied: the race happened"
    );
    // The environment is free: the next run is granted the lease at once.
    let next = LeaseRequest {
        environment: "prod".into(),
        holder: "run-b".into(),
        release: "shop 1.0.1".into(),
        now: SystemClock.now(),
        ttl,
    };
    match inner.acquire_lease(next).await.unwrap() {
        LeaseOutcome::Granted { lease, reclaimed } => {
            assert_eq!(lease.holder, "run-b");
            assert!(reclaimed.is_none(), "{reclaimed:?}");
        }
        LeaseOutcome::Held(l) => {
            panic!("the released environment is still {}", super::describe(&l))
        }
    }
}
