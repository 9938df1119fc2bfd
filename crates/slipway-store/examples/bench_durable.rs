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
//! instead of an SQLite file in DIR. With `SLIPWAY_BENCH_NO_PROBE` set the fsync probes
//! are skipped (for profiling the run's CPU: the ratios are then NaN). The last line is the result as JSON (for
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

use std::collections::BTreeMap;
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
    let (cpu_before, faults_before) = (cpu_ns(), minor_faults());
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
    let cpu_after = cpu_ns();
    let cpu_threads: BTreeMap<String, f64> = cpu_after
        .iter()
        .map(|(name, ns)| {
            let before = cpu_before.get(name).copied().unwrap_or(0);
            (name.clone(), ns.saturating_sub(before) as f64 / 1e9)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    let cpu: f64 = cpu_threads.values().sum();
    let faults = minor_faults().saturating_sub(faults_before);
    let fsync_after = fsync_rate(dir.path(), false);
    let overwrite_after = fsync_rate(dir.path(), true);
    let steps = steps * services;
    let entries = engine.store().audit_entries().await.unwrap();
    let head = engine.store().audit_head().await.unwrap().unwrap();
    slipway_engine::audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    // What the chain costs per entry on one core: its canonical bytes and SHA-256, as the
    // writer makes them (the part of each step's CPU no shortcut can remove).
    let t_hash = Instant::now();
    for e in &entries {
        std::hint::black_box(e.compute_hash());
    }
    let hash_us = t_hash.elapsed().as_secs_f64() * 1e6 / entries.len().max(1) as f64;
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
        "CPU of the run, every thread: {:.1} ms, {:.1} µs per step; {faults} minor page faults",
        cpu * 1e3,
        cpu * 1e6 / steps as f64
    );
    println!("chain entry (canonical bytes + SHA-256), one core: {hash_us:.2} µs");
    for (name, secs) in &cpu_threads {
        println!(
            "  {name}: {:.1} ms, {:.1} µs per step",
            secs * 1e3,
            secs * 1e6 / steps as f64
        );
    }
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
            "cpu_seconds": cpu,
            "cpu_us_per_step": cpu * 1e6 / steps as f64,
            "minor_faults": faults,
            "chain_hash_us_per_entry": hash_us,
            "cpu_seconds_by_thread": cpu_threads,
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

/// CPU time the process's threads have run, in ns, by thread name (the runtime's
/// workers share one): each thread's `/proc/self/task/*/schedstat` (its first field, ns on
/// a CPU; finer than the clock ticks of `/proc/self/stat`). A thread that ends between
/// two readings takes its time with it; the runtime's and the store's threads live as
/// long as the run. Empty where the files are missing (not Linux).
fn cpu_ns() -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by;
    };
    for t in tasks.flatten() {
        let (Ok(stat), Ok(name)) = (
            std::fs::read_to_string(t.path().join("schedstat")),
            std::fs::read_to_string(t.path().join("comm")),
        ) else {
            continue;
        };
        if let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *by.entry(name.trim().to_owned()).or_insert(0) += ns;
        }
    }
    by
}

/// Minor page faults of the process so far (`/proc/self/stat` field 10): fresh memory
/// the kernel zeroed, which a profile of the run counts as kernel CPU. 0 where missing.
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command name, which is in parentheses.
            let rest = s.get(s.rfind(')')? + 2..)?;
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// fsync rate of the disk under `dir`: 500 × (1-byte write + fdatasync), appending to a
/// new file or (`in_place`) overwriting bytes of a file already written and synced.
fn fsync_rate(dir: &std::path::Path, in_place: bool) -> f64 {
    use std::os::unix::fs::FileExt;
    // Profiling the run's CPU needs no probe (each takes seconds on a loaded disk).
    if std::env::var_os("SLIPWAY_BENCH_NO_PROBE").is_some() {
        return f64::NAN;
    }
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
