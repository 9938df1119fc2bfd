//! `Store::latest_runs` (what the environment dashboard reads): per release and
//! environment, the newest run and the newest succeeded one, plans included, newest first
//! — whatever the number of runs after them — on every backend.

use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::store::{JournalRecord, NewRun, Store};

use crate::common::{Backend, Fresh, at, on_both};

/// Create run `id` of `release` in `environment` at `secs` with plan text `plan`, and take
/// it to `state`.
async fn seed(
    store: &impl Store,
    id: &str,
    (release, environment): (&str, &str),
    secs: i64,
    state: RunState,
) {
    let digest = format!("d-{id}");
    let record = |event| JournalRecord {
        run_id: id.into(),
        digest: digest.clone(),
        at: at(secs),
        actor: "op-test".into(),
        event,
    };
    store
        .create_run(
            NewRun {
                id: id.into(),
                plan_json: format!("{{\"plan\": \"{id}\"}}"),
                digest: digest.clone(),
                release: release.into(),
                version: format!("1.0.{secs}"),
                environment: environment.into(),
                author: "op-test".into(),
                override_reason: None,
                created_at: at(secs),
                workdir: "/tmp".into(),
            },
            record(EngineEvent::RunCreated {
                release: release.into(),
                version: format!("1.0.{secs}"),
                environment: environment.into(),
                digest: digest.clone(),
                override_freeze: None,
                plan_sha256: None,
                workdir: None,
            }),
        )
        .await
        .unwrap();
    if state != RunState::Pending {
        store
            .commit(vec![record(EngineEvent::StateChanged {
                from: RunState::Pending,
                to: state,
                reason: None,
            })])
            .await
            .unwrap();
    }
}

async fn the_newest_and_the_newest_succeeded_run_of_each_release_survive_500_later_runs(
    b: Backend,
) {
    let fresh = Fresh::new(b);
    let store = fresh.open().await.unwrap();
    // shop in prod: succeeded, then failed; then 520 runs of another release there.
    seed(&store, "shop-1", ("shop", "prod"), 0, RunState::Succeeded).await;
    seed(&store, "shop-2", ("shop", "prod"), 1, RunState::Failed).await;
    for i in 0..520 {
        let state = if i % 2 == 0 {
            RunState::Succeeded
        } else {
            RunState::Failed
        };
        seed(
            &store,
            &format!("noise-{i}"),
            ("noise", "prod"),
            10 + i,
            state,
        )
        .await;
    }
    seed(&store, "shop-s", ("shop", "staging"), 5, RunState::Failed).await;
    let latest = store.latest_runs().await.unwrap();
    let ids: Vec<&str> = latest.iter().map(|r| r.id.as_str()).collect();
    // noise-519 is the newest of noise (failed), noise-518 its newest succeeded; staging
    // has no succeeded run of shop.
    assert_eq!(
        ids,
        ["noise-519", "noise-518", "shop-s", "shop-2", "shop-1"],
        "newest first"
    );
    let shop = latest.iter().find(|r| r.id == "shop-1").unwrap();
    assert_eq!(shop.plan_json, "{\"plan\": \"shop-1\"}", "plans are read");
    assert_eq!(shop.state, RunState::Succeeded);
    // What the old listing saw: the newest 500 runs hold no run of shop in prod.
    let listed = store.runs(500).await.unwrap();
    assert!(!listed.iter().any(|r| r.id.starts_with("shop-")));
}

on_both!(the_newest_and_the_newest_succeeded_run_of_each_release_survive_500_later_runs);
