//! Durability benchmark: N no-op durable steps end to end (run created, every step
//! journaled started + succeeded with its audit entry, synchronous=FULL), beside the fsync
//! rate of the same disk. `cargo run --release -p slipway-store --example bench_durable --
//! [STEPS] [PARALLELISM] [DIR]`. With `SLIPWAY_BENCH_STORE=postgres://…` the run goes to
//! that (empty) PostgreSQL database instead of an SQLite file in DIR.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary"
)]

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use slipway_engine::noop::NoopTarget;
use slipway_engine::{DriveOptions, Engine, NewRunRequest, SystemClock};
use slipway_model::plan::{Facts, plan};
use slipway_model::spec::ReleaseSpec;
use slipway_store::SqliteStore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let par: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let base = args
        .get(3)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(&base).unwrap();

    // fsync rate of the same disk: small write + fdatasync, like a WAL commit.
    let mut f = std::fs::File::create(dir.path().join("fsync.probe")).unwrap();
    let n = 500;
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(b"x").unwrap();
        f.sync_data().unwrap();
    }
    let fsync_rate = n as f64 / t.elapsed().as_secs_f64();

    let mut yaml = String::from(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: bench, version: 1.0.0, type: patch }\nservices:\n  app:\n    steps:\n",
    );
    for i in 0..steps {
        yaml.push_str(&format!("      - {{ name: s{i}, run: 'true' }}\n"));
    }
    yaml.push_str(&format!(
        "environments:\n  dev:\n    target: {{ exec: {{ parallelism: {par} }} }}\n"
    ));
    let spec: ReleaseSpec = serde_saphyr::from_str(&yaml).unwrap();
    let p = plan(&spec, "dev", &Facts::default()).unwrap();

    let store = match std::env::var("SLIPWAY_BENCH_STORE") {
        Ok(url) => {
            let loc = slipway_store::resolve(Some(&url), dir.path()).unwrap();
            println!("store: {}", loc.display());
            slipway_store::open(&loc).await.unwrap()
        }
        Err(_) => slipway_store::AnyStore::Sqlite(
            SqliteStore::open(&dir.path().join("bench.db"))
                .await
                .unwrap(),
        ),
    };
    let engine = Engine::new(Arc::new(store), Arc::new(NoopTarget), Arc::new(SystemClock));
    let t = Instant::now();
    let run = engine
        .create_run(NewRunRequest {
            plan: p,
            author: "op-bench".into(),
            override_freeze: None,
            workdir: "/tmp".into(),
        })
        .await
        .unwrap();
    let out = engine
        .drive(&run.id, "op-bench", DriveOptions::default())
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let entries = engine.store().audit_entries().await.unwrap();
    let head = engine.store().audit_head().await.unwrap().unwrap();
    slipway_engine::audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    println!("outcome: {out:?}");
    println!(
        "steps: {steps}, parallelism: {par}, journal+audit entries: {}",
        entries.len()
    );
    println!("durable steps/s: {:.0} ({secs:.2} s)", steps as f64 / secs);
    println!("fsync/s on the same disk: {fsync_rate:.0}");
}
