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
                    plan_sha256: None,
                    workdir: None,
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

/// Seed the recorded demo runs (`fixtures/demo-runs.json`: the journal and plans of a real
/// `slipway demo`) with `workdir` as their spec directory. Returns their ids, oldest first.
pub async fn seed_demo(store: &SqliteStore, workdir: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo-runs.json"),
    )
    .unwrap();
    let runs: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut ids = Vec::new();
    for r in runs {
        let s = |k: &str| r[k].as_str().unwrap().to_owned();
        let journal = r["journal"].as_array().unwrap();
        let rec = |j: &serde_json::Value| JournalRecord {
            run_id: s("id"),
            digest: s("digest"),
            at: j["at"].as_str().unwrap().parse().unwrap(),
            actor: j["actor"].as_str().unwrap().into(),
            event: serde_json::from_value(j["event"].clone()).unwrap(),
        };
        store
            .create_run(
                NewRun {
                    id: s("id"),
                    plan_json: s("plan_json"),
                    digest: s("digest"),
                    release: s("release"),
                    version: s("version"),
                    environment: s("environment"),
                    author: s("author"),
                    override_reason: None,
                    created_at: s("created_at").parse().unwrap(),
                    workdir: workdir.into(),
                },
                rec(&journal[0]),
            )
            .await
            .unwrap();
        store
            .commit(journal[1..].iter().map(rec).collect())
            .await
            .unwrap();
        ids.push(s("id"));
    }
    ids
}

/// insta settings that redact run ids, times, digests and temp paths.
pub fn redacted() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"\d{8}-\d{6}-[0-9a-f]{6}", "[run-id]");
    s.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "[time]");
    s.add_filter(r"[0-9a-f]{64}", "[digest]");
    s.add_filter(r"/tmp/[A-Za-z0-9_./-]+", "[path]");
    s.add_filter(r"127\.0\.0\.1:\d+", "[addr]");
    s
}

/// A git repository with one commit per (message, tag), at fixed committer times.
pub fn git_repo(dir: &std::path::Path, commits: &[(&str, &str, &str)]) {
    let git = |args: &[&str], date: &str| {
        let st = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.invalid")
            .env("GIT_COMMITTER_NAME", "dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.invalid")
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q"], "2026-01-01T00:00:00Z");
    for (msg, tag, date) in commits {
        git(&["commit", "-q", "--allow-empty", "-m", msg], date);
        if !tag.is_empty() {
            git(&["tag", tag], date);
        }
    }
}
