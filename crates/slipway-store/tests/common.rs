//! Shared helpers: a store in a temp dir, journal records, the sqlite3 CLI.

use std::path::Path;
use std::process::Command;

use jiff::Timestamp;
use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::store::{JournalRecord, NewRun, Store};
use slipway_store::SqliteStore;

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

/// A store with one run and `n` further events (so `n + 1` audit entries).
pub async fn populated(path: &Path, n: usize) -> SqliteStore {
    let store = SqliteStore::open(path).await.unwrap();
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
    store
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
