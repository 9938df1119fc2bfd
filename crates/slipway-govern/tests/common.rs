//! Seeding helpers: plans from inline specs, runs with chosen timestamps written through
//! the real `SqliteStore` and `Store::create_run` / `Store::commit`.

use jiff::Timestamp;
use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::store::{JournalRecord, NewRun, Store};
use slipway_model::plan::{Facts, Plan};
use slipway_store::SqliteStore;

/// A feature release of api + web, with a production `prod` and a `staging`.
pub const SHOP_FEATURE: &str = r#"
apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.4.0, type: feature, owner: team-checkout, tag: "v{version}" }
services:
  api:
    steps: [ { name: start, run: "true" } ]
    endpoints: [ "db.internal:5432" ]
  web:
    depends_on: [api]
    steps: [ { name: start, run: "true" } ]
environments:
  staging: { target: { exec: {} } }
  prod: { production: true, target: { exec: {} }, approvals: { required: 1, four_eyes: true } }
"#;

/// A patch release of api alone.
pub const SHOP_PATCH: &str = r#"
apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.4.1, type: patch, owner: team-checkout }
services:
  api:
    steps: [ { name: start, run: "true" } ]
environments:
  prod: { production: true, target: { exec: {} } }
"#;

/// A hotfix of api alone (an emergency change).
#[allow(dead_code, reason = "used by the compliance tests")]
pub const SHOP_HOTFIX: &str = r#"
apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.4.2, type: hotfix, owner: team-checkout }
services:
  api:
    steps: [ { name: start, run: "true" } ]
environments:
  prod: { production: true, target: { exec: {} } }
"#;

pub fn plan(spec: &str, env: &str) -> Plan {
    let loaded = slipway_model::validate::load("spec.yaml", spec)
        .unwrap_or_else(|e| panic!("{}", e.render(false, 100)));
    slipway_model::plan::plan(&loaded.spec, env, &Facts::default()).unwrap()
}

/// A time given as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub async fn open(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(&dir.join("slipway.db")).await.unwrap()
}

/// Seed a run: created at `created`, then each (time, event) in order.
pub async fn seed(
    store: &SqliteStore,
    id: &str,
    plan: &Plan,
    author: &str,
    created: &str,
    events: Vec<(&str, &str, EngineEvent)>,
) {
    store
        .create_run(
            NewRun {
                id: id.into(),
                plan_json: serde_json::to_string(plan).unwrap(),
                digest: plan.digest.clone(),
                release: plan.release.name.clone(),
                version: plan.release.version.clone(),
                environment: plan.environment.clone(),
                author: author.into(),
                override_reason: None,
                created_at: t(created),
                workdir: "/nonexistent/spec-dir".into(),
            },
            JournalRecord {
                run_id: id.into(),
                digest: plan.digest.clone(),
                at: t(created),
                actor: author.into(),
                event: EngineEvent::RunCreated {
                    release: plan.release.name.clone(),
                    version: plan.release.version.clone(),
                    environment: plan.environment.clone(),
                    digest: plan.digest.clone(),
                    override_freeze: None,
                },
            },
        )
        .await
        .unwrap();
    let records = events
        .into_iter()
        .map(|(at, actor, event)| JournalRecord {
            run_id: id.into(),
            digest: plan.digest.clone(),
            at: t(at),
            actor: actor.into(),
            event,
        })
        .collect();
    store.commit(records).await.unwrap();
}

pub fn state(from: RunState, to: RunState) -> EngineEvent {
    EngineEvent::StateChanged {
        from,
        to,
        reason: None,
    }
}

/// pending → running at `start`, then → `end_state` at `end` (via rolling_back if needed).
pub fn lifecycle(
    start: &'static str,
    end: &'static str,
    end_state: RunState,
) -> Vec<(&'static str, &'static str, EngineEvent)> {
    let mut v = vec![(
        start,
        "op-alice",
        state(RunState::Pending, RunState::Running),
    )];
    if end_state == RunState::RolledBack {
        v.push((
            end,
            "op-alice",
            state(RunState::Running, RunState::RollingBack),
        ));
        v.push((
            end,
            "op-alice",
            state(RunState::RollingBack, RunState::RolledBack),
        ));
    } else {
        v.push((end, "op-alice", state(RunState::Running, end_state)));
    }
    v
}
