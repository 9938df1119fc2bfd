//! Durability benchmark: no-op durable steps end to end (run created, every step journaled
//! started + succeeded with its audit entry, synchronous=FULL), beside the fsync rate of
//! the same disk measured in the same process just before and just after the run, two
//! ways: appending a byte before each fdatasync (the file grows, so the file system
//! journals its size too: the rate the earlier figures used) and overwriting a byte in
//! place (no metadata: what a commit to SQLite's reused WAL costs at least).
//! `cargo run --release -p slipway-store --example bench_durable -- [STEPS] [PARALLELISM]
//! [DIR] [SERVICES]`: SERVICES services (default 1) of STEPS ordered steps each. One
//! service is the sequential case (its steps run one after another whatever the
//! parallelism); many services of a few steps are the group-commit case. With
//! `SLIPWAY_BENCH_STORE=postgres://…` the run goes to that (empty) PostgreSQL database
//! instead of an SQLite file in DIR. The last line is the result as JSON (for
//! `scripts/bench.sh`). It allocates with mimalloc, as the `slipway` binary does.
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

// The `slipway` binary's allocator, so the figures are those of what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let par: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let base = args
        .get(3)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let services: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let dir = tempfile::tempdir_in(&base).unwrap();
    let fsync_before = fsync_rate(dir.path(), false);
    let overwrite_before = fsync_rate(dir.path(), true);

    let mut yaml = String::from(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: bench, version: 1.0.0, type: patch }\nservices:\n",
    );
    for s in 0..services {
        yaml.push_str(&format!("  app{s}:\n    steps:\n"));
        for i in 0..steps {
            yaml.push_str(&format!("      - {{ name: s{i}, run: 'true' }}\n"));
        }
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
    let fsync_after = fsync_rate(dir.path(), false);
    let overwrite_after = fsync_rate(dir.path(), true);
    let steps = steps * services;
    let entries = engine.store().audit_entries().await.unwrap();
    let head = engine.store().audit_head().await.unwrap().unwrap();
    slipway_engine::audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    println!("outcome: {out:?}");
    println!(
        "steps: {steps}, parallelism: {par}, journal+audit entries: {}",
        entries.len()
    );
    let rate = steps as f64 / secs;
    let fsync = f64::midpoint(fsync_before, fsync_after);
    let overwrite = f64::midpoint(overwrite_before, overwrite_after);
    println!("durable steps/s: {rate:.0} ({secs:.2} s)");
    println!(
        "fsync/s on the same disk: {fsync:.0} (before {fsync_before:.0}, after {fsync_after:.0}); steps/s ÷ fsync/s: {:.2}",
        rate / fsync
    );
    println!(
        "fsync/s overwriting in place: {overwrite:.0} (before {overwrite_before:.0}, after {overwrite_after:.0}); steps/s ÷ that: {:.2}",
        rate / overwrite
    );
    println!(
        "{}",
        serde_json::json!({
            "store": if std::env::var("SLIPWAY_BENCH_STORE").is_ok() { "postgres" } else { "sqlite" },
            "services": services,
            "steps": steps,
            "parallelism": par,
            "seconds": secs,
            "steps_per_s": rate,
            "fsync_per_s_before": fsync_before,
            "fsync_per_s_after": fsync_after,
            "fsync_per_s": fsync,
            "ratio_to_fsync": rate / fsync,
            "overwrite_fsync_per_s_before": overwrite_before,
            "overwrite_fsync_per_s_after": overwrite_after,
            "overwrite_fsync_per_s": overwrite,
            "ratio_to_overwrite_fsync": rate / overwrite,
            "entries": entries.len(),
        })
    );
}

/// fsync rate of the disk under `dir`: 500 × (1-byte write + fdatasync), appending to a
/// new file or (`in_place`) overwriting bytes of a file already written and synced.
fn fsync_rate(dir: &std::path::Path, in_place: bool) -> f64 {
    use std::os::unix::fs::FileExt;
    let n: u64 = 500;
    let mut f = std::fs::File::create(dir.join("fsync.probe")).unwrap();
    if in_place {
        f.write_all(&vec![b'x'; 4096]).unwrap();
        f.sync_all().unwrap();
    }
    let t = Instant::now();
    for i in 0..n {
        if in_place {
            f.write_at(b"y", i % 4096).unwrap();
        } else {
            f.write_all(b"x").unwrap();
        }
        f.sync_data().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}
