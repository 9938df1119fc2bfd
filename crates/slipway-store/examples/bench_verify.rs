//! Audit verification benchmark: builds a store of N chained records the way deploys write
//! them (runs created, state changes, every step journaled `step_started` and
//! `step_succeeded` with its output), then times `slipway_engine::evidence::verify_store`
//! (chain, runs rows and governance records) — what `slipway audit verify` runs.
//!
//! `cargo run --release -p slipway-store --example bench_verify -- [ENTRIES] [DIR]`; with
//! `SLIPWAY_BENCH_STORE=postgres://…` the store is that (empty) PostgreSQL database. With
//! `SLIPWAY_BENCH_KEEP=1` the SQLite file is kept (its path is printed) so the release
//! `slipway audit verify --store sqlite://PATH` can be timed on it too; with
//! `SLIPWAY_BENCH_REUSE=PATH` that kept file is verified again without building (for a
//! profile of the verification alone).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary"
)]

use std::time::Instant;

use jiff::Timestamp;
use slipway_engine::event::{EngineEvent, RunState, StepCompletion};
use slipway_engine::store::{JournalRecord, NewRun, Store};
use slipway_engine::target::StepOutput;
use slipway_store::{AnyStore, SqliteStore};

/// Steps per run: a run is 3 + 2 × STEPS entries.
const STEPS: usize = 500;

fn rec(run: &str, event: EngineEvent, at: Timestamp) -> JournalRecord {
    JournalRecord {
        run_id: run.to_owned(),
        digest: "sha256:5f3c0d4e9b2a7c1f8e6d5b4a3c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e"
            .to_owned(),
        at,
        actor: "op-4f2a9c1e7b3d5a60".to_owned(),
        event,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let want: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let base = args
        .get(2)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(&base).unwrap();
    if let Ok(path) = std::env::var("SLIPWAY_BENCH_REUSE") {
        let store = AnyStore::Sqlite(
            SqliteStore::open(std::path::Path::new(&path))
                .await
                .unwrap(),
        );
        verify_rounds(&store, 0).await;
        return;
    }
    let store = match std::env::var("SLIPWAY_BENCH_STORE") {
        Ok(url) => {
            let loc = slipway_store::resolve(Some(&url), dir.path()).unwrap();
            println!("store: {}", loc.display());
            slipway_store::open(&loc).await.unwrap()
        }
        Err(_) => AnyStore::Sqlite(
            SqliteStore::open(&dir.path().join("bench.db"))
                .await
                .unwrap(),
        ),
    };
    let t = Instant::now();
    let mut written = 0usize;
    let mut n = 0usize;
    let base_at = Timestamp::from_second(1_790_000_000).unwrap();
    while written < want {
        let id = format!("20261126-0335{:02}-{n:06x}", n % 60);
        let at = |k: usize| base_at + jiff::SignedDuration::from_millis((n * 10_000 + k) as i64);
        store
            .create_run(
                NewRun {
                    id: id.clone(),
                    plan_json: format!("{{\"release\":\"bench\",\"run\":{n}}}"),
                    digest: "d".into(),
                    release: "bench".into(),
                    version: "1.0.0".into(),
                    environment: "prod".into(),
                    author: "op-4f2a9c1e7b3d5a60".into(),
                    override_reason: None,
                    created_at: at(0),
                    workdir: "/srv/bench".into(),
                },
                rec(
                    &id,
                    EngineEvent::RunCreated {
                        release: "bench".into(),
                        version: "1.0.0".into(),
                        environment: "prod".into(),
                        digest: "d".into(),
                        override_freeze: None,
                        plan_sha256: None,
                        workdir: None,
                    },
                    at(0),
                ),
            )
            .await
            .unwrap();
        let mut batch = vec![rec(
            &id,
            EngineEvent::StateChanged {
                from: RunState::Pending,
                to: RunState::Running,
                reason: None,
            },
            at(1),
        )];
        for s in 0..STEPS {
            let step = format!("api/install-{s}");
            let key = format!("{:064x}", (n * STEPS + s) as u128 * 0x9e37_79b9_7f4a_7c15);
            batch.push(rec(
                &id,
                EngineEvent::StepStarted {
                    step: step.clone(),
                    key: key.clone(),
                    attempt: 1,
                },
                at(2 + 2 * s),
            ));
            batch.push(rec(
                &id,
                EngineEvent::StepSucceeded {
                    step,
                    key,
                    completion: StepCompletion::Applied,
                    output: Some(StepOutput {
                        exit_code: Some(0),
                        stdout: format!("installed {s}\n"),
                        stderr: String::new(),
                        truncated: false,
                    }),
                },
                at(3 + 2 * s),
            ));
        }
        batch.push(rec(
            &id,
            EngineEvent::StateChanged {
                from: RunState::Running,
                to: RunState::Succeeded,
                reason: None,
            },
            at(3 + 2 * STEPS),
        ));
        written += 1 + batch.len();
        store.commit(batch).await.unwrap();
        n += 1;
    }
    let built = t.elapsed().as_secs_f64();
    let entries = store.audit_entries().await.unwrap();
    let bytes: usize = entries
        .iter()
        .map(|e| {
            let mut b = Vec::new();
            slipway_engine::audit::canonical_v2(e.fields(), &mut b);
            64 + b.len()
        })
        .sum();
    let avg = bytes / entries.len().max(1);
    drop(entries);
    println!(
        "built {written} entries ({n} runs of {STEPS} steps) in {built:.1} s; hashed bytes per entry: {avg}"
    );
    verify_rounds(&store, n).await;
    if std::env::var("SLIPWAY_BENCH_KEEP").is_ok() {
        let kept = dir.keep();
        println!("kept: {}", kept.join("bench.db").display());
    }
}

/// Three timed rounds of `verify_store`.
async fn verify_rounds(store: &AnyStore, n: usize) {
    for round in 1..=3 {
        let t = Instant::now();
        let v = slipway_engine::evidence::verify_store(store).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let ok = v.result.as_ref().unwrap();
        println!(
            "round {round}: verified {} entries, {n} runs rows, in {secs:.3} s: {:.0} entries/s",
            ok.entries,
            ok.entries as f64 / secs
        );
    }
}
